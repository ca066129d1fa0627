//! What the loop publishes: the member key in etcd and the status the REST
//! API serves. The member key is built by a pure function of what was
//! observed, with its own test.

use super::decide::ClusterView;
use super::run::Ha;
use crate::api::{self, RestartRequest};
use crate::config::Config;
use crate::patroni::{MemberValue, PATRONI_COMPAT_VERSION, Role as MemberRole, State};
use crate::postgres::replication::{self, Position};
use crate::postgres::sql;

/// The role a member announces: from the running postgres, else from
/// whether it has a data directory.
pub(super) fn member_role(pos: Option<&Position>, has_data: bool) -> MemberRole {
    match (pos, has_data) {
        (Some(p), _) if !p.in_recovery => MemberRole::Primary,
        (Some(_), _) => MemberRole::Replica,
        (None, true) => MemberRole::Replica,
        (None, false) => MemberRole::Uninitialized,
    }
}

/// The member key's value (`members/<name>`), as Patroni writes it.
pub(super) fn member_value(
    cfg: &Config,
    state: State,
    role: MemberRole,
    pos: Option<&Position>,
    pending_restart: bool,
    pause: bool,
    scheduled_restart: Option<&(time::OffsetDateTime, RestartRequest)>,
) -> MemberValue {
    MemberValue {
        conn_url: format!("postgres://{}/postgres", cfg.postgres.connect_address),
        api_url: cfg.api.url("/patroni"),
        state,
        role,
        version: PATRONI_COMPAT_VERSION.to_owned(),
        xlog_location: pos.map(|p| p.wal),
        timeline: pos.map(|p| p.timeline),
        tags: cfg.tags.clone(),
        replication_state: pos.and_then(|p| p.replication_state()),
        receive_lsn: pos.and_then(|p| p.receive.filter(|_| p.in_recovery)),
        replay_lsn: pos.and_then(|p| p.replay.filter(|_| p.in_recovery)),
        pending_restart,
        pause,
        scheduled_restart: scheduled_restart.map(|(at, r)| {
            let mut v = serde_json::json!({
                "schedule": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
            });
            if let Some(pv) = &r.postgres_version {
                v["postgres_version"] = serde_json::json!(pv);
            }
            v
        }),
    }
}

impl Ha {
    /// Between rounds: the WAL positions and replication details the REST
    /// API serves, from postgres only (no DCS traffic, no decision).
    pub(super) async fn refresh_status(&mut self) {
        let Some(client) = &self.client else { return };
        let Ok(p) = replication::position(client).await else { return };
        let details = sql::details(client).await.ok();
        self.status.send_modify(|st| st.refresh_positions(&p, details.as_ref()));
    }

    /// Publishes the member key and the API status.
    pub(super) async fn publish(&mut self, view: &ClusterView) {
        let pos = match &self.client {
            Some(c) => replication::position(c).await.ok(),
            None => None,
        };
        let details = match &self.client {
            Some(c) => match sql::details(c).await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::debug!(error = %e, "status details query failed");
                    None
                }
            },
            None => None,
        };
        let pending_restart = details.as_ref().is_some_and(|d| !d.pending_restart.is_empty());
        let leader = view.leader.as_deref() == Some(self.name());
        if self.pm.is_some() && pos.is_some() && self.state != State::Restarting {
            self.state = State::Running;
            self.start_failures = 0;
            self.start_not_before = None;
            self.down_since = None;
        }
        let has_data = self.sysid.is_some() || self.cfg.postgres.data.join("PG_VERSION").exists();
        let mut role = member_role(pos.as_ref(), has_data);
        if leader && role == MemberRole::Replica && pos.is_some() && view.config.standby_cluster.is_some() {
            role = MemberRole::StandbyLeader;
        }
        let member = member_value(
            &self.cfg,
            self.state.clone(),
            role,
            pos.as_ref(),
            pending_restart,
            view.config.pause,
            self.scheduled_restart.as_ref(),
        );
        // Only on change: every put wakes the leader's watch.
        if self.last_member.as_ref() != Some(&(member.clone(), self.lease.id)) {
            match self.dcs.put_member(&self.cfg.name, &member, self.lease.id).await {
                Ok(()) => self.last_member = Some((member.clone(), self.lease.id)),
                Err(e) => tracing::warn!(error = %e, "cannot publish the member key"),
            }
        }
        self.leading.store(leader, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.status.borrow().clone();
        st.state = member.state.clone();
        st.role = member.role.clone();
        st.tags = member.tags.clone();
        let named = !leader
            && view.config.synchronous_mode()
            && view.sync.as_ref().is_some_and(|s| s.is_standby(&self.cfg.name));
        st.sync_standby = named && !view.config.quorum_mode();
        st.quorum_standby = named && view.config.quorum_mode();
        st.leader = leader;
        st.cluster_unlocked = view.leader.is_none();
        st.pause = view.config.pause;
        st.database_system_identifier = self.sysid.clone();
        st.server_version = Some(self.bin.version * 10000);
        st.set_postgres(pos.as_ref(), details.as_ref());
        st.dcs_last_seen = self.dcs_last_seen;
        let c = self.config.normalized();
        st.facts = api::status::Facts {
            standalone: false,
            leader_optime: view.optime.max(pos.filter(|p| p.in_recovery).and_then(|p| p.receive)),
            ttl: c.ttl,
            maximum_lag_on_failover: c.maximum_lag_on_failover,
            last_loop: Some(std::time::Instant::now()),
            dcs_reachable: self.dcs_reachable,
            failsafe_mode: c.failsafe_mode(),
            failsafe: self.failsafe.members.clone(),
        };
        self.status.send_replace(st);
    }

    pub(super) fn publish_status(&self) {
        let mut st = self.status.borrow().clone();
        st.state = self.state.clone();
        if self.pm.is_none() {
            st.leader = false;
            st.xlog = api::Xlog::default();
        }
        self.status.send_replace(st);
    }

    pub(super) fn publish_scheduled_restart(&self) {
        let info = self.scheduled_restart.as_ref().map(|(at, r)| api::status::ScheduledRestartInfo {
            schedule: at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            postgres_version: r.postgres_version.clone(),
        });
        self.status.send_modify(|st| st.scheduled_restart = info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostFacts;

    fn cfg() -> Config {
        let env = [("PG_CONNECT_ADDRESS", "10.0.0.11:5432"), ("RESTAPI_CONNECT_ADDRESS", "10.0.0.11:8008")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let host = HostFacts { hostname: "a".into(), address: [10, 0, 0, 11].into(), memory_bytes: 1 << 30 };
        Config::from_map(&env, &host).unwrap()
    }

    fn pos(in_recovery: bool) -> Position {
        Position {
            in_recovery,
            wal: 67420024,
            receive: Some(67420024),
            replay: Some(67420000),
            timeline: 3,
            streaming: true,
        }
    }

    #[test]
    fn member_keys_are_patronis() {
        let p = pos(false);
        let role = member_role(Some(&p), true);
        let m = member_value(&cfg(), State::Running, role, Some(&p), false, false, None);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"conn_url":"postgres://10.0.0.11:5432/postgres","api_url":"http://10.0.0.11:8008/patroni","state":"running","role":"primary","version":"3.0.2","xlog_location":67420024,"timeline":3}"#
        );
        let r = pos(true);
        let m = member_value(&cfg(), State::Running, member_role(Some(&r), true), Some(&r), true, true, None);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["role"], "replica");
        assert_eq!(v["replication_state"], "streaming");
        assert_eq!((v["receive_lsn"].as_u64(), v["replay_lsn"].as_u64()), (Some(67420024), Some(67420000)));
        assert_eq!((v["pending_restart"].as_bool(), v["pause"].as_bool()), (Some(true), Some(true)));
        assert_eq!(member_role(None, true), MemberRole::Replica);
        assert_eq!(member_role(None, false), MemberRole::Uninitialized);
        let at = time::macros::datetime!(2026-11-22 03:00 UTC);
        let req = RestartRequest { postgres_version: Some("16.4".into()), ..Default::default() };
        let m = member_value(&cfg(), State::Stopped, MemberRole::Replica, None, false, false, Some(&(at, req)));
        assert_eq!(
            serde_json::to_value(&m).unwrap()["scheduled_restart"],
            serde_json::json!({"schedule": "2026-11-22T03:00:00Z", "postgres_version": "16.4"})
        );
    }
}
