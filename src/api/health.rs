//! The health endpoints' status rules (reference/spilo-patroni.md §3.2), a
//! pure function of the path, its query and the node's status.

use crate::patroni::{ReplicationState, Role, State};
use std::collections::BTreeMap;
use std::time::Instant;

use axum::http::StatusCode;

use super::status::NodeStatus;

/// A parsed health request: the path and its query parameters.
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub path: String,
    /// `?lag=`: bytes, or a size with a unit (`10MB`, `1GB`, `16kB`).
    pub lag: Option<u64>,
    /// `?replication_state=streaming`.
    pub replication_state: Option<ReplicationState>,
    /// `?mode=apply|write` (readiness).
    pub mode: Option<String>,
    /// `?tag_<key>=<value>`.
    pub tags: BTreeMap<String, String>,
}

impl Check {
    /// `Err`: a query parameter with a bad value (answered 400).
    pub fn parse(path: &str, query: Option<&str>) -> Result<Check, String> {
        let mut c = Check { path: path.to_owned(), ..Default::default() };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "lag" => c.lag = Some(parse_size(&v).ok_or_else(|| format!("lag: {v:?} is not a size"))?),
                "replication_state" => c.replication_state = Some(ReplicationState::from(v)),
                "mode" => c.mode = Some(v),
                _ => {
                    if let Some(tag) = k.strip_prefix("tag_") {
                        c.tags.insert(percent_decode(tag), v);
                    }
                }
            }
        }
        Ok(c)
    }
}

/// `1048576`, `10MB`, `1 GB`, `16kB` (Patroni's units, base 1024).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn code(ok: bool) -> StatusCode {
    if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// Patroni's `replica_ok`: a running, unlagged replica that may take load.
fn replica_ok(c: &Check, s: &NodeStatus) -> bool {
    let noloadbalance = s.tags.get("noloadbalance").is_some_and(truthy);
    let lagging = match (s.facts.leader_optime, c.lag) {
        (Some(leader), Some(max)) => leader > s.xlog.replayed_location.unwrap_or(0).saturating_add(max),
        _ => false,
    };
    let state_ok = c.replication_state.as_ref().is_none_or(|want| s.replication_state.as_ref() == Some(want));
    !noloadbalance && s.role == Role::Replica && s.running() && !lagging && state_ok
}

fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"),
        serde_json::Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Every `?tag_k=v` matches the node's tag `k` (a missing tag fails).
fn tags_match(c: &Check, s: &NodeStatus) -> bool {
    c.tags.iter().all(|(k, want)| {
        s.tags.get(k).is_some_and(|have| match have {
            serde_json::Value::String(h) => h == want,
            other => other.to_string().eq_ignore_ascii_case(want),
        })
    })
}

/// The status code of a health request (any GET path that is not one of
/// the other endpoints, and every HEAD and OPTIONS). Substring matching in
/// Patroni's order; `/` is `/primary`; anything unmatched is 503.
pub fn health_status(c: &Check, s: &NodeStatus, now: Instant) -> StatusCode {
    let path = if c.path == "/" { "/primary" } else { c.path.as_str() };
    let leader = s.leader || (s.facts.standalone && s.running());
    let primary = leader && s.role == Role::Primary;
    // The leader of a standby cluster runs as a standby (Patroni's role
    // `standby_leader`): `/primary` and `/replica` answer 503 there.
    let standby_leader = s.leader && s.role == Role::StandbyLeader;
    let replica = replica_ok(c, s);
    if path.contains("liveness") {
        return code(liveness(s, now));
    }
    if path.contains("readiness") {
        let max = c.lag.unwrap_or(s.facts.maximum_lag_on_failover);
        let caught_up = match s.facts.leader_optime {
            Some(leader) => {
                let pos = match c.mode.as_deref() {
                    Some("write") => s.xlog.received_location,
                    _ => s.xlog.replayed_location,
                };
                leader <= pos.unwrap_or(0).saturating_add(max)
            }
            None => true,
        };
        let ready = primary
            || (standby_leader && s.running())
            || (s.running()
                && s.role == Role::Replica
                && s.replication_state == Some(ReplicationState::Streaming)
                && (s.facts.dcs_reachable || s.facts.standalone)
                && caught_up);
        return code(ready);
    }
    if path.contains("standby_leader") || path.contains("standby-leader") {
        return code(standby_leader);
    }
    if path.contains("leader") {
        return code(leader);
    }
    if path.contains("master") || path.contains("primary") || path.contains("read-write") {
        return code(primary);
    }
    if path.contains("replica") {
        return code(replica && tags_match(c, s));
    }
    if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        return code(primary || standby_leader || (replica && tags_match(c, s)));
    }
    if path.contains("health") {
        return code(s.running());
    }
    if path.contains("read-only-sync") || path.contains("read-only-synchronous") {
        return code(primary || (s.sync_standby && replica && tags_match(c, s)));
    }
    if path.contains("read-only-quorum") {
        // Patroni 3.0.2 answered for synchronous standbys here too.
        return code(primary || ((s.quorum_standby || s.sync_standby) && replica && tags_match(c, s)));
    }
    if s.facts.dcs_reachable && !s.facts.standalone {
        if path == "/sync" || path == "/synchronous" {
            return code(s.sync_standby && replica && tags_match(c, s));
        }
        if path == "/quorum" {
            return code(s.quorum_standby && replica && tags_match(c, s));
        }
        if path == "/async" || path == "/asynchronous" {
            return code(!s.sync_standby && !s.quorum_standby && replica && tags_match(c, s));
        }
    }
    StatusCode::SERVICE_UNAVAILABLE
}

/// The loop is not stuck: paused, or it ran within ttl (a running primary)
/// or twice the ttl (others).
fn liveness(s: &NodeStatus, now: Instant) -> bool {
    if s.pause || s.facts.standalone {
        return true;
    }
    // Long steps the loop runs on purpose (a clone can take hours).
    if matches!(s.state, State::CreatingReplica | State::InitializingNewCluster | State::RunningPgRewind) {
        return true;
    }
    let Some(last) = s.facts.last_loop else { return true };
    let factor = if s.running() && s.role == Role::Primary { 1 } else { 2 };
    now.saturating_duration_since(last).as_secs() < s.facts.ttl.max(1) * factor
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn node(role: &str, state: &str, leader: bool) -> NodeStatus {
        let mut s = NodeStatus::new("c", "a");
        s.role = role.into();
        s.state = state.into();
        s.leader = leader;
        s.facts.dcs_reachable = true;
        s.facts.leader_optime = Some(1000);
        s.facts.last_loop = Some(Instant::now());
        if role == "replica" {
            s.xlog.replayed_location = Some(1000);
            s.xlog.received_location = Some(1000);
            s.replication_state = Some("streaming".into());
        } else {
            s.xlog.location = Some(1000);
        }
        s
    }

    const OK: StatusCode = StatusCode::OK;
    const NO: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

    /// (node, path + query, expected).
    #[test]
    fn table() {
        let primary = node("primary", "running", true);
        let replica = node("replica", "running", false);
        let stopped_replica = node("replica", "stopped", false);
        let lagging = {
            let mut r = node("replica", "running", false);
            r.xlog.replayed_location = Some(0);
            r.facts.leader_optime = Some(20 << 20);
            r
        };
        let archive_replica = {
            let mut r = node("replica", "running", false);
            r.replication_state = Some("in archive recovery".into());
            r
        };
        let tagged = {
            let mut r = node("replica", "running", false);
            r.tags.insert("zone".into(), "a".into());
            r.tags.insert("noloadbalance".into(), serde_json::Value::Bool(false));
            r
        };
        let noloadbalance = {
            let mut r = node("replica", "running", false);
            r.tags.insert("noloadbalance".into(), serde_json::Value::Bool(true));
            r
        };
        let sync_replica = NodeStatus { sync_standby: true, ..node("replica", "running", false) };
        let quorum_replica = NodeStatus { quorum_standby: true, ..node("replica", "running", false) };
        // A primary that lost the leader key (about to be fenced).
        let unleaded_primary = node("primary", "running", false);
        let standalone = {
            let mut s = node("primary", "running", false);
            s.facts.standalone = true;
            s.facts.dcs_reachable = false;
            s
        };
        let stuck = {
            let mut r = node("replica", "running", false);
            r.facts.last_loop = Some(Instant::now() - Duration::from_secs(61));
            r
        };
        let stuck_primary = {
            let mut p = node("primary", "running", true);
            p.facts.last_loop = Some(Instant::now() - Duration::from_secs(31));
            p
        };
        let paused_stuck = {
            let mut p = stuck.clone();
            p.pause = true;
            p
        };
        let cloning = {
            let mut r = stuck.clone();
            r.state = "creating replica".into();
            r
        };
        let no_dcs_replica = {
            let mut r = node("replica", "running", false);
            r.facts.dcs_reachable = false;
            r
        };

        let cases: Vec<(&NodeStatus, &str, StatusCode)> = vec![
            // Leader-type endpoints.
            (&primary, "/", OK),
            (&primary, "/primary", OK),
            (&primary, "/master", OK),
            (&primary, "/read-write", OK),
            (&primary, "/leader", OK),
            (&primary, "/standby-leader", NO),
            (&primary, "/standby_leader", NO),
            (&primary, "/primary?tag_zone=b", OK), // tags ignored for leader types
            (&replica, "/", NO),
            (&replica, "/primary", NO),
            (&replica, "/leader", NO),
            (&unleaded_primary, "/primary", NO),
            (&unleaded_primary, "/leader", NO),
            (&standalone, "/primary", OK),
            (&standalone, "/replica", NO),
            // Replica rules.
            (&primary, "/replica", NO),
            (&replica, "/replica", OK),
            (&replica, "/replica?lag=1MB", OK),
            (&stopped_replica, "/replica", NO),
            (&lagging, "/replica", OK), // no lag limit given
            (&lagging, "/replica?lag=10MB", NO),
            (&lagging, "/replica?lag=30MB", OK),
            (&lagging, "/replica?lag=1048576", NO),
            (&replica, "/replica?replication_state=streaming", OK),
            (&archive_replica, "/replica?replication_state=streaming", NO),
            (&archive_replica, "/replica", OK),
            (&tagged, "/replica?tag_zone=a", OK),
            (&tagged, "/replica?tag_zone=b", NO),
            (&tagged, "/replica?tag_rack=1", NO), // missing tag
            (&noloadbalance, "/replica", NO),
            // read-only: primary or replica_ok.
            (&primary, "/read-only", OK),
            (&replica, "/read-only", OK),
            (&lagging, "/read-only?lag=1MB", NO),
            (&stopped_replica, "/read-only", NO),
            (&primary, "/read-only-sync", OK),
            (&replica, "/read-only-sync", NO),
            (&primary, "/read-only-quorum", OK),
            (&replica, "/read-only-quorum", NO),
            // health: postgres running, any role.
            (&primary, "/health", OK),
            (&replica, "/health", OK),
            (&stopped_replica, "/health", NO),
            // sync/async: as the sync key names this member.
            (&sync_replica, "/sync", OK),
            (&sync_replica, "/synchronous", OK),
            (&sync_replica, "/async", NO),
            (&sync_replica, "/read-only-sync", OK),
            (&sync_replica, "/read-only-quorum", OK),
            (&sync_replica, "/quorum", NO),
            (&quorum_replica, "/quorum", OK),
            (&quorum_replica, "/read-only-quorum", OK),
            (&quorum_replica, "/sync", NO),
            (&quorum_replica, "/read-only-sync", NO),
            (&quorum_replica, "/async", NO),
            (&replica, "/quorum", NO),
            (&replica, "/sync", NO),
            (&replica, "/synchronous", NO),
            (&replica, "/async", OK),
            (&replica, "/asynchronous", OK),
            (&primary, "/async", NO),
            (&no_dcs_replica, "/async", NO),
            (&lagging, "/async?lag=1MB", NO),
            // liveness: the loop is not stuck.
            (&replica, "/liveness", OK),
            (&stopped_replica, "/liveness", OK),
            (&stuck, "/liveness", NO),
            (&stuck_primary, "/liveness", NO),
            (&paused_stuck, "/liveness", OK),
            (&cloning, "/liveness", OK),
            (&cloning, "/health", NO),
            // readiness: leader, or a streaming replica near the leader.
            (&primary, "/readiness", OK),
            (&replica, "/readiness", OK),
            (&archive_replica, "/readiness", NO),
            (&lagging, "/readiness", NO), // default lag: maximum_lag_on_failover (1 MB)
            (&lagging, "/readiness?lag=1GB", OK),
            (&no_dcs_replica, "/readiness", NO),
            (&stopped_replica, "/readiness", NO),
            // anything else: 503.
            (&primary, "/nope", NO),
            (&replica, "/quorum", NO),
        ];
        let now = Instant::now();
        for (i, (s, target, want)) in cases.iter().enumerate() {
            let (path, query) = target.split_once('?').map_or((*target, None), |(p, q)| (p, Some(q)));
            let c = Check::parse(path, query).expect("valid query");
            assert_eq!(health_status(&c, s, now), *want, "case {i}: {target} on {} {}", s.role, s.state);
        }
    }

    #[test]
    fn sizes_and_queries() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("10MB"), Some(10 << 20));
        assert_eq!(parse_size("1 GB"), Some(1 << 30));
        assert_eq!(parse_size("16kB"), Some(16 << 10));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("10XB"), None);
        assert!(Check::parse("/replica", Some("lag=lots")).is_err());
        let c = Check::parse("/replica", Some("tag_zone=eu%2Dwest&lag=1MB&junk")).expect("parses");
        assert_eq!(c.tags.get("zone").map(String::as_str), Some("eu-west"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
