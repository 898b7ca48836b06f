//! The append-only `changes` log and its `NOTIFY ccsync_changes`.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::copy::{copy_in, CopyRows};
use crate::core::change::Change;

/// The channel applications `LISTEN` on.
pub const CHANNEL: &str = "ccsync_changes";

/// Appends `changes` and, when any were written, queues a `NOTIFY ccsync_changes`
/// (delivered at commit) with the account and the id range. Returns the rows written.
pub async fn append(
    conn: &mut PgConnection,
    account: &str,
    run_id: Option<Uuid>,
    origin: &str,
    changes: &[Change],
) -> Result<u64, sqlx::Error> {
    let rows = changes.iter().map(|c| Row {
        contact_id: Some(c.contact_id),
        email: c.email.as_deref(),
        kind: c.kind.as_str(),
        field: c.field,
        old_value: c.old_value.as_ref(),
        new_value: c.new_value.as_ref(),
    });
    append_rows(conn, account, run_id, origin, rows).await
}

/// One `changes` row to append, borrowed from its writer's own shape.
pub struct Row<'a> {
    pub contact_id: Option<Uuid>,
    pub email: Option<&'a str>,
    pub kind: &'a str,
    pub field: Option<&'a str>,
    pub old_value: Option<&'a Value>,
    pub new_value: Option<&'a Value>,
}

/// Appends rows by binary `COPY` and queues the `NOTIFY` (delivered at commit). Their ids
/// are taken from the sequence first (one statement), so the notice names the batch's
/// range without reading the rows back. Every writer of the log (the pulls and the push)
/// goes through here.
pub async fn append_rows<'a>(
    conn: &mut PgConnection,
    account: &str,
    run_id: Option<Uuid>,
    origin: &str,
    rows: impl ExactSizeIterator<Item = Row<'a>>,
) -> Result<u64, sqlx::Error> {
    let n = rows.len();
    if n == 0 {
        return Ok(0);
    }
    // The ids, and the NOTIFY naming their range (delivered at commit, so sent with
    // them): one round trip.
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "WITH ids AS (SELECT nextval('ccsync.changes_id_seq') AS id FROM generate_series(1, $1))
         SELECT id FROM ids
         CROSS JOIN (SELECT {} FROM ids) n",
        notify_sql("$2", "$3", "min(id)", "max(id)")
    ))
    .bind(n as i64)
    .bind(CHANNEL)
    .bind(account)
    .fetch_all(&mut *conn)
    .await?;
    let mut data = CopyRows::with_capacity(n * 160);
    let enc = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    for (id, r) in ids.iter().zip(rows) {
        data.row(10)
            .i64(*id)
            .text(account)
            .opt_uuid(run_id)
            .text(origin)
            .opt_uuid(r.contact_id)
            .opt_text(r.email)
            .text(r.kind)
            .opt_text(r.field)
            .opt_jsonb(r.old_value)
            .and_then(|d| d.opt_jsonb(r.new_value))
            .map_err(enc)?;
    }
    let written = copy_in(
        conn,
        "COPY ccsync.changes (id, account_id, run_id, origin, contact_id, email, kind, field, \
            old_value, new_value) FROM STDIN (FORMAT binary)",
        data,
    )
    .await?;
    Ok(written)
}

/// `NOTIFY ccsync_changes` with `{"account":..,"first_id":..,"last_id":..}`.
pub async fn notify(
    conn: &mut PgConnection,
    account: &str,
    first: i64,
    last: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SELECT {}", notify_sql("$1", "$2", "$3", "$4")))
        .bind(CHANNEL)
        .bind(account)
        .bind(first)
        .bind(last)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The one `pg_notify` call both writers of the log use, over SQL expressions for the
/// channel, the account (text) and the id range (bigint), so the payload has one format.
fn notify_sql(channel: &str, account: &str, first: &str, last: &str) -> String {
    format!(
        "pg_notify({channel}, format('{{\"account\":%s,\"first_id\":%s,\"last_id\":%s}}', \
         to_json({account}::text), {first}, {last}))"
    )
}

/// Number of `changes` rows of an account (tests, status).
pub async fn count(conn: &mut PgConnection, account: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM ccsync.changes WHERE account_id = $1")
        .bind(account)
        .fetch_one(&mut *conn)
        .await
}
