//! `ccsync migrate`: apply the embedded migrations.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::{startup, store};

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = startup::connect(settings).await?;
    store::migrate(&pool).await.context("running migrations")?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
