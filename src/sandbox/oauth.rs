//! `POST /oauth2/default/v1/token`: refresh-token grant with rotating single-use tokens.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::Rng;
use serde_json::json;

use super::respond::json;
use super::state::{AccessToken, Inner, State as SbState};

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Mints a new refresh token for `account` (state lock held by the caller).
pub(crate) fn mint_refresh(st: &mut SbState, account: &str) -> String {
    let tok = format!("rt.{}", random_b64(32));
    st.refresh_tokens.insert(tok.clone(), account.to_string());
    tok
}

/// Mints a JWT-shaped access token for `account` with an `exp` claim (sandbox clock).
pub(crate) fn mint_access(inner: &Inner, st: &mut SbState, account: &str) -> (String, i64) {
    let now = st.now();
    let ttl = chrono::Duration::from_std(inner.access_token_ttl)
        .unwrap_or_else(|_| chrono::Duration::hours(24));
    let exp = now + ttl;
    let header = json!({"kid": "sandbox", "alg": "RS256", "typ": "JWT"});
    let payload = json!({
        "ver": 1,
        "jti": format!("AT.{}", uuid::Uuid::new_v4().simple()),
        "iss": "https://identity.constantcontact.com/oauth2/default",
        "aud": "https://api.cc.email/v3",
        "iat": now.timestamp(),
        "exp": exp.timestamp(),
        "cid": inner.client_id,
        "uid": account,
        "scp": ["contact_data", "offline_access"],
        "auth_time": now.timestamp(),
        "sub": format!("{account}@sandbox"),
        "platform_user_id": account,
    });
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        random_b64(64)
    );
    st.access_tokens.insert(
        token.clone(),
        AccessToken {
            account: account.to_string(),
            expires: exp,
        },
    );
    (token, ttl.num_seconds())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let s = String::from_utf8(decoded).ok()?;
    let (id, secret) = s.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

pub(crate) fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let s = std::str::from_utf8(body).ok()?;
    let uri: axum::http::Uri = format!("/?{s}").parse().ok()?;
    let q = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    Some(q.0.into_iter().collect())
}

pub(crate) async fn token(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inner.lock().token_requests += 1;
    let mut form = parse_form(&body).unwrap_or_default();
    // CC examples put parameters in the query string; accept both.
    if let Some(q) = uri.query().and_then(|q| parse_form(q.as_bytes())) {
        for (k, v) in q {
            form.entry(k).or_insert(v);
        }
    }
    let creds = basic_credentials(&headers).or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    });
    match creds {
        Some((id, secret)) if id == inner.client_id && secret == inner.client_secret => {}
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed.",
            )
        }
    }
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server.",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The request is missing a required parameter: grant_type.",
            )
        }
    }
    let Some(rt) = form.get("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter: refresh_token.",
        );
    };
    let mut st = inner.lock();
    let Some(account) = st.refresh_tokens.remove(rt) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token is invalid or expired.",
        );
    };
    let new_rt = mint_refresh(&mut st, &account);
    let (at, expires_in) = mint_access(&inner, &mut st, &account);
    drop(st);
    json(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "access_token": at,
            "scope": "contact_data offline_access",
            "refresh_token": new_rt,
        }),
    )
}
