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
