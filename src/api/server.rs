//! The listener: HTTP/1.x over TCP or TLS (rustls), with bounds on
//! everything a client controls — connections, header size and time, body
//! size and time, connection lifetime — then routing in Patroni's manner.

// Handlers return their early answers as `Err(Response)`; boxing them
// would buy nothing on this path.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, header};
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

use super::health::{Check, health_status};
use super::http::{json, text};
use super::{ApiState, metrics, ops};
use crate::config::{ApiConfig, VerifyClient};

/// Connections served at once; a new one beyond this sheds the oldest
/// connection that is not inside a request.
const MAX_CONNECTIONS: usize = 512;
/// Time for a client to send a request's headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Time for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's whole life (keep-alive included).
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct TlsError {
    pub var: &'static str,
    pub message: String,
}

/// The TLS acceptor for `SSL_RESTAPI_*` (`None`: plain HTTP). Called at
/// start and on reload (certificate files re-read).
pub fn tls_acceptor(api: &ApiConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let Some(tls) = &api.tls else { return Ok(None) };
    let err = |var: &'static str| move |e: &dyn std::fmt::Display| TlsError { var, message: e.to_string() };
    let cert_bytes = tls.cert.read().map_err(|e| err("SSL_RESTAPI_CERTIFICATE_FILE")(&e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| err("SSL_RESTAPI_CERTIFICATE_FILE")(&e))?;
    let key_bytes = tls.key.read().map_err(|e| err("SSL_RESTAPI_PRIVATE_KEY_FILE")(&e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| err("SSL_RESTAPI_PRIVATE_KEY_FILE")(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("SSL_RESTAPI_CERTIFICATE_FILE")(&e))?;
    let builder = match (&tls.ca, tls.verify_client) {
        (Some(ca), VerifyClient::Optional | VerifyClient::Required) => {
            let ca_bytes = ca.read().map_err(|e| err("SSL_RESTAPI_CA_FILE")(&e))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&ca_bytes) {
                let c = c.map_err(|e| err("SSL_RESTAPI_CA_FILE")(&e))?;
                roots.add(c).map_err(|e| err("SSL_RESTAPI_CA_FILE")(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if tls.verify_client == VerifyClient::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| err("SSL_RESTAPI_CA_FILE")(&e))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| err("SSL_RESTAPI_PRIVATE_KEY_FILE")(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    pub addr: SocketAddr,
    /// Presented a client certificate that chains to `SSL_RESTAPI_CA`.
    pub verified_cert: bool,
}

/// The open connections, so that a full house sheds the oldest idle one
/// (a slow client still sending its headers, or a keep-alive connection
/// between requests) instead of making new clients wait.
#[derive(Default)]
struct Connections {
    next: u64,
    open: std::collections::BTreeMap<u64, (Arc<std::sync::atomic::AtomicBool>, tokio::task::AbortHandle)>,
}

type Registry = Arc<std::sync::Mutex<Connections>>;

/// Removes a connection from the registry when its task ends (or is aborted).
struct Registered(Registry, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut c) = self.0.lock() {
            c.open.remove(&self.1);
        }
    }
}

/// Marks a connection busy while one of its requests is handled.
struct Busy(Arc<std::sync::atomic::AtomicBool>);

impl Busy {
    fn new(flag: &Arc<std::sync::atomic::AtomicBool>) -> Busy {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        Busy(flag.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves until the task is dropped. `tls` is read for each new connection,
/// so a reload takes effect without a restart.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<std::sync::RwLock<Option<TlsAcceptor>>>,
    state: ApiState,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.read().map(|t| t.is_some()).unwrap_or(false) { "https" } else { "http" };
        tracing::info!(%addr, scheme, "REST API listening");
    }
    let registry: Registry = Arc::default();
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "REST API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A full house: shed the oldest connection not inside a request.
        {
            let Ok(mut conns) = registry.lock() else { continue };
            if conns.open.len() >= MAX_CONNECTIONS {
                let idle = conns
                    .open
                    .iter()
                    .find(|(_, (busy, _))| !busy.load(std::sync::atomic::Ordering::Relaxed))
                    .map(|(id, _)| *id);
                match idle.and_then(|id| conns.open.remove(&id)) {
                    Some((_, handle)) => handle.abort(),
                    None => {
                        tracing::debug!(%addr, "REST API: every connection is busy; refusing one");
                        continue;
                    }
                }
            }
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.read().ok().and_then(|t| t.clone());
        let state = state.clone();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy_conn = busy.clone();
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<Registered>();
        let task = tokio::spawn(async move {
            // Registered before any byte is read; dropped (unregistered) at the end.
            let Ok(_registered) = start_rx.await else { return };
            let life = async {
                match acceptor {
                    None => connection(TokioIo::new(tcp), Peer { addr, verified_cert: false }, busy_conn, state).await,
                    Some(acc) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let verified_cert = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            connection(TokioIo::new(stream), Peer { addr, verified_cert }, busy_conn, state).await
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "REST API TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "REST API TLS handshake timed out"),
                    },
                }
            };
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFE, life).await;
        });
        let Ok(mut conns) = registry.lock() else { continue };
        let id = conns.next;
        conns.next += 1;
        conns.open.insert(id, (busy, task.abort_handle()));
        drop(conns);
        let _ = start_tx.send(Registered(registry.clone(), id));
    }
}

async fn connection<I>(io: I, peer: Peer, busy: Arc<std::sync::atomic::AtomicBool>, state: ApiState)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = state.clone();
        let busy = Busy::new(&busy);
        async move {
            let resp = route(state, peer, req.map(Body::new)).await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        tracing::debug!(peer = %peer.addr, error = %e, "REST API connection ended");
    }
}

fn status_only(code: StatusCode) -> Response<Body> {
    Response::builder().status(code).body(Body::empty()).expect("a static response builds")
}

/// Routes a request: the first path segment picks the handler, as in
/// Patroni; any other GET (and every HEAD/OPTIONS) is a health check.
async fn route(state: ApiState, peer: Peer, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("").to_owned();
    let started = Instant::now();
    let resp = match (&method, segment.as_str()) {
        (&Method::GET, "patroni") => json(StatusCode::OK, &state.status_json()),
        (&Method::GET, "metrics") => metrics::response(&state),
        (&Method::GET, "cluster") => ops::cluster(&state).await,
        (&Method::GET, "history") => ops::history(&state).await,
        (&Method::GET, "config") => ops::get_config(&state).await,
        (&Method::GET, "failsafe") => ops::get_failsafe(&state),
        (&Method::GET, _) => health(&state, &path, query.as_deref(), true),
        (&Method::HEAD | &Method::OPTIONS, "patroni" | "metrics" | "cluster" | "history" | "config") => {
            status_only(StatusCode::OK)
        }
        (&Method::HEAD | &Method::OPTIONS, _) => health(&state, &path, query.as_deref(), false),
        (&Method::POST | &Method::PUT | &Method::PATCH | &Method::DELETE, _) => {
            if let Err(resp) = check_access(&state, peer, req.headers()) {
                return resp;
            }
            match (&method, segment.as_str()) {
                (&Method::POST, "switchover") => ops::switchover(&state, req, false).await,
                (&Method::POST, "failover") => ops::switchover(&state, req, true).await,
                (&Method::DELETE, "switchover") => ops::cancel_switchover(&state).await,
                (&Method::POST, "restart") => ops::restart(&state, req).await,
                (&Method::DELETE, "restart") => ops::cancel_restart(&state).await,
                (&Method::POST, "reload") => ops::reload(&state).await,
                (&Method::POST, "failsafe") => ops::post_failsafe(&state, req).await,
                (&Method::POST, "reinitialize") => ops::reinitialize(&state, req).await,
                (&Method::PATCH, "config") => ops::patch_config(&state, req).await,
                (&Method::PUT, "config") => ops::put_config(&state, req).await,
                _ => text(StatusCode::NOT_IMPLEMENTED, "Unsupported method"),
            }
        }
        _ => text(StatusCode::NOT_IMPLEMENTED, "Unsupported method"),
    };
    if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
        tracing::info!(
            %method, path, peer = %peer.addr, status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64, "REST API request"
        );
    }
    resp
}

fn health(state: &ApiState, path: &str, query: Option<&str>, with_body: bool) -> Response<Body> {
    let check = match Check::parse(path, query) {
        Ok(c) => c,
        Err(e) => {
            return if with_body { text(StatusCode::BAD_REQUEST, e) } else { status_only(StatusCode::BAD_REQUEST) };
        }
    };
    let status = state.0.status.borrow().clone();
    let code = health_status(&check, &status, Instant::now());
    if !with_body {
        return status_only(code);
    }
    // Status-only endpoints in Patroni; a body does no harm to HAProxy.
    json(code, &state.add_archive(status))
}

/// Patroni's `check_access` for write methods: a verified client
/// certificate when TLS asks for one, then basic auth when configured.
fn check_access(state: &ApiState, peer: Peer, headers: &HeaderMap) -> Result<(), Response<Body>> {
    if state.0.verify_client != VerifyClient::None && !peer.verified_cert {
        return Err(text(StatusCode::FORBIDDEN, "client certificate required"));
    }
    let Some(auth) = &state.0.auth else { return Ok(()) };
    let expected = format!("{}:{}", auth.username, auth.password.expose());
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok());
    match given {
        Some(g) if constant_time_eq(&g, expected.as_bytes()) => Ok(()),
        _ => {
            let mut resp = text(StatusCode::UNAUTHORIZED, "no auth header received");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"Patroni\""));
            Err(resp)
        }
    }
}

/// Equal contents, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiState {
    /// `GET /patroni`: the status with the archiver's figures.
    pub(super) fn status_json(&self) -> super::NodeStatus {
        let s = self.0.status.borrow().clone();
        self.add_archive(s)
    }

    fn add_archive(&self, mut s: super::NodeStatus) -> super::NodeStatus {
        if let Some(a) = &self.0.archive {
            s.archive = a.status();
        }
        s
    }

    pub(super) fn status(&self) -> super::NodeStatus {
        self.0.status.borrow().clone()
    }

    pub(super) fn dcs(&self) -> Option<crate::dcs::client::Dcs> {
        self.0.dcs.borrow().clone()
    }

    pub(super) fn commands(&self) -> &tokio::sync::mpsc::Sender<super::Command> {
        &self.0.commands
    }

    pub(super) fn peers(&self) -> &super::ApiClient {
        &self.0.peers
    }

    pub(super) fn archive_metrics(&self, labels: &str) -> Option<String> {
        self.0.archive.as_ref().map(|a| a.metrics(labels))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"a:b", b"a:b"));
        assert!(!super::constant_time_eq(b"a:b", b"a:c"));
        assert!(!super::constant_time_eq(b"a:b", b"a:bb"));
    }
}
