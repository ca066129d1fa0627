//! Base backup commands, as WAL-G's behave: `backup-push` (run here,
//! against the local primary; the supervisor's scheduler runs the same
//! code), `backup-list`, `backup-fetch`, `delete`.

use std::sync::Arc;

use super::{CliError, runtime};
use crate::backup::{self, Cancel, NodeLock, Progress};
use crate::config::Config;
use crate::logging;
use crate::storage::layout::Layout;
use crate::storage::s3::ObjectStore;

fn storage(cfg: &Config) -> Result<&crate::config::StorageConfig, CliError> {
    cfg.storage
        .as_ref()
        .ok_or_else(|| CliError::Refused("no storage is configured (set WAL_S3_BUCKET or WALG_S3_PREFIX)".into()))
}

/// `tusk backup-push`: one base backup of the local primary; progress on
/// stderr; SIGINT/SIGTERM interrupt it (no sentinel is written).
pub fn push() -> Result<(), CliError> {
    let cfg = Config::from_process_env()?;
    storage(&cfg)?;
    let guard = logging::init(cfg.tusk.log_format, &cfg.tusk.log_level, false);
    let _lock = NodeLock::take(&cfg.postgres.root)?;
    let rt = runtime()?;
    let r = rt.block_on(async {
        let progress = Arc::new(Progress::default());
        let cancel = Arc::new(Cancel::default());
        let mut rx = backup::push::spawn(cfg, progress, cancel.clone());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(CliError::Runtime)?;
        let r = tokio::select! {
            r = &mut rx => r,
            _ = tokio::signal::ctrl_c() => { cancel.cancel("interrupted (SIGINT)"); (&mut rx).await }
            _ = term.recv() => { cancel.cancel("interrupted (SIGTERM)"); (&mut rx).await }
        };
        match r {
            Ok(Ok(done)) => {
                println!("{}", serde_json::to_string(&done).expect("Pushed serializes"));
                Ok(())
            }
            Ok(Err(e)) => Err(CliError::Backup(e)),
            Err(_) => Err(CliError::Refused("the backup thread died".into())),
        }
    });
    guard.flush();
    r
}

/// `tusk backup-fetch DEST NAME|LATEST`: restores into DEST (missing or
/// empty); run as root, the files are postgres's. SIGINT/SIGTERM stop it
/// and remove what it wrote.
pub fn fetch(dest: std::path::PathBuf, which: String) -> Result<(), CliError> {
    let cfg = Config::from_process_env()?;
    let storage = storage(&cfg)?.clone();
    let guard = logging::init(cfg.tusk.log_format, &cfg.tusk.log_level, false);
    let owner =
        crate::postgres::RunAs::resolve(Vec::new()).ok().filter(|r| r.switch).map(|r| (r.uid.as_raw(), r.gid.as_raw()));
    let opts = backup::fetch::FetchOptions {
        dest,
        which,
        expect_system_id: None,
        owner,
        concurrency: storage.download_concurrency,
    };
    let r = runtime()?.block_on(async move {
        let store = ObjectStore::new(&storage).await.map_err(|e| CliError::Backup(e.into()))?;
        let layout = Layout::new(&storage.root);
        let progress = Arc::new(Progress::default());
        let cancel = Arc::new(Cancel::default());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(CliError::Runtime)?;
        let work = backup::fetch::fetch(&store, &layout, &opts, &progress, &cancel);
        tokio::pin!(work);
        let r = tokio::select! {
            r = &mut work => r,
            _ = tokio::signal::ctrl_c() => { cancel.cancel("interrupted (SIGINT)"); work.await }
            _ = term.recv() => { cancel.cancel("interrupted (SIGTERM)"); work.await }
        };
        let done = r?;
        println!("{}", serde_json::to_string(&done).expect("Fetched serializes"));
        eprintln!(
            "restored {} into {}; to recover, put `restore_command = 'tusk wal-fetch %f %p'` in its configuration \
             and create recovery.signal (or standby.signal) there",
            done.name,
            opts.dest.display()
        );
        Ok(())
    });
    guard.flush();
    r
}

/// `tusk backup-list [--json]`.
pub fn list(json: bool) -> Result<(), CliError> {
    let cfg = Config::from_process_env()?;
    let storage = storage(&cfg)?.clone();
    runtime()?.block_on(async move {
        let store = ObjectStore::new(&storage).await.map_err(|e| CliError::Backup(e.into()))?;
        let backups = backup::list::list(&store, &Layout::new(&storage.root)).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&backups).expect("BackupEntry serializes"));
        } else if backups.is_empty() {
            eprintln!("no backups in {}", storage.url);
        } else {
            print!("{}", backup::list::table(&backups));
        }
        Ok(())
    })
}

/// `tusk delete retain N|before NAME|TIME [--confirm] [--json]`: prints
/// the plan; deletes it only with `--confirm`.
pub fn delete(args: &[String], confirm: bool, json: bool) -> Result<(), CliError> {
    let target = backup::delete::Target::parse(args).map_err(CliError::Usage)?;
    let cfg = Config::from_process_env()?;
    let storage = storage(&cfg)?.clone();
    let guard = logging::init(cfg.tusk.log_format, &cfg.tusk.log_level, false);
    let r = runtime()?.block_on(async move {
        let store = ObjectStore::new(&storage).await.map_err(|e| CliError::Backup(e.into()))?;
        let layout = Layout::new(&storage.root);
        let backups = backup::list::list(&store, &layout).await?;
        let plan = backup::delete::prepare(&store, &layout, &backups, &target).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&plan).expect("Plan serializes"));
        }
        if plan.is_empty() {
            eprintln!("nothing to delete in {}", storage.url);
            return Ok(());
        }
        if !confirm {
            eprintln!("would delete {}", plan.summary());
            eprintln!("this was a dry run: add --confirm to delete");
            return Ok(());
        }
        eprintln!("deleting {}", plan.summary());
        backup::delete::execute(&store, &plan).await?;
        tracing::info!(backups = ?plan.backups, wal_files = plan.wal_files, objects = plan.objects, "deleted");
        eprintln!("deleted {} objects", plan.objects);
        Ok(())
    });
    guard.flush();
    r
}
