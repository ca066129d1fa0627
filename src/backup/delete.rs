//! Retention, as WAL-G's `delete retain|before` (dry run unless
//! confirmed) and Spilo's rule after each scheduled backup.
//!
//! [`plan`] is pure: from the completed backups and the listings of
//! `basebackups_005/` and `wal_005/` it decides what goes. The oldest kept
//! backup (the *target*; for a delta backup, the full backup its chain
//! starts from) and every newer one stay; older backups go unless
//! permanent. WAL and incomplete backup leftovers go when they sort before
//! every kept backup by (timeline, segment) of their first 24-hex run, as
//! WAL-G orders them, so a prefix reused after a new `initdb` (segments
//! counting from 1 again) never loses the newer cluster's WAL. History
//! files never go; neither does the WAL a permanent backup needs.
//! [`execute`] deletes the sentinels first, so a backup stops being
//! listed before any of its parts disappear.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use time::OffsetDateTime;

use super::BackupError;
use super::list::BackupEntry;
use crate::postgres::wal::SegmentName;
use crate::storage::layout::{self, Layout, SENTINEL_SUFFIX};
use crate::storage::s3::{ObjectInfo, ObjectStore};

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The N newest backups (N ≥ 1).
    Retain(usize),
    /// This backup and every newer one.
    Before(String),
    /// Every backup finished at or after this time.
    BeforeTime(OffsetDateTime),
}

impl Target {
    /// WAL-G's arguments: `retain [FULL|FIND_FULL] N`, `before [FIND_FULL]
    /// NAME|TIME`. Deltas always keep their chain (FIND_FULL), so the
    /// modifiers are accepted and change nothing.
    pub fn parse(args: &[String]) -> Result<Target, String> {
        let usage = "usage: tusk delete retain [FULL|FIND_FULL] N | before [FIND_FULL] NAME|TIME [--confirm]";
        let (verb, rest) = args.split_first().ok_or(usage)?;
        let rest: Vec<&String> = rest.iter().filter(|a| !matches!(a.as_str(), "FULL" | "FIND_FULL")).collect();
        let [value] = rest.as_slice() else { return Err(usage.into()) };
        match verb.as_str() {
            "retain" => match value.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Target::Retain(n)),
                _ => Err(format!("retain: {value:?} is not a number of backups of at least 1")),
            },
            "before" if value.starts_with("base_") => Ok(Target::Before((*value).clone())),
            "before" => OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                .map(Target::BeforeTime)
                .map_err(|_| {
                    format!(
                        "before: {value:?} is neither a backup name (base_...) nor a time with a time zone \
                         (2026-12-01T00:00:00Z)"
                    )
                }),
            other => Err(format!("unknown delete mode {other:?}; {usage}")),
        }
    }
}

/// What a deletion removes (and, for the dry run, what it would).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Plan {
    /// The oldest backup kept (None: the bucket holds no backup).
    pub keep_from: Option<String>,
    /// Backups kept, oldest first.
    pub kept: Vec<String>,
    /// Completed backups deleted, oldest first.
    pub backups: Vec<String>,
    /// Older backups kept because they are permanent.
    pub permanent: Vec<String>,
    /// Backup prefixes without a sentinel (interrupted backups) deleted.
    pub leftovers: Vec<String>,
    /// WAL objects deleted (segments, `.backup` and `.partial` files).
    pub wal_files: usize,
    /// The oldest and newest WAL file deleted.
    pub wal_range: Option<(String, String)>,
    pub objects: usize,
    pub bytes: u64,
    /// Every key, sentinels first.
    #[serde(skip)]
    pub keys: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// One line for the log or the terminal.
    pub fn summary(&self) -> String {
        let wal = match &self.wal_range {
            Some((a, b)) => format!("{} WAL files ({a} .. {b})", self.wal_files),
            None => "no WAL".into(),
        };
        format!(
            "{} backups ({}), {} incomplete leftovers, {wal}: {} objects, {}; keeping {} backups from {}{}",
            self.backups.len(),
            if self.backups.is_empty() { "-".into() } else { self.backups.join(", ") },
            self.leftovers.len(),
            self.objects,
            super::list::human(self.bytes as i64),
            self.kept.len(),
            self.keep_from.as_deref().unwrap_or("-"),
            if self.permanent.is_empty() {
                String::new()
            } else {
                format!(" and permanent {}", self.permanent.join(", "))
            },
        )
    }
}

/// (timeline, log, segment) of the first 24-hex run: WAL-G's order.
fn position(name: &str) -> Option<SegmentName> {
    SegmentName::parse(layout::first_segment(name)?)
}

/// The WAL a permanent backup needs: its timeline, from its start segment
/// to the segment of its finish LSN, named for 16 MiB segments (the sentinel
/// does not record the size; tusk and Spilo clusters use the default, and
/// larger segments only make the range longer than needed).
fn permanent_range(b: &BackupEntry) -> Option<(SegmentName, SegmentName)> {
    let start = position(&b.name)?;
    let end = match b.sentinel.finish_lsn {
        Some(lsn) => SegmentName::of_lsn(start.tli, lsn, crate::postgres::wal::DEFAULT_SEGMENT_SIZE),
        None => SegmentName { tli: start.tli, log: u32::MAX, seg: u32::MAX },
    };
    Some((start, end))
}

/// Decides what a deletion removes. `backups`: completed ones, oldest
/// first (`list::list`); `permanent`: names whose `metadata.json` says
/// permanent (WAL-G keeps the flag there); `base`/`wal`: full listings.
pub fn plan(
    layout: &Layout,
    backups: &[BackupEntry],
    permanent: &HashSet<String>,
    base: &[ObjectInfo],
    wal: &[ObjectInfo],
    target: &Target,
) -> Result<Plan, BackupError> {
    let mut t = match target {
        // No more backups than asked for: nothing goes, not even WAL.
        Target::Retain(n) if backups.len() <= *n => return Ok(Plan::default()),
        Target::Retain(n) => backups.len() - n,
        Target::Before(name) => backups.iter().position(|b| &b.name == name).ok_or_else(|| {
            BackupError::NotFound(format!("backup {name} does not exist (or has no sentinel: it never completed)"))
        })?,
        Target::BeforeTime(at) => match backups.iter().position(|b| b.modified >= *at) {
            Some(i) => i,
            None => {
                return Err(BackupError::Refused(format!(
                    "no backup finished at or after {at}: deleting before it would delete every backup"
                )));
            }
        },
    };
    let Some(_) = backups.get(t) else { return Ok(Plan::default()) };
    let index = |name: &str| backups.iter().position(|b| b.name == name);
    // Keep the whole chain of every kept delta: the target moves back to
    // the oldest full backup a kept backup needs.
    let chain_start = |mut i: usize| -> Result<usize, BackupError> {
        let first = i;
        let mut seen = 0;
        while let Some(from) = backups[i].sentinel.delta_from.as_deref().filter(|f| !f.is_empty()) {
            i = index(from).ok_or_else(|| {
                BackupError::Refused(format!(
                    "delta backup {} needs {from}, which is not in the bucket: refusing to delete around a broken \
                     chain",
                    backups[i].name
                ))
            })?;
            seen += 1;
            if seen > backups.len() {
                return Err(BackupError::Refused(format!("the delta chain of {} loops", backups[first].name)));
            }
        }
        Ok(i)
    };
    let mut oldest = t;
    for i in t..backups.len() {
        oldest = oldest.min(chain_start(i)?);
    }
    t = oldest;
    let is_permanent = |b: &BackupEntry| b.is_permanent || permanent.contains(&b.name);
    // Permanent backups keep their chain and their WAL.
    let mut keep_old: BTreeSet<usize> = BTreeSet::new();
    for (i, b) in backups[..t].iter().enumerate() {
        if is_permanent(b) {
            let mut j = i;
            keep_old.insert(j);
            while let Some(from) = backups[j].sentinel.delta_from.as_deref().filter(|f| !f.is_empty()) {
                match index(from) {
                    Some(k) if !keep_old.contains(&k) => {
                        keep_old.insert(k);
                        j = k;
                    }
                    _ => break,
                }
            }
        }
    }
    let kept_ranges: Vec<(SegmentName, SegmentName)> =
        keep_old.iter().filter_map(|&i| permanent_range(&backups[i])).collect();
    // Nothing sorting at or after a kept backup's start goes.
    let boundary = backups[t..].iter().filter_map(|b| position(&b.name)).min();
    let Some(boundary) = boundary else {
        return Err(BackupError::Refused(format!(
            "the kept backups' names ({}...) carry no WAL segment: refusing to guess what is older",
            backups[t].name
        )));
    };

    let mut plan = Plan {
        keep_from: Some(backups[t].name.clone()),
        kept: backups[t..].iter().map(|b| b.name.clone()).collect(),
        permanent: keep_old.iter().map(|&i| backups[i].name.clone()).collect(),
        ..Plan::default()
    };
    let deleted: Vec<&BackupEntry> =
        backups[..t].iter().enumerate().filter(|(i, _)| !keep_old.contains(i)).map(|(_, b)| b).collect();
    plan.backups = deleted.iter().map(|b| b.name.clone()).collect();

    // The objects of each backup prefix, by backup name.
    let root = layout.basebackups_prefix();
    let completed: HashSet<&str> = backups.iter().map(|b| b.name.as_str()).collect();
    let doomed: HashSet<&str> = deleted.iter().map(|b| b.name.as_str()).collect();
    let mut sentinels = Vec::new();
    let mut rest = Vec::new();
    let mut leftovers = BTreeSet::new();
    for o in base {
        let Some(rel) = o.key.strip_prefix(&root) else { continue };
        let (name, is_sentinel) = match rel.strip_suffix(SENTINEL_SUFFIX).filter(|n| !n.contains('/')) {
            Some(n) => (n, true),
            None => match rel.split_once('/') {
                Some((n, _)) => (n, false),
                None => continue,
            },
        };
        if doomed.contains(name) {
            plan.bytes += o.size;
            if is_sentinel { sentinels.push(o.key.clone()) } else { rest.push(o.key.clone()) }
        } else if !completed.contains(name)
            && !base.iter().any(|s| s.key == format!("{root}{name}{SENTINEL_SUFFIX}"))
            && position(name).is_some_and(|p| p < boundary)
        {
            // An interrupted backup older than everything kept.
            plan.bytes += o.size;
            leftovers.insert(name.to_owned());
            rest.push(o.key.clone());
        }
    }
    plan.leftovers = leftovers.into_iter().collect();

    let wal_root = layout.wal_prefix();
    let mut wal_keys = Vec::new();
    for o in wal {
        let Some(file) = o.key.strip_prefix(&wal_root) else { continue };
        let Some(p) = position(file) else { continue }; // history files stay
        if p >= boundary || kept_ranges.iter().any(|(a, b)| p.tli == a.tli && p >= *a && p <= *b) {
            continue;
        }
        plan.bytes += o.size;
        wal_keys.push((p, file.to_owned(), o.key.clone()));
    }
    wal_keys.sort();
    plan.wal_files = wal_keys.len();
    plan.wal_range = match (wal_keys.first(), wal_keys.last()) {
        (Some(a), Some(b)) => Some((a.1.clone(), b.1.clone())),
        _ => None,
    };
    plan.keys = sentinels;
    plan.keys.extend(rest);
    plan.keys.extend(wal_keys.into_iter().map(|(_, _, k)| k));
    plan.objects = plan.keys.len();
    Ok(plan)
}

/// Lists the bucket's objects and plans for `backups` (`list::list`),
/// reading `metadata.json` of each backup that would go, for WAL-G's
/// permanent flag.
pub async fn prepare(
    store: &ObjectStore,
    layout: &Layout,
    backups: &[BackupEntry],
    target: &Target,
) -> Result<Plan, BackupError> {
    let base = store.list(&layout.basebackups_prefix()).await?;
    let wal = store.list(&layout.wal_prefix()).await?;
    let first = plan(layout, backups, &HashSet::new(), &base, &wal, target)?;
    let mut permanent = HashSet::new();
    for name in &first.backups {
        let Some((bytes, _)) = store.get(&layout.metadata_key(name)).await? else { continue };
        let is = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("is_permanent").and_then(|p| p.as_bool()))
            .unwrap_or(false);
        if is {
            permanent.insert(name.clone());
        }
    }
    if permanent.is_empty() { Ok(first) } else { plan(layout, backups, &permanent, &base, &wal, target) }
}

/// Deletes what `plan` names: the sentinels first (the backups stop being
/// listed), then their parts, the leftovers and the WAL, oldest first.
pub async fn execute(store: &ObjectStore, plan: &Plan) -> Result<(), BackupError> {
    let n = plan.keys.iter().take_while(|k| k.ends_with(SENTINEL_SUFFIX)).count();
    let (sentinels, rest) = plan.keys.split_at(n);
    store.delete(sentinels).await?;
    store.delete(rest).await?;
    Ok(())
}

/// Spilo's rule (`postgres_backup.sh`), with `n` = `BACKUP_NUM_TO_RETAIN`
/// (at least 2), used both as a count and as days: once at least `n`
/// backups are younger than `n` days, everything older than the newest
/// backup older than `n` days goes; that backup stays, so point-in-time
/// recovery reaches back `n` days. Returns the backup to delete before.
pub fn spilo_target(backups: &[BackupEntry], n: u32, now: OffsetDateTime) -> Option<String> {
    let days = i64::from(n.max(2));
    let mut before: Option<&BackupEntry> = None;
    let mut left = 0;
    for b in backups {
        if (now - b.modified).whole_days() >= days {
            if before.is_none_or(|x| b.modified > x.modified) {
                before = Some(b);
            }
        } else {
            left += 1;
        }
    }
    before.filter(|_| left >= days).map(|b| b.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::sentinel::Sentinel;
    use time::Duration;

    fn at(minutes: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid") + Duration::minutes(minutes)
    }

    fn backup(seg: u32, tl: u32, minutes: i64) -> BackupEntry {
        let name = format!("base_{tl:08X}{:08X}{seg:08X}", 0);
        BackupEntry {
            name: name.clone(),
            modified: at(minutes),
            wal_file_name: name[5..].to_owned(),
            start_time: None,
            finish_time: None,
            start_lsn: None,
            finish_lsn: None,
            timeline: Some(tl),
            pg_version: 150000,
            system_identifier: None,
            uncompressed_size: 0,
            compressed_size: 0,
            duration_s: None,
            is_permanent: false,
            sentinel: Sentinel { finish_lsn: Some((u64::from(seg) + 1) << 24), ..Sentinel::default() },
        }
    }

    fn obj(key: String) -> ObjectInfo {
        ObjectInfo { key, size: 10, modified: 0 }
    }

    fn objects(
        l: &Layout,
        backups: &[BackupEntry],
        extra_base: &[&str],
        wal: &[&str],
    ) -> (Vec<ObjectInfo>, Vec<ObjectInfo>) {
        let mut base = Vec::new();
        for b in backups {
            base.push(obj(l.sentinel_key(&b.name)));
            base.push(obj(l.metadata_key(&b.name)));
            base.push(obj(l.tar_partition_key(&b.name, "part_001.tar.lz4")));
        }
        for k in extra_base {
            base.push(obj(format!("{}{k}", l.basebackups_prefix())));
        }
        (base, wal.iter().map(|w| obj(format!("{}{w}", l.wal_prefix()))).collect())
    }

    const WAL: &[&str] = &[
        "000000010000000000000001.lz4",
        "000000010000000000000002.lz4",
        "000000010000000000000002.00000028.backup.lz4",
        "000000010000000000000003.lz4",
        "000000010000000000000004.lz4",
        "000000010000000000000005.lz4",
        "00000002.history.lz4",
        "000000020000000000000005.lz4",
        "000000020000000000000006.lz4",
        "000000020000000000000007.lz4",
    ];

    #[test]
    fn retain_keeps_the_newest_and_the_wal_they_need() {
        let l = Layout::new("spilo/x/wal/15/");
        let bs = vec![backup(2, 1, 0), backup(3, 1, 10), backup(5, 2, 20), backup(7, 2, 30)];
        let (base, wal) = objects(&l, &bs, &["base_000000010000000000000001/tar_partitions/part_001.tar.lz4"], WAL);
        let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Retain(2)).expect("plans");
        assert_eq!(p.keep_from.as_deref(), Some("base_000000020000000000000005"));
        assert_eq!(p.backups, ["base_000000010000000000000002", "base_000000010000000000000003"]);
        assert_eq!(p.leftovers, ["base_000000010000000000000001"]);
        // Sentinels first, then parts, then WAL oldest first.
        assert!(p.keys[0].ends_with("base_000000010000000000000002_backup_stop_sentinel.json"));
        assert!(p.keys[1].ends_with("base_000000010000000000000003_backup_stop_sentinel.json"));
        let wal_gone: Vec<&str> = p.keys.iter().filter_map(|k| k.strip_prefix(&l.wal_prefix())).collect();
        // Timeline 1's segment 5 sorts before timeline 2's 5: gone; the
        // history file stays.
        assert_eq!(
            wal_gone,
            [
                "000000010000000000000001.lz4",
                "000000010000000000000002.00000028.backup.lz4",
                "000000010000000000000002.lz4",
                "000000010000000000000003.lz4",
                "000000010000000000000004.lz4",
                "000000010000000000000005.lz4",
            ]
        );
        assert_eq!(p.objects, 2 * 3 + 1 + 6);
        assert_eq!(p.bytes, 10 * p.objects as u64);
        // Retaining as many as there are, or more, deletes nothing at all.
        for n in [4, 9] {
            let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Retain(n)).expect("plans");
            assert!(p.is_empty(), "{n}: {p:?}");
        }
        // Before the oldest: no backup goes, the WAL and leftovers before it do.
        let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Before(bs[0].name.clone())).expect("plans");
        assert!(p.backups.is_empty() && p.wal_files == 1 && p.leftovers.len() == 1, "{p:?}");
    }

    #[test]
    fn before_a_name_or_a_time_and_unknown_names() {
        let l = Layout::new("");
        let bs = vec![backup(2, 1, 0), backup(3, 1, 10), backup(5, 2, 20)];
        let (base, wal) = objects(&l, &bs, &[], WAL);
        let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Before(bs[1].name.clone())).expect("plans");
        assert_eq!(p.backups, [bs[0].name.clone()]);
        assert_eq!(p.wal_range, Some(("000000010000000000000001.lz4".into(), "000000010000000000000002.lz4".into())));
        let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::BeforeTime(at(5))).expect("plans");
        assert_eq!(p.backups, [bs[0].name.clone()]);
        assert!(matches!(
            plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::BeforeTime(at(25))),
            Err(BackupError::Refused(_))
        ));
        assert!(matches!(
            plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Before("base_nope".into())),
            Err(BackupError::NotFound(_))
        ));
        assert!(plan(&l, &[], &HashSet::new(), &[], &wal, &Target::Retain(1)).expect("plans").is_empty());
    }

    #[test]
    fn permanent_backups_keep_their_parts_and_wal() {
        let l = Layout::new("");
        let mut bs = vec![backup(2, 1, 0), backup(3, 1, 10), backup(5, 2, 20), backup(7, 2, 30)];
        bs[0].is_permanent = true; // from the sentinel
        let (base, wal) = objects(&l, &bs, &[], WAL);
        let marked: HashSet<String> = [bs[1].name.clone()].into(); // from metadata.json
        let p = plan(&l, &bs, &marked, &base, &wal, &Target::Retain(1)).expect("plans");
        assert_eq!(p.backups, [bs[2].name.clone()]);
        assert_eq!(p.permanent, [bs[0].name.clone(), bs[1].name.clone()]);
        let wal_gone: Vec<&str> = p.keys.iter().filter_map(|k| k.strip_prefix(&l.wal_prefix())).collect();
        // Segments 2..4 on timeline 1 stay (finish LSNs in 3 and 4).
        assert_eq!(
            wal_gone,
            [
                "000000010000000000000001.lz4",
                "000000010000000000000005.lz4",
                "000000020000000000000005.lz4",
                "000000020000000000000006.lz4"
            ]
        );
        assert!(p.keys.iter().all(|k| !k.contains("base_000000010000000000000002")));
    }

    #[test]
    fn delta_chains_and_a_reused_prefix() {
        let l = Layout::new("");
        let mut bs = vec![backup(2, 1, 0), backup(3, 1, 10), backup(5, 1, 20)];
        bs[2].sentinel.delta_from = Some(bs[1].name.clone());
        let (base, wal) = objects(&l, &bs, &[], WAL);
        // Retain 1 keeps the delta's full backup too.
        let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Retain(1)).expect("plans");
        assert_eq!(p.kept, [bs[1].name.clone(), bs[2].name.clone()]);
        bs[2].sentinel.delta_from = Some("base_gone".into());
        assert!(matches!(
            plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Retain(1)),
            Err(BackupError::Refused(_))
        ));
        // A new cluster in the same prefix: its backup (segment 2) is the
        // newest; the old cluster's higher segments are older by time but
        // never sort before it, so its WAL is left, never the new one's.
        let bs = vec![backup(5, 1, 0), backup(7, 1, 10), backup(2, 1, 20)];
        let (base, wal) = objects(&l, &bs, &[], WAL);
        let p = plan(&l, &bs, &HashSet::new(), &base, &wal, &Target::Retain(1)).expect("plans");
        assert_eq!(p.backups.len(), 2);
        assert_eq!(p.wal_files, 1, "{p:?}");
    }

    #[test]
    fn spilo_rule() {
        let day = 24 * 60;
        let now = at(100 * day);
        let bs = |ages: &[i64]| {
            ages.iter().enumerate().map(|(i, a)| backup(i as u32 + 2, 1, 100 * day - a)).collect::<Vec<_>>()
        };
        // Five daily backups, n = 2: the newest of those two days or older
        // stays (age 2 days) and the older ones go.
        let b = bs(&[4 * day, 3 * day, 2 * day, day, 10]);
        assert_eq!(spilo_target(&b, 2, now), Some(b[2].name.clone()));
        // Too few recent backups: nothing goes, however old the rest.
        let b = bs(&[30 * day, 20 * day, 10]);
        assert_eq!(spilo_target(&b, 2, now), None);
        // Nothing old enough.
        let b = bs(&[50, 40, 30, 20, 10]);
        assert_eq!(spilo_target(&b, 5, now), None);
        // n below 2 counts as 2.
        let b = bs(&[3 * day, 100, 10]);
        assert_eq!(spilo_target(&b, 1, now), Some(b[0].name.clone()));
    }

    #[test]
    fn parses_walg_arguments() {
        let p = |s: &str| Target::parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>());
        assert_eq!(p("retain 2"), Ok(Target::Retain(2)));
        assert_eq!(p("retain FULL 3"), Ok(Target::Retain(3)));
        assert_eq!(
            p("before FIND_FULL base_000000010000000000000002"),
            Ok(Target::Before("base_000000010000000000000002".into()))
        );
        assert!(matches!(p("before 2026-12-01T00:00:00Z"), Ok(Target::BeforeTime(_))));
        assert!(p("retain 0").is_err());
        assert!(p("retain x").is_err());
        assert!(p("before 2026-12-01").is_err());
        assert!(p("everything").is_err());
        assert!(p("retain").is_err());
    }
}
