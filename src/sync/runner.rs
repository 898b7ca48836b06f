//! Running jobs: one run of one job ([`run_guarded`]) and one cycle of an account's jobs
//! ([`run_account_cycle`]), the one cycle runner behind `ccsync sync`, `ccsync demo` and
//! the daemon's scheduler. What a cycle runs, in which order, and when a push may follow its
//! pulls is decided by the pure `core::cycle`; this module only carries it out.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tracing::{error, info, info_span, Instrument};
use uuid::Uuid;

use super::context::JobContext;
use super::{contacts, deletes, lists_cycle, optouts, push, reconcile};
use crate::config::AccountSettings;
use crate::core::cycle::{self, Decision, Ended};
use crate::core::job::Job;
use crate::core::states::RunOutcome;
use crate::ops::metrics;
use crate::store;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// Not run: another run of the same (account, job) holds the lock, or a push's pulls
    /// did not all succeed in its cycle.
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

/// Runs one job for one account unless it is already running anywhere (advisory lock on a
/// dedicated connection, released when the run ends or the connection closes). The run's
/// root span (account, job, run id) covers everything it does, spawned work included.
pub async fn run_guarded(ctx: &JobContext, account: &AccountSettings, job: Job) -> RunReport {
    let run_id = Uuid::new_v4();
    let span = info_span!("run", account = %account.id, job = %job, run_id = %run_id);
    async {
        let outcome = match run_with_lock(ctx, account, job, run_id).await {
            Ok(o) => o,
            Err(e) => {
                error!(error.message = %format!("{e:#}"), error.cause_chain = ?e, "run bookkeeping failed");
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

async fn run_with_lock(
    ctx: &JobContext,
    account: &AccountSettings,
    job: Job,
    run_id: Uuid,
) -> anyhow::Result<Outcome> {
    let mut lock_conn = PgConnection::connect_with(&ctx.connect)
        .await
        .context("opening the connection that holds the run lock")?;
    let locked = store::runs::try_run_lock(&mut lock_conn, &account.id, job)
        .await
        .context("taking the run lock")?;
    if !locked {
        info!("skipped: the same job is already running for this account");
        if !ctx.dry_run {
            store::runs::skipped(&mut lock_conn, &account.id, job, "already running")
                .await
                .context("recording the skipped run")?;
        }
        let _ = lock_conn.close().await;
        return Ok(Outcome::Skipped);
    }
    if !ctx.dry_run {
        let orphans = store::runs::close_orphans(&mut lock_conn, &account.id, job)
            .await
            .context("closing runs interrupted by a dead process")?;
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "closed runs left unfinished by a process that died"
            );
        }
        store::runs::start(&mut lock_conn, run_id, &account.id, job)
            .await
            .context("recording the run start")?;
    }
    let started = Instant::now();
    // The lock lives as long as its connection: when that connection dies, another process
    // may take the lock, so the run stops instead of running alongside the next one. It
    // stops at its next safe point (a page boundary, a request), on a token of its own, and
    // is awaited: dropped mid-statement, a page's `COPY` would return its connection to the
    // pool one answer out of step with the server, and the next query on it would read the
    // answer of the one before (sqlx 0.8).
    let run_ctx = JobContext {
        cancel: ctx.cancel.child_token(),
        ..ctx.clone()
    };
    let running = execute(&run_ctx, account, job, run_id);
    tokio::pin!(running);
    let mut result = tokio::select! {
        r = &mut running => r,
        lost = watch_lock(&mut lock_conn) => {
            run_ctx.cancel.cancel();
            match running.await {
                // It ended on its own: what it did is done.
                Ok(stats) => Ok(stats),
                Err(_) => Err(lost),
            }
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if let Ok(stats) = &mut result {
        if stats.is_object() {
            stats["duration_ms"] = json!(elapsed_ms);
        }
    }
    let (outcome, stats, err) = match &result {
        Ok(s) => {
            info!(stats = %s, "run succeeded");
            (RunOutcome::Succeeded, s.clone(), None)
        }
        Err(e) => {
            error!(error.message = %format!("{e:#}"), error.cause_chain = ?e, "run failed");
            let outcome = if ctx.cancel.is_cancelled() {
                RunOutcome::Cancelled
            } else {
                RunOutcome::Failed
            };
            (
                outcome,
                json!({ "duration_ms": elapsed_ms }),
                Some(format!("{e:#}")),
            )
        }
    };
    let recorded = if ctx.dry_run {
        Ok(())
    } else {
        store::runs::finish(&mut lock_conn, run_id, outcome, &stats, err.as_deref())
            .await
            .context("recording the run end")
    };
    let _ = store::runs::run_unlock(&mut lock_conn, &account.id, job).await;
    let _ = lock_conn.close().await;
    if let Err(bookkeeping) = recorded {
        // A lost database connection fails both the run and its bookkeeping: the run's own
        // error is the news, the bookkeeping one comes with it (the next run closes the
        // unfinished row as an orphan).
        return match err {
            Some(run_err) => {
                error!(error.message = %format!("{bookkeeping:#}"), "the failed run could not be recorded");
                Ok(Outcome::Failed(format!(
                    "{run_err} (and the run end could not be recorded: {bookkeeping:#})"
                )))
            }
            None => Err(bookkeeping),
        };
    }
    Ok(match (result, err) {
        (Ok(stats), _) => Outcome::Succeeded(stats),
        (Err(_), Some(msg)) => Outcome::Failed(msg),
        (Err(e), None) => Outcome::Failed(format!("{e:#}")),
    })
}

/// How often a run checks that the connection holding its lock is still there.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Returns (with the error) once the connection holding the run lock stops answering.
async fn watch_lock(conn: &mut PgConnection) -> anyhow::Error {
    loop {
        tokio::time::sleep(LOCK_CHECK_EVERY).await;
        if let Err(e) = store::runs::lock_held(conn).await {
            return anyhow::Error::new(e).context(
                "the database connection holding the run lock was lost: the run stopped so \
                 that no other process runs the same job alongside it",
            );
        }
    }
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
        Job::Lists => lists_cycle::run_once(ctx, account, run_id).await,
        Job::Reconcile => reconcile::run_once(ctx, account, run_id).await,
        Job::Push => push::run_once(ctx, account, run_id).await,
    }
}

/// What a cycle's caller records as each job ends (the daemon: the tick's claim).
pub trait CycleLog {
    /// `job` ended (or was skipped, with a nil run id) and is not to be run again for this
    /// cycle.
    fn job_done(&mut self, job: Job, run_id: Uuid) -> impl Future<Output = anyhow::Result<()>>;
}

/// A cycle whose ends are not recorded anywhere but in `sync_runs` (`ccsync sync`, demo).
pub struct NoLog;

impl CycleLog for NoLog {
    async fn job_done(&mut self, _job: Job, _run_id: Uuid) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How a cycle ended.
#[derive(Debug, Clone)]
pub struct CycleEnd {
    pub reports: Vec<RunReport>,
    /// False when the shutdown stopped it: what is left runs in the next cycle.
    pub finished: bool,
    pub failed: bool,
}

/// Runs `jobs` (plus what they need first, in cycle order: `core::cycle::cycle_jobs`) for
/// one account: a failure ends the cycle, and a push runs only after its pulls succeeded
/// in it (`core::cycle::decide`). Each ended job is recorded with metrics and in `log`.
pub async fn run_account_cycle(
    ctx: &JobContext,
    account: &AccountSettings,
    jobs: &[Job],
    log: &mut impl CycleLog,
) -> anyhow::Result<CycleEnd> {
    let mut end = CycleEnd {
        reports: Vec::new(),
        finished: false,
        failed: false,
    };
    let mut so_far: Vec<(Job, Ended)> = Vec::new();
    for job in cycle::cycle_jobs(jobs, &[]) {
        if ctx.cancel.is_cancelled() {
            return Ok(end);
        }
        match cycle::decide(job, &so_far) {
            Decision::Stop => break,
            Decision::SkipPush => {
                let reason = "the pulls this push needs did not all succeed in this cycle";
                info!(account = %account.id, job = %job, "{reason}: not pushing");
                if !ctx.dry_run {
                    store::runs::skipped(&mut *ctx.pool.acquire().await?, &account.id, job, reason)
                        .await
                        .context("recording a skipped push")?;
                }
                log.job_done(job, Uuid::nil()).await?;
                metrics::record_run(&account.id, job.as_str(), "skipped", Duration::ZERO, None);
                end.reports.push(RunReport {
                    run_id: Uuid::nil(),
                    account: account.id.clone(),
                    job,
                    outcome: Outcome::Skipped,
                });
                continue;
            }
            Decision::Run => {}
        }
        let (started, started_at) = (Instant::now(), Utc::now());
        let report = run_guarded(ctx, account, job).await;
        let elapsed = started.elapsed();
        let cancelled = ctx.cancel.is_cancelled();
        let (ended, outcome, stats) = match &report.outcome {
            Outcome::Succeeded(s) => (Ended::Succeeded, RunOutcome::Succeeded, Some(s)),
            Outcome::Skipped => (Ended::Skipped, RunOutcome::Skipped, None),
            Outcome::Failed(_) if cancelled => (Ended::Failed, RunOutcome::Cancelled, None),
            Outcome::Failed(_) => (Ended::Failed, RunOutcome::Failed, None),
        };
        metrics::record_run(&account.id, job.as_str(), outcome.as_str(), elapsed, stats);
        if job == Job::Push {
            metrics::record_activities(&ctx.pool, &account.id, started_at).await;
        }
        end.failed |= ended == Ended::Failed;
        end.reports.push(report.clone());
        if outcome == RunOutcome::Cancelled {
            // Stopped at a page boundary by the shutdown: left for the next cycle.
            return Ok(end);
        }
        log.job_done(job, report.run_id)
            .await
            .context("recording the job in the cycle's log")?;
        so_far.push((job, ended));
    }
    end.finished = true;
    Ok(end)
}

/// Runs `jobs` for every account in `accounts`, one cycle each ([`run_account_cycle`]); an
/// account's failure does not stop the others.
pub async fn run_cycle(
    ctx: &JobContext,
    accounts: &[AccountSettings],
    jobs: &[Job],
) -> Vec<RunReport> {
    let mut reports = Vec::new();
    for account in accounts {
        if ctx.cancel.is_cancelled() {
            break;
        }
        match run_account_cycle(ctx, account, jobs, &mut NoLog).await {
            Ok(end) => reports.extend(end.reports),
            Err(e) => {
                error!(account = %account.id, error.message = %format!("{e:#}"), error.cause_chain = ?e, "cycle bookkeeping failed");
                reports.push(RunReport {
                    run_id: Uuid::nil(),
                    account: account.id.clone(),
                    job: jobs.first().copied().unwrap_or(Job::Contacts),
                    outcome: Outcome::Failed(format!("{e:#}")),
                });
            }
        }
    }
    reports
}
