//! The HA decision: a pure function of what the DCS says ([`ClusterView`])
//! and what this node knows about itself ([`Local`]) to one [`Action`]. No
//! I/O, no clock: the executor measures and carries out; this decides.
//!
//! Safety rules, each pinned by a test below:
//! - a primary that does not hold the leader key with a live lease demotes;
//! - nobody races for the leader key while a leader key exists;
//! - a replica races only after asking its peers, when no reachable peer is
//!   a primary or ahead of it, it is within `maximum_lag_on_failover` of the
//!   last known leader position, it is not tagged `nofailover`, and a
//!   requested failover candidate (if any) is itself;
//! - a replica that confirmed a primary's `POST /failsafe` within `ttl`
//!   does not race; in failsafe mode only members listed in `failsafe` race;
//! - in synchronous mode only the members the `sync` key names (the last
//!   leader and its synchronous standbys) race, and only their WAL counts
//!   against mine; a switchover goes only to a synchronous standby;
//! - a data directory of another cluster (system identifier) never joins;
//! - data that pg_rewind failed on (and that was kept) is never started:
//!   it waits for an operator's reinit.

pub use crate::dcs::ClusterView;
use crate::patroni::Failover;

/// The local data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    Empty,
    Cluster { sysid: String },
}

/// The local PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postgres {
    Stopped,
    Starting,
    Primary { wal: u64, timeline: u32 },
    Replica { wal: u64, timeline: u32 },
}

/// What a peer's REST API answered (`None`: unreachable in time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub name: String,
    pub reply: Option<PeerReply>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReply {
    pub primary: bool,
    pub wal: u64,
    pub nofailover: bool,
    /// Its `failover_priority` tag (default 1).
    pub failover_priority: u64,
}

/// What this node knows about itself.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub data: DataDir,
    pub postgres: Postgres,
    pub nofailover: bool,
    /// My `failover_priority` tag (default 1): with equal WAL, the member
    /// with the higher one takes over.
    pub failover_priority: u64,
    /// postgres exited during a start-up since it last ran, or has been
    /// down longer than `primary_start_timeout` after a crash.
    pub start_failed: bool,
    /// pg_rewind failed on this data directory and it was kept
    /// (`remove_data_directory_on_rewind_failure` false): it may hold the
    /// only copy of transactions that never replicated.
    pub rewind_failed: bool,
    /// The lease this node's keys live on is known alive: a keepalive
    /// succeeded less than the lease TTL (minus a margin) ago, on the
    /// executor's monotonic clock.
    pub lease_alive: bool,
    /// Failsafe mode: the primary that told this member, less than a
    /// `ttl` ago, that it runs without etcd on its members' confirmations
    /// (`POST /failsafe`); this member promised not to race meanwhile.
    pub failsafe_primary: Option<String>,
    /// Peer reports gathered for this decision (`None`: not asked yet).
    pub peers: Option<Vec<PeerReport>>,
    /// This running replica replayed WAL of its timeline past the point
    /// where the leader's history left that timeline (it got WAL from the
    /// old primary that the promoted member never had): it can never
    /// stream from the leader as it is.
    pub diverged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change.
    Idle(&'static str),
    /// No cluster yet and my data directory is empty: race for `initialize`.
    RaceInitialize,
    /// The cluster exists; my data directory is empty: copy it from the leader.
    CloneFrom(String),
    /// My data belongs to another cluster: refuse to join.
    RefuseForeignData { ours: String, cluster: String },
    /// No `initialize` and no leader, but I have data: claim the cluster with it.
    AdoptData,
    /// I hold the leader key and my postgres is stopped: start it as primary.
    StartPrimary,
    /// I hold the leader key but postgres cannot start (or stayed down past
    /// `primary_start_timeout`): release the key so a replica takes over
    /// without waiting for the lease.
    ReleaseLeader(&'static str),
    /// Start postgres as a replica of this member (`None`: no leader yet).
    StartReplica(Option<String>),
    /// I lead: renew the lease, publish status.
    KeepLeading,
    /// I hold the key but run as a replica: promote.
    Promote,
    /// I hold the key of a standby cluster and postgres is stopped: start
    /// it as a standby of the remote source (the standby leader).
    StartStandbyLeader,
    /// I lead a standby cluster: renew, publish, replicate from the source.
    LeadStandby,
    /// The leader key is gone: ask the peers before racing.
    AskPeers,
    /// I am the healthiest: race for the leader key.
    AcquireLeader,
    /// Replicate from this member.
    Follow(String),
    /// My replica diverged from this leader (`Local::diverged`): stop;
    /// the next start as its replica runs pg_rewind first.
    StopToRewind(String),
    /// I run as primary without a live claim to the leader key: stop writes now.
    Demote(&'static str),
    /// A switchover asks me to hand over: stop gracefully, release the key.
    HandOver { candidate: Option<String> },
    /// A switchover request that cannot be carried out: keep leading and
    /// clear the `failover` key (as Patroni's leader does).
    RejectSwitchover(&'static str),
}

/// Why a member whose pg_rewind failed stays stopped.
pub const REWIND_FAILED: &str =
    "pg_rewind failed and the data directory is kept: reinitialize this member (tusk reinit) to rebuild it";

/// Decides the next action.
pub fn decide(view: &ClusterView, me: &Local) -> Action {
    let leader_is_me = view.leader.as_deref() == Some(me.name.as_str());
    let standby_cluster = view.config.standby_cluster.is_some();

    // Safety first: a primary without a live claim demotes, whatever else is true.
    if let Postgres::Primary { .. } = me.postgres {
        if !me.lease_alive {
            return Action::Demote("the leader lease could not be renewed in time");
        }
        match &view.leader {
            Some(other) if other != &me.name => return Action::Demote("another member holds the leader key"),
            _ => {}
        }
    }
    // A primary on a timeline older than the cluster's was replaced.
    if let Postgres::Primary { timeline, .. } = me.postgres
        && view.leader.is_none()
        && timeline < view.timeline
    {
        return Action::Demote("running as primary on a timeline older than the cluster's");
    }

    // Maintenance mode: no automatic action but keeping what runs.
    if view.config.pause && view.initialize.is_some() && me.data != DataDir::Empty {
        return match (leader_is_me, me.postgres) {
            (true, Postgres::Primary { .. }) => Action::KeepLeading,
            _ => Action::Idle("maintenance mode (paused): no automatic action"),
        };
    }

    // Data directory and cluster identity.
    match (&me.data, &view.initialize) {
        (DataDir::Empty, None) => {
            return if view.leader.is_none() && !me.nofailover {
                Action::RaceInitialize
            } else {
                Action::Idle("waiting for another member to bootstrap the cluster")
            };
        }
        (DataDir::Empty, Some(_)) => {
            return match &view.leader {
                Some(l) if !leader_is_me => Action::CloneFrom(l.clone()),
                _ => Action::Idle("waiting for a leader to copy the data from"),
            };
        }
        (DataDir::Cluster { sysid }, Some(cluster)) if !cluster.is_empty() && cluster != sysid => {
            return Action::RefuseForeignData { ours: sysid.clone(), cluster: cluster.clone() };
        }
        (DataDir::Cluster { .. }, None) if view.leader.is_none() => return Action::AdoptData,
        _ => {}
    }

    // Diverged data kept after a failed pg_rewind: left stopped for the operator.
    if me.rewind_failed && me.postgres == Postgres::Stopped && !leader_is_me {
        return Action::Idle(REWIND_FAILED);
    }

    match (&view.leader, me.postgres) {
        // I lead.
        (Some(_), Postgres::Stopped) if leader_is_me && standby_cluster => Action::StartStandbyLeader,
        (Some(_), Postgres::Stopped | Postgres::Starting)
            if leader_is_me && me.start_failed && another_can_take_over(view, &me.name) =>
        {
            Action::ReleaseLeader("postgres cannot start on the leader: releasing the leader key for a replica")
        }
        (Some(_), Postgres::Stopped) if leader_is_me => Action::StartPrimary,
        (Some(_), Postgres::Starting) if leader_is_me => Action::Idle("postgres is starting"),
        (Some(_), Postgres::Replica { .. }) if leader_is_me => {
            if standby_cluster {
                Action::LeadStandby
            } else if me.lease_alive {
                Action::Promote
            } else {
                Action::Idle("holding the leader key on an unconfirmed lease; not promoting")
            }
        }
        (Some(_), Postgres::Primary { .. }) if leader_is_me => match &view.failover {
            Some(f) if f.scheduled_at.is_some() => Action::KeepLeading,
            Some(f) if f.leader.as_ref().is_some_and(|l| l != &me.name) => {
                Action::RejectSwitchover("the switchover names another leader")
            }
            Some(f) if f.member.as_ref() == Some(&me.name) => {
                Action::RejectSwitchover("the switchover names this leader as its candidate")
            }
            Some(f) if wants_handover(f, &me.name) => match &me.peers {
                None => Action::AskPeers,
                Some(peers) => {
                    let candidate = f.member.clone();
                    let sync = view.config.synchronous_mode() && !view.config.quorum_mode();
                    let is_sync = |p: &PeerReport| view.sync.as_ref().is_some_and(|s| s.is_standby(&p.name));
                    if peers.iter().any(|p| usable_candidate(p, view, candidate.as_deref()) && (!sync || is_sync(p))) {
                        Action::HandOver { candidate }
                    } else {
                        Action::RejectSwitchover("no healthy candidate to switch over to")
                    }
                }
            },
            _ => Action::KeepLeading,
        },

        // Someone else leads.
        (Some(leader), Postgres::Stopped) => Action::StartReplica(Some(leader.clone())),
        (Some(_), Postgres::Starting) => Action::Idle("postgres is starting"),
        (Some(leader), Postgres::Replica { .. }) if me.diverged => Action::StopToRewind(leader.clone()),
        (Some(leader), Postgres::Replica { .. }) => Action::Follow(leader.clone()),
        (Some(_), Postgres::Primary { .. }) => unreachable_demote(),

        // Nobody leads.
        (None, Postgres::Stopped) => Action::StartReplica(None),
        (None, Postgres::Starting) => Action::Idle("postgres is starting"),
        (None, Postgres::Replica { wal, .. } | Postgres::Primary { wal, .. }) => {
            if me.nofailover {
                return Action::Idle("tagged nofailover: not racing for the leader key");
            }
            if let Postgres::Replica { timeline, .. } = me.postgres
                && view.config.check_timeline()
                && timeline < view.timeline
            {
                return Action::Idle("check_timeline: on an older timeline than the cluster's, not racing");
            }
            if matches!(me.postgres, Postgres::Replica { .. }) && me.failsafe_primary.is_some() {
                return Action::Idle(
                    "failsafe mode: the primary confirmed within ttl that it runs; not racing for the leader key",
                );
            }
            // Failsafe mode: only the members the last leader listed race
            // (a member it never knew of cannot have confirmed it).
            if view.config.failsafe_mode()
                && let Some(listed) = &view.failsafe
                && !listed.is_empty()
                && !listed.contains_key(&me.name)
            {
                return Action::Idle("failsafe mode: not listed in the failsafe key, not racing for the leader key");
            }
            if let Some(f) = &view.failover
                && let Some(c) = &f.member
                && c != &me.name
            {
                return Action::Idle("a failover to another member was requested");
            }
            // Synchronous mode: the `sync` key says who has every
            // acknowledged commit; nobody else may take over.
            let any_sync = view.sync.as_ref().filter(|s| view.config.synchronous_mode() && !s.is_empty());
            // Quorum mode: anyone may race who hears from enough voters.
            let quorum = any_sync.filter(|_| view.config.quorum_mode());
            let sync = any_sync.filter(|_| !view.config.quorum_mode());
            if sync.is_some_and(|s| !s.matches(&me.name)) {
                return Action::Idle("synchronous mode: not a synchronous standby, not racing for the leader key");
            }
            if let Some(optime) = view.optime
                && optime.saturating_sub(wal) > view.config.maximum_lag_on_failover
            {
                return Action::Idle("too far behind the last leader position to take over");
            }
            let Some(peers) = &me.peers else { return Action::AskPeers };
            for p in peers {
                if let Some(r) = p.reply {
                    if r.primary {
                        return Action::Idle("a peer still runs as primary");
                    }
                    let may_race = sync.is_none_or(|s| s.matches(&p.name));
                    if !r.nofailover && may_race && r.wal > wal {
                        return Action::Idle("a peer has more WAL");
                    }
                    if !r.nofailover && may_race && r.wal == wal && r.failover_priority > me.failover_priority {
                        return Action::Idle("a peer with as much WAL has a higher failover_priority");
                    }
                }
            }
            if let Some(q) = quorum
                && !quorum_reached(q, &me.name, wal, peers)
            {
                return Action::Idle("quorum mode: too few synchronous standbys confirm this member is not behind");
            }
            Action::AcquireLeader
        }
    }
}

/// Quorum mode: every commit is on `n - quorum` of the `n` voters (the
/// key's standbys), so a member that hears from `quorum` voters besides
/// itself (`quorum + 1` when it is not one), none of them ahead, has every
/// acknowledged commit. The key's own leader (restarted in place) needs
/// nobody.
fn quorum_reached(q: &crate::patroni::SyncState, me: &str, wal: u64, peers: &[PeerReport]) -> bool {
    if q.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(me)) {
        return true;
    }
    let votes = peers
        .iter()
        .filter(|p| q.is_standby(&p.name))
        .filter(|p| p.reply.is_some_and(|r| !r.primary && r.wal > 0 && r.wal <= wal))
        .count() as u64;
    let need = q.quorum.unwrap_or(0) + u64::from(!q.is_standby(me));
    votes >= need
}

/// When a scheduled switchover is due (Patroni's rules): more than
/// `loop_wait` ahead → later; more than `loop_wait` overdue → stale (the
/// leader clears it); otherwise now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Now,
    Later(std::time::Duration),
    Stale,
}

pub fn schedule_due(at: time::OffsetDateTime, now: time::OffsetDateTime, loop_wait: u64) -> Due {
    let ahead = at - now;
    let loop_wait = time::Duration::seconds(loop_wait as i64);
    if ahead > loop_wait {
        Due::Later((ahead - loop_wait).try_into().unwrap_or_default())
    } else if ahead < -loop_wait {
        Due::Stale
    } else if ahead > time::Duration::ZERO {
        Due::Later(ahead.try_into().unwrap_or_default())
    } else {
        Due::Now
    }
}

/// Already handled by the safety check at the top; kept as a total match.
fn unreachable_demote() -> Action {
    Action::Demote("another member holds the leader key")
}

/// A `failover` key addressed to the current leader: a switchover.
fn wants_handover(f: &Failover, me: &str) -> bool {
    if f.scheduled_at.is_some() {
        // Scheduled switchovers are the executor's to time; not yet due here.
        return false;
    }
    match (&f.leader, &f.member) {
        (Some(l), _) => l == me,
        (None, Some(m)) => m != me,
        (None, None) => false,
    }
}

/// Another member runs and may be promoted (in synchronous mode: one the
/// `sync` key names), by the member keys.
fn another_can_take_over(view: &ClusterView, me: &str) -> bool {
    let sync = view.sync.as_ref().filter(|s| view.config.synchronous_mode() && !s.is_empty());
    view.members.iter().any(|(name, m)| {
        name != me
            && m.state == crate::patroni::State::Running
            && !m.nofailover()
            && sync.is_none_or(|s| s.matches(name))
    })
}

/// A peer that can take over: reachable, a replica, not `nofailover`, the
/// named candidate if one is named, and within the lag limit.
fn usable_candidate(p: &PeerReport, view: &ClusterView, candidate: Option<&str>) -> bool {
    let Some(r) = p.reply else { return false };
    if candidate.is_some_and(|c| c != p.name) || r.primary || r.nofailover {
        return false;
    }
    view.optime.is_none_or(|o| o.saturating_sub(r.wal) <= view.config.maximum_lag_on_failover)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::DynamicConfig;

    const SYSID: &str = "7268616322854375442";

    /// No leader; quorum mode, the `sync` key naming `leader`, `voters`
    /// and `quorum`.
    fn quorum_view(leader: &str, voters: &[&str], quorum: u64) -> ClusterView {
        let mut v = view(None);
        v.config.other.insert("synchronous_mode".into(), serde_json::json!("quorum"));
        let voters: Vec<String> = voters.iter().map(|s| s.to_string()).collect();
        v.sync = Some(crate::patroni::SyncState::quorum_of(leader, &voters, quorum));
        v
    }

    /// No leader; failsafe mode on, `listed` in the `failsafe` key.
    fn failsafe_view(listed: &[&str]) -> ClusterView {
        let mut v = view(None);
        v.config.other.insert("failsafe_mode".into(), serde_json::json!(true));
        v.failsafe = Some(listed.iter().map(|n| (n.to_string(), format!("http://{n}:8008/patroni"))).collect());
        v
    }

    fn view(leader: Option<&str>) -> ClusterView {
        ClusterView {
            initialize: Some(SYSID.into()),
            leader: leader.map(Into::into),
            optime: Some(1000),
            ..Default::default()
        }
    }

    fn standby_view(leader: Option<&str>) -> ClusterView {
        let sc = crate::patroni::StandbyCluster { host: Some("10.0.0.9".into()), ..Default::default() };
        ClusterView { config: DynamicConfig { standby_cluster: Some(sc), ..Default::default() }, ..view(leader) }
    }

    fn me(postgres: Postgres) -> Local {
        Local {
            name: "a".into(),
            data: DataDir::Cluster { sysid: SYSID.into() },
            postgres,
            nofailover: false,
            failover_priority: 1,
            start_failed: false,
            rewind_failed: false,
            lease_alive: true,
            failsafe_primary: None,
            peers: None,
            diverged: false,
        }
    }

    fn replica(wal: u64) -> Postgres {
        Postgres::Replica { wal, timeline: 1 }
    }

    fn primary() -> Postgres {
        Postgres::Primary { wal: 1000, timeline: 1 }
    }

    fn peer(name: &str, primary: bool, wal: u64) -> PeerReport {
        PeerReport {
            name: name.into(),
            reply: Some(PeerReply { primary, wal, nofailover: false, failover_priority: 1 }),
        }
    }

    fn with_peers(mut l: Local, peers: Vec<PeerReport>) -> Local {
        l.peers = Some(peers);
        l
    }

    #[test]
    fn a_leader_whose_postgres_cannot_start_releases_the_key() {
        let member = |state: &str| -> crate::patroni::MemberValue {
            serde_json::from_str(&format!(
                r#"{{"conn_url":"","api_url":"","state":"{state}","role":"replica","version":""}}"#
            ))
            .expect("member")
        };
        let with = |members: &[(&str, &str)]| {
            let mut v = view(Some("a"));
            for (n, st) in members {
                v.members.insert((*n).into(), member(st));
            }
            v
        };
        let failed = |p: Postgres| Local { start_failed: true, ..me(p) };
        let release =
            Action::ReleaseLeader("postgres cannot start on the leader: releasing the leader key for a replica");
        let cases: Vec<(&str, ClusterView, Local, Action)> = vec![
            ("a running replica: release", with(&[("b", "running")]), failed(Postgres::Stopped), release.clone()),
            (
                "still starting past the timeout: release",
                with(&[("b", "running")]),
                failed(Postgres::Starting),
                release,
            ),
            (
                "nobody to take over: start again",
                with(&[("b", "stopped")]),
                failed(Postgres::Stopped),
                Action::StartPrimary,
            ),
            ("alone: start again", with(&[]), failed(Postgres::Stopped), Action::StartPrimary),
            ("no failure: restart in place", with(&[("b", "running")]), me(Postgres::Stopped), Action::StartPrimary),
        ];
        for (name, v, l, want) in cases {
            assert_eq!(decide(&v, &l), want, "{name}");
        }
    }

    #[test]
    fn failover_priority_breaks_ties() {
        let prio = |name: &str, wal: u64, p: u64| PeerReport {
            name: name.into(),
            reply: Some(PeerReply { primary: false, wal, nofailover: false, failover_priority: p }),
        };
        let mine = |p: u64| Local { failover_priority: p, ..me(replica(1000)) };
        let cases: Vec<(&str, Local, Vec<PeerReport>, Action)> = vec![
            (
                "equal WAL, higher priority elsewhere: wait",
                mine(1),
                vec![prio("b", 1000, 2)],
                Action::Idle("a peer with as much WAL has a higher failover_priority"),
            ),
            ("equal WAL, my priority higher: race", mine(3), vec![prio("b", 1000, 2)], Action::AcquireLeader),
            ("more WAL beats priority", mine(5), vec![prio("b", 900, 9)], Action::AcquireLeader),
            ("equal WAL, equal priority: race", mine(1), vec![prio("b", 1000, 1)], Action::AcquireLeader),
        ];
        for (name, l, peers, want) in cases {
            assert_eq!(decide(&view(None), &with_peers(l, peers)), want, "{name}");
        }
    }

    #[test]
    fn synchronous_mode() {
        let cfg = |strict: bool| {
            let mut c = DynamicConfig::default();
            c.other.insert("synchronous_mode".into(), serde_json::json!(true));
            c.other.insert("synchronous_mode_strict".into(), serde_json::json!(strict));
            c
        };
        let leaderless =
            |sync: Option<crate::patroni::SyncState>| ClusterView { config: cfg(false), sync, ..view(None) };
        let sync_of = |standbys: &[&str]| {
            Some(crate::patroni::SyncState::new("old", &standbys.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
        };
        let switchover = |sync: Option<crate::patroni::SyncState>| ClusterView {
            config: cfg(true),
            sync,
            failover: Some(Failover { leader: Some("a".into()), member: None, scheduled_at: None }),
            ..view(Some("a"))
        };
        let cases: Vec<(&str, ClusterView, Local, Action)> = vec![
            (
                "not a synchronous standby: no race, not even a question to the peers",
                leaderless(sync_of(&["b"])),
                me(replica(1000)),
                Action::Idle("synchronous mode: not a synchronous standby, not racing for the leader key"),
            ),
            (
                "the synchronous standby asks its peers",
                leaderless(sync_of(&["a"])),
                me(replica(1000)),
                Action::AskPeers,
            ),
            (
                "the synchronous standby races although an asynchronous peer has more WAL",
                leaderless(sync_of(&["a"])),
                with_peers(me(replica(1000)), vec![peer("b", false, 2000)]),
                Action::AcquireLeader,
            ),
            (
                "two synchronous standbys: the one with more WAL races",
                leaderless(sync_of(&["a", "b"])),
                with_peers(me(replica(1000)), vec![peer("b", false, 2000)]),
                Action::Idle("a peer has more WAL"),
            ),
            (
                "the last leader itself may race (it came back)",
                ClusterView { config: cfg(false), sync: sync_of(&["b"]), ..view(None) },
                Local { name: "old".into(), ..with_peers(me(replica(1000)), vec![]) },
                Action::AcquireLeader,
            ),
            (
                "an empty sync key restricts nobody",
                leaderless(Some(crate::patroni::SyncState::default())),
                with_peers(me(replica(1000)), vec![]),
                Action::AcquireLeader,
            ),
            (
                "synchronous mode off: the sync key is ignored",
                ClusterView { sync: sync_of(&["b"]), ..view(None) },
                with_peers(me(replica(1000)), vec![]),
                Action::AcquireLeader,
            ),
            (
                "a switchover goes to a synchronous standby",
                switchover(Some(crate::patroni::SyncState::new("a", &["b".into()]))),
                with_peers(me(primary()), vec![peer("b", false, 1000), peer("c", false, 1000)]),
                Action::HandOver { candidate: None },
            ),
            (
                "no synchronous standby to switch over to",
                switchover(Some(crate::patroni::SyncState::new("a", &[]))),
                with_peers(me(primary()), vec![peer("b", false, 1000)]),
                Action::RejectSwitchover("no healthy candidate to switch over to"),
            ),
        ];
        for (name, v, l, want) in cases {
            assert_eq!(decide(&v, &l), want, "{name}");
        }
    }

    #[test]
    fn scheduled_switchover_timing() {
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20000);
        let s = |secs: i64| now + time::Duration::seconds(secs);
        assert_eq!(schedule_due(s(0), now, 10), Due::Now);
        assert_eq!(schedule_due(s(-5), now, 10), Due::Now);
        assert_eq!(schedule_due(s(-11), now, 10), Due::Stale);
        assert_eq!(schedule_due(s(3), now, 10), Due::Later(std::time::Duration::from_secs(3)));
        assert_eq!(schedule_due(s(100), now, 10), Due::Later(std::time::Duration::from_secs(90)));
    }

    #[test]
    fn table() {
        let empty = |l: Local| Local { data: DataDir::Empty, postgres: Postgres::Stopped, ..l };
        let no_cluster = ClusterView::default();
        let bootstrapping = ClusterView { initialize: Some(String::new()), ..Default::default() };
        let switchover = |to: Option<&str>| ClusterView {
            failover: Some(Failover { leader: Some("a".into()), member: to.map(Into::into), scheduled_at: None }),
            ..view(Some("a"))
        };
        let cases: Vec<(&str, ClusterView, Local, Action)> = vec![
            // bootstrap
            (
                "fresh cluster, empty data: race initialize",
                no_cluster.clone(),
                empty(me(Postgres::Stopped)),
                Action::RaceInitialize,
            ),
            (
                "fresh cluster, nofailover: wait",
                no_cluster.clone(),
                Local { nofailover: true, ..empty(me(Postgres::Stopped)) },
                Action::Idle("waiting for another member to bootstrap the cluster"),
            ),
            (
                "someone is bootstrapping",
                bootstrapping,
                empty(me(Postgres::Stopped)),
                Action::Idle("waiting for a leader to copy the data from"),
            ),
            (
                "cluster exists, empty data: clone",
                view(Some("b")),
                empty(me(Postgres::Stopped)),
                Action::CloneFrom("b".into()),
            ),
            (
                "foreign data refused",
                view(Some("b")),
                Local { data: DataDir::Cluster { sysid: "1".into() }, ..me(Postgres::Stopped) },
                Action::RefuseForeignData { ours: "1".into(), cluster: SYSID.into() },
            ),
            ("existing data, no cluster: adopt", no_cluster, me(Postgres::Stopped), Action::AdoptData),
            // a failed pg_rewind whose data was kept
            (
                "rewind failed, another leader: stay stopped",
                view(Some("b")),
                Local { rewind_failed: true, ..me(Postgres::Stopped) },
                Action::Idle(REWIND_FAILED),
            ),
            (
                "rewind failed, no leader: stay stopped (no race on diverged data)",
                view(None),
                Local { rewind_failed: true, ..me(Postgres::Stopped) },
                Action::Idle(REWIND_FAILED),
            ),
            (
                "rewind failed, reinit removed the data: clone",
                view(Some("b")),
                Local { rewind_failed: true, ..empty(me(Postgres::Stopped)) },
                Action::CloneFrom("b".into()),
            ),
            // leading
            ("leader, primary: keep", view(Some("a")), me(primary()), Action::KeepLeading),
            ("leader, stopped: start primary", view(Some("a")), me(Postgres::Stopped), Action::StartPrimary),
            ("leader key won, replica: promote", view(Some("a")), me(replica(1000)), Action::Promote),
            (
                "leader key but lease unconfirmed: do not promote",
                view(Some("a")),
                Local { lease_alive: false, ..me(replica(1000)) },
                Action::Idle("holding the leader key on an unconfirmed lease; not promoting"),
            ),
            // safety
            (
                "primary, lease not renewed in time: demote",
                view(Some("a")),
                Local { lease_alive: false, ..me(primary()) },
                Action::Demote("the leader lease could not be renewed in time"),
            ),
            (
                "primary, someone else leads: demote",
                view(Some("b")),
                me(primary()),
                Action::Demote("another member holds the leader key"),
            ),
            (
                "primary, key gone, lease dead: demote before anything",
                view(None),
                Local { lease_alive: false, ..me(primary()) },
                Action::Demote("the leader lease could not be renewed in time"),
            ),
            // following
            ("replica follows the leader", view(Some("b")), me(replica(900)), Action::Follow("b".into())),
            (
                "a replica past the leader's switch point stops to be rewound",
                view(Some("b")),
                Local { diverged: true, ..me(replica(900)) },
                Action::StopToRewind("b".into()),
            ),
            (
                "stopped member starts as replica",
                view(Some("b")),
                me(Postgres::Stopped),
                Action::StartReplica(Some("b".into())),
            ),
            // failover
            ("leader gone: ask peers first", view(None), me(replica(1000)), Action::AskPeers),
            (
                "leader gone, peers behind or unreachable: race",
                view(None),
                with_peers(
                    me(replica(1000)),
                    vec![peer("b", false, 900), PeerReport { name: "c".into(), reply: None }],
                ),
                Action::AcquireLeader,
            ),
            (
                "leader gone, equal WAL: race (the txn decides)",
                view(None),
                with_peers(me(replica(1000)), vec![peer("b", false, 1000)]),
                Action::AcquireLeader,
            ),
            (
                "a peer has more WAL: do not race",
                view(None),
                with_peers(me(replica(900)), vec![peer("b", false, 1000)]),
                Action::Idle("a peer has more WAL"),
            ),
            (
                "a peer still runs as primary: do not race",
                view(None),
                with_peers(me(replica(1000)), vec![peer("b", true, 1000)]),
                Action::Idle("a peer still runs as primary"),
            ),
            (
                "too far behind: do not race",
                ClusterView { optime: Some(100 << 20), ..view(None) },
                with_peers(me(replica(1000)), vec![]),
                Action::Idle("too far behind the last leader position to take over"),
            ),
            (
                "nofailover: do not race",
                view(None),
                Local { nofailover: true, ..with_peers(me(replica(1000)), vec![]) },
                Action::Idle("tagged nofailover: not racing for the leader key"),
            ),
            (
                "quorum: a voter heard from quorum other voters, none ahead: race",
                quorum_view("x", &["a", "b"], 1),
                with_peers(me(replica(1000)), vec![peer("b", false, 900)]),
                Action::AcquireLeader,
            ),
            (
                "quorum: a voter that cannot hear from enough voters does not race",
                quorum_view("x", &["a", "b"], 1),
                with_peers(me(replica(1000)), vec![PeerReport { name: "b".into(), reply: None }]),
                Action::Idle("quorum mode: too few synchronous standbys confirm this member is not behind"),
            ),
            (
                "quorum: a non-voter needs one vote more",
                quorum_view("x", &["b", "c"], 1),
                with_peers(me(replica(1000)), vec![peer("b", false, 900)]),
                Action::Idle("quorum mode: too few synchronous standbys confirm this member is not behind"),
            ),
            (
                "quorum: a non-voter with quorum + 1 votes races",
                quorum_view("x", &["b", "c"], 1),
                with_peers(me(replica(1000)), vec![peer("b", false, 900), peer("c", false, 1000)]),
                Action::AcquireLeader,
            ),
            (
                "quorum: a voter ahead wins, whatever the votes",
                quorum_view("x", &["a", "b", "c"], 1),
                with_peers(me(replica(1000)), vec![peer("b", false, 900), peer("c", false, 1100)]),
                Action::Idle("a peer has more WAL"),
            ),
            (
                "quorum: the key's leader, restarted in place, needs no vote",
                quorum_view("a", &["b", "c"], 1),
                with_peers(me(replica(1000)), vec![]),
                Action::AcquireLeader,
            ),
            (
                "check_timeline: a replica on an older timeline does not race",
                {
                    let mut v = view(None);
                    v.config.other.insert("check_timeline".into(), serde_json::json!(true));
                    v.timeline = 3;
                    v
                },
                with_peers(me(Postgres::Replica { wal: 1000, timeline: 2 }), vec![]),
                Action::Idle("check_timeline: on an older timeline than the cluster's, not racing"),
            ),
            (
                "check_timeline off: the timeline does not matter",
                ClusterView { timeline: 3, ..view(None) },
                with_peers(me(Postgres::Replica { wal: 1000, timeline: 2 }), vec![]),
                Action::AcquireLeader,
            ),
            (
                "a primary on an older timeline than the cluster's demotes",
                ClusterView { timeline: 3, ..view(None) },
                with_peers(me(Postgres::Primary { wal: 1000, timeline: 2 }), vec![]),
                Action::Demote("running as primary on a timeline older than the cluster's"),
            ),
            (
                "failsafe: a primary confirmed within ttl: do not race",
                view(None),
                Local { failsafe_primary: Some("b".into()), ..with_peers(me(replica(1000)), vec![]) },
                Action::Idle(
                    "failsafe mode: the primary confirmed within ttl that it runs; not racing for the leader key",
                ),
            ),
            (
                "failsafe: the primary itself re-takes the key it lost with etcd",
                view(None),
                Local { failsafe_primary: Some("b".into()), ..with_peers(me(primary()), vec![]) },
                Action::AcquireLeader,
            ),
            (
                "failsafe mode: not listed in the failsafe key: do not race",
                failsafe_view(&["b", "c"]),
                with_peers(me(replica(1000)), vec![]),
                Action::Idle("failsafe mode: not listed in the failsafe key, not racing for the leader key"),
            ),
            (
                "failsafe mode: listed: race",
                failsafe_view(&["a", "b"]),
                with_peers(me(replica(1000)), vec![]),
                Action::AcquireLeader,
            ),
            (
                "failover to another candidate: do not race",
                ClusterView {
                    failover: Some(Failover { member: Some("b".into()), ..Default::default() }),
                    ..view(None)
                },
                with_peers(me(replica(1000)), vec![]),
                Action::Idle("a failover to another member was requested"),
            ),
            (
                "failover to me: race",
                ClusterView {
                    failover: Some(Failover { member: Some("a".into()), ..Default::default() }),
                    ..view(None)
                },
                with_peers(me(replica(1000)), vec![peer("b", false, 1000)]),
                Action::AcquireLeader,
            ),
            // standby cluster
            (
                "standby cluster: the leader starts as standby leader",
                standby_view(Some("a")),
                me(Postgres::Stopped),
                Action::StartStandbyLeader,
            ),
            (
                "standby cluster: the leader stays a standby, never promotes",
                standby_view(Some("a")),
                me(replica(1000)),
                Action::LeadStandby,
            ),
            (
                "standby cluster: replicas cascade from the standby leader",
                standby_view(Some("b")),
                me(replica(1000)),
                Action::Follow("b".into()),
            ),
            (
                "standby_cluster removed: the standby leader promotes",
                view(Some("a")),
                me(replica(1000)),
                Action::Promote,
            ),
            // maintenance mode
            (
                "paused: the leader keeps its key",
                ClusterView { config: DynamicConfig { pause: true, ..Default::default() }, ..view(Some("a")) },
                me(primary()),
                Action::KeepLeading,
            ),
            (
                "paused: no failover",
                ClusterView { config: DynamicConfig { pause: true, ..Default::default() }, ..view(None) },
                with_peers(me(replica(1000)), vec![]),
                Action::Idle("maintenance mode (paused): no automatic action"),
            ),
            // switchover
            ("switchover: ask peers", switchover(Some("b")), me(primary()), Action::AskPeers),
            (
                "switchover to a healthy candidate: hand over",
                switchover(Some("b")),
                with_peers(me(primary()), vec![peer("b", false, 990)]),
                Action::HandOver { candidate: Some("b".into()) },
            ),
            (
                "switchover, candidate unreachable: keep leading, clear the request",
                switchover(Some("b")),
                with_peers(me(primary()), vec![PeerReport { name: "b".into(), reply: None }]),
                Action::RejectSwitchover("no healthy candidate to switch over to"),
            ),
            (
                "switchover to anyone: hand over",
                switchover(None),
                with_peers(me(primary()), vec![peer("c", false, 1000)]),
                Action::HandOver { candidate: None },
            ),
            (
                "a switchover for another leader: cleared",
                ClusterView {
                    failover: Some(Failover { leader: Some("z".into()), member: Some("b".into()), scheduled_at: None }),
                    ..view(Some("a"))
                },
                me(primary()),
                Action::RejectSwitchover("the switchover names another leader"),
            ),
            (
                "a scheduled switchover not yet due: keep leading",
                ClusterView {
                    failover: Some(Failover {
                        leader: Some("a".into()),
                        member: Some("b".into()),
                        scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
                    }),
                    ..view(Some("a"))
                },
                me(primary()),
                Action::KeepLeading,
            ),
        ];
        for (what, v, l, want) in cases {
            assert_eq!(decide(&v, &l), want, "{what}");
        }
    }
}
