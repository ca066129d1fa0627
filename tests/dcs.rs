//! The DCS layer against a real etcd with mutual TLS: Patroni's key layout,
//! the initialize race, the leader key on a lease, conditional writes, TLS
//! failures. Each test uses its own scope (key prefix) on one shared etcd.

#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testbed::{Etcd, shared_etcd, shared_etcd_cluster};
use tusk::config::{Config, EtcdConfig, HostFacts};
use tusk::dcs::client::{Dcs, DcsError};
use tusk::dcs::values::{Failover, MemberValue, PATRONI_COMPAT_VERSION};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The etcd section of a configuration parsed from Spilo-style variables.
fn etcd_config(etcd: &Etcd, extra: &[(&str, String)]) -> EtcdConfig {
    let mut env: BTreeMap<String, String> = [
        ("ETCD3_HOSTS", etcd.endpoints.join(",")),
        ("ETCD3_PROTOCOL", "https".into()),
        ("ETCD3_CACERT", etcd.ca.display().to_string()),
        ("ETCD3_CERT", etcd.cert.display().to_string()),
        ("ETCD3_KEY", etcd.key.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    let host = HostFacts { hostname: "t".into(), address: [127, 0, 0, 1].into(), memory_bytes: 1 << 30 };
    Config::from_map(&env, &host).expect("config").etcd.expect("etcd section")
}

fn scope(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

async fn connect(etcd: &Etcd, scope: &str) -> Dcs {
    Dcs::connect(&etcd_config(etcd, &[]), "service", scope, TIMEOUT).await.expect("connect")
}

fn member(role: &str) -> MemberValue {
    MemberValue {
        conn_url: "postgres://127.0.0.1:5432/postgres".into(),
        api_url: "http://127.0.0.1:8008/patroni".into(),
        state: "running".into(),
        role: role.into(),
        version: PATRONI_COMPAT_VERSION.into(),
        xlog_location: Some(1),
        timeline: Some(1),
        tags: Default::default(),
        replication_state: None,
        receive_lsn: None,
        replay_lsn: None,
        pending_restart: false,
        pause: false,
        scheduled_restart: None,
    }
}

#[tokio::test]
async fn initialize_race_has_one_winner_and_keys_are_patronis() {
    let etcd = shared_etcd();
    let scope = scope("init");
    let (a, b) = (connect(etcd, &scope).await, connect(etcd, &scope).await);
    let (ra, rb) = tokio::join!(a.race_initialize(), b.race_initialize());
    assert!(ra.unwrap() ^ rb.unwrap(), "exactly one member wins the initialize race");
    a.set_initialize("7268616322854375442").await.unwrap();
    assert!(a.init_config(&Default::default()).await.unwrap());
    assert!(!b.init_config(&Default::default()).await.unwrap(), "config is written once");
    let snap = b.snapshot().await.unwrap();
    assert_eq!(snap.view.initialize.as_deref(), Some("7268616322854375442"));
    assert_eq!(snap.view.config.ttl, 30);
    // The raw keys are where Patroni and etcdctl look for them.
    let out = etcd.etcdctl(&["get", "--prefix", "--keys-only", &format!("/service/{scope}/")]);
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.contains(&format!("/service/{scope}/initialize")) && keys.contains(&format!("/service/{scope}/config")),
        "{keys}"
    );
}

#[tokio::test]
async fn leader_key_lives_on_the_lease_and_is_only_released_by_its_owner() {
    let etcd = shared_etcd();
    let scope = scope("leader");
    let (a, b) = (connect(etcd, &scope).await, connect(etcd, &scope).await);
    let ttl = Duration::from_secs(2);
    let (la, lb) = (a.grant_lease(ttl).await.unwrap(), b.grant_lease(ttl).await.unwrap());
    assert!(a.acquire_leader("a", la).await.unwrap());
    assert!(!b.acquire_leader("b", lb).await.unwrap(), "a second leader key is refused");
    a.put_member("a", &member("primary"), la).await.unwrap();
    b.put_member("b", &member("replica"), lb).await.unwrap();
    let snap = b.snapshot().await.unwrap();
    assert_eq!(snap.view.leader.as_deref(), Some("a"));
    assert_eq!(snap.leader_lease, Some(la));
    assert_eq!(snap.view.members.len(), 2);
    // Patroni's format: the leader value is the bare name.
    let raw = a.get_raw(&a.keys.leader()).await.unwrap().unwrap();
    assert_eq!(raw.value(), b"a");
    assert!(!b.release_leader("b").await.unwrap(), "only the owner releases");
    assert!(!b.reclaim_leader("b", lb).await.unwrap(), "no takeover through reclaim");

    // Keepalives keep it; without them the lease expires and both keys of a go.
    for _ in 0..3 {
        assert!(a.keepalive(la, None).await.unwrap() > 0);
        b.keepalive(lb, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(b.snapshot().await.unwrap().view.leader.as_deref(), Some("a"));
    let t0 = Instant::now();
    loop {
        b.keepalive(lb, None).await.unwrap();
        let snap = b.snapshot().await.unwrap();
        if snap.view.leader.is_none() {
            assert!(!snap.view.members.contains_key("a"), "the member key expires with the leader key");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.acquire_leader("b", lb).await.unwrap());
    // a comes back with a new lease: reclaim must not take b's key.
    let la2 = a.grant_lease(ttl).await.unwrap();
    assert!(!a.reclaim_leader("a", la2).await.unwrap());
    assert!(b.release_leader("b").await.unwrap());
    // Nobody holds it: reclaim may create it.
    assert!(a.reclaim_leader("a", la2).await.unwrap());
    a.revoke_lease(la2).await.unwrap();
    assert!(a.snapshot().await.unwrap().view.leader.is_none(), "revoking the lease drops the key at once");
}

#[tokio::test]
async fn failover_key_compare_and_set() {
    let etcd = shared_etcd();
    let scope = scope("failover");
    let a = connect(etcd, &scope).await;
    let f = Failover { leader: Some("a".into()), member: Some("b".into()), scheduled_at: None };
    assert!(a.put_failover(&f, Some(0)).await.unwrap(), "create when absent");
    assert!(!a.put_failover(&f, Some(0)).await.unwrap(), "not twice");
    let snap = a.snapshot().await.unwrap();
    assert_eq!(snap.view.failover.as_ref(), Some(&f));
    assert!(a.put_failover(&Failover::default(), snap.failover_revision).await.unwrap());
    let snap = a.snapshot().await.unwrap();
    assert!(snap.view.failover.is_none(), "{{}} clears it");
    let raw = a.get_raw(&a.keys.failover()).await.unwrap().unwrap();
    assert_eq!(raw.value(), b"{}");
}

/// Wrong CA, a client certificate from another CA, no client certificate,
/// nobody listening: each fails with an error, within the timeout.
#[tokio::test]
async fn tls_and_connection_failures_are_errors_in_bounded_time() {
    let etcd = shared_etcd();
    let scope = scope("tls");
    let p = |p: &std::path::Path| p.display().to_string();
    let cases: Vec<(&str, EtcdConfig)> = vec![
        ("wrong CA", etcd_config(etcd, &[("ETCD3_CACERT", p(&etcd.other_ca))])),
        (
            "client certificate of another CA",
            etcd_config(etcd, &[("ETCD3_CERT", p(&etcd.other_client_cert)), ("ETCD3_KEY", p(&etcd.other_client_key))]),
        ),
        ("etcd down", etcd_config(etcd, &[("ETCD3_HOSTS", format!("127.0.0.1:{}", testbed::free_port()))])),
    ];
    for (what, cfg) in cases {
        let t0 = Instant::now();
        let r = match Dcs::connect(&cfg, "service", &scope, TIMEOUT).await {
            Ok(d) => d.snapshot().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let e = r.expect_err(what);
        assert!(matches!(e, DcsError::Unreachable(_) | DcsError::Etcd(_)), "{what}: {e}");
        assert!(t0.elapsed() < TIMEOUT * 2 + Duration::from_secs(1), "{what} took {:?}", t0.elapsed());
    }
    // No client certificate at all: refused by --client-cert-auth.
    let mut cfg = etcd_config(etcd, &[]);
    cfg.cert = None;
    cfg.key = None;
    let r = match Dcs::connect(&cfg, "service", &scope, TIMEOUT).await {
        Ok(d) => d.snapshot().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "a client without a certificate must be refused");
}

/// A 3-member etcd loses one member: the client keeps working through the others.
#[tokio::test]
async fn survives_the_loss_of_one_etcd_member() {
    let etcd = shared_etcd_cluster();
    let scope = scope("cluster");
    let a = connect(etcd, &scope).await;
    let lease = a.grant_lease(Duration::from_secs(10)).await.unwrap();
    assert!(a.acquire_leader("a", lease).await.unwrap());
    etcd.kill_member(2);
    // A request in flight to the dead member may fail once; the next ones go elsewhere.
    let t0 = Instant::now();
    let mut ok = 0;
    while ok < 5 {
        match a.keepalive(lease, None).await {
            Ok(ttl) if ttl > 0 => ok += 1,
            Ok(_) => panic!("lease lost"),
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(10), "no recovery: {e}"),
        }
    }
    assert_eq!(a.snapshot().await.unwrap().view.leader.as_deref(), Some("a"));
}
