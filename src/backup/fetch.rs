//! `backup-fetch`: restores a base backup into a data directory, as
//! WAL-G's `backup-fetch` lays it out (reference §1.3, §1.6).
//!
//! Safety, in order of importance:
//! - Nothing is restored over data: the destination must be missing or an
//!   empty directory, and a backup of another system can be refused
//!   ([`FetchOptions::expect_system_id`]).
//! - PostgreSQL can never start a half-restored directory: the parts are
//!   extracted into a staging directory beside the destination, renamed
//!   onto it only when every part is in and checked; where no rename is
//!   possible (the destination is a mount point) the parts go in place,
//!   `global/pg_control` last, and a failure empties the directory again.
//! - Each part is checked as it streams by: its size and xxh3 against the
//!   sentinel's `TuskParts` (tusk's backups; WAL-G's carry no digest, and
//!   then only the tar and compression framing check them). A mismatch
//!   names the part and fails the restore.
//!
//! Memory stays bounded: each part streams from S3 through a bounded
//! channel into a thread that decompresses and unpacks it.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::list::{self, BackupEntry};
use super::sentinel::{PartInfo, Spec};
use super::{BackupError, Cancel, Progress};
use crate::postgres::wal::format_lsn;
use crate::storage::codec;
use crate::storage::layout::Layout;
use crate::storage::s3::ObjectStore;

/// Chunks of a part's download in flight between S3 and the unpacking thread.
const CHANNEL_CHUNKS: usize = 16;
/// Progress in the log at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Parts restored at once at most (each has a download and a thread).
const MAX_PARALLEL_PARTS: usize = 4;

/// What to restore, where, and as whom.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub dest: PathBuf,
    /// A backup name or `LATEST`.
    pub which: String,
    /// Refuse a backup of another system (a replica restoring for its cluster).
    pub expect_system_id: Option<u64>,
    /// Owner of everything restored (the supervisor and a root CLI restore for postgres).
    pub owner: Option<(u32, u32)>,
    /// Parts downloaded at once.
    pub concurrency: usize,
}

/// A restored backup.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    pub name: String,
    pub start_lsn: Option<String>,
    pub finish_lsn: Option<String>,
    pub timeline: Option<u32>,
    pub system_identifier: Option<u64>,
    pub pg_version: u32,
    /// Bytes of files written.
    pub bytes: u64,
    pub duration_s: f64,
}

/// One part to restore.
#[derive(Debug, Clone)]
struct Part {
    file: String,
    key: String,
    compression: crate::config::Compression,
    expected: Option<PartInfo>,
}

/// Restores `opts.which` from `store` into `opts.dest`.
pub async fn fetch(
    store: &ObjectStore,
    layout: &Layout,
    opts: &FetchOptions,
    progress: &Arc<Progress>,
    cancel: &Arc<Cancel>,
) -> Result<Fetched, BackupError> {
    let t0 = Instant::now();
    let backups = list::list(store, layout).await?;
    let entry = list::select(&backups, &opts.which)?.clone();
    if let (Some(want), Some(have)) = (opts.expect_system_id, entry.system_identifier)
        && want != have
    {
        return Err(BackupError::Refused(format!(
            "backup {} is of system {have}, not of this cluster's system {want}",
            entry.name
        )));
    }
    let parts = parts(store, layout, &entry).await?;
    let target = Target::prepare(&opts.dest, entry.sentinel.spec.as_ref(), opts.owner)?;
    progress.total.store(entry.uncompressed_size.max(0) as u64, Ordering::Relaxed);
    tracing::info!(
        backup = %entry.name,
        dest = %opts.dest.display(),
        staging = %target.root.display(),
        parts = parts.len(),
        compressed_mb = entry.compressed_size >> 20,
        "restoring a base backup"
    );
    let ticker = report_progress(&entry.name, progress, t0);
    let work = restore_parts(store, &target, parts, opts.concurrency, progress, cancel);
    let r = tokio::select! {
        r = work => r,
        () = ticker => Err(BackupError::Internal("the progress ticker ended".into())),
        () = cancel.cancelled() => Err(BackupError::Cancelled(cancel.reason())),
    };
    if let Err(e) = r.and_then(|()| target.finish()) {
        // Make sure every unpacking thread has stopped before cleaning up.
        cancel.cancel(&e.to_string());
        target.discard();
        return Err(e);
    }
    let fetched = Fetched {
        name: entry.name.clone(),
        start_lsn: entry.sentinel.lsn.map(format_lsn),
        finish_lsn: entry.sentinel.finish_lsn.map(format_lsn),
        timeline: entry.timeline,
        system_identifier: entry.system_identifier,
        pg_version: entry.pg_version,
        bytes: progress.read.load(Ordering::Relaxed),
        duration_s: t0.elapsed().as_secs_f64(),
    };
    tracing::info!(
        backup = %fetched.name,
        dest = %opts.dest.display(),
        mb = fetched.bytes >> 20,
        duration_s = format!("{:.1}", fetched.duration_s),
        "base backup restored"
    );
    Ok(fetched)
}

/// The parts of `entry`, in restore order: data parts, then
/// `backup_label`, then `pg_control` last.
async fn parts(store: &ObjectStore, layout: &Layout, entry: &BackupEntry) -> Result<Vec<Part>, BackupError> {
    let prefix = layout.tar_partitions_prefix(&entry.name);
    let objects = store.list(&prefix).await?;
    let mut out = Vec::new();
    for o in &objects {
        let Some(file) = o.key.strip_prefix(&prefix) else { continue };
        let Some((_, ext)) = file.split_once(".tar") else { continue };
        let ext = ext.strip_prefix('.').unwrap_or(ext);
        let compression = codec::from_extension(ext)
            .ok_or_else(|| BackupError::Internal(format!("part {file}: unknown compression {ext:?}")))?;
        out.push(Part {
            file: file.to_owned(),
            key: o.key.clone(),
            compression,
            expected: entry.sentinel.tusk_parts.get(file).cloned(),
        });
    }
    for file in entry.sentinel.tusk_parts.keys() {
        if !out.iter().any(|p| &p.file == file) {
            return Err(BackupError::Internal(format!(
                "backup {}: part {file} is missing from the bucket; the backup cannot be restored",
                entry.name
            )));
        }
    }
    if !out.iter().any(|p| p.file.starts_with("pg_control.tar")) {
        return Err(BackupError::Internal(format!(
            "backup {}: no pg_control part in {prefix}; the backup cannot be restored",
            entry.name
        )));
    }
    let rank = |f: &str| {
        if f.starts_with("pg_control.tar") {
            2
        } else if f.starts_with("backup_label.tar") {
            1
        } else {
            0
        }
    };
    out.sort_by(|a, b| rank(&a.file).cmp(&rank(&b.file)).then_with(|| a.file.cmp(&b.file)));
    Ok(out)
}

async fn restore_parts(
    store: &ObjectStore,
    target: &Target,
    parts: Vec<Part>,
    concurrency: usize,
    progress: &Arc<Progress>,
    cancel: &Arc<Cancel>,
) -> Result<(), BackupError> {
    let (data, last): (Vec<Part>, Vec<Part>) = parts.into_iter().partition(|p| !p.file.starts_with("pg_control.tar"));
    let (data, label): (Vec<Part>, Vec<Part>) = data.into_iter().partition(|p| !p.file.starts_with("backup_label.tar"));
    let limit = concurrency.clamp(1, MAX_PARALLEL_PARTS);
    let mut pending = data.into_iter();
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        while running.len() < limit
            && let Some(p) = pending.next()
        {
            running.push(restore_part(store, target, p, progress, cancel));
        }
        match running.try_next().await? {
            Some(()) => {}
            None => break,
        }
    }
    // The label, then pg_control: a directory without pg_control is not
    // a data directory PostgreSQL would start.
    for p in label.into_iter().chain(last) {
        restore_part(store, target, p, progress, cancel).await?;
    }
    Ok(())
}

/// Streams one part from S3 into an unpacking thread, checking its size
/// and digest on the way.
async fn restore_part(
    store: &ObjectStore,
    target: &Target,
    part: Part,
    progress: &Arc<Progress>,
    cancel: &Arc<Cancel>,
) -> Result<(), BackupError> {
    let (mut body, len, _) = store
        .get_stream(&part.key)
        .await?
        .ok_or_else(|| BackupError::Internal(format!("part {} vanished from the bucket", part.file)))?;
    if let (Some(exp), Some(len)) = (&part.expected, len)
        && exp.size != len
    {
        return Err(BackupError::Internal(format!(
            "part {}: {len} bytes in the bucket, the sentinel says {}; the backup is damaged",
            part.file, exp.size
        )));
    }
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(CHANNEL_CHUNKS);
    let unpacker = {
        let (target, part, progress, cancel) = (target.clone(), part.clone(), progress.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || unpack(&target, &part, ChannelReader::new(rx), &progress, &cancel))
    };
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut size = 0u64;
    let download = async {
        while let Some(chunk) =
            body.try_next().await.map_err(|e| BackupError::Internal(format!("part {}: download: {e}", part.file)))?
        {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                // The unpacker stopped; its error says why.
                break;
            }
        }
        Ok::<(), BackupError>(())
    }
    .await;
    drop(tx);
    let unpacked = unpacker.await.map_err(|e| BackupError::Internal(format!("part {}: unpacker: {e}", part.file)))?;
    download?;
    if let Some(exp) = &part.expected {
        let digest = format!("{:016x}", hasher.digest());
        if exp.size != size || exp.xxh3 != digest {
            return Err(BackupError::Internal(format!(
                "part {}: {size} bytes with xxh3 {digest}, the sentinel says {} bytes with xxh3 {}; the backup is damaged",
                part.file, exp.size, exp.xxh3
            )));
        }
    }
    unpacked?;
    tracing::debug!(part = %part.file, bytes = size, "part restored");
    Ok(())
}

/// A blocking reader over the download's chunks.
struct ChannelReader {
    rx: mpsc::Receiver<bytes::Bytes>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<bytes::Bytes>) -> ChannelReader {
        ChannelReader { rx, cur: bytes::Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// Decompresses and unpacks one part into `target`.
fn unpack(
    target: &Target,
    part: &Part,
    input: ChannelReader,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<(), BackupError> {
    let bad = |what: String| BackupError::Internal(format!("part {}: {what}", part.file));
    let decoded = codec::decoder(part.compression, input).map_err(|e| bad(format!("decompress: {e}")))?;
    let mut archive = tar::Archive::new(decoded);
    let mut buf = vec![0u8; 256 << 10];
    let entries = archive.entries().map_err(|e| bad(format!("tar: {e}")))?;
    for entry in entries {
        cancel.check()?;
        let mut entry = entry.map_err(|e| bad(format!("tar: {e}")))?;
        let raw = entry.path().map_err(|e| bad(format!("tar member name: {e}")))?.into_owned();
        let Some(rel) = relative(&raw) else {
            return Err(bad(format!("refusing the member {}: it leaves the data directory", raw.display())));
        };
        let path = target.path_of(&rel);
        let mode = entry.header().mode().unwrap_or(0o600) & 0o7777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let werr = |source: std::io::Error| BackupError::Read { path: path.clone(), source };
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                target.mkdir_all(&path).map_err(werr)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o700)).map_err(werr)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    target.mkdir_all(parent).map_err(werr)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .mode(mode | 0o600)
                    .open(&path)
                    .map_err(werr)?;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(bad(format!("{}: {e}", rel.display()))),
                    };
                    std::io::Write::write_all(&mut file, &buf[..n]).map_err(werr)?;
                    progress.read.fetch_add(n as u64, Ordering::Relaxed);
                }
                set_mtime(&file, mtime);
                target.chown(&path).map_err(werr)?;
            }
            other => {
                tracing::warn!(part = %part.file, member = %raw.display(), kind = ?other, "skipping a tar member that is neither a file nor a directory");
            }
        }
    }
    // Drain the decoder so a truncated or corrupt tail is noticed.
    let mut rest = archive.into_inner();
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(bad(format!("decompress: {e}"))),
        }
    }
    Ok(())
}

fn set_mtime(file: &std::fs::File, mtime: u64) {
    use std::os::fd::AsRawFd;
    let t = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
    let times = [t, t];
    // SAFETY: futimens on a descriptor owned by `file`; `times` outlives the call.
    unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
}

/// A member's name relative to the data directory, or `None` when it
/// would leave it (`..`). WAL-G's names start with `/`.
fn relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Where the parts go: the staging directory (or the destination itself)
/// and the tablespaces' own directories.
#[derive(Debug, Clone)]
struct Target {
    dest: PathBuf,
    /// Where the data directory's files are written.
    root: PathBuf,
    /// Staged (renamed onto `dest` at the end) or in place.
    staged: bool,
    /// `pg_tblspc/<oid>` → the tablespace's directory.
    tablespaces: Vec<(String, PathBuf)>,
    owner: Option<(u32, u32)>,
}

impl Target {
    fn prepare(dest: &Path, spec: Option<&Spec>, owner: Option<(u32, u32)>) -> Result<Target, BackupError> {
        let refused = |what: String| BackupError::Refused(what);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BackupError::Read { path, source }
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().ok_or_else(|| refused(format!("{} names no directory", dest.display())))?;
        let in_place = match std::fs::symlink_metadata(dest) {
            Ok(m) if !m.is_dir() => return Err(refused(format!("{} exists and is not a directory", dest.display()))),
            Ok(m) => {
                if std::fs::read_dir(dest).map_err(io(dest))?.next().is_some() {
                    return Err(refused(format!(
                        "{} is not empty: backup-fetch restores only into a missing or empty directory",
                        dest.display()
                    )));
                }
                // A mount point cannot be renamed onto: restore in place.
                let pm = std::fs::metadata(&parent).map_err(io(&parent))?;
                pm.dev() != m.dev()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&parent).map_err(io(&parent))?;
                false
            }
            Err(e) => return Err(io(dest)(e)),
        };
        let mut tablespaces = Vec::new();
        if let Some(spec) = spec {
            for (oid, ts) in &spec.tablespaces {
                let loc = PathBuf::from(&ts.loc);
                match std::fs::read_dir(&loc).map(|mut rd| rd.next().is_some()) {
                    Ok(true) => {
                        return Err(refused(format!(
                            "tablespace {oid}: {} is not empty; the backup's tablespaces restore only into empty directories",
                            loc.display()
                        )));
                    }
                    Ok(false) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&loc)(e)),
                }
                tablespaces.push((format!("pg_tblspc/{oid}"), loc));
            }
        }
        let root = if in_place {
            dest.to_owned()
        } else {
            let mut staging = std::ffi::OsString::from(".");
            staging.push(name);
            staging.push(".tusk-restore");
            let staging = parent.join(staging);
            // Left by an interrupted restore: ours by its name, never started.
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
            }
            staging
        };
        let t = Target { dest: dest.to_owned(), root, staged: !in_place, tablespaces, owner };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&t.root).map_err(io(&t.root))?;
        std::fs::set_permissions(&t.root, std::fs::Permissions::from_mode(0o700)).map_err(io(&t.root))?;
        t.chown(&t.root).map_err(io(&t.root))?;
        for (_, loc) in &t.tablespaces {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(loc).map_err(io(loc))?;
            t.chown(loc).map_err(io(loc))?;
        }
        Ok(t)
    }

    /// Where the member `rel` goes.
    fn path_of(&self, rel: &Path) -> PathBuf {
        for (link, loc) in &self.tablespaces {
            if let Ok(rest) = rel.strip_prefix(link) {
                return if rest.as_os_str().is_empty() { loc.clone() } else { loc.join(rest) };
            }
        }
        self.root.join(rel)
    }

    /// Creates `dir` and its missing parents, owned by the owner.
    fn mkdir_all(&self, dir: &Path) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.mkdir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => self.chown(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn chown(&self, path: &Path) -> std::io::Result<()> {
        match self.owner {
            Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// Links the tablespaces, makes the directories PostgreSQL expects,
    /// and renames the staging directory onto the destination.
    fn finish(&self) -> Result<(), BackupError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BackupError::Read { path, source }
        };
        for (link, loc) in &self.tablespaces {
            let at = self.root.join(link);
            if let Some(parent) = at.parent() {
                self.mkdir_all(parent).map_err(io(parent))?;
            }
            std::os::unix::fs::symlink(loc, &at).map_err(io(&at))?;
            self.chown(&at).map_err(io(&at))?;
        }
        for dir in ["pg_wal", "pg_wal/archive_status"] {
            let d = self.root.join(dir);
            self.mkdir_all(&d).map_err(io(&d))?;
        }
        let control = self.root.join(super::walk::PG_CONTROL);
        if !control.is_file() {
            return Err(BackupError::Internal("the backup held no global/pg_control".into()));
        }
        if self.staged {
            std::fs::rename(&self.root, &self.dest).map_err(io(&self.dest))?;
            if let Some(parent) = self.dest.parent()
                && let Ok(d) = std::fs::File::open(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })
            {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Removes what a failed restore wrote (the staging directory, or the
    /// destination's contents), and the tablespaces' contents.
    fn discard(&self) {
        let r = if self.staged { std::fs::remove_dir_all(&self.root) } else { empty_dir(&self.root) };
        if let Err(e) = r {
            tracing::error!(path = %self.root.display(), error = %e, "cannot remove a failed restore; remove it before retrying");
        }
        for (_, loc) in &self.tablespaces {
            let _ = empty_dir(loc);
        }
    }
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Logs bytes, rate and ETA every [`PROGRESS_EVERY`]; never returns.
async fn report_progress(name: &str, progress: &Progress, t0: Instant) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let total = progress.total.load(Ordering::Relaxed);
        let done = progress.read.load(Ordering::Relaxed);
        let rate = done as f64 / t0.elapsed().as_secs_f64().max(0.001);
        let eta = if rate > 0.0 { total.saturating_sub(done) as f64 / rate } else { f64::NAN };
        tracing::info!(
            backup = %name,
            written_mb = done >> 20,
            total_mb = total >> 20,
            rate_mb_s = format!("{:.1}", rate / 1048576.0),
            eta_s = format!("{eta:.0}"),
            "restore in progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(relative(Path::new("/base/1/1259")), Some(PathBuf::from("base/1/1259")));
        assert_eq!(relative(Path::new("global/pg_control")), Some(PathBuf::from("global/pg_control")));
        assert_eq!(relative(Path::new("/../etc/passwd")), None);
        assert_eq!(relative(Path::new("base/../../x")), None);
        assert_eq!(relative(Path::new("/")), None);
    }

    #[test]
    fn tablespace_members_go_to_their_location() {
        let t = Target {
            dest: "/d".into(),
            root: "/d.stage".into(),
            staged: true,
            tablespaces: vec![("pg_tblspc/16400".into(), "/ts/a".into())],
            owner: None,
        };
        assert_eq!(t.path_of(Path::new("pg_tblspc/16400")), PathBuf::from("/ts/a"));
        assert_eq!(t.path_of(Path::new("pg_tblspc/16400/PG_15_x/5/1")), PathBuf::from("/ts/a/PG_15_x/5/1"));
        assert_eq!(t.path_of(Path::new("pg_tblspc/164001/x")), PathBuf::from("/d.stage/pg_tblspc/164001/x"));
        assert_eq!(t.path_of(Path::new("base/1")), PathBuf::from("/d.stage/base/1"));
    }

    #[test]
    fn refuses_a_non_empty_destination() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), b"1").unwrap();
        let e = Target::prepare(dir.path(), None, None).unwrap_err();
        assert!(e.to_string().contains("is not empty"), "{e}");
        let file = dir.path().join("x");
        let e = Target::prepare(&file, None, None).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn stages_beside_a_missing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("new/data");
        let t = Target::prepare(&dest, None, None).unwrap();
        assert!(t.staged);
        assert_eq!(t.root, dir.path().join("new/.data.tusk-restore"));
        assert!(t.root.is_dir());
        // Without pg_control nothing is renamed onto the destination.
        assert!(t.finish().is_err());
        assert!(!dest.exists());
        t.discard();
        assert!(!t.root.exists());
    }
}
