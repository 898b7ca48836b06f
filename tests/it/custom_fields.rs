//! Custom fields by name: the sandbox's `GET /contact_custom_fields`, the catalogue synced
//! into `ccsync.custom_fields` by the lists job, the `contacts_custom_fields` view, and the
//! push validating `cf:<name>` against the catalogue and confirming the values by id.

use std::collections::HashSet;

use reqwest::StatusCode;

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
