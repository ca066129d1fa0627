//! podman for the container tests (compose, image variants): the test
//! configuration from scripts/podman-setup.sh, the repository's scripts,
//! bounded commands, and containers removed however a test ends.
//! `#[path = "support/podman.rs"] mod podman;`
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// Runs `cmd` with a deadline: killed (and its output kept) when it overruns.
pub fn bounded(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let t = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{what} still running after {limit:?}: {}{}", text(&out.stdout), text(&out.stderr));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a repository script (stderr streamed) within `limit`; returns stdout.
pub fn script(name: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    let path = repo_root().join("scripts").join(name);
    let mut cmd = Command::new("bash");
    cmd.arg(&path).args(args).envs(env.iter().copied()).current_dir(repo_root());
    let out = bounded(&mut cmd, limit);
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{name} failed ({}): {stdout}", out.status);
    stdout
}

/// podman with the test configuration from podman-setup.sh; rootful, or
/// rootless as `user` (scripts/rootless-setup.sh).
#[derive(Clone)]
pub struct Podman {
    pub conf: String,
    pub rootless: Option<Rootless>,
}

#[derive(Clone)]
pub struct Rootless {
    pub user: String,
    pub home: String,
    pub xdg_runtime_dir: String,
}

impl Podman {
    pub fn setup() -> Podman {
        let out = script("podman-setup.sh", &[], &[], Duration::from_secs(600));
        let conf = out
            .lines()
            .find_map(|l| l.strip_prefix("export CONTAINERS_CONF="))
            .unwrap_or_else(|| panic!("no CONTAINERS_CONF in podman-setup.sh output: {out}"))
            .to_string();
        assert!(Path::new(&conf).is_file(), "{conf} missing");
        Podman { conf, rootless: None }
    }

    /// The same configuration, rootless as the user scripts/rootless-setup.sh
    /// prepares (made when missing).
    pub fn rootless(&self) -> Podman {
        let out = script("rootless-setup.sh", &[], &[], Duration::from_secs(300));
        let line = out.lines().find_map(|l| l.strip_prefix("export ")).expect("rootless-setup.sh output");
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .to_owned()
        };
        let user = get("ROOTLESS_USER");
        let home = text(
            &Command::new("sh").arg("-c").arg(format!("getent passwd {user} | cut -d: -f6")).output().unwrap().stdout,
        );
        Podman {
            conf: self.conf.clone(),
            rootless: Some(Rootless { user, home, xdg_runtime_dir: get("XDG_RUNTIME_DIR") }),
        }
    }

    /// A command run as this podman's user (root, or the rootless user with
    /// a clean environment).
    pub fn command(&self, program: &str) -> Command {
        match &self.rootless {
            None => {
                let mut c = Command::new(program);
                c.env("CONTAINERS_CONF", &self.conf);
                c
            }
            Some(r) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &r.user, "--", "env", "-i"])
                    .arg(format!("HOME={}", r.home))
                    .arg(format!("USER={}", r.user))
                    .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
                    .arg(format!("XDG_RUNTIME_DIR={}", r.xdg_runtime_dir))
                    .arg(format!("CONTAINERS_CONF={}", self.conf))
                    .arg(program)
                    .current_dir(&r.home);
                c
            }
        }
    }

    /// podman ARGS, bounded by 3 minutes.
    pub fn output(&self, args: &[&str]) -> Output {
        bounded(self.command("podman").args(args), Duration::from_secs(180))
    }

    /// Runs podman and insists on success; returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {} {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Builds (or reuses: same binary and inputs) the tusk image as `tag`
    /// with scripts/build-image.sh; `env` adds SUITE, PGVERSION, ...
    /// Returns the image size in MB.
    pub fn build_tusk(&self, tag: &str, env: &[(&str, &str)]) -> u64 {
        let mut all = vec![("CONTAINERS_CONF", self.conf.as_str())];
        all.extend_from_slice(env);
        let t = Instant::now();
        let out = script("build-image.sh", &[tag], &all, Duration::from_secs(900));
        eprintln!("build-image.sh {tag} {env:?} took {:?}", t.elapsed());
        assert!(out.lines().any(|l| l.starts_with("image size: ")), "build-image.sh reported no size: {out}");
        let size = self.ok(&["image", "inspect", "--format", "{{.Size}}", tag]);
        size.parse::<u64>().expect("image size") / 1_000_000
    }

    /// The image's ID, when `tag` names one.
    pub fn image_id(&self, tag: &str) -> Option<String> {
        let out = self.output(&["image", "inspect", "--format", "{{.Id}}", tag]);
        out.status.success().then(|| text(&out.stdout))
    }

    pub fn exit_code(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.ExitCode}}", name])
    }

    pub fn state(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.Status}}", name])
    }

    pub fn logs(&self, name: &str) -> String {
        let out = self.output(&["logs", "--tail", "150", name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

/// A container removed (with its anonymous volumes) however the test ends;
/// its log printed first when the test failed.
pub struct Container {
    pub podman: Podman,
    pub name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- podman logs {} ----\n{}", self.name, self.podman.logs(&self.name));
        }
        let _ = self.podman.output(&["rm", "-f", "-v", "-t", "0", &self.name]);
    }
}

impl Container {
    /// psql inside the container over the unix socket, as postgres.
    pub fn psql(&self, port: u16, sql: &str) -> Output {
        self.podman.output(&[
            "exec",
            &self.name,
            "psql",
            "-h",
            "/run/postgresql",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
    }

    /// Polls `select 1` until it answers (bounded by `limit`); returns the wait.
    pub fn wait_ready(&self, port: u16, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let out = self.psql(port, "select 1");
            if out.status.success() && text(&out.stdout) == "1" {
                return start.elapsed();
            }
            let state = self.podman.state(&self.name);
            assert!(state == "running", "container is {state}, not running, while waiting for postgres");
            assert!(start.elapsed() < limit, "postgres not ready after {limit:?}: {}", text(&out.stderr));
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `podman stop -t 10`: returns how long it took; insists on exit code 0.
    pub fn stop_clean(&self) -> Duration {
        let t = Instant::now();
        self.podman.ok(&["stop", "-t", "10", &self.name]);
        let took = t.elapsed();
        assert_eq!(self.podman.exit_code(&self.name), "0", "exit code of {} after podman stop", self.name);
        assert!(took < Duration::from_secs(10), "stop took {took:?}");
        took
    }
}
