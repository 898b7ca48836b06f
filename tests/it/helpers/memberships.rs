//! Memberships on both sides, for tests that compare the store with the sandbox.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::Harness;

/// Every (contact, list) membership of the sandbox.
pub fn sandbox_memberships(h: &Harness) -> BTreeSet<(Uuid, Uuid)> {
    h.ctl
        .contact_ids()
        .into_iter()
        .flat_map(|id| h.ctl.memberships(id).into_iter().map(move |l| (id, l)))
        .collect()
}

/// Every (contact, list) membership of the store.
pub async fn local_memberships(h: &Harness) -> BTreeSet<(Uuid, Uuid)> {
    let rows: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT contact_id, list_id FROM ccsync.list_memberships")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}
