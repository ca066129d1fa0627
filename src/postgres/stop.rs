//! Stopping the postmaster: the one escalation every mode uses (standalone
//! stop, HA shutdown, hand-over, restart, reinitialize, fencing).
//!
//! Within `budget`: a bounded CHECKPOINT (graceful only), fast shutdown
//! (SIGINT), immediate shutdown (SIGQUIT) for the last quarter (at least
//! 1.5 s), then a kill of the group at the deadline. With signals given, a
//! second TERM/INT or a QUIT escalates to immediate at once.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{Instant, sleep_until};
use tokio_postgres::Client;

use super::process::{self, Postmaster};
use super::sql;
use crate::exit::{EXIT_FAILURE, EXIT_OK};
use crate::signals::{Request, Signals};

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// CHECKPOINT (bounded to half the budget), then fast shutdown: the
    /// shutdown checkpoint has little left to write, and a leader's
    /// replicas receive it before its walsenders exit.
    Graceful,
    /// Fast shutdown without the CHECKPOINT first.
    Fast,
    /// Immediate shutdown (SIGQUIT): QUIT, fencing.
    Immediate,
}

impl Mode {
    /// The mode a stop request asks for.
    pub fn for_request(req: Request) -> Mode {
        if req == Request::StopNow { Mode::Immediate } else { Mode::Graceful }
    }
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Fast shutdown completed: the shutdown checkpoint was written.
    Clean,
    /// Immediate shutdown, as asked (QUIT, second TERM, fencing).
    Immediate,
    /// The deadline forced immediate shutdown or a kill.
    Forced,
}

/// Stops `pm` within `budget`; returns the exit status for the process (0
/// unless the deadline had to force it). `client` (our own session) is
/// closed before the shutdown signal, so postgres does not report it
/// terminated. With `signals`, a stop request meanwhile escalates.
pub async fn stop(
    pm: &mut Postmaster,
    client: Option<Client>,
    mode: Mode,
    budget: Duration,
    mut signals: Option<&mut Signals>,
) -> i32 {
    let t0 = Instant::now();
    let deadline = t0 + budget;
    // Keep the last 25% (at least 1.5 s) for immediate shutdown.
    let fast_deadline = deadline - (budget / 4).max(Duration::from_millis(1500)).min(budget);
    let mut immediate = mode == Mode::Immediate;

    if mode == Mode::Graceful
        && let Some(client) = &client
    {
        let checkpoint_deadline = t0 + budget / 2;
        tokio::select! {
            r = sql::checkpoint(client) => match r {
                Ok(()) => tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "checkpoint before shutdown done"),
                Err(e) => tracing::warn!(error = %e, "checkpoint before shutdown failed"),
            },
            _ = sleep_until(checkpoint_deadline) => tracing::warn!("checkpoint before shutdown took too long; shutting down anyway"),
            _ = stop_request(&mut signals) => immediate = true,
        }
    }
    drop(client);
    tokio::task::yield_now().await;
    let mut outcome = if immediate { Stopped::Immediate } else { Stopped::Clean };
    pm.signal(if immediate { Signal::SIGQUIT } else { Signal::SIGINT });
    tracing::info!(mode = if immediate { "immediate" } else { "fast" }, "stopping postgres");
    let status = loop {
        let phase_deadline = if immediate { deadline } else { fast_deadline };
        tokio::select! {
            status = pm.wait() => break Some(status),
            _ = sleep_until(phase_deadline) => {
                if immediate {
                    break None;
                }
                tracing::warn!("fast shutdown did not finish in time; immediate shutdown");
                immediate = true;
                outcome = Stopped::Forced;
                pm.signal(Signal::SIGQUIT);
            }
            _ = stop_request(&mut signals), if !immediate => {
                tracing::info!("second stop request: immediate shutdown");
                immediate = true;
                outcome = Stopped::Immediate;
                pm.signal(Signal::SIGQUIT);
            }
        }
    };
    let status = match status {
        Some(s) => s,
        None => {
            tracing::error!("postgres did not stop before TUSK_SHUTDOWN_TIMEOUT; killing it");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pm.pid().as_raw()), Signal::SIGKILL);
            outcome = Stopped::Forced;
            pm.wait().await
        }
    };
    process::reap_leftover_group(pm.pid()).await;
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    let (code, what) = stop_result(outcome, status);
    if code == EXIT_OK {
        tracing::info!(elapsed_ms, %status, "{what}");
    } else {
        tracing::error!(elapsed_ms, %status, "{what}");
    }
    code
}

/// The next TERM/INT/QUIT; never, without signals. Cancel-safe.
async fn stop_request(signals: &mut Option<&mut Signals>) -> Request {
    match signals {
        Some(s) => crate::signals::wait_for_stop(s).await,
        None => std::future::pending().await,
    }
}

/// The exit status of a stop and what to log about it.
pub fn stop_result(outcome: Stopped, status: ExitStatus) -> (i32, &'static str) {
    use std::os::unix::process::ExitStatusExt;
    match outcome {
        Stopped::Clean if status.success() => (EXIT_OK, "postgres stopped cleanly"),
        // The postmaster installs its handlers before it touches the data
        // directory: killed by the fast-shutdown signal itself, it was
        // stopped before it had started, with nothing to flush.
        Stopped::Clean if status.signal() == Some(Signal::SIGINT as i32) => {
            (EXIT_OK, "postgres stopped before it had started")
        }
        Stopped::Immediate => (EXIT_OK, "postgres stopped (immediate)"),
        Stopped::Clean | Stopped::Forced => (EXIT_FAILURE, "postgres did not stop cleanly"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_results() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |c: i32| ExitStatus::from_raw(c << 8);
        let killed = |s: Signal| ExitStatus::from_raw(s as i32);
        let table = [
            (Stopped::Clean, exited(0), 0),
            // A postmaster asked to stop before its handlers were installed.
            (Stopped::Clean, killed(Signal::SIGINT), 0),
            (Stopped::Clean, exited(1), EXIT_FAILURE),
            (Stopped::Clean, killed(Signal::SIGKILL), EXIT_FAILURE),
            (Stopped::Clean, killed(Signal::SIGSEGV), EXIT_FAILURE),
            (Stopped::Immediate, exited(1), 0),
            (Stopped::Immediate, killed(Signal::SIGQUIT), 0),
            (Stopped::Forced, exited(0), EXIT_FAILURE),
            (Stopped::Forced, killed(Signal::SIGKILL), EXIT_FAILURE),
        ];
        for (outcome, status, want) in table {
            assert_eq!(stop_result(outcome, status).0, want, "{outcome:?} {status}");
        }
    }

    #[test]
    fn modes_for_requests() {
        assert_eq!(Mode::for_request(Request::Stop), Mode::Graceful);
        assert_eq!(Mode::for_request(Request::StopNow), Mode::Immediate);
    }
}
