//! `GET /v3/contact_custom_fields`: the account's custom field definitions (`CustomFields`),
//! `limit` 1..=100 (default 50), keyset paging on custom_field_id. The endpoint has no
//! filter: every definition is listed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use serde::Serialize;
use uuid::Uuid;

use super::cursor::{self, next_links, parse_limit, PagingLinks};
use super::pipeline::AuthCtx;
use super::respond::{bad_request, json};
use super::state::{ts, CustomFieldDef, Inner, Ts};

/// The spec's page size bounds for this endpoint.
const MAX_LIMIT: usize = 100;

/// `CustomField` as served (the fields the sandbox keeps).
#[derive(Serialize)]
struct CustomFieldOut {
    custom_field_id: Uuid,
    label: String,
    name: String,
    #[serde(rename = "type")]
    field_type: String,
    #[serde(with = "ts")]
    created_at: Ts,
    #[serde(with = "ts")]
    updated_at: Ts,
}

impl CustomFieldOut {
    fn of(d: &CustomFieldDef) -> Self {
        CustomFieldOut {
            custom_field_id: d.custom_field_id,
            label: d.label.clone(),
            name: d.name.clone(),
            field_type: d.field_type.clone(),
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Serialize)]
struct CustomFieldsBody {
    custom_fields: Vec<CustomFieldOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    _links: Option<PagingLinks>,
}

pub(crate) async fn list_custom_fields(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    uri: Uri,
) -> Response {
    let (params, after) = match cursor::request_params(&uri) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let limit = match parse_limit(
        params
            .iter()
            .rev()
            .find(|(k, _)| k == "limit")
            .map(|(_, v)| v.as_str()),
        MAX_LIMIT,
    ) {
        Ok(l) => l,
        Err(e) => return bad_request(&e),
    };
    let (page, more) = {
        let mut st = inner.lock();
        let acct = st.account_mut(&auth.account);
        let mut defs: Vec<&CustomFieldDef> = acct
            .custom_fields
            .iter()
            .filter(|d| after.is_none_or(|a| d.custom_field_id > a))
            .collect();
        defs.sort_by_key(|d| d.custom_field_id);
        let more = defs.len() > limit;
        let page: Vec<CustomFieldOut> = defs
            .into_iter()
            .take(limit)
            .map(CustomFieldOut::of)
            .collect();
        (page, more)
    };
    let next = if more {
        page.last()
            .map(|d| cursor::encode(&params, d.custom_field_id))
    } else {
        None
    };
    json(
        StatusCode::OK,
        &CustomFieldsBody {
            custom_fields: page,
            _links: next_links("/v3/contact_custom_fields", next),
        },
    )
}
