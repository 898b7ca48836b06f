//! `api_pacer`: request slots shared by every replica using one API key.
//!
//! The API's requests-per-second limit belongs to the API key, not to a process. Each
//! request claims the next free slot with one atomic statement
//! (`next_slot_at = GREATEST(next_slot_at, now) + interval`) and sleeps until the slot it
//! got, so however many replicas run, requests leave evenly spaced (burst 1). The delay is
//! computed on the database clock, so replicas need no synchronised clocks.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgPool;

use crate::ctct::limiter::{BudgetError, Departures, SharedPacer, Spacing};

/// The least time between two of this process's departures, as a share of the interval.
/// Not the whole interval: a request that left late would then hold back every later one,
/// and the lateness would add up (4 requests/s fell from 96.7 % of the ceiling to 85.6 %).
/// Below it by half the jitter tolerance an API limit must allow (the sandbox allows 10 %),
/// so a late departure is made up over the next few requests.
const DEPARTURE_GAP: f64 = 0.95;

/// Slots of one API key in PostgreSQL.
pub struct PgPacer {
    pool: PgPool,
    api_key: String,
    /// The API's interval (1 / requests per second).
    interval: Duration,
    /// This process's requests, spaced by when they leave (slots alone miss late wake-ups).
    departures: Departures,
    /// How much wider than `interval` this process claims its slots (learned from
    /// `throttled` answers).
    spacing: std::sync::Mutex<Spacing>,
}

impl PgPacer {
    /// `None` when `requests_per_second` is 0 (pacing off).
    pub fn new(pool: PgPool, api_key: &str, requests_per_second: f64) -> Option<PgPacer> {
        (requests_per_second > 0.0 && requests_per_second.is_finite()).then(|| {
            let interval = Duration::from_secs_f64(1.0 / requests_per_second);
            metrics::gauge!("ccsync_pacer_spacing_ratio").set(Spacing::NOMINAL.factor());
            PgPacer {
                pool,
                api_key: api_key.to_string(),
                interval,
                departures: Departures::new(interval.mul_f64(DEPARTURE_GAP)),
                spacing: std::sync::Mutex::new(Spacing::NOMINAL),
            }
        })
    }

    /// Claims the next slot, `interval` (widened by the learned spacing) after the one
    /// before; returns how long to wait for it.
    pub async fn claim(&self) -> Result<Duration, sqlx::Error> {
        let interval = self.interval.mul_f64(self.spacing().factor());
        Ok(claim_slot(&self.pool, &self.api_key, interval).await?.wait)
    }

    /// The spacing learned so far.
    pub fn spacing(&self) -> Spacing {
        // A poisoned lock only means a panic while it was held; the value is still whole.
        *self.spacing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to the spacing; returns the new factor.
    fn update_spacing(&self, change: impl FnOnce(&mut Spacing)) -> f64 {
        let mut s = self.spacing.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.factor();
        change(&mut s);
        let after = s.factor();
        if after != before {
            metrics::gauge!("ccsync_pacer_spacing_ratio").set(after);
        }
        after
    }
}

/// A claimed request slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When the request may leave (database clock).
    pub at: DateTime<Utc>,
    /// How long to sleep for it, measured on the database clock when it was claimed.
    pub wait: Duration,
}

/// Claims the next request slot of `api_key`, `interval` after the previous one (or now,
/// when the key was idle).
pub async fn claim_slot(
    pool: &PgPool,
    api_key: &str,
    interval: Duration,
) -> Result<Slot, sqlx::Error> {
    let interval_us = i64::try_from(interval.as_micros()).unwrap_or(i64::MAX);
    let (at, wait_us): (DateTime<Utc>, i64) = sqlx::query_as(
        "INSERT INTO ccsync.api_pacer AS p (api_key, next_slot_at, updated_at)
         VALUES ($1, clock_timestamp() + $2 * interval '1 microsecond', clock_timestamp())
         ON CONFLICT (api_key) DO UPDATE
            SET next_slot_at = GREATEST(p.next_slot_at, clock_timestamp())
                               + $2 * interval '1 microsecond',
                updated_at = clock_timestamp()
         RETURNING p.next_slot_at - $2 * interval '1 microsecond',
                   (extract(epoch FROM p.next_slot_at - clock_timestamp()) * 1000000)::bigint - $2",
    )
    .bind(api_key)
    .bind(interval_us)
    .fetch_one(pool)
    .await?;
    Ok(Slot {
        at,
        wait: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
    })
}

impl SharedPacer for PgPacer {
    fn wait_turn<'a>(&'a self) -> BoxFuture<'a, Result<(), BudgetError>> {
        Box::pin(async move {
            // A slot we reach late is forfeited and a new one claimed: leaving late would put
            // this request right behind the next slot's owner, and two requests closer than
            // the interval are what the API answers with `throttled`. Bounded: after a few
            // late wake-ups (a starved process) the request goes anyway.
            let slack = self.interval / 4;
            for attempt in 0..4 {
                let asked = tokio::time::Instant::now();
                let wait = self.claim().await?;
                metrics::histogram!("ccsync_pacer_wait_seconds").record(wait.as_secs_f64());
                // The slot lies between `asked + wait` and `answered + wait` (the database
                // measured `wait` during the round trip): sleep to the later bound, never
                // leave early; judge lateness from the earlier one.
                tokio::time::sleep(wait).await;
                let late = tokio::time::Instant::now().saturating_duration_since(asked + wait);
                if late <= slack || attempt == 3 {
                    break;
                }
                tracing::debug!(
                    late_ms = late.as_millis() as u64,
                    "request slot missed; claiming another"
                );
            }
            self.departures.leave().await;
            self.update_spacing(Spacing::departed);
            Ok(())
        })
    }

    fn throttled(&self) {
        let spacing = self.update_spacing(Spacing::throttled);
        tracing::debug!(spacing, "throttled: request slots spaced wider");
    }
}
