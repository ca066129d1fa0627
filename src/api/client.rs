//! The client side of the REST API: peers asking each other for their
//! status during a failover, the switchover checks, and the `tusk` CLI
//! (`switchover`, `restart`, `healthcheck`, ...). HTTP or HTTPS as the
//! API is configured; over HTTPS it trusts `SSL_RESTAPI_CA` (else the API's
//! own certificate) and presents the API's certificate as its client
//! certificate; it sends basic auth when `PATRONI_RESTAPI_USERNAME` is set.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use super::status::NodeStatus;
use crate::config::{ApiConfig, BasicAuth, Pem};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("REST API TLS: {0}")]
    Tls(String),
    #[error("bad URL {0:?}")]
    Url(String),
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("{url}: no answer within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
}

/// Largest answer read from an API (a `/cluster` of many members fits).
const MAX_ANSWER: usize = 4 << 20;

#[derive(Clone)]
pub struct ApiClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    auth: Option<BasicAuth>,
}

impl ApiClient {
    /// `any_name`: accept a server certificate that chains to the trusted
    /// roots whatever names it carries (for `tusk healthcheck`, which talks
    /// to its own node over loopback).
    pub fn new(api: &ApiConfig, any_name: bool) -> Result<ApiClient, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let mut identity = None;
        if let Some(tls) = &api.tls {
            let anchors = read_certs(tls.ca.as_ref().unwrap_or(&tls.cert))?;
            for c in anchors {
                roots.add(c).map_err(|e| ClientError::Tls(format!("trust anchor: {e}")))?;
            }
            if tls.ca.is_some() {
                let chain = read_certs(&tls.cert)?;
                let key = PrivateKeyDer::from_pem_slice(&tls.key.read().map_err(|e| ClientError::Tls(e.to_string()))?)
                    .map_err(|e| ClientError::Tls(format!("private key: {e}")))?;
                identity = Some((chain, key));
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let roots = Arc::new(roots);
        let builder = if any_name && !roots.is_empty() {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyName(inner)))
        } else {
            builder.with_root_certificates(roots)
        };
        let tls = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(ApiClient { http, auth: api.auth.clone() })
    }

    /// Sends one request; returns the status and the body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let uri: hyper::Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if let Some(a) = &self.auth {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", a.username, a.password.expose()));
            req = req.header(hyper::header::AUTHORIZATION, format!("Basic {token}"));
        }
        let payload = match body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).expect("JSON values serialize"))
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        let fetch = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Request { url: url.to_owned(), message: error_chain(&e) })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Request { url: url.to_owned(), message: e.to_string() })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| ClientError::Timeout { url: url.to_owned(), timeout_ms: timeout.as_millis() as u64 })?
    }

    /// A peer's status (`api_url` from its member key); `None` when it does
    /// not answer in time or answers something else.
    pub async fn peer_status(&self, api_url: &str, timeout: Duration) -> Option<NodeStatus> {
        match self.request(Method::GET, api_url, None, timeout).await {
            Ok((_, body)) => serde_json::from_slice::<NodeStatus>(&body).ok(),
            Err(e) => {
                tracing::debug!(error = %e, "peer status");
                None
            }
        }
    }
}

/// `http://h:p/patroni` + `/switchover` → `http://h:p/switchover`.
pub fn endpoint(api_url: &str, path: &str) -> Option<String> {
    let uri: hyper::Uri = api_url.parse().ok()?;
    Some(format!("{}://{}{path}", uri.scheme_str()?, uri.authority()?))
}

fn read_certs(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let bytes = pem.read().map_err(|e| ClientError::Tls(e.to_string()))?;
    CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| ClientError::Tls(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Full chain verification, but any host name: for a loopback check of the
/// node's own API, whose certificate names the address others use.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
