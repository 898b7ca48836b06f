//! The least-privilege database roles of README "Database role", run as written (with role
//! and database names of this test's own): the owner migrates, the daemon's runtime role
//! runs every main flow through the binary and may create nothing, the application's writer
//! may insert into `ccsync.outbound` and read the store, nothing more.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::helpers::{eventually, sandbox, text, Ccsync, ConfigToml};

/// Never fires during a test (1 January, midnight).
const NEVER: &str = "0 0 0 1 1 *";

const README: &str = include_str!("../../README.md");

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The `sql` blocks of README's "Database role" section: what a superuser runs, then what
/// the owner runs after `ccsync migrate`.
fn readme_sql() -> (String, String) {
    let section = README
        .split("### Database role")
        .nth(1)
        .expect("README has a \"Database role\" section");
    let section = section.split("\n### ").next().unwrap_or(section);
    let blocks: Vec<String> = section
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect();
    assert_eq!(
        blocks.len(),
        2,
        "two SQL blocks in README \"Database role\""
    );
    (blocks[0].clone(), blocks[1].clone())
}

/// Roles and a database of this test's own; dropped on `Drop` (database first, then the
/// cluster-wide roles), so a failing test leaves nothing behind.
struct Cluster {
    admin: PgConnectOptions,
    db: String,
    owner: String,
    runtime: String,
    app: String,
}

impl Cluster {
    /// Runs README's superuser block with this test's names.
    async fn create() -> Cluster {
        let admin = PgConnectOptions::from_str(&server_url())
            .unwrap()
            .database("postgres");
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let c = Cluster {
            admin,
            db: format!("ccsync_test_role_{tag}"),
            owner: format!("ccsync_owner_{tag}"),
            runtime: format!("ccsync_runtime_{tag}"),
            app: format!("ccsync_app_{tag}"),
        };
        let (superuser, _) = readme_sql();
        let mut conn = PgConnection::connect_with(&c.admin).await.unwrap();
        for stmt in statements(&c.named(&superuser)) {
            sqlx::query(&stmt)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
        conn.close().await.ok();
        c
    }

    /// README's SQL with this test's role and database names.
    fn named(&self, sql: &str) -> String {
        sql.replace("ccsync_owner", &self.owner)
            .replace("ccsync_runtime", &self.runtime)
            .replace("ccsync_app", &self.app)
            .replace("DATABASE ccsync ", &format!("DATABASE {} ", self.db))
            .replace("DATABASE ccsync;", &format!("DATABASE {};", self.db))
    }

    /// `database.url` for `role` (trust authentication: no password).
    fn url(&self, role: &str) -> String {
        let mut u = url::Url::parse(&server_url()).unwrap();
        u.set_username(role).unwrap();
        u.set_password(None).unwrap();
        u.set_path(&format!("/{}", self.db));
        u.to_string()
    }

    async fn connect_as(&self, role: &str) -> PgConnection {
        let opts = self.admin.clone().database(&self.db).username(role);
        PgConnection::connect_with(&opts)
            .await
            .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
    }

    /// A superuser connection to the test database (to look, and to arrange).
    async fn superuser(&self) -> PgConnection {
        PgConnection::connect_with(&self.admin.clone().database(&self.db))
            .await
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = vec![
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
            format!("DROP ROLE IF EXISTS {}", self.app),
            format!("DROP ROLE IF EXISTS {}", self.runtime),
            format!("DROP ROLE IF EXISTS {}", self.owner),
        ];
        // Drop runs inside the test's runtime: the statements run on a thread of their own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async {
                let Ok(mut conn) = PgConnection::connect_with(&admin).await else {
                    eprintln!("cannot connect to drop the test roles");
                    return;
                };
                for s in sql {
                    if let Err(e) = sqlx::query(&s).execute(&mut conn).await {
                        eprintln!("{s}: {e}");
                    }
                }
            });
        });
        let _ = done.join();
    }
}

/// The statements of a block (no `;` inside any of them).
fn statements(block: &str) -> Vec<String> {
    block
        .split(';')
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The SQLSTATE of a failed statement.
async fn sqlstate(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::query(sql).execute(&mut *conn).await {
        Ok(_) => panic!("{sql}: succeeded"),
        Err(sqlx::Error::Database(d)) => d.code().map(|c| c.to_string()).unwrap_or_default(),
        Err(e) => panic!("{sql}: {e}"),
    }
}

async fn scalar(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn the_runtime_role_runs_every_main_flow_and_may_create_nothing() {
    const CONTACTS: i64 = 25;
    let cluster = Cluster::create().await;
    let sb = sandbox(CONTACTS as usize).await;
    let token = sb.default_account().seed_refresh_token();
    let list = sb.default_account().list_ids()[0];

    // The owner migrates, then grants (README's second block, as the owner).
    let owner_conf = ConfigToml::for_sandbox(&sb, &cluster.url(&cluster.owner))
        .account("default", None)
        .write();
    let o = Ccsync::with_args(["migrate"])
        .config(&owner_conf.path)
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, grants) = readme_sql();
    let mut owner = cluster.connect_as(&cluster.owner).await;
    for stmt in statements(&cluster.named(&grants)) {
        sqlx::query(&stmt)
            .execute(&mut owner)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let mut admin = cluster.superuser().await;
    let (tables, owned): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE tableowner = $1)
         FROM pg_tables WHERE schemaname = 'ccsync'",
    )
    .bind(&cluster.owner)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(tables >= 10, "{tables} tables");
    assert_eq!(owned, tables, "every table is the owner's");

    // The application's writer queues a change, reads the store, and nothing more.
    let mut app = cluster.connect_as(&cluster.app).await;
    sqlx::query(
        "INSERT INTO ccsync.outbound (email, fields, list_ids)
         VALUES ('ada@example.com', '{\"first_name\": \"Ada\"}', ARRAY[$1]::uuid[])",
    )
    .bind(list)
    .execute(&mut app)
    .await
    .unwrap();
    assert_eq!(
        scalar(&mut app, "SELECT count(*) FROM ccsync.contacts").await,
        0
    );
    assert_eq!(
        scalar(&mut app, "SELECT count(*) FROM ccsync.outbound").await,
        1
    );
    for denied in [
        "SELECT * FROM ccsync.oauth_tokens",
        "UPDATE ccsync.outbound SET state = 'failed'",
        "DELETE FROM ccsync.outbound",
        "INSERT INTO ccsync.contacts (account_id, contact_id, updated_at)
         VALUES ('default', gen_random_uuid(), now())",
        "CREATE TABLE ccsync.mine (x int)",
    ] {
        assert_eq!(sqlstate(&mut app, denied).await, "42501", "{denied}");
    }
    app.close().await.ok();

    // The runtime role: a full cycle (every job, the queued row pushed and confirmed).
    let conf = ConfigToml::for_sandbox(&sb, &cluster.url(&cluster.runtime))
        .set("sync", "poll_initial", "100ms")
        .set("sync", "poll_max", "500ms")
        .set("schedule", "contacts", "* * * * * *")
        .set("schedule", "unsubscribes", NEVER)
        .set("schedule", "deletes", NEVER)
        .set("schedule", "lists", NEVER)
        .set("schedule", "reconcile", NEVER)
        .set("schedule", "push", NEVER)
        .set("server", "listen", "127.0.0.1:0")
        .set("log", "format", "json")
        .set("log", "level", "info")
        .account("default", Some(&token))
        .write();
    let ccsync = |args: &[&str]| Ccsync::new().config(&conf.path).args(args.to_vec());
    let o = ccsync(&["sync", "--json"]).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        scalar(&mut admin, "SELECT count(*) FROM ccsync.contacts").await,
        CONTACTS + 1
    );
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("SELECT state, reason FROM ccsync.outbound")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(state, "completed", "{reason:?}\n{}", text(&o));
    let ada = sb
        .default_account()
        .contact_by_email("ada@example.com")
        .expect("the queued row reached Constant Contact");
    let ada_id: uuid::Uuid = ada["contact_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(sb.default_account().memberships(ada_id), vec![list]);
    // Reconcile (not in the default cycle) stages ids in a temporary table: TEMPORARY.
    let o = ccsync(&["sync", "--job", "reconcile"]).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let runs: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT job, outcome, error FROM ccsync.sync_runs ORDER BY started_at")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    // Deletes ride on the contacts pull (status=all), so they have no run of their own.
    let jobs: Vec<&str> = runs.iter().map(|(job, _, _)| job.as_str()).collect();
    assert_eq!(
        jobs,
        ["contacts", "unsubscribes", "lists", "push", "reconcile"],
        "{runs:?}"
    );
    assert!(
        runs.iter()
            .all(|(_, outcome, _)| outcome.as_deref() == Some("succeeded")),
        "{runs:?}"
    );

    // `prune` deletes (an old failed row goes, the completed one stays).
    sqlx::query(
        "INSERT INTO ccsync.outbound (email, state, reason, created_at, updated_at)
         VALUES ('old@example.com', 'failed', 'bad email', now() - interval '100 days',
                 now() - interval '100 days')",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let o = ccsync(&["prune", "--json"]).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        scalar(
            &mut admin,
            "SELECT count(*) FROM ccsync.outbound WHERE email = 'old@example.com'"
        )
        .await,
        0,
        "{}",
        text(&o)
    );

    // `status`, `outbound` (list) and `auth status` read what they need.
    let o = ccsync(&["status", "--json"]).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["jobs"].as_array().is_some_and(|j| !j.is_empty()), "{v}");
    let o = ccsync(&["outbound", "--json"]).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["email"], "ada@example.com", "{rows}");
    assert_eq!(rows[0]["state"], "completed", "{rows}");
    let o = ccsync(&["auth", "status", "--json"]).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // `outbound cancel` updates a row the writer queued.
    let mut app = cluster.connect_as(&cluster.app).await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO ccsync.outbound (email) VALUES ('bob@example.com') RETURNING id",
    )
    .fetch_one(&mut app)
    .await
    .unwrap();
    app.close().await.ok();
    let o = ccsync(&["outbound", "cancel", &id.to_string()])
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let state: String = sqlx::query_scalar("SELECT state FROM ccsync.outbound WHERE id = $1")
        .bind(id)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(state, "skipped", "{}", text(&o));

    // The daemon starts (its start-up migration check needs no DDL), is ready, and its
    // scheduled runs succeed.
    let mut d = ccsync(&["run"]).log("ccsync=info,warn").spawn();
    let base = d.ready().await;
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let cluster_ref = &cluster;
    eventually("a scheduled run to succeed", Duration::from_secs(60), || async move {
        let mut c = cluster_ref.superuser().await;
        let n = scalar(
            &mut c,
            "SELECT count(*) FROM ccsync.sync_runs WHERE scheduled_for IS NOT NULL AND outcome = 'succeeded'",
        )
        .await;
        c.close().await.ok();
        (n > 0).then_some(())
    })
    .await;
    d.signal("TERM");
    let (code, _) = d.exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(!d.logged("permission denied"), "log:\n{}", d.log());

    // It may create, alter, drop or truncate nothing.
    let mut runtime = cluster.connect_as(&cluster.runtime).await;
    for ddl in [
        "CREATE TABLE ccsync.mine (x int)",
        "CREATE TABLE public.mine (x int)",
        "CREATE SCHEMA mine",
        "ALTER TABLE ccsync.outbound ADD COLUMN mine int",
        "DROP TABLE ccsync.changes",
        "TRUNCATE ccsync.contacts",
        "DELETE FROM public._sqlx_migrations",
    ] {
        assert_eq!(sqlstate(&mut runtime, ddl).await, "42501", "{ddl}");
    }
    runtime.close().await.ok();

    // A pending migration is refused with the command to run, not half-applied.
    sqlx::query(
        "DELETE FROM public._sqlx_migrations
         WHERE version = (SELECT max(version) FROM public._sqlx_migrations)",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let o = ccsync(&["sync", "--job", "contacts"]).output().await;
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("run `ccsync migrate` as the schema owner"),
        "{}",
        text(&o)
    );
    assert_eq!(
        scalar(
            &mut admin,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'ccsync'"
        )
        .await,
        tables
    );

    admin.close().await.ok();
    owner.close().await.ok();
    drop(owner_conf);
    drop(conf);
    sb.shutdown();
    drop(cluster);
}
