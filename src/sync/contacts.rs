//! The incremental contacts pull: `GET /contacts?updated_after=<watermark − lookback>`,
//! one page at a time, each page applied in one transaction, the watermark advanced with the
//! last page only.
//!
//! Why the watermark comes from Constant Contact's `updated_at` and not our clock: the two
//! clocks differ, and pages do not arrive sorted, so only the largest `updated_at` actually
//! seen is a safe place to resume. The look-back overlap catches ties at the boundary and
//! contacts committed late on the API's side; the stale guard and the diff make re-reading
//! them free of effects.

use std::collections::HashSet;
use std::io::IsTerminal;

use futures_util::stream::{FuturesOrdered, StreamExt};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_util::task::AbortOnDropHandle;
use tracing::info;
use uuid::Uuid;

use super::merge::{self, PageStats};
use super::JobContext;
use crate::config::AccountSettings;
use crate::ctct::dto::{ContactsPage, PagingLinks};
use crate::ctct::{AccountClient, ContactsQuery, CONTACT_INCLUDE};
use crate::store;

pub const JOB: &str = "contacts";

/// Stats of one pull run (stored in `sync_runs.stats`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PullStats {
    pub pages: u64,
    #[serde(flatten)]
    pub contacts: PageStats,
    pub changes_written: u64,
    /// Pending outbound rows marked `skipped` because their contact unsubscribed.
    pub outbound_skipped: u64,
    pub api_requests: u64,
    pub contacts_count: Option<u64>,
    /// Time spent applying pages to PostgreSQL, summed over pages (two apply at once).
    pub apply_ms: u64,
    pub watermark_before: Option<DateTime<Utc>>,
    pub watermark_after: Option<DateTime<Utc>>,
    pub dry_run: bool,
}

/// One pull for `account`.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<PullStats> {
    sweep(
        ctx,
        account,
        run_id,
        &Sweep {
            job: JOB,
            // `all` so that deleted contacts are seen too.
            status: "all",
            since: Since::UpdatedAfter,
            watermark_of: updated_at_mark,
        },
    )
    .await
}

/// Which timestamp of an incoming contact a sweep's watermark follows: the one its
/// server-side filter compares (`updated_after` → `updated_at`, `optout_after` → the
/// opt-out date).
fn progress_bar(job: &str, account: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} contacts ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{account} {job}"));
    bar
}

/// Which server-side filter a sweep's watermark feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    UpdatedAfter,
    OptoutAfter,
}

/// A job that reads `GET /contacts?status=..` incrementally from its own watermark.
pub struct Sweep {
    pub job: &'static str,
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
    let before = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::sync_state::watermark(&mut conn, &account.id, spec.job)
            .await
            .with_context(|| format!("reading the {} watermark", spec.job))?
    };
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
    let filter = super::lists::lists_filter(account);
    pull(
        ctx,
        &client,
        spec.job,
        first,
        before,
        filter.as_ref(),
        run_id,
        spec.watermark_of,
    )
    .await
}

/// Pages applied at once (each in its own transaction).
const APPLY_CONCURRENCY: usize = 2;

pub type WatermarkOf = fn(&merge::ContactRow) -> Option<DateTime<Utc>>;

/// The contacts pull's watermark: the contact's `updated_at`.
pub fn updated_at_mark(row: &merge::ContactRow) -> Option<DateTime<Utc>> {
    Some(row.updated_at)
}

/// Pages through `first` and its next links, applying each page; the watermark of `job`
/// (the largest `watermark_of` seen) is advanced once every page is committed. Shared by the jobs
/// that read `GET /contacts`.
pub async fn pull(
    ctx: &JobContext,
    client: &AccountClient,
    job: &str,
    first: url::Url,
    before: Option<DateTime<Utc>>,
    lists_filter: Option<&HashSet<Uuid>>,
    run_id: Uuid,
    watermark_of: WatermarkOf,
) -> anyhow::Result<PullStats> {
    let account = client.account().to_string();
    let mut stats = PullStats {
        watermark_before: before,
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    let mut max_seen: Option<DateTime<Utc>> = None;
    let fetch = |url: url::Url| {
        let c = client.clone();
        AbortOnDropHandle::new(tokio::spawn(async move { c.contacts_page(url).await }))
    };
    let mut in_flight = fetch(first);
    let mut last_progress = Instant::now();
    // A bar on a terminal (`sync`, `demo`); logs every 10 s otherwise (the daemon).
    let mut bar: Option<indicatif::ProgressBar> = None;
    // Pages being applied, each in its own transaction on its own connection, oldest first.
    let mut applying = FuturesOrdered::new();
    let account_ref = &account;
    let mut fetched = 0u64;
    loop {
        let page: anyhow::Result<ContactsPage> = match in_flight.await {
            Ok(r) => r.with_context(|| {
                format!(
                    "fetching page {} of contacts for account {account}",
                    fetched + 1
                )
            }),
            Err(e) => Err(anyhow::Error::new(e).context("page fetch task ended abnormally")),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                // The pages in hand still commit: nothing already read is thrown away.
                while applying.next().await.is_some() {}
                return Err(e);
            }
        };
        fetched += 1;
        if fetched == 1 {
            stats.contacts_count = page.contacts_count;
            if ctx.progress && std::io::stderr().is_terminal() {
                bar = Some(progress_bar(job, &account, page.contacts_count));
            }
        }
        // Read ahead: one page is fetched while earlier ones are applied.
        let next = match PagingLinks::next_href(&page.links) {
            Some(href) => Some(fetch(client.next_url(href)?)),
            None => None,
        };
        let page_no = fetched;
        applying.push_back(async move {
            let started = Instant::now();
            let mut page_max = None;
            let applied = apply_page(
                ctx,
                account_ref,
                job,
                &page,
                lists_filter,
                run_id,
                false,
                &mut page_max,
                watermark_of,
            )
            .await
            .with_context(|| {
                format!("applying page {page_no} of contacts for account {account_ref}")
            })?;
            anyhow::Ok((applied, page_max, started.elapsed()))
        });
        // Two pages in flight keep both PostgreSQL backends busy; more would only hold
        // more pages in memory.
        while applying.len() >= APPLY_CONCURRENCY || (next.is_none() && !applying.is_empty()) {
            let Some(done) = applying.next().await else {
                break;
            };
            let (applied, page_max, took) = done?;
            max_seen = max_seen.max(page_max);
            stats.apply_ms += took.as_millis() as u64;
            stats.pages += 1;
            stats.contacts += applied.stats;
            stats.changes_written += applied.changes_written;
            stats.outbound_skipped += applied.outbound_skipped;
            if let Some(b) = &bar {
                b.inc(applied.stats.seen);
            } else if last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = Instant::now();
                info!(
                    pages = stats.pages,
                    seen = stats.contacts.seen,
                    total = stats.contacts_count,
                    "pull progress"
                );
            }
        }
        match next {
            None => break,
            Some(n) => {
                if ctx.cancel.is_cancelled() {
                    // Let the pages in hand commit; the watermark is not advanced, so the
                    // next run re-reads them (a no-op) and goes on.
                    while let Some(done) = applying.next().await {
                        done?;
                    }
                    anyhow::bail!("cancelled after {} pages; watermark unchanged", fetched);
                }
                in_flight = n;
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // Every page is committed: only now may the watermark cover them.
    if !ctx.dry_run {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::sync_state::advance_watermark(&mut conn, &account, job, max_seen)
            .await
            .with_context(|| format!("advancing the {job} watermark"))?;
    }
    stats.api_requests = client.requests_sent();
    stats.watermark_after = match (before, max_seen) {
        (Some(b), Some(m)) => Some(b.max(m)),
        (b, m) => b.or(m),
    };
    Ok(stats)
}

/// What applying one page did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageApplied {
    pub stats: PageStats,
    pub changes_written: u64,
    pub outbound_skipped: u64,
}

/// Applies one page in one transaction (and the watermark, with the last page). Pending
/// outbound rows that would add a newly unsubscribed contact to a list become `skipped` in
/// the same transaction (law 2: ccsync never re-subscribes).
pub(crate) async fn apply_page(
    ctx: &JobContext,
    account: &str,
    job: &str,
    page: &ContactsPage,
    lists_filter: Option<&HashSet<Uuid>>,
    run_id: Uuid,
    is_last: bool,
    max_seen: &mut Option<DateTime<Utc>>,
    watermark_of: WatermarkOf,
) -> anyhow::Result<PageApplied> {
    let incoming: Vec<merge::Incoming> = page.contacts.iter().map(merge::to_incoming).collect();
    let mut ids: Vec<Uuid> = incoming.iter().map(|i| i.row.contact_id).collect();
    ids.sort_unstable();
    let mut tx = ctx.pool.begin().await?;
    store::relax_commit_durability(&mut tx).await?;
    let stored = store::contacts::load_for_update(&mut tx, account, &ids).await?;
    let mut plan = merge::plan_page(&incoming, &stored, lists_filter);
    *max_seen = incoming
        .iter()
        .filter_map(|i| watermark_of(&i.row))
        .fold(*max_seen, |m, t| m.max(Some(t)));
    plan.upserts.sort_unstable_by_key(|r| r.contact_id);
    store::contacts::upsert(&mut tx, account, &plan.upserts).await?;
    store::contacts::remove_memberships(&mut tx, account, &plan.remove_memberships).await?;
    store::contacts::add_memberships(&mut tx, account, &plan.add_memberships).await?;
    let written = store::changes::append(
        &mut tx,
        account,
        Some(run_id),
        "constant_contact",
        &plan.changes,
    )
    .await?;
    let refusals = super::optouts::newly_unsubscribed(&incoming, &plan);
    let outbound_skipped =
        store::optouts::skip_pending_list_adds(&mut tx, account, &refusals).await?;
    if is_last {
        store::sync_state::advance_watermark(&mut tx, account, job, *max_seen).await?;
    }
    if ctx.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(PageApplied {
        stats: plan.stats,
        changes_written: written,
        outbound_skipped,
    })
}
