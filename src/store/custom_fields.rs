//! `custom_fields`: Constant Contact's custom field catalogue (name ↔ id), replaced whole
//! after each complete read of it; and the name → id map the push guard validates and
//! confirms `cf:<name>` properties with.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// A custom field definition as the local store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomFieldRow {
    pub custom_field_id: Uuid,
    pub name: String,
    pub label: Option<String>,
    pub field_type: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What replacing the catalogue changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Definitions inserted or changed.
    pub written: u64,
    /// Definitions no longer in Constant Contact, deleted here.
    pub removed: u64,
}

/// Makes `rows` the whole catalogue of `account`, atomically (a savepoint when the caller
/// is already in a transaction): two statements, whatever the number of definitions.
/// Rows equal to the stored ones are not rewritten. A repeated id keeps its last row.
pub async fn replace_catalogue(
    conn: &mut PgConnection,
    account: &str,
    rows: &[CustomFieldRow],
) -> Result<Replaced, sqlx::Error> {
    let mut seen = HashSet::with_capacity(rows.len());
    let unique: Vec<&CustomFieldRow> = rows
        .iter()
        .rev()
        .filter(|r| seen.insert(r.custom_field_id))
        .collect();
    let ids: Vec<Uuid> = unique.iter().map(|r| r.custom_field_id).collect();
    let names: Vec<&str> = unique.iter().map(|r| r.name.as_str()).collect();
    let labels: Vec<Option<&str>> = unique.iter().map(|r| r.label.as_deref()).collect();
    let types: Vec<Option<&str>> = unique.iter().map(|r| r.field_type.as_deref()).collect();
    let updated: Vec<Option<DateTime<Utc>>> = unique.iter().map(|r| r.updated_at).collect();
    let mut tx = conn.begin().await?;
    // Delete first: a name freed by a deleted definition may be taken by a new one.
    let removed = sqlx::query(
        "DELETE FROM ccsync.custom_fields WHERE account_id = $1 AND custom_field_id <> ALL($2)",
    )
    .bind(account)
    .bind(&ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let written = sqlx::query(
        "INSERT INTO ccsync.custom_fields (account_id, custom_field_id, name, label, type,
            updated_at, synced_at)
         SELECT $1, u.*, now() FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[],
            $6::timestamptz[]) AS u
         ON CONFLICT (account_id, custom_field_id) DO UPDATE SET
            name = EXCLUDED.name, label = EXCLUDED.label, type = EXCLUDED.type,
            updated_at = EXCLUDED.updated_at, synced_at = now()
         WHERE (ccsync.custom_fields.name, ccsync.custom_fields.label,
                ccsync.custom_fields.type, ccsync.custom_fields.updated_at)
           IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.label, EXCLUDED.type, EXCLUDED.updated_at)",
    )
    .bind(account)
    .bind(&ids)
    .bind(&names)
    .bind(&labels)
    .bind(&types)
    .bind(&updated)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Replaced { written, removed })
}

/// The catalogue of `account` as name → custom_field_id.
pub async fn name_map(
    conn: &mut PgConnection,
    account: &str,
) -> Result<HashMap<String, Uuid>, sqlx::Error> {
    let rows: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT name, custom_field_id FROM ccsync.custom_fields WHERE account_id = $1",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}
