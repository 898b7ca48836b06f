//! Every SQL statement lives here, one file per table or aggregate. Functions take
//! `&mut PgConnection` so that they compose inside one transaction. No HTTP here.

pub mod activities;
pub mod changes;
pub mod contacts;
pub mod copy;
pub mod custom_fields;
pub mod demo;
pub mod lists;
pub mod memberships;
pub mod ops;
pub mod optouts;
pub mod outbound;
pub mod pacer;
pub mod planner;
pub mod poison;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod sends;
pub mod status;
pub mod sync_state;
pub mod tokens;
pub mod usage;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL {url}")]
    BadUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect to PostgreSQL at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot run migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("migrations are pending and this database role may not apply them: run `ccsync migrate` as the schema owner (README, \"Database role\")")]
    MigrateDenied(#[source] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Connect options from the settings (password kept out of the URL when given apart).
pub fn connect_options(db: &DatabaseSettings) -> Result<PgConnectOptions, StoreError> {
    let raw = db.url.expose_secret();
    let mut opts = PgConnectOptions::from_str(raw).map_err(|source| StoreError::BadUrl {
        url: crate::config::redact_url(raw),
        source,
    })?;
    if let Some(pw) = &db.password {
        opts = opts.password(pw.expose_secret());
    }
    Ok(opts.application_name("ccsync").disable_statement_logging())
}

/// An eager pool: bad credentials fail here, not at the first tick. Retries the first
/// connection for up to `connect_timeout` (a database that is still starting).
pub async fn connect(db: &DatabaseSettings) -> Result<PgPool, StoreError> {
    let opts = connect_options(db)?;
    let url = crate::config::redact_url(db.url.expose_secret());
    // Probe with one connection first so that an unreachable server fails within
    // `connect_timeout` (the pool itself would keep retrying for its acquire timeout).
    let deadline = tokio::time::Instant::now() + db.connect_timeout;
    let mut delay = Duration::from_millis(250);
    loop {
        match PgConnection::connect_with(&opts).await {
            Ok(conn) => {
                let _ = conn.close().await;
                break;
            }
            Err(e) if is_transient_connect_error(&e) && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %crate::telemetry::Chain(&e), "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(source) => return Err(StoreError::Connect { url, source }),
        }
    }
    PgPoolOptions::new()
        .max_connections(db.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await
        .map_err(|source| StoreError::Connect { url, source })
}

fn is_transient_connect_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // 57P03: the database system is starting up.
        sqlx::Error::Database(d) => d.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// Microseconds since `at`, and `at` moved to now: one phase of a page's apply timed.
pub(crate) fn lap(at: &mut std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    let us = now.duration_since(*at).as_micros() as u64;
    *at = now;
    us
}

/// A pulled page's transaction: `BEGIN` and `SET LOCAL synchronous_commit = off` in one
/// round trip.
///
/// Why relaxed durability is safe for pulled pages (and used nowhere else): a page, its
/// changes and — on the last page — the watermark commit together, and WAL is replayed in
/// order, so a PostgreSQL crash can only lose a suffix of recent commits, watermark
/// included; the next run re-reads them from Constant Contact. A killed ccsync loses
/// nothing (the commit is in the server). Push state transitions keep fully durable
/// commits: they record requests that cannot be re-derived.
pub async fn begin_page(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await
}

/// Runs the migrations (sqlx takes an advisory lock, so replicas may race safely).
///
/// When every embedded migration is already applied (same checksums, none failed, none
/// unknown to this build) nothing else runs: no `CREATE TABLE IF NOT EXISTS`, no lock, so
/// a runtime role without DDL rights starts on a schema its owner migrated. Otherwise the
/// migrations run, and a role that may not apply them gets an error saying who must.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    if migrations_applied(pool).await? {
        return Ok(());
    }
    match MIGRATOR.run(pool).await {
        Ok(()) => Ok(()),
        Err(e) if is_permission_denied(&e) => Err(StoreError::MigrateDenied(e)),
        Err(e) => Err(StoreError::Migrate(e)),
    }
}

/// Whether `_sqlx_migrations` (read only) already holds exactly what this build would apply.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, StoreError> {
    let applied: Vec<(i64, Vec<u8>, bool)> =
        match sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            // 42P01: no such table (a new database); 42501: not readable by this role.
            Err(sqlx::Error::Database(d))
                if matches!(d.code().as_deref(), Some("42P01") | Some("42501")) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e.into()),
        };
    let ours: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let all_ours = ours.iter().all(|m| {
        applied
            .iter()
            .any(|(v, sum, ok)| *v == m.version && *ok && sum.as_slice() == &*m.checksum)
    });
    let none_foreign = applied
        .iter()
        .all(|(v, _, _)| ours.iter().any(|m| m.version == *v));
    Ok(all_ours && none_foreign)
}

fn is_permission_denied(e: &sqlx::migrate::MigrateError) -> bool {
    match e {
        sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(d))
        | sqlx::migrate::MigrateError::ExecuteMigration(sqlx::Error::Database(d), _) => {
            d.code().as_deref() == Some("42501")
        }
        _ => false,
    }
}

/// Creates the database named in `opts` when it does not exist (used by `ccsync demo`).
pub async fn ensure_database(opts: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(name) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = PgConnection::connect_with(&admin).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}
