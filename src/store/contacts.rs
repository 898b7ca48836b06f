//! `contacts`: batched reads and writes for one page at a time (a page's memberships are
//! read here with its contacts; they are written by `memberships`).

use std::collections::{BTreeSet, HashMap};

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::copy::{copy_in, CopyRows};
use super::memberships;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

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
        jsonb_text: Default::default(),
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
    rows: &[&ContactRow],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut email: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut first_name: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut last_name: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut job_title: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut company_name: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut birthday_month: Vec<Option<i16>> = Vec::with_capacity(n);
    let mut birthday_day: Vec<Option<i16>> = Vec::with_capacity(n);
    let mut anniversary: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut permission: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut opt_in_source: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut opt_in_date: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut opt_out_source: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut opt_out_date: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut opt_out_reason: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut confirm_status: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut email_updated_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut custom_fields: Vec<&Value> = Vec::with_capacity(n);
    let mut phone_numbers: Vec<&Value> = Vec::with_capacity(n);
    let mut street_addresses: Vec<&Value> = Vec::with_capacity(n);
    let mut taggings: Vec<&Value> = Vec::with_capacity(n);
    let mut create_source: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut update_source: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut created_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut updated_at: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut deleted_at: Vec<Option<NaiveDate>> = Vec::with_capacity(n);
    // The columns borrow the page's rows: nothing is copied before the statement encodes it.
    for &r in rows {
        ids.push(r.contact_id);
        email.push(r.email.as_deref());
        first_name.push(r.first_name.as_deref());
        last_name.push(r.last_name.as_deref());
        job_title.push(r.job_title.as_deref());
        company_name.push(r.company_name.as_deref());
        birthday_month.push(r.birthday_month);
        birthday_day.push(r.birthday_day);
        anniversary.push(r.anniversary.as_deref());
        permission.push(r.permission_to_send.as_deref());
        opt_in_source.push(r.opt_in_source.as_deref());
        opt_in_date.push(r.opt_in_date);
        opt_out_source.push(r.opt_out_source.as_deref());
        opt_out_date.push(r.opt_out_date);
        opt_out_reason.push(r.opt_out_reason.as_deref());
        confirm_status.push(r.confirm_status.as_deref());
        email_updated_at.push(r.email_updated_at);
        custom_fields.push(&r.custom_fields);
        phone_numbers.push(&r.phone_numbers);
        street_addresses.push(&r.street_addresses);
        taggings.push(&r.taggings);
        create_source.push(r.create_source.as_deref());
        update_source.push(r.update_source.as_deref());
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

/// The columns [`insert_new`] copies, in order.
const INSERT_COLUMNS: &str = "account_id, contact_id, email, first_name, last_name, job_title, \
    company_name, birthday_month, birthday_day, anniversary, permission_to_send, \
    opt_in_source, opt_in_date, opt_out_source, opt_out_date, opt_out_reason, confirm_status, \
    email_updated_at, custom_fields, phone_numbers, street_addresses, taggings, create_source, \
    update_source, created_at, updated_at, deleted_at";

/// Inserts contacts the store does not hold, by binary `COPY` (`synced_at` takes its
/// default). Fails with a unique violation if one is stored after all (a writer that
/// raced this one; see [`NewRows::Copy`]).
pub async fn insert_new(
    conn: &mut PgConnection,
    account: &str,
    rows: &[&ContactRow],
) -> Result<u64, sqlx::Error> {
    let mut data = CopyRows::with_capacity(rows.len() * 1100);
    let enc = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    for r in rows {
        data.row(27)
            .text(account)
            .uuid(r.contact_id)
            .opt_text(r.email.as_deref())
            .opt_text(r.first_name.as_deref())
            .opt_text(r.last_name.as_deref())
            .opt_text(r.job_title.as_deref())
            .opt_text(r.company_name.as_deref())
            .opt_i16(r.birthday_month)
            .opt_i16(r.birthday_day)
            .opt_text(r.anniversary.as_deref())
            .opt_text(r.permission_to_send.as_deref())
            .opt_text(r.opt_in_source.as_deref())
            .opt_timestamptz(r.opt_in_date)
            .opt_text(r.opt_out_source.as_deref())
            .opt_timestamptz(r.opt_out_date)
            .opt_text(r.opt_out_reason.as_deref())
            .opt_text(r.confirm_status.as_deref())
            .opt_timestamptz(r.email_updated_at);
        let values = [
            &r.custom_fields,
            &r.phone_numbers,
            &r.street_addresses,
            &r.taggings,
        ];
        match &r.jsonb_text.0 {
            // The text the values were decoded from: copied, not serialized again.
            Some(texts) => {
                for (text, value) in texts.iter().zip(values) {
                    debug_assert_eq!(
                        serde_json::from_str::<Value>(text.get()).ok().as_ref(),
                        Some(value),
                        "a row's jsonb text disagrees with its value"
                    );
                    data.jsonb_text(text.get());
                }
            }
            None => {
                for value in values {
                    data.jsonb(value).map_err(enc)?;
                }
            }
        }
        data.opt_text(r.create_source.as_deref())
            .opt_text(r.update_source.as_deref())
            .opt_timestamptz(r.created_at)
            .timestamptz(r.updated_at)
            .opt_date(r.deleted_at);
    }
    copy_in(
        conn,
        &format!("COPY ccsync.contacts ({INSERT_COLUMNS}) FROM STDIN (FORMAT binary)"),
        data,
    )
    .await
}

/// What one page asks of `contacts` and `list_memberships`.
pub struct PageWrites<'a> {
    /// Contacts the store did not hold when the page's rows were locked.
    pub inserts: &'a [&'a ContactRow],
    /// The list memberships of `inserts`.
    pub insert_memberships: &'a [(Uuid, Uuid)],
    /// Stored contacts that changed (locked by [`load_for_update`]).
    pub updates: &'a [&'a ContactRow],
    pub add_memberships: &'a [(Uuid, Uuid)],
    pub remove_memberships: &'a [(Uuid, Uuid)],
}

/// How [`write_page`] writes the contacts the store did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewRows {
    /// By binary `COPY`: nothing to pay for conflict handling, since nothing was stored
    /// under their ids when the page was locked. Fails with a unique violation if another
    /// writer stored one since ([`is_unique_violation`]); the caller then writes the page
    /// again with [`NewRows::Upsert`].
    Copy,
    /// Like every update: [`upsert`] (stale guard included) and [`memberships::add`].
    Upsert,
}

/// Where [`write_page`]'s time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Microseconds writing `contacts` rows.
    pub contacts_us: u64,
    /// Microseconds writing `list_memberships` rows.
    pub memberships_us: u64,
}

/// Writes a page's contacts and memberships inside the caller's transaction: new contacts
/// and their memberships as `new_rows` says, then updates, removed and added memberships.
pub async fn write_page(
    conn: &mut PgConnection,
    account: &str,
    w: PageWrites<'_>,
    new_rows: NewRows,
) -> Result<Written, sqlx::Error> {
    let mut out = Written::default();
    let mut at = std::time::Instant::now();
    match new_rows {
        NewRows::Copy if !w.inserts.is_empty() => {
            insert_new(conn, account, w.inserts).await?;
            out.contacts_us += super::lap(&mut at);
            memberships::insert_new(conn, account, w.insert_memberships).await?;
            out.memberships_us += super::lap(&mut at);
        }
        NewRows::Copy => {}
        NewRows::Upsert => {
            upsert(conn, account, w.inserts).await?;
            out.contacts_us += super::lap(&mut at);
            memberships::add(conn, account, w.insert_memberships).await?;
            out.memberships_us += super::lap(&mut at);
        }
    }
    upsert(conn, account, w.updates).await?;
    out.contacts_us += super::lap(&mut at);
    memberships::remove(conn, account, w.remove_memberships).await?;
    memberships::add(conn, account, w.add_memberships).await?;
    out.memberships_us += super::lap(&mut at);
    Ok(out)
}

/// SQLSTATE 23505: a [`NewRows::Copy`] write met a row another writer stored first.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}
