//! The weekly membership reconcile (`--job reconcile`). Not built yet.

use uuid::Uuid;

use super::JobContext;
use crate::config::AccountSettings;

/// One run for `account`; returns the run's stats.
pub async fn run_once(
    _ctx: &JobContext,
    account: &AccountSettings,
    _run_id: Uuid,
) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("this job is not available in this build yet (account {})", account.id)
}
