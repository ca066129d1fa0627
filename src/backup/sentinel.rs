//! WAL-G's JSON objects of a base backup (reference §1.4), with WAL-G's
//! field names: the sentinel (its existence makes the backup exist),
//! `metadata.json` and `files_metadata.json`. Read leniently (unknown
//! fields ignored, `Spec` or `spec`, null `Spec`), written as WAL-G v3
//! writes them. tusk adds `TuskParts` (size and xxh3 of each part as
//! uploaded) to the sentinel; WAL-G ignores unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The date format string WAL-G records (informational).
pub const DATE_FMT: &str = "%Y-%m-%dT%H:%M:%S.%fZ";

/// `<name>_backup_stop_sentinel.json` (`BackupSentinelDtoV2`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sentinel {
    #[serde(rename = "LSN", default)]
    pub lsn: Option<u64>,
    #[serde(rename = "DeltaLSN", default, skip_serializing_if = "Option::is_none", alias = "DeltaFromLSN")]
    pub delta_lsn: Option<u64>,
    #[serde(rename = "DeltaFrom", default, skip_serializing_if = "Option::is_none")]
    pub delta_from: Option<String>,
    #[serde(rename = "DeltaFullName", default, skip_serializing_if = "Option::is_none")]
    pub delta_full_name: Option<String>,
    #[serde(rename = "DeltaCount", default, skip_serializing_if = "Option::is_none")]
    pub delta_count: Option<u32>,
    #[serde(rename = "PgVersion", default)]
    pub pg_version: u32,
    #[serde(rename = "FinishLSN", default)]
    pub finish_lsn: Option<u64>,
    #[serde(rename = "SystemIdentifier", default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<u64>,
    #[serde(rename = "UncompressedSize", default)]
    pub uncompressed_size: i64,
    #[serde(rename = "CompressedSize", default)]
    pub compressed_size: i64,
    #[serde(rename = "DataCatalogSize", default, skip_serializing_if = "Option::is_none")]
    pub data_catalog_size: Option<i64>,
    #[serde(rename = "Spec", alias = "spec", default)]
    pub spec: Option<Spec>,
    #[serde(rename = "UserData", default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
    #[serde(rename = "FilesMetadataDisabled", default, skip_serializing_if = "std::ops::Not::not")]
    pub files_metadata_disabled: bool,
    #[serde(rename = "ChkpNum", default)]
    pub chkp_num: Option<u32>,
    #[serde(rename = "Version", default)]
    pub version: u32,
    #[serde(rename = "StartTime", default, with = "time::serde::rfc3339::option")]
    pub start_time: Option<OffsetDateTime>,
    #[serde(rename = "FinishTime", default, with = "time::serde::rfc3339::option")]
    pub finish_time: Option<OffsetDateTime>,
    #[serde(rename = "DateFmt", default)]
    pub date_fmt: String,
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
    #[serde(rename = "DataDir", default)]
    pub data_dir: String,
    #[serde(rename = "IsPermanent", default)]
    pub is_permanent: bool,
    /// tusk's own: each part as uploaded (WAL-G ignores this field).
    #[serde(rename = "TuskParts", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tusk_parts: BTreeMap<String, PartInfo>,
    /// tusk's own: the timeline the backup started on.
    #[serde(rename = "TuskTimeline", default, skip_serializing_if = "Option::is_none")]
    pub tusk_timeline: Option<u32>,
}

/// One uploaded part: its object's size and the xxh3-64 of its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartInfo {
    pub size: u64,
    pub xxh3: String,
}

/// Tablespaces (`Spec`): `{"base_prefix": PGDATA, "tablespaces": [oids],
/// "<oid>": {"loc": target, "link": "pg_tblspc/<oid>"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    pub base_prefix: String,
    pub tablespaces: Vec<(String, Tablespace)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub loc: String,
    pub link: String,
}

impl Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2 + self.tablespaces.len()))?;
        m.serialize_entry("base_prefix", &self.base_prefix)?;
        let names: Vec<&str> = self.tablespaces.iter().map(|(n, _)| n.as_str()).collect();
        m.serialize_entry("tablespaces", &names)?;
        for (name, ts) in &self.tablespaces {
            m.serialize_entry(name, ts)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        let base_prefix = match map.remove("base_prefix") {
            Some(serde_json::Value::String(s)) => s,
            _ => String::new(),
        };
        let names: Vec<String> = match map.remove("tablespaces") {
            Some(v) => serde_json::from_value(v).map_err(serde::de::Error::custom)?,
            None => Vec::new(),
        };
        let mut tablespaces = Vec::new();
        for name in names {
            let v =
                map.remove(&name).ok_or_else(|| serde::de::Error::custom(format!("tablespace {name} has no entry")))?;
            tablespaces.push((name, serde_json::from_value(v).map_err(serde::de::Error::custom)?));
        }
        Ok(Spec { base_prefix, tablespaces })
    }
}

/// `metadata.json` (`ExtendedMetadataDto`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    #[serde(with = "time::serde::rfc3339")]
    pub start_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finish_time: OffsetDateTime,
    #[serde(default)]
    pub date_fmt: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub data_dir: String,
    #[serde(default)]
    pub pg_version: u32,
    #[serde(default)]
    pub start_lsn: u64,
    #[serde(default)]
    pub finish_lsn: u64,
    #[serde(default)]
    pub is_permanent: bool,
    #[serde(default)]
    pub system_identifier: Option<u64>,
    #[serde(default)]
    pub uncompressed_size: i64,
    #[serde(default)]
    pub compressed_size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
}

/// One file of `files_metadata.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileDescription {
    #[serde(rename = "IsIncremented", default)]
    pub is_incremented: bool,
    #[serde(rename = "IsSkipped", default)]
    pub is_skipped: bool,
    #[serde(rename = "MTime", with = "time::serde::rfc3339")]
    pub mtime: OffsetDateTime,
    #[serde(rename = "CorruptBlocks", default, skip_serializing_if = "Option::is_none")]
    pub corrupt_blocks: Option<CorruptBlocks>,
    #[serde(rename = "UpdatesCount", default)]
    pub updates_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CorruptBlocks {
    #[serde(rename = "CorruptBlocksCount")]
    pub count: u64,
    #[serde(rename = "SomeCorruptBlocks")]
    pub some: Vec<u32>,
}

/// `files_metadata.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FilesMetadata {
    #[serde(rename = "Files", default)]
    pub files: BTreeMap<String, FileDescription>,
    #[serde(rename = "TarFileSets", default)]
    pub tar_file_sets: BTreeMap<String, Vec<String>>,
    #[serde(rename = "DatabasesByNames", default)]
    pub databases_by_names: BTreeMap<String, serde_json::Value>,
}

impl Sentinel {
    /// Parses a sentinel leniently; `what` names it in the error.
    pub fn parse(bytes: &[u8]) -> Result<Sentinel, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sentinel as WAL-G v3.0.5 writes it (field names and types).
    const WALG: &str = r#"{"LSN":33554472,"PgVersion":150010,"FinishLSN":33554720,"SystemIdentifier":7268616322854375442,
        "UncompressedSize":24508928,"CompressedSize":3297151,"DataCatalogSize":24444104,"Spec":null,"ChkpNum":null,
        "Version":2,"StartTime":"2026-12-03T17:00:01.123456789Z","FinishTime":"2026-12-03T17:00:02.5Z",
        "DateFmt":"%Y-%m-%dT%H:%M:%S.%fZ","Hostname":"pg1","DataDir":"/home/postgres/pgdata/pgroot/data",
        "IsPermanent":false,"SomethingNew":1}"#;

    #[test]
    fn reads_walg_sentinels() {
        let s = Sentinel::parse(WALG.as_bytes()).unwrap();
        assert_eq!(s.lsn, Some(33554472));
        assert_eq!(s.finish_lsn, Some(33554720));
        assert_eq!(s.system_identifier, Some(7268616322854375442));
        assert_eq!(s.spec, None);
        assert_eq!(s.version, 2);
        assert_eq!(s.start_time.unwrap().nanosecond(), 123456789);
        // WAL-E's lowercase spec, a delta's old field name.
        let s = Sentinel::parse(
            br#"{"LSN":1,"DeltaFromLSN":5,"spec":{"base_prefix":"/d","tablespaces":["16384"],"16384":{"loc":"/t/","link":"pg_tblspc/16384"}}}"#,
        )
        .unwrap();
        assert_eq!(s.delta_lsn, Some(5));
        let spec = s.spec.unwrap();
        assert_eq!(spec.tablespaces[0].0, "16384");
        assert_eq!(spec.tablespaces[0].1.loc, "/t/");
    }

    #[test]
    fn writes_walg_field_names() {
        let mut s = Sentinel::parse(WALG.as_bytes()).unwrap();
        s.spec = Some(Spec {
            base_prefix: "/d".into(),
            tablespaces: vec![("16385".into(), Tablespace { loc: "/ts".into(), link: "pg_tblspc/16385".into() })],
        });
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for k in [
            "LSN",
            "PgVersion",
            "FinishLSN",
            "SystemIdentifier",
            "UncompressedSize",
            "CompressedSize",
            "Spec",
            "ChkpNum",
            "Version",
            "StartTime",
            "FinishTime",
            "DateFmt",
            "Hostname",
            "DataDir",
            "IsPermanent",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert!(v["ChkpNum"].is_null());
        assert!(v.get("DeltaLSN").is_none());
        assert_eq!(v["Spec"]["tablespaces"], serde_json::json!(["16385"]));
        assert_eq!(v["Spec"]["16385"]["link"], "pg_tblspc/16385");
        assert_eq!(v["StartTime"], "2026-12-03T17:00:01.123456789Z");
        let back: Sentinel = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
