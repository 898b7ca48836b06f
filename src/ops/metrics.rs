//! Prometheus metrics. Every name starts with `ccsync_`; labels are accounts, jobs,
//! endpoints, outcomes and states, never contacts or emails.
//!
//! Counters and histograms are recorded where things happen (runs here, API requests in
//! `ctct::client`, pacer waits in `store::pacer`); the gauges that describe the shared
//! database (lag, backlog, budget left) are refreshed every `server.metrics_interval` by
//! [`upkeep_loop`], which also runs the exporter's upkeep (it spawns none of its own).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store;

/// Names of the metrics, for the documentation test and the README's deployment section.
pub const NAMES: &[&str] = &[
    "ccsync_runs_total",
    "ccsync_run_duration_seconds",
    "ccsync_contacts_pulled_total",
    "ccsync_contacts_pushed_total",
    "ccsync_contacts_skipped_total",
    "ccsync_api_requests_total",
    "ccsync_api_budget_remaining",
    "ccsync_api_requests_today",
    "ccsync_pacer_wait_seconds",
    "ccsync_pacer_spacing_ratio",
    "ccsync_watermark_lag_seconds",
    "ccsync_last_success_age_seconds",
    "ccsync_outbound_rows",
    "ccsync_import_activities_in_flight",
    "ccsync_import_activity_duration_seconds",
    "ccsync_accounts_needing_reauth",
    "ccsync_schedule_ticks_total",
    "ccsync_config_reloads_total",
    "ccsync_scheduler_heartbeat_age_seconds",
    "ccsync_build_info",
    "ccsync_last_success_timestamp_seconds",
    "ccsync_job_failing_seconds",
    "ccsync_job_interval_seconds",
    "ccsync_account_needs_reauth",
    "ccsync_api_quota_exceeded",
    "ccsync_outbound_failed_total",
    "ccsync_outbound_oldest_pending_age_seconds",
    "ccsync_import_activity_oldest_age_seconds",
    "ccsync_config_ready_failing_after_seconds",
    "ccsync_config_poll_timeout_seconds",
    "ccsync_config_daily_request_limit",
    "ccsync_token_refreshes_total",
    "ccsync_retention_deleted_rows_total",
    "ccsync_poison_records_total",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (later calls return the same handle, so that
/// tests may build several applications in one process).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ccsync_run_duration_seconds".into()),
            &[
                0.05, 0.25, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("ccsync_pacer_wait_seconds".into()),
            &[0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("ccsync_import_activity_duration_seconds".into()),
            &[
                1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 21600.0,
            ],
        )?
        .install_recorder();
    let handle = match handle {
        Ok(h) => h,
        // Another thread won the race (or a recorder exists): use the stored handle.
        Err(e) => return HANDLE.get().cloned().ok_or_else(|| anyhow::anyhow!("{e}")),
    };
    let handle = HANDLE.get_or_init(|| handle).clone();
    describe();
    gauge!("ccsync_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_counter!("ccsync_runs_total", "Job runs by account, job and outcome");
    describe_histogram!(
        "ccsync_run_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of job runs"
    );
    describe_counter!(
        "ccsync_contacts_pulled_total",
        "Contacts read from Constant Contact"
    );
    describe_counter!(
        "ccsync_contacts_pushed_total",
        "Outbound rows completed by imports"
    );
    describe_counter!(
        "ccsync_contacts_skipped_total",
        "Contacts or outbound rows skipped, with a reason recorded"
    );
    describe_counter!(
        "ccsync_api_requests_total",
        "API requests by endpoint and HTTP status"
    );
    describe_gauge!(
        "ccsync_api_budget_remaining",
        "Requests left today under daily_request_limit (all replicas)"
    );
    describe_gauge!(
        "ccsync_api_requests_today",
        "Requests counted today (all replicas)"
    );
    describe_histogram!(
        "ccsync_pacer_wait_seconds",
        metrics::Unit::Seconds,
        "Wait for a shared request slot"
    );
    describe_gauge!(
        "ccsync_pacer_spacing_ratio",
        "Request slots' spacing over the API's nominal interval (above 1 after throttled answers)"
    );
    describe_gauge!(
        "ccsync_watermark_lag_seconds",
        "Seconds between now and the job's watermark"
    );
    describe_gauge!(
        "ccsync_last_success_age_seconds",
        "Seconds since the job last succeeded"
    );
    describe_gauge!("ccsync_outbound_rows", "Outbound rows by account and state");
    describe_gauge!(
        "ccsync_import_activities_in_flight",
        "Import activities not finished"
    );
    describe_histogram!(
        "ccsync_import_activity_duration_seconds",
        metrics::Unit::Seconds,
        "Submission to end of import activities"
    );
    describe_gauge!(
        "ccsync_accounts_needing_reauth",
        "Accounts whose refresh token was refused"
    );
    describe_counter!(
        "ccsync_schedule_ticks_total",
        "Scheduled cycles by outcome: ran, claimed_elsewhere, busy, no_capacity, recovered"
    );
    describe_counter!("ccsync_config_reloads_total", "SIGHUP reloads by outcome");
    describe_gauge!(
        "ccsync_scheduler_heartbeat_age_seconds",
        "Seconds since the scheduler loop last ticked"
    );
    describe_gauge!("ccsync_build_info", "Version of the running binary");
    describe_gauge!(
        "ccsync_last_success_timestamp_seconds",
        "Unix time of the job's last success"
    );
    describe_gauge!(
        "ccsync_job_failing_seconds",
        "Seconds since the job's first failure after its last success (0: not failing)"
    );
    describe_gauge!(
        "ccsync_job_interval_seconds",
        "Period of the job's schedule (gap between its next two runs)"
    );
    describe_gauge!(
        "ccsync_account_needs_reauth",
        "1 when the account's refresh token was refused (ccsync auth login), else 0"
    );
    describe_gauge!(
        "ccsync_api_quota_exceeded",
        "1 when Constant Contact answered quota_exceeded today (paused until 00:00 UTC)"
    );
    describe_counter!(
        "ccsync_outbound_failed_total",
        "Outbound rows left failed by push runs (invalid, or refused after max_push_attempts)"
    );
    describe_gauge!(
        "ccsync_outbound_oldest_pending_age_seconds",
        "Seconds since the oldest pending outbound row was queued (0: none pending)"
    );
    describe_gauge!(
        "ccsync_import_activity_oldest_age_seconds",
        "Seconds since the oldest import activity in flight was submitted (0: none)"
    );
    describe_gauge!(
        "ccsync_config_ready_failing_after_seconds",
        "server.ready_failing_after, for alert rules"
    );
    describe_gauge!(
        "ccsync_config_poll_timeout_seconds",
        "sync.poll_timeout, for alert rules"
    );
    describe_gauge!(
        "ccsync_config_daily_request_limit",
        "constant_contact.daily_request_limit, for alert rules"
    );
    describe_counter!(
        "ccsync_poison_records_total",
        "Contacts of a page skipped as not storable (no contact_id, no address), by account; each one a row of ccsync.poison_records"
    );
    describe_counter!(
        "ccsync_token_refreshes_total",
        "OAuth token refreshes by account and outcome: ok, reauth_required, failed"
    );
    describe_counter!(
        "ccsync_retention_deleted_rows_total",
        "Rows the scheduled prune deleted, by table ([retention])"
    );
}

/// Records one run: count by outcome, duration, and the contacts it moved (from its stats).
pub fn record_run(
    account: &str,
    job: &str,
    outcome: &str,
    elapsed: Duration,
    stats: Option<&Value>,
) {
    let (a, j) = (account.to_string(), job.to_string());
    counter!("ccsync_runs_total", "account" => a.clone(), "job" => j.clone(), "outcome" => outcome.to_string())
        .increment(1);
    if outcome == "skipped" {
        return;
    }
    histogram!("ccsync_run_duration_seconds", "account" => a.clone(), "job" => j.clone())
        .record(elapsed.as_secs_f64());
    let Some(stats) = stats else { return };
    let failed = outbound_failed(stats);
    if job == "push" && failed > 0 {
        counter!("ccsync_outbound_failed_total", "account" => a.clone()).increment(failed);
    }
    let moved = contacts_moved(stats);
    if moved.pulled > 0 {
        counter!("ccsync_contacts_pulled_total", "account" => a.clone(), "job" => j.clone())
            .increment(moved.pulled);
    }
    if moved.pushed > 0 {
        counter!("ccsync_contacts_pushed_total", "account" => a.clone()).increment(moved.pushed);
    }
    if moved.skipped > 0 {
        counter!("ccsync_contacts_skipped_total", "account" => a, "job" => j)
            .increment(moved.skipped);
    }
}

/// Contacts a run moved, read from its stats JSON.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub pulled: u64,
    pub pushed: u64,
    pub skipped: u64,
}

/// Reads the counts from a run's stats: pulls report `seen`, pushes `completed` (or
/// `pushed`), and both report what they skipped (`skipped`, `outbound_skipped`).
pub fn contacts_moved(stats: &Value) -> Moved {
    let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    Moved {
        pulled: n("seen"),
        pushed: n("completed").max(n("pushed")),
        skipped: n("skipped") + n("outbound_skipped"),
    }
}

/// Outbound rows a push run left `failed`: invalid ones and those out of attempts.
pub fn outbound_failed(stats: &Value) -> u64 {
    let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    n("failed") + n("failed_invalid")
}

/// Records the import activities of `account` that ended since `since` (after a push run).
pub async fn record_activities(pool: &PgPool, account: &str, since: chrono::DateTime<chrono::Utc>) {
    let Ok(mut conn) = pool.acquire().await else {
        return;
    };
    match store::ops::activities_finished_since(&mut conn, account, since).await {
        Ok(rows) => {
            for (state, secs) in rows {
                histogram!("ccsync_import_activity_duration_seconds", "account" => account.to_string(), "state" => state)
                    .record(secs.max(0.0));
            }
        }
        Err(e) => {
            tracing::debug!(error = %crate::telemetry::Chain(&e), "cannot read finished import activities")
        }
    }
}

/// Refreshes the gauges that describe the shared database.
pub async fn refresh_gauges(pool: &PgPool, settings: &Settings) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let used: i64 = store::usage::used_today(&mut conn)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    let exhausted = store::usage::quota_exhausted_today(&mut conn).await?;
    let limit = settings.constant_contact.daily_request_limit as i64;
    let left = if exhausted { 0 } else { (limit - used).max(0) };
    gauge!("ccsync_api_budget_remaining").set(left as f64);
    gauge!("ccsync_api_requests_today").set(used as f64);
    for (account, job, wm, success) in store::ops::lags(&mut conn).await? {
        if let Some(s) = wm {
            gauge!("ccsync_watermark_lag_seconds", "account" => account.clone(), "job" => job.clone()).set(s);
        }
        if let Some(s) = success {
            gauge!("ccsync_last_success_age_seconds", "account" => account, "job" => job).set(s);
        }
    }
    // Every state of every configured account, so that an emptied state reads 0.
    let rows = store::status::outbound_by_state(&mut conn).await?;
    for a in &settings.accounts {
        for state in ["pending", "submitted", "completed", "skipped", "failed"] {
            let n = rows
                .iter()
                .find(|(acc, st, _)| acc == &a.id && st == state)
                .map_or(0, |r| r.2);
            gauge!("ccsync_outbound_rows", "account" => a.id.clone(), "state" => state)
                .set(n as f64);
        }
    }
    let in_flight = store::status::activities_in_flight(&mut conn).await?;
    for a in &settings.accounts {
        let n = in_flight
            .iter()
            .find(|(acc, _)| acc == &a.id)
            .map_or(0, |r| r.1);
        gauge!("ccsync_import_activities_in_flight", "account" => a.id.clone()).set(n as f64);
    }
    let reauth = store::ops::accounts_needing_reauth(&mut conn).await?;
    gauge!("ccsync_accounts_needing_reauth").set(reauth.len() as f64);
    refresh_alert_gauges(&mut conn, settings, exhausted, &reauth).await
}

/// The gauges the alert rules of `deploy/prometheus/ccsync-alerts.yaml` compare: last
/// successes, failing durations, schedule periods, the oldest waiting row and activity,
/// and the configured thresholds. Per configured account (and job), 0 when nothing is
/// wrong, so that a rule sees a series that is healthy rather than none.
async fn refresh_alert_gauges(
    conn: &mut sqlx::PgConnection,
    settings: &Settings,
    exhausted: bool,
    reauth: &[String],
) -> Result<(), sqlx::Error> {
    use crate::core::cycle::Schedule;
    use crate::core::job::Job;
    let secs = |d: Duration| d.as_secs_f64();
    gauge!("ccsync_config_ready_failing_after_seconds")
        .set(secs(settings.server.ready_failing_after));
    gauge!("ccsync_config_poll_timeout_seconds").set(secs(settings.sync.poll_timeout));
    gauge!("ccsync_config_daily_request_limit")
        .set(settings.constant_contact.daily_request_limit as f64);
    gauge!("ccsync_api_quota_exceeded").set(if exhausted { 1.0 } else { 0.0 });
    for (account, job, at) in store::ops::last_successes(conn).await? {
        gauge!("ccsync_last_success_timestamp_seconds", "account" => account, "job" => job).set(at);
    }
    let ids: Vec<String> = settings.accounts.iter().map(|a| a.id.clone()).collect();
    let (accounts, jobs): (Vec<String>, Vec<String>) = ids
        .iter()
        .flat_map(|a| {
            Job::all()
                .iter()
                .map(move |j| (a.clone(), j.as_str().to_string()))
        })
        .unzip();
    let failing = store::ops::failing_since(conn, &accounts, &jobs).await?;
    let schedule = Schedule::parse(settings.cron_entries()).ok();
    let now = chrono::Utc::now();
    for (account, job) in accounts.iter().zip(&jobs) {
        let since = failing
            .iter()
            .find(|(a, j, _)| a == account && j == job)
            .map_or(0.0, |(_, _, t)| {
                (now - *t).num_milliseconds().max(0) as f64 / 1000.0
            });
        gauge!("ccsync_job_failing_seconds", "account" => account.clone(), "job" => job.clone())
            .set(since);
        let period = schedule
            .as_ref()
            .zip(crate::core::cycle::job_named(job))
            .and_then(|(s, j)| s.period(j, now));
        if let Some(p) = period {
            gauge!("ccsync_job_interval_seconds", "account" => account.clone(), "job" => job.clone())
                .set(secs(p));
        }
    }
    if settings.freshness.targets().any() {
        let planned = store::planner::current(conn, settings, schedule.as_ref(), now).await?;
        gauge!("ccsync_plan_plannable_requests_per_day").set(planned.plan.plannable_per_day);
        gauge!("ccsync_plan_planned_requests_per_day").set(planned.plan.planned_per_day);
        for job in crate::core::planner::ALLOCATED {
            let short = if planned.plan.short.contains(&job) {
                1.0
            } else {
                0.0
            };
            gauge!("ccsync_plan_short_of_target", "job" => job.as_str()).set(short);
        }
        for a in &planned.plan.accounts {
            gauge!("ccsync_plan_requests_per_day", "account" => a.account.clone())
                .set(a.requests_per_day);
            for (job, every) in &a.intervals {
                gauge!("ccsync_job_interval_seconds", "account" => a.account.clone(), "job" => job.as_str())
                    .set(secs(*every));
            }
        }
    }
    let pending = store::ops::oldest_pending_outbound(conn).await?;
    let activities = store::ops::oldest_activity_in_flight(conn).await?;
    let age = |rows: &[(String, f64)], id: &str| {
        rows.iter()
            .find(|(a, _)| a == id)
            .map_or(0.0, |r| r.1.max(0.0))
    };
    for id in &ids {
        let needs = if reauth.contains(id) { 1.0 } else { 0.0 };
        gauge!("ccsync_account_needs_reauth", "account" => id.clone()).set(needs);
        // Registered at 0, so that the first failure shows as an increase.
        counter!("ccsync_outbound_failed_total", "account" => id.clone()).increment(0);
        gauge!("ccsync_outbound_oldest_pending_age_seconds", "account" => id.clone())
            .set(age(&pending, id));
        gauge!("ccsync_import_activity_oldest_age_seconds", "account" => id.clone())
            .set(age(&activities, id));
    }
    Ok(())
}

/// Every `interval`: the exporter's upkeep (histogram maintenance) and the gauges. Ends
/// when `cancel` fires.
pub async fn upkeep_loop(
    handle: PrometheusHandle,
    pool: PgPool,
    settings: tokio::sync::watch::Receiver<std::sync::Arc<Settings>>,
    heartbeat: std::sync::Arc<crate::ops::heartbeat::Heartbeat>,
    cancel: CancellationToken,
) {
    loop {
        handle.run_upkeep();
        gauge!("ccsync_scheduler_heartbeat_age_seconds").set(heartbeat.age().as_secs_f64());
        let current = settings.borrow().clone();
        if let Err(e) = refresh_gauges(&pool, &current).await {
            tracing::warn!(error = %crate::telemetry::Chain(&e), "cannot refresh the metrics gauges");
        }
        tokio::select! {
            _ = tokio::time::sleep(current.server.metrics_interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_metric_name_starts_with_ccsync() {
        for n in NAMES {
            assert!(n.starts_with("ccsync_"), "{n}");
        }
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../../README.md");
        for n in NAMES {
            assert!(readme.contains(n), "README.md does not document {n}");
        }
    }

    #[test]
    fn outbound_failures_count_invalid_rows_and_rows_out_of_attempts() {
        assert_eq!(
            outbound_failed(&json!({"failed": 2, "failed_invalid": 3})),
            5
        );
        assert_eq!(outbound_failed(&json!({"completed": 7})), 0);
    }

    #[test]
    fn moved_counts_come_from_pull_and_push_stats() {
        let pull = json!({"seen": 40, "created": 3, "outbound_skipped": 2});
        assert_eq!(
            contacts_moved(&pull),
            Moved {
                pulled: 40,
                pushed: 0,
                skipped: 2
            }
        );
        let push = json!({"completed": 7, "skipped": 1});
        assert_eq!(
            contacts_moved(&push),
            Moved {
                pulled: 0,
                pushed: 7,
                skipped: 1
            }
        );
        assert_eq!(contacts_moved(&json!(null)), Moved::default());
        assert_eq!(contacts_moved(&json!({"seen": "x"})), Moved::default());
    }
}
