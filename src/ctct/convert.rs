//! The adapter edge: the API's shapes converted into the core's.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::dto::Contact;
use crate::core::contact::{ContactRow, Incoming};
use crate::core::sanitize::strip_nul_row;

/// Converts the API's contact into the local row shape (email lower-cased, NULs removed:
/// PostgreSQL refuses them).
pub fn to_incoming(c: &Contact) -> Incoming {
    to_incoming_noted(c).0
}

/// [`to_incoming`], and the columns that lost NUL characters on the way (for the caller
/// to record).
pub fn to_incoming_noted(c: &Contact) -> (Incoming, Vec<&'static str>) {
    let mut incoming = convert(c);
    let stripped = strip_nul_row(&mut incoming.row);
    (incoming, stripped)
}

fn convert(c: &Contact) -> Incoming {
    let e = c.email_address.as_ref();
    let arr = |v: &Option<Value>| match v {
        Some(Value::Null) | None => json!([]),
        Some(v) => v.clone(),
    };
    let deleted = c.deleted_at.is_some();
    let row = ContactRow {
        contact_id: c.contact_id,
        email: e
            .and_then(|e| e.address.as_deref())
            .map(|a| a.trim().to_lowercase()),
        first_name: c.first_name.clone(),
        last_name: c.last_name.clone(),
        job_title: c.job_title.clone(),
        company_name: c.company_name.clone(),
        birthday_month: c.birthday_month,
        birthday_day: c.birthday_day,
        anniversary: c.anniversary.clone(),
        permission_to_send: e.and_then(|e| e.permission_to_send.clone()),
        opt_in_source: e.and_then(|e| e.opt_in_source.clone()),
        opt_in_date: e.and_then(|e| e.opt_in_date),
        opt_out_source: e.and_then(|e| e.opt_out_source.clone()),
        opt_out_date: e.and_then(|e| e.opt_out_date),
        opt_out_reason: e.and_then(|e| e.opt_out_reason.clone()),
        confirm_status: e.and_then(|e| e.confirm_status.clone()),
        email_updated_at: e.and_then(|e| e.updated_at),
        custom_fields: arr(&c.custom_fields),
        phone_numbers: arr(&c.phone_numbers),
        street_addresses: arr(&c.street_addresses),
        taggings: arr(&c.taggings),
        create_source: c.create_source.clone(),
        update_source: c.update_source.clone(),
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
        c.list_memberships
            .as_ref()
            .map(|m| m.iter().copied().collect())
    };
    Incoming { row, memberships }
}

/// The status counters of an activity, for the core's completion mapping.
pub fn activity_counters(a: &super::activities::Activity) -> crate::core::activity::Counters {
    crate::core::activity::Counters {
        person_count: a.counter("person_count"),
        error_count: a.counter("error_count"),
        correctable_count: a.counter("correctable_count"),
        cannot_add_to_list_count: a.counter("cannot_add_to_list_count"),
    }
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
        let (i, fields) = to_incoming_noted(&c);
        assert_eq!(i.row.first_name.as_deref(), Some("Anne"));
        assert_eq!(i.row.email.as_deref(), Some("a@b.c"));
        assert_eq!(
            i.row.custom_fields,
            json!([{"custom_field_id": "x", "value": "v"}])
        );
        assert_eq!(fields, vec!["first_name", "custom_fields"]);
        assert_eq!(to_incoming(&c), i);
    }
}
