//! A large contacts pull in time slices (`sync::slices`): the store ends equal to the
//! sandbox, the watermark moves only when every slice is committed (a failure anywhere
//! leaves it where it was), and subscribers editing while the slices run lose nothing.

use std::sync::Arc;
use std::time::Duration;

use ccsync::config::Settings;
use ccsync::sandbox::Fault;
use ccsync::sync::{self, Job, Outcome};
use serde_json::Value;

use crate::helpers::{
    assert_store_equals_sandbox, context, sandbox_max_updated_at, settings_for, watermark, Harness,
    TestDb,
};

/// Small pages and a low threshold, so a few thousand contacts make many slices; a pacer
/// fast enough never to wait, so the page latency (`slow`) decides the walks: four.
fn sliced(s: &mut Settings) {
    s.sync.page_size = 50;
    s.sync.slice_above = 500;
    s.sync.slice_streams = 4;
    s.constant_contact.requests_per_second = 1_000.0;
}

/// A sandbox of `contacts` whose answers take 20 ms, with [`sliced`] settings.
async fn harness(contacts: usize, adjust: impl FnOnce(&mut Settings)) -> Harness {
    let h = Harness::with(contacts, |s| {
        sliced(s);
        adjust(s);
    })
    .await;
    h.sb.set_latency(Duration::from_millis(20), Duration::ZERO);
    h
}

fn slice_requests(h: &Harness) -> usize {
    h.sb.requests()
        .iter()
        .filter(|r| r.path.ends_with("/contacts") && r.query.contains("updated_before"))
        .count()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[tokio::test]
async fn a_large_first_pull_is_paged_in_slices_and_the_store_equals_the_sandbox() {
    let h = harness(3_000, |_| {}).await;
    let stats = h.run_ok(Job::Contacts).await;
    assert!(num(&stats, "slices") >= 4, "{stats}");
    // Every slice but the newest (open above) is asked with an upper bound.
    assert!(
        slice_requests(&h) as u64 >= num(&stats, "slices") - 1,
        "slices asked with updated_before: {stats}"
    );
    assert_eq!(num(&stats, "contacts_count"), 3_000, "{stats}");
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    assert_eq!(h.sb.throttled_count(), 0);
    // Overlap and the re-read first page cost little: at most one page per slice more than
    // a sequential walk of 60 pages.
    let pages = num(&stats, "pages");
    assert!(
        pages <= 60 + num(&stats, "slices") + 1,
        "{pages} pages: {stats}"
    );

    // The next pull reads what changed since: a few contacts, one walk, no slices.
    let ids = h.ctl.contact_ids();
    for id in ids.iter().take(3) {
        h.ctl
            .update_contact(*id, |c| c["first_name"] = "Sliced".into());
    }
    let before = slice_requests(&h);
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(num(&stats, "slices"), 0, "{stats}");
    assert_eq!(slice_requests(&h), before);
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

#[tokio::test]
async fn a_sliced_pull_equals_a_sequential_one_on_the_same_data() {
    let h = harness(2_000, |_| {}).await;
    // A second store, pulled sequentially from the same sandbox account.
    let db = TestDb::new().await;
    let mut plain = settings_for(&h.sb, &db.url, &[("default", h.ctl.seed_refresh_token())]);
    plain.sync.page_size = 50;
    plain.sync.slice_streams = 1;
    let plain = Arc::new(plain);
    let ctx = context(&plain, &db.pool);
    let a = h.run_ok(Job::Contacts).await;
    let b = match sync::run_guarded(&ctx, &plain.accounts[0], Job::Contacts)
        .await
        .outcome
    {
        Outcome::Succeeded(s) => s,
        other => panic!("sequential pull: {other:?}"),
    };
    assert!(num(&a, "slices") > 1, "{a}");
    assert_eq!(num(&b, "slices"), 0, "{b}");
    // Every contact column, permission, deletion, custom field and membership alike, and
    // the same watermark.
    let dump = "SELECT md5(string_agg(c::text, '|' ORDER BY contact_id)) FROM \
                (SELECT contact_id, email, first_name, last_name, job_title, company_name, \
                 permission_to_send, opt_out_date, deleted_at, custom_fields, phone_numbers, \
                 street_addresses, taggings, created_at, updated_at FROM ccsync.contacts) c";
    let members = "SELECT md5(string_agg(contact_id::text || list_id::text, '|' \
                   ORDER BY contact_id, list_id)) FROM ccsync.list_memberships";
    for sql in [dump, members] {
        let x: Option<String> = sqlx::query_scalar(sql).fetch_one(&h.db.pool).await.unwrap();
        let y: Option<String> = sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap();
        assert!(x.is_some());
        assert_eq!(x, y, "{sql}");
    }
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 2_000);
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        watermark(&db.pool, "contacts").await
    );
    db.cleanup().await;
    h.finish().await;
}

#[tokio::test]
async fn a_slice_that_fails_leaves_the_watermark_where_it_was_and_the_next_run_completes() {
    let h = harness(3_000, |s| s.constant_contact.max_retries = 0).await;
    // Some slices get through, then every page fails.
    h.sb.inject(Fault::FailAfter {
        path_prefix: "/v3/contacts".into(),
        ok: 12,
        status: 503,
    });
    let r = h.run(Job::Contacts).await;
    assert!(matches!(r.outcome, Outcome::Failed(_)), "{:?}", r.outcome);
    assert_eq!(watermark(&h.db.pool, "contacts").await, None);
    assert_eq!(watermark(&h.db.pool, "deletes").await, None);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ccsync.contacts")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert!(
        stored > 0 && stored < 3_000,
        "{stored} stored before the fault"
    );

    h.sb.clear_faults();
    let stats = h.run_ok(Job::Contacts).await;
    assert!(num(&stats, "slices") > 1, "{stats}");
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    h.finish().await;
}

#[tokio::test]
async fn subscribers_editing_while_the_slices_run_lose_nothing() {
    let h = harness(3_000, |_| {}).await;
    // Slower pages, so the edits below land while slices are reading.
    h.sb.set_latency(Duration::from_millis(20), Duration::from_millis(20));
    let ids = h.ctl.contact_ids();
    let ctl = h.ctl.clone();
    let editor = tokio::spawn(async move {
        // Old contacts move to now (out of the slice that held them, into the open one),
        // some unsubscribe, some leave a list.
        for (n, id) in ids.iter().enumerate().step_by(37) {
            ctl.update_contact(*id, |c| c["first_name"] = format!("Edited {n}").into());
            if n % 3 == 0 {
                ctl.unsubscribe(*id, Some("edited while sliced"));
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    let first = h.run_ok(Job::Contacts).await;
    editor.await.unwrap();
    assert!(num(&first, "slices") > 1, "{first}");
    // With the sandbox quiet, one more cycle: the store equals Constant Contact.
    h.sb.set_latency(Duration::ZERO, Duration::ZERO);
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Unsubscribes).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}
