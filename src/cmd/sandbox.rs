//! `ccsync sandbox`: the local Constant Contact fake as a process of its own.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cli::SandboxArgs;
use crate::cmd::exit::EX_USAGE;
use crate::config::Settings;
use crate::sandbox::SandboxConfig;
use crate::telemetry;

/// `ccsync sandbox`. A `--listen` address other than loopback without `--allow-remote`
/// exits 2 (usage) before anything is bound.
pub async fn sandbox(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let SandboxArgs {
        listen,
        allow_remote,
        contacts,
        seed,
        rate,
        latency_ms,
        jitter_ms,
    } = args;
    if let Err(e) = crate::sandbox::check_bind(listen, allow_remote) {
        eprintln!("ccsync sandbox: {e}");
        return Ok(ExitCode::from(EX_USAGE));
    }
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
        latency: Duration::from_millis(latency_ms),
        jitter: Duration::from_millis(jitter_ms),
        ..SandboxConfig::default()
    };
    crate::sandbox::run_standalone(cfg, listen, allow_remote, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
