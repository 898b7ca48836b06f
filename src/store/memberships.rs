//! `list_memberships`: batched adds and removals, and beyond one contact page: memberships of deleted lists, pending
//! outbound adds that protect a membership, and the reconcile's staging of the contacts
//! Constant Contact returned (a temporary table, so memory does not grow with list size).

use std::collections::BTreeSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::changes;
use super::copy::{copy_in, CopyRows};

/// Removes every membership of `account` in a list that is deleted locally (`deleted_at`
/// set) and logs each as `list_removed`, all in SQL (no rows pass through memory), with one
/// NOTIFY. Returns the number removed.
pub async fn remove_for_deleted_lists(
    conn: &mut PgConnection,
    account: &str,
    run_id: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let (first, last, n): (Option<i64>, Option<i64>, i64) = sqlx::query_as(
        "WITH gone AS (
            DELETE FROM ccsync.list_memberships m
            USING ccsync.contact_lists l
            WHERE m.account_id = $1 AND l.account_id = $1 AND l.list_id = m.list_id
              AND l.deleted_at IS NOT NULL
            RETURNING m.contact_id, m.list_id),
         ins AS (
            INSERT INTO ccsync.changes (account_id, run_id, origin, contact_id, email, kind,
                                        field, old_value)
            SELECT $1, $2, 'constant_contact', g.contact_id, c.email, 'list_removed',
                   'list_memberships', to_jsonb(g.list_id::text)
            FROM gone g
            LEFT JOIN ccsync.contacts c ON c.account_id = $1 AND c.contact_id = g.contact_id
            ORDER BY g.contact_id, g.list_id
            RETURNING id)
         SELECT min(id), max(id), count(*) FROM ins",
    )
    .bind(account)
    .bind(run_id)
    .fetch_one(&mut *conn)
    .await?;
    if let (Some(first), Some(last)) = (first, last) {
        changes::notify(conn, account, first, last).await?;
    }
    Ok(n as u64)
}

/// Creates (if needed) and empties the session's staging table of seen contact ids. It
/// lives on the connection, so the caller keeps one connection for a whole reconcile.
pub async fn reset_seen(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TEMPORARY TABLE IF NOT EXISTS ccsync_reconcile_seen (contact_id uuid PRIMARY KEY)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("TRUNCATE ccsync_reconcile_seen")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Adds contact ids to the staging table (one statement).
pub async fn stage_seen(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ccsync_reconcile_seen SELECT * FROM UNNEST($1::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Drops the staging table (end of a reconcile).
pub async fn drop_seen(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DROP TABLE IF EXISTS ccsync_reconcile_seen")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One local membership with its contact's email.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    pub contact_id: Uuid,
    pub list_id: Uuid,
    pub email: Option<String>,
}

/// Local memberships of `lists` whose contact is not in the staging table: Constant
/// Contact did not return the contact for any of these lists. At most `limit` rows after
/// `after` (keyset on (contact_id, list_id)), ordered.
pub async fn unseen_members(
    conn: &mut PgConnection,
    account: &str,
    lists: &[Uuid],
    after: Option<(Uuid, Uuid)>,
    limit: i64,
) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.contact_id, m.list_id, c.email FROM ccsync.list_memberships m
         LEFT JOIN ccsync.contacts c ON c.account_id = m.account_id AND c.contact_id = m.contact_id
         WHERE m.account_id = $1 AND m.list_id = ANY($2)
           AND ($3::uuid IS NULL OR (m.contact_id, m.list_id) > ($3::uuid, $4::uuid))
           AND NOT EXISTS (SELECT 1 FROM ccsync_reconcile_seen s WHERE s.contact_id = m.contact_id)
         ORDER BY m.contact_id, m.list_id
         LIMIT $5",
    )
    .bind(account)
    .bind(lists)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Contacts of `account` unsubscribed locally (and not deleted) that are not in the staging
/// table, after `after` (keyset), at most `limit`, ordered by id.
pub async fn unsubscribed_unseen(
    conn: &mut PgConnection,
    account: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.contact_id, c.email FROM ccsync.contacts c
         WHERE c.account_id = $1 AND c.permission_to_send = 'unsubscribed'
           AND c.deleted_at IS NULL AND ($2::uuid IS NULL OR c.contact_id > $2)
           AND NOT EXISTS (SELECT 1 FROM ccsync_reconcile_seen s WHERE s.contact_id = c.contact_id)
         ORDER BY c.contact_id LIMIT $3",
    )
    .bind(account)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Adds memberships (contact, list) in one statement.
pub async fn add(
    conn: &mut PgConnection,
    account: &str,
    pairs: &[(Uuid, Uuid)],
) -> Result<u64, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let (c, l): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    let done = sqlx::query(
        "INSERT INTO ccsync.list_memberships (account_id, contact_id, list_id)
         SELECT $1, c, l FROM UNNEST($2::uuid[], $3::uuid[]) AS u(c, l)
         ON CONFLICT DO NOTHING",
    )
    .bind(account)
    .bind(c)
    .bind(l)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts the memberships of contacts just inserted, by binary `COPY`; fails with a unique
/// violation on one already stored (see `contacts::NewRows::Copy`).
pub async fn insert_new(
    conn: &mut PgConnection,
    account: &str,
    pairs: &[(Uuid, Uuid)],
) -> Result<u64, sqlx::Error> {
    let mut data = CopyRows::with_capacity(pairs.len() * 50);
    for (c, l) in pairs {
        data.row(3).text(account).uuid(*c).uuid(*l);
    }
    copy_in(
        conn,
        "COPY ccsync.list_memberships (account_id, contact_id, list_id) FROM STDIN (FORMAT binary)",
        data,
    )
    .await
}

/// Adds memberships (contact, list) in one statement, except those of contacts the store
/// holds as deleted (a deleted contact is on no list). Returns the rows added.
pub async fn add_unless_deleted(
    conn: &mut PgConnection,
    account: &str,
    pairs: &[(Uuid, Uuid)],
) -> Result<u64, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let (c, l): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    let done = sqlx::query(
        "INSERT INTO ccsync.list_memberships (account_id, contact_id, list_id)
         SELECT $1, u.c, u.l FROM UNNEST($2::uuid[], $3::uuid[]) AS u(c, l)
         WHERE NOT EXISTS (SELECT 1 FROM ccsync.contacts k
                           WHERE k.account_id = $1 AND k.contact_id = u.c
                             AND k.deleted_at IS NOT NULL)
         ON CONFLICT DO NOTHING",
    )
    .bind(account)
    .bind(c)
    .bind(l)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Removes memberships (contact, list) in one statement.
pub async fn remove(
    conn: &mut PgConnection,
    account: &str,
    pairs: &[(Uuid, Uuid)],
) -> Result<u64, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let (c, l): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    let done = sqlx::query(
        "DELETE FROM ccsync.list_memberships m
         USING UNNEST($2::uuid[], $3::uuid[]) AS u(c, l)
         WHERE m.account_id = $1 AND m.contact_id = u.c AND m.list_id = u.l",
    )
    // Planned per call, never from a plan cached while the table was empty (see
    // `contacts::load_for_update`).
    .persistent(false)
    .bind(account)
    .bind(c)
    .bind(l)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Memberships of one contact (tests, reconcile).
pub async fn of(
    conn: &mut PgConnection,
    account: &str,
    contact: Uuid,
) -> Result<BTreeSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT list_id FROM ccsync.list_memberships WHERE account_id = $1 AND contact_id = $2",
    )
    .bind(account)
    .bind(contact)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Members per list among `lists` (contacts not deleted), for the lists cycle's drift check
/// against Constant Contact's `membership_count`. Lists without members are absent.
pub async fn counts(
    conn: &mut PgConnection,
    account: &str,
    lists: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, u64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT m.list_id, count(*) FROM ccsync.list_memberships m
         JOIN ccsync.contacts c ON c.account_id = m.account_id AND c.contact_id = m.contact_id
         WHERE m.account_id = $1 AND m.list_id = ANY($2) AND c.deleted_at IS NULL
         GROUP BY m.list_id",
    )
    .bind(account)
    .bind(lists)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(l, n)| (l, u64::try_from(n).unwrap_or(0)))
        .collect())
}
