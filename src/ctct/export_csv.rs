//! The CSV of a contact export (`GET /contact_exports/{id}`), read into the API's contact
//! shape so that it is applied through the same merge as a page.
//!
//! Its columns are only partly documented: the export guide lists field names (`first_name`,
//! `email_address`, `email_permission`, `created_at`, `updated_at`, ...) and says custom
//! fields come too; the spec lists none, and neither names a `contact_id` column. Without
//! one a row cannot be keyed to a contact (addresses change; the store is keyed by id), so
//! [`Columns::from_header`] refuses such a file and the caller pages instead. Strict on
//! purpose: a value it cannot read (an unknown permission, a bad id or date) refuses the
//! whole file ([`Columns::contact`]), since a guessed permission could re-subscribe someone.
//!
//! What a row carries: the core fields, the address and its permission with the opt-in and
//! opt-out details, one phone number and one street address (without kinds), custom fields
//! by name, `created_at` and `updated_at`. What it does not: `deleted_at` (an export of all
//! contacts may list deleted ones as if they were live: the caller reads the deleted
//! contacts apart), memberships (one export per list gives them), taggings, sources,
//! `confirm_status`, phone and address kinds. Those come with each contact's next change.

use std::collections::HashMap;

use serde_json::{json, Value};
use uuid::Uuid;

use super::dto::{parse_datetime, Contact, EmailAddress};

/// The permissions a row may state, as the API spells them.
const PERMISSIONS: &[&str] = &[
    "implicit",
    "explicit",
    "pending_confirmation",
    "unsubscribed",
    "temp_hold",
    "not_set",
];

/// Why an export cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("the export has no contact_id column (the export guide names none)")]
    NoContactId,
    #[error("the export has no {0} column")]
    Missing(&'static str),
    #[error("row {row}: {reason}")]
    Row { row: u64, reason: String },
}

/// Where each known column is in a file.
#[derive(Debug, Clone)]
pub struct Columns {
    index: HashMap<&'static str, usize>,
    /// (column, custom_field_id) of the custom field columns.
    custom: Vec<(usize, Uuid)>,
}

/// The export guide's field names ccsync reads.
const KNOWN: &[&str] = &[
    "contact_id",
    "email_address",
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "phone_number",
    "street",
    "city",
    "state",
    "zip",
    "country",
    "anniversary",
    "birthday_month",
    "birthday_day",
    "email_permission",
    "email_optin_source",
    "email_optin_date",
    "email_optout_source",
    "email_optout_date",
    "email_optout_reason",
    "created_at",
    "updated_at",
];

impl Columns {
    /// The columns of `header`. `custom_fields` maps the account's custom field names to
    /// their ids; a column named like one (or `cf:<name>`) is read as that field.
    /// `needs_email`: a contacts export must carry the address and the permission; a
    /// membership export needs only the id.
    pub fn from_header(
        header: &csv::StringRecord,
        custom_fields: &HashMap<String, Uuid>,
        needs_email: bool,
    ) -> Result<Columns, Unusable> {
        let mut index = HashMap::new();
        let mut custom = Vec::new();
        for (i, name) in header.iter().enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}');
            if let Some(k) = KNOWN.iter().find(|k| k.eq_ignore_ascii_case(name)) {
                index.entry(*k).or_insert(i);
            } else if let Some(id) = custom_fields
                .get(name)
                .or_else(|| name.strip_prefix("cf:").and_then(|n| custom_fields.get(n)))
            {
                custom.push((i, *id));
            }
        }
        if !index.contains_key("contact_id") {
            return Err(Unusable::NoContactId);
        }
        if needs_email {
            for k in ["email_address", "email_permission"] {
                if !index.contains_key(k) {
                    return Err(Unusable::Missing(k));
                }
            }
        }
        Ok(Columns { index, custom })
    }

    fn get<'r>(&self, r: &'r csv::StringRecord, k: &str) -> Option<&'r str> {
        let v = r.get(*self.index.get(k)?)?.trim();
        (!v.is_empty()).then_some(v)
    }

    fn text(&self, r: &csv::StringRecord, k: &str) -> Option<String> {
        self.get(r, k).map(str::to_string)
    }

    fn time(
        &self,
        r: &csv::StringRecord,
        k: &'static str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        match self.get(r, k) {
            None => Ok(None),
            Some(v) => parse_datetime(v)
                .map(Some)
                .ok_or_else(|| format!("{k} {v:?} is not a date-time")),
        }
    }

    fn small_int(&self, r: &csv::StringRecord, k: &'static str) -> Result<Option<i16>, String> {
        match self.get(r, k) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{k} {v:?} is not a number")),
        }
    }

    /// The row's contact id.
    pub fn contact_id(&self, r: &csv::StringRecord) -> Result<Uuid, String> {
        let v = self.get(r, "contact_id").ok_or("no contact_id")?;
        Uuid::parse_str(v).map_err(|_| format!("contact_id {v:?} is not a UUID"))
    }

    /// The row as the API's contact (memberships unknown: `None`, so the merge leaves
    /// them alone).
    pub fn contact(&self, r: &csv::StringRecord) -> Result<Contact, String> {
        let contact_id = self.contact_id(r)?;
        let address = self.text(r, "email_address").ok_or("no email_address")?;
        let permission = match self.get(r, "email_permission") {
            None => return Err("no email_permission".into()),
            Some(p) => {
                permission(p).ok_or_else(|| format!("email_permission {p:?} is not known"))?
            }
        };
        let email = EmailAddress {
            address: Some(address),
            permission_to_send: Some(permission.to_string()),
            created_at: None,
            updated_at: None,
            opt_in_source: self.text(r, "email_optin_source"),
            opt_in_date: self.time(r, "email_optin_date")?,
            opt_out_source: self.text(r, "email_optout_source"),
            opt_out_date: self.time(r, "email_optout_date")?,
            opt_out_reason: self.text(r, "email_optout_reason"),
            confirm_status: None,
        };
        let phone = self
            .text(r, "phone_number")
            .map(|p| json!([{ "phone_number": p }]));
        let mut address = serde_json::Map::new();
        for (col, key) in [
            ("street", "street"),
            ("city", "city"),
            ("state", "state"),
            ("zip", "postal_code"),
            ("country", "country"),
        ] {
            if let Some(v) = self.text(r, col) {
                address.insert(key.into(), Value::String(v));
            }
        }
        let custom: Vec<Value> = self
            .custom
            .iter()
            .filter_map(|(i, id)| {
                let v = r.get(*i)?.trim();
                (!v.is_empty()).then(|| json!({"custom_field_id": id, "value": v}))
            })
            .collect();
        Ok(Contact {
            contact_id,
            email_address: Some(email),
            first_name: self.text(r, "first_name"),
            last_name: self.text(r, "last_name"),
            job_title: self.text(r, "job_title"),
            company_name: self.text(r, "company_name"),
            birthday_month: self.small_int(r, "birthday_month")?,
            birthday_day: self.small_int(r, "birthday_day")?,
            anniversary: self.text(r, "anniversary"),
            create_source: None,
            update_source: None,
            created_at: self.time(r, "created_at")?,
            updated_at: self.time(r, "updated_at")?,
            deleted_at: None,
            custom_fields: Some(raw(&Value::Array(custom))?),
            list_memberships: None,
            phone_numbers: phone.as_ref().map(raw).transpose()?,
            street_addresses: (!address.is_empty())
                .then(|| raw(&json!([Value::Object(address)])))
                .transpose()?,
            taggings: None,
        })
    }
}

/// A column's value as the JSON text a contact carries it in.
fn raw(v: &Value) -> Result<Box<serde_json::value::RawValue>, String> {
    serde_json::value::to_raw_value(v).map_err(|e| format!("cannot encode a column: {e}"))
}

/// A permission as the API spells it, from the forms an export may write (`Implicit`,
/// `pending confirmation`, `Pending-Confirmation`); `None` when it is none of them.
pub fn permission(v: &str) -> Option<&'static str> {
    let norm: String = v
        .trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    PERMISSIONS.iter().find(|p| **p == norm).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    fn fields() -> HashMap<String, Uuid> {
        HashMap::from([("shoe_size".to_string(), Uuid::from_u128(9))])
    }

    #[test]
    fn a_file_without_contact_id_is_refused() {
        let h = rec(&["email_address", "email_permission", "first_name"]);
        assert_eq!(
            Columns::from_header(&h, &fields(), true).unwrap_err(),
            Unusable::NoContactId
        );
        let h = rec(&["contact_id", "first_name"]);
        assert_eq!(
            Columns::from_header(&h, &fields(), true).unwrap_err(),
            Unusable::Missing("email_address")
        );
        assert!(Columns::from_header(&h, &fields(), false).is_ok());
    }

    #[test]
    fn a_row_reads_into_the_contact_shape() {
        let h = rec(&[
            "\u{feff}contact_id",
            "email_address",
            "email_permission",
            "first_name",
            "zip",
            "phone_number",
            "cf:shoe_size",
            "updated_at",
            "email_optout_date",
            "unknown_column",
        ]);
        let cols = Columns::from_header(&h, &fields(), true).unwrap();
        let id = Uuid::from_u128(1);
        let r = rec(&[
            &id.to_string(),
            "A@x.com",
            "Unsubscribed",
            "Ann",
            "02134",
            "555",
            "44",
            "2026-01-02T03:04:05.000Z",
            "2026-01-01T00:00:00Z",
            "x",
        ]);
        let c = cols.contact(&r).unwrap();
        assert_eq!(c.contact_id, id);
        let e = c.email_address.as_ref().unwrap();
        assert_eq!(e.permission_to_send.as_deref(), Some("unsubscribed"));
        assert!(e.opt_out_date.is_some());
        assert_eq!(c.first_name.as_deref(), Some("Ann"));
        assert_eq!(c.last_name, None);
        let value = |r: &Option<Box<serde_json::value::RawValue>>| -> Option<Value> {
            r.as_ref().map(|r| serde_json::from_str(r.get()).unwrap())
        };
        assert_eq!(
            value(&c.custom_fields),
            Some(json!([{"custom_field_id": Uuid::from_u128(9), "value": "44"}]))
        );
        assert_eq!(
            value(&c.street_addresses),
            Some(json!([{"postal_code": "02134"}]))
        );
        assert_eq!(
            value(&c.phone_numbers),
            Some(json!([{"phone_number": "555"}]))
        );
        assert!(c.list_memberships.is_none() && c.deleted_at.is_none());
        assert!(c.updated_at.is_some());
    }

    #[test]
    fn unreadable_values_refuse_the_row() {
        let h = rec(&[
            "contact_id",
            "email_address",
            "email_permission",
            "updated_at",
        ]);
        let cols = Columns::from_header(&h, &HashMap::new(), true).unwrap();
        let id = Uuid::from_u128(1).to_string();
        assert!(cols.contact(&rec(&[&id, "a@x.com", "active", ""])).is_err());
        assert!(cols
            .contact(&rec(&["nope", "a@x.com", "implicit", ""]))
            .is_err());
        assert!(cols
            .contact(&rec(&[&id, "a@x.com", "implicit", "yesterday"]))
            .is_err());
        assert!(cols.contact(&rec(&[&id, "", "implicit", ""])).is_err());
        assert!(cols.contact(&rec(&[&id, "a@x.com", "", ""])).is_err());
        assert!(cols
            .contact(&rec(&[&id, "a@x.com", "Pending Confirmation", ""]))
            .is_ok());
    }

    #[test]
    fn permissions_are_normalised_or_refused() {
        assert_eq!(permission("Implicit"), Some("implicit"));
        assert_eq!(
            permission("pending-confirmation"),
            Some("pending_confirmation")
        );
        assert_eq!(permission(" TEMP HOLD "), Some("temp_hold"));
        assert_eq!(permission("subscribed"), None);
        assert_eq!(permission(""), None);
    }
}
