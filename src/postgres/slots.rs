//! Replication slots in PostgreSQL: the slots a server has, creating,
//! dropping and advancing them, and copying a logical slot's state file
//! from the primary (PostgreSQL < 16 cannot create a logical slot on a
//! standby; a copied slot is loaded when the standby starts).
//!
//! Slot names reaching SQL text or paths here are checked by
//! [`valid_slot_name`] first (PostgreSQL's own rule: `[a-z0-9_]`, at most
//! 63 bytes).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_postgres::Client;

use super::{Binaries, RunAs};
use crate::config::Config;
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("invalid replication slot name {0:?}")]
    Name(String),
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>, source: std::io::Error) -> SlotError {
    SlotError::Io { what: what.into(), source }
}

/// PostgreSQL's rule for slot names: lower-case letters, digits and `_`,
/// 1 to 63 bytes.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// One row of `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSlot {
    pub name: String,
    /// `physical` or `logical`.
    pub kind: String,
    pub database: Option<String>,
    pub plugin: Option<String>,
    pub temporary: bool,
    pub active: bool,
    pub restart_lsn: Option<u64>,
    pub confirmed_flush_lsn: Option<u64>,
    pub catalog_xmin: Option<u32>,
}

impl ExistingSlot {
    /// The position a consumer confirmed: `confirmed_flush_lsn` of a
    /// logical slot, `restart_lsn` of a physical one.
    pub fn position(&self) -> Option<u64> {
        if self.kind == "logical" { self.confirmed_flush_lsn } else { self.restart_lsn }
    }
}

/// The server's slots.
pub async fn list(client: &Client) -> Result<Vec<ExistingSlot>, SlotError> {
    let rows = client
        .query(
            "SELECT slot_name::text, slot_type, database::text, plugin::text, temporary, active, \
             pg_wal_lsn_diff(restart_lsn, '0/0')::bigint, pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint, \
             catalog_xmin::text FROM pg_replication_slots",
            &[],
        )
        .await?;
    let u = |v: Option<i64>| v.map(|x| x.max(0) as u64);
    Ok(rows
        .iter()
        .map(|r| ExistingSlot {
            name: r.get(0),
            kind: r.get(1),
            database: r.get(2),
            plugin: r.get(3),
            temporary: r.get(4),
            active: r.get(5),
            restart_lsn: u(r.get(6)),
            confirmed_flush_lsn: u(r.get(7)),
            catalog_xmin: r.get::<_, Option<String>>(8).and_then(|s| s.parse().ok()),
        })
        .collect())
}

/// Opens a connection to `database` over the unix socket as the superuser
/// (logical slots are created and advanced from their own database).
pub async fn connect_db(cfg: &Config, database: &str) -> Result<Client, SlotError> {
    Ok(super::sql::connect_db(cfg, database).await?)
}

pub async fn create_physical(client: &Client, name: &str) -> Result<(), SlotError> {
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&name],
        )
        .await?;
    Ok(())
}

/// `client` must be connected to the slot's database.
pub async fn create_logical(client: &Client, name: &str, plugin: &str) -> Result<(), SlotError> {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, $2) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&name, &plugin],
        )
        .await?;
    Ok(())
}

/// Drops an inactive slot; `false` when it was active (or gone).
pub async fn drop_inactive(client: &Client, name: &str) -> Result<bool, SlotError> {
    let dropped = client
        .query_opt(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&name],
        )
        .await?;
    Ok(dropped.is_some())
}

/// `pg_replication_slot_advance` (a logical slot: `client` connected to
/// its database). PostgreSQL clamps the target to what it has flushed or
/// replayed.
pub async fn advance(client: &Client, name: &str, lsn: u64) -> Result<(), SlotError> {
    let target = super::wal::format_lsn(lsn);
    client.execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&name, &target]).await?;
    Ok(())
}

/// `hot_standby_feedback` of the running server.
pub async fn hot_standby_feedback(client: &Client) -> Result<bool, SlotError> {
    let row = client.query_one("SELECT current_setting('hot_standby_feedback')::boolean", &[]).await?;
    Ok(row.get(0))
}

/// A logical slot as read on the primary, with its state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimarySlot {
    pub name: String,
    pub database: String,
    pub plugin: String,
    pub catalog_xmin: Option<u32>,
    pub confirmed_flush_lsn: Option<u64>,
    /// `pg_replslot/<name>/state`.
    pub state: Vec<u8>,
}

/// Runs one query on the primary at `address` (`host:port`) as the
/// superuser through `psql` (libpq: the same TLS as pg_rewind), returning
/// its unaligned rows.
async fn query_primary(
    cfg: &Config,
    bin: &Binaries,
    run_as: &RunAs,
    address: &str,
    password: &Secret,
    sql: &str,
) -> Result<Vec<Vec<String>>, SlotError> {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
    let mut cmd = Command::new(bin.tool("psql"));
    cmd.arg("-X").arg("-A").arg("-t").arg("-q").arg("-F").arg("|").arg("-v").arg("ON_ERROR_STOP=1");
    cmd.arg("-d").arg(format!(
        "host={host} port={port} user={} dbname=postgres sslmode={} connect_timeout=3 \
         options='-c statement_timeout=5000' application_name=tusk",
        cfg.credentials.superuser.name, cfg.credentials.superuser.sslmode
    ));
    cmd.arg("-c").arg(sql);
    run_as.apply(&mut cmd);
    cmd.env("PGPASSWORD", password.expose())
        .current_dir(&cfg.postgres.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| SlotError::Other("query on the primary timed out".into()))?
        .map_err(|e| io("run psql", e))?;
    if !out.status.success() {
        return Err(SlotError::Other(format!(
            "query on the primary failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_owned).collect()).collect())
}

/// The named logical slots on the primary (only if it is one), with their
/// state files (`pg_read_binary_file`, as Patroni reads them).
pub async fn read_primary_slots(
    cfg: &Config,
    bin: &Binaries,
    run_as: &RunAs,
    address: &str,
    password: &Secret,
    names: &[String],
) -> Result<Vec<PrimarySlot>, SlotError> {
    if let Some(bad) = names.iter().find(|n| !valid_slot_name(n)) {
        return Err(SlotError::Name(bad.clone()));
    }
    let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(",");
    let sql = format!(
        "SELECT slot_name, datname, plugin, catalog_xmin, pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint, \
         encode(pg_read_binary_file('pg_replslot/' || slot_name || '/state'), 'hex') \
         FROM pg_replication_slots JOIN pg_database ON datoid = pg_database.oid \
         WHERE NOT pg_is_in_recovery() AND slot_type = 'logical' AND slot_name IN ({list})"
    );
    let rows = query_primary(cfg, bin, run_as, address, password, &sql).await?;
    rows.into_iter()
        .map(|r| {
            let [name, database, plugin, xmin, flush, state] = <[String; 6]>::try_from(r)
                .map_err(|r| SlotError::Other(format!("unexpected row from the primary: {} fields", r.len())))?;
            Ok(PrimarySlot {
                name,
                database,
                plugin,
                catalog_xmin: xmin.parse().ok(),
                confirmed_flush_lsn: flush.parse::<i64>().ok().map(|x| x.max(0) as u64),
                state: unhex(&state).ok_or_else(|| SlotError::Other("bad state file encoding".into()))?,
            })
        })
        .collect()
}

/// `catalog_xmin` of the named slots on the primary (the physical slot a
/// replica streams through and logical slots), for the readiness check.
pub async fn primary_catalog_xmins(
    cfg: &Config,
    bin: &Binaries,
    run_as: &RunAs,
    address: &str,
    password: &Secret,
    names: &[String],
) -> Result<std::collections::BTreeMap<String, Option<u32>>, SlotError> {
    if let Some(bad) = names.iter().find(|n| !valid_slot_name(n)) {
        return Err(SlotError::Name(bad.clone()));
    }
    let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(",");
    let sql = format!(
        "SELECT slot_name, catalog_xmin FROM pg_replication_slots \
         WHERE NOT pg_is_in_recovery() AND slot_name IN ({list})"
    );
    let rows = query_primary(cfg, bin, run_as, address, password, &sql).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let name = r.first()?.clone();
            Some((name, r.get(1).and_then(|x| x.parse().ok())))
        })
        .collect())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Writes copied slot state files into a stopped server's `pg_replslot`
/// (a temporary directory renamed into place, fsynced, owned by postgres),
/// as PostgreSQL's own slot creation leaves them. Nothing is followed
/// through a symbolic link.
pub fn install_slot_files(data: &Path, run_as: &RunAs, slots: &[PrimarySlot]) -> Result<(), SlotError> {
    let dir = data.join("pg_replslot");
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| io(format!("stat {}", dir.display()), e))?;
    if !meta.file_type().is_dir() {
        return Err(SlotError::Other(format!("{} is not a directory", dir.display())));
    }
    for s in slots {
        if !valid_slot_name(&s.name) {
            return Err(SlotError::Name(s.name.clone()));
        }
        let tmp = dir.join(format!("{}.tmp", s.name));
        let fin = dir.join(&s.name);
        remove_any(&tmp)?;
        std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(|e| io(format!("mkdir {}", tmp.display()), e))?;
        run_as.chown(&tmp).map_err(|e| SlotError::Other(e.to_string()))?;
        let file = tmp.join("state");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&file)
            .map_err(|e| io(format!("create {}", file.display()), e))?;
        f.write_all(&s.state).map_err(|e| io(format!("write {}", file.display()), e))?;
        f.sync_all().map_err(|e| io(format!("fsync {}", file.display()), e))?;
        drop(f);
        run_as.chown(&file).map_err(|e| SlotError::Other(e.to_string()))?;
        fsync_dir(&tmp)?;
        remove_any(&fin)?;
        std::fs::rename(&tmp, &fin).map_err(|e| io(format!("rename {}", tmp.display()), e))?;
        std::fs::set_permissions(&fin, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(format!("chmod {}", fin.display()), e))?;
        fsync_dir(&fin)?;
    }
    fsync_dir(&dir)
}

/// Removes a file, a symbolic link or a directory tree (never following a link).
fn remove_any(p: &Path) -> Result<(), SlotError> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("stat {}", p.display()), e)),
        Ok(m) if m.file_type().is_dir() => {
            std::fs::remove_dir_all(p).map_err(|e| io(format!("remove {}", p.display()), e))
        }
        Ok(_) => std::fs::remove_file(p).map_err(|e| io(format!("remove {}", p.display()), e)),
    }
}

fn fsync_dir(p: &Path) -> Result<(), SlotError> {
    std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(|e| io(format!("fsync {}", p.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(valid_slot_name("ls_1"));
        assert!(!valid_slot_name("Ls"));
        assert!(!valid_slot_name("a'b"));
        assert!(!valid_slot_name(""));
        assert!(!valid_slot_name(&"a".repeat(64)));
    }

    #[test]
    fn hex() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
