//! Base backup settings, Spilo's and WAL-G's variables: compression and
//! tar size of a backup, page checksum verification, the schedule and the
//! retention the supervisor applies, and when a new replica may be built
//! from a backup instead of from the leader.

use serde::Serialize;

use super::storage::{Compression, compression};
use super::{ConfigError, RawEnv, parse::parse_bool};

/// WAL-G's `WALG_TAR_SIZE_THRESHOLD` default: a part is closed once it
/// passes this many bytes (after a whole file).
pub const DEFAULT_TAR_SIZE_THRESHOLD: u64 = 1_073_741_823;

/// How base backups are taken and kept. Part of [`super::StorageConfig`]:
/// without storage there are no backups.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSettings {
    /// `WALG_BACKUP_COMPRESSION_METHOD`, else `WALG_COMPRESSION_METHOD`.
    pub compression: Compression,
    /// `WALG_TAR_SIZE_THRESHOLD` (bytes of uncompressed tar per part).
    pub tar_size_threshold: u64,
    /// `WALG_VERIFY_PAGE_CHECKSUMS`; `None`: verify when the cluster has
    /// data checksums (the check costs little next to compression).
    pub verify_page_checksums: Option<bool>,
    /// `WALG_UPLOAD_DISK_CONCURRENCY`: compression threads (default: the
    /// machine's cores, at most 4).
    pub compress_threads: usize,
    /// `WALG_DISK_RATE_LIMIT`: bytes per second a backup reads at most.
    pub disk_rate_limit: Option<u64>,
    /// `BACKUP_SCHEDULE`, five-field cron, in UTC (Spilo: `0 1 * * *`).
    pub schedule: String,
    /// `BACKUP_NUM_TO_RETAIN` (Spilo: 5, at least 2): keep this many newest
    /// backups and every backup younger than this many days.
    pub num_to_retain: u32,
    /// `WALE_BACKUP_THRESHOLD_MEGABYTES` (102400): a replica is built from a
    /// backup only if the WAL since it is smaller.
    pub threshold_megabytes: u64,
    /// `WALE_BACKUP_THRESHOLD_PERCENTAGE` (30): ... and smaller than this
    /// share of the backup's size.
    pub threshold_percentage: u64,
}

pub(super) fn parse(raw: &RawEnv, wal_compression: Compression) -> Result<BackupSettings, ConfigError> {
    let compression = match raw.walg_backup_compression_method.as_deref() {
        None => wal_compression,
        Some(v) => compression("WALG_BACKUP_COMPRESSION_METHOD", v)?,
    };
    let tar_size_threshold = match raw.walg_tar_size_threshold.as_deref() {
        None => DEFAULT_TAR_SIZE_THRESHOLD,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= 1 << 20 => n,
            _ => {
                return Err(ConfigError::new(
                    "WALG_TAR_SIZE_THRESHOLD",
                    format!("{v:?} is not a byte count of at least 1048576"),
                ));
            }
        },
    };
    let verify_page_checksums = parse_bool("WALG_VERIFY_PAGE_CHECKSUMS", raw.walg_verify_page_checksums.as_deref())?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);
    let compress_threads =
        number("WALG_UPLOAD_DISK_CONCURRENCY", raw.walg_upload_disk_concurrency.as_deref(), cores as u64, 1..=16)?
            as usize;
    let disk_rate_limit = match raw.walg_disk_rate_limit.as_deref() {
        None => None,
        Some(v) => Some(number("WALG_DISK_RATE_LIMIT", Some(v), 0, 1..=u64::MAX)?),
    };
    let schedule = raw.backup_schedule.as_deref().map(str::trim).unwrap_or("0 1 * * *").to_owned();
    crate::config::cron::Schedule::parse(&schedule)
        .map_err(|e| ConfigError::new("BACKUP_SCHEDULE", format!("{schedule:?}: {e}")))?;
    // Spilo's postgres_backup.sh: at least 2, whatever is asked.
    let num_to_retain =
        number("BACKUP_NUM_TO_RETAIN", raw.backup_num_to_retain.as_deref(), 5, 0..=100_000)?.max(2) as u32;
    let threshold_megabytes = number(
        "WALE_BACKUP_THRESHOLD_MEGABYTES",
        raw.wale_backup_threshold_megabytes.as_deref(),
        102_400,
        0..=u64::MAX,
    )?;
    let threshold_percentage =
        number("WALE_BACKUP_THRESHOLD_PERCENTAGE", raw.wale_backup_threshold_percentage.as_deref(), 30, 0..=100_000)?;
    Ok(BackupSettings {
        compression,
        tar_size_threshold,
        verify_page_checksums,
        compress_threads,
        disk_rate_limit,
        schedule,
        num_to_retain,
        threshold_megabytes,
        threshold_percentage,
    })
}

fn number(var: &str, v: Option<&str>, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => {
            Err(ConfigError::new(var, format!("{v:?} is not a whole number from {} to {}", range.start(), range.end())))
        }
    }
}
