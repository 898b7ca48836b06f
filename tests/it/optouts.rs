//! The opt-out sweep and the deletes job (issue 3): unsubscribes that do not move the
//! contact's `updated_at`, refused outbound rows, the change feed, deletes and restores.

use std::time::Duration;

use ccsync::sync::Job;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::helpers::{watermark, Harness};

async fn permission(h: &Harness, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT permission_to_send FROM ccsync.contacts WHERE contact_id = $1")
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

/// A contact subscribed in the sandbox that is on at least one list.
fn subscriber_on_a_list(h: &Harness, skip: usize) -> (Uuid, String, Vec<Uuid>) {
    h.ctl
        .contact_ids()
        .into_iter()
        .filter_map(|id| h.ctl.contact(id).map(|c| (id, c)))
        .filter(|(_, c)| c["email_address"]["permission_to_send"] != "unsubscribed")
        .filter(|(id, _)| !h.ctl.memberships(*id).is_empty())
        .nth(skip)
        .map(|(id, c)| {
            let email = c["email_address"]["address"].as_str().unwrap().to_string();
            (id, email, h.ctl.memberships(id))
        })
        .unwrap()
}

fn sandbox_unsubscribed(h: &Harness) -> usize {
    h.ctl
        .contact_ids()
        .into_iter()
        .filter_map(|id| h.ctl.contact(id))
        .filter(|c| {
            c["email_address"]["permission_to_send"] == "unsubscribed" && c["deleted_at"].is_null()
        })
        .count()
}

async fn insert_outbound(h: &Harness, email: &str, list_ids: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO ccsync.outbound (email, fields, list_ids) VALUES ($1, '{\"first_name\":\"X\"}', $2) RETURNING id",
    )
    .bind(email)
    .bind(list_ids)
    .fetch_one(&h.db.pool)
    .await
    .unwrap()
}

async fn outbound_state(h: &Harness, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, reason FROM ccsync.outbound WHERE id = $1")
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn first_sweep_reads_every_unsubscribed_contact_without_a_date_filter() {
    let h = Harness::new(700).await;
    let stats = h.run_ok(Job::Unsubscribes).await;
    let expected = sandbox_unsubscribed(&h);
    assert!(expected > 10, "the generator makes ~5% unsubscribed");
    assert_eq!(stats["seen"], expected as u64, "{stats}");
    let local = h
        .count("SELECT count(*) FROM ccsync.contacts WHERE permission_to_send = 'unsubscribed'")
        .await;
    assert_eq!(local as usize, expected);
    let reqs = h.sb.requests();
    let first = reqs.iter().find(|r| r.path.ends_with("/contacts")).unwrap();
    assert!(
        first.query.contains("status=unsubscribed"),
        "{}",
        first.query
    );
    assert!(!first.query.contains("optout_after"), "{}", first.query);
    assert!(first.query.contains("limit=500"), "{}", first.query);
    // The watermark is the largest opt-out date seen (Constant Contact's clock).
    let max_optout = h
        .ctl
        .contact_ids()
        .into_iter()
        .filter_map(|id| h.ctl.contact(id))
        .filter_map(|c| {
            c["email_address"]["opt_out_date"]
                .as_str()
                .and_then(ccsync::ctct::dto::parse_datetime)
        })
        .max();
    assert_eq!(watermark(&h.db.pool, "unsubscribes").await, max_optout);
    h.finish().await;
}

#[tokio::test]
async fn an_unsubscribe_that_does_not_move_updated_at_is_found_by_the_sweep_not_by_the_pull() {
    let h = Harness::new(400).await;
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Unsubscribes).await;
    let (id, email, lists) = subscriber_on_a_list(&h, 3);
    let (_, other_email, other_lists) = subscriber_on_a_list(&h, 4);
    // The application queued: a list add for the contact (address in another case), a
    // field-only update for it, and a list add for someone else.
    let add = insert_outbound(&h, &email.to_uppercase(), &lists[..1]).await;
    let fields_only = insert_outbound(&h, &email, &[]).await;
    let other = insert_outbound(&h, &other_email, &other_lists[..1]).await;
    let updated_before = h.ctl.contact(id).unwrap()["updated_at"].clone();

    h.sb.advance_clock(chrono::Duration::hours(1));
    h.ctl.unsubscribe(id, Some("Too many emails"));
    assert_eq!(
        h.ctl.contact(id).unwrap()["updated_at"],
        updated_before,
        "the sandbox keeps updated_at"
    );

    // The contacts pull alone does not see it.
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["unsubscribed"], 0, "{stats}");
    assert_ne!(permission(&h, id).await.as_deref(), Some("unsubscribed"));
    assert_eq!(outbound_state(&h, add).await.0, "pending");

    // The sweep does.
    let stats = h.run_ok(Job::Unsubscribes).await;
    assert_eq!(stats["unsubscribed"], 1, "{stats}");
    assert_eq!(stats["outbound_skipped"], 1, "{stats}");
    assert!(
        stats["seen"].as_u64().unwrap() < sandbox_unsubscribed(&h) as u64,
        "incremental: {stats}"
    );
    assert_eq!(permission(&h, id).await.as_deref(), Some("unsubscribed"));
    let (reason, source): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT opt_out_reason, opt_out_source FROM ccsync.contacts WHERE contact_id = $1",
    )
    .bind(id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("Too many emails"));
    assert_eq!(source.as_deref(), Some("Contact"));
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM ccsync.changes WHERE contact_id = $1 AND field = 'permission_to_send'",
    )
    .bind(id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(kinds, vec!["unsubscribed".to_string()]);
    let (state, why) = outbound_state(&h, add).await;
    assert_eq!(state, "skipped");
    let why = why.unwrap();
    assert!(
        why.contains("unsubscribed in Constant Contact") && why.contains("never re-subscribes"),
        "{why}"
    );
    assert_eq!(
        outbound_state(&h, fields_only).await.0,
        "pending",
        "adds no list"
    );
    assert_eq!(
        outbound_state(&h, other).await.0,
        "pending",
        "another contact"
    );

    // The second sweep asked for opt-outs after watermark − look-back only.
    let reqs = h.sb.requests();
    let last = reqs
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/contacts"))
        .unwrap();
    assert!(
        last.query.contains("status=unsubscribed") && last.query.contains("optout_after="),
        "{}",
        last.query
    );
    let optout = h.ctl.contact(id).unwrap()["email_address"]["opt_out_date"]
        .as_str()
        .and_then(ccsync::ctct::dto::parse_datetime);
    assert_eq!(watermark(&h.db.pool, "unsubscribes").await, optout);
    h.finish().await;
}

#[tokio::test]
async fn an_application_listening_on_ccsync_changes_hears_a_swept_unsubscribe() {
    let h = Harness::new(150).await;
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Unsubscribes).await;
    let (id, _, _) = subscriber_on_a_list(&h, 0);
    let mut listener = PgListener::connect_with(&h.db.pool).await.unwrap();
    listener.listen("ccsync_changes").await.unwrap();
    h.sb.advance_clock(chrono::Duration::hours(1));
    h.ctl.unsubscribe(id, None);
    h.run_ok(Job::Unsubscribes).await;
    let change_id: i64 = sqlx::query_scalar(
        "SELECT id FROM ccsync.changes WHERE contact_id = $1 AND kind = 'unsubscribed'",
    )
    .bind(id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification arrives")
        .unwrap();
    assert_eq!(note.channel(), "ccsync_changes");
    let payload: serde_json::Value = serde_json::from_str(note.payload()).unwrap();
    assert_eq!(payload["account"], "default");
    let (first, last) = (
        payload["first_id"].as_i64().unwrap(),
        payload["last_id"].as_i64().unwrap(),
    );
    assert!(
        first <= change_id && change_id <= last,
        "{payload} covers {change_id}"
    );
    // The listener holds a pooled connection: release it before the pool closes.
    drop(listener);
    h.finish().await;
}

#[tokio::test]
async fn a_deleted_contact_gets_deleted_at_and_no_memberships_and_a_restore_clears_it() {
    let h = Harness::new(300).await;
    h.run_ok(Job::Contacts).await;
    // A first delete gives the deletes job a watermark.
    let (earlier, _, _) = subscriber_on_a_list(&h, 0);
    h.sb.advance_clock(chrono::Duration::minutes(10));
    h.ctl.delete_contact(earlier);
    let stats = h.run_ok(Job::Deletes).await;
    assert_eq!(
        stats["deleted"], 1,
        "first run reads every deleted contact: {stats}"
    );
    let (id, _, lists) = subscriber_on_a_list(&h, 1);
    let local = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.list_memberships WHERE contact_id = '{id}'"
        ))
        .await;
    assert_eq!(local as usize, lists.len());

    h.sb.advance_clock(chrono::Duration::hours(1));
    h.ctl.delete_contact(id);
    let stats = h.run_ok(Job::Deletes).await;
    // Past watermark − look-back: the new delete, and the earlier one again (unchanged).
    assert_eq!(stats["seen"], 2, "{stats}");
    assert_eq!(stats["deleted"], 1, "{stats}");
    assert_eq!(stats["unchanged"], 1, "{stats}");
    let reqs = h.sb.requests();
    let last = reqs
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/contacts"))
        .unwrap();
    assert!(
        last.query.contains("status=deleted") && last.query.contains("updated_after="),
        "{}",
        last.query
    );
    let deleted: Option<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT deleted_at FROM ccsync.contacts WHERE contact_id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(deleted.is_some());
    let local = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.list_memberships WHERE contact_id = '{id}'"
        ))
        .await;
    assert_eq!(local, 0);
    let removed = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.changes WHERE contact_id = '{id}' AND kind = 'list_removed'"
        ))
        .await;
    assert_eq!(removed as usize, lists.len());
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.changes WHERE contact_id = '{id}' AND kind = 'deleted'"
        ))
        .await,
        1
    );

    // Restored in Constant Contact: the contacts pull (status=all) clears deleted_at.
    h.sb.advance_clock(chrono::Duration::minutes(30));
    h.ctl.restore_contact(id);
    h.run_ok(Job::Contacts).await;
    let deleted: Option<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT deleted_at FROM ccsync.contacts WHERE contact_id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(deleted.is_none());
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.changes WHERE contact_id = '{id}' AND kind = 'restored'"
        ))
        .await,
        1
    );
    h.finish().await;
}

#[tokio::test]
async fn running_every_job_twice_with_no_change_writes_no_changes_rows() {
    let h = Harness::new(600).await;
    for job in [Job::Contacts, Job::Unsubscribes, Job::Deletes, Job::Lists] {
        h.run_ok(job).await;
    }
    let after_pull = h.count("SELECT count(*) FROM ccsync.changes").await;
    // A reconcile right after a complete pull finds no drift.
    let stats = h.run_ok(Job::Reconcile).await;
    assert_eq!(stats["changes_written"], 0, "{stats}");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.changes").await,
        after_pull
    );
    for job in [
        Job::Contacts,
        Job::Unsubscribes,
        Job::Deletes,
        Job::Lists,
        Job::Reconcile,
    ] {
        let stats = h.run_ok(job).await;
        assert_eq!(
            h.count("SELECT count(*) FROM ccsync.changes").await,
            after_pull,
            "{job}: {stats}"
        );
    }
    // And `status` shows every job with its last run.
    let status = ccsync::cmd::status::collect(&h.db.pool, &h.settings)
        .await
        .unwrap();
    for job in ["contacts", "unsubscribes", "deletes", "lists", "reconcile"] {
        let j = status["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == job)
            .unwrap_or_else(|| panic!("{job} missing in {status}"));
        assert_eq!(j["last_outcome"], "succeeded", "{j}");
        assert!(!j["last_success_at"].is_null(), "{j}");
        if job == "unsubscribes" || job == "contacts" {
            assert!(!j["watermark"].is_null(), "{j}");
        }
    }
    h.finish().await;
}

#[tokio::test]
async fn the_contacts_pull_also_refuses_pending_list_adds_when_it_sees_an_unsubscribe() {
    let h = Harness::new(200).await;
    h.run_ok(Job::Contacts).await;
    let (id, email, lists) = subscriber_on_a_list(&h, 2);
    let add = insert_outbound(&h, &email, &lists[..1]).await;
    h.sb.advance_clock(chrono::Duration::hours(1));
    h.ctl.unsubscribe(id, None);
    // This time the contact's updated_at moves too (another edit), so the pull sees it.
    h.ctl
        .update_contact(id, |c| c["job_title"] = serde_json::json!("Retired"));
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["unsubscribed"], 1, "{stats}");
    assert_eq!(stats["outbound_skipped"], 1, "{stats}");
    assert_eq!(outbound_state(&h, add).await.0, "skipped");
    // The sweep then finds it already applied: nothing more is written.
    let changes = h.count("SELECT count(*) FROM ccsync.changes").await;
    let stats = h.run_ok(Job::Unsubscribes).await;
    assert_eq!(stats["outbound_skipped"], 0, "{stats}");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.changes").await,
        changes
    );
    h.finish().await;
}
