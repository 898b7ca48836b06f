//! The sandbox's write path over real HTTP: `PUT /v3/contacts/{id}`, `contact_delete`,
//! the membership switch, request triggers and the write-path control API.

use std::time::Duration;

use ccsync::sandbox::{CoreField, SubscriberAction, Trigger};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::eventually;
use crate::sandbox_api::{start, Env};
use crate::schema::assert_valid;

const ALL: &str =
    "include=custom_fields,list_memberships,phone_numbers,street_addresses,taggings,notes";
const DEADLINE: Duration = Duration::from_secs(30);

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a date-time: {v}"))
}

async fn put(env: &Env, id: Uuid, body: &Value) -> (StatusCode, Value) {
    let resp = env
        .http
        .put(format!("{}/contacts/{id}", env.sb.api_base()))
        .bearer_auth(&env.token)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// A PUT that must answer 200 with a valid `ContactResource`; the body must be a valid
/// `ContactPutRequest` too (so that the tests exercise what a correct client sends).
async fn put_ok(env: &Env, id: Uuid, body: &Value) -> Value {
    assert_valid("ContactPutRequest", body);
    let (status, v) = put(env, id, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_valid("ContactResource", &v);
    v
}

/// A PUT that must answer `want` with the usual error array; returns the message.
async fn put_err(env: &Env, id: Uuid, body: &Value, want: StatusCode) -> String {
    let (status, v) = put(env, id, body).await;
    assert_eq!(status, want, "{v}");
    assert_valid("APIErrorSchema", &v);
    v[0]["error_message"]
        .as_str()
        .expect("error_message")
        .to_string()
}

fn address(c: &Value) -> String {
    c["email_address"]["address"]
        .as_str()
        .expect("address")
        .to_string()
}

async fn contact(env: &Env, id: Uuid) -> Value {
    env.get_ok(&format!("/v3/contacts/{id}?{ALL}"), "ContactResource")
        .await
}

/// Polls the activity until it is terminal (every body valid against `Activity`).
async fn finished(env: &Env, href: &str) -> Value {
    eventually("the activity to finish", DEADLINE, || async {
        let v = env.get_ok(href, "Activity").await;
        (!matches!(v["state"].as_str(), Some("initialized" | "processing"))).then_some(v)
    })
    .await
}

fn control(env: &Env, path: &str) -> String {
    format!("http://{}/__control/accounts/default{path}", env.sb.addr())
}

#[tokio::test]
async fn put_overwrites_core_fields_and_replaces_only_sent_sub_resources() {
    let env = start(40, 3).await;
    let acct = env.sb.default_account();
    // A generated contact with a last name, memberships and custom fields.
    let id = acct
        .contact_ids()
        .into_iter()
        .find(|id| {
            let c = acct.contact(*id).expect("c");
            c["last_name"].is_string()
                && !c["list_memberships"].as_array().expect("lm").is_empty()
                && !c["custom_fields"].as_array().expect("cf").is_empty()
        })
        .expect("a contact with a last name, lists and custom fields");
    let before = contact(&env, id).await;
    env.sb.advance_clock(chrono::Duration::seconds(1));
    let body = json!({
        "update_source": "Account",
        "email_address": {"address": address(&before)},
        "first_name": "Overwritten",
        "phone_numbers": [{"phone_number": "555-0199", "kind": "mobile"}],
    });
    let resp = put_ok(&env, id, &body).await;
    assert_eq!(resp["first_name"], "Overwritten");
    let after = contact(&env, id).await;
    for field in [
        "last_name",
        "job_title",
        "company_name",
        "birthday_month",
        "anniversary",
    ] {
        assert!(
            after[field].is_null(),
            "{field} left out must be null: {after}"
        );
    }
    assert_eq!(after["update_source"], "Account");
    assert_eq!(after["list_memberships"], before["list_memberships"]);
    assert_eq!(after["custom_fields"], before["custom_fields"]);
    let phones = after["phone_numbers"].as_array().expect("phones");
    assert_eq!(phones.len(), 1, "{phones:?}");
    assert_eq!(phones[0]["phone_number"], "555-0199");
    assert_eq!(phones[0]["kind"], "mobile");
    assert!(ts(&after["updated_at"]) > ts(&before["updated_at"]));
    // Neither address nor permission changed.
    assert_eq!(
        after["email_address"]["updated_at"],
        before["email_address"]["updated_at"]
    );
    // Sent sub-resources replaced, including to empty.
    let body = json!({
        "update_source": "Account",
        "email_address": {"address": address(&before)},
        "list_memberships": [],
    });
    put_ok(&env, id, &body).await;
    assert!(acct.memberships(id).is_empty());
    assert_eq!(
        contact(&env, id).await["phone_numbers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn put_refuses_bad_bodies_unknown_ids_and_taken_addresses() {
    let env = start(5, 1).await;
    let acct = env.sb.default_account();
    let ids = acct.contact_ids();
    let (id, other) = (ids[0], ids[1]);
    let addr = address(&acct.contact(id).expect("c"));
    let other_addr = address(&acct.contact(other).expect("c"));
    let ok = json!({"update_source": "Account", "email_address": {"address": addr}});
    let bad = StatusCode::BAD_REQUEST;
    let msg = put_err(&env, id, &json!({"email_address": {"address": addr}}), bad).await;
    assert!(msg.contains("update_source"), "{msg}");
    let msg = put_err(&env, id, &json!({"update_source": "Account"}), bad).await;
    assert!(msg.contains("email_address"), "{msg}");
    let mut long = ok.clone();
    long["first_name"] = json!("x".repeat(51));
    let msg = put_err(&env, id, &long, bad).await;
    assert!(msg.contains("first_name"), "{msg}");
    let mut typo = ok.clone();
    typo["firstname"] = json!("Typo");
    let msg = put_err(&env, id, &typo, bad).await;
    assert!(msg.contains("firstname"), "{msg}");
    put_err(&env, Uuid::new_v4(), &ok, StatusCode::NOT_FOUND).await;
    let taken = json!({"update_source": "Account", "email_address": {"address": other_addr}});
    put_err(&env, id, &taken, StatusCode::CONFLICT).await;
    // Nothing changed; the log has every PUT.
    assert_eq!(address(&acct.contact(id).expect("c")), addr);
    let puts = env
        .sb
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with("/v3/contacts/"))
        .count();
    assert_eq!(puts, 6);
    // Faults apply to PUT like to every endpoint.
    env.sb.inject(ccsync::sandbox::Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 503,
        times: 1,
    });
    assert_eq!(put(&env, id, &ok).await.0, StatusCode::SERVICE_UNAVAILABLE);
    put_ok(&env, id, &ok).await;
}

#[tokio::test]
async fn put_unsubscribe_sets_opt_out_and_a_put_back_is_a_resubscription() {
    let env = start(5, 1).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[0];
    acct.resubscribe(id); // explicit, whatever the generator chose
    let start_log = acct.resubscriptions().len();
    let before = contact(&env, id).await;
    env.sb.advance_clock(chrono::Duration::seconds(1));
    let unsub = json!({
        "update_source": "Contact",
        "email_address": {"address": address(&before), "permission_to_send": "unsubscribed",
                          "opt_out_reason": "asked by phone"},
        "first_name": before["first_name"],
    });
    let v = put_ok(&env, id, &unsub).await;
    let e = &v["email_address"];
    assert_eq!(e["permission_to_send"], "unsubscribed");
    assert_eq!(e["opt_out_source"], "Contact");
    assert_eq!(e["opt_out_reason"], "asked by phone");
    assert!(ts(&e["opt_out_date"]) <= env.sb.now());
    assert!(ts(&e["opt_out_date"]) > ts(&before["email_address"]["updated_at"]));
    assert!(ts(&e["updated_at"]) > ts(&before["email_address"]["updated_at"]));
    assert_eq!(acct.resubscriptions().len(), start_log);

    env.sb.advance_clock(chrono::Duration::seconds(1));
    let back = json!({
        "update_source": "Account",
        "email_address": {"address": address(&before), "permission_to_send": "implicit"},
    });
    let v = put_ok(&env, id, &back).await;
    assert_eq!(v["email_address"]["permission_to_send"], "implicit");
    assert!(v["email_address"]["opt_out_source"].is_null());
    let log = acct.resubscriptions();
    assert_eq!(log.len(), start_log + 1, "{log:?}");
    assert_eq!(log[start_log].0, id);
    assert_eq!(log[start_log].1, ts(&v["email_address"]["updated_at"]));
    // The same log over the control API.
    let over_http: Value = env
        .http
        .get(control(&env, "/resubscriptions"))
        .send()
        .await
        .expect("control")
        .json()
        .await
        .expect("json");
    assert_eq!(over_http[start_log]["contact_id"], id.to_string());
}

#[tokio::test]
async fn put_revives_a_deleted_contact_only_with_update_source_account() {
    let env = start(5, 1).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[0];
    let addr = address(&acct.contact(id).expect("c"));
    acct.delete_contact(id);
    let as_contact = json!({"update_source": "Contact", "email_address": {"address": addr}});
    let msg = put_err(&env, id, &as_contact, StatusCode::BAD_REQUEST).await;
    assert!(msg.contains("Account"), "{msg}");
    assert!(acct.contact(id).expect("c")["deleted_at"].is_string());
    assert!(acct.revivals().is_empty());
    let as_account = json!({"update_source": "Account", "email_address": {"address": addr}});
    let v = put_ok(&env, id, &as_account).await;
    assert!(v["deleted_at"].is_null(), "{v}");
    assert_eq!(
        acct.revivals().iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![id]
    );
    let listed = env
        .get_ok(&format!("/v3/contacts?email={addr}"), "Contacts")
        .await;
    assert_eq!(listed["contacts"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn contact_delete_runs_to_completed_and_deleted_contacts_stay_readable() {
    let env = start(20, 2).await;
    let acct = env.sb.default_account();
    let ids = acct.contact_ids();
    let (a, b) = (ids[0], ids[1]);
    acct.join_list(a, acct.list_ids()[0]);
    let before = acct.contact(a).expect("a");
    let unknown = Uuid::new_v4();
    let body = json!({"contact_ids": [a, b, unknown]});
    assert_valid("ContactDelete", &body);
    env.sb.advance_clock(chrono::Duration::seconds(1));
    let (status, created) = env.post("/v3/activities/contact_delete", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_valid("ActivityDeleteStatus", &created);
    assert_eq!(created["state"], "initialized");
    assert_eq!(created["status"]["items_total_count"], 3);
    let href = created["_links"]["self"]["href"].as_str().expect("href");
    let done = finished(&env, href).await;
    assert_eq!(done["state"], "completed", "{done}");
    let errors = done["activity_errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0]
        .as_str()
        .expect("string")
        .contains(&unknown.to_string()));

    let c = contact(&env, a).await;
    let today = env.sb.now().date_naive().to_string();
    assert_eq!(c["deleted_at"], today.as_str());
    assert_eq!(c["list_memberships"], json!([]));
    assert!(ts(&c["updated_at"]) > ts(&before["updated_at"]));
    let addr = address(&c);
    let all = env
        .get_ok(&format!("/v3/contacts?email={addr}&status=all"), "Contacts")
        .await;
    assert_eq!(all["contacts"][0]["deleted_at"], today.as_str());
    let default = env
        .get_ok(&format!("/v3/contacts?email={addr}"), "Contacts")
        .await;
    assert_eq!(default["contacts"], json!([]));
    let listed = env.get_ok("/v3/activities", "Activities").await;
    assert!(listed["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .any(|x| x["activity_id"] == created["activity_id"]));

    // By list: every member goes; list_count reported.
    let list = acct.list_ids()[1];
    let c_id = ids[5];
    acct.join_list(c_id, list);
    let (status, created) = env
        .post(
            "/v3/activities/contact_delete",
            &json!({"list_ids": [list]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_valid("ActivityDeleteStatus", &created);
    assert_eq!(created["status"]["list_count"], 1);
    let done = finished(
        &env,
        created["_links"]["self"]["href"].as_str().expect("href"),
    )
    .await;
    assert_eq!(done["state"], "completed");
    assert!(acct.contact(c_id).expect("c")["deleted_at"].is_string());

    // contact_ids xor list_ids; limits from the descriptions (500 / 50).
    for bad in [
        json!({"contact_ids": [a], "list_ids": [list]}),
        json!({}),
        json!({"contact_ids": []}),
        json!({"contact_ids": (0..501).map(|_| Uuid::new_v4()).collect::<Vec<_>>()}),
        json!({"list_ids": (0..51).map(|_| Uuid::new_v4()).collect::<Vec<_>>()}),
    ] {
        let (status, v) = env.post("/v3/activities/contact_delete", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_valid("APIErrorSchema", &v);
    }
    let max = json!({"contact_ids": (0..500).map(|_| Uuid::new_v4()).collect::<Vec<_>>()});
    assert_eq!(
        env.post("/v3/activities/contact_delete", &max).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn membership_changes_bump_updated_at_only_when_switched_on() {
    let env = start(10, 2).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[0];
    let list = acct.list_ids()[0];
    acct.resubscribe(id);
    let updated = || ts(&acct.contact(id).expect("c")["updated_at"]);

    // Default: memberships move nothing.
    let t0 = updated();
    env.sb.advance_clock(chrono::Duration::seconds(1));
    acct.join_list(id, list);
    acct.leave_list(id, list);
    assert_eq!(updated(), t0);

    acct.set_membership_moves_updated_at(true);
    env.sb.advance_clock(chrono::Duration::seconds(1));
    acct.join_list(id, list);
    let t1 = updated();
    assert!(t1 > t0);
    env.sb.advance_clock(chrono::Duration::seconds(1));
    let (status, created) = env
        .post(
            "/v3/activities/remove_list_memberships",
            &json!({"source": {"contact_ids": [id]}, "list_ids": [list]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    finished(
        &env,
        created["_links"]["self"]["href"].as_str().expect("href"),
    )
    .await;
    assert!(!acct.memberships(id).contains(&list));
    let t2 = updated();
    assert!(t2 > t1);

    // Switched off again over the control API.
    let resp = env
        .http
        .post(control(&env, "/membership_moves_updated_at"))
        .json(&json!({"on": false}))
        .send()
        .await
        .expect("control");
    assert_eq!(resp.status(), StatusCode::OK);
    env.sb.advance_clock(chrono::Duration::seconds(1));
    let (status, created) = env
        .post(
            "/v3/activities/add_list_memberships",
            &json!({"source": {"contact_ids": [id]}, "list_ids": [list]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    finished(
        &env,
        created["_links"]["self"]["href"].as_str().expect("href"),
    )
    .await;
    assert!(acct.memberships(id).contains(&list));
    assert_eq!(updated(), t2);
}

#[tokio::test]
async fn a_trigger_acts_once_just_before_the_matching_request() {
    let env = start(10, 2).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[0];
    acct.resubscribe(id);
    let addr = address(&acct.contact(id).expect("c"));
    let trig = acct.on_request(Trigger::new(
        "PUT",
        "/v3/contacts/",
        SubscriberAction::Unsubscribe {
            contact_id: id,
            reason: Some("between read and write".into()),
        },
    ));
    // A read of the same path does not match.
    let read = contact(&env, id).await;
    assert_eq!(read["email_address"]["permission_to_send"], "explicit");
    assert!(!acct.trigger_fired(trig));
    // The write (which leaves the permission out, so keeps what it finds) sees the
    // unsubscribe that happened just before it.
    let body = json!({"update_source": "Account", "email_address": {"address": addr},
                      "first_name": "Written"});
    let v = put_ok(&env, id, &body).await;
    assert!(acct.trigger_fired(trig));
    assert_eq!(v["email_address"]["permission_to_send"], "unsubscribed");
    assert_eq!(v["email_address"]["opt_out_reason"], json!(null));
    assert_eq!(v["first_name"], "Written");
    // One-shot: after a resubscribe, a second PUT is not preceded by another unsubscribe.
    acct.resubscribe(id);
    let v = put_ok(&env, id, &body).await;
    assert_eq!(v["email_address"]["permission_to_send"], "explicit");
}

#[tokio::test]
async fn a_trigger_installed_over_http_matches_the_query_and_the_nth_request() {
    let env = start(10, 2).await;
    let acct = env.sb.default_account();
    let ids = acct.contact_ids();
    let (id, other) = (ids[0], ids[1]);
    let list = acct.list_ids()[0];
    acct.join_list(id, list);
    let addr = address(&acct.contact(id).expect("c"));
    let trigger = Trigger::new(
        "GET",
        "/contacts",
        SubscriberAction::LeaveList {
            contact_id: id,
            list_id: list,
        },
    )
    .query_contains("email=")
    .nth(2);
    let resp: Value = env
        .http
        .post(control(&env, "/triggers"))
        .json(&trigger)
        .send()
        .await
        .expect("install")
        .json()
        .await
        .expect("json");
    let tid = resp["trigger_id"].as_u64().expect("trigger_id");
    let fired = || async {
        let v: Value = env
            .http
            .get(control(&env, &format!("/triggers/{tid}")))
            .send()
            .await
            .expect("state")
            .json()
            .await
            .expect("json");
        v["fired"].as_bool().expect("fired")
    };
    let query = format!("/v3/contacts?email={addr}&include=list_memberships");
    env.get_ok("/v3/contacts?include=list_memberships", "Contacts")
        .await;
    let first = env.get_ok(&query, "Contacts").await;
    let on_list = |page: &Value| {
        page["contacts"][0]["list_memberships"]
            .as_array()
            .expect("list_memberships")
            .contains(&json!(list))
    };
    assert!(on_list(&first), "{first}");
    assert!(!fired().await);
    let second = env.get_ok(&query, "Contacts").await;
    assert!(fired().await);
    assert!(!on_list(&second), "{second}");
    // A SetField trigger (core field, bumps updated_at) over the Rust API.
    let t = acct.on_request(Trigger::new(
        "GET",
        "/v3/contacts/",
        SubscriberAction::SetField {
            contact_id: other,
            field: CoreField::JobTitle,
            value: json!("Set by trigger"),
        },
    ));
    let v = env
        .get_ok(&format!("/v3/contacts/{other}"), "ContactResource")
        .await;
    assert!(acct.trigger_fired(t));
    assert_eq!(v["job_title"], "Set by trigger");
}

#[tokio::test]
async fn a_refused_row_can_count_as_correctable() {
    let env = start(3, 1).await;
    let acct = env.sb.default_account();
    let list = acct.list_ids()[0];
    let resp = env
        .http
        .post(control(&env, "/refusals"))
        .json(&json!({"email": "Fixable@Example.com", "count_as": "correctable"}))
        .send()
        .await
        .expect("control");
    assert_eq!(resp.status(), StatusCode::OK);
    acct.refuse_silently("broken@example.com");
    let body = json!({"import_data": [
        {"email": "fixable@example.com"}, {"email": "broken@example.com"}, {"email": "fine@example.com"}
    ], "list_ids": [list]});
    let (status, created) = env.post("/v3/activities/contacts_json_import", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let done = finished(
        &env,
        created["_links"]["self"]["href"].as_str().expect("href"),
    )
    .await;
    assert_eq!(done["status"]["correctable_count"], 1, "{done}");
    assert_eq!(done["status"]["error_count"], 1, "{done}");
    assert_eq!(done["status"]["person_count"], 1, "{done}");
    assert_eq!(done["activity_errors"], json!([]));
    assert!(acct.contact_by_email("fixable@example.com").is_none());
}
