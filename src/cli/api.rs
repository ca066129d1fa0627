//! Commands that go through the REST API, as `patronictl` does: the
//! container's health check, restart, reload, reinitialize, and the
//! switchover request (with a fallback to the DCS when the leader's API
//! does not answer).

use std::time::Duration;

use axum::http::{Method, StatusCode};

use crate::api::ApiClient;
use crate::config::{Config, EXIT_CONFIG};

/// Exit status of an unhealthy node or a refused operation.
const EXIT_FAILED: i32 = 1;

fn load() -> Result<Config, i32> {
    Config::from_process_env().map_err(|e| {
        eprintln!("tusk: configuration error: {e}");
        EXIT_CONFIG
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("tusk: cannot build the runtime: {e}");
        EXIT_FAILED
    })
}

/// The local node's API over loopback.
fn local_url(cfg: &Config, path: &str) -> String {
    format!("{}://127.0.0.1:{}{path}", cfg.api.scheme(), cfg.api.port)
}

/// States a healthy node passes through (work in progress, not failure).
const BUSY_STATES: [&str; 6] =
    ["starting", "restarting", "creating replica", "running pg_rewind", "initializing new cluster", "stopping"];

/// `tusk healthcheck [--endpoint PATH]`: for podman `--health-cmd`, Quadlet
/// `HealthCmd` and ECS health checks. Without `--endpoint`: healthy when the
/// API answers, the HA loop is not stuck (`/liveness`) and postgres runs or
/// is on its way (starting, cloning, rewinding). With `--endpoint`: healthy
/// when that endpoint answers 200 (e.g. `/readiness`, `/health`).
pub fn healthcheck(endpoint: Option<String>, timeout: Duration) -> i32 {
    with_local_client(|cfg, client| async move {
        if let Some(path) = endpoint {
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            return match client.request(Method::GET, &local_url(&cfg, &path), None, timeout).await {
                Ok((StatusCode::OK, _)) => {
                    println!("healthy: {path} answered 200");
                    0
                }
                Ok((code, _)) => {
                    println!("unhealthy: {path} answered {code}");
                    EXIT_FAILED
                }
                Err(e) => {
                    println!("unhealthy: {e}");
                    EXIT_FAILED
                }
            };
        }
        let live = client.request(Method::GET, &local_url(&cfg, "/liveness"), None, timeout).await;
        match live {
            Ok((StatusCode::OK, _)) => {}
            Ok((code, _)) => {
                println!("unhealthy: the HA loop is stuck (/liveness answered {code})");
                return EXIT_FAILED;
            }
            Err(e) => {
                println!("unhealthy: {e}");
                return EXIT_FAILED;
            }
        }
        match client.peer_status(&local_url(&cfg, "/patroni"), timeout).await {
            Some(s) if s.state == "running" => {
                println!("healthy: {} {}", s.role, s.state);
                0
            }
            Some(s) if BUSY_STATES.contains(&s.state.as_str()) => {
                println!("healthy: {} ({})", s.state, s.role);
                0
            }
            Some(s) => {
                println!("unhealthy: postgres is {} ({})", s.state, s.role);
                EXIT_FAILED
            }
            None => {
                println!("unhealthy: no status from the REST API");
                EXIT_FAILED
            }
        }
    })
}

/// Sends one operation to the local node's API and prints the answer.
pub fn local_operation(method: Method, path: &str, body: Option<serde_json::Value>, timeout: Duration) -> i32 {
    with_local_client(|cfg, client| async move {
        answer(client.request(method, &local_url(&cfg, path), body.as_ref(), timeout).await)
    })
}

/// Runs `f` with the configuration and a client for the local API (any
/// certificate name: it is this node over loopback) on a small runtime.
fn with_local_client<F, Fut>(f: F) -> i32
where
    F: FnOnce(Config, ApiClient) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let cfg = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match ApiClient::new(&cfg.api, true) {
            Ok(client) => f(cfg, client).await,
            Err(e) => {
                eprintln!("tusk: {e}");
                EXIT_CONFIG
            }
        }
    })
}

/// Prints an API answer; 2xx is success.
pub(super) fn answer(r: Result<(StatusCode, hyper::body::Bytes), crate::api::client::ClientError>) -> i32 {
    match r {
        Ok((code, body)) => {
            let text = String::from_utf8_lossy(&body);
            if code.is_success() {
                println!("{}", text.trim_end());
                0
            } else {
                eprintln!("tusk: {code}: {}", text.trim_end());
                EXIT_FAILED
            }
        }
        Err(e) => {
            eprintln!("tusk: {e}");
            EXIT_FAILED
        }
    }
}
