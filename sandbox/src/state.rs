//! Sandbox state: accounts, contacts, lists, tokens, limits, faults, request log.
//!
//! Stored shapes follow the spec definitions (`ContactResource`, `EmailAddress`,
//! `ContactList`, ...) so that serialising a stored record gives a valid response body.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::types::{Fault, RequestRecord, Trigger, TriggerId};

pub(crate) type Ts = DateTime<Utc>;

/// Millisecond-precision, `Z`-suffixed date-time serialisation (`2026-11-26T05:28:00.123Z`).
pub(crate) mod ts {
    use super::Ts;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Ts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::fmt_ts(d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_ts(&s).ok_or_else(|| serde::de::Error::custom("invalid date-time"))
    }
}

pub(crate) mod ts_opt {
    use super::Ts;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Ts>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&super::fmt_ts(d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ts>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => super::parse_ts(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("invalid date-time")),
        }
    }
}

pub(crate) fn fmt_ts(d: &Ts) -> impl std::fmt::Display + '_ {
    d.format("%Y-%m-%dT%H:%M:%S%.3fZ")
}

/// Lenient ISO-8601 parsing: `Z`, `+hh:mm`, `+hhmm`, optional fractional seconds.
/// A space in place of `+` (an unencoded `+` in a query string) is tolerated.
pub(crate) fn parse_ts(s: &str) -> Option<Ts> {
    let s = s.trim();
    let try_one = |s: &str| -> Option<Ts> {
        if let Ok(d) = DateTime::parse_from_rfc3339(s) {
            return Some(d.with_timezone(&Utc));
        }
        if let Ok(d) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
            return Some(d.with_timezone(&Utc));
        }
        None
    };
    if let Some(d) = try_one(s) {
        return Some(d);
    }
    if s.contains(' ') {
        return try_one(&s.replace(' ', "+"));
    }
    None
}

/// Truncates to millisecond precision (what the API shows).
pub(crate) fn trunc_ms(d: Ts) -> Ts {
    DateTime::from_timestamp_millis(d.timestamp_millis()).unwrap_or(d)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EmailAddress {
    pub address: String,
    #[serde(default = "default_permission")]
    pub permission_to_send: String,
    #[serde(with = "ts")]
    pub created_at: Ts,
    #[serde(with = "ts")]
    pub updated_at: Ts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_in_source: Option<String>,
    #[serde(default, with = "ts_opt", skip_serializing_if = "Option::is_none")]
    pub opt_in_date: Option<Ts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_source: Option<String>,
    #[serde(default, with = "ts_opt", skip_serializing_if = "Option::is_none")]
    pub opt_out_date: Option<Ts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_reason: Option<String>,
    #[serde(default = "default_confirm")]
    pub confirm_status: String,
}

fn default_permission() -> String {
    "implicit".into()
}
fn default_confirm() -> String {
    "off".into()
}

/// Core (always returned) contact fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContactCore {
    pub contact_id: Uuid,
    pub email_address: EmailAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday_month: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday_day: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anniversary: Option<String>,
    pub create_source: String,
    pub update_source: String,
    #[serde(with = "ts")]
    pub created_at: Ts,
    #[serde(with = "ts")]
    pub updated_at: Ts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<NaiveDate>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CustomFieldValue {
    pub custom_field_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PhoneNumber {
    pub phone_number_id: Uuid,
    pub phone_number: String,
    pub kind: String,
    #[serde(with = "ts")]
    pub created_at: Ts,
    #[serde(with = "ts")]
    pub updated_at: Ts,
    pub update_source: String,
    pub create_source: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StreetAddress {
    pub street_address_id: Uuid,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(with = "ts")]
    pub created_at: Ts,
    #[serde(with = "ts")]
    pub updated_at: Ts,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Note {
    pub note_id: Uuid,
    #[serde(with = "ts")]
    pub created_at: Ts,
    pub content: String,
}

/// Sub-resources (returned only with `include=`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ContactSubs {
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldValue>,
    #[serde(default)]
    pub list_memberships: Vec<Uuid>,
    #[serde(default)]
    pub phone_numbers: Vec<PhoneNumber>,
    #[serde(default)]
    pub street_addresses: Vec<StreetAddress>,
    #[serde(default)]
    pub taggings: Vec<Uuid>,
    #[serde(default)]
    pub notes: Vec<Note>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Contact {
    #[serde(flatten)]
    pub core: ContactCore,
    #[serde(flatten)]
    pub subs: ContactSubs,
}

impl Contact {
    pub fn is_deleted(&self) -> bool {
        self.core.deleted_at.is_some()
    }
    pub fn permission(&self) -> &str {
        &self.core.email_address.permission_to_send
    }
}

pub(crate) const INC_CUSTOM_FIELDS: u8 = 1;
pub(crate) const INC_LIST_MEMBERSHIPS: u8 = 2;
pub(crate) const INC_PHONE_NUMBERS: u8 = 4;
pub(crate) const INC_STREET_ADDRESSES: u8 = 8;
pub(crate) const INC_TAGGINGS: u8 = 16;
pub(crate) const INC_NOTES: u8 = 32;

/// Serialisation view of a contact with only the included sub-resources.
#[derive(Serialize)]
pub(crate) struct ContactOut<'a> {
    #[serde(flatten)]
    pub core: &'a ContactCore,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_fields: Option<&'a [CustomFieldValue]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_memberships: Option<&'a [Uuid]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_numbers: Option<&'a [PhoneNumber]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street_addresses: Option<&'a [StreetAddress]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taggings: Option<&'a [Uuid]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<&'a [Note]>,
}

impl<'a> ContactOut<'a> {
    pub fn new(c: &'a Contact, inc: u8) -> Self {
        let pick = |flag: u8| inc & flag != 0;
        ContactOut {
            core: &c.core,
            custom_fields: pick(INC_CUSTOM_FIELDS).then_some(c.subs.custom_fields.as_slice()),
            list_memberships: pick(INC_LIST_MEMBERSHIPS)
                .then_some(c.subs.list_memberships.as_slice()),
            phone_numbers: pick(INC_PHONE_NUMBERS).then_some(c.subs.phone_numbers.as_slice()),
            street_addresses: pick(INC_STREET_ADDRESSES)
                .then_some(c.subs.street_addresses.as_slice()),
            taggings: pick(INC_TAGGINGS).then_some(c.subs.taggings.as_slice()),
            notes: pick(INC_NOTES).then_some(c.subs.notes.as_slice()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ListRec {
    pub list_id: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub favorite: bool,
    #[serde(with = "ts")]
    pub created_at: Ts,
    #[serde(with = "ts")]
    pub updated_at: Ts,
    #[serde(default, with = "ts_opt", skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Ts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_count: Option<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct CustomFieldDef {
    pub custom_field_id: Uuid,
    pub name: String,
    pub label: String,
    /// `type` in the API (string, date, single_select, ...).
    pub field_type: String,
    pub created_at: Ts,
    pub updated_at: Ts,
    /// Test knob: the import accepts `cf:<name>` but stores nothing and reports nothing.
    pub import_drops_silently: bool,
}

/// Permission codes for [`Hot::perm`].
pub(crate) const PERM_UNSUBSCRIBED: u8 = 5;

fn perm_code(p: &str) -> u8 {
    match p {
        "explicit" => 0,
        "implicit" => 1,
        "not_set" => 2,
        "pending_confirmation" => 3,
        "temp_hold" => 4,
        "unsubscribed" => PERM_UNSUBSCRIBED,
        _ => 6,
    }
}

pub(crate) fn perm_of(name: &str) -> u8 {
    perm_code(name)
}

/// The fields the contact filters look at, kept inline in the map (no pointer chase)
/// so that a full scan of 200,000 contacts stays cheap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hot {
    pub updated_ms: i64,
    pub created_ms: i64,
    /// `i64::MIN` when there is no opt-out date.
    pub optout_ms: i64,
    pub deleted: bool,
    pub perm: u8,
}

impl Hot {
    pub fn of(c: &Contact) -> Hot {
        Hot {
            updated_ms: c.core.updated_at.timestamp_millis(),
            created_ms: c.core.created_at.timestamp_millis(),
            optout_ms: c
                .core
                .email_address
                .opt_out_date
                .map_or(i64::MIN, |d| d.timestamp_millis()),
            deleted: c.core.deleted_at.is_some(),
            perm: perm_code(&c.core.email_address.permission_to_send),
        }
    }
}

/// A stored contact: hot filter fields inline plus the shared record.
pub(crate) struct Slot {
    pub hot: Hot,
    pub c: Arc<Contact>,
}

impl std::ops::Deref for Slot {
    type Target = Contact;
    fn deref(&self) -> &Contact {
        &self.c
    }
}

/// Mutable access to a stored contact; refreshes the hot fields when dropped.
pub(crate) struct ContactMut<'a> {
    id: Uuid,
    slot: &'a mut Slot,
    version: &'a mut u64,
    idx: &'a mut TimeIndexes,
    log: &'a mut TransitionLog,
    /// The memberships before the change (for the re-add log).
    old_lists: Vec<Uuid>,
}

impl std::ops::Deref for ContactMut<'_> {
    type Target = Contact;
    fn deref(&self) -> &Contact {
        &self.slot.c
    }
}

impl std::ops::DerefMut for ContactMut<'_> {
    fn deref_mut(&mut self) -> &mut Contact {
        Arc::make_mut(&mut self.slot.c)
    }
}

impl Drop for ContactMut<'_> {
    fn drop(&mut self) {
        self.idx.remove(self.id, &self.slot.hot);
        let old = self.slot.hot;
        self.slot.hot = Hot::of(&self.slot.c);
        self.log.note(self.id, &old, &self.slot.c);
        self.log
            .note_lists(self.id, &self.old_lists, &self.slot.c.subs.list_memberships);
        self.idx.add(self.id, &self.slot.hot);
        *self.version += 1;
    }
}

/// Transitions recorded from every write path (HTTP, import, control, triggers): the
/// contact left `unsubscribed` (a re-subscription, stamped with
/// `email_address.updated_at`) or stopped being deleted (a revival, stamped with
/// `updated_at`). Every path that makes such a change sets those stamps to now.
/// Also: every (contact, list) membership added back by any path other than the
/// subscriber's own re-join after the subscriber left that list (a re-add).
#[derive(Default)]
pub(crate) struct TransitionLog {
    pub resubscriptions: Vec<(Uuid, Ts)>,
    pub revivals: Vec<(Uuid, Ts)>,
    /// (contact, list) pairs the subscriber left and has not re-joined since.
    pub left: HashSet<(Uuid, Uuid)>,
    /// Memberships added back after such a leave, in order.
    pub readds: Vec<(Uuid, Uuid)>,
}

impl TransitionLog {
    fn note(&mut self, id: Uuid, old: &Hot, new: &Contact) {
        if old.perm == PERM_UNSUBSCRIBED && perm_code(new.permission()) != PERM_UNSUBSCRIBED {
            self.resubscriptions
                .push((id, new.core.email_address.updated_at));
        }
        if old.deleted && !new.is_deleted() {
            self.revivals.push((id, new.core.updated_at));
        }
    }

    fn note_lists(&mut self, id: Uuid, old: &[Uuid], new: &[Uuid]) {
        if self.left.is_empty() {
            return;
        }
        for l in new.iter().filter(|l| !old.contains(l)) {
            if self.left.contains(&(id, *l)) {
                self.readds.push((id, *l));
            }
        }
    }
}

/// Secondary indexes on `updated_at` and the opt-out date (milliseconds, contact id), so
/// that selective `updated_*`/`optout_*` queries need not scan every contact.
#[derive(Default)]
pub(crate) struct TimeIndexes {
    pub updated: BTreeSet<(i64, Uuid)>,
    pub optout: BTreeSet<(i64, Uuid)>,
}

impl TimeIndexes {
    fn remove(&mut self, id: Uuid, h: &Hot) {
        self.updated.remove(&(h.updated_ms, id));
        if h.optout_ms != i64::MIN {
            self.optout.remove(&(h.optout_ms, id));
        }
    }
    fn add(&mut self, id: Uuid, h: &Hot) {
        self.updated.insert((h.updated_ms, id));
        if h.optout_ms != i64::MIN {
            self.optout.insert((h.optout_ms, id));
        }
    }
}

#[derive(Default)]
pub(crate) struct Account {
    pub contacts: BTreeMap<Uuid, Slot>,
    /// lowercase address -> contact id
    pub by_email: HashMap<String, Uuid>,
    pub lists: BTreeMap<Uuid, ListRec>,
    pub custom_fields: Vec<CustomFieldDef>,
    pub tags: Vec<Uuid>,
    pub activities: BTreeMap<Uuid, ActivityRec>,
    /// Activity ids in creation order.
    pub activity_order: Vec<Uuid>,
    pub imports: Vec<serde_json::Value>,
    /// Bumped on every contact change (keys the count cache).
    pub version: u64,
    /// `contacts_count` per filter: (version, count).
    pub count_cache: HashMap<String, (u64, usize)>,
    /// Matching ids of a time-indexed filter: (version, sorted ids).
    pub ids_cache: HashMap<String, (u64, Arc<Vec<Uuid>>)>,
    pub idx: TimeIndexes,
    /// Lower-case addresses the import refuses for a reason the client cannot foresee:
    /// counted in `error_count`, named in no `activity_errors` entry (the real format of
    /// those messages is unconfirmed, so a client must not depend on them).
    pub silent_refusals: std::collections::HashSet<String>,
    /// Like `silent_refusals`, counted in `correctable_count` instead of `error_count`.
    pub correctable_refusals: std::collections::HashSet<String>,
    pub transitions: TransitionLog,
    /// When true, every list-membership change bumps the contact's `updated_at` (default
    /// false: memberships move nothing, the worst case for a syncer).
    pub membership_moves_updated_at: bool,
    /// Installed request triggers (see `triggers.rs`), fired ones included.
    pub triggers: Vec<TriggerSlot>,
    /// Next trigger id.
    pub next_trigger: u64,
    /// CSVs of completed exports by `file_export_id`.
    pub export_files: HashMap<Uuid, Arc<String>>,
    /// When true, exports carry a first `contact_id` column (the export guide names none;
    /// default false).
    pub export_contact_ids: bool,
}

impl Account {
    pub fn insert_contact(&mut self, c: Contact) {
        let id = c.core.contact_id;
        self.by_email
            .insert(c.core.email_address.address.to_lowercase(), id);
        let hot = Hot::of(&c);
        self.idx.add(id, &hot);
        let old = self.contacts.insert(
            id,
            Slot {
                hot,
                c: Arc::new(c),
            },
        );
        if let Some(old) = old {
            // Same key (ms, id) as the new entry would be removed too: re-add after.
            self.idx.remove(id, &old.hot);
            self.idx.add(id, &hot);
            if let Some(new) = self.contacts.get(&id) {
                self.transitions.note(id, &old.hot, &new.c);
                self.transitions.note_lists(
                    id,
                    &old.c.subs.list_memberships,
                    &new.c.subs.list_memberships,
                );
            }
        }
        self.version += 1;
    }

    /// Replaces a stored contact, keeping the email index right.
    pub fn replace_contact(&mut self, c: Contact) {
        let id = c.core.contact_id;
        if let Some(old) = self.contacts.get(&id) {
            let old_email = old.core.email_address.address.to_lowercase();
            if old_email != c.core.email_address.address.to_lowercase() {
                self.by_email.remove(&old_email);
            }
        }
        self.insert_contact(c);
    }

    pub fn contact_mut(&mut self, id: &Uuid) -> Option<ContactMut<'_>> {
        let version = &mut self.version;
        let idx = &mut self.idx;
        let log = &mut self.transitions;
        self.contacts.get_mut(id).map(|slot| ContactMut {
            id: *id,
            old_lists: slot.c.subs.list_memberships.clone(),
            slot,
            version,
            idx,
            log,
        })
    }
}

/// A list-membership change on `c`: bumps `updated_at` when `bump` (the account's
/// `membership_moves_updated_at`).
pub(crate) fn membership_moved(bump: bool, c: &mut Contact, now: Ts) {
    if bump {
        c.core.updated_at = now;
    }
}

// ---------------------------------------------------------------- activities
// Bulk activities (imports and list-membership changes): the records only; `import_engine`
// advances them, `activities` serves them.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Import,
    AddMembers,
    RemoveMembers,
    /// `contact_delete`
    Delete,
    /// `contact_exports`
    Export,
}

#[derive(Debug)]
pub(crate) enum Source {
    ContactIds(Vec<Uuid>),
    ListIds(Vec<Uuid>),
    AllActive,
}

#[derive(Debug)]
pub(crate) enum Job {
    Import {
        items: Vec<Map<String, Value>>,
        list_ids: Vec<Uuid>,
    },
    Members {
        source: Source,
        exclude: HashSet<Uuid>,
        list_ids: Vec<Uuid>,
    },
    /// `contact_delete`: `ContactIds` or `ListIds`.
    Delete { source: Source },
    /// `contact_exports`: rendered to a CSV when the activity completes.
    Export(ExportJob),
}

/// The rows of an export.
#[derive(Debug)]
pub(crate) enum ExportSource {
    All,
    ContactIds(Vec<Uuid>),
    ListIds(Vec<Uuid>),
}

/// What an export activity will render.
#[derive(Debug)]
pub(crate) struct ExportJob {
    pub source: ExportSource,
    /// `active`, `unsubscribed` or `removed` (deleted).
    pub status: Option<String>,
    /// Columns asked for (`None`: all).
    pub fields: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub items_total_count: u64,
    pub items_completed_count: u64,
    pub person_count: u64,
    pub error_count: u64,
    pub correctable_count: u64,
    pub cannot_add_to_list_count: u64,
    pub list_count: u64,
}

#[derive(Debug)]
pub(crate) struct ActivityRec {
    pub id: Uuid,
    pub kind: Kind,
    pub state: String,
    pub created_at: Ts,
    pub started_at: Option<Ts>,
    pub completed_at: Option<Ts>,
    pub updated_at: Ts,
    pub percent_done: u8,
    pub errors: Vec<String>,
    pub counters: Counters,
    pub processing_at: Instant,
    pub done_at: Instant,
    pub job: Option<Job>,
    pub forced: Option<(String, Vec<String>)>,
    /// The CSV of a completed export (`_links.results.href`).
    pub results: Option<Uuid>,
}

impl ActivityRec {
    pub fn terminal(&self) -> bool {
        !matches!(self.state.as_str(), "initialized" | "processing")
    }
}

/// An installed request trigger and how far it got.
#[derive(Debug)]
pub(crate) struct TriggerSlot {
    pub id: TriggerId,
    pub trigger: Trigger,
    /// Matching requests seen so far.
    pub seen: usize,
    pub fired: bool,
}

pub(crate) struct AccessToken {
    pub account: String,
    pub expires: Ts,
}

/// Per API key limits (one API key: the sandbox's client_id).
pub(crate) struct Limits {
    pub daily_quota: Option<u64>,
    pub day: Option<NaiveDate>,
    pub day_count: u64,
    /// Every admitted `/v3` request waits this long before it is answered ...
    pub latency: std::time::Duration,
    /// ... plus a uniformly drawn share of this (network and server jitter).
    pub jitter: std::time::Duration,
}

impl Limits {
    /// This request's latency: `latency` + uniform(0, `jitter`).
    pub fn draw_latency(&self) -> std::time::Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        let share: f64 = rand::random();
        self.latency + self.jitter.mul_f64(share)
    }
}

pub(crate) enum FaultSlot {
    Fault(Fault),
    /// FailAfter with its running count of passed requests.
    FailAfter {
        path_prefix: String,
        ok: usize,
        status: u16,
        seen: usize,
    },
}

pub(crate) struct State {
    pub accounts: HashMap<String, Account>,
    pub refresh_tokens: HashMap<String, String>,
    pub access_tokens: HashMap<String, AccessToken>,
    pub clock_offset: chrono::Duration,
    pub limits: Limits,
    pub faults: VecDeque<FaultSlot>,
    pub requests: Vec<RequestRecord>,
    pub throttled: u64,
    pub token_requests: u64,
    /// Time an activity spends in `initialized`/`processing`.
    pub import_processing: std::time::Duration,
    pub oauth: super::oauth_state::OAuthState,
}

/// The API key's requests-per-second limit, apart from the state lock: a request is
/// checked the moment it arrives, in the order requests arrive, as the API's edge would —
/// never behind another request's page that holds the state lock (which made an on-time
/// request look early, or two requests checked out of order).
#[derive(Debug, Default)]
pub(crate) struct Rate {
    pub per_second: Option<f64>,
    /// GCRA theoretical arrival time.
    pub tat: Option<Instant>,
}

pub(crate) struct Inner {
    pub state: Mutex<State>,
    pub rate: Mutex<Rate>,
    pub client_id: String,
    pub client_secret: String,
    pub access_token_ttl: std::time::Duration,
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate limit. Taken alone, or after the state lock — never the other way round.
    pub fn rate(&self) -> MutexGuard<'_, Rate> {
        self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    pub fn now(&self) -> Ts {
        trunc_ms(Utc::now() + self.clock_offset)
    }

    pub fn account_mut(&mut self, name: &str) -> &mut Account {
        self.accounts.entry(name.to_string()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_date_time_parsing() {
        let want = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .ok();
        for s in [
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00.000Z",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01T00:00:00.000000+0000",
            "2024-01-01T00:00:00.000000 0000",
            "2024-01-01T01:00:00+01:00",
            "2023-12-31T19:00:00-0500",
        ] {
            assert_eq!(parse_ts(s), want, "{s}");
        }
        for s in ["yesterday", "2024-01-01", "2024-01-01T00:00:00", ""] {
            assert_eq!(parse_ts(s), None, "{s}");
        }
    }

    #[test]
    fn timestamps_have_millisecond_precision_and_z() {
        let d = DateTime::parse_from_rfc3339("2026-11-26T05:28:00.123456Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(fmt_ts(&trunc_ms(d)).to_string(), "2026-11-26T05:28:00.123Z");
    }
}

#[cfg(test)]
mod latency_tests {
    use std::time::Duration;

    use super::Limits;

    #[test]
    fn a_drawn_latency_lies_in_fixed_plus_jitter_and_spreads_over_it() {
        let l = Limits {
            daily_quota: None,
            day: None,
            day_count: 0,
            latency: Duration::from_millis(600),
            jitter: Duration::from_millis(100),
        };
        let draws: Vec<Duration> = (0..2_000).map(|_| l.draw_latency()).collect();
        let lo = Duration::from_millis(600);
        let hi = Duration::from_millis(700);
        assert!(draws.iter().all(|d| (lo..=hi).contains(d)));
        let (min, max) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*min < lo + Duration::from_millis(10), "{min:?}");
        assert!(*max > hi - Duration::from_millis(10), "{max:?}");
        let none = Limits {
            jitter: Duration::ZERO,
            ..l
        };
        assert_eq!(none.draw_latency(), lo);
    }
}
