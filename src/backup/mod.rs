//! Base backups in WAL-G's layout, over the same storage layer as WAL
//! archiving (`storage`): `push` takes one (non-exclusive, from the
//! primary; the data directory read by tusk, tar parts compressed on a
//! pool of threads and uploaded in parallel, the sentinel last), `list`
//! reads what the bucket holds. A backup exists when, and only when, its
//! sentinel does.

pub mod checksum;
pub mod clone;
pub mod delete;
pub mod fetch;
pub mod list;
pub mod push;
pub mod replica;
pub mod schedule;
pub mod sentinel;
mod tarball;
mod walk;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::storage::codec::CodecError;
use crate::storage::s3::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("PostgreSQL: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("interrupted: {0}")]
    Cancelled(String),
    /// The named backup (or any backup) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The backup cannot be taken here or now (a replica, no storage, ...).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

/// Asks a running backup to stop; the reason ends up in its error.
#[derive(Debug, Default)]
pub struct Cancel {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

impl Cancel {
    pub fn cancel(&self, reason: &str) {
        let mut r = self.reason.lock().expect("no panics while held");
        if r.is_none() {
            *r = Some(reason.to_owned());
        }
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn check(&self) -> Result<(), BackupError> {
        if self.is_cancelled() { Err(BackupError::Cancelled(self.reason())) } else { Ok(()) }
    }

    pub fn reason(&self) -> String {
        self.reason.lock().expect("no panics while held").clone().unwrap_or_else(|| "cancelled".into())
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            n.await;
        }
    }
}

/// A running backup's counters (read by the log ticker, `/metrics`, `/patroni`).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of files to read (known after the walk).
    pub total: AtomicU64,
    /// Bytes of files read so far.
    pub read: AtomicU64,
    /// Compressed bytes S3 has confirmed.
    pub uploaded: AtomicU64,
}

/// One backup at a time on a node: an exclusive `flock` on
/// `PGROOT/tusk-backup.lock`, held by the supervisor's scheduler and by
/// `tusk backup-push` alike, released when the guard (the open file) drops.
#[derive(Debug)]
pub struct NodeLock {
    _file: std::fs::File,
}

impl NodeLock {
    pub fn take(pgroot: &std::path::Path) -> Result<NodeLock, BackupError> {
        use std::os::fd::AsRawFd;
        let path = pgroot.join("tusk-backup.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&path)
            .map_err(|source| BackupError::Read { path: path.clone(), source })?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(BackupError::Refused("another base backup is running on this node".into()));
        }
        Ok(NodeLock { _file: file })
    }
}

use std::os::unix::fs::OpenOptionsExt;
