//! `outbound` rows refused because Constant Contact says the contact unsubscribed.

use sqlx::PgConnection;

use crate::core::optouts::Refusal;
use crate::core::states::OutboundState;

/// Marks `skipped` (with the refusal's reason) every `pending` outbound row of `account`
/// whose email equals a refused one (case-insensitively) and that would add the contact to
/// a list (an `upsert` with non-empty `list_ids`), in one statement. Returns the number of rows skipped.
pub async fn skip_pending_list_adds(
    conn: &mut PgConnection,
    account: &str,
    refusals: &[Refusal],
) -> Result<u64, sqlx::Error> {
    if refusals.is_empty() {
        return Ok(0);
    }
    let emails: Vec<&str> = refusals.iter().map(|r| r.email.as_str()).collect();
    let reasons: Vec<&str> = refusals.iter().map(|r| r.reason.as_str()).collect();
    let done = sqlx::query(
        "UPDATE ccsync.outbound o
         SET state = $4, reason = u.reason, updated_at = now()
         FROM (SELECT DISTINCT ON (email) email, reason
               FROM UNNEST($2::text[], $3::text[]) AS x(email, reason)) AS u
         WHERE o.account_id = $1 AND o.state = $5
           AND lower(o.email) = u.email AND cardinality(o.list_ids) > 0
           AND o.op = 'upsert'",
    )
    .bind(account)
    .bind(emails)
    .bind(reasons)
    .bind(OutboundState::Skipped.as_str())
    .bind(OutboundState::Pending.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
