//! `poison_records`: bad input from the API a pull did not store as it came.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::core::sanitize::BadInput;

/// Appends `notes` in one statement (inside the page's transaction).
pub async fn append(
    conn: &mut PgConnection,
    account: &str,
    run_id: Option<Uuid>,
    notes: &[BadInput],
) -> Result<u64, sqlx::Error> {
    if notes.is_empty() {
        return Ok(0);
    }
    let kind: Vec<&str> = notes.iter().map(|n| n.kind.as_str()).collect();
    let contact_id: Vec<Option<Uuid>> = notes.iter().map(|n| n.contact_id).collect();
    let field: Vec<Option<&str>> = notes.iter().map(|n| n.field).collect();
    let reason: Vec<&str> = notes.iter().map(|n| n.reason.as_str()).collect();
    let record: Vec<Option<serde_json::Value>> = notes.iter().map(|n| n.record.clone()).collect();
    let done = sqlx::query(
        "INSERT INTO ccsync.poison_records (account_id, run_id, kind, contact_id, field, reason,
                                            record)
         SELECT $1, $2, u.* FROM UNNEST($3::text[], $4::uuid[], $5::text[], $6::text[],
                                        $7::jsonb[]) AS u",
    )
    .bind(account)
    .bind(run_id)
    .bind(kind)
    .bind(contact_id)
    .bind(field)
    .bind(reason)
    .bind(record)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
