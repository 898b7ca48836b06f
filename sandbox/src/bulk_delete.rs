//! `POST /v3/activities/contact_delete` (spec `ContactDelete` → 201
//! `ActivityDeleteStatus`): `contact_ids` (1 to 500) or `list_ids` (1 to 50), mutually
//! exclusive. Queued like the other activities; `import_engine` applies it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use serde_json::Value;

use super::activities::{parse_uuid_list, too_many_queued};
use super::import_engine::{
    check_lists, new_rec, queued, source_contacts, tick, to_json, Shape, MAX_QUEUED,
};
use super::pipeline::AuthCtx;
use super::respond::{bad_request, json};
use super::state::{Inner, Job, Kind, Source};

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new().route("/v3/activities/contact_delete", post(contact_delete))
}

/// The limits come from the descriptions (the spec's `maxItems` are not trusted, see
/// API-NOTES §13).
const MAX_CONTACT_IDS: usize = 500;
const MAX_LIST_IDS: usize = 50;

fn parse(v: &Value) -> Result<Source, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "The body must be a JSON object".to_string())?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "contact_ids" | "list_ids"))
    {
        return Err(format!("Unknown property {k}"));
    }
    match (obj.get("contact_ids"), obj.get("list_ids")) {
        (Some(_), Some(_)) => Err("contact_ids and list_ids are mutually exclusive".into()),
        (None, None) => Err("One of contact_ids or list_ids is required".into()),
        (Some(ids), None) => {
            let ids = parse_uuid_list(Some(ids), "contact_ids")?;
            if ids.is_empty() || ids.len() > MAX_CONTACT_IDS {
                return Err(format!(
                    "contact_ids must contain 1 to {MAX_CONTACT_IDS} ids"
                ));
            }
            Ok(Source::ContactIds(ids))
        }
        (None, Some(ids)) => {
            let ids = parse_uuid_list(Some(ids), "list_ids")?;
            if ids.is_empty() || ids.len() > MAX_LIST_IDS {
                return Err(format!("list_ids must contain 1 to {MAX_LIST_IDS} ids"));
            }
            Ok(Source::ListIds(ids))
        }
    }
}

pub(crate) async fn contact_delete(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Malformed JSON: {e}")),
    };
    let source = match parse(&parsed) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let (total, lists) = {
        let acct = st.account_mut(&auth.account);
        if let Source::ListIds(ids) = &source {
            if let Err(e) = check_lists(acct, ids) {
                return bad_request(&e);
            }
        }
        if queued(acct) >= MAX_QUEUED {
            return too_many_queued();
        }
        let lists = match &source {
            Source::ListIds(ids) => ids.len(),
            _ => 0,
        };
        (source_contacts(acct, &source).len(), lists)
    };
    let mut rec = new_rec(&st, Kind::Delete, Job::Delete { source });
    rec.counters.items_total_count = total as u64;
    rec.counters.list_count = lists as u64;
    let out = to_json(&rec, Shape::Membership);
    let acct = st.account_mut(&auth.account);
    acct.activity_order.push(rec.id);
    acct.activities.insert(rec.id, rec);
    drop(st);
    json(StatusCode::CREATED, &out)
}
