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

/// Quorum mode's `synchronous_standby_names`: `ANY n ("a","b")`.
pub(super) fn quorum_names(active: &[Standby], numsync: usize, strict: bool) -> Option<String> {
    if active.is_empty() || numsync == 0 {
        return strict.then(|| format!("\"{STRICT_PLACEHOLDER}\""));
    }
    let names: Vec<String> = active.iter().map(|s| format!("\"{}\"", s.application_name)).collect();
    Some(format!("ANY {numsync} ({})", names.join(",")))
}

/// What a `synchronous_standby_names` tusk wrote asks for: how many
/// acknowledgements, from which names (unquoted). Nothing, or strict
/// mode's placeholder: `(0, [])` (commits may be on the primary alone).
pub(super) fn parse_names(names: Option<&str>) -> (usize, Vec<String>) {
    let Some(s) = names.map(str::trim).filter(|s| !s.is_empty()) else { return (0, Vec::new()) };
    let unquote = |n: &str| n.trim().trim_matches('"').to_owned();
    let (num, list) = match s.split_once('(') {
        Some((head, rest)) => {
            let head = head.trim();
            let head = head.strip_prefix("ANY").or_else(|| head.strip_prefix("FIRST")).unwrap_or(head);
            let list: Vec<String> = rest.trim_end_matches(')').split(',').map(unquote).collect();
            (head.trim().parse().unwrap_or(1), list)
        }
        None => (1, vec![unquote(s)]),
    };
    let list: Vec<String> = list.into_iter().filter(|n| !n.is_empty() && n != STRICT_PLACEHOLDER).collect();
    if list.is_empty() { (0, list) } else { (num.min(list.len()), list) }
}

/// One step of quorum mode (Patroni's order): the `sync` key promises
/// that any `quorum` of its voters besides a candidate (`quorum + 1` for a
/// non-voter) include one with every acknowledged commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum QuorumStep {
    /// Write the key: these voters, this quorum.
    Key { voters: Vec<String>, quorum: u64 },
    /// Write `synchronous_standby_names` for the target.
    Names,
    /// Nothing to change.
    Settled,
}

/// The next step from the key (`voters`, `quorum`; `None`: not this
/// leader's) and the setting in force (`numsync` of `sync`) to the target
/// (`want` of `active`). Raising a requirement comes first, lowering it
/// last: the key widens to cover both the setting in force and the target,
/// then the setting changes, then the key narrows, once `confirmed` of the
/// target's standbys flushed everything the primary had when it changed.
pub(super) fn quorum_step(
    key: Option<(&[String], u64)>,
    (numsync, sync): (usize, &[String]),
    (want, active): (usize, &[String]),
    names_differ: bool,
    confirmed: usize,
) -> QuorumStep {
    let has = |set: &[String], n: &String| set.iter().any(|x| x.eq_ignore_ascii_case(n));
    let kmin = numsync.min(want) as u64;
    let Some((voters, quorum)) = key else {
        let mut v: Vec<String> = Vec::new();
        for n in sync.iter().chain(active) {
            if !has(&v, n) {
                v.push(n.clone());
            }
        }
        let q = (v.len() as u64).saturating_sub(kmin);
        return QuorumStep::Key { voters: v, quorum: q };
    };
    let covered = sync.iter().chain(active).all(|n| has(voters, n));
    if !covered || quorum < (voters.len() as u64).saturating_sub(kmin) {
        let mut v = voters.to_vec();
        for n in sync.iter().chain(active) {
            if !has(&v, n) {
                v.push(n.clone());
            }
        }
        let q = (v.len() as u64).saturating_sub(kmin);
        return QuorumStep::Key { voters: v, quorum: q };
    }
    if names_differ {
        return QuorumStep::Names;
    }
    let target_q = (active.len() as u64).saturating_sub(want as u64);
    let same_voters = voters.len() == active.len() && active.iter().all(|n| has(voters, n));
    if (!same_voters || quorum != target_q) && confirmed >= want {
        return QuorumStep::Key { voters: active.to_vec(), quorum: target_q };
    }
    QuorumStep::Settled
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
        let key = if self.config.quorum_mode() { SyncState::quorum_of(&me, &[], 0) } else { SyncState::new(&me, &[]) };
        match self.dcs.put_sync(&key, self.sync_revision).await {
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
        // Synchronous mode off and the file known absent: no read per round
        // (only this function writes the file; `files::write_all` only
        // removes it).
        if names.is_none() && matches!(self.standby_names, Some((None, _))) {
            return false;
        }
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
        if self.config.quorum_mode() {
            return self.manage_quorum(view, &standbys, &by_app, primary_lsn).await;
        }
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

impl Ha {
    /// Quorum mode, each round on the leader: every eligible standby in
    /// `ANY n (...)`, the `sync` key's voters and quorum moved one step at a
    /// time ([`quorum_step`]).
    async fn manage_quorum(
        &mut self,
        view: &ClusterView,
        standbys: &[Standby],
        by_app: &BTreeMap<String, String>,
        primary_lsn: u64,
    ) {
        let me = self.cfg.name.clone();
        let mine = view.sync.as_ref().filter(|s| s.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(&me)));
        let voters = mine.map(SyncState::standbys).unwrap_or_default();
        let key = mine.map(|s| (voters.as_slice(), s.quorum.unwrap_or(0)));
        let active = pick(standbys, view, &voters, primary_lsn, self.config.maximum_lag_on_syncnode(), usize::MAX);
        let want = self.config.synchronous_node_count().min(active.len());
        let active_members: Vec<String> = active.iter().map(|s| s.member.clone()).collect();
        // The setting in force, by member (a name no member has any more
        // stays: it may hold commits nobody else has).
        let current = self.standby_names.as_ref().and_then(|(n, _)| n.clone());
        let (numsync, sync_apps) = parse_names(current.as_deref());
        let sync: Vec<String> = sync_apps
            .iter()
            .map(|a| by_app.get(&a.to_ascii_lowercase()).cloned().unwrap_or_else(|| a.clone()))
            .collect();
        let target = quorum_names(&active, want, self.config.synchronous_mode_strict());
        let since = self.standby_names.as_ref().map_or(u64::MAX, |(_, lsn)| *lsn);
        let confirmed = active.iter().filter(|s| s.sync && s.flush_lsn >= since).count();
        let names_differ = self.standby_names.as_ref().map(|(n, _)| n) != Some(&target);
        match quorum_step(key, (numsync, &sync), (want, &active_members), names_differ, confirmed) {
            QuorumStep::Key { voters, quorum } => {
                match self.dcs.put_sync(&SyncState::quorum_of(&me, &voters, quorum), self.sync_revision).await {
                    Ok(true) => tracing::info!(voters = voters.join(","), quorum, "quorum mode: sync key written"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot write the sync key"),
                }
            }
            QuorumStep::Names => {
                self.set_standby_names(target, primary_lsn);
            }
            QuorumStep::Settled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::MemberValue;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quorum_names_and_their_parse() {
        let act = [sb("b", true, 1), sb("c", true, 1)];
        assert_eq!(quorum_names(&act, 1, false).as_deref(), Some("ANY 1 (\"b\",\"c\")"));
        assert_eq!(quorum_names(&[], 0, false), None);
        assert_eq!(parse_names(quorum_names(&act, 1, false).as_deref()), (1, v(&["b", "c"])));
        assert_eq!(parse_names(quorum_names(&[], 0, true).as_deref()), (0, vec![]));
        assert_eq!(parse_names(Some("\"b\"")), (1, v(&["b"])));
        assert_eq!(parse_names(Some("2 (\"b\",\"c\")")), (2, v(&["b", "c"])));
        assert_eq!(parse_names(Some("FIRST 3 (b, c)")), (2, v(&["b", "c"])), "never more than listed");
        assert_eq!(parse_names(None), (0, vec![]));
    }

    /// Runs the steps the leader would take, applying each, until settled;
    /// checks the promise after every step: any `quorum` voters besides a
    /// candidate, or `quorum + 1` for a non-voter, meet every set of
    /// `numsync` standbys that may have acknowledged a commit (those of the
    /// setting in force and, until confirmed, of the one before).
    fn run(mut key: Option<(Vec<String>, u64)>, mut ssn: (usize, Vec<String>), want: usize, active: &[&str]) -> usize {
        let active = v(active);
        let mut previous: Option<(usize, Vec<String>)> = None;
        for step in 0..10 {
            let names_differ = ssn != (want, active.clone()) && !(want == 0 && ssn.0 == 0);
            let confirmed = if previous.is_some() { 0 } else { want };
            let k = key.as_ref().map(|(v, q)| (v.as_slice(), *q));
            match quorum_step(k, (ssn.0, &ssn.1), (want, &active), names_differ, confirmed) {
                QuorumStep::Key { voters, quorum } => key = Some((voters, quorum)),
                QuorumStep::Names => {
                    previous = Some(ssn.clone());
                    ssn = (want, active.clone());
                }
                QuorumStep::Settled if previous.is_some() => previous = None, // the standbys confirmed
                QuorumStep::Settled => return step,
            }
            let (voters, quorum) = key.clone().expect("a key after the first step");
            for (k, set) in std::iter::once(&ssn).chain(previous.iter()) {
                if *k == 0 {
                    continue;
                }
                // Worst case: the acknowledging standbys are all voters
                // the candidate does not ask; a set of `quorum + 1` voters
                // (candidate included) must still meet them.
                let acking_in_voters = set.iter().filter(|n| voters.contains(n)).count().min(*k);
                // (No set of `quorum + 1` voters: nobody but the leader can take over.)
                let nobody = quorum as usize + 1 > voters.len();
                assert!(
                    nobody
                        || (set.iter().all(|n| voters.contains(n))
                            && quorum as usize + 1 + acking_in_voters > voters.len()),
                    "broken promise at step {step}: key {voters:?}/{quorum}, setting {k} of {set:?}"
                );
            }
        }
        panic!("never settled")
    }

    #[test]
    fn quorum_steps_keep_the_promise_to_the_optimum() {
        // First key of a new leader with no standbys yet.
        assert_eq!(quorum_step(None, (0, &[]), (0, &[]), false, 0), QuorumStep::Key { voters: vec![], quorum: 0 });
        // Two standbys appear: the key first (nobody can promote yet), then
        // the setting, then the key narrows to its optimum.
        run(Some((vec![], 0)), (0, vec![]), 1, &["b", "c"]);
        // One of them goes away.
        run(Some((v(&["b", "c"]), 1)), (1, v(&["b", "c"])), 1, &["b"]);
        // synchronous_node_count 1 -> 2 and back.
        run(Some((v(&["b", "c"]), 1)), (1, v(&["b", "c"])), 2, &["b", "c"]);
        run(Some((v(&["b", "c"]), 0)), (2, v(&["b", "c"])), 1, &["b", "c"]);
        // From priority mode's key and setting.
        run(Some((v(&["b"]), 0)), (1, v(&["b"])), 1, &["b", "c", "d"]);
        // Everyone gone: the key ends naming no voter.
        run(Some((v(&["b", "c"]), 1)), (1, v(&["b", "c"])), 0, &[]);
        let settled = quorum_step(Some((&v(&["b", "c"]), 1)), (1, &v(&["b", "c"])), (1, &v(&["b", "c"])), false, 2);
        assert_eq!(settled, QuorumStep::Settled);
    }

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
