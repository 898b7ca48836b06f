//! The authorization server's state (kept inside the sandbox state, one lock for
//! everything): policies, device and code records, rotation links. A leaf: `oauth.rs`
//! serves it over HTTP; `state.rs` holds it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Secrets remembered for leak tests (oldest dropped beyond this).
const MAX_REMEMBERED_SECRETS: usize = 10_000;

/// What happens to a refresh token when it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RefreshTokenPolicy {
    /// Each refresh returns a new refresh token and the used one stops working at once
    /// (what Constant Contact documents for rotating tokens).
    #[default]
    Rotating,
    /// Each refresh returns a new refresh token; the used one stays valid until the new one
    /// is first used (a client that crashed before saving the new token can replay the old
    /// one; that replay retires the unsaved token instead).
    RotatingKeepPrevious,
    /// The same refresh token comes back every time.
    LongLived,
}

/// Token-endpoint rate limit: `per_second` sustained with bursts of `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenRateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for TokenRateLimit {
    /// About 1 request/s, with a small burst so that a few accounts can start at once.
    fn default() -> Self {
        TokenRateLimit {
            per_second: 1.0,
            burst: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceStatus {
    Pending,
    Approved(String),
    Denied,
}

#[derive(Clone, Debug)]
pub(crate) struct DeviceRec {
    pub(crate) user_code: String,
    pub(crate) scope: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) interval: Duration,
    pub(crate) last_poll: Option<Instant>,
    pub(crate) status: DeviceStatus,
}

#[derive(Clone)]
pub(crate) struct CodeRec {
    pub(crate) account: String,
    pub(crate) redirect_uri: String,
    pub(crate) challenge: Option<String>,
    pub(crate) scope: String,
    pub(crate) expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub(crate) struct PendingAuthorization {
    pub(crate) redirect_uri: String,
    pub(crate) state: Option<String>,
    pub(crate) challenge: Option<String>,
    pub(crate) scope: String,
}

/// OAuth state kept inside the sandbox state (one lock for everything). Its `Debug` shows
/// counts only: the maps are keyed by secrets.
pub(crate) struct OAuthState {
    pub(crate) policy: RefreshTokenPolicy,
    pub(crate) rate: Option<TokenRateLimit>,
    pub(crate) tat: Option<Instant>,
    pub(crate) rate_limited: u64,
    pub(crate) access_ttl: Option<Duration>,
    pub(crate) token_latency: Duration,
    pub(crate) device_interval: Duration,
    pub(crate) auto_approve: Option<String>,
    pub(crate) devices: HashMap<String, DeviceRec>,
    pub(crate) codes: HashMap<String, CodeRec>,
    pub(crate) pending_authorizations: HashMap<String, PendingAuthorization>,
    /// Rotation links for `RotatingKeepPrevious`: new token → the one it replaced.
    pub(crate) predecessor: HashMap<String, String>,
    /// ... and the reverse: used token → the (not yet used) token issued for it.
    pub(crate) successor: HashMap<String, String>,
    pub(crate) secrets: std::collections::VecDeque<String>,
    pub(crate) grants: HashMap<String, u64>,
}

impl std::fmt::Debug for OAuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthState")
            .field("policy", &self.policy)
            .field("rate", &self.rate)
            .field("devices", &self.devices.len())
            .field("codes", &self.codes.len())
            .field("pending_authorizations", &self.pending_authorizations.len())
            .finish_non_exhaustive()
    }
}

impl OAuthState {
    pub(crate) fn new(policy: RefreshTokenPolicy, rate: Option<TokenRateLimit>) -> Self {
        OAuthState {
            policy,
            rate,
            tat: None,
            rate_limited: 0,
            access_ttl: None,
            token_latency: Duration::ZERO,
            device_interval: Duration::from_secs(5),
            auto_approve: None,
            devices: HashMap::new(),
            codes: HashMap::new(),
            pending_authorizations: HashMap::new(),
            predecessor: HashMap::new(),
            successor: HashMap::new(),
            secrets: std::collections::VecDeque::new(),
            grants: HashMap::new(),
        }
    }

    pub(crate) fn remember(&mut self, secret: &str) {
        if self.secrets.len() >= MAX_REMEMBERED_SECRETS {
            self.secrets.pop_front();
        }
        self.secrets.push_back(secret.to_string());
    }

    /// GCRA: `true` when a token request may go through now.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let Some(limit) = self.rate else {
            return true;
        };
        if limit.per_second <= 0.0 {
            return true;
        }
        let t = Duration::from_secs_f64(1.0 / limit.per_second);
        let tolerance = t * limit.burst.saturating_sub(1);
        let tat = self.tat.unwrap_or(now).max(now);
        if tat.saturating_duration_since(now) > tolerance {
            self.rate_limited += 1;
            return false;
        }
        self.tat = Some(tat + t);
        true
    }
}
