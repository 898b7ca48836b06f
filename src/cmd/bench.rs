//! `ccsync bench pull`: end-to-end pull throughput with rate limiting off, the share spent
//! applying pages to PostgreSQL, API requests and this process's peak RSS.
//!
//! For a memory figure of ccsync alone, run the sandbox as its own process
//! (`ccsync sandbox --contacts 200000`) and pass `--sandbox http://127.0.0.1:8765/v3`:
//! the sandbox holds the whole account in memory.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::demo::{demo_pool, forget_account, sandbox_settings};
use crate::cli::BenchCommand;
use crate::config::Settings;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sync::{self, Job, Outcome};
use crate::telemetry;

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub async fn run(what: BenchCommand) -> anyhow::Result<ExitCode> {
    let mut log = Settings::load_unvalidated(None)?.log;
    log.level = "warn".into();
    telemetry::init(&log);
    match what {
        BenchCommand::Pull { contacts, sandbox } => pull(contacts, sandbox).await,
    }
}

async fn pull(contacts: usize, external: Option<String>) -> anyhow::Result<ExitCode> {
    let account = "bench";
    let (db_url, pool) = demo_pool("ccsync_bench").await?;
    forget_account(&pool, account).await?;
    let (api_base, token_url, refresh, sandbox_guard) = match external {
        Some(base) => {
            let u = url::Url::parse(&base).context("--sandbox")?;
            let origin = u.origin().ascii_serialization();
            let http = reqwest::Client::new();
            let v: serde_json::Value = http
                .post(format!("{origin}/__control/accounts/default/refresh_token"))
                .send()
                .await
                .context("asking the sandbox for a refresh token")?
                .json()
                .await?;
            let rt = v["refresh_token"]
                .as_str()
                .context("no refresh_token from the sandbox")?;
            (
                base.clone(),
                format!("{origin}/oauth2/default/v1/token"),
                rt.to_string(),
                None,
            )
        }
        None => {
            let t = Instant::now();
            let sb = Sandbox::start(SandboxConfig {
                contacts,
                ..SandboxConfig::default()
            })
            .await?;
            eprintln!(
                "in-process sandbox with {contacts} contacts ready in {:.2?}",
                t.elapsed()
            );
            let rt = sb.default_account().seed_refresh_token();
            (sb.api_base(), sb.token_url(), rt, Some(sb))
        }
    };
    let settings = Arc::new(sandbox_settings(
        &api_base, &token_url, refresh, account, &db_url,
    )?);
    let ctx = crate::startup::job_context(
        settings.clone(),
        pool.clone(),
        CancellationToken::new(),
        false,
    )?;
    let rss_before = peak_rss_kib().unwrap_or(0);
    let started = Instant::now();
    let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
    let elapsed = started.elapsed();
    let Some(Outcome::Succeeded(stats)) = reports.first().map(|r| r.outcome.clone()) else {
        super::status::print_reports(&reports, false);
        anyhow::bail!("the pull did not succeed");
    };
    let seen = stats["seen"].as_u64().unwrap_or(0);
    let apply_ms = stats["apply_ms"].as_u64().unwrap_or(0).max(1);
    let peak = peak_rss_kib().unwrap_or(0);
    println!(
        "bench pull: {seen} contacts in {:.2}s",
        elapsed.as_secs_f64()
    );
    println!(
        "  end to end      {:>10.0} contacts/s",
        seen as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  apply per page  {:>10.0} contacts/s ({} ms summed over pages; 2 apply at once)",
        seen as f64 * 1000.0 / apply_ms as f64,
        apply_ms
    );
    println!("  pages           {:>10}", stats["pages"]);
    println!("  API requests    {:>10}", stats["api_requests"]);
    println!(
        "  peak RSS        {:>10.1} MiB (this process{}; {:.1} MiB before the pull)",
        peak as f64 / 1024.0,
        if sandbox_guard.is_some() {
            ", sandbox included"
        } else {
            " only"
        },
        rss_before as f64 / 1024.0
    );
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
