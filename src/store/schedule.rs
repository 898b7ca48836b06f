//! `schedule_claims` and the per-account cycle lock: each scheduled cycle of an account runs
//! once per tick, whatever the number of replicas, and a cycle cut short by a killed or
//! stopped replica is finished by the next one.
//!
//! Two mechanisms, because each alone is not enough:
//! - the claim row (`INSERT … ON CONFLICT DO NOTHING`) stops a second replica that fires
//!   the same tick *after* the first one finished (an advisory lock alone would let it run
//!   the tick again);
//! - the session advisory lock, held on a dedicated connection for the whole cycle, stops
//!   two cycles of one account from overlapping and proves that an unfinished claim is
//!   abandoned: PostgreSQL drops the lock when its holder's connection dies.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// An unfinished claim: its cycle never completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenClaim {
    pub tick: DateTime<Utc>,
    pub jobs: Vec<String>,
    pub done: Vec<String>,
}

fn cycle_lock_key(account: &str) -> String {
    format!("ccsync:cycle:{account}")
}

/// Claims `(account, tick)`. False when another replica (or this one) already has it.
pub async fn try_claim(
    conn: &mut PgConnection,
    account: &str,
    tick: DateTime<Utc>,
    jobs: &[&str],
    replica: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO ccsync.schedule_claims (account_id, tick, jobs, replica)
         VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, tick) DO NOTHING",
    )
    .bind(account)
    .bind(tick)
    .bind(jobs)
    .bind(replica)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes the account's cycle lock on this (dedicated) connection, if free.
pub async fn try_cycle_lock(conn: &mut PgConnection, account: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(cycle_lock_key(account))
        .fetch_one(&mut *conn)
        .await
}

/// Releases the cycle lock taken on this connection.
pub async fn cycle_unlock(conn: &mut PgConnection, account: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(cycle_lock_key(account))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Unfinished claims of `account` before `tick`. Call it holding the cycle lock: they are
/// then abandoned (their replica died or stopped mid-cycle).
pub async fn open_claims_before(
    conn: &mut PgConnection,
    account: &str,
    tick: DateTime<Utc>,
) -> Result<Vec<OpenClaim>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT tick, jobs, done FROM ccsync.schedule_claims
         WHERE account_id = $1 AND tick < $2 AND finished_at IS NULL ORDER BY tick",
    )
    .bind(account)
    .bind(tick)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tick, jobs, done)| OpenClaim { tick, jobs, done })
        .collect())
}

/// Marks abandoned claims as taken over by the cycle of `by`.
pub async fn mark_recovered(
    conn: &mut PgConnection,
    account: &str,
    ticks: &[DateTime<Utc>],
    by: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ccsync.schedule_claims
         SET finished_at = now(), outcome = 'recovered', recovered_by = $3
         WHERE account_id = $1 AND tick = ANY($2) AND finished_at IS NULL",
    )
    .bind(account)
    .bind(ticks)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Records that `job` of the cycle at `tick` ended (whatever its outcome) and tags its
/// `sync_runs` row with the tick, in one statement.
pub async fn job_done(
    conn: &mut PgConnection,
    account: &str,
    tick: DateTime<Utc>,
    job: &str,
    run_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH c AS (
            UPDATE ccsync.schedule_claims SET done = array_append(done, $3)
            WHERE account_id = $1 AND tick = $2 AND NOT ($3 = ANY(done)))
         UPDATE ccsync.sync_runs SET scheduled_for = $2 WHERE id = $4",
    )
    .bind(account)
    .bind(tick)
    .bind(job)
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Closes the claim with `outcome` unless it is already closed. True when this call closed it.
pub async fn finish(
    conn: &mut PgConnection,
    account: &str,
    tick: DateTime<Utc>,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ccsync.schedule_claims SET finished_at = now(), outcome = $3
         WHERE account_id = $1 AND tick = $2 AND finished_at IS NULL",
    )
    .bind(account)
    .bind(tick)
    .bind(outcome)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Which of `accounts` have unfinished claims (candidates for recovery at start-up).
pub async fn accounts_with_open_claims(
    conn: &mut PgConnection,
    accounts: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT account_id FROM ccsync.schedule_claims
         WHERE finished_at IS NULL AND account_id = ANY($1) ORDER BY 1",
    )
    .bind(accounts)
    .fetch_all(&mut *conn)
    .await
}

/// Deletes finished claims older than `keep` (bounded table).
pub async fn prune(conn: &mut PgConnection, keep: std::time::Duration) -> Result<u64, sqlx::Error> {
    let secs = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX / 2);
    let done = sqlx::query(
        "DELETE FROM ccsync.schedule_claims
         WHERE finished_at IS NOT NULL AND tick < now() - $1 * interval '1 second'",
    )
    .bind(secs)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Replaces the job list of a claim (when it takes over abandoned jobs).
pub async fn set_jobs(
    conn: &mut PgConnection,
    account: &str,
    tick: DateTime<Utc>,
    jobs: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ccsync.schedule_claims SET jobs = $3 WHERE account_id = $1 AND tick = $2")
        .bind(account)
        .bind(tick)
        .bind(jobs)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
