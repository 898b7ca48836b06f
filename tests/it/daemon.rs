//! `ccsync run` as operators run it: the real binary as child processes against the
//! in-process sandbox and a database of its own, on fast (one- or two-second) schedules.
//! Signals, health and metrics, configuration reloads, and several replicas sharing ticks
//! and the API key's rate limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccsync::sandbox::{Fault, Sandbox, SandboxConfig};

use crate::helpers::{
    eventually, sandbox, sandbox_with, Ccsync, ChildProcess, ConfigFile, ConfigToml, TestDb,
};

/// Never fires during a test (1 January, midnight).
const NEVER: &str = "0 0 0 1 1 *";

/// What a test varies in the configuration.
struct Opts {
    accounts: Vec<(String, String)>,
    contacts_cron: String,
    page_size: u32,
    requests_per_second: f64,
    shutdown_grace: &'static str,
    max_concurrent_accounts: usize,
    max_connections: u32,
    /// Schedule of the jobs other than contacts (default: never).
    others_cron: String,
    /// Settings added to `[sync]`.
    sync_extra: Vec<(&'static str, &'static str)>,
}

impl Opts {
    fn new(accounts: Vec<(String, String)>) -> Opts {
        Opts {
            accounts,
            contacts_cron: "* * * * * *".into(),
            page_size: 500,
            requests_per_second: 0.0,
            shutdown_grace: "10s",
            max_concurrent_accounts: 4,
            max_connections: 4,
            others_cron: NEVER.into(),
            sync_extra: Vec::new(),
        }
    }
}

/// `ccsync run`'s configuration: fast schedules, JSON logs, an ops listener on port 0.
fn config(sb: &Sandbox, db_url: &str, o: &Opts) -> String {
    let mut c = ConfigToml::for_sandbox(sb, db_url)
        .set("database", "max_connections", o.max_connections)
        .set(
            "constant_contact",
            "requests_per_second",
            o.requests_per_second,
        )
        .set("constant_contact", "retry_initial", "20ms")
        .set("constant_contact", "retry_max", "200ms")
        .set("constant_contact", "request_timeout", "20s")
        .set("sync", "page_size", o.page_size);
    for (k, v) in &o.sync_extra {
        c = c.set("sync", k, *v);
    }
    c = c
        .set("schedule", "contacts", o.contacts_cron.as_str())
        .set("schedule", "unsubscribes", o.others_cron.as_str())
        .set("schedule", "deletes", o.others_cron.as_str())
        .set("schedule", "lists", o.others_cron.as_str())
        .set("schedule", "push", o.others_cron.as_str())
        .set("schedule", "reconcile", NEVER)
        .set("server", "listen", "127.0.0.1:0")
        .set("server", "shutdown_grace", o.shutdown_grace)
        .set(
            "server",
            "max_concurrent_accounts",
            o.max_concurrent_accounts,
        )
        .set("server", "metrics_interval", "1s")
        .set("log", "format", "json")
        .set("log", "level", "info");
    for (id, token) in &o.accounts {
        c = c.account(id, Some(token));
    }
    c.render()
}

/// `ccsync run --config <conf>`, logging at info (JSON on stderr).
fn spawn(conf: &ConfigFile) -> ChildProcess {
    spawn_with(conf, &[])
}

fn spawn_with(conf: &ConfigFile, env: &[(&str, &str)]) -> ChildProcess {
    let mut cmd = Ccsync::with_args(["run"])
        .config(&conf.path)
        .log("ccsync=info,warn");
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.spawn()
}

/// A database, a sandbox with `contacts` in its default account, and that account's
/// refresh token.
async fn setup(contacts: usize) -> (TestDb, Sandbox, String) {
    let db = TestDb::new().await;
    let sb = sandbox(contacts).await;
    let token = sb.default_account().seed_refresh_token();
    (db, sb, token)
}

/// The same, with the daemon started on the default options for that account, ready;
/// returns the ops listener's base URL too.
async fn started(contacts: usize) -> (TestDb, Sandbox, ConfigFile, ChildProcess, String) {
    let (db, sb, token) = setup(contacts).await;
    let conf = ConfigFile::new(&config(
        &sb,
        &db.url,
        &Opts::new(vec![("default".into(), token)]),
    ));
    let d = spawn(&conf);
    let base = d.ready().await;
    (db, sb, conf, d, base)
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.count(sql).await
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_and_sigterm_exits_0() {
    let (db, sb, conf, mut d, base) = started(120).await;

    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    eventually("a succeeded scheduled pull", Duration::from_secs(60), || async {
        let n = count(&db, "SELECT count(*) FROM ccsync.sync_runs WHERE job = 'contacts' AND outcome = 'succeeded' AND scheduled_for IS NOT NULL").await;
        (n > 0).then_some(())
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM ccsync.contacts").await,
        120
    );
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");

    // Metrics: every family is ccsync_*, runs and API requests are counted, the run
    // duration is a histogram with buckets, gauges come from the database.
    let metrics = eventually("the gauges", Duration::from_secs(30), || async {
        let (_, m) = get(&format!("{base}/metrics")).await;
        m.contains("ccsync_watermark_lag_seconds{").then_some(m)
    })
    .await;
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            line.starts_with("ccsync_"),
            "metric without the ccsync_ prefix: {line}"
        );
    }
    for needle in [
        r#"ccsync_runs_total{account="default",job="contacts",outcome="succeeded"}"#,
        r#"ccsync_api_requests_total{endpoint="GET /contacts",status="200"}"#,
        r#"ccsync_run_duration_seconds_bucket{account="default",job="contacts",le="0.25"}"#,
        r#"ccsync_contacts_pulled_total{account="default",job="contacts"}"#,
        r#"ccsync_watermark_lag_seconds{account="default",job="contacts"}"#,
        r#"ccsync_outbound_rows{account="default",state="pending"} 0"#,
        "ccsync_api_budget_remaining",
        r#"ccsync_schedule_ticks_total{outcome="ran"}"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    // `ccsync status` is the operator's one look: watermark, lag, next run, budget left.
    let st = Ccsync::with_args(["status", "--json"])
        .config(&conf.path)
        .output()
        .await;
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let job = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["account"] == "default" && j["job"] == "contacts")
        .expect("the contacts job in status")
        .clone();
    assert!(job["lag_seconds"].is_i64(), "{job}");
    assert!(job["next_run_at"].is_string(), "{job}");
    assert_eq!(v["schedule"].as_array().unwrap().len(), 6);
    assert!(v["api_requests_today"]["budget_left"].as_i64().unwrap() < 10_000);

    // An account that needs re-authorisation makes the daemon not ready, and says why.
    sqlx::query("UPDATE ccsync.oauth_tokens SET needs_reauth = true WHERE account_id = 'default'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("account default needs re-authorisation"),
        "{body}"
    );
    // So does a job that has been failing longer than its threshold (here: deletes, on a
    // yearly test schedule, so three years).
    sqlx::query("UPDATE ccsync.oauth_tokens SET needs_reauth = false")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO ccsync.sync_runs (id, account_id, job, started_at, finished_at, outcome, error)
         VALUES (gen_random_uuid(), 'default', 'deletes', now() - interval '4 years',
                 now() - interval '4 years', 'failed', 'boom')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("deletes of account default has been failing since"),
        "{body}"
    );
    assert!(!body.contains("re-authorisation"), "{body}");
    // `ccsync healthcheck` (Docker's HEALTHCHECK) follows /readyz.
    let hc = Ccsync::with_args(["healthcheck", "--url", &format!("{base}/readyz")])
        .output()
        .await;
    assert_eq!(hc.status.code(), Some(1));
    let hc = Ccsync::with_args(["healthcheck", "--url", &format!("{base}/healthz")])
        .output()
        .await;
    assert_eq!(hc.status.code(), Some(0));

    d.signal("TERM");
    let (code, took) = d.exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn sigterm_mid_pull_commits_whole_pages_and_a_restart_finishes_the_cycle() {
    const PAGE: i64 = 50;
    const TOTAL: i64 = 2_000;
    let (db, sb, token) = setup(TOTAL as usize).await;
    // 40 pages of 50, each answered after 150 ms: a pull takes about 6 s.
    sb.inject(Fault::Latency {
        path_prefix: "/contacts".into(),
        delay: Duration::from_millis(150),
        times: 1_000_000,
    });
    let mut opts = Opts::new(vec![("default".into(), token)]);
    opts.page_size = PAGE as u32;
    opts.shutdown_grace = "8s";
    let conf = ConfigFile::new(&config(&sb, &db.url, &opts));
    let mut d = spawn(&conf);
    d.ready().await;
    eventually("a few committed pages", Duration::from_secs(60), || async {
        (count(&db, "SELECT count(*) FROM ccsync.contacts").await >= 3 * PAGE).then_some(())
    })
    .await;

    d.signal("TERM");
    let (code, took) = d.exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(
        took < Duration::from_secs(8),
        "exceeded the grace: {took:?}"
    );

    // Whole pages only (each page is one transaction), and not everything.
    let n = count(&db, "SELECT count(*) FROM ccsync.contacts").await;
    assert!(n < TOTAL, "the pull was not interrupted ({n})");
    assert_eq!(n % PAGE, 0, "a half-applied page: {n} contacts");
    // The watermark moves only with the last page: not at all here.
    let wm = count(
        &db,
        "SELECT count(*) FROM ccsync.sync_state WHERE job = 'contacts' AND watermark IS NOT NULL",
    )
    .await;
    assert_eq!(wm, 0, "the watermark moved before the last page");
    // The run is closed as cancelled (not left running) and its lock released.
    let open = count(
        &db,
        "SELECT count(*) FROM ccsync.sync_runs WHERE finished_at IS NULL",
    )
    .await;
    assert_eq!(open, 0);
    let cancelled = count(
        &db,
        "SELECT count(*) FROM ccsync.sync_runs WHERE job = 'contacts' AND outcome = 'cancelled'",
    )
    .await;
    assert_eq!(cancelled, 1);
    // The cut-short cycle is still claimed: the next start takes it over.
    let unfinished = count(
        &db,
        "SELECT count(*) FROM ccsync.schedule_claims WHERE finished_at IS NULL",
    )
    .await;
    assert!(unfinished >= 1);

    sb.clear_faults();
    opts.contacts_cron = NEVER.into();
    conf.write(&config(&sb, &db.url, &opts));
    let mut d = spawn(&conf);
    d.ready().await;
    // Even with no tick due, the restart finishes the interrupted cycle at once.
    eventually("the interrupted cycle to be recovered", Duration::from_secs(60), || async {
        (count(&db, "SELECT count(*) FROM ccsync.schedule_claims WHERE outcome = 'recovered'").await
            >= 1
            && count(&db, "SELECT count(*) FROM ccsync.contacts").await == TOTAL
            && count(&db, "SELECT count(*) FROM ccsync.sync_state WHERE job = 'contacts' AND watermark IS NOT NULL").await == 1)
            .then_some(())
    })
    .await;
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(15)).await.0, Some(0));
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let (db, sb, token) = setup(500).await;
    // Every page takes 5 s: once page 1 is committed, page 2 is in flight (read ahead), and
    // a graceful drain would wait for it.
    sb.inject(Fault::Latency {
        path_prefix: "/contacts".into(),
        delay: Duration::from_secs(5),
        times: 100,
    });
    let mut opts = Opts::new(vec![("default".into(), token)]);
    opts.page_size = 50;
    opts.shutdown_grace = "30s";
    let conf = ConfigFile::new(&config(&sb, &db.url, &opts));
    let mut d = spawn(&conf);
    d.ready().await;
    eventually("page 1 committed", Duration::from_secs(60), || async {
        (count(&db, "SELECT count(*) FROM ccsync.contacts").await >= 50).then_some(())
    })
    .await;
    d.signal("TERM");
    // The first signal is handled (draining has begun) ...
    eventually("the drain to start", Duration::from_secs(30), || async {
        d.logged("\"message\":\"draining\"").then_some(())
    })
    .await;
    assert!(d.is_running(), "log:\n{}", d.log());
    // ... the second one ends the process now, without waiting for the page (a drain would
    // wait for it: about 5 s).
    d.signal("TERM");
    let (code, took) = d.exit(Duration::from_secs(15)).await;
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(code, Some(143), "log:\n{}", d.log());
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn sighup_rejects_a_bad_configuration_and_applies_a_good_one() {
    let (db, sb, t1) = setup(30).await;
    let other = sb.account("other");
    other.generate(25, 2, 9);
    let t2 = other.seed_refresh_token();
    let opts = Opts::new(vec![("default".into(), t1.clone())]);
    let conf = ConfigFile::new(&config(&sb, &db.url, &opts));
    let mut d = spawn(&conf);
    let base = d.ready().await;
    let runs_of = |account: &'static str| {
        let db = &db;
        async move {
            count(
                db,
                &format!("SELECT count(*) FROM ccsync.sync_runs WHERE account_id = '{account}' AND outcome = 'succeeded'"),
            )
            .await
        }
    };
    eventually("a first run", Duration::from_secs(60), || async {
        (runs_of("default").await > 0).then_some(())
    })
    .await;

    // A bad file: rejected, the old configuration keeps running.
    let mut bad = config(&sb, &db.url, &opts);
    bad = bad.replace("page_size = 500", "page_size = 900");
    conf.write(&bad);
    d.signal("HUP");
    eventually("the rejection", Duration::from_secs(30), || async {
        d.logged("configuration reload rejected").then_some(())
    })
    .await;
    assert!(d.logged("sync.page_size"), "the rejection names the key");
    assert!(d.is_running());
    let before = runs_of("default").await;
    eventually("runs to go on", Duration::from_secs(30), || async {
        (runs_of("default").await > before).then_some(())
    })
    .await;
    let (_, m) = get(&format!("{base}/metrics")).await;
    assert!(
        m.contains(r#"ccsync_config_reloads_total{outcome="rejected"} 1"#),
        "{m}"
    );

    // A good file adding an account: applied without a restart.
    let opts = Opts::new(vec![("default".into(), t1), ("other".into(), t2)]);
    conf.write(&config(&sb, &db.url, &opts));
    d.signal("HUP");
    eventually(
        "the new account's first run",
        Duration::from_secs(60),
        || async { (runs_of("other").await > 0).then_some(()) },
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM ccsync.contacts WHERE account_id = 'other'"
        )
        .await,
        25
    );
    let (_, m) = get(&format!("{base}/metrics")).await;
    assert!(
        m.contains(r#"ccsync_config_reloads_total{outcome="applied"} 1"#),
        "{m}"
    );
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(15)).await.0, Some(0));
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn three_replicas_run_each_tick_once_within_the_rate_limit_and_survive_a_kill() {
    const ACCOUNTS: usize = 20;
    let db = TestDb::new().await;
    // The API key's limit: 60 requests/s, burst 1 (10% jitter tolerance); ccsync paces at
    // 6/s for the three replicas together (unpaced, or paced per process, they collide).
    // The slots are 167 ms apart and the sandbox refuses under 15 ms: a request may leave
    // up to 150 ms late (a busy machine) without being throttled.
    let sb = sandbox_with(SandboxConfig {
        contacts: 0,
        requests_per_second: Some(60.0),
        ..SandboxConfig::default()
    })
    .await;
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let name = format!("acct{i:02}");
        let ctl = sb.account(&name);
        ctl.generate(20, 2, i as u64);
        accounts.push((name, ctl.seed_refresh_token()));
    }
    // Slow answers keep cycles in flight, so that the kill lands in some.
    sb.inject(Fault::Latency {
        path_prefix: "/contacts".into(),
        delay: Duration::from_millis(300),
        times: 1_000_000,
    });
    let mut opts = Opts::new(accounts.clone());
    // A tick every 5 s: the 20 accounts' requests fit in a tick at 6/s (3.3 s), and the
    // replicas get through them on a busy machine too (on a 2 s tick, a loaded machine
    // never reached the last accounts: every new tick started again from the first).
    opts.contacts_cron = "*/5 * * * * *".into();
    opts.requests_per_second = 6.0;
    opts.max_concurrent_accounts = 3;
    opts.max_connections = 3;
    let conf = ConfigFile::new(&config(&sb, &db.url, &opts));
    let mut replicas = vec![spawn(&conf), spawn(&conf), spawn(&conf)];
    for r in &mut replicas {
        r.ready().await;
    }
    let all_synced = |at_least: i64| {
        let db = &db;
        async move {
            count(
                db,
                &format!(
                    "SELECT count(*) FROM (SELECT account_id FROM ccsync.sync_runs
                     WHERE outcome = 'succeeded' GROUP BY 1 HAVING count(*) >= {at_least}) s"
                ),
            )
            .await
                == ACCOUNTS as i64
        }
    };
    eventually(
        "every account synced twice",
        Duration::from_secs(90),
        || async { all_synced(2).await.then_some(()) },
    )
    .await;

    // Kill one replica mid-flight; subscribers keep changing data.
    replicas[0].kill();
    replicas[0].exit(Duration::from_secs(5)).await;
    let killed_at = db.now().await;
    for (name, _) in &accounts {
        sb.account(name)
            .create_contact(&format!("after-kill@{name}.example"), Some("New"), &[]);
    }
    eventually(
        "every account to see its new contact",
        Duration::from_secs(90),
        || async {
            let n = count(
                &db,
                "SELECT count(*) FROM ccsync.contacts WHERE email LIKE 'after-kill@%'",
            )
            .await;
            (n == ACCOUNTS as i64).then_some(())
        },
    )
    .await;
    // The survivors keep every account going: each has a successful run started after the
    // kill. (A run started just before the kill can already have fetched the post-kill
    // contact, since the latency fault sleeps before the handler answers; so this is waited
    // for, with a generous deadline, rather than checked once the contacts are in.)
    eventually(
        "every account to have a successful run started after the kill",
        Duration::from_secs(60),
        || async {
            let after_kill: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT account_id) FROM ccsync.sync_runs
                 WHERE outcome = 'succeeded' AND started_at > $1",
            )
            .bind(killed_at)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (after_kill == ACCOUNTS as i64).then_some(())
        },
    )
    .await;
    // Every cycle claimed before now ends: none the killed replica held is left behind.
    // (Claims made after this moment are the survivors' own, still running: not counted.)
    let cutoff = db.now().await;
    eventually(
        "every claim to be closed or taken over",
        Duration::from_secs(60),
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM ccsync.schedule_claims
                 WHERE finished_at IS NULL AND claimed_at <= $1",
            )
            .bind(cutoff)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (open == 0).then_some(())
        },
    )
    .await;
    for r in replicas.iter_mut().skip(1) {
        r.signal("TERM");
    }
    for r in replicas.iter_mut().skip(1) {
        let (code, _) = r.exit(Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "log:\n{}", r.log());
    }

    // The rate limit held across the three processes.
    assert_eq!(sb.throttled_count(), 0, "the sandbox answered throttled");
    // No (account, job, tick) ran twice.
    let doubled = count(
        &db,
        "SELECT count(*) FROM (SELECT 1 FROM ccsync.sync_runs
         WHERE scheduled_for IS NOT NULL AND outcome <> 'skipped'
         GROUP BY account_id, job, scheduled_for HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "a tick ran twice");
    // The work was shared and the survivors kept every account going after the kill.
    let replicas_used = count(
        &db,
        "SELECT count(DISTINCT replica) FROM ccsync.schedule_claims",
    )
    .await;
    assert!(replicas_used >= 2, "{replicas_used} replicas claimed ticks");
    let recovered = count(
        &db,
        "SELECT count(*) FROM ccsync.schedule_claims WHERE outcome = 'recovered'",
    )
    .await;
    eprintln!(
        "replicas: {replicas_used} claimed ticks; {recovered} abandoned cycle(s) taken over; {} requests",
        sb.requests().len()
    );
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let (db, sb, token) = setup(10).await;
    let conf = ConfigFile::new(&config(
        &sb,
        &db.url,
        &Opts::new(vec![("default".into(), token)]),
    ));
    // Play systemd: a notify socket, and a 2 s watchdog (pings expected every second).
    let sock_path = conf.dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut d = spawn_with(
        &conf,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let next = || {
        let sock = &sock;
        async move {
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
                .await
                .expect("a notification")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        }
    };
    // READY=1 comes first, but for watchdog pings: the watchdog loop is spawned just
    // before READY is sent, and on a busy machine its first ping can win the race.
    let first = loop {
        let m = next().await;
        if m.contains("READY=1") {
            break m;
        }
        assert_eq!(m.trim(), "WATCHDOG=1", "before READY=1");
    };
    assert!(first.contains("STATUS=running: 1 account(s)"), "{first}");
    let mut pings = 0;
    while pings < 2 {
        let m = next().await;
        assert!(!m.contains("STOPPING=1"), "{m}");
        pings += usize::from(m.contains("WATCHDOG=1"));
    }
    d.signal("TERM");
    let mut stopping = false;
    while !stopping {
        stopping = next().await.contains("STOPPING=1");
    }
    assert_eq!(d.exit(Duration::from_secs(15)).await.0, Some(0));
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn request_slots_are_evenly_spaced_across_processes() {
    use ccsync::ctct::limiter::SharedPacer;
    use ccsync::store::pacer::PgPacer;
    let db = TestDb::new().await;
    // Two "replicas" (separate pools) share one API key's slots at 10/s (one per 100 ms:
    // wide enough that waking up late on a busy machine stays within the tolerance below).
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await
        .unwrap();
    let a = Arc::new(PgPacer::new(db.pool.clone(), "key", 10.0).unwrap());
    let b = Arc::new(PgPacer::new(other.clone(), "key", 10.0).unwrap());
    assert!(
        PgPacer::new(db.pool.clone(), "key", 0.0).is_none(),
        "0 turns pacing off"
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let p = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            p.wait_turn().await.unwrap();
            start.elapsed()
        }));
    }
    let mut at = Vec::new();
    for t in tasks {
        at.push(t.await.unwrap());
    }
    at.sort();
    // Burst 1: any k+1 consecutive requests span at least k intervals, less the jitter of
    // waking up on a busy machine (the slots themselves are exact, see below).
    for i in 0..at.len() {
        for k in 1..at.len() - i {
            let span = at[i + k] - at[i];
            let floor =
                Duration::from_millis(100 * k as u64).saturating_sub(Duration::from_millis(60));
            assert!(span >= floor, "{k} intervals in {span:?}: {at:?}");
        }
    }
    assert!(at[19] >= Duration::from_millis(19 * 100 - 60), "{at:?}");
    // The slots claimed concurrently through both pools are exactly one interval apart.
    let mut claims = Vec::new();
    for i in 0..20 {
        let pool = if i % 2 == 0 {
            db.pool.clone()
        } else {
            other.clone()
        };
        claims.push(tokio::spawn(async move {
            ccsync::store::pacer::claim_slot(&pool, "slots", Duration::from_millis(20))
                .await
                .unwrap()
                .at
        }));
    }
    let mut slots = Vec::new();
    for c in claims {
        slots.push(c.await.unwrap());
    }
    slots.sort();
    for w in slots.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::milliseconds(20),
            "{slots:?}"
        );
    }
    // Another API key has slots of its own.
    let c = PgPacer::new(db.pool.clone(), "another key", 50.0).unwrap();
    assert_eq!(c.claim().await.unwrap(), Duration::ZERO);
    other.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_request_leaves_no_sooner_than_the_interval_after_the_one_before_it() {
    use ccsync::ctct::limiter::SharedPacer;
    use ccsync::store::pacer::PgPacer;
    let db = TestDb::new().await;
    let p = PgPacer::new(db.pool.clone(), "key", 10.0).unwrap();
    p.wait_turn().await.unwrap();
    let first = Instant::now();
    // The next slot is free at once, as it is to a request whose predecessor woke late
    // for its own slot: the slots say go, the last departure says wait.
    sqlx::query(
        "UPDATE ccsync.api_pacer SET next_slot_at = clock_timestamp() - interval '1 second'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    p.wait_turn().await.unwrap();
    let gap = first.elapsed();
    // 95 % of the 100 ms interval (the slack left for making up a late departure).
    assert!(
        gap >= Duration::from_millis(95),
        "left {gap:?} after the one before"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_failing_account_does_not_stop_the_others() {
    let (db, sb, good) = setup(40).await;
    let opts = Opts::new(vec![
        ("broken".into(), "rt.not-a-valid-token".into()),
        ("default".into(), good),
    ]);
    let conf = ConfigFile::new(&config(&sb, &db.url, &opts));
    let mut d = spawn(&conf);
    let base = d.ready().await;
    eventually(
        "the good account to sync twice while the broken one fails",
        Duration::from_secs(60),
        || async {
            let ok = count(&db, "SELECT count(*) FROM ccsync.sync_runs WHERE account_id = 'default' AND outcome = 'succeeded'").await;
            let failed = count(&db, "SELECT count(*) FROM ccsync.sync_runs WHERE account_id = 'broken' AND outcome = 'failed'").await;
            (ok >= 2 && failed >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM ccsync.contacts WHERE account_id = 'default'"
        )
        .await,
        40
    );
    // The refused refresh token is reported where operators look.
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("account broken needs re-authorisation"),
        "{body}"
    );
    assert!(!body.contains("account default"), "{body}");
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(15)).await.0, Some(0));
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn a_cycle_runs_its_jobs_in_order_and_pushes_after_fresh_pulls() {
    let (db, sb, token) = setup(30).await;
    let mut opts = Opts::new(vec![("default".into(), token)]);
    // Every job on the same two-second tick, through two scheduler entries (the strings
    // differ): one cycle per tick runs them all.
    opts.contacts_cron = "*/2 * * * * *".into();
    opts.others_cron = "0/2 * * * * *".into();
    opts.sync_extra = vec![("poll_initial", "100ms"), ("poll_max", "500ms")];
    let conf = ConfigFile::new(&config(&sb, &db.url, &opts));
    let list = sb.default_account().list_ids()[0];
    sqlx::query(
        "INSERT INTO ccsync.outbound (email, fields, list_ids)
         VALUES ('ada@example.com', '{\"first_name\": \"Ada\"}', ARRAY[$1]::uuid[])",
    )
    .bind(list)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut d = spawn(&conf);
    let base = d.ready().await;
    eventually(
        "the queued row to be pushed",
        Duration::from_secs(60),
        || async {
            (count(
                &db,
                "SELECT count(*) FROM ccsync.outbound WHERE state = 'completed'",
            )
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
    let m = eventually("push metrics", Duration::from_secs(30), || async {
        let (_, m) = get(&format!("{base}/metrics")).await;
        m.contains("ccsync_import_activity_duration_seconds_count")
            .then_some(m)
    })
    .await;
    for needle in [
        r#"ccsync_contacts_pushed_total{account="default"} 1"#,
        r#"ccsync_import_activity_duration_seconds_count{account="default",state="completed"} 1"#,
        r#"ccsync_runs_total{account="default",job="push",outcome="succeeded"}"#,
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(15)).await.0, Some(0));

    // Each scheduled push ran at the end of its tick's cycle, after the pulls, in order.
    let cycles: Vec<(chrono::DateTime<chrono::Utc>, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT scheduled_for, array_agg(job ORDER BY started_at), array_agg(outcome ORDER BY started_at)
         FROM ccsync.sync_runs WHERE scheduled_for IS NOT NULL
         GROUP BY scheduled_for HAVING bool_or(job = 'push') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(!cycles.is_empty());
    let doubled = count(
        &db,
        "SELECT count(*) FROM (SELECT 1 FROM ccsync.sync_runs WHERE scheduled_for IS NOT NULL
         GROUP BY job, scheduled_for HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "coincident entries ran a tick twice");
    for (tick, jobs, outcomes) in &cycles {
        assert_eq!(
            jobs,
            &["contacts", "unsubscribes", "lists", "push"],
            "cycle at {tick} (deletes are folded into the contacts pull): {outcomes:?}"
        );
        assert!(
            outcomes[..3].iter().all(|o| o == "succeeded"),
            "push ran after a failed pull at {tick}: {outcomes:?}"
        );
    }
    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}
