//! WAL-G's layout of a bucket (reference/walg-pgbackrest.md §1): every key
//! name tusk reads or writes, as pure functions of the root prefix.
//!
//! ```text
//! <root>wal_005/<segment>.<ext>                                   WAL files
//! <root>basebackups_005/base_<segment>/tar_partitions/part_<n>.tar.<ext>
//! <root>basebackups_005/base_<segment>/metadata.json
//! <root>basebackups_005/base_<segment>_backup_stop_sentinel.json   written last
//! ```

/// The WAL directory under the root.
pub const WAL_DIR: &str = "wal_005/";
/// The base backups directory under the root.
pub const BASEBACKUPS_DIR: &str = "basebackups_005/";
/// Suffix of the sentinel that marks a base backup complete.
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";
/// A backup's metadata object inside its directory.
pub const METADATA_FILE: &str = "metadata.json";
/// A backup's per-file metadata inside its directory.
pub const FILES_METADATA_FILE: &str = "files_metadata.json";
/// Where a backup's tar partitions live inside its directory.
pub const TAR_PARTITIONS_DIR: &str = "tar_partitions/";

/// The keys of one archive root (`s3://bucket/<root>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Empty or ending in `/`.
    root: String,
}

impl Layout {
    /// `root`: the prefix inside the bucket (a missing trailing `/` is added).
    pub fn new(root: &str) -> Layout {
        let root = if root.is_empty() || root.ends_with('/') { root.to_owned() } else { format!("{root}/") };
        Layout { root }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>wal_005/`
    pub fn wal_prefix(&self) -> String {
        format!("{}{WAL_DIR}", self.root)
    }

    /// The object of WAL file `name` with compression extension `ext`
    /// (`""`: none; `"."`: WAL-G v3.0.5's trailing dot).
    pub fn wal_key(&self, name: &str, ext: &str) -> String {
        match ext {
            "" => format!("{}{name}", self.wal_prefix()),
            "." => format!("{}{name}.", self.wal_prefix()),
            e => format!("{}{name}.{e}", self.wal_prefix()),
        }
    }

    /// `<root>basebackups_005/`
    pub fn basebackups_prefix(&self) -> String {
        format!("{}{BASEBACKUPS_DIR}", self.root)
    }

    /// A backup's directory: `<root>basebackups_005/<backup>/`.
    pub fn backup_prefix(&self, backup: &str) -> String {
        format!("{}{backup}/", self.basebackups_prefix())
    }

    /// The sentinel, written last: `<root>basebackups_005/<backup>_backup_stop_sentinel.json`.
    pub fn sentinel_key(&self, backup: &str) -> String {
        format!("{}{backup}{SENTINEL_SUFFIX}", self.basebackups_prefix())
    }

    /// `<root>basebackups_005/<backup>/metadata.json`
    pub fn metadata_key(&self, backup: &str) -> String {
        format!("{}{METADATA_FILE}", self.backup_prefix(backup))
    }

    /// `<root>basebackups_005/<backup>/files_metadata.json`
    pub fn files_metadata_key(&self, backup: &str) -> String {
        format!("{}{FILES_METADATA_FILE}", self.backup_prefix(backup))
    }

    /// `<root>basebackups_005/<backup>/tar_partitions/`
    pub fn tar_partitions_prefix(&self, backup: &str) -> String {
        format!("{}{TAR_PARTITIONS_DIR}", self.backup_prefix(backup))
    }

    /// A part of a backup by its file name (`part_001.tar.lz4`,
    /// `pg_control.tar.lz4`, `backup_label.tar.lz4`).
    pub fn tar_partition_key(&self, backup: &str, file: &str) -> String {
        format!("{}{file}", self.tar_partitions_prefix(backup))
    }

    /// The backup a sentinel key names, if it is one (`LIST` of the base
    /// backups prefix → completed backups).
    pub fn backup_of_sentinel<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.basebackups_prefix().as_str())?.strip_suffix(SENTINEL_SUFFIX).filter(|b| !b.contains('/'))
    }
}

/// WAL-G's name of a base backup starting in WAL segment `segment`.
pub fn backup_name(segment: &str) -> String {
    format!("base_{segment}")
}

/// The file name of data part `n` (from 1): `part_001.tar.<ext>` (WAL-G's
/// `%03d`, wider past 999).
pub fn part_file(n: u32, ext: &str) -> String {
    tar_file(&format!("part_{n:03}"), ext)
}

/// `<stem>.tar.<ext>`, or `<stem>.tar` without compression.
pub fn tar_file(stem: &str, ext: &str) -> String {
    if ext.is_empty() { format!("{stem}.tar") } else { format!("{stem}.tar.{ext}") }
}

/// The first 24-hex run of a key (WAL-G's ordering of backups and WAL for
/// retention): `base_000000010000000000000002_D_...` → its start segment.
pub fn first_segment(key: &str) -> Option<&str> {
    let b = key.as_bytes();
    let mut run = 0;
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_hexdigit() {
            run += 1;
            if run == 24 {
                return Some(&key[i + 1 - 24..=i]);
            }
        } else {
            run = 0;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walg_keys() {
        for root in ["", "spilo/pg1/wal/16/"] {
            let l = Layout::new(root);
            assert_eq!(l.wal_prefix(), format!("{root}wal_005/"));
            assert_eq!(
                l.wal_key("000000010000000000000003", "lz4"),
                format!("{root}wal_005/000000010000000000000003.lz4")
            );
            assert_eq!(l.wal_key("00000002.history", ""), format!("{root}wal_005/00000002.history"));
            assert_eq!(l.wal_key("000000010000000000000003", "."), format!("{root}wal_005/000000010000000000000003."));
            let b = backup_name("000000010000000000000002");
            assert_eq!(b, "base_000000010000000000000002");
            assert_eq!(
                l.sentinel_key(&b),
                format!("{root}basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json")
            );
            assert_eq!(
                l.metadata_key(&b),
                format!("{root}basebackups_005/base_000000010000000000000002/metadata.json")
            );
            assert_eq!(
                l.tar_partition_key(&b, &part_file(1, "lz4")),
                format!("{root}basebackups_005/base_000000010000000000000002/tar_partitions/part_001.tar.lz4")
            );
            assert_eq!(part_file(1000, ""), "part_1000.tar");
            assert_eq!(tar_file("pg_control", "zst"), "pg_control.tar.zst");
            assert_eq!(l.backup_of_sentinel(&l.sentinel_key(&b)), Some(b.as_str()));
            assert_eq!(l.backup_of_sentinel(&l.metadata_key(&b)), None);
        }
        assert_eq!(Layout::new("a/b").root(), "a/b/");
        assert_eq!(
            first_segment("x/base_000000010000000A00000031_D_000000010000000100000063"),
            Some("000000010000000A00000031")
        );
        assert_eq!(first_segment("wal_005/00000002.history.lz4"), None);
        assert_eq!(first_segment("wal_005/000000010000000000000001.lz4"), Some("000000010000000000000001"));
    }
}
