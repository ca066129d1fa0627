//! Role passwords for a standalone node. Passwords given in the environment
//! are used as they are. For the others tusk generates strong random ones
//! once and keeps them in `PGROOT/pgpass` (mode 0600, libpq's pgpass
//! format, so `PGPASSFILE=$PGROOT/pgpass psql -h ...` works); it logs the
//! path, never a value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::distributions::Alphanumeric;

use super::atomic::write_atomic;
use super::{PgError, RunAs};
use crate::config::{Config, Secret};

/// The three roles' passwords, all known.
#[derive(Debug, Clone)]
pub struct Passwords {
    pub superuser: Secret,
    pub replication: Secret,
    pub admin: Secret,
}

pub fn pgpass_path(root: &Path) -> PathBuf {
    root.join("pgpass")
}

/// Resolves every password: environment first, then `PGROOT/pgpass`, then
/// a newly generated one (written back to `PGROOT/pgpass`).
pub fn resolve(cfg: &Config, run_as: &RunAs) -> Result<Passwords, PgError> {
    let path = pgpass_path(&cfg.postgres.root);
    let stored = match std::fs::read_to_string(&path) {
        Ok(s) => parse_pgpass(&s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(PgError::io(format!("read {}", path.display()), e)),
    };
    let creds = &cfg.credentials;
    let mut file_entries = BTreeMap::new();
    let mut generated = Vec::new();
    let mut pick = |role: &crate::config::Role| -> Secret {
        if let Some(p) = &role.password {
            return p.clone();
        }
        let p = match stored.get(&role.name) {
            Some(p) => p.clone(),
            None => {
                generated.push(role.name.clone());
                generate()
            }
        };
        file_entries.insert(role.name.clone(), p.clone());
        Secret::new(p)
    };
    let passwords = Passwords {
        superuser: pick(&creds.superuser),
        replication: pick(&creds.replication),
        admin: pick(&creds.admin),
    };
    let stale = stored.keys().any(|k| !file_entries.contains_key(k));
    if !generated.is_empty() || stale {
        let content: String =
            file_entries.iter().map(|(u, p)| format!("*:*:*:{}:{}\n", escape(u), escape(p))).collect();
        if content.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            write_atomic(&path, content.as_bytes(), 0o600, run_as)?;
        }
    }
    if !generated.is_empty() {
        tracing::info!(
            roles = %generated.join(", "),
            path = %path.display(),
            "generated passwords (none given in PGPASSWORD_*); stored in libpq pgpass format"
        );
    } else if !file_entries.is_empty() {
        tracing::info!(path = %path.display(), "using the passwords stored in pgpass");
    }
    Ok(passwords)
}

/// 32 alphanumeric characters: about 190 bits.
pub fn generate() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// `user -> password` from `*:*:*:user:password` lines.
fn parse_pgpass(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in s.lines() {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() == 5 && !fields[4].is_empty() {
            out.insert(fields[3].clone(), fields[4].clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_round_trip() {
        let line = format!("*:*:*:{}:{}\n", escape("u:x"), escape(r"p\a:ss"));
        let m = parse_pgpass(&line);
        assert_eq!(m["u:x"], r"p\a:ss");
    }

    #[test]
    fn generated_are_strong_and_distinct() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
