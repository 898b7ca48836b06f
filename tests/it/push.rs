//! The push (issue 4): outbound queue → guard → bulk JSON import → activity polling, never
//! re-subscribing anyone, primary wins per field, nothing lost.

use std::time::Duration;

use ccsync::config::Settings;
use ccsync::sandbox::{Fault, SandboxConfig};
use ccsync::sync::{self, Job, JobContext, Outcome, RunReport};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{context_with, Harness};

/// A harness whose sandbox processes imports in `processing`, with fast polling.
async fn harness(
    contacts: usize,
    processing: Duration,
    adjust: impl FnOnce(&mut Settings),
) -> Harness {
    let cfg = SandboxConfig {
        contacts,
        import_processing: processing,
        ..SandboxConfig::default()
    };
    Harness::start(cfg, |settings| {
        settings.sync.poll_initial = Duration::from_millis(20);
        settings.sync.poll_max = Duration::from_millis(80);
        adjust(settings);
    })
    .await
}

fn ctx_with(h: &Harness, cancel: CancellationToken, dry_run: bool) -> JobContext {
    context_with(&h.settings, &h.db.pool, cancel, dry_run)
}

/// `sync --job push` for the account: the pulls first, then the push.
async fn push_cycle(h: &Harness, ctx: &JobContext) -> Vec<RunReport> {
    sync::run_cycle(ctx, &h.settings.accounts, &[Job::Push]).await
}

/// Runs the cycle and returns the push's stats; panics unless every job succeeded.
async fn push_ok(h: &Harness) -> Value {
    let reports = push_cycle(h, &h.ctx).await;
    let jobs: Vec<&str> = reports.iter().map(|r| r.job.as_str()).collect();
    assert_eq!(
        jobs,
        vec!["contacts", "unsubscribes", "lists", "push"],
        "a push runs after the account's pulls"
    );
    for r in &reports {
        assert!(
            matches!(r.outcome, Outcome::Succeeded(_)),
            "{} did not succeed: {:?}",
            r.job,
            r.outcome
        );
    }
    match &reports[3].outcome {
        Outcome::Succeeded(s) => s.clone(),
        _ => unreachable!(),
    }
}

#[derive(Debug)]
struct Row {
    state: String,
    reason: Option<String>,
    attempts: i32,
    activity_id: Option<String>,
}

async fn row(h: &Harness, id: i64) -> Row {
    let (state, reason, attempts, activity_id): (String, Option<String>, i32, Option<String>) =
        sqlx::query_as(
            "SELECT state, reason, attempts, activity_id FROM ccsync.outbound WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    Row {
        state,
        reason,
        attempts,
        activity_id,
    }
}

/// Every import body the sandbox received, as text.
fn import_bodies(h: &Harness) -> Vec<String> {
    h.sb.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/contacts_json_import"))
        .map(|r| r.body.as_ref().map(|b| b.to_string()).unwrap_or_default())
        .collect()
}

fn writes(h: &Harness) -> usize {
    h.sb.requests().iter().filter(|r| r.method != "GET").count()
}

/// Moves the contact's `updated_at` to the sandbox's now.
fn touch(h: &Harness, id: Uuid) {
    h.ctl.set_updated_at(id, h.sb.now());
}

/// A generated contact that is not unsubscribed, with its email and lists.
fn subscriber(h: &Harness) -> (Uuid, String, Vec<Uuid>) {
    for id in h.ctl.contact_ids() {
        let c = h.ctl.contact(id).unwrap();
        if c["email_address"]["permission_to_send"] != "unsubscribed" && c["deleted_at"].is_null() {
            let email = c["email_address"]["address"]
                .as_str()
                .unwrap()
                .to_lowercase();
            return (id, email, h.ctl.memberships(id));
        }
    }
    panic!("no subscriber in the sandbox");
}

#[tokio::test]
async fn a_new_contact_is_pushed_and_created_with_implicit_permission() {
    let h = harness(20, Duration::from_millis(30), |_| {}).await;
    let lists = h.ctl.list_ids();
    let id = h
        .queue(
            "New.Person@Example.com",
            json!({"first_name": "New", "job_title": "Tester", "home_phone": "555-0100"}),
            &lists[..2],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["batches_submitted"], 1, "{stats}");
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(stats["in_flight_left"], 0, "{stats}");
    let r = row(&h, id).await;
    assert_eq!(r.state, "completed", "{r:?}");
    let activity = r.activity_id.expect("activity recorded on the row");
    let (state, finished, rows, bytes): (String, bool, i32, Option<i32>) = sqlx::query_as(
        "SELECT state, finished_at IS NOT NULL, row_count, body_bytes
         FROM ccsync.import_activities WHERE activity_id = $1",
    )
    .bind(&activity)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), finished, rows), ("completed", true, 1));
    assert!(bytes.unwrap() > 0);
    let c = h
        .ctl
        .contact_by_email("new.person@example.com")
        .expect("created in Constant Contact");
    assert_eq!(c["email_address"]["permission_to_send"], "implicit");
    assert_eq!(c["email_address"]["opt_in_source"], "Account");
    assert_eq!(c["first_name"], "New");
    assert_eq!(c["job_title"], "Tester");
    let cid = Uuid::parse_str(c["contact_id"].as_str().unwrap()).unwrap();
    let mut on = h.ctl.memberships(cid);
    on.sort();
    let mut want = lists[..2].to_vec();
    want.sort();
    assert_eq!(on, want);
    // The body was the JSON import shape, list ids included.
    let bodies = import_bodies(&h);
    assert_eq!(bodies.len(), 1);
    let b: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(b["import_data"][0]["email"], "new.person@example.com");
    assert_eq!(b["list_ids"].as_array().unwrap().len(), 2);
    // The next cycle pulls it back; nothing is pushed again.
    let stats = push_ok(&h).await;
    assert_eq!(stats["rows_considered"], 0, "{stats}");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.contacts WHERE email = 'new.person@example.com'")
            .await,
        1
    );
    h.finish().await;
}

#[tokio::test]
async fn an_unsubscribed_contact_is_skipped_and_never_sent_in_any_import() {
    let h = harness(30, Duration::from_millis(30), |_| {}).await;
    let lists = h.ctl.list_ids();
    let (a_id, a_email, _) = subscriber(&h);
    // Queued before the opt-out reached the store.
    h.run_ok(Job::Contacts).await;
    let early = h
        .queue(&a_email, json!({"first_name": "Again"}), &lists[..1])
        .await;
    h.ctl.unsubscribe(a_id, Some("no more"));
    // And one queued after the store knows: the guard alone must refuse it.
    let other = h.queue("fresh@example.com", json!({}), &lists[..1]).await;
    push_ok(&h).await;
    let late = h
        .queue(
            &a_email.to_uppercase(),
            json!({"last_name": "X"}),
            &lists[..1],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["skipped"], 1, "{stats}");
    for id in [early, late] {
        let r = row(&h, id).await;
        assert_eq!(r.state, "skipped", "{r:?}");
        assert!(
            r.reason.unwrap().to_lowercase().contains("unsubscribed"),
            "the reason says why"
        );
    }
    assert_eq!(row(&h, other).await.state, "completed");
    // The sandbox never received the address in any import.
    let bodies = import_bodies(&h);
    assert!(!bodies.is_empty());
    for b in &bodies {
        assert!(!b.to_lowercase().contains(&a_email), "{b}");
    }
    for imp in h.ctl.imports() {
        assert!(!imp.to_string().to_lowercase().contains(&a_email));
    }
    let c = h.ctl.contact(a_id).unwrap();
    assert_eq!(c["email_address"]["permission_to_send"], "unsubscribed");
    // The refusal is logged.
    let logged = h
        .count(&format!(
            "SELECT count(*) FROM ccsync.changes WHERE kind = 'skipped' AND email = '{a_email}'"
        ))
        .await;
    assert!(logged >= 1);
    h.finish().await;
}

#[tokio::test]
async fn a_list_removal_after_the_row_was_queued_is_not_undone() {
    let h = harness(30, Duration::from_millis(30), |_| {}).await;
    let lists = h.ctl.list_ids();
    let (cid, email, _) = subscriber(&h);
    let (left, kept) = (lists[0], lists[1]);
    h.ctl.join_list(cid, left);
    h.ctl.leave_list(cid, kept);
    // The sandbox's membership edits move no clock (whether the real service moves
    // `updated_at` is unconfirmed); a move makes them visible to the incremental pull.
    touch(&h, cid);
    push_ok(&h).await;
    let id = h.queue(&email, json!({}), &[left, kept]).await;
    let only_left = h.queue("second-row@example.com", json!({}), &[kept]).await;
    let only = h.queue(&email, json!({}), &[left]).await;
    // The subscriber leaves `left` in Constant Contact after the row was queued.
    h.ctl.leave_list(cid, left);
    touch(&h, cid);
    let stats = push_ok(&h).await;
    assert_eq!(stats["conflicts"], 2, "{stats}");
    let r = row(&h, id).await;
    assert_eq!(r.state, "completed", "{r:?}");
    assert!(r.reason.unwrap().contains(&left.to_string()));
    let on = h.ctl.memberships(cid);
    assert!(!on.contains(&left), "the removal was undone: {on:?}");
    assert!(on.contains(&kept), "the other list is still added");
    assert_eq!(row(&h, only_left).await.state, "completed");
    let conflicts = h
        .count("SELECT count(*) FROM ccsync.changes WHERE kind = 'conflict' AND field = 'list_ids' AND origin = 'local'")
        .await;
    assert_eq!(conflicts, 2);
    // A row that only added the list they left has nothing left: skipped, with the reason.
    let r = row(&h, only).await;
    assert_eq!(r.state, "skipped", "{r:?}");
    assert!(r.reason.unwrap().contains("not re-added"));
    // A row queued after the removal was pulled is the application's new decision: it stands.
    let again = h.queue(&email, json!({}), &[left]).await;
    push_ok(&h).await;
    assert_eq!(row(&h, again).await.state, "completed");
    h.finish().await;
}

#[tokio::test]
async fn a_field_changed_in_constant_contact_after_the_local_edit_is_not_overwritten() {
    let h = harness(30, Duration::from_millis(30), |_| {}).await;
    let lists = h.ctl.list_ids();
    let (cid, email, _) = subscriber(&h);
    h.ctl.join_list(cid, lists[0]);
    push_ok(&h).await;
    let id = h
        .queue(
            &email,
            json!({"first_name": "Local", "job_title": "Local job"}),
            &lists[..1],
        )
        .await;
    h.ctl
        .update_contact(cid, |v| v["first_name"] = json!("Remote"));
    let stats = push_ok(&h).await;
    assert_eq!(stats["conflicts"], 1, "{stats}");
    let c = h.ctl.contact(cid).unwrap();
    assert_eq!(c["first_name"], "Remote", "primary wins");
    assert_eq!(c["job_title"], "Local job", "the untouched field is pushed");
    let r = row(&h, id).await;
    assert_eq!(r.state, "completed");
    assert!(r.reason.unwrap().contains("first_name"));
    let (old, new): (Value, Value) = sqlx::query_as(
        "SELECT old_value, new_value FROM ccsync.changes
         WHERE kind = 'conflict' AND field = 'first_name' AND origin = 'local'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(old, json!("Remote"));
    assert_eq!(new["value"], "Local");
    for b in import_bodies(&h) {
        assert!(!b.contains("\"Local\""), "{b}");
    }
    h.finish().await;
}

#[tokio::test]
async fn thirty_thousand_rows_are_cut_into_imports_under_the_byte_limit() {
    let h = harness(10, Duration::from_millis(30), |_| {}).await;
    let lists = h.ctl.list_ids();
    let limit = h.settings.sync.import_max_bytes;
    h.run_ok(Job::Contacts).await;
    sqlx::query(
        "INSERT INTO ccsync.outbound (email, fields, list_ids)
         SELECT format('bulk%s@example.com', g),
                jsonb_build_object('first_name', format('First%s', g), 'last_name', repeat('l', 50),
                                   'street', repeat('s', 255), 'city', repeat('c', 50)),
                $1
         FROM generate_series(1, 30000) g",
    )
    .bind(&lists[..1])
    .execute(&h.db.pool)
    .await
    .unwrap();
    let stats = push_ok(&h).await;
    let batches = stats["batches_submitted"].as_u64().unwrap();
    assert!(batches >= 3, "{stats}");
    assert_eq!(stats["rows_submitted"], 30_000);
    assert_eq!(stats["completed"], 30_000, "{stats}");
    let sizes: Vec<i32> =
        sqlx::query_scalar("SELECT body_bytes FROM ccsync.import_activities ORDER BY submitted_at")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(sizes.len() as u64, batches);
    eprintln!("30,000 rows: {batches} imports of {sizes:?} bytes (limit {limit})");
    for s in &sizes {
        assert!(*s as usize <= limit, "{s} > {limit}");
    }
    let bodies = import_bodies(&h);
    assert_eq!(bodies.len() as u64, batches);
    let mut items = 0;
    for b in &bodies {
        assert!(b.len() <= limit, "{} > {limit}", b.len());
        let v: Value = serde_json::from_str(b).unwrap();
        items += v["import_data"].as_array().unwrap().len();
    }
    assert_eq!(items, 30_000);
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.outbound WHERE state = 'completed'")
            .await,
        30_000
    );
    assert!(h.ctl.contacts_count() >= 30_000);
    assert!(h.ctl.contact_by_email("bulk29999@example.com").is_some());
    h.finish().await;
}

#[tokio::test]
async fn a_failed_activity_is_retried_then_left_failed_with_the_message() {
    let h = harness(10, Duration::from_millis(20), |s| {
        s.sync.max_push_attempts = 2;
    })
    .await;
    let lists = h.ctl.list_ids();
    h.sb.inject(Fault::ActivityOutcome {
        state: "failed".into(),
        times: 5,
        errors: vec!["Import failed: the sandbox refuses".into()],
    });
    let id = h
        .queue("retry@example.com", json!({"first_name": "R"}), &lists[..1])
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["retrying"], 1, "{stats}");
    let r = row(&h, id).await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1), "{r:?}");
    assert!(r.reason.unwrap().contains("the sandbox refuses"));
    // Not due yet: nothing is sent.
    let due: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM ccsync.outbound WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    assert!(wait <= Duration::from_secs(1), "backoff bounded: {wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["failed"], 1, "{stats}");
    let r = row(&h, id).await;
    assert_eq!((r.state.as_str(), r.attempts), ("failed", 2), "{r:?}");
    let reason = r.reason.unwrap();
    assert!(reason.contains("the sandbox refuses"), "{reason}");
    assert!(reason.contains("failed after 2 attempts"), "{reason}");
    assert_eq!(import_bodies(&h).len(), 2);
    // A dead letter, visible in status; never sent again.
    let mut conn = h.db.pool.acquire().await.unwrap();
    let by_state = ccsync::store::status::outbound_by_state(&mut conn)
        .await
        .unwrap();
    assert!(by_state.contains(&("default".to_string(), "failed".to_string(), 1)));
    drop(conn);
    push_ok(&h).await;
    assert_eq!(import_bodies(&h).len(), 2);
    let acts = h
        .count("SELECT count(*) FROM ccsync.import_activities WHERE state = 'failed' AND finished_at IS NOT NULL")
        .await;
    assert_eq!(acts, 2);
    h.finish().await;
}

#[tokio::test]
async fn a_restart_mid_poll_polls_the_same_activity_and_does_not_resend() {
    // The import takes 5 s: the cancel below lands while it is processing, even on a busy
    // machine.
    let h = harness(10, Duration::from_secs(5), |_| {}).await;
    let lists = h.ctl.list_ids();
    let id = h
        .queue("slow@example.com", json!({"first_name": "S"}), &lists[..1])
        .await;
    let cancel = CancellationToken::new();
    let first = ctx_with(&h, cancel.clone(), false);
    let settings = h.settings.clone();
    let run =
        tokio::spawn(
            async move { sync::run_cycle(&first, &settings.accounts, &[Job::Push]).await },
        );
    // Wait for the import to be accepted, then "crash" (cancel) mid-poll.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let submitted = h
                .count("SELECT count(*) FROM ccsync.import_activities")
                .await;
            if submitted == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the import is submitted");
    cancel.cancel();
    let reports = run.await.unwrap();
    let push = reports.iter().find(|r| r.job == Job::Push).unwrap();
    assert!(push.outcome.is_failure(), "{:?}", push.outcome);
    let r = row(&h, id).await;
    assert_eq!(r.state, "submitted", "{r:?}");
    let activity = r.activity_id.clone().unwrap();
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.import_activities WHERE finished_at IS NULL")
            .await,
        1
    );
    // A new process: the same activity is polled to its end, nothing is sent again.
    let second = ctx_with(&h, CancellationToken::new(), false);
    let reports = push_cycle(&h, &second).await;
    assert!(
        reports.iter().all(|r| !r.outcome.is_failure()),
        "{reports:?}"
    );
    let r = row(&h, id).await;
    assert_eq!(r.state, "completed", "{r:?}");
    assert_eq!(r.activity_id.unwrap(), activity, "the same activity");
    assert_eq!(import_bodies(&h).len(), 1, "not re-sent");
    let polled: Vec<String> =
        h.sb.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/activities/"))
            .map(|r| r.path.clone())
            .collect();
    assert!(!polled.is_empty());
    assert!(polled.iter().all(|p| p.ends_with(&activity)), "{polled:?}");
    assert!(h.ctl.contact_by_email("slow@example.com").is_some());
    h.finish().await;
}

async fn snapshot(h: &Harness) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "outbound",
        "changes",
        "contacts",
        "list_memberships",
        "contact_lists",
        "import_activities",
        "sync_runs",
        "sync_state",
    ] {
        let s: Option<String> = sqlx::query_scalar(&format!(
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM ccsync.{t} t"
        ))
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        out.push(format!("{t}:{}", s.unwrap_or_default()));
    }
    out
}

#[tokio::test]
async fn dry_run_plans_and_writes_nothing() {
    let h = harness(30, Duration::from_millis(30), |_| {}).await;
    let lists = h.ctl.list_ids();
    let (uid, u_email, _) = subscriber(&h);
    h.ctl.unsubscribe(uid, None);
    push_ok(&h).await;
    h.queue("dry@example.com", json!({"first_name": "D"}), &lists[..1])
        .await;
    h.queue(&u_email, json!({"first_name": "U"}), &lists[..1])
        .await;
    h.queue("bad@example.com", json!({"nickname": "x"}), &lists[..1])
        .await;
    // Something for the pull to (not) write, too.
    let (cid, _, _) = subscriber(&h);
    h.ctl
        .update_contact(cid, |v| v["last_name"] = json!("Changed"));
    let before = snapshot(&h).await;
    let writes_before = writes(&h);
    let requests_before = h.sb.requests().len();
    let dry = ctx_with(&h, CancellationToken::new(), true);
    let reports = push_cycle(&h, &dry).await;
    assert_eq!(reports.len(), 4, "{reports:?}");
    let stats = match &reports[3].outcome {
        Outcome::Succeeded(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(stats["dry_run"], true);
    let plan = &stats["plan"];
    assert_eq!(plan["batches"].as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(plan["batches"][0]["contacts"], 1);
    assert_eq!(plan["skipped"][0]["email"], u_email.as_str());
    assert!(plan["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("unsubscribed"));
    assert!(plan["failed"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("nickname"));
    assert_eq!(snapshot(&h).await, before, "dry run wrote to the store");
    assert_eq!(writes(&h), writes_before, "dry run sent a write request");
    assert!(h.sb.requests().len() > requests_before, "it did read");
    // The same cycle for real does what the plan said.
    let stats = push_ok(&h).await;
    assert_eq!(stats["batches_submitted"], 1);
    assert_eq!(stats["skipped"], 1);
    assert_eq!(stats["failed_invalid"], 1);
    h.finish().await;
}

#[tokio::test]
async fn a_push_alone_is_refused_without_a_fresh_pull() {
    let h = harness(5, Duration::from_millis(30), |_| {}).await;
    let r = h.run(Job::Push).await;
    match r.outcome {
        Outcome::Failed(e) => assert!(e.contains("sync --job push"), "{e}"),
        other => panic!("{other:?}"),
    }
    push_ok(&h).await;
    // A second push without a pull in between is refused too.
    let r = h.run(Job::Push).await;
    assert!(r.outcome.is_failure());
    h.finish().await;
}

#[tokio::test]
async fn row_errors_of_a_completed_import_map_back_to_their_rows() {
    let h = harness(10, Duration::from_millis(20), |_| {}).await;
    let lists = h.ctl.list_ids();
    let retired = h
        .ctl
        .create_custom_field("retired_field", "Retired field", "string");
    let ok1 = h
        .queue("first@example.com", json!({"first_name": "A"}), &lists[..1])
        .await;
    let bad = h
        .queue(
            "second@example.com",
            json!({"cf:retired_field": "x"}),
            &lists[..1],
        )
        .await;
    let ok2 = h
        .queue("third@example.com", json!({"first_name": "C"}), &lists[..1])
        .await;
    // The guard knows the field from the catalogue the pulls read; Constant Contact deletes
    // it before the import, which then refuses that row, naming it.
    for job in [Job::Contacts, Job::Unsubscribes, Job::Lists] {
        h.run_ok(job).await;
    }
    h.ctl.delete_custom_field(retired);
    let stats = h.run_ok(Job::Push).await;
    assert_eq!(stats["batches_submitted"], 1, "{stats}");
    assert_eq!(stats["completed"], 2, "{stats}");
    assert_eq!(stats["failed"], 1, "{stats}");
    let r = row(&h, bad).await;
    assert_eq!(r.state, "failed", "{r:?}");
    assert!(
        r.reason
            .unwrap()
            .contains("unknown custom field 'retired_field'"),
        "the API's message is kept"
    );
    for id in [ok1, ok2] {
        assert_eq!(row(&h, id).await.state, "completed");
    }
    let errors: Value = sqlx::query_scalar("SELECT activity_errors FROM ccsync.import_activities")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(errors.as_array().unwrap().len(), 1, "{errors}");
    h.finish().await;
}

/// The window between the POST and the commit that records it: the import ran, its answer
/// was lost. The rows stay in the queue and the next run sends them again (safe: the same
/// values twice); nothing is lost and nothing is marked done without an activity.
#[tokio::test]
async fn a_lost_answer_to_the_import_is_followed_later_not_resent_and_loses_nothing() {
    let h = harness(10, Duration::from_millis(20), |_| {}).await;
    let lists = h.ctl.list_ids();
    h.sb.inject(Fault::TruncateBody {
        path_prefix: "/activities/contacts_json_import".into(),
        times: 1,
    });
    let id = h
        .queue("lost@example.com", json!({"first_name": "L"}), &lists[..1])
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["retrying"], 1, "{stats}");
    let r = row(&h, id).await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1), "{r:?}");
    assert_eq!(r.activity_id, None, "no activity was recorded");
    assert_eq!(h.ctl.imports().len(), 1, "the import did run");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.import_activities")
            .await,
        0
    );
    let due: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM ccsync.outbound WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    tokio::time::sleep((due - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    push_ok(&h).await;
    let r = row(&h, id).await;
    assert_eq!(r.state, "completed", "{r:?}");
    // The next push found the activity among Constant Contact's activities and followed
    // it (polled, read back): nothing was sent a second time.
    assert_eq!(h.ctl.imports().len(), 1, "followed, not sent again");
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.outbound WHERE state <> 'completed'")
            .await,
        0
    );
    let c = h.ctl.contact_by_email("lost@example.com").unwrap();
    assert_eq!(c["first_name"], "L");
    assert_eq!(c["email_address"]["permission_to_send"], "implicit");
    h.finish().await;
}

#[tokio::test]
async fn rows_of_one_address_reach_constant_contact_in_order_across_retries() {
    // A retry backoff (poll_max) long enough for a cycle to run in between, even on a busy
    // machine.
    let h = harness(10, Duration::from_millis(20), |s| {
        s.sync.poll_max = Duration::from_secs(5);
    })
    .await;
    let lists = h.ctl.list_ids();
    h.sb.inject(Fault::ActivityOutcome {
        state: "failed".into(),
        times: 1,
        errors: vec!["transient".into()],
    });
    let older = h
        .queue(
            "order@example.com",
            json!({"first_name": "Older"}),
            &lists[..1],
        )
        .await;
    push_ok(&h).await;
    assert_eq!(row(&h, older).await.state, "pending");
    let newer = h
        .queue(
            "order@example.com",
            json!({"first_name": "Newer"}),
            &lists[..1],
        )
        .await;
    // The older row waits for its retry: the newer one waits behind it.
    let stats = push_ok(&h).await;
    assert_eq!(stats["rows_considered"], 0, "{stats}");
    assert_eq!(row(&h, newer).await.state, "pending");
    let due: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM ccsync.outbound WHERE id = $1")
            .bind(older)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    tokio::time::sleep((due - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    push_ok(&h).await;
    for id in [older, newer] {
        assert_eq!(row(&h, id).await.state, "completed");
    }
    let c = h.ctl.contact_by_email("order@example.com").unwrap();
    assert_eq!(c["first_name"], "Newer", "the newer local value wins");
    h.finish().await;
}
