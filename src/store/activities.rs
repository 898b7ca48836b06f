//! `import_activities`: one row per bulk import the push submitted, polled to a terminal
//! state. `finished_at IS NULL` means "in flight": polled again after a restart, never
//! re-sent.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// What is recorded when an import is accepted.
#[derive(Debug, Clone)]
pub struct NewActivity<'a> {
    pub activity_id: &'a str,
    pub state: &'a str,
    pub list_ids: &'a [Uuid],
    pub row_count: i32,
    pub body_bytes: i32,
    pub run_id: Uuid,
    /// `contacts_json_import`, `remove_list_memberships` or `contact_delete`.
    pub kind: &'a str,
    /// When the request was sent, if not now (an activity found after a lost answer).
    pub submitted_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    conn: &mut PgConnection,
    account: &str,
    a: &NewActivity<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.import_activities
            (activity_id, account_id, state, list_ids, row_count, body_bytes, run_id, kind,
             submitted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, now()))
         ON CONFLICT (activity_id) DO NOTHING",
    )
    .bind(a.activity_id)
    .bind(account)
    .bind(a.state)
    .bind(a.list_ids)
    .bind(a.row_count)
    .bind(a.body_bytes)
    .bind(a.run_id)
    .bind(a.kind)
    .bind(a.submitted_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a contact export ccsync created (kind `contact_exports`), finished at once: the
/// backfill follows it itself, the push never polls it, and the push's recovery of lost
/// answers knows it is not one of its own imports.
pub async fn record_export(
    conn: &mut PgConnection,
    account: &str,
    activity_id: &str,
    state: &str,
    run_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.import_activities
            (activity_id, account_id, state, run_id, kind, finished_at)
         VALUES ($1, $2, $3, $4, 'contact_exports', now())
         ON CONFLICT (activity_id) DO NOTHING",
    )
    .bind(activity_id)
    .bind(account)
    .bind(state)
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Activities of `account` still in flight: (activity_id, submitted_at, kind), oldest
/// first.
pub async fn open(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Vec<(String, DateTime<Utc>, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT activity_id, submitted_at, kind FROM ccsync.import_activities
         WHERE account_id = $1 AND finished_at IS NULL ORDER BY submitted_at, activity_id",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await
}

/// Records one poll; `finished` sets `finished_at`.
pub async fn record_poll(
    conn: &mut PgConnection,
    activity_id: &str,
    state: &str,
    percent_done: Option<i64>,
    status: Option<&Value>,
    errors: Option<&Value>,
    finished: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ccsync.import_activities SET
            state = $2, percent_done = COALESCE($3, percent_done),
            status = COALESCE($4, status), activity_errors = COALESCE($5, activity_errors),
            last_polled_at = now(), updated_at = now(),
            finished_at = CASE WHEN $6 THEN now() ELSE finished_at END
         WHERE activity_id = $1",
    )
    .bind(activity_id)
    .bind(state)
    .bind(percent_done.map(|p| p.clamp(0, 100) as i32))
    .bind(status)
    .bind(errors)
    .bind(finished)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The lists an import named and when it was submitted.
pub async fn lists_and_submitted_at(
    conn: &mut PgConnection,
    activity_id: &str,
) -> Result<Option<(Vec<Uuid>, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT list_ids, submitted_at FROM ccsync.import_activities WHERE activity_id = $1",
    )
    .bind(activity_id)
    .fetch_optional(&mut *conn)
    .await
}

/// Which of `ids` the store has a record of (any account).
pub async fn known(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT activity_id FROM ccsync.import_activities WHERE activity_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(found.into_iter().collect())
}
