//! The REST API's variables: port and address (in `mod.rs`), basic
//! authentication for write methods, TLS and client certificates.

use std::collections::BTreeMap;

use serde::Serialize;

use super::parse::{secret, split_host_port};
use super::{ConfigError, Pem, Secret, check_certs, check_key, pem_source};

#[derive(Debug, Clone, Serialize)]
pub struct ApiConfig {
    pub port: u16,
    /// `host:port` of the REST API as others reach it (`RESTAPI_CONNECT_ADDRESS`).
    pub connect_address: String,
    /// `PATRONI_RESTAPI_USERNAME` / `PATRONI_RESTAPI_PASSWORD`: required for
    /// every write method (POST, PUT, PATCH, DELETE). Health checks stay open.
    pub auth: Option<BasicAuth>,
    /// `SSL_RESTAPI_*`: the API serves HTTPS only.
    pub tls: Option<ApiTls>,
}

impl ApiConfig {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The URL other members and clients use (`api_url` in the member key).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.connect_address)
    }

    /// The host name part of `connect_address` (the name a client checks in
    /// the server certificate).
    pub fn connect_host(&self) -> &str {
        split_host_port(&self.connect_address).map_or(self.connect_address.as_str(), |(h, _)| h)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiTls {
    pub cert: Pem,
    pub key: Pem,
    /// `SSL_RESTAPI_CA`: client certificates are checked against it.
    pub ca: Option<Pem>,
    pub verify_client: VerifyClient,
}

/// Patroni's `restapi.verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyClient {
    /// No client certificates are asked for.
    None,
    /// A certificate, if presented, must chain to the CA (else the TLS
    /// handshake fails); write methods require one. Health checks without a
    /// certificate are served. The default when a CA is given.
    Optional,
    /// Every connection must present a certificate signed by the CA.
    Required,
}

pub(super) fn parse(
    env: &BTreeMap<String, String>,
    port: u16,
    connect_address: String,
) -> Result<ApiConfig, ConfigError> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let username = get("PATRONI_RESTAPI_USERNAME");
    let password = secret(env, "PATRONI_RESTAPI_PASSWORD")?;
    let auth = match (username, password) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "PATRONI_RESTAPI_PASSWORD",
                "PATRONI_RESTAPI_USERNAME is set but no password",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "PATRONI_RESTAPI_USERNAME",
                "PATRONI_RESTAPI_PASSWORD is set but no user name",
            ));
        }
        (Some(u), Some(p)) => {
            if u.contains(':') {
                return Err(ConfigError::new("PATRONI_RESTAPI_USERNAME", "must not contain ':' (HTTP basic auth)"));
            }
            Some(BasicAuth { username: u, password: p })
        }
    };

    let cert = pem_source(
        "SSL_RESTAPI_CERTIFICATE",
        &get("SSL_RESTAPI_CERTIFICATE"),
        "SSL_RESTAPI_CERTIFICATE_FILE",
        &get("SSL_RESTAPI_CERTIFICATE_FILE"),
    )?;
    let key = pem_source(
        "SSL_RESTAPI_PRIVATE_KEY",
        &get("SSL_RESTAPI_PRIVATE_KEY"),
        "SSL_RESTAPI_PRIVATE_KEY_FILE",
        &get("SSL_RESTAPI_PRIVATE_KEY_FILE"),
    )?;
    let ca = pem_source("SSL_RESTAPI_CA", &get("SSL_RESTAPI_CA"), "SSL_RESTAPI_CA_FILE", &get("SSL_RESTAPI_CA_FILE"))?;
    let verify = get("PATRONI_RESTAPI_VERIFY_CLIENT");
    let var =
        |pem: &Pem, file: &'static str, inline: &'static str| if matches!(pem, Pem::File(_)) { file } else { inline };
    let tls = match (cert, key) {
        (None, None) => {
            if ca.is_some() {
                return Err(ConfigError::new(
                    "SSL_RESTAPI_CA_FILE",
                    "a CA for client certificates needs SSL_RESTAPI_CERTIFICATE_FILE and SSL_RESTAPI_PRIVATE_KEY_FILE",
                ));
            }
            if verify.is_some() {
                return Err(ConfigError::new(
                    "PATRONI_RESTAPI_VERIFY_CLIENT",
                    "needs TLS (SSL_RESTAPI_CERTIFICATE_FILE)",
                ));
            }
            None
        }
        (Some(_), None) => {
            return Err(ConfigError::new("SSL_RESTAPI_PRIVATE_KEY_FILE", "a certificate is given but no private key"));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new("SSL_RESTAPI_CERTIFICATE_FILE", "a private key is given but no certificate"));
        }
        (Some(cert), Some(key)) => {
            check_certs(var(&cert, "SSL_RESTAPI_CERTIFICATE_FILE", "SSL_RESTAPI_CERTIFICATE"), &cert)?;
            check_key(var(&key, "SSL_RESTAPI_PRIVATE_KEY_FILE", "SSL_RESTAPI_PRIVATE_KEY"), &key)?;
            if let Some(ca) = &ca {
                check_certs(var(ca, "SSL_RESTAPI_CA_FILE", "SSL_RESTAPI_CA"), ca)?;
            }
            let verify_client = match verify.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None => {
                    if ca.is_some() {
                        VerifyClient::Optional
                    } else {
                        VerifyClient::None
                    }
                }
                Some("none") => VerifyClient::None,
                Some("optional") => VerifyClient::Optional,
                Some("required") => VerifyClient::Required,
                Some(other) => {
                    return Err(ConfigError::new(
                        "PATRONI_RESTAPI_VERIFY_CLIENT",
                        format!("{other:?}: expected none, optional or required"),
                    ));
                }
            };
            if verify_client != VerifyClient::None && ca.is_none() {
                return Err(ConfigError::new(
                    "PATRONI_RESTAPI_VERIFY_CLIENT",
                    "verifying client certificates needs SSL_RESTAPI_CA_FILE",
                ));
            }
            Some(ApiTls { cert, key, ca, verify_client })
        }
    };
    Ok(ApiConfig { port, connect_address, auth, tls })
}
