//! Patroni's callbacks (`CALLBACK_SCRIPT`, as Spilo sets it: `on_start`,
//! `on_stop`, `on_role_change`; `SPILO_CONFIGURATION`'s
//! `postgresql.callbacks`, `on_restart` and `on_reload` too), run as
//! Patroni runs them: the action's command with
//! `<action> <role> <scope>` appended, as the postgres user, asynchronously,
//! one at a time (a new call kills the one still running, with its process
//! group), each bounded by [`CALLBACK_TIMEOUT`] and logged.
//!
//! Which callback a change of the member's status calls is a pure function
//! ([`transition`]) of what the REST API publishes; the task here watches
//! that status and runs the commands.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::api::NodeStatus;
use crate::config::CallbackConfig;
use crate::patroni::{Role, State};
use crate::postgres::RunAs;

/// The longest a callback may run before it is killed.
pub(super) const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Patroni's callback actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // Patroni's names: on_start, on_stop, ...
pub(super) enum Action {
    OnStart,
    OnStop,
    OnRestart,
    OnReload,
    OnRoleChange,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::OnStart => "on_start",
            Action::OnStop => "on_stop",
            Action::OnRestart => "on_restart",
            Action::OnReload => "on_reload",
            Action::OnRoleChange => "on_role_change",
        }
    }
}

/// The role argument as Patroni 3.x passes it (`master` for a primary).
fn role_arg(role: &Role) -> &str {
    match role {
        Role::Primary => "master",
        other => other.as_str(),
    }
}

/// What the watcher remembers between status changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Seen {
    state: State,
    role: Role,
    /// The role postgres last ran in (a demotion or promotion through a
    /// restart is a role change, not a start).
    last_running_role: Option<Role>,
    /// A restart is under way (it passes through `starting`).
    restarting: bool,
    /// A stop of postgres running in this role is under way: its
    /// `on_stop` comes once it has stopped.
    stopping: Option<Role>,
}

/// The callback a status change calls, if any, with the role to pass, as
/// Patroni calls them: `on_start` once postgres runs, `on_restart` after a
/// restart, `on_role_change` when it runs in another role than before
/// (promotion, demotion), `on_stop` after a stop (not after a crash).
pub(super) fn transition(seen: &mut Seen, state: &State, role: &Role) -> Option<(Action, Role)> {
    let was_running = seen.state == State::Running;
    let out = match (was_running, state == &State::Running) {
        (false, true) => Some(if seen.restarting && seen.last_running_role.as_ref() == Some(role) {
            Action::OnRestart
        } else if seen.last_running_role.as_ref().is_some_and(|r| r != role) {
            Action::OnRoleChange
        } else {
            Action::OnStart
        })
        .map(|a| (a, role.clone())),
        (true, true) if &seen.role != role => Some((Action::OnRoleChange, role.clone())),
        (true, false) if state == &State::Stopping => {
            seen.stopping = Some(seen.role.clone());
            None
        }
        (true, false) if state == &State::Stopped => Some((Action::OnStop, seen.role.clone())),
        (false, false) if state == &State::Stopped => seen.stopping.take().map(|r| (Action::OnStop, r)),
        _ => None,
    };
    match state {
        State::Running => {
            seen.last_running_role = Some(role.clone());
            seen.restarting = false;
        }
        State::Restarting => seen.restarting = true,
        State::Starting | State::Stopping => {}
        _ => seen.restarting = false,
    }
    if !matches!(state, State::Stopping) {
        seen.stopping = None;
    }
    seen.state = state.clone();
    seen.role = role.clone();
    out
}

/// The running watcher; [`CallbackTask::finish`] lets the last callback end.
pub(super) struct CallbackTask {
    stop: Option<oneshot::Sender<()>>,
    reloads: mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl CallbackTask {
    /// Watches `status` and runs `cfg`'s command for `scope`.
    pub(super) fn spawn(
        cfg: CallbackConfig,
        scope: String,
        run_as: RunAs,
        status: watch::Receiver<NodeStatus>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let (reloads, reloaded) = mpsc::unbounded_channel();
        let task = tokio::spawn(watch_status(cfg, scope, run_as, status, (stopped, reloaded)));
        CallbackTask { stop: Some(stop), reloads, task }
    }

    /// postgres was reloaded (SIGHUP, `POST /reload`, a change of the
    /// dynamic configuration): `on_reload`, if postgres runs.
    pub(super) fn reloaded(&self) {
        let _ = self.reloads.send(());
    }

    /// At shutdown: the status is looked at once more (the `on_stop` of
    /// the stop just done), and the callback running gets up to `budget`
    /// (kept short: the platform's grace period is nearly spent).
    pub(super) async fn finish(mut self, budget: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(budget + Duration::from_millis(500), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

async fn watch_status(
    cfg: CallbackConfig,
    scope: String,
    run_as: RunAs,
    mut status: watch::Receiver<NodeStatus>,
    (mut stopped, mut reloaded): (oneshot::Receiver<()>, mpsc::UnboundedReceiver<()>),
) {
    let mut seen = Seen::default();
    let mut running: Option<(Child, Action, Instant)> = None;
    let mut stopping = false;
    loop {
        if !stopping {
            react(&mut status, &mut seen, &mut running, (&cfg, &scope, &run_as)).await;
        }
        let deadline = match &running {
            Some((_, _, started)) => *started + CALLBACK_TIMEOUT,
            None if stopping => return,
            None => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            changed = status.changed(), if !stopping => {
                if changed.is_err() {
                    stopping = true;
                }
            }
            Some(()) = reloaded.recv(), if !stopping => {
                let (state, role) = {
                    let st = status.borrow();
                    (st.state.clone(), st.role.clone())
                };
                if state == State::Running {
                    call(&mut running, (&cfg, &scope, &run_as), Action::OnReload, &role).await;
                }
            }
            _ = &mut stopped, if !stopping => {
                // Look at the final status once more, then only wait.
                react(&mut status, &mut seen, &mut running, (&cfg, &scope, &run_as)).await;
                stopping = true;
            }
            exit = async { running.as_mut().expect("guarded").0.wait().await }, if running.is_some() => {
                let (_, action, started) = running.take().expect("guarded");
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match exit {
                    Ok(st) if st.success() => tracing::info!(action = action.as_str(), elapsed_ms, "callback done"),
                    Ok(st) => tracing::warn!(action = action.as_str(), elapsed_ms, %st, "callback failed"),
                    Err(e) => tracing::warn!(action = action.as_str(), error = %e, "callback: cannot wait for it"),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if let Some((child, action, _)) = running.take() {
                    kill(child, action, "it ran longer than the callback timeout").await;
                }
            }
        }
    }
}

/// Looks at the latest status; runs the callback it calls, if any (the one
/// still running is killed first, as Patroni does).
async fn react(
    status: &mut watch::Receiver<NodeStatus>,
    seen: &mut Seen,
    running: &mut Option<(Child, Action, Instant)>,
    (cfg, scope, run_as): (&CallbackConfig, &str, &RunAs),
) {
    let (state, role) = {
        let st = status.borrow_and_update();
        (st.state.clone(), st.role.clone())
    };
    if let Some((action, role)) = transition(seen, &state, &role) {
        call(running, (cfg, scope, run_as), action, &role).await;
    }
}

/// Runs `action`'s command, if it has one: the one still running is
/// killed first, as Patroni does.
async fn call(
    running: &mut Option<(Child, Action, Instant)>,
    (cfg, scope, run_as): (&CallbackConfig, &str, &RunAs),
    action: Action,
    role: &Role,
) {
    if !cfg.commands.contains_key(action.as_str()) {
        return;
    }
    if let Some((child, previous, _)) = running.take() {
        kill(child, previous, "a newer callback replaces it").await;
    }
    *running = start(cfg, scope, run_as, action, role);
}

fn start(
    cfg: &CallbackConfig,
    scope: &str,
    run_as: &RunAs,
    action: Action,
    role: &Role,
) -> Option<(Child, Action, Instant)> {
    let command = cfg.commands.get(action.as_str())?;
    let (program, args) = command.split_first()?;
    let mut cmd = Command::new(program);
    cmd.args(args).args([action.as_str(), role_arg(role), scope]);
    let mut as_user = run_as.clone();
    as_user.env = cfg.env.clone();
    as_user.apply(&mut cmd);
    cmd.stdin(std::process::Stdio::null()).process_group(0).kill_on_drop(false);
    if let Ok(home) = std::env::var("HOME") {
        cmd.current_dir(home);
    }
    match cmd.spawn() {
        Ok(child) => {
            tracing::info!(
                action = action.as_str(),
                role = role_arg(role),
                pid = child.id().unwrap_or(0),
                "callback started: {}",
                command.join(" ")
            );
            Some((child, action, Instant::now()))
        }
        Err(e) => {
            tracing::error!(action = action.as_str(), error = %e, "cannot run the callback {}", command.join(" "));
            None
        }
    }
}

/// Kills a callback and its process group, as Patroni does.
async fn kill(mut child: Child, action: Action, why: &str) {
    if let Some(pid) = child.id() {
        tracing::warn!(action = action.as_str(), pid, "killing the callback: {why}");
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence of (state, role) and the callbacks it calls.
    fn run(steps: &[(State, Role)]) -> Vec<(Action, String)> {
        let mut seen = Seen::default();
        steps
            .iter()
            .filter_map(|(s, r)| transition(&mut seen, s, r))
            .map(|(a, r)| (a, role_arg(&r).to_owned()))
            .collect()
    }

    use Action::*;
    use Role::{Primary, Replica};
    use State::{Crashed, Restarting, Running, Starting, Stopped, Stopping};

    #[test]
    fn patronis_callbacks_for_status_changes() {
        type Case = (&'static str, Vec<(State, Role)>, Vec<(Action, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                "bootstrap as the leader, then a clean stop",
                vec![
                    (Starting, Role::Uninitialized),
                    (Running, Primary),
                    (Running, Primary),
                    (Stopping, Primary),
                    (Stopped, Replica),
                ],
                vec![(OnStart, "master"), (OnStop, "master")],
            ),
            (
                "a replica promoted in place",
                vec![(Starting, Replica), (Running, Replica), (Running, Primary)],
                vec![(OnStart, "replica"), (OnRoleChange, "master")],
            ),
            (
                "a primary fenced and started again as a replica: on_stop, then a role change",
                vec![(Running, Primary), (Stopped, Replica), (Starting, Replica), (Running, Replica)],
                vec![(OnStart, "master"), (OnStop, "master"), (OnRoleChange, "replica")],
            ),
            (
                "a restart through the API",
                vec![(Running, Replica), (Restarting, Replica), (Starting, Replica), (Running, Replica)],
                vec![(OnStart, "replica"), (OnRestart, "replica")],
            ),
            (
                "a switchover away: on_stop, then the role change",
                vec![
                    (Running, Primary),
                    (Stopping, Primary),
                    (Stopped, Replica),
                    (Starting, Replica),
                    (Running, Replica),
                ],
                vec![(OnStart, "master"), (OnStop, "master"), (OnRoleChange, "replica")],
            ),
            (
                "stopping, then stopped: one on_stop, once stopped",
                vec![(Running, Primary), (Stopping, Primary), (Stopping, Primary), (Stopped, Primary)],
                vec![(OnStart, "master"), (OnStop, "master")],
            ),
            (
                "a crash and a restart in place: no on_stop, a start",
                vec![(Running, Primary), (Crashed, Primary), (Starting, Primary), (Running, Primary)],
                vec![(OnStart, "master"), (OnStart, "master")],
            ),
            ("nothing runs: nothing", vec![(Starting, Replica), (Stopped, Replica)], vec![]),
            ("a standby leader", vec![(Running, Role::StandbyLeader)], vec![(OnStart, "standby_leader")]),
        ];
        for (name, steps, want) in cases {
            let want: Vec<(Action, String)> = want.into_iter().map(|(a, r)| (a, r.to_owned())).collect();
            assert_eq!(run(&steps), want, "{name}");
        }
    }
}
