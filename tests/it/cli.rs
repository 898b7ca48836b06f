//! The binary as an operator runs it: exit codes, configuration errors naming the key,
//! secrets never printed, `sync` and `status` end to end.

use std::process::Output;

use ccsync::sandbox::{Fault, Sandbox};

use crate::helpers::{sandbox, text, Ccsync, ConfigFile, ConfigToml, TestDb};

/// `ccsync <args>` with `env` set, run to the end.
async fn ccsync(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Ccsync::with_args(args);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.output().await
}

/// The sandbox, the database and the default account, with at most two retries.
fn sandbox_config(sb: &Sandbox, db_url: &str, refresh_token: &str) -> String {
    ConfigToml::for_sandbox(sb, db_url)
        .set("constant_contact", "max_retries", 2u32)
        .account("default", Some(refresh_token))
        .render()
}

#[tokio::test]
async fn a_bad_value_exits_78_and_names_the_key() {
    let conf = ConfigFile::with_mode("[sync]\npage_size = 900\n", 0o600);
    let o = ccsync(&["check-config", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("sync.page_size"), "{}", text(&o));

    let conf = ConfigFile::with_mode("[sync]\npage_size = \"lots\"\n", 0o600);
    let o = ccsync(&["status", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("page_size"), "{}", text(&o));

    let conf = ConfigFile::with_mode("[sync]\nlookback = \"30\"\n", 0o600);
    let o = ccsync(&["sync", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("lookback"), "{}", text(&o));
}

#[tokio::test]
async fn environment_overrides_win_and_are_validated() {
    let o = ccsync(
        &["check-config"],
        &[("CCSYNC__SCHEDULE__DELETES", "every hour")],
    )
    .await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("schedule.deletes"), "{}", text(&o));
    let o = ccsync(
        &["check-config"],
        &[("CCSYNC__CONSTANT_CONTACT__DAILY_REQUEST_LIMIT", "0")],
    )
    .await;
    assert!(
        text(&o).contains("constant_contact.daily_request_limit"),
        "{}",
        text(&o)
    );
}

#[tokio::test]
async fn missing_file_missing_account_and_missing_secret_exit_78() {
    let o = ccsync(&["--config", "/nonexistent/ccsync.toml", "status"], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    let o = ccsync(&["check-config"], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("accounts"), "{}", text(&o));
    let conf = ConfigFile::with_mode(
        "[constant_contact]\nclient_id = \"x\"\n[[accounts]]\nid = \"default\"\n",
        0o600,
    );
    let o = ccsync(&["check-config", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(
        text(&o).contains("constant_contact.client_secret"),
        "{}",
        text(&o)
    );
}

#[tokio::test]
async fn secrets_are_never_printed_and_refused_in_world_readable_files() {
    let body = "[database]\nurl = \"postgres://u:dbpw-SECRET-1@localhost/x\"\n[constant_contact]\nclient_id = \"id\"\nclient_secret = \"cs-SECRET-2\"\n[[accounts]]\nid = \"default\"\nrefresh_token = \"rt-SECRET-3\"\n";
    let conf = ConfigFile::with_mode(body, 0o600);
    let o = ccsync(&["check-config", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for s in ["dbpw-SECRET-1", "cs-SECRET-2", "rt-SECRET-3"] {
        assert!(!text(&o).contains(s), "{s} leaked: {}", text(&o));
    }
    let conf = ConfigFile::with_mode(body, 0o644);
    let o = ccsync(&["check-config", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("world-readable"), "{}", text(&o));
    assert!(!text(&o).contains("SECRET"), "{}", text(&o));
}

#[tokio::test]
async fn sync_then_status_end_to_end_through_the_binary() {
    let db = TestDb::new().await;
    let sb = sandbox(700).await;
    let conf = ConfigFile::with_mode(
        &sandbox_config(&sb, &db.url, &sb.default_account().seed_refresh_token()),
        0o600,
    );
    let p = conf.path_str();
    // --config after the subcommand works too.
    let o = ccsync(&["sync", "--job", "contacts", "--config", p], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("created=700"), "{}", text(&o));
    let o = ccsync(&["--config", p, "status", "--json"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let job = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "contacts")
        .unwrap();
    assert!(job["watermark"].is_string());
    assert_eq!(job["last_outcome"], "succeeded");
    assert_eq!(v["api_requests_today"]["total"], 2);
    // The table form names the job too, and no token appears anywhere.
    let o = ccsync(&["--config", p, "status"], &[]).await;
    assert!(text(&o).contains("contacts"));
    let token: Option<String> = sqlx::query_scalar("SELECT refresh_token FROM ccsync.oauth_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!text(&o).contains(&token.unwrap()));
    // A failing job makes the exit code 1.
    sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 500,
        times: 100,
    });
    let o = ccsync(&["sync", "--job", "contacts", "--full", "--config", p], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED"), "{}", text(&o));
    sb.shutdown();
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_with_what_to_set() {
    let conf = ConfigFile::with_mode(
        "[database]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\nconnect_timeout = \"1s\"\n",
        0o600,
    );
    let o = ccsync(&["status", "--config", conf.path_str()], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("CCSYNC__DATABASE__URL"), "{}", text(&o));
}
