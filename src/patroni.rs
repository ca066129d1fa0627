//! Patroni's wire values: what it keeps in etcd (reference/spilo-patroni.md
//! §2.2–2.3) and the parts of its REST API JSON that other layers produce,
//! as typed structs that serialize to the exact JSON Patroni and
//! `patronictl` read.
//!
//! A leaf: it imports nothing from the crate, so the configuration, the DCS
//! client, PostgreSQL's SQL and the REST API can all use it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The Patroni version tusk announces in member keys: readers treat members
/// below 2.1.0 as legacy, so this must stay at or above it.
pub const PATRONI_COMPAT_VERSION: &str = "3.0.2";

/// Enums with Patroni's spelling: serialized as that exact string; read
/// also under the aliases after `|` (another Patroni version's spelling of
/// the same thing); any other string (a newer Patroni's) is kept as `Other`.
macro_rules! spelled {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal $(| $alias:literal)*,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A value tusk does not write (another Patroni version's).
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text $(| $alias)* => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match $name::from(s.as_str()) {
                    $name::Other(_) => $name::Other(s),
                    known => known,
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $name::Other(s) => s,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

spelled! {
    /// A member's state (`members/<name>` and `GET /patroni`).
    State {
        Running = "running",
        #[default]
        Starting = "starting",
        Stopping = "stopping",
        Stopped = "stopped",
        Crashed = "crashed",
        Restarting = "restarting",
        CreatingReplica = "creating replica",
        RunningPgRewind = "running pg_rewind",
        InitializingNewCluster = "initializing new cluster",
        /// pg_rewind failed and the data directory was kept
        /// (`remove_data_directory_on_rewind_failure` is false): the member
        /// stays stopped until a reinit.
        RewindFailed = "rewind failed",
    }
}

spelled! {
    /// A member's role (older Patroni, 3.0.2 among them, writes `master`: read
    /// as primary).
    Role {
        Primary = "primary" | "master",
        Replica = "replica",
        #[default]
        Uninitialized = "uninitialized",
        Demoted = "demoted",
        StandbyLeader = "standby_leader",
    }
}

spelled! {
    /// A replica's `replication_state` (member key, `GET /patroni`).
    ReplicationState {
        Streaming = "streaming",
        #[default]
        InArchiveRecovery = "in archive recovery",
    }
}

/// `members/<name>`: written by every member on its own lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberValue {
    /// `postgres://<PG_CONNECT_ADDRESS>/postgres`
    pub conn_url: String,
    /// `http://<RESTAPI_CONNECT_ADDRESS>/patroni`
    pub api_url: String,
    pub state: State,
    pub role: Role,
    pub version: String,
    /// Primary: flush LSN; replica: max(receive, replay); bytes from 0/0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<ReplicationState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// The member has seen maintenance mode (`patronictl pause --wait` reads it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// A restart scheduled through the REST API (`patronictl list` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<serde_json::Value>,
}

/// Patroni's `failover_priority` tag (default 1; 0 is `nofailover`).
pub fn failover_priority(tags: &BTreeMap<String, serde_json::Value>) -> u64 {
    tags.get("failover_priority").and_then(as_u64).unwrap_or(1)
}

/// `nofailover`, or a `failover_priority` of 0 (Patroni 3.2's rule).
pub fn tagged_nofailover(tags: &BTreeMap<String, serde_json::Value>) -> bool {
    tags.get("nofailover").is_some_and(truthy) || failover_priority(tags) == 0
}

impl MemberValue {
    /// The `nofailover` tag (Patroni accepts booleans and truthy strings),
    /// or `failover_priority: 0`.
    pub fn nofailover(&self) -> bool {
        tagged_nofailover(&self.tags)
    }

    /// The `replicatefrom` tag: the member this one streams from (cascading
    /// replication) instead of the leader.
    pub fn replicatefrom(&self) -> Option<&str> {
        self.tags.get("replicatefrom").and_then(serde_json::Value::as_str).filter(|s| !s.is_empty())
    }

    /// The `clonefrom` tag: new replicas may copy their data from it.
    pub fn clonefrom(&self) -> bool {
        self.tags.get("clonefrom").is_some_and(truthy)
    }

    /// `host:port` of `conn_url`.
    pub fn pg_address(&self) -> Option<&str> {
        let rest = self.conn_url.strip_prefix("postgres://").or_else(|| self.conn_url.strip_prefix("postgresql://"))?;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        Some(rest.split('/').next().unwrap_or(rest))
    }
}

/// `config`: the dynamic configuration, shared by all members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicConfig {
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    #[serde(default = "default_loop_wait")]
    pub loop_wait: u64,
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout: u64,
    #[serde(default = "default_max_lag")]
    pub maximum_lag_on_failover: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    #[serde(default)]
    pub postgresql: PostgresqlSection,
    /// This cluster replicates another one; its leader is a standby leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_cluster: Option<StandbyCluster>,
    /// Everything else Patroni or users put there, kept as is.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `standby_cluster` (Patroni's keys): where the standby leader replicates
/// from: a remote primary (`host`, `port`, `primary_slot_name`) and/or an
/// archive (`restore_command`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StandbyCluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A number or a string, as Patroni accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_slot_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl StandbyCluster {
    /// `host:port` of the remote primary, if there is one (port 5432 by default).
    pub fn address(&self) -> Option<String> {
        let host = self.host.as_deref().filter(|h| !h.is_empty())?;
        let port = match &self.port {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(5432),
            Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(5432),
            _ => 5432,
        };
        Some(format!("{host}:{port}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostgresqlSection {
    #[serde(default = "yes")]
    pub use_pg_rewind: bool,
    #[serde(default = "yes")]
    pub use_slots: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, serde_json::Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl PostgresqlSection {
    /// `pg_hba`: the lines of `pg_hba.conf` (an empty list or anything
    /// else than a list of strings: none, as Patroni leaves it).
    pub fn pg_hba(&self) -> Option<Vec<String>> {
        let lines: Option<Vec<String>> = self
            .other
            .get("pg_hba")?
            .as_array()?
            .iter()
            .map(|l| l.as_str().filter(|l| !l.contains('\n')).map(str::to_owned))
            .collect();
        lines.filter(|l| !l.is_empty())
    }

    /// Patroni's `remove_data_directory_on_rewind_failure` (default false):
    /// a failed pg_rewind removes the data directory and clones again,
    /// rather than keeping the diverged data for the operator.
    pub fn remove_data_directory_on_rewind_failure(&self) -> bool {
        self.flag("remove_data_directory_on_rewind_failure")
    }

    /// Patroni's `remove_data_directory_on_diverged_timelines` (default
    /// false): a former primary that diverged where pg_rewind cannot mend it
    /// (its timeline number is the leader's) is cloned again.
    pub fn remove_data_directory_on_diverged_timelines(&self) -> bool {
        self.flag("remove_data_directory_on_diverged_timelines")
    }

    fn flag(&self, name: &str) -> bool {
        match self.other.get(name) {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
            }
            _ => false,
        }
    }
}

impl Default for PostgresqlSection {
    fn default() -> Self {
        PostgresqlSection { use_pg_rewind: true, use_slots: true, parameters: BTreeMap::new(), other: BTreeMap::new() }
    }
}

fn default_ttl() -> u64 {
    30
}
fn default_loop_wait() -> u64 {
    10
}
fn default_retry_timeout() -> u64 {
    10
}
/// Spilo's default: 32 MiB (Patroni's own is 1 MiB).
fn default_max_lag() -> u64 {
    32 << 20
}
fn yes() -> bool {
    true
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: default_ttl(),
            loop_wait: default_loop_wait(),
            retry_timeout: default_retry_timeout(),
            maximum_lag_on_failover: default_max_lag(),
            pause: false,
            postgresql: PostgresqlSection::default(),
            standby_cluster: None,
            other: BTreeMap::new(),
        }
    }
}

impl DynamicConfig {
    /// Floors that keep the loop sane: ttl ≥ 5 s, loop_wait ≥ 1 s,
    /// 1 s ≤ retry_timeout < ttl. Unlike Patroni ≥ 3.2, tusk does not need
    /// `loop_wait + 2 * retry_timeout ≤ ttl`: its leader renews the lease on
    /// its own schedule and demotes on a deadline from the last successful
    /// keepalive, so 10/2/5 (a setting Patroni 3.0.2 runs with) stays 10/2/5.
    /// `synchronous_mode`: `true`/`on`, or Patroni 4's `quorum`
    /// ([`DynamicConfig::quorum_mode`]).
    pub fn synchronous_mode(&self) -> bool {
        self.other.get("synchronous_mode").is_some_and(|v| match v {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::String(s) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1" | "quorum")
            }
            _ => false,
        })
    }

    /// `synchronous_mode: quorum` (Patroni 4's quorum commit): every
    /// eligible standby is listed in `ANY n (...)`, and a member may take
    /// over once enough of them confirm it is not behind.
    pub fn quorum_mode(&self) -> bool {
        self.other
            .get("synchronous_mode")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("quorum"))
    }

    /// `synchronous_mode_strict`: never acknowledge a commit without a
    /// synchronous standby.
    pub fn synchronous_mode_strict(&self) -> bool {
        self.synchronous_mode() && self.other.get("synchronous_mode_strict").is_some_and(truthy)
    }

    /// `synchronous_node_count` (default 1).
    pub fn synchronous_node_count(&self) -> usize {
        self.other.get("synchronous_node_count").and_then(as_u64).map_or(1, |n| n.clamp(1, 64) as usize)
    }

    /// `check_timeline`: a member on an older timeline than the cluster's
    /// (the `history` key) does not take over.
    pub fn check_timeline(&self) -> bool {
        self.other.get("check_timeline").is_some_and(truthy)
    }

    /// `failsafe_mode`: a primary that loses etcd keeps running while
    /// every member in the `failsafe` key confirms it (`POST /failsafe`).
    pub fn failsafe_mode(&self) -> bool {
        self.other.get("failsafe_mode").is_some_and(truthy)
    }

    /// `primary_start_timeout` (Patroni 2's `master_start_timeout`), default
    /// 300 s: how long a crashed primary may take to come back in place
    /// before the leader key is released.
    pub fn primary_start_timeout(&self) -> std::time::Duration {
        let v = self.other.get("primary_start_timeout").or_else(|| self.other.get("master_start_timeout"));
        std::time::Duration::from_secs(v.and_then(as_u64).unwrap_or(300))
    }

    /// `primary_stop_timeout` (in synchronous mode only; `None`: unset or
    /// ≤ 0): how long a primary's stop may take before postgres is killed.
    pub fn primary_stop_timeout(&self) -> Option<std::time::Duration> {
        let v = self.other.get("primary_stop_timeout").or_else(|| self.other.get("master_stop_timeout"));
        v.and_then(as_u64).filter(|s| *s > 0 && self.synchronous_mode()).map(std::time::Duration::from_secs)
    }

    /// `maximum_lag_on_syncnode` in bytes (`None`: -1, off).
    pub fn maximum_lag_on_syncnode(&self) -> Option<u64> {
        self.other.get("maximum_lag_on_syncnode").and_then(as_u64).filter(|n| *n > 0)
    }

    pub fn normalized(&self) -> DynamicConfig {
        let mut c = self.clone();
        c.ttl = c.ttl.max(5);
        c.loop_wait = c.loop_wait.max(1);
        c.retry_timeout = c.retry_timeout.clamp(1, c.ttl - 1);
        c
    }
}

/// `sync`: who may be promoted in synchronous mode (the leader and its
/// synchronous standbys, comma-separated as Patroni writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    /// Quorum mode (Patroni 4): how many of the standbys (`voters`) a
    /// member must hear from, besides itself when it is one, before it may
    /// take over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u64>,
}

impl SyncState {
    pub fn new(leader: &str, standbys: &[String]) -> SyncState {
        SyncState {
            leader: Some(leader.to_owned()),
            sync_standby: Some(standbys.join(",")).filter(|s| !s.is_empty()),
            quorum: None,
        }
    }

    /// Quorum mode's key: `voters` and how many must confirm.
    pub fn quorum_of(leader: &str, voters: &[String], quorum: u64) -> SyncState {
        SyncState { quorum: Some(quorum), ..SyncState::new(leader, voters) }
    }

    /// The synchronous standbys.
    pub fn standbys(&self) -> Vec<String> {
        self.sync_standby
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Patroni's `is_empty`: no leader recorded, so it restricts nobody.
    pub fn is_empty(&self) -> bool {
        self.leader.as_deref().is_none_or(str::is_empty)
    }

    /// `name` is the recorded leader or one of its synchronous standbys
    /// (case-insensitive, as Patroni compares).
    pub fn matches(&self, name: &str) -> bool {
        self.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(name)) || self.is_standby(name)
    }

    /// `name` is one of the synchronous standbys.
    pub fn is_standby(&self, name: &str) -> bool {
        self.standbys().iter().any(|s| s.eq_ignore_ascii_case(name))
    }
}

fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"),
        _ => false,
    }
}

/// A number, or a string holding one (Patroni accepts both).
fn as_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `failover`: a requested switchover or failover. Cleared by writing `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The candidate (`member` in Patroni's JSON; `candidate` accepted too).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "candidate")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl Failover {
    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none() && self.scheduled_at.is_none()
    }
}

/// `status`: the leader's last WAL position (and slots).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub optime: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u64>,
    /// Patroni 4: the member slots the leader keeps (`member_slots_ttl`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain_slots: Vec<String>,
}

/// The cluster's timeline by the `history` key, as Patroni reads it: the
/// last line's parent timeline + 1; `[]` is timeline 1; 0 when unknown.
pub fn history_timeline(value: &str) -> u32 {
    match serde_json::from_str::<Vec<Vec<serde_json::Value>>>(value) {
        Ok(lines) if lines.is_empty() => 1,
        Ok(lines) => lines
            .last()
            .and_then(|l| l.first())
            .and_then(|tl| tl.as_u64().or_else(|| tl.as_str().and_then(|s| s.parse().ok())))
            .and_then(|tl| u32::try_from(tl).ok())
            .map_or(0, |tl| tl.saturating_add(1)),
        Err(_) => 0,
    }
}

/// The `history` key's lines as `(parent timeline, switch LSN, reason)`,
/// the content of the cluster's newest timeline history file; a line that
/// does not parse ends the list (what follows it cannot be placed).
pub fn history_entries(value: &str) -> Vec<(u32, u64, String)> {
    let Ok(lines) = serde_json::from_str::<Vec<Vec<serde_json::Value>>>(value) else { return Vec::new() };
    let num =
        |v: Option<&serde_json::Value>| v.and_then(|x| x.as_u64().or_else(|| x.as_str().and_then(|s| s.parse().ok())));
    lines
        .iter()
        .map_while(|l| {
            let tli = u32::try_from(num(l.first())?).ok()?;
            let lsn = num(l.get(1))?;
            Some((tli, lsn, l.get(2).and_then(|r| r.as_str()).unwrap_or_default().to_owned()))
        })
        .collect()
}

/// One line of `history`: `[parent timeline, switch LSN, reason, timestamp, new leader]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryLine(pub u32, pub u64, pub String, pub String, pub String);

/// One row of a primary's `replication` list in `GET /patroni`
/// (`pg_stat_replication`), with Patroni's field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replication {
    pub usename: String,
    pub application_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    /// Bytes between the primary's flush position and the replica's replay
    /// position (tusk's addition; for `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_stop_timeout_applies_in_synchronous_mode_only() {
        let c = |json: &str| serde_json::from_str::<DynamicConfig>(json).expect("config");
        let secs = std::time::Duration::from_secs;
        assert_eq!(c(r#"{"primary_stop_timeout":5}"#).primary_stop_timeout(), None);
        assert_eq!(c(r#"{"synchronous_mode":true,"primary_stop_timeout":5}"#).primary_stop_timeout(), Some(secs(5)));
        assert_eq!(c(r#"{"synchronous_mode":true,"master_stop_timeout":"7"}"#).primary_stop_timeout(), Some(secs(7)));
        assert_eq!(c(r#"{"synchronous_mode":true,"primary_stop_timeout":0}"#).primary_stop_timeout(), None);
        assert_eq!(c(r#"{"synchronous_mode":true}"#).primary_stop_timeout(), None);
        assert!(c(r#"{"check_timeline":true}"#).check_timeline());
        assert!(!c("{}").check_timeline());
        assert!(c(r#"{"failsafe_mode":"on"}"#).failsafe_mode());
    }

    #[test]
    fn entries_from_history() {
        assert_eq!(history_entries("[]"), vec![]);
        assert_eq!(history_entries("not json"), vec![]);
        assert_eq!(
            history_entries(
                r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n2"],["2","33554592","x"],[3]]"#
            ),
            vec![(1, 25165984, "no recovery target specified".to_owned()), (2, 33554592, "x".to_owned())]
        );
    }

    #[test]
    fn timeline_from_history() {
        assert_eq!(history_timeline("[]"), 1);
        assert_eq!(history_timeline(r#"[[1,25165984,"no recovery target specified"]]"#), 2);
        assert_eq!(
            history_timeline(
                r#"[[1,1,"a"],[2,50331808,"no recovery target specified","2024-08-28T19:39:26+00:00","n2"]]"#
            ),
            3
        );
        assert_eq!(history_timeline(r#"[["4",1,"a"]]"#), 5);
        assert_eq!(history_timeline("not json"), 0);
    }

    #[test]
    fn member_json_is_patronis() {
        let m = MemberValue {
            conn_url: "postgres://10.0.0.11:5432/postgres".into(),
            api_url: "http://10.0.0.11:8008/patroni".into(),
            state: State::Running,
            role: Role::Primary,
            version: PATRONI_COMPAT_VERSION.into(),
            xlog_location: Some(67420024),
            timeline: Some(3),
            tags: BTreeMap::new(),
            replication_state: None,
            receive_lsn: None,
            replay_lsn: None,
            pending_restart: false,
            pause: false,
            scheduled_restart: None,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"conn_url":"postgres://10.0.0.11:5432/postgres","api_url":"http://10.0.0.11:8008/patroni","state":"running","role":"primary","version":"3.0.2","xlog_location":67420024,"timeline":3}"#
        );
        assert_eq!(m.pg_address(), Some("10.0.0.11:5432"));
        // A Patroni 4 member value with extra fields parses.
        let p: MemberValue = serde_json::from_str(
            r#"{"conn_url":"postgres://h:5432/postgres","api_url":"http://h:8008/patroni","state":"running","role":"replica","version":"4.0.4","xlog_location":5,"timeline":1,"tags":{"nofailover":true},"replication_state":"streaming","receive_lsn":5,"replay_lsn":4,"proxy_url":"x"}"#,
        )
        .unwrap();
        assert!(p.nofailover());
        assert_eq!(p.replication_state, Some(ReplicationState::Streaming));
    }

    #[test]
    fn states_and_roles_keep_patronis_spelling() {
        for text in ["running", "creating replica", "running pg_rewind", "initializing new cluster", "streaming"] {
            let v: State = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(serde_json::to_value(&v).unwrap(), serde_json::json!(text));
            assert_eq!(v.to_string(), text);
        }
        assert_eq!(State::from("running pg_rewind"), State::RunningPgRewind);
        assert_eq!(State::from("streaming"), State::Other("streaming".into()));
        assert_eq!(Role::from("primary"), Role::Primary);
        assert_eq!(Role::from("master"), Role::Primary);
        assert_eq!(String::from(Role::from("master")), "primary");
        assert_eq!(serde_json::to_string(&Role::Uninitialized).unwrap(), r#""uninitialized""#);
    }

    #[test]
    fn config_defaults_and_unknown_fields_survive() {
        let c: DynamicConfig = serde_json::from_str(
            r#"{"ttl":30,"loop_wait":10,"synchronous_mode":false,"postgresql":{"use_slots":false,"pg_hba":[]}}"#,
        )
        .unwrap();
        assert_eq!((c.ttl, c.loop_wait, c.retry_timeout), (30, 10, 10));
        assert_eq!(c.maximum_lag_on_failover, 32 << 20);
        assert!(!c.postgresql.use_slots && c.postgresql.use_pg_rewind);
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["synchronous_mode"], false);
        assert!(back["postgresql"]["pg_hba"].is_array());
    }

    #[test]
    fn timing_floors() {
        for ((ttl, lw, rt), want) in
            [((30, 10, 10), (30, 10, 10)), ((10, 2, 5), (10, 2, 5)), ((1, 0, 0), (5, 1, 1)), ((10, 2, 50), (10, 2, 9))]
        {
            let c = DynamicConfig { ttl, loop_wait: lw, retry_timeout: rt, ..Default::default() }.normalized();
            assert_eq!((c.ttl, c.loop_wait, c.retry_timeout), want, "{ttl}/{lw}/{rt}");
        }
    }

    #[test]
    fn failover_json() {
        let f: Failover = serde_json::from_str(r#"{"leader":"a","member":"b","scheduled_at":null}"#).unwrap();
        assert_eq!(f.member.as_deref(), Some("b"));
        assert_eq!(serde_json::to_string(&Failover::default()).unwrap(), "{}");
        let h = HistoryLine(
            1,
            25623960,
            "no recovery target specified".into(),
            "2019-09-23T16:57:57+02:00".into(),
            "node2".into(),
        );
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"[1,25623960,"no recovery target specified","2019-09-23T16:57:57+02:00","node2"]"#
        );
    }
}
