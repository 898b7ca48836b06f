//! The local Constant Contact V3 API fake ("the sandbox").
//!
//! An independent fake: it shares no code with ccsync's API client (`ctct`), store or
//! sync jobs, so that a misunderstanding of the API cannot pass both sides. It is its own
//! crate and does not depend on `ccsync`, so the compiler enforces that.
//! Response bodies follow the official Swagger 2.0 definitions (`Contacts`,
//! `ContactResource`, `ContactListArray`, `ActivityImport`, `Activity`, `Activities`,
//! `ActivityListsMembership`); error bodies are `[{error_key, error_message}]` arrays,
//! except auth and rate-limit errors (a single object).
//!
//! HTTP surface:
//! - `POST /oauth2/default/v1/token`: refresh-token grant, HTTP Basic client auth (or
//!   `client_id`/`client_secret` form fields), rotating single-use refresh tokens,
//!   JWT-shaped access tokens with an `exp` claim (sandbox clock).
//! - `GET /v3/contacts` (filters, include, include_count, cursor paging ordered by
//!   contact_id), `GET /v3/contacts/{id}`, `PUT /v3/contacts/{id}` (see `contact_put.rs`),
//!   `GET /v3/contact_lists`.
//! - `POST /v3/activities/contacts_json_import`, `POST /v3/activities/add_list_memberships`,
//!   `POST /v3/activities/remove_list_memberships`, `POST /v3/activities/contact_delete`,
//!   `GET /v3/activities/{id}`, `GET /v3/activities`.
//! - The control API under `/__control/` (loopback only, no auth; see `control_api.rs`) and
//!   `GET /healthz`.
//!
//! Every `/v3/*` request goes through: bearer auth (401) → rate limit per API key
//! (GCRA, burst 1, 10% jitter tolerance; 429 `throttled`) → daily quota (429
//! `quota_exceeded`, resets at 00:00 UTC sandbox time) → injected faults → request
//! triggers ([`Trigger`]) → handler, and is logged in [`Sandbox::requests`].
//!
//! Choices where the real API is unconfirmed:
//! - `updated_after`/`updated_before`/`created_*`/`optout_*` are strict bounds.
//! - `status`: no value = not deleted; `all` = everything; `deleted`; `active` = not
//!   deleted and not unsubscribed; `unsubscribed`/`not_set`/`pending_confirmation`/
//!   `temp_hold` = that email permission among contacts that are not deleted.
//! - Unsubscribing (and resubscribing) does not bump the contact's `updated_at`, only
//!   `email_address.updated_at`; list joins/leaves bump nothing (unless
//!   [`AccountCtl::set_membership_moves_updated_at`]); delete/restore bump it.
//! - PUT applies any permission sent, re-subscriptions included (the worst case); every
//!   transition out of `unsubscribed` and every revival, from any path, is logged
//!   ([`AccountCtl::resubscriptions`], [`AccountCtl::revivals`]).
//! - Request bodies are not checked against the spec's `maxItems` (several are wrongly
//!   0); the limits come from the descriptions (500 contact ids, 50 list ids).
//! - A cursor carries the filters and the limit; other parameters next to `cursor` are
//!   ignored. Last page: no `_links`.
//! - Imports: new contacts get `implicit`/`Account`; existing ones keep their permission;
//!   only present, non-empty properties change; `updated_at` is bumped; unsubscribed
//!   contacts are not added to lists (`cannot_add_to_list_count`); a deleted contact is
//!   revived (old memberships stay gone); emails over 80 chars or malformed are
//!   correctable row errors; bodies over 4,000,000 bytes keep only the items complete
//!   within the first 4,000,000 bytes.
//! - add_list_memberships skips unsubscribed contacts and revives deleted ones; neither
//!   add nor remove bumps `updated_at` (except a revival).

// Imports point one way (no cycles): `control_write` → `control_api` → `handle` (the
// Rust handle) → `oauth`, `triggers`, `import_engine`, `generator`; the HTTP handlers
// (`pipeline`, `contacts`, `contact_put`, `lists`, `bulk_delete` → `activities`, `oauth`)
// → `triggers` → `import_engine` → `subscriber`, `faults`, `limits` → `state` →
// `oauth_state`, `types` (leaves); `cursor`, `respond` and `fault_answers` are leaf HTTP helpers.
mod activities;
mod bulk_delete;
mod contact_put;
mod contacts;
mod control_api;
mod control_write;
mod cursor;
mod custom_fields;
mod export_render;
mod exports;
mod fault_answers;
mod faults;
mod generator;
mod handle;
mod import_engine;
mod limits;
mod lists;
mod oauth;
mod oauth_state;
mod pipeline;
mod respond;
mod state;
mod subscriber;
mod triggers;
mod types;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use handle::AccountCtl;
pub use oauth::OAuthCtl;
pub use oauth_state::{RefreshTokenPolicy, TokenRateLimit};
pub use types::{CoreField, Fault, RequestRecord, SubscriberAction, Trigger, TriggerId};

use state::{Inner, Limits, State};

/// Sandbox settings.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Generated contacts for the first account ("default").
    pub contacts: usize,
    /// Generated lists for the first account.
    pub lists: usize,
    /// Deterministic generator seed.
    pub seed: u64,
    pub client_id: String,
    pub client_secret: String,
    pub access_token_ttl: Duration,
    /// Per API key (client_id); `None` = unlimited.
    pub requests_per_second: Option<f64>,
    /// Per API key; resets at 00:00 UTC (sandbox clock). `None` = unlimited.
    pub daily_quota: Option<u64>,
    /// Time an import spends in `initialized`/`processing` before it completes.
    pub import_processing: Duration,
    /// Rotating (single use, the default), rotating keeping the previous token until the
    /// new one is first used, or long-lived refresh tokens.
    pub refresh_token_policy: RefreshTokenPolicy,
    /// Token-endpoint limit (about 1/s); `None` = unlimited.
    pub token_rate_limit: Option<TokenRateLimit>,
    /// Fixed latency of every admitted `/v3` request (the rate limit counts it on arrival).
    pub latency: Duration,
    /// Up to this much more, drawn uniformly per request.
    pub jitter: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            contacts: 1_000,
            lists: 8,
            seed: 42,
            client_id: "ccsync-sandbox".into(),
            client_secret: "sandbox-secret".into(),
            access_token_ttl: Duration::from_secs(24 * 3600),
            requests_per_second: None,
            daily_quota: None,
            import_processing: Duration::from_millis(200),
            refresh_token_policy: RefreshTokenPolicy::default(),
            token_rate_limit: Some(TokenRateLimit::default()),
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

/// A running sandbox server. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    finished: CancellationToken,
}

impl Sandbox {
    /// Binds `127.0.0.1:0` and serves in a background task.
    pub async fn start(cfg: SandboxConfig) -> anyhow::Result<Sandbox> {
        Self::start_on(cfg, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await
    }

    pub async fn start_on(cfg: SandboxConfig, listen: SocketAddr) -> anyhow::Result<Sandbox> {
        let inner = tokio::task::spawn_blocking(move || build_inner(cfg)).await?;
        let inner = Arc::new(inner);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let app = router(Arc::clone(&inner));
        let shutdown = CancellationToken::new();
        let finished = CancellationToken::new();
        let (sd, fin) = (shutdown.clone(), finished.clone());
        tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(sd.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "sandbox server ended with an error");
            }
            fin.cancel();
        });
        Ok(Sandbox {
            inner,
            addr,
            shutdown,
            finished,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v3`
    pub fn api_base(&self) -> String {
        format!("http://{}/v3", self.addr)
    }

    /// `http://127.0.0.1:PORT/oauth2/default/v1/token`
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/default/v1/token", self.addr)
    }

    /// Stops serving (in-flight requests finish).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves when the server task has ended.
    pub async fn stopped(&self) {
        self.finished.cancelled().await;
    }

    /// The account `name` (created empty if missing).
    pub fn account(&self, name: &str) -> AccountCtl {
        self.inner.lock().account_mut(name);
        AccountCtl::new(Arc::clone(&self.inner), name)
    }

    pub fn default_account(&self) -> AccountCtl {
        self.account("default")
    }

    /// Control of the authorization server (device approvals, revocation, policies).
    pub fn oauth(&self) -> OAuthCtl {
        OAuthCtl::new(Arc::clone(&self.inner))
    }

    /// `http://127.0.0.1:PORT/oauth2/default/v1/device/authorize`
    pub fn device_authorization_url(&self) -> String {
        format!("http://{}/oauth2/default/v1/device/authorize", self.addr)
    }

    /// `http://127.0.0.1:PORT/oauth2/default/v1/authorize`
    pub fn authorize_url(&self) -> String {
        format!("http://{}/oauth2/default/v1/authorize", self.addr)
    }

    pub fn set_rate_limit(&self, per_second: Option<f64>) {
        *self.inner.rate() = state::Rate {
            per_second,
            tat: None,
        };
    }

    /// Latency of every admitted `/v3` request: `fixed` + uniform(0, `jitter`).
    pub fn set_latency(&self, fixed: Duration, jitter: Duration) {
        let mut st = self.inner.lock();
        st.limits.latency = fixed;
        st.limits.jitter = jitter;
    }

    /// Time later activities spend in `initialized`/`processing` (half each).
    pub fn set_import_processing(&self, d: Duration) {
        self.inner.lock().import_processing = d;
    }

    pub fn set_daily_quota(&self, quota: Option<u64>) {
        self.inner.lock().limits.daily_quota = quota;
    }

    pub fn inject(&self, fault: Fault) {
        faults::push(&mut self.inner.lock(), fault);
    }

    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
    }

    /// Every `/v3/*` request so far, in arrival order of completion.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.lock().requests.clone()
    }

    /// How many `/v3/*` requests have completed so far (cheap: no copy of the log).
    pub fn request_count(&self) -> usize {
        self.inner.lock().requests.len()
    }

    /// The `/v3/*` requests completed after the first `from`, in order.
    pub fn requests_from(&self, from: usize) -> Vec<RequestRecord> {
        let st = self.inner.lock();
        st.requests
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// Requests answered 429 `throttled` (rate limit or `Fault::Throttle`).
    pub fn throttled_count(&self) -> u64 {
        self.inner.lock().throttled
    }

    /// Requests to the token endpoint.
    pub fn token_requests(&self) -> u64 {
        self.inner.lock().token_requests
    }

    /// Sandbox clock: real clock + offset, millisecond precision.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.lock().now()
    }

    /// Moves the sandbox clock by `by` (negative moves it back).
    pub fn advance_clock(&self, by: chrono::Duration) {
        let mut st = self.inner.lock();
        st.clock_offset += by;
    }

    /// Sets the sandbox clock to the real clock + `offset` (negative: behind this host),
    /// as a Constant Contact whose clock is skewed against ours.
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        self.inner.lock().clock_offset = offset;
    }

    /// The sandbox clock's offset from the real clock.
    pub fn clock_offset(&self) -> chrono::Duration {
        self.inner.lock().clock_offset
    }
}

fn build_inner(cfg: SandboxConfig) -> Inner {
    let mut st = State {
        accounts: HashMap::new(),
        refresh_tokens: HashMap::new(),
        access_tokens: HashMap::new(),
        clock_offset: chrono::Duration::zero(),
        limits: Limits {
            daily_quota: cfg.daily_quota,
            day: None,
            day_count: 0,
            latency: cfg.latency,
            jitter: cfg.jitter,
        },
        faults: VecDeque::new(),
        requests: Vec::new(),
        throttled: 0,
        token_requests: 0,
        import_processing: cfg.import_processing,
        oauth: oauth_state::OAuthState::new(cfg.refresh_token_policy, cfg.token_rate_limit),
    };
    let now = st.now();
    let acct = st.account_mut("default");
    generator::generate(acct, cfg.contacts, cfg.lists, cfg.seed, now);
    Inner {
        state: Mutex::new(st),
        rate: Mutex::new(state::Rate {
            per_second: cfg.requests_per_second,
            tat: None,
        }),
        client_id: cfg.client_id,
        client_secret: cfg.client_secret,
        access_token_ttl: cfg.access_token_ttl,
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/oauth2/default/v1/token", post(oauth::token))
        .route("/v3/contacts", get(contacts::list_contacts))
        .route("/v3/contacts/{id}", get(contacts::get_contact))
        .route("/v3/contact_lists", get(lists::list_lists))
        .route(
            "/v3/contact_custom_fields",
            get(custom_fields::list_custom_fields),
        )
        .merge(oauth::routes())
        .merge(activities::routes())
        .merge(contact_put::routes())
        .merge(bulk_delete::routes())
        .merge(exports::routes())
        .merge(control_write::routes())
        .merge(control_api::routes())
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&inner),
            pipeline::api_layer,
        ))
        .layer(DefaultBodyLimit::max(pipeline::MAX_BODY))
        .with_state(inner)
}

async fn fallback() -> axum::response::Response {
    respond::error_array(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "The requested resource does not exist in the sandbox",
    )
}

/// The sandbox prints its client secret and seed refresh token and answers its control API
/// to anyone who reaches it: a bind address other than loopback needs `allow_remote`.
#[derive(Debug)]
pub struct RemoteBindRefused(pub SocketAddr);

impl std::fmt::Display for RemoteBindRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing to listen on {}: the sandbox serves its secrets and its control API to \
             anyone who can reach it; listen on 127.0.0.1 or ::1, or pass --allow-remote",
            self.0
        )
    }
}

impl std::error::Error for RemoteBindRefused {}

/// `Ok` for a loopback address, or for any address when `allow_remote` is set.
pub fn check_bind(listen: SocketAddr, allow_remote: bool) -> Result<(), RemoteBindRefused> {
    if allow_remote || listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(RemoteBindRefused(listen))
    }
}

/// Serves the sandbox until `shutdown` is cancelled (`ccsync sandbox`). Prints the
/// API base, the token URL, the client credentials and a seed refresh token for the
/// "default" account on stdout.
pub async fn run_standalone(
    cfg: SandboxConfig,
    listen: SocketAddr,
    allow_remote: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    check_bind(listen, allow_remote)?;
    let (client_id, client_secret) = (cfg.client_id.clone(), cfg.client_secret.clone());
    let sb = Sandbox::start_on(cfg, listen).await?;
    let rt = sb.default_account().seed_refresh_token();
    println!("api_base: {}", sb.api_base());
    println!("token_url: {}", sb.token_url());
    println!("client_id: {client_id}");
    println!("client_secret: {client_secret}");
    println!("refresh_token: {rt}");
    println!("control: http://{}/__control/", sb.addr());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = sb.stopped() => {}
    }
    sb.shutdown();
    sb.stopped().await;
    Ok(())
}
