//! The adapter edge: the API's shapes converted into the core's.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::dto::Contact;
use crate::core::contact::{ContactRow, Incoming};
use crate::core::sanitize::strip_nul_row;

/// Converts the API's contact into the local row shape (email lower-cased, NULs removed:
/// PostgreSQL refuses them).
pub fn to_incoming(c: &Contact) -> Incoming {
    into_incoming_noted(c.clone()).0
}

/// [`to_incoming`] of a contact given up (its values are moved, not copied), and the
/// columns that lost NUL characters on the way (for the caller to record).
pub fn into_incoming_noted(c: Contact) -> (Incoming, Vec<&'static str>) {
    let mut incoming = convert(c);
    let stripped = strip_nul_row(&mut incoming.row);
    (incoming, stripped)
}

fn convert(c: Contact) -> Incoming {
    let arr = |v: Option<Value>| match v {
        Some(Value::Null) | None => Value::Array(Vec::new()),
        Some(v) => v,
    };
    let deleted = c.deleted_at.is_some();
    let e = c.email_address.unwrap_or_default();
    let email = e.address.map(|a| {
        let a = a.trim();
        // ASCII (nearly every address) is lower-cased without Unicode tables.
        if a.is_ascii() {
            a.to_ascii_lowercase()
        } else {
            a.to_lowercase()
        }
    });
    let row = ContactRow {
        contact_id: c.contact_id,
        email,
        first_name: c.first_name,
        last_name: c.last_name,
        job_title: c.job_title,
        company_name: c.company_name,
        birthday_month: c.birthday_month,
        birthday_day: c.birthday_day,
        anniversary: c.anniversary,
        permission_to_send: e.permission_to_send,
        opt_in_source: e.opt_in_source,
        opt_in_date: e.opt_in_date,
        opt_out_source: e.opt_out_source,
        opt_out_date: e.opt_out_date,
        opt_out_reason: e.opt_out_reason,
        confirm_status: e.confirm_status,
        email_updated_at: e.updated_at,
        custom_fields: arr(c.custom_fields),
        phone_numbers: arr(c.phone_numbers),
        street_addresses: arr(c.street_addresses),
        taggings: arr(c.taggings),
        create_source: c.create_source,
        update_source: c.update_source,
        created_at: c.created_at,
        // Defensive: a contact without updated_at falls back to created_at, then the epoch,
        // never to the local clock.
        updated_at: c
            .updated_at
            .or(c.created_at)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        deleted_at: c.deleted_at,
    };
    // A deleted contact has no memberships, whatever the page says.
    let memberships = if deleted {
        Some(BTreeSet::new())
    } else {
        c.list_memberships.map(|m| m.into_iter().collect())
    };
    Incoming { row, memberships }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nuls_from_the_api_are_removed_and_named_at_the_edge() {
        // As the wire carries it: JSON `\u0000` escapes.
        let v: Value = serde_json::from_str(
            r#"{"contact_id": "4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
                "email_address": {"address": "A@B.C"},
                "first_name": "Ann\u0000e",
                "custom_fields": [{"custom_field_id": "x", "value": "v\u0000"}]}"#,
        )
        .unwrap();
        let c = Contact::from_value(&v).unwrap();
        let (i, fields) = into_incoming_noted(c.clone());
        assert_eq!(i.row.first_name.as_deref(), Some("Anne"));
        assert_eq!(i.row.email.as_deref(), Some("a@b.c"));
        assert_eq!(
            i.row.custom_fields,
            serde_json::json!([{"custom_field_id": "x", "value": "v"}])
        );
        assert_eq!(fields, vec!["first_name", "custom_fields"]);
        assert_eq!(to_incoming(&c), i);
    }
}
