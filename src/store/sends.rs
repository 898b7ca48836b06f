//! `send_attempts`: a bulk request recorded, with its rows marked, before it is sent
//! (`core::sends` says what becomes of one whose answer was never recorded).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::core::states::OutboundState::{Failed, Pending, Submitted};

/// A request about to be sent.
#[derive(Debug, Clone)]
pub struct NewAttempt<'a> {
    pub kind: &'a str,
    pub list_ids: &'a [Uuid],
    pub row_ids: &'a [i64],
    pub reasons: &'a [Option<String>],
    pub body_bytes: i32,
    pub run_id: Uuid,
}

/// A send attempt as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub id: Uuid,
    pub kind: String,
    pub list_ids: Vec<Uuid>,
    pub row_ids: Vec<i64>,
    pub reasons: Vec<Option<String>>,
    pub body_bytes: i32,
    pub run_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub lost_answer: Option<String>,
}

/// Records the attempt and marks its (pending) rows with it, saying so in their reason.
/// Commit this before the request is sent.
pub async fn begin(
    conn: &mut PgConnection,
    account: &str,
    a: &NewAttempt<'_>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO ccsync.send_attempts
            (id, account_id, kind, list_ids, row_count, row_ids, reasons, body_bytes, run_id,
             previous_reasons)
         VALUES ($1, $2, $3, $4, cardinality($5::bigint[]), $5, $6, $7, $8,
                 ARRAY(SELECT o.reason FROM unnest($5::bigint[]) WITH ORDINALITY AS u(id, n)
                       LEFT JOIN ccsync.outbound o ON o.id = u.id ORDER BY u.n))",
    )
    .bind(id)
    .bind(account)
    .bind(a.kind)
    .bind(a.list_ids)
    .bind(a.row_ids)
    .bind(a.reasons)
    .bind(a.body_bytes)
    .bind(a.run_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE ccsync.outbound SET send_attempt = $1, updated_at = now(),
                reason = format('sending (%s): if ccsync stops before recording the answer, the \
                                 next push looks for the activity in Constant Contact before \
                                 anything is sent again', $4::text)
         WHERE id = ANY($2) AND state = $3",
    )
    .bind(id)
    .bind(a.row_ids)
    .bind(Pending.as_str())
    .bind(a.kind)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// The answer came and is recorded in the same transaction: the attempt is over.
pub async fn end(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ccsync.send_attempts WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The client gave up on the answer (`why`): whether the request took effect is unknown.
/// The rows stay marked; the next push resolves the attempt.
pub async fn answer_lost(conn: &mut PgConnection, id: Uuid, why: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ccsync.send_attempts SET lost_answer = $2 WHERE id = $1")
        .bind(id)
        .bind(why)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Attempts of `account` left from earlier runs (or this one), oldest first.
pub async fn open(conn: &mut PgConnection, account: &str) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, list_ids, row_ids, reasons, body_bytes, run_id, started_at, lost_answer
         FROM ccsync.send_attempts WHERE account_id = $1 ORDER BY started_at, id",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await
}

/// Nothing in Constant Contact came from the attempt: its rows are unmarked (planned again
/// when due) with `reason`, or with the reason they had before the attempt when `None` (a
/// request refused before it was sent leaves its rows as they were), and the attempt
/// removed. Returns the rows released.
pub async fn release(
    conn: &mut PgConnection,
    id: Uuid,
    reason: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE ccsync.outbound o SET send_attempt = NULL, updated_at = now(),
                reason = CASE WHEN $2::text IS NULL THEN u.previous ELSE $2 END
         FROM ccsync.send_attempts a,
              unnest(a.row_ids, a.previous_reasons) AS u(id, previous)
         WHERE a.id = $1 AND o.id = u.id AND o.send_attempt = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    end(conn, id).await?;
    Ok(r.rows_affected())
}

/// The attempt became `activity_id`: its rows (pending, or failed by their attempts count
/// while the answer was unknown) become `submitted` to it with the attempt's reasons, and
/// the attempt is removed. The caller records the activity. Returns the rows adopted.
pub async fn adopt(
    conn: &mut PgConnection,
    a: &Attempt,
    activity_id: &str,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE ccsync.outbound o SET state = $4, activity_id = $2, reason = u.reason,
                next_attempt_at = NULL, send_attempt = NULL, updated_at = now()
         FROM UNNEST($3::bigint[], $5::text[]) AS u(id, reason)
         WHERE o.id = u.id AND o.send_attempt = $1 AND o.state IN ($6, $7)",
    )
    .bind(a.id)
    .bind(activity_id)
    .bind(&a.row_ids)
    .bind(Submitted.as_str())
    .bind(&a.reasons)
    .bind(Pending.as_str())
    .bind(Failed.as_str())
    .execute(&mut *conn)
    .await?;
    end(conn, a.id).await?;
    Ok(r.rows_affected())
}
