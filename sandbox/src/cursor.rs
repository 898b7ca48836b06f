//! Paging shared by the list endpoints: opaque cursors (base64url(JSON {query params,
//! last id})), the `limit` parameter and the `_links.next` body part.
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

/// `limit`: 50 when absent, else an integer in 1..=`max`.
pub(crate) fn parse_limit(v: Option<&str>, max: usize) -> Result<usize, String> {
    match v {
        None => Ok(50),
        Some(s) => match s.trim().parse::<i64>() {
            Ok(n) if n >= 1 && n as u64 <= max as u64 => Ok(n as usize),
            _ => Err(format!(
                "limit must be an integer between 1 and {max}, got {s}"
            )),
        },
    }
}

#[derive(Serialize)]
struct Href {
    href: String,
}
#[derive(Serialize)]
pub(crate) struct PagingLinks {
    next: Href,
}

pub(crate) fn next_links(path: &str, cursor: Option<String>) -> Option<PagingLinks> {
    cursor.map(|c| PagingLinks {
        next: Href {
            href: format!("{path}?cursor={c}"),
        },
    })
}
