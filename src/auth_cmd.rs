//! `ccsync auth login|import|status`. Not built yet.

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::AuthCommand;
use crate::config::Settings;

pub async fn run(_settings: Arc<Settings>, what: AuthCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ccsync auth {what:?}` is not available in this build yet")
}
