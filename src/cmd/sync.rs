//! `ccsync sync`: one cycle now for the chosen accounts and jobs, then exit (1 when a job
//! failed). The same cycle runner as the daemon's scheduler.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::exit::{EX_JOB_FAILED, EX_USAGE};
use crate::config::Settings;
use crate::core::job::Job;
use crate::{startup, store, sync};

/// The arguments of `ccsync sync`.
#[derive(Debug, Clone)]
pub struct SyncArgs {
    pub account: Option<String>,
    pub jobs: Vec<Job>,
    pub full: bool,
    pub dry_run: bool,
    pub json: bool,
    pub no_migrate: bool,
}

pub async fn run(settings: Arc<Settings>, args: SyncArgs) -> anyhow::Result<ExitCode> {
    settings.validate_for_sync()?;
    // A configured token key that cannot be loaded is a configuration error (exit 78,
    // naming the key) before anything connects.
    crate::crypto::check_key(&settings.security)?;
    let accounts = match &args.account {
        Some(id) => match settings.account(id) {
            Some(a) => vec![a.clone()],
            None => {
                eprintln!("ccsync: --account {id}: no such account in [[accounts]]");
                return Ok(ExitCode::from(EX_USAGE));
            }
        },
        None => settings.accounts.clone(),
    };
    let pool = startup::connect(&settings).await?;
    if !args.no_migrate {
        store::migrate(&pool).await.context("running migrations")?;
    }
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(cancel.clone());
    let mut ctx = startup::job_context(settings.clone(), pool.clone(), cancel, args.dry_run)?;
    ctx.full = args.full;
    ctx.progress = !args.json;
    let reports = sync::run_cycle(&ctx, &accounts, &args.jobs).await;
    super::status::print_reports(&reports, args.json);
    pool.close().await;
    let failed = reports.iter().any(|r| r.outcome.is_failure());
    Ok(if failed {
        ExitCode::from(EX_JOB_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// First Ctrl-C: cancel at the next page boundary. Second: exit now.
fn cancel_on_ctrl_c(cancel: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("ccsync: stopping after the page in hand (Ctrl-C again to exit now)");
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
}
