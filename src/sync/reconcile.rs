//! The membership reconcile (`--job reconcile`, weekly by default): repairs what the
//! incremental jobs cannot see.
//!
//! 1. The list catalogue is refreshed (one request), so deleted lists are known.
//! 2. Every deleted contact is read (`status=deleted`, no date filter): deletes that did not
//!    move `updated_at` get `deleted_at`.
//! 3. For the synced lists, grouped by up to 25 ids per request (`GET /contacts?lists=a,b,..
//!    &status=all`): each contact returned is applied through the merge, and its memberships
//!    among the group's lists are made equal to Constant Contact's (`membership::diff`). A
//!    contact on several lists of a group comes back once, so this costs fewer requests than
//!    one query per list; memberships are attributed from each contact's
//!    `list_memberships`, not from the query. Local members of the group's lists that
//!    Constant Contact did not return at all are removed afterwards, whatever the outbound
//!    queue holds (the guard then refuses those lists to rows queued before the leave).
//! 4. Every unsubscribed contact is read (`status=unsubscribed`, no date filter): opt-outs
//!    the sweep missed are applied, and contacts unsubscribed locally that are no longer in
//!    Constant Contact's unsubscribed set (re-subscribed by their own action, which no
//!    filter finds) are re-read one by one by email, at most `RESUBSCRIBE_LOOKUPS` per run.
//!
//! Memory: one page at a time (plus one read ahead). The ids Constant Contact returned are
//! staged in a temporary table on the run's own connection, not in memory, so the
//! comparison does not grow with list size.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Context;
use chrono::{DateTime, Utc};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, Postgres};
use uuid::Uuid;

use super::context::JobContext;
use super::lists;
use super::pager::Pager;
use super::walk::{self, PageSpec, PullStats};
use super::watermark;
use crate::config::AccountSettings;
use crate::core::change::{membership_change, Change, ChangeKind};
use crate::core::contact::Incoming;
use crate::core::job::Job;
use crate::core::membership::{self, MembershipDiff, Pair};
use crate::core::merge::{self, PageStats};
use crate::core::optouts::{newly_unsubscribed, optout_mark};
use crate::ctct::page::ContactsPage;
use crate::ctct::{AccountClient, ContactsQuery, CONTACT_INCLUDE};
use crate::store;

/// The API accepts at most 25 list ids in `lists=`.
pub const MAX_LISTS_PER_QUERY: usize = 25;

/// Contacts re-read by email per run when they left Constant Contact's unsubscribed set
/// (each costs one request; the rest wait for the next run).
pub const RESUBSCRIBE_LOOKUPS: usize = 100;

/// Local memberships examined per statement when removing those Constant Contact no longer
/// has.
const UNSEEN_CHUNK: i64 = 2_000;

/// Stats of one reconcile.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileStats {
    pub lists: lists::CatalogueStats,
    pub deleted_sweep: PullStats,
    pub synced_lists: u64,
    pub list_queries: u64,
    pub pages: u64,
    #[serde(flatten)]
    pub contacts: PageStats,
    pub memberships_added: u64,
    pub memberships_removed: u64,
    pub unsubscribed_pages: u64,
    pub unsubscribed_seen: u64,
    pub resubscribe_lookups: u64,
    /// The per-run cap of lookups was reached: the rest wait for the next run.
    pub resubscribe_capped: bool,
    pub changes_written: u64,
    pub outbound_skipped: u64,
    pub api_requests: u64,
    pub dry_run: bool,
}

/// One reconcile for `account`; returns the run's stats.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<serde_json::Value> {
    let client = ctx.api.account(&account.id);
    let mut stats = ReconcileStats {
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    stats.lists = lists::sync_catalogue(ctx, &client, Some(run_id)).await?;
    stats.deleted_sweep = deleted_sweep(ctx, &client, account, run_id).await?;

    // The staging table lives on this connection for the whole run.
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let result = reconcile_with(ctx, &client, account, run_id, &mut conn, &mut stats).await;
    // Best effort: a connection returned with the table keeps it, and the next run empties
    // it anyway.
    let _ = store::memberships::drop_seen(&mut conn).await;
    drop(conn);
    result?;
    watermark::advance(ctx, &account.id, Job::Reconcile, None).await?;
    stats.api_requests = client.requests_sent() + stats.deleted_sweep.api_requests;
    Ok(serde_json::to_value(stats)?)
}

/// The members of `lists` as Constant Contact has them now, applied like a reconcile of
/// those lists alone (the push's read before write, per list).
pub async fn refresh_lists(
    ctx: &JobContext,
    client: &AccountClient,
    account: &str,
    lists: &[Uuid],
    run_id: Uuid,
) -> anyhow::Result<ReconcileStats> {
    let mut stats = ReconcileStats {
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let mut result = Ok(());
    for group in membership::batches(lists, MAX_LISTS_PER_QUERY) {
        result = reconcile_group(ctx, client, &mut conn, account, &group, run_id, &mut stats).await;
        if result.is_err() {
            break;
        }
    }
    let _ = store::memberships::drop_seen(&mut conn).await;
    result?;
    Ok(stats)
}

async fn reconcile_with(
    ctx: &JobContext,
    client: &AccountClient,
    account: &AccountSettings,
    run_id: Uuid,
    conn: &mut PoolConnection<Postgres>,
    stats: &mut ReconcileStats,
) -> anyhow::Result<()> {
    let mut synced = store::lists::active_ids(conn, &account.id)
        .await
        .context("reading the synced lists")?;
    if let Some(filter) = lists::lists_filter(account) {
        synced.retain(|l| filter.contains(l));
    }
    stats.synced_lists = synced.len() as u64;
    for group in membership::batches(&synced, MAX_LISTS_PER_QUERY) {
        reconcile_group(ctx, client, conn, &account.id, &group, run_id, stats)
            .await
            .with_context(|| {
                format!(
                    "reconciling {} lists of account {}",
                    group.len(),
                    account.id
                )
            })?;
    }
    unsubscribed_sweep(ctx, client, conn, account, run_id, stats)
        .await
        .with_context(|| format!("sweeping unsubscribed contacts of account {}", account.id))
}

/// Every deleted contact (no date filter), applied like the deletes job.
#[tracing::instrument(skip_all)]
async fn deleted_sweep(
    ctx: &JobContext,
    client: &AccountClient,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<PullStats> {
    let before = watermark::read(ctx, &account.id, Job::Deletes).await?;
    let first = client.contacts_url(&ContactsQuery {
        status: Some("deleted".into()),
        include: Some(CONTACT_INCLUDE.into()),
        limit: ctx.settings.sync.page_size,
        ..Default::default()
    })?;
    let filter = lists::lists_filter(account);
    // A client of its own, so that the sweep's request count is its own.
    let sub = client.api().account(client.account());
    let spec = PageSpec::new(&account.id, filter.as_ref(), run_id, walk::updated_at_mark);
    walk::pull(ctx, &sub, Job::Deletes, first, before, &spec)
        .await
        .context("reading every deleted contact")
}

fn diff_changes(d: &MembershipDiff, emails: &HashMap<Uuid, String>) -> Vec<Change> {
    let added = d
        .add
        .iter()
        .map(|(c, l)| membership_change(*c, emails.get(c), ChangeKind::ListAdded, *l));
    let removed = d
        .remove
        .iter()
        .map(|(c, l)| membership_change(*c, emails.get(c), ChangeKind::ListRemoved, *l));
    added.chain(removed).collect()
}

async fn finish(ctx: &JobContext, tx: sqlx::Transaction<'_, Postgres>) -> anyhow::Result<()> {
    if ctx.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

/// Reconciles one group of at most 25 lists.
///
/// The snapshot is not atomic: a membership that changes in Constant Contact while the group
/// is paged may be compared against a slightly older answer; the next pull or reconcile
/// settles it, and both sides are applied idempotently.
#[tracing::instrument(skip_all)]
async fn reconcile_group(
    ctx: &JobContext,
    client: &AccountClient,
    conn: &mut PgConnection,
    account: &str,
    group: &[Uuid],
    run_id: Uuid,
    stats: &mut ReconcileStats,
) -> anyhow::Result<()> {
    let scope: HashSet<Uuid> = group.iter().copied().collect();
    store::memberships::reset_seen(conn).await?;
    let first = client.contacts_url(&ContactsQuery {
        status: Some("all".into()),
        lists: group.to_vec(),
        include: Some(CONTACT_INCLUDE.into()),
        limit: ctx.settings.sync.page_size,
        ..Default::default()
    })?;
    stats.list_queries += 1;
    let mut pages = Pager::new(client, first);
    while let Some(p) = pages.next().await? {
        let (page, last) = (p.page, p.last);
        let ids: Vec<Uuid> = page.seen_ids();
        // Staged outside the page's transaction, so a dry run still compares correctly.
        store::memberships::stage_seen(conn, &ids).await?;
        apply_group_page(ctx, conn, account, &page, &scope, run_id, stats).await?;
        stats.pages += 1;
        if !last && ctx.cancel.is_cancelled() {
            anyhow::bail!("cancelled after {} pages", stats.pages);
        }
    }
    // Local members Constant Contact did not return for any list of the group.
    let mut after: Option<Pair> = None;
    loop {
        let unseen =
            store::memberships::unseen_members(conn, account, group, after, UNSEEN_CHUNK).await?;
        let Some(last) = unseen.last() else { break };
        after = Some((last.contact_id, last.list_id));
        let local: BTreeSet<Pair> = unseen.iter().map(|m| (m.contact_id, m.list_id)).collect();
        let emails: HashMap<Uuid, String> = unseen
            .iter()
            .filter_map(|m| m.email.clone().map(|e| (m.contact_id, e)))
            .collect();
        let mut tx = conn.begin().await?;
        // Whatever the queue holds: a pending row that names the list is refused it by the
        // guard once this leave is logged, never kept on a list the contact left.
        let d = membership::diff(&local, &BTreeSet::new());
        store::memberships::remove(&mut tx, account, &d.remove).await?;
        stats.changes_written += store::changes::append(
            &mut tx,
            account,
            Some(run_id),
            "constant_contact",
            &diff_changes(&d, &emails),
        )
        .await?;
        finish(ctx, tx).await?;
        stats.memberships_removed += d.remove.len() as u64;
        if (unseen.len() as i64) < UNSEEN_CHUNK {
            break;
        }
    }
    Ok(())
}

/// Applies one page of a list group: the contacts through the merge (their memberships
/// left out of it), then their memberships among the group's lists through the diff.
async fn apply_group_page(
    ctx: &JobContext,
    conn: &mut PgConnection,
    account: &str,
    page: &ContactsPage,
    scope: &HashSet<Uuid>,
    run_id: Uuid,
    stats: &mut ReconcileStats,
) -> anyhow::Result<()> {
    let incoming = &page.contacts;
    let mut remote: BTreeSet<Pair> = BTreeSet::new();
    let mut emails: HashMap<Uuid, String> = HashMap::new();
    for inc in incoming {
        let id = inc.row.contact_id;
        if let Some(m) = &inc.memberships {
            remote.extend(membership::pairs_in_scope(id, m, scope));
        }
        if let Some(e) = &inc.row.email {
            emails.insert(id, e.clone());
        }
    }
    let for_merge: Vec<Incoming> = incoming
        .iter()
        .map(|i| Incoming {
            row: i.row.clone(),
            memberships: None,
        })
        .collect();
    let mut ids: Vec<Uuid> = incoming.iter().map(|i| i.row.contact_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut tx = conn.begin().await?;
    let stored = store::contacts::load_for_update(&mut tx, account, &ids).await?;
    let mut local: BTreeSet<Pair> = BTreeSet::new();
    for s in stored.values() {
        local.extend(membership::pairs_in_scope(
            s.row.contact_id,
            &s.memberships,
            scope,
        ));
    }
    let mut plan = merge::plan_page(&for_merge, &stored, None);
    plan.inserts.sort_unstable_by_key(|r| r.contact_id);
    plan.updates.sort_unstable_by_key(|r| r.contact_id);
    let d = membership::diff(&local, &remote);
    let mut changes = plan.changes.clone();
    changes.extend(diff_changes(&d, &emails));
    // Memberships come from the reconcile's own diff (the merge saw none).
    store::contacts::write_page(
        &mut tx,
        account,
        store::contacts::PageWrites {
            inserts: &plan.inserts,
            insert_memberships: &[],
            updates: &plan.updates,
            add_memberships: &d.add,
            remove_memberships: &d.remove,
        },
        // A repair of stored contacts (new ones are rare): the path that never conflicts.
        store::contacts::NewRows::Upsert,
    )
    .await?;
    stats.changes_written +=
        store::changes::append(&mut tx, account, Some(run_id), "constant_contact", &changes)
            .await?;
    let refusals = newly_unsubscribed(incoming, &plan);
    stats.outbound_skipped +=
        store::optouts::skip_pending_list_adds(&mut tx, account, &refusals).await?;
    finish(ctx, tx).await?;
    stats.contacts += plan.stats;
    stats.memberships_added += d.add.len() as u64;
    stats.memberships_removed += d.remove.len() as u64;
    Ok(())
}

/// Every unsubscribed contact, applied like the sweep, with their ids staged; then the
/// contacts unsubscribed locally that Constant Contact no longer lists as unsubscribed are
/// re-read by email.
#[tracing::instrument(skip_all)]
async fn unsubscribed_sweep(
    ctx: &JobContext,
    client: &AccountClient,
    conn: &mut PgConnection,
    account: &AccountSettings,
    run_id: Uuid,
    stats: &mut ReconcileStats,
) -> anyhow::Result<()> {
    let filter = lists::lists_filter(account);
    store::memberships::reset_seen(conn).await?;
    let first = client.contacts_url(&ContactsQuery {
        status: Some("unsubscribed".into()),
        include: Some(CONTACT_INCLUDE.into()),
        limit: ctx.settings.sync.page_size,
        ..Default::default()
    })?;
    let spec = PageSpec::new(&account.id, filter.as_ref(), run_id, optout_mark);
    let mut max_seen: Option<DateTime<Utc>> = None;
    let mut pages = Pager::new(client, first);
    while let Some(p) = pages.next().await? {
        let (page, last) = (p.page, p.last);
        let ids: Vec<Uuid> = page.seen_ids();
        store::memberships::stage_seen(conn, &ids).await?;
        let applied = walk::apply_page(ctx, &spec, &page).await?;
        max_seen = max_seen.max(applied.max_seen);
        stats.unsubscribed_pages += 1;
        stats.unsubscribed_seen += applied.stats.seen;
        stats.contacts += applied.stats;
        stats.changes_written += applied.changes_written;
        stats.outbound_skipped += applied.outbound_skipped;
        if !last && ctx.cancel.is_cancelled() {
            anyhow::bail!(
                "cancelled after {} pages of unsubscribed contacts",
                stats.unsubscribed_pages
            );
        }
    }
    // Every page is committed: the opt-out sweep's watermark may cover them.
    watermark::advance(ctx, &account.id, Job::Unsubscribes, max_seen).await?;
    // Unsubscribed here, not there: re-read each by email (bounded per run).
    let candidates = store::memberships::unsubscribed_unseen(
        conn,
        &account.id,
        None,
        RESUBSCRIBE_LOOKUPS as i64 + 1,
    )
    .await?;
    for (i, (_, email)) in candidates.iter().enumerate() {
        if i >= RESUBSCRIBE_LOOKUPS {
            stats.resubscribe_capped = true;
            break;
        }
        let Some(email) = email else { continue };
        if ctx.cancel.is_cancelled() {
            anyhow::bail!("cancelled during re-subscription lookups");
        }
        let page = client.contact_by_email(email).await.with_context(|| {
            format!("re-reading a contact that left the unsubscribed set ({email})")
        })?;
        stats.resubscribe_lookups += 1;
        // Not a page of any sweep: no watermark moves.
        let applied = walk::apply_page(ctx, &spec, &page).await?;
        stats.contacts += applied.stats;
        stats.changes_written += applied.changes_written;
    }
    Ok(())
}
