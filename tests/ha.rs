//! High availability with 3 tusk nodes on loopback, real PostgreSQL, real
//! etcd with mutual TLS: bootstrap, `patronictl list`, crash failover and
//! rejoin, graceful hand-over, switchover, a partition of the leader from
//! etcd (never two primaries), loss of an etcd member, bad certificates and
//! etcd down at start, two hand-overs at once (timeline numbers stay unique)
//! and both members rejoining, an asynchronous replica ahead of the member
//! promoted after a crash (rewound, then streaming).

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

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, TTL, first_write, psql_ok, try_sql};
use nix::sys::signal::Signal;
use node::{PG_BIN, require_root};

#[test]
fn bootstrap_patronictl_crash_rejoin_handover_switchover() {
    require_root();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("ha", etcd, 3, |_| eps.clone());
    // All three at once: the initialize race has exactly one winner.
    for n in &mut c.nodes {
        n.start();
    }
    for n in &mut c.nodes {
        n.wait_ready(1);
    }
    let leader = c.wait_leader(Duration::from_secs(30), None);
    let li = c.index(&leader);
    let replicas: Vec<String> = (1..=3).map(|i| format!("n{i}")).filter(|n| n != &leader).collect();
    for r in &replicas {
        c.wait_streaming(r, Duration::from_secs(30));
    }
    // One initdb (the leader's); the others were cloned from it.
    assert_eq!(c.nodes[li].log_text().matches("initdb done").count(), 1, "bootstrap: the leader ran initdb");
    for r in &replicas {
        let log = c.nodes[c.index(r)].log_text();
        assert!(!log.contains("initdb done"), "bootstrap: {r} ran initdb");
        assert!(log.contains("replica created with pg_basebackup"), "bootstrap: {r} was not cloned");
    }
    psql_ok(&c.nodes[li], "CREATE TABLE t (at timestamptz); INSERT INTO t VALUES (now())");

    // patronictl 3.0.2 reads the cluster as tusk sees it (positions are
    // published once per loop_wait, so allow two loops to settle).
    let expected = |list: &[serde_json::Value]| {
        list.len() == 3
            && list.iter().all(|m| {
                let leads = m["Member"] == leader.as_str();
                m["State"] == "running"
                    && m["TL"] == 1
                    && m["Role"] == if leads { "Leader" } else { "Replica" }
                    && (leads || m["Lag in MB"] == 0)
            })
    };
    let t0 = Instant::now();
    let mut list = c.patronictl_list();
    while !expected(&list) {
        assert!(t0.elapsed() < Duration::from_secs(60), "bootstrap: patronictl list disagrees: {list:?}");
        std::thread::sleep(Duration::from_millis(200));
        list = c.patronictl_list();
    }

    // Crash of the leader node: another node accepts writes (how fast is
    // measured by scripts/bench/ha.py; here a generous deadline only).
    let t0 = Instant::now();
    c.kill_node(&leader);
    let (new_leader, took) = first_write(&c, &leader, t0, Duration::from_secs(TTL * 6));
    eprintln!("crash: {new_leader} accepted a write {took:?} after the kill");
    // The old leader, restarted, rejoins as a replica (pg_rewind).
    c.nodes[li].start();
    c.nodes[li].wait_ready_since_start();
    c.wait_streaming(&leader, Duration::from_secs(30));
    assert!(c.nodes[li].log_text().contains("pg_rewind"), "crash rejoin: pg_rewind not used");
    let count = psql_ok(&c.nodes[c.index(&new_leader)], "SELECT count(*) FROM t");
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_sql(&c.nodes[li], "SELECT count(*) FROM t").as_deref() != Some(count.as_str()) {
        assert!(Instant::now() < deadline, "crash rejoin: the rejoined node does not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM of the leader: it gives up its keys itself (no wait for the
    // TTL), another node takes writes, exit 0. The hand-over's speed is a
    // benchmark figure (scripts/bench/ha.py), not asserted here.
    let ni = c.index(&new_leader);
    let t0 = Instant::now();
    c.nodes[ni].signal(Signal::SIGTERM);
    let (third, took) = first_write(&c, &new_leader, t0, Duration::from_secs(TTL * 6));
    eprintln!("graceful: {third} accepted a write {took:?} after SIGTERM");
    assert_eq!(c.nodes[ni].wait_exit(Duration::from_secs(60)).code(), Some(0), "graceful: exit status");
    let log = c.nodes[ni].log_text();
    assert!(log.contains("leader and member keys removed"), "graceful: the leader did not remove its keys:\n{log}");
    c.nodes[ni].start();
    c.nodes[ni].wait_ready_since_start();
    c.wait_streaming(&new_leader, Duration::from_secs(30));

    // Switchover to a named candidate through the CLI.
    let candidate = (1..=3).map(|i| format!("n{i}")).find(|n| n != &third).unwrap();
    c.wait_streaming(&candidate, Duration::from_secs(30));
    let out = {
        let n = &c.nodes[0];
        Command::new(node::tusk_bin())
            .args(["switchover", "--candidate", &candidate])
            .env_clear()
            .envs(&n.env)
            .output()
            .unwrap()
    };
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.wait_leader(Duration::from_secs(60), None), candidate, "switchover: leader");
    // The demoted leader streams again.
    let t0 = Instant::now();
    c.wait_streaming(&third, Duration::from_secs(60));
    eprintln!("switchover: demoted {third} streaming again after {:?}", t0.elapsed());
    // It restarted as a standby: never writable, so never fenced.
    let demoted_log = c.nodes[c.index(&third)].log_text();
    assert!(!demoted_log.contains("fencing"), "the demoted leader came up as a primary:\n{demoted_log}");
    let list = c.patronictl_list();
    assert!(list.iter().any(|m| m["Member"] == candidate.as_str() && m["Role"] == "Leader"), "{list:?}");
    // Dynamic configuration: a parameter set in etcd's `config` reaches every
    // node with a reload, no restart.
    let key = format!("/service/{}/config", c.scope);
    let out = c.etcd.etcdctl(&[
        "put",
        &key,
        r#"{"ttl":10,"loop_wait":2,"retry_timeout":3,"postgresql":{"parameters":{"work_mem":"7MB"}}}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t0 = Instant::now();
    while !c.nodes.iter().all(|n| try_sql(n, "SHOW work_mem").as_deref() == Some("7MB")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "dynamic config: work_mem not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `tusk list` agrees.
    let out = Command::new(node::tusk_bin()).arg("list").env_clear().envs(&c.nodes[0].env).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.contains(&format!("| {candidate} ")) && l.contains("Leader")), "{table}");
}

/// The leader loses etcd (a proxy between it and etcd is cut): it must stop
/// accepting writes before another node is promoted. A checker writes to
/// every node all along; no two nodes may acknowledge writes in overlapping
/// time.
#[test]
fn partitioned_leader_fences_before_anyone_promotes() {
    require_root();
    let etcd = testbed::shared_etcd();
    let proxy = proxy::Proxy::start(&etcd.endpoints[0]);
    let direct = etcd.endpoints.join(",");
    let via_proxy = proxy.endpoint();
    let mut c = Cluster::new("partition", etcd, 3, |i| if i == 0 { via_proxy.clone() } else { direct.clone() });
    c.nodes[0].start();
    c.nodes[0].wait_ready(1);
    assert_eq!(c.wait_leader(Duration::from_secs(30), None), "n1");
    psql_ok(&c.nodes[0], "CREATE TABLE t (at timestamptz)");
    c.nodes[1].start();
    c.nodes[2].start();
    c.wait_streaming("n2", Duration::from_secs(30));
    c.wait_streaming("n3", Duration::from_secs(30));

    // Writers: one thread per node, recording when each write was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut threads = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let (sock, port) = (n.socket_dir(), n.pg_port);
        let (stop, acks) = (stop.clone(), acks.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let ok = Command::new(format!("{PG_BIN}/psql"))
                    .args(["-XAtq", "-h"])
                    .arg(&sock)
                    .args([
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-c",
                        "INSERT INTO t VALUES (now())",
                    ])
                    .env("PGCONNECT_TIMEOUT", "1")
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    acks.lock().unwrap().push((i, Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let cut_at = Instant::now();
    proxy.cut();
    let new_leader = c.wait_leader(Duration::from_secs(TTL * 3), Some("n1"));
    let _ = first_write(&c, "n1", cut_at, Duration::from_secs(TTL * 3));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acks = acks.lock().unwrap();
    let last_old =
        acks.iter().filter(|(i, _)| *i == 0).map(|(_, t)| *t).max().expect("n1 acknowledged writes before the cut");
    let new_i = c.index(&new_leader);
    let first_new =
        acks.iter().filter(|(i, _)| *i == new_i).map(|(_, t)| *t).min().expect("the new leader acknowledged writes");
    eprintln!(
        "partition: n1 last write {:?} after the cut, {new_leader} first write {:?} after the cut",
        last_old.duration_since(cut_at),
        first_new.duration_since(cut_at)
    );
    assert!(last_old < first_new, "two primaries accepted writes in overlapping time");
    assert!(acks.iter().all(|(i, _)| *i == 0 || *i == new_i), "writes only on the old and the new leader");
    assert!(c.nodes[0].log_text().contains("fencing"), "n1 fenced itself:\n{}", c.nodes[0].log_text());
    // Healed: n1 rejoins as a replica.
    proxy.restore();
    c.wait_streaming("n1", Duration::from_secs(60));
}

/// One of three etcd members dies: no failover, writes keep working.
#[test]
fn loss_of_one_etcd_member_is_invisible() {
    require_root();
    let etcd = testbed::shared_etcd_cluster();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("etcdloss", etcd, 3, |_| eps.clone());
    for n in &mut c.nodes {
        n.start();
    }
    let leader = c.wait_leader(Duration::from_secs(30), None);
    let li = c.index(&leader);
    for r in (1..=3).map(|i| format!("n{i}")).filter(|n| n != &leader) {
        c.wait_streaming(&r, Duration::from_secs(30));
    }
    psql_ok(&c.nodes[li], "CREATE TABLE t (at timestamptz)");
    etcd.kill_member(0);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(TTL * 2) {
        psql_ok(&c.nodes[li], "INSERT INTO t VALUES (now())");
        assert_eq!(c.leader_key().as_deref(), Some(leader.as_str()), "leadership changed");
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in &c.nodes {
        assert!(!n.log_text().contains("fencing"), "a node fenced itself:\n{}", n.log_text());
    }
}

/// Wrong CA: clear errors, retries, nothing created. etcd down at start,
/// then up: the node bootstraps once.
#[test]
fn bad_certificates_and_etcd_down_at_start() {
    require_root();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("badtls", etcd, 1, |_| eps.clone());
    let n = &mut c.nodes[0];
    n.set("ETCD3_CACERT", &etcd.other_ca.display().to_string());
    n.start();
    n.wait_log("cannot reach etcd", 2, Duration::from_secs(30));
    assert!(!n.data().exists(), "no data directory without etcd");
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));

    // etcd unreachable at start (the proxy refuses), then reachable.
    let proxy = proxy::Proxy::start(&etcd.endpoints[0]);
    proxy.cut();
    n.set("ETCD3_CACERT", &etcd.ca.display().to_string()).set("ETCD3_HOSTS", &proxy.endpoint());
    n.start();
    n.wait_log("cannot reach etcd", 4, Duration::from_secs(30));
    assert!(!n.data().exists());
    proxy.restore();
    n.wait_ready(1);
    assert_eq!(n.log_text().matches("initdb done").count(), 1);
}

/// SIGTERM of the leader, then of the member that just won the race, at
/// several moments of its promotion: both exit 0, the third leads, and
/// both rejoin it. Found by this test: without Patroni's `wal_keep_size`
/// the post-promotion checkpoint recycled the new timeline's first segment
/// before the rewound member's slot existed, and that member stayed
/// stopped at "requested WAL segment has already been removed" for good.
#[test]
fn double_hand_over_at_once_then_both_rejoin() {
    require_root();
    let etcd = testbed::shared_etcd();
    let mut c = Cluster::new("double", etcd, 3, |_| etcd.endpoints_arg());
    let mut leader = c.start_settled(Duration::from_secs(90));
    psql_ok(&c.nodes[c.index(&leader)], "CREATE TABLE t (i int)");
    for (round, delay_ms) in [0u64, 150, 500, 1200].into_iter().enumerate() {
        for n in c.names().into_iter().filter(|n| n != &leader) {
            c.wait_streaming(&n, Duration::from_secs(60));
        }
        psql_ok(&c.nodes[c.index(&leader)], &format!("INSERT INTO t VALUES ({round})"));
        let li = c.index(&leader);
        let t0 = Instant::now();
        c.nodes[li].signal(Signal::SIGTERM);
        let next = loop {
            if let Some(l) = c.leader_key().filter(|l| l != &leader) {
                break l;
            }
            assert!(t0.elapsed() < Duration::from_secs(TTL * 3), "round {round}: nobody took over from {leader}");
            std::thread::sleep(Duration::from_millis(5));
        };
        let won = t0.elapsed();
        let ni = c.index(&next);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let t1 = Instant::now();
        c.nodes[ni].signal(Signal::SIGTERM);
        for i in [li, ni] {
            let st = c.nodes[i].wait_exit(Duration::from_secs(30));
            assert_eq!(st.code(), Some(0), "round {round}: unclean exit ({st}); log:\n{}", c.nodes[i].log_text());
        }
        eprintln!(
            "round {round}: {leader} stopped, {next} won after {won:?}, stopped {delay_ms} ms later in {:?}",
            t1.elapsed()
        );
        let third = c.names().into_iter().find(|n| n != &leader && n != &next).expect("three nodes");
        assert_eq!(c.wait_leader(Duration::from_secs(TTL * 4), None), third, "round {round}");
        // Timeline numbers stay unique: when `next` promoted before it
        // stopped, the third member must not take that number again.
        let next_tl = newest_history(&c.nodes[ni].data());
        let third_tl: u32 = psql_ok(
            &c.nodes[c.index(&third)],
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        )
        .parse()
        .expect("timeline");
        assert_ne!(Some(third_tl), next_tl, "round {round}: {third} promoted to the timeline {next} had taken");
        c.nodes[li].start();
        c.nodes[ni].start();
        leader = third;
        let count = psql_ok(&c.nodes[c.index(&leader)], "SELECT count(*) FROM t");
        assert_eq!(count, (round + 1).to_string(), "round {round}: rows on {leader}");
    }
    for n in c.names().into_iter().filter(|n| n != &leader) {
        c.wait_streaming(&n, Duration::from_secs(60));
    }
}

/// The newest timeline a data directory has a real history file for
/// (tusk's placeholders, which only reserve a number, do not count).
fn newest_history(data: &std::path::Path) -> Option<u32> {
    std::fs::read_dir(data.join("pg_wal"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let tli = u32::from_str_radix(name.strip_suffix(".history")?, 16).ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            (!text.starts_with("# tusk: placeholder")).then_some(tli)
        })
        .max()
}

/// An asynchronous replica that received more of the old leader's WAL than
/// the member promoted after a crash replayed past the new timeline's
/// switch point: it cannot stream from the new leader until pg_rewind
/// mends it. n3 (tagged nofailover, so it cannot be the one promoted)
/// receives rows that n2 never gets (the old leader's walsender to n2 is
/// stopped), then the leader's tree is killed; n2 promotes, and n3 must
/// stream from it again with exactly n2's rows.
#[test]
fn replica_ahead_of_the_promoted_one_is_rewound_and_follows() {
    require_root();
    let etcd = testbed::shared_etcd();
    let mut c = Cluster::new("ahead", etcd, 3, |_| etcd.endpoints_arg());
    c.nodes[2].set("TUSK_NOFAILOVER", "true");
    // n3 cannot lead; n1 or n2 does, the other is the one to promote.
    let leader = c.start_settled(Duration::from_secs(90));
    let promoted = if leader == "n1" { "n2" } else { "n1" }.to_owned();
    let li = c.index(&leader);
    psql_ok(&c.nodes[li], "CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 100)");
    for n in [promoted.as_str(), "n3"] {
        let t0 = Instant::now();
        while try_sql(c.node(n), "SELECT count(*) FROM t").as_deref() != Some("100") {
            assert!(t0.elapsed() < Duration::from_secs(30), "{n} lacks the first rows");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Stop the walsender that serves the member to be promoted.
    let walsender: i32 =
        psql_ok(&c.nodes[li], &format!("SELECT pid FROM pg_stat_replication WHERE application_name = '{promoted}'"))
            .parse()
            .expect("walsender pid");
    let ws = nix::unistd::Pid::from_raw(walsender);
    nix::sys::signal::kill(ws, Signal::SIGSTOP).expect("SIGSTOP walsender");
    psql_ok(&c.nodes[li], "INSERT INTO t SELECT generate_series(101, 200)");
    let t0 = Instant::now();
    while try_sql(c.node("n3"), "SELECT count(*) FROM t").as_deref() != Some("200") {
        assert!(t0.elapsed() < Duration::from_secs(30), "n3 lacks the second rows");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(psql_ok(c.node(&promoted), "SELECT count(*) FROM t"), "100", "{promoted} got rows it must not have");
    // The leader crashes; its stopped walsender goes with it.
    c.kill_node(&leader);
    let _ = nix::sys::signal::kill(ws, Signal::SIGKILL);
    assert_eq!(c.wait_leader(Duration::from_secs(TTL * 4), Some(&leader)), promoted, "the promotable member leads");
    // n3 replayed rows 101..200 on the old timeline, past the switch point:
    // its walreceiver connects, then recovery refuses the new timeline.
    let t0 = Instant::now();
    loop {
        let rows = try_sql(c.node("n3"), "SELECT count(*) FROM t");
        let status = try_sql(c.node("n3"), "SELECT status FROM pg_stat_wal_receiver");
        if rows.as_deref() == Some("100") && status.as_deref() == Some("streaming") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "n3 does not follow the new leader's history ({rows:?} rows, {status:?}); its log:\n{}",
            c.node("n3").log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("n3 rewound and streaming {:?} after the new leader took over", t0.elapsed());
    let log = c.node("n3").log_text();
    assert!(log.contains("past where the new leader's history left it"), "the divergence is logged");
    assert!(log.contains("pg_rewind done"), "n3 was rewound, not cloned");
    // Writes reach it.
    psql_ok(c.node(&promoted), "INSERT INTO t VALUES (0)");
    let t0 = Instant::now();
    while try_sql(c.node("n3"), "SELECT count(*) FROM t").as_deref() != Some("101") {
        assert!(t0.elapsed() < Duration::from_secs(30), "n3 does not stream the new leader's writes");
        std::thread::sleep(Duration::from_millis(50));
    }
}
