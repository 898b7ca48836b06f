//! Property tests of the API response decoder, on generated and mutated bodies: a contacts
//! page (then the edge conversion, the NUL removal and the merge plan it feeds), the lists
//! and custom-field pages, and an activity's status (then its completion mapping). Never a
//! panic: a body decodes or is an error; a decoded page accounts for every element (a
//! contact, or a rejected record with its reason), and what reaches the store holds no NUL.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::activities::{Activity, TERMINAL_STATES};
use super::convert::into_incoming_noted;
use super::dto::{ContactListsPage, CustomFieldsPage, PagingLinks};
use super::page::ContactsPage;
use crate::core::activity::map_completion;
use crate::core::contact::ContactRow;
use crate::core::merge::plan_page;
use crate::core::optouts::newly_unsubscribed;
use crate::core::sanitize::BadInput;

/// Cases per property: ten thousand each.
const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn uuid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u128..6).prop_map(|n| Uuid::from_u128(n).to_string()),
        Just("not-a-uuid".to_string()),
        Just(String::new()),
        Just("4A9E2A1C-5A62-4A7C-9F5E-1BD9B3AB8A11".to_string()),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z@. ]{0,10}",
        "[a-z]{1,4}\u{0}[a-z]{0,3}",
        "\\PC{0,6}",
        prop::sample::select(vec![
            "",
            " ",
            "\u{0}",
            "A@B.C",
            " Mixed@Case.Example ",
            "unsubscribed",
            "implicit",
            "explicit",
            "pending_confirmation",
            "2026-12-02T06:00:00Z",
            "2026-12-02T06:00:00.123+0100",
            "2026-12-02",
            "2026-13-45T99:00:00Z",
            "1969-12-31T23:59:59Z",
            "+275760-09-13T00:00:00Z",
        ])
        .prop_map(str::to_string),
    ]
}

/// Any JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e20f64..1e20).prop_map(|f| json!(f)),
        text().prop_map(Value::String),
        uuid_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field's value: usually of the right shape, sometimes anything.
fn shaped(right: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![3 => right, 1 => any_json()].boxed()
}

fn email_address() -> BoxedStrategy<Value> {
    let fields = (
        prop::option::of(shaped(text().prop_map(Value::String).boxed())),
        prop::option::of(shaped(
            prop::sample::select(vec![
                "implicit",
                "explicit",
                "unsubscribed",
                "pending_confirmation",
            ])
            .prop_map(|s| json!(s))
            .boxed(),
        )),
        prop::option::of(shaped(text().prop_map(Value::String).boxed())),
        prop::option::of(shaped(text().prop_map(Value::String).boxed())),
    );
    shaped(
        fields
            .prop_map(|(address, permission, opt_out_date, updated_at)| {
                let mut m = Map::new();
                for (k, v) in [
                    ("address", address),
                    ("permission_to_send", permission),
                    ("opt_out_date", opt_out_date),
                    ("updated_at", updated_at),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            })
            .boxed(),
    )
}

/// A page element: usually contact-shaped (with damage), sometimes anything.
fn contactish() -> impl Strategy<Value = Value> {
    let s = || shaped(text().prop_map(Value::String).boxed());
    let contact = (
        prop::option::of(shaped(uuid_text().prop_map(Value::String).boxed())),
        prop::option::of(email_address()),
        (
            prop::option::of(s()),
            prop::option::of(s()),
            prop::option::of(s()),
        ),
        prop::option::of(shaped((-40i64..40).prop_map(|n| json!(n)).boxed())),
        prop::option::of(shaped(
            prop::collection::vec(uuid_text().prop_map(Value::String), 0..3)
                .prop_map(Value::Array)
                .boxed(),
        )),
        prop::option::of(any_json()),
        prop::option::of(("[a-z]{1,6}", any_json())),
    )
        .prop_map(
            |(id, email, (first, updated, deleted), month, lists, cfs, extra)| {
                let mut m = Map::new();
                for (k, v) in [
                    ("contact_id", id),
                    ("email_address", email),
                    ("first_name", first),
                    ("updated_at", updated),
                    ("deleted_at", deleted),
                    ("birthday_month", month),
                    ("list_memberships", lists),
                    ("custom_fields", cfs),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                if let Some((k, v)) = extra {
                    m.insert(k, v);
                }
                Value::Object(m)
            },
        );
    prop_oneof![4 => contact, 1 => any_json()]
}

fn contacts_page() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(contactish(), 0..3),
        prop::option::of(shaped(
            text().prop_map(|h| json!({"next": {"href": h}})).boxed(),
        )),
        prop::option::of(any_json()),
    )
        .prop_map(|(contacts, links, count)| {
            let mut m = Map::new();
            m.insert("contacts".into(), Value::Array(contacts));
            if let Some(l) = links {
                m.insert("_links".into(), l);
            }
            if let Some(c) = count {
                m.insert("contacts_count".into(), c);
            }
            Value::Object(m)
        })
}

fn has_nul(row: &ContactRow) -> bool {
    let texts = [
        &row.email,
        &row.first_name,
        &row.last_name,
        &row.job_title,
        &row.company_name,
        &row.anniversary,
        &row.permission_to_send,
        &row.opt_in_source,
        &row.opt_out_source,
        &row.opt_out_reason,
        &row.confirm_status,
        &row.create_source,
        &row.update_source,
    ];
    texts
        .iter()
        .any(|t| t.as_deref().is_some_and(|s| s.contains('\0')))
        || [
            &row.custom_fields,
            &row.phone_numbers,
            &row.street_addresses,
            &row.taggings,
        ]
        .iter()
        .any(|v| json_has_nul(v))
}

/// Whether a string of `v` (object keys included, at any depth) holds a NUL character —
/// what PostgreSQL's `jsonb` refuses. The six characters `\u0000` inside a string (JSON
/// text `"\\u0000"`) are not one, so the check walks values instead of searching the text.
fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(k, item)| k.contains('\0') || json_has_nul(item)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// What a decoded page promises the pull, checked against the body it came from.
fn check_page(page: &ContactsPage, body: &Value) -> Result<(), TestCaseError> {
    let elements = body
        .get("contacts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Every element is a contact or a rejected record, in order, never both.
    prop_assert_eq!(page.contacts.len() + page.rejected.len(), elements.len());
    // Each contact is what the tree path makes of its element (`Contact::from_value`,
    // then the edge conversion): the page's typed decode is a shortcut, never a second
    // opinion.
    let mut via_tree = Vec::new();
    let mut nuls_via_tree = Vec::new();
    for (inc, stripped) in elements
        .iter()
        .filter_map(|e| super::dto::Contact::from_value(e).ok())
        .filter_map(|c| into_incoming_noted(c).ok())
    {
        nuls_via_tree.extend(stripped.into_iter().map(|f| (inc.row.contact_id, f)));
        via_tree.push(inc);
    }
    prop_assert_eq!(&page.contacts, &via_tree);
    prop_assert_eq!(&page.nul_removed, &nuls_via_tree);
    for r in &page.rejected {
        prop_assert!(!r.reason.is_empty());
        let poison = BadInput::poison(r.reason.clone(), r.record.clone());
        let stored = poison.record.unwrap_or_default();
        prop_assert!(
            !json_has_nul(&stored),
            "a NUL in a poison record: {}",
            stored
        );
    }
    let seen: HashSet<Uuid> = page.seen_ids().into_iter().collect();
    let _ = PagingLinks::next_href(&page.links);
    for inc in &page.contacts {
        prop_assert!(seen.contains(&inc.row.contact_id));
        prop_assert!(!has_nul(&inc.row), "a NUL reaches the store: {:?}", inc.row);
        let email = inc.row.email.clone().unwrap_or_default();
        prop_assert!(
            !email.is_empty(),
            "a contact without an address was accepted"
        );
        prop_assert_eq!(&email, &email.trim().to_lowercase());
        if inc.row.deleted_at.is_some() {
            prop_assert_eq!(inc.memberships.as_ref().map(|m| m.len()), Some(0));
        }
    }
    let incoming = &page.contacts;
    // The merge plans what the page says; opt-outs it reports are unsubscribed contacts.
    let plan = plan_page(incoming, &HashMap::new(), None);
    for row in plan.inserts.iter().chain(&plan.updates) {
        prop_assert!(!has_nul(row));
    }
    let unsubscribed: HashSet<String> = incoming
        .iter()
        .filter(|i| i.row.permission_to_send.as_deref() == Some("unsubscribed"))
        .filter_map(|i| i.row.email.clone())
        .collect();
    for r in newly_unsubscribed(incoming, &plan) {
        prop_assert!(
            unsubscribed.contains(&r.email),
            "{} refused but not unsubscribed",
            r.email
        );
    }
    Ok(())
}

/// A body with one mutation: cut short, a byte replaced, or a byte inserted.
fn mutate(mut bytes: Vec<u8>, kind: u8, at: usize, b: u8) -> Vec<u8> {
    if bytes.is_empty() {
        return vec![b];
    }
    let i = at % bytes.len();
    match kind % 3 {
        0 => bytes.truncate(i),
        1 => bytes[i] = b,
        _ => bytes.insert(i, b),
    }
    bytes
}

fn activityish() -> impl Strategy<Value = Value> {
    let counter = || {
        prop::option::of(shaped(
            prop_oneof![
                (0u64..10).prop_map(|n| json!(n)),
                Just(json!(-1)),
                Just(json!(u64::MAX))
            ]
            .boxed(),
        ))
    };
    let a = (
        prop::option::of(shaped(text().prop_map(Value::String).boxed())),
        prop::option::of(shaped(
            prop::sample::select(vec![
                "initialized",
                "processing",
                "completed",
                "failed",
                "cancelled",
                "timed_out",
                "",
            ])
            .prop_map(|s| json!(s))
            .boxed(),
        )),
        (counter(), counter(), counter(), counter()),
        prop::option::of(shaped(
            prop::collection::vec(
                prop_oneof![
                    text().prop_map(Value::String),
                    text().prop_map(|m| json!({"message": m})),
                    any_json(),
                ],
                0..4,
            )
            .prop_map(Value::Array)
            .boxed(),
        )),
    )
        .prop_map(|(id, state, (p, e, c, l), errors)| {
            let mut m = Map::new();
            let mut status = Map::new();
            for (k, v) in [
                ("person_count", p),
                ("error_count", e),
                ("correctable_count", c),
                ("cannot_add_to_list_count", l),
            ] {
                if let Some(v) = v {
                    status.insert(k.into(), v);
                }
            }
            m.insert("status".into(), Value::Object(status));
            for (k, v) in [
                ("activity_id", id),
                ("state", state),
                ("activity_errors", errors),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        });
    prop_oneof![4 => a, 1 => any_json()]
}

fn check_activity(a: &Activity, rows: &[(i64, String)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.is_terminal(), TERMINAL_STATES.contains(&a.state.as_str()));
    let messages = a.error_messages();
    prop_assert_eq!(
        messages.len(),
        a.activity_errors.as_ref().map_or(0, Vec::len)
    );
    let done = map_completion(rows, &messages, &a.counters());
    let ids: HashSet<i64> = rows.iter().map(|(i, _)| *i).collect();
    let failed: HashSet<i64> = done.failed.iter().map(|(i, _)| *i).collect();
    prop_assert_eq!(failed.len(), done.failed.len(), "a row failed twice");
    prop_assert!(failed.is_subset(&ids));
    prop_assert!(done.unprocessed.iter().all(|i| ids.contains(i)));
    Ok(())
}

fn rows() -> impl Strategy<Value = Vec<(i64, String)>> {
    prop::collection::vec(prop::sample::select(vec!["a@b.c", "d@e.f", "g@h.i"]), 0..5).prop_map(
        |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, e)| (i as i64 + 1, e.to_string()))
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_generated_contacts_page_decodes_and_accounts_for_every_element(body in contacts_page()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        if let Ok(page) = serde_json::from_slice::<ContactsPage>(&bytes) {
            check_page(&page, &body)?;
        } else {
            // Only the page's own fields can fail it; a bad element never does.
            let links_bad = body.get("_links").is_some_and(|l| serde_json::from_value::<Option<PagingLinks>>(l.clone()).is_err());
            let count_bad = body.get("contacts_count").is_some_and(|c| serde_json::from_value::<Option<u64>>(c.clone()).is_err());
            prop_assert!(links_bad || count_bad, "the page failed for its elements: {}", body);
        }
    }

    #[test]
    fn a_mutated_body_decodes_or_errs_and_never_panics(
        body in contacts_page(),
        kind in any::<u8>(),
        at in any::<usize>(),
        b in any::<u8>(),
    ) {
        let bytes = mutate(serde_json::to_vec(&body).unwrap(), kind, at, b);
        if let Ok(page) = serde_json::from_slice::<ContactsPage>(&bytes) {
            // A part the page ignores (an unknown key's value) may hold what a `Value`
            // refuses, such as a lone surrogate escape: the page is still whole.
            if let Ok(body) = serde_json::from_slice::<Value>(&bytes) {
                check_page(&page, &body)?;
            }
        }
        let _ = serde_json::from_slice::<ContactListsPage>(&bytes);
        let _ = serde_json::from_slice::<CustomFieldsPage>(&bytes);
    }

    #[test]
    fn an_activity_status_decodes_or_errs_and_maps_every_row_at_most_once(
        body in activityish(),
        rows in rows(),
        kind in any::<u8>(),
        at in any::<usize>(),
        b in any::<u8>(),
    ) {
        let bytes = mutate(serde_json::to_vec(&body).unwrap(), kind, at, b);
        if let Ok(a) = serde_json::from_slice::<Activity>(&bytes) {
            check_activity(&a, &rows)?;
        }
        if let Ok(a) = serde_json::from_value::<Activity>(body) {
            check_activity(&a, &rows)?;
        }
    }
}

/// The case CI found: a poison record whose string holds the six characters `\u0000` (JSON
/// text `"\\u0000"`) — no NUL, so PostgreSQL stores it as is and the check must pass it; a
/// real NUL in the same place is removed before the record is kept.
#[test]
fn an_escaped_backslash_u0000_is_text_and_a_real_nul_is_removed() {
    let body = r#"{"contacts":[{"contact_id":[],"custom_fields":[],"email_address":{"address":"","opt_out_date":"\\u0000"},"first_name":"a"}]}"#;
    let page: ContactsPage = serde_json::from_str(body).unwrap();
    let value: Value = serde_json::from_str(body).unwrap();
    assert_eq!(page.rejected.len(), 1);
    assert!(check_page(&page, &value).is_ok());

    assert!(!json_has_nul(&json!({"a": "\\u0000"})));
    assert!(json_has_nul(&json!({"a": ["\u{0}"]})));
    assert!(json_has_nul(&json!({"k\u{0}": 1})));
    let poison = BadInput::poison("r".into(), json!({"a": "x\u{0}y", "b\u{0}": 1}));
    assert!(!json_has_nul(&poison.record.unwrap()));
}
