//! The push's synchronous writes: field-only changes and application-side unsubscribes
//! through `PUT /contacts/{id}`, each after a fresh `GET` of that contact (API-NOTES §3,
//! §8a). A PUT overwrites every core field, so the body is the contact exactly as read with
//! only the row's properties changed (`core::put`).
//!
//! Per contact: GET → judge (deleted: skipped, never PUT, it would revive the contact;
//! three-way conflicts; already there) → PUT → the answer, which is Constant Contact's
//! copy after the write, is applied to the store and each row is judged on it: `completed`
//! only when every written property (or the permission) is there. The rows stay `pending`
//! until that judgement commits: a crash in between re-reads and re-judges them next run
//! (the value already there is then completed without a second PUT).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use serde_json::{json, Value};
use tracing::{instrument, warn};
use uuid::Uuid;

use super::context::JobContext;
use super::walk::{apply_page, updated_at_mark, PageSpec};
use crate::core::guard::{Direct, Item, Primary};
use crate::core::put::{plan_fields, primary_of, property_value, unsubscribe_body, CustomFieldIds};
use crate::core::states::OutboundState::{Completed, Failed, Pending, Skipped};
use crate::ctct::dto::Contact;
use crate::ctct::page::ContactsPage;
use crate::ctct::{AccountClient, Error as ApiError};
use crate::store::{self, outbound::LocalChange};

/// What the PUT path did in one run (part of the push's stats).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PutStats {
    pub contacts: u64,
    pub unsubscribes: u64,
    /// GETs before the PUTs and the PUTs themselves.
    pub reads: u64,
    pub puts: u64,
    pub completed: u64,
    pub skipped: u64,
    pub failed: u64,
    pub conflicts: u64,
    pub retrying: u64,
}

/// One contact to write: a field change or an unsubscribe.
pub enum Write<'a> {
    Fields { item: &'a Item, base: &'a Primary },
    Unsubscribe(&'a Direct),
}

impl Write<'_> {
    fn row_ids(&self) -> &[i64] {
        match self {
            Write::Fields { item, .. } => &item.row_ids,
            Write::Unsubscribe(d) => &d.row_ids,
        }
    }

    fn contact_id(&self) -> Option<Uuid> {
        match self {
            Write::Fields { item, .. } => item.contact_id,
            Write::Unsubscribe(d) => Some(d.contact_id),
        }
    }
}

/// How the rows of one write end.
enum End {
    Done(Option<String>),
    Skip(String),
    Fail(String),
    /// Effect unknown or refused for now: a failed attempt, retried with backoff.
    Retry(String),
    /// Nothing was done (throttled, quota, cancelled): rows stay pending, the run stops
    /// writing.
    Stop(String),
}

/// Writes every contact of `writes`, one after the other. Returns why writing stopped
/// early, if it did.
#[instrument(skip_all, fields(contacts = writes.len()))]
pub async fn write_all(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    cf: &CustomFieldIds,
    lists_filter: Option<&HashSet<Uuid>>,
    writes: &[Write<'_>],
    stats: &mut PutStats,
) -> anyhow::Result<Option<String>> {
    let account = client.account().to_string();
    for w in writes {
        if ctx.cancel.is_cancelled() {
            return Ok(Some("cancelled".into()));
        }
        let (end, log) = write_one(ctx, client, run_id, cf, lists_filter, w, stats).await?;
        let ids = w.row_ids();
        let mut tx = ctx.pool.begin().await.context("beginning a transaction")?;
        store::outbound::append_changes(&mut tx, &account, run_id, &log)
            .await
            .context("logging PUT conflicts")?;
        stats.conflicts += log.len() as u64;
        let reasons = |r: Option<String>| vec![r; ids.len()];
        let (state, reason, counter) = match end {
            End::Done(note) => (Completed, note, &mut stats.completed),
            End::Skip(why) => (Skipped, Some(why), &mut stats.skipped),
            End::Fail(why) => (Failed, Some(why), &mut stats.failed),
            End::Retry(why) => {
                let (retry, dead) = ctx
                    .failed_attempt(&mut tx, Pending, ids, &why)
                    .await
                    .context("recording a failed PUT")?;
                stats.retrying += retry;
                stats.failed += dead;
                tx.commit().await.context("committing a failed PUT")?;
                continue;
            }
            End::Stop(why) => {
                tx.commit().await.context("committing PUT conflicts")?;
                return Ok(Some(why));
            }
        };
        *counter += store::outbound::set_state(&mut tx, Pending, ids, state, &reasons(reason))
            .await
            .with_context(|| format!("marking written rows {}", state.as_str()))?;
        tx.commit().await.context("committing a written contact")?;
    }
    Ok(None)
}

fn api_end(e: ApiError, what: &str) -> Result<End, ApiError> {
    Ok(match e {
        ApiError::TooManyActivities { .. }
        | ApiError::QuotaExceeded { .. }
        | ApiError::Throttled { .. }
        | ApiError::Cancelled => End::Stop(e.to_string()),
        ApiError::Auth(_) => return Err(e),
        ApiError::Status { status: 404, .. } => {
            End::Skip(format!("not in Constant Contact any more ({what}: 404)"))
        }
        ApiError::Status {
            status: 400 | 422, ..
        } => End::Fail(format!("{what} refused: {e}")),
        other => End::Retry(format!("{what} failed: {other}")),
    })
}

async fn write_one(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    cf: &CustomFieldIds,
    lists_filter: Option<&HashSet<Uuid>>,
    w: &Write<'_>,
    stats: &mut PutStats,
) -> anyhow::Result<(End, Vec<LocalChange>)> {
    let apply = |contact: Value| apply(ctx, client, run_id, lists_filter, contact);
    let Some(id) = w.contact_id() else {
        return Ok((
            End::Fail("internal: a PUT needs a contact id".into()),
            vec![],
        ));
    };
    stats.contacts += 1;
    if matches!(w, Write::Unsubscribe(_)) {
        stats.unsubscribes += 1;
    }
    stats.reads += 1;
    let read = match client.contact(id).await {
        Ok(v) => v,
        Err(e) => return Ok((api_end(e, "GET /contacts/{id}")?, vec![])),
    };
    let now = primary_of(&read);
    if now.deleted {
        apply(read.clone()).await?;
        return Ok((
            End::Skip(
                "deleted in Constant Contact (fresh read): not written, a PUT would revive the \
                 contact"
                    .into(),
            ),
            vec![],
        ));
    }
    let mut log = Vec::new();
    let (body, check): (Value, Check) = match w {
        Write::Unsubscribe(d) => {
            if now.permission_to_send.as_deref() == Some("unsubscribed") {
                apply(read.clone()).await?;
                return Ok((
                    End::Done(Some("already unsubscribed in Constant Contact".into())),
                    log,
                ));
            }
            (
                unsubscribe_body(&read, d.opt_out_reason.as_deref()),
                Check::Unsubscribed,
            )
        }
        Write::Fields { item, base } => {
            let plan = match plan_fields(&read, base, &item.fields, cf) {
                Ok(p) => p,
                Err(why) => return Ok((End::Fail(why), log)),
            };
            let mut notes = item.notes.clone();
            for c in &plan.conflicts {
                notes.push(format!(
                    "{} not pushed: changed in Constant Contact since the last pull (fresh read before the PUT)",
                    c.field
                ));
                for row in &item.row_ids {
                    log.push(LocalChange {
                        contact_id: Some(id),
                        email: item.email.clone(),
                        kind: "conflict",
                        field: Some(c.field.clone()),
                        old_value: Some(c.theirs.clone()),
                        new_value: Some(json!({"outbound_id": row, "value": c.ours})),
                    });
                }
            }
            let note = (!notes.is_empty()).then(|| notes.join("; "));
            let Some(body) = plan.body else {
                let end = if plan.conflicts.is_empty() {
                    End::Done(Some(
                        "already in Constant Contact: every value is there".into(),
                    ))
                } else {
                    End::Skip(format!("nothing left to push: {}", notes.join("; ")))
                };
                return Ok((end, log));
            };
            (body, Check::Fields(plan.sent, note))
        }
    };
    stats.puts += 1;
    let answer = match client.put_contact(id, &body).await {
        Ok(v) => v,
        Err(e) => return Ok((api_end(e, "PUT /contacts/{id}")?, log)),
    };
    apply(answer.clone()).await?;
    // Confirm by reading: the answer is Constant Contact's copy after the write.
    let after = primary_of(&answer);
    let end = match check {
        Check::Unsubscribed => match after.permission_to_send.as_deref() {
            Some("unsubscribed") => End::Done(None),
            other => End::Fail(format!(
                "PUT answered but permission_to_send is {other:?}, not unsubscribed"
            )),
        },
        Check::Fields(sent, note) => {
            let wrong: Vec<&String> = sent
                .iter()
                .filter(|(k, v)| {
                    property_value(&after, k, cf).is_some_and(|now| now != property_value_of(v))
                })
                .map(|(k, _)| k)
                .collect();
            if wrong.is_empty() {
                End::Done(note)
            } else {
                let names: Vec<&str> = wrong.iter().map(|s| s.as_str()).collect();
                End::Fail(format!(
                    "{} not applied in Constant Contact after the PUT",
                    names.join(", ")
                ))
            }
        }
    };
    Ok((end, log))
}

/// A row's value as `property_value` normalises it.
fn property_value_of(v: &Value) -> Value {
    match v {
        Value::String(s) if s.trim().is_empty() => Value::Null,
        Value::String(s) => Value::String(s.trim().to_string()),
        other => other.clone(),
    }
}

enum Check {
    Unsubscribed,
    Fields(serde_json::Map<String, Value>, Option<String>),
}

/// Applies one contact as Constant Contact returned it to the store (the ordinary merge:
/// changes logged, a newly unsubscribed contact's pending list adds skipped).
async fn apply(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    lists_filter: Option<&HashSet<Uuid>>,
    contact: Value,
) -> anyhow::Result<()> {
    let c: Contact = match serde_json::from_value(contact) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "a contact Constant Contact returned does not decode; store not updated");
            return Ok(());
        }
    };
    let page = ContactsPage::from_contacts(vec![c]);
    let spec = PageSpec::new(client.account(), lists_filter, run_id, updated_at_mark);
    apply_page(ctx, &spec, &page)
        .await
        .context("applying a written contact to the store")?;
    Ok(())
}

/// The store's copy of each put item's contact, by lower-case address.
pub type Bases = HashMap<String, Primary>;
