//! Subscriber and account-owner actions on one account's state: what `AccountCtl` calls
//! and what request triggers perform. Pure state transitions (no lock, no HTTP); `now` is
//! the sandbox clock.

use serde_json::Value;
use uuid::Uuid;

use super::state::{membership_moved, Account, Ts};
use super::types::{CoreField, SubscriberAction};

/// Permission unsubscribed, opt_out_* set (source `Contact`), `email_address.updated_at`
/// = now. Contact `updated_at` is NOT bumped (as the real service); memberships are kept.
pub(crate) fn unsubscribe(a: &mut Account, id: Uuid, reason: Option<&str>, now: Ts) {
    if let Some(mut c) = a.contact_mut(&id) {
        let e = &mut c.core.email_address;
        e.permission_to_send = "unsubscribed".into();
        e.opt_out_source = Some("Contact".into());
        e.opt_out_date = Some(now);
        e.opt_out_reason = reason.map(str::to_string);
        e.updated_at = now;
    }
}

/// Permission explicit, opt_out_* cleared, `email_address.updated_at` and `opt_in_date`
/// = now. Contact `updated_at` is not bumped (mirrors `unsubscribe`).
pub(crate) fn resubscribe(a: &mut Account, id: Uuid, now: Ts) {
    if let Some(mut c) = a.contact_mut(&id) {
        let e = &mut c.core.email_address;
        e.permission_to_send = "explicit".into();
        e.opt_out_source = None;
        e.opt_out_date = None;
        e.opt_out_reason = None;
        e.opt_in_date = Some(now);
        e.updated_at = now;
    }
}

/// Removes one membership (bumps `updated_at` only under the membership switch).
pub(crate) fn leave_list(a: &mut Account, id: Uuid, list_id: Uuid, now: Ts) {
    let bump = a.membership_moves_updated_at;
    let mut left = false;
    if let Some(mut c) = a.contact_mut(&id) {
        if c.subs.list_memberships.contains(&list_id) {
            c.subs.list_memberships.retain(|l| *l != list_id);
            membership_moved(bump, &mut c, now);
            left = true;
        }
    }
    if left {
        a.transitions.left.insert((id, list_id));
    }
}

/// Adds one membership (bumps `updated_at` only under the membership switch). Adding a
/// deleted contact revives it (deleted_at removed, updated_at bumped).
pub(crate) fn join_list(a: &mut Account, id: Uuid, list_id: Uuid, now: Ts) {
    let bump = a.membership_moves_updated_at;
    // The subscriber's own re-join is not a re-add.
    a.transitions.left.remove(&(id, list_id));
    if let Some(mut c) = a.contact_mut(&id) {
        if c.core.deleted_at.take().is_some() {
            c.core.updated_at = now;
        }
        if !c.subs.list_memberships.contains(&list_id) {
            c.subs.list_memberships.push(list_id);
            membership_moved(bump, &mut c, now);
        }
    }
}

/// `deleted_at` = today (a date), memberships cleared, `updated_at` bumped. A contact
/// already deleted is left as it is. Returns whether the contact exists.
pub(crate) fn delete(a: &mut Account, id: Uuid, now: Ts) -> bool {
    let Some(mut c) = a.contact_mut(&id) else {
        return false;
    };
    if c.core.deleted_at.is_none() {
        c.core.deleted_at = Some(now.date_naive());
        c.subs.list_memberships.clear();
        c.core.updated_at = now;
    }
    true
}

/// Sets one core field (`null` clears it) and bumps `updated_at`. A value of the wrong
/// type (a string field needs a string, a birthday part an integer) is an error.
pub(crate) fn set_field(
    a: &mut Account,
    id: Uuid,
    field: CoreField,
    value: &Value,
    now: Ts,
) -> Result<(), String> {
    let Some(mut c) = a.contact_mut(&id) else {
        return Err(format!("no contact {id}"));
    };
    let core = &mut c.core;
    let text = |v: &Value| match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("{field:?} needs a string or null, got {other}")),
    };
    let int = |v: &Value| match v {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{field:?} needs an integer or null, got {v}")),
    };
    match field {
        CoreField::FirstName => core.first_name = text(value)?,
        CoreField::LastName => core.last_name = text(value)?,
        CoreField::JobTitle => core.job_title = text(value)?,
        CoreField::CompanyName => core.company_name = text(value)?,
        CoreField::Anniversary => core.anniversary = text(value)?,
        CoreField::BirthdayMonth => core.birthday_month = int(value)?,
        CoreField::BirthdayDay => core.birthday_day = int(value)?,
    }
    core.updated_at = now;
    Ok(())
}

/// Performs `action` on the account (unknown contacts or lists: nothing happens).
pub(crate) fn perform(a: &mut Account, action: &SubscriberAction, now: Ts) {
    match action {
        SubscriberAction::LeaveList {
            contact_id,
            list_id,
        } => leave_list(a, *contact_id, *list_id, now),
        SubscriberAction::JoinList {
            contact_id,
            list_id,
        } => join_list(a, *contact_id, *list_id, now),
        SubscriberAction::Unsubscribe { contact_id, reason } => {
            unsubscribe(a, *contact_id, reason.as_deref(), now)
        }
        SubscriberAction::Resubscribe { contact_id } => resubscribe(a, *contact_id, now),
        SubscriberAction::Delete { contact_id } => {
            delete(a, *contact_id, now);
        }
        SubscriberAction::SetField {
            contact_id,
            field,
            value,
        } => {
            if let Err(e) = set_field(a, *contact_id, *field, value, now) {
                tracing::warn!(error = %e, "trigger action SetField not applied");
            }
        }
    }
}
