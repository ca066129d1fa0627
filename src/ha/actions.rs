//! Carrying out the decision's actions: bootstrap, clone, rewind, start,
//! promote, keep leading, hand over, and the local stop they share.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::decide::{Action, ClusterView, Local, Postgres};
use super::error::HaError;
use super::run::Ha;
use crate::config::ReplicaMethod;
use crate::exit::EXIT_FAILURE;
use crate::patroni::{Failover, HistoryLine, Role as MemberRole, State, Status};
use crate::postgres::files::{self, ConfInputs, Role};
use crate::postgres::process::{self, Postmaster};
use crate::postgres::replication::{self, Upstream};
use crate::postgres::stop::{self, Mode};
use crate::postgres::timeline;
use crate::postgres::{sql, wal};

impl Ha {
    pub(super) async fn act(&mut self, action: Action, view: &ClusterView) -> Option<i32> {
        // After start-ups that failed, the next start waits its turn.
        let action = match action {
            Action::StartPrimary | Action::StartReplica(_) | Action::StartStandbyLeader
                if self.start_not_before.is_some_and(|t| tokio::time::Instant::now() < t) =>
            {
                Action::Idle("postgres exited during start-up: waiting before starting it again")
            }
            a => a,
        };
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
            Action::ReleaseLeader(why) => {
                tracing::error!("{why}");
                match self.dcs.release_leader(&self.cfg.name).await {
                    Ok(true) => tracing::info!("leader key released"),
                    Ok(false) => tracing::warn!("the leader key was no longer ours"),
                    Err(e) => tracing::warn!(error = %e, "cannot release the leader key"),
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
                        Err(HaError::Rewind(e)) if !replication::rewind_touched_target(&e) => {
                            // It never got to change the data directory (the
                            // leader went away, a connection failed): try again.
                            tracing::warn!("{e}; the data directory was not changed: trying again");
                            self.state = State::Stopped;
                            return None;
                        }
                        Err(e)
                            if self.cfg.postgres.remove_data_on_rewind_failure.unwrap_or_else(|| {
                                self.config.postgresql.remove_data_directory_on_rewind_failure()
                            }) || (matches!(e, HaError::TimelineCollision { .. })
                                && self.config.postgresql.remove_data_directory_on_diverged_timelines()) =>
                        {
                            tracing::error!(
                                "{e}; removing the data directory (remove_data_directory_on_rewind_failure) \
                                 and rebuilding this replica from the leader"
                            );
                            let _ = std::fs::remove_dir_all(&self.cfg.postgres.data);
                            self.sysid = None;
                            return None;
                        }
                        Err(e) => {
                            // Patroni's default: the diverged data may hold
                            // the only copy of transactions that never
                            // replicated; the operator decides.
                            let flags = if matches!(e, HaError::TimelineCollision { .. }) {
                                "remove_data_directory_on_rewind_failure and \
                                 remove_data_directory_on_diverged_timelines are false"
                            } else {
                                "remove_data_directory_on_rewind_failure is false"
                            };
                            tracing::error!(
                                data = %self.cfg.postgres.data.display(),
                                "{e}; keeping the data directory ({flags}): this member stays stopped until it \
                                 is reinitialized (tusk reinit, or POST /reinitialize)"
                            );
                            self.rewind_failed = true;
                            self.state = State::RewindFailed;
                            return None;
                        }
                    }
                }
                // pg_rewind came from the leader; streaming may cascade.
                let upstream = match &leader {
                    Some(l) => self.stream_upstream(view, l).or(upstream),
                    None => upstream,
                };
                if let Err(e) = self.start(Role::Replica(upstream)).await {
                    tracing::error!("cannot start postgres as replica: {e}");
                }
            }
            Action::KeepLeading => self.keep_leading(view).await,
            Action::StartStandbyLeader => {
                let (up, inputs) = self.standby_source(view);
                let source = up.as_ref().map(|u| u.address.clone()).unwrap_or_else(|| "the archive".into());
                tracing::info!(source, "starting as the standby leader");
                if let Err(e) = self.start_with(Role::Replica(up), &inputs).await {
                    tracing::error!("cannot start postgres as the standby leader: {e}");
                }
            }
            Action::LeadStandby => {
                self.keep_leading(view).await;
                let (up, inputs) = self.standby_source(view);
                if up != self.upstream {
                    let source = up.as_ref().map(|u| u.address.clone()).unwrap_or_else(|| "the archive".into());
                    tracing::info!(source, "standby leader: replicating from the standby cluster's source");
                    if let Err(e) = files::write_all(&self.cfg, &inputs, &self.run_as, &Role::Replica(up.clone())) {
                        tracing::error!("cannot point postgres at the standby cluster's source: {e}");
                    } else {
                        self.upstream = up;
                        if let Some(pm) = &self.pm {
                            pm.signal(Signal::SIGHUP);
                        }
                    }
                }
            }
            Action::Promote => self.promote(view).await,
            Action::AskPeers => {}
            Action::AcquireLeader => match self.acquire_leader().await {
                Ok(true) => {
                    tracing::info!("won the leader race");
                    self.wake.notify_one();
                }
                Ok(false) => tracing::info!("lost the leader race"),
                Err(e) => tracing::warn!(error = %e, "leader race failed"),
            },
            Action::StopToRewind(leader) => {
                tracing::warn!(leader, "stopping this replica for pg_rewind from the leader");
                // Stopped, it is rewound on its next start (StartReplica).
                self.replica_diverged = true;
                self.clean_handover = false;
                self.stop_local(Mode::Fast, self.stop_budget()).await;
                self.state = State::Stopped;
                self.publish_status();
            }
            Action::Follow(leader) => {
                let up = self.stream_upstream(view, &leader);
                if up.is_some() && up != self.upstream {
                    let from = up.as_ref().map(|u| u.address.as_str()).unwrap_or("");
                    tracing::info!(leader, from, "following the leader");
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
                self.replica_slots(view, &leader).await;
            }
            Action::Demote(why) => self.fence(why).await,
            Action::HandOver { candidate } => self.hand_over(candidate).await,
            Action::RejectSwitchover(_) => {}
        }
        None
    }

    /// Where to stream from: the leader, or the `replicatefrom` member.
    pub(super) fn stream_upstream(&self, view: &ClusterView, leader: &str) -> Option<Upstream> {
        let from = self.cfg.tags.get("replicatefrom").and_then(serde_json::Value::as_str);
        let source = super::observe::stream_from(view, &self.cfg.name, from, leader);
        if source != leader {
            tracing::debug!(source, leader, "replicatefrom: cascading");
        }
        self.upstream_for(view, source)
    }

    /// A member's upstream description from its member key.
    pub(super) fn upstream_for(&self, view: &ClusterView, leader: &str) -> Option<Upstream> {
        let address = view.members.get(leader)?.pg_address()?.to_owned();
        let slot = self.config.postgresql.use_slots.then(|| replication::slot_name(&self.cfg.name));
        Some(Upstream { address, slot })
    }

    pub(super) async fn bootstrap(&mut self) -> Result<(), HaError> {
        self.state = State::InitializingNewCluster;
        self.publish_status();
        let pw = self.bootstrap_passwords().await?;
        if self.cfg.standby.is_some() {
            return self.bootstrap_standby().await;
        }
        let stop = std::future::pending::<()>();
        match &self.cfg.clone {
            // The member that won `initialize` clones; the others then
            // create replicas from it as after an initdb.
            Some(clone) => {
                crate::backup::clone::bootstrap(&self.cfg, clone, &self.bin, &self.run_as, &self.inputs, stop)
                    .await
                    .map_err(|e| HaError::Clone(e.to_string()))?;
            }
            None => {
                process::initdb(&self.cfg, &self.bin, &self.run_as, stop).await?;
            }
        }
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
        if !self.dcs.acquire_leader(&self.cfg.name, self.lease.id).await? {
            return Err(HaError::LeaderTaken);
        }
        self.dcs.set_initialize(&sysid).await?;
        self.dcs.init_config(&self.cfg.bootstrap_dcs).await?;
        self.sysid = Some(sysid.clone());
        self.state = State::Running;
        tracing::info!(sysid, "cluster bootstrapped; this member leads");
        Ok(())
    }

    /// Bootstraps a standby cluster: a copy of the remote source (its
    /// archive's latest backup when `STANDBY_SCOPE` names one, else
    /// `pg_basebackup` from `STANDBY_HOST`), started as a standby of that
    /// source; this member becomes the standby leader. Nothing is written
    /// to the copy (no roles: it is read-only until promoted).
    async fn bootstrap_standby(&mut self) -> Result<(), HaError> {
        let view = ClusterView { config: self.cfg.bootstrap_dcs.clone(), ..Default::default() };
        let (up, inputs) = self.standby_source(&view);
        let archive = self.cfg.standby.as_ref().and_then(|s| s.storage.as_deref());
        let mut copied = false;
        if let Some(storage) = archive {
            match crate::backup::replica::restore(&self.cfg, storage, None, None, &self.run_as).await {
                Ok(Ok(b)) => {
                    tracing::info!(backup = %b.name, "standby cluster: copied from the source's base backup");
                    copied = true;
                }
                Ok(Err(skip)) => tracing::warn!(reason = %skip, "standby cluster: no backup in the source's archive"),
                Err(e) => tracing::warn!(error = %e, "standby cluster: restore from the source's archive failed"),
            }
        }
        if !copied {
            let Some(up) = &up else {
                return Err(HaError::Clone(
                    "no base backup in the source's archive and no STANDBY_HOST to copy from".into(),
                ));
            };
            replication::basebackup(&self.cfg, &self.bin, &self.run_as, &up.address).await?;
            tracing::info!(source = %up.address, "standby cluster: copied from the remote primary with pg_basebackup");
        }
        self.start_with(Role::Replica(up), &inputs).await?;
        let pm = self.pm.as_mut().expect("just started");
        let client = tokio::select! {
            c = sql::wait_ready(&self.cfg) => c?,
            st = pm.wait() => return Err(HaError::ExitedDuringBootstrap(st)),
        };
        let sysid = replication::system_identifier(&client).await?;
        self.client = Some(client);
        self.sysid = Some(sysid.clone());
        self.state = State::Running;
        self.publish(&view).await;
        if !self.dcs.acquire_leader(&self.cfg.name, self.lease.id).await? {
            return Err(HaError::LeaderTaken);
        }
        self.dcs.set_initialize(&sysid).await?;
        self.dcs.init_config(&self.cfg.bootstrap_dcs).await?;
        tracing::info!(sysid, "standby cluster bootstrapped; this member is the standby leader");
        Ok(())
    }

    pub(super) async fn clone_from(&mut self, view: &ClusterView, leader: &str) -> Result<(), HaError> {
        let up = self.upstream_for(view, leader).ok_or(HaError::NoLeaderMember)?;
        self.replication_password().await?;
        self.state = State::CreatingReplica;
        self.publish(view).await;
        // `create_replica_methods`, in order; pg_basebackup's failure is the
        // error when it is the last method tried.
        // pg_basebackup from a member tagged `clonefrom` first, else the leader.
        let mut sources: Vec<String> = super::observe::clone_sources(view, &self.cfg.name)
            .iter()
            .filter_map(|m| view.members.get(m)?.pg_address().map(str::to_owned))
            .collect();
        sources.push(up.address.clone());
        let methods = &self.cfg.postgres.replica_methods;
        let mut done = false;
        for (i, method) in methods.iter().enumerate() {
            match method {
                ReplicaMethod::Backup => done = self.replica_from_backup(view).await,
                ReplicaMethod::Basebackup => {
                    for (j, source) in sources.iter().enumerate() {
                        let last = i + 1 == methods.len() && j + 1 == sources.len();
                        tracing::info!(source, "creating the replica with pg_basebackup");
                        match replication::basebackup(&self.cfg, &self.bin, &self.run_as, source).await {
                            Ok(()) => {
                                done = true;
                                break;
                            }
                            Err(e) if last => return Err(e.into()),
                            Err(e) => {
                                tracing::warn!(error = %e, source, "pg_basebackup failed; trying the next source")
                            }
                        }
                    }
                }
            }
            if done {
                break;
            }
        }
        if !done {
            return Err(HaError::NoReplicaMethod);
        }
        self.clean_handover = true;
        Ok(self.start(Role::Replica(Some(up))).await?)
    }

    /// Spilo's `wal_e` replica method: this cluster's latest backup from
    /// S3, when there is one and the WAL since it is within the thresholds;
    /// the archive and then the leader bring it up to date. `false`: use
    /// `pg_basebackup` (PGDATA left as it was).
    async fn replica_from_backup(&self, view: &ClusterView) -> bool {
        let Some(storage) = &self.cfg.storage else { return false };
        let sysid = view.initialize.as_deref().and_then(|s| s.parse::<u64>().ok());
        let t0 = std::time::Instant::now();
        match crate::backup::replica::restore(&self.cfg, storage, sysid, view.optime, &self.run_as).await {
            Ok(Ok(b)) => {
                tracing::info!(
                    backup = %b.name,
                    mb = b.bytes >> 20,
                    elapsed_ms = t0.elapsed().as_millis() as u64,
                    "replica created from the base backup in S3; WAL from the archive, then streaming from the leader"
                );
                true
            }
            Ok(Err(skip)) => {
                tracing::info!(reason = %skip, "replica from S3 not possible; cloning from the leader with pg_basebackup");
                false
            }
            Err(e) => {
                // backup-fetch removed what it wrote (it never restores
                // over data), so pg_basebackup finds PGDATA as it was.
                tracing::warn!(error = %e, "replica from S3 failed; cloning from the leader with pg_basebackup");
                false
            }
        }
    }

    /// A former primary diverged from the new leader: pg_rewind it (a no-op
    /// when it did not diverge). Skipped after a clean hand-over.
    /// `Ok(false)`: not yet (the leader has not finished promoting).
    pub(super) async fn rewind_if_needed(
        &mut self,
        view: &ClusterView,
        leader: &str,
        up: &Upstream,
    ) -> Result<bool, HaError> {
        if self.clean_handover {
            self.clean_handover = false;
            return Ok(true);
        }
        let cd = replication::controldata(&self.bin, &self.cfg.postgres.data).await?;
        let diverged_replica = self.replica_diverged && !cd.was_primary();
        if !cd.was_primary() && !diverged_replica {
            return Ok(true);
        }
        let Some(lm) = view.members.get(leader).filter(|m| m.role == MemberRole::Primary && m.state == State::Running)
        else {
            tracing::info!(leader, "waiting for the new leader to finish its promotion before pg_rewind");
            return Ok(false);
        };
        // A leader on the very timeline this member last ran on as primary
        // promoted to that number on its own: the two histories differ after
        // their common parent, and pg_rewind, which tells timelines apart by
        // number, would find nothing to do.
        let own = timeline::newest(&self.cfg.postgres.data, cd.timeline);
        if !diverged_replica && lm.timeline == Some(own) {
            return Err(HaError::TimelineCollision { timeline: own, leader: leader.to_owned() });
        }
        let superuser = self.superuser_password().await?;
        if diverged_replica {
            tracing::info!(leader, "this replica diverged from the new leader: pg_rewind from it");
        } else {
            tracing::info!(leader, state = %cd.state, "this node ran as primary: pg_rewind from the new leader");
        }
        self.state = State::RunningPgRewind;
        replication::rewind(&self.cfg, &self.bin, &self.run_as, &up.address, &superuser)
            .await
            .map_err(HaError::Rewind)?;
        self.replica_diverged = false;
        Ok(true)
    }

    /// Whether this running replica replayed past the point where the
    /// leader's history (the `history` key, once it names the leader's
    /// timeline) left this replica's timeline: it received WAL from the old
    /// primary that the new leader never had (an asynchronous replica ahead
    /// of the one promoted), so it can never stream from it; pg_rewind
    /// mends it, as Patroni's check of a replica's position does.
    pub(super) async fn replica_diverged(&self, view: &ClusterView, local: &Local) -> bool {
        let Some(leader) = view.leader.as_deref().filter(|l| *l != self.cfg.name) else { return false };
        if !matches!(local.postgres, Postgres::Replica { .. }) {
            return false;
        }
        let Some(lt) = view.members.get(leader).and_then(|m| m.timeline) else { return false };
        // This round's reading (observe), not a second query.
        let Some(p) = &self.position else { return false };
        if !p.in_recovery || p.streaming {
            return false;
        }
        let replayed = p.replay.unwrap_or(0);
        // Only past a switch point of the leader's history can it have
        // diverged; only then is the replay timeline asked (a psql).
        if view.timeline != lt || !view.history.iter().any(|(_, end, _)| *end < replayed) {
            return false;
        }
        let Some(own) = replication::replay_timeline(&self.cfg, &self.bin, &self.run_as).await else { return false };
        let Some(end) = timeline::switch_point(&view.history, view.timeline, lt, own) else { return false };
        if replayed <= end {
            return false;
        }
        tracing::warn!(
            leader,
            timeline = own,
            replayed = %wal::format_lsn(replayed),
            switch_point = %wal::format_lsn(end),
            "this replica replayed WAL of its timeline past where the new leader's history left it: \
             stopping it for pg_rewind"
        );
        true
    }

    /// Where a standby cluster's leader replicates from (`standby_cluster`
    /// of the DCS configuration, else of the bootstrap one), and the
    /// settings for it: `restore_command` from `standby_cluster`, else
    /// through the source's archive from the `STANDBY_*` storage variables.
    pub(super) fn standby_source(&self, view: &ClusterView) -> (Option<Upstream>, ConfInputs) {
        let sc = view
            .config
            .standby_cluster
            .clone()
            .or_else(|| self.cfg.bootstrap_dcs.standby_cluster.clone())
            .unwrap_or_default();
        let up = sc.address().map(|address| Upstream { address, slot: sc.primary_slot_name.clone() });
        let mut inputs = self.inputs.clone();
        let archive = self.cfg.standby.as_ref().and_then(|s| Some((s.scope.as_deref()?, s.storage.as_deref()?)));
        let restore = match (sc.restore_command.clone(), archive) {
            (Some(c), _) => Some(c),
            (None, Some((scope, storage))) => {
                let name = format!("standby-{scope}");
                match crate::backup::clone::source_restore_command(&self.cfg, &name, storage, &self.run_as) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot set up reading the standby source's archive");
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(c) = restore {
            inputs.recovery.insert("restore_command".into(), c);
        }
        (up, inputs)
    }

    /// Writes the files for the role and starts the postmaster (readiness
    /// is observed by later rounds).
    pub(super) async fn start(&mut self, role: Role) -> Result<(), crate::postgres::PgError> {
        let inputs = self.inputs.clone();
        self.start_with(role, &inputs).await
    }

    pub(super) async fn start_with(&mut self, role: Role, inputs: &ConfInputs) -> Result<(), crate::postgres::PgError> {
        if self.passwords.as_ref().is_none_or(|k| k.replication.is_none()) {
            // Needed for primary_conninfo's passfile.
            if let Err(e) = self.replication_password().await {
                tracing::warn!("{e}");
            }
        }
        // A standby must not start with lower settings than its primary's
        // (from pg_control); kept for later rewrites of tusk.conf.
        let minimums = match &role {
            Role::Replica(_) => match replication::controldata(&self.bin, &self.cfg.postgres.data).await {
                Ok(cd) => cd.standby_minimums,
                Err(e) => {
                    tracing::warn!("cannot read the primary's settings from pg_control: {e}");
                    BTreeMap::new()
                }
            },
            Role::Primary => BTreeMap::new(),
        };
        if minimums != self.inputs.standby_minimums {
            let own =
                files::parameters(&self.cfg, &ConfInputs { standby_minimums: BTreeMap::new(), ..inputs.clone() }, None);
            let raised: Vec<String> =
                files::standby_raises(&own, &minimums).into_iter().map(|(k, min)| format!("{k}={min}")).collect();
            if !raised.is_empty() {
                tracing::info!(
                    raised = raised.join(" "),
                    "as a standby: settings raised to the primary's (from pg_control)"
                );
            }
            self.inputs.standby_minimums = minimums.clone();
        }
        let inputs = ConfInputs { standby_minimums: minimums, ..inputs.clone() };
        process::clear_stale_pid_file(&self.cfg.postgres.data)?;
        files::write_all(&self.cfg, &inputs, &self.run_as, &role)?;
        self.pm = Some(Postmaster::start(&self.cfg, &self.bin, &self.run_as)?);
        self.upstream = match role {
            Role::Replica(up) => up,
            Role::Primary => None,
        };
        self.state = State::Starting;
        Ok(())
    }

    pub(super) async fn keep_leading(&mut self, view: &ClusterView) {
        if self.client.is_none() {
            return;
        }
        // Member, permanent and ignored slots; `status` (see `slots.rs`).
        self.leader_slots(view).await;
        if self.config.standby_cluster.is_none() {
            self.manage_sync(view).await;
        }
    }

    pub(super) async fn promote(&mut self, view: &ClusterView) {
        let Some(client) = &self.client else { return };
        // Slots first (allowed on a standby), so followers stream at once.
        if self.config.postgresql.use_slots {
            // Only created here: what to drop is the leader's reconciliation's
            // (permanent, ignored and departed members' slots stay).
            let me = replication::slot_name(&self.cfg.name);
            for m in view.members.keys().map(|m| replication::slot_name(m)).filter(|s| *s != me) {
                if let Err(e) = crate::postgres::slots::create_physical(client, &m).await {
                    tracing::warn!(slot = %m, error = %e, "cannot create replication slot before promotion");
                }
            }
        }
        if !self.sync_before_promote().await {
            return;
        }
        let Some(client) = &self.client else { return };
        // Timelines the cluster already used (a member promoted to one and
        // stopped before this one followed it) are reserved first, so that
        // this promotion takes a number of its own (see postgres/timeline.rs).
        if let Ok(own) = replication::position(client).await.map(|p| p.timeline) {
            match timeline::reserve(&self.cfg.postgres.data, own, view.timeline, &self.run_as) {
                Ok(r) if !r.is_empty() => tracing::info!(
                    timeline = own,
                    reserved = ?r,
                    "the history key names timelines this member never saw: their numbers are reserved \
                     so that this promotion takes a new one"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot reserve the cluster's timelines before promotion: {e}"),
            }
        }
        let t0 = std::time::Instant::now();
        if let Err(e) = replication::promote(client).await {
            tracing::error!(error = %e, "promotion failed");
            return;
        }
        tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "promoted: this member is the primary");
        // The new timeline goes into the history key at once: a member that
        // promotes after this one (it stops right away) reserves it.
        let pos = replication::position(client).await.ok();
        if let Some(h) = pos.as_ref().and_then(|p| self.history(p.timeline)) {
            let _ = self.dcs.put_history(&h).await;
        }
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
        self.slots.reset_leader();
        if view.failover.is_some() {
            let _ = self.dcs.put_failover(&Failover::default(), None).await;
        }
        if let Some(p) = pos {
            let status = Status { optime: p.wal, slots: BTreeMap::new(), retain_slots: Vec::new() };
            let _ = self.dcs.put_status(&status).await;
        }
    }

    /// The `history` key from the new timeline's `.history` file.
    pub(super) fn history(&self, timeline: u32) -> Option<Vec<HistoryLine>> {
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
    pub(super) async fn hand_over(&mut self, candidate: Option<String>) {
        tracing::info!(candidate = candidate.as_deref().unwrap_or("any"), "switchover: handing over leadership");
        self.state = State::Stopping;
        self.status.send_modify(|st| {
            st.state = State::Stopping;
            st.leader = false;
        });
        self.stop_local(Mode::Graceful, self.stop_budget()).await;
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
    pub(super) async fn stop_local(&mut self, mode: Mode, budget: Duration) {
        let client = self.client.take();
        let Some(mut pm) = self.pm.take() else { return };
        stop::stop(&mut pm, client, mode, budget, None).await;
        self.upstream = None;
    }
}
