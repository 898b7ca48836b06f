//! The sliced contacts pull: a pull with many contacts to read cuts its `updated_at` range
//! into time slices (`core::slices`) and pages up to `sync.slice_streams` of them at once,
//! each with its own cursor, so the pacer — the API's 4 requests a second — is the only
//! limit, not one page's latency.
//!
//! Law 4 holds as in the sequential pull: the watermark moves once, after every slice is
//! committed, to the largest `updated_at` any of them applied; a failed, cancelled or killed
//! pull leaves it where it was, so the next run reads the whole range again (a no-op where
//! already applied). The open-ended slice (up to now and beyond) is started first, so a
//! contact that moves forward while the pull runs is inside a slice that is still reading.

use std::collections::VecDeque;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, info};

use super::context::JobContext;
use super::pager::Pager;
use super::walk::{apply_page, finish, walk_pages, PageSpec, PullStats, Walk};
use crate::core::job::Job;
use crate::core::slices::{self, FirstPage, Plan, Slice};
use crate::ctct::dto::PagingLinks;
use crate::ctct::page::ContactsPage;
use crate::ctct::{AccountClient, ContactsQuery};

/// Whether a walk whose first page is `first` should be sliced (the caller has checked that
/// slicing is on, `sync.slice_streams > 1`).
pub(super) fn worth_slicing(ctx: &JobContext, first: &ContactsPage) -> bool {
    PagingLinks::next_href(&first.links).is_some()
        && first.contacts_count.unwrap_or(0) > ctx.settings.sync.slice_above
}

/// What the first page of a slice shows its planner.
fn facts(page: &ContactsPage, spec: &PageSpec<'_>) -> FirstPage {
    FirstPage {
        contacts_count: page.contacts_count.unwrap_or(page.contacts.len() as u64),
        times: page
            .contacts
            .iter()
            .filter_map(|c| (spec.watermark_of)(&c.row))
            .collect(),
    }
}

/// The pieces in the order they start: newest first — the open-ended one, so that a
/// contact moving forward meets a slice still reading, then the rest, since accounts
/// change most recently and the largest pieces should not be the last to start.
fn newest_first(mut pieces: Vec<Slice>) -> Vec<Slice> {
    pieces.reverse();
    pieces
}

/// A slice's walk: its pages applied, or the pieces it was cut into.
struct SliceDone {
    stats: PullStats,
    max_seen: Option<DateTime<Utc>>,
    pieces: Vec<Slice>,
}

/// Pulls `query`'s range (whose first page, `first`, is in hand) in slices; advances `job`'s
/// watermark when all are committed.
pub(super) async fn pull(
    ctx: &JobContext,
    client: &AccountClient,
    job: Job,
    query: &ContactsQuery,
    first: ContactsPage,
    first_latency: std::time::Duration,
    before: Option<DateTime<Utc>>,
    spec: &PageSpec<'_>,
) -> anyhow::Result<PullStats> {
    let settings = &ctx.settings.sync;
    // As many walks as keep the pacer busy at the latency the first page showed (a slower
    // answer later only means the pacer is a little less than full). Each walk holds up to
    // two pages, so no more than that: without a pacer (a local sandbox) as many walks as
    // a cursor walk applies pages at once, since more would only hold more pages and
    // contend for the database.
    let rate = ctx.settings.constant_contact.requests_per_second;
    let wanted = slices::streams_needed(rate, first_latency.as_secs_f64())
        .unwrap_or(super::walk::APPLY_CONCURRENCY as u64);
    let streams = wanted.min(u64::from(settings.slice_streams)).max(2) as usize;

    let count = first.contacts_count.unwrap_or(0);
    let page_size = u64::from(settings.page_size);
    let plan = Plan::new(count, page_size, streams as u64);
    let planned_pages = slices::pages(count, page_size);
    let mut stats = PullStats {
        watermark_before: before,
        contacts_count: first.contacts_count,
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    let whole = Slice::from(query.updated_after);
    let pieces = slices::cut(
        whole,
        &facts(&first, spec),
        Utc::now(),
        plan.first_cut(count),
    );
    // The first page is real data: applied now, re-read by the slice that holds it.
    let applied = apply_page(ctx, spec, &first)
        .await
        .with_context(|| format!("applying page 1 of contacts for account {}", spec.account))?;
    stats.add_page(spec.account, &applied, ctx.dry_run);
    let mut max_seen = applied.max_seen;
    stats.slices = pieces.len() as u64;
    info!(
        contacts = count,
        slices = pieces.len(),
        streams,
        "pulling in time slices"
    );
    let mut queue: VecDeque<Slice> = newest_first(pieces).into();
    // The walks stop on their own token: after one fails, the others are told to stop at
    // their next page boundary and awaited, never dropped mid-statement (a transaction
    // dropped mid-statement leaves its connection in the pool inside an open transaction,
    // holding the row locks that every later pull and pacer slot would wait on).
    let walks = JobContext {
        cancel: ctx.cancel.child_token(),
        ..ctx.clone()
    };
    let ctx = &walks;
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < streams {
            let Some(s) = queue.pop_front() else { break };
            // What is left of the pull when this piece starts, the pieces running included
            // (each request so far fetched about a page of it).
            let remaining = planned_pages.saturating_sub(client.requests_sent());
            let piece = Piece {
                slice: s,
                remaining_pages: remaining,
                streams: streams as u64,
            };
            running.push(walk_slice(ctx, client, job, query, piece, &plan, spec));
        }
        // An error ends the pull: the other walks stop at their next page boundary (what
        // they hold commits) and the watermark stays where it was.
        let Some(done) = running.next().await else {
            break;
        };
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                ctx.cancel.cancel();
                while running.next().await.is_some() {}
                return Err(e);
            }
        };
        stats.absorb(&done.stats);
        max_seen = max_seen.max(done.max_seen);
        if !done.pieces.is_empty() {
            stats.slice_cuts += 1;
            stats.slices += done.pieces.len() as u64 - 1;
            queue.extend(newest_first(done.pieces));
        }
        if ctx.cancel.is_cancelled() && !(queue.is_empty() && running.is_empty()) {
            anyhow::bail!(
                "cancelled after {} pages of a sliced pull; watermark unchanged",
                stats.pages
            );
        }
    }
    // Every slice is committed: only now may the watermark cover them.
    finish(ctx, client, job, spec.account, max_seen, &mut stats).await?;
    Ok(stats)
}

/// A slice about to be walked, and how much of the pull was left when it started.
struct Piece {
    slice: Slice,
    remaining_pages: u64,
    /// Walks sharing the pacer.
    streams: u64,
}

/// Reads a piece's first page; cuts it again when it is far larger than planned or would
/// run on alone after the rest, else walks it to its end.
async fn walk_slice(
    ctx: &JobContext,
    client: &AccountClient,
    job: Job,
    query: &ContactsQuery,
    piece: Piece,
    plan: &Plan,
    spec: &PageSpec<'_>,
) -> anyhow::Result<SliceDone> {
    let slice = piece.slice;
    let url = client
        .contacts_url(&ContactsQuery {
            updated_after: slice.after,
            updated_before: slice.before,
            include_count: true,
            ..query.clone()
        })
        .context("building a slice's URL")?;
    let page = client.contacts_page(url).await.with_context(|| {
        format!(
            "fetching the first page of a slice for account {}",
            spec.account
        )
    })?;
    let mut stats = PullStats::default();
    let first = facts(&page, spec);
    let n = plan.recut(first.contacts_count).max(slices::tail_cut(
        slices::pages(first.contacts_count, plan.page_size),
        piece.remaining_pages,
        piece.streams,
    ));
    debug!(
        after = ?slice.after,
        before = ?slice.before,
        contacts = first.contacts_count,
        remaining_pages = piece.remaining_pages,
        pieces = n,
        "a slice's first page"
    );
    if n > 1 && PagingLinks::next_href(&page.links).is_some() {
        let pieces = slices::cut(slice, &first, Utc::now(), n);
        if pieces.len() > 1 {
            let applied = apply_page(ctx, spec, &page).await?;
            stats.add_page(spec.account, &applied, ctx.dry_run);
            return Ok(SliceDone {
                stats,
                max_seen: applied.max_seen,
                pieces,
            });
        }
    }
    let walk = Walk {
        job,
        // The slices already keep several pages applying at once.
        apply_concurrency: 1,
        progress: false,
    };
    let max_seen = walk_pages(
        ctx,
        Pager::starting_with(client, page),
        &walk,
        spec,
        &mut stats,
    )
    .await?;
    Ok(SliceDone {
        stats,
        max_seen,
        pieces: Vec::new(),
    })
}
