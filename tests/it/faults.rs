//! The fault matrix (issue 11): a test per fault the pull, the push and the token
//! lifecycle must survive, against the real PostgreSQL and the sandbox over HTTP. Rows
//! proved in other modules are named, not repeated.
//!
//! What the tests assert, beyond "it did not crash": nothing lost (the store equals the
//! sandbox, every outbound row terminal or pending with a reason), nothing applied twice
//! (a write whose effect is unknown is judged again on a fresh read, never re-sent
//! blindly), the watermark never past unapplied data, and the next run converges.
//!
//! | fault | where | expected | test |
//! |---|---|---|---|
//! | 429 `throttled` storm | pull, push (import, PUT) | waited out with backoff, nothing lost | `a_429_storm_across_pull_and_push_is_waited_out_and_nothing_is_lost` |
//! | 429 longer than the retry bound | pull, push | run stops naming it; watermark kept; rows untouched | `a_429_storm_longer_than_the_retry_bound_stops_cleanly_and_the_next_run_finishes` |
//! | single 429/503/reset/cut body | pull | retried | `contacts_pull::throttling_5xx_resets_and_truncated_bodies_are_retried_and_recovered` |
//! | `quota_exceeded` | pull | stops at once, later runs paused | `contacts_pull::quota_exceeded_stops_the_run_at_once_and_pauses_later_runs` |
//! | 500/502/503/504 burst | pull, push | GETs retried; an import not re-sent until CC was read | `a_50x_burst_is_retried_on_reads_and_an_import_is_resent_only_after_a_read` (x4) |
//! | persistent 5xx | pull | bounded retries, fails | `contacts_pull::persistent_5xx_gives_up_after_a_bounded_number_of_retries` |
//! | connection reset | pull, push | GETs retried; a reset import judged again after a read | `connection_resets_are_retried_on_reads_and_a_reset_write_is_judged_again_on_a_read` |
//! | answer slower than the timeout | pull, push (import, PUT) | GETs retried; the write confirmed by reading, not sent twice | `answers_slower_than_the_timeout_are_retried_on_reads_and_a_write_is_confirmed_by_reading`, `a_put_answered_after_the_timeout_is_judged_again_on_a_read_and_not_sent_twice` |
//! | a lost import answer, then a list leave | push | the activity found in `GET /activities` and followed; nothing re-sent, the leave stands | `a_lost_import_answer_is_found_among_the_activities_and_a_list_left_since_is_not_joined_again` |
//! | a stop between an import and its commit | push | the same on the next push | `a_stop_between_an_import_and_its_commit_is_followed_on_the_next_push_and_not_resent` |
//! | a stop before the request left | push | the rows wait out the request timeout, then are sent once | `a_stop_before_the_request_left_waits_out_the_request_timeout_then_sends_once` |
//! | 200 whose body is not JSON | pull, PUT | GETs retried (bounded); a write not re-sent | `contacts_pull::pages_answered_200_with_a_body_that_is_not_json_are_retried_and_every_contact_stored`, `contacts_pull::a_page_that_never_decodes_fails_the_run_naming_the_endpoint_and_keeps_the_watermark`, `contacts_pull::a_write_whose_answer_does_not_decode_is_not_sent_again` |
//! | unknown extra fields | contacts, lists, activities | ignored | `unknown_extra_fields_in_contacts_lists_and_activities_answers_are_ignored` |
//! | contact without `contact_id` / `address` | pull | skipped, recorded, metric; the page applies | `contacts_pull::poison_contacts_are_skipped_and_recorded_and_the_rest_of_the_page_applies` |
//! | activity `failed` | push | retried after a read, then `failed` with the message | `push::a_failed_activity_is_retried_then_left_failed_with_the_message` |
//! | activity `timed_out` / `cancelled` | push | the same, the reason naming the state | `an_activity_ending_timed_out_…`, `an_activity_ending_cancelled_…` |
//! | activity 404 past retention | push | attempt counted; the next read shows the effect; not re-sent | `an_activity_forgotten_after_the_ten_day_retention_is_confirmed_by_reading_not_resent` |
//! | PostgreSQL connections cut (proxy) | pull, push | run fails naming its own error; pages whole; pool recovers | `postgresql_connections_cut_mid_pull_…`, `postgresql_connections_cut_mid_push_…` |
//! | PostgreSQL server restart (own cluster) | pull | the same | `a_real_postgresql_restart_mid_pull_…` (`--ignored`) |
//! | disk full (SQLSTATE 53100) | pull | fails naming it, page rolled back, next run converges | `an_insert_failing_with_disk_full_fails_the_run_naming_it_and_the_next_run_converges` |
//! | statement timeout | pull | the same | `a_statement_timeout_fails_the_run_naming_it_and_the_next_run_converges` |
//! | access token expiring mid-run | oauth | refreshed before use | `oauth::an_access_token_expiring_mid_run_is_refreshed_before_use_and_the_run_continues` |
//! | `invalid_grant` | oauth | that account paused, others go on | `oauth::invalid_grant_pauses_that_account_and_the_others_go_on` |
//! | CC clock ±10 min against ours | pull, push | nothing skipped (the watermark is CC's) | `constant_contacts_clock_ten_minutes_behind_ours_skips_nothing`, `…_ahead_of_ours_…` |

use std::sync::Arc;
use std::time::Duration;

use ccsync::config::Settings;
use ccsync::sandbox::{Fault, Sandbox, SandboxConfig};
use ccsync::sync::{self, Job, JobContext, Outcome, RunReport};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{
    assert_store_equals_sandbox, context, context_with, eventually, sandbox_max_updated_at,
    settings_for, watermark, Harness, PgProxy, TestDb,
};

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
    Harness::start(cfg, |s| {
        s.sync.poll_initial = Duration::from_millis(20);
        s.sync.poll_max = Duration::from_millis(80);
        adjust(s);
    })
    .await
}

/// `sync --job push` for the account on `ctx`: the pulls, then the push.
async fn cycle(h: &Harness, ctx: &JobContext) -> Vec<RunReport> {
    sync::run_cycle(ctx, &h.settings.accounts, &[Job::Push]).await
}

/// Runs a cycle; panics unless the pulls and the push all succeeded; the push's stats.
async fn push_ok(h: &Harness) -> Value {
    let reports = cycle(h, &h.ctx).await;
    let jobs: Vec<&str> = reports.iter().map(|r| r.job.as_str()).collect();
    assert_eq!(jobs, vec!["contacts", "unsubscribes", "lists", "push"]);
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

/// `state, reason, attempts` of an outbound row.
async fn row(h: &Harness, id: i64) -> (String, Option<String>, i32) {
    sqlx::query_as("SELECT state, reason, attempts FROM ccsync.outbound WHERE id = $1")
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

/// Waits (no longer than the row's own backoff) until a retried row is due again.
async fn until_due(h: &Harness, id: i64) {
    let due: DateTime<Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM ccsync.outbound WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    let wait = (due - Utc::now()).to_std().unwrap_or_default();
    assert!(wait <= Duration::from_secs(5), "backoff bounded: {wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
}

fn requests(h: &Harness, method: &str, path_ends: &str) -> Vec<ccsync::sandbox::RequestRecord> {
    h.sb.requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.ends_with(path_ends))
        .collect()
}

fn import_posts(h: &Harness) -> usize {
    requests(h, "POST", "/contacts_json_import").len()
}

/// Index in the request log of the `n`-th (0-based) request matching.
fn position(
    log: &[ccsync::sandbox::RequestRecord],
    n: usize,
    f: impl Fn(&ccsync::sandbox::RequestRecord) -> bool,
) -> usize {
    log.iter()
        .enumerate()
        .filter(|(_, r)| f(r))
        .nth(n)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no request #{n} of that kind"))
}

/// A generated contact that is subscribed and not deleted: id, email (lower-case).
fn subscriber(h: &Harness, skip: usize) -> (Uuid, String) {
    h.ctl
        .contact_ids()
        .into_iter()
        .filter_map(|id| h.ctl.contact(id).map(|c| (id, c)))
        .filter(|(_, c)| {
            c["email_address"]["permission_to_send"] != "unsubscribed" && c["deleted_at"].is_null()
        })
        .map(|(id, c)| {
            let e = c["email_address"]["address"]
                .as_str()
                .unwrap()
                .to_lowercase();
            (id, e)
        })
        .nth(skip)
        .expect("enough subscribers in the sandbox")
}

// ---- Throttling: a 429 storm across pull and push ----

#[tokio::test]
async fn a_429_storm_across_pull_and_push_is_waited_out_and_nothing_is_lost() {
    // Retries wait at least one rate-limit interval, so the storm below is what the client
    // meets: the sandbox's own limit on every quick request, and four 429s in a row (within
    // max_retries = 5) on the pages, the import and the PUT.
    let h = harness(1_100, Duration::from_millis(20), |s| {
        s.constant_contact.retry_initial = Duration::from_millis(100);
        s.constant_contact.retry_max = Duration::from_millis(400);
    })
    .await;
    h.sb.set_rate_limit(Some(10.0));
    for prefix in [
        "/v3/contacts",
        "/v3/activities/contacts_json_import",
        "/v3/contact_lists",
    ] {
        h.sb.inject(Fault::Status {
            path_prefix: prefix.into(),
            status: 429,
            times: 4,
        });
    }
    let lists = h.ctl.list_ids();
    let mut new_rows = Vec::new();
    for i in 0..10 {
        new_rows.push(
            h.queue(
                &format!("storm{i}@example.com"),
                json!({"first_name": format!("Storm{i}")}),
                &lists[..1],
            )
            .await,
        );
    }
    let (cid, email) = subscriber(&h, 0);
    let put_row = h
        .queue(&email, json!({"job_title": "Stormchaser"}), &[])
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["completed"].as_u64().unwrap(), 11, "{stats}");
    let throttled = h.sb.requests().iter().filter(|r| r.status == 429).count();
    assert!(throttled >= 12, "a storm: {throttled} answers 429");
    assert!(
        requests(&h, "POST", "/contacts_json_import")
            .iter()
            .filter(|r| r.status == 429)
            .count()
            >= 4,
        "the import met the storm"
    );
    assert_eq!(
        h.ctl.imports().len(),
        1,
        "a throttled POST did nothing; the one that got through ran once"
    );
    for id in new_rows.iter().chain([&put_row]) {
        let (state, reason, _) = row(&h, *id).await;
        assert_eq!(state, "completed", "row {id}: {reason:?}");
    }
    for i in 0..10 {
        let c = h
            .ctl
            .contact_by_email(&format!("storm{i}@example.com"))
            .unwrap();
        assert_eq!(c["first_name"], format!("Storm{i}"));
    }
    assert_eq!(h.ctl.contact(cid).unwrap()["job_title"], "Stormchaser");
    // One more quiet cycle: the store equals Constant Contact.
    h.sb.set_rate_limit(None);
    push_ok(&h).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

#[tokio::test]
async fn a_429_storm_longer_than_the_retry_bound_stops_cleanly_and_the_next_run_finishes() {
    let h = harness(600, Duration::from_millis(20), |_| {}).await;
    let attempts = h.settings.constant_contact.max_retries as usize + 1;
    h.run_ok(Job::Contacts).await;
    let before = watermark(&h.db.pool, "contacts").await;
    // A pull whose every attempt at a page is throttled: the run fails naming it, the
    // watermark stays.
    let late = h
        .ctl
        .create_contact("late-storm@example.com", Some("Late"), &[]);
    h.sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 429,
        times: attempts,
    });
    let r = h.run(Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("expected failure: {:?}", r.outcome)
    };
    assert!(err.to_lowercase().contains("throttled"), "{err}");
    assert_eq!(watermark(&h.db.pool, "contacts").await, before);
    // An import throttled on every attempt did nothing: its rows stay pending, untouched
    // (no attempt counted, no reason), and the next run sends them.
    let lists = h.ctl.list_ids();
    let id = h
        .queue(
            "storm-row@example.com",
            json!({"first_name": "S"}),
            &lists[..1],
        )
        .await;
    h.sb.inject(Fault::Status {
        path_prefix: "/v3/activities/contacts_json_import".into(),
        status: 429,
        times: attempts,
    });
    let stats = push_ok(&h).await;
    assert!(
        stats["stopped"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("throttled"),
        "{stats}"
    );
    assert_eq!(row(&h, id).await, ("pending".to_string(), None, 0));
    assert!(h.ctl.imports().is_empty(), "nothing was imported");
    assert_eq!(
        requests(&h, "POST", "/contacts_json_import").len(),
        attempts,
        "bounded"
    );
    let stats = push_ok(&h).await;
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(h.ctl.imports().len(), 1);
    assert_eq!(
        h.ctl.contact_by_email("storm-row@example.com").unwrap()["first_name"],
        "S"
    );
    let stored: Option<String> =
        sqlx::query_scalar("SELECT first_name FROM ccsync.contacts WHERE contact_id = $1")
            .bind(late)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("Late"),
        "the throttled pull lost nothing"
    );
    h.finish().await;
}

// ---- 5xx bursts: retried on reads, a write never re-sent before a read ----

/// A burst of `status` on the pages (as many as max_retries) is retried and every contact
/// stored; the same status on an import is not re-sent in that run: the row counts a failed
/// attempt with the status in its reason, and the next cycle reads before it sends again.
async fn burst_of(status: u16) {
    let h = harness(1_100, Duration::from_millis(20), |_| {}).await;
    let max_retries = h.settings.constant_contact.max_retries as usize;
    h.sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status,
        times: max_retries,
    });
    h.sb.inject(Fault::Status {
        path_prefix: "/v3/activities/contacts_json_import".into(),
        status,
        times: 1,
    });
    let lists = h.ctl.list_ids();
    let id = h
        .queue(
            &format!("burst{status}@example.com"),
            json!({"first_name": "Burst"}),
            &lists[..1],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.contacts").await,
        1_100,
        "every contact despite {max_retries} x {status}"
    );
    let pages = requests(&h, "GET", "/contacts");
    assert_eq!(
        pages.iter().filter(|r| r.status == status).count(),
        max_retries
    );
    assert_eq!(stats["retrying"], 1, "{stats}");
    let (state, reason, attempts) = row(&h, id).await;
    assert_eq!((state.as_str(), attempts), ("pending", 1));
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .contains(&status.to_string()),
        "the reason names the status: {reason:?}"
    );
    assert_eq!(import_posts(&h), 1, "not re-sent blindly within the run");
    until_due(&h, id).await;
    push_ok(&h).await;
    let (state, reason, _) = row(&h, id).await;
    assert_eq!(state, "completed", "{reason:?}");
    let log = h.sb.requests();
    let first_post = position(&log, 0, |r| r.path.ends_with("/contacts_json_import"));
    let second_post = position(&log, 1, |r| r.path.ends_with("/contacts_json_import"));
    assert!(
        log[first_post + 1..second_post]
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/contacts") && r.status == 200),
        "Constant Contact was read between the failed POST and the next one"
    );
    assert_eq!(h.ctl.imports().len(), 1, "the 5xx import had done nothing");
    assert_eq!(
        h.ctl
            .contact_by_email(&format!("burst{status}@example.com"))
            .unwrap()["first_name"],
        "Burst"
    );
    h.run_ok(Job::Contacts).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    h.finish().await;
}

#[tokio::test]
async fn a_500_burst_is_retried_on_reads_and_an_import_is_resent_only_after_a_read() {
    burst_of(500).await;
}

#[tokio::test]
async fn a_502_burst_is_retried_on_reads_and_an_import_is_resent_only_after_a_read() {
    burst_of(502).await;
}

#[tokio::test]
async fn a_503_burst_is_retried_on_reads_and_an_import_is_resent_only_after_a_read() {
    burst_of(503).await;
}

#[tokio::test]
async fn a_504_burst_is_retried_on_reads_and_an_import_is_resent_only_after_a_read() {
    burst_of(504).await;
}

// ---- Connection resets ----

#[tokio::test]
async fn connection_resets_are_retried_on_reads_and_a_reset_write_is_judged_again_on_a_read() {
    let h = harness(1_100, Duration::from_millis(20), |_| {}).await;
    let (cid, email) = subscriber(&h, 0);
    // Three resets in a row on the pages, one on the import (dropped before it is handled:
    // nothing done, but the client cannot know that).
    h.sb.inject(Fault::Reset {
        path_prefix: "/v3/contacts".into(),
        times: 3,
    });
    h.sb.inject(Fault::Reset {
        path_prefix: "/v3/activities/contacts_json_import".into(),
        times: 1,
    });
    let lists = h.ctl.list_ids();
    let new_row = h
        .queue(
            "reset@example.com",
            json!({"first_name": "Reset"}),
            &lists[..1],
        )
        .await;
    let put_row = h.queue(&email, json!({"job_title": "Resetter"}), &[]).await;
    let stats = push_ok(&h).await;
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 1_100);
    assert_eq!(
        requests(&h, "GET", "/contacts")
            .iter()
            .filter(|r| r.status == 0)
            .count(),
        3,
        "three resets, each retried"
    );
    let (state, reason, attempts) = row(&h, new_row).await;
    assert_eq!((state.as_str(), attempts), ("pending", 1), "{reason:?}");
    assert_eq!(
        import_posts(&h),
        1,
        "a reset import is not re-sent in the run"
    );
    // The PUT went through in this run (no fault left for it).
    assert_eq!(row(&h, put_row).await.0, "completed", "{stats}");
    until_due(&h, new_row).await;
    push_ok(&h).await;
    let (state, reason, _) = row(&h, new_row).await;
    assert_eq!(state, "completed", "{reason:?}");
    assert_eq!(
        h.ctl.imports().len(),
        1,
        "the reset import had done nothing"
    );
    assert_eq!(h.ctl.contact(cid).unwrap()["job_title"], "Resetter");
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

// ---- Answers slower than the request timeout ----

#[tokio::test]
async fn answers_slower_than_the_timeout_are_retried_on_reads_and_a_write_is_confirmed_by_reading()
{
    let h = harness(600, Duration::from_millis(20), |s| {
        s.constant_contact.request_timeout = Duration::from_secs(3);
    })
    .await;
    // Two pages held past the timeout (the request is dropped before it is handled), then
    // an import that is applied but whose answer comes too late.
    h.sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_secs(10),
        times: 2,
    });
    h.sb.inject(Fault::SlowAnswer {
        path_prefix: "/v3/activities/contacts_json_import".into(),
        method: None,
        delay: Duration::from_secs(10),
        times: 1,
    });
    let lists = h.ctl.list_ids();
    let id = h
        .queue(
            "slow@example.com",
            json!({"first_name": "Slow"}),
            &lists[..1],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 600);
    assert_eq!(stats["retrying"], 1, "{stats}");
    let (state, reason, _) = row(&h, id).await;
    assert_eq!(state, "pending");
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .contains("contacts_json_import")
            || reason.as_deref().unwrap_or("").contains("import"),
        "{reason:?}"
    );
    assert_eq!(import_posts(&h), 1, "never re-sent within the run");
    assert_eq!(h.ctl.imports().len(), 1, "the slow import did run");
    until_due(&h, id).await;
    let stats = push_ok(&h).await;
    let (state, reason, _) = row(&h, id).await;
    assert_eq!(state, "completed", "{reason:?} {stats}");
    assert_eq!(
        import_posts(&h),
        1,
        "the read showed the effect: nothing sent a second time"
    );
    assert_eq!(
        h.ctl.contact_by_email("slow@example.com").unwrap()["first_name"],
        "Slow"
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

#[tokio::test]
async fn a_put_answered_after_the_timeout_is_judged_again_on_a_read_and_not_sent_twice() {
    let h = harness(20, Duration::from_millis(20), |s| {
        s.constant_contact.request_timeout = Duration::from_secs(3);
    })
    .await;
    // The contact is in the store before the row is queued (a row queued before its
    // contact was ever pulled yields to Constant Contact's values).
    h.run_ok(Job::Contacts).await;
    let (cid, email) = subscriber(&h, 0);
    // The PUT is applied; its answer comes after the client gave up.
    h.sb.inject(Fault::SlowAnswer {
        path_prefix: format!("/v3/contacts/{cid}"),
        method: Some("PUT".into()),
        delay: Duration::from_secs(10),
        times: 1,
    });
    let id = h.queue(&email, json!({"job_title": "Patient"}), &[]).await;
    push_ok(&h).await;
    let (state, reason, attempts) = row(&h, id).await;
    assert_eq!((state.as_str(), attempts), ("pending", 1), "{reason:?}");
    assert!(
        reason.as_deref().unwrap_or("").contains("PUT"),
        "{reason:?}"
    );
    assert_eq!(
        requests(&h, "PUT", &cid.to_string()).len(),
        1,
        "not re-sent in the run"
    );
    assert_eq!(
        h.ctl.contact(cid).unwrap()["job_title"],
        "Patient",
        "the PUT took effect"
    );
    until_due(&h, id).await;
    push_ok(&h).await;
    let (state, reason, _) = row(&h, id).await;
    assert_eq!(state, "completed", "{reason:?}");
    assert_eq!(
        requests(&h, "PUT", &cid.to_string()).len(),
        1,
        "the read showed the value there: no second PUT"
    );
    let log = h.sb.requests();
    let put = position(&log, 0, |r| r.method == "PUT");
    assert!(
        log[put + 1..].iter().any(|r| r.method == "GET"
            && r.status == 200
            && (r.path.ends_with("/contacts") || r.path.ends_with(&cid.to_string()))),
        "Constant Contact was read again after the lost answer"
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

// ---- A request whose answer is lost, or never recorded ----

/// A contact in the store and a list it is not on.
async fn contact_off_a_list(h: &Harness) -> (Uuid, String, Uuid) {
    h.run_ok(Job::Contacts).await;
    let (cid, email) = subscriber(h, 0);
    let on = h.ctl.memberships(cid);
    let list = h
        .ctl
        .list_ids()
        .into_iter()
        .find(|l| !on.contains(l))
        .expect("a list the contact is not on");
    (cid, email, list)
}

/// After the lost answer, the subscriber leaves the list the import added it to (the
/// worst case: leaving does not move `updated_at`, so no pull sees it). Sending the row
/// again would put the contact back on that list; the next push finds the activity in
/// `GET /activities` instead, follows it, and sends nothing.
#[tokio::test]
async fn a_lost_import_answer_is_found_among_the_activities_and_a_list_left_since_is_not_joined_again(
) {
    let h = harness(30, Duration::from_millis(20), |s| {
        s.constant_contact.request_timeout = Duration::from_secs(3);
    })
    .await;
    let (cid, email, list) = contact_off_a_list(&h).await;
    h.sb.inject(Fault::SlowAnswer {
        path_prefix: "/v3/activities/contacts_json_import".into(),
        method: None,
        delay: Duration::from_secs(10),
        times: 1,
    });
    let id = h
        .queue(&email, json!({"first_name": "Lost"}), &[list])
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["answers_lost"], 1, "{stats}");
    assert_eq!(row(&h, id).await.0, "pending");
    assert!(h.ctl.memberships(cid).contains(&list), "the import did run");
    h.ctl.leave_list(cid, list);
    until_due(&h, id).await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["recovery"]["adopted"], 1, "{stats}");
    assert_eq!(stats["recovery"]["requests"], 1, "{stats}");
    assert_eq!(import_posts(&h), 1, "never sent a second time");
    assert!(
        h.ctl.re_adds_after_leave().is_empty(),
        "re-added after the leave: {:?}",
        h.ctl.re_adds_after_leave()
    );
    assert!(!h.ctl.memberships(cid).contains(&list));
    let (state, reason, _) = row(&h, id).await;
    assert_ne!(state, "pending", "{reason:?}");
    let followed: Option<String> =
        sqlx::query_scalar("SELECT activity_id FROM ccsync.outbound WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT activity_id FROM ccsync.import_activities")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(
        followed.into_iter().collect::<Vec<_>>(),
        recorded,
        "the row follows the one import"
    );
    assert_eq!(
        h.ctl.contact(cid).unwrap()["first_name"],
        "Lost",
        "the first import's change stands"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.send_attempts").await,
        0,
        "nothing left unresolved"
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

/// ccsync stops (the run's future dropped, as a SIGKILL leaves it) after Constant Contact
/// ran the import and before the answer was committed: the rows are still `pending` with
/// their send attempt, and the next push follows the activity instead of sending again.
#[tokio::test]
async fn a_stop_between_an_import_and_its_commit_is_followed_on_the_next_push_and_not_resent() {
    let h = harness(30, Duration::from_millis(20), |s| {
        s.constant_contact.request_timeout = Duration::from_secs(60);
    })
    .await;
    let (cid, email, list) = contact_off_a_list(&h).await;
    h.sb.inject(Fault::SlowAnswer {
        path_prefix: "/v3/activities/contacts_json_import".into(),
        method: None,
        delay: Duration::from_secs(30),
        times: 1,
    });
    let id = h
        .queue(&email, json!({"first_name": "Killed"}), &[list])
        .await;
    tokio::select! {
        r = cycle(&h, &h.ctx) => panic!("the cycle ended before the stop: {r:?}"),
        _ = eventually("the import to run", Duration::from_secs(60), || async {
            h.ctl.memberships(cid).contains(&list).then_some(())
        }) => {}
    }
    let (state, reason, attempts) = row(&h, id).await;
    assert_eq!((state.as_str(), attempts), ("pending", 0));
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .contains("looks for the activity"),
        "a pending row says why it waits: {reason:?}"
    );
    h.ctl.leave_list(cid, list);
    let stats = push_ok(&h).await;
    assert_eq!(stats["recovery"]["adopted"], 1, "{stats}");
    assert_eq!(import_posts(&h), 1, "never sent a second time");
    assert!(h.ctl.re_adds_after_leave().is_empty());
    assert!(!h.ctl.memberships(cid).contains(&list));
    assert_ne!(row(&h, id).await.0, "pending");
    assert_eq!(h.ctl.contact(cid).unwrap()["first_name"], "Killed");
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

/// A stop after the send attempt was committed and before the request left: no activity
/// exists. (The state such a stop leaves is made with the store's own `sends::begin`: no
/// stop can be placed in that gap from outside.) While the request could still be in
/// progress the rows wait; after the request timeout they are planned again and sent once.
#[tokio::test]
async fn a_stop_before_the_request_left_waits_out_the_request_timeout_then_sends_once() {
    let h = harness(30, Duration::from_millis(20), |s| {
        s.constant_contact.request_timeout = Duration::from_secs(4);
    })
    .await;
    let (cid, email, list) = contact_off_a_list(&h).await;
    let id = h
        .queue(&email, json!({"first_name": "Early"}), &[list])
        .await;
    {
        let mut conn = h.db.pool.acquire().await.unwrap();
        ccsync::store::sends::begin(
            &mut conn,
            "default",
            &ccsync::store::sends::NewAttempt {
                kind: "contacts_json_import",
                list_ids: &[list],
                row_ids: &[id],
                reasons: &[None],
                body_bytes: 0,
                run_id: Uuid::new_v4(),
            },
        )
        .await
        .unwrap();
    }
    let stats = push_ok(&h).await;
    let waited = stats["recovery"]["waiting"].as_u64().unwrap_or(0);
    let released = stats["recovery"]["released"].as_u64().unwrap_or(0);
    assert_eq!(
        (waited + released, stats["recovery"]["adopted"].as_u64()),
        (1, Some(0)),
        "{stats}"
    );
    if waited == 1 {
        assert_eq!(row(&h, id).await.0, "pending", "waits, not sent yet");
        assert!(h.ctl.imports().is_empty());
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let stats = push_ok(&h).await;
            if stats["recovery"]["released"] == 1 {
                break;
            }
            assert_eq!(stats["recovery"]["waiting"], 1, "{stats}");
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(row(&h, id).await.0, "completed");
    assert_eq!(h.ctl.imports().len(), 1, "sent once");
    assert!(h.ctl.memberships(cid).contains(&list));
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    h.finish().await;
}

// ---- Unknown extra fields ----

#[tokio::test]
async fn unknown_extra_fields_in_contacts_lists_and_activities_answers_are_ignored() {
    let h = harness(700, Duration::from_millis(20), |_| {}).await;
    let extra = json!({
        "loyalty_tier": {"level": 3, "since": "2020-01-01"},
        "sms_channel": [{"address": "+15550100"}],
        "zz_unknown_flag": true,
    });
    for prefix in ["/v3/contacts", "/v3/contact_lists", "/v3/activities"] {
        h.sb.inject(Fault::ExtraFields {
            path_prefix: prefix.into(),
            fields: extra.clone(),
            times: 1_000,
        });
    }
    let lists = h.ctl.list_ids();
    let id = h
        .queue(
            "extra@example.com",
            json!({"first_name": "Extra"}),
            &lists[..1],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(row(&h, id).await.0, "completed");
    // The fields were really in the answers the client decoded.
    let client = h.ctx.api.account("default");
    let url = client
        .contacts_url(&ccsync::ctct::client::ContactsQuery {
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    let page: Value = client.get_json("GET /contacts", url).await.unwrap();
    assert_eq!(page["zz_unknown_flag"], true, "{page}");
    assert_eq!(page["contacts"][0]["loyalty_tier"]["level"], 3, "{page}");
    assert!(h
        .sb
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path.contains("/activities/")));
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.poison_records").await,
        0,
        "nothing counted as poison"
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    let stored_lists = h.count("SELECT count(*) FROM ccsync.contact_lists").await;
    assert_eq!(stored_lists as usize, h.ctl.list_ids().len());
    h.finish().await;
}

// ---- Activities that end badly, or are forgotten ----

async fn activity_ending(state: &str) {
    let h = harness(10, Duration::from_millis(20), |s| {
        s.sync.max_push_attempts = 2;
    })
    .await;
    h.sb.inject(Fault::ActivityOutcome {
        state: state.into(),
        times: 2,
        errors: vec![],
    });
    let lists = h.ctl.list_ids();
    let email = format!("{state}@example.com");
    let id = h
        .queue(&email, json!({"first_name": "Ends"}), &lists[..1])
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["retrying"], 1, "{stats}");
    let (st, reason, attempts) = row(&h, id).await;
    assert_eq!((st.as_str(), attempts), ("pending", 1));
    let reason = reason.unwrap_or_default();
    assert!(reason.contains(&format!("ended {state}")), "{reason}");
    until_due(&h, id).await;
    push_ok(&h).await;
    let (st, reason, attempts) = row(&h, id).await;
    assert_eq!((st.as_str(), attempts), ("failed", 2), "a terminal state");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains(&format!("ended {state}")), "{reason}");
    assert!(reason.contains("failed after 2 attempts"), "{reason}");
    // The second import went out only after Constant Contact was read again.
    let log = h.sb.requests();
    let first = position(&log, 0, |r| r.path.ends_with("/contacts_json_import"));
    let second = position(&log, 1, |r| r.path.ends_with("/contacts_json_import"));
    assert!(log[first + 1..second]
        .iter()
        .any(|r| r.method == "GET" && r.path.ends_with("/contacts")));
    assert!(
        h.ctl.contact_by_email(&email).is_none(),
        "it changed nothing"
    );
    // A dead letter: never sent again.
    push_ok(&h).await;
    assert_eq!(import_posts(&h), 2);
    h.finish().await;
}

#[tokio::test]
async fn an_activity_ending_timed_out_is_retried_after_a_read_then_left_failed_with_the_state() {
    activity_ending("timed_out").await;
}

#[tokio::test]
async fn an_activity_ending_cancelled_is_retried_after_a_read_then_left_failed_with_the_state() {
    activity_ending("cancelled").await;
}

#[tokio::test]
async fn an_activity_forgotten_after_the_ten_day_retention_is_confirmed_by_reading_not_resent() {
    // The import runs for 5 s: the clock jump below lands while it is in flight.
    let h = harness(10, Duration::from_secs(5), |_| {}).await;
    let lists = h.ctl.list_ids();
    let id = h
        .queue(
            "forgot@example.com",
            json!({"first_name": "Forgot"}),
            &lists[..1],
        )
        .await;
    let run = cycle(&h, &h.ctx);
    let jump = async {
        eventually(
            "the import is submitted",
            Duration::from_secs(60),
            || async {
                (h.count("SELECT count(*) FROM ccsync.import_activities")
                    .await
                    == 1)
                    .then_some(())
            },
        )
        .await;
        // Eleven days later (Constant Contact's clock): the import has long ended and its
        // id answers 404.
        h.sb.advance_clock(chrono::Duration::days(11));
    };
    let (reports, ()) = tokio::join!(run, jump);
    assert!(
        reports.iter().all(|r| !r.outcome.is_failure()),
        "{reports:?}"
    );
    assert!(
        requests(&h, "GET", "")
            .iter()
            .any(|r| r.path.contains("/activities/") && r.status == 404),
        "the activity answered 404"
    );
    let (st, reason, attempts) = row(&h, id).await;
    assert_eq!((st.as_str(), attempts), ("pending", 1));
    assert!(
        reason.as_deref().unwrap_or("").contains("404"),
        "{reason:?}"
    );
    // Constant Contact did apply the import it no longer reports on.
    eventually("the import applied", Duration::from_secs(60), || async {
        h.ctl.contact_by_email("forgot@example.com").map(|_| ())
    })
    .await;
    until_due(&h, id).await;
    push_ok(&h).await;
    let (st, reason, _) = row(&h, id).await;
    assert_eq!(st, "completed", "{reason:?}");
    assert_eq!(
        import_posts(&h),
        1,
        "the read showed the import had run: not sent again"
    );
    assert_eq!(
        h.ctl.contact_by_email("forgot@example.com").unwrap()["first_name"],
        "Forgot"
    );
    h.finish().await;
}

// ---- PostgreSQL faults ----

/// A database reached through a proxy the test controls, a sandbox, and a context whose
/// pool and run-lock connections both go through the proxy.
struct Proxied {
    db: TestDb,
    proxy: PgProxy,
    sb: Sandbox,
    settings: Arc<Settings>,
    ctx: JobContext,
}

async fn proxied(contacts: usize) -> Proxied {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(&db.url).await;
    let url = proxy.url_for(&db.url);
    let sb = crate::helpers::sandbox(contacts).await;
    let seed = sb.default_account().seed_refresh_token();
    let mut s = settings_for(&sb, &url, &[("default", seed)]);
    s.database.connect_timeout = Duration::from_secs(5);
    let settings = Arc::new(s);
    let pool = ccsync::store::connect(&settings.database)
        .await
        .expect("pool through the proxy");
    let ctx = context(&settings, &pool);
    Proxied {
        db,
        proxy,
        sb,
        settings,
        ctx,
    }
}

/// Pages hold whole: the contacts stored are a whole number of pages or all of them, and
/// each stored contact has exactly the memberships the sandbox gave it.
async fn assert_no_half_page(pool: &PgPool, sb: &Sandbox, page: i64) {
    let ctl = sb.default_account();
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT contact_id FROM ccsync.contacts")
        .fetch_all(pool)
        .await
        .unwrap();
    let n = stored.len() as i64;
    assert!(
        n % page == 0 || n as usize == ctl.contact_ids().len(),
        "{n} contacts: not a whole number of pages"
    );
    for id in stored {
        let mut local: Vec<Uuid> =
            sqlx::query_scalar("SELECT list_id FROM ccsync.list_memberships WHERE contact_id = $1")
                .bind(id)
                .fetch_all(pool)
                .await
                .unwrap();
        local.sort();
        let mut remote = ctl.memberships(id);
        remote.sort();
        assert_eq!(local, remote, "{id}: memberships applied with the contact");
    }
}

#[tokio::test]
async fn postgresql_connections_cut_mid_pull_fail_the_run_cleanly_and_the_next_run_converges() {
    let p = proxied(2_600).await;
    // Slow pages, so the cut lands mid-run whatever the machine's load.
    p.sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(300),
        times: 1_000,
    });
    let run = sync::run_guarded(&p.ctx, &p.settings.accounts[0], Job::Contacts);
    let cut = async {
        eventually("page 1 committed", Duration::from_secs(60), || async {
            (p.db.count("SELECT count(*) FROM ccsync.contacts").await >= 500).then_some(())
        })
        .await;
        // Every connection through the proxy dies at once and reconnecting fails for a
        // while (the outage's length is the fault, not an assertion).
        p.proxy.refuse(true);
        p.proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.proxy.refuse(false);
    };
    let (report, ()) = tokio::join!(run, cut);
    match &report.outcome {
        // The run's own error leads, not only the bookkeeping that failed after it.
        Outcome::Failed(err) => assert!(
            !err.starts_with("recording the run end"),
            "the run's own error is named: {err}"
        ),
        Outcome::Succeeded(stats) => assert_eq!(stats["created"], 2_600, "{stats}"),
        Outcome::Skipped => panic!("skipped"),
    }
    // Nothing half-applied, the watermark not past what is stored.
    assert_no_half_page(&p.db.pool, &p.sb, 500).await;
    let wm = watermark(&p.db.pool, "contacts").await;
    let stored = p.db.count("SELECT count(*) FROM ccsync.contacts").await;
    if stored < 2_600 {
        assert_eq!(wm, None, "no watermark before the last page");
    }
    // The pool recovers: the next run through the same pool converges, on new connections.
    p.sb.clear_faults();
    let accepted = p.proxy.accepted();
    let r = sync::run_guarded(&p.ctx, &p.settings.accounts[0], Job::Contacts).await;
    assert!(
        matches!(r.outcome, Outcome::Succeeded(_)),
        "{:?}",
        r.outcome
    );
    assert!(p.proxy.accepted() > accepted, "it reconnected");
    assert_store_equals_sandbox(&p.db.pool, &p.sb).await;
    assert_eq!(
        watermark(&p.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&p.sb))
    );
    // The interrupted run is not left open for ever.
    let open =
        p.db.count("SELECT count(*) FROM ccsync.sync_runs WHERE finished_at IS NULL")
            .await;
    assert_eq!(open, 0, "the interrupted run was closed");
    drop(p.proxy);
    p.sb.shutdown();
    p.db.cleanup().await;
}

#[tokio::test]
async fn postgresql_connections_cut_mid_push_leave_every_row_pending_or_terminal_and_converge() {
    let p = proxied(50).await;
    let ctl = p.sb.default_account();
    p.sb.set_import_processing(Duration::from_secs(2));
    let lists = ctl.list_ids();
    for i in 0..20 {
        sqlx::query("INSERT INTO ccsync.outbound (email, op, fields, list_ids) VALUES ($1, 'upsert', $2, $3)")
            .bind(format!("cut{i}@example.com"))
            .bind(json!({"first_name": format!("Cut{i}")}))
            .bind(&lists[..1])
            .execute(&p.db.pool)
            .await
            .unwrap();
    }
    let mut settings = (*p.settings).clone();
    settings.sync.poll_initial = Duration::from_millis(20);
    settings.sync.poll_max = Duration::from_millis(80);
    let settings = Arc::new(settings);
    let ctx = context_with(&settings, &p.ctx.pool, CancellationToken::new(), false);
    let run = sync::run_cycle(&ctx, &settings.accounts, &[Job::Push]);
    let cut = async {
        eventually(
            "the import is submitted",
            Duration::from_secs(60),
            || async {
                (p.db
                    .count("SELECT count(*) FROM ccsync.import_activities")
                    .await
                    >= 1)
                    .then_some(())
            },
        )
        .await;
        p.proxy.refuse(true);
        p.proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.proxy.refuse(false);
    };
    let (reports, ()) = tokio::join!(run, cut);
    let push = reports.iter().find(|r| r.job == Job::Push).unwrap();
    assert!(
        push.outcome.is_failure(),
        "the cut hit the run (its run-lock connection at least): {:?}",
        push.outcome
    );
    // Every row is pending or submitted with its activity recorded: nothing half-done.
    let odd =
        p.db.count(
            "SELECT count(*) FROM ccsync.outbound WHERE NOT (state = 'pending'
               OR (state = 'submitted' AND activity_id IS NOT NULL))",
        )
        .await;
    assert_eq!(odd, 0);
    // The next cycle, through the same pool: everything completes, one import in all.
    let mut done = false;
    for _ in 0..5 {
        let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Push]).await;
        assert!(
            reports.iter().all(|r| !r.outcome.is_failure()),
            "{reports:?}"
        );
        if p.db
            .count("SELECT count(*) FROM ccsync.outbound WHERE state <> 'completed'")
            .await
            == 0
        {
            done = true;
            break;
        }
    }
    assert!(done, "every row completed");
    assert_eq!(
        ctl.imports().len(),
        1,
        "the import was polled again, not re-sent"
    );
    for i in 0..20 {
        let c = ctl
            .contact_by_email(&format!("cut{i}@example.com"))
            .unwrap();
        assert_eq!(c["first_name"], format!("Cut{i}"));
    }
    drop(p.proxy);
    p.sb.shutdown();
    p.db.cleanup().await;
}

/// Every connection in `pool` answers its own query: none was left out of step with its
/// server by work dropped mid-statement.
async fn assert_pool_in_step(pool: &PgPool) {
    // Held all at once, so each connection the pool has is asked once.
    let mut held = Vec::new();
    for _ in 0..pool.size().max(1) {
        held.push(pool.acquire().await.unwrap());
    }
    for (i, conn) in held.iter_mut().enumerate() {
        let asked = i as i32 + 1_000;
        let answer: Result<i32, sqlx::Error> = sqlx::query_scalar("SELECT $1::int4")
            .bind(asked)
            .fetch_one(&mut **conn)
            .await;
        assert_eq!(
            answer.ok(),
            Some(asked),
            "pooled connection {i} of {} answered out of step",
            held.len()
        );
    }
}

/// Makes every insert into `ccsync.contacts` fail with `sqlstate` (and `message`) while
/// `ccsync_fault.on` is true.
async fn install_insert_fault(pool: &PgPool, body: &str) {
    for sql in [
        "CREATE TABLE public.ccsync_fault (on_ boolean NOT NULL)".to_string(),
        "INSERT INTO public.ccsync_fault VALUES (true)".to_string(),
        format!(
            "CREATE FUNCTION public.ccsync_fault_fn() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT on_ FROM public.ccsync_fault) THEN {body} END IF;
               RETURN NEW;
             END $$"
        ),
        "CREATE TRIGGER ccsync_fault BEFORE INSERT ON ccsync.contacts
           FOR EACH ROW EXECUTE FUNCTION public.ccsync_fault_fn()"
            .to_string(),
    ] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
}

async fn fault_off(pool: &PgPool) {
    sqlx::query("UPDATE public.ccsync_fault SET on_ = false")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_insert_failing_with_disk_full_fails_the_run_naming_it_and_the_next_run_converges() {
    let h = Harness::new(1_100).await;
    install_insert_fault(
        &h.db.pool,
        "RAISE EXCEPTION 'could not extend file \"base/1/2\": No space left on device'
           USING ERRCODE = '53100';",
    )
    .await;
    let r = h.run(Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("expected failure: {:?}", r.outcome)
    };
    assert!(
        err.contains("No space left on device"),
        "names the cause: {err}"
    );
    let (outcome, error): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM ccsync.sync_runs WHERE job = 'contacts'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
    assert!(error.unwrap_or_default().contains("No space left"));
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 0);
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.list_memberships")
            .await,
        0,
        "the page rolled back whole"
    );
    assert_eq!(watermark(&h.db.pool, "contacts").await, None);
    // The disk has room again: the next run converges.
    fault_off(&h.db.pool).await;
    h.run_ok(Job::Contacts).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    h.finish().await;
}

#[tokio::test]
async fn a_statement_timeout_fails_the_run_naming_it_and_the_next_run_converges() {
    let h = Harness::new(1_100).await;
    // A statement timeout for every new session of this database (ccsync's pool below
    // connects after it), and inserts that stall past it while the fault is on.
    sqlx::query(&format!(
        "ALTER DATABASE {} SET statement_timeout = '500ms'",
        h.db.name
    ))
    .execute(&h.db.pool)
    .await
    .unwrap();
    install_insert_fault(&h.db.pool, "PERFORM pg_sleep(0.05);").await;
    let pool = ccsync::store::connect(&h.settings.database).await.unwrap();
    let ctx = context(&h.settings, &pool);
    let r = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("expected failure: {:?}", r.outcome)
    };
    assert!(err.contains("statement timeout"), "names the cause: {err}");
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 0);
    assert_eq!(watermark(&h.db.pool, "contacts").await, None);
    fault_off(&h.db.pool).await;
    let r = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(
        matches!(r.outcome, Outcome::Succeeded(_)),
        "{:?}",
        r.outcome
    );
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    pool.close().await;
    h.finish().await;
}

// ---- Constant Contact's clock against ours ----

/// Constant Contact's clock `skew` away from this host's from the start (every contact
/// created on its clock): pulls and pushes keep working, the watermark is Constant
/// Contact's, and edits, opt-outs and list leaves made after a pull all reach the store.
async fn skewed(skew: chrono::Duration) {
    let cfg = SandboxConfig {
        contacts: 0,
        import_processing: Duration::from_millis(20),
        ..SandboxConfig::default()
    };
    let h = Harness::start(cfg, |s| {
        s.sync.poll_initial = Duration::from_millis(20);
        s.sync.poll_max = Duration::from_millis(80);
    })
    .await;
    h.sb.set_clock_offset(skew);
    let lists = h.ctl.list_ids();
    let ids: Vec<Uuid> = (0..30)
        .map(|i| {
            h.ctl
                .create_contact(&format!("skew{i}@example.com"), Some("Before"), &lists[..2])
        })
        .collect();
    push_ok(&h).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    let wm = watermark(&h.db.pool, "contacts").await.unwrap();
    assert_eq!(wm, sandbox_max_updated_at(&h.sb), "the watermark is CC's");
    // Right after the pull, on CC's clock: an edit, an opt-out, a list leave, a delete.
    h.ctl
        .update_contact(ids[1], |c| c["first_name"] = json!("After"));
    h.ctl.unsubscribe(ids[2], Some("skewed"));
    h.ctl.leave_list(ids[3], lists[0]);
    h.ctl.delete_contact(ids[4]);
    // And a local write queued now.
    let row_id = h
        .queue(
            "skew-new@example.com",
            json!({"first_name": "New"}),
            &lists[..1],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(row(&h, row_id).await.0, "completed");
    // The lists pull sees leaves only through a reconcile in this sandbox mode; run one.
    h.run_ok(Job::Reconcile).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    assert!(
        watermark(&h.db.pool, "contacts").await.unwrap() >= wm,
        "never backwards"
    );
    assert!(h.ctl.resubscriptions().is_empty());
    h.finish().await;
}

#[tokio::test]
async fn constant_contacts_clock_ten_minutes_behind_ours_skips_nothing() {
    skewed(chrono::Duration::minutes(-10)).await;
}

#[tokio::test]
async fn constant_contacts_clock_ten_minutes_ahead_of_ours_skips_nothing() {
    skewed(chrono::Duration::minutes(10)).await;
}

// ---- A real PostgreSQL server restart (its own throwaway cluster) ----

/// A PostgreSQL cluster of its own in a temporary directory, on a free port; stopped and
/// removed on drop.
struct OwnCluster {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

/// The newest `/usr/lib/postgresql/*/bin` holding `initdb`.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let mut bins: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    bins.sort();
    bins.pop().map(|(_, b)| b)
}

/// Runs `program args` as the `postgres` OS user when we are root (PostgreSQL refuses to
/// run as root), as ourselves otherwise.
fn as_postgres(program: &std::path::Path, args: &[&str]) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    cmd.args(args);
    cmd
}

impl OwnCluster {
    fn start(bin: std::path::PathBuf) -> OwnCluster {
        let dir = std::env::temp_dir().join(format!("ccsync-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = OwnCluster { bin, dir, port };
        let data = c.dir.join("data");
        let ok = as_postgres(
            &c.bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
        assert!(ok, "initdb");
        c.pg_ctl(&["start"]);
        c
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.display()
        );
        let mut args = vec!["-D", data.to_str().unwrap(), "-w", "-t", "60"];
        let log = self.dir.join("log");
        args.extend(["-l", log.to_str().unwrap(), "-o", &opts, "-m", "fast"]);
        args.extend(action);
        let ok = as_postgres(&self.bin.join("pg_ctl"), &args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl {action:?} (log: {})", log.display());
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"],
        )
        .stdout(std::process::Stdio::null())
        .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
#[ignore = "starts a PostgreSQL cluster of its own (initdb, pg_ctl); run with --ignored"]
async fn a_real_postgresql_restart_mid_pull_fails_the_run_cleanly_and_the_next_run_converges() {
    let Some(bin) = postgres_bin() else {
        eprintln!("skipped: no initdb under /usr/lib/postgresql/*/bin");
        return;
    };
    let cluster = tokio::task::spawn_blocking(move || OwnCluster::start(bin))
        .await
        .unwrap();
    let admin = cluster.url("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE ccsync_restart")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let url = cluster.url("ccsync_restart");
    let sb = crate::helpers::sandbox(2_600).await;
    let seed = sb.default_account().seed_refresh_token();
    let mut s = settings_for(&sb, &url, &[("default", seed)]);
    s.database.connect_timeout = Duration::from_secs(30);
    let settings = Arc::new(s);
    let pool = ccsync::store::connect(&settings.database).await.unwrap();
    ccsync::store::migrate(&pool).await.unwrap();
    let ctx = context(&settings, &pool);
    // A separate pool for the test's own reads, which the restart also cuts.
    let count = |sql: &'static str| {
        let url = url.clone();
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .ok()?;
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut c)
                .await
                .ok()
        }
    };
    sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(300),
        times: 1_000,
    });
    let cluster = Arc::new(cluster);
    let run = sync::run_guarded(&ctx, &settings.accounts[0], Job::Contacts);
    let restart = async {
        eventually("page 1 committed", Duration::from_secs(60), || async {
            count("SELECT count(*) FROM ccsync.contacts")
                .await
                .filter(|n| *n >= 500)
                .map(|_| ())
        })
        .await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.pg_ctl(&["restart"]))
            .await
            .unwrap();
    };
    let (report, ()) = tokio::join!(run, restart);
    match &report.outcome {
        Outcome::Failed(err) => assert!(
            !err.starts_with("recording the run end"),
            "the run's own error is named: {err}"
        ),
        Outcome::Succeeded(stats) => assert_eq!(stats["created"], 2_600, "{stats}"),
        Outcome::Skipped => panic!("skipped"),
    }
    let fresh = PgPool::connect(&url).await.unwrap();
    assert_no_half_page(&fresh, &sb, 500).await;
    let stored = count("SELECT count(*) FROM ccsync.contacts").await.unwrap();
    if stored < 2_600 {
        assert_eq!(watermark(&fresh, "contacts").await, None);
    }
    sb.clear_faults();
    let r = sync::run_guarded(&ctx, &settings.accounts[0], Job::Contacts).await;
    assert!(
        matches!(r.outcome, Outcome::Succeeded(_)),
        "{:?}",
        r.outcome
    );
    assert_store_equals_sandbox(&fresh, &sb).await;
    assert_eq!(
        watermark(&fresh, "contacts").await,
        Some(sandbox_max_updated_at(&sb))
    );
    fresh.close().await;
    pool.close().await;
    sb.shutdown();
}

#[tokio::test]
async fn a_run_whose_lock_connection_dies_stops_and_the_next_run_converges() {
    let h = harness(3_000, Duration::from_millis(200), |s| {
        s.sync.page_size = 100
    })
    .await;
    // Slow pages: without the lock check this pull would run on for many seconds.
    h.sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(300),
        times: 1_000,
    });
    // Slow statements too: each page's `COPY` into `changes` waits on a trigger, so the
    // lock is likely lost while a page is mid-`COPY`. A run dropped there returned its
    // connection to the pool one answer out of step (sqlx 0.8), and the next query on it
    // read the answer of the one before.
    for sql in [
        "CREATE FUNCTION public.slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$",
        "CREATE TRIGGER slow_changes AFTER INSERT ON ccsync.changes
           FOR EACH STATEMENT EXECUTE FUNCTION public.slow_statement()",
    ] {
        sqlx::query(sql).execute(&h.db.pool).await.unwrap();
    }
    let run = h.run(Job::Contacts);
    let kill_lock = async {
        eventually("page 1 committed", Duration::from_secs(60), || async {
            (h.db.count("SELECT count(*) FROM ccsync.contacts").await >= 100).then_some(())
        })
        .await;
        // The backend holding the run's advisory lock dies (as a failover or an idle
        // timeout would kill it); the lock is gone with it.
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
        assert_eq!(killed, vec![true], "one run lock was held");
    };
    let (report, ()) = tokio::join!(run, kill_lock);
    match &report.outcome {
        Outcome::Failed(err) => assert!(err.contains("run lock was lost"), "{err}"),
        other => panic!("the run went on without its lock: {other:?}"),
    }
    assert!(
        h.db.count("SELECT count(*) FROM ccsync.contacts").await < 3_000,
        "the run stopped before the end"
    );
    assert_pool_in_step(&h.db.pool).await;
    sqlx::query("DROP TRIGGER slow_changes ON ccsync.changes")
        .execute(&h.db.pool)
        .await
        .unwrap();
    h.sb.clear_faults();
    h.run_ok(Job::Contacts).await;
    assert_store_equals_sandbox(&h.db.pool, &h.sb).await;
    let open =
        h.db.count("SELECT count(*) FROM ccsync.sync_runs WHERE finished_at IS NULL")
            .await;
    assert_eq!(open, 0, "the stopped run was closed");
    h.sb.shutdown();
    h.db.cleanup().await;
}
