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
use super::export::{self, Outcome};
use super::lists::lists_filter;
use super::pager::Pager;
use super::slices;
use super::walk::{pull, pull_pages, updated_at_mark, PageSpec, PullStats, WatermarkOf};
use super::watermark;
use crate::config::AccountSettings;
use crate::core::backfill::{ExportStats, Mode};
use crate::core::job::Job;
use crate::ctct::{ContactsQuery, CONTACT_INCLUDE};
use crate::store;

/// One pull for `account`.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<PullStats> {
    let mut export = None;
    let mut by_export = None;
    if wants_export(ctx, account).await? {
        let mut e = ExportStats::default();
        if let Outcome::Applied(s) = export::first_sync(ctx, account, run_id, &mut e).await? {
            by_export = Some(s);
        }
        export = Some(e);
    }
    let mut stats = sweep(
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
    if let Some(applied) = &by_export {
        // The export's pages count with the catch-up pull's; the run started with no
        // watermark at all.
        stats.absorb(applied);
        stats.watermark_before = None;
    }
    if let Some(e) = export {
        stats.api_requests += e.api_requests;
        stats.export = Some(e);
    }
    // `status=all` with the same filter covers the deletes sweep: every delete up to this
    // watermark is applied, so the deletes watermark (and its success) follows.
    watermark::advance(ctx, &account.id, Job::Deletes, stats.watermark_after).await?;
    Ok(stats)
}

/// Whether this run is a first sync the export path may take: `sync.backfill` is not
/// `paged`, not a dry run or `--full`, no watermark yet and no contact stored (an export
/// carries fewer columns than a page, so it never overwrites stored contacts).
async fn wants_export(ctx: &JobContext, account: &AccountSettings) -> anyhow::Result<bool> {
    if ctx.settings.sync.backfill == Mode::Paged || ctx.dry_run || ctx.full {
        return Ok(false);
    }
    if watermark::read(ctx, &account.id, Job::Contacts)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let any = store::contacts::any(&mut conn, &account.id)
        .await
        .with_context(|| format!("looking for stored contacts of account {}", account.id))?;
    Ok(!any)
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
    let page_spec = PageSpec::new(&account.id, filter.as_ref(), run_id, spec.watermark_of);
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
