//! The supervisor's backup scheduler (Spilo's cron job, without a cron
//! daemon): at each `BACKUP_SCHEDULE` time, and right after this node
//! becomes the primary of a bucket holding no backup yet (so point-in-time
//! recovery is possible from the start), it takes a base backup — only
//! while the node may (`allowed`: the leader running as primary, or a
//! standalone primary). A backup running when that ends (demotion,
//! switchover, shutdown) is cancelled and leaves no sentinel. After each
//! backup, Spilo's retention rule deletes what is no longer kept.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::delete::{self, Target};
use super::push::{self, Pushed};
use super::{BackupError, Cancel, NodeLock, Progress};
use crate::config::Config;
use crate::config::cron::Schedule;
use crate::prometheus::{Kind, Writer};
use crate::storage::layout::Layout;
use crate::storage::s3::ObjectStore;

/// The longest sleep between checks of the wall clock (a clock step or a
/// suspended VM never makes a schedule late by more than this).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A backup in progress.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(skip)]
    pub progress: Arc<Progress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub error: String,
}

/// What `/patroni` (under `archive.backup`) and `/metrics` show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub running: Option<Running>,
    pub last: Option<Pushed>,
    pub last_failure: Option<Failure>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next: Option<OffsetDateTime>,
    pub succeeded: u64,
    pub failed: u64,
    /// Backups deleted by the retention rule since start.
    pub deleted: u64,
}

/// The scheduler's shared status (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Backups(Arc<Mutex<Status>>);

impl Backups {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().expect("no panics while held"));
    }

    pub fn status(&self) -> Status {
        self.0.lock().expect("no panics while held").clone()
    }

    /// The `backup` object of `/patroni`'s `archive`.
    pub fn status_json(&self) -> serde_json::Value {
        let st = self.status();
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        if let (Some(r), Some(obj)) = (&st.running, v.get_mut("running").and_then(|r| r.as_object_mut())) {
            use std::sync::atomic::Ordering::Relaxed;
            obj.insert("bytes_read".into(), r.progress.read.load(Relaxed).into());
            obj.insert("bytes_total".into(), r.progress.total.load(Relaxed).into());
            obj.insert("bytes_uploaded".into(), r.progress.uploaded.load(Relaxed).into());
        }
        v
    }

    /// Prometheus lines; `labels` is `scope="..",name=".."`.
    pub fn metrics(&self, labels: &str) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.status();
        let mut w = Writer::new(labels);
        w.metric(
            "tusk_backup_running",
            Kind::Gauge,
            "1 while a base backup runs on this node.",
            st.running.is_some() as u8,
        );
        if let Some(r) = &st.running {
            w.metric(
                "tusk_backup_running_bytes_read",
                Kind::Gauge,
                "Bytes of data files the running backup has read.",
                r.progress.read.load(Relaxed),
            );
            w.metric(
                "tusk_backup_running_bytes_total",
                Kind::Gauge,
                "Bytes of data files the running backup will read.",
                r.progress.total.load(Relaxed),
            );
            w.metric(
                "tusk_backup_running_bytes_uploaded",
                Kind::Gauge,
                "Compressed bytes of the running backup S3 confirmed.",
                r.progress.uploaded.load(Relaxed),
            );
        }
        w.metric(
            "tusk_backup_deleted_total",
            Kind::Counter,
            "Base backups deleted by the retention rule (BACKUP_NUM_TO_RETAIN).",
            st.deleted,
        );
        w.metric("tusk_backup_succeeded_total", Kind::Counter, "Base backups this node completed.", st.succeeded);
        w.metric(
            "tusk_backup_failed_total",
            Kind::Counter,
            "Base backups this node started that failed or were cancelled.",
            st.failed,
        );
        if let Some(l) = &st.last {
            w.metric(
                "tusk_backup_last_success_timestamp_seconds",
                Kind::Gauge,
                "When the last base backup of this node finished.",
                l.finish_time.unix_timestamp(),
            );
            w.metric(
                "tusk_backup_last_duration_seconds",
                Kind::Gauge,
                "How long the last base backup took.",
                format!("{:.3}", l.duration_s),
            );
            w.metric(
                "tusk_backup_last_compressed_bytes",
                Kind::Gauge,
                "Bytes uploaded by the last base backup.",
                l.compressed_size,
            );
            w.metric(
                "tusk_backup_last_uncompressed_bytes",
                Kind::Gauge,
                "Bytes of tar in the last base backup.",
                l.uncompressed_size,
            );
        }
        if let Some(n) = st.next {
            w.metric(
                "tusk_backup_next_timestamp_seconds",
                Kind::Gauge,
                "When the next scheduled base backup is due.",
                n.unix_timestamp(),
            );
        }
        w.finish()
    }
}

/// Starts the scheduler (nothing without storage). `allowed`: whether this
/// node may take backups now; the scheduler follows its changes.
pub fn start(cfg: &Config, allowed: watch::Receiver<bool>) -> Backups {
    let backups = Backups::default();
    let Some(storage) = &cfg.storage else { return backups };
    let schedule = match Schedule::parse(&storage.backup.schedule) {
        Ok(s) => s,
        // Validated by the configuration parse; never here.
        Err(e) => {
            tracing::error!(error = %e, "BACKUP_SCHEDULE does not parse; no scheduled backups");
            return backups;
        }
    };
    let b = backups.clone();
    tokio::spawn(run(cfg.clone(), schedule, allowed, b));
    backups
}

async fn run(cfg: Config, schedule: Schedule, mut allowed: watch::Receiver<bool>, backups: Backups) {
    let mut next = schedule.next_after(OffsetDateTime::now_utc());
    backups.update(|s| s.next = next);
    let mut was_allowed = false;
    loop {
        let now_allowed = *allowed.borrow_and_update();
        if now_allowed && !was_allowed && bucket_is_empty(&cfg).await {
            take(&cfg, &backups, &mut allowed, "first backup: the bucket holds no base backup yet").await;
        }
        was_allowed = now_allowed;
        let now = OffsetDateTime::now_utc();
        if let Some(at) = next
            && now >= at
        {
            if *allowed.borrow() {
                take(&cfg, &backups, &mut allowed, "scheduled (BACKUP_SCHEDULE)").await;
            } else {
                tracing::debug!("scheduled backup skipped: this node is not the primary");
            }
            next = schedule.next_after(OffsetDateTime::now_utc());
            backups.update(|s| s.next = next);
            continue;
        }
        let wait = next.map(|at| Duration::try_from(at - now).unwrap_or_default()).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = allowed.changed() => if r.is_err() { return },
        }
    }
}

/// Whether the bucket has no completed backup (an S3 error counts as "not
/// empty": no surprise backups while S3 misbehaves).
async fn bucket_is_empty(cfg: &Config) -> bool {
    let Some(storage) = &cfg.storage else { return false };
    let r = async {
        let store = ObjectStore::new(storage).await?;
        let found = store.list_first(&Layout::new(&storage.root).basebackups_prefix(), 1000).await?;
        Ok::<_, crate::storage::s3::StoreError>(
            !found.iter().any(|o| o.key.ends_with(crate::storage::layout::SENTINEL_SUFFIX)),
        )
    };
    match r.await {
        Ok(empty) => empty,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the base backups; the first backup waits for the schedule");
            false
        }
    }
}

/// Takes one backup, cancelling it if the node stops being allowed to.
async fn take(cfg: &Config, backups: &Backups, allowed: &mut watch::Receiver<bool>, reason: &str) {
    let _lock = match NodeLock::take(&cfg.postgres.root) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "base backup skipped");
            return;
        }
    };
    tracing::info!(reason, "starting a base backup");
    let progress = Arc::new(Progress::default());
    let cancel = Arc::new(Cancel::default());
    backups.update(|s| {
        s.running =
            Some(Running { reason: reason.into(), started: OffsetDateTime::now_utc(), progress: progress.clone() })
    });
    let mut rx = push::spawn(cfg.clone(), progress, cancel.clone());
    let result = loop {
        tokio::select! {
            r = &mut rx => break r.unwrap_or_else(|_| Err(BackupError::Internal("the backup thread died".into()))),
            r = allowed.changed() => {
                if r.is_err() || !*allowed.borrow() {
                    cancel.cancel("this node is no longer the primary");
                    // The thread stops promptly; wait for it so no two overlap.
                    break (&mut rx).await.unwrap_or_else(|_| Err(BackupError::Internal("the backup thread died".into())));
                }
            }
        }
    };
    match result {
        Ok(done) => {
            backups.update(|s| {
                s.running = None;
                s.last = Some(done.clone());
                s.succeeded += 1;
            });
            if *allowed.borrow() {
                retain(cfg, backups).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "base backup failed; no sentinel was written, the next backup is unaffected");
            backups.update(|s| {
                s.running = None;
                s.failed += 1;
                s.last_failure = Some(Failure { time: OffsetDateTime::now_utc(), error: e.to_string() });
            });
        }
    }
}

/// Spilo's retention rule after a backup (`delete::spilo_target`): a
/// failure is logged and retried after the next backup.
async fn retain(cfg: &Config, backups: &Backups) {
    let Some(storage) = &cfg.storage else { return };
    let n = storage.backup.num_to_retain;
    let r = async {
        let store = ObjectStore::new(storage).await?;
        let layout = Layout::new(&storage.root);
        let all = super::list::list(&store, &layout).await?;
        let Some(before) = delete::spilo_target(&all, n, OffsetDateTime::now_utc()) else {
            return Ok(None);
        };
        let plan = delete::prepare(&store, &layout, &all, &Target::Before(before)).await?;
        if plan.is_empty() {
            return Ok(None);
        }
        tracing::info!(plan = %plan.summary(), "retention (BACKUP_NUM_TO_RETAIN={n}): deleting");
        delete::execute(&store, &plan).await?;
        Ok::<_, BackupError>(Some(plan))
    };
    match r.await {
        Ok(Some(plan)) => {
            tracing::info!(backups = plan.backups.len(), wal_files = plan.wal_files, "retention done");
            backups.update(|s| s.deleted += plan.backups.len() as u64);
        }
        Ok(None) => tracing::debug!("retention: nothing to delete"),
        Err(e) => tracing::warn!(error = %e, "retention failed; it runs again after the next backup"),
    }
}
