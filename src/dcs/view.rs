//! The cluster as the HA decision sees it: the values of one snapshot of
//! the cluster's keys.

use std::collections::BTreeMap;

use crate::patroni::{DynamicConfig, Failover, MemberValue, SyncState};

/// The cluster as read from etcd (after any loss of contact: re-read).
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// `None`: no `initialize` key; `Some("")`: bootstrap in progress;
    /// `Some(sysid)`: the cluster's system identifier.
    pub initialize: Option<String>,
    pub config: DynamicConfig,
    /// The leader key's value: the leader's member name.
    pub leader: Option<String>,
    pub members: BTreeMap<String, MemberValue>,
    /// `status.optime`: the leader's last published WAL position.
    pub optime: Option<u64>,
    /// `status.slots`: the permanent slots' positions on the leader.
    pub status_slots: BTreeMap<String, u64>,
    pub failover: Option<Failover>,
    /// `sync`: the leader and its synchronous standbys (synchronous mode).
    pub sync: Option<SyncState>,
    /// `failsafe`: the members (name → REST API address) the leader last
    /// listed, in failsafe mode.
    pub failsafe: Option<BTreeMap<String, String>>,
    /// The cluster's timeline by the `history` key (0: unknown).
    pub timeline: u32,
    /// The `history` key's lines (parent timeline, switch LSN, reason): the
    /// newest timeline's history file, as its leader published it.
    pub history: Vec<(u32, u64, String)>,
}
