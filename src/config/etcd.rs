//! The DCS variables: `ETCD3_*` and their `PATRONI_ETCD3_*` aliases.

use std::path::PathBuf;

use serde::Serialize;

use super::parse::{abs_path, alias, split_host_port};
use super::{ConfigError, Pem, RawEnv, Secret, check_certs, check_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdProtocol {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdEndpoint {
    pub host: String,
    pub port: u16,
}

impl EtcdEndpoint {
    pub fn url(&self, protocol: EtcdProtocol) -> String {
        let scheme = match protocol {
            EtcdProtocol::Http => "http",
            EtcdProtocol::Https => "https",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Where and how to reach etcd v3.
#[derive(Debug, Clone, Serialize)]
pub struct EtcdConfig {
    pub endpoints: Vec<EtcdEndpoint>,
    pub protocol: EtcdProtocol,
    /// CA that signs the etcd servers' certificates (`ETCD3_CACERT`).
    pub cacert: Option<PathBuf>,
    /// Client certificate (`ETCD3_CERT`) and key (`ETCD3_KEY`, or inside the certificate file).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl EtcdConfig {
    /// This member proves who it is to etcd (a client certificate or a
    /// user): the etcd is meant to refuse strangers, so it may hold secrets.
    pub fn authenticates_clients(&self) -> bool {
        self.cert.is_some() || self.username.is_some()
    }
}

fn pick(raw_a: &Option<String>, a: &str, raw_b: &Option<String>, b: &str) -> Result<Option<String>, ConfigError> {
    alias(a, raw_a, b, raw_b)
}

/// `None` when no DCS variable is set (standalone mode).
pub(super) fn parse(raw: &RawEnv) -> Result<Option<EtcdConfig>, ConfigError> {
    let hosts = pick(&raw.etcd3_hosts, "ETCD3_HOSTS", &raw.patroni_etcd3_hosts, "PATRONI_ETCD3_HOSTS")?;
    let host = pick(&raw.etcd3_host, "ETCD3_HOST", &raw.patroni_etcd3_host, "PATRONI_ETCD3_HOST")?;
    let protocol = pick(&raw.etcd3_protocol, "ETCD3_PROTOCOL", &raw.patroni_etcd3_protocol, "PATRONI_ETCD3_PROTOCOL")?;
    let cacert = pick(&raw.etcd3_cacert, "ETCD3_CACERT", &raw.patroni_etcd3_cacert, "PATRONI_ETCD3_CACERT")?;
    let cert = pick(&raw.etcd3_cert, "ETCD3_CERT", &raw.patroni_etcd3_cert, "PATRONI_ETCD3_CERT")?;
    let key = pick(&raw.etcd3_key, "ETCD3_KEY", &raw.patroni_etcd3_key, "PATRONI_ETCD3_KEY")?;
    let username = pick(&raw.etcd3_username, "ETCD3_USERNAME", &raw.patroni_etcd3_username, "PATRONI_ETCD3_USERNAME")?;
    let password = match (&raw.etcd3_password, &raw.etcd3_password_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "ETCD3_PASSWORD_FILE",
                "both ETCD3_PASSWORD and ETCD3_PASSWORD_FILE are set; set only one",
            ));
        }
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| ConfigError::new("ETCD3_PASSWORD_FILE", format!("cannot read {path}: {e}")))?,
        ),
        (p, None) => pick(p, "ETCD3_PASSWORD", &raw.patroni_etcd3_password, "PATRONI_ETCD3_PASSWORD")?,
    };

    let (list_var, list) = match (&hosts, &host) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("ETCD3_HOST", "both ETCD3_HOSTS and ETCD3_HOST are set; set one of them"));
        }
        (Some(h), None) => ("ETCD3_HOSTS", h.clone()),
        (None, Some(h)) => ("ETCD3_HOST", h.clone()),
        (None, None) => {
            // Any other DCS variable without hosts is a half-done setup, not standalone mode.
            let stray = [
                ("ETCD3_PROTOCOL", &protocol),
                ("ETCD3_CACERT", &cacert),
                ("ETCD3_CERT", &cert),
                ("ETCD3_KEY", &key),
                ("ETCD3_USERNAME", &username),
                ("ETCD3_PASSWORD", &password),
            ];
            if let Some((var, _)) = stray.iter().find(|(_, v)| v.is_some()) {
                return Err(ConfigError::new(*var, "is set but ETCD3_HOSTS is not; set ETCD3_HOSTS or unset it"));
            }
            return Ok(None);
        }
    };

    let (schemes, endpoints) = parse_host_list(list_var, &list)?;
    let explicit = match protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("http") => Some(EtcdProtocol::Http),
        Some("https") => Some(EtcdProtocol::Https),
        Some(other) => return Err(ConfigError::new("ETCD3_PROTOCOL", format!("{other:?} is not http or https"))),
    };
    let mut protocol = explicit;
    for s in schemes.into_iter().flatten() {
        match protocol {
            Some(p) if p != s => {
                return Err(ConfigError::new(
                    list_var,
                    format!("the URL scheme {} contradicts ETCD3_PROTOCOL or another host's scheme", scheme_name(s)),
                ));
            }
            _ => protocol = Some(s),
        }
    }
    let any_tls_file = cacert.is_some() || cert.is_some() || key.is_some();
    let protocol = match protocol {
        Some(EtcdProtocol::Http) if any_tls_file => {
            return Err(ConfigError::new(
                "ETCD3_PROTOCOL",
                "is http but ETCD3_CACERT/ETCD3_CERT/ETCD3_KEY are set; use https",
            ));
        }
        Some(p) => p,
        None if any_tls_file => EtcdProtocol::Https,
        None => EtcdProtocol::Http,
    };

    let cacert = abs_path("ETCD3_CACERT", cacert.as_deref())?;
    let cert = abs_path("ETCD3_CERT", cert.as_deref())?;
    let key = abs_path("ETCD3_KEY", key.as_deref())?;
    if let Some(ca) = &cacert {
        check_certs("ETCD3_CACERT", &Pem::File(ca.clone()))?;
    }
    match (&cert, &key) {
        (Some(c), Some(k)) => {
            check_certs("ETCD3_CERT", &Pem::File(c.clone()))?;
            check_key("ETCD3_KEY", &Pem::File(k.clone()))?;
        }
        (Some(c), None) => {
            check_certs("ETCD3_CERT", &Pem::File(c.clone()))?;
            check_key("ETCD3_KEY", &Pem::File(c.clone()))
                .map_err(|_| ConfigError::new("ETCD3_KEY", "not set, and the ETCD3_CERT file holds no private key"))?;
        }
        (None, Some(_)) => return Err(ConfigError::new("ETCD3_KEY", "is set but ETCD3_CERT is not")),
        (None, None) => {}
    }
    match (&username, &password) {
        (Some(_), None) => return Err(ConfigError::new("ETCD3_PASSWORD", "ETCD3_USERNAME is set but no password")),
        (None, Some(_)) => return Err(ConfigError::new("ETCD3_USERNAME", "ETCD3_PASSWORD is set but no user name")),
        _ => {}
    }
    Ok(Some(EtcdConfig { endpoints, protocol, cacert, cert, key, username, password: password.map(Secret::new) }))
}

fn scheme_name(p: EtcdProtocol) -> &'static str {
    match p {
        EtcdProtocol::Http => "http",
        EtcdProtocol::Https => "https",
    }
}

/// Both of Spilo's forms: `h1:2379,h2:2379` and `'h1:2379','h2:2379'` (or
/// with double quotes, or a YAML-style `[...]` list); each host with or
/// without `http(s)://`; port 2379 when missing.
pub(super) fn parse_host_list(
    var: &str,
    list: &str,
) -> Result<(Vec<Option<EtcdProtocol>>, Vec<EtcdEndpoint>), ConfigError> {
    let body = list.trim();
    let body = body.strip_prefix('[').and_then(|b| b.strip_suffix(']')).unwrap_or(body);
    let mut schemes = Vec::new();
    let mut endpoints: Vec<EtcdEndpoint> = Vec::new();
    for item in body.split(',') {
        let item = item.trim();
        let item = ['\'', '"']
            .iter()
            .find_map(|q| item.strip_prefix(*q).and_then(|i| i.strip_suffix(*q)))
            .unwrap_or(item)
            .trim();
        if item.is_empty() {
            return Err(ConfigError::new(var, format!("{list:?}: empty host in the list")));
        }
        if item.contains(['\'', '"', ' ']) {
            return Err(ConfigError::new(var, format!("{list:?}: cannot parse {item:?} as host:port")));
        }
        let (scheme, rest) = if let Some(r) = item.strip_prefix("https://") {
            (Some(EtcdProtocol::Https), r)
        } else if let Some(r) = item.strip_prefix("http://") {
            (Some(EtcdProtocol::Http), r)
        } else if item.contains("://") {
            return Err(ConfigError::new(var, format!("{item:?}: only http:// and https:// are supported")));
        } else {
            (None, item)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match split_host_port(rest) {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| ConfigError::new(var, format!("{item:?}: {p:?} is not a port")))?;
                (h.to_owned(), port)
            }
            None if !rest.contains(':') || rest.parse::<std::net::Ipv6Addr>().is_ok() => (rest.to_owned(), 2379),
            None => return Err(ConfigError::new(var, format!("{item:?} is not host:port"))),
        };
        if host.is_empty() || host.contains('/') {
            return Err(ConfigError::new(var, format!("{item:?} is not host:port")));
        }
        let ep = EtcdEndpoint { host, port };
        if !endpoints.contains(&ep) {
            endpoints.push(ep);
        }
        schemes.push(scheme);
    }
    Ok((schemes, endpoints))
}
