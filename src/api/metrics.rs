//! `GET /metrics`: Prometheus text format, Patroni's gauge names (so
//! existing dashboards work) plus tusk's own (`tusk_*`).

use axum::body::Body;
use axum::http::{Response, StatusCode, header};

use super::ApiState;
use super::status::NodeStatus;
use crate::patroni::{ReplicationState, Role};
use crate::prometheus::{Kind, Writer, escape};

pub(super) fn response(state: &ApiState) -> Response<Body> {
    let s = state.status();
    let labels = labels(&s);
    let mut out = render(&s, &labels);
    if let Some(dcs) = state.dcs() {
        out.push_str(&render_dcs(dcs.endpoints(), &labels));
    }
    if let Some(extra) = state.archive_metrics(&labels) {
        out.push_str(&extra);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(Body::from(out))
        .expect("a static response builds")
}

fn labels(s: &NodeStatus) -> String {
    format!("scope=\"{}\",name=\"{}\"", escape(&s.patroni.scope), escape(&s.patroni.name))
}

/// The metrics of one status.
pub(super) fn render(s: &NodeStatus, labels: &str) -> String {
    let mut w = Writer::new(labels);
    let mut gauge = |name: &str, help: &str, value: f64| w.metric(name, Kind::Gauge, help, value);
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let running = s.running();
    let primary = running && s.role == Role::Primary;
    let replica = running && s.role == Role::Replica;
    // "3.0.2" → 30002, as Patroni encodes it.
    let version = s.patroni.version.split('.').filter_map(|p| p.parse::<u32>().ok()).fold(0u32, |acc, p| acc * 100 + p);
    gauge("patroni_version", "Version of Patroni (tusk's compatibility level) in the format MMmmpp.", version as f64);
    gauge("patroni_postgres_running", "Value is 1 if PostgreSQL is running, 0 otherwise.", b(running));
    gauge("patroni_postmaster_start_time", "Epoch seconds since PostgreSQL started.", start_epoch(s));
    gauge("patroni_primary", "Value is 1 if this node is the leader, 0 otherwise.", b(primary && s.is_leader()));
    gauge(
        "patroni_master",
        "Value is 1 if this node is the leader, 0 otherwise (Patroni 3 name).",
        b(primary && s.is_leader()),
    );
    gauge(
        "patroni_xlog_location",
        "Current location of the primary's WAL (bytes).",
        s.xlog.location.unwrap_or(0) as f64,
    );
    gauge(
        "patroni_standby_leader",
        "Value is 1 if this node is the standby leader, 0 otherwise.",
        b(running && s.role == Role::StandbyLeader && s.is_leader()),
    );
    gauge("patroni_replica", "Value is 1 if this node is a replica, 0 otherwise.", b(replica));
    gauge("patroni_sync_standby", "Value is 1 if this node is a sync standby, 0 otherwise.", b(s.sync_standby));
    gauge("patroni_quorum_standby", "Value is 1 if this node is a quorum standby, 0 otherwise.", b(s.quorum_standby));
    gauge(
        "patroni_xlog_received_location",
        "Current location of the received WAL on a replica (bytes).",
        s.xlog.received_location.unwrap_or(0) as f64,
    );
    gauge(
        "patroni_xlog_replayed_location",
        "Current location of the replayed WAL on a replica (bytes).",
        s.xlog.replayed_location.unwrap_or(0) as f64,
    );
    gauge("patroni_xlog_paused", "Value is 1 if WAL replay is paused, 0 otherwise.", b(s.xlog.paused == Some(true)));
    gauge(
        "patroni_postgres_streaming",
        "Value is 1 if the replica streams from its upstream, 0 otherwise.",
        b(s.replication_state == Some(ReplicationState::Streaming)),
    );
    gauge(
        "patroni_postgres_in_archive_recovery",
        "Value is 1 if the replica replays from the WAL archive, 0 otherwise.",
        b(s.replication_state == Some(ReplicationState::InArchiveRecovery)),
    );
    gauge(
        "patroni_postgres_server_version",
        "Version of PostgreSQL (server_version_num).",
        s.server_version.unwrap_or(0) as f64,
    );
    gauge("patroni_cluster_unlocked", "Value is 1 if the cluster has no leader, 0 otherwise.", b(s.cluster_unlocked));
    gauge(
        "patroni_failsafe_mode_is_active",
        "Value is 1 if failsafe mode is active, 0 otherwise.",
        b(s.failsafe_mode_is_active),
    );
    gauge("patroni_postgres_timeline", "PostgreSQL timeline of this node.", s.timeline.unwrap_or(0) as f64);
    gauge(
        "patroni_dcs_last_seen",
        "Epoch seconds of the last successful read of the DCS.",
        s.dcs_last_seen.unwrap_or(0) as f64,
    );
    gauge(
        "patroni_pending_restart",
        "Value is 1 if a parameter change needs a restart, 0 otherwise.",
        b(s.pending_restart),
    );
    gauge("patroni_is_paused", "Value is 1 if the cluster is in maintenance mode, 0 otherwise.", b(s.pause));
    gauge(
        "tusk_leader",
        "Value is 1 if this node holds the leader key (or runs standalone), 0 otherwise.",
        b(s.is_leader()),
    );
    if !s.replication.is_empty() {
        w.header(
            "tusk_replication_lag_bytes",
            Kind::Gauge,
            "WAL between the primary's flush position and a replica's replay position.",
        );
        for r in &s.replication {
            let extra = [("application_name", r.application_name.as_str()), ("state", r.state.as_str())];
            w.sample("tusk_replication_lag_bytes", &extra, r.lag_bytes.unwrap_or(0));
        }
    }
    w.finish()
}

/// The etcd client's figures: which member requests go to, how often they
/// moved, how many attempts timed out or failed, the age of the last
/// successful lease keepalive.
fn render_dcs(e: &crate::dcs::endpoints::Endpoints, labels: &str) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut w = Writer::new(labels);
    let st = &e.stats;
    w.metric(
        "tusk_dcs_endpoint_switches_total",
        Kind::Counter,
        "Times etcd requests moved to another member.",
        st.switches.load(Relaxed),
    );
    w.metric(
        "tusk_dcs_request_timeouts_total",
        Kind::Counter,
        "etcd request attempts that got no answer within their deadline.",
        st.timeouts.load(Relaxed),
    );
    w.metric(
        "tusk_dcs_request_failures_total",
        Kind::Counter,
        "etcd request attempts that failed otherwise (refused, no leader, ...).",
        st.failures.load(Relaxed),
    );
    w.metric("tusk_dcs_keepalives_total", Kind::Counter, "Successful lease keepalives.", st.keepalives.load(Relaxed));
    if let Some(age) = st.since_last_keepalive() {
        w.metric(
            "tusk_dcs_last_keepalive_age_seconds",
            Kind::Gauge,
            "Seconds since the send of the last successful lease keepalive.",
            age.as_secs_f64(),
        );
    }
    w.header(
        "tusk_dcs_member_up",
        Kind::Gauge,
        "1 if the etcd member is not being avoided; current=\"true\" marks the one requests go to.",
    );
    for m in e.health() {
        let current = if m.current { "true" } else { "false" };
        w.sample("tusk_dcs_member_up", &[("member", &m.name), ("current", current)], u8::from(m.healthy));
    }
    w.finish()
}

/// `postmaster_start_time` ("2024-08-28 19:39:26.352526+00:00") as epoch seconds.
fn start_epoch(s: &NodeStatus) -> f64 {
    let Some(t) = &s.postmaster_start_time else { return 0.0 };
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory]:[offset_minute]"
    );
    time::OffsetDateTime::parse(t, &fmt).map(|d| d.unix_timestamp() as f64).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::State;

    #[test]
    fn renders_patroni_names_with_labels() {
        let mut s = NodeStatus::new("demo", "n\"1");
        s.state = State::Running;
        s.role = Role::Primary;
        s.leader = true;
        s.timeline = Some(3);
        s.xlog.location = Some(4096);
        s.postmaster_start_time = Some("2024-08-28 19:39:26.352526+00:00".into());
        s.replication.push(super::super::Replication {
            application_name: "b".into(),
            state: "streaming".into(),
            lag_bytes: Some(10),
            ..Default::default()
        });
        let out = render(&s, &labels(&s));
        assert!(out.contains("patroni_version{scope=\"demo\",name=\"n\\\"1\"} 30002\n"), "{out}");
        assert!(out.contains("patroni_primary{scope=\"demo\",name=\"n\\\"1\"} 1\n"));
        assert!(out.contains("patroni_postgres_timeline{scope=\"demo\",name=\"n\\\"1\"} 3\n"));
        assert!(out.contains("patroni_postmaster_start_time{scope=\"demo\",name=\"n\\\"1\"} 1724873966\n"));
        assert!(out.contains("application_name=\"b\",state=\"streaming\"} 10\n"));
        // Every sample line has a TYPE line before it.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap_or("");
            assert!(out.contains(&format!("# TYPE {name} gauge")), "{line}");
        }
    }
}
