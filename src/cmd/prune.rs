//! `ccsync prune [--dry-run]`: applies `[retention]` once, now, and prints the rows deleted
//! (or, dry, that would be) per table. The daemon runs the same prune on
//! `schedule.retention` (`startup::retention_loop`).

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::store;
use crate::store::retention::Pruned;

/// `ccsync prune`.
pub async fn run(settings: &Settings, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let pool = crate::startup::connect(settings).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let policy = settings.retention.policy();
    let pruned = store::retention::prune_all(&mut conn, &policy, dry_run, &|| true)
        .await
        .context("pruning old rows")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": dry_run,
                "tables": pruned,
            }))?
        );
    } else {
        print!("{}", table(&pruned, dry_run));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable report.
pub fn table(pruned: &[Pruned], dry_run: bool) -> String {
    let verb = if dry_run { "WOULD DELETE" } else { "DELETED" };
    let mut out = format!("{:<18} {:>10} {:>12}\n", "TABLE", "KEEP DAYS", verb);
    for p in pruned {
        let keep = if p.days == 0 {
            "forever".to_string()
        } else {
            p.days.to_string()
        };
        out.push_str(&format!("{:<18} {:>10} {:>12}\n", p.table, keep, p.rows));
    }
    let total: u64 = pruned.iter().map(|p| p.rows).sum();
    out.push_str(&format!(
        "{total} row(s) {}\n",
        if dry_run {
            "would be deleted (dry run)"
        } else {
            "deleted"
        }
    ));
    out
}
