//! The pure core of applying Constant Contact's contacts to the local store: no I/O.
//!
//! Primary wins: an incoming contact replaces the stored copy unless it is stale (an older
//! `updated_at` than stored changes nothing). Only values that differ produce `changes`
//! rows, so applying the same page twice is a no-op.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::change::{membership_change, Change, ChangeKind};
use super::contact::{ContactRow, Incoming, Stored};

/// Counters of one page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PageStats {
    pub seen: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub deleted: u64,
    pub unsubscribed: u64,
}

impl std::ops::AddAssign for PageStats {
    fn add_assign(&mut self, o: Self) {
        self.seen += o.seen;
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.stale += o.stale;
        self.deleted += o.deleted;
        self.unsubscribed += o.unsubscribed;
    }
}

/// Everything one page asks of the store; its rows are the page's own (borrowed, never
/// copied).
#[derive(Debug, Default, PartialEq)]
pub struct PagePlan<'a> {
    /// Contacts the store does not hold.
    pub inserts: Vec<&'a ContactRow>,
    /// The list memberships of `inserts`.
    pub insert_memberships: Vec<(Uuid, Uuid)>,
    /// Stored contacts to update (changed; stale and identical ones are left out).
    pub updates: Vec<&'a ContactRow>,
    pub changes: Vec<Change>,
    /// Memberships stored contacts gained.
    pub add_memberships: Vec<(Uuid, Uuid)>,
    pub remove_memberships: Vec<(Uuid, Uuid)>,
    pub stats: PageStats,
    /// Largest `updated_at` seen on the page (stale rows included: they were read).
    pub max_updated_at: Option<DateTime<Utc>>,
}

/// True when `incoming` is older than what is stored (it must change nothing).
pub fn is_stale(incoming: &ContactRow, stored: &ContactRow) -> bool {
    if incoming.updated_at != stored.updated_at {
        return incoming.updated_at < stored.updated_at;
    }
    // Same contact timestamp: an unsubscribe moves only the email address's clock.
    match (incoming.email_updated_at, stored.email_updated_at) {
        (Some(i), Some(s)) => i < s,
        (None, Some(_)) => true,
        _ => false,
    }
}

macro_rules! diff_fields {
    ($out:ident, $old:ident, $new:ident; $($field:ident),* $(,)?) => {
        $(
            if $old.$field != $new.$field {
                $out.push((stringify!($field), json!($old.$field), json!($new.$field)));
            }
        )*
    };
}

/// Field-level differences worth a `changes` row (bookkeeping timestamps excluded).
pub fn field_diffs(old: &ContactRow, new: &ContactRow) -> Vec<(&'static str, Value, Value)> {
    let mut out = Vec::new();
    diff_fields!(out, old, new;
        email, first_name, last_name, job_title, company_name, birthday_month, birthday_day,
        anniversary, permission_to_send, opt_in_source, opt_out_source, opt_out_date,
        opt_out_reason, confirm_status, custom_fields, phone_numbers, street_addresses,
        taggings, create_source, update_source, deleted_at);
    out
}

/// Plans one page. `lists_filter` limits which lists' memberships are synced (`None` = all).
pub fn plan_page<'a>(
    incoming: &'a [Incoming],
    stored: &HashMap<Uuid, Stored>,
    lists_filter: Option<&HashSet<Uuid>>,
) -> PagePlan<'a> {
    let mut plan = PagePlan::default();
    // The API should not repeat a contact within a page; if it does, the newest copy wins
    // (the last one among equals).
    let mut newest: HashMap<Uuid, usize> = HashMap::new();
    for (i, inc) in incoming.iter().enumerate() {
        match newest.get(&inc.row.contact_id) {
            Some(&j) if is_stale(&inc.row, &incoming[j].row) => {}
            _ => {
                newest.insert(inc.row.contact_id, i);
            }
        }
    }
    for (i, inc) in incoming.iter().enumerate().rev() {
        if newest.get(&inc.row.contact_id) != Some(&i) {
            continue;
        }
        plan.stats.seen += 1;
        let new = &inc.row;
        plan.max_updated_at = plan.max_updated_at.max(Some(new.updated_at));
        let filtered: Option<BTreeSet<Uuid>> =
            inc.memberships.as_ref().map(|m| match lists_filter {
                Some(f) => m.iter().filter(|l| f.contains(l)).copied().collect(),
                None => m.clone(),
            });
        let Some(old) = stored.get(&new.contact_id) else {
            plan.stats.created += 1;
            let kind = if new.deleted_at.is_some() {
                plan.stats.deleted += 1;
                ChangeKind::Deleted
            } else {
                ChangeKind::Created
            };
            plan.changes.push(Change {
                contact_id: new.contact_id,
                email: new.email.clone(),
                kind,
                field: None,
                old_value: None,
                new_value: None,
            });
            if let Some(m) = &filtered {
                plan.insert_memberships
                    .extend(m.iter().map(|l| (new.contact_id, *l)));
            }
            plan.inserts.push(new);
            continue;
        };
        if is_stale(new, &old.row) {
            plan.stats.stale += 1;
            continue;
        }
        let mut changed = false;
        for (field, o, n) in field_diffs(&old.row, new) {
            changed = true;
            let kind = match field {
                "permission_to_send" if n == json!("unsubscribed") => {
                    plan.stats.unsubscribed += 1;
                    ChangeKind::Unsubscribed
                }
                "permission_to_send" if o == json!("unsubscribed") => ChangeKind::Resubscribed,
                "deleted_at" if n.is_null() => ChangeKind::Restored,
                "deleted_at" => {
                    plan.stats.deleted += 1;
                    ChangeKind::Deleted
                }
                _ => ChangeKind::Updated,
            };
            plan.changes.push(Change {
                contact_id: new.contact_id,
                email: new.email.clone(),
                kind,
                field: Some(field),
                old_value: Some(o),
                new_value: Some(n),
            });
        }
        if let Some(m) = &filtered {
            for l in m.difference(&old.memberships) {
                changed = true;
                plan.add_memberships.push((new.contact_id, *l));
                plan.changes.push(membership_change(
                    new.contact_id,
                    new.email.as_ref(),
                    ChangeKind::ListAdded,
                    *l,
                ));
            }
            // Lists outside the filter are not synced: their memberships are left alone.
            let in_scope = |l: &&Uuid| lists_filter.is_none_or(|f| f.contains(*l));
            for l in old.memberships.difference(m).filter(in_scope) {
                changed = true;
                plan.remove_memberships.push((new.contact_id, *l));
                plan.changes.push(membership_change(
                    new.contact_id,
                    new.email.as_ref(),
                    ChangeKind::ListRemoved,
                    *l,
                ));
            }
        }
        let bookkeeping_moved = old.row.updated_at != new.updated_at
            || old.row.email_updated_at != new.email_updated_at
            || old.row.created_at != new.created_at
            || old.row.opt_in_date != new.opt_in_date;
        if changed {
            plan.stats.updated += 1;
        } else {
            plan.stats.unchanged += 1;
        }
        if changed || bookkeeping_moved {
            plan.updates.push(new);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    fn row(id: u128, updated: i64) -> ContactRow {
        ContactRow {
            contact_id: Uuid::from_u128(id),
            email: Some(format!("c{id}@example.com")),
            first_name: Some("Ann".into()),
            last_name: None,
            job_title: None,
            company_name: None,
            birthday_month: None,
            birthday_day: None,
            anniversary: None,
            permission_to_send: Some("implicit".into()),
            opt_in_source: Some("Account".into()),
            opt_in_date: None,
            opt_out_source: None,
            opt_out_date: None,
            opt_out_reason: None,
            confirm_status: None,
            email_updated_at: DateTime::from_timestamp(updated, 0),
            custom_fields: json!([]),
            phone_numbers: json!([]),
            street_addresses: json!([]),
            taggings: json!([]),
            create_source: Some("Account".into()),
            update_source: Some("Account".into()),
            created_at: DateTime::from_timestamp(0, 0),
            updated_at: DateTime::from_timestamp(updated, 0).unwrap(),
            deleted_at: None,
            jsonb_text: Default::default(),
        }
    }

    fn stored(r: &ContactRow, lists: &[u128]) -> Stored {
        Stored {
            row: r.clone(),
            memberships: lists.iter().map(|l| Uuid::from_u128(*l)).collect(),
        }
    }

    fn inc(r: ContactRow, lists: &[u128]) -> Incoming {
        Incoming {
            row: r,
            memberships: Some(lists.iter().map(|l| Uuid::from_u128(*l)).collect()),
        }
    }

    #[test]
    fn new_contact_is_created_with_its_memberships() {
        let page = [inc(row(1, 10), &[7, 8])];
        let plan = plan_page(&page, &HashMap::new(), None);
        assert_eq!(plan.stats.created, 1);
        assert_eq!(plan.inserts.len(), 1);
        assert_eq!(plan.insert_memberships.len(), 2);
        assert!(plan.updates.is_empty() && plan.add_memberships.is_empty());
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].kind, ChangeKind::Created);
    }

    #[test]
    fn older_updated_at_changes_nothing() {
        let mut s = HashMap::new();
        s.insert(Uuid::from_u128(1), stored(&row(1, 20), &[7]));
        let mut older = row(1, 10);
        older.first_name = Some("Old".into());
        let page = [inc(older, &[])];
        let plan = plan_page(&page, &s, None);
        assert_eq!(plan.stats.stale, 1);
        assert!(plan.updates.is_empty() && plan.changes.is_empty());
        assert!(plan.remove_memberships.is_empty());
    }

    #[test]
    fn unsubscribe_without_contact_timestamp_change_is_applied() {
        let base = row(1, 20);
        let mut s = HashMap::new();
        s.insert(base.contact_id, stored(&base, &[]));
        let mut unsub = base.clone();
        unsub.permission_to_send = Some("unsubscribed".into());
        unsub.email_updated_at = DateTime::from_timestamp(30, 0);
        let page = [inc(unsub, &[])];
        let plan = plan_page(&page, &s, None);
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].kind, ChangeKind::Unsubscribed);
        assert_eq!(plan.stats.unsubscribed, 1);
    }

    #[test]
    fn membership_diff_and_lists_filter() {
        let base = row(1, 20);
        let mut s = HashMap::new();
        s.insert(base.contact_id, stored(&base, &[7, 8]));
        let filter: HashSet<Uuid> = [Uuid::from_u128(8), Uuid::from_u128(9)].into();
        let page = [inc(base.clone(), &[7, 9])];
        let plan = plan_page(&page, &s, Some(&filter));
        // 7 is outside the filter: untouched. 8 removed, 9 added.
        assert_eq!(
            plan.add_memberships,
            vec![(base.contact_id, Uuid::from_u128(9))]
        );
        assert_eq!(
            plan.remove_memberships,
            vec![(base.contact_id, Uuid::from_u128(8))]
        );
    }

    #[test]
    fn deleted_contact_gets_deleted_kind() {
        let base = row(1, 20);
        let mut s = HashMap::new();
        s.insert(base.contact_id, stored(&base, &[7]));
        let mut del = row(1, 25);
        del.deleted_at = NaiveDate::from_ymd_opt(2026, 11, 26);
        let page = [Incoming {
            row: del,
            memberships: Some(BTreeSet::new()),
        }];
        let plan = plan_page(&page, &s, None);
        assert!(plan.changes.iter().any(|c| c.kind == ChangeKind::Deleted));
        assert_eq!(plan.remove_memberships.len(), 1);
    }

    fn arb_row() -> impl Strategy<Value = (ContactRow, Vec<u128>)> {
        (
            0u128..6,
            0i64..5,
            prop::option::of("[a-c]{1,2}"),
            prop::sample::select(vec!["implicit", "explicit", "unsubscribed"]),
            prop::collection::vec(0u128..4, 0..3),
        )
            .prop_map(|(id, ts, name, perm, lists)| {
                let mut r = row(id, ts);
                r.first_name = name;
                r.permission_to_send = Some(perm.to_string());
                (r, lists)
            })
    }

    /// Applies a plan to an in-memory store the way the SQL does.
    fn apply(store: &mut HashMap<Uuid, Stored>, plan: &PagePlan) {
        for r in plan.inserts.iter().chain(&plan.updates) {
            let e = store.entry(r.contact_id).or_insert_with(|| Stored {
                row: (*r).clone(),
                memberships: BTreeSet::new(),
            });
            e.row = (*r).clone();
        }
        for (c, l) in &plan.remove_memberships {
            if let Some(s) = store.get_mut(c) {
                s.memberships.remove(l);
            }
        }
        for (c, l) in plan.insert_memberships.iter().chain(&plan.add_memberships) {
            if let Some(s) = store.get_mut(c) {
                s.memberships.insert(*l);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

        /// Applying the same page twice: the second plan writes nothing.
        #[test]
        fn applying_a_page_twice_is_a_no_op(page in prop::collection::vec(arb_row(), 0..12)) {
            let page: Vec<Incoming> = page.into_iter().map(|(r, l)| inc(r, &l)).collect();
            let mut store = HashMap::new();
            let p1 = plan_page(&page, &store, None);
            apply(&mut store, &p1);
            let p2 = plan_page(&page, &store, None);
            prop_assert!(p2.changes.is_empty());
            prop_assert!(p2.inserts.is_empty() && p2.updates.is_empty());
            prop_assert!(p2.insert_memberships.is_empty());
            prop_assert!(p2.add_memberships.is_empty() && p2.remove_memberships.is_empty());
        }

        /// Primary wins: after applying, every contact holds the newest version seen, and a
        /// stale version never overwrites a newer one whatever the order of pages.
        #[test]
        fn newest_version_wins_in_any_order(
            pages in prop::collection::vec(prop::collection::vec(arb_row(), 1..6), 1..5)
        ) {
            let mut store = HashMap::new();
            for page in &pages {
                let page: Vec<Incoming> = page.iter().cloned().map(|(r, l)| inc(r, &l)).collect();
                let plan = plan_page(&page, &store, None);
                apply(&mut store, &plan);
            }
            for s in store.values() {
                let newest = pages.iter().flatten()
                    .filter(|(r, _)| r.contact_id == s.row.contact_id)
                    .map(|(r, _)| r.updated_at)
                    .max();
                prop_assert_eq!(Some(s.row.updated_at), newest);
            }
        }
    }
}
