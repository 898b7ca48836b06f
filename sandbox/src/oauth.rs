//! The sandbox's authorization server (Okta-style paths under `/oauth2/default/v1/`).
//!
//! - `POST /token`: grants `refresh_token`, `authorization_code` (with PKCE S256) and
//!   `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628: `authorization_pending`,
//!   `slow_down`, `expired_token`, `access_denied`). Client authentication by HTTP Basic,
//!   by `client_id` + `client_secret` in the form, or as a public client (`client_id` only).
//!   Limited to about 1 request/s (`429` with `Retry-After`).
//! - `POST /device/authorize`: starts a device authorization (`device_code`, `user_code`,
//!   `verification_uri`, `interval`, `expires_in`).
//! - `GET /authorize`: authorization code request; redirects at once to the loopback
//!   `redirect_uri` when auto-approval is on, else waits for the control API.
//! - `POST /revoke`: RFC 7009 revocation of an access or refresh token.
//! - `GET|POST /activate`: the `verification_uri` page where a user approves or denies a
//!   device by its user code (also possible through [`OAuthCtl`] and the control routes).
//!
//! Refresh tokens are rotating (single use, the default: what the API notes document),
//! rotating with the previous token kept valid until the new one is first used, or
//! long-lived. Tests steer all of this through [`OAuthCtl`] or the control routes under
//! `/__control/oauth/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

use super::oauth_state::{
    CodeRec, DeviceRec, DeviceStatus, PendingAuthorization, RefreshTokenPolicy, TokenRateLimit,
};
use super::respond::json;
use super::state::{AccessToken, Inner, State as SbState};

/// The device-code grant type of RFC 8628.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// How long an authorization code lives (the API notes: 5 minutes, single use).
const CODE_TTL_SECS: i64 = 300;
/// How long a device code lives.
const DEVICE_TTL_SECS: i64 = 600;

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `XXXX-XXXX` from an alphabet without look-alike characters.
fn user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

/// Mints a new refresh token for `account` (state lock held by the caller).
pub(crate) fn mint_refresh(st: &mut SbState, account: &str) -> String {
    let tok = format!("rt.{}", random_b64(32));
    st.refresh_tokens.insert(tok.clone(), account.to_string());
    st.oauth.remember(&tok);
    tok
}

/// Mints a JWT-shaped access token for `account` with an `exp` claim (sandbox clock).
pub(crate) fn mint_access(inner: &Inner, st: &mut SbState, account: &str) -> (String, i64) {
    let now = st.now();
    let ttl = chrono::Duration::from_std(st.oauth.access_ttl.unwrap_or(inner.access_token_ttl))
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
    st.oauth.remember(&token);
    (token, ttl.num_seconds())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn bad_grant(error: &str, description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, error, description)
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

/// How the client authenticated.
enum Client {
    Confidential,
    Public,
}

/// Form body merged with the query string (CC examples put parameters in the query).
fn form_of(uri: &axum::http::Uri, body: &[u8]) -> HashMap<String, String> {
    let mut form = parse_form(body).unwrap_or_default();
    if let Some(q) = uri.query().and_then(|q| parse_form(q.as_bytes())) {
        for (k, v) in q {
            form.entry(k).or_insert(v);
        }
    }
    form
}

/// Client authentication; `None` means `invalid_client`.
fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Client> {
    let creds = basic_credentials(headers).or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    });
    if let Some((id, secret)) = creds {
        return (id == inner.client_id && secret == inner.client_secret)
            .then_some(Client::Confidential);
    }
    (form.get("client_id") == Some(&inner.client_id)).then_some(Client::Public)
}

fn invalid_client() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Client authentication failed.",
    )
}

fn has_offline(scope: &str) -> bool {
    scope.split_whitespace().any(|s| s == "offline_access")
}

/// The token response for `account`; a refresh token only with `offline_access`.
fn issue(
    inner: &Inner,
    st: &mut SbState,
    account: &str,
    scope: &str,
    refresh: Option<String>,
) -> Response {
    let refresh = refresh.or_else(|| has_offline(scope).then(|| mint_refresh(st, account)));
    let (at, expires_in) = mint_access(inner, st, account);
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "access_token": at,
        "scope": scope,
    });
    if let Some(rt) = refresh {
        body["refresh_token"] = json!(rt);
    }
    json(StatusCode::OK, &body)
}

pub(crate) async fn token(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (admitted, latency) = {
        let mut st = inner.lock();
        st.token_requests += 1;
        (st.oauth.admit(Instant::now()), st.oauth.token_latency)
    };
    if !admitted {
        let mut resp = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "API call exceeded rate limit due to too many requests.",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let form = form_of(&uri, &body);
    let Some(client) = authenticate(&inner, &headers, &form) else {
        return invalid_client();
    };
    let grant = match form.get("grant_type").map(String::as_str) {
        Some(g) => g.to_string(),
        None => {
            return bad_grant(
                "invalid_request",
                "The request is missing a required parameter: grant_type.",
            )
        }
    };
    *inner.lock().oauth.grants.entry(grant.clone()).or_default() += 1;
    match grant.as_str() {
        "refresh_token" => refresh_grant(&inner, &form),
        "authorization_code" => code_grant(&inner, &form, client),
        DEVICE_GRANT => device_grant(&inner, &form),
        _ => bad_grant(
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        ),
    }
}

fn refresh_grant(inner: &Inner, form: &HashMap<String, String>) -> Response {
    let Some(rt) = form.get("refresh_token") else {
        return bad_grant(
            "invalid_request",
            "The request is missing a required parameter: refresh_token.",
        );
    };
    let mut st = inner.lock();
    st.oauth.remember(rt);
    let Some(account) = st.refresh_tokens.get(rt).cloned() else {
        return bad_grant("invalid_grant", "The refresh token is invalid or expired.");
    };
    let scope = "contact_data offline_access";
    match st.oauth.policy {
        RefreshTokenPolicy::LongLived => issue(inner, &mut st, &account, scope, Some(rt.clone())),
        RefreshTokenPolicy::Rotating => {
            st.refresh_tokens.remove(rt);
            let new_rt = mint_refresh(&mut st, &account);
            issue(inner, &mut st, &account, scope, Some(new_rt))
        }
        RefreshTokenPolicy::RotatingKeepPrevious => {
            // First use of `rt`: its predecessor is retired now.
            if let Some(prev) = st.oauth.predecessor.remove(rt) {
                st.oauth.successor.remove(&prev);
                st.refresh_tokens.remove(&prev);
            }
            // A replay of `rt`: the token issued for it was never used, so retire that one.
            if let Some(unused) = st.oauth.successor.remove(rt) {
                st.oauth.predecessor.remove(&unused);
                st.refresh_tokens.remove(&unused);
            }
            let new_rt = mint_refresh(&mut st, &account);
            st.oauth.predecessor.insert(new_rt.clone(), rt.clone());
            st.oauth.successor.insert(rt.clone(), new_rt.clone());
            issue(inner, &mut st, &account, scope, Some(new_rt))
        }
    }
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn code_grant(inner: &Inner, form: &HashMap<String, String>, client: Client) -> Response {
    let (Some(code), Some(redirect_uri)) = (form.get("code"), form.get("redirect_uri")) else {
        return bad_grant(
            "invalid_request",
            "The request is missing a required parameter: code or redirect_uri.",
        );
    };
    let mut st = inner.lock();
    st.oauth.remember(code);
    if let Some(v) = form.get("code_verifier") {
        st.oauth.remember(v);
    }
    // Single use: the code is gone whatever happens next.
    let Some(rec) = st.oauth.codes.remove(code) else {
        return bad_grant(
            "invalid_grant",
            "The authorization code is invalid or has expired.",
        );
    };
    if rec.expires_at <= st.now() {
        return bad_grant(
            "invalid_grant",
            "The authorization code is invalid or has expired.",
        );
    }
    if rec.redirect_uri != *redirect_uri {
        return bad_grant(
            "invalid_grant",
            "The 'redirect_uri' does not match the redirection URI used in the authorization request.",
        );
    }
    match (&rec.challenge, form.get("code_verifier")) {
        (Some(ch), Some(v)) if s256(v) == *ch => {}
        (Some(_), _) => {
            return bad_grant("invalid_grant", "PKCE verification failed.");
        }
        (None, _) if matches!(client, Client::Public) => {
            return bad_grant(
                "invalid_request",
                "PKCE code verifier is required when the client authentication method is 'none'.",
            );
        }
        (None, _) => {}
    }
    issue(inner, &mut st, &rec.account, &rec.scope, None)
}

fn device_grant(inner: &Inner, form: &HashMap<String, String>) -> Response {
    let Some(dc) = form.get("device_code") else {
        return bad_grant(
            "invalid_request",
            "The request is missing a required parameter: device_code.",
        );
    };
    let mut st = inner.lock();
    st.oauth.remember(dc);
    let now = st.now();
    let Some(rec) = st.oauth.devices.get_mut(dc) else {
        return bad_grant("invalid_grant", "The device code is invalid.");
    };
    if rec.expires_at <= now {
        st.oauth.devices.remove(dc);
        return bad_grant("expired_token", "The device code has expired.");
    }
    let at = Instant::now();
    let too_fast = rec
        .last_poll
        .is_some_and(|last| at.saturating_duration_since(last) < rec.interval);
    rec.last_poll = Some(at);
    match rec.status.clone() {
        DeviceStatus::Denied => {
            st.oauth.devices.remove(dc);
            bad_grant("access_denied", "The resource owner denied the request.")
        }
        DeviceStatus::Pending if too_fast => {
            // RFC 8628 §3.5: the client must add 5 seconds to its interval.
            rec.interval += Duration::from_secs(5);
            bad_grant("slow_down", "The client is polling too quickly.")
        }
        DeviceStatus::Pending => bad_grant(
            "authorization_pending",
            "The device authorization is pending. Please try again later.",
        ),
        DeviceStatus::Approved(account) => {
            let scope = rec.scope.clone();
            st.oauth.devices.remove(dc);
            issue(inner, &mut st, &account, &scope, None)
        }
    }
}

/// `POST /oauth2/default/v1/device/authorize` (`client_id`, `scope`).
async fn device_authorize(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_of(&uri, &body);
    if authenticate(&inner, &headers, &form).is_none() {
        return invalid_client();
    }
    let scope = form
        .get("scope")
        .cloned()
        .unwrap_or_else(|| "contact_data".into());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let device_code = random_b64(32);
    let code = user_code();
    let mut st = inner.lock();
    st.oauth.remember(&device_code);
    let expires_at = st.now() + chrono::Duration::seconds(DEVICE_TTL_SECS);
    let interval = st.oauth.device_interval;
    let status = match &st.oauth.auto_approve {
        Some(a) => DeviceStatus::Approved(a.clone()),
        None => DeviceStatus::Pending,
    };
    st.oauth.devices.insert(
        device_code.clone(),
        DeviceRec {
            user_code: code.clone(),
            scope,
            expires_at,
            interval,
            last_poll: None,
            status,
        },
    );
    drop(st);
    let verify = format!("http://{host}/activate");
    json(
        StatusCode::OK,
        &json!({
            "device_code": device_code,
            "user_code": code,
            "verification_uri": verify,
            "verification_uri_complete": format!("{verify}?user_code={code}"),
            "expires_in": DEVICE_TTL_SECS,
            "interval": interval.as_secs().max(1),
        }),
    )
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

fn is_loopback_redirect(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    let loopback = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    u.scheme() == "http" && loopback
}

/// The redirect back to the client with a fresh authorization code.
fn approve(st: &mut SbState, p: PendingAuthorization, account: &str) -> String {
    let code = random_b64(24);
    st.oauth.remember(&code);
    let expires_at = st.now() + chrono::Duration::seconds(CODE_TTL_SECS);
    st.oauth.codes.insert(
        code.clone(),
        CodeRec {
            account: account.to_string(),
            redirect_uri: p.redirect_uri.clone(),
            challenge: p.challenge,
            scope: p.scope,
            expires_at,
        },
    );
    let mut url = match url::Url::parse(&p.redirect_uri) {
        Ok(u) => u,
        Err(_) => return p.redirect_uri,
    };
    url.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = &p.state {
        url.query_pairs_mut().append_pair("state", s);
    }
    url.to_string()
}

/// `GET /oauth2/default/v1/authorize`.
async fn authorize(State(inner): State<Arc<Inner>>, q: Query<AuthorizeQuery>) -> Response {
    let q = q.0;
    if q.client_id.as_deref() != Some(inner.client_id.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Unknown client_id.",
        );
    }
    let Some(redirect_uri) = q.redirect_uri.filter(|r| is_loopback_redirect(r)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The 'redirect_uri' must be a loopback http URI in the sandbox.",
        );
    };
    if q.response_type.as_deref() != Some("code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_response_type",
            "Only response_type=code is supported.",
        );
    }
    if q.code_challenge.is_some() && q.code_challenge_method.as_deref() != Some("S256") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code_challenge_method must be S256.",
        );
    }
    let pending = PendingAuthorization {
        redirect_uri,
        state: q.state,
        challenge: q.code_challenge,
        scope: q.scope.unwrap_or_else(|| "contact_data".into()),
    };
    let mut st = inner.lock();
    if let Some(account) = st.oauth.auto_approve.clone() {
        let location = approve(&mut st, pending, &account);
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    let id = random_b64(12);
    st.oauth.pending_authorizations.insert(id.clone(), pending);
    let page = format!(
        "<html><body><p>Sandbox authorization request {id}.</p>\
         <p>Approve it with POST /__control/oauth/authorize/approve \
         {{\"request\":\"{id}\",\"account\":\"default\"}}.</p></body></html>"
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// `POST /oauth2/default/v1/revoke` (RFC 7009: 200 whether or not the token was known).
async fn revoke(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_of(&uri, &body);
    if authenticate(&inner, &headers, &form).is_none() {
        return invalid_client();
    }
    if let Some(t) = form.get("token") {
        let mut st = inner.lock();
        st.oauth.remember(t);
        st.refresh_tokens.remove(t);
        st.access_tokens.remove(t);
    }
    StatusCode::OK.into_response()
}

async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.ip().is_loopback() {
        next.run(req).await
    } else {
        StatusCode::FORBIDDEN.into_response()
    }
}

#[derive(Deserialize)]
struct DeviceDecision {
    user_code: String,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    deny: bool,
}

async fn ctl_device(
    State(inner): State<Arc<Inner>>,
    body: Result<Json<DeviceDecision>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(d)) = body else {
        return oauth_error(StatusCode::BAD_REQUEST, "bad_request", "expected JSON");
    };
    let ctl = OAuthCtl {
        inner: Arc::clone(&inner),
    };
    let done = if d.deny {
        ctl.deny_device(&d.user_code)
    } else {
        ctl.approve_device(&d.user_code, d.account.as_deref().unwrap_or("default"))
    };
    if done {
        json(StatusCode::OK, &json!({"ok": true}))
    } else {
        oauth_error(StatusCode::NOT_FOUND, "not_found", "no pending device code")
    }
}

#[derive(Deserialize)]
struct AuthorizeDecision {
    request: String,
    #[serde(default)]
    account: Option<String>,
}

async fn ctl_authorize(
    State(inner): State<Arc<Inner>>,
    body: Result<Json<AuthorizeDecision>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(d)) = body else {
        return oauth_error(StatusCode::BAD_REQUEST, "bad_request", "expected JSON");
    };
    let ctl = OAuthCtl {
        inner: Arc::clone(&inner),
    };
    match ctl.approve_authorization(&d.request, d.account.as_deref().unwrap_or("default")) {
        Some(redirect) => json(StatusCode::OK, &json!({"redirect": redirect})),
        None => oauth_error(StatusCode::NOT_FOUND, "not_found", "no such request"),
    }
}

#[derive(Deserialize)]
struct RevokeAccount {
    account: String,
}

async fn ctl_revoke(
    State(inner): State<Arc<Inner>>,
    body: Result<Json<RevokeAccount>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(r)) = body else {
        return oauth_error(StatusCode::BAD_REQUEST, "bad_request", "expected JSON");
    };
    OAuthCtl {
        inner: Arc::clone(&inner),
    }
    .revoke_account(&r.account);
    json(StatusCode::OK, &json!({"ok": true}))
}

#[derive(Deserialize)]
struct ActivateQuery {
    #[serde(default)]
    user_code: Option<String>,
}

fn html(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<html><body>{body}</body></html>"),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect()
}

/// `GET /activate`: the page a user opens to approve a device (the `verification_uri`).
async fn activate_page(q: Query<ActivateQuery>) -> Response {
    let code = escape(q.0.user_code.as_deref().unwrap_or(""));
    html(
        StatusCode::OK,
        &format!(
            "<h1>Sandbox device activation</h1><form method=\"post\" action=\"/activate\">\
             <label>User code <input name=\"user_code\" value=\"{code}\"></label> \
             <label>Account <input name=\"account\" value=\"default\"></label> \
             <button name=\"decision\" value=\"approve\">Approve</button> \
             <button name=\"decision\" value=\"deny\">Deny</button></form>"
        ),
    )
}

/// `POST /activate`: the user's decision.
async fn activate_submit(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let form = parse_form(&body).unwrap_or_default();
    let code = form.get("user_code").map(|c| c.trim().to_uppercase());
    let account = form
        .get("account")
        .map(|a| escape(a))
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "default".into());
    let ctl = OAuthCtl {
        inner: Arc::clone(&inner),
    };
    let Some(code) = code else {
        return html(StatusCode::BAD_REQUEST, "<p>No user code.</p>");
    };
    let done = match form.get("decision").map(String::as_str) {
        Some("deny") => ctl.deny_device(&code),
        _ => ctl.approve_device(&code, &account),
    };
    if done {
        html(
            StatusCode::OK,
            "<p>Done. You can return to your device.</p>",
        )
    } else {
        html(
            StatusCode::NOT_FOUND,
            "<p>No pending device with that code.</p>",
        )
    }
}

/// The authorization server's routes (the token route is registered by the router).
///
/// Control routes (loopback only): `POST /__control/oauth/device` `{"user_code",
/// "account"?, "deny"?}`, `POST /__control/oauth/authorize/approve` `{"request",
/// "account"?}` → `{"redirect"}`, `POST /__control/oauth/revoke` `{"account"}`.
pub(crate) fn routes() -> Router<Arc<Inner>> {
    let control = Router::new()
        .route("/__control/oauth/device", post(ctl_device))
        .route("/__control/oauth/authorize/approve", post(ctl_authorize))
        .route("/__control/oauth/revoke", post(ctl_revoke))
        .route_layer(axum::middleware::from_fn(loopback_only));
    Router::new()
        .route(
            "/oauth2/default/v1/device/authorize",
            post(device_authorize),
        )
        .route("/oauth2/default/v1/authorize", get(authorize))
        .route("/oauth2/default/v1/revoke", post(revoke))
        .route("/activate", get(activate_page).post(activate_submit))
        .merge(control)
}

/// Test control of the authorization server.
#[derive(Clone)]
pub struct OAuthCtl {
    inner: Arc<Inner>,
}

impl OAuthCtl {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        OAuthCtl { inner }
    }

    pub fn set_refresh_policy(&self, policy: RefreshTokenPolicy) {
        self.inner.lock().oauth.policy = policy;
    }

    /// `None` turns the token-endpoint limit off.
    pub fn set_token_rate_limit(&self, limit: Option<TokenRateLimit>) {
        let mut st = self.inner.lock();
        st.oauth.rate = limit;
        st.oauth.tat = None;
    }

    /// Token requests answered `429` by the token-endpoint limit.
    pub fn token_rate_limited(&self) -> u64 {
        self.inner.lock().oauth.rate_limited
    }

    /// Lifetime of access tokens minted from now on (overrides `SandboxConfig`).
    pub fn set_access_ttl(&self, ttl: Duration) {
        self.inner.lock().oauth.access_ttl = Some(ttl);
    }

    /// Delay every token answer (to make refreshes overlap in tests).
    pub fn set_token_latency(&self, latency: Duration) {
        self.inner.lock().oauth.token_latency = latency;
    }

    /// The polling interval handed out with new device codes.
    pub fn set_device_interval(&self, interval: Duration) {
        self.inner.lock().oauth.device_interval = interval;
    }

    /// Approve every new device code and authorization request for `account` at once.
    pub fn set_auto_approve(&self, account: Option<&str>) {
        self.inner.lock().oauth.auto_approve = account.map(str::to_string);
    }

    /// User codes of device authorizations still waiting for a decision.
    pub fn pending_user_codes(&self) -> Vec<String> {
        let st = self.inner.lock();
        st.oauth
            .devices
            .values()
            .filter(|d| d.status == DeviceStatus::Pending)
            .map(|d| d.user_code.clone())
            .collect()
    }

    fn decide_device(&self, user_code: &str, status: DeviceStatus) -> bool {
        let mut st = self.inner.lock();
        match st
            .oauth
            .devices
            .values_mut()
            .find(|d| d.user_code == user_code && d.status == DeviceStatus::Pending)
        {
            Some(d) => {
                d.status = status;
                true
            }
            None => false,
        }
    }

    /// The user signs in as `account` and approves the device (`false`: no such code).
    pub fn approve_device(&self, user_code: &str, account: &str) -> bool {
        self.inner.lock().account_mut(account);
        self.decide_device(user_code, DeviceStatus::Approved(account.to_string()))
    }

    /// The user denies the device.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.decide_device(user_code, DeviceStatus::Denied)
    }

    /// Lets every device code expire (sandbox clock is not moved).
    pub fn expire_device_codes(&self) {
        let mut st = self.inner.lock();
        let past = st.now() - chrono::Duration::seconds(1);
        for d in st.oauth.devices.values_mut() {
            d.expires_at = past;
        }
    }

    /// Approves a waiting authorization request; returns the redirect URL to follow.
    pub fn approve_authorization(&self, request: &str, account: &str) -> Option<String> {
        let mut st = self.inner.lock();
        st.account_mut(account);
        let p = st.oauth.pending_authorizations.remove(request)?;
        Some(approve(&mut st, p, account))
    }

    /// Ids of authorization requests waiting for a decision.
    pub fn pending_authorizations(&self) -> Vec<String> {
        self.inner
            .lock()
            .oauth
            .pending_authorizations
            .keys()
            .cloned()
            .collect()
    }

    /// Revokes every refresh and access token of `account` (the user disconnected the app).
    pub fn revoke_account(&self, account: &str) {
        let mut st = self.inner.lock();
        st.refresh_tokens.retain(|_, a| a != account);
        st.access_tokens.retain(|_, t| t.account != account);
    }

    /// Revokes only the access tokens of `account` (the next API call answers 401).
    pub fn revoke_access_tokens(&self, account: &str) {
        self.inner
            .lock()
            .access_tokens
            .retain(|_, t| t.account != account);
    }

    /// Whether `refresh_token` would be accepted now.
    pub fn refresh_token_valid(&self, refresh_token: &str) -> bool {
        self.inner.lock().refresh_tokens.contains_key(refresh_token)
    }

    /// Token requests by grant type.
    pub fn grants(&self, grant_type: &str) -> u64 {
        self.inner
            .lock()
            .oauth
            .grants
            .get(grant_type)
            .copied()
            .unwrap_or(0)
    }

    /// Every secret the server issued or received (tokens, codes, verifiers, device codes)
    /// plus the client secret: what a leak test searches logs for.
    pub fn secrets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().oauth.secrets.iter().cloned().collect();
        v.push(self.inner.client_secret.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth_state::OAuthState;

    #[test]
    fn gcra_admits_the_burst_then_one_per_period() {
        let mut s = OAuthState::new(
            RefreshTokenPolicy::Rotating,
            Some(TokenRateLimit {
                per_second: 1.0,
                burst: 2,
            }),
        );
        let t0 = Instant::now();
        assert!(s.admit(t0));
        assert!(s.admit(t0));
        assert!(!s.admit(t0));
        assert!(!s.admit(t0 + Duration::from_millis(900)));
        assert!(s.admit(t0 + Duration::from_millis(1000)));
        assert!(!s.admit(t0 + Duration::from_millis(1500)));
        assert_eq!(s.rate_limited, 3);
        s.rate = None;
        assert!(s.admit(t0));
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn only_loopback_redirects_are_accepted() {
        assert!(is_loopback_redirect("http://127.0.0.1:4242/callback"));
        assert!(is_loopback_redirect("http://localhost:1/cb"));
        assert!(!is_loopback_redirect("https://evil.example/cb"));
        assert!(!is_loopback_redirect("http://10.0.0.1/cb"));
        assert!(!is_loopback_redirect("not a url"));
    }

    #[test]
    fn user_codes_have_the_xxxx_xxxx_shape() {
        let c = user_code();
        assert_eq!(c.len(), 9);
        assert_eq!(&c[4..5], "-");
    }
}
