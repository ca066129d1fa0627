//! Operational paths, each its own test, against the real binary, real
//! PostgreSQL and a real etcd with mutual TLS: the CLI's `pause`/`resume`
//! (and a leader crash while paused, which must not fail over), `failover`,
//! `restart` (now and scheduled) and `cancel-restart`, `reinit --force`;
//! the REST API's `POST /failover` and `PUT /config` (and the 409 of a
//! concurrent configuration write); the lease (a ttl changed at runtime, a
//! leader key on an old lease, a revoked lease); and the 503 of a full
//! operation queue.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, TTL, psql_ok, try_sql};
use node::require_root;

fn cluster(name: &str, n: usize) -> Cluster {
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    Cluster::new(name, etcd, n, |_| eps.clone())
}

/// `tusk ARGS` with the environment of node `name`: (success, stdout + stderr).
fn cli(c: &Cluster, name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(node::tusk_bin()).args(args).env_clear().envs(&c.node(name).env).output().expect("run tusk");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn cli_ok(c: &Cluster, name: &str, args: &[&str]) -> String {
    let (ok, text) = cli(c, name, args);
    assert!(ok, "tusk {args:?} on {name} failed: {text}");
    text
}

/// curl against a member's API: (HTTP status, body).
fn api(c: &Cluster, name: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    cmd.arg(format!("http://127.0.0.1:{}{path}", c.api_port(name)));
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn other(c: &Cluster, name: &str) -> String {
    c.names().into_iter().find(|n| n != name).expect("a second node")
}

fn config_value(c: &Cluster) -> serde_json::Value {
    let out = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/config", c.scope)]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn postmaster_start(c: &Cluster, name: &str) -> Option<String> {
    try_sql(c.node(name), "SELECT pg_postmaster_start_time()")
}

/// `tusk pause`: the leader crashes and, for three TTLs, nobody takes over;
/// `tusk resume`: the replica is promoted.
#[test]
fn pause_holds_a_crashed_leader_and_resume_fails_over() {
    require_root();
    let mut c = cluster("pause", 2);
    let leader = c.start_settled(Duration::from_secs(120));
    let replica = other(&c, &leader);
    cli_ok(&c, &replica, &["pause"]);
    assert_eq!(config_value(&c)["pause"], true, "pause: config in etcd");
    wait_for("both APIs to report pause", Duration::from_secs(60), || {
        c.names().iter().all(|n| c.api_status(n).is_some_and(|s| s["pause"] == true)).then_some(())
    });

    c.kill_node(&leader);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(TTL * 3) {
        assert_eq!(
            try_sql(c.node(&replica), "SELECT pg_is_in_recovery()").as_deref(),
            Some("t"),
            "paused: {replica} was promoted {:?} after the leader crashed",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = c.node(&replica).log_text();
    assert!(!log.contains("promot"), "paused: {replica} promoted:\n{log}");

    cli_ok(&c, &replica, &["resume"]);
    let cfg = config_value(&c);
    assert!(cfg.is_object() && cfg["pause"] != true, "resume: config in etcd: {cfg}");
    let new = c.wait_leader(Duration::from_secs(120), None);
    assert_eq!(new, replica, "resume: the surviving replica leads");
}

/// `tusk failover --candidate`: the candidate leads, the old leader follows it.
#[test]
fn cli_failover_to_a_candidate() {
    require_root();
    let mut c = cluster("clifail", 2);
    let leader = c.start_settled(Duration::from_secs(120));
    let candidate = other(&c, &leader);
    cli_ok(&c, &leader, &["failover", "--candidate", &candidate]);
    assert_eq!(c.wait_leader(Duration::from_secs(120), Some(&leader)), candidate, "failover: new leader");
    c.wait_streaming(&leader, Duration::from_secs(120));
    // An unknown candidate is refused.
    let (ok, text) = cli(&c, &leader, &["failover", "--candidate", "nosuchnode"]);
    assert!(!ok, "failover to an unknown member succeeded: {text}");
    assert_eq!(c.leader_key().as_deref(), Some(candidate.as_str()), "a refused failover moved the leader");
}

/// `POST /failover` with a candidate: the candidate leads.
#[test]
fn api_failover_to_a_candidate() {
    require_root();
    let mut c = cluster("apifail", 2);
    let leader = c.start_settled(Duration::from_secs(120));
    let candidate = other(&c, &leader);
    let (code, body) = api(&c, &leader, "POST", "/failover", Some(&format!("{{\"candidate\":\"{candidate}\"}}")));
    assert_eq!(code, 200, "POST /failover: {body}");
    assert_eq!(c.wait_leader(Duration::from_secs(120), Some(&leader)), candidate, "POST /failover: new leader");
    c.wait_streaming(&leader, Duration::from_secs(120));
    let (code, body) = api(&c, &leader, "POST", "/failover", Some("{\"candidate\":\"nosuchnode\"}"));
    assert!((400..500).contains(&code), "POST /failover to an unknown member: {code} {body}");
}

/// `tusk restart` restarts the local postgres now; `--scheduled` records a
/// restart that `cancel-restart` removes (the postmaster keeps running);
/// a scheduled restart a few seconds ahead happens.
#[test]
fn cli_restart_now_scheduled_and_cancelled() {
    require_root();
    let mut c = cluster("restart", 1);
    c.start_settled(Duration::from_secs(120));
    let t1 = postmaster_start(&c, "n1").expect("postgres answers");
    cli_ok(&c, "n1", &["restart"]);
    let t2 = wait_for("a restarted postmaster", Duration::from_secs(120), || {
        postmaster_start(&c, "n1").filter(|t| *t != t1)
    });

    // Scheduled an hour ahead, then cancelled: no restart.
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    cli_ok(&c, "n1", &["restart", "--scheduled", &later]);
    wait_for("the scheduled restart in /patroni", Duration::from_secs(30), || {
        c.api_status("n1").filter(|s| !s["scheduled_restart"].is_null())
    });
    cli_ok(&c, "n1", &["cancel-restart"]);
    wait_for("no scheduled restart in /patroni", Duration::from_secs(30), || {
        c.api_status("n1").filter(|s| s["scheduled_restart"].is_null())
    });
    assert_eq!(postmaster_start(&c, "n1").as_deref(), Some(t2.as_str()), "a cancelled restart restarted postgres");

    // Scheduled 5 s ahead: it happens.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(5))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    cli_ok(&c, "n1", &["restart", "--scheduled", &soon]);
    wait_for("the scheduled restart", Duration::from_secs(120), || postmaster_start(&c, "n1").filter(|t| *t != t2));
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// `tusk reinit --force` on a replica: its data is removed and cloned again
/// from the leader; it streams again.
#[test]
fn cli_reinit_force_reclones_a_replica() {
    require_root();
    let mut c = cluster("reinit", 2);
    let leader = c.start_settled(Duration::from_secs(120));
    let replica = other(&c, &leader);
    let marker = c.node(&replica).data().join("marker-before-reinit");
    std::fs::write(&marker, "x").expect("marker");
    let clones = c.node(&replica).log_text().matches("replica created with pg_basebackup").count();
    cli_ok(&c, &replica, &["reinit", "--force"]);
    let ri = c.index(&replica);
    c.nodes[ri].wait_log("replica created with pg_basebackup", clones + 1, Duration::from_secs(180));
    c.wait_streaming(&replica, Duration::from_secs(120));
    assert!(!marker.exists(), "reinit kept the old data directory");
    psql_ok(c.node(&leader), "CREATE TABLE after_reinit AS SELECT 1 AS v");
    wait_for("the replica to replay a new table", Duration::from_secs(60), || {
        (try_sql(c.node(&replica), "SELECT v FROM after_reinit").as_deref() == Some("1")).then_some(())
    });
    // On the leader, reinit is refused.
    let (ok, text) = cli(&c, &leader, &["reinit", "--force"]);
    assert!(!ok, "reinit of the leader succeeded: {text}");
}

/// `PUT /config` replaces the dynamic configuration; PATCHes racing each
/// other are either applied (200) or refused with 409, never lost: the
/// final configuration is one that a 200 answer returned.
#[test]
fn put_config_and_concurrent_writes() {
    require_root();
    let mut c = cluster("putconf", 1);
    c.start_settled(Duration::from_secs(120));
    let body = r#"{"ttl":10,"loop_wait":2,"retry_timeout":3,"postgresql":{"parameters":{"work_mem":"5MB"}}}"#;
    let (code, text) = api(&c, "n1", "PUT", "/config", Some(body));
    assert_eq!(code, 200, "PUT /config: {text}");
    let cfg = config_value(&c);
    assert_eq!(cfg["postgresql"]["parameters"]["work_mem"], "5MB", "PUT /config: {cfg}");
    wait_for("work_mem applied", Duration::from_secs(60), || {
        (try_sql(&c.nodes[0], "SHOW work_mem").as_deref() == Some("5MB")).then_some(())
    });
    let (code, text) = api(&c, "n1", "PUT", "/config", Some(r#"{"ttl":"not a number"}"#));
    assert_eq!(code, 400, "PUT /config with a bad value: {text}");

    // Concurrent PATCHes: rounds of 8 at once until one is refused with 409.
    let port = c.api_port("n1");
    let mut conflicts = 0;
    for round in 0..30 {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    let v = format!("{}kB", 1000 + round * 10 + i);
                    let out = Command::new("curl")
                        .args(["-s", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH"])
                        .args(["-H", "Content-Type: application/json", "-d"])
                        .arg(format!(r#"{{"postgresql":{{"parameters":{{"work_mem":"{v}"}}}}}}"#))
                        .arg(format!("http://127.0.0.1:{port}/config"))
                        .output()
                        .expect("curl");
                    (String::from_utf8_lossy(&out.stdout).trim().to_owned(), v)
                })
            })
            .collect();
        let results: Vec<(String, String)> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        for (code, _) in &results {
            assert!(code == "200" || code == "409", "concurrent PATCH answered {code}: {results:?}");
        }
        let ok: Vec<&String> = results.iter().filter(|(c, _)| c == "200").map(|(_, v)| v).collect();
        assert!(!ok.is_empty(), "round {round}: no PATCH succeeded: {results:?}");
        let now = config_value(&c)["postgresql"]["parameters"]["work_mem"].as_str().unwrap_or("").to_owned();
        assert!(ok.iter().any(|v| **v == now), "round {round}: the configuration ({now}) is none of the 200s {ok:?}");
        conflicts += results.len() - ok.len();
        if conflicts > 0 {
            break;
        }
    }
    assert!(conflicts > 0, "30 rounds of 8 concurrent PATCHes and never a 409");
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// A client certificate for etcd signed by the test CA (a rotation), written
/// to `crt`/`key` (PKCS#8), with openssl as scripts/testbed/certs.sh does.
fn issue_client_cert(etcd: &testbed::Etcd, crt: &std::path::Path, key: &std::path::Path) {
    let dir = node::test_dir("newcert");
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(d).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k.pem"]);
    run(&["req", "-new", "-key", "k.pem", "-subj", "/CN=tusk-rotated", "-out", "c.csr"]);
    std::fs::write(d.join("c.ext"), "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n").expect("ext");
    let ca = etcd.ca.to_str().expect("utf-8").to_owned();
    let ca_key = etcd.ca.with_file_name("ca.key").to_str().expect("utf-8").to_owned();
    run(&[
        "x509",
        "-req",
        "-in",
        "c.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "0x5eed",
        "-days",
        "30",
        "-extfile",
        "c.ext",
        "-out",
        "c.pem",
    ]);
    std::fs::copy(d.join("c.pem"), crt).expect("install cert");
    std::fs::copy(d.join("k.pem"), key).expect("install key");
}

/// SIGHUP in HA mode re-reads the etcd client certificate: a rotated one
/// (another certificate of the same CA) is taken into use; a bad one (an
/// unrelated CA) is refused and the working connection kept: the node
/// keeps renewing its lease and leading for three TTLs.
#[test]
fn sighup_rotates_etcd_certificates_and_keeps_the_old_connection_on_bad_ones() {
    use nix::sys::signal::Signal;
    require_root();
    let mut c = cluster("sighup", 1);
    let (crt, key) = (c.dir.path().join("etcd-client.crt"), c.dir.path().join("etcd-client.key"));
    std::fs::copy(&c.etcd.cert, &crt).expect("copy cert");
    std::fs::copy(&c.etcd.key, &key).expect("copy key");
    c.nodes[0].set("ETCD3_CERT", crt.to_str().expect("utf-8")).set("ETCD3_KEY", key.to_str().expect("utf-8"));
    c.start_settled(Duration::from_secs(120));
    let reloaded = "reloaded: etcd certificates re-read";

    // Rotation: a new certificate from the same CA.
    issue_client_cert(c.etcd, &crt, &key);
    c.nodes[0].signal(Signal::SIGHUP);
    c.nodes[0].wait_log(reloaded, 1, Duration::from_secs(60));

    // Bad certificates: refused, the connection in use kept.
    std::fs::copy(&c.etcd.other_client_cert, &crt).expect("copy bad cert");
    std::fs::copy(&c.etcd.other_client_key, &key).expect("copy bad key");
    c.nodes[0].signal(Signal::SIGHUP);
    c.nodes[0].wait_log("keeping the current etcd connection", 1, Duration::from_secs(60));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(TTL * 3) {
        assert_eq!(c.leader_key().as_deref(), Some("n1"), "bad certificates: the leader key was lost");
        assert_eq!(
            try_sql(&c.nodes[0], "SELECT pg_is_in_recovery()").as_deref(),
            Some("f"),
            "bad certificates: demoted"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = c.nodes[0].log_text();
    assert_eq!(log.matches(reloaded).count(), 1, "the bad certificates were taken into use:\n{log}");
    assert!(!log.contains("fencing"), "bad certificates: the leader fenced itself:\n{log}");
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// A switchover scheduled an hour ahead (`POST /switchover` with
/// `scheduled_at`) shows in `/cluster`; `DELETE /switchover` cancels it and
/// the leader stays; a second DELETE finds nothing (404).
#[test]
fn scheduled_switchover_is_cancelled() {
    require_root();
    let mut c = cluster("schedcancel", 2);
    let leader = c.start_settled(Duration::from_secs(120));
    let candidate = other(&c, &leader);
    let at = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let body = format!(r#"{{"leader":"{leader}","candidate":"{candidate}","scheduled_at":"{at}"}}"#);
    let (code, text) = api(&c, &leader, "POST", "/switchover", Some(&body));
    assert_eq!(code, 202, "scheduling: {text}");
    let (code, text) = api(&c, &candidate, "GET", "/cluster", None);
    assert_eq!(code, 200);
    let cluster: serde_json::Value = serde_json::from_str(&text).expect("/cluster JSON");
    assert!(cluster["scheduled_switchover"]["at"].is_string(), "scheduled: {cluster}");
    let (code, text) = api(&c, &candidate, "DELETE", "/switchover", None);
    assert_eq!(code, 200, "cancelling: {text}");
    let (_, text) = api(&c, &leader, "GET", "/cluster", None);
    let cluster: serde_json::Value = serde_json::from_str(&text).expect("/cluster JSON");
    assert!(cluster["scheduled_switchover"].is_null(), "cancelled: {cluster}");
    let (code, text) = api(&c, &leader, "DELETE", "/switchover", None);
    assert_eq!(code, 404, "second cancel: {text}");
    // Nothing happens for a few loops: the leader stays.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(c.leader_key().as_deref(), Some(leader.as_str()), "cancelled: the leader changed");
    assert_eq!(try_sql(c.node(&leader), "SELECT pg_is_in_recovery()").as_deref(), Some("f"));
}

/// The lease of a key under the cluster's scope (None when the key is absent
/// or on no lease).
fn key_lease(c: &Cluster, key: &str) -> Option<i64> {
    let out = c.etcd.etcdctl(&["get", "-w", "json", &format!("/service/{}/{key}", c.scope)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["kvs"][0]["lease"].as_i64().filter(|l| *l != 0)
}

/// The TTL a lease was granted with (None when it is gone).
fn granted_ttl(c: &Cluster, lease: i64) -> Option<i64> {
    let out = c.etcd.etcdctl(&["lease", "timetolive", &format!("{lease:x}"), "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // etcdctl reports a gone lease as ttl -1.
    (v["ttl"].as_i64()? > 0).then(|| v["grantedTTL"].as_i64().or(v["granted-ttl"].as_i64())).flatten()
}

/// Both keys of `name` on one lease: that lease.
fn shared_lease(c: &Cluster, name: &str) -> Option<i64> {
    let (l, m) = (key_lease(c, "leader")?, key_lease(c, &format!("members/{name}"))?);
    (c.leader_key().as_deref() == Some(name) && l == m).then_some(l)
}

/// The lease under the keys: a ttl changed in `config` moves the member and
/// leader keys to a lease of the new TTL; a leader key with this node's name
/// found on a lease that is not its own (an old one) is moved to its own, so
/// that the old lease's end cannot take it; a lease revoked under the node
/// is granted anew and the leader key retaken, all without a demotion or a
/// restart of PostgreSQL.
#[test]
fn lease_follows_ttl_changes_old_leases_and_revocation() {
    require_root();
    let mut c = cluster("lease", 1);
    c.start_settled(Duration::from_secs(120));
    let started = postmaster_start(&c, "n1");
    let first = wait_for("both keys on one lease", Duration::from_secs(30), || shared_lease(&c, "n1"));
    assert_eq!(granted_ttl(&c, first), Some(TTL as i64), "the bootstrap ttl");

    // ttl changed at runtime.
    let new_ttl = TTL as i64 + 7;
    let (code, text) = api(&c, "n1", "PATCH", "/config", Some(&format!(r#"{{"ttl":{new_ttl}}}"#)));
    assert_eq!(code, 200, "PATCH /config ttl: {text}");
    let second = wait_for("the keys on a lease of the new ttl", Duration::from_secs(60), || {
        shared_lease(&c, "n1").filter(|l| *l != first && granted_ttl(&c, *l) == Some(new_ttl))
    });

    // A leader key with our name on another lease (as left by an earlier run).
    let out = c.etcd.etcdctl(&["lease", "grant", "600"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let old = text
        .split_whitespace()
        .nth(1)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| panic!("lease grant: {text}"));
    let out = c.etcd.etcdctl(&["put", &format!("--lease={old:x}"), &format!("/service/{}/leader", c.scope), "n1"]);
    assert!(out.status.success(), "planting the leader key: {}", String::from_utf8_lossy(&out.stderr));
    // The put wakes the node (a watch event): it may have moved the key
    // back before anything here could look, so its log says it did.
    wait_for("the leader key moved back to the node's lease", Duration::from_secs(60), || {
        shared_lease(&c, "n1").filter(|l| *l == second)
    });
    c.nodes[0].wait_log("leader key moved to the new lease", 1, Duration::from_secs(10));
    let out = c.etcd.etcdctl(&["lease", "revoke", &format!("{old:x}")]);
    assert!(out.status.success(), "revoking the old lease: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.leader_key().as_deref(), Some("n1"), "the old lease's end took the leader key");

    // The node's own lease revoked: a new one, both keys back.
    let out = c.etcd.etcdctl(&["lease", "revoke", &format!("{second:x}")]);
    assert!(out.status.success(), "revoking the node's lease: {}", String::from_utf8_lossy(&out.stderr));
    let third = wait_for("the keys back on a new lease", Duration::from_secs(60), || {
        shared_lease(&c, "n1").filter(|l| *l != second)
    });
    assert_eq!(granted_ttl(&c, third), Some(new_ttl), "the new lease has the configured ttl");
    assert_eq!(try_sql(&c.nodes[0], "SELECT pg_is_in_recovery()").as_deref(), Some("f"), "demoted");
    assert_eq!(postmaster_start(&c, "n1"), started, "PostgreSQL was restarted");
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// Operations queue for the HA loop, at most `COMMAND_QUEUE` (16) of them:
/// while the loop is held up (its etcd frozen for a few seconds), more
/// requests are answered 503 "too many operations pending" at once rather
/// than piling up, a request that waits for its answer (`POST /restart`)
/// included; once etcd answers again the queue drains, the node still
/// leads, and a new request is accepted.
#[test]
fn a_full_operation_queue_answers_503_at_once() {
    require_root();
    let dir = node::test_dir("opsqueue-etcd");
    let etcd: &'static testbed::Etcd = Box::leak(Box::new(testbed::Etcd::start_single(dir.path())));
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("opsqueue", etcd, 1, |_| eps.clone());
    // A long ttl: the freeze below must not come near fencing.
    c.nodes[0].set("TUSK_BOOTSTRAP_DCS", r#"{"ttl":30,"loop_wait":2,"retry_timeout":10}"#);
    c.start_settled(Duration::from_secs(120));
    let pid = etcd.pid(0).expect("etcd pid");
    testbed::signal(pid, "STOP");
    // The loop is now held in an etcd call (its next iteration is at most
    // loop_wait away).
    std::thread::sleep(Duration::from_secs(3));
    let mut codes = Vec::new();
    for _ in 0..24 {
        let t0 = Instant::now();
        let (code, text) = api(&c, "n1", "POST", "/reload", None);
        assert!(t0.elapsed() < Duration::from_secs(5), "POST /reload waited {:?}", t0.elapsed());
        if code == 503 {
            assert!(text.contains("too many operations pending"), "503 says why: {text}");
        } else {
            assert_eq!(code, 202, "POST /reload: {text}");
        }
        codes.push(code);
    }
    let t0 = Instant::now();
    let (restart_code, restart_text) = api(&c, "n1", "POST", "/restart", Some("{}"));
    let restart_took = t0.elapsed();
    testbed::signal(pid, "CONT");
    let accepted = codes.iter().filter(|c| **c == 202).count();
    eprintln!("while the loop was held: {accepted} accepted, {} refused", codes.len() - accepted);
    assert!(accepted <= 17, "more requests queued than the queue holds: {codes:?}");
    assert!(codes.ends_with(&[503; 7]), "a full queue refuses at once: {codes:?}");
    assert_eq!(restart_code, 503, "POST /restart on a full queue: {restart_text}");
    assert!(restart_text.contains("too many operations pending"), "503 says why: {restart_text}");
    assert!(restart_took < Duration::from_secs(5), "POST /restart waited {restart_took:?} on a full queue");

    // Drained: accepted again, still the leader, not fenced.
    wait_for("a reload accepted again", Duration::from_secs(90), || {
        (api(&c, "n1", "POST", "/reload", None).0 == 202).then_some(())
    });
    wait_for("the leader key", Duration::from_secs(60), || (c.leader_key().as_deref() == Some("n1")).then_some(()));
    assert_eq!(try_sql(&c.nodes[0], "SELECT pg_is_in_recovery()").as_deref(), Some("f"), "demoted");
    let log = c.nodes[0].log_text();
    assert!(!log.contains("fencing"), "the freeze fenced the primary:\n{log}");
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
    etcd.stop();
}

/// A member whose postgres exits during every start-up (here a parameter
/// it rejects) is started again after 1 s, 2 s, 4 s, ... (at most a
/// minute), not in a loop; the leader is unaffected.
#[test]
fn a_postgres_that_cannot_start_is_retried_with_backoff() {
    require_root();
    let mut c = cluster("startloop", 2);
    c.nodes[1].set("TUSK_PG_PARAMETERS", r#"{"shared_buffers":"32MB","max_connections":"30","work_mem":"plenty"}"#);
    c.nodes[0].start();
    c.wait_leader(Duration::from_secs(120), None);
    c.nodes[1].start();
    c.nodes[1].wait_log("postgres exited during start-up", 1, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(20));
    let log = c.nodes[1].log_text();
    let starts = log.matches("postgres exited during start-up").count();
    // 1 + 2 + 4 + 8 s of backoff (and loop_wait 2 s between rounds) fit
    // about five attempts in 20 s; a loop would make hundreds.
    assert!((2..=7).contains(&starts), "{starts} failed start-ups in 20 s:\n{log}");
    assert!(log.contains("work_mem"), "postgres's reason is in the log:\n{log}");
    assert_eq!(c.leader_key().as_deref(), Some("n1"));
    assert_eq!(try_sql(&c.nodes[0], "SELECT pg_is_in_recovery()").as_deref(), Some("f"));
    c.nodes[1].stop_cleanly(Duration::from_secs(60));
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// Member tags: a replica tagged `TUSK_NOFAILOVER` shows the tag in its
/// member key and `/patroni`, is refused as a switchover candidate, and
/// never takes the leader key when the leader dies (the cluster waits for
/// the leader to come back); `TUSK_NOLOADBALANCE` takes it out of `/replica`
/// and `/read-only` (503, as Patroni's rule is) while `/health` stays 200.
#[test]
fn nofailover_and_noloadbalance_tags() {
    require_root();
    let mut c = cluster("tags", 2);
    c.nodes[1].set("TUSK_NOFAILOVER", "true").set("TUSK_NOLOADBALANCE", "true");
    c.nodes[0].start();
    c.wait_leader(Duration::from_secs(120), None);
    c.nodes[1].start();
    c.wait_streaming("n2", Duration::from_secs(120));
    let member = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/members/n2", c.scope)]);
    let member: serde_json::Value = serde_json::from_slice(&member.stdout).expect("member JSON");
    assert_eq!(member["tags"], serde_json::json!({"nofailover": true, "noloadbalance": true}), "{member}");
    let (_, body) = api(&c, "n2", "GET", "/patroni", None);
    let status: serde_json::Value = serde_json::from_str(&body).expect("/patroni JSON");
    assert_eq!(status["tags"]["nofailover"], true, "{status}");
    assert_eq!(api(&c, "n2", "GET", "/replica", None).0, 503, "noloadbalance: out of /replica");
    assert_eq!(
        api(&c, "n2", "GET", "/read-only", None).0,
        503,
        "noloadbalance: out of /read-only too (Patroni's rule)"
    );
    assert_eq!(api(&c, "n2", "GET", "/health", None).0, 200, "but healthy");
    // Not a switchover candidate.
    let (code, text) = api(&c, "n1", "POST", "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#));
    assert_ne!(code, 200, "switchover to a nofailover member: {text}");
    assert_eq!(c.leader_key().as_deref(), Some("n1"));
    // The leader dies: nobody takes over.
    c.kill_node("n1");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(TTL * 3) {
        assert_ne!(c.leader_key().as_deref(), Some("n2"), "the nofailover member took the leader key");
        assert_eq!(try_sql(&c.nodes[1], "SELECT pg_is_in_recovery()").as_deref(), Some("t"), "promoted");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(c.nodes[1].log_text().contains("tagged nofailover"), "the reason is logged");
    // The leader comes back and leads again; the tagged member follows.
    c.nodes[0].start();
    assert_eq!(c.wait_leader(Duration::from_secs(120), None), "n1");
    c.wait_streaming("n2", Duration::from_secs(120));
    c.nodes[1].stop_cleanly(Duration::from_secs(60));
    c.nodes[0].stop_cleanly(Duration::from_secs(60));
}

/// Postgres SIGKILLed on the leader (tusk survives) is restarted in place:
/// same leader, same timeline. When it cannot start at all, the leader key
/// is released at once (tusk still renews its lease, so without the
/// release the key would never move) and the replica takes over; once
/// postgres can start again the old leader rejoins as a replica.
#[test]
fn a_crashed_primary_restarts_in_place_and_one_that_cannot_start_lets_go() {
    require_root();
    let mut c = cluster("startfail", 2);
    let leader = c.start_settled(Duration::from_secs(120));
    let replica = c.names().into_iter().find(|n| n != &leader).expect("a replica");
    c.wait_streaming(&replica, Duration::from_secs(60));
    let li = c.index(&leader);
    let timeline = psql_ok(&c.nodes[li], "SELECT timeline_id FROM pg_control_checkpoint()");

    // A crash: restarted in place.
    let pm = c.nodes[li].postmaster_pid().expect("postmaster");
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pm), nix::sys::signal::Signal::SIGKILL).expect("kill");
    loop {
        let back = c.nodes[li].postmaster_pid().is_some_and(|p| p != pm)
            && try_sql(&c.nodes[li], "SELECT pg_is_in_recovery()").as_deref() == Some("f");
        if back {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "postgres not restarted in place:\n{}", c.nodes[li].log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("crashed postgres back as primary in place after {:?}", t0.elapsed());
    assert_eq!(c.leader_key().as_deref(), Some(leader.as_str()), "still the leader");
    assert_eq!(psql_ok(&c.nodes[li], "SELECT timeline_id FROM pg_control_checkpoint()"), timeline, "no failover");
    c.wait_streaming(&replica, Duration::from_secs(60));

    // A postgres that cannot start: the key goes to the replica.
    let conf = c.nodes[li].data().join("postgresql.conf");
    let original = std::fs::read_to_string(&conf).expect("postgresql.conf");
    std::fs::write(&conf, format!("{original}\nthis_is_not_a_parameter = 1\n")).expect("break postgresql.conf");
    let pm = c.nodes[li].postmaster_pid().expect("postmaster");
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pm), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let new = c.wait_leader(Duration::from_secs(60), Some(&leader));
    assert_eq!(new, replica);
    eprintln!("postgres unable to start: {new} leads after {:?} (ttl {TTL} s, never expired)", t0.elapsed());
    let log = c.nodes[li].log_text();
    assert!(log.contains("leader key released"), "the key was released, not lost:\n{log}");
    let ri = c.index(&replica);
    psql_ok(&c.nodes[ri], "CREATE TABLE after_release (id int)");

    // Fixed: the old leader rejoins as a replica.
    std::fs::write(&conf, original).expect("restore postgresql.conf");
    c.wait_streaming(&leader, Duration::from_secs(180));
    for n in [li, ri] {
        c.nodes[n].stop_cleanly(Duration::from_secs(60));
    }
}

/// `TUSK_CLONEFROM`: a new replica copies its data from the member tagged
/// `clonefrom`, not from the leader. `TUSK_FAILOVER_PRIORITY`: when the
/// leader dies and the replicas have as much WAL, the one with the higher
/// priority takes over.
#[test]
fn clonefrom_and_failover_priority_tags() {
    require_root();
    let mut c = cluster("tagsclone", 3);
    c.nodes[1].set("TUSK_CLONEFROM", "true").set("TUSK_FAILOVER_PRIORITY", "1");
    c.nodes[2].set("TUSK_FAILOVER_PRIORITY", "5");
    c.nodes[0].start();
    c.wait_leader(Duration::from_secs(120), None);
    c.nodes[1].start();
    c.wait_streaming("n2", Duration::from_secs(120));
    c.nodes[2].start();
    c.wait_streaming("n3", Duration::from_secs(120));
    let n2 = format!("127.0.0.1:{}", c.nodes[1].pg_port);
    let log = c.nodes[2].log_text();
    let cloned = log.lines().find(|l| l.contains("creating the replica with pg_basebackup")).unwrap_or_default();
    assert!(cloned.contains(&n2), "n3 copied from the clonefrom member {n2}: {cloned:?}\n{log}");
    // Idle cluster: both replicas have the leader's last WAL.
    psql_ok(&c.nodes[0], "CHECKPOINT");
    std::thread::sleep(Duration::from_secs(3));
    c.kill_node("n1");
    let new = c.wait_leader(Duration::from_secs(60), Some("n1"));
    assert_eq!(new, "n3", "the higher failover_priority takes over:\n{}", c.nodes[1].log_text());
    c.nodes[0].start();
    c.wait_streaming("n1", Duration::from_secs(120));
    for i in 0..3 {
        c.nodes[i].stop_cleanly(Duration::from_secs(60));
    }
}

/// The `replicatefrom` tag (`TUSK_REPLICATEFROM`): n3 streams from the
/// replica n2, whose slot for it lives on n2 and not on the leader; when
/// n2 stops, n3 streams from the leader.
#[test]
fn replicatefrom_cascades_from_the_named_replica() {
    require_root();
    let mut c = cluster("cascade", 3);
    c.nodes[1].set("TUSK_NOFAILOVER", "true");
    c.nodes[2].set("TUSK_NOFAILOVER", "true").set("TUSK_REPLICATEFROM", "n2");
    c.nodes[0].start();
    c.wait_leader(Duration::from_secs(120), None);
    c.nodes[1].start();
    c.wait_streaming("n2", Duration::from_secs(120));
    c.nodes[2].start();
    c.wait_streaming("n3", Duration::from_secs(120));
    let senders = |c: &Cluster, n: usize| {
        try_sql(&c.nodes[n], "SELECT string_agg(application_name, ',' ORDER BY 1) FROM pg_stat_replication")
            .unwrap_or_default()
    };
    let slots = |c: &Cluster, n: usize| {
        try_sql(&c.nodes[n], "SELECT string_agg(slot_name, ',' ORDER BY 1) FROM pg_replication_slots")
            .unwrap_or_default()
    };
    let t0 = Instant::now();
    while !(senders(&c, 1) == "n3" && senders(&c, 0) == "n2" && slots(&c, 1) == "n3" && slots(&c, 0) == "n2") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "n3 does not cascade from n2: leader sends to {:?} (slots {:?}), n2 sends to {:?} (slots {:?})\n{}",
            senders(&c, 0),
            slots(&c, 0),
            senders(&c, 1),
            slots(&c, 1),
            c.nodes[2].log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("n3 streams from n2 after {:?}", t0.elapsed());
    c.nodes[1].stop_cleanly(Duration::from_secs(60));
    let t0 = Instant::now();
    while senders(&c, 0) != "n3" {
        assert!(t0.elapsed() < Duration::from_secs(30), "n3 never fell back to the leader: {:?}", senders(&c, 0));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("n2 stopped: n3 streams from the leader after {:?}", t0.elapsed());
}
