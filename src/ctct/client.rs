//! The HTTP client: one reqwest client for every account, pacing, the shared budget, bearer
//! tokens, and a bounded retry loop with exponential backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use super::auth::Auth;
use super::dto::{ContactListsPage, CustomFieldsPage};
use super::error::{parse_error_body, Error};
use super::limiter::{Budget, Pacer, RequestBudget, SharedPacer};
use super::page::ContactsPage;

/// Everything shared by the accounts of one API key.
pub struct Api {
    http: reqwest::Client,
    api_base: Url,
    origin: Url,
    auth: Arc<Auth>,
    pacer: Pacer,
    /// Cross-replica pacing; replaces `pacer` when set (`with_shared_pacer`).
    shared_pacer: Option<Arc<dyn SharedPacer>>,
    budget: Arc<dyn RequestBudget>,
    max_retries: usize,
    /// First retry delay; doubled each time up to `max_delay`.
    min_delay: Duration,
    max_delay: Duration,
    cancel: CancellationToken,
}

/// Settings of the client that do not come from tokens.
pub struct ApiOptions {
    pub api_base: String,
    pub requests_per_second: f64,
    pub max_retries: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// Builds the one HTTP client (rustls, timeouts, no redirects).
pub fn http_client(
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("ccsync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

impl Api {
    pub fn new(
        http: reqwest::Client,
        opts: ApiOptions,
        auth: Arc<Auth>,
        budget: Arc<dyn RequestBudget>,
        cancel: CancellationToken,
    ) -> Result<Self, url::ParseError> {
        let mut api_base = Url::parse(&opts.api_base)?;
        if !api_base.path().ends_with('/') {
            let p = format!("{}/", api_base.path());
            api_base.set_path(&p);
        }
        let origin = Url::parse(&api_base.origin().ascii_serialization())?;
        Ok(Api {
            http,
            api_base,
            origin,
            auth,
            pacer: Pacer::new(opts.requests_per_second),
            shared_pacer: None,
            budget,
            max_retries: opts.max_retries as usize,
            min_delay: opts.min_delay,
            max_delay: opts.max_delay,
            cancel,
        })
    }

    /// Paces requests through slots shared by every replica instead of this process alone.
    pub fn with_shared_pacer(mut self, pacer: Option<Arc<dyn SharedPacer>>) -> Self {
        self.shared_pacer = pacer;
        self
    }

    /// Waits for this process's next request slot (shared across replicas when set).
    async fn pace(&self) -> Result<(), Error> {
        let Some(shared) = &self.shared_pacer else {
            self.pacer.ready().await;
            return Ok(());
        };
        tokio::select! {
            r = shared.wait_turn() => r.map_err(Error::Budget),
            _ = self.cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// A client acting for one connected account.
    pub fn account(self: &Arc<Self>, account: &str) -> AccountClient {
        AccountClient {
            api: self.clone(),
            account: account.to_string(),
            sent: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// `relative` joined to the API base (`contacts` → `https://api.cc.email/v3/contacts`).
    pub fn endpoint(&self, relative: &str) -> Result<Url, url::ParseError> {
        self.api_base.join(relative)
    }

    /// A `_links.next.href` resolved against the API origin: it already starts with `/v3`.
    pub fn resolve_link(&self, href: &str) -> Result<Url, url::ParseError> {
        self.origin.join(href)
    }
}

/// Requests for one account.
#[derive(Clone)]
pub struct AccountClient {
    api: Arc<Api>,
    account: String,
    /// Requests sent through this client and its clones (retries included).
    sent: Arc<std::sync::atomic::AtomicU64>,
}

/// The `include` set the pull asks for.
pub const CONTACT_INCLUDE: &str =
    "custom_fields,list_memberships,phone_numbers,street_addresses,taggings";

/// Query of `GET /contacts`.
#[derive(Debug, Clone, Default)]
pub struct ContactsQuery {
    pub status: Option<String>,
    pub updated_after: Option<chrono::DateTime<chrono::Utc>>,
    pub optout_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Strict upper bound on `updated_at` (a time slice of a large pull).
    pub updated_before: Option<chrono::DateTime<chrono::Utc>>,
    pub lists: Vec<uuid::Uuid>,
    pub include: Option<String>,
    pub include_count: bool,
    pub limit: u32,
}

impl AccountClient {
    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// Requests sent so far by this client and its clones, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The URL of the first page of `GET /contacts`.
    pub fn contacts_url(&self, q: &ContactsQuery) -> Result<Url, url::ParseError> {
        let mut url = self.api.endpoint("contacts")?;
        {
            let mut p = url.query_pairs_mut();
            if let Some(s) = &q.status {
                p.append_pair("status", s);
            }
            if let Some(t) = q.updated_after {
                p.append_pair(
                    "updated_after",
                    &t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            }
            if let Some(t) = q.updated_before {
                p.append_pair(
                    "updated_before",
                    &t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            }
            if let Some(t) = q.optout_after {
                p.append_pair(
                    "optout_after",
                    &t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            }
            if !q.lists.is_empty() {
                let ids: Vec<String> = q.lists.iter().map(|l| l.to_string()).collect();
                p.append_pair("lists", &ids.join(","));
            }
            if let Some(i) = &q.include {
                p.append_pair("include", i);
            }
            if q.include_count {
                p.append_pair("include_count", "true");
            }
            p.append_pair("limit", &q.limit.to_string());
        }
        Ok(url)
    }

    /// The contact with `email` (`GET /contacts?email=…&status=all`, every sub-resource),
    /// as a page of zero or one contact: one request.
    pub async fn contact_by_email(&self, email: &str) -> Result<ContactsPage, Error> {
        let mut url = self
            .contacts_url(&ContactsQuery {
                status: Some("all".into()),
                include: Some(CONTACT_INCLUDE.into()),
                limit: 1,
                ..Default::default()
            })
            .map_err(|e| Error::Status {
                endpoint: "contacts",
                status: 0,
                items: vec![super::error::ApiErrorItem {
                    error_key: "ccsync.bad_url".into(),
                    error_message: format!("cannot build the contacts URL: {e}"),
                }],
            })?;
        url.query_pairs_mut().append_pair("email", email);
        self.contacts_page(url).await
    }

    /// One page of contacts at `url` (a first-page URL or a resolved next link).
    pub async fn contacts_page(&self, url: Url) -> Result<ContactsPage, Error> {
        self.get_json("GET /contacts", url).await
    }

    /// One page of the list catalogue.
    pub async fn lists_page(&self, url: Url) -> Result<ContactListsPage, Error> {
        self.get_json("GET /contact_lists", url).await
    }

    /// One page of the custom field catalogue.
    pub async fn custom_fields_page(&self, url: Url) -> Result<CustomFieldsPage, Error> {
        self.get_json("GET /contact_custom_fields", url).await
    }

    /// The next-page URL from an href.
    pub fn next_url(&self, href: &str) -> Result<Url, Error> {
        self.api.resolve_link(href).map_err(|_| Error::Status {
            endpoint: "pagination",
            status: 0,
            items: vec![super::error::ApiErrorItem {
                error_key: "ccsync.bad_next_link".into(),
                error_message: format!("cannot resolve next link {href:?}"),
            }],
        })
    }

    /// GET with retries; idempotent, so transport failures, 5xx and a `200` whose body is
    /// not the JSON expected (a proxy's error page, a cut body) are retried.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
    ) -> Result<T, Error> {
        self.send(endpoint, reqwest::Method::GET, url, None, true)
            .await
    }

    /// POST of a JSON body. Only `throttled` answers (nothing was done) are retried: a bulk
    /// POST is never re-sent blindly after a 5xx or a lost answer.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
        body: Vec<u8>,
    ) -> Result<T, Error> {
        self.send(endpoint, reqwest::Method::POST, url, Some(body), false)
            .await
    }

    /// PUT of a JSON body; like a POST, retried only on `throttled` (a PUT overwrites the
    /// contact as read before it, so after a lost answer it is judged again on a new read,
    /// never re-sent blindly).
    pub async fn put_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
        body: Vec<u8>,
    ) -> Result<T, Error> {
        self.send(endpoint, reqwest::Method::PUT, url, Some(body), false)
            .await
    }

    /// `GET /contacts/{id}` with every sub-resource, as Constant Contact sent it (a PUT
    /// sends it back whole).
    pub async fn contact(&self, id: uuid::Uuid) -> Result<serde_json::Value, Error> {
        let mut url = self
            .api
            .endpoint(&format!("contacts/{id}"))
            .map_err(|e| bad_url(&format!("contacts/{id}: {e}")))?;
        url.query_pairs_mut()
            .append_pair("include", CONTACT_INCLUDE);
        self.get_json("GET /contacts/{id}", url).await
    }

    /// `PUT /contacts/{id}`: the contact after the write, as Constant Contact answers it.
    pub async fn put_contact(
        &self,
        id: uuid::Uuid,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let url = self
            .api
            .endpoint(&format!("contacts/{id}"))
            .map_err(|e| bad_url(&format!("contacts/{id}: {e}")))?;
        let bytes = serde_json::to_vec(body).map_err(|source| Error::Decode {
            endpoint: "PUT /contacts/{id}",
            source,
        })?;
        self.put_json("PUT /contacts/{id}", url, bytes).await
    }

    /// Sends with the retry policy and decodes the answer as `T`. A success answer that
    /// does not decode counts as a failed attempt: retried when `idempotent` (a GET), and
    /// returned as it is otherwise (a write's effect is unknown; it is never re-sent).
    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: reqwest::Method,
        url: Url,
        body: Option<Vec<u8>>,
        idempotent: bool,
    ) -> Result<T, Error> {
        self.send_with(endpoint, method, url, body, idempotent, |resp| async move {
            let bytes = classify(endpoint, resp).await?;
            serde_json::from_slice::<T>(&bytes).map_err(|source| Error::Decode { endpoint, source })
        })
        .await
    }

    /// `GET url` streamed into the file at `path` (created or truncated on each attempt), for
    /// a body too large to hold in memory (an export's CSV). Retried like any GET. Returns
    /// the bytes written.
    pub async fn download_to(
        &self,
        endpoint: &'static str,
        url: Url,
        path: &std::path::Path,
    ) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        self.send_with(endpoint, reqwest::Method::GET, url, None, true, |mut resp| async move {
            if !resp.status().is_success() {
                return Err(match classify(endpoint, resp).await {
                    Err(e) => e,
                    Ok(_) => bad_url(endpoint),
                });
            }
            metrics::counter!("ccsync_api_requests_total", "endpoint" => endpoint, "status" => resp.status().as_u16().to_string()).increment(1);
            let io = |e: std::io::Error| Error::File { endpoint, source: e };
            let mut file = tokio::fs::File::create(path).await.map_err(io)?;
            let mut written = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|source| Error::Transport { endpoint, source })?
            {
                file.write_all(&chunk).await.map_err(io)?;
                written += chunk.len() as u64;
            }
            file.flush().await.map_err(io)?;
            Ok(written)
        })
        .await
    }

    /// The retry loop: budget, pacing, token, send, then `decode` of the answer. A decode
    /// error counts as a failed attempt (retried when `idempotent`).
    async fn send_with<T, F, Fut>(
        &self,
        endpoint: &'static str,
        method: reqwest::Method,
        url: Url,
        body: Option<Vec<u8>>,
        idempotent: bool,
        mut decode: F,
    ) -> Result<T, Error>
    where
        F: FnMut(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let api = &self.api;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(api.min_delay)
            .with_max_delay(api.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(api.max_retries)
            .build();
        let mut token = api.auth.access_token(&self.account).await?;
        let mut refreshed = false;
        loop {
            if api.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            match api
                .budget
                .take(&self.account)
                .await
                .map_err(Error::Budget)?
            {
                Budget::Granted { .. } => {}
                Budget::Exhausted => {
                    return Err(Error::QuotaExceeded {
                        source_of: "daily_request_limit reached",
                    })
                }
            }
            // Pacing last, right before the send: nothing (a budget round trip, a pool
            // wait) may stand between the request slot and the request.
            api.pace().await?;
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut req = api
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose_secret());
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let result = match req.send().await {
                Ok(resp) => decode(resp).await,
                Err(source) => {
                    metrics::counter!("ccsync_api_requests_total", "endpoint" => endpoint, "status" => "transport_error").increment(1);
                    Err(Error::Transport { endpoint, source })
                }
            };
            let err = match result {
                Ok(value) => {
                    debug!(endpoint, "request ok");
                    return Ok(value);
                }
                Err(e) => e,
            };
            match &err {
                Error::Unauthorized if !refreshed => {
                    refreshed = true;
                    token = api
                        .auth
                        .refresh_after_unauthorized(&self.account, &token)
                        .await?;
                    continue;
                }
                Error::QuotaExceeded { .. } => {
                    if let Err(e) = api.budget.exhausted().await {
                        warn!(error = %crate::telemetry::Chain(&*e), "cannot record quota exhaustion");
                    }
                    return Err(err);
                }
                _ => {}
            }
            if let (Error::Throttled { .. }, Some(shared)) = (&err, &api.shared_pacer) {
                shared.throttled();
            }
            let may_retry =
                err.is_retryable() && (idempotent || matches!(err, Error::Throttled { .. }));
            if !may_retry {
                return Err(err);
            }
            let Some(mut delay) = delays.next() else {
                return Err(err);
            };
            if let Error::Throttled {
                retry_after: Some(ra),
            } = &err
            {
                delay = delay.max(*ra);
            }
            warn!(endpoint, error = %crate::telemetry::Chain(&err), delay_ms = delay.as_millis() as u64, "retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = api.cancel.cancelled() => return Err(Error::Cancelled),
            }
        }
    }
}

async fn classify(endpoint: &'static str, resp: reqwest::Response) -> Result<Vec<u8>, Error> {
    let status = resp.status();
    metrics::counter!("ccsync_api_requests_total", "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = resp
        .bytes()
        .await
        .map_err(|source| Error::Transport { endpoint, source })?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let items = parse_error_body(&body);
    let key = items.first().map(|i| i.error_key.as_str()).unwrap_or("");
    Err(match status.as_u16() {
        401 => Error::Unauthorized,
        429 if key == "quota_exceeded" => Error::QuotaExceeded {
            source_of: "Constant Contact answered quota_exceeded",
        },
        429 if key == "throttled" || key.is_empty() => Error::Throttled { retry_after },
        429 => Error::TooManyActivities {
            message: items
                .first()
                .map(|i| i.error_message.clone())
                .unwrap_or_default(),
        },
        s => Error::Status {
            endpoint,
            status: s,
            items,
        },
    })
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let d = t.with_timezone(&chrono::Utc) - chrono::Utc::now();
    d.to_std().ok().map(|d| d.min(Duration::from_secs(3600)))
}

pub(crate) fn bad_url(what: &str) -> Error {
    Error::Status {
        endpoint: "url",
        status: 0,
        items: vec![super::error::ApiErrorItem {
            error_key: "ccsync.bad_url".into(),
            error_message: format!("cannot build the URL of {what}"),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None); // past
        assert!(parse_retry_after("soon").is_none());
    }
}
