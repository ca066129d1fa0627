//! Replication slots in HA mode against the real binary, real PostgreSQL 15
//! and a real etcd with mutual TLS, on 3 nodes: a permanent logical slot
//! whose consumer goes on across a switchover and a crash failover with no
//! change lost or repeated after its confirmed position, a permanent
//! physical slot on the new leader not behind, `ignore_slots`, and the
//! grace of `member_slots_ttl`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::time::{Duration, Instant};

use cluster::{Cluster, psql_ok, try_sql};
use node::require_root;

const DCS: &str = r#"{"ttl":6,"loop_wait":1,"retry_timeout":2,"synchronous_mode":true,
    "member_slots_ttl":5,
    "slots":{"ls":{"type":"logical","database":"postgres","plugin":"test_decoding"},"perm":{"type":"physical"}},
    "ignore_slots":[{"name":"manual"}],
    "postgresql":{"remove_data_directory_on_rewind_failure":true}}"#;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dump_logs(c: &Cluster) -> String {
    let mut logs = String::new();
    for n in c.names() {
        let node = c.node(&n);
        let text = node.log_text();
        let slot_warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN") && l.contains("slot")).collect();
        logs.push_str(&format!(
            "==== {n}: slot warnings\n{}\n==== {n}: tail\n{}\n",
            slot_warnings.join("\n"),
            node.log_tail(60)
        ));
    }
    logs
}

fn slot_lsn(c: &Cluster, node: &str, slot: &str, column: &str) -> Option<u64> {
    try_sql(
        c.node(node),
        &format!(
            "SELECT pg_wal_lsn_diff({column}, '0/0')::bigint FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
    .and_then(|s| s.parse().ok())
}

fn has_slot(c: &Cluster, node: &str, slot: &str) -> bool {
    try_sql(c.node(node), &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")).as_deref()
        == Some("1")
}

/// A logical consumer over SQL: it remembers the position it confirmed
/// and, on a new primary, starts from there (as a streaming client asks
/// for its confirmed position at START_REPLICATION).
struct Consumer {
    confirmed: u64,
    seen: Vec<u64>,
}

impl Consumer {
    /// Reads and confirms everything available on `node`.
    fn consume(&mut self, c: &Cluster, node: &str) {
        let n = c.node(node);
        let slot_at = slot_lsn(c, node, "ls", "confirmed_flush_lsn").expect("slot ls on the leader");
        // Never ahead of what the consumer confirmed: nothing lost.
        assert!(
            slot_at <= self.confirmed || self.confirmed == 0,
            "slot ls on {node} at {slot_at} is past the consumer's confirmed {}",
            self.confirmed
        );
        if slot_at < self.confirmed {
            psql_ok(n, &format!("SELECT pg_replication_slot_advance('ls', '{}'::pg_lsn)", lsn_text(self.confirmed)));
        }
        let out = psql_ok(n, "SELECT data FROM pg_logical_slot_get_changes('ls', NULL, NULL)");
        for line in out.lines() {
            if let Some(v) = line.strip_prefix("table public.w: INSERT: i[integer]:") {
                self.seen.push(v.trim().parse().expect("row number"));
            }
        }
        self.confirmed = slot_lsn(c, node, "ls", "confirmed_flush_lsn").expect("slot ls");
    }
}

fn lsn_text(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

fn insert(c: &Cluster, node: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        psql_ok(c.node(node), &format!("INSERT INTO w VALUES ({i})"));
    }
}

/// Waits until every replica has slot `ls` and has advanced it to
/// `confirmed` (copied with one restart, then advanced each round; a copy
/// that failed is tried again after 30 s, so the bound allows one failure).
fn wait_replicas_have_ls(c: &Cluster, leader: &str, confirmed: u64) {
    for r in c.names().into_iter().filter(|n| n != leader) {
        let t0 = Instant::now();
        while slot_lsn(c, &r, "ls", "confirmed_flush_lsn").is_none_or(|l| l < confirmed) {
            assert!(
                t0.elapsed() < Duration::from_secs(75),
                "ls on {r} at {confirmed}: not within 75 s ({:?} there)\n{}",
                slot_lsn(c, &r, "ls", "confirmed_flush_lsn"),
                dump_logs(c)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn slots_across_switchover_and_failover() {
    require_root();
    let t_start = Instant::now();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("slots", etcd, 3, |_| eps.clone());
    for node in &mut c.nodes {
        node.set("TUSK_BOOTSTRAP_DCS", DCS)
            .set("TUSK_PG_PARAMETERS", r#"{"wal_level":"logical","hot_standby_feedback":"on"}"#);
    }
    let leader = c.start_settled(Duration::from_secs(90));
    wait_until("permanent slots on the leader", Duration::from_secs(20), || {
        has_slot(&c, &leader, "ls") && has_slot(&c, &leader, "perm")
    });

    // ignore_slots: a matched slot survives, another one made by hand does not.
    psql_ok(c.node(&leader), "SELECT pg_create_physical_replication_slot('manual', true)");
    psql_ok(c.node(&leader), "SELECT pg_create_physical_replication_slot('stray', true)");
    wait_until("the stray slot dropped", Duration::from_secs(15), || !has_slot(&c, &leader, "stray"));
    assert!(has_slot(&c, &leader, "manual"), "ignored slot dropped:\n{}", dump_logs(&c));

    // member_slots_ttl: a stopped replica's slot stays for the grace, then goes.
    let gone = c.names().into_iter().find(|n| n != &leader).unwrap();
    let gone_slot = gone.clone();
    let gi = c.index(&gone);
    c.nodes[gi].stop_cleanly(Duration::from_secs(30));
    let t_stop = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert!(has_slot(&c, &leader, &gone_slot), "slot of {gone} dropped within the grace:\n{}", dump_logs(&c));
    wait_until("the departed member's slot dropped after the grace", Duration::from_secs(20), || {
        !has_slot(&c, &leader, &gone_slot)
    });
    let grace = t_stop.elapsed();
    assert!(grace >= Duration::from_secs(5), "dropped after {grace:?}");
    c.nodes[gi].start();
    c.wait_streaming(&gone, Duration::from_secs(60));
    wait_until("slot of the returning member", Duration::from_secs(20), || has_slot(&c, &leader, &gone_slot));
    println!("ignore_slots and member_slots_ttl done at {:?} (grace seen {grace:?})", t_start.elapsed());

    // A consumer of ls on the first leader.
    psql_ok(c.node(&leader), "CREATE TABLE w (i int)");
    let mut consumer = Consumer { confirmed: 0, seen: Vec::new() };
    insert(&c, &leader, 1..=20);
    consumer.consume(&c, &leader);
    assert_eq!(consumer.seen, (1..=20).collect::<Vec<_>>());
    wait_replicas_have_ls(&c, &leader, consumer.confirmed);
    let perm_before = slot_lsn(&c, &leader, "perm", "restart_lsn").expect("perm restart_lsn");
    println!("ls on every replica at {:?}", t_start.elapsed());

    // Switchover: rows 21..40 committed but not consumed.
    insert(&c, &leader, 21..=40);
    // Synchronous mode: the candidate is the synchronous standby.
    let mut candidate = String::new();
    wait_until("a synchronous standby", Duration::from_secs(30), || {
        let others: Vec<String> = c.names().into_iter().filter(|n| n != &leader).collect();
        match others.into_iter().find(|n| c.api_status(n).is_some_and(|s| s["sync_standby"] == true)) {
            Some(n) => {
                candidate = n;
                true
            }
            None => false,
        }
    });
    c.switchover(&candidate);
    let leader2 = c.wait_leader(Duration::from_secs(60), Some(&leader));
    assert_eq!(leader2, candidate);
    consumer.consume(&c, &leader2);
    assert_eq!(consumer.seen, (1..=40).collect::<Vec<_>>(), "after the switchover");
    insert(&c, &leader2, 41..=50);
    consumer.consume(&c, &leader2);
    assert_eq!(consumer.seen, (1..=50).collect::<Vec<_>>());
    println!("switchover done at {:?}", t_start.elapsed());

    // Crash failover: rows 51..70 acknowledged (synchronous mode), not consumed.
    for r in c.names().into_iter().filter(|n| n != &leader2) {
        c.wait_streaming(&r, Duration::from_secs(60));
    }
    wait_replicas_have_ls(&c, &leader2, consumer.confirmed);
    insert(&c, &leader2, 51..=70);
    c.kill_node(&leader2);
    let leader3 = c.wait_leader(Duration::from_secs(60), Some(&leader2));
    consumer.consume(&c, &leader3);
    assert_eq!(consumer.seen, (1..=70).collect::<Vec<_>>(), "after the crash failover:\n{}", dump_logs(&c));
    let perm_after = slot_lsn(&c, &leader3, "perm", "restart_lsn");
    assert!(
        perm_after.is_some_and(|p| p >= perm_before),
        "perm on {leader3}: {perm_after:?}, before the failovers {perm_before}"
    );
    assert!(has_slot(&c, &leader3, "manual") || leader3 != leader, "ignored slot");
    println!("crash failover done at {:?}", t_start.elapsed());
}
