//! `ccsync status` and the run reports of `ccsync sync`: a table on a terminal, JSON on request.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::config::Settings;
use crate::core::cycle::{job_named, Schedule};
use crate::store;
use crate::sync::runner::{Outcome, RunReport};

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// How many of the most common reasons (of `failed` and `skipped` rows) `status` shows.
const TOP_REASONS: i64 = 5;

/// Per account: `{"account", "by_state": {state: rows}, "top_reasons": [{state, reason, rows}]}`.
fn outbound_json(
    by_state: &[(String, String, i64)],
    reasons: &[store::status::ReasonCount],
) -> serde_json::Value {
    let mut accounts: std::collections::BTreeMap<&str, serde_json::Value> = Default::default();
    for (a, s, n) in by_state {
        accounts
            .entry(a)
            .or_insert_with(|| json!({"account": a, "by_state": {}, "top_reasons": []}))
            ["by_state"][s] = json!(n);
    }
    for r in reasons {
        let entry = accounts
            .entry(&r.account_id)
            .or_insert_with(|| json!({"account": r.account_id, "by_state": {}, "top_reasons": []}));
        if let Some(list) = entry["top_reasons"].as_array_mut() {
            list.push(json!({"state": r.state, "reason": r.reason, "rows": r.rows}));
        }
    }
    serde_json::Value::Array(accounts.into_values().collect())
}

/// Gathers the status as JSON (also the source of the table).
pub async fn collect(pool: &PgPool, settings: &Settings) -> anyhow::Result<serde_json::Value> {
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let jobs = store::status::jobs(&mut conn)
        .await
        .context("reading job status")?;
    let usage = store::usage::used_today(&mut conn)
        .await
        .context("reading API usage")?;
    let exhausted = store::usage::quota_exhausted_today(&mut conn).await?;
    let outbound = store::status::outbound_by_state(&mut conn).await?;
    let reasons = store::status::outbound_top_reasons(&mut conn, TOP_REASONS).await?;
    let in_flight = store::status::activities_in_flight(&mut conn).await?;
    let tokens = store::tokens::info(&mut conn).await?;
    let tables = store::retention::table_sizes(&mut conn)
        .await
        .context("reading table sizes")?;
    let used: i64 = usage.iter().map(|(_, n)| n).sum();
    let limit = settings.constant_contact.daily_request_limit as i64;
    let now = Utc::now();
    let schedule = Schedule::parse(settings.cron_entries()).ok();
    let planned = if settings.freshness.targets().any() {
        Some(
            store::planner::current(&mut conn, settings, schedule.as_ref(), now)
                .await
                .context("reading what the planner needs")?,
        )
    } else {
        None
    };
    let next_run = |account: Option<&str>, job: &str| {
        let job = job_named(job)?;
        let by_plan = planned
            .as_ref()
            .zip(account)
            .and_then(|(p, a)| p.next_run(a, job));
        by_plan.or_else(|| schedule.as_ref().and_then(|s| s.next_for(job, now)))
    };
    let jobs_json: Vec<_> = jobs
        .iter()
        .map(|j| {
            json!({
                "account": j.account_id,
                "job": j.job,
                "watermark": j.watermark,
                "lag_seconds": j.watermark.map(|w| (now - w).num_seconds()),
                "last_success_at": j.last_success_at,
                "last_run_started_at": j.last_run_started_at,
                "last_run_finished_at": j.last_run_finished_at,
                "last_outcome": j.last_outcome,
                "last_error": j.last_error,
                "last_stats": j.last_stats,
                "next_run_at": next_run(Some(&j.account_id), &j.job),
            })
        })
        .collect();
    Ok(json!({
        "jobs": jobs_json,
        "api_requests_today": {
            "total": used,
            "by_account": usage.iter().map(|(a, n)| json!({"account": a, "requests": n})).collect::<Vec<_>>(),
            "daily_limit": limit,
            "budget_left": if exhausted { 0 } else { (limit - used).max(0) },
            "quota_exhausted": exhausted,
        },
        "outbound": outbound_json(&outbound, &reasons),
        "activities_in_flight": in_flight.iter().map(|(a, n)| json!({"account": a, "activities": n})).collect::<Vec<_>>(),
        "tokens": tokens,
        "tables": tables,
        "retention": {
            "cron_utc": settings.schedule.retention,
            "days": settings.retention.days().iter().map(|(k, v)| (k.trim_end_matches("_days").to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "schedule": settings.cron_entries().iter().map(|(job, expr)| json!({
            "job": job, "cron_utc": expr, "next_run_at": next_run(None, job),
        })).collect::<Vec<_>>(),
        "plan": planned.as_ref().map(plan_json),
    }))
}

/// The request-budget plan: targets, the budget it spends, and per account the interval
/// of each planned job, what it costs a day and when it runs next.
fn plan_json(p: &store::planner::Planned) -> serde_json::Value {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
    json!({
        "targets_seconds": {
            "unsubscribes": secs(p.targets.unsubscribes),
            "contacts": secs(p.targets.contacts),
            "lists": secs(p.targets.lists),
            "push": secs(p.targets.push),
        },
        "budget_reserve": p.targets.reserve,
        "plannable_requests_per_day": p.plan.plannable_per_day.round(),
        "planned_requests_per_day": p.plan.planned_per_day.round(),
        "short_of_target": p.plan.short.iter().map(|j| j.as_str()).collect::<Vec<_>>(),
        "accounts": p.plan.accounts.iter().map(|a| json!({
            "account": a.account,
            "requests_per_day": (a.requests_per_day * 10.0).round() / 10.0,
            "jobs": a.intervals.iter().map(|(job, d)| json!({
                "job": job.as_str(),
                "interval_seconds": d.as_secs(),
                "expected_staleness_seconds": d.as_secs(),
                "next_run_at": p.next_run(&a.account, *job),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Prints the status.
pub async fn print(pool: &PgPool, settings: &Settings, as_json: bool) -> anyhow::Result<()> {
    let v = collect(pool, settings).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let jobs = store::status::jobs(&mut *pool.acquire().await?).await?;
    println!(
        "{:<12} {:<13} {:<21} {:<10} {:<21} {:<10} {:<21} ERROR",
        "ACCOUNT", "JOB", "WATERMARK", "LAG", "LAST RUN", "OUTCOME", "NEXT RUN"
    );
    let next_at = |account: &str, job: &str| -> Option<DateTime<Utc>> {
        v["jobs"]
            .as_array()?
            .iter()
            .find(|r| r["account"] == account && r["job"] == job)?["next_run_at"]
            .as_str()?
            .parse()
            .ok()
    };
    let now = Utc::now();
    for j in &jobs {
        let lag = j
            .watermark
            .and_then(|w| (now - w).to_std().ok())
            .map(|d| {
                humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
            })
            .unwrap_or_else(|| "-".into());
        let next = next_at(&j.account_id, &j.job);
        println!(
            "{:<12} {:<13} {:<21} {:<10} {:<21} {:<10} {:<21} {}",
            j.account_id,
            j.job,
            ts(j.watermark),
            lag,
            ts(j.last_run_started_at),
            j.last_outcome.as_deref().unwrap_or("-"),
            ts(next),
            j.last_error.as_deref().unwrap_or("")
        );
    }
    let u = &v["api_requests_today"];
    println!(
        "\nAPI requests today: {} of {} (left {}){}",
        u["total"],
        u["daily_limit"],
        u["budget_left"],
        if u["quota_exhausted"].as_bool() == Some(true) {
            " — quota exhausted, paused until 00:00 UTC"
        } else {
            ""
        }
    );
    if let Some(p) = v["plan"].as_object() {
        let short: Vec<&str> = p["short_of_target"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j.as_str())
            .collect();
        println!(
            "plan: {} requests/day planned of {} the budget allows{}",
            p["planned_requests_per_day"],
            p["plannable_requests_per_day"],
            if short.is_empty() {
                " — every target met".to_string()
            } else {
                format!(" — short of target: {}", short.join(", "))
            }
        );
        for a in p["accounts"].as_array().into_iter().flatten() {
            let jobs: Vec<String> = a["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    let every =
                        std::time::Duration::from_secs(j["interval_seconds"].as_u64().unwrap_or(0));
                    format!(
                        "{} every {}",
                        j["job"].as_str().unwrap_or("-"),
                        humantime::format_duration(every)
                    )
                })
                .collect();
            println!(
                "  {}: {} ({} requests/day)",
                a["account"].as_str().unwrap_or("-"),
                jobs.join(", "),
                a["requests_per_day"]
            );
        }
    }
    for o in v["outbound"].as_array().into_iter().flatten() {
        let account = o["account"].as_str().unwrap_or("-");
        let counts: Vec<String> = o["by_state"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        println!("outbound {account}: {}", counts.join(", "));
        for r in o["top_reasons"].as_array().into_iter().flatten() {
            println!(
                "  {:>6} {:<8} {}",
                r["rows"],
                r["state"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    for a in v["activities_in_flight"].as_array().into_iter().flatten() {
        println!(
            "import activities in flight {}: {}",
            a["account"], a["activities"]
        );
    }
    for t in v["tables"].as_array().into_iter().flatten() {
        println!(
            "table {:<18} {:>10} rows {:>10}",
            t["table"].as_str().unwrap_or("-"),
            t["rows"],
            human_bytes(t["bytes"].as_i64().unwrap_or(0))
        );
    }
    for t in v["tokens"].as_array().into_iter().flatten() {
        println!(
            "tokens {}: access expires {}, refresh {}{}",
            t["account_id"],
            t["access_expires_at"],
            t["refresh_kind"],
            if t["needs_reauth"].as_bool() == Some(true) {
                " — NEEDS RE-AUTHORISATION"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `12.3 MiB`.
fn human_bytes(n: i64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// Prints what a `sync` did.
pub fn print_reports(reports: &[RunReport], as_json: bool) {
    if as_json {
        let v: Vec<_> = reports
            .iter()
            .map(|r| {
                let (outcome, detail) = match &r.outcome {
                    Outcome::Succeeded(s) => ("succeeded", s.clone()),
                    Outcome::Skipped => ("skipped", json!(null)),
                    Outcome::Failed(e) => ("failed", json!(e)),
                };
                json!({"run_id": r.run_id, "account": r.account, "job": r.job.as_str(),
                       "outcome": outcome, "detail": detail})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    for r in reports {
        match &r.outcome {
            Outcome::Succeeded(s) => {
                println!(
                    "{:<12} {:<13} ok      {}",
                    r.account,
                    r.job.as_str(),
                    summarize(s)
                );
                if let Some(plan) = s.get("plan").filter(|p| p.is_object()) {
                    print_push_plan(plan);
                }
            }
            Outcome::Skipped => println!(
                "{:<12} {:<13} skipped (already running elsewhere)",
                r.account,
                r.job.as_str()
            ),
            Outcome::Failed(e) => println!("{:<12} {:<13} FAILED  {e}", r.account, r.job.as_str()),
        }
    }
}

fn summarize(s: &serde_json::Value) -> String {
    let keys = [
        "pages",
        "seen",
        "created",
        "updated",
        "unchanged",
        "stale",
        "deleted",
        "unsubscribed",
        "changes_written",
        "api_requests",
        "duration_ms",
        "dry_run",
        // push
        "rows_considered",
        "batches_submitted",
        "rows_submitted",
        "bytes_submitted",
        "skipped",
        "failed_invalid",
        "conflicts",
        "deferred",
        "already_there",
        "completed",
        "failed",
        "retrying",
        "in_flight_left",
        "removals_submitted",
        "deletes_submitted",
        "fallback_rows",
        "stopped",
    ];
    let mut out: Vec<String> = keys
        .iter()
        .filter_map(|k| s.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    // The PUT path (field-only changes, unsubscribes), when it did anything.
    if let Some(p) = s.get("put").filter(|p| p["contacts"].as_u64() > Some(0)) {
        for k in ["contacts", "puts", "completed", "skipped", "failed"] {
            out.push(format!("put.{k}={}", p[k]));
        }
    }
    out.join(" ")
}

/// The dry-run plan of a push: what would be pushed, skipped or refused, and why.
fn print_push_plan(plan: &serde_json::Value) {
    let list = |k: &str| {
        plan.get(k)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let text = |v: &serde_json::Value, k: &str| match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let note = text(plan, "note");
    if !note.is_empty() {
        println!("    note: {note}");
    }
    for (i, b) in list("batches").iter().enumerate() {
        println!(
            "    would push  import {}: {} contacts ({} rows), {} bytes, lists {}",
            i + 1,
            text(b, "contacts"),
            text(b, "rows"),
            text(b, "bytes"),
            text(b, "list_ids")
        );
    }
    for p in list("puts") {
        println!(
            "    would PUT   {} {} (rows {}): GET, then PUT /contacts/{{id}}",
            text(&p, "email"),
            text(&p, "fields"),
            text(&p, "rows")
        );
    }
    for d in list("directs") {
        println!(
            "    would {:<5} {} (rows {}) {}",
            match text(&d, "op").as_str() {
                "unsubscribe" => "unsub".to_string(),
                "remove_from_lists" => "remove".to_string(),
                other => other.to_string(),
            },
            text(&d, "email"),
            text(&d, "rows"),
            text(&d, "list_ids")
        );
    }
    for (label, key) in [
        ("would skip", "skipped"),
        ("would fail", "failed"),
        ("deferred", "deferred"),
        ("already", "already_there"),
    ] {
        for t in list(key) {
            println!(
                "    {label:<11} #{} {}: {}",
                text(&t, "id"),
                text(&t, "email"),
                text(&t, "reason")
            );
        }
    }
    for c in list("conflicts") {
        println!(
            "    conflict    #{} {}: {} stays {} in Constant Contact (local {} not pushed)",
            text(&c, "id"),
            text(&c, "email"),
            text(&c, "field"),
            text(&c, "constant_contact"),
            text(&c, "local")
        );
    }
}

/// `ccsync status [--json]`.
pub async fn run(settings: &Settings, as_json: bool) -> anyhow::Result<std::process::ExitCode> {
    let pool = crate::startup::connect(settings).await?;
    print(&pool, settings, as_json).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
