//! Patroni's REST API on `APIPORT`: the status JSON (`GET /patroni`) and
//! the health endpoints HAProxy checks. The HA loop publishes the node's
//! status into a `watch` channel; handlers only read it, so the API never
//! waits on the HA loop and the HA loop never waits on the API.

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::dcs::values::PATRONI_COMPAT_VERSION;

/// What `GET /patroni` returns (Patroni's field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `running`, `starting`, `stopped`, `creating replica`, ...
    pub state: String,
    /// `primary`, `replica`, `uninitialized`, `demoted`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    #[serde(default)]
    pub xlog: Xlog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_system_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// Whether this node holds the leader key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leader: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_unlocked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, serde_json::Value>,
    pub patroni: PatroniInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Xlog {
    /// Primary: current flush position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_location: Option<u64>,
}

impl Xlog {
    /// The position a failover compares: max(received, replayed), or the primary's.
    pub fn position(&self) -> u64 {
        self.location.or(self.received_location.max(self.replayed_location)).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PatroniInfo {
    pub version: String,
    pub scope: String,
    #[serde(default)]
    pub name: String,
}

impl NodeStatus {
    pub fn new(scope: &str, name: &str) -> NodeStatus {
        NodeStatus {
            state: "starting".into(),
            role: "uninitialized".into(),
            patroni: PatroniInfo { version: PATRONI_COMPAT_VERSION.into(), scope: scope.into(), name: name.into() },
            ..Default::default()
        }
    }

    fn running(&self) -> bool {
        self.state == "running"
    }
    fn is_primary(&self) -> bool {
        self.running() && self.role == "primary" && self.leader
    }
    fn is_replica(&self) -> bool {
        self.running() && self.role == "replica"
    }
}

/// The status code of a health endpoint (the basic rules of
/// reference/spilo-patroni.md §3.2; the query-parameter rules come with the
/// full REST API).
pub fn health_status(path: &str, s: &NodeStatus) -> StatusCode {
    let ok = |b: bool| if b { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    match path.trim_end_matches('/') {
        "" | "/primary" | "/master" | "/leader" | "/read-write" => ok(s.is_primary()),
        "/replica" => ok(s.is_replica()),
        "/read-only" => ok(s.is_primary() || s.is_replica()),
        "/health" => ok(s.running()),
        "/liveness" => StatusCode::OK,
        "/readiness" => ok(s.is_primary() || (s.is_replica() && s.replication_state.as_deref() == Some("streaming"))),
        "/patroni" => StatusCode::OK,
        _ => StatusCode::NOT_FOUND,
    }
}

async fn handle(State(status): State<watch::Receiver<NodeStatus>>, method: Method, uri: axum::http::Uri) -> Response {
    let s = status.borrow().clone();
    let code = health_status(uri.path(), &s);
    if code == StatusCode::NOT_FOUND {
        return (code, "not found\n").into_response();
    }
    match method {
        Method::GET => (code, axum::Json(s)).into_response(),
        Method::HEAD | Method::OPTIONS => code.into_response(),
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// Serves the API on a bound listener until the task is dropped.
pub async fn serve_on(listener: tokio::net::TcpListener, status: watch::Receiver<NodeStatus>) -> std::io::Result<()> {
    let app = Router::new().fallback(handle).with_state(status);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "REST API listening");
    }
    axum::serve(listener, app).await
}

/// Asks a peer's API for its status (`api_url` from its member key).
pub async fn peer_status(api_url: &str, timeout: std::time::Duration) -> Option<NodeStatus> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: hyper::Uri = api_url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        // TLS to peers comes with the REST API's TLS support.
        return None;
    }
    let client: Client<_, Empty<hyper::body::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let fetch = async {
        let resp = client.get(uri).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice::<NodeStatus>(&body).ok()
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_rules() {
        let mut s = NodeStatus::new("c", "a");
        s.state = "running".into();
        s.role = "primary".into();
        s.leader = true;
        assert_eq!(health_status("/", &s), StatusCode::OK);
        assert_eq!(health_status("/primary", &s), StatusCode::OK);
        assert_eq!(health_status("/replica", &s), StatusCode::SERVICE_UNAVAILABLE);
        s.role = "replica".into();
        s.leader = false;
        s.replication_state = Some("streaming".into());
        assert_eq!(health_status("/primary", &s), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health_status("/replica", &s), StatusCode::OK);
        assert_eq!(health_status("/readiness", &s), StatusCode::OK);
        s.state = "stopped".into();
        assert_eq!(health_status("/health", &s), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health_status("/liveness", &s), StatusCode::OK);
        assert_eq!(health_status("/nope", &s), StatusCode::NOT_FOUND);
    }
}
