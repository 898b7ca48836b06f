//! Bulk activities: `POST /v3/activities/contacts_json_import`,
//! `POST /v3/activities/add_list_memberships`, `POST /v3/activities/remove_list_memberships`,
//! `GET /v3/activities/{id}`, `GET /v3/activities`.
//!
//! Activities are processed lazily: whenever the account is touched (any API request or
//! `AccountCtl` call), activities whose due time has passed move `initialized` →
//! `processing` (after half of `import_processing`) → terminal (after `import_processing`),
//! and their effect is applied at that moment.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::contacts::parse_limit;
use super::cursor;
use super::pipeline::AuthCtx;
use super::respond::{self, bad_request, error_array, json};
use super::state::{
    fmt_ts, Account, Contact, ContactCore, ContactSubs, CustomFieldValue, EmailAddress, Inner,
    PhoneNumber, State, StreetAddress, Ts,
};

/// Only the first 4,000,000 bytes of an import body count.
pub(crate) const IMPORT_MAX_BYTES: usize = 4_000_000;
pub(crate) const IMPORT_MAX_ITEMS: usize = 40_000;
/// More non-terminal activities than this per account → 429.
pub(crate) const MAX_QUEUED: usize = 1_000;
/// Activity statuses are kept 10 days.
const RETENTION_DAYS: i64 = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Import,
    AddMembers,
    RemoveMembers,
}

#[derive(Debug)]
pub(crate) enum Source {
    ContactIds(Vec<Uuid>),
    ListIds(Vec<Uuid>),
    AllActive,
}

#[derive(Debug)]
pub(crate) enum Job {
    Import {
        items: Vec<Map<String, Value>>,
        list_ids: Vec<Uuid>,
    },
    Members {
        source: Source,
        exclude: HashSet<Uuid>,
        list_ids: Vec<Uuid>,
    },
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    items_total_count: u64,
    items_completed_count: u64,
    person_count: u64,
    error_count: u64,
    correctable_count: u64,
    cannot_add_to_list_count: u64,
    list_count: u64,
}

#[derive(Debug)]
pub(crate) struct ActivityRec {
    id: Uuid,
    kind: Kind,
    state: String,
    created_at: Ts,
    started_at: Option<Ts>,
    completed_at: Option<Ts>,
    updated_at: Ts,
    percent_done: u8,
    errors: Vec<String>,
    counters: Counters,
    processing_at: Instant,
    done_at: Instant,
    job: Option<Job>,
    forced: Option<(String, Vec<String>)>,
}

impl ActivityRec {
    fn terminal(&self) -> bool {
        !matches!(self.state.as_str(), "initialized" | "processing")
    }
}

/// Response shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `ActivityImport` (201 of contacts_json_import)
    Import,
    /// `ActivityListsMembership` (201 of add/remove_list_memberships)
    Membership,
    /// `Activity` (GET)
    Activity,
}

fn to_json(a: &ActivityRec, shape: Shape) -> Value {
    let mut o = Map::new();
    o.insert("activity_id".into(), json!(a.id));
    o.insert("state".into(), json!(a.state));
    o.insert(
        "created_at".into(),
        json!(fmt_ts(&a.created_at).to_string()),
    );
    o.insert(
        "updated_at".into(),
        json!(fmt_ts(&a.updated_at).to_string()),
    );
    if let Some(t) = &a.started_at {
        o.insert("started_at".into(), json!(fmt_ts(t).to_string()));
    }
    if let Some(t) = &a.completed_at {
        o.insert("completed_at".into(), json!(fmt_ts(t).to_string()));
    }
    o.insert("percent_done".into(), json!(a.percent_done));
    o.insert("activity_errors".into(), json!(a.errors));
    let c = &a.counters;
    let mut s = Map::new();
    s.insert("items_total_count".into(), json!(c.items_total_count));
    if shape != Shape::Import {
        s.insert(
            "items_completed_count".into(),
            json!(c.items_completed_count),
        );
    }
    match a.kind {
        Kind::Import => {
            if shape != Shape::Membership {
                s.insert("person_count".into(), json!(c.person_count));
                s.insert("error_count".into(), json!(c.error_count));
                s.insert("correctable_count".into(), json!(c.correctable_count));
                s.insert(
                    "cannot_add_to_list_count".into(),
                    json!(c.cannot_add_to_list_count),
                );
            }
        }
        Kind::AddMembers | Kind::RemoveMembers => {
            if shape != Shape::Import {
                s.insert("list_count".into(), json!(c.list_count));
            }
        }
    }
    o.insert("status".into(), Value::Object(s));
    o.insert(
        "_links".into(),
        json!({"self": {"href": format!("/v3/activities/{}", a.id)}}),
    );
    Value::Object(o)
}

fn expired(a: &ActivityRec, now: Ts) -> bool {
    a.created_at + chrono::Duration::days(RETENTION_DAYS) < now
}

pub(crate) fn activity_json(acct: &Account, id: Uuid) -> Option<Value> {
    acct.activities
        .get(&id)
        .map(|a| to_json(a, Shape::Activity))
}

/// Advances the account's activities whose due time has passed.
pub(crate) fn tick(_inner: &Inner, st: &mut State, account: &str) {
    let now = st.now();
    let Some(acct) = st.accounts.get_mut(account) else {
        return;
    };
    let instant = Instant::now();
    let due: Vec<Uuid> = acct
        .activities
        .values()
        .filter(|a| !a.terminal() && a.processing_at <= instant)
        .map(|a| a.id)
        .collect();
    for id in due {
        let finish = {
            let Some(a) = acct.activities.get_mut(&id) else {
                continue;
            };
            if a.state == "initialized" {
                a.state = "processing".into();
                a.started_at = Some(now);
                a.updated_at = now;
                a.percent_done = 50;
            }
            a.done_at <= instant
        };
        if finish {
            complete(acct, id, now);
        }
    }
}

fn complete(acct: &mut Account, id: Uuid, now: Ts) {
    let Some(a) = acct.activities.get_mut(&id) else {
        return;
    };
    let job = a.job.take();
    let forced = a.forced.take();
    let mut counters = a.counters.clone();
    let (state, mut errors) = match forced {
        Some((state, errors)) => (state, errors),
        None => {
            let mut errors = Vec::new();
            match job {
                Some(Job::Import { items, list_ids }) => {
                    apply_import(acct, &items, &list_ids, now, &mut counters, &mut errors)
                }
                Some(Job::Members {
                    source,
                    exclude,
                    list_ids,
                }) => {
                    let kind = acct.activities.get(&id).map(|a| a.kind);
                    apply_members(
                        acct,
                        kind == Some(Kind::AddMembers),
                        &source,
                        &exclude,
                        &list_ids,
                        now,
                        &mut counters,
                        &mut errors,
                    )
                }
                None => {}
            }
            ("completed".to_string(), errors)
        }
    };
    let Some(a) = acct.activities.get_mut(&id) else {
        return;
    };
    if state == "completed" {
        counters.items_completed_count = counters.items_total_count;
        a.percent_done = 100;
    }
    a.counters = counters;
    a.errors.append(&mut errors);
    a.state = state;
    a.completed_at = Some(now);
    a.updated_at = now;
}

// ---------------------------------------------------------------- import

/// String properties of `JsonImportContact` (besides `email`) and their max lengths.
const STRING_FIELDS: &[(&str, usize)] = &[
    ("first_name", 50),
    ("last_name", 50),
    ("job_title", 50),
    ("company_name", 50),
    ("anniversary", 10),
    ("phone", 50),
    ("home_phone", 50),
    ("work_phone", 50),
    ("mobile_phone", 50),
    ("other_phone", 50),
    ("street", 255),
    ("street2", 255),
    ("city", 50),
    ("state", 50),
    ("zip", 50),
    ("country", 50),
    ("home_street", 255),
    ("home_street2", 255),
    ("home_city", 50),
    ("home_state", 50),
    ("home_zip", 50),
    ("home_country", 50),
    ("home country", 50),
    ("work_street", 255),
    ("work_street2", 255),
    ("work_city", 50),
    ("work_state", 50),
    ("work_zip", 50),
    ("work_country", 50),
    ("other_street", 255),
    ("other_street2", 255),
    ("other_city", 50),
    ("other_state", 50),
    ("other_zip", 50),
    ("other_country", 50),
    ("sms_number", 16),
    ("sms_consent_date", 16),
];

/// Email addresses longer than this are a correctable row error (the contact resource
/// allows 80; the import schema says 50; which one CC enforces is unconfirmed).
const EMAIL_MAX: usize = 80;

fn valid_email(e: &str) -> bool {
    let e = e.trim();
    if e.len() > EMAIL_MAX || e.contains(char::is_whitespace) {
        return false;
    }
    match e.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

/// Number of `import_data` items that are complete (closing `}`) within the first
/// `limit` bytes of the raw body.
fn items_within(body: &[u8], limit: usize) -> usize {
    let mut depth = 0i32;
    let (mut in_str, mut esc) = (false, false);
    let mut str_start = 0usize;
    let mut last_str: &[u8] = b"";
    let mut key_is_import = false;
    let mut in_import = false;
    let mut count = 0usize;
    for (i, &b) in body.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
                if depth == 1 {
                    last_str = &body[str_start..i];
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                str_start = i + 1;
            }
            b':' if depth == 1 => key_is_import = last_str == b"import_data",
            b',' if depth == 1 => key_is_import = false,
            b'[' | b'{' => {
                if depth == 1 && b == b'[' && key_is_import {
                    in_import = true;
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth -= 1;
                if in_import && depth == 2 && b == b'}' {
                    if i < limit {
                        count += 1;
                    } else {
                        return count;
                    }
                }
                if in_import && depth == 1 {
                    return count;
                }
            }
            _ => {}
        }
    }
    count
}

fn parse_uuid_list(v: Option<&Value>, name: &str) -> Result<Vec<Uuid>, String> {
    let Some(v) = v else {
        return Err(format!("{name} is required"));
    };
    let arr = v
        .as_array()
        .ok_or_else(|| format!("{name} must be an array"))?;
    let mut out = Vec::with_capacity(arr.len());
    for x in arr {
        let s = x
            .as_str()
            .ok_or_else(|| format!("{name} must contain UUID strings"))?;
        let id = Uuid::parse_str(s).map_err(|_| format!("{name}: invalid id {s}"))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn check_lists(acct: &Account, ids: &[Uuid]) -> Result<(), String> {
    for id in ids {
        match acct.lists.get(id) {
            Some(l) if l.deleted_at.is_none() => {}
            _ => return Err(format!("List {id} does not exist")),
        }
    }
    Ok(())
}

fn validate_item(i: usize, v: &Value) -> Result<Map<String, Value>, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("import_data[{i}] must be an object"))?;
    let has_email = o.get("email").is_some_and(Value::is_string);
    let has_sms = o.get("sms_number").is_some_and(Value::is_string);
    if !has_email && !has_sms {
        return Err(format!("import_data[{i}] needs an email or an sms_number"));
    }
    for (k, val) in o {
        let string_field =
            k == "email" || k.starts_with("cf:") || STRING_FIELDS.iter().any(|(n, _)| n == k);
        if string_field && !val.is_string() {
            return Err(format!("import_data[{i}].{k} must be a string"));
        }
        if (k == "birthday_month" || k == "birthday_day") && !(val.is_i64() || val.is_u64()) {
            return Err(format!("import_data[{i}].{k} must be an integer"));
        }
    }
    Ok(o.clone())
}

fn queued(acct: &Account) -> usize {
    acct.activities.values().filter(|a| !a.terminal()).count()
}

fn too_many_queued() -> Response {
    error_array(
        StatusCode::TOO_MANY_REQUESTS,
        "activities.queue_full",
        "Too many requests. You exceeded 1,000 queued activities for this user account.",
    )
}

fn new_rec(st: &State, kind: Kind, job: Job) -> ActivityRec {
    let now = st.now();
    let start = Instant::now();
    ActivityRec {
        id: Uuid::new_v4(),
        kind,
        state: "initialized".into(),
        created_at: now,
        started_at: None,
        completed_at: None,
        updated_at: now,
        percent_done: 0,
        errors: Vec::new(),
        counters: Counters::default(),
        processing_at: start + st.import_processing / 2,
        done_at: start + st.import_processing,
        job: Some(job),
        forced: None,
    }
}

pub(crate) async fn contacts_json_import(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Malformed JSON: {e}")),
    };
    let Some(obj) = parsed.as_object() else {
        return bad_request("The body must be a JSON object");
    };
    let Some(data) = obj.get("import_data").and_then(Value::as_array) else {
        return bad_request("import_data is required and must be an array");
    };
    if data.is_empty() {
        return bad_request("import_data must not be empty");
    }
    let list_ids = match parse_uuid_list(obj.get("list_ids"), "list_ids") {
        Ok(l) => l,
        Err(e) => return bad_request(&e),
    };
    if list_ids.is_empty() || list_ids.len() > 50 {
        return bad_request("list_ids must contain 1 to 50 list ids");
    }
    if let Some(p) = obj.get("sms_permission_to_send") {
        if !matches!(p.as_str(), Some("explicit" | "not_set")) {
            return bad_request("sms_permission_to_send must be explicit or not_set");
        }
    }
    let keep = if body.len() > IMPORT_MAX_BYTES {
        items_within(&body, IMPORT_MAX_BYTES)
    } else {
        data.len()
    };
    if keep > IMPORT_MAX_ITEMS {
        return bad_request("import_data accepts at most 40,000 contacts");
    }
    if keep == 0 {
        return bad_request("No complete import_data item within the first 4,000,000 bytes");
    }
    let mut items = Vec::with_capacity(keep);
    for (i, v) in data.iter().take(keep).enumerate() {
        match validate_item(i, v) {
            Ok(o) => items.push(o),
            Err(e) => return bad_request(&e),
        }
    }
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    {
        let acct = st.account_mut(&auth.account);
        if let Err(e) = check_lists(acct, &list_ids) {
            return bad_request(&e);
        }
        if queued(acct) >= MAX_QUEUED {
            return too_many_queued();
        }
    }
    let outcome = super::faults::take_activity_outcome(&mut st);
    let mut rec = new_rec(&st, Kind::Import, Job::Import { items, list_ids });
    rec.counters.items_total_count = keep as u64;
    rec.forced = outcome;
    let out = to_json(&rec, Shape::Import);
    let acct = st.account_mut(&auth.account);
    acct.imports.push(parsed);
    acct.activity_order.push(rec.id);
    acct.activities.insert(rec.id, rec);
    drop(st);
    json(StatusCode::CREATED, &out)
}

fn opt_str<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Row-level checks: `Err` = correctable error message.
fn check_row(o: &Map<String, Value>) -> Result<(), String> {
    if let Some(e) = o.get("email").and_then(Value::as_str) {
        if !valid_email(e) {
            return Err(format!("invalid email address '{e}'"));
        }
    }
    for (k, max) in STRING_FIELDS {
        if let Some(s) = o.get(*k).and_then(Value::as_str) {
            if s.chars().count() > *max {
                return Err(format!("{k} is longer than {max} characters"));
            }
        }
    }
    for (k, v) in o {
        if k.starts_with("cf:") && v.as_str().is_some_and(|s| s.chars().count() > 255) {
            return Err(format!("{k} is longer than 255 characters"));
        }
    }
    let m = o.get("birthday_month").and_then(Value::as_i64);
    let d = o.get("birthday_day").and_then(Value::as_i64);
    match (m, d) {
        (None, None) => {}
        (Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d) => {}
        _ => return Err("birthday_month and birthday_day must both be valid".into()),
    }
    Ok(())
}

fn apply_import(
    acct: &mut Account,
    items: &[Map<String, Value>],
    list_ids: &[Uuid],
    now: Ts,
    counters: &mut Counters,
    errors: &mut Vec<String>,
) {
    for (row, o) in items.iter().enumerate() {
        let row = row + 1;
        let Some(email) = o.get("email").and_then(Value::as_str).map(str::trim) else {
            counters.error_count += 1;
            errors.push(format!(
                "Row {row}: SMS-only contacts are not supported by the sandbox"
            ));
            continue;
        };
        if let Err(e) = check_row(o) {
            counters.correctable_count += 1;
            errors.push(format!("Row {row}: {e}"));
            continue;
        }
        let key = email.to_lowercase();
        let id = match acct.by_email.get(&key).copied() {
            Some(id) => id,
            None => {
                let id = Uuid::new_v4();
                acct.insert_contact(new_import_contact(id, email, now));
                id
            }
        };
        let cf_defs: Vec<(String, Uuid)> = acct
            .custom_fields
            .iter()
            .map(|c| (c.name.clone(), c.custom_field_id))
            .collect();
        let Some(mut c) = acct.contact_mut(&id) else {
            continue;
        };
        // Importing a deleted contact revives it (its old memberships stay gone).
        c.core.deleted_at = None;
        apply_properties(&mut c, o, &cf_defs, now, row, errors);
        c.core.updated_at = now;
        c.core.update_source = "Account".into();
        counters.person_count += 1;
        if c.core.email_address.permission_to_send == "unsubscribed" {
            counters.cannot_add_to_list_count += 1;
            continue;
        }
        for l in list_ids {
            if c.subs.list_memberships.contains(l) {
                continue;
            }
            if c.subs.list_memberships.len() >= 50 {
                errors.push(format!("Row {row}: contact is already on 50 lists"));
                break;
            }
            c.subs.list_memberships.push(*l);
        }
    }
}

fn new_import_contact(id: Uuid, email: &str, now: Ts) -> Contact {
    Contact {
        core: ContactCore {
            contact_id: id,
            email_address: EmailAddress {
                address: email.to_string(),
                permission_to_send: "implicit".into(),
                created_at: now,
                updated_at: now,
                opt_in_source: Some("Account".into()),
                opt_in_date: Some(now),
                opt_out_source: None,
                opt_out_date: None,
                opt_out_reason: None,
                confirm_status: "off".into(),
            },
            first_name: None,
            last_name: None,
            job_title: None,
            company_name: None,
            birthday_month: None,
            birthday_day: None,
            anniversary: None,
            create_source: "Account".into(),
            update_source: "Account".into(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
        },
        subs: ContactSubs::default(),
    }
}

/// Only the properties present (and non-empty) in the item change.
fn apply_properties(
    c: &mut Contact,
    o: &Map<String, Value>,
    cf_defs: &[(String, Uuid)],
    now: Ts,
    row: usize,
    errors: &mut Vec<String>,
) {
    let core = &mut c.core;
    for (k, slot) in [
        ("first_name", &mut core.first_name),
        ("last_name", &mut core.last_name),
        ("job_title", &mut core.job_title),
        ("company_name", &mut core.company_name),
        ("anniversary", &mut core.anniversary),
    ] {
        if let Some(v) = opt_str(o, k) {
            *slot = Some(v.to_string());
        }
    }
    if let (Some(m), Some(d)) = (
        o.get("birthday_month").and_then(Value::as_i64),
        o.get("birthday_day").and_then(Value::as_i64),
    ) {
        core.birthday_month = Some(m);
        core.birthday_day = Some(d);
    }
    for (k, kind) in [
        ("phone", "other"),
        ("home_phone", "home"),
        ("work_phone", "work"),
        ("mobile_phone", "mobile"),
        ("other_phone", "other"),
    ] {
        let Some(num) = opt_str(o, k) else { continue };
        let phones = &mut c.subs.phone_numbers;
        if let Some(p) = phones.iter_mut().find(|p| p.kind == kind) {
            p.phone_number = num.to_string();
            p.updated_at = now;
            p.update_source = "Account".into();
        } else if phones.len() < 3 {
            phones.push(PhoneNumber {
                phone_number_id: Uuid::new_v4(),
                phone_number: num.to_string(),
                kind: kind.into(),
                created_at: now,
                updated_at: now,
                update_source: "Account".into(),
                create_source: "Account".into(),
            });
        } else {
            errors.push(format!("Row {row}: at most 3 phone numbers per contact"));
        }
    }
    for (prefix, kind) in [
        ("", "home"),
        ("home_", "home"),
        ("work_", "work"),
        ("other_", "other"),
    ] {
        let get = |f: &str| opt_str(o, &format!("{prefix}{f}"));
        let country = get("country").or_else(|| {
            if prefix == "home_" {
                opt_str(o, "home country")
            } else {
                None
            }
        });
        let street = match (get("street"), get("street2")) {
            (Some(a), Some(b)) => Some(format!("{a} {b}")),
            (Some(a), None) => Some(a.to_string()),
            (None, Some(b)) => Some(b.to_string()),
            (None, None) => None,
        };
        let (city, state, zip) = (get("city"), get("state"), get("zip"));
        if street.is_none()
            && city.is_none()
            && state.is_none()
            && zip.is_none()
            && country.is_none()
        {
            continue;
        }
        let addrs = &mut c.subs.street_addresses;
        let idx = match addrs.iter().position(|a| a.kind == kind) {
            Some(i) => i,
            None if addrs.len() < 3 => {
                addrs.push(StreetAddress {
                    street_address_id: Uuid::new_v4(),
                    kind: kind.into(),
                    street: None,
                    city: None,
                    state: None,
                    postal_code: None,
                    country: None,
                    created_at: now,
                    updated_at: now,
                });
                addrs.len() - 1
            }
            None => {
                errors.push(format!("Row {row}: at most 3 addresses per contact"));
                continue;
            }
        };
        let a = &mut addrs[idx];
        if street.is_some() {
            a.street = street;
        }
        for (v, slot) in [
            (city, &mut a.city),
            (state, &mut a.state),
            (zip, &mut a.postal_code),
            (country, &mut a.country),
        ] {
            if let Some(v) = v {
                *slot = Some(v.to_string());
            }
        }
        a.updated_at = now;
    }
    for (k, v) in o {
        let Some(name) = k.strip_prefix("cf:") else {
            continue;
        };
        let Some(value) = v.as_str() else { continue };
        let Some((_, cf_id)) = cf_defs.iter().find(|(n, _)| n == name) else {
            errors.push(format!("Row {row}: unknown custom field '{name}'"));
            continue;
        };
        let cfs = &mut c.subs.custom_fields;
        if let Some(f) = cfs.iter_mut().find(|f| f.custom_field_id == *cf_id) {
            f.value = Some(value.to_string());
        } else if cfs.len() < 25 {
            cfs.push(CustomFieldValue {
                custom_field_id: *cf_id,
                value: Some(value.to_string()),
            });
        } else {
            errors.push(format!("Row {row}: at most 25 custom fields per contact"));
        }
    }
}

// ---------------------------------------------------------------- list memberships

fn parse_members(v: &Value) -> Result<Job, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "The body must be a JSON object".to_string())?;
    let src = obj
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| "source is required".to_string())?;
    let list_ids = parse_uuid_list(obj.get("list_ids"), "list_ids")?;
    if list_ids.is_empty() || list_ids.len() > 50 {
        return Err("list_ids must contain 1 to 50 list ids".into());
    }
    let mut sources = Vec::new();
    if src.contains_key("contact_ids") {
        let ids = parse_uuid_list(src.get("contact_ids"), "source.contact_ids")?;
        if ids.is_empty() || ids.len() > 500 {
            return Err("source.contact_ids must contain 1 to 500 ids".into());
        }
        sources.push(Source::ContactIds(ids));
    }
    if src.contains_key("list_ids") {
        let ids = parse_uuid_list(src.get("list_ids"), "source.list_ids")?;
        if ids.is_empty() || ids.len() > 50 {
            return Err("source.list_ids must contain 1 to 50 ids".into());
        }
        sources.push(Source::ListIds(ids));
    }
    match src.get("all_active_contacts") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => sources.push(Source::AllActive),
        Some(_) => return Err("source.all_active_contacts must be a boolean".into()),
    }
    for k in ["tag_ids", "segment_id", "engagement_level"] {
        if src.contains_key(k) {
            return Err(format!("source.{k} is not supported by the sandbox"));
        }
    }
    if sources.len() != 1 {
        return Err(
            "source must have exactly one of contact_ids, list_ids, all_active_contacts".into(),
        );
    }
    let source = sources.remove(0);
    let exclude: HashSet<Uuid> = match obj.get("exclude") {
        None => HashSet::new(),
        Some(e) => {
            if matches!(source, Source::ContactIds(_)) {
                return Err(
                    "exclude only works with the list_ids or all_active_contacts source".into(),
                );
            }
            parse_uuid_list(e.get("contact_ids"), "exclude.contact_ids")?
                .into_iter()
                .collect()
        }
    };
    Ok(Job::Members {
        source,
        exclude,
        list_ids,
    })
}

async fn members(inner: Arc<Inner>, auth: AuthCtx, body: Bytes, add: bool) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Malformed JSON: {e}")),
    };
    let job = match parse_members(&parsed) {
        Ok(j) => j,
        Err(e) => return bad_request(&e),
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let (total, lists) = {
        let acct = st.account_mut(&auth.account);
        let Job::Members {
            source, list_ids, ..
        } = &job
        else {
            return bad_request("unexpected job");
        };
        let mut check: Vec<Uuid> = list_ids.clone();
        if let Source::ListIds(src) = source {
            check.extend(src.iter().copied());
        }
        if let Err(e) = check_lists(acct, &check) {
            return if add {
                bad_request(&e)
            } else {
                respond::not_found(&e)
            };
        }
        if queued(acct) >= MAX_QUEUED {
            return too_many_queued();
        }
        let total = source_contacts(acct, source).len();
        (total, list_ids.len())
    };
    let kind = if add {
        Kind::AddMembers
    } else {
        Kind::RemoveMembers
    };
    let mut rec = new_rec(&st, kind, job);
    rec.counters.items_total_count = total as u64;
    rec.counters.list_count = lists as u64;
    let out = to_json(&rec, Shape::Membership);
    let acct = st.account_mut(&auth.account);
    acct.activity_order.push(rec.id);
    acct.activities.insert(rec.id, rec);
    drop(st);
    json(StatusCode::CREATED, &out)
}

fn source_contacts(acct: &Account, source: &Source) -> Vec<Uuid> {
    match source {
        Source::ContactIds(ids) => ids.clone(),
        Source::ListIds(lists) => acct
            .contacts
            .values()
            .filter(|c| {
                !c.is_deleted() && c.subs.list_memberships.iter().any(|l| lists.contains(l))
            })
            .map(|c| c.core.contact_id)
            .collect(),
        Source::AllActive => acct
            .contacts
            .values()
            .filter(|c| !c.is_deleted() && c.permission() != "unsubscribed")
            .map(|c| c.core.contact_id)
            .collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_members(
    acct: &mut Account,
    add: bool,
    source: &Source,
    exclude: &HashSet<Uuid>,
    list_ids: &[Uuid],
    now: Ts,
    counters: &mut Counters,
    errors: &mut Vec<String>,
) {
    let ids = source_contacts(acct, source);
    counters.items_total_count = ids.len() as u64;
    for id in ids {
        if exclude.contains(&id) {
            continue;
        }
        let Some(mut c) = acct.contact_mut(&id) else {
            errors.push(format!("Contact {id} does not exist"));
            continue;
        };
        if add {
            if c.permission() == "unsubscribed" {
                // Unconfirmed in the API; like imports, unsubscribed contacts are skipped.
                continue;
            }
            if c.core.deleted_at.take().is_some() {
                // Adding a deleted contact to a list revives it.
                c.core.updated_at = now;
            }
            for l in list_ids {
                if c.subs.list_memberships.contains(l) {
                    continue;
                }
                if c.subs.list_memberships.len() >= 50 {
                    errors.push(format!("Contact {id} is already on 50 lists"));
                    break;
                }
                c.subs.list_memberships.push(*l);
            }
        } else {
            c.subs.list_memberships.retain(|l| !list_ids.contains(l));
        }
    }
}

async fn add_list_memberships(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    members(inner, auth, body, true).await
}

async fn remove_list_memberships(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    members(inner, auth, body, false).await
}

// ---------------------------------------------------------------- status

async fn get_activity(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return respond::not_found("Resource not found for the activity_id provided");
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let now = st.now();
    let found = st
        .accounts
        .get(&auth.account)
        .and_then(|a| a.activities.get(&id))
        .filter(|a| !expired(a, now))
        .map(|a| to_json(a, Shape::Activity));
    drop(st);
    match found {
        Some(v) => json(StatusCode::OK, &v),
        None => respond::not_found("Resource not found for the activity_id provided"),
    }
}

async fn list_activities(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    uri: Uri,
) -> Response {
    let (params, after) = match cursor::request_params(&uri) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let limit = match parse_limit(get("limit"), 500) {
        Ok(l) => l,
        Err(e) => return bad_request(&e),
    };
    let state = get("state").map(str::to_string);
    if let Some(s) = &state {
        if !matches!(
            s.as_str(),
            "initialized" | "processing" | "completed" | "cancelled" | "failed" | "timed_out"
        ) {
            return bad_request(&format!("Invalid state: {s}"));
        }
    }
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let now = st.now();
    let Some(acct) = st.accounts.get(&auth.account) else {
        return json(StatusCode::OK, &json!({"activities": []}));
    };
    // Newest first.
    let mut iter = acct.activity_order.iter().rev().peekable();
    if let Some(after) = after {
        for id in iter.by_ref() {
            if *id == after {
                break;
            }
        }
    }
    let mut page = Vec::new();
    let mut last = None;
    let mut more = false;
    for id in iter {
        let Some(a) = acct.activities.get(id) else {
            continue;
        };
        if expired(a, now) || state.as_ref().is_some_and(|s| *s != a.state) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(to_json(a, Shape::Activity));
        last = Some(a.id);
    }
    drop(st);
    let mut body = json!({ "activities": page });
    if more {
        if let Some(last) = last {
            body["_links"] = json!({"next": {"href": format!("/v3/activities?cursor={}", cursor::encode(&params, last))}});
        }
    }
    json(StatusCode::OK, &body)
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route(
            "/v3/activities/contacts_json_import",
            post(contacts_json_import),
        )
        .route(
            "/v3/activities/add_list_memberships",
            post(add_list_memberships),
        )
        .route(
            "/v3/activities/remove_list_memberships",
            post(remove_list_memberships),
        )
        .route("/v3/activities/{id}", get(get_activity))
        .route("/v3/activities", get(list_activities))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_within_counts_complete_items_only() {
        let body = br#"{"list_ids":["x"],"import_data":[{"email":"a}@x.com","n":"q\"}"},{"email":"b@x.com","o":{"k":[1]}},{"email":"c@x.com"}]}"#;
        let first_end = body
            .windows(4)
            .position(|w| w == b"\"}\"}")
            .map(|p| p + 3)
            .unwrap_or(0);
        assert_eq!(items_within(body, body.len()), 3);
        assert_eq!(items_within(body, first_end), 0);
        assert_eq!(items_within(body, first_end + 1), 1);
        let second_end = first_end + 1 + br#",{"email":"b@x.com","o":{"k":[1]}}"#.len() - 1;
        assert_eq!(items_within(body, second_end), 1);
        assert_eq!(items_within(body, second_end + 1), 2);
        // A string value "import_data" is not the key.
        let body = br#"{"x":"import_data","import_data":[{"email":"a@x.com"}]}"#;
        assert_eq!(items_within(body, body.len()), 1);
    }

    #[test]
    fn email_validation() {
        assert!(valid_email("a.b@example.com"));
        assert!(!valid_email("not-an-email"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("a b@example.com"));
        assert!(!valid_email("@example.com"));
        assert!(!valid_email(&format!("{}@example.com", "x".repeat(80))));
    }
}
