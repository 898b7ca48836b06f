//! Control HTTP API under `/__control/` (no auth, loopback clients only): the HTTP face
//! of the `AccountCtl` handle (`handle.rs`) and of the sandbox-wide settings.
//!
//! - `POST /__control/accounts/{account}/contacts` `{"email", "first_name"?, "list_ids"?}` → `{"contact_id"}`
//! - `GET  /__control/accounts/{account}/contacts/{id}` → the stored contact
//! - `POST /__control/accounts/{account}/contacts/{id}/update` (a JSON object merged into
//!   the stored contact; bumps `updated_at` like `AccountCtl::update_contact`)
//! - `POST /__control/accounts/{account}/contacts/{id}/unsubscribe` `{"reason"?}`
//! - `POST /__control/accounts/{account}/contacts/{id}/resubscribe`
//! - `POST /__control/accounts/{account}/contacts/{id}/delete` and `/restore`
//! - `POST /__control/accounts/{account}/contacts/{id}/leave/{list_id}` and `/join/{list_id}`
//! - `POST /__control/accounts/{account}/lists` `{"name"}` → `{"list_id"}`
//! - `POST /__control/accounts/{account}/lists/{list_id}/delete`
//! - `POST /__control/accounts/{account}/generate` `{"contacts","lists","seed"}`
//! - `POST /__control/accounts/{account}/refresh_token` → `{"refresh_token"}`
//! - `POST /__control/clock/advance` `{"seconds": n}` → `{"now"}`
//! - `POST /__control/faults` (a `Fault` as JSON, tagged by `"kind"`, e.g.
//!   `{"kind":"status","path_prefix":"/v3/contacts","status":503,"times":2}`;
//!   latency `delay` in milliseconds); `DELETE /__control/faults` clears them
//! - `POST /__control/limits` `{"requests_per_second": f|null, "daily_quota": n|null,
//!   "latency_ms": n, "jitter_ms": n}` (latency: every `/v3` answer waits `latency_ms` +
//!   uniform(0, `jitter_ms`); absent keys leave it as it is)
//! - `GET  /__control/accounts/{account}/imports` → every import request body
//! - `GET  /__control/accounts/{account}/activities/{id}` → an activity
//! - `GET  /__control/requests` → the request log
//! - write-path controls (re-subscriptions, revivals, the membership switch, request
//!   triggers, refusals): see `control_write.rs`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::handle::AccountCtl;
use super::respond::{self, json};
use super::state::Inner;
use super::types::Fault;

pub(crate) type Rejected<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

pub(crate) fn ctl(inner: &Arc<Inner>, account: &str) -> AccountCtl {
    inner.lock().account_mut(account);
    AccountCtl::new(Arc::clone(inner), account)
}

pub(crate) fn ok() -> Response {
    json(StatusCode::OK, &json!({"ok": true}))
}

pub(crate) fn bad_json(e: axum::extract::rejection::JsonRejection) -> Response {
    respond::error_array(
        StatusCode::BAD_REQUEST,
        "control.bad_request",
        &e.body_text(),
    )
}

#[derive(Deserialize)]
struct NewContact {
    email: String,
    first_name: Option<String>,
    #[serde(default)]
    list_ids: Vec<Uuid>,
}

async fn create_contact(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<NewContact>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let id = ctl(&inner, &account).create_contact(&b.email, b.first_name.as_deref(), &b.list_ids);
    json(StatusCode::OK, &json!({"contact_id": id}))
}

async fn get_contact(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
) -> Response {
    match ctl(&inner, &account).contact(id) {
        Some(c) => json(StatusCode::OK, &c),
        None => respond::not_found("no such contact"),
    }
}

fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (t, p) => *t = p,
    }
}

async fn update_contact(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
    body: Rejected<serde_json::Value>,
) -> Response {
    let Json(patch) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    if !patch.is_object() {
        return respond::error_array(
            StatusCode::BAD_REQUEST,
            "control.bad_request",
            "expected a JSON object",
        );
    }
    let c = ctl(&inner, &account);
    if c.contact(id).is_none() {
        return respond::not_found("no such contact");
    }
    c.update_contact(id, |v| merge(v, patch));
    match c.contact(id) {
        Some(v) => json(StatusCode::OK, &v),
        None => respond::not_found("no such contact"),
    }
}

async fn imports(State(inner): State<Arc<Inner>>, Path(account): Path<String>) -> Response {
    json(StatusCode::OK, &ctl(&inner, &account).imports())
}

async fn activity(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
) -> Response {
    match ctl(&inner, &account).activity(id) {
        Some(v) => json(StatusCode::OK, &v),
        None => respond::not_found("no such activity"),
    }
}

#[derive(Deserialize, Default)]
struct Reason {
    reason: Option<String>,
}

async fn unsubscribe(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
    body: Option<Json<Reason>>,
) -> Response {
    let reason = body.and_then(|b| b.0.reason);
    ctl(&inner, &account).unsubscribe(id, reason.as_deref());
    ok()
}

async fn resubscribe(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
) -> Response {
    ctl(&inner, &account).resubscribe(id);
    ok()
}

async fn delete_contact(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
) -> Response {
    ctl(&inner, &account).delete_contact(id);
    ok()
}

async fn restore_contact(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, Uuid)>,
) -> Response {
    ctl(&inner, &account).restore_contact(id);
    ok()
}

async fn leave(
    State(inner): State<Arc<Inner>>,
    Path((account, id, list)): Path<(String, Uuid, Uuid)>,
) -> Response {
    ctl(&inner, &account).leave_list(id, list);
    ok()
}

async fn join(
    State(inner): State<Arc<Inner>>,
    Path((account, id, list)): Path<(String, Uuid, Uuid)>,
) -> Response {
    ctl(&inner, &account).join_list(id, list);
    ok()
}

#[derive(Deserialize)]
struct NewList {
    name: String,
}

async fn create_list(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<NewList>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let id = ctl(&inner, &account).create_list(&b.name);
    json(StatusCode::OK, &json!({"list_id": id}))
}

async fn delete_list(
    State(inner): State<Arc<Inner>>,
    Path((account, list)): Path<(String, Uuid)>,
) -> Response {
    ctl(&inner, &account).delete_list(list);
    ok()
}

#[derive(Deserialize)]
struct Generate {
    contacts: usize,
    #[serde(default)]
    lists: usize,
    #[serde(default)]
    seed: u64,
}

async fn generate(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<Generate>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let c = ctl(&inner, &account);
    let res = tokio::task::spawn_blocking(move || c.generate(b.contacts, b.lists, b.seed)).await;
    match res {
        Ok(()) => ok(),
        Err(e) => respond::error_array(
            StatusCode::INTERNAL_SERVER_ERROR,
            "control.generate",
            &e.to_string(),
        ),
    }
}

async fn refresh_token(State(inner): State<Arc<Inner>>, Path(account): Path<String>) -> Response {
    let rt = ctl(&inner, &account).seed_refresh_token();
    json(StatusCode::OK, &json!({"refresh_token": rt}))
}

#[derive(Deserialize)]
struct Advance {
    seconds: f64,
}

async fn advance(State(inner): State<Arc<Inner>>, body: Rejected<Advance>) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let mut st = inner.lock();
    st.clock_offset += chrono::Duration::milliseconds((b.seconds * 1000.0) as i64);
    let now = st.now();
    drop(st);
    json(
        StatusCode::OK,
        &json!({"now": super::state::fmt_ts(&now).to_string()}),
    )
}

async fn inject(State(inner): State<Arc<Inner>>, body: Rejected<Fault>) -> Response {
    let Json(f) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    super::faults::push(&mut inner.lock(), f);
    ok()
}

async fn clear(State(inner): State<Arc<Inner>>) -> Response {
    inner.lock().faults.clear();
    ok()
}

#[derive(Deserialize)]
struct LimitsBody {
    #[serde(default)]
    requests_per_second: Option<f64>,
    #[serde(default)]
    daily_quota: Option<u64>,
    /// Fixed latency of every `/v3` request, in milliseconds (left as it is when absent).
    #[serde(default)]
    latency_ms: Option<u64>,
    /// Up to this many milliseconds more, drawn uniformly per request.
    #[serde(default)]
    jitter_ms: Option<u64>,
}

async fn set_limits(State(inner): State<Arc<Inner>>, body: Rejected<LimitsBody>) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let mut st = inner.lock();
    *inner.rate() = super::state::Rate {
        per_second: b.requests_per_second,
        tat: None,
    };
    st.limits.daily_quota = b.daily_quota;
    if let Some(ms) = b.latency_ms {
        st.limits.latency = Duration::from_millis(ms);
    }
    if let Some(ms) = b.jitter_ms {
        st.limits.jitter = Duration::from_millis(ms);
    }
    drop(st);
    ok()
}

async fn requests(State(inner): State<Arc<Inner>>) -> Response {
    let log = inner.lock().requests.clone();
    json(StatusCode::OK, &log)
}

pub(crate) async fn loopback_only(req: Request, next: Next) -> Response {
    let allowed = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_none_or(|ci| ci.0.ip().is_loopback());
    if !allowed {
        return respond::error_array(
            StatusCode::FORBIDDEN,
            "control.forbidden",
            "The control API only answers loopback clients",
        );
    }
    next.run(req).await
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    let acct = "/__control/accounts/{account}";
    Router::new()
        .route(&format!("{acct}/contacts"), post(create_contact))
        .route(&format!("{acct}/contacts/{{id}}"), get(get_contact))
        .route(
            &format!("{acct}/contacts/{{id}}/update"),
            post(update_contact),
        )
        .route(&format!("{acct}/imports"), get(imports))
        .route(&format!("{acct}/activities/{{id}}"), get(activity))
        .route(
            &format!("{acct}/contacts/{{id}}/unsubscribe"),
            post(unsubscribe),
        )
        .route(
            &format!("{acct}/contacts/{{id}}/resubscribe"),
            post(resubscribe),
        )
        .route(
            &format!("{acct}/contacts/{{id}}/delete"),
            post(delete_contact),
        )
        .route(
            &format!("{acct}/contacts/{{id}}/restore"),
            post(restore_contact),
        )
        .route(
            &format!("{acct}/contacts/{{id}}/leave/{{list_id}}"),
            post(leave),
        )
        .route(
            &format!("{acct}/contacts/{{id}}/join/{{list_id}}"),
            post(join),
        )
        .route(&format!("{acct}/lists"), post(create_list))
        .route(
            &format!("{acct}/lists/{{list_id}}/delete"),
            post(delete_list),
        )
        .route(&format!("{acct}/generate"), post(generate))
        .route(&format!("{acct}/refresh_token"), post(refresh_token))
        .route("/__control/clock/advance", post(advance))
        .route("/__control/faults", post(inject).delete(clear))
        .route("/__control/limits", post(set_limits))
        .route("/__control/requests", get(requests))
        .route_layer(axum::middleware::from_fn(loopback_only))
}
