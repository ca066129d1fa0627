//! Debian's HAProxy in front of a 3-node tusk cluster, with the two
//! configurations users copy from Patroni setups: a `listen` on the primary
//! with `option httpchk` (HAProxy sends `OPTIONS /`) and `http-check expect
//! status 200`; and `option httpchk /primary` plus a round-robin `listen` on
//! `/replica` (and the same with `HEAD`, with `?lag=`, and `/read-only`).
//! Real SQL goes through HAProxy: writes reach the leader, reads reach the
//! replicas, and after a switchover HAProxy follows the new leader. Once
//! with a plain HTTP API (basic auth for writes), once with an HTTPS API
//! that requires client certificates (HAProxy `check-ssl ... crt`).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/haproxy.rs"]
mod haproxy;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, psql_ok};
use haproxy::{HaProxy, Server};
use node::{PG_BIN, require_root};

const PASSWORD: &str = "haproxy-test-su";

/// SQL over TCP through a HAProxy port as the superuser (md5 on loopback).
fn sql_via(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(format!("{PG_BIN}/psql"))
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=3"))
        .args(["-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The member behind a PostgreSQL port.
fn member_of(c: &Cluster, pg_port: &str) -> String {
    c.names()
        .into_iter()
        .find(|n| c.node(n).pg_port.to_string() == pg_port)
        .unwrap_or_else(|| panic!("no node on port {pg_port}"))
}

/// Inserts a row through `port`; returns (member that took it, in recovery?).
fn write_via(c: &Cluster, port: u16, tag: &str) -> Result<(String, String), String> {
    let out = sql_via(
        port,
        &format!("INSERT INTO t (via) VALUES ('{tag}') RETURNING inet_server_port(), pg_is_in_recovery()"),
    )?;
    let (p, rec) = out.split_once('|').ok_or_else(|| format!("unexpected output {out:?}"))?;
    Ok((member_of(c, p), rec.to_owned()))
}

/// Reads through `port` `n` times (one connection each); member -> count.
fn reads_via(c: &Cluster, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let out = sql_via(port, "SELECT inet_server_port(), pg_is_in_recovery(), count(*) FROM t")
            .expect("read through haproxy");
        let f: Vec<&str> = out.split('|').collect();
        assert_eq!(f[1], "t", "a read through the replica port reached a primary ({}): {out}", member_of(c, f[0]));
        *seen.entry(member_of(c, f[0])).or_default() += 1;
    }
    seen
}

/// Waits (bounded) until HAProxy's `listen` sends traffic to exactly
/// `want`, each of which passed its last check.
fn wait_up(h: &HaProxy, listen: &str, want: &[String], timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let mut want = want.to_vec();
    want.sort();
    loop {
        let up = h.up(listen);
        if up == want && h.passing(listen) == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "{listen}: UP {up:?}, expected {want:?} after {timeout:?}\n{}",
            h.status_table()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 3-node cluster with `configure` applied to every node, HAProxy (a)
/// and (b) in front of it with `server_opts` on every server line: SQL
/// through HAProxy reaches the right nodes, before and after a switchover.
fn routes_and_follows_a_switchover(name: &str, configure: impl Fn(&mut node::Node), server_opts: &str) {
    require_root();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new(name, etcd, 3, |_| eps.clone());
    for n in &mut c.nodes {
        n.set("PGPASSWORD_SUPERUSER", PASSWORD);
        configure(n);
    }
    let leader = c.start_settled(Duration::from_secs(60));
    let replicas: Vec<String> = c.names().into_iter().filter(|n| n != &leader).collect();
    let all = c.names();
    psql_ok(c.node(&leader), "CREATE TABLE t (id serial PRIMARY KEY, via text)");
    let servers: Vec<Server> = c
        .names()
        .iter()
        .map(|n| Server { name: n.clone(), pg_port: c.node(n).pg_port, api_port: c.api_port(n) })
        .collect();

    // (a) `option httpchk` (OPTIONS /) on the primary.
    let a = HaProxy::start_with(&format!("{name}-a"), &[("primary", "", false)], &servers, server_opts);
    // (b) `option httpchk /primary` and a round-robin `/replica`; the same
    // with HEAD; replicas with a lag limit; `/read-only` (all running nodes).
    let b = HaProxy::start_with(
        &format!("{name}-b"),
        &[
            ("primary", "/primary", false),
            ("replicas", "/replica", true),
            ("primary_head", "HEAD /primary", false),
            ("replicas_head", "HEAD /replica", true),
            ("replicas_lag", "OPTIONS /replica?lag=10MB", true),
            ("read_only", "/read-only", true),
        ],
        &servers,
        server_opts,
    );
    let limit = Duration::from_secs(15);
    wait_up(&a, "primary", std::slice::from_ref(&leader), limit);
    for l in ["primary", "primary_head"] {
        wait_up(&b, l, std::slice::from_ref(&leader), limit);
    }
    for l in ["replicas", "replicas_head", "replicas_lag"] {
        wait_up(&b, l, &replicas, limit);
    }
    wait_up(&b, "read_only", &all, limit);

    // Writes through every primary port reach the leader, and the row is there.
    for (h, listen) in [(&a, "primary"), (&b, "primary"), (&b, "primary_head")] {
        let tag = format!("{}-{listen}", h.port(listen));
        let (member, in_recovery) = write_via(&c, h.port(listen), &tag).expect("write through haproxy");
        assert_eq!((member.as_str(), in_recovery.as_str()), (leader.as_str(), "f"), "write through {listen}");
        assert_eq!(psql_ok(c.node(&leader), &format!("SELECT count(*) FROM t WHERE via = '{tag}'")), "1");
    }
    // Reads through the replica ports reach both replicas, round robin.
    for listen in ["replicas", "replicas_head", "replicas_lag"] {
        let seen = reads_via(&c, b.port(listen), 6);
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), replicas, "{listen}: {seen:?}\n{}", b.status_table());
        assert!(seen.values().all(|&k| k == 3), "{listen}: not round robin: {seen:?}");
    }

    // Switchover: HAProxy follows. Poll writes until they land on the candidate.
    let candidate = replicas[0].clone();
    let t0 = Instant::now();
    c.switchover(&candidate);
    let deadline = Duration::from_secs(30);
    for (h, listen) in [(&a, "primary"), (&b, "primary"), (&b, "primary_head")] {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match write_via(&c, h.port(listen), &format!("after-{listen}-{attempts}")) {
                Ok((m, rec)) if m == candidate => {
                    assert_eq!(rec, "f");
                    break;
                }
                // Before HAProxy marks the old leader down (fall 2), a write
                // may still reach it and fail (read-only) or succeed before
                // it demoted; either way it is never a replica accepting writes.
                Ok((m, rec)) => {
                    assert!(m == leader && rec == "f", "write through {listen} reached {m} (in recovery: {rec})")
                }
                Err(_) => {}
            }
            assert!(
                t0.elapsed() < deadline,
                "{listen}: writes do not reach {candidate} after {deadline:?}\n{}",
                h.status_table()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "{name}: writes through {listen} (port {}) reach {candidate} {:?} after the switchover",
            h.port(listen),
            t0.elapsed()
        );
    }
    wait_up(&a, "primary", std::slice::from_ref(&candidate), deadline);
    eprintln!("{name}: (a) primary UP = [{candidate}] {:?} after the switchover", t0.elapsed());
    for l in ["primary", "primary_head"] {
        wait_up(&b, l, std::slice::from_ref(&candidate), deadline);
    }
    // The demoted leader rejoins as a replica and HAProxy puts it back.
    let new_replicas: Vec<String> = c.names().into_iter().filter(|n| n != &candidate).collect();
    for l in ["replicas", "replicas_head", "replicas_lag"] {
        wait_up(&b, l, &new_replicas, deadline);
    }
    eprintln!("{name}: replicas UP = {new_replicas:?} {:?} after the switchover", t0.elapsed());
    wait_up(&b, "read_only", &all, deadline);
    let seen = reads_via(&c, b.port("replicas"), 4);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), new_replicas, "reads after the switchover: {seen:?}");
    // Every write acknowledged through HAProxy is on the new leader.
    let on_leader: i64 =
        psql_ok(c.node(&candidate), "SELECT count(*) FROM t WHERE via LIKE 'after-%'").parse().unwrap();
    assert!(on_leader >= 3, "the writes after the switchover are on {candidate}: {on_leader}");
}

/// Plain HTTP API with basic auth for writes (health checks stay open; the
/// switchover goes through the leader's API with the credentials).
#[test]
fn haproxy_routes_to_leader_and_replicas_and_follows_a_switchover() {
    routes_and_follows_a_switchover(
        "haproxy",
        |n| {
            n.set("PATRONI_RESTAPI_USERNAME", "api-admin").set("PATRONI_RESTAPI_PASSWORD", "api-secret");
        },
        "",
    );
}

/// HTTPS API that requires client certificates (`verify_client: required`):
/// HAProxy checks with `check-ssl`, verifying the API's certificate and
/// presenting its own.
#[test]
fn haproxy_checks_an_https_api_with_client_certificates() {
    let e = testbed::shared_etcd();
    let certs = e.ca.parent().unwrap().to_owned();
    let pem_dir = testbed::temp_dir("tusk-haproxy-pem-");
    let pem = pem_dir.path().join("client.pem");
    let mut both = std::fs::read(&e.cert).unwrap();
    both.extend(std::fs::read(&e.key).unwrap());
    std::fs::write(&pem, both).unwrap();
    routes_and_follows_a_switchover(
        "haproxytls",
        |n| {
            n.set("SSL_RESTAPI_CERTIFICATE_FILE", &certs.join("server.crt").display().to_string())
                .set("SSL_RESTAPI_PRIVATE_KEY_FILE", &certs.join("server.key").display().to_string())
                .set("SSL_RESTAPI_CA_FILE", &e.ca.display().to_string())
                .set("PATRONI_RESTAPI_VERIFY_CLIENT", "required")
                .set("PATRONI_RESTAPI_USERNAME", "api-admin")
                .set("PATRONI_RESTAPI_PASSWORD", "api-secret");
        },
        &format!("check-ssl verify required ca-file {} crt {}", e.ca.display(), pem.display()),
    );
}
