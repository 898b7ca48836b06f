//! The shapes the core speaks about contacts: a row as the store keeps it, an incoming
//! contact from Constant Contact, and what the store holds.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use uuid::Uuid;

/// A contact as the local store keeps it (the `contacts` columns).
#[derive(Debug, Clone, PartialEq)]
pub struct ContactRow {
    pub contact_id: Uuid,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub job_title: Option<String>,
    pub company_name: Option<String>,
    pub birthday_month: Option<i16>,
    pub birthday_day: Option<i16>,
    pub anniversary: Option<String>,
    pub permission_to_send: Option<String>,
    pub opt_in_source: Option<String>,
    pub opt_in_date: Option<DateTime<Utc>>,
    pub opt_out_source: Option<String>,
    pub opt_out_date: Option<DateTime<Utc>>,
    pub opt_out_reason: Option<String>,
    pub confirm_status: Option<String>,
    pub email_updated_at: Option<DateTime<Utc>>,
    pub custom_fields: Value,
    pub phone_numbers: Value,
    pub street_addresses: Value,
    pub taggings: Value,
    pub create_source: Option<String>,
    pub update_source: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<NaiveDate>,
    /// The four `jsonb` columns' text as Constant Contact sent it, when it did.
    pub jsonb_text: JsonbText,
}

/// The JSON text of a row's four `jsonb` columns (`custom_fields`, `phone_numbers`,
/// `street_addresses`, `taggings`, in that order) as it came from Constant Contact, kept
/// beside their values so that storing a new contact sends the text instead of serializing
/// the values again (that serializing was a third of ccsync's own work per contact stored).
///
/// Only the decoder of API answers sets it, from the text it parsed the values from. Whoever
/// changes one of the four values afterwards must clear it (`sanitize` does when it removes
/// NULs); debug builds check at every store that text and values agree. It is not part of
/// the row's value: rows compare equal whatever it holds.
#[derive(Debug, Clone, Default)]
pub struct JsonbText(pub Option<Box<[Box<serde_json::value::RawValue>; 4]>>);

impl PartialEq for JsonbText {
    fn eq(&self, _: &JsonbText) -> bool {
        true
    }
}

/// An incoming contact and, when the page included them, its list memberships.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub row: ContactRow,
    pub memberships: Option<BTreeSet<Uuid>>,
}

/// What the store holds for one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub row: ContactRow,
    pub memberships: BTreeSet<Uuid>,
}
