//! The jobs ccsync runs per account, by name (the names are the contract: `sync --job`,
//! `sync_runs.job`, `sync_state.job`, `[schedule]` keys, metric labels).

use std::fmt;
use std::str::FromStr;

/// The jobs ccsync runs per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    Contacts,
    Unsubscribes,
    Deletes,
    Lists,
    Reconcile,
    Push,
}

impl Job {
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Contacts => "contacts",
            Job::Unsubscribes => "unsubscribes",
            Job::Deletes => "deletes",
            Job::Lists => "lists",
            Job::Reconcile => "reconcile",
            Job::Push => "push",
        }
    }

    /// The per-account cycle order of DESIGN.md §2 (`sync --job all`). The weekly
    /// reconcile is scheduled on its own.
    pub fn cycle() -> &'static [Job] {
        &[
            Job::Contacts,
            Job::Unsubscribes,
            Job::Deletes,
            Job::Lists,
            Job::Push,
        ]
    }

    /// Every job, in the order a cycle would run them.
    pub fn all() -> &'static [Job] {
        &[
            Job::Contacts,
            Job::Unsubscribes,
            Job::Deletes,
            Job::Lists,
            Job::Reconcile,
            Job::Push,
        ]
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Job::all`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job {0:?}")]
pub struct UnknownJob(pub String);

impl FromStr for Job {
    type Err = UnknownJob;

    fn from_str(s: &str) -> Result<Job, UnknownJob> {
        Job::all()
            .iter()
            .copied()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| UnknownJob(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_round_trips_through_its_name() {
        for j in Job::all() {
            assert_eq!(j.as_str().parse::<Job>(), Ok(*j));
        }
        assert!("everything".parse::<Job>().is_err());
    }
}
