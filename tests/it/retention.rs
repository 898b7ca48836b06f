//! Retention (`[retention]`, `store::retention`, `ccsync prune`, the daemon's scheduled
//! prune): old bookkeeping goes in batches, what is newer or still needed stays.

use std::time::Duration;

use ccsync::sandbox::SandboxConfig;
use ccsync::store::retention::{self, Policy, Pruned, Table};
use ccsync::sync::{self, Job, Outcome};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{eventually, text, Ccsync, ConfigToml, Harness, TestDb};

/// Keeps everything forever except what a test sets.
fn forever() -> Policy {
    Policy {
        changes_days: 0,
        sync_runs_days: 0,
        outbound_days: 0,
        import_activities_days: 0,
        api_usage_days: 0,
        schedule_claims_days: 0,
        batch_size: 5000,
    }
}

async fn prune(pool: &PgPool, table: Table, policy: &Policy) -> Pruned {
    let mut conn = pool.acquire().await.unwrap();
    retention::prune_table(&mut conn, table, policy, false, &|| true)
        .await
        .unwrap()
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `n` changes rows of `account`, `days` old, with `email` as a tag.
async fn old_changes(pool: &PgPool, account: &str, n: i32, days: i32, tag: &str) {
    sqlx::query(
        "INSERT INTO ccsync.changes (account_id, at, origin, kind, email)
         SELECT $1, now() - make_interval(days => $3), 'constant_contact', 'updated', $4
         FROM generate_series(1, $2)",
    )
    .bind(account)
    .bind(n)
    .bind(days)
    .bind(tag)
    .execute(pool)
    .await
    .unwrap();
}

/// An outbound row of `account` in `state`, created `created_days` and updated
/// `updated_days` ago.
async fn outbound(
    pool: &PgPool,
    account: &str,
    state: &str,
    created_days: i32,
    updated_days: i32,
    activity: Option<&str>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO ccsync.outbound (account_id, email, state, activity_id, created_at, updated_at)
         VALUES ($1, 'x@example.com', $2, $5, now() - make_interval(days => $3),
                 now() - make_interval(days => $4))
         RETURNING id",
    )
    .bind(account)
    .bind(state)
    .bind(created_days)
    .bind(updated_days)
    .bind(activity)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn ids(pool: &PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn old_rows_go_in_batches_newer_ones_stay_and_zero_keeps_forever() {
    let db = TestDb::new().await;
    old_changes(&db.pool, "default", 10, 100, "old").await;
    old_changes(&db.pool, "default", 5, 10, "new").await;
    let zero = prune(&db.pool, Table::Changes, &forever()).await;
    assert_eq!((zero.rows, zero.batches), (0, 0), "0 keeps forever");
    assert_eq!(db.count("SELECT count(*) FROM ccsync.changes").await, 15);

    let policy = Policy {
        changes_days: 90,
        batch_size: 3,
        ..forever()
    };
    let mut conn = db.pool.acquire().await.unwrap();
    let dry = retention::prune_table(&mut conn, Table::Changes, &policy, true, &|| true)
        .await
        .unwrap();
    drop(conn);
    assert_eq!((dry.rows, dry.batches), (10, 0));
    assert_eq!(db.count("SELECT count(*) FROM ccsync.changes").await, 15);

    let p = prune(&db.pool, Table::Changes, &policy).await;
    assert_eq!(p.rows, 10);
    assert_eq!(
        p.batches, 4,
        "3 + 3 + 3 + 1: batches smaller than the total"
    );
    let left = ids(&db.pool, "SELECT DISTINCT email FROM ccsync.changes").await;
    assert_eq!(left, vec!["new".to_string()]);
    assert_eq!(db.count("SELECT count(*) FROM ccsync.changes").await, 5);

    // api_usage by day, schedule_claims finished only.
    exec(
        &db.pool,
        "INSERT INTO ccsync.api_usage (day, account_id, requests) VALUES
           (current_date - 40, 'default', 1), (current_date - 41, 'default', 1),
           (current_date - 2, 'default', 1), (current_date, 'default', 1)",
    )
    .await;
    exec(
        &db.pool,
        "INSERT INTO ccsync.schedule_claims (account_id, tick, jobs, replica, finished_at, outcome) VALUES
           ('default', now() - interval '10 days', '{contacts}', 'r', now() - interval '10 days', 'completed'),
           ('default', now() - interval '11 days', '{contacts}', 'r', NULL, NULL),
           ('default', now() - interval '1 day', '{contacts}', 'r', now() - interval '1 day', 'completed')",
    )
    .await;
    let policy = Policy {
        api_usage_days: 30,
        schedule_claims_days: 7,
        batch_size: 1,
        ..forever()
    };
    let p = prune(&db.pool, Table::ApiUsage, &policy).await;
    assert_eq!((p.rows, p.batches), (2, 3));
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.api_usage WHERE day >= current_date - 2")
            .await,
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM ccsync.api_usage").await, 2);
    let p = prune(&db.pool, Table::ScheduleClaims, &policy).await;
    assert_eq!(p.rows, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.schedule_claims WHERE finished_at IS NULL")
            .await,
        1,
        "an unfinished claim is kept (a replica takes it over)"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.schedule_claims")
            .await,
        2
    );
    db.cleanup().await;
}

#[tokio::test]
async fn changes_and_completed_rows_the_push_guard_reads_are_kept() {
    let db = TestDb::new().await;
    // Account "a": a pending row queued 100 days ago, a submitted one 95 days ago.
    outbound(&db.pool, "a", "pending", 100, 100, None).await;
    outbound(&db.pool, "a", "submitted", 95, 95, Some("act")).await;
    old_changes(&db.pool, "a", 2, 120, "before-pending").await;
    old_changes(&db.pool, "a", 3, 98, "after-pending").await;
    // Account "b": nothing pending, so its old changes all go.
    old_changes(&db.pool, "b", 4, 98, "b-old").await;
    let policy = Policy {
        changes_days: 90,
        outbound_days: 30,
        batch_size: 2,
        ..forever()
    };
    let p = prune(&db.pool, Table::Changes, &policy).await;
    assert_eq!(p.rows, 6);
    let left = ids(
        &db.pool,
        "SELECT DISTINCT account_id || ':' || email FROM ccsync.changes ORDER BY 1",
    )
    .await;
    assert_eq!(left, vec!["a:after-pending".to_string()]);

    // Completed rows: kept while newer than the oldest pending/submitted row of the account.
    let echo = outbound(&db.pool, "a", "completed", 99, 40, None).await;
    let stale = outbound(&db.pool, "a", "completed", 130, 110, None).await;
    let failed = outbound(&db.pool, "a", "failed", 99, 40, None).await;
    let skipped = outbound(&db.pool, "a", "skipped", 99, 40, None).await;
    let recent = outbound(&db.pool, "a", "failed", 20, 20, None).await;
    let other = outbound(&db.pool, "b", "completed", 99, 40, None).await;
    let p = prune(&db.pool, Table::Outbound, &policy).await;
    assert_eq!(p.rows, 4, "{p:?}");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM ccsync.outbound ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(left.contains(&echo), "the echo check reads it");
    assert!(left.contains(&recent), "younger than the age");
    for gone in [stale, failed, skipped, other] {
        assert!(
            !left.contains(&gone),
            "row {gone} should be pruned: {left:?}"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.outbound WHERE state IN ('pending', 'submitted')")
            .await,
        2,
        "rows still to push or confirm are never pruned"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn activities_in_flight_or_confirming_and_unfinished_or_latest_runs_are_kept() {
    let db = TestDb::new().await;
    exec(
        &db.pool,
        "INSERT INTO ccsync.import_activities (activity_id, account_id, state, submitted_at, finished_at) VALUES
           ('done-old', 'a', 'COMPLETED', now() - interval '50 days', now() - interval '40 days'),
           ('flying', 'a', 'RUNNING', now() - interval '50 days', NULL),
           ('confirming', 'a', 'COMPLETED', now() - interval '50 days', now() - interval '40 days'),
           ('done-new', 'a', 'COMPLETED', now() - interval '5 days', now() - interval '4 days')",
    )
    .await;
    outbound(&db.pool, "a", "submitted", 50, 50, Some("confirming")).await;
    outbound(&db.pool, "a", "completed", 50, 40, Some("done-old")).await;
    let policy = Policy {
        import_activities_days: 30,
        sync_runs_days: 30,
        batch_size: 1,
        ..forever()
    };
    let p = prune(&db.pool, Table::ImportActivities, &policy).await;
    assert_eq!(p.rows, 1);
    let left = ids(
        &db.pool,
        "SELECT activity_id FROM ccsync.import_activities ORDER BY 1",
    )
    .await;
    assert_eq!(left, vec!["confirming", "done-new", "flying"]);

    // (a, contacts): succeeded 40, 39, 38 days ago, and one unfinished from 50 days ago.
    // (a, push): succeeded 38, failed 37, skipped 36 days ago, succeeded 5 days ago is not
    // there: the latest is the skipped one, the latest that did work the failed one, the
    // latest success the one at 38.
    exec(
        &db.pool,
        "INSERT INTO ccsync.sync_runs (id, account_id, job, started_at, finished_at, outcome) VALUES
           ('00000000-0000-0000-0000-000000000040', 'a', 'contacts', now() - interval '40 days', now() - interval '40 days', 'succeeded'),
           ('00000000-0000-0000-0000-000000000039', 'a', 'contacts', now() - interval '39 days', now() - interval '39 days', 'succeeded'),
           ('00000000-0000-0000-0000-000000000038', 'a', 'contacts', now() - interval '38 days', now() - interval '38 days', 'succeeded'),
           ('00000000-0000-0000-0000-000000000050', 'a', 'contacts', now() - interval '50 days', NULL, 'running'),
           ('00000000-0000-0000-0000-000000000139', 'a', 'push', now() - interval '39 days', now() - interval '39 days', 'succeeded'),
           ('00000000-0000-0000-0000-000000000138', 'a', 'push', now() - interval '38 days', now() - interval '38 days', 'succeeded'),
           ('00000000-0000-0000-0000-000000000137', 'a', 'push', now() - interval '37 days', now() - interval '37 days', 'failed'),
           ('00000000-0000-0000-0000-000000000136', 'a', 'push', now() - interval '36 days', now() - interval '36 days', 'skipped'),
           ('00000000-0000-0000-0000-000000000205', 'a', 'lists', now() - interval '5 days', now() - interval '5 days', 'succeeded'),
           ('00000000-0000-0000-0000-000000000240', 'a', 'lists', now() - interval '40 days', now() - interval '40 days', 'succeeded')",
    )
    .await;
    let p = prune(&db.pool, Table::SyncRuns, &policy).await;
    assert_eq!(p.rows, 4, "{p:?}");
    let left = ids(
        &db.pool,
        "SELECT right(id::text, 3) FROM ccsync.sync_runs ORDER BY 1",
    )
    .await;
    assert_eq!(left, vec!["038", "050", "136", "137", "138", "205"]);
    db.cleanup().await;
}

/// A row queued 100 days ago, a Constant Contact edit of the same field 95 days ago (after
/// the row was queued): a 90-day prune keeps the edit, and the push still refuses to
/// overwrite it.
#[tokio::test]
async fn a_change_older_than_the_age_but_newer_than_a_pending_row_still_stops_the_push() {
    let h = Harness::start(
        SandboxConfig {
            contacts: 10,
            import_processing: Duration::from_millis(30),
            ..SandboxConfig::default()
        },
        |s| {
            s.sync.poll_initial = Duration::from_millis(20);
            s.sync.poll_max = Duration::from_millis(80);
        },
    )
    .await;
    h.run_ok(Job::Contacts).await;
    let cid = h
        .ctl
        .contact_ids()
        .into_iter()
        .find(|id| {
            let c = h.ctl.contact(*id).unwrap();
            c["email_address"]["permission_to_send"] != "unsubscribed" && c["deleted_at"].is_null()
        })
        .expect("a subscriber");
    let email = h.ctl.contact(cid).unwrap()["email_address"]["address"]
        .as_str()
        .unwrap()
        .to_lowercase();
    let id = h.queue(&email, json!({"first_name": "Local"}), &[]).await;
    exec(
        &h.db.pool,
        &format!(
            "UPDATE ccsync.outbound SET created_at = now() - interval '100 days' WHERE id = {id}"
        ),
    )
    .await;
    h.ctl
        .update_contact(cid, |v| v["first_name"] = json!("Remote"));
    h.run_ok(Job::Contacts).await;
    let edits = "SELECT count(*) FROM ccsync.changes WHERE origin = 'constant_contact'
                 AND kind = 'updated' AND field = 'first_name'";
    assert_eq!(h.count(edits).await, 1, "the pull logged the edit");
    exec(
        &h.db.pool,
        "UPDATE ccsync.changes SET at = now() - interval '95 days'
         WHERE kind = 'updated' AND field = 'first_name'",
    )
    .await;
    old_changes(&h.db.pool, "default", 3, 120, "before-the-row").await;

    let policy = Policy {
        changes_days: 90,
        batch_size: 2,
        ..forever()
    };
    let mut conn = h.db.pool.acquire().await.unwrap();
    let all = retention::prune_all(&mut conn, &policy, false, &|| true)
        .await
        .unwrap();
    drop(conn);
    let changes = all.iter().find(|p| p.table == "changes").unwrap();
    assert_eq!(changes.rows, 3, "{all:?}");
    assert_eq!(h.count(edits).await, 1, "the edit the guard reads is kept");

    let reports = sync::run_cycle(&h.ctx, &h.settings.accounts, &[Job::Push]).await;
    let push = reports.iter().find(|r| r.job == Job::Push).unwrap();
    let Outcome::Succeeded(stats) = &push.outcome else {
        panic!("push: {:?}", push.outcome);
    };
    assert_eq!(stats["conflicts"], 1, "{stats}");
    assert_eq!(h.ctl.contact(cid).unwrap()["first_name"], "Remote");
    h.finish().await;
}

fn conf_for(db: &TestDb) -> ConfigToml {
    ConfigToml::new()
        .set("database", "url", &db.url)
        .set("database", "max_connections", 2u32)
        .set("constant_contact", "client_id", "id")
        .set("constant_contact", "client_secret", "secret")
        .account("default", None)
}

#[tokio::test]
async fn prune_through_the_binary_dry_run_deletes_nothing() {
    let db = TestDb::new().await;
    old_changes(&db.pool, "default", 7, 100, "old").await;
    old_changes(&db.pool, "default", 2, 1, "new").await;
    let conf = conf_for(&db).set("retention", "batch_size", 3u32).write();
    let run = |args: &'static [&'static str]| {
        let path = conf.path.clone();
        async move { Ccsync::new().config(path).args(args).output().await }
    };
    let o = run(&["prune", "--dry-run", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["dry_run"], true);
    let changes = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "changes")
        .unwrap()
        .clone();
    assert_eq!(changes["rows"], 7, "{v}");
    assert_eq!(db.count("SELECT count(*) FROM ccsync.changes").await, 9);

    let o = run(&["prune", "--dry-run"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("would be deleted"), "{}", text(&o));
    assert_eq!(db.count("SELECT count(*) FROM ccsync.changes").await, 9);

    let o = run(&["prune"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("7 row(s) deleted"), "{}", text(&o));
    assert_eq!(db.count("SELECT count(*) FROM ccsync.changes").await, 2);

    let o = run(&["status", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let t = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "changes")
        .unwrap()
        .clone();
    assert_eq!(t["rows"], 2, "{v}");
    assert!(t["bytes"].as_i64().unwrap() > 0, "{v}");
    db.cleanup().await;
}

#[tokio::test]
async fn a_negative_or_absurd_retention_exits_78_naming_the_key() {
    let db = TestDb::new().await;
    for (key, value, needle) in [
        ("changes_days", -1i64, "retention.changes_days"),
        ("sync_runs_days", 1_000_000, "retention.sync_runs_days"),
        ("batch_size", 0, "retention.batch_size"),
    ] {
        let conf = conf_for(&db).set("retention", key, value).write();
        let o = Ccsync::new()
            .config(&conf.path)
            .args(["prune"])
            .output()
            .await;
        assert_eq!(o.status.code(), Some(78), "{key}: {}", text(&o));
        assert!(text(&o).contains(needle), "{key}: {}", text(&o));
    }
    let conf = conf_for(&db).set("schedule", "retention", "daily").write();
    let o = Ccsync::new()
        .config(&conf.path)
        .args(["prune"])
        .output()
        .await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("schedule.retention"), "{}", text(&o));
    db.cleanup().await;
}

#[tokio::test]
async fn the_daemon_prunes_on_its_schedule() {
    let db = TestDb::new().await;
    let sb = crate::helpers::sandbox(5).await;
    let token = sb.default_account().seed_refresh_token();
    old_changes(&db.pool, "default", 5, 100, "old").await;
    old_changes(&db.pool, "default", 2, 1, "new").await;
    let never = "0 0 0 1 1 *";
    let conf = ConfigToml::for_sandbox(&sb, &db.url)
        .set("schedule", "contacts", never)
        .set("schedule", "unsubscribes", never)
        .set("schedule", "deletes", never)
        .set("schedule", "lists", never)
        .set("schedule", "push", never)
        .set("schedule", "reconcile", never)
        .set("schedule", "retention", "* * * * * *")
        .set("retention", "batch_size", 2u32)
        .set("server", "listen", "127.0.0.1:0")
        .set("log", "format", "json")
        .set("log", "level", "info")
        .account("default", Some(&token))
        .write();
    let mut d = Ccsync::with_args(["run"])
        .config(&conf.path)
        .log("ccsync=info,warn")
        .spawn();
    d.ready().await;
    eventually("the scheduled prune", Duration::from_secs(60), || async {
        (db.count("SELECT count(*) FROM ccsync.changes").await == 2).then_some(())
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.changes WHERE email = 'new'")
            .await,
        2
    );
    eventually("the prune logged", Duration::from_secs(30), || async {
        d.logged("retention: pruned old rows").then_some(())
    })
    .await;
    d.signal("TERM");
    let _ = d.exit(Duration::from_secs(30)).await;
    sb.shutdown();
    db.cleanup().await;
}
