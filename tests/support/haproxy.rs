//! Debian's HAProxy in front of a cluster, started by
//! `scripts/testbed/haproxy.sh` (watchdog: it dies with the test binary),
//! killed by pid on drop. Include after `testbed`:
//! `#[path = "support/haproxy.rs"] mod haproxy;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::testbed;

/// One backend server: HAProxy forwards to `pg_port` and checks `api_port`.
#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
}

/// A `listen` section: a name, the port it binds, what follows
/// `option httpchk` (`""`: HAProxy sends `OPTIONS /`; `/primary`: `OPTIONS
/// /primary`; `HEAD /replica`, ...) and whether it balances round robin.
#[derive(Clone, Debug)]
pub struct Listen {
    pub name: &'static str,
    pub port: u16,
    pub check: &'static str,
    pub roundrobin: bool,
}

pub struct HaProxy {
    pub dir: tempfile::TempDir,
    pub pid: u32,
    pub listens: Vec<Listen>,
}

/// The configuration a Patroni user copies, with `inter 1s fall 2 rise 1`.
pub fn config(admin_socket: &Path, listens: &[Listen], servers: &[Server]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 500\n    stats socket {} mode 600 level admin\n\n\
         defaults\n    mode tcp\n    retries 2\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 2s\n",
        admin_socket.display()
    );
    for l in listens {
        cfg.push_str(&format!("\nlisten {}\n    bind 127.0.0.1:{}\n", l.name, l.port));
        cfg.push_str(&format!("    option httpchk {}\n    http-check expect status 200\n", l.check).replace("httpchk \n", "httpchk\n"));
        if l.roundrobin {
            cfg.push_str("    balance roundrobin\n");
        }
        cfg.push_str("    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n");
        for s in servers {
            cfg.push_str(&format!("    server {} 127.0.0.1:{} maxconn 100 check port {}\n", s.name, s.pg_port, s.api_port));
        }
    }
    cfg
}

impl HaProxy {
    /// Starts HAProxy with `listens` (ports assigned here) in front of `servers`.
    pub fn start(name: &str, listens: &[(&'static str, &'static str, bool)], servers: &[Server]) -> HaProxy {
        let dir = testbed::temp_dir(&format!("tusk-haproxy-{name}-"));
        let mut last = String::new();
        for _ in 0..3 {
            let base = testbed::free_ports(listens.len() as u16);
            let listens: Vec<Listen> = listens
                .iter()
                .enumerate()
                .map(|(i, (name, check, rr))| Listen { name, port: base + i as u16, check, roundrobin: *rr })
                .collect();
            std::fs::write(dir.path().join("haproxy.cfg"), config(&dir.path().join("admin.sock"), &listens, servers))
                .expect("write haproxy.cfg");
            let out = Command::new(testbed::script("haproxy.sh"))
                .arg("start")
                .arg(dir.path())
                .env("TESTBED_WATCH_PID", std::process::id().to_string())
                .stdin(Stdio::null())
                .output()
                .expect("run haproxy.sh");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                let pid = text.trim().parse().unwrap_or_else(|_| panic!("haproxy.sh printed {text:?}"));
                return HaProxy { dir, pid, listens };
            }
            assert!(text.contains("bind"), "haproxy did not start:\n{text}");
            last = text;
        }
        panic!("haproxy: ports kept being taken: {last}");
    }

    /// The port of the `listen` section `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.listens.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no listen {name}")).port
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.cfg")
    }

    /// Runs one command on the admin socket; returns its output.
    pub fn admin(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.dir.path().join("admin.sock")).expect("connect to the haproxy stats socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the stats socket");
        out
    }

    /// The servers of `listen` that HAProxy sends traffic to (from `show
    /// stat`): `UP`, and also `UP 1/2` (failed one check, not yet down).
    pub fn up(&self, listen: &str) -> Vec<String> {
        let stat = self.admin("show stat");
        let mut up: Vec<String> = stat
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > 17 && f[0] == listen && f[1] != "FRONTEND" && f[1] != "BACKEND")
            .filter(|f| f[17].starts_with("UP"))
            .map(|f| f[1].to_owned())
            .collect();
        up.sort();
        up
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL);
        testbed::wait_gone(self.pid, Duration::from_secs(5));
    }
}
