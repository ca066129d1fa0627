//! `SPILO_CONFIGURATION` (Spilo's older name: `PATRONI_CONFIGURATION`):
//! Patroni-shaped YAML that reaches what has no variable of its own. Spilo
//! deep-merges it over the configuration it generates from the
//! environment, the YAML winning and lists replaced; tusk does the same,
//! key by key:
//!
//! - a key that has a variable (`scope`, `restapi.listen`,
//!   `postgresql.authentication.superuser.password`, `etcd3.hosts`, ...)
//!   replaces that variable and its aliases before the environment is
//!   parsed, so it is validated exactly as the variable would be;
//! - `bootstrap.dcs` is merged over `TUSK_BOOTSTRAP_DCS`, `tags` over the
//!   `TUSK_NO*` tags, `postgresql.parameters` over `TUSK_PG_PARAMETERS`,
//!   `postgresql.callbacks` over `CALLBACK_SCRIPT`'s;
//! - `postgresql.pg_hba`, `postgresql.create_replica_methods`,
//!   `postgresql.remove_data_directory_on_rewind_failure` and
//!   `bootstrap.initdb` have no variable: they are carried in [`Overlay`];
//! - every other key is named in a warning at start, never silently
//!   ignored. A YAML error is a [`ConfigError`] naming the variable.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ConfigError;

/// The variable, and Spilo's deprecated name for it.
pub(super) const VAR: &str = "SPILO_CONFIGURATION";
pub(super) const OLD_VAR: &str = "PATRONI_CONFIGURATION";

/// Patroni's callback actions.
pub const CALLBACK_ACTIONS: [&str; 5] = ["on_start", "on_stop", "on_restart", "on_reload", "on_role_change"];

/// Replica creation methods tusk implements, by Spilo's and Patroni's
/// names: a base backup from this cluster's bucket, or `pg_basebackup`
/// from the leader.
pub const REPLICA_METHODS: [(&str, ReplicaMethod); 5] = [
    ("wal_e", ReplicaMethod::Backup),
    ("wal_g", ReplicaMethod::Backup),
    ("bootstrap_standby_with_wale", ReplicaMethod::Backup),
    ("basebackup", ReplicaMethod::Basebackup),
    ("basebackup_fast_xlog", ReplicaMethod::Basebackup),
];

/// How a new replica gets its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaMethod {
    /// The latest base backup in this cluster's bucket, then the archive.
    Backup,
    /// `pg_basebackup` from the leader.
    Basebackup,
}

/// What the YAML says beyond the variables it replaces.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Overlay {
    /// `bootstrap.dcs`, merged over `TUSK_BOOTSTRAP_DCS`.
    pub bootstrap_dcs: Option<Map<String, Value>>,
    /// `bootstrap.initdb`: initdb's options (`--name` or `--name=value`).
    pub initdb: Vec<String>,
    /// `bootstrap.initdb`'s `locale`: it replaces `INITDB_LOCALE`.
    pub initdb_locale: Option<String>,
    /// `postgresql.parameters`, over `TUSK_PG_PARAMETERS`.
    pub parameters: Map<String, Value>,
    /// `postgresql.pg_hba`: the lines of `pg_hba.conf`, replacing tusk's.
    pub pg_hba: Option<Vec<String>>,
    /// `postgresql.callbacks`: action → command, over `CALLBACK_SCRIPT`'s.
    pub callbacks: BTreeMap<String, Option<String>>,
    /// `postgresql.create_replica_methods`, in order.
    pub replica_methods: Option<Vec<ReplicaMethod>>,
    /// `postgresql.remove_data_directory_on_rewind_failure`.
    pub remove_data_on_rewind_failure: Option<bool>,
    /// `tags`, over `TUSK_NOFAILOVER` / `TUSK_NOLOADBALANCE`.
    pub tags: Map<String, Value>,
    pub warnings: Vec<String>,
}

/// A key with a variable of its own: the YAML path, the variable tusk
/// reads, and the other names of that variable the YAML value replaces.
const VARIABLES: &[(&str, &str, &[&str])] = &[
    ("scope", "SCOPE", &["PATRONI_SCOPE"]),
    ("namespace", "NAMESPACE", &["PATRONI_NAMESPACE"]),
    ("name", "PATRONI_NAME", &[]),
    ("restapi.listen", "PATRONI_RESTAPI_LISTEN", &["APIPORT"]),
    ("restapi.connect_address", "RESTAPI_CONNECT_ADDRESS", &["PATRONI_RESTAPI_CONNECT_ADDRESS"]),
    ("restapi.authentication.username", "PATRONI_RESTAPI_USERNAME", &[]),
    ("restapi.authentication.password", "PATRONI_RESTAPI_PASSWORD", &["PATRONI_RESTAPI_PASSWORD_FILE"]),
    ("restapi.certfile", "SSL_RESTAPI_CERTIFICATE_FILE", &["SSL_RESTAPI_CERTIFICATE"]),
    ("restapi.keyfile", "SSL_RESTAPI_PRIVATE_KEY_FILE", &["SSL_RESTAPI_PRIVATE_KEY"]),
    ("restapi.cafile", "SSL_RESTAPI_CA_FILE", &["SSL_RESTAPI_CA"]),
    ("restapi.verify_client", "PATRONI_RESTAPI_VERIFY_CLIENT", &[]),
    ("etcd3.hosts", "ETCD3_HOSTS", &["PATRONI_ETCD3_HOSTS", "ETCD3_HOST", "PATRONI_ETCD3_HOST"]),
    ("etcd3.host", "ETCD3_HOST", &["PATRONI_ETCD3_HOST", "ETCD3_HOSTS", "PATRONI_ETCD3_HOSTS"]),
    ("etcd3.protocol", "ETCD3_PROTOCOL", &["PATRONI_ETCD3_PROTOCOL"]),
    ("etcd3.cacert", "ETCD3_CACERT", &["PATRONI_ETCD3_CACERT"]),
    ("etcd3.cert", "ETCD3_CERT", &["PATRONI_ETCD3_CERT"]),
    ("etcd3.key", "ETCD3_KEY", &["PATRONI_ETCD3_KEY"]),
    ("etcd3.username", "ETCD3_USERNAME", &["PATRONI_ETCD3_USERNAME"]),
    ("etcd3.password", "ETCD3_PASSWORD", &["PATRONI_ETCD3_PASSWORD", "ETCD3_PASSWORD_FILE"]),
    ("postgresql.listen", "PATRONI_POSTGRESQL_LISTEN", &["PGPORT"]),
    ("postgresql.connect_address", "PG_CONNECT_ADDRESS", &["PATRONI_POSTGRESQL_CONNECT_ADDRESS"]),
    ("postgresql.data_dir", "PGDATA", &["PATRONI_POSTGRESQL_DATA_DIR"]),
    ("postgresql.authentication.superuser.username", "PGUSER_SUPERUSER", &["PATRONI_SUPERUSER_USERNAME"]),
    (
        "postgresql.authentication.superuser.password",
        "PGPASSWORD_SUPERUSER",
        &["PATRONI_SUPERUSER_PASSWORD", "PGPASSWORD_SUPERUSER_FILE", "PATRONI_SUPERUSER_PASSWORD_FILE"],
    ),
    ("postgresql.authentication.superuser.sslmode", "PATRONI_SUPERUSER_SSLMODE", &[]),
    ("postgresql.authentication.replication.username", "PGUSER_STANDBY", &["PATRONI_REPLICATION_USERNAME"]),
    (
        "postgresql.authentication.replication.password",
        "PGPASSWORD_STANDBY",
        &["PATRONI_REPLICATION_PASSWORD", "PGPASSWORD_STANDBY_FILE", "PATRONI_REPLICATION_PASSWORD_FILE"],
    ),
    ("postgresql.authentication.replication.sslmode", "PATRONI_REPLICATION_SSLMODE", &[]),
];

/// The YAML of `SPILO_CONFIGURATION` (or `PATRONI_CONFIGURATION`), if set:
/// `env` with the variables it replaces, and the rest.
pub(super) fn apply(env: &BTreeMap<String, String>) -> Result<(BTreeMap<String, String>, Overlay), ConfigError> {
    let set = |k: &str| env.get(k).filter(|v| !v.trim().is_empty());
    let (var, text) = match (set(VAR), set(OLD_VAR)) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(OLD_VAR, format!("both {VAR} and {OLD_VAR} are set; set only {VAR}")));
        }
        (Some(t), None) => (VAR, t),
        (None, Some(t)) => (OLD_VAR, t),
        (None, None) => return Ok((env.clone(), Overlay::default())),
    };
    let err = |m: String| ConfigError::new(var, m);
    let root: Value = serde_yaml_ng::from_str(text).map_err(|e| err(format!("not valid YAML: {e}")))?;
    let root = match root {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => return Err(err(format!("must be a YAML mapping (Patroni's configuration), not {}", kind(&other)))),
    };
    let mut env = env.clone();
    let mut out = Overlay::default();
    walk(var, "", &root, &mut env, &mut out)?;
    if let Some(l) = &out.initdb_locale {
        env.insert("INITDB_LOCALE".to_owned(), l.clone());
    }
    Ok((env, out))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

/// A scalar as a variable's value; `None` for null (the variable unset).
fn scalar(var: &str, path: &str, v: &Value) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        // etcd3.hosts as a YAML list, as Patroni accepts it.
        Value::Array(items) if path.ends_with("hosts") => {
            let hosts: Option<Vec<String>> = items.iter().map(|h| h.as_str().map(str::to_owned)).collect();
            hosts
                .map(|h| Some(h.join(",")))
                .ok_or_else(|| ConfigError::new(var, format!("{path}: a list of host:port")))
        }
        other => Err(ConfigError::new(var, format!("{path}: expected a single value, found {}", kind(other)))),
    }
}

fn walk(
    var: &str,
    prefix: &str,
    map: &Map<String, Value>,
    env: &mut BTreeMap<String, String>,
    out: &mut Overlay,
) -> Result<(), ConfigError> {
    let err = |m: String| ConfigError::new(var, m);
    for (key, value) in map {
        let path = join(prefix, key);
        if let Some((_, target, others)) = VARIABLES.iter().find(|(p, _, _)| *p == path) {
            for o in *others {
                env.remove(*o);
            }
            match scalar(var, &path, value)? {
                Some(v) => env.insert((*target).to_owned(), v),
                None => env.remove(*target),
            };
            continue;
        }
        match (path.as_str(), value) {
            (_, Value::Object(m))
                if ["restapi", "etcd3", "postgresql", "bootstrap"].contains(&path.as_str())
                    || path.starts_with("restapi.authentication")
                    || path.starts_with("postgresql.authentication") =>
            {
                walk(var, &path, m, env, out)?;
            }
            ("bootstrap.dcs", Value::Object(m)) => out.bootstrap_dcs = Some(m.clone()),
            ("bootstrap.dcs", other) => {
                return Err(err(format!("bootstrap.dcs must be a mapping, not {}", kind(other))));
            }
            ("bootstrap.initdb", Value::Array(items)) => initdb(var, items, out)?,
            ("postgresql.parameters", Value::Object(m)) => out.parameters = m.clone(),
            ("postgresql.parameters", Value::Null) => {}
            ("postgresql.pg_hba", Value::Array(lines)) => {
                let lines: Option<Vec<String>> = lines.iter().map(|l| l.as_str().map(str::to_owned)).collect();
                let lines = lines.ok_or_else(|| err("postgresql.pg_hba: a list of pg_hba.conf lines".into()))?;
                if lines.iter().any(|l| l.contains('\n') || l.contains('\0')) {
                    return Err(err("postgresql.pg_hba: a line contains a newline".into()));
                }
                out.pg_hba = Some(lines);
            }
            ("postgresql.callbacks", Value::Object(m)) => {
                for (action, cmd) in m {
                    if !CALLBACK_ACTIONS.contains(&action.as_str()) {
                        out.warnings.push(format!(
                            "{var}: postgresql.callbacks.{action} is not one of Patroni's callbacks ({}): ignored",
                            CALLBACK_ACTIONS.join(", ")
                        ));
                        continue;
                    }
                    out.callbacks.insert(action.clone(), scalar(var, &format!("{path}.{action}"), cmd)?);
                }
            }
            ("postgresql.create_replica_methods", Value::Array(items)) => {
                let mut methods = Vec::new();
                for item in items {
                    let name = item.as_str().ok_or_else(|| err(format!("{path}: a list of method names")))?;
                    match REPLICA_METHODS.iter().find(|(n, _)| *n == name) {
                        Some((_, m)) if !methods.contains(m) => methods.push(*m),
                        Some(_) => {}
                        None => out.warnings.push(format!(
                            "{var}: replica method {name:?} is not one tusk has (it has {}): left out",
                            REPLICA_METHODS.map(|(n, _)| n).join(", ")
                        )),
                    }
                }
                if methods.is_empty() {
                    return Err(err(format!("{path}: none of these methods is one tusk has")));
                }
                out.replica_methods = Some(methods);
            }
            ("postgresql.remove_data_directory_on_rewind_failure", v) => {
                out.remove_data_on_rewind_failure = Some(truthy(v).ok_or_else(|| err(format!("{path}: a boolean")))?);
            }
            ("tags", Value::Object(m)) => {
                for (tag, v) in m {
                    let v = if ["nofailover", "noloadbalance", "nosync", "nostream"].contains(&tag.as_str()) {
                        Value::Bool(truthy(v).ok_or_else(|| err(format!("tags.{tag}: a boolean")))?)
                    } else {
                        v.clone()
                    };
                    out.tags.insert(tag.clone(), v);
                }
            }
            _ => out.warnings.push(format!("{var}: {path} is not supported by tusk (ignored)")),
        }
    }
    Ok(())
}

/// Patroni's booleans: YAML's, or the strings it accepts.
fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

/// initdb options tusk sets itself and that must not change.
const INITDB_OWN: [&str; 6] = ["pgdata", "username", "pwfile", "pwprompt", "auth-local", "no-sync"];

/// `bootstrap.initdb`: Patroni's list of `name` and `{name: value}` items.
fn initdb(var: &str, items: &[Value], out: &mut Overlay) -> Result<(), ConfigError> {
    let err = |m: String| ConfigError::new(var, m);
    for item in items {
        let (name, value) = match item {
            Value::String(s) => (s.clone(), None),
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                (k.clone(), scalar(var, &format!("bootstrap.initdb.{k}"), v)?)
            }
            other => {
                return Err(err(format!("bootstrap.initdb: an item is {}, not a name or name: value", kind(other))));
            }
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || name.is_empty() {
            return Err(err(format!("bootstrap.initdb: {name:?} is not an initdb option")));
        }
        if INITDB_OWN.contains(&name.as_str()) {
            out.warnings.push(format!("{var}: bootstrap.initdb.{name} is set by tusk itself (ignored)"));
            continue;
        }
        match (name.as_str(), value) {
            ("locale", Some(l)) => out.initdb_locale = Some(l),
            (_, Some(v)) => out.initdb.push(format!("--{name}={v}")),
            (_, None) => out.initdb.push(format!("--{name}")),
        }
    }
    Ok(())
}

/// `b` merged into `a`: mappings key by key, `b` winning; anything else
/// (lists included) replaced, as Spilo merges.
pub(super) fn deep_merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(x) => deep_merge(x, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn keys_with_variables_replace_them_and_their_aliases() {
        let yaml = "scope: batman\nrestapi:\n  listen: 0.0.0.0:8009\n  authentication: {username: u, password: p}\n\
                    postgresql:\n  authentication:\n    superuser: {password: s3cret}\n  connect_address: 10.0.0.9:5433\n\
                    etcd3:\n  hosts: [a:2379, b:2379]\n";
        let (e, o) = apply(&env(&[
            ("SPILO_CONFIGURATION", yaml),
            ("SCOPE", "superman"),
            ("APIPORT", "8008"),
            ("PGPASSWORD_SUPERUSER_FILE", "/nowhere"),
            ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "10.0.0.1:5432"),
            ("ETCD3_HOST", "c:2379"),
        ]))
        .unwrap();
        assert_eq!(e["SCOPE"], "batman");
        assert_eq!(e["PATRONI_RESTAPI_LISTEN"], "0.0.0.0:8009");
        assert!(!e.contains_key("APIPORT"));
        assert_eq!((e["PATRONI_RESTAPI_USERNAME"].as_str(), e["PATRONI_RESTAPI_PASSWORD"].as_str()), ("u", "p"));
        assert_eq!(e["PGPASSWORD_SUPERUSER"], "s3cret");
        assert!(!e.contains_key("PGPASSWORD_SUPERUSER_FILE"));
        assert_eq!(e["PG_CONNECT_ADDRESS"], "10.0.0.9:5433");
        assert!(!e.contains_key("PATRONI_POSTGRESQL_CONNECT_ADDRESS"));
        assert_eq!(e["ETCD3_HOSTS"], "a:2379,b:2379");
        assert!(!e.contains_key("ETCD3_HOST"));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn structured_keys_and_warnings() {
        let yaml = r#"
bootstrap:
  dcs:
    ttl: 20
    postgresql: {parameters: {max_connections: 200}}
  initdb: [data-checksums, {encoding: UTF8}, {locale: en_US.UTF-8}, {auth-local: md5}]
  users: {}
postgresql:
  parameters: {work_mem: 8MB, log_min_duration_statement: 500}
  pg_hba: ["local all all trust", "hostssl all all 0.0.0.0/0 md5"]
  callbacks: {on_role_change: /bin/vip.sh, on_reload: "echo 'x y'", on_switch: /bin/no}
  create_replica_methods: [wal_e, custom, basebackup_fast_xlog]
  remove_data_directory_on_rewind_failure: "on"
  bin_dir: /usr/lib/postgresql/15/bin
tags: {nofailover: "true", clonefrom: true, failover_priority: 3}
watchdog: {mode: off}
"#;
        let (_, o) = apply(&env(&[("PATRONI_CONFIGURATION", yaml)])).unwrap();
        assert_eq!(o.bootstrap_dcs.as_ref().unwrap()["ttl"], 20);
        assert_eq!(o.initdb, ["--data-checksums", "--encoding=UTF8"]);
        assert_eq!(o.initdb_locale.as_deref(), Some("en_US.UTF-8"));
        assert_eq!(o.parameters["work_mem"], "8MB");
        assert_eq!(o.pg_hba.as_ref().unwrap().len(), 2);
        assert_eq!(o.callbacks["on_role_change"].as_deref(), Some("/bin/vip.sh"));
        assert_eq!(o.callbacks["on_reload"].as_deref(), Some("echo 'x y'"));
        assert_eq!(o.replica_methods, Some(vec![ReplicaMethod::Backup, ReplicaMethod::Basebackup]));
        assert_eq!(o.remove_data_on_rewind_failure, Some(true));
        assert_eq!(o.tags["nofailover"], Value::Bool(true));
        assert_eq!(o.tags["failover_priority"], 3);
        let w = o.warnings.join("\n");
        for named in [
            "bootstrap.users",
            "postgresql.bin_dir",
            "watchdog",
            "on_switch",
            "\"custom\"",
            "PATRONI_CONFIGURATION",
            "auth-local",
        ] {
            assert!(w.contains(named), "{named} not named in:\n{w}");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        for (yaml, says) in [
            ("scope: [a, b]", "scope"),
            ("- a\n- b", "mapping"),
            ("postgresql: {create_replica_methods: [custom]}", "none of these"),
            ("bootstrap: {dcs: 3}", "bootstrap.dcs"),
            ("key: [unclosed", "YAML"),
            ("tags: {nofailover: maybe}", "tags.nofailover"),
            ("postgresql: {pg_hba: [1, 2]}", "pg_hba"),
        ] {
            let e = apply(&env(&[("SPILO_CONFIGURATION", yaml)])).unwrap_err();
            assert_eq!(e.var, "SPILO_CONFIGURATION", "{yaml}");
            assert!(e.message.contains(says), "{yaml}: {}", e.message);
        }
        let e = apply(&env(&[("SPILO_CONFIGURATION", "{}"), ("PATRONI_CONFIGURATION", "{}")])).unwrap_err();
        assert_eq!(e.var, "PATRONI_CONFIGURATION");
        // Unset or empty: the environment as it is.
        let plain = env(&[("SCOPE", "x"), ("SPILO_CONFIGURATION", " ")]);
        assert_eq!(apply(&plain).unwrap(), (plain.clone(), Overlay::default()));
    }

    #[test]
    fn deep_merge_replaces_lists_and_keeps_siblings() {
        let mut a =
            serde_json::json!({"ttl": 30, "postgresql": {"use_slots": true, "parameters": {"a": 1}}, "l": [1, 2]});
        deep_merge(&mut a, &serde_json::json!({"postgresql": {"parameters": {"b": 2}}, "l": [3]}));
        assert_eq!(
            a,
            serde_json::json!({"ttl": 30, "postgresql": {"use_slots": true, "parameters": {"a": 1, "b": 2}}, "l": [3]})
        );
    }
}
