//! Confirm after write: a pushed row is `completed` only when Constant Contact shows its
//! effect, judged on a read made after the import activity ended (applied to the store
//! first). No I/O. An activity's counters are not proof: a row the import refused without
//! naming it (counted in `error_count` / `correctable_count`, or in no counter at all) is
//! found here because the contact, a list or a value is missing.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::activity::Counters;
use super::guard::{changed_since, holds, GuardInput, OutboundRow};

/// One submitted row and the properties the push dropped from it (conflicts).
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub row: OutboundRow,
    pub dropped: BTreeSet<String>,
}

/// How a submitted row ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Constant Contact shows every pushed list and value (or changed a value since).
    Completed(Option<String>),
    /// Not added to its lists because the contact is unsubscribed (never re-subscribed).
    Skipped(String),
    /// Not there: the reason names what is missing and the activity's counters.
    Failed(String),
}

fn counters_note(c: &Counters) -> String {
    let n = |v: Option<u64>| v.unwrap_or(0);
    if n(c.error_count) + n(c.correctable_count) > 0 {
        format!(
            " (the activity counted error_count={}, correctable_count={} without naming this row)",
            n(c.error_count),
            n(c.correctable_count)
        )
    } else {
        " (the activity reported no error for it)".to_string()
    }
}

/// The verdict for every row of one ended import activity. `lists` are the lists the
/// import named; `submitted_at` is when it was sent; `input` is the store after the read.
pub fn confirm(
    rows: &[Submitted],
    lists: &[Uuid],
    submitted_at: DateTime<Utc>,
    input: &GuardInput,
    counters: &Counters,
) -> Vec<(i64, Verdict)> {
    // An address's rows were coalesced into one item, later rows winning property by
    // property: each row is judged against what was actually sent.
    let mut sent: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut sorted: Vec<&Submitted> = rows.iter().collect();
    sorted.sort_by_key(|s| s.row.id);
    for s in &sorted {
        let e = sent.entry(s.row.email.trim().to_lowercase()).or_default();
        if let Value::Object(m) = &s.row.fields {
            for (k, v) in m {
                if !s.dropped.contains(k) {
                    e.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let note = counters_note(counters);
    sorted
        .into_iter()
        .map(|s| {
            let email = s.row.email.trim().to_lowercase();
            let verdict = match input.contacts.get(&email) {
                None => Verdict::Failed(format!("not in Constant Contact after the import{note}")),
                Some(p) if p.deleted => {
                    Verdict::Failed(format!("deleted in Constant Contact after the import{note}"))
                }
                Some(p) => {
                    let missing: Vec<String> = lists
                        .iter()
                        .filter(|l| !p.memberships.contains(l))
                        .map(Uuid::to_string)
                        .collect();
                    let values = sent.get(&email);
                    let wrong: Vec<String> = s
                        .row
                        .fields
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .filter(|k| !s.dropped.contains(*k))
                        .filter_map(|k| {
                            let v = values.and_then(|m| m.get(k))?;
                            let ok = holds(p, k, v, &input.custom_fields).unwrap_or(true)
                                || changed_since(
                                    input.changes.get(&p.contact_id).map_or(&[][..], Vec::as_slice),
                                    submitted_at,
                                    k,
                                    &input.custom_fields,
                                );
                            (!ok).then(|| k.clone())
                        })
                        .collect();
                    let unsubscribed = p.permission_to_send.as_deref() == Some("unsubscribed");
                    if !missing.is_empty() && unsubscribed {
                        Verdict::Skipped(format!(
                            "unsubscribed in Constant Contact: not added to list {} (cannot_add_to_list_count={}); never re-subscribed",
                            missing.join(", "),
                            counters.cannot_add_to_list_count.unwrap_or(0)
                        ))
                    } else if !missing.is_empty() {
                        Verdict::Failed(format!(
                            "not on list {} in Constant Contact after the import{note}",
                            missing.join(", ")
                        ))
                    } else if !wrong.is_empty() {
                        Verdict::Failed(format!(
                            "{} not applied in Constant Contact after the import{note}",
                            wrong.join(", ")
                        ))
                    } else {
                        Verdict::Completed(None)
                    }
                }
            };
            (s.row.id, verdict)
        })
        .collect()
}

/// The verdict for every row of an ended `remove_list_memberships` (`op` =
/// `RemoveFromLists`, `lists` the lists it named) or `contact_delete` (`Delete`), judged on
/// the store after a read of the contacts. `named` are the activity's error messages: a row
/// whose address one names fails with it.
pub fn confirm_direct(
    op: super::op::Op,
    rows: &[OutboundRow],
    lists: &[Uuid],
    input: &GuardInput,
    named: &[String],
) -> Vec<(i64, Verdict)> {
    use super::op::Op;
    rows.iter()
        .map(|r| {
            let email = r.email.trim().to_lowercase();
            if let Some(m) = named.iter().find(|m| m.to_lowercase().contains(&email)) {
                return (r.id, Verdict::Failed(m.clone()));
            }
            let p = input.contacts.get(&email);
            let v = match (op, p) {
                (_, None) => Verdict::Completed(Some(
                    "no contact with this address in Constant Contact after the request".into(),
                )),
                (Op::Delete, Some(p)) if p.deleted => Verdict::Completed(None),
                (Op::Delete, Some(_)) => Verdict::Failed(
                    "not deleted in Constant Contact after contact_delete completed".into(),
                ),
                (_, Some(p)) if p.deleted => {
                    Verdict::Completed(Some("deleted in Constant Contact: on no list".into()))
                }
                (_, Some(p)) => {
                    let still: Vec<String> = lists
                        .iter()
                        .filter(|l| p.memberships.contains(l))
                        .map(Uuid::to_string)
                        .collect();
                    if still.is_empty() {
                        Verdict::Completed(None)
                    } else {
                        Verdict::Failed(format!(
                            "still on list {} in Constant Contact after remove_list_memberships completed",
                            still.join(", ")
                        ))
                    }
                }
            };
            (r.id, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::guard::{Primary, PrimaryChange};
    use serde_json::json;
    use std::collections::BTreeMap as Map;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    fn row(id: i64, email: &str, fields: Value) -> Submitted {
        Submitted {
            row: OutboundRow {
                id,
                email: email.into(),
                fields,
                list_ids: vec![],
                created_at: t(10),
                op: "upsert".into(),
            },
            dropped: BTreeSet::new(),
        }
    }

    fn primary(first: &str, lists: &[Uuid], perm: &str) -> Primary {
        Primary {
            contact_id: Uuid::from_u128(1),
            permission_to_send: Some(perm.into()),
            memberships: lists.iter().copied().collect(),
            scalars: Map::from([("first_name".to_string(), json!(first))]),
            phone_numbers: json!([]),
            street_addresses: json!([]),
            custom_fields: json!([]),
            ..Primary::default()
        }
    }

    fn input(p: Option<Primary>) -> GuardInput {
        let mut i = GuardInput::default();
        if let Some(p) = p {
            i.contacts.insert("a@x.io".into(), p);
        }
        i
    }

    #[test]
    fn a_row_is_completed_only_when_its_list_and_value_are_there() {
        let l = Uuid::from_u128(7);
        let r = [row(1, "A@x.io", json!({"first_name": "Ann"}))];
        let c = Counters::default();
        let ok = confirm(
            &r,
            &[l],
            t(20),
            &input(Some(primary("Ann", &[l], "implicit"))),
            &c,
        );
        assert_eq!(ok, vec![(1, Verdict::Completed(None))]);
        let no_list = confirm(
            &r,
            &[l],
            t(20),
            &input(Some(primary("Ann", &[], "implicit"))),
            &c,
        );
        assert!(matches!(&no_list[0].1, Verdict::Failed(m) if m.contains("not on list")));
        let stale = confirm(
            &r,
            &[l],
            t(20),
            &input(Some(primary("Old", &[l], "implicit"))),
            &c,
        );
        assert!(matches!(&stale[0].1, Verdict::Failed(m) if m.contains("first_name")));
    }

    #[test]
    fn an_unnamed_refusal_fails_with_the_counters_in_the_reason() {
        let r = [row(1, "a@x.io", json!({}))];
        let c = Counters {
            person_count: Some(0),
            error_count: Some(1),
            ..Counters::default()
        };
        let v = confirm(&r, &[Uuid::from_u128(7)], t(20), &input(None), &c);
        assert!(
            matches!(&v[0].1, Verdict::Failed(m) if m.contains("error_count=1") && m.contains("not in Constant Contact")),
            "{v:?}"
        );
    }

    #[test]
    fn an_unsubscribed_contact_off_the_list_is_skipped_never_failed_or_completed() {
        let l = Uuid::from_u128(7);
        let r = [row(1, "a@x.io", json!({}))];
        let c = Counters {
            cannot_add_to_list_count: Some(1),
            ..Counters::default()
        };
        let v = confirm(
            &r,
            &[l],
            t(20),
            &input(Some(primary("Ann", &[], "unsubscribed"))),
            &c,
        );
        assert!(matches!(&v[0].1, Verdict::Skipped(m) if m.contains("cannot_add_to_list_count=1")));
    }

    #[test]
    fn a_value_constant_contact_changed_since_the_import_counts_as_applied() {
        let l = Uuid::from_u128(7);
        let r = [row(1, "a@x.io", json!({"first_name": "Ann"}))];
        let mut i = input(Some(primary("Bea", &[l], "implicit")));
        i.changes.insert(
            Uuid::from_u128(1),
            vec![PrimaryChange {
                at: t(30),
                kind: "updated".into(),
                field: Some("first_name".into()),
                old_value: Some(json!("Ann")),
                new_value: Some(json!("Bea")),
            }],
        );
        let v = confirm(&r, &[l], t(20), &i, &Counters::default());
        assert_eq!(v[0].1, Verdict::Completed(None));
    }

    #[test]
    fn a_custom_field_value_is_verified_by_id() {
        let l = Uuid::from_u128(7);
        let shoe = Uuid::from_u128(0xCF);
        let with_value = |v: &str| {
            let mut p = primary("Ann", &[l], "implicit");
            p.custom_fields = json!([{"custom_field_id": shoe.to_string(), "value": v}]);
            let mut i = input(Some(p));
            i.custom_fields.insert("shoe_size".into(), shoe);
            i
        };
        let r = [row(1, "a@x.io", json!({"cf:shoe_size": "44"}))];
        let c = Counters::default();
        let ok = confirm(&r, &[l], t(20), &with_value("44"), &c);
        assert_eq!(ok, vec![(1, Verdict::Completed(None))]);
        let missing = confirm(&r, &[l], t(20), &with_value("38"), &c);
        assert!(
            matches!(&missing[0].1, Verdict::Failed(m) if m.contains("cf:shoe_size not applied")),
            "{missing:?}"
        );
        // Changed in Constant Contact after the import: counts as applied.
        let mut i = with_value("38");
        i.changes.insert(
            Uuid::from_u128(1),
            vec![PrimaryChange {
                at: t(30),
                kind: "updated".into(),
                field: Some("custom_fields".into()),
                old_value: Some(json!([{"custom_field_id": shoe.to_string(), "value": "44"}])),
                new_value: Some(json!([{"custom_field_id": shoe.to_string(), "value": "38"}])),
            }],
        );
        assert_eq!(
            confirm(&r, &[l], t(20), &i, &c)[0].1,
            Verdict::Completed(None)
        );
    }

    #[test]
    fn coalesced_rows_are_judged_on_what_was_sent() {
        let l = Uuid::from_u128(7);
        let r = [
            row(1, "a@x.io", json!({"first_name": "Old"})),
            row(2, "a@x.io", json!({"first_name": "Ann"})),
        ];
        let v = confirm(
            &r,
            &[l],
            t(20),
            &input(Some(primary("Ann", &[l], "implicit"))),
            &Counters::default(),
        );
        assert!(
            v.iter().all(|(_, v)| *v == Verdict::Completed(None)),
            "{v:?}"
        );
    }
}
