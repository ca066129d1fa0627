//! Failsafe mode (Patroni's `failsafe_mode`): a primary that cannot reach
//! etcd keeps running, and writable, for as long as every member the
//! leader listed in the `failsafe` key confirms it through `POST /failsafe`
//! within two seconds; each member that confirms does not race for the
//! leader key for a `ttl` after it did. Without every confirmation the
//! primary is fenced at its deadline, as without failsafe mode.
//!
//! Why that keeps one primary: a member can only take the leader key after
//! the primary's lease expired on etcd; one that confirmed within `ttl`
//! does not race; and the primary is writable past its lease only until
//! the time of its last complete round of confirmations plus `ttl` minus
//! the fencing margin, a time measured from *before* it asked, on its
//! monotonic clock. A member it could not reach, or one that answers
//! otherwise (it runs as primary itself), ends the extension.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::decide::ClusterView;
use super::lease::fence_margin;
use super::run::Ha;
use crate::api::FailsafeNotice;
use crate::patroni::Role as MemberRole;

/// How long a member has to confirm (Patroni's).
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// How long before its deadline a primary in failsafe mode asks its
/// members (again): the answers come before the deadline passes.
pub(super) const ASK_AHEAD: Duration = Duration::from_millis(2500);

/// The failsafe side of the executor.
#[derive(Debug)]
pub(super) struct Failsafe {
    /// The `failsafe` key as last read: the members to ask.
    pub members: Option<BTreeMap<String, String>>,
    /// Until when the last complete round of confirmations keeps this
    /// primary writable (monotonic).
    pub until: Option<Instant>,
    /// Running on confirmations now (etcd unreachable).
    pub active: bool,
    /// The primaries' `POST /failsafe` notices to this member.
    pub notices: tokio::sync::watch::Receiver<Option<FailsafeNotice>>,
}

/// The `failsafe` key's value a leader writes: every member with a REST
/// API address, itself included.
pub(super) fn listed_members(view: &ClusterView) -> BTreeMap<String, String> {
    view.members
        .iter()
        .filter(|(_, m)| !m.api_url.is_empty())
        .map(|(name, m)| (name.clone(), m.api_url.clone()))
        .collect()
}

/// The members a primary named `me` must hear from (`None`: it is not
/// listed itself, so it cannot run on confirmations, as in Patroni).
pub(super) fn to_ask<'a>(members: Option<&'a BTreeMap<String, String>>, me: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let members = members.filter(|m| m.contains_key(me))?;
    Some(members.iter().filter(|(n, _)| n.as_str() != me).map(|(n, u)| (n.as_str(), u.as_str())).collect())
}

/// Until when a round of confirmations that started at `asked` keeps the
/// primary writable: the members confirmed after `asked` and do not race
/// for `ttl` after they did.
pub(super) fn confirmed_until(asked: Instant, ttl: Duration) -> Instant {
    asked + ttl - fence_margin(ttl)
}

/// The primary that told this member, within `ttl` before `now`, that it
/// runs without etcd (not `me`).
pub(super) fn told_by<'a>(
    notice: Option<&'a FailsafeNotice>,
    me: &str,
    now: Instant,
    ttl: Duration,
) -> Option<&'a str> {
    let n = notice?;
    let received = Instant::from_std(n.received);
    (n.name != me && now.saturating_duration_since(received) < ttl).then_some(n.name.as_str())
}

impl Failsafe {
    pub fn new(notices: tokio::sync::watch::Receiver<Option<FailsafeNotice>>) -> Failsafe {
        Failsafe { members: None, until: None, active: false, notices }
    }

    /// Confirmations keep the primary writable at `now`.
    pub fn alive(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }
}

impl Ha {
    /// After a successful read of etcd: remembers the `failsafe` key, and,
    /// as leader in failsafe mode, writes it when the members changed (or
    /// deletes it once failsafe mode is off).
    pub(super) async fn failsafe_observed(&mut self, view: &ClusterView) {
        if self.failsafe.active {
            tracing::info!("etcd answers again: failsafe mode no longer needed");
            self.failsafe.active = false;
            self.status.send_modify(|st| st.failsafe_mode_is_active = false);
        }
        self.failsafe.members = view.failsafe.clone();
        if view.leader.as_deref() != Some(self.name()) {
            return;
        }
        if self.config.failsafe_mode() {
            let want = listed_members(view);
            if view.failsafe.as_ref() != Some(&want) {
                match self.dcs.put_failsafe(&want).await {
                    Ok(()) => self.failsafe.members = Some(want),
                    Err(e) => tracing::warn!(error = %e, "cannot write the failsafe key"),
                }
            }
        } else if view.failsafe.is_some() {
            match self.dcs.delete_failsafe().await {
                Ok(()) => self.failsafe.members = None,
                Err(e) => tracing::warn!(error = %e, "cannot delete the failsafe key"),
            }
        }
    }

    /// etcd is unreachable: as a running primary in failsafe mode, asks
    /// every listed member to confirm, and on every confirmation moves the
    /// writable deadline to this round's start plus `ttl` (minus margin).
    pub(super) async fn failsafe_confirm(&mut self) -> bool {
        if !self.config.failsafe_mode() || self.running_primary_pid().is_none() {
            return false;
        }
        let Some(ask) = to_ask(self.failsafe.members.as_ref(), self.name()) else {
            tracing::warn!("failsafe mode: this member is not listed in the failsafe key; cannot run without etcd");
            return false;
        };
        let asked = Instant::now();
        let body = serde_json::json!({
            "name": self.cfg.name,
            "conn_url": format!("postgres://{}/postgres", self.cfg.postgres.connect_address),
            "api_url": self.cfg.api.url("/patroni"),
        });
        let calls = ask.iter().map(|(name, api_url)| {
            let client = self.api_client.clone();
            let body = &body;
            async move {
                let url = crate::api::client::endpoint(api_url, "/failsafe").unwrap_or_default();
                let r = client.request(hyper::Method::POST, &url, Some(body), CONFIRM_WITHIN).await;
                let ok = matches!(&r, Ok((code, _)) if code.is_success());
                if !ok {
                    let why = match r {
                        Ok((code, text)) => format!("{code}: {}", String::from_utf8_lossy(&text).trim()),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(member = name, why, "failsafe mode: a member did not confirm");
                }
                ok
            }
        });
        let confirmed = futures_util::future::join_all(calls).await.iter().all(|ok| *ok);
        if !confirmed {
            return false;
        }
        let ttl = Duration::from_secs(self.config.normalized().ttl);
        self.failsafe.until = Some(confirmed_until(asked, ttl));
        if !self.failsafe.active {
            tracing::warn!(
                members = ask.len(),
                "etcd is unreachable; failsafe mode: every member confirmed, staying primary"
            );
            self.failsafe.active = true;
            self.status.send_modify(|st| st.failsafe_mode_is_active = true);
        }
        true
    }

    /// The primary this member confirmed within `ttl` (failsafe mode): it
    /// does not race for the leader key meanwhile.
    pub(super) fn failsafe_primary(&self) -> Option<String> {
        if !self.config.failsafe_mode() || self.status.borrow().role == MemberRole::Primary {
            return None;
        }
        let ttl = Duration::from_secs(self.config.normalized().ttl);
        let notice = self.failsafe.notices.borrow();
        told_by(notice.as_ref(), self.name(), Instant::now(), ttl).map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(api_url: &str) -> crate::patroni::MemberValue {
        serde_json::from_value(serde_json::json!({
            "conn_url": "postgres://h:5432/postgres", "api_url": api_url, "state": "running",
            "role": "replica", "version": "3.0.2"
        }))
        .expect("member value")
    }

    #[test]
    fn the_key_lists_every_member_with_an_api() {
        let mut v = ClusterView::default();
        v.members.insert("a".into(), member("http://a:8008/patroni"));
        v.members.insert("b".into(), member("http://b:8008/patroni"));
        v.members.insert("c".into(), member(""));
        let l = listed_members(&v);
        assert_eq!(l.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(l["b"], "http://b:8008/patroni");
    }

    #[test]
    fn a_primary_asks_every_other_listed_member_and_only_when_listed() {
        let m: BTreeMap<String, String> =
            [("a", "http://a"), ("b", "http://b"), ("c", "http://c")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(to_ask(Some(&m), "a"), Some(vec![("b", "http://b"), ("c", "http://c")]));
        assert_eq!(to_ask(Some(&m), "z"), None, "not listed: no failsafe");
        assert_eq!(to_ask(None, "a"), None, "no key: no failsafe");
        let alone: BTreeMap<String, String> = [("a".to_owned(), "http://a".to_owned())].into();
        assert_eq!(to_ask(Some(&alone), "a"), Some(vec![]), "a one-member cluster needs nobody");
    }

    #[test]
    fn confirmations_count_from_before_the_asking() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        // 10 s ttl: 2 s margin.
        assert_eq!(confirmed_until(t0, ttl), t0 + Duration::from_secs(8));
        let mut f = Failsafe::new(tokio::sync::watch::channel(None).1);
        assert!(!f.alive(t0));
        f.until = Some(confirmed_until(t0, ttl));
        assert!(f.alive(t0 + Duration::from_secs(7)));
        assert!(!f.alive(t0 + Duration::from_secs(8)));
    }

    #[test]
    fn a_notice_holds_for_a_ttl_and_not_from_oneself() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let n = |name: &str, ago: u64| FailsafeNotice {
            name: name.into(),
            received: (now - Duration::from_secs(ago)).into_std(),
        };
        assert_eq!(told_by(Some(&n("p", 3)), "me", now, ttl), Some("p"));
        assert_eq!(told_by(Some(&n("p", 10)), "me", now, ttl), None, "a ttl old");
        assert_eq!(told_by(Some(&n("me", 1)), "me", now, ttl), None);
        assert_eq!(told_by(None, "me", now, ttl), None);
    }
}
