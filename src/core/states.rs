//! The states the store records, as types: an outbound row's state and a run's outcome.
//! Each has one `as_str` (what SQL binds and tests compare) and one `FromStr`.

use std::fmt;
use std::str::FromStr;

/// A name that is not one of the type's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownState {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident, $kind:literal { $($(#[$vm:meta])* $v:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $v),*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<$name, UnknownState> {
                match s {
                    $($s => Ok($name::$v),)*
                    _ => Err(UnknownState { kind: $kind, value: s.to_string() }),
                }
            }
        }
    };
}

named_enum!(
    /// `outbound.state`: `pending` → `submitted` → `completed` | `skipped` | `failed`.
    OutboundState, "outbound state" {
        /// Queued, not yet sent (or due for a retry).
        Pending => "pending",
        /// In an import activity that has not ended.
        Submitted => "submitted",
        Completed => "completed",
        /// Refused by ccsync, with a reason (never re-subscribe, cancelled, ...).
        Skipped => "skipped",
        /// Refused by Constant Contact or out of attempts, with the API's message.
        Failed => "failed",
    }
);

impl OutboundState {
    /// True for the states a row never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OutboundState::Completed | OutboundState::Skipped | OutboundState::Failed
        )
    }
}

named_enum!(
    /// `sync_runs.outcome` (and the `outcome` label of `ccsync_runs_total`).
    RunOutcome, "run outcome" {
        /// Written at the start of a run; replaced when it ends.
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        /// Stopped by the shutdown at a page boundary.
        Cancelled => "cancelled",
        /// Not run: the same job was running, or a push's pulls did not all succeed.
        Skipped => "skipped",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        for s in OutboundState::ALL {
            assert_eq!(s.as_str().parse::<OutboundState>(), Ok(*s));
        }
        for o in RunOutcome::ALL {
            assert_eq!(o.as_str().parse::<RunOutcome>(), Ok(*o));
        }
        assert!("done".parse::<OutboundState>().is_err());
        assert!("ok".parse::<RunOutcome>().is_err());
    }

    #[test]
    fn only_completed_skipped_and_failed_are_terminal() {
        let terminal: Vec<_> = OutboundState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(terminal, ["completed", "skipped", "failed"]);
    }
}
