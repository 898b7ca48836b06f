//! Command dispatch: configuration (exit 78 on errors) → telemetry → database → the command.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::config::{ConfigError, Settings};
use crate::sync::{self, Outcome};
use crate::{store, telemetry};

/// sysexits `EX_CONFIG`.
pub const EX_CONFIG: u8 = 78;
/// A job failed.
pub const EX_JOB_FAILED: u8 = 1;
/// Bad usage.
pub const EX_USAGE: u8 = 2;

pub async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Sandbox {
            listen,
            contacts,
            seed,
            rate,
        } => crate::demo::sandbox(listen, contacts, seed, rate).await,
        Command::Demo { contacts } => crate::demo::run(contacts).await,
        Command::Bench { what } => crate::bench::run(what).await,
        Command::CheckConfig => return check_config(cli.config.as_deref()),
        Command::Healthcheck { url } => crate::daemon::healthcheck(&url).await,
        command => {
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => return config_error(&e),
            };
            telemetry::init(&settings.log);
            with_settings(Arc::new(settings), command).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                return config_error(ce);
            }
            eprintln!("ccsync: {e:#}");
            ExitCode::from(EX_JOB_FAILED)
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("ccsync: {e}");
    ExitCode::from(EX_CONFIG)
}

fn check_config(path: Option<&std::path::Path>) -> ExitCode {
    let settings = match Settings::load(path).and_then(|s| s.validate_for_sync().map(|_| s)) {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    println!("{}", settings.redacted_summary());
    match crate::crypto::check_key(&settings.security) {
        Ok(Some(warning)) => eprintln!("warning: {warning}"),
        Ok(None) => {}
        Err(e) => return config_error(&e),
    }
    println!("configuration OK");
    ExitCode::SUCCESS
}

async fn with_settings(settings: Arc<Settings>, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { no_migrate } => crate::daemon::run(settings, no_migrate).await,
        Command::Auth { what } => crate::auth_cmd::run(settings, what).await,
        Command::Migrate => {
            let pool = connect(&settings).await?;
            store::migrate(&pool).await.context("running migrations")?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let pool = connect(&settings).await?;
            crate::status::print(&pool, &settings, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            account,
            job,
            full,
            dry_run,
            json,
            no_migrate,
        } => {
            settings.validate_for_sync()?;
            let accounts = match &account {
                Some(id) => match settings.account(id) {
                    Some(a) => vec![a.clone()],
                    None => {
                        eprintln!("ccsync: --account {id}: no such account in [[accounts]]");
                        return Ok(ExitCode::from(EX_USAGE));
                    }
                },
                None => settings.accounts.clone(),
            };
            let jobs = job.jobs();
            let pool = connect(&settings).await?;
            if !no_migrate {
                store::migrate(&pool).await.context("running migrations")?;
            }
            let cancel = CancellationToken::new();
            cancel_on_ctrl_c(cancel.clone());
            let mut ctx = sync::context(settings.clone(), pool.clone(), cancel, dry_run)?;
            ctx.full = full;
            ctx.progress = !json;
            let reports = sync::run_cycle(&ctx, &accounts, &jobs).await;
            crate::status::print_reports(&reports, json);
            pool.close().await;
            let failed = reports.iter().any(|r| r.outcome.is_failure());
            Ok(if failed {
                ExitCode::from(EX_JOB_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        other => anyhow::bail!("{other:?} is handled before the settings are loaded"),
    }
}

/// Connects (eagerly) and names the setting to fix when that fails.
pub async fn connect(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    store::connect(&settings.database).await.with_context(|| {
        format!(
            "cannot connect to the database {} (set database.url or CCSYNC__DATABASE__URL)",
            settings.database_url_redacted()
        )
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

/// True when any report failed.
pub fn any_failed(reports: &[sync::RunReport]) -> bool {
    reports
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed(_)))
}
