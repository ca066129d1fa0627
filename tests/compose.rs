//! The compose example (deploy/compose/compose.yml: Patroni's docker example
//! with tusk's image) with Debian's podman-compose: three etcd, three tusk
//! members configured only through `PATRONI_*` variables, HAProxy in front
//! (`option httpchk`, `check port 8008`). Up; the cluster forms; writes
//! through HAProxy's primary port land on the leader; a switchover with
//! `patronictl` inside a member; writes through HAProxy land on the new
//! leader; every container exits 0 on `podman-compose stop` (replicas, then
//! the leader, then HAProxy and etcd); down.
//!
//! The test's only changes to the file: the fixed `container_name`s get a
//! per-run prefix (the file's are `demo-*`) and the published ports come from
//! HAPROXY_PRIMARY_PORT / HAPROXY_STATS_PORT, so a run never meets a user's
//! stack or another run.
//!
//! Needs root, podman, podman-compose and a reachable Debian mirror
//! (scripts/podman-setup.sh installs what is missing).

#[path = "support/podman.rs"]
mod podman;
#[path = "support/ports.rs"]
mod ports;

use podman::{Podman, bounded, is_root, repo_root, script, text};
use ports::free_port;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

const TUSK_IMAGE: &str = "localhost/tusk:compose";
const ETCD_IMAGE: &str = "localhost/tusk-etcd:compose";
const HAPROXY_IMAGE: &str = "localhost/tusk-haproxy:compose";
const MEMBERS: [&str; 3] = ["patroni1", "patroni2", "patroni3"];
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

/// One podman-compose project in a directory of its own; taken down (and
/// its network and volumes removed) however the test ends.
struct Stack {
    podman: Podman,
    dir: tempfile::TempDir,
    project: String,
    primary_port: u16,
    stats_port: u16,
}

impl Stack {
    fn new(podman: &Podman) -> Stack {
        let project = format!("tuskc{}", std::process::id());
        let dir = tempfile::Builder::new().prefix("tusk-compose-").tempdir().expect("tempdir");
        let src = repo_root().join("deploy/compose");
        let compose = std::fs::read_to_string(src.join("compose.yml")).expect("compose.yml");
        assert!(compose.contains("container_name: demo-"), "the example names its containers demo-*");
        let compose = compose.replace("container_name: demo-", &format!("container_name: {project}-"));
        std::fs::write(dir.path().join("compose.yml"), compose).expect("write compose.yml");
        std::fs::copy(src.join("haproxy.cfg"), dir.path().join("haproxy.cfg")).expect("copy haproxy.cfg");
        Stack { podman: podman.clone(), dir, project, primary_port: free_port(), stats_port: free_port() }
    }

    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    fn compose(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new("podman-compose");
        cmd.args(["-p", &self.project, "-f"])
            .arg(self.dir.path().join("compose.yml"))
            .args(args)
            .current_dir(self.dir.path())
            .env("CONTAINERS_CONF", &self.podman.conf)
            .env("TUSK_IMAGE", TUSK_IMAGE)
            .env("ETCD_IMAGE", ETCD_IMAGE)
            .env("HAPROXY_IMAGE", HAPROXY_IMAGE)
            .env("HAPROXY_PRIMARY_PORT", self.primary_port.to_string())
            .env("HAPROXY_STATS_PORT", self.stats_port.to_string());
        bounded(&mut cmd, limit)
    }

    fn compose_ok(&self, args: &[&str], limit: Duration) -> String {
        let out = self.compose(args, limit);
        assert!(
            out.status.success(),
            "podman-compose {args:?} failed ({}): {}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn ip(&self, service: &str) -> String {
        self.podman.ok(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container(service),
        ])
    }

    /// `patronictl list -f json` inside a member: (member, role, state).
    fn members(&self, from: &str) -> Option<Vec<(String, String, String)>> {
        let out = self.podman.output(&["exec", &self.container(from), "patronictl", "list", "-f", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v.iter()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    (s("Member"), s("Role"), s("State"))
                })
                .collect(),
        )
    }

    /// Waits (bounded) for one leader running and two replicas streaming;
    /// returns the leader's name.
    fn wait_formed(&self, limit: Duration, from: &str) -> String {
        let t = Instant::now();
        loop {
            let members = self.members(from).unwrap_or_default();
            let leaders: Vec<_> = members.iter().filter(|m| m.1 == "Leader" && m.2 == "running").collect();
            let streaming = members.iter().filter(|m| m.1 == "Replica" && m.2 == "streaming").count();
            if leaders.len() == 1 && streaming == 2 {
                return leaders[0].0.clone();
            }
            assert!(
                t.elapsed() < limit,
                "no cluster of a leader and two streaming replicas after {limit:?}: {members:?}"
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// A write through HAProxy's primary port: the server's address, or the error.
    fn write(&self, v: &str) -> Result<String, String> {
        let out = bounded(
            Command::new(PSQL)
                .args(["-h", "127.0.0.1", "-p", &self.primary_port.to_string(), "-U", "postgres", "-d", "postgres"])
                .args(["-v", "ON_ERROR_STOP=1", "-qAtc"])
                .arg(format!(
                    "create table if not exists compose_test (v text); \
                     insert into compose_test values ('{v}') returning host(inet_server_addr())"
                ))
                .env("PGPASSWORD", "postgres")
                .env("PGCONNECT_TIMEOUT", "3"),
            Duration::from_secs(20),
        );
        if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) }
    }

    /// Writes through HAProxy until one lands on `service` (bounded); returns the wait.
    fn wait_writes_reach(&self, service: &str, v: &str, limit: Duration) -> Duration {
        let ip = self.ip(service);
        let t = Instant::now();
        loop {
            let r = self.write(v);
            if r.as_deref() == Ok(ip.as_str()) {
                return t.elapsed();
            }
            assert!(t.elapsed() < limit, "writes through HAProxy never reached {service} ({ip}) in {limit:?}: {r:?}");
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// HAProxy's view of the members: (server, status) from the stats CSV.
    fn haproxy_servers(&self) -> Vec<(String, String)> {
        let out = bounded(
            Command::new("curl").args(["-s", "-m", "3", &format!("http://127.0.0.1:{}/;csv", self.stats_port)]),
            Duration::from_secs(10),
        );
        text(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() > 17 && f[0] == "demo" && MEMBERS.contains(&f[1])).then(|| (f[1].to_owned(), f[17].to_owned()))
            })
            .collect()
    }

    /// Waits (bounded) until HAProxy has exactly `leader` up.
    fn wait_haproxy_only(&self, leader: &str, limit: Duration) {
        let t = Instant::now();
        loop {
            let s = self.haproxy_servers();
            let up: Vec<_> = s.iter().filter(|(_, st)| st.starts_with("UP")).map(|(n, _)| n.as_str()).collect();
            if s.len() == 3 && up == [leader] {
                return;
            }
            assert!(t.elapsed() < limit, "HAProxy should have only {leader} up after {limit:?}: {s:?}");
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if thread::panicking() {
            for c in ["etcd1", "etcd2", "etcd3", "haproxy", MEMBERS[0], MEMBERS[1], MEMBERS[2]] {
                eprintln!("---- podman logs {} ----\n{}", self.container(c), self.podman.logs(&self.container(c)));
            }
        }
        let _ = self.compose(&["down", "-t", "0", "-v"], Duration::from_secs(120));
        // podman-compose 1.0.3 leaves the network, and a failed `up` may
        // leave containers it did not record: remove by label and name.
        let label = format!("label=io.podman.compose.project={}", self.project);
        let out = self.podman.output(&["ps", "-a", "-q", "--filter", &label]);
        for id in text(&out.stdout).lines() {
            let _ = self.podman.output(&["rm", "-f", "-v", "-t", "0", id]);
        }
        let out = self.podman.output(&["volume", "ls", "-q", "--filter", &label]);
        for v in text(&out.stdout).lines() {
            let _ = self.podman.output(&["volume", "rm", "-f", v]);
        }
        let _ = self.podman.output(&["network", "rm", "-f", &format!("{}_demo", self.project)]);
    }
}

fn build_images(podman: &Podman) {
    let t = Instant::now();
    let p = podman.clone();
    let tusk = thread::spawn(move || p.build_tusk(TUSK_IMAGE, &[]));
    script(
        "build-compose-images.sh",
        &[ETCD_IMAGE, HAPROXY_IMAGE],
        &[("CONTAINERS_CONF", &podman.conf)],
        Duration::from_secs(600),
    );
    let size = tusk.join().expect("tusk image build");
    eprintln!("images ready in {:?} (tusk image {size} MB)", t.elapsed());
}

#[test]
fn compose_example_cluster_behind_haproxy() {
    assert!(is_root(), "the compose test needs root (rootful podman); CI runs as root");
    assert!(Path::new(PSQL).exists(), "{PSQL} missing (scripts/install-postgres.sh)");
    let podman = Podman::setup();
    build_images(&podman);
    let stack = Stack::new(&podman);

    let t0 = Instant::now();
    stack.compose_ok(&["up", "-d"], Duration::from_secs(180));
    let up = t0.elapsed();
    for c in ["etcd1", "etcd2", "etcd3", "haproxy", MEMBERS[0], MEMBERS[1], MEMBERS[2]] {
        assert_eq!(podman.state(&stack.container(c)), "running", "{c} after up");
    }
    let leader = stack.wait_formed(Duration::from_secs(120), MEMBERS[0]);
    let formed = t0.elapsed();
    let to_leader = stack.wait_writes_reach(&leader, "before", Duration::from_secs(60));
    stack.wait_haproxy_only(&leader, Duration::from_secs(30));
    eprintln!(
        "up -d {up:?}; cluster formed (leader {leader}) {formed:?} after up; writes through HAProxy reach it \
         {:?} after up",
        formed + to_leader
    );

    // Switchover with patronictl inside a member (tusk's patronictl, the
    // REST API credentials from the container's PATRONI_RESTAPI_*).
    let candidate = MEMBERS.iter().find(|m| **m != leader).expect("a replica").to_string();
    let t1 = Instant::now();
    let out = podman.output(&[
        "exec",
        &stack.container(&candidate),
        "patronictl",
        "switchover",
        "--leader",
        &leader,
        "--candidate",
        &candidate,
        "--force",
    ]);
    assert!(out.status.success(), "patronictl switchover: {}{}", text(&out.stdout), text(&out.stderr));
    let switched = t1.elapsed();
    let to_new = stack.wait_writes_reach(&candidate, "after", Duration::from_secs(60));
    let new_leader = stack.wait_formed(Duration::from_secs(60), &leader);
    assert_eq!(new_leader, candidate, "the candidate leads after the switchover");
    stack.wait_haproxy_only(&candidate, Duration::from_secs(30));
    eprintln!(
        "switchover {leader} -> {candidate}: patronictl returned after {switched:?}; writes through HAProxy \
         reach the new leader {:?} after the command",
        switched + to_new
    );
    // Nothing written before the switchover was lost.
    let out = podman.output(&[
        "exec",
        &stack.container(&candidate),
        "psql",
        "-h",
        "/run/postgresql",
        "-U",
        "postgres",
        "-Atc",
        "select string_agg(distinct v, ',' order by v) from compose_test",
    ]);
    assert_eq!(text(&out.stdout), "after,before", "{}", text(&out.stderr));

    // A PATRONI_* variable tusk does not support, next to the example's own:
    // refused with exit 78, naming it.
    let out = podman.output(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "PATRONI_SCOPE=demo",
        "-e",
        "PATRONI_ETCD3_HOSTS='etcd1:2379'",
        "-e",
        "PATRONI_SUPERUSER_PASSWORD=postgres",
        "-e",
        "PATRONI_REPLICATION_PASSWORD=replicate",
        "-e",
        "PATRONI_REWIND_PASSWORD=rewind",
        TUSK_IMAGE,
    ]);
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "PATRONI_REWIND_PASSWORD: {log}");
    assert!(log.contains("PATRONI_REWIND_PASSWORD"), "the error names the variable: {log}");

    // Down: every container stops by itself with exit code 0 (SIGTERM, 10 s
    // before SIGKILL): the replicas, then the leader (no failover while the
    // cluster goes down), then HAProxy and etcd, as docs/compose.md says.
    // (A replica stopped just as it won the leader race after the leader's
    // stop can need more than tusk's fast-shutdown budget: docs/compose.md,
    // known issues.)
    let t2 = Instant::now();
    let replicas: Vec<&str> = MEMBERS.iter().copied().filter(|m| *m != candidate).collect();
    let mut timings = Vec::new();
    for group in [replicas, vec![candidate.as_str()], vec!["haproxy", "etcd3", "etcd2", "etcd1"]] {
        let t = Instant::now();
        let mut args = vec!["stop", "-t", "10"];
        args.extend(group.iter().copied());
        stack.compose_ok(&args, Duration::from_secs(120));
        timings.push((group.join("+"), t.elapsed()));
    }
    let stopped = t2.elapsed();
    eprintln!("stop timings: {timings:?}");
    let mut codes = Vec::new();
    for c in ["etcd1", "etcd2", "etcd3", "haproxy", MEMBERS[0], MEMBERS[1], MEMBERS[2]] {
        let name = stack.container(c);
        codes.push((c, podman.state(&name), podman.exit_code(&name)));
    }
    eprintln!("podman-compose stop took {stopped:?}: {codes:?}");
    for (c, state, code) in &codes {
        assert_eq!((state.as_str(), code.as_str()), ("exited", "0"), "{c} after podman-compose stop");
    }
    stack.compose_ok(&["down", "-v"], Duration::from_secs(120));
    let label = format!("label=io.podman.compose.project={}", stack.project);
    assert_eq!(podman.ok(&["ps", "-a", "-q", "--filter", &label]), "", "containers left after down");
}
