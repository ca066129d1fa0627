//! The configuration files tusk owns in `PGDATA`: `tusk.conf` (included from
//! `postgresql.conf`) and `pg_hba.conf`. Both are rewritten at every start
//! from the configuration; users add their own settings with `ALTER SYSTEM`
//! (postgresql.auto.conf wins) or `TUSK_PG_PARAMETERS`.

use std::collections::BTreeMap;
use std::io::Write;

use super::atomic::write_atomic;
use super::replication::Upstream;
use super::{PgError, RunAs};
use crate::config::Config;

pub const TUSK_CONF: &str = "tusk.conf";
/// `postgresql.parameters` of the cluster's dynamic configuration (HA mode).
pub const DCS_CONF: &str = "tusk.dcs.conf";
/// `synchronous_standby_names`, managed by the leader in synchronous mode.
pub const SYNC_CONF: &str = "tusk.sync.conf";
const INCLUDE_LINE: &str = "include = 'tusk.conf'\t\t# added by tusk: settings managed by tusk";

/// Paths of the TLS files postgres uses.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: Option<std::path::PathBuf>,
}

/// `archive_command` and `restore_command`, as the archiver (a layer above)
/// hands them down through the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCommands {
    pub archive: String,
    pub restore: String,
}

/// What `tusk.conf` needs beyond the configuration: the installed TLS files
/// and the archive commands (`None`: no WAL storage).
#[derive(Debug, Clone)]
pub struct ConfInputs {
    pub tls: TlsPaths,
    pub archive: Option<ArchiveCommands>,
    /// Set last, over everything: a clone's one recovery run
    /// (`restore_command` from its source, `recovery_target_*`).
    pub recovery: BTreeMap<String, String>,
    /// The loadable libraries of the binaries in use.
    pub libraries: Libraries,
    /// A standby's lower bounds from its pg_control (the primary's
    /// `max_connections` and friends): tusk's own values are raised to
    /// them, as Patroni does, so that a member with less memory (or a
    /// Patroni primary with other settings) can be followed.
    pub standby_minimums: BTreeMap<String, u64>,
    /// The dynamic configuration's `postgresql.pg_hba`, if it has one (a
    /// local `postgresql.pg_hba` wins over it).
    pub dynamic_hba: Option<Vec<String>>,
}

/// Spilo's `shared_preload_libraries`, of which only the installed ones
/// are kept (the image has `pg_stat_statements`).
pub const SPILO_PRELOAD: &str =
    "bg_mon,pg_stat_statements,pgextwlist,pg_auth_mon,set_user,timescaledb,pg_cron,pg_stat_kcache";

/// Parameters that list libraries to load: a library PostgreSQL cannot find
/// there stops it from starting (or every session from opening).
const LIBRARY_LISTS: [&str; 3] = ["shared_preload_libraries", "session_preload_libraries", "local_preload_libraries"];

/// The loadable modules of one PostgreSQL installation (`*.so` in its
/// `pkglibdir`), as Spilo checks them before preloading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Libraries(pub std::collections::BTreeSet<String>);

impl Libraries {
    /// The modules in `libdir` (`/usr/lib/postgresql/<major>/lib`).
    pub fn scan(libdir: &std::path::Path) -> Libraries {
        let names = std::fs::read_dir(libdir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".so").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Libraries(names)
    }

    fn has(&self, entry: &str) -> bool {
        // `name`, `name.so`, `$libdir/name` or `$libdir/plugins/name`.
        let name = entry.rsplit('/').next().unwrap_or(entry);
        let name = name.strip_suffix(".so").unwrap_or(name);
        self.0.contains(name)
    }

    /// `list` (comma-separated, optionally quoted) without the libraries
    /// that are not installed: (kept list, dropped names).
    pub fn filter(&self, list: &str) -> (String, Vec<String>) {
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for entry in list.split(',').map(|e| e.trim().trim_matches('"').trim()).filter(|e| !e.is_empty()) {
            if self.has(entry) {
                if !kept.contains(&entry) {
                    kept.push(entry);
                }
            } else {
                dropped.push(entry.to_owned());
            }
        }
        (kept.join(","), dropped)
    }

    /// Applies [`Libraries::filter`] to the library lists in `params`,
    /// logging what a user asked for and cannot have (`source` says where
    /// it came from), once per process: `tusk.conf` is written at every start.
    fn apply(&self, params: &mut BTreeMap<String, String>, source: &str) {
        static LOGGED: std::sync::Mutex<std::collections::BTreeSet<String>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        for name in LIBRARY_LISTS {
            if let Some(v) = params.get_mut(name) {
                let (kept, dropped) = self.filter(v);
                let first = !dropped.is_empty()
                    && LOGGED
                        .lock()
                        .is_ok_and(|mut seen| seen.insert(format!("{source} {name} {}", dropped.join(","))));
                if first {
                    tracing::warn!(
                        parameter = name,
                        dropped = dropped.join(","),
                        kept = %kept,
                        "{source}: leaving out libraries this image does not have (as Spilo does)"
                    );
                }
                *v = kept;
            }
        }
    }
}

/// Spilo's bootstrap parameters (reference §1.4), before the derived ones
/// and `TUSK_PG_PARAMETERS`, which override them.
fn spilo_defaults() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("archive_timeout", "1800s"),
        ("autovacuum_analyze_scale_factor", "0.02"),
        ("autovacuum_max_workers", "5"),
        ("autovacuum_vacuum_scale_factor", "0.05"),
        ("checkpoint_completion_target", "0.9"),
        ("hot_standby", "on"),
        ("listen_addresses", "*"),
        ("log_autovacuum_min_duration", "0"),
        ("log_checkpoints", "on"),
        ("log_connections", "on"),
        ("log_disconnections", "on"),
        ("log_line_prefix", "[%p] %q%u@%d "),
        ("log_lock_waits", "on"),
        ("log_min_duration_statement", "500"),
        ("log_statement", "ddl"),
        ("log_temp_files", "0"),
        ("max_replication_slots", "10"),
        ("max_wal_senders", "10"),
        // One syncfs instead of an fsync per file before crash recovery (PG 14+):
        // seconds saved on every restart after a crash.
        ("recovery_init_sync_method", "syncfs"),
        ("tcp_keepalives_idle", "900"),
        ("tcp_keepalives_interval", "100"),
        ("track_functions", "all"),
        ("wal_compression", "on"),
        // Patroni's command-line default (PG 13+): a member that rejoins
        // after pg_rewind needs the new timeline's first segment, which the
        // post-promotion checkpoint would otherwise recycle before the
        // member's slot exists (no archive to fetch it from).
        ("wal_keep_size", "128MB"),
        ("wal_level", "replica"),
        ("wal_log_hints", "on"),
    ])
}

/// Which of a standby's settings `params` must raise to meet `minimums`
/// (its primary's, from pg_control): the ones set lower, or left at a
/// PostgreSQL default that is lower.
pub fn standby_raises(params: &BTreeMap<String, String>, minimums: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    const PG_DEFAULTS: [(&str, u64); 5] = [
        ("max_connections", 100),
        ("max_worker_processes", 8),
        ("max_wal_senders", 10),
        ("max_prepared_transactions", 0),
        ("max_locks_per_transaction", 64),
    ];
    minimums
        .iter()
        .filter(|(k, min)| {
            let own = params.get(*k).and_then(|v| v.parse::<u64>().ok());
            let own = own.or_else(|| PG_DEFAULTS.iter().find(|(d, _)| d == k).map(|(_, v)| *v)).unwrap_or(0);
            own < **min
        })
        .map(|(k, min)| (k.clone(), *min))
        .collect()
}

/// The parameters of `tusk.conf`, in file order.
pub fn parameters(cfg: &Config, inputs: &ConfInputs, upstream: Option<&Upstream>) -> BTreeMap<String, String> {
    let tls = &inputs.tls;
    let mut p: BTreeMap<String, String> =
        spilo_defaults().into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    p.insert("cluster_name".into(), cfg.scope.clone());
    p.insert("shared_preload_libraries".into(), inputs.libraries.filter(SPILO_PRELOAD).0);
    let mut given = cfg.postgres.parameters.clone();
    inputs.libraries.apply(&mut given, "TUSK_PG_PARAMETERS");
    for (k, v) in given {
        p.insert(k, v);
    }
    for (k, min) in standby_raises(&p, &inputs.standby_minimums) {
        p.insert(k, min.to_string());
    }
    // Managed: config validation refuses these in TUSK_PG_PARAMETERS.
    p.insert("port".into(), cfg.postgres.port.to_string());
    // Ours, whatever a postgresql.conf copied from a Patroni member names
    // (its own paths, on its own host).
    p.insert("hba_file".into(), cfg.postgres.data.join("pg_hba.conf").display().to_string());
    p.insert("ident_file".into(), cfg.postgres.data.join("pg_ident.conf").display().to_string());
    p.insert("unix_socket_directories".into(), cfg.postgres.socket_dir.display().to_string());
    p.insert("restart_after_crash".into(), "off".into());
    p.insert("logging_collector".into(), "off".into());
    p.insert("log_destination".into(), "stderr".into());
    p.insert("archive_mode".into(), "on".into());
    // Without WAL storage archiving succeeds without archiving, as in Spilo.
    match &inputs.archive {
        Some(c) => {
            p.insert("archive_command".into(), c.archive.clone());
            p.insert("restore_command".into(), c.restore.clone());
        }
        None => {
            p.insert("archive_command".into(), "/bin/true".into());
        }
    }
    p.insert("ssl".into(), "on".into());
    p.insert("ssl_cert_file".into(), tls.cert.display().to_string());
    p.insert("ssl_key_file".into(), tls.key.display().to_string());
    if let Some(ca) = &tls.ca {
        p.insert("ssl_ca_file".into(), ca.display().to_string());
    }
    if let Some(up) = upstream {
        p.insert("primary_conninfo".into(), super::replication::conninfo(cfg, up));
        if let Some(slot) = &up.slot {
            p.insert("primary_slot_name".into(), slot.clone());
        }
    }
    for (k, v) in &inputs.recovery {
        p.insert(k.clone(), v.clone());
    }
    p
}

/// A value as a postgresql.conf string literal.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

pub fn render_conf(params: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# Managed by tusk and rewritten at every start: do not edit.\n\
         # Add settings with ALTER SYSTEM (postgresql.auto.conf wins) or TUSK_PG_PARAMETERS.\n",
    );
    for (k, v) in params {
        out.push_str(&format!("{k} = {}\n", quote(v)));
    }
    // The cluster-wide parameters from etcd's `config` come last (HA mode).
    out.push_str(&format!("include_if_exists = '{DCS_CONF}'\n"));
    out.push_str(&format!("include_if_exists = '{SYNC_CONF}'\n"));
    out
}

/// Writes `postgresql.parameters` from the dynamic configuration to
/// `tusk.dcs.conf` (parameters tusk manages are left out, with a warning);
/// returns whether the file changed, so the caller reloads postgres.
pub fn write_dynamic(
    cfg: &Config,
    run_as: &RunAs,
    params: &BTreeMap<String, serde_json::Value>,
    libraries: &Libraries,
) -> Result<bool, PgError> {
    let out = render_dynamic(params, libraries, |k, why| tracing::warn!(parameter = %k, "{why}"));
    let path = cfg.postgres.data.join(DCS_CONF);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == out) {
        return Ok(false);
    }
    write_atomic(&path, out.as_bytes(), 0o600, run_as)?;
    Ok(true)
}

/// `tusk.sync.conf`: `synchronous_standby_names` set to `names` (`None`:
/// the file removed). `true`: it changed (postgres is to reload).
pub fn write_sync_names(cfg: &Config, run_as: &RunAs, names: Option<&str>) -> Result<bool, PgError> {
    let path = cfg.postgres.data.join(SYNC_CONF);
    let old = std::fs::read_to_string(&path).ok();
    match names {
        None => match old {
            None => Ok(false),
            Some(_) => {
                std::fs::remove_file(&path).map(|()| true).map_err(|e| PgError::io(path.display().to_string(), e))
            }
        },
        Some(n) => {
            let out = format!(
                "# Managed by tusk: the leader's synchronous standbys (synchronous mode).\n\
                 synchronous_standby_names = '{}'\n",
                n.replace('\'', "''")
            );
            if old.as_deref() == Some(out.as_str()) {
                return Ok(false);
            }
            write_atomic(&path, out.as_bytes(), 0o600, run_as)?;
            Ok(true)
        }
    }
}

/// Rewrites `pg_hba.conf` when the dynamic configuration's `pg_hba`
/// changed it; `true`: postgres is to reload.
pub fn write_hba(cfg: &Config, run_as: &RunAs, dynamic: Option<&[String]>) -> Result<bool, PgError> {
    let out = render_hba(cfg, dynamic);
    let path = cfg.postgres.data.join("pg_hba.conf");
    if std::fs::read_to_string(&path).is_ok_and(|old| old == out) {
        return Ok(false);
    }
    write_atomic(&path, out.as_bytes(), 0o600, run_as)?;
    Ok(true)
}

/// `tusk.dcs.conf` for `params`; `skipped(name, why)` hears of what is left
/// out. Library lists keep only installed libraries; what they lose is
/// noted in a comment line ([`left_out`] reads them back).
fn render_dynamic(
    params: &BTreeMap<String, serde_json::Value>,
    libraries: &Libraries,
    skipped: impl Fn(&str, &str),
) -> String {
    let mut out = String::from("# Managed by tusk: postgresql.parameters of the cluster's config key in etcd.\n");
    let mut values = BTreeMap::new();
    for (k, v) in params {
        let k = k.to_ascii_lowercase();
        if crate::config::MANAGED_PARAMETERS.iter().any(|(m, _)| *m == k)
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            skipped(&k, "ignoring a parameter from the dynamic configuration that tusk manages");
            continue;
        }
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
            other => other.to_string(),
        };
        if v.contains('\n') {
            continue;
        }
        values.insert(k, v);
    }
    for name in LIBRARY_LISTS {
        if let Some(v) = values.get_mut(name) {
            let (kept, dropped) = libraries.filter(v);
            if !dropped.is_empty() {
                out.push_str(&format!(
                    "# {name}: left out (not installed here): {}\n",
                    dropped.join(",").replace('\n', " ")
                ));
            }
            *v = kept;
        }
    }
    for (k, v) in values {
        out.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    out
}

/// What the dynamic configuration asked for and `tusk.dcs.conf` left out
/// (its comment lines), for a log line when it changes.
pub fn left_out(cfg: &Config) -> Vec<String> {
    std::fs::read_to_string(cfg.postgres.data.join(DCS_CONF))
        .map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("# "))
                .filter(|l| l.contains("left out"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `pg_hba.conf`: `postgresql.pg_hba`'s lines (the local one, else the
/// dynamic configuration's, `dynamic`), as Patroni writes them; without
/// one, Spilo's (reference §1.4): trust on the local socket, passwords
/// over TCP, TLS only unless `ALLOW_NOSSL`.
pub fn render_hba(cfg: &Config, dynamic: Option<&[String]>) -> String {
    if let Some(lines) = cfg.postgres.pg_hba.as_deref().or(dynamic) {
        let from = if cfg.postgres.pg_hba.is_some() { "SPILO_CONFIGURATION" } else { "the dynamic configuration" };
        let mut out = format!("# Managed by tusk: postgresql.pg_hba of {from}, rewritten at every start.\n");
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
        return out;
    }
    let standby = hba_user(&cfg.credentials.replication.name);
    let mut out = String::from("# Managed by tusk and rewritten at every start: do not edit.\n");
    out.push_str("local   all           all                    trust\n");
    out.push_str("host    all           all       127.0.0.1/32 md5\n");
    out.push_str("host    all           all       ::1/128      md5\n");
    out.push_str(&format!("local   replication   {standby}              trust\n"));
    out.push_str(&format!("hostssl replication   {standby} all          md5\n"));
    if cfg.tls.allow_nossl {
        out.push_str(&format!("host    replication   {standby} all          md5\n"));
        out.push_str("host    all           all       all          md5\n");
    } else {
        out.push_str("hostnossl all         all       all          reject\n");
        out.push_str("hostssl all           all       all          md5\n");
    }
    out
}

fn hba_user(name: &str) -> String {
    // Quoted so that names with spaces or keywords ("all") are literal.
    format!("\"{name}\"")
}

/// Writes `tusk.conf`, `pg_hba.conf` and the include line in
/// `postgresql.conf`, owned by the postgres user.
/// How postgres is to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// A standby (`standby.signal`), streaming from the upstream if there is
    /// one; without one it is a read-only node waiting for a leader.
    Replica(Option<Upstream>),
}

pub fn write_all(cfg: &Config, inputs: &ConfInputs, run_as: &RunAs, role: &Role) -> Result<(), PgError> {
    let data = &cfg.postgres.data;
    let upstream = match role {
        Role::Replica(up) => up.as_ref(),
        Role::Primary => None,
    };
    write_atomic(&data.join(TUSK_CONF), render_conf(&parameters(cfg, inputs, upstream)).as_bytes(), 0o600, run_as)?;
    super::replication::set_standby(data, matches!(role, Role::Replica(_)), run_as)?;
    if matches!(role, Role::Replica(_)) {
        // Only a leader waits for synchronous standbys.
        write_sync_names(cfg, run_as, None)?;
    }
    write_atomic(&data.join("pg_hba.conf"), render_hba(cfg, inputs.dynamic_hba.as_deref()).as_bytes(), 0o600, run_as)?;
    let conf_path = data.join("postgresql.conf");
    let conf = std::fs::read_to_string(&conf_path).map_err(|e| PgError::io(conf_path.display().to_string(), e))?;
    if !conf.lines().any(|l| l.trim_start().starts_with("include = 'tusk.conf'")) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(|e| PgError::io(conf_path.display().to_string(), e))?;
        let sep = if conf.ends_with('\n') || conf.is_empty() { "" } else { "\n" };
        f.write_all(format!("{sep}{INCLUDE_LINE}\n").as_bytes())
            .map_err(|e| PgError::io(conf_path.display().to_string(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, HostFacts};

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let host = HostFacts { hostname: "h".into(), address: [127, 0, 0, 1].into(), memory_bytes: 4 << 30 };
        Config::from_map(&env, &host).unwrap()
    }

    fn tls() -> ConfInputs {
        let tls = TlsPaths { cert: "/r/certs/server.crt".into(), key: "/r/certs/server.key".into(), ca: None };
        let libraries = Libraries(["pg_stat_statements", "auto_explain"].map(String::from).into());
        ConfInputs {
            tls,
            archive: None,
            recovery: BTreeMap::new(),
            libraries,
            standby_minimums: BTreeMap::new(),
            dynamic_hba: None,
        }
    }

    #[test]
    fn conf_has_managed_and_derived_settings() {
        let c = config(&[("PGPORT", "5433"), ("TUSK_PG_PARAMETERS", r#"{"log_statement":"all","work_mem":"8MB"}"#)]);
        let conf = render_conf(&parameters(&c, &tls(), None));
        for line in [
            "port = '5433'",
            "restart_after_crash = 'off'",
            "shared_buffers = '1024MB'",
            "max_connections = '136'",
            "log_statement = 'all'",
            "work_mem = '8MB'",
            "ssl = 'on'",
            "ssl_cert_file = '/r/certs/server.crt'",
            "wal_level = 'replica'",
            "wal_keep_size = '128MB'",
            "archive_mode = 'on'",
            "cluster_name = 'dummy'",
        ] {
            assert!(conf.lines().any(|l| l == line), "missing {line:?} in\n{conf}");
        }
    }

    #[test]
    fn archive_commands_as_handed_down() {
        let conf = render_conf(&parameters(&config(&[]), &tls(), None));
        assert!(conf.contains("archive_command = '/bin/true'"), "{conf}");
        assert!(!conf.contains("restore_command"));
        let commands = ArchiveCommands {
            archive: "/usr/bin/tusk wal-push \"%p\"".into(),
            restore: "/usr/bin/tusk wal-fetch \"%f\" \"%p\"".into(),
        };
        let inputs = ConfInputs { archive: Some(commands), ..tls() };
        let conf = render_conf(&parameters(&config(&[("WAL_S3_BUCKET", "b")]), &inputs, None));
        assert!(conf.contains("archive_command = '/usr/bin/tusk wal-push \"%p\"'"), "{conf}");
        assert!(conf.contains("restore_command = '/usr/bin/tusk wal-fetch \"%f\" \"%p\"'"), "{conf}");
    }

    #[test]
    fn a_standby_meets_its_primarys_settings() {
        let c = config(&[("TUSK_PG_PARAMETERS", r#"{"max_connections":"30","max_wal_senders":"20"}"#)]);
        let minimums = BTreeMap::from([
            ("max_connections".to_owned(), 100),
            ("max_wal_senders".to_owned(), 10),
            ("max_locks_per_transaction".to_owned(), 128),
        ]);
        let inputs = ConfInputs { standby_minimums: minimums.clone(), ..tls() };
        let conf = render_conf(&parameters(&c, &inputs, None));
        // Only what is really lower is raised (PostgreSQL's default 64 is not).
        let own = parameters(&c, &tls(), None);
        let raised: Vec<String> = standby_raises(&own, &minimums).into_iter().map(|(k, _)| k).collect();
        assert_eq!(raised, ["max_connections", "max_locks_per_transaction"]);
        let same = BTreeMap::from([("max_locks_per_transaction".to_owned(), 64), ("max_wal_senders".to_owned(), 10)]);
        assert!(standby_raises(&own, &same).is_empty());
        for line in ["max_connections = '100'", "max_wal_senders = '20'", "max_locks_per_transaction = '128'"] {
            assert!(conf.lines().any(|l| l == line), "missing {line:?} in\n{conf}");
        }
    }

    #[test]
    fn only_installed_libraries_are_preloaded() {
        // Spilo's default list, filtered: what the image has.
        let conf = render_conf(&parameters(&config(&[]), &tls(), None));
        assert!(conf.contains("shared_preload_libraries = 'pg_stat_statements'\n"), "{conf}");
        // A user's list, filtered the same way.
        let c = config(&[(
            "TUSK_PG_PARAMETERS",
            r#"{"shared_preload_libraries":"bg_mon, pg_stat_statements,$libdir/auto_explain.so,\"set_user\""}"#,
        )]);
        let conf = render_conf(&parameters(&c, &tls(), None));
        assert!(conf.contains("shared_preload_libraries = 'pg_stat_statements,$libdir/auto_explain.so'\n"), "{conf}");
        // A Spilo cluster's config key.
        let dcs: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"shared_preload_libraries":"bg_mon,pg_stat_statements,pgextwlist,pg_auth_mon,set_user,pg_cron",
                "session_preload_libraries":"auto_explain,pg_hint_plan","work_mem":"8MB"}"#,
        )
        .unwrap();
        let out = render_dynamic(&dcs, &tls().libraries, |_, _| {});
        assert!(out.contains("shared_preload_libraries = 'pg_stat_statements'\n"), "{out}");
        assert!(out.contains("session_preload_libraries = 'auto_explain'\n"), "{out}");
        assert!(out.contains("left out (not installed here): bg_mon,pgextwlist,pg_auth_mon,set_user,pg_cron"), "{out}");
        assert!(out.contains("work_mem = '8MB'"), "{out}");
        // Nothing installed: an empty list, which postgres accepts.
        assert_eq!(Libraries::default().filter("a,b"), (String::new(), vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn hba_rules() {
        let hba = render_hba(&config(&[]), None);
        assert!(hba.contains("hostnossl all         all       all          reject"));
        assert!(hba.contains("hostssl replication   \"standby\" all"));
        assert!(!hba.lines().any(|l| l.starts_with("host    all           all       all")));
        let hba = render_hba(&config(&[("ALLOW_NOSSL", "true"), ("PGUSER_STANDBY", "repl")]), None);
        assert!(!hba.contains("reject"));
        assert!(hba.contains("host    all           all       all          md5"));
        assert!(hba.contains("\"repl\""));
    }
}
