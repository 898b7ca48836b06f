//! The custom field catalogue, synced by the lists job every cycle: `GET
//! /contact_custom_fields` read whole (it has no date filter, and an account has at most
//! 100 definitions), then `ccsync.custom_fields` replaced by it in one transaction, so a
//! definition gone from Constant Contact goes here too. Only a complete read replaces.

use anyhow::Context;

use super::context::JobContext;
use crate::ctct::dto::{CustomField, CustomFieldsPage, PagingLinks};
use crate::ctct::AccountClient;
use crate::store;
use crate::store::custom_fields::CustomFieldRow;

/// The API's page-size maximum for this endpoint.
const PAGE_LIMIT: u32 = 100;

/// Stats of one catalogue sync (`custom_fields` in the lists job's stats).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CustomFieldStats {
    pub pages: u64,
    pub seen: u64,
    pub written: u64,
    pub removed: u64,
    /// Definitions without a name or a label: no `cf:<name>` can address them.
    pub unnamed: u64,
}

/// The local row of a definition; `None` when it has neither a name nor a label. A missing
/// name is built from the label as Constant Contact does (spaces turned into `_`).
pub fn to_row(f: &CustomField) -> Option<CustomFieldRow> {
    let name = f.name.clone().filter(|n| !n.is_empty()).or_else(|| {
        f.label
            .as_deref()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().replace(' ', "_"))
    })?;
    Some(CustomFieldRow {
        custom_field_id: f.custom_field_id,
        name,
        label: f.label.clone(),
        field_type: f.field_type.clone(),
        updated_at: f.updated_at.or(f.created_at),
    })
}

/// Reads every page of the catalogue, then replaces the local one with it.
#[tracing::instrument(skip_all)]
pub async fn sync_custom_fields(
    ctx: &JobContext,
    client: &AccountClient,
) -> anyhow::Result<CustomFieldStats> {
    let account = client.account().to_string();
    let mut stats = CustomFieldStats::default();
    let mut url = client
        .api()
        .endpoint("contact_custom_fields")
        .context("building the custom fields URL")?;
    url.query_pairs_mut()
        .append_pair("limit", &PAGE_LIMIT.to_string());
    let mut rows: Vec<CustomFieldRow> = Vec::new();
    let mut next = Some(url);
    while let Some(url) = next.take() {
        let page: CustomFieldsPage = client.custom_fields_page(url).await.with_context(|| {
            format!(
                "fetching page {} of custom fields for account {account}",
                stats.pages + 1
            )
        })?;
        if let Some(href) = PagingLinks::next_href(&page.links) {
            next = Some(client.next_url(href)?);
        }
        stats.pages += 1;
        stats.seen += page.custom_fields.len() as u64;
        for f in &page.custom_fields {
            match to_row(f) {
                Some(r) => rows.push(r),
                None => stats.unnamed += 1,
            }
        }
        if next.is_some() && ctx.cancel.is_cancelled() {
            anyhow::bail!("cancelled after {} pages of custom fields", stats.pages);
        }
    }
    let mut tx = ctx.pool.begin().await?;
    let done = store::custom_fields::replace_catalogue(&mut tx, &account, &rows)
        .await
        .context("replacing the custom field catalogue")?;
    if ctx.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit()
            .await
            .context("committing the custom field catalogue")?;
    }
    stats.written = done.written;
    stats.removed = done.removed;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_without_a_name_is_named_from_its_label() {
        let f: CustomField = serde_json::from_str(
            r#"{"custom_field_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11","label":"Shoe size",
                "type":"string","updated_at":"2026-01-02T03:04:05.000Z"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = to_row(&f).unwrap_or_else(|| panic!("a labelled field has a row"));
        assert_eq!(r.name, "Shoe_size");
        assert_eq!(r.field_type.as_deref(), Some("string"));
        assert!(r.updated_at.is_some());
        let bare: CustomField =
            serde_json::from_str(r#"{"custom_field_id":"4a9e2a1c-5a62-4a7c-9f5e-1bd9b3ab8a11"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(to_row(&bare).is_none());
    }
}
