//! `GET /v3/contacts`: filters, include, count, keyset paging on contact_id.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use serde::Serialize;
use uuid::Uuid;

use super::cursor::{self, next_links, parse_limit, PagingLinks};
use super::import_engine::tick;
use super::pipeline::AuthCtx;
use super::respond::{bad_request, json};
use super::state::{
    parse_ts, perm_of, Account, Contact, ContactOut, Hot, Inner, Slot, INC_CUSTOM_FIELDS,
    INC_LIST_MEMBERSHIPS, INC_NOTES, INC_PHONE_NUMBERS, INC_STREET_ADDRESSES, INC_TAGGINGS,
    PERM_UNSUBSCRIBED,
};

/// Contact status filter values (spec enum of `GET /contacts` `status`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StatusF {
    All,
    Active,
    Deleted,
    NotSet,
    PendingConfirmation,
    TempHold,
    Unsubscribed,
}

#[derive(Debug, Default)]
pub(crate) struct ContactQuery {
    statuses: Vec<StatusF>,
    email: Option<String>,
    lists: Option<HashSet<Uuid>>,
    tags: Option<HashSet<Uuid>>,
    updated_after: Option<i64>,
    updated_before: Option<i64>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    optout_after: Option<i64>,
    optout_before: Option<i64>,
    include: u8,
    include_count: bool,
    limit: usize,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "TRUE" | "True" => Ok(true),
        "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("Invalid value for {name}: {v}")),
    }
}

fn parse_ids(name: &str, v: &str, max: usize) -> Result<HashSet<Uuid>, String> {
    let mut out = HashSet::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id = Uuid::parse_str(part).map_err(|_| format!("Invalid id in {name}: {part}"))?;
        out.insert(id);
    }
    if out.len() > max {
        return Err(format!("{name} accepts at most {max} ids"));
    }
    if out.is_empty() {
        return Err(format!("{name} must not be empty"));
    }
    Ok(out)
}

impl ContactQuery {
    pub(crate) fn parse(params: &[(String, String)]) -> Result<ContactQuery, String> {
        let get = |k: &str| {
            params
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        // Stored times have millisecond precision: a lower bound is floored and an
        // upper bound ceiled, so that the strict comparisons stay exact.
        let date = |k: &str, ceil: bool| -> Result<Option<i64>, String> {
            match get(k) {
                None => Ok(None),
                Some(v) => parse_ts(v)
                    .map(|d| {
                        let ms = d.timestamp_millis();
                        let sub_ms = d.timestamp_subsec_nanos() % 1_000_000 != 0;
                        Some(if ceil && sub_ms { ms + 1 } else { ms })
                    })
                    .ok_or_else(|| format!("Invalid date-time for {k}: {v}")),
            }
        };
        let mut q = ContactQuery {
            limit: parse_limit(get("limit"), 500)?,
            ..Default::default()
        };
        if let Some(s) = get("status") {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                q.statuses.push(match part {
                    "all" => StatusF::All,
                    "active" => StatusF::Active,
                    "deleted" => StatusF::Deleted,
                    "not_set" => StatusF::NotSet,
                    "pending_confirmation" => StatusF::PendingConfirmation,
                    "temp_hold" => StatusF::TempHold,
                    "unsubscribed" => StatusF::Unsubscribed,
                    other => return Err(format!("Invalid status: {other}")),
                });
            }
        }
        q.email = get("email").map(|e| e.trim().to_lowercase());
        if let Some(v) = get("lists") {
            q.lists = Some(parse_ids("lists", v, 25)?);
        }
        if let Some(v) = get("tags") {
            q.tags = Some(parse_ids("tags", v, 50)?);
        }
        if get("segment_id").is_some() {
            return Err("segment_id is not supported by the sandbox".into());
        }
        q.updated_after = date("updated_after", false)?;
        q.updated_before = date("updated_before", true)?;
        q.created_after = date("created_after", false)?;
        q.created_before = date("created_before", true)?;
        q.optout_after = date("optout_after", false)?;
        q.optout_before = date("optout_before", true)?;
        if let Some(inc) = get("include") {
            for part in inc.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                q.include |= match part {
                    "custom_fields" => INC_CUSTOM_FIELDS,
                    "list_memberships" => INC_LIST_MEMBERSHIPS,
                    "phone_numbers" => INC_PHONE_NUMBERS,
                    "street_addresses" => INC_STREET_ADDRESSES,
                    "taggings" => INC_TAGGINGS,
                    "notes" => INC_NOTES,
                    other => return Err(format!("Invalid include value: {other}")),
                };
            }
        }
        if let Some(v) = get("include_count") {
            q.include_count = parse_bool("include_count", v)?;
        }
        Ok(q)
    }

    fn status_ok(&self, h: &Hot) -> bool {
        let deleted = h.deleted;
        if self.statuses.is_empty() {
            return !deleted;
        }
        let perm = h.perm;
        self.statuses.iter().any(|s| match s {
            StatusF::All => true,
            StatusF::Deleted => deleted,
            StatusF::Active => !deleted && perm != PERM_UNSUBSCRIBED,
            StatusF::Unsubscribed => !deleted && perm == PERM_UNSUBSCRIBED,
            StatusF::NotSet => !deleted && perm == perm_of("not_set"),
            StatusF::PendingConfirmation => !deleted && perm == perm_of("pending_confirmation"),
            StatusF::TempHold => !deleted && perm == perm_of("temp_hold"),
        })
    }

    /// Strict bounds on the hot fields (milliseconds), then the filters that need the
    /// full record.
    pub(crate) fn matches(&self, slot: &Slot) -> bool {
        let h = &slot.hot;
        if !self.status_ok(h) {
            return false;
        }
        let after = |bound: Option<i64>, v: i64| bound.is_none_or(|b| v > b);
        let before = |bound: Option<i64>, v: i64| bound.is_none_or(|b| v < b);
        if !after(self.updated_after, h.updated_ms)
            || !before(self.updated_before, h.updated_ms)
            || !after(self.created_after, h.created_ms)
            || !before(self.created_before, h.created_ms)
        {
            return false;
        }
        if self.optout_after.is_some() || self.optout_before.is_some() {
            if h.optout_ms == i64::MIN {
                return false;
            }
            if !after(self.optout_after, h.optout_ms) || !before(self.optout_before, h.optout_ms) {
                return false;
            }
        }
        if self.email.is_none() && self.lists.is_none() && self.tags.is_none() {
            return true;
        }
        let c: &Contact = slot;
        if let Some(e) = &self.email {
            if !c.core.email_address.address.eq_ignore_ascii_case(e) {
                return false;
            }
        }
        if let Some(lists) = &self.lists {
            if !c.subs.list_memberships.iter().any(|l| lists.contains(l)) {
                return false;
            }
        }
        if let Some(tags) = &self.tags {
            if !c.subs.taggings.iter().any(|t| tags.contains(t)) {
                return false;
            }
        }
        true
    }
}

/// The filters of a query (what `contacts_count` depends on), canonical.
fn count_key(params: &[(String, String)]) -> String {
    let mut kv: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "cursor" | "limit" | "include" | "include_count"))
        .collect();
    kv.sort();
    kv.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Serialize)]
struct ContactsBody<'a> {
    contacts: Vec<ContactOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contacts_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    _links: Option<PagingLinks>,
}

pub(crate) async fn list_contacts(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    uri: Uri,
) -> Response {
    let (params, after) = match cursor::request_params(&uri) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let q = match ContactQuery::parse(&params) {
        Ok(q) => q,
        Err(e) => return bad_request(&e),
    };
    let (page, count, more) = {
        let mut st = inner.lock();
        tick(&inner, &mut st, &auth.account);
        let Some(acct) = st.accounts.get_mut(&auth.account) else {
            return json(
                StatusCode::OK,
                &serde_json::json!({"contacts": [], "contacts_count": 0}),
            );
        };
        let key = count_key(&params);
        select(acct, &q, after, &key)
    };
    let next = if more {
        page.last()
            .map(|c| cursor::encode(&params, c.core.contact_id))
    } else {
        None
    };
    let body = ContactsBody {
        contacts: page.iter().map(|c| ContactOut::new(c, q.include)).collect(),
        contacts_count: count,
        _links: next_links("/v3/contacts", next),
    };
    json(StatusCode::OK, &body)
}

/// One page (ordered by contact_id, after `after`), the count if asked, and whether more
/// remain. Selective time-bounded queries use the time indexes; others scan.
pub(crate) fn select(
    acct: &mut Account,
    q: &ContactQuery,
    after: Option<Uuid>,
    count_key: &str,
) -> (Vec<Arc<Contact>>, Option<usize>, bool) {
    let cached = match acct.ids_cache.get(count_key) {
        Some((v, ids)) if *v == acct.version => Some(Arc::clone(ids)),
        _ => indexed_matches(acct, q).map(|ids| {
            // A walk asks the same query page after page: the matches are kept until the
            // account changes (without it a large time slice costs a scan per page).
            let ids = Arc::new(ids);
            if acct.ids_cache.len() > 64 {
                acct.ids_cache.clear();
            }
            acct.ids_cache
                .insert(count_key.to_string(), (acct.version, Arc::clone(&ids)));
            ids
        }),
    };
    if let Some(ids) = cached {
        let mut page = Vec::with_capacity(q.limit.min(512));
        let mut more = false;
        let start = match after {
            Some(a) => ids.partition_point(|id| *id <= a),
            None => 0,
        };
        for id in &ids[start..] {
            if page.len() == q.limit {
                more = true;
                break;
            }
            if let Some(s) = acct.contacts.get(id) {
                page.push(Arc::clone(&s.c));
            }
        }
        return (page, q.include_count.then_some(ids.len()), more);
    }
    let lower = match after {
        Some(id) => Bound::Excluded(id),
        None => Bound::Unbounded,
    };
    let mut page: Vec<Arc<Contact>> = Vec::with_capacity(q.limit.min(512));
    let mut more = false;
    for c in acct
        .contacts
        .range((lower, Bound::Unbounded))
        .map(|(_, c)| c)
    {
        if q.matches(c) {
            if page.len() == q.limit {
                more = true;
                break;
            }
            page.push(Arc::clone(&c.c));
        }
    }
    let count = q
        .include_count
        .then(|| match acct.count_cache.get(count_key) {
            Some((v, n)) if *v == acct.version => *n,
            _ => {
                let n = acct.contacts.values().filter(|c| q.matches(c)).count();
                if acct.count_cache.len() > 1000 {
                    acct.count_cache.clear();
                }
                acct.count_cache
                    .insert(count_key.to_string(), (acct.version, n));
                n
            }
        });
    (page, count, more)
}

/// Every matching id, sorted, found through a time index, when the query has
/// `updated_*` or `optout_*` bounds that select at most a quarter of the contacts.
/// `None` = scan instead.
fn indexed_matches(acct: &Account, q: &ContactQuery) -> Option<Vec<Uuid>> {
    let (set, lo, hi) = if q.updated_after.is_some() || q.updated_before.is_some() {
        (&acct.idx.updated, q.updated_after, q.updated_before)
    } else if q.optout_after.is_some() || q.optout_before.is_some() {
        (&acct.idx.optout, q.optout_after, q.optout_before)
    } else {
        return None;
    };
    let lower = match lo {
        Some(a) => Bound::Excluded((a, Uuid::max())),
        None => Bound::Unbounded,
    };
    let upper = match hi {
        Some(b) => Bound::Excluded((b, Uuid::nil())),
        None => Bound::Unbounded,
    };
    if let (Some(a), Some(b)) = (lo, hi) {
        if a >= b {
            return Some(Vec::new());
        }
    }
    let budget = acct.contacts.len() / 4;
    let mut ids = Vec::new();
    for (_, id) in set.range((lower, upper)) {
        if ids.len() >= budget {
            return None;
        }
        ids.push(*id);
    }
    ids.retain(|id| acct.contacts.get(id).is_some_and(|s| q.matches(s)));
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

/// `GET /v3/contacts/{contact_id}?include=...`: one `ContactResource` (deleted ones
/// too), 404 if unknown.
pub(crate) async fn get_contact(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    let params = match cursor::query_pairs(&uri) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let include: Vec<(String, String)> =
        params.into_iter().filter(|(k, _)| k == "include").collect();
    let q = match ContactQuery::parse(&include) {
        Ok(q) => q,
        Err(e) => return bad_request(&e),
    };
    let not_found = || super::respond::not_found("Contact not found");
    let Ok(id) = Uuid::parse_str(&id) else {
        return not_found();
    };
    let found = {
        let mut st = inner.lock();
        tick(&inner, &mut st, &auth.account);
        st.accounts
            .get(&auth.account)
            .and_then(|a| a.contacts.get(&id))
            .map(|s| Arc::clone(&s.c))
    };
    match found {
        Some(c) => json(StatusCode::OK, &ContactOut::new(&c, q.include)),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator;
    use crate::state::{fmt_ts, Account};

    fn scan(acct: &Account, q: &ContactQuery) -> Vec<Uuid> {
        acct.contacts
            .values()
            .filter(|c| q.matches(c))
            .map(|c| c.core.contact_id)
            .collect()
    }

    fn query(pairs: &[(&str, String)]) -> ContactQuery {
        let p: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        match ContactQuery::parse(&p) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn time_indexes_agree_with_a_full_scan() {
        let now = chrono::Utc::now();
        let mut acct = Account::default();
        generator::generate(&mut acct, 2000, 5, 3, now);
        // Mutations through every path keep the indexes right.
        let ids: Vec<Uuid> = acct.contacts.keys().copied().collect();
        for (i, id) in ids.iter().enumerate().take(300) {
            if let Some(mut c) = acct.contact_mut(id) {
                c.core.updated_at = now - chrono::Duration::minutes(i as i64);
                if i % 3 == 0 {
                    c.core.email_address.opt_out_date =
                        Some(now - chrono::Duration::hours(i as i64));
                    c.core.email_address.permission_to_send = "unsubscribed".into();
                }
                if i % 7 == 0 {
                    c.core.deleted_at = Some(now.date_naive());
                }
            }
        }
        if let Some(c) = acct.contacts.get(&ids[1]).map(|s| (*s.c).clone()) {
            let mut c = c;
            c.core.updated_at = now + chrono::Duration::seconds(5);
            acct.replace_contact(c);
        }
        let t = |d: chrono::Duration| fmt_ts(&(now + d)).to_string();
        let cases: Vec<Vec<(&str, String)>> = vec![
            vec![("updated_after", t(-chrono::Duration::minutes(100)))],
            vec![
                ("updated_after", t(-chrono::Duration::minutes(100))),
                ("status", "all".into()),
            ],
            vec![
                ("updated_after", t(-chrono::Duration::minutes(200))),
                ("updated_before", t(-chrono::Duration::minutes(20))),
            ],
            vec![("updated_after", t(chrono::Duration::seconds(1)))],
            vec![("updated_after", t(chrono::Duration::days(1)))],
            vec![("updated_before", t(-chrono::Duration::days(1000)))],
            vec![
                ("updated_after", t(chrono::Duration::zero())),
                ("updated_before", t(chrono::Duration::zero())),
            ],
            vec![
                ("optout_after", t(-chrono::Duration::hours(50))),
                ("status", "unsubscribed".into()),
            ],
            vec![
                ("optout_after", t(-chrono::Duration::hours(50))),
                ("status", "all".into()),
            ],
            vec![("optout_before", t(-chrono::Duration::hours(10)))],
        ];
        let mut used_index = 0;
        for case in &cases {
            let q = query(case);
            let want = scan(&acct, &q);
            if let Some(got) = indexed_matches(&acct, &q) {
                used_index += 1;
                assert_eq!(got, want, "{case:?}");
            }
            let (page, count, _) = select(
                &mut acct,
                &ContactQuery {
                    include_count: true,
                    limit: 500,
                    ..query(case)
                },
                None,
                &format!("{case:?}"),
            );
            let page_ids: Vec<Uuid> = page.iter().map(|c| c.core.contact_id).collect();
            assert_eq!(
                page_ids,
                want.iter().take(500).copied().collect::<Vec<_>>(),
                "{case:?}"
            );
            assert_eq!(count, Some(want.len()), "{case:?}");
        }
        assert!(
            used_index >= 6,
            "the index path must be exercised ({used_index})"
        );
    }
}
