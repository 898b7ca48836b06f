//! Law 3, "nothing is lost": SIGKILL the process at arbitrary points of a pull while
//! subscribers keep changing data; after a clean final run the store equals the sandbox.

use std::collections::BTreeSet;
use std::time::Duration;

use ccsync::ctct::dto::parse_datetime;
use ccsync::sandbox::{Fault, Sandbox};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::helpers::{sandbox, text, Ccsync, ConfigFile, ConfigToml, TestDb};

fn config(sb: &Sandbox, db_url: &str, refresh_token: &str) -> String {
    ConfigToml::for_sandbox(sb, db_url)
        .account("default", Some(refresh_token))
        .set("sync", "page_size", 100u32)
        .render()
}

/// `ccsync sync --job contacts --config <conf>`, logging errors only.
fn pull(conf: &ConfigFile) -> Ccsync {
    Ccsync::with_args(["sync", "--job", "contacts"])
        .config(&conf.path)
        .log("error")
}

#[tokio::test]
async fn sigkill_at_random_points_loses_no_change_seen_in_constant_contact() {
    let db = TestDb::new().await;
    let sb = sandbox(3_000).await;
    let ctl = sb.default_account();
    let conf = ConfigFile::new(&config(&sb, &db.url, &ctl.seed_refresh_token()));
    // Slow pages down so that kills land in the middle of runs (30 pages of 100).
    sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(15),
        times: 100_000,
    });
    // Exchange the seed refresh token once, un-killed, so that the access token is stored
    // before the kills start: this test is about pulls, and a kill between a token answer and
    // its commit is a different window (token rotation; see the OAuth tests). On a loaded
    // machine the first refresh of a killed child could otherwise land in it.
    let o = Ccsync::with_args(["sync", "--job", "lists"])
        .config(&conf.path)
        .log("error")
        .output()
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ids = ctl.contact_ids();
    let mut killed = 0;
    for round in 0..8 {
        let mut child = pull(&conf).spawn();
        let wait = Duration::from_millis(rng.random_range(200..1500));
        // Subscribers act while the pull runs.
        for _ in 0..5 {
            let id = ids[rng.random_range(0..ids.len())];
            ctl.update_contact(id, |c| {
                c["first_name"] = serde_json::json!(format!("round{round}"))
            });
        }
        let id = ids[rng.random_range(0..ids.len())];
        ctl.delete_contact(id);
        match child.wait_for_exit(wait).await {
            Some(status) => assert!(status.success(), "a run ended badly: {}", child.text()),
            None => {
                child.kill(); // SIGKILL
                child.exit(Duration::from_secs(30)).await;
                killed += 1;
            }
        }
    }
    assert!(
        killed >= 2,
        "the test should kill runs mid-flight (killed {killed})"
    );
    sb.clear_faults();
    let o = pull(&conf).output().await;
    assert!(o.status.success(), "{}", text(&o));

    // The store equals the sandbox's truth, contact by contact.
    type Row = (
        Uuid,
        Option<String>,
        Option<String>,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::NaiveDate>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT contact_id, email, first_name, updated_at, deleted_at FROM ccsync.contacts",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), ids.len());
    for (id, email, first, updated, deleted) in rows {
        let truth = ctl.contact(id).unwrap();
        assert_eq!(
            email.as_deref(),
            truth["email_address"]["address"]
                .as_str()
                .map(str::to_lowercase)
                .as_deref()
        );
        assert_eq!(first.as_deref(), truth["first_name"].as_str(), "{id}");
        assert_eq!(
            Some(updated),
            truth["updated_at"].as_str().and_then(parse_datetime)
        );
        assert_eq!(deleted.is_some(), truth["deleted_at"].is_string(), "{id}");
        let local: BTreeSet<Uuid> =
            sqlx::query_scalar("SELECT list_id FROM ccsync.list_memberships WHERE contact_id = $1")
                .bind(id)
                .fetch_all(&db.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let remote: BTreeSet<Uuid> = ctl.memberships(id).into_iter().collect();
        assert_eq!(local, remote, "{id}");
    }
    // Killed runs are closed as interrupted by the next run that takes the lock.
    let interrupted = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM ccsync.sync_runs WHERE outcome = 'failed' AND error LIKE 'interrupted%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // (a kill before the run took its lock leaves no row at all)
    assert!(
        interrupted >= 1 && interrupted as usize <= killed,
        "{interrupted} of {killed}"
    );
    let running = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM ccsync.sync_runs WHERE finished_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(running, 0);
    sb.shutdown();
    drop(conf);
    db.cleanup().await;
}
