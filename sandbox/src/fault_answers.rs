//! Answers changed by an injected fault after their handler ran (`Fault::ExtraFields`).
//! A leaf HTTP helper like `respond`.

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::Value;

/// Merges the members of `fields` into the answer's top-level object and into every
/// object of its top-level arrays; an answer that is not a JSON object passes unchanged.
/// `max_body` bounds the answer read.
pub(crate) async fn extra_fields(resp: Response, fields: &Value, max_body: usize) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(full) = to_bytes(body, max_body).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&full) else {
        return Response::from_parts(parts, Body::from(full));
    };
    merge_everywhere(&mut v, fields);
    let Ok(bytes) = serde_json::to_vec(&v) else {
        return Response::from_parts(parts, Body::from(full));
    };
    parts.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(bytes.len() as u64),
    );
    Response::from_parts(parts, Body::from(bytes))
}

fn merge_everywhere(v: &mut Value, fields: &Value) {
    let (Some(obj), Some(extra)) = (v.as_object_mut(), fields.as_object()) else {
        return;
    };
    for item in obj.values_mut() {
        if let Some(arr) = item.as_array_mut() {
            for el in arr.iter_mut() {
                merge_into(el, extra);
            }
        }
    }
    merge_into(v, extra);
}

fn merge_into(v: &mut Value, extra: &serde_json::Map<String, Value>) {
    if let Some(obj) = v.as_object_mut() {
        for (k, x) in extra {
            obj.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_go_into_the_top_level_and_every_listed_object_without_overwriting() {
        let mut v = serde_json::json!({"contacts": [{"a": 1}, {"b": 2, "x": "kept"}], "n": 3});
        merge_everywhere(&mut v, &serde_json::json!({"x": {"new": true}}));
        assert_eq!(v["x"], serde_json::json!({"new": true}));
        assert_eq!(v["contacts"][0]["x"], serde_json::json!({"new": true}));
        assert_eq!(v["contacts"][1]["x"], "kept");
    }
}
