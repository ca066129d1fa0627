//! Bootstrapping a new cluster from another one instead of initdb
//! (Spilo's `CLONE_METHOD`): from the source's bucket (a base backup, then
//! its WAL up to `CLONE_TARGET_TIME` or the end of the archive) or with
//! `pg_basebackup` from a running source. Either way recovery ends with a
//! promotion onto a new timeline, in a PostgreSQL run only for that; when
//! [`bootstrap`] returns, PGDATA holds a stopped, promoted cluster that
//! the caller starts as a primary. The clone archives to its own storage
//! only: its recovery reads the source through `tusk wal-fetch --source`,
//! and the configuration refuses a source that is its own archive.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fetch::{self, FetchOptions};
use super::list;
use super::{BackupError, Cancel, Progress};
use crate::config::Config;
use crate::config::clone::{CloneConfig, CloneSource, RecoveryTarget};
use crate::config::storage::StorageConfig;
use crate::postgres::files::{self, ConfInputs, Role};
use crate::postgres::process::Postmaster;
use crate::postgres::stop::{self, Mode};
use crate::postgres::{Binaries, RunAs, atomic, replication, sql};
use crate::storage::layout::Layout;
use crate::storage::s3::ObjectStore;

/// Progress of a long recovery in the log at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Bootstraps PGDATA (missing or empty) from `clone`. `Ok(false)`: `stop`
/// resolved first (nothing usable is left in PGDATA).
pub async fn bootstrap(
    cfg: &Config,
    clone: &CloneConfig,
    bin: &Binaries,
    run_as: &RunAs,
    inputs: &ConfInputs,
    stop: impl Future<Output = ()>,
) -> Result<bool, BackupError> {
    let t0 = Instant::now();
    tokio::pin!(stop);
    let recovery = match &clone.source {
        CloneSource::Storage(source) => {
            // Dropping the restore on a stop leaves at most its staging
            // directory beside PGDATA, which the next attempt removes.
            let work = restore(cfg, clone, source, run_as);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r?,
                () = &mut stop => return Ok(false),
            }
        }
        CloneSource::Basebackup { host, port, user, password } => {
            tracing::info!(source = %clone.scope, host, port, "cloning with pg_basebackup");
            let mut cmd = tokio::process::Command::new(bin.tool("pg_basebackup"));
            cmd.arg("-D").arg(&cfg.postgres.data).args(["-X", "stream", "-c", "fast", "--no-password", "-d"]).arg(
                format!("host={host} port={port} user={user} sslmode=prefer application_name=tusk-clone-{}", cfg.name),
            );
            let secret: Vec<(&str, &str)> = password.iter().map(|p| ("PGPASSWORD", p.expose())).collect();
            let work = replication::run_tool(cmd, cfg, run_as, "pg_basebackup", &secret);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r.map_err(|e| BackupError::Internal(e.to_string()))?,
                () = &mut stop => {
                    remove_contents(&cfg.postgres.data);
                    return Ok(false);
                }
            }
            // The WAL pg_basebackup streamed is all there is: nothing to fetch.
            BTreeMap::from([("restore_command".to_owned(), "/bin/false".to_owned())])
        }
    };
    let r = recover(cfg, bin, run_as, inputs, recovery, &clone.target, &mut stop).await;
    match r {
        Ok(true) => {
            tracing::info!(
                source = %clone.scope,
                elapsed_s = format!("{:.1}", t0.elapsed().as_secs_f64()),
                "clone complete: promoted onto a new timeline; starting as this cluster's primary"
            );
            Ok(true)
        }
        Ok(false) => {
            remove_contents(&cfg.postgres.data);
            Ok(false)
        }
        Err(e) => {
            // A half-recovered copy must not be started later as if it were whole.
            remove_contents(&cfg.postgres.data);
            Err(e)
        }
    }
}

/// Restores the backup recovery starts from and returns the recovery
/// settings (`restore_command` from the source, the target).
async fn restore(
    cfg: &Config,
    clone: &CloneConfig,
    source: &StorageConfig,
    run_as: &RunAs,
) -> Result<BTreeMap<String, String>, BackupError> {
    let store = ObjectStore::new(source).await?;
    let layout = Layout::new(&source.root);
    let backups = list::list(&store, &layout).await?;
    let chosen = choose(&backups, &clone.target).ok_or_else(|| match &clone.target.time {
        Some(t) => BackupError::NotFound(format!(
            "CLONE_TARGET_TIME {t}: no backup of {} in {} finished before it ({} backups there)",
            clone.scope,
            source.url,
            backups.len()
        )),
        None => BackupError::NotFound(format!("no completed backup of {} in {}", clone.scope, source.url)),
    })?;
    tracing::info!(source = %clone.scope, url = %source.url, backup = %chosen.name, target = ?clone.target.time, "cloning from a base backup");
    let opts = FetchOptions {
        dest: cfg.postgres.data.clone(),
        which: chosen.name.clone(),
        expect_system_id: None,
        owner: run_as.switch.then(|| (run_as.uid.as_raw(), run_as.gid.as_raw())),
        concurrency: source.download_concurrency,
    };
    fetch::fetch(&store, &layout, &opts, &Arc::new(Progress::default()), &Arc::new(Cancel::default())).await?;
    let restore_command = source_restore_command(cfg, &format!("clone-{}", clone.scope), source, run_as)?;
    Ok(BTreeMap::from([("restore_command".to_owned(), restore_command)]))
}

/// Writes another cluster's storage settings to `PGROOT/tusk-<name>.env`
/// (postgres's, 0600: it holds keys) and returns the `restore_command`
/// that reads that archive: `tusk wal-fetch --source FILE`. Used by clones
/// and by a standby cluster's leader.
pub fn source_restore_command(
    cfg: &Config,
    name: &str,
    source: &StorageConfig,
    run_as: &RunAs,
) -> Result<String, BackupError> {
    let file = cfg.postgres.root.join(format!("tusk-{name}.env"));
    let text = crate::config::storage::fallback_file(source, &cfg.postgres.data);
    atomic::write_atomic(&file, text.as_bytes(), 0o600, run_as).map_err(|e| BackupError::Internal(e.to_string()))?;
    let exe =
        std::env::current_exe().map_err(|e| BackupError::Internal(format!("cannot find tusk's own path: {e}")))?;
    Ok(format!(
        "{} wal-fetch --source {} \"%f\" \"%p\"",
        shell_quote(&exe.display().to_string()),
        shell_quote(&file.display().to_string())
    ))
}

/// The backup to start from: the newest, or with a target time the newest
/// that finished before it.
fn choose<'a>(backups: &'a [list::BackupEntry], target: &RecoveryTarget) -> Option<&'a list::BackupEntry> {
    match target.instant {
        None => backups.last(),
        Some(at) => backups.iter().rev().find(|b| b.finish_time.unwrap_or(b.modified) <= at),
    }
}

/// Runs PostgreSQL in archive recovery until it promotes, then stops it.
async fn recover(
    cfg: &Config,
    bin: &Binaries,
    run_as: &RunAs,
    inputs: &ConfInputs,
    mut recovery: BTreeMap<String, String>,
    target: &RecoveryTarget,
    stop_req: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, BackupError> {
    let internal = |e: crate::postgres::PgError| BackupError::Internal(e.to_string());
    if let Some(t) = &target.time {
        recovery.insert("recovery_target_time".into(), t.clone());
        recovery.insert("recovery_target_inclusive".into(), if target.inclusive { "on" } else { "off" }.into());
        recovery.insert("recovery_target_action".into(), if target.pause { "pause" } else { "promote" }.into());
    }
    recovery.insert("recovery_target_timeline".into(), target.timeline.clone());
    // Nothing of the source's is archived again, and nothing is archived
    // before the promotion anyway.
    // The source's settings from the copied pg_control: recovery aborts on
    // lower ones ("insufficient parameter settings").
    let standby_minimums = crate::postgres::replication::controldata(bin, &cfg.postgres.data)
        .await
        .map(|cd| cd.standby_minimums)
        .unwrap_or_default();
    let inputs = ConfInputs { recovery, standby_minimums, ..inputs.clone() };
    files::write_all(cfg, &inputs, run_as, &Role::Primary).map_err(internal)?;
    atomic::write_atomic(&cfg.postgres.data.join("recovery.signal"), b"", 0o600, run_as).map_err(internal)?;
    crate::postgres::process::clear_stale_pid_file(&cfg.postgres.data).map_err(internal)?;
    let mut pm = Postmaster::start(cfg, bin, run_as).map_err(internal)?;
    let t0 = Instant::now();
    let client = tokio::select! {
        c = sql::wait_ready(cfg) => c?,
        st = pm.wait() => return Err(BackupError::Internal(format!(
            "PostgreSQL exited during the clone's recovery ({st}); its log above says why"
        ))),
        () = stop_req.as_mut() => {
            stop::stop(&mut pm, None, Mode::Fast, cfg.tusk.shutdown_timeout, None).await;
            return Ok(false);
        }
    };
    let mut last_report = Instant::now();
    loop {
        let row = client.query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
             (SELECT pg_last_xact_replay_timestamp())::text",
            &[],
        );
        let (in_recovery, lsn, ts): (bool, Option<String>, Option<String>) = tokio::select! {
            r = row => { let r = r?; (r.get(0), r.get(1), r.get(2)) }
            st = pm.wait() => return Err(BackupError::Internal(format!(
                "PostgreSQL exited during the clone's recovery ({st}); its log above says why \
                 (a target time after the end of the archive ends recovery early)"
            ))),
            () = stop_req.as_mut() => {
                stop::stop(&mut pm, Some(client), Mode::Fast, cfg.tusk.shutdown_timeout, None).await;
                return Ok(false);
            }
        };
        if !in_recovery {
            break;
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            tracing::info!(
                replayed_lsn = lsn.as_deref().unwrap_or("-"),
                last_commit = ts.as_deref().unwrap_or("-"),
                elapsed_s = t0.elapsed().as_secs(),
                "clone: recovery in progress"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let tl: i32 = client.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).await?.get(0);
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "clone: recovery done, promoted");
    let code = stop::stop(&mut pm, Some(client), Mode::Graceful, cfg.tusk.shutdown_timeout, None).await;
    if code != 0 {
        return Err(BackupError::Internal(format!("the clone's PostgreSQL did not stop cleanly (status {code})")));
    }
    tracing::debug!(timeline = tl, "clone stopped after promotion");
    Ok(true)
}

/// Empties PGDATA after a failed or stopped clone.
fn remove_contents(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(err) = r {
            tracing::error!(path = %p.display(), error = %err, "cannot remove what a failed clone left; remove it before retrying");
        }
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, finish: i64) -> list::BackupEntry {
        let json = format!(
            r#"{{"FinishTime":"{}"}}"#,
            time::OffsetDateTime::from_unix_timestamp(finish)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        let sentinel = super::super::sentinel::Sentinel::parse(json.as_bytes()).unwrap();
        list::BackupEntry {
            name: name.into(),
            modified: time::OffsetDateTime::from_unix_timestamp(finish + 1).unwrap(),
            wal_file_name: String::new(),
            start_time: None,
            finish_time: sentinel.finish_time,
            start_lsn: None,
            finish_lsn: None,
            timeline: None,
            pg_version: 0,
            system_identifier: None,
            uncompressed_size: 0,
            compressed_size: 0,
            duration_s: None,
            is_permanent: false,
            sentinel,
        }
    }

    #[test]
    fn chooses_the_newest_backup_before_the_target() {
        let b = [entry("a", 100), entry("b", 200), entry("c", 300)];
        let t = |at: Option<i64>| RecoveryTarget {
            time: at.map(|a| a.to_string()),
            instant: at.map(|a| time::OffsetDateTime::from_unix_timestamp(a).unwrap()),
            timeline: "latest".into(),
            inclusive: true,
            pause: false,
        };
        assert_eq!(choose(&b, &t(None)).map(|e| e.name.as_str()), Some("c"));
        assert_eq!(choose(&b, &t(Some(250))).map(|e| e.name.as_str()), Some("b"));
        assert_eq!(choose(&b, &t(Some(200))).map(|e| e.name.as_str()), Some("b"));
        assert_eq!(choose(&b, &t(Some(50))).map(|e| e.name.as_str()), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/tusk"), "/usr/bin/tusk");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
