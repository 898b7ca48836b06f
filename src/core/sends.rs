//! Send attempts whose answer was never recorded: which activity in Constant Contact's
//! `GET /activities` each one became, if any. No I/O.
//!
//! A bulk request is recorded (with its rows) before it is sent; the answer's commit ends
//! that record. A record left over means ccsync stopped between the request and that
//! commit, or the answer was lost. Sending the rows again could undo what a subscriber did
//! since (a list left after the first import would be joined again), so the next push looks
//! first for an activity that Constant Contact created at or after the attempt and that
//! ccsync does not know, and follows it instead.
//!
//! The collection does not say which request made an activity (no kind, no body), so the
//! rule is by time: attempts oldest first, each takes the oldest unclaimed unknown
//! activity created no earlier than [`CLOCK_MARGIN`] before it (Constant Contact's clock
//! may run behind ours). Taking an activity that was someone else's only costs the rows a
//! wrong verdict on the read after it (`failed`, naming what is missing), never a write; not
//! taking one that was ours could re-add a contact to a list it left. An attempt with no
//! candidate is known not to have reached Constant Contact once its request cannot still be
//! in progress: the client gave up on it (a lost answer recorded), or it started longer ago
//! than the request timeout.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

/// How far Constant Contact's clock may run behind ours and still have an activity matched
/// to the attempt that made it.
pub const CLOCK_MARGIN: Duration = Duration::minutes(15);

/// A send attempt left over from an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    /// The client gave up on the answer (it cannot still be in progress).
    pub answer_lost: bool,
}

/// An activity of the account that ccsync has no record of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub activity_id: String,
    /// `None` when Constant Contact gave no (readable) `created_at`: it may be anyone's.
    pub created_at: Option<DateTime<Utc>>,
}

/// What becomes of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The attempt became this activity: follow it (poll, read back), never re-send.
    Adopt { attempt: Uuid, activity_id: String },
    /// Nothing in Constant Contact came from it: its rows are planned again.
    Release { attempt: Uuid },
    /// Its request may still be in progress: look again on a later run.
    Wait { attempt: Uuid },
}

/// The oldest `created_at` an activity may have to be matched to attempts starting at
/// `earliest` (the page walk of `GET /activities`, newest first, stops below it).
pub fn window_start(earliest: DateTime<Utc>) -> DateTime<Utc> {
    earliest - CLOCK_MARGIN
}

/// Matches `attempts` to `unknown` activities (see the module comment). `now` and
/// `request_timeout` decide whether an attempt without a match may still be in progress.
pub fn resolve(
    attempts: &[Attempt],
    unknown: &[Unknown],
    now: DateTime<Utc>,
    request_timeout: Duration,
) -> Vec<Resolution> {
    let mut attempts: Vec<&Attempt> = attempts.iter().collect();
    attempts.sort_by_key(|a| (a.started_at, a.id));
    // Activities without a time sort first: they are taken before any dated one.
    let mut free: Vec<&Unknown> = unknown.iter().collect();
    free.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.activity_id.cmp(&b.activity_id))
    });
    let mut taken = vec![false; free.len()];
    attempts
        .into_iter()
        .map(|a| {
            let from = window_start(a.started_at);
            let found = free
                .iter()
                .enumerate()
                .find(|(i, u)| !taken[*i] && u.created_at.is_none_or(|t| t >= from));
            match found {
                Some((i, u)) => {
                    taken[i] = true;
                    Resolution::Adopt {
                        attempt: a.id,
                        activity_id: u.activity_id.clone(),
                    }
                }
                None if a.answer_lost || now - a.started_at >= request_timeout => {
                    Resolution::Release { attempt: a.id }
                }
                None => Resolution::Wait { attempt: a.id },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn attempt(n: u128, at: i64, lost: bool) -> Attempt {
        Attempt {
            id: Uuid::from_u128(n),
            started_at: t(at),
            answer_lost: lost,
        }
    }

    fn unknown(id: &str, at: Option<i64>) -> Unknown {
        Unknown {
            activity_id: id.into(),
            created_at: at.map(t),
        }
    }

    const TIMEOUT: Duration = Duration::seconds(30);

    #[test]
    fn an_activity_created_after_the_attempt_is_adopted() {
        let r = resolve(
            &[attempt(1, 0, false)],
            &[unknown("a", Some(2))],
            t(5),
            TIMEOUT,
        );
        assert_eq!(
            r,
            vec![Resolution::Adopt {
                attempt: Uuid::from_u128(1),
                activity_id: "a".into()
            }]
        );
    }

    #[test]
    fn a_clock_behind_ours_within_the_margin_still_matches_and_beyond_it_does_not() {
        let behind = -(CLOCK_MARGIN.num_seconds()) + 1;
        let r = resolve(
            &[attempt(1, 0, true)],
            &[unknown("a", Some(behind))],
            t(5),
            TIMEOUT,
        );
        assert!(matches!(r[0], Resolution::Adopt { .. }), "{r:?}");
        let r = resolve(
            &[attempt(1, 0, true)],
            &[unknown("a", Some(behind - 2))],
            t(5),
            TIMEOUT,
        );
        assert_eq!(
            r,
            vec![Resolution::Release {
                attempt: Uuid::from_u128(1)
            }]
        );
    }

    #[test]
    fn without_a_candidate_a_recent_attempt_waits_and_an_old_or_lost_one_is_released() {
        let r = resolve(&[attempt(1, 0, false)], &[], t(10), TIMEOUT);
        assert!(matches!(r[0], Resolution::Wait { .. }), "{r:?}");
        let r = resolve(&[attempt(1, 0, false)], &[], t(30), TIMEOUT);
        assert!(matches!(r[0], Resolution::Release { .. }), "{r:?}");
        let r = resolve(&[attempt(1, 0, true)], &[], t(1), TIMEOUT);
        assert!(matches!(r[0], Resolution::Release { .. }), "{r:?}");
    }

    #[test]
    fn attempts_take_activities_in_order_one_each() {
        let r = resolve(
            &[
                attempt(2, 10, true),
                attempt(1, 0, true),
                attempt(3, 20, true),
            ],
            &[unknown("late", Some(12)), unknown("early", Some(1))],
            t(60),
            TIMEOUT,
        );
        assert_eq!(
            r,
            vec![
                Resolution::Adopt {
                    attempt: Uuid::from_u128(1),
                    activity_id: "early".into()
                },
                Resolution::Adopt {
                    attempt: Uuid::from_u128(2),
                    activity_id: "late".into()
                },
                Resolution::Release {
                    attempt: Uuid::from_u128(3)
                },
            ]
        );
    }

    #[test]
    fn an_activity_without_a_readable_time_is_taken_rather_than_risking_a_resend() {
        let r = resolve(&[attempt(1, 0, true)], &[unknown("x", None)], t(5), TIMEOUT);
        assert!(matches!(r[0], Resolution::Adopt { .. }), "{r:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        /// Every attempt gets exactly one resolution, no activity is adopted twice, an
        /// adopted activity is never older than the window, and an attempt is released
        /// only when no unclaimed activity in its window was left (never a re-send while
        /// a candidate exists).
        #[test]
        fn resolutions_are_one_per_attempt_and_never_resend_past_a_candidate(
            attempts in proptest::collection::vec((0i64..5_000, any::<bool>()), 0..8),
            unknown_at in proptest::collection::vec(proptest::option::of(-2_000i64..6_000), 0..8),
            now in 0i64..8_000,
        ) {
            let attempts: Vec<Attempt> = attempts
                .iter()
                .enumerate()
                .map(|(i, (at, lost))| attempt(i as u128, *at, *lost))
                .collect();
            let unknown: Vec<Unknown> = unknown_at
                .iter()
                .enumerate()
                .map(|(i, at)| unknown(&format!("u{i}"), *at))
                .collect();
            let r = resolve(&attempts, &unknown, t(now), TIMEOUT);
            prop_assert_eq!(r.len(), attempts.len());
            let mut adopted = std::collections::HashSet::new();
            let mut seen = std::collections::HashSet::new();
            for res in &r {
                let id = match res {
                    Resolution::Adopt { attempt, activity_id } => {
                        prop_assert!(adopted.insert(activity_id.clone()), "adopted twice");
                        let a = attempts.iter().find(|a| a.id == *attempt).unwrap();
                        let u = unknown.iter().find(|u| &u.activity_id == activity_id).unwrap();
                        prop_assert!(u.created_at.is_none_or(|c| c >= window_start(a.started_at)));
                        attempt
                    }
                    Resolution::Release { attempt } | Resolution::Wait { attempt } => {
                        let a = attempts.iter().find(|a| a.id == *attempt).unwrap();
                        if matches!(res, Resolution::Wait { .. }) {
                            prop_assert!(!a.answer_lost && t(now) - a.started_at < TIMEOUT);
                        }
                        attempt
                    }
                };
                prop_assert!(seen.insert(*id));
            }
            // No attempt left without an activity while one in its window stayed unclaimed.
            for res in &r {
                if let Resolution::Release { attempt } | Resolution::Wait { attempt } = res {
                    let a = attempts.iter().find(|a| a.id == *attempt).unwrap();
                    let spare = unknown.iter().any(|u| {
                        !adopted.contains(&u.activity_id)
                            && u.created_at.is_none_or(|c| c >= window_start(a.started_at))
                    });
                    prop_assert!(!spare, "attempt {} released with a candidate left", a.id);
                }
            }
        }
    }
}
