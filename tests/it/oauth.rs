//! OAuth lifecycle (issue 5): refresh before expiry and once on a 401, one token request
//! for concurrent refreshes, crash safety of rotation, `invalid_grant` pausing one account,
//! device and PKCE logins through the binary, tokens sealed at rest, no secret in logs.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use ccsync::ctct::auth::{Auth, OAuthClient};
use ccsync::ctct::oauth_flows::{self, FlowError};
use ccsync::sandbox::{Fault, RefreshTokenPolicy, Sandbox, SandboxConfig, TokenRateLimit};
use ccsync::store::tokens::{FaultPoint, PgTokenStore};
use ccsync::sync::{self, Job, Outcome};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    context, sandbox, sandbox_with, settings_for, text, Ccsync, ConfigFile, ConfigToml, Harness,
    TestDb,
};

const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";

// ---------------------------------------------------------------------------------------
// helpers

fn contacts_requests(sb: &Sandbox) -> Vec<ccsync::sandbox::RequestRecord> {
    sb.requests()
        .into_iter()
        .filter(|r| r.path == "/v3/contacts")
        .collect()
}

async fn stored_refresh_token(pool: &sqlx::PgPool, account: &str) -> Option<String> {
    sqlx::query_scalar("SELECT refresh_token FROM ccsync.oauth_tokens WHERE account_id = $1")
        .bind(account)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten()
}

async fn expire_stored_access(pool: &sqlx::PgPool) {
    sqlx::query(
        "UPDATE ccsync.oauth_tokens SET access_expires_at = now() - interval '1 hour',
                last_refresh_at = now() - interval '25 hours'",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn needs_reauth(pool: &sqlx::PgPool, account: &str) -> bool {
    sqlx::query_scalar("SELECT needs_reauth FROM ccsync.oauth_tokens WHERE account_id = $1")
        .bind(account)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(false)
}

/// A config file for the binary: the sandbox, the database, and accounts with optional seeds.
struct ChildConfig(ConfigFile);

impl ChildConfig {
    fn new(sb: &Sandbox, db_url: &str, accounts: &[(&str, Option<&str>)], extra: &str) -> Self {
        let mut c = ConfigToml::for_sandbox(sb, db_url)
            .set("constant_contact", "max_retries", 2u32)
            .raw(extra);
        for (id, rt) in accounts {
            c = c.account(id, *rt);
        }
        ChildConfig(c.write())
    }

    /// `ccsync --config <file> <args>` with `RUST_LOG=<rust_log>`.
    fn command(&self, args: &[&str], rust_log: &str) -> Ccsync {
        Ccsync::new().config(&self.0.path).args(args).log(rust_log)
    }

    async fn run(&self, args: &[&str], rust_log: &str) -> Output {
        self.command(args, rust_log).output().await
    }

    async fn run_with_stdin(&self, args: &[&str], rust_log: &str, stdin: &str) -> Output {
        self.command(args, rust_log).stdin(stdin).output().await
    }
}

/// Runs `auth login` (device flow), approving the printed user code through the sandbox's
/// HTTP control API. Returns everything the child printed.
async fn device_login_via_binary(
    cfg: &ChildConfig,
    sb: &Sandbox,
    account: &str,
    log: &str,
) -> String {
    let mut child = cfg
        .command(&["auth", "login", "--account", account], log)
        .spawn();
    let prompt = child
        .stdout_line("login prints its prompt", |l| l.contains("enter the code"))
        .await;
    let user_code = prompt
        .split("enter the code")
        .nth(1)
        .map(|code| code.trim().to_string())
        .unwrap_or_else(|| panic!("no user code in {prompt}"));
    let resp = reqwest::Client::new()
        .post(format!("http://{}/__control/oauth/device", sb.addr()))
        .json(&serde_json::json!({"user_code": user_code, "account": account}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = child.exit_status(Duration::from_secs(30)).await;
    let out = child.text();
    assert!(status.success(), "auth login failed:\n{out}");
    out
}

// ---------------------------------------------------------------------------------------
// refresh

#[tokio::test]
async fn an_access_token_expiring_mid_run_is_refreshed_before_use_and_the_run_continues() {
    let h = Harness::with(300, |s| s.sync.page_size = 20).await;
    h.sb.oauth().set_access_ttl(Duration::from_secs(3));
    // 15 pages of about 300 ms each: the run outlives several 3 s access tokens.
    h.sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(300),
        times: 100,
    });
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.contacts").await,
        300,
        "{stats}"
    );
    let reqs = contacts_requests(&h.sb);
    assert!(
        reqs.iter().all(|r| r.status == 200),
        "a request was rejected: {reqs:?}"
    );
    let tokens = h.sb.token_requests();
    // The first token plus at least two proactive refreshes, and never one per request.
    assert!(
        tokens >= 3,
        "only {tokens} token requests over {} pages",
        reqs.len()
    );
    assert!(
        (tokens as usize) < reqs.len() / 2,
        "{tokens} token requests for {} API requests",
        reqs.len()
    );
    h.finish().await;
}

#[tokio::test]
async fn a_401_mid_run_costs_exactly_one_refresh_and_one_retry() {
    let h = Harness::with(200, |s| s.sync.page_size = 20).await;
    h.sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(100),
        times: 100,
    });
    let (ctx, account) = (h.ctx.clone(), h.account().clone());
    let run = tokio::spawn(async move { sync::run_guarded(&ctx, &account, Job::Contacts).await });
    // Once three pages went through, the user revokes the access token in Constant Contact.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while contacts_requests(&h.sb).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pull did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tokens_at_revoke = h.sb.token_requests();
    h.sb.oauth().revoke_access_tokens("default");
    let report = run.await.unwrap();
    assert!(
        matches!(report.outcome, Outcome::Succeeded(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(h.count("SELECT count(*) FROM ccsync.contacts").await, 200);
    let reqs = contacts_requests(&h.sb);
    let rejected: Vec<usize> = (0..reqs.len()).filter(|i| reqs[*i].status == 401).collect();
    assert!(
        (1..=2).contains(&rejected.len()),
        "expected the page(s) in flight to be rejected once: {reqs:?}"
    );
    assert_eq!(
        h.sb.token_requests(),
        tokens_at_revoke + 1,
        "exactly one refresh"
    );
    for i in &rejected {
        // The rejected page is asked for again and answered.
        assert!(
            reqs[*i + 1..]
                .iter()
                .any(|r| r.query == reqs[*i].query && r.status == 200),
            "page {} was not retried",
            reqs[*i].query
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn two_pools_refreshing_at_once_make_exactly_one_token_request() {
    let h = Harness::new(5).await;
    // A slow token endpoint keeps the first refresh holding the lock while the second waits.
    h.sb.oauth().set_token_latency(Duration::from_millis(400));
    let pool2 = PgPoolOptions::new()
        .max_connections(4)
        .connect(&h.db.url)
        .await
        .unwrap();
    let ctx1 = h.new_context();
    let ctx2 = context(&h.settings, &pool2);
    let (c1, c2) = (ctx1.api.account("default"), ctx2.api.account("default"));
    let url = c1.api().endpoint("contact_lists").unwrap();
    let (a, b) = tokio::join!(c1.lists_page(url.clone()), c2.lists_page(url));
    assert!(a.is_ok() && b.is_ok(), "{:?} / {:?}", a.err(), b.err());
    assert_eq!(
        h.sb.token_requests(),
        1,
        "the second waiter reused the first's token"
    );
    // With strict rotation, a second exchange of the seed would have been refused: the
    // stored token is the one the single refresh returned, and it works.
    let stored = stored_refresh_token(&h.db.pool, "default").await.unwrap();
    assert!(h.sb.oauth().refresh_token_valid(&stored));
    pool2.close().await;
    h.finish().await;
}

#[tokio::test]
async fn two_processes_refreshing_at_once_make_exactly_one_token_request() {
    let db = TestDb::new().await;
    let sb = sandbox(30).await;
    sb.oauth().set_token_latency(Duration::from_millis(500));
    let seed = sb.default_account().seed_refresh_token();
    let cfg = ChildConfig::new(&sb, &db.url, &[("default", Some(&seed))], "");
    let (a, b) = tokio::join!(
        cfg.run(&["sync", "--job", "contacts"], "warn"),
        cfg.run(&["sync", "--job", "lists"], "warn"),
    );
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    assert_eq!(sb.token_requests(), 1, "{}\n{}", text(&a), text(&b));
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn long_lived_refresh_tokens_keep_working_and_are_recognised() {
    let h = Harness::new(5).await;
    h.sb.oauth()
        .set_refresh_policy(RefreshTokenPolicy::LongLived);
    h.run_ok(Job::Contacts).await;
    let first = stored_refresh_token(&h.db.pool, "default").await.unwrap();
    expire_stored_access(&h.db.pool).await;
    let ctx = h.new_context();
    let report = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(
        matches!(report.outcome, Outcome::Succeeded(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(h.sb.token_requests(), 2);
    assert_eq!(
        stored_refresh_token(&h.db.pool, "default").await.unwrap(),
        first
    );
    let kind: Option<String> = sqlx::query_scalar("SELECT refresh_kind FROM ccsync.oauth_tokens")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(kind.as_deref(), Some("long_lived"));
    h.finish().await;
}

#[tokio::test]
async fn the_token_endpoint_limit_is_waited_out_not_fatal() {
    let db = TestDb::new().await;
    let sb = sandbox_with(SandboxConfig {
        contacts: 3,
        token_rate_limit: Some(TokenRateLimit {
            per_second: 1.0,
            burst: 1,
        }),
        ..SandboxConfig::default()
    })
    .await;
    sb.account("second").generate(3, 1, 9);
    let settings = Arc::new(settings_for(
        &sb,
        &db.url,
        &[
            ("default", sb.default_account().seed_refresh_token()),
            ("second", sb.account("second").seed_refresh_token()),
        ],
    ));
    let ctx = context(&settings, &db.pool);
    let (c1, c2) = (ctx.api.account("default"), ctx.api.account("second"));
    let url = c1.api().endpoint("contact_lists").unwrap();
    let (a, b) = tokio::join!(c1.lists_page(url.clone()), c2.lists_page(url));
    assert!(a.is_ok() && b.is_ok(), "{:?} / {:?}", a.err(), b.err());
    assert!(
        sb.oauth().token_rate_limited() >= 1,
        "the limit was not hit"
    );
    sb.shutdown();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// crash safety

/// Runs the binary with the fault point that aborts after the token endpoint answered and
/// before the new pair is committed.
async fn crash_in_the_refresh_window(sb: &Sandbox, db: &TestDb, seed: &str) -> Output {
    let cfg = ChildConfig::new(sb, &db.url, &[("default", Some(seed))], "");
    let o = cfg
        .command(&["sync", "--job", "contacts"], "warn")
        .env("CCSYNC_TEST_FAULT", "token_abort_before_save")
        .output()
        .await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(6),
        "expected an abort: {}",
        text(&o)
    );
    o
}

#[tokio::test]
async fn a_crash_between_the_token_answer_and_the_commit_leaves_a_valid_refresh_token() {
    let h = Harness::new(20).await;
    h.sb.oauth()
        .set_refresh_policy(RefreshTokenPolicy::RotatingKeepPrevious);
    h.run_ok(Job::Contacts).await;
    let before = stored_refresh_token(&h.db.pool, "default").await.unwrap();
    expire_stored_access(&h.db.pool).await;
    let seed = h
        .account()
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string();
    let tokens = h.sb.token_requests();
    crash_in_the_refresh_window(&h.sb, &h.db, &seed).await;
    assert_eq!(
        h.sb.token_requests(),
        tokens + 1,
        "the token endpoint answered"
    );
    // Nothing was committed: the row still holds the token that was spent...
    assert_eq!(
        stored_refresh_token(&h.db.pool, "default").await.unwrap(),
        before
    );
    // ...which the server still honours, because its successor was never used.
    assert!(h.sb.oauth().refresh_token_valid(&before));
    // The next start refreshes with it and goes on.
    let ctx = h.new_context();
    let report = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(
        matches!(report.outcome, Outcome::Succeeded(_)),
        "{:?}",
        report.outcome
    );
    let after = stored_refresh_token(&h.db.pool, "default").await.unwrap();
    assert_ne!(after, before);
    assert!(!needs_reauth(&h.db.pool, "default").await);
    // Using the new token retires the old one.
    expire_stored_access(&h.db.pool).await;
    let ctx = h.new_context();
    let report = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(
        matches!(report.outcome, Outcome::Succeeded(_)),
        "{:?}",
        report.outcome
    );
    assert!(!h.sb.oauth().refresh_token_valid(&before));
    h.finish().await;
}

#[tokio::test]
async fn under_strict_rotation_a_crash_in_the_window_pauses_the_account_with_a_clear_message() {
    // What the API notes document for rotating tokens: the spent token dies at once. No
    // client can recover a pair it never stored; ccsync must then say so, not loop.
    let h = Harness::new(5).await;
    h.run_ok(Job::Contacts).await;
    expire_stored_access(&h.db.pool).await;
    let seed = h
        .account()
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string();
    crash_in_the_refresh_window(&h.sb, &h.db, &seed).await;
    let ctx = h.new_context();
    let report = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    match &report.outcome {
        Outcome::Failed(msg) => {
            assert!(msg.contains("ccsync auth login --account default"), "{msg}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(needs_reauth(&h.db.pool, "default").await);
    h.finish().await;
}

#[tokio::test]
async fn a_failed_commit_in_process_leaves_the_stored_pair_usable() {
    let h = Harness::new(5).await;
    h.sb.oauth()
        .set_refresh_policy(RefreshTokenPolicy::RotatingKeepPrevious);
    h.run_ok(Job::Contacts).await;
    expire_stored_access(&h.db.pool).await;
    let connect = ccsync::store::connect_options(&h.settings.database).unwrap();
    let oauth = OAuthClient {
        token_url: h.sb.token_url(),
        client_id: SandboxConfig::default().client_id,
        client_secret: Some(SecretString::from(SandboxConfig::default().client_secret)),
    };
    let faulty = Auth::new(
        reqwest::Client::new(),
        oauth.clone(),
        Arc::new(
            PgTokenStore::new(h.db.pool.clone(), connect.clone())
                .with_fault(Some(FaultPoint::ErrorBeforeSave)),
        ),
        Default::default(),
    );
    let err = faulty.access_token("default").await.unwrap_err();
    assert!(err.to_string().contains("token store"), "{err}");
    let healthy = Auth::new(
        reqwest::Client::new(),
        oauth,
        Arc::new(PgTokenStore::new(h.db.pool.clone(), connect).with_fault(None)),
        Default::default(),
    );
    healthy.access_token("default").await.unwrap();
    assert_eq!(h.sb.token_requests(), 3);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------
// invalid_grant

#[tokio::test]
async fn invalid_grant_pauses_that_account_and_the_others_go_on() {
    let db = TestDb::new().await;
    let sb = sandbox(10).await;
    sb.account("second").generate(7, 1, 3);
    let settings = Arc::new(settings_for(
        &sb,
        &db.url,
        &[
            ("default", sb.default_account().seed_refresh_token()),
            ("second", sb.account("second").seed_refresh_token()),
        ],
    ));
    // The user disconnected ccsync from the first account.
    sb.oauth().revoke_account("default");
    let ctx = context(&settings, &db.pool);
    let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
    let by = |a: &str| {
        reports
            .iter()
            .find(|r| r.account == a)
            .unwrap()
            .outcome
            .clone()
    };
    match by("default") {
        Outcome::Failed(msg) => {
            assert!(msg.contains("re-authoris"), "{msg}");
            assert!(msg.contains("ccsync auth login --account default"), "{msg}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(matches!(by("second"), Outcome::Succeeded(_)));
    assert!(needs_reauth(&db.pool, "default").await);
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ccsync.contacts WHERE account_id = 'second'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, 7);

    // `status` shows it...
    let st = ccsync::cmd::status::collect(&db.pool, &settings)
        .await
        .unwrap();
    let t = st["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["account_id"] == "default")
        .unwrap()
        .clone();
    assert_eq!(t["needs_reauth"], true);
    // ...and so does `auth status`.
    let cfg = ChildConfig::new(&sb, &db.url, &[("default", None), ("second", None)], "");
    let o = cfg.run(&["auth", "status", "--json"], "warn").await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["account"] == "default")
        .unwrap();
    assert_eq!(e["needs_reauth"], true);
    let o = cfg.run(&["auth", "status"], "warn").await;
    assert!(text(&o).contains("NEEDS RE-AUTHORISATION"), "{}", text(&o));

    // A paused account costs no more token requests.
    let tokens = sb.token_requests();
    let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
    assert!(reports
        .iter()
        .any(|r| r.account == "default" && r.outcome.is_failure()));
    assert_eq!(sb.token_requests(), tokens);

    // Importing a fresh refresh token (stdin) resumes it.
    let fresh = sb.default_account().seed_refresh_token();
    let o = cfg
        .run_with_stdin(
            &["auth", "import", "--account", "default"],
            "warn",
            &format!("{fresh}\n"),
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(&fresh));
    assert!(!needs_reauth(&db.pool, "default").await);
    let ctx = context(&settings, &db.pool);
    let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
    assert!(
        reports.iter().all(|r| !r.outcome.is_failure()),
        "{reports:?}"
    );
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn auth_import_rejects_an_empty_or_revoked_token() {
    let db = TestDb::new().await;
    let sb = sandbox(1).await;
    let cfg = ChildConfig::new(&sb, &db.url, &[("default", None)], "");
    let o = cfg
        .run_with_stdin(&["auth", "import", "--account", "default"], "warn", "")
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("stdin"), "{}", text(&o));
    let o = cfg
        .run_with_stdin(
            &["auth", "import", "--account", "default"],
            "warn",
            "rt.not-a-real-one",
        )
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("rejected"), "{}", text(&o));
    assert!(stored_refresh_token(&db.pool, "default").await.is_none());
    let o = cfg
        .run_with_stdin(&["auth", "import", "--account", "nobody"], "warn", "x")
        .await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    sb.shutdown();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// logins

#[tokio::test]
async fn device_login_through_the_binary_stores_tokens_the_jobs_use() {
    let db = TestDb::new().await;
    let sb = sandbox(12).await;
    sb.oauth().set_device_interval(Duration::from_secs(1));
    let cfg = ChildConfig::new(&sb, &db.url, &[("default", None)], "");
    let out = device_login_via_binary(&cfg, &sb, "default", "warn").await;
    assert!(out.contains("is authorised"), "{out}");
    assert!(sb.oauth().grants(oauth_flows::DEVICE_GRANT) >= 1);
    assert!(stored_refresh_token(&db.pool, "default").await.is_some());
    // The jobs use the stored pair: no refresh is needed.
    let mut s = settings_for(&sb, &db.url, &[("default", String::new())]);
    s.accounts[0].refresh_token = None;
    let settings = Arc::new(s);
    let ctx = context(&settings, &db.pool);
    let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
    assert!(
        matches!(reports[0].outcome, Outcome::Succeeded(_)),
        "{reports:?}"
    );
    assert_eq!(sb.oauth().grants("refresh_token"), 0);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ccsync.contacts")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        12
    );
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn device_login_reports_denial_and_expiry() {
    let sb = sandbox(0).await;
    sb.oauth().set_device_interval(Duration::from_secs(1));
    let d = SandboxConfig::default();
    let oauth = OAuthClient {
        token_url: sb.token_url(),
        client_id: d.client_id,
        client_secret: None,
    };
    let http = reqwest::Client::new();
    let cancel = CancellationToken::new();
    let ctl = sb.oauth();
    let denied = oauth_flows::device_login(
        &http,
        &oauth,
        &sb.device_authorization_url(),
        |p: &oauth_flows::DevicePrompt| assert!(ctl.deny_device(&p.user_code)),
        &cancel,
    )
    .await;
    assert!(matches!(denied, Err(FlowError::Denied)), "{denied:?}");
    let expired = oauth_flows::device_login(
        &http,
        &oauth,
        &sb.device_authorization_url(),
        |_: &oauth_flows::DevicePrompt| ctl.expire_device_codes(),
        &cancel,
    )
    .await;
    assert!(matches!(expired, Err(FlowError::Expired)), "{expired:?}");
    // Approved as a public client (no secret): a refresh token comes back.
    let ok = oauth_flows::device_login(
        &http,
        &oauth,
        &sb.device_authorization_url(),
        |p: &oauth_flows::DevicePrompt| assert!(ctl.approve_device(&p.user_code, "default")),
        &cancel,
    )
    .await
    .unwrap();
    assert!(ok.refresh_token.is_some());
    sb.shutdown();
}

#[tokio::test]
async fn browser_login_with_pkce_through_the_binary() {
    let db = TestDb::new().await;
    let sb = sandbox(3).await;
    sb.oauth().set_auto_approve(Some("default"));
    let cfg = ChildConfig::new(&sb, &db.url, &[("default", None)], "");
    let mut child = cfg
        .command(
            &["auth", "login", "--account", "default", "--browser"],
            "warn",
        )
        .spawn();
    let url = child
        .stdout_line("an authorization URL", |l| {
            l.trim_start().starts_with("http://")
        })
        .await
        .trim()
        .to_string();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("offline_access"), "{url}");
    // The "browser": follows the sandbox's redirect to the loopback listener.
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("authorised"));
    let (status, _) = child.exit_status(Duration::from_secs(30)).await;
    assert!(status.success());
    assert_eq!(sb.oauth().grants("authorization_code"), 1);
    assert!(stored_refresh_token(&db.pool, "default").await.is_some());
    sb.shutdown();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// at rest

#[tokio::test]
async fn tokens_are_sealed_at_rest_and_survive_a_key_rotation() {
    let h = Harness::with(5, |s| {
        s.security.token_key = Some(SecretString::from(KEY_A.to_string()));
    })
    .await;
    h.run_ok(Job::Contacts).await;
    let (access, refresh, encrypted): (String, String, bool) =
        sqlx::query_as("SELECT access_token, refresh_token, encrypted FROM ccsync.oauth_tokens")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(encrypted);
    assert!(access.starts_with("v1.") && refresh.starts_with("v1."));
    for secret in h.sb.oauth().secrets() {
        assert!(!access.contains(&secret) && !refresh.contains(&secret));
    }
    let key_a_id = refresh.split('.').nth(1).unwrap().to_string();

    // Without the key the row cannot be used, and the error says what to configure.
    expire_stored_access(&h.db.pool).await;
    let mut no_key = (*h.settings).clone();
    no_key.security.token_key = None;
    let ctx = context(&Arc::new(no_key), &h.db.pool);
    let report = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    match &report.outcome {
        Outcome::Failed(m) => assert!(m.contains("no key is configured"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Rotation: the new key first, the old one below; the next refresh re-seals the row.
    let mut rotated = (*h.settings).clone();
    rotated.security.token_key = Some(SecretString::from(format!("{KEY_B}\n{KEY_A}\n")));
    let ctx = context(&Arc::new(rotated), &h.db.pool);
    let report = sync::run_guarded(&ctx, h.account(), Job::Contacts).await;
    assert!(
        matches!(report.outcome, Outcome::Succeeded(_)),
        "{:?}",
        report.outcome
    );
    let refresh: String = sqlx::query_scalar("SELECT refresh_token FROM ccsync.oauth_tokens")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    let new_id = refresh.split('.').nth(1).unwrap();
    assert_ne!(new_id, key_a_id);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------
// secrets

#[tokio::test]
async fn no_secret_reaches_the_output_at_trace_level() {
    let db = TestDb::new().await;
    let sb = sandbox(40).await;
    sb.oauth().set_device_interval(Duration::from_secs(1));
    let seed2 = sb.account("second").seed_refresh_token();
    sb.account("second").generate(5, 1, 1);
    let cfg = ChildConfig::new(&sb, &db.url, &[("default", None), ("second", None)], "");
    let mut out = String::new();
    // Device login, then a browser (PKCE) login for the same account.
    out.push_str(&device_login_via_binary(&cfg, &sb, "default", "trace").await);
    sb.oauth().set_auto_approve(Some("default"));
    {
        let mut child = cfg
            .command(
                &["auth", "login", "--account", "default", "--browser"],
                "trace",
            )
            .spawn();
        let url = child
            .stdout_line("an authorization URL", |l| {
                l.trim_start().starts_with("http://")
            })
            .await;
        reqwest::get(url.trim()).await.unwrap();
        let (status, _) = child.exit_status(Duration::from_secs(30)).await;
        out.push_str(&child.text());
        assert!(status.success(), "{out}");
    }
    // Import (stdin), a sync with a forced refresh and a 401, and every status view.
    let o = cfg
        .run_with_stdin(&["auth", "import", "--account", "second"], "trace", &seed2)
        .await;
    assert!(o.status.success(), "{}", text(&o));
    out.push_str(&text(&o));
    expire_stored_access(&db.pool).await;
    sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 401,
        times: 1,
    });
    for args in [
        &["sync", "--job", "contacts"][..],
        &["auth", "status", "--json"],
        &["auth", "status"],
        &["status", "--json"],
        &["status"],
        &["check-config"],
    ] {
        let o = cfg.run(args, "trace").await;
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        out.push_str(&text(&o));
    }
    assert!(
        out.contains("TRACE") || out.contains("DEBUG"),
        "trace logging was not on"
    );
    assert!(
        out.contains("plain text"),
        "check-config warns about plain storage"
    );
    let secrets = sb.oauth().secrets();
    assert!(secrets.len() >= 8, "{} secrets recorded", secrets.len());
    for s in &secrets {
        assert!(s.len() >= 8);
        assert!(!out.contains(s.as_str()), "a secret leaked into the output");
    }
    // The user code is for the user and is printed; the device code is not.
    assert!(out.contains("enter the code"));
    sb.shutdown();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// the sandbox's authorization server over HTTP

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    basic: bool,
    form: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let d = SandboxConfig::default();
    let mut req = http.post(url).form(form);
    if basic {
        req = req.basic_auth(&d.client_id, Some(&d.client_secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn the_sandbox_authorization_server_enforces_pkce_single_use_codes_slow_down_and_revocation()
{
    let sb = sandbox_with(SandboxConfig {
        contacts: 0,
        token_rate_limit: None,
        ..SandboxConfig::default()
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let d = SandboxConfig::default();
    sb.oauth().set_auto_approve(Some("default"));
    let pkce = oauth_flows::Pkce::generate();
    let redirect = "http://127.0.0.1:9/callback";
    let url = oauth_flows::authorization_url(
        &sb.authorize_url(),
        &d.client_id,
        redirect,
        "st-1",
        &pkce.challenge,
    )
    .unwrap();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st-1");
    let code = q["code"].clone();
    let token = sb.token_url();
    // A wrong verifier fails, and the code is spent by that attempt.
    let (s, b) = post_form(
        &http,
        &token,
        false,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &d.client_id),
            ("code", &code),
            ("redirect_uri", redirect),
            (
                "code_verifier",
                "not-the-verifier-but-long-enough-to-count-0123456789",
            ),
        ],
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
    let (s, b) = post_form(
        &http,
        &token,
        false,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &d.client_id),
            ("code", &code),
            ("redirect_uri", redirect),
            ("code_verifier", pkce.verifier.expose_secret()),
        ],
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "single use"
    );
    // A redirect that is not loopback is refused outright.
    let bad = url.replace("127.0.0.1%3A9", "evil.example");
    assert_eq!(http.get(&bad).send().await.unwrap().status(), 400);

    // Device flow: polling faster than the interval gets slow_down.
    sb.oauth().set_auto_approve(None);
    let (s, dev) = post_form(
        &http,
        &sb.device_authorization_url(),
        false,
        &[("client_id", &d.client_id), ("scope", oauth_flows::SCOPE)],
    )
    .await;
    assert_eq!(s, 200, "{dev}");
    assert_eq!(dev["interval"], 5);
    let poll = [
        ("grant_type", oauth_flows::DEVICE_GRANT),
        ("client_id", d.client_id.as_str()),
        ("device_code", dev["device_code"].as_str().unwrap()),
    ];
    let (_, b) = post_form(&http, &token, false, &poll).await;
    assert_eq!(b["error"], "authorization_pending");
    let (_, b) = post_form(&http, &token, false, &poll).await;
    assert_eq!(b["error"], "slow_down");
    // The user approves on the verification page.
    let page = http
        .get(dev["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let resp = http
        .post(dev["verification_uri"].as_str().unwrap())
        .form(&[
            ("user_code", dev["user_code"].as_str().unwrap()),
            ("account", "default"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, b) = post_form(&http, &token, false, &poll).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["refresh_token"].is_string());
    let (_, b) = post_form(&http, &token, false, &poll).await;
    assert_eq!(b["error"], "invalid_grant", "a device code is used once");

    // Revocation (RFC 7009) of a refresh token.
    let rt = sb.default_account().seed_refresh_token();
    let resp = http
        .post(format!("http://{}/oauth2/default/v1/revoke", sb.addr()))
        .basic_auth(&d.client_id, Some(&d.client_secret))
        .form(&[("token", rt.as_str()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, b) = post_form(
        &http,
        &token,
        true,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
    // Without offline_access there is no refresh token.
    sb.oauth().set_auto_approve(Some("default"));
    let (_, dev) = post_form(
        &http,
        &sb.device_authorization_url(),
        true,
        &[("scope", "contact_data")],
    )
    .await;
    let (s, b) = post_form(
        &http,
        &token,
        true,
        &[
            ("grant_type", oauth_flows::DEVICE_GRANT),
            ("device_code", dev["device_code"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("refresh_token").is_none());
    sb.shutdown();
}

#[tokio::test]
async fn check_config_warns_without_a_key_and_rejects_a_bad_one() {
    let sb = sandbox(0).await;
    let url = "postgres://postgres@127.0.0.1:5432/unused";
    let plain = ChildConfig::new(&sb, url, &[("default", None)], "");
    let o = plain.run(&["check-config"], "warn").await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("plain text"), "{}", text(&o));

    let missing = ChildConfig::new(
        &sb,
        url,
        &[("default", None)],
        "[security]\ntoken_key_file = \"/nonexistent/ccsync/token_key\"\n",
    );
    let o = missing.run(&["check-config"], "warn").await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("security.token_key_file"), "{}", text(&o));

    let key_path = plain.0.dir.join("token_key");
    std::fs::write(&key_path, format!("{KEY_A}\n")).unwrap();
    let keyed = ChildConfig::new(
        &sb,
        url,
        &[("default", None)],
        &format!("[security]\ntoken_key_file = \"{}\"\n", key_path.display()),
    );
    let o = keyed.run(&["check-config"], "warn").await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("plain text"), "{}", text(&o));
    assert!(!text(&o).contains(KEY_A), "the key is never printed");
    sb.shutdown();
}
