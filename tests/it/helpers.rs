//! Shared test harness: a fresh PostgreSQL database per test, an in-process sandbox on
//! port 0, and a job context wired to both.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ccsync::config::{AccountSettings, ListsSetting, Settings};
use ccsync::sandbox::{AccountCtl, Sandbox, SandboxConfig};
use ccsync::sync::{self, Job, JobContext, Outcome, RunReport};
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// The server the tests use: `DATABASE_URL` or the local trust-auth default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own for one test, migrated. Dropped by `cleanup()`; a failing test
/// leaves it behind for inspection.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin = PgConnectOptions::from_str(&server_url())
            .expect("DATABASE_URL parses")
            .database("postgres");
        let name = format!("ccsync_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("PostgreSQL is reachable (start it: pg_ctlcluster ... main start)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let opts = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(opts)
            .await
            .expect("connect to test database");
        ccsync::store::migrate(&pool)
            .await
            .expect("migrations apply");
        let mut u = url::Url::parse(&server_url()).expect("url");
        u.set_path(&format!("/{name}"));
        TestDb {
            pool,
            url: u.to_string(),
            name,
            admin,
        }
    }

    pub async fn cleanup(self) {
        // A connection still checked out (a listener, a leaked guard) would make `close`
        // wait forever; the forced DROP below ends such sessions anyway.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.pool.close()).await;
        if let Ok(mut conn) = PgConnection::connect_with(&self.admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// Settings pointing at `sb` for one account, with fast retries for fault tests.
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
    s.constant_contact.request_timeout = Duration::from_secs(5);
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
        let db = TestDb::new().await;
        let sb = Sandbox::start(SandboxConfig {
            contacts,
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox starts");
        let ctl = sb.default_account();
        let mut settings = settings_for(&sb, &db.url, &[("default", ctl.seed_refresh_token())]);
        adjust(&mut settings);
        let settings = Arc::new(settings);
        let ctx = ccsync::startup::job_context(
            settings.clone(),
            db.pool.clone(),
            CancellationToken::new(),
            false,
        )
        .expect("job context");
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
        ccsync::startup::job_context(
            self.settings.clone(),
            self.db.pool.clone(),
            CancellationToken::new(),
            false,
        )
        .expect("job context")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn finish(self) {
        self.sb.shutdown();
        self.db.cleanup().await;
    }
}
