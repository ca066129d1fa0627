//! The real test bed: etcd with mutual TLS and garage (S3), started by the
//! scripts in `scripts/testbed/` (install them with `scripts/install-testbed.sh`).
//!
//! Include from an integration test with
//! `#[path = "support/testbed.rs"] mod testbed;`.
//!
//! Every daemon is started with `TESTBED_WATCH_PID` set to this process: a
//! small watchdog kills it within about a second of this test binary exiting
//! (statics are never dropped), and `timeout` caps its life at
//! `TESTBED_MAX_SECONDS` (default 1800) in any case. Owned instances stop in
//! `Drop`; the shared ones (`shared_etcd`, `shared_garage`) also have their
//! directory removed by the watchdog.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a script in `scripts/testbed/`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts/testbed").join(name)
}

/// A fresh directory `/tmp/<prefix>XXXXXX` with mode 0755 (readable by the
/// `postgres` user), removed when the returned guard drops.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o755))
        .tempdir_in("/tmp")
        .expect("create temp dir under /tmp")
}

/// Free ports: the tests' one allocator (`support/ports.rs`).
#[allow(unused_imports)]
pub use crate::ports::{free_port, free_ports};

/// Runs a test-bed script with the watchdog environment. Ok(trimmed stdout),
/// or Err(a report with its output) when it fails.
fn run_script(name: &str, args: &[&str], rm_on_exit: bool) -> Result<String, String> {
    run_script_env(name, args, rm_on_exit, &[])
}

fn run_script_env(name: &str, args: &[&str], rm_on_exit: bool, env: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = Command::new(script(name));
    cmd.envs(env.iter().copied());
    cmd.args(args).env("TESTBED_WATCH_PID", std::process::id().to_string()).stdin(Stdio::null());
    if rm_on_exit {
        cmd.env("TESTBED_RM_ON_EXIT", "1");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {name}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{name} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts a daemon on fresh ports, retrying (3 attempts) when another
/// process grabbed a port between our check and the daemon's bind, and
/// once after any other failure.
fn start_with_ports(n: u16, mut attempt: impl FnMut(u16) -> Result<String, String>) -> (u16, String) {
    let mut last = String::new();
    for _ in 0..3 {
        let base = free_ports(n);
        match attempt(base) {
            Ok(out) => return (base, out),
            // A taken port is expected; anything else gets one more try
            // (a transient failure must not fail a whole test binary).
            Err(e) if e.contains("already in use") || last.is_empty() => {
                eprintln!("test bed: retrying after: {e}");
                last = e
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("ports kept being taken: {last}");
}

/// Reads a pid file; `None` when absent or empty.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `sig` (e.g. "KILL", "STOP", "CONT") to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// True when `pid` no longer runs (absent or a zombie).
pub fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().is_none_or(|r| r.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until `pid` is gone; returns whether it is.
pub fn wait_gone(pid: u32, limit: std::time::Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    gone(pid)
}

// ---------------------------------------------------------------- etcd ----

/// One etcd (single member or 3-member cluster) with mutual TLS.
pub struct Etcd {
    /// Directory holding certs/, data, logs and pid files.
    pub dir: PathBuf,
    /// Client endpoints as `127.0.0.1:port` (use `https://`).
    pub endpoints: Vec<String>,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// Client certificate (CN=tusk) and its PKCS#8 key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// An unrelated CA and a client certificate it signed (must be refused).
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    /// Member names: `["n0"]` or `["n0", "n1", "n2"]`.
    pub names: Vec<String>,
    /// How long the start took (script until healthy).
    pub startup: std::time::Duration,
    cluster: bool,
    /// The address clients reach the members at (`TESTBED_HOST`).
    host: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Etcd {
    /// A single member in `dir` (the caller owns the directory).
    pub fn start_single(dir: &Path) -> Etcd {
        Self::start_in(dir, false, false)
    }

    /// A 3-member cluster (n0 n1 n2) in `dir` (the caller owns the directory).
    pub fn start_cluster(dir: &Path) -> Etcd {
        Self::start_in(dir, true, false)
    }

    /// A single member in its own temp dir, removed on drop.
    pub fn single() -> Etcd {
        let tmp = temp_dir("tusk-etcd-");
        let mut e = Self::start_in(tmp.path(), false, false);
        e._tmp = Some(tmp);
        e
    }

    /// A 3-member cluster in its own temp dir, removed on drop.
    pub fn cluster() -> Etcd {
        let tmp = temp_dir("tusk-etcd3-");
        let mut e = Self::start_in(tmp.path(), true, false);
        e._tmp = Some(tmp);
        e
    }

    /// A 3-member cluster in `dir` whose member `name` runs as OS user
    /// `user` (to single out its traffic by uid).
    pub fn start_cluster_running_as(dir: &Path, name: &str, user: &str) -> Etcd {
        let run_as = format!("{name}:{user}");
        Self::start_in_env(dir, true, false, &[("TESTBED_ETCD_RUN_AS", &run_as)])
    }

    fn start_in(dir: &Path, cluster: bool, rm_on_exit: bool) -> Etcd {
        Self::start_in_env(dir, cluster, rm_on_exit, &[])
    }

    /// A 3-member cluster in `dir` whose clients reach it at `host` (an
    /// address the test owns, e.g. its bridge's) instead of 127.0.0.1; the
    /// server certificate names that address.
    pub fn start_cluster_on(dir: &Path, host: &str) -> Etcd {
        Self::start_in_env(dir, true, false, &[("TESTBED_HOST", host)])
    }

    /// Starts again the members of a cluster that were stopped or killed
    /// (same ports, same data); waits until all are healthy.
    pub fn restart_stopped(&self) {
        let d = self.dir.to_str().expect("utf-8 dir");
        let base = self.endpoints[0].rsplit(':').next().expect("port").to_string();
        let cmd = if self.cluster { "start-cluster" } else { "start" };
        assert!(self.cluster, "restart_stopped: cluster only");
        run_script_env("etcd.sh", &[cmd, d, &base], false, &[("TESTBED_HOST", &self.host)])
            .unwrap_or_else(|e| panic!("restart etcd members: {e}"));
    }

    fn start_in_env(dir: &Path, cluster: bool, rm_on_exit: bool, env: &[(&str, &str)]) -> Etcd {
        let d = dir.to_str().expect("utf-8 dir");
        let host = env.iter().find(|(k, _)| *k == "TESTBED_HOST").map_or("127.0.0.1", |(_, v)| *v).to_string();
        let t0 = Instant::now();
        // After a port clash the member data (bound to the old peer URLs) goes.
        let wipe = || {
            for sub in ["data", "n0", "n1", "n2"] {
                let _ = fs::remove_dir_all(dir.join(sub));
            }
        };
        let (ports, names): (Vec<u16>, Vec<String>) = if cluster {
            let (base, _) = start_with_ports(6, |base| {
                run_script_env("etcd.sh", &["start-cluster", d, &base.to_string()], rm_on_exit, env)
                    .inspect_err(|_| wipe())
            });
            (vec![base, base + 2, base + 4], (0..3).map(|i| format!("n{i}")).collect())
        } else {
            let (base, _) = start_with_ports(2, |base| {
                let (c, p) = (base.to_string(), (base + 1).to_string());
                run_script_env("etcd.sh", &["start", d, &c, &p], rm_on_exit, env).inspect_err(|_| wipe())
            });
            (vec![base], vec!["n0".to_string()])
        };
        let certs = dir.join("certs");
        Etcd {
            dir: dir.to_path_buf(),
            endpoints: ports.iter().map(|p| format!("{host}:{p}")).collect(),
            ca: certs.join("ca.crt"),
            cert: certs.join("client.crt"),
            key: certs.join("client.key"),
            other_ca: certs.join("other-ca.crt"),
            other_client_cert: certs.join("other-client.crt"),
            other_client_key: certs.join("other-client.key"),
            names,
            startup: t0.elapsed(),
            cluster,
            host,
            _tmp: None,
        }
    }

    /// `https://127.0.0.1:port` for every member.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| format!("https://{e}")).collect()
    }

    /// The `https://` URLs joined with commas (etcdctl `--endpoints` form).
    pub fn endpoints_arg(&self) -> String {
        self.urls().join(",")
    }

    /// Runs etcdctl (API v3) against all members with the test client cert.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(&self.endpoints_arg(), args)
    }

    /// Runs etcdctl against `endpoints` (comma-separated URLs) with the test
    /// client cert; short dial/command timeouts.
    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        let cacert = format!("--cacert={}", self.ca.display());
        let cert = format!("--cert={}", self.cert.display());
        let key = format!("--key={}", self.key.display());
        self.etcdctl_raw(endpoints, &[&cacert, &cert, &key], args)
    }

    /// Runs etcdctl with exactly the TLS flags given (for refusal tests).
    pub fn etcdctl_raw(&self, endpoints: &str, tls: &[&str], args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(tls)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl")
    }

    /// Pid file of member `i`.
    pub fn pid_file(&self, i: usize) -> PathBuf {
        if self.cluster { self.dir.join(format!("n{i}.pid")) } else { self.dir.join("etcd.pid") }
    }

    /// Log file of member `i`.
    pub fn log_file(&self, i: usize) -> PathBuf {
        if self.cluster { self.dir.join(format!("n{i}.log")) } else { self.dir.join("etcd.log") }
    }

    /// The etcd process id of member `i` (None once stopped).
    pub fn pid(&self, i: usize) -> Option<u32> {
        read_pid(&self.pid_file(i))
    }

    /// SIGKILLs member `i` (a lost node) and waits until it is gone.
    pub fn kill_member(&self, i: usize) {
        let pid = self.pid(i).expect("member pid");
        signal(pid, "KILL");
        wait_gone(pid, std::time::Duration::from_secs(5));
    }

    /// Stops every member (idempotent).
    pub fn stop(&self) {
        if let Some(d) = self.dir.to_str() {
            let _ = Command::new(script("etcd.sh")).args(["stop", d]).stdin(Stdio::null()).output();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

// -------------------------------------------------------------- garage ----

/// A single-node garage S3 server with one bucket and one access key.
pub struct Garage {
    pub dir: PathBuf,
    /// `http://127.0.0.1:port`
    pub endpoint: String,
    pub s3_port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Always `garage`.
    pub region: String,
    /// The `DIR/env` file (AWS_* variables and BUCKET).
    pub env_file: PathBuf,
    pub startup: std::time::Duration,
    /// The address the S3 API listens on (`TESTBED_HOST`).
    host: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Garage {
    /// Starts garage in `dir` (the caller owns it) with bucket `tusk-test`.
    pub fn start(dir: &Path) -> Garage {
        Self::start_in(dir, "tusk-test", false)
    }

    /// Starts garage in `dir` with the given bucket name.
    pub fn start_with_bucket(dir: &Path, bucket: &str) -> Garage {
        Self::start_in(dir, bucket, false)
    }

    /// Garage in its own temp dir, removed on drop.
    pub fn new() -> Garage {
        let tmp = temp_dir("tusk-garage-");
        let mut g = Self::start_in(tmp.path(), "tusk-test", false);
        g._tmp = Some(tmp);
        g
    }

    /// Starts garage in `dir` with its S3 API on `host` (an address the
    /// test owns, e.g. its bridge's) instead of 127.0.0.1.
    pub fn start_on(dir: &Path, bucket: &str, host: &str) -> Garage {
        Self::start_in_host(dir, bucket, false, host)
    }

    fn start_in(dir: &Path, bucket: &str, rm_on_exit: bool) -> Garage {
        Self::start_in_host(dir, bucket, rm_on_exit, "127.0.0.1")
    }

    fn start_in_host(dir: &Path, bucket: &str, rm_on_exit: bool, host: &str) -> Garage {
        let d = dir.to_str().expect("utf-8 dir");
        let t0 = Instant::now();
        let (base, endpoint) = start_with_ports(2, |base| {
            let (s3, rpc) = (base.to_string(), (base + 1).to_string());
            run_script_env("garage.sh", &["start", d, &s3, &rpc, bucket], rm_on_exit, &[("TESTBED_HOST", host)])
        });
        let env_file = dir.join("env");
        let env = parse_env(&env_file);
        Garage {
            dir: dir.to_path_buf(),
            endpoint,
            s3_port: base,
            bucket: env["BUCKET"].clone(),
            access_key: env["AWS_ACCESS_KEY_ID"].clone(),
            secret_key: env["AWS_SECRET_ACCESS_KEY"].clone(),
            region: env["AWS_REGION"].clone(),
            env_file,
            startup: t0.elapsed(),
            host: host.to_string(),
            _tmp: None,
        }
    }

    /// The variables of `DIR/env` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT, AWS_S3_FORCE_PATH_STYLE, BUCKET).
    pub fn env(&self) -> HashMap<String, String> {
        parse_env(&self.env_file)
    }

    /// Runs the garage CLI against this node (`garage -c DIR/garage.toml ARGS`).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(script("garage.sh"))
            .arg("cli")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage cli")
    }

    /// Path-style URL of an object in the bucket.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, key)
    }

    /// curl, SigV4-signed with this server's key (`--aws-sigv4`), `-sS`.
    pub fn curl(&self, args: &[&str]) -> Output {
        self.curl_as(&self.access_key, &self.secret_key, args)
    }

    /// curl, SigV4-signed with the given credentials. Adds
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD`: curl 7.88 does not send
    /// that header and garage rejects requests without it (400).
    pub fn curl_as(&self, access_key: &str, secret_key: &str, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-sS", "--aws-sigv4"])
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{access_key}:{secret_key}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run curl")
    }

    /// PUTs `data` as object `key`; returns the HTTP status.
    pub fn put_object(&self, key: &str, data: &[u8]) -> u16 {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(data).expect("write temp file");
        let path = f.path().to_str().expect("utf-8 path").to_string();
        let out = self.curl(&["-o", "/dev/null", "-w", "%{http_code}", "-T", &path, &self.object_url(key)]);
        http_code(&out)
    }

    /// GETs object `key`: (HTTP status, body).
    pub fn get_object(&self, key: &str) -> (u16, Vec<u8>) {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let path = f.path().to_str().expect("utf-8 path").to_string();
        let out = self.curl(&["-o", &path, "-w", "%{http_code}", &self.object_url(key)]);
        (http_code(&out), fs::read(f.path()).unwrap_or_default())
    }

    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.dir.join("garage.pid"))
    }

    /// Starts the server again after `stop` (same ports, data and keys);
    /// returns once the S3 API answers.
    pub fn restart(&self) {
        let d = self.dir.to_str().expect("utf-8 dir");
        let (s3, rpc) = (self.s3_port.to_string(), (self.s3_port + 1).to_string());
        run_script_env("garage.sh", &["start", d, &s3, &rpc, &self.bucket], false, &[("TESTBED_HOST", &self.host)])
            .unwrap_or_else(|e| panic!("restart garage: {e}"));
    }

    /// Stops the server (idempotent).
    pub fn stop(&self) {
        let _ = Command::new(script("garage.sh")).arg("stop").arg(&self.dir).stdin(Stdio::null()).output();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_code(out: &Output) -> u16 {
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl gave no HTTP status: {s:?} {}", String::from_utf8_lossy(&out.stderr)))
}

fn parse_env(path: &Path) -> HashMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

// -------------------------------------------------------------- shared ----

/// One single-member etcd shared by every test of this binary. Tests must
/// use their own key prefix. It dies with the test binary (watchdog).
pub fn shared_etcd() -> &'static Etcd {
    static E: OnceLock<Etcd> = OnceLock::new();
    E.get_or_init(|| {
        let dir = temp_dir("tusk-etcd-shared-").keep();
        Etcd::start_in(&dir, false, true)
    })
}

/// One 3-member etcd cluster shared by every test of this binary. Do not
/// kill its members: use `Etcd::cluster()` for that.
pub fn shared_etcd_cluster() -> &'static Etcd {
    static E: OnceLock<Etcd> = OnceLock::new();
    E.get_or_init(|| {
        let dir = temp_dir("tusk-etcd3-shared-").keep();
        Etcd::start_in(&dir, true, true)
    })
}

/// One garage shared by every test of this binary (bucket `tusk-test`).
/// Tests must use their own key prefix.
pub fn shared_garage() -> &'static Garage {
    static G: OnceLock<Garage> = OnceLock::new();
    G.get_or_init(|| {
        let dir = temp_dir("tusk-garage-shared-").keep();
        Garage::start_in(&dir, "tusk-test", true)
    })
}
