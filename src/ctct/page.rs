//! A `GET /contacts` page as the jobs take it: its contacts decoded one by one and
//! converted into the core's rows ([`ContactsPage`]), the elements that are not contacts
//! kept apart with the reason.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::convert::into_incoming_noted;
use super::dto::{has_address, Contact, PagingLinks};
use crate::core::contact::Incoming;

/// `GET /contacts` page (`Contacts`), its contacts already in the core's shape. Each
/// element is decoded on its own, straight from its text into a [`Contact`] and moved into
/// an [`Incoming`] row (no JSON tree of the whole contact is built, nothing is copied
/// twice); one that cannot be a contact (see [`Contact::from_value`]) lands in `rejected`
/// instead of failing the page.
#[derive(Debug, Default)]
pub struct ContactsPage {
    pub contacts: Vec<Incoming>,
    /// Columns stored with NUL characters removed: (contact, column).
    pub nul_removed: Vec<(Uuid, &'static str)>,
    /// The page's elements that are not contacts ccsync can store, with the reason.
    pub rejected: Vec<Rejected>,
    pub contacts_count: Option<u64>,
    pub links: Option<PagingLinks>,
}

impl ContactsPage {
    /// A page of contacts from elsewhere (an export's rows, a contact read alone).
    pub fn from_contacts(contacts: Vec<Contact>) -> ContactsPage {
        let mut page = ContactsPage {
            contacts: Vec::with_capacity(contacts.len()),
            ..Default::default()
        };
        for c in contacts {
            let id = c.contact_id;
            if let Err(e) = page.push(c) {
                page.rejected.push(Rejected {
                    reason: format!("does not decode as a contact: {e}"),
                    record: serde_json::json!({ "contact_id": id }),
                });
            }
        }
        page
    }

    /// Adds a contact, converted (and its NUL removals noted); nothing when it does not
    /// convert ([`into_incoming_noted`]).
    pub fn push(&mut self, c: Contact) -> Result<(), serde_json::Error> {
        let (incoming, stripped) = into_incoming_noted(c)?;
        let id = incoming.row.contact_id;
        self.nul_removed
            .extend(stripped.into_iter().map(|f| (id, f)));
        self.contacts.push(incoming);
        Ok(())
    }

    /// Adds another page's contacts and rejected elements.
    pub fn extend(&mut self, other: ContactsPage) {
        self.contacts.extend(other.contacts);
        self.nul_removed.extend(other.nul_removed);
        self.rejected.extend(other.rejected);
    }

    /// The ids the page shows: its contacts' and the readable `contact_id` of its rejected
    /// elements (a contact Constant Contact sent badly is still there: a reconcile must
    /// not take it for gone).
    pub fn seen_ids(&self) -> Vec<Uuid> {
        let rejected = self.rejected.iter().filter_map(|r| {
            r.record
                .get("contact_id")
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
        });
        self.contacts
            .iter()
            .map(|c| c.row.contact_id)
            .chain(rejected)
            .collect()
    }

    /// Decodes one element: typed straight from its text when it is a well-formed
    /// contact, else through a JSON tree for the precise reason it is not (the same
    /// verdicts as [`Contact::from_value`], which the fallback is).
    fn push_element(&mut self, raw: &RawValue) -> Result<(), serde_json::Error> {
        let text = raw.get();
        // serde would also decode a struct from a JSON array; only an object is a contact.
        if text.starts_with('{') {
            if let Ok(c) = serde_json::from_str::<Contact>(text) {
                // A column that does not convert takes the tree path, as an element that
                // does not decode typed does.
                if has_address(c.email_address.as_ref().and_then(|e| e.address.as_deref()))
                    && self.push(c).is_ok()
                {
                    return Ok(());
                }
            }
        }
        let record: serde_json::Value = serde_json::from_str(text)?;
        let verdict = Contact::from_value(&record).and_then(|c| {
            self.push(c)
                .map_err(|e| format!("does not decode as a contact: {e}"))
        });
        if let Err(reason) = verdict {
            self.rejected.push(Rejected { reason, record });
        }
        Ok(())
    }
}

/// A page element that is not a storable contact: why, and the element as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: String,
    pub record: serde_json::Value,
}

/// The page as it comes: each contact kept as its text until it is decoded on its own.
#[derive(Deserialize)]
struct RawContactsPage {
    #[serde(default)]
    contacts: Vec<Box<RawValue>>,
    #[serde(default)]
    contacts_count: Option<u64>,
    #[serde(rename = "_links", default)]
    links: Option<PagingLinks>,
}

impl<'de> Deserialize<'de> for ContactsPage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawContactsPage::deserialize(d)?;
        let mut page = ContactsPage {
            contacts: Vec::with_capacity(raw.contacts.len()),
            contacts_count: raw.contacts_count,
            links: raw.links,
            ..Default::default()
        };
        for element in &raw.contacts {
            page.push_element(element)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_its_good_contacts_and_rejects_the_poison_ones_with_a_reason() {
        let p: ContactsPage = serde_json::from_str(
            r#"{"contacts":[
                {"contact_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","email_address":{"address":"a@b.c"},
                 "some_new_field":{"x":1}},
                {"email_address":{"address":"no-id@b.c"}},
                {"contact_id":"5a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","email_address":{"permission_to_send":"implicit"}},
                {"contact_id":"6a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11"},
                {"contact_id":"not-a-uuid","email_address":{"address":"x@b.c"}},
                {"contact_id":"7a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","email_address":{"address":"d@b.c"},
                 "updated_at":"yesterday"},
                "just a string"
            ],"contacts_count":7}"#,
        )
        .unwrap();
        assert_eq!(p.contacts.len(), 1, "unknown fields are ignored");
        let reasons: Vec<&str> = p.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons[0], "no contact_id");
        assert_eq!(reasons[1], "email_address has no address");
        assert_eq!(reasons[2], "email_address has no address");
        assert_eq!(reasons[3], "contact_id is not a UUID");
        assert!(reasons[4].starts_with("does not decode"), "{}", reasons[4]);
        assert_eq!(reasons[5], "not a JSON object");
        assert_eq!(
            p.rejected[0].record["email_address"]["address"],
            "no-id@b.c"
        );
        assert_eq!(p.contacts_count, Some(7));
        let seen: Vec<String> = p.seen_ids().iter().map(|u| u.to_string()).collect();
        assert_eq!(
            seen,
            [
                "4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
                "5a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
                "6a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
                "7a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11"
            ],
            "a rejected contact with a readable id is not taken for gone"
        );
    }

    /// Found by the decoder proptest in CI: serde's derive builds a struct from an array
    /// of its fields, so `"email_address":["A"]` decoded typed as the address "A" while the
    /// tree path (rightly) rejected it. Both now reject it.
    #[test]
    fn an_email_address_given_as_an_array_is_no_address_on_either_path() {
        let body = r#"{"contacts":[{"contact_id":"00000000-0000-0000-0000-000000000001",
                                     "email_address":["A"]}]}"#;
        let p: ContactsPage = serde_json::from_str(body).unwrap();
        assert!(p.contacts.is_empty(), "{:?}", p.contacts);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].reason, "email_address has no address");
        let direct: Result<Contact, _> = serde_json::from_str(
            r#"{"contact_id":"00000000-0000-0000-0000-000000000001","email_address":["A"]}"#,
        );
        assert!(direct.is_err(), "a struct field must come as an object");
        let null: Contact = serde_json::from_str(
            r#"{"contact_id":"00000000-0000-0000-0000-000000000001","email_address":null}"#,
        )
        .unwrap();
        assert!(null.email_address.is_none());
    }

    /// Found by the decoder proptest in CI: serde_json's default float parsing is best
    /// effort, so a number in a contact's JSON could come back as a neighbouring `f64`
    /// (-1.9983911896132398e18 read as -1.99839118961324e18). `float_roundtrip` makes what
    /// is stored exactly what Constant Contact sent.
    #[test]
    fn a_number_in_a_contact_is_read_exactly() {
        let n = -1.998_391_189_613_239_8e18_f64;
        let body = serde_json::json!({"contacts": [{
            "contact_id": "4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11",
            "email_address": {"address": "a@b.c"},
            "custom_fields": n,
        }]});
        let p: ContactsPage = serde_json::from_str(&body.to_string()).unwrap();
        assert_eq!(p.contacts[0].row.custom_fields, serde_json::json!(n));
    }

    #[test]
    fn missing_or_empty_links_mean_done() {
        let p: ContactsPage = serde_json::from_str(r#"{"contacts":[],"_links":{}}"#).unwrap();
        assert!(PagingLinks::next_href(&p.links).is_none());
        let p: ContactsPage = serde_json::from_str(r#"{"contacts":[]}"#).unwrap();
        assert!(PagingLinks::next_href(&p.links).is_none());
        let p: ContactsPage =
            serde_json::from_str(r#"{"_links":{"next":{"href":"/v3/contacts?cursor=x"}}}"#)
                .unwrap();
        assert_eq!(
            PagingLinks::next_href(&p.links),
            Some("/v3/contacts?cursor=x")
        );
    }
}
