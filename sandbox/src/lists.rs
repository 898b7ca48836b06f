//! `GET /v3/contact_lists`: status filter, counts, keyset paging on list_id.

use std::collections::HashMap;
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
use super::state::{Account, Inner, ListRec};

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListStatus {
    All,
    Active,
    Deleted,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MemberCount {
    All,
    Active,
}

struct ListQuery {
    statuses: Vec<ListStatus>,
    name: Option<String>,
    include_count: bool,
    membership: Option<MemberCount>,
    limit: usize,
}

impl ListQuery {
    fn parse(params: &[(String, String)]) -> Result<ListQuery, String> {
        let get = |k: &str| {
            params
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        let mut statuses = Vec::new();
        if let Some(s) = get("status") {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                statuses.push(match part {
                    "all" => ListStatus::All,
                    "active" => ListStatus::Active,
                    "deleted" => ListStatus::Deleted,
                    other => return Err(format!("Invalid status: {other}")),
                });
            }
        }
        if statuses.is_empty() {
            statuses.push(ListStatus::Active);
        }
        let include_count = match get("include_count") {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(format!("Invalid value for include_count: {v}")),
        };
        let membership = match get("include_membership_count") {
            None => None,
            Some("all") => Some(MemberCount::All),
            Some("active") => Some(MemberCount::Active),
            Some(v) => return Err(format!("Invalid value for include_membership_count: {v}")),
        };
        if let Some(ct) = get("channel_type") {
            if ct != "email" && ct != "sms" {
                return Err(format!("Invalid channel_type: {ct}"));
            }
        }
        Ok(ListQuery {
            statuses,
            name: get("name").map(str::to_string),
            include_count,
            membership,
            limit: parse_limit(get("limit"), 1000)?,
        })
    }

    fn matches(&self, l: &ListRec) -> bool {
        let deleted = l.deleted_at.is_some();
        let status_ok = self.statuses.iter().any(|s| match s {
            ListStatus::All => true,
            ListStatus::Active => !deleted,
            ListStatus::Deleted => deleted,
        });
        status_ok && self.name.as_ref().is_none_or(|n| *n == l.name)
    }
}

/// Membership counts per list; `active_only` counts only mailable (not unsubscribed,
/// not deleted) contacts.
pub(crate) fn membership_counts(acct: &Account, active_only: bool) -> HashMap<Uuid, u64> {
    let mut counts: HashMap<Uuid, u64> = HashMap::new();
    for c in acct.contacts.values() {
        if c.is_deleted() || (active_only && c.permission() == "unsubscribed") {
            continue;
        }
        for l in &c.subs.list_memberships {
            *counts.entry(*l).or_default() += 1;
        }
    }
    counts
}

#[derive(Serialize)]
struct ListsBody {
    lists: Vec<ListRec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lists_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    _links: Option<PagingLinks>,
}

pub(crate) async fn list_lists(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    uri: Uri,
) -> Response {
    let (params, after) = match cursor::request_params(&uri) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let q = match ListQuery::parse(&params) {
        Ok(q) => q,
        Err(e) => return bad_request(&e),
    };
    let (mut page, count, more, counts) = {
        let mut st = inner.lock();
        tick(&inner, &mut st, &auth.account);
        let acct = st.account_mut(&auth.account);
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut page = Vec::new();
        let mut more = false;
        for l in acct.lists.range((lower, Bound::Unbounded)).map(|(_, l)| l) {
            if q.matches(l) {
                if page.len() == q.limit {
                    more = true;
                    break;
                }
                page.push(l.clone());
            }
        }
        let count = q
            .include_count
            .then(|| acct.lists.values().filter(|l| q.matches(l)).count());
        let counts = q
            .membership
            .map(|m| membership_counts(acct, m == MemberCount::Active));
        (page, count, more, counts)
    };
    if let Some(counts) = counts {
        for l in &mut page {
            l.membership_count = Some(counts.get(&l.list_id).copied().unwrap_or(0));
        }
    }
    let next = if more {
        page.last().map(|l| cursor::encode(&params, l.list_id))
    } else {
        None
    };
    json(
        StatusCode::OK,
        &ListsBody {
            lists: page,
            lists_count: count,
            _links: next_links("/v3/contact_lists", next),
        },
    )
}
