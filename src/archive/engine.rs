//! The archiver: push with look-ahead (here) and fetch with prefetch
//! ([`super::fetch`]), and the consistency rules (reference §6).
//!
//! - A push succeeds only after S3 answered 200 to the signed upload of the
//!   exact bytes, or when the archive already holds identical content.
//! - A different object under the same name is never overwritten; the push
//!   fails loudly, except for a segment or `.partial` of a timeline older
//!   than the cluster's (a failover leftover, reference §6.5): the first
//!   copy is kept and a warning logged (refused too with
//!   `WALG_PREVENT_WAL_OVERWRITE=true`). `.history` files never.
//! - Segments are checked before upload: page magic, long header,
//!   `xlp_pageaddr` = the named segment, system identifier = the cluster's.
//! - A fetch answers "not found" only after a LIST showed no copy under any
//!   extension; every other problem is an error, never "not found".

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use xxhash_rust::xxh3::Xxh3;

use super::ArchiveHandle;
use super::beneath;
use crate::config::{Compression, StorageConfig};
use crate::postgres::wal::{self, HistoryEntry, Kind, SegmentName};
use crate::storage::codec;
use crate::storage::s3::StoreError;
use crate::storage::wal::{Found, META_HASH, META_SIZE, WalStore as Store};

/// Name of the prefetch directory inside `pg_wal`.
pub const PREFETCH_DIR: &str = ".tusk-prefetch";
/// Largest WAL file tusk reads (PostgreSQL's largest segment size).
const MAX_FILE: u64 = 1 << 30;
/// Memory for segments held at once (compressed on upload, decompressed on
/// download; counted at the segment size), in MiB.
const MEMORY_BUDGET_MIB: u32 = 160;
/// PostgreSQL calls archive_command at once for every `.ready` file while
/// archiving works; no call for this long means archiving is paused, off or
/// backing off, and nothing is uploaded ahead.
const ACTIVE_WINDOW: Duration = Duration::from_secs(3);
/// A file whose upload failed is not uploaded ahead again for this long.
const LOOKAHEAD_BACKOFF: Duration = Duration::from_secs(10);
/// Confirmed uploads remembered for PostgreSQL's next calls.
const DONE_CACHE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Codec(#[from] codec::CodecError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The file is not what its name says or not this cluster's.
    #[error("{0}")]
    Invalid(String),
    /// A different object exists under the name.
    #[error("{0}")]
    Conflict(String),
    /// A destination the supervisor will not write (outside PGDATA, through
    /// a symbolic link, not owned by postgres).
    #[error("{0}")]
    Refused(#[from] beneath::BeneathError),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.display().to_string(), source }
}

/// How a push ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Uploaded,
    /// The archive already held identical content.
    AlreadyArchived,
    /// A differing copy of an old timeline's file was kept (failover case).
    KeptExisting,
}

/// How a fetch ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Found,
    /// Confirmed absent under every extension.
    NotFound,
}

/// Identity of a local file at the time it was uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId { dev: m.dev(), ino: m.ino(), size: m.len(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() }
    }
}

type Outcome = Option<Result<Pushed, String>>;

pub struct Archiver {
    pub(super) store: Store,
    pub(super) cfg: StorageConfig,
    pub(super) pgdata: PathBuf,
    /// uid/gid for files written into PGDATA (when tusk is root).
    pub(super) owner: Option<(u32, u32)>,
    pub(super) handle: ArchiveHandle,
    /// Look-ahead and prefetch (the supervisor), or single requests (direct mode).
    pub(super) background: bool,
    pub(super) uploads: Arc<Semaphore>,
    pub(super) downloads: Arc<Semaphore>,
    pub(super) memory: Arc<Semaphore>,
    pub(super) inflight: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    done: Mutex<BTreeMap<String, FileId>>,
    pub(super) prefetching: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Parsed history files seen by fetches (timeline → entries).
    pub(super) histories: Mutex<BTreeMap<u32, Vec<HistoryEntry>>>,
    pub(super) seg_size: AtomicU64,
    pub(super) scanning: std::sync::atomic::AtomicBool,
    /// When PostgreSQL last asked for a push (archiving is active).
    pub(super) last_push: Mutex<Option<std::time::Instant>>,
    /// Files whose last upload failed, and when: look-ahead leaves them to
    /// PostgreSQL's own retries for a while (no hot loop on a conflict or an
    /// outage).
    pub(super) failed: Mutex<HashMap<String, std::time::Instant>>,
}

impl Archiver {
    pub fn new(
        store: Store,
        cfg: StorageConfig,
        pgdata: PathBuf,
        owner: Option<(u32, u32)>,
        handle: ArchiveHandle,
        background: bool,
    ) -> Archiver {
        Archiver {
            uploads: Arc::new(Semaphore::new(cfg.upload_concurrency)),
            downloads: Arc::new(Semaphore::new(cfg.download_concurrency)),
            memory: Arc::new(Semaphore::new(MEMORY_BUDGET_MIB as usize)),
            store,
            cfg,
            pgdata,
            owner,
            handle,
            background,
            inflight: Mutex::new(HashMap::new()),
            done: Mutex::new(BTreeMap::new()),
            prefetching: Mutex::new(HashMap::new()),
            histories: Mutex::new(BTreeMap::new()),
            seg_size: AtomicU64::new(0),
            scanning: false.into(),
            last_push: Mutex::new(None),
            failed: Mutex::new(HashMap::new()),
        }
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// uid/gid of the postgres user when tusk is root.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    fn pg_wal(&self) -> PathBuf {
        self.pgdata.join("pg_wal")
    }

    pub fn prefetch_dir(&self) -> PathBuf {
        self.pg_wal().join(PREFETCH_DIR)
    }

    /// The cluster's system identifier (first 8 bytes of `global/pg_control`).
    pub(super) fn sysid(&self) -> Result<u64, ArchiveError> {
        super::prefetch::read_sysid(&self.pgdata)
    }

    /// MiB of the memory budget for one file of `size` bytes (raw + compressed).
    pub(super) fn mem_permits(size: u64) -> u32 {
        ((size >> 20) as u32).clamp(1, MEMORY_BUDGET_MIB)
    }

    // ------------------------------------------------------------------ push

    /// `archive_command` for `path` (an absolute path in `pg_wal`).
    pub async fn push(self: &Arc<Self>, path: &Path) -> Result<Pushed, ArchiveError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| wal::classify(n).is_some())
            .ok_or_else(|| ArchiveError::Invalid(format!("{} is not a WAL file name", path.display())))?
            .to_owned();
        // Confirmed earlier (look-ahead) and unchanged since: done.
        *self.last_push.lock().expect("no panics while held") = Some(std::time::Instant::now());
        // (A let statement: the guard is dropped before the lock is taken again.)
        // The entry stays until the look-ahead scan sees the `.ready` gone,
        // so the file is not uploaded again between this answer and
        // PostgreSQL's rename to `.done`.
        let confirmed = self.done.lock().expect("no panics while held").get(&name).copied();
        if let Some(id) = confirmed
            && std::fs::symlink_metadata(path).is_ok_and(|m| FileId::of(&m) == id)
        {
            self.handle.update(|s| s.lookahead_hits += 1);
            if self.background {
                self.kick_lookahead();
            }
            return Ok(Pushed::AlreadyArchived);
        }
        if self.inflight.lock().expect("no panics while held").contains_key(&name) {
            self.handle.update(|s| s.lookahead_hits += 1);
        }
        let mut rx = self.start_upload(&name, path.to_owned());
        if self.background {
            self.kick_lookahead();
        }
        let outcome = loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                break o;
            }
            if rx.changed().await.is_err() {
                break Err("the upload task ended without an answer".to_owned());
            }
        };
        match outcome {
            Ok(p) => Ok(p),
            // PostgreSQL retries; the next call starts a fresh upload.
            Err(msg) => Err(ArchiveError::Invalid(msg)),
        }
    }

    /// Starts (or joins) the upload of `name`; the receiver sees the outcome.
    fn start_upload(self: &Arc<Self>, name: &str, path: PathBuf) -> watch::Receiver<Outcome> {
        let mut inflight = self.inflight.lock().expect("no panics while held");
        if let Some(rx) = inflight.get(name) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(name.to_owned(), rx.clone());
        drop(inflight);
        let me = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let r = me.upload(&name, &path).await;
            let t = super::now_rfc3339();
            match &r {
                Ok(_) => {
                    me.failed.lock().expect("no panics while held").remove(&name);
                }
                Err(_) => {
                    let mut failed = me.failed.lock().expect("no panics while held");
                    failed.retain(|_, t| t.elapsed() < LOOKAHEAD_BACKOFF);
                    failed.insert(name.clone(), std::time::Instant::now());
                }
            }
            match &r {
                Ok(p) => {
                    tracing::debug!(wal = %name, outcome = ?p, "archived");
                    me.handle.update(|s| {
                        s.archived_count += 1;
                        if s.last_archived_wal.as_deref().is_none_or(|l| *l <= *name) {
                            s.last_archived_wal = Some(name.clone());
                        }
                        s.last_archived_time = Some(t.0.clone());
                        s.last_archived_unix = Some(t.1);
                    });
                }
                Err(e) => {
                    tracing::error!(wal = %name, "archiving failed: {e}");
                    me.handle.update(|s| {
                        s.failed_count += 1;
                        s.last_failed_wal = Some(name.clone());
                        s.last_failed_time = Some(t.0.clone());
                        s.last_failed_unix = Some(t.1);
                        s.last_error = Some(e.to_string());
                    });
                }
            }
            me.inflight.lock().expect("no panics while held").remove(&name);
            let _ = tx.send(Some(r.map_err(|e| e.to_string())));
            if me.background {
                me.kick_lookahead();
            }
        });
        rx
    }

    /// Reads, checks, compresses and uploads one file; records it as done.
    async fn upload(self: &Arc<Self>, name: &str, path: &Path) -> Result<Pushed, ArchiveError> {
        let kind = wal::classify(name).ok_or_else(|| ArchiveError::Invalid(format!("{name}: not a WAL file")))?;
        let size = std::fs::symlink_metadata(path).map_err(io(path))?.len();
        let _slot = self.uploads.clone().acquire_owned().await.expect("semaphore never closed");
        let _mem =
            self.memory.clone().acquire_many_owned(Self::mem_permits(size)).await.expect("semaphore never closed");
        let me = self.clone();
        let (p, n) = (path.to_owned(), name.to_owned());
        let prepared = tokio::task::spawn_blocking(move || me.prepare(&n, kind, &p))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("{name}: preparing the upload panicked: {e}")))??;
        let existing = self.store.find(name).await?;
        if !existing.is_empty() {
            let outcome = self.compare_existing(name, kind, &existing[0], &prepared, path).await?;
            self.done.lock().expect("no panics while held").insert(name.to_owned(), prepared.id);
            self.trim_done();
            return Ok(outcome);
        }
        let key = self.store.key(name, self.cfg.compression.extension());
        let body_len = prepared.body.len() as u64;
        self.store
            .put(
                &key,
                prepared.body,
                &[(META_HASH, format!("{:032x}", prepared.hash)), (META_SIZE, prepared.raw_len.to_string())],
            )
            .await?;
        self.handle.update(|s| s.uploaded_bytes += body_len);
        self.done.lock().expect("no panics while held").insert(name.to_owned(), prepared.id);
        self.trim_done();
        Ok(Pushed::Uploaded)
    }

    fn trim_done(&self) {
        let mut done = self.done.lock().expect("no panics while held");
        while done.len() > DONE_CACHE_MAX {
            done.pop_first();
        }
    }

    /// Blocking: read the file (no symlinks, owned by postgres when tusk is
    /// root), check it, hash and compress it.
    fn prepare(&self, name: &str, kind: Kind, path: &Path) -> Result<Prepared, ArchiveError> {
        let mut f =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io(path))?;
        let meta = f.metadata().map_err(io(path))?;
        if !meta.is_file() {
            return Err(ArchiveError::Invalid(format!("{}: not a regular file", path.display())));
        }
        if let Some((uid, _)) = self.owner
            && meta.uid() != uid
        {
            return Err(ArchiveError::Invalid(format!("{}: not owned by the postgres user", path.display())));
        }
        if meta.len() > MAX_FILE {
            return Err(ArchiveError::Invalid(format!(
                "{}: {} bytes is too large for a WAL file",
                path.display(),
                meta.len()
            )));
        }
        // Only the first page is checked; the rest streams through the hash
        // into the compressor, so only the compressed copy is held in memory.
        if let Kind::Segment(seg) | Kind::Partial(seg) = kind {
            let mut head = [0u8; wal::LONG_HEADER_LEN];
            f.read_exact(&mut head).map_err(io(path))?;
            self.check_segment(name, seg, &head, meta.len(), kind)?;
            f.seek(std::io::SeekFrom::Start(0)).map_err(io(path))?;
        }
        let mut reader = HashingReader { inner: f, hasher: Xxh3::new(), len: 0 };
        let body = codec::compress(self.cfg.compression, &mut reader, meta.len() as usize)?;
        if reader.len != meta.len() {
            return Err(ArchiveError::Invalid(format!("{}: changed while it was read", path.display())));
        }
        Ok(Prepared { id: FileId::of(&meta), body, hash: reader.hasher.digest128(), raw_len: reader.len })
    }

    /// A segment must be the named one, of this cluster.
    pub(super) fn check_segment(
        &self,
        name: &str,
        seg: SegmentName,
        raw: &[u8],
        len: u64,
        kind: Kind,
    ) -> Result<(), ArchiveError> {
        let h = wal::parse_long_header(raw)
            .map_err(|e| ArchiveError::Invalid(format!("{name}: not a WAL segment: {e}")))?;
        let seg_size = h.seg_size as u64;
        if matches!(kind, Kind::Segment(_)) && len != seg_size {
            return Err(ArchiveError::Invalid(format!("{name}: {len} bytes, but the segment size is {seg_size}")));
        }
        if h.pageaddr != seg.start_lsn(seg_size) {
            return Err(ArchiveError::Invalid(format!(
                "{name}: the first page is for LSN {:X}/{:X}, not this segment (a recycled file?)",
                h.pageaddr >> 32,
                h.pageaddr as u32
            )));
        }
        let sysid = self.sysid()?;
        if h.sysid != sysid {
            return Err(ArchiveError::Invalid(format!(
                "{name}: written by the cluster with system identifier {}, but this cluster's is {sysid}; refusing to archive WAL of another cluster",
                h.sysid
            )));
        }
        Ok(())
    }

    /// The archive already holds a copy of `name`: identical → success;
    /// different → the rules of the module doc.
    async fn compare_existing(
        &self,
        name: &str,
        kind: Kind,
        found: &Found,
        local: &Prepared,
        path: &Path,
    ) -> Result<Pushed, ArchiveError> {
        let identical = match self.store.head(&found.key).await? {
            Some(meta) if meta.contains_key(META_HASH) => {
                meta.get(META_HASH).map(String::as_str) == Some(format!("{:032x}", local.hash).as_str())
            }
            // Written by WAL-G (no checksum): compare the content.
            _ => match self.download(name, found).await? {
                Some(bytes) => bytes == std::fs::read(path).map_err(io(path))?,
                None => false,
            },
        };
        if identical {
            tracing::info!(wal = %name, key = %found.key, "already archived with identical content");
            return Ok(Pushed::AlreadyArchived);
        }
        let tli = match kind {
            Kind::Segment(s) | Kind::Partial(s) => Some(s.tli),
            _ => None,
        };
        let current = current_timeline(&self.pg_wal());
        match (kind, tli) {
            (Kind::History(_), _) => Err(ArchiveError::Conflict(format!(
                "{name}: a different history file is archived as {}; history files are never overwritten (another cluster or a split brain writes to this prefix?)",
                found.key
            ))),
            (_, Some(t)) if (t < current || matches!(kind, Kind::Partial(_))) && !self.cfg.prevent_overwrite => {
                tracing::warn!(
                    wal = %name,
                    key = %found.key,
                    timeline = t,
                    current_timeline = current,
                    "a different copy of this old-timeline file is already archived (failover: the old primary archived it first); keeping the archived copy"
                );
                Ok(Pushed::KeptExisting)
            }
            _ => Err(ArchiveError::Conflict(format!(
                "{name}: a different object is already archived as {}; refusing to overwrite it",
                found.key
            ))),
        }
    }

    /// Downloads and decompresses one archived copy; `None` if it vanished.
    pub(super) async fn download(&self, name: &str, found: &Found) -> Result<Option<Vec<u8>>, ArchiveError> {
        let method =
            found.compression().ok_or_else(|| ArchiveError::Invalid(format!("{}: unknown compression", found.key)))?;
        let Some((body, meta)) = self.store.get(&found.key).await? else { return Ok(None) };
        let limit = match wal::classify(name) {
            Some(Kind::Segment(_)) | Some(Kind::Partial(_)) => MAX_FILE,
            _ => 64 << 20,
        };
        let key = found.key.clone();
        let raw = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ArchiveError> {
            let raw = decompress_checked(method, &body, limit, &key, &meta)?;
            Ok(raw)
        })
        .await
        .map_err(|e| ArchiveError::Invalid(format!("decompressing panicked: {e}")))??;
        Ok(Some(raw))
    }

    /// Keeps up to `WALG_UPLOAD_CONCURRENCY` uploads of other `.ready` files
    /// going (one scan at a time).
    fn kick_lookahead(self: &Arc<Self>) {
        if self.scanning.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let pg_wal = me.pg_wal();
            let ready = tokio::task::spawn_blocking(move || ready_files(&pg_wal)).await.unwrap_or_default();
            {
                // Confirmed files PostgreSQL has marked `.done` are forgotten.
                let pending: std::collections::HashSet<&str> = ready.iter().map(String::as_str).collect();
                me.done.lock().expect("no panics while held").retain(|k, _| pending.contains(k.as_str()));
            }
            let mut started = 0;
            for name in ready {
                let busy = me.inflight.lock().expect("no panics while held").len();
                if busy >= me.cfg.upload_concurrency {
                    break;
                }
                let known = me.done.lock().expect("no panics while held").contains_key(&name);
                let running = me.inflight.lock().expect("no panics while held").contains_key(&name);
                let failed_recently = me
                    .failed
                    .lock()
                    .expect("no panics while held")
                    .get(&name)
                    .is_some_and(|t| t.elapsed() < LOOKAHEAD_BACKOFF);
                if known || running || failed_recently {
                    continue;
                }
                let path = me.pg_wal().join(&name);
                me.start_upload(&name, path);
                started += 1;
            }
            if started > 0 {
                me.handle.update(|s| s.lookahead_uploads += started);
                tracing::debug!(started, "look-ahead uploads");
            }
            me.scanning.store(false, Ordering::Release);
        });
    }

    /// While PostgreSQL is archiving (a push in the last 3 s), looks for new
    /// `.ready` files every 100 ms and starts their uploads before
    /// PostgreSQL asks: a finished segment is on its way within 100 ms.
    /// Idle otherwise (archiving paused or off: nothing is uploaded early).
    pub async fn watch_ready(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let active =
                self.last_push.lock().expect("no panics while held").is_some_and(|t| t.elapsed() < ACTIVE_WINDOW);
            if active {
                self.kick_lookahead();
            }
        }
    }
}

struct Prepared {
    id: FileId,
    body: Vec<u8>,
    hash: u128,
    raw_len: u64,
}

/// Hashes (XXH3-128) and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Xxh3,
    len: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Decompresses and, when the object carries tusk's checksum, verifies it.
fn decompress_checked(
    method: Compression,
    body: &[u8],
    limit: u64,
    key: &str,
    meta: &HashMap<String, String>,
) -> Result<Vec<u8>, ArchiveError> {
    let raw = codec::decompress(method, body, limit, key)?;
    if let Some(want) = meta.get(META_SIZE)
        && want.parse::<u64>().ok() != Some(raw.len() as u64)
    {
        return Err(ArchiveError::Invalid(format!(
            "{key}: corrupt archived object: decompressed to {} bytes, {want} were uploaded",
            raw.len()
        )));
    }
    if let Some(want) = meta.get(META_HASH) {
        let got = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&raw));
        if *want != got {
            return Err(ArchiveError::Invalid(format!("{key}: corrupt archived object: checksum mismatch")));
        }
    }
    Ok(raw)
}

/// `.ready` files in archive order: history files first, then by name.
pub fn ready_files(pg_wal: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pg_wal.join("archive_status")) else { return Vec::new() };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ready")).map(str::to_owned))
        .filter(|n| wal::classify(n).is_some())
        .collect();
    v.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
    v
}

/// The newest timeline in `pg_wal` (segment names and history files).
pub fn current_timeline(pg_wal: &Path) -> u32 {
    let Ok(rd) = std::fs::read_dir(pg_wal) else { return 1 };
    rd.flatten()
        .filter_map(|e| {
            let n = e.file_name();
            match wal::classify(n.to_str()?)? {
                Kind::Segment(s) => Some(s.tli),
                Kind::History(t) => Some(t),
                _ => None,
            }
        })
        .max()
        .unwrap_or(1)
}

/// Retries for an S3 error during archive recovery (15 s in all); then the
/// fatal answer stops postgres, and the supervisor's restart resumes
/// recovery where it stopped.
pub const FETCH_RETRY_DELAYS: [Duration; 4] =
    [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(8)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_order_and_timeline() {
        let d = tempfile::tempdir().unwrap();
        let st = d.path().join("archive_status");
        std::fs::create_dir(&st).unwrap();
        for f in [
            "000000010000000000000004.ready",
            "000000010000000000000003.ready",
            "00000002.history.ready",
            "000000010000000000000002.done",
            "junk.ready",
        ] {
            std::fs::write(st.join(f), "").unwrap();
        }
        for f in ["000000010000000000000003", "000000020000000000000004", "00000002.history"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(ready_files(d.path()), ["00000002.history", "000000010000000000000003", "000000010000000000000004"]);
        assert_eq!(current_timeline(d.path()), 2);
        assert_eq!(super::super::pending(d.path()), (4, 0));
    }

    #[test]
    fn checksummed_objects_are_verified() {
        let raw = vec![7u8; 100_000];
        let body = codec::compress(Compression::Lz4, &raw[..], raw.len()).unwrap();
        let meta: HashMap<String, String> = [
            (META_HASH.to_owned(), format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&raw))),
            (META_SIZE.to_owned(), raw.len().to_string()),
        ]
        .into();
        assert!(decompress_checked(Compression::Lz4, &body, 1 << 20, "k", &meta).unwrap() == raw);
        let mut other = raw.clone();
        other[500] = 8;
        let body2 = codec::compress(Compression::Lz4, &other[..], other.len()).unwrap();
        let e = decompress_checked(Compression::Lz4, &body2, 1 << 20, "k", &meta).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // Objects without tusk's metadata (WAL-G's) are accepted as decoded.
        assert!(decompress_checked(Compression::Lz4, &body2, 1 << 20, "k", &HashMap::new()).is_ok());
    }

    #[test]
    fn memory_permits() {
        assert_eq!(Archiver::mem_permits(16 << 20), 16);
        assert_eq!(Archiver::mem_permits(100), 1);
        assert_eq!(Archiver::mem_permits(1 << 30), MEMORY_BUDGET_MIB);
    }
}
