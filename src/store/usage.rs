//! `api_usage` and `api_quota`: the API key's daily budget, shared by every account and
//! replica through PostgreSQL.

use chrono::{NaiveDate, Utc};
use futures_util::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use crate::ctct::limiter::{Budget, BudgetError, RequestBudget};

/// The daily request budget in PostgreSQL.
pub struct PgBudget {
    pool: PgPool,
    daily_limit: u64,
}

impl PgBudget {
    pub fn new(pool: PgPool, daily_limit: u64) -> Self {
        PgBudget { pool, daily_limit }
    }
}

/// Today in UTC (the API's quota resets at 00:00 UTC).
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

impl RequestBudget for PgBudget {
    fn take<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Budget, BudgetError>> {
        Box::pin(async move {
            // One round trip: read today's total and the quota flag, count the request only
            // when the budget allows it.
            let (used, granted): (i64, bool) = sqlx::query_as(
                "WITH state AS (
                    SELECT (SELECT coalesce(sum(requests), 0) FROM ccsync.api_usage WHERE day = $1)::bigint AS used,
                           EXISTS (SELECT 1 FROM ccsync.api_quota WHERE day = $1) AS spent),
                 ins AS (
                    INSERT INTO ccsync.api_usage (day, account_id, requests)
                    SELECT $1, $2, 1 FROM state WHERE NOT spent AND used < $3
                    ON CONFLICT (day, account_id) DO UPDATE
                        SET requests = ccsync.api_usage.requests + 1, updated_at = now()
                    RETURNING 1)
                 SELECT (SELECT used FROM state), EXISTS (SELECT 1 FROM ins)",
            )
            .bind(today())
            .bind(account)
            .bind(self.daily_limit as i64)
            .fetch_one(&self.pool)
            .await?;
            Ok(if granted {
                Budget::Granted {
                    used: used as u64 + 1,
                }
            } else {
                Budget::Exhausted
            })
        })
    }

    fn exhausted<'a>(&'a self) -> BoxFuture<'a, Result<(), BudgetError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO ccsync.api_quota (day) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(today())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

/// Requests counted today, per account.
pub async fn used_today(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, requests FROM ccsync.api_usage WHERE day = $1 ORDER BY account_id",
    )
    .bind(today())
    .fetch_all(&mut *conn)
    .await
}

/// Whether the API said `quota_exceeded` today.
pub async fn quota_exhausted_today(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ccsync.api_quota WHERE day = $1)")
        .bind(today())
        .fetch_one(&mut *conn)
        .await
}
