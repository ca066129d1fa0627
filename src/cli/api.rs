//! Commands that go through the REST API, as `patronictl` does: the
//! container's health check, restart, reload, reinitialize, and the
//! switchover request (with a fallback to the DCS when the leader's API
//! does not answer).

use std::time::Duration;

use axum::http::{Method, StatusCode};

use super::{CliError, runtime};
use crate::api::ApiClient;
use crate::config::Config;
use crate::patroni::State;

/// The local node's API over loopback.
fn local_url(cfg: &Config, path: &str) -> String {
    format!("{}://127.0.0.1:{}{path}", cfg.api.scheme(), cfg.api.port)
}

/// States a healthy node passes through (work in progress, not failure).
const BUSY_STATES: [State; 6] = [
    State::Starting,
    State::Restarting,
    State::CreatingReplica,
    State::RunningPgRewind,
    State::InitializingNewCluster,
    State::Stopping,
];

/// `tusk healthcheck [--endpoint PATH]`: for podman `--health-cmd`, Quadlet
/// `HealthCmd` and ECS health checks. Without `--endpoint`: healthy when the
/// API answers, the HA loop is not stuck (`/liveness`) and postgres runs or
/// is on its way (starting, cloning, rewinding). With `--endpoint`: healthy
/// when that endpoint answers 200 (e.g. `/readiness`, `/health`).
pub fn healthcheck(endpoint: Option<String>, timeout: Duration) -> Result<(), CliError> {
    with_local_client(|cfg, client| async move {
        if let Some(path) = endpoint {
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            return match client.request(Method::GET, &local_url(&cfg, &path), None, timeout).await {
                Ok((StatusCode::OK, _)) => {
                    println!("healthy: {path} answered 200");
                    Ok(())
                }
                Ok((code, _)) => Err(CliError::Unhealthy(format!("{path} answered {code}"))),
                Err(e) => Err(CliError::Unhealthy(e.to_string())),
            };
        }
        let live = client.request(Method::GET, &local_url(&cfg, "/liveness"), None, timeout).await;
        match live {
            Ok((StatusCode::OK, _)) => {}
            Ok((code, _)) => {
                return Err(CliError::Unhealthy(format!("the HA loop is stuck (/liveness answered {code})")));
            }
            Err(e) => return Err(CliError::Unhealthy(e.to_string())),
        }
        match client.peer_status(&local_url(&cfg, "/patroni"), timeout).await {
            Some(s) if s.state == State::Running => {
                println!("healthy: {} {}", s.role, s.state);
                Ok(())
            }
            Some(s) if BUSY_STATES.contains(&s.state) => {
                println!("healthy: {} ({})", s.state, s.role);
                Ok(())
            }
            Some(s) => Err(CliError::Unhealthy(format!("postgres is {} ({})", s.state, s.role))),
            None => Err(CliError::Unhealthy("no status from the REST API".into())),
        }
    })
}

/// Sends one operation to the local node's API and prints the answer.
pub fn local_operation(
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<(), CliError> {
    with_local_client(|cfg, client| async move {
        answer(client.request(method, &local_url(&cfg, path), body.as_ref(), timeout).await?)
    })
}

/// Runs `f` with the configuration and a client for the local API (any
/// certificate name: it is this node over loopback) on a small runtime.
fn with_local_client<F, Fut>(f: F) -> Result<(), CliError>
where
    F: FnOnce(Config, ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let cfg = Config::from_process_env()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let client = ApiClient::new(&cfg.api, true).map_err(CliError::ApiSetup)?;
        f(cfg, client).await
    })
}

/// Prints an API answer; 2xx is success.
pub(super) fn answer((code, body): (StatusCode, hyper::body::Bytes)) -> Result<(), CliError> {
    let text = String::from_utf8_lossy(&body);
    if code.is_success() {
        println!("{}", text.trim_end());
        Ok(())
    } else {
        Err(CliError::Refused(format!("{code}: {}", text.trim_end())))
    }
}
