//! One cursor walk of `GET /contacts`: each page applied in its own transaction (two at
//! once), the largest `watermark_of` of the committed pages returned, and the watermark
//! advanced only once every page is committed ([`pull`]). The sequential pull, the sweeps
//! built on it (`contacts`) and each slice of a sliced pull (`slices`) walk through here.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tracing::{info, instrument, warn};
use uuid::Uuid;

use super::context::JobContext;
use super::pager::Pager;
use super::watermark;
use crate::core::contact::ContactRow;
use crate::core::job::Job;
use crate::core::merge::{self, PageStats};
use crate::core::optouts::newly_unsubscribed;
use crate::core::sanitize::BadInput;
use crate::ctct::page::ContactsPage;
use crate::ctct::AccountClient;
use crate::store;

/// Stats of one pull run (stored in `sync_runs.stats`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PullStats {
    pub pages: u64,
    #[serde(flatten)]
    pub contacts: PageStats,
    pub changes_written: u64,
    /// Pending outbound rows marked `skipped` because their contact unsubscribed.
    pub outbound_skipped: u64,
    /// Page elements skipped as not storable contacts (`poison_records`, kind `poison`).
    pub poison: u64,
    /// Contact columns stored with NUL characters removed (kind `nul_removed`).
    pub nul_removed: u64,
    /// Pages applied again by upserts because another writer stored one of their new
    /// contacts first (see [`apply_page`]).
    pub pages_reapplied: u64,
    /// Pages taken as all new to the store ([`NewGuess`]) that held a stored contact, and
    /// were applied again with a lookup.
    pub pages_guessed_wrong: u64,
    pub api_requests: u64,
    pub contacts_count: Option<u64>,
    /// Time spent applying pages to PostgreSQL, summed over pages (two apply at once).
    pub apply_ms: u64,
    /// Where that time went, summed over pages (microseconds).
    pub apply_phases_us: ApplyPhases,
    pub watermark_before: Option<DateTime<Utc>>,
    pub watermark_after: Option<DateTime<Utc>>,
    /// Time slices the pull was paged in (0: one sequential walk; see `sync::slices`).
    pub slices: u64,
    /// Slices cut again because their first page showed far more than planned.
    pub slice_cuts: u64,
    /// A first sync's export path (`sync.backfill`), when one was considered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::core::backfill::ExportStats>,
    pub dry_run: bool,
}

/// Where a page's apply spends its time (microseconds), for `bench pull` and `sync_runs.stats`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ApplyPhases {
    /// Converting the page's contacts to rows (NUL removal, custom fields by name).
    pub convert: u64,
    /// `BEGIN` and `SELECT … FOR UPDATE` of the stored copies.
    pub load: u64,
    /// The merge in Rust (stale guard, field diffs, membership changes).
    pub merge: u64,
    pub upsert: u64,
    pub memberships: u64,
    pub changes: u64,
    /// Opt-out refusals, poison notes.
    pub other: u64,
    pub commit: u64,
}

impl std::ops::AddAssign for ApplyPhases {
    fn add_assign(&mut self, o: Self) {
        self.convert += o.convert;
        self.load += o.load;
        self.merge += o.merge;
        self.upsert += o.upsert;
        self.memberships += o.memberships;
        self.changes += o.changes;
        self.other += o.other;
        self.commit += o.commit;
    }
}

/// A progress bar for a walk shown on a terminal.
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
/// Pages applied at once (each in its own transaction).
pub const APPLY_CONCURRENCY: usize = 3;

/// Which timestamp of an incoming contact a sweep's watermark follows.
pub type WatermarkOf = fn(&ContactRow) -> Option<DateTime<Utc>>;

/// The contacts pull's watermark: the contact's `updated_at`.
pub fn updated_at_mark(row: &ContactRow) -> Option<DateTime<Utc>> {
    Some(row.updated_at)
}

/// How the pages of one walk are applied, and what the walk has learnt of them.
pub struct PageSpec<'a> {
    pub account: &'a str,
    /// Lists whose memberships are synced (`None` = all).
    pub lists_filter: Option<&'a HashSet<Uuid>>,
    pub run_id: Uuid,
    /// The timestamp each page's maximum is taken of.
    pub watermark_of: WatermarkOf,
    /// Whether the walk's next page is likely all new to the store (see [`NewGuess`]).
    pub new_guess: NewGuess,
}

impl<'a> PageSpec<'a> {
    /// A walk's spec, with nothing learnt yet of its pages.
    pub fn new(
        account: &'a str,
        lists_filter: Option<&'a HashSet<Uuid>>,
        run_id: Uuid,
        watermark_of: WatermarkOf,
    ) -> Self {
        PageSpec {
            account,
            lists_filter,
            run_id,
            watermark_of,
            new_guess: NewGuess::default(),
        }
    }
}

/// What a walk has learnt about its pages: whether the last page looked up found none of
/// its contacts stored (a first sync, a backfill). While it holds, pages are copied in
/// without looking them up first — the primary key still refuses a contact that is stored,
/// and such a page is then applied again the ordinary way, which also ends the guess.
#[derive(Debug, Default)]
pub struct NewGuess(std::sync::atomic::AtomicBool);

impl NewGuess {
    /// Pages smaller than this teach nothing (a catch-up pull's few contacts): they are
    /// always looked up.
    pub const MIN_PAGE: usize = 50;

    pub fn holds(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After a page of `looked_up` contacts was looked up and `found` of them were stored.
    fn learn(&self, looked_up: usize, found: usize) {
        let all_new = found == 0 && looked_up >= Self::MIN_PAGE;
        self.0.store(all_new, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Pages through `first` and its next links, applying each page; the watermark of `job`
/// (the largest `watermark_of` seen) is advanced once every page is committed. Shared by the
/// jobs that read `GET /contacts` incrementally.
#[instrument(skip_all, fields(job = %job))]
pub async fn pull(
    ctx: &JobContext,
    client: &AccountClient,
    job: Job,
    first: url::Url,
    before: Option<DateTime<Utc>>,
    spec: &PageSpec<'_>,
) -> anyhow::Result<PullStats> {
    pull_pages(ctx, client, job, Pager::new(client, first), before, spec).await
}

/// [`pull`] of a walk already started.
pub(super) async fn pull_pages(
    ctx: &JobContext,
    client: &AccountClient,
    job: Job,
    pages: Pager,
    before: Option<DateTime<Utc>>,
    spec: &PageSpec<'_>,
) -> anyhow::Result<PullStats> {
    let mut stats = PullStats {
        watermark_before: before,
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    let walk = Walk {
        job,
        apply_concurrency: APPLY_CONCURRENCY,
        progress: true,
    };
    let max_seen = walk_pages(ctx, pages, &walk, spec, &mut stats).await?;
    // Every page is committed: only now may the watermark cover them.
    finish(ctx, client, job, spec.account, max_seen, &mut stats).await?;
    Ok(stats)
}

/// Advances `job`'s watermark to `max_seen` (every page it covers is committed) and fills in
/// the run's request count and watermark.
pub(super) async fn finish(
    ctx: &JobContext,
    client: &AccountClient,
    job: Job,
    account: &str,
    max_seen: Option<DateTime<Utc>>,
    stats: &mut PullStats,
) -> anyhow::Result<()> {
    watermark::advance(ctx, account, job, max_seen).await?;
    stats.api_requests = client.requests_sent();
    stats.watermark_after = match (stats.watermark_before, max_seen) {
        (Some(b), Some(m)) => Some(b.max(m)),
        (b, m) => b.or(m),
    };
    Ok(())
}

/// How one cursor walk runs.
pub(super) struct Walk {
    pub job: Job,
    /// Pages applied at once (each in its own transaction on its own connection).
    pub apply_concurrency: usize,
    /// Count the walk's total from its first page and show a bar / log progress.
    pub progress: bool,
}

/// Applies every page of `pages` (the watermark untouched), adding to `stats`; the largest
/// `watermark_of` of the committed pages.
pub(super) async fn walk_pages(
    ctx: &JobContext,
    mut pages: Pager,
    walk: &Walk,
    spec: &PageSpec<'_>,
    stats: &mut PullStats,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let account = spec.account;
    let job = walk.job;
    let mut max_seen: Option<DateTime<Utc>> = None;
    let mut last_progress = Instant::now();
    // A bar on a terminal (`sync`, `demo`); logs every 10 s otherwise (the daemon).
    let mut bar: Option<indicatif::ProgressBar> = None;
    // Pages being applied, each in its own transaction on its own connection, oldest first.
    let mut applying = FuturesOrdered::new();
    loop {
        let page = match pages.next().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                // The pages in hand still commit: nothing already read is thrown away.
                while applying.next().await.is_some() {}
                return Err(e);
            }
        };
        if page.number == 1 && walk.progress {
            stats.contacts_count = page.page.contacts_count;
            if ctx.progress && std::io::stderr().is_terminal() {
                bar = Some(progress_bar(
                    job.as_str(),
                    account,
                    page.page.contacts_count,
                ));
            }
        }
        let last = page.last;
        applying.push_back(async move {
            let started = Instant::now();
            let applied = apply_page(ctx, spec, &page.page).await.with_context(|| {
                format!(
                    "applying page {} of contacts for account {account}",
                    page.number
                )
            })?;
            anyhow::Ok((applied, started.elapsed()))
        });
        // Two pages in flight keep both PostgreSQL backends busy; more would only hold
        // more pages in memory.
        while applying.len() >= walk.apply_concurrency || (last && !applying.is_empty()) {
            let Some(done) = applying.next().await else {
                break;
            };
            let (applied, took) = match done {
                Ok(d) => d,
                Err(e) => {
                    // The other page in hand finishes (commits or fails) before the error
                    // is returned: a transaction dropped mid-statement would leave its
                    // connection in the pool inside an open transaction, holding row locks.
                    while applying.next().await.is_some() {}
                    return Err(e);
                }
            };
            max_seen = max_seen.max(applied.max_seen);
            stats.apply_ms += took.as_millis() as u64;
            stats.add_page(account, &applied, ctx.dry_run);
            if let Some(b) = &bar {
                b.inc(applied.stats.seen);
            } else if walk.progress && last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = Instant::now();
                info!(
                    pages = stats.pages,
                    seen = stats.contacts.seen,
                    total = stats.contacts_count,
                    "pull progress"
                );
            }
        }
        if !last && ctx.cancel.is_cancelled() {
            // Let the pages in hand commit; the watermark is not advanced, so the next run
            // re-reads them (a no-op) and goes on.
            while let Some(done) = applying.next().await {
                done?;
            }
            anyhow::bail!(
                "cancelled after {} pages; watermark unchanged",
                pages.fetched()
            );
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(max_seen)
}

impl PullStats {
    /// Counts one committed page.
    pub(super) fn add_page(&mut self, account: &str, applied: &PageApplied, dry_run: bool) {
        self.pages += 1;
        self.contacts += applied.stats;
        self.apply_phases_us += applied.phases;
        self.changes_written += applied.changes_written;
        self.outbound_skipped += applied.outbound_skipped;
        self.poison += applied.poison;
        self.nul_removed += applied.nul_removed;
        self.pages_reapplied += u64::from(applied.raced);
        self.pages_guessed_wrong += u64::from(applied.guessed_wrong);
        if applied.poison > 0 && !dry_run {
            metrics::counter!("ccsync_poison_records_total", "account" => account.to_string())
                .increment(applied.poison);
        }
    }

    /// Adds another walk's page counts (a slice of the same pull).
    pub(super) fn absorb(&mut self, other: &PullStats) {
        self.pages += other.pages;
        self.contacts += other.contacts;
        self.changes_written += other.changes_written;
        self.outbound_skipped += other.outbound_skipped;
        self.poison += other.poison;
        self.nul_removed += other.nul_removed;
        self.pages_reapplied += other.pages_reapplied;
        self.pages_guessed_wrong += other.pages_guessed_wrong;
        self.apply_ms += other.apply_ms;
        self.apply_phases_us += other.apply_phases_us;
    }
}

/// What applying one page did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageApplied {
    pub phases: ApplyPhases,
    pub stats: PageStats,
    pub changes_written: u64,
    pub outbound_skipped: u64,
    /// Elements skipped as not storable contacts.
    pub poison: u64,
    /// Columns stored with NUL characters removed.
    pub nul_removed: u64,
    /// Memberships the page removed (the contact is no longer on the list).
    pub memberships_removed: u64,
    /// Another writer stored one of the page's new contacts first: the page was applied
    /// again by upserts.
    pub raced: bool,
    /// The page was taken as all new ([`NewGuess`]) but held a stored contact: it was
    /// applied again with a lookup.
    pub guessed_wrong: bool,
    /// The page's largest `watermark_of` (what the walk's watermark may advance to once
    /// every page up to here is committed).
    pub max_seen: Option<DateTime<Utc>>,
}

/// Applies one page in one transaction. Pending outbound rows that would add a newly
/// unsubscribed contact to a list become `skipped` in the same transaction (law 2: ccsync
/// never re-subscribes). The watermark is not touched here ([`watermark::advance`]).
///
/// Contacts new to the store are copied in; should another writer (an overlapping slice,
/// a push's read) have stored one of them meanwhile, the transaction is rolled back and
/// the page applied again, merged against what is stored now.
pub async fn apply_page(
    ctx: &JobContext,
    spec: &PageSpec<'_>,
    page: &ContactsPage,
) -> anyhow::Result<PageApplied> {
    let first = if spec.new_guess.holds() {
        Attempt::GuessNew
    } else {
        Attempt::LookUp(store::contacts::NewRows::Copy)
    };
    match apply_page_with(ctx, spec, page, first).await {
        Err(e)
            if e.downcast_ref::<sqlx::Error>()
                .is_some_and(store::contacts::is_unique_violation) =>
        {
            let again = Attempt::LookUp(store::contacts::NewRows::Upsert);
            let mut applied = apply_page_with(ctx, spec, page, again).await?;
            match first {
                Attempt::GuessNew => applied.guessed_wrong = true,
                Attempt::LookUp(_) => applied.raced = true,
            }
            Ok(applied)
        }
        done => done,
    }
}

/// How a page's contacts are matched with the store.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    /// Locked and read first; those not stored written as [`NewRows`](store::contacts::NewRows) says.
    LookUp(store::contacts::NewRows),
    /// Taken as all new ([`NewGuess`]): copied in without a lookup.
    GuessNew,
}

async fn apply_page_with(
    ctx: &JobContext,
    spec: &PageSpec<'_>,
    page: &ContactsPage,
    attempt: Attempt,
) -> anyhow::Result<PageApplied> {
    let account = spec.account;
    let mut phases = ApplyPhases::default();
    let mut at = std::time::Instant::now();
    let mut notes: Vec<BadInput> = page
        .rejected
        .iter()
        .map(|r| BadInput::poison(r.reason.clone(), r.record.clone()))
        .collect();
    let poison = notes.len() as u64;
    // The page came converted (`ctct::dto::ContactsPage`): only its NUL removals to note.
    notes.extend(
        page.nul_removed
            .iter()
            .map(|(id, field)| BadInput::nul_removed(*id, field)),
    );
    let incoming = &page.contacts;
    let nul_removed = notes.len() as u64 - poison;
    for n in &notes {
        warn!(
            account,
            kind = n.kind.as_str(),
            contact_id = ?n.contact_id,
            field = n.field,
            reason = %n.reason,
            "bad input from Constant Contact"
        );
    }
    let mut ids: Vec<Uuid> = incoming.iter().map(|i| i.row.contact_id).collect();
    ids.sort_unstable();
    phases.convert = store::lap(&mut at);
    let mut tx = store::begin_page(&ctx.pool).await?;
    let (stored, new_rows) = match attempt {
        Attempt::LookUp(new_rows) => {
            let stored = store::contacts::load_for_update(&mut tx, account, &ids).await?;
            spec.new_guess.learn(ids.len(), stored.len());
            (stored, new_rows)
        }
        Attempt::GuessNew => (HashMap::new(), store::contacts::NewRows::Copy),
    };
    phases.load = store::lap(&mut at);
    let mut plan = merge::plan_page(incoming, &stored, spec.lists_filter);
    let max_seen = incoming
        .iter()
        .filter_map(|i| (spec.watermark_of)(&i.row))
        .max();
    // One order for every writer's row locks and key checks (no deadlock between pages).
    plan.inserts.sort_unstable_by_key(|r| r.contact_id);
    plan.updates.sort_unstable_by_key(|r| r.contact_id);
    phases.merge = store::lap(&mut at);
    let written = store::contacts::write_page(
        &mut tx,
        account,
        store::contacts::PageWrites {
            inserts: &plan.inserts,
            insert_memberships: &plan.insert_memberships,
            updates: &plan.updates,
            add_memberships: &plan.add_memberships,
            remove_memberships: &plan.remove_memberships,
        },
        new_rows,
    )
    .await?;
    store::lap(&mut at);
    phases.upsert = written.contacts_us;
    phases.memberships = written.memberships_us;
    let written = store::changes::append(
        &mut tx,
        account,
        Some(spec.run_id),
        "constant_contact",
        &plan.changes,
    )
    .await?;
    phases.changes = store::lap(&mut at);
    let refusals = newly_unsubscribed(incoming, &plan);
    let outbound_skipped =
        store::optouts::skip_pending_list_adds(&mut tx, account, &refusals).await?;
    store::poison::append(&mut tx, account, Some(spec.run_id), &notes).await?;
    phases.other = store::lap(&mut at);
    if ctx.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    phases.commit = store::lap(&mut at);
    Ok(PageApplied {
        phases,
        stats: plan.stats,
        changes_written: written,
        outbound_skipped,
        poison,
        nul_removed,
        memberships_removed: plan.remove_memberships.len() as u64,
        raced: false,
        guessed_wrong: false,
        max_seen,
    })
}
