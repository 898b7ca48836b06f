//! `Application::build(settings)` / `run_until_stopped(cancel)`: the daemon as a value, so
//! that `ccsync run` and tests start it the same way and stop it with their own token.
//!
//! Build: eager pool → migrations (unless told not to) → bind the ops listener → metrics
//! recorder. Run: job context → scheduler → listener → `READY=1` → serve until the token
//! is cancelled, applying reloads on the way. Stop: `STOPPING=1` → stop the scheduler →
//! close and drain the tracker within `server.shutdown_grace` (running jobs stop at a page
//! boundary, after committing it) → stop the listener → close the pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::ctct::{Api, ApiOptions, Auth, OAuthClient};
use crate::ops::heartbeat::Heartbeat;
use crate::ops::{self, health::OpsState};
use crate::scheduler::{Plan, Scheduler};
use crate::store;
use crate::sync::JobContext;

/// A built, not yet running, daemon.
pub struct Application {
    settings: Arc<Settings>,
    pool: PgPool,
    listener: TcpListener,
    metrics: PrometheusHandle,
    reload_tx: mpsc::Sender<Arc<Settings>>,
    reload_rx: mpsc::Receiver<Arc<Settings>>,
}

/// Sends reloaded settings to a running application (from the SIGHUP handler or a test).
#[derive(Clone)]
pub struct Reloader(mpsc::Sender<Arc<Settings>>);

impl Reloader {
    /// Queues `settings` for the application; false when it is no longer running.
    pub fn reload(&self, settings: Arc<Settings>) -> bool {
        self.0.try_send(settings).is_ok()
    }
}

impl Application {
    /// Connects, migrates (unless `migrate` is false) and binds `server.listen`.
    pub async fn build(settings: Arc<Settings>, migrate: bool) -> anyhow::Result<Application> {
        let pool = connect(&settings).await?;
        if migrate {
            store::migrate(&pool).await.context("running migrations")?;
        }
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| {
                format!("server.listen: cannot listen on {}", settings.server.listen)
            })?;
        let metrics = ops::metrics::install().context("installing the metrics recorder")?;
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(Application {
            settings,
            pool,
            listener,
            metrics,
            reload_tx,
            reload_rx,
        })
    }

    /// The bound address of the ops listener (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn reloader(&self) -> Reloader {
        Reloader(self.reload_tx.clone())
    }

    /// Runs until `cancel` fires, then shuts down within `server.shutdown_grace`.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Application {
            settings,
            pool,
            listener,
            metrics,
            reload_tx,
            mut reload_rx,
        } = self;
        drop(reload_tx);
        let (settings_tx, settings_rx) = watch::channel(settings.clone());
        let ctx = job_context(settings.clone(), pool.clone(), cancel.clone(), false)?;
        let tracker = TaskTracker::new();
        let heartbeat = Arc::new(Heartbeat::default());
        let mut scheduler = Scheduler::start(
            Plan::new(ctx)?,
            tracker.clone(),
            cancel.clone(),
            heartbeat.clone(),
        )
        .await?;

        // Auxiliary tasks (listener, upkeep, watchdog) outlive the drain so that /readyz
        // says "shutting down" meanwhile; they stop on `aux`.
        let listen = listener
            .local_addr()
            .context("reading the listener's address")?;
        let aux = CancellationToken::new();
        let started = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let state = OpsState {
            pool: pool.clone(),
            metrics: metrics.clone(),
            settings: settings_rx.clone(),
            started: started.clone(),
            stopping: stopping.clone(),
            heartbeat: heartbeat.clone(),
        };
        let server = {
            let aux = aux.clone();
            tokio::spawn(async move {
                let serve = axum::serve(listener, ops::health::router(state))
                    .with_graceful_shutdown(aux.cancelled_owned());
                if let Err(e) = serve.await {
                    error!(error = %crate::telemetry::Chain(&e), "the health/metrics listener failed");
                }
            })
        };
        let upkeep = tokio::spawn(ops::metrics::upkeep_loop(
            metrics,
            pool.clone(),
            settings_rx.clone(),
            heartbeat.clone(),
            aux.clone(),
        ));
        let watchdog = tokio::spawn(ops::notify::watchdog_loop(heartbeat, aux.clone()));
        let prune = tokio::spawn(retention_loop(
            pool.clone(),
            settings_rx.clone(),
            aux.clone(),
        ));

        started.store(true, Ordering::Relaxed);
        let summary = format!(
            "running: {} account(s), replica {}",
            settings.accounts.len(),
            scheduler.replica()
        );
        ops::notify::ready(&summary);
        info!(listen = %listen, "{summary}");
        match scheduler.recover_on_start().await {
            Ok(0) => {}
            Ok(n) => warn!(
                accounts = n,
                "finishing cycles left unfinished by a previous run"
            ),
            Err(e) => warn!(error = %format!("{e:#}"), "cannot look for unfinished cycles"),
        }

        let mut current = settings;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(new) = reload_rx.recv() => {
                    match apply_reload(&mut scheduler, &current, new.clone(), &pool, &cancel).await {
                        Ok(()) => {
                            current = new.clone();
                            settings_tx.send_replace(new);
                            ::metrics::counter!("ccsync_config_reloads_total", "outcome" => "applied").increment(1);
                            ops::notify::status(&format!("running: {} account(s), configuration reloaded", current.accounts.len()));
                        }
                        Err(e) => {
                            ::metrics::counter!("ccsync_config_reloads_total", "outcome" => "rejected").increment(1);
                            error!(error.message = %format!("{e:#}"), error.cause_chain = ?e, "configuration reload rejected; keeping the running configuration");
                        }
                    }
                }
            }
        }

        // Shutdown.
        stopping.store(true, Ordering::Relaxed);
        ops::notify::stopping("stopping: draining running jobs");
        scheduler.stop().await;
        tracker.close();
        let grace = current.server.shutdown_grace;
        info!(
            running = tracker.len(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        match tokio::time::timeout(grace, tracker.wait()).await {
            Ok(()) => info!("all running jobs stopped at a page boundary"),
            Err(_) => warn!(
                abandoned = tracker.len(),
                "shutdown grace expired; unfinished cycles will be taken over by the next run"
            ),
        }
        aux.cancel();
        for task in [server, upkeep, watchdog, prune] {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if tokio::time::timeout(Duration::from_secs(2), pool.close())
            .await
            .is_err()
        {
            warn!("database pool did not close in time");
        }
        info!("stopped");
        Ok(())
    }
}

/// Prunes old bookkeeping (`[retention]`) at each tick of `schedule.retention`, in one
/// replica at a time (a session advisory lock; a replica that finds it taken skips the
/// tick). Not a per-account job: it is one global pass with its own cron entry, so it has
/// no `sync_runs` rows or claims of its own. Reloaded settings apply from the next tick.
async fn retention_loop(
    pool: PgPool,
    mut settings: watch::Receiver<Arc<Settings>>,
    cancel: CancellationToken,
) {
    loop {
        let current = settings.borrow_and_update().clone();
        let next = crate::config::parse_cron(&current.schedule.retention)
            .ok()
            .and_then(|c| c.find_next_occurrence(&chrono::Utc::now(), false).ok());
        let Some(next) = next else {
            warn!("schedule.retention has no next occurrence; pruning is off");
            tokio::select! {
                r = settings.changed() => if r.is_err() { return } else { continue },
                _ = cancel.cancelled() => return,
            }
        };
        let wait = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = settings.changed() => { if r.is_err() { return } continue }
            _ = cancel.cancelled() => return,
        }
        if let Err(e) = prune_once(&pool, &current, &cancel).await {
            warn!(error.message = %format!("{e:#}"), "retention: pruning failed; retried at the next tick");
        }
    }
}

/// One scheduled prune, under the retention lock.
async fn prune_once(
    pool: &PgPool,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    if !store::retention::try_lock(&mut conn)
        .await
        .context("taking the retention lock")?
    {
        info!("retention: another replica is pruning; skipped");
        return Ok(());
    }
    let policy = settings.retention.policy();
    let result =
        store::retention::prune_all(&mut conn, &policy, false, &|| !cancel.is_cancelled()).await;
    if let Err(e) = store::retention::unlock(&mut conn).await {
        warn!(error = %crate::telemetry::Chain(&e), "cannot release the retention lock; closing its connection");
        drop(conn.detach());
    }
    let pruned = result.context("pruning old rows")?;
    for p in pruned.iter().filter(|p| p.rows > 0) {
        info!(
            table = p.table,
            deleted = p.rows,
            batches = p.batches,
            "retention: pruned old rows"
        );
        ::metrics::counter!("ccsync_retention_deleted_rows_total", "table" => p.table)
            .increment(p.rows);
    }
    Ok(())
}

/// Applies what a reload may change live: accounts, schedules, limits and everything the
/// jobs read. Settings bound at start-up (database, listener, logging) need a restart.
async fn apply_reload(
    scheduler: &mut Scheduler,
    current: &Settings,
    new: Arc<Settings>,
    pool: &PgPool,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    new.validate().context("validating the new configuration")?;
    new.validate_for_sync()
        .context("validating the new configuration")?;
    for (key, changed) in restart_only_changes(current, &new) {
        if changed {
            warn!(
                key,
                "changed in the configuration file; takes effect after a restart"
            );
        }
    }
    let ctx = job_context(new.clone(), pool.clone(), cancel.clone(), false)?;
    scheduler.replace(Plan::new(ctx)?).await?;
    info!(accounts = new.accounts.len(), "configuration reloaded");
    Ok(())
}

fn restart_only_changes(old: &Settings, new: &Settings) -> [(&'static str, bool); 5] {
    use secrecy::ExposeSecret;
    [
        (
            "database.url",
            old.database.url.expose_secret() != new.database.url.expose_secret(),
        ),
        (
            "database.max_connections",
            old.database.max_connections != new.database.max_connections,
        ),
        ("server.listen", old.server.listen != new.server.listen),
        ("log.format", old.log.format != new.log.format),
        ("log.level", old.log.level != new.log.level),
    ]
}

/// Connects (eagerly) and names the setting to fix when that fails.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    store::connect(&settings.database).await.with_context(|| {
        format!(
            "cannot connect to the database {} (set database.url or CCSYNC__DATABASE__URL)",
            settings.database_url_redacted()
        )
    })
}

/// Wires settings and a pool into a job context: the HTTP client, the token store (sealed
/// when `[security]` has a key), OAuth, the shared daily budget and request pacer, and the
/// Constant Contact client over them. Every command that runs jobs builds its context here.
pub fn job_context(
    settings: Arc<Settings>,
    pool: PgPool,
    cancel: CancellationToken,
    dry_run: bool,
) -> anyhow::Result<JobContext> {
    let connect = store::connect_options(&settings.database)?;
    let c = &settings.constant_contact;
    let http = crate::ctct::client::http_client(c.connect_timeout, c.request_timeout)
        .context("building the HTTP client")?;
    let cipher = crate::crypto::TokenCipher::from_settings(&settings.security)
        .context("loading the token key ([security])")?
        .map(|(c, _)| Arc::new(c));
    let tokens = Arc::new(
        store::tokens::PgTokenStore::new(pool.clone(), connect.clone()).with_cipher(cipher),
    );
    let seeds = settings
        .accounts
        .iter()
        .filter_map(|a| a.refresh_token.clone().map(|t| (a.id.clone(), t)))
        .collect();
    let auth = Arc::new(Auth::new(
        http.clone(),
        OAuthClient {
            token_url: c.token_url.clone(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
        },
        tokens,
        seeds,
    ));
    let budget = Arc::new(store::usage::PgBudget::new(
        pool.clone(),
        c.daily_request_limit,
    ));
    let api = Arc::new(
        Api::new(
            http,
            ApiOptions {
                api_base: c.api_base.clone(),
                requests_per_second: c.requests_per_second,
                max_retries: c.max_retries,
                min_delay: c.retry_initial,
                max_delay: c.retry_max,
            },
            auth,
            budget,
            cancel.clone(),
        )
        .context("constant_contact.api_base")?
        .with_shared_pacer(
            store::pacer::PgPacer::new(pool.clone(), &c.client_id, c.requests_per_second)
                .map(|p| Arc::new(p) as Arc<dyn crate::ctct::limiter::SharedPacer>),
        ),
    );
    Ok(JobContext {
        pool,
        connect,
        api,
        settings,
        cancel,
        dry_run,
        full: false,
        progress: false,
    })
}
