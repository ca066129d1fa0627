//! PostgreSQL's server certificate: the user's (copied into `PGROOT/certs`,
//! owned by postgres with mode 0600, as postgres requires of a key file) or a
//! self-signed one tusk generates and keeps.

use std::path::Path;

use super::atomic::write_atomic;
use super::files::TlsPaths;
use super::{PgError, RunAs};
use crate::config::{Config, Pem, check_certs, check_key};

/// Marks a certificate tusk generated (and may regenerate).
const GENERATED_MARK: &str = "generated-by-tusk";

/// Installs the TLS files under `PGROOT/certs` and returns their paths.
/// Called at start and on SIGHUP (certificate rotation): files given by path
/// are re-read, checked, and only then replace the installed copies.
pub fn install(cfg: &Config, run_as: &RunAs) -> Result<TlsPaths, PgError> {
    let dir = cfg.postgres.root.join("certs");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| PgError::io(format!("create {}", dir.display()), e))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| PgError::io(format!("chmod {}", dir.display()), e))?;
        run_as.chown(&dir)?;
    }
    let paths = TlsPaths {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ca: cfg.tls.ca.as_ref().map(|_| dir.join("ca.crt")),
    };
    match &cfg.tls.server {
        Some(pair) => {
            // Check the current content before replacing the installed copy.
            let cert_var = var_name(&pair.cert, "SSL_CERTIFICATE");
            let key_var = var_name(&pair.key, "SSL_PRIVATE_KEY");
            check_certs(cert_var, &pair.cert)?;
            check_key(key_var, &pair.key)?;
            let cert = pair.cert.read().map_err(|e| PgError::io(cert_var, e))?;
            let key = pair.key.read().map_err(|e| PgError::io(key_var, e))?;
            write_atomic(&paths.cert, &cert, 0o600, run_as)?;
            write_atomic(&paths.key, &key, 0o600, run_as)?;
            let _ = std::fs::remove_file(dir.join(GENERATED_MARK));
        }
        None => {
            if !usable_generated(&dir, &paths) {
                let (cert, key) = self_signed(&cfg.name)?;
                write_atomic(&paths.key, key.as_bytes(), 0o600, run_as)?;
                write_atomic(&paths.cert, cert.as_bytes(), 0o600, run_as)?;
                write_atomic(&dir.join(GENERATED_MARK), b"", 0o600, run_as)?;
                tracing::info!(path = %paths.cert.display(), "generated a self-signed server certificate (set SSL_CERTIFICATE_FILE and SSL_PRIVATE_KEY_FILE to use your own)");
            }
        }
    }
    if let (Some(ca), Some(ca_path)) = (&cfg.tls.ca, &paths.ca) {
        let var = var_name(ca, "SSL_CA");
        check_certs(var, ca)?;
        write_atomic(ca_path, &ca.read().map_err(|e| PgError::io(var, e))?, 0o600, run_as)?;
    }
    Ok(paths)
}

fn var_name(pem: &Pem, inline: &'static str) -> &'static str {
    match (pem, inline) {
        (Pem::Inline(_), v) => v,
        (Pem::File(_), "SSL_CERTIFICATE") => "SSL_CERTIFICATE_FILE",
        (Pem::File(_), "SSL_PRIVATE_KEY") => "SSL_PRIVATE_KEY_FILE",
        (Pem::File(_), _) => "SSL_CA_FILE",
    }
}

fn usable_generated(dir: &Path, paths: &TlsPaths) -> bool {
    dir.join(GENERATED_MARK).exists()
        && check_certs("", &Pem::File(paths.cert.clone())).is_ok()
        && check_key("", &Pem::File(paths.key.clone())).is_ok()
}

/// A self-signed ECDSA P-256 certificate for `name`, `localhost` and the
/// loopback addresses, valid for ten years (clients that verify use their own
/// CA through `SSL_CERTIFICATE_FILE`; this one is for encryption).
fn self_signed(name: &str) -> Result<(String, String), PgError> {
    let err = |e: rcgen::Error| PgError::Other(format!("cannot generate a certificate: {e}"));
    let mut sans = vec![name.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str().filter(|h| !h.is_empty() && *h != name)
    {
        sans.push(h.to_owned());
    }
    let mut params = rcgen::CertificateParams::new(sans).map_err(err)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}
