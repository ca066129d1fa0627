//! patronictl's commands against the container's cluster: reads from etcd
//! (one snapshot of the keys, as patronictl's `get_cluster`), operations
//! through the members' REST APIs as patronictl sends them (switchover,
//! failover, restart, reinitialize, reload, flush), configuration changes
//! as compare-and-set writes of the `config` key. Messages are
//! patronictl's; where it prints a failure and still exits 0, this exits 1.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};

use super::prompt::{confirm, prompt};
use super::render::{self, Extra, Format};
use super::{CliError, Ctl, CtlCommand, FlushTarget, RoleChoice, edit};
use crate::api::ApiClient;
use crate::api::client::endpoint;
use crate::config::{ApiConfig, Config, ConfigError};
use crate::dcs::client::{Dcs, Snapshot};
use crate::patroni::{DynamicConfig, Failover, MemberValue, PATRONI_COMPAT_VERSION, Role};

/// What every command works with: the cluster's name (SCOPE), its etcd,
/// and how to reach the members' REST APIs.
struct Ctx {
    scope: String,
    dcs: Dcs,
    api: ApiConfig,
    insecure: bool,
}

/// Runs a parsed command line.
pub(super) fn run(ctl: Ctl) -> Result<(), CliError> {
    if let Some(path) = &ctl.config_file {
        return Err(CliError::Usage(format!(
            "-c/--config-file {}: tusk's patronictl reads no configuration file; it takes the cluster from the \
             container's environment (SCOPE, NAMESPACE, ETCD3_*, PATRONI_RESTAPI_*): run it without -c \
             (and without PATRONICTL_CONFIG_FILE)",
            path.display()
        )));
    }
    if let Some(url) = &ctl.dcs_url {
        return Err(CliError::Usage(format!(
            "-d/--dcs-url {url}: tusk's patronictl uses the etcd of the container's environment (ETCD3_HOSTS): \
             run it without -d (and without DCS_URL)"
        )));
    }
    match &ctl.command {
        CtlCommand::Query { .. } => {
            return Err(CliError::Refused(
                "query is not provided by tusk's patronictl: use psql (psql -h /run/postgresql -U postgres)".into(),
            ));
        }
        CtlCommand::Remove { .. } => {
            return Err(CliError::Refused(
                "remove is not provided by tusk's patronictl: delete the cluster's keys with etcdctl \
                 (del --prefix /<namespace>/<scope>/) once every member is stopped"
                    .into(),
            ));
        }
        CtlCommand::Version { cluster_name: None, .. } => return echo(&version_line()),
        _ => {}
    }
    let cfg = Config::from_process_env()?;
    let Some(etcd) = cfg.etcd.clone() else {
        return Err(ConfigError::new("ETCD3_HOSTS", "not set; this is a standalone node with no cluster").into());
    };
    let rt = super::super::runtime()?;
    rt.block_on(async move {
        let dcs = Dcs::connect(&etcd, &cfg.namespace, &cfg.scope, Duration::from_secs(5)).await?;
        let ctx = Ctx { scope: cfg.scope.clone(), dcs, api: cfg.api.clone(), insecure: ctl.insecure };
        ctx.dispatch(ctl.command).await
    })
}

fn version_line() -> String {
    format!("patronictl version {PATRONI_COMPAT_VERSION} (tusk {})", env!("CARGO_PKG_VERSION"))
}

/// `click.echo`: the text and a newline on stdout.
fn echo(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|_| out.flush()).map_err(CliError::Output)
}

/// Text that already ends with its newline.
fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(CliError::Output)
}

/// Local time (the container's TZ, UTC when unset).
fn now_local() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    let secs: libc::time_t = now.unix_timestamp() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack
    // frame; a zeroed `libc::tm` is a valid value of that plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    let offset = if ok { time::UtcOffset::from_whole_seconds(tm.tm_gmtoff as i32).ok() } else { None };
    offset.map_or(now, |o| now.to_offset(o))
}

/// patronictl's `timestamp(precision)`: `YYYY-MM-DD HH:MM:SS.ffffff` cut
/// by `7 - precision` characters (6: five decimals, 0: none).
fn timestamp(precision: usize) -> String {
    let t = now_local();
    let full = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
    full[..full.len() - (7 - precision.min(6))].to_owned()
}

/// `YYYY-MM-DDTHH:MM` one hour from now, for patronictl's prompts.
fn next_hour() -> String {
    let t = now_local() + time::Duration::hours(1);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

/// patronictl's `parse_scheduled`: `None` for now; ISO 8601 with or without
/// a zone (without: local time).
fn parse_scheduled(s: Option<&str>) -> Result<Option<time::OffsetDateTime>, CliError> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty() && *s != "now") else { return Ok(None) };
    if let Some(t) = crate::api::parse_time(s) {
        return Ok(Some(t));
    }
    use time::macros::format_description as fd;
    let naive = s.replacen(' ', "T", 1);
    let formats = [
        fd!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"),
        fd!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        fd!("[year]-[month]-[day]T[hour]:[minute]"),
    ];
    let offset = now_local().offset();
    for f in formats {
        if let Ok(t) = time::PrimitiveDateTime::parse(&naive, f) {
            return Ok(Some(t.assume_offset(offset)));
        }
    }
    Err(CliError::Refused(format!(
        "Unable to parse scheduled timestamp ({s}). It should be in an unambiguous format (e.g. ISO 8601)"
    )))
}

/// Members in patronictl's `get_all_members` sense for `role`.
fn members_with_role(snap: &Snapshot, role: RoleChoice) -> Vec<(&str, &MemberValue)> {
    let v = &snap.view;
    let leader = v.leader.as_deref().filter(|l| !l.is_empty());
    match role {
        RoleChoice::Leader | RoleChoice::Primary | RoleChoice::Master | RoleChoice::StandbyLeader => {
            let Some((name, m)) = leader.and_then(|l| v.members.get_key_value(l)) else { return vec![] };
            let fits = match role {
                RoleChoice::Leader => true,
                RoleChoice::StandbyLeader => m.role != Role::Primary,
                _ => m.role != Role::StandbyLeader,
            };
            if fits { vec![(name.as_str(), m)] } else { vec![] }
        }
        RoleChoice::Replica | RoleChoice::Standby => {
            v.members.iter().filter(|(n, _)| Some(n.as_str()) != leader).map(|(n, m)| (n.as_str(), m)).collect()
        }
        RoleChoice::Any => v.members.iter().map(|(n, m)| (n.as_str(), m)).collect(),
    }
}

fn role_name(role: RoleChoice) -> &'static str {
    match role {
        RoleChoice::Leader => "leader",
        RoleChoice::Primary => "primary",
        RoleChoice::StandbyLeader => "standby-leader",
        RoleChoice::Replica => "replica",
        RoleChoice::Standby => "standby",
        RoleChoice::Any => "any",
        RoleChoice::Master => "master",
    }
}

/// Python's `str()` of a list of names: `['n2', 'n3']`.
fn py_list(names: &[String]) -> String {
    format!("[{}]", names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", "))
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

impl Ctx {
    async fn dispatch(&self, command: CtlCommand) -> Result<(), CliError> {
        match command {
            CtlCommand::List { cluster_names, extended, timestamp, format, w, watch } => {
                self.list(&cluster_names, extended, timestamp, format, watch_interval(w, watch)).await
            }
            CtlCommand::Topology { cluster_names, w, watch } => {
                self.list(&cluster_names, false, false, Format::Topology, watch_interval(w, watch)).await
            }
            CtlCommand::Switchover { cluster, leader, candidate, scheduled, force } => {
                let name = self.cluster(cluster.cluster_name.as_deref())?;
                self.failover_or_switchover(&name, "switchover", leader, candidate, force, scheduled).await
            }
            CtlCommand::Failover { cluster, leader, candidate, force } => {
                let name = self.cluster(cluster.cluster_name.as_deref())?;
                let action = if leader.is_some() {
                    echo(
                        "Supplying a leader name using this command is deprecated and will be removed in a future \
                         version of Patroni, change your scripts to use `switchover` instead.\nExecuting switchover!",
                    )?;
                    "switchover"
                } else {
                    "failover"
                };
                self.failover_or_switchover(&name, action, leader, candidate, force, None).await
            }
            CtlCommand::Pause { cluster, wait } => {
                self.cluster(cluster.cluster_name.as_deref())?;
                self.toggle_pause(true, wait).await
            }
            CtlCommand::Resume { cluster, wait } => {
                self.cluster(cluster.cluster_name.as_deref())?;
                self.toggle_pause(false, wait).await
            }
            CtlCommand::Restart {
                cluster_name,
                member_names,
                role,
                any,
                scheduled,
                pg_version,
                pending,
                timeout,
                force,
            } => {
                let name = self.cluster(Some(&cluster_name))?;
                self.restart(&name, &member_names, role, any, scheduled, pg_version, pending, timeout, force).await
            }
            CtlCommand::Reinit { cluster_name, member_names, force, wait } => {
                let name = self.cluster(Some(&cluster_name))?;
                self.reinit(&name, &member_names, force, wait).await
            }
            CtlCommand::Reload { cluster_name, member_names, role, force } => {
                let name = self.cluster(Some(&cluster_name))?;
                self.reload(&name, &member_names, role, force).await
            }
            CtlCommand::Flush { cluster_name, mut rest, role, force } => {
                let name = self.cluster(Some(&cluster_name))?;
                let target = match rest.pop().as_deref() {
                    Some("restart") => FlushTarget::Restart,
                    Some("switchover") => FlushTarget::Switchover,
                    other => {
                        return Err(CliError::Usage(format!(
                            "flush: the last argument is the target, restart or switchover, not {:?}",
                            other.unwrap_or_default()
                        )));
                    }
                };
                self.flush(&name, &rest, target, role, force).await
            }
            CtlCommand::EditConfig { cluster, quiet, set, pg, apply, replace, force } => {
                let name = self.cluster(cluster.cluster_name.as_deref())?;
                self.edit_config(&name, quiet, &set, &pg, apply.as_deref(), replace.as_deref(), force).await
            }
            CtlCommand::ShowConfig { cluster } => {
                self.cluster(cluster.cluster_name.as_deref())?;
                if let Some(config) = self.raw_config().await?.map(|(v, _)| v) {
                    echo(&render::yaml(&config))?;
                }
                Ok(())
            }
            CtlCommand::History { cluster, format } => {
                self.cluster(cluster.cluster_name.as_deref())?;
                self.history(format).await
            }
            CtlCommand::Version { cluster_name, member_names } => {
                echo(&version_line())?;
                if let Some(c) = cluster_name {
                    self.cluster(Some(&c))?;
                    echo("")?;
                    self.versions(&member_names).await?;
                }
                Ok(())
            }
            CtlCommand::Dsn { cluster, role, member } => {
                self.cluster(cluster.cluster_name.as_deref())?;
                self.dsn(role, member).await
            }
            CtlCommand::Query { .. } | CtlCommand::Remove { .. } => {
                Err(CliError::Refused("not provided by tusk's patronictl".into()))
            }
        }
    }

    /// The cluster a command names: SCOPE when left out; another name is
    /// an error naming both (this patronictl reaches only its own cluster).
    fn cluster(&self, name: Option<&str>) -> Result<String, CliError> {
        match name {
            None => Ok(self.scope.clone()),
            Some(n) if n == self.scope => Ok(n.to_owned()),
            Some(n) => Err(CliError::Refused(format!(
                "cluster {n:?} is not this container's cluster: SCOPE is {:?} (tusk's patronictl manages only \
                 the cluster of its environment)",
                self.scope
            ))),
        }
    }

    fn api(&self) -> Result<ApiClient, CliError> {
        ApiClient::new(&self.api, self.insecure).map_err(CliError::ApiSetup)
    }

    /// One request to a member's REST API: (status, body); an error when it
    /// cannot be reached.
    async fn request(
        &self,
        client: &ApiClient,
        m: &MemberValue,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, String), CliError> {
        let url = endpoint(&m.api_url, path)
            .ok_or_else(|| CliError::Refused(format!("no usable REST API address ({:?})", m.api_url)))?;
        let (code, bytes) = client.request(method, &url, body.as_ref(), timeout).await?;
        Ok((code, body_text(&bytes)))
    }

    /// The members in synchronous replication (the `sync` key), when the
    /// configuration turns `synchronous_mode` on.
    fn extra(snap: &Snapshot) -> Extra {
        let v = &snap.view;
        match &v.sync {
            Some(sync) if v.config.synchronous_mode() => {
                Extra { sync_standbys: sync.standbys(), quorum: v.config.quorum_mode() }
            }
            _ => Extra::default(),
        }
    }

    async fn members_text(&self, name: &str, snap: &Snapshot, extended: bool, fmt: Format) -> String {
        render::output_members(name, &snap.view, &Self::extra(snap), extended, fmt)
    }

    /// `list` / `topology` (`-W`, `-w N`: again every N seconds, the
    /// screen cleared on a terminal).
    async fn list(
        &self,
        names: &[String],
        extended: bool,
        ts: bool,
        fmt: Format,
        watch: Option<Duration>,
    ) -> Result<(), CliError> {
        let names: Vec<String> = if names.is_empty() {
            vec![self.scope.clone()]
        } else {
            names.iter().map(|n| self.cluster(Some(n))).collect::<Result<_, _>>()?
        };
        let clear = watch.is_some() && std::io::stdout().is_terminal();
        loop {
            if clear {
                emit("\x1b[2J\x1b[1;1H")?;
            }
            if ts {
                echo(&timestamp(0))?;
            }
            for name in &names {
                let snap = self.dcs.snapshot().await?;
                emit(&self.members_text(name, &snap, extended, fmt).await)?;
            }
            let Some(every) = watch else { return Ok(()) };
            tokio::time::sleep(every).await;
        }
    }

    /// patronictl's `_do_failover_or_switchover`.
    async fn failover_or_switchover(
        &self,
        name: &str,
        action: &'static str,
        switchover_leader: Option<String>,
        candidate: Option<String>,
        force: bool,
        scheduled: Option<String>,
    ) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        let v = &snap.view;
        echo("Current cluster topology")?;
        emit(&self.members_text(name, &snap, false, Format::Pretty).await)?;
        let cluster_leader = v.leader.clone().filter(|l| !l.is_empty());
        let mut switchover_leader = switchover_leader;
        if action == "switchover" {
            let Some(current) = &cluster_leader else {
                return Err(CliError::Refused("This cluster has no leader".into()));
            };
            if switchover_leader.is_none() {
                switchover_leader = Some(if force {
                    current.clone()
                } else {
                    let what = if v.config.standby_cluster.is_some() { "Standby Leader" } else { "Primary" };
                    prompt(what, current)?
                });
            }
            if switchover_leader.as_ref() != Some(current) {
                return Err(CliError::Refused(format!(
                    "Member {} is not the leader of cluster {name}",
                    switchover_leader.unwrap_or_default()
                )));
            }
        }
        let candidates: Vec<String> = v
            .members
            .iter()
            .filter(|(n, m)| Some(*n) != cluster_leader.as_ref() && !m.nofailover())
            .map(|(n, _)| n.clone())
            .collect();
        if candidates.is_empty() {
            return Err(CliError::Refused(format!("No candidates found to {action} to")));
        }
        let mut candidate = candidate;
        if candidate.is_none() && !force {
            candidate = Some(prompt(&format!("Candidate {}", py_list(&candidates)), "")?);
        }
        let candidate = candidate.filter(|c| !c.is_empty());
        if action == "failover" && candidate.is_none() {
            return Err(CliError::Refused("Failover could be performed only to a specific candidate".into()));
        }
        if let Some(c) = &candidate
            && !candidates.contains(c)
        {
            return Err(CliError::Refused(if Some(c) == cluster_leader.as_ref() {
                format!("Member {c} is already the leader of cluster {name}")
            } else {
                format!("Member {c} does not exist in cluster {name} or is tagged as nofailover")
            }));
        }
        let mut scheduled_at = None;
        if action == "switchover" {
            let scheduled = match scheduled {
                None if !force => {
                    Some(prompt(&format!("When should the switchover take place (e.g. {} ) ", next_hour()), "now")?)
                }
                s => s,
            };
            scheduled_at = parse_scheduled(scheduled.as_deref())?.map(render::isoformat);
            if scheduled_at.is_some() && v.config.pause {
                return Err(CliError::Refused("Can't schedule switchover in the paused state".into()));
            }
        }
        let mut value = Map::new();
        value.insert("candidate".into(), json!(candidate));
        if action == "switchover" {
            value.insert("leader".into(), json!(switchover_leader));
        }
        if let Some(at) = &scheduled_at {
            value.insert("scheduled_at".into(), json!(at));
        }
        if !force {
            let demote = cluster_leader.as_ref().map(|l| format!(", demoting current leader {l}")).unwrap_or_default();
            let question = match &scheduled_at {
                Some(at) => format!("Are you sure you want to schedule switchover of cluster {name} at {at}{demote}?"),
                None => format!("Are you sure you want to {action} cluster {name}{demote}?"),
            };
            if !confirm(&question)? {
                let what = if scheduled_at.is_some() { format!("scheduled {action}") } else { action.to_owned() };
                return Err(CliError::Refused(format!("Aborting {what}")));
            }
        }
        // Through the leader's API (the candidate's when there is no leader).
        let target = cluster_leader.as_ref().or(candidate.as_ref()).and_then(|n| v.members.get(n));
        let answer = match target {
            Some(m) => {
                let client = self.api()?;
                self.request(
                    &client,
                    m,
                    Method::POST,
                    &format!("/{action}"),
                    Some(Value::Object(value)),
                    Duration::from_secs(90),
                )
                .await
            }
            None => Err(CliError::Refused("no member to send the request to".into())),
        };
        let snap = match answer {
            Ok((code, body)) if code == StatusCode::OK || code == StatusCode::ACCEPTED => {
                let snap = self.dcs.snapshot().await?;
                echo(&format!("{} {body}", timestamp(6)))?;
                snap
            }
            Ok((code, body)) => {
                echo(&format!("{} failed, details: {}, {body}", title(action), code.as_u16()))?;
                return Err(CliError::Failed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "{action} through the REST API");
                echo(&format!("{} Could not {action} using Patroni api, falling back to DCS", timestamp(6)))?;
                let request = Failover {
                    leader: switchover_leader.clone(),
                    member: candidate.clone(),
                    scheduled_at: scheduled_at.clone(),
                };
                if !self.dcs.put_failover(&request, Some(snap.failover_revision.unwrap_or(0))).await? {
                    return Err(CliError::Refused("another switchover or failover request is pending".into()));
                }
                snap
            }
        };
        emit(&self.members_text(name, &snap, false, Format::Pretty).await)
    }

    /// `pause` / `resume`: `config.pause`, compare-and-set; `--wait` until
    /// every member present before publishes the new state.
    async fn toggle_pause(&self, paused: bool, wait: bool) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        if snap.view.config.pause == paused {
            return Err(CliError::Refused(format!("Cluster is {} paused", if paused { "already" } else { "not" })));
        }
        let before: BTreeSet<String> =
            snap.view.members.iter().filter(|(_, m)| !m.api_url.is_empty()).map(|(n, _)| n.clone()).collect();
        let mut snap = snap;
        let mut written = false;
        for _ in 0..5 {
            let Some(rev) = snap.config_revision else {
                return Err(CliError::Refused("the cluster has no configuration yet (not bootstrapped)".into()));
            };
            let mut cfg = snap.view.config.clone();
            cfg.pause = paused;
            if self.dcs.put_config(&cfg, rev).await? {
                written = true;
                break;
            }
            snap = self.dcs.snapshot().await?;
        }
        if !written {
            return Err(CliError::Refused("the configuration kept changing; try again".into()));
        }
        let word = if paused { "paused" } else { "resumed" };
        if wait {
            echo(&format!(
                "'{}' request sent, waiting until it is recognized by all nodes",
                if paused { "pause" } else { "resume" }
            ))?;
            // Patroni waits loop_wait + 1 s; a member publishes once per
            // loop_wait, so allow two rounds.
            let loop_wait = snap.view.config.normalized().loop_wait;
            let budget = Duration::from_secs(2 * loop_wait + 1);
            let t0 = tokio::time::Instant::now();
            loop {
                let s = self.dcs.snapshot().await?;
                let remaining: Vec<&String> = s
                    .view
                    .members
                    .iter()
                    .filter(|(n, m)| before.contains(*n) && m.pause != paused)
                    .map(|(n, _)| n)
                    .collect();
                if remaining.is_empty() {
                    break;
                }
                if t0.elapsed() >= budget {
                    let names: Vec<&str> = remaining.iter().map(|s| s.as_str()).collect();
                    echo(&format!(
                        "{} members didn't recognized pause state after {} seconds",
                        names.join(", "),
                        budget.as_secs()
                    ))?;
                    return Err(CliError::Failed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        echo(&format!("Success: cluster management is {word}"))
    }

    /// patronictl's `get_members`: the members `role` selects among
    /// `names` (all of them, or a prompt for `reinitialize`); prints the
    /// cluster first, as patronictl does.
    #[allow(clippy::too_many_arguments)]
    async fn get_members<'a>(
        &self,
        snap: &'a Snapshot,
        name: &str,
        names: &[String],
        role: RoleChoice,
        force: bool,
        action: &str,
        ask_confirmation: bool,
    ) -> Result<Vec<(&'a str, &'a MemberValue)>, CliError> {
        let members = members_with_role(snap, role);
        let candidates: Vec<String> = members.iter().map(|(n, _)| (*n).to_owned()).collect();
        if names.is_empty() && candidates.is_empty() {
            return Err(CliError::Refused(format!("{name} cluster doesn't have any members")));
        }
        emit(&self.members_text(name, snap, false, Format::Pretty).await)?;
        let mut chosen: Vec<String> = if !names.is_empty() {
            let chosen: Vec<String> = names.iter().filter(|n| candidates.contains(n)).cloned().collect();
            if chosen.is_empty() {
                return Err(CliError::Refused(format!("No {} among provided members", role_name(role))));
            }
            chosen
        } else if action != "reinitialize" {
            candidates.clone()
        } else {
            vec![]
        };
        if chosen.is_empty() && !force {
            chosen = vec![prompt(&format!("Which member do you want to {action} [{}]?", candidates.join(", ")), "")?];
        }
        for n in &chosen {
            if !candidates.contains(n) {
                return Err(CliError::Refused(format!("{n} is not a member of cluster")));
            }
        }
        let selected: Vec<(&str, &MemberValue)> =
            members.into_iter().filter(|(n, _)| chosen.iter().any(|c| c == n)).collect();
        if ask_confirmation {
            confirm_members(&selected, force, action, None, false)?;
        }
        Ok(selected)
    }

    #[allow(clippy::too_many_arguments)]
    async fn restart(
        &self,
        name: &str,
        names: &[String],
        role: RoleChoice,
        any: bool,
        scheduled: Option<String>,
        version: Option<String>,
        pending: bool,
        timeout: Option<String>,
        force: bool,
    ) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        let mut members = self.get_members(&snap, name, names, role, force, "restart", false).await?;
        let scheduled = match scheduled {
            None if !force => {
                Some(prompt(&format!("When should the restart take place (e.g. {}) ", next_hour()), "now")?)
            }
            s => s,
        };
        let scheduled_at = parse_scheduled(scheduled.as_deref())?.map(render::isoformat);
        let mut content = Map::new();
        if pending {
            content.insert("restart_pending".into(), json!(true));
            if scheduled_at.is_none() {
                members.retain(|(_, m)| m.pending_restart);
            }
        }
        if any {
            members.shuffle(&mut rand::thread_rng());
            members.truncate(1);
        }
        confirm_members(&members, force, "restart", scheduled_at.as_deref(), pending)?;
        let version = match version {
            None if !force => {
                Some(prompt("Restart if the PostgreSQL version is less than provided (e.g. 9.5.2) ", "")?)
            }
            v => v,
        };
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            if crate::api::version_num(&v).is_none() {
                return Err(CliError::Refused(format!(
                    "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}"
                )));
            }
            content.insert("postgres_version".into(), json!(v));
        }
        if let Some(at) = &scheduled_at {
            if snap.view.config.pause {
                return Err(CliError::Refused("Can't schedule restart in the paused state".into()));
            }
            content.insert("schedule".into(), json!(at));
        }
        if let Some(t) = timeout {
            content.insert("timeout".into(), json!(t));
        }
        let client = self.api()?;
        let mut failed = false;
        for (n, m) in members {
            if content.contains_key("schedule") && force && m.scheduled_restart.is_some() {
                match self.request(&client, m, Method::DELETE, "/restart", None, Duration::from_secs(15)).await {
                    Ok((code, body)) if code.as_u16() >= 400 => {
                        echo(&format!(
                            "Failed: flush scheduled restart for member {n}, status code={}, ({body})",
                            code.as_u16()
                        ))?;
                    }
                    Ok(_) => {}
                    Err(e) => echo(&format!("Failed: flush scheduled restart for member {n}: {e}"))?,
                }
            }
            let r = self
                .request(
                    &client,
                    m,
                    Method::POST,
                    "/restart",
                    Some(Value::Object(content.clone())),
                    Duration::from_secs(90),
                )
                .await;
            match r {
                Ok((StatusCode::OK, _)) => echo(&format!("Success: restart on member {n}"))?,
                Ok((StatusCode::ACCEPTED, _)) => echo(&format!("Success: restart scheduled on member {n}"))?,
                Ok((StatusCode::CONFLICT, _)) => {
                    failed = true;
                    echo(&format!("Failed: another restart is already scheduled on member {n}"))?;
                }
                Ok((code, body)) => {
                    failed = true;
                    echo(&format!("Failed: restart for member {n}, status code={}, ({body})", code.as_u16()))?;
                }
                Err(e) => {
                    failed = true;
                    echo(&format!("Failed: restart for member {n}: {e}"))?;
                }
            }
        }
        if failed { Err(CliError::Failed) } else { Ok(()) }
    }

    async fn reinit(&self, name: &str, names: &[String], force: bool, wait: bool) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        let members = self.get_members(&snap, name, names, RoleChoice::Replica, force, "reinitialize", true).await?;
        let client = self.api()?;
        let mut failed = false;
        let mut waiting: Vec<(&str, &MemberValue)> = Vec::new();
        for (n, m) in members {
            let mut body_force = force;
            loop {
                let r = self
                    .request(
                        &client,
                        m,
                        Method::POST,
                        "/reinitialize",
                        Some(json!({"force": body_force})),
                        Duration::from_secs(90),
                    )
                    .await;
                let (started, retry) = match r {
                    Ok((code, body)) if code.as_u16() >= 400 => {
                        echo(&format!("Failed: reinitialize for member {n}, status code={}, ({body})", code.as_u16()))?;
                        (false, body.ends_with(" already in progress"))
                    }
                    Ok(_) => {
                        echo(&format!("Success: reinitialize for member {n}"))?;
                        (true, false)
                    }
                    Err(e) => {
                        echo(&format!("Failed: reinitialize for member {n}: {e}"))?;
                        (false, false)
                    }
                };
                if !started && retry && !body_force && confirm("Do you want to cancel it and reinitialize anyway?")? {
                    body_force = true;
                    continue;
                }
                if !started {
                    failed = true;
                } else if wait {
                    waiting.push((n, m));
                }
                break;
            }
        }
        // Done when the member runs again (patronictl: once its state is
        // not `creating replica`, which a tusk member passes through only
        // after its data is gone).
        let mut shown: Vec<&str> = Vec::new();
        while !waiting.is_empty() {
            let names: Vec<&str> = waiting.iter().map(|(n, _)| *n).collect();
            if names != shown {
                echo(&format!("Waiting for reinitialize to complete on: {}", names.join(", ")))?;
                shown = names;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut still = Vec::new();
            for (n, m) in waiting {
                let state = match self.request(&client, m, Method::GET, "/patroni", None, Duration::from_secs(5)).await
                {
                    Ok((_, body)) => serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_owned)),
                    Err(_) => None,
                };
                if state.as_deref() == Some("running") {
                    echo(&format!("Reinitialize is completed on: {n}"))?;
                } else {
                    still.push((n, m));
                }
            }
            waiting = still;
        }
        if failed { Err(CliError::Failed) } else { Ok(()) }
    }

    async fn reload(&self, name: &str, names: &[String], role: RoleChoice, force: bool) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        let members = self.get_members(&snap, name, names, role, force, "reload", true).await?;
        let client = self.api()?;
        let loop_wait = snap.view.config.normalized().loop_wait;
        let mut failed = false;
        for (n, m) in members {
            match self.request(&client, m, Method::POST, "/reload", None, Duration::from_secs(15)).await {
                Ok((StatusCode::OK, _)) => echo(&format!("No changes to apply on member {n}"))?,
                Ok((StatusCode::ACCEPTED, _)) => echo(&format!(
                    "Reload request received for member {n} and will be processed within {loop_wait} seconds"
                ))?,
                Ok((code, body)) => {
                    failed = true;
                    echo(&format!("Failed: reload for member {n}, status code={}, ({body})", code.as_u16()))?;
                }
                Err(e) => {
                    failed = true;
                    echo(&format!("Failed: reload for member {n}: {e}"))?;
                }
            }
        }
        if failed { Err(CliError::Failed) } else { Ok(()) }
    }

    async fn flush(
        &self,
        name: &str,
        names: &[String],
        target: FlushTarget,
        role: RoleChoice,
        force: bool,
    ) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        let client = self.api()?;
        match target {
            FlushTarget::Restart => {
                let mut failed = false;
                for (n, m) in self.get_members(&snap, name, names, role, force, "flush", true).await? {
                    if m.scheduled_restart.is_none() {
                        echo(&format!("No scheduled restart for member {n}"))?;
                        continue;
                    }
                    match self.request(&client, m, Method::DELETE, "/restart", None, Duration::from_secs(15)).await {
                        Ok((code, body)) if code.as_u16() >= 400 => {
                            failed = true;
                            echo(&format!(
                                "Failed: flush scheduled restart for member {n}, status code={}, ({body})",
                                code.as_u16()
                            ))?;
                        }
                        Ok(_) => echo(&format!("Success: flush scheduled restart for member {n}"))?,
                        Err(e) => {
                            failed = true;
                            echo(&format!("Failed: flush scheduled restart for member {n}: {e}"))?;
                        }
                    }
                }
                if failed { Err(CliError::Failed) } else { Ok(()) }
            }
            FlushTarget::Switchover => {
                if snap.view.failover.as_ref().is_none_or(|f| f.scheduled_at.is_none()) {
                    return echo("No pending scheduled switchover");
                }
                let v = &snap.view;
                let leader = v.leader.as_ref().and_then(|l| v.members.get_key_value(l));
                let order = leader.into_iter().chain(v.members.iter().filter(|(n, _)| Some(*n) != v.leader.as_ref()));
                for (n, m) in order.filter(|(_, m)| !m.api_url.is_empty()) {
                    match self.request(&client, m, Method::DELETE, "/switchover", None, Duration::from_secs(15)).await {
                        Ok((StatusCode::OK, body)) => return echo(&format!("Success: {body}")),
                        Ok((StatusCode::NOT_FOUND, body)) => {
                            echo(&format!("Failed: {body}"))?;
                            return Err(CliError::Failed);
                        }
                        Ok((code, body)) => {
                            echo(&format!("Failed: member={n}, status_code={}, ({body})", code.as_u16()))?
                        }
                        Err(e) => eprintln!("Member {n} is not accessible: {e}"),
                    }
                }
                echo(&format!("{} Could not find any accessible member of cluster {name}", timestamp(6)))?;
                if self.dcs.put_failover(&Failover::default(), snap.failover_revision).await? {
                    Ok(())
                } else {
                    Err(CliError::Refused("the failover key changed concurrently".into()))
                }
            }
        }
    }

    /// The `config` key as stored, and its revision for compare-and-set.
    async fn raw_config(&self) -> Result<Option<(Value, i64)>, CliError> {
        let Some(kv) = self.dcs.get_raw(&self.dcs.keys.config()).await? else { return Ok(None) };
        let v = serde_json::from_slice::<Value>(kv.value())
            .map_err(|e| CliError::Refused(format!("the config key is not JSON: {e}")))?;
        Ok(Some((v, kv.mod_revision())))
    }

    #[allow(clippy::too_many_arguments)]
    async fn edit_config(
        &self,
        name: &str,
        quiet: bool,
        set: &[String],
        pg: &[String],
        apply: Option<&str>,
        replace: Option<&str>,
        force: bool,
    ) -> Result<(), CliError> {
        if set.is_empty() && pg.is_empty() && apply.is_none() && replace.is_none() {
            return Err(CliError::Refused(
                "edit-config without --set, --pg, --apply or --replace opens an editor, and tusk's patronictl \
                 has none: use --set KEY=VALUE, --pg PARAMETER=VALUE, or --apply FILE (- for stdin)"
                    .into(),
            ));
        }
        let Some((data, revision)) = self.raw_config().await? else {
            return Err(CliError::Refused(format!("The config key does not exist in the cluster {name}")));
        };
        let edit_err = |e: edit::EditError| CliError::Refused(e.0);
        let mut changed = data.clone();
        if let Some(f) = replace {
            changed = edit::apply_yaml(&json!({}), &read_input(f)?, f).map_err(edit_err)?;
        }
        if let Some(f) = apply {
            changed = edit::apply_yaml(&changed, &read_input(f)?, f).map_err(edit_err)?;
        }
        if !set.is_empty() || !pg.is_empty() {
            let pairs: Vec<String> = set
                .iter()
                .cloned()
                .chain(pg.iter().map(|p| format!("postgresql.parameters.{}", p.trim_start())))
                .collect();
            changed = edit::apply_config_changes(&changed, &pairs).map_err(edit_err)?;
        }
        if changed == data {
            if !quiet {
                echo("Not changed")?;
            }
            return Ok(());
        }
        // What tusk's members read (and what is written): a value they
        // would not parse is refused here.
        let config: DynamicConfig = serde_json::from_value(changed)
            .map_err(|e| CliError::Refused(format!("not a valid configuration: {e}")))?;
        let written = serde_json::to_value(&config).map_err(|e| CliError::Refused(e.to_string()))?;
        if !quiet {
            emit(&edit::unified_diff(&render::yaml(&data), &render::yaml(&written)))?;
        }
        if (apply == Some("-") || replace == Some("-")) && !force {
            return echo("Use --force option to apply changes");
        }
        if force || confirm("Apply these changes?")? {
            if !self.dcs.put_config(&config, revision).await? {
                return Err(CliError::Refused("Config modification aborted due to concurrent changes".into()));
            }
            echo("Configuration changed")?;
        }
        Ok(())
    }

    async fn history(&self, fmt: Format) -> Result<(), CliError> {
        let lines: Vec<Vec<Value>> = match self.dcs.get_raw(&self.dcs.keys.history()).await? {
            Some(kv) if !kv.value().is_empty() => serde_json::from_slice::<Vec<Value>>(kv.value())
                .map_err(|e| CliError::Refused(format!("the history key is not a JSON list: {e}")))?
                .into_iter()
                .map(|l| match l {
                    Value::Array(a) => a,
                    other => vec![other],
                })
                .collect(),
            _ => vec![],
        };
        emit(&render::print_output(&render::history_table(&lines), fmt))
    }

    /// `version CLUSTER [MEMBER...]`: each member's Patroni (tusk: the
    /// Patroni version it is compatible with) and PostgreSQL versions.
    async fn versions(&self, names: &[String]) -> Result<(), CliError> {
        let snap = self.dcs.snapshot().await?;
        let client = self.api()?;
        for (n, m) in &snap.view.members {
            if m.api_url.is_empty() || (!names.is_empty() && !names.contains(n)) {
                continue;
            }
            match self.request(&client, m, Method::GET, "/patroni", None, Duration::from_secs(5)).await {
                Ok((_, body)) => match serde_json::from_str::<Value>(&body) {
                    Ok(data) => {
                        let version = data.pointer("/patroni/version").and_then(Value::as_str).unwrap_or("None");
                        let pg = data.get("server_version").and_then(Value::as_u64).filter(|v| *v > 0);
                        let pg = pg.map(|v| format!(" PostgreSQL {}", format_pg_version(v))).unwrap_or_default();
                        echo(&format!("{n}: Patroni {version}{pg}"))?;
                    }
                    Err(e) => echo(&format!("{n}: failed to get version: {e}"))?,
                },
                Err(e) => echo(&format!("{n}: failed to get version: {e}"))?,
            }
        }
        Ok(())
    }

    async fn dsn(&self, role: Option<RoleChoice>, member: Option<String>) -> Result<(), CliError> {
        if member.is_some() && role.is_some() {
            return Err(CliError::Refused("--role and --member are mutually exclusive options".into()));
        }
        let role = if member.is_some() { RoleChoice::Any } else { role.unwrap_or(RoleChoice::Leader) };
        let snap = self.dcs.snapshot().await?;
        let found = members_with_role(&snap, role)
            .into_iter()
            .find(|(n, _)| member.as_deref().is_none_or(|m| m == *n))
            .ok_or_else(|| CliError::Refused("Can not find a suitable member".into()))?;
        let addr = found.1.pg_address().unwrap_or_default();
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h.trim_start_matches('[').trim_end_matches(']'), p)
            }
            _ => (addr, "5432"),
        };
        echo(&format!("host={host} port={port}"))
    }
}

/// `-W` (2 s) / `-w N`.
fn watch_interval(w: bool, watch: Option<f64>) -> Option<Duration> {
    match watch.filter(|s| *s > 0.0) {
        Some(s) => Duration::try_from_secs_f64(s).ok(),
        None if w => Some(Duration::from_secs(2)),
        None => None,
    }
}

/// patronictl's `confirm_members_action`.
fn confirm_members(
    members: &[(&str, &MemberValue)],
    force: bool,
    action: &str,
    scheduled_at: Option<&str>,
    pending: bool,
) -> Result<(), CliError> {
    if force {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
    let (question, aborted) = match scheduled_at {
        Some(_) if pending => (
            "The nodes needing a restart will be identified at the scheduled time, and might be different from the \
             ones showing pending restart right now. Is this fine?"
                .to_owned(),
            format!("Aborted scheduled {action}"),
        ),
        Some(at) => (
            format!("Are you sure you want to schedule {action} of members {} at {at}?", names.join(", ")),
            format!("Aborted scheduled {action}"),
        ),
        None => {
            (format!("Are you sure you want to {action} members {}?", names.join(", ")), format!("Aborted {action}"))
        }
    };
    if confirm(&question)? { Ok(()) } else { Err(CliError::Refused(aborted)) }
}

fn title(action: &str) -> String {
    let mut c = action.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// A file's text, or stdin's for `-`.
fn read_input(path: &str) -> Result<String, CliError> {
    let mut text = String::new();
    let r = if path == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    r.map_err(|e| CliError::Refused(format!("{path}: {e}")))?;
    Ok(text)
}

/// `150002` → `15.2`, `90624` → `9.6.24`.
fn format_pg_version(v: u64) -> String {
    if v < 100000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}", v / 10000, v % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_formats() {
        assert_eq!(format_pg_version(150002), "15.2");
        assert_eq!(format_pg_version(90624), "9.6.24");
        assert_eq!(py_list(&["n2".into(), "n3".into()]), "['n2', 'n3']");
        assert_eq!(title("switchover"), "Switchover");
        assert_eq!(timestamp(0).len(), "2026-12-04 10:00:00".len());
        assert_eq!(timestamp(6).len(), "2026-12-04 10:00:00.12345".len());
        assert_eq!(watch_interval(true, None), Some(Duration::from_secs(2)));
        assert_eq!(watch_interval(false, Some(0.5)), Some(Duration::from_millis(500)));
        assert_eq!(watch_interval(false, None), None);
    }

    #[test]
    fn scheduled_times() {
        assert_eq!(parse_scheduled(None).unwrap(), None);
        assert_eq!(parse_scheduled(Some("now")).unwrap(), None);
        let t = parse_scheduled(Some("2030-01-02T03:04:05+02:00")).unwrap().unwrap();
        assert_eq!(render::isoformat(t), "2030-01-02T03:04:05+02:00");
        let local = parse_scheduled(Some("2030-01-02 03:04")).unwrap().unwrap();
        assert_eq!((local.hour(), local.minute(), local.offset()), (3, 4, now_local().offset()));
        let e = parse_scheduled(Some("tomorrow")).unwrap_err().to_string();
        assert_eq!(
            e,
            "Unable to parse scheduled timestamp (tomorrow). It should be in an unambiguous format (e.g. ISO 8601)"
        );
    }

    #[test]
    fn role_selection() {
        let mut snap = Snapshot::default();
        let m = |role: Role| MemberValue {
            conn_url: String::new(),
            api_url: String::new(),
            state: crate::patroni::State::Running,
            role,
            version: String::new(),
            xlog_location: None,
            timeline: None,
            tags: Default::default(),
            replication_state: None,
            receive_lsn: None,
            replay_lsn: None,
            pending_restart: false,
            pause: false,
            scheduled_restart: None,
        };
        snap.view.members.insert("n1".into(), m(Role::Primary));
        snap.view.members.insert("n2".into(), m(Role::Replica));
        snap.view.members.insert("n3".into(), m(Role::Replica));
        snap.view.leader = Some("n1".into());
        fn names(snap: &Snapshot, r: RoleChoice) -> Vec<String> {
            members_with_role(snap, r).into_iter().map(|(n, _)| n.to_owned()).collect()
        }
        assert_eq!(names(&snap, RoleChoice::Leader), ["n1"]);
        assert_eq!(names(&snap, RoleChoice::Primary), ["n1"]);
        assert_eq!(names(&snap, RoleChoice::Master), ["n1"]);
        assert!(names(&snap, RoleChoice::StandbyLeader).is_empty(), "a primary is not a standby leader");
        assert_eq!(names(&snap, RoleChoice::Replica), ["n2", "n3"]);
        assert_eq!(names(&snap, RoleChoice::Standby), ["n2", "n3"]);
        assert_eq!(names(&snap, RoleChoice::Any), ["n1", "n2", "n3"]);
        snap.view.leader = None;
        assert!(names(&snap, RoleChoice::Leader).is_empty());
        assert_eq!(names(&snap, RoleChoice::Replica), ["n1", "n2", "n3"]);
    }
}
