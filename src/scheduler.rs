//! Cron glue: tokio-cron-scheduler fires, this module turns each firing into one cycle per
//! account, spawned on the `TaskTracker` and run through `sync::run_guarded`.
//!
//! tokio-cron-scheduler neither prevents overlap nor waits at shutdown and fires each
//! expression on its own, so:
//! - every distinct `[schedule]` expression is one scheduler entry, and the first firing
//!   of a tick (in this process) dispatches the jobs due at that tick as one ordered cycle
//!   per account (`plan`): coincident ticks are merged, push follows fresh pulls;
//! - a cycle first claims `(account, tick)` in `schedule_claims` (so a replica that fires
//!   the same tick later does nothing), then takes the account's cycle lock on a dedicated
//!   connection (so cycles of one account never overlap; a busy lock means the firing is
//!   skipped, recorded as `skipped` runs), then takes over any claim a dead replica left
//!   unfinished, then runs its jobs, each under its own run lock (`run_guarded`);
//! - at most `server.max_concurrent_accounts` cycles run at once in a replica; a cycle
//!   waits for a slot until the next tick, so idle replicas claim what busy ones cannot;
//! - firings check the cancellation token and work only through the tracker, which the
//!   shutdown drains with a grace period.
//!
//! - with `[freshness]` targets, a planner tick every minute asks the request-budget
//!   planner (`core::planner`, fed by `store::planner`) which planned jobs of which
//!   accounts are due, and dispatches them with the tick's cron jobs through the same
//!   claims and locks; an account whose cycle is still running in this replica is left to
//!   the next tick (not recorded as skipped every minute).
//!
//! Times are UTC; expressions have six fields (seconds first).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use croner::Cron;
use sqlx::{Connection, PgConnection};
use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::config::{AccountSettings, Settings};
use crate::core::cycle::{self as plan, Schedule};
use crate::ops::heartbeat::Heartbeat;
use crate::ops::metrics;
use crate::store;
use crate::sync::{self, Job, JobContext};

/// What firings read: swapped as a whole on SIGHUP, so that a cycle keeps the context it
/// started with.
pub struct Plan {
    pub ctx: JobContext,
    pub schedule: Schedule,
    pub accounts: Vec<AccountSettings>,
    pub max_concurrent: usize,
    /// The planner's tick (every minute) when any job has a freshness target.
    pub planner_tick: Option<Cron>,
}

/// The planner's tick.
const PLANNER_TICK: &str = "0 * * * * *";

impl Plan {
    pub fn new(ctx: JobContext) -> anyhow::Result<Plan> {
        let settings: &Settings = &ctx.settings;
        let schedule =
            Schedule::parse(settings.cron_entries()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let planner_tick = if settings.freshness.targets().any() {
            Some(plan::parse_cron(PLANNER_TICK).map_err(|e| anyhow::anyhow!("{e}"))?)
        } else {
            None
        };
        Ok(Plan {
            accounts: settings.accounts.clone(),
            max_concurrent: settings.server.max_concurrent_accounts,
            schedule,
            planner_tick,
            ctx,
        })
    }

    /// Every expression to register: the cron jobs', and the planner's tick.
    fn expressions(&self) -> Vec<(String, Cron)> {
        let mut out = self.schedule.expressions();
        if let Some(tick) = &self.planner_tick {
            if !out.iter().any(|(e, _)| e == PLANNER_TICK) {
                out.push((PLANNER_TICK.to_string(), tick.clone()));
            }
        }
        out
    }

    /// The next tick of any kind after `t` (a cycle waits for a slot until then).
    fn next_tick_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let planner = self
            .planner_tick
            .as_ref()
            .and_then(|c| c.find_next_occurrence(&t, false).ok());
        [self.schedule.next_after(t), planner]
            .into_iter()
            .flatten()
            .min()
    }

    fn is_planner_tick(&self, tick: DateTime<Utc>) -> bool {
        self.planner_tick
            .as_ref()
            .is_some_and(|c| c.is_time_matching(&tick).unwrap_or(false))
    }
}

struct Shared {
    plan: RwLock<Arc<Plan>>,
    permits: RwLock<Arc<Semaphore>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Ticks already dispatched by this process (the entries of coincident expressions
    /// all fire; only the first dispatches).
    recent: Mutex<VecDeque<DateTime<Utc>>>,
    heartbeat: Arc<Heartbeat>,
    replica: String,
    /// Accounts with a cycle running in this process.
    in_flight: Mutex<HashSet<String>>,
}

/// Marks an account's cycle as running in this process while it lives.
struct InFlight<'a> {
    shared: &'a Shared,
    account: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock_or_recover(&self.shared.in_flight).remove(&self.account);
    }
}

/// The running scheduler of one `ccsync run`.
pub struct Scheduler {
    sched: JobScheduler,
    entries: Vec<(String, Uuid)>,
    shared: Arc<Shared>,
}

/// A name for this process in `schedule_claims.replica`.
fn replica_name() -> String {
    // /proc/sys is hidden under systemd's ProcSubset=pid; /etc/hostname is the fallback.
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

fn lock_or_recover<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn plan(&self) -> Arc<Plan> {
        self.plan.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn permits(&self) -> Arc<Semaphore> {
        self.permits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True for the first firing of `tick` in this process.
    fn first_firing_of(&self, tick: DateTime<Utc>) -> bool {
        let mut recent = lock_or_recover(&self.recent);
        if recent.contains(&tick) {
            return false;
        }
        recent.push_back(tick);
        while recent.len() > 64 {
            recent.pop_front();
        }
        true
    }

    /// One firing of `cron`: dispatch the tick's cycles unless this tick is already done.
    fn fire(self: &Arc<Self>, cron: &Cron) {
        if self.cancel.is_cancelled() {
            return;
        }
        let now = Utc::now();
        let Some(tick) = plan::tick_of(cron, now) else {
            warn!(
                expression = cron.pattern.to_string(),
                "a firing came too late; dropped"
            );
            return;
        };
        if !self.first_firing_of(tick) {
            return;
        }
        let plan = self.plan();
        let due = plan.schedule.due_at(tick);
        if plan.is_planner_tick(tick) {
            let span = info_span!("planner", tick = %tick.format("%H:%M:%S"));
            let task = self.clone().dispatch_planned(plan, tick, due);
            self.tracker.spawn(task.instrument(span));
            return;
        }
        if due.is_empty() {
            return;
        }
        for account in &plan.accounts {
            self.spawn_cycle(&plan, account, tick, due.clone());
        }
    }

    fn spawn_cycle(
        self: &Arc<Self>,
        plan: &Arc<Plan>,
        account: &AccountSettings,
        tick: DateTime<Utc>,
        due: Vec<Job>,
    ) {
        let span = info_span!("cycle", account = %account.id, tick = %tick.format("%H:%M:%S"));
        let task = cycle(self.clone(), plan.clone(), account.clone(), tick, due);
        self.tracker.spawn(task.instrument(span));
    }

    /// A planner tick: the plan from the store's state, then one cycle per account with
    /// planned jobs due (plus the tick's cron jobs). If the state cannot be read, the tick
    /// runs its cron jobs only.
    async fn dispatch_planned(
        self: Arc<Self>,
        plan: Arc<Plan>,
        tick: DateTime<Utc>,
        due: Vec<Job>,
    ) {
        let planned = async {
            let mut conn = plan.ctx.pool.acquire().await?;
            store::planner::current(&mut conn, &plan.ctx.settings, Some(&plan.schedule), tick).await
        }
        .await;
        let planned = match planned {
            Ok(p) => p.due(tick),
            Err(e) => {
                warn!(error = %crate::telemetry::Chain(&e), "cannot read what the planner needs; this tick runs its cron jobs only");
                Vec::new()
            }
        };
        for account in &plan.accounts {
            let mut jobs = due.clone();
            if let Some((_, more)) = planned.iter().find(|(a, _)| *a == account.id) {
                if lock_or_recover(&self.in_flight).contains(&account.id) {
                    ::metrics::counter!("ccsync_schedule_ticks_total", "outcome" => "still_running")
                        .increment(1);
                } else {
                    jobs.extend(more.iter().copied());
                }
            }
            if !jobs.is_empty() {
                self.spawn_cycle(&plan, account, tick, jobs);
            }
        }
    }
}

impl Scheduler {
    /// Registers every expression of `plan` and starts ticking.
    pub async fn start(
        plan: Plan,
        tracker: TaskTracker,
        cancel: CancellationToken,
        heartbeat: Arc<Heartbeat>,
    ) -> anyhow::Result<Scheduler> {
        let sched = JobScheduler::new()
            .await
            .context("creating the scheduler")?;
        let shared = Arc::new(Shared {
            permits: RwLock::new(Arc::new(Semaphore::new(plan.max_concurrent))),
            plan: RwLock::new(Arc::new(plan)),
            tracker,
            cancel,
            recent: Mutex::new(VecDeque::new()),
            heartbeat,
            replica: replica_name(),
            in_flight: Mutex::new(HashSet::new()),
        });
        let hb = shared.heartbeat.clone();
        sched
            .add(
                CronJob::new("* * * * * *", move |_, _| hb.beat())
                    .context("registering the heartbeat")?,
            )
            .await
            .context("registering the heartbeat")?;
        let mut me = Scheduler {
            sched,
            entries: Vec::new(),
            shared,
        };
        me.register().await?;
        me.sched.start().await.context("starting the scheduler")?;
        me.shared.heartbeat.beat();
        Ok(me)
    }

    async fn register(&mut self) -> anyhow::Result<()> {
        for (expr, cron) in self.shared.plan().expressions() {
            let shared = self.shared.clone();
            let job = CronJob::new_async(expr.as_str(), move |_, _| {
                let (shared, cron) = (shared.clone(), cron.clone());
                Box::pin(async move { shared.fire(&cron) })
            })
            .with_context(|| format!("scheduling {expr:?}"))?;
            let id = self
                .sched
                .add(job)
                .await
                .with_context(|| format!("scheduling {expr:?}"))?;
            self.entries.push((expr, id));
        }
        Ok(())
    }

    /// The replica name written in claims.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// Applies a reloaded configuration: later firings use `plan`; cycles in flight keep
    /// the plan they started with.
    pub async fn replace(&mut self, plan: Plan) -> anyhow::Result<()> {
        let old = self.shared.plan();
        let new_exprs: Vec<String> = plan.expressions().into_iter().map(|(e, _)| e).collect();
        if plan.max_concurrent != old.max_concurrent {
            *self
                .shared
                .permits
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Arc::new(Semaphore::new(plan.max_concurrent));
        }
        *self.shared.plan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(plan);
        let old_exprs: Vec<String> = self.entries.iter().map(|(e, _)| e.clone()).collect();
        if old_exprs != new_exprs {
            for (_, id) in std::mem::take(&mut self.entries) {
                self.sched
                    .remove(&id)
                    .await
                    .context("removing an old schedule entry")?;
            }
            self.register().await?;
        }
        Ok(())
    }

    /// Takes over cycles left unfinished (by a crash, a kill, or a shutdown that cut a cycle
    /// short) now rather than at each account's next tick.
    pub async fn recover_on_start(&self) -> anyhow::Result<usize> {
        let plan = self.shared.plan();
        let ids: Vec<String> = plan.accounts.iter().map(|a| a.id.clone()).collect();
        let mut conn = plan
            .ctx
            .pool
            .acquire()
            .await
            .context("acquiring a connection")?;
        let open = store::schedule::accounts_with_open_claims(&mut conn, &ids)
            .await
            .context("looking for unfinished cycles")?;
        // A tick with a fraction of a second cannot collide with a scheduled (whole-second) one.
        let tick = Utc::now();
        for account in plan.accounts.iter().filter(|a| open.contains(&a.id)) {
            let span = info_span!("recovery", account = %account.id);
            let task = cycle(
                self.shared.clone(),
                plan.clone(),
                account.clone(),
                tick,
                Vec::new(),
            );
            self.shared.tracker.spawn(task.instrument(span));
        }
        Ok(open.len())
    }

    /// Stops firing. It does not wait for running cycles: the caller cancels the token and
    /// drains the tracker (tokio-cron-scheduler's shutdown only flips a flag).
    pub async fn stop(&mut self) {
        if let Err(e) = self.sched.shutdown().await {
            warn!(error = %crate::telemetry::Chain(&e), "scheduler shutdown reported an error");
        }
    }
}

/// One account's cycle at `tick`: wait for a slot, claim, lock, run.
async fn cycle(
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    account: AccountSettings,
    tick: DateTime<Utc>,
    due: Vec<Job>,
) {
    let permits = shared.permits();
    let wait = plan
        .next_tick_after(tick)
        .and_then(|next| (next - Utc::now()).to_std().ok())
        .unwrap_or(Duration::ZERO);
    let permit = tokio::select! {
        p = permits.acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return,
        },
        _ = tokio::time::sleep(wait) => {
            ::metrics::counter!("ccsync_schedule_ticks_total", "outcome" => "no_capacity").increment(1);
            warn!("no free slot in this replica before the next tick; left to other replicas");
            return;
        }
        _ = shared.cancel.cancelled() => return,
    };
    if shared.cancel.is_cancelled() {
        return;
    }
    lock_or_recover(&shared.in_flight).insert(account.id.clone());
    let _in_flight = InFlight {
        shared: &shared,
        account: account.id.clone(),
    };
    if let Err(e) = claim_and_run(&shared, &plan, &account, tick, &due).await {
        error!(error.message = %format!("{e:#}"), error.cause_chain = ?e, "scheduled cycle failed");
    }
    drop(permit);
}

async fn claim_and_run(
    shared: &Shared,
    plan: &Plan,
    account: &AccountSettings,
    tick: DateTime<Utc>,
    due: &[Job],
) -> anyhow::Result<()> {
    let ctx = &plan.ctx;
    let mut conn = PgConnection::connect_with(&ctx.connect)
        .await
        .context("opening the connection that holds the cycle lock")?;
    let jobs = plan::cycle_jobs(due, &[]);
    let names: Vec<&str> = jobs.iter().map(|j| j.as_str()).collect();
    let claimed = store::schedule::try_claim(&mut conn, &account.id, tick, &names, &shared.replica)
        .await
        .context("claiming the tick")?;
    if !claimed {
        ::metrics::counter!("ccsync_schedule_ticks_total", "outcome" => "claimed_elsewhere")
            .increment(1);
        let _ = conn.close().await;
        return Ok(());
    }
    let locked = store::schedule::try_cycle_lock(&mut conn, &account.id)
        .await
        .context("taking the cycle lock")?;
    if !locked {
        // An earlier cycle of this account is still running (here or in another replica).
        if store::schedule::finish(&mut conn, &account.id, tick, "skipped").await? {
            for job in &jobs {
                let reason = "the previous cycle of this account is still running";
                store::runs::skipped(&mut conn, &account.id, *job, reason)
                    .await
                    .context("recording a skipped run")?;
                metrics::record_run(&account.id, job.as_str(), "skipped", Duration::ZERO, None);
            }
            info!(jobs = ?names, "skipped: the previous cycle of this account is still running");
        }
        ::metrics::counter!("ccsync_schedule_ticks_total", "outcome" => "busy").increment(1);
        let _ = conn.close().await;
        return Ok(());
    }
    let result = run_locked(ctx, &mut conn, account, tick, due).await;
    if let Err(e) = store::schedule::cycle_unlock(&mut conn, &account.id).await {
        warn!(error = %crate::telemetry::Chain(&e), "cannot release the cycle lock (it goes with the connection)");
    }
    let _ = conn.close().await;
    result
}

/// Records each ended job in the tick's claim, so that a replica taking over an abandoned
/// cycle runs only what is left.
struct ClaimLog<'a> {
    conn: &'a mut PgConnection,
    account: &'a str,
    tick: DateTime<Utc>,
}

impl sync::runner::CycleLog for ClaimLog<'_> {
    async fn job_done(&mut self, job: Job, run_id: Uuid) -> anyhow::Result<()> {
        store::schedule::job_done(self.conn, self.account, self.tick, job.as_str(), run_id).await?;
        Ok(())
    }
}

/// The cycle proper, holding the account's cycle lock on `conn`.
async fn run_locked(
    ctx: &JobContext,
    conn: &mut PgConnection,
    account: &AccountSettings,
    tick: DateTime<Utc>,
    due: &[Job],
) -> anyhow::Result<()> {
    // Holding the lock proves that unfinished earlier claims are abandoned.
    let open = store::schedule::open_claims_before(conn, &account.id, tick)
        .await
        .context("reading unfinished cycles")?;
    let mut unfinished = Vec::new();
    for c in &open {
        unfinished.extend(plan::remaining(&c.jobs, &c.done));
    }
    let jobs = plan::cycle_jobs(due, &unfinished);
    if !open.is_empty() {
        let ticks: Vec<DateTime<Utc>> = open.iter().map(|c| c.tick).collect();
        let names: Vec<&str> = jobs.iter().map(|j| j.as_str()).collect();
        store::schedule::set_jobs(conn, &account.id, tick, &names).await?;
        store::schedule::mark_recovered(conn, &account.id, &ticks, tick).await?;
        ::metrics::counter!("ccsync_schedule_ticks_total", "outcome" => "recovered")
            .increment(open.len() as u64);
        warn!(abandoned = open.len(), jobs = ?unfinished, "taking over cycles left unfinished by a stopped replica");
    }
    let mut log = ClaimLog {
        conn: &mut *conn,
        account: &account.id,
        tick,
    };
    let end = sync::runner::run_account_cycle(ctx, account, &jobs, &mut log).await?;
    if !end.finished {
        // The claim stays open: the next cycle (or the next start) runs what is left.
        return Ok(());
    }
    let failed = end.failed;
    store::schedule::finish(
        conn,
        &account.id,
        tick,
        if failed { "failed" } else { "completed" },
    )
    .await
    .context("closing the cycle's claim")?;
    ::metrics::counter!("ccsync_schedule_ticks_total", "outcome" => "ran").increment(1);
    Ok(())
}
