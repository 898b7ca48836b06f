//! Custom fields by name: the sandbox's `GET /contact_custom_fields`, the catalogue synced
//! into `ccsync.custom_fields` by the lists job, the `contacts_custom_fields` view, and the
//! push validating `cf:<name>` against the catalogue and confirming the values by id.

use std::collections::HashSet;
use std::time::Duration;

use ccsync::sandbox::SandboxConfig;
use ccsync::sync::{self, Job, Outcome};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::Harness;
use crate::sandbox_api;
use crate::schema::assert_valid;

#[tokio::test]
async fn the_sandbox_lists_custom_fields_in_spec_shape_paged_by_limit() {
    let env = sandbox_api::start(3, 2).await;
    let ctl = env.sb.default_account();
    let generated = ctl.custom_fields().len();
    for i in 0..7 {
        ctl.create_custom_field(&format!("extra_{i}"), &format!("Extra {i}"), "string");
    }
    let total = generated + 7;
    // Default page: everything (fewer than 50).
    let v = env
        .get_ok("/v3/contact_custom_fields", "CustomFields")
        .await;
    assert_eq!(v["custom_fields"].as_array().map(Vec::len), Some(total));
    assert!(v.get("_links").is_none(), "{v}");
    let one = &v["custom_fields"][0];
    for k in [
        "custom_field_id",
        "label",
        "name",
        "type",
        "created_at",
        "updated_at",
    ] {
        assert!(one.get(k).is_some(), "{k} missing in {one}");
    }
    // Paged by 3 through `_links.next.href`: every definition once.
    let mut seen: Vec<String> = Vec::new();
    let mut next = Some("/v3/contact_custom_fields?limit=3".to_string());
    let mut pages = 0;
    while let Some(url) = next.take() {
        let page = env.get_ok(&url, "CustomFields").await;
        let items = page["custom_fields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|c| c["custom_field_id"].as_str().unwrap().to_string()),
        );
        next = page["_links"]["next"]["href"].as_str().map(str::to_string);
        pages += 1;
    }
    assert_eq!(pages, total.div_ceil(3));
    assert_eq!(seen.len(), total);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), total);
    // A deleted definition is gone from the listing.
    let (gone, _) = ctl.custom_fields()[0].clone();
    ctl.delete_custom_field(gone);
    let v = env
        .get_ok("/v3/contact_custom_fields?limit=100", "CustomFields")
        .await;
    let ids: Vec<&str> = v["custom_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["custom_field_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), total - 1);
    assert!(!ids.contains(&gone.to_string().as_str()));
    for bad in ["limit=0", "limit=101", "limit=x", "cursor=not-a-cursor"] {
        let (status, body) = env.get(&format!("/v3/contact_custom_fields?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_valid("APIErrorSchema", &body);
    }
    env.sb.shutdown();
}

/// A harness whose sandbox processes imports quickly, with fast polling.
async fn harness(contacts: usize) -> Harness {
    let cfg = SandboxConfig {
        contacts,
        import_processing: Duration::from_millis(30),
        ..SandboxConfig::default()
    };
    Harness::start(cfg, |s| {
        s.sync.poll_initial = Duration::from_millis(20);
        s.sync.poll_max = Duration::from_millis(80);
    })
    .await
}

/// The local catalogue as (id, name, label, type), ordered by id.
async fn catalogue(h: &Harness) -> Vec<(Uuid, String, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT custom_field_id, name, label, type FROM ccsync.custom_fields
         WHERE account_id = 'default' ORDER BY custom_field_id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap()
}

fn sandbox_catalogue(h: &Harness) -> Vec<(Uuid, String)> {
    let mut v = h.ctl.custom_fields();
    v.sort();
    v
}

/// `sync --job push`: the pulls (lists, hence the catalogue, among them), then the push;
/// panics unless every job succeeded. Returns the push's stats.
async fn push_ok(h: &Harness) -> Value {
    let reports = sync::run_cycle(&h.ctx, &h.settings.accounts, &[Job::Push]).await;
    for r in &reports {
        assert!(
            matches!(r.outcome, Outcome::Succeeded(_)),
            "{} did not succeed: {:?}",
            r.job,
            r.outcome
        );
    }
    match &reports.last().map(|r| &r.outcome) {
        Some(Outcome::Succeeded(s)) => s.clone(),
        other => panic!("no push report: {other:?}"),
    }
}

async fn state_of(h: &Harness, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, reason FROM ccsync.outbound WHERE id = $1")
        .bind(id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

/// The sandbox's value of custom field `cf` on the contact with `email`.
fn sandbox_value(h: &Harness, email: &str, cf: Uuid) -> Option<String> {
    let c = h.ctl.contact_by_email(email)?;
    c["custom_fields"]
        .as_array()?
        .iter()
        .find(|f| f["custom_field_id"] == cf.to_string())
        .and_then(|f| f["value"].as_str().map(str::to_string))
}

#[tokio::test]
async fn the_catalogue_syncs_every_page_into_the_table_and_a_deleted_definition_disappears() {
    let h = harness(3).await;
    // More than one page of 100 (the API's maximum page size).
    for i in 0..120 {
        h.ctl
            .create_custom_field(&format!("field_{i:03}"), &format!("Field {i:03}"), "string");
    }
    let stats = h.run_ok(Job::Lists).await;
    let total = sandbox_catalogue(&h).len();
    assert_eq!(stats["custom_fields"]["pages"], 2, "{stats}");
    assert_eq!(stats["custom_fields"]["seen"], total as u64, "{stats}");
    assert_eq!(stats["custom_fields"]["written"], total as u64, "{stats}");
    let local = catalogue(&h).await;
    let ids_names: Vec<(Uuid, String)> = local.iter().map(|(i, n, _, _)| (*i, n.clone())).collect();
    assert_eq!(ids_names, sandbox_catalogue(&h));
    let f7 = local.iter().find(|r| r.1 == "field_007").unwrap();
    assert_eq!(
        (f7.2.as_deref(), f7.3.as_deref()),
        (Some("Field 007"), Some("string"))
    );
    // Idempotent: nothing rewritten.
    let stats = h.run_ok(Job::Lists).await;
    assert_eq!(stats["custom_fields"]["written"], 0, "{stats}");
    assert_eq!(stats["custom_fields"]["removed"], 0, "{stats}");
    // A definition deleted in Constant Contact goes; its name may come back on a new id.
    let gone = sandbox_catalogue(&h)
        .into_iter()
        .find(|(_, n)| n == "field_042")
        .unwrap()
        .0;
    h.ctl.delete_custom_field(gone);
    let reborn = h.ctl.create_custom_field("field_042", "Field 042", "date");
    let stats = h.run_ok(Job::Lists).await;
    assert_eq!(stats["custom_fields"]["removed"], 1, "{stats}");
    assert_eq!(stats["custom_fields"]["written"], 1, "{stats}");
    let local = catalogue(&h).await;
    assert!(local.iter().all(|r| r.0 != gone));
    let again = local.iter().find(|r| r.1 == "field_042").unwrap();
    assert_eq!((again.0, again.3.as_deref()), (reborn, Some("date")));
    assert_eq!(local.len(), total);
    h.finish().await;
}

#[tokio::test]
async fn the_view_shows_a_contacts_custom_field_values_by_name() {
    let h = harness(0).await;
    let list = h.ctl.create_list("Members");
    let shoe = h
        .ctl
        .create_custom_field("shoe_size", "Shoe size", "string");
    let hat = h.ctl.create_custom_field("hat_size", "Hat size", "string");
    let ann = h
        .ctl
        .create_contact("ann@example.com", Some("Ann"), &[list]);
    h.ctl.set_custom_field(ann, shoe, Some("38"));
    h.ctl.set_custom_field(ann, hat, Some("M"));
    let bob = h
        .ctl
        .create_contact("bob@example.com", Some("Bob"), &[list]);
    h.ctl.set_custom_field(bob, shoe, Some("44"));
    h.run_ok(Job::Contacts).await;
    h.run_ok(Job::Lists).await;
    let rows: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT contact_id, name, label, value FROM ccsync.contacts_custom_fields
         WHERE account_id = 'default' ORDER BY contact_id = $1 DESC, name",
    )
    .bind(ann)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                ann,
                "hat_size".into(),
                Some("Hat size".into()),
                Some("M".into())
            ),
            (
                ann,
                "shoe_size".into(),
                Some("Shoe size".into()),
                Some("38".into())
            ),
            (
                bob,
                "shoe_size".into(),
                Some("Shoe size".into()),
                Some("44".into())
            ),
        ]
    );
    // A deleted contact is not shown.
    h.ctl.delete_contact(bob);
    h.run_ok(Job::Deletes).await;
    let n = h
        .count("SELECT count(*) FROM ccsync.contacts_custom_fields WHERE name = 'shoe_size'")
        .await;
    assert_eq!(n, 1);
    h.finish().await;
}

#[tokio::test]
async fn a_row_naming_an_unknown_custom_field_fails_naming_it_while_a_valid_row_completes() {
    let h = harness(0).await;
    let list = h.ctl.create_list("Members");
    let shoe = h
        .ctl
        .create_custom_field("shoe_size", "Shoe size", "string");
    let bad = h
        .queue(
            "bad@example.com",
            json!({"first_name": "Bad", "cf:hat_size": "7"}),
            &[list],
        )
        .await;
    let good = h
        .queue(
            "good@example.com",
            json!({"first_name": "Good", "cf:shoe_size": "44"}),
            &[list],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["failed_invalid"], 1, "{stats}");
    let (state, reason) = state_of(&h, bad).await;
    assert_eq!(state, "failed");
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("fields.cf:hat_size") && reason.contains("no custom field named hat_size"),
        "{reason}"
    );
    assert_eq!(state_of(&h, good).await.0, "completed");
    assert_eq!(
        sandbox_value(&h, "good@example.com", shoe).as_deref(),
        Some("44")
    );
    // The invalid row was never sent.
    assert!(h.ctl.contact_by_email("bad@example.com").is_none());
    h.finish().await;
}

#[tokio::test]
async fn a_pushed_custom_field_is_completed_only_when_constant_contact_shows_its_value() {
    let h = harness(0).await;
    let list = h.ctl.create_list("Members");
    let shoe = h
        .ctl
        .create_custom_field("shoe_size", "Shoe size", "string");
    let hat = h.ctl.create_custom_field("hat_size", "Hat size", "string");
    // The import accepts cf:hat_size and stores nothing, naming nothing: only the value
    // read back after the import can show it missing.
    h.ctl.drop_custom_field_silently(hat);
    let lost = h
        .queue(
            "lost@example.com",
            json!({"first_name": "Lost", "cf:hat_size": "7"}),
            &[list],
        )
        .await;
    let kept = h
        .queue(
            "kept@example.com",
            json!({"first_name": "Kept", "cf:shoe_size": "44"}),
            &[list],
        )
        .await;
    let stats = push_ok(&h).await;
    assert_eq!(stats["batches_submitted"], 1, "{stats}");
    let (state, reason) = state_of(&h, lost).await;
    assert_eq!(state, "failed", "{reason:?}");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("cf:hat_size not applied"), "{reason}");
    // The rest of that row did arrive: only the custom field is missing.
    assert!(h.ctl.contact_by_email("lost@example.com").is_some());
    assert_eq!(state_of(&h, kept).await.0, "completed");
    assert_eq!(
        sandbox_value(&h, "kept@example.com", shoe).as_deref(),
        Some("44")
    );
    h.finish().await;
}

#[tokio::test]
async fn a_custom_field_changed_in_constant_contact_drops_only_that_cf_property() {
    let h = harness(0).await;
    let list = h.ctl.create_list("Members");
    let shoe = h
        .ctl
        .create_custom_field("shoe_size", "Shoe size", "string");
    let hat = h.ctl.create_custom_field("hat_size", "Hat size", "string");
    let id = h.ctl.create_contact("cf@example.com", Some("Cf"), &[list]);
    h.run_ok(Job::Contacts).await;
    let row = h
        .queue(
            "cf@example.com",
            json!({"cf:shoe_size": "40", "cf:hat_size": "L"}),
            &[list],
        )
        .await;
    // Constant Contact changes one of the two fields after the row was queued.
    h.ctl.set_custom_field(id, shoe, Some("41"));
    let stats = push_ok(&h).await;
    assert_eq!(stats["conflicts"], 1, "{stats}");
    assert_eq!(state_of(&h, row).await.0, "completed");
    assert_eq!(
        sandbox_value(&h, "cf@example.com", shoe).as_deref(),
        Some("41")
    );
    assert_eq!(
        sandbox_value(&h, "cf@example.com", hat).as_deref(),
        Some("L")
    );
    let (old, new): (Value, Value) = sqlx::query_as(
        "SELECT old_value, new_value FROM ccsync.changes
         WHERE kind = 'conflict' AND field = 'cf:shoe_size' AND origin = 'local'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(old, json!("41"));
    assert_eq!(new["value"], "40");
    h.finish().await;
}
