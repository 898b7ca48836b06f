//! `ccsync run`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Settings;
use crate::shutdown::{self, Signals};
use crate::startup::Application;

/// Signal handlers first, then build (connect, migrate, bind) and serve until stopped.
pub async fn run(
    settings: Arc<Settings>,
    config_path: Option<PathBuf>,
    no_migrate: bool,
) -> anyhow::Result<ExitCode> {
    settings.validate_for_sync()?;
    // A configured token key that cannot be loaded is a configuration error (exit 78,
    // naming the key) before anything connects.
    crate::crypto::check_key(&settings.security)?;
    let signals = Signals::install()?;
    let cancel = CancellationToken::new();
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let signal_task = tokio::spawn(shutdown::signal_loop(signals, cancel.clone(), move || {
        let _ = reload_tx.send(());
    }));

    let app = tokio::select! {
        app = Application::build(settings, !no_migrate) => app?,
        _ = cancel.cancelled() => {
            info!("stopped before start-up finished");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let reloader = app.reloader();
    // SIGHUP: re-read the file and the environment; a configuration that does not load or
    // validate is rejected and the running one kept.
    let reload_task = tokio::spawn(async move {
        while reload_rx.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            match Settings::load(config_path.as_deref())
                .and_then(|s| s.validate_for_sync().map(|_| s))
            {
                Ok(s) => {
                    for key in &s.unknown_keys {
                        tracing::warn!(key = %key, "unknown configuration key {key}, ignored (a typo?)");
                    }
                    reloader.reload(Arc::new(s));
                }
                Err(e) => {
                    ::metrics::counter!("ccsync_config_reloads_total", "outcome" => "rejected")
                        .increment(1);
                    error!(error = %crate::telemetry::Chain(&e), "configuration reload rejected; keeping the running configuration");
                }
            }
        }
    });
    app.run_until_stopped(cancel).await?;
    reload_task.abort();
    signal_task.abort();
    Ok(ExitCode::SUCCESS)
}
