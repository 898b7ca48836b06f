//! Control HTTP API for the write path (no auth, loopback clients only), the HTTP face of
//! the write-path `AccountCtl` methods:
//!
//! - `GET  /__control/accounts/{account}/resubscriptions` → `[{"contact_id", "at"}]`
//! - `GET  /__control/accounts/{account}/revivals` → `[{"contact_id", "at"}]`
//! - `POST /__control/accounts/{account}/membership_moves_updated_at` `{"on": bool}`
//! - `POST /__control/accounts/{account}/triggers` (a `Trigger` as JSON, e.g.
//!   `{"method":"PUT","path_prefix":"/v3/contacts/","nth":1,"query_contains":null,
//!   "action":{"kind":"unsubscribe","contact_id":"…","reason":null}}`) → `{"trigger_id"}`
//! - `GET  /__control/accounts/{account}/triggers/{trigger_id}` → `{"trigger_id", "fired"}`
//! - `POST /__control/accounts/{account}/refusals` `{"email", "count_as": "error" |
//!   "correctable"}` (`refuse_silently` / `refuse_as_correctable`)

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::control_api::{bad_json, ctl, loopback_only, ok, Rejected};
use super::respond::{self, json};
use super::state::{fmt_ts, Inner};
use super::types::{Trigger, TriggerId};

fn stamped(log: Vec<(Uuid, DateTime<Utc>)>) -> Response {
    let out: Vec<serde_json::Value> = log
        .into_iter()
        .map(|(id, at)| json!({"contact_id": id, "at": fmt_ts(&at).to_string()}))
        .collect();
    json(StatusCode::OK, &out)
}

async fn resubscriptions(State(inner): State<Arc<Inner>>, Path(account): Path<String>) -> Response {
    stamped(ctl(&inner, &account).resubscriptions())
}

async fn revivals(State(inner): State<Arc<Inner>>, Path(account): Path<String>) -> Response {
    stamped(ctl(&inner, &account).revivals())
}

#[derive(Deserialize)]
struct Switch {
    on: bool,
}

async fn membership_switch(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<Switch>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    ctl(&inner, &account).set_membership_moves_updated_at(b.on);
    ok()
}

async fn export_contact_ids(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<Switch>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    ctl(&inner, &account).set_export_contact_ids(b.on);
    ok()
}

async fn install_trigger(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<Trigger>,
) -> Response {
    let Json(t) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let id = ctl(&inner, &account).on_request(t);
    json(StatusCode::OK, &json!({"trigger_id": id}))
}

async fn trigger_state(
    State(inner): State<Arc<Inner>>,
    Path((account, id)): Path<(String, u64)>,
) -> Response {
    let found = {
        let st = inner.lock();
        st.accounts
            .get(&account)
            .and_then(|a| super::triggers::fired(a, TriggerId(id)))
    };
    match found {
        Some(fired) => json(StatusCode::OK, &json!({"trigger_id": id, "fired": fired})),
        None => respond::not_found("no such trigger"),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum CountAs {
    Error,
    Correctable,
}

#[derive(Deserialize)]
struct Refusal {
    email: String,
    count_as: CountAs,
}

async fn refusal(
    State(inner): State<Arc<Inner>>,
    Path(account): Path<String>,
    body: Rejected<Refusal>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let c = ctl(&inner, &account);
    match b.count_as {
        CountAs::Error => c.refuse_silently(&b.email),
        CountAs::Correctable => c.refuse_as_correctable(&b.email),
    }
    ok()
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    let acct = "/__control/accounts/{account}";
    Router::new()
        .route(&format!("{acct}/resubscriptions"), get(resubscriptions))
        .route(&format!("{acct}/revivals"), get(revivals))
        .route(
            &format!("{acct}/membership_moves_updated_at"),
            post(membership_switch),
        )
        .route(
            &format!("{acct}/export_contact_ids"),
            post(export_contact_ids),
        )
        .route(&format!("{acct}/triggers"), post(install_trigger))
        .route(&format!("{acct}/triggers/{{id}}"), get(trigger_state))
        .route(&format!("{acct}/refusals"), post(refusal))
        .route_layer(axum::middleware::from_fn(loopback_only))
}
