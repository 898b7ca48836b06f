//! Signals (signal-hook): SIGTERM/SIGINT cancel the caller's token (the first one; a second
//! one exits the process at once), SIGHUP asks for a configuration reload.
//!
//! The token is owned by the caller (`daemon::run`), never global, so that tests can run
//! an application in-process and stop it with their own token.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT: stop gracefully.
    Stop(&'static str),
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// The process's signal handlers. Install them first thing: until then SIGTERM kills the
/// process, and as PID 1 in a container it would be ignored.
pub struct Signals {
    stream: signal_hook_tokio::Signals,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let armed = Arc::new(AtomicBool::new(false));
        for (sig, code) in [(SIGTERM, 143), (SIGINT, 130)] {
            // Order matters: the conditional exit is checked before the same signal arms
            // it, so the first signal only arms and the second exits at once.
            flag::register_conditional_shutdown(sig, code, Arc::clone(&armed))?;
            flag::register(sig, Arc::clone(&armed))?;
        }
        let stream = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        Ok(Signals { stream })
    }

    /// The next request; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Request> {
        loop {
            match self.stream.next().await? {
                SIGTERM => return Some(Request::Stop("SIGTERM")),
                SIGINT => return Some(Request::Stop("SIGINT")),
                SIGHUP => return Some(Request::Reload),
                other => warn!(signal = other, "unexpected signal ignored"),
            }
        }
    }
}

/// Serves signals until the stream ends: a stop request cancels `cancel`, a reload request
/// calls `reload` (which must not block).
pub async fn signal_loop(mut signals: Signals, cancel: CancellationToken, reload: impl Fn()) {
    while let Some(request) = signals.next().await {
        match request {
            Request::Stop(name) => {
                info!(
                    signal = name,
                    "stopping after the pages in hand commit (signal again to exit now)"
                );
                crate::ops::notify::stopping("stopping: draining running jobs");
                cancel.cancel();
            }
            Request::Reload => reload(),
        }
    }
}
