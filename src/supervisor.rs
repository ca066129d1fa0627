//! The supervisor: prepares the node, runs the postmaster, restarts it after
//! a crash, and turns signals into actions.
//!
//! Signals: TERM/INT → bounded CHECKPOINT, fast shutdown, exit 0 (a second
//! TERM/INT or the deadline escalates to immediate); QUIT → immediate;
//! HUP → re-install certificates, reload postgres; USR1 → log status.
//! Everything fits in `TUSK_SHUTDOWN_TIMEOUT`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::sleep_until;

use crate::api;
use crate::config::{Config, EXIT_CONFIG};
use crate::notify::Notifier;
use crate::postgres::files;
use crate::postgres::passwords::{self, Passwords};
use crate::postgres::process::{self, Postmaster};
use crate::postgres::{self, DataDirState, Layout, PgError, RunAs, sql};

/// Exit status for failures other than configuration.
pub const EXIT_FAILURE: i32 = 1;

/// How often a standalone node refreshes the status the API serves.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// Failed first starts (never ready) before tusk gives up.
const MAX_FIRST_START_FAILURES: u32 = 3;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// TERM or INT.
    Stop,
    /// QUIT.
    StopNow,
    Reload,
    Status,
    Ignore,
}

/// The signals the supervisor handles. Registered first thing: the default
/// action of HUP, USR1 and USR2 would kill the process.
pub(crate) struct Signals {
    streams: Vec<(tokio::signal::unix::Signal, Signal)>,
}

impl Signals {
    pub(crate) fn register() -> std::io::Result<Signals> {
        let kinds = [
            (SignalKind::terminate(), Signal::SIGTERM),
            (SignalKind::interrupt(), Signal::SIGINT),
            (SignalKind::quit(), Signal::SIGQUIT),
            (SignalKind::hangup(), Signal::SIGHUP),
            (SignalKind::user_defined1(), Signal::SIGUSR1),
            (SignalKind::user_defined2(), Signal::SIGUSR2),
        ];
        let mut streams = Vec::new();
        for (kind, sig) in kinds {
            streams.push((signal(kind)?, sig));
        }
        Ok(Signals { streams })
    }

    /// The next signal. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Request {
        let futs = self.streams.iter_mut().map(|(s, sig)| {
            let sig = *sig;
            Box::pin(async move {
                s.recv().await;
                sig
            })
        });
        let (sig, _, _) = futures_util::future::select_all(futs).await;
        tracing::info!(signal = %sig, "signal received");
        match sig {
            Signal::SIGTERM | Signal::SIGINT => Request::Stop,
            Signal::SIGQUIT => Request::StopNow,
            Signal::SIGHUP => Request::Reload,
            Signal::SIGUSR1 => Request::Status,
            _ => Request::Ignore,
        }
    }
}

/// Runs the node until it is told to stop; returns the exit status.
pub async fn run(cfg: Config) -> i32 {
    let started = Instant::now();
    let mut signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return EXIT_FAILURE;
        }
    };
    let notifier = Notifier::new(cfg.tusk.notify_socket.as_deref());
    if !cfg.standalone() {
        return run_ha(cfg, &notifier, &mut signals).await;
    }
    tracing::info!(
        scope = %cfg.scope,
        name = %cfg.name,
        "standalone mode: no DCS configured (ETCD3_HOSTS unset); running a single primary without HA"
    );
    // The API first: health checks answer while initdb runs.
    let (_no_dcs, dcs_rx) = tokio::sync::watch::channel(None);
    let api = match api::start(&cfg, dcs_rx, Some(std::sync::Arc::new(crate::archive::ApiView))).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(variable = %e.var, "configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    api.status.send_modify(|s| s.facts.standalone = true);
    let mut node = match Node::prepare(cfg, api, &notifier, &mut signals).await {
        Ok(Some(node)) => node,
        Ok(None) => return 0,
        Err(NodeError::Config(e)) => {
            tracing::error!(variable = %e.var, "configuration error: {e}");
            return EXIT_CONFIG;
        }
        Err(NodeError::Other(e)) => {
            tracing::error!("{e}");
            return EXIT_FAILURE;
        }
    };
    node.supervise(&notifier, &mut signals, started).await
}

/// HA mode: the same preparation as a standalone node up to the data
/// directory, which the HA loop bootstraps, clones or adopts.
async fn run_ha(cfg: Config, notifier: &Notifier, signals: &mut Signals) -> i32 {
    match prepare_common(&cfg) {
        Ok((layout, run_as, tls)) => crate::ha::run::run(cfg, layout.binaries, run_as, tls, notifier, signals).await,
        Err(NodeError::Config(e)) => {
            tracing::error!(variable = %e.var, "configuration error: {e}");
            EXIT_CONFIG
        }
        Err(NodeError::Other(e)) => {
            tracing::error!("{e}");
            EXIT_FAILURE
        }
    }
}

/// What both modes do first: preflight (read-only), the OS user,
/// directories, TLS files.
fn prepare_common(cfg: &Config) -> Result<(Layout, RunAs, files::TlsPaths), NodeError> {
    let layout = postgres::preflight(&cfg.postgres, std::path::Path::new(postgres::DEFAULT_LIB_ROOT))?;
    let run_as = RunAs::resolve()?;
    postgres::prepare_directories(&cfg.postgres, &run_as)?;
    let tls = postgres::tls::install(cfg, &run_as)?;
    crate::archive::start(cfg, &run_as);
    Ok((layout, run_as, tls))
}

enum NodeError {
    Config(crate::config::ConfigError),
    Other(String),
}

impl From<PgError> for NodeError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Config(c) => NodeError::Config(c),
            other => NodeError::Other(other.to_string()),
        }
    }
}

impl From<crate::config::ConfigError> for NodeError {
    fn from(e: crate::config::ConfigError) -> Self {
        NodeError::Config(e)
    }
}

struct Node {
    cfg: Config,
    layout: Layout,
    run_as: RunAs,
    passwords: Passwords,
    api: api::Started,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Fast shutdown completed: the shutdown checkpoint was written.
    Clean,
    /// Immediate shutdown, as asked (QUIT, second TERM).
    Immediate,
    /// The deadline forced immediate shutdown or a kill.
    Forced,
}

impl Node {
    /// Preflight, directories, passwords, certificates, initdb and files.
    /// `Ok(None)`: a stop request arrived during bootstrap.
    async fn prepare(
        cfg: Config,
        api: api::Started,
        notifier: &Notifier,
        signals: &mut Signals,
    ) -> Result<Option<Node>, NodeError> {
        let (layout, run_as, tls) = prepare_common(&cfg)?;
        let passwords = passwords::resolve(&cfg, &run_as)?;
        if layout.state == DataDirState::Fresh {
            api.status.send_modify(|s| s.state = "initializing new cluster".into());
            notifier.status("bootstrapping: initdb");
            tracing::info!(data = %cfg.postgres.data.display(), version = layout.binaries.version, "fresh data directory: running initdb");
            let stop = async {
                let req = wait_for_stop(signals).await;
                tracing::info!(?req, "stop requested during initdb");
            };
            if !process::initdb(&cfg, &layout.binaries, &run_as, stop).await? {
                return Ok(None);
            }
        }
        files::write_all(&cfg, &tls, &run_as, &files::Role::Primary)?;
        Ok(Some(Node { cfg, layout, run_as, passwords, api }))
    }

    /// Starts postgres and keeps it running until told to stop.
    async fn supervise(&mut self, notifier: &Notifier, signals: &mut Signals, started: Instant) -> i32 {
        let mut backoff = Backoff::default();
        let mut first = true;
        let mut startup_failures = 0u32;
        loop {
            if let Err(e) = process::clear_stale_pid_file(&self.cfg.postgres.data) {
                tracing::error!("{e}");
                return EXIT_FAILURE;
            }
            notifier.status("starting postgres");
            self.publish("starting", None).await;
            let mut pm = match Postmaster::start(&self.cfg, &self.layout.binaries, &self.run_as) {
                Ok(pm) => pm,
                Err(e) => {
                    tracing::error!("{e}");
                    return EXIT_FAILURE;
                }
            };
            // Starting: until it accepts connections.
            let client = loop {
                tokio::select! {
                    r = sql::wait_ready(&self.cfg) => match r {
                        Ok(c) => break Some(c),
                        Err(e) => {
                            // Retrying cannot fix this (the superuser role is missing, say).
                            let role = &self.cfg.credentials.superuser.name;
                            tracing::error!(error = %e, "PGUSER_SUPERUSER: postgres refuses the supervisor's connection as {role:?}; stopping");
                            stop_postgres(self.cfg.tusk.shutdown_timeout, &mut pm, None, Request::Stop, notifier, signals).await;
                            return EXIT_CONFIG;
                        }
                    },
                    status = pm.wait() => {
                        tracing::error!(%status, "postgres exited during startup");
                        break None;
                    }
                    req = signals.recv() => match req {
                        Request::Stop | Request::StopNow => {
                            return stop_postgres(self.cfg.tusk.shutdown_timeout, &mut pm, None, req, notifier, signals).await;
                        }
                        Request::Reload => self.reload(&pm),
                        Request::Status => tracing::info!(pid = pm.pid().as_raw(), "status: postgres starting"),
                        Request::Ignore => {}
                    },
                    Some(cmd) = self.api.commands.recv() => self.command(cmd, &pm),
                }
            };
            let status = if let Some(client) = client {
                // A copy still replaying WAL (recovery.signal) is read-only:
                // roles are set up once it has been promoted and restarted.
                let in_recovery = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false);
                if in_recovery {
                    tracing::info!("postgres is in recovery (read-only): roles and passwords left as they are");
                } else if let Err(e) = sql::ensure_roles(&client, &self.cfg, &self.passwords).await {
                    tracing::error!(error = %e, "cannot set up roles and passwords");
                }
                let how = if first { "start" } else { "restart" };
                tracing::info!(
                    elapsed_ms = if first { started.elapsed() } else { pm.started.elapsed() }.as_millis() as u64,
                    port = self.cfg.postgres.port,
                    "PostgreSQL is ready ({how}): primary, accepting connections"
                );
                notifier.ready("running as primary (standalone)");
                first = false;
                self.publish("running", Some(&client)).await;
                let mut refresh = tokio::time::interval(STATUS_REFRESH);
                // Running: until it exits or we are told to stop.
                loop {
                    tokio::select! {
                        status = pm.wait() => break status,
                        _ = refresh.tick() => self.publish("running", Some(&client)).await,
                        Some(cmd) = self.api.commands.recv() => self.command(cmd, &pm),
                        req = signals.recv() => match req {
                            Request::Stop | Request::StopNow => {
                                self.publish("stopping", None).await;
                                return stop_postgres(self.cfg.tusk.shutdown_timeout, &mut pm, Some(client), req, notifier, signals).await;
                            }
                            Request::Reload => self.reload(&pm),
                            Request::Status => tracing::info!(
                                pid = pm.pid().as_raw(),
                                uptime_s = pm.started.elapsed().as_secs(),
                                "status: running as primary (standalone)"
                            ),
                            Request::Ignore => {}
                        }
                    }
                }
            } else {
                // It never became ready in this run. Before it was ever ready,
                // a few failures in a row mean a setting or the data is wrong:
                // fail the container rather than loop (its log says why).
                startup_failures += 1;
                if first && startup_failures >= MAX_FIRST_START_FAILURES {
                    tracing::error!(
                        attempts = startup_failures,
                        "postgres failed to start; giving up (see its log above)"
                    );
                    return EXIT_FAILURE;
                }
                pm.wait().await
            };
            // An exit we did not ask for: restart_after_crash is off, so a
            // backend crash ends here too.
            tracing::error!(%status, ran_s = pm.started.elapsed().as_secs(), "postgres exited unexpectedly; restarting it");
            self.publish("crashed", None).await;
            notifier.status("postgres crashed; restarting");
            process::reap_leftover_group(pm.pid()).await;
            let delay = backoff.next(pm.started.elapsed());
            if !delay.is_zero() {
                tracing::info!(delay_ms = delay.as_millis() as u64, "waiting before the restart");
            }
            let deadline = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => break,
                    req = signals.recv() => match req {
                        Request::Stop | Request::StopNow => return 0,
                        _ => {}
                    }
                }
            }
        }
    }

    /// Publishes the status the REST API serves.
    async fn publish(&self, state: &str, client: Option<&tokio_postgres::Client>) {
        let (pos, details) = match client {
            Some(c) => (postgres::replication::position(c).await.ok(), sql::details(c).await.ok()),
            None => (None, None),
        };
        self.api.status.send_modify(|st| {
            st.state = state.to_owned();
            st.role = "primary".into();
            st.facts.standalone = true;
            st.facts.last_loop = Some(std::time::Instant::now());
            st.timeline = pos.map(|p| p.timeline);
            st.xlog = api::Xlog { location: pos.map(|p| p.wal), ..Default::default() };
            if let Some(d) = details {
                st.server_version = d.server_version;
                st.postmaster_start_time = d.postmaster_start_time;
                st.pending_restart = !d.pending_restart.is_empty();
                st.pending_restart_reason = d
                    .pending_restart
                    .into_iter()
                    .map(|(n, old, new)| (n, api::status::PendingChange { old_value: old, new_value: new }))
                    .collect();
                st.replication = d.replication;
            } else if state != "running" {
                st.postmaster_start_time = None;
                st.replication.clear();
            }
        });
    }

    /// An operation from the REST API. A standalone node reloads; restarts
    /// and reinitialization belong to the container's manager.
    fn command(&self, cmd: api::Command, pm: &Postmaster) {
        use axum::http::StatusCode;
        let refuse = |what: &str| {
            api::Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} is not available on a standalone node: restart the container instead"),
            )
        };
        match cmd {
            api::Command::Reload => self.reload(pm),
            api::Command::Wake => {}
            api::Command::Restart(_, reply) => {
                let _ = reply.send(refuse("restart"));
            }
            api::Command::CancelRestart(reply) => {
                let _ = reply.send(api::Reply::new(StatusCode::NOT_FOUND, "no restarts are scheduled"));
            }
            api::Command::Reinitialize { reply, .. } => {
                let _ = reply.send(refuse("reinitialize"));
            }
        }
    }

    /// SIGHUP: certificate files are re-read and re-installed, then postgres reloads.
    fn reload(&self, pm: &Postmaster) {
        self.api.reload_tls(&self.cfg.api);
        match postgres::tls::install(&self.cfg, &self.run_as) {
            Ok(_) => tracing::info!("certificates re-read"),
            Err(e) => tracing::error!("keeping the installed certificates: {e}"),
        }
        pm.signal(Signal::SIGHUP);
        tracing::info!("postgres reloaded");
    }
}

/// Stops postgres within `budget` (TUSK_SHUTDOWN_TIMEOUT): a bounded CHECKPOINT
/// (TERM/INT only), fast shutdown, then immediate, then a kill of the
/// group at the deadline. A second TERM/INT or a QUIT escalates.
pub(crate) async fn stop_postgres(
    budget: Duration,
    pm: &mut Postmaster,
    client: Option<tokio_postgres::Client>,
    req: Request,
    notifier: &Notifier,
    signals: &mut Signals,
) -> i32 {
    notifier.stopping();
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + budget;
    // Keep the last 25% (at least 1.5 s) for immediate shutdown.
    let fast_deadline = deadline - (budget / 4).max(Duration::from_millis(1500));
    let mut immediate = req == Request::StopNow;

    if !immediate && let Some(client) = &client {
        let checkpoint_deadline = t0 + budget / 2;
        tokio::select! {
            r = sql::checkpoint(client) => match r {
                Ok(()) => tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "checkpoint before shutdown done"),
                Err(e) => tracing::warn!(error = %e, "checkpoint before shutdown failed"),
            },
            _ = sleep_until(checkpoint_deadline) => tracing::warn!("checkpoint before shutdown took too long; shutting down anyway"),
            req = signals.recv() => if matches!(req, Request::Stop | Request::StopNow) { immediate = true },
        }
    }
    // Close our own session first, so postgres does not report it terminated.
    drop(client);
    tokio::task::yield_now().await;
    let mut outcome = if immediate { Stopped::Immediate } else { Stopped::Clean };
    pm.signal(if immediate { Signal::SIGQUIT } else { Signal::SIGINT });
    tracing::info!(mode = if immediate { "immediate" } else { "fast" }, "stopping postgres");
    let status = loop {
        let phase_deadline = if immediate { deadline } else { fast_deadline };
        tokio::select! {
            status = pm.wait() => break Some(status),
            _ = sleep_until(phase_deadline) => {
                if immediate {
                    break None;
                }
                tracing::warn!("fast shutdown did not finish in time; immediate shutdown");
                immediate = true;
                outcome = Stopped::Forced;
                pm.signal(Signal::SIGQUIT);
            }
            req = signals.recv() => if matches!(req, Request::Stop | Request::StopNow) && !immediate {
                tracing::info!("second stop request: immediate shutdown");
                immediate = true;
                outcome = Stopped::Immediate;
                pm.signal(Signal::SIGQUIT);
            }
        }
    };
    let status = match status {
        Some(s) => s,
        None => {
            tracing::error!("postgres did not stop before TUSK_SHUTDOWN_TIMEOUT; killing it");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pm.pid().as_raw()), Signal::SIGKILL);
            outcome = Stopped::Forced;
            pm.wait().await
        }
    };
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    let (code, what) = stop_result(outcome, status);
    if code == 0 {
        tracing::info!(elapsed_ms, %status, "{what}");
    } else {
        tracing::error!(elapsed_ms, %status, "{what}");
    }
    code
}

/// The exit status of a stop and what to log about it.
fn stop_result(outcome: Stopped, status: std::process::ExitStatus) -> (i32, &'static str) {
    use std::os::unix::process::ExitStatusExt;
    match outcome {
        Stopped::Clean if status.success() => (0, "postgres stopped cleanly"),
        // The postmaster installs its handlers before it touches the data
        // directory: killed by the fast-shutdown signal itself, it was
        // stopped before it had started, with nothing to flush.
        Stopped::Clean if status.signal() == Some(Signal::SIGINT as i32) => {
            (0, "postgres stopped before it had started")
        }
        Stopped::Immediate => (0, "postgres stopped (immediate)"),
        Stopped::Clean | Stopped::Forced => (EXIT_FAILURE, "postgres did not stop cleanly"),
    }
}

/// Waits for TERM/INT/QUIT, handling nothing else.
pub(crate) async fn wait_for_stop(signals: &mut Signals) -> Request {
    loop {
        if let r @ (Request::Stop | Request::StopNow) = signals.recv().await {
            return r;
        }
    }
}

/// Restart delays after crashes: none for the first, then doubling from
/// 1 s up to 30 s; reset once postgres ran for a minute.
#[derive(Default)]
struct Backoff {
    crashes: u32,
}

impl Backoff {
    fn next(&mut self, ran: Duration) -> Duration {
        if ran >= Duration::from_secs(60) {
            self.crashes = 0;
        }
        self.crashes += 1;
        match self.crashes {
            1 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 2).min(5)).min(Duration::from_secs(30)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        let quick = Duration::from_secs(1);
        let got: Vec<u64> = (0..8).map(|_| b.next(quick).as_secs()).collect();
        assert_eq!(got, [0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.next(Duration::from_secs(61)), Duration::ZERO);
    }

    #[test]
    fn stop_results() {
        use std::os::unix::process::ExitStatusExt;
        use std::process::ExitStatus;
        let exited = |c: i32| ExitStatus::from_raw(c << 8);
        let killed = |s: Signal| ExitStatus::from_raw(s as i32);
        let table = [
            (Stopped::Clean, exited(0), 0),
            // A postmaster asked to stop before its handlers were installed.
            (Stopped::Clean, killed(Signal::SIGINT), 0),
            (Stopped::Clean, exited(1), EXIT_FAILURE),
            (Stopped::Clean, killed(Signal::SIGKILL), EXIT_FAILURE),
            (Stopped::Clean, killed(Signal::SIGSEGV), EXIT_FAILURE),
            (Stopped::Immediate, exited(1), 0),
            (Stopped::Immediate, killed(Signal::SIGQUIT), 0),
            (Stopped::Forced, exited(0), EXIT_FAILURE),
            (Stopped::Forced, killed(Signal::SIGKILL), EXIT_FAILURE),
        ];
        for (outcome, status, want) in table {
            assert_eq!(stop_result(outcome, status).0, want, "{outcome:?} {status}");
        }
    }
}
