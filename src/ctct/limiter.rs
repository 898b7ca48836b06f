//! Request pacing and the shared daily budget.
//!
//! Pacing uses governor with a burst of 1: a bucket that lets 4 through at once and then runs
//! at exactly 4/s sits on the limit and collects `throttled` answers from timing jitter.
//! The daily budget is per API key and shared by every account and replica, so it is kept
//! in PostgreSQL behind the `RequestBudget` trait.

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Evenly spaced requests: one every `1/rps` seconds, burst 1. `rps == 0` turns pacing off.
pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Pacer {
    pub fn new(requests_per_second: f64) -> Self {
        let limiter = (requests_per_second > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / requests_per_second);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::MIN);
            RateLimiter::direct(quota)
        });
        Pacer { limiter }
    }

    /// Waits for the next request slot.
    pub async fn ready(&self) {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
    }
}

/// When this process's requests actually leave. Slots are spaced by the interval, but a
/// request that wakes late for its slot (a busy machine, a slow answer to the claim) leaves
/// its successor, on time for the next slot, less than the interval behind it, and the API
/// counts arrivals, not slots: at 40 requests/s a few milliseconds of lateness drew
/// `throttled` answers. So a request also leaves no sooner than `gap` after the one before
/// it (`store::pacer` sets the gap a little under the interval: see `DEPARTURE_GAP`).
///
/// Not a second governor [`Pacer`] at that period, which was tried: its waiters sleep on a
/// timer thread of its own and re-check in a race, and at 40 requests/s it left 34–46
/// `throttled` answers of ~460 requests where this leaves 15–29 (48–59 with slots alone).
pub struct Departures {
    gap: Duration,
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Departures {
    pub fn new(gap: Duration) -> Self {
        Departures {
            gap,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Leaves at `now` (recorded) and returns `None`, or returns how long to wait first.
    pub fn try_leave(&self, now: tokio::time::Instant) -> Option<Duration> {
        // A poisoned lock only means another request panicked while holding it; the
        // instant inside is still the last departure.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(before) if now < before + self.gap => Some(before + self.gap - now),
            _ => {
                *last = Some(now);
                None
            }
        }
    }

    /// Waits until `gap` since the previous departure has passed, then leaves.
    pub async fn leave(&self) {
        while let Some(wait) = self.try_leave(tokio::time::Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How much wider than the API's nominal interval requests are spaced, learned from its
/// `throttled` answers: a step wider after a throttled answer, a little narrower after every
/// departure (additive increase, slow decrease), never below the nominal interval.
///
/// Why: the API counts arrivals, and a limiter of the GCRA kind (the sandbox's; the real
/// one is not documented) remembers lateness — once one request of a busy stretch arrived
/// a few milliseconds late, every later one must arrive as late, or it is `throttled`. At 4
/// requests/s the jitter of a busy machine is far inside the tolerance and the spacing stays
/// nominal; at 40 requests/s (25 ms, 2.5 ms tolerance) it is not, and every throttled answer
/// costs a request of the day's budget and a retry a second later. There a fixed 3–5 %
/// wider spacing turned 29 throttled answers of ~440 requests into 1–6; learned this way
/// (nothing to configure, nominal wherever the API does not object) 17–26 became 6–9 and
/// the pull was no slower (docs/performance.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spacing {
    /// Extra spacing, a share of the nominal interval (0 = nominal).
    extra: f64,
    /// Departures since the last widening: throttled answers of requests that were already
    /// in flight when the spacing widened are not counted again.
    since_step: u32,
}

impl Spacing {
    /// The widening after a throttled answer.
    pub const STEP: f64 = 0.02;
    /// The narrowing after each departure (a step is undone over 100 requests).
    pub const DECAY: f64 = 0.0002;
    /// The widest spacing (a limit far below ours is not jitter; its answers are retried).
    pub const MAX: f64 = 0.25;
    /// Departures after a widening before the next throttled answer widens again.
    pub const SETTLE: u32 = 8;

    pub const NOMINAL: Spacing = Spacing {
        extra: 0.0,
        since_step: Self::SETTLE,
    };

    /// The spacing as a factor of the nominal interval (1.0 and up).
    pub fn factor(&self) -> f64 {
        1.0 + self.extra
    }

    /// A request was answered `throttled`.
    pub fn throttled(&mut self) {
        if self.since_step >= Self::SETTLE {
            self.extra = (self.extra + Self::STEP).min(Self::MAX);
            self.since_step = 0;
        }
    }

    /// A request left.
    pub fn departed(&mut self) {
        self.extra = (self.extra - Self::DECAY).max(0.0);
        self.since_step = self.since_step.saturating_add(1);
    }
}

/// The budget's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Go ahead; `used` requests (this one included) were counted today.
    Granted { used: u64 },
    /// The daily limit is reached (or the API said `quota_exceeded` today).
    Exhausted,
}

pub type BudgetError = Box<dyn std::error::Error + Send + Sync>;

/// Request slots shared by every process using the API key (requests per second across
/// replicas; `store::pacer` keeps them in PostgreSQL). When set, it replaces the
/// in-process `Pacer`.
pub trait SharedPacer: Send + Sync {
    /// Waits until this process may send its next request.
    fn wait_turn<'a>(&'a self) -> BoxFuture<'a, Result<(), BudgetError>>;
    /// The API answered a request `throttled` (requests arrived closer than it allows).
    fn throttled(&self) {}
}

/// Counts requests per UTC day, shared across replicas.
pub trait RequestBudget: Send + Sync {
    /// Counts one request for `account` unless today's budget is spent.
    fn take<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Budget, BudgetError>>;
    /// Records that the API answered `quota_exceeded` today.
    fn exhausted<'a>(&'a self) -> BoxFuture<'a, Result<(), BudgetError>>;
}

/// A budget that only counts in memory (tests of the client alone, the sandbox bench).
pub struct MemoryBudget {
    limit: u64,
    used: std::sync::atomic::AtomicU64,
    spent: std::sync::atomic::AtomicBool,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            limit,
            used: 0.into(),
            spent: false.into(),
        }
    }
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl RequestBudget for MemoryBudget {
    fn take<'a>(&'a self, _account: &'a str) -> BoxFuture<'a, Result<Budget, BudgetError>> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            if self.spent.load(Ordering::Relaxed) {
                return Ok(Budget::Exhausted);
            }
            let used = self.used.fetch_add(1, Ordering::Relaxed) + 1;
            if used > self.limit {
                self.used.fetch_sub(1, Ordering::Relaxed);
                return Ok(Budget::Exhausted);
            }
            Ok(Budget::Granted { used })
        })
    }
    fn exhausted<'a>(&'a self) -> BoxFuture<'a, Result<(), BudgetError>> {
        Box::pin(async move {
            self.spent.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_budget_stops_at_the_limit() {
        let b = MemoryBudget::new(2);
        assert_eq!(b.take("a").await.unwrap(), Budget::Granted { used: 1 });
        assert_eq!(b.take("a").await.unwrap(), Budget::Granted { used: 2 });
        assert_eq!(b.take("a").await.unwrap(), Budget::Exhausted);
        assert_eq!(b.used(), 2);
    }

    #[test]
    fn a_departure_waits_out_the_gap_after_the_one_before_it() {
        let d = Departures::new(Duration::from_millis(25));
        let t0 = tokio::time::Instant::now();
        assert_eq!(d.try_leave(t0), None, "the first leaves at once");
        // Its successor's slot came 20 ms later (the first woke 5 ms late for its own).
        assert_eq!(
            d.try_leave(t0 + Duration::from_millis(20)),
            Some(Duration::from_millis(5))
        );
        // Waiting did not count as leaving: the gap is still measured from t0.
        assert_eq!(
            d.try_leave(t0 + Duration::from_millis(24)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(d.try_leave(t0 + Duration::from_millis(25)), None);
        // A late wake-up leaves later; the next gap counts from when it left.
        assert_eq!(d.try_leave(t0 + Duration::from_millis(60)), None);
        assert_eq!(
            d.try_leave(t0 + Duration::from_millis(75)),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn spacing_widens_on_throttled_answers_and_narrows_back_with_departures() {
        let mut s = Spacing::NOMINAL;
        assert_eq!(s.factor(), 1.0);
        s.throttled();
        assert!((s.factor() - 1.02).abs() < 1e-9, "{s:?}");
        // Answers of requests already in flight when it widened: not counted again.
        s.throttled();
        s.departed();
        s.throttled();
        assert!((s.factor() - (1.02 - Spacing::DECAY)).abs() < 1e-9, "{s:?}");
        for _ in 0..Spacing::SETTLE {
            s.departed();
        }
        s.throttled();
        let expected = 1.0 + 2.0 * Spacing::STEP - (1 + Spacing::SETTLE) as f64 * Spacing::DECAY;
        assert!((s.factor() - expected).abs() < 1e-9, "{s:?}");
        // Back to nominal after enough departures without a throttled answer, never below.
        for _ in 0..1_000 {
            s.departed();
        }
        assert_eq!(s.factor(), 1.0);
        // Never wider than the cap, however often throttled.
        for _ in 0..1_000 {
            for _ in 0..Spacing::SETTLE {
                s.departed();
            }
            s.throttled();
        }
        assert!(s.factor() <= 1.0 + Spacing::MAX + 1e-9, "{s:?}");
        assert!(s.factor() > 1.0 + Spacing::MAX - 0.01, "{s:?}");
    }

    #[tokio::test]
    async fn pacer_spaces_requests_without_a_burst() {
        let p = Pacer::new(20.0); // one per 50 ms
        let start = std::time::Instant::now();
        for _ in 0..3 {
            p.ready().await;
        }
        // Burst 1: the 2nd and 3rd wait a period each (a bursty bucket would pass all 3 now).
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }
}
