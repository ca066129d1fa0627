//! The supervisor: prepares the node, runs the postmaster, restarts it after
//! a crash, and turns signals into actions.
//!
//! Signals: TERM/INT → bounded CHECKPOINT, fast shutdown, exit 0 (a second
//! TERM/INT or the deadline escalates to immediate); QUIT → immediate;
//! HUP → re-install certificates, reload postgres; USR1 → log status.
//! Everything fits in `TUSK_SHUTDOWN_TIMEOUT`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::api;
use crate::archive::ArchiveHandle;
use crate::backup::schedule::Backups;
use crate::config::Config;
use crate::dcs::client::Dcs;
use crate::exit::{EXIT_CONFIG, EXIT_FAILURE};
use crate::notify::Notifier;
use crate::patroni::{Role, State};
use crate::postgres::files;
use crate::postgres::passwords::{self, Passwords};
use crate::postgres::process::{self, Postmaster};
use crate::postgres::{self, DataDirState, Layout, PgError, RunAs, sql, stop};
use crate::signals::{Request, Signals, wait_for_stop};

/// How often a standalone node refreshes the status the API serves.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// Failed first starts (never ready) before tusk gives up.
const MAX_FIRST_START_FAILURES: u32 = 3;

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
    let archive = ArchiveSlot::default();
    if !cfg.standalone() {
        return run_ha(cfg, archive, &notifier, &mut signals).await;
    }
    tracing::info!(
        scope = %cfg.scope,
        name = %cfg.name,
        "standalone mode: no DCS configured (ETCD3_HOSTS unset); running a single primary without HA"
    );
    // The API first: health checks answer while initdb runs.
    let (_no_dcs, api) = match start_api(&cfg, &archive).await {
        Ok(a) => a,
        Err(e) => return e.exit_code(),
    };
    api.status.send_modify(|s| s.facts.standalone = true);
    start_backups(&cfg, &api, &archive);
    let mut node = match Node::prepare(cfg, api, &archive, &notifier, &mut signals).await {
        Ok(Some(node)) => node,
        Ok(None) => return 0,
        Err(e) => return e.exit_code(),
    };
    node.supervise(&notifier, &mut signals, started).await
}

/// HA mode: the same preparation as a standalone node up to the data
/// directory, which the HA loop bootstraps, clones or adopts.
async fn run_ha(cfg: Config, archive: ArchiveSlot, notifier: &Notifier, signals: &mut Signals) -> i32 {
    let prepared = match prepare_common(&cfg, &archive) {
        Ok(p) => p,
        Err(e) => return e.exit_code(),
    };
    let (dcs_tx, api) = match start_api(&cfg, &archive).await {
        Ok(a) => a,
        Err(e) => return e.exit_code(),
    };
    start_backups(&cfg, &api, &archive);
    let Prepared { layout, run_as, inputs } = prepared;
    crate::ha::run::run(cfg, layout.binaries, run_as, inputs, api, dcs_tx, notifier, signals).await
}

/// The archiver's handle once archiving started, and the backup
/// scheduler's status, as the REST API looks them up on each request (the
/// API may start before archiving does).
#[derive(Clone, Default)]
struct ArchiveSlot(Arc<OnceLock<ArchiveHandle>>, Arc<OnceLock<Backups>>);

impl api::ArchiveView for ArchiveSlot {
    fn status(&self) -> Option<serde_json::Value> {
        let mut v = self.0.get()?.status_json()?;
        if let (Some(b), Some(obj)) = (self.1.get(), v.as_object_mut()) {
            obj.insert("backup".into(), b.status_json());
        }
        Some(v)
    }

    fn metrics(&self, labels: &str) -> String {
        let mut out = self.0.get().map(|h| h.metrics(labels)).unwrap_or_default();
        if let Some(b) = self.1.get()
            && !out.is_empty()
        {
            out.push_str(&b.metrics(labels));
        }
        out
    }
}

/// Starts the backup scheduler: backups are allowed while this node is the
/// running primary (the leader in HA mode), as the API's status says.
fn start_backups(cfg: &Config, api: &api::Started, slot: &ArchiveSlot) {
    if cfg.storage.is_none() {
        return;
    }
    let may = |st: &api::NodeStatus| {
        st.role == Role::Primary && st.state == State::Running && (st.facts.standalone || st.leader)
    };
    let mut status = api.status.subscribe();
    let (tx, rx) = watch::channel(may(&status.borrow()));
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let now = may(&status.borrow_and_update());
            tx.send_if_modified(|v| std::mem::replace(v, now) != now);
        }
    });
    let _ = slot.1.set(crate::backup::schedule::start(cfg, rx));
}

/// Starts the REST API (the one place, for both modes). Returns the sender
/// of the etcd connection the API uses (HA mode sets it) and the handles;
/// `Err`: the exit status.
async fn start_api(
    cfg: &Config,
    archive: &ArchiveSlot,
) -> Result<(watch::Sender<Option<Dcs>>, api::Started), NodeError> {
    let (dcs_tx, dcs_rx) = watch::channel(None);
    let api = api::start(cfg, dcs_rx, Some(Arc::new(archive.clone()))).await?;
    Ok((dcs_tx, api))
}

/// What both modes prepare before the data directory.
struct Prepared {
    layout: Layout,
    run_as: RunAs,
    inputs: files::ConfInputs,
}

/// What both modes do first: preflight (read-only), the OS user,
/// directories, TLS files, archiving (whose commands and environment are
/// handed down to postgres).
fn prepare_common(cfg: &Config, slot: &ArchiveSlot) -> Result<Prepared, NodeError> {
    let layout = postgres::preflight(&cfg.postgres, std::path::Path::new(postgres::DEFAULT_LIB_ROOT))?;
    let mut run_as = RunAs::resolve(postgres::child_env(&cfg.postgres, &[]))?;
    postgres::prepare_directories(&cfg.postgres, &run_as)?;
    let tls = postgres::tls::install(cfg, &run_as)?;
    let archive = crate::archive::start(cfg, &run_as);
    let _ = slot.0.set(archive.handle.clone());
    run_as.env = postgres::child_env(&cfg.postgres, &archive.child_env);
    let libraries = files::Libraries::scan(&layout.binaries.libdir());
    Ok(Prepared {
        layout,
        run_as,
        inputs: files::ConfInputs {
            tls,
            archive: archive.commands,
            recovery: Default::default(),
            libraries,
            standby_minimums: Default::default(),
            dynamic_hba: None,
        },
    })
}

/// Why the node could not be prepared; [`NodeError::exit_code`] logs it
/// and picks the exit status.
#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error("configuration error: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Postgres(PgError),
    #[error("clone: {0}")]
    Clone(#[from] crate::backup::BackupError),
}

impl From<PgError> for NodeError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Config(c) => NodeError::Config(c),
            other => NodeError::Postgres(other),
        }
    }
}

impl NodeError {
    fn exit_code(self) -> i32 {
        match self {
            NodeError::Config(e) => {
                tracing::error!(variable = %e.var, "configuration error: {e}");
                EXIT_CONFIG
            }
            NodeError::Postgres(e) => {
                tracing::error!("{e}");
                EXIT_FAILURE
            }
            NodeError::Clone(e) => {
                tracing::error!("clone failed: {e}; PGDATA was left empty, fix the cause and start again");
                EXIT_FAILURE
            }
        }
    }
}

struct Node {
    cfg: Config,
    layout: Layout,
    run_as: RunAs,
    passwords: Passwords,
    api: api::Started,
}

impl Node {
    /// Preflight, directories, passwords, certificates, initdb and files.
    /// `Ok(None)`: a stop request arrived during bootstrap.
    async fn prepare(
        cfg: Config,
        api: api::Started,
        archive: &ArchiveSlot,
        notifier: &Notifier,
        signals: &mut Signals,
    ) -> Result<Option<Node>, NodeError> {
        let Prepared { layout, run_as, inputs } = prepare_common(&cfg, archive)?;
        let passwords = passwords::resolve(&cfg, &run_as)?;
        if layout.state == DataDirState::Fresh
            && let Some(clone) = &cfg.clone
        {
            api.status.send_modify(|s| s.state = State::InitializingNewCluster);
            notifier.status("bootstrapping: cloning");
            let stop = async {
                let req = wait_for_stop(signals).await;
                tracing::info!(?req, "stop requested during the clone");
            };
            if !crate::backup::clone::bootstrap(&cfg, clone, &layout.binaries, &run_as, &inputs, stop).await? {
                return Ok(None);
            }
        } else if layout.state == DataDirState::Fresh {
            api.status.send_modify(|s| s.state = State::InitializingNewCluster);
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
        files::write_all(&cfg, &inputs, &run_as, &files::Role::Primary)?;
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
            self.publish(State::Starting, None).await;
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
                self.publish(State::Running, Some(&client)).await;
                let mut refresh = tokio::time::interval(STATUS_REFRESH);
                // Running: until it exits or we are told to stop.
                loop {
                    tokio::select! {
                        status = pm.wait() => break status,
                        _ = refresh.tick() => self.publish(State::Running, Some(&client)).await,
                        Some(cmd) = self.api.commands.recv() => self.command(cmd, &pm),
                        req = signals.recv() => match req {
                            Request::Stop | Request::StopNow => {
                                self.publish(State::Stopping, None).await;
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
            self.publish(State::Crashed, None).await;
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
    async fn publish(&self, state: State, client: Option<&tokio_postgres::Client>) {
        let (pos, details) = match client {
            Some(c) => (postgres::replication::position(c).await.ok(), sql::details(c).await.ok()),
            None => (None, None),
        };
        self.api.status.send_modify(|st| {
            st.state = state;
            st.role = Role::Primary;
            st.facts.standalone = true;
            st.facts.last_loop = Some(std::time::Instant::now());
            st.set_postgres(pos.as_ref(), details.as_ref());
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

/// Stops postgres within TUSK_SHUTDOWN_TIMEOUT (see [`stop::stop`]): a
/// second TERM/INT or a QUIT escalates.
async fn stop_postgres(
    budget: Duration,
    pm: &mut Postmaster,
    client: Option<tokio_postgres::Client>,
    req: Request,
    notifier: &Notifier,
    signals: &mut Signals,
) -> i32 {
    notifier.stopping();
    stop::stop(pm, client, stop::Mode::for_request(req), budget, Some(signals)).await
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
}
