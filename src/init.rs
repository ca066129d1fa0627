//! PID-1 mode: a small synchronous init, entered from `main` before any
//! runtime or thread exists.
//!
//! It blocks every asynchronous signal, starts the same binary (same
//! arguments) as the supervisor in its own process group, and then loops on a
//! signalfd: it forwards TERM, INT, QUIT, HUP, USR1 and USR2 to the
//! supervisor only, swallows TSTP/TTIN/TTOU, and reaps every child with
//! `waitpid(-1)`: orphans reparented to PID 1 (backends of a dead postmaster,
//! processes left by `podman exec`) never pile up as zombies. When the
//! supervisor is gone it stops a postmaster left running (SIGINT, bounded
//! wait, then SIGQUIT) and exits with the supervisor's status, 128+signal when
//! it was killed.
//!
//! Only this module calls `waitpid(-1)`: the supervisor uses tokio's
//! per-child waiting, which a second reaper in the same process would break.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long init waits for an orphaned postmaster after SIGQUIT before giving up.
const IMMEDIATE_STOP_WAIT: Duration = Duration::from_secs(5);

/// Runs init mode; returns the exit status for the container.
pub fn run() -> i32 {
    let (format, level) = crate::logging::from_env_best_effort();
    let _log = crate::logging::init(format, &level, false);
    match Init::start() {
        Ok(mut init) => init.run(),
        Err(e) => {
            tracing::error!(error = %e, "init: cannot start the supervisor");
            1
        }
    }
}

struct Init {
    sfd: SignalFd,
    supervisor: Pid,
    /// Exit status of the supervisor once reaped.
    status: Option<i32>,
}

fn forwarded(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGHUP | Signal::SIGUSR1 | Signal::SIGUSR2
    )
}

impl Init {
    fn start() -> Result<Init, std::io::Error> {
        // Everything asynchronous is blocked and read from the signalfd; the
        // synchronous fault signals keep their default action.
        let mut mask = SigSet::all();
        for s in [
            Signal::SIGFPE,
            Signal::SIGILL,
            Signal::SIGSEGV,
            Signal::SIGBUS,
            Signal::SIGABRT,
            Signal::SIGTRAP,
            Signal::SIGSYS,
        ] {
            mask.remove(s);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let mut cmd = Command::new(&exe);
        cmd.args(std::env::args_os().skip(1));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // The child inherits our mask (std does not reset it): unblock
        // everything before exec, or the supervisor would never see a signal.
        // SAFETY: sigprocmask is async-signal-safe; nothing else runs here.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let supervisor = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        // Reaped below with waitpid(-1); std's Child does not wait on drop.
        drop(child);
        tracing::info!(supervisor = supervisor.as_raw(), "tusk init: PID 1, supervisor started");
        Ok(Init { sfd, supervisor, status: None })
    }

    fn run(&mut self) -> i32 {
        while self.status.is_none() {
            for sig in self.pending_signals() {
                if forwarded(sig) {
                    tracing::debug!(signal = %sig, "init: forwarding to the supervisor");
                    if let Err(e) = kill(self.supervisor, sig) {
                        tracing::warn!(signal = %sig, error = %e, "init: cannot forward");
                    }
                } else {
                    tracing::debug!(signal = %sig, "init: signal swallowed");
                }
            }
            self.reap();
            if self.status.is_none() {
                self.wait_readable(Duration::from_secs(1));
            }
        }
        let status = self.status.expect("loop ends once the supervisor is reaped");
        if status != 0 {
            tracing::warn!(status, "tusk init: the supervisor exited with a failure");
        }
        self.stop_orphaned_postmaster();
        status
    }

    /// Drains the signalfd.
    fn pending_signals(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.sfd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32)
                && sig != Signal::SIGCHLD
            {
                out.push(sig);
            }
        }
        out
    }

    fn wait_readable(&self, timeout: Duration) {
        let mut fds = [PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    /// Reaps every exited child; notes the supervisor's status. Standard
    /// signals coalesce, so this loops until nothing is left to reap.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if pid == self.supervisor {
                        tracing::info!(code, "tusk init: supervisor exited");
                        self.status = Some(code);
                    } else {
                        tracing::debug!(pid = pid.as_raw(), code, "init: reaped");
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    if pid == self.supervisor {
                        tracing::error!(signal = %sig, "tusk init: supervisor killed by a signal");
                        self.status = Some(128 + sig as i32);
                    } else {
                        tracing::debug!(pid = pid.as_raw(), signal = %sig, "init: reaped");
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "init: waitpid failed");
                    return;
                }
            }
        }
    }

    /// The supervisor is gone. A postmaster it left behind was reparented to
    /// us: stop it (fast, then immediate) rather than let the kernel SIGKILL it
    /// when PID 1 exits.
    fn stop_orphaned_postmaster(&mut self) {
        let env = crate::config::process_env().unwrap_or_default();
        let data = crate::config::pgdata_best_effort(&env);
        let Some(pid) = crate::postgres::pidfile::postmaster_pid(&data) else { return };
        if parent_of(pid) != Some(1) {
            return;
        }
        let budget = crate::config::shutdown_timeout_best_effort(&env);
        tracing::warn!(pid = pid.as_raw(), "tusk init: postmaster still running without a supervisor; fast shutdown");
        let _ = kill(pid, Signal::SIGINT);
        if self.wait_for_exit(pid, budget) {
            return;
        }
        tracing::error!(pid = pid.as_raw(), "tusk init: postmaster did not stop in time; immediate shutdown");
        let _ = kill(pid, Signal::SIGQUIT);
        if !self.wait_for_exit(pid, IMMEDIATE_STOP_WAIT) {
            tracing::error!(pid = pid.as_raw(), "tusk init: postmaster still running; exiting anyway");
        }
    }

    /// Waits until `pid` is gone, reaping meanwhile; a TERM/INT/QUIT in the
    /// meantime escalates to immediate shutdown.
    fn wait_for_exit(&mut self, pid: Pid, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap();
            if kill(pid, None) == Err(Errno::ESRCH) {
                tracing::info!(pid = pid.as_raw(), "tusk init: postmaster stopped");
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            for sig in self.pending_signals() {
                if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
                    let _ = kill(pid, Signal::SIGQUIT);
                }
            }
            self.wait_readable((deadline - now).min(Duration::from_millis(100)));
        }
    }
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: Pid) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}
