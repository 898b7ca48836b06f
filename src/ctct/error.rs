//! Errors of the Constant Contact client. Callers branch on the variant.

use std::time::Duration;

/// One `{error_key, error_message}` item of an API error body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ApiErrorItem {
    #[serde(default)]
    pub error_key: String,
    #[serde(default)]
    pub error_message: String,
}

/// Parses an error body that is a JSON array of items (the norm) or a single object (auth
/// and rate-limit errors). Anything else gives no items.
pub fn parse_error_body(body: &[u8]) -> Vec<ApiErrorItem> {
    if let Ok(items) = serde_json::from_slice::<Vec<ApiErrorItem>>(body) {
        return items;
    }
    if let Ok(item) = serde_json::from_slice::<ApiErrorItem>(body) {
        if !item.error_key.is_empty() || !item.error_message.is_empty() {
            return vec![item];
        }
    }
    Vec::new()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `429 throttled`: too many requests per second for the API key.
    #[error("Constant Contact throttled the request (429 throttled)")]
    Throttled { retry_after: Option<Duration> },
    /// `429 quota_exceeded`, or our own count reached `daily_request_limit`: no request
    /// should be sent until 00:00 UTC.
    #[error("daily request quota exhausted ({source_of}); work pauses until 00:00 UTC")]
    QuotaExceeded { source_of: &'static str },
    /// `429` because more than 1,000 bulk activities are queued.
    #[error("too many queued bulk activities (429): {message}")]
    TooManyActivities { message: String },
    /// 401 even after one refresh.
    #[error("Constant Contact rejected the access token (401)")]
    Unauthorized,
    /// Obtaining an access token failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Any other non-success status; `items` is the parsed error body.
    #[error("Constant Contact answered {status} on {endpoint}: {}", describe(.items))]
    Status {
        endpoint: &'static str,
        status: u16,
        items: Vec<ApiErrorItem>,
    },
    /// Connection refused or reset, timeout, body cut short.
    #[error("transport error on {endpoint}")]
    Transport {
        endpoint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// A success answer that is not the JSON we expect (a proxy's error page, a body cut
    /// short with a matching `Content-Length`). Retried on GETs, never on writes.
    #[error("cannot decode the answer of {endpoint}: a success status with a body that is not the expected JSON")]
    Decode {
        endpoint: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Writing a downloaded body to a local file failed (disk full, no permission).
    #[error("cannot write the answer of {endpoint} to a local file")]
    File {
        endpoint: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Recording the request in the shared budget failed (database).
    #[error("cannot record the request in the API budget")]
    Budget(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The run was cancelled while waiting.
    #[error("cancelled")]
    Cancelled,
}

fn describe(items: &[ApiErrorItem]) -> String {
    if items.is_empty() {
        return "(no error body)".into();
    }
    items
        .iter()
        .map(|i| format!("{}: {}", i.error_key, i.error_message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Whether a write that ended in this error may have taken effect all the same: the
    /// client gave up on the answer (a timeout, a reset, a cut or undecodable body) or the
    /// server failed while handling it (5xx). Such a write is never sent again blindly.
    pub fn effect_unknown(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Decode { .. } => true,
            Error::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Throttled { .. } | Error::Transport { .. } | Error::Decode { .. } => true,
            Error::Status { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// Errors of the OAuth token lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The refresh token is revoked, expired or already used: a person must re-authorise.
    #[error("account {account} needs re-authorisation ({reason}): run `ccsync auth login --account {account}`")]
    ReauthRequired { account: String, reason: String },
    /// No token row and no seed refresh token in the configuration.
    #[error("account {account} has no tokens: set accounts.refresh_token or run `ccsync auth login --account {account}`")]
    NoTokens { account: String },
    #[error("token endpoint answered {status}: {error}")]
    Endpoint { status: u16, error: String },
    #[error("token endpoint transport error")]
    Transport(#[source] reqwest::Error),
    #[error("token store error")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("client_secret is not configured")]
    NoClientSecret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_array_and_object_both_parse() {
        let arr = br#"[{"error_key":"contacts.api.not_found","error_message":"nope"}]"#;
        assert_eq!(parse_error_body(arr)[0].error_key, "contacts.api.not_found");
        let obj = br#"{"error_key":"throttled","error_message":"Too Many Requests"}"#;
        assert_eq!(parse_error_body(obj)[0].error_key, "throttled");
        assert!(parse_error_body(b"<html>").is_empty());
        assert!(parse_error_body(b"{}").is_empty());
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let s = |status| Error::Status {
            endpoint: "x",
            status,
            items: vec![],
        };
        assert!(s(503).is_retryable());
        assert!(s(500).is_retryable());
        assert!(!s(400).is_retryable());
        assert!(!s(404).is_retryable());
        assert!(Error::Throttled { retry_after: None }.is_retryable());
        assert!(!Error::QuotaExceeded { source_of: "api" }.is_retryable());
        let decode = Error::Decode {
            endpoint: "GET /contacts",
            source: serde_json::from_slice::<serde_json::Value>(b"<html>").unwrap_err(),
        };
        assert!(
            decode.is_retryable(),
            "a GET retries it; writes never re-send"
        );
        assert!(decode.to_string().contains("GET /contacts"), "{decode}");
    }
}
