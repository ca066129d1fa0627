//! Facts about the machine the configuration depends on: host name, address,
//! memory limit. Detected once in production; tests pass their own.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;

/// What the configuration needs to know about the host.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    /// The address other members reach this one at, when
    /// `PG_CONNECT_ADDRESS` / `RESTAPI_CONNECT_ADDRESS` are not given.
    pub address: IpAddr,
    /// The memory PostgreSQL may use: the cgroup limit capped by physical RAM.
    pub memory_bytes: u64,
}

impl HostFacts {
    /// Reads the real host. Never fails: unknown values fall back to safe
    /// defaults (loopback address, 1 GiB of memory).
    pub fn detect() -> HostFacts {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let address = resolve_address(&hostname);
        let physical = physical_memory().unwrap_or(1 << 30);
        let memory_bytes = cgroup_memory_limit(Path::new("/")).map_or(physical, |limit| limit.min(physical));
        HostFacts { hostname, address, memory_bytes }
    }
}

/// First non-loopback address the host name resolves to (as Spilo does),
/// else the first one, else 127.0.0.1.
fn resolve_address(hostname: &str) -> IpAddr {
    let addrs: Vec<IpAddr> = (hostname, 0).to_socket_addrs().map(|it| it.map(|a| a.ip()).collect()).unwrap_or_default();
    addrs.iter().find(|a| !a.is_loopback()).or(addrs.first()).copied().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn physical_memory() -> Option<u64> {
    nix::sys::sysinfo::sysinfo().ok().map(|i| i.ram_total())
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), `None` when unlimited or unknown. `root` is the
/// file system root, so that tests can point it at a fake tree.
pub fn cgroup_memory_limit(root: &Path) -> Option<u64> {
    let self_cgroup = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    let mut candidates = Vec::new();
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2 unified hierarchy
            candidates.push(root.join("sys/fs/cgroup").join(path).join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(root.join("sys/fs/cgroup/memory").join(path).join("memory.limit_in_bytes"));
        }
    }
    // Inside a container with a private cgroup namespace the own cgroup is
    // the root of the mount.
    candidates.push(root.join("sys/fs/cgroup/memory.max"));
    candidates.push(root.join("sys/fs/cgroup/memory/memory.limit_in_bytes"));
    candidates.iter().filter_map(|p| std::fs::read_to_string(p).ok()).find_map(|s| parse_limit(&s))
}

fn parse_limit(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        return None;
    }
    // cgroup v1 reports "unlimited" as a number near i64::MAX.
    s.parse::<u64>().ok().filter(|&v| v < (1u64 << 62))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    #[test]
    fn cgroup_v2_own_group() {
        let t = tree(&[
            ("proc/self/cgroup", "0::/machine/ctr\n"),
            ("sys/fs/cgroup/machine/ctr/memory.max", "2147483648\n"),
        ]);
        assert_eq!(cgroup_memory_limit(t.path()), Some(2 << 30));
    }

    #[test]
    fn cgroup_v2_unlimited_and_namespaced_root() {
        let t = tree(&[("proc/self/cgroup", "0::/\n"), ("sys/fs/cgroup/memory.max", "max\n")]);
        assert_eq!(cgroup_memory_limit(t.path()), None);
        let t = tree(&[("proc/self/cgroup", "0::/gone\n"), ("sys/fs/cgroup/memory.max", "1073741824\n")]);
        assert_eq!(cgroup_memory_limit(t.path()), Some(1 << 30));
    }

    #[test]
    fn cgroup_v1() {
        let t = tree(&[
            ("proc/self/cgroup", "12:cpu,cpuacct:/x\n7:memory:/docker/abc\n"),
            ("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "536870912"),
        ]);
        assert_eq!(cgroup_memory_limit(t.path()), Some(512 << 20));
        let t = tree(&[
            ("proc/self/cgroup", "7:memory:/\n"),
            ("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712"),
        ]);
        assert_eq!(cgroup_memory_limit(t.path()), None);
    }
}
