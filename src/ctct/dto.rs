//! The API's shapes, as much of them as ccsync reads. Every field a defensive `Option`:
//! the spec marks little as required and the live API adds and drops fields.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use uuid::Uuid;

#[derive(Debug, Default, Deserialize)]
pub struct PagingLinks {
    #[serde(default)]
    pub next: Option<Link>,
}

#[derive(Debug, Deserialize)]
pub struct Link {
    pub href: String,
}

impl PagingLinks {
    /// The next page's href; a missing or empty link means "done".
    pub fn next_href(links: &Option<PagingLinks>) -> Option<&str> {
        links
            .as_ref()
            .and_then(|l| l.next.as_ref())
            .map(|l| l.href.as_str())
            .filter(|h| !h.is_empty())
    }
}

/// `ContactResource`. The four array columns are kept as their JSON text (the edge
/// conversion parses them and keeps the text for the store: `core::contact::JsonbText`).
#[derive(Debug, Clone, Deserialize)]
pub struct Contact {
    pub contact_id: Uuid,
    #[serde(default, deserialize_with = "object_only")]
    pub email_address: Option<EmailAddress>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub birthday_month: Option<i16>,
    #[serde(default)]
    pub birthday_day: Option<i16>,
    #[serde(default)]
    pub anniversary: Option<String>,
    #[serde(default)]
    pub create_source: Option<String>,
    #[serde(default)]
    pub update_source: Option<String>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub updated_at: Option<DateTime<Utc>>,
    /// A date on contacts (a date-time on lists); both forms are accepted.
    #[serde(default, deserialize_with = "lenient_date")]
    pub deleted_at: Option<NaiveDate>,
    #[serde(default)]
    pub custom_fields: Option<Box<RawValue>>,
    #[serde(default)]
    pub list_memberships: Option<Vec<Uuid>>,
    #[serde(default)]
    pub phone_numbers: Option<Box<RawValue>>,
    #[serde(default)]
    pub street_addresses: Option<Box<RawValue>>,
    #[serde(default)]
    pub taggings: Option<Box<RawValue>>,
}

impl Contact {
    /// One element of a page as a contact ccsync can store, or why not: no `contact_id`
    /// (or not a UUID), an `email_address` missing or without `address`, a field of the
    /// wrong type. Unknown fields are ignored.
    pub fn from_value(v: &serde_json::Value) -> Result<Contact, String> {
        let Some(obj) = v.as_object() else {
            return Err("not a JSON object".into());
        };
        match obj.get("contact_id") {
            None | Some(serde_json::Value::Null) => return Err("no contact_id".into()),
            Some(id) if id.as_str().and_then(|s| Uuid::parse_str(s).ok()).is_none() => {
                return Err("contact_id is not a UUID".into())
            }
            Some(_) => {}
        }
        let address = obj
            .get("email_address")
            .and_then(|e| e.get("address"))
            .and_then(|a| a.as_str());
        if !has_address(address) {
            return Err("email_address has no address".into());
        }
        Contact::deserialize(v).map_err(|e| format!("does not decode as a contact: {e}"))
    }
}

/// Whether an address is there: NULs are removed before the store sees a value, so an
/// address of only NULs and blanks is no address at all.
pub(super) fn has_address(address: Option<&str>) -> bool {
    address.is_some_and(|a| {
        !a.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .is_empty()
    })
}

/// `EmailAddress`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub permission_to_send: Option<String>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub opt_in_source: Option<String>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub opt_in_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub opt_out_source: Option<String>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub opt_out_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub opt_out_reason: Option<String>,
    #[serde(default)]
    pub confirm_status: Option<String>,
}

/// `ContactListArray`.
#[derive(Debug, Deserialize)]
pub struct ContactListsPage {
    #[serde(default)]
    pub lists: Vec<ContactList>,
    #[serde(default)]
    pub lists_count: Option<u64>,
    #[serde(rename = "_links", default)]
    pub links: Option<PagingLinks>,
}

/// `ContactList`.
#[derive(Debug, Clone, Deserialize)]
pub struct ContactList {
    pub list_id: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub favorite: Option<bool>,
    #[serde(default)]
    pub membership_count: Option<i64>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// `CustomFields`: one page of the custom field catalogue.
#[derive(Debug, Default, Deserialize)]
pub struct CustomFieldsPage {
    #[serde(default)]
    pub custom_fields: Vec<CustomField>,
    #[serde(rename = "_links", default)]
    pub links: Option<PagingLinks>,
}

/// `CustomField` (the parts ccsync keeps; `choices`, `metadata` and `version` are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct CustomField {
    pub custom_field_id: Uuid,
    /// Read-only, unique, built from the label (spaces turned into `_`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(rename = "type", default)]
    pub field_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_datetime")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// Parses ISO-8601 date-times with `Z`, `+hh:mm` or `+hhmm` offsets, with or without
/// fractional seconds.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    // A bare date: midnight UTC.
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
}

fn lenient_datetime<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => parse_datetime(v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not a date-time: {v:?}"))),
    }
}

/// A nested object that must come as a JSON object: serde's derive would also build a
/// struct from an array of its fields in order, which no API answer means.
fn object_only<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::{value::MapAccessDeserializer, MapAccess, Visitor};
    use std::marker::PhantomData;

    struct Inner<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Inner<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_option(Inner(PhantomData))
}

fn lenient_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .ok()
            .or_else(|| parse_datetime(v).map(|t| t.date_naive()))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not a date: {v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_in_every_offset_style_parse_to_the_same_instant() {
        let a = parse_datetime("2024-01-01T05:00:00Z").unwrap();
        for s in [
            "2024-01-01T05:00:00.000Z",
            "2024-01-01T00:00:00-05:00",
            "2024-01-01T05:00:00.000000+0000",
            "2024-01-01T05:00:00+0000",
        ] {
            assert_eq!(parse_datetime(s), Some(a), "{s}");
        }
    }

    #[test]
    fn a_contact_with_date_deleted_at_and_missing_fields_decodes() {
        let c: Contact = serde_json::from_str(
            r#"{"contact_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","deleted_at":"2016-07-08",
                "updated_at":"2016-07-08T10:00:00Z","email_address":{"address":"A@B.C"}}"#,
        )
        .unwrap();
        assert_eq!(c.deleted_at, NaiveDate::from_ymd_opt(2016, 7, 8));
        assert!(c.first_name.is_none());
    }

    #[test]
    fn an_address_of_only_nuls_and_blanks_is_no_address() {
        for address in ["\\u0000", " \\u0000 ", "\\u0000\\u0000", "   "] {
            let body = format!(
                r#"{{"contact_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","email_address":{{"address":"{address}"}}}}"#
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                Contact::from_value(&v).unwrap_err(),
                "email_address has no address",
                "{address}"
            );
        }
        let v = serde_json::json!({"contact_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
            "email_address":{"address":"a\u{0}@b.c"}});
        assert!(
            Contact::from_value(&v).is_ok(),
            "a NUL inside an address is removed later, not a poison record"
        );
    }
}
