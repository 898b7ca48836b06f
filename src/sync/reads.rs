//! Read before write: before the push adds an existing contact to a list, what Constant
//! Contact holds for that contact now (memberships and permission) is read and applied to
//! the store through the ordinary merge — not trusted from the store. A list the store had
//! the contact on and Constant Contact no longer has is a *leave*: it is logged as
//! `list_removed` (and removed locally) before the guard runs, so the guard strips that
//! list from every row queued before the leave was recorded. Leaving a list may not move
//! the contact's `updated_at` (unconfirmed; assumed not), so the incremental pull cannot be
//! relied on to have seen it.
//!
//! Per contact (`GET /contacts?email=…&status=all`, one request each) or per list (the
//! reconcile's reader over the lists the rows name), whichever costs fewer requests
//! (`core::reads::choose`); the choice and its cost go into the push's stats.

use std::collections::{BTreeSet, HashSet};

use anyhow::Context;
use serde::Serialize;
use tracing::{info, instrument};
use uuid::Uuid;

use super::context::JobContext;
use super::reconcile;
use super::walk::{apply_page, updated_at_mark, PageSpec};
use crate::core::reads::{self, ReadPlan, Reader};
use crate::ctct::page::ContactsPage;
use crate::ctct::AccountClient;
use crate::store;
use crate::store::outbound::ReadTarget;

/// What the read before a push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<ReadPlan>,
    pub contacts: u64,
    pub requests: u64,
    /// Memberships Constant Contact no longer has (leaves), now logged and removed.
    pub leaves_found: u64,
    pub changes_written: u64,
}

/// Reads the contacts `targets` names from Constant Contact and applies them to the store.
#[instrument(skip_all, fields(contacts = targets.len()))]
pub async fn read_before_write(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    lists_filter: Option<&HashSet<Uuid>>,
    targets: &[ReadTarget],
) -> anyhow::Result<ReadStats> {
    let mut stats = ReadStats {
        contacts: targets.len() as u64,
        ..Default::default()
    };
    if targets.is_empty() {
        return Ok(stats);
    }
    // Contacts the store has on some list are seen by reading the lists they are on and the
    // lists the rows name (each member's page carries all its memberships and its
    // permission); the others can only be read one by one. Each group takes the cheaper
    // reader.
    let (on_some, on_none): (Vec<&ReadTarget>, Vec<&ReadTarget>) = targets
        .iter()
        .partition(|t| !t.on_lists_in_store.is_empty());
    let sent_before = client.requests_sent();
    let mut read: Option<Read> = None;
    for (group, all_on_lists) in [(on_some, true), (on_none, false)] {
        if group.is_empty() {
            continue;
        }
        let lists: Vec<Uuid> = group
            .iter()
            .flat_map(|t| t.lists.iter().chain(&t.on_lists_in_store).copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let emails: Vec<&str> = group.iter().map(|t| t.email.as_str()).collect();
        let r = read_contacts(
            ctx,
            client,
            run_id,
            lists_filter,
            &emails,
            &lists,
            all_on_lists,
        )
        .await
        .context("reading the contacts the push adds to lists")?;
        read = Some(match read {
            None => r,
            Some(a) => Read {
                plan: ReadPlan {
                    reader: if a.plan.reader == r.plan.reader {
                        a.plan.reader
                    } else {
                        Reader::Mixed
                    },
                    requests: a.plan.requests + r.plan.requests,
                    alternative_requests: a.plan.alternative_requests + r.plan.alternative_requests,
                },
                leaves: a.leaves + r.leaves,
                changes_written: a.changes_written + r.changes_written,
            },
        });
    }
    let Some(read) = read else {
        return Ok(stats);
    };
    stats.plan = Some(read.plan);
    stats.leaves_found = read.leaves;
    stats.changes_written = read.changes_written;
    stats.requests = client.requests_sent() - sent_before;
    info!(reader = ?read.plan.reader, requests = stats.requests, leaves = stats.leaves_found, "read before write");
    Ok(stats)
}

/// What one read of contacts did.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub plan: ReadPlan,
    /// Memberships Constant Contact no longer has, now logged and removed locally.
    pub leaves: u64,
    pub changes_written: u64,
}

/// Reads `emails` (contacts on, or about to be on, `lists`) from Constant Contact and
/// applies them to the store: per contact or per list, whichever costs fewer requests
/// (`all_on_lists`: every contact is on one of `lists`, so reading the lists sees them
/// all). The one reader behind read before write and confirm after write.
pub async fn read_contacts(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Uuid,
    lists_filter: Option<&HashSet<Uuid>>,
    emails: &[&str],
    lists: &[Uuid],
    all_on_lists: bool,
) -> anyhow::Result<Read> {
    let account = client.account();
    let sizes = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::lists::sizes(&mut conn, account, lists)
            .await
            .context("reading list sizes")?
    };
    let plan = reads::choose(
        emails.len() as u64,
        &sizes,
        u64::from(ctx.settings.sync.page_size),
        all_on_lists,
    );
    let (leaves, changes_written) = match plan.reader {
        Reader::PerList => {
            let r = reconcile::refresh_lists(ctx, client, account, lists, run_id).await?;
            (r.memberships_removed, r.changes_written)
        }
        // `choose` never answers Mixed (that is two reads put together).
        Reader::PerContact | Reader::Mixed => {
            let spec = PageSpec::new(account, lists_filter, run_id, updated_at_mark);
            read_by_email(ctx, client, &spec, emails).await?
        }
    };
    Ok(Read {
        plan,
        leaves,
        changes_written,
    })
}

/// One `GET /contacts?email=…&status=all` per address, applied in pages of up to
/// `page_size` contacts. Returns (memberships removed, changes written).
pub async fn read_by_email(
    ctx: &JobContext,
    client: &AccountClient,
    spec: &PageSpec<'_>,
    emails: &[&str],
) -> anyhow::Result<(u64, u64)> {
    let (mut leaves, mut written) = (0u64, 0u64);
    for chunk in emails.chunks(ctx.settings.sync.page_size.max(1) as usize) {
        let mut page = ContactsPage::default();
        for email in chunk {
            if ctx.cancel.is_cancelled() {
                anyhow::bail!("cancelled while reading contacts before a write");
            }
            let found = client
                .contact_by_email(email)
                .await
                .with_context(|| format!("reading {email} from Constant Contact"))?;
            page.extend(found);
        }
        let applied = apply_page(ctx, spec, &page).await?;
        leaves += applied.memberships_removed;
        written += applied.changes_written;
    }
    Ok((leaves, written))
}
