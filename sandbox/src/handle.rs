//! The Rust handle API: `AccountCtl` acts as a subscriber / admin on one sandbox account
//! (what tests, `ccsync demo` and `ccsync bench` call; `control_api` serves it over HTTP).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::generator;
use super::oauth;
use super::state::{
    membership_moved, trunc_ms, Account, Contact, ContactCore, ContactSubs, CustomFieldDef,
    CustomFieldValue, EmailAddress, Inner, ListRec, State,
};
use super::subscriber;
use super::triggers;
use super::types::{Trigger, TriggerId};

/// Handle on one account of a running sandbox. Cheap to clone.
#[derive(Clone)]
pub struct AccountCtl {
    inner: Arc<Inner>,
    name: String,
}

impl AccountCtl {
    pub(crate) fn new(inner: Arc<Inner>, name: &str) -> AccountCtl {
        AccountCtl {
            inner,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on the account (after due activities were processed) with the sandbox now.
    fn with<R>(&self, f: impl FnOnce(&mut Account, DateTime<Utc>) -> R) -> R {
        let mut st = self.inner.lock();
        super::import_engine::tick(&self.inner, &mut st, &self.name);
        let now = st.now();
        f(st.account_mut(&self.name), now)
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.inner.lock();
        f(&mut st)
    }

    /// Mints a fresh valid refresh token for this account.
    pub fn seed_refresh_token(&self) -> String {
        let name = self.name.clone();
        self.with_state(|st| oauth::mint_refresh(st, &name))
    }

    /// Adds deterministic data (lists first, then contacts spread over them).
    pub fn generate(&self, contacts: usize, lists: usize, seed: u64) {
        self.with(|a, now| generator::generate(a, contacts, lists, seed, now));
    }

    /// Creates a subscriber (permission explicit, create_source Contact) on the given
    /// lists. If the address exists, returns the existing id and adds the lists.
    pub fn create_contact(&self, email: &str, first_name: Option<&str>, list_ids: &[Uuid]) -> Uuid {
        self.with(|a, now| {
            if let Some(id) = a.by_email.get(&email.to_lowercase()).copied() {
                let bump = a.membership_moves_updated_at;
                if let Some(mut c) = a.contact_mut(&id) {
                    let before = c.subs.list_memberships.len();
                    for l in list_ids {
                        if !c.subs.list_memberships.contains(l) {
                            c.subs.list_memberships.push(*l);
                        }
                    }
                    if c.subs.list_memberships.len() != before {
                        membership_moved(bump, &mut c, now);
                    }
                }
                return id;
            }
            let id = Uuid::new_v4();
            let c = Contact {
                core: ContactCore {
                    contact_id: id,
                    email_address: EmailAddress {
                        address: email.to_string(),
                        permission_to_send: "explicit".into(),
                        created_at: now,
                        updated_at: now,
                        opt_in_source: Some("Contact".into()),
                        opt_in_date: Some(now),
                        opt_out_source: None,
                        opt_out_date: None,
                        opt_out_reason: None,
                        confirm_status: "off".into(),
                    },
                    first_name: first_name.map(str::to_string),
                    last_name: None,
                    job_title: None,
                    company_name: None,
                    birthday_month: None,
                    birthday_day: None,
                    anniversary: None,
                    create_source: "Contact".into(),
                    update_source: "Contact".into(),
                    created_at: now,
                    updated_at: now,
                    deleted_at: None,
                },
                subs: ContactSubs {
                    list_memberships: dedup(list_ids),
                    ..Default::default()
                },
            };
            a.insert_contact(c);
            id
        })
    }

    /// Edits the stored contact JSON (spec shape, all sub-resources), then bumps
    /// `updated_at` (and `email_address.updated_at` if the address or the permission
    /// changed). An edit that
    /// no longer deserialises as a contact is ignored (with a warning).
    pub fn update_contact(&self, id: Uuid, f: impl FnOnce(&mut serde_json::Value)) {
        self.with(|a, now| {
            let Some(old) = a.contacts.get(&id) else {
                tracing::warn!(%id, "update_contact: no such contact");
                return;
            };
            let old_email = old.core.email_address.address.clone();
            let old_perm = old.core.email_address.permission_to_send.clone();
            let mut v = match serde_json::to_value(&*old.c) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "update_contact: cannot serialise");
                    return;
                }
            };
            f(&mut v);
            let mut c: Contact = match serde_json::from_value(v) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "update_contact: edit is not a valid contact");
                    return;
                }
            };
            c.core.contact_id = id;
            c.core.updated_at = now;
            if c.core.email_address.address != old_email
                || c.core.email_address.permission_to_send != old_perm
            {
                c.core.email_address.updated_at = now;
            }
            a.replace_contact(c);
        });
    }

    /// Sets `updated_at` exactly (millisecond precision), for boundary-tie tests.
    pub fn set_updated_at(&self, id: Uuid, at: DateTime<Utc>) {
        self.with(|a, _| {
            if let Some(mut c) = a.contact_mut(&id) {
                c.core.updated_at = trunc_ms(at);
            }
        });
    }

    /// From now on the import refuses `email` without naming it: counted in `error_count`,
    /// absent from `activity_errors`, no contact created or changed.
    pub fn refuse_silently(&self, email: &str) {
        let key = email.trim().to_lowercase();
        self.with(|a, _| {
            a.silent_refusals.insert(key);
        });
    }

    /// The subscriber unsubscribes: permission unsubscribed, opt_out_* set,
    /// `email_address.updated_at` = now. Contact `updated_at` is NOT bumped (as the real
    /// service); list memberships are kept.
    pub fn unsubscribe(&self, id: Uuid, reason: Option<&str>) {
        self.with(|a, now| subscriber::unsubscribe(a, id, reason, now));
    }

    /// The subscriber opts in again: permission explicit, opt_out_* cleared,
    /// `email_address.updated_at` and `opt_in_date` = now. Contact `updated_at` is not
    /// bumped (mirrors `unsubscribe`).
    /// A re-subscription is recorded in [`AccountCtl::resubscriptions`].
    pub fn resubscribe(&self, id: Uuid) {
        self.with(|a, now| subscriber::resubscribe(a, id, now));
    }

    /// Removes one membership; bumps nothing (unless
    /// [`AccountCtl::set_membership_moves_updated_at`]).
    pub fn leave_list(&self, id: Uuid, list_id: Uuid) {
        self.with(|a, now| subscriber::leave_list(a, id, list_id, now));
    }

    /// Adds one membership; bumps nothing (unless
    /// [`AccountCtl::set_membership_moves_updated_at`]). Adding a deleted contact revives
    /// it (deleted_at removed, updated_at bumped).
    pub fn join_list(&self, id: Uuid, list_id: Uuid) {
        self.with(|a, now| subscriber::join_list(a, id, list_id, now));
    }

    /// `deleted_at` = today (a date), memberships cleared, `updated_at` bumped (a
    /// contact already deleted is left as it is).
    pub fn delete_contact(&self, id: Uuid) {
        self.with(|a, now| {
            subscriber::delete(a, id, now);
        });
    }

    /// `deleted_at` removed, `updated_at` bumped (memberships stay gone).
    pub fn restore_contact(&self, id: Uuid) {
        self.with(|a, now| {
            if let Some(mut c) = a.contact_mut(&id) {
                c.core.deleted_at = None;
                c.core.updated_at = now;
            }
        });
    }

    pub fn create_list(&self, name: &str) -> Uuid {
        self.with(|a, now| {
            let id = Uuid::new_v4();
            a.lists.insert(
                id,
                ListRec {
                    list_id: id,
                    name: name.to_string(),
                    description: None,
                    favorite: false,
                    created_at: now,
                    updated_at: now,
                    deleted_at: None,
                    membership_count: None,
                },
            );
            id
        })
    }

    /// The list gets `deleted_at` (date-time); its memberships go (contacts not bumped).
    pub fn delete_list(&self, list_id: Uuid) {
        self.with(|a, now| {
            let Some(l) = a.lists.get_mut(&list_id) else {
                return;
            };
            l.deleted_at = Some(now);
            l.updated_at = now;
            let ids: Vec<Uuid> = a
                .contacts
                .iter()
                .filter(|(_, c)| c.subs.list_memberships.contains(&list_id))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(mut c) = a.contact_mut(&id) {
                    c.subs.list_memberships.retain(|l| *l != list_id);
                }
            }
        });
    }

    /// Full spec shape, all sub-resources included.
    pub fn contact(&self, id: Uuid) -> Option<serde_json::Value> {
        self.with(|a, _| {
            a.contacts
                .get(&id)
                .and_then(|c| serde_json::to_value(&*c.c).ok())
        })
    }

    pub fn contact_by_email(&self, email: &str) -> Option<serde_json::Value> {
        let id = self.with(|a, _| a.by_email.get(&email.to_lowercase()).copied())?;
        self.contact(id)
    }

    /// Every contact id (deleted ones included), ordered.
    pub fn contact_ids(&self) -> Vec<Uuid> {
        self.with(|a, _| a.contacts.keys().copied().collect())
    }

    /// Ids of the lists that are not deleted, ordered.
    pub fn list_ids(&self) -> Vec<Uuid> {
        self.with(|a, _| {
            a.lists
                .values()
                .filter(|l| l.deleted_at.is_none())
                .map(|l| l.list_id)
                .collect()
        })
    }

    pub fn memberships(&self, id: Uuid) -> Vec<Uuid> {
        self.with(|a, _| {
            a.contacts
                .get(&id)
                .map(|c| c.subs.list_memberships.clone())
                .unwrap_or_default()
        })
    }

    /// Contacts that are not deleted.
    pub fn contacts_count(&self) -> usize {
        self.with(|a, _| a.contacts.values().filter(|c| !c.hot.deleted).count())
    }

    /// Every import request body received (parsed JSON), in order.
    pub fn imports(&self) -> Vec<serde_json::Value> {
        self.with(|a, _| a.imports.clone())
    }

    /// An activity in its `Activity` response shape.
    pub fn activity(&self, id: Uuid) -> Option<serde_json::Value> {
        self.with(|a, _| super::import_engine::activity_json(a, id))
    }

    /// Defines a custom field (`type` e.g. "string"); returns its id. A name that exists
    /// already returns the existing definition's id unchanged (names are unique).
    pub fn create_custom_field(&self, name: &str, label: &str, field_type: &str) -> Uuid {
        self.with(|a, now| {
            if let Some(d) = a.custom_fields.iter().find(|d| d.name == name) {
                return d.custom_field_id;
            }
            let id = Uuid::new_v4();
            a.custom_fields.push(CustomFieldDef {
                custom_field_id: id,
                name: name.to_string(),
                label: label.to_string(),
                field_type: field_type.to_string(),
                created_at: now,
                updated_at: now,
                import_drops_silently: false,
            });
            id
        })
    }

    /// Removes the definition and every contact's value of it (contacts not bumped).
    pub fn delete_custom_field(&self, id: Uuid) {
        self.with(|a, _| {
            a.custom_fields.retain(|d| d.custom_field_id != id);
            let holders: Vec<Uuid> = a
                .contacts
                .iter()
                .filter(|(_, c)| c.subs.custom_fields.iter().any(|f| f.custom_field_id == id))
                .map(|(cid, _)| *cid)
                .collect();
            for cid in holders {
                if let Some(mut c) = a.contact_mut(&cid) {
                    c.subs.custom_fields.retain(|f| f.custom_field_id != id);
                }
            }
        });
    }

    /// Sets (`Some`) or removes (`None`) a contact's value of a custom field and bumps the
    /// contact's `updated_at`, as an edit in the Constant Contact UI does.
    pub fn set_custom_field(&self, contact_id: Uuid, custom_field_id: Uuid, value: Option<&str>) {
        self.with(|a, now| {
            if let Some(mut c) = a.contact_mut(&contact_id) {
                let cfs = &mut c.subs.custom_fields;
                cfs.retain(|f| f.custom_field_id != custom_field_id);
                if let Some(v) = value {
                    cfs.push(CustomFieldValue {
                        custom_field_id,
                        value: Some(v.to_string()),
                    });
                }
                c.core.updated_at = now;
            }
        });
    }

    /// From now on the import accepts `cf:<name>` of this field but stores nothing and
    /// reports nothing (no counter, no `activity_errors` entry): only reading the contact
    /// back shows the value missing.
    pub fn drop_custom_field_silently(&self, custom_field_id: Uuid) {
        self.with(|a, _| {
            for d in a
                .custom_fields
                .iter_mut()
                .filter(|d| d.custom_field_id == custom_field_id)
            {
                d.import_drops_silently = true;
            }
        });
    }

    /// The custom field definitions as (id, name), in creation order.
    pub fn custom_fields(&self) -> Vec<(Uuid, String)> {
        self.with(|a, _| {
            a.custom_fields
                .iter()
                .map(|d| (d.custom_field_id, d.name.clone()))
                .collect()
        })
    }
}

fn dedup(ids: &[Uuid]) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

// Write-path controls (re-subscriptions, revivals, the membership switch, request
// triggers, refusals), kept in their own block.
impl AccountCtl {
    /// Every transition out of `unsubscribed` so far, from any write path (PUT, import,
    /// control, triggers), in order: (contact id, `email_address.updated_at` after it).
    pub fn resubscriptions(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        self.with(|a, _| a.transitions.resubscriptions.clone())
    }

    /// Every revival of a deleted contact so far (PUT with `update_source` Account,
    /// import, add to a list, `join_list`, `restore_contact`), in order: (contact id,
    /// `updated_at` after it).
    pub fn revivals(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        self.with(|a, _| a.transitions.revivals.clone())
    }

    /// Every (contact, list) membership added back by a request (import, PUT, add-to-list
    /// activity) or a control call other than the subscriber's own re-join, after the
    /// subscriber had left that list ([`AccountCtl::leave_list`] or a `LeaveList`
    /// trigger), in order. A syncer must never produce one.
    pub fn re_adds_after_leave(&self) -> Vec<(Uuid, Uuid)> {
        self.with(|a, _| a.transitions.readds.clone())
    }

    /// When `on`, every list-membership change (`leave_list`/`join_list`, the
    /// add/remove_list_memberships activities, imports that add a list, triggers) bumps
    /// the contact's `updated_at`. Default off: memberships move nothing (the worst case
    /// for a syncer).
    pub fn set_membership_moves_updated_at(&self, on: bool) {
        self.with(|a, _| a.membership_moves_updated_at = on);
    }

    /// Whether this account's contact exports carry a first `contact_id` column (the export
    /// guide names none, so the default is false: an export then cannot be keyed).
    pub fn set_export_contact_ids(&self, on: bool) {
        self.with(|a, _| a.export_contact_ids = on);
    }

    /// Installs a one-shot request trigger (see [`Trigger`]).
    pub fn on_request(&self, trigger: Trigger) -> TriggerId {
        self.with(|a, _| triggers::install(a, trigger))
    }

    /// Removes every request trigger of the account that has not fired yet (a quiet
    /// sandbox: nothing acts any more).
    pub fn clear_triggers(&self) {
        self.with(|a, _| a.triggers.retain(|t| t.fired));
    }

    /// Whether the trigger has fired (false for an unknown id).
    pub fn trigger_fired(&self, id: TriggerId) -> bool {
        self.with(|a, _| triggers::fired(a, id).unwrap_or(false))
    }

    /// Like [`AccountCtl::refuse_silently`], but the refused row is counted in
    /// `correctable_count` instead of `error_count` (still named in no
    /// `activity_errors` entry).
    pub fn refuse_as_correctable(&self, email: &str) {
        let key = email.trim().to_lowercase();
        self.with(|a, _| {
            a.correctable_refusals.insert(key);
        });
    }
}
