//! Bulk activities: `POST /activities/contacts_json_import`, `remove_list_memberships`,
//! `contact_delete`, `contact_exports` and `GET /activities/{id}`
//! (API-NOTES §6, §10).

use serde::Deserialize;
use serde_json::Value;

use super::client::{bad_url, AccountClient};
use super::error::Error;

/// The activity states that end an activity.
pub const TERMINAL_STATES: &[&str] = &["completed", "failed", "cancelled", "timed_out"];

/// `Activity` / `ActivityImport`: only what the daemon reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Activity {
    pub activity_id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub percent_done: Option<i64>,
    /// Strings in the spec; objects (`{message}`) tolerated: kept as raw JSON.
    #[serde(default)]
    pub activity_errors: Option<Vec<Value>>,
    /// The counters (`items_total_count`, `person_count`, `error_count`,
    /// `correctable_count`, `cannot_add_to_list_count`, ...), kept whole.
    #[serde(default)]
    pub status: Option<Value>,
    /// When Constant Contact created it (ISO-8601), as given; read by [`Activity::created`].
    #[serde(default)]
    pub created_at: Option<Value>,
    /// `_links` (`self`; an export's `results`), kept whole.
    #[serde(rename = "_links", default)]
    pub links: Option<Value>,
}

/// `GET /activities`: a page of the account's activities of the last ten days, newest
/// first.
#[derive(Debug, Deserialize)]
pub struct ActivitiesPage {
    #[serde(default)]
    pub activities: Vec<Activity>,
    #[serde(rename = "_links", default)]
    pub links: Option<super::dto::PagingLinks>,
}

impl Activity {
    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATES.contains(&self.state.as_str())
    }

    /// The errors as messages, whatever their shape.
    pub fn error_messages(&self) -> Vec<String> {
        self.activity_errors
            .iter()
            .flatten()
            .map(error_message)
            .collect()
    }

    /// `created_at` as a time; `None` when absent or unreadable (a caller that must not
    /// miss an activity treats that as "could be any time").
    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        super::dto::parse_datetime(self.created_at.as_ref()?.as_str()?)
    }

    /// An export's `_links.results.href`, once it has one (to be followed as given).
    pub fn results_href(&self) -> Option<&str> {
        self.links.as_ref()?.get("results")?.get("href")?.as_str()
    }

    /// A status counter, if present.
    /// The status counters, for the core's completion mapping.
    pub fn counters(&self) -> crate::core::activity::Counters {
        crate::core::activity::Counters {
            person_count: self.counter("person_count"),
            error_count: self.counter("error_count"),
            correctable_count: self.counter("correctable_count"),
            cannot_add_to_list_count: self.counter("cannot_add_to_list_count"),
        }
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.status.as_ref()?.get(name)?.as_u64()
    }
}

/// One `activity_errors` entry as text: a string, or an object's `message` /
/// `error_message`, or the object's JSON.
pub fn error_message(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => ["message", "error_message", "error"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

impl AccountClient {
    /// `POST /activities/contacts_json_import` with a body built by the batcher. Retried
    /// only on `throttled` (nothing was done); any other failure is returned as is.
    pub async fn contacts_json_import(&self, body: Vec<u8>) -> Result<Activity, Error> {
        let url = self
            .api()
            .endpoint("activities/contacts_json_import")
            .map_err(|_| bad_url("activities/contacts_json_import"))?;
        self.post_json("POST /activities/contacts_json_import", url, body)
            .await
    }

    /// `POST /activities/remove_list_memberships` (`source.contact_ids` ≤ 500, `list_ids`
    /// ≤ 50). Retried only on `throttled`.
    pub async fn remove_list_memberships(
        &self,
        contact_ids: &[uuid::Uuid],
        list_ids: &[uuid::Uuid],
    ) -> Result<Activity, Error> {
        let url = self
            .api()
            .endpoint("activities/remove_list_memberships")
            .map_err(|_| bad_url("activities/remove_list_memberships"))?;
        let body =
            serde_json::json!({"source": {"contact_ids": contact_ids}, "list_ids": list_ids});
        self.post_json(
            "POST /activities/remove_list_memberships",
            url,
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `POST /activities/contact_delete` (`contact_ids` ≤ 500). Retried only on `throttled`.
    pub async fn contact_delete(&self, contact_ids: &[uuid::Uuid]) -> Result<Activity, Error> {
        let url = self
            .api()
            .endpoint("activities/contact_delete")
            .map_err(|_| bad_url("activities/contact_delete"))?;
        let body = serde_json::json!({ "contact_ids": contact_ids });
        self.post_json(
            "POST /activities/contact_delete",
            url,
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `POST /activities/contact_exports` with `body` (`ContactsExport`). Retried only on
    /// `throttled`.
    pub async fn contact_exports(&self, body: &Value) -> Result<Activity, Error> {
        let url = self
            .api()
            .endpoint("activities/contact_exports")
            .map_err(|_| bad_url("activities/contact_exports"))?;
        self.post_json(
            "POST /activities/contact_exports",
            url,
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `GET /activities?limit=500`: the first page of the account's recent activities.
    pub async fn recent_activities(&self) -> Result<ActivitiesPage, Error> {
        let mut url = self
            .api()
            .endpoint("activities")
            .map_err(|_| bad_url("activities"))?;
        url.query_pairs_mut().append_pair("limit", "500");
        self.get_json("GET /activities", url).await
    }

    /// A later page of `GET /activities` (a `_links.next` href resolved).
    pub async fn activities_page(&self, url: url::Url) -> Result<ActivitiesPage, Error> {
        self.get_json("GET /activities", url).await
    }

    /// `GET /activities/{id}`.
    pub async fn activity(&self, id: &str) -> Result<Activity, Error> {
        let url = self
            .api()
            .endpoint(&format!("activities/{id}"))
            .map_err(|_| bad_url("activities/{id}"))?;
        self.get_json("GET /activities/{id}", url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_spec_shape_and_tolerates_object_errors() {
        let a: Activity = serde_json::from_value(json!({
            "activity_id": "a1", "state": "completed", "percent_done": 100,
            "activity_errors": ["Row 1: bad", {"message": "Row 2: worse"}, {"x": 1}],
            "status": {"person_count": 2, "cannot_add_to_list_count": 1},
            "_links": {"self": {"href": "/v3/activities/a1"}}
        }))
        .unwrap();
        assert!(a.is_terminal());
        assert_eq!(
            a.error_messages(),
            vec!["Row 1: bad", "Row 2: worse", "{\"x\":1}"]
        );
        assert_eq!(a.counter("cannot_add_to_list_count"), Some(1));
        assert_eq!(a.counter("error_count"), None);
        let b: Activity =
            serde_json::from_value(json!({"activity_id": "b", "state": "processing"})).unwrap();
        assert!(!b.is_terminal());
        assert!(b.error_messages().is_empty());
        assert_eq!(b.created(), None);
        let c: Activity = serde_json::from_value(json!({
            "activity_id": "c", "state": "completed", "created_at": "2026-12-02T10:11:12.345Z"
        }))
        .unwrap();
        assert_eq!(
            c.created().map(|t| t.to_rfc3339()),
            Some("2026-12-02T10:11:12.345+00:00".to_string())
        );
        let d: Activity =
            serde_json::from_value(json!({"activity_id": "d", "created_at": 17})).unwrap();
        assert_eq!(d.created(), None, "an unreadable time is no time");
    }
}
