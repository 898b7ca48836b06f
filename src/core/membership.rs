//! The pure core of the membership reconcile: no I/O.
//!
//! Constant Contact's memberships win, with one exception: a membership that a `pending`
//! outbound row is adding is not removed locally (the push is about to create it in
//! Constant Contact; removing it now and re-adding it after the push would only churn the
//! change feed).

use std::collections::{BTreeSet, HashMap, HashSet};

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
    /// Only the local store has them, but a pending outbound row adds them: kept.
    pub protected: Vec<Pair>,
}

impl MembershipDiff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Compares the local memberships with Constant Contact's over the same scope (the same
/// contacts and lists). Outputs are sorted.
pub fn diff(
    local: &BTreeSet<Pair>,
    remote: &BTreeSet<Pair>,
    protected: &HashSet<Pair>,
) -> MembershipDiff {
    let mut out = MembershipDiff {
        add: remote.difference(local).copied().collect(),
        ..Default::default()
    };
    for p in local.difference(remote) {
        if protected.contains(p) {
            out.protected.push(*p);
        } else {
            out.remove.push(*p);
        }
    }
    out
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

/// Protected pairs: pending adds by (lower-case email, list), mapped to contacts through
/// their emails.
pub fn protected_pairs(
    pending: &[(String, Uuid)],
    emails: &HashMap<Uuid, String>,
) -> HashSet<Pair> {
    let mut by_email: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (email, list) in pending {
        by_email.entry(email.as_str()).or_default().push(*list);
    }
    let mut out = HashSet::new();
    for (contact, email) in emails {
        if let Some(lists) = by_email.get(email.to_lowercase().as_str()) {
            out.extend(lists.iter().map(|l| (*contact, *l)));
        }
    }
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
        let d = diff(&local, &remote, &HashSet::new());
        assert_eq!(d.add, vec![p(3, 1)]);
        assert_eq!(d.remove, vec![p(2, 1)]);
        assert_eq!(apply(&local, &d), remote);
    }

    #[test]
    fn a_pending_add_protects_a_membership_but_never_adds_one() {
        let local: BTreeSet<Pair> = [p(2, 1)].into();
        let remote = BTreeSet::new();
        let protected: HashSet<Pair> = [p(2, 1), p(4, 1)].into();
        let d = diff(&local, &remote, &protected);
        assert!(d.is_empty());
        assert_eq!(d.protected, vec![p(2, 1)]);
        assert_eq!(apply(&local, &d), local);
    }

    #[test]
    fn protection_matches_emails_case_insensitively() {
        let pending = vec![("ann@example.com".to_string(), Uuid::from_u128(9))];
        let emails: HashMap<Uuid, String> =
            [(Uuid::from_u128(1), "Ann@Example.com".to_string())].into();
        assert_eq!(protected_pairs(&pending, &emails), [p(1, 9)].into());
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
        /// Applying the diff yields Constant Contact's set, plus the local memberships that
        /// pending outbound rows protect — nothing else.
        #[test]
        fn applying_the_diff_yields_the_remote_set_except_protected(
            local in pairs(), remote in pairs(), protected in pairs()
        ) {
            let protected: HashSet<Pair> = protected.into_iter().collect();
            let d = diff(&local, &remote, &protected);
            let got = apply(&local, &d);
            let kept: BTreeSet<Pair> = local
                .iter()
                .filter(|x| protected.contains(x))
                .copied()
                .collect();
            let expected: BTreeSet<Pair> = remote.union(&kept).copied().collect();
            prop_assert_eq!(&got, &expected);
            // Every remote membership is present; a removal is never protected; additions
            // are only what the local store lacked.
            prop_assert!(remote.is_subset(&got));
            prop_assert!(d.remove.iter().all(|x| !protected.contains(x) && !remote.contains(x)));
            prop_assert!(d.add.iter().all(|x| !local.contains(x)));
        }

        /// A second diff after applying the first changes nothing (idempotent).
        #[test]
        fn the_diff_is_idempotent(local in pairs(), remote in pairs(), protected in pairs()) {
            let protected: HashSet<Pair> = protected.into_iter().collect();
            let once = apply(&local, &diff(&local, &remote, &protected));
            prop_assert!(diff(&once, &remote, &protected).is_empty());
        }
    }
}
