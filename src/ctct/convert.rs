//! The adapter edge: the API's shapes converted into the core's.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;

use super::dto::Contact;
use crate::core::contact::{ContactRow, Incoming, JsonbText};
use crate::core::sanitize::strip_nul_row;

/// Converts the API's contact into the local row shape (email lower-cased, NULs removed:
/// PostgreSQL refuses them).
pub fn to_incoming(c: &Contact) -> Result<Incoming, serde_json::Error> {
    Ok(into_incoming_noted(c.clone())?.0)
}

/// [`to_incoming`] of a contact given up (its values are moved, not copied), and the
/// columns that lost NUL characters on the way (for the caller to record). Fails when one
/// of the array columns' text is not a JSON value ccsync can hold (a lone surrogate, a
/// number out of range: text that is well-formed JSON only to a scanner).
pub fn into_incoming_noted(c: Contact) -> Result<(Incoming, Vec<&'static str>), serde_json::Error> {
    let mut incoming = convert(c)?;
    let stripped = strip_nul_row(&mut incoming.row);
    Ok((incoming, stripped))
}

/// An array column's value and text; `[]` when absent (a JSON `null` decodes as absent).
fn array_column(raw: Option<Box<RawValue>>) -> Result<(Value, Box<RawValue>), serde_json::Error> {
    match raw {
        Some(raw) => Ok((serde_json::from_str(raw.get())?, raw)),
        None => Ok((
            Value::Array(Vec::new()),
            RawValue::from_string("[]".to_owned())?,
        )),
    }
}

/// Whether `v` holds a number that did not come as a plain integer (serde_json keeps those,
/// and only those, as floating point).
fn has_fraction_or_exponent(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_fraction_or_exponent),
        Value::Object(o) => o.values().any(has_fraction_or_exponent),
        _ => false,
    }
}

fn convert(c: Contact) -> Result<Incoming, serde_json::Error> {
    let (custom_fields, custom_fields_text) = array_column(c.custom_fields)?;
    let (phone_numbers, phone_numbers_text) = array_column(c.phone_numbers)?;
    let (street_addresses, street_addresses_text) = array_column(c.street_addresses)?;
    let (taggings, taggings_text) = array_column(c.taggings)?;
    // With a number that is not a plain integer ("1e2", "2.50", "-0") PostgreSQL would
    // store the text's own form, which reads back as another JSON number than the one
    // parsed here (100 against 100.0) and would look like a change at every pull; such
    // rows are stored from their values, as they always were.
    let exact = ![&custom_fields, &phone_numbers, &street_addresses, &taggings]
        .into_iter()
        .any(has_fraction_or_exponent);
    let jsonb_text = JsonbText(exact.then(|| {
        Box::new([
            custom_fields_text,
            phone_numbers_text,
            street_addresses_text,
            taggings_text,
        ])
    }));
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
        custom_fields,
        phone_numbers,
        street_addresses,
        taggings,
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
        jsonb_text,
    };
    // A deleted contact has no memberships, whatever the page says.
    let memberships = if deleted {
        Some(BTreeSet::new())
    } else {
        c.list_memberships.map(|m| m.into_iter().collect())
    };
    Ok(Incoming { row, memberships })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_array_columns_keep_their_text_unless_a_number_would_read_back_differently() {
        let contact = |custom: &str| -> Contact {
            serde_json::from_str(&format!(
                r#"{{"contact_id": "4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
                    "email_address": {{"address": "a@b.c"}},
                    "custom_fields": {custom}, "taggings": null}}"#
            ))
            .unwrap()
        };
        let (i, _) = into_incoming_noted(contact(r#"[{"value": "x", "n": 7}]"#)).unwrap();
        let texts = i.row.jsonb_text.0.as_ref().expect("text kept");
        assert_eq!(texts[0].get(), r#"[{"value": "x", "n": 7}]"#);
        assert_eq!(
            texts[1].get(),
            "[]",
            "absent: the empty array, as its value"
        );
        assert_eq!(texts[3].get(), "[]", "null: the empty array, as its value");
        assert_eq!(i.row.taggings, serde_json::json!([]));
        for number in ["1e2", "2.50", "-0"] {
            let (i, _) = into_incoming_noted(contact(&format!(r#"[{{"n": {number}}}]"#))).unwrap();
            assert!(i.row.jsonb_text.0.is_none(), "{number}");
        }
        // Text that scans as JSON but is no value ccsync holds: the conversion fails.
        assert!(into_incoming_noted(contact(r#"["\ud800"]"#)).is_err());
    }

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
        let (i, fields) = into_incoming_noted(c.clone()).unwrap();
        assert_eq!(i.row.first_name.as_deref(), Some("Anne"));
        assert_eq!(i.row.email.as_deref(), Some("a@b.c"));
        assert_eq!(
            i.row.custom_fields,
            serde_json::json!([{"custom_field_id": "x", "value": "v"}])
        );
        assert_eq!(fields, vec!["first_name", "custom_fields"]);
        assert_eq!(to_incoming(&c).unwrap(), i);
        assert!(i.row.jsonb_text.0.is_none(), "the text still holds the NUL");
    }
}
