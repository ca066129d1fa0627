//! Synchronous mode on the leader, Patroni's rules (reference §4.7): the
//! leader picks its synchronous standbys, sets `synchronous_standby_names`
//! and records them in the `sync` key, which says who may be promoted.
//!
//! The order keeps the key's promise (every member it names has every
//! acknowledged commit):
//! - a standby leaves the key before it leaves `synchronous_standby_names`;
//! - it enters the key only once PostgreSQL reports it `sync` *and* it has
//!   flushed everything the primary had flushed when the setting changed
//!   (commits acknowledged before it became synchronous are on it too);
//! - before a promotion the key names the new leader alone (compare-and-set
//!   on the revision read), so nobody else races while it promotes.
//!
//! Which standbys to pick is a pure function ([`pick`]), table-tested.

use std::collections::BTreeMap;

use nix::sys::signal::Signal;

use super::decide::ClusterView;
use super::run::Ha;
use crate::patroni::SyncState;
use crate::postgres::{files, replication};

/// `synchronous_standby_names` in strict mode with no standby to pick: a
/// name no standby has, so commits wait (as Patroni's placeholder does).
pub(super) const STRICT_PLACEHOLDER: &str = "__tusk_strict_sync_placeholder__";

/// A streaming standby as the primary sees it (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Standby {
    /// The member it is (its `application_name` is the member's name or
    /// the member's slot name).
    pub member: String,
    pub application_name: String,
    /// `sync` (or `quorum`) in `pg_stat_replication`.
    pub sync: bool,
    pub flush_lsn: u64,
}

/// The standbys to make synchronous: streaming members not tagged
/// `nosync`, within `max_lag` of the primary's flush position, the current
/// synchronous ones first (no needless change), then the furthest ahead;
/// `count` of them.
pub(super) fn pick(
    standbys: &[Standby],
    view: &ClusterView,
    current: &[String],
    primary_lsn: u64,
    max_lag: Option<u64>,
    count: usize,
) -> Vec<Standby> {
    let nosync = |name: &str| {
        view.members.get(name).and_then(|m| m.tags.get("nosync")).is_some_and(|v| v.as_bool() == Some(true))
    };
    let mut candidates: Vec<&Standby> = standbys
        .iter()
        .filter(|s| !nosync(&s.member))
        .filter(|s| max_lag.is_none_or(|max| primary_lsn.saturating_sub(s.flush_lsn) <= max))
        .collect();
    candidates.sort_by(|a, b| {
        let cur = |s: &Standby| current.iter().any(|c| c.eq_ignore_ascii_case(&s.member));
        cur(b).cmp(&cur(a)).then(b.flush_lsn.cmp(&a.flush_lsn)).then(a.member.cmp(&b.member))
    });
    candidates.into_iter().take(count).cloned().collect()
}

/// `synchronous_standby_names` for `picked` (`None`: the empty default).
pub(super) fn standby_names(picked: &[Standby], strict: bool) -> Option<String> {
    match picked {
        [] if strict => Some(format!("\"{STRICT_PLACEHOLDER}\"")),
        [] => None,
        [one] => Some(format!("\"{}\"", one.application_name)),
        many => {
            let names: Vec<String> = many.iter().map(|s| format!("\"{}\"", s.application_name)).collect();
            Some(format!("{} ({})", many.len(), names.join(",")))
        }
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

impl Ha {
    /// Before promoting in synchronous mode: `synchronous_standby_names` as
    /// strict mode demands from the first commit, and the `sync` key naming
    /// this member alone. `false`: the key could not be written (not now).
    pub(super) async fn sync_before_promote(&mut self) -> bool {
        if !self.config.synchronous_mode() {
            return true;
        }
        let names = self.config.synchronous_mode_strict().then(|| format!("\"{STRICT_PLACEHOLDER}\""));
        self.set_standby_names(names, 0);
        let me = self.cfg.name.clone();
        match self.dcs.put_sync(&SyncState::new(&me, &[]), self.sync_revision).await {
            Ok(true) => {
                tracing::info!("synchronous mode: the sync key names this member before it promotes");
                true
            }
            Ok(false) => {
                tracing::warn!("synchronous mode: the sync key changed meanwhile; not promoting this round");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "synchronous mode: cannot write the sync key; not promoting this round");
                false
            }
        }
    }

    /// Writes `synchronous_standby_names` (and reloads) when the file
    /// differs; `lsn`: the primary's flush position at the change. `true`:
    /// it changed.
    fn set_standby_names(&mut self, names: Option<String>, lsn: u64) -> bool {
        match files::write_sync_names(&self.cfg, &self.run_as, names.as_deref()) {
            Ok(true) => {
                if let Some(pm) = &self.pm {
                    pm.signal(Signal::SIGHUP);
                }
                tracing::info!(
                    synchronous_standby_names = names.as_deref().unwrap_or(""),
                    "synchronous replication set"
                );
                self.standby_names = Some((names, lsn));
                true
            }
            Ok(false) => {
                // Already so on disk (tusk restarted): in force since before.
                if self.standby_names.as_ref().map(|(n, _)| n) != Some(&names) {
                    self.standby_names = Some((names, 0));
                }
                false
            }
            Err(e) => {
                tracing::warn!("cannot write synchronous_standby_names: {e}");
                false
            }
        }
    }

    /// Each round while this member leads a running primary.
    pub(super) async fn manage_sync(&mut self, view: &ClusterView) {
        let me = self.cfg.name.clone();
        let mine = view.sync.as_ref().filter(|s| s.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(&me)));
        if !self.config.synchronous_mode() {
            self.set_standby_names(None, 0);
            if mine.is_some()
                && let Some(rev) = self.sync_revision
            {
                match self.dcs.delete_sync(rev).await {
                    Ok(_) => tracing::info!("synchronous mode off: sync key removed"),
                    Err(e) => tracing::warn!(error = %e, "cannot remove the sync key"),
                }
            }
            return;
        }
        let Some(client) = &self.client else { return };
        let (standbys, primary_lsn) = match replication::standbys(client).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "synchronous mode: cannot read pg_stat_replication");
                return;
            }
        };
        // Rows to members: application_name is the member's name or its slot name.
        let by_app: BTreeMap<String, String> = view
            .members
            .keys()
            .filter(|m| **m != me)
            .flat_map(|m| [(m.to_ascii_lowercase(), m.clone()), (replication::slot_name(m), m.clone())])
            .collect();
        let standbys: Vec<Standby> = standbys
            .into_iter()
            .filter_map(|(app, sync, flush)| {
                let member = by_app.get(&app.to_ascii_lowercase())?.clone();
                Some(Standby { member, application_name: app, sync, flush_lsn: flush })
            })
            .collect();

        // The key names this leader first (it may not, after a restart in
        // place or when synchronous mode was just turned on).
        let Some(current) = mine.map(SyncState::standbys) else {
            match self.dcs.put_sync(&SyncState::new(&me, &[]), self.sync_revision).await {
                Ok(true) => tracing::info!("synchronous mode: sync key written for this leader"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot write the sync key"),
            }
            return;
        };
        let count = self.config.synchronous_node_count();
        let picked = pick(&standbys, view, &current, primary_lsn, self.config.maximum_lag_on_syncnode(), count);
        let picked_names: Vec<String> = picked.iter().map(|s| s.member.clone()).collect();

        // 1. Who leaves, leaves the key first.
        let keep: Vec<String> =
            current.iter().filter(|c| picked_names.iter().any(|p| p.eq_ignore_ascii_case(c))).cloned().collect();
        if !same_set(&keep, &current) {
            match self.dcs.put_sync(&SyncState::new(&me, &keep), self.sync_revision).await {
                Ok(true) => {
                    tracing::info!(sync_standby = keep.join(","), "synchronous standby removed from the sync key")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot write the sync key"),
            }
            return;
        }
        // 2. Then synchronous_standby_names.
        let names = standby_names(&picked, self.config.synchronous_mode_strict());
        if self.set_standby_names(names, primary_lsn) {
            return;
        }
        // 3. Who PostgreSQL confirms, with every commit acknowledged before
        // the change flushed, enters the key.
        let since = self.standby_names.as_ref().map_or(u64::MAX, |(_, lsn)| *lsn);
        let confirmed: Vec<String> =
            picked.iter().filter(|s| s.sync && s.flush_lsn >= since).map(|s| s.member.clone()).collect();
        let grows = confirmed.len() > current.len()
            && current.iter().all(|c| confirmed.iter().any(|x| x.eq_ignore_ascii_case(c)));
        if grows {
            match self.dcs.put_sync(&SyncState::new(&me, &confirmed), self.sync_revision).await {
                Ok(true) => tracing::info!(sync_standby = confirmed.join(","), "synchronous standby confirmed"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot write the sync key"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::MemberValue;

    fn sb(member: &str, sync: bool, flush: u64) -> Standby {
        Standby { member: member.into(), application_name: member.into(), sync, flush_lsn: flush }
    }

    fn view(nosync: &[&str]) -> ClusterView {
        let mut v = ClusterView::default();
        for m in ["a", "b", "c", "d"] {
            let mut value: MemberValue =
                serde_json::from_str(r#"{"conn_url":"","api_url":"","state":"running","role":"replica","version":""}"#)
                    .expect("a member value");
            if nosync.contains(&m) {
                value.tags.insert("nosync".into(), serde_json::json!(true));
            }
            v.members.insert(m.into(), value);
        }
        v
    }

    fn names(p: &[Standby]) -> Vec<&str> {
        p.iter().map(|s| s.member.as_str()).collect()
    }

    #[test]
    fn picks_current_first_then_furthest_ahead() {
        let standbys = [sb("b", false, 100), sb("c", true, 300), sb("d", false, 200)];
        let none: Vec<String> = vec![];
        assert_eq!(names(&pick(&standbys, &view(&[]), &none, 300, None, 1)), ["c"]);
        assert_eq!(names(&pick(&standbys, &view(&[]), &none, 300, None, 2)), ["c", "d"]);
        assert_eq!(names(&pick(&standbys, &view(&[]), &["b".into()], 300, None, 1)), ["b"], "keeps the current one");
        assert_eq!(names(&pick(&standbys, &view(&["c"]), &none, 300, None, 1)), ["d"], "nosync is never picked");
        assert_eq!(names(&pick(&standbys, &view(&[]), &["b".into()], 300, Some(150), 1)), ["c"], "too far behind");
        assert!(pick(&[], &view(&[]), &none, 0, None, 1).is_empty());
    }

    #[test]
    fn standby_names_as_patroni_writes_them() {
        assert_eq!(standby_names(&[], false), None);
        assert_eq!(standby_names(&[], true).as_deref(), Some("\"__tusk_strict_sync_placeholder__\""));
        assert_eq!(standby_names(&[sb("b", true, 1)], false).as_deref(), Some("\"b\""));
        assert_eq!(standby_names(&[sb("b", true, 1), sb("c", true, 1)], true).as_deref(), Some("2 (\"b\",\"c\")"));
    }

    #[test]
    fn sync_key_rules() {
        let s = SyncState::new("a", &["b".into(), "C".into()]);
        assert!(s.matches("a") && s.matches("b") && s.matches("c") && !s.matches("d"));
        assert!(s.is_standby("c") && !s.is_standby("a"));
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"leader":"a","sync_standby":"b,C"}"#);
        let patroni: SyncState = serde_json::from_str(r#"{"leader":"a","sync_standby":null}"#).unwrap();
        assert!(!patroni.is_empty() && patroni.standbys().is_empty() && !patroni.matches("b"));
        assert!(SyncState::default().is_empty());
    }

    #[test]
    fn same_set_ignores_order_and_case() {
        assert!(same_set(&["a".into(), "B".into()], &["b".into(), "a".into()]));
        assert!(!same_set(&["a".into()], &["a".into(), "b".into()]));
    }
}
