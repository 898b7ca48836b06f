//! The lists job (`--job lists`): the list catalogue (`super::lists`), the custom field
//! catalogue (`super::custom_fields`), and the membership drift check.
//!
//! Drift: where leaving (or joining) a list does not move a contact's `updated_at`
//! (UNCONFIRMED for the live API; the sandbox can act either way), the incremental pull
//! never sees it, and the store's memberships would stay wrong until the weekly reconcile.
//! The catalogue read already carries each list's `membership_count`
//! (`include_membership_count=all`), so each cycle compares it with the store's count of
//! members and re-reads only the lists whose counts differ (their member pages, applied like a
//! reconcile of those lists: `reconcile::refresh_lists`). When nothing drifted this costs no
//! request beyond the catalogue read. A join and a leave of the same list that cancel out
//! keep the count equal: the weekly reconcile, which compares members, repairs those.

use anyhow::Context;
use uuid::Uuid;

use super::context::JobContext;
use super::{lists, reconcile, watermark};
use crate::config::AccountSettings;
use crate::core::job::Job;
use crate::core::membership::drifted_lists;
use crate::ctct::AccountClient;
use crate::store;

/// What the drift check found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DriftStats {
    /// Synced lists compared.
    pub lists_checked: u64,
    /// Lists whose counts differed, re-read.
    pub lists_drifted: Vec<Uuid>,
    pub memberships_added: u64,
    pub memberships_removed: u64,
    pub api_requests: u64,
}

/// One run for `account`; returns the run's stats.
pub async fn run_once(
    ctx: &JobContext,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<serde_json::Value> {
    let client = ctx.api.account(&account.id);
    let stats = lists::sync_catalogue(ctx, &client, Some(run_id)).await?;
    // The custom field catalogue is as small and as filterless: read whole every cycle too.
    let custom_fields = super::custom_fields::sync_custom_fields(ctx, &client).await?;
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let mut out = serde_json::to_value(&stats)?;
    out["custom_fields"] = serde_json::to_value(&custom_fields)?;
    if let Some(ids) = account.lists.ids() {
        // A configured list that Constant Contact does not have (or deleted) syncs nothing:
        // say so instead of silently mirroring fewer memberships.
        let active = store::lists::active_ids(&mut conn, &account.id).await?;
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|l| !active.contains(l))
            .copied()
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "configured lists are not in Constant Contact's catalogue"
            );
        }
        out["configured_lists_missing"] = serde_json::json!(missing);
    }
    drop(conn);
    // Lists whose member count differs from the store's are re-read member by member.
    let drift = check_drift(ctx, &client, account, run_id).await?;
    out["drift"] = serde_json::to_value(&drift)?;
    // No watermark (the catalogue has no date filter): records the success for status.
    watermark::advance(ctx, &account.id, Job::Lists, None).await?;
    Ok(out)
}

/// Compares the catalogue's member counts (just stored by the catalogue read) with the
/// store's and re-reads the lists that differ.
pub async fn check_drift(
    ctx: &JobContext,
    client: &AccountClient,
    account: &AccountSettings,
    run_id: Uuid,
) -> anyhow::Result<DriftStats> {
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    let mut synced = store::lists::active_ids(&mut conn, &account.id)
        .await
        .context("reading the synced lists")?;
    if let Some(filter) = lists::lists_filter(account) {
        synced.retain(|l| filter.contains(l));
    }
    let remote = store::lists::catalogue_counts(&mut conn, &account.id)
        .await
        .context("reading the catalogue's member counts")?;
    let local = store::memberships::counts(&mut conn, &account.id, &synced)
        .await
        .context("counting the stored members of each list")?;
    drop(conn);
    let drifted = drifted_lists(&synced, &remote, &local);
    let mut stats = DriftStats {
        lists_checked: synced.len() as u64,
        ..Default::default()
    };
    if drifted.is_empty() {
        return Ok(stats);
    }
    tracing::info!(
        lists = drifted.len(),
        "member counts differ from Constant Contact's: re-reading those lists"
    );
    let before = client.requests_sent();
    let r = reconcile::refresh_lists(ctx, client, &account.id, &drifted, run_id)
        .await
        .context("re-reading the lists whose member counts drifted")?;
    stats.memberships_added = r.memberships_added;
    stats.memberships_removed = r.memberships_removed;
    stats.api_requests = client.requests_sent() - before;
    stats.lists_drifted = drifted;
    Ok(stats)
}
