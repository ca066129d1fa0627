//! etcd v3 over gRPC with mutual TLS, and Patroni's operations on it: one
//! lease per member, the leader key and the member key on it, conditional
//! writes for everything that decides leadership.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, PutOptions, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};

use super::ClusterView;
use super::endpoints::{Endpoints, attempt_timeout};
use super::values::{DynamicConfig, Failover, MemberValue, Status, SyncState};
use crate::config::{EtcdConfig, EtcdProtocol};

#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// A certificate or key file could not be read (named).
    #[error("{0}")]
    Tls(String),
    /// etcd did not answer in time or the connection failed.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd error: {0}")]
    Etcd(String),
    /// The lease does not exist (expired): grant a new one.
    #[error("the lease expired")]
    LeaseNotFound,
    /// A value in etcd is not what Patroni writes there.
    #[error("bad value under {key}: {message}")]
    BadValue { key: String, message: String },
}

impl From<etcd_client::Error> for DcsError {
    fn from(e: etcd_client::Error) -> Self {
        match &e {
            etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => DcsError::LeaseNotFound,
            etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound && s.message().contains("lease") => {
                DcsError::LeaseNotFound
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                DcsError::Unreachable(e.to_string())
            }
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ) =>
            {
                DcsError::Unreachable(describe_status(s))
            }
            etcd_client::Error::GRpcStatus(s) => DcsError::Etcd(describe_status(s)),
            _ => DcsError::Etcd(e.to_string()),
        }
    }
}

impl DcsError {
    /// The member did not serve the request (no answer, no connection, `no
    /// leader`, `request timed out`, `too many requests`): another may.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DcsError::Unreachable(_))
    }
}

/// gRPC statuses carry the useful part (a TLS or connection error) in their
/// source chain.
fn describe_status(s: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        out.push_str(&format!(": {e}"));
        src = e.source();
    }
    out
}

/// The key layout under `/<namespace>/<scope>/`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str, scope: &str) -> Keys {
        Keys { prefix: format!("/{namespace}/{scope}/") }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn initialize(&self) -> String {
        format!("{}initialize", self.prefix)
    }
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }
    pub fn status(&self) -> String {
        format!("{}status", self.prefix)
    }
    pub fn history(&self) -> String {
        format!("{}history", self.prefix)
    }
    pub fn failover(&self) -> String {
        format!("{}failover", self.prefix)
    }
    pub fn sync(&self) -> String {
        format!("{}sync", self.prefix)
    }
    pub fn failsafe(&self) -> String {
        format!("{}failsafe", self.prefix)
    }
    /// tusk's own: the generated role passwords, shared with the members
    /// (Patroni's readers ignore keys they do not know).
    pub fn credentials(&self) -> String {
        format!("{}tusk/credentials", self.prefix)
    }
}

/// A connection to etcd for one cluster: the members behind it
/// ([`Endpoints`]: per-member clients, attempt deadlines, health), shared by
/// every clone.
#[derive(Clone)]
pub struct Dcs {
    pub(super) endpoints: Arc<Endpoints>,
    pub keys: Keys,
    /// Budget of one operation, retries on other members included.
    pub(super) timeout: Duration,
}

/// A snapshot of the cluster's keys, with what the HA loop needs beyond the view.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub view: ClusterView,
    /// etcd revision of the read (watch from `revision + 1`).
    pub revision: i64,
    /// The lease of the leader key.
    pub leader_lease: Option<i64>,
    /// `mod_revision` of `config` and `failover`, for compare-and-set.
    pub config_revision: Option<i64>,
    pub failover_revision: Option<i64>,
    pub sync_revision: Option<i64>,
}

impl Dcs {
    /// Prepares clients for the configured members, TLS files and
    /// credentials (read now: a SIGHUP reconnect picks up rotated files).
    /// Connections are made on first use, one per member. Every call is
    /// bounded by `timeout` (derived from `retry_timeout`), each attempt on
    /// one member by a third of it.
    pub async fn connect(cfg: &EtcdConfig, namespace: &str, scope: &str, timeout: Duration) -> Result<Dcs, DcsError> {
        let attempt = attempt_timeout(timeout);
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(attempt)
            // HTTP/2 pings find a dead connection under a long-lived stream
            // (the watch) even when nothing else is sent.
            .with_keep_alive(Duration::from_secs(5), attempt)
            .with_keep_alive_while_idle(true)
            // A member cut off from its peers answers `no leader` instead of
            // serving stale data or queueing the request.
            .with_require_leader(true);
        if cfg.protocol == EtcdProtocol::Https {
            opts = opts.with_tls(tls_options(cfg)?);
        }
        if let (Some(user), Some(pw)) = (&cfg.username, &cfg.password) {
            opts = opts.with_user(user.clone(), pw.expose().to_owned());
        }
        let members: Vec<(String, String)> =
            cfg.endpoints.iter().map(|e| (format!("{}:{}", e.host, e.port), e.url(cfg.protocol))).collect();
        if members.is_empty() {
            return Err(DcsError::Etcd("no etcd endpoint configured".into()));
        }
        Ok(Dcs { endpoints: Endpoints::new(members, opts), keys: Keys::new(namespace, scope), timeout })
    }

    /// The members, their health and counters (for `/metrics`).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Runs `op` on one member after another until it succeeds, fails for a
    /// reason other than reachability, or the budget is spent (see
    /// [`Endpoints::call`]). Retrying a conditional write is safe: its
    /// outcome is re-read from the keys by the caller, never assumed.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, DcsError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.endpoints.call(self.timeout, op, |_, _| {}).await
    }

    /// Reads every key of the cluster in one linearizable range request.
    pub async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        let prefix = self.keys.prefix().to_owned();
        let resp = self
            .call(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut snap = Snapshot { revision, ..Default::default() };
        for kv in resp.kvs() {
            let key = kv.key_str().map_err(|e| DcsError::Etcd(e.to_string()))?;
            let Some(rel) = key.strip_prefix(self.keys.prefix()) else { continue };
            let value = kv.value_str().unwrap_or("");
            match rel {
                "initialize" => snap.view.initialize = Some(value.to_owned()),
                "leader" => {
                    snap.view.leader = Some(value.to_owned());
                    snap.leader_lease = Some(kv.lease()).filter(|l| *l != 0);
                }
                "config" => {
                    snap.view.config = parse(key, value)?;
                    snap.config_revision = Some(kv.mod_revision());
                }
                "status" => {
                    let status = parse::<Status>(key, value).ok();
                    snap.view.optime = status.as_ref().map(|s| s.optime);
                    snap.view.status_slots = status.map(|s| s.slots).unwrap_or_default();
                }
                "failover" => {
                    let f: Failover = if value.is_empty() { Failover::default() } else { parse(key, value)? };
                    snap.failover_revision = Some(kv.mod_revision());
                    snap.view.failover = Some(f).filter(|f| !f.is_empty());
                }
                "sync" => {
                    snap.sync_revision = Some(kv.mod_revision());
                    // Unreadable: restricts nobody, as an empty one.
                    snap.view.sync = serde_json::from_str::<SyncState>(value).ok();
                }
                "history" => {
                    snap.view.timeline = crate::patroni::history_timeline(value);
                    snap.view.history = crate::patroni::history_entries(value);
                }
                "failsafe" => {
                    // Unreadable: as absent (nobody is restricted by it).
                    snap.view.failsafe = serde_json::from_str(value).ok();
                }
                r if r.starts_with("members/") && !r["members/".len()..].contains('/') => {
                    // A member key that does not parse is skipped, as Patroni does.
                    if let Ok(m) = serde_json::from_str::<MemberValue>(value) {
                        snap.view.members.insert(r["members/".len()..].to_owned(), m);
                    }
                }
                _ => {}
            }
        }
        Ok(snap)
    }

    /// Grants this member's lease.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        let ttl = ttl.as_secs().max(1) as i64;
        Ok(self.call(|mut c| async move { c.lease_grant(ttl, None).await }).await?.id())
    }

    /// Renews `lease`; returns the TTL etcd granted (0 or an error: the lease
    /// is gone). A member that does not confirm in time is left for another
    /// within the budget; each miss is logged with the time left before
    /// `alive_until` (the fencing deadline, when the caller has one).
    pub async fn keepalive(&self, lease: i64, alive_until: Option<tokio::time::Instant>) -> Result<i64, DcsError> {
        let sent = tokio::time::Instant::now();
        let resp = self
            .endpoints
            .call(
                self.timeout,
                |mut c| async move {
                    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                },
                |member, e| {
                    let left_ms = alive_until.map(|t| t.saturating_duration_since(tokio::time::Instant::now()).as_millis());
                    tracing::warn!(member, error = %e, lease, lease_left_ms = ?left_ms, "lease keepalive missed on an etcd member");
                },
            )
            .await?;
        match resp {
            Some(r) => {
                if r.ttl() > 0 {
                    self.endpoints.stats.keepalive_ok(sent);
                }
                Ok(r.ttl())
            }
            None => Err(DcsError::Unreachable("keepalive stream closed".into())),
        }
    }

    pub async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        self.call(|mut c| async move { c.lease_revoke(lease).await }).await?;
        Ok(())
    }

    /// Races for `initialize` (`create_revision == 0`): true when this member won.
    pub async fn race_initialize(&self) -> Result<bool, DcsError> {
        self.create(&self.keys.initialize(), "", None).await
    }

    /// Records the system identifier once the winner's initdb is done.
    pub async fn set_initialize(&self, sysid: &str) -> Result<(), DcsError> {
        self.put(self.keys.initialize(), sysid.to_owned(), None).await
    }

    /// Claims the cluster for existing data (`initialize` = its system identifier), if unclaimed.
    pub async fn adopt_initialize(&self, sysid: &str) -> Result<bool, DcsError> {
        self.create(&self.keys.initialize(), sysid, None).await
    }

    /// Gives up a bootstrap that failed, so another member can race.
    pub async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.delete(self.keys.initialize()).await
    }

    /// Takes the leader key if nobody holds it: true when this member won.
    /// The losing branch reads the key back, so an attempt whose answer was
    /// lost (and then retried on another member) is still seen as won.
    pub async fn acquire_leader(&self, name: &str, lease: i64) -> Result<bool, DcsError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), name, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        Ok(resp.op_responses().into_iter().any(|r| match r {
            TxnOpResponse::Get(g) => {
                g.kvs().first().is_some_and(|kv| kv.value() == name.as_bytes() && kv.lease() == lease)
            }
            _ => false,
        }))
    }

    /// Moves the leader key to a new lease of the same owner (after a lease
    /// was lost and re-granted): only if the key still names this member, or
    /// nobody holds it. Never a blind put.
    pub async fn reclaim_leader(&self, name: &str, lease: i64) -> Result<bool, DcsError> {
        let key = self.keys.leader();
        let put = TxnOp::put(key.clone(), name, Some(PutOptions::new().with_lease(lease)));
        let txn =
            Txn::new().when([Compare::value(key.clone(), CompareOp::Equal, name)]).and_then([put.clone()]).or_else([
                TxnOp::txn(Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([put])),
            ]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        // The nested transaction's outcome.
        Ok(resp.op_responses().into_iter().any(|r| matches!(r, TxnOpResponse::Txn(t) if t.succeeded())))
    }

    /// Deletes the leader key only if it still names this member.
    pub async fn release_leader(&self, name: &str) -> Result<bool, DcsError> {
        let key = self.keys.leader();
        let txn =
            Txn::new().when([Compare::value(key.clone(), CompareOp::Equal, name)]).and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    pub async fn put_member(&self, name: &str, value: &MemberValue, lease: i64) -> Result<(), DcsError> {
        let json = serde_json::to_string(value).expect("member values serialize");
        self.put(self.keys.member(name), json, Some(lease)).await
    }

    pub async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        self.delete(self.keys.member(name)).await
    }

    /// Writes `config` when it does not exist yet (bootstrap).
    pub async fn init_config(&self, config: &DynamicConfig) -> Result<bool, DcsError> {
        let json = serde_json::to_string(config).expect("config serializes");
        self.create(&self.keys.config(), &json, None).await
    }

    /// Replaces `config`, compare-and-set on its `mod_revision`.
    pub async fn put_config(&self, config: &DynamicConfig, expected_revision: i64) -> Result<bool, DcsError> {
        let key = self.keys.config();
        let json = serde_json::to_string(config).expect("config serializes");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision)])
            .and_then([TxnOp::put(key, json, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    pub async fn put_status(&self, status: &Status) -> Result<(), DcsError> {
        let json = serde_json::to_string(status).expect("status serializes");
        self.put(self.keys.status(), json, None).await
    }

    /// Writes `failover`, compare-and-set on its `mod_revision` when given
    /// (`Some(0)`: only if absent). `{}` clears it, as Patroni does.
    pub async fn put_failover(&self, f: &Failover, expected_revision: Option<i64>) -> Result<bool, DcsError> {
        let key = self.keys.failover();
        let json = serde_json::to_string(f).expect("failover serializes");
        let mut txn = Txn::new();
        if let Some(rev) = expected_revision {
            txn = txn.when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)]);
        }
        let txn = txn.and_then([TxnOp::put(key, json, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Writes `sync`, compare-and-set on its `mod_revision` (`None`: only
    /// if absent), as Patroni's leader does.
    pub async fn put_sync(&self, s: &SyncState, expected_revision: Option<i64>) -> Result<bool, DcsError> {
        let key = self.keys.sync();
        let json = serde_json::to_string(s).expect("sync serializes");
        let cmp = match expected_revision {
            Some(rev) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key, json, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Writes `failsafe`: every member's name and REST API address, as
    /// the leader knows them (failsafe mode).
    pub async fn put_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError> {
        let json = serde_json::to_string(members).expect("a string map serializes");
        self.put(self.keys.failsafe(), json, None).await
    }

    /// Deletes `failsafe` (failsafe mode turned off).
    pub async fn delete_failsafe(&self) -> Result<(), DcsError> {
        self.delete(self.keys.failsafe()).await
    }

    /// Deletes `sync` (synchronous mode turned off), compare-and-set.
    pub async fn delete_sync(&self, expected_revision: i64) -> Result<bool, DcsError> {
        let key = self.keys.sync();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Puts `value` at `key` only if the key does not exist.
    async fn create(&self, key: &str, value: &str, lease: Option<i64>) -> Result<bool, DcsError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, opts)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, DcsError> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn put(&self, key: String, value: String, lease: Option<i64>) -> Result<(), DcsError> {
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, lease.map(|l| PutOptions::new().with_lease(l))).await }
        })
        .await?;
        Ok(())
    }

    async fn delete(&self, key: String) -> Result<(), DcsError> {
        self.call(|mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Stores the shared credentials unless some exist; returns the stored ones.
    pub async fn share_credentials(&self, json: &str) -> Result<String, DcsError> {
        let key = self.keys.credentials();
        if self.create(&key, json, None).await? {
            return Ok(json.to_owned());
        }
        let kv = self.get_raw(&key).await?.ok_or_else(|| DcsError::Etcd("credentials vanished".into()))?;
        Ok(kv.value_str().unwrap_or_default().to_owned())
    }

    pub async fn credentials(&self) -> Result<Option<String>, DcsError> {
        Ok(self.get_raw(&self.keys.credentials()).await?.map(|kv| kv.value_str().unwrap_or_default().to_owned()))
    }

    pub async fn put_history(&self, history: &[super::values::HistoryLine]) -> Result<(), DcsError> {
        let json = serde_json::to_string(history).expect("history serializes");
        self.put(self.keys.history(), json, None).await
    }

    /// Raw access for tests and tools.
    pub async fn get_raw(&self, key: &str) -> Result<Option<KeyValue>, DcsError> {
        let key = key.to_owned();
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().cloned())
    }

    /// Every member key, raw (for `tusk list` and tests).
    pub async fn members(&self) -> Result<BTreeMap<String, MemberValue>, DcsError> {
        Ok(self.snapshot().await?.view.members)
    }
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T, DcsError> {
    serde_json::from_str(value).map_err(|e| DcsError::BadValue { key: key.to_owned(), message: e.to_string() })
}

/// CA and client identity from the configured files, read now (so a SIGHUP
/// reconnect picks up rotated files).
fn tls_options(cfg: &EtcdConfig) -> Result<TlsOptions, DcsError> {
    let read = |var: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| DcsError::Tls(format!("{var}: cannot read {}: {e}", path.display())))
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &cfg.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read("ETCD3_CACERT", ca)?));
    }
    if let Some(cert) = &cfg.cert {
        let cert_pem = read("ETCD3_CERT", cert)?;
        // The key may sit in the certificate file (Patroni allows it).
        let key_pem = match &cfg.key {
            Some(k) => read("ETCD3_KEY", k)?,
            None => cert_pem.clone(),
        };
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(tls)
}
