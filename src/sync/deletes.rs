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

use anyhow::Context;
use uuid::Uuid;

use super::contacts;
use super::JobContext;
use crate::config::AccountSettings;
use crate::ctct::{ContactsQuery, CONTACT_INCLUDE};
use crate::store;

pub const JOB: &str = "deletes";

/// One run for `account`; returns the run's stats.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<serde_json::Value> {
    let client = ctx.api.account(&account.id);
    let before = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::sync_state::watermark(&mut conn, &account.id, JOB)
            .await
            .context("reading the deletes watermark")?
    };
    let lookback = chrono::Duration::from_std(ctx.settings.sync.lookback).unwrap_or_default();
    let query = ContactsQuery {
        status: Some("deleted".into()),
        updated_after: before.filter(|_| !ctx.full).map(|w| w - lookback),
        include: Some(CONTACT_INCLUDE.into()),
        include_count: true,
        limit: ctx.settings.sync.page_size,
        ..Default::default()
    };
    let first = client
        .contacts_url(&query)
        .context("building the deletes URL")?;
    let filter = super::lists::lists_filter(account);
    let stats = contacts::pull(
        ctx,
        &client,
        JOB,
        first,
        before,
        filter.as_ref(),
        run_id,
        contacts::updated_at_mark,
    )
    .await?;
    Ok(serde_json::to_value(stats)?)
}
