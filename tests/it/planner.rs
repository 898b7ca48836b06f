//! The request-budget planner (`[freshness]`) in `ccsync run`: planned jobs run on their
//! targets at the minute's planner tick without cron, an idle cycle costs one request per
//! job, a push runs only when there is something to push (with its pulls), and `status` and
//! `/metrics` show the plan. The planner's arithmetic over a whole day (1, 19, 100 and 200
//! accounts) is the simulation in `core::planner`'s unit tests.

use std::time::Duration;

use ccsync::sandbox::Sandbox;

use crate::helpers::{eventually, sandbox, Ccsync, ConfigFile, ConfigToml, TestDb};

/// Never fires during a test (1 January, midnight).
const NEVER: &str = "0 0 0 1 1 *";

const ACCOUNTS: [&str; 3] = ["default", "north", "south"];

fn config(sb: &Sandbox, db: &TestDb, daily_limit: u64) -> ConfigFile {
    let mut c = ConfigToml::for_sandbox(sb, &db.url)
        .set("constant_contact", "daily_request_limit", daily_limit)
        .set("sync", "poll_initial", "100ms")
        .set("sync", "poll_max", "500ms")
        .set("freshness", "unsubscribes", "1m")
        .set("freshness", "contacts", "2m")
        .set("freshness", "lists", "1h")
        .set("freshness", "push", "1m")
        .set("server", "listen", "127.0.0.1:0")
        .set("server", "metrics_interval", "1s")
        .set("log", "format", "json");
    // Every cron expression on a date that never comes: what runs, the planner ran.
    for job in [
        "contacts",
        "unsubscribes",
        "deletes",
        "lists",
        "push",
        "reconcile",
    ] {
        c = c.set("schedule", job, NEVER);
    }
    for id in ACCOUNTS {
        c = c.account(id, Some(&sb.account(id).seed_refresh_token()));
    }
    ConfigFile::new(&c.render())
}

async fn runs(db: &TestDb, account: &str, job: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM ccsync.sync_runs
         WHERE account_id = '{account}' AND job = '{job}' AND outcome = 'succeeded'"
    ))
    .await
}

async fn status(conf: &ConfigFile) -> serde_json::Value {
    let o = Ccsync::with_args(["status", "--json"])
        .config(&conf.path)
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", crate::helpers::text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

#[tokio::test]
async fn planned_jobs_run_on_their_targets_idle_cycles_cost_one_request_and_push_waits_for_work() {
    let db = TestDb::new().await;
    let sb = sandbox(25).await;
    let conf = config(&sb, &db, 10_000);
    let mut d = Ccsync::with_args(["run"])
        .config(&conf.path)
        .log("ccsync=info,warn")
        .spawn();
    let base = d.ready().await;

    // First tick: every planned job of every account (none has run).
    eventually(
        "each account's first planned cycle",
        Duration::from_secs(150),
        || async {
            for a in ACCOUNTS {
                for job in ["contacts", "unsubscribes", "lists"] {
                    if runs(&db, a, job).await < 1 {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.contacts WHERE account_id = 'default'")
            .await,
        25
    );
    // A minute later: the opt-out sweeps again (1m), not the contacts pulls (2m) nor lists.
    eventually(
        "each account's second opt-out sweep",
        Duration::from_secs(150),
        || async {
            for a in ACCOUNTS {
                if runs(&db, a, "unsubscribes").await < 2 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for a in ACCOUNTS {
        // An idle sweep is one request (its stats count what it sent).
        let second: Vec<(serde_json::Value, Vec<String>)> = sqlx::query_as(
            "SELECT r.stats, (SELECT array_agg(o.job ORDER BY o.job) FROM ccsync.sync_runs o
                              WHERE o.account_id = r.account_id AND o.scheduled_for = r.scheduled_for)
             FROM ccsync.sync_runs r
             WHERE r.account_id = $1 AND r.job = 'unsubscribes' AND r.outcome = 'succeeded'
             ORDER BY r.started_at OFFSET 1 LIMIT 1",
        )
        .bind(a)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let (stats, jobs) = &second[0];
        assert_eq!(stats["api_requests"], 1, "{a}: {stats}");
        assert_eq!(
            jobs,
            &["unsubscribes"],
            "{a}: the second tick ran more than the sweep"
        );
        assert_eq!(
            runs(&db, a, "lists").await,
            1,
            "{a}: lists is planned hourly"
        );
    }
    // Nothing queued: no push has run, however many ticks passed.
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.sync_runs WHERE job = 'push'")
            .await,
        0
    );

    // A queued row: the next tick pushes it, after the pulls a push needs, in one cycle.
    let list = sb.default_account().list_ids()[0];
    sqlx::query(
        "INSERT INTO ccsync.outbound (email, fields, list_ids)
         VALUES ('ada@example.com', '{\"first_name\": \"Ada\"}', ARRAY[$1]::uuid[])",
    )
    .bind(list)
    .execute(&db.pool)
    .await
    .unwrap();
    eventually(
        "the queued row to be pushed",
        Duration::from_secs(150),
        || async {
            (db.count("SELECT count(*) FROM ccsync.outbound WHERE state = 'completed'")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
    assert!(sb
        .default_account()
        .contact_by_email("ada@example.com")
        .is_some());
    // The row completes inside the push run; the run is tagged with its cycle's tick only
    // once it has ended.
    eventually(
        "the push run to be tagged with its cycle",
        Duration::from_secs(60),
        || async {
            (db.count(
                "SELECT count(*) FROM ccsync.sync_runs
                 WHERE job = 'push' AND scheduled_for IS NOT NULL",
            )
            .await
                > 0)
            .then_some(())
        },
    )
    .await;
    let push_cycle: Vec<String> = sqlx::query_scalar(
        "SELECT o.job FROM ccsync.sync_runs o
         WHERE o.scheduled_for = (SELECT scheduled_for FROM ccsync.sync_runs
                                  WHERE job = 'push' ORDER BY started_at LIMIT 1)
           AND o.account_id = 'default'
         ORDER BY o.started_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(push_cycle, ["contacts", "unsubscribes", "lists", "push"]);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM ccsync.sync_runs WHERE job = 'push' AND account_id <> 'default'"
        )
        .await,
        0,
        "accounts with nothing to push pushed"
    );

    // The plan, where operators look.
    let v = status(&conf).await;
    let plan = &v["plan"];
    assert_eq!(plan["accounts"].as_array().map(Vec::len), Some(3), "{plan}");
    assert_eq!(plan["short_of_target"], serde_json::json!([]), "{plan}");
    let north = plan["accounts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["account"] == "north"))
        .cloned()
        .unwrap_or_default();
    let interval = |job: &str| {
        north["jobs"]
            .as_array()
            .and_then(|j| j.iter().find(|j| j["job"] == job))
            .map(|j| j["interval_seconds"].clone())
    };
    assert_eq!(
        interval("unsubscribes"),
        Some(serde_json::json!(60)),
        "{north}"
    );
    assert_eq!(
        interval("contacts"),
        Some(serde_json::json!(120)),
        "{north}"
    );
    assert_eq!(interval("lists"), Some(serde_json::json!(3600)), "{north}");
    // 1,440 sweeps + 720 pulls + 24 lists cycles of 2 a day.
    assert_eq!(north["requests_per_day"], 2208.0, "{north}");
    let m = eventually("plan gauges", Duration::from_secs(30), || async {
        let m = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains("ccsync_plan_requests_per_day").then_some(m)
    })
    .await;
    for needle in [
        r#"ccsync_plan_requests_per_day{account="south"} 2208"#,
        r#"ccsync_job_interval_seconds{account="south",job="contacts"} 120"#,
        r#"ccsync_plan_short_of_target{job="unsubscribes"} 0"#,
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(20)).await.0, Some(0));
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn a_small_daily_budget_stretches_the_plan_opt_outs_first() {
    let db = TestDb::new().await;
    let sb = sandbox(0).await;
    // 3 accounts wanting 2,208 requests a day each, on a key allowed 600.
    let conf = config(&sb, &db, 600);
    let v = status(&conf).await;
    let plan = &v["plan"];
    let short: Vec<&str> = plan["short_of_target"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j.as_str())
        .collect();
    assert!(short.contains(&"unsubscribes"), "{plan}");
    let planned = plan["planned_requests_per_day"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(planned <= 600.0 * 0.95, "{plan}");
    for a in plan["accounts"].as_array().into_iter().flatten() {
        let every = |job: &str| {
            a["jobs"]
                .as_array()
                .and_then(|j| j.iter().find(|j| j["job"] == job))
                .and_then(|j| j["interval_seconds"].as_u64())
                .unwrap_or(0)
        };
        // Contacts and lists once a day; opt-outs get the rest: (570 − 9) / 3 a day each.
        assert_eq!(every("contacts"), 86_400, "{a}");
        assert_eq!(every("lists"), 86_400, "{a}");
        let sweeps_a_day = 86_400.0 / every("unsubscribes") as f64;
        assert!(
            (150.0..=187.0).contains(&sweeps_a_day),
            "{a}: {sweeps_a_day}"
        );
    }
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}
