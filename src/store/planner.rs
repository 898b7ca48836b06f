//! What the request-budget planner reads (`core::planner`): per account, the last start of
//! each job, its recent activity, and whether a push has work. Three statements for every
//! account at once, whatever their number.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::config::Settings;
use crate::core::cycle::Schedule;
use crate::core::job::Job;
use crate::core::planner::{self, Budget, Load, Plan};

/// The planner's view of one account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountState {
    pub load: Load,
    /// The latest start of each job (skipped runs do not count: they sent nothing).
    pub last_start: HashMap<Job, DateTime<Utc>>,
    /// Pending or submitted outbound rows, or activities in flight.
    pub push_work: bool,
}

/// A run's pages beyond its first count at most this many requests toward the daily
/// estimate: a backfill's thousands are a one-off, paid from the day's budget already
/// (`api_usage`), not a daily cost.
const MAX_EXTRA_PER_RUN: f64 = 20.0;

/// The state of each of `accounts`, in their order.
pub async fn states(
    conn: &mut PgConnection,
    accounts: &[String],
) -> Result<Vec<AccountState>, sqlx::Error> {
    let starts: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT DISTINCT ON (account_id, job) account_id, job, started_at FROM ccsync.sync_runs
         WHERE account_id = ANY($1) AND outcome IS DISTINCT FROM 'skipped'
         ORDER BY account_id, job, started_at DESC",
    )
    .bind(accounts)
    .fetch_all(&mut *conn)
    .await?;
    let activity: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT account_id,
                sum(CASE WHEN jsonb_typeof(stats->'seen') = 'number'
                         THEN (stats->>'seen')::float8 ELSE 0 END)::float8,
                sum(CASE WHEN jsonb_typeof(stats->'api_requests') = 'number'
                         THEN least(greatest((stats->>'api_requests')::float8
                                    - CASE WHEN job = 'lists' THEN 2 ELSE 1 END, 0), $2)
                         ELSE 0 END)::float8
         FROM ccsync.sync_runs
         WHERE account_id = ANY($1) AND started_at > now() - interval '1 day'
           AND job IN ('contacts', 'unsubscribes', 'deletes', 'lists')
         GROUP BY account_id",
    )
    .bind(accounts)
    .bind(MAX_EXTRA_PER_RUN)
    .fetch_all(&mut *conn)
    .await?;
    let work: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT account_id FROM ccsync.outbound
         WHERE account_id = ANY($1) AND state IN ('pending', 'submitted')
         UNION
         SELECT DISTINCT account_id FROM ccsync.import_activities
         WHERE account_id = ANY($1) AND finished_at IS NULL",
    )
    .bind(accounts)
    .fetch_all(&mut *conn)
    .await?;
    Ok(accounts
        .iter()
        .map(|a| {
            let (changes, extra) = activity
                .iter()
                .find(|(id, _, _)| id == a)
                .map(|(_, c, e)| (*c, *e))
                .unwrap_or((0.0, 0.0));
            AccountState {
                load: Load {
                    account: a.clone(),
                    changes_per_day: changes,
                    extra_requests_per_day: extra,
                },
                last_start: starts
                    .iter()
                    .filter(|(id, _, _)| id == a)
                    .filter_map(|(_, job, at)| Some((job.parse().ok()?, *at)))
                    .collect(),
                push_work: work.contains(a),
            }
        })
        .collect())
}

/// The plan at `now` and the state it was made from: what the scheduler dispatches from
/// at a planner tick, and what `status` and `/metrics` show.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub targets: planner::Targets,
    pub budget: Budget,
    pub plan: Plan,
    pub states: Vec<AccountState>,
}

impl Planned {
    /// The planned jobs of each account due at `tick` (accounts with none left out).
    pub fn due(&self, tick: DateTime<Utc>) -> Vec<(String, Vec<Job>)> {
        self.plan
            .accounts
            .iter()
            .zip(&self.states)
            .map(|(p, s)| {
                let jobs = planner::due_jobs(&self.targets, p, &s.last_start, s.push_work, tick);
                (p.account.clone(), jobs)
            })
            .filter(|(_, jobs)| !jobs.is_empty())
            .collect()
    }

    /// When the next planned run of `job` for `account` is due (now, for one that never
    /// ran), for `status`.
    pub fn next_run(&self, account: &str, job: Job) -> Option<DateTime<Utc>> {
        let interval = self.plan.interval(account, job)?;
        let state = self.states.iter().find(|s| s.load.account == account)?;
        let last = state.last_start.get(&job).copied();
        Some(planner::next_due(interval, last).unwrap_or_else(Utc::now))
    }
}

/// Reads what the planner needs for every account of `settings` and plans at `now`.
pub async fn current(
    conn: &mut PgConnection,
    settings: &Settings,
    schedule: Option<&Schedule>,
    now: DateTime<Utc>,
) -> Result<Planned, sqlx::Error> {
    let targets = settings.freshness.targets();
    let ids: Vec<String> = settings.accounts.iter().map(|a| a.id.clone()).collect();
    let states = states(conn, &ids).await?;
    let used: i64 = super::usage::used_today(conn)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    let cron = schedule.map_or(0.0, |s| {
        planner::cron_cost_per_day(&s.runs_per_day(now), ids.len())
    });
    let budget = Budget::at(
        now,
        settings.constant_contact.daily_request_limit,
        used.max(0) as u64,
        cron,
    );
    let loads: Vec<Load> = states.iter().map(|s| s.load.clone()).collect();
    let plan = planner::plan(&targets, &loads, &budget);
    Ok(Planned {
        targets,
        budget,
        plan,
        states,
    })
}
