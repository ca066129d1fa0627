//! The HA executor's loop: observes the DCS and the local PostgreSQL, asks
//! [`decide`](super::decide::decide) what to do, and does it. It wakes on etcd watch events, on its
//! tick (`loop_wait`, shorter while leading or starting), on signals and on
//! the lease deadline.
//!
//! Fencing: while PostgreSQL runs as primary, the loop (and every etcd call
//! inside it) races the lease deadline — the send time of the last
//! successful keepalive plus the granted TTL minus a margin, on the monotonic
//! clock. When it passes, the postmaster gets SIGQUIT (immediate shutdown)
//! at once: the node stops accepting writes before the lease can have
//! expired on etcd, so before any replica can take the leader key.
//!
//! The rest of the executor, by responsibility: [`super::lease`] (the lease
//! value, its renewal, the watch, the etcd reconnect), [`super::observe`]
//! (local state, peer queries), [`super::actions`] (carrying out an
//! action), [`super::credentials`], [`super::publish`] (member key and
//! status), [`super::commands`] (the REST API's operations).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_postgres::Client;

use super::callbacks::CallbackTask;
use super::decide::{Action, Due, decide, schedule_due};
use super::lease::{Lease, keep_lease};
use crate::api::{self, ApiClient, Command, NodeStatus, RestartRequest};
use crate::config::Config;
use crate::dcs::client::{Dcs, DcsError};
use crate::notify::Notifier;
use crate::patroni::{Failover, MemberValue, Role as MemberRole, State};
use crate::postgres::files::{self, ConfInputs};
use crate::postgres::process::Postmaster;
use crate::postgres::replication::Upstream;
use crate::postgres::stop::{self, Mode};
use crate::postgres::{Binaries, RunAs};
use crate::signals::{Request, Signals, wait_for_stop};

/// How often the REST API's WAL positions are refreshed between rounds.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// The executor's state: what the loop, the actions and the publishers share.
pub struct Ha {
    pub(super) cfg: Config,
    pub(super) bin: Binaries,
    pub(super) run_as: RunAs,
    pub(super) inputs: ConfInputs,
    pub(super) dcs: Dcs,
    /// This member's lease and its fencing deadline.
    pub(super) lease: Lease,
    pub(super) pm: Option<Postmaster>,
    pub(super) client: Option<Client>,
    /// The upstream postgres was last configured with (`None`: primary or none).
    pub(super) upstream: Option<Upstream>,
    pub(super) passwords: Option<super::credentials::KnownPasswords>,
    pub(super) sysid: Option<String>,
    /// Member state as Patroni names it.
    pub(super) state: State,
    /// The last shutdown was a clean hand-over: no rewind needed to follow.
    pub(super) clean_handover: bool,
    /// pg_rewind failed and the data was kept: stay stopped until a reinit.
    pub(super) rewind_failed: bool,
    /// This replica replayed past where the leader's history left its
    /// timeline: the next start as a replica runs pg_rewind first.
    pub(super) replica_diverged: bool,
    /// What this round's observation read from PostgreSQL (`None`: not
    /// running or not answering).
    pub(super) position: Option<crate::postgres::replication::Position>,
    /// What `tusk.dcs.conf` last left out of the dynamic configuration (logged).
    pub(super) dynamic_left_out: Vec<String>,
    /// The dynamic parameters were written once already: a change now is
    /// a change of the running configuration (`on_reload`), not its first
    /// application after tusk started.
    pub(super) dynamic_written: bool,
    /// Runs `CALLBACK_SCRIPT` on status changes.
    pub(super) callbacks: Option<CallbackTask>,
    /// postgres exited this many times in a row before it ever ran...
    pub(super) start_failures: u32,
    /// ...so it is not started again before this (no restart loop).
    pub(super) start_not_before: Option<Instant>,
    /// When postgres last exited unexpectedly (cleared once it runs):
    /// `primary_start_timeout` counts from here.
    pub(super) down_since: Option<Instant>,
    pub(super) status: watch::Sender<NodeStatus>,
    pub(super) wake: Arc<Notify>,
    pub(super) last_idle: &'static str,
    pub(super) config: crate::patroni::DynamicConfig,
    pub(super) members_seen: Vec<String>,
    /// Every member's API address and when its member key was last seen:
    /// a member whose key vanished recently is still asked before a race
    /// (`ask_peers`).
    pub(super) recent_members: BTreeMap<String, (String, Instant)>,
    pub(super) last_status_optime: Option<u64>,
    /// Replication slots: member last-seen times, the last `status`, copies.
    pub(super) slots: super::slots::SlotState,
    /// The member key as last written, and on which lease.
    pub(super) last_member: Option<(MemberValue, i64)>,
    /// Shared with the watch task: only a leader wakes on member changes.
    pub(super) leading: Arc<std::sync::atomic::AtomicBool>,
    pub(super) watch_task: Option<tokio::task::JoinHandle<()>>,
    /// Operations from the REST API.
    pub(super) commands: mpsc::Receiver<Command>,
    /// Talks to the peers' REST APIs.
    pub(super) api_client: ApiClient,
    /// The etcd connection the REST API uses (replaced on reload).
    pub(super) dcs_tx: watch::Sender<Option<Dcs>>,
    /// The REST API's TLS acceptor (replaced on reload).
    pub(super) api_tls: Arc<std::sync::RwLock<Option<tokio_rustls::TlsAcceptor>>>,
    /// A restart scheduled through the API.
    pub(super) scheduled_restart: Option<(time::OffsetDateTime, RestartRequest)>,
    /// A scheduled switchover's due time, to wake for it.
    pub(super) scheduled_switchover: Option<Instant>,
    pub(super) dcs_last_seen: Option<u64>,
    pub(super) dcs_reachable: bool,
    /// `mod_revision` of the `sync` key in the last snapshot.
    pub(super) sync_revision: Option<i64>,
    /// `synchronous_standby_names` as last written, and the primary's
    /// flush position then (synchronous mode; see `sync.rs`).
    pub(super) standby_names: Option<(Option<String>, u64)>,
    /// Failsafe mode: the members to ask, and how long their
    /// confirmations keep this primary writable (see `failsafe.rs`).
    pub(super) failsafe: super::failsafe::Failsafe,
}

/// Runs the node in HA mode until told to stop; returns the exit status.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    cfg: Config,
    bin: Binaries,
    run_as: RunAs,
    inputs: ConfInputs,
    api: api::Started,
    dcs_tx: watch::Sender<Option<Dcs>>,
    notifier: &Notifier,
    signals: &mut Signals,
) -> i32 {
    let etcd = cfg.etcd.clone().expect("HA mode has an etcd section");

    // Connect and take a lease, retrying with a clear line per failure; a
    // stop request ends the wait.
    let timeout = Duration::from_secs(cfg.bootstrap_dcs.retry_timeout.max(1));
    let mut delay = Duration::from_millis(500);
    let (dcs, lease, ttl) = loop {
        let attempt = async {
            let dcs = Dcs::connect(&etcd, &cfg.namespace, &cfg.scope, timeout).await?;
            let snap = dcs.snapshot().await?;
            let ttl = Duration::from_secs(if snap.config_revision.is_some() {
                snap.view.config.normalized().ttl
            } else {
                cfg.bootstrap_dcs.normalized().ttl
            });
            let lease = dcs.grant_lease(ttl).await?;
            Ok::<_, DcsError>((dcs, lease, ttl))
        };
        tokio::select! {
            r = attempt => match r {
                Ok(v) => break v,
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach etcd; retrying (nothing is started until it answers)");
                    notifier.status("waiting for etcd");
                }
            },
            req = wait_for_stop(signals) => {
                tracing::info!(?req, "stop requested while waiting for etcd");
                return 0;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_for_stop(signals) => return 0,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    tracing::info!(
        endpoints = %etcd.endpoints.iter().map(|e| e.url(etcd.protocol)).collect::<Vec<_>>().join(","),
        lease,
        ttl_s = ttl.as_secs(),
        "connected to etcd; HA mode (Patroni-compatible keys under /{}/{}/)",
        cfg.namespace,
        cfg.scope
    );
    let wake = Arc::new(Notify::new());
    let callbacks = cfg.callbacks.clone().map(|cb| {
        for (action, command) in &cb.commands {
            tracing::info!(action, command = command.join(" "), "callback");
        }
        CallbackTask::spawn(cb, cfg.scope.clone(), run_as.clone(), api.status.subscribe())
    });
    let mut ha = Ha {
        callbacks,
        lease: Lease::granted(lease, ttl, Instant::now()),
        cfg,
        bin,
        run_as,
        inputs,
        dcs,
        pm: None,
        client: None,
        upstream: None,
        passwords: None,
        sysid: None,
        state: State::Starting,
        clean_handover: false,
        replica_diverged: false,
        position: None,
        rewind_failed: false,
        dynamic_left_out: Vec::new(),
        dynamic_written: false,
        start_failures: 0,
        start_not_before: None,
        down_since: None,
        status: api.status.clone(),
        wake: wake.clone(),
        last_idle: "",
        config: Default::default(),
        members_seen: Vec::new(),
        recent_members: BTreeMap::new(),
        last_status_optime: None,
        slots: Default::default(),
        last_member: None,
        leading: Arc::default(),
        watch_task: None,
        commands: api.commands,
        api_client: api.client,
        dcs_tx,
        api_tls: api.tls,
        scheduled_restart: None,
        scheduled_switchover: None,
        dcs_last_seen: None,
        dcs_reachable: false,
        sync_revision: None,
        standby_names: None,
        failsafe: super::failsafe::Failsafe::new(api.failsafe),
    };
    ha.dcs_tx.send_replace(Some(ha.dcs.clone()));
    ha.spawn_watch();
    ha.main_loop(notifier, signals).await
}

impl Ha {
    pub(super) fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(super) async fn main_loop(&mut self, notifier: &Notifier, signals: &mut Signals) -> i32 {
        let mut last_ready_role = MemberRole::Uninitialized;
        loop {
            // One iteration, raced against the fencing deadline while primary.
            let fence_pid = self.running_primary_pid();
            let deadline = self.fence_deadline();
            let outcome = tokio::select! {
                o = self.iterate() => Some(o),
                _ = sleep_until(deadline), if fence_pid.is_some() => None,
            };
            match outcome {
                None => {
                    self.deadline_passed().await;
                    continue;
                }
                Some(Some(code)) => {
                    self.shutdown(Request::StopNow, notifier, signals).await;
                    return code;
                }
                Some(None) => {}
            }
            // Readiness for systemd once postgres serves in a settled role.
            let st = self.status.borrow().clone();
            if st.state == State::Running && st.role != last_ready_role {
                tracing::info!(role = %st.role, leader = st.leader, "PostgreSQL is ready: {}", st.role);
                notifier.ready(&format!("running as {}", st.role));
                last_ready_role = st.role.clone();
            }

            // Wait for a reason to look again; meanwhile keep the positions
            // the REST API serves fresh (lag checks, metrics).
            let wait_until = Instant::now() + self.tick();
            let fence_pid = self.running_primary_pid();
            let deadline = self.fence_deadline();
            let mut refresh = tokio::time::interval_at(Instant::now() + STATUS_REFRESH, STATUS_REFRESH);
            loop {
                tokio::select! {
                    _ = self.wake.notified() => break,
                    _ = sleep_until(wait_until) => break,
                    _ = refresh.tick() => self.refresh_status().await,
                    _ = sleep_until(deadline), if fence_pid.is_some() => {
                        self.deadline_passed().await;
                        break;
                    }
                    req = signals.recv() => match req {
                        Request::Stop | Request::StopNow => return self.shutdown(req, notifier, signals).await,
                        Request::Reload => {
                            self.reload().await;
                            break;
                        }
                        Request::Status => tracing::info!(status = ?self.status.borrow(), "status"),
                        Request::Ignore => {}
                    },
                    Some(cmd) = self.commands.recv() => {
                        self.command(cmd).await;
                        break;
                    }
                }
            }
        }
    }

    pub(super) fn tick(&self) -> Duration {
        let c = self.config.normalized();
        let st = self.status.borrow();
        if st.state != State::Running && self.pm.is_some() {
            return Duration::from_millis(100);
        }
        // The lease is renewed once per loop, as Patroni does: renewing more
        // often would only make a crashed leader's lease live longer. After a
        // failed keepalive, retry within a second (fencing does not depend
        // on the cadence: it races the deadline).
        // A failed keepalive, or a cluster without a leader (a peer may still
        // be stopping): look again within a second.
        if self.lease.keepalive_failed || st.cluster_unlocked {
            return Duration::from_secs(1).min(Duration::from_secs(c.loop_wait));
        }
        let mut tick = Duration::from_secs(c.loop_wait);
        if let Some(at) = self.scheduled_switchover {
            tick = tick.min(at.saturating_duration_since(Instant::now()));
        }
        if let Some((at, _)) = &self.scheduled_restart {
            let ahead = *at - time::OffsetDateTime::now_utc();
            tick = tick.min(ahead.try_into().unwrap_or_default());
        }
        tick
    }

    pub(super) fn running_primary_pid(&self) -> Option<nix::unistd::Pid> {
        let st = self.status.borrow();
        (st.role == MemberRole::Primary).then(|| self.pm.as_ref().map(|p| p.pid())).flatten()
    }

    /// When a primary must act on its deadline: until then it may write
    /// on its lease, or on its members' confirmations (failsafe mode).
    /// In failsafe mode it wakes early enough to ask the members once more
    /// before the deadline itself.
    pub(super) fn fence_deadline(&self) -> Instant {
        let lease = self.lease.alive_until.unwrap_or_else(Instant::now);
        let deadline = self.failsafe.until.map_or(lease, |f| f.max(lease));
        if self.config.failsafe_mode() {
            deadline.checked_sub(super::failsafe::ASK_AHEAD).unwrap_or(deadline)
        } else {
            deadline
        }
    }

    /// The deadline is (about to be) reached without a renewed lease: in
    /// failsafe mode, every member's confirmation moves it; else fencing.
    async fn deadline_passed(&mut self) {
        if self.config.failsafe_mode() && self.failsafe_confirm().await {
            return;
        }
        self.fence("the leader lease could not be renewed before its deadline").await;
    }

    /// How long stopping postgres may take: the shutdown budget, or a
    /// primary's `primary_stop_timeout` in synchronous mode when shorter.
    pub(super) fn stop_budget(&self) -> Duration {
        let budget = self.cfg.tusk.shutdown_timeout;
        match self.config.primary_stop_timeout() {
            Some(t) if self.running_primary_pid().is_some() => budget.min(t),
            _ => budget,
        }
    }

    /// Stops writes now: immediate shutdown of a primary.
    pub(super) async fn fence(&mut self, why: &str) {
        // An immediate stop of a primary may leave WAL the leader lacks.
        self.clean_handover = false;
        if self.pm.is_some() {
            tracing::error!("{why}: immediate shutdown of the primary (fencing)");
        }
        self.stop_local(Mode::Immediate, Duration::from_secs(5)).await;
        self.state = State::Stopped;
        self.publish_status();
    }

    /// One observe → decide → act round. `Some(code)`: exit.
    pub(super) async fn iterate(&mut self) -> Option<i32> {
        self.renew_lease().await;
        let snap = match self.dcs.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster from etcd; keeping the current role until the lease deadline");
                self.dcs_reachable = false;
                self.observe().await;
                self.status.send_modify(|st| st.facts.dcs_reachable = false);
                self.failsafe_confirm().await;
                return None;
            }
        };
        self.dcs_reachable = true;
        self.dcs_last_seen =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs());
        let mut snap = snap;
        self.scheduled_switchover = None;
        if let Some(f) = &mut snap.view.failover
            && let Some(at) = &f.scheduled_at
        {
            let loop_wait = self.config.normalized().loop_wait.max(snap.view.config.normalized().loop_wait);
            match crate::api::parse_time(at) {
                None => {
                    tracing::warn!(scheduled_at = %at, "cannot parse the scheduled switchover's time; ignoring it");
                }
                Some(t) => match schedule_due(t, time::OffsetDateTime::now_utc(), loop_wait) {
                    Due::Now => {
                        tracing::info!(scheduled_at = %at, "the scheduled switchover is due");
                        f.scheduled_at = None;
                    }
                    Due::Later(d) => {
                        self.scheduled_switchover = Some(Instant::now() + d);
                    }
                    Due::Stale => {
                        if snap.view.leader.as_deref() == Some(self.name()) {
                            tracing::warn!(scheduled_at = %at, "found a stale scheduled switchover; cleaning it up");
                            let _ = self.dcs.put_failover(&Failover::default(), snap.failover_revision).await;
                        }
                    }
                },
            }
        }
        // Until a bootstrap writes `config`, the bootstrap settings rule
        // (the lease was granted with their ttl; their loop_wait renews it).
        self.config =
            if snap.config_revision.is_some() { snap.view.config.clone() } else { self.cfg.bootstrap_dcs.clone() };
        self.sync_revision = snap.sync_revision;
        self.failsafe_observed(&snap.view).await;
        if snap.config_revision.is_none() {
            // The decision too: a standby cluster's data adopted before its
            // `config` exists must not be promoted for want of `standby_cluster`.
            snap.view.config = self.config.clone();
        }
        // A new ttl in `config` applies without a restart: a lease with the new
        // TTL, the member key re-put, the leader key moved (conditionally).
        let ttl = Duration::from_secs(self.config.normalized().ttl);
        if snap.config_revision.is_some() && ttl != self.lease.ttl {
            match self.dcs.grant_lease(ttl).await {
                Ok(lease) => {
                    tracing::info!(old_s = self.lease.ttl.as_secs(), new_s = ttl.as_secs(), "ttl changed: new lease");
                    // The old lease is left to expire: its keys move to the new one.
                    self.lease.id = lease;
                    self.lease.ttl = ttl;
                    self.last_member = None;
                    if snap.view.leader.as_deref() == Some(self.name()) {
                        let _ = self.dcs.reclaim_leader(&self.cfg.name, lease).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot grant a lease with the new ttl"),
            }
        }
        // The leader key on an old lease of ours (lease re-granted): move it.
        if snap.view.leader.as_deref() == Some(self.name()) && snap.leader_lease.is_some_and(|l| l != self.lease.id) {
            match self.dcs.reclaim_leader(&self.cfg.name, self.lease.id).await {
                Ok(true) => tracing::info!("leader key moved to the new lease"),
                Ok(false) => tracing::warn!("leader key taken over meanwhile"),
                Err(e) => tracing::warn!(error = %e, "cannot move the leader key to the new lease"),
            }
        }
        // Cluster-wide parameters from `config`: applied with a reload.
        if self.cfg.postgres.data.join("PG_VERSION").exists() {
            let changed = self.dynamic_written;
            match files::write_dynamic(
                &self.cfg,
                &self.run_as,
                &self.config.postgresql.parameters,
                &self.inputs.libraries,
            ) {
                Ok(true) => {
                    if let Some(pm) = &self.pm {
                        tracing::info!("dynamic configuration changed: postgres reloaded");
                        pm.signal(Signal::SIGHUP);
                        if let Some(cb) = self.callbacks.as_ref().filter(|_| changed) {
                            cb.reloaded();
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot write the dynamic parameters: {e}"),
            }
            // `pg_hba` too, when the dynamic configuration has one.
            let hba = self.config.postgresql.pg_hba();
            if hba != self.inputs.dynamic_hba {
                self.inputs.dynamic_hba = hba;
                match files::write_hba(&self.cfg, &self.run_as, self.inputs.dynamic_hba.as_deref()) {
                    Ok(true) => {
                        if let Some(pm) = &self.pm {
                            tracing::info!("pg_hba of the dynamic configuration changed: postgres reloaded");
                            pm.signal(Signal::SIGHUP);
                            if let Some(cb) = self.callbacks.as_ref().filter(|_| changed) {
                                cb.reloaded();
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot write pg_hba.conf: {e}"),
                }
            }
            self.dynamic_written = true;
            // Once per change, on every member (a replica's copy of the
            // file may have come with its base backup).
            let left_out = files::left_out(&self.cfg);
            if left_out != self.dynamic_left_out {
                for l in &left_out {
                    tracing::warn!("dynamic configuration: {l} (as Spilo does)");
                }
                self.dynamic_left_out = left_out;
            }
        }
        let now = Instant::now();
        for (name, m) in &snap.view.members {
            self.recent_members.insert(name.clone(), (m.api_url.clone(), now));
        }
        let keep = Duration::from_secs(self.config.normalized().ttl);
        self.recent_members.retain(|_, (_, seen)| now.duration_since(*seen) <= keep);
        let mut local = self.observe().await;
        local.diverged = self.replica_diverged(&snap.view, &local).await;
        let mut action = decide(&snap.view, &local);
        if action == Action::AskPeers {
            local.peers = Some(self.ask_peers(&snap.view).await);
            action = decide(&snap.view, &local);
        }
        let action = match action {
            Action::RejectSwitchover(why) => {
                tracing::warn!(failover = ?snap.view.failover, "switchover not possible: {why}; clearing the request");
                let _ = self.dcs.put_failover(&Failover::default(), snap.failover_revision).await;
                Action::KeepLeading
            }
            a => a,
        };
        self.run_scheduled_restart().await;
        // A long action (initdb, a base backup, pg_rewind) keeps the lease
        // alive as Patroni's loop does meanwhile; a short one never renews.
        let alive = std::cell::Cell::new(self.lease.alive_until);
        let (dcs, lease) = (self.dcs.clone(), self.lease.id);
        let every = Duration::from_secs(self.config.normalized().loop_wait.max(1));
        let code = tokio::select! {
            c = self.act(action, &snap.view) => c,
            never = keep_lease(&dcs, lease, every, &alive) => match never {},
        };
        if self.lease.id == lease && alive.get() > self.lease.alive_until {
            self.lease.alive_until = alive.get();
        }
        let view = self.dcs.snapshot().await.map(|s| s.view).unwrap_or(snap.view);
        self.publish(&view).await;
        code
    }

    /// SIGTERM/SIGINT/SIGQUIT: stop postgres (a leader's replicas receive the
    /// shutdown checkpoint before its walsenders exit), then revoke the lease,
    /// which removes the leader key and the member key at once: the replicas
    /// race immediately instead of waiting for the TTL.
    pub(super) async fn shutdown(&mut self, req: Request, notifier: &Notifier, signals: &mut Signals) -> i32 {
        tracing::info!("shutting down: stopping postgres, then giving up the leader and member keys");
        // Peers asking our API from now on must not see a running primary.
        let leader = self.status.borrow().leader;
        let budget = self.stop_budget();
        self.state = State::Stopping;
        self.status.send_modify(|st| {
            st.state = State::Stopping;
            st.leader = false;
        });
        let code = match self.pm.take() {
            Some(mut pm) => {
                let client = self.client.take();
                notifier.stopping();
                stop::stop(&mut pm, client, Mode::for_request(req), budget, Some(signals)).await
            }
            None => {
                notifier.stopping();
                0
            }
        };
        // Revoking the lease drops the leader key and the member key in one
        // step; the conditional delete covers a leader key on another lease.
        match tokio::time::timeout(Duration::from_secs(2), self.dcs.revoke_lease(self.lease.id)).await {
            Ok(Ok(())) => tracing::info!(leader, "leader and member keys removed"),
            _ => tracing::warn!("cannot revoke the lease; the keys expire with it"),
        }
        if leader {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.dcs.release_leader(&self.cfg.name)).await;
        }
        if let Some(cb) = self.callbacks.take() {
            // The on_stop of this stop, within what is left of the budget.
            self.state = State::Stopped;
            self.publish_status();
            cb.finish(Duration::from_secs(2)).await;
        }
        code
    }
}
