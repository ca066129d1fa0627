//! The node's status as `GET /patroni` returns it (Patroni's field names),
//! plus the few facts the health rules need that Patroni keeps elsewhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dcs::values::PATRONI_COMPAT_VERSION;

/// What `GET /patroni` returns. Published by the HA loop (or the standalone
/// supervisor) into a `watch` channel; the API only reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `running`, `starting`, `stopped`, `creating replica`, ...
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster_start_time: Option<String>,
    /// `primary`, `replica`, `uninitialized`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    #[serde(default)]
    pub xlog: Xlog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// A primary's connected replicas (`pg_stat_replication`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<Replication>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_system_identifier: Option<String>,
    /// Whether this node holds the leader key (tusk's addition).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leader: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_unlocked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// Unix time of the last successful read of the DCS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcs_last_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending_restart_reason: BTreeMap<String, PendingChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<ScheduledRestartInfo>,
    pub patroni: PatroniInfo,
    /// WAL archiving, when storage is configured (tusk's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<serde_json::Value>,
    /// Facts the health rules need; not part of the JSON.
    #[serde(skip)]
    pub facts: Facts,
}

/// What the health rules need beyond the status JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Standalone mode: no DCS; the node is its own leader.
    pub standalone: bool,
    /// The leader's WAL position as last seen (`status.optime`, or the
    /// WAL receiver's latest position).
    pub leader_optime: Option<u64>,
    /// `ttl` and `maximum_lag_on_failover` of the dynamic configuration.
    pub ttl: u64,
    pub maximum_lag_on_failover: u64,
    /// When the loop last completed a round (monotonic).
    pub last_loop: Option<std::time::Instant>,
    /// The last read of the DCS succeeded.
    pub dcs_reachable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Xlog {
    /// Primary: current flush position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

impl Xlog {
    /// The position a failover compares: max(received, replayed), or the primary's.
    pub fn position(&self) -> u64 {
        self.location.or(self.received_location.max(self.replayed_location)).unwrap_or(0)
    }
}

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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingChange {
    pub old_value: String,
    pub new_value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduledRestartInfo {
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PatroniInfo {
    pub version: String,
    pub scope: String,
    #[serde(default)]
    pub name: String,
}

impl NodeStatus {
    pub fn new(scope: &str, name: &str) -> NodeStatus {
        NodeStatus {
            state: "starting".into(),
            role: "uninitialized".into(),
            patroni: PatroniInfo { version: PATRONI_COMPAT_VERSION.into(), scope: scope.into(), name: name.into() },
            facts: Facts { ttl: 30, maximum_lag_on_failover: 1 << 20, ..Default::default() },
            ..Default::default()
        }
    }

    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// Holds the leader key (or runs standalone) and serves as primary.
    pub fn is_leader(&self) -> bool {
        (self.leader || self.facts.standalone) && self.running() && self.role == "primary"
    }
}
