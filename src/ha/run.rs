//! The HA executor: observes the DCS and the local PostgreSQL, asks
//! [`decide`] what to do, and does it. It wakes on etcd watch events, on its
//! tick (`loop_wait`, shorter while leading or starting), on signals and on
//! the lease deadline.
//!
//! Fencing: while PostgreSQL runs as primary, the loop (and every etcd call
//! inside it) races the lease deadline — the send time of the last
//! successful keepalive plus the granted TTL minus a margin, on the monotonic
//! clock. When it passes, the postmaster gets SIGQUIT (immediate shutdown)
//! at once: the node stops accepting writes before the lease can have
//! expired on etcd, so before any replica can take the leader key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_postgres::Client;

use super::decide::{Action, ClusterView, DataDir, Due, Local, PeerReply, PeerReport, Postgres, decide, schedule_due};
use super::error::HaError;
use crate::api::{self, ApiClient, Command, NodeStatus, Reply, RestartRequest, Xlog};
use crate::config::{Config, Secret};
use crate::dcs::client::{Dcs, DcsError};
use crate::exit::EXIT_FAILURE;
use crate::notify::Notifier;
use crate::patroni::{Failover, HistoryLine, MemberValue, PATRONI_COMPAT_VERSION, Role as MemberRole, State, Status};
use crate::postgres::files::{self, ConfInputs, Role};
use crate::postgres::passwords::Passwords;
use crate::postgres::process::{self, Postmaster};
use crate::postgres::replication::{self, Upstream};
use crate::postgres::stop::{self, Mode};
use crate::postgres::{Binaries, RunAs, pidfile, sql, wal};
use crate::signals::{Request, Signals, wait_for_stop};
use axum::http::StatusCode;

/// How often the REST API's WAL positions are refreshed between rounds.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// Time kept between the fencing deadline and the lease's expiry on etcd.
fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 5).clamp(Duration::from_millis(500), Duration::from_secs(3))
}

/// The role passwords shared through etcd when they were generated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SharedCredentials {
    superuser: String,
    replication: String,
    admin: String,
}

pub struct Ha {
    cfg: Config,
    bin: Binaries,
    run_as: RunAs,
    inputs: ConfInputs,
    dcs: Dcs,
    lease: i64,
    /// Monotonic time until which the lease is known alive (fencing deadline).
    lease_alive_until: Option<Instant>,
    pm: Option<Postmaster>,
    client: Option<Client>,
    /// The upstream postgres was last configured with (`None`: primary or none).
    upstream: Option<Upstream>,
    passwords: Option<Passwords>,
    sysid: Option<String>,
    /// Member state as Patroni names it.
    state: State,
    /// The last shutdown was a clean hand-over: no rewind needed to follow.
    clean_handover: bool,
    status: watch::Sender<NodeStatus>,
    wake: Arc<Notify>,
    last_idle: &'static str,
    config: crate::patroni::DynamicConfig,
    members_seen: Vec<String>,
    last_status_optime: Option<u64>,
    /// The member key as last written, and on which lease.
    last_member: Option<(MemberValue, i64)>,
    /// Shared with the watch task: only a leader wakes on member changes.
    leading: Arc<std::sync::atomic::AtomicBool>,
    watch_task: Option<tokio::task::JoinHandle<()>>,
    /// TTL the current lease was granted with.
    lease_ttl: Duration,
    keepalive_failed: bool,
    last_renewal: Option<Instant>,
    /// Operations from the REST API.
    commands: mpsc::Receiver<Command>,
    /// Talks to the peers' REST APIs.
    api_client: ApiClient,
    /// The etcd connection the REST API uses (replaced on reload).
    dcs_tx: watch::Sender<Option<Dcs>>,
    /// The REST API's TLS acceptor (replaced on reload).
    api_tls: Arc<std::sync::RwLock<Option<tokio_rustls::TlsAcceptor>>>,
    /// A restart scheduled through the API.
    scheduled_restart: Option<(time::OffsetDateTime, RestartRequest)>,
    /// A scheduled switchover's due time, to wake for it.
    scheduled_switchover: Option<Instant>,
    dcs_last_seen: Option<u64>,
    dcs_reachable: bool,
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
    let mut ha = Ha {
        lease_alive_until: Some(Instant::now() + ttl - fence_margin(ttl)),
        cfg,
        bin,
        run_as,
        inputs,
        dcs,
        lease,
        pm: None,
        client: None,
        upstream: None,
        passwords: None,
        sysid: None,
        state: State::Starting,
        clean_handover: false,
        status: api.status.clone(),
        wake: wake.clone(),
        last_idle: "",
        config: Default::default(),
        members_seen: Vec::new(),
        last_status_optime: None,
        last_member: None,
        leading: Arc::default(),
        watch_task: None,
        lease_ttl: ttl,
        keepalive_failed: false,
        last_renewal: None,
        commands: api.commands,
        api_client: api.client,
        dcs_tx,
        api_tls: api.tls,
        scheduled_restart: None,
        scheduled_switchover: None,
        dcs_last_seen: None,
        dcs_reachable: false,
    };
    ha.dcs_tx.send_replace(Some(ha.dcs.clone()));
    ha.spawn_watch();
    ha.main_loop(notifier, signals).await
}

impl Ha {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Wakes the loop on changes of the keys that decide leadership.
    fn spawn_watch(&mut self) {
        if let Some(old) = self.watch_task.take() {
            old.abort();
        }
        let dcs = self.dcs.clone();
        let wake = self.wake.clone();
        let leading = self.leading.clone();
        let prefix = dcs.keys.prefix().to_owned();
        self.watch_task = Some(tokio::spawn(async move {
            let mut from = 0i64;
            loop {
                let stream = match dcs.snapshot().await {
                    Ok(s) => {
                        from = from.max(s.revision + 1);
                        dcs.watch(from).await
                    }
                    Err(e) => Err(e),
                };
                match stream {
                    Ok(mut stream) => {
                        // Events may have been missed while reconnecting: look again.
                        wake.notify_one();
                        while let Ok(Some(resp)) = stream.message().await {
                            let relevant = resp.events().iter().any(|ev| {
                                let deleted = ev.event_type() == etcd_client::EventType::Delete;
                                ev.kv().and_then(|kv| kv.key_str().ok()).is_some_and(|k| {
                                    let rel = k.strip_prefix(&prefix).unwrap_or("");
                                    // Member changes matter to the leader (slots); a
                                    // member leaving matters to everyone (peer checks).
                                    matches!(rel, "leader" | "config" | "failover" | "initialize")
                                        || (rel.starts_with("members/")
                                            && (deleted || leading.load(std::sync::atomic::Ordering::Relaxed)))
                                })
                            });
                            if let Some(h) = resp.header() {
                                from = from.max(h.revision() + 1);
                            }
                            if relevant {
                                wake.notify_one();
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "watch failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }

    async fn main_loop(&mut self, notifier: &Notifier, signals: &mut Signals) -> i32 {
        let mut last_ready_role = MemberRole::Uninitialized;
        loop {
            // One iteration, raced against the fencing deadline while primary.
            let fence_pid = self.running_primary_pid();
            let deadline = self.lease_alive_until.unwrap_or_else(Instant::now);
            let outcome = tokio::select! {
                o = self.iterate() => Some(o),
                _ = sleep_until(deadline), if fence_pid.is_some() => None,
            };
            match outcome {
                None => {
                    self.fence("the leader lease could not be renewed before its deadline").await;
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
            let deadline = self.lease_alive_until.unwrap_or_else(Instant::now);
            let mut refresh = tokio::time::interval_at(Instant::now() + STATUS_REFRESH, STATUS_REFRESH);
            loop {
                tokio::select! {
                    _ = self.wake.notified() => break,
                    _ = sleep_until(wait_until) => break,
                    _ = refresh.tick() => self.refresh_status().await,
                    _ = sleep_until(deadline), if fence_pid.is_some() => {
                        self.fence("the leader lease could not be renewed before its deadline").await;
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

    /// Between rounds: the WAL positions and replication details the REST
    /// API serves, from postgres only (no DCS traffic, no decision).
    async fn refresh_status(&mut self) {
        let Some(client) = &self.client else { return };
        let Ok(p) = replication::position(client).await else { return };
        let details = sql::details(client).await.ok();
        self.status.send_modify(|st| st.refresh_positions(&p, details.as_ref()));
    }

    /// SIGHUP: PostgreSQL's certificates re-installed and reloaded; the etcd
    /// certificate files re-read by a new connection (kept only if it works).
    async fn reload(&mut self) {
        if let Err(e) = crate::postgres::tls::install(&self.cfg, &self.run_as) {
            tracing::error!("keeping the installed certificates: {e}");
        }
        if let Some(pm) = &self.pm {
            pm.signal(Signal::SIGHUP);
        }
        api::reload_tls(&self.api_tls, &self.cfg.api);
        let etcd = self.cfg.etcd.clone().expect("HA mode has an etcd section");
        let timeout = Duration::from_secs(self.config.normalized().retry_timeout);
        match Dcs::connect(&etcd, &self.cfg.namespace, &self.cfg.scope, timeout).await {
            Ok(dcs) => match dcs.snapshot().await {
                Ok(_) => {
                    self.dcs = dcs;
                    self.dcs_tx.send_replace(Some(self.dcs.clone()));
                    self.spawn_watch();
                    tracing::info!("reloaded: etcd certificates re-read, postgres reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "keeping the current etcd connection: the new certificates do not work")
                }
            },
            Err(e) => tracing::error!(error = %e, "keeping the current etcd connection"),
        }
    }

    fn tick(&self) -> Duration {
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
        if self.keepalive_failed || st.cluster_unlocked {
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

    fn running_primary_pid(&self) -> Option<nix::unistd::Pid> {
        let st = self.status.borrow();
        (st.role == MemberRole::Primary).then(|| self.pm.as_ref().map(|p| p.pid())).flatten()
    }

    /// Stops writes now: immediate shutdown of a primary.
    async fn fence(&mut self, why: &str) {
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
    async fn iterate(&mut self) -> Option<i32> {
        self.renew_lease().await;
        let snap = match self.dcs.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster from etcd; keeping the current role until the lease deadline");
                self.dcs_reachable = false;
                self.observe().await;
                self.status.send_modify(|st| st.facts.dcs_reachable = false);
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
        self.config = snap.view.config.clone();
        // A new ttl in `config` applies without a restart: a lease with the new
        // TTL, the member key re-put, the leader key moved (conditionally).
        let ttl = Duration::from_secs(self.config.normalized().ttl);
        if snap.config_revision.is_some() && ttl != self.lease_ttl {
            match self.dcs.grant_lease(ttl).await {
                Ok(lease) => {
                    tracing::info!(old_s = self.lease_ttl.as_secs(), new_s = ttl.as_secs(), "ttl changed: new lease");
                    // The old lease is left to expire: its keys move to the new one.
                    self.lease = lease;
                    self.lease_ttl = ttl;
                    self.last_member = None;
                    if snap.view.leader.as_deref() == Some(self.name()) {
                        let _ = self.dcs.reclaim_leader(&self.cfg.name, lease).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot grant a lease with the new ttl"),
            }
        }
        // The leader key on an old lease of ours (lease re-granted): move it.
        if snap.view.leader.as_deref() == Some(self.name()) && snap.leader_lease.is_some_and(|l| l != self.lease) {
            match self.dcs.reclaim_leader(&self.cfg.name, self.lease).await {
                Ok(true) => tracing::info!("leader key moved to the new lease"),
                Ok(false) => tracing::warn!("leader key taken over meanwhile"),
                Err(e) => tracing::warn!(error = %e, "cannot move the leader key to the new lease"),
            }
        }
        // Cluster-wide parameters from `config`: applied with a reload.
        if self.cfg.postgres.data.join("PG_VERSION").exists() {
            match files::write_dynamic(&self.cfg, &self.run_as, &self.config.postgresql.parameters) {
                Ok(true) => {
                    if let Some(pm) = &self.pm {
                        tracing::info!("dynamic configuration changed: postgres reloaded");
                        pm.signal(Signal::SIGHUP);
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot write the dynamic parameters: {e}"),
            }
        }
        let mut local = self.observe().await;
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
        let code = self.act(action, &snap.view).await;
        let view = self.dcs.snapshot().await.map(|s| s.view).unwrap_or(snap.view);
        self.publish(&view).await;
        code
    }

    async fn renew_lease(&mut self) {
        // At most once per loop_wait (unless the last one failed), as Patroni
        // does: waking up more often (watch events) must not stretch the life
        // of the lease, which is what a crashed leader's failover waits for.
        let loop_wait = Duration::from_secs(self.config.normalized().loop_wait);
        if !self.keepalive_failed && self.last_renewal.is_some_and(|t| t.elapsed() < loop_wait) {
            return;
        }
        let sent = Instant::now();
        self.last_renewal = Some(sent);
        let result = self.dcs.keepalive(self.lease).await;
        self.keepalive_failed = result.is_err();
        match result {
            Ok(ttl) if ttl > 0 => {
                let ttl = Duration::from_secs(ttl as u64);
                self.lease_alive_until = Some(sent + ttl - fence_margin(ttl));
            }
            Ok(_) | Err(DcsError::LeaseNotFound) => {
                tracing::warn!(lease = self.lease, "the lease expired; granting a new one");
                let ttl = Duration::from_secs(self.config.normalized().ttl);
                if let Ok(l) = self.dcs.grant_lease(ttl).await {
                    self.lease = l;
                    self.lease_alive_until = Some(sent + ttl - fence_margin(ttl));
                    self.last_member = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease keepalive failed"),
        }
    }

    fn lease_alive(&self) -> bool {
        self.lease_alive_until.is_some_and(|t| Instant::now() < t)
    }

    /// The local data directory and postgres.
    async fn observe(&mut self) -> Local {
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
            self.pm = None;
            self.client = None;
            self.state = State::Crashed;
            process::reap_leftover_group(pid).await;
        }
        let postgres = match &self.pm {
            None => Postgres::Stopped,
            Some(_) => {
                if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                    self.client = self.try_connect().await;
                }
                match &self.client {
                    None => Postgres::Starting,
                    Some(c) => match replication::position(c).await {
                        Ok(p) if p.in_recovery => Postgres::Replica { wal: p.wal, timeline: p.timeline },
                        Ok(p) => {
                            // A primary again: a later rejoin must check for divergence.
                            self.clean_handover = false;
                            Postgres::Primary { wal: p.wal, timeline: p.timeline }
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
            nofailover: false,
            lease_alive: self.lease_alive(),
            peers: None,
        }
    }

    /// Connects when postmaster.pid says postgres accepts connections.
    async fn try_connect(&self) -> Option<Client> {
        if !pidfile::read(&self.cfg.postgres.data)?.accepts_connections() {
            return None;
        }
        sql::connect(&self.cfg).await.ok()
    }

    async fn ask_peers(&self, view: &ClusterView) -> Vec<PeerReport> {
        let asks = view.members.iter().filter(|(n, _)| n.as_str() != self.name()).map(|(name, m)| {
            let (name, url) = (name.clone(), m.api_url.clone());
            let client = self.api_client.clone();
            async move {
                let reply = client.peer_status(&url, Duration::from_secs(2)).await.map(|s| PeerReply {
                    primary: s.role == MemberRole::Primary && s.state == State::Running,
                    wal: s.xlog.position(),
                    nofailover: s.tags.get("nofailover").and_then(|v| v.as_bool()).unwrap_or(false),
                });
                PeerReport { name, reply }
            }
        });
        let reports: Vec<PeerReport> = futures_util::future::join_all(asks).await;
        tracing::debug!(?reports, "peers");
        reports
    }

    async fn act(&mut self, action: Action, view: &ClusterView) -> Option<i32> {
        if !matches!(action, Action::Idle(_) | Action::KeepLeading | Action::Follow(_)) {
            tracing::info!(?action, "HA action");
        }
        match action {
            Action::Idle(why) => {
                if why != self.last_idle {
                    tracing::info!("{why}");
                    self.last_idle = why;
                }
            }
            Action::RaceInitialize => match self.dcs.race_initialize().await {
                Ok(true) => {
                    tracing::info!("won the initialize race: bootstrapping the cluster");
                    if let Err(e) = self.bootstrap().await {
                        tracing::error!("bootstrap failed: {e}; giving the cluster back");
                        let _ = self.dcs.cancel_initialize().await;
                        return Some(EXIT_FAILURE);
                    }
                }
                Ok(false) => tracing::info!("another member bootstraps the cluster"),
                Err(e) => tracing::warn!(error = %e, "initialize race failed"),
            },
            Action::CloneFrom(leader) => {
                if let Err(e) = self.clone_from(view, &leader).await {
                    tracing::error!("cannot create a replica from {leader}: {e}");
                    self.state = State::Stopped;
                    let _ = std::fs::remove_dir_all(&self.cfg.postgres.data);
                }
            }
            Action::RefuseForeignData { ours, cluster } => {
                tracing::error!(
                    ours,
                    cluster,
                    "PGDATA belongs to another cluster (system identifier {ours}, cluster {cluster}); refusing to join"
                );
                return Some(EXIT_FAILURE);
            }
            Action::AdoptData => {
                let sysid = self.sysid.clone().unwrap_or_default();
                match self.dcs.adopt_initialize(&sysid).await {
                    Ok(true) => tracing::info!(sysid, "claimed the cluster with the existing data directory"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot claim the cluster"),
                }
            }
            Action::StartPrimary => {
                if let Err(e) = self.start(Role::Primary).await {
                    tracing::error!("cannot start postgres as primary: {e}");
                }
            }
            Action::StartReplica(leader) => {
                let upstream = match &leader {
                    Some(l) => self.upstream_for(view, l),
                    None => None,
                };
                if let (Some(l), Some(up)) = (&leader, &upstream) {
                    match self.rewind_if_needed(view, l, up).await {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(e) => {
                            tracing::error!("{e}; rebuilding this replica from the leader");
                            let _ = std::fs::remove_dir_all(&self.cfg.postgres.data);
                            self.sysid = None;
                            return None;
                        }
                    }
                }
                if let Err(e) = self.start(Role::Replica(upstream)).await {
                    tracing::error!("cannot start postgres as replica: {e}");
                }
            }
            Action::KeepLeading => self.keep_leading(view).await,
            Action::Promote => self.promote(view).await,
            Action::AskPeers => {}
            Action::AcquireLeader => match self.dcs.acquire_leader(&self.cfg.name, self.lease).await {
                Ok(true) => {
                    tracing::info!("won the leader race");
                    self.wake.notify_one();
                }
                Ok(false) => tracing::info!("lost the leader race"),
                Err(e) => tracing::warn!(error = %e, "leader race failed"),
            },
            Action::Follow(leader) => {
                let up = self.upstream_for(view, &leader);
                if up.is_some() && up != self.upstream {
                    tracing::info!(leader, "following the new leader");
                    if let Err(e) = files::write_all(&self.cfg, &self.inputs, &self.run_as, &Role::Replica(up.clone()))
                    {
                        tracing::error!("cannot point postgres at the new leader: {e}");
                    } else {
                        self.upstream = up;
                        if let Some(pm) = &self.pm {
                            pm.signal(Signal::SIGHUP);
                        }
                    }
                }
            }
            Action::Demote(why) => self.fence(why).await,
            Action::HandOver { candidate } => self.hand_over(candidate).await,
            Action::RejectSwitchover(_) => {}
        }
        None
    }

    /// The leader's upstream description from its member key.
    fn upstream_for(&self, view: &ClusterView, leader: &str) -> Option<Upstream> {
        let address = view.members.get(leader)?.pg_address()?.to_owned();
        let slot = self.config.postgresql.use_slots.then(|| replication::slot_name(&self.cfg.name));
        Some(Upstream { address, slot })
    }

    /// Resolves the role passwords: the environment first, then the ones
    /// shared in etcd; `generate`: create and share the missing ones.
    async fn passwords(&mut self, generate: bool) -> Result<Passwords, HaError> {
        if let Some(p) = &self.passwords {
            return Ok(p.clone());
        }
        let c = &self.cfg.credentials;
        let shared: Option<SharedCredentials> = match self.dcs.credentials().await {
            Ok(Some(json)) => serde_json::from_str(&json).ok(),
            Ok(None) => None,
            Err(e) => return Err(e.into()),
        };
        let shared = match shared {
            Some(s) => s,
            None if generate => {
                let new = crate::postgres::passwords::generate;
                let s = SharedCredentials { superuser: new(), replication: new(), admin: new() };
                let json = serde_json::to_string(&s).expect("credentials serialize");
                let stored = self.dcs.share_credentials(&json).await?;
                if c.superuser.password.is_none() || c.replication.password.is_none() || c.admin.password.is_none() {
                    tracing::info!("generated role passwords; shared with the members under the cluster's etcd prefix");
                }
                serde_json::from_str(&stored)?
            }
            None if c.superuser.password.is_some()
                && c.replication.password.is_some()
                && c.admin.password.is_some() =>
            {
                SharedCredentials { superuser: String::new(), replication: String::new(), admin: String::new() }
            }
            None => return Err(HaError::NoPasswords),
        };
        let pick = |given: &Option<Secret>, shared: String| given.clone().unwrap_or_else(|| Secret::new(shared));
        let p = Passwords {
            superuser: pick(&c.superuser.password, shared.superuser),
            replication: pick(&c.replication.password, shared.replication),
            admin: pick(&c.admin.password, shared.admin),
        };
        replication::write_passfile(&self.cfg, &p.replication, &self.run_as)?;
        self.passwords = Some(p.clone());
        Ok(p)
    }

    async fn bootstrap(&mut self) -> Result<(), HaError> {
        self.state = State::InitializingNewCluster;
        self.publish_status();
        let pw = self.passwords(true).await?;
        let stop = std::future::pending::<()>();
        process::initdb(&self.cfg, &self.bin, &self.run_as, stop).await?;
        files::write_all(&self.cfg, &self.inputs, &self.run_as, &Role::Primary)?;
        let mut pm = Postmaster::start(&self.cfg, &self.bin, &self.run_as)?;
        let client = tokio::select! {
            c = sql::wait_ready(&self.cfg) => c?,
            st = pm.wait() => return Err(HaError::ExitedDuringBootstrap(st)),
        };
        sql::ensure_roles(&client, &self.cfg, &pw).await?;
        let sysid = replication::system_identifier(&client).await?;
        self.pm = Some(pm);
        self.client = Some(client);
        self.upstream = None;
        self.sysid = Some(sysid.clone());
        self.state = State::Running;
        // The member key first: members that see the leader key clone from
        // the address in it at once.
        self.publish(&ClusterView::default()).await;
        if !self.dcs.acquire_leader(&self.cfg.name, self.lease).await? {
            return Err(HaError::LeaderTaken);
        }
        self.dcs.set_initialize(&sysid).await?;
        self.dcs.init_config(&self.cfg.bootstrap_dcs).await?;
        self.sysid = Some(sysid.clone());
        self.state = State::Running;
        tracing::info!(sysid, "cluster bootstrapped; this member leads");
        Ok(())
    }

    async fn clone_from(&mut self, view: &ClusterView, leader: &str) -> Result<(), HaError> {
        let up = self.upstream_for(view, leader).ok_or(HaError::NoLeaderMember)?;
        self.passwords(false).await?;
        self.state = State::CreatingReplica;
        self.publish(view).await;
        replication::basebackup(&self.cfg, &self.bin, &self.run_as, &up.address).await?;
        self.clean_handover = true;
        Ok(self.start(Role::Replica(Some(up))).await?)
    }

    /// A former primary diverged from the new leader: pg_rewind it (a no-op
    /// when it did not diverge). Skipped after a clean hand-over.
    /// `Ok(false)`: not yet (the leader has not finished promoting).
    async fn rewind_if_needed(&mut self, view: &ClusterView, leader: &str, up: &Upstream) -> Result<bool, HaError> {
        if self.clean_handover {
            self.clean_handover = false;
            return Ok(true);
        }
        let cd = replication::controldata(&self.bin, &self.cfg.postgres.data).await?;
        if !cd.was_primary() {
            return Ok(true);
        }
        if view.members.get(leader).is_none_or(|m| m.role != MemberRole::Primary || m.state != State::Running) {
            tracing::info!(leader, "waiting for the new leader to finish its promotion before pg_rewind");
            return Ok(false);
        }
        let pw = self.passwords(false).await?;
        tracing::info!(leader, state = %cd.state, "this node ran as primary: pg_rewind from the new leader");
        self.state = State::RunningPgRewind;
        replication::rewind(&self.cfg, &self.bin, &self.run_as, &up.address, &pw.superuser)
            .await
            .map_err(HaError::Rewind)?;
        Ok(true)
    }

    /// Writes the files for the role and starts the postmaster (readiness
    /// is observed by later rounds).
    async fn start(&mut self, role: Role) -> Result<(), crate::postgres::PgError> {
        if self.passwords.is_none() {
            // Needed for primary_conninfo's passfile.
            let _ = self.passwords(false).await;
        }
        process::clear_stale_pid_file(&self.cfg.postgres.data)?;
        files::write_all(&self.cfg, &self.inputs, &self.run_as, &role)?;
        self.pm = Some(Postmaster::start(&self.cfg, &self.bin, &self.run_as)?);
        self.upstream = match role {
            Role::Replica(up) => up,
            Role::Primary => None,
        };
        self.state = State::Starting;
        Ok(())
    }

    async fn keep_leading(&mut self, view: &ClusterView) {
        let Some(client) = &self.client else { return };
        let mut members: Vec<String> = view.members.keys().cloned().collect();
        members.sort();
        if self.config.postgresql.use_slots && members != self.members_seen {
            match replication::sync_slots(client, &self.cfg.name, &members).await {
                Ok(()) => self.members_seen = members,
                Err(e) => tracing::warn!(error = %e, "cannot sync replication slots"),
            }
        }
        if let Ok(p) = replication::position(client).await
            && self.last_status_optime != Some(p.wal)
            && self.dcs.put_status(&Status { optime: p.wal, slots: BTreeMap::new() }).await.is_ok()
        {
            self.last_status_optime = Some(p.wal);
        }
    }

    async fn promote(&mut self, view: &ClusterView) {
        let Some(client) = &self.client else { return };
        // Slots first (allowed on a standby), so followers stream at once.
        if self.config.postgresql.use_slots {
            let members: Vec<String> = view.members.keys().cloned().collect();
            if let Err(e) = replication::sync_slots(client, &self.cfg.name, &members).await {
                tracing::warn!(error = %e, "cannot create replication slots before promotion");
            }
        }
        let t0 = std::time::Instant::now();
        if let Err(e) = replication::promote(client).await {
            tracing::error!(error = %e, "promotion failed");
            return;
        }
        tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "promoted: this member is the primary");
        // The post-promotion checkpoint writes the new timeline into the
        // control file, where pg_rewind on a former primary reads it. The
        // member key says "primary" only after it, and rejoining nodes wait
        // for that (Patroni's checkpoint_after_promote).
        if let Err(e) = sql::checkpoint(client).await {
            tracing::warn!(error = %e, "post-promotion checkpoint failed");
        }
        if let Err(e) = files::write_all(&self.cfg, &self.inputs, &self.run_as, &Role::Primary) {
            tracing::warn!("cannot rewrite tusk.conf after promotion: {e}");
        } else if let Some(pm) = &self.pm {
            pm.signal(Signal::SIGHUP);
        }
        self.upstream = None;
        self.members_seen.clear();
        if view.failover.is_some() {
            let _ = self.dcs.put_failover(&Failover::default(), None).await;
        }
        if let Ok(p) = replication::position(client).await {
            let _ = self.dcs.put_status(&Status { optime: p.wal, slots: BTreeMap::new() }).await;
            if let Some(h) = self.history(p.timeline) {
                let _ = self.dcs.put_history(&h).await;
            }
        }
    }

    /// The `history` key from the new timeline's `.history` file.
    fn history(&self, timeline: u32) -> Option<Vec<HistoryLine>> {
        let path = self.cfg.postgres.data.join(format!("pg_wal/{timeline:08X}.history"));
        let text = std::fs::read_to_string(path).ok()?;
        let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).ok()?;
        let entries = wal::parse_history(&text).ok()?;
        let n = entries.len();
        Some(
            entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    let (ts, who) =
                        if i + 1 == n { (now.clone(), self.cfg.name.clone()) } else { (String::new(), String::new()) };
                    HistoryLine(e.tli, e.end, e.reason, ts, who)
                })
                .collect(),
        )
    }

    /// Switchover: clean stop (the replicas get the shutdown checkpoint),
    /// then release the leader key; the candidate races at once.
    async fn hand_over(&mut self, candidate: Option<String>) {
        tracing::info!(candidate = candidate.as_deref().unwrap_or("any"), "switchover: handing over leadership");
        self.state = State::Stopping;
        self.status.send_modify(|st| {
            st.state = State::Stopping;
            st.leader = false;
        });
        self.stop_local(Mode::Graceful, self.cfg.tusk.shutdown_timeout).await;
        match self.dcs.release_leader(&self.cfg.name).await {
            Ok(true) => tracing::info!("leader key released"),
            Ok(false) => tracing::warn!("the leader key was no longer ours"),
            Err(e) => tracing::error!(error = %e, "cannot release the leader key; it will expire"),
        }
        self.clean_handover = true;
        self.state = State::Stopped;
        self.publish_status();
    }

    /// Stops the local postgres within `budget` (the one escalation of
    /// [`stop::stop`]); the loop's signals are not consulted meanwhile.
    async fn stop_local(&mut self, mode: Mode, budget: Duration) {
        let client = self.client.take();
        let Some(mut pm) = self.pm.take() else { return };
        stop::stop(&mut pm, client, mode, budget, None).await;
        self.upstream = None;
    }

    /// An operation from the REST API. Never waits for postgres to come up:
    /// a restart's answer is sent by a task that watches the status.
    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Wake => self.wake.notify_one(),
            Command::Reload => self.reload().await,
            Command::Restart(req, reply) => {
                let answer = match req.schedule {
                    Some(_) if self.scheduled_restart.is_some() => Reply::new(
                        StatusCode::CONFLICT,
                        "Failed to schedule restart: another restart is already scheduled",
                    ),
                    Some(_) if self.config.pause => Reply::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Failed to schedule restart: cannot schedule a restart in maintenance mode",
                    ),
                    Some(at) => {
                        tracing::info!(at = %at, "restart scheduled through the REST API");
                        self.scheduled_restart = Some((at, req));
                        self.publish_scheduled_restart();
                        Reply::new(StatusCode::ACCEPTED, "Restart scheduled")
                    }
                    None => match self.restart(&req).await {
                        Ok(mut rx) => {
                            let wait = req.timeout.unwrap_or(Duration::from_secs(60));
                            tokio::spawn(async move {
                                let up = tokio::time::timeout(wait, rx.wait_for(|s| s.state == State::Running)).await;
                                let answer = match up {
                                    Ok(Ok(_)) => Reply::new(StatusCode::OK, "restarted successfully"),
                                    _ => Reply::new(
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        format!("restart failed: postgres is not running after {} s", wait.as_secs()),
                                    ),
                                };
                                let _ = reply.send(answer);
                            });
                            self.wake.notify_one();
                            return;
                        }
                        Err(answer) => answer,
                    },
                };
                let _ = reply.send(answer);
            }
            Command::CancelRestart(reply) => {
                let answer = if self.scheduled_restart.take().is_some() {
                    self.publish_scheduled_restart();
                    Reply::new(StatusCode::OK, "scheduled restart deleted")
                } else {
                    Reply::new(StatusCode::NOT_FOUND, "no restarts are scheduled")
                };
                let _ = reply.send(answer);
            }
            Command::Reinitialize { force, reply } => {
                let answer = self.reinitialize(force).await;
                let _ = reply.send(answer);
                self.wake.notify_one();
            }
        }
    }

    fn publish_scheduled_restart(&self) {
        let info = self.scheduled_restart.as_ref().map(|(at, r)| api::status::ScheduledRestartInfo {
            schedule: at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            postgres_version: r.postgres_version.clone(),
        });
        self.status.send_modify(|st| st.scheduled_restart = info);
    }

    /// Runs a scheduled restart once it is due.
    async fn run_scheduled_restart(&mut self) {
        let due = self.scheduled_restart.as_ref().is_some_and(|(at, _)| *at <= time::OffsetDateTime::now_utc());
        if !due {
            return;
        }
        let Some((_, req)) = self.scheduled_restart.take() else { return };
        self.publish_scheduled_restart();
        match self.restart(&req).await {
            Ok(_) => tracing::info!("scheduled restart started"),
            Err(r) => tracing::warn!("scheduled restart not done: {}", r.body),
        }
    }

    /// Restarts postgres in its current role if the request's conditions
    /// hold; returns a status receiver to wait for it to run again.
    async fn restart(&mut self, req: &RestartRequest) -> Result<watch::Receiver<NodeStatus>, Reply> {
        let st = self.status.borrow().clone();
        let not_satisfied = || Reply::new(StatusCode::SERVICE_UNAVAILABLE, "restart conditions are not satisfied");
        if self.pm.is_none() || !st.running() {
            return Err(Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("postgres is not running (state: {})", st.state),
            ));
        }
        if let Some(role) = &req.role {
            let want_primary = role == "primary" || role == "master";
            if want_primary != (st.role == MemberRole::Primary) {
                return Err(not_satisfied());
            }
        }
        if let Some(v) = &req.postgres_version
            && let (Some(want), Some(have)) = (api::version_num(v), st.server_version)
            && have >= want
        {
            return Err(not_satisfied());
        }
        if req.restart_pending && !st.pending_restart {
            return Err(not_satisfied());
        }
        let role = if st.role == MemberRole::Primary { Role::Primary } else { Role::Replica(self.upstream.clone()) };
        tracing::info!(role = %st.role, "restarting postgres (REST API)");
        self.state = State::Restarting;
        self.publish_status();
        self.stop_local(Mode::Graceful, self.cfg.tusk.shutdown_timeout).await;
        if let Err(e) = self.start(role).await {
            tracing::error!("cannot start postgres again: {e}");
            self.state = State::Stopped;
            self.publish_status();
            return Err(Reply::new(StatusCode::SERVICE_UNAVAILABLE, format!("restart failed: {e}")));
        }
        self.publish_status();
        Ok(self.status.subscribe())
    }

    /// Stops this replica, removes its data directory, and lets the next
    /// round clone it again from the leader.
    async fn reinitialize(&mut self, force: bool) -> Reply {
        let st = self.status.borrow().clone();
        if st.cluster_unlocked {
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, "Cluster has no leader, can not reinitialize");
        }
        if st.leader || st.role == MemberRole::Primary {
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, "I am the leader, can not reinitialize");
        }
        if !force && matches!(self.state, State::CreatingReplica | State::RunningPgRewind | State::Restarting) {
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, format!("{} already in progress", self.state));
        }
        tracing::warn!("reinitializing this replica (REST API): its data directory is removed and cloned again");
        self.stop_local(Mode::Fast, self.cfg.tusk.shutdown_timeout).await;
        if let Err(e) = std::fs::remove_dir_all(&self.cfg.postgres.data)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot remove the data directory: {e}"));
        }
        self.sysid = None;
        self.clean_handover = false;
        self.state = State::Stopped;
        self.publish_status();
        Reply::new(StatusCode::OK, "reinitialize started")
    }

    /// Publishes the member key and the API status.
    async fn publish(&mut self, view: &ClusterView) {
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
        }
        let role = match (pos, self.sysid.is_some() || self.cfg.postgres.data.join("PG_VERSION").exists()) {
            (Some(p), _) if !p.in_recovery => MemberRole::Primary,
            (Some(_), _) => MemberRole::Replica,
            (None, true) => MemberRole::Replica,
            (None, false) => MemberRole::Uninitialized,
        };
        let member = MemberValue {
            conn_url: format!("postgres://{}/postgres", self.cfg.postgres.connect_address),
            api_url: self.cfg.api.url("/patroni"),
            state: self.state.clone(),
            role,
            version: PATRONI_COMPAT_VERSION.to_owned(),
            xlog_location: pos.map(|p| p.wal),
            timeline: pos.map(|p| p.timeline),
            tags: BTreeMap::new(),
            replication_state: pos.and_then(|p| p.replication_state()).map(str::to_owned),
            receive_lsn: pos.and_then(|p| p.receive.filter(|_| p.in_recovery)),
            replay_lsn: pos.and_then(|p| p.replay.filter(|_| p.in_recovery)),
            pending_restart,
            pause: view.config.pause,
            scheduled_restart: self.scheduled_restart.as_ref().map(|(at, r)| {
                let mut v = serde_json::json!({
                    "schedule": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
                });
                if let Some(pv) = &r.postgres_version {
                    v["postgres_version"] = serde_json::json!(pv);
                }
                v
            }),
        };
        // Only on change: every put wakes the leader's watch.
        if self.last_member.as_ref() != Some(&(member.clone(), self.lease)) {
            match self.dcs.put_member(&self.cfg.name, &member, self.lease).await {
                Ok(()) => self.last_member = Some((member.clone(), self.lease)),
                Err(e) => tracing::warn!(error = %e, "cannot publish the member key"),
            }
        }
        self.leading.store(leader, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.status.borrow().clone();
        st.state = member.state.clone();
        st.role = member.role.clone();
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
        };
        self.status.send_replace(st);
    }

    fn publish_status(&self) {
        let mut st = self.status.borrow().clone();
        st.state = self.state.clone();
        if self.pm.is_none() {
            st.leader = false;
            st.xlog = Xlog::default();
        }
        self.status.send_replace(st);
    }

    /// SIGTERM/SIGINT/SIGQUIT: stop postgres (a leader's replicas receive the
    /// shutdown checkpoint before its walsenders exit), then revoke the lease,
    /// which removes the leader key and the member key at once: the replicas
    /// race immediately instead of waiting for the TTL.
    async fn shutdown(&mut self, req: Request, notifier: &Notifier, signals: &mut Signals) -> i32 {
        tracing::info!("shutting down: stopping postgres, then giving up the leader and member keys");
        // Peers asking our API from now on must not see a running primary.
        let leader = self.status.borrow().leader;
        self.state = State::Stopping;
        self.status.send_modify(|st| {
            st.state = State::Stopping;
            st.leader = false;
        });
        let code = match self.pm.take() {
            Some(mut pm) => {
                let client = self.client.take();
                notifier.stopping();
                stop::stop(&mut pm, client, Mode::for_request(req), self.cfg.tusk.shutdown_timeout, Some(signals)).await
            }
            None => {
                notifier.stopping();
                0
            }
        };
        // Revoking the lease drops the leader key and the member key in one
        // step; the conditional delete covers a leader key on another lease.
        match tokio::time::timeout(Duration::from_secs(2), self.dcs.revoke_lease(self.lease)).await {
            Ok(Ok(())) => tracing::info!(leader, "leader and member keys removed"),
            _ => tracing::warn!("cannot revoke the lease; the keys expire with it"),
        }
        if leader {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.dcs.release_leader(&self.cfg.name)).await;
        }
        code
    }
}
