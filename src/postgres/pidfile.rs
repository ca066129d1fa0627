//! `postmaster.pid`: the one reader of the file postgres keeps in `PGDATA`
//! (line 1: the postmaster's pid; line 8: its status, `ready` or `standby`
//! once it accepts connections).

use std::path::Path;

use nix::unistd::Pid;

pub const FILE: &str = "postmaster.pid";

/// What `postmaster.pid` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    pub pid: Option<Pid>,
    /// Line 8 (`starting`, `ready`, `standby`, `stopping`); `None` before
    /// postgres wrote it.
    pub status: Option<String>,
}

impl PidFile {
    /// Parses the file's text.
    pub fn parse(text: &str) -> PidFile {
        let mut lines = text.lines();
        let pid = lines.next().and_then(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0).map(Pid::from_raw);
        let status = lines.nth(6).map(|l| l.trim().to_owned()).filter(|s| !s.is_empty());
        PidFile { pid, status }
    }

    /// The postmaster accepts connections (`ready`, or `standby` for a hot standby).
    pub fn accepts_connections(&self) -> bool {
        matches!(self.status.as_deref(), Some("ready") | Some("standby"))
    }
}

/// Reads `data/postmaster.pid`; `None` when it does not exist or cannot be read.
pub fn read(data: &Path) -> Option<PidFile> {
    std::fs::read_to_string(data.join(FILE)).ok().map(|t| PidFile::parse(&t))
}

/// The pid in the first line of `postmaster.pid`.
pub fn postmaster_pid(data: &Path) -> Option<Pid> {
    read(data)?.pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pid_and_status() {
        let text = "4242\n/data\n1700000000\n5432\n/run/postgresql\n*\n  5432001    360448\nready   \n";
        let f = PidFile::parse(text);
        assert_eq!(f.pid, Some(Pid::from_raw(4242)));
        assert_eq!(f.status.as_deref(), Some("ready"));
        assert!(f.accepts_connections());
        let starting = PidFile::parse("4242\n/data\n");
        assert_eq!(starting.status, None);
        assert!(!starting.accepts_connections());
        assert_eq!(PidFile::parse("-1\n").pid, None);
        assert_eq!(PidFile::parse("").pid, None);
    }
}
