//! Patroni's REST API on `APIPORT` (reference/spilo-patroni.md §3): the
//! health endpoints HAProxy checks, the status and cluster views, the
//! operations (switchover, failover, restart, reload, reinitialize,
//! configuration), `/metrics`, with basic auth and TLS.
//!
//! The API never waits on the HA loop and the HA loop never waits on the
//! API: the loop publishes [`NodeStatus`] into a `watch` channel that
//! handlers only read; operations that need the loop are sent as
//! [`Command`]s over a bounded channel (a full channel is answered 503),
//! and switchovers go through the DCS like Patroni's.

pub mod client;
pub mod health;
mod http;
mod metrics;
mod ops;
mod server;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot, watch};

pub use client::ApiClient;
pub use ops::{parse_time, version_num};
pub use server::{TlsError, serve, tls_acceptor};
pub use status::{NodeStatus, Replication, Xlog};

use crate::config::{BasicAuth, VerifyClient};
use crate::dcs::client::Dcs;

/// An operation the HA loop carries out for the API.
#[derive(Debug)]
pub enum Command {
    /// Restart postgres now (if the conditions hold) or at `schedule`.
    Restart(RestartRequest, oneshot::Sender<Reply>),
    /// Cancel a scheduled restart.
    CancelRestart(oneshot::Sender<Reply>),
    /// Re-read certificates, reload postgres (the SIGHUP path).
    Reload,
    /// Stop a replica, remove its data and clone it again from the leader.
    Reinitialize { force: bool, reply: oneshot::Sender<Reply> },
    /// Look at the cluster again now (a switchover was requested).
    Wake,
}

/// What the HA loop answers a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: StatusCode,
    pub body: String,
}

impl Reply {
    pub fn new(code: StatusCode, body: impl Into<String>) -> Reply {
        Reply { code, body: body.into() }
    }
}

/// `POST /restart`'s body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartRequest {
    pub schedule: Option<time::OffsetDateTime>,
    /// Restart only if the node has this role (`primary`/`master`, `replica`).
    pub role: Option<String>,
    /// Restart only if the running major.minor is older than this.
    pub postgres_version: Option<String>,
    /// Restart only if a parameter change is pending a restart.
    pub restart_pending: bool,
    /// How long to wait for postgres to come back (default 60 s).
    pub timeout: Option<Duration>,
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

struct Inner {
    status: watch::Receiver<NodeStatus>,
    /// The HA loop's etcd connection (replaced on SIGHUP); `None` standalone.
    dcs: watch::Receiver<Option<Dcs>>,
    commands: mpsc::Sender<Command>,
    auth: Option<BasicAuth>,
    verify_client: VerifyClient,
    peers: ApiClient,
    /// WAL archiving's figures for `/patroni` and `/metrics`.
    archive: Option<Arc<dyn ArchiveView>>,
    /// The last `POST /failsafe` a primary sent (read by the HA loop).
    failsafe: watch::Sender<Option<FailsafeNotice>>,
}

/// A primary's `POST /failsafe`: it runs without etcd, on its members'
/// confirmations, and this member confirmed (it does not race for the
/// leader key for a `ttl` after this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeNotice {
    /// The primary's member name.
    pub name: String,
    pub received: std::time::Instant,
}

/// What the archiver shows through the API.
pub trait ArchiveView: Send + Sync {
    /// The `archive` object of `GET /patroni` (`None`: not archiving).
    fn status(&self) -> Option<serde_json::Value>;
    /// Prometheus lines; `labels` is `scope="..",name=".."`.
    fn metrics(&self, labels: &str) -> String;
}

impl ApiState {
    pub fn new(
        status: watch::Receiver<NodeStatus>,
        dcs: watch::Receiver<Option<Dcs>>,
        commands: mpsc::Sender<Command>,
        api: &crate::config::ApiConfig,
        peers: ApiClient,
    ) -> ApiState {
        ApiState(Arc::new(Inner {
            status,
            dcs,
            commands,
            auth: api.auth.clone(),
            verify_client: api.tls.as_ref().map_or(VerifyClient::None, |t| t.verify_client),
            peers,
            archive: None,
            failsafe: watch::channel(None).0,
        }))
    }

    /// Follows the `POST /failsafe` notices this API accepts.
    pub fn failsafe_notices(&self) -> watch::Receiver<Option<FailsafeNotice>> {
        self.0.failsafe.subscribe()
    }

    /// Shows the archiver's figures in `/patroni` and `/metrics`.
    pub fn with_archive(self, view: Arc<dyn ArchiveView>) -> ApiState {
        let inner = Arc::into_inner(self.0).expect("with_archive is called before the state is shared");
        ApiState(Arc::new(Inner { archive: Some(view), ..inner }))
    }
}

/// The commands' channel size: more pending operations than this are refused.
pub const COMMAND_QUEUE: usize = 16;

/// A running API: what the node keeps to feed it and to take its commands.
pub struct Started {
    pub status: watch::Sender<NodeStatus>,
    pub commands: mpsc::Receiver<Command>,
    /// The TLS acceptor, replaced on reload ([`Started::reload_tls`]).
    pub tls: Arc<std::sync::RwLock<Option<tokio_rustls::TlsAcceptor>>>,
    /// A client for the peers' APIs, with this node's TLS identity and auth.
    pub client: ApiClient,
    /// The primaries' `POST /failsafe` notices (failsafe mode).
    pub failsafe: watch::Receiver<Option<FailsafeNotice>>,
}

impl Started {
    /// Re-reads the certificate files; keeps the current ones if they fail.
    pub fn reload_tls(&self, api: &crate::config::ApiConfig) {
        reload_tls(&self.tls, api);
    }
}

/// Replaces the TLS acceptor in `slot` with one from the current files;
/// keeps the old one (and logs why) if they do not load.
pub fn reload_tls(slot: &std::sync::RwLock<Option<tokio_rustls::TlsAcceptor>>, api: &crate::config::ApiConfig) {
    match tls_acceptor(api) {
        Ok(t) => {
            if let Ok(mut slot) = slot.write() {
                *slot = t;
            }
        }
        Err(e) => tracing::error!("keeping the REST API's current certificate: {e}"),
    }
}

/// Binds `APIPORT` on all addresses and serves the API on its own thread.
/// An error names the variable at fault (the caller exits 78).
pub async fn start(
    cfg: &crate::config::Config,
    dcs: watch::Receiver<Option<Dcs>>,
    archive: Option<Arc<dyn ArchiveView>>,
) -> Result<Started, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let (status_tx, status_rx) = watch::channel(NodeStatus::new(&cfg.scope, &cfg.name));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let tls = tls_acceptor(&cfg.api).map_err(|e| ConfigError::new(e.var, e.message))?;
    let tls = Arc::new(std::sync::RwLock::new(tls));
    let client =
        ApiClient::new(&cfg.api, false).map_err(|e| ConfigError::new("SSL_RESTAPI_CERTIFICATE_FILE", e.to_string()))?;
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], cfg.api.port));
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| ConfigError::new("APIPORT", format!("cannot listen on {addr}: {e}")))?;
    let mut state = ApiState::new(status_rx, dcs, cmd_tx, &cfg.api, client.clone());
    if let Some(a) = archive {
        state = state.with_archive(a);
    }
    let failsafe = state.failsafe_notices();
    // Its own thread and runtime: a flood of requests competes with the HA
    // loop for a core through the OS scheduler, never inside one executor.
    let tls_for_server = tls.clone();
    std::thread::Builder::new()
        .name("tusk-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "REST API: cannot build its runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "REST API: cannot use the listener");
                        return;
                    }
                };
                if let Err(e) = serve(listener, tls_for_server, state).await {
                    tracing::error!(error = %e, "REST API stopped");
                }
            });
        })
        .map_err(|e| ConfigError::new("APIPORT", format!("cannot start the REST API thread: {e}")))?;
    Ok(Started { status: status_tx, commands: cmd_rx, tls, client, failsafe })
}
