//! Settings: embedded commented defaults, then the `--config` file, then `CCSYNC__SECTION__KEY`
//! environment variables (added last, so they win). `validate()` checks what serde cannot;
//! every error names the key so that an operator can fix it (exit code 78).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Source, ValueKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

/// The embedded defaults; every key is present and commented.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// A configuration problem. Displayed as `key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration error: {0}")]
    Load(String),
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub constant_contact: CtctSettings,
    /// Connected Constant Contact accounts.
    #[serde(default)]
    pub accounts: Vec<AccountSettings>,
    pub sync: SyncSettings,
    pub schedule: ScheduleSettings,
    /// `[freshness]`: jobs run by the request-budget planner instead of cron.
    pub freshness: FreshnessSettings,
    /// `[retention]`: how long bookkeeping rows are kept.
    pub retention: RetentionSettings,
    pub server: ServerSettings,
    pub log: LogSettings,
    /// Encryption of stored OAuth tokens (optional).
    #[serde(default)]
    pub security: SecuritySettings,
    /// Keys the file or the environment set that ccsync does not know (e.g. `sync.pag_size`):
    /// ignored, and warned about by the commands, so that a typo does not pass silently.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
}

/// `[security]`: the key that encrypts tokens in `oauth_tokens` (see `crate::crypto`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SecuritySettings {
    /// A file with one base64 32-byte key per line; the first seals, all open.
    #[serde(default)]
    pub token_key_file: Option<PathBuf>,
    /// The key text itself, normally from `CCSYNC__SECURITY__TOKEN_KEY`.
    #[serde(default)]
    pub token_key: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; may embed a password, so it is a secret and never printed whole.
    pub url: SecretString,
    /// Password kept out of the URL (environment or `password_file`).
    #[serde(default)]
    pub password: Option<SecretString>,
    /// A file holding the password (systemd credential, Docker secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    pub max_connections: u32,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CtctSettings {
    /// Base URL of the V3 API, e.g. `https://api.cc.email/v3`.
    pub api_base: String,
    /// OAuth2 token endpoint.
    pub token_url: String,
    /// Allows plain `http` for a non-loopback `api_base` / `token_url` (a sandbox on a
    /// private network); loopback hosts may always use `http`.
    #[serde(default)]
    pub insecure_http: bool,
    /// The application's API key (OAuth client id).
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Requests per second for the API key; 0 turns pacing off (sandbox and benchmarks).
    pub requests_per_second: f64,
    /// Requests per UTC day for the API key, shared by every account and replica.
    pub daily_request_limit: u64,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Retries of one request on throttling, 5xx, timeouts and connection errors.
    pub max_retries: u32,
    #[serde(deserialize_with = "duration")]
    pub retry_initial: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AccountSettings {
    /// Local name of a connected Constant Contact account.
    pub id: String,
    /// One-time seed, used only while `oauth_tokens` has no row for the account.
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// `"all"` or a list of list ids whose memberships are synced.
    #[serde(default)]
    pub lists: ListsSetting,
}

/// Which lists' memberships an account syncs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ListsSetting {
    Named(String),
    Ids(Vec<Uuid>),
}

impl Default for ListsSetting {
    fn default() -> Self {
        ListsSetting::Named("all".into())
    }
}

impl ListsSetting {
    /// `None` means every list.
    pub fn ids(&self) -> Option<&[Uuid]> {
        match self {
            ListsSetting::Named(_) => None,
            ListsSetting::Ids(ids) => Some(ids),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SyncSettings {
    #[serde(deserialize_with = "duration")]
    pub lookback: Duration,
    pub page_size: u32,
    pub import_max_contacts: usize,
    pub import_max_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub poll_initial: Duration,
    #[serde(deserialize_with = "duration")]
    pub poll_max: Duration,
    #[serde(deserialize_with = "duration")]
    pub poll_timeout: Duration,
    pub max_push_attempts: u32,
    /// Field-only changes of existing contacts go out as `GET` + `PUT /contacts/{id}` (two
    /// requests each). Above this many in one push run they fall back to an import that
    /// names only lists the contact is on at a read made just before it (cheaper in
    /// requests, but a subscriber's leave in the seconds between that read and the import's
    /// processing would be undone). 0 = always PUT.
    pub put_max_rows: u64,
    /// A contacts pull that has more than this many contacts to read (its first page's
    /// `contacts_count`) splits its `updated_at` range into time slices paged at once.
    pub slice_above: u64,
    /// Slices paged at once (1 = never slice). Each holds at most two pages in memory; the
    /// pacer, not this number, keeps the request rate at the API's limit.
    pub slice_streams: u32,
    /// How a first sync reads an account: `paged`, `export` or `auto` (`core::backfill`).
    pub backfill: crate::core::backfill::Mode,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleSettings {
    pub contacts: String,
    pub unsubscribes: String,
    pub deletes: String,
    pub lists: String,
    pub push: String,
    pub reconcile: String,
    /// When the daemon prunes old bookkeeping (`[retention]`); not a per-account job.
    pub retention: String,
}

/// `[freshness]`: the staleness wanted per job. A job given a target here is run by the
/// request-budget planner (`core::planner`) as often as the API key's daily budget allows, up
/// to its target, and its `[schedule]` expression is not used; a job without one keeps its
/// cron expression. `contacts` plans the deletes sweep too (it rides on the pull).
#[derive(Debug, Clone, Deserialize)]
pub struct FreshnessSettings {
    #[serde(default, deserialize_with = "optional_duration")]
    pub unsubscribes: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub contacts: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub lists: Option<Duration>,
    /// A planned push runs when there is something to push, at most this often.
    #[serde(default, deserialize_with = "optional_duration")]
    pub push: Option<Duration>,
    /// Share of the daily budget the planner leaves unplanned (pushes, the weekly
    /// reconcile, backfills, retries).
    pub budget_reserve: f64,
}

impl FreshnessSettings {
    /// `(key, target)` of every planned job.
    pub fn targets(&self) -> crate::core::planner::Targets {
        crate::core::planner::Targets {
            unsubscribes: self.unsubscribes,
            contacts: self.contacts,
            lists: self.lists,
            push: self.push,
            reserve: self.budget_reserve,
        }
    }

    fn entries(&self) -> [(&'static str, Option<Duration>); 4] {
        [
            ("unsubscribes", self.unsubscribes),
            ("contacts", self.contacts),
            ("lists", self.lists),
            ("push", self.push),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, target) in self.entries() {
            if let Some(t) = target {
                if t < Duration::from_secs(60) || t > crate::core::planner::MAX_INTERVAL {
                    return Err(ConfigError::invalid(
                        format!("freshness.{key}"),
                        "must be between 1m and 24h (or \"off\")",
                    ));
                }
            }
        }
        if !(0.0..=0.5).contains(&self.budget_reserve) {
            return Err(ConfigError::invalid(
                "freshness.budget_reserve",
                "must be between 0 and 0.5 (a share of the daily budget)",
            ));
        }
        Ok(())
    }
}

/// `[retention]`: per table, days rows are kept (`0` keeps forever), and the rows deleted
/// per statement. Signed so that a negative value is refused naming its key.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    pub changes_days: i64,
    pub sync_runs_days: i64,
    /// Terminal rows only (`completed`, `skipped`, `failed`).
    pub outbound_days: i64,
    /// Finished activities only.
    pub import_activities_days: i64,
    pub api_usage_days: i64,
    pub schedule_claims_days: i64,
    pub batch_size: i64,
}

/// The most days a table may keep (a century); beyond is a typo.
pub const MAX_RETENTION_DAYS: i64 = 36_500;
/// The largest `retention.batch_size` (larger batches hold locks too long).
pub const MAX_RETENTION_BATCH: i64 = 100_000;

/// Pacing below this is a typo (one request every 1000 s), and its period would overflow.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
/// Pacing above this is no pacing (use 0).
pub const MAX_REQUESTS_PER_SECOND: f64 = 100_000.0;
/// `outbound.attempts` is a PostgreSQL `integer`.
pub const MAX_PUSH_ATTEMPTS: u32 = 1_000;
/// Each running account holds two database connections.
pub const MAX_CONCURRENT_ACCOUNTS: usize = 10_000;

impl RetentionSettings {
    /// `(key, days)` pairs.
    pub fn days(&self) -> [(&'static str, i64); 6] {
        [
            ("changes_days", self.changes_days),
            ("sync_runs_days", self.sync_runs_days),
            ("outbound_days", self.outbound_days),
            ("import_activities_days", self.import_activities_days),
            ("api_usage_days", self.api_usage_days),
            ("schedule_claims_days", self.schedule_claims_days),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, days) in self.days() {
            if !(0..=MAX_RETENTION_DAYS).contains(&days) {
                return Err(ConfigError::invalid(
                    format!("retention.{key}"),
                    format!("must be 0..={MAX_RETENTION_DAYS} days (0 keeps forever), not {days}"),
                ));
            }
        }
        if !(1..=MAX_RETENTION_BATCH).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                "retention.batch_size",
                format!("must be 1..={MAX_RETENTION_BATCH}, not {}", self.batch_size),
            ));
        }
        Ok(())
    }

    /// The policy the store applies (call after `validate`; out-of-range values clamp).
    pub fn policy(&self) -> crate::store::retention::Policy {
        let d = |v: i64| u32::try_from(v.clamp(0, MAX_RETENTION_DAYS)).unwrap_or(0);
        crate::store::retention::Policy {
            changes_days: d(self.changes_days),
            sync_runs_days: d(self.sync_runs_days),
            outbound_days: d(self.outbound_days),
            import_activities_days: d(self.import_activities_days),
            api_usage_days: d(self.api_usage_days),
            schedule_claims_days: d(self.schedule_claims_days),
            batch_size: u32::try_from(self.batch_size.clamp(1, MAX_RETENTION_BATCH)).unwrap_or(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// On SIGTERM/SIGINT, how long running jobs may take to reach a page boundary and
    /// commit before the process exits anyway (keep it below systemd's `TimeoutStopSec`).
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Accounts one replica syncs at the same time (each holds two database connections).
    pub max_concurrent_accounts: usize,
    /// `/readyz` fails when a job's runs have failed, with no success, for longer than
    /// this or three periods of its own schedule, whichever is longer.
    #[serde(deserialize_with = "duration")]
    pub ready_failing_after: Duration,
    /// How often the gauges of `/metrics` (lag, backlog, budget) are refreshed.
    #[serde(deserialize_with = "duration")]
    pub metrics_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The longest duration any setting accepts (a century): beyond is a typo, and adding it to
/// a clock would overflow (a panic, not an error).
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_RETENTION_DAYS as u64 * 86_400);

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))?;
    if v > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "{s:?}: at most {MAX_RETENTION_DAYS} days"
        )));
    }
    Ok(v)
}

/// A duration, or `""` / `"off"` for none.
fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let v = humantime::parse_duration(s.trim())
        .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))?;
    Ok(Some(v))
}

impl Settings {
    /// Loads defaults, then `path` (if any), then the environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut settings = Self::load_unvalidated(path)?;
        settings.resolve_secret_files()?;
        settings.validate()?;
        if let Some(p) = path {
            settings.check_file_secrets(p)?;
        }
        Ok(settings)
    }

    /// `server.listen` alone (defaults, then `path`, then `CCSYNC__SERVER__LISTEN`), for
    /// `ccsync healthcheck`, which must not need the database or Constant Contact settings.
    pub fn load_listen(path: Option<&Path>) -> Result<SocketAddr, ConfigError> {
        let cfg = Self::sources(path)?;
        cfg.get::<SocketAddr>("server.listen")
            .map_err(|e| ConfigError::invalid("server.listen", e.to_string()))
    }

    /// Loads without validating (for `check-config`, which reports problems itself).
    pub fn load_unvalidated(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let cfg = Self::sources(path)?;
        let unknown = cfg.collect().map(|m| unknown_keys(&m)).unwrap_or_default();
        let mut settings: Settings = cfg
            .try_deserialize()
            .map_err(|e| ConfigError::Load(key_path_fix(&e.to_string())))?;
        settings.unknown_keys = unknown;
        Ok(settings)
    }

    fn sources(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::invalid(
                    "--config",
                    format!("file {} does not exist", p.display()),
                ));
            }
            builder = builder.add_source(File::from(p).format(FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("CCSYNC")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        if let Some(p) = path {
            check_file_parses(p)?;
        }
        builder
            .build()
            .map_err(|e| ConfigError::Load(key_path_fix(&e.to_string())))
    }

    /// Reads `*_file` secrets into their values (the file wins over nothing, never over an
    /// explicit value).
    pub fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        fn read(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))
            })?;
            Ok(SecretString::from(text.trim().to_owned()))
        }
        if self.constant_contact.client_secret.is_none() {
            if let Some(p) = &self.constant_contact.client_secret_file {
                self.constant_contact.client_secret =
                    Some(read("constant_contact.client_secret_file", p)?);
            }
        }
        if self.database.password.is_none() {
            if let Some(p) = &self.database.password_file {
                self.database.password = Some(read("database.password_file", p)?);
            }
        }
        for (i, a) in self.accounts.iter_mut().enumerate() {
            if a.refresh_token.is_none() {
                if let Some(p) = &a.refresh_token_file {
                    a.refresh_token = Some(read(&format!("accounts[{i}].refresh_token_file"), p)?);
                }
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: URLs, limits, cron strings, account ids.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(self.database.url.expose_secret())
            .map_err(|e| ConfigError::invalid("database.url", e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if self.database.max_connections < 2 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be at least 2 (a run holds one connection for its lock)",
            ));
        }
        for (key, value) in [
            ("constant_contact.api_base", &self.constant_contact.api_base),
            (
                "constant_contact.token_url",
                &self.constant_contact.token_url,
            ),
        ] {
            let u = url::Url::parse(value).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(key, "must be an http(s) URL"));
            }
            if u.scheme() == "http" && !is_loopback(&u) && !self.constant_contact.insecure_http {
                return Err(ConfigError::invalid(
                    key,
                    "must be https for a host other than loopback (tokens and the client \
                     secret travel in it); set constant_contact.insecure_http = true to allow \
                     plain http on a private network",
                ));
            }
        }
        let c = &self.constant_contact;
        let rps = c.requests_per_second;
        if !(rps == 0.0 || (MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&rps)) {
            return Err(ConfigError::invalid(
                "constant_contact.requests_per_second",
                format!(
                    "must be 0 (pacing off) or {MIN_REQUESTS_PER_SECOND}..={MAX_REQUESTS_PER_SECOND}"
                ),
            ));
        }
        if c.daily_request_limit == 0 {
            return Err(ConfigError::invalid(
                "constant_contact.daily_request_limit",
                "must be greater than 0",
            ));
        }
        let s = &self.sync;
        if !(1..=500).contains(&s.page_size) {
            return Err(ConfigError::invalid(
                "sync.page_size",
                "must be 1..=500 (the API's limit)",
            ));
        }
        if !(1..=64).contains(&s.slice_streams) {
            return Err(ConfigError::invalid(
                "sync.slice_streams",
                "must be 1..=64 (1 turns slicing off)",
            ));
        }
        if !(1..=40_000).contains(&s.import_max_contacts) {
            return Err(ConfigError::invalid(
                "sync.import_max_contacts",
                "must be 1..=40000 (the API's limit)",
            ));
        }
        if !(1024..=4_000_000).contains(&s.import_max_bytes) {
            return Err(ConfigError::invalid(
                "sync.import_max_bytes",
                "must be 1024..=4000000 (the API silently drops what is beyond 4 MB)",
            ));
        }
        if s.poll_initial.is_zero() || s.poll_max < s.poll_initial {
            return Err(ConfigError::invalid(
                "sync.poll_max",
                "poll_initial must be > 0 and poll_max >= poll_initial",
            ));
        }
        if !(1..=MAX_PUSH_ATTEMPTS).contains(&s.max_push_attempts) {
            return Err(ConfigError::invalid(
                "sync.max_push_attempts",
                format!("must be 1..={MAX_PUSH_ATTEMPTS}"),
            ));
        }
        for (key, expr) in self.schedule.entries() {
            parse_cron(expr).map_err(|m| ConfigError::invalid(format!("schedule.{key}"), m))?;
        }
        parse_cron(&self.schedule.retention)
            .map_err(|m| ConfigError::invalid("schedule.retention", m))?;
        self.retention.validate()?;
        self.freshness.validate()?;
        if !(1..=MAX_CONCURRENT_ACCOUNTS).contains(&self.server.max_concurrent_accounts) {
            return Err(ConfigError::invalid(
                "server.max_concurrent_accounts",
                format!("must be 1..={MAX_CONCURRENT_ACCOUNTS}"),
            ));
        }
        if self.server.shutdown_grace.is_zero() {
            return Err(ConfigError::invalid(
                "server.shutdown_grace",
                "must be greater than 0",
            ));
        }
        if self.server.metrics_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "server.metrics_interval",
                "must be at least 1s",
            ));
        }
        if !matches!(
            self.log.level.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(ConfigError::invalid(
                "log.level",
                "must be one of trace, debug, info, warn, error",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let valid = !a.id.is_empty()
                && a.id.len() <= 64
                && a.id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
            if !valid {
                return Err(ConfigError::invalid(
                    format!("accounts[{i}].id"),
                    "must be 1-64 characters of letters, digits, '-', '_' or '.'",
                ));
            }
            if !seen.insert(a.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("accounts[{i}].id"),
                    format!("duplicate account id {:?}", a.id),
                ));
            }
            if let ListsSetting::Named(n) = &a.lists {
                if n != "all" {
                    return Err(ConfigError::invalid(
                        format!("accounts[{i}].lists"),
                        "must be \"all\" or an array of list ids",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that need an account to sync (used by `sync`, `run` and `check-config`).
    pub fn validate_for_sync(&self) -> Result<(), ConfigError> {
        if self.accounts.is_empty() {
            return Err(ConfigError::invalid(
                "accounts",
                "no [[accounts]] configured: add one with an id and a refresh_token",
            ));
        }
        if self.constant_contact.client_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "constant_contact.client_id",
                "is empty: set your application's API key",
            ));
        }
        if self.constant_contact.client_secret.is_none() {
            return Err(ConfigError::invalid(
                "constant_contact.client_secret",
                "is missing: set it, client_secret_file, or CCSYNC__CONSTANT_CONTACT__CLIENT_SECRET",
            ));
        }
        Ok(())
    }

    /// Secrets written inline in a file that anyone can read are refused.
    fn check_file_secrets(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        if meta.permissions().mode() & 0o004 == 0 {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let parsed: toml_like::Doc = toml_like::scan(&text);
        for key in ["client_secret", "refresh_token", "password", "token_key"] {
            if parsed.has_key(key) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "is written in {}, which is world-readable: chmod 600 it, or use *_file / the environment",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The database URL with any password masked, for printing.
    pub fn database_url_redacted(&self) -> String {
        redact_url(self.database.url.expose_secret())
    }

    /// The effective configuration with every secret masked (for `check-config`).
    pub fn redacted_summary(&self) -> String {
        let c = &self.constant_contact;
        let mut out = String::new();
        let set = |o: bool| if o { "(set)" } else { "(not set)" };
        out.push_str(&format!(
            "[database]\nurl = {:?}\npassword = {}\nmax_connections = {}\n\n",
            self.database_url_redacted(),
            set(self.database.password.is_some()),
            self.database.max_connections
        ));
        out.push_str(&format!(
            "[constant_contact]\napi_base = {:?}\ntoken_url = {:?}\ninsecure_http = {}\nclient_id = {:?}\nclient_secret = {}\nrequests_per_second = {}\ndaily_request_limit = {}\n\n",
            c.api_base, c.token_url, c.insecure_http, c.client_id, set(c.client_secret.is_some()), c.requests_per_second, c.daily_request_limit
        ));
        for a in &self.accounts {
            out.push_str(&format!(
                "[[accounts]]\nid = {:?}\nrefresh_token = {}\nlists = {}\n\n",
                a.id,
                set(a.refresh_token.is_some()),
                match a.lists.ids() {
                    None => "\"all\"".to_string(),
                    Some(ids) => format!("{ids:?}"),
                }
            ));
        }
        let s = &self.sync;
        out.push_str(&format!(
            "[sync]\nlookback = {:?}\npage_size = {}\nimport_max_contacts = {}\nimport_max_bytes = {}\npoll_initial = {:?}\npoll_max = {:?}\npoll_timeout = {:?}\nmax_push_attempts = {}\nput_max_rows = {}\nslice_above = {}\nslice_streams = {}\nbackfill = {:?}\n\n",
            humantime::format_duration(s.lookback).to_string(), s.page_size, s.import_max_contacts, s.import_max_bytes,
            humantime::format_duration(s.poll_initial).to_string(), humantime::format_duration(s.poll_max).to_string(),
            humantime::format_duration(s.poll_timeout).to_string(), s.max_push_attempts, s.put_max_rows,
            s.slice_above, s.slice_streams, s.backfill.as_str()
        ));
        out.push_str("[schedule]\n");
        for (k, v) in self.schedule.entries() {
            out.push_str(&format!("{k} = {v:?}\n"));
        }
        out.push_str(&format!("retention = {:?}\n", self.schedule.retention));
        out.push_str("\n[freshness]\n");
        for (k, v) in self.freshness.entries() {
            match v {
                Some(d) => out.push_str(&format!(
                    "{k} = {:?}\n",
                    humantime::format_duration(d).to_string()
                )),
                None => out.push_str(&format!("{k} = \"off\"\n")),
            }
        }
        out.push_str(&format!(
            "budget_reserve = {}\n",
            self.freshness.budget_reserve
        ));
        out.push_str("\n[retention]\n");
        for (k, v) in self.retention.days() {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str(&format!("batch_size = {}\n", self.retention.batch_size));
        out.push_str(&format!(
            "\n[server]\nlisten = \"{}\"\nshutdown_grace = {:?}\nmax_concurrent_accounts = {}\nready_failing_after = {:?}\nmetrics_interval = {:?}\n\n[log]\nformat = \"{:?}\"\nlevel = {:?}\n",
            self.server.listen,
            humantime::format_duration(self.server.shutdown_grace).to_string(),
            self.server.max_concurrent_accounts,
            humantime::format_duration(self.server.ready_failing_after).to_string(),
            humantime::format_duration(self.server.metrics_interval).to_string(),
            self.log.format, self.log.level
        ));
        out.push_str(&format!(
            "\n[security]\ntoken_key_file = {}\ntoken_key = {}\n",
            self.security
                .token_key_file
                .as_ref()
                .map(|p| format!("{:?}", p.display().to_string()))
                .unwrap_or_else(|| "(not set)".into()),
            set(self.security.token_key.is_some())
        ));
        out
    }

    /// The `[schedule]` expressions of the jobs cron runs: those the planner runs
    /// (`[freshness]`) are left out.
    pub fn cron_entries(&self) -> Vec<(&'static str, &str)> {
        let targets = self.freshness.targets();
        self.schedule
            .entries()
            .into_iter()
            .filter(|(job, _)| {
                crate::core::cycle::job_named(job).is_none_or(|j| !targets.planned(j))
            })
            .collect()
    }

    /// Finds an account's settings.
    pub fn account(&self, id: &str) -> Option<&AccountSettings> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

impl ScheduleSettings {
    /// `(job, cron expression)` pairs.
    pub fn entries(&self) -> [(&'static str, &str); 6] {
        [
            ("contacts", &self.contacts),
            ("unsubscribes", &self.unsubscribes),
            ("deletes", &self.deletes),
            ("lists", &self.lists),
            ("push", &self.push),
            ("reconcile", &self.reconcile),
        ]
    }
}

pub use crate::core::cycle::parse_cron;

/// Keys that have no default (secrets, files) but are known.
const OPTIONAL_KEYS: &[&str] = &[
    "database.password",
    "database.password_file",
    "constant_contact.client_secret",
    "constant_contact.client_secret_file",
    "security.token_key",
    "security.token_key_file",
    "freshness.unsubscribes",
    "freshness.contacts",
    "freshness.lists",
    "freshness.push",
];
/// The keys of one `[[accounts]]` entry.
const ACCOUNT_KEYS: &[&str] = &["id", "refresh_token", "refresh_token_file", "lists"];

/// Every `section.key` of the embedded defaults, plus the optional keys.
fn known_keys() -> &'static std::collections::BTreeSet<String> {
    static KNOWN: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(scan_known_keys)
}

fn scan_known_keys() -> std::collections::BTreeSet<String> {
    let mut known: std::collections::BTreeSet<String> =
        OPTIONAL_KEYS.iter().map(|k| k.to_string()).collect();
    let defaults = Config::builder()
        .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
        .build()
        .and_then(|c| c.collect());
    if let Ok(map) = defaults {
        for (section, v) in map {
            if let ValueKind::Table(t) = v.kind {
                known.extend(t.into_keys().map(|k| format!("{section}.{k}")));
            }
        }
    }
    known
}

/// The full paths of the keys in `map` that ccsync does not know, e.g. `sync.pag_size`,
/// `accounts[0].refresh_tokn`, `sycn` (a whole unknown section).
fn unknown_keys(map: &config::Map<String, config::Value>) -> Vec<String> {
    let known = known_keys();
    let mut out = Vec::new();
    for (section, v) in map {
        match (&v.kind, section.as_str()) {
            (ValueKind::Array(entries), "accounts") => {
                for (i, e) in entries.iter().enumerate() {
                    if let ValueKind::Table(t) = &e.kind {
                        out.extend(
                            t.keys()
                                .filter(|k| !ACCOUNT_KEYS.contains(&k.as_str()))
                                .map(|k| format!("accounts[{i}].{k}")),
                        );
                    }
                }
            }
            // A wrong type is refused by the deserializer, naming the key.
            (_, "accounts") => {}
            (ValueKind::Table(t), _)
                if known.iter().any(|k| k.starts_with(&format!("{section}."))) =>
            {
                let mut keys: Vec<String> = t
                    .keys()
                    .map(|k| format!("{section}.{k}"))
                    .filter(|k| !known.contains(k))
                    .collect();
                keys.sort();
                out.extend(keys);
            }
            _ => out.push(section.clone()),
        }
    }
    out.sort();
    out
}

/// The file alone must be TOML: its syntax errors are reported naming the file and, where
/// the parser gives none, the key of the line that fails on its own.
fn check_file_parses(p: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        ConfigError::invalid("--config", format!("cannot read {}: {e}", p.display()))
    })?;
    let Err(e) = Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .build()
    else {
        return Ok(());
    };
    let message = e.to_string();
    match culprit_key(&text, &message) {
        Some(key) => Err(ConfigError::invalid(
            key,
            format!("{message} (in {})", p.display()),
        )),
        None => Err(ConfigError::Load(format!(
            "{} is not valid TOML: {message}",
            p.display()
        ))),
    }
}

/// The `section.key` of the first single-line assignment of `text` that fails to parse on
/// its own with the same message as the whole file (a value the parser rejects without a
/// position, such as an integer beyond 64 bits).
fn culprit_key(text: &str, message: &str) -> Option<String> {
    if message.contains("line ") {
        return None; // the parser already points at the line
    }
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        if let Err(e) = Config::builder()
            .add_source(File::from_str(l, FileFormat::Toml))
            .build()
        {
            let alone = e.to_string();
            if !alone.is_empty() && message.starts_with(&alone) {
                let k = k.trim().trim_matches('"');
                return Some(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
    }
    None
}

/// The loader writes an array element's key as `accounts[0]lists`; make it
/// `accounts[0].lists`.
fn key_path_fix(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 4);
    let mut prev = ' ';
    for c in message.chars() {
        if prev == ']' && (c.is_ascii_alphanumeric() || c == '_') {
            out.push('.');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// Masks the password of a URL.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparseable URL)".to_string(),
    }
}

/// A tiny scan of TOML keys, enough to see whether secrets are written inline.
mod toml_like {
    pub struct Doc(Vec<(String, bool)>);
    pub fn scan(text: &str) -> Doc {
        Doc(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let key = k.trim().to_string();
                // `url = "postgres://u:pw@h"` carries a password too.
                let has_pw = key == "url" && v.contains(':') && v.contains('@') && {
                    let v = v.trim().trim_matches('"');
                    v.split_once("://")
                        .and_then(|(_, rest)| rest.split_once('@'))
                        .map(|(userinfo, _)| userinfo.contains(':'))
                        .unwrap_or(false)
                };
                (key, has_pw)
            })
            .collect())
    }
    impl Doc {
        pub fn has_key(&self, key: &str) -> bool {
            self.0
                .iter()
                .any(|(k, pw)| k == key || (key == "password" && *pw))
        }
    }
}

/// A URL whose host is `localhost` or a loopback address (plain http stays allowed there).
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("embedded defaults deserialize")
    }

    #[test]
    fn embedded_defaults_are_valid() {
        defaults().validate().expect("defaults validate");
    }

    #[test]
    fn bad_page_size_names_the_key() {
        let mut s = defaults();
        s.sync.page_size = 501;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("sync.page_size"), "{e}");
    }

    #[test]
    fn a_freshness_target_out_of_range_names_the_key_and_planned_jobs_leave_cron() {
        let mut s = defaults();
        assert!(!s.freshness.targets().any(), "the planner is opt-in");
        assert_eq!(s.cron_entries().len(), 6);
        s.freshness.contacts = Some(Duration::from_secs(30));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("freshness.contacts"), "{e}");
        s.freshness.contacts = Some(Duration::from_secs(3600));
        s.freshness.budget_reserve = 0.9;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("freshness.budget_reserve"), "{e}");
        s.freshness.budget_reserve = 0.05;
        s.validate().unwrap();
        // The contacts pull is planned, and the deletes sweep that rides on it with it.
        let cron: Vec<&str> = s.cron_entries().iter().map(|(j, _)| *j).collect();
        assert_eq!(cron, ["unsubscribes", "lists", "push", "reconcile"]);
    }

    #[test]
    fn off_or_empty_leaves_a_job_on_cron() {
        let path = std::env::temp_dir().join(format!("ccsync-fresh-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[freshness]\nunsubscribes = \"15m\"\ncontacts = \"off\"\nlists = \"\"\n",
        )
        .unwrap();
        let s = Settings::load_unvalidated(Some(&path)).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(s.freshness.unsubscribes, Some(Duration::from_secs(900)));
        assert_eq!((s.freshness.contacts, s.freshness.lists), (None, None));
        assert!(s.unknown_keys.is_empty(), "{:?}", s.unknown_keys);
    }

    #[test]
    fn bad_cron_names_the_key() {
        let mut s = defaults();
        s.schedule.deletes = "*/5 * * * *".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("schedule.deletes"), "{e}");
    }

    #[test]
    fn bad_retention_names_the_key() {
        let mut s = defaults();
        s.retention.changes_days = -1;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("retention.changes_days"), "{e}");
        let mut s = defaults();
        s.retention.outbound_days = MAX_RETENTION_DAYS + 1;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("retention.outbound_days"), "{e}");
        let mut s = defaults();
        s.retention.batch_size = 0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("retention.batch_size"), "{e}");
        let mut s = defaults();
        s.schedule.retention = "daily".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("schedule.retention"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let mut s = defaults();
        s.constant_contact.client_secret = Some(SecretString::from("s3cr3t-value".to_string()));
        s.database.url = SecretString::from("postgres://u:hunter2pw@h/db".to_string());
        let dbg = format!("{s:?}");
        let summary = s.redacted_summary();
        for leak in ["s3cr3t-value", "hunter2pw"] {
            assert!(!dbg.contains(leak), "Debug leaks {leak}");
            assert!(!summary.contains(leak), "summary leaks {leak}");
        }
    }

    /// `section.key` of every key in a TOML text, commented-out keys included.
    fn keys(text: &str) -> std::collections::BTreeSet<String> {
        let mut section = String::new();
        let mut out = std::collections::BTreeSet::new();
        for line in text.lines() {
            let l = line.trim().trim_start_matches('#').trim();
            if l.starts_with('[') {
                section = l.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if let Some((k, _)) = l.split_once(" = ") {
                if !k.contains(' ') {
                    out.insert(format!("{section}.{k}"));
                }
            }
        }
        out
    }

    #[test]
    fn the_example_config_documents_every_key_and_loads() {
        let example = include_str!("../deploy/config.example.toml");
        let documented = keys(example);
        for k in keys(DEFAULTS) {
            assert!(
                documented.contains(&k),
                "deploy/config.example.toml lacks {k}"
            );
        }
        for k in ["accounts.id", "accounts.refresh_token", "accounts.lists"] {
            assert!(
                documented.contains(k),
                "deploy/config.example.toml lacks {k}"
            );
        }
        let s: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(example, FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("the example deserializes");
        s.validate().expect("the example validates");
        assert_eq!(s.accounts.len(), 1);
    }

    fn load_text(text: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("ccsync-config-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("c.toml");
        std::fs::write(&p, text).expect("write");
        let r = Settings::load_unvalidated(Some(&p));
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn unknown_keys_are_named_by_their_full_path_and_known_ones_are_not() {
        let s = load_text(
            "[sync]\npag_size = 5\npage_size = 7\n[sycn]\nx = 1\n[database]\npassword_file = \"/p\"\n\
             [[accounts]]\nid = \"a\"\nrefresh_tokn = \"x\"\nlists = \"all\"\n",
        )
        .expect("loads");
        assert_eq!(s.sync.page_size, 7);
        assert_eq!(
            s.unknown_keys,
            vec!["accounts[0].refresh_tokn", "sycn", "sync.pag_size"]
        );
        let example = include_str!("../deploy/config.example.toml");
        let s = load_text(example).expect("the example loads");
        assert!(s.unknown_keys.is_empty(), "{:?}", s.unknown_keys);
    }

    #[test]
    fn a_value_the_parser_rejects_without_a_position_is_named_by_its_key() {
        let e = load_text("[sync]\nlookback = \"5m\"\npage_size = 99999999999999999999\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync.page_size"), "{e}");
        let e = load_text("[sync\npage_size = 5\n").unwrap_err().to_string();
        assert!(e.contains("not valid TOML") && e.contains("line 1"), "{e}");
        let e = load_text("[[accounts]]\nid = \"a\"\nlists = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("accounts[0].lists"), "{e}");
    }

    #[test]
    fn inline_url_password_is_detected() {
        let doc = toml_like::scan("url = \"postgres://u:pw@h/db\"\n");
        assert!(doc.has_key("password"));
        let doc = toml_like::scan("url = \"postgres://u@h/db\"\n");
        assert!(!doc.has_key("password"));
    }
}

#[cfg(test)]
#[path = "config_props.rs"]
mod props;
