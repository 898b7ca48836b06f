//! Interactive authorisation for `ccsync auth login`: the device authorization grant
//! (RFC 8628) for headless servers, and the authorization code grant with PKCE (RFC 7636,
//! S256) and a loopback redirect (RFC 8252 §7.3) for machines with a browser. Both ask for
//! `contact_data offline_access` (without `offline_access` there is no refresh token).
//!
//! Hand-written form POSTs rather than the `oauth2` crate: the refresh exchange already is
//! one (`auth::token_post`), sharing it gives every grant the same 429/`Retry-After`
//! handling and the same secret hygiene (tokens go straight into `SecretString`, error
//! bodies are reduced to their `error` code), and the polling rules below are small enough
//! to unit-test as a pure function.
//!
//! Secrets of these flows (device code, authorization code, PKCE verifier, state) are never
//! logged or shown; the user code and verification URL are meant for the user and are.

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::auth::{
    token_post, token_post_once, token_set_from, OAuthClient, TokenEndpointError, TokenSet,
};

/// The scopes ccsync needs: contacts and lists, and a refresh token.
pub const SCOPE: &str = "contact_data offline_access";
/// The device-code grant type of RFC 8628.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.5: how much a `slow_down` adds to the polling interval.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Default polling interval when the server names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the authorization was denied (access_denied)")]
    Denied,
    #[error("the code expired before it was approved (expired_token): run the login again")]
    Expired,
    #[error("no approval within {0:?}")]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("the authorization server answered {status}: {error}")]
    Endpoint { status: u16, error: String },
    #[error("cannot reach the authorization server")]
    Transport(#[source] reqwest::Error),
    #[error("the authorization server's answer is not the expected JSON")]
    Decode,
    #[error(
        "no refresh token was issued: the application must be allowed the offline_access scope"
    )]
    NoRefreshToken,
    #[error("the redirect did not carry the state this login sent (another request reached the listener?)")]
    StateMismatch,
    #[error("the loopback redirect listener failed")]
    Listener(#[source] std::io::Error),
    #[error("cannot derive the {which} endpoint from token_url {token_url:?}")]
    Url {
        which: &'static str,
        token_url: String,
    },
}

impl From<TokenEndpointError> for FlowError {
    fn from(e: TokenEndpointError) -> Self {
        match e {
            TokenEndpointError::OAuth { status, error, .. } => match error.as_str() {
                "access_denied" => FlowError::Denied,
                "expired_token" => FlowError::Expired,
                _ => FlowError::Endpoint { status, error },
            },
            TokenEndpointError::RateLimited { .. } => FlowError::Endpoint {
                status: 429,
                error: "rate limited".into(),
            },
            TokenEndpointError::Transport(e) => FlowError::Transport(e),
            TokenEndpointError::Decode { .. } => FlowError::Decode,
        }
    }
}

/// `…/v1/token` → `…/v1/<leaf>` (the Okta-style layout Constant Contact uses).
pub fn sibling_endpoint(token_url: &str, leaf: &'static str) -> Result<String, FlowError> {
    let mut url = url::Url::parse(token_url).map_err(|_| FlowError::Url {
        which: leaf,
        token_url: token_url.to_string(),
    })?;
    let path = url.path().to_string();
    let Some(base) = path.strip_suffix("/token") else {
        return Err(FlowError::Url {
            which: leaf,
            token_url: token_url.to_string(),
        });
    };
    url.set_path(&format!("{base}/{leaf}"));
    url.set_query(None);
    Ok(url.to_string())
}

/// What the user must do to approve a device.
#[derive(Debug, Clone)]
pub struct DevicePrompt {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    pub expires_in: Duration,
}

#[derive(serde::Deserialize)]
struct DeviceAuthorization {
    device_code: SecretString,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
}

/// What to do after one unsuccessful poll of the token endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum PollDecision {
    /// Poll again after this interval (the new interval for every later poll).
    Again(Duration),
    /// Give up.
    Stop,
}

/// RFC 8628 §3.5 as a pure function: `authorization_pending` keeps the interval,
/// `slow_down` (and a `429`) adds 5 seconds, everything else ends the flow.
pub fn after_poll_error(interval: Duration, e: &TokenEndpointError) -> PollDecision {
    match e {
        TokenEndpointError::OAuth { error, .. } if error == "authorization_pending" => {
            PollDecision::Again(interval)
        }
        TokenEndpointError::OAuth { error, .. } if error == "slow_down" => {
            PollDecision::Again(interval + SLOW_DOWN_STEP)
        }
        TokenEndpointError::RateLimited { retry_after } => {
            PollDecision::Again((interval + SLOW_DOWN_STEP).max(*retry_after))
        }
        // A transient server error or a lost connection: keep polling at the same pace.
        TokenEndpointError::OAuth { status, .. } if *status >= 500 => PollDecision::Again(interval),
        TokenEndpointError::Transport(_) => PollDecision::Again(interval),
        _ => PollDecision::Stop,
    }
}

/// The device authorization flow: asks for a user code, hands it to `prompt`, then polls
/// the token endpoint until the user approves, denies, or the code expires.
///
/// Both requests identify the application by `client_id` alone, as Constant Contact
/// documents the device flow (a device cannot keep a secret); the client secret, if any, is
/// not sent.
pub async fn device_login(
    http: &reqwest::Client,
    oauth: &OAuthClient,
    device_url: &str,
    prompt: impl FnOnce(&DevicePrompt),
    cancel: &CancellationToken,
) -> Result<TokenSet, FlowError> {
    let oauth = &OAuthClient {
        client_secret: None,
        ..oauth.clone()
    };
    let form = [("scope", SCOPE), ("client_id", oauth.client_id.as_str())];
    let resp = http
        .post(device_url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(FlowError::Transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(FlowError::Transport)?;
    if !status.is_success() {
        let error = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| "(no error code)".into());
        return Err(FlowError::Endpoint {
            status: status.as_u16(),
            error,
        });
    }
    let da: DeviceAuthorization = serde_json::from_slice(&body).map_err(|_| FlowError::Decode)?;
    let expires_in = Duration::from_secs(da.expires_in.unwrap_or(600));
    let mut interval = da
        .interval
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INTERVAL)
        .max(Duration::from_secs(1));
    prompt(&DevicePrompt {
        verification_uri: da.verification_uri,
        verification_uri_complete: da.verification_uri_complete,
        user_code: da.user_code,
        expires_in,
    });
    let deadline = tokio::time::Instant::now() + expires_in;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return Err(FlowError::Cancelled),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(FlowError::Expired);
        }
        let answer = token_post_once(
            http,
            oauth,
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", da.device_code.expose_secret()),
            ],
        )
        .await;
        match answer {
            Ok(tr) => {
                info!("device authorization approved");
                return complete(tr);
            }
            Err(e) => match after_poll_error(interval, &e) {
                PollDecision::Again(next) => {
                    if next != interval {
                        debug!(interval_s = next.as_secs(), "polling more slowly");
                    }
                    interval = next;
                }
                PollDecision::Stop => return Err(e.into()),
            },
        }
    }
}

fn complete(tr: super::auth::TokenResponse) -> Result<TokenSet, FlowError> {
    let set = token_set_from(tr, None);
    if set.refresh_token.is_none() {
        return Err(FlowError::NoRefreshToken);
    }
    Ok(set)
}

/// A PKCE pair: the verifier stays here, the challenge goes in the authorization URL.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    /// 64 random bytes → an 86-character verifier (RFC 7636 allows 43-128).
    pub fn generate() -> Pkce {
        let mut bytes = [0u8; 64];
        rand::rng().fill(&mut bytes[..]);
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = s256_challenge(&verifier);
        Pkce {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }
}

/// `BASE64URL(SHA256(verifier))`.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn random_state() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The authorization URL the user opens.
pub fn authorization_url(
    authorize_url: &str,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> Result<String, FlowError> {
    let mut url = url::Url::parse(authorize_url).map_err(|_| FlowError::Url {
        which: "authorize",
        token_url: authorize_url.to_string(),
    })?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", SCOPE)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url.to_string())
}

/// What the loopback redirect carried. `Debug` hides the code.
#[derive(PartialEq, Eq)]
pub enum Callback {
    Code {
        code: String,
        state: String,
    },
    Error {
        error: String,
    },
    /// Not the callback path (a favicon request, ...).
    Other,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Callback::Code { .. } => f.write_str("Code { code: [REDACTED], state: [REDACTED] }"),
            Callback::Error { error } => f.debug_struct("Error").field("error", error).finish(),
            Callback::Other => f.write_str("Other"),
        }
    }
}

/// Parses the request line of the redirect (`GET /callback?code=..&state=.. HTTP/1.1`).
pub fn parse_callback(request_line: &str, path: &str) -> Callback {
    let mut parts = request_line.split_whitespace();
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return Callback::Other;
    };
    let Ok(url) = url::Url::parse(&format!("http://loopback{target}")) else {
        return Callback::Other;
    };
    if url.path() != path {
        return Callback::Other;
    }
    let get = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    if let Some(error) = get("error") {
        return Callback::Error { error };
    }
    match (get("code"), get("state")) {
        (Some(code), Some(state)) => Callback::Code { code, state },
        _ => Callback::Other,
    }
}

const CALLBACK_PATH: &str = "/callback";

/// The authorization code flow with PKCE: listens on `listen` (loopback), hands the URL to
/// open to `show`, waits for the redirect, and exchanges the code.
pub async fn browser_login(
    http: &reqwest::Client,
    oauth: &OAuthClient,
    authorize_url: &str,
    listen: SocketAddr,
    show: impl FnOnce(&str),
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<TokenSet, FlowError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(FlowError::Listener)?;
    let addr = listener.local_addr().map_err(FlowError::Listener)?;
    let redirect_uri = format!("http://{addr}{CALLBACK_PATH}");
    let pkce = Pkce::generate();
    let state = random_state();
    let url = authorization_url(
        authorize_url,
        &oauth.client_id,
        &redirect_uri,
        &state,
        &pkce.challenge,
    )?;
    show(&url);
    let code = tokio::select! {
        r = accept_callback(&listener, &state) => r?,
        _ = tokio::time::sleep(wait) => return Err(FlowError::Timeout(wait)),
        _ = cancel.cancelled() => return Err(FlowError::Cancelled),
    };
    let tr = token_post(
        http,
        oauth,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", pkce.verifier.expose_secret()),
        ],
    )
    .await?;
    info!("authorization code exchanged");
    complete(tr)
}

async fn accept_callback(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> Result<SecretString, FlowError> {
    loop {
        let (mut sock, _) = listener.accept().await.map_err(FlowError::Listener)?;
        // Read the request head (bounded); only its first line matters.
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let line = head.lines().next().unwrap_or("");
        let (status, message, outcome) = match parse_callback(line, CALLBACK_PATH) {
            Callback::Other => ("404 Not Found", "Not found.", None),
            Callback::Error { error } if error == "access_denied" => (
                "200 OK",
                "Authorization denied. You can close this window.",
                Some(Err(FlowError::Denied)),
            ),
            Callback::Error { error } => (
                "200 OK",
                "Authorization failed. You can close this window.",
                Some(Err(FlowError::Endpoint { status: 400, error })),
            ),
            Callback::Code { state: got, .. } if got != state => (
                "400 Bad Request",
                "State mismatch.",
                Some(Err(FlowError::StateMismatch)),
            ),
            Callback::Code { code, .. } => (
                "200 OK",
                "ccsync is authorised. You can close this window.",
                Some(Ok(SecretString::from(code))),
            ),
        };
        let body = format!("<html><body><p>{message}</p></body></html>");
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth_err(status: u16, error: &str) -> TokenEndpointError {
        TokenEndpointError::OAuth {
            status,
            error: error.into(),
            description: None,
        }
    }

    #[test]
    fn polling_follows_rfc_8628() {
        let i = Duration::from_secs(5);
        assert_eq!(
            after_poll_error(i, &oauth_err(400, "authorization_pending")),
            PollDecision::Again(i)
        );
        assert_eq!(
            after_poll_error(i, &oauth_err(400, "slow_down")),
            PollDecision::Again(Duration::from_secs(10))
        );
        assert_eq!(
            after_poll_error(
                i,
                &TokenEndpointError::RateLimited {
                    retry_after: Duration::from_secs(30)
                }
            ),
            PollDecision::Again(Duration::from_secs(30))
        );
        assert_eq!(
            after_poll_error(i, &oauth_err(503, "")),
            PollDecision::Again(i)
        );
        for stop in [
            "access_denied",
            "expired_token",
            "invalid_grant",
            "invalid_client",
        ] {
            assert_eq!(
                after_poll_error(i, &oauth_err(400, stop)),
                PollDecision::Stop,
                "{stop}"
            );
        }
    }

    #[test]
    fn terminal_poll_errors_map_to_clear_flow_errors() {
        assert!(matches!(
            FlowError::from(oauth_err(400, "access_denied")),
            FlowError::Denied
        ));
        assert!(matches!(
            FlowError::from(oauth_err(400, "expired_token")),
            FlowError::Expired
        ));
        assert!(matches!(
            FlowError::from(oauth_err(401, "invalid_client")),
            FlowError::Endpoint { status: 401, .. }
        ));
    }

    #[test]
    fn sibling_endpoints_follow_the_token_url() {
        let t = "https://authz.constantcontact.com/oauth2/default/v1/token";
        assert_eq!(
            sibling_endpoint(t, "device/authorize").unwrap(),
            "https://authz.constantcontact.com/oauth2/default/v1/device/authorize"
        );
        assert_eq!(
            sibling_endpoint(t, "authorize").unwrap(),
            "https://authz.constantcontact.com/oauth2/default/v1/authorize"
        );
        assert!(sibling_endpoint("https://x/oauth/tok", "authorize").is_err());
    }

    #[test]
    fn pkce_pairs_are_fresh_and_match_s256() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        assert_ne!(a.verifier.expose_secret(), b.verifier.expose_secret());
        let len = a.verifier.expose_secret().len();
        assert!((43..=128).contains(&len), "{len}");
        assert_eq!(a.challenge, s256_challenge(a.verifier.expose_secret()));
        // RFC 7636 appendix B.
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_authorization_url_asks_for_offline_access_with_s256() {
        let u = authorization_url(
            "http://127.0.0.1:1/oauth2/default/v1/authorize",
            "cid",
            "http://127.0.0.1:2/callback",
            "st",
            "ch",
        )
        .unwrap();
        let parsed = url::Url::parse(&u).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "contact_data offline_access");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:2/callback");
    }

    #[test]
    fn a_callback_never_debug_prints_its_code() {
        let c = parse_callback(
            "GET /callback?code=s3cr3t-code&state=s3cr3t-state HTTP/1.1",
            "/callback",
        );
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
    }

    #[test]
    fn callbacks_are_parsed_from_the_request_line() {
        assert_eq!(
            parse_callback("GET /callback?code=abc&state=xyz HTTP/1.1", "/callback"),
            Callback::Code {
                code: "abc".into(),
                state: "xyz".into()
            }
        );
        assert_eq!(
            parse_callback(
                "GET /callback?error=access_denied&state=x HTTP/1.1",
                "/callback"
            ),
            Callback::Error {
                error: "access_denied".into()
            }
        );
        assert_eq!(
            parse_callback("GET /favicon.ico HTTP/1.1", "/callback"),
            Callback::Other
        );
        assert_eq!(
            parse_callback("POST /callback?code=a&state=b HTTP/1.1", "/callback"),
            Callback::Other
        );
        assert_eq!(parse_callback("", "/callback"), Callback::Other);
    }
}
