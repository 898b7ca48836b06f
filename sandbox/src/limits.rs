//! Per API key limits: requests per second (GCRA, burst 1) and a daily quota that
//! resets at 00:00 UTC of the sandbox clock.

use std::time::{Duration, Instant};

use super::state::State;

pub(crate) enum LimitOutcome {
    Ok,
    Throttled,
    QuotaExceeded,
}

/// Slack allowed for network jitter, as a fraction of the emission interval.
const JITTER_TOLERANCE: f64 = 0.1;

pub(crate) fn check(st: &mut State, now: Instant) -> LimitOutcome {
    if let Some(rps) = st.limits.per_second.filter(|r| *r > 0.0) {
        let interval = Duration::from_secs_f64(1.0 / rps);
        let tolerance = interval.mul_f64(JITTER_TOLERANCE);
        let tat = st.limits.tat.unwrap_or(now);
        if tat > now + tolerance {
            st.throttled += 1;
            return LimitOutcome::Throttled;
        }
        st.limits.tat = Some(tat.max(now) + interval);
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
