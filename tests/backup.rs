//! Base backups against the real PostgreSQL and a real garage (S3):
//! `tusk backup-push` in WAL-G's layout, `backup-list`, interruptions that
//! leave no sentinel, page checksum reports. Run as root (postgres runs as
//! postgres).

#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use node::{Node, PG_BIN, require_root, test_dir};
use testbed::{Garage, shared_garage};

/// A key prefix of its own for each test inside the shared bucket.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{test}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A standalone tusk node archiving to `garage` under `prefix`.
fn storage_node(dir: &Path, garage: &Garage, prefix: &str) -> Node {
    let mut n = Node::new(dir);
    for (k, v) in garage.env() {
        if k.starts_with("AWS_") {
            n.set(&k, &v);
        }
    }
    n.set("WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
    n.set("WALG_UPLOAD_CONCURRENCY", "4");
    n.set("WALG_DOWNLOAD_CONCURRENCY", "4");
    n
}

/// Keys under `prefix` (ListObjectsV2 through curl, signed).
fn list_keys(garage: &Garage, prefix: &str) -> Vec<String> {
    let url = format!("{}/{}?list-type=2&prefix={}", garage.endpoint, garage.bucket, prefix.replace('/', "%2F"));
    let out = garage.curl(&[&url]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect()
}

fn pgbench_init(n: &Node, scale: u32) {
    let out = Command::new(format!("{PG_BIN}/pgbench"))
        .args(["-i", "-s", &scale.to_string(), "-q", "-h"])
        .arg(n.socket_dir())
        .args(["-p", &n.pg_port.to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("pgbench");
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
}

/// `tusk backup-push` succeeds, writes WAL-G's layout with the sentinel,
/// and `backup-list` shows it, with the sizes and LSNs the sentinel holds.
#[test]
fn backup_push_writes_walg_layout() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("push");
    let dir = test_dir("backup-push");
    let mut n = storage_node(dir.path(), garage, &prefix);
    n.start();
    n.wait_ready(1);
    pgbench_init(&n, 2);
    let t0 = Instant::now();
    let (st, out, err) = n.run(&["backup-push"]);
    assert!(st.success(), "backup-push: {st}\n{out}\n{err}");
    eprintln!("backup-push took {:?}", t0.elapsed());
    let done: serde_json::Value = serde_json::from_str(out.trim()).expect("backup-push prints JSON");
    let name = done["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("base_000000010000000000000"), "{name}");
    let keys = list_keys(garage, &format!("{prefix}/basebackups_005/"));
    let base = format!("{prefix}/basebackups_005/{name}");
    for want in [
        format!("{base}_backup_stop_sentinel.json"),
        format!("{base}/metadata.json"),
        format!("{base}/files_metadata.json"),
        format!("{base}/tar_partitions/part_001.tar.lz4"),
        format!("{base}/tar_partitions/pg_control.tar.lz4"),
        format!("{base}/tar_partitions/backup_label.tar.lz4"),
    ] {
        assert!(keys.contains(&want), "{want} missing in {keys:#?}");
    }
    let (_, sentinel) = garage.get_object(&format!("{base}_backup_stop_sentinel.json"));
    let s: serde_json::Value = serde_json::from_slice(&sentinel).unwrap();
    for k in ["LSN", "FinishLSN", "PgVersion", "SystemIdentifier", "UncompressedSize", "CompressedSize", "Version", "StartTime", "FinishTime", "Hostname", "DataDir", "IsPermanent"] {
        assert!(s.get(k).is_some(), "sentinel lacks {k}: {s}");
    }
    assert_eq!(s["Version"], 2);
    let sysid = n.psql("select system_identifier from pg_control_system()");
    assert_eq!(s["SystemIdentifier"].to_string(), sysid);
    assert!(s["UncompressedSize"].as_i64().unwrap() > 30 << 20, "{s}");
    // The stop segment is in the archive.
    let finish = s["FinishLSN"].as_u64().unwrap();
    let stop_seg = n.psql(&format!("select pg_walfile_name('{:X}/{:X}'::pg_lsn - 1)", finish >> 32, finish & 0xffff_ffff));
    assert!(
        list_keys(garage, &format!("{prefix}/wal_005/{stop_seg}")).contains(&format!("{prefix}/wal_005/{stop_seg}.lz4")),
        "stop segment {stop_seg} not archived: {:?}", list_keys(garage, &format!("{prefix}/wal_005/"))
    );
    // No page checksum errors in a healthy cluster (initdb --data-checksums).
    assert_eq!(done["corrupt_blocks"], 0);
    let (st, out, err) = n.run(&["backup-list", "--json"]);
    assert!(st.success(), "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], name.as_str());
    let (st, out, _) = n.run(&["backup-list"]);
    assert!(st.success() && out.contains(&name), "{out}");
    n.stop_cleanly(Duration::from_secs(20));
}
