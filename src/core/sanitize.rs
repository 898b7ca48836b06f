//! Bad input from the API made storable. PostgreSQL refuses `\0` in `text` and `\u0000`
//! in `jsonb`; a value from Constant Contact that holds one is stored with it removed, and
//! the caller records which field lost it.

use serde_json::Value;

use super::contact::ContactRow;

/// Kinds of a [`BadInput`] note (`poison_records.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInputKind {
    /// A page element skipped: not a contact ccsync can store.
    Poison,
    /// A value stored with its NUL characters removed.
    NulRemoved,
}

impl BadInputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BadInputKind::Poison => "poison",
            BadInputKind::NulRemoved => "nul_removed",
        }
    }
}

/// One note of bad input from the API (a `poison_records` row).
#[derive(Debug, Clone, PartialEq)]
pub struct BadInput {
    pub kind: BadInputKind,
    pub contact_id: Option<uuid::Uuid>,
    pub field: Option<&'static str>,
    pub reason: String,
    pub record: Option<Value>,
}

impl BadInput {
    /// A skipped element: its `contact_id` when it has a readable one, the element kept
    /// with NULs removed (so that it can be stored at all).
    pub fn poison(reason: String, mut record: Value) -> BadInput {
        strip_nul_json(&mut record);
        let contact_id = record
            .get("contact_id")
            .and_then(Value::as_str)
            .and_then(|s| uuid::Uuid::parse_str(s).ok());
        BadInput {
            kind: BadInputKind::Poison,
            contact_id,
            field: None,
            reason,
            record: Some(record),
        }
    }

    /// A column of `contact` stored without the NULs it held.
    pub fn nul_removed(contact: uuid::Uuid, field: &'static str) -> BadInput {
        BadInput {
            kind: BadInputKind::NulRemoved,
            contact_id: Some(contact),
            field: Some(field),
            reason: format!("NUL characters removed from {field}"),
            record: None,
        }
    }
}

/// The NUL character PostgreSQL refuses.
const NUL: char = '\0';

/// Removes every NUL from `s`; whether there was one.
pub fn strip_nul(s: &mut String) -> bool {
    if !s.contains(NUL) {
        return false;
    }
    s.retain(|c| c != NUL);
    true
}

/// [`strip_nul`] on an optional value.
pub fn strip_nul_opt(s: &mut Option<String>) -> bool {
    s.as_mut().is_some_and(strip_nul)
}

/// Removes every NUL from the strings of `v`, object keys included, at any depth; whether
/// there was one. Two keys that differ only by NULs keep the later value.
pub fn strip_nul_json(v: &mut Value) -> bool {
    match v {
        Value::String(s) => strip_nul(s),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, item| strip_nul_json(item) | found),
        Value::Object(map) => {
            if !map.keys().any(|k| k.contains(NUL)) {
                return map
                    .values_mut()
                    .fold(false, |found, item| strip_nul_json(item) | found);
            }
            let old = std::mem::take(map);
            for (mut k, mut item) in old {
                strip_nul(&mut k);
                strip_nul_json(&mut item);
                map.insert(k, item);
            }
            true
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Removes every NUL from the text and JSON columns of `row`; the names of the columns
/// that held one, in column order.
pub fn strip_nul_row(row: &mut ContactRow) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let texts: [(&'static str, &mut Option<String>); 13] = [
        ("email", &mut row.email),
        ("first_name", &mut row.first_name),
        ("last_name", &mut row.last_name),
        ("job_title", &mut row.job_title),
        ("company_name", &mut row.company_name),
        ("anniversary", &mut row.anniversary),
        ("permission_to_send", &mut row.permission_to_send),
        ("opt_in_source", &mut row.opt_in_source),
        ("opt_out_source", &mut row.opt_out_source),
        ("opt_out_reason", &mut row.opt_out_reason),
        ("confirm_status", &mut row.confirm_status),
        ("create_source", &mut row.create_source),
        ("update_source", &mut row.update_source),
    ];
    for (name, value) in texts {
        if strip_nul_opt(value) {
            fields.push(name);
        }
    }
    let jsons: [(&'static str, &mut Value); 4] = [
        ("custom_fields", &mut row.custom_fields),
        ("phone_numbers", &mut row.phone_numbers),
        ("street_addresses", &mut row.street_addresses),
        ("taggings", &mut row.taggings),
    ];
    let mut json_changed = false;
    for (name, value) in jsons {
        if strip_nul_json(value) {
            fields.push(name);
            json_changed = true;
        }
    }
    if json_changed {
        // The text the values came from still holds the NULs.
        row.jsonb_text = Default::default();
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> ContactRow {
        ContactRow {
            contact_id: uuid::Uuid::nil(),
            email: Some("a@b.c".into()),
            first_name: None,
            last_name: None,
            job_title: None,
            company_name: None,
            birthday_month: None,
            birthday_day: None,
            anniversary: None,
            permission_to_send: Some("implicit".into()),
            opt_in_source: None,
            opt_in_date: None,
            opt_out_source: None,
            opt_out_date: None,
            opt_out_reason: None,
            confirm_status: None,
            email_updated_at: None,
            custom_fields: json!([]),
            phone_numbers: json!([]),
            street_addresses: json!([]),
            taggings: json!([]),
            create_source: None,
            update_source: None,
            created_at: None,
            updated_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            deleted_at: None,
            jsonb_text: Default::default(),
        }
    }

    #[test]
    fn a_row_names_every_column_that_lost_a_nul() {
        let mut clean = row();
        assert!(strip_nul_row(&mut clean).is_empty());
        assert_eq!(clean, row());
        let mut r = row();
        r.first_name = Some("Ann\u{0}e".into());
        r.custom_fields = json!([{"custom_field_id": "f", "value": {"x": ["a\u{0}"]}}]);
        assert_eq!(strip_nul_row(&mut r), vec!["first_name", "custom_fields"]);
        assert_eq!(r.first_name.as_deref(), Some("Anne"));
        assert_eq!(
            r.custom_fields,
            json!([{"custom_field_id": "f", "value": {"x": ["a"]}}])
        );
    }

    #[test]
    fn a_poison_note_keeps_the_record_storable_and_its_id_when_readable() {
        let id = uuid::Uuid::new_v4();
        let n = BadInput::poison(
            "email_address has no address".into(),
            json!({"contact_id": id.to_string(), "first_name": "x\u{0}"}),
        );
        assert_eq!(n.kind.as_str(), "poison");
        assert_eq!(n.contact_id, Some(id));
        assert_eq!(
            n.record,
            Some(json!({"contact_id": id.to_string(), "first_name": "x"}))
        );
        let n = BadInput::poison("no contact_id".into(), json!({"contact_id": 7}));
        assert_eq!(n.contact_id, None);
        let n = BadInput::nul_removed(id, "first_name");
        assert_eq!(
            (n.kind.as_str(), n.field),
            ("nul_removed", Some("first_name"))
        );
    }

    #[test]
    fn nuls_are_removed_from_strings() {
        let mut s = "Ann\u{0}e".to_string();
        assert!(strip_nul(&mut s));
        assert_eq!(s, "Anne");
        assert!(!strip_nul(&mut s), "a clean string is left alone");
        let mut s = "\u{0}\u{0}".to_string();
        assert!(strip_nul(&mut s));
        assert_eq!(s, "");
        let mut none: Option<String> = None;
        assert!(!strip_nul_opt(&mut none));
        let mut some = Some("a\u{0}b".to_string());
        assert!(strip_nul_opt(&mut some));
        assert_eq!(some.as_deref(), Some("ab"));
    }

    #[test]
    fn nuls_are_removed_at_any_depth_of_json_keys_included() {
        let mut v = json!([
            {"custom_field_id": "x", "value": "v\u{0}1"},
            {"nested": {"deep": ["ok", "n\u{0}o", 3, null, true]}},
            {"k\u{0}ey": "plain"}
        ]);
        assert!(strip_nul_json(&mut v));
        assert_eq!(
            v,
            json!([
                {"custom_field_id": "x", "value": "v1"},
                {"nested": {"deep": ["ok", "no", 3, null, true]}},
                {"key": "plain"}
            ])
        );
        assert!(!strip_nul_json(&mut v), "clean JSON is left alone");
        assert!(!v.to_string().contains("\\u0000"));
    }

    #[test]
    fn clean_json_is_unchanged() {
        let orig = json!({"a": [1, "b", {"c": null}], "d": false});
        let mut v = orig.clone();
        assert!(!strip_nul_json(&mut v));
        assert_eq!(v, orig);
    }
}
