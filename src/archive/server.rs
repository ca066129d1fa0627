//! The supervisor's side of the socket: one JSON line in, one JSON line out
//! per connection. Only root and the postgres user may connect (socket mode
//! 0600, owned by postgres, and a peer-credential check); paths must lie in
//! `PGDATA`, reached without symbolic links, and are written through
//! directory descriptors ([`super::beneath`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::beneath;
use super::engine::{ArchiveError, Archiver, FETCH_RETRY_DELAYS, Fetched};
use crate::postgres::RunAs;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Push { path: PathBuf },
    Fetch { name: String, dest: PathBuf },
}

/// The answer; the client turns it into its exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok,
    NotFound,
    /// PostgreSQL may retry (archive_command), or treat it as "not available
    /// now" (restore_command in standby mode).
    Error,
    /// restore_command during archive recovery: abort rather than end
    /// recovery early on an S3 error.
    Fatal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub answer: Answer,
    #[serde(default)]
    pub message: String,
}

/// Creates the socket: stale file removed, mode 0600, owned by postgres.
pub fn bind(path: &Path, run_as: &RunAs) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    run_as.chown(path).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, archiver: Arc<Archiver>, postgres_uid: u32) {
    archiver.clear_prefetch();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let a = archiver.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, a, postgres_uid).await {
                        tracing::debug!("archive socket connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("archive socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, archiver: Arc<Archiver>, postgres_uid: u32) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    if peer.uid() != 0 && peer.uid() != postgres_uid {
        tracing::warn!(uid = peer.uid(), "refusing an archive request from a uid other than root or postgres");
        return Ok(());
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(64 << 10);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(&archiver, req).await,
        Err(e) => Response { answer: Answer::Error, message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_string(&response).expect("Response serializes");
    out.push('\n');
    write.write_all(out.as_bytes()).await?;
    write.shutdown().await
}

/// `path`'s directory must be `PGDATA/pg_wal` (push) or any directory
/// beneath PGDATA (fetch), reached with no symbolic link and, when tusk is
/// root, owned by postgres. Only an early, clear refusal: the write itself
/// resolves the destination again through directory descriptors
/// ([`super::beneath`]), so a swap after this check cannot redirect it.
fn inside(archiver: &Archiver, path: &Path, exact_pg_wal: bool) -> Result<(), String> {
    let (dirs, _) = beneath::split(archiver.pgdata(), path).map_err(|e| e.to_string())?;
    if exact_pg_wal && dirs.iter().map(|d| d.as_os_str()).ne([std::ffi::OsStr::new("pg_wal")]) {
        return Err(format!("{} is not in this node's PGDATA/pg_wal", path.display()));
    }
    beneath::Dir::open(archiver.pgdata(), &dirs, archiver.owner()).map(|_| ()).map_err(|e| e.to_string())
}

pub async fn handle(archiver: &Arc<Archiver>, req: Request) -> Response {
    match req {
        Request::Push { path } => {
            if let Err(m) = inside(archiver, &path, true) {
                return Response { answer: Answer::Error, message: m };
            }
            match archiver.push(&path).await {
                Ok(p) => Response { answer: Answer::Ok, message: format!("{p:?}") },
                Err(e) => Response { answer: Answer::Error, message: e.to_string() },
            }
        }
        Request::Fetch { name, dest } => {
            if let Err(m) = inside(archiver, &dest, false) {
                return Response { answer: Answer::Error, message: m };
            }
            fetch_with_policy(archiver, &name, &dest).await
        }
    }
}

/// The exit-code policy of reference §6.8: "not found" only when confirmed;
/// an S3 error in standby mode is "not available now" (PostgreSQL retries
/// and streams meanwhile); during archive recovery (recovery.signal, no
/// standby.signal) it is retried for 15 s and then fatal, so that
/// recovery never ends early and forks a timeline with data missing.
pub async fn fetch_with_policy(archiver: &Arc<Archiver>, name: &str, dest: &Path) -> Response {
    let pgdata = archiver.pgdata();
    let archive_recovery = pgdata.join("recovery.signal").exists() && !pgdata.join("standby.signal").exists();
    let mut attempt = 0;
    loop {
        match archiver.fetch(name, dest).await {
            Ok(Fetched::Found) => return Response { answer: Answer::Ok, message: String::new() },
            Ok(Fetched::NotFound) => {
                return Response { answer: Answer::NotFound, message: format!("{name} is not in the archive") };
            }
            Err(e)
                if !archive_recovery
                    || matches!(e, ArchiveError::Invalid(_) | ArchiveError::Codec(_) | ArchiveError::Refused(_)) =>
            {
                // A bad object does not get better by retrying; in archive
                // recovery it still must not look like the end of the archive.
                let answer = if archive_recovery { Answer::Fatal } else { Answer::Error };
                return Response { answer, message: e.to_string() };
            }
            Err(e) => {
                let Some(delay) = FETCH_RETRY_DELAYS.get(attempt) else {
                    return Response { answer: Answer::Fatal, message: format!("{e} (after {attempt} retries)") };
                };
                tracing::warn!(wal = %name, retry_in_s = delay.as_secs(), "wal-fetch during archive recovery failed; retrying: {e}");
                tokio::time::sleep(*delay).await;
                attempt += 1;
            }
        }
    }
}
