//! The sandbox (local CC V3 fake) over real HTTP: OAuth, contacts, lists, limits, faults.

use std::collections::HashSet;
use std::time::Duration;

use ccsync::sandbox::{Fault, Sandbox, SandboxConfig};
use chrono::{DateTime, Utc};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::schema::assert_valid;

pub(crate) struct Env {
    pub sb: Sandbox,
    pub http: Client,
    pub token: String,
}

pub(crate) async fn start(contacts: usize, lists: usize) -> Env {
    let sb = Sandbox::start(SandboxConfig {
        contacts,
        lists,
        seed: 7,
        ..Default::default()
    })
    .await
    .expect("sandbox starts");
    let http = Client::new();
    let rt = sb.default_account().seed_refresh_token();
    let (status, body) = refresh(&http, &sb, &rt, "sandbox-secret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    Env { sb, http, token }
}

async fn refresh(http: &Client, sb: &Sandbox, rt: &str, secret: &str) -> (StatusCode, Value) {
    let resp = http
        .post(sb.token_url())
        .basic_auth("ccsync-sandbox", Some(secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
        .send()
        .await
        .expect("token request");
    let status = resp.status();
    (status, resp.json().await.expect("token body is JSON"))
}

impl Env {
    fn url(&self, path_and_query: &str) -> String {
        // path_and_query starts with /v3/...
        format!("http://{}{}", self.sb.addr(), path_and_query)
    }

    pub async fn get(&self, path_and_query: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url(path_and_query))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    /// GET that must answer 200 with a body valid against `definition`.
    pub async fn get_ok(&self, path_and_query: &str, definition: &str) -> Value {
        let (status, v) = self.get(path_and_query).await;
        assert_eq!(status, StatusCode::OK, "{path_and_query}: {v}");
        assert_valid(definition, &v);
        v
    }

    /// Follows `_links.next.href` through every page.
    pub async fn all_contacts(&self, first: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(url) = next.take() {
            let page = self.get_ok(&url, "Contacts").await;
            out.extend(page["contacts"].as_array().cloned().unwrap_or_default());
            next = page["_links"]["next"]["href"].as_str().map(str::to_string);
        }
        out
    }
}

fn ids(contacts: &[Value]) -> Vec<String> {
    contacts
        .iter()
        .map(|c| c["contact_id"].as_str().expect("contact_id").to_string())
        .collect()
}

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a date-time: {v}"))
}

fn fmt(d: DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn jwt_exp(token: &str) -> i64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT has 3 parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let v: Value = serde_json::from_slice(&bytes).expect("JSON payload");
    v["exp"].as_i64().expect("exp claim")
}

#[tokio::test]
async fn token_refresh_rotates_and_rejects_reuse() {
    let sb = Sandbox::start(SandboxConfig {
        contacts: 3,
        ..Default::default()
    })
    .await
    .expect("start");
    let http = Client::new();
    let rt1 = sb.default_account().seed_refresh_token();

    let (status, body) = refresh(&http, &sb, &rt1, "wrong-secret").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    let (status, body) = refresh(&http, &sb, &rt1, "sandbox-secret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 86400);
    assert_eq!(body["scope"], "contact_data offline_access");
    let at = body["access_token"].as_str().expect("access_token");
    let exp = jwt_exp(at);
    let expect = sb.now().timestamp() + 86400;
    assert!((exp - expect).abs() <= 5, "exp {exp} vs {expect}");
    let rt2 = body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_string();
    assert_ne!(rt2, rt1);

    // The used token is gone; the new one works once.
    let (status, body) = refresh(&http, &sb, &rt1, "sandbox-secret").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "The refresh token is invalid or expired."
    );
    let (status, _) = refresh(&http, &sb, &rt2, "sandbox-secret").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = refresh(&http, &sb, &rt2, "sandbox-secret").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(sb.token_requests(), 5);

    // The access token works until it expires (sandbox clock).
    let resp = http
        .get(format!("{}/contacts", sb.api_base()))
        .bearer_auth(at)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    sb.advance_clock(chrono::Duration::hours(25));
    let resp = http
        .get(format!("{}/contacts", sb.api_base()))
        .bearer_auth(at)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert_valid("AuthorizationErrorSchema", &body);
}

#[tokio::test]
async fn v3_needs_a_bearer_token() {
    let env = start(3, 2).await;
    for auth in [None, Some("Bearer nope"), Some("Basic abc")] {
        let mut req = env.http.get(format!("{}/contacts", env.sb.api_base()));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.expect("get");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(
            body,
            serde_json::json!({"error_key":"unauthorized","error_message":"Unauthorized"})
        );
        assert_valid("AuthorizationErrorSchema", &body);
    }
    let log = env.sb.requests();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.status == 401 && r.account.is_none()));

    // Shutdown ends the server even with the client's keep-alive connection open.
    env.get_ok("/v3/contacts", "Contacts").await;
    env.sb.shutdown();
    tokio::time::timeout(Duration::from_secs(15), env.sb.stopped())
        .await
        .expect("server stops");
    let res = env
        .http
        .get(format!("{}/contacts", env.sb.api_base()))
        .bearer_auth(&env.token)
        .send()
        .await;
    assert!(res.is_err(), "no longer serving");
}

#[tokio::test]
async fn paging_1200_contacts_at_500() {
    let env = start(1200, 8).await;
    let mut pages = 0;
    let mut seen = Vec::new();
    let mut next = Some("/v3/contacts?limit=500&include_count=true".to_string());
    while let Some(url) = next.take() {
        let page = env.get_ok(&url, "Contacts").await;
        pages += 1;
        assert_eq!(page["contacts_count"], 1200);
        let contacts = page["contacts"].as_array().expect("contacts");
        assert!(contacts.len() <= 500);
        seen.extend(ids(contacts));
        next = page["_links"]["next"]["href"].as_str().map(str::to_string);
        if let Some(href) = &next {
            assert!(href.starts_with("/v3/contacts?cursor="), "{href}");
        } else {
            assert!(page.get("_links").is_none_or(|l| l.get("next").is_none()));
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 1200);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 1200);
    // Ordered by id, not by updated_at.
    let all = env.all_contacts("/v3/contacts?limit=500").await;
    let updated: Vec<DateTime<Utc>> = all.iter().map(|c| ts(&c["updated_at"])).collect();
    assert!(
        updated.windows(2).any(|w| w[0] > w[1]),
        "must not be sorted by updated_at"
    );
    // Core fields only without include.
    assert!(all.iter().all(|c| c.get("list_memberships").is_none()));
    let unsub = all
        .iter()
        .filter(|c| c["email_address"]["permission_to_send"] == "unsubscribed")
        .count();
    assert!(
        unsub > 20 && unsub < 120,
        "about 5% unsubscribed, got {unsub}"
    );
}

#[tokio::test]
async fn cursor_keeps_filters_and_limit() {
    let env = start(300, 4).await;
    let list = env.sb.default_account().list_ids()[0];
    let first = format!("/v3/contacts?lists={list}&limit=7&include=list_memberships");
    let page = env.get_ok(&first, "Contacts").await;
    let href = page["_links"]["next"]["href"]
        .as_str()
        .expect("next")
        .to_string();
    let page2 = env.get_ok(&href, "Contacts").await;
    let cs = page2["contacts"].as_array().expect("contacts");
    assert_eq!(cs.len(), 7);
    for c in cs {
        let lm: Vec<&str> = c["list_memberships"]
            .as_array()
            .expect("included")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(lm.contains(&list.to_string().as_str()));
    }
    let (status, body) = env.get("/v3/contacts?cursor=not-a-cursor").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_valid("APIErrorSchema", &body);
}

#[tokio::test]
async fn updated_after_is_strict() {
    let env = start(50, 2).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[10];
    let t = env.sb.now() + chrono::Duration::days(1);
    acct.set_updated_at(id, t);
    let hit =
        |v: &Value| ids(v["contacts"].as_array().expect("contacts")).contains(&id.to_string());

    let v = env
        .get_ok(
            &format!("/v3/contacts?updated_after={}", fmt(t)),
            "Contacts",
        )
        .await;
    assert!(!hit(&v), "updated_after equal to updated_at must exclude");
    let before = t - chrono::Duration::milliseconds(1);
    let v = env
        .get_ok(
            &format!("/v3/contacts?updated_after={}", fmt(before)),
            "Contacts",
        )
        .await;
    assert!(hit(&v));
    assert_eq!(v["contacts"].as_array().map(Vec::len), Some(1));
    // +hh:mm, +hhmm (no colon) and no fraction are accepted too.
    for q in [
        before.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string(),
        before.format("%Y-%m-%dT%H:%M:%S%.6f+0000").to_string(),
    ] {
        let q = q.replace('+', "%2B");
        let v = env
            .get_ok(&format!("/v3/contacts?updated_after={q}"), "Contacts")
            .await;
        assert!(hit(&v), "{q}");
    }
    let v = env
        .get_ok(
            &format!("/v3/contacts?updated_before={}&status=all", fmt(t)),
            "Contacts",
        )
        .await;
    assert!(!hit(&v), "updated_before equal to updated_at must exclude");
    assert_eq!(v["contacts"].as_array().map(Vec::len), Some(49));
    let (status, body) = env.get("/v3/contacts?updated_after=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.is_array());
}

#[tokio::test]
async fn status_filters() {
    let env = start(40, 2).await;
    let acct = env.sb.default_account();
    let all_ids = acct.contact_ids();
    let (del, unsub) = (all_ids[0], all_ids[1]);
    // Start from a known state: nobody unsubscribed except `unsub`.
    for id in &all_ids {
        acct.resubscribe(*id);
    }
    acct.unsubscribe(unsub, Some("bored"));
    let before = acct.contact(del).expect("contact");
    acct.delete_contact(del);
    let after = acct.contact(del).expect("contact");
    assert!(ts(&after["updated_at"]) > ts(&before["updated_at"]));
    assert_eq!(after["list_memberships"], serde_json::json!([]));
    let today = env.sb.now().date_naive().to_string();
    assert_eq!(after["deleted_at"], Value::String(today));
    assert_eq!(acct.contacts_count(), 39);

    let count = |v: &Value| v["contacts"].as_array().map(Vec::len).unwrap_or(0);
    let set = |v: &Value| -> HashSet<String> {
        ids(v["contacts"].as_array().expect("contacts"))
            .into_iter()
            .collect()
    };
    let v = env.get_ok("/v3/contacts?limit=500", "Contacts").await;
    assert_eq!(count(&v), 39);
    assert!(!set(&v).contains(&del.to_string()));
    assert!(set(&v).contains(&unsub.to_string()));
    let v = env
        .get_ok("/v3/contacts?limit=500&status=all", "Contacts")
        .await;
    assert_eq!(count(&v), 40);
    let v = env.get_ok("/v3/contacts?status=deleted", "Contacts").await;
    assert_eq!(set(&v), HashSet::from([del.to_string()]));
    assert!(v["contacts"][0]["deleted_at"].is_string());
    let v = env
        .get_ok("/v3/contacts?status=unsubscribed", "Contacts")
        .await;
    assert_eq!(set(&v), HashSet::from([unsub.to_string()]));
    let c = &v["contacts"][0]["email_address"];
    assert_eq!(c["opt_out_source"], "Contact");
    assert_eq!(c["opt_out_reason"], "bored");
    let v = env
        .get_ok("/v3/contacts?status=unsubscribed,deleted", "Contacts")
        .await;
    assert_eq!(count(&v), 2);
    let v = env
        .get_ok("/v3/contacts?status=active&limit=500", "Contacts")
        .await;
    assert_eq!(count(&v), 38);
    let (status, _) = env.get("/v3/contacts?status=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // email finds one contact; a deleted one only with status=all.
    let email = after["email_address"]["address"].as_str().expect("address");
    let v = env
        .get_ok(&format!("/v3/contacts?email={email}"), "Contacts")
        .await;
    assert_eq!(count(&v), 0);
    let v = env
        .get_ok(
            &format!("/v3/contacts?email={email}&status=all"),
            "Contacts",
        )
        .await;
    assert_eq!(count(&v), 1);

    // Restore: back in the default view, updated_at bumped again.
    acct.restore_contact(del);
    let v = env.get_ok("/v3/contacts?limit=500", "Contacts").await;
    assert_eq!(count(&v), 40);
    assert!(acct.contact(del).expect("c").get("deleted_at").is_none());
}

#[tokio::test]
async fn unsubscribe_does_not_bump_updated_at_and_optout_after_finds_it() {
    let env = start(20, 2).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[3];
    acct.resubscribe(id);
    let before = acct.contact(id).expect("contact");
    let mark = env.sb.now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    acct.unsubscribe(id, None);
    let after = acct.contact(id).expect("contact");
    assert_eq!(after["updated_at"], before["updated_at"]);
    assert_eq!(after["email_address"]["permission_to_send"], "unsubscribed");
    assert!(ts(&after["email_address"]["updated_at"]) > mark);
    assert!(after["email_address"].get("opt_out_reason").is_none());
    assert_eq!(after["list_memberships"], before["list_memberships"]);

    // updated_after misses it; optout_after finds it.
    let v = env
        .get_ok(
            &format!("/v3/contacts?updated_after={}", fmt(mark)),
            "Contacts",
        )
        .await;
    assert!(!ids(v["contacts"].as_array().expect("c")).contains(&id.to_string()));
    let v = env
        .get_ok(
            &format!("/v3/contacts?optout_after={}", fmt(mark)),
            "Contacts",
        )
        .await;
    assert_eq!(
        ids(v["contacts"].as_array().expect("c")),
        vec![id.to_string()]
    );
    let optout = ts(&after["email_address"]["opt_out_date"]);
    let v = env
        .get_ok(
            &format!("/v3/contacts?optout_after={}", fmt(optout)),
            "Contacts",
        )
        .await;
    assert!(
        v["contacts"].as_array().expect("c").is_empty(),
        "strictly after"
    );
}

#[tokio::test]
async fn lists_filter_and_membership_changes() {
    let env = start(200, 6).await;
    let acct = env.sb.default_account();
    let lists = acct.list_ids();
    let (a, b) = (lists[0], lists[1]);
    let members = |v: &Value| -> HashSet<String> {
        ids(v["contacts"].as_array().expect("contacts"))
            .into_iter()
            .collect()
    };
    let in_a = members(
        &env.get_ok(&format!("/v3/contacts?lists={a}&limit=500"), "Contacts")
            .await,
    );
    let in_b = members(
        &env.get_ok(&format!("/v3/contacts?lists={b}&limit=500"), "Contacts")
            .await,
    );
    let in_ab = members(
        &env.get_ok(&format!("/v3/contacts?lists={a},{b}&limit=500"), "Contacts")
            .await,
    );
    assert!(!in_a.is_empty() && !in_b.is_empty());
    assert_eq!(in_ab, in_a.union(&in_b).cloned().collect::<HashSet<_>>());

    // leave_list removes the membership without bumping updated_at.
    let who: Uuid = in_a.iter().next().expect("member").parse().expect("uuid");
    let before = acct.contact(who).expect("c");
    acct.leave_list(who, a);
    let after = acct.contact(who).expect("c");
    assert_eq!(before["updated_at"], after["updated_at"]);
    assert!(!acct.memberships(who).contains(&a));
    let now_a = members(
        &env.get_ok(&format!("/v3/contacts?lists={a}&limit=500"), "Contacts")
            .await,
    );
    assert!(!now_a.contains(&who.to_string()));
    acct.join_list(who, a);
    assert!(acct.memberships(who).contains(&a));

    // 26 lists is too many; a bad id is rejected.
    let many: Vec<String> = (0..26).map(|_| Uuid::new_v4().to_string()).collect();
    let (status, body) = env
        .get(&format!("/v3/contacts?lists={}", many.join(",")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_valid("APIErrorSchema", &body);
    let (status, _) = env
        .get(&format!("/v3/contacts?lists={}", many[..25].join(",")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = env.get("/v3/contacts?lists=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // delete_list: memberships go, the list shows up only with status=deleted/all.
    acct.delete_list(b);
    assert!(acct
        .contact_ids()
        .iter()
        .all(|c| !acct.memberships(*c).contains(&b)));
    let v = env.get_ok("/v3/contact_lists", "ContactListArray").await;
    let active: Vec<&str> = v["lists"]
        .as_array()
        .expect("lists")
        .iter()
        .filter_map(|l| l["list_id"].as_str())
        .collect();
    assert_eq!(active.len(), 5);
    assert!(!active.contains(&b.to_string().as_str()));
    let v = env
        .get_ok("/v3/contact_lists?status=deleted", "ContactListArray")
        .await;
    assert_eq!(v["lists"][0]["list_id"], b.to_string());
    assert!(v["lists"][0]["deleted_at"].is_string());
    let v = env
        .get_ok(
            "/v3/contact_lists?status=all&include_count=true",
            "ContactListArray",
        )
        .await;
    assert_eq!(v["lists_count"], 6);
}

#[tokio::test]
async fn contact_lists_paging_and_counts() {
    let env = start(100, 7).await;
    let acct = env.sb.default_account();
    let mut seen = Vec::new();
    let mut next = Some("/v3/contact_lists?limit=3&include_membership_count=all".to_string());
    let mut pages = 0;
    let mut total_members = 0;
    while let Some(url) = next.take() {
        let v = env.get_ok(&url, "ContactListArray").await;
        pages += 1;
        for l in v["lists"].as_array().expect("lists") {
            assert!(l["name"].is_string());
            total_members += l["membership_count"].as_u64().expect("membership_count");
            seen.push(l["list_id"].as_str().expect("id").to_string());
        }
        next = v["_links"]["next"]["href"].as_str().map(str::to_string);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    let expected: usize = acct
        .contact_ids()
        .iter()
        .map(|c| acct.memberships(*c).len())
        .sum();
    assert_eq!(total_members as usize, expected);
    let v = env
        .get_ok(
            "/v3/contact_lists?include_membership_count=active",
            "ContactListArray",
        )
        .await;
    let active: u64 = v["lists"]
        .as_array()
        .expect("lists")
        .iter()
        .map(|l| l["membership_count"].as_u64().unwrap_or(0))
        .sum();
    assert!(active <= total_members);
    for bad in [
        "limit=0",
        "limit=1001",
        "status=gone",
        "include_membership_count=x",
    ] {
        let (status, body) = env.get(&format!("/v3/contact_lists?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_valid("APIErrorSchema", &body);
    }
    let v = env
        .get_ok("/v3/contact_lists?limit=1000", "ContactListArray")
        .await;
    assert!(v.get("_links").is_none());
}

#[tokio::test]
async fn include_sub_resources() {
    let env = start(60, 3).await;
    let v = env
        .get_ok(
            "/v3/contacts?limit=60&include=custom_fields,list_memberships,phone_numbers,street_addresses,taggings,notes",
            "Contacts",
        )
        .await;
    let cs = v["contacts"].as_array().expect("contacts");
    assert_eq!(cs.len(), 60);
    for c in cs {
        for k in [
            "custom_fields",
            "list_memberships",
            "phone_numbers",
            "street_addresses",
            "taggings",
            "notes",
        ] {
            assert!(c[k].is_array(), "{k} missing");
        }
        assert!(!c["custom_fields"].as_array().expect("cf").is_empty());
        assert!(!c["list_memberships"].as_array().expect("lm").is_empty());
    }
    assert!(cs
        .iter()
        .any(|c| !c["phone_numbers"].as_array().expect("p").is_empty()));
    assert!(cs
        .iter()
        .any(|c| !c["street_addresses"].as_array().expect("a").is_empty()));
    let v = env
        .get_ok("/v3/contacts?include=phone_numbers", "Contacts")
        .await;
    for c in v["contacts"].as_array().expect("contacts") {
        assert!(c["phone_numbers"].is_array());
        assert!(c.get("list_memberships").is_none());
        assert!(c.get("custom_fields").is_none());
    }
    let (status, _) = env.get("/v3/contacts?include=sms_channel").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn limit_validation() {
    let env = start(10, 1).await;
    for bad in ["0", "501", "-1", "abc", "1.5"] {
        let (status, body) = env.get(&format!("/v3/contacts?limit={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
        let arr = body.as_array().expect("error array");
        assert_eq!(arr.len(), 1);
        assert_valid("APIErrorSchema", &body);
    }
    for good in ["1", "500"] {
        env.get_ok(&format!("/v3/contacts?limit={good}"), "Contacts")
            .await;
    }
    let v = env.get_ok("/v3/contacts", "Contacts").await;
    assert_eq!(v["contacts"].as_array().map(Vec::len), Some(10));
    let v = env.get_ok("/v3/contacts?limit=3", "Contacts").await;
    assert_eq!(v["contacts"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn rate_limit_throttles() {
    let env = start(5, 1).await;
    // 2/s: six back-to-back requests would have to take over a second to pass more than
    // two, even on a busy machine.
    env.sb.set_rate_limit(Some(2.0));
    let mut throttled = 0;
    for _ in 0..6 {
        let (status, body) = env.get("/v3/contacts").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            throttled += 1;
            assert_eq!(
                body,
                serde_json::json!({"error_key":"throttled","error_message":"Too Many Requests"})
            );
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!(
        throttled >= 4,
        "back-to-back requests at 2/s: {throttled} throttled"
    );
    assert_eq!(env.sb.throttled_count(), throttled);
    // Evenly spaced requests pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        let (status, _) = env.get("/v3/contacts").await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(520)).await;
    }
    env.sb.set_rate_limit(None);
    for _ in 0..5 {
        assert_eq!(env.get("/v3/contacts").await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn latency_and_jitter_delay_every_api_answer_and_the_control_api_sets_them() {
    let env = start(5, 1).await;
    env.sb
        .set_latency(Duration::from_millis(150), Duration::from_millis(100));
    for _ in 0..4 {
        let t = std::time::Instant::now();
        assert_eq!(env.get("/v3/contacts").await.0, StatusCode::OK);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }
    // Over HTTP: 300 ms fixed, no jitter; absent keys would leave it as it is.
    let r = env
        .http
        .post(format!("http://{}/__control/limits", env.sb.addr()))
        .json(&serde_json::json!({"latency_ms": 300, "jitter_ms": 0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let t = std::time::Instant::now();
    assert_eq!(env.get("/v3/contacts").await.0, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Control endpoints are not the API: never delayed.
    env.sb.set_latency(Duration::from_secs(30), Duration::ZERO);
    let t = std::time::Instant::now();
    let _ = env.sb.requests();
    let r = env
        .http
        .get(format!("http://{}/__control/requests", env.sb.addr()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn daily_quota_exceeded_until_midnight() {
    let env = start(5, 1).await;
    env.sb.set_daily_quota(Some(3));
    for _ in 0..3 {
        assert_eq!(env.get("/v3/contacts").await.0, StatusCode::OK);
    }
    let (status, body) = env.get("/v3/contacts").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        serde_json::json!({"error_key":"quota_exceeded","error_message":"Limit Exceeded"})
    );
    env.sb.advance_clock(chrono::Duration::days(1));
    // The access token lives 24 h; get a new one after the jump.
    let rt = env.sb.default_account().seed_refresh_token();
    let (_, tok) = refresh(&env.http, &env.sb, &rt, "sandbox-secret").await;
    let env = Env {
        token: tok["access_token"].as_str().expect("at").to_string(),
        ..env
    };
    assert_eq!(env.get("/v3/contacts").await.0, StatusCode::OK);
}

#[tokio::test]
async fn fault_status_throttle_and_fail_after() {
    let env = start(5, 2).await;
    env.sb.inject(Fault::Status {
        path_prefix: "/v3/contacts".into(),
        status: 503,
        times: 2,
    });
    // Other paths are not affected.
    env.get_ok("/v3/contact_lists", "ContactListArray").await;
    for _ in 0..2 {
        let (status, body) = env.get("/v3/contacts").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_valid("APIErrorSchema", &body);
    }
    env.get_ok("/v3/contacts", "Contacts").await;

    env.sb.inject(Fault::Throttle { times: 1 });
    let (status, body) = env.get("/v3/contact_lists").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error_key"], "throttled");
    assert_eq!(env.sb.throttled_count(), 1);
    env.get_ok("/v3/contact_lists", "ContactListArray").await;

    env.sb.inject(Fault::FailAfter {
        path_prefix: "/contacts".into(),
        ok: 2,
        status: 500,
    });
    env.get_ok("/v3/contacts", "Contacts").await;
    env.get_ok("/v3/contacts", "Contacts").await;
    for _ in 0..3 {
        assert_eq!(
            env.get("/v3/contacts").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    env.sb.clear_faults();
    env.get_ok("/v3/contacts", "Contacts").await;
    let statuses: Vec<u16> = env.sb.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![200, 503, 503, 200, 429, 200, 200, 200, 500, 500, 500, 200]
    );
}

#[tokio::test]
async fn fault_latency_reset_truncate() {
    let env = start(30, 2).await;
    env.sb.inject(Fault::Latency {
        path_prefix: "/v3/contacts".into(),
        delay: Duration::from_millis(1_500),
        times: 1,
    });
    let t = std::time::Instant::now();
    env.get_ok("/v3/contacts", "Contacts").await;
    assert!(t.elapsed() >= Duration::from_millis(1_500));
    // Used up: the next answer is not delayed (a generous bound for a busy machine).
    let t = std::time::Instant::now();
    env.get_ok("/v3/contacts", "Contacts").await;
    assert!(t.elapsed() < Duration::from_millis(1_500));

    env.sb.inject(Fault::Reset {
        path_prefix: "/v3/contacts".into(),
        times: 1,
    });
    let res = env
        .http
        .get(format!("{}/contacts", env.sb.api_base()))
        .bearer_auth(&env.token)
        .send()
        .await;
    assert!(
        res.is_err(),
        "connection must be dropped without a response: {res:?}"
    );
    env.get_ok("/v3/contacts", "Contacts").await;

    env.sb.inject(Fault::TruncateBody {
        path_prefix: "/v3/contacts".into(),
        times: 1,
    });
    let resp = env
        .http
        .get(format!("{}/contacts?limit=30", env.sb.api_base()))
        .bearer_auth(&env.token)
        .send()
        .await
        .expect("head arrives");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.is_err(), "body must be cut short");
    env.get_ok("/v3/contacts", "Contacts").await;
    let statuses: Vec<u16> = env.sb.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 0, 200, 200, 200]);
}

#[tokio::test]
async fn fault_not_json_and_inject_contacts() {
    let env = start(30, 2).await;
    let raw = |env: &Env, q: &'static str| {
        let req = env
            .http
            .get(format!("{}/contacts{q}", env.sb.api_base()))
            .bearer_auth(&env.token);
        async move {
            let resp = req.send().await.expect("an answer");
            let status = resp.status();
            let declared = resp.content_length();
            let body = resp.bytes().await.expect("a complete body");
            (status, declared, body)
        }
    };
    env.sb.inject(Fault::NotJson {
        path_prefix: "/v3/contacts".into(),
        times: 1,
        cut: false,
    });
    let (status, declared, body) = raw(&env, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(declared, Some(body.len() as u64), "a complete answer");
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "not JSON");
    assert!(String::from_utf8_lossy(&body).contains("<html>"));

    env.sb.inject(Fault::NotJson {
        path_prefix: "/v3/contacts".into(),
        times: 1,
        cut: true,
    });
    let (status, declared, body) = raw(&env, "?limit=30").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(declared, Some(body.len() as u64), "a complete answer");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.starts_with("{"),
        "the real answer's first half: {text}"
    );
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "cut JSON");
    env.get_ok("/v3/contacts", "Contacts").await;

    env.sb.inject(Fault::InjectContacts {
        path_prefix: "/v3/contacts".into(),
        contacts: vec![serde_json::json!({"email_address": {"address": "no-id@example.com"}})],
        times: 1,
    });
    let (_, v) = env.get("/v3/contacts?limit=10").await;
    let contacts = v["contacts"].as_array().cloned().unwrap_or_default();
    assert_eq!(contacts.len(), 11, "the page and the injected element");
    assert_eq!(
        contacts[10]["email_address"]["address"],
        "no-id@example.com"
    );
    let (_, v) = env.get("/v3/contacts?limit=10").await;
    assert_eq!(v["contacts"].as_array().map(Vec::len), Some(10), "used up");
    let statuses: Vec<u16> = env.sb.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200]);
}

#[tokio::test]
async fn control_http_api() {
    let env = start(5, 2).await;
    let base = format!("http://{}", env.sb.addr());
    let list = env.sb.default_account().list_ids()[0];
    let resp = env
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = env
        .http
        .post(format!("{base}/__control/accounts/default/contacts"))
        .json(&serde_json::json!({"email": "new.person@example.com", "first_name": "New", "list_ids": [list]}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id: Uuid = v["contact_id"].as_str().expect("id").parse().expect("uuid");
    let page = env
        .get_ok(
            "/v3/contacts?email=new.person@example.com&include=list_memberships",
            "Contacts",
        )
        .await;
    assert_eq!(page["contacts"][0]["contact_id"], id.to_string());
    assert_eq!(page["contacts"][0]["list_memberships"][0], list.to_string());
    for action in [
        format!("contacts/{id}/unsubscribe"),
        format!("contacts/{id}/leave/{list}"),
        format!("contacts/{id}/delete"),
    ] {
        let resp = env
            .http
            .post(format!("{base}/__control/accounts/default/{action}"))
            .send()
            .await
            .expect("control");
        assert_eq!(resp.status(), StatusCode::OK, "{action}");
    }
    let c = env.sb.default_account().contact(id).expect("contact");
    assert_eq!(c["email_address"]["permission_to_send"], "unsubscribed");
    let v: Value = env
        .http
        .post(format!("{base}/__control/accounts/default/contacts/{id}/update"))
        .json(&serde_json::json!({"job_title": "Via Control", "email_address": {"opt_out_reason": "merged"}}))
        .send()
        .await
        .expect("update")
        .json()
        .await
        .expect("json");
    assert_eq!(v["job_title"], "Via Control");
    assert_eq!(v["email_address"]["opt_out_reason"], "merged");
    assert_eq!(v["email_address"]["permission_to_send"], "unsubscribed");
    assert!(ts(&v["updated_at"]) >= ts(&c["updated_at"]));
    let imports: Value = env
        .http
        .get(format!("{base}/__control/accounts/default/imports"))
        .send()
        .await
        .expect("imports")
        .json()
        .await
        .expect("json");
    assert_eq!(imports, serde_json::json!([]));
    assert!(c["deleted_at"].is_string());
    let v: Value = env
        .http
        .post(format!("{base}/__control/accounts/other/refresh_token"))
        .send()
        .await
        .expect("rt")
        .json()
        .await
        .expect("json");
    let rt = v["refresh_token"].as_str().expect("rt");
    let (status, tok) = refresh(&env.http, &env.sb, rt, "sandbox-secret").await;
    assert_eq!(status, StatusCode::OK);
    // The "other" account is empty.
    let other = Env {
        sb: env.sb.clone(),
        http: env.http.clone(),
        token: tok["access_token"].as_str().expect("at").to_string(),
    };
    let v = other.get_ok("/v3/contacts", "Contacts").await;
    assert_eq!(v["contacts"], serde_json::json!([]));
    let resp = env
        .http
        .post(format!("{base}/__control/faults"))
        .json(&serde_json::json!({"kind": "status", "path_prefix": "/v3/contact_lists", "status": 502, "times": 1}))
        .send()
        .await
        .expect("fault");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        env.get("/v3/contact_lists").await.0,
        StatusCode::BAD_GATEWAY
    );
    let before = env.sb.now();
    let resp = env
        .http
        .post(format!("{base}/__control/clock/advance"))
        .json(&serde_json::json!({"seconds": 3600}))
        .send()
        .await
        .expect("advance");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(env.sb.now() - before >= chrono::Duration::minutes(59));
    let log: Vec<Value> = env
        .http
        .get(format!("{base}/__control/requests"))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert_eq!(log.len(), env.sb.requests().len());
    assert!(log.iter().any(|r| r["account"] == "other"));
}

#[tokio::test]
async fn update_contact_bumps_updated_at() {
    let env = start(5, 1).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[0];
    let before = acct.contact(id).expect("c");
    tokio::time::sleep(Duration::from_millis(3)).await;
    acct.update_contact(id, |c| c["first_name"] = "Renamed".into());
    let after = acct.contact(id).expect("c");
    assert_eq!(after["first_name"], "Renamed");
    assert!(ts(&after["updated_at"]) > ts(&before["updated_at"]));
    assert_eq!(
        after["email_address"]["updated_at"],
        before["email_address"]["updated_at"]
    );
    acct.update_contact(id, |c| {
        c["email_address"]["address"] = "renamed@example.com".into()
    });
    let after2 = acct
        .contact_by_email("renamed@example.com")
        .expect("by email");
    assert_eq!(after2["contact_id"], id.to_string());
    assert!(
        ts(&after2["email_address"]["updated_at"]) > ts(&before["email_address"]["updated_at"])
    );
    assert_valid("ContactResource", &after2);
}

#[tokio::test]
async fn generator_is_deterministic() {
    let a = Sandbox::start(SandboxConfig {
        contacts: 50,
        seed: 9,
        ..Default::default()
    })
    .await
    .expect("a");
    let b = Sandbox::start(SandboxConfig {
        contacts: 50,
        seed: 9,
        ..Default::default()
    })
    .await
    .expect("b");
    assert_eq!(
        a.default_account().contact_ids(),
        b.default_account().contact_ids()
    );
    let ida = a.default_account().contact_ids()[7];
    let ca = a.default_account().contact(ida).expect("a");
    let cb = b.default_account().contact(ida).expect("b");
    assert_eq!(
        ca["email_address"]["address"],
        cb["email_address"]["address"]
    );
    assert_eq!(ca["custom_fields"], cb["custom_fields"]);
    let emails: HashSet<String> = a
        .default_account()
        .contact_ids()
        .iter()
        .filter_map(|id| a.default_account().contact(*id))
        .map(|c| {
            c["email_address"]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(emails.len(), 50);
    assert!(emails
        .iter()
        .all(|e| e == &e.to_lowercase() && e.ends_with("@example.com")));
    a.shutdown();
    tokio::time::timeout(Duration::from_secs(15), a.stopped())
        .await
        .expect("stops");
}

/// `cargo test --release --test it sandbox_api::bench_200k -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run in release"]
async fn bench_200k() {
    let t = std::time::Instant::now();
    let env = start(200_000, 8).await;
    let gen = t.elapsed();
    let t = std::time::Instant::now();
    let mut next = Some("/v3/contacts?limit=500".to_string());
    let (mut n, mut pages, mut worst) = (0, 0, Duration::ZERO);
    while let Some(url) = next.take() {
        let t1 = std::time::Instant::now();
        let (status, page) = env.get(&url).await;
        worst = worst.max(t1.elapsed());
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        n += page["contacts"].as_array().map(Vec::len).unwrap_or(0);
        next = page["_links"]["next"]["href"].as_str().map(str::to_string);
    }
    assert_eq!(n, 200_000);
    eprintln!(
        "generate {gen:?}; {pages} pages in {:?} (worst page incl. client parse {worst:?})",
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let mut next = Some(
        "/v3/contacts?limit=500&include=list_memberships,custom_fields&include_count=true&status=all"
            .to_string(),
    );
    let (mut pages, mut worst) = (0, Duration::ZERO);
    while let Some(url) = next.take() {
        let t1 = std::time::Instant::now();
        let (status, page) = env.get(&url).await;
        worst = worst.max(t1.elapsed());
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        next = page["_links"]["next"]["href"].as_str().map(str::to_string);
    }
    eprintln!(
        "with include+count: {pages} pages in {:?} (worst page {worst:?})",
        t.elapsed()
    );
}

// ------------------------------------------------------------------ bulk activities

async fn start_with(cfg: SandboxConfig) -> Env {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    let http = Client::new();
    let rt = sb.default_account().seed_refresh_token();
    let (status, body) = refresh(&http, &sb, &rt, "sandbox-secret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    Env { sb, http, token }
}

/// Polls `GET /v3/activities/{id}` until a terminal state; returns the last body and
/// every state seen.
async fn wait_activity(env: &Env, href: &str) -> (Value, Vec<String>) {
    let mut states = Vec::new();
    for _ in 0..200 {
        let v = env.get_ok(href, "Activity").await;
        let state = v["state"].as_str().expect("state").to_string();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if !matches!(state.as_str(), "initialized" | "processing") {
            return (v, states);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("activity {href} did not finish: {states:?}");
}

async fn import(env: &Env, body: &Value) -> Value {
    let (status, v) = env.post("/v3/activities/contacts_json_import", body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_valid("ActivityImport", &v);
    assert_eq!(v["state"], "initialized");
    v
}

#[tokio::test]
async fn import_applies_permission_and_list_rules() {
    let env = start(30, 3).await;
    let acct = env.sb.default_account();
    let ids = acct.contact_ids();
    let list = acct.list_ids()[0];
    let (a, u, l) = (ids[0], ids[1], ids[2]);
    acct.resubscribe(a);
    acct.resubscribe(l);
    acct.unsubscribe(u, Some("no thanks"));
    acct.leave_list(u, list);
    acct.join_list(l, list);
    acct.leave_list(l, list);
    let email = |id: Uuid| {
        acct.contact(id).expect("c")["email_address"]["address"]
            .as_str()
            .expect("address")
            .to_string()
    };
    let before_a = acct.contact(a).expect("a");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let body = serde_json::json!({
        "import_data": [
            {"email": email(a), "first_name": "Imported", "cf:favorite_color": "teal", "work_phone": "555-0100", "work_city": "Denver"},
            {"email": email(u), "job_title": "Returned"},
            {"email": email(l)},
            {"email": "Brand.New@Example.com", "first_name": "Brand", "birthday_month": 4, "birthday_day": 30},
            {"email": "not-an-email", "first_name": "Bad"}
        ],
        "list_ids": [list]
    });
    let created = import(&env, &body).await;
    let href = created["_links"]["self"]["href"]
        .as_str()
        .expect("href")
        .to_string();
    assert_eq!(
        href,
        format!(
            "/v3/activities/{}",
            created["activity_id"].as_str().expect("id")
        )
    );
    assert_eq!(created["status"]["items_total_count"], 5);
    let (done, states) = wait_activity(&env, &href).await;
    assert_eq!(
        states.last().map(String::as_str),
        Some("completed"),
        "{states:?}"
    );
    assert_eq!(done["percent_done"], 100);
    assert!(done["completed_at"].is_string() && done["started_at"].is_string());
    let st = &done["status"];
    assert_eq!(st["items_total_count"], 5);
    assert_eq!(st["items_completed_count"], 5);
    assert_eq!(st["person_count"], 4);
    assert_eq!(st["correctable_count"], 1);
    assert_eq!(st["cannot_add_to_list_count"], 1);
    assert_eq!(st["error_count"], 0);
    let errs = done["activity_errors"].as_array().expect("errors");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].as_str().expect("string").contains("not-an-email"));

    // Existing explicit contact: keeps permission, only given fields change, joins the list.
    let ca = acct.contact(a).expect("a");
    assert_eq!(ca["email_address"]["permission_to_send"], "explicit");
    assert_eq!(ca["first_name"], "Imported");
    assert_eq!(ca["last_name"], before_a["last_name"]);
    assert!(ts(&ca["updated_at"]) > ts(&before_a["updated_at"]));
    assert!(acct.memberships(a).contains(&list));
    assert!(ca["custom_fields"]
        .as_array()
        .expect("cf")
        .iter()
        .any(|f| f["value"] == "teal"));
    assert!(ca["phone_numbers"]
        .as_array()
        .expect("phones")
        .iter()
        .any(|p| p["kind"] == "work" && p["phone_number"] == "555-0100"));
    assert!(ca["street_addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .any(|p| p["kind"] == "work" && p["city"] == "Denver"));
    assert_valid("ContactResource", &ca);
    // Unsubscribed: stays unsubscribed, not added, but properties change.
    let cu = acct.contact(u).expect("u");
    assert_eq!(cu["email_address"]["permission_to_send"], "unsubscribed");
    assert_eq!(cu["job_title"], "Returned");
    assert!(!acct.memberships(u).contains(&list));
    // Left the list but not unsubscribed: added back.
    assert!(acct.memberships(l).contains(&list));
    // New: implicit, Account.
    let cn = acct
        .contact_by_email("brand.new@example.com")
        .expect("created");
    assert_eq!(cn["email_address"]["permission_to_send"], "implicit");
    assert_eq!(cn["email_address"]["opt_in_source"], "Account");
    assert_eq!(cn["create_source"], "Account");
    assert_eq!(cn["birthday_month"], 4);
    assert_eq!(cn["list_memberships"], serde_json::json!([list]));
    assert!(acct.contact_by_email("not-an-email").is_none());
    assert_eq!(acct.imports(), vec![body]);
    let id: Uuid = created["activity_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    assert_eq!(acct.activity(id).expect("activity")["state"], "completed");
    // The new contact shows up in an updated_after pull.
    let v = env
        .get_ok(
            "/v3/contacts?email=brand.new@example.com&include=list_memberships",
            "Contacts",
        )
        .await;
    assert_eq!(v["contacts"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn import_request_validation() {
    let env = start(3, 2).await;
    let list = env.sb.default_account().list_ids()[0];
    let item = serde_json::json!({"email": "x@example.com"});
    let many: Vec<String> = (0..51).map(|_| Uuid::new_v4().to_string()).collect();
    let cases = [
        serde_json::json!({"list_ids": [list]}),
        serde_json::json!({"import_data": [], "list_ids": [list]}),
        serde_json::json!({"import_data": [item]}),
        serde_json::json!({"import_data": [item], "list_ids": []}),
        serde_json::json!({"import_data": [item], "list_ids": many}),
        serde_json::json!({"import_data": [item], "list_ids": [Uuid::new_v4()]}),
        serde_json::json!({"import_data": [item], "list_ids": ["nope"]}),
        serde_json::json!({"import_data": [{"first_name": "No Email"}], "list_ids": [list]}),
        serde_json::json!({"import_data": [{"email": "a@example.com", "birthday_month": "4"}], "list_ids": [list]}),
    ];
    for body in &cases {
        let (status, v) = env.post("/v3/activities/contacts_json_import", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_valid("APIErrorSchema", &v);
    }
    assert!(env.sb.default_account().imports().is_empty());
    let resp = env
        .http
        .post(format!(
            "{}/activities/contacts_json_import",
            env.sb.api_base()
        ))
        .bearer_auth(&env.token)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn import_keeps_only_items_complete_within_4mb() {
    let env = start_with(SandboxConfig {
        contacts: 0,
        lists: 1,
        import_processing: Duration::from_millis(10),
        ..Default::default()
    })
    .await;
    let list = env.sb.default_account().list_ids()[0];
    let pad = "x".repeat(250);
    let items: Vec<String> = (0..5000)
        .map(|i| {
            serde_json::json!({
                "email": format!("bulk.{i}@example.com"),
                "street": pad, "home_street": pad, "work_street": pad, "other_street": pad,
            })
            .to_string()
        })
        .collect();
    let head = "{\"import_data\":[";
    let body = format!("{head}{}],\"list_ids\":[\"{list}\"]}}", items.join(","));
    assert!(body.len() > 4_000_000);
    let mut end = head.len();
    let mut expected = 0;
    for it in &items {
        let last = end + it.len() - 1; // index of the item's closing brace
        if last >= 4_000_000 {
            break;
        }
        expected += 1;
        end += it.len() + 1;
    }
    assert!(expected > 1000 && expected < 5000);
    let resp = env
        .http
        .post(format!(
            "{}/activities/contacts_json_import",
            env.sb.api_base()
        ))
        .bearer_auth(&env.token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.expect("json");
    assert_valid("ActivityImport", &created);
    assert_eq!(created["status"]["items_total_count"], expected);
    let href = created["_links"]["self"]["href"].as_str().expect("href");
    let (done, _) = wait_activity(&env, href).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["status"]["person_count"], expected);
    let acct = env.sb.default_account();
    assert_eq!(acct.contacts_count(), expected);
    assert!(acct
        .contact_by_email(&format!("bulk.{}@example.com", expected - 1))
        .is_some());
    assert!(acct
        .contact_by_email(&format!("bulk.{expected}@example.com"))
        .is_none());
}

#[tokio::test]
async fn activity_outcome_fault_changes_nothing() {
    let env = start(5, 1).await;
    let list = env.sb.default_account().list_ids()[0];
    env.sb.inject(Fault::ActivityOutcome {
        state: "failed".into(),
        times: 1,
        errors: vec!["Internal import error".into()],
    });
    let body = serde_json::json!({"import_data": [{"email": "f@example.com"}], "list_ids": [list]});
    let created = import(&env, &body).await;
    let (done, _) = wait_activity(
        &env,
        created["_links"]["self"]["href"].as_str().expect("href"),
    )
    .await;
    assert_eq!(done["state"], "failed");
    assert_eq!(
        done["activity_errors"],
        serde_json::json!(["Internal import error"])
    );
    assert!(env
        .sb
        .default_account()
        .contact_by_email("f@example.com")
        .is_none());
    // Consumed: the next import completes.
    let created = import(&env, &body).await;
    let (done, _) = wait_activity(
        &env,
        created["_links"]["self"]["href"].as_str().expect("href"),
    )
    .await;
    assert_eq!(done["state"], "completed");
    assert!(env
        .sb
        .default_account()
        .contact_by_email("f@example.com")
        .is_some());
}

#[tokio::test]
async fn add_and_remove_list_memberships() {
    let env = start(20, 3).await;
    let acct = env.sb.default_account();
    let target = acct.create_list("Target");
    let ids = acct.contact_ids();
    for id in &ids[..4] {
        acct.resubscribe(*id);
    }
    acct.unsubscribe(ids[3], None);
    let src: Vec<String> = ids[..4].iter().map(Uuid::to_string).collect();
    let (status, v) = env
        .post(
            "/v3/activities/add_list_memberships",
            &serde_json::json!({"source": {"contact_ids": src}, "list_ids": [target]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_valid("ActivityListsMembership", &v);
    assert_eq!(v["status"]["list_count"], 1);
    let (done, _) = wait_activity(&env, v["_links"]["self"]["href"].as_str().expect("href")).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["status"]["items_total_count"], 4);
    for id in &ids[..3] {
        assert!(acct.memberships(*id).contains(&target));
    }
    assert!(
        !acct.memberships(ids[3]).contains(&target),
        "unsubscribed is skipped"
    );

    // Remove (the spec's maxItems: 0 is not enforced).
    let (status, v) = env
        .post(
            "/v3/activities/remove_list_memberships",
            &serde_json::json!({"source": {"contact_ids": [ids[0]]}, "list_ids": [target]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_valid("ActivityListsMembership", &v);
    wait_activity(&env, v["_links"]["self"]["href"].as_str().expect("href")).await;
    assert!(!acct.memberships(ids[0]).contains(&target));
    assert!(acct.memberships(ids[1]).contains(&target));

    // Remove everyone on a source list, except one.
    let (status, v) = env
        .post(
            "/v3/activities/remove_list_memberships",
            &serde_json::json!({"source": {"list_ids": [target]}, "exclude": {"contact_ids": [ids[2]]}, "list_ids": [target]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    wait_activity(&env, v["_links"]["self"]["href"].as_str().expect("href")).await;
    assert!(!acct.memberships(ids[1]).contains(&target));
    assert!(acct.memberships(ids[2]).contains(&target));

    // Validation.
    let too_many: Vec<String> = (0..501).map(|_| Uuid::new_v4().to_string()).collect();
    let (status, v) = env
        .post(
            "/v3/activities/add_list_memberships",
            &serde_json::json!({"source": {"contact_ids": too_many}, "list_ids": [target]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_valid("APIErrorSchema", &v);
    let (status, v) = env
        .post(
            "/v3/activities/remove_list_memberships",
            &serde_json::json!({"source": {"contact_ids": [ids[0]]}, "list_ids": [Uuid::new_v4()]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_valid("APIErrorSchema", &v);
    let (status, _) = env
        .post(
            "/v3/activities/add_list_memberships",
            &serde_json::json!({"source": {"contact_ids": [ids[0]], "list_ids": [target]}, "list_ids": [target]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "exactly one source");
}

#[tokio::test]
async fn activities_listing_and_retention() {
    let env = start(5, 2).await;
    let list = env.sb.default_account().list_ids()[0];
    let mut hrefs = Vec::new();
    for i in 0..3 {
        let body = serde_json::json!({"import_data": [{"email": format!("l{i}@example.com")}], "list_ids": [list]});
        let v = import(&env, &body).await;
        hrefs.push(
            v["_links"]["self"]["href"]
                .as_str()
                .expect("href")
                .to_string(),
        );
    }
    for h in &hrefs {
        wait_activity(&env, h).await;
    }
    let mut seen = Vec::new();
    let mut next = Some("/v3/activities?limit=2&state=completed".to_string());
    while let Some(url) = next.take() {
        let v = env.get_ok(&url, "Activities").await;
        for a in v["activities"].as_array().expect("activities") {
            assert_eq!(a["state"], "completed");
            seen.push(
                a["_links"]["self"]["href"]
                    .as_str()
                    .expect("href")
                    .to_string(),
            );
        }
        next = v["_links"]["next"]["href"].as_str().map(str::to_string);
    }
    hrefs.reverse();
    assert_eq!(seen, hrefs, "newest first, each once");
    let v = env
        .get_ok("/v3/activities?state=failed", "Activities")
        .await;
    assert_eq!(v["activities"], serde_json::json!([]));
    let (status, _) = env.get("/v3/activities?state=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, v) = env.get(&format!("/v3/activities/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_valid("APIErrorSchema", &v);
    env.sb.advance_clock(chrono::Duration::days(11));
    let rt = env.sb.default_account().seed_refresh_token();
    let (_, tok) = refresh(&env.http, &env.sb, &rt, "sandbox-secret").await;
    let env = Env {
        token: tok["access_token"].as_str().expect("at").to_string(),
        ..env
    };
    let (status, _) = env.get(&hrefs[0]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "statuses are kept 10 days");
}

#[tokio::test]
async fn more_than_1000_queued_activities_is_429() {
    let env = start_with(SandboxConfig {
        contacts: 3,
        lists: 1,
        import_processing: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let list = env.sb.default_account().list_ids()[0];
    let id = env.sb.default_account().contact_ids()[0];
    let body = serde_json::json!({"source": {"contact_ids": [id]}, "list_ids": [list]});
    for _ in 0..1000 {
        let (status, v) = env.post("/v3/activities/add_list_memberships", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let (status, v) = env.post("/v3/activities/add_list_memberships", &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_valid("APIErrorSchema", &v);
    let (status, _) = env
        .post(
            "/v3/activities/contacts_json_import",
            &serde_json::json!({"import_data": [{"email": "q@example.com"}], "list_ids": [list]}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn get_one_contact_resubscribe_and_revive() {
    let env = start(10, 2).await;
    let acct = env.sb.default_account();
    let id = acct.contact_ids()[4];
    let list = acct.list_ids()[1];
    let v = env
        .get_ok(
            &format!("/v3/contacts/{id}?include=list_memberships,custom_fields"),
            "ContactResource",
        )
        .await;
    assert_eq!(v["contact_id"], id.to_string());
    assert!(v["list_memberships"].is_array() && v["custom_fields"].is_array());
    assert!(v.get("phone_numbers").is_none());
    let (status, body) = env.get(&format!("/v3/contacts/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_valid("APIErrorSchema", &body);

    acct.unsubscribe(id, Some("x"));
    let before = acct.contact(id).expect("c");
    acct.resubscribe(id);
    let after = acct.contact(id).expect("c");
    assert_eq!(after["email_address"]["permission_to_send"], "explicit");
    assert!(after["email_address"].get("opt_out_date").is_none());
    assert!(after["email_address"].get("opt_out_source").is_none());
    assert_eq!(after["updated_at"], before["updated_at"]);
    assert_valid("ContactResource", &after);

    // Joining a list revives a deleted contact.
    acct.delete_contact(id);
    assert!(acct.memberships(id).is_empty());
    acct.join_list(id, list);
    let revived = acct.contact(id).expect("c");
    assert!(revived.get("deleted_at").is_none());
    assert_eq!(acct.memberships(id), vec![list]);
    let v = env
        .get_ok(&format!("/v3/contacts/{id}"), "ContactResource")
        .await;
    assert!(v.get("deleted_at").is_none());
}

#[tokio::test]
async fn request_log_records_queries_bodies_and_accounts() {
    let env = start(3, 1).await;
    let list = env.sb.default_account().list_ids()[0];
    env.get_ok("/v3/contacts?limit=2&status=all", "Contacts")
        .await;
    let body =
        serde_json::json!({"import_data": [{"email": "log@example.com"}], "list_ids": [list]});
    let (status, _) = env.post("/v3/activities/contacts_json_import", &body).await;
    assert_eq!(status, StatusCode::CREATED);
    let log = env.sb.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, "/v3/contacts");
    assert_eq!(log[0].query, "limit=2&status=all");
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].account.as_deref(), Some("default"));
    assert!(log[0].body.is_none());
    assert_eq!(log[1].method, "POST");
    assert_eq!(log[1].status, 201);
    assert_eq!(log[1].body.as_ref(), Some(&body));
}

/// `cargo test --release --test it sandbox_api::bench_filters -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run in release"]
async fn bench_filters() {
    let env = start(200_000, 8).await;
    let future = fmt(env.sb.now() + chrono::Duration::days(1));
    for q in [
        "/v3/contacts?limit=500".to_string(),
        "/v3/contacts?limit=500&include=list_memberships,custom_fields".to_string(),
        "/v3/contacts?limit=500&include_count=true".to_string(),
        format!("/v3/contacts?limit=500&updated_after={future}"),
        "/v3/contacts?limit=500&status=unsubscribed".to_string(),
    ] {
        let mut worst = Duration::ZERO;
        let t = std::time::Instant::now();
        for _ in 0..10 {
            let t1 = std::time::Instant::now();
            let (status, _) = env.get(&q).await;
            assert_eq!(status, StatusCode::OK);
            worst = worst.max(t1.elapsed());
        }
        eprintln!("{q}: avg {:?} worst {worst:?}", t.elapsed() / 10);
    }
}

#[tokio::test]
async fn contacts_count_follows_changes_between_pages() {
    let env = start(30, 2).await;
    let acct = env.sb.default_account();
    let v = env
        .get_ok("/v3/contacts?limit=10&include_count=true", "Contacts")
        .await;
    assert_eq!(v["contacts_count"], 30);
    let next = v["_links"]["next"]["href"]
        .as_str()
        .expect("next")
        .to_string();
    let v = env.get_ok(&next, "Contacts").await;
    assert_eq!(v["contacts_count"], 30, "the cursor keeps include_count");
    acct.delete_contact(acct.contact_ids()[0]);
    let next = v["_links"]["next"]["href"]
        .as_str()
        .expect("next")
        .to_string();
    let v = env.get_ok(&next, "Contacts").await;
    assert_eq!(v["contacts_count"], 29);
    let v = env
        .get_ok("/v3/contacts?status=all&include_count=true", "Contacts")
        .await;
    assert_eq!(v["contacts_count"], 30);
    acct.create_contact("counted@example.com", None, &[]);
    let v = env
        .get_ok("/v3/contacts?include_count=true&status=all", "Contacts")
        .await;
    assert_eq!(v["contacts_count"], 31);
}

#[tokio::test]
async fn import_processing_time_can_change_at_runtime() {
    let env = start(3, 1).await;
    let list = env.sb.default_account().list_ids()[0];
    env.sb.set_import_processing(Duration::from_secs(3600));
    let body =
        serde_json::json!({"import_data": [{"email": "slow@example.com"}], "list_ids": [list]});
    let slow = import(&env, &body).await;
    let href = slow["_links"]["self"]["href"]
        .as_str()
        .expect("href")
        .to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(env.get_ok(&href, "Activity").await["state"], "initialized");
    env.sb.set_import_processing(Duration::ZERO);
    let fast = import(&env, &body).await;
    let fast_href = fast["_links"]["self"]["href"].as_str().expect("href");
    assert_eq!(
        env.get_ok(fast_href, "Activity").await["state"],
        "completed"
    );
    assert_eq!(env.get_ok(&href, "Activity").await["state"], "initialized");
}
