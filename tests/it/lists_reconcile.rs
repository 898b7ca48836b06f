//! The list catalogue and the membership reconcile (issue 3): deleted and vanished lists,
//! drift repaired in both directions, pending outbound adds protecting a membership,
//! configured list subsets, and what the incremental jobs cannot see.

use std::collections::BTreeSet;
use std::sync::Arc;

use ccsync::config::ListsSetting;
use ccsync::sync::{self, Job, Outcome};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{local_memberships, sandbox_memberships, Harness};

async fn insert_membership(h: &Harness, contact: Uuid, list: Uuid) {
    sqlx::query(
        "INSERT INTO ccsync.list_memberships (account_id, contact_id, list_id) VALUES ('default', $1, $2)",
    )
    .bind(contact)
    .bind(list)
    .execute(&h.db.pool)
    .await
    .unwrap();
}

async fn delete_membership(h: &Harness, contact: Uuid, list: Uuid) {
    sqlx::query("DELETE FROM ccsync.list_memberships WHERE contact_id = $1 AND list_id = $2")
        .bind(contact)
        .bind(list)
        .execute(&h.db.pool)
        .await
        .unwrap();
}

async fn change_count(h: &Harness, contact: Uuid, kind: &str) -> i64 {
    h.count(&format!(
        "SELECT count(*) FROM ccsync.changes WHERE contact_id = '{contact}' AND kind = '{kind}'"
    ))
    .await
}

/// A contact on some list but not on `list`, and one on no list at all.
fn on_some_list_but_not(h: &Harness, list: Uuid, skip: usize) -> Uuid {
    h.ctl
        .contact_ids()
        .into_iter()
        .filter(|id| {
            let m = h.ctl.memberships(*id);
            !m.is_empty() && !m.contains(&list)
        })
        .nth(skip)
        .unwrap()
}

/// The generator puts everyone on a list: create a few contacts on none (before the pull).
fn create_listless(h: &Harness, n: usize) {
    for i in 0..n {
        let id = h
            .ctl
            .create_contact(&format!("listless.{i}@example.com"), Some("Lone"), &[]);
        // Old, so that the pull's look-back does not re-read (and repair) them.
        h.ctl
            .set_updated_at(id, h.sb.now() - chrono::Duration::days(30));
    }
}

fn on_no_list(h: &Harness, skip: usize) -> Uuid {
    h.ctl
        .contact_ids()
        .into_iter()
        .filter(|id| h.ctl.memberships(*id).is_empty())
        .nth(skip)
        .unwrap()
}

fn email_of(h: &Harness, id: Uuid) -> String {
    h.ctl.contact(id).unwrap()["email_address"]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn lists_job_mirrors_the_catalogue_with_counts_and_marks_deleted_and_vanished_lists() {
    let h = Harness::new(300).await;
    h.run_ok(Job::Contacts).await;
    let stats = h.run_ok(Job::Lists).await;
    let lists = h.ctl.list_ids();
    assert_eq!(stats["lists_seen"], lists.len() as u64, "{stats}");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.contact_lists").await as usize,
        lists.len()
    );
    let req =
        h.sb.requests()
            .into_iter()
            .find(|r| r.path.ends_with("/contact_lists"))
            .unwrap();
    for needle in [
        "include_membership_count=all",
        "status=all",
        "include_count=true",
        "limit=500",
    ] {
        assert!(
            req.query.contains(needle),
            "{needle} missing in {}",
            req.query
        );
    }
    let all = sandbox_memberships(&h);
    for l in &lists {
        let count: Option<i32> = sqlx::query_scalar(
            "SELECT membership_count FROM ccsync.contact_lists WHERE list_id = $1",
        )
        .bind(l)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        assert_eq!(
            count.unwrap() as usize,
            all.iter().filter(|(_, x)| x == l).count()
        );
    }

    // A list deleted in Constant Contact keeps its row with deleted_at, and its local
    // memberships go (as in Constant Contact, without bumping the contacts).
    let gone = lists[2];
    let members_before = all.iter().filter(|(_, x)| *x == gone).count();
    assert!(members_before > 0);
    h.ctl.delete_list(gone);
    // A list known locally that vanished from the catalogue entirely.
    let vanished = Uuid::new_v4();
    sqlx::query("INSERT INTO ccsync.contact_lists (account_id, list_id, name) VALUES ('default', $1, 'Old')")
        .bind(vanished)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let stats = h.run_ok(Job::Lists).await;
    assert_eq!(stats["lists_vanished"], 1, "{stats}");
    assert_eq!(
        stats["memberships_removed"], members_before as u64,
        "{stats}"
    );
    for l in [gone, vanished] {
        let deleted: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT deleted_at FROM ccsync.contact_lists WHERE list_id = $1")
                .bind(l)
                .fetch_one(&h.db.pool)
                .await
                .unwrap();
        assert!(deleted.is_some(), "{l}");
    }
    let left = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.list_memberships WHERE list_id = '{gone}'"
        ))
        .await;
    assert_eq!(left, 0);
    let logged = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.changes WHERE kind = 'list_removed' AND old_value = to_jsonb('{gone}'::text)"
        ))
        .await;
    assert_eq!(logged as usize, members_before);
    assert_eq!(local_memberships(&h).await, sandbox_memberships(&h));
    // Nothing changed since: a second run writes no changes and no list rows.
    let changes = h.count("SELECT count(*) FROM ccsync.changes").await;
    let stats = h.run_ok(Job::Lists).await;
    assert_eq!(stats["lists_written"], 0, "{stats}");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.changes").await,
        changes
    );
    h.finish().await;
}

#[tokio::test]
async fn reconcile_repairs_drift_in_both_directions_in_few_requests() {
    let h = Harness::new(1_100).await;
    create_listless(&h, 3);
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let lists = h.ctl.list_ids();
    let l = lists[0];
    // Local drift: a bogus membership (contact on other lists), another for a contact on no
    // list at all, and a real membership lost.
    let bogus = on_some_list_but_not(&h, l, 0);
    let bogus_alone = on_no_list(&h, 0);
    let (real_c, real_l) = *sandbox_memberships(&h).iter().nth(5).unwrap();
    insert_membership(&h, bogus, l).await;
    insert_membership(&h, bogus_alone, l).await;
    delete_membership(&h, real_c, real_l).await;
    // Drift on Constant Contact's side the incremental pull cannot see: leaving a list
    // bumps nothing.
    let (leaver, left_list) = *sandbox_memberships(&h).iter().nth(40).unwrap();
    h.ctl.leave_list(leaver, left_list);
    h.run_ok(Job::Contacts).await;
    assert!(
        local_memberships(&h).await.contains(&(leaver, left_list)),
        "the pull missed it"
    );

    let before = h.sb.requests().len();
    let stats = h.run_ok(Job::Reconcile).await;
    assert_eq!(
        local_memberships(&h).await,
        sandbox_memberships(&h),
        "{stats}"
    );
    assert_eq!(stats["memberships_added"], 1, "{stats}");
    assert_eq!(stats["memberships_removed"], 3, "{stats}");
    assert_eq!(change_count(&h, bogus, "list_removed").await, 1);
    assert_eq!(change_count(&h, bogus_alone, "list_removed").await, 1);
    assert_eq!(change_count(&h, leaver, "list_removed").await, 1);
    assert!(change_count(&h, real_c, "list_added").await >= 1);

    // The 8 lists go in one `lists=` query: pages ≈ members / 500, not lists × pages.
    let reqs: Vec<_> = h.sb.requests().into_iter().skip(before).collect();
    let list_pages: Vec<_> = reqs
        .iter()
        .filter(|r| {
            r.path.ends_with("/contacts")
                && (r.query.contains("lists=") || r.query.contains("cursor="))
        })
        .collect();
    let first = list_pages
        .iter()
        .find(|r| r.query.contains("lists="))
        .unwrap();
    let ids = first
        .query
        .split("lists=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert_eq!(
        ids.split("%2C").count().max(ids.split(',').count()),
        lists.len(),
        "{}",
        first.query
    );
    let members: BTreeSet<Uuid> = sandbox_memberships(&h)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(stats["list_queries"], 1, "{stats}");
    assert_eq!(
        stats["pages"],
        members.len().div_ceil(500) as u64,
        "{stats}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_stale_membership_is_removed_whatever_the_outbound_queue_holds() {
    let h = Harness::new(400).await;
    create_listless(&h, 3);
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let l = h.ctl.list_ids()[1];
    let pending_page = on_some_list_but_not(&h, l, 0);
    let pending_alone = on_no_list(&h, 0);
    let done_page = on_some_list_but_not(&h, l, 1);
    let done_alone = on_no_list(&h, 1);
    for c in [pending_page, pending_alone, done_page, done_alone] {
        insert_membership(&h, c, l).await;
    }
    for (c, state) in [
        (pending_page, "pending"),
        (pending_alone, "pending"),
        (done_page, "completed"),
        (done_alone, "failed"),
    ] {
        sqlx::query("INSERT INTO ccsync.outbound (email, list_ids, state) VALUES ($1, $2, $3)")
            .bind(email_of(&h, c).to_uppercase())
            .bind(vec![l])
            .bind(state)
            .execute(&h.db.pool)
            .await
            .unwrap();
    }
    let stats = h.run_ok(Job::Reconcile).await;
    assert!(stats.get("memberships_protected").is_none(), "{stats}");
    let local = local_memberships(&h).await;
    // A pending row naming the list protects nothing: the leave is logged, and the guard
    // refuses the list to rows queued before it.
    for c in [pending_page, pending_alone, done_page, done_alone] {
        assert!(!local.contains(&(c, l)), "stale membership of {c} kept");
    }
    let removed = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.changes WHERE kind = 'list_removed' \
             AND old_value = '\"{l}\"'::jsonb"
        ))
        .await;
    assert!(removed >= 4, "{removed}");
    h.finish().await;
}

#[tokio::test]
async fn reconcile_catches_deletes_opt_outs_and_resubscriptions_the_incremental_jobs_missed() {
    let h = Harness::new(500).await;
    // One unsubscribed contact on no list: only the re-read by email can find it again.
    create_listless(&h, 1);
    let lone = on_no_list(&h, 0);
    h.ctl.unsubscribe(lone, None);
    for job in [Job::Contacts, Job::Unsubscribes, Job::Deletes, Job::Lists] {
        h.run_ok(job).await;
    }
    let ids = h.ctl.contact_ids();
    let with_lists: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| !h.ctl.memberships(*id).is_empty())
        .collect();
    // An earlier delete gives the deletes job a watermark (it reads everything until then).
    h.sb.advance_clock(chrono::Duration::minutes(10));
    h.ctl.delete_contact(with_lists[1]);
    h.run_ok(Job::Deletes).await;
    let perm = |id: Uuid| h.ctl.contact(id).unwrap()["email_address"]["permission_to_send"].clone();
    // A delete that did not move updated_at.
    let deleted = with_lists[0];
    let updated_at = h.ctl.contact(deleted).unwrap()["updated_at"]
        .as_str()
        .and_then(ccsync::ctct::dto::parse_datetime)
        .unwrap();
    h.sb.advance_clock(chrono::Duration::hours(1));
    h.ctl.delete_contact(deleted);
    h.ctl.set_updated_at(deleted, updated_at);
    // A contact unsubscribed in Constant Contact that re-subscribes by its own action
    // (neither updated_at nor the unsubscribed set show it).
    let resub = ids
        .iter()
        .copied()
        .find(|id| perm(*id) == "unsubscribed")
        .unwrap();
    h.ctl.resubscribe(resub);
    h.ctl.resubscribe(lone);
    for job in [Job::Contacts, Job::Unsubscribes, Job::Deletes] {
        h.run_ok(job).await;
    }
    let deleted_at = |id: Uuid| {
        let pool = h.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<chrono::NaiveDate>>(
                "SELECT deleted_at FROM ccsync.contacts WHERE contact_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let local_perm = |id: Uuid| {
        let pool = h.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT permission_to_send FROM ccsync.contacts WHERE contact_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(
        deleted_at(deleted).await.is_none(),
        "the incremental jobs missed the delete"
    );
    assert_eq!(
        local_perm(resub).await.as_deref(),
        Some("unsubscribed"),
        "and the re-subscription"
    );
    assert_eq!(local_perm(lone).await.as_deref(), Some("unsubscribed"));

    let stats = h.run_ok(Job::Reconcile).await;
    assert!(deleted_at(deleted).await.is_some(), "{stats}");
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.list_memberships WHERE contact_id = '{deleted}'"
        ))
        .await,
        0
    );
    assert_eq!(
        local_perm(resub).await.as_deref(),
        Some("explicit"),
        "{stats}"
    );
    assert_eq!(change_count(&h, resub, "resubscribed").await, 1);
    assert_eq!(
        local_perm(lone).await.as_deref(),
        Some("explicit"),
        "{stats}"
    );
    assert_eq!(change_count(&h, lone, "resubscribed").await, 1);
    assert_eq!(
        stats["resubscribe_lookups"], 1,
        "only the contact on no list is re-read: {stats}"
    );
    assert_eq!(local_memberships(&h).await, sandbox_memberships(&h));
    h.finish().await;
}

#[tokio::test]
async fn an_account_with_configured_lists_reconciles_only_those() {
    let h = Harness::new(400).await;
    create_listless(&h, 3);
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let lists = h.ctl.list_ids();
    let (synced, other) = (lists[0], lists[1]);
    let a = on_some_list_but_not(&h, synced, 0);
    let b = on_no_list(&h, 0);
    insert_membership(&h, a, synced).await;
    insert_membership(&h, b, other).await;
    let mut settings = (*h.settings).clone();
    let unknown = Uuid::new_v4();
    settings.accounts[0].lists = ListsSetting::Ids(vec![synced, unknown]);
    let settings = Arc::new(settings);
    let ctx = ccsync::startup::job_context(
        settings.clone(),
        h.db.pool.clone(),
        CancellationToken::new(),
        false,
    )
    .unwrap();
    // The lists job names a configured list Constant Contact does not have.
    let r = sync::run_guarded(&ctx, &settings.accounts[0], Job::Lists).await;
    let Outcome::Succeeded(stats) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(
        stats["configured_lists_missing"],
        serde_json::json!([unknown]),
        "{stats}"
    );
    let before = h.sb.requests().len();
    let r = sync::run_guarded(&ctx, &settings.accounts[0], Job::Reconcile).await;
    let Outcome::Succeeded(stats) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(stats["synced_lists"], 1, "{stats}");
    let local = local_memberships(&h).await;
    assert!(
        !local.contains(&(a, synced)),
        "drift on the synced list is repaired"
    );
    assert!(local.contains(&(b, other)), "other lists are left alone");
    let list_queries: Vec<_> =
        h.sb.requests()
            .into_iter()
            .skip(before)
            .filter(|r| r.query.contains("lists="))
            .collect();
    assert_eq!(list_queries.len(), 1);
    assert!(list_queries[0].query.contains(&synced.to_string()));
    assert!(!list_queries[0].query.contains(&other.to_string()));
    h.finish().await;
}

#[tokio::test]
async fn a_dry_run_reconcile_reports_the_drift_and_writes_nothing() {
    let h = Harness::new(300).await;
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let l = h.ctl.list_ids()[0];
    let bogus = on_some_list_but_not(&h, l, 0);
    insert_membership(&h, bogus, l).await;
    let changes = h.count("SELECT count(*) FROM ccsync.changes").await;
    let mut ctx = h.new_context();
    ctx.dry_run = true;
    let r = sync::run_guarded(&ctx, h.account(), Job::Reconcile).await;
    let Outcome::Succeeded(stats) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(stats["memberships_removed"], 1, "{stats}");
    assert!(local_memberships(&h).await.contains(&(bogus, l)));
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.changes").await,
        changes
    );
    h.finish().await;
}

#[tokio::test]
async fn more_than_25_lists_are_reconciled_in_groups_of_at_most_25() {
    let h = Harness::new(300).await;
    let ids = h.ctl.contact_ids();
    for i in 0..22 {
        let l = h.ctl.create_list(&format!("Extra {i}"));
        for c in ids.iter().skip(i * 7).take(40) {
            h.ctl.join_list(*c, l);
        }
    }
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let lists = h.ctl.list_ids();
    assert_eq!(lists.len(), 30);
    assert_eq!(local_memberships(&h).await, sandbox_memberships(&h));
    // Drift on the last list (second group) and on the first (first group).
    let (first, last) = (lists[0], lists[29]);
    let bogus = on_some_list_but_not(&h, last, 0);
    insert_membership(&h, bogus, last).await;
    let (real_c, real_l) = *sandbox_memberships(&h)
        .iter()
        .find(|(_, l)| *l == first)
        .unwrap();
    delete_membership(&h, real_c, real_l).await;
    let stats = h.run_ok(Job::Reconcile).await;
    assert_eq!(stats["list_queries"], 2, "{stats}");
    assert_eq!(stats["memberships_added"], 1, "{stats}");
    assert_eq!(stats["memberships_removed"], 1, "{stats}");
    assert_eq!(local_memberships(&h).await, sandbox_memberships(&h));
    h.finish().await;
}
