//! `ccsync bench push`: the requests one push spends per row kind and size.
//!
//! `ccsync bench pull`: end-to-end pull throughput with rate limiting off, where a page's
//! apply spends its time, API requests and this process's peak RSS; then the apply stage
//! alone (the store emptied, pages fetched ahead, only their applying timed) and the
//! fetch stage alone.
//!
//! For a memory figure of ccsync alone, run the sandbox as its own process
//! (`ccsync sandbox --contacts 200000`) and pass `--sandbox http://127.0.0.1:8765/v3`:
//! the sandbox holds the whole account in memory.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::demo::{demo_pool, reset_bench, sandbox_settings};
use crate::cli::{BackfillMode, BenchCommand};
use crate::config::Settings;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sync::{self, Job, Outcome};
use crate::telemetry;

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub async fn run(what: BenchCommand) -> anyhow::Result<ExitCode> {
    let mut log = Settings::load_unvalidated(None)?.log;
    log.level = "warn".into();
    telemetry::init(&log);
    match what {
        BenchCommand::Pull {
            contacts,
            sandbox,
            in_process,
        } => {
            pull(contacts, sandbox, in_process).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::All { quick } => all(quick).await,
        BenchCommand::Push { rows } => {
            push(&rows).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Planner {
            accounts,
            unsubscribes,
            contacts,
            lists,
            daily_limit,
            changes_per_day,
        } => {
            let targets = crate::core::planner::Targets {
                unsubscribes: Some(unsubscribes.into()),
                contacts: Some(contacts.into()),
                lists: Some(lists.into()),
                push: None,
                reserve: crate::config::Settings::load_unvalidated(None)?
                    .freshness
                    .budget_reserve,
            };
            planner(&targets, &accounts, daily_limit, changes_per_day);
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Backfill {
            contacts,
            latency_ms,
            jitter_ms,
            rate,
            mode,
            export_ms,
        } => {
            use BackfillMode::{Export, Paged, Sliced};
            let modes: &[BackfillMode] = match mode {
                Paged => &[Paged],
                Sliced => &[Sliced],
                Export => &[Export],
                BackfillMode::Both => &[Paged, Sliced],
                BackfillMode::All => &[Paged, Sliced, Export],
            };
            let latency = Latency {
                fixed: Duration::from_millis(latency_ms),
                jitter: Duration::from_millis(jitter_ms),
            };
            backfill(
                contacts,
                latency,
                rate,
                modes,
                Duration::from_millis(export_ms),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `bench planner`: one simulated day per account count.
pub(super) fn planner(
    targets: &crate::core::planner::Targets,
    accounts: &[usize],
    daily_limit: u64,
    changes_per_day: f64,
) -> Vec<(usize, crate::core::planner::DayReport)> {
    let mut out = Vec::with_capacity(accounts.len());
    use crate::core::job::Job;
    let fmt = |d: Option<Duration>| {
        d.map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "targets: opt-outs {}, contacts {}, lists {}; {daily_limit} requests/day, reserve {}, {changes_per_day} changes/account/day",
        fmt(targets.unsubscribes),
        fmt(targets.contacts),
        fmt(targets.lists),
        targets.reserve
    );
    println!(
        "{:>8} {:>13} {:>8} {:>16} {:>16} {:>16}  short of target",
        "accounts", "requests/day", "refused", "worst opt-outs", "worst contacts", "worst lists"
    );
    for n in accounts {
        let r = crate::core::planner::simulate_day(targets, *n, daily_limit, changes_per_day);
        let short: Vec<&str> = r.short.iter().map(|j| j.as_str()).collect();
        println!(
            "{:>8} {:>13} {:>8} {:>16} {:>16} {:>16}  {}",
            n,
            r.requests,
            r.refused,
            fmt(r.gap(Job::Unsubscribes)),
            fmt(r.gap(Job::Contacts)),
            fmt(r.gap(Job::Lists)),
            if short.is_empty() {
                "-".to_string()
            } else {
                short.join(", ")
            }
        );
        out.push((*n, r));
    }
    out
}

/// `bench pull`: against the sandbox at `external`, else one started in its own process
/// (or, with `in_process`, in this one, its work and memory then counted as ccsync's).
pub(super) async fn pull(
    contacts: usize,
    external: Option<String>,
    in_process: bool,
) -> anyhow::Result<()> {
    let account = "bench";
    let (db_url, pool) = demo_pool("ccsync_bench").await?;
    reset_bench(&pool).await?;
    let mut child = None;
    let external = match (external, in_process) {
        (Some(base), _) => Some(base),
        (None, true) => None,
        (None, false) => {
            let (process, base) = SandboxProcess::start(contacts).await?;
            child = Some(process);
            Some(base)
        }
    };
    let (api_base, token_url, refresh, sandbox_guard) = match external {
        Some(base) => {
            let u = url::Url::parse(&base).context("--sandbox")?;
            let origin = u.origin().ascii_serialization();
            let rt = SandboxProcess::refresh_token(&origin)
                .await
                .context("asking the sandbox for a refresh token")?;
            (
                base.clone(),
                format!("{origin}/oauth2/default/v1/token"),
                rt,
                None,
            )
        }
        None => {
            let t = Instant::now();
            let sb = Sandbox::start(SandboxConfig {
                contacts,
                ..SandboxConfig::default()
            })
            .await?;
            eprintln!(
                "in-process sandbox with {contacts} contacts ready in {:.2?}",
                t.elapsed()
            );
            let rt = sb.default_account().seed_refresh_token();
            (sb.api_base(), sb.token_url(), rt, Some(sb))
        }
    };
    let mut settings = sandbox_settings(&api_base, &token_url, refresh, account, &db_url)?;
    // Counting requests, not rationing them: a 1M-contact pull alone takes 2,000.
    settings.constant_contact.daily_request_limit = u64::MAX / 4;
    let settings = Arc::new(settings);
    let ctx = crate::startup::job_context(
        settings.clone(),
        pool.clone(),
        CancellationToken::new(),
        false,
    )?;
    let rss_before = peak_rss_kib().unwrap_or(0);
    let started = Instant::now();
    let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
    let elapsed = started.elapsed();
    let Some(Outcome::Succeeded(stats)) = reports.first().map(|r| r.outcome.clone()) else {
        super::status::print_reports(&reports, false);
        anyhow::bail!("the pull did not succeed");
    };
    let seen = stats["seen"].as_u64().unwrap_or(0);
    let apply_ms = stats["apply_ms"].as_u64().unwrap_or(0).max(1);
    let peak = peak_rss_kib().unwrap_or(0);
    // Neighbouring time slices overlap by a second, so a sliced pull sees a few contacts
    // twice: the rate is of distinct contacts, as stored.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ccsync.contacts WHERE account_id = $1")
            .bind(account)
            .fetch_one(&pool)
            .await
            .context("counting the stored contacts")?;
    println!(
        "bench pull: {stored} contacts ({seen} page elements, slices overlapping) in {:.2}s",
        elapsed.as_secs_f64()
    );
    println!(
        "  end to end      {:>10.0} contacts/s",
        stored as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  apply per page  {:>10.0} contacts/s ({} ms summed over pages; {} apply at once)",
        seen as f64 * 1000.0 / apply_ms as f64,
        apply_ms,
        sync::walk::APPLY_CONCURRENCY
    );
    println!(
        "  apply phases    {}",
        phase_shares(&stats["apply_phases_us"], seen)
    );
    println!("  pages           {:>10}", stats["pages"]);
    let stage = apply_stage(&ctx, &settings.accounts[0]).await?;
    println!(
        "  apply stage     {:>10.0} contacts/s ({} contacts; decoded pages to committed, {} at once, fetching not timed)",
        stage.per_s, stage.contacts, sync::walk::APPLY_CONCURRENCY
    );
    println!(
        "  stage phases    {}",
        phase_shares(&stage.phases, stage.contacts)
    );
    println!(
        "  fetch stage     {:>10.0} contacts/s (fetching and decoding pages alone, one read ahead)",
        stage.fetch_per_s
    );
    println!("  API requests    {:>10}", stats["api_requests"]);
    println!(
        "  peak RSS        {:>10.1} MiB (this process{}; {:.1} MiB before the pull)",
        peak as f64 / 1024.0,
        if sandbox_guard.is_some() {
            ", sandbox included"
        } else {
            " only"
        },
        rss_before as f64 / 1024.0
    );
    pool.close().await;
    if let Some(mut process) = child {
        process.stop().await;
    }
    Ok(())
}

/// `ccsync sandbox` in a process of its own, killed when dropped.
struct SandboxProcess(tokio::process::Child);

impl SandboxProcess {
    /// Starts it with `contacts` on a free port and waits until it answers (seeding a
    /// million contacts takes a while): the process and its API base.
    async fn start(contacts: usize) -> anyhow::Result<(SandboxProcess, String)> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let child = tokio::process::Command::new(&exe)
            .args(["sandbox", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--contacts", &contacts.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting `ccsync sandbox`")?;
        let mut process = SandboxProcess(child);
        let origin = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while SandboxProcess::refresh_token(&origin).await.is_err() {
            if let Ok(Some(status)) = process.0.try_wait() {
                anyhow::bail!("`ccsync sandbox` exited before answering: {status}");
            }
            if started.elapsed() > Duration::from_secs(600) {
                process.stop().await;
                anyhow::bail!("the sandbox did not answer within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "sandbox process with {contacts} contacts ready in {:.2?}",
            started.elapsed()
        );
        Ok((process, format!("{origin}/v3")))
    }

    /// A refresh token of the sandbox's default account (its control API).
    async fn refresh_token(origin: &str) -> anyhow::Result<String> {
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!("{origin}/__control/accounts/default/refresh_token"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["refresh_token"]
            .as_str()
            .context("no refresh_token from the sandbox")?
            .to_string())
    }

    async fn stop(&mut self) {
        // Already gone is as good as stopped.
        let _ = self.0.kill().await;
    }
}

/// Each phase of the apply as its share of the whole and its time per contact.
fn phase_shares(phases: &serde_json::Value, contacts: u64) -> String {
    let total: u64 = phases
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    let parts: Vec<String> = phases
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let us = v.as_u64().unwrap_or(0);
            format!(
                "{k} {:.0}% ({:.1} µs)",
                us as f64 * 100.0 / total.max(1) as f64,
                us as f64 / contacts.max(1) as f64
            )
        })
        .collect();
    parts.join(", ")
}

/// What the apply stage alone reached.
pub(super) struct StageResult {
    pub contacts: u64,
    pub per_s: f64,
    /// Fetching and decoding alone (the untimed part), for comparison.
    pub fetch_per_s: f64,
    /// Where the stage's time went (microseconds, summed over pages).
    pub phases: serde_json::Value,
}

/// Pages decoded ahead of each timed stretch of the apply stage: enough for the stage to
/// run at full speed between fetches, few enough to keep memory bounded.
const STAGE_BATCH_PAGES: usize = 40;

/// The apply stage alone: the store emptied, the account's pages fetched and decoded
/// [`STAGE_BATCH_PAGES`] at a time, then each batch applied by the pull's own
/// `apply_page`, as many pages at once as a walk applies; only the applying is timed.
async fn apply_stage(
    ctx: &sync::JobContext,
    account: &crate::config::AccountSettings,
) -> anyhow::Result<StageResult> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    reset_bench(&ctx.pool).await?;
    let client = ctx.api.account(&account.id);
    let query = crate::ctct::ContactsQuery {
        status: Some("all".into()),
        include: Some(crate::ctct::CONTACT_INCLUDE.into()),
        limit: ctx.settings.sync.page_size,
        ..Default::default()
    };
    let mut pages = sync::pager::Pager::new(&client, client.contacts_url(&query)?);
    let spec = sync::walk::PageSpec::new(
        &account.id,
        None,
        uuid::Uuid::new_v4(),
        sync::walk::updated_at_mark,
    );
    let (mut contacts, mut timed, mut fetching) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut phases = sync::walk::ApplyPhases::default();
    loop {
        let fetch_started = Instant::now();
        let mut batch = Vec::with_capacity(STAGE_BATCH_PAGES);
        while batch.len() < STAGE_BATCH_PAGES {
            match pages.next().await? {
                Some(p) => batch.push(p.page),
                None => break,
            }
        }
        fetching += fetch_started.elapsed();
        if batch.is_empty() {
            break;
        }
        let started = Instant::now();
        let applied: Vec<_> = stream::iter(batch.iter())
            .map(|p| sync::walk::apply_page(ctx, &spec, p))
            .buffered(sync::walk::APPLY_CONCURRENCY)
            .try_collect()
            .await?;
        timed += started.elapsed();
        for a in &applied {
            contacts += a.stats.seen;
            phases += a.phases;
        }
    }
    Ok(StageResult {
        contacts,
        per_s: contacts as f64 / timed.as_secs_f64().max(1e-9),
        fetch_per_s: contacts as f64 / fetching.as_secs_f64().max(1e-9),
        phases: serde_json::to_value(phases)?,
    })
}

/// Page latency the sandbox adds to every answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Latency {
    pub fixed: Duration,
    pub jitter: Duration,
}

/// One walk of `bench backfill`.
pub(super) struct BackfillRow {
    pub walk: &'static str,
    pub seconds: f64,
    pub per_s: f64,
    pub ceiling_pct: f64,
    pub requests: u64,
    pub throttled: u64,
}

/// `bench backfill`: a first pull of `contacts` at `rate` requests/s with `latency` per
/// page, once per mode (sliced or not), each into an empty store.
pub(super) async fn backfill(
    contacts: usize,
    latency: Latency,
    rate: f64,
    modes: &[BackfillMode],
    export_processing: Duration,
) -> anyhow::Result<Vec<BackfillRow>> {
    let mut rows = Vec::with_capacity(modes.len());
    let account = "bench";
    let (db_url, pool) = demo_pool("ccsync_bench").await?;
    let apart = SandboxThreads::start(SandboxConfig {
        contacts: 0,
        requests_per_second: (rate > 0.0).then_some(rate),
        ..SandboxConfig::default()
    })
    .await?;
    let sb = &apart.sandbox;
    let ctl = sb.account(account);
    ctl.generate(contacts, 8, 42);
    ctl.set_export_contact_ids(true);
    sb.set_import_processing(export_processing);
    let page = 500.0;
    let ceiling = rate * page;
    println!(
        "bench backfill: {contacts} contacts, {rate} requests/s (ceiling {ceiling:.0} contacts/s), \
         {} ms latency + up to {} ms jitter, exports take {} s each (8 lists: 9 exports)",
        latency.fixed.as_millis(),
        latency.jitter.as_millis(),
        export_processing.as_secs_f64()
    );
    println!(
        "{:<8} {:>8} {:>10} {:>12} {:>8} {:>7} {:>9} {:>10}",
        "walk", "slices", "seconds", "contacts/s", "ceiling", "pages", "requests", "throttled"
    );
    for &mode in modes {
        reset_bench(&pool).await?;
        let mut settings = sandbox_settings(
            &sb.api_base(),
            &sb.token_url(),
            ctl.seed_refresh_token(),
            account,
            &db_url,
        )?;
        settings.constant_contact.requests_per_second = rate;
        settings.constant_contact.daily_request_limit = u64::MAX / 4;
        if mode != BackfillMode::Sliced {
            settings.sync.slice_streams = 1;
        }
        if mode == BackfillMode::Export {
            settings.sync.backfill = crate::core::backfill::Mode::Export;
        }
        let settings = Arc::new(settings);
        let ctx = crate::startup::job_context(
            settings.clone(),
            pool.clone(),
            CancellationToken::new(),
            false,
        )?;
        sb.set_latency(latency.fixed, latency.jitter);
        let throttled = sb.throttled_count();
        let started = Instant::now();
        let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Contacts]).await;
        let elapsed = started.elapsed().as_secs_f64();
        sb.set_latency(Duration::ZERO, Duration::ZERO);
        let Some(Outcome::Succeeded(stats)) = reports.first().map(|r| r.outcome.clone()) else {
            super::status::print_reports(&reports, false);
            anyhow::bail!("the pull did not succeed");
        };
        let seen = contacts as f64;
        let row = BackfillRow {
            walk: match mode {
                BackfillMode::Sliced => "sliced",
                BackfillMode::Export if stats["export"]["used"] == true => "export",
                BackfillMode::Export => "export?",
                _ => "paged",
            },
            seconds: elapsed,
            per_s: seen / elapsed,
            ceiling_pct: 100.0 * seen / elapsed / ceiling,
            requests: stats["api_requests"].as_u64().unwrap_or(0),
            throttled: sb.throttled_count() - throttled,
        };
        println!(
            "{:<8} {:>8} {:>10.1} {:>12.0} {:>7.1}% {:>7} {:>9} {:>10}",
            row.walk,
            stats["slices"].as_u64().unwrap_or(0),
            row.seconds,
            row.per_s,
            row.ceiling_pct,
            stats["pages"].as_u64().unwrap_or(0),
            row.requests,
            row.throttled
        );
        rows.push(row);
    }
    apart.stop();
    pool.close().await;
    Ok(rows)
}

/// The sandbox served by threads of its own, as a remote API would be: its rate limit
/// stamps a request when the request arrives, and a request that holds the sandbox's state
/// lock for a few milliseconds (a large slice's first scan) must not stall ccsync's
/// runtime — nor, with two worker threads, the sandbox's own intake of the next request,
/// which then looked early and was answered `throttled`.
struct SandboxThreads {
    sandbox: Sandbox,
    runtime: tokio::runtime::Runtime,
}

impl SandboxThreads {
    async fn start(cfg: SandboxConfig) -> anyhow::Result<SandboxThreads> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("sandbox")
            .enable_all()
            .build()
            .context("starting the sandbox's threads")?;
        let sandbox = runtime.spawn(Sandbox::start(cfg)).await??;
        Ok(SandboxThreads { sandbox, runtime })
    }

    fn stop(self) {
        self.sandbox.shutdown();
        self.runtime.shutdown_background();
    }
}

/// The row kinds `bench push` measures.
const PUSH_KINDS: &[(&str, &str)] = &[
    ("new", "new contacts on a list (import)"),
    (
        "add_list",
        "existing contacts, a field and a list they are not on (read + import)",
    ),
    (
        "field_only",
        "existing contacts, a field only (GET + PUT; import fallback above put_max_rows)",
    ),
];

/// Requests of one push run: (kind, rows, total requests).
pub(super) type PushRow = (&'static str, usize, u64);

pub(super) async fn push(sizes: &[usize]) -> anyhow::Result<Vec<PushRow>> {
    let mut out = Vec::new();
    let account = "bench";
    let (db_url, pool) = demo_pool("ccsync_bench").await?;
    println!(
        "bench push: requests per push run (in-process sandbox, rate limiting off)\n\
         {:<11} {:>6} {:>6} {:>8} {:>9} {:>5} {:>8} {:>6} {:>9} {:>6} {:>9} {:>10} {:>8}",
        "kind",
        "rows",
        "reads",
        "fb_reads",
        "put_gets",
        "puts",
        "submits",
        "polls",
        "confirms",
        "total",
        "fb_rows",
        "fb_window",
        "seconds"
    );
    for &n in sizes {
        for (kind, _) in PUSH_KINDS {
            reset_bench(&pool).await?;
            let sb = Sandbox::start(SandboxConfig {
                contacts: 0,
                ..SandboxConfig::default()
            })
            .await?;
            let ctl = sb.account(account);
            ctl.generate(n.max(50) + 50, 8, 11);
            let mut settings = sandbox_settings(
                &sb.api_base(),
                &sb.token_url(),
                ctl.seed_refresh_token(),
                account,
                &db_url,
            )?;
            settings.sync.poll_initial = std::time::Duration::from_millis(100);
            settings.sync.poll_max = std::time::Duration::from_millis(400);
            // Counting requests, not rationing them: the shared daily budget would stop a
            // 10,000-row run part way.
            settings.constant_contact.daily_request_limit = u64::MAX / 4;
            let settings = Arc::new(settings);
            let ctx = crate::startup::job_context(
                settings.clone(),
                pool.clone(),
                CancellationToken::new(),
                false,
            )?;
            let first = sync::run_cycle(&ctx, &settings.accounts, Job::cycle()).await;
            if first
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Failed(_)))
            {
                super::status::print_reports(&first, false);
                anyhow::bail!("the first cycle failed");
            }
            let lists = ctl.list_ids();
            let members: Vec<(String, Vec<uuid::Uuid>)> = ctl
                .contact_ids()
                .into_iter()
                .filter_map(|id| {
                    let c = ctl.contact(id)?;
                    let e = &c["email_address"];
                    (e["permission_to_send"] != "unsubscribed" && c["deleted_at"].is_null())
                        .then(|| Some((e["address"].as_str()?.to_lowercase(), ctl.memberships(id))))
                        .flatten()
                })
                .collect();
            let mut conn = pool.acquire().await.context("acquiring a connection")?;
            for i in 0..n {
                let (email, fields, rows_lists) = match *kind {
                    "new" => (
                        format!("bench.new.{i}@example.org"),
                        serde_json::json!({"first_name": "New"}),
                        vec![lists[i % lists.len()]],
                    ),
                    _ => {
                        let Some((email, on)) = members.get(i % members.len().max(1)) else {
                            anyhow::bail!("the bench sandbox has no subscribed contact");
                        };
                        let off = lists.iter().find(|l| !on.contains(l)).copied();
                        let ls = match (*kind, off) {
                            ("add_list", Some(l)) => vec![l],
                            _ => vec![],
                        };
                        (
                            email.clone(),
                            serde_json::json!({"job_title": format!("T{i}")}),
                            ls,
                        )
                    }
                };
                crate::store::demo::queue_outbound(
                    &mut conn,
                    account,
                    "upsert",
                    &email,
                    &fields,
                    &rows_lists,
                )
                .await
                .context("queueing a bench row")?;
            }
            drop(conn);
            let started = Instant::now();
            let reports = sync::run_cycle(&ctx, &settings.accounts, &[Job::Push]).await;
            let secs = started.elapsed().as_secs_f64();
            let Some(Outcome::Succeeded(s)) = reports.last().map(|r| r.outcome.clone()) else {
                super::status::print_reports(&reports, false);
                anyhow::bail!("the push did not succeed");
            };
            let r = |k: &str| s["requests"][k].as_u64().unwrap_or(0);
            out.push((*kind, n, r("total")));
            println!(
                "{:<11} {:>6} {:>6} {:>8} {:>9} {:>5} {:>8} {:>6} {:>9} {:>6} {:>9} {:>10} {:>8.2}",
                kind,
                n,
                r("reads_before_write"),
                r("fallback_reads"),
                r("put_reads"),
                r("puts"),
                r("submits"),
                r("polls"),
                r("confirms"),
                r("total"),
                s["fallback_rows"].as_u64().unwrap_or(0),
                s["fallback_read_to_submit_ms"]
                    .as_u64()
                    .map_or("-".to_string(), |ms| format!("{ms} ms")),
                secs
            );
            sb.shutdown();
        }
    }
    println!("\nfb_reads/fb_rows/fb_window: the import fallback above sync.put_max_rows (reads just before it, rows it carried, longest read-to-request time)");
    println!("kinds:");
    for (k, what) in PUSH_KINDS {
        println!("  {k:<11} {what}");
    }
    pool.close().await;
    Ok(out)
}

/// `bench all`: every benchmark at fixed sizes, then one table.
async fn all(quick: bool) -> anyhow::Result<ExitCode> {
    let mut table: Vec<(String, String, String)> = Vec::new();
    let backfill_n = if quick { 5_000 } else { 20_000 };
    let export = Duration::from_secs(if quick { 5 } else { 30 });
    println!("== (a) backfill at the rate limit ==");
    let latency = Latency {
        fixed: Duration::from_millis(600),
        jitter: Duration::ZERO,
    };
    use BackfillMode::{Export, Paged, Sliced};
    for r in backfill(backfill_n, latency, 4.0, &[Paged, Sliced, Export], export).await? {
        table.push((
            format!("(a) backfill {backfill_n}, 600 ms, 4 req/s"),
            r.walk.to_string(),
            format!(
                "{:.0} contacts/s = {:.1} % of 2,000; {} requests; {} throttled; {:.1} s",
                r.per_s, r.ceiling_pct, r.requests, r.throttled, r.seconds
            ),
        ));
    }
    let apply_n = if quick { 20_000 } else { 200_000 };
    println!("\n== (b) local apply, pacing off (the sandbox in its own process) ==");
    let p = pull_apart(apply_n).await?;
    let label = format!("(b) pull {apply_n}, pacing off");
    table.push((
        label.clone(),
        "end to end".into(),
        format!("{:.0} contacts/s", p.end_to_end),
    ));
    table.push((
        label.clone(),
        format!("apply stage ({} at once)", sync::walk::APPLY_CONCURRENCY),
        format!("{:.0} contacts/s", p.apply_stage),
    ));
    table.push((
        label,
        "fetch stage (one read ahead)".into(),
        format!("{:.0} contacts/s", p.fetch_stage),
    ));
    println!("\n== (c) peak RSS of ccsync alone (sandbox in its own process) ==");
    let sizes: &[usize] = if quick {
        &[20_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &n in sizes {
        let p = pull_apart(n).await?;
        table.push((
            format!("(c) peak RSS, {n} contacts"),
            "ccsync alone".into(),
            format!(
                "{:.1} MiB ({:.0} contacts/s end to end)",
                p.peak_mib, p.end_to_end
            ),
        ));
    }
    println!("\n== (d) idle accounts under the planner (30m / 1h / 4h) ==");
    let targets = crate::core::planner::Targets {
        unsubscribes: Some(Duration::from_secs(30 * 60)),
        contacts: Some(Duration::from_secs(3600)),
        lists: Some(Duration::from_secs(4 * 3600)),
        push: None,
        reserve: Settings::load_unvalidated(None)?.freshness.budget_reserve,
    };
    let fmt = |d: Option<Duration>| {
        d.map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_else(|| "-".into())
    };
    for (n, r) in planner(&targets, &[1, 19, 100, 200], 10_000, 0.0) {
        use crate::core::job::Job;
        table.push((
            format!("(d) planner, {n} idle accounts"),
            "requests/day; worst staleness".into(),
            format!(
                "{} ({} refused); opt-outs {}, contacts {}, lists {}",
                r.requests,
                r.refused,
                fmt(r.gap(Job::Unsubscribes)),
                fmt(r.gap(Job::Contacts)),
                fmt(r.gap(Job::Lists))
            ),
        ));
    }
    println!("\n== (e) requests per push ==");
    let rows: &[usize] = if quick { &[1, 100] } else { &[1, 100, 10_000] };
    for (kind, n, total) in push(rows).await? {
        table.push((
            format!("(e) push of {n} rows"),
            kind.to_string(),
            format!("{total} requests"),
        ));
    }
    let w0 = table.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = table.iter().map(|r| r.1.len()).max().unwrap_or(0);
    println!("\n== summary ==");
    for (a, b, c) in &table {
        println!("{a:<w0$}  {b:<w1$}  {c}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `ccsync bench pull` printed, run in a process of its own against `ccsync sandbox`
/// in another.
struct PullApart {
    peak_mib: f64,
    end_to_end: f64,
    apply_stage: f64,
    fetch_stage: f64,
}

/// `ccsync bench pull` in a process of its own (which starts `ccsync sandbox` in another),
/// so that the process's peak RSS is this pull's alone.
async fn pull_apart(contacts: usize) -> anyhow::Result<PullApart> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let out = tokio::process::Command::new(&exe)
        .args(["bench", "pull", "--contacts", &contacts.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running `ccsync bench pull`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        anyhow::bail!("`ccsync bench pull` failed");
    }
    let number = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse::<f64>().ok()))
    };
    match (
        number("peak RSS"),
        number("end to end"),
        number("apply stage"),
        number("fetch stage"),
    ) {
        (Some(peak_mib), Some(end_to_end), Some(apply_stage), Some(fetch_stage)) => Ok(PullApart {
            peak_mib,
            end_to_end,
            apply_stage,
            fetch_stage,
        }),
        _ => anyhow::bail!("cannot read the figures from `bench pull`'s output"),
    }
}
