//! The append-only `changes` log and its `NOTIFY ccsync_changes`.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::core::change::Change;

/// The channel applications `LISTEN` on.
pub const CHANNEL: &str = "ccsync_changes";

/// Appends `changes` in one statement and, when any were written, queues a
/// `NOTIFY ccsync_changes` (delivered at commit) with the account and the id range.
/// Returns the number of rows written.
pub async fn append(
    conn: &mut PgConnection,
    account: &str,
    run_id: Option<Uuid>,
    origin: &str,
    changes: &[Change],
) -> Result<u64, sqlx::Error> {
    let cols = Columns {
        contact_id: changes.iter().map(|c| Some(c.contact_id)).collect(),
        email: changes.iter().map(|c| c.email.as_deref()).collect(),
        kind: changes.iter().map(|c| c.kind.as_str()).collect(),
        field: changes.iter().map(|c| c.field).collect(),
        old_value: changes.iter().map(|c| c.old_value.clone()).collect(),
        new_value: changes.iter().map(|c| c.new_value.clone()).collect(),
    };
    append_columns(conn, account, run_id, origin, cols).await
}

/// A batch of `changes` rows as column vectors (all of the same length).
pub struct Columns<'a> {
    pub contact_id: Vec<Option<Uuid>>,
    pub email: Vec<Option<&'a str>>,
    pub kind: Vec<&'a str>,
    pub field: Vec<Option<&'a str>>,
    pub old_value: Vec<Option<Value>>,
    pub new_value: Vec<Option<Value>>,
}

/// Appends a batch in one statement and queues the `NOTIFY` (delivered at commit). Every
/// writer of the log (the pulls and the push) goes through here.
pub async fn append_columns(
    conn: &mut PgConnection,
    account: &str,
    run_id: Option<Uuid>,
    origin: &str,
    cols: Columns<'_>,
) -> Result<u64, sqlx::Error> {
    if cols.kind.is_empty() {
        return Ok(0);
    }
    let (first, last, n): (Option<i64>, Option<i64>, i64) = sqlx::query_as(
        "WITH ins AS (
            INSERT INTO ccsync.changes (account_id, run_id, origin, contact_id, email, kind,
                                        field, old_value, new_value)
            SELECT $1, $2, $3, u.* FROM UNNEST($4::uuid[], $5::text[], $6::text[], $7::text[],
                                               $8::jsonb[], $9::jsonb[]) AS u
            RETURNING id)
         SELECT min(id), max(id), count(*) FROM ins",
    )
    .bind(account)
    .bind(run_id)
    .bind(origin)
    .bind(cols.contact_id)
    .bind(cols.email)
    .bind(cols.kind)
    .bind(cols.field)
    .bind(cols.old_value)
    .bind(cols.new_value)
    .fetch_one(&mut *conn)
    .await?;
    if let (Some(first), Some(last)) = (first, last) {
        notify(conn, account, first, last).await?;
    }
    Ok(n as u64)
}

/// `NOTIFY ccsync_changes` with `{"account":..,"first_id":..,"last_id":..}`.
pub async fn notify(
    conn: &mut PgConnection,
    account: &str,
    first: i64,
    last: i64,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::json!({"account": account, "first_id": first, "last_id": last});
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Number of `changes` rows of an account (tests, status).
pub async fn count(conn: &mut PgConnection, account: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM ccsync.changes WHERE account_id = $1")
        .bind(account)
        .fetch_one(&mut *conn)
        .await
}
