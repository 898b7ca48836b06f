//! The list catalogue (`--job lists`): `GET /contact_lists?status=all` with membership
//! counts, paged, each page upserted in one statement. Lists Constant Contact deleted keep
//! their row with `deleted_at`; lists that vanished from the catalogue get `deleted_at` too.
//! The local memberships of deleted lists go, as they do in Constant Contact (logged as
//! `list_removed`).
//!
//! The catalogue has no `updated_after` filter, so it is read whole each cycle; it is small
//! (at most 1,000 lists per account), which also bounds the set of seen ids kept here.
//! The lists job itself (catalogue, custom fields, drift check) is `super::lists_cycle`.

use std::collections::HashSet;

use anyhow::Context;
use uuid::Uuid;

use super::context::JobContext;
use crate::config::AccountSettings;
use crate::ctct::dto::{ContactList, ContactListsPage, PagingLinks};
use crate::ctct::AccountClient;
use crate::store;
use crate::store::lists::ListRow;

/// The lists whose memberships `account` syncs: `None` = every list.
pub fn lists_filter(account: &AccountSettings) -> Option<HashSet<Uuid>> {
    account.lists.ids().map(|ids| ids.iter().copied().collect())
}

/// Stats of one catalogue sync.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CatalogueStats {
    pub pages: u64,
    pub lists_seen: u64,
    pub lists_written: u64,
    pub lists_deleted: u64,
    pub lists_vanished: u64,
    pub memberships_removed: u64,
    pub lists_count: Option<u64>,
    pub api_requests: u64,
    pub dry_run: bool,
}

/// Converts the API's list into the local row.
pub fn to_row(l: &ContactList) -> ListRow {
    ListRow {
        list_id: l.list_id,
        // `name` is required by the spec; an unnamed list keeps a visible placeholder.
        name: l.name.clone().unwrap_or_default(),
        description: l.description.clone(),
        favorite: l.favorite.unwrap_or(false),
        membership_count: l
            .membership_count
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        created_at: l.created_at,
        updated_at: l.updated_at,
        deleted_at: l.deleted_at,
    }
}

/// Reads the whole catalogue and applies it (also used by the reconcile, so that it works
/// on a fresh list set).
#[tracing::instrument(skip_all)]
pub async fn sync_catalogue(
    ctx: &JobContext,
    client: &AccountClient,
    run_id: Option<Uuid>,
) -> anyhow::Result<CatalogueStats> {
    let account = client.account().to_string();
    let sent_before = client.requests_sent();
    let mut stats = CatalogueStats {
        dry_run: ctx.dry_run,
        ..Default::default()
    };
    let mut url = client
        .api()
        .endpoint("contact_lists")
        .context("building the lists URL")?;
    url.query_pairs_mut()
        .append_pair("include_count", "true")
        .append_pair("include_membership_count", "all")
        .append_pair("status", "all")
        .append_pair("limit", &ctx.settings.sync.page_size.min(500).to_string());
    // Bounded: an account has at most 1,000 lists.
    let mut seen: Vec<Uuid> = Vec::new();
    let mut next = Some(url);
    while let Some(url) = next.take() {
        let page: ContactListsPage = client.lists_page(url).await.with_context(|| {
            format!(
                "fetching page {} of lists for account {account}",
                stats.pages + 1
            )
        })?;
        if stats.pages == 0 {
            stats.lists_count = page.lists_count;
        }
        if let Some(href) = PagingLinks::next_href(&page.links) {
            next = Some(client.next_url(href)?);
        }
        let rows: Vec<ListRow> = page.lists.iter().map(to_row).collect();
        seen.extend(rows.iter().map(|r| r.list_id));
        let mut tx = ctx.pool.begin().await?;
        stats.lists_written += store::lists::upsert(&mut tx, &account, &rows)
            .await
            .context("upserting lists")?;
        finish_tx(ctx, tx).await?;
        stats.pages += 1;
        stats.lists_seen += rows.len() as u64;
        stats.lists_deleted += rows.iter().filter(|r| r.deleted_at.is_some()).count() as u64;
        if next.is_some() && ctx.cancel.is_cancelled() {
            anyhow::bail!("cancelled after {} pages of lists", stats.pages);
        }
    }
    // Only a complete read of the catalogue may conclude that a list vanished.
    let mut tx = ctx.pool.begin().await?;
    stats.lists_vanished = store::lists::mark_vanished(&mut tx, &account, &seen)
        .await
        .context("marking vanished lists")?;
    stats.memberships_removed =
        store::memberships::remove_for_deleted_lists(&mut tx, &account, run_id)
            .await
            .context("removing memberships of deleted lists")?;
    finish_tx(ctx, tx).await?;
    stats.api_requests = client.requests_sent() - sent_before;
    Ok(stats)
}

async fn finish_tx(
    ctx: &JobContext,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
) -> anyhow::Result<()> {
    if ctx.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_list_converts_with_defaults() {
        let l: ContactList = serde_json::from_str(
            r#"{"list_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","name":"News",
                "membership_count":12,"deleted_at":"2026-01-02T03:04:05.000Z"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = to_row(&l);
        assert_eq!(r.name, "News");
        assert!(!r.favorite);
        assert_eq!(r.membership_count, Some(12));
        assert!(r.deleted_at.is_some());
    }
}
