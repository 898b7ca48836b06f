//! The jobs and their pure cores. Each job is a plain async function; every run goes through
//! `run_guarded`: a per-(account, job) advisory lock, a `sync_runs` row and a root span.

pub mod batch;
pub mod contacts;
pub mod deletes;
pub mod guard;
pub mod lists;
pub mod membership;
pub mod merge;
pub mod optouts;
pub mod push;
pub mod reconcile;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, Instrument};
use uuid::Uuid;

use crate::config::{AccountSettings, Settings};
use crate::ctct::Api;
use crate::store;

/// The jobs ccsync runs per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Job {
    Contacts,
    Unsubscribes,
    Deletes,
    Lists,
    Reconcile,
    Push,
}

impl Job {
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Contacts => "contacts",
            Job::Unsubscribes => "unsubscribes",
            Job::Deletes => "deletes",
            Job::Lists => "lists",
            Job::Reconcile => "reconcile",
            Job::Push => "push",
        }
    }

    /// The per-account cycle order of DESIGN.md §2 (`sync --job all`). The weekly
    /// reconcile is scheduled on its own.
    pub fn cycle() -> &'static [Job] {
        &[
            Job::Contacts,
            Job::Unsubscribes,
            Job::Deletes,
            Job::Lists,
            Job::Push,
        ]
    }

    /// Every job, in the order a cycle would run them.
    pub fn all() -> &'static [Job] {
        &[
            Job::Contacts,
            Job::Unsubscribes,
            Job::Deletes,
            Job::Lists,
            Job::Reconcile,
            Job::Push,
        ]
    }
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every job needs.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    /// For the dedicated connection that holds a run's advisory lock.
    pub connect: PgConnectOptions,
    pub api: Arc<Api>,
    pub settings: Arc<Settings>,
    pub cancel: CancellationToken,
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Ignore watermarks: read everything again (`sync --full`).
    pub full: bool,
    /// Show a progress bar on a terminal (`sync`, `demo`); never in the daemon.
    pub progress: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// Another run of the same (account, job) holds the lock.
    Skipped,
    Failed(String),
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// The result of one run, for the caller's summary.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: Uuid,
    pub account: String,
    pub job: Job,
    pub outcome: Outcome,
}

fn lock_key(account: &str, job: Job) -> String {
    format!("ccsync:job:{account}:{}", job.as_str())
}

/// Runs one job for one account unless it is already running anywhere (advisory lock on a
/// dedicated connection, released when the run ends or the connection closes).
pub async fn run_guarded(ctx: &JobContext, account: &AccountSettings, job: Job) -> RunReport {
    let run_id = Uuid::new_v4();
    let span = info_span!("run", account = %account.id, job = %job, run_id = %run_id);
    async {
        let outcome = match run_locked(ctx, account, job, run_id).await {
            Ok(o) => o,
            Err(e) => {
                error!(error.message = %e, error.cause_chain = ?e, "run bookkeeping failed");
                Outcome::Failed(format!("{e:#}"))
            }
        };
        RunReport {
            run_id,
            account: account.id.clone(),
            job,
            outcome,
        }
    }
    .instrument(span)
    .await
}

async fn run_locked(
    ctx: &JobContext,
    account: &AccountSettings,
    job: Job,
    run_id: Uuid,
) -> anyhow::Result<Outcome> {
    let mut lock_conn = PgConnection::connect_with(&ctx.connect)
        .await
        .context("opening the connection that holds the run lock")?;
    let key = lock_key(&account.id, job);
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut lock_conn)
        .await
        .context("taking the run lock")?;
    if !locked {
        info!("skipped: the same job is already running for this account");
        if !ctx.dry_run {
            store::runs::skipped(&mut lock_conn, &account.id, job.as_str(), "already running")
                .await
                .context("recording the skipped run")?;
        }
        let _ = lock_conn.close().await;
        return Ok(Outcome::Skipped);
    }
    if !ctx.dry_run {
        let orphans = store::runs::close_orphans(&mut lock_conn, &account.id, job.as_str())
            .await
            .context("closing runs interrupted by a dead process")?;
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "closed runs left unfinished by a process that died"
            );
        }
        store::runs::start(&mut lock_conn, run_id, &account.id, job.as_str())
            .await
            .context("recording the run start")?;
    }
    let started = Instant::now();
    let mut result = execute(ctx, account, job, run_id).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if let Ok(stats) = &mut result {
        if stats.is_object() {
            stats["duration_ms"] = json!(elapsed_ms);
        }
    }
    let (outcome_str, stats, err) = match &result {
        Ok(s) => {
            info!(stats = %s, "run succeeded");
            ("succeeded", s.clone(), None)
        }
        Err(e) => {
            error!(error.message = %e, error.cause_chain = ?e, "run failed");
            let outcome = if ctx.cancel.is_cancelled() {
                "cancelled"
            } else {
                "failed"
            };
            (
                outcome,
                json!({ "duration_ms": elapsed_ms }),
                Some(format!("{e:#}")),
            )
        }
    };
    if !ctx.dry_run {
        store::runs::finish(&mut lock_conn, run_id, outcome_str, &stats, err.as_deref())
            .await
            .context("recording the run end")?;
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(&key)
        .execute(&mut lock_conn)
        .await;
    let _ = lock_conn.close().await;
    Ok(match (result, err) {
        (Ok(stats), _) => Outcome::Succeeded(stats),
        (Err(_), Some(msg)) => Outcome::Failed(msg),
        (Err(e), None) => Outcome::Failed(format!("{e:#}")),
    })
}

async fn execute(
    ctx: &JobContext,
    account: &AccountSettings,
    job: Job,
    run_id: Uuid,
) -> anyhow::Result<Value> {
    match job {
        Job::Contacts => {
            let stats = contacts::run_once(ctx, account, run_id).await?;
            Ok(serde_json::to_value(stats)?)
        }
        Job::Unsubscribes => optouts::run_once(ctx, account, run_id).await,
        Job::Deletes => deletes::run_once(ctx, account, run_id).await,
        Job::Lists => lists::run_once(ctx, account, run_id).await,
        Job::Reconcile => reconcile::run_once(ctx, account, run_id).await,
        Job::Push => push::run_once(ctx, account, run_id).await,
    }
}

/// Runs `jobs` for every account in `accounts`, each account's jobs in cycle order; a failed
/// job stops that account's chain (a push never runs on a store older than the primary),
/// other accounts go on.
pub async fn run_cycle(
    ctx: &JobContext,
    accounts: &[AccountSettings],
    jobs: &[Job],
) -> Vec<RunReport> {
    let mut reports = Vec::new();
    let jobs = with_prerequisites(jobs);
    for account in accounts {
        for job in Job::all().iter().filter(|j| jobs.contains(j)) {
            if ctx.cancel.is_cancelled() {
                return reports;
            }
            let report = run_guarded(ctx, account, *job).await;
            let stop = report.outcome.is_failure();
            reports.push(report);
            if stop {
                break;
            }
        }
    }
    reports
}

/// `jobs` plus what they need to run first in the same cycle: a push needs the account's
/// pulls (contacts, the opt-out sweep, and the list catalogue its rows are validated
/// against), so `sync --job push` runs them first and, as
/// their failure stops the chain, never pushes on a store older than the primary.
pub fn with_prerequisites(jobs: &[Job]) -> Vec<Job> {
    let mut out = jobs.to_vec();
    if jobs.contains(&Job::Push) {
        for j in [Job::Contacts, Job::Unsubscribes, Job::Lists] {
            if !out.contains(&j) {
                out.push(j);
            }
        }
    }
    out
}

/// Builds the API client and job context from settings and a pool.
pub fn context(
    settings: Arc<Settings>,
    pool: PgPool,
    cancel: CancellationToken,
    dry_run: bool,
) -> anyhow::Result<JobContext> {
    use crate::ctct::{Auth, OAuthClient};
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
            crate::ctct::ApiOptions {
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
