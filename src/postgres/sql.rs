//! SQL over the local unix socket with tokio-postgres: readiness, roles,
//! CHECKPOINT.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::passwords::Passwords;
use crate::config::Config;

/// Opens a connection over the unix socket as the superuser (`local all all
/// trust`); the connection task runs in the background.
pub async fn connect(cfg: &Config) -> Result<Client, tokio_postgres::Error> {
    connect_db(cfg, "postgres").await
}

/// As [`connect`], to `database`.
pub async fn connect_db(cfg: &Config, database: &str) -> Result<Client, tokio_postgres::Error> {
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(&cfg.postgres.socket_dir)
        .port(cfg.postgres.port)
        .user(&cfg.credentials.superuser.name)
        .dbname(database)
        .application_name("tusk")
        .connect_timeout(Duration::from_secs(2));
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Whether a connection error means "not ready yet, try again".
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => *code == SqlState::CANNOT_CONNECT_NOW,
        // no socket yet, connection refused or reset during startup
        None => true,
    }
}

/// Waits until postgres accepts connections and returns a connection. It
/// watches the status postgres writes into `postmaster.pid` (`ready`,
/// `standby`) before connecting, so no connection is refused and logged
/// while it starts. Logs progress every 10 s (crash recovery can take long).
/// Fails on an error that retrying cannot fix (a missing role, say).
pub async fn wait_ready(cfg: &Config) -> Result<Client, tokio_postgres::Error> {
    let started = Instant::now();
    let mut next_report = Duration::from_secs(10);
    loop {
        let pid_file = super::pidfile::read(&cfg.postgres.data);
        let status = pid_file.as_ref().and_then(|f| f.status.clone());
        if pid_file.is_some_and(|f| f.accepts_connections()) {
            match connect(cfg).await {
                Ok(c) => return Ok(c),
                Err(e) if retryable(&e) => tracing::debug!(error = %e, "not ready yet"),
                Err(e) => return Err(e),
            }
        }
        if started.elapsed() >= next_report {
            tracing::info!(
                waited_s = started.elapsed().as_secs(),
                status = status.as_deref().unwrap_or("no postmaster.pid yet"),
                "still waiting for PostgreSQL to accept connections"
            );
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates or updates the three roles with their passwords. Passwords are
/// sent as SCRAM verifiers (never in clear) with statement logging off for
/// the session, so they cannot end up in the log.
pub async fn ensure_roles(client: &Client, cfg: &Config, pw: &Passwords) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "SET log_statement = 'none'; SET log_min_duration_statement = -1; SET log_min_error_statement = 'panic'",
        )
        .await?;
    let creds = &cfg.credentials;
    let roles = [
        (&creds.superuser.name, &pw.superuser, "SUPERUSER LOGIN"),
        (&creds.replication.name, &pw.replication, "LOGIN REPLICATION"),
        (&creds.admin.name, &pw.admin, "LOGIN CREATEDB CREATEROLE"),
    ];
    for (name, password, attrs) in roles {
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        let exists = client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name]).await?.is_some();
        let verb = if exists { "ALTER" } else { "CREATE" };
        // A SCRAM verifier is base64 and "$:" only; no quoting issue.
        client.batch_execute(&format!("{verb} ROLE {} WITH {attrs} PASSWORD '{verifier}'", ident(name))).await?;
    }
    Ok(())
}

/// A CHECKPOINT before a fast shutdown, so that the shutdown checkpoint has
/// little left to write.
pub async fn checkpoint(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("CHECKPOINT").await
}

#[cfg(test)]
mod tests {
    #[test]
    fn ident_quotes() {
        assert_eq!(super::ident("a\"b"), "\"a\"\"b\"");
    }
}

/// What the REST API shows beyond the WAL position: start time, replay
/// details, pending restarts, a primary's replicas.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// "2024-08-28 19:39:26.352526+00:00"
    pub postmaster_start_time: Option<String>,
    pub server_version: Option<u32>,
    pub replayed_timestamp: Option<String>,
    pub replay_paused: Option<bool>,
    /// (parameter, running value, value in the files).
    pub pending_restart: Vec<(String, String, String)>,
    pub replication: Vec<crate::patroni::Replication>,
}

pub async fn details(client: &Client) -> Result<Details, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US\"+00:00\"'),
                    current_setting('server_version_num')::int,
                    pg_is_in_recovery(),
                    CASE WHEN pg_is_in_recovery() THEN
                         to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US\"+00:00\"') END,
                    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END",
            &[],
        )
        .await?;
    let in_recovery: bool = row.get(2);
    let version: i32 = row.get(1);
    let mut d = Details {
        postmaster_start_time: row.get(0),
        server_version: u32::try_from(version).ok(),
        replayed_timestamp: row.get(3),
        replay_paused: row.get(4),
        ..Default::default()
    };
    for r in client
        .query(
            "SELECT s.name, s.setting,
                    COALESCE((SELECT f.setting FROM pg_file_settings f WHERE f.name = s.name
                              ORDER BY f.seqno DESC LIMIT 1), '')
               FROM pg_settings s WHERE s.pending_restart ORDER BY 1",
            &[],
        )
        .await?
    {
        d.pending_restart.push((r.get(0), r.get(1), r.get(2)));
    }
    if !in_recovery {
        for r in client
            .query(
                "SELECT usename::text, application_name, host(client_addr), state, sync_state, sync_priority,
                        pg_wal_lsn_diff(pg_current_wal_flush_lsn(), replay_lsn)::bigint
                   FROM pg_stat_replication WHERE state IS NOT NULL ORDER BY application_name",
                &[],
            )
            .await?
        {
            let lag: Option<i64> = r.get(6);
            d.replication.push(crate::patroni::Replication {
                usename: r.get::<_, Option<String>>(0).unwrap_or_default(),
                application_name: r.get(1),
                client_addr: r.get(2),
                state: r.get(3),
                sync_state: r.get(4),
                sync_priority: r.get(5),
                lag_bytes: lag.map(|l| l.max(0) as u64),
            });
        }
    }
    Ok(d)
}
