//! A first sync by export (`sync.backfill = export | auto`): a whole account in a handful of
//! requests instead of one per `page_size` contacts.
//!
//! 1. The list and custom field catalogues are read (the per-list exports and the custom
//!    field columns need them).
//! 2. One export of all contacts and one per synced list (its members) are created; each is
//!    recorded in `import_activities` (kind `contact_exports`, finished) so that the push's
//!    recovery of lost answers never takes one for its own import.
//! 3. While they run, every deleted contact is paged (`status=deleted`): an export does not
//!    say that a row is deleted, so deleted contacts are stored from the pages and their
//!    rows in the export are left out.
//! 4. The exports are polled (`sync.poll_initial` … `poll_max`, at most `poll_timeout`), and
//!    each CSV is streamed to a temporary file (`_links.results.href`, followed as given).
//! 5. Every file is checked whole before anything is applied: one without a `contact_id`
//!    column, or with a value ccsync cannot read, sends the run back to paging
//!    ([`Outcome::Paged`]) with nothing of the export applied.
//! 6. The contacts file is applied `page_size` rows at a time through the same merge as a
//!    page (stale guard, diffs into `changes`, pending list adds of unsubscribed contacts
//!    skipped), read by a blocking reader into a bounded channel; then the members of each
//!    list are added (deleted contacts left out).
//! 7. The contacts watermark becomes the export's `created_at` (Constant Contact's clock)
//!    minus the lookback, and the caller runs an ordinary incremental pull from there: what
//!    changed while the export ran, and every column a CSV does not carry for those
//!    contacts, comes from the pull.
//!
//! A crash anywhere leaves the watermark unset; the next run finds contacts stored and pages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use tracing::{info, warn};
use uuid::Uuid;

use super::context::JobContext;
use super::custom_fields::sync_custom_fields;
use super::lists::{lists_filter, sync_catalogue};
use super::pager::Pager;
use super::walk::{apply_page, walk_pages, PageSpec, PullStats, Walk};
use super::watermark;
use crate::config::AccountSettings;
use crate::core::backfill::{self, Choice, ExportStats, Mode};
use crate::core::job::Job;
use crate::ctct::activities::Activity;
use crate::ctct::export_csv::{Columns, Unusable};
use crate::ctct::page::ContactsPage;
use crate::ctct::{AccountClient, ContactsQuery, Error as ApiError, CONTACT_INCLUDE};
use crate::store;

/// How the export path ended.
pub enum Outcome {
    /// Applied; the watermark is set: the caller pulls incrementally from it.
    Applied(Box<PullStats>),
    /// Not used (the reason is in the stats): the caller pages.
    Paged,
}

/// Rows of a membership file added per statement.
const MEMBER_CHUNK: usize = 2_000;

/// Whether this run of `account`'s contacts pull should try an export, and if so runs it.
/// `stats.export` tells what happened either way.
pub async fn first_sync(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
    export: &mut ExportStats,
) -> anyhow::Result<Outcome> {
    let mode = ctx.settings.sync.backfill;
    export.mode = mode.as_str();
    let client = ctx.api.account(&account.id);
    let sent = client.requests_sent();
    let out = run(ctx, &client, account, run_id, mode, export).await;
    export.api_requests = client.requests_sent() - sent;
    match out? {
        Ok(stats) => {
            export.used = true;
            Ok(Outcome::Applied(Box::new(stats)))
        }
        Err(reason) => {
            info!(account = %account.id, %reason, "first sync pages instead of exporting");
            export.paged_because = Some(reason);
            Ok(Outcome::Paged)
        }
    }
}

/// `Ok(Err(reason))`: page instead.
async fn run(
    ctx: &JobContext,
    client: &AccountClient,
    account: &AccountSettings,
    run_id: Uuid,
    mode: Mode,
    export: &mut ExportStats,
) -> anyhow::Result<Result<PullStats, String>> {
    sync_catalogue(ctx, client, Some(run_id)).await?;
    let filter = lists_filter(account);
    let synced: Vec<Uuid> = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::lists::active_ids(&mut conn, &account.id)
            .await
            .context("reading the list catalogue")?
            .into_iter()
            .filter(|l| filter.as_ref().is_none_or(|f| f.contains(l)))
            .collect()
    };
    if mode == Mode::Auto {
        let contacts = count_contacts(client).await?;
        let left = budget_left(ctx).await?;
        let choice = backfill::choose(
            mode,
            contacts,
            ctx.settings.sync.page_size as u64,
            synced.len() as u64,
            left,
        );
        if choice == Choice::Paged {
            return Ok(Err(format!(
                "auto: {contacts} contacts page in {} requests, an export with {} lists costs about {} ({left} left today)",
                backfill::paged_cost(contacts, ctx.settings.sync.page_size as u64),
                synced.len(),
                backfill::export_cost(synced.len() as u64),
            )));
        }
    }
    sync_custom_fields(ctx, client).await?;
    let names = {
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::custom_fields::name_map(&mut conn, &account.id)
            .await
            .context("reading the custom field catalogue")?
    };
    // 2. The exports: all contacts first (its created_at is the watermark), then one per list.
    let mut bodies = vec![(None, json!({}))];
    bodies.extend(synced.iter().map(|l| {
        (
            Some(*l),
            json!({"list_ids": [l], "fields": ["email_address"]}),
        )
    }));
    let mut pending: Vec<(Option<Uuid>, Activity)> = Vec::with_capacity(bodies.len());
    for (list, body) in bodies {
        let a = match client.contact_exports(&body).await {
            Ok(a) => a,
            Err(e @ ApiError::Status { .. }) => {
                return Ok(Err(format!("the export was refused: {e}")));
            }
            Err(e) => return Err(e).context("creating a contact export"),
        };
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        store::activities::record_export(&mut conn, &account.id, &a.activity_id, &a.state, run_id)
            .await
            .context("recording a contact export")?;
        export.exports += 1;
        pending.push((list, a));
    }
    let Some(created) = pending.first().and_then(|(_, a)| a.created()) else {
        return Ok(Err(
            "the export activity has no readable created_at (nothing to start the pull from)"
                .into(),
        ));
    };
    export.created_at = Some(created);
    // 3. Deleted contacts, paged while the exports run.
    let spec = PageSpec::new(
        &account.id,
        filter.as_ref(),
        run_id,
        super::walk::updated_at_mark,
    );
    let mut stats = PullStats {
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    let deleted = client
        .contacts_url(&ContactsQuery {
            status: Some("deleted".into()),
            include: Some(CONTACT_INCLUDE.into()),
            limit: ctx.settings.sync.page_size,
            ..Default::default()
        })
        .context("building the deleted contacts URL")?;
    let walk = Walk {
        job: Job::Deletes,
        apply_concurrency: 2,
        progress: false,
    };
    walk_pages(ctx, Pager::new(client, deleted), &walk, &spec, &mut stats).await?;
    export.deleted_pages = stats.pages;
    // 4. Poll, then download.
    let files = TempFiles::default();
    let done = match poll_all(ctx, client, pending, export).await? {
        Ok(done) => done,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut paths: Vec<(Option<Uuid>, PathBuf)> = Vec::with_capacity(done.len());
    for (list, a) in &done {
        let Some(href) = a.results_href() else {
            return Ok(Err(format!(
                "export {} completed without a results link",
                a.activity_id
            )));
        };
        let url = client
            .api()
            .resolve_link(href)
            .with_context(|| format!("resolving the export link {href:?}"))?;
        let path = files.path(&a.activity_id);
        match client
            .download_to("GET /contact_exports/{id}", url, &path)
            .await
        {
            Ok(bytes) => export.csv_bytes += bytes,
            // No room or no right to write a temporary file (a read-only container without a
            // /tmp): paging needs none.
            Err(e @ ApiError::File { .. }) => {
                return Ok(Err(format!(
                    "{} ({}): {}",
                    e,
                    path.display(),
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                )))
            }
            Err(e) => {
                return Err(e).with_context(|| format!("downloading export {}", a.activity_id))
            }
        }
        paths.push((*list, path));
    }
    // 5. Every file checked before anything is applied.
    for (list, path) in &paths {
        let names = names.clone();
        let path = path.clone();
        let needs_email = list.is_none();
        let checked = tokio::task::spawn_blocking(move || check(&path, &names, needs_email))
            .await
            .context("checking an export file")??;
        if let Err(e) = checked {
            return Ok(Err(e.to_string()));
        }
    }
    // 6. Contacts, then memberships.
    let mut paths = paths.into_iter();
    if let Some((_, contacts)) = paths.next() {
        apply_contacts(ctx, &spec, &contacts, &names, &mut stats, export).await?;
    }
    for (list, path) in paths {
        if let Some(list) = list {
            export.memberships_added += apply_members(ctx, &account.id, list, &path).await?;
        }
    }
    // 7. The pull goes on from the export's own time, less the lookback.
    let lookback = chrono::Duration::from_std(ctx.settings.sync.lookback).unwrap_or_default();
    watermark::advance(ctx, &account.id, Job::Contacts, Some(created - lookback)).await?;
    info!(
        account = %account.id,
        rows = export.rows,
        memberships = export.memberships_added,
        requests = client.requests_sent(),
        "first sync by export applied; an incremental pull follows"
    );
    Ok(Ok(stats))
}

/// `contacts_count` of the whole account (one request).
async fn count_contacts(client: &AccountClient) -> anyhow::Result<u64> {
    let url = client
        .contacts_url(&ContactsQuery {
            status: Some("all".into()),
            include_count: true,
            limit: 1,
            ..Default::default()
        })
        .context("building the contacts URL")?;
    let page = client
        .contacts_page(url)
        .await
        .context("counting the account's contacts")?;
    Ok(page.contacts_count.unwrap_or(0))
}

/// Requests left today on the API key (every account counted).
async fn budget_left(ctx: &JobContext) -> anyhow::Result<u64> {
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let used: i64 = store::usage::used_today(&mut conn)
        .await
        .context("reading today's request count")?
        .iter()
        .map(|(_, n)| n)
        .sum();
    Ok(ctx
        .settings
        .constant_contact
        .daily_request_limit
        .saturating_sub(used.max(0) as u64))
}

/// Polls the exports until each has ended; `Err(reason)` when one did not complete.
async fn poll_all(
    ctx: &JobContext,
    client: &AccountClient,
    mut pending: Vec<(Option<Uuid>, Activity)>,
    export: &mut ExportStats,
) -> anyhow::Result<Result<Vec<(Option<Uuid>, Activity)>, String>> {
    let s = &ctx.settings.sync;
    let started = std::time::Instant::now();
    let mut delay = s.poll_initial;
    let mut done: Vec<(Option<Uuid>, Activity)> = Vec::with_capacity(pending.len());
    loop {
        let mut open = Vec::new();
        for (list, a) in pending {
            if a.is_terminal() {
                if a.state != "completed" {
                    return Ok(Err(format!(
                        "export {} ended {}: {}",
                        a.activity_id,
                        a.state,
                        a.error_messages().join("; ")
                    )));
                }
                done.push((list, a));
            } else {
                open.push((list, a));
            }
        }
        if open.is_empty() {
            // The contacts export first, as created.
            done.sort_by_key(|(l, _)| l.is_some());
            return Ok(Ok(done));
        }
        if started.elapsed() > s.poll_timeout {
            return Ok(Err(format!(
                "{} exports did not complete within poll_timeout ({})",
                open.len(),
                humantime::format_duration(s.poll_timeout)
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.cancel.cancelled() => anyhow::bail!("cancelled while waiting for exports"),
        }
        delay = (delay * 2).min(s.poll_max);
        pending = Vec::with_capacity(open.len());
        for (list, a) in open {
            export.polls += 1;
            let now = client
                .activity(&a.activity_id)
                .await
                .with_context(|| format!("polling export {}", a.activity_id))?;
            pending.push((list, now));
        }
    }
}

/// Reads a whole file: its header must be usable and every row readable.
fn check(
    path: &Path,
    names: &HashMap<String, Uuid>,
    needs_email: bool,
) -> anyhow::Result<Result<u64, Unusable>> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let header = r.headers().context("reading an export's header")?.clone();
    let cols = match Columns::from_header(&header, names, needs_email) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let mut rows = 0u64;
    for rec in r.records() {
        rows += 1;
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) => {
                return Ok(Err(Unusable::Row {
                    row: rows,
                    reason: e.to_string(),
                }))
            }
        };
        let read = if needs_email {
            cols.contact(&rec).map(|_| ())
        } else {
            cols.contact_id(&rec).map(|_| ())
        };
        if let Err(reason) = read {
            return Ok(Err(Unusable::Row { row: rows, reason }));
        }
    }
    Ok(Ok(rows))
}

/// Applies the contacts file `page_size` rows at a time (a blocking reader feeds a bounded
/// channel: two chunks in memory at most).
async fn apply_contacts(
    ctx: &JobContext,
    spec: &PageSpec<'_>,
    path: &Path,
    names: &HashMap<String, Uuid>,
    stats: &mut PullStats,
    export: &mut ExportStats,
) -> anyhow::Result<()> {
    let chunk = ctx.settings.sync.page_size.max(1) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<crate::ctct::dto::Contact>>(1);
    let path = path.to_path_buf();
    let names = names.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut r = csv::ReaderBuilder::new().flexible(true).from_path(&path)?;
        let header = r.headers()?.clone();
        let cols = Columns::from_header(&header, &names, true)?;
        let mut buf = Vec::with_capacity(chunk);
        for rec in r.records() {
            buf.push(cols.contact(&rec?).map_err(anyhow::Error::msg)?);
            if buf.len() == chunk && tx.blocking_send(std::mem::take(&mut buf)).is_err() {
                return Ok(());
            }
        }
        if !buf.is_empty() {
            let _ = tx.blocking_send(buf);
        }
        Ok(())
    });
    let mut applied = Ok(());
    while let Some(mut contacts) = rx.recv().await {
        if ctx.cancel.is_cancelled() {
            // The watermark stays unset: the next run finds contacts stored and pages.
            applied = Err(anyhow::anyhow!(
                "cancelled after {} exported rows; watermark unchanged",
                export.rows
            ));
            break;
        }
        export.rows += contacts.len() as u64;
        let ids: Vec<Uuid> = contacts.iter().map(|c| c.contact_id).collect();
        let deleted = {
            let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
            store::contacts::deleted_among(&mut conn, spec.account, &ids)
                .await
                .context("reading which exported contacts are deleted")?
        };
        contacts.retain(|c| !deleted.contains(&c.contact_id));
        export.deleted_rows_skipped += deleted.len() as u64;
        let page = ContactsPage::from_contacts(contacts);
        match apply_page(ctx, spec, &page).await {
            Ok(done) => stats.add_page(spec.account, &done, ctx.dry_run),
            Err(e) => {
                applied = Err(e).context("applying exported contacts");
                break;
            }
        }
    }
    drop(rx);
    let read = reader.await.context("reading the contacts export")?;
    applied?;
    read.context("reading the contacts export")
}

/// Adds the members of `list` from its export file (deleted contacts left out).
async fn apply_members(
    ctx: &JobContext,
    account: &str,
    list: Uuid,
    path: &Path,
) -> anyhow::Result<u64> {
    let path = path.to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(Uuid, Uuid)>>(1);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut r = csv::ReaderBuilder::new().flexible(true).from_path(&path)?;
        let header = r.headers()?.clone();
        let cols = Columns::from_header(&header, &HashMap::new(), false)?;
        let mut buf = Vec::with_capacity(MEMBER_CHUNK);
        for rec in r.records() {
            buf.push((cols.contact_id(&rec?).map_err(anyhow::Error::msg)?, list));
            if buf.len() == MEMBER_CHUNK && tx.blocking_send(std::mem::take(&mut buf)).is_err() {
                return Ok(());
            }
        }
        if !buf.is_empty() {
            let _ = tx.blocking_send(buf);
        }
        Ok(())
    });
    let mut added = 0;
    let mut failed = None;
    while let Some(pairs) = rx.recv().await {
        if ctx.dry_run {
            continue;
        }
        let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
        match store::memberships::add_unless_deleted(&mut conn, account, &pairs).await {
            Ok(n) => added += n,
            Err(e) => {
                failed = Some(anyhow::Error::new(e).context("adding exported memberships"));
                break;
            }
        }
    }
    drop(rx);
    let read = reader.await.context("reading a list export")?;
    if let Some(e) = failed {
        return Err(e);
    }
    read.with_context(|| format!("reading the export of list {list}"))?;
    Ok(added)
}

/// Temporary export files, removed when dropped.
#[derive(Default)]
struct TempFiles {
    paths: std::sync::Mutex<Vec<PathBuf>>,
}

impl TempFiles {
    fn path(&self, activity: &str) -> PathBuf {
        let safe: String = activity
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let p =
            std::env::temp_dir().join(format!("ccsync-export-{}-{safe}.csv", std::process::id()));
        if let Ok(mut v) = self.paths.lock() {
            v.push(p.clone());
        }
        p
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        if let Ok(v) = self.paths.lock() {
            for p in v.iter() {
                if let Err(e) = std::fs::remove_file(p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(path = %p.display(), error = %e, "cannot remove an export file");
                    }
                }
            }
        }
    }
}
