//! `contacts`: batched reads and writes for one page at a time (a page's memberships are
//! read here with its contacts; they are written by `memberships`).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::core::contact::{ContactRow, Stored};

const COLUMNS: &str = "contact_id, email, first_name, last_name, job_title, company_name, \
    birthday_month, birthday_day, anniversary, permission_to_send, opt_in_source, opt_in_date, \
    opt_out_source, opt_out_date, opt_out_reason, confirm_status, email_updated_at, \
    custom_fields, phone_numbers, street_addresses, taggings, create_source, update_source, \
    created_at, updated_at, deleted_at";

fn row_from(r: &sqlx::postgres::PgRow) -> Result<ContactRow, sqlx::Error> {
    Ok(ContactRow {
        contact_id: r.try_get("contact_id")?,
        email: r.try_get("email")?,
        first_name: r.try_get("first_name")?,
        last_name: r.try_get("last_name")?,
        job_title: r.try_get("job_title")?,
        company_name: r.try_get("company_name")?,
        birthday_month: r.try_get("birthday_month")?,
        birthday_day: r.try_get("birthday_day")?,
        anniversary: r.try_get("anniversary")?,
        permission_to_send: r.try_get("permission_to_send")?,
        opt_in_source: r.try_get("opt_in_source")?,
        opt_in_date: r.try_get("opt_in_date")?,
        opt_out_source: r.try_get("opt_out_source")?,
        opt_out_date: r.try_get("opt_out_date")?,
        opt_out_reason: r.try_get("opt_out_reason")?,
        confirm_status: r.try_get("confirm_status")?,
        email_updated_at: r.try_get("email_updated_at")?,
        custom_fields: r.try_get("custom_fields")?,
        phone_numbers: r.try_get("phone_numbers")?,
        street_addresses: r.try_get("street_addresses")?,
        taggings: r.try_get("taggings")?,
        create_source: r.try_get("create_source")?,
        update_source: r.try_get("update_source")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deleted_at: r.try_get("deleted_at")?,
    })
}

/// Whether the store holds any contact of `account` (a first sync by export needs none).
pub async fn any(conn: &mut PgConnection, account: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ccsync.contacts WHERE account_id = $1)")
        .bind(account)
        .fetch_one(&mut *conn)
        .await
}

/// Which of `ids` the store holds as deleted.
pub async fn deleted_among(
    conn: &mut PgConnection,
    account: &str,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT contact_id FROM ccsync.contacts
         WHERE account_id = $1 AND contact_id = ANY($2) AND deleted_at IS NOT NULL",
    )
    .bind(account)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(found.into_iter().collect())
}

/// The stored rows and memberships of `ids`, locked for the page's transaction.
pub async fn load_for_update(
    conn: &mut PgConnection,
    account: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Stored>, sqlx::Error> {
    // A probe per id on the whole primary key (LATERAL), planned for this call
    // (`persistent(false)`: an unnamed statement gets a custom plan at every run). Without
    // statistics (a store filling up in its first sync, before any ANALYZE) a cached plan
    // made while the table was empty kept using an index on `account_id` alone and read
    // every stored contact of the account per page: seconds a page, growing with the
    // store. Planned per call, the lookup is an index probe per id at any size.
    let rows = sqlx::query(&format!(
        "SELECT c.* FROM UNNEST($2::uuid[]) AS i(id) CROSS JOIN LATERAL ( \
            SELECT {COLUMNS} FROM ccsync.contacts \
            WHERE account_id = $1 AND contact_id = i.id FOR UPDATE) c"
    ))
    .persistent(false)
    .bind(account)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let row = row_from(r)?;
        out.insert(
            row.contact_id,
            Stored {
                row,
                memberships: BTreeSet::new(),
            },
        );
    }
    if out.is_empty() {
        return Ok(out);
    }
    // The same probe per id for memberships (`OFFSET 0` keeps the subquery from being
    // flattened into a join the planner could hash).
    let pairs: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT m.contact_id, m.list_id FROM UNNEST($2::uuid[]) AS i(id) CROSS JOIN LATERAL ( \
            SELECT contact_id, list_id FROM ccsync.list_memberships \
            WHERE account_id = $1 AND contact_id = i.id OFFSET 0) m",
    )
    .persistent(false)
    .bind(account)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for (c, l) in pairs {
        if let Some(s) = out.get_mut(&c) {
            s.memberships.insert(l);
        }
    }
    Ok(out)
}

/// One contact by id (tests, status, the push guard).
pub async fn get(
    conn: &mut PgConnection,
    account: &str,
    id: Uuid,
) -> Result<Option<ContactRow>, sqlx::Error> {
    let r = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM ccsync.contacts WHERE account_id = $1 AND contact_id = $2"
    ))
    .bind(account)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    r.as_ref().map(row_from).transpose()
}

/// Inserts or updates `rows` in one statement. The stale guard in SQL repeats the one of
/// the merge: an older `updated_at` than stored changes nothing, whoever else writes.
pub async fn upsert(
    conn: &mut PgConnection,
    account: &str,
    rows: Vec<ContactRow>,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    // The rows are moved into their columns (a page's JSON values are not copied again).
    let n = rows.len();
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut email: Vec<Option<String>> = Vec::with_capacity(n);
    let mut first_name: Vec<Option<String>> = Vec::with_capacity(n);
    let mut last_name: Vec<Option<String>> = Vec::with_capacity(n);
    let mut job_title: Vec<Option<String>> = Vec::with_capacity(n);
    let mut company_name: Vec<Option<String>> = Vec::with_capacity(n);
    let mut birthday_month: Vec<Option<i16>> = Vec::with_capacity(n);
    let mut birthday_day: Vec<Option<i16>> = Vec::with_capacity(n);
    let mut anniversary: Vec<Option<String>> = Vec::with_capacity(n);
    let mut permission: Vec<Option<String>> = Vec::with_capacity(n);
    let mut opt_in_source: Vec<Option<String>> = Vec::with_capacity(n);
    let mut opt_in_date: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut opt_out_source: Vec<Option<String>> = Vec::with_capacity(n);
    let mut opt_out_date: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut opt_out_reason: Vec<Option<String>> = Vec::with_capacity(n);
    let mut confirm_status: Vec<Option<String>> = Vec::with_capacity(n);
    let mut email_updated_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut custom_fields: Vec<Value> = Vec::with_capacity(n);
    let mut phone_numbers: Vec<Value> = Vec::with_capacity(n);
    let mut street_addresses: Vec<Value> = Vec::with_capacity(n);
    let mut taggings: Vec<Value> = Vec::with_capacity(n);
    let mut create_source: Vec<Option<String>> = Vec::with_capacity(n);
    let mut update_source: Vec<Option<String>> = Vec::with_capacity(n);
    let mut created_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut updated_at: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut deleted_at: Vec<Option<NaiveDate>> = Vec::with_capacity(n);
    for r in rows {
        ids.push(r.contact_id);
        email.push(r.email);
        first_name.push(r.first_name);
        last_name.push(r.last_name);
        job_title.push(r.job_title);
        company_name.push(r.company_name);
        birthday_month.push(r.birthday_month);
        birthday_day.push(r.birthday_day);
        anniversary.push(r.anniversary);
        permission.push(r.permission_to_send);
        opt_in_source.push(r.opt_in_source);
        opt_in_date.push(r.opt_in_date);
        opt_out_source.push(r.opt_out_source);
        opt_out_date.push(r.opt_out_date);
        opt_out_reason.push(r.opt_out_reason);
        confirm_status.push(r.confirm_status);
        email_updated_at.push(r.email_updated_at);
        custom_fields.push(r.custom_fields);
        phone_numbers.push(r.phone_numbers);
        street_addresses.push(r.street_addresses);
        taggings.push(r.taggings);
        create_source.push(r.create_source);
        update_source.push(r.update_source);
        created_at.push(r.created_at);
        updated_at.push(r.updated_at);
        deleted_at.push(r.deleted_at);
    }
    let done = sqlx::query(
        "INSERT INTO ccsync.contacts (account_id, contact_id, email, first_name, last_name, \
            job_title, company_name, birthday_month, birthday_day, anniversary, \
            permission_to_send, opt_in_source, opt_in_date, opt_out_source, opt_out_date, \
            opt_out_reason, confirm_status, email_updated_at, custom_fields, phone_numbers, \
            street_addresses, taggings, create_source, update_source, created_at, updated_at, \
            deleted_at, synced_at)
         SELECT $1, u.* , now() FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], \
            $6::text[], $7::text[], $8::int2[], $9::int2[], $10::text[], $11::text[], \
            $12::text[], $13::timestamptz[], $14::text[], $15::timestamptz[], $16::text[], \
            $17::text[], $18::timestamptz[], $19::jsonb[], $20::jsonb[], $21::jsonb[], \
            $22::jsonb[], $23::text[], $24::text[], $25::timestamptz[], $26::timestamptz[], \
            $27::date[]) AS u
         ON CONFLICT (account_id, contact_id) DO UPDATE SET
            email = EXCLUDED.email, first_name = EXCLUDED.first_name,
            last_name = EXCLUDED.last_name, job_title = EXCLUDED.job_title,
            company_name = EXCLUDED.company_name, birthday_month = EXCLUDED.birthday_month,
            birthday_day = EXCLUDED.birthday_day, anniversary = EXCLUDED.anniversary,
            permission_to_send = EXCLUDED.permission_to_send,
            opt_in_source = EXCLUDED.opt_in_source, opt_in_date = EXCLUDED.opt_in_date,
            opt_out_source = EXCLUDED.opt_out_source, opt_out_date = EXCLUDED.opt_out_date,
            opt_out_reason = EXCLUDED.opt_out_reason, confirm_status = EXCLUDED.confirm_status,
            email_updated_at = EXCLUDED.email_updated_at,
            custom_fields = EXCLUDED.custom_fields, phone_numbers = EXCLUDED.phone_numbers,
            street_addresses = EXCLUDED.street_addresses, taggings = EXCLUDED.taggings,
            create_source = EXCLUDED.create_source, update_source = EXCLUDED.update_source,
            created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
            deleted_at = EXCLUDED.deleted_at, synced_at = now()
         WHERE ccsync.contacts.updated_at <= EXCLUDED.updated_at",
    )
    .bind(account)
    .bind(ids)
    .bind(email)
    .bind(first_name)
    .bind(last_name)
    .bind(job_title)
    .bind(company_name)
    .bind(birthday_month)
    .bind(birthday_day)
    .bind(anniversary)
    .bind(permission)
    .bind(opt_in_source)
    .bind(opt_in_date)
    .bind(opt_out_source)
    .bind(opt_out_date)
    .bind(opt_out_reason)
    .bind(confirm_status)
    .bind(email_updated_at)
    .bind(custom_fields)
    .bind(phone_numbers)
    .bind(street_addresses)
    .bind(taggings)
    .bind(create_source)
    .bind(update_source)
    .bind(created_at)
    .bind(updated_at)
    .bind(deleted_at)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
