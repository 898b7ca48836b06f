//! The push guard: the pure core that decides, for each pending `outbound` row, whether it
//! may be pushed and what exactly may be pushed. No I/O.
//!
//! The laws it enforces (DESIGN.md §1):
//! - **Never re-subscribe**: a row for a contact that is `unsubscribed` in the freshly pulled
//!   store is `skipped` with the reason; it never reaches a batch. A list the contact was
//!   removed from in Constant Contact after the row was queued is stripped from the row
//!   (`conflict`), since an import would put them back on it.
//! - **Primary wins per field**: a property Constant Contact changed after the row's
//!   `created_at` is dropped from the push (`conflict`).
//! - **Nothing is lost**: every input row ends in exactly one of: an item to push, `skipped`
//!   (with a reason), `failed` (invalid, with a reason naming the problem), or `deferred`
//!   (left `pending` because an earlier push of the same address is still in flight).
//!
//! "After the row's `created_at`" is judged on the `changes.at` clock, i.e. when ccsync
//! learned of the change. That errs on the primary's side only: a change made in Constant
//! Contact before the local edit but pulled after it also wins.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::op::Op;
use super::properties::{clearable, phone_kind};

/// `JsonImportContact.email` allows 50 characters (the contact resource allows 80; the
/// stricter import schema is the one we must satisfy).
pub const EMAIL_MAX: usize = 50;
/// At most 25 custom fields per contact.
pub const MAX_CUSTOM_FIELDS: usize = 25;
/// `list_ids` of an import: 1..=50.
pub const MAX_LISTS: usize = 50;
/// A custom field value, and a custom field name.
pub const CUSTOM_VALUE_MAX: usize = 255;
pub const CUSTOM_NAME_MAX: usize = 50;

/// The string properties of `JsonImportContact` (besides `email` and `cf:*`) and their
/// maximum lengths in characters.
pub const STRING_PROPERTIES: &[(&str, usize)] = &[
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
];

/// One pending `outbound` row, as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRow {
    pub id: i64,
    pub email: String,
    pub fields: Value,
    pub list_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    /// `outbound.op` as stored (parsed by the guard: an unknown value ends `failed`).
    pub op: String,
}

/// What the freshly pulled store knows about the contact with a row's address.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Primary {
    pub contact_id: Uuid,
    pub permission_to_send: Option<String>,
    pub opt_out_reason: Option<String>,
    pub deleted: bool,
    pub memberships: BTreeSet<Uuid>,
    /// Current values by scalar property name (`first_name`, `birthday_month`, ...).
    pub scalars: BTreeMap<String, Value>,
    /// The `phone_numbers`, `street_addresses` and `custom_fields` arrays.
    pub phone_numbers: Value,
    pub street_addresses: Value,
    pub custom_fields: Value,
}

/// A Constant Contact-origin `changes` row of that contact.
#[derive(Debug, Clone, PartialEq)]
pub struct PrimaryChange {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub field: Option<String>,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
}

/// Everything the guard reads besides the rows. Keys of `contacts` and `in_flight` are
/// lower-case addresses.
#[derive(Debug, Default)]
pub struct GuardInput {
    /// Lists that exist (not deleted) in `contact_lists`.
    pub known_lists: HashSet<Uuid>,
    pub contacts: HashMap<String, Primary>,
    pub changes: HashMap<Uuid, Vec<PrimaryChange>>,
    /// Addresses with a row already `submitted` (an activity in flight).
    pub in_flight: HashSet<String>,
    /// Values this daemon pushed for an address (from `completed` rows): a Constant Contact
    /// change to exactly such a value is our own import coming back, not a conflict.
    pub pushed: HashMap<String, Vec<Map<String, Value>>>,
    /// Constant Contact's custom field catalogue, name → `custom_field_id`: an import names
    /// a custom field `cf:<name>`, the contact resource by id.
    pub custom_fields: CustomFieldIds,
}

/// A custom field catalogue: name → `custom_field_id`.
pub type CustomFieldIds = HashMap<String, Uuid>;

/// One contact to import: the coalesced rows of one address.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub email: String,
    pub contact_id: Option<Uuid>,
    /// Import properties (without `email`).
    pub fields: Map<String, Value>,
    pub list_ids: BTreeSet<Uuid>,
    /// The outbound rows this item carries, ascending.
    pub row_ids: Vec<i64>,
    /// Notes for the rows' `reason` (conflicts resolved for the primary).
    pub notes: Vec<String>,
}

impl Item {
    /// The import item as JSON (`email` first, then the properties).
    pub fn to_json(&self) -> Value {
        let mut o = Map::with_capacity(self.fields.len() + 1);
        o.insert("email".into(), Value::String(self.email.clone()));
        for (k, v) in &self.fields {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

/// A `conflict` to log: a property or a list dropped because the primary changed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub row_id: i64,
    pub contact_id: Option<Uuid>,
    pub email: String,
    /// The property name, or `list_ids` for a stripped list.
    pub field: String,
    /// What the row wanted.
    pub local: Value,
    /// What Constant Contact has (or the list it removed the contact from).
    pub primary: Value,
}

/// A row that ends here, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminal {
    pub row_id: i64,
    pub email: String,
    pub contact_id: Option<Uuid>,
    pub reason: String,
}

/// A non-upsert op for one contact (the coalesced rows of one address).
#[derive(Debug, Clone, PartialEq)]
pub struct Direct {
    pub op: Op,
    pub email: String,
    pub contact_id: Uuid,
    pub row_ids: Vec<i64>,
    /// `remove_from_lists`: the named lists the contact is on now (read before write).
    pub list_ids: BTreeSet<Uuid>,
    /// `unsubscribe`: the opt-out reason (`fields.opt_out_reason`).
    pub opt_out_reason: Option<String>,
}

/// The guard's verdict on a set of rows.
#[derive(Debug, Default, PartialEq)]
pub struct GuardPlan {
    /// Imports: contacts to create, or to add to lists they are not on now (with fields).
    pub items: Vec<Item>,
    /// Field-only changes of existing contacts (`list_ids` empty): `PUT /contacts/{id}`.
    pub puts: Vec<Item>,
    /// Unsubscribes, list removals and deletes.
    pub directs: Vec<Direct>,
    pub skipped: Vec<Terminal>,
    pub failed: Vec<Terminal>,
    /// Rows left `pending` for a later run.
    pub deferred: Vec<Terminal>,
    /// Rows whose every value and list Constant Contact already has: `completed` with
    /// nothing to send (e.g. a batch whose answer was lost but which did run).
    pub already: Vec<Terminal>,
    pub conflicts: Vec<Conflict>,
}

/// A part of a contact that one or more import properties write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Aspect {
    Scalar(&'static str),
    Birthday,
    Phone(&'static str),
    Address(&'static str),
    /// One custom field, by id.
    Custom(Uuid),
}

const ADDRESS_PARTS: &[&str] = &["street", "street2", "city", "state", "zip", "country"];

fn address_kind(prop: &str) -> Option<&'static str> {
    for (prefix, kind) in [
        ("home_", "home"),
        ("work_", "work"),
        ("other_", "other"),
        ("", "home"),
    ] {
        if let Some(rest) = prop.strip_prefix(prefix) {
            if ADDRESS_PARTS.contains(&rest) {
                return Some(kind);
            }
        }
    }
    None
}

/// The aspect an import property writes; a `cf:<name>` the catalogue does not know has none.
fn aspect_of(prop: &str, custom_fields: &CustomFieldIds) -> Option<Aspect> {
    match prop.strip_prefix("cf:") {
        Some(name) => custom_fields.get(name).copied().map(Aspect::Custom),
        None => builtin_aspect(prop),
    }
}

/// The aspect of a property that is not a custom field.
fn builtin_aspect(prop: &str) -> Option<Aspect> {
    for s in [
        "first_name",
        "last_name",
        "job_title",
        "company_name",
        "anniversary",
    ] {
        if prop == s {
            return Some(Aspect::Scalar(s));
        }
    }
    if prop == "birthday_month" || prop == "birthday_day" {
        return Some(Aspect::Birthday);
    }
    if let Some(k) = phone_kind(prop) {
        return Some(Aspect::Phone(k));
    }
    address_kind(prop).map(Aspect::Address)
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Phone numbers of one kind in a `phone_numbers` array.
fn phones_of(arr: &Value, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = arr
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| str_of(p, "kind") == Some(kind))
                .filter_map(|p| str_of(p, "phone_number").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The address of one kind in a `street_addresses` array (the parts that matter).
fn address_of(arr: &Value, kind: &str) -> Vec<Value> {
    arr.as_array()
        .map(|a| {
            a.iter()
                .filter(|p| str_of(p, "kind") == Some(kind))
                .map(|p| {
                    serde_json::json!([
                        p.get("street"),
                        p.get("city"),
                        p.get("state"),
                        p.get("postal_code"),
                        p.get("country")
                    ])
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each custom field of a contact's `custom_fields` array: id → its value and choices.
fn custom_values(arr: &Value) -> BTreeMap<Uuid, Value> {
    arr.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    let id = Uuid::parse_str(str_of(f, "custom_field_id")?).ok()?;
                    let value = f.get("value").cloned().unwrap_or(Value::Null);
                    let choices = f.get("choice_ids").cloned().unwrap_or(Value::Null);
                    Some((id, serde_json::json!([value, choices])))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value of custom field `id` in a `custom_fields` array (`Null` when it has none).
fn custom_value(arr: &Value, id: Uuid) -> Value {
    arr.as_array()
        .and_then(|a| {
            a.iter().find(|f| {
                str_of(f, "custom_field_id").and_then(|s| Uuid::parse_str(s).ok()) == Some(id)
            })
        })
        .and_then(|f| f.get("value").cloned())
        .unwrap_or(Value::Null)
}

/// The aspects a Constant Contact `updated` change touched.
fn aspects_changed(c: &PrimaryChange) -> Vec<Aspect> {
    let Some(field) = c.field.as_deref() else {
        return Vec::new();
    };
    let null = Value::Null;
    let old = c.old_value.as_ref().unwrap_or(&null);
    let new = c.new_value.as_ref().unwrap_or(&null);
    match field {
        "first_name" | "last_name" | "job_title" | "company_name" | "anniversary" => {
            builtin_aspect(field).into_iter().collect()
        }
        "birthday_month" | "birthday_day" => vec![Aspect::Birthday],
        "phone_numbers" => ["home", "work", "mobile", "other"]
            .into_iter()
            .filter(|k| phones_of(old, k) != phones_of(new, k))
            .map(Aspect::Phone)
            .collect(),
        "street_addresses" => ["home", "work", "other"]
            .into_iter()
            .filter(|k| address_of(old, k) != address_of(new, k))
            .map(Aspect::Address)
            .collect(),
        // Per field, by id: a change to one custom field wins over that `cf:` property only.
        "custom_fields" => {
            let (old, new) = (custom_values(old), custom_values(new));
            old.keys()
                .chain(new.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|id| old.get(id) != new.get(id))
                .map(|id| Aspect::Custom(*id))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The aspects a contact first seen after the row was queued already has values for.
fn aspects_with_values(p: &Primary) -> Vec<Aspect> {
    let mut out = Vec::new();
    for s in [
        "first_name",
        "last_name",
        "job_title",
        "company_name",
        "anniversary",
    ] {
        if p.scalars.get(s).is_some_and(|v| !v.is_null()) {
            out.extend(builtin_aspect(s));
        }
    }
    if ["birthday_month", "birthday_day"]
        .iter()
        .any(|s| p.scalars.get(*s).is_some_and(|v| !v.is_null()))
    {
        out.push(Aspect::Birthday);
    }
    for k in ["home", "work", "mobile", "other"] {
        if !phones_of(&p.phone_numbers, k).is_empty() {
            out.push(Aspect::Phone(k));
        }
    }
    for k in ["home", "work", "other"] {
        if !address_of(&p.street_addresses, k).is_empty() {
            out.push(Aspect::Address(k));
        }
    }
    let none = serde_json::json!([null, null]);
    out.extend(
        custom_values(&p.custom_fields)
            .into_iter()
            .filter(|(_, v)| *v != none)
            .map(|(id, _)| Aspect::Custom(id)),
    );
    out
}

/// The primary's current value of the aspect (for the conflict log).
fn primary_value(p: &Primary, a: Aspect, prop: &str) -> Value {
    match a {
        Aspect::Scalar(_) | Aspect::Birthday => p.scalars.get(prop).cloned().unwrap_or(Value::Null),
        Aspect::Phone(k) => serde_json::json!(phones_of(&p.phone_numbers, k)),
        Aspect::Address(k) => serde_json::json!(address_of(&p.street_addresses, k)),
        Aspect::Custom(id) => custom_value(&p.custom_fields, id),
    }
}

/// Whether Constant Contact's copy `p` holds the pushed `value` of import property `prop`:
/// `Some(true|false)`, or `None` where it cannot be told from the contact resource
/// (`street2` is folded into `street`; a `cf:<name>` missing from `custom_fields`, the
/// catalogue, has no id to look the value up by).
pub fn holds(
    p: &Primary,
    prop: &str,
    value: &Value,
    custom_fields: &CustomFieldIds,
) -> Option<bool> {
    let text = |v: &Value| match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match aspect_of(prop, custom_fields)? {
        Aspect::Scalar(_) | Aspect::Birthday => {
            Some(text(p.scalars.get(prop).unwrap_or(&Value::Null)) == text(value))
        }
        Aspect::Phone(kind) => Some(phones_of(&p.phone_numbers, kind).contains(&text(value))),
        Aspect::Address(kind) => {
            let part = ADDRESS_PARTS
                .iter()
                .find(|part| prop.ends_with(*part) && prop.len() - part.len() <= 6)
                .copied()?;
            if part == "street2" {
                return None;
            }
            let field = if part == "zip" { "postal_code" } else { part };
            let arr = p.street_addresses.as_array()?;
            let addr = arr.iter().find(|a| str_of(a, "kind") == Some(kind));
            Some(addr.and_then(|a| str_of(a, field)).unwrap_or("").trim() == text(value))
        }
        Aspect::Custom(id) => {
            let held = custom_value(&p.custom_fields, id);
            if held.is_null()
                && custom_values(&p.custom_fields)
                    .get(&id)
                    .is_some_and(|v| !v[1].is_null())
            {
                // A select-type field may come back as `choice_ids` only: the pushed text
                // cannot be compared with those.
                return None;
            }
            Some(text(&held) == text(value))
        }
    }
}

/// True when a Constant Contact change after `since` touched what `prop` writes
/// (`custom_fields` resolves a `cf:<name>` to the id the changes carry).
pub fn changed_since(
    changes: &[PrimaryChange],
    since: DateTime<Utc>,
    prop: &str,
    custom_fields: &CustomFieldIds,
) -> bool {
    let Some(a) = aspect_of(prop, custom_fields) else {
        return false;
    };
    changes
        .iter()
        .filter(|c| c.at > since && c.kind == "updated")
        .any(|c| aspects_changed(c).contains(&a))
}

/// Loose email syntax: one `@`, a non-empty local part, a dotted domain, printable ASCII,
/// no whitespace, at most [`EMAIL_MAX`] characters.
pub fn check_email(email: &str) -> Result<(), String> {
    if email.is_empty() {
        return Err("email is empty".into());
    }
    if email.chars().count() > EMAIL_MAX {
        return Err(format!(
            "email is longer than {EMAIL_MAX} characters (the JSON import's limit)"
        ));
    }
    if !email.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "email {email:?} contains whitespace or non-ASCII characters"
        ));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(format!("email {email:?} has no '@'"));
    };
    if local.is_empty() || domain.contains('@') {
        return Err(format!(
            "email {email:?} is not a single local@domain address"
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty()) {
        return Err(format!("email {email:?} has an invalid domain"));
    }
    Ok(())
}

/// Validates a row's `fields` and `list_ids`. Returns the import properties (without
/// `email`) or the reason the row is invalid.
pub fn check_row(
    email: &str,
    fields: &Value,
    list_ids: &[Uuid],
    known_lists: &HashSet<Uuid>,
    custom_fields: &CustomFieldIds,
) -> Result<Map<String, Value>, String> {
    let Some(obj) = fields.as_object() else {
        return Err("fields must be a JSON object of import property names".into());
    };
    let mut out = Map::with_capacity(obj.len());
    let mut custom = 0usize;
    // Names the catalogue does not have: reported after the per-value checks.
    let mut unknown: Vec<&str> = Vec::new();
    for (k, v) in obj {
        if k == "email" {
            match v.as_str() {
                Some(e) if e.trim().eq_ignore_ascii_case(email) => continue,
                _ => return Err("fields.email differs from the row's email".into()),
            }
        }
        if v.is_null() {
            if !clearable(k) {
                return Err(format!(
                    "fields.{k} is null, and {k} cannot be cleared through the API \
                     (clearable: core fields, phones, address parts but street2, cf:<name>)"
                ));
            }
            out.insert(k.clone(), Value::Null);
            if k.starts_with("cf:") {
                custom += 1;
            }
            continue;
        }
        if let Some(name) = k.strip_prefix("cf:") {
            custom += 1;
            if name.is_empty() || name.chars().count() > CUSTOM_NAME_MAX {
                return Err(format!(
                    "fields.{k}: a custom field name has 1 to {CUSTOM_NAME_MAX} characters"
                ));
            }
            check_string(k, v, CUSTOM_VALUE_MAX)?;
            if !custom_fields.contains_key(name) {
                unknown.push(name);
            }
        } else if k == "birthday_month" || k == "birthday_day" {
            let (lo, hi) = if k == "birthday_month" {
                (1, 12)
            } else {
                (1, 31)
            };
            match v.as_i64() {
                Some(n) if (lo..=hi).contains(&n) => {}
                _ => return Err(format!("fields.{k} must be an integer {lo}..{hi}")),
            }
        } else if let Some((_, max)) = STRING_PROPERTIES.iter().find(|(n, _)| n == k) {
            check_string(k, v, *max)?;
        } else {
            return Err(format!(
                "fields.{k} is not a JSON import property (first_name, cf:<name>, ...)"
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    if custom > MAX_CUSTOM_FIELDS {
        return Err(format!(
            "fields has {custom} custom fields; at most {MAX_CUSTOM_FIELDS} per contact"
        ));
    }
    if !unknown.is_empty() {
        // The import would refuse the row (the field must already exist): say so here,
        // naming the field, rather than after a round trip.
        let props: Vec<String> = unknown.iter().map(|n| format!("fields.cf:{n}")).collect();
        let (noun, names) = if unknown.len() == 1 {
            ("custom field", unknown[0].to_string())
        } else {
            ("custom fields", unknown.join(", "))
        };
        return Err(format!(
            "{}: no {noun} named {names} in Constant Contact's catalogue",
            props.join(", ")
        ));
    }
    if out.get("birthday_month").is_some_and(|v| !v.is_null())
        != out.get("birthday_day").is_some_and(|v| !v.is_null())
        || out.contains_key("birthday_month") != out.contains_key("birthday_day")
    {
        return Err("fields.birthday_month and fields.birthday_day must be given together".into());
    }
    let distinct: BTreeSet<Uuid> = list_ids.iter().copied().collect();
    if distinct.is_empty() && out.is_empty() {
        return Err("nothing to push: fields is empty and list_ids is empty".into());
    }
    if distinct.len() > MAX_LISTS {
        return Err(format!(
            "list_ids has {} lists; at most {MAX_LISTS}",
            distinct.len()
        ));
    }
    if let Some(unknown) = distinct.iter().find(|l| !known_lists.contains(l)) {
        return Err(format!(
            "list_ids: list {unknown} does not exist in contact_lists (unknown or deleted)"
        ));
    }
    Ok(out)
}

fn check_string(k: &str, v: &Value, max: usize) -> Result<(), String> {
    let Some(s) = v.as_str() else {
        return Err(format!("fields.{k} must be a string"));
    };
    if s.trim().is_empty() {
        return Err(format!(
            "fields.{k} is empty: an import does not reliably clear a value, leave it out"
        ));
    }
    let n = s.chars().count();
    if n > max {
        return Err(format!("fields.{k} has {n} characters; at most {max}"));
    }
    Ok(())
}

/// Plans `rows` (ascending `id`) against the freshly pulled primary.
///
/// Rows of one address reach Constant Contact in `id` order: a row whose `op` differs from
/// the first row of its address that this plan acts on waits (`deferred`) for a later run.
pub fn plan(rows: &[OutboundRow], input: &GuardInput) -> GuardPlan {
    let mut out = GuardPlan::default();
    // Index of the item of each address in `items`, and the first op acted on per address.
    let mut by_email: HashMap<String, usize> = HashMap::new();
    let mut items: Vec<Item> = Vec::new();
    let mut directs: HashMap<String, usize> = HashMap::new();
    let mut first: HashMap<String, (Op, i64)> = HashMap::new();
    for row in rows {
        let email = row.email.trim().to_lowercase();
        let primary = input.contacts.get(&email);
        let contact_id = primary.map(|p| p.contact_id);
        let terminal = |reason: String| Terminal {
            row_id: row.id,
            email: email.clone(),
            contact_id,
            reason,
        };
        let op = match Op::parse(&row.op) {
            Ok(op) => op,
            Err(e) => {
                out.failed.push(terminal(e));
                continue;
            }
        };
        if let Err(e) = check_email(&email) {
            out.failed.push(terminal(e));
            continue;
        }
        if let Some((op0, id0)) = first.get(&email) {
            if *op0 != op {
                out.deferred.push(terminal(format!(
                    "waits for row {id0} ({op0}) of this address: an address's rows reach \
                     Constant Contact in order"
                )));
                continue;
            }
        }
        if op != Op::Upsert {
            let planned = plan_direct(op, row, primary, input);
            match planned {
                DirectPlan::Failed(why) => out.failed.push(terminal(why)),
                DirectPlan::Skipped(why) => out.skipped.push(terminal(why)),
                DirectPlan::Already(why) => out.already.push(terminal(why)),
                _ if input.in_flight.contains(&email) => out.deferred.push(terminal(
                    "an earlier push of this address is still in flight".into(),
                )),
                DirectPlan::Send {
                    contact_id,
                    lists,
                    reason,
                } => {
                    first.entry(email.clone()).or_insert((op, row.id));
                    match directs.get(&email) {
                        Some(&i) => {
                            let d = &mut out.directs[i];
                            d.row_ids.push(row.id);
                            d.list_ids.extend(lists);
                            d.opt_out_reason = reason.or(d.opt_out_reason.take());
                        }
                        None => {
                            directs.insert(email.clone(), out.directs.len());
                            out.directs.push(Direct {
                                op,
                                email: email.clone(),
                                contact_id,
                                row_ids: vec![row.id],
                                list_ids: lists,
                                opt_out_reason: reason,
                            });
                        }
                    }
                }
            }
            continue;
        }
        let unsubscribed =
            primary.is_some_and(|p| p.permission_to_send.as_deref() == Some("unsubscribed"));
        let has_fields = row.fields.as_object().is_some_and(|m| !m.is_empty());
        // Law 2 first: whatever else is wrong with the row, an unsubscribed contact is
        // never added to a list. A row that asks for a list is skipped (as the opt-out
        // sweep skips it); only a field-only row goes out, through a PUT, which never
        // touches permission.
        if unsubscribed && (!has_fields || !row.list_ids.is_empty()) {
            let why = primary
                .and_then(|p| p.opt_out_reason.as_deref())
                .map(|r| format!(" (opt-out reason: {r})"))
                .unwrap_or_default();
            out.skipped.push(terminal(format!(
                "unsubscribed in Constant Contact{why}: never re-subscribed"
            )));
            continue;
        }
        let mut fields = match check_row(
            &email,
            &row.fields,
            &row.list_ids,
            &input.known_lists,
            &input.custom_fields,
        ) {
            Ok(f) => f,
            Err(e) => {
                out.failed.push(terminal(e));
                continue;
            }
        };
        if input.in_flight.contains(&email) {
            out.deferred.push(terminal(
                "an earlier push of this address is still in flight".into(),
            ));
            continue;
        }
        let mut lists: BTreeSet<Uuid> = row.list_ids.iter().copied().collect();
        let mut notes = Vec::new();
        let Some(p) = primary else {
            // A brand-new contact: only an import creates it, and an import needs a list.
            if lists.is_empty() {
                out.failed.push(terminal(
                    "a brand-new contact needs a list: Constant Contact has no contact with \
                     this address and list_ids is empty (an import creates contacts only on \
                     a list)"
                        .into(),
                ));
                continue;
            }
            if let Some(k) = fields.iter().find(|(_, v)| v.is_null()).map(|(k, _)| k) {
                out.failed.push(terminal(format!(
                    "fields.{k} is null: a new contact is created by an import, which cannot \
                     clear a value; leave the property out"
                )));
                continue;
            }
            add_item(
                &mut out,
                &mut items,
                &mut by_email,
                &mut first,
                row,
                &email,
                None,
                fields,
                lists,
                notes,
            );
            continue;
        };
        let later: Vec<&PrimaryChange> = input
            .changes
            .get(&p.contact_id)
            .map(|cs| cs.iter().filter(|c| c.at > row.created_at).collect())
            .unwrap_or_default();
        if p.deleted && later.iter().any(|c| c.kind == "deleted") {
            out.skipped.push(terminal(
                "deleted in Constant Contact after the row was queued".into(),
            ));
            continue;
        }
        let echoes = input.pushed.get(&email);
        let mut changed: BTreeSet<Aspect> = BTreeSet::new();
        for c in &later {
            match c.kind.as_str() {
                "updated" => {
                    if is_echo(c, echoes) {
                        continue;
                    }
                    changed.extend(aspects_changed(c));
                }
                "created" => changed.extend(aspects_with_values(p)),
                "list_removed" => {
                    let removed = c
                        .old_value
                        .as_ref()
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok());
                    if let Some(l) = removed {
                        if !p.memberships.contains(&l) && lists.remove(&l) {
                            out.conflicts.push(Conflict {
                                row_id: row.id,
                                contact_id,
                                email: email.clone(),
                                field: "list_ids".into(),
                                local: Value::String(l.to_string()),
                                primary: Value::String(format!("removed from list {l}")),
                            });
                            notes.push(format!(
                                "list {l} not re-added: the contact left it in Constant Contact after the row was queued"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        let dropped: Vec<(String, Aspect)> = fields
            .keys()
            .filter_map(|k| {
                let a = aspect_of(k, &input.custom_fields)?;
                changed.contains(&a).then(|| (k.clone(), a))
            })
            .collect();
        for (k, a) in dropped {
            let Some(local) = fields.remove(&k) else {
                continue;
            };
            let remote = primary_value(p, a, &k);
            if remote == local {
                // Constant Contact already holds exactly this value: nothing to push,
                // nothing to refuse.
                continue;
            }
            out.conflicts.push(Conflict {
                row_id: row.id,
                contact_id,
                email: email.clone(),
                field: k.clone(),
                local,
                primary: remote,
            });
            notes.push(format!(
                "{k} not pushed: changed in Constant Contact after the row was queued"
            ));
        }
        // Only lists the contact is not on now (read before write) are imported.
        let to_add: BTreeSet<Uuid> = if p.deleted {
            lists.clone()
        } else {
            lists.difference(&p.memberships).copied().collect()
        };
        if fields.is_empty() && to_add.is_empty() {
            if notes.is_empty() {
                out.already.push(terminal(
                    "already in Constant Contact: every value and list is there".into(),
                ));
            } else {
                out.skipped.push(terminal(format!(
                    "nothing left to push: {}",
                    notes.join("; ")
                )));
            }
            continue;
        }
        if to_add.is_empty() && p.deleted {
            out.skipped.push(terminal(
                "deleted in Constant Contact: a field change is not written (a PUT would \
                 revive the contact); queue the row with list_ids to add the contact again"
                    .into(),
            ));
            continue;
        }
        if !to_add.is_empty() {
            if let Some(k) = fields.iter().find(|(_, v)| v.is_null()).map(|(k, _)| k) {
                out.failed.push(terminal(format!(
                    "fields.{k} is null: this row adds lists, so it goes out as an import, \
                     which cannot clear a value; queue the clear in its own row without \
                     list_ids"
                )));
                continue;
            }
        }
        add_item(
            &mut out,
            &mut items,
            &mut by_email,
            &mut first,
            row,
            &email,
            contact_id,
            fields,
            to_add,
            notes,
        );
    }
    for item in items {
        if item.list_ids.is_empty() {
            out.puts.push(item);
        } else {
            out.items.push(item);
        }
    }
    out
}

/// Coalesces an upsert row into its address's item (later rows win property by property).
#[allow(clippy::too_many_arguments)]
fn add_item(
    out: &mut GuardPlan,
    items: &mut Vec<Item>,
    by_email: &mut HashMap<String, usize>,
    first: &mut HashMap<String, (Op, i64)>,
    row: &OutboundRow,
    email: &str,
    contact_id: Option<Uuid>,
    fields: Map<String, Value>,
    lists: BTreeSet<Uuid>,
    notes: Vec<String>,
) {
    let terminal = |reason: String| Terminal {
        row_id: row.id,
        email: email.to_string(),
        contact_id,
        reason,
    };
    match by_email.get(email) {
        Some(&i) => {
            let item = &mut items[i];
            let union: BTreeSet<Uuid> = item.list_ids.union(&lists).copied().collect();
            if union.len() > MAX_LISTS {
                out.deferred.push(terminal(format!(
                    "coalesced with an earlier row of this address it would need {} lists (at most {MAX_LISTS})",
                    union.len()
                )));
                return;
            }
            let nulls = item
                .fields
                .values()
                .chain(fields.values())
                .any(Value::is_null);
            if nulls && !union.is_empty() {
                out.deferred.push(terminal(
                    "waits for an earlier row of this address: clearing a value (PUT) and \
                     adding a list (import) go out separately"
                        .into(),
                ));
                return;
            }
            item.list_ids = union;
            for (k, v) in fields {
                item.fields.insert(k, v);
            }
            item.row_ids.push(row.id);
            item.notes.extend(notes);
        }
        None => {
            first
                .entry(email.to_string())
                .or_insert((Op::Upsert, row.id));
            by_email.insert(email.to_string(), items.len());
            items.push(Item {
                email: email.to_string(),
                contact_id,
                fields,
                list_ids: lists,
                row_ids: vec![row.id],
                notes,
            });
        }
    }
}

/// The guard's verdict on one non-upsert row.
enum DirectPlan {
    Failed(String),
    Skipped(String),
    Already(String),
    Send {
        contact_id: Uuid,
        lists: BTreeSet<Uuid>,
        reason: Option<String>,
    },
}

fn plan_direct(
    op: Op,
    row: &OutboundRow,
    primary: Option<&Primary>,
    input: &GuardInput,
) -> DirectPlan {
    let empty = Map::new();
    let fields = row.fields.as_object().unwrap_or(&empty);
    if !row.fields.is_object() {
        return DirectPlan::Failed("fields must be a JSON object".into());
    }
    let lists: BTreeSet<Uuid> = row.list_ids.iter().copied().collect();
    match op {
        Op::Unsubscribe => {
            if !lists.is_empty() {
                return DirectPlan::Failed(
                    "list_ids must be empty for op unsubscribe (it unsubscribes the contact \
                     from every list)"
                        .into(),
                );
            }
            if let Some(k) = fields.keys().find(|k| *k != "opt_out_reason") {
                return DirectPlan::Failed(format!(
                    "fields.{k}: op unsubscribe takes only fields.opt_out_reason"
                ));
            }
            let reason = match fields.get("opt_out_reason") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.chars().count() <= 255 => Some(s.clone()),
                Some(_) => {
                    return DirectPlan::Failed(
                        "fields.opt_out_reason must be a string of at most 255 characters".into(),
                    )
                }
            };
            match primary {
                None => DirectPlan::Skipped(
                    "no contact with this address in Constant Contact: nothing to unsubscribe"
                        .into(),
                ),
                Some(p) if p.deleted => DirectPlan::Skipped(
                    "deleted in Constant Contact: not unsubscribed (a PUT would revive the \
                     contact)"
                        .into(),
                ),
                Some(p) if p.permission_to_send.as_deref() == Some("unsubscribed") => {
                    DirectPlan::Already("already unsubscribed in Constant Contact".into())
                }
                Some(p) => DirectPlan::Send {
                    contact_id: p.contact_id,
                    lists,
                    reason,
                },
            }
        }
        Op::RemoveFromLists => {
            if !fields.is_empty() {
                return DirectPlan::Failed("op remove_from_lists takes no fields".into());
            }
            if lists.is_empty() {
                return DirectPlan::Failed(format!(
                    "list_ids is empty: name 1 to {MAX_LISTS} lists to remove the contact from"
                ));
            }
            if lists.len() > MAX_LISTS {
                return DirectPlan::Failed(format!(
                    "list_ids has {} lists; at most {MAX_LISTS}",
                    lists.len()
                ));
            }
            if let Some(unknown) = lists.iter().find(|l| !input.known_lists.contains(l)) {
                return DirectPlan::Failed(format!(
                    "list_ids: list {unknown} does not exist in contact_lists (unknown or deleted)"
                ));
            }
            match primary {
                None => DirectPlan::Already(
                    "no contact with this address in Constant Contact: on no list".into(),
                ),
                Some(p) if p.deleted => {
                    DirectPlan::Already("deleted in Constant Contact: on no list".into())
                }
                Some(p) => {
                    let on: BTreeSet<Uuid> = lists.intersection(&p.memberships).copied().collect();
                    if on.is_empty() {
                        DirectPlan::Already(
                            "not on these lists in Constant Contact (read before the write)".into(),
                        )
                    } else {
                        DirectPlan::Send {
                            contact_id: p.contact_id,
                            lists: on,
                            reason: None,
                        }
                    }
                }
            }
        }
        Op::Delete => {
            if !fields.is_empty() || !lists.is_empty() {
                return DirectPlan::Failed("op delete takes no fields and no list_ids".into());
            }
            match primary {
                None => {
                    DirectPlan::Already("no contact with this address in Constant Contact".into())
                }
                Some(p) if p.deleted => {
                    DirectPlan::Already("already deleted in Constant Contact".into())
                }
                Some(p) => DirectPlan::Send {
                    contact_id: p.contact_id,
                    lists,
                    reason: None,
                },
            }
        }
        Op::Upsert => DirectPlan::Failed("internal: upsert is not a direct op".into()),
    }
}

/// A change of a scalar property to exactly the value one of our completed pushes wrote.
fn is_echo(c: &PrimaryChange, echoes: Option<&Vec<Map<String, Value>>>) -> bool {
    let (Some(field), Some(new), Some(echoes)) = (c.field.as_deref(), c.new_value.as_ref(), echoes)
    else {
        return false;
    };
    if !matches!(
        builtin_aspect(field),
        Some(Aspect::Scalar(_)) | Some(Aspect::Birthday)
    ) {
        return false;
    }
    echoes.iter().any(|m| m.get(field) == Some(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn list(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn row(id: i64, email: &str, fields: Value, lists: &[u128]) -> OutboundRow {
        OutboundRow {
            id,
            email: email.into(),
            fields,
            list_ids: lists.iter().map(|l| list(*l)).collect(),
            created_at: t(100),
            op: "upsert".into(),
        }
    }

    /// Everything the plan sends for upserts: imports and PUTs.
    fn sent(p: &GuardPlan) -> Vec<Item> {
        p.items.iter().chain(&p.puts).cloned().collect()
    }

    fn input() -> GuardInput {
        GuardInput {
            known_lists: (1..=60).map(list).collect(),
            custom_fields: catalogue(),
            ..Default::default()
        }
    }

    /// The id of the custom field named `name` in [`catalogue`].
    fn cf(name: &str) -> Uuid {
        catalogue()[name]
    }

    fn catalogue() -> CustomFieldIds {
        ["shoe_size", "x", "a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(n, name)| (name.to_string(), Uuid::from_u128(0xCF00 + n as u128)))
            .collect()
    }

    /// A `custom_fields` array of (name, value) pairs.
    fn cfs(values: &[(&str, &str)]) -> Value {
        Value::Array(
            values
                .iter()
                .map(|(n, v)| json!({"custom_field_id": cf(n).to_string(), "value": v}))
                .collect(),
        )
    }

    fn primary(id: u128, permission: &str, lists: &[u128]) -> Primary {
        Primary {
            contact_id: Uuid::from_u128(id),
            permission_to_send: Some(permission.into()),
            memberships: lists.iter().map(|l| list(*l)).collect(),
            phone_numbers: json!([]),
            street_addresses: json!([]),
            custom_fields: json!([]),
            ..Default::default()
        }
    }

    fn change(at: i64, kind: &str, field: &str, old: Value, new: Value) -> PrimaryChange {
        PrimaryChange {
            at: t(at),
            kind: kind.into(),
            field: Some(field.into()),
            old_value: Some(old),
            new_value: Some(new),
        }
    }

    #[test]
    fn new_contact_is_pushed_with_its_fields_and_lists() {
        let p = plan(
            &[row(
                1,
                " Ann@Example.com ",
                json!({"first_name": "Ann"}),
                &[1, 2],
            )],
            &input(),
        );
        assert_eq!(sent(&p).len(), 1);
        let it = &sent(&p)[0];
        assert_eq!(it.email, "ann@example.com");
        assert_eq!(it.contact_id, None);
        assert_eq!(it.fields["first_name"], "Ann");
        assert_eq!(it.list_ids.len(), 2);
        assert_eq!(it.to_json()["email"], "ann@example.com");
    }

    #[test]
    fn an_unsubscribed_contact_gets_no_list_only_its_fields_through_put() {
        let mut i = input();
        let mut pr = primary(9, "unsubscribed", &[1]);
        pr.opt_out_reason = Some("too many mails".into());
        i.contacts.insert("u@example.com".into(), pr);
        let p = plan(
            &[
                row(1, "u@example.com", json!({}), &[2]),
                row(2, "U@example.com", json!({"first_name": "U"}), &[2]),
                row(3, "U@example.com", json!({"first_name": "U"}), &[]),
            ],
            &i,
        );
        assert!(p.items.is_empty(), "never an import: {:?}", p.items);
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped[1].reason.contains("never re-subscribed"));
        assert!(p.skipped[0].reason.contains("unsubscribed"));
        assert!(p.skipped[0].reason.contains("too many mails"));
        assert_eq!(p.skipped[0].contact_id, Some(Uuid::from_u128(9)));
        assert_eq!(p.puts.len(), 1);
        assert!(p.puts[0].list_ids.is_empty());
        assert_eq!(p.puts[0].fields["first_name"], "U");
        assert_eq!(p.puts[0].row_ids, vec![3]);
    }

    #[test]
    fn invalid_rows_fail_with_a_reason_naming_the_problem() {
        let long_email = format!("{}@example.com", "a".repeat(45));
        let cases: Vec<(OutboundRow, &str)> = vec![
            (row(1, "no-at-sign", json!({}), &[1]), "no '@'"),
            (row(2, &long_email, json!({}), &[1]), "longer than 50"),
            (
                row(3, "a@b.c", json!({"nickname": "x"}), &[1]),
                "fields.nickname",
            ),
            (
                row(4, "a@b.c", json!({"first_name": "x".repeat(51)}), &[1]),
                "fields.first_name has 51",
            ),
            (
                row(5, "a@b.c", json!({"first_name": 3}), &[1]),
                "must be a string",
            ),
            (row(6, "a@b.c", json!({}), &[]), "list_ids is empty"),
            (row(7, "a@b.c", json!({}), &[99]), "does not exist"),
            (
                row(
                    8,
                    "a@b.c",
                    json!({"birthday_month": 13, "birthday_day": 1}),
                    &[1],
                ),
                "birthday_month",
            ),
            (
                row(9, "a@b.c", json!({"birthday_month": 3}), &[1]),
                "together",
            ),
            (row(10, "a@b.c", json!({"first_name": null}), &[1]), "null"),
            (row(11, "a@b.c", json!(["x"]), &[1]), "JSON object"),
            (
                row(12, "a@b.c", json!({"cf:x": "y".repeat(256)}), &[1]),
                "at most 255",
            ),
            (
                row(13, "a@b.c", json!({"email": "other@b.c"}), &[1]),
                "differs",
            ),
            (row(14, "a b@c.d", json!({}), &[1]), "whitespace"),
            (row(15, "a@localhost", json!({}), &[1]), "invalid domain"),
            (row(16, "a@b.c", json!({"first_name": " "}), &[1]), "empty"),
        ];
        for (r, needle) in cases {
            let p = plan(std::slice::from_ref(&r), &input());
            assert_eq!(p.failed.len(), 1, "row {} should fail", r.id);
            assert!(
                p.failed[0].reason.contains(needle),
                "row {}: {:?} should mention {needle:?}",
                r.id,
                p.failed[0].reason
            );
        }
        let cf: Map<String, Value> = (0..26).map(|i| (format!("cf:f{i}"), json!("v"))).collect();
        let p = plan(&[row(1, "a@b.c", Value::Object(cf), &[1])], &input());
        assert!(p.failed[0].reason.contains("26 custom fields"));
        let lists: Vec<u128> = (1..=51).collect();
        let p = plan(&[row(1, "a@b.c", json!({}), &lists)], &input());
        assert!(p.failed[0].reason.contains("51 lists"));
    }

    #[test]
    fn every_documented_property_is_accepted() {
        let mut f = Map::new();
        for (k, _) in STRING_PROPERTIES {
            f.insert((*k).into(), json!("1/2/2000"));
        }
        f.insert("birthday_month".into(), json!(12));
        f.insert("birthday_day".into(), json!(31));
        f.insert("cf:shoe_size".into(), json!("44"));
        f.insert("email".into(), json!("A@b.c"));
        let p = plan(&[row(1, "a@b.c", Value::Object(f), &[1])], &input());
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert!(!sent(&p)[0].fields.contains_key("email"));
    }

    #[test]
    fn a_field_changed_in_the_primary_after_the_row_is_dropped_as_conflict() {
        let mut i = input();
        let mut pr = primary(5, "implicit", &[1]);
        pr.scalars.insert("first_name".into(), json!("Remote"));
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![
                change(150, "updated", "first_name", json!("Old"), json!("Remote")),
                // Before the row: does not matter.
                change(50, "updated", "last_name", json!("A"), json!("B")),
            ],
        );
        let p = plan(
            &[row(
                1,
                "a@b.c",
                json!({"first_name": "Local", "last_name": "L"}),
                &[1],
            )],
            &i,
        );
        assert_eq!(sent(&p).len(), 1);
        assert!(!sent(&p)[0].fields.contains_key("first_name"));
        assert_eq!(sent(&p)[0].fields["last_name"], "L");
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].field, "first_name");
        assert_eq!(p.conflicts[0].local, "Local");
        assert_eq!(p.conflicts[0].primary, "Remote");
        assert!(sent(&p)[0].notes[0].contains("first_name"));
    }

    #[test]
    fn only_conflicting_field_and_no_new_list_means_skipped() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1]));
        i.changes.insert(
            Uuid::from_u128(5),
            vec![change(
                150,
                "updated",
                "first_name",
                json!("Old"),
                json!("Remote"),
            )],
        );
        let p = plan(&[row(1, "a@b.c", json!({"first_name": "Local"}), &[1])], &i);
        assert!(sent(&p).is_empty());
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].reason.contains("nothing left"));
        assert_eq!(p.conflicts.len(), 1);
    }

    #[test]
    fn a_row_constant_contact_already_reflects_is_done_not_skipped() {
        let mut i = input();
        let mut pr = primary(5, "implicit", &[1]);
        pr.scalars.insert("first_name".into(), json!("Same"));
        i.contacts.insert("a@b.c".into(), pr);
        // Our own import (whose answer was lost) created the contact after the row.
        i.changes.insert(
            Uuid::from_u128(5),
            vec![PrimaryChange {
                at: t(150),
                kind: "created".into(),
                field: None,
                old_value: None,
                new_value: None,
            }],
        );
        let p = plan(&[row(1, "a@b.c", json!({"first_name": "Same"}), &[1])], &i);
        assert!(sent(&p).is_empty() && p.skipped.is_empty() && p.conflicts.is_empty());
        assert_eq!(p.already.len(), 1);
        assert!(p.already[0].reason.contains("already"));
    }

    #[test]
    fn our_own_pushed_value_coming_back_is_not_a_conflict() {
        let mut i = input();
        let mut pr = primary(5, "explicit", &[1]);
        pr.scalars.insert("first_name".into(), json!("Pushed"));
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![change(
                150,
                "updated",
                "first_name",
                json!("Old"),
                json!("Pushed"),
            )],
        );
        let mut m = Map::new();
        m.insert("first_name".into(), json!("Pushed"));
        i.pushed.insert("a@b.c".into(), vec![m]);
        let p = plan(&[row(2, "a@b.c", json!({"first_name": "Newer"}), &[1])], &i);
        assert!(p.conflicts.is_empty());
        assert_eq!(sent(&p)[0].fields["first_name"], "Newer");
    }

    #[test]
    fn a_list_left_after_the_row_is_stripped_and_others_kept() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[3]));
        i.changes.insert(
            Uuid::from_u128(5),
            vec![
                change(
                    150,
                    "list_removed",
                    "list_memberships",
                    json!(list(1).to_string()),
                    Value::Null,
                ),
                // Left before the row was queued: the application's add wins.
                change(
                    50,
                    "list_removed",
                    "list_memberships",
                    json!(list(2).to_string()),
                    Value::Null,
                ),
            ],
        );
        let p = plan(&[row(1, "a@b.c", json!({}), &[1, 2])], &i);
        assert_eq!(sent(&p).len(), 1);
        assert_eq!(sent(&p)[0].list_ids, [list(2)].into_iter().collect());
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].field, "list_ids");
        // Only that list: skipped.
        let p = plan(&[row(1, "a@b.c", json!({}), &[1])], &i);
        assert!(sent(&p).is_empty());
        assert!(
            p.skipped[0].reason.contains("not re-added"),
            "{:?}",
            p.skipped
        );
        // With a field left but no list: the field goes out through a PUT, no list.
        let p = plan(&[row(1, "a@b.c", json!({"job_title": "x"}), &[1])], &i);
        assert!(p.items.is_empty());
        assert_eq!(p.puts.len(), 1);
        assert!(p.puts[0].list_ids.is_empty());
        assert!(p.puts[0].notes[0].contains("not re-added"));
    }

    #[test]
    fn a_list_rejoined_after_leaving_is_not_a_conflict() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1]));
        i.changes.insert(
            Uuid::from_u128(5),
            vec![change(
                150,
                "list_removed",
                "list_memberships",
                json!(list(1).to_string()),
                Value::Null,
            )],
        );
        let p = plan(&[row(1, "a@b.c", json!({"job_title": "x"}), &[1])], &i);
        assert!(p.conflicts.is_empty());
        assert_eq!(sent(&p).len(), 1);
    }

    #[test]
    fn phone_and_address_conflicts_are_per_kind() {
        let mut i = input();
        let mut pr = primary(5, "explicit", &[1]);
        pr.phone_numbers = json!([{"kind": "home", "phone_number": "2"}]);
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![
                change(
                    150,
                    "updated",
                    "phone_numbers",
                    json!([{"kind": "home", "phone_number": "1"}]),
                    json!([{"kind": "home", "phone_number": "2"}]),
                ),
                change(
                    160,
                    "updated",
                    "street_addresses",
                    json!([]),
                    json!([{"kind": "work", "city": "Paris"}]),
                ),
            ],
        );
        let p = plan(
            &[row(
                1,
                "a@b.c",
                json!({"home_phone": "3", "work_phone": "4", "work_city": "Rome", "city": "Oslo"}),
                &[1],
            )],
            &i,
        );
        let f = &sent(&p)[0].fields;
        assert!(!f.contains_key("home_phone"));
        assert!(f.contains_key("work_phone"));
        assert!(!f.contains_key("work_city"));
        assert!(f.contains_key("city"));
        assert_eq!(p.conflicts.len(), 2);
    }

    #[test]
    fn an_unknown_custom_field_name_fails_naming_it() {
        let p = plan(
            &[
                row(1, "a@b.c", json!({"cf:shoe_size": "44"}), &[1]),
                row(
                    2,
                    "b@b.c",
                    json!({"cf:hat_size": "7", "first_name": "B"}),
                    &[1],
                ),
                row(3, "c@b.c", json!({"cf:hat": "7", "cf:glove": "8"}), &[1]),
            ],
            &input(),
        );
        assert_eq!(p.items.len(), 1, "{:?}", p.failed);
        assert_eq!(sent(&p)[0].row_ids, vec![1]);
        assert_eq!(p.failed.len(), 2);
        assert_eq!(
            p.failed[0].reason,
            "fields.cf:hat_size: no custom field named hat_size in Constant Contact's catalogue"
        );
        assert!(
            p.failed[1].reason.contains("fields.cf:hat")
                && p.failed[1].reason.contains("fields.cf:glove")
                && p.failed[1].reason.contains("named glove, hat"),
            "{:?}",
            p.failed[1]
        );
        // An empty catalogue knows no name at all.
        let mut i = input();
        i.custom_fields.clear();
        let p = plan(&[row(1, "a@b.c", json!({"cf:shoe_size": "44"}), &[1])], &i);
        assert!(p.failed[0].reason.contains("shoe_size"), "{:?}", p.failed);
    }

    #[test]
    fn a_change_to_one_custom_field_drops_only_that_cf_property() {
        let mut i = input();
        let mut pr = primary(5, "explicit", &[1]);
        pr.custom_fields = cfs(&[("a", "9"), ("b", "2"), ("c", "3")]);
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![
                change(
                    150,
                    "updated",
                    "custom_fields",
                    cfs(&[("a", "1"), ("b", "2")]),
                    cfs(&[("a", "9"), ("b", "2"), ("c", "3")]),
                ),
                // Before the row was queued: the row's value wins.
                change(50, "updated", "custom_fields", cfs(&[]), cfs(&[("d", "0")])),
            ],
        );
        let p = plan(
            &[row(
                1,
                "a@b.c",
                // cf:c changed to exactly the row's value: nothing to push, no conflict.
                json!({"cf:a": "5", "cf:b": "6", "cf:c": "3", "cf:d": "7", "last_name": "L"}),
                &[1],
            )],
            &i,
        );
        let f = &sent(&p)[0].fields;
        assert!(!f.contains_key("cf:a") && !f.contains_key("cf:c"), "{f:?}");
        assert_eq!(f["cf:b"], "6");
        assert_eq!(f["cf:d"], "7");
        assert_eq!(f["last_name"], "L");
        assert_eq!(p.conflicts.len(), 1, "{:?}", p.conflicts);
        assert_eq!(p.conflicts[0].field, "cf:a");
        assert_eq!(p.conflicts[0].local, "5");
        assert_eq!(p.conflicts[0].primary, "9");
        assert!(sent(&p)[0].notes[0].contains("cf:a"));
    }

    #[test]
    fn a_contact_first_seen_after_the_row_keeps_only_the_custom_fields_it_has() {
        let mut i = input();
        let mut pr = primary(5, "explicit", &[]);
        pr.custom_fields = cfs(&[("a", "theirs")]);
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![PrimaryChange {
                at: t(150),
                kind: "created".into(),
                field: None,
                old_value: None,
                new_value: None,
            }],
        );
        let p = plan(
            &[row(
                1,
                "a@b.c",
                json!({"cf:a": "mine", "cf:b": "mine"}),
                &[1],
            )],
            &i,
        );
        let f = &sent(&p)[0].fields;
        assert!(!f.contains_key("cf:a"));
        assert_eq!(f["cf:b"], "mine");
        assert_eq!(p.conflicts[0].primary, "theirs");
    }

    #[test]
    fn holds_compares_a_custom_field_value_by_id() {
        let cat = catalogue();
        let mut p = primary(5, "explicit", &[1]);
        p.custom_fields = cfs(&[("a", " 44 "), ("b", "x")]);
        assert_eq!(holds(&p, "cf:a", &json!("44"), &cat), Some(true));
        assert_eq!(holds(&p, "cf:a", &json!("45"), &cat), Some(false));
        assert_eq!(holds(&p, "cf:b", &json!("44"), &cat), Some(false));
        // Known but without a value on the contact: not held.
        assert_eq!(holds(&p, "cf:c", &json!("44"), &cat), Some(false));
        // Not in the catalogue: cannot be told.
        assert_eq!(holds(&p, "cf:zzz", &json!("44"), &cat), None);
        // A select-type value given as choice ids only: cannot be told either.
        p.custom_fields = json!([{"custom_field_id": cf("d").to_string(), "choice_ids": [3]}]);
        assert_eq!(holds(&p, "cf:d", &json!("Apple"), &cat), None);
    }

    #[test]
    fn changed_since_is_per_custom_field() {
        let cat = catalogue();
        let cs = [change(
            150,
            "updated",
            "custom_fields",
            cfs(&[("a", "1"), ("b", "2")]),
            cfs(&[("a", "1"), ("b", "3")]),
        )];
        assert!(changed_since(&cs, t(100), "cf:b", &cat));
        assert!(!changed_since(&cs, t(100), "cf:a", &cat));
        assert!(!changed_since(&cs, t(200), "cf:b", &cat));
        assert!(!changed_since(&cs, t(100), "cf:zzz", &cat));
        assert!(!changed_since(&cs, t(100), "first_name", &cat));
    }

    #[test]
    fn birthday_fields_go_together() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1]));
        i.changes.insert(
            Uuid::from_u128(5),
            vec![change(150, "updated", "birthday_day", json!(1), json!(2))],
        );
        let p = plan(
            &[row(
                1,
                "a@b.c",
                json!({"birthday_month": 3, "birthday_day": 4, "last_name": "L"}),
                &[1],
            )],
            &i,
        );
        let f = &sent(&p)[0].fields;
        assert!(!f.contains_key("birthday_month") && !f.contains_key("birthday_day"));
    }

    #[test]
    fn a_contact_first_seen_after_the_row_keeps_its_values() {
        let mut i = input();
        let mut pr = primary(5, "explicit", &[]);
        pr.scalars.insert("first_name".into(), json!("Theirs"));
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![PrimaryChange {
                at: t(150),
                kind: "created".into(),
                field: None,
                old_value: None,
                new_value: None,
            }],
        );
        let p = plan(
            &[row(
                1,
                "a@b.c",
                json!({"first_name": "Mine", "last_name": "L"}),
                &[1],
            )],
            &i,
        );
        assert_eq!(sent(&p)[0].fields.len(), 1);
        assert_eq!(sent(&p)[0].fields["last_name"], "L");
    }

    #[test]
    fn deleted_after_the_row_is_skipped() {
        let mut i = input();
        let mut pr = primary(5, "explicit", &[]);
        pr.deleted = true;
        i.contacts.insert("a@b.c".into(), pr);
        i.changes.insert(
            Uuid::from_u128(5),
            vec![change(
                150,
                "deleted",
                "deleted_at",
                Value::Null,
                json!("2026-01-01"),
            )],
        );
        let p = plan(&[row(1, "a@b.c", json!({}), &[1])], &i);
        assert!(p.skipped[0].reason.contains("deleted"));
    }

    #[test]
    fn rows_of_one_address_coalesce_later_values_win() {
        let p = plan(
            &[
                row(
                    1,
                    "a@b.c",
                    json!({"first_name": "A", "last_name": "X"}),
                    &[1],
                ),
                row(2, "b@b.c", json!({}), &[1]),
                row(3, "A@b.c", json!({"first_name": "B"}), &[2]),
            ],
            &input(),
        );
        assert_eq!(sent(&p).len(), 2);
        let a = &sent(&p)[0];
        assert_eq!(a.row_ids, vec![1, 3]);
        assert_eq!(a.fields["first_name"], "B");
        assert_eq!(a.fields["last_name"], "X");
        assert_eq!(a.list_ids.len(), 2);
    }

    #[test]
    fn addresses_in_flight_are_deferred() {
        let mut i = input();
        i.in_flight.insert("a@b.c".into());
        let p = plan(&[row(1, "a@b.c", json!({}), &[1])], &i);
        assert_eq!(p.deferred.len(), 1);
        assert!(sent(&p).is_empty());
    }

    fn op_row(id: i64, email: &str, op: &str, fields: Value, lists: &[u128]) -> OutboundRow {
        OutboundRow {
            op: op.into(),
            ..row(id, email, fields, lists)
        }
    }

    #[test]
    fn an_import_names_only_the_lists_the_contact_is_not_on_now() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1, 2]));
        let p = plan(
            &[row(1, "a@b.c", json!({"job_title": "x"}), &[1, 2, 3])],
            &i,
        );
        assert_eq!(p.items.len(), 1);
        assert_eq!(sent(&p)[0].list_ids, [list(3)].into_iter().collect());
        // Already on every list: a field-only PUT.
        let p = plan(&[row(1, "a@b.c", json!({"job_title": "x"}), &[1])], &i);
        assert!(p.items.is_empty());
        assert_eq!(p.puts.len(), 1);
        // No list at all: a PUT too.
        let p = plan(&[row(1, "a@b.c", json!({"job_title": "x"}), &[])], &i);
        assert_eq!(p.puts.len(), 1);
    }

    #[test]
    fn a_brand_new_contact_needs_a_list_and_cannot_clear() {
        let p = plan(&[row(1, "n@b.c", json!({"job_title": "x"}), &[])], &input());
        assert!(
            p.failed[0]
                .reason
                .contains("brand-new contact needs a list"),
            "{:?}",
            p.failed
        );
        let p = plan(
            &[row(1, "n@b.c", json!({"job_title": null}), &[1])],
            &input(),
        );
        assert!(
            p.failed[0].reason.contains("cannot clear"),
            "{:?}",
            p.failed
        );
        let p = plan(&[row(1, "n@b.c", json!({}), &[])], &input());
        assert!(
            p.failed[0].reason.contains("nothing to push"),
            "{:?}",
            p.failed
        );
    }

    #[test]
    fn null_clears_through_put_but_never_rides_on_an_import() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1]));
        let p = plan(&[row(1, "a@b.c", json!({"job_title": null}), &[])], &i);
        assert_eq!(p.puts[0].fields["job_title"], Value::Null);
        let p = plan(&[row(1, "a@b.c", json!({"job_title": null}), &[2])], &i);
        assert!(p.failed[0].reason.contains("its own row"), "{:?}", p.failed);
        let p = plan(&[row(1, "a@b.c", json!({"street2": null}), &[])], &i);
        assert!(
            p.failed[0].reason.contains("cannot be cleared"),
            "{:?}",
            p.failed
        );
    }

    #[test]
    fn direct_ops_are_planned_from_what_constant_contact_holds() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1, 2]));
        let mut gone = primary(6, "explicit", &[]);
        gone.deleted = true;
        i.contacts.insert("d@b.c".into(), gone);
        i.contacts
            .insert("u@b.c".into(), primary(7, "unsubscribed", &[]));
        let p = plan(
            &[
                op_row(1, "a@b.c", "remove_from_lists", json!({}), &[2, 3]),
                op_row(2, "u@b.c", "unsubscribe", json!({}), &[]),
                op_row(3, "d@b.c", "delete", json!({}), &[]),
                op_row(4, "x@b.c", "unsubscribe", json!({}), &[]),
                op_row(5, "a@b.c", "frobnicate", json!({}), &[]),
                op_row(6, "a@b.c", "delete", json!({}), &[]),
                op_row(7, "a@b.c", "remove_from_lists", json!({}), &[1]),
            ],
            &i,
        );
        assert_eq!(p.directs.len(), 1);
        let d = &p.directs[0];
        assert_eq!((d.op, d.row_ids.clone()), (Op::RemoveFromLists, vec![1, 7]));
        // Only the lists the contact is on now.
        assert_eq!(d.list_ids, [list(1), list(2)].into_iter().collect());
        let already: Vec<i64> = p.already.iter().map(|t| t.row_id).collect();
        assert_eq!(already, vec![2, 3]);
        assert_eq!(p.skipped[0].row_id, 4);
        assert!(
            p.failed[0].reason.contains("\"frobnicate\""),
            "{:?}",
            p.failed
        );
        // A delete after a removal of the same address waits for the next run.
        assert_eq!(p.deferred[0].row_id, 6);
        assert!(p.deferred[0].reason.contains("waits for row 1"));
    }

    #[test]
    fn direct_ops_refuse_what_they_cannot_carry() {
        let mut i = input();
        i.contacts
            .insert("a@b.c".into(), primary(5, "explicit", &[1]));
        for (op, f, l, why) in [
            ("unsubscribe", json!({}), vec![1], "list_ids must be empty"),
            (
                "unsubscribe",
                json!({"first_name": "x"}),
                vec![],
                "only fields.opt_out_reason",
            ),
            ("remove_from_lists", json!({}), vec![], "list_ids is empty"),
            ("remove_from_lists", json!({}), vec![99], "does not exist"),
            (
                "delete",
                json!({"first_name": "x"}),
                vec![],
                "takes no fields",
            ),
        ] {
            let p = plan(&[op_row(1, "a@b.c", op, f, &l)], &i);
            assert!(
                p.failed.len() == 1 && p.failed[0].reason.contains(why),
                "{op}: {:?}",
                p.failed
            );
        }
        let p = plan(
            &[op_row(
                1,
                "a@b.c",
                "unsubscribe",
                json!({"opt_out_reason": "by phone"}),
                &[],
            )],
            &i,
        );
        assert_eq!(p.directs[0].opt_out_reason.as_deref(), Some("by phone"));
    }

    fn arb_rows() -> impl Strategy<Value = Vec<OutboundRow>> {
        let one = (
            0usize..8,
            prop::collection::vec(1u128..8, 0..4),
            prop::option::of("[a-z]{0,3}"),
            0i64..300,
            any::<bool>(),
            prop::sample::select(vec![
                "upsert",
                "upsert",
                "upsert",
                "unsubscribe",
                "remove_from_lists",
                "delete",
                "bogus",
            ]),
        );
        prop::collection::vec(one, 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (e, lists, name, created, bad, op))| {
                    let mut f = Map::new();
                    if let Some(n) = name {
                        f.insert("first_name".into(), json!(n));
                    }
                    let (mut f, lists) = match op {
                        // Mostly well-formed direct ops, sometimes not.
                        "unsubscribe" | "delete" if !bad => (Map::new(), vec![]),
                        "remove_from_lists" if !bad => (Map::new(), lists),
                        _ => (f, lists),
                    };
                    if bad {
                        f.insert("nick".into(), json!("x"));
                    }
                    OutboundRow {
                        id: i as i64 + 1,
                        email: format!("c{e}@example.com"),
                        fields: Value::Object(f),
                        list_ids: lists.into_iter().map(list).collect(),
                        created_at: t(created),
                        op: op.into(),
                    }
                })
                .collect()
        })
    }

    fn arb_input() -> impl Strategy<Value = GuardInput> {
        let contact = (
            prop::option::of(prop::sample::select(vec![
                "explicit",
                "implicit",
                "unsubscribed",
            ])),
            prop::collection::vec(1u128..8, 0..3),
            prop::collection::vec((0i64..300, 0u8..3, 1u128..8), 0..4),
        );
        (
            prop::collection::vec(contact, 8),
            prop::collection::vec(0usize..8, 0..2),
        )
            .prop_map(|(contacts, flying)| {
                let mut i = GuardInput {
                    known_lists: (1..=6).map(list).collect(),
                    ..Default::default()
                };
                for (n, (perm, lists, changes)) in contacts.into_iter().enumerate() {
                    let Some(perm) = perm else { continue };
                    let id = Uuid::from_u128(1000 + n as u128);
                    let mut pr = primary(1000 + n as u128, perm, &lists);
                    pr.contact_id = id;
                    i.contacts.insert(format!("c{n}@example.com"), pr);
                    let cs = changes
                        .into_iter()
                        .map(|(at, k, l)| match k {
                            0 => change(at, "updated", "first_name", json!("a"), json!("b")),
                            1 => change(
                                at,
                                "list_removed",
                                "list_memberships",
                                json!(list(l).to_string()),
                                Value::Null,
                            ),
                            _ => change(at, "created", "x", Value::Null, Value::Null),
                        })
                        .collect();
                    i.changes.insert(id, cs);
                }
                for f in flying {
                    i.in_flight.insert(format!("c{f}@example.com"));
                }
                i
            })
    }

    /// A contact's values of the custom fields a..d (None: no value).
    fn arb_cf_values() -> impl Strategy<Value = Vec<Option<String>>> {
        prop::collection::vec(prop::option::of("[a-c]"), 4)
    }

    fn cf_array(values: &[Option<String>]) -> Value {
        let pairs: Vec<(&str, &str)> = ["a", "b", "c", "d"]
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.as_deref().map(|v| (*n, v)))
            .collect();
        cfs(&pairs)
    }

    proptest! {
        #[test]
        fn a_cf_property_is_dropped_exactly_when_its_own_field_changed(
            old in arb_cf_values(),
            new in arb_cf_values(),
        ) {
            let mut i = input();
            let mut pr = primary(5, "explicit", &[1]);
            pr.custom_fields = cf_array(&new);
            i.contacts.insert("a@b.c".into(), pr);
            i.changes.insert(
                Uuid::from_u128(5),
                vec![change(150, "updated", "custom_fields", cf_array(&old), cf_array(&new))],
            );
            // Local values never equal the primary's ("L" is not in [a-c]).
            let fields = json!({"cf:a": "L", "cf:b": "L", "cf:c": "L", "cf:d": "L", "last_name": "L"});
            let p = plan(&[row(1, "a@b.c", fields, &[1])], &i);
            let all = sent(&p);
            let item = &all[0];
            for (n, name) in ["a", "b", "c", "d"].iter().enumerate() {
                let k = format!("cf:{name}");
                let changed = old[n] != new[n];
                prop_assert_eq!(item.fields.contains_key(&k), !changed, "{}", k);
                prop_assert_eq!(p.conflicts.iter().any(|c| c.field == k), changed, "{}", k);
                prop_assert_eq!(
                    changed_since(&i.changes[&Uuid::from_u128(5)], t(100), &k, &i.custom_fields),
                    changed
                );
            }
        }
    }

    /// Cases of the guard's laws: ten thousand generated queues against generated stores.
    const GUARD_CASES: u32 = 10_000;

    /// Every row ends in exactly one place of the plan.
    fn every_row_ends_in_exactly_one_place(
        rows: &[OutboundRow],
        input: &GuardInput,
    ) -> Result<(), TestCaseError> {
        let p = plan(rows, input);
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for id in sent(&p)
            .iter()
            .flat_map(|i| i.row_ids.clone())
            .chain(p.directs.iter().flat_map(|d| d.row_ids.clone()))
            .chain(p.skipped.iter().map(|t| t.row_id))
            .chain(p.failed.iter().map(|t| t.row_id))
            .chain(p.deferred.iter().map(|t| t.row_id))
            .chain(p.already.iter().map(|t| t.row_id))
        {
            *seen.entry(id).or_default() += 1;
        }
        prop_assert_eq!(seen.len(), rows.len());
        prop_assert!(seen.values().all(|n| *n == 1));
        Ok(())
    }

    /// No unsubscribed or in-flight address is planned into an import or a PUT; imports
    /// name 1..=50 known lists the contact is not on; one item and one kind of op per address.
    fn no_unsubscribed_address_is_ever_an_item(
        rows: &[OutboundRow],
        input: &GuardInput,
    ) -> Result<(), TestCaseError> {
        let p = plan(rows, input);
        for it in &p.items {
            let c = input.contacts.get(&it.email);
            prop_assert_ne!(
                c.and_then(|c| c.permission_to_send.as_deref()),
                Some("unsubscribed")
            );
            prop_assert!(!input.in_flight.contains(&it.email));
            prop_assert!(!it.list_ids.is_empty() && it.list_ids.len() <= MAX_LISTS);
            prop_assert!(it.list_ids.iter().all(|l| input.known_lists.contains(l)));
            // An import names only lists the contact is not on now.
            if let Some(c) = c.filter(|c| !c.deleted) {
                prop_assert!(it.list_ids.is_disjoint(&c.memberships));
            }
        }
        for it in &p.puts {
            // A PUT never touches lists, and only for a live contact Constant Contact has.
            prop_assert!(it.list_ids.is_empty() && !it.fields.is_empty());
            prop_assert!(input.contacts.get(&it.email).is_some_and(|c| !c.deleted));
            prop_assert!(!input.in_flight.contains(&it.email));
        }
        // One item per address, and one kind of op per address.
        let all = sent(&p);
        let emails: HashSet<&str> = all.iter().map(|i| i.email.as_str()).collect();
        prop_assert_eq!(emails.len(), all.len());
        for d in &p.directs {
            prop_assert!(!emails.contains(d.email.as_str()));
            prop_assert!(input.contacts.get(&d.email).is_some_and(|c| !c.deleted));
        }
        Ok(())
    }

    /// A list the contact left is re-added only by a row queued after the leave; a field
    /// changed in Constant Contact is overwritten only by a row queued after the change.
    fn no_list_left_in_the_primary_after_the_row_is_re_added(
        rows: &[OutboundRow],
        input: &GuardInput,
    ) -> Result<(), TestCaseError> {
        let p = plan(rows, input);
        for it in &sent(&p) {
            let Some(pr) = input.contacts.get(&it.email) else {
                continue;
            };
            let mine: Vec<&OutboundRow> =
                rows.iter().filter(|r| it.row_ids.contains(&r.id)).collect();
            for c in input.changes.get(&pr.contact_id).into_iter().flatten() {
                if c.kind == "list_removed" {
                    let l =
                        Uuid::parse_str(c.old_value.as_ref().unwrap().as_str().unwrap()).unwrap();
                    if it.list_ids.contains(&l) && !pr.memberships.contains(&l) {
                        // Only a row queued after the removal may add it back.
                        prop_assert!(mine
                            .iter()
                            .any(|r| r.created_at >= c.at && r.list_ids.contains(&l)));
                    }
                }
                if c.kind == "updated" && it.fields.contains_key("first_name") {
                    prop_assert!(mine
                        .iter()
                        .any(|r| r.created_at >= c.at && r.fields.get("first_name").is_some()));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: GUARD_CASES, ..ProptestConfig::default() })]

        /// The three laws above, on the same generated queue and store.
        #[test]
        fn the_guard_laws_hold_on_generated_queues(rows in arb_rows(), input in arb_input()) {
            every_row_ends_in_exactly_one_place(&rows, &input)?;
            no_unsubscribed_address_is_ever_an_item(&rows, &input)?;
            no_list_left_in_the_primary_after_the_row_is_re_added(&rows, &input)?;
        }
    }
}
