//! `sync_runs`: one row per run that does work.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Records the start of a run (`outcome = running`).
pub async fn start(
    conn: &mut PgConnection,
    id: Uuid,
    account: &str,
    job: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.sync_runs (id, account_id, job, started_at, outcome)
         VALUES ($1, $2, $3, now(), 'running')",
    )
    .bind(id)
    .bind(account)
    .bind(job)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the end of a run with its outcome, stats and error chain.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    outcome: &str,
    stats: &Value,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ccsync.sync_runs SET finished_at = now(), outcome = $2, stats = $3, error = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .bind(stats)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a firing skipped because the same (account, job) was already running.
pub async fn skipped(
    conn: &mut PgConnection,
    account: &str,
    job: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.sync_runs (id, account_id, job, started_at, finished_at, outcome, error)
         VALUES ($1, $2, $3, now(), now(), 'skipped', $4)",
    )
    .bind(Uuid::new_v4())
    .bind(account)
    .bind(job)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Closes runs of (account, job) left `running` by a process that died: the caller holds the
/// run lock, so no such run can still be alive. Returns how many were closed.
pub async fn close_orphans(
    conn: &mut PgConnection,
    account: &str,
    job: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ccsync.sync_runs SET outcome = 'failed', finished_at = now(),
            error = 'interrupted: the process ended before the run finished'
         WHERE account_id = $1 AND job = $2 AND outcome = 'running'",
    )
    .bind(account)
    .bind(job)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
