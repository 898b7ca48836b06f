//! A PostgreSQL database of its own for one test, dropped when the test ends (even by a
//! panic).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// The server the tests use: `DATABASE_URL` or the local trust-auth default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Set to `1` to keep every test database (its name is printed) for inspection.
pub const KEEP_DB_ENV: &str = "CCSYNC_TEST_KEEP_DB";

/// How long dropping a database may take before the test moves on without it.
const DROP_DEADLINE: Duration = Duration::from_secs(15);

/// A database of its own for one test, migrated. Dropped (`DROP DATABASE … WITH (FORCE)`)
/// on `Drop`, so a failing test leaves nothing behind, unless `CCSYNC_TEST_KEEP_DB=1`.
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

    /// Closes the pool politely, then drops the database (as `Drop` would).
    pub async fn cleanup(self) {
        // A connection still checked out (a listener, a leaked guard) would make `close`
        // wait forever; the forced DROP ends such sessions anyway.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.pool.close()).await;
        drop(self);
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The database server's clock.
    pub async fn now(&self) -> chrono::DateTime<chrono::Utc> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .expect("SELECT now()")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var(KEEP_DB_ENV).is_ok_and(|v| v == "1") {
            eprintln!("{KEEP_DB_ENV}=1: keeping database {}", self.name);
            return;
        }
        // Drop runs inside the test's runtime (maybe a current-thread one), which cannot
        // be blocked on: the DROP runs on a thread of its own with a small runtime, and
        // is waited for at most DROP_DEADLINE.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("drop {name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let result = match rt {
                    Ok(rt) => rt.block_on(async {
                        tokio::time::timeout(DROP_DEADLINE, drop_database(&admin, &name))
                            .await
                            .unwrap_or_else(|_| Err(format!("timed out after {DROP_DEADLINE:?}")))
                    }),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = result {
                    eprintln!("could not drop test database {name}: {e}");
                }
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = finished.recv_timeout(DROP_DEADLINE + Duration::from_secs(1));
        }
    }
}

async fn drop_database(admin: &PgConnectOptions, name: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect_with(admin)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    conn.close().await.ok();
    Ok(())
}
