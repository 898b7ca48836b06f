//! `contact_lists`: the list catalogue, upserted one page at a time.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A list as the local store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRow {
    pub list_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub membership_count: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Inserts or updates `rows` in one statement; rows equal to the stored ones are not
/// rewritten. Returns the number of rows written.
pub async fn upsert(
    conn: &mut PgConnection,
    account: &str,
    rows: &[ListRow],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.list_id).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let descriptions: Vec<Option<&str>> = rows.iter().map(|r| r.description.as_deref()).collect();
    let favorites: Vec<bool> = rows.iter().map(|r| r.favorite).collect();
    let counts: Vec<Option<i32>> = rows.iter().map(|r| r.membership_count).collect();
    let created: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.created_at).collect();
    let updated: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.updated_at).collect();
    let deleted: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.deleted_at).collect();
    let done = sqlx::query(
        "INSERT INTO ccsync.contact_lists (account_id, list_id, name, description, favorite,
            membership_count, created_at, updated_at, deleted_at, synced_at)
         SELECT $1, u.*, now() FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bool[],
            $6::int4[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[]) AS u
         ON CONFLICT (account_id, list_id) DO UPDATE SET
            name = EXCLUDED.name, description = EXCLUDED.description,
            favorite = EXCLUDED.favorite, membership_count = EXCLUDED.membership_count,
            created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
            deleted_at = EXCLUDED.deleted_at, synced_at = now()
         WHERE (ccsync.contact_lists.name, ccsync.contact_lists.description,
                ccsync.contact_lists.favorite, ccsync.contact_lists.membership_count,
                ccsync.contact_lists.created_at, ccsync.contact_lists.updated_at,
                ccsync.contact_lists.deleted_at)
           IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description, EXCLUDED.favorite,
                EXCLUDED.membership_count, EXCLUDED.created_at, EXCLUDED.updated_at,
                EXCLUDED.deleted_at)",
    )
    .bind(account)
    .bind(ids)
    .bind(names)
    .bind(descriptions)
    .bind(favorites)
    .bind(counts)
    .bind(created)
    .bind(updated)
    .bind(deleted)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Lists of `account` that are not deleted and not in `seen` (they vanished from the
/// catalogue) get `deleted_at = now()`. Returns their number.
pub async fn mark_vanished(
    conn: &mut PgConnection,
    account: &str,
    seen: &[Uuid],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ccsync.contact_lists SET deleted_at = now(), synced_at = now()
         WHERE account_id = $1 AND deleted_at IS NULL AND list_id <> ALL($2)",
    )
    .bind(account)
    .bind(seen)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Lists of `account` that are not deleted, ordered.
pub async fn active_ids(conn: &mut PgConnection, account: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT list_id FROM ccsync.contact_lists
         WHERE account_id = $1 AND deleted_at IS NULL ORDER BY list_id",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await
}

/// `membership_count` of each of `lists` (in order; `None` when unknown or not stored).
pub async fn sizes(
    conn: &mut PgConnection,
    account: &str,
    lists: &[Uuid],
) -> Result<Vec<Option<u64>>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<i32>)> = sqlx::query_as(
        "SELECT list_id, membership_count FROM ccsync.contact_lists
         WHERE account_id = $1 AND list_id = ANY($2)",
    )
    .bind(account)
    .bind(lists)
    .fetch_all(&mut *conn)
    .await?;
    let by_id: std::collections::HashMap<Uuid, Option<i32>> = rows.into_iter().collect();
    Ok(lists
        .iter()
        .map(|l| {
            by_id
                .get(l)
                .copied()
                .flatten()
                .map(|n| u64::try_from(n).unwrap_or(0))
        })
        .collect())
}

/// The stored `membership_count` of each active list of `account` that has one.
pub async fn catalogue_counts(
    conn: &mut PgConnection,
    account: &str,
) -> Result<std::collections::HashMap<Uuid, u64>, sqlx::Error> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT list_id, membership_count FROM ccsync.contact_lists
         WHERE account_id = $1 AND deleted_at IS NULL AND membership_count IS NOT NULL",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(l, n)| (l, u64::try_from(n).unwrap_or(0)))
        .collect())
}
