//! Read-only queries behind `ccsync status`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::core::states::OutboundState;

/// One (account, job) line of `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobStatus {
    pub account_id: String,
    pub job: String,
    pub watermark: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_run_started_at: Option<DateTime<Utc>>,
    pub last_run_finished_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub last_stats: Option<serde_json::Value>,
}

/// Every (account, job) that has a watermark or a run, with the latest run.
pub async fn jobs(conn: &mut PgConnection) -> Result<Vec<JobStatus>, sqlx::Error> {
    type R = (
        String,
        String,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<String>,
        Option<serde_json::Value>,
    );
    let rows: Vec<R> = sqlx::query_as(
        "WITH keys AS (
            SELECT account_id, job FROM ccsync.sync_state
            UNION SELECT DISTINCT account_id, job FROM ccsync.sync_runs)
         SELECT k.account_id, k.job, s.watermark, s.last_success_at,
                r.started_at, r.finished_at, r.outcome, r.error, r.stats
         FROM keys k
         LEFT JOIN ccsync.sync_state s USING (account_id, job)
         LEFT JOIN LATERAL (
            SELECT started_at, finished_at, outcome, error, stats FROM ccsync.sync_runs r
            WHERE r.account_id = k.account_id AND r.job = k.job AND r.outcome <> 'skipped'
            ORDER BY started_at DESC LIMIT 1) r ON true
         ORDER BY k.account_id, k.job",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(account_id, job, watermark, last_success_at, s, f, o, e, st)| JobStatus {
                account_id,
                job,
                watermark,
                last_success_at,
                last_run_started_at: s,
                last_run_finished_at: f,
                last_outcome: o,
                last_error: e,
                last_stats: st,
            },
        )
        .collect())
}

/// Outbound rows by (account, state).
pub async fn outbound_by_state(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, state, count(*) FROM ccsync.outbound GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Import activities not yet finished, per account.
pub async fn activities_in_flight(
    conn: &mut PgConnection,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, count(*) FROM ccsync.import_activities
         WHERE finished_at IS NULL GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
}

/// One of the most common reasons of an account's `failed` and `skipped` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCount {
    pub account_id: String,
    pub state: String,
    pub reason: String,
    pub rows: i64,
}

/// Per account, the `per_account` most common (state, reason) pairs among `failed` and
/// `skipped` rows, most rows first.
pub async fn outbound_top_reasons(
    conn: &mut PgConnection,
    per_account: i64,
) -> Result<Vec<ReasonCount>, sqlx::Error> {
    let states = [
        OutboundState::Failed.as_str(),
        OutboundState::Skipped.as_str(),
    ];
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT account_id, state, reason, n FROM (
            SELECT account_id, state, reason, count(*) AS n,
                   row_number() OVER (PARTITION BY account_id
                                      ORDER BY count(*) DESC, state, reason) AS rank
            FROM ccsync.outbound
            WHERE state = ANY($1) AND reason IS NOT NULL
            GROUP BY account_id, state, reason) r
         WHERE rank <= $2
         ORDER BY account_id, rank",
    )
    .bind(&states[..])
    .bind(per_account)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(account_id, state, reason, rows)| ReasonCount {
            account_id,
            state,
            reason,
            rows,
        })
        .collect())
}
