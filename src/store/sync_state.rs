//! `sync_state`: one watermark per (account, job). It only moves forward.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The stored watermark of a job, if any.
pub async fn watermark(
    conn: &mut PgConnection,
    account: &str,
    job: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let w: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT watermark FROM ccsync.sync_state WHERE account_id = $1 AND job = $2",
    )
    .bind(account)
    .bind(job)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(w.flatten())
}

/// Advances the watermark to `to` (never backwards: `GREATEST`) and records the success.
/// Call it inside the transaction that commits the last page it covers.
pub async fn advance_watermark(
    conn: &mut PgConnection,
    account: &str,
    job: &str,
    to: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.sync_state (account_id, job, watermark, last_success_at, updated_at)
         VALUES ($1, $2, $3, now(), now())
         ON CONFLICT (account_id, job) DO UPDATE SET
            watermark = GREATEST(ccsync.sync_state.watermark, EXCLUDED.watermark),
            last_success_at = now(), updated_at = now()",
    )
    .bind(account)
    .bind(job)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
