//! Every subcommand, one module each, and the dispatch: configuration (exit 78 on errors)
//! → telemetry → the command. Commands build what they need through `startup` (the one
//! place configuration becomes a pool, a client and a job context).

pub mod auth;
pub mod bench;
pub mod check_config;
pub mod demo;
pub mod exit;
pub mod healthcheck;
pub mod migrate;
pub mod outbound;
pub mod prune;
pub mod run;
pub mod sandbox;
pub mod status;
pub mod sync;

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::{Cli, Command};
use crate::config::{ConfigError, Settings};
use crate::telemetry;
use exit::{config_error, EX_JOB_FAILED};

/// Runs the parsed command line; the binary's `main` is this and nothing else.
pub async fn main(cli: Cli) -> ExitCode {
    let config_path = cli.config.clone();
    let result = match cli.command {
        Command::Sandbox(args) => sandbox::sandbox(args).await,
        Command::Demo { contacts } => demo::run(contacts).await,
        Command::Bench { what } => bench::run(what).await,
        Command::CheckConfig => return check_config::run(config_path.as_deref()),
        Command::Healthcheck { url, ready } => {
            let url = match url {
                Some(u) => u,
                None => match healthcheck::configured_url(config_path.as_deref(), ready) {
                    Ok(u) => u,
                    Err(e) => return config_error(&e),
                },
            };
            healthcheck::healthcheck(&url).await
        }
        command => {
            let settings = match Settings::load(config_path.as_deref()) {
                Ok(s) => s,
                Err(e) => return config_error(&e),
            };
            telemetry::init(&settings.log);
            for key in &settings.unknown_keys {
                tracing::warn!(key = %key, "unknown configuration key {key}, ignored (a typo?)");
            }
            let settings = Arc::new(settings);
            match command {
                Command::Run { no_migrate } => run::run(settings, config_path, no_migrate).await,
                Command::Auth { what } => auth::run(settings, what).await,
                Command::Migrate => migrate::run(&settings).await,
                Command::Status { json } => status::run(&settings, json).await,
                Command::Prune { dry_run, json } => prune::run(&settings, dry_run, json).await,
                Command::Outbound { action, list } => outbound::run(&settings, action, list).await,
                Command::Sync {
                    account,
                    job,
                    full,
                    dry_run,
                    json,
                    no_migrate,
                } => {
                    let args = sync::SyncArgs {
                        account,
                        jobs: job.jobs(),
                        full,
                        dry_run,
                        json,
                        no_migrate,
                    };
                    sync::run(settings, args).await
                }
                other => Err(anyhow::anyhow!(
                    "{other:?} is handled before the settings are loaded"
                )),
            }
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
