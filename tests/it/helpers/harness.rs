//! In-process jobs: settings pointing at a sandbox, and a job context wired to a database
//! and a sandbox.

use std::sync::Arc;
use std::time::Duration;

use ccsync::config::{AccountSettings, ListsSetting, Settings};
use ccsync::sandbox::{AccountCtl, Sandbox, SandboxConfig};
use ccsync::sync::{self, Job, JobContext, Outcome, RunReport};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::db::TestDb;
use super::sandbox::sandbox_with;

/// Settings pointing at `sb` for the accounts given, with fast retries for fault tests.
pub fn settings_for(sb: &Sandbox, db_url: &str, accounts: &[(&str, String)]) -> Settings {
    let mut s = Settings::load_unvalidated(None).expect("defaults load");
    s.database.url = SecretString::from(db_url.to_string());
    let d = SandboxConfig::default();
    s.constant_contact.api_base = sb.api_base();
    s.constant_contact.token_url = sb.token_url();
    s.constant_contact.client_id = d.client_id;
    s.constant_contact.client_secret = Some(SecretString::from(d.client_secret));
    s.constant_contact.requests_per_second = 0.0;
    s.constant_contact.retry_initial = Duration::from_millis(5);
    s.constant_contact.retry_max = Duration::from_millis(50);
    // Generous: a 4 MB import on a busy machine (a debug build of the sandbox parsing it)
    // took over 5 s; no test relies on a request timing out.
    s.constant_contact.request_timeout = Duration::from_secs(60);
    s.accounts = accounts
        .iter()
        .map(|(id, rt)| AccountSettings {
            id: id.to_string(),
            refresh_token: Some(SecretString::from(rt.clone())),
            refresh_token_file: None,
            lists: ListsSetting::default(),
        })
        .collect();
    s.validate().expect("test settings validate");
    s
}

/// A job context over `pool` (a live one: not cancelled, not a dry run).
pub fn context(settings: &Arc<Settings>, pool: &PgPool) -> JobContext {
    context_with(settings, pool, CancellationToken::new(), false)
}

/// A job context over `pool` with its own cancellation and dry-run flag.
pub fn context_with(
    settings: &Arc<Settings>,
    pool: &PgPool,
    cancel: CancellationToken,
    dry_run: bool,
) -> JobContext {
    ccsync::startup::job_context(settings.clone(), pool.clone(), cancel, dry_run)
        .expect("job context")
}

/// A database, a sandbox with one account ("default" locally and in the sandbox), and a
/// job context.
pub struct Harness {
    pub db: TestDb,
    pub sb: Sandbox,
    pub ctl: AccountCtl,
    pub settings: Arc<Settings>,
    pub ctx: JobContext,
}

impl Harness {
    /// A sandbox with `contacts` generated contacts (8 lists).
    pub async fn new(contacts: usize) -> Harness {
        Self::with(contacts, |_| {}).await
    }

    /// Like `new`, letting the test adjust the settings first.
    pub async fn with(contacts: usize, adjust: impl FnOnce(&mut Settings)) -> Harness {
        Self::start(
            SandboxConfig {
                contacts,
                ..SandboxConfig::default()
            },
            adjust,
        )
        .await
    }

    /// A sandbox started from `cfg`; the test adjusts the settings.
    pub async fn start(cfg: SandboxConfig, adjust: impl FnOnce(&mut Settings)) -> Harness {
        let db = TestDb::new().await;
        let sb = sandbox_with(cfg).await;
        let ctl = sb.default_account();
        let mut settings = settings_for(&sb, &db.url, &[("default", ctl.seed_refresh_token())]);
        adjust(&mut settings);
        let settings = Arc::new(settings);
        let ctx = context(&settings, &db.pool);
        Harness {
            db,
            sb,
            ctl,
            settings,
            ctx,
        }
    }

    pub fn account(&self) -> &AccountSettings {
        &self.settings.accounts[0]
    }

    /// Runs one job for the account through the guarded path.
    pub async fn run(&self, job: Job) -> RunReport {
        sync::run_guarded(&self.ctx, self.account(), job).await
    }

    /// Runs one job and panics unless it succeeded; returns its stats.
    pub async fn run_ok(&self, job: Job) -> serde_json::Value {
        match self.run(job).await.outcome {
            Outcome::Succeeded(s) => s,
            other => panic!("{job} did not succeed: {other:?}"),
        }
    }

    /// A fresh context (e.g. to simulate a new process with the same database).
    pub fn new_context(&self) -> JobContext {
        context(&self.settings, &self.db.pool)
    }

    /// Queues an outbound row as the application does; returns its id.
    pub async fn queue(&self, email: &str, fields: serde_json::Value, lists: &[uuid::Uuid]) -> i64 {
        self.queue_op(email, "upsert", fields, lists).await
    }

    /// Queues an outbound row with an explicit `op`; returns its id.
    pub async fn queue_op(
        &self,
        email: &str,
        op: &str,
        fields: serde_json::Value,
        lists: &[uuid::Uuid],
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO ccsync.outbound (email, op, fields, list_ids) VALUES ($1, $2, $3, $4)
             RETURNING id",
        )
        .bind(email)
        .bind(op)
        .bind(fields)
        .bind(lists)
        .fetch_one(&self.db.pool)
        .await
        .unwrap_or_else(|e| panic!("queueing a {op} row for {email}: {e}"))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.count(sql).await
    }

    pub async fn finish(self) {
        self.sb.shutdown();
        self.db.cleanup().await;
    }
}
