//! The S3 side: one aws-sdk-s3 client with bounded timeouts and retries,
//! checksums set so S3-compatible servers accept the requests. Whole
//! objects for WAL files; streams (multipart upload, streamed download,
//! paginated listing) for what does not fit in memory (base backups).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::StorageConfig;
use crate::config::storage::Sse;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("S3 {op} {key}: {message}")]
    S3 { op: &'static str, key: String, message: String },
    #[error("cannot set up the S3 client: {0}")]
    Setup(String),
}

/// Size of a multipart upload's parts (S3's minimum is 5 MiB, its limit
/// 10,000 parts: 80 GiB per object at this size).
pub const PART_SIZE: usize = 8 << 20;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last-Modified, seconds since the epoch (0 if the server gave none).
    pub modified: i64,
}

fn info(key: &str, o: &aws_sdk_s3::types::Object) -> ObjectInfo {
    ObjectInfo {
        key: key.to_owned(),
        size: o.size().unwrap_or(0).max(0) as u64,
        modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
    }
}

/// The warm client and its bucket.
#[derive(Clone)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    sse: Option<Sse>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStore(s3://{})", self.bucket)
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

impl ObjectStore {
    /// Builds the client (no request is sent). Static keys if configured,
    /// else the SDK's default chain: environment, web identity, ECS task
    /// role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`), instance metadata.
    pub async fn new(cfg: &StorageConfig) -> Result<ObjectStore, StoreError> {
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
        Ok(ObjectStore {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            sse: cfg.sse.clone(),
        })
    }

    /// Every object under `prefix` (all pages of the listing), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| StoreError::S3 { op: "LIST", key: prefix.to_owned(), message: describe(&e) })?;
            for obj in page.contents() {
                if let Some(key) = obj.key() {
                    out.push(info(key, obj));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// One page (at most `max` objects) under `prefix`: enough when few are expected.
    pub async fn list_first(&self, prefix: &str, max: i32) -> Result<Vec<ObjectInfo>, StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(max)
            .send()
            .await
            .map_err(|e| StoreError::S3 { op: "LIST", key: prefix.to_owned(), message: describe(&e) })?;
        Ok(page.contents().iter().filter_map(|o| Some(info(o.key()?, o))).collect())
    }

    /// The objects directly under `prefix` (not in deeper "directories":
    /// a listing with the `/` delimiter), all pages, in key order.
    pub async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| StoreError::S3 { op: "LIST", key: prefix.to_owned(), message: describe(&e) })?;
            for obj in page.contents() {
                if let Some(key) = obj.key() {
                    out.push(info(key, obj));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Deletes `keys` (batches of 1,000, S3's limit per request); a key
    /// that does not exist is not an error.
    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        for batch in keys.chunks(1000) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::S3 { op: "DELETE", key: batch[0].clone(), message: e.to_string() })?;
            let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| StoreError::S3 {
                op: "DELETE",
                key: batch[0].clone(),
                message: e.to_string(),
            })?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| StoreError::S3 { op: "DELETE", key: batch[0].clone(), message: describe(&e) })?;
            if let Some(err) = out.errors().first() {
                return Err(StoreError::S3 {
                    op: "DELETE",
                    key: err.key().unwrap_or_default().to_owned(),
                    message: format!("{}: {}", err.code().unwrap_or("?"), err.message().unwrap_or("?")),
                });
            }
        }
        Ok(())
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

    /// The object as a stream of bytes, with its length and user metadata;
    /// `None` when it does not exist. For objects too large to hold.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<Option<(ByteStream, Option<u64>, HashMap<String, String>)>, StoreError> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(o) => {
                let meta = o.metadata().cloned().unwrap_or_default();
                let len = o.content_length().and_then(|n| u64::try_from(n).ok());
                Ok(Some((o.body, len, meta)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(StoreError::S3 { op: "GET", key: key.to_owned(), message: describe(&e) }),
        }
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
        let (sse, kms_key) = self.sse();
        req = req.set_server_side_encryption(sse).set_ssekms_key_id(kms_key);
        req.send().await.map_err(|e| StoreError::S3 { op: "PUT", key: key.to_owned(), message: describe(&e) })?;
        Ok(())
    }

    /// Uploads everything `body` yields as `key`, in [`PART_SIZE`] parts
    /// (one plain PUT when it fits in one), holding one part in memory.
    /// `Ok` only once S3 completed the upload; a failed multipart upload is
    /// aborted, so no parts are left behind. Returns the bytes uploaded.
    pub async fn put_stream(
        &self,
        key: &str,
        mut body: impl AsyncRead + Unpin + Send,
        meta: &[(&str, String)],
    ) -> Result<u64, StoreError> {
        let io =
            |e: std::io::Error| StoreError::S3 { op: "PUT", key: key.to_owned(), message: format!("reading: {e}") };
        let first = read_part(&mut body).await.map_err(io)?;
        if first.len() < PART_SIZE {
            let n = first.len() as u64;
            self.put(key, first, meta).await?;
            return Ok(n);
        }
        let s3 = |op: &'static str| move |message: String| StoreError::S3 { op, key: key.to_owned(), message };
        let (sse, kms_key) = self.sse();
        let mut create = self.client.create_multipart_upload().bucket(&self.bucket).key(key);
        for (k, v) in meta {
            create = create.metadata(*k, v);
        }
        let created = create
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map_err(|e| s3("CreateMultipartUpload")(describe(&e)))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| s3("CreateMultipartUpload")("no upload id in the answer".into()))?
            .to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut total = 0u64;
            let mut part = first;
            loop {
                let number = parts.len() as i32 + 1;
                total += part.len() as u64;
                let last = part.len() < PART_SIZE;
                let len = part.len() as i64;
                let done = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len)
                    .body(ByteStream::from(part))
                    .send()
                    .await
                    .map_err(|e| s3("UploadPart")(describe(&e)))?;
                parts.push(
                    CompletedPart::builder().part_number(number).set_e_tag(done.e_tag().map(str::to_owned)).build(),
                );
                if last {
                    break;
                }
                part = read_part(&mut body).await.map_err(io)?;
                if part.is_empty() {
                    break;
                }
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| s3("CompleteMultipartUpload")(describe(&e)))?;
            Ok(total)
        }
        .await;
        if result.is_err() {
            let abort =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
            if let Err(e) = abort {
                tracing::warn!(key, error = %describe(&e), "cannot abort a failed multipart upload; S3 lifecycle rules remove its parts");
            }
        }
        result
    }

    /// Starts a multipart upload whose parts the caller sends, concurrently
    /// if it likes ([`Multipart`]); for objects built while they upload.
    pub async fn create_multipart(&self, key: &str) -> Result<Multipart, StoreError> {
        let (sse, kms_key) = self.sse();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map_err(|e| StoreError::S3 { op: "CreateMultipartUpload", key: key.to_owned(), message: describe(&e) })?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::S3 {
                op: "CreateMultipartUpload",
                key: key.to_owned(),
                message: "no upload id in the answer".into(),
            })?
            .to_owned();
        Ok(Multipart { store: self.clone(), key: key.to_owned(), upload_id })
    }

    /// The server-side encryption settings of every upload.
    fn sse(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.sse {
            None => (None, None),
            Some(Sse::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(Sse::Kms { key_id }) => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        }
    }
}

/// A multipart upload in progress: parts may be sent concurrently (the
/// handle is cheap to clone); [`Multipart::complete`] makes the object
/// exist, [`Multipart::abort`] drops the parts.
#[derive(Clone, Debug)]
pub struct Multipart {
    store: ObjectStore,
    key: String,
    upload_id: String,
}

/// A part S3 confirmed.
#[derive(Clone, Debug)]
pub struct PartTag {
    pub number: i32,
    pub etag: Option<String>,
}

impl Multipart {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Uploads part `number` (from 1; every part but the last at least 5 MiB).
    pub async fn upload_part(&self, number: i32, body: Vec<u8>) -> Result<PartTag, StoreError> {
        let len = body.len() as i64;
        let done = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(len)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| StoreError::S3 { op: "UploadPart", key: self.key.clone(), message: describe(&e) })?;
        Ok(PartTag { number, etag: done.e_tag().map(str::to_owned) })
    }

    /// Completes the object from `parts` (any order).
    pub async fn complete(&self, mut parts: Vec<PartTag>) -> Result<(), StoreError> {
        parts.sort_by_key(|p| p.number);
        let parts = parts
            .into_iter()
            .map(|p| CompletedPart::builder().part_number(p.number).set_e_tag(p.etag).build())
            .collect();
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| StoreError::S3 {
                op: "CompleteMultipartUpload",
                key: self.key.clone(),
                message: describe(&e),
            })?;
        Ok(())
    }

    /// Drops the parts uploaded so far (best effort: logged on failure).
    pub async fn abort(&self) {
        let r = self
            .store
            .client
            .abort_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Err(e) = r {
            tracing::warn!(key = %self.key, error = %describe(&e), "cannot abort a multipart upload; S3 lifecycle rules remove its parts");
        }
    }
}

/// Reads up to [`PART_SIZE`] bytes (less only at the end of the input).
async fn read_part(body: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut part = Vec::with_capacity(PART_SIZE);
    (&mut *body).take(PART_SIZE as u64).read_to_end(&mut part).await?;
    Ok(part)
}
