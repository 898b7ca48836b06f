//! The incremental contacts pull: `GET /contacts?updated_after=<watermark − lookback>`,
//! one page at a time, each page applied in one transaction, the watermark advanced with the
//! last page only.
//!
//! Why the watermark comes from Constant Contact's `updated_at` and not our clock: the two
//! clocks differ, and pages do not arrive sorted, so only the largest `updated_at` actually
//! seen is a safe place to resume. The look-back overlap catches ties at the boundary and
//! contacts committed late on the API's side; the stale guard and the diff make re-reading
//! them free of effects.

use std::time::Instant;

use anyhow::Context;
use uuid::Uuid;

use super::context::JobContext;
use super::lists::lists_filter;
use super::pager::Pager;
use super::slices;
use super::walk::{pull, pull_pages, updated_at_mark, PageSpec, PullStats, WatermarkOf};
use super::watermark;
use crate::config::AccountSettings;
use crate::core::job::Job;
use crate::ctct::{ContactsQuery, CONTACT_INCLUDE};

/// One pull for `account`.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<PullStats> {
    let stats = sweep(
        ctx,
        account,
        run_id,
        &Sweep {
            job: Job::Contacts,
            // `all` so that deleted contacts are seen too.
            status: "all",
            since: Since::UpdatedAfter,
            watermark_of: updated_at_mark,
        },
    )
    .await?;
    // `status=all` with the same filter covers the deletes sweep: every delete up to this
    // watermark is applied, so the deletes watermark (and its success) follows.
    watermark::advance(ctx, &account.id, Job::Deletes, stats.watermark_after).await?;
    Ok(stats)
}

/// Which server-side filter a sweep's watermark feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    UpdatedAfter,
    OptoutAfter,
}

/// A job that reads `GET /contacts?status=..` incrementally from its own watermark.
pub struct Sweep {
    pub job: Job,
    pub status: &'static str,
    pub since: Since,
    pub watermark_of: WatermarkOf,
}

/// Runs `spec` for `account`: reads the job's watermark, asks for what changed since
/// `watermark − lookback` (everything without a watermark or with `--full`), and pulls.
pub async fn sweep(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
    spec: &Sweep,
) -> anyhow::Result<PullStats> {
    let client = ctx.api.account(&account.id);
    let before = watermark::read(ctx, &account.id, spec.job).await?;
    let lookback = chrono::Duration::from_std(ctx.settings.sync.lookback).unwrap_or_default();
    let since = before.filter(|_| !ctx.full).map(|w| w - lookback);
    let query = ContactsQuery {
        status: Some(spec.status.into()),
        updated_after: since.filter(|_| spec.since == Since::UpdatedAfter),
        optout_after: since.filter(|_| spec.since == Since::OptoutAfter),
        include: Some(CONTACT_INCLUDE.into()),
        include_count: true,
        limit: ctx.settings.sync.page_size,
        ..Default::default()
    };
    let first = client
        .contacts_url(&query)
        .with_context(|| format!("building the {} URL", spec.job))?;
    let filter = lists_filter(account);
    let page_spec = PageSpec {
        account: &account.id,
        lists_filter: filter.as_ref(),
        run_id,
        watermark_of: spec.watermark_of,
    };
    if spec.since != Since::UpdatedAfter || ctx.settings.sync.slice_streams <= 1 {
        return pull(ctx, &client, spec.job, first, before, &page_spec).await;
    }
    // The first page's contacts_count decides whether the range is worth slicing.
    let asked = Instant::now();
    let page = client.contacts_page(first).await.with_context(|| {
        format!(
            "fetching page 1 of contacts for account {}",
            client.account()
        )
    })?;
    if slices::worth_slicing(ctx, &page) {
        let latency = asked.elapsed();
        return slices::pull(
            ctx, &client, spec.job, &query, page, latency, before, &page_spec,
        )
        .await;
    }
    let pages = Pager::starting_with(&client, page);
    pull_pages(ctx, &client, spec.job, pages, before, &page_spec).await
}
