//! `oauth_tokens`: the `TokenStore` of the API client, over PostgreSQL.
//!
//! A refresh holds a session advisory lock on a dedicated connection (not a pooled one: a
//! pooled connection returned with the lock still held would keep it while idle). If the
//! process dies mid-refresh the connection closes and the lock goes with it.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::ctct::auth::{RefreshFn, RefreshOutcome, TokenSet, TokenStore};
use crate::ctct::AuthError;

/// Tokens in PostgreSQL.
pub struct PgTokenStore {
    pool: PgPool,
    connect: PgConnectOptions,
}

impl PgTokenStore {
    pub fn new(pool: PgPool, connect: PgConnectOptions) -> Self {
        PgTokenStore { pool, connect }
    }
}

fn store_err(e: sqlx::Error) -> AuthError {
    AuthError::Store(Box::new(e))
}

type Row = (
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    bool,
    Option<String>,
);

async fn read(conn: &mut PgConnection, account: &str) -> Result<Option<(TokenSet, bool, Option<String>)>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT access_token, access_expires_at, refresh_token, refresh_kind, needs_reauth,
                reauth_reason
         FROM ccsync.oauth_tokens WHERE account_id = $1",
    )
    .bind(account)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(a, exp, r, kind, reauth, reason)| {
        (
            TokenSet {
                access_token: a.map(SecretString::from),
                access_expires_at: exp,
                refresh_token: r.map(SecretString::from),
                refresh_kind: kind,
            },
            reauth,
            reason,
        )
    }))
}

/// Writes a new token pair (autocommit: committed when this returns).
pub async fn save(conn: &mut PgConnection, account: &str, set: &TokenSet) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ccsync.oauth_tokens (account_id, access_token, access_expires_at,
            refresh_token, refresh_kind, needs_reauth, reauth_reason, last_refresh_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, false, NULL, now(), now())
         ON CONFLICT (account_id) DO UPDATE SET
            access_token = EXCLUDED.access_token, access_expires_at = EXCLUDED.access_expires_at,
            refresh_token = EXCLUDED.refresh_token,
            refresh_kind = COALESCE(EXCLUDED.refresh_kind, ccsync.oauth_tokens.refresh_kind),
            needs_reauth = false, reauth_reason = NULL, last_refresh_at = now(), updated_at = now()",
    )
    .bind(account)
    .bind(set.access_token.as_ref().map(|s| s.expose_secret().to_string()))
    .bind(set.access_expires_at)
    .bind(set.refresh_token.as_ref().map(|s| s.expose_secret().to_string()))
    .bind(set.refresh_kind.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl TokenStore for PgTokenStore {
    fn load<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Option<TokenSet>, AuthError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(store_err)?;
            match read(&mut conn, account).await.map_err(store_err)? {
                Some((_, true, reason)) => Err(AuthError::ReauthRequired {
                    account: account.to_string(),
                    reason: reason.unwrap_or_else(|| "refresh token rejected".into()),
                }),
                Some((set, false, _)) => Ok(Some(set)),
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
            let mut conn = PgConnection::connect_with(&self.connect)
                .await
                .map_err(store_err)?;
            let key = format!("ccsync:oauth:{account}");
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .execute(&mut conn)
                .await
                .map_err(store_err)?;
            let result = async {
                let current = match read(&mut conn, account).await.map_err(store_err)? {
                    Some((_, true, reason)) => {
                        return Err(AuthError::ReauthRequired {
                            account: account.to_string(),
                            reason: reason.unwrap_or_else(|| "refresh token rejected".into()),
                        })
                    }
                    Some((set, false, _)) => Some(set),
                    None => None,
                };
                match refresh(current).await? {
                    RefreshOutcome::Reuse(set) => Ok(set),
                    RefreshOutcome::New(set) => {
                        // Committed before anyone uses the new access token.
                        save(&mut conn, account, &set).await.map_err(store_err)?;
                        Ok(set)
                    }
                }
            }
            .await;
            // Closing the connection releases the lock even if the unlock fails.
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(&key)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
            result
        })
    }

    fn mark_reauth<'a>(&'a self, account: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), AuthError>> {
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
}

/// Token facts of every account with a row.
pub async fn info(conn: &mut PgConnection) -> Result<Vec<TokenInfo>, sqlx::Error> {
    type R = (String, bool, bool, Option<DateTime<Utc>>, Option<String>, bool, Option<String>, Option<DateTime<Utc>>);
    let rows: Vec<R> = sqlx::query_as(
        "SELECT account_id, access_token IS NOT NULL, refresh_token IS NOT NULL,
                access_expires_at, refresh_kind, needs_reauth, reauth_reason, last_refresh_at
         FROM ccsync.oauth_tokens ORDER BY account_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(account_id, a, r, exp, kind, reauth, reason, last)| TokenInfo {
            account_id,
            has_access_token: a,
            has_refresh_token: r,
            access_expires_at: exp,
            refresh_kind: kind,
            needs_reauth: reauth,
            reauth_reason: reason,
            last_refresh_at: last,
        })
        .collect())
}
