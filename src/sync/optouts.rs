//! The opt-out sweep (`--job unsubscribes`): `GET /contacts?status=unsubscribed&optout_after=
//! <watermark − lookback>`, paged and applied through the same merge as the contacts pull.
//!
//! Why a sweep of its own: an unsubscribe moves the email address's clock
//! (`email_address.updated_at`, `opt_out_date`), not always the contact's `updated_at`, so
//! the contacts pull's `updated_after` can miss it. The sweep's watermark therefore follows
//! what `optout_after` filters on: the largest opt-out date seen.
//!
//! Each newly unsubscribed contact gets its permission and opt-out fields, an
//! `unsubscribed` changes row, and every `pending` outbound row that would add it to a list
//! becomes `skipped` in the same transaction (see `walk::apply_page`).
//!
//! Re-subscriptions (the contact's own action in Constant Contact) cannot be found here:
//! `status=unsubscribed` no longer returns them and no filter selects "opted in after". They
//! are applied as `resubscribed` by the contacts pull when the contact's `updated_at` moved,
//! and otherwise by the weekly reconcile, which compares the whole unsubscribed set with
//! the local one and re-reads the contacts that left it.

use uuid::Uuid;

use super::contacts;
use super::context::JobContext;
use crate::config::AccountSettings;
use crate::core::job::Job;
use crate::core::optouts::optout_mark;

/// One sweep for `account`; returns the run's stats.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<serde_json::Value> {
    // No watermark yet (or `--full`): every unsubscribed contact.
    let stats = contacts::sweep(
        ctx,
        account,
        run_id,
        &contacts::Sweep {
            job: Job::Unsubscribes,
            status: "unsubscribed",
            since: contacts::Since::OptoutAfter,
            watermark_of: optout_mark,
        },
    )
    .await?;
    Ok(serde_json::to_value(stats)?)
}
