//! The binary as an operator runs it: exit codes, configuration errors naming the key,
//! secrets never printed, `sync` and `status` end to end.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use ccsync::sandbox::{Fault, Sandbox, SandboxConfig};

use crate::helpers::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_ccsync");

fn config_file(body: &str, mode: u32) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("ccsync.toml");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

/// A throwaway directory removed on drop.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p =
                std::env::temp_dir().join(format!("ccsync-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn ccsync(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("CCSYNC_CONFIG")
        .env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("CCSYNC__") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sandbox_config(sb: &Sandbox, db_url: &str, refresh_token: &str) -> String {
    let d = SandboxConfig::default();
    format!(
        r#"[database]
url = "{db_url}"
max_connections = 4

[constant_contact]
api_base = "{}"
token_url = "{}"
client_id = "{}"
client_secret = "{}"
requests_per_second = 0
retry_initial = "5ms"
retry_max = "20ms"
max_retries = 2

[[accounts]]
id = "default"
refresh_token = "{refresh_token}"
"#,
        sb.api_base(),
        sb.token_url(),
        d.client_id,
        d.client_secret
    )
}

#[tokio::test]
async fn a_bad_value_exits_78_and_names_the_key() {
    let (_d, path) = config_file("[sync]\npage_size = 900\n", 0o600);
    let o = ccsync(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("sync.page_size"), "{}", text(&o));

    let (_d, path) = config_file("[sync]\npage_size = \"lots\"\n", 0o600);
    let o = ccsync(&["status", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("page_size"), "{}", text(&o));

    let (_d, path) = config_file("[sync]\nlookback = \"30\"\n", 0o600);
    let o = ccsync(&["sync", "--config", path.to_str().unwrap()], &[]).await;
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
    let (_d, path) = config_file(
        "[constant_contact]\nclient_id = \"x\"\n[[accounts]]\nid = \"default\"\n",
        0o600,
    );
    let o = ccsync(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
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
    let (_d, path) = config_file(body, 0o600);
    let o = ccsync(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for s in ["dbpw-SECRET-1", "cs-SECRET-2", "rt-SECRET-3"] {
        assert!(!text(&o).contains(s), "{s} leaked: {}", text(&o));
    }
    let (_d, path) = config_file(body, 0o644);
    let o = ccsync(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("world-readable"), "{}", text(&o));
    assert!(!text(&o).contains("SECRET"), "{}", text(&o));
}

#[tokio::test]
async fn sync_then_status_end_to_end_through_the_binary() {
    let db = TestDb::new().await;
    let sb = Sandbox::start(SandboxConfig {
        contacts: 700,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let (_d, path) = config_file(
        &sandbox_config(&sb, &db.url, &sb.default_account().seed_refresh_token()),
        0o600,
    );
    let p = path.to_str().unwrap();
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
    let (_d, path) = config_file(
        "[database]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\nconnect_timeout = \"1s\"\n",
        0o600,
    );
    let o = ccsync(&["status", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("CCSYNC__DATABASE__URL"), "{}", text(&o));
}
