//! What an `outbound` row asks for (`outbound.op`), by name. No I/O.
//!
//! `op` is plain text in the table (no CHECK constraint): an unknown value is parsed here
//! and ends `failed` with [`Op::parse`]'s reason, instead of being refused by the database
//! (which would lose the application's change).

use std::fmt;

/// The operations an outbound row can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Fields and/or lists (the default): an import when it adds lists, a `PUT` when it
    /// only changes fields of an existing contact.
    Upsert,
    /// An opt-out the application collected: `PUT` with `permission_to_send=unsubscribed`.
    Unsubscribe,
    /// `remove_list_memberships` for the row's `list_ids`.
    RemoveFromLists,
    /// `contact_delete`.
    Delete,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Upsert, Op::Unsubscribe, Op::RemoveFromLists, Op::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Unsubscribe => "unsubscribe",
            Op::RemoveFromLists => "remove_from_lists",
            Op::Delete => "delete",
        }
    }

    /// Parses `outbound.op`; the error is the row's `failed` reason.
    pub fn parse(s: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Op::ALL.iter().map(|o| o.as_str()).collect();
                format!("op {s:?} is not one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_and_an_unknown_one_is_named() {
        for o in Op::ALL {
            assert_eq!(Op::parse(o.as_str()), Ok(o));
        }
        let e = Op::parse("Upsert").unwrap_err();
        assert!(
            e.contains("\"Upsert\"") && e.contains("remove_from_lists"),
            "{e}"
        );
        assert!(Op::parse("").is_err());
    }
}
