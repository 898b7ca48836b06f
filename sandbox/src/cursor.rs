//! Opaque paging cursors: base64url(JSON {query params, last id}).
//!
//! A cursor carries the original filters and limit, so a request with only `cursor`
//! continues the same query. When a cursor is present, other query parameters are ignored.

use axum::http::Uri;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize)]
struct CursorData {
    q: Vec<(String, String)>,
    after: Uuid,
}

pub(crate) fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| format!("Invalid query string: {e}"))
}

/// The effective query parameters of a paged request and the keyset position.
pub(crate) type Params = Vec<(String, String)>;

pub(crate) fn request_params(uri: &Uri) -> Result<(Params, Option<Uuid>), String> {
    let pairs = query_pairs(uri)?;
    match pairs.iter().rev().find(|(k, _)| k == "cursor") {
        None => Ok((pairs, None)),
        Some((_, c)) => {
            let d = decode(c).ok_or_else(|| "Invalid cursor".to_string())?;
            Ok((d.q, Some(d.after)))
        }
    }
}

fn decode(c: &str) -> Option<CursorData> {
    let bytes = URL_SAFE_NO_PAD
        .decode(c.trim().trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn encode(params: &[(String, String)], after: Uuid) -> String {
    let d = CursorData {
        q: params
            .iter()
            .filter(|(k, _)| k != "cursor")
            .cloned()
            .collect(),
        after,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&d).unwrap_or_default())
}
