//! Deletes (`--job deletes`): `GET /contacts?status=deleted&updated_after=<watermark −
//! lookback>`, paged and applied through the same merge as the contacts pull. A deleted
//! contact keeps its row with `deleted_at` and loses its memberships (as in Constant
//! Contact), logged as `deleted` and `list_removed`.
//!
//! Whether a delete moves the contact's `updated_at` is not documented; where it does not,
//! `updated_after` misses it and the weekly reconcile (a full `status=deleted` read) catches
//! it. The first run (no watermark) reads every deleted contact. A restored contact comes
//! back in the contacts pull (`status=all`) without `deleted_at`, which the merge logs as
//! `restored`.

use uuid::Uuid;

use super::contacts;
use super::context::JobContext;
use super::walk;
use crate::config::AccountSettings;
use crate::core::job::Job;

/// One run for `account`; returns the run's stats.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<serde_json::Value> {
    let stats = contacts::sweep(
        ctx,
        account,
        run_id,
        &contacts::Sweep {
            job: Job::Deletes,
            status: "deleted",
            since: contacts::Since::UpdatedAfter,
            watermark_of: walk::updated_at_mark,
        },
    )
    .await?;
    Ok(serde_json::to_value(stats)?)
}
