//! Configuration: the environment (Spilo's and Patroni's names) parsed and
//! validated once into typed structs, before anything is started or written.
//!
//! [`Config::from_map`] is the single entry point; production passes the
//! process environment, tests pass a map. A bad value gives a
//! [`ConfigError`] that names the variable; the binary exits with 78.

mod api;
pub mod backup;
pub mod clone;
pub mod cron;
mod etcd;
pub mod host;
mod parse;
mod secret;
mod spilo;
pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use api::{ApiConfig, ApiTls, BasicAuth, VerifyClient};
pub use etcd::{EtcdConfig, EtcdEndpoint, EtcdProtocol};
pub use host::HostFacts;
pub use secret::Secret;
pub use spilo::{CALLBACK_ACTIONS, ReplicaMethod};
pub use storage::{Compression, StorageConfig};

pub(crate) use parse::MANAGED_PARAMETERS;
use parse::*;

/// A bad environment variable: `var` names it, `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { var: var.into(), message: message.into() }
    }
}

/// Major versions of PostgreSQL tusk knows how to run.
pub const SUPPORTED_PG_VERSIONS: std::ops::RangeInclusive<u32> = 14..=18;

/// The whole, validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Cluster name (`SCOPE` / `PATRONI_SCOPE`).
    pub scope: String,
    /// DCS namespace (`NAMESPACE` / `PATRONI_NAMESPACE`), default `service`.
    pub namespace: String,
    /// Member name (`PATRONI_NAME`, else the host name).
    pub name: String,
    pub postgres: PostgresConfig,
    pub api: ApiConfig,
    pub credentials: Credentials,
    pub tls: PgTls,
    /// `None`: standalone mode (no DCS variable set).
    pub etcd: Option<EtcdConfig>,
    /// `TUSK_BOOTSTRAP_DCS`: the dynamic configuration the bootstrapping member
    /// writes to the `config` key (Patroni's `bootstrap.dcs`).
    pub bootstrap_dcs: crate::patroni::DynamicConfig,
    pub tusk: TuskConfig,
    /// WAL archive in S3; `None`: archiving is a no-op (`WAL_S3_BUCKET`, `WALG_S3_PREFIX`).
    pub storage: Option<StorageConfig>,
    /// `CLONE_METHOD` and friends: bootstrap from another cluster instead of initdb.
    pub clone: Option<clone::CloneConfig>,
    /// `STANDBY_HOST` / `STANDBY_SCOPE`: a standby cluster of another one.
    pub standby: Option<clone::StandbyConfig>,
    /// Patroni's callbacks: `CALLBACK_SCRIPT` (`on_start`, `on_stop` and
    /// `on_role_change`, as Spilo sets them), then `SPILO_CONFIGURATION`'s
    /// `postgresql.callbacks`.
    pub callbacks: Option<CallbackConfig>,
    /// Patroni's member tags this member announces (`TUSK_NOFAILOVER`,
    /// `TUSK_NOLOADBALANCE`, `TUSK_NOSYNC`, `TUSK_CLONEFROM`,
    /// `TUSK_FAILOVER_PRIORITY`, `SPILO_CONFIGURATION`'s `tags`): in its
    /// member key and `/patroni`.
    pub tags: BTreeMap<String, serde_json::Value>,
    /// What was read but ignored, for the start-up log (never a secret).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The callback commands and what they run with.
#[derive(Debug, Clone, Serialize)]
pub struct CallbackConfig {
    /// Action (`on_start`, ... [`CALLBACK_ACTIONS`]) → the command as words
    /// (shell quoting honoured, no shell); Patroni's arguments
    /// (`<action> <role> <scope>`) are appended.
    pub commands: BTreeMap<String, Vec<String>>,
    /// postgres's environment plus `AWS_*` and `EIP_ALLOCATION` (what
    /// Spilo's AWS callbacks read); never serialized.
    #[serde(skip)]
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresConfig {
    /// Requested major version (`PGVERSION`); an existing `PGDATA/PG_VERSION` wins.
    pub version: u32,
    pub home: PathBuf,
    pub root: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    /// `host:port` other members and clients use (`PG_CONNECT_ADDRESS`).
    pub connect_address: String,
    /// Directory of the unix socket (`TUSK_SOCKET_DIR`).
    pub socket_dir: PathBuf,
    /// `INITDB_LOCALE`, used only by initdb.
    pub initdb_locale: String,
    /// More initdb options (`SPILO_CONFIGURATION`'s `bootstrap.initdb`).
    pub initdb_options: Vec<String>,
    /// Parameters derived from the memory limit, then `TUSK_PG_PARAMETERS`,
    /// then `SPILO_CONFIGURATION`'s `postgresql.parameters`.
    pub parameters: BTreeMap<String, String>,
    /// `postgresql.pg_hba` (`SPILO_CONFIGURATION`): `pg_hba.conf`'s lines
    /// instead of tusk's (and of the dynamic configuration's).
    pub pg_hba: Option<Vec<String>>,
    /// How a new replica gets its data, in order of preference
    /// (`postgresql.create_replica_methods`; default: the bucket's latest
    /// base backup when there is a bucket, then `pg_basebackup`).
    pub replica_methods: Vec<ReplicaMethod>,
    /// `postgresql.remove_data_directory_on_rewind_failure` set locally
    /// (`SPILO_CONFIGURATION`); it wins over the dynamic configuration's.
    pub remove_data_on_rewind_failure: Option<bool>,
    /// What postgres's children inherit from tusk's environment: `PATH`
    /// (or a default), `TZ`, `LANG`, `LC_*`. Read here, once, so nothing
    /// reads the process environment later.
    #[serde(skip)]
    pub inherited_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Credentials {
    pub superuser: Role,
    pub replication: Role,
    pub admin: Role,
}

/// A database role; `password: None` means "not given": standalone mode
/// generates one and keeps it under `PGROOT`.
#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub name: String,
    pub password: Option<Secret>,
    /// libpq `sslmode` of tusk's connections as this role to another member
    /// (replication and clones; pg_rewind as the superuser):
    /// `PATRONI_REPLICATION_SSLMODE` / `PATRONI_SUPERUSER_SSLMODE`,
    /// default `require`.
    pub sslmode: String,
}

/// libpq's `sslmode` values.
const SSLMODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// TLS for PostgreSQL's own listener.
#[derive(Debug, Clone, Serialize)]
pub struct PgTls {
    /// `ALLOW_NOSSL`: accept plain-text TCP connections.
    pub allow_nossl: bool,
    /// Server certificate and key; `None`: tusk generates a self-signed pair.
    pub server: Option<CertAndKey>,
    pub ca: Option<Pem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertAndKey {
    pub cert: Pem,
    pub key: Pem,
}

/// PEM material, from a file (re-read on SIGHUP) or inline from the environment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pem {
    File(PathBuf),
    Inline(Secret),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuskConfig {
    /// `TUSK_SHUTDOWN_TIMEOUT`: the whole stop budget, below the platform's grace period.
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `NOTIFY_SOCKET`: systemd/podman readiness notification.
    pub notify_socket: Option<String>,
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// Every variable tusk reads, as envy sees them (lower-cased names). All
/// strings: typing and validation happen in [`Config::from_map`], so that
/// every error can name its variable.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawEnv {
    pub scope: Option<String>,
    pub patroni_scope: Option<String>,
    pub namespace: Option<String>,
    pub patroni_namespace: Option<String>,
    pub patroni_name: Option<String>,
    pub pgversion: Option<String>,
    pub pghome: Option<String>,
    pub pgroot: Option<String>,
    pub pgdata: Option<String>,
    pub pgport: Option<String>,
    pub apiport: Option<String>,
    pub pg_connect_address: Option<String>,
    pub restapi_connect_address: Option<String>,
    pub initdb_locale: Option<String>,

    pub pguser_superuser: Option<String>,
    pub pgpassword_superuser: Option<String>,
    pub pgpassword_superuser_file: Option<String>,
    pub pguser_standby: Option<String>,
    pub pgpassword_standby: Option<String>,
    pub pgpassword_standby_file: Option<String>,
    pub pguser_admin: Option<String>,
    pub pgpassword_admin: Option<String>,
    pub pgpassword_admin_file: Option<String>,

    pub allow_nossl: Option<String>,
    pub ssl_certificate: Option<String>,
    pub ssl_certificate_file: Option<String>,
    pub ssl_private_key: Option<String>,
    pub ssl_private_key_file: Option<String>,
    pub ssl_ca: Option<String>,
    pub ssl_ca_file: Option<String>,

    pub etcd3_hosts: Option<String>,
    pub etcd3_host: Option<String>,
    pub etcd3_protocol: Option<String>,
    pub etcd3_cacert: Option<String>,
    pub etcd3_cert: Option<String>,
    pub etcd3_key: Option<String>,
    pub etcd3_username: Option<String>,
    pub etcd3_password: Option<String>,
    pub etcd3_password_file: Option<String>,
    pub patroni_etcd3_hosts: Option<String>,
    pub patroni_etcd3_host: Option<String>,
    pub patroni_etcd3_protocol: Option<String>,
    pub patroni_etcd3_cacert: Option<String>,
    pub patroni_etcd3_cert: Option<String>,
    pub patroni_etcd3_key: Option<String>,
    pub patroni_etcd3_username: Option<String>,
    pub patroni_etcd3_password: Option<String>,
    pub etcd_host: Option<String>,
    pub etcd_hosts: Option<String>,
    pub etcd_url: Option<String>,
    pub patroni_postgresql_data_dir: Option<String>,
    pub patroni_postgresql_connect_address: Option<String>,
    pub patroni_postgresql_listen: Option<String>,
    pub patroni_restapi_connect_address: Option<String>,
    pub patroni_restapi_listen: Option<String>,

    pub tusk_shutdown_timeout: Option<String>,
    pub tusk_log_format: Option<String>,
    pub tusk_log_level: Option<String>,
    pub tusk_pg_parameters: Option<String>,
    pub tusk_socket_dir: Option<String>,
    pub tusk_bootstrap_dcs: Option<String>,
    pub callback_script: Option<String>,
    pub tusk_nofailover: Option<String>,
    pub tusk_nosync: Option<String>,
    pub tusk_clonefrom: Option<String>,
    pub tusk_replicatefrom: Option<String>,
    pub tusk_failover_priority: Option<String>,
    pub tusk_noloadbalance: Option<String>,
    pub notify_socket: Option<String>,

    pub wal_s3_bucket: Option<String>,
    pub wal_bucket_scope_prefix: Option<String>,
    pub wal_bucket_scope_suffix: Option<String>,
    pub walg_s3_prefix: Option<String>,
    pub wale_s3_prefix: Option<String>,
    pub aws_region: Option<String>,
    pub aws_endpoint: Option<String>,
    pub wale_s3_endpoint: Option<String>,
    pub aws_s3_force_path_style: Option<String>,
    pub walg_s3_ca_cert_file: Option<String>,
    pub walg_s3_sse: Option<String>,
    pub walg_s3_sse_kms_id: Option<String>,
    pub walg_compression_method: Option<String>,
    pub walg_upload_concurrency: Option<String>,
    pub walg_download_concurrency: Option<String>,
    pub walg_prevent_wal_overwrite: Option<String>,
    pub walg_backup_compression_method: Option<String>,
    pub walg_tar_size_threshold: Option<String>,
    pub walg_verify_page_checksums: Option<String>,
    pub walg_upload_disk_concurrency: Option<String>,
    pub walg_disk_rate_limit: Option<String>,
    pub backup_schedule: Option<String>,
    pub backup_num_to_retain: Option<String>,
    pub wale_backup_threshold_megabytes: Option<String>,
    pub wale_backup_threshold_percentage: Option<String>,
}

impl Config {
    /// Parses the process environment on the real host.
    pub fn from_process_env() -> Result<Config, ConfigError> {
        Config::from_map(&process_env()?, &HostFacts::detect())
    }

    /// Parses and validates `env`. Reads the files that `*_FILE` variables
    /// and certificate variables name; writes nothing.
    pub fn from_map(env: &BTreeMap<String, String>, host: &HostFacts) -> Result<Config, ConfigError> {
        // SPILO_CONFIGURATION first: its keys replace variables.
        let (env, spilo) = spilo::apply(env)?;
        let env = &env;
        // Empty values count as unset, as in Spilo's templates.
        // All fields are optional strings, so envy cannot fail here.
        let mut raw = raw_best_effort(env);
        let admin_name = env.get("PGUSER_ADMIN").filter(|v| !v.is_empty()).map_or("admin", String::as_str);
        let mut warnings = patroni_variables(env, admin_name)?;
        warnings.extend(spilo.warnings.iter().cloned());
        // Patroni's names for what Spilo's variables say.
        raw.pgdata = alias("PGDATA", &raw.pgdata, "PATRONI_POSTGRESQL_DATA_DIR", &raw.patroni_postgresql_data_dir)?;
        raw.pg_connect_address = alias(
            "PG_CONNECT_ADDRESS",
            &raw.pg_connect_address,
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS",
            &raw.patroni_postgresql_connect_address,
        )?;
        raw.restapi_connect_address = alias(
            "RESTAPI_CONNECT_ADDRESS",
            &raw.restapi_connect_address,
            "PATRONI_RESTAPI_CONNECT_ADDRESS",
            &raw.patroni_restapi_connect_address,
        )?;
        let listen_port = |var: &str, v: &Option<String>, w: &mut Vec<String>| -> Result<Option<String>, ConfigError> {
            let Some(v) = v else { return Ok(None) };
            let (host, port) = split_host_port(v.trim())
                .filter(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0))
                .ok_or_else(|| ConfigError::new(var, format!("{v:?} is not host:port")))?;
            if !["", "*", "0.0.0.0", "::", "[::]"].contains(&host) {
                w.push(format!("{var}: tusk listens on all addresses; only the port ({port}) of {v:?} is used"));
            }
            Ok(Some(port.to_owned()))
        };
        let pg_listen = listen_port("PATRONI_POSTGRESQL_LISTEN", &raw.patroni_postgresql_listen, &mut warnings)?;
        raw.pgport = alias("PGPORT", &raw.pgport, "PATRONI_POSTGRESQL_LISTEN", &pg_listen)?;
        let api_listen = listen_port("PATRONI_RESTAPI_LISTEN", &raw.patroni_restapi_listen, &mut warnings)?;
        raw.apiport = alias("APIPORT", &raw.apiport, "PATRONI_RESTAPI_LISTEN", &api_listen)?;

        let scope =
            alias("SCOPE", &raw.scope, "PATRONI_SCOPE", &raw.patroni_scope)?.unwrap_or_else(|| "dummy".to_owned());
        validate_name("SCOPE", &scope)?;
        let namespace = alias("NAMESPACE", &raw.namespace, "PATRONI_NAMESPACE", &raw.patroni_namespace)?
            .map(|n| n.trim_matches('/').to_owned())
            .unwrap_or_else(|| "service".to_owned());
        validate_name("NAMESPACE", &namespace)?;
        let name = raw.patroni_name.clone().unwrap_or_else(|| host.hostname.clone());
        validate_name("PATRONI_NAME", &name)?;

        let version = parse_pg_version(raw.pgversion.as_deref())?;
        let (home, root, data) = paths(&raw)?;
        let socket_dir =
            abs_path("TUSK_SOCKET_DIR", raw.tusk_socket_dir.as_deref())?.unwrap_or_else(|| "/run/postgresql".into());
        // "<dir>/.s.PGSQL.<port>" must fit in sun_path (108 bytes).
        if socket_dir.as_os_str().len() + 17 > 107 {
            return Err(ConfigError::new("TUSK_SOCKET_DIR", "path too long for a unix socket (max 90 bytes)"));
        }
        let pg_port = parse_port("PGPORT", raw.pgport.as_deref(), 5432)?;
        let api_port = parse_port("APIPORT", raw.apiport.as_deref(), 8008)?;
        if pg_port == api_port {
            return Err(ConfigError::new("APIPORT", format!("same port as PGPORT ({pg_port})")));
        }
        let pg_connect =
            connect_address("PG_CONNECT_ADDRESS", raw.pg_connect_address.as_deref(), host.address, pg_port)?;
        let api_connect =
            connect_address("RESTAPI_CONNECT_ADDRESS", raw.restapi_connect_address.as_deref(), host.address, api_port)?;
        let api = api::parse(env, api_port, api_connect)?;
        let initdb_locale = match raw.initdb_locale.as_deref() {
            None => "C.UTF-8".to_owned(),
            Some(l) if l.contains('.') => l.to_owned(),
            Some(l) => format!("{l}.UTF-8"),
        };
        if !initdb_locale.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) {
            return Err(ConfigError::new("INITDB_LOCALE", format!("{initdb_locale:?} is not a locale name")));
        }

        let credentials = Credentials {
            superuser: role(env, ("PGUSER_SUPERUSER", "PGPASSWORD_SUPERUSER"), "postgres", Some("PATRONI_SUPERUSER"))?,
            replication: role(env, ("PGUSER_STANDBY", "PGPASSWORD_STANDBY"), "standby", Some("PATRONI_REPLICATION"))?,
            admin: admin_role(env)?,
        };
        let names = [&credentials.superuser.name, &credentials.replication.name, &credentials.admin.name];
        if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
            return Err(ConfigError::new(
                "PGUSER_STANDBY",
                "PGUSER_SUPERUSER, PGUSER_STANDBY and PGUSER_ADMIN must be three different roles",
            ));
        }

        let tls = pg_tls(&raw)?;
        let etcd = etcd::parse(&raw)?;
        if etcd.is_some() {
            // Spilo prefers ETCD3_* too: env files often carry both.
            for (var, v) in
                [("ETCD_HOST", &raw.etcd_host), ("ETCD_HOSTS", &raw.etcd_hosts), ("ETCD_URL", &raw.etcd_url)]
            {
                if v.is_some() {
                    warnings.push(format!("{var} is ignored: the etcd v3 settings (ETCD3_*) are used"));
                }
            }
        } else if raw.etcd_host.is_some() || raw.etcd_hosts.is_some() || raw.etcd_url.is_some() {
            let var = if raw.etcd_host.is_some() {
                "ETCD_HOST"
            } else if raw.etcd_hosts.is_some() {
                "ETCD_HOSTS"
            } else {
                "ETCD_URL"
            };
            return Err(ConfigError::new(
                var,
                "the etcd v2 API is not supported; use ETCD3_HOSTS (etcd v3, as Patroni's etcd3 section)",
            ));
        }

        // Generated passwords may be shared only through an etcd that
        // authenticates its clients; over an open one they must be given.
        if let Some(e) = &etcd
            && !e.authenticates_clients()
        {
            let required =
                [("PGPASSWORD_SUPERUSER", &credentials.superuser), ("PGPASSWORD_STANDBY", &credentials.replication)];
            for (var, role) in required {
                if role.password.is_none() {
                    return Err(ConfigError::new(
                        var,
                        "required in HA mode when etcd does not authenticate its clients (no ETCD3_CERT client \
                         certificate, no ETCD3_USERNAME): a generated password would be shared through etcd, \
                         readable by anyone who can reach it",
                    ));
                }
            }
        }

        let bootstrap_dcs = bootstrap_dcs(raw.tusk_bootstrap_dcs.as_deref(), spilo.bootstrap_dcs.as_ref())?;
        let parameters = pg_parameters(raw.tusk_pg_parameters.as_deref(), &spilo.parameters, host.memory_bytes)?;
        let shutdown_timeout =
            parse_duration("TUSK_SHUTDOWN_TIMEOUT", raw.tusk_shutdown_timeout.as_deref(), Duration::from_secs(8))?;
        if shutdown_timeout < Duration::from_secs(2) || shutdown_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new("TUSK_SHUTDOWN_TIMEOUT", "must be between 2s and 3600s"));
        }
        let storage = storage::parse(env, &raw, &scope, version)?;
        let clone = clone::parse(env, storage.as_ref(), version)?;
        let standby = clone::parse_standby(env, storage.as_ref(), version)?;
        let mut bootstrap_dcs = bootstrap_dcs;
        if let Some(sb) = &standby {
            if etcd.is_none() {
                let var = if sb.host.is_some() { "STANDBY_HOST" } else { "STANDBY_SCOPE" };
                return Err(ConfigError::new(var, "a standby cluster needs HA mode (ETCD3_HOSTS)"));
            }
            if clone.is_some() {
                return Err(ConfigError::new("CLONE_METHOD", "a standby cluster (STANDBY_*) cannot also be a clone"));
            }
            bootstrap_dcs.standby_cluster = Some(crate::patroni::StandbyCluster {
                host: sb.host.clone(),
                port: sb.host.as_ref().map(|_| serde_json::json!(sb.port)),
                primary_slot_name: sb.primary_slot_name.clone(),
                restore_command: None,
                other: Default::default(),
            });
        }
        let callbacks = callbacks(env, raw.callback_script.as_deref(), &spilo.callbacks)?;
        let mut tags = BTreeMap::new();
        for (var, tag, v) in [
            ("TUSK_NOFAILOVER", "nofailover", &raw.tusk_nofailover),
            ("TUSK_NOLOADBALANCE", "noloadbalance", &raw.tusk_noloadbalance),
            ("TUSK_NOSYNC", "nosync", &raw.tusk_nosync),
            ("TUSK_CLONEFROM", "clonefrom", &raw.tusk_clonefrom),
        ] {
            if parse_bool(var, v.as_deref())?.unwrap_or(false) {
                tags.insert(tag.to_owned(), serde_json::Value::Bool(true));
            }
        }
        if let Some(from) = raw.tusk_replicatefrom.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
            tags.insert("replicatefrom".to_owned(), serde_json::json!(from));
        }
        if let Some(p) = raw.tusk_failover_priority.as_deref() {
            let p: u64 = p.trim().parse().map_err(|_| {
                ConfigError::new(
                    "TUSK_FAILOVER_PRIORITY",
                    format!("{p:?} is not a number (0: never a failover target)"),
                )
            })?;
            tags.insert("failover_priority".to_owned(), serde_json::json!(p));
        }
        tags.extend(spilo.tags.clone());
        let replica_methods = spilo.replica_methods.clone().unwrap_or_else(|| {
            if storage.is_some() {
                vec![ReplicaMethod::Backup, ReplicaMethod::Basebackup]
            } else {
                vec![ReplicaMethod::Basebackup]
            }
        });
        if replica_methods == [ReplicaMethod::Backup] && storage.is_none() {
            return Err(ConfigError::new(
                spilo::VAR,
                "postgresql.create_replica_methods names only a backup method, and no bucket is set (WAL_S3_BUCKET)",
            ));
        }
        let log_format = parse_log_format(raw.tusk_log_format.as_deref())?;
        let log_level = raw.tusk_log_level.clone().unwrap_or_else(|| "info".to_owned());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| ConfigError::new("TUSK_LOG_LEVEL", format!("{log_level:?}: {e}")))?;

        Ok(Config {
            scope,
            namespace,
            name,
            postgres: PostgresConfig {
                version,
                home,
                root,
                data,
                port: pg_port,
                connect_address: pg_connect,
                socket_dir,
                initdb_locale,
                initdb_options: spilo.initdb.clone(),
                parameters,
                pg_hba: spilo.pg_hba.clone(),
                replica_methods,
                remove_data_on_rewind_failure: spilo.remove_data_on_rewind_failure,
                inherited_env: inherited_env(env),
            },
            api,
            credentials,
            tls,
            etcd,
            bootstrap_dcs,
            tusk: TuskConfig { shutdown_timeout, log_format, log_level, notify_socket: raw.notify_socket.clone() },
            storage,
            clone,
            standby,
            callbacks,
            tags,
            warnings,
        })
    }

    /// The configuration as `tusk config` prints it: JSON, secrets redacted.
    pub fn to_redacted_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("Config serializes: only strings, numbers and maps")
    }

    /// Standalone mode: no DCS, one primary, no HA.
    pub fn standalone(&self) -> bool {
        self.etcd.is_none()
    }

    /// Generated role passwords may be shared through etcd: it
    /// authenticates its clients (a client certificate or a user).
    pub fn shares_passwords(&self) -> bool {
        self.etcd.as_ref().is_some_and(EtcdConfig::authenticates_clients)
    }
}

/// The bootstrap's dynamic configuration: `TUSK_BOOTSTRAP_DCS` (JSON),
/// then `SPILO_CONFIGURATION`'s `bootstrap.dcs` merged over it.
fn bootstrap_dcs(
    json: Option<&str>,
    spilo: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<crate::patroni::DynamicConfig, ConfigError> {
    const VAR: &str = "TUSK_BOOTSTRAP_DCS";
    let mut value = match json {
        None => serde_json::Value::Object(Default::default()),
        Some(v) => serde_json::from_str::<serde_json::Value>(v)
            .map_err(|e| ConfigError::new(VAR, format!("not a Patroni dynamic configuration (JSON): {e}")))?,
    };
    serde_json::from_value::<crate::patroni::DynamicConfig>(value.clone())
        .map_err(|e| ConfigError::new(VAR, format!("not a Patroni dynamic configuration (JSON): {e}")))?;
    let Some(spilo) = spilo else {
        return Ok(serde_json::from_value(value).expect("checked just above"));
    };
    spilo::deep_merge(&mut value, &serde_json::Value::Object(spilo.clone()));
    serde_json::from_value(value)
        .map_err(|e| ConfigError::new(spilo::VAR, format!("bootstrap.dcs: not a Patroni dynamic configuration: {e}")))
}

/// The callbacks: `CALLBACK_SCRIPT` for `on_start`, `on_stop` and
/// `on_role_change` (as Spilo sets it), then `postgresql.callbacks` (a
/// null there removes one).
fn callbacks(
    env: &BTreeMap<String, String>,
    script: Option<&str>,
    spilo: &BTreeMap<String, Option<String>>,
) -> Result<Option<CallbackConfig>, ConfigError> {
    let words = |var: &str, what: &str, cmd: &str| {
        shlex::split(cmd)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| ConfigError::new(var, format!("{what}: an empty command or unbalanced quotes")))
    };
    let mut commands = BTreeMap::new();
    if let Some(script) = script {
        let command = words("CALLBACK_SCRIPT", "the command", script)?;
        for action in ["on_start", "on_stop", "on_role_change"] {
            commands.insert(action.to_owned(), command.clone());
        }
    }
    for (action, cmd) in spilo {
        match cmd {
            Some(cmd) => {
                commands.insert(action.clone(), words(spilo::VAR, &format!("postgresql.callbacks.{action}"), cmd)?)
            }
            None => commands.remove(action),
        };
    }
    if commands.is_empty() {
        return Ok(None);
    }
    let mut cb_env = inherited_env(env);
    for (k, v) in env {
        if k.starts_with("AWS_") || k == "EIP_ALLOCATION" {
            cb_env.push((k.clone(), v.clone()));
        }
    }
    Ok(Some(CallbackConfig { commands, env: cb_env }))
}

/// Patroni's variables that tusk reads (the `_FILE` form of a secret too).
const PATRONI_READ: [&str; 29] = [
    "PATRONI_CONFIGURATION",
    "PATRONI_SCOPE",
    "PATRONI_NAME",
    "PATRONI_NAMESPACE",
    "PATRONI_RESTAPI_CONNECT_ADDRESS",
    "PATRONI_RESTAPI_LISTEN",
    "PATRONI_RESTAPI_USERNAME",
    "PATRONI_RESTAPI_PASSWORD",
    "PATRONI_RESTAPI_VERIFY_CLIENT",
    "PATRONI_ETCD3_HOST",
    "PATRONI_ETCD3_HOSTS",
    "PATRONI_ETCD3_PROTOCOL",
    "PATRONI_ETCD3_USERNAME",
    "PATRONI_ETCD3_PASSWORD",
    "PATRONI_ETCD3_CACERT",
    "PATRONI_ETCD3_CERT",
    "PATRONI_ETCD3_KEY",
    "PATRONI_POSTGRESQL_LISTEN",
    "PATRONI_POSTGRESQL_CONNECT_ADDRESS",
    "PATRONI_POSTGRESQL_DATA_DIR",
    "PATRONI_SUPERUSER_USERNAME",
    "PATRONI_SUPERUSER_PASSWORD",
    "PATRONI_SUPERUSER_SSLMODE",
    "PATRONI_REPLICATION_USERNAME",
    "PATRONI_REPLICATION_PASSWORD",
    "PATRONI_REPLICATION_SSLMODE",
    "PATRONI_RESTAPI_PASSWORD_FILE",
    "PATRONI_SUPERUSER_PASSWORD_FILE",
    "PATRONI_REPLICATION_PASSWORD_FILE",
];

/// Words in a Patroni variable's name that make ignoring it change what
/// the user asked for (a secret, an address, TLS material, another DCS):
/// such a variable tusk does not read is an error, never a silent ignore.
const PATRONI_MEANINGFUL: [&str; 22] = [
    "PASSWORD",
    "_OPTIONS",
    "PGPASS",
    "ADDRESS",
    "LISTEN",
    "_DIR",
    "HOST",
    "URL",
    "CERT",
    "KEY",
    "CAFILE",
    "SSL",
    "ALLOWLIST",
    "CIPHERS",
    "USERNAME",
    "CONFIGURATION",
    "PATRONI_ETCD_",
    "ZOOKEEPER",
    "CONSUL",
    "KUBERNETES",
    "RAFT",
    "EXHIBITOR",
];

/// Every `PATRONI_*` variable set is either read, refused (exit 78: it
/// would change what the user asked for) or named in a warning. Patroni's
/// bootstrap user variables (`PATRONI_<user>_PASSWORD`, `_OPTIONS`) are read
/// for the one such role tusk creates, Spilo's admin (`PGUSER_ADMIN`).
fn patroni_variables(env: &BTreeMap<String, String>, admin: &str) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let admin_vars = [format!("PATRONI_{admin}_PASSWORD"), format!("PATRONI_{admin}_OPTIONS")];
    for k in env.keys().filter(|k| k.starts_with("PATRONI_")) {
        if PATRONI_READ.contains(&k.as_str()) || admin_vars.contains(k) || env[k].is_empty() {
            continue;
        }
        let user = k.strip_prefix("PATRONI_").and_then(|u| u.strip_suffix("_PASSWORD").or(u.strip_suffix("_OPTIONS")));
        if let Some(user) = user.filter(|u| !u.is_empty() && u.chars().any(|c| c.is_ascii_lowercase())) {
            return Err(ConfigError::new(
                k,
                format!(
                    "Patroni bootstrap user {user:?}: tusk creates only Spilo's admin role at bootstrap \
                     (PGUSER_ADMIN, here {admin:?}); set PGUSER_ADMIN={user} or create the role yourself"
                ),
            ));
        }
        if PATRONI_MEANINGFUL.iter().any(|w| k.contains(w)) {
            return Err(ConfigError::new(
                k,
                "not supported by tusk, and ignoring it would change what was asked for; remove it or use the \
                 variable tusk documents for this (README: Environment variables)",
            ));
        }
        warnings.push(format!("{k} is not read by tusk (ignored)"));
    }
    Ok(warnings)
}

/// The variables postgres's children inherit: a whitelist, so that
/// `NOTIFY_SOCKET`, S3 and etcd secrets never reach them.
fn inherited_env(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let path = env.get("PATH").cloned().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut out = vec![("PATH".to_owned(), path)];
    for (k, v) in env {
        if k == "TZ" || k == "LANG" || k.starts_with("LC_") {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// `PGHOME`, `PGROOT`, `PGDATA` with Spilo's defaults, each from the one before.
fn paths(raw: &RawEnv) -> Result<(PathBuf, PathBuf, PathBuf), ConfigError> {
    let home = abs_path("PGHOME", raw.pghome.as_deref())?.unwrap_or_else(|| "/home/postgres".into());
    let root = abs_path("PGROOT", raw.pgroot.as_deref())?.unwrap_or_else(|| home.join("pgdata/pgroot"));
    let data = abs_path("PGDATA", raw.pgdata.as_deref())?.unwrap_or_else(|| root.join("data"));
    Ok((home, root, data))
}

fn raw_best_effort(env: &BTreeMap<String, String>) -> RawEnv {
    envy::from_iter(env.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone()))).unwrap_or_default()
}

/// The storage section alone, from an environment map (`wal-push` and
/// `wal-fetch` without the supervisor): the same parse as [`Config::from_map`].
pub fn storage_from_map(env: &BTreeMap<String, String>) -> Result<Option<StorageConfig>, ConfigError> {
    let raw = raw_best_effort(env);
    let scope = alias("SCOPE", &raw.scope, "PATRONI_SCOPE", &raw.patroni_scope)?.unwrap_or_else(|| "dummy".to_owned());
    validate_name("SCOPE", &scope)?;
    let version = parse_pg_version(raw.pgversion.as_deref())?;
    storage::parse(env, &raw, &scope, version)
}

/// What `wal-push`/`wal-fetch` read from their environment (postgres's,
/// which the supervisor set): where the supervisor listens, and the
/// fallback configuration it left. Best effort: a bad value falls back to
/// the default, and the direct mode's own parse reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveClientEnv {
    /// `TUSK_ARCHIVE_SOCKET`: the socket itself.
    pub socket: Option<PathBuf>,
    /// `TUSK_SOCKET_DIR` (default `/run/postgresql`).
    pub socket_dir: PathBuf,
    /// `TUSK_ARCHIVE_CONFIG`: the fallback file.
    pub fallback_config: Option<PathBuf>,
}

/// Set by the supervisor in postgres's environment: where `wal-push` and
/// `wal-fetch` find it, and the fallback configuration (paths only).
pub const ENV_ARCHIVE_SOCKET: &str = "TUSK_ARCHIVE_SOCKET";
pub const ENV_ARCHIVE_CONFIG: &str = "TUSK_ARCHIVE_CONFIG";

pub fn archive_client_env(env: &BTreeMap<String, String>) -> ArchiveClientEnv {
    let path = |k: &str| env.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let raw = raw_best_effort(env);
    ArchiveClientEnv {
        socket: path(ENV_ARCHIVE_SOCKET),
        socket_dir: abs_path("TUSK_SOCKET_DIR", raw.tusk_socket_dir.as_deref())
            .ok()
            .flatten()
            .unwrap_or_else(|| "/run/postgresql".into()),
        fallback_config: path(ENV_ARCHIVE_CONFIG),
    }
}

/// `PGDATA` as the supervisor would compute it, without failing: init mode
/// uses it to find a postmaster left behind by a dead supervisor.
pub fn pgdata_best_effort(env: &BTreeMap<String, String>) -> PathBuf {
    paths(&raw_best_effort(env)).map_or_else(|_| "/home/postgres/pgdata/pgroot/data".into(), |(_, _, d)| d)
}

/// `TUSK_SHUTDOWN_TIMEOUT` or its default, without failing (init mode).
pub fn shutdown_timeout_best_effort(env: &BTreeMap<String, String>) -> Duration {
    let default = Duration::from_secs(8);
    parse_duration("TUSK_SHUTDOWN_TIMEOUT", raw_best_effort(env).tusk_shutdown_timeout.as_deref(), default)
        .unwrap_or(default)
}

/// The process environment as a map; a non-UTF-8 value of a variable tusk
/// reads is an error, others are skipped.
pub fn process_env() -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        let Ok(k) = k.into_string() else { continue };
        match v.into_string() {
            Ok(v) => {
                map.insert(k, v);
            }
            Err(_) if is_known_var(&k) => return Err(ConfigError::new(k, "value is not valid UTF-8")),
            Err(_) => {}
        }
    }
    Ok(map)
}

/// Variables in tusk's namespaces, whose values must be valid UTF-8.
fn is_known_var(k: &str) -> bool {
    const PREFIXES: [&str; 13] = [
        "PG",
        "WAL",
        "AWS_",
        "ETCD",
        "SSL_",
        "TUSK_",
        "PATRONI_",
        "SCOPE",
        "NAMESPACE",
        "ALLOW_NOSSL",
        "APIPORT",
        "RESTAPI_",
        "INITDB_",
    ];
    PREFIXES.iter().any(|p| k.starts_with(p))
}

/// A role from Spilo's `(user, password)` variables, or Patroni's
/// `<patroni>_USERNAME` / `_PASSWORD` (both set must agree), with
/// `<patroni>_SSLMODE`.
fn role(
    env: &BTreeMap<String, String>,
    (user_var, password_var): (&str, &str),
    default_user: &str,
    patroni: Option<&str>,
) -> Result<Role, ConfigError> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let mut name = get(user_var);
    let mut password = secret(env, password_var)?;
    let mut sslmode = "require".to_owned();
    if let Some(p) = patroni {
        let (pu, pp, ps) = (format!("{p}_USERNAME"), format!("{p}_PASSWORD"), format!("{p}_SSLMODE"));
        name = alias(user_var, &name, &pu, &get(&pu))?;
        let theirs = secret(env, &pp)?;
        if let (Some(a), Some(b)) = (&password, &theirs)
            && a.expose() != b.expose()
        {
            return Err(ConfigError::new(password_var, format!("contradicts {pp}; set one of them")));
        }
        password = password.or(theirs);
        if let Some(m) = get(&ps) {
            if !SSLMODES.contains(&m.as_str()) {
                return Err(ConfigError::new(
                    ps,
                    format!("{m:?} is not a libpq sslmode (one of {})", SSLMODES.join(", ")),
                ));
            }
            sslmode = m;
        }
    }
    let name = name.unwrap_or_else(|| default_user.to_owned());
    validate_role_name(user_var, &name)?;
    if let Some(p) = &password
        && p.expose().contains('\0')
    {
        return Err(ConfigError::new(password_var, "contains a NUL byte"));
    }
    Ok(Role { name, password, sslmode })
}

/// Spilo's admin role (`PGUSER_ADMIN`, `PGPASSWORD_ADMIN`), or Patroni's
/// bootstrap user of that name: `PATRONI_<name>_PASSWORD` (both set must
/// agree) and `PATRONI_<name>_OPTIONS`, which must ask for what tusk gives
/// the role (Spilo's `createdb, createrole`; `login` implied).
fn admin_role(env: &BTreeMap<String, String>) -> Result<Role, ConfigError> {
    let mut admin = role(env, ("PGUSER_ADMIN", "PGPASSWORD_ADMIN"), "admin", None)?;
    let (pw_var, opt_var) = (format!("PATRONI_{}_PASSWORD", admin.name), format!("PATRONI_{}_OPTIONS", admin.name));
    if let Some(theirs) = env.get(&pw_var).filter(|v| !v.is_empty()) {
        match &admin.password {
            Some(ours) if ours.expose() != theirs => {
                return Err(ConfigError::new("PGPASSWORD_ADMIN", format!("contradicts {pw_var}; set one of them")));
            }
            _ if theirs.contains('\0') => return Err(ConfigError::new(pw_var, "contains a NUL byte")),
            _ => admin.password = Some(Secret::new(theirs.clone())),
        }
    }
    if let Some(options) = env.get(&opt_var).filter(|v| !v.is_empty()) {
        let mut asked: Vec<String> = options
            .split(',')
            .map(|o| o.trim().to_ascii_lowercase())
            .filter(|o| !o.is_empty() && o != "login")
            .collect();
        asked.sort();
        asked.dedup();
        if asked != ["createdb", "createrole"] {
            return Err(ConfigError::new(
                opt_var,
                format!(
                    "{options:?}: tusk creates the admin role {:?} with LOGIN CREATEDB CREATEROLE (Spilo's) \
                     and no other options; set \"createdb,createrole\" or remove the variable",
                    admin.name
                ),
            ));
        }
    }
    Ok(admin)
}

fn pg_tls(raw: &RawEnv) -> Result<PgTls, ConfigError> {
    let allow_nossl = parse_bool("ALLOW_NOSSL", raw.allow_nossl.as_deref())?.unwrap_or(false);
    let cert = pem_source("SSL_CERTIFICATE", &raw.ssl_certificate, "SSL_CERTIFICATE_FILE", &raw.ssl_certificate_file)?;
    let key = pem_source("SSL_PRIVATE_KEY", &raw.ssl_private_key, "SSL_PRIVATE_KEY_FILE", &raw.ssl_private_key_file)?;
    let ca = pem_source("SSL_CA", &raw.ssl_ca, "SSL_CA_FILE", &raw.ssl_ca_file)?;
    let server = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new("SSL_PRIVATE_KEY_FILE", "a certificate is given but no private key"));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new("SSL_CERTIFICATE_FILE", "a private key is given but no certificate"));
        }
        (Some(cert), Some(key)) => {
            let certs = check_certs(
                if matches!(cert, Pem::File(_)) { "SSL_CERTIFICATE_FILE" } else { "SSL_CERTIFICATE" },
                &cert,
            )?;
            let key_var = if matches!(key, Pem::File(_)) { "SSL_PRIVATE_KEY_FILE" } else { "SSL_PRIVATE_KEY" };
            check_key(key_var, &key)?;
            if certs == 0 {
                return Err(ConfigError::new("SSL_CERTIFICATE_FILE", "no certificate found"));
            }
            Some(CertAndKey { cert, key })
        }
    };
    if let Some(ca) = &ca {
        check_certs(if matches!(ca, Pem::File(_)) { "SSL_CA_FILE" } else { "SSL_CA" }, ca)?;
    }
    Ok(PgTls { allow_nossl, server, ca })
}

/// `INLINE` (PEM contents) or `FILE` (a path): one of the two, not both.
pub(super) fn pem_source(
    inline_var: &str,
    inline: &Option<String>,
    file_var: &str,
    file: &Option<String>,
) -> Result<Option<Pem>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            file_var,
            format!("both {inline_var} (contents) and {file_var} (a path) are set; set only one"),
        )),
        (Some(pem), None) => Ok(Some(Pem::Inline(Secret::new(pem.clone())))),
        (None, Some(path)) => Ok(Some(Pem::File(abs_path(file_var, Some(path))?.expect("Some in, Some out")))),
        (None, None) => Ok(None),
    }
}

impl Pem {
    /// The PEM bytes: the file's current content or the inline value.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Pem::File(p) => std::fs::read(p),
            Pem::Inline(s) => Ok(s.expose().as_bytes().to_vec()),
        }
    }
}

/// Counts the certificates in `pem`; an error names `var` if it cannot be
/// read or holds none.
pub(crate) fn check_certs(var: &str, pem: &Pem) -> Result<usize, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bytes = pem.read().map_err(|e| ConfigError::new(var, format!("{}: {e}", pem_name(pem))))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c.len()),
        Ok(_) => Err(ConfigError::new(var, format!("{}: no PEM certificate found", pem_name(pem)))),
        Err(e) => Err(ConfigError::new(var, format!("{}: not a valid PEM certificate ({e})", pem_name(pem)))),
    }
}

/// Checks that `pem` holds a private key.
pub(crate) fn check_key(var: &str, pem: &Pem) -> Result<(), ConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let bytes = pem.read().map_err(|e| ConfigError::new(var, format!("{}: {e}", pem_name(pem))))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(|_| ())
        .map_err(|_| ConfigError::new(var, format!("{}: no valid PEM private key found", pem_name(pem))))
}

fn pem_name(pem: &Pem) -> String {
    match pem {
        Pem::File(p) => p.display().to_string(),
        Pem::Inline(_) => "inline value".to_owned(),
    }
}

#[cfg(test)]
mod tests;
