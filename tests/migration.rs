//! Moving a Spilo/Patroni cluster onto tusk, against the real binary, real
//! PostgreSQL and a real etcd with mutual TLS: what a Spilo cluster's
//! `config` key asks of a member that the image cannot give.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::time::Duration;

use cluster::{Cluster, psql_ok};
use node::require_root;

fn cluster(name: &str, n: usize) -> Cluster {
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    Cluster::new(name, etcd, n, |_| eps.clone())
}

/// A Spilo cluster's dynamic configuration preloads libraries the image
/// does not have (`bg_mon`, `pgextwlist`, `pg_auth_mon`, `set_user`,
/// `pg_cron`): tusk keeps only the installed ones, as Spilo does, so
/// PostgreSQL starts, on the leader and on a replica; it says once what it
/// left out. `pg_stat_statements` is preloaded, as in Spilo.
#[test]
fn spilo_preload_libraries_are_filtered_to_what_is_installed() {
    require_root();
    let mut c = cluster("preload", 2);
    let dcs = r#"{"ttl":10,"loop_wait":2,"retry_timeout":3,"postgresql":{"use_pg_rewind":true,"use_slots":true,
        "parameters":{"shared_preload_libraries":"bg_mon,pg_stat_statements,pgextwlist,pg_auth_mon,set_user,pg_cron",
        "bg_mon.listen_address":"0.0.0.0","pg_stat_statements.track_utility":"off","extwlist.extensions":"btree_gin"}}}"#;
    for n in &mut c.nodes {
        n.set("TUSK_BOOTSTRAP_DCS", &dcs.replace('\n', ""));
    }
    let leader = c.start_settled(Duration::from_secs(120));
    let replica = c.names().into_iter().find(|n| n != &leader).expect("a replica");
    c.wait_streaming(&replica, Duration::from_secs(120));
    for name in [&leader, &replica] {
        let n = c.node(name);
        assert_eq!(psql_ok(n, "SHOW shared_preload_libraries"), "pg_stat_statements", "{name}");
        assert_eq!(psql_ok(n, "SHOW pg_stat_statements.track_utility"), "off", "{name}: the module's setting");
        let log = n.log_text();
        let notes =
            log.matches("left out (not installed here): bg_mon,pgextwlist,pg_auth_mon,set_user,pg_cron").count();
        assert_eq!(notes, 1, "{name}: the dropped libraries are logged once:\n{log}");
    }
    // The preloaded module works.
    psql_ok(c.node(&leader), "CREATE EXTENSION pg_stat_statements");
    assert_eq!(psql_ok(c.node(&leader), "SELECT count(*) > 0 FROM pg_stat_statements"), "t");
    for n in &mut c.nodes {
        n.stop_cleanly(Duration::from_secs(60));
    }
}

/// Lines of a callback log once it has at least `n` (30 s at most).
fn callback_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let t0 = std::time::Instant::now();
    loop {
        let lines: Vec<String> = std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect();
        if lines.len() >= n || t0.elapsed() > Duration::from_secs(30) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spilo's `CALLBACK_SCRIPT` runs as Patroni's `on_start`, `on_stop` and
/// `on_role_change` callbacks, with `<action> <role> <scope>` appended
/// (`master` for a primary, as Patroni 3.x passes it), as the postgres
/// user: through a start, a switchover and a clean stop.
#[test]
fn callback_script_runs_patronis_callbacks() {
    require_root();
    let mut c = cluster("callbacks", 2);
    let logs = c.dir.path().join("callbacks");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::set_permissions(&logs, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let file = logs.join(format!("n{}.log", i + 1));
        n.set("CALLBACK_SCRIPT", &format!("/bin/sh -c 'echo \"$(id -un) $*\" >> {}' callback", file.display()));
    }
    let leader = c.start_settled(Duration::from_secs(120));
    let replica = c.names().into_iter().find(|n| n != &leader).expect("a replica");
    c.wait_streaming(&replica, Duration::from_secs(120));
    let (lf, rf) = (logs.join(format!("{leader}.log")), logs.join(format!("{replica}.log")));
    let scope = &c.scope;
    assert_eq!(callback_lines(&lf, 1), [format!("postgres on_start master {scope}")], "the leader's start");
    assert_eq!(callback_lines(&rf, 1), [format!("postgres on_start replica {scope}")], "the replica's start");

    // Switchover: the old leader stops and comes back as a replica; the
    // replica is promoted in place.
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "60", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d"])
        .arg(format!(r#"{{"leader":"{leader}","candidate":"{replica}"}}"#))
        .arg(format!("http://127.0.0.1:{}/switchover", c.api_port(&leader)))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "switchover");
    c.wait_streaming(&leader, Duration::from_secs(120));
    assert_eq!(
        callback_lines(&rf, 2),
        [format!("postgres on_start replica {scope}"), format!("postgres on_role_change master {scope}")],
        "the new leader"
    );
    assert_eq!(
        callback_lines(&lf, 3),
        [
            format!("postgres on_start master {scope}"),
            format!("postgres on_stop master {scope}"),
            format!("postgres on_role_change replica {scope}"),
        ],
        "the old leader"
    );
    // A clean stop: on_stop before tusk exits.
    let ri = c.index(&replica);
    c.nodes[ri].stop_cleanly(Duration::from_secs(60));
    assert_eq!(callback_lines(&rf, 3).last(), Some(&format!("postgres on_stop master {scope}")), "the stop");
    let log = c.nodes[ri].log_text();
    assert!(log.contains("callback done"), "the callbacks are logged:\n{log}");
    let li = c.index(&leader);
    c.nodes[li].stop_cleanly(Duration::from_secs(60));
}
