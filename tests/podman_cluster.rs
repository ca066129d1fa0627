//! Issue 10: a 3-member cluster under podman, started on each "host" with
//! the command users run (only the image name, the volumes' host paths, the
//! etcd endpoints and the container names changed; the test adds short HA
//! timings, synchronous mode, a small `shared_buffers` and the S3 variables):
//!
//! ```text
//! podman run --rm --net=host --name patroni-container \
//!   --volume ${HOME}/patroni:/home/postgres/pgdata \
//!   --volume /etc/ssl/etcd-certs:/etc/ssl/etcd-certs \
//!   --env SCOPE=superman --env PGVERSION=15 --env ETCD3_PROTOCOL="https" \
//!   --env ETCD3_HOSTS="${ETCD_HOSTS}" --env ETCD3_CACERT=... IMAGE
//! ```
//!
//! Three hosts on one machine: each node is a network namespace made by the
//! test (a veth on a test bridge, its own address) and a UTS namespace with
//! its own host name (`node1`..`node3`); `podman run --net=host` is started
//! inside both, so the container sees that host's address and name, as on a
//! real host. Each host's `/etc/hosts` (which podman copies into a
//! `--net=host` container) is a per-node `base_hosts_file` in the node's
//! `CONTAINERS_CONF`. Nothing names the members: tusk derives the member
//! name from the host name and the connect addresses from its first
//! address, as Spilo does. etcd (3 members, mutual TLS) and garage (S3)
//! listen on the bridge's address on the machine.
//!
//! One test runs the cluster once and applies the faults in sequence while a
//! writer records every acknowledged write: `podman stop` / `kill` / `rm -f`
//! of the leader, the leader's network cut, one etcd member of three
//! stopped, garage stopped while writing, all three containers restarted at
//! once. The cluster runs in synchronous mode, so no acknowledged write may
//! be lost in any of them; no two members may be primaries at once; no WAL
//! segment may be missing from the bucket; every `podman stop` ends with
//! exit status 0. `bench_podman_cluster` (ignored; scripts/bench/podman.sh)
//! measures the same set-up with the default timings.
//!
//! Needs root, podman (scripts/podman-setup.sh), nsenter/unshare, etcd and
//! garage (scripts/install-testbed.sh).

#[path = "support/node.rs"]
mod node;
#[path = "support/podman.rs"]
mod podman;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use podman::{Podman, text};
use testbed::{Etcd, Garage};

const TAG: &str = "localhost/tusk:cluster";
const SCOPE: &str = "superman";
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// Short timings for the test; synchronous mode: no acknowledged write may
/// be lost by any fault.
const TEST_DCS: &str = r#"{"ttl":10,"loop_wait":2,"retry_timeout":5,"synchronous_mode":true}"#;
const PG_PARAMETERS: &str = r#"{"shared_buffers":"128MB"}"#;

/// Runs a command; panics only when it cannot be started.
fn cmd(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn cmd_ok(program: &str, args: &[&str]) -> String {
    let out = cmd(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {} {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

// ------------------------------------------------------------- podman ----

/// podman with the test configuration (scripts/podman-setup.sh), set up
/// once per test binary.
fn pm() -> &'static Podman {
    static PODMAN: OnceLock<Podman> = OnceLock::new();
    PODMAN.get_or_init(Podman::setup)
}

fn podman(args: &[&str]) -> Output {
    pm().output(args)
}

fn podman_ok(args: &[&str]) -> String {
    pm().ok(args)
}

/// The image, built once per test binary from the release binary under
/// test (scripts/build-image.sh, SKIP_CARGO=1), reused while its inputs
/// (that binary among them) are the same.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = Path::new(node::tusk_bin()).parent().and_then(Path::parent).expect("target dir");
        let target = target.to_str().expect("a UTF-8 target dir");
        let mb = pm().build_tusk(TAG, &[("SKIP_CARGO", "1"), ("PGVERSION", "15"), ("CARGO_TARGET_DIR", target)]);
        eprintln!("image {TAG}: {mb} MB");
    });
    TAG
}

// ------------------------------------------------------------ network ----

/// A bridge on the machine and one network namespace per host, each with a
/// veth on the bridge and its own address. Removed on drop.
struct Net {
    bridge: String,
    prefix: String,
    hosts: Vec<(String, String, String)>, // (netns, host-side veth, address)
}

impl Net {
    fn new(n: usize) -> Net {
        let tag = format!("tk{}", std::process::id() % 100_000);
        let addrs = cmd_ok("ip", &["-4", "-o", "addr"]) + &cmd_ok("ip", &["-4", "route"]);
        let prefix = (0..50)
            .map(|k| format!("10.{}.{}", 200 + k, std::process::id() % 250))
            .find(|p| !addrs.contains(&format!("{p}.")))
            .expect("a free 10.x.y.0/24");
        let mut net = Net { bridge: format!("{tag}b"), prefix: prefix.clone(), hosts: Vec::new() };
        let ip = |args: &[&str]| cmd_ok("ip", args);
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        for i in 1..=n {
            let (ns, veth, addr) = (format!("{tag}n{i}"), format!("{tag}v{i}"), format!("{prefix}.{}", 10 + i));
            ip(&["netns", "add", &ns]);
            net.hosts.push((ns.clone(), veth.clone(), addr.clone()));
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &net.bridge, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", &format!("{prefix}.1")]);
        }
        net
    }

    fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// Cuts (or restores) host `i`'s only link: every packet to and from it.
    fn link(&self, i: usize, up: bool) {
        cmd_ok("ip", &["link", "set", &self.hosts[i].1, if up { "up" } else { "down" }]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (ns, _, _) in &self.hosts {
            let _ = cmd("ip", &["netns", "del", ns]);
        }
        let _ = cmd("ip", &["link", "del", &self.bridge]);
    }
}

// --------------------------------------------------------------- node ----

/// One host's `podman run --rm --net=host ...`, run in the foreground as
/// users do (its exit status is the container's), output to a log file.
struct Node {
    name: String,
    ctr: String,
    netns: String,
    addr: String,
    dir: tempfile::TempDir,
    conf: PathBuf,
    log: PathBuf,
    env: Vec<String>,
    certs: PathBuf,
    child: Option<Child>,
    started: Instant,
}

impl Node {
    fn new(i: usize, net: &Net, certs: &Path, env: Vec<String>) -> Node {
        let (netns, _, addr) = net.hosts[i].clone();
        let name = format!("node{}", i + 1);
        let dir = testbed::temp_dir(&format!("tusk-podman-{name}-"));
        fs::create_dir(dir.path().join("patroni")).expect("volume dir");
        // This host's /etc/hosts, which podman copies into a --net=host container.
        let hosts = dir.path().join("hosts");
        fs::write(&hosts, format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{addr}\t{name}\n")).expect("hosts");
        let conf = dir.path().join("containers.conf");
        let base = fs::read_to_string(&pm().conf).expect("containers.conf");
        let conf_text =
            base.replacen("[containers]", &format!("[containers]\nbase_hosts_file = \"{}\"", hosts.display()), 1);
        assert!(conf_text.contains("base_hosts_file"), "no [containers] table in {}", pm().conf);
        fs::write(&conf, conf_text).expect("containers.conf");
        let log = dir.path().join("podman-run.log");
        let ctr = format!("patroni-container-{}-{}", std::process::id(), i + 1);
        Node {
            name,
            ctr,
            netns,
            addr,
            dir,
            conf,
            log,
            env,
            certs: certs.to_path_buf(),
            child: None,
            started: Instant::now(),
        }
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--net=host",
            "--name",
            &self.ctr,
            "--volume",
            &format!("{}:/home/postgres/pgdata", self.dir.path().join("patroni").display()),
            "--volume",
            &format!("{}:/etc/ssl/etcd-certs", self.certs.display()),
        ]
        .map(String::from)
        .to_vec();
        for e in &self.env {
            args.extend(["--env".into(), e.clone()]);
        }
        args.push(image().to_string());
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["unshare", "--uts", "sh", "-c", r#"hostname "$0" && exec "$@""#, &self.name, "podman"])
            .args(&args)
            .env("CONTAINERS_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn podman run");
        self.started = Instant::now();
        self.child = Some(child);
    }

    /// Waits (bounded) for `podman run` to return: the container's exit status.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap_or_else(|| panic!("{} is not running", self.name));
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            assert!(t.elapsed() < limit, "podman run of {} still running {limit:?} after its stop", self.name);
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["exec", &self.ctr];
        a.extend_from_slice(args);
        podman(&a)
    }

    /// SQL through the container's own socket (works while its network is cut).
    fn local_sql(&self, sql: &str, timeout_s: u32) -> Option<String> {
        let t = timeout_s.to_string();
        let out = self.exec(&[
            "timeout",
            "-s",
            "KILL",
            &t,
            "psql",
            "-h",
            "/run/postgresql",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        out.status.success().then(|| text(&out.stdout))
    }

    /// The last `n` lines of the container's output, without PostgreSQL's
    /// per-connection lines (the writer's connections would fill it).
    fn log_tail(&self, n: usize) -> String {
        node::quiet_tail(&fs::read_to_string(&self.log).unwrap_or_default(), n)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("==== {} ({}) podman run output, tail:\n{}", self.name, self.ctr, self.log_tail(80));
        }
        let _ = podman(&["rm", "-f", "-v", "-t", "0", &self.ctr]);
        if let Some(mut c) = self.child.take() {
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // The data directory belongs to the container's postgres user: rm as root works.
    }
}

// ---------------------------------------------------------------- SQL ----

/// One statement over TCP as the superuser; `None` on any failure or after
/// `timeout_s` (the client is killed: an unanswered commit is not acknowledged).
fn sql(addr: &str, password: &str, q: &str, timeout_s: u32) -> Option<String> {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &timeout_s.to_string(), PSQL, "-XAtq", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("host={addr} port=5432 user=postgres dbname=postgres sslmode=require connect_timeout=2"))
        .args(["-c", q])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| text(&out.stdout))
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    id: u64,
    node: usize,
    at: Instant,
}

/// Inserts numbered rows into whichever member takes writes (the last one
/// that did first), recording every acknowledged number, where and when.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(addrs: Vec<String>, password: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Ack>>> = Default::default();
        let (s, a) = (stop.clone(), acks.clone());
        let thread = thread::spawn(move || {
            let (mut next, mut last) = (1u64, 0usize);
            while !s.load(Ordering::SeqCst) {
                for k in 0..addrs.len() {
                    let i = (last + k) % addrs.len();
                    if sql(&addrs[i], &password, &format!("INSERT INTO w VALUES ({next})"), 3).is_some() {
                        a.lock().expect("acks").push(Ack { id: next, node: i, at: Instant::now() });
                        last = i;
                        break;
                    }
                    next += 1;
                }
                next += 1;
                thread::sleep(Duration::from_millis(20));
            }
        });
        Writer { stop, acks, thread: Some(thread) }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks").clone()
    }

    /// Waits for the first write acknowledged by another member than `not`
    /// after `t0`; returns (member, time since t0).
    fn first_elsewhere(&self, not: usize, t0: Instant, limit: Duration) -> (usize, Duration) {
        loop {
            if let Some(a) = self.acks().iter().find(|a| a.at > t0 && a.node != not) {
                return (a.node, a.at - t0);
            }
            assert!(t0.elapsed() < limit, "no write acknowledged by another member within {limit:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until some write is acknowledged after `t0`.
    fn wait_progress(&self, t0: Instant, limit: Duration) -> Duration {
        loop {
            if let Some(a) = self.acks().iter().find(|a| a.at > t0) {
                return a.at - t0;
            }
            assert!(t0.elapsed() < limit, "no write acknowledged within {limit:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer");
        }
        self.acks()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Asks every member, every 0.5 s, whether it is a primary; records any
/// round where two said so.
struct Census {
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
    rounds: Arc<Mutex<u64>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Census {
    fn start(addrs: Vec<String>, password: String) -> Census {
        let stop = Arc::new(AtomicBool::new(false));
        let violations: Arc<Mutex<Vec<String>>> = Default::default();
        let rounds: Arc<Mutex<u64>> = Default::default();
        let (s, v, r) = (stop.clone(), violations.clone(), rounds.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let answers: Vec<Option<String>> = thread::scope(|sc| {
                    let hs: Vec<_> = addrs
                        .iter()
                        .map(|a| {
                            let p = &password;
                            sc.spawn(move || sql(a, p, "SELECT pg_is_in_recovery()", 3))
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap_or(None)).collect()
                });
                let primaries: Vec<usize> =
                    answers.iter().enumerate().filter(|(_, a)| a.as_deref() == Some("f")).map(|(i, _)| i + 1).collect();
                if primaries.len() > 1 {
                    v.lock().expect("census").push(format!("nodes {primaries:?} were primaries in the same round"));
                }
                *r.lock().expect("rounds") += 1;
                thread::sleep(Duration::from_millis(500));
            }
        });
        Census { stop, violations, rounds, thread: Some(thread) }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (*self.rounds.lock().expect("rounds"), self.violations.lock().expect("census").clone())
    }
}

impl Drop for Census {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------ cluster ----

/// The test bed and the three hosts. Field order is drop order: the
/// containers go before etcd, garage and the namespaces.
struct Bed {
    nodes: Vec<Node>,
    garage: Garage,
    etcd: Etcd,
    _certs: tempfile::TempDir,
    _etcd_dir: tempfile::TempDir,
    _garage_dir: tempfile::TempDir,
    net: Net,
    password: OnceLock<String>,
}

impl Bed {
    /// Network, etcd, garage and three (not yet started) nodes with the
    /// given extra environment (`TUSK_BOOTSTRAP_DCS`, ...).
    fn new(extra_env: &[String], with_s3: bool) -> Bed {
        node::require_root();
        let net = Net::new(3);
        let gw = net.gateway();
        let etcd_dir = testbed::temp_dir("tusk-podman-etcd-");
        let etcd = Etcd::start_cluster_on(etcd_dir.path(), &gw);
        let garage_dir = testbed::temp_dir("tusk-podman-garage-");
        let garage = Garage::start_on(garage_dir.path(), "tusk-cluster", &gw);
        // The users' /etc/ssl/etcd-certs with its file names.
        let certs = testbed::temp_dir("tusk-podman-certs-");
        for (from, to) in [(&etcd.ca, "ca.pem"), (&etcd.cert, "client-cert.pem"), (&etcd.key, "client-cert-key.pem")] {
            fs::copy(from, certs.path().join(to)).expect("copy cert");
        }
        let mut env: Vec<String> = vec![
            format!("SCOPE={SCOPE}"),
            "PGVERSION=15".into(),
            "ETCD3_PROTOCOL=https".into(),
            format!("ETCD3_HOSTS={}", etcd.endpoints.join(",")),
            "ETCD3_CACERT=/etc/ssl/etcd-certs/ca.pem".into(),
            "ETCD3_CERT=/etc/ssl/etcd-certs/client-cert.pem".into(),
            "ETCD3_KEY=/etc/ssl/etcd-certs/client-cert-key.pem".into(),
            format!("TUSK_PG_PARAMETERS={PG_PARAMETERS}"),
        ];
        if with_s3 {
            let g = garage.env();
            env.push(format!("WAL_S3_BUCKET={}", garage.bucket));
            for k in
                ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT", "AWS_S3_FORCE_PATH_STYLE"]
            {
                env.push(format!("{k}={}", g[k]));
            }
        }
        env.extend(extra_env.iter().cloned());
        let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(i, &net, certs.path(), env.clone())).collect();
        // Spilo's other form of the list: quoted hosts (node3 only, so
        // that both forms serve the same cluster).
        let quoted: Vec<String> = etcd.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        for e in &mut nodes[2].env {
            if e.starts_with("ETCD3_HOSTS=") {
                *e = format!("ETCD3_HOSTS={}", quoted.join(","));
            }
        }
        Bed {
            nodes,
            garage,
            etcd,
            _certs: certs,
            _etcd_dir: etcd_dir,
            _garage_dir: garage_dir,
            net,
            password: OnceLock::new(),
        }
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn etcd_get(&self, key: &str) -> Option<String> {
        let out = self.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{SCOPE}/{key}")]);
        let v = text(&out.stdout);
        (out.status.success() && !v.is_empty()).then_some(v)
    }

    /// The superuser's password tusk generated and shared in etcd (the
    /// command sets none; etcd authenticates its clients).
    fn password(&self) -> String {
        self.password
            .get_or_init(|| {
                let t = Instant::now();
                loop {
                    if let Some(v) = self.etcd_get("tusk/credentials") {
                        let j: serde_json::Value = serde_json::from_str(&v).expect("credentials json");
                        if let Some(p) = j["superuser"].as_str() {
                            return p.to_string();
                        }
                    }
                    assert!(t.elapsed() < Duration::from_secs(120), "no shared credentials in etcd");
                    thread::sleep(Duration::from_millis(200));
                }
            })
            .clone()
    }

    fn index(&self, member: &str) -> usize {
        self.nodes.iter().position(|n| n.name == member).unwrap_or_else(|| panic!("unknown member {member:?}"))
    }

    fn q(&self, i: usize, query: &str) -> Option<String> {
        sql(&self.nodes[i].addr, &self.password(), query, 5)
    }

    /// Waits until a leader runs as primary with both others streaming
    /// (and, when `sync`, one of them synchronous); returns its index.
    fn wait_settled(&self, limit: Duration, sync: bool, what: &str) -> usize {
        let t = Instant::now();
        let mut last = String::new();
        loop {
            if let Some(leader) = self.etcd_get("leader") {
                let i = self.index(&leader);
                let q = "SELECT (NOT pg_is_in_recovery())::text || ' ' || \
                         (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming') || ' ' || \
                         coalesce((SELECT string_agg(application_name, ',') FROM pg_stat_replication \
                                   WHERE sync_state = 'sync'), '-')";
                // In synchronous mode only the member the `sync` key names may
                // take over: settled means that key names the standby
                // PostgreSQL replicates to synchronously (tusk writes it once
                // it has seen that, as Patroni does).
                let sync_key = || {
                    let v: serde_json::Value = serde_json::from_str(&self.etcd_get("sync")?).ok()?;
                    (v["leader"] == leader.as_str()).then(|| v["sync_standby"].as_str().map(String::from)).flatten()
                };
                match self.q(i, q) {
                    Some(s) if !sync && s.starts_with("true 2 ") => return i,
                    Some(s) if s.starts_with("true 2 ") && s.len() > 7 && sync_key().as_deref() == Some(&s[7..]) => {
                        return i;
                    }
                    Some(s) => last = format!("leader {leader}: primary/streaming/sync = {s}"),
                    None => last = format!("leader {leader} does not answer"),
                }
            }
            if t.elapsed() > limit {
                // The members that did not settle first: CI keeps only the
                // start of a long failure message.
                let leader = self.etcd_get("leader").unwrap_or_default();
                let mut order: Vec<&Node> = self.nodes.iter().collect();
                order.sort_by_key(|n| n.name == leader);
                let mut logs = String::new();
                for n in order {
                    logs.push_str(&format!("==== {} ({})\n{}\n", n.name, n.ctr, n.log_tail(40)));
                }
                panic!("{what}: the cluster did not settle within {limit:?} ({last})\n{logs}");
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts the given nodes at once; returns, per node, podman run → the
    /// first answer to SQL over the network.
    fn start(&mut self, which: &[usize]) -> Vec<(usize, Duration)> {
        for &i in which {
            self.nodes[i].start();
        }
        let t = Instant::now();
        let mut ready = Vec::new();
        let mut left: Vec<usize> = which.to_vec();
        while !left.is_empty() {
            left.retain(|&i| {
                let n = &self.nodes[i];
                // Before the shared password exists, the local socket says it.
                let up = match self.password.get() {
                    Some(p) => sql(&n.addr, p, "SELECT 1", 3).is_some(),
                    None => n.local_sql("SELECT 1", 3).is_some(),
                };
                if up {
                    ready.push((i, n.started.elapsed()));
                }
                !up
            });
            for &i in &left {
                let n = &mut self.nodes[i];
                if let Some(Some(st)) = n.child.as_mut().map(|c| c.try_wait().expect("try_wait")) {
                    panic!("podman run of {} exited with {st}:\n{}", n.name, n.log_tail(60));
                }
            }
            assert!(t.elapsed() < Duration::from_secs(180), "nodes {left:?} not ready after 180 s");
            thread::sleep(Duration::from_millis(200));
        }
        ready
    }

    /// `podman stop` (default 10 s grace) of the given nodes at once;
    /// returns (node, stop duration, exit status).
    fn stop(&mut self, which: &[usize]) -> Vec<(usize, Duration, ExitStatus)> {
        let durations: Vec<(usize, Duration)> = thread::scope(|s| {
            let hs: Vec<_> = which
                .iter()
                .map(|&i| {
                    let ctr = self.nodes[i].ctr.clone();
                    s.spawn(move || {
                        let t = Instant::now();
                        podman_ok(&["stop", &ctr]);
                        (i, t.elapsed())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("stop")).collect()
        });
        durations.into_iter().map(|(i, d)| (i, d, self.nodes[i].wait_exit(Duration::from_secs(20)))).collect()
    }

    /// The keys under the cluster's WAL prefix in the bucket.
    fn wal_objects(&self) -> BTreeSet<String> {
        let prefix = format!("spilo/{SCOPE}/wal/15/wal_005/");
        let url = format!(
            "{}/{}?list-type=2&prefix={}",
            self.garage.endpoint,
            self.garage.bucket,
            prefix.replace('/', "%2F")
        );
        let out = self.garage.curl(&[&url]);
        let body = text(&out.stdout);
        assert!(out.status.success() && body.contains("<ListBucketResult"), "list {url}: {body} {}", text(&out.stderr));
        assert!(!body.contains("<IsTruncated>true"), "more than one page of WAL objects");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(|k| k[prefix.len()..].to_string())
            .collect()
    }
}

fn segno(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').expect("lsn");
    ((u64::from_str_radix(hi, 16).expect("lsn") << 32) | u64::from_str_radix(lo, 16).expect("lsn")) >> 24
}

fn seg_name(tli: u32, seg: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", seg >> 8, seg & 0xff)
}

/// Every segment a recovery of the leader's current timeline needs, from
/// the first, is in the bucket: each segment on the timeline that covered
/// it (the timeline history's switch points), up to the last one archived.
fn check_wal_archive(bed: &Bed, leader: usize) -> (usize, u32) {
    // Close the current segment and wait until the archiver has it.
    let cur = bed.q(leader, "SELECT pg_walfile_name(pg_current_wal_lsn())").expect("walfile");
    bed.q(leader, "SELECT pg_switch_wal()").expect("switch");
    let t = Instant::now();
    loop {
        let last = bed.q(leader, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").unwrap_or_default();
        if last.len() == 24 && last[8..] >= cur[8..] {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "segment {cur} not archived after 60 s (last: {last})");
        thread::sleep(Duration::from_millis(250));
    }
    let tli = u32::from_str_radix(&cur[..8], 16).expect("tli");
    let last_seg =
        u64::from_str_radix(&cur[8..16], 16).expect("seg") << 8 | u64::from_str_radix(&cur[16..], 16).expect("seg");
    let mut switches: Vec<(u32, u64)> = Vec::new();
    if tli > 1 {
        let history = bed.q(leader, &format!("SELECT pg_read_file('pg_wal/{tli:08X}.history')")).expect("history file");
        for line in history.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let mut f = line.split_whitespace();
            let parent: u32 = f.next().and_then(|v| v.parse().ok()).expect("history tli");
            switches.push((parent, segno(f.next().expect("history lsn"))));
        }
    }
    let objects = bed.wal_objects();
    let have = |name: &str| objects.iter().any(|o| o.split('.').next() == Some(name));
    let mut missing = Vec::new();
    for seg in 1..=last_seg {
        let on = switches.iter().find(|(_, s)| seg < *s).map_or(tli, |(t, _)| *t);
        let name = seg_name(on, seg);
        if !have(&name) {
            missing.push(name);
        }
    }
    for t in 2..=tli {
        assert!(have(&format!("{t:08X}")), "timeline history {t:08X}.history missing from the bucket: {objects:?}");
    }
    assert!(missing.is_empty(), "WAL segments missing from the bucket: {missing:?} (objects: {objects:?})");
    (last_seg as usize, tli)
}

/// Prints a finding as it happens and keeps it for the summary.
fn note(report: &mut Vec<String>, line: String) {
    eprintln!("[podman-cluster] {line}");
    report.push(line);
}

/// The whole story on one cluster; see the module comment.
#[test]
fn podman_cluster_forms_and_survives_faults() {
    node::require_root();
    let test_start = Instant::now();
    let _ = image();
    let mut bed = Bed::new(&[format!("TUSK_BOOTSTRAP_DCS={TEST_DCS}")], true);
    let mut report: Vec<String> = Vec::new();
    let mut lost_by_step: BTreeMap<String, usize> = BTreeMap::new();

    // 1. Form: the three `podman run` at once.
    let t = Instant::now();
    let ready = bed.start(&[0, 1, 2]);
    let mut leader = bed.wait_settled(Duration::from_secs(150), true, "formation");
    for (i, d) in &ready {
        note(&mut report, format!("{}: podman run -> SQL answers {d:.1?}", bed.nodes[*i].name));
    }
    note(&mut report, format!("cluster formed (leader + 2 streaming, 1 sync) {:.1?} after the runs", t.elapsed()));

    // Names and addresses as Spilo derives them: host name, its address.
    let json = {
        let out = bed.nodes[0].exec(&["patronictl", "list", "-f", "json"]);
        assert!(out.status.success(), "patronictl list: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let members: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut seen: Vec<(String, String)> = members
        .iter()
        .map(|m| (m["Member"].as_str().unwrap_or("").into(), m["Host"].as_str().unwrap_or("").into()))
        .collect();
    seen.sort();
    let want: Vec<(String, String)> = bed.nodes.iter().map(|n| (n.name.clone(), n.addr.clone())).collect();
    assert_eq!(seen, want, "members (name, host) from patronictl list: {json}");
    let table = text(&bed.nodes[1].exec(&["patronictl", "list"]).stdout);
    eprintln!("podman exec {} patronictl list:\n{table}", bed.nodes[1].ctr);
    assert!(table.contains(&format!("Cluster: {SCOPE}")), "{table}");

    let pw = bed.password();
    bed.q(leader, "CREATE TABLE w (id bigint PRIMARY KEY)").expect("create table");
    let writer = Writer::start(bed.addrs(), pw.clone());
    let census = Census::start(bed.addrs(), pw.clone());
    writer.wait_progress(Instant::now(), Duration::from_secs(20));
    let step_marks: Mutex<Vec<(String, Instant)>> = Mutex::new(vec![("formation".into(), Instant::now())]);
    let mark = |s: &str| step_marks.lock().unwrap().push((s.to_string(), Instant::now()));

    // 2. podman stop of the leader (default grace): hand-over, exit 0, rejoin.
    mark("podman stop");
    thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let ctr = bed.nodes[leader].ctr.clone();
    let stopper = thread::spawn(move || {
        let t = Instant::now();
        podman_ok(&["stop", &ctr]);
        t.elapsed()
    });
    let (new, failover) = writer.first_elsewhere(leader, t0, Duration::from_secs(60));
    let stop_took = stopper.join().expect("podman stop");
    let st = bed.nodes[leader].wait_exit(Duration::from_secs(20));
    note(
        &mut report,
        format!(
            "podman stop {} (leader): took {stop_took:.1?}, {st}; first write on {} after {failover:.1?}",
            bed.nodes[leader].name, bed.nodes[new].name
        ),
    );
    assert_eq!(
        st.code(),
        Some(0),
        "exit status of the stopped leader's container:\n{}",
        bed.nodes[leader].log_tail(40)
    );
    assert!(stop_took < Duration::from_secs(10), "podman stop took {stop_took:?}: the grace ran out");
    let old = leader;
    let t = Instant::now();
    bed.start(&[old]);
    leader = bed.wait_settled(Duration::from_secs(90), true, "rejoin after podman stop");
    note(&mut report, format!("  {} rejoined (streaming) {:.1?} after podman run", bed.nodes[old].name, t.elapsed()));

    // 3. podman kill and 4. podman rm -f of the leader.
    for (label, args) in [("podman kill", vec!["kill"]), ("podman rm -f", vec!["rm", "-f"])] {
        mark(label);
        thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut a = args.clone();
        a.push(&bed.nodes[leader].ctr);
        podman_ok(&a);
        let took = t0.elapsed();
        let (new, failover) = writer.first_elsewhere(leader, t0, Duration::from_secs(60));
        let st = bed.nodes[leader].wait_exit(Duration::from_secs(30));
        note(
            &mut report,
            format!(
                "{label} {} (leader): took {took:.1?}, podman run ended with {st}; first write on {} after {failover:.1?}",
                bed.nodes[leader].name, bed.nodes[new].name
            ),
        );
        let old = leader;
        let t = Instant::now();
        bed.start(&[old]);
        leader = bed.wait_settled(Duration::from_secs(90), true, &format!("rejoin after {label}"));
        note(&mut report, format!("  {} rejoined {:.1?} after podman run", bed.nodes[old].name, t.elapsed()));
    }

    // 5. The leader's network cut (its only link down: etcd, peers, clients).
    mark("network cut");
    thread::sleep(Duration::from_secs(1));
    let cut = leader;
    let t0 = Instant::now();
    bed.net.link(cut, false);
    // From inside the partition: the old primary must stop being one.
    let (fenced, last_primary_probe) = {
        let mut last_primary: Option<Instant> = None;
        loop {
            let probe = Instant::now();
            match bed.nodes[cut].local_sql("SELECT pg_is_in_recovery()", 3).as_deref() {
                Some("f") => last_primary = Some(probe),
                _ => break (t0.elapsed(), last_primary),
            }
            assert!(t0.elapsed() < Duration::from_secs(40), "the cut-off leader is still a primary after 40 s");
            thread::sleep(Duration::from_millis(200));
        }
    };
    let (new, failover) = writer.first_elsewhere(cut, t0, Duration::from_secs(60));
    let first_new = t0 + failover;
    if let Some(p) = last_primary_probe {
        assert!(
            p < first_new,
            "two primaries: the cut-off leader was still primary after {} took a write",
            bed.nodes[new].name
        );
    }
    // A write from inside the partition is not acknowledged.
    let inside = bed.nodes[cut].local_sql("INSERT INTO w VALUES (-1)", 5);
    assert!(inside.is_none(), "the cut-off old leader acknowledged a write");
    note(
        &mut report,
        format!(
            "network cut of {} (leader): it stopped being primary after {fenced:.1?}; first write on {} after {failover:.1?}",
            bed.nodes[cut].name, bed.nodes[new].name
        ),
    );
    let t = Instant::now();
    bed.net.link(cut, true);
    leader = bed.wait_settled(Duration::from_secs(90), true, "rejoin after the network cut");
    note(&mut report, format!("  {} rejoined {:.1?} after its link came back", bed.nodes[cut].name, t.elapsed()));

    // 6. One etcd member of three stopped (the first endpoint, where every
    // member's client starts): no failover, writes go on.
    mark("etcd member stop");
    let before = bed.etcd_get("leader");
    let t0 = Instant::now();
    let pid = bed.etcd.pid(0).expect("etcd n0 pid");
    testbed::signal(pid, "TERM");
    assert!(testbed::wait_gone(pid, Duration::from_secs(10)), "etcd n0 did not stop");
    thread::sleep(Duration::from_secs(15));
    let acks = writer.acks();
    let during: Vec<&Ack> = acks.iter().filter(|a| a.at > t0).collect();
    let max_gap = during.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default();
    assert!(during.len() > 20, "only {} writes while etcd n0 was down", during.len());
    assert!(during.iter().all(|a| a.node == leader), "the leader changed while one etcd member of three was down");
    assert_eq!(bed.etcd_get("leader"), before, "leader key changed while one etcd member was down");
    note(
        &mut report,
        format!("etcd member n0 stopped 15 s: leader kept, {} writes, longest gap {max_gap:.1?}", during.len()),
    );
    bed.etcd.restart_stopped();

    // 7. garage stopped while writing; archiving resumes when it is back.
    mark("garage stop");
    let failed_before: u64 =
        bed.q(leader, "SELECT failed_count FROM pg_stat_archiver").and_then(|s| s.parse().ok()).unwrap_or(0);
    bed.garage.stop();
    let t0 = Instant::now();
    for _ in 0..3 {
        thread::sleep(Duration::from_secs(3));
        bed.q(leader, "SELECT pg_switch_wal()").expect("switch wal while S3 is down");
    }
    let failed_after: u64 =
        bed.q(leader, "SELECT failed_count FROM pg_stat_archiver").and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(failed_after > failed_before, "archiving never failed while garage was down: was S3 really stopped?");
    let writes_during = writer.acks().iter().filter(|a| a.at > t0).count();
    assert!(writes_during > 20, "only {writes_during} writes while S3 was down");
    bed.garage.restart();
    let outage = t0.elapsed();
    let t = Instant::now();
    let (segments, tli) = check_wal_archive(&bed, leader);
    note(
        &mut report,
        format!(
            "garage stopped {outage:.1?}: {writes_during} writes, archive failures {failed_before} -> {failed_after}; \
         archive complete again {:.1?} after garage came back",
            t.elapsed()
        ),
    );
    let _ = (segments, tli);

    // 8. All three containers restarted at once.
    mark("restart all");
    let t0 = Instant::now();
    let stops = bed.stop(&[0, 1, 2]);
    for (i, d, st) in &stops {
        note(&mut report, format!("restart all: podman stop {} took {d:.1?}, {st}", bed.nodes[*i].name));
        assert_eq!(
            st.code(),
            Some(0),
            "exit status of {} on podman stop:\n{}",
            bed.nodes[*i].name,
            bed.nodes[*i].log_tail(40)
        );
    }
    let ready = bed.start(&[0, 1, 2]);
    leader = bed.wait_settled(Duration::from_secs(120), true, "restart of all three");
    let first = writer.wait_progress(Instant::now() - Duration::from_millis(1), Duration::from_secs(30));
    let _ = first;
    note(
        &mut report,
        format!(
            "restart all: cluster settled {:.1?} after the stops began (SQL answers: {})",
            t0.elapsed(),
            ready.iter().map(|(i, d)| format!("{} {d:.1?}", bed.nodes[*i].name)).collect::<Vec<_>>().join(", ")
        ),
    );
    thread::sleep(Duration::from_secs(2));

    // The end: every acknowledged write is on the leader; no WAL gap.
    let acks = writer.finish();
    let (rounds, violations) = census.finish();
    let rows: BTreeSet<u64> =
        bed.q(leader, "SELECT id FROM w").expect("read back").lines().filter_map(|l| l.trim().parse().ok()).collect();
    let marks = step_marks.into_inner().unwrap();
    let step_of = |at: Instant| marks.iter().rev().find(|(_, m)| *m <= at).map_or("?".to_string(), |(s, _)| s.clone());
    let lost: Vec<&Ack> = acks.iter().filter(|a| !rows.contains(&a.id)).collect();
    for a in &lost {
        *lost_by_step.entry(step_of(a.at)).or_default() += 1;
    }
    let (segments, tli) = check_wal_archive(&bed, leader);
    note(
        &mut report,
        format!(
            "writer: {} acknowledged writes, {} lost {lost_by_step:?}; census: {rounds} rounds, {} with two primaries",
            acks.len(),
            lost.len(),
            violations.len()
        ),
    );
    note(
        &mut report,
        format!("WAL archive: segments 1..={segments} on timeline {tli} and its parents all in the bucket"),
    );

    // Clean stop of all three.
    for (i, d, st) in bed.stop(&[0, 1, 2]) {
        note(&mut report, format!("final podman stop {}: {d:.1?}, {st}", bed.nodes[i].name));
        assert_eq!(st.code(), Some(0), "exit status of {} on the final podman stop", bed.nodes[i].name);
    }
    note(&mut report, format!("test took {:.1?}", test_start.elapsed()));
    eprintln!("---- podman cluster ----\n{}", report.join("\n"));
    assert!(violations.is_empty(), "two primaries at once: {violations:?}");
    assert!(
        lost.is_empty(),
        "acknowledged writes lost (synchronous mode): {:?}",
        lost.iter().map(|a| a.id).collect::<Vec<_>>()
    );
}

// -------------------------------------------------------------- bench ----

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn fmt_runs(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
    format!(
        "{:.2} s (min {:.2}, max {:.2}, n={})",
        median(v).as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        v.len()
    )
}

/// The memory the container's cgroup charges (`memory.current`, or cgroup
/// v1's `memory.usage_in_bytes`), in MiB.
fn container_memory_mib(n: &Node) -> Option<f64> {
    let out = n.exec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.current 2>/dev/null || cat /sys/fs/cgroup/memory/memory.usage_in_bytes",
    ]);
    text(&out.stdout).parse::<f64>().ok().map(|b| b / 1048576.0)
}

/// One cluster with the given bootstrap DCS settings (none: tusk's
/// defaults, ttl 30): formation, idle memory, then `rounds` × podman stop
/// and `rounds` × podman kill of the leader, each timed to the first write
/// acknowledged elsewhere.
fn bench_cluster(label: &str, dcs: Option<&str>, rounds: usize, stops: bool, table: &mut Vec<(String, String)>) {
    let env: Vec<String> = dcs.map(|d| format!("TUSK_BOOTSTRAP_DCS={d}")).into_iter().collect();
    let mut bed = Bed::new(&env, false);
    let t = Instant::now();
    let ready = bed.start(&[0, 1, 2]);
    let mut leader = bed.wait_settled(Duration::from_secs(180), false, "formation");
    let formed = t.elapsed();
    let mut r: Vec<Duration> = ready.iter().map(|(_, d)| *d).collect();
    table.push((format!("{label}: podman run -> SQL answers, per node"), fmt_runs(&mut r)));
    table.push((
        format!("{label}: podman run (3 at once) -> leader + 2 streaming"),
        format!("{:.2} s", formed.as_secs_f64()),
    ));
    // Idle memory: 10 s after the cluster settled, nothing running.
    thread::sleep(Duration::from_secs(10));
    let mem: Vec<String> = bed
        .nodes
        .iter()
        .map(|n| container_memory_mib(n).map_or("?".into(), |m| format!("{} {m:.0} MiB", n.name)))
        .collect();
    table.push((format!("{label}: container memory at idle (cgroup)"), mem.join(", ")));

    bed.q(leader, "CREATE TABLE w (id bigint PRIMARY KEY)").expect("create table");
    let writer = Writer::start(bed.addrs(), bed.password());
    writer.wait_progress(Instant::now(), Duration::from_secs(20));
    let (mut stop_times, mut stop_durations, mut kill_times) = (Vec::new(), Vec::new(), Vec::new());
    let faults: Vec<&str> = if stops { vec!["stop", "kill"] } else { vec!["kill"] };
    for fault in faults {
        for _ in 0..rounds {
            thread::sleep(Duration::from_secs(2));
            let t0 = Instant::now();
            let ctr = bed.nodes[leader].ctr.clone();
            let f = fault.to_string();
            let h = thread::spawn(move || {
                let t = Instant::now();
                podman_ok(&[&f, &ctr]);
                t.elapsed()
            });
            let (_, failover) = writer.first_elsewhere(leader, t0, Duration::from_secs(120));
            let took = h.join().expect("podman");
            let st = bed.nodes[leader].wait_exit(Duration::from_secs(30));
            if fault == "stop" {
                assert_eq!(st.code(), Some(0), "podman stop exit status");
                stop_times.push(failover);
                stop_durations.push(took);
            } else {
                kill_times.push(failover);
            }
            eprintln!(
                "[bench] {label}: podman {fault} of {}: first write elsewhere after {failover:.2?}",
                bed.nodes[leader].name
            );
            let old = leader;
            bed.start(&[old]);
            leader = bed.wait_settled(Duration::from_secs(180), false, "rejoin");
        }
    }
    let acks = writer.finish();
    let rows: BTreeSet<u64> =
        bed.q(leader, "SELECT id FROM w").unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost = acks.iter().filter(|a| !rows.contains(&a.id)).count();
    if stops {
        table.push((format!("{label}: podman stop of the leader: the stop itself"), fmt_runs(&mut stop_durations)));
        table.push((format!("{label}: podman stop of the leader -> first write elsewhere"), fmt_runs(&mut stop_times)));
    }
    table.push((format!("{label}: podman kill of the leader -> first write elsewhere"), fmt_runs(&mut kill_times)));
    table.push((
        format!("{label}: acknowledged writes lost (asynchronous replication)"),
        format!("{lost} of {}", acks.len()),
    ));
    for (_, _, st) in bed.stop(&[0, 1, 2]) {
        assert_eq!(st.code(), Some(0), "podman stop exit status");
    }
}

/// The benchmark (scripts/bench/podman.sh): image size and a pull-equivalent
/// load, then a fresh cluster with tusk's defaults (ttl 30) and one at ttl
/// 10, timed from `podman run` / `stop` / `kill` to what users see. tusk's
/// figures only: Patroni does not run as a container here.
#[test]
#[ignore = "benchmark: scripts/bench/podman.sh"]
fn bench_podman_cluster() {
    node::require_root();
    let rounds: usize = std::env::var("TUSK_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut table: Vec<(String, String)> = Vec::new();
    let tag = image();
    let size: f64 = podman_ok(&["image", "inspect", "--format", "{{.Size}}", tag]).parse().expect("size");
    table.push(("image size".into(), format!("{:.0} MB", size / 1e6)));
    // `podman save | podman load` into an empty store: what a pull costs
    // once the bytes are here.
    let store = testbed::temp_dir("tusk-podman-store-");
    let (root, runroot) = (store.path().join("root"), store.path().join("runroot"));
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"podman save "$0" | podman --root "$1" --runroot "$2" load -q"#)
        .args([tag, root.to_str().unwrap(), runroot.to_str().unwrap()])
        .env("CONTAINERS_CONF", &pm().conf)
        .output()
        .expect("save | load");
    let load = t.elapsed();
    assert!(out.status.success(), "podman save | podman load: {}", text(&out.stderr));
    table.push(("podman save | podman load (empty store)".into(), format!("{:.2} s", load.as_secs_f64())));
    let _ = Command::new("podman")
        .args(["--root", root.to_str().unwrap(), "--runroot", runroot.to_str().unwrap(), "system", "reset", "-f"])
        .env("CONTAINERS_CONF", &pm().conf)
        .output();

    bench_cluster("ttl 30 (defaults)", None, rounds, true, &mut table);
    bench_cluster("ttl 10", Some(r#"{"ttl":10,"loop_wait":2,"retry_timeout":5}"#), rounds, false, &mut table);

    let w = table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\ntusk under podman, 3 nodes (--net=host in per-node network namespaces); Patroni not measured here");
    println!("{:w$}  tusk", "measure");
    println!("{}  {}", "-".repeat(w), "-".repeat(40));
    for (k, v) in &table {
        println!("{k:w$}  {v}");
    }
}
