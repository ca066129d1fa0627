//! WAL archiving against the real PostgreSQL and a real garage (S3):
//! wal-push through the supervisor and without it, wal-fetch, the WAL-G
//! layout for every compression, WAL-G's lzma and WAL-E's lzo objects read,
//! recovery only from the archive, an S3 outage, conflicts, corruption.
//! Run as root (postgres runs as postgres).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cluster::{Cluster, try_sql};
use node::{Node, PG_BIN, require_root, test_dir};
use testbed::{Garage, shared_garage};

/// A key prefix of its own for each test inside the shared bucket.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{test}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// The node's `/metrics` text.
fn metrics(n: &Node) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", &format!("http://127.0.0.1:{}/metrics", n.env["APIPORT"])])
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET /metrics failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `name` (with any labels) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// A standalone tusk node archiving to `garage` under `prefix`.
fn archiving_node(dir: &Path, garage: &Garage, prefix: &str, compression: &str) -> Node {
    let mut n = Node::new(dir);
    archive_to(&mut n, garage, prefix, compression);
    n
}

/// Makes `n` archive to `garage` under `prefix`. No WAL kept for standbys
/// (tusk's default `wal_keep_size` is Patroni's 128 MB): what a checkpoint
/// keeps in `pg_wal` is then what archiving holds back, and a recycled
/// segment is only in the archive.
fn archive_to(n: &mut Node, garage: &Garage, prefix: &str, compression: &str) {
    n.set("TUSK_PG_PARAMETERS", r#"{"shared_buffers":"32MB","max_connections":"30","wal_keep_size":"0"}"#);
    for (k, v) in garage.env() {
        if k.starts_with("AWS_") {
            n.set(&k, &v);
        }
    }
    n.set("WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
    n.set("WALG_COMPRESSION_METHOD", compression);
    n.set("WALG_UPLOAD_CONCURRENCY", "4");
    n.set("WALG_DOWNLOAD_CONCURRENCY", "4");
}

/// Polls `f` every 100 ms until it returns `Some` (bounded, for safety only).
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes some rows and switches to a new segment `n` times; returns the
/// names of the segments completed by the switches, in order.
fn make_segments(node: &Node, n: usize) -> Vec<String> {
    node.psql("create table if not exists t (id serial primary key, v text)");
    let mut segs = Vec::new();
    for _ in 0..n {
        node.psql("insert into t (v) select md5(i::text) from generate_series(1, 2000) i");
        segs.push(node.psql("select pg_walfile_name(pg_current_wal_lsn())"));
        node.psql("select pg_switch_wal()");
    }
    segs
}

/// The bytes of finished segments, read before they are archived: until
/// then PostgreSQL keeps them; once archived, any checkpoint may recycle
/// them (`wal_keep_size` is 0 here).
fn segment_bytes(node: &Node, segs: &[String]) -> Vec<Vec<u8>> {
    segs.iter()
        .map(|s| std::fs::read(node.data().join("pg_wal").join(s)).expect("a finished segment not yet archived"))
        .collect()
}

/// (archived_count, failed_count, last_archived_wal) of pg_stat_archiver.
fn archiver(node: &Node) -> (u64, u64, String) {
    let row = node.psql("select archived_count, failed_count, coalesce(last_archived_wal, '') from pg_stat_archiver");
    let f: Vec<&str> = row.split('|').collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_owned())
}

/// Waits until segment `last` is archived: `pg_stat_archiver` names it or
/// a later segment, or its `.done` marker exists (a base backup's
/// `.backup` file, archived after it, can be the last archived name), or
/// it has already been removed from `pg_wal` (only archived segments are).
fn wait_archived(node: &Node, last: &str) {
    wait_for(&format!("{last} archived"), Duration::from_secs(90), || {
        let (_, _, l) = archiver(node);
        let wal = node.data().join("pg_wal");
        let done = wal.join(format!("archive_status/{last}.done")).exists()
            || (!wal.join(last).exists() && !wal.join(format!("archive_status/{last}.ready")).exists());
        (done || (!l.is_empty() && l.as_str() >= last)).then_some(())
    });
}

fn ready_count(node: &Node) -> usize {
    std::fs::read_dir(node.data().join("pg_wal/archive_status"))
        .map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".ready")).count())
        .unwrap_or(0)
}

/// Keys under `prefix` (ListObjectsV2 through curl, signed).
fn list_keys(garage: &Garage, prefix: &str) -> Vec<String> {
    let url = format!("{}/{}?list-type=2&prefix={}", garage.endpoint, garage.bucket, prefix.replace('/', "%2F"));
    let out = garage.curl(&[&url]);
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    xml.split("<Key>").skip(1).filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned())).collect()
}

/// Runs `tusk ARGS` with the node's environment but no supervisor to talk to.
fn run_direct(node: &Node, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(node::tusk_bin());
    cmd.args(args).env_clear().envs(&node.env).env("TUSK_ARCHIVE_SOCKET", "/nonexistent/tusk.sock");
    cmd.env("PGDATA", node.data());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tusk");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A data directory for direct-mode runs: the node's `pg_control`, an
/// empty `pg_wal`, and the given extra files (relative paths).
fn fake_pgdata(dir: &Path, node: &Node, name: &str, files: &[&str]) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
    std::fs::copy(node.data().join("global/pg_control"), d.join("global/pg_control")).unwrap();
    for f in files {
        std::fs::write(d.join(f), "1\t0/1000000\tno recovery target specified\n").unwrap();
    }
    d
}

/// An HA cluster of two nodes on the shared etcd, archiving to one prefix.
fn archiving_cluster(name: &str, garage: &Garage, prefix: &str, dcs: &str) -> Cluster {
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new(name, etcd, 2, |_| eps.clone());
    for n in &mut c.nodes {
        archive_to(n, garage, prefix, "lz4");
        n.set("TUSK_BOOTSTRAP_DCS", dcs);
    }
    c
}

/// n1 first, so that it becomes the primary; then n2, until it streams.
fn start_n1_then_n2(c: &mut Cluster) {
    c.nodes[0].start();
    let n1 = &c.nodes[0];
    wait_for("n1 primary", Duration::from_secs(60), || (in_recovery(n1).as_deref() == Some("f")).then_some(()));
    c.nodes[1].start();
    // Not pg_stat_replication on n1: pg_basebackup's own WAL stream shows
    // there as "streaming" while n2's postgres is only starting.
    c.wait_streaming("n2", Duration::from_secs(60));
}

/// `pg_is_in_recovery()` of a node, `None` while it does not answer.
fn in_recovery(n: &Node) -> Option<String> {
    try_sql(n, "select pg_is_in_recovery()")
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or(-1)
}

/// Pushes real segments through the supervisor with each compression,
/// checks WAL-G's object names, and fetches them back byte for byte, both
/// through the supervisor and without it.
#[test]
fn round_trip_every_compression() {
    require_root();
    let garage = shared_garage();
    for (method, ext) in [("lz4", ".lz4"), ("zstd", ".zst"), ("brotli", ".br"), ("none", "")] {
        let dir = test_dir(&format!("arch-rt-{method}"));
        let prefix = unique_prefix(&format!("rt-{method}"));
        let mut n = archiving_node(dir.path(), garage, &prefix, method);
        n.start();
        n.wait_ready(1);
        let segs = make_segments(&n, 3);
        let originals = segment_bytes(&n, &segs);
        wait_archived(&n, segs.last().unwrap());
        let keys = list_keys(garage, &format!("{prefix}/wal_005/"));
        for (seg, original) in segs.iter().zip(&originals) {
            let key = format!("{prefix}/wal_005/{seg}{ext}");
            assert!(keys.contains(&key), "{method}: {key} not in {keys:?}");
            // Through the supervisor (dest inside PGDATA, as restore_command's %p is).
            let dest = n.data().join("tusk-test-fetched");
            let (st, _, err) = n.run(&["wal-fetch", seg, dest.to_str().unwrap()]);
            assert_eq!(exit_code(st), 0, "{method} {seg}: {err}");
            assert!(std::fs::read(&dest).unwrap() == *original, "{method} {seg}: fetched bytes differ");
            std::fs::remove_file(&dest).unwrap();
            // Without the supervisor, straight from the environment.
            let dest2 = dir.path().join("direct-fetched");
            let (code, err) = run_direct(&n, &["wal-fetch", seg, dest2.to_str().unwrap()], &[]);
            assert_eq!(code, 0, "{method} {seg} direct: {err}");
            assert!(std::fs::read(&dest2).unwrap() == *original, "{method} {seg}: direct fetch differs");
            std::fs::remove_file(&dest2).unwrap();
        }
        // A name that was never archived: "not found" (1), nothing written.
        let dest = n.data().join("tusk-test-missing");
        let (st, _, _) = n.run(&["wal-fetch", "0000000100000000000000FE", dest.to_str().unwrap()]);
        assert_eq!(exit_code(st), 1, "{method}: a confirmed miss is exit 1");
        assert!(!dest.exists());
        let (a, f, _) = archiver(&n);
        assert!(a >= 3 && f == 0, "{method}: archived {a}, failed {f}");
        // The REST API serves the archiver's counters (/patroni, /metrics).
        let api = format!("http://127.0.0.1:{}", n.env["APIPORT"]);
        let out = std::process::Command::new("curl").args(["-sf", &format!("{api}/patroni")]).output().unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("/patroni JSON");
        assert_eq!(st["archive"]["enabled"], true, "{st}");
        assert!(st["archive"]["archived_count"].as_u64().unwrap_or(0) >= 3, "{st}");
        assert!(st["archive"]["last_archived_wal"].is_string(), "{st}");
        let out = std::process::Command::new("curl").args(["-sf", &format!("{api}/metrics")]).output().unwrap();
        let metrics = String::from_utf8_lossy(&out.stdout);
        assert!(metrics.contains("tusk_archive_archived_total{"), "{metrics}");
        n.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(n.wait_exit(Duration::from_secs(30)).success());
    }
}

/// A copy made without WAL recovers only through wal-fetch (with prefetch)
/// and reaches the same data as the original.
#[test]
fn copy_recovers_only_from_the_archive() {
    require_root();
    let garage = shared_garage();
    let dir_a = test_dir("arch-src");
    let dir_b = test_dir("arch-copy");
    let prefix = unique_prefix("pitr");
    let mut a = archiving_node(dir_a.path(), garage, &prefix, "lz4");
    a.start();
    a.wait_ready(1);
    a.psql("create table t (id serial primary key, v text)");
    a.psql("insert into t (v) select md5(i::text) from generate_series(1, 1000) i");
    let mut b = archiving_node(dir_b.path(), garage, &prefix, "lz4");
    let copy = b.data();
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    // A base copy without any WAL (-X none): everything after it must come from S3.
    let st = Command::new(format!("{PG_BIN}/pg_basebackup"))
        .args(["-X", "none", "-c", "fast", "-U", "standby", "-h"])
        .arg(a.socket_dir())
        .args(["-p", &a.pg_port.to_string(), "-D"])
        .arg(&copy)
        .status()
        .expect("pg_basebackup");
    assert!(st.success());
    // Much more WAL after the copy: several segments.
    for _ in 0..6 {
        a.psql("insert into t (v) select md5(i::text) from generate_series(1, 20000) i");
        a.psql("select pg_switch_wal()");
    }
    let want = a.psql("select count(*), sum(length(v)), max(id) from t");
    let last = a.psql("select pg_walfile_name(pg_current_wal_lsn())");
    a.psql("select pg_switch_wal()");
    wait_archived(&a, &last);
    // Look-ahead is real: uploads started before PostgreSQL asked.
    let m = metrics(&a);
    assert!(metric(&m, "tusk_archive_lookahead_uploads_total") >= 1.0, "look-ahead never uploaded:\n{m}");
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(30)).success());

    std::fs::write(copy.join("recovery.signal"), "").unwrap();
    let _ = std::fs::remove_dir_all(copy.join("pg_wal"));
    std::fs::create_dir_all(copy.join("pg_wal/archive_status")).unwrap();
    b.start();
    b.wait_ready(1);
    // Connections are accepted from the consistent point on (hot standby);
    // archive recovery ends when wal-fetch reports the end of the archive.
    wait_for("the end of archive recovery", Duration::from_secs(120), || {
        (b.psql("select pg_is_in_recovery()") == "f").then_some(())
    });
    let got = b.psql("select count(*), sum(length(v)), max(id) from t");
    assert_eq!(got, want, "the copy reached the original's data; log:\n{}", b.log_text());
    let log = b.log_text();
    let restored = log.matches("from archive").count();
    assert!(restored >= 6, "segments restored through wal-fetch: {restored}\n{log}");
    // Prefetch is real: segments were delivered from the prefetch directory.
    let m = metrics(&b);
    assert!(metric(&m, "tusk_archive_fetched_total") >= 6.0, "fetched counter:\n{m}");
    assert!(metric(&m, "tusk_archive_prefetch_hits_total") >= 1.0, "prefetch never hit:\n{m}");
    // The copy promoted to timeline 2 and archived its history file.
    wait_for("00000002.history archived", Duration::from_secs(60), || {
        (!list_keys(garage, &format!("{prefix}/wal_005/00000002.history")).is_empty()).then_some(())
    });
}

/// S3 down while postgres writes: archive_command fails, postgres keeps
/// every segment; once S3 is back all of them are archived, in order.
#[test]
fn s3_outage_keeps_wal_and_catches_up() {
    require_root();
    let garage = Garage::new();
    let dir = test_dir("arch-outage");
    let prefix = unique_prefix("outage");
    let mut n = archiving_node(dir.path(), &garage, &prefix, "lz4");
    n.start();
    n.wait_ready(1);
    let before = make_segments(&n, 1);
    wait_archived(&n, &before[0]);
    let (_, failed0, _) = archiver(&n);

    garage.stop();
    let segs = make_segments(&n, 4);
    // Failures are reported, and nothing is lost meanwhile.
    wait_for("archive_command failures", Duration::from_secs(60), || (archiver(&n).1 > failed0).then_some(()));
    let (_, _, last) = archiver(&n);
    assert!(last.as_str() < segs[0].as_str(), "nothing archived while S3 is down (last {last})");
    for s in &segs {
        assert!(n.data().join("pg_wal").join(s).exists(), "{s} kept in pg_wal");
    }
    assert!(ready_count(&n) >= 4);
    // wal-fetch while S3 is down: an error (2), never "not found" (1).
    let dest = n.data().join("tusk-test-outage");
    let (st, _, err) = n.run(&["wal-fetch", &before[0], dest.to_str().unwrap()]);
    assert_eq!(exit_code(st), 2, "an S3 error is not the end of the archive: {err}");
    assert!(!dest.exists());
    // During archive recovery (recovery.signal) it is retried, then fatal
    // (126: postgres aborts recovery instead of ending it early).
    let recovering = fake_pgdata(dir.path(), &n, "recovering", &["recovery.signal"]);
    let dest = recovering.join("pg_wal/RECOVERYXLOG");
    let (code, err) =
        run_direct(&n, &["wal-fetch", &before[0], dest.to_str().unwrap()], &[("PGDATA", recovering.to_str().unwrap())]);
    assert_eq!(code, 126, "{err}");
    assert!(!dest.exists());
    n.psql("checkpoint"); // would recycle archived segments only
    for s in &segs {
        assert!(n.data().join("pg_wal").join(s).exists(), "{s} kept after a checkpoint");
    }

    // Same ports, same data directory: the same S3 endpoint comes back.
    let st = Command::new(testbed::script("garage.sh"))
        .arg("start")
        .arg(&garage.dir)
        .arg(garage.s3_port.to_string())
        .arg((garage.s3_port + 1).to_string())
        .arg(&garage.bucket)
        .env("TESTBED_WATCH_PID", std::process::id().to_string())
        .output()
        .expect("garage.sh start");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // New WAL wakes the archiver from its back-off after repeated failures.
    let after = make_segments(&n, 1);
    wait_archived(&n, &after[0]);
    wait_archived(&n, segs.last().unwrap());
    wait_for("no .ready left", Duration::from_secs(60), || (ready_count(&n) == 0).then_some(()));
    let keys = list_keys(&garage, &format!("{prefix}/wal_005/"));
    // Every segment from the first to the last switched one, without a gap.
    let first = u64::from_str_radix(&before[0][16..], 16).unwrap();
    let lastn = u64::from_str_radix(&segs.last().unwrap()[16..], 16).unwrap();
    for i in first..=lastn {
        let key = format!("{prefix}/wal_005/00000001{:016X}.lz4", i);
        assert!(keys.contains(&key), "{key} missing: {keys:?}");
    }
    assert!(n.log_text().contains("archiving failed"), "failures are logged");
}

/// Identical re-push succeeds; a different object under an existing name
/// fails and stays untouched; history files are never overwritten.
#[test]
fn conflicts_never_overwrite() {
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-conflict");
    let prefix = unique_prefix("conflict");
    let mut n = archiving_node(dir.path(), garage, &prefix, "lz4");
    n.start();
    n.wait_ready(1);
    let segs = make_segments(&n, 1);
    let seg = &segs[0];
    wait_archived(&n, seg);
    let key = format!("{prefix}/wal_005/{seg}.lz4");
    let (code, stored) = garage.get_object(&key);
    assert_eq!(code, 200);
    let path = n.data().join("pg_wal").join(seg);

    // Identical re-push: through the supervisor and without it.
    let (st, _, err) = n.run(&["wal-push", path.to_str().unwrap()]);
    assert_eq!(exit_code(st), 0, "identical re-push through the supervisor: {err}");
    let (code, err) = run_direct(&n, &["wal-push", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "identical re-push without the supervisor: {err}");

    // The same name with different content (same cluster, same timeline).
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(other.join(seg), &bytes).unwrap();
    let (code, err) = run_direct(&n, &["wal-push", other.join(seg).to_str().unwrap()], &[]);
    assert_eq!(code, 1, "a different object under the same name must fail");
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(garage.get_object(&key).1 == stored, "the archived object is untouched");

    // The failover case: the cluster is on timeline 2 now and the differing
    // file is of timeline 1 (the old primary archived it first): the first
    // copy is kept, with a warning; WALG_PREVENT_WAL_OVERWRITE refuses it.
    let promoted = fake_pgdata(dir.path(), &n, "promoted", &["pg_wal/00000002.history"]);
    let pgdata = ("PGDATA", promoted.to_str().unwrap());
    let (code, err) = run_direct(&n, &["wal-push", other.join(seg).to_str().unwrap()], &[pgdata]);
    assert_eq!(code, 0, "failover case: {err}");
    assert!(err.contains("keeping the archived copy"), "logged: {err}");
    let (code, _) = run_direct(
        &n,
        &["wal-push", other.join(seg).to_str().unwrap()],
        &[pgdata, ("WALG_PREVENT_WAL_OVERWRITE", "true")],
    );
    assert_eq!(code, 1, "refused with WALG_PREVENT_WAL_OVERWRITE=true");
    assert!(garage.get_object(&key).1 == stored, "the archived object is untouched");

    // WAL of another cluster (other system identifier) is refused before
    // anything is compared or uploaded.
    let foreign_dir = dir.path().join("foreign");
    std::fs::create_dir(&foreign_dir).unwrap();
    let mut foreign = std::fs::read(&path).unwrap();
    foreign[24] ^= 0x01; // xlp_sysid of the long page header
    std::fs::write(foreign_dir.join(seg), &foreign).unwrap();
    let (code, err) = run_direct(&n, &["wal-push", foreign_dir.join(seg).to_str().unwrap()], &[]);
    assert_eq!(code, 1, "foreign WAL must be refused");
    assert!(err.contains("system identifier"), "{err}");
    assert!(garage.get_object(&key).1 == stored, "the archived object is untouched");

    // History files: identical again is fine, different never replaces it.
    let hist = other.join("00000007.history");
    std::fs::write(&hist, "1\t0/3000000\tno recovery target specified\n").unwrap();
    let (code, err) = run_direct(&n, &["wal-push", hist.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = run_direct(&n, &["wal-push", hist.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "identical history re-push: {err}");
    std::fs::write(&hist, "1\t0/4000000\tsomething else\n").unwrap();
    let (code, err) = run_direct(&n, &["wal-push", hist.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "a different history file must fail");
    assert!(err.contains("never overwritten"), "{err}");
    let fetched = dir.path().join("h");
    let (code, err) = run_direct(&n, &["wal-fetch", "00000007.history", fetched.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "1\t0/3000000\tno recovery target specified\n");
    let (a, f, _) = archiver(&n);
    assert!(a >= 1 && f == 0, "postgres' own archiving unaffected: {a} {f}");
}

/// A corrupted or truncated object makes wal-fetch fail with a clear
/// error (not "not found", not bad bytes); nothing is written to %p.
#[test]
fn corrupted_object_fails_clearly() {
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-corrupt");
    let prefix = unique_prefix("corrupt");
    let mut n = archiving_node(dir.path(), garage, &prefix, "lz4");
    n.start();
    n.wait_ready(1);
    let segs = make_segments(&n, 2);
    wait_archived(&n, &segs[1]);
    for (i, seg) in segs.iter().enumerate() {
        let key = format!("{prefix}/wal_005/{seg}.lz4");
        let (_, mut body) = garage.get_object(&key);
        if i == 0 {
            let mid = body.len() / 2;
            body[mid] ^= 0x5A; // a flipped byte (re-uploaded without tusk's metadata)
        } else {
            let len = body.len();
            body.truncate(len - len / 3);
        }
        assert_eq!(garage.put_object(&key, &body), 200);
        let dest = n.data().join("tusk-test-corrupt");
        let (st, _, err) = n.run(&["wal-fetch", seg, dest.to_str().unwrap()]);
        let code = exit_code(st);
        assert!(code != 0 && code != 1, "corrupt object: exit {code} (must be an error, not found/not-found)");
        assert!(err.contains(seg) && (err.contains("decompress") || err.contains("corrupt")), "{err}");
        assert!(!dest.exists(), "no bad bytes delivered");
    }
}

/// Compresses `input` with a reference tool of the test bed (`xz`, `lzop`:
/// scripts/install-testbed.sh installs them; a missing one fails the test).
fn compress_with(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("the {program} tool is required (install it with scripts/install-testbed.sh): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A bucket that WAL-G's `lzma` method and WAL-E filled: real segments,
/// compressed by the reference tools as those write them (`xz
/// --format=lzma` with WAL-G's header; `lzop --stdout`, WAL-E's command)
/// under `wal_005/<segment>.lzma` / `.lzo`, are fetched byte for byte; a
/// truncated or corrupted one is an error (never "not found", nothing
/// written).
#[test]
fn walg_lzma_and_wale_lzo_objects_are_fetched() {
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-legacy");
    let mut n = archiving_node(dir.path(), garage, &unique_prefix("legacy-own"), "lz4");
    n.start();
    n.wait_ready(1);
    let segs = make_segments(&n, 6);
    let bytes = segment_bytes(&n, &segs);
    wait_archived(&n, &segs[5]);
    let original = |seg: &str| bytes[segs.iter().position(|s| s == seg).expect("a made segment")].clone();
    let walg_lzma = |b: &[u8]| compress_with("xz", &["--format=lzma", "--lzma1=preset=0,dict=8MiB", "-c"], b);
    let wale_lzo = |b: &[u8]| compress_with("lzop", &["--stdout"], b);
    let legacy = unique_prefix("legacy");
    let put = |seg: &str, ext: &str, body: &[u8]| {
        assert_eq!(garage.put_object(&format!("{legacy}/wal_005/{seg}.{ext}"), body), 200, "{seg}.{ext}");
    };
    let good = [
        (&segs[0], "lzma", walg_lzma(&original(&segs[0]))),
        (&segs[1], "lzo", wale_lzo(&original(&segs[1]))),
        (&segs[2], "lzo", compress_with("lzop", &["--stdout", "--crc32", "-9"], &original(&segs[2]))),
    ];
    for (seg, ext, body) in &good {
        put(seg, ext, body);
    }
    let mut truncated = wale_lzo(&original(&segs[3]));
    truncated.truncate(truncated.len() * 2 / 3);
    put(&segs[3], "lzo", &truncated);
    let mut flipped = walg_lzma(&original(&segs[4]));
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x5A;
    put(&segs[4], "lzma", &flipped);

    let source = format!("s3://{}/{legacy}", garage.bucket);
    let fetch = |seg: &str, dest: &Path| {
        run_direct(&n, &["wal-fetch", seg, dest.to_str().unwrap()], &[("WALG_S3_PREFIX", &source)])
    };
    for (seg, ext, _) in &good {
        let dest = dir.path().join(format!("fetched-{seg}"));
        let (code, err) = fetch(seg, &dest);
        assert_eq!(code, 0, "{seg}.{ext}: {err}");
        assert!(std::fs::read(&dest).unwrap() == original(seg), "{seg}.{ext}: fetched bytes differ");
    }
    for (seg, what) in [(&segs[3], "truncated .lzo"), (&segs[4], "corrupted .lzma")] {
        let dest = dir.path().join(format!("fetched-{seg}"));
        let (code, err) = fetch(seg, &dest);
        assert!(code != 0 && code != 1, "{what}: exit {code} (must be an error, not found/not-found): {err}");
        assert!(err.contains(seg) && (err.contains("decompress") || err.contains("corrupt")), "{what}: {err}");
        assert!(!dest.exists(), "{what}: no bad bytes delivered");
    }
    // Control: archived by the node (lz4, its own prefix) but not in the
    // legacy bucket: "not found" there, so the fetches above read it.
    let dest = dir.path().join("fetched-control");
    let (code, err) = fetch(&segs[5], &dest);
    assert_eq!(code, 1, "{}: {err}", segs[5]);
    assert!(!dest.exists());
    n.stop_cleanly(Duration::from_secs(30));
}

/// HA: after a crash failover the new primary archives `00000002.history`
/// and the old timeline's `.partial`, and the archive stays continuous: a
/// copy taken on the old timeline recovers from the archive alone, across
/// the timeline switch, to the new primary's data.
#[test]
fn failover_keeps_the_archive_continuous() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("ha");
    let mut c = archiving_cluster("archha", garage, &prefix, cluster::DCS);
    start_n1_then_n2(&mut c);
    let nodes = &mut c.nodes;
    let segs = make_segments(&nodes[0], 2);
    wait_archived(&nodes[0], segs.last().unwrap());

    // A copy on timeline 1, without WAL.
    let copy_dir = test_dir("arch-ha-copy");
    let mut copy = archiving_node(copy_dir.path(), garage, &prefix, "lz4");
    std::fs::create_dir_all(copy.data().parent().unwrap()).unwrap();
    let st = Command::new(format!("{PG_BIN}/pg_basebackup"))
        .args(["-X", "none", "-c", "fast", "-U", "standby", "-h"])
        .arg(nodes[0].socket_dir())
        .args(["-p", &nodes[0].pg_port.to_string(), "-D"])
        .arg(copy.data())
        .status()
        .expect("pg_basebackup");
    assert!(st.success());
    nodes[0].psql("insert into t (v) select md5(i::text) from generate_series(1, 5000) i");
    let lsn = nodes[0].psql("select pg_current_wal_lsn()");
    wait_for("n2 replayed", Duration::from_secs(30), || {
        (nodes[1].psql(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'")) == "t").then_some(())
    });

    // Crash of the leader node (tusk and postmaster together).
    c.kill_node("n1");
    let nodes = &mut c.nodes;
    wait_for("n2 promoted", Duration::from_secs(60), || (in_recovery(&nodes[1]).as_deref() == Some("f")).then_some(()));
    assert_eq!(nodes[1].psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), "00000002");

    let wal = format!("{prefix}/wal_005/");
    wait_for("00000002.history and a .partial archived", Duration::from_secs(60), || {
        let keys = list_keys(garage, &wal);
        (keys.contains(&format!("{wal}00000002.history.lz4")) && keys.iter().any(|k| k.ends_with(".partial.lz4")))
            .then_some(())
    });
    // More WAL on timeline 2, archived.
    nodes[1].psql("insert into t (v) select md5(i::text) from generate_series(1, 5000) i");
    let last = nodes[1].psql("select pg_walfile_name(pg_current_wal_lsn())");
    assert!(last.starts_with("00000002"), "{last}");
    nodes[1].psql("select pg_switch_wal()");
    wait_archived(&nodes[1], &last);
    let want = nodes[1].psql("select count(*), sum(length(v)) from t");

    // The copy follows the history file from timeline 1 to 2, from the archive only.
    std::fs::write(copy.data().join("recovery.signal"), "").unwrap();
    let _ = std::fs::remove_dir_all(copy.data().join("pg_wal"));
    std::fs::create_dir_all(copy.data().join("pg_wal/archive_status")).unwrap();
    copy.start();
    copy.wait_ready(1);
    wait_for("the copy's end of recovery", Duration::from_secs(120), || {
        (copy.psql("select pg_is_in_recovery()") == "f").then_some(())
    });
    assert_eq!(copy.psql("select count(*), sum(length(v)) from t"), want, "log:\n{}", copy.log_text());
    let log = copy.log_text();
    assert!(log.contains("restored log file \"00000002.history\" from archive"), "{log}");
    assert!(log.contains(&format!("restored log file \"{last}\" from archive")), "{log}");
}

/// A new leader that forked before the old primary's last checkpoints: the
/// old primary has recycled the WAL pg_rewind must read from the fork's
/// checkpoint on, so pg_rewind gets it from the archive through
/// `restore_command` (`--restore-target-wal`) and the node rejoins without
/// a re-clone.
#[test]
fn rewind_reads_recycled_wal_from_the_archive() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("rewind");
    // A generous lag limit: the late node catches up from the archive, and
    // this test is about the rewind, not the lag rule.
    // member_slots_ttl 0: n2's slot goes as soon as its member key does.
    let dcs = r#"{"ttl":10,"loop_wait":2,"retry_timeout":3,"maximum_lag_on_failover":1073741824,"member_slots_ttl":0}"#;
    let mut c = archiving_cluster("archrw", garage, &prefix, dcs);
    start_n1_then_n2(&mut c);
    let nodes = &mut c.nodes;
    let segs = make_segments(&nodes[0], 1);
    wait_archived(&nodes[0], segs.last().unwrap());

    // n2 stops; n1 drops its slot once n2's member key is gone.
    nodes[1].stop_cleanly(Duration::from_secs(30));
    wait_for("n2's slot dropped", Duration::from_secs(40), || {
        (nodes[0].psql("select count(*) from pg_replication_slots") == "0").then_some(())
    });

    // n1 goes on: a checkpoint, three archived segments, and a last
    // checkpoint in the current segment, which recycles all older ones.
    nodes[0].psql("checkpoint");
    let segs = make_segments(&nodes[0], 3);
    wait_archived(&nodes[0], segs.last().unwrap());
    nodes[0].psql("insert into t (v) values ('after the fork')");
    nodes[0].psql("checkpoint");
    for s in &segs {
        assert!(
            !nodes[0].data().join("pg_wal").join(s).exists(),
            "{s} still in n1's pg_wal: the test would prove nothing"
        );
    }
    c.kill_node("n1");
    let nodes = &mut c.nodes;

    // n2 replays the archive, takes over once n1's lease is gone, and forks
    // before n1's last checkpoint.
    nodes[1].start();
    wait_for("n2 promoted", Duration::from_secs(90), || (in_recovery(&nodes[1]).as_deref() == Some("f")).then_some(()));
    assert_eq!(nodes[1].psql("select count(*) from t where v = 'after the fork'"), "0");
    nodes[1].psql("insert into t (v) values ('on timeline 2')");

    // n1 rejoins: pg_rewind with WAL from the archive, no re-clone.
    nodes[0].start();
    c.wait_streaming("n1", Duration::from_secs(90));
    let nodes = &mut c.nodes;
    let log = nodes[0].log_text();
    assert!(log.contains("pg_rewind done"), "n1 was not rewound:\n{log}");
    assert!(!log.contains("rebuilding this replica"), "pg_rewind failed and n1 was re-cloned:\n{log}");
    let want = nodes[1].psql("select count(*), sum(length(v)) from t");
    wait_for("n1 has n2's data", Duration::from_secs(30), || {
        (nodes[0].psql("select count(*), sum(length(v)) from t") == want).then_some(())
    });
    assert_eq!(nodes[0].psql("select count(*) from t where v = 'after the fork'"), "0", "n1 kept its diverged row");
}

// ------------------------------------------------------------ security ----
//
// The supervisor runs as root and writes where a `wal-fetch` client names.
// These tests play the postgres user (and `nobody`) against it.

/// uid and gid of a system user.
fn user_ids(name: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(name).expect("passwd lookup").unwrap_or_else(|| panic!("no user {name}"));
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `tusk ARGS` with the node's environment, as the given user (cwd `cwd`).
fn client_as(node: &Node, user: &str, cwd: &Path, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = user_ids(user);
    let mut cmd = Command::new(node::tusk_bin());
    cmd.args(args).env_clear().envs(&node.env).current_dir(cwd).uid(uid).gid(gid);
    cmd
}

fn output_of(mut cmd: Command) -> (i32, String) {
    let out = cmd.output().expect("run tusk");
    (exit_code(out.status), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A directory outside PGDATA that the postgres user may write to itself
/// (so that a refusal is tusk's policy, not a permission error).
fn outside_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Makes `path` (a directory or symlink the test creates as root) belong to postgres.
fn give_to_postgres(path: &Path) {
    let (uid, gid) = user_ids("postgres");
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// A running archiving node (standalone) with one segment archived; returns
/// the segment's name and its bytes.
fn node_with_archived_segment(dir: &Path, garage: &Garage, prefix: &str) -> (Node, String, Vec<u8>) {
    let mut n = archiving_node(dir, garage, prefix, "lz4");
    n.start();
    n.wait_ready(1);
    let seg = make_segments(&n, 1).pop().expect("one segment");
    let bytes = segment_bytes(&n, std::slice::from_ref(&seg)).pop().expect("one segment");
    wait_archived(&n, &seg);
    (n, seg, bytes)
}

/// The archive socket admits only root and postgres: it is 0600 and owned by
/// postgres, and even with the file mode opened up, a peer running as
/// `nobody` gets no answer and nothing is written (the peer-credential
/// check); postgres, asking the same, is served.
#[test]
fn archive_socket_refuses_other_users() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-peer");
    let (mut n, seg, bytes) = node_with_archived_segment(dir.path(), garage, &unique_prefix("peer"));
    let sock = n.socket_dir().join(".s.tusk.archive");
    let meta = std::fs::metadata(&sock).expect("archive socket");
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), user_ids("postgres").0, "socket owner");

    // As the socket is: nobody cannot connect at all, and falls back to
    // direct mode, where it cannot write into PGDATA either.
    let dest = n.data().join("fetched-by-nobody");
    let (code, err) = output_of(client_as(&n, "nobody", Path::new("/"), &["wal-fetch", &seg, dest.to_str().unwrap()]));
    assert_ne!(code, 0, "nobody (socket 0600): {err}");
    assert!(!dest.exists(), "nobody (socket 0600) got a file written");

    // The file mode opened: only the peer-credential check stands.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refusals = n.log_text().matches("refusing an archive request from a uid other than root or postgres").count();
    let (code, err) = output_of(client_as(&n, "nobody", Path::new("/"), &["wal-fetch", &seg, dest.to_str().unwrap()]));
    assert_eq!(code, 2, "nobody (socket 0666) must get an error: {err}");
    assert!(err.contains("no answer from the supervisor"), "nobody (socket 0666): {err}");
    assert!(!dest.exists(), "nobody (socket 0666) got a file written");
    n.wait_log(
        "refusing an archive request from a uid other than root or postgres",
        refusals + 1,
        Duration::from_secs(10),
    );

    // The same request from postgres is served.
    let dest = n.data().join("fetched-by-postgres");
    let (code, err) = output_of(client_as(&n, "postgres", &n.data(), &["wal-fetch", &seg, dest.to_str().unwrap()]));
    assert_eq!(code, 0, "postgres: {err}");
    assert!(std::fs::read(&dest).unwrap() == bytes, "postgres: fetched bytes differ");
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), user_ids("postgres").0, "fetched file owner");
    n.stop_cleanly(Duration::from_secs(30));
}

/// Destinations outside PGDATA, through a symlinked directory, or a
/// symlinked WAL file to push: refused, nothing written outside. A symlink
/// at the destination name itself is replaced by the file, never followed.
#[test]
fn archive_socket_refuses_paths_outside_pgdata_and_symlinks() {
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-paths");
    let (mut n, seg, bytes) = node_with_archived_segment(dir.path(), garage, &unique_prefix("paths"));
    let data = n.data();
    let outside = outside_dir(dir.path(), "outside");
    let fetch = |dest: &Path| output_of(client_as(&n, "postgres", &data, &["wal-fetch", &seg, dest.to_str().unwrap()]));

    // Outside PGDATA, spelt plainly and with "..".
    for (what, dest) in [
        ("absolute path outside", outside.join("x")),
        ("dot-dot out of PGDATA", data.join("pg_wal/../../../outside/y")),
    ] {
        let (code, err) = fetch(&dest);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains("outside this node's PGDATA"), "{what}: {err}");
    }
    // A relative %p is taken from the client's working directory: outside here.
    let (code, err) = output_of(client_as(&n, "postgres", &outside, &["wal-fetch", &seg, "rel"]));
    assert_eq!(code, 2, "relative path from outside: {err}");

    // A directory in PGDATA that is a symlink: to a directory outside, and
    // to pg_wal itself (inside: still refused, never followed).
    let link_out = data.join("link-out");
    std::os::unix::fs::symlink(&outside, &link_out).unwrap();
    give_to_postgres(&link_out);
    let link_in = data.join("link-in");
    std::os::unix::fs::symlink(data.join("pg_wal"), &link_in).unwrap();
    give_to_postgres(&link_in);
    for (what, dest) in
        [("symlinked dir to outside", link_out.join("z")), ("symlinked dir to pg_wal", link_in.join("w"))]
    {
        let (code, err) = fetch(&dest);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains("symbolic link"), "{what}: {err}");
    }
    assert_eq!(entries(&outside), Vec::<String>::new(), "something was written outside PGDATA");
    assert!(!data.join("pg_wal/w").exists(), "a write went through the symlink to pg_wal");

    // A symlink at the destination name: replaced, its target untouched.
    let victim = outside.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let dest = data.join("pg_wal/RECOVERYXLOG");
    std::os::unix::fs::symlink(&victim, &dest).unwrap();
    give_to_postgres(&dest);
    let (code, err) = fetch(&dest);
    assert_eq!(code, 0, "symlinked destination file: {err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the symlink's target was written");
    assert!(std::fs::symlink_metadata(&dest).unwrap().file_type().is_file(), "the symlink was not replaced");
    assert!(std::fs::read(&dest).unwrap() == bytes, "symlinked destination: wrong bytes");
    std::fs::remove_file(&dest).unwrap();

    // wal-push of a WAL file that is a symlink (to a real segment elsewhere):
    // refused, nothing uploaded under that name.
    let fake = "0000000100000000000000F0";
    let elsewhere = outside.join(fake);
    std::fs::write(&elsewhere, &bytes).unwrap();
    let link = data.join("pg_wal").join(fake);
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    give_to_postgres(&link);
    let (code, err) = output_of(client_as(&n, "postgres", &data, &["wal-push", link.to_str().unwrap()]));
    assert_eq!(code, 1, "push of a symlinked file: {err}");
    // And a push of a file outside pg_wal.
    let (code, err) = output_of(client_as(&n, "postgres", &data, &["wal-push", elsewhere.to_str().unwrap()]));
    assert_eq!(code, 1, "push from outside pg_wal: {err}");
    assert!(err.contains("outside this node's PGDATA"), "push from outside pg_wal: {err}");
    std::fs::remove_file(&link).unwrap();
    n.stop_cleanly(Duration::from_secs(30));
}

/// A directory checked while real and swapped for a symlink (to a directory
/// outside PGDATA) while the supervisor is in the middle of the request:
/// the write is refused, nothing lands outside. Ordering is exact: the
/// node's S3 traffic goes through a proxy that holds the request's first
/// bytes, so the swap happens after the path check and before the write.
/// Also shows that, without a swap, the held request completes.
#[test]
fn directory_swapped_for_a_symlink_mid_request_cannot_redirect_the_write() {
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-swap");
    let s3 = proxy::Proxy::start(garage.endpoint.trim_start_matches("http://"));
    let mut n = archiving_node(dir.path(), garage, &unique_prefix("swap"), "lz4");
    n.set("AWS_ENDPOINT", &format!("http://{}", s3.endpoint()));
    n.start();
    n.wait_ready(1);
    let seg = make_segments(&n, 1).pop().expect("one segment");
    wait_archived(&n, &seg);
    let data = n.data();
    let outside = outside_dir(dir.path(), "outside");
    let sub = data.join("sub");
    std::fs::create_dir(&sub).unwrap();
    give_to_postgres(&sub);

    let run = |name: &str, swap: bool| -> (i32, String) {
        s3.hold();
        let dest = sub.join(name);
        let child = client_as(&n, "postgres", &data, &["wal-fetch", &seg, dest.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wal-fetch");
        // The supervisor checked the path and is talking to S3.
        wait_for("the fetch's S3 request in the proxy", Duration::from_secs(30), || {
            (s3.held_bytes() > 0).then_some(())
        });
        if swap {
            std::fs::rename(&sub, data.join("sub.old")).unwrap();
            std::os::unix::fs::symlink(&outside, &sub).unwrap();
            give_to_postgres(&sub);
        }
        s3.release();
        let out = child.wait_with_output().expect("wal-fetch");
        (exit_code(out.status), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("held", false);
    assert_eq!(code, 0, "held request without a swap: {err}");
    assert!(sub.join("held").exists(), "held request without a swap wrote nothing");

    let (code, err) = run("swapped", true);
    assert_eq!(code, 2, "swapped directory: {err}");
    assert!(err.contains("symbolic link"), "swapped directory: {err}");
    assert_eq!(entries(&outside), Vec::<String>::new(), "root's write was redirected outside PGDATA");
    assert_eq!(entries(&data.join("sub.old")), vec!["held".to_owned()], "sub.old");
    n.stop_cleanly(Duration::from_secs(30));
}

/// Direct mode: the supervisor leaves its storage settings in
/// `PGROOT/tusk-archive.env`, mode 0600, owned by postgres (it holds the S3
/// secret). With the supervisor gone, `tusk wal-fetch` run as postgres with
/// nothing in its environment but `TUSK_ARCHIVE_CONFIG` fetches from the
/// real S3 with it; without that variable it has no storage.
#[test]
fn direct_mode_config_file_is_private_and_used_by_wal_fetch() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let garage = shared_garage();
    let dir = test_dir("arch-conf");
    let (mut n, seg, bytes) = node_with_archived_segment(dir.path(), garage, &unique_prefix("conf"));
    let conf = n.root().join("tusk-archive.env");
    let meta = std::fs::metadata(&conf).expect("tusk-archive.env");
    assert_eq!(meta.mode() & 0o777, 0o600, "mode of {}", conf.display());
    assert_eq!((meta.uid(), meta.gid()), user_ids("postgres"), "owner of {}", conf.display());
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&format!("AWS_SECRET_ACCESS_KEY={}", garage.secret_key)), "the file lacks the secret");
    n.stop_cleanly(Duration::from_secs(30));

    let out = outside_dir(dir.path(), "direct");
    let (uid, gid) = user_ids("postgres");
    let fetch = |env: &[(&str, &str)], dest: &Path| {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(node::tusk_bin());
        cmd.args(["wal-fetch", &seg, dest.to_str().unwrap()]).env_clear().envs(env.iter().copied());
        cmd.current_dir(&out).uid(uid).gid(gid);
        output_of(cmd)
    };
    let dest = out.join("with-config");
    let (code, err) = fetch(&[("TUSK_ARCHIVE_CONFIG", conf.to_str().unwrap())], &dest);
    assert_eq!(code, 0, "wal-fetch with only TUSK_ARCHIVE_CONFIG: {err}");
    assert!(std::fs::read(&dest).unwrap() == bytes, "direct fetch: bytes differ");
    // Control: the same without the file has nothing to fetch from.
    let dest = out.join("without-config");
    let (code, err) = fetch(&[], &dest);
    assert_eq!(code, 2, "wal-fetch with an empty environment: {err}");
    assert!(err.contains("no WAL storage configured"), "{err}");
    assert!(!dest.exists());
    // The file is private: nobody, pointed at it, cannot read it and has no storage.
    let dest = out.join("by-nobody");
    let (nuid, ngid) = user_ids("nobody");
    let mut cmd = Command::new(node::tusk_bin());
    std::os::unix::process::CommandExt::uid(&mut cmd, nuid);
    std::os::unix::process::CommandExt::gid(&mut cmd, ngid);
    cmd.args(["wal-fetch", &seg, dest.to_str().unwrap()])
        .env_clear()
        .env("TUSK_ARCHIVE_CONFIG", &conf)
        .current_dir(&out);
    let (code, err) = output_of(cmd);
    assert_eq!(code, 2, "nobody with TUSK_ARCHIVE_CONFIG: {err}");
    assert!(err.contains("no WAL storage configured"), "nobody with TUSK_ARCHIVE_CONFIG: {err}");
    assert!(!dest.exists());
}
