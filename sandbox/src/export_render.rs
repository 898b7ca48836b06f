//! The CSV of a completed contact export, rendered from the account as it is when the
//! activity completes.
//!
//! The columns are the export guide's field names (the spec lists none): `email_address`,
//! `first_name`, `last_name`, `job_title`, `company_name`, `phone_number`, `street`, `city`,
//! `state`, `zip`, `country`, `anniversary`, `birthday_month`, `birthday_day`, `email_lists`
//! (list names), `email_permission`, `email_optin_source`, `email_optin_date`,
//! `email_optout_source`, `email_optout_date`, `email_optout_reason`, `source_name`,
//! `created_at`, `updated_at`, then one column per custom field, headed by its name. The
//! guide names no `contact_id` column; the sandbox adds one (first) only when the account's
//! switch says so (`AccountCtl::set_export_contact_ids`).
//!
//! Worst cases on purpose: an export of all contacts includes deleted contacts, and nothing
//! in a row says that it is deleted; phones, addresses and sources lose their kinds.

use uuid::Uuid;

use super::state::{fmt_ts, Account, Contact, ExportJob, ExportSource};

/// The guide's field names, in the order the sandbox writes them.
pub(crate) const FIELDS: &[&str] = &[
    "email_address",
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "phone_number",
    "street",
    "city",
    "state",
    "zip",
    "country",
    "anniversary",
    "birthday_month",
    "birthday_day",
    "email_lists",
    "email_permission",
    "email_optin_source",
    "email_optin_date",
    "email_optout_source",
    "email_optout_date",
    "email_optout_reason",
    "source_name",
    "created_at",
    "updated_at",
];

/// Renders `job` from the account as it is now: the CSV and its row count.
pub(crate) fn render(acct: &Account, job: &ExportJob) -> (String, u64) {
    let custom: Vec<(Uuid, String)> = acct
        .custom_fields
        .iter()
        .map(|f| (f.custom_field_id, f.name.clone()))
        .collect();
    let mut columns: Vec<String> = Vec::new();
    if acct.export_contact_ids {
        columns.push("contact_id".into());
    }
    match &job.fields {
        Some(f) => columns.extend(f.iter().cloned()),
        None => {
            columns.extend(FIELDS.iter().map(|s| s.to_string()));
            columns.extend(custom.iter().map(|(_, n)| n.clone()));
        }
    }
    let mut out = String::new();
    write_row(&mut out, columns.iter().map(String::as_str));
    let mut rows = 0u64;
    for slot in acct.contacts.values() {
        let c: &Contact = &slot.c;
        if !selected(c, job) {
            continue;
        }
        rows += 1;
        let values: Vec<String> = columns
            .iter()
            .map(|col| value(acct, c, col, &custom))
            .collect();
        write_row(&mut out, values.iter().map(String::as_str));
    }
    (out, rows)
}

fn selected(c: &Contact, job: &ExportJob) -> bool {
    let in_source = match &job.source {
        ExportSource::All => true,
        ExportSource::ContactIds(ids) => ids.contains(&c.core.contact_id),
        ExportSource::ListIds(lists) => {
            !c.is_deleted() && c.subs.list_memberships.iter().any(|l| lists.contains(l))
        }
    };
    let status_ok = match job.status.as_deref() {
        None => true,
        Some("removed") => c.is_deleted(),
        Some("unsubscribed") => !c.is_deleted() && c.permission() == "unsubscribed",
        Some(_) => !c.is_deleted() && c.permission() != "unsubscribed",
    };
    in_source && status_ok
}

fn value(acct: &Account, c: &Contact, col: &str, custom: &[(Uuid, String)]) -> String {
    let e = &c.core.email_address;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let t = |v: &Option<chrono::DateTime<chrono::Utc>>| {
        v.as_ref()
            .map(|d| fmt_ts(d).to_string())
            .unwrap_or_default()
    };
    let addr = c.subs.street_addresses.first();
    let addr_part = |f: fn(&super::state::StreetAddress) -> &Option<String>| {
        addr.and_then(|a| f(a).clone()).unwrap_or_default()
    };
    match col {
        "contact_id" => c.core.contact_id.to_string(),
        "email_address" => e.address.clone(),
        "first_name" => s(&c.core.first_name),
        "last_name" => s(&c.core.last_name),
        "job_title" => s(&c.core.job_title),
        "company_name" => s(&c.core.company_name),
        "phone_number" => c
            .subs
            .phone_numbers
            .first()
            .map(|p| p.phone_number.clone())
            .unwrap_or_default(),
        "street" => addr_part(|a| &a.street),
        "city" => addr_part(|a| &a.city),
        "state" => addr_part(|a| &a.state),
        "zip" => addr_part(|a| &a.postal_code),
        "country" => addr_part(|a| &a.country),
        "anniversary" => s(&c.core.anniversary),
        "birthday_month" => c
            .core
            .birthday_month
            .map(|v| v.to_string())
            .unwrap_or_default(),
        "birthday_day" => c
            .core
            .birthday_day
            .map(|v| v.to_string())
            .unwrap_or_default(),
        "email_lists" => c
            .subs
            .list_memberships
            .iter()
            .filter_map(|l| acct.lists.get(l).map(|l| l.name.clone()))
            .collect::<Vec<_>>()
            .join(", "),
        "email_permission" => e.permission_to_send.clone(),
        "email_optin_source" => s(&e.opt_in_source),
        "email_optin_date" => t(&e.opt_in_date),
        "email_optout_source" => s(&e.opt_out_source),
        "email_optout_date" => t(&e.opt_out_date),
        "email_optout_reason" => s(&e.opt_out_reason),
        "source_name" => c.core.create_source.clone(),
        "created_at" => fmt_ts(&c.core.created_at).to_string(),
        "updated_at" => fmt_ts(&c.core.updated_at).to_string(),
        other => custom
            .iter()
            .find(|(_, n)| n == other)
            .and_then(|(id, _)| {
                c.subs
                    .custom_fields
                    .iter()
                    .find(|v| v.custom_field_id == *id)
            })
            .and_then(|v| v.value.clone())
            .unwrap_or_default(),
    }
}

/// One CSV line (RFC 4180: a field with a comma, quote or line break is quoted, quotes
/// doubled; lines end in CRLF).
fn write_row<'a>(out: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if f.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_and_line_breaks_are_quoted() {
        let mut s = String::new();
        write_row(&mut s, ["a", "b,c", "say \"hi\"", "x\ny"].into_iter());
        assert_eq!(s, "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\"\r\n");
    }
}
