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
