//! systemd notifications (`Type=notify`). Without `NOTIFY_SOCKET` (Docker, a terminal,
//! tests) every call is a no-op.
//!
//! `READY=1` is sent once migrations ran, the listener is bound and the scheduler started;
//! `WATCHDOG=1` every half `WatchdogSec`, but only while the scheduler's heartbeat is
//! fresh, so that a wedged scheduler gets the service restarted; `STOPPING=1` on shutdown.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::ops::heartbeat::Heartbeat;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `STATUS=…` only.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Whether the heartbeat is recent enough to vouch for the scheduler: its loop ticks every
/// second, so a few seconds of silence means it is stuck.
pub fn heartbeat_is_fresh(age: Duration, watchdog: Duration) -> bool {
    age <= (watchdog / 2).max(Duration::from_secs(5))
}

/// Pings the watchdog every half `WatchdogSec` while the heartbeat is fresh. Returns at
/// once when systemd asked for no watchdog.
pub async fn watchdog_loop(heartbeat: Arc<Heartbeat>, cancel: CancellationToken) {
    let Some(watchdog) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (watchdog / 2).max(Duration::from_millis(500));
    tracing::info!(
        every_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    loop {
        let age = heartbeat.age();
        if heartbeat_is_fresh(age, watchdog) {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!(
                heartbeat_age_ms = age.as_millis() as u64,
                "the scheduler has not ticked recently: withholding WATCHDOG=1"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_freshness_scales_with_the_watchdog() {
        let wd = Duration::from_secs(60);
        assert!(heartbeat_is_fresh(Duration::from_secs(2), wd));
        assert!(heartbeat_is_fresh(Duration::from_secs(30), wd));
        assert!(!heartbeat_is_fresh(Duration::from_secs(31), wd));
        // A short watchdog still tolerates a few seconds of scheduler jitter.
        assert!(heartbeat_is_fresh(
            Duration::from_secs(4),
            Duration::from_secs(2)
        ));
        assert!(!heartbeat_is_fresh(
            Duration::from_secs(6),
            Duration::from_secs(2)
        ));
    }
}
