//! `ccsync auth login|import|status`: obtain, import or inspect an account's OAuth tokens.
//!
//! - `login`: the device flow (prints a URL and a user code; works over SSH on a headless
//!   server), or with `--browser` the authorization code flow with PKCE and a loopback
//!   redirect (`http://127.0.0.1:PORT/callback`; the port is random unless
//!   `CCSYNC_AUTH_LISTEN=127.0.0.1:PORT` names the one registered with the application).
//! - `import`: reads a refresh token from **stdin** (never argv, which `ps` shows), checks it
//!   by spending it once, and stores the resulting pair.
//! - `status`: per account, what is stored — never the tokens.
//!
//! Tokens are stored under the account's refresh lock, so a running daemon never overwrites
//! them with a pair from the old chain; a pending re-authorisation is cleared.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::AuthCommand;
use crate::config::{ConfigError, Settings};
use crate::crypto::TokenCipher;
use crate::ctct::auth::{exchange_refresh_token, OAuthClient, TokenSet};
use crate::ctct::oauth_flows::{self, DevicePrompt};
use crate::ctct::AuthError;
use crate::store;
use crate::store::tokens::PgTokenStore;

/// Environment variable with the loopback address of the `--browser` redirect listener.
pub const LISTEN_ENV: &str = "CCSYNC_AUTH_LISTEN";
/// How long `login --browser` waits for the redirect (an authorization code lives 5 min).
const BROWSER_WAIT: Duration = Duration::from_secs(600);
/// Longest refresh token accepted on stdin.
const MAX_IMPORT_BYTES: u64 = 16 * 1024;

pub async fn run(settings: Arc<Settings>, what: AuthCommand) -> anyhow::Result<ExitCode> {
    match what {
        AuthCommand::Login { account, browser } => login(&settings, &account, browser).await,
        AuthCommand::Import { account } => import(&settings, &account).await,
        AuthCommand::Status { json } => status(&settings, json).await,
    }
}

fn oauth_client(settings: &Settings) -> Result<OAuthClient, ConfigError> {
    let c = &settings.constant_contact;
    if c.client_id.trim().is_empty() {
        return Err(ConfigError::invalid(
            "constant_contact.client_id",
            "is empty: set your application's API key",
        ));
    }
    Ok(OAuthClient {
        token_url: c.token_url.clone(),
        client_id: c.client_id.clone(),
        client_secret: c.client_secret.clone(),
    })
}

fn known_account(settings: &Settings, account: &str) -> Result<(), ConfigError> {
    if settings.account(account).is_none() {
        return Err(ConfigError::invalid(
            "accounts",
            format!("no [[accounts]] entry with id = {account:?}: add it first"),
        ));
    }
    Ok(())
}

/// The token store (with the configured key) over a migrated database.
async fn token_store(settings: &Settings) -> anyhow::Result<(PgTokenStore, sqlx::PgPool, String)> {
    let (cipher, note) = match TokenCipher::from_settings(&settings.security)
        .context("loading the token key ([security])")?
    {
        Some((c, source)) => {
            let note = format!("encrypted with key {} from {source}", c.current_key_id());
            (Some(Arc::new(c)), note)
        }
        None => (
            None,
            "in plain text (set [security] token_key_file to encrypt them)".to_string(),
        ),
    };
    let pool = crate::startup::connect(settings).await?;
    store::migrate(&pool).await.context("running migrations")?;
    let connect = store::connect_options(&settings.database)?;
    Ok((
        PgTokenStore::new(pool.clone(), connect).with_cipher(cipher),
        pool,
        note,
    ))
}

fn http(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    let c = &settings.constant_contact;
    crate::ctct::client::http_client(c.connect_timeout, c.request_timeout)
        .context("building the HTTP client")
}

fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    cancel
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

async fn login(settings: &Settings, account: &str, browser: bool) -> anyhow::Result<ExitCode> {
    known_account(settings, account)?;
    let oauth = oauth_client(settings)?;
    let http = http(settings)?;
    let (tokens, pool, note) = token_store(settings).await?;
    let cancel = cancel_on_ctrl_c();
    let token_url = &settings.constant_contact.token_url;
    let result = if browser {
        let authorize = oauth_flows::sibling_endpoint(token_url, "authorize")?;
        let listen: SocketAddr = match std::env::var(LISTEN_ENV) {
            Ok(v) => v.parse().map_err(|_| {
                ConfigError::invalid(LISTEN_ENV, "must be an address like 127.0.0.1:8899")
            })?,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        if !listen.ip().is_loopback() {
            return Err(ConfigError::invalid(LISTEN_ENV, "must be a loopback address").into());
        }
        oauth_flows::browser_login(
            &http,
            &oauth,
            &authorize,
            listen,
            |url| {
                println!("To authorise account {account:?}, open this URL in a browser on this machine:\n\n  {url}\n");
                println!("Waiting for the redirect (Ctrl-C to give up)...");
            },
            BROWSER_WAIT,
            &cancel,
        )
        .await
    } else {
        let device = oauth_flows::sibling_endpoint(token_url, "device/authorize")?;
        oauth_flows::device_login(
            &http,
            &oauth,
            &device,
            |p: &DevicePrompt| {
                println!(
                    "To authorise account {account:?}:\n  1. open  {}",
                    p.verification_uri
                );
                println!("  2. enter the code  {}", p.user_code);
                if let Some(c) = &p.verification_uri_complete {
                    println!("  (or open {c})");
                }
                println!(
                    "Waiting for approval; the code expires in {} min (Ctrl-C to give up)...",
                    p.expires_in.as_secs().div_ceil(60)
                );
            },
            &cancel,
        )
        .await
    };
    let set = match result {
        Ok(set) => set,
        Err(e) => {
            pool.close().await;
            return Err(anyhow::Error::new(e).context(format!("authorising account {account}")));
        }
    };
    tokens
        .store_login(account, &set)
        .await
        .context("storing the tokens")?;
    pool.close().await;
    println!(
        "Account {account:?} is authorised: tokens stored {note}; access token valid until {}.",
        ts(set.access_expires_at)
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads the refresh token: one line from a terminal, or the whole of a pipe.
fn read_refresh_token() -> anyhow::Result<SecretString> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprintln!("Paste the refresh token and press Enter (it is not echoed anywhere else):");
        stdin.read_line(&mut text).context("reading stdin")?;
    } else {
        stdin
            .lock()
            .take(MAX_IMPORT_BYTES)
            .read_to_string(&mut text)
            .context("reading stdin")?;
    }
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!(
            "no refresh token on stdin (pipe it in: `ccsync auth import --account A < file`)"
        );
    }
    if token.chars().any(char::is_whitespace) {
        anyhow::bail!("the refresh token on stdin contains whitespace: give exactly one token");
    }
    Ok(SecretString::from(token.to_string()))
}

async fn import(settings: &Settings, account: &str) -> anyhow::Result<ExitCode> {
    known_account(settings, account)?;
    let oauth = oauth_client(settings)?;
    let refresh = tokio::task::spawn_blocking(read_refresh_token)
        .await
        .context("reading stdin")??;
    let http = http(settings)?;
    let (tokens, pool, note) = token_store(settings).await?;
    // Spend it once: proves it works, learns the access token, and (rotating tokens) gives
    // the next refresh token, all stored together below.
    let set: TokenSet = match exchange_refresh_token(&http, &oauth, account, &refresh).await {
        Ok(set) => set,
        Err(e @ AuthError::ReauthRequired { .. }) => {
            pool.close().await;
            return Err(anyhow::Error::new(e).context("the imported refresh token was rejected"));
        }
        Err(e) => {
            pool.close().await;
            return Err(anyhow::Error::new(e).context("checking the imported refresh token"));
        }
    };
    tokens
        .store_login(account, &set)
        .await
        .context("storing the tokens")?;
    pool.close().await;
    println!("Account {account:?}: refresh token imported and checked; tokens stored {note}.");
    Ok(ExitCode::SUCCESS)
}

async fn status(settings: &Settings, as_json: bool) -> anyhow::Result<ExitCode> {
    let pool = crate::startup::connect(settings).await?;
    store::migrate(&pool).await.context("running migrations")?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let rows = store::tokens::info(&mut conn)
        .await
        .context("reading oauth_tokens")?;
    drop(conn);
    pool.close().await;
    let mut ids: Vec<String> = settings.accounts.iter().map(|a| a.id.clone()).collect();
    for r in &rows {
        if !ids.contains(&r.account_id) {
            ids.push(r.account_id.clone());
        }
    }
    let entries: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            let row = rows.iter().find(|r| &r.account_id == id);
            let configured = settings.account(id);
            json!({
                "account": id,
                "configured": configured.is_some(),
                "seed_refresh_token_configured": configured.is_some_and(|a| a.refresh_token.is_some()),
                "has_tokens": row.is_some_and(|r| r.has_refresh_token),
                "has_access_token": row.is_some_and(|r| r.has_access_token),
                "access_expires_at": row.and_then(|r| r.access_expires_at),
                "last_refresh_at": row.and_then(|r| r.last_refresh_at),
                "refresh_kind": row.and_then(|r| r.refresh_kind.clone()),
                "needs_reauth": row.is_some_and(|r| r.needs_reauth),
                "reauth_reason": row.and_then(|r| r.reauth_reason.clone()),
                "encrypted": row.is_some_and(|r| r.encrypted),
                "key_id": row.and_then(|r| r.key_id.clone()),
            })
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<7} {:<21} {:<21} {:<11} {:<10} STATE",
        "ACCOUNT", "TOKENS", "ACCESS EXPIRES", "LAST REFRESH", "REFRESH", "AT REST"
    );
    for e in &entries {
        let state = if e["needs_reauth"] == json!(true) {
            format!(
                "NEEDS RE-AUTHORISATION ({}): ccsync auth login --account {}",
                e["reauth_reason"]
                    .as_str()
                    .unwrap_or("refresh token rejected"),
                e["account"].as_str().unwrap_or("")
            )
        } else if e["has_tokens"] == json!(true) {
            "ok".to_string()
        } else if e["seed_refresh_token_configured"] == json!(true) {
            "seed refresh token in the configuration, not used yet".to_string()
        } else {
            "no tokens: run ccsync auth login".to_string()
        };
        let when = |k: &str| {
            e[k].as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.with_timezone(&Utc))
        };
        println!(
            "{:<16} {:<7} {:<21} {:<21} {:<11} {:<10} {}",
            e["account"].as_str().unwrap_or(""),
            if e["has_tokens"] == json!(true) {
                "yes"
            } else {
                "no"
            },
            ts(when("access_expires_at")),
            ts(when("last_refresh_at")),
            e["refresh_kind"].as_str().unwrap_or("unknown"),
            match (e["encrypted"].as_bool(), e["key_id"].as_str()) {
                (Some(true), Some(k)) => format!("key {k}"),
                (Some(true), None) => "encrypted".to_string(),
                _ => "plain".to_string(),
            },
            state
        );
    }
    Ok(ExitCode::SUCCESS)
}
