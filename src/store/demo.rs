//! The demo's and the benchmark's own statements: forgetting an account between runs,
//! queueing rows as an application would, and the read-outs the demo prints.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// The tables that carry an account's data, in an order that deletes cleanly.
const ACCOUNT_TABLES: &[&str] = &[
    "contacts",
    "contact_lists",
    "list_memberships",
    "outbound",
    "changes",
    "sync_state",
    "sync_runs",
    "import_activities",
    "oauth_tokens",
];

/// Deletes everything the store holds for `account` (a demo starts from nothing).
pub async fn forget_account(conn: &mut PgConnection, account: &str) -> Result<(), sqlx::Error> {
    for table in ACCOUNT_TABLES {
        sqlx::query(&format!("DELETE FROM ccsync.{table} WHERE account_id = $1"))
            .bind(account)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Empties every account table and the request budget (the benchmark's own database only: a run measured after a
/// `DELETE` of the last run's rows would pay for their dead index entries).
pub async fn truncate_all(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // Today's request count too: a benchmark counts requests, it does not ration them (a
    // day of benchmarks would otherwise exhaust the key's budget and flag it for the day).
    let tables: Vec<String> = ACCOUNT_TABLES
        .iter()
        .chain(&["api_usage", "api_quota"])
        .map(|t| format!("ccsync.{t}"))
        .collect();
    sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Queues one outbound row, as the application does (the whole application API).
pub async fn queue_outbound(
    conn: &mut PgConnection,
    account: &str,
    op: &str,
    email: &str,
    fields: &Value,
    list_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.outbound (account_id, op, email, fields, list_ids)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(account)
    .bind(op)
    .bind(email)
    .bind(fields)
    .bind(list_ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every outbound row of `account`: (id, email, state, reason), by id.
pub async fn outbound_rows(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Vec<(i64, String, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, email, state, reason FROM ccsync.outbound WHERE account_id = $1 ORDER BY id",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await
}

/// The changes log of `account` counted by (origin, kind).
pub async fn changes_by_kind(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT origin, kind, count(*) FROM ccsync.changes WHERE account_id = $1 \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await
}

/// Contacts stored for `account`.
pub async fn contacts_count(conn: &mut PgConnection, account: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM ccsync.contacts WHERE account_id = $1")
        .bind(account)
        .fetch_one(&mut *conn)
        .await
}
