//! Continuous WAL archiving to S3 in WAL-G's layout.
//!
//! `archive_command = '<tusk> wal-push %p'` and
//! `restore_command = '<tusk> wal-fetch %f %p'` run [`client`], a thin
//! blocking client that hands the request to the supervisor over a unix
//! socket ([`server`]) and exits with its answer. The supervisor holds one
//! warm S3 client ([`crate::storage::wal::WalStore`]) inside an [`engine::Archiver`], which
//! uploads other `.ready` segments ahead of PostgreSQL's calls and
//! prefetches the next segments during recovery. With no supervisor
//! answering, the client runs the same engine itself (no look-ahead, no
//! prefetch).
//!
//! Observability: [`ArchiveHandle::stats`] (cheap, cloneable) and
//! [`prometheus_lines`] for the REST API; [`start`] returns the handle, and
//! the supervisor shows it through the API.

pub mod beneath;
pub mod client;
pub mod engine;
mod fetch;
pub mod prefetch;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::postgres::RunAs;
pub use crate::postgres::files::ArchiveCommands;
use crate::prometheus::{Kind, Writer};

/// Name of the supervisor's socket in `TUSK_SOCKET_DIR`.
pub const SOCKET_NAME: &str = ".s.tusk.archive";
/// The storage settings left for a `wal-push`/`wal-fetch` that finds no
/// supervisor (under `PGROOT`, mode 0600, owned by postgres).
pub const CONFIG_FILE: &str = "tusk-archive.env";
/// Variables postgres's children get (paths only, nothing secret).
pub use crate::config::{ENV_ARCHIVE_CONFIG as ENV_CONFIG, ENV_ARCHIVE_SOCKET as ENV_SOCKET};

/// Archive counters as the REST API serves them (`/patroni`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchiveStats {
    /// Whether WAL storage is configured (else archive_command is a no-op).
    pub enabled: bool,
    /// `s3://bucket/prefix` of the archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// WAL files S3 confirmed (uploaded, or found identical) since start.
    pub archived_count: u64,
    /// Failed pushes (each failed `archive_command` answer or look-ahead upload).
    pub failed_count: u64,
    pub last_archived_wal: Option<String>,
    /// RFC 3339.
    pub last_archived_time: Option<String>,
    #[serde(skip)]
    pub last_archived_unix: Option<f64>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    #[serde(skip)]
    pub last_failed_unix: Option<f64>,
    pub last_error: Option<String>,
    /// Compressed bytes uploaded.
    pub uploaded_bytes: u64,
    /// Uploads look-ahead started before PostgreSQL asked for them.
    pub lookahead_uploads: u64,
    /// PostgreSQL's `archive_command` calls answered by a look-ahead upload
    /// (already confirmed, or joined while in flight).
    pub lookahead_hits: u64,
    /// `.ready` files waiting in `pg_wal/archive_status` (the lag).
    pub pending_count: u64,
    /// Their size in bytes.
    pub pending_bytes: u64,
    /// WAL files delivered to `restore_command`, and how many came from prefetch.
    pub fetched_count: u64,
    pub prefetch_hits: u64,
    /// `restore_command` answers other than found / not found.
    pub fetch_failed_count: u64,
}

/// The shared state behind [`ArchiveHandle`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stats: Mutex<ArchiveStats>,
    pub(crate) pgdata: PathBuf,
}

/// A cheap, cloneable view of the archiver's counters.
#[derive(Debug, Clone)]
pub struct ArchiveHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ArchiveHandle {
    pub(crate) fn new(enabled: bool, destination: Option<String>, pgdata: PathBuf) -> ArchiveHandle {
        let stats = ArchiveStats { enabled, destination, ..Default::default() };
        ArchiveHandle { shared: Arc::new(Shared { stats: Mutex::new(stats), pgdata }) }
    }

    /// A snapshot of the counters (the lag is refreshed every few seconds).
    pub fn stats(&self) -> ArchiveStats {
        self.shared.stats.lock().expect("stats lock is never poisoned: no panics while held").clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ArchiveStats)) {
        f(&mut self.shared.stats.lock().expect("stats lock is never poisoned: no panics while held"));
    }

    /// Recounts the `.ready` files (the archive lag).
    pub(crate) fn refresh_lag(&self) {
        let (count, bytes) = pending(&self.shared.pgdata.join("pg_wal"));
        self.update(|s| {
            s.pending_count = count;
            s.pending_bytes = bytes;
        });
    }
}

/// The number and total size of the WAL files marked `.ready` in `pg_wal`.
pub fn pending(pg_wal: &Path) -> (u64, u64) {
    let Ok(rd) = std::fs::read_dir(pg_wal.join("archive_status")) else { return (0, 0) };
    let mut count = 0;
    let mut bytes = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".ready")) else { continue };
        count += 1;
        bytes += std::fs::metadata(pg_wal.join(name)).map(|m| m.len()).unwrap_or(0);
    }
    (count, bytes)
}

pub(crate) fn now_rfc3339() -> (String, f64) {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let now = SystemTime::now();
    let unix = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    (DateTime::from(now).fmt(DateTimeFormat::DateTime).unwrap_or_else(|_| format!("{unix}")), unix)
}

/// Prometheus text lines (`tusk_archive_*`) for `stats`; `labels` is the
/// inside of `{...}` shared by every line (e.g. `scope="pg",name="a"`), or empty.
pub fn prometheus_lines(stats: &ArchiveStats, labels: &str) -> String {
    let mut w = Writer::new(labels);
    let mut metric = |name: &str, kind: Kind, help: &str, value: f64| w.metric(name, kind, help, value);
    metric("tusk_archive_enabled", Kind::Gauge, "1 if WAL archiving to S3 is configured.", stats.enabled as u8 as f64);
    metric(
        "tusk_archive_archived_total",
        Kind::Counter,
        "WAL files S3 confirmed since the supervisor started.",
        stats.archived_count as f64,
    );
    metric(
        "tusk_archive_failed_total",
        Kind::Counter,
        "Failed WAL pushes since the supervisor started.",
        stats.failed_count as f64,
    );
    metric(
        "tusk_archive_uploaded_bytes_total",
        Kind::Counter,
        "Compressed bytes uploaded.",
        stats.uploaded_bytes as f64,
    );
    metric(
        "tusk_archive_pending_segments",
        Kind::Gauge,
        "WAL files waiting to be archived (.ready).",
        stats.pending_count as f64,
    );
    metric(
        "tusk_archive_pending_bytes",
        Kind::Gauge,
        "Size of the WAL files waiting to be archived.",
        stats.pending_bytes as f64,
    );
    metric(
        "tusk_archive_last_archived_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the last archived WAL file (0: none yet).",
        stats.last_archived_unix.unwrap_or(0.0),
    );
    metric(
        "tusk_archive_last_failed_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the last failed push (0: none).",
        stats.last_failed_unix.unwrap_or(0.0),
    );
    metric(
        "tusk_archive_lookahead_uploads_total",
        Kind::Counter,
        "Uploads started ahead of PostgreSQL's archive_command (look-ahead).",
        stats.lookahead_uploads as f64,
    );
    metric(
        "tusk_archive_lookahead_hits_total",
        Kind::Counter,
        "archive_command calls answered by a look-ahead upload.",
        stats.lookahead_hits as f64,
    );
    metric(
        "tusk_archive_fetched_total",
        Kind::Counter,
        "WAL files delivered to restore_command.",
        stats.fetched_count as f64,
    );
    metric(
        "tusk_archive_prefetch_hits_total",
        Kind::Counter,
        "WAL files delivered from the prefetch directory.",
        stats.prefetch_hits as f64,
    );
    metric(
        "tusk_archive_fetch_failed_total",
        Kind::Counter,
        "restore_command answers that were errors (not 'not found').",
        stats.fetch_failed_count as f64,
    );
    w.finish()
}

impl ArchiveHandle {
    /// The `archive` object of `GET /patroni` (`None`: not archiving).
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let stats = self.stats();
        if !stats.enabled {
            return None;
        }
        serde_json::to_value(stats).ok()
    }

    /// Prometheus lines for `/metrics` (empty: not archiving).
    pub fn metrics(&self, labels: &str) -> String {
        let stats = self.stats();
        if stats.enabled { prometheus_lines(&stats, labels) } else { String::new() }
    }
}

/// What [`start`] hands back to the supervisor, which passes it down to
/// postgres: `tusk.conf`'s commands and the children's extra environment.
#[derive(Debug, Clone)]
pub struct Archive {
    pub handle: ArchiveHandle,
    /// `None` without storage (archive_command is then `/bin/true`).
    pub commands: Option<ArchiveCommands>,
    /// Where wal-push/wal-fetch find the supervisor and the fallback
    /// configuration (paths, nothing secret). Empty without storage.
    pub child_env: Vec<(String, String)>,
}

/// The socket path for a configuration.
pub fn socket_path(cfg: &Config) -> PathBuf {
    cfg.postgres.socket_dir.join(SOCKET_NAME)
}

/// `archive_command` and `restore_command` for `tusk.conf`: the absolute
/// path of this executable; `None` without storage (archive_command is then
/// `/bin/true`, as in Spilo).
pub fn commands(cfg: &Config) -> Option<ArchiveCommands> {
    cfg.storage.as_ref()?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/tusk"));
    let exe = shell_quote(&exe.display().to_string());
    Some(ArchiveCommands {
        archive: format!("{exe} wal-push \"%p\""),
        restore: format!("{exe} wal-fetch \"%f\" \"%p\""),
    })
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Starts archiving for both modes: writes the fallback configuration,
/// opens the socket, builds the S3 client and serves requests in the
/// background. Without storage only the (disabled) handle is published.
/// Errors are logged; archive_command then fails (PostgreSQL keeps the WAL).
pub fn start(cfg: &Config, run_as: &RunAs) -> Archive {
    let pgdata = cfg.postgres.data.clone();
    let Some(storage) = cfg.storage.clone() else {
        let handle = ArchiveHandle::new(false, None, pgdata);
        tracing::info!(
            "WAL archiving disabled: no WAL_S3_BUCKET or WALG_S3_PREFIX (archive_command succeeds without archiving)"
        );
        return Archive { handle, commands: None, child_env: Vec::new() };
    };
    let handle = ArchiveHandle::new(true, Some(storage.url.clone()), pgdata.clone());
    let socket = socket_path(cfg);
    let conf_file = cfg.postgres.root.join(CONFIG_FILE);
    if let Err(e) = write_fallback_config(&conf_file, &storage, cfg, run_as) {
        tracing::warn!(path = %conf_file.display(), "cannot write the fallback archive configuration: {e}");
    }
    let child_env = vec![
        (ENV_SOCKET.to_owned(), socket.display().to_string()),
        (ENV_CONFIG.to_owned(), conf_file.display().to_string()),
    ];
    let started = Archive { handle: handle.clone(), commands: commands(cfg), child_env };
    tracing::info!(
        destination = %storage.url,
        compression = ?storage.compression,
        upload_concurrency = storage.upload_concurrency,
        download_concurrency = storage.download_concurrency,
        socket = %socket.display(),
        "WAL archiving to S3 in WAL-G's layout"
    );
    let owner = run_as.switch.then(|| (run_as.uid.as_raw(), run_as.gid.as_raw()));
    // Segment-sized buffers come and go: keep them out of the heap arenas so
    // that freeing returns the memory to the system (a steady, small RSS).
    // SAFETY: mallopt only tunes the allocator; called before the buffers exist.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    let peer_uid = run_as.uid.as_raw();
    let run_as = run_as.clone();
    tokio::spawn(async move {
        let store = match crate::storage::wal::WalStore::new(&storage).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("WAL archiving cannot start: {e}");
                return;
            }
        };
        // Bound only once requests can be served: until then (and if this
        // fails) wal-push/wal-fetch find no supervisor and work on their own.
        let listener = match server::bind(&socket, &run_as) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(socket = %socket.display(), "cannot open the archive socket; wal-push/wal-fetch will work without the supervisor: {e}");
                return;
            }
        };
        let archiver = Arc::new(engine::Archiver::new(store, storage, pgdata, owner, handle.clone(), true));
        tokio::spawn(lag_ticker(handle));
        tokio::spawn(archiver.clone().watch_ready());
        server::serve(listener, archiver, peer_uid).await;
    });
    started
}

/// Refreshes the lag every 2 s and logs a summary line when something changed.
async fn lag_ticker(handle: ArchiveHandle) {
    let mut last_logged = (u64::MAX, u64::MAX, u64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let h = handle.clone();
        let _ = tokio::task::spawn_blocking(move || h.refresh_lag()).await;
        n += 1;
        if n.is_multiple_of(15) {
            let s = handle.stats();
            let now = (s.archived_count, s.failed_count, s.pending_count);
            if now != last_logged {
                tracing::info!(
                    archived = s.archived_count,
                    failed = s.failed_count,
                    last_archived = s.last_archived_wal.as_deref().unwrap_or("-"),
                    pending_segments = s.pending_count,
                    pending_bytes = s.pending_bytes,
                    fetched = s.fetched_count,
                    "archive status"
                );
                last_logged = now;
            }
        }
    }
}

/// Writes the storage settings (secrets resolved, no `_FILE` indirection)
/// for a `wal-push`/`wal-fetch` that runs without the supervisor. 0600,
/// owned by postgres, under `PGROOT` like `pgpass`.
fn write_fallback_config(
    path: &Path,
    storage: &crate::config::StorageConfig,
    cfg: &Config,
    run_as: &RunAs,
) -> Result<(), crate::postgres::PgError> {
    let text = crate::config::storage::fallback_file(storage, &cfg.postgres.data);
    crate::postgres::atomic::write_atomic(path, text.as_bytes(), 0o600, run_as)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let s = ArchiveStats {
            enabled: true,
            archived_count: 7,
            failed_count: 1,
            pending_count: 2,
            pending_bytes: 32 << 20,
            last_archived_unix: Some(1_700_000_000.5),
            ..Default::default()
        };
        let text = prometheus_lines(&s, "scope=\"pg\"");
        assert!(
            text.contains("# TYPE tusk_archive_archived_total counter\ntusk_archive_archived_total{scope=\"pg\"} 7\n")
        );
        assert!(text.contains("tusk_archive_pending_bytes{scope=\"pg\"} 33554432\n"));
        assert!(text.contains("tusk_archive_last_archived_timestamp_seconds{scope=\"pg\"} 1700000000.5\n"));
        assert!(prometheus_lines(&s, "").contains("\ntusk_archive_enabled 1\n"));
        // every sample line has HELP and TYPE before it
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate().filter(|(_, l)| !l.starts_with('#')) {
            assert!(lines[i - 1].starts_with("# TYPE") && lines[i - 2].starts_with("# HELP"), "{l}");
        }
    }

    #[test]
    fn stats_json_has_patroni_like_names() {
        let s = ArchiveStats {
            enabled: true,
            last_archived_wal: Some("000000010000000000000003".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["last_archived_wal"], "000000010000000000000003");
        assert_eq!(v["archived_count"], 0);
    }

    #[test]
    fn quoting_of_the_executable() {
        assert_eq!(shell_quote("/usr/bin/tusk"), "/usr/bin/tusk");
        assert_eq!(shell_quote("/opt/my dir/tusk"), "'/opt/my dir/tusk'");
        assert_eq!(shell_quote("/a'b"), r"'/a'\''b'");
    }
}
