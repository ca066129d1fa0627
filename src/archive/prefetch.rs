//! The prefetch directory `pg_wal/.tusk-prefetch`: segments downloaded
//! ahead of `restore_command`, by the supervisor's archiver (tasks of its
//! process) or, with no supervisor, by detached `tusk wal-prefetch`
//! processes, as WAL-G forks its prefetcher. Everything here is resolved
//! beneath PGDATA through directory descriptors ([`beneath`]).
//!
//! Direct mode coordinates its processes through the directory alone: a
//! prefetcher claims a segment with an exclusive `<segment>.claim` file
//! (holding its pid) before downloading it and removes the claim after the
//! rename; a `wal-fetch` that finds a claim waits for the file. A claim
//! whose process is gone, or older than [`CLAIM_STALE`], is abandoned.
//! The hit path ([`direct_hit`]) needs no runtime and no S3 client: a few
//! system calls, so that recovery never waits on process start-up work.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::beneath;
use super::engine::{ArchiveError, PREFETCH_DIR, io};
use crate::postgres::wal::{self, HistoryEntry, Kind, SegmentName};

/// `<segment>.claim`: a prefetcher process downloads that segment.
const CLAIM_SUFFIX: &str = ".claim";
/// A claim older than this is abandoned (its prefetcher died).
const CLAIM_STALE: Duration = Duration::from_secs(60);

/// The cluster's system identifier (first 8 bytes of `global/pg_control`).
pub(super) fn read_sysid(pgdata: &Path) -> Result<u64, ArchiveError> {
    let path = pgdata.join("global/pg_control");
    let mut b = [0u8; 8];
    std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut b)).map_err(io(&path))?;
    Ok(u64::from_le_bytes(b))
}

/// Whether `dest` is recovery's own target (`RECOVERYXLOG`): only then
/// is a segment delivered from, and followed by, prefetch (pg_rewind and
/// manual calls name other files).
pub(super) fn is_recovery_dest(dest: &Path) -> bool {
    dest.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("RECOVERY"))
}

/// The prefetch directory of one data directory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prefetch<'a> {
    pub pgdata: &'a Path,
    /// uid/gid of what is created (the supervisor, as root).
    pub owner: Option<(u32, u32)>,
}

fn claim_name(name: &str) -> OsString {
    OsString::from(format!("{name}{CLAIM_SUFFIX}"))
}

impl Prefetch<'_> {
    /// `pg_wal/.tusk-prefetch` (created when `create`).
    pub fn dir(&self, create: bool) -> Result<beneath::Dir, ArchiveError> {
        let pg_wal = beneath::Dir::open(self.pgdata, &["pg_wal"], self.owner)?;
        let name = OsStr::new(PREFETCH_DIR);
        Ok(if create { pg_wal.subdir_create(name)? } else { pg_wal.subdir(name)? })
    }

    /// Moves a complete, valid prefetched copy of `name` to `dest`; the
    /// segment size when it did. A copy whose header does not match (size,
    /// address, system identifier) is removed.
    pub fn take(&self, name: &str, seg: SegmentName, dest: &Path) -> Result<Option<u64>, ArchiveError> {
        let Ok(dir) = self.dir(false) else { return Ok(None) };
        let fname = OsStr::new(name);
        let Ok(mut f) = dir.open_file(fname) else { return Ok(None) };
        let mut head = [0u8; wal::LONG_HEADER_LEN];
        let valid = if f.read_exact(&mut head).is_ok()
            && let Ok(h) = wal::parse_long_header(&head)
            && f.metadata().is_ok_and(|m| m.len() == h.seg_size as u64)
            && h.pageaddr == seg.start_lsn(h.seg_size as u64)
            && read_sysid(self.pgdata).is_ok_and(|s| s == h.sysid)
        {
            Some(h.seg_size as u64)
        } else {
            None
        };
        drop(f);
        let Some(seg_size) = valid else {
            tracing::warn!(wal = %name, "discarding an invalid prefetched file");
            let _ = dir.unlink(fname);
            return Ok(None);
        };
        let (to, to_name) = beneath::Dir::parent_of(self.pgdata, dest, self.owner)?;
        dir.rename_to(fname, &to, &to_name)?;
        Ok(Some(seg_size))
    }

    /// Whether a live prefetcher process holds a fresh claim on `name` and
    /// has not stored it yet.
    pub fn claimed(&self, name: &str) -> bool {
        let Ok(dir) = self.dir(false) else { return false };
        held(&dir, &claim_name(name)) && dir.age(OsStr::new(name)).is_none()
    }

    /// The next `window` segments after `seg` (following `history` towards
    /// timeline `target`) that are neither stored nor, with `claims`,
    /// claimed; removes stored files and stale claims of `seg` and older.
    pub fn candidates(
        &self,
        seg: SegmentName,
        seg_size: u64,
        window: usize,
        claims: bool,
        (target, history): (u32, &[HistoryEntry]),
    ) -> Vec<(String, SegmentName)> {
        let segno = seg.segno(seg_size);
        let fd = self.dir(false).ok();
        if let Some(fd) = &fd {
            for name in fd.names().unwrap_or_default() {
                let Some(n) = name.to_str() else { continue };
                let (stem, claim) = match n.strip_suffix(CLAIM_SUFFIX) {
                    Some(stem) => (stem, true),
                    None => (n, false),
                };
                let older = SegmentName::parse(stem).is_some_and(|s| s.segno(seg_size) <= segno);
                if older && (!claim || !held(fd, &name)) {
                    let _ = fd.unlink(&name);
                }
            }
        }
        let mut out = Vec::new();
        for i in 1..=window as u64 {
            let next_segno = segno + i;
            let tli = wal::timeline_of_segment(target, history, next_segno, seg_size);
            if tli < seg.tli {
                continue;
            }
            let next = SegmentName::from_segno(tli, next_segno, seg_size);
            let name = next.to_string();
            let present = fd
                .as_ref()
                .is_some_and(|fd| fd.age(OsStr::new(&name)).is_some() || (claims && held(fd, &claim_name(&name))));
            if !present {
                out.push((name, next));
            }
        }
        out
    }

    /// Claims `name` for this process (taking over a stale claim); false
    /// when it is stored already or another process holds a fresh claim.
    pub fn claim(&self, dir: &beneath::Dir, name: &str) -> Result<bool, ArchiveError> {
        if dir.age(OsStr::new(name)).is_some() {
            return Ok(false);
        }
        let claim = claim_name(name);
        let pid = std::process::id().to_string();
        if dir.create_new(&claim, pid.as_bytes())? {
            return Ok(true);
        }
        if held(dir, &claim) {
            return Ok(false);
        }
        // Left by a prefetcher that died: take it over.
        let _ = dir.unlink(&claim);
        Ok(dir.create_new(&claim, pid.as_bytes())?)
    }

    /// Ends this process's claim on `name`.
    pub fn release(&self, name: &str) {
        if let Ok(d) = self.dir(false) {
            let _ = d.unlink(&claim_name(name));
        }
    }

    /// Removes every stored file and stale claim, then the directory if
    /// nothing else is left (a running prefetcher keeps its claims).
    pub fn clear(&self) {
        let Ok(dir) = self.dir(false) else { return };
        for name in dir.names().unwrap_or_default() {
            let held_claim = name.to_str().is_some_and(|n| n.ends_with(CLAIM_SUFFIX)) && held(&dir, &name);
            if !held_claim {
                let _ = dir.unlink(&name);
            }
        }
        let _ = std::fs::remove_dir(self.pgdata.join("pg_wal").join(PREFETCH_DIR));
    }

    /// Stores a verified segment: a temporary file, then a rename (never
    /// a partial file under the name).
    pub fn store(&self, name: &str, raw: &[u8]) -> Result<(), ArchiveError> {
        Ok(self.dir(true)?.write_new(OsStr::new(name), raw)?)
    }
}

/// Whether the claim `claim` is held: younger than [`CLAIM_STALE`] and
/// its process (the pid it holds) alive. A claim being written (no pid
/// yet) counts as held.
fn held(dir: &beneath::Dir, claim: &OsStr) -> bool {
    if dir.age(claim).is_none_or(|a| a > CLAIM_STALE) {
        return false;
    }
    let mut text = String::new();
    let Ok(mut f) = dir.open_file(claim) else { return false };
    let _ = f.read_to_string(&mut text);
    match text.trim().parse::<i32>() {
        // ESRCH: gone. EPERM (another user's process) still counts as alive.
        Ok(pid) if pid > 0 => {
            !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
        }
        _ => true,
    }
}

/// The newest history file PostgreSQL has restored into `pg_wal`
/// (recovery keeps its target timeline's there): direct mode's view of the
/// timelines ahead.
pub(super) fn local_history(pgdata: &Path) -> Option<(u32, Vec<HistoryEntry>)> {
    let entries = std::fs::read_dir(pgdata.join("pg_wal")).ok()?;
    let (tli, name) = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| match wal::classify(&n) {
            Some(Kind::History(tli)) => Some((tli, n)),
            _ => None,
        })
        .max()?;
    let text = std::fs::read_to_string(pgdata.join("pg_wal").join(name)).ok()?;
    Some((tli, wal::parse_history(&text).ok()?))
}

/// Starts `tusk wal-prefetch NAME...` detached: its own process group,
/// stderr shared (PostgreSQL's log; `system()` waits only for this
/// process), reaped by whoever is PID 1 once this process exits.
pub(super) fn spawn_prefetcher(wanted: &[(String, SegmentName)]) {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!("prefetch: cannot find this executable: {e}");
            return;
        }
    };
    let r = std::process::Command::new(exe)
        .arg("wal-prefetch")
        .args(wanted.iter().map(|(n, _)| n))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    match r {
        Ok(child) => tracing::debug!(pid = child.id(), first = %wanted[0].0, n = wanted.len(), "prefetcher started"),
        Err(e) => tracing::debug!("prefetch: cannot start tusk wal-prefetch: {e}"),
    }
}

/// Direct mode's refill rule: a process (and a TLS connection) per batch,
/// not per segment: a prefetcher starts once half the window is missing.
pub(super) fn refill(wanted: &[(String, SegmentName)], window: usize) {
    if !wanted.is_empty() && wanted.len() >= (window / 2).max(1) {
        spawn_prefetcher(wanted);
    }
}

/// Direct mode's hit path, before any runtime or S3 client exists: waits
/// for a claimed segment, delivers a stored one to `dest`, and keeps the
/// window full. False: the caller fetches it itself.
pub fn direct_hit(pgdata: &Path, name: &str, dest: &Path, window: usize) -> bool {
    let Some(Kind::Segment(seg)) = wal::classify(name) else { return false };
    if !is_recovery_dest(dest) {
        return false;
    }
    let p = Prefetch { pgdata, owner: None };
    let deadline = std::time::Instant::now() + CLAIM_STALE;
    while p.claimed(name) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let t0 = std::time::Instant::now();
    let Ok(Some(seg_size)) = p.take(name, seg, dest) else { return false };
    tracing::debug!(wal = %name, us = t0.elapsed().as_micros() as u64, "delivered from prefetch");
    let (target, history) = match local_history(pgdata) {
        Some((t, h)) if t > seg.tli => (t, h),
        _ => (seg.tli, Vec::new()),
    };
    refill(&p.candidates(seg, seg_size, window, true, (target, &history)), window);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_dead_processes_are_not_waited_on() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("pg_wal").join(PREFETCH_DIR)).expect("mkdir");
        let p = Prefetch { pgdata: tmp.path(), owner: None };
        let dir = p.dir(false).expect("opens");
        let seg = "000000010000000000000005";
        assert!(!p.claimed(seg), "no claim");
        assert!(p.claim(&dir, seg).expect("claims"), "free: claimed");
        assert!(p.claimed(seg), "held by this live process");
        assert!(!p.claim(&dir, seg).expect("claims"), "held: not claimed twice");
        p.release(seg);
        assert!(!p.claimed(seg), "released");
        // A claim left by a process that has exited: not held, taken over.
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        assert!(dir.create_new(&claim_name(seg), dead.to_string().as_bytes()).expect("create"));
        assert!(!p.claimed(seg), "the claim of exited pid {dead} is not waited on");
        assert!(p.claim(&dir, seg).expect("claims"), "and is taken over");
        p.release(seg);
        // Stored: not claimable, and the window skips it.
        p.store(seg, b"x").expect("stores");
        assert!(!p.claim(&dir, seg).expect("claims"));
        let s4 = SegmentName::parse("000000010000000000000004").expect("name");
        let c = p.candidates(s4, 16 << 20, 3, true, (1, &[]));
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["000000010000000000000006", "000000010000000000000007"]);
    }
}
