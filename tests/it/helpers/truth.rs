//! What Constant Contact (the sandbox) holds, compared with what the store holds.

use ccsync::sandbox::Sandbox;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The stored watermark of `job` for the account `default`.
pub async fn watermark(pool: &PgPool, job: &str) -> Option<DateTime<Utc>> {
    sqlx::query_scalar(
        "SELECT watermark FROM ccsync.sync_state WHERE account_id = 'default' AND job = $1",
    )
    .bind(job)
    .fetch_optional(pool)
    .await
    .unwrap()
    .flatten()
}

/// The largest `updated_at` of the sandbox's default account.
pub fn sandbox_max_updated_at(sb: &Sandbox) -> DateTime<Utc> {
    let ctl = sb.default_account();
    ctl.contact_ids()
        .iter()
        .filter_map(|id| ctl.contact(*id))
        .filter_map(|c| {
            c["updated_at"]
                .as_str()
                .and_then(ccsync::ctct::dto::parse_datetime)
        })
        .max()
        .unwrap()
}

/// The store equals the sandbox: every contact (first name, permission, deletion) and
/// every membership.
pub async fn assert_store_equals_sandbox(pool: &PgPool, sb: &Sandbox) {
    let ctl = sb.default_account();
    let stored: Vec<(Uuid, Option<String>, Option<String>, bool)> = sqlx::query_as(
        "SELECT contact_id, first_name, permission_to_send, deleted_at IS NOT NULL
           FROM ccsync.contacts",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let ids = ctl.contact_ids();
    assert_eq!(stored.len(), ids.len(), "every contact stored once");
    let by_id: std::collections::HashMap<Uuid, _> =
        stored.into_iter().map(|r| (r.0, (r.1, r.2, r.3))).collect();
    for id in &ids {
        let c = ctl.contact(*id).unwrap();
        let (first, perm, deleted) = by_id.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(
            first.as_deref(),
            c["first_name"].as_str(),
            "{id} first_name"
        );
        assert_eq!(
            perm.as_deref(),
            c["email_address"]["permission_to_send"].as_str(),
            "{id} permission"
        );
        assert_eq!(*deleted, !c["deleted_at"].is_null(), "{id} deletion");
    }
    let mut sandbox_pairs: Vec<(Uuid, Uuid)> = ids
        .iter()
        .flat_map(|id| ctl.memberships(*id).into_iter().map(move |l| (*id, l)))
        .collect();
    sandbox_pairs.sort();
    let local: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT contact_id, list_id FROM ccsync.list_memberships ORDER BY contact_id, list_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(local, sandbox_pairs, "every membership");
}
