//! WAL storage: Spilo's and WAL-G's variables for S3 (`WAL_S3_BUCKET`,
//! `WALG_S3_PREFIX`, `AWS_*`, `WALG_*`). `None` when no storage is
//! configured: `archive_command` then succeeds without archiving, as in Spilo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::parse::{abs_path, alias, parse_bool, secret};
use super::{ConfigError, Pem, RawEnv, Secret, check_certs};

/// How an object is compressed. Uploads use `WALG_COMPRESSION_METHOD`
/// (lz4, zstd, brotli or none); [`Compression::Lzma`] (WAL-G's `lzma`) and
/// [`Compression::Lzo`] (WAL-E's lzop) are only ever read: the parse refuses
/// them as a method to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    Lz4,
    Zstd,
    Brotli,
    /// Read-only: LZMA "alone" (`.lzma`), as WAL-G's `lzma` method writes it.
    Lzma,
    /// Read-only: the lzop file format (`.lzo`), as WAL-E writes it.
    Lzo,
    None,
}

impl Compression {
    /// The object name extension WAL-G uses (without the dot; empty for none).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zst",
            Compression::Brotli => "br",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
            Compression::None => "",
        }
    }

    /// Whether tusk writes this format (the others it only reads).
    pub fn writable(self) -> bool {
        !matches!(self, Compression::Lzma | Compression::Lzo)
    }
}

/// Server-side encryption (`WALG_S3_SSE`, `WALG_S3_SSE_KMS_ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sse {
    Aes256,
    Kms { key_id: Option<String> },
}

/// Static keys (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, each also as `_FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// Where and how WAL is archived.
#[derive(Debug, Clone, Serialize)]
pub struct StorageConfig {
    /// `s3://bucket/path` as configured or derived (for messages).
    pub url: String,
    /// The variable the prefix came from.
    pub source: &'static str,
    pub bucket: String,
    /// Key prefix of the root inside the bucket: empty or ending in `/`.
    pub root: String,
    /// `AWS_REGION`; `None`: the SDK's region chain, else `us-east-1`.
    pub region: Option<String>,
    /// `AWS_ENDPOINT` (or derived from `WALE_S3_ENDPOINT`).
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    /// `WALG_S3_CA_CERT_FILE`: extra CA for the endpoint's certificate.
    pub ca_cert: Option<PathBuf>,
    pub sse: Option<Sse>,
    /// `None`: the SDK's default chain (ECS task role, web identity, IMDS, ...).
    pub credentials: Option<StaticCredentials>,
    pub compression: Compression,
    pub upload_concurrency: usize,
    pub download_concurrency: usize,
    /// `WALG_PREVENT_WAL_OVERWRITE`: tusk never overwrites a different
    /// object; with this set it also refuses the failover case (a differing
    /// copy of an old timeline's segment), which is otherwise kept and logged.
    pub prevent_overwrite: bool,
    /// Base backups: compression, schedule, retention.
    pub backup: super::backup::BackupSettings,
    /// The storage variables as given (`WAL*`, `AWS_*`, proxies, `SCOPE`,
    /// ...; static keys and `_FILE` secrets left out): what a `wal-push` or
    /// `wal-fetch` without the supervisor gets through the fallback file.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
}

/// The static keys, written resolved into the fallback file (never from `env`).
const SECRET_VARS: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// The fallback file's text: the storage variables (secrets resolved, no
/// `_FILE` indirection) and `PGDATA`, one `KEY=value` a line.
pub fn fallback_file(storage: &StorageConfig, pgdata: &Path) -> String {
    let mut out = String::from("# Written by tusk for wal-push/wal-fetch without the supervisor. Do not edit.\n");
    for (k, v) in &storage.env {
        out.push_str(&format!("{k}={v}\n"));
    }
    if let Some(c) = &storage.credentials {
        out.push_str(&format!("AWS_ACCESS_KEY_ID={}\n", c.access_key_id));
        out.push_str(&format!("AWS_SECRET_ACCESS_KEY={}\n", c.secret_access_key.expose()));
        if let Some(t) = &c.session_token {
            out.push_str(&format!("AWS_SESSION_TOKEN={}\n", t.expose()));
        }
    }
    out.push_str(&format!("PGDATA={}\n", pgdata.display()));
    out
}

/// Reads [`fallback_file`]'s text back into an environment map.
pub fn parse_fallback_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The variables of the storage section, for the file the supervisor
/// leaves for `wal-push`/`wal-fetch` run without it (and nothing else).
pub fn is_storage_var(k: &str) -> bool {
    const EXACT: [&str; 4] = ["SCOPE", "PATRONI_SCOPE", "NAMESPACE", "PGVERSION"];
    const PROXIES: [&str; 3] = ["http_proxy", "https_proxy", "no_proxy"];
    k.starts_with("WAL")
        || k.starts_with("AWS_")
        || EXACT.contains(&k)
        || PROXIES.iter().any(|p| k.eq_ignore_ascii_case(p))
}

const MAX_CONCURRENCY: usize = 64;

pub(super) fn parse(
    env: &BTreeMap<String, String>,
    raw: &RawEnv,
    scope: &str,
    version: u32,
) -> Result<Option<StorageConfig>, ConfigError> {
    let explicit = alias("WALG_S3_PREFIX", &raw.walg_s3_prefix, "WALE_S3_PREFIX", &raw.wale_s3_prefix)?;
    let (url, source) = match (explicit, &raw.wal_s3_bucket) {
        (Some(p), _) => {
            let var = if raw.walg_s3_prefix.is_some() { "WALG_S3_PREFIX" } else { "WALE_S3_PREFIX" };
            (p, var)
        }
        (None, Some(bucket)) => {
            let bucket = bucket.trim().trim_start_matches("s3://").trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') || !bucket_name_ok(bucket) {
                return Err(ConfigError::new("WAL_S3_BUCKET", format!("{bucket:?} is not an S3 bucket name")));
            }
            // Spilo: `<NAMESPACE>-` unless the namespace is unset or "default".
            let scope_prefix = match (&raw.wal_bucket_scope_prefix, raw.namespace.as_deref()) {
                (Some(p), _) => p.clone(),
                (None, Some(ns)) if ns != "default" => format!("{ns}-"),
                (None, _) => String::new(),
            };
            let suffix = raw.wal_bucket_scope_suffix.clone().unwrap_or_default();
            (format!("s3://{bucket}/spilo/{scope_prefix}{scope}{suffix}/wal/{version}"), "WAL_S3_BUCKET")
        }
        (None, None) => {
            let stray = [
                ("WALG_COMPRESSION_METHOD", &raw.walg_compression_method),
                ("AWS_ENDPOINT", &raw.aws_endpoint),
                ("WALG_S3_CA_CERT_FILE", &raw.walg_s3_ca_cert_file),
            ];
            if let Some((var, _)) = stray.iter().find(|(_, v)| v.is_some()) {
                tracing::debug!(
                    variable = var,
                    "set, but no WAL storage (WAL_S3_BUCKET, WALG_S3_PREFIX) is configured"
                );
            }
            return Ok(None);
        }
    };
    let (bucket, root) = split_prefix(source, &url)?;

    // WALE_S3_ENDPOINT: `https+path://host:port` (Spilo derives both settings from it).
    let (endpoint, derived_path_style) = match (&raw.aws_endpoint, &raw.wale_s3_endpoint) {
        (Some(e), _) => (Some(endpoint_url("AWS_ENDPOINT", e)?), None),
        (None, Some(e)) => {
            let (scheme, rest) = e.split_once("://").ok_or_else(|| {
                ConfigError::new("WALE_S3_ENDPOINT", format!("{e:?} is not proto+convention://host:port"))
            })?;
            let (proto, convention) = scheme.split_once('+').unwrap_or((scheme, "path"));
            let path_style = match convention {
                "path" => true,
                "virtualhost" | "virtual" => false,
                other => {
                    return Err(ConfigError::new(
                        "WALE_S3_ENDPOINT",
                        format!("{other:?}: the convention is path or virtualhost"),
                    ));
                }
            };
            (Some(endpoint_url("WALE_S3_ENDPOINT", &format!("{proto}://{rest}"))?), Some(path_style))
        }
        (None, None) => (None, None),
    };
    let force_path_style = parse_bool("AWS_S3_FORCE_PATH_STYLE", raw.aws_s3_force_path_style.as_deref())?
        .or(derived_path_style)
        .unwrap_or(false);
    let region = raw.aws_region.clone().map(|r| r.trim().to_owned());
    if let Some(r) = &region
        && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(ConfigError::new("AWS_REGION", format!("{r:?} is not a region name")));
    }

    let ca_cert = abs_path("WALG_S3_CA_CERT_FILE", raw.walg_s3_ca_cert_file.as_deref())?;
    if let Some(ca) = &ca_cert {
        check_certs("WALG_S3_CA_CERT_FILE", &Pem::File(ca.clone()))?;
        if !endpoint.as_deref().is_some_and(|e| e.starts_with("https://")) {
            tracing::warn!("WALG_S3_CA_CERT_FILE is set but the endpoint is not https://; the CA is unused");
        }
    }
    let sse = match raw.walg_s3_sse.as_deref().map(str::trim) {
        None => None,
        Some("AES256") => Some(Sse::Aes256),
        Some("aws:kms") => Some(Sse::Kms { key_id: raw.walg_s3_sse_kms_id.clone() }),
        Some(other) => {
            return Err(ConfigError::new("WALG_S3_SSE", format!("{other:?} is not AES256 or aws:kms")));
        }
    };
    if raw.walg_s3_sse_kms_id.is_some() && !matches!(sse, Some(Sse::Kms { .. })) {
        return Err(ConfigError::new("WALG_S3_SSE_KMS_ID", "is set but WALG_S3_SSE is not aws:kms"));
    }

    let key_id = secret(env, "AWS_ACCESS_KEY_ID")?;
    let key_secret = secret(env, "AWS_SECRET_ACCESS_KEY")?;
    let token = secret(env, "AWS_SESSION_TOKEN")?;
    let credentials = match (key_id, key_secret) {
        (Some(id), Some(secret_access_key)) => {
            let access_key_id = id.expose().trim().to_owned();
            if access_key_id.is_empty() || access_key_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::new("AWS_ACCESS_KEY_ID", "is not an access key id"));
            }
            Some(StaticCredentials { access_key_id, secret_access_key, session_token: token })
        }
        (Some(_), None) => {
            return Err(ConfigError::new("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID is set but no secret key"));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY is set but no access key id"));
        }
        (None, None) if token.is_some() => {
            return Err(ConfigError::new("AWS_SESSION_TOKEN", "is set without AWS_ACCESS_KEY_ID"));
        }
        (None, None) => None,
    };

    let compression = match raw.walg_compression_method.as_deref() {
        None => Compression::Lz4,
        Some(v) => compression("WALG_COMPRESSION_METHOD", v)?,
    };
    let backup = super::backup::parse(raw, compression)?;
    let upload_concurrency = concurrency("WALG_UPLOAD_CONCURRENCY", raw.walg_upload_concurrency.as_deref(), 16)?;
    let download_concurrency = concurrency("WALG_DOWNLOAD_CONCURRENCY", raw.walg_download_concurrency.as_deref(), 10)?;
    let prevent_overwrite =
        parse_bool("WALG_PREVENT_WAL_OVERWRITE", raw.walg_prevent_wal_overwrite.as_deref())?.unwrap_or(false);

    let env = env
        .iter()
        .filter(|(k, v)| {
            let base = k.strip_suffix("_FILE").unwrap_or(k);
            is_storage_var(k) && !SECRET_VARS.contains(&base) && !v.contains('\n')
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Some(StorageConfig {
        env,
        url,
        source,
        bucket,
        root,
        region,
        endpoint,
        force_path_style,
        ca_cert,
        sse,
        credentials,
        compression,
        upload_concurrency,
        download_concurrency,
        prevent_overwrite,
        backup,
    }))
}

/// A compression method's name as WAL-G spells it.
pub(super) fn compression(var: &str, v: &str) -> Result<Compression, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        "brotli" => Ok(Compression::Brotli),
        "none" => Ok(Compression::None),
        m @ ("lzma" | "lzo") => Err(ConfigError::new(
            var,
            format!(
                "{m:?} is read-only in tusk: archives written with it are read, but new objects are written with one of lz4, zstd, brotli, none"
            ),
        )),
        other => Err(ConfigError::new(var, format!("{other:?} is not one of lz4, zstd, brotli, none"))),
    }
}

fn concurrency(var: &str, v: Option<&str>, default: usize) -> Result<usize, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(var, format!("{v:?} is not a number from 1 to {MAX_CONCURRENCY}"))),
    }
}

/// `s3://bucket/path` → (bucket, `path/`).
fn split_prefix(var: &str, url: &str) -> Result<(String, String), ConfigError> {
    let rest = url
        .trim()
        .strip_prefix("s3://")
        .ok_or_else(|| ConfigError::new(var, format!("{url:?} is not s3://bucket/path (only S3 is supported)")))?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !bucket_name_ok(bucket) {
        return Err(ConfigError::new(var, format!("{bucket:?} is not an S3 bucket name")));
    }
    let path = path.trim_matches('/');
    if path.contains("//") || path.chars().any(|c| c.is_control()) {
        return Err(ConfigError::new(var, format!("{url:?}: the path has an empty component or a control character")));
    }
    let root = if path.is_empty() { String::new() } else { format!("{path}/") };
    Ok((bucket.to_owned(), root))
}

fn bucket_name_ok(b: &str) -> bool {
    (1..=255).contains(&b.len()) && b.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

fn endpoint_url(var: &str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim().trim_end_matches('/');
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::new(var, format!("{v:?} is not an http:// or https:// URL")))?;
    if rest.is_empty() || rest.contains(['/', ' ', '?', '#']) {
        return Err(ConfigError::new(var, format!("{v:?} is not scheme://host[:port]")));
    }
    Ok(v.to_owned())
}
