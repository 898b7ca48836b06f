//! The pure core of the scheduler: which jobs a tick runs, in which order, and whether the
//! next job of a cycle may run. No I/O; tested exhaustively and with proptest.
//!
//! One cycle per account per tick. The jobs due at a tick are those whose `[schedule]`
//! expression matches it; a due `push` brings `contacts`, `unsubscribes` and `lists` into
//! the same cycle (the local store is refreshed from the primary, opt-outs included, and
//! the list catalogue its rows are checked against is current, before any push: DESIGN.md
//! law 2 — the same prerequisites as `sync --job push`), and jobs a killed replica left
//! unfinished join the next cycle. A cycle that pulls contacts folds the deletes sweep into
//! that pull (`status=all`, same filter). Jobs run in `Job::all()` order (contacts → unsubscribes
//! → deletes → lists → reconcile → push); a failure stops the cycle; push runs only after
//! its prerequisites succeeded in it.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use croner::Cron;

use std::collections::HashMap;

use super::job::Job;
use super::states::RunOutcome;

/// A firing later than this after its tick is dropped (the runtime stalled).
pub const MAX_LATENESS: Duration = Duration::from_secs(60);

/// The parsed `[schedule]`.
#[derive(Debug, Clone)]
pub struct Schedule {
    entries: Vec<(Job, String, Cron)>,
}

impl Schedule {
    /// Parses every `(job name, expression)` of `[schedule]` (six fields, seconds first, UTC).
    pub fn parse<'a>(
        named: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Schedule, String> {
        let mut entries = Vec::new();
        for (name, expr) in named {
            let job = job_named(name).ok_or_else(|| format!("unknown job {name}"))?;
            let cron = parse_cron(expr).map_err(|e| format!("schedule.{name}: {e}"))?;
            entries.push((job, expr.to_string(), cron));
        }
        Ok(Schedule { entries })
    }

    /// The distinct expressions (one scheduler entry each).
    pub fn expressions(&self) -> Vec<(String, Cron)> {
        let mut out: Vec<(String, Cron)> = Vec::new();
        for (_, expr, cron) in &self.entries {
            if !out.iter().any(|(e, _)| e == expr) {
                out.push((expr.clone(), cron.clone()));
            }
        }
        out
    }

    /// Jobs whose expression matches `tick`, in cycle order.
    pub fn due_at(&self, tick: DateTime<Utc>) -> Vec<Job> {
        Job::all()
            .iter()
            .copied()
            .filter(|j| {
                self.entries
                    .iter()
                    .any(|(job, _, c)| job == j && c.is_time_matching(&tick).unwrap_or(false))
            })
            .collect()
    }

    /// The next time any job is due, strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.entries
            .iter()
            .filter_map(|(_, _, c)| c.find_next_occurrence(&t, false).ok())
            .min()
    }

    /// The next run of `job`, strictly after `t`.
    pub fn next_for(&self, job: Job, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, _, c) = self.entries.iter().find(|(j, _, _)| *j == job)?;
        c.find_next_occurrence(&t, false).ok()
    }

    /// Runs a day of each job on cron, from its period after `t`.
    pub fn runs_per_day(&self, t: DateTime<Utc>) -> Vec<(Job, f64)> {
        Job::all()
            .iter()
            .filter_map(|j| Some((*j, 86_400.0 / self.period(*j, t)?.as_secs_f64().max(1.0))))
            .collect()
    }

    /// The gap between the next two runs of `job` after `t` (its period, for readiness).
    pub fn period(&self, job: Job, t: DateTime<Utc>) -> Option<Duration> {
        let a = self.next_for(job, t)?;
        let b = self.next_for(job, a)?;
        (b - a).to_std().ok()
    }
}

/// `Job` from its name (`contacts`, `push`, ...).
pub fn job_named(name: &str) -> Option<Job> {
    name.parse().ok()
}

/// Parses a six-field (seconds first) cron expression; day-of-month and day-of-week are
/// ANDed.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "{expr:?} must have six fields (seconds first), e.g. \"0 */15 * * * *\""
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?}: {e}"))
}

/// The tick a firing of `cron` at `now` belongs to: its latest occurrence at or before
/// `now` (whole seconds). `None` when that is older than `MAX_LATENESS`.
pub fn tick_of(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let now = now.with_nanosecond(0)?;
    let tick = cron.find_previous_occurrence(&now, true).ok()?;
    ((now - tick).to_std().ok()? <= MAX_LATENESS).then_some(tick)
}

/// What must succeed before a push, in the same cycle (law 2: the store is refreshed from
/// the primary, opt-outs included, and the list catalogue its rows are checked against is
/// current). The one statement of this rule: the cycle plan, `sync --job push` and the
/// push's own freshness check all read it.
pub const PUSH_NEEDS: [Job; 3] = [Job::Contacts, Job::Unsubscribes, Job::Lists];

/// Whether a push may run, given the latest earlier run of each job (outcome, start): every
/// job of [`PUSH_NEEDS`] succeeded after the previous push started. A contacts pull must
/// have run at all; the others only once they have ever run (an account's first push right
/// after its first pull). `Err` says which pull is missing.
pub fn push_is_fresh(
    latest: &HashMap<Job, (Option<RunOutcome>, DateTime<Utc>)>,
) -> Result<(), String> {
    let push_started = latest.get(&Job::Push).map(|(_, started)| *started);
    for job in PUSH_NEEDS {
        match latest.get(&job) {
            None if job != Job::Contacts => {}
            None => return Err(format!("no {job} pull has run yet")),
            Some((outcome, started)) => {
                if *outcome != Some(RunOutcome::Succeeded)
                    || push_started.is_some_and(|p| *started < p)
                {
                    return Err(format!(
                        "the {job} pull did not succeed since the last push"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The jobs of one cycle: those due, those left unfinished by an abandoned cycle, and the
/// pulls a push needs, without duplicates, in cycle order.
pub fn cycle_jobs(due: &[Job], unfinished: &[Job]) -> Vec<Job> {
    let wanted = |j: &Job| {
        due.contains(j)
            || unfinished.contains(j)
            || (PUSH_NEEDS.contains(j)
                && (due.contains(&Job::Push) || unfinished.contains(&Job::Push)))
    };
    let jobs: Vec<Job> = Job::all().iter().copied().filter(wanted).collect();
    // The contacts pull asks `status=all` with the same `updated_after` filter, so it sees
    // every delete the deletes sweep would, and advances the deletes watermark with its own:
    // a cycle that pulls contacts spends no request on a separate deletes sweep.
    if jobs.contains(&Job::Contacts) {
        jobs.into_iter().filter(|j| *j != Job::Deletes).collect()
    } else {
        jobs
    }
}

/// The jobs of a claim that did not finish.
pub fn remaining(jobs: &[String], done: &[String]) -> Vec<Job> {
    jobs.iter()
        .filter(|j| !done.contains(j))
        .filter_map(|j| job_named(j))
        .collect()
}

/// How a job of the cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    /// Its run lock was held elsewhere (e.g. a manual `ccsync sync`).
    Skipped,
    Failed,
}

/// What to do with the next job of a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run,
    /// A job failed earlier: the cycle ends (the next tick tries again).
    Stop,
    /// A push whose prerequisites did not all succeed in this cycle: not run.
    SkipPush,
}

/// Decides the next job given how the cycle's earlier jobs ended.
pub fn decide(job: Job, so_far: &[(Job, Ended)]) -> Decision {
    if so_far.iter().any(|(_, e)| *e == Ended::Failed) {
        return Decision::Stop;
    }
    let fresh = |j: &Job| so_far.contains(&(*j, Ended::Succeeded));
    if job == Job::Push && !PUSH_NEEDS.iter().all(fresh) {
        return Decision::SkipPush;
    }
    Decision::Run
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn settings<'a>(contacts: &'a str, push: &'a str) -> [(&'a str, &'a str); 6] {
        [
            ("contacts", contacts),
            ("unsubscribes", "0 */5 * * * *"),
            ("deletes", "0 0 * * * *"),
            ("lists", "0 30 * * * *"),
            ("push", push),
            ("reconcile", "0 0 3 * * Sun"),
        ]
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        // 2026-11-29 is a Sunday.
        Utc.with_ymd_and_hms(2026, 11, 29, h, m, s).unwrap()
    }

    #[test]
    fn default_schedule_merges_coincident_ticks_into_one_ordered_cycle() {
        let s = Schedule::parse(settings("0 */15 * * * *", "0 */15 * * * *")).unwrap();
        assert_eq!(
            s.due_at(at(3, 0, 0)),
            vec![
                Job::Contacts,
                Job::Unsubscribes,
                Job::Deletes,
                Job::Reconcile,
                Job::Push
            ]
        );
        assert_eq!(
            s.due_at(at(4, 30, 0)),
            vec![Job::Contacts, Job::Unsubscribes, Job::Lists, Job::Push]
        );
        assert_eq!(s.due_at(at(4, 5, 0)), vec![Job::Unsubscribes]);
        assert!(s.due_at(at(4, 5, 1)).is_empty());
        // 5 distinct expressions: contacts and push share one scheduler entry.
        assert_eq!(s.expressions().len(), 5);
    }

    #[test]
    fn a_push_on_its_own_schedule_pulls_first() {
        let s = Schedule::parse(settings("0 0 * * * *", "0 7,37 * * * *")).unwrap();
        let due = s.due_at(at(4, 7, 0));
        assert_eq!(due, vec![Job::Push]);
        assert_eq!(
            cycle_jobs(&due, &[]),
            vec![Job::Contacts, Job::Unsubscribes, Job::Lists, Job::Push]
        );
    }

    #[test]
    fn unfinished_jobs_join_the_next_cycle_in_order() {
        let rest = remaining(
            &["contacts".into(), "deletes".into(), "push".into()],
            &["contacts".into()],
        );
        assert_eq!(rest, vec![Job::Deletes, Job::Push]);
        assert_eq!(
            cycle_jobs(&[Job::Unsubscribes], &rest),
            vec![Job::Contacts, Job::Unsubscribes, Job::Lists, Job::Push],
            "the contacts pull covers the unfinished deletes sweep"
        );
        assert_eq!(
            cycle_jobs(&[Job::Deletes], &[]),
            vec![Job::Deletes],
            "a deletes sweep on its own still runs"
        );
        assert_eq!(remaining(&["bogus".into()], &[]), vec![]);
    }

    #[test]
    fn push_needs_its_prerequisites_to_have_succeeded_in_the_cycle() {
        use Ended::*;
        let ok = [
            (Job::Contacts, Succeeded),
            (Job::Unsubscribes, Succeeded),
            (Job::Lists, Succeeded),
        ];
        assert_eq!(decide(Job::Push, &ok), Decision::Run);
        for i in 0..3 {
            let mut one_skipped = ok;
            one_skipped[i].1 = Skipped;
            assert_eq!(decide(Job::Push, &one_skipped), Decision::SkipPush);
            assert_eq!(decide(Job::Push, &ok[..i]), Decision::SkipPush);
        }
        assert_eq!(decide(Job::Push, &[]), Decision::SkipPush);
        assert_eq!(
            decide(Job::Deletes, &[(Job::Contacts, Failed)]),
            Decision::Stop
        );
        assert_eq!(
            decide(Job::Unsubscribes, &[(Job::Contacts, Skipped)]),
            Decision::Run
        );
    }

    #[test]
    fn a_firing_maps_to_its_tick_and_a_stale_one_to_none() {
        let every2 = parse_cron("*/2 * * * * *").unwrap();
        let late = at(4, 0, 1) + chrono::Duration::milliseconds(400);
        assert_eq!(tick_of(&every2, late), Some(at(4, 0, 0)));
        assert_eq!(tick_of(&every2, at(4, 0, 2)), Some(at(4, 0, 2)));
        let hourly = parse_cron("0 0 * * * *").unwrap();
        assert_eq!(tick_of(&hourly, at(4, 0, 59)), Some(at(4, 0, 0)));
        assert_eq!(tick_of(&hourly, at(4, 2, 0)), None);
    }

    #[test]
    fn periods_and_next_runs() {
        let s = Schedule::parse(settings("0 */15 * * * *", "0 */15 * * * *")).unwrap();
        assert_eq!(
            s.period(Job::Contacts, at(4, 1, 0)),
            Some(Duration::from_secs(900))
        );
        assert_eq!(
            s.period(Job::Reconcile, at(4, 1, 0)),
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(s.next_for(Job::Lists, at(4, 1, 0)), Some(at(4, 30, 0)));
        assert_eq!(s.next_after(at(4, 1, 0)), Some(at(4, 5, 0)));
    }

    fn any_jobs() -> impl Strategy<Value = Vec<Job>> {
        proptest::sample::subsequence(Job::all().to_vec(), 0..=Job::all().len())
    }

    fn any_ended() -> impl Strategy<Value = Ended> {
        prop_oneof![
            Just(Ended::Succeeded),
            Just(Ended::Skipped),
            Just(Ended::Failed)
        ]
    }

    fn pos(j: Job) -> usize {
        Job::all().iter().position(|x| *x == j).unwrap()
    }

    proptest! {
        #[test]
        fn cycles_are_ordered_complete_and_pull_before_push(due in any_jobs(), unfinished in any_jobs()) {
            let c = cycle_jobs(&due, &unfinished);
            prop_assert!(c.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{c:?}");
            for j in due.iter().chain(&unfinished) {
                // Deletes are folded into a contacts pull of the same cycle.
                prop_assert!(c.contains(j) || (*j == Job::Deletes && c.contains(&Job::Contacts)));
            }
            prop_assert!(!(c.contains(&Job::Deletes) && c.contains(&Job::Contacts)));
            if c.contains(&Job::Push) {
                prop_assert!(PUSH_NEEDS.iter().all(|j| c.contains(j)));
            }
            for j in &c {
                let prerequisite = PUSH_NEEDS.contains(j) && c.contains(&Job::Push);
                prop_assert!(due.contains(j) || unfinished.contains(j) || prerequisite);
            }
        }

        #[test]
        fn push_never_runs_without_fresh_prerequisites(so_far in proptest::collection::vec((proptest::sample::select(Job::all().to_vec()), any_ended()), 0..6)) {
            let d = decide(Job::Push, &so_far);
            if d == Decision::Run {
                for j in PUSH_NEEDS {
                    prop_assert!(so_far.contains(&(j, Ended::Succeeded)));
                }
                prop_assert!(so_far.iter().all(|(_, e)| *e != Ended::Failed));
            }
            if so_far.iter().any(|(_, e)| *e == Ended::Failed) {
                for j in Job::all() {
                    prop_assert_eq!(decide(*j, &so_far), Decision::Stop);
                }
            }
        }

        #[test]
        fn a_tick_is_the_latest_occurrence_not_after_now(secs in 0i64..7 * 86400, ms in 0i64..1000, step in 1u32..30) {
            let cron = parse_cron(&format!("*/{step} * * * * *")).unwrap();
            let now = at(0, 0, 0) + chrono::Duration::seconds(secs) + chrono::Duration::milliseconds(ms);
            let tick = tick_of(&cron, now).unwrap();
            prop_assert!(tick <= now);
            prop_assert!(cron.is_time_matching(&tick).unwrap());
            let next = cron.find_next_occurrence(&tick, false).unwrap();
            prop_assert!(next > now, "an occurrence {next} lies between {tick} and {now}");
        }

        #[test]
        fn due_jobs_are_exactly_the_matching_expressions(secs in 0i64..14 * 86400) {
            let s = Schedule::parse(settings("0 */15 * * * *", "30 */10 * * * *")).unwrap();
            let t = at(0, 0, 0) + chrono::Duration::seconds(secs);
            let due = s.due_at(t);
            let st = settings("0 */15 * * * *", "30 */10 * * * *");
            for (name, expr) in st {
                let j = job_named(name).unwrap();
                prop_assert_eq!(due.contains(&j), parse_cron(expr).unwrap().is_time_matching(&t).unwrap());
            }
        }
    }
}
