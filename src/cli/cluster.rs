//! Cluster commands: `tusk list`, `switchover`, `failover`, `pause`,
//! `resume`. They read the same environment as the daemon (so `podman exec
//! <ctr> tusk list` works) and talk to etcd directly through the keys
//! Patroni uses.

use std::time::{Duration, Instant};

use axum::http::Method;

use super::patronictl::Format;
use super::{CliError, runtime};
use crate::api::ApiClient;
use crate::api::client::endpoint;
use crate::config::{Config, ConfigError};
use crate::dcs::client::Dcs;
use crate::patroni::{Failover, Role, State};

/// Runs `f` against the cluster's etcd on a small runtime.
fn with_dcs<F, Fut>(f: F) -> Result<(), CliError>
where
    F: FnOnce(Config, Dcs) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let cfg = Config::from_process_env()?;
    let Some(etcd) = cfg.etcd.clone() else {
        return Err(ConfigError::new("ETCD3_HOSTS", "not set; this is a standalone node with no cluster").into());
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let dcs = Dcs::connect(&etcd, &cfg.namespace, &cfg.scope, Duration::from_secs(5)).await?;
        f(cfg, dcs).await
    })
}

/// `tusk list`: `patronictl list`'s table (the same renderer).
pub fn list() -> Result<(), CliError> {
    with_dcs(|cfg, dcs| async move {
        let snap = dcs.snapshot().await?;
        let extra = super::patronictl::render::Extra::default();
        print!("{}", super::patronictl::render::output_members(&cfg.scope, &snap.view, &extra, false, Format::Pretty));
        Ok(())
    })
}

/// `tusk switchover [--candidate NAME]` (`failover`: the leader may be gone,
/// a candidate is required). Waits for the new leader.
pub fn switchover(candidate: Option<String>, failover: bool, scheduled: Option<String>) -> Result<(), CliError> {
    with_dcs(|cfg, dcs| async move {
        let snap = dcs.snapshot().await?;
        let v = &snap.view;
        let leader = v.leader.clone();
        if !failover && leader.is_none() {
            return Err(CliError::Refused(
                "no leader: a switchover needs one (use `tusk failover --candidate NAME`)".into(),
            ));
        }
        if let Some(c) = &candidate {
            if !v.members.contains_key(c) {
                return Err(CliError::Refused(format!("{c} is not a member of the cluster")));
            }
            if Some(c) == leader.as_ref() {
                return Err(CliError::Refused(format!("{c} is already the leader")));
            }
        } else if v.members.keys().all(|m| Some(m) == leader.as_ref()) {
            return Err(CliError::Refused("no other member to switch over to".into()));
        }
        // Through the REST API first, as patronictl does: the leader's API
        // checks the candidates and waits for the result (the candidate's
        // API for a failover without a leader).
        let path = if failover { "/failover" } else { "/switchover" };
        let target = if failover && leader.is_none() { candidate.clone() } else { leader.clone() };
        let url = target.as_ref().and_then(|t| v.members.get(t)).and_then(|m| endpoint(&m.api_url, path));
        if let Some(url) = url {
            match ApiClient::new(&cfg.api, false) {
                Ok(client) => {
                    let body = serde_json::json!({"leader": leader, "candidate": candidate, "scheduled_at": scheduled});
                    match client.request(Method::POST, &url, Some(&body), Duration::from_secs(90)).await {
                        Ok(r) => return super::api::answer(r),
                        Err(e) => eprintln!("tusk: {e}; writing the request to the DCS instead"),
                    }
                }
                Err(e) => eprintln!("tusk: {e}; writing the request to the DCS instead"),
            }
        }
        let request = Failover {
            leader: if failover { None } else { leader.clone() },
            member: candidate.clone(),
            scheduled_at: scheduled.clone(),
        };
        let expected = snap.failover_revision.unwrap_or(0);
        if !dcs.put_failover(&request, Some(expected)).await? {
            return Err(CliError::Refused("another switchover or failover request is pending".into()));
        }
        let t0 = Instant::now();
        let what = if failover { "failover" } else { "switchover" };
        if let Some(at) = &scheduled {
            println!("{what} scheduled at {at}");
            return Ok(());
        }
        println!(
            "{what} requested: {} -> {}",
            leader.as_deref().unwrap_or("(none)"),
            candidate.as_deref().unwrap_or("any healthy replica")
        );
        while t0.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(s) = dcs.snapshot().await else { continue };
            let new = s.view.leader.clone();
            let running = new
                .as_ref()
                .and_then(|n| s.view.members.get(n))
                .is_some_and(|m| m.role == Role::Primary && m.state == State::Running);
            if new.is_some() && new != leader && running && candidate.as_ref().is_none_or(|c| Some(c) == new.as_ref()) {
                println!("{what} done: {} leads ({} ms)", new.unwrap_or_default(), t0.elapsed().as_millis());
                return Ok(());
            }
        }
        if let Ok(s) = dcs.snapshot().await {
            let _ = dcs.put_failover(&Failover::default(), s.failover_revision).await;
        }
        Err(CliError::Refused(format!("{what} did not complete within 30 s; withdrawing the request")))
    })
}

/// `tusk pause` / `tusk resume`: maintenance mode through `config.pause`.
pub fn set_pause(pause: bool) -> Result<(), CliError> {
    with_dcs(|_cfg, dcs| async move {
        for _ in 0..5 {
            let snap = dcs.snapshot().await?;
            let Some(rev) = snap.config_revision else {
                return Err(CliError::Refused("the cluster has no configuration yet (not bootstrapped)".into()));
            };
            let mut cfg = snap.view.config.clone();
            if cfg.pause == pause {
                println!("maintenance mode is already {}", if pause { "on" } else { "off" });
                return Ok(());
            }
            cfg.pause = pause;
            if dcs.put_config(&cfg, rev).await? {
                println!("maintenance mode {}", if pause { "on: no automatic failover" } else { "off" });
                return Ok(());
            }
        }
        Err(CliError::Refused("the configuration kept changing; try again".into()))
    })
}
