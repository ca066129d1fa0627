//! What the loop observes: the local data directory and postgres, and,
//! before racing for leadership, the peers' REST APIs.

use std::time::Duration;

use tokio_postgres::Client;

use super::decide::{ClusterView, DataDir, Local, PeerReply, PeerReport, Postgres};
use super::run::Ha;
use crate::api::NodeStatus;
use crate::patroni::{Role as MemberRole, State};
use crate::postgres::{pidfile, process, replication, sql};

/// What a peer's `GET /patroni` tells the decision.
pub(super) fn peer_reply(s: &NodeStatus) -> PeerReply {
    PeerReply {
        primary: s.role == MemberRole::Primary && s.state == State::Running,
        wal: s.xlog.position(),
        nofailover: crate::patroni::tagged_nofailover(&s.tags),
        failover_priority: crate::patroni::failover_priority(&s.tags),
    }
}

/// Members a new replica may copy its data from before the leader: running
/// members tagged `clonefrom` (Patroni's rule), other than `me`.
pub(super) fn clone_sources(view: &ClusterView, me: &str) -> Vec<String> {
    view.members
        .iter()
        .filter(|(name, m)| name.as_str() != me && m.clonefrom() && m.state == State::Running)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The member to stream from: the `replicatefrom` tag's member when it
/// runs (as a replica of this cluster, or as the leader) and does not
/// itself cascade from `me`, else the leader (Patroni's rule).
pub(super) fn stream_from<'a>(
    view: &'a ClusterView,
    me: &str,
    replicatefrom: Option<&'a str>,
    leader: &'a str,
) -> &'a str {
    let Some(from) = replicatefrom.filter(|f| *f != me && *f != leader) else { return leader };
    match view.members.get(from) {
        Some(m)
            if m.state == State::Running
                && m.role == MemberRole::Replica
                && m.replicatefrom() != Some(me)
                && m.pg_address().is_some() =>
        {
            from
        }
        _ => leader,
    }
}

/// How long to wait before starting postgres again after `failures`
/// start-ups in a row that ended before it ran: 1 s, doubling, at most 60 s.
pub(super) fn start_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

impl Ha {
    /// The local data directory and postgres.
    pub(super) async fn observe(&mut self) -> Local {
        let data = self.cfg.postgres.data.clone();
        let data_state = if data.join("PG_VERSION").exists() {
            if self.sysid.is_none() {
                self.sysid =
                    replication::controldata(&self.bin, &data).await.ok().map(|c| c.sysid).filter(|s| !s.is_empty());
            }
            DataDir::Cluster { sysid: self.sysid.clone().unwrap_or_default() }
        } else {
            self.sysid = None;
            DataDir::Empty
        };
        if let Some(pm) = &mut self.pm
            && let Some(status) = pm.try_status()
        {
            let pid = pm.pid();
            tracing::error!(%status, "postgres exited unexpectedly");
            if self.state == State::Starting {
                // It never ran: whatever stopped it will stop the next start
                // too. Wait longer each time instead of looping.
                self.start_failures += 1;
                let delay = start_backoff(self.start_failures);
                self.start_not_before = Some(tokio::time::Instant::now() + delay);
                tracing::warn!(
                    failures = self.start_failures,
                    retry_in_s = delay.as_secs(),
                    "postgres exited during start-up; its log above says why"
                );
            }
            self.pm = None;
            self.client = None;
            self.state = State::Crashed;
            self.down_since.get_or_insert_with(tokio::time::Instant::now);
            process::reap_leftover_group(pid).await;
        }
        self.position = None;
        let postgres = match &self.pm {
            None => Postgres::Stopped,
            Some(_) => {
                if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                    self.client = self.try_connect().await;
                }
                match &self.client {
                    None => Postgres::Starting,
                    Some(c) => match replication::position(c).await {
                        Ok(p) => {
                            let state = if p.in_recovery {
                                Postgres::Replica { wal: p.wal, timeline: p.timeline }
                            } else {
                                // A primary again: a later rejoin must check for divergence.
                                self.clean_handover = false;
                                Postgres::Primary { wal: p.wal, timeline: p.timeline }
                            };
                            self.position = Some(p);
                            state
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "status query failed");
                            self.client = None;
                            Postgres::Starting
                        }
                    },
                }
            }
        };
        Local {
            name: self.cfg.name.clone(),
            data: data_state,
            postgres,
            nofailover: crate::patroni::tagged_nofailover(&self.cfg.tags),
            failover_priority: crate::patroni::failover_priority(&self.cfg.tags),
            start_failed: self.start_failures > 0
                || self.down_since.is_some_and(|t| t.elapsed() >= self.config.primary_start_timeout()),
            rewind_failed: self.rewind_failed,
            lease_alive: self.lease_alive(),
            failsafe_primary: self.failsafe_primary(),
            peers: None,
            // Set against the view by `replica_diverged` (observe runs
            // without one when etcd cannot be read).
            diverged: false,
        }
    }

    /// Connects when postmaster.pid says postgres accepts connections.
    pub(super) async fn try_connect(&self) -> Option<Client> {
        if !pidfile::read(&self.cfg.postgres.data)?.accepts_connections() {
            return None;
        }
        sql::connect(&self.cfg).await.ok()
    }

    /// Asks the members in `view` for their state, and also those whose
    /// member key vanished within the last ttl (briefly: 500 ms). A member key
    /// can vanish while its member still runs: etcd 3.4 before 3.4.28 lets a
    /// leader that was stalled revoke every lease it saw expire
    /// (etcd-io/etcd#15247), taking the primary's leader and member keys with
    /// it; its replicas must still see the primary before they race.
    pub(super) async fn ask_peers(&self, view: &ClusterView) -> Vec<PeerReport> {
        let listed = view.members.iter().map(|(n, m)| (n.clone(), m.api_url.clone(), Duration::from_secs(2)));
        let vanished = self
            .recent_members
            .iter()
            .filter(|(n, _)| !view.members.contains_key(n.as_str()))
            .map(|(n, (url, _))| (n.clone(), url.clone(), Duration::from_millis(500)));
        let asks = listed.chain(vanished).filter(|(n, _, _)| n.as_str() != self.name()).map(|(name, url, within)| {
            let client = self.api_client.clone();
            async move {
                let reply = client.peer_status(&url, within).await.as_ref().map(peer_reply);
                PeerReport { name, reply }
            }
        });
        let reports: Vec<PeerReport> = futures_util::future::join_all(asks).await;
        tracing::debug!(?reports, "peers");
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicatefrom_cascades_from_a_running_replica_only() {
        let member = |state: &str, role: &str, from: Option<&str>| -> crate::patroni::MemberValue {
            let tags = from.map(|f| format!(r#","tags":{{"replicatefrom":"{f}"}}"#)).unwrap_or_default();
            serde_json::from_str(&format!(
                r#"{{"conn_url":"postgres://h:5432/postgres","api_url":"","state":"{state}","role":"{role}","version":""{tags}}}"#
            ))
            .expect("member")
        };
        let mut v = ClusterView::default();
        v.members.insert("l".into(), member("running", "primary", None));
        v.members.insert("r".into(), member("running", "replica", None));
        v.members.insert("s".into(), member("stopped", "replica", None));
        v.members.insert("loop".into(), member("running", "replica", Some("me")));
        assert_eq!(stream_from(&v, "me", Some("r"), "l"), "r");
        assert_eq!(stream_from(&v, "me", None, "l"), "l");
        assert_eq!(stream_from(&v, "me", Some("s"), "l"), "l", "not running");
        assert_eq!(stream_from(&v, "me", Some("gone"), "l"), "l", "no such member");
        assert_eq!(stream_from(&v, "me", Some("loop"), "l"), "l", "it cascades from me");
        assert_eq!(stream_from(&v, "me", Some("me"), "l"), "l");
    }

    #[test]
    fn clone_sources_are_running_clonefrom_members() {
        let member = |state: &str, clonefrom: bool| -> crate::patroni::MemberValue {
            let tags = if clonefrom { r#","tags":{"clonefrom":true}"# } else { "" };
            serde_json::from_str(&format!(
                r#"{{"conn_url":"","api_url":"","state":"{state}","role":"replica","version":""{tags}}}"#
            ))
            .expect("member")
        };
        let mut v = ClusterView::default();
        v.members.insert("a".into(), member("running", true));
        v.members.insert("b".into(), member("running", true));
        v.members.insert("c".into(), member("stopped", true));
        v.members.insert("d".into(), member("running", false));
        assert_eq!(clone_sources(&v, "a"), ["b"]);
        assert!(clone_sources(&ClusterView::default(), "a").is_empty());
    }

    #[test]
    fn start_backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| start_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn peer_replies() {
        let mut s = NodeStatus::new("c", "b");
        s.state = State::Running;
        s.role = MemberRole::Replica;
        s.xlog.received_location = Some(100);
        s.xlog.replayed_location = Some(90);
        assert_eq!(peer_reply(&s), PeerReply { primary: false, wal: 100, nofailover: false, failover_priority: 1 });
        s.role = MemberRole::Primary;
        s.xlog = crate::api::Xlog { location: Some(200), ..Default::default() };
        s.tags.insert("nofailover".into(), serde_json::json!(true));
        assert_eq!(peer_reply(&s), PeerReply { primary: true, wal: 200, nofailover: true, failover_priority: 1 });
        s.state = State::Stopping;
        assert!(!peer_reply(&s).primary, "a stopping primary is not one");
    }
}
