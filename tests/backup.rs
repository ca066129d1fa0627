//! Base backups against the real PostgreSQL and a real garage (S3):
//! `tusk backup-push` in WAL-G's layout, `backup-list`, interruptions that
//! leave no sentinel, page checksum reports. Run as root (postgres runs as
//! postgres).

#[path = "support/cluster.rs"]
mod cluster;
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

use cluster::Cluster;
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
    n.set("BACKUP_SCHEDULE", "0 0 1 1 *");
    n.start();
    n.wait_ready(1);
    // The automatic first backup, then one by hand.
    wait_for("the first backup", Duration::from_secs(120), || {
        get_json(&n, "/patroni")["archive"]["backup"]["last"].get("name").map(|_| ())
    });
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
    for k in [
        "LSN",
        "FinishLSN",
        "PgVersion",
        "SystemIdentifier",
        "UncompressedSize",
        "CompressedSize",
        "Version",
        "StartTime",
        "FinishTime",
        "Hostname",
        "DataDir",
        "IsPermanent",
    ] {
        assert!(s.get(k).is_some(), "sentinel lacks {k}: {s}");
    }
    assert_eq!(s["Version"], 2);
    let sysid = n.psql("select system_identifier from pg_control_system()");
    assert_eq!(s["SystemIdentifier"].to_string(), sysid);
    assert!(s["UncompressedSize"].as_i64().unwrap() > 30 << 20, "{s}");
    // The stop segment is in the archive.
    let finish = s["FinishLSN"].as_u64().unwrap();
    let stop_seg =
        n.psql(&format!("select pg_walfile_name('{:X}/{:X}'::pg_lsn - 1)", finish >> 32, finish & 0xffff_ffff));
    assert!(
        list_keys(garage, &format!("{prefix}/wal_005/{stop_seg}"))
            .contains(&format!("{prefix}/wal_005/{stop_seg}.lz4")),
        "stop segment {stop_seg} not archived: {:?}",
        list_keys(garage, &format!("{prefix}/wal_005/"))
    );
    // No page checksum errors in a healthy cluster (initdb --data-checksums).
    assert_eq!(done["corrupt_blocks"], 0);
    let (st, out, err) = n.run(&["backup-list", "--json"]);
    assert!(st.success(), "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[1]["name"], name.as_str(), "the newest is listed last");
    assert_eq!(list[1]["start_lsn"], done["start_lsn"]);
    assert_eq!(list[1]["compressed_size"], done["compressed_size"]);
    let (st, out, _) = n.run(&["backup-list"]);
    assert!(st.success() && out.contains(&name), "{out}");
    n.stop_cleanly(Duration::from_secs(20));
}

fn get_json(n: &Node, path: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://127.0.0.1:{}{path}", n.env["APIPORT"])])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn get_text(n: &Node, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://127.0.0.1:{}{path}", n.env["APIPORT"])])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A new cluster with storage gets its first backup right after bootstrap,
/// without waiting for the schedule; `/patroni` and `/metrics` report it.
#[test]
fn first_backup_after_bootstrap() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("first");
    let dir = test_dir("backup-first");
    let mut n = storage_node(dir.path(), garage, &prefix);
    // A schedule that will not fire during the test.
    n.set("BACKUP_SCHEDULE", "0 0 1 1 *");
    n.start();
    n.wait_ready(1);
    let last = wait_for("the first backup in /patroni", Duration::from_secs(120), || {
        let st = get_json(&n, "/patroni");
        let last = st["archive"]["backup"]["last"].clone();
        last.get("name").is_some().then_some(last)
    });
    let name = last["name"].as_str().unwrap();
    let (st, out, err) = n.run(&["backup-list", "--json"]);
    assert!(st.success(), "{err}");
    assert!(out.contains(name), "{out}");
    let m = get_text(&n, "/metrics");
    assert!(m.contains("tusk_backup_succeeded_total{"), "{m}");
    assert!(m.lines().any(|l| l.starts_with("tusk_backup_succeeded_total{") && l.ends_with(" 1")), "{m}");
    assert!(m.contains("tusk_backup_next_timestamp_seconds{"), "{m}");
    // A restart does not take another: the bucket is no longer empty.
    n.stop_cleanly(Duration::from_secs(20));
    n.start();
    n.wait_ready_since_start();
    std::thread::sleep(Duration::from_secs(3));
    let st = get_json(&n, "/patroni");
    assert!(st["archive"]["backup"]["last"].is_null(), "{st}");
    n.stop_cleanly(Duration::from_secs(20));
}

/// Completed backups (sentinels) under `prefix`.
fn sentinel_count(g: &Garage, prefix: &str) -> usize {
    list_keys(g, &format!("{prefix}/basebackups_005/"))
        .into_iter()
        .filter(|k| k.ends_with("_backup_stop_sentinel.json"))
        .count()
}

/// `tusk backup-push` in the node's environment, output captured.
fn spawn_backup_push(n: &Node) -> std::process::Child {
    Command::new(node::tusk_bin())
        .arg("backup-push")
        .env_clear()
        .envs(&n.env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The automatic first backup of a new node is done.
fn wait_first_backup(n: &Node) {
    wait_for("the first backup", Duration::from_secs(120), || {
        get_json(n, "/patroni")["archive"]["backup"]["last"].get("name").map(|_| ())
    });
}

/// SIGTERM during `backup-push` leaves no sentinel and says why; the next
/// backup succeeds.
#[test]
fn interrupted_backup_leaves_no_sentinel() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("interrupt");
    let dir = test_dir("backup-interrupt");
    let mut n = storage_node(dir.path(), garage, &prefix);
    n.set("BACKUP_SCHEDULE", "0 0 1 1 *");
    // Small parts and one compression thread: the backup takes a while.
    n.set("WALG_UPLOAD_DISK_CONCURRENCY", "1");
    n.start();
    n.wait_ready(1);
    // Wait for the automatic first backup, so the bucket has one.
    wait_first_backup(&n);
    pgbench_init(&n, 20);
    let sentinels = |g: &Garage| sentinel_count(g, &prefix);
    assert_eq!(sentinels(garage), 1);
    let mut child = spawn_backup_push(&n);
    // Until it has read something, then SIGTERM.
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "an interrupted backup must fail: {err}");
    assert!(err.contains("interrupted (SIGTERM)"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "the interrupted backup took {:?} to stop", t0.elapsed());
    assert_eq!(sentinels(garage), 1, "no sentinel for the interrupted backup");
    // The next backup is unaffected.
    let (st, out, err) = n.run(&["backup-push"]);
    assert!(st.success(), "{out}\n{err}");
    assert_eq!(sentinels(garage), 2);
    n.stop_cleanly(Duration::from_secs(20));
}

/// A backup's counters from a member's `/patroni` (`archive.backup`).
fn backup_status(c: &Cluster, name: &str) -> serde_json::Value {
    c.api_status(name).map(|s| s["archive"]["backup"].clone()).unwrap_or(serde_json::Value::Null)
}

fn succeeded(c: &Cluster, name: &str) -> u64 {
    backup_status(c, name)["succeeded"].as_u64().unwrap_or(0)
}

/// HA: the first backup and the scheduled ones run on the leader only; a
/// backup running when a switchover demotes its node is cancelled there
/// (no sentinel), and the schedule then fires on the new leader only.
#[test]
fn schedule_follows_the_leader() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("sched");
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("backup-sched", etcd, 2, |_| eps.clone());
    for n in &mut c.nodes {
        for (k, v) in garage.env() {
            if k.starts_with("AWS_") {
                n.set(&k, &v);
            }
        }
        n.set("WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
        n.set("BACKUP_SCHEDULE", "* * * * *");
        // Slow enough (about 12 s for pgbench -s 15) for a switchover to land during one.
        n.set("WALG_DISK_RATE_LIMIT", "20000000");
    }
    let leader = c.start_settled(Duration::from_secs(90));
    let replica = c.names().into_iter().find(|n| n != &leader).unwrap();
    // The first backup (empty bucket), on the leader.
    wait_for("the first backup on the leader", Duration::from_secs(120), || {
        (succeeded(&c, &leader) >= 1).then_some(())
    });
    assert_eq!(succeeded(&c, &replica), 0, "the replica took a backup: {}", backup_status(&c, &replica));
    pgbench_init(c.node(&leader), 15);
    // The next scheduled one starts on the leader; switch over while it runs.
    let before = c.node(&leader).log_text().matches("starting a base backup").count();
    wait_for("a scheduled backup to start on the leader", Duration::from_secs(90), || {
        (c.node(&leader).log_text().matches("starting a base backup").count() > before).then_some(())
    });
    wait_for("the running backup to have read something", Duration::from_secs(30), || {
        (backup_status(&c, &leader)["running"]["bytes_read"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    c.switchover(&replica);
    let new_leader = c.wait_leader(Duration::from_secs(60), Some(&leader));
    assert_eq!(new_leader, replica);
    let old = wait_for("the old leader's backup to end", Duration::from_secs(60), || {
        let st = backup_status(&c, &leader);
        st["running"].is_null().then_some(st)
    });
    assert_eq!(old["failed"], 1, "the demoted node's backup was not cancelled: {old}");
    assert!(old["last_failure"]["error"].as_str().unwrap_or("").contains("no longer the primary"), "{old}");
    let old_succeeded = old["succeeded"].as_u64().unwrap();
    // The schedule now fires on the new leader only.
    wait_for("a scheduled backup on the new leader", Duration::from_secs(150), || {
        (succeeded(&c, &new_leader) >= 1).then_some(())
    });
    assert_eq!(succeeded(&c, &leader), old_succeeded, "the old leader took a backup after the switchover");
    // Every sentinel is a backup some node reported complete: the cancelled one left none.
    let sentinels = list_keys(garage, &format!("{prefix}/basebackups_005/"))
        .into_iter()
        .filter(|k| k.ends_with("_backup_stop_sentinel.json"))
        .count() as u64;
    let total = succeeded(&c, &leader) + succeeded(&c, &new_leader);
    assert_eq!(sentinels, total, "sentinels vs completed backups");
    for n in &mut c.nodes {
        n.stop_cleanly(Duration::from_secs(30));
    }
}

/// A TCP forwarder to garage that the test can cut: every open connection
/// is shut down and new ones are refused, as when garage stops.
struct CutProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    fn start(target: u16) -> CutProxy {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (c2, k2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                {
                    let mut k = k2.lock().unwrap();
                    k.push(client.try_clone().unwrap());
                    k.push(server.try_clone().unwrap());
                }
                for (mut a, mut b) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        CutProxy { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// S3 gone in the middle of a backup (every connection to garage reset,
/// new ones refused): the backup fails with an S3 error, writes no
/// sentinel, and once S3 is back the next backup succeeds.
#[test]
fn s3_outage_mid_backup_leaves_no_sentinel() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("outage");
    let dir = test_dir("backup-outage");
    let proxy = CutProxy::start(garage.s3_port);
    let mut n = storage_node(dir.path(), garage, &prefix);
    n.set("AWS_ENDPOINT", &format!("http://127.0.0.1:{}", proxy.port));
    n.set("BACKUP_SCHEDULE", "0 0 1 1 *");
    // About 6 s to read the data: the cut lands while parts go up.
    n.set("WALG_DISK_RATE_LIMIT", "50000000");
    n.start();
    n.wait_ready(1);
    wait_first_backup(&n);
    pgbench_init(&n, 20);
    let sentinels = |g: &Garage| sentinel_count(g, &prefix);
    assert_eq!(sentinels(garage), 1);
    let child = spawn_backup_push(&n);
    // Once parts are going up, S3 disappears.
    std::thread::sleep(Duration::from_millis(1500));
    proxy.cut();
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a backup without S3 must fail: {err}");
    assert!(err.contains("S3"), "the error says S3: {err}");
    assert!(!err.contains("wal_005"), "it failed uploading parts, not at the end: {err}");
    eprintln!("the backup failed {:?} after the cut: {}", t0.elapsed(), err.lines().last().unwrap_or(""));
    proxy.restore();
    assert_eq!(sentinels(garage), 1, "no sentinel for the failed backup");
    let (st, _, err) = n.run(&["backup-list", "--json"]);
    assert!(st.success(), "{err}");
    // S3 is back: the next backup succeeds.
    let (st, out, err) = n.run(&["backup-push"]);
    assert!(st.success(), "{out}\n{err}");
    assert_eq!(sentinels(garage), 2);
    n.stop_cleanly(Duration::from_secs(30));
}
