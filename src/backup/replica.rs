//! A new replica from the bucket instead of from the leader (Spilo's
//! `wal_e` replica method): the latest base backup of this cluster, then
//! WAL from the archive, then streaming from the leader. It keeps a large
//! copy off the primary. Taken only when the WAL written since the backup
//! is within `WALE_BACKUP_THRESHOLD_MEGABYTES` and
//! `WALE_BACKUP_THRESHOLD_PERCENTAGE` of the backup's size (replaying more
//! would take longer than a fresh copy); otherwise the caller uses
//! `pg_basebackup`.

use std::sync::Arc;

use super::fetch::{self, FetchOptions, Fetched};
use super::list::{self, BackupEntry};
use super::{BackupError, Cancel, Progress};
use crate::config::Config;
use crate::config::storage::StorageConfig;
use crate::postgres::RunAs;
use crate::storage::layout::Layout;
use crate::storage::s3::ObjectStore;

/// Why no backup is used (logged by the caller, which then clones from the leader).
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    NoBackup,
    TooMuchWal { backup: String, wal_mb: u64, limit: String },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NoBackup => write!(f, "no base backup of this cluster in the bucket"),
            Skip::TooMuchWal { backup, wal_mb, limit } => {
                write!(f, "{wal_mb} MB of WAL written since backup {backup}, over {limit}")
            }
        }
    }
}

/// The backup to restore a replica from: the newest of this cluster
/// (`sysid`), if the WAL since it (up to the leader's `leader_lsn`) is
/// within the thresholds.
pub fn choose(
    backups: &[BackupEntry],
    sysid: Option<u64>,
    leader_lsn: Option<u64>,
    threshold_mb: u64,
    threshold_pct: u64,
) -> Result<&BackupEntry, Skip> {
    let b = backups
        .iter()
        .rev()
        .find(|b| sysid.is_none() || b.system_identifier.is_none() || b.system_identifier == sysid)
        .ok_or(Skip::NoBackup)?;
    let (Some(lsn), Some(start)) = (leader_lsn, b.sentinel.lsn) else { return Ok(b) };
    let wal = lsn.saturating_sub(start);
    let wal_mb = wal >> 20;
    if wal > threshold_mb.saturating_mul(1 << 20) {
        return Err(Skip::TooMuchWal {
            backup: b.name.clone(),
            wal_mb,
            limit: format!("WALE_BACKUP_THRESHOLD_MEGABYTES={threshold_mb}"),
        });
    }
    let size = b.uncompressed_size.max(0) as u64;
    if wal.saturating_mul(100) > size.saturating_mul(threshold_pct) {
        return Err(Skip::TooMuchWal {
            backup: b.name.clone(),
            wal_mb,
            limit: format!("WALE_BACKUP_THRESHOLD_PERCENTAGE={threshold_pct}% of its {} MB", size >> 20),
        });
    }
    Ok(b)
}

/// Restores this cluster's latest backup into PGDATA (missing or empty).
/// `Ok(Err(skip))`: no suitable backup; nothing was written.
pub async fn restore(
    cfg: &Config,
    storage: &StorageConfig,
    sysid: Option<u64>,
    leader_lsn: Option<u64>,
    run_as: &RunAs,
) -> Result<Result<Fetched, Skip>, BackupError> {
    let store = ObjectStore::new(storage).await?;
    let layout = Layout::new(&storage.root);
    let backups = list::list(&store, &layout).await?;
    let settings = &storage.backup;
    let chosen = match choose(&backups, sysid, leader_lsn, settings.threshold_megabytes, settings.threshold_percentage)
    {
        Ok(b) => b,
        Err(skip) => return Ok(Err(skip)),
    };
    tracing::info!(backup = %chosen.name, "creating the replica from the base backup in S3");
    let opts = FetchOptions {
        dest: cfg.postgres.data.clone(),
        which: chosen.name.clone(),
        expect_system_id: sysid,
        owner: run_as.switch.then(|| (run_as.uid.as_raw(), run_as.gid.as_raw())),
        concurrency: storage.download_concurrency,
    };
    let fetched =
        fetch::fetch(&store, &layout, &opts, &Arc::new(Progress::default()), &Arc::new(Cancel::default())).await?;
    Ok(Ok(fetched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, sysid: u64, lsn: u64, size: i64) -> BackupEntry {
        let json = format!(r#"{{"LSN":{lsn},"SystemIdentifier":{sysid},"UncompressedSize":{size}}}"#);
        let sentinel = super::super::sentinel::Sentinel::parse(json.as_bytes()).unwrap();
        BackupEntry {
            name: name.into(),
            modified: time::OffsetDateTime::UNIX_EPOCH,
            wal_file_name: String::new(),
            start_time: None,
            finish_time: None,
            start_lsn: None,
            finish_lsn: None,
            timeline: None,
            pg_version: 0,
            system_identifier: Some(sysid),
            uncompressed_size: size,
            compressed_size: 0,
            duration_s: None,
            is_permanent: false,
            sentinel,
        }
    }

    #[test]
    fn thresholds_and_system() {
        const MB: u64 = 1 << 20;
        let b = [entry("old", 7, 0, 1000 * MB as i64), entry("new", 7, 100 * MB, 1000 * MB as i64)];
        let pick = |sysid, lsn, mb, pct| choose(&b, sysid, lsn, mb, pct).map(|e| e.name.as_str());
        assert_eq!(pick(Some(7), Some(150 * MB), 102400, 30), Ok("new"));
        assert_eq!(pick(Some(7), None, 102400, 30), Ok("new"), "no leader position: use the backup");
        assert_eq!(pick(Some(8), Some(150 * MB), 102400, 30), Err(Skip::NoBackup), "another system's backups");
        assert!(matches!(pick(Some(7), Some(500 * MB), 102400, 30), Err(Skip::TooMuchWal { .. })), "400 MB > 30%");
        assert_eq!(pick(Some(7), Some(500 * MB), 102400, 50), Ok("new"), "400 MB <= 50%");
        assert!(matches!(pick(Some(7), Some(500 * MB), 100, 50), Err(Skip::TooMuchWal { .. })), "400 MB > 100 MB");
        assert_eq!(choose(&[], None, None, 1, 1).map(|e| e.name.clone()), Err(Skip::NoBackup));
    }
}
