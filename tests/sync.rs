//! Synchronous mode against the real binary, real PostgreSQL and a real
//! etcd with mutual TLS: no acknowledged commit is lost when the leader's
//! whole process tree is killed, and strict mode blocks commits rather than
//! acknowledging them without a synchronous standby.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, psql_ok, sql_at, try_sql};
use node::require_root;

/// Short timings: each failover waits out the killed leader's lease. A
/// member rejoining while the next kill happens can lose its pg_rewind
/// source mid-copy, which leaves its data unusable: as a production
/// cluster that rebuilds members by itself, it is removed and cloned again.
const SYNC_DCS: &str = r#"{"ttl":6,"loop_wait":1,"retry_timeout":2,"synchronous_mode":true,
    "postgresql":{"remove_data_directory_on_rewind_failure":true}}"#;

fn cluster(name: &str, n: usize, dcs: &str) -> Cluster {
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new(name, etcd, n, |_| eps.clone());
    for node in &mut c.nodes {
        node.set("TUSK_BOOTSTRAP_DCS", dcs);
    }
    c
}

/// The member the leader's `sync` key names as its synchronous standby
/// (as its own `/patroni` says), streaming; with `all`, every other member
/// streams too.
fn wait_sync_settled(c: &Cluster, leader: &str, all: bool, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let others: Vec<String> = c.names().into_iter().filter(|n| n != leader).collect();
        let streaming =
            |n: &str| try_sql(c.node(n), "SELECT status FROM pg_stat_wal_receiver").as_deref() == Some("streaming");
        let sync = others.iter().find(|n| {
            c.api_status(n).is_some_and(|s| s["sync_standby"] == true && s["state"] == "running") && streaming(n)
        });
        if let Some(s) = sync
            && (!all || others.iter().all(|n| streaming(n)))
        {
            return s.clone();
        }
        if t0.elapsed() > limit {
            let mut logs = String::new();
            for n in c.names() {
                let text = c.node(&n).log_text();
                let lines: Vec<&str> = text.lines().collect();
                logs.push_str(&format!("==== {n}\n{}\n", lines[lines.len().saturating_sub(60)..].join("\n")));
            }
            panic!("no synchronous standby of {leader} (all streaming: {all}) after {limit:?}:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each member's role, `synchronous_standby_names`, walsenders, waiting
/// backends and the end of its log (connection lines left out): what a
/// failed assertion needs to be understood.
fn state_dump(c: &Cluster) -> String {
    let mut out = String::new();
    for n in c.names() {
        let node = c.node(&n);
        let q = |sql: &str| try_sql(node, sql).unwrap_or_else(|| "(no answer)".into());
        out.push_str(&format!(
            "==== {n}: in recovery {}, synchronous_standby_names {:?}\nwalsenders: {}\nwaiting: {}\n",
            q("SELECT pg_is_in_recovery()"),
            q("SHOW synchronous_standby_names"),
            q("SELECT string_agg(application_name || ' ' || state || ' ' || sync_state || ' ' || flush_lsn, '; ') FROM pg_stat_replication"),
            q("SELECT string_agg(coalesce(wait_event, '-') || ': ' || left(query, 40), '; ') FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"),
        ));
        out.push_str(&node.log_tail(60));
        out.push('\n');
    }
    out
}

/// Inserts numbered rows into whichever member takes writes, recording
/// every acknowledged number.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(targets: Vec<(std::path::PathBuf, u16)>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<u64>>> = Default::default();
        let (s, a) = (stop.clone(), acks.clone());
        let thread = std::thread::spawn(move || {
            let mut next = 1u64;
            let mut last_good = 0usize;
            while !s.load(Ordering::SeqCst) {
                for k in 0..targets.len() {
                    let i = (last_good + k) % targets.len();
                    let (sock, port) = &targets[i];
                    if sql_at(sock, *port, &format!("INSERT INTO w VALUES ({next})")).is_some() {
                        a.lock().expect("acks").push(next);
                        last_good = i;
                        break;
                    }
                }
                next += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Writer { stop, acks, thread: Some(thread) }
    }

    fn acks(&self) -> Vec<u64> {
        self.acks.lock().expect("acks").clone()
    }

    /// Waits until a commit is acknowledged after this call (a commit
    /// waits for a standby's flush, which on a loaded machine can take
    /// longer than the shortest moment before a kill); 30 s without one
    /// fails with every member's state.
    fn wait_progress(&self, c: &Cluster, round: usize) {
        let before = self.acks.lock().expect("acks").len();
        let t0 = Instant::now();
        while self.acks.lock().expect("acks").len() <= before {
            if t0.elapsed() > Duration::from_secs(30) {
                panic!("round {round}: no commit acknowledged for 30 s\n{}", state_dump(c));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer");
        }
        self.acks()
    }
}

/// Kills the leader's whole tree (tusk and postmaster, SIGKILL) at random
/// moments while a writer commits, again and again: after every failover,
/// every commit the writer saw acknowledged is on the new leader. The
/// killed member comes back and rejoins each time (pg_rewind where its
/// WAL diverged), while the next round goes on.
#[test]
fn synchronous_mode_loses_no_acknowledged_commit_when_the_leader_is_killed() {
    require_root();
    let rounds: usize = std::env::var("TUSK_SYNC_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut c = cluster("synckill", 3, SYNC_DCS);
    let mut leader = c.start_settled(Duration::from_secs(120));
    psql_ok(c.node(&leader), "CREATE TABLE w (id bigint PRIMARY KEY)");
    let targets: Vec<(std::path::PathBuf, u16)> = c.nodes.iter().map(|n| (n.socket_dir(), n.pg_port)).collect();
    let writer = Writer::start(targets);
    let mut failovers = Vec::new();
    for round in 1..=rounds {
        // The member killed last round may still be rejoining: only a
        // synchronous standby is needed for the next kill.
        let sync = wait_sync_settled(&c, &leader, false, Duration::from_secs(120));
        writer.wait_progress(&c, round);
        // A random moment within 0.2-2.2 s of writes.
        std::thread::sleep(Duration::from_millis(200 + rand::random::<u64>() % 2000));
        let t0 = Instant::now();
        c.kill_node(&leader);
        let acked = writer.acks();
        let new = c.wait_leader(Duration::from_secs(60), Some(&leader));
        assert_eq!(new, sync, "round {round}: only the synchronous standby may take over");
        assert_none_lost(&c, &new, &acked, round);
        failovers.push(t0.elapsed());
        eprintln!(
            "round {round}: killed {leader}, {new} took over after {:?}, {} acks so far",
            t0.elapsed(),
            acked.len()
        );
        // The killed member returns and rejoins.
        let i = c.index(&leader);
        c.nodes[i].start();
        leader = new;
    }
    let acked = writer.finish();
    // The leader still has a synchronous standby. (A member that rejoined
    // across several timeline switches can find the WAL it needs already
    // removed on the new leader when there is no archive: it is reported,
    // not failed, here; see the session notes.)
    wait_sync_settled(&c, &leader, false, Duration::from_secs(120));
    for n in c.names().into_iter().filter(|n| n != &leader) {
        if try_sql(c.node(&n), "SELECT status FROM pg_stat_wal_receiver").as_deref() != Some("streaming") {
            eprintln!("note: {n} does not stream at the end of the run");
        }
    }
    let rows: BTreeSet<u64> =
        psql_ok(c.node(&leader), "SELECT id FROM w").lines().filter_map(|l| l.parse().ok()).collect();
    let lost = acked.iter().filter(|a| !rows.contains(a)).count();
    assert_eq!(lost, 0, "acknowledged commits lost at the end");
    let mean = failovers.iter().sum::<Duration>() / failovers.len().max(1) as u32;
    eprintln!(
        "{rounds} kills, {} acknowledged commits, none lost; kill → new leader takes writes: mean {mean:?}",
        acked.len()
    );
    for n in c.names() {
        let i = c.index(&n);
        if c.nodes[i].child.is_some() {
            c.nodes[i].stop_cleanly(Duration::from_secs(60));
        }
    }
}

/// `synchronous_mode_strict`: with both replicas stopped, a commit waits
/// instead of being acknowledged; it completes once a replica returns and
/// is made synchronous. Without strict mode, the leader acknowledges alone.
#[test]
fn strict_mode_blocks_commits_without_a_synchronous_standby() {
    require_root();
    let dcs = r#"{"ttl":10,"loop_wait":1,"retry_timeout":3,"synchronous_mode":true,"synchronous_mode_strict":true}"#;
    let mut c = cluster("syncstrict", 3, dcs);
    let leader = c.start_settled(Duration::from_secs(120));
    wait_sync_settled(&c, &leader, true, Duration::from_secs(60));
    psql_ok(c.node(&leader), "CREATE TABLE s (id int)");
    let replicas: Vec<String> = c.names().into_iter().filter(|n| n != &leader).collect();
    for r in &replicas {
        let i = c.index(r);
        c.nodes[i].stop_cleanly(Duration::from_secs(60));
    }
    // The leader's loop notices (strict: a placeholder, never empty).
    std::thread::sleep(Duration::from_secs(3));
    let n = c.node(&leader);
    let mut insert = std::process::Command::new(format!("{}/psql", node::PG_BIN))
        .args(["-XAtq", "-h"])
        .arg(n.socket_dir())
        .args(["-p", &n.pg_port.to_string(), "-U", "postgres", "-d", "postgres", "-c", "INSERT INTO s VALUES (1)"])
        .spawn()
        .expect("psql");
    std::thread::sleep(Duration::from_secs(4));
    assert!(insert.try_wait().expect("psql").is_none(), "strict mode acknowledged a commit without a sync standby");
    let names = psql_ok(n, "SHOW synchronous_standby_names");
    assert!(!names.is_empty(), "strict mode left synchronous_standby_names empty");
    let i = c.index(&replicas[0]);
    c.nodes[i].start();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = insert.try_wait().expect("psql") {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "the commit never completed after a replica returned");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st.success(), "the blocked commit failed");
    eprintln!("strict mode: the commit waited, then completed {:?} after a replica was started", t0.elapsed());

    // Strict off: the leader acknowledges alone once nobody can be synchronous.
    let port = c.api_port(&leader);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
            "-d",
            r#"{"synchronous_mode_strict":false}"#,
        ])
        .arg(format!("http://127.0.0.1:{port}/config"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    c.nodes[i].stop_cleanly(Duration::from_secs(60));
    let t0 = Instant::now();
    while try_sql(c.node(&leader), "SHOW synchronous_standby_names").as_deref() != Some("") {
        assert!(t0.elapsed() < Duration::from_secs(30), "synchronous_standby_names never emptied without strict mode");
        std::thread::sleep(Duration::from_millis(200));
    }
    psql_ok(c.node(&leader), "INSERT INTO s VALUES (2)");
    let li = c.index(&leader);
    c.nodes[li].stop_cleanly(Duration::from_secs(60));
}

/// Quorum mode, as the leader settles it with every replica streaming:
/// `synchronous_standby_names = 'ANY 1 (...)'` naming both replicas, the
/// `sync` key naming both as voters with quorum 1, and both answering
/// `/quorum` (not `/sync`).
fn wait_quorum_settled(c: &Cluster, leader: &str, limit: Duration) {
    let t0 = Instant::now();
    let others: Vec<String> = c.names().into_iter().filter(|n| n != leader).collect();
    loop {
        let names = try_sql(c.node(leader), "SHOW synchronous_standby_names").unwrap_or_default();
        let out = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/sync", c.scope)]);
        let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let voters: BTreeSet<String> = key["sync_standby"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let want: BTreeSet<String> = others.iter().cloned().collect();
        let settled = names.starts_with("ANY 1 (")
            && others.iter().all(|o| names.contains(&format!("\"{o}\"")))
            && key["leader"] == leader
            && voters == want
            && key["quorum"] == 1
            && others.iter().all(|o| {
                c.api_status(o).is_some_and(|s| s["quorum_standby"] == true && s.get("sync_standby").is_none())
            });
        if settled {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "quorum mode never settled on {leader} after {limit:?}: synchronous_standby_names '{names}', sync key {key}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Quorum mode (Patroni 4's `synchronous_mode: quorum`) with 3 nodes and
/// `synchronous_node_count: 1`: every commit is on one of the two
/// replicas, either may take over once it hears from the other, and
/// killing the leader's whole tree at random moments loses no
/// acknowledged commit.
#[test]
fn quorum_mode_loses_no_acknowledged_commit_when_the_leader_is_killed() {
    require_root();
    let rounds: usize = std::env::var("TUSK_QUORUM_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let dcs = r#"{"ttl":6,"loop_wait":1,"retry_timeout":2,"synchronous_mode":"quorum","synchronous_node_count":1,
        "postgresql":{"remove_data_directory_on_rewind_failure":true}}"#;
    let mut c = cluster("quorum", 3, dcs);
    let mut leader = c.start_settled(Duration::from_secs(120));
    wait_quorum_settled(&c, &leader, Duration::from_secs(60));
    // `/quorum` answers on the voters, `/sync` does not.
    for r in c.names().into_iter().filter(|n| n != &leader) {
        for (path, want) in [("quorum", "200"), ("sync", "503"), ("read-only-quorum", "200")] {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{}/{path}", c.api_port(&r)))
                .output()
                .expect("curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), want, "GET /{path} on {r}");
        }
    }
    psql_ok(c.node(&leader), "CREATE TABLE w (id bigint PRIMARY KEY)");
    let targets: Vec<(std::path::PathBuf, u16)> = c.nodes.iter().map(|n| (n.socket_dir(), n.pg_port)).collect();
    let writer = Writer::start(targets);
    for round in 1..=rounds {
        wait_quorum_settled(&c, &leader, Duration::from_secs(120));
        writer.wait_progress(&c, round);
        std::thread::sleep(Duration::from_millis(200 + rand::random::<u64>() % 2000));
        let t0 = Instant::now();
        c.kill_node(&leader);
        let acked = writer.acks();
        let new = c.wait_leader(Duration::from_secs(60), Some(&leader));
        assert_none_lost(&c, &new, &acked, round);
        eprintln!("quorum round {round}: killed {leader}, {new} took over after {:?}", t0.elapsed());
        let i = c.index(&leader);
        c.nodes[i].start();
        leader = new;
    }
    let acked = writer.finish();
    wait_quorum_settled(&c, &leader, Duration::from_secs(120));
    let rows: BTreeSet<u64> =
        psql_ok(c.node(&leader), "SELECT id FROM w").lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(acked.iter().filter(|a| !rows.contains(a)).count(), 0, "acknowledged commits lost at the end");
    eprintln!("quorum mode: {rounds} kills, {} acknowledged commits, none lost", acked.len());
    for n in c.names() {
        let i = c.index(&n);
        if c.nodes[i].child.is_some() {
            c.nodes[i].stop_cleanly(Duration::from_secs(60));
        }
    }
}

/// Every acknowledged commit is on the new leader `new` once it takes writes.
fn assert_none_lost(c: &Cluster, new: &str, acked: &[u64], round: usize) {
    let t = Instant::now();
    let rows: BTreeSet<u64> = loop {
        if let Some(out) = try_sql(c.node(new), "SELECT id FROM w WHERE NOT pg_is_in_recovery()")
            && !out.is_empty()
        {
            break out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "round {round}: {new} never took writes");
        std::thread::sleep(Duration::from_millis(100));
    };
    let lost: Vec<u64> = acked.iter().filter(|a| !rows.contains(a)).copied().collect();
    assert!(lost.is_empty(), "round {round}: {} acknowledged commits lost on {new}: {lost:?}", lost.len());
}
