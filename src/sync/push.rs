//! The push job (`--job push`): pending `outbound` rows → guard → batches →
//! `POST /activities/contacts_json_import` → `GET /activities/{id}` until a terminal state.
//!
//! Order and transactions (never a transaction across HTTP):
//! 1. Per chunk of pending rows: one transaction locks the rows, reads the freshly pulled
//!    store, plans (guard + batcher) and writes what ends here (`skipped`, invalid rows
//!    `failed`, `conflict`/`skipped` change rows). Commit.
//! 2. Per batch: a commit records the request (`send_attempts`) and marks its rows with it;
//!    the POST, outside any transaction; then one transaction marks the batch's rows
//!    `submitted` with the `activity_id`, records the `import_activities` row and ends the
//!    attempt. **A crash between the POST and that commit, or a lost answer, leaves the
//!    attempt: its rows are never planned again while it stands.** The next push first
//!    looks for the activity in `GET /activities` and follows it, or plans the rows again
//!    once the request is known to have made nothing ([`recover`], `core::sends`). Sending
//!    them again blindly could undo a subscriber's leave made in between.
//! 3. Polling every activity still in flight (`import_activities.finished_at IS NULL`,
//!    including those of an earlier, interrupted run — polled again, never re-sent) with
//!    exponential backoff `poll_initial`…`poll_max`, cancellable, each bounded by
//!    `poll_timeout` from its submission. A terminal state maps back to the rows.
//!
//! A push runs only on a store refreshed from the primary in the same cycle: `run_cycle`
//! runs the account's pull jobs first, and `run_once` refuses to run when the latest
//! contacts pull (and opt-out sweep) of the account did not succeed after the previous push.

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, instrument, warn};
use uuid::Uuid;

use super::context::JobContext;
use super::put::{write_all, PutStats, Write};
use super::reads::{read_before_write, read_contacts, ReadStats};
use crate::config::AccountSettings;
use crate::core::activity::map_completion;
use crate::core::batch::{self, Batch};
use crate::core::confirm::{confirm, confirm_direct, Submitted as SentRow, Verdict};
use crate::core::cycle::push_is_fresh;
use crate::core::guard::{self, Direct, Item, Terminal};
use crate::core::op::Op;
use crate::core::reads::Reader;
use crate::core::sends;
use crate::core::states::OutboundState::{Completed, Failed, Pending, Skipped, Submitted};
use crate::ctct::activities::Activity;
use crate::ctct::{AccountClient, Error as ApiError};
use crate::store::{self, outbound::LocalChange};

/// A dry run's pulls roll back, so its push plans on the store as the last real pull left
/// it; the real run pulls first and may refuse or trim more.
const DRY_RUN_NOTE: &str =
    "planned on the store as the last real pull left it (a dry run's pulls are not applied); \
     a real run pulls first, so opt-outs, edits and list removals it finds can skip or trim more";

/// How many entries of each kind a dry-run plan lists (the counts are always complete).
const PLAN_SAMPLE: usize = 200;

/// Stats of one push run (stored in `sync_runs.stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushStats {
    /// What was read from Constant Contact before writing (not in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_before_write: Option<ReadStats>,
    pub rows_considered: u64,
    pub batches_submitted: u64,
    pub rows_submitted: u64,
    pub bytes_submitted: u64,
    pub skipped: u64,
    pub failed_invalid: u64,
    pub conflicts: u64,
    pub deferred: u64,
    /// Rows Constant Contact already reflects (completed without sending anything).
    pub already_there: u64,
    pub completed: u64,
    pub failed: u64,
    pub retrying: u64,
    pub activities_polled: u64,
    pub activities_finished: u64,
    pub in_flight_left: u64,
    pub cannot_add_to_list: u64,
    /// Requests this run sent whose answer was lost (the rows wait for the next push's
    /// look at `GET /activities`).
    pub answers_lost: u64,
    /// What the start of this run made of requests left without a recorded answer.
    pub recovery: Recovery,
    /// Field-only changes and application-side unsubscribes (`GET` + `PUT /contacts/{id}`).
    pub put: PutStats,
    /// `remove_list_memberships` and `contact_delete` requests, and their rows.
    pub removals_submitted: u64,
    pub deletes_submitted: u64,
    /// Field-only rows pushed by an import naming only the lists the contact is on (above
    /// `put_max_rows`), and the longest time between that read and the import's request.
    pub fallback_rows: u64,
    pub fallback_reads: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_read_to_submit_ms: Option<u64>,
    /// Rows an ended import did not show in Constant Contact (contact, list or value
    /// missing on the read after it): `failed`, never `completed` on a counter's word.
    pub unconfirmed: u64,
    /// Requests spent reading back ended imports, and the reader used.
    pub confirm_requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_reader: Option<Reader>,
    pub api_requests: u64,
    /// Where the requests went (the rest of `total`: fallback reads, failed submits).
    pub requests: RequestCounts,
    /// Why submitting stopped early (queue full, quota, cancel), if it did.
    pub stopped: Option<String>,
    pub dry_run: bool,
    /// Only with `--dry-run`: what would be pushed or skipped, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<DryPlan>,
}

/// Send attempts of earlier runs left without a recorded answer, resolved at the start of
/// a push ([`recover`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Found among Constant Contact's activities: followed, not sent again.
    pub adopted: u64,
    /// Known to have made no activity: their rows planned again.
    pub released: u64,
    /// Possibly still in progress, or the activities could not be listed: left for later.
    pub waiting: u64,
    /// `GET /activities` requests spent.
    pub requests: u64,
}

/// The requests of one push run by purpose.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestCounts {
    pub reads_before_write: u64,
    /// Reads just before a fallback import (above `put_max_rows`).
    pub fallback_reads: u64,
    pub put_reads: u64,
    pub puts: u64,
    /// Imports, list removals and deletes accepted.
    pub submits: u64,
    pub polls: u64,
    pub confirms: u64,
    /// `GET /activities` looking for requests whose answer was lost.
    pub recovery: u64,
    pub total: u64,
}

/// What a dry run would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DryPlan {
    /// What the plan is based on.
    pub note: String,
    pub batches: Vec<Value>,
    pub skipped: Vec<Value>,
    pub failed: Vec<Value>,
    pub conflicts: Vec<Value>,
    pub deferred: Vec<Value>,
    pub already_there: Vec<Value>,
    /// Field-only changes that would go out as `PUT /contacts/{id}`.
    pub puts: Vec<Value>,
    /// Unsubscribes, list removals and deletes.
    pub directs: Vec<Value>,
}

fn sample(out: &mut Vec<Value>, v: Value) {
    if out.len() < PLAN_SAMPLE {
        out.push(v);
    }
}

fn terminal_json(t: &Terminal) -> Value {
    json!({"id": t.row_id, "email": t.email, "reason": t.reason})
}

/// One run for `account`; returns the run's stats.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<Value> {
    if !ctx.dry_run {
        check_fresh(ctx, &account.id, run_id).await?;
    }
    let client = ctx.api.account(&account.id);
    // Before anything is read or planned: rows of a request whose answer was lost are
    // followed or released here, never planned while that is unknown.
    let recovery = if ctx.dry_run {
        Recovery::default()
    } else {
        recover(ctx, &client, run_id).await?
    };
    let reads = if ctx.dry_run {
        None
    } else {
        // Read before write: what Constant Contact holds now for every existing contact the
        // rows would add to a list, applied to the store before the guard plans.
        let targets = {
            let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
            store::outbound::read_targets(&mut conn, &account.id)
                .await
                .context("reading the contacts the push would add to lists")?
        };
        let filter = super::lists::lists_filter(account);
        Some(read_before_write(ctx, &client, run_id, filter.as_ref(), &targets).await?)
    };
    let mut stats = PushStats {
        read_before_write: reads,
        recovery,
        dry_run: ctx.dry_run,
        plan: ctx.dry_run.then(|| DryPlan {
            note: DRY_RUN_NOTE.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    submit(ctx, &client, run_id, &mut stats).await?;
    if ctx.dry_run {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        stats.in_flight_left = store::activities::open(&mut conn, &account.id)
            .await
            .context("counting activities in flight")?
            .len() as u64;
    } else {
        poll(ctx, &client, run_id, &mut stats).await?;
    }
    stats.completed += stats.put.completed;
    stats.skipped += stats.put.skipped;
    stats.failed += stats.put.failed;
    stats.retrying += stats.put.retrying;
    stats.api_requests = client.requests_sent();
    stats.requests = RequestCounts {
        reads_before_write: stats.read_before_write.as_ref().map_or(0, |r| r.requests),
        fallback_reads: stats.fallback_reads,
        put_reads: stats.put.reads,
        puts: stats.put.puts,
        submits: stats.batches_submitted + stats.removals_submitted + stats.deletes_submitted,
        polls: stats.activities_polled,
        confirms: stats.confirm_requests,
        recovery: stats.recovery.requests,
        total: stats.api_requests,
    };
    Ok(serde_json::to_value(stats)?)
}

/// Refuses to push on a store older than the primary: the pulls a push needs
/// ([`PUSH_NEEDS`](crate::core::cycle::PUSH_NEEDS)) must have succeeded after the previous
/// push started.
async fn check_fresh(ctx: &JobContext, account: &str, run_id: Uuid) -> anyhow::Result<()> {
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let latest = store::runs::latest_runs(&mut conn, account, run_id)
        .await
        .context("reading the latest pull runs")?;
    push_is_fresh(&latest).map_err(|why| {
        anyhow::anyhow!(
            "push refused for account {account}: {why} (a push never runs on a store older than \
             Constant Contact); run `ccsync sync --job push`, which pulls first"
        )
    })
}

/// Plans every due pending row, chunk by chunk, and submits the batches.
#[instrument(skip_all)]
async fn submit(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let account = client.account().to_string();
    let s = &ctx.settings.sync;
    let limits = batch::Limits {
        max_contacts: s.import_max_contacts,
        max_bytes: s.import_max_bytes,
    };
    let chunk = s.import_max_contacts.max(1) as i64;
    let known = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::outbound::known_lists(&mut conn, &account)
            .await
            .context("reading the list catalogue")?
    };
    let mut after = 0i64;
    loop {
        if ctx.cancel.is_cancelled() {
            stats.stopped.get_or_insert_with(|| "cancelled".into());
            break;
        }
        let mut tx = ctx
            .pool
            .begin()
            .await
            .context("beginning the plan transaction")?;
        let rows = store::outbound::pending_chunk(&mut tx, &account, after, chunk)
            .await
            .context("reading pending outbound rows")?;
        let Some(last) = rows.last() else {
            tx.rollback().await.ok();
            break;
        };
        after = last.id;
        stats.rows_considered += rows.len() as u64;
        let input = store::outbound::guard_input(&mut tx, &account, &rows, known.clone())
            .await
            .context("reading the pulled store for the guard")?;
        let mut plan = guard::plan(&rows, &input);
        let cf = input.custom_fields.clone();
        let bases: super::put::Bases = plan
            .puts
            .iter()
            .filter_map(|i| {
                input
                    .contacts
                    .get(&i.email)
                    .map(|p| (i.email.clone(), p.clone()))
            })
            .collect();
        drop(input);
        drop(rows);
        // Above put_max_rows field-only changes in this run, the rest go out as imports
        // naming only the lists the contact is on (read just before): two requests per
        // contact would eat the day's budget.
        let limit = s.put_max_rows;
        let puts_so_far = stats.put.contacts - stats.put.unsubscribes;
        let room = if limit == 0 {
            usize::MAX
        } else {
            limit.saturating_sub(puts_so_far) as usize
        };
        let fallback: Vec<Item> = if plan.puts.len() > room {
            let (keep, over): (Vec<Item>, Vec<Item>) = {
                let mut n = 0usize;
                std::mem::take(&mut plan.puts).into_iter().partition(|i| {
                    let unsub = bases
                        .get(&i.email)
                        .is_some_and(|p| p.permission_to_send.as_deref() == Some("unsubscribed"));
                    let nulls = i.fields.values().any(Value::is_null);
                    let k = unsub || nulls || n < room;
                    if !unsub && !nulls && n < room {
                        n += 1;
                    }
                    k
                })
            };
            plan.puts = keep;
            over
        } else {
            Vec::new()
        };
        let cut = batch::cut(plan.items, limits);
        let mut failed = plan.failed;
        for (item, size) in &cut.too_large {
            for id in &item.row_ids {
                failed.push(Terminal {
                    row_id: *id,
                    email: item.email.clone(),
                    contact_id: item.contact_id,
                    reason: format!(
                        "the contact alone serialises to {size} bytes, more than import_max_bytes ({})",
                        limits.max_bytes
                    ),
                });
            }
        }
        stats.skipped += plan.skipped.len() as u64;
        stats.failed_invalid += failed.len() as u64;
        stats.conflicts += plan.conflicts.len() as u64;
        stats.deferred += plan.deferred.len() as u64;
        stats.already_there += plan.already.len() as u64;
        let mut log: Vec<LocalChange> = plan
            .conflicts
            .iter()
            .map(|c| LocalChange {
                contact_id: c.contact_id,
                email: c.email.clone(),
                kind: "conflict",
                field: Some(c.field.clone()),
                old_value: Some(c.primary.clone()),
                new_value: Some(json!({"outbound_id": c.row_id, "value": c.local})),
            })
            .collect();
        log.extend(plan.skipped.iter().map(|t| LocalChange {
            contact_id: t.contact_id,
            email: t.email.clone(),
            kind: "skipped",
            field: None,
            old_value: None,
            new_value: Some(json!({"outbound_id": t.row_id, "reason": t.reason})),
        }));
        if let Some(p) = stats.plan.as_mut() {
            for t in &plan.skipped {
                sample(&mut p.skipped, terminal_json(t));
            }
            for t in &failed {
                sample(&mut p.failed, terminal_json(t));
            }
            for t in &plan.deferred {
                sample(&mut p.deferred, terminal_json(t));
            }
            for t in &plan.already {
                sample(&mut p.already_there, terminal_json(t));
            }
            for c in &plan.conflicts {
                sample(
                    &mut p.conflicts,
                    json!({"id": c.row_id, "email": c.email, "field": c.field,
                           "local": c.local, "constant_contact": c.primary}),
                );
            }
            for i in plan.puts.iter().chain(&fallback) {
                sample(
                    &mut p.puts,
                    json!({"rows": i.row_ids, "email": i.email, "fields": i.fields}),
                );
            }
            for d in &plan.directs {
                sample(
                    &mut p.directs,
                    json!({"op": d.op.as_str(), "rows": d.row_ids, "email": d.email,
                           "list_ids": d.list_ids}),
                );
            }
            for b in &cut.batches {
                let emails: Vec<&str> = b.items.iter().take(5).map(|i| i.email.as_str()).collect();
                sample(
                    &mut p.batches,
                    json!({"list_ids": b.list_ids, "contacts": b.items.len(),
                           "rows": b.row_ids().count(), "bytes": b.body.len(),
                           "first_emails": emails}),
                );
            }
            tx.rollback().await.ok();
            continue;
        }
        let (ids, reasons) = split(&plan.skipped);
        store::outbound::set_state(&mut tx, Pending, &ids, Skipped, &reasons)
            .await
            .context("marking rows skipped")?;
        let (ids, reasons) = split(&failed);
        store::outbound::set_state(&mut tx, Pending, &ids, Failed, &reasons)
            .await
            .context("marking invalid rows failed")?;
        let (ids, reasons) = split(&plan.already);
        stats.completed += store::outbound::set_state(&mut tx, Pending, &ids, Completed, &reasons)
            .await
            .context("marking rows already in Constant Contact completed")?;
        store::outbound::append_changes(&mut tx, &account, run_id, &log)
            .await
            .context("logging conflicts and skipped rows")?;
        tx.commit().await.context("committing the push plan")?;
        // Unsubscribes first, then field-only PUTs (each after a fresh GET).
        let mut writes: Vec<Write<'_>> = plan
            .directs
            .iter()
            .filter(|d| d.op == Op::Unsubscribe)
            .map(Write::Unsubscribe)
            .collect();
        writes.extend(plan.puts.iter().filter_map(|item| {
            bases
                .get(&item.email)
                .map(|base| Write::Fields { item, base })
        }));
        if stats.stopped.is_none() && !writes.is_empty() {
            let filter = ctx
                .settings
                .accounts
                .iter()
                .find(|a| a.id == account)
                .and_then(super::lists::lists_filter);
            if let Some(why) = write_all(
                ctx,
                client,
                run_id,
                &cf,
                filter.as_ref(),
                &writes,
                &mut stats.put,
            )
            .await?
            {
                stats.stopped = Some(why);
            }
        }
        drop(writes);
        for r in removal_requests(&plan.directs) {
            if stats.stopped.is_some() || ctx.cancel.is_cancelled() {
                stats.stopped.get_or_insert_with(|| "cancelled".into());
                break;
            }
            send(ctx, client, run_id, r, stats).await?;
        }
        let (fallback, read_at) = if !fallback.is_empty() && stats.stopped.is_none() {
            let (b, at) = fallback_batches(ctx, client, run_id, fallback, limits, stats).await?;
            (b, Some(at))
        } else {
            (Vec::new(), None)
        };
        let fallback_from = cut.batches.len();
        for (n, b) in cut.batches.into_iter().chain(fallback).enumerate() {
            if stats.stopped.is_some() {
                // Left pending for the next run.
                continue;
            }
            if ctx.cancel.is_cancelled() {
                stats.stopped = Some("cancelled".into());
                continue;
            }
            if let (Some(at), true) = (read_at, n >= fallback_from) {
                let waited = at.elapsed().as_millis() as u64;
                stats.fallback_read_to_submit_ms =
                    Some(stats.fallback_read_to_submit_ms.unwrap_or(0).max(waited));
            }
            send(ctx, client, run_id, Request::import(b), stats).await?;
        }
    }
    Ok(())
}

/// The removals and deletes of a plan as requests: removals grouped by their exact list set
/// (`remove_list_memberships` removes every contact of a request from every list of it),
/// at most 500 contacts per request.
fn removal_requests(directs: &[Direct]) -> Vec<Request> {
    let mut out = Vec::new();
    let mut groups: std::collections::BTreeMap<Vec<Uuid>, Vec<&Direct>> = Default::default();
    let mut deletes: Vec<&Direct> = Vec::new();
    for d in directs {
        match d.op {
            Op::RemoveFromLists => groups
                .entry(d.list_ids.iter().copied().collect())
                .or_default()
                .push(d),
            Op::Delete => deletes.push(d),
            _ => {}
        }
    }
    for (lists, ds) in groups {
        for chunk in ds.chunks(DIRECT_MAX_CONTACTS) {
            out.push(Request::direct(Kind::Remove, lists.clone(), chunk));
        }
    }
    for chunk in deletes.chunks(DIRECT_MAX_CONTACTS) {
        out.push(Request::direct(Kind::Delete, Vec::new(), chunk));
    }
    out
}

/// `source.contact_ids` of `remove_list_memberships`, `contact_ids` of `contact_delete`.
const DIRECT_MAX_CONTACTS: usize = 500;

/// Field-only changes above `put_max_rows`: each contact read again just before (per
/// contact or per list, whichever is cheaper), then imported with exactly the lists it is on
/// at that read — an import needs a list, and naming one the contact is on re-adds nobody.
/// The window left open: a leave between this read and the import's processing would be
/// undone (measured in `fallback_read_to_submit_ms`). Contacts on no list stay pending
/// (the next run PUTs them).
async fn fallback_batches(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    items: Vec<Item>,
    limits: batch::Limits,
    stats: &mut PushStats,
) -> anyhow::Result<(Vec<Batch>, std::time::Instant)> {
    let account = client.account();
    let mut emails: Vec<String> = items.iter().map(|i| i.email.clone()).collect();
    emails.sort_unstable();
    emails.dedup();
    let before = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::outbound::memberships_by_email(&mut conn, account, &emails)
            .await
            .context("reading memberships before the fallback read")?
    };
    let mut lists: Vec<Uuid> = before.values().flatten().copied().collect();
    lists.sort_unstable();
    lists.dedup();
    let all_on = emails
        .iter()
        .all(|e| before.get(e).is_some_and(|l| !l.is_empty()));
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let sent_before = client.requests_sent();
    read_contacts(ctx, client, run_id, None, &refs, &lists, all_on)
        .await
        .context("reading contacts just before a fallback import")?;
    stats.fallback_reads += client.requests_sent() - sent_before;
    let now = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::outbound::memberships_by_email(&mut conn, account, &emails)
            .await
            .context("reading memberships after the fallback read")?
    };
    let read_at = std::time::Instant::now();
    let mut ready = Vec::new();
    for mut item in items {
        let on: std::collections::BTreeSet<Uuid> = now
            .get(&item.email)
            .into_iter()
            .flatten()
            .copied()
            .take(guard::MAX_LISTS)
            .collect();
        if on.is_empty() {
            continue; // stays pending: PUT next run
        }
        stats.fallback_rows += item.row_ids.len() as u64;
        item.notes.push(
            "pushed by an import naming only the lists the contact was on at a read just              before it (more field-only rows than sync.put_max_rows in one run)"
                .into(),
        );
        item.list_ids = on;
        ready.push(item);
    }
    // Too large items cannot happen here: each was a valid PUT item, far below the limit.
    Ok((batch::cut(ready, limits).batches, read_at))
}

fn split(ts: &[Terminal]) -> (Vec<i64>, Vec<Option<String>>) {
    ts.iter()
        .map(|t| (t.row_id, Some(t.reason.clone())))
        .unzip()
}

/// The kind of a bulk activity (`import_activities.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Import,
    Remove,
    Delete,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Import => "contacts_json_import",
            Kind::Remove => "remove_list_memberships",
            Kind::Delete => "contact_delete",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "remove_list_memberships" => Kind::Remove,
            "contact_delete" => Kind::Delete,
            _ => Kind::Import,
        }
    }
}

/// One bulk request and the rows it carries.
struct Request {
    kind: Kind,
    list_ids: Vec<Uuid>,
    /// (row id, reason to record with `submitted`).
    rows: Vec<(i64, Option<String>)>,
    contacts: usize,
    /// The import body, or the contact ids of a removal / delete.
    body: Vec<u8>,
    contact_ids: Vec<Uuid>,
}

impl Request {
    fn import(b: Batch) -> Request {
        let mut rows = Vec::new();
        for it in &b.items {
            let note = (!it.notes.is_empty()).then(|| it.notes.join("; "));
            for id in &it.row_ids {
                rows.push((*id, note.clone()));
            }
        }
        Request {
            kind: Kind::Import,
            list_ids: b.list_ids,
            rows,
            contacts: b.items.len(),
            body: b.body,
            contact_ids: Vec::new(),
        }
    }

    fn direct(kind: Kind, list_ids: Vec<Uuid>, ds: &[&Direct]) -> Request {
        Request {
            kind,
            list_ids,
            rows: ds
                .iter()
                .flat_map(|d| d.row_ids.iter().map(|id| (*id, None)))
                .collect(),
            contacts: ds.len(),
            body: Vec::new(),
            contact_ids: ds.iter().map(|d| d.contact_id).collect(),
        }
    }
}

/// Sends one bulk request (import, list removal or delete) and records the outcome. The
/// request and its rows are recorded (`send_attempts`) in a commit before it is sent; the
/// answer's transaction marks the rows `submitted` with the activity and ends that record.
/// When the answer is lost the record stays, and the next push looks for the activity
/// before anything is sent again ([`recover`]).
#[instrument(skip_all, fields(kind = r.kind.as_str(), lists = r.list_ids.len(), rows = r.rows.len()))]
async fn send(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    r: Request,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let account = client.account().to_string();
    let bytes = r.body.len();
    let (ids, reasons): (Vec<i64>, Vec<Option<String>>) = r.rows.into_iter().unzip();
    let list_ids = r.list_ids;
    let attempt = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::sends::begin(
            &mut conn,
            &account,
            &store::sends::NewAttempt {
                kind: r.kind.as_str(),
                list_ids: &list_ids,
                row_ids: &ids,
                reasons: &reasons,
                body_bytes: bytes as i32,
                run_id,
            },
        )
        .await
        .context("recording the request before sending it")?
    };
    let answer = match r.kind {
        Kind::Import => client.contacts_json_import(r.body).await,
        Kind::Remove => {
            client
                .remove_list_memberships(&r.contact_ids, &list_ids)
                .await
        }
        Kind::Delete => client.contact_delete(&r.contact_ids).await,
    };
    let mut tx = ctx
        .pool
        .begin()
        .await
        .context("beginning the submit transaction")?;
    match answer {
        Ok(activity) => {
            store::outbound::mark_submitted(&mut tx, &ids, &reasons, &activity.activity_id)
                .await
                .context("marking rows submitted")?;
            store::activities::insert(
                &mut tx,
                &account,
                &store::activities::NewActivity {
                    activity_id: &activity.activity_id,
                    state: if activity.state.is_empty() {
                        "initialized"
                    } else {
                        &activity.state
                    },
                    list_ids: &list_ids,
                    row_count: ids.len() as i32,
                    body_bytes: bytes as i32,
                    run_id,
                    kind: r.kind.as_str(),
                    submitted_at: None,
                },
            )
            .await
            .context("recording the activity")?;
            store::sends::end(&mut tx, attempt)
                .await
                .context("ending the send attempt")?;
            tx.commit()
                .await
                .context("committing the submitted request")?;
            match r.kind {
                Kind::Import => {
                    stats.batches_submitted += 1;
                    stats.bytes_submitted += bytes as u64;
                }
                Kind::Remove => stats.removals_submitted += 1,
                Kind::Delete => stats.deletes_submitted += 1,
            }
            stats.rows_submitted += ids.len() as u64;
            info!(activity_id = %activity.activity_id, kind = r.kind.as_str(), contacts = r.contacts, bytes, "activity submitted");
        }
        Err(e) if e.effect_unknown() => {
            // 5xx, timeout, reset, a body that does not decode: the activity may exist.
            // Counted as a failed attempt (backoff, a dead letter after max_push_attempts),
            // but the rows keep their send attempt: the next push looks for the activity
            // in Constant Contact and follows it if found, and sends again only if not.
            let why = format!(
                "{e}; the answer was lost, so whether Constant Contact ran it is unknown: the \
                 next push looks for its activity before anything is sent again"
            );
            let (retry, dead) = ctx
                .failed_attempt(&mut tx, Pending, &ids, &why)
                .await
                .context("recording a lost answer")?;
            store::sends::answer_lost(&mut tx, attempt, &e.to_string())
                .await
                .context("recording a lost answer")?;
            tx.commit().await.context("committing a lost answer")?;
            warn!(error = %crate::telemetry::Chain(&e), retry, dead, "activity answer lost; looked for before any re-send");
            stats.retrying += retry;
            stats.failed += dead;
            stats.answers_lost += 1;
        }
        Err(
            e @ (ApiError::TooManyActivities { .. }
            | ApiError::QuotaExceeded { .. }
            | ApiError::Throttled { .. }
            | ApiError::Cancelled),
        ) => {
            // Nothing was done: the rows stay pending for the next run.
            store::sends::release(&mut tx, attempt, None)
                .await
                .context("releasing a request not sent")?;
            tx.commit().await.context("committing a request not sent")?;
            warn!(error = %crate::telemetry::Chain(&e), "activity not submitted; rows stay pending");
            stats.stopped = Some(e.to_string());
        }
        Err(e @ (ApiError::Auth(_) | ApiError::Unauthorized)) => {
            store::sends::release(&mut tx, attempt, None)
                .await
                .context("releasing a request not sent")?;
            tx.commit().await.context("committing a request not sent")?;
            return Err(e).context("submitting an activity");
        }
        Err(e) => {
            // A refusal (4xx): nothing was done. Counted as a failed attempt (retried with
            // backoff, a dead letter after max_push_attempts).
            store::sends::release(&mut tx, attempt, None)
                .await
                .context("releasing a refused request")?;
            let (retry, dead) = ctx
                .failed_attempt(&mut tx, Pending, &ids, &format!("{e}"))
                .await
                .context("recording a failed submit")?;
            tx.commit().await.context("committing a failed submit")?;
            warn!(error = %crate::telemetry::Chain(&e), retry, dead, "activity submit failed");
            stats.retrying += retry;
            stats.failed += dead;
        }
    }
    Ok(())
}

/// Send attempts left without a recorded answer by an earlier run (ccsync stopped between a
/// request and its commit, or the answer was lost): each is matched to an activity of
/// `GET /activities` that ccsync does not know (`core::sends`). A match is followed like any
/// submitted activity (polled, read back, confirmed); an attempt that reached Constant
/// Contact as nothing has its rows planned again; one that may still be in progress waits.
/// Costs nothing when no attempt is left; otherwise one request per 500 recent activities.
#[instrument(skip_all)]
async fn recover(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
) -> anyhow::Result<Recovery> {
    let mut stats = Recovery::default();
    let account = client.account().to_string();
    let attempts = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::sends::open(&mut conn, &account)
            .await
            .context("reading send attempts left without an answer")?
    };
    let Some(earliest) = attempts.iter().map(|a| a.started_at).min() else {
        return Ok(stats);
    };
    let sent_before = client.requests_sent();
    let listed = match recent_activities(client, sends::window_start(earliest)).await {
        Ok(l) => l,
        Err(e @ (ApiError::Auth(_) | ApiError::Unauthorized)) => {
            return Err(e).context("listing activities to resolve lost answers")
        }
        Err(e) => {
            // Without the list nothing is decided: the rows wait (never re-sent blindly).
            warn!(error = %crate::telemetry::Chain(&e), attempts = attempts.len(), "cannot list activities; send attempts without an answer wait");
            stats.waiting += attempts.len() as u64;
            stats.requests += client.requests_sent() - sent_before;
            return Ok(stats);
        }
    };
    stats.requests += client.requests_sent() - sent_before;
    let ids: Vec<String> = listed.iter().map(|a| a.activity_id.clone()).collect();
    let known = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::activities::known(&mut conn, &ids)
            .await
            .context("reading the activities ccsync knows")?
    };
    let unknown: Vec<sends::Unknown> = listed
        .iter()
        .filter(|a| !known.contains(&a.activity_id))
        .map(|a| sends::Unknown {
            activity_id: a.activity_id.clone(),
            created_at: a.created(),
        })
        .collect();
    let core_attempts: Vec<sends::Attempt> = attempts
        .iter()
        .map(|a| sends::Attempt {
            id: a.id,
            started_at: a.started_at,
            answer_lost: a.lost_answer.is_some(),
        })
        .collect();
    let timeout = chrono::Duration::from_std(ctx.settings.constant_contact.request_timeout)
        .unwrap_or(chrono::Duration::MAX);
    for res in sends::resolve(&core_attempts, &unknown, chrono::Utc::now(), timeout) {
        let mut tx = ctx.pool.begin().await.context("beginning a transaction")?;
        match res {
            sends::Resolution::Adopt {
                attempt,
                activity_id,
            } => {
                let Some(a) = attempts.iter().find(|a| a.id == attempt) else {
                    continue;
                };
                let state = listed
                    .iter()
                    .find(|l| l.activity_id == activity_id)
                    .map(|l| l.state.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or("initialized");
                let rows = store::sends::adopt(&mut tx, a, &activity_id)
                    .await
                    .context("following the activity of a lost answer")?;
                store::activities::insert(
                    &mut tx,
                    &account,
                    &store::activities::NewActivity {
                        activity_id: &activity_id,
                        state,
                        list_ids: &a.list_ids,
                        row_count: a.row_ids.len() as i32,
                        body_bytes: a.body_bytes,
                        run_id: a.run_id.unwrap_or(run_id),
                        kind: &a.kind,
                        submitted_at: Some(a.started_at),
                    },
                )
                .await
                .context("recording the activity of a lost answer")?;
                tx.commit()
                    .await
                    .context("committing the activity of a lost answer")?;
                info!(%activity_id, kind = %a.kind, rows, started_at = %a.started_at, "a request whose answer was lost became this activity: followed, not sent again");
                stats.adopted += 1;
            }
            sends::Resolution::Release { attempt } => {
                let rows = store::sends::release(
                    &mut tx,
                    attempt,
                    Some("sent earlier without a recorded answer; Constant Contact shows no activity \
                     from it, so it is planned again"),
                )
                .await
                .context("releasing a request that did not reach Constant Contact")?;
                tx.commit().await.context("committing a released request")?;
                info!(%attempt, rows, "a request whose answer was lost made no activity: planned again");
                stats.released += 1;
            }
            sends::Resolution::Wait { attempt } => {
                tx.rollback().await.ok();
                info!(%attempt, "a request without a recorded answer may still be in progress; looked for again later");
                stats.waiting += 1;
            }
        }
    }
    Ok(stats)
}

/// The account's activities from `GET /activities`, newest first, down to the first page
/// that reaches below `from` (or the end of the ten days Constant Contact keeps).
async fn recent_activities(
    client: &AccountClient,
    from: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Activity>, ApiError> {
    let mut out = Vec::new();
    let mut page = client.recent_activities().await?;
    loop {
        // An activity without a readable time might be anywhere: keep walking.
        let reached = page
            .activities
            .iter()
            .any(|a| a.created().is_some_and(|t| t < from));
        let next = crate::ctct::dto::PagingLinks::next_href(&page.links).map(str::to_string);
        out.append(&mut page.activities);
        match next {
            Some(href) if !reached => {
                page = client.activities_page(client.next_url(&href)?).await?
            }
            _ => return Ok(out),
        }
    }
}

/// Polls every activity in flight for the account until none is left.
#[instrument(skip_all)]
async fn poll(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let account = client.account().to_string();
    let s = &ctx.settings.sync;
    let mut delay = s.poll_initial;
    loop {
        let open = {
            let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
            store::activities::open(&mut conn, &account)
                .await
                .context("reading activities in flight")?
        };
        if open.is_empty() {
            stats.in_flight_left = 0;
            return Ok(());
        }
        let mut left = 0u64;
        for (id, submitted_at, kind) in open {
            let kind = Kind::parse(&kind);
            let age = (chrono::Utc::now() - submitted_at)
                .to_std()
                .unwrap_or_default();
            if age > s.poll_timeout {
                finish_abandoned(
                    ctx,
                    &id,
                    &format!(
                        "activity {id} reached no terminal state within poll_timeout ({})",
                        humantime::format_duration(s.poll_timeout)
                    ),
                    stats,
                )
                .await?;
                continue;
            }
            stats.activities_polled += 1;
            match client.activity(&id).await {
                Ok(a) if a.is_terminal() => {
                    if a.state == "completed" {
                        read_back(ctx, client, run_id, &a.activity_id, kind, stats).await?;
                    }
                    finish(ctx, &account, &a, kind, stats).await?
                }
                Ok(a) => {
                    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
                    store::activities::record_poll(
                        &mut conn,
                        &id,
                        &a.state,
                        a.percent_done,
                        a.status.as_ref(),
                        a.activity_errors.as_ref().map(|e| json!(e)).as_ref(),
                        false,
                    )
                    .await
                    .context("recording a poll")?;
                    left += 1;
                }
                Err(ApiError::Status { status: 404, .. }) => {
                    finish_abandoned(
                        ctx,
                        &id,
                        &format!("activity {id} is unknown or expired (404)"),
                        stats,
                    )
                    .await?;
                }
                Err(ApiError::Cancelled) => {
                    anyhow::bail!("cancelled while polling; activities in flight are polled again by the next run")
                }
                Err(e) if e.is_retryable() => {
                    warn!(activity_id = %id, error = %crate::telemetry::Chain(&e), "poll failed; polled again later");
                    left += 1;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("polling activity {id}"));
                }
            }
        }
        stats.in_flight_left = left;
        if left == 0 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.cancel.cancelled() => anyhow::bail!(
                "cancelled while polling; {left} activities in flight are polled again by the next run"
            ),
        }
        delay = (delay * 2).min(s.poll_max);
    }
}

/// Confirm after write, step 1: reads what Constant Contact now holds for the contacts of
/// an ended import (per contact or per list, whichever costs fewer requests) and applies
/// it to the store, outside any transaction. Step 2 is `finish`, which judges each row on
/// that fresh store (`core::confirm`). A crash between the two re-reads after the restart
/// (the activity is still in flight in the store).
#[instrument(skip_all, fields(activity_id = %activity_id))]
async fn read_back(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    activity_id: &str,
    kind: Kind,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let (rows, lists) = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        let rows = store::outbound::rows_of_activity(&mut conn, activity_id)
            .await
            .context("reading the rows of an ended activity")?;
        let lists = store::activities::lists_and_submitted_at(&mut conn, activity_id)
            .await
            .context("reading an ended activity")?
            .map(|(l, _)| l)
            .unwrap_or_default();
        (rows, lists)
    };
    let mut emails: Vec<&str> = rows.iter().map(|(_, e)| e.as_str()).collect();
    emails.sort_unstable();
    emails.dedup();
    if emails.is_empty() {
        return Ok(());
    }
    let sent_before = client.requests_sent();
    // A deleted contact is seen only by a per-contact read (`status=all`).
    let (lists, all_on) = match kind {
        Kind::Delete => (Vec::new(), false),
        _ => (lists, true),
    };
    let read = read_contacts(ctx, client, run_id, None, &emails, &lists, all_on)
        .await
        .context("reading the contacts of an ended import")?;
    stats.confirm_requests += client.requests_sent() - sent_before;
    stats.confirm_reader.get_or_insert(read.plan.reader);
    Ok(())
}

/// An activity that will not be followed any more: its rows count a failed attempt.
async fn finish_abandoned(
    ctx: &JobContext,
    id: &str,
    reason: &str,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    warn!(activity_id = %id, reason, "activity abandoned");
    let mut tx = ctx.pool.begin().await.context("beginning a transaction")?;
    let rows = store::outbound::rows_of_activity(&mut tx, id)
        .await
        .context("reading the rows of an abandoned activity")?;
    let ids: Vec<i64> = rows.iter().map(|(i, _)| *i).collect();
    let (retry, dead) = ctx
        .failed_attempt(&mut tx, Submitted, &ids, reason)
        .await
        .context("recording an abandoned activity's attempt")?;
    store::activities::record_poll(&mut tx, id, "abandoned", None, None, None, true)
        .await
        .context("recording an abandoned activity")?;
    tx.commit()
        .await
        .context("committing an abandoned activity")?;
    stats.retrying += retry;
    stats.failed += dead;
    stats.activities_finished += 1;
    Ok(())
}

/// Maps a terminal activity back to its rows, in one transaction.
#[instrument(skip_all, fields(activity_id = %a.activity_id, state = %a.state))]
async fn finish(
    ctx: &JobContext,
    account: &str,
    a: &Activity,
    kind: Kind,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let mut tx = ctx.pool.begin().await.context("beginning a transaction")?;
    let rows = store::outbound::rows_of_activity(&mut tx, &a.activity_id)
        .await
        .context("reading the rows of an activity")?;
    let messages = a.error_messages();
    let errors_json = a.activity_errors.as_ref().map(|e| json!(e));
    if a.state == "completed" && kind != Kind::Import {
        let submitted = store::outbound::submitted_rows(&mut tx, &a.activity_id)
            .await
            .context("reading the rows of an activity")?;
        let lists = store::activities::lists_and_submitted_at(&mut tx, &a.activity_id)
            .await
            .context("reading an ended activity")?
            .map(|(l, _)| l)
            .unwrap_or_default();
        let input = store::outbound::guard_input(&mut tx, account, &submitted, Default::default())
            .await
            .context("reading the store after the activity")?;
        let op = if kind == Kind::Delete {
            Op::Delete
        } else {
            Op::RemoveFromLists
        };
        let verdicts = confirm_direct(op, &submitted, &lists, &input, &messages);
        let (mut done, mut fail) = (vec![], vec![]);
        for (id, v) in verdicts {
            match v {
                Verdict::Completed(note) => done.push((id, note)),
                Verdict::Skipped(why) | Verdict::Failed(why) => fail.push((id, Some(why))),
            }
        }
        let (ids, notes): (Vec<i64>, Vec<Option<String>>) = done.into_iter().unzip();
        stats.completed += store::outbound::set_state(&mut tx, Submitted, &ids, Completed, &notes)
            .await
            .context("marking confirmed rows completed")?;
        let (ids, why): (Vec<i64>, Vec<Option<String>>) = fail.into_iter().unzip();
        let failed = store::outbound::set_state(&mut tx, Submitted, &ids, Failed, &why)
            .await
            .context("marking unconfirmed rows failed")?;
        stats.failed += failed;
        stats.unconfirmed += failed;
    } else if a.state == "completed" {
        let counters = a.counters();
        // Errors that name a row keep the API's message; every other row is judged on what
        // Constant Contact shows now (read by `read_back` just before).
        let outcome = map_completion(&rows, &messages, &counters);
        let named: HashMap<i64, &String> = outcome.failed.iter().map(|(i, m)| (*i, m)).collect();
        let submitted = store::outbound::submitted_rows(&mut tx, &a.activity_id)
            .await
            .context("reading the rows of an activity")?;
        let ids: Vec<i64> = submitted.iter().map(|r| r.id).collect();
        let mut dropped = store::outbound::dropped_fields(&mut tx, account, &ids)
            .await
            .context("reading the conflicts of an activity's rows")?;
        let (lists, submitted_at) =
            store::activities::lists_and_submitted_at(&mut tx, &a.activity_id)
                .await
                .context("reading an ended activity")?
                .unwrap_or_default();
        let input = store::outbound::guard_input(&mut tx, account, &submitted, Default::default())
            .await
            .context("reading the store after the import")?;
        let rows_in: Vec<SentRow> = submitted
            .into_iter()
            .map(|row| SentRow {
                dropped: dropped.remove(&row.id).unwrap_or_default(),
                row,
            })
            .collect();
        let verdicts = confirm(&rows_in, &lists, submitted_at, &input, &counters);
        let (mut done, mut skip, mut fail, mut retry_ids) = (vec![], vec![], vec![], vec![]);
        for (id, v) in verdicts {
            if let Some(m) = named.get(&id) {
                // The API named this row in an error: it failed, with the API's message.
                fail.push((id, Some((*m).clone())));
                continue;
            }
            match v {
                Verdict::Completed(note) => done.push((id, note)),
                Verdict::Skipped(why) => skip.push((id, Some(why))),
                Verdict::Failed(_) if outcome.unprocessed.contains(&id) => retry_ids.push(id),
                Verdict::Failed(why) => fail.push((id, Some(why))),
            }
        }
        let unzip = |v: Vec<(i64, Option<String>)>| -> (Vec<i64>, Vec<Option<String>>) {
            v.into_iter().unzip()
        };
        let (done_ids, done_notes) = unzip(done);
        let completed =
            store::outbound::set_state(&mut tx, Submitted, &done_ids, Completed, &done_notes)
                .await
                .context("marking confirmed rows completed")?;
        let (skip_ids, skip_why) = unzip(skip);
        let skipped = store::outbound::set_state(&mut tx, Submitted, &skip_ids, Skipped, &skip_why)
            .await
            .context("marking rows not added to lists skipped")?;
        let (fail_ids, fail_why) = unzip(fail);
        let failed = store::outbound::set_state(&mut tx, Submitted, &fail_ids, Failed, &fail_why)
            .await
            .context("marking unconfirmed rows failed")?;
        let (retry, dead) = ctx
            .failed_attempt(
                &mut tx,
                Submitted,
                &retry_ids,
                "not processed by the import (its body may have been cut short)",
            )
            .await
            .context("recording rows an import did not process")?;
        let cannot = counters.cannot_add_to_list_count.unwrap_or(0);
        if cannot > 0 {
            warn!(activity_id = %a.activity_id, cannot_add_to_list = cannot,
                  "contacts unsubscribed since the pull were not added to lists");
        }
        stats.cannot_add_to_list += cannot;
        stats.completed += completed;
        stats.skipped += skipped;
        stats.failed += failed + dead;
        stats.unconfirmed += failed;
        stats.retrying += retry;
    } else {
        let msg = if messages.is_empty() {
            format!(
                "{} activity {} ended {}",
                kind.as_str(),
                a.activity_id,
                a.state
            )
        } else {
            format!(
                "{} activity {} ended {}: {}",
                kind.as_str(),
                a.activity_id,
                a.state,
                messages.join("; ")
            )
        };
        let ids: Vec<i64> = rows.iter().map(|(i, _)| *i).collect();
        let (retry, dead) = ctx
            .failed_attempt(&mut tx, Submitted, &ids, &msg)
            .await
            .context("recording a failed activity's attempt")?;
        warn!(activity_id = %a.activity_id, state = %a.state, retry, dead, "import activity did not complete");
        stats.retrying += retry;
        stats.failed += dead;
    }
    store::activities::record_poll(
        &mut tx,
        &a.activity_id,
        &a.state,
        a.percent_done,
        a.status.as_ref(),
        errors_json.as_ref(),
        true,
    )
    .await
    .context("recording the finished activity")?;
    tx.commit()
        .await
        .context("committing a finished activity")?;
    stats.activities_finished += 1;
    info!(activity_id = %a.activity_id, state = %a.state, "import activity finished");
    Ok(())
}
