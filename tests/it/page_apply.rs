//! The page apply's write path: contacts new to the store go in by binary `COPY`, stored
//! ones by upsert. Values copied are stored exactly as bound parameters store them; a new
//! contact another writer stores while the page is being written is merged, not lost; and
//! a first sync's lookups stay probes by key however large the store grows.

use std::time::Duration;

use ccsync::ctct::dto::Contact;
use ccsync::ctct::page::ContactsPage;
use ccsync::store::copy::{copy_in, CopyRows};
use ccsync::sync::walk::{apply_page, updated_at_mark, NewGuess, PageSpec};
use ccsync::sync::Job;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;
use sqlx::{Connection, Row};
use uuid::Uuid;

use crate::helpers::{assert_store_equals_sandbox, context, eventually, Harness};

#[tokio::test]
async fn copied_values_are_stored_exactly_as_bound_parameters_store_them() {
    let h = Harness::new(0).await;
    let mut conn = h.db.pool.acquire().await.unwrap();
    sqlx::query(
        "CREATE TEMPORARY TABLE t (n int8, u uuid, s text, i int2, b int8, t timestamptz,
                                   d date, j jsonb)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let stamps: Vec<DateTime<Utc>> = [
        "2026-12-07T10:11:12.345Z",
        "1999-12-31T23:59:59.999999Z",
        "1970-01-01T00:00:00Z",
        "1901-06-01T12:00:00.5Z",
        "2000-01-01T00:00:00Z",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let dates = [
        NaiveDate::from_ymd_opt(2026, 2, 28).unwrap(),
        NaiveDate::from_ymd_opt(1999, 12, 31).unwrap(),
        NaiveDate::from_ymd_opt(1, 1, 1).unwrap(),
        NaiveDate::from_ymd_opt(2000, 1, 1).unwrap(),
        NaiveDate::from_ymd_opt(2400, 2, 29).unwrap(),
    ];
    let texts = ["plain", "Zoë ünïcødé ✓ 𝄞", "", "quote ' \" \\ tab\t", "x"];
    let docs = [
        json!([{"custom_field_id": "a", "value": "silver"}]),
        json!({"nested": {"deep": [1, 2.5, -3, true, null, "ß"]}}),
        json!([]),
        json!("just a string"),
        json!({"big": 12345678901234567i64, "neg": -0.125}),
    ];
    let mut rows = CopyRows::default();
    for k in 0..5 {
        rows.row(8)
            .i64(k as i64)
            .uuid(Uuid::from_u128(0xabc0 + k as u128))
            .text(texts[k])
            .opt_i16(Some(i16::MIN + k as i16 * 1000))
            .i64(i64::MAX - k as i64)
            .timestamptz(stamps[k])
            .opt_date(Some(dates[k]))
            .jsonb(&docs[k])
            .unwrap();
    }
    rows.row(8)
        .i64(5)
        .null()
        .opt_text(None)
        .opt_i16(None)
        .null()
        .opt_timestamptz(None)
        .opt_date(None)
        .opt_jsonb::<serde_json::Value>(None)
        .unwrap();
    let copied = copy_in(&mut conn, "COPY t FROM STDIN (FORMAT binary)", rows)
        .await
        .unwrap();
    assert_eq!(copied, 6);
    for k in 0..5 {
        let same: bool = sqlx::query_scalar(
            "SELECT u = $2 AND s = $3 AND i = $4 AND b = $5 AND t = $6 AND d = $7 AND j = $8
             FROM t WHERE n = $1",
        )
        .bind(k as i64)
        .bind(Uuid::from_u128(0xabc0 + k as u128))
        .bind(texts[k])
        .bind(i16::MIN + k as i16 * 1000)
        .bind(i64::MAX - k as i64)
        .bind(stamps[k])
        .bind(dates[k])
        .bind(&docs[k])
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(same, "row {k} differs from the bound values");
    }
    let nulls: bool = sqlx::query_scalar(
        "SELECT u IS NULL AND s IS NULL AND i IS NULL AND b IS NULL AND t IS NULL
                AND d IS NULL AND j IS NULL FROM t WHERE n = 5",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(nulls);
    // A field count that does not match the table fails the copy and leaves the
    // connection usable.
    let mut bad = CopyRows::default();
    bad.row(2).i64(9).null();
    assert!(copy_in(&mut conn, "COPY t FROM STDIN (FORMAT binary)", bad)
        .await
        .is_err());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 6);
    drop(conn);
    h.db.cleanup().await;
}

/// A contact as Constant Contact sends it.
fn contact(id: Uuid, first_name: &str, updated_at: &str, lists: &[Uuid]) -> Contact {
    serde_json::from_value(json!({
        "contact_id": id,
        "email_address": {"address": format!("{id}@example.com"), "permission_to_send": "implicit",
                          "updated_at": updated_at},
        "first_name": first_name,
        "updated_at": updated_at,
        "created_at": "2026-01-01T00:00:00Z",
        "list_memberships": lists,
    }))
    .unwrap()
}

const FIRST_NAME: &str = "SELECT first_name FROM ccsync.contacts WHERE contact_id = $1";
const LISTS: &str = "SELECT coalesce(array_agg(list_id ORDER BY list_id), '{}')
                     FROM ccsync.list_memberships WHERE contact_id = $1";

/// One value about one contact: `sql` with its id as `$1`.
async fn of_contact<T>(pool: &sqlx::PgPool, sql: &str, id: Uuid) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Another writer (a racing slice, a push's read) stores `writer` in a transaction left
/// open; the page with `page` is applied meanwhile and must wait for it; the writer
/// commits. The page is applied again by upsert; what ends stored is returned.
async fn race(writer: Contact, page: Contact) -> (bool, String, Vec<Uuid>, i64) {
    let h = Harness::new(0).await;
    let id = writer.contact_id;
    let mut other = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    let theirs = ContactsPage::from_contacts(vec![writer]);
    let rows: Vec<&ccsync::core::contact::ContactRow> =
        theirs.contacts.iter().map(|i| &i.row).collect();
    ccsync::store::contacts::upsert(&mut tx, "default", &rows)
        .await
        .unwrap();
    let memberships: Vec<(Uuid, Uuid)> = theirs.contacts[0]
        .memberships
        .iter()
        .flatten()
        .map(|l| (id, *l))
        .collect();
    ccsync::store::memberships::add(&mut tx, "default", &memberships)
        .await
        .unwrap();

    let ctx = h.ctx.clone();
    let applying = tokio::spawn(async move {
        let spec = PageSpec::new("default", None, Uuid::new_v4(), updated_at_mark);
        apply_page(&ctx, &spec, &ContactsPage::from_contacts(vec![page])).await
    });
    // The page planned the contact as new (the writer had not committed) and its copy
    // now waits on the writer's key.
    eventually(
        "the page's copy to wait for the other writer",
        Duration::from_secs(60),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'COPY ccsync.contacts%'",
            )
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    tx.commit().await.unwrap();
    let applied = applying
        .await
        .unwrap()
        .expect("the page applies after the race");
    let name: String = of_contact(&h.db.pool, FIRST_NAME, id).await;
    let lists: Vec<Uuid> = of_contact(&h.db.pool, LISTS, id).await;
    let n = h.db.count("SELECT count(*) FROM ccsync.contacts").await;
    let out = (applied.raced, name, lists, n);
    other.close().await.ok();
    h.db.cleanup().await;
    out
}

#[tokio::test]
async fn a_new_contact_another_writer_stores_first_is_merged_and_the_newer_version_wins() {
    let id = Uuid::new_v4();
    let (l1, l2) = (Uuid::from_u128(1), Uuid::from_u128(2));
    // The page is newer: it wins, memberships included.
    let (raced, name, lists, n) = race(
        contact(id, "Writer", "2026-03-01T00:00:00Z", &[l1]),
        contact(id, "Page", "2026-03-02T00:00:00Z", &[l1, l2]),
    )
    .await;
    assert!(
        raced,
        "the page was applied again after the unique violation"
    );
    assert_eq!((name.as_str(), lists, n), ("Page", vec![l1, l2], 1));

    // The page is older: the stale guard keeps what the writer stored.
    let id = Uuid::new_v4();
    let (raced, name, lists, n) = race(
        contact(id, "Writer", "2026-03-02T00:00:00Z", &[l1]),
        contact(id, "Page", "2026-03-01T00:00:00Z", &[l2]),
    )
    .await;
    assert!(raced);
    assert_eq!((name.as_str(), lists, n), ("Writer", vec![l1], 1));
}

#[tokio::test]
async fn a_first_sync_looks_contacts_up_by_key_however_large_the_store_grows() {
    // Small pages, many of them: with a plan cached while the table was empty, every page's
    // lookup read all the contacts stored so far (quadratic in the account's size).
    // Pages too small to teach a walk that they are all new (`NewGuess`): every one is
    // looked up.
    let h = Harness::with(8_000, |s| {
        s.sync.page_size = NewGuess::MIN_PAGE as u32 - 1;
        s.sync.slice_streams = 1;
    })
    .await;
    // Nothing else may analyze the tables meanwhile: the statistics stay those of an
    // empty store, as in any first sync that outruns autovacuum.
    for t in ["contacts", "list_memberships"] {
        sqlx::query(&format!(
            "ALTER TABLE ccsync.{t} SET (autovacuum_enabled = false)"
        ))
        .execute(&h.db.pool)
        .await
        .unwrap();
    }
    // A pool of its own, closed after the pull: its sessions' statistics are flushed when
    // they end.
    let pool = sqlx::PgPool::connect(&h.db.url).await.unwrap();
    let ctx = context(&h.settings, &pool);
    let report = ccsync::sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(
        matches!(report.outcome, ccsync::sync::Outcome::Succeeded(_)),
        "{:?}",
        report.outcome
    );
    pool.close().await;
    let read = eventually("the pull's statistics", Duration::from_secs(60), || async {
        let row = sqlx::query(
            "SELECT t.n_tup_ins, t.seq_tup_read + (SELECT sum(i.idx_tup_read)::int8
                                                   FROM pg_stat_user_indexes i
                                                   WHERE i.relid = t.relid) AS read
             FROM pg_stat_user_tables t WHERE t.relid = 'ccsync.contacts'::regclass",
        )
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        let inserted: i64 = row.get("n_tup_ins");
        (inserted >= 8_000).then(|| row.get::<i64, _>("read"))
    })
    .await;
    // Each page probes its 49 ids (none stored yet). While the table is a page or two,
    // the planner may still read it whole (about 10,000 rows in all); a plan cached then
    // kept reading every stored contact per page: over 150,000 rows for 6,000 contacts,
    // growing with the square of the account's size.
    assert!(
        read < 40_000,
        "{read} contact rows read to look up 8,000 new contacts"
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.db.cleanup().await;
}

#[tokio::test]
async fn a_walk_that_found_its_pages_new_copies_without_a_lookup_and_a_wrong_guess_loses_nothing() {
    let h = Harness::new(0).await;
    let spec = PageSpec::new("default", None, Uuid::new_v4(), updated_at_mark);
    let list = Uuid::from_u128(7);
    let page_of = |n: usize, stamp: &str| -> Vec<Contact> {
        (0..n)
            .map(|_| contact(Uuid::new_v4(), "New", stamp, &[list]))
            .collect()
    };

    // A first page, looked up: none of its 60 contacts stored, so the next is guessed new.
    let first = page_of(60, "2026-03-01T00:00:00Z");
    let kept = first[0].contact_id;
    let applied = apply_page(&h.ctx, &spec, &ContactsPage::from_contacts(first))
        .await
        .unwrap();
    assert!(!applied.guessed_wrong);
    assert!(
        spec.new_guess.holds(),
        "a page of 60 new contacts teaches the guess"
    );
    let changes_of_kept = "SELECT count(*) FROM ccsync.changes WHERE contact_id = $1";
    let kept_changes: i64 = of_contact(&h.db.pool, changes_of_kept, kept).await;
    assert!(kept_changes > 0);

    // The next page is copied in without a lookup, and is all new.
    let applied = apply_page(
        &h.ctx,
        &spec,
        &ContactsPage::from_contacts(page_of(60, "2026-03-01T00:00:00Z")),
    )
    .await
    .unwrap();
    assert!(!applied.guessed_wrong && spec.new_guess.holds());
    assert_eq!(
        h.db.count("SELECT count(*) FROM ccsync.contacts").await,
        120
    );

    // A page that holds an older copy of a stored contact: the guess is wrong, the copy
    // fails on the key, and the page is applied again with a lookup — the stale guard keeps
    // the stored copy, the other 59 are stored, and no `changes` row of the failed try
    // remains.
    let mut third = page_of(59, "2026-03-02T00:00:00Z");
    third.push(contact(kept, "Older", "2026-02-01T00:00:00Z", &[]));
    let applied = apply_page(&h.ctx, &spec, &ContactsPage::from_contacts(third))
        .await
        .unwrap();
    assert!(applied.guessed_wrong && !applied.raced);
    assert!(
        !spec.new_guess.holds(),
        "a page with a stored contact ends the guess"
    );
    assert_eq!(
        h.db.count("SELECT count(*) FROM ccsync.contacts").await,
        179
    );
    let name: String = of_contact(&h.db.pool, FIRST_NAME, kept).await;
    assert_eq!(name, "New");
    let kept_lists: Vec<Uuid> = of_contact(&h.db.pool, LISTS, kept).await;
    assert_eq!(
        kept_lists,
        vec![list],
        "the stale page did not take the contact off its list"
    );
    let changes: i64 = of_contact(&h.db.pool, changes_of_kept, kept).await;
    assert_eq!(changes, kept_changes);
    assert_eq!(
        h.db.count("SELECT count(*) FROM ccsync.list_memberships")
            .await,
        179
    );

    // Looked up again, a page of new contacts starts the guess again.
    apply_page(
        &h.ctx,
        &spec,
        &ContactsPage::from_contacts(page_of(60, "2026-03-03T00:00:00Z")),
    )
    .await
    .unwrap();
    assert!(spec.new_guess.holds());
    assert_eq!(
        h.db.count("SELECT count(*) FROM ccsync.contacts").await,
        239
    );
    h.db.cleanup().await;
}
