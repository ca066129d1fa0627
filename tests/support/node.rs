//! Test harness: one tusk node (the real binary) with its own directory,
//! ports and socket, against the real PostgreSQL. Shared by the integration
//! tests through `#[path = "support/node.rs"] mod node;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The binary under test: the release build that ships (`panic = "abort"`),
/// `target/release/tusk`, which scripts/test.sh builds before the tests.
/// Fails clearly when it is missing or older than the sources (a stale
/// binary would test old code). `TUSK_TEST_BIN=debug` runs the debug build
/// cargo just made instead (for quick iterations); any other value is the
/// path of the binary to run.
pub fn tusk_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let debug = env!("CARGO_BIN_EXE_tusk");
        match std::env::var("TUSK_TEST_BIN") {
            Ok(v) if v == "debug" => return debug.to_owned(),
            Ok(v) if !v.is_empty() => return v,
            _ => {}
        }
        // target/debug/tusk -> target/release/tusk (respects CARGO_TARGET_DIR).
        let release = Path::new(debug)
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("release/tusk"))
            .expect("the debug binary lives in <target>/debug");
        let built = std::fs::metadata(&release).and_then(|m| m.modified()).unwrap_or_else(|e| {
            panic!(
                "{}: {e}. The tests run the release binary that ships: build it first with \
                 `cargo build --release --locked` (scripts/test.sh does), or set TUSK_TEST_BIN=debug",
                release.display()
            )
        });
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut newest = Vec::new();
        newest_source(&root.join("src"), &mut newest);
        for f in ["Cargo.toml", "Cargo.lock"] {
            if let Ok(t) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
                newest.push((t, root.join(f)));
            }
        }
        if let Some((t, path)) = newest.into_iter().max() {
            assert!(
                t <= built,
                "{} is older than {}: rebuild it with `cargo build --release --locked` (or set TUSK_TEST_BIN=debug)",
                release.display(),
                path.display()
            );
        }
        release.display().to_string()
    })
}

fn newest_source(dir: &Path, out: &mut Vec<(std::time::SystemTime, PathBuf)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_source(&p, out);
        } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            out.push((t, p));
        }
    }
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests start PostgreSQL as the postgres user and need root (CI runs as root)"
    );
}

/// A port that is free now (the tests' one allocator, `support/ports.rs`).
pub use crate::ports::free_port;

/// A fresh directory under /tmp that the postgres user can traverse.
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(&format!("tusk-{name}-")).tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// A node: environment, directory and (when started) the process.
pub struct Node {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub pg_port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Run as this uid/gid instead of root.
    pub as_user: Option<(u32, u32)>,
    /// Command prefix (e.g. `unshare --pid --fork --mount-proc`).
    pub wrapper: Vec<String>,
    /// "PostgreSQL is ready" lines in the log before the latest `start()`.
    pub readies_before_start: usize,
}

impl Node {
    pub fn new(dir: &Path) -> Node {
        let pg_port = free_port();
        // PGHOME is a subdirectory, so that the log beside it does not count
        // as a change of the node's files.
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut env = BTreeMap::new();
        env.insert("PGHOME".into(), home.display().to_string());
        env.insert("PGPORT".into(), pg_port.to_string());
        env.insert("APIPORT".into(), free_port().to_string());
        env.insert("TUSK_SOCKET_DIR".into(), dir.join("sock").display().to_string());
        env.insert("TUSK_PG_PARAMETERS".into(), r#"{"shared_buffers":"32MB","max_connections":"30"}"#.into());
        env.insert("PATRONI_NAME".into(), "test-node".into());
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        Node {
            dir: dir.to_owned(),
            env,
            pg_port,
            child: None,
            log: dir.join("tusk.log"),
            as_user: None,
            wrapper: vec![],
            readies_before_start: 0,
        }
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.into(), v.into());
        self
    }

    pub fn home(&self) -> PathBuf {
        PathBuf::from(&self.env["PGHOME"])
    }

    pub fn root(&self) -> PathBuf {
        self.home().join("pgdata/pgroot")
    }

    pub fn data(&self) -> PathBuf {
        self.env.get("PGDATA").map(PathBuf::from).unwrap_or_else(|| self.root().join("data"))
    }

    pub fn socket_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["TUSK_SOCKET_DIR"])
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.wrapper.is_empty() {
            Command::new(tusk_bin())
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(tusk_bin());
            c
        };
        cmd.args(args).env_clear().envs(&self.env).current_dir(&self.dir);
        if let Some((uid, gid)) = self.as_user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Starts the daemon in the background; its stderr goes to `self.log` (appended).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already started");
        self.readies_before_start = self.log_text().matches("PostgreSQL is ready").count();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = self
            .command(&[])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tusk");
        self.child = Some(child);
    }

    /// Runs `tusk ARGS` to completion; returns (status, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = self.command(args).output().expect("run tusk");
        (out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("started").id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log without PostgreSQL's per-connection lines.
    pub fn log_tail(&self, n: usize) -> String {
        quiet_tail(&self.log_text(), n)
    }

    /// Waits until the log holds `needle` at least `count` times.
    pub fn wait_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().matches(needle).count() >= count {
                return;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("tusk exited ({st}) while waiting for {needle:?}; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "timeout waiting for {needle:?} x{count}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `n`th "PostgreSQL is ready" (1 = first start).
    pub fn wait_ready(&mut self, n: usize) {
        self.wait_log("PostgreSQL is ready", n, Duration::from_secs(60));
    }

    /// Waits for the first "PostgreSQL is ready" of the latest `start()`
    /// (the log is appended across restarts, and an HA node logs one per
    /// role it settles in).
    pub fn wait_ready_since_start(&mut self) {
        self.wait_ready(self.readies_before_start + 1);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal tusk");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("started");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "tusk did not exit within {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0) within `timeout`,
    /// showing the node's log when it is not.
    pub fn stop_cleanly(&mut self, timeout: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let st = self.wait_exit(timeout);
        assert_eq!(st.code(), Some(0), "unclean exit ({st}); log:\n{}", self.log_text());
    }

    /// `psql -XAt` over the unix socket as the superuser.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.pg_port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `psql` over TCP with a connection string; returns Ok(stdout) or Err(stderr).
    pub fn psql_tcp(&self, conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-XAtq", "-d", conninfo, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The generated password of `user` from `PGROOT/pgpass`.
    pub fn stored_password(&self, user: &str) -> String {
        let text = std::fs::read_to_string(self.root().join("pgpass")).expect("pgpass");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("*:*:*:{user}:")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {user} in pgpass"))
    }

    /// "Database cluster state" from pg_controldata.
    pub fn cluster_state(&self) -> String {
        let out = Command::new(format!("{PG_BIN}/pg_controldata")).arg(self.data()).output().expect("pg_controldata");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("Database cluster state:").map(|s| s.trim().to_owned()))
            .unwrap_or_else(|| panic!("no cluster state in {text}"))
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }
}

impl Drop for Node {
    /// Leaves nothing running: kill tusk and the postmaster we started.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(pid) = self.postmaster_pid() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
            }
        }
    }
}

/// Paths, sizes and modification times of everything under `dir`, to show
/// that a refused start changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u32, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        out.push((p.clone(), meta.len(), meta.mode(), meta.modified().ok()));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// PostgreSQL's per-connection log lines (every probe or write makes four).
pub fn is_connection_line(line: &str) -> bool {
    ["connection received:", "connection authenticated:", "connection authorized:", "disconnection:"]
        .iter()
        .any(|x| line.contains(x))
}

/// The last `n` lines of `text` without per-connection lines: what a failed
/// test's dump needs when a writer's connections would fill it.
pub fn quiet_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !is_connection_line(l)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
