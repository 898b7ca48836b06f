//! `ccsync demo` and `ccsync sandbox`: the loop against an in-process sandbox, with no
//! configuration file needed.

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
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    store::demo::forget_account(&mut conn, account)
        .await
        .with_context(|| format!("clearing the store of account {account}"))
}

/// Empties the benchmark database's account tables (`ccsync_bench` only).
pub async fn reset_bench(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    store::demo::truncate_all(&mut conn)
        .await
        .context("emptying the benchmark database")
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
    let mut settings = sandbox_settings(
        &sb.api_base(),
        &sb.token_url(),
        ctl.seed_refresh_token(),
        account,
        &db_url,
    )?;
    // The sandbox finishes an import in 200 ms: poll it at that pace.
    settings.sync.poll_initial = std::time::Duration::from_millis(100);
    settings.sync.poll_max = std::time::Duration::from_millis(800);
    let settings = Arc::new(settings);
    let mut ctx = crate::startup::job_context(
        settings.clone(),
        pool.clone(),
        CancellationToken::new(),
        false,
    )?;
    ctx.progress = true;
    let accounts = settings.accounts.clone();
    let lists = ctl.list_ids();
    let (list_a, list_b) = match lists.as_slice() {
        [a, b, ..] => (*a, *b),
        _ => anyhow::bail!("the demo sandbox has fewer than 2 lists"),
    };
    // Subscribers the story uses: live, not unsubscribed, one of them on list A.
    let live: Vec<(uuid::Uuid, String)> = ctl
        .contact_ids()
        .into_iter()
        .filter_map(|id| {
            let c = ctl.contact(id)?;
            let e = &c["email_address"];
            (e["permission_to_send"] != "unsubscribed" && c["deleted_at"].is_null())
                .then(|| Some((id, e["address"].as_str()?.to_lowercase())))
                .flatten()
        })
        .take(8)
        .collect();
    if live.len() < 8 {
        anyhow::bail!("the demo needs at least 8 subscribed contacts; run it with more contacts");
    }
    let already_out = ctl.contact_ids().into_iter().find_map(|id| {
        let c = ctl.contact(id)?;
        (c["email_address"]["permission_to_send"] == "unsubscribed")
            .then(|| {
                c["email_address"]["address"]
                    .as_str()
                    .map(str::to_lowercase)
            })
            .flatten()
    });
    ctl.join_list(live[6].0, list_a);
    ctl.join_list(live[4].0, list_b);

    println!("\n1. first cycle: pull contacts, opt-outs, deletes, lists (nothing to push yet)");
    let mut failed = report(&sync::run_cycle(&ctx, &accounts, Job::cycle()).await);

    println!("\n2. the application queues local changes (one INSERT each into ccsync.outbound)");
    let queue = |email: String, fields: serde_json::Value, lists: Vec<uuid::Uuid>, what: &str| {
        println!("   {email:<40} {what}");
        ("upsert", email, fields, lists)
    };
    let queue_op = |op: &'static str,
                    email: String,
                    fields: serde_json::Value,
                    lists: Vec<uuid::Uuid>,
                    what: &str| {
        println!("   {email:<40} {what} (op {op})");
        (op, email, fields, lists)
    };
    let mut rows = Vec::new();
    for n in 1..=5 {
        rows.push(queue(
            format!("new.member{n}@example.org"),
            serde_json::json!({"first_name": format!("Member{n}"), "company_name": "Demo Co"}),
            vec![list_a],
            "new contact on list A",
        ));
    }
    rows.push(queue(
        live[0].1.clone(),
        serde_json::json!({"job_title": "Local title", "last_name": "Localname"}),
        vec![list_a],
        "edit (job_title, last_name)",
    ));
    rows.push(queue(
        live[3].1.clone(),
        serde_json::json!({"first_name": "Again"}),
        vec![list_a],
        "add to list A (they will opt out)",
    ));
    rows.push(queue(
        live[6].1.clone(),
        serde_json::json!({}),
        vec![list_a, list_b],
        "add to lists A and B (they will leave A)",
    ));
    rows.push(queue(
        "not-an-email".into(),
        serde_json::json!({}),
        vec![list_a],
        "invalid address",
    ));
    rows.push(queue(
        live[1].1.clone(),
        serde_json::json!({"company_name": "Field-only Ltd"}),
        vec![],
        "field-only change, no list (GET + PUT)",
    ));
    rows.push(queue_op(
        "unsubscribe",
        live[2].1.clone(),
        serde_json::json!({"opt_out_reason": "asked by phone"}),
        vec![],
        "unsubscribe collected by the application",
    ));
    rows.push(queue_op(
        "remove_from_lists",
        live[4].1.clone(),
        serde_json::json!({}),
        vec![list_b],
        "remove from list B",
    ));
    rows.push(queue_op(
        "delete",
        live[5].1.clone(),
        serde_json::json!({}),
        vec![],
        "delete the contact",
    ));
    if let Some(e) = already_out {
        rows.push(queue(
            e,
            serde_json::json!({"first_name": "Stale"}),
            vec![list_b],
            "contact who opted out long ago",
        ));
    }
    for (op, email, fields, lists) in &rows {
        store::demo::queue_outbound(
            &mut *pool.acquire().await?,
            account,
            op,
            email,
            fields,
            lists,
        )
        .await
        .context("queueing an outbound row")?;
    }

    println!("\n3. meanwhile subscribers act in Constant Contact: an edit of the same field, an opt-out, leaving list A, a delete");
    ctl.update_contact(live[0].0, |c| {
        c["job_title"] = serde_json::json!("Their own title")
    });
    ctl.unsubscribe(live[3].0, Some("demo: no more mail"));
    // The sandbox moves no clock on a membership change (unconfirmed for the real service):
    // the incremental pull cannot see this leave; the push's read before write does.
    ctl.leave_list(live[6].0, list_a);
    ctl.delete_contact(live[7].0);

    println!(
        "\n4. `ccsync sync --job push --dry-run`: the plan, nothing written, no write request"
    );
    let dry = crate::startup::job_context(
        settings.clone(),
        pool.clone(),
        CancellationToken::new(),
        true,
    )?;
    failed |= report(&sync::run_cycle(&dry, &accounts, &[Job::Push]).await);

    println!("\n5. `ccsync sync`: pull first (the store catches up with the primary), then push and poll");
    failed |= report(&sync::run_cycle(&ctx, &accounts, Job::cycle()).await);

    println!("\n6. again: the pushed contacts come back with the pull, nothing is pushed twice");
    failed |= report(&sync::run_cycle(&ctx, &accounts, Job::cycle()).await);

    let outcome = store::demo::outbound_rows(&mut *pool.acquire().await?, account).await?;
    println!("\nsummary: every queued row ended in a terminal state");
    for (id, email, state, reason) in outcome {
        println!(
            "  #{id:<3} {email:<40} {state:<10} {}",
            reason.unwrap_or_default()
        );
    }
    let them = ctl.contact(live[3].0);
    let still_out = them
        .as_ref()
        .map(|c| c["email_address"]["permission_to_send"] == "unsubscribed")
        .unwrap_or(false);
    let sent_to_them = ctl
        .imports()
        .iter()
        .any(|b| b.to_string().to_lowercase().contains(&live[3].1));
    println!(
        "  opted-out subscriber still unsubscribed in Constant Contact: {still_out}; present in any import: {sent_to_them}"
    );
    println!(
        "  {} still on list A after leaving it: {}",
        live[6].1,
        ctl.memberships(live[6].0).contains(&list_a)
    );
    println!(
        "  {} job_title in Constant Contact: {}",
        live[0].1,
        ctl.contact(live[0].0)
            .map(|c| c["job_title"].to_string())
            .unwrap_or_default()
    );
    println!("\nconfirmed in Constant Contact (read back from the sandbox):");
    let c = |id: uuid::Uuid| ctl.contact(id).unwrap_or_default();
    println!(
        "  {:<40} company_name {} (field-only PUT; still on {} lists)",
        live[1].1,
        c(live[1].0)["company_name"],
        ctl.memberships(live[1].0).len()
    );
    println!(
        "  {:<40} permission_to_send {} (opt_out_reason {})",
        live[2].1,
        c(live[2].0)["email_address"]["permission_to_send"],
        c(live[2].0)["email_address"]["opt_out_reason"]
    );
    println!(
        "  {:<40} on list B: {}",
        live[4].1,
        ctl.memberships(live[4].0).contains(&list_b)
    );
    println!(
        "  {:<40} deleted_at {}",
        live[5].1,
        c(live[5].0)["deleted_at"]
    );
    println!(
        "  re-subscriptions seen by the sandbox: {}; contacts revived: {}",
        ctl.resubscriptions().len(),
        ctl.revivals().len()
    );
    let mut conn = pool.acquire().await?;
    let by_kind = store::demo::changes_by_kind(&mut conn, account).await?;
    let stored = store::demo::contacts_count(&mut conn, account).await?;
    drop(conn);
    println!("\n{stored} contacts stored for account {account:?}; changes log by origin and kind:");
    for (o, k, n) in by_kind {
        println!("  {o:<17} {k:<14} {n}");
    }
    println!(
        "\ninspect: psql {} -c 'SELECT id, email, state, reason FROM ccsync.outbound ORDER BY id'",
        crate::config::redact_url(&db_url)
    );
    sb.shutdown();
    pool.close().await;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn report(reports: &[sync::RunReport]) -> bool {
    super::status::print_reports(reports, false);
    reports
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed(_)))
}
