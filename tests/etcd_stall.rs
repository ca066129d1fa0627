//! A stalled etcd member must not cost the primary its leadership. Each
//! test runs 3 tusk nodes against its own 3-member etcd with mutual TLS
//! (members are frozen with SIGSTOP: their connections stay open and
//! nothing answers, as with a member on a stuck disk or a paused VM) while a
//! writer inserts into the primary all along.
//!
//! Expected: no failover, no fencing, the same leader key, every
//! acknowledged row present; only when every member is frozen does the
//! primary fence itself, before its lease can expire.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster::{Cluster, psql_ok, try_sql};
use node::{PG_BIN, require_root};
use testbed::Etcd;

/// An etcd cluster of this test's own (frozen members must not disturb
/// other tests). Leaked for the `'static` the cluster harness wants; the
/// test stops it, and the test bed's watchdog kills it if the test dies.
fn own_etcd(dir: &std::path::Path) -> &'static Etcd {
    Box::leak(Box::new(Etcd::start_cluster(dir)))
}

/// SIGSTOP / SIGCONT of one etcd member.
fn freeze(etcd: &Etcd, i: usize, on: bool) {
    let pid = etcd.pid(i).expect("etcd member pid");
    testbed::signal(pid, if on { "STOP" } else { "CONT" });
}

/// The leader key, read through the members other than `skip` (etcdctl
/// would wait on a frozen one).
fn leader_key(c: &Cluster, skip: &[usize]) -> Option<String> {
    let eps: Vec<String> = c
        .etcd
        .endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(_, e)| format!("https://{e}"))
        .collect();
    let out =
        c.etcd.etcdctl_at(&eps.join(","), &["get", "--print-value-only", &format!("/service/{}/leader", c.scope)]);
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!v.is_empty()).then_some(v)
}

/// Inserts into one node every 20 ms, recording when each insert was
/// acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(n: &node::Node) -> Writer {
        psql_ok(n, "CREATE TABLE IF NOT EXISTS w (at timestamptz)");
        let (sock, port) = (n.socket_dir(), n.pg_port);
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (s, a) = (stop.clone(), acks.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let ok = Command::new(format!("{PG_BIN}/psql"))
                    .args(["-XAtq", "-h"])
                    .arg(&sock)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
                    .args(["-c", "INSERT INTO w VALUES (now())"])
                    .env("PGCONNECT_TIMEOUT", "1")
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    a.lock().expect("acks lock").push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Writer { stop, acks, thread: Some(thread) }
    }

    /// Stops; returns the acknowledged count and the longest gap between
    /// acknowledgements from `since` on.
    fn finish(mut self, since: Instant) -> (usize, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        let acks = self.acks.lock().expect("acks lock");
        let mut last = since;
        let mut gap = Duration::ZERO;
        for &t in acks.iter().filter(|t| **t >= since) {
            gap = gap.max(t - last);
            last = t;
        }
        (acks.len(), gap)
    }
}

/// Three nodes on `etcd` with `dcs` as the bootstrap DCS settings and
/// `hosts` as every node's ETCD3_HOSTS; returns the cluster and its leader.
fn settled_cluster(name: &str, etcd: &'static Etcd, dcs: &str, hosts: &str) -> (Cluster, String) {
    let hosts = hosts.to_owned();
    let mut c = Cluster::new(name, etcd, 3, |_| hosts.clone());
    for n in &mut c.nodes {
        n.set("TUSK_BOOTSTRAP_DCS", dcs);
    }
    let leader = c.start_settled(Duration::from_secs(90));
    (c, leader)
}

/// tusk's own log lines of every node (postgres' lines left out), for
/// failure messages.
fn logs(c: &Cluster) -> String {
    let mut out = String::new();
    for (i, n) in c.nodes.iter().enumerate() {
        out.push_str(&format!("==== n{}\n", i + 1));
        for l in n.log_text().lines().filter(|l| !l.contains(" postgres: ")) {
            out.push_str(l);
            out.push('\n');
        }
    }
    // etcd's view: elections, leader changes, lease revocations.
    for i in 0..3 {
        out.push_str(&format!("==== etcd member {i}\n"));
        let log = std::fs::read_to_string(c.etcd.log_file(i)).unwrap_or_default();
        for l in log.lines().filter(|l| {
            ["elected", "became", "lost leader", "lease", "revok", "slow", "leader changed"]
                .iter()
                .any(|k| l.contains(k))
        }) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// For `how_long`, checks twice a second (through the members not in
/// `skip`) that `leader` still holds the leader key.
fn leader_holds(c: &Cluster, leader: &str, skip: &[usize], how_long: Duration, phase: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < how_long {
        assert_eq!(leader_key(c, skip).as_deref(), Some(leader), "{phase}: the leader key moved\n{}", logs(c));
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_no_fencing(c: &Cluster, phase: &str) {
    for (i, n) in c.nodes.iter().enumerate() {
        let log = n.log_text();
        assert!(!log.contains("fencing"), "{phase}: n{} fenced itself:\n{log}", i + 1);
    }
}

/// After the freezes: the same leader, still primary, every replica
/// streaming, every acknowledged row there.
fn assert_intact(c: &Cluster, leader: &str, acked: usize, phase: &str) {
    // A member just thawed may take a few seconds to answer reads again
    // (its raft log catches up first): an unanswered read is retried, only
    // an answer naming another leader (or none for 20 s) fails.
    let t0 = Instant::now();
    let mut seen = leader_key(c, &[]);
    while seen.is_none() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        seen = leader_key(c, &[]);
    }
    assert_eq!(seen.as_deref(), Some(leader), "{phase}: the leader key moved\n{}", logs(c));
    let li = c.index(leader);
    assert_eq!(try_sql(&c.nodes[li], "SELECT pg_is_in_recovery()").as_deref(), Some("f"), "{phase}: not primary");
    for r in c.names().into_iter().filter(|n| n != leader) {
        c.wait_streaming(&r, Duration::from_secs(60));
    }
    let rows: usize = psql_ok(&c.nodes[li], "SELECT count(*) FROM w").parse().expect("count");
    assert!(rows >= acked, "{phase}: {acked} inserts acknowledged, {rows} rows present");
    assert_no_fencing(c, phase);
}

/// Reads the node's `/metrics` counter (0 when absent).
fn metric(c: &Cluster, name: &str, metric: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{}/metrics", c.api_port(name)))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// ttl 10, loop_wait 2, retry_timeout 4: each member frozen for 2×ttl in turn.
#[test]
fn each_member_frozen_in_turn_costs_no_failover() {
    require_root();
    let dir = node::test_dir("stall-each");
    let etcd = own_etcd(&dir.path().join("etcd"));
    let hosts = etcd.endpoints.join(",");
    let (c, leader) = settled_cluster("stalleach", etcd, r#"{"ttl":10,"loop_wait":2,"retry_timeout":4}"#, &hosts);
    let li = c.index(&leader);
    let w = Writer::start(&c.nodes[li]);
    let t0 = Instant::now();
    for m in 0..3 {
        let phase = format!("member {m} frozen");
        freeze(etcd, m, true);
        leader_holds(&c, &leader, &[m], Duration::from_secs(20), &phase);
        freeze(etcd, m, false);
        assert_no_fencing(&c, &phase);
        std::thread::sleep(Duration::from_secs(3));
    }
    let (acked, gap) = w.finish(t0);
    eprintln!("each member frozen for 20 s in turn: {acked} inserts, longest gap {gap:?}");
    // What the nodes went through (lease losses to etcd's revocation bug included).
    for l in logs(&c).lines().filter(|l| l.contains("lease") && !l.contains("keepalive missed")) {
        eprintln!("  {l}");
    }
    assert_intact(&c, &leader, acked, "after three freezes");
    // Writes never waited on etcd: a gap of seconds would mean the primary
    // stopped (generous bound: two tests share two cores).
    assert!(gap < Duration::from_secs(5), "the primary stopped taking writes for {gap:?}");
    // The nodes moved away from the frozen members, and say so.
    for name in c.names() {
        assert!(metric(&c, &name, "tusk_dcs_endpoint_switches_total") >= 1.0, "{name}: no endpoint switch counted");
    }
    let log = c.nodes[li].log_text();
    assert!(log.contains("switching to another member"), "the switch is logged:\n{log}");
    etcd.stop();
}

/// Patroni's defaults (30/10/10) and one member frozen for 2×ttl.
#[test]
fn frozen_member_at_default_timings_costs_no_failover() {
    require_root();
    let dir = node::test_dir("stall-default");
    let etcd = own_etcd(&dir.path().join("etcd"));
    let hosts = etcd.endpoints.join(",");
    let (c, leader) = settled_cluster("stalldef", etcd, r#"{"ttl":30,"loop_wait":10,"retry_timeout":10}"#, &hosts);
    let li = c.index(&leader);
    let w = Writer::start(&c.nodes[li]);
    let t0 = Instant::now();
    freeze(etcd, 0, true);
    leader_holds(&c, &leader, &[0], Duration::from_secs(60), "member 0 frozen");
    freeze(etcd, 0, false);
    let (acked, gap) = w.finish(t0);
    eprintln!("member 0 frozen for 60 s at 30/10/10: {acked} inserts, longest gap {gap:?}");
    assert_intact(&c, &leader, acked, "after the freeze");
    assert!(gap < Duration::from_secs(5), "the primary stopped taking writes for {gap:?}");
    etcd.stop();
}

/// Every member frozen for longer than ttl: the primary cannot renew its
/// lease and must stop taking writes before the lease can expire. Once etcd
/// is back, the cluster has one leader again and every node runs.
#[test]
fn all_members_frozen_fences_the_primary_before_its_lease_expires() {
    require_root();
    let dir = node::test_dir("stall-all");
    let etcd = own_etcd(&dir.path().join("etcd"));
    let hosts = etcd.endpoints.join(",");
    let (c, leader) = settled_cluster("stallall", etcd, r#"{"ttl":10,"loop_wait":2,"retry_timeout":4}"#, &hosts);
    let li = c.index(&leader);
    let w = Writer::start(&c.nodes[li]);
    for m in 0..3 {
        freeze(etcd, m, true);
    }
    let frozen_at = Instant::now();
    // Fenced: writes stop, and the log says why, before the ttl is over.
    let fenced = loop {
        if c.nodes[li].log_text().contains("fencing") {
            break frozen_at.elapsed();
        }
        assert!(frozen_at.elapsed() < Duration::from_secs(15), "the primary did not fence itself");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(12).saturating_sub(frozen_at.elapsed()));
    for m in 0..3 {
        freeze(etcd, m, false);
    }
    let acks = w.acks.lock().expect("acks").clone();
    let (_acked, _) = w.finish(frozen_at);
    let last_write = acks.iter().max().map(|t| t.saturating_duration_since(frozen_at));
    eprintln!("all members frozen: fenced after {fenced:?}, last write {last_write:?} after the freeze");
    // The lease was last renewed before the freeze; it expires at the
    // earliest ttl (10 s) after that renewal.
    assert!(fenced < Duration::from_secs(10), "fenced only after {fenced:?}");
    assert!(
        last_write.is_some_and(|t| t < Duration::from_secs(10)),
        "a write was acknowledged {last_write:?} into the freeze"
    );
    // Back: one leader, the others stream from it.
    let new_leader = c.wait_leader(Duration::from_secs(90), None);
    for r in c.names().into_iter().filter(|n| n != &new_leader) {
        c.wait_streaming(&r, Duration::from_secs(90));
    }
    etcd.stop();
}

/// `/etc/hosts` entries for the test's etcd names, removed on drop.
struct HostsEntries {
    names: Vec<String>,
}

const HOSTS: &str = "/etc/hosts";

impl HostsEntries {
    fn add(names: &[String]) -> HostsEntries {
        let mut text = std::fs::read_to_string(HOSTS).expect("read /etc/hosts");
        for n in names {
            text.push_str(&format!("127.0.0.1 {n} # tusk test\n"));
        }
        write_hosts(&text);
        HostsEntries { names: names.to_vec() }
    }

    fn remove(&self, name: &str) {
        let text = std::fs::read_to_string(HOSTS).expect("read /etc/hosts");
        let kept: String =
            text.lines().filter(|l| !l.split_whitespace().any(|w| w == name)).map(|l| format!("{l}\n")).collect();
        write_hosts(&kept);
    }
}

impl Drop for HostsEntries {
    fn drop(&mut self) {
        for n in &self.names {
            self.remove(n);
        }
    }
}

/// In place: /etc/hosts may be a bind mount that a rename cannot replace.
fn write_hosts(text: &str) {
    std::fs::write(HOSTS, text).expect("write /etc/hosts");
}

/// ETCD3_HOSTS by name; the first member's name stops resolving and its
/// member stops answering: the nodes carry on through the others.
#[test]
fn a_member_name_that_stops_resolving_costs_no_failover() {
    require_root();
    let dir = node::test_dir("stall-dns");
    let etcd_dir = dir.path().join("etcd");
    let tag = std::process::id();
    let names: Vec<String> = (0..3).map(|i| format!("etcd{i}-{tag}.tusk-test.internal")).collect();
    // The server certificate names them (made before etcd.sh would make one).
    let mut certs = Command::new(testbed::script("certs.sh"));
    certs.arg(etcd_dir.join("certs"));
    for n in &names {
        certs.arg(format!("DNS:{n}"));
    }
    assert!(certs.status().expect("certs.sh").success());
    let etcd = own_etcd(&etcd_dir);
    let hosts = HostsEntries::add(&names);
    let ports: Vec<&str> = etcd.endpoints.iter().map(|e| e.rsplit(':').next().expect("port")).collect();
    let by_name: Vec<String> = names.iter().zip(&ports).map(|(n, p)| format!("{n}:{p}")).collect();
    let (c, leader) =
        settled_cluster("stalldns", etcd, r#"{"ttl":10,"loop_wait":2,"retry_timeout":4}"#, &by_name.join(","));
    let li = c.index(&leader);
    let w = Writer::start(&c.nodes[li]);
    let t0 = Instant::now();
    hosts.remove(&names[0]);
    freeze(etcd, 0, true);
    leader_holds(&c, &leader, &[0], Duration::from_secs(20), "name gone");
    freeze(etcd, 0, false);
    let (acked, gap) = w.finish(t0);
    eprintln!("member 0's name unresolvable for 20 s: {acked} inserts, longest gap {gap:?}");
    assert_intact(&c, &leader, acked, "after the name vanished");
    drop(hosts);
    etcd.stop();
}

/// nftables rules that cut one etcd member (running as its own uid) off
/// from its peers while its client port stays open; removed on drop.
struct PeerCut {
    table: String,
}

impl PeerCut {
    /// `user`: the member's OS user; `own_peer`: its peer port; `others`: the
    /// other members' peer ports.
    fn new(user: &str, own_peer: u16, others: &[u16]) -> PeerCut {
        let table = format!("tusk_test_{}", std::process::id());
        let others = others.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        let rules = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             meta skuid {user} tcp dport {{ {others} }} drop\n    meta skuid {user} tcp sport {own_peer} drop\n    \
             tcp dport {own_peer} drop\n  }}\n}}\n"
        );
        let mut nft =
            Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("run nft");
        std::io::Write::write_all(nft.stdin.as_mut().expect("nft stdin"), rules.as_bytes()).expect("write rules");
        assert!(nft.wait().expect("nft").success(), "nft rejected:\n{rules}");
        PeerCut { table }
    }
}

impl Drop for PeerCut {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

/// One member cut off from its peers (it still accepts clients, but can no
/// longer commit, serve linearizable reads or forward keepalives), and it is
/// the member every node talks to first: no failover.
#[test]
fn a_member_cut_off_from_its_peers_costs_no_failover() {
    require_root();
    let dir = node::test_dir("stall-cut");
    let etcd: &'static Etcd =
        Box::leak(Box::new(Etcd::start_cluster_running_as(&dir.path().join("etcd"), "n2", "etcd")));
    let client_port =
        |i: usize| -> u16 { etcd.endpoints[i].rsplit(':').next().and_then(|p| p.parse().ok()).expect("client port") };
    // etcd.sh: member i's peer port is its client port + 1.
    let peer = |i: usize| client_port(i) + 1;
    let hosts = [2, 0, 1].iter().map(|&i| etcd.endpoints[i].clone()).collect::<Vec<_>>().join(",");
    let (c, leader) = settled_cluster("stallcut", etcd, r#"{"ttl":10,"loop_wait":2,"retry_timeout":4}"#, &hosts);
    let li = c.index(&leader);
    let w = Writer::start(&c.nodes[li]);
    let t0 = Instant::now();
    let cut = PeerCut::new("etcd", peer(2), &[peer(0), peer(1)]);
    leader_holds(&c, &leader, &[2], Duration::from_secs(20), "member cut off");
    // The member really was cut off: it refused or dropped requests.
    let direct = c.etcd.etcdctl_at(&format!("https://{}", etcd.endpoints[2]), &["get", "x"]);
    assert!(!direct.status.success(), "the cut-off member still served a linearizable read");
    drop(cut);
    let (acked, gap) = w.finish(t0);
    eprintln!("member n2 cut off from its peers for 20 s: {acked} inserts, longest gap {gap:?}");
    assert_intact(&c, &leader, acked, "after the cut");
    for name in c.names() {
        assert!(metric(&c, &name, "tusk_dcs_endpoint_switches_total") >= 1.0, "{name}: no endpoint switch counted");
    }
    etcd.stop();
}
