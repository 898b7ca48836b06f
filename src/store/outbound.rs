//! `outbound`: the application's queue of local changes, and the reads the push guard needs
//! from the freshly pulled store. Every statement is batched (UNNEST / ANY), never per row.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::core::guard::{GuardInput, OutboundRow, Primary, PrimaryChange};
use crate::core::states::OutboundState::{self, Completed, Failed, Pending, Submitted};

/// An `outbound` row as selected: (id, email, fields, list_ids, created_at, op).
type RowTuple = (i64, String, Value, Vec<Uuid>, DateTime<Utc>, String);

fn outbound_row((id, email, fields, list_ids, created_at, op): RowTuple) -> OutboundRow {
    OutboundRow {
        id,
        email,
        fields,
        list_ids,
        created_at,
        op,
    }
}

/// Up to `limit` rows that are `pending` and due, with `id > after`, ascending, locked
/// (`SKIP LOCKED`) for the caller's transaction. A row waits while an older row of the same
/// address waits for its retry or for its send attempt to be resolved, so that an address's
/// rows reach Constant Contact in order (an older value never overwrites a newer one). A row
/// of an unresolved send attempt is never planned (`store::sends`).
pub async fn pending_chunk(
    conn: &mut PgConnection,
    account: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<OutboundRow>, sqlx::Error> {
    let rows: Vec<RowTuple> = sqlx::query_as(
        "WITH waiting AS (
            SELECT lower(email) AS e, min(id) AS first_id FROM ccsync.outbound
            WHERE account_id = $1 AND state = $4
              AND (next_attempt_at > now() OR send_attempt IS NOT NULL)
            GROUP BY 1)
         SELECT o.id, o.email, o.fields, o.list_ids, o.created_at, o.op
         FROM ccsync.outbound o LEFT JOIN waiting w ON w.e = lower(o.email)
         WHERE o.account_id = $1 AND o.state = $4 AND o.id > $2 AND o.send_attempt IS NULL
           AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
           AND (w.first_id IS NULL OR o.id < w.first_id)
         ORDER BY o.id LIMIT $3
         FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(account)
    .bind(after)
    .bind(limit)
    .bind(Pending.as_str())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(outbound_row).collect())
}

/// Ids of the lists that exist (not deleted) in `contact_lists`.
pub async fn known_lists(
    conn: &mut PgConnection,
    account: &str,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT list_id FROM ccsync.contact_lists WHERE account_id = $1 AND deleted_at IS NULL",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Everything the guard reads for `rows` (besides the list catalogue): the custom field
/// catalogue (name → id), the contacts with those addresses, their memberships, their
/// Constant Contact changes since the oldest row, the addresses with a push in flight, and
/// what completed pushes wrote for them.
pub async fn guard_input(
    conn: &mut PgConnection,
    account: &str,
    rows: &[OutboundRow],
    known_lists: HashSet<Uuid>,
) -> Result<GuardInput, sqlx::Error> {
    let mut emails: Vec<String> = rows.iter().map(|r| r.email.trim().to_lowercase()).collect();
    emails.sort_unstable();
    emails.dedup();
    let since = rows
        .iter()
        .map(|r| r.created_at)
        .min()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let mut input = GuardInput {
        known_lists,
        ..Default::default()
    };
    if emails.is_empty() {
        return Ok(input);
    }
    input.custom_fields = super::custom_fields::name_map(&mut *conn, account).await?;
    // A deleted and a live contact may share an address: the live one (sorted last) wins.
    let contacts = sqlx::query(
        "SELECT contact_id, email, permission_to_send, opt_out_reason, deleted_at,
                first_name, last_name, job_title, company_name, anniversary,
                birthday_month, birthday_day, phone_numbers, street_addresses, custom_fields
         FROM ccsync.contacts WHERE account_id = $1 AND email = ANY($2)
         ORDER BY (deleted_at IS NULL), updated_at",
    )
    .bind(account)
    .bind(&emails)
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = Vec::with_capacity(contacts.len());
    for r in &contacts {
        let email: Option<String> = r.try_get("email")?;
        let Some(email) = email else { continue };
        let contact_id: Uuid = r.try_get("contact_id")?;
        let deleted: Option<NaiveDate> = r.try_get("deleted_at")?;
        let mut scalars = BTreeMap::new();
        for k in [
            "first_name",
            "last_name",
            "job_title",
            "company_name",
            "anniversary",
        ] {
            let v: Option<String> = r.try_get(k)?;
            scalars.insert(k.to_string(), v.map(Value::String).unwrap_or(Value::Null));
        }
        for k in ["birthday_month", "birthday_day"] {
            let v: Option<i16> = r.try_get(k)?;
            scalars.insert(k.to_string(), v.map(Value::from).unwrap_or(Value::Null));
        }
        ids.push(contact_id);
        input.contacts.insert(
            email,
            Primary {
                contact_id,
                permission_to_send: r.try_get("permission_to_send")?,
                opt_out_reason: r.try_get("opt_out_reason")?,
                deleted: deleted.is_some(),
                memberships: Default::default(),
                scalars,
                phone_numbers: r.try_get("phone_numbers")?,
                street_addresses: r.try_get("street_addresses")?,
                custom_fields: r.try_get("custom_fields")?,
            },
        );
    }
    if !ids.is_empty() {
        let pairs: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT contact_id, list_id FROM ccsync.list_memberships
             WHERE account_id = $1 AND contact_id = ANY($2)",
        )
        .bind(account)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut by_id: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (c, l) in pairs {
            by_id.entry(c).or_default().push(l);
        }
        for p in input.contacts.values_mut() {
            if let Some(ls) = by_id.get(&p.contact_id) {
                p.memberships = ls.iter().copied().collect();
            }
        }
        type C = (
            Uuid,
            DateTime<Utc>,
            String,
            Option<String>,
            Option<Value>,
            Option<Value>,
        );
        let changes: Vec<C> = sqlx::query_as(
            "SELECT contact_id, at, kind, field, old_value, new_value FROM ccsync.changes
                 WHERE account_id = $1 AND origin = 'constant_contact' AND contact_id = ANY($2)
                   AND at > $3 AND kind IN ('updated', 'created', 'list_removed', 'deleted')
                 ORDER BY id",
        )
        .bind(account)
        .bind(&ids)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
        for (contact_id, at, kind, field, old_value, new_value) in changes {
            input
                .changes
                .entry(contact_id)
                .or_default()
                .push(PrimaryChange {
                    at,
                    kind,
                    field,
                    old_value,
                    new_value,
                });
        }
    }
    let flying: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT lower(email) FROM ccsync.outbound
         WHERE account_id = $1 AND lower(email) = ANY($2)
           AND (state = $3 OR send_attempt IS NOT NULL)",
    )
    .bind(account)
    .bind(&emails)
    .bind(Submitted.as_str())
    .fetch_all(&mut *conn)
    .await?;
    input.in_flight = flying.into_iter().collect();
    let pushed: Vec<(String, Value)> = sqlx::query_as(
        "SELECT lower(email), fields FROM ccsync.outbound
         WHERE account_id = $1 AND state = $4 AND lower(email) = ANY($2)
           AND updated_at > $3",
    )
    .bind(account)
    .bind(&emails)
    .bind(since)
    .bind(Completed.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for (email, fields) in pushed {
        if let Value::Object(m) = fields {
            input.pushed.entry(email).or_default().push(m);
        }
    }
    Ok(input)
}

/// Moves rows currently in `from` state to a terminal or new `state`, each with its reason
/// (`None` keeps the row's reason, e.g. the conflict notes written at submit). Returns the
/// number of rows changed.
pub async fn set_state(
    conn: &mut PgConnection,
    from: OutboundState,
    ids: &[i64],
    state: OutboundState,
    reasons: &[Option<String>],
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "UPDATE ccsync.outbound o SET state = $2, reason = COALESCE(u.reason, o.reason),
                updated_at = now(),
                next_attempt_at = NULL
         FROM UNNEST($3::bigint[], $4::text[]) AS u(id, reason)
         WHERE o.id = u.id AND o.state = $1",
    )
    .bind(from.as_str())
    .bind(state.as_str())
    .bind(ids)
    .bind(reasons)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

/// Marks pending rows `submitted` to `activity_id` (notes of resolved conflicts as reason).
pub async fn mark_submitted(
    conn: &mut PgConnection,
    ids: &[i64],
    reasons: &[Option<String>],
    activity_id: &str,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "UPDATE ccsync.outbound o SET state = $4, activity_id = $1,
                reason = u.reason, updated_at = now(), next_attempt_at = NULL,
                send_attempt = NULL
         FROM UNNEST($2::bigint[], $3::text[]) AS u(id, reason)
         WHERE o.id = u.id AND o.state = $5",
    )
    .bind(activity_id)
    .bind(ids)
    .bind(reasons)
    .bind(Submitted.as_str())
    .bind(Pending.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

/// A failed attempt for rows in state `from`: `attempts + 1`; rows that reached
/// `max_attempts` become `failed` with `reason` (the dead letter), the others go back to
/// `pending` with `next_attempt_at = now() + min(base · 2^(attempts), cap)`.
/// Returns (back to pending, failed for good).
pub async fn failed_attempt(
    conn: &mut PgConnection,
    from: OutboundState,
    ids: &[i64],
    reason: &str,
    max_attempts: i32,
    base: std::time::Duration,
    cap: std::time::Duration,
) -> Result<(u64, u64), sqlx::Error> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let rows: Vec<(String,)> = sqlx::query_as(
        "UPDATE ccsync.outbound SET
            attempts = attempts + 1,
            state = CASE WHEN attempts + 1 >= $3 THEN $7 ELSE $8 END,
            reason = CASE WHEN attempts + 1 >= $3
                     THEN format('failed after %s attempts: %s', attempts + 1, $4::text)
                     ELSE format('attempt %s failed, will retry: %s', attempts + 1, $4::text) END,
            next_attempt_at = CASE WHEN attempts + 1 >= $3 THEN NULL
                ELSE now() + LEAST($6::float8, $5::float8 * power(2, attempts)) * interval '1 millisecond' END,
            updated_at = now()
         WHERE id = ANY($2) AND state = $1
         RETURNING state",
    )
    .bind(from.as_str())
    .bind(ids)
    .bind(max_attempts)
    .bind(reason)
    .bind(base.as_millis() as f64)
    .bind(cap.as_millis() as f64)
    .bind(Failed.as_str())
    .bind(Pending.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let failed = rows.iter().filter(|(s,)| s == Failed.as_str()).count() as u64;
    Ok((rows.len() as u64 - failed, failed))
}

/// The rows of an activity, ascending id: (id, lower-case email).
pub async fn rows_of_activity(
    conn: &mut PgConnection,
    activity_id: &str,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, lower(trim(email)) FROM ccsync.outbound
         WHERE activity_id = $1 AND state = $2 ORDER BY id",
    )
    .bind(activity_id)
    .bind(Submitted.as_str())
    .fetch_all(&mut *conn)
    .await
}

/// One `changes` row written by the push (origin `local`): a `conflict` or a `skipped`.
#[derive(Debug, Clone)]
pub struct LocalChange {
    pub contact_id: Option<Uuid>,
    pub email: String,
    pub kind: &'static str,
    pub field: Option<String>,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
}

/// Appends local-origin `changes` rows in one statement, with the `NOTIFY`.
pub async fn append_changes(
    conn: &mut PgConnection,
    account: &str,
    run_id: uuid::Uuid,
    changes: &[LocalChange],
) -> Result<u64, sqlx::Error> {
    let rows = changes.iter().map(|c| super::changes::Row {
        contact_id: c.contact_id,
        email: Some(c.email.as_str()),
        kind: c.kind,
        field: c.field.as_deref(),
        old_value: c.old_value.as_ref(),
        new_value: c.new_value.as_ref(),
    });
    super::changes::append_rows(conn, account, Some(run_id), "local", rows).await
}

/// Rows by state for one account (tests, demo summary).
pub async fn counts(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Map<String, Value>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM ccsync.outbound WHERE account_id = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(account)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(s, n)| (s, Value::from(n))).collect())
}

/// A contact the store knows (not deleted) that due `pending` rows would add to lists:
/// what the push must read from Constant Contact before it writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadTarget {
    pub contact_id: Uuid,
    /// Lower-case.
    pub email: String,
    /// Every list the rows name, and which of them the store has the contact on.
    pub lists: Vec<Uuid>,
    pub on_lists_in_store: Vec<Uuid>,
}

/// The contacts (by address) that due `pending` rows of `account` would add to a list.
pub async fn read_targets(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Vec<ReadTarget>, sqlx::Error> {
    type R = (Uuid, String, Vec<Uuid>, Vec<Uuid>);
    let rows: Vec<R> = sqlx::query_as(
        "WITH wanted AS (
            SELECT lower(trim(o.email)) AS email, array_agg(DISTINCT l) AS lists
            FROM ccsync.outbound o, unnest(o.list_ids) AS l
            WHERE o.account_id = $1 AND o.state = $2 AND o.send_attempt IS NULL
              AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
            GROUP BY 1)
         SELECT c.contact_id, w.email, w.lists,
                coalesce(array_agg(m.list_id) FILTER (WHERE m.list_id IS NOT NULL), '{}')
         FROM wanted w
         JOIN ccsync.contacts c ON c.account_id = $1 AND c.email = w.email
         LEFT JOIN ccsync.list_memberships m
                ON m.account_id = $1 AND m.contact_id = c.contact_id
         WHERE c.deleted_at IS NULL
         GROUP BY c.contact_id, w.email, w.lists
         ORDER BY w.email",
    )
    .bind(account)
    .bind(Pending.as_str())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(contact_id, email, lists, on)| ReadTarget {
            contact_id,
            email,
            lists,
            on_lists_in_store: on,
        })
        .collect())
}

/// The `submitted` rows of an activity, ascending id, as the guard reads rows.
pub async fn submitted_rows(
    conn: &mut PgConnection,
    activity_id: &str,
) -> Result<Vec<OutboundRow>, sqlx::Error> {
    let rows: Vec<RowTuple> = sqlx::query_as(
        "SELECT id, email, fields, list_ids, created_at, op FROM ccsync.outbound
         WHERE activity_id = $1 AND state = $2 ORDER BY id",
    )
    .bind(activity_id)
    .bind(Submitted.as_str())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(outbound_row).collect())
}

/// The properties the push dropped from each of `ids` (its logged `conflict`s).
pub async fn dropped_fields(
    conn: &mut PgConnection,
    account: &str,
    ids: &[i64],
) -> Result<HashMap<i64, std::collections::BTreeSet<String>>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT (new_value->>'outbound_id')::bigint, field FROM ccsync.changes
         WHERE account_id = $1 AND origin = 'local' AND kind = 'conflict' AND field IS NOT NULL
           AND (new_value->>'outbound_id')::bigint = ANY($2)",
    )
    .bind(account)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<i64, std::collections::BTreeSet<String>> = HashMap::new();
    for (id, field) in rows {
        out.entry(id).or_default().insert(field);
    }
    Ok(out)
}

/// One row as `ccsync outbound` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRow {
    pub id: i64,
    pub account: String,
    pub email: String,
    pub op: String,
    pub state: String,
    pub attempts: i32,
    pub reason: Option<String>,
    pub activity_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Up to `limit` rows, newest first, optionally only those of `state` and/or `account`.
pub async fn list(
    conn: &mut PgConnection,
    state: Option<OutboundState>,
    account: Option<&str>,
    limit: i64,
) -> Result<Vec<QueueRow>, sqlx::Error> {
    type R = (
        i64,
        String,
        String,
        String,
        String,
        i32,
        Option<String>,
        Option<String>,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let rows: Vec<R> = sqlx::query_as(
        "SELECT id, account_id, email, op, state, attempts, reason, activity_id, created_at, updated_at
         FROM ccsync.outbound
         WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR account_id = $2)
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(state.map(OutboundState::as_str))
    .bind(account)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                account,
                email,
                op,
                state,
                attempts,
                reason,
                activity_id,
                created_at,
                updated_at,
            )| {
                QueueRow {
                    id,
                    account,
                    email,
                    op,
                    state,
                    attempts,
                    reason,
                    activity_id,
                    created_at,
                    updated_at,
                }
            },
        )
        .collect())
}

/// The state of each of `ids` that exists (what an operator command left alone and why).
pub async fn states_of(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<HashMap<i64, String>, sqlx::Error> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, state FROM ccsync.outbound WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// `ccsync outbound retry ID…`: the `failed` rows among `ids` back to `pending`, as new
/// (attempts, retry time, reason and activity cleared). Returns the ids requeued.
pub async fn requeue_failed(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE ccsync.outbound SET state = $3, attempts = 0, next_attempt_at = NULL,
                reason = NULL, activity_id = NULL, updated_at = now()
         WHERE id = ANY($1) AND state = $2
         RETURNING id",
    )
    .bind(ids)
    .bind(Failed.as_str())
    .bind(Pending.as_str())
    .fetch_all(&mut *conn)
    .await
}

/// `ccsync outbound retry --failed [--account A]`: every `failed` row (of `account`, or of
/// every account) back to `pending`, as [`requeue_failed`] does. Returns the ids requeued.
pub async fn requeue_all_failed(
    conn: &mut PgConnection,
    account: Option<&str>,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE ccsync.outbound SET state = $3, attempts = 0, next_attempt_at = NULL,
                reason = NULL, activity_id = NULL, updated_at = now()
         WHERE ($1::text IS NULL OR account_id = $1) AND state = $2
         RETURNING id",
    )
    .bind(account)
    .bind(Failed.as_str())
    .bind(Pending.as_str())
    .fetch_all(&mut *conn)
    .await
}

/// The reason `ccsync outbound cancel` records.
pub const CANCELLED_REASON: &str = "cancelled by operator";

/// `ccsync outbound cancel ID…`: the `pending` rows among `ids` end `skipped` with
/// [`CANCELLED_REASON`]. Returns the ids cancelled.
pub async fn cancel_pending(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE ccsync.outbound SET state = $3, reason = $4, next_attempt_at = NULL,
                updated_at = now()
         WHERE id = ANY($1) AND state = $2
         RETURNING id",
    )
    .bind(ids)
    .bind(Pending.as_str())
    .bind(OutboundState::Skipped.as_str())
    .bind(CANCELLED_REASON)
    .fetch_all(&mut *conn)
    .await
}

/// The lists each of `emails` (lower-case) is on in the store, for live contacts.
pub async fn memberships_by_email(
    conn: &mut PgConnection,
    account: &str,
    emails: &[String],
) -> Result<HashMap<String, Vec<Uuid>>, sqlx::Error> {
    let rows: Vec<(String, Vec<Uuid>)> = sqlx::query_as(
        "SELECT c.email, coalesce(array_agg(m.list_id) FILTER (WHERE m.list_id IS NOT NULL), '{}')
         FROM ccsync.contacts c
         LEFT JOIN ccsync.list_memberships m
                ON m.account_id = c.account_id AND m.contact_id = c.contact_id
         WHERE c.account_id = $1 AND c.email = ANY($2) AND c.deleted_at IS NULL
         GROUP BY c.email",
    )
    .bind(account)
    .bind(emails)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}
