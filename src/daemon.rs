//! `ccsync run` and `ccsync healthcheck`. Not built yet.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Settings;

pub async fn run(_settings: Arc<Settings>, _no_migrate: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ccsync run` is not available in this build yet")
}

pub async fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ccsync healthcheck {url}` is not available in this build yet")
}
