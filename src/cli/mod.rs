//! The command line: `tusk` (or `tusk run`) runs the node; other
//! subcommands are one-shot tools that read the same environment, so that
//! `podman exec <ctr> tusk config` shows what the daemon sees.

mod api;
mod backup;
pub mod cluster;
pub mod patronictl;

use axum::http::Method;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::exit::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::logging;

/// Why a command failed; [`CliError::exit_code`] is the one mapping to
/// exit statuses.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The environment does not parse (exit 78).
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// The REST API client cannot be set up from the configuration (exit 78).
    #[error(transparent)]
    ApiSetup(crate::api::client::ClientError),
    #[error("cannot build the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Dcs(#[from] crate::dcs::client::DcsError),
    #[error(transparent)]
    Api(#[from] crate::api::client::ClientError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// The cluster or the node refused, or did not do what was asked (exit 1).
    #[error("{0}")]
    Refused(String),
    /// Bad arguments that clap cannot check (exit 2, as clap's own).
    #[error("{0}")]
    Usage(String),
    /// `tusk healthcheck`: reported on stdout, for the health-check log (exit 1).
    #[error("{0}")]
    Unhealthy(String),
    /// A question found no answer (end of input; patronictl's `Aborted!`, exit 1).
    #[error("Aborted!")]
    Aborted,
    /// The failure was already printed (patronictl's `Failed: ...` lines; exit 1).
    #[error("failed")]
    Failed,
    /// stdout could not be written (a closed pipe; exit 1).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) | CliError::ApiSetup(_) => EXIT_CONFIG,
            CliError::Usage(_) => 2,
            CliError::Runtime(_)
            | CliError::Dcs(_)
            | CliError::Api(_)
            | CliError::Backup(_)
            | CliError::Refused(_)
            | CliError::Unhealthy(_)
            | CliError::Aborted
            | CliError::Failed
            | CliError::Output(_) => EXIT_FAILURE,
        }
    }
}

/// Prints a command's failure (health checks on stdout, the rest on
/// stderr) and maps it to the exit status.
fn report(r: Result<(), CliError>) -> i32 {
    match r {
        Ok(()) => EXIT_OK,
        Err(CliError::Unhealthy(m)) => {
            println!("unhealthy: {m}");
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("tusk: {e}");
            e.exit_code()
        }
    }
}

/// A small runtime for one command.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::Runtime)
}

#[derive(Debug, Parser)]
#[command(name = "tusk", version, about = "PID 1 of a highly available PostgreSQL container", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node (the default): PostgreSQL, supervised.
    Run,
    /// Print the effective configuration as JSON, secrets redacted; exit 78 if invalid.
    Config,
    /// List the cluster's members (`patronictl list`'s table).
    List,
    /// Hand leadership to another member (any healthy replica, or --candidate).
    Switchover {
        #[arg(long)]
        candidate: Option<String>,
        /// When, with a time zone (`2026-11-22T03:00:00+00:00`).
        #[arg(long)]
        scheduled: Option<String>,
    },
    /// Make --candidate the leader, even when the current leader is gone.
    Failover {
        #[arg(long)]
        candidate: String,
    },
    /// Maintenance mode on: no automatic failover or promotion.
    Pause,
    /// Maintenance mode off.
    Resume,
    /// Exit 0 if the local node is healthy (for podman/Quadlet/ECS health checks).
    Healthcheck {
        /// Check this endpoint for a 200 instead (e.g. /readiness, /health, /primary).
        #[arg(long)]
        endpoint: Option<String>,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Restart the local PostgreSQL through the REST API.
    Restart {
        /// Only if a parameter change is pending a restart.
        #[arg(long)]
        pending: bool,
        /// Only if the node has this role (primary or replica).
        #[arg(long)]
        role: Option<String>,
        /// When, with a time zone.
        #[arg(long)]
        scheduled: Option<String>,
    },
    /// Cancel a scheduled restart of the local node.
    CancelRestart,
    /// Reload the local node (certificates, PostgreSQL configuration).
    Reload,
    /// Remove the local replica's data and clone it again from the leader.
    Reinit {
        /// Even if another operation is in progress.
        #[arg(long)]
        force: bool,
    },
    /// archive_command: archive one WAL file to S3 (WAL-G's layout) through the supervisor.
    WalPush { path: String },
    /// restore_command: fetch one WAL file from S3 into DEST (exit 1: not in the archive).
    WalFetch {
        name: String,
        dest: String,
        /// Fetch from another cluster's archive, described by this file of
        /// storage variables (a clone's recovery), not through the supervisor.
        #[arg(long)]
        source: Option<std::path::PathBuf>,
    },
    /// Started by wal-fetch without a supervisor: downloads the next
    /// segments into the prefetch directory.
    #[command(hide = true)]
    WalPrefetch { names: Vec<String> },
    /// Take a base backup of the local primary to S3 (WAL-G's layout).
    BackupPush,
    /// List the completed base backups in S3, oldest first.
    BackupList {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a base backup from S3 into DEST (missing or empty), as
    /// WAL-G's backup-fetch; recovery is then up to PostgreSQL
    /// (`restore_command = 'tusk wal-fetch %f %p'`).
    BackupFetch {
        /// The data directory to create (missing or empty).
        dest: std::path::PathBuf,
        /// A backup name from `backup-list`, or LATEST.
        name: String,
    },
    /// Delete old base backups and the WAL only they need, as WAL-G's
    /// delete: `retain N` keeps the N newest backups, `before NAME|TIME`
    /// keeps that backup (or those finished from that time) and newer ones.
    /// Permanent backups, the WAL they need and history files stay. A dry
    /// run unless --confirm.
    Delete {
        /// retain [FULL|FIND_FULL] N | before [FIND_FULL] NAME|TIME
        #[arg(required = true, num_args = 1..=3, value_name = "MODE")]
        args: Vec<String>,
        /// Delete (without it, only print what would be deleted).
        #[arg(long)]
        confirm: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// Whether this invocation runs the node (and so needs an init when PID 1).
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, None | Some(Command::Run))
    }
}

/// Runs the chosen command; returns the exit status.
pub fn dispatch(cli: Cli) -> i32 {
    let result = match cli.command {
        None | Some(Command::Run) => return run_daemon(),
        Some(Command::WalPush { path }) => return crate::archive::client::wal_push(&path),
        Some(Command::WalFetch { name, dest, source }) => {
            return crate::archive::client::wal_fetch(&name, &dest, source.as_deref());
        }
        Some(Command::WalPrefetch { names }) => return crate::archive::client::wal_prefetch(&names),
        Some(Command::List) => cluster::list(),
        Some(Command::BackupPush) => backup::push(),
        Some(Command::BackupList { json }) => backup::list(json),
        Some(Command::BackupFetch { dest, name }) => backup::fetch(dest, name),
        Some(Command::Delete { args, confirm, json }) => backup::delete(&args, confirm, json),
        Some(Command::Switchover { candidate, scheduled }) => cluster::switchover(candidate, false, scheduled),
        Some(Command::Failover { candidate }) => cluster::switchover(Some(candidate), true, None),
        Some(Command::Healthcheck { endpoint, timeout }) => {
            api::healthcheck(endpoint, std::time::Duration::from_secs(timeout.max(1)))
        }
        Some(Command::Restart { pending, role, scheduled }) => {
            let body = serde_json::json!({"restart_pending": pending, "role": role, "schedule": scheduled});
            api::local_operation(Method::POST, "/restart", Some(body), std::time::Duration::from_secs(90))
        }
        Some(Command::CancelRestart) => {
            api::local_operation(Method::DELETE, "/restart", None, std::time::Duration::from_secs(15))
        }
        Some(Command::Reload) => {
            api::local_operation(Method::POST, "/reload", None, std::time::Duration::from_secs(15))
        }
        Some(Command::Reinit { force }) => api::local_operation(
            Method::POST,
            "/reinitialize",
            Some(serde_json::json!({"force": force})),
            std::time::Duration::from_secs(90),
        ),
        Some(Command::Pause) => cluster::set_pause(true),
        Some(Command::Resume) => cluster::set_pause(false),
        Some(Command::Config) => {
            Config::from_process_env().map(|cfg| println!("{}", cfg.to_redacted_json())).map_err(CliError::from)
        }
    };
    report(result)
}

fn run_daemon() -> i32 {
    let cfg = match Config::from_process_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            let (format, level) = logging::from_env_best_effort();
            let guard = logging::init(format, &level, false);
            tracing::error!(variable = %e.var, "configuration error: {e}");
            guard.flush();
            return EXIT_CONFIG;
        }
    };
    let guard = logging::init(cfg.tusk.log_format, &cfg.tusk.log_level, true);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "tusk starting");
    for w in &cfg.warnings {
        tracing::warn!("configuration: {w}");
    }
    // One thread: the supervisor's work is I/O-bound, and a small footprint
    // matters in a sidecar-free container.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the runtime");
            guard.flush();
            return EXIT_FAILURE;
        }
    };
    let code = runtime.block_on(crate::supervisor::run(cfg));
    // Not `drop`: that waits for every blocking task. One was seen to hold
    // the exit 4 s after the keys were released (a member stopped just after
    // its peers, in tests/compose.rs; presumably a name lookup of a peer that
    // was gone) until podman's SIGKILL. Nothing left there holds data:
    // postgres is stopped and the keys are released.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    tracing::info!(code, "tusk exiting");
    guard.flush();
    code
}
