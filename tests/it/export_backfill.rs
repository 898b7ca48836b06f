//! A first sync by contact export (`sync.backfill = export | auto`, `sync::export`): the
//! store it leaves (after the catch-up pull) equals the one paging leaves on the same data,
//! in every column an export carries, custom fields, permissions and memberships included;
//! changes made while the export ran arrive through the catch-up pull; deleted contacts
//! listed by the export as if live stay deleted; an export that cannot be keyed (no
//! `contact_id` column: what the export guide documents) sends the run back to paging.

use std::sync::Arc;
use std::time::Duration;

use ccsync::config::Settings;
use ccsync::core::backfill::Mode;
use ccsync::sandbox::{SubscriberAction, Trigger};
use ccsync::sync::{self, Job, Outcome};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    assert_store_equals_sandbox, context, sandbox_max_updated_at, watermark, Harness, TestDb,
};

fn exporting(s: &mut Settings) {
    s.sync.backfill = Mode::Export;
    s.sync.page_size = 100;
    s.sync.poll_initial = Duration::from_millis(20);
    s.sync.poll_max = Duration::from_millis(200);
}

async fn harness(contacts: usize, adjust: impl FnOnce(&mut Settings)) -> Harness {
    let h = Harness::with(contacts, |s| {
        exporting(s);
        adjust(s);
    })
    .await;
    h.sb.set_import_processing(Duration::from_millis(300));
    h
}

fn requests_to(h: &Harness, from: usize, prefix: &str) -> usize {
    h.sb.requests_from(from)
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

/// Every column an export carries, custom fields in a fixed order, per contact; and the
/// memberships.
async fn carried(pool: &PgPool) -> (Vec<Vec<Option<String>>>, Vec<(Uuid, Uuid)>) {
    let rows: Vec<Vec<Option<String>>> = sqlx::query_scalar::<_, Vec<Option<String>>>(
        "SELECT ARRAY[contact_id::text, email, first_name, last_name, job_title, company_name,
                birthday_month::text, birthday_day::text, anniversary, permission_to_send,
                opt_in_source, opt_in_date::text, opt_out_source, opt_out_date::text,
                opt_out_reason, created_at::text, updated_at::text, deleted_at::text,
                (SELECT coalesce(jsonb_agg(jsonb_build_object('id', e->>'custom_field_id',
                                                              'v', e->>'value')
                                           ORDER BY e->>'custom_field_id'), '[]')
                   FROM jsonb_array_elements(custom_fields) e
                  WHERE coalesce(e->>'value', '') <> '')::text]
           FROM ccsync.contacts ORDER BY contact_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let members: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT contact_id, list_id FROM ccsync.list_memberships ORDER BY contact_id, list_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (rows, members)
}

#[tokio::test]
async fn an_export_and_its_catch_up_pull_store_what_paging_stores() {
    let h = harness(1_200, |_| {}).await;
    h.ctl.set_export_contact_ids(true);
    let ids = h.ctl.contact_ids();
    let lists = h.ctl.list_ids();
    // Deleted contacts: an export of all contacts lists them as if live.
    for id in &ids[..10] {
        h.ctl.delete_contact(*id);
    }
    // Deleted an hour ago: before the catch-up pull's window, so only the export path's own
    // handling keeps them deleted.
    h.sb.advance_clock(chrono::Duration::hours(1));
    for id in &ids[10..20] {
        h.ctl.unsubscribe(*id, Some("moved away"));
    }
    // While the export's file is fetched (it was rendered before): one subscriber leaves,
    // one is renamed. Only the catch-up pull can bring those.
    let (quitter, renamed) = (ids[30], ids[31]);
    h.ctl.on_request(Trigger::new(
        "GET",
        "/contact_exports",
        SubscriberAction::Unsubscribe {
            contact_id: quitter,
            reason: None,
        },
    ));
    h.ctl.on_request(Trigger::new(
        "GET",
        "/contact_exports",
        SubscriberAction::SetField {
            contact_id: renamed,
            field: ccsync::sandbox::CoreField::FirstName,
            value: Value::from("Renamed"),
        },
    ));
    let from = h.sb.request_count();
    let stats = h.run_ok(Job::Contacts).await;
    let export = &stats["export"];
    assert_eq!(export["used"], Value::Bool(true), "{stats}");
    assert_eq!(
        export["exports"].as_u64(),
        Some(1 + lists.len() as u64),
        "{stats}"
    );
    assert_eq!(export["deleted_rows_skipped"].as_u64(), Some(10), "{stats}");
    // Far fewer requests than the 12 pages of a paged sync plus lists: the contact pages
    // read are the deleted ones and the catch-up's.
    let contact_pages = requests_to(&h, from, "/v3/contacts");
    assert!(contact_pages <= 4, "{contact_pages} contact pages: {stats}");

    // The rename came with the catch-up pull. An unsubscribe need not move `updated_at`
    // (the sandbox's worst case): the opt-out sweep that follows in every cycle brings it,
    // as it does for a paged pull that read the contact before it left.
    let first: String =
        sqlx::query_scalar("SELECT first_name FROM ccsync.contacts WHERE contact_id = $1")
            .bind(renamed)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(first, "Renamed");
    h.run_ok(Job::Unsubscribes).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    let perm: String =
        sqlx::query_scalar("SELECT permission_to_send FROM ccsync.contacts WHERE contact_id = $1")
            .bind(quitter)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(perm, "unsubscribed");
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    // The exports are known to ccsync (never adopted by the push's recovery) and never
    // polled by the push.
    let open: i64 = h
        .count(
            "SELECT count(*) FROM ccsync.import_activities
              WHERE kind <> 'contact_exports' OR finished_at IS NULL",
        )
        .await;
    assert_eq!(open, 0);
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.import_activities")
            .await,
        1 + lists.len() as i64
    );

    // The same data paged into a second store: equal in every carried column.
    let paged_db = TestDb::new().await;
    let mut s = (*h.settings).clone();
    s.sync.backfill = Mode::Paged;
    let s = Arc::new(s);
    let ctx = context(&s, &paged_db.pool);
    for job in [Job::Contacts, Job::Unsubscribes] {
        match sync::run_guarded(&ctx, &s.accounts[0], job).await.outcome {
            Outcome::Succeeded(st) => assert!(st.get("export").is_none(), "{st}"),
            other => panic!("paged {job}: {other:?}"),
        }
    }
    let (by_export, export_members) = carried(&h.db.pool).await;
    let (by_pages, paged_members) = carried(&paged_db.pool).await;
    assert_eq!(by_export.len(), 1_200);
    for (a, b) in by_export.iter().zip(&by_pages) {
        assert_eq!(a, b, "export vs paged");
    }
    assert_eq!(by_export.len(), by_pages.len());
    assert_eq!(export_members, paged_members, "memberships");
    let custom: i64 = h
        .count("SELECT count(*) FROM ccsync.contacts WHERE custom_fields <> '[]'")
        .await;
    assert!(custom > 100, "custom fields compared: {custom}");
    drop(paged_db);
    h.finish().await;
}

#[tokio::test]
async fn an_export_without_contact_ids_sends_the_first_sync_back_to_paging() {
    // The sandbox's default: the documented columns only, no contact_id.
    let h = harness(300, |_| {}).await;
    let stats = h.run_ok(Job::Contacts).await;
    let export = &stats["export"];
    assert_eq!(export["used"], Value::Bool(false), "{stats}");
    let why = export["paged_because"].as_str().unwrap_or_default();
    assert!(why.contains("contact_id"), "{why}");
    assert_eq!(stats["contacts_count"].as_u64(), Some(300), "{stats}");
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    // Only a first sync exports: the next run is an ordinary incremental pull.
    let again = h.run_ok(Job::Contacts).await;
    assert!(again.get("export").is_none(), "{again}");
    h.finish().await;
}

#[tokio::test]
async fn auto_pages_an_account_too_small_to_be_worth_an_export() {
    let h = harness(300, |s| s.sync.backfill = Mode::Auto).await;
    h.ctl.set_export_contact_ids(true);
    let stats = h.run_ok(Job::Contacts).await;
    let export = &stats["export"];
    assert_eq!(export["used"], Value::Bool(false), "{stats}");
    assert!(
        export["paged_because"]
            .as_str()
            .unwrap_or_default()
            .starts_with("auto:"),
        "{stats}"
    );
    assert_eq!(requests_to(&h, 0, "/v3/activities/contact_exports"), 0);
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

#[tokio::test]
async fn a_failed_export_leaves_no_watermark_and_the_next_run_pages_everything() {
    let h = harness(400, |_| {}).await;
    h.ctl.set_export_contact_ids(true);
    let ids = h.ctl.contact_ids();
    h.ctl.delete_contact(ids[0]);
    // The first file's answer is cut short (a transport error, retried like any GET), and
    // the retry is refused: the run fails after the exports were created.
    h.sb.inject(ccsync::sandbox::Fault::TruncateBody {
        path_prefix: "/v3/contact_exports".into(),
        times: 1,
    });
    h.sb.inject(ccsync::sandbox::Fault::Status {
        path_prefix: "/v3/contact_exports".into(),
        status: 404,
        times: 1,
    });
    let report = h.run(Job::Contacts).await;
    assert!(
        matches!(report.outcome, Outcome::Failed(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(watermark(&h.db.pool, "contacts").await, None, "law 4");
    // Nothing of the export was applied: only the deleted contact, paged before it.
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 1);
    h.sb.clear_faults();
    let stats = h.run_ok(Job::Contacts).await;
    assert!(
        stats.get("export").is_none(),
        "contacts stored: paged, {stats}"
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    h.finish().await;
}
