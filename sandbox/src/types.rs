//! The public value types that the state stores and the Rust API hands out: the request
//! log entry and the injectable faults. A leaf: it imports nothing from the sandbox.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One logged API request (`/v3/*` only; control and token requests are not logged).
/// `status` is 0 when the connection was dropped by a `Fault::Reset`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub account: Option<String>,
    pub body: Option<serde_json::Value>,
}

/// Injected failures. Queued, consumed in order by matching requests. `path_prefix`
/// matches the request path with or without the `/v3` prefix ("" matches everything).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with that status (JSON error array body) `times` times.
    Status {
        path_prefix: String,
        status: u16,
        times: usize,
    },
    /// 429 `{"error_key":"throttled","error_message":"Too Many Requests"}`.
    Throttle { times: usize },
    /// Delay matching requests (then serve them normally, or apply another fault).
    Latency {
        path_prefix: String,
        #[serde(with = "duration_ms")]
        delay: Duration,
        times: usize,
    },
    /// Drop the connection without a response.
    Reset { path_prefix: String, times: usize },
    /// 200 with a `Content-Length` of the full body but only half the bytes.
    TruncateBody { path_prefix: String, times: usize },
    /// 200 with a complete body (a matching `Content-Length`) that is not JSON, `times`
    /// times: a proxy's HTML error page, or with `cut` the real answer cut in half (as a
    /// truncating proxy would hand it on).
    NotJson {
        path_prefix: String,
        times: usize,
        #[serde(default)]
        cut: bool,
    },
    /// Appends these raw JSON values, as they are, to the `contacts` array of the next
    /// `times` matching successful answers (for contacts Constant Contact should never send:
    /// no `contact_id`, an `email_address` without `address`, ...).
    InjectContacts {
        path_prefix: String,
        contacts: Vec<serde_json::Value>,
        times: usize,
    },
    /// Merges the members of `fields` (an object) into the next `times` matching successful
    /// JSON answers: into the top-level object and into every object of its top-level
    /// arrays (`contacts`, `lists`, `activities`, ...). Fields Constant Contact may add one
    /// day, which a client must ignore.
    ExtraFields {
        path_prefix: String,
        fields: serde_json::Value,
        times: usize,
    },
    /// The request is handled (its effect applied), then its answer is held back for
    /// `delay`, `times` times: a slow answer a client may give up on while the write is done.
    /// With `method` set, only requests of that method match (a PUT, not the GET before it).
    SlowAnswer {
        path_prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        #[serde(with = "duration_ms")]
        delay: Duration,
        times: usize,
    },
    /// Let `ok` matching requests through, then answer `status` until `clear_faults`.
    FailAfter {
        path_prefix: String,
        ok: usize,
        status: u16,
    },
    /// The next `times` imports end in `state` ("failed" | "timed_out" | "cancelled")
    /// with these `activity_errors` and change nothing.
    ActivityOutcome {
        state: String,
        times: usize,
        errors: Vec<String>,
    },
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A one-shot request trigger (`AccountCtl::on_request`): before the `nth` (1-based)
/// request of this account whose method is `method` and whose path starts with
/// `path_prefix` (with or without `/v3`; "" matches every path), and whose raw query
/// contains `query_contains` if set, the sandbox performs `action` on the account, then
/// handles the request. Only requests that reach their handler count (not those refused
/// by auth, the rate limit, the quota or an injected fault).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trigger {
    /// `GET`, `PUT`, `POST`, ... (case-insensitive)
    pub method: String,
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_contains: Option<String>,
    /// Which matching request fires it (1 = the first).
    #[serde(default = "first")]
    pub nth: usize,
    pub action: SubscriberAction,
}

fn first() -> usize {
    1
}

impl Trigger {
    /// Fires before the first `method` request under `path_prefix`.
    pub fn new(method: &str, path_prefix: &str, action: SubscriberAction) -> Trigger {
        Trigger {
            method: method.to_string(),
            path_prefix: path_prefix.to_string(),
            query_contains: None,
            nth: 1,
            action,
        }
    }

    /// Fires before the `n`-th matching request instead (1-based; 0 is taken as 1).
    pub fn nth(mut self, n: usize) -> Trigger {
        self.nth = n.max(1);
        self
    }

    /// Only requests whose raw query string contains `s` match.
    pub fn query_contains(mut self, s: &str) -> Trigger {
        self.query_contains = Some(s.to_string());
        self
    }
}

/// Identifies an installed trigger within its account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TriggerId(pub u64);

/// What a subscriber (or the account owner in the UI) does, as a trigger performs it.
/// Same effects as the `AccountCtl` methods of the same name; membership changes follow
/// the account's `membership_moves_updated_at` switch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubscriberAction {
    LeaveList {
        contact_id: uuid::Uuid,
        list_id: uuid::Uuid,
    },
    JoinList {
        contact_id: uuid::Uuid,
        list_id: uuid::Uuid,
    },
    Unsubscribe {
        contact_id: uuid::Uuid,
        #[serde(default)]
        reason: Option<String>,
    },
    Resubscribe {
        contact_id: uuid::Uuid,
    },
    Delete {
        contact_id: uuid::Uuid,
    },
    /// Sets one core field (`null` clears it) and bumps `updated_at`.
    SetField {
        contact_id: uuid::Uuid,
        field: CoreField,
        value: serde_json::Value,
    },
}

/// The core contact fields a `SetField` action can set: strings, except the birthday
/// parts (integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreField {
    FirstName,
    LastName,
    JobTitle,
    CompanyName,
    Anniversary,
    BirthdayMonth,
    BirthdayDay,
}
