//! Replication: cloning a replica (pg_basebackup), following a leader
//! (standby.signal + primary_conninfo), promoting, rewinding a former
//! primary, replication slots, and reading the node's own position.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio_postgres::Client;

use super::atomic::write_atomic;
use super::{Binaries, PgError, RunAs};
use crate::config::{Config, Secret};
use crate::patroni::ReplicationState;

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` of the leader's PostgreSQL.
    pub address: String,
    /// Physical slot on the leader (`use_slots`).
    pub slot: Option<String>,
}

/// Patroni's slot name for a member: lower case, `[a-z0-9_]` only.
pub fn slot_name(member: &str) -> String {
    member.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The replication password file `primary_conninfo` points at.
pub fn passfile(cfg: &Config) -> PathBuf {
    cfg.postgres.root.join("replication.pgpass")
}

/// Writes the replication role's password where libpq finds it (0600, postgres).
pub fn write_passfile(cfg: &Config, password: &Secret, run_as: &RunAs) -> Result<(), PgError> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let line = format!("*:*:*:{}:{}\n", esc(&cfg.credentials.replication.name), esc(password.expose()));
    write_atomic(&passfile(cfg), line.as_bytes(), 0o600, run_as)
}

/// `primary_conninfo` for `up`: TLS required unless
/// `PATRONI_REPLICATION_SSLMODE` says otherwise (tusk's pg_hba only allows
/// replication over TLS; a Patroni member's may not offer it).
pub fn conninfo(cfg: &Config, up: &Upstream) -> String {
    let (host, port) = split(&up.address);
    let r = &cfg.credentials.replication;
    format!(
        "host={host} port={port} user={} passfile={} sslmode={} application_name={} connect_timeout=3 keepalives_idle=5 keepalives_interval=2 keepalives_count=3",
        r.name,
        passfile(cfg).display(),
        r.sslmode,
        slot_name(&cfg.name),
    )
}

fn split(address: &str) -> (&str, &str) {
    match address.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (address, "5432"),
    }
}

/// Marks the data directory as a standby (or not).
pub fn set_standby(data: &Path, standby: bool, run_as: &RunAs) -> Result<(), PgError> {
    let signal = data.join("standby.signal");
    if standby {
        if !signal.exists() {
            write_atomic(&signal, b"", 0o600, run_as)?;
        }
    } else if signal.exists() {
        std::fs::remove_file(&signal).map_err(|e| PgError::io(format!("remove {}", signal.display()), e))?;
    }
    Ok(())
}

/// Copies the leader's data directory with pg_basebackup (streaming the WAL
/// it needs), as the replication role over TLS.
pub async fn basebackup(cfg: &Config, bin: &Binaries, run_as: &RunAs, leader: &str) -> Result<(), PgError> {
    let (host, port) = split(leader);
    let started = Instant::now();
    let mut cmd = Command::new(bin.tool("pg_basebackup"));
    cmd.arg("-D").arg(&cfg.postgres.data).args(["-X", "stream", "-c", "fast", "--no-password", "-d"]).arg(format!(
        "host={host} port={port} user={} passfile={} sslmode={} application_name={}",
        cfg.credentials.replication.name,
        passfile(cfg).display(),
        cfg.credentials.replication.sslmode,
        slot_name(&cfg.name)
    ));
    run_tool(cmd, cfg, run_as, "pg_basebackup", &[]).await?;
    tracing::info!(leader, elapsed_ms = started.elapsed().as_millis() as u64, "replica created with pg_basebackup");
    Ok(())
}

/// Rewinds a former primary onto the leader's timeline (pg_rewind runs crash
/// recovery itself first when the node was not shut down cleanly).
pub async fn rewind(
    cfg: &Config,
    bin: &Binaries,
    run_as: &RunAs,
    leader: &str,
    superuser_pw: &Secret,
) -> Result<(), PgError> {
    let (host, port) = split(leader);
    let started = Instant::now();
    let mut cmd = Command::new(bin.tool("pg_rewind"));
    cmd.arg("-D").arg(&cfg.postgres.data).arg("--source-server").arg(format!(
        "host={host} port={port} user={} dbname=postgres sslmode={}",
        cfg.credentials.superuser.name, cfg.credentials.superuser.sslmode
    ));
    // WAL the former primary already recycled (a lagging new leader forked
    // before our last checkpoint) comes from the archive through
    // restore_command (`tusk wal-fetch`, PostgreSQL 13+), as Patroni does.
    if restore_target_wal(cfg, bin) {
        cmd.arg("--restore-target-wal");
    }
    run_tool(cmd, cfg, run_as, "pg_rewind", &[("PGPASSWORD", superuser_pw.expose())]).await?;
    tracing::info!(leader, elapsed_ms = started.elapsed().as_millis() as u64, "pg_rewind done");
    Ok(())
}

/// Whether a failed pg_rewind had begun to change the target (it logs
/// "rewinding from last common checkpoint" before its first write); before
/// that, a failure (the source went away) leaves the data as it was and a
/// later attempt can succeed.
pub fn rewind_touched_target(e: &PgError) -> bool {
    e.to_string().contains("rewinding from last common checkpoint")
}

/// Whether pg_rewind may fetch missing WAL through restore_command.
fn restore_target_wal(cfg: &Config, bin: &Binaries) -> bool {
    cfg.storage.is_some() && bin.version >= 13
}

pub async fn run_tool(
    mut cmd: Command,
    cfg: &Config,
    run_as: &RunAs,
    name: &str,
    secret_env: &[(&str, &str)],
) -> Result<(), PgError> {
    // The whitelisted environment first (it replaces everything), then the secrets.
    run_as.apply(&mut cmd);
    cmd.envs(secret_env.iter().copied())
        .current_dir(&cfg.postgres.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| PgError::io(format!("run {name}"), e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(PgError::Other(format!("{name} failed ({}): {}", out.status, err.trim())));
    }
    Ok(())
}

/// What `pg_controldata` says about a stopped data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlData {
    pub sysid: String,
    /// "in production", "shut down", "shut down in recovery", "in archive recovery", ...
    pub state: String,
    pub timeline: u32,
    /// The settings a hot standby must match or exceed (the primary's, as
    /// last replayed), by parameter name: PostgreSQL aborts recovery when
    /// one is lower ("insufficient parameter settings").
    pub standby_minimums: std::collections::BTreeMap<String, u64>,
}

/// pg_controldata's names of the settings a hot standby must not have lower
/// than its primary, and the parameters they are.
const STANDBY_MINIMUMS: [(&str, &str); 5] = [
    ("max_connections setting", "max_connections"),
    ("max_worker_processes setting", "max_worker_processes"),
    ("max_wal_senders setting", "max_wal_senders"),
    ("max_prepared_xacts setting", "max_prepared_transactions"),
    ("max_locks_per_xact setting", "max_locks_per_transaction"),
];

impl ControlData {
    /// Whether the cluster last ran as a primary.
    pub fn was_primary(&self) -> bool {
        matches!(self.state.as_str(), "in production" | "shut down" | "shutting down")
    }
}

pub async fn controldata(bin: &Binaries, data: &Path) -> Result<ControlData, PgError> {
    let out = Command::new(bin.tool("pg_controldata"))
        .arg(data)
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(|e| PgError::io("pg_controldata", e))?;
    if !out.status.success() {
        return Err(PgError::Other(format!("pg_controldata failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
    };
    Ok(ControlData {
        sysid: field("Database system identifier").unwrap_or_default(),
        state: field("Database cluster state").unwrap_or_default(),
        timeline: field("Latest checkpoint's TimeLineID").and_then(|t| t.parse().ok()).unwrap_or(0),
        standby_minimums: STANDBY_MINIMUMS
            .iter()
            .filter_map(|(label, param)| Some(((*param).to_owned(), field(label)?.parse().ok()?)))
            .collect(),
    })
}

/// The running node's role and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub in_recovery: bool,
    /// Primary: flush LSN; replica: max(receive, replay).
    pub wal: u64,
    pub receive: Option<u64>,
    pub replay: Option<u64>,
    pub timeline: u32,
    /// A replica's WAL receiver is streaming.
    pub streaming: bool,
}

impl Position {
    /// A replica's `replication_state` in Patroni's words; `None` on a primary.
    pub fn replication_state(&self) -> Option<ReplicationState> {
        self.in_recovery.then_some(if self.streaming {
            ReplicationState::Streaming
        } else {
            ReplicationState::InArchiveRecovery
        })
    }
}

/// A primary's streaming standbys (`application_name`, reported `sync` or
/// `quorum`, flush position) and its own flush position.
pub async fn standbys(client: &Client) -> Result<(Vec<(String, bool, u64)>, u64), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT application_name, sync_state IN ('sync', 'quorum'),
                    COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0'), 0)::bigint
               FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await?;
    let lsn: i64 =
        client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint", &[]).await?.get(0);
    let standbys = rows
        .iter()
        .map(|r| {
            (r.get::<_, String>(0), r.get::<_, Option<bool>>(1).unwrap_or(false), r.get::<_, i64>(2).max(0) as u64)
        })
        .collect();
    Ok((standbys, lsn.max(0) as u64))
}

pub async fn position(client: &Client) -> Result<Position, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint END,
                    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
                    pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
                    CASE WHEN pg_is_in_recovery()
                         THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                                       (SELECT timeline_id FROM pg_control_checkpoint()))
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
                    COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)",
            &[],
        )
        .await?;
    let in_recovery: bool = row.get(0);
    let flush: Option<i64> = row.get(1);
    let receive: Option<i64> = row.get(2);
    let replay: Option<i64> = row.get(3);
    let timeline: i32 = row.get(4);
    let u = |v: Option<i64>| v.map(|x| x.max(0) as u64);
    let wal = if in_recovery { u(receive).max(u(replay)).unwrap_or(0) } else { u(flush).unwrap_or(0) };
    Ok(Position {
        in_recovery,
        wal,
        receive: u(receive),
        replay: u(replay),
        timeline: timeline.max(0) as u32,
        streaming: row.get(5),
    })
}

/// The timeline a running standby has replayed up to, which no SQL
/// function gives (`received_tli` is the walreceiver's, the control file's
/// lags until the next restartpoint): `IDENTIFY_SYSTEM` over a local
/// replication connection as the replication user, which on a standby
/// answers the replay timeline (Patroni asks the same). `None` when it
/// cannot be asked (a `pg_hba` without the local replication line).
pub async fn replay_timeline(cfg: &Config, bin: &Binaries, run_as: &RunAs) -> Option<u32> {
    let mut cmd = Command::new(bin.tool("psql"));
    cmd.args(["-X", "-w", "-A", "-t", "-q", "-F", "|", "-d"]).arg(format!(
        "host={} port={} user={} dbname=replication replication=true connect_timeout=3 application_name=tusk",
        cfg.postgres.socket_dir.display(),
        cfg.postgres.port,
        cfg.credentials.replication.name
    ));
    cmd.args(["-c", "IDENTIFY_SYSTEM"]);
    run_as.apply(&mut cmd);
    cmd.current_dir(&cfg.postgres.root).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(5), cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => out,
        Ok(Ok(out)) => {
            tracing::debug!(stderr = %String::from_utf8_lossy(&out.stderr).trim(), "IDENTIFY_SYSTEM failed");
            return None;
        }
        _ => return None,
    };
    parse_identify_system(&String::from_utf8_lossy(&out.stdout))
}

/// The timeline of `IDENTIFY_SYSTEM`'s row (`systemid|timeline|xlogpos|dbname`).
fn parse_identify_system(text: &str) -> Option<u32> {
    text.lines().find(|l| !l.is_empty())?.split('|').nth(1)?.trim().parse().ok()
}

pub async fn system_identifier(client: &Client) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await?;
    Ok(row.get(0))
}

/// Promotes a replica and waits until it accepts writes.
pub async fn promote(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.query_one("SELECT pg_promote(true, 30)", &[]).await?;
    Ok(())
}

/// Waits (bounded) until some replica has received `lsn`.
pub async fn wait_replica_received(client: &Client, lsn: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let row = client
            .query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE pg_wal_lsn_diff(flush_lsn, '0/0')::bigint >= $1",
                &[&(lsn as i64)],
            )
            .await;
        if matches!(row, Ok(Some(_))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_system_row() {
        assert_eq!(parse_identify_system("7446541118227226906|3|0/400C740|\n"), Some(3));
        assert_eq!(parse_identify_system(""), None);
        assert_eq!(parse_identify_system("x|y|z|"), None);
    }

    #[test]
    fn a_rewind_that_never_wrote_can_be_tried_again() {
        let before = PgError::Other(
            "pg_rewind failed (exit status: 1): pg_rewind: error: could not connect to server: Connection refused"
                .into(),
        );
        let during = PgError::Other(
            "pg_rewind failed (exit status: 1): pg_rewind: servers diverged at WAL location 0/4047720 on timeline 9\n\
             pg_rewind: rewinding from last common checkpoint at 0/4042B30 on timeline 9\n\
             pg_rewind: error: unexpected result while fetching remote files"
                .into(),
        );
        assert!(!rewind_touched_target(&before));
        assert!(rewind_touched_target(&during));
    }

    #[test]
    fn slot_names_are_patronis() {
        assert_eq!(slot_name("Node-1.example"), "node_1_example");
    }

    #[test]
    fn controldata_roles() {
        let c = |s: &str| ControlData { state: s.into(), ..Default::default() };
        assert!(c("in production").was_primary());
        assert!(c("shut down").was_primary());
        assert!(!c("shut down in recovery").was_primary());
        assert!(!c("in archive recovery").was_primary());
    }
}
