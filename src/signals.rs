//! The signals the supervisor handles, as requests: shared by the
//! standalone supervisor, the HA loop and the stop sequence.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// TERM or INT.
    Stop,
    /// QUIT.
    StopNow,
    Reload,
    Status,
    Ignore,
}

/// The signals the supervisor handles. Registered first thing: the default
/// action of HUP, USR1 and USR2 would kill the process.
pub struct Signals {
    streams: Vec<(tokio::signal::unix::Signal, Signal)>,
}

/// The signals [`Signals`] handles.
fn handled() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2] {
        set.add(sig);
    }
    set
}

/// Holds the handled signals pending (called first thing in `main`, before
/// any thread exists) until [`Signals::register`] installs the handlers.
pub fn block_handled() {
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&handled()), None);
}

impl Signals {
    pub fn register() -> std::io::Result<Signals> {
        let kinds = [
            (SignalKind::terminate(), Signal::SIGTERM),
            (SignalKind::interrupt(), Signal::SIGINT),
            (SignalKind::quit(), Signal::SIGQUIT),
            (SignalKind::hangup(), Signal::SIGHUP),
            (SignalKind::user_defined1(), Signal::SIGUSR1),
            (SignalKind::user_defined2(), Signal::SIGUSR2),
        ];
        let mut streams = Vec::new();
        for (kind, sig) in kinds {
            streams.push((signal(kind)?, sig));
        }
        // Handlers exist: what `block_handled` held is delivered now, and
        // the children this thread spawns start with them unblocked.
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK, Some(&handled()), None)
            .map_err(std::io::Error::from)?;
        Ok(Signals { streams })
    }

    /// The next signal. Cancel-safe.
    pub async fn recv(&mut self) -> Request {
        let futs = self.streams.iter_mut().map(|(s, sig)| {
            let sig = *sig;
            Box::pin(async move {
                s.recv().await;
                sig
            })
        });
        let (sig, _, _) = futures_util::future::select_all(futs).await;
        tracing::info!(signal = %sig, "signal received");
        match sig {
            Signal::SIGTERM | Signal::SIGINT => Request::Stop,
            Signal::SIGQUIT => Request::StopNow,
            Signal::SIGHUP => Request::Reload,
            Signal::SIGUSR1 => Request::Status,
            _ => Request::Ignore,
        }
    }
}

/// Waits for TERM/INT/QUIT, handling nothing else.
pub async fn wait_for_stop(signals: &mut Signals) -> Request {
    loop {
        if let r @ (Request::Stop | Request::StopNow) = signals.recv().await {
            return r;
        }
    }
}
