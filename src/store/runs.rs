//! `sync_runs`: one row per run that does work.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::core::job::Job;
use crate::core::states::RunOutcome;

fn run_lock_key(account: &str, job: Job) -> String {
    format!("ccsync:job:{account}:{}", job.as_str())
}

/// Takes the session-level advisory lock of (account, job) on `conn` (a dedicated
/// connection held for the run: the lock belongs to the connection). False when another
/// run holds it, here or in another replica.
pub async fn try_run_lock(
    conn: &mut PgConnection,
    account: &str,
    job: Job,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(run_lock_key(account, job))
        .fetch_one(&mut *conn)
        .await
}

/// Releases the lock taken by [`try_run_lock`] on the same connection.
pub async fn run_unlock(
    conn: &mut PgConnection,
    account: &str,
    job: Job,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(run_lock_key(account, job))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether the connection holding a run lock still answers (a session-level advisory lock
/// lives exactly as long as its connection).
pub async fn lock_held(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *conn).await?;
    Ok(())
}

/// Records the start of a run (`outcome = running`).
pub async fn start(
    conn: &mut PgConnection,
    id: Uuid,
    account: &str,
    job: Job,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.sync_runs (id, account_id, job, started_at, outcome)
         VALUES ($1, $2, $3, now(), $4)",
    )
    .bind(id)
    .bind(account)
    .bind(job.as_str())
    .bind(RunOutcome::Running.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the end of a run with its outcome, stats and error chain.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    outcome: RunOutcome,
    stats: &Value,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ccsync.sync_runs SET finished_at = now(), outcome = $2, stats = $3, error = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome.as_str())
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
    job: Job,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.sync_runs (id, account_id, job, started_at, finished_at, outcome, error)
         VALUES ($1, $2, $3, now(), now(), $5, $4)",
    )
    .bind(Uuid::new_v4())
    .bind(account)
    .bind(job.as_str())
    .bind(reason)
    .bind(RunOutcome::Skipped.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Closes runs of (account, job) left `running` by a process that died: the caller holds the
/// run lock, so no such run can still be alive. Returns how many were closed.
pub async fn close_orphans(
    conn: &mut PgConnection,
    account: &str,
    job: Job,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ccsync.sync_runs SET outcome = $3, finished_at = now(),
            error = 'interrupted: the process ended before the run finished'
         WHERE account_id = $1 AND job = $2 AND outcome = $4",
    )
    .bind(account)
    .bind(job.as_str())
    .bind(RunOutcome::Failed.as_str())
    .bind(RunOutcome::Running.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// The latest run (not `skipped`) of each job of `account`, other than `exclude` (the
/// caller's own run): job → (outcome, started_at).
pub async fn latest_runs(
    conn: &mut PgConnection,
    account: &str,
    exclude: Uuid,
) -> Result<HashMap<Job, (Option<RunOutcome>, DateTime<Utc>)>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT DISTINCT ON (job) job, outcome, started_at FROM ccsync.sync_runs
         WHERE account_id = $1 AND id <> $2 AND outcome IS DISTINCT FROM $3
         ORDER BY job, started_at DESC",
    )
    .bind(account)
    .bind(exclude)
    .bind(RunOutcome::Skipped.as_str())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(job, outcome, started)| {
            let outcome = outcome.and_then(|o| o.parse().ok());
            Some((job.parse().ok()?, (outcome, started)))
        })
        .collect())
}
