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
        // Inherited by the prefetcher this fetch may start.
        // SAFETY: single-threaded here; no runtime or thread exists yet.
        unsafe { std::env::set_var("TUSK_ARCHIVE_CONFIG", src) };
    }
    let dest = absolute(dest);
    let req = Request::Fetch { name: name.to_owned(), dest: dest.clone() };
    let asked = if source.is_some() { None } else { ask(&req, &env) };
    let resp = match asked {
        Some(r) => r,
        None if fast_hit(name, &dest, &env) => return 0,
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
    let _log = direct_log();
    let owned = req.clone();
    let r = with_direct_archiver(own_env, async move |archiver| match owned {
        Request::Push { path } => match archiver.push(&path).await {
            Ok(_) => Response { answer: Answer::Ok, message: String::new() },
            Err(e) => Response { answer: Answer::Error, message: e.to_string() },
        },
        Request::Fetch { name, dest } => super::server::fetch_with_policy(&archiver, &name, &dest).await,
    })?;
    Ok(match r {
        Some(Ok(resp)) => resp,
        Some(Err(message)) => Response { answer: Answer::Error, message },
        None => match req {
            // As archive_command = /bin/true without storage.
            Request::Push { .. } => Response { answer: Answer::Ok, message: "no WAL storage configured".into() },
            Request::Fetch { .. } => Response {
                answer: Answer::Error,
                message: "no WAL storage configured (WAL_S3_BUCKET, WALG_S3_PREFIX)".into(),
            },
        },
    })
}

/// `tusk wal-prefetch NAME...` (started by `wal-fetch` in direct mode,
/// detached): downloads those segments into the prefetch directory.
/// Always exits 0: a prefetch that fails only means a later fetch
/// downloads the file itself.
pub fn wal_prefetch(names: &[String]) -> i32 {
    let env = crate::config::process_env();
    let _log = direct_log();
    let names = names.to_vec();
    let t0 = std::time::Instant::now();
    let r = with_direct_archiver(&env, async move |archiver| archiver.prefetch_claimed(&names).await);
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, result = ?r, "prefetcher done");
    0
}

/// Builds this process's own archiver (direct mode: no supervisor) from
/// the storage settings and runs `f` with it on a one-thread runtime.
/// `Ok(None)`: no storage is configured; `Ok(Some(Err))`: it could not be
/// set up.
fn with_direct_archiver<T>(
    own_env: &Env,
    f: impl AsyncFnOnce(Arc<super::engine::Archiver>) -> T,
) -> Result<Option<Result<T, String>>, DirectError> {
    let env = fallback_env(own_env)?;
    let Some(storage) = crate::config::storage_from_map(&env)? else { return Ok(None) };
    // The SDK's default credential chain reads the process environment
    // (ECS, web identity, profile): give it the supervisor's variables.
    for (k, v) in &env {
        if k.starts_with("AWS_") && std::env::var_os(k).is_none() {
            // SAFETY: single-threaded here; no runtime or thread exists yet.
            unsafe { std::env::set_var(k, v) };
        }
    }
    let pgdata = pgdata_of(&env);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Ok(Some(Err(format!("cannot build a runtime: {e}")))),
    };
    Ok(Some(rt.block_on(async move {
        let store = crate::storage::wal::WalStore::new(&storage).await.map_err(|e| e.to_string())?;
        let handle = ArchiveHandle::new(true, Some(storage.url.clone()), pgdata.clone());
        let archiver = Arc::new(super::engine::Archiver::new(store, storage, pgdata, None, handle, false));
        Ok(f(archiver).await)
    })))
}

/// Direct mode's log, on stderr (PostgreSQL's log): warnings, or
/// `TUSK_LOG_LEVEL` when set.
fn direct_log() -> crate::logging::LogGuard {
    let (format, level) = crate::logging::from_env_best_effort();
    let level = if std::env::var_os("TUSK_LOG_LEVEL").is_some() { level } else { "warn".to_owned() };
    crate::logging::init(format, &level, false)
}

/// Direct mode: `PGDATA`, else the working directory (postgres runs
/// `restore_command` in the data directory).
fn pgdata_of(env: &BTreeMap<String, String>) -> PathBuf {
    env.get("PGDATA").map(PathBuf::from).or_else(|| std::env::current_dir().ok()).unwrap_or_else(|| PathBuf::from("."))
}

/// Direct mode: a segment a prefetcher already stored is delivered with
/// no runtime and no S3 client (recovery waits on every call).
fn fast_hit(name: &str, dest: &std::path::Path, own_env: &Env) -> bool {
    let _log = direct_log();
    let Ok(env) = fallback_env(own_env) else { return false };
    let Ok(Some(storage)) = crate::config::storage_from_map(&env) else { return false };
    super::prefetch::direct_hit(&pgdata_of(&env), name, dest, storage.download_concurrency)
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
