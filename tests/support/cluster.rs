//! A cluster of tusk nodes on loopback against a real etcd with mutual TLS
//! (moved here from `tests/ha.rs` so that other tests start clusters the
//! same way). Include after `node` and `testbed`:
//! `#[path = "support/cluster.rs"] mod cluster;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::node::{self, Node, PG_BIN, test_dir};
use crate::testbed::Etcd;

pub const TTL: u64 = 10;
pub const DCS: &str = r#"{"ttl":10,"loop_wait":2,"retry_timeout":3}"#;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub scope: String,
    pub nodes: Vec<Node>,
    pub etcd: &'static Etcd,
}

impl Cluster {
    /// `n` nodes named n1..; `endpoints(i)` gives node i's ETCD3_HOSTS.
    pub fn new(name: &str, etcd: &'static Etcd, n: usize, endpoints: impl Fn(usize) -> String) -> Cluster {
        let dir = test_dir(name);
        let scope = format!("{name}-{}", std::process::id());
        let nodes = (0..n)
            .map(|i| {
                let d = dir.path().join(format!("n{}", i + 1));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
                let mut node = Node::new(&d);
                let api = node.env["APIPORT"].clone();
                let pg = node.pg_port;
                node.set("SCOPE", &scope)
                    .set("PATRONI_NAME", &format!("n{}", i + 1))
                    .set("PG_CONNECT_ADDRESS", &format!("127.0.0.1:{pg}"))
                    .set("RESTAPI_CONNECT_ADDRESS", &format!("127.0.0.1:{api}"))
                    .set("TUSK_BOOTSTRAP_DCS", DCS)
                    .set("ETCD3_HOSTS", &endpoints(i))
                    .set("ETCD3_CACERT", &etcd.ca.display().to_string())
                    .set("ETCD3_CERT", &etcd.cert.display().to_string())
                    .set("ETCD3_KEY", &etcd.key.display().to_string());
                node
            })
            .collect();
        Cluster { dir, scope, nodes, etcd }
    }

    /// The leader key's value.
    pub fn leader_key(&self) -> Option<String> {
        let out = self.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/leader", self.scope)]);
        let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!v.is_empty()).then_some(v)
    }

    pub fn index(&self, name: &str) -> usize {
        name.trim_start_matches('n').parse::<usize>().expect("node name") - 1
    }

    /// Member names, `n1`.. in order.
    pub fn names(&self) -> Vec<String> {
        (1..=self.nodes.len()).map(|i| format!("n{i}")).collect()
    }

    pub fn node(&self, name: &str) -> &Node {
        &self.nodes[self.index(name)]
    }

    /// The REST API port of a member.
    pub fn api_port(&self, name: &str) -> u16 {
        self.node(name).env["APIPORT"].parse().expect("APIPORT")
    }

    /// Waits until a leader key exists and that node runs as primary.
    pub fn wait_leader(&self, timeout: Duration, not: Option<&str>) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.leader_key().filter(|l| Some(l.as_str()) != not) {
                let n = &self.nodes[self.index(&l)];
                if try_sql(n, "SELECT pg_is_in_recovery()").as_deref() == Some("f") {
                    return l;
                }
            }
            assert!(t0.elapsed() < timeout, "no leader after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `name` streams from the leader and its REST API says so
    /// (a switchover candidate is judged by its API, which follows
    /// postgres by up to one HA round).
    pub fn wait_streaming(&self, name: &str, timeout: Duration) {
        let n = &self.nodes[self.index(name)];
        let t0 = Instant::now();
        while try_sql(n, "SELECT status FROM pg_stat_wal_receiver").as_deref() != Some("streaming") {
            assert!(t0.elapsed() < timeout, "{name} is not streaming after {timeout:?}:\n{}", n.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let st = self.api_status(name);
            if st.as_ref().is_some_and(|s| s["state"] == "running" && s["role"] == "replica") {
                return;
            }
            assert!(t0.elapsed() < timeout, "{name}'s API does not report a running replica after {timeout:?}: {st:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /patroni` of a member (over TLS with the node's own certificate
    /// when its API has one); `None` when it does not answer.
    pub fn api_status(&self, name: &str) -> Option<serde_json::Value> {
        let n = self.node(name);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "2"]);
        let url = match (n.env.get("SSL_RESTAPI_CERTIFICATE_FILE"), n.env.get("SSL_RESTAPI_PRIVATE_KEY_FILE")) {
            (Some(cert), Some(key)) => {
                cmd.args(["-k", "--cert", cert, "--key", key]);
                format!("https://127.0.0.1:{}/patroni", self.api_port(name))
            }
            _ => format!("http://127.0.0.1:{}/patroni", self.api_port(name)),
        };
        let out = cmd.arg(url).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts every node at once, waits for a leader and for every other
    /// node to stream from it; returns the leader's name.
    pub fn start_settled(&mut self, timeout: Duration) -> String {
        for n in &mut self.nodes {
            n.start();
        }
        let leader = self.wait_leader(timeout, None);
        for r in self.names().into_iter().filter(|n| n != &leader) {
            self.wait_streaming(&r, timeout);
        }
        leader
    }

    /// Runs `tusk switchover --candidate` with node 1's environment.
    pub fn switchover(&self, candidate: &str) {
        let out = Command::new(node::tusk_bin())
            .args(["switchover", "--candidate", candidate])
            .env_clear()
            .envs(&self.nodes[0].env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn patronictl_config(&self) -> PathBuf {
        let path = self.dir.path().join("patronictl.yml");
        let e = self.etcd;
        std::fs::write(
            &path,
            format!(
                "scope: {}\nnamespace: /service/\netcd3:\n  hosts: {}\n  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n",
                self.scope,
                e.endpoints.join(","),
                e.ca.display(),
                e.cert.display(),
                e.key.display()
            ),
        )
        .unwrap();
        path
    }

    pub fn patronictl_list(&self) -> Vec<serde_json::Value> {
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(self.patronictl_config())
            .args(["list", "-f", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "patronictl: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("patronictl JSON")
    }

    /// SIGKILL of the node's tusk and its postmaster together (node loss).
    pub fn kill_node(&mut self, name: &str) {
        let i = self.index(name);
        let n = &mut self.nodes[i];
        let pm = n.postmaster_pid();
        if let Some(c) = n.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.child = None;
        if let Some(pm) = pm {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pm), Signal::SIGKILL);
        }
    }
}

pub fn try_sql(n: &Node, sql: &str) -> Option<String> {
    let out = Command::new(format!("{PG_BIN}/psql"))
        .args(["-XAtq", "-h"])
        .arg(n.socket_dir())
        .args(["-p", &n.pg_port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until some node other than `not` accepts a write; returns it and the time.
pub fn first_write(c: &Cluster, not: &str, t0: Instant, timeout: Duration) -> (String, Duration) {
    loop {
        for (i, n) in c.nodes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            if name != not && try_sql(n, "INSERT INTO t VALUES (now())").is_some() {
                return (name, t0.elapsed());
            }
        }
        assert!(t0.elapsed() < timeout, "no node accepted a write within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn psql_ok(n: &Node, sql: &str) -> String {
    try_sql(n, sql).unwrap_or_else(|| panic!("{sql} failed; log:\n{}", n.log_text()))
}

/// One statement through psql on a unix socket (`None`: it failed).
pub fn sql_at(sock: &std::path::Path, port: u16, q: &str) -> Option<String> {
    let out = Command::new(format!("{PG_BIN}/psql"))
        .args(["-XAtq", "-h"])
        .arg(sock)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-c", q])
        .env("PGCONNECT_TIMEOUT", "1")
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
