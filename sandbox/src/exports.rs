//! `POST /v3/activities/contact_exports` (spec `ContactsExport` → 201
//! `ActivityExportStatus`) and `GET /v3/contact_exports/{file_export_id}` (`text/csv`).
//!
//! The activity is queued like the other bulk activities; when it completes, the CSV is
//! rendered from the account as it is *then* (later than the activity's `created_at`, as a
//! real export may be) and `_links.results.href` appears.
//!
//! The file's columns: `export_render`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::Value;
use uuid::Uuid;

use super::activities::{parse_uuid_list, too_many_queued};
use super::export_render::FIELDS;
use super::import_engine::{check_lists, new_rec, queued, tick, to_json, Shape, MAX_QUEUED};
use super::pipeline::AuthCtx;
use super::respond::{self, bad_request, json};
use super::state::{ExportJob, ExportSource, Inner, Job, Kind};

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/v3/activities/contact_exports", post(contact_exports))
        .route("/v3/contact_exports/{id}", get(export_file))
}

/// Fields the guide documents that the sandbox accepts in `fields` but leaves empty.
const EMPTY_FIELDS: &[&str] = &[
    "social_profiles",
    "website",
    "tag",
    "notes",
    "birthday",
    "email_optin",
];

fn parse(v: &Value) -> Result<ExportJob, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "The body must be a JSON object".to_string())?;
    for k in ["segment_id", "tag_ids", "new_subscriber"] {
        if obj.contains_key(k) {
            return Err(format!("{k} is not supported by the sandbox"));
        }
    }
    let source = match (obj.get("contact_ids"), obj.get("list_ids")) {
        (Some(_), Some(_)) => return Err("contact_ids and list_ids are mutually exclusive".into()),
        (Some(ids), None) => {
            let ids = parse_uuid_list(Some(ids), "contact_ids")?;
            if ids.is_empty() || ids.len() > 500 {
                return Err("contact_ids must contain 1 to 500 ids".into());
            }
            ExportSource::ContactIds(ids)
        }
        (None, Some(ids)) => {
            let ids = parse_uuid_list(Some(ids), "list_ids")?;
            if ids.is_empty() || ids.len() > 50 {
                return Err("list_ids must contain 1 to 50 ids".into());
            }
            ExportSource::ListIds(ids)
        }
        (None, None) => ExportSource::All,
    };
    let status = match obj.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if matches!(s.as_str(), "active" | "unsubscribed" | "removed") => {
            Some(s.clone())
        }
        Some(s) => return Err(format!("Invalid status: {s}")),
    };
    let fields = match obj.get("fields") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for f in a {
                let Some(f) = f.as_str() else {
                    return Err("fields must be strings".into());
                };
                if !FIELDS.contains(&f) && !EMPTY_FIELDS.contains(&f) {
                    return Err(format!("Invalid field: {f}"));
                }
                out.push(f.to_string());
            }
            if out.is_empty() {
                return Err("fields must name at least one field".into());
            }
            Some(out)
        }
        Some(_) => return Err("fields must be an array".into()),
    };
    Ok(ExportJob {
        source,
        status,
        fields,
    })
}

async fn contact_exports(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Malformed JSON: {e}")),
    };
    let job = match parse(&parsed) {
        Ok(j) => j,
        Err(e) => return bad_request(&e),
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    {
        let acct = st.account_mut(&auth.account);
        if let ExportSource::ListIds(ids) = &job.source {
            if let Err(e) = check_lists(acct, ids) {
                return bad_request(&e);
            }
        }
        if queued(acct) >= MAX_QUEUED {
            return too_many_queued();
        }
    }
    let rec = new_rec(&st, Kind::Export, Job::Export(job));
    let out = to_json(&rec, Shape::Membership);
    let acct = st.account_mut(&auth.account);
    acct.activity_order.push(rec.id);
    acct.activities.insert(rec.id, rec);
    drop(st);
    json(StatusCode::CREATED, &out)
}

async fn export_file(
    AxState(inner): AxState<Arc<Inner>>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return respond::not_found("Resource not found for the file_export_id provided");
    };
    let mut st = inner.lock();
    tick(&inner, &mut st, &auth.account);
    let file = st
        .accounts
        .get(&auth.account)
        .and_then(|a| a.export_files.get(&id))
        .cloned();
    drop(st);
    match file {
        Some(csv) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv")],
            csv.as_ref().clone(),
        )
            .into_response(),
        None => respond::not_found("Resource not found for the file_export_id provided"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_exclusive_sources_and_fields() {
        let j = parse(&serde_json::json!({})).unwrap();
        assert!(matches!(j.source, ExportSource::All));
        assert!(parse(&serde_json::json!({"contact_ids": [], "list_ids": []})).is_err());
        assert!(parse(&serde_json::json!({"fields": ["contact_id"]})).is_err());
        assert!(parse(&serde_json::json!({"fields": []})).is_err());
        assert!(parse(&serde_json::json!({"status": "deleted"})).is_err());
        let j =
            parse(&serde_json::json!({"fields": ["email_address"], "status": "removed"})).unwrap();
        assert_eq!(
            j.fields.as_deref(),
            Some(&["email_address".to_string()][..])
        );
    }
}
