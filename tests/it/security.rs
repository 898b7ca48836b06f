//! Security checks: no secret in a whole demo cycle's output at `trace` level, the sandbox's
//! loopback-only bind, https for remote endpoints, tokens sealed at rest as the systemd unit
//! and the compose file deploy them, and the unit's `systemd-analyze security` exposure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccsync::crypto::TokenCipher;
use ccsync::sandbox::SandboxConfig;

use crate::helpers::{sandbox, text, Ccsync, ConfigFile, ConfigToml, TestDb};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn is_b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Every substring shaped like a token the sandbox mints: refresh tokens `rt.<43 base64url>`
/// and JWT-shaped access tokens `eyJ<header>.<payload>.<signature>`.
fn token_shapes(out: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes: Vec<char> = out.chars().collect();
    let run = |from: usize| bytes[from..].iter().take_while(|c| is_b64url(**c)).count();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let starts_word = i == 0 || !(is_b64url(bytes[i - 1]) || bytes[i - 1] == '.');
        if rest.starts_with(&['r', 't', '.']) && starts_word {
            let n = run(i + 3);
            if n >= 40 {
                found.push(bytes[i..i + 3 + n].iter().collect());
            }
        }
        if rest.starts_with(&['e', 'y', 'J']) && starts_word {
            let n = run(i);
            if n >= 10 && bytes.get(i + n) == Some(&'.') && run(i + n + 1) >= 10 {
                found.push(bytes[i..i + n + 1 + run(i + n + 1)].iter().collect());
            }
        }
        i += 1;
    }
    found
}

#[test]
fn the_token_shape_scanner_finds_what_the_sandbox_mints() {
    let rt = format!("rt.{}", "A1b2_-".repeat(8));
    let jwt = "eyJraWQiOiJzYW5kYm94In0.eyJ2ZXIiOjEsInN1YiI6ImRlbW8ifQ.c2lnbmF0dXJl";
    let log = format!("refresh ok token={rt} access=\"{jwt}\" (rt.short, eyJ.not)");
    let found = token_shapes(&log);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0] == rt && jwt.starts_with(found[1].as_str()),
        "{found:?}"
    );
    assert!(token_shapes("support.rt.example, eyJunk, nothing here").is_empty());
}

/// A whole `ccsync demo` (pull, opt-outs, lists, then the push with its write path: a PUT,
/// an unsubscribe, a removal from a list, a delete, and imports), everything at `trace`:
/// no token the run stored, no token shape at all, no client secret in stdout or stderr.
#[tokio::test]
async fn a_demo_cycle_at_trace_level_prints_no_token_or_secret() {
    let db = TestDb::new().await;
    // A password in the database URL (the test server trusts local connections and ignores
    // it): one more secret the output must not show.
    let db_password = "Db-Pa55word-7f3e9";
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some(db_password)).unwrap();
    let out = Ccsync::with_args(["demo", "--contacts", "200"])
        .log("trace")
        .env("CCSYNC__DATABASE__URL", url.as_str())
        .output()
        .await;
    let all = text(&out);
    let tail: String = all.lines().rev().take(60).collect::<Vec<_>>().join("\n");
    assert!(
        out.status.success(),
        "the demo failed; its last lines:\n{tail}"
    );
    assert!(
        all.contains("TRACE") && all.contains("DEBUG"),
        "trace logging was not on"
    );
    assert!(all.contains("summary: every queued row ended in a terminal state"));
    eprintln!(
        "the demo printed {} lines at trace level",
        all.lines().count()
    );
    // The demo went through the whole write path and every row ended completed.
    let by_op: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT op, state, count(*) FROM ccsync.outbound WHERE account_id = 'demo'
         GROUP BY op, state ORDER BY op, state",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for op in ["upsert", "unsubscribe", "remove_from_lists", "delete"] {
        assert!(
            by_op
                .iter()
                .any(|(o, s, n)| o == op && s == "completed" && *n > 0),
            "no completed `{op}` row: {by_op:?}"
        );
    }
    assert_eq!(
        db.count(
            "SELECT count(*) FROM ccsync.outbound WHERE account_id = 'demo'
             AND fields->>'company_name' = 'Field-only Ltd' AND state = 'completed'"
        )
        .await,
        1,
        "the field-only row went through GET + PUT"
    );
    // The tokens the demo was given and kept (its store has no key: plain text there).
    let (access, refresh, encrypted): (Option<String>, Option<String>, bool) = sqlx::query_as(
        "SELECT access_token, refresh_token, encrypted FROM ccsync.oauth_tokens
         WHERE account_id = 'demo'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!encrypted, "the demo configures no token key");
    let (access, refresh) = (access.unwrap(), refresh.unwrap());
    assert!(refresh.starts_with("rt.") && access.starts_with("eyJ"));
    for (what, secret) in [
        ("the access token", access.as_str()),
        ("the refresh token", refresh.as_str()),
        ("the client secret", &SandboxConfig::default().client_secret),
        ("the database password", db_password),
    ] {
        assert!(!all.contains(secret), "{what} reached the demo's output");
    }
    // Earlier tokens of the run (the seed, rotated ones) are gone from the store: no
    // string shaped like any token the sandbox mints may appear.
    let shapes = token_shapes(&all);
    assert!(
        shapes.is_empty(),
        "{} token-shaped strings in the output, e.g. {:.12}…",
        shapes.len(),
        shapes[0]
    );
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// the sandbox binds loopback unless told otherwise

#[tokio::test]
async fn the_sandbox_refuses_a_non_loopback_bind_without_allow_remote() {
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8765"] {
        let out = Ccsync::with_args(["sandbox", "--listen", addr, "--contacts", "1"])
            .output()
            .await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{addr}: {t}");
        assert!(
            t.contains("refusing to listen on") && t.contains("--allow-remote"),
            "{addr}: {t}"
        );
        assert!(!t.contains("refresh_token:"), "{addr}: it started: {t}");
    }
}

/// The port of a sandbox child's `api_base: http://<addr>/v3` line.
async fn sandbox_port(child: &crate::helpers::ChildProcess) -> u16 {
    let line = child
        .stdout_line("the sandbox's api_base line", |l| {
            l.starts_with("api_base:")
        })
        .await;
    let url = url::Url::parse(line.trim_start_matches("api_base:").trim()).unwrap();
    url.port().unwrap()
}

#[tokio::test]
async fn the_sandbox_binds_loopback_freely_and_any_address_with_allow_remote() {
    for args in [
        &["--listen", "127.0.0.1:0"][..],
        &["--listen", "0.0.0.0:0", "--allow-remote"],
    ] {
        let mut child = Ccsync::with_args(["sandbox", "--contacts", "1"])
            .args(args)
            .spawn();
        let port = sandbox_port(&child).await;
        let resp = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{args:?}: {}", resp.status());
        // It prints its seed refresh token on purpose: the scanner the demo test relies on
        // finds it in a real process's output.
        child
            .stdout_line("the seed token line", |l| l.starts_with("refresh_token:"))
            .await;
        assert_eq!(token_shapes(&child.text()).len(), 1, "{}", child.text());
        child.kill();
        child.wait_for_exit(Duration::from_secs(30)).await;
    }
}

// ---------------------------------------------------------------------------------------
// https for endpoints that are not loopback

async fn check_config(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let cfg = ConfigFile::new(toml);
    let mut c = Ccsync::with_args(["check-config"]).config(&cfg.path);
    for (k, v) in env {
        c = c.env(k, v);
    }
    let out = c.output().await;
    (out.status.code(), text(&out))
}

fn endpoints(api_base: &str, token_url: &str, extra: &str) -> String {
    format!(
        "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/x\"\n\n\
         [constant_contact]\napi_base = \"{api_base}\"\ntoken_url = \"{token_url}\"\n\
         client_id = \"id\"\nclient_secret = \"s3cret-value\"\n{extra}\n\
         [[accounts]]\nid = \"default\"\n"
    )
}

#[tokio::test]
async fn plain_http_to_a_remote_host_exits_78_naming_the_key_unless_insecure_http() {
    let tls = "https://authz.example.com/oauth2/default/v1/token";
    let api = "https://api.example.com/v3";
    // Refused: plain http anywhere but loopback (including look-alikes of localhost).
    for (api_base, token_url, key) in [
        ("http://sandbox:8765/v3", tls, "constant_contact.api_base"),
        (
            "http://localhost.example.com/v3",
            tls,
            "constant_contact.api_base",
        ),
        ("http://10.0.0.5:8765/v3", tls, "constant_contact.api_base"),
        (
            api,
            "http://sandbox:8765/token",
            "constant_contact.token_url",
        ),
    ] {
        let (code, t) = check_config(&endpoints(api_base, token_url, ""), &[]).await;
        assert_eq!(code, Some(78), "{api_base} {token_url}: {t}");
        assert!(t.contains(key) && t.contains("https"), "{key}: {t}");
        assert!(
            t.contains("insecure_http"),
            "the message names the way out: {t}"
        );
        assert!(!t.contains("s3cret-value"), "{t}");
    }
    // Allowed: https anywhere, http on loopback, http anywhere with insecure_http on (in
    // the file, or as compose sets it, in the environment).
    for (api_base, token_url, extra, env) in [
        (api, tls, "", &[][..]),
        (
            "http://127.0.0.1:8765/v3",
            "http://localhost:8765/token",
            "",
            &[][..],
        ),
        (
            "http://[::1]:8765/v3",
            "http://127.0.0.2/token",
            "",
            &[][..],
        ),
        (
            "http://sandbox:8765/v3",
            "http://sandbox:8765/token",
            "insecure_http = true\n",
            &[][..],
        ),
        (
            "http://sandbox:8765/v3",
            "http://sandbox:8765/token",
            "",
            &[("CCSYNC__CONSTANT_CONTACT__INSECURE_HTTP", "true")][..],
        ),
    ] {
        let (code, t) = check_config(&endpoints(api_base, token_url, extra), env).await;
        assert_eq!(code, Some(0), "{api_base} {token_url} {extra} {env:?}: {t}");
        assert!(t.contains("configuration OK"), "{t}");
    }
    // A wrong type for the new key is a configuration error naming it.
    let (code, t) =
        check_config(&endpoints(api, tls, "insecure_http = \"sometimes\"\n"), &[]).await;
    assert_eq!(code, Some(78), "{t}");
    assert!(t.contains("insecure_http"), "{t}");
}

// ---------------------------------------------------------------------------------------
// tokens sealed at rest in the deployments

/// `Key=value` lines of a unit file (comments and sections dropped).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_systemd_unit_loads_a_token_key_that_its_companion_generates() {
    let unit = unit_settings(&read_repo_file("systemd/ccsync.service"));
    let creds = values(&unit, "LoadCredential");
    let key_path = creds
        .iter()
        .find_map(|c| c.strip_prefix("token_key:"))
        .unwrap_or_else(|| panic!("no LoadCredential=token_key:… in {creds:?}"));
    assert!(key_path.starts_with("/etc/ccsync/secrets/"), "{key_path}");
    // The credential's name is the one crypto.rs reads from $CREDENTIALS_DIRECTORY, and no
    // setting points the daemon at another key source that would win over it.
    assert!(ccsync::crypto::CREDENTIAL_NAME == "token_key");
    assert!(values(&unit, "Environment")
        .iter()
        .all(|e| !e.contains("CCSYNC__SECURITY__")));
    let companion = "ccsync-token-key.service";
    assert!(values(&unit, "Requires")
        .iter()
        .any(|v| v.contains(companion)));
    assert!(values(&unit, "After").iter().any(|v| v.contains(companion)));

    let keygen = unit_settings(&read_repo_file(&format!("systemd/{companion}")));
    assert_eq!(
        values(&keygen, "ConditionPathExists"),
        [format!("!{key_path}").as_str()],
        "it runs only while the key is missing, so an existing key is never replaced"
    );
    assert_eq!(values(&keygen, "Type"), ["oneshot"]);
    assert_eq!(values(&keygen, "UMask"), ["0077"]);
    // Its command, run for real into a scratch directory, writes a key ccsync accepts,
    // readable by its owner only, different each time.
    let exec = values(&keygen, "ExecStart");
    let script = exec[0]
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("ExecStart is not /bin/sh -c '…': {exec:?}"));
    assert!(script.contains(key_path), "{script}");
    let dir = std::env::temp_dir().join(format!("ccsync-keygen-{}", uuid::Uuid::new_v4().simple()));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let _ = std::fs::remove_dir_all(&dir);
        let scratch = script.replace("/etc/ccsync/secrets", dir.to_str().unwrap());
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("umask 0077; {scratch}")])
            .status()
            .unwrap();
        assert!(status.success());
        let file = dir.join(Path::new(key_path).file_name().unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        let cipher = TokenCipher::from_key_text(&text, "generated").unwrap();
        ids.push(cipher.current_key_id().to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    assert_ne!(ids[0], ids[1], "two runs made the same key");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service's block of deploy/compose.yaml: its line and the deeper-indented ones after it.
fn compose_service<'a>(compose: &'a str, name: &str) -> &'a str {
    let head = format!("\n  {name}:\n");
    let start = compose
        .find(&head)
        .unwrap_or_else(|| panic!("no service {name}"))
        + head.len();
    let mut end = start;
    for line in compose[start..].split_inclusive('\n') {
        if !(line.trim().is_empty() || line.starts_with("    ")) {
            break;
        }
        end += line.len();
    }
    &compose[start..end]
}

#[test]
fn the_compose_file_seals_tokens_and_names_its_plain_http_and_remote_sandbox() {
    let compose = read_repo_file("deploy/compose.yaml");
    let daemon = compose_service(&compose, "ccsync");
    assert!(daemon.contains("CCSYNC__SECURITY__TOKEN_KEY_FILE: /run/secrets/token_key"));
    assert!(daemon.contains("secrets: [db_password, client_secret, token_key]"));
    assert!(daemon.contains("CCSYNC__CONSTANT_CONTACT__INSECURE_HTTP: \"true\""));
    assert!(daemon.contains("CCSYNC__CONSTANT_CONTACT__API_BASE: http://sandbox:8765/v3"));
    assert!(compose.contains("  token_key:\n    file: ./secrets/token_key\n"));
    assert!(
        compose.contains("> secrets/token_key"),
        "the setup steps generate the key"
    );
    let sb = compose_service(&compose, "sandbox");
    assert!(sb.contains("\"0.0.0.0:8765\", \"--allow-remote\""), "{sb}");
    assert!(!daemon.contains("--allow-remote") && !daemon.contains("0.0.0.0:8765"));
}

/// The daemon configured as compose configures it (endpoints, client secret and token key
/// file from `CCSYNC__*` variables, the key a generated file) seals both tokens at rest:
/// `v1.<key id>.…`, `encrypted`, and no token the sandbox issued appears in the row.
#[tokio::test]
async fn a_daemon_with_the_compose_environment_stores_sealed_tokens() {
    let db = TestDb::new().await;
    let sb = sandbox(20).await;
    let seed = sb.account("default").seed_refresh_token();
    let secrets = ConfigFile::new("");
    let key_file = secrets.dir.join("token_key");
    let key = std::process::Command::new("openssl")
        .args(["rand", "-base64", "32"])
        .output()
        .unwrap();
    assert!(
        key.status.success(),
        "openssl rand (the compose setup step)"
    );
    std::fs::write(&key_file, &key.stdout).unwrap();
    let key_id = TokenCipher::from_key_text(&String::from_utf8(key.stdout).unwrap(), "k")
        .unwrap()
        .current_key_id()
        .to_string();
    let secret_file = secrets.dir.join("client_secret");
    std::fs::write(&secret_file, SandboxConfig::default().client_secret).unwrap();
    let cfg = ConfigToml::new()
        .set("database", "max_connections", 4u32)
        .set("constant_contact", "requests_per_second", 0u32)
        .account("default", None)
        .write();
    let compose_env = |c: Ccsync| {
        c.config(&cfg.path)
            .env("CCSYNC__DATABASE__URL", &db.url)
            .env("CCSYNC__CONSTANT_CONTACT__API_BASE", sb.api_base())
            .env("CCSYNC__CONSTANT_CONTACT__TOKEN_URL", sb.token_url())
            .env("CCSYNC__CONSTANT_CONTACT__INSECURE_HTTP", "true")
            .env(
                "CCSYNC__CONSTANT_CONTACT__CLIENT_ID",
                SandboxConfig::default().client_id,
            )
            .env("CCSYNC__CONSTANT_CONTACT__CLIENT_SECRET_FILE", &secret_file)
            .env("CCSYNC__SECURITY__TOKEN_KEY_FILE", &key_file)
    };
    // The compose steps: `auth import` with the seed on stdin, then the daemon's work.
    let o = compose_env(Ccsync::with_args([
        "auth",
        "import",
        "--account",
        "default",
    ]))
    .stdin(&seed)
    .output()
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let o = compose_env(Ccsync::with_args(["sync", "--job", "contacts"]))
        .output()
        .await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        db.count("SELECT count(*) FROM ccsync.contacts").await,
        20,
        "the sync used the sealed tokens"
    );
    let o = compose_env(Ccsync::with_args(["check-config"]))
        .output()
        .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("plain text"), "{}", text(&o));

    let (access, refresh, encrypted): (String, String, bool) = sqlx::query_as(
        "SELECT access_token, refresh_token, encrypted FROM ccsync.oauth_tokens
         WHERE account_id = 'default'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(encrypted);
    let prefix = format!("v1.{key_id}.");
    assert!(access.starts_with(&prefix), "{:.12}", access);
    assert!(refresh.starts_with(&prefix), "{:.12}", refresh);
    let issued = sb.oauth().secrets();
    assert!(
        issued.len() >= 3,
        "seed, a rotated refresh token, an access token"
    );
    for s in &issued {
        assert!(!access.contains(s.as_str()) && !refresh.contains(s.as_str()));
    }
    sb.shutdown();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// systemd-analyze security

#[test]
fn the_systemd_unit_exposure_is_at_most_2() {
    let tool = Path::new("/usr/bin/systemd-analyze");
    if !tool.exists() {
        eprintln!("skipped: /usr/bin/systemd-analyze is not installed");
        return;
    }
    let unit = repo_file("systemd/ccsync.service");
    let out = std::process::Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let figure: f64 = all
        .lines()
        .find_map(|l| l.split("Overall exposure level for ccsync.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{all}"));
    eprintln!("systemd-analyze security exposure of ccsync.service: {figure}");
    assert!(figure <= 2.0, "exposure {figure} > 2.0:\n{all}");
}

/// Both units as systemd itself reads them (`systemd-analyze verify`, the binary path
/// pointed at the test build): no unknown key, no bad value, no missing dependency.
#[test]
fn the_systemd_units_verify_without_a_warning() {
    let tool = Path::new("/usr/bin/systemd-analyze");
    if !tool.exists() {
        eprintln!("skipped: /usr/bin/systemd-analyze is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ccsync-units-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for name in ["ccsync.service", "ccsync-token-key.service"] {
        let text = read_repo_file(&format!("systemd/{name}"))
            .replace("/usr/bin/ccsync", env!("CARGO_BIN_EXE_ccsync"));
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = std::process::Command::new(tool)
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.trim().is_empty(), "systemd-analyze verify said:\n{all}");
}
