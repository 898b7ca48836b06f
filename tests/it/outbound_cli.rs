//! `ccsync outbound` (list, retry, cancel) and the queue part of `ccsync status`, through
//! the binary against a database of its own.

use std::process::Output;

use ccsync::core::states::OutboundState::{self, Completed, Failed, Pending, Skipped, Submitted};
use serde_json::Value;

use crate::helpers::{text, Ccsync, ConfigFile, ConfigToml, TestDb};

/// A migrated database and a configuration file pointing at it.
struct Queue {
    db: TestDb,
    conf: ConfigFile,
}

/// What one row of `ccsync.outbound` holds that the commands change.
#[derive(Debug, PartialEq)]
struct RowState {
    state: String,
    attempts: i32,
    reason: Option<String>,
    activity_id: Option<String>,
    next_attempt_set: bool,
}

impl Queue {
    async fn new() -> Queue {
        let db = TestDb::new().await;
        let conf = ConfigToml::new()
            .set("database", "url", &db.url)
            .set("database", "max_connections", 2u32)
            .set("constant_contact", "client_id", "id")
            .set("constant_contact", "client_secret", "secret")
            .account("default", None)
            .account("other", None)
            .write();
        Queue { db, conf }
    }

    /// `ccsync --config <file> <args>`, run to the end.
    async fn ccsync(&self, args: &[&str]) -> Output {
        Ccsync::new()
            .config(&self.conf.path)
            .args(args)
            .output()
            .await
    }

    /// `ccsync <args>`, which must exit 0.
    async fn ok(&self, args: &[&str]) -> Output {
        let o = self.ccsync(args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        o
    }

    /// Inserts a row; `age_s` seconds old (so that "newest first" is well defined).
    async fn insert(
        &self,
        account: &str,
        email: &str,
        state: OutboundState,
        attempts: i32,
        reason: Option<&str>,
        age_s: i64,
    ) -> i64 {
        let activity = matches!(state, Submitted | Completed | Failed).then_some("act-1");
        sqlx::query_scalar(
            "INSERT INTO ccsync.outbound
                 (account_id, email, state, attempts, reason, activity_id, next_attempt_at,
                  created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $3 = $8 THEN now() + interval '1 hour' END,
                     now() - make_interval(secs => $7), now() - make_interval(secs => $7))
             RETURNING id",
        )
        .bind(account)
        .bind(email)
        .bind(state.as_str())
        .bind(attempts)
        .bind(reason)
        .bind(activity)
        .bind(age_s as f64)
        .bind(Pending.as_str())
        .fetch_one(&self.db.pool)
        .await
        .expect("insert an outbound row")
    }

    async fn row(&self, id: i64) -> RowState {
        let (state, attempts, reason, activity_id, next_attempt_set): (
            String,
            i32,
            Option<String>,
            Option<String>,
            bool,
        ) = sqlx::query_as(
            "SELECT state, attempts, reason, activity_id, next_attempt_at IS NOT NULL
             FROM ccsync.outbound WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.db.pool)
        .await
        .expect("read an outbound row");
        RowState {
            state,
            attempts,
            reason,
            activity_id,
            next_attempt_set,
        }
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("an id"))
        .collect()
}

#[tokio::test]
async fn listing_filters_by_state_and_account_newest_first_as_json() {
    let q = Queue::new().await;
    let old_failed = q
        .insert("default", "a@example.com", Failed, 3, Some("bad"), 300)
        .await;
    let new_failed = q
        .insert("default", "b@example.com", Failed, 1, Some("worse"), 10)
        .await;
    let pending = q
        .insert("default", "c@example.com", Pending, 0, None, 5)
        .await;
    let other = q
        .insert("other", "d@example.com", Failed, 2, Some("bad"), 1)
        .await;

    let v = json(&q.ok(&["outbound", "--json"]).await);
    assert_eq!(ids(&v), [other, pending, new_failed, old_failed]);
    let row = &v[2];
    assert_eq!(row["account"], "default");
    assert_eq!(row["email"], "b@example.com");
    assert_eq!(row["state"], "failed");
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["reason"], "worse");
    assert_eq!(row["activity_id"], "act-1");
    assert!(row["created_at"].is_string() && row["updated_at"].is_string());

    let v = json(&q.ok(&["outbound", "--state", "failed", "--json"]).await);
    assert_eq!(ids(&v), [other, new_failed, old_failed]);
    let v = json(
        &q.ok(&[
            "outbound",
            "--state",
            "failed",
            "--account",
            "default",
            "--json",
        ])
        .await,
    );
    assert_eq!(ids(&v), [new_failed, old_failed]);
    let v = json(&q.ok(&["outbound", "--limit", "1", "--json"]).await);
    assert_eq!(ids(&v), [other]);
    let v = json(&q.ok(&["outbound", "--state", "skipped", "--json"]).await);
    assert_eq!(ids(&v), Vec::<i64>::new());

    // The table names the rows too.
    let o = q.ok(&["outbound", "--state", "pending"]).await;
    assert!(text(&o).contains("c@example.com"), "{}", text(&o));
    assert!(!text(&o).contains("a@example.com"), "{}", text(&o));
    q.db.cleanup().await;
}

#[tokio::test]
async fn an_unknown_state_is_a_usage_error_naming_the_valid_states() {
    let q = Queue::new().await;
    let o = q.ccsync(&["outbound", "--state", "done"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for s in OutboundState::ALL {
        assert!(text(&o).contains(s.as_str()), "{s} not named: {}", text(&o));
    }
    // retry needs ids or --failed, not both.
    let o = q.ccsync(&["outbound", "retry"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = q.ccsync(&["outbound", "retry", "1", "--failed"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    q.db.cleanup().await;
}

#[tokio::test]
async fn retry_requeues_failed_rows_and_leaves_the_others() {
    let q = Queue::new().await;
    let failed = q
        .insert(
            "default",
            "a@example.com",
            Failed,
            3,
            Some("failed after 3 attempts: x"),
            60,
        )
        .await;
    let pending = q
        .insert(
            "default",
            "b@example.com",
            Pending,
            1,
            Some("attempt 1 failed, will retry: x"),
            50,
        )
        .await;
    let completed = q
        .insert("default", "c@example.com", Completed, 1, None, 40)
        .await;
    let skipped = q
        .insert(
            "default",
            "d@example.com",
            Skipped,
            0,
            Some("unsubscribed"),
            30,
        )
        .await;
    let mut before = Vec::new();
    for id in [pending, completed, skipped] {
        before.push(q.row(id).await);
    }

    let (f, p, c, s) = (
        failed.to_string(),
        pending.to_string(),
        completed.to_string(),
        skipped.to_string(),
    );
    let o = q.ok(&["outbound", "retry", &f, &p, &c, &s, "999999"]).await;
    let out = text(&o);
    assert!(out.contains("requeued 1 row"), "{out}");
    assert!(out.contains(&format!("{p} (pending)")), "{out}");
    assert!(out.contains(&format!("{c} (completed)")), "{out}");
    assert!(out.contains(&format!("{s} (skipped)")), "{out}");
    assert!(out.contains("999999 (no such row)"), "{out}");

    assert_eq!(
        q.row(failed).await,
        RowState {
            state: "pending".into(),
            attempts: 0,
            reason: None,
            activity_id: None,
            next_attempt_set: false,
        }
    );
    for (id, was) in [pending, completed, skipped].into_iter().zip(before) {
        assert_eq!(q.row(id).await, was, "row {id} changed");
    }
    q.db.cleanup().await;
}

#[tokio::test]
async fn retry_failed_requeues_every_failed_row_of_the_account() {
    let q = Queue::new().await;
    let mine = [
        q.insert("default", "a@example.com", Failed, 3, Some("x"), 30)
            .await,
        q.insert("default", "b@example.com", Failed, 5, Some("y"), 20)
            .await,
    ];
    let pending = q
        .insert(
            "default",
            "c@example.com",
            Pending,
            2,
            Some("attempt 2 failed, will retry: z"),
            10,
        )
        .await;
    let theirs = q
        .insert("other", "d@example.com", Failed, 3, Some("x"), 5)
        .await;

    let o = q
        .ok(&["outbound", "retry", "--failed", "--account", "default"])
        .await;
    assert!(text(&o).contains("requeued 2 row"), "{}", text(&o));
    for id in mine {
        let r = q.row(id).await;
        assert_eq!((r.state.as_str(), r.attempts), ("pending", 0), "row {id}");
        assert_eq!(r.reason, None);
    }
    let r = q.row(pending).await;
    assert_eq!(
        (r.attempts, r.next_attempt_set),
        (2, true),
        "pending row untouched"
    );
    assert_eq!(
        q.row(theirs).await.state,
        "failed",
        "another account's row untouched"
    );

    // Without --account: every account's failed rows.
    let o = q.ok(&["outbound", "retry", "--failed"]).await;
    assert!(text(&o).contains("requeued 1 row"), "{}", text(&o));
    assert_eq!(q.row(theirs).await.state, "pending");
    q.db.cleanup().await;
}

#[tokio::test]
async fn cancel_ends_pending_rows_as_skipped_and_leaves_the_others() {
    let q = Queue::new().await;
    let pending = [
        q.insert("default", "a@example.com", Pending, 0, None, 50)
            .await,
        q.insert(
            "default",
            "b@example.com",
            Pending,
            2,
            Some("attempt 2 failed, will retry: x"),
            40,
        )
        .await,
    ];
    let submitted = q
        .insert("default", "c@example.com", Submitted, 0, None, 30)
        .await;
    let completed = q
        .insert("default", "d@example.com", Completed, 0, None, 20)
        .await;
    let failed = q
        .insert("default", "e@example.com", Failed, 3, Some("refused"), 10)
        .await;
    let others = [submitted, completed, failed];
    let mut before = Vec::new();
    for id in others {
        before.push(q.row(id).await);
    }

    let mut args = vec!["outbound".to_string(), "cancel".to_string()];
    args.extend(pending.iter().chain(&others).map(i64::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = q.ok(&args).await;
    let out = text(&o);
    assert!(out.contains("cancelled 2 row"), "{out}");
    assert!(out.contains(&format!("{submitted} (submitted)")), "{out}");
    assert!(out.contains(&format!("{completed} (completed)")), "{out}");
    assert!(out.contains(&format!("{failed} (failed)")), "{out}");

    for id in pending {
        let r = q.row(id).await;
        assert_eq!(r.state, "skipped", "row {id}");
        assert_eq!(r.reason.as_deref(), Some("cancelled by operator"));
        assert!(!r.next_attempt_set);
    }
    for (id, was) in others.into_iter().zip(before) {
        assert_eq!(q.row(id).await, was, "row {id} changed");
    }
    // Cancelling again changes nothing.
    let o = q.ok(&args).await;
    assert!(text(&o).contains("cancelled 0 row"), "{}", text(&o));
    q.db.cleanup().await;
}

#[tokio::test]
async fn status_shows_outbound_counts_and_the_most_common_reasons() {
    let q = Queue::new().await;
    // Six reasons among failed and skipped rows: counts 6, 5, 4, 3, 2 and 1.
    let reasons = [
        (Failed, "failed after 3 attempts: list not found", 6),
        (Skipped, "never re-subscribe: contact unsubscribed", 5),
        (Failed, "invalid email", 4),
        (Skipped, "cancelled by operator", 3),
        (Failed, "unknown property shoe", 2),
        (Failed, "the rarest reason", 1),
    ];
    let mut n = 0;
    for (state, reason, count) in reasons {
        for _ in 0..count {
            n += 1;
            q.insert(
                "default",
                &format!("r{n}@example.com"),
                state,
                3,
                Some(reason),
                n,
            )
            .await;
        }
    }
    q.insert("default", "p@example.com", Pending, 0, None, 1)
        .await;
    q.insert("default", "p2@example.com", Pending, 0, None, 1)
        .await;
    q.insert("other", "o@example.com", Completed, 0, None, 1)
        .await;

    let v = json(&q.ok(&["status", "--json"]).await);
    let outbound = v["outbound"].as_array().expect("outbound per account");
    let default = outbound
        .iter()
        .find(|a| a["account"] == "default")
        .expect("the default account");
    assert_eq!(default["by_state"]["failed"], 13);
    assert_eq!(default["by_state"]["skipped"], 8);
    assert_eq!(default["by_state"]["pending"], 2);
    let top: Vec<(String, String, i64)> = default["top_reasons"]
        .as_array()
        .expect("top_reasons")
        .iter()
        .map(|r| {
            (
                r["state"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
                r["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, i64)> = reasons[..5]
        .iter()
        .map(|(s, r, n)| (s.as_str().to_string(), r.to_string(), *n))
        .collect();
    assert_eq!(top, expected);
    let other = outbound
        .iter()
        .find(|a| a["account"] == "other")
        .expect("the other account");
    assert_eq!(other["by_state"]["completed"], 1);
    assert_eq!(other["top_reasons"], serde_json::json!([]));

    let o = q.ok(&["status"]).await;
    let out = text(&o);
    assert!(out.contains("outbound default:"), "{out}");
    assert!(
        out.contains("failed after 3 attempts: list not found"),
        "{out}"
    );
    assert!(!out.contains("the rarest reason"), "{out}");
    q.db.cleanup().await;
}
