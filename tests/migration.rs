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
