//! `patronictl` inside the image: the tusk binary run through a symlink
//! named `patronictl`, with nothing but a node's environment (no
//! configuration file), against 3 real nodes on a real etcd with mutual
//! TLS: `list` (pretty, tsv, json, yaml; the same members Debian's
//! patronictl 3.0.2 reads), `topology`, `show-config`, `edit-config`,
//! `pause --wait`/`resume --wait`, `switchover` (refused without --force
//! and no terminal; done with it; scheduled, then `flush`ed), `history`,
//! `restart`, `reinit --wait`, `failover`, `dsn`, `version`, and the
//! refusals (another cluster name, `-c`, an editor).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use cluster::{Cluster, try_sql};
use node::require_root;

/// A `patronictl` symlink to the binary under test, in the cluster's directory.
fn symlink(c: &Cluster) -> PathBuf {
    let dir = c.dir.path().join("bin");
    let link = dir.join("patronictl");
    if !link.exists() {
        std::fs::create_dir_all(&dir).expect("bin dir");
        std::os::unix::fs::symlink(node::tusk_bin(), &link).expect("symlink");
    }
    link
}

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `patronictl ARGS` through the symlink with node `name`'s environment
/// only, stdin empty (as `podman exec` without `-i`).
fn ctl(c: &Cluster, name: &str, args: &[&str]) -> Out {
    let out = Command::new(symlink(c))
        .args(args)
        .env_clear()
        .envs(&c.node(name).env)
        .stdin(Stdio::null())
        .output()
        .expect("run patronictl");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `patronictl ARGS` answering its questions with `input` on stdin.
fn ctl_answering(c: &Cluster, name: &str, args: &[&str], input: &str) -> Out {
    use std::io::Write;
    let mut child = Command::new(symlink(c))
        .args(args)
        .env_clear()
        .envs(&c.node(name).env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run patronictl");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("answers");
    let out = child.wait_with_output().expect("patronictl output");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ctl_ok(c: &Cluster, name: &str, args: &[&str]) -> String {
    let o = ctl(c, name, args);
    assert!(o.ok, "patronictl {args:?} failed ({:?}):\n{}{}", o.code, o.stdout, o.stderr);
    o.stdout
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn etcd_json(c: &Cluster, key: &str) -> Value {
    let out = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/{key}", c.scope)]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn etcd_text(c: &Cluster, key: &str) -> String {
    let out = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/{key}", c.scope)]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The pretty table's cells, row by row (border lines left out).
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// What a settled cluster with leader `leader` lists (JSON rows).
fn settled(list: &[Value], c: &Cluster, leader: &str) -> Result<(), String> {
    if list.len() != 3 {
        return Err(format!("{} members: {list:?}", list.len()));
    }
    for m in list {
        let name = m["Member"].as_str().unwrap_or_default();
        let leads = name == leader;
        let port = c.node(name).pg_port;
        let mut keys: Vec<&str> = m.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        keys.sort();
        let mut want = vec!["Cluster", "Host", "Member", "Role", "State", "TL"];
        if !leads {
            want.push("Lag in MB");
            want.sort();
        }
        let ok = m["Cluster"] == c.scope.as_str()
            && m["Host"] == format!("127.0.0.1:{port}").as_str()
            && m["Role"] == if leads { "Leader" } else { "Replica" }
            && m["State"] == if leads { "running" } else { "streaming" }
            && m["TL"].is_u64()
            && (leads || m["Lag in MB"] == 0)
            && keys == want;
        if !ok {
            return Err(format!("unexpected row {m}"));
        }
    }
    Ok(())
}

#[test]
fn patronictl_symlink_runs_the_cluster_from_the_environment() {
    require_root();
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = Cluster::new("ctl", etcd, 3, |_| eps.clone());
    let leader = c.start_settled(Duration::from_secs(120));
    let replicas: Vec<String> = c.names().into_iter().filter(|n| n != &leader).collect();
    let sysid = etcd_text(&c, "initialize");
    assert!(sysid.len() > 10, "initialize key: {sysid:?}");

    // list -f json: every member with patronictl's keys (replicas publish
    // streaming within a loop).
    let list: Vec<Value> = wait_for("list -f json to show the settled cluster", Duration::from_secs(60), || {
        let out = ctl_ok(&c, &replicas[0], &["list", "-f", "json"]);
        let list: Vec<Value> = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
        settled(&list, &c, &leader).map(|_| list)
    });
    // The pretty table: the cluster title with the system identifier in
    // the top border, patronictl's columns, the same rows.
    let pretty = ctl_ok(&c, &replicas[0], &["list"]);
    eprintln!("patronictl list:\n{pretty}");
    let first = pretty.lines().next().unwrap_or_default();
    assert!(first.starts_with(&format!("+ Cluster: {} ({sysid}) -", c.scope)), "title: {pretty}");
    assert!(first.ends_with("-+") && pretty.lines().all(|l| l.len() == first.len()), "frame: {pretty}");
    let rows = cells(&pretty);
    assert_eq!(rows[0], ["Member", "Host", "Role", "State", "TL", "Lag in MB"], "{pretty}");
    assert_eq!(rows.len(), 4, "{pretty}");
    for (r, m) in rows[1..].iter().zip(&list) {
        let lag = m.get("Lag in MB").map(|l| l.to_string()).unwrap_or_default();
        assert_eq!(
            r,
            &[
                m["Member"].as_str().unwrap().to_owned(),
                m["Host"].as_str().unwrap().to_owned(),
                m["Role"].as_str().unwrap().to_owned(),
                m["State"].as_str().unwrap().to_owned(),
                m["TL"].to_string(),
                lag,
            ],
            "{pretty}"
        );
    }
    // `tusk list` prints the same table.
    let out = Command::new(node::tusk_bin()).arg("list").env_clear().envs(&c.node(&leader).env).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), pretty, "tusk list and patronictl list differ");
    // yaml and tsv carry the same members.
    let yaml: Vec<Value> =
        serde_yaml_ng::from_str(&ctl_ok(&c, &leader, &["list", "--format", "yaml"])).expect("YAML list");
    assert_eq!(yaml, list, "yaml and json disagree");
    let tsv = ctl_ok(&c, &leader, &["list", "-f", "tsv"]);
    assert_eq!(tsv.lines().next(), Some("Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB"), "{tsv}");
    assert_eq!(tsv.lines().count(), 4, "{tsv}");
    // Debian's patronictl 3.0.2 reads the same members from the same keys
    // (3.0.2 shows a replica's `state`, not its `replication_state`). The
    // two read at different moments, and a lag moves in between (a member
    // publishes its position once per loop): read both again until they
    // agree.
    let without_state = |l: &[Value]| {
        l.iter()
            .map(|m| {
                let mut m = m.clone();
                m.as_object_mut().map(|o| o.remove("State"));
                m
            })
            .collect::<Vec<_>>()
    };
    wait_for("patronictl 3.0.2 to read the cluster as tusk does", Duration::from_secs(20), || {
        let ours: Vec<Value> =
            serde_json::from_str(ctl_ok(&c, &leader, &["list", "-f", "json"]).trim()).map_err(|e| e.to_string())?;
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(c.patronictl_config())
            .args(["list", "-f", "json"])
            .output()
            .expect("Debian's patronictl");
        let reference: Vec<Value> =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("patronictl 3.0.2: {e}"))?;
        if without_state(&reference) == without_state(&ours) {
            Ok(())
        } else {
            Err(format!("patronictl 3.0.2 reads {reference:?}, tusk {ours:?}"))
        }
    });

    // Only the environment's cluster.
    let o = ctl(&c, &leader, &["list", "someother"]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("\"someother\"") && o.stderr.contains(&c.scope), "{}", o.stderr);
    let o = ctl(&c, &leader, &["-c", "/home/postgres/postgres.yml", "list"]);
    assert_eq!(o.code, Some(2), "-c is refused: {}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("environment"), "{}", o.stderr);

    // topology: the leader, then the replicas under it.
    let topo = ctl_ok(&c, &leader, &["topology"]);
    eprintln!("patronictl topology:\n{topo}");
    let names: Vec<String> = cells(&topo).into_iter().skip(1).map(|r| r[0].clone()).collect();
    assert_eq!(names, [leader.clone(), format!("+ {}", replicas[0]), format!("+ {}", replicas[1])], "{topo}");

    // show-config: the config key as YAML.
    let shown: Value = serde_yaml_ng::from_str(&ctl_ok(&c, &leader, &["show-config"])).expect("show-config YAML");
    assert_eq!(shown, etcd_json(&c, "config"));
    assert_eq!(shown["loop_wait"], 2, "{shown}");

    // edit-config: refused without a change to make (no editor), asks
    // without --force (and aborts on an empty stdin), applies with it.
    let o = ctl(&c, &leader, &["edit-config"]);
    assert!(!o.ok && o.stderr.contains("--set"), "{}{}", o.stdout, o.stderr);
    let o = ctl(&c, &leader, &["edit-config", "--set", "loop_wait=3"]);
    assert!(!o.ok && o.stdout.contains("+loop_wait: 3") && o.stderr.contains("Aborted!"), "{}{}", o.stdout, o.stderr);
    assert_eq!(etcd_json(&c, "config")["loop_wait"], 2, "an unconfirmed edit was applied");
    let out = ctl_ok(&c, &replicas[1], &["edit-config", "--set", "loop_wait=3", "--pg", "work_mem=8MB", "--force"]);
    eprintln!("patronictl edit-config --set loop_wait=3 --pg work_mem=8MB --force:\n{out}");
    assert!(out.contains("-loop_wait: 2\n+loop_wait: 3\n") && out.ends_with("Configuration changed\n"), "{out}");
    let cfg = etcd_json(&c, "config");
    assert_eq!(
        (cfg["loop_wait"].as_u64(), cfg["postgresql"]["parameters"]["work_mem"].as_str()),
        (Some(3), Some("8MB"))
    );
    assert_eq!(cfg["ttl"], 10, "other keys kept: {cfg}");
    assert_eq!(ctl_ok(&c, &leader, &["edit-config", "-s", "loop_wait=3", "--force"]), "Not changed\n");
    // Answered questions: "n" leaves the key, "maybe" is asked again, "y" applies.
    let o = ctl_answering(&c, &leader, &["edit-config", "-s", "retry_timeout=4"], "n\n");
    assert!(o.ok && !o.stdout.contains("Configuration changed"), "{}{}", o.stdout, o.stderr);
    assert_eq!(etcd_json(&c, "config")["retry_timeout"], 3);
    let o = ctl_answering(&c, &leader, &["edit-config", "-s", "retry_timeout=4"], "maybe\ny\n");
    assert!(o.ok && o.stdout.matches("Apply these changes? [y/N]: ").count() == 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.ends_with("Configuration changed\n"), "{}", o.stdout);
    assert_eq!(etcd_json(&c, "config")["retry_timeout"], 4);
    let o = ctl(&c, &leader, &["edit-config", "-s", "loop_wait=soon", "--force"]);
    assert!(!o.ok && o.stderr.contains("not a valid configuration"), "{}{}", o.stdout, o.stderr);
    wait_for("work_mem from edit-config on every node", Duration::from_secs(60), || {
        let vals: Vec<Option<String>> = c.nodes.iter().map(|n| try_sql(n, "SHOW work_mem")).collect();
        vals.iter().all(|v| v.as_deref() == Some("8MB")).then_some(()).ok_or(format!("{vals:?}"))
    });

    // pause --wait / resume --wait.
    let out = ctl_ok(&c, &replicas[0], &["pause", "--wait"]);
    assert_eq!(
        out,
        "'pause' request sent, waiting until it is recognized by all nodes\nSuccess: cluster management is paused\n"
    );
    assert_eq!(etcd_json(&c, "config")["pause"], true);
    for n in c.names() {
        assert_eq!(etcd_json(&c, &format!("members/{n}"))["pause"], true, "{n} has not seen the pause");
    }
    assert!(ctl_ok(&c, &leader, &["list"]).ends_with("+\n Maintenance mode: on\n"));
    let o = ctl(&c, &leader, &["pause"]);
    assert!(!o.ok && o.stderr.trim() == "Error: Cluster is already paused", "{}", o.stderr);
    let out = ctl_ok(&c, &replicas[0], &["resume", "--wait"]);
    assert!(out.ends_with("Success: cluster management is resumed\n"), "{out}");
    assert!(etcd_json(&c, "config")["pause"] != true);
    for n in c.names() {
        assert!(etcd_json(&c, &format!("members/{n}"))["pause"] != true, "{n} still paused");
    }

    // switchover: without --force it asks, and with no answer (no
    // terminal, empty stdin) nothing happens; with --force it is done.
    let candidate = replicas[1].clone();
    let o = ctl(&c, &leader, &["switchover", "--candidate", &candidate]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.starts_with("Current cluster topology\n+ Cluster: ") && o.stderr.contains("Aborted!"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(c.leader_key().as_deref(), Some(leader.as_str()), "an unconfirmed switchover happened");
    let out = ctl_ok(&c, &leader, &["switchover", "--candidate", &candidate, "--force"]);
    eprintln!("patronictl switchover --candidate {candidate} --force:\n{out}");
    assert!(out.contains(&format!(" Successfully switched over to \"{candidate}\"\n")), "{out}");
    assert_eq!(c.wait_leader(Duration::from_secs(60), None), candidate);
    c.wait_streaming(&leader, Duration::from_secs(120));

    // history: the timeline switch, naming the new leader.
    // (The new leader writes the key once its new timeline shows.)
    let hist = wait_for("the history key", Duration::from_secs(30), || {
        let hist = ctl_ok(&c, &leader, &["history"]);
        (cells(&hist).len() > 1).then_some(hist.clone()).ok_or(hist)
    });
    eprintln!("patronictl history:\n{hist}");
    let rows = cells(&hist);
    assert_eq!(rows[0], ["TL", "LSN", "Reason", "Timestamp", "New Leader"], "{hist}");
    assert!(rows.len() >= 2 && rows[1][0] == "1" && rows.last().unwrap()[4] == candidate, "{hist}");
    let hj: Vec<Value> = serde_json::from_str(&ctl_ok(&c, &leader, &["history", "-f", "json"])).expect("history JSON");
    assert_eq!(hj.last().map(|h| h["New Leader"].clone()), Some(Value::from(candidate.as_str())), "{hj:?}");
    assert!(hj[0]["LSN"].is_u64() && hj[0]["TL"] == 1, "{hj:?}");
    wait_for("list to show the new leader", Duration::from_secs(60), || {
        let out = ctl_ok(&c, &leader, &["list", "-f", "json"]);
        let list: Vec<Value> = serde_json::from_str(out.trim()).map_err(|e| e.to_string())?;
        settled(&list, &c, &candidate)
    });

    // restart of one member through its API, as patronictl sends it.
    let before = try_sql(c.node(&leader), "SELECT pg_postmaster_start_time()");
    let out = ctl_ok(&c, &candidate, &["restart", &c.scope, &leader, "--force"]);
    assert!(out.ends_with(&format!("Success: restart on member {leader}\n")), "{out}");
    wait_for("the restarted member back", Duration::from_secs(60), || {
        let now = try_sql(c.node(&leader), "SELECT pg_postmaster_start_time()");
        (now.is_some() && now != before).then_some(()).ok_or(format!("{now:?}"))
    });

    // reinit --wait of a replica: data removed, cloned again, running.
    let out = ctl_ok(&c, &candidate, &["reinit", &c.scope, &leader, "--force", "--wait"]);
    assert!(
        out.contains(&format!("Success: reinitialize for member {leader}\n"))
            && out.ends_with(&format!("Reinitialize is completed on: {leader}\n")),
        "{out}"
    );
    c.wait_streaming(&leader, Duration::from_secs(120));

    // A scheduled switchover shows below the table; flush withdraws it.
    let at = time_in_an_hour();
    let out = ctl_ok(&c, &leader, &["switchover", "--candidate", &leader, "--scheduled", &at, "--force"]);
    assert!(out.contains(" Switchover scheduled\n"), "{out}");
    let table = ctl_ok(&c, &leader, &["list"]);
    assert!(
        table.contains(" Switchover scheduled at: ")
            && table
                .contains(&format!("\n                    from: {candidate}\n                      to: {leader}\n")),
        "{table}"
    );
    let out = ctl_ok(&c, &leader, &["flush", &c.scope, "switchover"]);
    assert!(out.starts_with("Success: "), "{out}");
    assert!(etcd_json(&c, "failover").as_object().is_none_or(|o| o.is_empty()), "flush left the failover key");
    assert_eq!(ctl_ok(&c, &leader, &["flush", &c.scope, "switchover"]), "No pending scheduled switchover\n");

    // failover to a named candidate (the leader alive: through its API).
    let o = ctl(&c, &leader, &["failover", "--force"]);
    assert!(!o.ok && o.stderr.contains("Failover could be performed only to a specific candidate"), "{}", o.stderr);
    let out = ctl_ok(&c, &leader, &["failover", "--candidate", &leader, "--force"]);
    assert!(out.contains(&format!(" Successfully failed over to \"{leader}\"\n")), "{out}");
    assert_eq!(c.wait_leader(Duration::from_secs(60), None), leader);
    c.wait_streaming(&candidate, Duration::from_secs(120));
    // dsn: the leader's address.
    let port = c.node(&leader).pg_port;
    assert_eq!(ctl_ok(&c, &candidate, &["dsn"]), format!("host=127.0.0.1 port={port}\n"));

    // version: patronictl's line, then each member's versions.
    let out = ctl_ok(&c, &leader, &["version", &c.scope]);
    eprintln!("patronictl version {}:\n{out}", c.scope);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("patronictl version 3.0.2") && lines[1].is_empty(), "{out}");
    for n in c.names() {
        assert!(lines.iter().any(|l| l.starts_with(&format!("{n}: Patroni 3.0.2 PostgreSQL 15."))), "{out}");
    }
}

/// An hour from now, RFC 3339 (for a scheduled switchover).
fn time_in_an_hour() -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    t.replace_nanosecond(0).expect("0 ns").format(&time::format_description::well_known::Rfc3339).expect("RFC 3339")
}
