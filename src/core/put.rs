//! `PUT /contacts/{id}`: a field-only change, or an opt-out the application collected,
//! written onto the contact exactly as a fresh `GET` read it. No I/O.
//!
//! A PUT overwrites every core field (one left out becomes null) and keeps every
//! sub-resource left out. So the body is the contact as read — `email_address` with its
//! `permission_to_send` unchanged, every core field — with only the row's properties
//! changed; `list_memberships`, `taggings` and `notes` are never sent, and
//! `phone_numbers` / `street_addresses` / `custom_fields` only when a property touches them
//! (then rebuilt from the read with that one entry changed).
//!
//! Three-way rule per property: `base` is the store's copy (what ccsync last pulled, on
//! which the guard judged the row), `theirs` the fresh read, `ours` the row's value. If
//! `theirs` differs from `base`, Constant Contact changed the property since: it wins (the
//! property is dropped as a conflict) — unless `theirs` already equals `ours` (e.g. an
//! earlier PUT whose answer was lost), in which case nothing needs sending.
//!
//! `null` clears a property: core scalars (left out of the body), a phone of a kind, an
//! address part and a custom field (its entry removed). `street2` cannot be written through
//! a PUT (the contact resource has one `street` line): refused with a reason.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::guard::Primary;
#[cfg(test)]
use std::collections::HashMap;

pub use super::guard::CustomFieldIds;
use super::properties::{address_part, phone_kind};
pub use super::properties::{clearable, CORE_SCALARS};

fn text(v: &Value) -> Value {
    match v {
        Value::String(s) if s.trim().is_empty() => Value::Null,
        Value::String(s) => Value::String(s.trim().to_string()),
        other => other.clone(),
    }
}

/// The value of import property `prop` on `p` (`Null` when absent); `None` when it cannot
/// be told (`street2`, or an unknown custom field name).
pub fn property_value(p: &Primary, prop: &str, cf: &CustomFieldIds) -> Option<Value> {
    if CORE_SCALARS.contains(&prop) {
        return Some(text(p.scalars.get(prop).unwrap_or(&Value::Null)));
    }
    if let Some(name) = prop.strip_prefix("cf:") {
        let id = cf.get(name)?.to_string();
        let v = p
            .custom_fields
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f.get("custom_field_id").and_then(Value::as_str) == Some(id.as_str()))
            .and_then(|f| f.get("value"))
            .cloned()
            .unwrap_or(Value::Null);
        return Some(text(&v));
    }
    if let Some(kind) = phone_kind(prop) {
        let v = p
            .phone_numbers
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e.get("kind").and_then(Value::as_str) == Some(kind))
            .and_then(|e| e.get("phone_number"))
            .cloned()
            .unwrap_or(Value::Null);
        return Some(text(&v));
    }
    let (kind, field) = address_part(prop)?;
    let v = p
        .street_addresses
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e.get("kind").and_then(Value::as_str) == Some(kind))
        .and_then(|e| e.get(field))
        .cloned()
        .unwrap_or(Value::Null);
    Some(text(&v))
}

/// What Constant Contact's copy of a contact (a `GET /contacts/{id}` body) says, in the
/// guard's shape.
pub fn primary_of(read: &Value) -> Primary {
    let mut scalars = BTreeMap::new();
    for k in CORE_SCALARS {
        scalars.insert(k.to_string(), read.get(*k).cloned().unwrap_or(Value::Null));
    }
    let email = read.get("email_address");
    let s = |v: Option<&Value>, k: &str| {
        v.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Primary {
        contact_id: s(Some(read), "contact_id")
            .and_then(|id| Uuid::parse_str(&id).ok())
            .unwrap_or_default(),
        permission_to_send: s(email, "permission_to_send"),
        opt_out_reason: s(email, "opt_out_reason"),
        deleted: read.get("deleted_at").is_some_and(|d| !d.is_null()),
        memberships: read
            .get("list_memberships")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().and_then(|l| Uuid::parse_str(l).ok()))
            .collect::<BTreeSet<_>>(),
        scalars,
        phone_numbers: read.get("phone_numbers").cloned().unwrap_or(json!([])),
        street_addresses: read.get("street_addresses").cloned().unwrap_or(json!([])),
        custom_fields: read.get("custom_fields").cloned().unwrap_or(json!([])),
    }
}

/// A property Constant Contact changed since the store's copy: dropped from the PUT.
#[derive(Debug, Clone, PartialEq)]
pub struct PutConflict {
    pub field: String,
    pub ours: Value,
    pub theirs: Value,
}

/// What to send for a field change.
#[derive(Debug, Clone, PartialEq)]
pub struct PutPlan {
    /// `None`: nothing to send (every remaining property already holds the row's value).
    pub body: Option<Value>,
    /// The properties actually written, with their values.
    pub sent: Map<String, Value>,
    pub conflicts: Vec<PutConflict>,
}

/// The body of a field-only PUT of `fields` (import property names; `null` clears) onto
/// the contact as `read`, judged three-way against `base` (the store's copy).
pub fn plan_fields(
    read: &Value,
    base: &Primary,
    fields: &Map<String, Value>,
    cf: &CustomFieldIds,
) -> Result<PutPlan, String> {
    let theirs_p = primary_of(read);
    let mut conflicts = Vec::new();
    let mut sent = Map::new();
    for (k, ours) in fields {
        if k == "street2" || k.ends_with("_street2") {
            return Err(format!(
                "fields.{k} cannot be written through PUT /contacts (the contact has one street \
                 line): fold it into the street property"
            ));
        }
        let (Some(theirs), Some(was)) = (
            property_value(&theirs_p, k, cf),
            property_value(base, k, cf),
        ) else {
            return Err(match k.strip_prefix("cf:") {
                Some(name) => format!(
                    "fields.{k}: no custom field named {name} in Constant Contact's catalogue"
                ),
                None => format!("fields.{k} is not a property a PUT can write"),
            });
        };
        let ours_n = text(ours);
        if theirs == ours_n {
            continue; // already there (perhaps our own earlier write)
        }
        if theirs != was {
            conflicts.push(PutConflict {
                field: k.clone(),
                ours: ours.clone(),
                theirs,
            });
            continue;
        }
        sent.insert(k.clone(), ours.clone());
    }
    if sent.is_empty() {
        return Ok(PutPlan {
            body: None,
            sent,
            conflicts,
        });
    }
    let mut body = core_body(read, "Account");
    let mut touched = BTreeSet::new();
    for (k, v) in &sent {
        set_property(&mut body, read, k, v, cf, &mut touched)?;
    }
    Ok(PutPlan {
        body: Some(Value::Object(body)),
        sent,
        conflicts,
    })
}

/// The body of an application-side unsubscribe: the contact as read with
/// `permission_to_send = unsubscribed`, `update_source = Contact` (the contact is the one
/// asking) and the opt-out reason.
pub fn unsubscribe_body(read: &Value, reason: Option<&str>) -> Value {
    let mut body = core_body(read, "Contact");
    if let Some(Value::Object(e)) = body.get_mut("email_address") {
        e.insert("permission_to_send".into(), json!("unsubscribed"));
        match reason {
            Some(r) => e.insert("opt_out_reason".into(), json!(r)),
            None => e.remove("opt_out_reason"),
        };
    }
    Value::Object(body)
}

/// Every core field as read, `email_address` as read (address, permission, reason).
fn core_body(read: &Value, update_source: &str) -> Map<String, Value> {
    let mut body = Map::new();
    let mut email = Map::new();
    if let Some(e) = read.get("email_address") {
        for k in ["address", "permission_to_send", "opt_out_reason"] {
            if let Some(v) = e.get(k).filter(|v| !v.is_null()) {
                email.insert(k.into(), v.clone());
            }
        }
    }
    body.insert("email_address".into(), Value::Object(email));
    for k in CORE_SCALARS {
        if let Some(v) = read.get(*k).filter(|v| !v.is_null()) {
            body.insert(k.to_string(), v.clone());
        }
    }
    body.insert("update_source".into(), json!(update_source));
    body
}

/// A sub-resource array as read, reduced to what its PUT shape accepts.
fn array_as_read(read: &Value, key: &str, keep: &[&str]) -> Vec<Value> {
    read.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let o: Map<String, Value> = keep
                .iter()
                .filter_map(|k| {
                    e.get(*k)
                        .filter(|v| !v.is_null())
                        .map(|v| (k.to_string(), v.clone()))
                })
                .collect();
            Value::Object(o)
        })
        .collect()
}

fn set_property(
    body: &mut Map<String, Value>,
    read: &Value,
    k: &str,
    v: &Value,
    cf: &CustomFieldIds,
    touched: &mut BTreeSet<&'static str>,
) -> Result<(), String> {
    let clear = v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty());
    if CORE_SCALARS.contains(&k) {
        if clear {
            body.remove(k);
        } else {
            body.insert(k.to_string(), v.clone());
        }
        return Ok(());
    }
    let (key, keep): (&'static str, &[&str]) = if k.starts_with("cf:") {
        ("custom_fields", &["custom_field_id", "value"])
    } else if phone_kind(k).is_some() {
        ("phone_numbers", &["phone_number", "kind"])
    } else {
        (
            "street_addresses",
            &["kind", "street", "city", "state", "postal_code", "country"],
        )
    };
    if touched.insert(key) {
        body.insert(key.into(), Value::Array(array_as_read(read, key, keep)));
    }
    let Some(Value::Array(arr)) = body.get_mut(key) else {
        return Err(format!("fields.{k}: could not build {key}"));
    };
    if let Some(name) = k.strip_prefix("cf:") {
        let id = cf
            .get(name)
            .ok_or_else(|| {
                format!("fields.{k}: no custom field named {name} in Constant Contact's catalogue")
            })?
            .to_string();
        let at = arr
            .iter()
            .position(|e| e.get("custom_field_id").and_then(Value::as_str) == Some(id.as_str()));
        match (at, clear) {
            (Some(i), true) => {
                arr.remove(i);
            }
            (Some(i), false) => arr[i]["value"] = v.clone(),
            (None, true) => {}
            (None, false) if arr.len() >= 25 => {
                return Err(format!(
                    "fields.{k}: the contact already has 25 custom fields"
                ))
            }
            (None, false) => arr.push(json!({"custom_field_id": id, "value": v})),
        }
        return Ok(());
    }
    if let Some(kind) = phone_kind(k) {
        let at = arr
            .iter()
            .position(|e| e.get("kind").and_then(Value::as_str) == Some(kind));
        match (at, clear) {
            (Some(i), true) => {
                arr.remove(i);
            }
            (Some(i), false) => arr[i]["phone_number"] = v.clone(),
            (None, true) => {}
            (None, false) if arr.len() >= 3 => {
                return Err(format!(
                    "fields.{k}: the contact already has 3 phone numbers"
                ))
            }
            (None, false) => arr.push(json!({"phone_number": v, "kind": kind})),
        }
        return Ok(());
    }
    let Some((kind, field)) = address_part(k) else {
        return Err(format!("fields.{k} is not a property a PUT can write"));
    };
    let at = arr
        .iter()
        .position(|e| e.get("kind").and_then(Value::as_str) == Some(kind));
    let i = match at {
        Some(i) => i,
        None if clear => return Ok(()),
        None if arr.len() >= 3 => {
            return Err(format!(
                "fields.{k}: the contact already has 3 street addresses"
            ))
        }
        None => {
            arr.push(json!({"kind": kind}));
            arr.len() - 1
        }
    };
    if let Value::Object(o) = &mut arr[i] {
        if clear {
            o.remove(field);
        } else {
            o.insert(field.into(), v.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> Value {
        json!({
            "contact_id": "00000000-0000-0000-0000-000000000001",
            "email_address": {"address": "a@x.io", "permission_to_send": "implicit",
                              "created_at": "2026-01-01T00:00:00Z", "opt_out_reason": null},
            "first_name": "Ann", "last_name": "Lee", "job_title": "Clerk",
            "birthday_month": 3, "birthday_day": 9,
            "create_source": "Contact", "updated_at": "2026-01-01T00:00:00Z",
            "list_memberships": ["00000000-0000-0000-0000-000000000007"],
            "phone_numbers": [{"phone_number_id": "p1", "phone_number": "555", "kind": "home"}],
            "custom_fields": [{"custom_field_id": "00000000-0000-0000-0000-0000000000c1", "value": "42"}],
        })
    }

    fn cf() -> CustomFieldIds {
        HashMap::from([
            ("shoe".to_string(), Uuid::from_u128(0xc1)),
            ("hat".to_string(), Uuid::from_u128(0xc2)),
        ])
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_field_put_sends_the_contact_back_whole_with_only_that_field_changed() {
        let r = read();
        let base = primary_of(&r);
        let p = plan_fields(&r, &base, &fields(json!({"job_title": "Boss"})), &cf()).unwrap();
        let body = p.body.unwrap();
        assert_eq!(body["job_title"], "Boss");
        // Everything else exactly as read, permission included; no lists, no read-only parts.
        assert_eq!(body["first_name"], "Ann");
        assert_eq!(body["last_name"], "Lee");
        assert_eq!(body["birthday_month"], 3);
        assert_eq!(
            body["email_address"],
            json!({"address": "a@x.io", "permission_to_send": "implicit"})
        );
        assert_eq!(body["update_source"], "Account");
        for k in [
            "list_memberships",
            "phone_numbers",
            "custom_fields",
            "contact_id",
            "created_at",
        ] {
            assert!(body.get(k).is_none(), "{k} must not be sent");
        }
    }

    #[test]
    fn null_clears_a_scalar_a_phone_and_a_custom_field() {
        let r = read();
        let base = primary_of(&r);
        let f = fields(json!({"last_name": null, "home_phone": null, "cf:shoe": null}));
        let body = plan_fields(&r, &base, &f, &cf()).unwrap().body.unwrap();
        assert!(body.get("last_name").is_none());
        assert_eq!(body["phone_numbers"], json!([]));
        assert_eq!(body["custom_fields"], json!([]));
        assert_eq!(body["first_name"], "Ann");
    }

    #[test]
    fn a_custom_field_and_a_phone_are_set_by_entry_keeping_the_others() {
        let r = read();
        let base = primary_of(&r);
        let f = fields(json!({"cf:hat": "big", "cf:shoe": "43", "work_phone": "777"}));
        let body = plan_fields(&r, &base, &f, &cf()).unwrap().body.unwrap();
        let cfs = body["custom_fields"].as_array().unwrap();
        assert_eq!(cfs.len(), 2);
        assert!(cfs.contains(
            &json!({"custom_field_id": Uuid::from_u128(0xc1).to_string(), "value": "43"})
        ));
        assert_eq!(
            body["phone_numbers"],
            json!([{"phone_number": "555", "kind": "home"}, {"phone_number": "777", "kind": "work"}])
        );
    }

    #[test]
    fn constant_contact_wins_a_property_it_changed_since_the_store_copy() {
        let r = read();
        let mut base = primary_of(&r);
        base.scalars.insert("job_title".into(), json!("Intern"));
        let f = fields(json!({"job_title": "Boss", "first_name": "Anna"}));
        let p = plan_fields(&r, &base, &f, &cf()).unwrap();
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].field, "job_title");
        assert_eq!(p.conflicts[0].theirs, json!("Clerk"));
        let body = p.body.unwrap();
        assert_eq!(
            body["job_title"], "Clerk",
            "their value is sent back unchanged"
        );
        assert_eq!(body["first_name"], "Anna");
    }

    #[test]
    fn a_value_already_there_sends_nothing() {
        let r = read();
        let mut base = primary_of(&r);
        base.scalars.insert("job_title".into(), json!("Intern"));
        let p = plan_fields(&r, &base, &fields(json!({"job_title": "Clerk"})), &cf()).unwrap();
        assert_eq!(p.body, None);
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn street2_and_unknown_custom_fields_are_refused_with_a_reason() {
        let r = read();
        let base = primary_of(&r);
        let e = plan_fields(&r, &base, &fields(json!({"street2": "x"})), &cf()).unwrap_err();
        assert!(e.contains("street2"), "{e}");
        let e = plan_fields(&r, &base, &fields(json!({"cf:nope": "x"})), &cf()).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn an_unsubscribe_keeps_everything_and_changes_only_the_permission() {
        let b = unsubscribe_body(&read(), Some("asked by phone"));
        assert_eq!(b["email_address"]["permission_to_send"], "unsubscribed");
        assert_eq!(b["email_address"]["opt_out_reason"], "asked by phone");
        assert_eq!(b["update_source"], "Contact");
        assert_eq!(b["first_name"], "Ann");
        assert!(b.get("list_memberships").is_none());
        let b = unsubscribe_body(&read(), None);
        assert!(b["email_address"].get("opt_out_reason").is_none());
    }

    #[test]
    fn clearable_properties_are_all_but_street2() {
        assert!(clearable("first_name") && clearable("cf:x") && clearable("home_phone"));
        assert!(clearable("work_city") && clearable("zip"));
        assert!(!clearable("street2") && !clearable("home_street2") && !clearable("email"));
    }
}
