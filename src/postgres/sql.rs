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
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(&cfg.postgres.socket_dir)
        .port(cfg.postgres.port)
        .user(&cfg.credentials.superuser.name)
        .dbname("postgres")
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
    let pid_file = cfg.postgres.data.join("postmaster.pid");
    loop {
        let status =
            std::fs::read_to_string(&pid_file).ok().and_then(|s| s.lines().nth(7).map(|l| l.trim().to_owned()));
        if matches!(status.as_deref(), Some("ready") | Some("standby")) {
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
