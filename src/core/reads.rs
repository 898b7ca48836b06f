//! Read before write, confirm after write: which reads of Constant Contact cost fewer
//! requests for a set of contacts — one `GET /contacts?email=…` each, or the members of
//! each list they touch (`GET /contacts?lists=L`, one request per page). No I/O.

use serde::Serialize;

/// How the contacts of a push are read from Constant Contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reader {
    /// One request per contact.
    PerContact,
    /// Every page of each list's members (memberships and permissions of all of them).
    PerList,
    /// Per list for the contacts on some list, per contact for the others.
    Mixed,
}

/// The reader and what it costs, for `sync_runs.stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReadPlan {
    pub reader: Reader,
    /// Requests the chosen reader needs.
    pub requests: u64,
    /// What the other one would have needed.
    pub alternative_requests: u64,
}

/// Chooses the cheaper reader for `contacts` contacts on lists of the given sizes
/// (`membership_count`s; an unknown size counts as one page). Per list also needs every
/// contact to be on one of the lists read, so it is only offered when `all_on_lists`.
/// Ties go to per contact (it reads only what it needs).
pub fn choose(
    contacts: u64,
    list_sizes: &[Option<u64>],
    page_size: u64,
    all_on_lists: bool,
) -> ReadPlan {
    let page = page_size.max(1);
    let per_list: u64 = list_sizes
        .iter()
        .map(|n| n.unwrap_or(0).div_ceil(page).max(1))
        .sum();
    if all_on_lists && !list_sizes.is_empty() && per_list < contacts {
        ReadPlan {
            reader: Reader::PerList,
            requests: per_list,
            alternative_requests: contacts,
        }
    } else {
        ReadPlan {
            reader: Reader::PerContact,
            requests: contacts,
            alternative_requests: per_list,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn few_contacts_are_read_one_by_one_many_by_their_lists() {
        assert_eq!(
            choose(3, &[Some(20_000)], 500, true).reader,
            Reader::PerContact
        );
        let p = choose(10_000, &[Some(20_000), Some(1_000)], 500, true);
        assert_eq!(p.reader, Reader::PerList);
        assert_eq!(p.requests, 40 + 2);
        assert_eq!(p.alternative_requests, 10_000);
    }

    #[test]
    fn contacts_off_every_list_read_leave_per_list_out() {
        assert_eq!(
            choose(10_000, &[Some(10)], 500, false).reader,
            Reader::PerContact
        );
        assert_eq!(choose(10, &[], 500, true).reader, Reader::PerContact);
    }

    proptest! {
        #[test]
        fn the_chosen_reader_never_costs_more_than_the_other(
            contacts in 0u64..100_000,
            sizes in proptest::collection::vec(proptest::option::of(0u64..200_000), 0..60),
            all in any::<bool>(),
        ) {
            let p = choose(contacts, &sizes, 500, all);
            if p.reader == Reader::PerList {
                prop_assert!(all);
                prop_assert!(p.requests < p.alternative_requests);
            } else {
                prop_assert_eq!(p.requests, contacts);
                prop_assert!(!all || sizes.is_empty() || p.requests <= p.alternative_requests);
            }
        }
    }
}
