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

/// The configuration a Patroni user copies, with `inter 1s fall 2 rise 1`;
/// `server_opts` go on every `server` line (e.g. `check-ssl verify required
/// ca-file CA crt PEM` for an HTTPS API).
pub fn config(admin_socket: &Path, listens: &[Listen], servers: &[Server], server_opts: &str) -> String {
    let mut cfg = format!(
        "global\n    maxconn 500\n    stats socket {} mode 600 level admin\n\n\
         defaults\n    mode tcp\n    retries 2\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 2s\n",
        admin_socket.display()
    );
    for l in listens {
        cfg.push_str(&format!("\nlisten {}\n    bind 127.0.0.1:{}\n", l.name, l.port));
        cfg.push_str(
            &format!("    option httpchk {}\n    http-check expect status 200\n", l.check)
                .replace("httpchk \n", "httpchk\n"),
        );
        if l.roundrobin {
            cfg.push_str("    balance roundrobin\n");
        }
        cfg.push_str("    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n");
        for s in servers {
            cfg.push_str(&format!(
                "    server {} 127.0.0.1:{} maxconn 100 check port {} {server_opts}\n",
                s.name, s.pg_port, s.api_port
            ));
        }
    }
    cfg
}

impl HaProxy {
    /// Starts HAProxy with `listens` (ports assigned here) in front of `servers`.
    pub fn start(name: &str, listens: &[(&'static str, &'static str, bool)], servers: &[Server]) -> HaProxy {
        Self::start_with(name, listens, servers, "")
    }

    /// `start` with extra options on every `server` line.
    pub fn start_with(
        name: &str,
        listens: &[(&'static str, &'static str, bool)],
        servers: &[Server],
        server_opts: &str,
    ) -> HaProxy {
        let dir = testbed::temp_dir(&format!("tusk-haproxy-{name}-"));
        let mut last = String::new();
        for _ in 0..3 {
            let base = testbed::free_ports(listens.len() as u16);
            let listens: Vec<Listen> = listens
                .iter()
                .enumerate()
                .map(|(i, (name, check, rr))| Listen { name, port: base + i as u16, check, roundrobin: *rr })
                .collect();
            std::fs::write(
                dir.path().join("haproxy.cfg"),
                config(&dir.path().join("admin.sock"), &listens, servers, server_opts),
            )
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
        let mut s =
            UnixStream::connect(self.dir.path().join("admin.sock")).expect("connect to the haproxy stats socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the stats socket");
        out
    }

    /// The servers of `listen` that HAProxy sends traffic to (from `show
    /// stat`): `UP`, and also `UP 1/2` (failed one check, not yet down).
    /// HAProxy starts every server UP before its first check: see `passing`.
    pub fn up(&self, listen: &str) -> Vec<String> {
        self.servers(listen, |status, _| status.starts_with("UP"))
    }

    /// The servers of `listen` that are UP and passed their last check.
    pub fn passing(&self, listen: &str) -> Vec<String> {
        self.servers(listen, |status, check| status == "UP" && check == "L7OK")
    }

    fn servers(&self, listen: &str, keep: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let stat = self.admin("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let col =
            |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} in {header:?}"));
        let (st, chk) = (col("status"), col("check_status"));
        let mut out: Vec<String> = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st.max(chk) && f[0] == listen && f[1] != "FRONTEND" && f[1] != "BACKEND")
            .filter(|f| keep(f[st], f[chk]))
            .map(|f| f[1].to_owned())
            .collect();
        out.sort();
        out
    }

    /// proxy, server, status, last check (e.g. `L7STS/503`, `L4CON`) and
    /// check duration per server, one line each (for failure messages).
    pub fn status_table(&self) -> String {
        let stat = self.admin("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (st, chk, dur, desc) = (col("status"), col("check_status"), col("check_duration"), col("check_desc"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > 2 && f[1] != "FRONTEND" && f[1] != "BACKEND")
            .map(|f| {
                let at = |c: Option<usize>| c.and_then(|i| f.get(i)).copied().unwrap_or("");
                format!("{} {} {} {} {}ms {}", f[0], f[1], at(st), at(chk), at(dur), at(desc))
            })
            .collect::<Vec<_>>()
            .join("\n")
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
