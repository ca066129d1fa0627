//! The postmaster and the short-lived tools (initdb), run as the postgres
//! user with a whitelisted environment. Postgres's log lines are forwarded
//! into tusk's log stream; the pipes are always drained, so postgres never
//! blocks on its own stderr.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::{Binaries, PgError, RunAs};
use crate::config::Config;

/// A running postmaster, started by us, in its own process group.
pub struct Postmaster {
    child: Child,
    pid: Pid,
    pub started: Instant,
}

impl Postmaster {
    /// Starts `postgres -D PGDATA` directly (not through pg_ctl).
    pub fn start(cfg: &Config, bin: &Binaries, run_as: &RunAs) -> Result<Postmaster, PgError> {
        let mut cmd = Command::new(bin.tool("postgres"));
        cmd.arg("-D").arg(&cfg.postgres.data);
        prepare(&mut cmd, cfg, run_as);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| PgError::io(format!("start {}", bin.tool("postgres").display()), e))?;
        let pid =
            Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).expect("a just-spawned child has a pid"));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_log(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_log(err));
        }
        tracing::info!(pid = pid.as_raw(), version = bin.version, "postmaster started");
        Ok(Postmaster { child, pid, started: Instant::now() })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Signals the postmaster (never its group: backends are the postmaster's to drive).
    pub fn signal(&self, sig: Signal) {
        if let Err(e) = kill(self.pid, sig)
            && e != Errno::ESRCH
        {
            tracing::warn!(signal = %sig, error = %e, "cannot signal the postmaster");
        }
    }

    /// The exit status if the postmaster has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the postmaster to exit. Cancel-safe.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            match self.child.wait().await {
                Ok(status) => return status,
                Err(e) => {
                    tracing::error!(error = %e, "waiting for the postmaster failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// User, working directory, environment and process group of every postgres process.
fn prepare(cmd: &mut Command, cfg: &Config, run_as: &RunAs) {
    cmd.current_dir(&cfg.postgres.root).stdin(Stdio::null()).process_group(0).kill_on_drop(false);
    run_as.apply(cmd);
}

/// After a postmaster died, its children (now orphans) may still hold the
/// shared memory; postgres refuses to start until they are gone. They are
/// in the dead postmaster's process group: ask them to quit, then kill.
pub async fn reap_leftover_group(pgid: Pid) {
    let group = Pid::from_raw(-pgid.as_raw());
    if kill(group, None) == Err(Errno::ESRCH) {
        return;
    }
    tracing::warn!(pgid = pgid.as_raw(), "postgres processes of the dead postmaster are still running; stopping them");
    let _ = kill(group, Signal::SIGQUIT);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if kill(group, None) == Err(Errno::ESRCH) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = kill(group, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Removes a `postmaster.pid` left by a postmaster that is no longer running
/// (a container restarted: its pid may now belong to anything). Refuses when
/// a live postmaster works on this data directory.
pub fn clear_stale_pid_file(data: &Path) -> Result<(), PgError> {
    let Some(pid) = super::pidfile::postmaster_pid(data) else { return Ok(()) };
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", pid.as_raw())).ok();
    let ours = match (cwd, std::fs::canonicalize(data)) {
        (Some(cwd), Ok(data)) => cwd == data,
        _ => false,
    };
    if ours {
        return Err(PgError::Other(format!(
            "a postmaster (pid {}) is already running on {}; stop it first",
            pid.as_raw(),
            data.display()
        )));
    }
    let file = data.join("postmaster.pid");
    std::fs::remove_file(&file).map_err(|e| PgError::io(format!("remove stale {}", file.display()), e))?;
    tracing::info!(pid = pid.as_raw(), "removed a stale postmaster.pid");
    Ok(())
}

/// Runs `initdb` for a fresh data directory: checksums, UTF8, the
/// superuser named by `PGUSER_SUPERUSER`. When `stop` completes first,
/// initdb gets SIGTERM and is waited for: it removes what it made, so a stop
/// during bootstrap leaves nothing half-made. Returns `false` when stopped.
pub async fn initdb(
    cfg: &Config,
    bin: &Binaries,
    run_as: &RunAs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<bool, PgError> {
    let mut cmd = Command::new(bin.tool("initdb"));
    cmd.arg("-D")
        .arg(&cfg.postgres.data)
        .arg("--data-checksums")
        .arg("--encoding=UTF8")
        .arg(format!("--locale={}", cfg.postgres.initdb_locale))
        .arg(format!("--username={}", cfg.credentials.superuser.name))
        .arg("--auth-local=trust")
        .arg("--auth-host=scram-sha-256")
        // bootstrap.initdb (SPILO_CONFIGURATION): after tusk's, so they win.
        .args(&cfg.postgres.initdb_options)
        // One syncfs below instead of an fsync per file: same durability, much faster.
        .arg("--no-sync")
        .arg("--no-instructions");
    prepare(&mut cmd, cfg, run_as);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| PgError::io(format!("start {}", bin.tool("initdb").display()), e))?;
    let stderr = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut buf).await;
            buf
        })
    });
    let status = tokio::select! {
        st = child.wait() => st.map_err(|e| PgError::io("initdb", e))?,
        () = stop => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => tracing::info!("initdb stopped and cleaned up"),
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    tracing::warn!(data = %cfg.postgres.data.display(), "initdb did not stop in time and was killed; the data directory may be incomplete");
                }
            }
            return Ok(false);
        }
    };
    if !status.success() {
        let err = match stderr {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        return Err(PgError::Other(format!("initdb failed ({status}): {}", String::from_utf8_lossy(&err).trim())));
    }
    sync_filesystem(&cfg.postgres.data)?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "initdb done");
    Ok(true)
}

/// Flushes the file system holding `dir` (syncfs(2)).
fn sync_filesystem(dir: &Path) -> Result<(), PgError> {
    let f = std::fs::File::open(dir).map_err(|e| PgError::io(format!("open {}", dir.display()), e))?;
    {
        use std::os::fd::AsRawFd;
        nix::unistd::syncfs(f.as_raw_fd())
    }
    .map_err(|e| PgError::io(format!("syncfs {}", dir.display()), e.into()))
}

/// Forwards postgres's output line by line as tracing events (target
/// `postgres`), with the level taken from postgres's own severity. Invalid
/// UTF-8 is replaced, very long lines are cut; reading never stops before EOF.
async fn forward_log(stream: impl AsyncRead + Unpin) {
    const MAX_LINE: usize = 16 * 1024;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let truncated = buf.len() > MAX_LINE;
        buf.truncate(MAX_LINE);
        let line = String::from_utf8_lossy(&buf);
        let line: &str = &line;
        let suffix = if truncated { " [...]" } else { "" };
        match severity(line) {
            Severity::Error => tracing::error!(target: "postgres", "{line}{suffix}"),
            Severity::Warning => tracing::warn!(target: "postgres", "{line}{suffix}"),
            Severity::Debug => tracing::debug!(target: "postgres", "{line}{suffix}"),
            Severity::Info => tracing::info!(target: "postgres", "{line}{suffix}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Severity {
    Error,
    Warning,
    Info,
    Debug,
}

/// The severity of a postgres log line: the word before the first ":  "
/// (`[12] LOG:  ...`, `[12] user@db FATAL:  ...`).
fn severity(line: &str) -> Severity {
    let Some(end) = line.find(":  ") else { return Severity::Info };
    let word = line[..end].rsplit(' ').next().unwrap_or("");
    match word {
        "PANIC" | "FATAL" | "ERROR" => Severity::Error,
        "WARNING" => Severity::Warning,
        w if w.starts_with("DEBUG") => Severity::Debug,
        _ => Severity::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities() {
        assert_eq!(severity("[12] LOG:  database system is ready"), Severity::Info);
        assert_eq!(severity("[12] FATAL:  the database system is starting up"), Severity::Error);
        assert_eq!(severity("[12] postgres@db ERROR:  relation \"x\" does not exist"), Severity::Error);
        assert_eq!(severity("[12] WARNING:  archive_mode enabled"), Severity::Warning);
        assert_eq!(severity("[12] LOG:  statement: select 'FATAL:  no'"), Severity::Info);
    }

    #[tokio::test]
    async fn forwarding_survives_bad_utf8_and_long_lines() {
        let mut input = b"[1] LOG:  ok\n\xff\xfe bad\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend(b"\n[1] LOG:  last\n");
        // Must read to EOF without error or panic.
        tokio::time::timeout(Duration::from_secs(5), forward_log(&input[..])).await.unwrap();
    }
}
