//! `PUT /v3/contacts/{contact_id}` (spec `ContactPutRequest` → 200 `ContactResource`).
//!
//! - Bodies are checked against the spec's PUT definitions strictly: an unknown property
//!   is a 400 naming it (`email_address` accepts the read-only `EmailAddressPut` fields
//!   and ignores them). `update_source` (`Contact`|`Account`) and
//!   `email_address.address` are required; string limits as the spec.
//! - Core fields are overwritten: the ones left out become null. Sub-resources
//!   (`custom_fields`, `phone_numbers`, `street_addresses`, `list_memberships`,
//!   `taggings`, `notes`) sent are replaced, left out are kept.
//! - `email_address.permission_to_send` is applied as sent, re-subscriptions included
//!   (recorded in the account's transition log); a change to `unsubscribed` sets
//!   `opt_out_source` = `update_source` and `opt_out_date` = now. A change of address or
//!   permission bumps `email_address.updated_at`. Another contact with the address → 409.
//! - A deleted contact is revived by `update_source` Account; Contact → 400.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::put;
use axum::{Extension, Router};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::import_engine::{check_lists, tick};
use super::pipeline::AuthCtx;
use super::respond::{bad_request, error_array, json, not_found};
use super::state::{
    parse_ts, Account, Contact, CustomFieldValue, Inner, Note, PhoneNumber, StreetAddress, Ts,
};

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new().route("/v3/contacts/{id}", put(put_contact))
}

const PERMISSIONS: &[&str] = &[
    "explicit",
    "implicit",
    "not_set",
    "pending_confirmation",
    "temp_hold",
    "unsubscribed",
];

/// A validated PUT body.
#[derive(Debug, Default)]
struct PutRequest {
    update_source: String,
    address: String,
    permission: Option<String>,
    opt_out_reason: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    job_title: Option<String>,
    company_name: Option<String>,
    anniversary: Option<String>,
    birthday: Option<(i64, i64)>,
    custom_fields: Option<Vec<CustomFieldValue>>,
    /// (kind, number)
    phone_numbers: Option<Vec<(String, String)>>,
    street_addresses: Option<Vec<StreetIn>>,
    list_memberships: Option<Vec<Uuid>>,
    taggings: Option<Vec<Uuid>>,
    notes: Option<Vec<NoteIn>>,
}

#[derive(Debug)]
struct NoteIn {
    note_id: Option<Uuid>,
    created_at: Option<Ts>,
    content: String,
}

#[derive(Debug)]
struct StreetIn {
    kind: String,
    street: Option<String>,
    city: Option<String>,
    state: Option<String>,
    postal_code: Option<String>,
    country: Option<String>,
}

fn only_keys(o: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: unknown property {k}")),
        None => Ok(()),
    }
}

/// Missing or null → None; a string at most `max` characters → Some.
fn opt_string(o: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(format!("{key} is longer than {max} characters")),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn opt_int(o: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be an integer")),
    }
}

/// Missing → None (kept); otherwise an array of at most `max` objects.
fn opt_array<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Option<&'a Vec<Value>>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) if a.len() <= max => Ok(Some(a)),
        Some(Value::Array(_)) => Err(format!("{key} accepts at most {max} items")),
        Some(_) => Err(format!("{key} must be an array")),
    }
}

fn uuid_array(o: &Map<String, Value>, key: &str, max: usize) -> Result<Option<Vec<Uuid>>, String> {
    let Some(arr) = opt_array(o, key, max)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(arr.len());
    for v in arr {
        let id = v
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| format!("{key} must contain UUID strings"))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(Some(out))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be an object"))
}

fn valid_address(a: &str) -> bool {
    match a.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !a.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn parse(body: &[u8]) -> Result<PutRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("Malformed JSON: {e}"))?;
    let o = object(&v, "The body")?;
    only_keys(
        o,
        &[
            "email_address",
            "first_name",
            "last_name",
            "job_title",
            "company_name",
            "birthday_month",
            "birthday_day",
            "anniversary",
            "update_source",
            "custom_fields",
            "phone_numbers",
            "street_addresses",
            "list_memberships",
            "taggings",
            "notes",
            "sms_channel",
        ],
        "ContactPutRequest",
    )?;
    if o.contains_key("sms_channel") {
        return Err("sms_channel is not supported by the sandbox".into());
    }
    let mut r = PutRequest {
        update_source: match o.get("update_source").and_then(Value::as_str) {
            Some(s @ ("Contact" | "Account")) => s.to_string(),
            Some(other) => {
                return Err(format!(
                    "update_source must be Contact or Account, not {other}"
                ))
            }
            None => return Err("update_source is required".into()),
        },
        ..Default::default()
    };
    let Some(email) = o.get("email_address") else {
        return Err("email_address.address is required".into());
    };
    let e = object(email, "email_address")?;
    only_keys(
        e,
        &[
            "address",
            "permission_to_send",
            "created_at",
            "updated_at",
            "opt_in_date",
            "opt_out_source",
            "opt_out_date",
            "opt_out_reason",
            "confirm_status",
        ],
        "email_address",
    )?;
    r.address = match opt_string(e, "address", 80)? {
        Some(a) if valid_address(a.trim()) => a.trim().to_string(),
        Some(a) => return Err(format!("email_address.address is not valid: {a}")),
        None => return Err("email_address.address is required".into()),
    };
    r.permission = match opt_string(e, "permission_to_send", 50)? {
        Some(p) if PERMISSIONS.contains(&p.as_str()) => Some(p),
        Some(p) => return Err(format!("Invalid permission_to_send: {p}")),
        None => None,
    };
    r.opt_out_reason = opt_string(e, "opt_out_reason", 255)?;
    r.first_name = opt_string(o, "first_name", 50)?;
    r.last_name = opt_string(o, "last_name", 50)?;
    r.job_title = opt_string(o, "job_title", 50)?;
    r.company_name = opt_string(o, "company_name", 50)?;
    r.anniversary = opt_string(o, "anniversary", 10)?;
    r.birthday = match (opt_int(o, "birthday_month")?, opt_int(o, "birthday_day")?) {
        (None, None) => None,
        (Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d) => Some((m, d)),
        _ => return Err("birthday_month (1-12) and birthday_day (1-31) go together".into()),
    };
    if let Some(arr) = opt_array(o, "custom_fields", 25)? {
        let mut out = Vec::with_capacity(arr.len());
        for v in arr {
            let f = object(v, "custom_fields[]")?;
            only_keys(
                f,
                &["custom_field_id", "value", "choice_ids"],
                "custom_fields[]",
            )?;
            let id = f
                .get("custom_field_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or("custom_fields[].custom_field_id is required (a UUID)")?;
            out.push(CustomFieldValue {
                custom_field_id: id,
                value: opt_string(f, "value", 255)?,
            });
        }
        r.custom_fields = Some(out);
    }
    if let Some(arr) = opt_array(o, "phone_numbers", 3)? {
        let mut out = Vec::with_capacity(arr.len());
        for v in arr {
            let p = object(v, "phone_numbers[]")?;
            only_keys(p, &["phone_number", "kind"], "phone_numbers[]")?;
            let number = opt_string(p, "phone_number", 25)?
                .ok_or("phone_numbers[].phone_number is required")?;
            let kind = match opt_string(p, "kind", 10)? {
                Some(k) if matches!(k.as_str(), "home" | "work" | "mobile" | "other") => k,
                None => "other".to_string(),
                Some(k) => return Err(format!("Invalid phone_numbers[].kind: {k}")),
            };
            out.push((kind, number));
        }
        r.phone_numbers = Some(out);
    }
    if let Some(arr) = opt_array(o, "street_addresses", 3)? {
        let mut out = Vec::with_capacity(arr.len());
        for v in arr {
            let a = object(v, "street_addresses[]")?;
            only_keys(
                a,
                &["kind", "street", "city", "state", "postal_code", "country"],
                "street_addresses[]",
            )?;
            let kind = match opt_string(a, "kind", 10)? {
                Some(k) if matches!(k.as_str(), "home" | "work" | "other") => k,
                Some(k) => return Err(format!("Invalid street_addresses[].kind: {k}")),
                None => return Err("street_addresses[].kind is required".into()),
            };
            out.push(StreetIn {
                kind,
                street: opt_string(a, "street", 255)?,
                city: opt_string(a, "city", 50)?,
                state: opt_string(a, "state", 50)?,
                postal_code: opt_string(a, "postal_code", 50)?,
                country: opt_string(a, "country", 50)?,
            });
        }
        r.street_addresses = Some(out);
    }
    r.list_memberships = uuid_array(o, "list_memberships", 50)?;
    r.taggings = uuid_array(o, "taggings", 50)?;
    if let Some(arr) = opt_array(o, "notes", 150)? {
        let mut out = Vec::with_capacity(arr.len());
        for v in arr {
            let n = object(v, "notes[]")?;
            only_keys(n, &["note_id", "created_at", "content"], "notes[]")?;
            let id = match n.get("note_id") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .ok_or("notes[].note_id must be a UUID")?,
                ),
            };
            let created = match n.get("created_at") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_str()
                        .and_then(parse_ts)
                        .ok_or("notes[].created_at must be a date-time")?,
                ),
            };
            let content = opt_string(n, "content", 2000)?.unwrap_or_default();
            out.push(NoteIn {
                note_id: id,
                created_at: created,
                content,
            });
        }
        r.notes = Some(out);
    }
    Ok(r)
}

/// Why a PUT was refused once the body was valid.
#[derive(Debug)]
enum Refusal {
    NotFound,
    BadRequest(String),
    Conflict(String),
}

/// Applies a validated PUT to the stored contact; returns the new record.
fn apply(a: &mut Account, id: Uuid, r: PutRequest, now: Ts) -> Result<Arc<Contact>, Refusal> {
    let old = a.contacts.get(&id).ok_or(Refusal::NotFound)?;
    if old.is_deleted() && r.update_source != "Account" {
        return Err(Refusal::BadRequest(
            "A deleted contact can only be revived by a PUT with update_source Account".into(),
        ));
    }
    let mut c: Contact = (*old.c).clone();
    let key = r.address.to_lowercase();
    if a.by_email.get(&key).is_some_and(|other| *other != id) {
        return Err(Refusal::Conflict(format!(
            "Another contact already has the email address {}",
            r.address
        )));
    }
    if let Some(cfs) = &r.custom_fields {
        for f in cfs {
            if !a
                .custom_fields
                .iter()
                .any(|d| d.custom_field_id == f.custom_field_id)
            {
                return Err(Refusal::BadRequest(format!(
                    "Custom field {} does not exist",
                    f.custom_field_id
                )));
            }
        }
    }
    if let Some(lists) = &r.list_memberships {
        check_lists(a, lists).map_err(Refusal::BadRequest)?;
    }

    let e = &mut c.core.email_address;
    let mut email_changed = e.address != r.address;
    e.address = r.address;
    if let Some(p) = r.permission {
        if p != e.permission_to_send {
            if p == "unsubscribed" {
                e.opt_out_source = Some(r.update_source.clone());
                e.opt_out_date = Some(now);
            } else if e.permission_to_send == "unsubscribed" {
                e.opt_out_source = None;
                e.opt_out_date = None;
                e.opt_in_date = Some(now);
            }
            e.permission_to_send = p;
            email_changed = true;
        }
    }
    e.opt_out_reason = r.opt_out_reason;
    if email_changed {
        e.updated_at = now;
    }

    let core = &mut c.core;
    core.first_name = r.first_name;
    core.last_name = r.last_name;
    core.job_title = r.job_title;
    core.company_name = r.company_name;
    core.anniversary = r.anniversary;
    core.birthday_month = r.birthday.map(|b| b.0);
    core.birthday_day = r.birthday.map(|b| b.1);
    core.update_source = r.update_source.clone();
    core.updated_at = now;
    core.deleted_at = None;

    let subs = &mut c.subs;
    if let Some(cfs) = r.custom_fields {
        subs.custom_fields = cfs;
    }
    if let Some(phones) = r.phone_numbers {
        let old = std::mem::take(&mut subs.phone_numbers);
        subs.phone_numbers = phones
            .into_iter()
            .map(|(kind, number)| {
                // Same kind and number: the same sub-resource (id and creation kept).
                let same = old
                    .iter()
                    .find(|p| p.kind == kind && p.phone_number == number);
                PhoneNumber {
                    phone_number_id: same.map_or_else(Uuid::new_v4, |p| p.phone_number_id),
                    phone_number: number,
                    kind,
                    created_at: same.map_or(now, |p| p.created_at),
                    updated_at: now,
                    update_source: r.update_source.clone(),
                    create_source: same
                        .map_or_else(|| r.update_source.clone(), |p| p.create_source.clone()),
                }
            })
            .collect();
    }
    if let Some(addrs) = r.street_addresses {
        let old = std::mem::take(&mut subs.street_addresses);
        subs.street_addresses = addrs
            .into_iter()
            .map(|s| {
                let same = old.iter().find(|a| a.kind == s.kind);
                StreetAddress {
                    street_address_id: same.map_or_else(Uuid::new_v4, |a| a.street_address_id),
                    kind: s.kind,
                    street: s.street,
                    city: s.city,
                    state: s.state,
                    postal_code: s.postal_code,
                    country: s.country,
                    created_at: same.map_or(now, |a| a.created_at),
                    updated_at: now,
                }
            })
            .collect();
    }
    if let Some(lists) = r.list_memberships {
        subs.list_memberships = lists;
    }
    if let Some(tags) = r.taggings {
        subs.taggings = tags;
    }
    if let Some(notes) = r.notes {
        subs.notes = notes
            .into_iter()
            .map(|n| Note {
                note_id: n.note_id.unwrap_or_else(Uuid::new_v4),
                created_at: n.created_at.unwrap_or(now),
                content: n.content,
            })
            .collect();
    }
    a.replace_contact(c);
    a.contacts
        .get(&id)
        .map(|s| Arc::clone(&s.c))
        .ok_or(Refusal::NotFound)
}

pub(crate) async fn put_contact(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let r = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&e),
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return not_found("Contact not found");
    };
    let result = {
        let mut st = inner.lock();
        tick(&inner, &mut st, &auth.account);
        let now = st.now();
        apply(st.account_mut(&auth.account), id, r, now)
    };
    match result {
        Ok(c) => json(StatusCode::OK, &*c),
        Err(Refusal::NotFound) => not_found("Contact not found"),
        Err(Refusal::BadRequest(m)) => bad_request(&m),
        Err(Refusal::Conflict(m)) => error_array(StatusCode::CONFLICT, "conflict", &m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator;
    use serde_json::json;

    fn body(v: Value) -> PutRequest {
        match parse(v.to_string().as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    fn refused(v: Value) -> String {
        match parse(v.to_string().as_bytes()) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn required_fields_limits_and_unknown_properties() {
        let ok = json!({"update_source": "Account", "email_address": {"address": "a@x.com"}});
        body(ok.clone());
        assert!(refused(json!({"email_address": {"address": "a@x.com"}})).contains("update_source"));
        assert!(
            refused(json!({"update_source": "Me", "email_address": {"address": "a@x.com"}}))
                .contains("update_source")
        );
        assert!(refused(json!({"update_source": "Account"})).contains("email_address.address"));
        assert!(
            refused(json!({"update_source": "Account", "email_address": {}}))
                .contains("email_address.address")
        );
        for (k, max) in [
            ("first_name", 50),
            ("last_name", 50),
            ("job_title", 50),
            ("company_name", 50),
            ("anniversary", 10),
        ] {
            let mut v = ok.clone();
            v[k] = json!("x".repeat(max));
            body(v.clone());
            v[k] = json!("x".repeat(max + 1));
            assert!(refused(v).contains(k), "{k}");
        }
        let mut v = ok.clone();
        v["contact_id"] = json!(Uuid::new_v4());
        assert!(refused(v).contains("contact_id"));
        let mut v = ok.clone();
        v["birthday_month"] = json!(3);
        assert!(refused(v).contains("birthday"));
        // Up to 50 lists (not the spec's maxItems elsewhere): 50 pass, 51 do not.
        let mut v = ok;
        let ids: Vec<Uuid> = (0..51).map(|_| Uuid::new_v4()).collect();
        v["list_memberships"] = json!(ids[..50]);
        body(v.clone());
        v["list_memberships"] = json!(ids);
        assert!(refused(v).contains("list_memberships"));
    }

    #[test]
    fn overwrite_keeps_left_out_sub_resources_and_logs_resubscriptions() {
        let now = chrono::Utc::now();
        let mut a = Account::default();
        generator::generate(&mut a, 5, 2, 1, now);
        let id = *a.contacts.keys().next().expect("a contact");
        let before = (*a.contacts[&id].c).clone();
        let addr = before.core.email_address.address.clone();
        let r = body(json!({
            "update_source": "Contact",
            "email_address": {"address": addr, "permission_to_send": "unsubscribed"},
            "first_name": "Only",
            "taggings": [],
        }));
        let c = apply(&mut a, id, r, now).expect("applied");
        assert_eq!(c.core.first_name.as_deref(), Some("Only"));
        assert_eq!(c.core.last_name, None);
        assert_eq!(
            c.core.email_address.opt_out_source.as_deref(),
            Some("Contact")
        );
        assert_eq!(c.core.email_address.opt_out_date, Some(now));
        assert_eq!(c.subs.list_memberships, before.subs.list_memberships);
        assert_eq!(c.subs.custom_fields.len(), before.subs.custom_fields.len());
        assert!(c.subs.taggings.is_empty());
        assert!(a.transitions.resubscriptions.is_empty());
        let later = now + chrono::Duration::seconds(1);
        let r = body(json!({
            "update_source": "Account",
            "email_address": {"address": addr, "permission_to_send": "implicit"},
        }));
        let c = apply(&mut a, id, r, later).expect("applied");
        assert_eq!(c.core.email_address.opt_out_source, None);
        assert_eq!(a.transitions.resubscriptions, vec![(id, later)]);
    }

    #[test]
    fn a_list_added_back_after_the_subscriber_left_it_is_logged_unless_they_rejoin() {
        let now = chrono::Utc::now();
        let mut a = Account::default();
        generator::generate(&mut a, 5, 2, 1, now);
        let lists: Vec<Uuid> = a.lists.keys().copied().collect();
        let id = *a.contacts.keys().next().expect("a contact");
        let addr = a.contacts[&id].core.email_address.address.clone();
        for l in &lists {
            crate::subscriber::join_list(&mut a, id, *l, now);
        }
        crate::subscriber::leave_list(&mut a, id, lists[0], now);
        crate::subscriber::leave_list(&mut a, id, lists[1], now);
        crate::subscriber::join_list(&mut a, id, lists[1], now);
        assert!(a.transitions.readds.is_empty(), "a re-join is not a re-add");
        let r = body(json!({
            "update_source": "Account",
            "email_address": {"address": addr},
            "list_memberships": lists,
        }));
        apply(&mut a, id, r, now).expect("applied");
        assert_eq!(a.transitions.readds, vec![(id, lists[0])]);
    }
}
