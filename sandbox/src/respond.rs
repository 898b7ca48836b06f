//! Response helpers: JSON bodies and the API's error shapes.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Serialises `v` to a JSON response with the given status.
pub(crate) fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => error_array(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &format!("serialisation failed: {e}"),
        ),
    }
}

/// The usual error body: a JSON array of `{error_key, error_message}`.
pub(crate) fn error_array(status: StatusCode, key: &str, message: &str) -> Response {
    let body = serde_json::json!([{ "error_key": key, "error_message": message }]);
    json_value(status, &body)
}

/// Single-object error body (auth and rate-limit errors).
pub(crate) fn error_object(status: StatusCode, key: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error_key": key, "error_message": message });
    json_value(status, &body)
}

fn json_value(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(v.to_string()),
    )
        .into_response()
}

pub(crate) fn bad_request(message: &str) -> Response {
    error_array(StatusCode::BAD_REQUEST, "query.param.invalid", message)
}

pub(crate) fn not_found(message: &str) -> Response {
    error_array(StatusCode::NOT_FOUND, "not_found", message)
}

pub(crate) fn unauthorized() -> Response {
    error_object(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
}

pub(crate) fn throttled() -> Response {
    error_object(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "Too Many Requests",
    )
}

pub(crate) fn quota_exceeded() -> Response {
    error_object(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        "Limit Exceeded",
    )
}

/// Body for an injected status fault.
pub(crate) fn fault_status(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match status {
        401 => unauthorized(),
        429 => throttled(),
        _ => error_array(
            code,
            if status >= 500 {
                "server_error"
            } else {
                "request_error"
            },
            code.canonical_reason().unwrap_or("Injected fault"),
        ),
    }
}
