//! Middleware for every `/v3/*` request: auth, rate limit, daily quota, faults, request
//! triggers, logging.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

use super::faults::{self, FaultAction};
use super::limits::{self, LimitOutcome};
use super::respond;
use super::state::Inner;
use super::types::RequestRecord;

/// Largest request body read (the import endpoint looks at the first 4,000,000 bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// The authenticated account of a request.
#[derive(Clone, Debug)]
pub(crate) struct AuthCtx {
    pub account: String,
}

enum Decision {
    Unauthorized,
    Throttled,
    Quota,
    Go {
        account: String,
        plan: faults::FaultPlan,
    },
}

fn bearer(req_headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = req_headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, tok) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(tok.trim())
}

pub(crate) async fn api_layer(
    State(inner): State<Arc<Inner>>,
    req: Request,
    next: Next,
) -> Response {
    // The rate limit sees a request when it arrives, as the API's edge would — not when
    // the state lock is next free (another request's page may hold it for milliseconds).
    let arrived = Instant::now();
    if !(req.uri().path() == "/v3" || req.uri().path().starts_with("/v3/")) {
        return next.run(req).await;
    }
    // Checked at once, in arrival order; a request without a token is not the key's.
    let admission = if bearer(req.headers()).is_some() {
        limits::admit(&mut inner.rate(), arrived)
    } else {
        limits::Admission::Unlimited
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (mut parts, body) = req.into_parts();
    let bytes = if parts.method == Method::GET || parts.method == Method::HEAD {
        Bytes::new()
    } else {
        match to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                let resp = respond::error_array(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "Request body too large",
                );
                log(
                    &inner,
                    method,
                    path,
                    query,
                    resp.status().as_u16(),
                    None,
                    None,
                );
                return resp;
            }
        }
    };
    let json_body: Option<serde_json::Value> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };

    let decision = {
        let mut st = inner.lock();
        let now = st.now();
        let account = bearer(&parts.headers).and_then(|t| {
            st.access_tokens
                .get(t)
                .filter(|a| a.expires > now)
                .map(|a| a.account.clone())
        });
        match account {
            None => {
                limits::refund(&mut inner.rate(), admission);
                Decision::Unauthorized
            }
            Some(account) => match limits::check(&mut st, admission) {
                LimitOutcome::Throttled => Decision::Throttled,
                LimitOutcome::QuotaExceeded => Decision::Quota,
                LimitOutcome::Ok => {
                    let mut plan = faults::plan(&mut st, &method, &path);
                    plan.delay += st.limits.draw_latency();
                    if matches!(plan.action, Some(FaultAction::Throttle)) {
                        st.throttled += 1;
                    }
                    Decision::Go { account, plan }
                }
            },
        }
    };

    let (account, plan) = match decision {
        Decision::Unauthorized => {
            let resp = respond::unauthorized();
            log(&inner, method, path, query, 401, None, json_body);
            return resp;
        }
        Decision::Throttled => {
            log(&inner, method, path, query, 429, None, json_body);
            return respond::throttled();
        }
        Decision::Quota => {
            log(&inner, method, path, query, 429, None, json_body);
            return respond::quota_exceeded();
        }
        Decision::Go { account, plan } => (account, plan),
    };

    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let acct = Some(account.clone());
    match plan.action {
        Some(FaultAction::Status(code)) => {
            log(&inner, method, path, query, code, acct, json_body);
            return respond::fault_status(code);
        }
        Some(FaultAction::Throttle) => {
            log(&inner, method, path, query, 429, acct, json_body);
            return respond::throttled();
        }
        Some(FaultAction::Reset) => {
            log(&inner, method, path, query, 0, acct, json_body);
            return reset_response();
        }
        Some(FaultAction::NotJson { cut: false }) => {
            log(&inner, method, path, query, 200, acct, json_body);
            return not_json_response();
        }
        Some(FaultAction::Truncate)
        | Some(FaultAction::NotJson { cut: true })
        | Some(FaultAction::Inject(_))
        | Some(FaultAction::Extra(_))
        | Some(FaultAction::SlowAnswer(_))
        | None => {}
    }

    // Request triggers act on the account just before the handler sees the request.
    super::triggers::fire(&inner, &mut inner.lock(), &account, &method, &path, &query);
    parts.extensions.insert(AuthCtx { account });
    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    log(&inner, method, path, query, status, acct, json_body);
    match plan.action {
        Some(FaultAction::Truncate) => truncate_response(resp).await,
        Some(FaultAction::NotJson { cut: true }) => cut_response(resp).await,
        Some(FaultAction::Inject(contacts)) if resp.status().is_success() => {
            inject_contacts(resp, contacts).await
        }
        Some(FaultAction::Extra(fields)) if resp.status().is_success() => {
            super::fault_answers::extra_fields(resp, &fields, MAX_BODY).await
        }
        Some(FaultAction::SlowAnswer(delay)) => {
            tokio::time::sleep(delay).await;
            resp
        }
        _ => resp,
    }
}

/// `200` with a complete HTML body, as a proxy in front of the API might answer.
fn not_json_response() -> Response {
    let mut resp = Response::new(Body::from(
        "<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>",
    ));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    resp
}

/// The answer's first half only, with a `Content-Length` that matches it: a complete HTTP
/// answer whose JSON is cut short.
async fn cut_response(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let full = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return reset_response(),
    };
    let half = full.slice(0..full.len() / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(half.len() as u64));
    Response::from_parts(parts, Body::from(half))
}

/// The answer with `contacts` appended to its `contacts` array (unchanged if it has none).
async fn inject_contacts(resp: Response, contacts: Vec<serde_json::Value>) -> Response {
    let (mut parts, body) = resp.into_parts();
    let full = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return reset_response(),
    };
    let mut v: serde_json::Value = match serde_json::from_slice(&full) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(full)),
    };
    if let Some(arr) = v.get_mut("contacts").and_then(|c| c.as_array_mut()) {
        arr.extend(contacts);
    }
    let bytes = match serde_json::to_vec(&v) {
        Ok(b) => b,
        Err(_) => return Response::from_parts(parts, Body::from(full)),
    };
    parts.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(bytes.len() as u64),
    );
    Response::from_parts(parts, Body::from(bytes))
}

fn log(
    inner: &Inner,
    method: String,
    path: String,
    query: String,
    status: u16,
    account: Option<String>,
    body: Option<serde_json::Value>,
) {
    inner.lock().requests.push(RequestRecord {
        method,
        path,
        query,
        status,
        account,
        body,
    });
}

/// A response whose body fails before any byte is written: hyper then closes the
/// connection without sending the response head.
fn reset_response() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox fault: reset",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// Same status and headers, a `Content-Length` of the full body, but only half the bytes
/// before the connection is closed.
async fn truncate_response(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let full = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return reset_response(),
    };
    let half = full.slice(0..full.len() / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full.len() as u64));
    // The error comes a little later so that hyper flushes the head and the half body.
    let first = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(half) });
    let fail = futures_util::stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "sandbox fault: truncated body",
        ))
    });
    let stream = futures_util::StreamExt::chain(first, fail);
    Response::from_parts(parts, Body::from_stream(stream))
}
