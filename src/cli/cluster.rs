//! Cluster commands: `tusk list`, `switchover`, `failover`, `pause`,
//! `resume`. They read the same environment as the daemon (so `podman exec
//! <ctr> tusk list` works) and talk to etcd directly through the keys
//! Patroni uses.

use std::time::{Duration, Instant};

use axum::http::Method;

use crate::api::ApiClient;
use crate::api::client::endpoint;
use crate::config::{Config, EXIT_CONFIG};
use crate::dcs::client::{Dcs, Snapshot};
use crate::dcs::values::Failover;

/// Exit status when the cluster refused or did not do what was asked.
const EXIT_REFUSED: i32 = 1;

/// Runs `f` against the cluster's etcd on a small runtime.
fn with_dcs<F, Fut>(f: F) -> i32
where
    F: FnOnce(Config, Dcs) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let cfg = match Config::from_process_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tusk: configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    let Some(etcd) = cfg.etcd.clone() else {
        eprintln!("tusk: configuration error: ETCD3_HOSTS: not set; this is a standalone node with no cluster");
        return EXIT_CONFIG;
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tusk: cannot build the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        match Dcs::connect(&etcd, &cfg.namespace, &cfg.scope, Duration::from_secs(5)).await {
            Ok(dcs) => f(cfg, dcs).await,
            Err(e) => {
                eprintln!("tusk: {e}");
                1
            }
        }
    })
}

async fn snapshot(dcs: &Dcs) -> Result<Snapshot, i32> {
    dcs.snapshot().await.map_err(|e| {
        eprintln!("tusk: {e}");
        1
    })
}

/// `tusk list`: like `patronictl list`.
pub fn list() -> i32 {
    with_dcs(|cfg, dcs| async move {
        let snap = match snapshot(&dcs).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        print!("{}", render_list(&cfg.scope, &snap));
        0
    })
}

/// The table: Member, Host, Role, State, TL, Lag in MB.
pub fn render_list(scope: &str, snap: &Snapshot) -> String {
    let v = &snap.view;
    let header = ["Member", "Host", "Role", "State", "TL", "Lag in MB"];
    let mut rows: Vec<[String; 6]> = Vec::new();
    for (name, m) in &v.members {
        let leader = v.leader.as_deref() == Some(name.as_str());
        let lag = if leader {
            String::new()
        } else {
            match (v.optime, m.xlog_location) {
                (Some(o), Some(x)) => format!("{}", (o.saturating_sub(x) as f64 / (1u64 << 20) as f64).round() as u64),
                _ => "unknown".into(),
            }
        };
        rows.push([
            name.clone(),
            m.pg_address().unwrap_or("").to_owned(),
            if leader { "Leader" } else { "Replica" }.to_owned(),
            m.state.clone(),
            m.timeline.map(|t| t.to_string()).unwrap_or_default(),
            lag,
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
        format!("|{}|\n", parts.join("|"))
    };
    let sep = format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let sysid = v.initialize.as_deref().filter(|s| !s.is_empty()).map(|s| format!(" ({s})")).unwrap_or_default();
    let mut out =
        format!("+ Cluster: {scope}{sysid} {}\n", "-".repeat(sep.len().saturating_sub(14 + scope.len() + sysid.len())));
    out.push_str(&line(&header.map(String::from)));
    out.push_str(&sep);
    for r in &rows {
        out.push_str(&line(r));
    }
    out.push_str(&sep);
    if v.config.pause {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}

/// `tusk switchover [--candidate NAME]` (`failover`: the leader may be gone,
/// a candidate is required). Waits for the new leader.
pub fn switchover(candidate: Option<String>, failover: bool, scheduled: Option<String>) -> i32 {
    with_dcs(|cfg, dcs| async move {
        let snap = match snapshot(&dcs).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let v = &snap.view;
        let leader = v.leader.clone();
        if !failover && leader.is_none() {
            eprintln!("tusk: no leader: a switchover needs one (use `tusk failover --candidate NAME`)");
            return EXIT_REFUSED;
        }
        if let Some(c) = &candidate {
            if !v.members.contains_key(c) {
                eprintln!("tusk: {c} is not a member of the cluster");
                return EXIT_REFUSED;
            }
            if Some(c) == leader.as_ref() {
                eprintln!("tusk: {c} is already the leader");
                return EXIT_REFUSED;
            }
        } else if v.members.keys().all(|m| Some(m) == leader.as_ref()) {
            eprintln!("tusk: no other member to switch over to");
            return EXIT_REFUSED;
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
                        Ok(r) => return super::api::answer(Ok(r)),
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
        match dcs.put_failover(&request, Some(expected)).await {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("tusk: another switchover or failover request is pending");
                return EXIT_REFUSED;
            }
            Err(e) => {
                eprintln!("tusk: {e}");
                return 1;
            }
        }
        let t0 = Instant::now();
        let what = if failover { "failover" } else { "switchover" };
        if let Some(at) = &scheduled {
            println!("{what} scheduled at {at}");
            return 0;
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
                .is_some_and(|m| m.role == "primary" && m.state == "running");
            if new.is_some() && new != leader && running && candidate.as_ref().is_none_or(|c| Some(c) == new.as_ref()) {
                println!("{what} done: {} leads ({} ms)", new.unwrap_or_default(), t0.elapsed().as_millis());
                return 0;
            }
        }
        eprintln!("tusk: {what} did not complete within 30 s; withdrawing the request");
        if let Ok(s) = dcs.snapshot().await {
            let _ = dcs.put_failover(&Failover::default(), s.failover_revision).await;
        }
        EXIT_REFUSED
    })
}

/// `tusk pause` / `tusk resume`: maintenance mode through `config.pause`.
pub fn set_pause(pause: bool) -> i32 {
    with_dcs(|_cfg, dcs| async move {
        for _ in 0..5 {
            let snap = match snapshot(&dcs).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            let Some(rev) = snap.config_revision else {
                eprintln!("tusk: the cluster has no configuration yet (not bootstrapped)");
                return EXIT_REFUSED;
            };
            let mut cfg = snap.view.config.clone();
            if cfg.pause == pause {
                println!("maintenance mode is already {}", if pause { "on" } else { "off" });
                return 0;
            }
            cfg.pause = pause;
            match dcs.put_config(&cfg, rev).await {
                Ok(true) => {
                    println!("maintenance mode {}", if pause { "on: no automatic failover" } else { "off" });
                    return 0;
                }
                Ok(false) => continue,
                Err(e) => {
                    eprintln!("tusk: {e}");
                    return 1;
                }
            }
        }
        eprintln!("tusk: the configuration kept changing; try again");
        EXIT_REFUSED
    })
}
