//! Access tokens: cached per account, refreshed shortly before expiry and once on a 401.
//!
//! Refresh tokens may rotate (single use). The new pair is persisted by the `TokenStore` in a
//! committed transaction *before* the new access token is used, and the store serialises the
//! refreshes of one account across processes (a Postgres advisory lock); inside this process a
//! per-account mutex makes concurrent callers wait for one refresh instead of racing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use super::error::AuthError;

/// Refresh this long before the access token expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(120);

/// What `oauth_tokens` holds for an account.
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: Option<SecretString>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_token: Option<SecretString>,
    /// `rotating` or `long_lived` once observed.
    pub refresh_kind: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token.as_ref().map(|_| "[REDACTED]"))
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("refresh_kind", &self.refresh_kind)
            .finish()
    }
}

impl TokenSet {
    /// The access token, if it stays valid for at least `margin`.
    pub fn usable_access(&self, margin: Duration) -> Option<(SecretString, DateTime<Utc>)> {
        let token = self.access_token.clone()?;
        let exp = self.access_expires_at?;
        let margin = chrono::Duration::from_std(margin).unwrap_or_default();
        (exp - margin > Utc::now()).then_some((token, exp))
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
    pub client_secret: Option<SecretString>,
}

/// Per-account access tokens for the API client.
pub struct Auth {
    http: reqwest::Client,
    oauth: OAuthClient,
    store: Arc<dyn TokenStore>,
    /// Seed refresh tokens from the configuration, used only while the store has no row.
    seeds: HashMap<String, SecretString>,
    cache: Mutex<HashMap<String, (SecretString, DateTime<Utc>)>>,
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
        let (token, exp) = cache.get(account)?;
        let margin = chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or_default();
        (*exp - margin > Utc::now()).then(|| token.clone())
    }

    /// A valid access token for `account`, refreshing if needed.
    pub async fn access_token(&self, account: &str) -> Result<SecretString, AuthError> {
        if let Some(t) = self.cached(account) {
            return Ok(t);
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(account.to_string()).or_default().clone()
        };
        let _guard = flight.lock().await;
        if let Some(t) = self.cached(account) {
            return Ok(t);
        }
        if let Some(set) = self.store.load(account).await? {
            if let Some((token, exp)) = set.usable_access(REFRESH_MARGIN) {
                self.remember(account, &token, exp);
                return Ok(token);
            }
        }
        let set = self.refresh(account, false).await?;
        let (token, exp) = set
            .usable_access(Duration::ZERO)
            .ok_or_else(|| AuthError::Endpoint {
                status: 200,
                error: "token endpoint returned an already expired access token".into(),
            })?;
        self.remember(account, &token, exp);
        Ok(token)
    }

    /// Forgets the access token after a 401 and obtains a new one.
    pub async fn refresh_after_unauthorized(
        &self,
        account: &str,
        rejected: &SecretString,
    ) -> Result<SecretString, AuthError> {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(account.to_string()).or_default().clone()
        };
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
        let set = self.refresh(account, true).await?;
        let (token, exp) = set
            .usable_access(Duration::ZERO)
            .ok_or_else(|| AuthError::Endpoint {
                status: 200,
                error: "token endpoint returned an already expired access token".into(),
            })?;
        self.remember(account, &token, exp);
        Ok(token)
    }

    fn remember(&self, account: &str, token: &SecretString, exp: DateTime<Utc>) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_string(), (token.clone(), exp));
    }

    async fn refresh(&self, account: &str, force: bool) -> Result<TokenSet, AuthError> {
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
                            // Someone refreshed while we waited for the lock: use theirs.
                            if !force && cur.usable_access(REFRESH_MARGIN).is_some() {
                                return Ok(RefreshOutcome::Reuse(cur.clone()));
                            }
                        }
                        let refresh_token = current
                            .as_ref()
                            .and_then(|c| c.refresh_token.clone())
                            .or(seed)
                            .ok_or(AuthError::NoTokens {
                                account: acct.clone(),
                            })?;
                        let set = exchange_refresh_token(&http, &oauth, &acct, &refresh_token)
                            .await?;
                        Ok(RefreshOutcome::New(set))
                    })
                }),
            )
            .await;
        if let Err(AuthError::ReauthRequired { reason, .. }) = &result {
            // Best effort: the error itself already stops the account's jobs.
            let _ = self.store.mark_reauth(account, reason).await;
        }
        result
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// One `grant_type=refresh_token` exchange (HTTP Basic client authentication).
pub async fn exchange_refresh_token(
    http: &reqwest::Client,
    oauth: &OAuthClient,
    account: &str,
    refresh_token: &SecretString,
) -> Result<TokenSet, AuthError> {
    let secret = oauth
        .client_secret
        .as_ref()
        .ok_or(AuthError::NoClientSecret)?;
    let resp = http
        .post(&oauth.token_url)
        .basic_auth(&oauth.client_id, Some(secret.expose_secret()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
        .send()
        .await
        .map_err(AuthError::Transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(AuthError::Transport)?;
    if !status.is_success() {
        let err: TokenErrorBody = serde_json::from_slice(&body).unwrap_or(TokenErrorBody {
            error: String::new(),
            error_description: None,
        });
        if err.error == "invalid_grant" {
            return Err(AuthError::ReauthRequired {
                account: account.to_string(),
                reason: err
                    .error_description
                    .unwrap_or_else(|| "invalid_grant".into()),
            });
        }
        // The body of a token error never carries a secret, but keep only the error code.
        return Err(AuthError::Endpoint {
            status: status.as_u16(),
            error: if err.error.is_empty() {
                "(no error code)".into()
            } else {
                err.error
            },
        });
    }
    let tr: TokenResponse = serde_json::from_slice(&body).map_err(|_| AuthError::Endpoint {
        status: status.as_u16(),
        error: "token response is not the expected JSON".into(),
    })?;
    let now = Utc::now();
    let from_expires_in = tr.expires_in.map(|v| {
        // OAuth says seconds of lifetime; one SDK says a Unix timestamp. Accept both.
        if v > 1_000_000_000 {
            DateTime::from_timestamp(v, 0).unwrap_or(now)
        } else {
            now + chrono::Duration::seconds(v)
        }
    });
    let from_jwt = jwt_exp(&tr.access_token);
    let expires = match (from_expires_in, from_jwt) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    // Unknown lifetime: assume the documented 24 h minus a safety margin.
    .or(Some(now + chrono::Duration::hours(23)));
    let rotated = tr
        .refresh_token
        .as_deref()
        .map(|new| new != refresh_token.expose_secret());
    Ok(TokenSet {
        access_token: Some(SecretString::from(tr.access_token)),
        access_expires_at: expires,
        refresh_token: Some(
            tr.refresh_token
                .map(SecretString::from)
                .unwrap_or_else(|| refresh_token.clone()),
        ),
        refresh_kind: match rotated {
            Some(true) => Some("rotating".into()),
            Some(false) | None => Some("long_lived".into()),
        },
    })
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

    #[test]
    fn jwt_exp_is_read_and_garbage_is_none() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1900000000}"#);
        let t = format!("aaa.{payload}.sig");
        assert_eq!(jwt_exp(&t).map(|d| d.timestamp()), Some(1_900_000_000));
        assert!(jwt_exp("opaque-token").is_none());
        assert!(jwt_exp("a.!!!.c").is_none());
    }

    #[test]
    fn token_set_debug_redacts() {
        let s = TokenSet {
            access_token: Some(SecretString::from("acc-secret-1".to_string())),
            access_expires_at: None,
            refresh_token: Some(SecretString::from("ref-secret-2".to_string())),
            refresh_kind: None,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("acc-secret-1") && !d.contains("ref-secret-2"));
    }
}
