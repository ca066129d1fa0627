//! The REST API's operations, carried out by the loop: restart (now or
//! scheduled), cancel, reinitialize, reload, wake.

use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::watch;

use super::run::Ha;
use crate::api::{self, Command, NodeStatus, Reply, RestartRequest};
use crate::patroni::{Role as MemberRole, State};
use crate::postgres::files::Role;
use crate::postgres::stop::Mode;

impl Ha {
    /// An operation from the REST API. Never waits for postgres to come up:
    /// a restart's answer is sent by a task that watches the status.
    pub(super) async fn command(&mut self, cmd: Command) {
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

    /// Runs a scheduled restart once it is due.
    pub(super) async fn run_scheduled_restart(&mut self) {
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
    pub(super) async fn restart(&mut self, req: &RestartRequest) -> Result<watch::Receiver<NodeStatus>, Reply> {
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
        self.stop_local(Mode::Graceful, self.stop_budget()).await;
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
    pub(super) async fn reinitialize(&mut self, force: bool) -> Reply {
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
        self.rewind_failed = false;
        self.state = State::Stopped;
        self.publish_status();
        Reply::new(StatusCode::OK, "reinitialize started")
    }
}
