//! `ccsync healthcheck` (Docker's HEALTHCHECK) against a running daemon: it follows the
//! configured `[server] listen` and checks liveness, so that one account needing
//! re-authorisation leaves the container healthy while `/readyz` names that account.

use std::time::Duration;

use crate::helpers::{eventually, sandbox, text, Ccsync, ConfigFile, ConfigToml, TestDb};

/// Never fires during a test (1 January, midnight).
const NEVER: &str = "0 0 0 1 1 *";

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn healthcheck_follows_the_configured_listener_and_ignores_one_account_needing_reauth() {
    let db = TestDb::new().await;
    let sb = sandbox(20).await;
    let good = sb.default_account().seed_refresh_token();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let conf = ConfigToml::for_sandbox(&sb, &db.url)
        .set("schedule", "contacts", "* * * * * *")
        .set("schedule", "unsubscribes", NEVER)
        .set("schedule", "deletes", NEVER)
        .set("schedule", "lists", NEVER)
        .set("schedule", "reconcile", NEVER)
        .set("schedule", "push", NEVER)
        .set("server", "listen", listen.as_str())
        .set("server", "metrics_interval", "1s")
        .set("log", "format", "json")
        .set("log", "level", "info")
        .account("broken", Some("rt.not-a-valid-token"))
        .account("default", Some(&good))
        .write();
    let healthcheck = |args: &[&str]| Ccsync::with_args(["healthcheck"]).args(args.to_vec());

    let mut d = Ccsync::with_args(["run"])
        .config(&conf.path)
        .log("ccsync=info,warn")
        .spawn();
    let base = d.ready().await;
    assert_eq!(base, format!("http://{listen}"));

    // One account needs re-authorisation, the other syncs: not ready, and /readyz says
    // which account and why.
    let body = eventually(
        "the broken account to need re-authorisation while the other syncs",
        Duration::from_secs(60),
        || async {
            let ok = db
                .count("SELECT count(*) FROM ccsync.sync_runs WHERE account_id = 'default' AND outcome = 'succeeded'")
                .await;
            let (status, body) = get(&format!("{base}/readyz")).await;
            (ok > 0 && status == 503 && body.contains("account broken needs re-authorisation"))
                .then_some(body)
        },
    )
    .await;
    assert!(!body.contains("account default"), "{body}");
    let (status, body) = get(&format!("{base}/livez")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["alive"], true, "{body}");
    assert!(
        v["scheduler_heartbeat_age_ms"].as_u64().unwrap() < 30_000,
        "{body}"
    );

    // Liveness at the configured address (file, or CCSYNC_CONFIG): healthy.
    let o = healthcheck(&[]).config(&conf.path).output().await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = healthcheck(&[])
        .env("CCSYNC_CONFIG", &conf.path)
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Readiness on request: not ready, naming the account.
    let o = healthcheck(&["--ready"]).config(&conf.path).output().await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("account broken needs re-authorisation"),
        "{}",
        text(&o)
    );

    // Only `[server] listen` is read (no database or API settings needed), the
    // environment wins over the file, and an unspecified address is reached on loopback.
    let elsewhere = ConfigFile::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    ));
    let o = healthcheck(&[]).config(&elsewhere.path).output().await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "nothing listens there: {}",
        text(&o)
    );
    let o = healthcheck(&[])
        .config(&elsewhere.path)
        .env("CCSYNC__SERVER__LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bad = ConfigFile::new("[server]\nlisten = \"every interface\"\n");
    let o = healthcheck(&[]).config(&bad.path).output().await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("server.listen"), "{}", text(&o));

    // Stopped: unhealthy.
    d.signal("TERM");
    let (code, _) = d.exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    let o = healthcheck(&[]).config(&conf.path).output().await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    drop(conf);
    sb.shutdown();
    db.cleanup().await;
}
