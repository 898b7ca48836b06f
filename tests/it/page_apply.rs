//! The page apply's write path: a first sync's lookups stay probes by key however large
//! the store grows.

use std::time::Duration;

use ccsync::sync::Job;
use sqlx::Row;

use crate::helpers::{assert_store_equals_sandbox, context, eventually, Harness};

#[tokio::test]
async fn a_first_sync_looks_contacts_up_by_key_however_large_the_store_grows() {
    // Small pages, many of them: with a plan cached while the table was empty, every page's
    // lookup read all the contacts stored so far (quadratic in the account's size).
    let h = Harness::with(8_000, |s| {
        s.sync.page_size = 50;
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
    // Each page probes its 50 ids (none stored yet). While the table is a page or two,
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
