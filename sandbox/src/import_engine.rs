//! The import engine: bulk activities (`contacts_json_import`, `add_list_memberships`,
//! `remove_list_memberships`, `contact_delete`) as state transitions on the in-memory state. Pure logic on
//! `state` types: no HTTP (the handlers are in `activities.rs`).
//!
//! Activities are processed lazily: whenever the account is touched (any API request or
//! `AccountCtl` call), activities whose due time has passed move `initialized` →
//! `processing` (after half of `import_processing`) → terminal (after `import_processing`),
//! and their effect is applied at that moment.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::state::{
    fmt_ts, membership_moved, Account, ActivityRec, Contact, ContactCore, ContactSubs, Counters,
    CustomFieldValue, EmailAddress, Inner, Job, Kind, PhoneNumber, Source, State, StreetAddress,
    Ts,
};

/// More non-terminal activities than this per account → 429.
pub(crate) const MAX_QUEUED: usize = 1_000;
/// Activity statuses are kept 10 days.
const RETENTION_DAYS: i64 = 10;

/// Response shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `ActivityImport` (201 of contacts_json_import)
    Import,
    /// `ActivityListsMembership` (201 of add/remove_list_memberships) and
    /// `ActivityDeleteStatus` (201 of contact_delete)
    Membership,
    /// `Activity` (GET)
    Activity,
}

pub(crate) fn to_json(a: &ActivityRec, shape: Shape) -> Value {
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
        Kind::Export => {}
        Kind::Delete => {
            // `list_count` only when the contacts were chosen by list.
            if c.list_count > 0 {
                s.insert("list_count".into(), json!(c.list_count));
            }
        }
    }
    o.insert("status".into(), Value::Object(s));
    let mut links = json!({"self": {"href": format!("/v3/activities/{}", a.id)}});
    if let Some(file) = a.results {
        links["results"] = json!({"href": format!("/v3/contact_exports/{file}")});
    }
    o.insert("_links".into(), links);
    Value::Object(o)
}

pub(crate) fn expired(a: &ActivityRec, now: Ts) -> bool {
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
                Some(Job::Delete { source }) => {
                    apply_delete(acct, &source, now, &mut counters, &mut errors)
                }
                Some(Job::Export(job)) => {
                    let (csv, rows) = super::export_render::render(acct, &job);
                    let file = Uuid::new_v4();
                    acct.export_files.insert(file, Arc::new(csv));
                    counters.items_total_count = rows;
                    if let Some(a) = acct.activities.get_mut(&id) {
                        a.results = Some(file);
                    }
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
pub(crate) const STRING_FIELDS: &[(&str, usize)] = &[
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

pub(crate) fn check_lists(acct: &Account, ids: &[Uuid]) -> Result<(), String> {
    for id in ids {
        match acct.lists.get(id) {
            Some(l) if l.deleted_at.is_none() => {}
            _ => return Err(format!("List {id} does not exist")),
        }
    }
    Ok(())
}

pub(crate) fn queued(acct: &Account) -> usize {
    acct.activities.values().filter(|a| !a.terminal()).count()
}

pub(crate) fn new_rec(st: &State, kind: Kind, job: Job) -> ActivityRec {
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
        results: None,
    }
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
        if acct.silent_refusals.contains(&key) {
            counters.error_count += 1;
            continue;
        }
        if acct.correctable_refusals.contains(&key) {
            counters.correctable_count += 1;
            continue;
        }
        let id = match acct.by_email.get(&key).copied() {
            Some(id) => id,
            None => {
                let id = Uuid::new_v4();
                acct.insert_contact(new_import_contact(id, email, now));
                id
            }
        };
        let cf_defs: Vec<(String, Uuid, bool)> = acct
            .custom_fields
            .iter()
            .map(|c| (c.name.clone(), c.custom_field_id, c.import_drops_silently))
            .collect();
        let bump = acct.membership_moves_updated_at;
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
            // (`updated_at` is bumped by every import row anyway.)
            membership_moved(bump, &mut c, now);
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
    cf_defs: &[(String, Uuid, bool)],
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
        let Some((_, cf_id, dropped)) = cf_defs.iter().find(|(n, _, _)| n == name) else {
            errors.push(format!("Row {row}: unknown custom field '{name}'"));
            continue;
        };
        if *dropped {
            // `AccountCtl::drop_custom_field_silently`: accepted, stored nowhere.
            continue;
        }
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

pub(crate) fn source_contacts(acct: &Account, source: &Source) -> Vec<Uuid> {
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
    let bump = acct.membership_moves_updated_at;
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
                membership_moved(bump, &mut c, now);
            }
        } else {
            let before = c.subs.list_memberships.len();
            c.subs.list_memberships.retain(|l| !list_ids.contains(l));
            if c.subs.list_memberships.len() != before {
                membership_moved(bump, &mut c, now);
            }
        }
    }
}

/// `contact_delete`: each contact gets `deleted_at` = today, its memberships cleared and
/// `updated_at` bumped (already deleted ones are left as they are); unknown ids are
/// reported in `activity_errors`.
fn apply_delete(
    acct: &mut Account,
    source: &Source,
    now: Ts,
    counters: &mut Counters,
    errors: &mut Vec<String>,
) {
    let ids = source_contacts(acct, source);
    counters.items_total_count = ids.len() as u64;
    for id in ids {
        if !super::subscriber::delete(acct, id, now) {
            errors.push(format!("Contact {id} does not exist"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
