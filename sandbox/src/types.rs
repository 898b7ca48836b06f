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
