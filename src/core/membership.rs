//! The pure core of the membership reconcile: no I/O.
//!
//! Constant Contact's memberships win, always: a membership only the local store has is
//! removed locally (`list_removed`) whatever the outbound queue holds. A pending row that
//! names that list is then refused it by the push guard (the contact left the list after
//! the row was queued), so a stale membership can never justify re-adding the contact.

use std::collections::{BTreeSet, HashSet};

use uuid::Uuid;

/// A membership: (contact_id, list_id).
pub type Pair = (Uuid, Uuid);

/// What to do to the local memberships.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipDiff {
    /// Only Constant Contact has them: add locally (`list_added`).
    pub add: Vec<Pair>,
    /// Only the local store has them: remove locally (`list_removed`).
    pub remove: Vec<Pair>,
}

impl MembershipDiff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Compares the local memberships with Constant Contact's over the same scope (the same
/// contacts and lists). Outputs are sorted.
pub fn diff(local: &BTreeSet<Pair>, remote: &BTreeSet<Pair>) -> MembershipDiff {
    MembershipDiff {
        add: remote.difference(local).copied().collect(),
        remove: local.difference(remote).copied().collect(),
    }
}

/// Applies `d` to `local` the way the store does (removals, then additions).
pub fn apply(local: &BTreeSet<Pair>, d: &MembershipDiff) -> BTreeSet<Pair> {
    let mut out = local.clone();
    for p in &d.remove {
        out.remove(p);
    }
    out.extend(d.add.iter().copied());
    out
}

/// The memberships of `contact` among `scope`.
pub fn pairs_in_scope<'a>(
    contact: Uuid,
    lists: impl IntoIterator<Item = &'a Uuid>,
    scope: &HashSet<Uuid>,
) -> Vec<Pair> {
    lists
        .into_iter()
        .filter(|l| scope.contains(l))
        .map(|l| (contact, *l))
        .collect()
}

/// The synced lists whose member count in Constant Contact (`membership_count` with
/// `include_membership_count=all`: every contact on the list that is not deleted) differs from
/// the store's, sorted. A list Constant Contact gave no count for is left to the reconcile.
///
/// What a count cannot see: a join and a leave of one list between two cycles cancel out
/// (same count, different members). The weekly reconcile compares members, not counts, and
/// repairs those.
pub fn drifted_lists(
    synced: &[Uuid],
    remote_counts: &std::collections::HashMap<Uuid, u64>,
    local_counts: &std::collections::HashMap<Uuid, u64>,
) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = synced
        .iter()
        .filter(|l| {
            remote_counts
                .get(l)
                .is_some_and(|n| *n != local_counts.get(l).copied().unwrap_or(0))
        })
        .copied()
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Splits the synced lists into groups of at most `max` for `GET /contacts?lists=` (the API
/// accepts up to 25 ids; a contact on several lists of one group comes back once).
pub fn batches(lists: &[Uuid], max: usize) -> Vec<Vec<Uuid>> {
    let mut sorted = lists.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.chunks(max.max(1)).map(<[Uuid]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(c: u128, l: u128) -> Pair {
        (Uuid::from_u128(c), Uuid::from_u128(l))
    }

    #[test]
    fn drift_in_both_directions_is_repaired() {
        let local: BTreeSet<Pair> = [p(1, 1), p(2, 1)].into();
        let remote: BTreeSet<Pair> = [p(1, 1), p(3, 1)].into();
        let d = diff(&local, &remote);
        assert_eq!(d.add, vec![p(3, 1)]);
        assert_eq!(d.remove, vec![p(2, 1)]);
        assert_eq!(apply(&local, &d), remote);
    }

    #[test]
    fn lists_are_batched_by_at_most_25_without_duplicates() {
        let lists: Vec<Uuid> = (0..60u128).chain(0..5).map(Uuid::from_u128).collect();
        let b = batches(&lists, 25);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![25, 25, 10]);
        assert!(batches(&[], 25).is_empty());
    }

    #[test]
    fn scope_keeps_only_the_batch_lists() {
        let scope: HashSet<Uuid> = [Uuid::from_u128(1)].into();
        let lists = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let got = pairs_in_scope(Uuid::from_u128(7), &lists, &scope);
        assert_eq!(got, vec![p(7, 1)]);
    }

    #[test]
    fn only_lists_whose_counts_differ_drift() {
        use std::collections::HashMap;
        let l = Uuid::from_u128;
        let synced = [l(3), l(1), l(2), l(4), l(1)];
        let remote: HashMap<Uuid, u64> = [(l(1), 5), (l(2), 0), (l(3), 7), (l(5), 9)].into();
        let local: HashMap<Uuid, u64> = [(l(1), 5), (l(3), 8), (l(4), 2), (l(5), 1)].into();
        // 1 equal; 2 zero on both sides (absent locally); 3 differs; 4 has no remote count
        // (left to the reconcile); 5 is not synced.
        assert_eq!(drifted_lists(&synced, &remote, &local), vec![l(3)]);
        let remote: HashMap<Uuid, u64> = [(l(2), 1)].into();
        assert_eq!(
            drifted_lists(&synced, &remote, &local),
            vec![l(2)],
            "a member only Constant Contact has"
        );
        assert!(drifted_lists(&[], &remote, &local).is_empty());
    }

    proptest! {
        /// A list drifts exactly when both counts are known-or-zero and differ; equal maps
        /// never drift.
        #[test]
        fn drift_is_a_count_difference(counts in prop::collection::vec((0u128..6, 0u64..4, 0u64..4), 0..12)) {
            use std::collections::HashMap;
            let synced: Vec<Uuid> = counts.iter().map(|(l, _, _)| Uuid::from_u128(*l)).collect();
            let remote: HashMap<Uuid, u64> = counts.iter().map(|(l, r, _)| (Uuid::from_u128(*l), *r)).collect();
            let local: HashMap<Uuid, u64> = counts.iter().map(|(l, _, c)| (Uuid::from_u128(*l), *c)).collect();
            let got = drifted_lists(&synced, &remote, &local);
            for l in &synced {
                prop_assert_eq!(got.contains(l), remote[l] != local[l]);
            }
            prop_assert!(drifted_lists(&synced, &remote, &remote).is_empty());
        }
    }

    fn pairs() -> impl Strategy<Value = BTreeSet<Pair>> {
        prop::collection::btree_set((0u128..8, 0u128..4).prop_map(|(c, l)| p(c, l)), 0..20)
    }

    proptest! {
        /// Applying the diff yields Constant Contact's set — nothing else, whatever the
        /// queue holds.
        #[test]
        fn applying_the_diff_yields_the_remote_set(local in pairs(), remote in pairs()) {
            let d = diff(&local, &remote);
            prop_assert_eq!(apply(&local, &d), remote.clone());
            prop_assert!(d.remove.iter().all(|x| local.contains(x) && !remote.contains(x)));
            prop_assert!(d.add.iter().all(|x| !local.contains(x)));
        }

        /// A second diff after applying the first changes nothing (idempotent).
        #[test]
        fn the_diff_is_idempotent(local in pairs(), remote in pairs()) {
            let once = apply(&local, &diff(&local, &remote));
            prop_assert!(diff(&once, &remote).is_empty());
        }
    }
}
