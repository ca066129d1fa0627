//! The fetch side of the archiver: `restore_command` (LIST once, verify,
//! temporary file + rename) and the prefetch of the next segments along the
//! timeline history.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::beneath;
use super::engine::{ArchiveError, Archiver, Fetched, io};
use super::prefetch::{self, Prefetch};
use crate::postgres::wal::{self, DEFAULT_SEGMENT_SIZE, Kind, SegmentName};

impl Archiver {
    /// `restore_command` for `name` into `dest` (absolute).
    pub async fn fetch(self: &Arc<Self>, name: &str, dest: &Path) -> Result<Fetched, ArchiveError> {
        let kind =
            wal::classify(name).ok_or_else(|| ArchiveError::Invalid(format!("{name:?} is not a WAL file name")))?;
        let r = self.fetch_inner(name, kind, dest).await;
        match &r {
            Ok(Fetched::Found) => self.handle.update(|s| s.fetched_count += 1),
            Ok(Fetched::NotFound) => {}
            Err(e) => {
                tracing::error!(wal = %name, "wal-fetch failed: {e}");
                self.handle.update(|s| s.fetch_failed_count += 1);
            }
        }
        r
    }

    pub(super) async fn fetch_inner(
        self: &Arc<Self>,
        name: &str,
        kind: Kind,
        dest: &Path,
    ) -> Result<Fetched, ArchiveError> {
        let prefetch = matches!(kind, Kind::Segment(_)) && prefetch::is_recovery_dest(dest);
        if prefetch && let Kind::Segment(seg) = kind {
            // A prefetch of this very segment may be running here: wait for
            // it. (In direct mode `prefetch::direct_hit` already waited for
            // a prefetcher process's claim before this process set up S3.)
            let t0 = std::time::Instant::now();
            let pending = self.prefetching.lock().expect("no panics while held").get(name).cloned();
            if let Some(mut rx) = pending {
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            }
            if let Some(seg_size) = self.prefetch().take(name, seg, dest)? {
                self.seg_size.store(seg_size, Ordering::Relaxed);
                tracing::debug!(wal = %name, waited_ms = t0.elapsed().as_millis() as u64, "delivered from prefetch");
                self.handle.update(|s| s.prefetch_hits += 1);
                self.prefetch_after(seg);
                return Ok(Fetched::Found);
            }
        }
        let found = self.store.find(name).await?;
        let Some(first) = found.first() else {
            tracing::debug!(wal = %name, "not in the archive (no object under any extension)");
            if prefetch && !self.background {
                // The end of the archive: nothing after it was prefetched
                // either; leave no copies behind in a promoted cluster.
                self.prefetch().clear();
            }
            return Ok(Fetched::NotFound);
        };
        let raw = match self.download(name, first).await? {
            Some(r) => r,
            None => {
                return Err(ArchiveError::Invalid(format!("{}: listed but gone when downloaded", first.key)));
            }
        };
        self.verify(name, kind, &raw)?;
        if let Kind::History(tli) = kind
            && let Ok(h) = wal::parse_history(&String::from_utf8_lossy(&raw))
        {
            self.histories.lock().expect("no panics while held").insert(tli, h);
        }
        let me = self.clone();
        let dest_owned = dest.to_owned();
        tokio::task::spawn_blocking(move || me.write_file(&dest_owned, &raw))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("writing panicked: {e}")))??;
        if prefetch && let Kind::Segment(seg) = kind {
            self.prefetch_after(seg);
        }
        Ok(Fetched::Found)
    }

    /// Checks downloaded content before it is delivered.
    pub(super) fn verify(&self, name: &str, kind: Kind, raw: &[u8]) -> Result<(), ArchiveError> {
        match kind {
            Kind::Segment(seg) => {
                self.check_segment(name, seg, raw, raw.len() as u64, kind).map_err(|e| match e {
                    ArchiveError::Invalid(m) => ArchiveError::Invalid(format!("archived copy is bad: {m}")),
                    other => other,
                })?;
                if let Ok(h) = wal::parse_long_header(raw) {
                    self.seg_size.store(h.seg_size as u64, Ordering::Relaxed);
                }
                Ok(())
            }
            Kind::History(_) => {
                let text = std::str::from_utf8(raw)
                    .map_err(|_| ArchiveError::Invalid(format!("archived {name} is not text")))?;
                wal::parse_history(text)
                    .map_err(|e| ArchiveError::Invalid(format!("archived {name} is corrupt: {e}")))?;
                Ok(())
            }
            Kind::Partial(_) | Kind::Backup => Ok(()),
        }
    }

    /// Writes `data` to `dest` through a temporary file in the same
    /// directory and a rename; owned by postgres. The supervisor's archiver
    /// (which writes as root where a client names) resolves `dest` beneath
    /// PGDATA through directory descriptors with no symbolic link followed
    /// ([`beneath`]); direct mode writes with the caller's own rights.
    pub(super) fn write_file(&self, dest: &Path, data: &[u8]) -> Result<(), ArchiveError> {
        if self.background {
            let (dir, name) = beneath::Dir::parent_of(&self.pgdata, dest, self.owner)?;
            return Ok(dir.write_new(&name, data)?);
        }
        let dir = dest.parent().ok_or_else(|| ArchiveError::Invalid(format!("{}: no directory", dest.display())))?;
        let fname = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
        let tmp = dir.join(format!(".{fname}.tusk-tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let r = f.write_all(data).map_err(io(&tmp)).and_then(|_| self.chown(&tmp));
        drop(f);
        if let Err(e) = r.and_then(|_| std::fs::rename(&tmp, dest).map_err(io(dest))) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn chown(&self, path: &Path) -> Result<(), ArchiveError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(path))?;
        }
        Ok(())
    }

    fn prefetch(&self) -> Prefetch<'_> {
        Prefetch { pgdata: &self.pgdata, owner: self.owner }
    }

    /// Starts downloading the next `WALG_DOWNLOAD_CONCURRENCY` segments
    /// after `seg` (on the timelines the known history files give) into
    /// the prefetch directory: tasks of this process under the supervisor;
    /// in direct mode (one process per `restore_command`) a detached
    /// `tusk wal-prefetch` process that outlives this one.
    pub(super) fn prefetch_after(self: &Arc<Self>, seg: SegmentName) {
        if !self.background
            && let Some((tli, h)) = prefetch::local_history(&self.pgdata)
        {
            self.histories.lock().expect("no panics while held").entry(tli).or_insert(h);
        }
        let seg_size = match self.seg_size.load(Ordering::Relaxed) {
            0 => DEFAULT_SEGMENT_SIZE,
            s => s,
        };
        let (target, history) = {
            let h = self.histories.lock().expect("no panics while held");
            match h.last_key_value() {
                Some((t, entries)) if *t > seg.tli => (*t, entries.clone()),
                _ => (seg.tli, Vec::new()),
            }
        };
        let window = self.cfg.download_concurrency;
        let wanted = self.prefetch().candidates(seg, seg_size, window, !self.background, (target, &history));
        if !self.background {
            prefetch::refill(&wanted, window);
            return;
        }
        for (name, next) in wanted {
            let (tx, rx) = watch::channel(false);
            {
                let mut p = self.prefetching.lock().expect("no panics while held");
                if p.contains_key(&name) {
                    continue;
                }
                p.insert(name.clone(), rx);
            }
            let me = self.clone();
            tokio::spawn(async move {
                let _slot = me.downloads.clone().acquire_owned().await.expect("semaphore never closed");
                let _mem = me
                    .memory
                    .clone()
                    .acquire_many_owned(Self::mem_permits(seg_size))
                    .await
                    .expect("semaphore never closed");
                let t0 = std::time::Instant::now();
                match me.prefetch_one(&name, next).await {
                    Ok(true) => tracing::debug!(wal = %name, ms = t0.elapsed().as_millis() as u64, "prefetched"),
                    Ok(false) => tracing::debug!(wal = %name, "prefetch: not in the archive"),
                    Err(e) => tracing::debug!(wal = %name, "prefetch: {e}"),
                }
                me.prefetching.lock().expect("no panics while held").remove(&name);
                let _ = tx.send(true);
            });
        }
    }

    /// The prefetcher process (`tusk wal-prefetch NAME...`): downloads each
    /// segment nobody else has claimed, in parallel, into the prefetch
    /// directory, then removes its claim; returns how many it stored.
    pub async fn prefetch_claimed(self: &Arc<Self>, names: &[String]) -> Result<usize, ArchiveError> {
        let p = self.prefetch();
        let dir = p.dir(true)?;
        let mut tasks = tokio::task::JoinSet::new();
        for name in names {
            let Some(seg) = SegmentName::parse(name) else { continue };
            if !p.claim(&dir, name)? {
                continue;
            }
            let me = self.clone();
            let name = name.clone();
            tasks.spawn(async move {
                let _slot = me.downloads.clone().acquire_owned().await.expect("semaphore never closed");
                let r = me.prefetch_one(&name, seg).await;
                me.prefetch().release(&name);
                if let Err(e) = &r {
                    tracing::debug!(wal = %name, "prefetch: {e}");
                }
                r
            });
        }
        let mut stored = 0;
        while let Some(r) = tasks.join_next().await {
            if matches!(r, Ok(Ok(true))) {
                stored += 1;
            }
        }
        Ok(stored)
    }

    /// Downloads, verifies and stores one segment; false when the archive
    /// does not hold it.
    pub(super) async fn prefetch_one(self: &Arc<Self>, name: &str, seg: SegmentName) -> Result<bool, ArchiveError> {
        let found = self.store.find(name).await?;
        let Some(first) = found.first() else { return Ok(false) };
        let Some(raw) = self.download(name, first).await? else { return Ok(false) };
        self.verify(name, Kind::Segment(seg), &raw)?;
        let me = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || me.prefetch().store(&name, &raw))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("prefetch write panicked: {e}")))??;
        Ok(true)
    }

    /// Removes the prefetch directory (at start: nothing in it is trusted).
    pub fn clear_prefetch(&self) {
        let _ = std::fs::remove_dir_all(self.prefetch_dir());
    }
}
