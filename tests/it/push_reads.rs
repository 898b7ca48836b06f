//! Read before write: a list the contact left in Constant Contact is never put back by a
//! push, even when the leave did not move the contact's `updated_at` (the sandbox's list
//! edits move no clock — the worst case, since the incremental pull then never sees them).
//! No `touch()` of the contact anywhere here.

use std::time::Duration;

use ccsync::sync::{self, Job, Outcome};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::Harness;

pub(crate) async fn harness(contacts: usize) -> Harness {
    Harness::with(contacts, |s| {
        s.sync.poll_initial = Duration::from_millis(20);
        s.sync.poll_max = Duration::from_millis(80);
    })
    .await
}

/// `sync --job push`: the pulls, then the push; returns the push's stats.
pub(crate) async fn push(h: &Harness) -> Value {
    let reports = sync::run_cycle(&h.ctx, &h.settings.accounts, &[Job::Push]).await;
    let last = reports.last().expect("a report");
    assert_eq!(last.job, Job::Push, "{reports:?}");
    match &last.outcome {
        Outcome::Succeeded(s) => s.clone(),
        other => panic!("push did not succeed: {other:?}"),
    }
}

pub(crate) async fn state(h: &Harness, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, reason FROM ccsync.outbound WHERE id = $1")
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

/// A subscriber on at least one list: (id, email, a list it is on).
pub(crate) fn member(h: &Harness) -> (Uuid, String, Uuid) {
    for id in h.ctl.contact_ids() {
        let c = h.ctl.contact(id).unwrap();
        let on = h.ctl.memberships(id);
        if c["email_address"]["permission_to_send"] != "unsubscribed"
            && c["deleted_at"].is_null()
            && !on.is_empty()
        {
            let email = c["email_address"]["address"]
                .as_str()
                .unwrap()
                .to_lowercase();
            return (id, email, on[0]);
        }
    }
    panic!("no subscriber on a list in the sandbox");
}

/// Every list added to a contact by a request the sandbox received after `from`.
pub(crate) fn re_added(h: &Harness, email: &str, list: Uuid) -> bool {
    h.sb.requests().iter().any(|r| {
        r.method == "POST"
            && r.path.ends_with("/contacts_json_import")
            && r.body.as_ref().is_some_and(|b| {
                b["list_ids"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().any(|l| l == &json!(list)))
                    && b["import_data"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|c| c["email"] == json!(email)))
            })
    })
}

pub(crate) async fn list_removed_logged(h: &Harness, contact: Uuid, list: Uuid) -> bool {
    h.count(&format!(
        "SELECT count(*) FROM ccsync.changes WHERE kind = 'list_removed' \
         AND contact_id = '{contact}' AND old_value = '\"{list}\"'::jsonb"
    ))
    .await
        > 0
}

#[tokio::test]
async fn a_leave_before_the_row_is_queued_is_read_before_the_push_and_never_undone() {
    let h = harness(40).await;
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let (cid, email, list) = member(&h);
    // The subscriber leaves in Constant Contact; the contact's updated_at does not move, so
    // the store still shows the membership when the application queues its row. Another
    // subscriber joins the same list, so its membership_count is unchanged and the lists
    // cycle's drift check cannot see the leave either: only the read before the write can.
    // (A recently unsubscribed joiner would not do: the opt-out sweep re-reads it, its
    // join reaches the store, the counts differ and the lists cycle finds the leave.)
    h.ctl.leave_list(cid, list);
    let joiner = h
        .ctl
        .contact_ids()
        .into_iter()
        .find(|&id| {
            id != cid
                && !h.ctl.memberships(id).contains(&list)
                && h.ctl.contact(id).is_some_and(|c| {
                    c["deleted_at"].is_null()
                        && c["email_address"]["permission_to_send"] != "unsubscribed"
                })
        })
        .expect("a live subscriber not on the list");
    h.ctl.join_list(joiner, list);
    let id = h
        .queue(&email, json!({"job_title": "Local title"}), &[list])
        .await;
    let stats = push(&h).await;
    assert!(
        stats["read_before_write"]["leaves_found"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(
        !h.ctl.memberships(cid).contains(&list),
        "the leave was undone"
    );
    assert!(
        !re_added(&h, &email, list),
        "an import named the list it left"
    );
    assert!(list_removed_logged(&h, cid, list).await);
    let (st, reason) = state(&h, id).await;
    assert!(
        matches!(st.as_str(), "skipped" | "completed" | "failed"),
        "{st}"
    );
    assert!(
        reason.unwrap_or_default().contains(&list.to_string()),
        "the reason names the refused list"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_leave_between_queueing_and_the_push_is_read_and_never_undone() {
    let h = harness(40).await;
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let (cid, email, list) = member(&h);
    let lists = h.ctl.list_ids();
    let other = *lists
        .iter()
        .find(|l| !h.ctl.memberships(cid).contains(l))
        .unwrap();
    let id = h.queue(&email, json!({}), &[list, other]).await;
    h.ctl.leave_list(cid, list);
    push(&h).await;
    let on = h.ctl.memberships(cid);
    assert!(!on.contains(&list), "the leave was undone: {on:?}");
    assert!(on.contains(&other), "a new join is still made");
    assert!(!re_added(&h, &email, list));
    let (st, reason) = state(&h, id).await;
    assert_eq!(st, "completed", "{reason:?}");
    assert!(reason.unwrap_or_default().contains("not re-added"));
    // A row queued after ccsync recorded the leave is the application's own decision.
    let again = h.queue(&email, json!({}), &[list]).await;
    push(&h).await;
    assert_eq!(state(&h, again).await.0, "completed");
    assert!(h.ctl.memberships(cid).contains(&list));
    h.finish().await;
}

#[tokio::test]
async fn many_rows_are_read_per_list_and_few_per_contact_as_the_request_count_says() {
    let h = harness(1200).await;
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let (cid, email, list) = member(&h);
    h.queue(&email, json!({"first_name": "One"}), &[list]).await;
    let stats = push(&h).await;
    let rbw = &stats["read_before_write"];
    assert_eq!(rbw["plan"]["reader"], "per_contact", "{stats}");
    assert_eq!(rbw["requests"], 1, "{stats}");
    // Every member of one list gets a row: reading the list costs fewer requests.
    let members: Vec<Uuid> = h
        .ctl
        .contact_ids()
        .into_iter()
        .filter(|c| h.ctl.memberships(*c).contains(&list) && *c != cid)
        .collect();
    assert!(members.len() > 10, "{}", members.len());
    for c in &members {
        let e = h.ctl.contact(*c).unwrap()["email_address"]["address"]
            .as_str()
            .unwrap()
            .to_lowercase();
        h.queue(&e, json!({"first_name": "Many"}), &[list]).await;
    }
    let stats = push(&h).await;
    let rbw = &stats["read_before_write"];
    assert_eq!(rbw["plan"]["reader"], "per_list", "{stats}");
    assert!(
        rbw["requests"].as_u64() < Some(members.len() as u64),
        "{stats}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_row_the_import_refuses_without_naming_it_ends_failed_never_completed() {
    let h = harness(20).await;
    let lists = h.ctl.list_ids();
    // A brand-new contact the import will refuse for a reason no message names.
    h.ctl.refuse_silently("quiet-refusal@example.com");
    let refused = h
        .queue(
            "quiet-refusal@example.com",
            json!({"first_name": "Q"}),
            &lists[..1],
        )
        .await;
    let fine = h
        .queue("fine@example.com", json!({"first_name": "F"}), &lists[..1])
        .await;
    let stats = push(&h).await;
    assert_eq!(stats["unconfirmed"], 1, "{stats}");
    let (st, reason) = state(&h, refused).await;
    assert_eq!(st, "failed", "{reason:?}");
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("error_count=1"),
        "the reason names the counter: {reason}"
    );
    assert!(h
        .ctl
        .contact_by_email("quiet-refusal@example.com")
        .is_none());
    let (st, reason) = state(&h, fine).await;
    assert_eq!(st, "completed", "{reason:?}");
    assert!(stats["confirm_requests"].as_u64() >= Some(1), "{stats}");
    h.finish().await;
}
