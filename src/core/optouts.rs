//! The pure core of the opt-out rules: which contacts a planned page newly unsubscribes,
//! the reason written on the outbound rows refused for them, and the opt-out sweep's
//! watermark. No I/O.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::change::ChangeKind;
use super::contact::{ContactRow, Incoming};
use super::merge::{is_stale, PagePlan};

/// One address to refuse list adds for, and the reason written on its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Lower-case.
    pub email: String,
    pub reason: String,
}

/// The sweep's watermark: the opt-out date (what `optout_after` compares), else the email
/// address's `updated_at`.
pub fn optout_mark(row: &ContactRow) -> Option<DateTime<Utc>> {
    if row.permission_to_send.as_deref() != Some("unsubscribed") {
        return None;
    }
    row.opt_out_date.or(row.email_updated_at)
}

/// The reason written on refused outbound rows.
pub fn refusal_reason(opt_out_date: Option<DateTime<Utc>>) -> String {
    let when = opt_out_date
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "date unknown".into());
    format!("contact unsubscribed in Constant Contact (opt-out {when}); ccsync never re-subscribes")
}

/// The contacts a planned page newly unsubscribes: an `unsubscribed` change, or a contact
/// first seen already unsubscribed. One refusal per address.
pub fn newly_unsubscribed(incoming: &[Incoming], plan: &PagePlan) -> Vec<Refusal> {
    // A contact repeated within a page resolves like the merge: its newest copy.
    let mut rows: HashMap<Uuid, &ContactRow> = HashMap::with_capacity(incoming.len());
    for i in incoming {
        match rows.get(&i.row.contact_id) {
            Some(r) if is_stale(&i.row, r) => {}
            _ => {
                rows.insert(i.row.contact_id, &i.row);
            }
        }
    }
    let unsubscribed = |r: &&ContactRow| r.permission_to_send.as_deref() == Some("unsubscribed");
    let mut out: Vec<Refusal> = Vec::new();
    for change in &plan.changes {
        let row = match change.kind {
            ChangeKind::Unsubscribed => rows.get(&change.contact_id).copied(),
            // First seen (created, or created already deleted) and already unsubscribed.
            ChangeKind::Created | ChangeKind::Deleted if change.field.is_none() => {
                rows.get(&change.contact_id).copied().filter(unsubscribed)
            }
            _ => None,
        };
        let Some(email) = row.and_then(|r| r.email.as_deref()) else {
            continue;
        };
        if out.iter().any(|r| r.email == email) {
            continue;
        }
        out.push(Refusal {
            email: email.to_string(),
            reason: refusal_reason(row.and_then(|r| r.opt_out_date)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::core::contact::Stored;
    use crate::core::merge::plan_page;
    use serde_json::json;

    fn row(id: u128, perm: &str) -> ContactRow {
        ContactRow {
            contact_id: Uuid::from_u128(id),
            email: Some(format!("c{id}@example.com")),
            first_name: None,
            last_name: None,
            job_title: None,
            company_name: None,
            birthday_month: None,
            birthday_day: None,
            anniversary: None,
            permission_to_send: Some(perm.into()),
            opt_in_source: None,
            opt_in_date: None,
            opt_out_source: None,
            opt_out_date: None,
            opt_out_reason: None,
            confirm_status: None,
            email_updated_at: DateTime::from_timestamp(10, 0),
            custom_fields: json!([]),
            phone_numbers: json!([]),
            street_addresses: json!([]),
            taggings: json!([]),
            create_source: None,
            update_source: None,
            created_at: None,
            updated_at: DateTime::from_timestamp(10, 0).unwrap_or_default(),
            deleted_at: None,
            jsonb_text: Default::default(),
        }
    }

    fn inc(r: ContactRow) -> Incoming {
        Incoming {
            row: r,
            memberships: Some(BTreeSet::new()),
        }
    }

    #[test]
    fn an_unsubscribe_of_a_known_contact_is_refused_with_its_date() {
        let old = row(1, "implicit");
        let mut new = row(1, "unsubscribed");
        new.opt_out_date = DateTime::from_timestamp(1_700_000_000, 0);
        new.email_updated_at = new.opt_out_date;
        let stored: HashMap<Uuid, Stored> = [(
            old.contact_id,
            Stored {
                row: old,
                memberships: BTreeSet::new(),
            },
        )]
        .into();
        let page = vec![inc(new)];
        let plan = plan_page(&page, &stored, None);
        let r = newly_unsubscribed(&page, &plan);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].email, "c1@example.com");
        assert!(
            r[0].reason.contains("opt-out 2023-11-14T22:13:20Z"),
            "{}",
            r[0].reason
        );
        assert!(r[0].reason.contains("never re-subscribes"));
    }

    #[test]
    fn a_contact_first_seen_unsubscribed_is_refused_but_subscribers_are_not() {
        let page = vec![inc(row(1, "unsubscribed")), inc(row(2, "explicit"))];
        let plan = plan_page(&page, &HashMap::new(), None);
        let r = newly_unsubscribed(&page, &plan);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].email, "c1@example.com");
        assert!(r[0].reason.contains("date unknown"));
    }

    #[test]
    fn an_already_unsubscribed_contact_is_not_newly_unsubscribed() {
        let old = row(1, "unsubscribed");
        let mut new = old.clone();
        new.first_name = Some("Changed".into());
        new.updated_at = DateTime::from_timestamp(20, 0).unwrap_or_default();
        let stored: HashMap<Uuid, Stored> = [(
            old.contact_id,
            Stored {
                row: old,
                memberships: BTreeSet::new(),
            },
        )]
        .into();
        let page = vec![inc(new)];
        let plan = plan_page(&page, &stored, None);
        assert!(newly_unsubscribed(&page, &plan).is_empty());
    }

    #[test]
    fn the_sweep_watermark_follows_the_opt_out_date() {
        let mut r = row(1, "unsubscribed");
        assert_eq!(
            optout_mark(&r),
            r.email_updated_at,
            "no opt-out date: email clock"
        );
        r.opt_out_date = DateTime::from_timestamp(5, 0);
        assert_eq!(optout_mark(&r), r.opt_out_date);
        assert_eq!(optout_mark(&row(2, "explicit")), None);
    }
}
