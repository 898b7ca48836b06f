//! The contacts pull (issue: foundation): pagination, idempotency, watermark rules, the stale
//! guard, faults, quota, token rotation.

use ccsync::sandbox::Fault;
use ccsync::sync::{Job, Outcome};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::helpers::{sandbox_max_updated_at, watermark, Harness};

async fn first_name(h: &Harness, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT first_name FROM ccsync.contacts WHERE contact_id = $1")
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

fn contacts_requests(h: &Harness) -> usize {
    h.sb.requests()
        .iter()
        .filter(|r| r.path.ends_with("/contacts"))
        .count()
}

#[tokio::test]
async fn initial_pull_mirrors_every_contact_across_pages_with_memberships() {
    let h = Harness::new(1_200).await;
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["pages"], 3, "{stats}");
    assert_eq!(stats["created"], 1_200);
    assert_eq!(
        stats["contacts_count"], 1_200,
        "include_count read on the first page"
    );
    let stored = h.count("SELECT count(*) FROM ccsync.contacts").await;
    assert_eq!(stored, 1_200);
    let sandbox_memberships: usize = h
        .ctl
        .contact_ids()
        .iter()
        .map(|id| h.ctl.memberships(*id).len())
        .sum();
    let local = h
        .count("SELECT count(*) FROM ccsync.list_memberships")
        .await;
    assert_eq!(local as usize, sandbox_memberships);
    assert!(local > 0);
    // Emails are stored lower-case; unsubscribed contacts keep their permission.
    let upper = h
        .count("SELECT count(*) FROM ccsync.contacts WHERE email <> lower(email)")
        .await;
    assert_eq!(upper, 0);
    // Every request asked for the includes and status=all, with the configured limit.
    let reqs = h.sb.requests();
    let first = reqs.iter().find(|r| r.path.ends_with("/contacts")).unwrap();
    for needle in [
        "status=all",
        "limit=500",
        "include_count=true",
        "list_memberships",
        "custom_fields",
        "taggings",
    ] {
        assert!(
            first.query.contains(needle),
            "{needle} missing in {}",
            first.query
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn watermark_is_constant_contacts_largest_updated_at_and_runs_are_recorded() {
    let h = Harness::new(600).await;
    h.run_ok(Job::Contacts).await;
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    let (outcome, stats): (String, serde_json::Value) = sqlx::query_as(
        "SELECT outcome, stats FROM ccsync.sync_runs WHERE job = 'contacts' AND finished_at IS NOT NULL",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(outcome, "succeeded");
    for key in [
        "pages",
        "seen",
        "created",
        "updated",
        "unchanged",
        "deleted",
        "api_requests",
        "duration_ms",
    ] {
        assert!(stats.get(key).is_some(), "stats lack {key}: {stats}");
    }
    let used = h
        .count("SELECT coalesce(sum(requests), 0)::bigint FROM ccsync.api_usage")
        .await;
    assert_eq!(used, 2, "two pages, each request counted per UTC day");
    h.finish().await;
}

#[tokio::test]
async fn second_run_without_changes_writes_no_changes_rows() {
    let h = Harness::new(700).await;
    h.run_ok(Job::Contacts).await;
    let before = h.count("SELECT count(*) FROM ccsync.changes").await;
    // A full re-read sees every contact again: still nothing to write.
    let mut ctx = h.new_context();
    ctx.full = true;
    let r = ccsync::sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    let Outcome::Succeeded(stats) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(stats["seen"], 700);
    assert_eq!(stats["unchanged"], 700);
    let synced_before: i64 = h.count("SELECT count(*) FROM ccsync.contacts").await;
    h.run_ok(Job::Contacts).await;
    assert_eq!(h.count("SELECT count(*) FROM ccsync.changes").await, before);
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.contacts").await,
        synced_before
    );
    h.finish().await;
}

#[tokio::test]
async fn incremental_run_reads_only_recent_changes_and_logs_field_diffs() {
    let h = Harness::new(900).await;
    h.run_ok(Job::Contacts).await;
    let ids = h.ctl.contact_ids();
    let target = ids[17];
    // Move the sandbox clock forward so the edit lands well past the look-back window.
    h.sb.advance_clock(chrono::Duration::hours(1));
    h.ctl
        .update_contact(target, |c| c["first_name"] = serde_json::json!("Zelda"));
    let stats = h.run_ok(Job::Contacts).await;
    // Only the edit and whatever sat inside the look-back window before it are re-read.
    assert!(stats["seen"].as_u64().unwrap() <= 3, "{stats}");
    assert_eq!(stats["updated"], 1);
    assert_eq!(first_name(&h, target).await.as_deref(), Some("Zelda"));
    let (kind, field, new): (String, String, serde_json::Value) = sqlx::query_as(
        "SELECT kind, field, new_value FROM ccsync.changes WHERE contact_id = $1 AND kind <> 'created'",
    )
    .bind(target)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!((kind.as_str(), field.as_str()), ("updated", "first_name"));
    assert_eq!(new, serde_json::json!("Zelda"));
    h.finish().await;
}

#[tokio::test]
async fn boundary_tie_with_the_previous_maximum_is_picked_up_by_the_next_run() {
    let h = Harness::new(300).await;
    h.run_ok(Job::Contacts).await;
    let wm = watermark(&h.db.pool, "contacts").await.unwrap();
    // Another contact changes and lands exactly on the old maximum (a tie, which a strict
    // `updated_after = watermark` would skip).
    let target = h
        .ctl
        .contact_ids()
        .into_iter()
        .find(|id| {
            h.ctl.contact(*id).and_then(|c| {
                c["updated_at"]
                    .as_str()
                    .and_then(ccsync::ctct::dto::parse_datetime)
            }) != Some(wm)
        })
        .unwrap();
    h.ctl
        .update_contact(target, |c| c["first_name"] = serde_json::json!("Tied"));
    h.ctl.set_updated_at(target, wm);
    h.run_ok(Job::Contacts).await;
    assert_eq!(first_name(&h, target).await.as_deref(), Some("Tied"));
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(wm),
        "the watermark did not move"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_run_failing_after_page_two_keeps_the_watermark_and_the_next_run_converges() {
    let h = Harness::new(1_300).await;
    h.sb.inject(Fault::FailAfter {
        path_prefix: "/v3/contacts".into(),
        ok: 2,
        status: 500,
    });
    let r = h.run(Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("expected failure: {:?}", r.outcome)
    };
    assert!(err.contains("page 3"), "{err}");
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        None,
        "no watermark before the last page"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.contacts").await,
        1_000,
        "pages 1-2 committed whole"
    );
    let (outcome, error): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM ccsync.sync_runs WHERE job = 'contacts'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
    assert!(
        error.unwrap_or_default().contains("500"),
        "the error chain is kept"
    );
    h.sb.clear_faults();
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["created"], 300);
    assert_eq!(stats["unchanged"], 1_000);
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 1_300);
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    h.finish().await;
}

#[tokio::test]
async fn throttling_5xx_resets_and_truncated_bodies_are_retried_and_recovered() {
    let h = Harness::new(1_100).await;
    // Four failures in a row on the first page: within the bounded retries (max_retries = 5).
    h.sb.inject(Fault::Throttle { times: 1 });
    h.sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 503,
        times: 1,
    });
    h.sb.inject(Fault::TruncateBody {
        path_prefix: "/v3/contacts".into(),
        times: 1,
    });
    h.sb.inject(Fault::Reset {
        path_prefix: "/v3/contacts".into(),
        times: 1,
    });
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["created"], 1_100);
    let statuses: Vec<u16> = h.sb.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&429) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert!(
        stats["api_requests"].as_u64().unwrap() > stats["pages"].as_u64().unwrap(),
        "retries counted"
    );
    h.finish().await;
}

#[tokio::test]
async fn throttled_answers_space_the_requests_wider_until_they_stop() {
    // ccsync paces 10 % faster than the API allows: to a limiter that counts arrivals and
    // remembers lateness (the sandbox's GCRA, burst 1, 10 % tolerance) that is what requests
    // delayed by a busy machine look like. Paced as configured, every second request of a
    // busy stretch would be answered `throttled`.
    let h = Harness::with(10, |s| {
        s.constant_contact.requests_per_second = 22.0;
        s.constant_contact.max_retries = 20;
    })
    .await;
    h.sb.set_rate_limit(Some(20.0));
    let client = h.ctx.api.account("default");
    let url = client
        .contacts_url(&ccsync::ctct::ContactsQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    // Four requesters, so the pacer always has a request waiting (a busy stretch).
    const EACH: usize = 40;
    let requesters = (0..4).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            for _ in 0..EACH {
                client.contacts_page(url.clone()).await.unwrap();
            }
        })
    });
    for r in futures_util::future::join_all(requesters).await {
        r.unwrap();
    }
    let statuses: Vec<u16> =
        h.sb.requests()
            .iter()
            .filter(|r| r.path.ends_with("/contacts"))
            .map(|r| r.status)
            .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 4 * EACH, "{statuses:?}");
    // The first throttled answers widen the spacing (2 % each) until it is past the
    // API's interval; the second half of the run then meets few.
    let (first, second) = statuses.split_at(statuses.len() / 2);
    let throttled = |part: &[u16]| part.iter().filter(|s| **s == 429).count();
    assert!(
        throttled(first) >= 1,
        "the pacer was not too fast: {statuses:?}"
    );
    assert!(
        throttled(second) * 5 <= second.len(),
        "{} of the last {} requests throttled: {statuses:?}",
        throttled(second),
        second.len()
    );
    h.finish().await;
}

#[tokio::test]
async fn persistent_5xx_gives_up_after_a_bounded_number_of_retries() {
    let h = Harness::new(10).await;
    h.sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 502,
        times: 1_000,
    });
    let r = h.run(Job::Contacts).await;
    assert!(r.outcome.is_failure());
    let max_retries = h.settings.constant_contact.max_retries as usize;
    assert_eq!(contacts_requests(&h), max_retries + 1);
    h.finish().await;
}

#[tokio::test]
async fn quota_exceeded_stops_the_run_at_once_and_pauses_later_runs() {
    let h = Harness::new(50).await;
    h.sb.set_daily_quota(Some(0));
    let r = h.run(Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(err.contains("quota"), "{err}");
    assert_eq!(contacts_requests(&h), 1, "no retry storm");
    // Every later run (any process: the pause is in PostgreSQL) sends nothing until 00:00 UTC.
    let ctx = h.new_context();
    let r = ccsync::sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(r.outcome.is_failure());
    assert_eq!(contacts_requests(&h), 1);
    assert_eq!(h.count("SELECT count(*) FROM ccsync.api_quota").await, 1);
    h.finish().await;
}

#[tokio::test]
async fn the_configured_daily_request_limit_is_never_exceeded() {
    let h = Harness::with(1_200, |s| s.constant_contact.daily_request_limit = 2).await;
    let r = h.run(Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(err.contains("daily_request_limit"), "{err}");
    assert_eq!(contacts_requests(&h), 2);
    assert_eq!(
        h.count("SELECT sum(requests)::bigint FROM ccsync.api_usage")
            .await,
        2
    );
    h.finish().await;
}

#[tokio::test]
async fn a_deleted_contact_gets_deleted_at_and_loses_its_memberships() {
    let h = Harness::new(200).await;
    h.run_ok(Job::Contacts).await;
    let victim = h
        .ctl
        .contact_ids()
        .into_iter()
        .find(|id| !h.ctl.memberships(*id).is_empty())
        .unwrap();
    h.ctl.delete_contact(victim);
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["deleted"], 1, "{stats}");
    let deleted: Option<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT deleted_at FROM ccsync.contacts WHERE contact_id = $1")
            .bind(victim)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(deleted.is_some());
    let m: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ccsync.list_memberships WHERE contact_id = $1")
            .bind(victim)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(m, 0);
    let kind: String = sqlx::query_scalar(
        "SELECT kind FROM ccsync.changes WHERE contact_id = $1 AND kind = 'deleted'",
    )
    .bind(victim)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(kind, "deleted");
    h.finish().await;
}

#[tokio::test]
async fn an_older_updated_at_never_regresses_a_stored_row() {
    let h = Harness::new(100).await;
    h.run_ok(Job::Contacts).await;
    let target = h.ctl.contact_ids()[3];
    let stored_before = first_name(&h, target).await;
    let old = h.ctl.contact(target).unwrap()["updated_at"]
        .as_str()
        .and_then(ccsync::ctct::dto::parse_datetime)
        .unwrap();
    // The primary now serves an *older* version of the contact (e.g. a lagging replica).
    h.ctl
        .update_contact(target, |c| c["first_name"] = serde_json::json!("Regressed"));
    h.ctl
        .set_updated_at(target, old - chrono::Duration::days(1));
    let mut ctx = h.new_context();
    ctx.full = true;
    let r = ccsync::sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    let Outcome::Succeeded(stats) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(stats["stale"], 1, "{stats}");
    assert_eq!(first_name(&h, target).await, stored_before);
    let stored_updated: DateTime<Utc> =
        sqlx::query_scalar("SELECT updated_at FROM ccsync.contacts WHERE contact_id = $1")
            .bind(target)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(stored_updated, old);
    h.finish().await;
}

#[tokio::test]
async fn the_rotated_refresh_token_is_used_by_the_next_process_not_the_seed() {
    let h = Harness::new(20).await;
    h.run_ok(Job::Contacts).await;
    let seed = secrecy::ExposeSecret::expose_secret(h.account().refresh_token.as_ref().unwrap())
        .to_string();
    let stored: String = sqlx::query_scalar(
        "SELECT refresh_token FROM ccsync.oauth_tokens WHERE account_id = 'default'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_ne!(stored, seed, "the rotated token was persisted");
    // A new process (fresh in-memory cache) whose stored access token has expired must
    // refresh with the stored token: the seed was spent and would get invalid_grant.
    sqlx::query("UPDATE ccsync.oauth_tokens SET access_expires_at = now() - interval '1 hour'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let before = h.sb.token_requests();
    let ctx = h.new_context();
    let r = ccsync::sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(!r.outcome.is_failure(), "{:?}", r.outcome);
    assert_eq!(h.sb.token_requests(), before + 1);
    let rotated_again: String = sqlx::query_scalar("SELECT refresh_token FROM ccsync.oauth_tokens")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_ne!(rotated_again, stored);
    assert_ne!(rotated_again, seed);
    h.finish().await;
}

#[tokio::test]
async fn a_second_run_of_the_same_job_is_skipped_while_one_holds_the_lock() {
    let h = Harness::new(10).await;
    // Hold the run lock from another session, as a run in another replica would.
    let mut other = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('ccsync:job:default:contacts', 0))")
        .execute(&mut other)
        .await
        .unwrap();
    let r = h.run(Job::Contacts).await;
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(contacts_requests(&h), 0);
    let skipped = h
        .count("SELECT count(*) FROM ccsync.sync_runs WHERE outcome = 'skipped'")
        .await;
    assert_eq!(skipped, 1);
    drop(other);
    h.finish().await;
}

use sqlx::Connection;

// ---- Bad input from the API: answers that do not decode, poison records, NULs ----

#[tokio::test]
async fn pages_answered_200_with_a_body_that_is_not_json_are_retried_and_every_contact_stored() {
    let h = Harness::new(1_100).await;
    // A proxy's HTML page, then the real answer cut in half: both complete 200 answers.
    h.sb.inject(Fault::NotJson {
        path_prefix: "/v3/contacts".into(),
        times: 1,
        cut: false,
    });
    h.sb.inject(Fault::NotJson {
        path_prefix: "/v3/contacts".into(),
        times: 1,
        cut: true,
    });
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["created"], 1_100, "{stats}");
    assert_eq!(stats["pages"], 3);
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 1_100);
    assert_eq!(
        contacts_requests(&h),
        3 + 2,
        "each undecodable answer cost one retry"
    );
    assert!(
        h.sb.requests().iter().all(|r| r.status == 200),
        "the faults answered 200"
    );
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb))
    );
    h.finish().await;
}

#[tokio::test]
async fn a_page_that_never_decodes_fails_the_run_naming_the_endpoint_and_keeps_the_watermark() {
    let h = Harness::new(20).await;
    h.run_ok(Job::Contacts).await;
    let before = watermark(&h.db.pool, "contacts").await;
    assert!(before.is_some());
    let id = h.ctl.create_contact("late@example.com", Some("Late"), &[]);
    let requests_before = contacts_requests(&h);
    h.sb.inject(Fault::NotJson {
        path_prefix: "/v3/contacts".into(),
        times: 1_000,
        cut: false,
    });
    let r = h.run(Job::Contacts).await;
    let Outcome::Failed(err) = &r.outcome else {
        panic!("expected failure: {:?}", r.outcome)
    };
    assert!(err.contains("GET /contacts"), "names the endpoint: {err}");
    assert!(err.contains("not the expected JSON"), "{err}");
    let max_retries = h.settings.constant_contact.max_retries as usize;
    assert_eq!(
        contacts_requests(&h) - requests_before,
        max_retries + 1,
        "bounded by the retry policy"
    );
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        before,
        "watermark unchanged"
    );
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.contacts WHERE contact_id = '{id}'"
        ))
        .await,
        0
    );
    h.sb.clear_faults();
    h.run_ok(Job::Contacts).await;
    assert_eq!(first_name(&h, id).await.as_deref(), Some("Late"));
    h.finish().await;
}

#[tokio::test]
async fn a_write_whose_answer_does_not_decode_is_not_sent_again() {
    let h = Harness::new(3).await;
    let client = h.ctx.api.account("default");
    let id = h.ctl.contact_ids()[0];
    let read = client.contact(id).await.unwrap();
    let body = serde_json::json!({
        "email_address": {"address": read["email_address"]["address"]},
        "first_name": "Written",
        "update_source": "Contact",
    });
    // The PUT is applied, then its answer is cut: its effect is unknown to the client.
    h.sb.inject(Fault::NotJson {
        path_prefix: "/v3/contacts/".into(),
        times: 5,
        cut: true,
    });
    let err = client.put_contact(id, &body).await.unwrap_err();
    assert!(
        matches!(err, ccsync::ctct::Error::Decode { endpoint, .. } if endpoint == "PUT /contacts/{id}"),
        "{err:?}"
    );
    let puts = h.sb.requests().iter().filter(|r| r.method == "PUT").count();
    assert_eq!(
        h.ctl.contact(id).unwrap()["first_name"],
        "Written",
        "the PUT took effect; only its answer was bad"
    );
    assert_eq!(
        puts, 1,
        "a write is never re-sent after an answer that does not decode"
    );
    h.finish().await;
}

/// `kind, contact_id, reason, record, run_id` of a `poison_records` row.
type PoisonRow = (
    String,
    Option<Uuid>,
    String,
    serde_json::Value,
    Option<Uuid>,
);

fn poison_total(rendered: &str) -> u64 {
    rendered
        .lines()
        .filter(|l| {
            l.starts_with("ccsync_poison_records_total{") && l.contains("account=\"default\"")
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn poison_contacts_are_skipped_and_recorded_and_the_rest_of_the_page_applies() {
    let metrics = ccsync::ops::metrics::install().unwrap();
    let counted_before = poison_total(&metrics.render());
    let h = Harness::new(30).await;
    let no_address = Uuid::new_v4();
    h.sb.inject(Fault::InjectContacts {
        path_prefix: "/v3/contacts".into(),
        contacts: vec![
            serde_json::json!({"email_address": {"address": "no-id@example.com"},
                               "first_name": "No\u{0}Id"}),
            serde_json::json!({"contact_id": no_address.to_string(),
                               "email_address": {"permission_to_send": "implicit"},
                               "updated_at": "2099-01-01T00:00:00Z"}),
        ],
        times: 1,
    });
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["poison"], 2, "{stats}");
    assert_eq!(stats["created"], 30, "the rest of the page applied");
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 30);
    let rows: Vec<PoisonRow> = sqlx::query_as(
        "SELECT kind, contact_id, reason, record, run_id FROM ccsync.poison_records
             WHERE account_id = 'default' ORDER BY id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "poison");
    assert_eq!(rows[0].1, None);
    assert_eq!(rows[0].2, "no contact_id");
    assert_eq!(rows[0].3["email_address"]["address"], "no-id@example.com");
    assert_eq!(rows[0].3["first_name"], "NoId", "kept storable");
    assert_eq!(rows[1].1, Some(no_address));
    assert_eq!(rows[1].2, "email_address has no address");
    assert!(rows.iter().all(|r| r.4.is_some()), "the run is named");
    assert_eq!(
        watermark(&h.db.pool, "contacts").await,
        Some(sandbox_max_updated_at(&h.sb)),
        "a skipped element does not move the watermark"
    );
    assert!(
        poison_total(&metrics.render()) >= counted_before + 2,
        "{}",
        metrics.render()
    );
    h.finish().await;
}

#[tokio::test]
async fn nul_characters_are_removed_recorded_and_never_fail_the_page() {
    let h = Harness::new(5).await;
    let field = h
        .ctl
        .create_custom_field("shoe_size", "Shoe size", "string");
    let id = h
        .ctl
        .create_contact("nul@example.com", Some("Ann\u{0}e"), &[]);
    h.ctl.set_custom_field(id, field, Some("4\u{0}2"));
    let raw = h.ctl.contact(id).unwrap();
    assert_eq!(raw["first_name"], "Ann\u{0}e", "the sandbox holds the NUL");
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["created"], 6, "{stats}");
    assert_eq!(stats["nul_removed"], 2, "{stats}");
    assert_eq!(first_name(&h, id).await.as_deref(), Some("Anne"));
    let cf: serde_json::Value =
        sqlx::query_scalar("SELECT custom_fields FROM ccsync.contacts WHERE contact_id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(cf[0]["value"], "42", "{cf}");
    let notes: Vec<(String, Option<Uuid>, Option<String>)> =
        sqlx::query_as("SELECT kind, contact_id, field FROM ccsync.poison_records ORDER BY field")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(
        notes,
        vec![
            ("nul_removed".into(), Some(id), Some("custom_fields".into())),
            ("nul_removed".into(), Some(id), Some("first_name".into())),
        ]
    );
    // The next run reads the same NULs again: the stored row does not change.
    h.ctl
        .update_contact(id, |v| v["last_name"] = serde_json::json!("Smith"));
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["updated"], 1, "{stats}");
    assert_eq!(first_name(&h, id).await.as_deref(), Some("Anne"));
    h.finish().await;
}
