//! Retention: deletes old bookkeeping by age, in small batches, never what is still read.
//!
//! Each table has one predicate (below) saying which rows are old *and* no longer needed.
//! A prune deletes at most `batch` of them per statement — `DELETE … WHERE ctid =
//! ANY(ARRAY(SELECT ctid … LIMIT batch))`, each statement its own short transaction — and
//! repeats until a statement deletes fewer than `batch`, so no lock is held for long and a
//! crash loses nothing but the batch in hand. A row updated concurrently moves to a new ctid
//! and is skipped (the `DELETE` re-checks its ctid), so a row that became needed again while
//! a batch was chosen is left alone.
//!
//! What is kept whatever its age (DESIGN.md, "Retention" in the README):
//! - `changes` of an account at or after the `created_at` of its oldest `pending` /
//!   `submitted` outbound row (the push guard reads Constant Contact's changes after it);
//! - `completed` outbound rows updated at or after that instant (the guard's echo check);
//!   only terminal rows (`completed`, `skipped`, `failed`) are ever pruned;
//! - `import_activities` not finished, or named by a `submitted` outbound row;
//! - `sync_runs` not finished, and per (account, job) the latest run, the latest that was not
//!   `skipped` (status, the push-freshness check) and the latest that succeeded (readiness);
//! - `schedule_claims` not finished (a replica takes them over).

use sqlx::PgConnection;

/// How long each table keeps its rows, in days (`0` keeps forever), and the batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub changes_days: u32,
    pub sync_runs_days: u32,
    pub outbound_days: u32,
    pub import_activities_days: u32,
    pub api_usage_days: u32,
    pub schedule_claims_days: u32,
    /// Rows per `DELETE` statement (at least 1).
    pub batch_size: u32,
}

/// A table that retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Changes,
    SyncRuns,
    Outbound,
    ImportActivities,
    ApiUsage,
    ScheduleClaims,
}

/// Per account, the oldest `created_at` among its rows still to be pushed or confirmed:
/// computed once per statement (not once per candidate row) and joined as `f`.
const FLOOR_CTE: &str = "WITH floor AS (
         SELECT account_id, min(created_at) AS since FROM ccsync.outbound
         WHERE state IN ('pending', 'submitted') GROUP BY account_id)";
const FLOOR_JOIN: &str = "LEFT JOIN floor f ON f.account_id = t.account_id";
/// Before the floor (`infinity` when the account has nothing open).
const BEFORE_FLOOR: &str = "coalesce(f.since, 'infinity'::timestamptz)";

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Changes,
        Table::SyncRuns,
        Table::Outbound,
        Table::ImportActivities,
        Table::ApiUsage,
        Table::ScheduleClaims,
    ];

    /// The table's name in the `ccsync` schema.
    pub fn name(self) -> &'static str {
        match self {
            Table::Changes => "changes",
            Table::SyncRuns => "sync_runs",
            Table::Outbound => "outbound",
            Table::ImportActivities => "import_activities",
            Table::ApiUsage => "api_usage",
            Table::ScheduleClaims => "schedule_claims",
        }
    }

    /// Days kept under `policy` (0 = forever).
    pub fn days(self, policy: &Policy) -> u32 {
        match self {
            Table::Changes => policy.changes_days,
            Table::SyncRuns => policy.sync_runs_days,
            Table::Outbound => policy.outbound_days,
            Table::ImportActivities => policy.import_activities_days,
            Table::ApiUsage => policy.api_usage_days,
            Table::ScheduleClaims => policy.schedule_claims_days,
        }
    }

    /// `(WITH …, JOIN …)` the predicate needs around `ccsync.<table> t`.
    fn floor(self) -> (&'static str, &'static str) {
        match self {
            Table::Changes | Table::Outbound => (FLOOR_CTE, FLOOR_JOIN),
            _ => ("", ""),
        }
    }

    /// Rows of `t` that may go; `$1` is the age in days.
    fn predicate(self) -> String {
        let older = |col: &str| format!("t.{col} < now() - make_interval(days => $1)");
        match self {
            Table::Changes => format!("{} AND t.at < {BEFORE_FLOOR}", older("at")),
            Table::Outbound => format!(
                "t.state IN ('completed', 'skipped', 'failed') AND {}
                 AND (t.state <> 'completed' OR t.updated_at < {BEFORE_FLOOR})",
                older("updated_at")
            ),
            Table::ImportActivities => format!(
                "t.finished_at IS NOT NULL AND {}
                 AND NOT EXISTS (SELECT 1 FROM ccsync.outbound o
                     WHERE o.account_id = t.account_id AND o.state = 'submitted'
                       AND o.activity_id = t.activity_id)",
                older("finished_at")
            ),
            Table::SyncRuns => {
                let latest = |extra: &str| {
                    format!(
                        "t.id IS DISTINCT FROM (SELECT r.id FROM ccsync.sync_runs r
                             WHERE r.account_id = t.account_id AND r.job = t.job {extra}
                             ORDER BY r.started_at DESC LIMIT 1)"
                    )
                };
                format!(
                    "t.finished_at IS NOT NULL AND {} AND {} AND {} AND {}",
                    older("started_at"),
                    latest(""),
                    latest("AND r.outcome IS DISTINCT FROM 'skipped'"),
                    latest("AND r.outcome = 'succeeded'"),
                )
            }
            Table::ApiUsage => "t.day < (now() AT TIME ZONE 'UTC')::date - $1".to_string(),
            Table::ScheduleClaims => format!("t.finished_at IS NOT NULL AND {}", older("tick")),
        }
    }
}

/// What a prune did (or, dry, would do) to one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub table: &'static str,
    /// Days kept (0 = forever: the table was not touched).
    pub days: u32,
    pub rows: u64,
    /// `DELETE` statements run (0 on a dry run).
    pub batches: u64,
}

/// Prunes one table: batches of `policy.batch_size` until a batch comes back short, or
/// `keep_going` says stop (checked between batches). `dry_run` counts instead.
pub async fn prune_table(
    conn: &mut PgConnection,
    table: Table,
    policy: &Policy,
    dry_run: bool,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Result<Pruned, sqlx::Error> {
    let days = table.days(policy);
    let mut out = Pruned {
        table: table.name(),
        days,
        rows: 0,
        batches: 0,
    };
    if days == 0 {
        return Ok(out);
    }
    let days_i = i32::try_from(days).unwrap_or(i32::MAX);
    let (name, pred) = (table.name(), table.predicate());
    let (with, join) = table.floor();
    if dry_run {
        let n: i64 = sqlx::query_scalar(&format!(
            "{with} SELECT count(*) FROM ccsync.{name} t {join} WHERE {pred}"
        ))
        .bind(days_i)
        .fetch_one(&mut *conn)
        .await?;
        out.rows = u64::try_from(n).unwrap_or(0);
        return Ok(out);
    }
    let batch = i64::from(policy.batch_size.max(1));
    let sql = format!(
        "DELETE FROM ccsync.{name} WHERE ctid = ANY(ARRAY(
             {with} SELECT t.ctid FROM ccsync.{name} t {join} WHERE {pred} LIMIT $2))"
    );
    while keep_going() {
        let n = sqlx::query(&sql)
            .bind(days_i)
            .bind(batch)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        out.rows += n;
        out.batches += 1;
        if n < batch as u64 {
            break;
        }
    }
    Ok(out)
}

/// Prunes every table in turn (see [`prune_table`]).
pub async fn prune_all(
    conn: &mut PgConnection,
    policy: &Policy,
    dry_run: bool,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Pruned>, sqlx::Error> {
    let mut out = Vec::with_capacity(Table::ALL.len());
    for table in Table::ALL {
        out.push(prune_table(conn, table, policy, dry_run, keep_going).await?);
    }
    Ok(out)
}

/// Takes the session-level lock that keeps two replicas from pruning at once (false when
/// another holds it). Held on `conn` until [`unlock`] or the connection closes.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('ccsync:retention', 0))")
        .fetch_one(&mut *conn)
        .await
}

/// Releases [`try_lock`].
pub async fn unlock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('ccsync:retention', 0))")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Rows and on-disk size (`pg_total_relation_size`: indexes and TOAST included) of each
/// table retention prunes, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableSize {
    pub table: String,
    pub rows: i64,
    pub bytes: i64,
}

/// Exact row counts (one `count(*)` per table) and total sizes.
pub async fn table_sizes(conn: &mut PgConnection) -> Result<Vec<TableSize>, sqlx::Error> {
    let parts: Vec<String> = Table::ALL
        .iter()
        .map(|t| {
            let n = t.name();
            format!(
                "SELECT '{n}'::text, (SELECT count(*) FROM ccsync.{n}),
                        pg_total_relation_size('ccsync.{n}')"
            )
        })
        .collect();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&parts.join(" UNION ALL "))
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(table, rows, bytes)| TableSize { table, rows, bytes })
        .collect())
}
