//! `tusk wal-push %p` and `tusk wal-fetch %f %p`: thin, blocking clients of
//! the supervisor's socket. With no supervisor answering they run the
//! archiver themselves from the environment, or from the configuration the
//! supervisor left under `PGROOT` (`TUSK_ARCHIVE_CONFIG`).
//!
//! Exit statuses, chosen for PostgreSQL (reference §6.2, §6.8):
//! - wal-push: 0 archived (confirmed by S3), 1 anything else (PostgreSQL
//!   keeps the segment and retries). Never above 125, which would make the
//!   archiver process exit FATAL.
//! - wal-fetch: 0 delivered; 1 confirmed absent under every extension (end
//!   of archive); 2 an error, "not available now" to PostgreSQL (standby
//!   mode retries and streams); 126 an error during archive recovery after
//!   15 s of retries: PostgreSQL treats it as fatal and aborts recovery instead of
//!   ending it early on a transient S3 error; 78 bad configuration in
//!   direct mode (treated as "not available").

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::server::{Answer, Request, Response};
use super::{ArchiveHandle, SOCKET_NAME};
use crate::config::ConfigError;
use crate::exit::EXIT_CONFIG;

pub const EXIT_NOT_FOUND: i32 = 1;
pub const EXIT_ERROR: i32 = 2;
pub const EXIT_FATAL: i32 = 126;

/// Longest a client waits for the supervisor's answer (an upload has its
/// own, shorter S3 timeouts; this only bounds a hung supervisor).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Why the direct mode could not run at all (its exit status comes from this).
#[derive(Debug, thiserror::Error)]
enum DirectError {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
}

/// This process's environment, read once (postgres's: what the supervisor
/// handed down).
type Env = Result<BTreeMap<String, String>, ConfigError>;

pub fn wal_push(path: &str) -> i32 {
    let env = crate::config::process_env();
    let path = absolute(path);
    let req = Request::Push { path: path.clone() };
    let resp = match ask(&req, &env) {
        Some(r) => r,
        None => direct(&req, &env).unwrap_or_else(|e| Response { answer: Answer::Error, message: e.to_string() }),
    };
    match resp.answer {
        Answer::Ok => 0,
        _ => {
            eprintln!("tusk wal-push {}: {}", path.display(), resp.message);
            1
        }
    }
}

/// `source`: another cluster's archive, as a file of storage variables
/// (a clone's recovery, `tusk wal-fetch --source FILE`): fetched here,
/// never through the supervisor, whose archive is this cluster's own.
pub fn wal_fetch(name: &str, dest: &str, source: Option<&std::path::Path>) -> i32 {
    let mut env = crate::config::process_env();
    if let (Some(src), Ok(e)) = (source, env.as_mut()) {
        e.insert("TUSK_ARCHIVE_CONFIG".into(), src.display().to_string());
    }
    let dest = absolute(dest);
    let req = Request::Fetch { name: name.to_owned(), dest: dest.clone() };
    let asked = if source.is_some() { None } else { ask(&req, &env) };
    let resp = match asked {
        Some(r) => r,
        None => match direct(&req, &env) {
            Ok(r) => r,
            Err(e @ DirectError::Config(_)) => {
                eprintln!("tusk wal-fetch {name}: {e}");
                return EXIT_CONFIG;
            }
        },
    };
    match resp.answer {
        Answer::Ok => 0,
        Answer::NotFound => EXIT_NOT_FOUND,
        Answer::Error => {
            eprintln!("tusk wal-fetch {name}: {}", resp.message);
            EXIT_ERROR
        }
        Answer::Fatal => {
            eprintln!("tusk wal-fetch {name}: {} (fatal: archive recovery must not end early)", resp.message);
            EXIT_FATAL
        }
    }
}

/// `%p` is relative to PGDATA (postgres's working directory).
fn absolute(p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p) }
}

/// The supervisor's socket, as the configuration finds it in `env`.
fn socket_path(env: &Env) -> PathBuf {
    let c = crate::config::archive_client_env(env.as_ref().unwrap_or(&BTreeMap::new()));
    c.socket.unwrap_or_else(|| c.socket_dir.join(SOCKET_NAME))
}

/// The supervisor's answer; `None` when no supervisor listens.
fn ask(req: &Request, env: &Env) -> Option<Response> {
    let mut stream = UnixStream::connect(socket_path(env)).ok()?;
    let mut exchange = || -> std::io::Result<Response> {
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer)?;
        serde_json::from_str(&answer).map_err(|e| std::io::Error::other(format!("bad answer {answer:?}: {e}")))
    };
    Some(
        exchange().unwrap_or_else(|e| Response {
            answer: Answer::Error,
            message: format!("no answer from the supervisor: {e}"),
        }),
    )
}

/// Runs the request in this process; warnings go to stderr (postgres's log).
fn direct(req: &Request, own_env: &Env) -> Result<Response, DirectError> {
    let _log = crate::logging::init(crate::config::LogFormat::Text, "warn", false);
    let env = fallback_env(own_env)?;
    let storage = match crate::config::storage_from_map(&env)? {
        Some(s) => s,
        None => {
            return Ok(match req {
                // As archive_command = /bin/true without storage.
                Request::Push { .. } => Response { answer: Answer::Ok, message: "no WAL storage configured".into() },
                Request::Fetch { .. } => Response {
                    answer: Answer::Error,
                    message: "no WAL storage configured (WAL_S3_BUCKET, WALG_S3_PREFIX)".into(),
                },
            });
        }
    };
    // The SDK's default credential chain reads the process environment
    // (ECS, web identity, profile): give it the supervisor's variables.
    for (k, v) in &env {
        if k.starts_with("AWS_") && std::env::var_os(k).is_none() {
            // SAFETY: single-threaded here; no runtime or thread exists yet.
            unsafe { std::env::set_var(k, v) };
        }
    }
    let pgdata = env
        .get("PGDATA")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Ok(Response { answer: Answer::Error, message: format!("cannot build a runtime: {e}") }),
    };
    Ok(rt.block_on(async move {
        let store = match crate::storage::wal::WalStore::new(&storage).await {
            Ok(s) => s,
            Err(e) => return Response { answer: Answer::Error, message: e.to_string() },
        };
        let handle = ArchiveHandle::new(true, Some(storage.url.clone()), pgdata.clone());
        let archiver = Arc::new(super::engine::Archiver::new(store, storage, pgdata, None, handle, false));
        match req.clone() {
            Request::Push { path } => match archiver.push(&path).await {
                Ok(_) => Response { answer: Answer::Ok, message: String::new() },
                Err(e) => Response { answer: Answer::Error, message: e.to_string() },
            },
            Request::Fetch { name, dest } => super::server::fetch_with_policy(&archiver, &name, &dest).await,
        }
    }))
}

/// The supervisor's storage settings if it left them, else this process's environment.
fn fallback_env(own: &Env) -> Result<BTreeMap<String, String>, ConfigError> {
    let client_env = crate::config::archive_client_env(own.as_ref().unwrap_or(&BTreeMap::new()));
    if let Some(path) = client_env.fallback_config
        && let Ok(text) = std::fs::read_to_string(&path)
    {
        return Ok(crate::config::storage::parse_fallback_file(&text));
    }
    own.clone()
}
