//! Access tokens: cached per account, refreshed shortly before expiry and once on a 401.
//!
//! Refresh tokens may rotate (single use). The new pair is persisted by the `TokenStore` in a
//! committed transaction *before* the new access token is used, and the store serialises the
//! refreshes of one account across processes (a Postgres advisory lock, the row re-read after
//! taking it); inside this process a per-account mutex makes concurrent callers wait for one
//! refresh instead of racing. The token endpoint allows about 1 request/s: a token is reused
//! until it is due (never a refresh per request), and a `429` is waited out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, instrument, warn};

use super::error::AuthError;

/// Refresh this long before the access token expires (at most half of its lifetime).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// Attempts of one token request on `429`, `5xx` and transport errors.
const TOKEN_ATTEMPTS: u32 = 4;
/// Longest `Retry-After` honoured from the token endpoint.
const MAX_TOKEN_RETRY_AFTER: Duration = Duration::from_secs(10);

/// What `oauth_tokens` holds for an account.
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: Option<SecretString>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_token: Option<SecretString>,
    /// `rotating` or `long_lived` once observed.
    pub refresh_kind: Option<String>,
    /// When the access token was obtained (so that a short lifetime gets a short margin).
    pub issued_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("access_expires_at", &self.access_expires_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("refresh_kind", &self.refresh_kind)
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

/// When a token that expires at `exp` should be replaced: `REFRESH_MARGIN` before, or half
/// way through a lifetime shorter than twice the margin.
pub fn refresh_due(issued: Option<DateTime<Utc>>, exp: DateTime<Utc>) -> DateTime<Utc> {
    let margin = chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or_default();
    let margin = match issued {
        Some(i) if exp > i => margin.min((exp - i) / 2),
        _ => margin,
    };
    exp - margin
}

impl TokenSet {
    /// The access token and when it falls due, if it is not due yet.
    pub fn usable_access(&self) -> Option<(SecretString, DateTime<Utc>)> {
        let token = self.access_token.clone()?;
        let due = refresh_due(self.issued_at, self.access_expires_at?);
        (due > Utc::now()).then_some((token, due))
    }

    /// The access token if it has not expired (due or not).
    fn unexpired_access(&self) -> Option<(SecretString, DateTime<Utc>)> {
        let token = self.access_token.clone()?;
        let exp = self.access_expires_at?;
        (exp > Utc::now()).then(|| (token, refresh_due(self.issued_at, exp)))
    }
}

/// The decision a refresh callback hands back to the store.
pub enum RefreshOutcome {
    /// The stored access token is still good (another worker refreshed it meanwhile).
    Reuse(TokenSet),
    /// A new pair to persist (committed) before it is used.
    New(TokenSet),
}

pub type RefreshFn<'a> = Box<
    dyn FnOnce(Option<TokenSet>) -> BoxFuture<'a, Result<RefreshOutcome, AuthError>> + Send + 'a,
>;

/// Where tokens live (implemented by `store::tokens` over PostgreSQL).
pub trait TokenStore: Send + Sync {
    /// Reads the account's tokens.
    fn load<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Option<TokenSet>, AuthError>>;
    /// Runs `refresh` on the freshly re-read row while holding the account's refresh lock
    /// (across replicas); a `New` outcome is committed before this returns.
    fn refresh_locked<'a>(
        &'a self,
        account: &'a str,
        refresh: RefreshFn<'a>,
    ) -> BoxFuture<'a, Result<TokenSet, AuthError>>;
    /// Marks the account as needing a person to re-authorise.
    fn mark_reauth<'a>(
        &'a self,
        account: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), AuthError>>;
}

/// OAuth client settings.
#[derive(Clone)]
pub struct OAuthClient {
    pub token_url: String,
    pub client_id: String,
    /// `None`: a public client (PKCE / device flow), identified by `client_id` alone.
    pub client_secret: Option<SecretString>,
}

struct Cached {
    token: SecretString,
    due: DateTime<Utc>,
}

/// Per-account access tokens for the API client.
pub struct Auth {
    http: reqwest::Client,
    oauth: OAuthClient,
    store: Arc<dyn TokenStore>,
    /// Seed refresh tokens from the configuration, used only while the store has no row.
    seeds: HashMap<String, SecretString>,
    cache: Mutex<HashMap<String, Cached>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Auth {
    pub fn new(
        http: reqwest::Client,
        oauth: OAuthClient,
        store: Arc<dyn TokenStore>,
        seeds: HashMap<String, SecretString>,
    ) -> Self {
        Auth {
            http,
            oauth,
            store,
            seeds,
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, account: &str) -> Option<SecretString> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache.get(account)?;
        (c.due > Utc::now()).then(|| c.token.clone())
    }

    fn flight(&self, account: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(account.to_string()).or_default().clone()
    }

    /// A valid access token for `account`, refreshing if it is due.
    pub async fn access_token(&self, account: &str) -> Result<SecretString, AuthError> {
        if let Some(t) = self.cached(account) {
            return Ok(t);
        }
        let flight = self.flight(account);
        let _guard = flight.lock().await;
        if let Some(t) = self.cached(account) {
            return Ok(t);
        }
        if let Some(set) = self.store.load(account).await? {
            if let Some((token, due)) = set.usable_access() {
                self.remember(account, &token, due);
                return Ok(token);
            }
        }
        let set = self.refresh(account, None).await?;
        self.take_access(account, &set)
    }

    /// Forgets the access token after a 401 and obtains another one: the one another
    /// worker stored meanwhile, or a refreshed one.
    pub async fn refresh_after_unauthorized(
        &self,
        account: &str,
        rejected: &SecretString,
    ) -> Result<SecretString, AuthError> {
        let flight = self.flight(account);
        let _guard = flight.lock().await;
        // Another caller may have refreshed while we waited.
        if let Some(t) = self.cached(account) {
            if t.expose_secret() != rejected.expose_secret() {
                return Ok(t);
            }
        }
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
        let set = self.refresh(account, Some(rejected.clone())).await?;
        self.take_access(account, &set)
    }

    fn take_access(&self, account: &str, set: &TokenSet) -> Result<SecretString, AuthError> {
        let (token, due) = set.unexpired_access().ok_or_else(|| AuthError::Endpoint {
            status: 200,
            error: "token endpoint returned an already expired access token".into(),
        })?;
        self.remember(account, &token, due);
        Ok(token)
    }

    fn remember(&self, account: &str, token: &SecretString, due: DateTime<Utc>) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            account.to_string(),
            Cached {
                token: token.clone(),
                due,
            },
        );
    }

    #[instrument(skip_all, fields(account = %account))]
    async fn refresh(
        &self,
        account: &str,
        rejected: Option<SecretString>,
    ) -> Result<TokenSet, AuthError> {
        let seed = self.seeds.get(account).cloned();
        let http = self.http.clone();
        let oauth = self.oauth.clone();
        let acct = account.to_string();
        let result = self
            .store
            .refresh_locked(
                account,
                Box::new(move |current: Option<TokenSet>| {
                    Box::pin(async move {
                        if let Some(cur) = &current {
                            // Someone refreshed while we waited for the lock: use theirs,
                            // unless it is the very token the API just rejected.
                            if let Some((tok, _)) = cur.usable_access() {
                                let rejected_again = rejected
                                    .as_ref()
                                    .is_some_and(|r| r.expose_secret() == tok.expose_secret());
                                if !rejected_again {
                                    return Ok(RefreshOutcome::Reuse(cur.clone()));
                                }
                            }
                        }
                        let refresh_token = current
                            .as_ref()
                            .and_then(|c| c.refresh_token.clone())
                            .or(seed)
                            .ok_or(AuthError::NoTokens {
                                account: acct.clone(),
                            })?;
                        let set =
                            exchange_refresh_token(&http, &oauth, &acct, &refresh_token).await?;
                        Ok(RefreshOutcome::New(set))
                    })
                }),
            )
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AuthError::ReauthRequired { .. }) => "reauth_required",
            Err(_) => "failed",
        };
        metrics::counter!("ccsync_token_refreshes_total", "account" => account.to_string(), "outcome" => outcome)
            .increment(1);
        match &result {
            Ok(set) => info!(
                access_expires_at = ?set.access_expires_at,
                refresh_kind = ?set.refresh_kind,
                "access token ready"
            ),
            Err(AuthError::ReauthRequired { reason, .. }) => {
                warn!(%reason, "refresh token rejected: the account needs re-authorisation");
                // Best effort: the error itself already stops the account's jobs.
                if let Err(e) = self.store.mark_reauth(account, reason).await {
                    warn!(error = %crate::telemetry::Chain(&e), "cannot record that the account needs re-authorisation");
                }
            }
            Err(_) => {}
        }
        result
    }
}

/// A token-endpoint answer. Tokens are wrapped at once and never printed.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    #[serde(default)]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// A failed token request, as the flows need to branch on it.
#[derive(Debug)]
pub enum TokenEndpointError {
    /// An OAuth error answer (`invalid_grant`, `authorization_pending`, ...).
    OAuth {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// `429`: wait this long.
    RateLimited {
        retry_after: Duration,
    },
    Transport(reqwest::Error),
    /// A success status with a body that is not a token response.
    Decode {
        status: u16,
    },
}

impl TokenEndpointError {
    fn transient(&self) -> bool {
        match self {
            TokenEndpointError::RateLimited { .. } | TokenEndpointError::Transport(_) => true,
            TokenEndpointError::OAuth { status, .. } => *status >= 500,
            TokenEndpointError::Decode { .. } => false,
        }
    }

    /// Maps to the client's error for `account`; `invalid_grant` means re-authorise.
    pub fn into_auth_error(self, account: &str) -> AuthError {
        match self {
            TokenEndpointError::OAuth {
                error, description, ..
            } if error == "invalid_grant" => AuthError::ReauthRequired {
                account: account.to_string(),
                reason: description.unwrap_or_else(|| "invalid_grant".into()),
            },
            TokenEndpointError::OAuth { status, error, .. } => AuthError::Endpoint {
                status,
                error: if error.is_empty() {
                    "(no error code)".into()
                } else {
                    error
                },
            },
            TokenEndpointError::RateLimited { .. } => AuthError::Endpoint {
                status: 429,
                error: "token endpoint rate limit".into(),
            },
            TokenEndpointError::Transport(e) => AuthError::Transport(e),
            TokenEndpointError::Decode { status } => AuthError::Endpoint {
                status,
                error: "token response is not the expected JSON".into(),
            },
        }
    }
}

fn retry_after(resp: &reqwest::Response) -> Duration {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(100), MAX_TOKEN_RETRY_AFTER)
}

/// One POST to the token endpoint: HTTP Basic client authentication when there is a client
/// secret, else `client_id` in the form (public client). Only the error code and
/// description of a failure are kept: a body is never logged or carried in an error.
pub async fn token_post_once(
    http: &reqwest::Client,
    oauth: &OAuthClient,
    params: &[(&str, &str)],
) -> Result<TokenResponse, TokenEndpointError> {
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut req = http.post(&oauth.token_url);
    match &oauth.client_secret {
        Some(secret) => req = req.basic_auth(&oauth.client_id, Some(secret.expose_secret())),
        None => form.push(("client_id", &oauth.client_id)),
    }
    let resp = req
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(TokenEndpointError::Transport)?;
    let status = resp.status();
    if status.as_u16() == 429 {
        return Err(TokenEndpointError::RateLimited {
            retry_after: retry_after(&resp),
        });
    }
    let body = resp.bytes().await.map_err(TokenEndpointError::Transport)?;
    if !status.is_success() {
        let err: TokenErrorBody = serde_json::from_slice(&body).unwrap_or(TokenErrorBody {
            error: String::new(),
            error_description: None,
        });
        return Err(TokenEndpointError::OAuth {
            status: status.as_u16(),
            error: err.error.chars().take(64).collect(),
            description: err.error_description.map(|d| d.chars().take(200).collect()),
        });
    }
    serde_json::from_slice(&body).map_err(|_| TokenEndpointError::Decode {
        status: status.as_u16(),
    })
}

/// `token_post_once` with retries on `429` (its `Retry-After`), `5xx` and transport errors.
pub async fn token_post(
    http: &reqwest::Client,
    oauth: &OAuthClient,
    params: &[(&str, &str)],
) -> Result<TokenResponse, TokenEndpointError> {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match token_post_once(http, oauth, params).await {
            Err(e) if e.transient() && attempt < TOKEN_ATTEMPTS => {
                let wait = match &e {
                    TokenEndpointError::RateLimited { retry_after } => *retry_after,
                    _ => backoff,
                };
                warn!(
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "token endpoint busy or unreachable; retrying"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_TOKEN_RETRY_AFTER);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Turns a token answer into what is stored. `previous_refresh`: the refresh token that
/// was spent (to tell rotating from long-lived tokens).
pub fn token_set_from(tr: TokenResponse, previous_refresh: Option<&SecretString>) -> TokenSet {
    let now = Utc::now();
    let from_expires_in = tr.expires_in.map(|v| {
        // OAuth says seconds of lifetime; one SDK says a Unix timestamp. Accept both.
        if v > 1_000_000_000 {
            DateTime::from_timestamp(v, 0).unwrap_or(now)
        } else {
            now + chrono::Duration::seconds(v)
        }
    });
    let from_jwt = jwt_exp(tr.access_token.expose_secret());
    let expires = match (from_expires_in, from_jwt) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    // Unknown lifetime: assume the documented 24 h minus a safety margin.
    .or(Some(now + chrono::Duration::hours(23)));
    let refresh_kind = match (previous_refresh, &tr.refresh_token) {
        (Some(old), Some(new)) if old.expose_secret() != new.expose_secret() => {
            Some("rotating".to_string())
        }
        (Some(_), _) => Some("long_lived".to_string()),
        (None, _) => None,
    };
    TokenSet {
        access_token: Some(tr.access_token),
        access_expires_at: expires,
        refresh_token: tr.refresh_token.or_else(|| previous_refresh.cloned()),
        refresh_kind,
        issued_at: Some(now),
    }
}

/// One `grant_type=refresh_token` exchange.
pub async fn exchange_refresh_token(
    http: &reqwest::Client,
    oauth: &OAuthClient,
    account: &str,
    refresh_token: &SecretString,
) -> Result<TokenSet, AuthError> {
    let tr = token_post(
        http,
        oauth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ],
    )
    .await
    .map_err(|e| e.into_auth_error(account))?;
    Ok(token_set_from(tr, Some(refresh_token)))
}

/// The `exp` claim of a JWT, when the token is one.
pub fn jwt_exp(token: &str) -> Option<DateTime<Utc>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    DateTime::from_timestamp(v.get("exp")?.as_i64()?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn jwt_exp_is_read_and_garbage_is_none() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1900000000}"#);
        let t = format!("aaa.{payload}.sig");
        assert_eq!(jwt_exp(&t).map(|d| d.timestamp()), Some(1_900_000_000));
        assert!(jwt_exp("opaque-token").is_none());
        assert!(jwt_exp("a.!!!.c").is_none());
    }

    #[test]
    fn token_set_debug_redacts() {
        let s = TokenSet {
            access_token: Some(secret("acc-secret-1")),
            access_expires_at: None,
            refresh_token: Some(secret("ref-secret-2")),
            refresh_kind: None,
            issued_at: None,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("acc-secret-1") && !d.contains("ref-secret-2"));
    }

    #[test]
    fn a_day_long_token_is_due_two_minutes_before_expiry() {
        let now = Utc::now();
        let exp = now + chrono::Duration::hours(24);
        assert_eq!(
            refresh_due(Some(now), exp),
            exp - chrono::Duration::seconds(120)
        );
        assert_eq!(refresh_due(None, exp), exp - chrono::Duration::seconds(120));
    }

    #[test]
    fn a_short_token_is_due_half_way_not_at_once() {
        let now = Utc::now();
        let exp = now + chrono::Duration::seconds(4);
        assert_eq!(
            refresh_due(Some(now), exp),
            now + chrono::Duration::seconds(2)
        );
    }

    proptest! {
        /// Never due after expiry, never before issue, never more than the margin early.
        #[test]
        fn due_lies_between_issue_and_expiry(life_ms in 1i64..200_000_000) {
            let now = Utc::now();
            let exp = now + chrono::Duration::milliseconds(life_ms);
            let due = refresh_due(Some(now), exp);
            prop_assert!(due >= now && due < exp);
            prop_assert!(exp - due <= chrono::Duration::seconds(120));
        }
    }

    fn response(access: &str, refresh: Option<&str>, expires_in: Option<i64>) -> TokenResponse {
        TokenResponse {
            access_token: secret(access),
            expires_in,
            refresh_token: refresh.map(secret),
            scope: None,
        }
    }

    #[test]
    fn rotation_kind_is_learned_from_the_answer() {
        let old = secret("rt-1");
        let rotated = token_set_from(response("at", Some("rt-2"), Some(60)), Some(&old));
        assert_eq!(rotated.refresh_kind.as_deref(), Some("rotating"));
        assert_eq!(
            rotated
                .refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
            Some("rt-2".into())
        );
        let same = token_set_from(response("at", Some("rt-1"), Some(60)), Some(&old));
        assert_eq!(same.refresh_kind.as_deref(), Some("long_lived"));
        // No refresh token in the answer: the old one stays in use.
        let absent = token_set_from(response("at", None, Some(60)), Some(&old));
        assert_eq!(
            absent
                .refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
            Some("rt-1".into())
        );
        let first = token_set_from(response("at", Some("rt-9"), Some(60)), None);
        assert_eq!(first.refresh_kind, None);
    }

    #[test]
    fn expiry_takes_the_earlier_of_expires_in_and_the_jwt() {
        let soon = (Utc::now() + chrono::Duration::seconds(30)).timestamp();
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{soon}}}"#));
        let jwt = format!("h.{payload}.s");
        let set = token_set_from(response(&jwt, None, Some(86_400)), None);
        assert_eq!(set.access_expires_at.map(|d| d.timestamp()), Some(soon));
        let unix = (Utc::now() + chrono::Duration::seconds(500)).timestamp();
        let set = token_set_from(response("opaque", None, Some(unix)), None);
        assert_eq!(set.access_expires_at.map(|d| d.timestamp()), Some(unix));
    }

    #[test]
    fn invalid_grant_means_reauthorise_and_names_the_command() {
        let e = TokenEndpointError::OAuth {
            status: 400,
            error: "invalid_grant".into(),
            description: Some("The refresh token is invalid or expired.".into()),
        }
        .into_auth_error("acme");
        let msg = e.to_string();
        assert!(matches!(e, AuthError::ReauthRequired { .. }));
        assert!(msg.contains("ccsync auth login --account acme"), "{msg}");
    }
}
