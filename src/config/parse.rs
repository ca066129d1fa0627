//! Typed parsing of single variables. Every error names its variable.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, LogFormat, SUPPORTED_PG_VERSIONS, Secret};

/// `a` and its alias `b`: either may be set; both set to different values is an error.
pub(super) fn alias(
    a_var: &str,
    a: &Option<String>,
    b_var: &str,
    b: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => {
            Err(ConfigError::new(a_var, format!("{a_var}={x:?} contradicts {b_var}={y:?}; set one of them")))
        }
        (Some(x), _) => Ok(Some(x.clone())),
        (None, y) => Ok(y.clone()),
    }
}

/// A secret given as `VAR` or as `VAR_FILE` (a path whose content is the
/// value, without the trailing newline). Both set is an error.
pub(super) fn secret(env: &BTreeMap<String, String>, var: &str) -> Result<Option<Secret>, ConfigError> {
    let file_var = format!("{var}_FILE");
    let value = env.get(var).filter(|v| !v.is_empty());
    let file = env.get(&file_var).filter(|v| !v.is_empty());
    match (value, file) {
        (Some(_), Some(_)) => {
            Err(ConfigError::new(&file_var, format!("both {var} and {file_var} are set; set only one")))
        }
        (Some(v), None) => Ok(Some(Secret::new(v.clone()))),
        (None, Some(path)) => {
            let content = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(&file_var, format!("cannot read {path}: {e}")))?;
            let content = content.strip_suffix('\n').unwrap_or(&content);
            let content = content.strip_suffix('\r').unwrap_or(content);
            if content.is_empty() {
                return Err(ConfigError::new(&file_var, format!("{path} is empty")));
            }
            Ok(Some(Secret::new(content)))
        }
        (None, None) => Ok(None),
    }
}

/// Names used as etcd path components and member names.
pub(super) fn validate_name(var: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 128 {
        return Err(ConfigError::new(var, "must be 1 to 128 characters"));
    }
    if !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ConfigError::new(var, format!("{v:?} may only contain letters, digits, '-', '_' and '.'")));
    }
    Ok(())
}

pub(super) fn validate_role_name(var: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 63 {
        return Err(ConfigError::new(var, "a role name must be 1 to 63 bytes"));
    }
    if v.chars().any(|c| c.is_control() || c == '"') {
        return Err(ConfigError::new(var, "a role name may not contain control characters or '\"'"));
    }
    Ok(())
}

pub(super) fn parse_pg_version(v: Option<&str>) -> Result<u32, ConfigError> {
    let Some(v) = v else { return Ok(15) };
    let major = v
        .trim()
        .parse::<u32>()
        .map_err(|_| ConfigError::new("PGVERSION", format!("{v:?} is not a PostgreSQL major version such as 15")))?;
    if !SUPPORTED_PG_VERSIONS.contains(&major) {
        return Err(ConfigError::new(
            "PGVERSION",
            format!(
                "{major} is not supported (supported: {} to {})",
                SUPPORTED_PG_VERSIONS.start(),
                SUPPORTED_PG_VERSIONS.end()
            ),
        ));
    }
    Ok(major)
}

pub(super) fn abs_path(var: &str, v: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let p = PathBuf::from(v);
    if !p.is_absolute() {
        return Err(ConfigError::new(var, format!("{v:?} is not an absolute path")));
    }
    if v.contains('\'') || v.contains('\n') {
        return Err(ConfigError::new(var, "a path may not contain quotes or newlines"));
    }
    Ok(Some(p))
}

pub(super) fn parse_port(var: &str, v: Option<&str>, default: u16) -> Result<u16, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(ConfigError::new(var, format!("{v:?} is not a TCP port (1-65535)"))),
        Ok(p) => Ok(p),
    }
}

/// `host:port` (IPv6 as `[addr]:port`); default `<host address>:<port>`.
pub(super) fn connect_address(var: &str, v: Option<&str>, ip: IpAddr, port: u16) -> Result<String, ConfigError> {
    let Some(v) = v else {
        return Ok(match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        });
    };
    let (host, port) = split_host_port(v).ok_or_else(|| ConfigError::new(var, format!("{v:?} is not host:port")))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(ConfigError::new(var, format!("{v:?} is not host:port")));
    }
    Ok(v.to_owned())
}

/// Splits `host:port` and `[v6]:port`.
pub(super) fn split_host_port(v: &str) -> Option<(&str, &str)> {
    if let Some(rest) = v.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host, port));
    }
    let (host, port) = v.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

pub(super) fn parse_bool(var: &str, v: Option<&str>) -> Result<Option<bool>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Ok(Some(true)),
        "0" | "false" | "no" | "off" | "n" => Ok(Some(false)),
        _ => Err(ConfigError::new(var, format!("{v:?} is not a boolean (true/false)"))),
    }
}

/// `8`, `8s`, `1500ms`, `2m`.
pub(super) fn parse_duration(var: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let t = v.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let bad = || ConfigError::new(var, format!("{v:?} is not a duration such as 8, 8s, 1500ms or 2m"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn parse_log_format(v: Option<&str>) -> Result<LogFormat, ConfigError> {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(ConfigError::new("TUSK_LOG_FORMAT", format!("{other:?} is not one of text, json"))),
    }
}

/// Parameters tusk sets itself; `TUSK_PG_PARAMETERS` may not override them.
pub(crate) const MANAGED_PARAMETERS: &[(&str, &str)] = &[
    ("data_directory", "PGDATA"),
    ("config_file", "PGDATA"),
    ("hba_file", "PGDATA"),
    ("ident_file", "PGDATA"),
    ("external_pid_file", "PGDATA"),
    ("port", "PGPORT"),
    ("unix_socket_directories", "TUSK_SOCKET_DIR"),
    ("restart_after_crash", "tusk (always off: tusk decides what happens after a crash)"),
    ("logging_collector", "tusk (postgres logs go to tusk's log stream)"),
    ("archive_mode", "tusk"),
    ("archive_command", "tusk"),
    ("restore_command", "tusk"),
    ("primary_conninfo", "tusk"),
    ("primary_slot_name", "tusk"),
    ("ssl", "ALLOW_NOSSL"),
    ("ssl_cert_file", "SSL_CERTIFICATE_FILE"),
    ("ssl_key_file", "SSL_PRIVATE_KEY_FILE"),
    ("ssl_ca_file", "SSL_CA_FILE"),
];

/// Postgres parameters derived from the memory limit like Spilo's
/// (`shared_buffers` = 1/4, `max_connections` = clamp(MB/30, 100, 1000)),
/// then the JSON object in `TUSK_PG_PARAMETERS` on top, then
/// `SPILO_CONFIGURATION`'s `postgresql.parameters` (`spilo`).
pub(super) fn pg_parameters(
    v: Option<&str>,
    spilo: &serde_json::Map<String, serde_json::Value>,
    memory_bytes: u64,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mem_mb = memory_bytes / (1 << 20);
    let mut params = BTreeMap::new();
    params.insert("shared_buffers".to_owned(), format!("{}MB", (mem_mb / 4).max(16)));
    params.insert("max_connections".to_owned(), (mem_mb / 30).clamp(100, 1000).to_string());
    if let Some(v) = v {
        const VAR: &str = "TUSK_PG_PARAMETERS";
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(v)
            .map_err(|e| ConfigError::new(VAR, format!("not a JSON object of parameter names to values: {e}")))?;
        add_parameters(VAR, "", &obj, &mut params)?;
    }
    add_parameters(super::spilo::VAR, "postgresql.parameters.", spilo, &mut params)?;
    Ok(params)
}

/// `obj`'s parameters into `params`, each checked; errors name `var`.
fn add_parameters(
    var: &str,
    path: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    params: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in obj {
        let name = name.to_ascii_lowercase();
        let valid_name = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err(ConfigError::new(var, format!("{path}{name:?} is not a parameter name")));
        }
        if let Some((_, owner)) = MANAGED_PARAMETERS.iter().find(|(p, _)| *p == name) {
            return Err(ConfigError::new(var, format!("{path}{name} is managed by {owner}")));
        }
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
            other => {
                return Err(ConfigError::new(var, format!("{path}{name}: {other} is not a string, number or boolean")));
            }
        };
        if value.contains('\n') || value.contains('\0') {
            return Err(ConfigError::new(var, format!("{path}{name}: value contains a newline")));
        }
        params.insert(name, value);
    }
    Ok(())
}
