//! The node's status as `GET /patroni` returns it (Patroni's field names),
//! plus the few facts the health rules need that Patroni keeps elsewhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::patroni::Replication;
use crate::patroni::{PATRONI_COMPAT_VERSION, ReplicationState, Role, State};
use crate::postgres::replication::Position;
use crate::postgres::sql::Details;

/// What `GET /patroni` returns. Published by the HA loop (or the standalone
/// supervisor) into a `watch` channel; the API only reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster_start_time: Option<String>,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    #[serde(default)]
    pub xlog: Xlog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<ReplicationState>,
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
    /// etcd is unreachable and the primary runs on its members'
    /// confirmations (failsafe mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failsafe_mode_is_active: bool,
    /// Unix time of the last successful read of the DCS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcs_last_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, serde_json::Value>,
    /// Named a synchronous standby in the `sync` key (synchronous mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_standby: bool,
    /// One of the `sync` key's voters in quorum mode (Patroni 4).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quorum_standby: bool,
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
    /// `failsafe_mode` of the dynamic configuration, and the `failsafe`
    /// key's members as last read (`GET /failsafe`).
    pub failsafe_mode: bool,
    pub failsafe: Option<BTreeMap<String, String>>,
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
            state: State::Starting,
            role: Role::Uninitialized,
            patroni: PatroniInfo { version: PATRONI_COMPAT_VERSION.into(), scope: scope.into(), name: name.into() },
            facts: Facts { ttl: 30, maximum_lag_on_failover: 1 << 20, ..Default::default() },
            ..Default::default()
        }
    }

    /// What postgres says about itself, in Patroni's fields (the one place
    /// the status is filled from postgres, for both modes): positions,
    /// timeline, replay details, start time, pending restarts, a primary's
    /// replicas. `None`: not known (postgres not connected).
    pub fn set_postgres(&mut self, pos: Option<&Position>, details: Option<&Details>) {
        self.timeline = pos.map(|p| p.timeline);
        self.replication_state = pos.and_then(|p| p.replication_state());
        self.xlog = match pos {
            Some(p) if !p.in_recovery => Xlog { location: Some(p.wal), ..Default::default() },
            Some(p) => Xlog {
                location: None,
                received_location: p.receive,
                replayed_location: p.replay,
                replayed_timestamp: details.and_then(|d| d.replayed_timestamp.clone()),
                paused: details.and_then(|d| d.replay_paused),
            },
            None => Xlog::default(),
        };
        if let Some(v) = details.and_then(|d| d.server_version) {
            self.server_version = Some(v);
        }
        self.postmaster_start_time = details.and_then(|d| d.postmaster_start_time.clone());
        self.pending_restart = details.is_some_and(|d| !d.pending_restart.is_empty());
        self.pending_restart_reason = details
            .map(|d| {
                d.pending_restart
                    .iter()
                    .map(|(name, old, new)| {
                        (name.clone(), PendingChange { old_value: old.clone(), new_value: new.clone() })
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.replication = details.map(|d| d.replication.clone()).unwrap_or_default();
    }

    /// Between rounds: only the moving parts (positions, replay details, a
    /// primary's replicas) of a running node.
    pub fn refresh_positions(&mut self, p: &Position, details: Option<&Details>) {
        if !self.running() {
            return;
        }
        self.timeline = Some(p.timeline);
        if p.in_recovery {
            self.xlog.received_location = p.receive;
            self.xlog.replayed_location = p.replay;
            self.replication_state = p.replication_state();
            self.facts.leader_optime = self.facts.leader_optime.max(p.receive);
        } else {
            self.xlog.location = Some(p.wal);
        }
        if let Some(d) = details {
            if p.in_recovery {
                self.xlog.replayed_timestamp = d.replayed_timestamp.clone();
                self.xlog.paused = d.replay_paused;
            } else {
                self.replication = d.replication.clone();
            }
        }
    }

    pub fn running(&self) -> bool {
        self.state == State::Running
    }

    /// Holds the leader key (or runs standalone) and serves as primary.
    pub fn is_leader(&self) -> bool {
        (self.leader || self.facts.standalone) && self.running() && self.role == Role::Primary
    }
}
