//! Failsafe mode against the real binary, real PostgreSQL and a real etcd
//! with mutual TLS, which the test freezes (SIGSTOP: every request to it
//! hangs, as in a partition) for longer than the TTL while a writer commits
//! on the primary:
//!
//! 1. failsafe on: the primary keeps accepting every write, no replica
//!    promotes, and after etcd returns the same member leads, with every
//!    acknowledged write;
//! 2. failsafe on, but one replica's agent frozen too (it cannot confirm):
//!    the primary stops taking writes within its lease, and the cluster
//!    comes back with one leader;
//! 3. failsafe turned off (`PATCH /config`): the primary stops taking
//!    writes within its lease, as without failsafe mode.
//!
//! Throughout, never two members accept writes at once.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, psql_ok, sql_at, try_sql};
use node::require_root;

const TTL: u64 = 10;
const DCS: &str = r#"{"ttl":10,"loop_wait":2,"retry_timeout":3,"failsafe_mode":true}"#;
/// Longer than the TTL: every lease expires on etcd meanwhile.
const OUTAGE: Duration = Duration::from_secs(22);

/// etcd frozen while alive; thawed on drop (a failing test leaves no
/// stopped process behind).
struct Frozen(u32);

impl Frozen {
    fn etcd(etcd: &testbed::Etcd) -> Frozen {
        let pid = etcd.pid(0).expect("etcd pid");
        testbed::signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        testbed::signal(self.0, "CONT");
    }
}

/// Commits numbered rows on one member every 50 ms; records which were
/// acknowledged and when the first one failed.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    failed: Arc<Mutex<Vec<(u64, Instant)>>>,
    next: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(n: &node::Node, from: u64) -> Writer {
        let (sock, port) = (n.socket_dir(), n.pg_port);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(from));
        let (s, a, f, nx) = (stop.clone(), acked.clone(), failed.clone(), next.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let id = nx.fetch_add(1, Ordering::Relaxed);
                match sql_at(&sock, port, &format!("INSERT INTO w VALUES ({id})")) {
                    Some(_) => a.lock().unwrap().push(id),
                    None => f.lock().unwrap().push((id, Instant::now())),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Writer { stop, acked, failed, next, thread: Some(thread) }
    }

    fn finish(mut self) -> (Vec<u64>, Vec<(u64, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (acked, failed, self.next.load(Ordering::Relaxed))
    }
}

/// The members whose postgres accepts writes now.
fn writable(c: &Cluster) -> Vec<String> {
    c.names().into_iter().filter(|n| try_sql(c.node(n), "SELECT pg_is_in_recovery()").as_deref() == Some("f")).collect()
}

/// Watches, every 300 ms until dropped, that never two members accept
/// writes at once; remembers every member that did.
struct PrimaryWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PrimaryWatch {
    fn start(c: &Cluster) -> PrimaryWatch {
        let targets: Vec<(String, std::path::PathBuf, u16)> =
            c.names().into_iter().map(|n| (n.clone(), c.node(&n).socket_dir(), c.node(&n).pg_port)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now: Vec<String> = targets
                    .iter()
                    .filter(|(_, sock, port)| sql_at(sock, *port, "SELECT pg_is_in_recovery()").as_deref() == Some("f"))
                    .map(|(n, _, _)| n.clone())
                    .collect();
                v.lock().unwrap().push(now);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        PrimaryWatch { stop, seen, thread: Some(thread) }
    }

    /// Every set of writable members seen; panics if one had two.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let seen = self.seen.lock().unwrap();
        let mut all: Vec<String> = Vec::new();
        for s in seen.iter() {
            assert!(s.len() <= 1, "two members accepted writes at once: {s:?}");
            for n in s {
                if !all.contains(n) {
                    all.push(n.clone());
                }
            }
        }
        all
    }
}

fn failsafe_key(c: &Cluster) -> Option<serde_json::Value> {
    let out = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/failsafe", c.scope)]);
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until etcd answers and some member holds the leader key and runs
/// as the only primary; returns it.
fn settle(c: &Cluster, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(l) = c.leader_key()
            && writable(c) == [l.clone()]
        {
            return l;
        }
        assert!(t0.elapsed() < timeout, "no single leader {timeout:?} after etcd returned");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long after `t0` the writer's first failure came (`None`: none).
fn first_failure(failed: &[(u64, Instant)], t0: Instant) -> Option<Duration> {
    failed.iter().map(|(_, at)| at.saturating_duration_since(t0)).min()
}

#[test]
fn failsafe_keeps_the_primary_through_an_etcd_outage_only_with_every_member() {
    require_root();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("failsafe", etcd, 3, |_| eps.clone());
    for n in &mut c.nodes {
        n.set("TUSK_BOOTSTRAP_DCS", DCS);
    }
    let leader = c.start_settled(Duration::from_secs(120));
    let t0 = Instant::now();
    let listed = loop {
        if let Some(v) = failsafe_key(&c).filter(|v| v.as_object().is_some_and(|o| o.len() == 3)) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the leader never listed 3 members: {:?}", failsafe_key(&c));
        std::thread::sleep(Duration::from_millis(200));
    };
    for (name, url) in listed.as_object().expect("object") {
        assert_eq!(url.as_str(), Some(format!("http://127.0.0.1:{}/patroni", c.api_port(name)).as_str()));
    }
    psql_ok(c.node(&leader), "CREATE TABLE w (id bigint PRIMARY KEY)");
    let replicas: Vec<String> = c.names().into_iter().filter(|n| n != &leader).collect();

    // 1. Every member confirms: the primary stays, writable, throughout.
    let watch = PrimaryWatch::start(&c);
    let w = Writer::start(c.node(&leader), 1);
    std::thread::sleep(Duration::from_secs(1));
    let frozen = Frozen::etcd(etcd);
    let t0 = Instant::now();
    let mut active_after = None;
    while t0.elapsed() < OUTAGE {
        if active_after.is_none()
            && c.api_status(&leader).is_some_and(|s| s["failsafe_mode_is_active"] == serde_json::json!(true))
        {
            active_after = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (acked, failed, next) = w.finish();
    drop(frozen);
    assert!(failed.is_empty(), "writes failed on the failsafe primary during the outage: {:?}", failed.len());
    let active_after = active_after.expect("the leader never reported failsafe_mode_is_active");
    let l = settle(&c, Duration::from_secs(40));
    assert_eq!(l, leader, "another member took over although every member confirmed the primary");
    let seen = watch.finish();
    assert_eq!(seen, std::slice::from_ref(&leader), "a replica promoted during the outage");
    let count: usize = psql_ok(c.node(&leader), "SELECT count(*) FROM w").parse().expect("count");
    assert!(count >= acked.len(), "acknowledged writes lost: {count} rows, {} acknowledged", acked.len());
    eprintln!(
        "failsafe, all confirm: etcd frozen {OUTAGE:?}; failsafe active after {active_after:?}; {} writes, none \
         failed; {leader} leads again {:?} after etcd returned",
        acked.len(),
        t0.elapsed() - OUTAGE
    );
    let t0 = Instant::now();
    while c.api_status(&leader).is_some_and(|s| s.get("failsafe_mode_is_active").is_some()) {
        assert!(t0.elapsed() < Duration::from_secs(20), "failsafe mode stayed active after etcd returned");
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in &replicas {
        c.wait_streaming(r, Duration::from_secs(60));
    }

    // 2. One replica cannot confirm (its agent is frozen): the primary
    //    stops taking writes within its lease.
    let watch = PrimaryWatch::start(&c);
    let stuck = replicas[0].clone();
    let stuck_pid = c.node(&stuck).pid() as u32;
    let w = Writer::start(c.node(&leader), next);
    std::thread::sleep(Duration::from_secs(1));
    testbed::signal(stuck_pid, "STOP");
    let frozen = Frozen::etcd(etcd);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(TTL + 5));
    let (_, failed, next) = w.finish();
    let fenced = first_failure(&failed, t0).expect("the primary kept taking writes although a member did not confirm");
    assert!(fenced < Duration::from_secs(TTL), "writes went on for {fenced:?}, past the lease");
    drop(frozen);
    testbed::signal(stuck_pid, "CONT");
    let l2 = settle(&c, Duration::from_secs(60));
    let seen = watch.finish();
    eprintln!(
        "failsafe, {stuck} cannot confirm: writes stopped {fenced:?} after etcd froze; {l2} leads {:?} after etcd \
         returned; writable meanwhile: {seen:?}",
        t0.elapsed() - Duration::from_secs(TTL + 5)
    );
    for r in c.names().into_iter().filter(|n| n != &l2) {
        c.wait_streaming(&r, Duration::from_secs(90));
    }

    // 3. Failsafe mode off: the primary stops taking writes within its lease.
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH", "-d", r#"{"failsafe_mode":false}"#])
        .arg(format!("http://127.0.0.1:{}/config", c.api_port(&l2)))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let t0 = Instant::now();
    while failsafe_key(&c).is_some() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the failsafe key stayed after failsafe mode was turned off");
        std::thread::sleep(Duration::from_millis(200));
    }
    let watch = PrimaryWatch::start(&c);
    let w = Writer::start(c.node(&l2), next);
    std::thread::sleep(Duration::from_secs(1));
    let frozen = Frozen::etcd(etcd);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(TTL + 3));
    let (_, failed, _) = w.finish();
    let fenced = first_failure(&failed, t0).expect("without failsafe mode the primary kept taking writes");
    assert!(fenced < Duration::from_secs(TTL), "writes went on for {fenced:?}, past the lease");
    drop(frozen);
    let l3 = settle(&c, Duration::from_secs(60));
    watch.finish();
    eprintln!("failsafe off: writes stopped {fenced:?} after etcd froze; {l3} leads after etcd returned");
}
