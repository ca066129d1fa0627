//! The views that read the DCS (`/cluster`, `/history`, `/config`) and the
//! operations (switchover, failover, restart, reload, reinitialize, config
//! changes), with Patroni's status codes and messages.

// Handlers return their early answers as `Err(Response)`; boxing them
// would buy nothing on this path.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::http::{json, read_json, text};
use super::{ApiState, Command, Reply, RestartRequest};
use crate::dcs::client::{Dcs, Snapshot};
use crate::patroni::{DynamicConfig, Failover, Role, State};
use crate::postgres::wal::format_lsn;

const DCS_TIMEOUT: Duration = Duration::from_secs(5);

fn no_dcs() -> Response<Body> {
    text(StatusCode::SERVICE_UNAVAILABLE, "standalone node: no cluster (no DCS configured)")
}

async fn snapshot(state: &ApiState) -> Result<(Dcs, Snapshot), Response<Body>> {
    let Some(dcs) = state.dcs() else { return Err(no_dcs()) };
    match tokio::time::timeout(DCS_TIMEOUT, dcs.snapshot()).await {
        Ok(Ok(s)) => Ok((dcs, s)),
        Ok(Err(e)) => Err(text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS is not accessible: {e}"))),
        Err(_) => Err(text(StatusCode::SERVICE_UNAVAILABLE, "DCS is not accessible: timeout")),
    }
}

/// `GET /cluster`: every member, as `patronictl list -f json` shows them.
pub(super) async fn cluster(state: &ApiState) -> Response<Body> {
    let (_, snap) = match snapshot(state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let scope = state.status().patroni.scope;
    json(StatusCode::OK, &cluster_json(&scope, &snap))
}

pub(super) fn cluster_json(scope: &str, snap: &Snapshot) -> Value {
    let v = &snap.view;
    let mut members = Vec::new();
    for (name, m) in &v.members {
        let leader = v.leader.as_deref() == Some(name.as_str());
        let mut o = Map::new();
        o.insert("name".into(), json!(name));
        let sync = v.config.synchronous_mode() && v.sync.as_ref().is_some_and(|s| s.is_standby(name));
        let role = match (leader, sync) {
            (true, _) if v.config.standby_cluster.is_some() => "standby_leader",
            (true, _) => "leader",
            (false, true) if v.config.quorum_mode() => "quorum_standby",
            (false, true) => "sync_standby",
            (false, false) => "replica",
        };
        o.insert("role".into(), json!(role));
        let state = match (&m.replication_state, leader) {
            (Some(rs), false) if m.state == State::Running => rs.to_string(),
            _ => m.state.to_string(),
        };
        o.insert("state".into(), json!(state));
        o.insert("api_url".into(), json!(m.api_url));
        if let Some(addr) = m.pg_address()
            && let Some((host, port)) = addr.rsplit_once(':')
        {
            o.insert("host".into(), json!(host.trim_start_matches('[').trim_end_matches(']')));
            o.insert("port".into(), json!(port.parse::<u16>().unwrap_or(5432)));
        }
        if let Some(tl) = m.timeline {
            o.insert("timeline".into(), json!(tl));
        }
        if !m.tags.is_empty() {
            o.insert("tags".into(), json!(m.tags));
        }
        if m.pending_restart {
            o.insert("pending_restart".into(), json!(true));
        }
        if leader {
            if let Some(x) = m.xlog_location {
                o.insert("lsn".into(), json!(format_lsn(x)));
            }
        } else {
            let lag = |pos: Option<u64>| match (v.optime, pos) {
                (Some(o), Some(p)) => json!(o.saturating_sub(p)),
                _ => json!("unknown"),
            };
            if let Some(r) = m.receive_lsn {
                o.insert("receive_lsn".into(), json!(format_lsn(r)));
            }
            o.insert("receive_lag".into(), lag(m.receive_lsn.or(m.xlog_location)));
            if let Some(r) = m.replay_lsn {
                o.insert("replay_lsn".into(), json!(format_lsn(r)));
            }
            o.insert("replay_lag".into(), lag(m.replay_lsn.or(m.xlog_location)));
            o.insert("lag".into(), lag(m.xlog_location));
        }
        members.push(Value::Object(o));
    }
    let mut out = Map::new();
    out.insert("members".into(), Value::Array(members));
    out.insert("scope".into(), json!(scope));
    if v.config.pause {
        out.insert("pause".into(), json!(true));
    }
    if let Some(f) = &v.failover
        && let Some(at) = &f.scheduled_at
    {
        out.insert("scheduled_switchover".into(), json!({"at": at, "from": f.leader, "to": f.member}));
    }
    Value::Object(out)
}

/// `GET /history`: the `history` key (timeline switches).
pub(super) async fn history(state: &ApiState) -> Response<Body> {
    let Some(dcs) = state.dcs() else { return no_dcs() };
    match tokio::time::timeout(DCS_TIMEOUT, dcs.get_raw(&dcs.keys.history())).await {
        Ok(Ok(Some(kv))) => match serde_json::from_slice::<Value>(kv.value()) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("the history key is not JSON: {e}")),
        },
        Ok(Ok(None)) => json(StatusCode::OK, &json!([])),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS is not accessible: {e}")),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "DCS is not accessible: timeout"),
    }
}

/// `GET /config`: the dynamic configuration.
pub(super) async fn get_config(state: &ApiState) -> Response<Body> {
    match snapshot(state).await {
        Ok((_, s)) if s.config_revision.is_some() => json(StatusCode::OK, &s.view.config),
        Ok(_) => text(StatusCode::BAD_GATEWAY, "no configuration in the DCS (cluster not bootstrapped)"),
        Err(r) => r,
    }
}

/// RFC 7386 merge: `null` deletes, objects merge, anything else replaces.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// `PATCH /config`: merges the body into `config` with compare-and-set.
pub(super) async fn patch_config(state: &ApiState, req: Request<Body>) -> Response<Body> {
    let patch = match read_json(req).await {
        Ok(m) => Value::Object(m),
        Err(r) => return r,
    };
    let (dcs, snap) = match snapshot(state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(rev) = snap.config_revision else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no configuration in the DCS (cluster not bootstrapped)");
    };
    let mut current = serde_json::to_value(&snap.view.config).expect("config serializes");
    merge_patch(&mut current, &patch);
    write_config(&dcs, current, Some(rev)).await
}

/// `PUT /config`: replaces `config` (compare-and-set against the version read).
pub(super) async fn put_config(state: &ApiState, req: Request<Body>) -> Response<Body> {
    let body = match read_json(req).await {
        Ok(m) => Value::Object(m),
        Err(r) => return r,
    };
    let (dcs, snap) = match snapshot(state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    write_config(&dcs, body, snap.config_revision).await
}

async fn write_config(dcs: &Dcs, value: Value, rev: Option<i64>) -> Response<Body> {
    let config: DynamicConfig = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not a valid configuration: {e}")),
    };
    let written = match rev {
        Some(rev) => dcs.put_config(&config, rev).await,
        None => dcs.init_config(&config).await,
    };
    match written {
        Ok(true) => json(StatusCode::OK, &config),
        Ok(false) => text(StatusCode::CONFLICT, "the configuration was changed concurrently; read it again"),
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("cannot write the configuration: {e}")),
    }
}

fn field<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Response<Body>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(text(StatusCode::BAD_REQUEST, format!("{key}: expected a string"))),
    }
}

/// A scheduled time: ISO 8601 with a time zone, in the future.
fn parse_schedule(v: &str, what: &str) -> Result<time::OffsetDateTime, Response<Body>> {
    let has_zone = v.ends_with('Z')
        || v.ends_with('z')
        || v.rfind(['+', '-']).is_some_and(|i| i > 10 && v[i + 1..].chars().all(|c| c.is_ascii_digit() || c == ':'));
    if !has_zone {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("Timezone information is mandatory for the scheduled {what}"),
        ));
    }
    let t = parse_time(v)
        .ok_or_else(|| text(StatusCode::UNPROCESSABLE_ENTITY, format!("Unable to parse scheduled timestamp ({v})")))?;
    if t <= time::OffsetDateTime::now_utc() {
        return Err(text(StatusCode::UNPROCESSABLE_ENTITY, format!("Cannot schedule {what} in the past")));
    }
    Ok(t)
}

/// RFC 3339, also with a space instead of `T` (as Python prints it).
pub fn parse_time(v: &str) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let v = v.trim();
    time::OffsetDateTime::parse(v, &Rfc3339).ok().or_else(|| {
        let t = v.replacen(' ', "T", 1);
        // "+00:00" required by RFC 3339; Python may print "+0000".
        time::OffsetDateTime::parse(&t, &Rfc3339).ok().or_else(|| {
            let n = t.len();
            let tail = t.get(n.saturating_sub(5)..)?;
            let compact = tail.starts_with(['+', '-']) && tail[1..].chars().all(|c| c.is_ascii_digit());
            if !compact {
                return None;
            }
            time::OffsetDateTime::parse(&format!("{}:{}", &t[..n - 2], &t[n - 2..]), &Rfc3339).ok()
        })
    })
}

/// `POST /switchover` and `POST /failover`.
pub(super) async fn switchover(state: &ApiState, req: Request<Body>, failover: bool) -> Response<Body> {
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (leader, candidate, scheduled) = match (|| {
        Ok::<_, Response<Body>>((
            field(&body, "leader")?.or(field(&body, "master")?).map(str::to_owned),
            field(&body, "candidate")?.or(field(&body, "member")?).map(str::to_owned),
            field(&body, "scheduled_at")?.map(str::to_owned),
        ))
    })() {
        Ok(v) => v,
        Err(r) => return r,
    };
    let action = if failover { "failover" } else { "switchover" };
    if failover && candidate.is_none() {
        return text(StatusCode::BAD_REQUEST, "Failover could be performed only to a specific candidate");
    }
    if !failover && leader.is_none() {
        return text(StatusCode::BAD_REQUEST, "Switchover could be performed only from a specific leader");
    }
    if failover && scheduled.is_some() {
        return text(StatusCode::BAD_REQUEST, "Failover can't be scheduled");
    }
    let (dcs, snap) = match snapshot(state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let v = &snap.view;
    if v.config.pause && candidate.is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{} is possible only to a specific candidate in a paused state", title(action)),
        );
    }
    let at = match &scheduled {
        Some(_) if v.config.pause => {
            return text(StatusCode::BAD_REQUEST, "Can't schedule switchover in the paused state");
        }
        Some(s) => match parse_schedule(s, action) {
            Ok(t) => Some(t),
            Err(r) => return r,
        },
        None => None,
    };
    if let Some(l) = &leader
        && v.leader.as_ref() != Some(l)
    {
        return text(StatusCode::PRECONDITION_FAILED, "leader name does not match");
    }
    if let Some(c) = &candidate {
        if !v.members.contains_key(c) {
            return text(StatusCode::PRECONDITION_FAILED, "candidate does not exist");
        }
        if v.leader.as_ref() == Some(c) {
            return text(StatusCode::PRECONDITION_FAILED, format!("{} target and source are the same", title(action)));
        }
    }
    if v.leader.is_none() && !failover {
        return text(StatusCode::PRECONDITION_FAILED, "Switchover is not possible: the cluster has no leader");
    }
    // A scheduled switchover is checked when it is due.
    if at.is_none() {
        let names: Vec<_> = v
            .members
            .iter()
            .filter(|(n, _)| v.leader.as_ref() != Some(*n) && candidate.as_ref().is_none_or(|c| c == *n))
            .map(|(n, m)| (n.clone(), m.api_url.clone()))
            .collect();
        if names.is_empty() {
            return text(
                StatusCode::PRECONDITION_FAILED,
                "failover is not possible: cluster does not have members except leader",
            );
        }
        let checks = names.iter().map(|(_, url)| state.peers().peer_status(url, Duration::from_secs(2)));
        let replies = futures_util::future::join_all(checks).await;
        let healthy = replies.iter().flatten().any(|s| {
            s.state == State::Running
                && s.role == Role::Replica
                && s.tags.get("nofailover").is_none_or(|t| t.as_bool() != Some(true))
        });
        if !healthy {
            return text(
                StatusCode::PRECONDITION_FAILED,
                "failover is not possible: no good candidates have been found",
            );
        }
    }
    let request = Failover {
        leader: leader.clone(),
        member: candidate.clone(),
        scheduled_at: at
            .map(|t| t.format(&time::format_description::well_known::Rfc3339).expect("a parsed time formats")),
    };
    match dcs.put_failover(&request, Some(snap.failover_revision.unwrap_or(0))).await {
        Ok(true) => {}
        Ok(false) if snap.view.failover.is_some() => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "another switchover or failover is pending");
        }
        Ok(false) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "failed to write the failover key: changed concurrently");
        }
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("failed to write the failover key: {e}")),
    }
    let _ = state.commands().try_send(Command::Wake);
    if at.is_some() {
        return text(StatusCode::ACCEPTED, format!("{} scheduled", title(action)));
    }
    poll_result(&dcs, action, snap.view.leader.as_deref(), candidate.as_deref(), v.config.normalized().loop_wait).await
}

fn title(action: &str) -> String {
    let mut c = action.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// Waits for the leader to change (up to 2 × max(10, loop_wait) s).
async fn poll_result(
    dcs: &Dcs,
    action: &str,
    old_leader: Option<&str>,
    candidate: Option<&str>,
    loop_wait: u64,
) -> Response<Body> {
    let verb = if action == "failover" { "failed" } else { "switched" };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2 * loop_wait.max(10));
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(Ok(s)) = tokio::time::timeout(DCS_TIMEOUT, dcs.snapshot()).await else { continue };
        if let Some(new) = s.view.leader.as_deref()
            && Some(new) != old_leader
        {
            return match candidate {
                Some(c) if c != new => {
                    text(StatusCode::OK, format!("{} over to \"{new}\" instead of \"{c}\"", title(verb)))
                }
                _ => text(StatusCode::OK, format!("Successfully {verb} over to \"{new}\"")),
            };
        }
        if s.view.failover.is_none() && s.view.leader.as_deref() == old_leader {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{} failed", title(action)));
        }
    }
    text(StatusCode::SERVICE_UNAVAILABLE, format!("{} status unknown", title(action)))
}

/// `DELETE /switchover`: cancels a scheduled switchover.
pub(super) async fn cancel_switchover(state: &ApiState) -> Response<Body> {
    let (dcs, snap) = match snapshot(state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if snap.view.failover.as_ref().is_none_or(|f| f.scheduled_at.is_none()) {
        return text(StatusCode::NOT_FOUND, "No scheduled switchover");
    }
    match dcs.put_failover(&Failover::default(), snap.failover_revision).await {
        Ok(true) => text(StatusCode::OK, "scheduled switchover deleted"),
        Ok(false) => text(StatusCode::CONFLICT, "the switchover changed concurrently"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("cannot delete the switchover: {e}")),
    }
}

/// Sends a command to the HA loop and waits for its reply.
async fn ask(state: &ApiState, make: impl FnOnce(oneshot::Sender<Reply>) -> Command, wait: Duration) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    if state.commands().try_send(make(tx)).is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many operations pending; try again");
    }
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(r)) => text(r.code, r.body),
        Ok(Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "no answer from the HA loop in time"),
    }
}

/// `POST /restart`.
pub(super) async fn restart(state: &ApiState, req: Request<Body>) -> Response<Body> {
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut r = RestartRequest::default();
    for (k, v) in body.iter().filter(|(_, v)| !v.is_null()) {
        match (k.as_str(), v) {
            ("schedule", Value::String(s)) => match parse_schedule(s, "restart") {
                Ok(t) => r.schedule = Some(t),
                Err(resp) => return resp,
            },
            ("role", Value::String(s)) => match s.as_str() {
                "primary" | "master" | "replica" => r.role = Some(s.clone()),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("PostgreSQL role should be either primary or replica, not {s:?}"),
                    );
                }
            },
            ("postgres_version", Value::String(s)) => {
                if version_num(s).is_none() {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("PostgreSQL version should be in the first.major.minor format: {s:?}"),
                    );
                }
                r.postgres_version = Some(s.clone());
            }
            ("restart_pending", Value::Bool(b)) => r.restart_pending = *b,
            ("restart_pending", Value::String(s)) => {
                r.restart_pending = matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1")
            }
            ("timeout", v) => {
                let secs = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => seconds(s),
                    _ => None,
                };
                match secs {
                    Some(s) if s > 0.0 && s < 86_400.0 => r.timeout = Some(Duration::from_secs_f64(s)),
                    _ => return text(StatusCode::BAD_REQUEST, format!("timeout: {v} is not a duration")),
                }
            }
            (k, v) => return text(StatusCode::BAD_REQUEST, format!("{k}: unexpected value {v}")),
        }
    }
    let wait = r.timeout.unwrap_or(Duration::from_secs(60)) + Duration::from_secs(15);
    ask(state, |tx| Command::Restart(r, tx), wait).await
}

/// `"30s"`, `"2m"`, `"30"` → seconds.
pub(super) fn seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("min") {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    num.trim().parse::<f64>().ok().map(|n| n * mult)
}

/// `"15.2"` → 150002, `"9.6.24"` → 90624 (server_version_num).
pub fn version_num(v: &str) -> Option<u32> {
    let parts: Vec<u32> = v.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch] if *major < 10 => Some(major * 10000 + minor * 100 + patch),
        [major, minor, _] => Some(major * 10000 + minor),
        _ => None,
    }
}

/// `DELETE /restart`.
pub(super) async fn cancel_restart(state: &ApiState) -> Response<Body> {
    ask(state, Command::CancelRestart, Duration::from_secs(10)).await
}

/// `POST /reload`: the SIGHUP path, asynchronously.
pub(super) async fn reload(state: &ApiState) -> Response<Body> {
    match state.commands().try_send(Command::Reload) {
        Ok(()) => text(StatusCode::ACCEPTED, "reload scheduled"),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "too many operations pending; try again"),
    }
}

/// `POST /reinitialize`.
pub(super) async fn reinitialize(state: &ApiState, req: Request<Body>) -> Response<Body> {
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let force = match body.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return text(StatusCode::BAD_REQUEST, format!("force: expected a boolean, not {v}")),
    };
    ask(state, |reply| Command::Reinitialize { force, reply }, Duration::from_secs(60)).await
}

fn failsafe_disabled() -> Response<Body> {
    text(StatusCode::BAD_GATEWAY, "Failsafe mode is not enabled")
}

/// `GET /failsafe`: the members of the `failsafe` key as last read.
pub(super) fn get_failsafe(state: &ApiState) -> Response<Body> {
    let st = state.0.status.borrow();
    if !st.facts.failsafe_mode {
        return failsafe_disabled();
    }
    json(StatusCode::OK, &st.facts.failsafe.clone().unwrap_or_default())
}

/// `POST /failsafe` from a primary that cannot reach etcd: a replica
/// accepts (and then does not race for the leader key for a `ttl`) and
/// answers its WAL position in an `lsn` header; a running primary refuses.
pub(super) async fn post_failsafe(state: &ApiState, req: Request<Body>) -> Response<Body> {
    if !state.0.status.borrow().facts.failsafe_mode {
        return failsafe_disabled();
    }
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "name is required");
    };
    let st = state.0.status.borrow().clone();
    if st.role == Role::Primary && st.running() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader");
    }
    let notice = super::FailsafeNotice { name: name.to_owned(), received: std::time::Instant::now() };
    if state.0.failsafe.borrow().as_ref().is_none_or(|n| n.name != notice.name) {
        tracing::info!(primary = name, "failsafe mode: the primary runs without etcd; not racing for the leader key");
    }
    state.0.failsafe.send_replace(Some(notice));
    let mut resp = text(StatusCode::OK, "Accepted");
    resp.headers_mut().insert("lsn", st.xlog.position().into());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rules() {
        let mut t = json!({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}, "pause": true});
        merge_patch(&mut t, &json!({"ttl": 20, "postgresql": {"parameters": {"a": null, "c": 3}}, "pause": null}));
        assert_eq!(t, json!({"ttl": 20, "postgresql": {"parameters": {"b": 2, "c": 3}}}));
    }

    #[test]
    fn times_versions_durations() {
        assert!(parse_time("2030-01-02T03:04:05+00:00").is_some());
        assert!(parse_time("2030-01-02 03:04:05+00:00").is_some());
        assert!(parse_time("2030-01-02T03:04:05Z").is_some());
        assert!(parse_time("2030-01-02T03:04:05+0200").is_some());
        assert!(parse_time("tomorrow").is_none());
        assert_eq!(version_num("15.2"), Some(150002));
        assert_eq!(version_num("9.6.24"), Some(90624));
        assert_eq!(version_num("15"), None);
        assert_eq!(seconds("30s"), Some(30.0));
        assert_eq!(seconds("2m"), Some(120.0));
        assert_eq!(seconds("45"), Some(45.0));
        assert_eq!(seconds("x"), None);
    }
}
