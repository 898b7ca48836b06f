//! The lists cycle's membership drift check: where leaving or joining a list moves nothing
//! (the sandbox's default, the worst case), the lists job compares each list's
//! `membership_count` with the store's and re-reads only the lists that differ.

use std::collections::BTreeSet;

use ccsync::sync::Job;
use uuid::Uuid;

use crate::helpers::{local_memberships, sandbox_memberships, Harness};

/// Requests of the sandbox's log from `from` on that read contacts (member pages).
fn contact_reads(h: &Harness, from: usize) -> usize {
    h.sb.requests_from(from)
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/contacts"))
        .count()
}

#[tokio::test]
async fn leaves_and_joins_that_move_nothing_reach_the_store_within_one_lists_cycle() {
    let h = Harness::new(1_200).await;
    for job in [Job::Contacts, Job::Lists] {
        h.run_ok(job).await;
    }
    assert_eq!(local_memberships(&h).await, sandbox_memberships(&h));
    let lists = h.ctl.list_ids();
    // 30 leaves spread over every list but the first and the last, and 5 joins of the first
    // list, none of which moves `updated_at` (a leave and a join of one list would cancel out
    // in its count: the next test).
    let members: Vec<(Uuid, Uuid)> = sandbox_memberships(&h)
        .into_iter()
        .filter(|(_, l)| *l != lists[0] && *l != lists[lists.len() - 1])
        .collect();
    let leaves: Vec<(Uuid, Uuid)> = members.iter().step_by(7).take(30).copied().collect();
    assert_eq!(leaves.len(), 30);
    for (c, l) in &leaves {
        h.ctl.leave_list(*c, *l);
    }
    let joiners: Vec<Uuid> = h
        .ctl
        .contact_ids()
        .into_iter()
        .filter(|c| !h.ctl.memberships(*c).contains(&lists[0]))
        .take(5)
        .collect();
    for c in &joiners {
        h.ctl.join_list(*c, lists[0]);
    }
    // The incremental pull cannot see any of it.
    h.run_ok(Job::Contacts).await;
    let local = local_memberships(&h).await;
    assert!(
        leaves.iter().all(|m| local.contains(m)),
        "the pull saw a leave"
    );

    let before = h.sb.requests().len();
    let stats = h.run_ok(Job::Lists).await;
    let (local, remote) = (local_memberships(&h).await, sandbox_memberships(&h));
    assert_eq!(
        local.symmetric_difference(&remote).count(),
        0,
        "the store differs from Constant Contact: {stats}"
    );
    let drifted: BTreeSet<Uuid> = leaves.iter().map(|(_, l)| *l).chain([lists[0]]).collect();
    let reported: BTreeSet<Uuid> = stats["drift"]["lists_drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        reported, drifted,
        "only the lists whose counts differ: {stats}"
    );
    assert!(
        !reported.contains(&lists[lists.len() - 1]),
        "an untouched list is not re-read"
    );
    assert_eq!(stats["drift"]["memberships_removed"], 30, "{stats}");
    assert_eq!(stats["drift"]["memberships_added"], 5, "{stats}");
    assert!(contact_reads(&h, before) >= 1);

    // Nothing changed since: the lists cycle reads no member page at all.
    let before = h.sb.requests().len();
    let stats = h.run_ok(Job::Lists).await;
    assert_eq!(contact_reads(&h, before), 0, "{stats}");
    assert_eq!(stats["drift"]["lists_drifted"].as_array().unwrap().len(), 0);
    let paths: Vec<String> =
        h.sb.requests_from(before)
            .into_iter()
            .map(|r| r.path)
            .filter(|p| !p.contains("oauth"))
            .collect();
    assert_eq!(
        paths.len(),
        2,
        "one catalogue read and one custom field read: {paths:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_join_and_a_leave_that_cancel_out_wait_for_the_reconcile() {
    let h = Harness::new(600).await;
    for job in [Job::Contacts, Job::Lists] {
        h.run_ok(job).await;
    }
    let list = h.ctl.list_ids()[0];
    let leaver = h
        .ctl
        .contact_ids()
        .into_iter()
        .find(|c| h.ctl.memberships(*c).contains(&list))
        .unwrap();
    let joiner = h
        .ctl
        .contact_ids()
        .into_iter()
        .find(|c| !h.ctl.memberships(*c).contains(&list))
        .unwrap();
    h.ctl.leave_list(leaver, list);
    h.ctl.join_list(joiner, list);
    // Same count: the lists cycle cannot tell (the documented limit of the count check).
    let stats = h.run_ok(Job::Lists).await;
    assert!(
        !stats["drift"]["lists_drifted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str() == Some(&list.to_string())),
        "{stats}"
    );
    assert!(local_memberships(&h).await.contains(&(leaver, list)));
    // The weekly reconcile compares members and repairs both.
    h.run_ok(Job::Reconcile).await;
    let local = local_memberships(&h).await;
    assert!(!local.contains(&(leaver, list)));
    assert!(local.contains(&(joiner, list)));
    assert_eq!(
        local.symmetric_difference(&sandbox_memberships(&h)).count(),
        0
    );
    h.finish().await;
}

#[tokio::test]
async fn a_cycle_that_pulls_contacts_runs_no_separate_deletes_sweep_and_still_applies_deletes() {
    let h = Harness::new(300).await;
    h.run_ok(Job::Contacts).await;
    let gone = h.ctl.contact_ids()[3];
    h.ctl.delete_contact(gone);
    let before = h.sb.requests().len();
    let reports = ccsync::sync::run_cycle(
        &h.ctx,
        std::slice::from_ref(h.account()),
        &[Job::Contacts, Job::Deletes],
    )
    .await;
    let ran: Vec<String> = reports.iter().map(|r| r.job.to_string()).collect();
    assert_eq!(
        ran,
        vec!["contacts"],
        "deletes folded into the contacts pull"
    );
    assert!(
        !h.sb
            .requests_from(before)
            .iter()
            .any(|r| r.query.contains("status=deleted")),
        "no separate deletes sweep"
    );
    let deleted: Option<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT deleted_at FROM ccsync.contacts WHERE contact_id = $1")
            .bind(gone)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(deleted.is_some(), "the contacts pull applied the delete");
    // The deletes job counts as run: its watermark follows the contacts pull's.
    let (c, d): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT (SELECT watermark FROM ccsync.sync_state WHERE job = 'contacts'),
                    (SELECT watermark FROM ccsync.sync_state WHERE job = 'deletes')",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(c.is_some());
    assert_eq!(c, d);
    h.finish().await;
}
