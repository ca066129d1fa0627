//! The REST API against the real binary: health endpoints and their
//! status-only forms, `/metrics`, basic auth, TLS with client certificates,
//! malformed and oversized requests, a slow client, `tusk healthcheck`,
//! and on a 3-node cluster with real etcd (mTLS): Debian's `patronictl`
//! (list, switchover --force, restart --force), `/cluster`, `/config`
//! (PATCH with CAS), switchover checks (412), a scheduled switchover,
//! `/history` and reinitialize.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, try_sql};
use node::{Node, require_root, test_dir};

/// `curl` with `args`; returns (HTTP status, body). Status 0: no HTTP answer.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn api(node: &Node) -> String {
    format!("http://127.0.0.1:{}", node.env["APIPORT"])
}

fn wait_http(url: &str, want: u16, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let (code, body) = curl(&[url]);
        if code == want {
            return body;
        }
        assert!(t0.elapsed() < timeout, "{url}: {code} {body} after {timeout:?}, wanted {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn standalone_endpoints_auth_limits_and_healthcheck() {
    require_root();
    let dir = test_dir("api-standalone");
    let mut n = Node::new(dir.path());
    n.set("PATRONI_RESTAPI_USERNAME", "admin").set("PATRONI_RESTAPI_PASSWORD", "s3cret-api");
    n.start();
    n.wait_ready(1);
    let base = api(&n);
    wait_http(&format!("{base}/health"), 200, Duration::from_secs(10));

    // Status JSON and the health rules of a standalone primary.
    let (code, body) = curl(&[&format!("{base}/patroni")]);
    assert_eq!(code, 200);
    let s = json(&body);
    assert_eq!(s["state"], "running");
    assert_eq!(s["role"], "primary");
    assert!(s["server_version"].as_u64().unwrap_or(0) >= 150000, "{s}");
    assert!(s["xlog"]["location"].as_u64().is_some(), "{s}");
    assert!(s["postmaster_start_time"].as_str().is_some(), "{s}");
    for (path, want) in [
        ("/", 200),
        ("/primary", 200),
        ("/read-write", 200),
        ("/replica", 503),
        ("/read-only", 200),
        ("/health", 200),
        ("/liveness", 200),
        ("/readiness", 200),
        ("/nope", 503),
    ] {
        let (code, body) = curl(&[&format!("{base}{path}")]);
        assert_eq!(code, want, "GET {path}: {body}");
        assert_eq!(json(&body)["role"], "primary", "GET {path} returns the status JSON");
    }
    // HAProxy's forms: status line only.
    for (method, path, want) in
        [("OPTIONS", "/", 200), ("HEAD", "/primary", 200), ("OPTIONS", "/replica", 503), ("HEAD", "/replica", 503)]
    {
        let mut args = vec!["-X", method];
        if method == "HEAD" {
            args = vec!["-I"];
        }
        let url = format!("{base}{path}");
        args.push(&url);
        let (code, body) = curl(&args);
        assert_eq!(code, want, "{method} {path}");
        if method == "OPTIONS" {
            assert!(body.is_empty(), "{method} {path} has a body: {body}");
        }
    }
    // A bad query value: 400.
    assert_eq!(curl(&[&format!("{base}/replica?lag=lots")]).0, 400);

    // Metrics.
    let (code, body) = curl(&[&format!("{base}/metrics")]);
    assert_eq!(code, 200);
    assert!(body.contains("patroni_postgres_running{scope=\"dummy\",name=\"test-node\"} 1"), "{body}");
    assert!(body.contains("patroni_primary{scope=\"dummy\",name=\"test-node\"} 1"), "{body}");
    assert!(body.contains("# TYPE patroni_xlog_location gauge"), "{body}");

    // Write methods need the credentials; reads do not.
    let reload = format!("{base}/reload");
    let (code, _) = curl(&["-X", "POST", &reload]);
    assert_eq!(code, 401);
    let out = Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", "-X", "POST", &reload]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase().contains("www-authenticate: basic realm=\"patroni\"")
    );
    assert_eq!(curl(&["-X", "POST", "-u", "admin:wrong", &reload]).0, 401);
    assert_eq!(curl(&["-X", "POST", "-u", "other:s3cret-api", &reload]).0, 401);
    assert_eq!(curl(&["-X", "POST", "-u", "admin:s3cret-api", &reload]).0, 202);
    n.wait_log("postgres reloaded", 1, Duration::from_secs(10));

    // Bad bodies: 400, never a crash.
    let restart = format!("{base}/restart");
    for bad in [
        "{not json",
        "[1,2]",
        "\"x\"",
        "{\"role\":\"king\"}",
        "{\"schedule\":\"2020-01-01T00:00:00\"}",
        "{\"bogus\":1}",
    ] {
        let (code, body) = curl(&[
            "-X",
            "POST",
            "-u",
            "admin:s3cret-api",
            "-H",
            "Content-Type: application/json",
            "-d",
            bad,
            &restart,
        ]);
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // A scheduled time in the past: 422.
    let (code, _) =
        curl(&["-X", "POST", "-u", "admin:s3cret-api", "-d", "{\"schedule\":\"2020-01-01T00:00:00+00:00\"}", &restart]);
    assert_eq!(code, 422);
    // Operations a standalone node does not do: a clear 503.
    let (code, body) = curl(&["-X", "POST", "-u", "admin:s3cret-api", "-d", "{}", &restart]);
    assert_eq!(code, 503, "{body}");
    let (code, body) =
        curl(&["-X", "POST", "-u", "admin:s3cret-api", "-d", "{\"leader\":\"x\"}", &format!("{base}/switchover")]);
    assert_eq!(code, 503, "{body}");
    // Oversized body: refused.
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(200_000));
    let big_file = dir.path().join("big.json");
    std::fs::write(&big_file, big).unwrap();
    let (code, _) =
        curl(&["-X", "POST", "-u", "admin:s3cret-api", "--data-binary", &format!("@{}", big_file.display()), &restart]);
    assert_eq!(code, 413);
    // Oversized headers: refused.
    // Oversized headers: answered 431, or the connection closed without an
    // answer (never served, never left hanging); checked on a raw socket so
    // that a server that is simply down cannot pass for a refusal.
    {
        let port: u16 = n.env["APIPORT"].parse().unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "b".repeat(40_000));
        let _ = s.write_all(req.as_bytes()); // the server may close before reading it all
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        if let Err(e) = &r {
            assert!(
                !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "huge header: the connection was left open: {e}"
            );
        }
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 431"), "huge header got {text:?}");
    }

    // A slow client (headers never finished) is cut off, and others are served meanwhile.
    let port: u16 = n.env["APIPORT"].parse().unwrap();
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eq!(curl(&[&format!("{base}/health")]).0, 200);
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    let got = slow.read(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(15), "the slow connection was kept open");
    // Cut off: closed (EOF), reset, or answered 408 and closed; never a read timeout.
    match got {
        Ok(0) => {}
        Ok(n) => assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "slow client got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the slow connection was not cut off: {e}"
        ),
    }
    // Garbage on a raw socket: an error answer or a close, then still serving.
    let mut junk = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    junk.write_all(b"\x16\x03\x01 garbage \r\n\r\n").unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = junk.read(&mut buf);
    assert_eq!(curl(&[&format!("{base}/health")]).0, 200);

    // tusk healthcheck: healthy now, unhealthy for a failing endpoint.
    let (st, out, err) = n.run(&["healthcheck"]);
    assert!(st.success(), "healthcheck: {st:?} {out} {err}");
    let (st, out, _) = n.run(&["healthcheck", "--endpoint", "/replica"]);
    assert_eq!(st.code(), Some(1), "{out}");
    // The CLI goes through the API with the credentials from the environment.
    let (st, out, err) = n.run(&["reload"]);
    assert!(st.success(), "tusk reload: {out} {err}");

    n.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(n.wait_exit(Duration::from_secs(20)).success());
    let (st, out, _) = n.run(&["healthcheck", "--timeout", "2"]);
    assert_eq!(st.code(), Some(1), "healthcheck of a stopped node: {out}");
}

/// A CA, a server certificate for 127.0.0.1, a client certificate from the
/// CA, and one from a foreign CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let make_ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca, ca_key) = make_ca("tusk test CA");
        let (foreign, foreign_key) = make_ca("someone else");
        write("ca.pem", ca.pem());
        let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let sk = KeyPair::generate().unwrap();
        write("server.pem", sp.signed_by(&sk, &ca, &ca_key).unwrap().pem());
        write("server.key", sk.serialize_pem());
        let cp = CertificateParams::new(vec!["client".to_owned()]).unwrap();
        let ck = KeyPair::generate().unwrap();
        write("client.pem", cp.signed_by(&ck, &ca, &ca_key).unwrap().pem());
        write("client.key", ck.serialize_pem());
        let fp = CertificateParams::new(vec!["intruder".to_owned()]).unwrap();
        let fk = KeyPair::generate().unwrap();
        write("foreign.pem", fp.signed_by(&fk, &foreign, &foreign_key).unwrap().pem());
        write("foreign.key", fk.serialize_pem());
        Pki { dir: dir.to_owned() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

#[test]
fn tls_and_client_certificates() {
    require_root();
    let dir = test_dir("api-tls");
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let pki = Pki::new(&pki_dir);
    let mut n = Node::new(&dir.path().join("node"));
    n.set("SSL_RESTAPI_CERTIFICATE_FILE", &pki.path("server.pem"))
        .set("SSL_RESTAPI_PRIVATE_KEY_FILE", &pki.path("server.key"))
        .set("SSL_RESTAPI_CA_FILE", &pki.path("ca.pem"));
    n.start();
    n.wait_ready(1);
    let base = format!("https://127.0.0.1:{}", n.env["APIPORT"]);
    let ca = pki.path("ca.pem");
    let t0 = Instant::now();
    while curl(&["--cacert", &ca, &format!("{base}/health")]).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no HTTPS health answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Health checks without a client certificate: served.
    assert_eq!(curl(&["--cacert", &ca, &format!("{base}/primary")]).0, 200);
    // Plain HTTP on the TLS port: no answer.
    assert_eq!(curl(&[&format!("http://127.0.0.1:{}/health", n.env["APIPORT"])]).0, 0);
    // Write methods need a client certificate from the CA.
    let reload = format!("{base}/reload");
    assert_eq!(curl(&["--cacert", &ca, "-X", "POST", &reload]).0, 403);
    let good = ["--cacert", &ca, "--cert", &pki.path("client.pem"), "--key", &pki.path("client.key")];
    assert_eq!(curl(&[&good[..], &["-X", "POST", &reload]].concat()).0, 202);
    // A certificate from another CA: the handshake is refused.
    let foreign = ["--cacert", &ca, "--cert", &pki.path("foreign.pem"), "--key", &pki.path("foreign.key")];
    assert_eq!(curl(&[&foreign[..], &["-X", "POST", &reload]].concat()).0, 0);
    assert_eq!(curl(&[&foreign[..], &[format!("{base}/health").as_str()]].concat()).0, 0);
    // tusk healthcheck and tusk reload speak TLS with the node's identity.
    let (st, out, err) = n.run(&["healthcheck"]);
    assert!(st.success(), "healthcheck over TLS: {out} {err}");
    let (st, out, err) = n.run(&["reload"]);
    assert!(st.success(), "reload over TLS: {out} {err}");
    n.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(n.wait_exit(Duration::from_secs(20)).success());
}

fn patronictl(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = Command::new("patronictl").arg("-c").arg(c.patronictl_config()).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn cluster_operations_through_the_api_and_patronictl() {
    require_root();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("api-ops", etcd, 3, |_| eps.clone());
    let leader = c.start_settled(Duration::from_secs(60));
    let replicas: Vec<String> = c.names().into_iter().filter(|n| n != &leader).collect();
    let base = |name: &str| format!("http://127.0.0.1:{}", c.api_port(name));

    // patronictl list agrees.
    let (ok, out) = patronictl(&c, &["list", "-f", "json"]);
    assert!(ok, "{out}");
    let members: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(members.len(), 3);

    // /cluster from any member.
    let (code, body) = curl(&[&format!("{}/cluster", base(&replicas[0]))]);
    assert_eq!(code, 200);
    let cl = json(&body);
    let roles: Vec<&str> = cl["members"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{cl}");
    assert_eq!(cl["scope"], c.scope.as_str());

    // Health rules per role.
    assert_eq!(curl(&[&format!("{}/primary", base(&leader))]).0, 200);
    assert_eq!(curl(&[&format!("{}/primary", base(&replicas[0]))]).0, 503);
    // Positions are refreshed every second: right after the second clone's
    // WAL switch, a replica may look 16 MB behind for a moment.
    wait_http(&format!("{}/replica?lag=1MB", base(&replicas[0])), 200, Duration::from_secs(10));
    assert_eq!(curl(&[&format!("{}/replica", base(&leader))]).0, 503);
    let t0 = Instant::now();
    loop {
        let (code, body) = curl(&[&format!("{}/patroni", base(&leader))]);
        assert_eq!(code, 200);
        let st = json(&body);
        if st["replication"].as_array().map(|a| a.len()) == Some(2) {
            assert_eq!(st["replication"][0]["client_addr"], "127.0.0.1", "{st}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the leader does not list its 2 replicas: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // PATCH /config merges, with the result visible in GET /config.
    let (code, body) = curl(&[
        "-X",
        "PATCH",
        "-d",
        r#"{"postgresql":{"parameters":{"work_mem":"7MB"}}}"#,
        &format!("{}/config", base(&replicas[1])),
    ]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[&format!("{}/config", base(&leader))]);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["postgresql"]["parameters"]["work_mem"], "7MB");
    assert_eq!(json(&body)["ttl"], 10, "other keys kept");
    let t0 = Instant::now();
    while try_sql(c.node(&leader), "SHOW work_mem").as_deref() != Some("7MB") {
        assert!(t0.elapsed() < Duration::from_secs(20), "work_mem not applied");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(curl(&["-X", "PATCH", "-d", "{oops", &format!("{}/config", base(&leader))]).0, 400);
    assert_eq!(curl(&["-X", "PATCH", "-d", r#"{"ttl":"ten"}"#, &format!("{}/config", base(&leader))]).0, 400);

    // Switchover preconditions: 412 / 400.
    let sw = format!("{}/switchover", base(&leader));
    assert_eq!(curl(&["-X", "POST", "-d", r#"{"leader":"nobody"}"#, &sw]).0, 412);
    assert_eq!(curl(&["-X", "POST", "-d", &format!(r#"{{"leader":"{leader}","candidate":"ghost"}}"#), &sw]).0, 412);
    assert_eq!(curl(&["-X", "POST", "-d", &format!(r#"{{"leader":"{leader}","candidate":"{leader}"}}"#), &sw]).0, 412);
    assert_eq!(curl(&["-X", "POST", "-d", r#"{"candidate":"n1"}"#, &sw]).0, 400);
    assert_eq!(curl(&["-X", "DELETE", &sw]).0, 404);

    // patronictl switchover --force: through the leader's API.
    let target = replicas[0].clone();
    let (ok, out) = patronictl(&c, &["switchover", "--leader", &leader, "--candidate", &target, "--force", &c.scope]);
    assert!(ok, "patronictl switchover: {out}");
    let new_leader = c.wait_leader(Duration::from_secs(30), Some(&leader));
    assert_eq!(new_leader, target, "{out}");
    c.wait_streaming(&leader, Duration::from_secs(30));

    // /history has the timeline switch.
    let t0 = Instant::now();
    loop {
        let (code, body) = curl(&[&format!("{}/history", base(&leader))]);
        assert_eq!(code, 200);
        if !json(&body).as_array().unwrap().is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no history after the switchover: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // patronictl restart --force: postgres restarts, the leader stays.
    let before = json(&curl(&[&format!("{}/patroni", base(&leader))]).1)["postmaster_start_time"].clone();
    let (ok, out) = patronictl(&c, &["restart", &c.scope, &leader, "--force"]);
    assert!(ok && out.contains("Success: restart on member"), "patronictl restart: {out}");
    let after =
        json(&wait_http(&format!("{}/health", base(&leader)), 200, Duration::from_secs(30)))["postmaster_start_time"]
            .clone();
    assert_ne!(before, after, "postmaster_start_time must change");
    c.wait_streaming(&leader, Duration::from_secs(30));
    assert_eq!(c.leader_key().as_deref(), Some(new_leader.as_str()));

    // A scheduled switchover back, 3 s ahead: 202, then it happens.
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let at = at.format(&time::format_description::well_known::Rfc3339).unwrap();
    let body = format!(r#"{{"leader":"{new_leader}","candidate":"{leader}","scheduled_at":"{at}"}}"#);
    let (code, text) = curl(&["-X", "POST", "-d", &body, &format!("{}/switchover", base(&new_leader))]);
    assert_eq!(code, 202, "{text}");
    let (code, body) = curl(&[&format!("{}/cluster", base(&leader))]);
    assert_eq!(code, 200);
    assert!(json(&body)["scheduled_switchover"]["at"].is_string(), "{body}");
    assert_eq!(c.wait_leader(Duration::from_secs(30), Some(&new_leader)), leader);

    // Reinitialize: refused on the leader, done on a replica.
    let (code, _) = curl(&["-X", "POST", "-d", "{}", &format!("{}/reinitialize", base(&leader))]);
    assert_eq!(code, 503);
    let victim = replicas[1].clone();
    let (code, text) = curl(&["-X", "POST", "-d", "{}", &format!("{}/reinitialize", base(&victim))]);
    assert_eq!(code, 200, "{text}");
    c.wait_streaming(&victim, Duration::from_secs(60));

    // patronictl pause/resume: PATCH /config through a member's API.
    let (ok, out) = patronictl(&c, &["pause", "--wait", &c.scope]);
    assert!(ok && out.contains("Success: cluster management is paused"), "patronictl pause: {out}");
    assert_eq!(json(&curl(&[&format!("{}/patroni", base(&victim))]).1)["pause"], true);
    let (ok, out) = patronictl(&c, &["resume", "--wait", &c.scope]);
    assert!(ok && out.contains("Success: cluster management is resumed"), "patronictl resume: {out}");

    // tusk healthcheck on every node.
    for name in c.names() {
        let (st, out, _) = c.node(&name).run(&["healthcheck"]);
        assert!(st.success(), "{name}: {out}");
    }
    for n in &mut c.nodes {
        n.signal(nix::sys::signal::Signal::SIGTERM);
    }
    for n in &mut c.nodes {
        assert!(n.wait_exit(Duration::from_secs(30)).success());
    }
}
