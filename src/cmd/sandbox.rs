//! `ccsync sandbox`: the local Constant Contact fake as a process of its own.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::sandbox::SandboxConfig;
use crate::telemetry;

/// `ccsync sandbox`.
pub async fn sandbox(
    listen: SocketAddr,
    contacts: usize,
    seed: u64,
    rate: f64,
) -> anyhow::Result<ExitCode> {
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
