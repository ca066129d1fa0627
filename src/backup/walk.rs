//! What a base backup holds: PGDATA (and the tablespaces its `pg_tblspc`
//! links point to) walked once after `pg_backup_start`, with WAL-G's
//! exclusions (reference §1.3): the contents of excluded directories are
//! left out but the directories kept, so a restore has them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::sentinel::{Spec, Tablespace};

/// Names excluded anywhere in the tree (directories: contents only).
const EXCLUDED: [&str; 17] = [
    "log",
    "pg_log",
    "pg_xlog",
    "pg_wal",
    "pgsql_tmp",
    "postgresql.auto.conf.tmp",
    "postmaster.pid",
    "postmaster.opts",
    "recovery.conf",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_stat_tmp",
    "pg_snapshots",
    "pg_subtrans",
    "standby.signal",
];

/// Files at the top of PGDATA that a backup must not carry: a stale label
/// of an exclusive backup would mislead recovery; the signal files would
/// turn the restored node into a replica or a recovering node by accident.
const EXCLUDED_TOP_FILES: [&str; 5] =
    ["backup_label", "tablespace_map", "backup_label.old", "recovery.signal", "pg_internal.init"];

/// The file WAL-G puts in its own, last part.
pub const PG_CONTROL: &str = "global/pg_control";

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File { size: u64 },
}

/// One entry: its name in the backup (relative to PGDATA, `/`-separated)
/// and where to read it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

#[derive(Debug)]
pub struct Walked {
    /// Directories first within each directory, names sorted; `pg_control` left out.
    pub entries: Vec<Entry>,
    pub pg_control: Entry,
    pub spec: Option<Spec>,
    pub total_bytes: u64,
}

/// Walks `pgdata`. Files that vanish during the walk are left out (a
/// dropped relation; WAL replay agrees). Symbolic links other than
/// tablespaces are skipped with a warning.
pub fn walk(pgdata: &Path) -> std::io::Result<Walked> {
    let mut entries = Vec::new();
    let mut spec = Spec { base_prefix: pgdata.display().to_string(), tablespaces: Vec::new() };
    walk_dir(pgdata, "", &mut entries, Some(&mut spec))?;
    let control_pos = entries.iter().position(|e| e.name == PG_CONTROL).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no {PG_CONTROL}", pgdata.display()))
    })?;
    let pg_control = entries.remove(control_pos);
    let total_bytes =
        entries.iter().chain([&pg_control]).map(|e| if let Kind::File { size } = e.kind { size } else { 0 }).sum();
    let spec = (!spec.tablespaces.is_empty()).then_some(spec);
    Ok(Walked { entries, pg_control, spec, total_bytes })
}

fn walk_dir(dir: &Path, prefix: &str, out: &mut Vec<Entry>, mut spec: Option<&mut Spec>) -> std::io::Result<()> {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !prefix.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    names.sort();
    for os_name in names {
        let Some(name) = os_name.to_str() else {
            tracing::warn!(dir = %dir.display(), name = ?os_name, "skipping a file whose name is not UTF-8");
            continue;
        };
        let path = dir.join(name);
        let rel = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if prefix.is_empty() && meta.is_file() && EXCLUDED_TOP_FILES.contains(&name) {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_symlink() {
            // pg_tblspc/<oid> → the tablespace; pg_wal as a link (initdb -X) is excluded anyway.
            if prefix == "pg_tblspc" {
                let target = std::fs::read_link(&path)?;
                let tmeta = std::fs::metadata(&target)?;
                out.push(entry(rel.clone(), target.clone(), &tmeta, Kind::Dir));
                walk_dir(&target, &rel, out, None)?;
                if let Some(s) = spec.as_deref_mut() {
                    s.tablespaces.push((
                        name.to_owned(),
                        Tablespace { loc: format!("{}/", target.display()), link: rel.clone() },
                    ));
                }
            } else if EXCLUDED.contains(&name) {
                // Kept as an empty directory.
                out.push(Entry {
                    name: rel,
                    path,
                    kind: Kind::Dir,
                    mode: 0o700,
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                });
            } else {
                tracing::warn!(path = %path.display(), "skipping a symbolic link in the data directory");
            }
            continue;
        }
        if ft.is_dir() {
            out.push(entry(rel.clone(), path.clone(), &meta, Kind::Dir));
            if !EXCLUDED.contains(&name) {
                let sub_spec = if rel == "pg_tblspc" { spec.as_deref_mut() } else { None };
                walk_dir(&path, &rel, out, sub_spec)?;
            }
        } else if ft.is_file() {
            if EXCLUDED.contains(&name) {
                continue;
            }
            out.push(entry(rel, path, &meta, Kind::File { size: meta.len() }));
        }
    }
    Ok(())
}

fn entry(name: String, path: PathBuf, meta: &std::fs::Metadata, kind: Kind) -> Entry {
    Entry { name, path, kind, mode: meta.mode() & 0o7777, mtime: meta.mtime(), mtime_nsec: meta.mtime_nsec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_and_tablespaces() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let ts = d.path().join("ts");
        for dir in ["global", "base/1", "pg_wal/archive_status", "pg_stat_tmp", "pg_tblspc", "pg_replslot/s1"] {
            std::fs::create_dir_all(data.join(dir)).unwrap();
        }
        std::fs::create_dir_all(ts.join("PG_15_x/5")).unwrap();
        for (f, n) in [
            ("global/pg_control", 8192),
            ("base/1/1259", 16384),
            ("pg_wal/000000010000000000000001", 100),
            ("pg_stat_tmp/global.stat", 10),
            ("pg_replslot/s1/state", 10),
            ("postmaster.pid", 10),
            ("backup_label", 10),
            ("PG_VERSION", 3),
        ] {
            std::fs::write(data.join(f), vec![0u8; n]).unwrap();
        }
        std::fs::write(ts.join("PG_15_x/5/16401"), vec![1u8; 8192]).unwrap();
        std::os::unix::fs::symlink(&ts, data.join("pg_tblspc/16400")).unwrap();
        let w = walk(&data).unwrap();
        let names: Vec<&str> = w.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "PG_VERSION",
                "base",
                "base/1",
                "base/1/1259",
                "global",
                "pg_replslot",
                "pg_stat_tmp",
                "pg_tblspc",
                "pg_tblspc/16400",
                "pg_tblspc/16400/PG_15_x",
                "pg_tblspc/16400/PG_15_x/5",
                "pg_tblspc/16400/PG_15_x/5/16401",
                "pg_wal"
            ]
        );
        assert_eq!(w.pg_control.name, PG_CONTROL);
        assert_eq!(w.total_bytes, 3 + 16384 + 8192 + 8192);
        let spec = w.spec.unwrap();
        assert_eq!(spec.tablespaces[0].0, "16400");
        assert_eq!(spec.tablespaces[0].1.link, "pg_tblspc/16400");
    }
}
