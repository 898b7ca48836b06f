//! The push job (`--job push`): pending `outbound` rows → guard → batches →
//! `POST /activities/contacts_json_import` → `GET /activities/{id}` until a terminal state.
//!
//! Order and transactions (never a transaction across HTTP):
//! 1. Per chunk of pending rows: one transaction locks the rows, reads the freshly pulled
//!    store, plans (guard + batcher) and writes what ends here (`skipped`, invalid rows
//!    `failed`, `conflict`/`skipped` change rows). Commit.
//! 2. Per batch: the POST, outside any transaction; then one transaction marks the batch's
//!    rows `submitted` with the `activity_id` and records the `import_activities` row.
//!    **A crash between the POST and that commit leaves the rows `pending`: the next run
//!    plans and sends them again.** That is safe: the guard runs again on the data pulled
//!    in that run (an import only sets the properties it carries, and the same values twice
//!    are a no-op), and it is the only way to never lose a row, because the lost answer
//!    carried the only reference to the activity.
//! 3. Polling every activity still in flight (`import_activities.finished_at IS NULL`,
//!    including those of an earlier, interrupted run — polled again, never re-sent) with
//!    exponential backoff `poll_initial`…`poll_max`, cancellable, each bounded by
//!    `poll_timeout` from its submission. A terminal state maps back to the rows.
//!
//! A push runs only on a store refreshed from the primary in the same cycle: `run_cycle`
//! runs the account's pull jobs first, and `run_once` refuses to run when the latest
//! contacts pull (and opt-out sweep) of the account did not succeed after the previous push.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, instrument, warn};
use uuid::Uuid;

use super::context::JobContext;
use super::reads::{read_before_write, read_contacts, ReadStats};
use crate::config::AccountSettings;
use crate::core::activity::map_completion;
use crate::core::batch::{self, Batch};
use crate::core::confirm::{confirm, Submitted as SentRow, Verdict};
use crate::core::cycle::push_is_fresh;
use crate::core::guard::{self, Terminal};
use crate::core::reads::Reader;
use crate::core::states::OutboundState::{Completed, Failed, Pending, Skipped, Submitted};
use crate::ctct::activities::Activity;
use crate::ctct::convert::activity_counters;
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
    /// Rows an ended import did not show in Constant Contact (contact, list or value
    /// missing on the read after it): `failed`, never `completed` on a counter's word.
    pub unconfirmed: u64,
    /// Requests spent reading back ended imports, and the reader used.
    pub confirm_requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_reader: Option<Reader>,
    pub api_requests: u64,
    /// Why submitting stopped early (queue full, quota, cancel), if it did.
    pub stopped: Option<String>,
    pub dry_run: bool,
    /// Only with `--dry-run`: what would be pushed or skipped, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<DryPlan>,
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
    stats.api_requests = client.requests_sent();
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
        let plan = guard::plan(&rows, &input);
        drop(input);
        drop(rows);
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
        for b in cut.batches {
            if stats.stopped.is_some() {
                // Left pending for the next run.
                continue;
            }
            if ctx.cancel.is_cancelled() {
                stats.stopped = Some("cancelled".into());
                continue;
            }
            send_batch(ctx, client, run_id, b, stats).await?;
        }
    }
    Ok(())
}

fn split(ts: &[Terminal]) -> (Vec<i64>, Vec<Option<String>>) {
    ts.iter()
        .map(|t| (t.row_id, Some(t.reason.clone())))
        .unzip()
}

/// Backoff of a failed attempt: `poll_max · 2^attempts`, at most 64 × `poll_max`.
fn retry_backoff(ctx: &JobContext) -> (Duration, Duration) {
    let base = ctx.settings.sync.poll_max;
    (base, base.saturating_mul(64))
}

/// POSTs one batch and records the outcome.
#[instrument(skip_all, fields(lists = b.list_ids.len(), rows = b.items.len()))]
async fn send_batch(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    b: Batch,
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let account = client.account().to_string();
    let Batch {
        list_ids,
        items,
        body,
    } = b;
    let bytes = body.len();
    let mut ids = Vec::new();
    let mut reasons = Vec::new();
    for it in &items {
        let note = (!it.notes.is_empty()).then(|| it.notes.join("; "));
        for id in &it.row_ids {
            ids.push(*id);
            reasons.push(note.clone());
        }
    }
    let answer = client.contacts_json_import(body).await;
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
                },
            )
            .await
            .context("recording the import activity")?;
            tx.commit()
                .await
                .context("committing the submitted batch")?;
            stats.batches_submitted += 1;
            stats.rows_submitted += ids.len() as u64;
            stats.bytes_submitted += bytes as u64;
            info!(activity_id = %activity.activity_id, contacts = items.len(), bytes, "import submitted");
        }
        Err(
            e @ (ApiError::TooManyActivities { .. }
            | ApiError::QuotaExceeded { .. }
            | ApiError::Throttled { .. }
            | ApiError::Cancelled),
        ) => {
            // Nothing was done: the rows stay pending, untouched, for the next run.
            tx.rollback().await.ok();
            warn!(error = %crate::telemetry::Chain(&e), "import not submitted; rows stay pending");
            stats.stopped = Some(e.to_string());
        }
        Err(e @ ApiError::Auth(_)) => {
            tx.rollback().await.ok();
            return Err(e).context("submitting an import");
        }
        Err(e) => {
            // 400, 5xx, lost answer: counted as a failed attempt (retried with backoff, a
            // dead letter after max_push_attempts). A lost answer may mean the import did
            // run: sending it again later is safe (see the module comment).
            let (base, cap) = retry_backoff(ctx);
            let (retry, dead) = store::outbound::failed_attempt(
                &mut tx,
                Pending,
                &ids,
                &format!("{e}"),
                ctx.settings.sync.max_push_attempts as i32,
                base,
                cap,
            )
            .await
            .context("recording a failed submit")?;
            tx.commit().await.context("committing a failed submit")?;
            warn!(error = %crate::telemetry::Chain(&e), retry, dead, "import submit failed");
            stats.retrying += retry;
            stats.failed += dead;
        }
    }
    Ok(())
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
        for (id, submitted_at) in open {
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
                        read_back(ctx, client, run_id, &a.activity_id, stats).await?;
                    }
                    finish(ctx, &account, &a, stats).await?
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
    let read = read_contacts(ctx, client, run_id, None, &emails, &lists, true)
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
    let (base, cap) = retry_backoff(ctx);
    let (retry, dead) = store::outbound::failed_attempt(
        &mut tx,
        Submitted,
        &ids,
        reason,
        ctx.settings.sync.max_push_attempts as i32,
        base,
        cap,
    )
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
    stats: &mut PushStats,
) -> anyhow::Result<()> {
    let mut tx = ctx.pool.begin().await.context("beginning a transaction")?;
    let rows = store::outbound::rows_of_activity(&mut tx, &a.activity_id)
        .await
        .context("reading the rows of an activity")?;
    let messages = a.error_messages();
    let errors_json = a.activity_errors.as_ref().map(|e| json!(e));
    if a.state == "completed" {
        let counters = activity_counters(a);
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
        let (base, cap) = retry_backoff(ctx);
        let (retry, dead) = store::outbound::failed_attempt(
            &mut tx,
            Submitted,
            &retry_ids,
            "not processed by the import (its body may have been cut short)",
            ctx.settings.sync.max_push_attempts as i32,
            base,
            cap,
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
            format!("import activity {} ended {}", a.activity_id, a.state)
        } else {
            format!(
                "import activity {} ended {}: {}",
                a.activity_id,
                a.state,
                messages.join("; ")
            )
        };
        let ids: Vec<i64> = rows.iter().map(|(i, _)| *i).collect();
        let (base, cap) = retry_backoff(ctx);
        let (retry, dead) = store::outbound::failed_attempt(
            &mut tx,
            Submitted,
            &ids,
            &msg,
            ctx.settings.sync.max_push_attempts as i32,
            base,
            cap,
        )
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
