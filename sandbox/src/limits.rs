//! Per API key limits: requests per second (GCRA, burst 1, checked when a request arrives)
//! and a daily quota that resets at 00:00 UTC of the sandbox clock.

use std::time::{Duration, Instant};

use super::state::{Rate, State};

pub(crate) enum LimitOutcome {
    Ok,
    Throttled,
    QuotaExceeded,
}

/// Slack allowed for network jitter, as a fraction of the emission interval.
const JITTER_TOLERANCE: f64 = 0.1;

/// What the per-second limit said of a request when it arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Admission {
    /// No limit set, or the request names no token.
    Unlimited,
    /// Admitted: the limit's state moved from `before` to `set`.
    Admitted {
        before: Option<Instant>,
        set: Instant,
    },
    Throttled,
}

/// GCRA (burst 1, [`JITTER_TOLERANCE`]) for a request arriving `now`.
pub(crate) fn admit(rate: &mut Rate, now: Instant) -> Admission {
    let Some(rps) = rate.per_second.filter(|r| *r > 0.0) else {
        return Admission::Unlimited;
    };
    let interval = Duration::from_secs_f64(1.0 / rps);
    let tolerance = interval.mul_f64(JITTER_TOLERANCE);
    let tat = rate.tat.unwrap_or(now);
    if tat > now + tolerance {
        return Admission::Throttled;
    }
    let set = tat.max(now) + interval;
    let before = rate.tat.replace(set);
    Admission::Admitted { before, set }
}

/// Gives back the slot of a request that turned out not to be the key's (its token is
/// unknown), unless a later request has moved the limit since.
pub(crate) fn refund(rate: &mut Rate, admission: Admission) {
    if let Admission::Admitted { before, set } = admission {
        if rate.tat == Some(set) {
            rate.tat = before;
        }
    }
}

/// The daily quota, for a request of the key the rate limit admitted.
pub(crate) fn check(st: &mut State, admission: Admission) -> LimitOutcome {
    if matches!(admission, Admission::Throttled) {
        st.throttled += 1;
        return LimitOutcome::Throttled;
    }
    let today = st.now().date_naive();
    if st.limits.day != Some(today) {
        st.limits.day = Some(today);
        st.limits.day_count = 0;
    }
    st.limits.day_count += 1;
    if let Some(q) = st.limits.daily_quota {
        if st.limits.day_count > q {
            return LimitOutcome::QuotaExceeded;
        }
    }
    LimitOutcome::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_admitted_in_the_order_they_arrive_with_a_tenth_of_slack() {
        let mut rate = Rate {
            per_second: Some(4.0),
            tat: None,
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(matches!(
            admit(&mut rate, at(0)),
            Admission::Admitted { .. }
        ));
        // 250 ms apart, and up to 25 ms early: admitted.
        assert!(matches!(
            admit(&mut rate, at(250)),
            Admission::Admitted { .. }
        ));
        assert!(matches!(
            admit(&mut rate, at(476)),
            Admission::Admitted { .. }
        ));
        // 200 ms after the last: throttled, and the limit is not moved by it.
        assert!(matches!(admit(&mut rate, at(676)), Admission::Throttled));
        assert!(matches!(
            admit(&mut rate, at(730)),
            Admission::Admitted { .. }
        ));
        // A slot given back (an unknown token) is free again.
        let a = admit(&mut rate, at(980));
        refund(&mut rate, a);
        assert!(matches!(
            admit(&mut rate, at(980)),
            Admission::Admitted { .. }
        ));
        // No limit set.
        let mut free = Rate::default();
        assert!(matches!(admit(&mut free, at(0)), Admission::Unlimited));
        assert!(matches!(admit(&mut free, at(0)), Admission::Unlimited));
    }
}
