//! Bulk activities over HTTP: `POST /v3/activities/contacts_json_import`,
//! `POST /v3/activities/add_list_memberships`, `POST /v3/activities/remove_list_memberships`,
//! `POST /v3/activities/contact_delete` (handler in `bulk_delete.rs`),
//! `GET /v3/activities/{id}`, `GET /v3/activities`.
//!
//! The handlers parse and validate requests into `Job`s, queue them as activities and
//! render them; `import_engine` processes them (state transitions, no HTTP).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::cursor::{self, parse_limit};
use super::import_engine::{
    check_lists, expired, new_rec, queued, source_contacts, tick, to_json, Shape, MAX_QUEUED,
    STRING_FIELDS,
};
use super::pipeline::AuthCtx;
use super::respond::{self, bad_request, error_array, json};
use super::state::{Inner, Job, Kind, Source};

/// Only the first 4,000,000 bytes of an import body count.
pub(crate) const IMPORT_MAX_BYTES: usize = 4_000_000;
pub(crate) const IMPORT_MAX_ITEMS: usize = 40_000;

/// Number of `import_data` items that are complete (closing `}`) within the first
/// `limit` bytes of the raw body.
fn items_within(body: &[u8], limit: usize) -> usize {
    let mut depth = 0i32;
    let (mut in_str, mut esc) = (false, false);
    let mut str_start = 0usize;
    let mut last_str: &[u8] = b"";
    let mut key_is_import = false;
    let mut in_import = false;
    let mut count = 0usize;
    for (i, &b) in body.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
                if depth == 1 {
                    last_str = &body[str_start..i];
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                str_start = i + 1;
            }
            b':' if depth == 1 => key_is_import = last_str == b"import_data",
            b',' if depth == 1 => key_is_import = false,
            b'[' | b'{' => {
                if depth == 1 && b == b'[' && key_is_import {
                    in_import = true;
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth -= 1;
                if in_import && depth == 2 && b == b'}' {
                    if i < limit {
                        count += 1;
                    } else {
                        return count;
                    }
                }
                if in_import && depth == 1 {
                    return count;
                }
            }
            _ => {}
        }
    }
    count
}

pub(crate) fn parse_uuid_list(v: Option<&Value>, name: &str) -> Result<Vec<Uuid>, String> {
    let Some(v) = v else {
        return Err(format!("{name} is required"));
    };
    let arr = v
        .as_array()
        .ok_or_else(|| format!("{name} must be an array"))?;
    let mut out = Vec::with_capacity(arr.len());
    for x in arr {
        let s = x
            .as_str()
            .ok_or_else(|| format!("{name} must contain UUID strings"))?;
        let id = Uuid::parse_str(s).map_err(|_| format!("{name}: invalid id {s}"))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn validate_item(i: usize, v: &Value) -> Result<Map<String, Value>, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("import_data[{i}] must be an object"))?;
    let has_email = o.get("email").is_some_and(Value::is_string);
    let has_sms = o.get("sms_number").is_some_and(Value::is_string);
    if !has_email && !has_sms {
        return Err(format!("import_data[{i}] needs an email or an sms_number"));
    }
    for (k, val) in o {
        let string_field =
            k == "email" || k.starts_with("cf:") || STRING_FIELDS.iter().any(|(n, _)| n == k);
        if string_field && !val.is_string() {
            return Err(format!("import_data[{i}].{k} must be a string"));
        }
        if (k == "birthday_month" || k == "birthday_day") && !(val.is_i64() || val.is_u64()) {
            return Err(format!("import_data[{i}].{k} must be an integer"));
        }
    }
    Ok(o.clone())
}

pub(crate) fn too_many_queued() -> Response {
    error_array(
        StatusCode::TOO_MANY_REQUESTS,
        "activities.queue_full",
        "Too many requests. You exceeded 1,000 queued activities for this user account.",
    )
}

pub(crate) async fn contacts_json_import(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Malformed JSON: {e}")),
    };
    let Some(obj) = parsed.as_object() else {
        return bad_request("The body must be a JSON object");
    };
    let Some(data) = obj.get("import_data").and_then(Value::as_array) else {
        return bad_request("import_data is required and must be an array");
    };
    if data.is_empty() {
        return bad_request("import_data must not be empty");
    }
    let list_ids = match parse_uuid_list(obj.get("list_ids"), "list_ids") {
        Ok(l) => l,
        Err(e) => return bad_request(&e),
    };
    if list_ids.is_empty() || list_ids.len() > 50 {
        return bad_request("list_ids must contain 1 to 50 list ids");
    }
    if let Some(p) = obj.get("sms_permission_to_send") {
        if !matches!(p.as_str(), Some("explicit" | "not_set")) {
            return bad_request("sms_permission_to_send must be explicit or not_set");
        }
    }
    let keep = if body.len() > IMPORT_MAX_BYTES {
        items_within(&body, IMPORT_MAX_BYTES)
    } else {
        data.len()
    };
    if keep > IMPORT_MAX_ITEMS {
        return bad_request("import_data accepts at most 40,000 contacts");
    }
    if keep == 0 {
        return bad_request("No complete import_data item within the first 4,000,000 bytes");
    }
    let mut items = Vec::with_capacity(keep);
    for (i, v) in data.iter().take(keep).enumerate() {
        match validate_item(i, v) {
            Ok(o) => items.push(o),
            Err(e) => return bad_request(&e),
        }
    }
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    {
        let acct = st.account_mut(&auth.account);
        if let Err(e) = check_lists(acct, &list_ids) {
            return bad_request(&e);
        }
        if queued(acct) >= MAX_QUEUED {
            return too_many_queued();
        }
    }
    let outcome = super::faults::take_activity_outcome(&mut st);
    let mut rec = new_rec(&st, Kind::Import, Job::Import { items, list_ids });
    rec.counters.items_total_count = keep as u64;
    rec.forced = outcome;
    let out = to_json(&rec, Shape::Import);
    let acct = st.account_mut(&auth.account);
    acct.imports.push(parsed);
    acct.activity_order.push(rec.id);
    acct.activities.insert(rec.id, rec);
    drop(st);
    json(StatusCode::CREATED, &out)
}

// ---------------------------------------------------------------- list memberships

fn parse_members(v: &Value) -> Result<Job, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "The body must be a JSON object".to_string())?;
    let src = obj
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| "source is required".to_string())?;
    let list_ids = parse_uuid_list(obj.get("list_ids"), "list_ids")?;
    if list_ids.is_empty() || list_ids.len() > 50 {
        return Err("list_ids must contain 1 to 50 list ids".into());
    }
    let mut sources = Vec::new();
    if src.contains_key("contact_ids") {
        let ids = parse_uuid_list(src.get("contact_ids"), "source.contact_ids")?;
        if ids.is_empty() || ids.len() > 500 {
            return Err("source.contact_ids must contain 1 to 500 ids".into());
        }
        sources.push(Source::ContactIds(ids));
    }
    if src.contains_key("list_ids") {
        let ids = parse_uuid_list(src.get("list_ids"), "source.list_ids")?;
        if ids.is_empty() || ids.len() > 50 {
            return Err("source.list_ids must contain 1 to 50 ids".into());
        }
        sources.push(Source::ListIds(ids));
    }
    match src.get("all_active_contacts") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => sources.push(Source::AllActive),
        Some(_) => return Err("source.all_active_contacts must be a boolean".into()),
    }
    for k in ["tag_ids", "segment_id", "engagement_level"] {
        if src.contains_key(k) {
            return Err(format!("source.{k} is not supported by the sandbox"));
        }
    }
    if sources.len() != 1 {
        return Err(
            "source must have exactly one of contact_ids, list_ids, all_active_contacts".into(),
        );
    }
    let source = sources.remove(0);
    let exclude: HashSet<Uuid> = match obj.get("exclude") {
        None => HashSet::new(),
        Some(e) => {
            if matches!(source, Source::ContactIds(_)) {
                return Err(
                    "exclude only works with the list_ids or all_active_contacts source".into(),
                );
            }
            parse_uuid_list(e.get("contact_ids"), "exclude.contact_ids")?
                .into_iter()
                .collect()
        }
    };
    Ok(Job::Members {
        source,
        exclude,
        list_ids,
    })
}

async fn members(inner: Arc<Inner>, auth: AuthCtx, body: Bytes, add: bool) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Malformed JSON: {e}")),
    };
    let job = match parse_members(&parsed) {
        Ok(j) => j,
        Err(e) => return bad_request(&e),
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let (total, lists) = {
        let acct = st.account_mut(&auth.account);
        let Job::Members {
            source, list_ids, ..
        } = &job
        else {
            return bad_request("unexpected job");
        };
        let mut check: Vec<Uuid> = list_ids.clone();
        if let Source::ListIds(src) = source {
            check.extend(src.iter().copied());
        }
        if let Err(e) = check_lists(acct, &check) {
            return if add {
                bad_request(&e)
            } else {
                respond::not_found(&e)
            };
        }
        if queued(acct) >= MAX_QUEUED {
            return too_many_queued();
        }
        let total = source_contacts(acct, source).len();
        (total, list_ids.len())
    };
    let kind = if add {
        Kind::AddMembers
    } else {
        Kind::RemoveMembers
    };
    let mut rec = new_rec(&st, kind, job);
    rec.counters.items_total_count = total as u64;
    rec.counters.list_count = lists as u64;
    let out = to_json(&rec, Shape::Membership);
    let acct = st.account_mut(&auth.account);
    acct.activity_order.push(rec.id);
    acct.activities.insert(rec.id, rec);
    drop(st);
    json(StatusCode::CREATED, &out)
}

async fn add_list_memberships(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    members(inner, auth, body, true).await
}

async fn remove_list_memberships(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    members(inner, auth, body, false).await
}

// ---------------------------------------------------------------- status

async fn get_activity(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return respond::not_found("Resource not found for the activity_id provided");
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let now = st.now();
    let found = st
        .accounts
        .get(&auth.account)
        .and_then(|a| a.activities.get(&id))
        .filter(|a| !expired(a, now))
        .map(|a| to_json(a, Shape::Activity));
    drop(st);
    match found {
        Some(v) => json(StatusCode::OK, &v),
        None => respond::not_found("Resource not found for the activity_id provided"),
    }
}

async fn list_activities(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    uri: Uri,
) -> Response {
    let (params, after) = match cursor::request_params(&uri) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let limit = match parse_limit(get("limit"), 500) {
        Ok(l) => l,
        Err(e) => return bad_request(&e),
    };
    let state = get("state").map(str::to_string);
    if let Some(s) = &state {
        if !matches!(
            s.as_str(),
            "initialized" | "processing" | "completed" | "cancelled" | "failed" | "timed_out"
        ) {
            return bad_request(&format!("Invalid state: {s}"));
        }
    }
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let now = st.now();
    let Some(acct) = st.accounts.get(&auth.account) else {
        return json(StatusCode::OK, &json!({"activities": []}));
    };
    // Newest first.
    let mut iter = acct.activity_order.iter().rev().peekable();
    if let Some(after) = after {
        for id in iter.by_ref() {
            if *id == after {
                break;
            }
        }
    }
    let mut page = Vec::new();
    let mut last = None;
    let mut more = false;
    for id in iter {
        let Some(a) = acct.activities.get(id) else {
            continue;
        };
        if expired(a, now) || state.as_ref().is_some_and(|s| *s != a.state) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(to_json(a, Shape::Activity));
        last = Some(a.id);
    }
    drop(st);
    let mut body = json!({ "activities": page });
    if more {
        if let Some(last) = last {
            body["_links"] = json!({"next": {"href": format!("/v3/activities?cursor={}", cursor::encode(&params, last))}});
        }
    }
    json(StatusCode::OK, &body)
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route(
            "/v3/activities/contacts_json_import",
            post(contacts_json_import),
        )
        .route(
            "/v3/activities/add_list_memberships",
            post(add_list_memberships),
        )
        .route(
            "/v3/activities/remove_list_memberships",
            post(remove_list_memberships),
        )
        .route("/v3/activities/{id}", get(get_activity))
        .route("/v3/activities", get(list_activities))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_within_counts_complete_items_only() {
        let body = br#"{"list_ids":["x"],"import_data":[{"email":"a}@x.com","n":"q\"}"},{"email":"b@x.com","o":{"k":[1]}},{"email":"c@x.com"}]}"#;
        let first_end = body
            .windows(4)
            .position(|w| w == b"\"}\"}")
            .map(|p| p + 3)
            .unwrap_or(0);
        assert_eq!(items_within(body, body.len()), 3);
        assert_eq!(items_within(body, first_end), 0);
        assert_eq!(items_within(body, first_end + 1), 1);
        let second_end = first_end + 1 + br#",{"email":"b@x.com","o":{"k":[1]}}"#.len() - 1;
        assert_eq!(items_within(body, second_end), 1);
        assert_eq!(items_within(body, second_end + 1), 2);
        // A string value "import_data" is not the key.
        let body = br#"{"x":"import_data","import_data":[{"email":"a@x.com"}]}"#;
        assert_eq!(items_within(body, body.len()), 1);
    }
}
