//! `ccsync demo` and `ccsync sandbox`: the loop against an in-process sandbox, with no
//! configuration file needed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::config::{AccountSettings, ListsSetting, Settings};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sync::{self, Job, Outcome};
use crate::{store, telemetry};

/// The database URL the demo uses: `CCSYNC__DATABASE__URL`, else `DATABASE_URL`, else a local
/// default; with no database in the URL, `fallback_db`.
pub fn demo_database(fallback_db: &str) -> anyhow::Result<(String, PgConnectOptions)> {
    let url = std::env::var("CCSYNC__DATABASE__URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/".to_string());
    let mut opts = PgConnectOptions::from_str(&url).with_context(|| {
        format!(
            "invalid database URL {}: set CCSYNC__DATABASE__URL or DATABASE_URL",
            crate::config::redact_url(&url)
        )
    })?;
    if opts.get_database().is_none_or(|d| d.is_empty()) {
        opts = opts.database(fallback_db);
    }
    let mut u = url::Url::parse(&url).context("database URL")?;
    u.set_path(&format!("/{}", opts.get_database().unwrap_or(fallback_db)));
    Ok((u.to_string(), opts))
}

/// Settings for talking to `sb` with account `account`, on database `db_url`.
pub fn sandbox_settings(
    sb_api_base: &str,
    sb_token_url: &str,
    refresh_token: String,
    account: &str,
    db_url: &str,
) -> anyhow::Result<Settings> {
    let mut s = Settings::load_unvalidated(None)?;
    s.database.url = SecretString::from(db_url.to_string());
    let defaults = SandboxConfig::default();
    s.constant_contact.api_base = sb_api_base.to_string();
    s.constant_contact.token_url = sb_token_url.to_string();
    s.constant_contact.client_id = defaults.client_id;
    s.constant_contact.client_secret = Some(SecretString::from(defaults.client_secret));
    s.constant_contact.requests_per_second = 0.0;
    s.accounts = vec![AccountSettings {
        id: account.to_string(),
        refresh_token: Some(SecretString::from(refresh_token)),
        refresh_token_file: None,
        lists: ListsSetting::default(),
    }];
    s.validate()?;
    Ok(s)
}

/// Connects to (and creates, if missing) the demo database, explaining what to set on failure.
pub async fn demo_pool(db_name: &str) -> anyhow::Result<(String, sqlx::PgPool)> {
    let (url, opts) = demo_database(db_name)?;
    let shown = crate::config::redact_url(&url);
    let hint = || {
        format!(
            "cannot reach PostgreSQL at {shown}.\n  Set CCSYNC__DATABASE__URL (or DATABASE_URL) to a PostgreSQL URL whose role may \
             create databases,\n  e.g. CCSYNC__DATABASE__URL=postgres://postgres@127.0.0.1:5432/{db_name}"
        )
    };
    store::ensure_database(&opts).await.with_context(hint)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .with_context(hint)?;
    store::migrate(&pool).await.context("running migrations")?;
    Ok((url, pool))
}

/// Removes everything stored for `account` (the demo and bench start clean).
pub async fn forget_account(pool: &sqlx::PgPool, account: &str) -> anyhow::Result<()> {
    for table in [
        "contacts", "contact_lists", "list_memberships", "outbound", "changes", "sync_state",
        "sync_runs", "import_activities", "oauth_tokens",
    ] {
        sqlx::query(&format!("DELETE FROM ccsync.{table} WHERE account_id = $1"))
            .bind(account)
            .execute(pool)
            .await
            .with_context(|| format!("clearing ccsync.{table}"))?;
    }
    Ok(())
}

/// `ccsync demo`.
pub async fn run(contacts: usize) -> anyhow::Result<ExitCode> {
    let mut log = Settings::load_unvalidated(None)?.log;
    log.level = "warn".into();
    telemetry::init(&log);
    let account = "demo";
    let (db_url, pool) = demo_pool("ccsync_demo").await?;
    forget_account(&pool, account).await?;
    let sb = Sandbox::start(SandboxConfig {
        contacts: 0,
        ..SandboxConfig::default()
    })
    .await
    .context("starting the in-process sandbox")?;
    let ctl = sb.account(account);
    ctl.generate(contacts, 8, 7);
    println!(
        "ccsync demo: sandbox at {} with {} contacts; database {}",
        sb.api_base(),
        ctl.contacts_count(),
        crate::config::redact_url(&db_url)
    );
    let settings = Arc::new(sandbox_settings(
        &sb.api_base(),
        &sb.token_url(),
        ctl.seed_refresh_token(),
        account,
        &db_url,
    )?);
    let ctx = sync::context(settings.clone(), pool.clone(), CancellationToken::new(), false)?;
    let accounts = settings.accounts.clone();

    println!("\n1. initial pull");
    let mut failed = report(&sync::run_cycle(&ctx, &accounts, &[Job::Contacts]).await);

    println!("\n2. subscribers act in Constant Contact: 3 edits, 2 opt-outs (email clock only), 1 delete");
    let ids = ctl.contact_ids();
    for id in ids.iter().take(3) {
        ctl.update_contact(*id, |c| c["job_title"] = serde_json::json!("Chief Demo Officer"));
    }
    for id in ids.iter().skip(3).take(2) {
        ctl.unsubscribe(*id, Some("demo"));
    }
    if let Some(id) = ids.get(5) {
        ctl.delete_contact(*id);
    }
    failed |= report(&sync::run_cycle(&ctx, &accounts, &[Job::Contacts]).await);
    println!("   (opt-outs that leave the contact's updated_at alone need the opt-out sweep job)");

    println!("\n3. again, with nothing new: nothing is written");
    failed |= report(&sync::run_cycle(&ctx, &accounts, &[Job::Contacts]).await);

    let by_kind: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM ccsync.changes WHERE account_id = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(account)
    .fetch_all(&pool)
    .await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ccsync.contacts WHERE account_id = $1")
        .bind(account)
        .fetch_one(&pool)
        .await?;
    println!("\nsummary: {stored} contacts stored for account {account:?}; changes log by kind:");
    for (k, n) in by_kind {
        println!("  {k:<14} {n}");
    }
    println!("\ninspect: psql {} -c 'SELECT * FROM ccsync.sync_runs ORDER BY started_at'", crate::config::redact_url(&db_url));
    sb.shutdown();
    pool.close().await;
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn report(reports: &[sync::RunReport]) -> bool {
    crate::status::print_reports(reports, false);
    reports.iter().any(|r| matches!(r.outcome, Outcome::Failed(_)))
}

/// `ccsync sandbox`.
pub async fn sandbox(listen: SocketAddr, contacts: usize, seed: u64, rate: f64) -> anyhow::Result<ExitCode> {
    let mut log = Settings::load_unvalidated(None)?.log;
    log.level = "info".into();
    telemetry::init(&log);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    let cfg = SandboxConfig {
        contacts,
        seed,
        requests_per_second: (rate > 0.0).then_some(rate),
        ..SandboxConfig::default()
    };
    crate::sandbox::run_standalone(cfg, listen, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
