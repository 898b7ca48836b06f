//! The crash driver: the real binary as a child process (`ccsync sync`, or `ccsync run` on
//! a cron of seconds) against a real PostgreSQL and the in-process sandbox, which survives
//! the child's SIGKILLs. Kills land at random instants or just after a chosen request (a
//! page, an import, a PUT, a list removal, a delete, a poll, a token answer) while
//! subscribers keep acting and the application keeps queueing outbound rows of every op.
//! After the last kill the sandbox goes quiet, full cycles run to the end, and the laws are
//! checked; each breach is a violation (counted, described).
//!
//! Parameters: kill count and seed, from `CCSYNC_CRASH_KILLS` / `CCSYNC_CRASH_SEED` when
//! set (the tests give the defaults).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use ccsync::ctct::dto::parse_datetime;
use ccsync::sandbox::{
    AccountCtl, Fault, RefreshTokenPolicy, Sandbox, SandboxConfig, SubscriberAction, Trigger,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::daemon::{text, Ccsync, ChildProcess, ConfigFile, ConfigToml};
use super::db::TestDb;
use super::sandbox::sandbox_with;

/// What one crash run does.
#[derive(Clone, Debug)]
pub struct CrashPlan {
    pub kills: usize,
    pub seed: u64,
    pub policy: RefreshTokenPolicy,
    pub contacts: usize,
    /// One round in this many runs `ccsync run` (cron every second) instead of `ccsync sync`.
    pub daemon_every: usize,
    /// Aim half the kills at token answers (for strict rotation).
    pub token_kills: bool,
    /// Break each law once on purpose before the checks (the checks' own test).
    pub plant_violations: bool,
}

impl CrashPlan {
    /// `kills` and `seed`, unless `CCSYNC_CRASH_KILLS` / `CCSYNC_CRASH_SEED` say otherwise.
    pub fn from_env(kills: usize, seed: u64, policy: RefreshTokenPolicy) -> CrashPlan {
        let env = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        CrashPlan {
            kills: env("CCSYNC_CRASH_KILLS").map_or(kills, |k| k as usize),
            seed: env("CCSYNC_CRASH_SEED").unwrap_or(seed),
            policy,
            contacts: 300,
            daemon_every: 4,
            token_kills: false,
            plant_violations: false,
        }
    }
}

/// What a crash run measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub kills: usize,
    pub rounds: usize,
    /// Runs that ended by themselves (the final cycles included).
    pub cycles: usize,
    /// Runs that ended by themselves with a failure (a paused account, a kill's aftermath).
    pub failed_runs: usize,
    pub ops: BTreeMap<String, i64>,
    pub states: BTreeMap<String, i64>,
    pub requests: usize,
    pub token_requests: u64,
    pub interrupted: i64,
    /// Accounts paused for re-authorisation after a kill in the token window (strict
    /// rotation only; not violations).
    pub reauths: usize,
    pub kills_by_point: BTreeMap<&'static str, usize>,
    /// Lists added back because the application queued a row naming them after ccsync had
    /// recorded the leave (its explicit new decision; not violations).
    pub asked_readds: usize,
    /// Requests whose answer a kill or a fault lost, found later among Constant Contact's
    /// activities and followed (not sent again), and those known never to have arrived
    /// (planned again).
    pub sends_adopted: i64,
    pub sends_released: i64,
    pub violations: Vec<String>,
    pub wall: Duration,
}

impl Figures {
    pub fn line(&self, label: &str) -> String {
        let ops: Vec<String> = self.ops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let states: Vec<String> = self
            .states
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let points: Vec<String> = self
            .kills_by_point
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "crash figures [{label}]: kills={} rounds={} cycles={} failed_runs={} outbound[{}] \
             states[{}] requests={} token_requests={} violations={} interrupted_runs={} \
             reauths={} asked_readds={} sends_adopted={} sends_released={} wall={:.1}s \
             kill_points[{}]",
            self.kills,
            self.rounds,
            self.cycles,
            self.failed_runs,
            ops.join(" "),
            states.join(" "),
            self.requests,
            self.token_requests,
            self.violations.len(),
            self.interrupted,
            self.reauths,
            self.asked_readds,
            self.sends_adopted,
            self.sends_released,
            self.wall.as_secs_f64(),
            points.join(" "),
        )
    }
}

/// Where a round's kill lands.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// After a random delay from the start.
    Random(u64),
    /// Just after the sandbox answered a matching request (0–3 ms later): between a page
    /// and its commit or the next request, between a write and its commit, after a poll.
    After {
        label: &'static str,
        method: &'static str,
        path: &'static str,
    },
    /// Just after the token endpoint answered a refresh (the stored access token is
    /// expired first, so that the run refreshes at once).
    TokenAnswer,
}

const AFTER: &[(&str, &str, &str)] = &[
    ("page", "GET", "/v3/contacts"),
    ("lists_page", "GET", "/v3/contact_lists"),
    ("import", "POST", "/v3/activities/contacts_json_import"),
    ("put", "PUT", "/v3/contacts/"),
    ("remove", "POST", "/v3/activities/remove_list_memberships"),
    ("delete", "POST", "/v3/activities/contact_delete"),
    ("poll", "GET", "/v3/activities/"),
];

fn label(k: &KillAt) -> &'static str {
    match k {
        KillAt::Random(_) => "random",
        KillAt::After { label, .. } => label,
        KillAt::TokenAnswer => "token_answer",
    }
}

struct World {
    db: TestDb,
    sb: Sandbox,
    ctl: AccountCtl,
    conf: ConfigFile,
    daemon_conf: ConfigFile,
    rng: StdRng,
    plan: CrashPlan,
    lists: Vec<Uuid>,
    next: u64,
    /// Contacts the application asked to delete (never targeted again by an upsert).
    app_deleted: HashSet<String>,
    /// The last first name a subscriber gave each contact (only set between runs).
    first_names: HashMap<Uuid, String>,
    watermarks: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    f: Figures,
}

fn base_config(sb: &Sandbox, db_url: &str, seed: &str) -> ConfigToml {
    ConfigToml::for_sandbox(sb, db_url)
        .account("default", Some(seed))
        .set("sync", "page_size", 50u32)
        .set("sync", "poll_initial", "20ms")
        .set("sync", "poll_max", "100ms")
        .set("constant_contact", "request_timeout", "30s")
}

/// Runs the plan; returns what was measured (violations included: the caller asserts).
pub async fn run(plan: CrashPlan) -> Figures {
    let t0 = Instant::now();
    let cfg = SandboxConfig {
        contacts: plan.contacts,
        lists: 8,
        seed: plan.seed,
        access_token_ttl: Duration::from_secs(10),
        refresh_token_policy: plan.policy,
        token_rate_limit: None,
        import_processing: Duration::from_millis(100),
        ..SandboxConfig::default()
    };
    let db = TestDb::new().await;
    let sb = sandbox_with(cfg).await;
    let ctl = sb.default_account();
    let seed = ctl.seed_refresh_token();
    let conf = base_config(&sb, &db.url, &seed).write();
    let sec = "*/1 * * * * *";
    let daemon_conf = base_config(&sb, &db.url, &seed)
        .set("server", "listen", "127.0.0.1:0")
        .set("schedule", "contacts", sec)
        .set("schedule", "unsubscribes", sec)
        .set("schedule", "deletes", sec)
        .set("schedule", "lists", sec)
        .set("schedule", "push", sec)
        .write();
    let lists = ctl.list_ids();
    let mut w = World {
        db,
        sb,
        ctl,
        conf,
        daemon_conf,
        rng: StdRng::seed_from_u64(plan.seed),
        plan,
        lists,
        next: 0,
        app_deleted: HashSet::new(),
        first_names: HashMap::new(),
        watermarks: BTreeMap::new(),
        f: Figures::default(),
    };
    // The first full pull, un-killed: the steady state a deployed daemon is in.
    // (Retried: on a loaded machine a first run can fail on its own, e.g. a 10 s token
    // that is already past due when its answer is finally read.)
    for _ in 0..3 {
        if w.cycle("initial").await {
            break;
        }
    }
    // Every request is slowed a little so that kills land inside requests too; token
    // answers a little more (a kill before the answer must cost nothing).
    w.sb.inject(Fault::Latency {
        path_prefix: "/v3".into(),
        delay: Duration::from_millis(6),
        times: usize::MAX,
    });
    w.sb.oauth().set_token_latency(Duration::from_millis(20));
    while w.f.kills < w.plan.kills {
        w.round().await;
        if w.f.rounds.is_multiple_of(25) {
            eprintln!(
                "crash: {} kills in {} rounds, {:.0}s, {} violations so far",
                w.f.kills,
                w.f.rounds,
                t0.elapsed().as_secs_f64(),
                w.f.violations.len()
            );
        }
        w.sample_watermarks().await;
        w.reauthorise_if_paused().await;
        // Guard against a plan that never kills (every run ending first).
        if w.f.rounds > w.plan.kills * 4 + 20 {
            w.violation(format!(
                "only {} kills in {} rounds: the driver is not killing runs",
                w.f.kills, w.f.rounds
            ));
            break;
        }
    }
    // Quiet: no faults, no triggers, no more subscribers; then full cycles to the end.
    w.sb.clear_faults();
    w.ctl.clear_triggers();
    w.sb.oauth().set_token_latency(Duration::ZERO);
    for i in 0..6 {
        w.reauthorise_if_paused().await;
        let ok = w.cycle("final").await;
        w.sample_watermarks().await;
        if ok && i >= 1 && w.open_rows().await == 0 {
            break;
        }
    }
    // A request recorded just before a kill and never answered may still have been in
    // progress at Constant Contact: ccsync plans its rows again only once its request
    // timeout (30 s here) has passed since it was sent. Wait that out, then cycle again.
    let wait: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(started_at) + interval '31 seconds' - now())::float8
         FROM ccsync.send_attempts",
    )
    .fetch_one(w.pool())
    .await
    .unwrap_or(None);
    if let Some(secs) = wait {
        eprintln!("crash: waiting {secs:.0}s for send attempts without an answer to be past the request timeout");
        tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
        for _ in 0..3 {
            let ok = w.cycle("final").await;
            w.sample_watermarks().await;
            if ok && w.open_rows().await == 0 {
                break;
            }
        }
    }
    // One more, with the membership reconcile that repairs what no incremental read can
    // see (list leaves and joins that move no `updated_at`); after it nothing may differ.
    if !w.cycle("final").await || !w.run_job("final", "reconcile").await {
        w.violation("the last cycle after the kills did not succeed".into());
    }
    w.sample_watermarks().await;
    if w.plan.plant_violations {
        w.plant().await;
    }
    w.check().await;
    w.f.wall = t0.elapsed();
    let World {
        db,
        sb,
        conf,
        daemon_conf,
        f,
        ..
    } = w;
    sb.shutdown();
    drop((conf, daemon_conf));
    db.cleanup().await;
    f
}

impl World {
    fn violation(&mut self, v: String) {
        eprintln!("VIOLATION: {v}");
        self.f.violations.push(v);
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// One `ccsync sync` to its end; true if it succeeded.
    async fn cycle(&mut self, what: &str) -> bool {
        self.run_job(what, "all").await
    }

    /// One `ccsync sync --job <job>` to its end; true if it succeeded.
    async fn run_job(&mut self, what: &str, job: &str) -> bool {
        let o = Ccsync::with_args(["sync", "--job", job])
            .config(&self.conf.path)
            .log("error")
            .output()
            .await;
        self.f.cycles += 1;
        if !o.status.success() {
            self.f.failed_runs += 1;
            eprintln!("{what} cycle failed: {}", tail(&text(&o)));
        }
        o.status.success()
    }

    fn pick_kill(&mut self) -> KillAt {
        if self.plan.token_kills && self.rng.random_bool(0.5) {
            return KillAt::TokenAnswer;
        }
        match self.rng.random_range(0..10) {
            0..=3 => KillAt::Random(self.rng.random_range(5..1500)),
            4 => KillAt::TokenAnswer,
            _ => {
                let (label, method, path) = AFTER[self.rng.random_range(0..AFTER.len())];
                KillAt::After {
                    label,
                    method,
                    path,
                }
            }
        }
    }

    async fn round(&mut self) {
        self.f.rounds += 1;
        self.subscribers_between_runs();
        self.ctl
            .set_membership_moves_updated_at(self.rng.random_bool(0.5));
        let n = self.rng.random_range(1..5);
        self.queue_rows(n).await;
        let mut kill = self.pick_kill();
        if matches!(kill, KillAt::TokenAnswer) {
            sqlx::query(
                "UPDATE ccsync.oauth_tokens SET access_expires_at = now() - interval '1 hour'",
            )
            .execute(self.pool())
            .await
            .expect("expire the stored access token");
        }
        let daemon = self.f.rounds.is_multiple_of(self.plan.daemon_every);
        let from = self.sb.request_count();
        let grants = self.sb.oauth().grants("refresh_token");
        let cmd = if daemon {
            Ccsync::with_args(["run"]).config(&self.daemon_conf.path)
        } else if self.f.rounds % 7 == 3 {
            Ccsync::with_args(["sync", "--job", "reconcile"]).config(&self.conf.path)
        } else {
            Ccsync::with_args(["sync"]).config(&self.conf.path)
        };
        let mut child = cmd.log("error").spawn();
        let started = Instant::now();
        // While it runs: subscribers act, the application queues more.
        self.subscribers_during_run();
        let n = self.rng.random_range(0..3);
        self.queue_rows(n).await;
        let deadline = match kill {
            KillAt::Random(ms) => Duration::from_millis(ms),
            _ => Duration::from_secs(8),
        };
        let mut cursor = from;
        let ended = loop {
            if let Some(status) = child.wait_for_exit(Duration::from_millis(1)).await {
                break Some(status);
            }
            if started.elapsed() >= deadline {
                if !matches!(kill, KillAt::Random(_)) {
                    // The aimed-at request never came (a daemon waiting for its next
                    // tick, a run with nothing of that kind to do): a kill at that instant.
                    kill = KillAt::Random(deadline.as_millis() as u64);
                }
                break None;
            }
            let hit = match kill {
                KillAt::Random(_) => false,
                KillAt::TokenAnswer => self.sb.oauth().grants("refresh_token") > grants,
                KillAt::After { method, path, .. } => {
                    let new = self.sb.requests_from(cursor);
                    cursor += new.len();
                    new.iter()
                        .any(|r| r.method == method && r.path.starts_with(path))
                }
            };
            if hit {
                let jitter = self.rng.random_range(0..4);
                if jitter > 0 {
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                break None;
            }
        };
        match ended {
            Some(status) => {
                self.f.cycles += 1;
                if !status.success() {
                    self.f.failed_runs += 1;
                    self.judge_failure(&child);
                }
            }
            None => self.kill(child, label(&kill)).await,
        }
    }

    async fn kill(&mut self, mut child: ChildProcess, at: &'static str) {
        child.kill();
        child.exit(Duration::from_secs(30)).await;
        self.f.kills += 1;
        *self.f.kills_by_point.entry(at).or_default() += 1;
    }

    /// A run that ended by itself with a failure: only a paused account under strict
    /// rotation is expected (counted by `reauthorise_if_paused`).
    fn judge_failure(&mut self, child: &ChildProcess) {
        let out = child.text();
        let paused = out.contains("needs re-authorisation");
        // (A pause under a policy that keeps the previous token is reported by
        // `reauthorise_if_paused`, which sees it even when the failing run was killed.)
        if paused && !out.contains("ccsync auth login --account default") {
            self.violation(format!(
                "a pause without the re-authorise command: {}",
                tail(&out)
            ));
        } else if !paused {
            eprintln!("a run failed (not a violation by itself): {}", tail(&out));
        }
    }

    /// Under strict rotation a kill between the token answer and its commit loses the new
    /// pair; the account is then paused. Count it and import a fresh token, as an operator
    /// would. Under any other policy a pause is a violation (`judge_failure` said so).
    async fn reauthorise_if_paused(&mut self) {
        let paused: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(needs_reauth), false) FROM ccsync.oauth_tokens",
        )
        .fetch_one(self.pool())
        .await
        .expect("read needs_reauth");
        if !paused {
            return;
        }
        if self.plan.policy == RefreshTokenPolicy::Rotating {
            self.f.reauths += 1;
        } else {
            self.violation(format!(
                "the account lost its refresh token under {:?} (paused for re-authorisation)",
                self.plan.policy
            ));
        }
        // What the operator sees: the run fails at once, naming the command to run.
        let o = Ccsync::with_args(["sync", "--job", "contacts"])
            .config(&self.conf.path)
            .log("error")
            .output()
            .await;
        self.f.cycles += 1;
        let out = text(&o);
        if o.status.success() || !out.contains("ccsync auth login --account default") {
            self.violation(format!(
                "a paused account's run did not say how to re-authorise: {}",
                tail(&out)
            ));
        }
        let token = self.ctl.seed_refresh_token();
        let o = Ccsync::with_args(["auth", "import", "--account", "default"])
            .config(&self.conf.path)
            .log("error")
            .stdin(&token)
            .output()
            .await;
        assert!(o.status.success(), "auth import: {}", text(&o));
    }

    async fn sample_watermarks(&mut self) {
        let rows: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
            "SELECT job, watermark FROM ccsync.sync_state WHERE account_id = 'default'",
        )
        .fetch_all(self.pool())
        .await
        .expect("read the watermarks");
        for (job, wm) in rows {
            let Some(wm) = wm else { continue };
            if let Some(prev) = self.watermarks.get(&job) {
                if wm < *prev {
                    self.violation(format!("the {job} watermark moved back: {prev} → {wm}"));
                }
            }
            let e = self.watermarks.entry(job).or_insert(wm);
            *e = (*e).max(wm);
        }
    }

    /// A random live contact: (id, lower-case address, its lists).
    fn live_contact(&mut self) -> Option<(Uuid, String, Vec<Uuid>)> {
        let ids = self.ctl.contact_ids();
        for _ in 0..20 {
            let id = ids[self.rng.random_range(0..ids.len())];
            let c = self.ctl.contact(id)?;
            if !c["deleted_at"].is_null() {
                continue;
            }
            let email = c["email_address"]["address"].as_str()?.to_lowercase();
            return Some((id, email, self.ctl.memberships(id)));
        }
        None
    }

    fn random_list(&mut self) -> Uuid {
        self.lists[self.rng.random_range(0..self.lists.len())]
    }

    /// Edits (first names, only while no run is in flight: a PUT overwrites every core
    /// field with what it read, so an edit inside a GET→PUT window is the API's race, not
    /// ccsync's), re-joins.
    fn subscribers_between_runs(&mut self) {
        for _ in 0..self.rng.random_range(1..4) {
            let Some((id, _, _)) = self.live_contact() else {
                continue;
            };
            self.next += 1;
            let name = format!("sub{}", self.next);
            self.ctl
                .update_contact(id, |c| c["first_name"] = json!(name.clone()));
            self.first_names.insert(id, name);
        }
        if self.rng.random_bool(0.5) {
            if let Some((id, _, on)) = self.live_contact() {
                // A re-join (of a list left earlier, or a new one).
                // A join that moves `updated_at`, so that ccsync can know of it: a join
                // and a later leave that both move nothing are invisible to every read but
                // the weekly reconcile, and an add the application asks for meanwhile
                // would look like a re-add without being one ccsync could avoid.
                let l = self.random_list();
                if !on.contains(&l) {
                    self.ctl.set_membership_moves_updated_at(true);
                    self.ctl.join_list(id, l);
                }
            }
        }
    }

    /// Opt-outs, list leaves (with and without `updated_at` moving, as the round set),
    /// deletes, and a leave placed between the push's reads and its write.
    fn subscribers_during_run(&mut self) {
        for _ in 0..self.rng.random_range(1..5) {
            let Some((id, _, on)) = self.live_contact() else {
                continue;
            };
            match self.rng.random_range(0..10) {
                0..=3 => self.ctl.unsubscribe(id, Some("crash suite")),
                4..=7 if !on.is_empty() => {
                    let l = on[self.rng.random_range(0..on.len())];
                    self.ctl.leave_list(id, l);
                }
                8 => self.ctl.delete_contact(id),
                _ => {
                    if let Some(&l) = on.first() {
                        let (method, path) = if self.rng.random_bool(0.5) {
                            ("POST", "/v3/activities/contacts_json_import")
                        } else {
                            ("PUT", "/v3/contacts/")
                        };
                        self.ctl.on_request(Trigger::new(
                            method,
                            path,
                            SubscriberAction::LeaveList {
                                contact_id: id,
                                list_id: l,
                            },
                        ));
                    }
                }
            }
        }
    }

    /// The application queues `n` rows: upserts (existing and new addresses, fields and
    /// lists), unsubscribes, list removals and deletes.
    async fn queue_rows(&mut self, n: usize) {
        for _ in 0..n {
            self.next += 1;
            let k = self.next;
            let roll = self.rng.random_range(0..10);
            let (email, op, fields, lists) = match roll {
                0..=5 => {
                    let email = if self.rng.random_bool(0.25) {
                        None
                    } else {
                        match self.live_contact() {
                            Some((_, e, _)) if !self.app_deleted.contains(&e) => Some(e),
                            _ => None,
                        }
                    };
                    // A brand-new contact needs a list (else the row fails, rightly).
                    let least = if email.is_none() { 1 } else { 0 };
                    let email = email.unwrap_or_else(|| format!("new{k}@crash.example"));
                    let lists: Vec<Uuid> = (0..self.rng.random_range(least..3))
                        .map(|_| self.random_list())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let fields = if lists.is_empty() || self.rng.random_bool(0.7) {
                        json!({"job_title": format!("app{k}")})
                    } else {
                        json!({})
                    };
                    (email, "upsert", fields, lists)
                }
                6 => match self.live_contact() {
                    Some((_, e, _)) => (e, "unsubscribe", json!({}), vec![]),
                    None => continue,
                },
                7 | 8 => match self.live_contact() {
                    Some((_, e, on)) if !on.is_empty() => {
                        let l = on[self.rng.random_range(0..on.len())];
                        (e, "remove_from_lists", json!({}), vec![l])
                    }
                    _ => continue,
                },
                _ => match self.live_contact() {
                    Some((_, e, _)) => {
                        self.app_deleted.insert(e.clone());
                        (e, "delete", json!({}), vec![])
                    }
                    None => continue,
                },
            };
            sqlx::query(
                "INSERT INTO ccsync.outbound (email, op, fields, list_ids) VALUES ($1, $2, $3, $4)",
            )
            .bind(&email)
            .bind(op)
            .bind(&fields)
            .bind(&lists)
            .execute(self.pool())
            .await
            .unwrap_or_else(|e| panic!("queueing a {op} row for {email}: {e}"));
        }
    }

    /// Rows neither terminal nor waiting with a stated reason.
    async fn open_rows(&self) -> i64 {
        self.db
            .count(
                "SELECT count(*) FROM ccsync.outbound
                 WHERE state IN ('pending', 'submitted')",
            )
            .await
    }

    /// One breach of each law, made by hand (the store edited behind ccsync's back, the
    /// sandbox's control calls), so that a test can prove that `check` sees each kind.
    async fn plant(&mut self) {
        let Some((id, email, _)) = self.live_contact() else {
            panic!("no live contact to plant on");
        };
        for sql in [
            format!("UPDATE ccsync.contacts SET first_name = 'planted' WHERE contact_id = '{id}'"),
            "UPDATE ccsync.sync_state SET watermark = watermark - interval '1 day'".into(),
            "INSERT INTO ccsync.outbound (email, op, state) VALUES ('p@crash.example', 'upsert', 'failed')"
                .into(),
        ] {
            sqlx::query(&sql)
                .execute(self.pool())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        self.sample_watermarks().await;
        self.ctl.unsubscribe(id, None);
        self.ctl.resubscribe(id);
        let l = self.random_list();
        self.ctl.join_list(id, l);
        self.ctl.leave_list(id, l);
        // Not the subscriber's own re-join: a write path adding the list back.
        self.ctl.create_contact(&email, None, &[l]);
    }

    /// What happened to a contact, for a violation's message: its outbound rows, and the
    /// write requests that named it (and `list`).
    async fn story(&self, contact: Uuid, list: Option<Uuid>) -> String {
        let email = self
            .ctl
            .contact(contact)
            .and_then(|c| {
                c["email_address"]["address"]
                    .as_str()
                    .map(str::to_lowercase)
            })
            .unwrap_or_default();
        self.story_of(&email, contact, list).await
    }

    async fn story_of(&self, email: &str, contact: Uuid, list: Option<Uuid>) -> String {
        type Row = (i64, String, Value, Vec<Uuid>, String, Option<String>, i32);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, op, fields, list_ids, state, reason, attempts FROM ccsync.outbound
             WHERE lower(email) = $1 ORDER BY id",
        )
        .bind(email)
        .fetch_all(self.pool())
        .await
        .unwrap_or_default();
        let rows: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "#{} {} {} {:?} {} ({:?}, attempts {})",
                    r.0, r.1, r.2, r.3, r.4, r.5, r.6
                )
            })
            .collect();
        let writes: Vec<String> = self
            .sb
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .filter(|r| {
                let b = r.body.as_ref().map(Value::to_string).unwrap_or_default();
                b.contains(email)
                    || b.contains(&contact.to_string())
                    || r.path.contains(&contact.to_string())
            })
            .map(|r| {
                let names = list.is_some_and(|l| {
                    r.body
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_default()
                        .contains(&l.to_string())
                });
                format!(
                    "{} {} {}{}",
                    r.method,
                    r.path,
                    r.status,
                    if names { " (names the list)" } else { "" }
                )
            })
            .collect();
        format!(
            "rows [{}]; writes [{}]",
            rows.join(" | "),
            writes.join(" | ")
        )
    }

    /// The laws, after the last cycle.
    async fn check(&mut self) {
        self.check_store_equals_truth().await;
        let resub = self.ctl.resubscriptions();
        if !resub.is_empty() {
            self.violation(format!("re-subscribed: {resub:?}"));
        }
        let revived = self.ctl.revivals();
        if !revived.is_empty() {
            self.violation(format!("deleted contacts revived: {revived:?}"));
        }
        let readds = self.ctl.re_adds_after_leave();
        for (c, l) in readds {
            // An add the application asked for after ccsync had recorded the leave is the
            // application's new decision (the guard refuses lists only to rows queued
            // before the leave): counted, not a violation — whatever the row's end (it
            // may fail afterwards, e.g. the contact deleted once the import ran).
            let asked_after: bool = sqlx::query_scalar(
                "SELECT EXISTS (
                   SELECT 1 FROM ccsync.outbound o JOIN ccsync.contacts k
                     ON lower(k.email) = lower(o.email) AND k.contact_id = $1
                   WHERE $2 = ANY (o.list_ids)
                     AND (o.state = 'completed' OR o.activity_id IS NOT NULL)
                     AND EXISTS (SELECT 1 FROM ccsync.changes c
                                 WHERE c.contact_id = $1 AND c.kind = 'list_removed'
                                   AND c.old_value = to_jsonb($2::text)
                                   AND c.at < o.created_at))",
            )
            .bind(c)
            .bind(l)
            .fetch_one(self.pool())
            .await
            .expect("read the changes");
            if asked_after {
                self.f.asked_readds += 1;
                continue;
            }
            let why = self.story(c, Some(l)).await;
            self.violation(format!(
                "re-added to a list the contact had left: {c} list {l}; {why}"
            ));
        }
        self.check_outbound().await;
        self.f.interrupted = self
            .db
            .count(
                "SELECT count(*) FROM ccsync.sync_runs
                 WHERE outcome = 'failed' AND error LIKE 'interrupted%'",
            )
            .await;
        for (key, field) in [
            ("adopted", &mut self.f.sends_adopted),
            ("released", &mut self.f.sends_released),
        ] {
            *field = self
                .db
                .count(&format!(
                    "SELECT coalesce(sum((stats->'recovery'->>'{key}')::bigint), 0)::bigint
                     FROM ccsync.sync_runs WHERE job = 'push'"
                ))
                .await;
        }
        let left = self
            .db
            .count("SELECT count(*) FROM ccsync.send_attempts")
            .await;
        if left != 0 {
            self.violation(format!("{left} send attempts never resolved"));
        }
        let running = self
            .db
            .count("SELECT count(*) FROM ccsync.sync_runs WHERE finished_at IS NULL")
            .await;
        if running != 0 {
            self.violation(format!("{running} runs never closed"));
        }
        self.f.requests = self.sb.request_count();
        self.f.token_requests = self.sb.token_requests();
    }

    async fn check_store_equals_truth(&mut self) {
        type Row = (
            Uuid,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            chrono::DateTime<chrono::Utc>,
            Option<chrono::NaiveDate>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT contact_id, email, first_name, last_name, job_title, permission_to_send,
                    updated_at, deleted_at
             FROM ccsync.contacts WHERE account_id = 'default'",
        )
        .fetch_all(self.pool())
        .await
        .expect("read the store");
        let mut local_lists: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
        let ms: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT contact_id, list_id FROM ccsync.list_memberships WHERE account_id = 'default'",
        )
        .fetch_all(self.pool())
        .await
        .expect("read the memberships");
        for (c, l) in ms {
            local_lists.entry(c).or_default().insert(l);
        }
        let truth_ids: BTreeSet<Uuid> = self.ctl.contact_ids().into_iter().collect();
        let local_ids: BTreeSet<Uuid> = rows.iter().map(|r| r.0).collect();
        for id in truth_ids.difference(&local_ids) {
            self.violation(format!(
                "contact {id} is in Constant Contact, not in the store"
            ));
        }
        for id in local_ids.difference(&truth_ids) {
            self.violation(format!("contact {id} is in the store only"));
        }
        for (id, email, first, last, job, perm, updated, deleted) in rows {
            let Some(t) = self.ctl.contact(id) else {
                continue;
            };
            let s = |v: &Value| v.as_str().map(str::to_string);
            let mut diffs = Vec::new();
            let t_email = t["email_address"]["address"]
                .as_str()
                .map(str::to_lowercase);
            if email != t_email {
                diffs.push(format!("email {email:?} vs {t_email:?}"));
            }
            for (name, local, remote) in [
                ("first_name", &first, s(&t["first_name"])),
                ("last_name", &last, s(&t["last_name"])),
                ("job_title", &job, s(&t["job_title"])),
                (
                    "permission",
                    &perm,
                    s(&t["email_address"]["permission_to_send"]),
                ),
            ] {
                if *local != remote {
                    diffs.push(format!("{name} {local:?} vs {remote:?}"));
                }
            }
            let t_updated = t["updated_at"].as_str().and_then(parse_datetime);
            if Some(updated) != t_updated {
                diffs.push(format!("updated_at {updated} vs {t_updated:?}"));
            }
            if deleted.is_some() != t["deleted_at"].is_string() {
                diffs.push(format!("deleted {deleted:?} vs {}", t["deleted_at"]));
            }
            let remote: BTreeSet<Uuid> = self.ctl.memberships(id).into_iter().collect();
            let local = local_lists.remove(&id).unwrap_or_default();
            if local != remote {
                diffs.push(format!("lists {local:?} vs {remote:?}"));
            }
            if let Some(name) = self.first_names.get(&id) {
                if t["first_name"].as_str() != Some(name) && t["deleted_at"].is_null() {
                    diffs.push(format!(
                        "the subscriber's first name {name} was overwritten by {}",
                        t["first_name"]
                    ));
                }
            }
            if !diffs.is_empty() {
                self.violation(format!("contact {id}: {}", diffs.join("; ")));
            }
        }
    }

    async fn check_outbound(&mut self) {
        type Row = (i64, String, String, Value, String, Option<String>, bool);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, lower(email), op, fields, state, reason, activity_id IS NOT NULL
             FROM ccsync.outbound ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .expect("read the outbound rows");
        let mut by_email: HashMap<String, Vec<&Row>> = HashMap::new();
        for r in &rows {
            *self.f.ops.entry(r.2.clone()).or_default() += 1;
            *self.f.states.entry(r.4.clone()).or_default() += 1;
            by_email.entry(r.1.clone()).or_default().push(r);
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for r in rows
            .iter()
            .filter(|r| matches!(r.4.as_str(), "failed" | "skipped"))
        {
            let head: String = r.5.as_deref().unwrap_or("").chars().take(70).collect();
            *reasons
                .entry(format!("{} {} {head}", r.4, r.2))
                .or_default() += 1;
        }
        for (r, n) in &reasons {
            eprintln!("outbound {n} × {r}");
        }
        let mut found = Vec::new();
        for (id, email, op, _, state, reason, _) in &rows {
            let terminal = matches!(state.as_str(), "completed" | "skipped" | "failed");
            if state != "completed" && reason.as_deref().is_none_or(str::is_empty) {
                found.push(format!(
                    "outbound {id} ({op} {email}) is {state} without a reason"
                ));
            }
            if !terminal && !matches!(state.as_str(), "pending" | "submitted") {
                found.push(format!("outbound {id} in an unknown state {state}"));
            }
        }
        // No write applied twice in a way that changed the result: per address, the last
        // completed job title is what Constant Contact holds (a replayed older write
        // would have put an older one back), unless a later row is still open or deleted
        // the contact.
        for (email, rs) in &by_email {
            let Some(t) = self.ctl.contact_by_email(email) else {
                continue;
            };
            if !t["deleted_at"].is_null() {
                continue;
            }
            if rs.iter().any(|r| r.2 == "delete" && r.4 == "completed") {
                found.push(format!("{email}: a completed delete did not hold"));
            }
            // A completed unsubscribe stays unsubscribed (nobody re-subscribes here).
            if rs
                .iter()
                .any(|r| r.2 == "unsubscribe" && r.4 == "completed")
                && t["email_address"]["permission_to_send"] != "unsubscribed"
            {
                found.push(format!("{email}: a completed unsubscribe did not hold"));
            }
            let last = rs.iter().rposition(|r| {
                r.4 == "completed" && r.2 == "upsert" && r.3.get("job_title").is_some()
            });
            let Some(i) = last else { continue };
            // (A later row still open, or carried by an activity and then judged skipped
            // or failed — an import applies a row's fields even where it refuses its list,
            // as for a contact unsubscribed meanwhile — may hold the value instead.)
            if rs[i + 1..].iter().any(|r| {
                matches!(r.4.as_str(), "pending" | "submitted") || (r.6 && r.4 != "completed")
            }) {
                continue;
            }
            let want = &rs[i].3["job_title"];
            if &t["job_title"] != want {
                let id = t["contact_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default();
                let why = self.story_of(email, id, None).await;
                found.push(format!(
                    "{email}: job_title {} in Constant Contact, the last completed row {} wrote {want}; {why}",
                    t["job_title"], rs[i].0
                ));
            }
        }
        for v in found {
            self.violation(v);
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}
