//! The one place a job's watermark is advanced (law 4): only forward, only after every page
//! it covers is committed, and only from Constant Contact's own timestamps (the largest one
//! the pages carried), never from this host's clock. Jobs without a watermark (lists,
//! reconcile) record their success through the same call with `None`.

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::context::JobContext;
use crate::core::job::Job;
use crate::store;

/// Advances `job`'s watermark of `account` to `to` (never backwards) and records the
/// success. Call it after the last page it covers has committed. A dry run writes nothing.
pub async fn advance(
    ctx: &JobContext,
    account: &str,
    job: Job,
    to: Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    if ctx.dry_run {
        return Ok(());
    }
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    store::sync_state::advance_watermark(&mut conn, account, job.as_str(), to)
        .await
        .with_context(|| format!("advancing the {job} watermark of account {account}"))
}

/// The stored watermark of `job`, if any.
pub async fn read(
    ctx: &JobContext,
    account: &str,
    job: Job,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let mut conn = ctx.pool.acquire().await.context("acquiring a connection")?;
    store::sync_state::watermark(&mut conn, account, job.as_str())
        .await
        .with_context(|| format!("reading the {job} watermark of account {account}"))
}
