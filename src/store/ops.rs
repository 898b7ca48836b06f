//! Read-only queries behind `/readyz` and the gauges of `/metrics`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::core::states::RunOutcome;

/// The database answers.
pub async fn ping(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *conn).await?;
    Ok(())
}

/// Accounts whose refresh token was refused: they need `ccsync auth login` again.
pub async fn accounts_needing_reauth(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT account_id FROM ccsync.oauth_tokens WHERE needs_reauth ORDER BY account_id",
    )
    .fetch_all(&mut *conn)
    .await
}

/// For each `(account, job)` key: since when its runs have failed with no success in
/// between (`None`: its latest run that did work succeeded, or it never failed).
pub async fn failing_since(
    conn: &mut PgConnection,
    accounts: &[String],
    jobs: &[String],
) -> Result<Vec<(String, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.account_id, k.job, f.started_at
         FROM unnest($1::text[], $2::text[]) AS k(account_id, job)
         LEFT JOIN LATERAL (
            SELECT started_at FROM ccsync.sync_runs r
            WHERE r.account_id = k.account_id AND r.job = k.job AND r.outcome = $3
            ORDER BY started_at DESC LIMIT 1) s ON true
         JOIN LATERAL (
            SELECT started_at FROM ccsync.sync_runs r
            WHERE r.account_id = k.account_id AND r.job = k.job AND r.outcome = $4
              AND r.started_at > coalesce(s.started_at, '-infinity')
            ORDER BY started_at LIMIT 1) f ON true
         ORDER BY 1, 2",
    )
    .bind(accounts)
    .bind(jobs)
    .bind(RunOutcome::Succeeded.as_str())
    .bind(RunOutcome::Failed.as_str())
    .fetch_all(&mut *conn)
    .await
}

/// Per (account, job): seconds since the watermark and since the last success.
pub async fn lags(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, Option<f64>, Option<f64>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, job,
                extract(epoch FROM now() - watermark)::float8,
                extract(epoch FROM now() - last_success_at)::float8
         FROM ccsync.sync_state ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Import activities of `account` that finished at or after `since`: (state, seconds from
/// submission to the end).
pub async fn activities_finished_since(
    conn: &mut PgConnection,
    account: &str,
    since: DateTime<Utc>,
) -> Result<Vec<(String, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, extract(epoch FROM finished_at - submitted_at)::float8
         FROM ccsync.import_activities
         WHERE account_id = $1 AND finished_at >= $2",
    )
    .bind(account)
    .bind(since)
    .fetch_all(&mut *conn)
    .await
}

/// Per (account, job): when it last succeeded, as Unix seconds (jobs that never did are
/// left out).
pub async fn last_successes(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, job, extract(epoch FROM last_success_at)::float8
         FROM ccsync.sync_state WHERE last_success_at IS NOT NULL ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Per account: seconds since the oldest `pending` outbound row was queued.
pub async fn oldest_pending_outbound(
    conn: &mut PgConnection,
) -> Result<Vec<(String, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, extract(epoch FROM now() - min(created_at))::float8
         FROM ccsync.outbound WHERE state = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(crate::core::states::OutboundState::Pending.as_str())
    .fetch_all(&mut *conn)
    .await
}

/// Per account: seconds since the oldest import activity still in flight was submitted.
pub async fn oldest_activity_in_flight(
    conn: &mut PgConnection,
) -> Result<Vec<(String, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, extract(epoch FROM now() - min(submitted_at))::float8
         FROM ccsync.import_activities WHERE finished_at IS NULL GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
}
