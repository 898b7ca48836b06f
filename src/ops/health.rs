//! The operations listener: `/healthz` (the process is serving HTTP), `/livez` (liveness:
//! the process serves and its scheduler loop ticked recently — what a container
//! orchestrator should restart on; an account needing re-authorisation or an unreachable
//! database does not make it fail, restarting would not help), `/readyz` (started, not
//! stopping, database reachable, no account needing re-authorisation, no job failing longer
//! than its threshold: each problem named, per account) and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::Settings;
use crate::core::cycle::Schedule;
use crate::ops::heartbeat::Heartbeat;
use crate::store;
use crate::sync::Job;

/// What the handlers read.
#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
    pub settings: watch::Receiver<Arc<Settings>>,
    /// Set once migrations ran and the scheduler started.
    pub started: Arc<AtomicBool>,
    /// Set when the shutdown begins.
    pub stopping: Arc<AtomicBool>,
    /// The scheduler loop's heartbeat (`/livez`).
    pub heartbeat: Arc<Heartbeat>,
}

/// `/livez` fails once the scheduler loop (which beats every second) has been silent this
/// long.
pub const LIVENESS_STALE_AFTER: Duration = Duration::from_secs(30);

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

async fn livez(State(s): State<OpsState>) -> Response {
    let age = s.heartbeat.age();
    let alive = is_alive(age);
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "alive": alive,
        "scheduler_heartbeat_age_ms": age.as_millis() as u64,
    });
    (status, Json(body)).into_response()
}

/// Liveness from the heartbeat's age.
pub fn is_alive(heartbeat_age: Duration) -> bool {
    heartbeat_age <= LIVENESS_STALE_AFTER
}

async fn metrics(State(s): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<OpsState>) -> Response {
    let problems = readiness_problems(&s).await;
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": problems.is_empty(), "problems": problems})),
    )
        .into_response()
}

/// Every reason the daemon is not ready; empty when it is.
pub async fn readiness_problems(s: &OpsState) -> Vec<String> {
    if s.stopping.load(Ordering::Relaxed) {
        return vec!["shutting down".into()];
    }
    if !s.started.load(Ordering::Relaxed) {
        return vec!["starting".into()];
    }
    let settings = s.settings.borrow().clone();
    let checks = async {
        let mut conn = s.pool.acquire().await?;
        store::ops::ping(&mut conn).await?;
        let mut problems = Vec::new();
        let ids: Vec<String> = settings.accounts.iter().map(|a| a.id.clone()).collect();
        for account in store::ops::accounts_needing_reauth(&mut conn).await? {
            if ids.contains(&account) {
                problems.push(format!(
                    "account {account} needs re-authorisation (ccsync auth login --account {account})"
                ));
            }
        }
        let (accounts, jobs): (Vec<String>, Vec<String>) = ids
            .iter()
            .flat_map(|a| {
                Job::all()
                    .iter()
                    .map(move |j| (a.clone(), j.as_str().to_string()))
            })
            .unzip();
        let failing = store::ops::failing_since(&mut conn, &accounts, &jobs).await?;
        let schedule = Schedule::parse(settings.cron_entries()).ok();
        let now = Utc::now();
        for (account, job, since) in failing {
            let period = schedule
                .as_ref()
                .zip(crate::core::cycle::job_named(&job))
                .and_then(|(sch, j)| sch.period(j, now));
            let limit = threshold(settings.server.ready_failing_after, period);
            let for_how_long = (now - since).to_std().unwrap_or_default();
            if for_how_long > limit {
                problems.push(format!(
                    "{job} of account {account} has been failing since {} (threshold {})",
                    since.format("%Y-%m-%dT%H:%M:%SZ"),
                    humantime::format_duration(limit)
                ));
            }
        }
        Ok::<_, sqlx::Error>(problems)
    };
    match tokio::time::timeout(Duration::from_secs(3), checks).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => vec![format!("database unreachable: {e}")],
        Err(_) => vec!["database did not answer within 3s".into()],
    }
}

/// A job counts as failing too long after `base`, or three of its periods when longer (a
/// weekly job cannot be judged by an hour).
pub fn threshold(base: Duration, period: Option<Duration>) -> Duration {
    period.map_or(base, |p| base.max(p * 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_scheduler_heartbeat() {
        assert!(is_alive(Duration::ZERO));
        assert!(is_alive(LIVENESS_STALE_AFTER));
        assert!(!is_alive(LIVENESS_STALE_AFTER + Duration::from_millis(1)));
    }

    #[test]
    fn the_threshold_is_the_longer_of_the_setting_and_three_periods() {
        let h = Duration::from_secs(3600);
        assert_eq!(threshold(h, None), h);
        assert_eq!(threshold(h, Some(Duration::from_secs(900))), h);
        assert_eq!(
            threshold(h, Some(Duration::from_secs(7 * 86400))),
            Duration::from_secs(21 * 86400)
        );
    }
}
