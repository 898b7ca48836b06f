//! What every job needs, built once by `startup::job_context`.

use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::ctct::Api;

/// What every job needs.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    /// For the dedicated connection that holds a run's advisory lock.
    pub connect: PgConnectOptions,
    pub api: Arc<Api>,
    pub settings: Arc<Settings>,
    pub cancel: CancellationToken,
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Ignore watermarks: read everything again (`sync --full`).
    pub full: bool,
    /// Show a progress bar on a terminal (`sync`, `demo`); never in the daemon.
    pub progress: bool,
}

impl JobContext {
    /// Backoff of a failed push attempt: `poll_max · 2^attempts`, at most 64 × `poll_max`
    /// (imports, bulk activities and PUTs alike).
    pub fn retry_backoff(&self) -> (std::time::Duration, std::time::Duration) {
        let base = self.settings.sync.poll_max;
        (base, base.saturating_mul(64))
    }

    /// A failed attempt for outbound rows in state `from`, with this configuration's
    /// backoff and `max_push_attempts` (`store::outbound::failed_attempt`).
    /// Returns (back to pending, failed for good).
    pub async fn failed_attempt(
        &self,
        conn: &mut sqlx::PgConnection,
        from: crate::core::states::OutboundState,
        ids: &[i64],
        reason: &str,
    ) -> Result<(u64, u64), sqlx::Error> {
        let (base, cap) = self.retry_backoff();
        crate::store::outbound::failed_attempt(
            conn,
            from,
            ids,
            reason,
            self.settings.sync.max_push_attempts as i32,
            base,
            cap,
        )
        .await
    }
}
