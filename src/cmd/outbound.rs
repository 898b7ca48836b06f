//! `ccsync outbound`: the operator's view of the queue of local changes, and the two
//! actions on it — requeue `failed` rows (`retry`), give up on `pending` rows (`cancel`).
//! Each action is one batched statement; rows in any other state are left alone and named.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::cli::{OutboundCommand, OutboundList};
use crate::config::Settings;
use crate::store;

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `ccsync outbound …`.
pub async fn run(
    settings: &Settings,
    action: Option<OutboundCommand>,
    list: OutboundList,
) -> anyhow::Result<ExitCode> {
    let pool = crate::startup::connect(settings).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    match action {
        None => {
            let rows =
                store::outbound::list(&mut conn, list.state, list.account.as_deref(), list.limit)
                    .await
                    .context("listing the outbound queue")?;
            if list.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_rows(&rows);
            }
        }
        Some(OutboundCommand::Retry {
            ids,
            failed,
            account,
        }) => {
            let done = if failed {
                store::outbound::requeue_all_failed(&mut conn, account.as_deref()).await
            } else {
                store::outbound::requeue_failed(&mut conn, &ids).await
            }
            .context("requeueing failed rows")?;
            println!("requeued {} row(s){}", done.len(), id_list(&done));
            report_left_alone(&mut conn, &ids, &done, "not failed").await?;
        }
        Some(OutboundCommand::Cancel { ids }) => {
            let done = store::outbound::cancel_pending(&mut conn, &ids)
                .await
                .context("cancelling pending rows")?;
            println!("cancelled {} row(s){}", done.len(), id_list(&done));
            report_left_alone(&mut conn, &ids, &done, "not pending").await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn id_list(ids: &[i64]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let s: Vec<_> = ids.iter().map(i64::to_string).collect();
    format!(": {}", s.join(", "))
}

/// Names the requested ids the action did not change, with their state.
async fn report_left_alone(
    conn: &mut sqlx::PgConnection,
    requested: &[i64],
    done: &[i64],
    why: &str,
) -> anyhow::Result<()> {
    let mut rest: Vec<i64> = requested
        .iter()
        .copied()
        .filter(|id| !done.contains(id))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    if rest.is_empty() {
        return Ok(());
    }
    let states = store::outbound::states_of(conn, &rest).await?;
    let named: Vec<String> = rest
        .iter()
        .map(|id| match states.get(id) {
            Some(s) => format!("{id} ({s})"),
            None => format!("{id} (no such row)"),
        })
        .collect();
    println!("left alone ({why}): {}", named.join(", "));
    Ok(())
}

/// A value as the table shows it: control characters (a newline, a terminal escape sequence)
/// escaped, so that an application's hostile email or op cannot forge rows or drive the
/// terminal. `--json` carries the values as they are.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

fn print_rows(rows: &[store::outbound::QueueRow]) {
    println!(
        "{:>8} {:<12} {:<32} {:<17} {:<10} {:>8} {:<21} {:<21} {:<38} REASON",
        "ID", "ACCOUNT", "EMAIL", "OP", "STATE", "ATTEMPTS", "CREATED", "UPDATED", "ACTIVITY"
    );
    for r in rows {
        println!(
            "{:>8} {:<12} {:<32} {:<17} {:<10} {:>8} {:<21} {:<21} {:<38} {}",
            r.id,
            shown(&r.account),
            shown(&r.email),
            shown(&r.op),
            r.state,
            r.attempts,
            ts(r.created_at),
            ts(r.updated_at),
            shown(r.activity_id.as_deref().unwrap_or("-")),
            shown(r.reason.as_deref().unwrap_or(""))
        );
    }
    if rows.is_empty() {
        println!("(no rows)");
    }
}
