//! The etcd side of the loop: this member's lease as a value (its id, TTL
//! and fencing deadline, testable without etcd), its renewal, the watch
//! that wakes the loop, and the reconnect on reload.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::run::Ha;
use crate::api;
use crate::dcs::client::{Dcs, DcsError};

/// Time kept between the fencing deadline and the lease's expiry on etcd.
pub(super) fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 5).clamp(Duration::from_millis(500), Duration::from_secs(3))
}

/// This member's lease as the loop knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    /// etcd's lease id (the member key and the leader key live on it).
    pub id: i64,
    /// TTL the lease was granted with.
    pub ttl: Duration,
    /// Monotonic time until which the lease is known alive (fencing
    /// deadline): send time of the last successful keepalive + TTL − margin.
    pub alive_until: Option<Instant>,
    pub keepalive_failed: bool,
    pub last_renewal: Option<Instant>,
}

impl Lease {
    /// A lease just granted with `ttl`, the grant sent at `sent`.
    pub fn granted(id: i64, ttl: Duration, sent: Instant) -> Lease {
        let mut l = Lease { id, ttl, alive_until: None, keepalive_failed: false, last_renewal: None };
        l.renewed(sent, ttl);
        l
    }

    /// A keepalive sent at `sent` was answered with `ttl`.
    pub fn renewed(&mut self, sent: Instant, ttl: Duration) {
        self.alive_until = Some(sent + ttl - fence_margin(ttl));
    }

    /// Known alive at `now` (else a primary must stop writing).
    pub fn alive(&self, now: Instant) -> bool {
        self.alive_until.is_some_and(|t| now < t)
    }

    /// Renew now? At most once per `loop_wait`, unless the last one failed.
    pub fn renewal_due(&self, now: Instant, loop_wait: Duration) -> bool {
        self.keepalive_failed || self.last_renewal.is_none_or(|t| now.saturating_duration_since(t) >= loop_wait)
    }
}

impl Ha {
    /// Wakes the loop on changes of the keys that decide leadership.
    pub(super) fn spawn_watch(&mut self) {
        if let Some(old) = self.watch_task.take() {
            old.abort();
        }
        let dcs = self.dcs.clone();
        let wake = self.wake.clone();
        let leading = self.leading.clone();
        let own = format!("members/{}", self.cfg.name);
        self.watch_task = Some(tokio::spawn(async move {
            let restarted = || wake.notify_one();
            dcs.follow(
                |events| {
                    let relevant = events.iter().any(|ev| {
                        // A member leaving matters to everyone (peer checks); one
                        // joining matters to the leader (its slot). A member key
                        // rewritten (its WAL position moves with every write) does
                        // not: waking on it would run a round per write, and the
                        // leader's own rewrite would wake it again and again.
                        matches!(ev.key.as_str(), "leader" | "config" | "failover" | "initialize")
                            || (ev.key.starts_with("members/")
                                && ev.key != own
                                && (ev.deleted || (ev.created && leading.load(std::sync::atomic::Ordering::Relaxed))))
                    });
                    if relevant {
                        wake.notify_one();
                    }
                },
                // Events may have been missed while (re)connecting: look again.
                restarted,
            )
            .await
        }));
    }

    pub(super) async fn renew_lease(&mut self) {
        // At most once per loop_wait (unless the last one failed), as Patroni
        // does: waking up more often (watch events) must not stretch the life
        // of the lease, which is what a crashed leader's failover waits for.
        let loop_wait = Duration::from_secs(self.config.normalized().loop_wait);
        if !self.lease.renewal_due(Instant::now(), loop_wait) {
            return;
        }
        let sent = Instant::now();
        self.lease.last_renewal = Some(sent);
        let result = self.dcs.keepalive(self.lease.id, self.lease.alive_until).await;
        self.lease.keepalive_failed = result.is_err();
        match result {
            Ok(ttl) if ttl > 0 => self.lease.renewed(sent, Duration::from_secs(ttl as u64)),
            Ok(_) | Err(DcsError::LeaseNotFound) => {
                tracing::warn!(lease = self.lease.id, "the lease expired; granting a new one");
                let ttl = Duration::from_secs(self.config.normalized().ttl);
                if let Ok(l) = self.dcs.grant_lease(ttl).await {
                    self.lease.id = l;
                    self.lease.renewed(sent, ttl);
                    self.last_member = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease keepalive failed"),
        }
    }

    /// Takes the leader key; a lease found gone (revoked under us) is
    /// granted anew and the race run once more with it.
    pub(super) async fn acquire_leader(&mut self) -> Result<bool, DcsError> {
        match self.dcs.acquire_leader(&self.cfg.name, self.lease.id).await {
            Err(DcsError::LeaseNotFound) => {
                let ttl = Duration::from_secs(self.config.normalized().ttl);
                let sent = Instant::now();
                let id = self.dcs.grant_lease(ttl).await?;
                tracing::warn!(
                    old = self.lease.id,
                    new = id,
                    "the lease was gone at the leader race; granted a new one"
                );
                self.lease = Lease::granted(id, ttl, sent);
                self.last_member = None;
                self.dcs.acquire_leader(&self.cfg.name, self.lease.id).await
            }
            r => r,
        }
    }

    pub(super) fn lease_alive(&self) -> bool {
        self.lease.alive(Instant::now())
    }

    /// SIGHUP: PostgreSQL's certificates re-installed and reloaded; the etcd
    /// certificate files re-read by a new connection (kept only if it works).
    pub(super) async fn reload(&mut self) {
        if let Err(e) = crate::postgres::tls::install(&self.cfg, &self.run_as) {
            tracing::error!("keeping the installed certificates: {e}");
        }
        if let Some(pm) = &self.pm {
            pm.signal(Signal::SIGHUP);
            if let Some(cb) = &self.callbacks {
                cb.reloaded();
            }
        }
        api::reload_tls(&self.api_tls, &self.cfg.api);
        let etcd = self.cfg.etcd.clone().expect("HA mode has an etcd section");
        let timeout = Duration::from_secs(self.config.normalized().retry_timeout);
        match Dcs::connect(&etcd, &self.cfg.namespace, &self.cfg.scope, timeout).await {
            Ok(dcs) => match dcs.snapshot().await {
                Ok(_) => {
                    self.dcs = dcs;
                    self.dcs_tx.send_replace(Some(self.dcs.clone()));
                    self.spawn_watch();
                    tracing::info!("reloaded: etcd certificates re-read, postgres reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "keeping the current etcd connection: the new certificates do not work")
                }
            },
            Err(e) => tracing::error!(error = %e, "keeping the current etcd connection"),
        }
    }
}

/// Renews `lease` every `every` for as long as it is polled (while a long
/// action runs: initdb, a base backup, pg_rewind), recording the new fencing
/// deadline in `alive_until`. Stops renewing once the lease is gone (the
/// loop grants a new one).
pub(super) async fn keep_lease(
    dcs: &Dcs,
    lease: i64,
    every: Duration,
    alive_until: &std::cell::Cell<Option<Instant>>,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        match dcs.keepalive(lease, alive_until.get()).await {
            Ok(ttl) if ttl > 0 => {
                let ttl = Duration::from_secs(ttl as u64);
                alive_until.set(Some(sent + ttl - fence_margin(ttl)));
                tracing::debug!("lease renewed during a long action");
            }
            Ok(_) | Err(DcsError::LeaseNotFound) => return std::future::pending().await,
            Err(e) => tracing::warn!(error = %e, "lease keepalive failed during a long action"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_and_renewal() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut l = Lease::granted(7, ttl, t0);
        // 30 s TTL: 3 s margin (ttl / 5, at most 3 s).
        assert_eq!(l.alive_until, Some(t0 + Duration::from_secs(27)));
        assert!(l.alive(t0 + Duration::from_secs(26)));
        assert!(!l.alive(t0 + Duration::from_secs(27)));
        assert!(l.renewal_due(t0, Duration::from_secs(10)), "never renewed");
        l.last_renewal = Some(t0);
        assert!(!l.renewal_due(t0 + Duration::from_secs(9), Duration::from_secs(10)));
        assert!(l.renewal_due(t0 + Duration::from_secs(10), Duration::from_secs(10)));
        l.keepalive_failed = true;
        assert!(l.renewal_due(t0 + Duration::from_secs(1), Duration::from_secs(10)), "retry after a failure");
        l.renewed(t0 + Duration::from_secs(20), Duration::from_secs(10));
        // 10 s TTL: 2 s margin.
        assert_eq!(l.alive_until, Some(t0 + Duration::from_secs(28)));
        assert_eq!(fence_margin(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
