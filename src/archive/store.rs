//! The S3 side: one aws-sdk-s3 client, WAL-G's `wal_005/` keys, bounded
//! timeouts and retries, checksums set so S3-compatible servers accept
//! the requests.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;

use super::compress::READ_EXTENSIONS;
use crate::config::storage::Sse;
use crate::config::{Compression, StorageConfig};

/// Metadata key of the XXH3-128 of the uncompressed content (hex).
pub const META_HASH: &str = "tusk-xxh3";
/// Metadata key of the uncompressed size.
pub const META_SIZE: &str = "tusk-size";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("S3 {op} {key}: {message}")]
    S3 { op: &'static str, key: String, message: String },
    #[error("cannot set up the S3 client: {0}")]
    Setup(String),
}

/// An object that holds the archived copy of one WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    /// The extension after the name (`lz4`, `zst`, `br`, `""`, `"."`).
    pub ext: String,
    pub size: u64,
}

impl Found {
    pub fn compression(&self) -> Option<Compression> {
        super::compress::from_extension(&self.ext)
    }
}

/// The warm client and where the WAL lives.
#[derive(Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    wal_prefix: String,
    sse: Option<Sse>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store(s3://{}/{})", self.bucket, self.wal_prefix)
    }
}

/// Renders an SDK error with its service code and message, never credentials.
fn describe<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let err = se.err();
            format!("HTTP {status} {}: {}", err.code().unwrap_or("(no code)"), err.message().unwrap_or("(no message)"))
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        other => {
            let mut msg = other.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        }
    }
}

impl Store {
    /// Builds the client (no request is sent). Static keys if configured,
    /// else the SDK's default chain: environment, web identity, ECS task
    /// role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`), instance metadata.
    pub async fn new(cfg: &StorageConfig) -> Result<Store, StoreError> {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
        let mut trust = TrustStore::default();
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| StoreError::Setup(format!("{}: {e}", ca.display())))?;
            trust = trust.with_pem_certificate(pem);
        }
        let tls_ctx = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StoreError::Setup(format!("TLS: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_ctx)
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .operation_attempt_timeout(Duration::from_secs(60))
            .operation_timeout(Duration::from_secs(150))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
        if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                c.secret_access_key.expose(),
                c.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "tusk-environment",
            ));
        }
        match (&cfg.region, &cfg.endpoint) {
            (Some(r), _) => loader = loader.region(Region::new(r.clone())),
            // WAL-G signs for us-east-1 with a custom endpoint and no region.
            (None, Some(_)) => loader = loader.region(Region::new("us-east-1")),
            (None, None) => {}
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard().with_max_attempts(4).with_initial_backoff(Duration::from_millis(200)),
            );
        if sdk.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        Ok(Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            wal_prefix: cfg.wal_prefix(),
            sse: cfg.sse.clone(),
        })
    }

    pub fn key(&self, name: &str, ext: &str) -> String {
        match ext {
            "" => format!("{}{name}", self.wal_prefix),
            "." => format!("{}{name}.", self.wal_prefix),
            e => format!("{}{name}.{e}", self.wal_prefix),
        }
    }

    /// Every archived copy of `name` (one LIST). `Err` for unknown
    /// compression extensions: such an object exists but cannot be read.
    pub async fn find(&self, name: &str) -> Result<Vec<Found>, StoreError> {
        let prefix = format!("{}{name}", self.wal_prefix);
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .max_keys(100)
            .send()
            .await
            .map_err(|e| StoreError::S3 { op: "LIST", key: prefix.clone(), message: describe(&e) })?;
        let mut found = Vec::new();
        for obj in out.contents() {
            let Some(key) = obj.key() else { continue };
            let rest = &key[prefix.len()..];
            let ext = match rest {
                "" => "",
                "." => ".",
                r => match r.strip_prefix('.') {
                    // `<name>.partial.lz4` etc. are other files, not a copy of `name`.
                    Some(e) if !e.contains('.') => e,
                    _ => continue,
                },
            };
            if !READ_EXTENSIONS.contains(&ext) {
                return Err(StoreError::S3 {
                    op: "LIST",
                    key: key.to_owned(),
                    message: format!("archived with compression {ext:?}, which tusk cannot read (lz4, zst, br, none)"),
                });
            }
            found.push(Found { key: key.to_owned(), ext: ext.to_owned(), size: obj.size().unwrap_or(0).max(0) as u64 });
        }
        found.sort_by_key(|f| READ_EXTENSIONS.iter().position(|e| *e == f.ext));
        Ok(found)
    }

    /// The user metadata of `key`; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<HashMap<String, String>>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(o) => Ok(Some(o.metadata().cloned().unwrap_or_default())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(StoreError::S3 { op: "HEAD", key: key.to_owned(), message: describe(&e) }),
        }
    }

    /// The object's bytes and user metadata; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, HashMap<String, String>)>, StoreError> {
        let out = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(StoreError::S3 { op: "GET", key: key.to_owned(), message: describe(&e) }),
        };
        let meta = out.metadata().cloned().unwrap_or_default();
        let expected = out.content_length();
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::S3 { op: "GET", key: key.to_owned(), message: format!("reading the body: {e}") })?
            .into_bytes()
            .to_vec();
        if let Some(n) = expected
            && n >= 0
            && n as usize != body.len()
        {
            return Err(StoreError::S3 {
                op: "GET",
                key: key.to_owned(),
                message: format!("short body: {} of {n} bytes", body.len()),
            });
        }
        Ok(Some((body, meta)))
    }

    /// Uploads `body` as `key`. `Ok` only when S3 answered 200 to a request
    /// whose payload SHA-256 is signed (the server checks it): the exact
    /// bytes are stored.
    pub async fn put(&self, key: &str, body: Vec<u8>, meta: &[(&str, String)]) -> Result<(), StoreError> {
        let len = body.len() as i64;
        let mut req =
            self.client.put_object().bucket(&self.bucket).key(key).content_length(len).body(ByteStream::from(body));
        for (k, v) in meta {
            req = req.metadata(*k, v);
        }
        match &self.sse {
            None => {}
            Some(Sse::Aes256) => req = req.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms { key_id }) => {
                req = req.server_side_encryption(ServerSideEncryption::AwsKms);
                if let Some(k) = key_id {
                    req = req.ssekms_key_id(k);
                }
            }
        }
        req.send().await.map_err(|e| StoreError::S3 { op: "PUT", key: key.to_owned(), message: describe(&e) })?;
        Ok(())
    }
}
