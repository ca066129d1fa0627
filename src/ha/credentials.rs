//! The role passwords: from the environment, else shared through etcd, but
//! only an etcd that authenticates its clients (mutual TLS or a user):
//! over an open etcd the configuration insists on the passwords
//! (`config::Config::shares_passwords`).
//!
//! Each action asks for what it needs and no more, so that a member joins a
//! cluster it did not bootstrap (Patroni's, say) with the replication
//! password alone: a clone or a replica needs the replication password,
//! pg_rewind the superuser's, and only the bootstrap all three (it creates
//! the roles).

use serde::{Deserialize, Serialize};

use super::error::HaError;
use super::run::Ha;
use crate::config::Secret;
use crate::postgres::passwords::{self, Passwords};
use crate::postgres::replication;

/// The role passwords shared through etcd (generated ones only: a password
/// given in the environment is never written there).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SharedCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    superuser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replication: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin: Option<String>,
}

/// What this member knows of the passwords: the environment's, else etcd's.
#[derive(Debug, Clone, Default)]
pub(super) struct KnownPasswords {
    pub superuser: Option<Secret>,
    pub replication: Option<Secret>,
    pub admin: Option<Secret>,
}

impl KnownPasswords {
    fn complete(&self) -> bool {
        self.superuser.is_some() && self.replication.is_some() && self.admin.is_some()
    }
}

impl Ha {
    /// The environment's passwords, completed from etcd where sharing is allowed.
    async fn known_passwords(&mut self) -> Result<KnownPasswords, HaError> {
        if let Some(k) = &self.passwords
            && k.complete()
        {
            return Ok(k.clone());
        }
        let c = &self.cfg.credentials;
        let mut k = KnownPasswords {
            superuser: c.superuser.password.clone(),
            replication: c.replication.password.clone(),
            admin: c.admin.password.clone(),
        };
        if !k.complete() && self.cfg.shares_passwords() {
            let shared: SharedCredentials = match self.dcs.credentials().await? {
                Some(json) => serde_json::from_str(&json)?,
                None => SharedCredentials::default(),
            };
            let fill = |slot: &mut Option<Secret>, v: Option<String>| {
                if slot.is_none() {
                    *slot = v.map(Secret::new);
                }
            };
            fill(&mut k.superuser, shared.superuser);
            fill(&mut k.replication, shared.replication);
            fill(&mut k.admin, shared.admin);
        }
        self.passwords = Some(k.clone());
        Ok(k)
    }

    /// The replication password (clone, streaming); libpq's passfile is
    /// written with it.
    pub(super) async fn replication_password(&mut self) -> Result<Secret, HaError> {
        let pw = self.known_passwords().await?.replication.ok_or(HaError::NoPassword {
            var: "PGPASSWORD_STANDBY",
            role: self.cfg.credentials.replication.name.clone(),
            needed_for: "replication",
        })?;
        replication::write_passfile(&self.cfg, &pw, &self.run_as)?;
        Ok(pw)
    }

    /// The superuser's password (pg_rewind).
    pub(super) async fn superuser_password(&mut self) -> Result<Secret, HaError> {
        self.known_passwords().await?.superuser.ok_or(HaError::NoPassword {
            var: "PGPASSWORD_SUPERUSER",
            role: self.cfg.credentials.superuser.name.clone(),
            needed_for: "pg_rewind",
        })
    }

    /// All three, for the bootstrap that creates the roles: the missing
    /// ones are generated and shared through etcd (a concurrent
    /// bootstrapper's, if it shared first, win), or, over an etcd that may
    /// not hold secrets, kept in `PGROOT/pgpass` as in standalone mode (the
    /// configuration guarantees that only the admin's can be missing then).
    pub(super) async fn bootstrap_passwords(&mut self) -> Result<Passwords, HaError> {
        let mut k = self.known_passwords().await?;
        if !k.complete() {
            if self.cfg.shares_passwords() {
                let new = || Some(passwords::generate());
                let missing = SharedCredentials {
                    superuser: k.superuser.is_none().then(new).flatten(),
                    replication: k.replication.is_none().then(new).flatten(),
                    admin: k.admin.is_none().then(new).flatten(),
                };
                let json = serde_json::to_string(&missing).expect("credentials serialize");
                let stored: SharedCredentials = serde_json::from_str(&self.dcs.share_credentials(&json).await?)?;
                tracing::info!(
                    "generated the role passwords not given in the environment; shared with the members under \
                     the cluster's etcd prefix (etcd authenticates its clients)"
                );
                k.superuser = k.superuser.or(stored.superuser.map(Secret::new));
                k.replication = k.replication.or(stored.replication.map(Secret::new));
                k.admin = k.admin.or(stored.admin.map(Secret::new));
            } else {
                let local = passwords::resolve(&self.cfg, &self.run_as)?;
                k.superuser = k.superuser.or(Some(local.superuser));
                k.replication = k.replication.or(Some(local.replication));
                k.admin = k.admin.or(Some(local.admin));
            }
        }
        let missing = |var, role: &crate::config::Role| HaError::NoPassword {
            var,
            role: role.name.clone(),
            needed_for: "the bootstrap",
        };
        let c = &self.cfg.credentials;
        let p = Passwords {
            superuser: k.superuser.clone().ok_or_else(|| missing("PGPASSWORD_SUPERUSER", &c.superuser))?,
            replication: k.replication.clone().ok_or_else(|| missing("PGPASSWORD_STANDBY", &c.replication))?,
            admin: k.admin.clone().ok_or_else(|| missing("PGPASSWORD_ADMIN", &c.admin))?,
        };
        replication::write_passfile(&self.cfg, &p.replication, &self.run_as)?;
        self.passwords = Some(k);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::SharedCredentials;

    #[test]
    fn shared_credentials_read_both_forms() {
        // What earlier versions shared (all three) and what this one shares
        // (the generated ones only).
        let old: SharedCredentials =
            serde_json::from_str(r#"{"superuser":"a","replication":"b","admin":"c"}"#).expect("old form");
        assert_eq!((old.superuser.as_deref(), old.admin.as_deref()), (Some("a"), Some("c")));
        let new: SharedCredentials = serde_json::from_str(r#"{"admin":"c"}"#).expect("new form");
        assert!(new.superuser.is_none() && new.replication.is_none());
        let out = serde_json::to_string(&SharedCredentials { admin: Some("x".into()), ..Default::default() })
            .expect("serialize");
        assert_eq!(out, r#"{"admin":"x"}"#);
    }
}
