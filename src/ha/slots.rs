//! Replication slots in HA mode, as Patroni manages them: the members'
//! physical slots on the leader (a departed member's slot kept for
//! `member_slots_ttl`), the permanent slots of the DCS config's `slots`
//! (created on the leader, kept on every replica and advanced there to the
//! positions the leader publishes in `status.slots`; a logical one is copied
//! from the primary's `pg_replslot/<name>/state` with one restart of the
//! replica, since PostgreSQL < 16 cannot create a logical slot on a standby),
//! and `ignore_slots`, slots never dropped or touched.
//!
//! The pure parts ([`permanent_slots`], [`ignore_slots`], [`plan_primary`],
//! [`plan_replica`]) decide; [`Ha::leader_slots`] and [`Ha::replica_slots`]
//! carry the plan out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::decide::ClusterView;
use super::run::Ha;
use crate::patroni::{DynamicConfig, Status};
use crate::postgres::files::Role;
use crate::postgres::replication;
use crate::postgres::slots::{self as pgslots, ExistingSlot, valid_slot_name};
use crate::postgres::stop::Mode;

/// Patroni 4's default `member_slots_ttl`.
const DEFAULT_MEMBER_SLOTS_TTL: Duration = Duration::from_secs(1800);
/// A failed copy of logical slots is not tried again sooner.
const COPY_RETRY: Duration = Duration::from_secs(30);

/// What a permanent slot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    Physical,
    Logical { database: String, plugin: String },
}

impl SlotKind {
    fn matches(&self, e: &ExistingSlot) -> bool {
        match self {
            SlotKind::Physical => e.kind == "physical",
            SlotKind::Logical { database, plugin } => {
                e.kind == "logical" && e.database.as_deref() == Some(database) && e.plugin.as_deref() == Some(plugin)
            }
        }
    }
}

/// One `ignore_slots` entry: every attribute given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreMatcher {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl IgnoreMatcher {
    fn matches(&self, e: &ExistingSlot) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        eq(&self.name, Some(&e.name))
            && eq(&self.kind, Some(&e.kind))
            && eq(&self.database, e.database.as_deref())
            && eq(&self.plugin, e.plugin.as_deref())
    }
}

/// The DCS config's `slots`: `{name: {type: physical}}` or `{name: {type:
/// logical, database, plugin}}` (Patroni's defaults: type physical; a
/// logical slot without database or plugin is refused). Entries that cannot
/// be used come back as messages.
pub fn permanent_slots(cfg: &DynamicConfig) -> (BTreeMap<String, SlotKind>, Vec<String>) {
    let mut slots = BTreeMap::new();
    let mut problems = Vec::new();
    let Some(v) = cfg.other.get("slots") else { return (slots, problems) };
    let Some(map) = v.as_object() else {
        if !v.is_null() {
            problems.push("slots: not a mapping; ignored".to_owned());
        }
        return (slots, problems);
    };
    for (name, spec) in map {
        if !valid_slot_name(name) {
            problems.push(format!("slots: {name:?} is not a valid slot name; ignored"));
            continue;
        }
        let field = |k: &str| spec.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned);
        let kind = match field("type").as_deref() {
            None | Some("physical") => SlotKind::Physical,
            Some("logical") => match (field("database"), field("plugin")) {
                (Some(database), Some(plugin)) => SlotKind::Logical { database, plugin },
                _ => {
                    problems.push(format!("slots: logical slot {name} needs a database and a plugin; ignored"));
                    continue;
                }
            },
            Some(t) => {
                problems.push(format!("slots: {name} has an unknown type {t:?}; ignored"));
                continue;
            }
        };
        slots.insert(name.clone(), kind);
    }
    (slots, problems)
}

/// The DCS config's `ignore_slots`: a list of matchers on `name`, `type`,
/// `database`, `plugin`.
pub fn ignore_slots(cfg: &DynamicConfig) -> Vec<IgnoreMatcher> {
    let Some(list) = cfg.other.get("ignore_slots").and_then(|v| v.as_array()) else { return Vec::new() };
    list.iter()
        .filter_map(|m| {
            let m = m.as_object()?;
            let f = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let matcher =
                IgnoreMatcher { name: f("name"), kind: f("type"), database: f("database"), plugin: f("plugin") };
            // An entry matching nothing in particular would match every slot.
            (matcher != IgnoreMatcher::default()).then_some(matcher)
        })
        .collect()
}

/// `member_slots_ttl`: seconds as a number, or a string with an optional
/// unit (`ms`, `s`, `min`/`m`, `h`, `d`), as Patroni accepts; 1800 s by default.
pub fn member_slots_ttl(cfg: &DynamicConfig) -> Duration {
    match cfg.other.get("member_slots_ttl") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map_or(DEFAULT_MEMBER_SLOTS_TTL, Duration::from_secs),
        Some(serde_json::Value::String(s)) => parse_duration(s).unwrap_or(DEFAULT_MEMBER_SLOTS_TTL),
        _ => DEFAULT_MEMBER_SLOTS_TTL,
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

/// What to do with the server's slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create_physical: Vec<String>,
    /// (name, database, plugin)
    pub create_logical: Vec<(String, String, String)>,
    /// Dropped only when inactive.
    pub drop: Vec<String>,
    /// (name, target LSN, database of a logical slot)
    pub advance: Vec<(String, u64, Option<String>)>,
    /// Logical slots to copy from the primary.
    pub copy: Vec<String>,
}

fn ignored(e: &ExistingSlot, ignore: &[IgnoreMatcher]) -> bool {
    ignore.iter().any(|m| m.matches(e))
}

/// The leader's plan: a physical slot per member in `members` (slot names,
/// the departed ones still within `member_slots_ttl` included), the
/// permanent slots; every other slot dropped unless ignored or temporary.
/// A permanent slot of the wrong kind is dropped (created again next round).
pub fn plan_primary(
    existing: &[ExistingSlot],
    members: &BTreeSet<String>,
    permanent: &BTreeMap<String, SlotKind>,
    ignore: &[IgnoreMatcher],
) -> Plan {
    let mut plan = Plan::default();
    for e in existing {
        if e.temporary || ignored(e, ignore) {
            continue;
        }
        let keep = match permanent.get(&e.name) {
            Some(kind) => kind.matches(e),
            None => members.contains(&e.name) && e.kind == "physical",
        };
        if !keep {
            plan.drop.push(e.name.clone());
        }
    }
    let exists = |n: &str| existing.iter().any(|e| e.name == n);
    for (name, kind) in permanent {
        if exists(name) {
            continue;
        }
        match kind {
            SlotKind::Physical => plan.create_physical.push(name.clone()),
            SlotKind::Logical { database, plugin } => {
                plan.create_logical.push((name.clone(), database.clone(), plugin.clone()))
            }
        }
    }
    for name in members {
        if !exists(name) && !permanent.contains_key(name) {
            plan.create_physical.push(name.clone());
        }
    }
    plan
}

/// A replica's plan: the permanent slots (but its own member slot) kept
/// and advanced to the leader's published positions (`published`), never
/// past what this replica replayed (`replay`); a missing logical one copied
/// once the leader publishes it. Nothing else is dropped on a replica.
pub fn plan_replica(
    existing: &[ExistingSlot],
    permanent: &BTreeMap<String, SlotKind>,
    ignore: &[IgnoreMatcher],
    published: &BTreeMap<String, u64>,
    replay: u64,
    own_slot: &str,
) -> Plan {
    let mut plan = Plan::default();
    for (name, kind) in permanent {
        if name == own_slot {
            continue;
        }
        let e = existing.iter().find(|e| &e.name == name);
        if e.is_some_and(|e| e.temporary || ignored(e, ignore)) {
            continue;
        }
        let target = published.get(name).map(|p| (*p).min(replay));
        match (e, kind) {
            (Some(e), k) if !k.matches(e) => plan.drop.push(name.clone()),
            (Some(e), k) => {
                if let Some(t) = target
                    && !e.active
                    && e.position().is_some_and(|p| p < t)
                {
                    let db = match k {
                        SlotKind::Logical { database, .. } => Some(database.clone()),
                        SlotKind::Physical => None,
                    };
                    plan.advance.push((name.clone(), t, db));
                }
            }
            (None, SlotKind::Physical) => plan.create_physical.push(name.clone()),
            (None, SlotKind::Logical { .. }) => {
                if published.contains_key(name) {
                    plan.copy.push(name.clone());
                }
            }
        }
    }
    plan
}

/// A replica's slots for the members that stream from it (`want`, slot
/// names): created when missing; other physical slots that are not
/// permanent, ignored or temporary dropped once inactive (a member that
/// stopped cascading from it, or a member slot left from when it led).
pub fn plan_cascade(
    existing: &[ExistingSlot],
    want: &BTreeSet<String>,
    permanent: &BTreeMap<String, SlotKind>,
    ignore: &[IgnoreMatcher],
) -> Plan {
    let mut plan = Plan::default();
    for e in existing {
        if e.kind == "physical"
            && !e.temporary
            && !e.active
            && !permanent.contains_key(&e.name)
            && !ignored(e, ignore)
            && !want.contains(&e.name)
        {
            plan.drop.push(e.name.clone());
        }
    }
    for name in want {
        if !existing.iter().any(|e| &e.name == name) {
            plan.create_physical.push(name.clone());
        }
    }
    plan
}

/// The executor's memory about slots.
#[derive(Debug, Default)]
pub struct SlotState {
    /// Member slot name → when the member was last seen (leader only; a new
    /// leader starts the grace again for the slots it finds).
    last_seen: BTreeMap<String, Instant>,
    /// `last_seen` was seeded from the slots found on becoming leader.
    seeded: bool,
    /// The `status` value last written.
    pub(super) last_status: Option<Status>,
    /// The config problems last logged.
    problems: Vec<String>,
    /// The last failed copy of logical slots.
    copy_failed: Option<Instant>,
    /// Copied logical slots not yet known safe to use after a failover
    /// (name → the primary's slot catalog_xmin when first checked).
    pending: BTreeMap<String, Option<u32>>,
}

impl SlotState {
    /// Forget the leader's memory (leadership lost or newly gained).
    pub fn reset_leader(&mut self) {
        self.last_seen.clear();
        self.seeded = false;
        self.last_status = None;
    }

    fn log_problems(&mut self, problems: Vec<String>) {
        if problems != self.problems {
            for p in &problems {
                tracing::warn!("{p}");
            }
            self.problems = problems;
        }
    }
}

impl Ha {
    /// On the leader, each round: reconciles the slots and publishes `status`.
    pub(super) async fn leader_slots(&mut self, view: &ClusterView) {
        let Some(client) = &self.client else { return };
        let pos = match replication::position(client).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the WAL position");
                return;
            }
        };
        let mut status = Status { optime: pos.wal, slots: BTreeMap::new(), retain_slots: Vec::new() };
        if self.config.postgresql.use_slots {
            let (permanent, problems) = permanent_slots(&self.config);
            self.slots.log_problems(problems);
            let ignore = ignore_slots(&self.config);
            let ttl = member_slots_ttl(&self.config);
            match pgslots::list(client).await {
                Err(e) => tracing::warn!(error = %e, "cannot list replication slots"),
                Ok(existing) => {
                    let now = Instant::now();
                    let me = replication::slot_name(&self.cfg.name);
                    if !self.slots.seeded {
                        // The grace starts again for the member slots a new leader finds.
                        for e in existing.iter().filter(|e| e.kind == "physical" && !e.temporary) {
                            if !permanent.contains_key(&e.name) && e.name != me && !ignored(e, &ignore) {
                                self.slots.last_seen.insert(e.name.clone(), now);
                            }
                        }
                        self.slots.seeded = true;
                    }
                    for m in view.members.keys() {
                        let s = replication::slot_name(m);
                        if s != me {
                            self.slots.last_seen.insert(s, now);
                        }
                    }
                    self.slots.last_seen.retain(|_, seen| now.duration_since(*seen) <= ttl);
                    // ttl 0: only the members in the DCS now.
                    let mut members: BTreeSet<String> = if ttl.is_zero() {
                        view.members.keys().map(|m| replication::slot_name(m)).filter(|s| *s != me).collect()
                    } else {
                        self.slots.last_seen.keys().cloned().collect()
                    };
                    // Members streaming from another replica (replicatefrom)
                    // have their slot there, not here.
                    for (n, m) in &view.members {
                        if super::observe::stream_from(view, n, m.replicatefrom(), &self.cfg.name) != self.cfg.name {
                            members.remove(&replication::slot_name(n));
                        }
                    }
                    let plan = plan_primary(&existing, &members, &permanent, &ignore);
                    self.carry_out(&plan).await;
                    for e in &existing {
                        if permanent.get(&e.name).is_some_and(|k| k.matches(e))
                            && let Some(p) = e.position()
                        {
                            status.slots.insert(e.name.clone(), p);
                        }
                    }
                    status.retain_slots = members.into_iter().chain(std::iter::once(me)).collect();
                    status.retain_slots.sort();
                }
            }
        }
        if self.slots.last_status.as_ref() != Some(&status) && self.dcs.put_status(&status).await.is_ok() {
            self.last_status_optime = Some(status.optime);
            self.slots.last_status = Some(status);
        }
    }

    /// On a running replica, each round: keeps and advances the permanent
    /// slots, copies missing logical ones from the primary (one restart).
    pub(super) async fn replica_slots(&mut self, view: &ClusterView, leader: &str) {
        if !self.config.postgresql.use_slots || self.state != crate::patroni::State::Running {
            return;
        }
        let Some(client) = &self.client else { return };
        let (permanent, problems) = permanent_slots(&self.config);
        self.slots.log_problems(problems);
        let ignore = ignore_slots(&self.config);
        let (existing, pos) = match (pgslots::list(client).await, replication::position(client).await) {
            (Ok(e), Ok(p)) => (e, p),
            (Err(e), _) => return tracing::warn!(error = %e, "cannot list replication slots"),
            (_, Err(e)) => return tracing::warn!(error = %e, "cannot read the WAL position"),
        };
        if !pos.in_recovery {
            return;
        }
        // The slots of the members that stream from this one (replicatefrom).
        let me_name = self.cfg.name.clone();
        let cascading: BTreeSet<String> = view
            .members
            .iter()
            .filter(|(n, m)| {
                m.replicatefrom() == Some(me_name.as_str())
                    && super::observe::stream_from(view, n, Some(&me_name), leader) == me_name
            })
            .map(|(n, _)| replication::slot_name(n))
            .collect();
        self.carry_out(&plan_cascade(&existing, &cascading, &permanent, &ignore)).await;
        if permanent.is_empty() {
            return;
        }
        let me = replication::slot_name(&self.cfg.name);
        let replay = pos.replay.unwrap_or(0);
        let plan = plan_replica(&existing, &permanent, &ignore, &view.status_slots, replay, &me);
        self.carry_out(&plan).await;
        self.check_readiness(view, leader, &existing).await;
        if plan.copy.is_empty() || self.slots.copy_failed.is_some_and(|t| t.elapsed() < COPY_RETRY) {
            return;
        }
        if let Err(e) = self.copy_logical(view, leader, &plan.copy, &permanent).await {
            tracing::warn!(error = %e, slots = plan.copy.join(","), "cannot copy logical slots from the primary");
            self.slots.copy_failed = Some(Instant::now());
        }
    }

    async fn carry_out(&self, plan: &Plan) {
        let Some(client) = &self.client else { return };
        for name in &plan.drop {
            match pgslots::drop_inactive(client, name).await {
                Ok(true) => tracing::info!(slot = %name, "replication slot dropped"),
                Ok(false) => tracing::debug!(slot = %name, "replication slot still active: kept"),
                Err(e) => tracing::warn!(slot = %name, error = %e, "cannot drop replication slot"),
            }
        }
        for name in &plan.create_physical {
            match pgslots::create_physical(client, name).await {
                Ok(()) => tracing::info!(slot = %name, "physical replication slot created"),
                Err(e) => tracing::warn!(slot = %name, error = %e, "cannot create replication slot"),
            }
        }
        for (name, database, plugin) in &plan.create_logical {
            let r = match pgslots::connect_db(&self.cfg, database).await {
                Ok(c) => pgslots::create_logical(&c, name, plugin).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => tracing::info!(slot = %name, database, plugin, "logical replication slot created"),
                Err(e) => tracing::warn!(slot = %name, database, error = %e, "cannot create logical replication slot"),
            }
        }
        for (name, lsn, database) in &plan.advance {
            let r = match database {
                None => pgslots::advance(client, name, *lsn).await,
                Some(db) => match pgslots::connect_db(&self.cfg, db).await {
                    Ok(c) => pgslots::advance(&c, name, *lsn).await,
                    Err(e) => Err(e),
                },
            };
            match r {
                Ok(()) => {
                    tracing::info!(slot = %name, lsn = %crate::postgres::wal::format_lsn(*lsn), "replication slot advanced")
                }
                Err(e) => tracing::warn!(slot = %name, error = %e, "cannot advance replication slot"),
            }
        }
    }

    /// Reads the slots' state files on the primary, stops postgres, puts
    /// them into `pg_replslot` and starts it again (Patroni's way on
    /// PostgreSQL < 16: a standby loads the slots at start-up).
    async fn copy_logical(
        &mut self,
        view: &ClusterView,
        leader: &str,
        names: &[String],
        permanent: &BTreeMap<String, SlotKind>,
    ) -> Result<(), String> {
        let address =
            view.members.get(leader).and_then(|m| m.pg_address()).ok_or("the leader has no address")?.to_owned();
        let password = self.superuser_password().await.map_err(|e| e.to_string())?;
        let found = pgslots::read_primary_slots(&self.cfg, &self.bin, &self.run_as, &address, &password, names)
            .await
            .map_err(|e| e.to_string())?;
        let copy: Vec<_> = found
            .into_iter()
            .filter(|s| {
                let ok = permanent.get(&s.name)
                    == Some(&SlotKind::Logical { database: s.database.clone(), plugin: s.plugin.clone() });
                if !ok {
                    tracing::warn!(slot = %s.name, "the primary's slot does not match the configuration: not copied");
                }
                ok
            })
            .collect();
        if copy.is_empty() {
            return Ok(());
        }
        if let Some(client) = &self.client
            && !pgslots::hot_standby_feedback(client).await.unwrap_or(false)
        {
            tracing::warn!(
                "logical slot failover needs hot_standby_feedback on the replicas: without it the primary may \
                 remove catalog rows a copied slot still needs"
            );
        }
        let upstream = self.upstream.clone();
        tracing::info!(
            slots = copy.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            "copying logical slots from the primary: restarting postgres"
        );
        self.stop_local(Mode::Fast, self.cfg.tusk.shutdown_timeout).await;
        let installed = pgslots::install_slot_files(&self.cfg.postgres.data, &self.run_as, &copy);
        match &installed {
            Ok(()) => {
                for s in &copy {
                    tracing::info!(
                        slot = %s.name,
                        confirmed_flush = %s.confirmed_flush_lsn.map(crate::postgres::wal::format_lsn).unwrap_or_default(),
                        "logical replication slot copied from the primary"
                    );
                    self.slots.pending.insert(s.name.clone(), None);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot install the copied slots"),
        }
        self.start(Role::Replica(upstream)).await.map_err(|e| format!("cannot start postgres again: {e}"))?;
        installed.map_err(|e| e.to_string())
    }

    /// Patroni's readiness check of copied logical slots: one is safe to
    /// use after a failover once this replica's physical slot on the
    /// primary holds a `catalog_xmin` (hot_standby_feedback) that is not
    /// older than the primary's logical slot's when first seen, nor newer
    /// than the copy's here.
    async fn check_readiness(&mut self, view: &ClusterView, leader: &str, existing: &[ExistingSlot]) {
        if self.slots.pending.is_empty() {
            return;
        }
        let Some(address) = view.members.get(leader).and_then(|m| m.pg_address()).map(String::from) else { return };
        let Ok(password) = self.superuser_password().await else { return };
        let me = replication::slot_name(&self.cfg.name);
        let mut names: Vec<String> =
            self.slots.pending.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.clone()).collect();
        names.push(me.clone());
        let xmins =
            match pgslots::primary_catalog_xmins(&self.cfg, &self.bin, &self.run_as, &address, &password, &names).await
            {
                Ok(x) => x,
                Err(e) => return tracing::debug!(error = %e, "cannot check the logical slots' readiness"),
            };
        let Some(physical) = xmins.get(&me).copied().flatten() else {
            tracing::debug!("no catalog_xmin on this replica's slot on the primary yet (hot_standby_feedback?)");
            return;
        };
        for (name, first) in self.slots.pending.iter_mut() {
            if first.is_none() {
                *first = xmins.get(name).copied().flatten();
            }
        }
        let ready: Vec<String> = self
            .slots
            .pending
            .iter()
            .filter(|(name, first)| {
                let standby = existing.iter().find(|e| &e.name == *name).and_then(|e| e.catalog_xmin);
                matches!((first, standby), (Some(p), Some(s)) if xid_le(*p, physical) && xid_le(physical, s))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in ready {
            tracing::info!(slot = %n, "logical slot is safe to use after a failover");
            self.slots.pending.remove(&n);
        }
    }
}

/// `a` precedes or equals `b` in the 32-bit transaction id circle.
fn xid_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, kind: &str) -> ExistingSlot {
        ExistingSlot {
            name: name.into(),
            kind: kind.into(),
            database: (kind == "logical").then(|| "postgres".into()),
            plugin: (kind == "logical").then(|| "test_decoding".into()),
            temporary: false,
            active: false,
            restart_lsn: Some(100),
            confirmed_flush_lsn: (kind == "logical").then_some(100),
            catalog_xmin: None,
        }
    }

    fn cfg(json: &str) -> DynamicConfig {
        serde_json::from_str(json).unwrap()
    }

    fn logical() -> SlotKind {
        SlotKind::Logical { database: "postgres".into(), plugin: "test_decoding".into() }
    }

    #[test]
    fn parses_slots_and_ignore_slots() {
        let c = cfg(r#"{"slots": {"ph": {"type": "physical"}, "ph2": {},
            "ls": {"type": "logical", "database": "postgres", "plugin": "test_decoding"},
            "bad": {"type": "logical", "database": "postgres"}, "Bad-Name": {}, "x": {"type": "odd"}},
            "ignore_slots": [{"name": "keep"}, {"type": "logical", "plugin": "pgoutput"}, {}, "junk"],
            "member_slots_ttl": "5s"}"#);
        let (slots, problems) = permanent_slots(&c);
        assert_eq!(
            slots,
            BTreeMap::from([
                ("ls".to_owned(), logical()),
                ("ph".to_owned(), SlotKind::Physical),
                ("ph2".to_owned(), SlotKind::Physical)
            ])
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        let ignore = ignore_slots(&c);
        assert_eq!(ignore.len(), 2);
        assert!(ignore[0].matches(&slot("keep", "physical")));
        assert!(!ignore[1].matches(&slot("keep2", "logical")));
        assert_eq!(member_slots_ttl(&c), Duration::from_secs(5));
        assert_eq!(member_slots_ttl(&cfg(r#"{"member_slots_ttl": 0}"#)), Duration::ZERO);
        assert_eq!(member_slots_ttl(&cfg(r#"{"member_slots_ttl": "30min"}"#)), Duration::from_secs(1800));
        assert_eq!(member_slots_ttl(&cfg("{}")), Duration::from_secs(1800));
        assert!(permanent_slots(&cfg("{}")).0.is_empty());
    }

    #[test]
    fn cascade_plan() {
        let mut active = slot("n3_active", "physical");
        active.active = true;
        let existing = vec![
            slot("n3", "physical"),
            slot("old_member", "physical"),
            slot("perm", "physical"),
            slot("ls", "logical"),
            active,
        ];
        let want = BTreeSet::from(["n3".to_owned(), "n4".to_owned()]);
        let permanent = BTreeMap::from([("perm".to_owned(), SlotKind::Physical)]);
        let plan = plan_cascade(&existing, &want, &permanent, &[]);
        assert_eq!(plan.create_physical, ["n4"]);
        assert_eq!(plan.drop, ["old_member"], "permanent, logical, active and wanted slots stay");
    }

    #[test]
    fn primary_plan() {
        let existing = vec![
            slot("node_b", "physical"),
            slot("gone", "physical"),
            slot("ls", "logical"),
            slot("ph", "logical"), // permanent physical, wrong kind
            slot("manual", "logical"),
            slot("stray", "logical"),
            ExistingSlot { temporary: true, ..slot("pg_basebackup_1", "physical") },
        ];
        let members = BTreeSet::from(["node_b".to_owned(), "node_c".to_owned()]);
        let permanent = BTreeMap::from([
            ("ls".to_owned(), logical()),
            ("ph".to_owned(), SlotKind::Physical),
            ("ph_new".to_owned(), SlotKind::Physical),
            ("ls_new".to_owned(), logical()),
        ]);
        let ignore = vec![IgnoreMatcher { name: Some("manual".into()), ..Default::default() }];
        let plan = plan_primary(&existing, &members, &permanent, &ignore);
        assert_eq!(plan.drop, vec!["gone", "ph", "stray"]);
        assert_eq!(plan.create_physical, vec!["ph_new", "node_c"]);
        assert_eq!(plan.create_logical, vec![("ls_new".into(), "postgres".into(), "test_decoding".into())]);
        assert!(plan.advance.is_empty() && plan.copy.is_empty());
    }

    #[test]
    fn replica_plan() {
        let existing = vec![
            slot("ph", "physical"),
            slot("ls", "logical"),
            ExistingSlot { active: true, ..slot("busy", "physical") },
            slot("node_a", "physical"),
            slot("other", "logical"),
        ];
        let permanent = BTreeMap::from([
            ("ph".to_owned(), SlotKind::Physical),
            ("ls".to_owned(), logical()),
            ("busy".to_owned(), SlotKind::Physical),
            ("ph_new".to_owned(), SlotKind::Physical),
            ("ls_new".to_owned(), logical()),
            ("ls_unpublished".to_owned(), logical()),
            ("node_me".to_owned(), SlotKind::Physical),
        ]);
        let published = BTreeMap::from([
            ("ph".to_owned(), 500),
            ("ls".to_owned(), 150),
            ("busy".to_owned(), 500),
            ("ls_new".to_owned(), 90),
        ]);
        let plan = plan_replica(&existing, &permanent, &[], &published, 300, "node_me");
        // Physical: not past replay; logical: the published position.
        assert_eq!(plan.advance, vec![("ls".into(), 150, Some("postgres".into())), ("ph".into(), 300, None)]);
        assert_eq!(plan.create_physical, vec!["ph_new"]);
        assert_eq!(plan.copy, vec!["ls_new"]);
        assert!(plan.drop.is_empty() && plan.create_logical.is_empty());
        // Not advanced backwards.
        let plan = plan_replica(&existing, &permanent, &[], &published, 50, "node_me");
        assert!(plan.advance.is_empty());
    }

    #[test]
    fn xids() {
        assert!(xid_le(5, 5) && xid_le(5, 6) && !xid_le(6, 5));
        assert!(xid_le(u32::MAX - 1, 3));
    }
}
