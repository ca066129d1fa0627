//! What HA mode does with an existing data directory, against the real
//! binary, real PostgreSQL and a real etcd with mutual TLS: it adopts data
//! when the scope is empty, refuses data of another cluster (and leaves it
//! untouched), and removes PGDATA after a failed clone; after a failed
//! pg_rewind it keeps the data until a reinit (Patroni's default) or, with
//! `remove_data_directory_on_rewind_failure`, removes it and clones again.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, psql_ok, try_sql};
use nix::sys::signal::Signal;
use node::{Node, PG_BIN, require_root};

const DCS_VARS: [&str; 4] = ["ETCD3_HOSTS", "ETCD3_CACERT", "ETCD3_CERT", "ETCD3_KEY"];

fn cluster(name: &str, n: usize) -> Cluster {
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    Cluster::new(name, etcd, n, |_| eps.clone())
}

/// Runs the node once in standalone mode (its DCS variables removed, then
/// put back): initdb, `sql`, clean stop. Returns the system identifier.
fn standalone_run(n: &mut Node, sql: &str) -> String {
    let saved: Vec<(String, String)> =
        DCS_VARS.iter().filter_map(|k| n.env.remove(*k).map(|v| (k.to_string(), v))).collect();
    n.start();
    n.wait_ready(1);
    n.psql(sql);
    n.stop_cleanly(Duration::from_secs(60));
    for (k, v) in saved {
        n.set(&k, &v);
    }
    system_identifier(n)
}

fn system_identifier(n: &Node) -> String {
    let out = Command::new(format!("{PG_BIN}/pg_controldata")).arg(n.data()).output().expect("pg_controldata");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:").map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| panic!("no system identifier for {}", n.data().display()))
}

fn initialize_key(c: &Cluster) -> Option<String> {
    let out = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/initialize", c.scope)]);
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!v.is_empty()).then_some(v)
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of the processes named `comm` whose parent chain includes `ancestor`.
fn descendants(ancestor: i32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let ppid = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
    };
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() != comm).unwrap_or(true) {
            continue;
        }
        let mut p = pid;
        for _ in 0..8 {
            match ppid(p) {
                Some(q) if q == ancestor => {
                    out.push(pid);
                    break;
                }
                Some(q) if q > 1 => p = q,
                _ => break,
            }
        }
    }
    out
}

fn give_to_postgres(path: &Path) {
    let u = nix::unistd::User::from_name("postgres").expect("passwd").expect("postgres user");
    std::os::unix::fs::chown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw())).expect("chown");
}

/// A data directory made in standalone mode, started in HA mode on an empty
/// scope: the node claims the cluster with its system identifier and leads
/// with its data; no initdb, no clone.
#[test]
fn existing_data_is_adopted_in_ha_mode() {
    require_root();
    let mut c = cluster("adopt", 1);
    let sysid = standalone_run(&mut c.nodes[0], "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before HA')");
    c.nodes[0].start();
    let leader = c.wait_leader(Duration::from_secs(90), None);
    assert_eq!(leader, "n1");
    let n = &c.nodes[0];
    assert_eq!(psql_ok(n, "SELECT v FROM kept"), "before HA", "the adopted data");
    assert_eq!(initialize_key(&c).as_deref(), Some(sysid.as_str()), "initialize = the data's system identifier");
    assert!(n.log_text().contains("claimed the cluster with the existing data directory"), "{}", n.log_text());
    assert_eq!(n.log_text().matches("initdb done").count(), 1, "only the standalone run's initdb");
    assert_eq!(system_identifier(n), sysid);
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// A node whose PGDATA was made by another initdb (another system
/// identifier) does not join: it exits 1 naming both identifiers, and its
/// data (base/, global/, pg_wal/) is left exactly as it was.
#[test]
fn foreign_data_is_refused_and_left_untouched() {
    require_root();
    let mut c = cluster("foreign", 2);
    let theirs = standalone_run(&mut c.nodes[1], "CREATE TABLE mine (v text); INSERT INTO mine VALUES ('foreign')");
    c.nodes[0].start();
    c.wait_leader(Duration::from_secs(90), None);
    let cluster_id = wait_for("the initialize key", Duration::from_secs(30), || initialize_key(&c));
    assert_ne!(cluster_id, theirs, "two initdb runs gave one system identifier");
    let data = c.nodes[1].data();
    let before: Vec<_> = ["base", "global", "pg_wal"].iter().flat_map(|d| node::snapshot(&data.join(d))).collect();
    let n2 = &mut c.nodes[1];
    n2.start();
    let st = n2.wait_exit(Duration::from_secs(90));
    assert_eq!(st.code(), Some(1), "refusal exit status; log:\n{}", n2.log_text());
    let log = n2.log_text();
    assert!(log.contains("PGDATA belongs to another cluster"), "{log}");
    assert!(log.contains(&theirs) && log.contains(&cluster_id), "both identifiers named: {log}");
    let after: Vec<_> = ["base", "global", "pg_wal"].iter().flat_map(|d| node::snapshot(&data.join(d))).collect();
    assert!(before == after, "the foreign data directory was changed");
    assert_eq!(system_identifier(n2), theirs);
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// A clone that fails half-way (pg_basebackup killed, its partial copy left
/// behind) is removed, PGDATA with it, and the next round clones again and
/// streams. Without the removal the next pg_basebackup would find a
/// non-empty directory and fail for ever.
#[test]
fn failed_clone_removes_the_partial_pgdata_and_clones_again() {
    require_root();
    let mut c = cluster("clonefail", 2);
    c.nodes[0].start();
    c.wait_leader(Duration::from_secs(90), None);
    // A big file in the leader's PGDATA makes the copy take long enough to
    // be caught in the middle (pg_basebackup copies every file there).
    let big = c.nodes[0].data().join("big.dat");
    std::fs::File::create(&big).and_then(|f| f.set_len(1 << 30)).expect("big file");
    give_to_postgres(&big);
    c.nodes[1].start();
    let tusk2 = c.nodes[1].pid();
    let data2 = c.nodes[1].data();
    let pids = wait_for("pg_basebackup copying big.dat", Duration::from_secs(120), || {
        let pids = descendants(tusk2, "pg_basebackup");
        (!pids.is_empty() && data2.join("big.dat").exists()).then_some(pids)
    });
    let stray = data2.join("stray-from-the-failed-clone");
    std::fs::write(&stray, "x").expect("stray file");
    // pg_basebackup and its WAL-streaming child: killed, no clean-up of their own.
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    std::fs::remove_file(&big).expect("remove big.dat");
    c.nodes[1].wait_log("cannot create a replica from n1", 1, Duration::from_secs(60));
    c.wait_streaming("n2", Duration::from_secs(180));
    assert!(!stray.exists(), "the failed clone's PGDATA was not removed");
    assert!(!data2.join("big.dat").exists(), "the failed clone's big.dat survived");
    assert_eq!(system_identifier(&c.nodes[1]), system_identifier(&c.nodes[0]));
    c.nodes[1].stop_cleanly(Duration::from_secs(60));
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// A 2-node cluster (with `dcs` as bootstrap settings) whose primary is
/// killed, made to diverge (written on its old timeline after the failover)
/// and to make pg_rewind fail (a directory in its PGDATA that the postgres
/// user cannot read), then started again. Returns the cluster, the old and
/// the new leader's names and the blocker directory.
fn diverged_former_primary(name: &str, dcs: &str) -> (Cluster, String, String, std::path::PathBuf) {
    let mut c = cluster(name, 2);
    for n in &mut c.nodes {
        n.set("TUSK_BOOTSTRAP_DCS", dcs);
    }
    let old = c.start_settled(Duration::from_secs(120));
    let oi = c.index(&old);
    psql_ok(&c.nodes[oi], "CREATE TABLE t (v text); INSERT INTO t VALUES ('shared')");
    let new = c.names().into_iter().find(|n| n != &old).expect("a second node");
    wait_for("the row on the replica", Duration::from_secs(60), || {
        (try_sql(c.node(&new), "SELECT count(*) FROM t").as_deref() == Some("1")).then_some(())
    });
    c.kill_node(&old);
    c.wait_leader(Duration::from_secs(120), Some(&old));

    // Divergence: the old primary writes on its old timeline by itself.
    let n = &c.nodes[oi];
    let sock = tempfile::Builder::new().prefix("tusk-rw-sock-").tempdir_in("/tmp").expect("socket dir");
    std::fs::set_permissions(sock.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // The server's output goes to a log file: an inherited pipe would keep
    // pg_ctl's caller waiting for as long as the server runs.
    let pg_log = sock.path().join("postgres.log");
    let pg_ctl = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let u = nix::unistd::User::from_name("postgres").expect("passwd").expect("postgres user");
        let st = Command::new(format!("{PG_BIN}/pg_ctl"))
            .args(["-D", n.data().to_str().expect("utf-8"), "-w", "-t", "60", "-l", pg_log.to_str().expect("utf-8")])
            .args(args)
            .uid(u.uid.as_raw())
            .gid(u.gid.as_raw())
            .current_dir("/tmp")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(st.success(), "pg_ctl {args:?}: {}", std::fs::read_to_string(&pg_log).unwrap_or_default());
    };
    let opts = format!(
        "-c port={} -c listen_addresses='' -c unix_socket_directories={} -c archive_mode=off",
        n.pg_port,
        sock.path().display()
    );
    pg_ctl(&["-o", &opts, "start"]);
    let out = Command::new(format!("{PG_BIN}/psql"))
        .args(["-XAtq", "-h", sock.path().to_str().expect("utf-8"), "-p", &n.pg_port.to_string(), "-U", "postgres"])
        .args(["-c", "INSERT INTO t SELECT 'diverged' FROM generate_series(1, 1000); CHECKPOINT"])
        .output()
        .expect("psql");
    assert!(out.status.success(), "diverging write: {}", String::from_utf8_lossy(&out.stderr));
    pg_ctl(&["-m", "fast", "stop"]);

    // pg_rewind cannot read this directory, so it fails.
    let blocker = n.data().join("rewind-blocker");
    std::fs::create_dir(&blocker).expect("blocker dir");
    std::fs::write(blocker.join("f"), "x").expect("blocker file");
    std::fs::set_permissions(&blocker, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    c.nodes[oi].start();
    c.nodes[oi].wait_log("pg_rewind failed", 1, Duration::from_secs(120));
    (c, old, new, blocker)
}

/// `GET /patroni` of a member, as JSON.
fn patroni(c: &Cluster, name: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/patroni", c.api_port(name)))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Patroni's default (`remove_data_directory_on_rewind_failure` false): a
/// former primary whose pg_rewind fails keeps its data directory, diverged
/// rows and all, and stays stopped, saying so in `/patroni`, its member key
/// (`tusk list`) and its log; `tusk reinit` then rebuilds it from the leader.
#[test]
fn failed_rewind_keeps_the_data_until_reinit() {
    require_root();
    let (mut c, old, new, blocker) = diverged_former_primary("rewindkeep", cluster::DCS);
    let oi = c.index(&old);
    c.nodes[oi].wait_log("keeping the data directory", 1, Duration::from_secs(30));
    wait_for("state 'rewind failed' in /patroni", Duration::from_secs(30), || {
        (patroni(&c, &old)["state"] == "rewind failed").then_some(())
    });
    // Several loops later: still stopped, the data untouched, no second try.
    std::thread::sleep(Duration::from_secs(8));
    let n = &c.nodes[oi];
    assert!(blocker.exists(), "the data directory was removed after a failed pg_rewind");
    assert!(n.data().join("PG_VERSION").exists(), "the data directory was emptied");
    assert_eq!(try_sql(n, "SELECT 1"), None, "postgres was started on the diverged data");
    let log = n.log_text();
    assert_eq!(log.matches("pg_rewind from the new leader").count(), 1, "pg_rewind was retried on kept data:\n{log}");
    assert!(!log.contains("replica created with pg_basebackup"), "re-cloned without a reinit:\n{log}");
    let cli = |args: &[&str]| {
        let out = Command::new(node::tusk_bin()).args(args).env_clear().envs(&n.env).output().expect("tusk");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, list) = cli(&["list"]);
    assert!(ok, "tusk list: {list}");
    let row = list.lines().find(|l| l.contains(&format!(" {old} "))).unwrap_or_else(|| panic!("{old} in:\n{list}"));
    assert!(row.contains("rewind failed"), "tusk list shows the state: {row}");

    // The operator rebuilds it.
    let (ok, text) = cli(&["reinit", "--force"]);
    assert!(ok, "tusk reinit: {text}");
    c.nodes[oi].wait_log("replica created with pg_basebackup", 1, Duration::from_secs(180));
    c.wait_streaming(&old, Duration::from_secs(180));
    assert!(!blocker.exists(), "reinit kept the old data directory");
    assert_eq!(psql_ok(&c.nodes[oi], "SELECT count(*) FILTER (WHERE v = 'diverged'), count(*) FROM t"), "0|1");
    assert_eq!(patroni(&c, &old)["state"], "running");
    c.nodes[oi].stop_cleanly(Duration::from_secs(60));
    let ni = c.index(&new);
    c.nodes[ni].stop_cleanly(Duration::from_secs(60));
}

/// `remove_data_directory_on_rewind_failure: true` (in the DCS
/// configuration's `postgresql`, as Patroni users set it): the former
/// primary's PGDATA is removed and cloned again from the new leader.
#[test]
fn failed_rewind_removes_pgdata_when_configured() {
    require_root();
    let dcs =
        r#"{"ttl":10,"loop_wait":2,"retry_timeout":3,"postgresql":{"remove_data_directory_on_rewind_failure":true}}"#;
    let (mut c, old, new, blocker) = diverged_former_primary("rewindremove", dcs);
    let oi = c.index(&old);
    c.nodes[oi].wait_log("rebuilding this replica from the leader", 1, Duration::from_secs(30));
    c.wait_streaming(&old, Duration::from_secs(180));
    let n = &c.nodes[oi];
    assert!(!blocker.exists(), "PGDATA survived a failed pg_rewind with remove_data_directory_on_rewind_failure");
    assert_eq!(psql_ok(n, "SELECT count(*) FILTER (WHERE v = 'diverged'), count(*) FROM t"), "0|1", "re-cloned data");
    assert!(n.log_text().contains("replica created with pg_basebackup"), "re-cloned");
    c.nodes[oi].stop_cleanly(Duration::from_secs(60));
    let ni = c.index(&new);
    c.nodes[ni].stop_cleanly(Duration::from_secs(60));
}
