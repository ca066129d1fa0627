//! The deployment kit (deploy/ and docs/{systemd,quadlet,fcos,ecs,nomad}.md):
//! each file checked by the tool that reads it, where this machine has one,
//! against the other files of the kit (one image, one data volume, one stop
//! budget), and against tusk's own parser: the environment every platform
//! file gives the container is run through `tusk config` (this build's
//! binary), which exits 78 on anything it would refuse at start.
//!
//! - systemd unit: `systemd-analyze verify`, as a system and as a user unit;
//!   its ExecStart split into podman's arguments.
//! - Quadlet: Debian 12's podman (4.3) has no Quadlet generator (it came with
//!   podman 4.4), so the .container file is read as the INI file it is: its
//!   [Container] keys against the set Quadlet accepts, its values, and the
//!   `podman run` Quadlet makes of them against the systemd unit's; the unit
//!   Quadlet would write around them goes through `systemd-analyze verify`.
//!   Where the real generator exists, it runs too.
//! - Fedora CoreOS: `ignition-validate` on tusk.ign; tusk.ign is the render
//!   script's output byte for byte; tusk.bu translated here on its own gives
//!   the same Ignition config; the unit inside it is the kit's unit.
//! - ECS: botocore's RegisterTaskDefinition input model (offline).
//! - Nomad: parsed as HCL2 (python-hcl2), then its structure.
//!
//! Every validator is also shown a broken copy, which it must refuse. No
//! container is started (running the unit's podman command is e2e work).
//! The tools come from scripts/install-testbed.sh; a missing one fails its
//! test, naming that script.

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "deploy/systemd/tusk.service";
const ENV_FILE: &str = "deploy/systemd/tusk.env";
const QUADLET: &str = "deploy/quadlet/tusk.container";
const BUTANE: &str = "deploy/fcos/tusk.bu";
const IGNITION: &str = "deploy/fcos/tusk.ign";
const RENDER: &str = "deploy/fcos/render-ignition.py";
const EXAMPLE_CERTS: &str = "deploy/fcos/etcd-certs";
const ECS: &str = "deploy/ecs/task-definition.json";
const NOMAD: &str = "deploy/nomad/tusk.nomad.hcl";
const HELPER: &str = "tests/deploy_kit.py";

/// The venv scripts/install-testbed.sh makes: Debian's python3 with
/// python-hcl2, seeing Debian's python3-botocore.
const VENV_PYTHON: &str = "/opt/tusk-test/venv/bin/python";
/// The render script needs nothing but the standard library.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const PODMAN: &str = "/usr/bin/podman";

/// What the kit runs: the image's entry point and data volume.
const IMAGE: &str = "localhost/tusk:latest";
const TUSK_IN_IMAGE: &str = "/usr/local/bin/tusk";
const DATA_VOLUME: &str = "/home/postgres/pgdata";
const HOST_DATA: &str = "/var/lib/tusk";
const CERT_DIR: &str = "/etc/ssl/etcd-certs";
const ENV_PATH: &str = "/etc/tusk/tusk.env";

/// tusk's TUSK_SHUTDOWN_TIMEOUT when unset, in seconds.
const DEFAULT_SHUTDOWN: f64 = 8.0;
/// The least a platform's grace period may exceed TUSK_SHUTDOWN_TIMEOUT by
/// (README, ECS: stopTimeout ≥ TUSK_SHUTDOWN_TIMEOUT + 2 s).
const GRACE_MARGIN: f64 = 2.0;
/// A Nomad client's max_kill_timeout unless its operator raised it.
const NOMAD_MAX_KILL_TIMEOUT: f64 = 30.0;
/// ECS's limits: stopTimeout at most 120 s, healthCheck.startPeriod 0–300 s.
const ECS_MAX_STOP_TIMEOUT: f64 = 120.0;
const ECS_MAX_START_PERIOD: f64 = 300.0;

/// Quadlet's [Container] keys in podman 5.0 (supportedContainerKeys in
/// pkg/systemd/quadlet/quadlet.go at v5.0.0), the first release with
/// StopTimeout=. Any other key makes Quadlet refuse the whole file.
const QUADLET_CONTAINER_KEYS: &[&str] = &[
    "AddCapability",
    "AddDevice",
    "Annotation",
    "AutoUpdate",
    "ContainerName",
    "ContainersConfModule",
    "DNS",
    "DNSOption",
    "DNSSearch",
    "DropCapability",
    "Environment",
    "EnvironmentFile",
    "EnvironmentHost",
    "Entrypoint",
    "Exec",
    "ExposeHostPort",
    "GIDMap",
    "GlobalArgs",
    "Group",
    "HealthCmd",
    "HealthInterval",
    "HealthOnFailure",
    "HealthRetries",
    "HealthStartPeriod",
    "HealthStartupCmd",
    "HealthStartupInterval",
    "HealthStartupRetries",
    "HealthStartupSuccess",
    "HealthStartupTimeout",
    "HealthTimeout",
    "HostName",
    "IP6",
    "IP",
    "Image",
    "Label",
    "LogDriver",
    "Mask",
    "Mount",
    "Network",
    "NoNewPrivileges",
    "Notify",
    "PidsLimit",
    "Pod",
    "PodmanArgs",
    "PublishPort",
    "Pull",
    "ReadOnly",
    "ReadOnlyTmpfs",
    "RemapGid",
    "RemapUid",
    "RemapUidSize",
    "RemapUsers",
    "Rootfs",
    "RunInit",
    "SeccompProfile",
    "Secret",
    "SecurityLabelDisable",
    "SecurityLabelFileType",
    "SecurityLabelLevel",
    "SecurityLabelNested",
    "SecurityLabelType",
    "ShmSize",
    "StopTimeout",
    "SubGIDMap",
    "SubUIDMap",
    "Sysctl",
    "Timezone",
    "Tmpfs",
    "UIDMap",
    "Ulimit",
    "Unmask",
    "User",
    "UserNS",
    "VolatileTmp",
    "Volume",
    "WorkingDir",
];

// ---------------------------------------------------------------------------
// Helpers: files, tools, processes

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A tool the test bed installs: an absolute path that must exist, or a
/// name looked up in PATH.
fn need(tool: &str) -> PathBuf {
    let found = if tool.starts_with('/') {
        Some(PathBuf::from(tool)).filter(|p| p.exists())
    } else {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    };
    found.unwrap_or_else(|| panic!("{tool} is missing: run scripts/install-testbed.sh (as root) to install it"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// stdout and stderr of a finished command, for messages.
fn shown(out: &Output) -> String {
    format!(
        "exit {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Seconds of a duration as tusk (TUSK_SHUTDOWN_TIMEOUT), systemd
/// (TimeoutStopSec=) and Nomad (kill_timeout) write the ones in the kit:
/// plain seconds, or one number with ms, s, m, min or h.
fn secs(text: &str) -> f64 {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("{text:?} is not a duration"));
    n * match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => panic!("{text:?}: unknown unit {other:?}"),
    }
}

/// Whether `text` is a Go duration (time.ParseDuration), which is what
/// podman reads for --health-interval and the like: "30s", "10m", "1h30m";
/// systemd's "10min" is not one.
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| rest.starts_with(**u))
            .max_by_key(|u| u.len())
            .copied();
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Helpers: systemd unit files (and Quadlet's, the same syntax)

/// (section, key, value) of each setting, in order; continuation lines (a
/// trailing backslash) joined with a space as systemd joins them, comment
/// lines (# or ;) and blank lines skipped.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    fn push(out: &mut Vec<(String, String, String)>, section: &str, line: &str) {
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line:?}"));
        assert!(!section.is_empty(), "setting before the first section: {line:?}");
        out.push((section.to_owned(), key.trim().to_owned(), value.trim().to_owned()));
    }
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(mut acc) = pending.take() {
            acc.push(' ');
            match t.strip_suffix('\\') {
                Some(part) => {
                    acc.push_str(part.trim());
                    pending = Some(acc);
                }
                None => {
                    acc.push_str(t);
                    push(&mut out, &section, &acc);
                }
            }
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some(part) = t.strip_suffix('\\') {
            pending = Some(part.trim_end().to_owned());
        } else {
            push(&mut out, &section, t);
        }
    }
    assert!(pending.is_none(), "the file ends inside a continued line");
    out
}

fn values<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    entries.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
}

/// The one value of `key` in `section` (none or several is an error).
fn one<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    match values(entries, section, key)[..] {
        [v] => v,
        ref found => panic!("[{section}] {key}= should be set once, found {found:?}"),
    }
}

/// The arguments of an Exec*= command line. The kit's lines use no
/// specifiers or variables, so systemd's splitting is a POSIX shell's.
fn exec_args(value: &str) -> Vec<String> {
    let line = value.trim_start_matches(['-', '@', ':', '+', '!']);
    assert!(!line.contains('%') && !line.contains('$'), "{line}: specifiers or variables would be expanded by systemd");
    shlex::split(line).unwrap_or_else(|| panic!("cannot split {line:?}"))
}

/// `podman run`'s options (as name, value), its image and the command after it.
#[derive(Debug)]
struct PodmanRun {
    options: Vec<(String, Option<String>)>,
    image: String,
    command: Vec<String>,
}

impl PodmanRun {
    /// Every option is written `--name=value` or is one of podman's
    /// switches, so the line splits without podman's option table; the first
    /// other argument is the image.
    fn parse(args: &[String]) -> PodmanRun {
        const SWITCHES: &[&str] = &["--replace", "--rm", "--detach", "-d"];
        assert_eq!(args.first().map(String::as_str), Some(PODMAN), "not {PODMAN}: {args:?}");
        assert_eq!(args.get(1).map(String::as_str), Some("run"), "not podman run: {args:?}");
        let mut options = Vec::new();
        for (i, arg) in args.iter().enumerate().skip(2) {
            if SWITCHES.contains(&arg.as_str()) {
                options.push((arg.clone(), None));
            } else if let Some((name, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
                options.push((name.to_owned(), Some(value.to_owned())));
            } else if arg.starts_with('-') {
                panic!("{arg}: write it as {arg}=VALUE (or teach this test the switch)");
            } else {
                return PodmanRun { options, image: arg.clone(), command: args[i + 1..].to_vec() };
            }
        }
        panic!("podman run without an image: {args:?}")
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.options.iter().filter(|(n, _)| n == name).filter_map(|(_, v)| v.as_deref()).collect()
    }

    fn one(&self, name: &str) -> &str {
        match self.all(name)[..] {
            [v] => v,
            ref found => panic!("podman run: {name} should be given once, found {found:?}"),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }

    /// What the container gets, with podman's synonyms made one: network,
    /// volumes, environment files, stop timeout, ulimits, notify mode.
    fn essentials(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in &self.options {
            let name = match name.as_str() {
                "--net" | "--network" => "--network",
                "-v" | "--volume" => "--volume",
                n @ ("--env-file" | "--stop-timeout" | "--ulimit" | "--sdnotify" | "--name") => n,
                _ => continue,
            };
            out.push((name.to_owned(), value.clone().unwrap_or_default()));
        }
        out.push(("image".to_owned(), self.image.clone()));
        out.sort();
        out
    }
}

/// VAR=value lines as `podman run --env-file` (and Quadlet's
/// EnvironmentFile=) read them: `#` starts a comment line; the value is the
/// rest of the line as it stands (no quotes are removed).
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{ENV_FILE}: {l:?} is not VAR=value"));
            assert!(!v.starts_with('"') && !v.starts_with('\''), "{l}: podman would keep the quotes");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn lookup<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// TUSK_SHUTDOWN_TIMEOUT in seconds from an environment (tusk's default when unset).
fn shutdown_secs(vars: &[(String, String)]) -> f64 {
    lookup(vars, "TUSK_SHUTDOWN_TIMEOUT").map(secs).unwrap_or(DEFAULT_SHUTDOWN)
}

fn kit_env() -> Vec<(String, String)> {
    env_file(&read(ENV_FILE))
}

// ---------------------------------------------------------------------------
// Helpers: tusk's own view of an environment

/// `tusk config` of this build with exactly `vars` (and a PATH), each value
/// passed through `path_map` first (the kit's certificate paths point at
/// the container's files; here they become the kit's example certificates).
/// Returns the effective configuration; any refusal fails the test.
fn tusk_config(what: &str, vars: &[(String, String)], path_map: &dyn Fn(&str) -> Option<PathBuf>) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tusk"));
    cmd.arg("config").env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in vars {
        match path_map(v) {
            Some(p) => cmd.env(k, p),
            None => cmd.env(k, v),
        };
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "tusk config refuses the environment of {what}: {}", shown(&out));
    let cfg: Value = serde_json::from_slice(&out.stdout).expect("tusk config prints JSON");
    println!("{what}: tusk config accepts it (scope {}, {} etcd endpoints)", cfg["scope"], cfg["etcd"]["endpoints"]);
    cfg
}

/// The kit's example certificate for a path under /etc/ssl/etcd-certs.
fn example_cert(value: &str) -> Option<PathBuf> {
    let name = value.strip_prefix(CERT_DIR)?.strip_prefix('/')?;
    let p = repo().join(EXAMPLE_CERTS).join(name);
    assert!(p.is_file(), "{value}: the kit has no example {}", p.display());
    Some(p)
}

/// What every platform's environment must make of tusk: the example
/// cluster, HA over etcd with TLS client certificates, the stop budget.
fn check_cluster_config(what: &str, cfg: &Value, shutdown: f64) {
    assert_eq!(cfg["scope"], "superman", "{what}: scope");
    assert_eq!(cfg["etcd"]["protocol"], "https", "{what}: etcd over TLS");
    assert_eq!(cfg["etcd"]["endpoints"].as_array().map(Vec::len), Some(3), "{what}: three etcd members");
    assert!(cfg["etcd"]["cert"].is_string() && cfg["etcd"]["key"].is_string(), "{what}: etcd client certificate");
    assert_eq!(cfg["postgres"]["version"], 15, "{what}: PGVERSION");
    let budget = cfg["tusk"]["shutdown_timeout"].as_str().map(secs).expect("tusk.shutdown_timeout");
    assert_eq!(budget, shutdown, "{what}: tusk's stop budget is the one the platform's timeouts were checked against");
}

// ---------------------------------------------------------------------------
// Helpers: Butane and Ignition

/// A data: URL as Butane writes one for `contents`: URL-escaped (RFC 2396
/// unreserved characters kept, the rest %XX) or base64, whichever is
/// shorter (Butane also tries gzip; the kit's files do without).
fn data_url(contents: &[u8]) -> String {
    use base64::Engine;
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b);
    let escaped: String =
        contents.iter().map(|&b| if keep(b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let escaped = format!(",{escaped}");
    let b64 = format!(";base64,{}", base64::engine::general_purpose::STANDARD.encode(contents));
    format!("data:{}", if b64.len() < escaped.len() { b64 } else { escaped })
}

fn decode_data_url(url: &str) -> Vec<u8> {
    use base64::Engine;
    let rest = url.strip_prefix("data:").unwrap_or_else(|| panic!("not a data: URL: {url:.40}"));
    let (header, data) = rest.split_once(',').expect("data: URL without a comma");
    if header.ends_with(";base64") {
        return base64::engine::general_purpose::STANDARD.decode(data).expect("base64");
    }
    let bytes = data.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
            out.push(u8::from_str_radix(hex, 16).expect("%XX"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Butane's YAML → Ignition's JSON for what tusk.bu uses (users by name;
/// directories, files and links with mode, owner, local or inline contents),
/// done here independently of the render script. Anything else in the file
/// fails, so the check cannot silently miss a field.
fn translate_butane(bu: &serde_yaml_ng::Value, files_dir: &Path) -> Value {
    use serde_yaml_ng::Value as Y;
    fn map(v: &Y, what: &str, allowed: &[&str]) -> serde_yaml_ng::Mapping {
        let m = v.as_mapping().unwrap_or_else(|| panic!("{what}: not a mapping")).clone();
        for k in m.keys() {
            let k = k.as_str().unwrap_or_else(|| panic!("{what}: key {k:?}"));
            assert!(allowed.contains(&k), "{what}: {k} is not translated by this test (teach it)");
        }
        m
    }
    fn s(v: &Y, what: &str) -> String {
        v.as_str().unwrap_or_else(|| panic!("{what}: not a string: {v:?}")).to_owned()
    }
    fn list<'a>(m: &'a serde_yaml_ng::Mapping, key: &str) -> &'a [Y] {
        m.get(key).map(|v| v.as_sequence().unwrap_or_else(|| panic!("{key}: not a list")).as_slice()).unwrap_or(&[])
    }
    // Butane reads YAML with Go's yaml.v3, where 0750 is octal; the YAML 1.2
    // reader here keeps it as the string "0750".
    fn mode(v: &Y, what: &str) -> u64 {
        match v {
            Y::String(t) if t.starts_with('0') => u64::from_str_radix(t, 8).unwrap_or_else(|_| panic!("{what}: {t}")),
            Y::Number(n) => n.as_u64().unwrap_or_else(|| panic!("{what}: mode {n}")),
            other => panic!("{what}: mode {other:?}"),
        }
    }
    fn owner(m: &serde_yaml_ng::Mapping, key: &str, what: &str, out: &mut Map<String, Value>) {
        if let Some(v) = m.get(key) {
            let o = map(v, what, &["name"]);
            out.insert(key.to_owned(), json!({"name": s(&o["name"], what)}));
        }
    }

    let top = map(bu, "tusk.bu", &["variant", "version", "passwd", "storage"]);
    assert_eq!(s(&top["variant"], "variant"), "fcos", "tusk.bu: variant");
    let spec = match s(&top["version"], "version").as_str() {
        "1.4.0" => "3.3.0",
        "1.5.0" => "3.4.0",
        "1.6.0" => "3.5.0",
        other => panic!("tusk.bu: fcos {other}: which Ignition spec? (teach this test)"),
    };
    let mut users = Vec::new();
    if let Some(passwd) = top.get("passwd") {
        for u in list(&map(passwd, "passwd", &["users"]), "users") {
            let u = map(u, "passwd.users", &["name"]);
            users.push(json!({"name": s(&u["name"], "user name")}));
        }
    }
    let storage = map(&top["storage"], "storage", &["directories", "files", "links"]);
    let mut directories = Vec::new();
    for d in list(&storage, "directories") {
        let d = map(d, "directory", &["path", "mode", "user", "group"]);
        let path = s(&d["path"], "directory path");
        let mut out = Map::new();
        out.insert("path".into(), json!(path));
        owner(&d, "user", &path, &mut out);
        owner(&d, "group", &path, &mut out);
        if let Some(m) = d.get("mode") {
            out.insert("mode".into(), json!(mode(m, &path)));
        }
        directories.push(Value::Object(out));
    }
    let mut files = Vec::new();
    for f in list(&storage, "files") {
        let f = map(f, "file", &["path", "mode", "user", "group", "contents"]);
        let path = s(&f["path"], "file path");
        let mut out = Map::new();
        out.insert("path".into(), json!(path));
        owner(&f, "user", &path, &mut out);
        owner(&f, "group", &path, &mut out);
        if let Some(c) = f.get("contents") {
            let c = map(c, &path, &["local", "inline"]);
            let bytes = match (c.get("local"), c.get("inline")) {
                (Some(local), None) => {
                    let p = files_dir.join(s(local, &path));
                    std::fs::read(&p).unwrap_or_else(|e| panic!("{path}: local {}: {e}", p.display()))
                }
                (None, Some(inline)) => s(inline, &path).into_bytes(),
                _ => panic!("{path}: contents needs one of local and inline"),
            };
            out.insert("contents".into(), json!({"compression": "", "source": data_url(&bytes)}));
        }
        if let Some(m) = f.get("mode") {
            out.insert("mode".into(), json!(mode(m, &path)));
        }
        files.push(Value::Object(out));
    }
    let mut links = Vec::new();
    for l in list(&storage, "links") {
        let l = map(l, "link", &["path", "target", "user", "group", "hard"]);
        let path = s(&l["path"], "link path");
        let mut out = Map::new();
        out.insert("path".into(), json!(path));
        out.insert("target".into(), json!(s(&l["target"], &path)));
        owner(&l, "user", &path, &mut out);
        owner(&l, "group", &path, &mut out);
        if let Some(h) = l.get("hard") {
            out.insert("hard".into(), json!(h.as_bool().expect("hard: a boolean")));
        }
        links.push(Value::Object(out));
    }
    json!({
        "ignition": {"version": spec},
        "passwd": {"users": users},
        "storage": {"directories": directories, "files": files, "links": links},
    })
}

fn ignition() -> Value {
    serde_json::from_str(&read(IGNITION)).expect("tusk.ign is JSON")
}

/// The storage entry of `kind` ("files", "directories", "links") at `path`.
fn ign_node<'a>(ign: &'a Value, kind: &str, path: &str) -> &'a Value {
    ign["storage"][kind]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["path"] == path))
        .unwrap_or_else(|| panic!("tusk.ign has no {kind} entry {path}"))
}

fn ign_file_contents(ign: &Value, path: &str) -> Vec<u8> {
    let node = ign_node(ign, "files", path);
    assert_eq!(node["contents"]["compression"], "", "{path}: not compressed");
    decode_data_url(node["contents"]["source"].as_str().unwrap_or_else(|| panic!("{path}: no contents")))
}

// ---------------------------------------------------------------------------
// Helpers: the Python validators

/// tests/deploy_kit.py MODE FILE with the test bed's venv.
fn helper(mode: &str, file: &Path) -> Output {
    let python = need(VENV_PYTHON);
    run(Command::new(python).arg(repo().join(HELPER)).arg(mode).arg(file))
}

// ---------------------------------------------------------------------------
// systemd

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = need("systemd-analyze");
    need(PODMAN); // verify checks that ExecStart's program exists
    let dir = temp_dir();
    let unit = dir.path().join("tusk.service");
    std::fs::copy(repo().join(UNIT), &unit).expect("copy the unit");

    // As a system unit (docs/systemd.md) and as a user unit (deploy/fcos).
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    for user in [false, true] {
        let mut cmd = Command::new(&analyze);
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = run(cmd.arg("verify").arg(&unit));
        let kind = if user { "user" } else { "system" };
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "systemd-analyze verify ({kind} unit) finds fault with {UNIT}: {}",
            shown(&out)
        );
        println!("systemd-analyze verify, {kind} unit: no complaint");
    }

    // The same check refuses a broken copy: an unknown key, a bad type.
    let broken = dir.path().join("broken.service");
    let text = read(UNIT).replace("TimeoutStopSec=", "TimeoutStopSecs=").replace("Type=notify", "Type=notifyy");
    std::fs::write(&broken, text).expect("write");
    let out = run(Command::new(&analyze).arg("verify").arg(&broken));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("TimeoutStopSecs") && said.contains("notifyy"),
        "systemd-analyze verify should complain about the broken copy: {}",
        shown(&out)
    );
}

#[test]
fn systemd_unit_runs_the_seed_podman_command() {
    let entries = unit_entries(&read(UNIT));
    assert_eq!(one(&entries, "Service", "Type"), "notify");
    assert_eq!(one(&entries, "Service", "NotifyAccess"), "all", "conmon and the container send the notifications");
    assert_eq!(one(&entries, "Service", "Restart"), "always");
    assert_eq!(one(&entries, "Service", "KillMode"), "mixed", "systemd must not SIGTERM postgres behind tusk's back");

    let args = exec_args(one(&entries, "Service", "ExecStart"));
    println!("ExecStart: {}", args.join(" "));
    let run = PodmanRun::parse(&args);
    assert_eq!(run.image, IMAGE, "the image is the last argument");
    assert!(run.command.is_empty(), "nothing after the image: the entry point runs tusk ({:?})", run.command);
    assert_eq!(run.one("--sdnotify"), "container", "tusk's own READY=1 (Type=notify)");
    assert_eq!(run.one("--net"), "host", "seed style: the host's network");
    assert_eq!(run.one("--name"), "tusk", "`podman exec tusk tusk list` needs the name");
    for switch in ["--rm", "--replace", "--detach"] {
        assert!(run.has(switch), "podman run {switch}");
    }
    assert_eq!(run.one("--env-file"), ENV_PATH);
    let volumes = run.all("--volume");
    assert!(
        volumes.iter().any(|v| v.starts_with(&format!("{HOST_DATA}:{DATA_VOLUME}"))),
        "data volume {HOST_DATA} → {DATA_VOLUME}: {volumes:?}"
    );
    assert!(
        volumes.iter().any(|v| v.starts_with(&format!("{CERT_DIR}:{CERT_DIR}:ro"))),
        "etcd certificates, read-only: {volumes:?}"
    );

    // The stop budget: tusk < podman's SIGKILL < systemd's limit.
    let shutdown = shutdown_secs(&kit_env());
    let stop_timeout = secs(run.one("--stop-timeout"));
    let timeout_stop = secs(one(&entries, "Service", "TimeoutStopSec"));
    assert!(
        stop_timeout >= shutdown + GRACE_MARGIN,
        "--stop-timeout {stop_timeout} s must exceed TUSK_SHUTDOWN_TIMEOUT {shutdown} s by {GRACE_MARGIN} s"
    );
    assert!(
        timeout_stop > shutdown + stop_timeout,
        "TimeoutStopSec {timeout_stop} s must exceed TUSK_SHUTDOWN_TIMEOUT + --stop-timeout ({shutdown} + {stop_timeout} s)"
    );
    let stop = exec_args(one(&entries, "Service", "ExecStop"));
    assert_eq!(stop[..2], [PODMAN, "stop"], "ExecStop: {stop:?}");
    assert!(stop.contains(&"tusk".to_owned()), "ExecStop stops the container by name: {stop:?}");
    let stop_time = stop.iter().find_map(|a| a.strip_prefix("--time=")).expect("podman stop --time=");
    assert_eq!(secs(stop_time), stop_timeout, "podman stop waits as long as --stop-timeout");
    println!(
        "stop budget: TUSK_SHUTDOWN_TIMEOUT {shutdown} s < --stop-timeout {stop_timeout} s < TimeoutStopSec {timeout_stop} s"
    );
}

#[test]
fn kit_env_file_is_a_configuration_tusk_accepts() {
    let vars = kit_env();
    for name in ["SCOPE", "PGVERSION", "ETCD3_HOSTS", "ETCD3_PROTOCOL", "ETCD3_CACERT", "ETCD3_CERT", "ETCD3_KEY"] {
        assert!(lookup(&vars, name).is_some(), "{ENV_FILE} sets {name}");
    }
    let cfg = tusk_config(ENV_FILE, &vars, &example_cert);
    check_cluster_config(ENV_FILE, &cfg, shutdown_secs(&vars));
    assert_eq!(cfg["name"], lookup(&vars, "PATRONI_NAME").unwrap());

    // And tusk does refuse a broken one: the check is not a formality.
    let broken = vars.iter().map(|(k, v)| (k.as_str(), if k == "ETCD3_PROTOCOL" { "httpx" } else { v.as_str() }));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tusk"));
    cmd.arg("config").env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in broken {
        cmd.env(k, example_cert(v).map(|p| p.into_os_string()).unwrap_or_else(|| v.into()));
    }
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(78), "tusk config should refuse ETCD3_PROTOCOL=httpx: {}", shown(&out));
}

// ---------------------------------------------------------------------------
// Quadlet

#[test]
fn quadlet_container_matches_the_systemd_unit_and_verifies() {
    let entries = unit_entries(&read(QUADLET));
    let sections: BTreeSet<&str> = entries.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(sections, BTreeSet::from(["Unit", "Container", "Service", "Install"]), "{QUADLET}: sections");
    for (section, key, _) in &entries {
        if section == "Container" {
            assert!(
                QUADLET_CONTAINER_KEYS.contains(&key.as_str()),
                "[Container] {key}= is not a key of Quadlet (podman 5.0): Quadlet would refuse the whole file"
            );
        }
    }
    let c = |key| one(&entries, "Container", key);
    assert_eq!(c("Image"), IMAGE);
    assert_eq!(c("Network"), "host");
    assert_eq!(c("Notify"), "true", "tusk's own READY=1");
    assert_eq!(c("EnvironmentFile"), ENV_PATH);
    let health: Vec<&str> = c("HealthCmd").split_whitespace().collect();
    assert_eq!(health, [TUSK_IN_IMAGE, "healthcheck"], "HealthCmd runs tusk healthcheck");
    for key in ["HealthInterval", "HealthTimeout", "HealthStartPeriod"] {
        assert!(is_go_duration(c(key)), "{key}={}: podman reads a Go duration (10m, 30s), not systemd's", c(key));
    }
    let secrets = values(&entries, "Container", "Secret");
    for var in ["PGPASSWORD_SUPERUSER", "PGPASSWORD_STANDBY"] {
        assert!(
            secrets.iter().any(|s| {
                let opts: BTreeSet<&str> = s.split(',').skip(1).collect();
                opts.contains("type=env") && opts.contains(format!("target={var}").as_str())
            }),
            "Secret=...,type=env,target={var}: {secrets:?}"
        );
    }
    assert_eq!(one(&entries, "Service", "Restart"), "always");
    assert!(!values(&entries, "Install", "WantedBy").is_empty(), "[Install] WantedBy=");

    // The stop budget, as in the systemd unit.
    let shutdown = shutdown_secs(&kit_env());
    let stop_timeout = secs(c("StopTimeout"));
    let timeout_stop = secs(one(&entries, "Service", "TimeoutStopSec"));
    assert!(
        stop_timeout >= shutdown + GRACE_MARGIN,
        "StopTimeout {stop_timeout} s vs TUSK_SHUTDOWN_TIMEOUT {shutdown} s"
    );
    assert!(timeout_stop > shutdown + stop_timeout, "TimeoutStopSec {timeout_stop} s vs {shutdown} + {stop_timeout} s");

    // The podman run Quadlet makes of [Container] (quadlet.go: its fixed
    // options, then one option per key), for the keys this file uses.
    let mut args: Vec<String> = vec![PODMAN.into(), "run".into(), format!("--name={}", c("ContainerName"))];
    args.extend(["--replace", "--rm", "--cgroups=split", "--sdnotify=container", "-d"].map(String::from));
    for (section, key, value) in &entries {
        if section != "Container" {
            continue;
        }
        let flag = match key.as_str() {
            "ContainerName" | "Image" | "Notify" => continue,
            "Network" => "--network",
            "EnvironmentFile" => "--env-file",
            "Secret" => "--secret",
            "Volume" => "--volume",
            "Ulimit" => "--ulimit",
            "StopTimeout" => "--stop-timeout",
            "HealthCmd" => "--health-cmd",
            "HealthInterval" => "--health-interval",
            "HealthTimeout" => "--health-timeout",
            "HealthRetries" => "--health-retries",
            "HealthStartPeriod" => "--health-start-period",
            other => panic!("[Container] {other}=: teach this test Quadlet's translation"),
        };
        args.push(format!("{flag}={value}"));
    }
    args.push(c("Image").to_owned());
    let quadlet_run = PodmanRun::parse(&args);
    let unit_run = PodmanRun::parse(&exec_args(one(&unit_entries(&read(UNIT)), "Service", "ExecStart")));
    assert_eq!(
        quadlet_run.essentials(),
        unit_run.essentials(),
        "Quadlet's container and the systemd unit's differ (network, volumes, env file, stop timeout, ulimits, notify, image)"
    );

    // The unit Quadlet writes: [Unit], [Service] and [Install] passed through,
    // with the service settings Quadlet adds. systemd judges the passed-through
    // keys exactly as in the generated unit.
    let dir = temp_dir();
    let mut unit = String::new();
    for section in ["Unit", "Service", "Install"] {
        unit.push_str(&format!("[{section}]\n"));
        if section == "Service" {
            let quoted = shlex::try_join(args.iter().map(String::as_str)).expect("quote");
            unit.push_str(&format!(
                "Environment=PODMAN_SYSTEMD_UNIT=%n\nKillMode=mixed\nDelegate=yes\nType=notify\nNotifyAccess=all\n\
                 SyslogIdentifier=%N\nExecStart={quoted}\nExecStop={PODMAN} rm -v -f -i tusk\n\
                 ExecStopPost=-{PODMAN} rm -v -f -i tusk\n"
            ));
        }
        for (s, k, v) in &entries {
            if s == section {
                unit.push_str(&format!("{k}={v}\n"));
            }
        }
    }
    let path = dir.path().join("tusk.service");
    std::fs::write(&path, &unit).expect("write");
    let out = run(Command::new(need("systemd-analyze")).arg("verify").arg(&path));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify finds fault with the unit Quadlet would write:\n{unit}\n{}",
        shown(&out)
    );
    println!("{QUADLET}: keys known to Quadlet 5.0, same container as {UNIT}; its unit passes systemd-analyze verify");

    // Where the generator exists (podman 4.4 and later; not Debian 12), it
    // writes the unit itself, which must verify as well.
    let generator = ["/usr/libexec/podman/quadlet", "/usr/lib/systemd/system-generators/podman-system-generator"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    match generator {
        None => println!("no Quadlet generator on this machine (podman before 4.4): the file was checked as INI"),
        Some(generator) => {
            let input = dir.path().join("in");
            let output = dir.path().join("out");
            std::fs::create_dir_all(&input).expect("mkdir");
            std::fs::create_dir_all(&output).expect("mkdir");
            std::fs::copy(repo().join(QUADLET), input.join("tusk.container")).expect("copy");
            let out = run(Command::new(generator).arg("-no-kmsg-log").arg(&output).env("QUADLET_UNIT_DIRS", &input));
            let generated = output.join("tusk.service");
            assert!(
                out.status.success() && generated.is_file(),
                "{} refuses {QUADLET}: {}",
                generator.display(),
                shown(&out)
            );
            let out = run(Command::new(need("systemd-analyze")).arg("verify").arg(&generated));
            assert!(out.status.success(), "systemd-analyze verify of Quadlet's unit: {}", shown(&out));
            println!("{}: generated tusk.service, which verifies", generator.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Fedora CoreOS

#[test]
fn ignition_config_passes_ignition_validate() {
    let validate = need("ignition-validate");
    let out = run(Command::new(&validate).arg(repo().join(IGNITION)));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "ignition-validate finds fault with {IGNITION}: {}",
        shown(&out)
    );
    let version = run(Command::new(&validate).arg("--version"));
    println!("ignition-validate ({}): {IGNITION} is valid", String::from_utf8_lossy(&version.stdout).trim());

    // It refuses a broken copy (a relative path).
    let dir = temp_dir();
    let broken = dir.path().join("broken.ign");
    let mut ign = ignition();
    ign["storage"]["files"][0]["path"] = json!("var/lib/systemd/linger/tusk");
    std::fs::write(&broken, ign.to_string()).expect("write");
    let out = run(Command::new(&validate).arg(&broken));
    assert!(!out.status.success(), "ignition-validate should refuse a relative path: {}", shown(&out));
}

#[test]
fn ignition_config_is_the_render_scripts_output() {
    let out = run(Command::new(need(SYSTEM_PYTHON)).arg(repo().join(RENDER)));
    assert!(out.status.success(), "{RENDER}: {}", shown(&out));
    let rendered = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        rendered == read(IGNITION),
        "{IGNITION} is stale: run `python3 {RENDER} -o {IGNITION}` after changing the unit, the env file or the certificates"
    );
    println!("{IGNITION} equals {RENDER}'s output ({} bytes)", rendered.len());
}

#[test]
fn butane_config_translates_to_the_ignition_config() {
    let bu: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(BUTANE)).expect("tusk.bu is YAML");
    let translated = translate_butane(&bu, &repo().join("deploy"));
    assert!(
        translated == ignition(),
        "{BUTANE} and {IGNITION} describe different systems.\nFrom tusk.bu:\n{}\ntusk.ign:\n{}",
        serde_json::to_string_pretty(&translated).unwrap(),
        serde_json::to_string_pretty(&ignition()).unwrap()
    );
    println!("{BUTANE}, translated here, gives {IGNITION}");
}

#[test]
fn ignition_config_carries_the_kit_for_a_rootless_user() {
    let ign = ignition();
    let home = "/home/tusk";
    let unit_dir = format!("{home}/.config/systemd/user");
    let unit_path = format!("{unit_dir}/tusk.service");

    // The unit inside the Ignition config is the kit's unit, byte for byte;
    // so are the env file and the certificates.
    assert_eq!(String::from_utf8(ign_file_contents(&ign, &unit_path)).unwrap(), read(UNIT), "the unit in tusk.ign");
    assert_eq!(
        String::from_utf8(ign_file_contents(&ign, ENV_PATH)).unwrap(),
        read(ENV_FILE),
        "the env file in tusk.ign"
    );
    let env_args = PodmanRun::parse(&exec_args(one(&unit_entries(&read(UNIT)), "Service", "ExecStart")));
    assert_eq!(env_args.one("--env-file"), ENV_PATH, "the unit reads the env file Ignition writes");
    for name in ["ETCD3_CACERT", "ETCD3_CERT", "ETCD3_KEY"] {
        let path = lookup(&kit_env(), name).unwrap().to_owned();
        let local = example_cert(&path).expect("under /etc/ssl/etcd-certs");
        assert_eq!(ign_file_contents(&ign, &path), std::fs::read(local).unwrap(), "{path} in tusk.ign");
    }
    let key = ign_node(&ign, "files", lookup(&kit_env(), "ETCD3_KEY").unwrap());
    assert_eq!(key["mode"], 0o600, "the client key is readable by its owner only");

    // A rootless user whose systemd instance starts at boot (linger), with
    // the unit enabled and everything it needs owned by the user.
    let users = ign["passwd"]["users"].as_array().expect("passwd.users");
    assert!(users.iter().any(|u| u["name"] == "tusk"), "user tusk: {users:?}");
    let linger = ign_node(&ign, "files", "/var/lib/systemd/linger/tusk");
    assert!(linger.get("contents").is_none(), "the linger file is empty");
    let wants = ign_node(&ign, "links", &format!("{unit_dir}/default.target.wants/tusk.service"));
    assert_eq!(wants["target"], unit_path.as_str(), "enabled: default.target.wants links the unit");
    assert_eq!(
        one(&unit_entries(&read(UNIT)), "Install", "WantedBy"),
        "default.target",
        "a user manager has default.target, not multi-user.target"
    );
    let mut dir = PathBuf::from(format!("{unit_dir}/default.target.wants"));
    while dir != Path::new(home) {
        let d = ign_node(&ign, "directories", dir.to_str().unwrap());
        assert_eq!(d["user"]["name"], "tusk", "{} belongs to the user (else Ignition makes it root's)", dir.display());
        dir.pop();
    }
    for owned in [HOST_DATA, CERT_DIR] {
        assert_eq!(ign_node(&ign, "directories", owned)["user"]["name"], "tusk", "{owned}: owned by tusk");
    }
    // postgres (another uid in the container) passes through the volume's
    // top to PGROOT: tusk refuses to start otherwise.
    assert_eq!(ign_node(&ign, "directories", HOST_DATA)["mode"].as_u64().map(|m| m & 0o005), Some(0o005));
    let env = ign_node(&ign, "files", ENV_PATH);
    assert_eq!(env["group"]["name"], "tusk", "the user's podman reads the env file");
    println!("{IGNITION}: user tusk with linger, its unit enabled, the kit's unit, env file and certificates");
}

// ---------------------------------------------------------------------------
// ECS

#[test]
fn ecs_task_definition_is_a_valid_register_task_definition_input() {
    let path = repo().join(ECS);
    let out = helper("ecs", &path);
    assert!(out.status.success(), "botocore refuses {ECS}: {}", shown(&out));
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());

    // The validator refuses a broken copy: an unknown member, a wrong type,
    // a value outside an enum.
    let dir = temp_dir();
    let broken = dir.path().join("broken.json");
    let mut td: Value = serde_json::from_str(&read(ECS)).unwrap();
    td["containerDefinitions"][0]["stopTimeoutt"] = json!(15);
    td["containerDefinitions"][0]["memoryReservation"] = json!("2048");
    td["networkMode"] = json!("hostt");
    std::fs::write(&broken, td.to_string()).unwrap();
    let out = helper("ecs", &broken);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && said.contains("stopTimeoutt")
            && said.contains("memoryReservation")
            && said.contains("hostt"),
        "the ECS validator should refuse all three faults: {}",
        shown(&out)
    );
}

#[test]
fn ecs_task_definition_runs_tusk_as_the_kit_says() {
    let td: Value = serde_json::from_str(&read(ECS)).expect("JSON");
    assert_eq!(td["networkMode"], "host");
    assert!(td["requiresCompatibilities"].as_array().unwrap().contains(&json!("EC2")), "EC2 launch type");
    let arn = |v: &Value, what: &str| {
        let s = v.as_str().unwrap_or_else(|| panic!("{what}: missing"));
        assert!(s.starts_with("arn:aws:iam::") && s.contains(":role/"), "{what}: an IAM role ARN, not {s}");
    };
    arn(&td["taskRoleArn"], "taskRoleArn (S3 for WAL_S3_BUCKET)");
    arn(&td["executionRoleArn"], "executionRoleArn (fetches the secrets)");
    let containers = td["containerDefinitions"].as_array().expect("containerDefinitions");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["essential"], true);

    let pairs = |key: &str, value: &str| -> Vec<(String, String)> {
        c[key]
            .as_array()
            .map(|a| {
                a.iter().map(|e| (e["name"].as_str().unwrap().into(), e[value].as_str().unwrap().into())).collect()
            })
            .unwrap_or_default()
    };
    let environment = pairs("environment", "value");
    let secrets = pairs("secrets", "valueFrom");
    assert!(lookup(&environment, "WAL_S3_BUCKET").is_some(), "WAL to S3, through the task role");
    for var in ["PGPASSWORD_SUPERUSER", "PGPASSWORD_STANDBY"] {
        let from = lookup(&secrets, var).unwrap_or_else(|| panic!("secret {var}"));
        assert!(
            from.starts_with("arn:aws:secretsmanager:") || from.starts_with("arn:aws:ssm:"),
            "{var} from Secrets Manager or SSM Parameter Store: {from}"
        );
    }
    for (name, _) in &secrets {
        assert!(lookup(&environment, name).is_none(), "{name} is both a secret and a plain variable");
    }

    let shutdown = shutdown_secs(&environment);
    let stop_timeout = c["stopTimeout"].as_f64().expect("stopTimeout");
    assert!(
        stop_timeout >= shutdown + GRACE_MARGIN && stop_timeout <= ECS_MAX_STOP_TIMEOUT,
        "stopTimeout {stop_timeout} s: at least TUSK_SHUTDOWN_TIMEOUT {shutdown} + {GRACE_MARGIN} s, at most {ECS_MAX_STOP_TIMEOUT}"
    );
    let health = &c["healthCheck"];
    assert_eq!(health["command"], json!(["CMD", TUSK_IN_IMAGE, "healthcheck"]), "healthCheck runs tusk healthcheck");
    let start = health["startPeriod"].as_f64().expect("healthCheck.startPeriod");
    assert!((60.0..=ECS_MAX_START_PERIOD).contains(&start), "startPeriod {start}: generous, within ECS's 300 s");
    let nofile =
        c["ulimits"].as_array().and_then(|u| u.iter().find(|l| l["name"] == "nofile")).expect("ulimits nofile");
    assert!(nofile["softLimit"].as_u64() <= nofile["hardLimit"].as_u64(), "nofile soft ≤ hard");
    assert_ne!(c["linuxParameters"]["initProcessEnabled"], true, "tusk is PID 1 itself");

    // Mounts: the data volume and the certificates (read-only), from host paths.
    let volume_path = |name: &Value| {
        td["volumes"].as_array().and_then(|v| v.iter().find(|v| &v["name"] == name)).map(|v| &v["host"]["sourcePath"])
    };
    let mounts = c["mountPoints"].as_array().expect("mountPoints");
    let data = mounts.iter().find(|m| m["containerPath"] == DATA_VOLUME).expect("a mount on the data volume");
    assert_eq!(volume_path(&data["sourceVolume"]), Some(&json!(HOST_DATA)));
    let certs = mounts.iter().find(|m| m["containerPath"] == CERT_DIR).expect("the etcd certificates");
    assert_eq!(certs["readOnly"], true);
    assert_eq!(volume_path(&certs["sourceVolume"]), Some(&json!(CERT_DIR)));

    // The environment ECS gives the container (secrets as their values).
    let mut vars = environment.clone();
    vars.extend(secrets.iter().map(|(k, _)| (k.clone(), format!("example-{}", k.to_lowercase()))));
    let cfg = tusk_config(ECS, &vars, &example_cert);
    check_cluster_config(ECS, &cfg, shutdown);
    assert_eq!(cfg["storage"]["bucket"], lookup(&environment, "WAL_S3_BUCKET").unwrap(), "WAL storage configured");
    assert!(cfg["api"]["auth"].is_object(), "REST API write methods need the password from the secrets");
}

// ---------------------------------------------------------------------------
// Nomad

/// A block of python-hcl2's JSON: a list of one object per block.
fn block<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v[key].as_array().map(Vec::as_slice) {
        Some([one]) => one,
        _ => panic!("expected one {key} block in {v}"),
    }
}

/// A labelled block (`job "name" { }`): (label, body).
fn labelled<'a>(v: &'a Value, key: &str) -> (&'a str, &'a Value) {
    let obj = block(v, key).as_object().unwrap_or_else(|| panic!("{key}: not an object"));
    assert_eq!(obj.len(), 1, "{key}: one label");
    let (label, body) = obj.iter().next().unwrap();
    (label.as_str(), body)
}

#[test]
fn nomad_job_parses_as_hcl2_with_the_kits_settings() {
    let out = helper("hcl", &repo().join(NOMAD));
    assert!(out.status.success(), "python-hcl2 cannot parse {NOMAD}: {}", shown(&out));
    let hcl: Value = serde_json::from_slice(&out.stdout).expect("JSON from the helper");

    let (job_name, job) = labelled(&hcl, "job");
    let (_, group) = labelled(job, "group");
    let (task_name, task) = labelled(group, "task");
    println!("{NOMAD}: job {job_name}, task {task_name}, driver {}", task["driver"]);
    assert!(["podman", "docker"].contains(&task["driver"].as_str().unwrap()), "podman or docker driver");
    let config = block(task, "config");
    assert_eq!(config["network_mode"], "host");
    assert_eq!(config["image"], IMAGE);
    let volumes: Vec<&str> = config["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(volumes.contains(&format!("{HOST_DATA}:{DATA_VOLUME}").as_str()), "data volume: {volumes:?}");
    assert!(group["count"].as_u64() >= Some(2), "a cluster has members");
    let constraint = block(group, "constraint");
    assert_eq!(constraint["operator"], "distinct_hosts", "host network: one member per client");

    // Stop: SIGTERM, and time for tusk's budget.
    let env_block = block(task, "env").as_object().expect("env");
    let env: Vec<(String, String)> =
        env_block.iter().map(|(k, v)| (k.clone(), v.as_str().expect("env values are strings").to_owned())).collect();
    let shutdown = shutdown_secs(&env);
    assert_eq!(task["kill_signal"], "SIGTERM");
    let kill = secs(task["kill_timeout"].as_str().expect("kill_timeout"));
    assert!(
        kill >= shutdown + GRACE_MARGIN && kill <= NOMAD_MAX_KILL_TIMEOUT,
        "kill_timeout {kill} s: above TUSK_SHUTDOWN_TIMEOUT {shutdown} + {GRACE_MARGIN} s, within max_kill_timeout {NOMAD_MAX_KILL_TIMEOUT} s"
    );

    // The service check: HTTP on the REST API's port 8008.
    let network = block(group, "network");
    assert_eq!(network["mode"], "host");
    let ports: Vec<(String, Value)> = network["port"]
        .as_array()
        .expect("ports")
        .iter()
        .flat_map(|p| p.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["static"].clone())))
        .collect();
    let static_port = |label: &Value| ports.iter().find(|(l, _)| label == l.as_str()).map(|(_, p)| p.clone());
    let service = block(group, "service");
    let check = block(service, "check");
    assert_eq!(check["type"], "http");
    assert!(["/health", "/liveness"].contains(&check["path"].as_str().unwrap()), "check path {}", check["path"]);
    let check_port = if check["port"].is_null() { &service["port"] } else { &check["port"] };
    assert_eq!(static_port(check_port), Some(json!(8008)), "the check reaches the REST API on 8008");

    // Secrets: a template rendering the passwords into the environment.
    let templates = task["template"].as_array().expect("template blocks");
    let passwords = templates.iter().find(|t| t["env"] == true).expect("a template with env = true");
    let data = passwords["data"].as_str().unwrap();
    assert!(data.contains("nomadVar") || data.contains("secret "), "from Nomad variables or Vault: {data}");
    let templated: Vec<String> = data
        .lines()
        .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    for var in ["PGPASSWORD_SUPERUSER", "PGPASSWORD_STANDBY"] {
        assert!(templated.iter().any(|k| k == var), "the template sets {var}: {templated:?}");
    }
    let rendered: BTreeSet<String> =
        templates.iter().map(|t| format!("/{}", t["destination"].as_str().unwrap())).collect();
    for name in ["ETCD3_CACERT", "ETCD3_CERT", "ETCD3_KEY"] {
        let path = lookup(&env, name).unwrap_or_else(|| panic!("env {name}"));
        assert!(rendered.contains(path), "{name}={path} is a file a template writes: {rendered:?}");
    }

    // What the task gets: env with Nomad's interpolations filled in as a
    // client would, the template's variables, the certificate files.
    let node = |v: &str| {
        v.replace("${node.unique.name}", "nomad-client-1").replace("${attr.unique.network.ip-address}", "10.0.0.21")
    };
    let mut vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), node(v))).collect();
    assert!(vars.iter().all(|(_, v)| !v.contains("${")), "an interpolation this test does not fill in: {vars:?}");
    vars.extend(templated.iter().map(|k| (k.clone(), format!("example-{}", k.to_lowercase()))));
    let certs = repo().join(EXAMPLE_CERTS);
    let cert_for = |v: &str| match v {
        "/secrets/etcd-ca.pem" => Some(certs.join("ca.pem")),
        "/secrets/etcd-client-cert.pem" => Some(certs.join("client-cert.pem")),
        "/secrets/etcd-client-cert-key.pem" => Some(certs.join("client-cert-key.pem")),
        _ => None,
    };
    let cfg = tusk_config(NOMAD, &vars, &cert_for);
    check_cluster_config(NOMAD, &cfg, shutdown);
    assert_eq!(cfg["name"], "nomad-client-1");
    assert_eq!(cfg["postgres"]["connect_address"], "10.0.0.21:5432");

    // python-hcl2 does refuse what is not HCL.
    let dir = temp_dir();
    let broken = dir.path().join("broken.nomad.hcl");
    let text = read(NOMAD);
    std::fs::write(&broken, &text[..text.rfind('}').unwrap()]).unwrap();
    let out = helper("hcl", &broken);
    assert!(!out.status.success(), "python-hcl2 should refuse an unclosed block: {}", shown(&out));
}

// ---------------------------------------------------------------------------
// Documentation

#[test]
fn each_platform_has_a_page_linked_from_the_readme() {
    let readme = read("README.md");
    for (page, kit_file) in [
        ("docs/systemd.md", UNIT),
        ("docs/quadlet.md", QUADLET),
        ("docs/fcos.md", BUTANE),
        ("docs/ecs.md", ECS),
        ("docs/nomad.md", NOMAD),
    ] {
        assert!(readme.contains(&format!("]({page})")), "README.md links {page}");
        let text = read(page);
        let name = Path::new(kit_file).file_name().unwrap().to_str().unwrap();
        assert!(text.contains(name), "{page} names the kit's {name}");
        assert!(text.contains("tusk list"), "{page} shows how to look at the cluster (tusk list)");
    }
}
