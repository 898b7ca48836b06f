//! Validate JSON values against the Constant Contact V3 spec definitions.
//!
//! The schemas come from `tests/fixtures/ctct_schemas.json`, generated once from the
//! official Swagger 2.0 spec by `tools/derive_schemas.py` (see `tests/fixtures/README.md`).
//! Validation always uses the strict twin `<Name>.strict` (unknown properties are errors,
//! to catch field-name typos) and checks `format` (uuid, date, date-time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::Validator;
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("../fixtures/ctct_schemas.json");

fn defs() -> &'static serde_json::Map<String, Value> {
    static DEFS: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let doc: Value = serde_json::from_str(FIXTURE).expect("ctct_schemas.json is not JSON");
        doc.get("$defs")
            .and_then(Value::as_object)
            .cloned()
            .expect("ctct_schemas.json has no $defs object")
    })
}

fn validator(definition: &str) -> Arc<Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(definition)
    {
        return Arc::clone(v);
    }
    let strict = format!("{definition}.strict");
    if !defs().contains_key(&strict) {
        let mut names: Vec<&str> = defs()
            .keys()
            .filter_map(|k| k.strip_suffix(".strict"))
            .collect();
        names.sort_unstable();
        panic!("unknown spec definition {definition:?}; available: {names:?}");
    }
    let wrapper = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/$defs/{strict}"),
        "$defs": defs(),
    });
    let compiled = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&wrapper)
        .unwrap_or_else(|e| panic!("schema for {definition} does not compile: {e}"));
    let compiled = Arc::new(compiled);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(definition.to_owned())
        .or_insert(compiled)
        .clone()
}

/// Same as [`assert_valid`], returning the errors (`"<instance path>: <message>"`).
pub fn validate(definition: &str, value: &Value) -> Result<(), Vec<String>> {
    let validator = validator(definition);
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let path = e.instance_path.as_str();
            let path = if path.is_empty() { "(root)" } else { path };
            format!("{path}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Panics with every validation error (instance path + message) when `value` does not
/// satisfy spec definition `definition` (strict variant: unknown properties are errors).
pub fn assert_valid(definition: &str, value: &Value) {
    if let Err(errors) = validate(definition, value) {
        panic!(
            "value does not satisfy CC spec definition {definition} ({} error(s)):\n  {}\nvalue: {}",
            errors.len(),
            errors.join("\n  "),
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contacts_page() -> Value {
        json!({
            "contacts": [
                {
                    "contact_id": "1618ae62-4752-11e9-9c8a-fa163e6b01c1",
                    "email_address": {
                        "address": "dlang@example.com",
                        "permission_to_send": "implicit",
                        "created_at": "2016-03-03T10:53:04-05:00",
                        "updated_at": "2016-03-03T10:56:29-05:00",
                        "opt_in_source": "Account",
                        "opt_in_date": "2016-01-23T13:48:44.108Z",
                        "confirm_status": "off"
                    },
                    "first_name": "Debora",
                    "last_name": "Lang",
                    "company_name": "Acme Corp.",
                    "birthday_month": 11,
                    "birthday_day": 24,
                    "create_source": "Account",
                    "update_source": "Contact",
                    "created_at": "2016-01-23T13:48:44.108Z",
                    "updated_at": "2016-01-23T13:48:44.108Z",
                    "list_memberships": [
                        "07936f78-662a-11eb-af0a-fa163e56c9b0",
                        "06526938-56dd-11e9-932a-fa163ea075fa"
                    ],
                    "custom_fields": [
                        {
                            "custom_field_id": "1618ae62-4752-11e9-9c8a-fa163e6b01c1",
                            "value": "Tesla S 2017"
                        }
                    ],
                    "phone_numbers": [
                        {
                            "phone_number_id": "6eec28a6-1cf5-11ea-859f-fa163e56c9b0",
                            "phone_number": "+1-555-555-5555",
                            "kind": "home"
                        }
                    ]
                },
                {
                    "contact_id": "0c4b4d3e-8d5a-4b4e-9c37-2d1f3f7e2a10",
                    "email_address": {
                        "address": "joe.jones@example.com",
                        "permission_to_send": "unsubscribed",
                        "opt_out_source": "Contact",
                        "opt_out_date": "2026-11-20T08:15:00Z",
                        "opt_out_reason": "No longer interested"
                    },
                    "first_name": "Joe",
                    "create_source": "Contact",
                    "update_source": "Account",
                    "created_at": "2025-02-01T00:00:00Z",
                    "updated_at": "2026-11-20T08:15:00Z",
                    "list_memberships": [],
                    "custom_fields": [
                        {
                            "custom_field_id": "a3c1e0f2-5b6d-4e7f-8091-a2b3c4d5e6f7",
                            "value": "gold"
                        }
                    ],
                    "street_addresses": [
                        {"kind": "work", "city": "Chicago", "postal_code": "60609"}
                    ],
                    "notes": [
                        {
                            "note_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                            "created_at": "2021-05-12T13:48:44.108Z",
                            "content": "Resubscribed."
                        }
                    ]
                }
            ],
            "contacts_count": 3249,
            "_links": {"next": {"href": "/v3/contacts?cursor=bGltaXQ9MSZuZXh0PTI="}}
        })
    }

    fn errors_of(definition: &str, value: &Value) -> Vec<String> {
        validate(definition, value).expect_err("expected validation errors")
    }

    #[test]
    fn realistic_contacts_page_is_valid() {
        assert_valid("Contacts", &contacts_page());
    }

    #[test]
    fn activity_import_is_valid() {
        let activity = json!({
            "activity_id": "86b90820-cc52-11ea-9dad-fa163e3d9194",
            "state": "initialized",
            "created_at": "2026-11-26T05:30:20Z",
            "updated_at": "2026-11-26T05:30:20Z",
            "percent_done": 0,
            "activity_errors": [],
            "status": {"items_total_count": 2, "person_count": 2},
            "_links": {"self": {"href": "/v3/activities/86b90820-cc52-11ea-9dad-fa163e3d9194"}}
        });
        assert_valid("ActivityImport", &activity);
    }

    #[test]
    fn activity_errors_accept_strings_and_message_objects() {
        let activity = json!({
            "activity_id": "86b90820-cc52-11ea-9dad-fa163e3d9194",
            "state": "failed",
            "activity_errors": ["row 3: bad email", {"message": "row 4: bad date"}]
        });
        assert_valid("Activity", &activity);
        let bad = json!({"activity_errors": [{"msg": "typo"}]});
        assert!(validate("Activity", &bad).is_err());
    }

    #[test]
    fn wrong_type_is_caught() {
        let mut page = contacts_page();
        page["contacts_count"] = json!("3249");
        let errors = errors_of("Contacts", &page);
        assert!(
            errors.iter().any(|e| e.starts_with("/contacts_count:")),
            "{errors:?}"
        );
    }

    #[test]
    fn wrong_enum_is_caught() {
        let mut page = contacts_page();
        page["contacts"][1]["email_address"]["permission_to_send"] = json!("maybe");
        let errors = errors_of("Contacts", &page);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/contacts/1/email_address/permission_to_send:")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_property_is_caught_in_strict_mode() {
        let mut page = contacts_page();
        page["contacts"][0]["frist_name"] = json!("Debora");
        page["_links"]["next"]["hfre"] = json!("/v3/contacts?cursor=x");
        let errors = errors_of("Contacts", &page);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/contacts/0:") && e.contains("frist_name")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/_links/next:") && e.contains("hfre")),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_required_is_caught() {
        let mut page = contacts_page();
        page["contacts"][0]["email_address"]
            .as_object_mut()
            .unwrap()
            .remove("address");
        let errors = errors_of("Contacts", &page);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/contacts/0/email_address:") && e.contains("address")),
            "{errors:?}"
        );
        let list = json!({"list_id": "06526938-56dd-11e9-932a-fa163ea075fa"});
        assert!(errors_of("ContactList", &list)
            .iter()
            .any(|e| e.contains("\"name\"")));
    }

    #[test]
    fn formats_are_checked() {
        let mut page = contacts_page();
        page["contacts"][0]["contact_id"] = json!("contact-1");
        page["contacts"][0]["updated_at"] = json!("2026-11-26 05:30:20");
        let errors = errors_of("Contacts", &page);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/contacts/0/contact_id:")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/contacts/0/updated_at:")),
            "{errors:?}"
        );
    }

    #[test]
    fn request_bodies_and_spec_bug_workarounds() {
        // maxItems: 0 in the spec must not reject a real remove request.
        let remove = json!({
            "source": {"contact_ids": ["1618ae62-4752-11e9-9c8a-fa163e6b01c1"]},
            "list_ids": ["06526938-56dd-11e9-932a-fa163ea075fa"]
        });
        assert_valid("ListActivityRemoveContacts", &remove);

        let import = json!({
            "import_data": [
                {"email": "a@example.com", "first_name": "A", "cf:tier": "gold", "home_country": "US"},
                {"sms_number": "5081231235", "birthday_month": 2, "birthday_day": 29}
            ],
            "list_ids": ["06526938-56dd-11e9-932a-fa163ea075fa"]
        });
        assert_valid("ContactsJsonImport", &import);

        let no_key = json!({"import_data": [{"first_name": "A"}], "list_ids": []});
        let errors = errors_of("ContactsJsonImport", &no_key);
        assert!(
            errors.iter().any(|e| e.starts_with("/import_data/0:")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("/list_ids:")),
            "{errors:?}"
        );
    }

    #[test]
    fn error_bodies() {
        let body = json!([{"error_key": "contacts.api.not_found", "error_message": "x"}]);
        assert_valid("APIErrorSchema", &body);
        let auth = json!({"error_key": "unauthorized", "error_message": "Unauthorized"});
        assert_valid("AuthorizationErrorSchema", &auth);
        assert!(validate("APIErrorSchema", &auth).is_err());
    }

    #[test]
    fn every_definition_compiles() {
        for name in defs().keys().filter_map(|k| k.strip_suffix(".strict")) {
            let _ = validator(name);
        }
    }

    #[test]
    #[should_panic(expected = "permission_to_send")]
    fn assert_valid_panics_with_the_errors() {
        let mut page = contacts_page();
        page["contacts"][0]["email_address"]["permission_to_send"] = json!("maybe");
        assert_valid("Contacts", &page);
    }

    #[test]
    #[should_panic(expected = "unknown spec definition")]
    fn unknown_definition_panics() {
        let _ = validate("NoSuchThing", &json!({}));
    }
}
