//! `oauth_tokens`: the `TokenStore` of the API client, over PostgreSQL.
//!
//! A refresh holds a session advisory lock on a dedicated connection (not a pooled one: a
//! pooled connection returned with the lock still held would keep it while idle). If the
//! process dies mid-refresh the connection closes and the lock goes with it. The row is
//! re-read after the lock is taken, so a second waiter uses the pair the first one stored
//! instead of spending the old (single-use) refresh token.
//!
//! With a `TokenCipher` both tokens are sealed (`encrypted = true`), bound to the account and
//! column; rows written before a key was configured are still read, and re-sealed on their
//! next write.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tracing::{error, warn};

use crate::crypto::{CryptoError, TokenCipher};
use crate::ctct::auth::{RefreshFn, RefreshOutcome, TokenSet, TokenStore};
use crate::ctct::AuthError;

/// Environment variable naming a test fault point (see [`FaultPoint`]).
pub const FAULT_ENV: &str = "CCSYNC_TEST_FAULT";

/// A test hook between "the token endpoint answered" and "the new pair is committed": the
/// one window where a rotated refresh token can be lost. Set in-process with
/// [`PgTokenStore::with_fault`], or in a child process with `CCSYNC_TEST_FAULT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// `token_error_before_save`: the refresh fails as if the database went away.
    ErrorBeforeSave,
    /// `token_abort_before_save`: the process dies at once (like SIGKILL).
    AbortBeforeSave,
}

impl FaultPoint {
    fn from_env() -> Option<FaultPoint> {
        match std::env::var(FAULT_ENV).ok()?.as_str() {
            "token_error_before_save" => Some(FaultPoint::ErrorBeforeSave),
            "token_abort_before_save" => Some(FaultPoint::AbortBeforeSave),
            _ => None,
        }
    }
}

/// Tokens in PostgreSQL.
pub struct PgTokenStore {
    pool: PgPool,
    connect: PgConnectOptions,
    cipher: Option<Arc<TokenCipher>>,
    fault: Option<FaultPoint>,
}

#[derive(Debug, thiserror::Error)]
#[error("test fault point {0:?} reached")]
struct InjectedFault(FaultPoint);

impl PgTokenStore {
    pub fn new(pool: PgPool, connect: PgConnectOptions) -> Self {
        PgTokenStore {
            pool,
            connect,
            cipher: None,
            fault: FaultPoint::from_env(),
        }
    }

    /// Seal tokens with `cipher` (`None`: plain text).
    pub fn with_cipher(mut self, cipher: Option<Arc<TokenCipher>>) -> Self {
        self.cipher = cipher;
        self
    }

    /// Arms a test fault point.
    pub fn with_fault(mut self, fault: Option<FaultPoint>) -> Self {
        self.fault = fault;
        self
    }

    /// Stores tokens obtained by `auth login` / `auth import` under the refresh lock, and
    /// clears a pending re-authorisation.
    pub async fn store_login(&self, account: &str, set: &TokenSet) -> Result<(), AuthError> {
        let mut conn = self.lock(account).await?;
        let result = save(&mut conn, self.cipher.as_deref(), account, set)
            .await
            .map_err(store_err);
        self.unlock(conn, account).await;
        result
    }

    async fn lock(&self, account: &str) -> Result<PgConnection, AuthError> {
        let mut conn = PgConnection::connect_with(&self.connect)
            .await
            .map_err(store_err)?;
        // A holder is bounded by the token requests' timeouts; a stuck one (a stopped
        // process whose connection stays open) must not block every other worker forever.
        sqlx::query("SET lock_timeout = '180s'")
            .execute(&mut conn)
            .await
            .map_err(store_err)?;
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(lock_key(account))
            .execute(&mut conn)
            .await
            .map_err(store_err)?;
        Ok(conn)
    }

    async fn unlock(&self, mut conn: PgConnection, account: &str) {
        // Closing the connection releases the lock even if the unlock fails.
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(lock_key(account))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }

    /// Commits a new pair: on the lock connection, else (it broke) through the pool, a few
    /// times. The old refresh token may already be spent, so giving up early loses the
    /// account.
    async fn save_new(
        &self,
        conn: &mut PgConnection,
        account: &str,
        set: &TokenSet,
    ) -> Result<(), AuthError> {
        let cipher = self.cipher.as_deref();
        let mut last = match save(conn, cipher, account, set).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        for wait in [200u64, 1_000, 3_000] {
            error!(error = %last, account, "cannot store the new tokens; retrying");
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let attempt = async {
                let mut c = self.pool.acquire().await?;
                save(&mut c, cipher, account, set).await
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        error!(error = %last, account, "new tokens NOT stored; the account may need `ccsync auth login`");
        Err(store_err(last))
    }
}

fn lock_key(account: &str) -> String {
    format!("ccsync:oauth:{account}")
}

fn store_err(e: sqlx::Error) -> AuthError {
    AuthError::Store(Box::new(e))
}

fn crypto_err(e: CryptoError) -> AuthError {
    AuthError::Store(Box::new(e))
}

fn aad(account: &str, column: &str) -> String {
    format!("ccsync.oauth_tokens:{account}:{column}")
}

type Row = (
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    bool,
    Option<String>,
    bool,
    Option<DateTime<Utc>>,
);

/// A row: the tokens, whether re-authorisation is needed, and why.
struct Stored {
    set: TokenSet,
    needs_reauth: bool,
    reason: Option<String>,
}

fn reveal(
    cipher: Option<&TokenCipher>,
    encrypted: bool,
    account: &str,
    column: &str,
    value: Option<String>,
) -> Result<Option<SecretString>, CryptoError> {
    let Some(v) = value else {
        return Ok(None);
    };
    if !encrypted {
        return Ok(Some(SecretString::from(v)));
    }
    let c = cipher.ok_or(CryptoError::KeyMissing)?;
    c.open(&v, &aad(account, column)).map(Some)
}

async fn read(
    conn: &mut PgConnection,
    cipher: Option<&TokenCipher>,
    account: &str,
) -> Result<Option<Stored>, AuthError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT access_token, access_expires_at, refresh_token, refresh_kind, needs_reauth,
                reauth_reason, encrypted, last_refresh_at
         FROM ccsync.oauth_tokens WHERE account_id = $1",
    )
    .bind(account)
    .fetch_optional(&mut *conn)
    .await
    .map_err(store_err)?;
    let Some((a, exp, r, kind, needs_reauth, reason, encrypted, last)) = row else {
        return Ok(None);
    };
    let access_token = reveal(cipher, encrypted, account, "access_token", a).map_err(crypto_err)?;
    let refresh_token =
        reveal(cipher, encrypted, account, "refresh_token", r).map_err(crypto_err)?;
    Ok(Some(Stored {
        set: TokenSet {
            access_token,
            access_expires_at: exp,
            refresh_token,
            refresh_kind: kind,
            issued_at: last,
        },
        needs_reauth,
        reason,
    }))
}

/// Writes a token pair (autocommit: committed when this returns) and clears
/// `needs_reauth`.
async fn save(
    conn: &mut PgConnection,
    cipher: Option<&TokenCipher>,
    account: &str,
    set: &TokenSet,
) -> Result<(), sqlx::Error> {
    let conceal = |column: &str, v: &Option<SecretString>| -> Result<Option<String>, sqlx::Error> {
        let Some(v) = v else {
            return Ok(None);
        };
        match cipher {
            Some(c) => c
                .seal(v.expose_secret(), &aad(account, column))
                .map(Some)
                .map_err(|e| sqlx::Error::Encode(Box::new(e))),
            None => Ok(Some(v.expose_secret().to_string())),
        }
    };
    let access = conceal("access_token", &set.access_token)?;
    let refresh = conceal("refresh_token", &set.refresh_token)?;
    sqlx::query(
        "INSERT INTO ccsync.oauth_tokens (account_id, access_token, access_expires_at,
            refresh_token, refresh_kind, encrypted, needs_reauth, reauth_reason,
            last_refresh_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, false, NULL, COALESCE($7, now()), now())
         ON CONFLICT (account_id) DO UPDATE SET
            access_token = EXCLUDED.access_token, access_expires_at = EXCLUDED.access_expires_at,
            refresh_token = EXCLUDED.refresh_token,
            refresh_kind = COALESCE(EXCLUDED.refresh_kind, ccsync.oauth_tokens.refresh_kind),
            encrypted = EXCLUDED.encrypted,
            needs_reauth = false, reauth_reason = NULL,
            last_refresh_at = EXCLUDED.last_refresh_at, updated_at = now()",
    )
    .bind(account)
    .bind(access)
    .bind(set.access_expires_at)
    .bind(refresh)
    .bind(set.refresh_kind.as_deref())
    .bind(cipher.is_some())
    .bind(set.issued_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn reauth_error(account: &str, reason: Option<String>) -> AuthError {
    AuthError::ReauthRequired {
        account: account.to_string(),
        reason: reason.unwrap_or_else(|| "refresh token rejected".into()),
    }
}

impl TokenStore for PgTokenStore {
    fn load<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Option<TokenSet>, AuthError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(store_err)?;
            match read(&mut conn, self.cipher.as_deref(), account).await? {
                Some(s) if s.needs_reauth => Err(reauth_error(account, s.reason)),
                Some(s) => Ok(Some(s.set)),
                None => Ok(None),
            }
        })
    }

    fn refresh_locked<'a>(
        &'a self,
        account: &'a str,
        refresh: RefreshFn<'a>,
    ) -> BoxFuture<'a, Result<TokenSet, AuthError>> {
        Box::pin(async move {
            let mut conn = self.lock(account).await?;
            let result = async {
                let current = match read(&mut conn, self.cipher.as_deref(), account).await? {
                    Some(s) if s.needs_reauth => return Err(reauth_error(account, s.reason)),
                    Some(s) => Some(s.set),
                    None => None,
                };
                match refresh(current).await? {
                    RefreshOutcome::Reuse(set) => Ok(set),
                    RefreshOutcome::New(set) => {
                        match self.fault {
                            Some(FaultPoint::AbortBeforeSave) => {
                                warn!(
                                    "test fault point: aborting before the new tokens are stored"
                                );
                                std::process::abort();
                            }
                            Some(f @ FaultPoint::ErrorBeforeSave) => {
                                return Err(AuthError::Store(Box::new(InjectedFault(f))));
                            }
                            None => {}
                        }
                        // Committed before anyone uses the new access token.
                        self.save_new(&mut conn, account, &set).await?;
                        Ok(set)
                    }
                }
            }
            .await;
            self.unlock(conn, account).await;
            result
        })
    }

    fn mark_reauth<'a>(
        &'a self,
        account: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), AuthError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO ccsync.oauth_tokens (account_id, needs_reauth, reauth_reason, updated_at)
                 VALUES ($1, true, $2, now())
                 ON CONFLICT (account_id) DO UPDATE SET needs_reauth = true,
                    reauth_reason = EXCLUDED.reauth_reason, updated_at = now()",
            )
            .bind(account)
            .bind(reason)
            .execute(&self.pool)
            .await
            .map_err(store_err)?;
            Ok(())
        })
    }
}

/// Token facts safe to show (`status`, `auth status`): never the tokens themselves.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub account_id: String,
    pub has_access_token: bool,
    pub has_refresh_token: bool,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_kind: Option<String>,
    pub needs_reauth: bool,
    pub reauth_reason: Option<String>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    /// Whether the tokens are sealed, and the id of the key that sealed them.
    pub encrypted: bool,
    pub key_id: Option<String>,
}

/// Token facts of every account with a row.
pub async fn info(conn: &mut PgConnection) -> Result<Vec<TokenInfo>, sqlx::Error> {
    type R = (
        String,
        bool,
        bool,
        Option<DateTime<Utc>>,
        Option<String>,
        bool,
        Option<String>,
        Option<DateTime<Utc>>,
        bool,
        Option<String>,
    );
    // The key id is the second dot-separated part of a sealed value (`v1.<key id>.<data>`);
    // nothing else of a token leaves the database.
    let rows: Vec<R> = sqlx::query_as(
        "SELECT account_id, access_token IS NOT NULL, refresh_token IS NOT NULL,
                access_expires_at, refresh_kind, needs_reauth, reauth_reason, last_refresh_at,
                encrypted,
                CASE WHEN encrypted THEN NULLIF(split_part(refresh_token, '.', 2), '') END
         FROM ccsync.oauth_tokens ORDER BY account_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(account_id, a, r, exp, kind, reauth, reason, last, encrypted, key_id)| TokenInfo {
                account_id,
                has_access_token: a,
                has_refresh_token: r,
                access_expires_at: exp,
                refresh_kind: kind,
                needs_reauth: reauth,
                reauth_reason: reason,
                last_refresh_at: last,
                encrypted,
                key_id,
            },
        )
        .collect())
}

/// Accounts whose refresh token was rejected, with the reason (for `/readyz` and `status`).
pub async fn needing_reauth(
    conn: &mut PgConnection,
) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, reauth_reason FROM ccsync.oauth_tokens
         WHERE needs_reauth ORDER BY account_id",
    )
    .fetch_all(&mut *conn)
    .await
}
