//! Proves the test bed is real: etcd with mutual TLS (single and 3 members)
//! and garage S3. Needs `scripts/install-testbed.sh` to have run.

#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use testbed::{Etcd, Garage};

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..50).map(|_| testbed::free_port()).collect();
    let set: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(set.len(), ports.len(), "duplicate ports: {ports:?}");
    for p in ports {
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("port binds");
    }
}

#[test]
fn etcd_single_member_mutual_tls() {
    let etcd = Etcd::single();
    eprintln!("etcd single member started in {:?}", etcd.startup);
    assert_eq!(etcd.endpoints.len(), 1);

    // With the client certificate: put and get.
    ok(etcd.etcdctl(&["put", "/testbed/a", "hello"]));
    let got = ok(etcd.etcdctl(&["get", "--print-value-only", "/testbed/a"]));
    assert_eq!(got.trim(), "hello");

    // The JSON gateway (the path Patroni's client uses) with the client cert.
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&etcd.ca)
        .arg("--cert")
        .arg(&etcd.cert)
        .arg("--key")
        .arg(&etcd.key)
        .arg("-d")
        .arg(r#"{"key":"L3Rlc3RiZWQvYQ=="}"#) // base64("/testbed/a")
        .arg(format!("{}/v3/kv/range", etcd.urls()[0]))
        .output()
        .unwrap();
    let body = ok(out);
    assert!(body.contains(r#""value":"aGVsbG8=""#), "gateway range: {body}"); // "hello"

    let log = || std::fs::read_to_string(etcd.log_file(0)).unwrap_or_default();
    let ep = etcd.endpoints_arg();

    // No client certificate: refused during the TLS handshake.
    let cacert = format!("--cacert={}", etcd.ca.display());
    let out = etcd.etcdctl_raw(&ep, &[&cacert], &["get", "/testbed/a"]);
    assert!(!out.status.success(), "no-cert client was served: {}", text(&out));
    assert!(
        eventually(5, || log().contains("client didn't provide a certificate")),
        "etcd log does not show the rejection"
    );

    // A client certificate from an unrelated CA: refused too.
    let cert = format!("--cert={}", etcd.other_client_cert.display());
    let key = format!("--key={}", etcd.other_client_key.display());
    let out = etcd.etcdctl_raw(&ep, &[&cacert, &cert, &key], &["get", "/testbed/a"]);
    assert!(!out.status.success(), "foreign-CA client was served: {}", text(&out));
    assert!(
        eventually(5, || log().contains("certificate signed by unknown authority")),
        "etcd log does not show the rejection"
    );

    // Stop is real: the pid is gone and the port refuses.
    let pid = etcd.pid(0).unwrap();
    etcd.stop();
    assert!(testbed::wait_gone(pid, Duration::from_secs(5)));
    assert!(TcpStream::connect(&etcd.endpoints[0]).is_err());
}

#[test]
fn etcd_cluster_survives_loss_of_one_member() {
    let etcd = Etcd::cluster();
    eprintln!("etcd 3-member cluster started in {:?}", etcd.startup);
    assert_eq!(etcd.endpoints.len(), 3);

    let health = etcd.etcdctl(&["endpoint", "health", "--cluster"]);
    let report = format!("{}{}", String::from_utf8_lossy(&health.stdout), String::from_utf8_lossy(&health.stderr));
    assert!(health.status.success(), "{}", text(&health));
    assert_eq!(report.matches("is healthy").count(), 3, "{report}");
    let members = ok(etcd.etcdctl(&["member", "list"]));
    assert_eq!(members.lines().filter(|l| l.contains("started")).count(), 3);

    // Lose n1 (SIGKILL); n0 and n2 still form a quorum.
    etcd.kill_member(1);
    let survivors = format!("https://{},https://{}", etcd.endpoints[0], etcd.endpoints[2]);
    // (If n1 led, the survivors first elect a new leader: retry, bounded.)
    let t0 = std::time::Instant::now();
    let mut last = None;
    let put = eventually(20, || {
        let out = etcd.etcdctl_at(&survivors, &["put", "/testbed/after-loss", "still-here"]);
        let done = out.status.success();
        last = Some(out);
        done
    });
    assert!(put, "survivors refuse writes: {}", text(last.as_ref().unwrap()));
    eprintln!("write after losing n1 succeeded after {:?}", t0.elapsed());
    for ep in [&etcd.endpoints[0], &etcd.endpoints[2]] {
        let got = ok(etcd.etcdctl_at(&format!("https://{ep}"), &["get", "--print-value-only", "/testbed/after-loss"]));
        assert_eq!(got.trim(), "still-here");
    }
    let dead = etcd.etcdctl_at(&format!("https://{}", etcd.endpoints[1]), &["endpoint", "health"]);
    assert!(!dead.status.success(), "killed member still healthy");
}

#[test]
fn garage_bucket_anonymous_refused_signed_roundtrip() {
    let g = Garage::new();
    eprintln!("garage started in {:?}", g.startup);
    assert_eq!(g.region, "garage");
    assert!(g.access_key.starts_with("GK") && g.access_key.len() == 26);
    assert_eq!(g.secret_key.len(), 64);
    let env = g.env();
    assert_eq!(env["AWS_ENDPOINT"], g.endpoint);
    assert_eq!(env["AWS_S3_FORCE_PATH_STYLE"], "true");

    // The bucket exists, and the key may use it.
    let info = ok(g.cli(&["bucket", "info", &g.bucket]));
    assert!(info.contains(&g.access_key), "bucket info lacks the key: {info}");
    assert!(ok(g.cli(&["bucket", "list"])).contains(&g.bucket));

    // Anonymous request (raw HTTP): an S3 error.
    let mut s = TcpStream::connect(("127.0.0.1", g.s3_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /{}/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", g.bucket, g.s3_port).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "anonymous: {resp}");
    assert!(resp.contains("AccessDenied"), "anonymous: {resp}");

    // Signed PUT then GET: byte-identical (1 MiB + 7, all byte values).
    let data: Vec<u8> = (0..(1 << 20) + 7u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert_eq!(g.put_object("testbed/blob", &data), 200);
    let (code, body) = g.get_object("testbed/blob");
    assert_eq!(code, 200);
    assert!(body == data, "object differs ({} vs {} bytes)", body.len(), data.len());
    let (code, _) = g.get_object("testbed/missing");
    assert_eq!(code, 404);

    // A wrong secret is refused.
    let wrong = "0".repeat(64);
    let url = g.object_url("testbed/blob");
    let out = g.curl_as(&g.access_key, &wrong, &["-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(ok(out).trim(), "403");
}

#[test]
fn shared_instances_are_shared_and_work() {
    let e1 = testbed::shared_etcd() as *const Etcd;
    let e2 = std::thread::spawn(|| testbed::shared_etcd() as *const Etcd as usize).join().unwrap();
    assert_eq!(e1 as usize, e2);
    let etcd = testbed::shared_etcd();
    ok(etcd.etcdctl(&["put", "/testbed/shared", "1"]));

    let g = testbed::shared_garage();
    assert_eq!(g.put_object("testbed/shared", b"x"), 200);
    assert_eq!(g.get_object("testbed/shared"), (200, b"x".to_vec()));
}
