//! What the bucket holds: completed backups, those with a sentinel
//! (reference §1.5). Ordered as WAL-G orders them: by the sentinel's
//! Last-Modified, oldest first; `LATEST` is the newest.

use serde::Serialize;
use time::OffsetDateTime;

use super::BackupError;
use super::sentinel::Sentinel;
use crate::postgres::wal::format_lsn;
use crate::storage::layout::{self, Layout};
use crate::storage::s3::ObjectStore;

/// One completed backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub name: String,
    /// The sentinel's Last-Modified (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub modified: OffsetDateTime,
    /// The first WAL segment the backup needs.
    pub wal_file_name: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub start_time: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finish_time: Option<OffsetDateTime>,
    pub start_lsn: Option<String>,
    pub finish_lsn: Option<String>,
    pub timeline: Option<u32>,
    pub pg_version: u32,
    pub system_identifier: Option<u64>,
    pub uncompressed_size: i64,
    pub compressed_size: i64,
    pub duration_s: Option<f64>,
    pub is_permanent: bool,
    #[serde(skip)]
    pub sentinel: Sentinel,
}

/// Every completed backup, oldest first. A sentinel that does not parse
/// is reported and left out (a backup tusk cannot read is not offered).
pub async fn list(store: &ObjectStore, layout: &Layout) -> Result<Vec<BackupEntry>, BackupError> {
    let objects = store.list_shallow(&layout.basebackups_prefix()).await?;
    let mut out = Vec::new();
    for o in objects {
        let Some(name) = layout.backup_of_sentinel(&o.key) else { continue };
        let Some((bytes, _)) = store.get(&o.key).await? else { continue };
        let sentinel = match Sentinel::parse(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(backup = %name, error = %e, "skipping a backup whose sentinel does not parse");
                continue;
            }
        };
        out.push(entry(name, o.modified, sentinel));
    }
    // Stable: equal times keep key order.
    out.sort_by_key(|e| e.modified);
    Ok(out)
}

fn entry(name: &str, modified: i64, s: Sentinel) -> BackupEntry {
    let wal_file_name = layout::first_segment(name).unwrap_or_default().to_owned();
    let timeline = s.tusk_timeline.or_else(|| u32::from_str_radix(wal_file_name.get(..8)?, 16).ok());
    BackupEntry {
        name: name.to_owned(),
        modified: OffsetDateTime::from_unix_timestamp(modified).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        wal_file_name,
        start_time: s.start_time,
        finish_time: s.finish_time,
        start_lsn: s.lsn.map(format_lsn),
        finish_lsn: s.finish_lsn.map(format_lsn),
        timeline,
        pg_version: s.pg_version,
        system_identifier: s.system_identifier,
        uncompressed_size: s.uncompressed_size,
        compressed_size: s.compressed_size,
        duration_s: match (s.start_time, s.finish_time) {
            (Some(a), Some(b)) => Some((b - a).as_seconds_f64()),
            _ => None,
        },
        is_permanent: s.is_permanent,
        sentinel: s,
    }
}

/// `NAME` or `LATEST` (the newest) among `backups`.
pub fn select<'a>(backups: &'a [BackupEntry], which: &str) -> Result<&'a BackupEntry, BackupError> {
    if which == "LATEST" {
        return backups
            .last()
            .ok_or_else(|| BackupError::NotFound("LATEST: the bucket holds no completed backup".into()));
    }
    backups.iter().find(|b| b.name == which).ok_or_else(|| {
        BackupError::NotFound(format!("backup {which} does not exist (or has no sentinel: it never completed)"))
    })
}

/// The `backup-list` table, WAL-G's columns plus tusk's details.
pub fn table(backups: &[BackupEntry]) -> String {
    let mut out = format!(
        "{:<40} {:<25} {:<24} {:>11} {:>3} {:>12} {:>12} {:>9}\n",
        "name", "modified", "wal_file_name", "start_lsn", "tl", "size", "compressed", "duration"
    );
    for b in backups {
        let t = b.modified.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        out.push_str(&format!(
            "{:<40} {:<25} {:<24} {:>11} {:>3} {:>12} {:>12} {:>8.1}s\n",
            b.name,
            t,
            b.wal_file_name,
            b.start_lsn.as_deref().unwrap_or("-"),
            b.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            human(b.uncompressed_size),
            human(b.compressed_size),
            b.duration_s.unwrap_or(f64::NAN),
        ));
    }
    out
}

pub(crate) fn human(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= (1u64 << 30) as f64 => format!("{:.1} GiB", n / (1u64 << 30) as f64),
        n if n >= (1u64 << 20) as f64 => format!("{:.1} MiB", n / (1u64 << 20) as f64),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}
