//! The operators' kit against the real tools: the alert rules through `promtool` (check and
//! unit tests), a live `/metrics` of `ccsync run` through `promtool check metrics`, every
//! metric the rules and the dashboard use present in that scrape, and a real Prometheus
//! server (Debian's `prometheus`, its own temp dir, a loopback port) evaluating the rules
//! against the daemon while the sandbox breaks the opt-out sweep and revokes the refresh
//! token: the alerts fire, then resolve once the condition is cleared.
//!
//! Without `promtool` / `prometheus` on PATH (`apt-get install prometheus`) these tests say
//! so on stderr and pass without checking anything; `.ci/run` installs them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ccsync::sandbox::{Fault, Sandbox, SandboxConfig};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::helpers::{eventually, Ccsync, ChildProcess, ConfigFile, ConfigToml, TestDb};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Never fires during a test (1 January, midnight).
const NEVER: &str = "0 0 0 1 1 *";

fn rules_file() -> PathBuf {
    Path::new(ROOT).join("deploy/prometheus/ccsync-alerts.yaml")
}

fn dashboard_file() -> PathBuf {
    Path::new(ROOT).join("deploy/grafana/ccsync.json")
}

/// `name` on PATH, or `None` after saying on stderr that the test is skipped.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: `{name}` is not installed (apt-get install prometheus); \
             CI (.ci/run) installs it"
        );
    }
    found
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let d =
            std::env::temp_dir().join(format!("ccsync-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a test varies in the daemon's configuration.
struct Opts {
    contacts_cron: String,
    unsubscribes_cron: String,
    others_cron: String,
    requests_per_second: f64,
}

/// The daemon's configuration for `o`, through the shared fixture.
fn write_config(sb: &Sandbox, db_url: &str, token: &str, o: &Opts) -> ConfigFile {
    ConfigToml::for_sandbox(sb, db_url)
        .set(
            "constant_contact",
            "requests_per_second",
            o.requests_per_second,
        )
        .set("constant_contact", "retry_initial", "20ms")
        .set("constant_contact", "retry_max", "200ms")
        .set("constant_contact", "max_retries", 2u32)
        .set("constant_contact", "request_timeout", "20s")
        .set("sync", "poll_initial", "100ms")
        .set("sync", "poll_max", "500ms")
        .set("schedule", "contacts", o.contacts_cron.as_str())
        .set("schedule", "unsubscribes", o.unsubscribes_cron.as_str())
        .set("schedule", "deletes", o.others_cron.as_str())
        .set("schedule", "lists", o.others_cron.as_str())
        .set("schedule", "push", o.others_cron.as_str())
        .set("schedule", "reconcile", NEVER)
        .set("server", "listen", "127.0.0.1:0")
        .set("server", "shutdown_grace", "10s")
        .set("server", "metrics_interval", "1s")
        .set("log", "format", "json")
        .set("log", "level", "info")
        .account("default", Some(token))
        .write()
}

/// `ccsync run` on `conf`, JSON logs collected.
fn spawn_daemon(conf: &ConfigFile) -> ChildProcess {
    Ccsync::with_args(["run"])
        .config(&conf.path)
        .log("ccsync=info,warn")
        .spawn()
}

/// SIGTERM, then a clean exit within 30 s.
async fn stop(mut d: ChildProcess) {
    d.signal("TERM");
    let (code, _) = d.exit(Duration::from_secs(30)).await;
    assert_eq!(
        code,
        Some(0),
        "the daemon did not exit cleanly; log:\n{}",
        d.log()
    );
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn get(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Every `ccsync_*` name in `text` (metric names in rule expressions or dashboard queries).
fn ccsync_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("ccsync_") {
        let start = i + p;
        let word_start =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // `ccsync_config_*` in a comment is not a name.
        if word_start && !text[start..end].ends_with('_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The sample names of a Prometheus text scrape (`name{...} v` / `name v`).
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tool(
        "promtool",
        "the_alert_rules_pass_promtool_check_and_their_unit_tests",
    ) else {
        return;
    };
    let check = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(rules_file())
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The unit tests load the production file itself (rule_files: [ccsync-alerts.yaml]).
    let test = Command::new(&promtool)
        .args(["test", "rules", "ccsync-alerts.test.yaml"])
        .current_dir(Path::new(ROOT).join("deploy/prometheus"))
        .output()
        .await
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert has a unit test that fires it and one where it stays silent, its
    // annotations, and a runbook section.
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let alerts = alert_names(&rules);
    let tests =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/ccsync-alerts.test.yaml"))
            .unwrap();
    let runbook = std::fs::read_to_string(Path::new(ROOT).join("docs/runbook.md")).unwrap();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in &alerts {
        let evals: Vec<&str> = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|e| e.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            evals.iter().any(|e| e.contains("exp_labels")),
            "no unit test fires {alert}"
        );
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "no unit test keeps {alert} silent"
        );
        let anchor = format!("docs/runbook.md#{}", alert.to_lowercase());
        assert!(
            rules.contains(&anchor),
            "{alert} has no runbook_url {anchor}"
        );
        assert!(
            runbook.contains(&format!("\n## {alert}\n")),
            "docs/runbook.md has no section ## {alert}"
        );
    }
    for key in ["severity:", "summary:", "description:", "runbook_url:"] {
        assert_eq!(
            rules.matches(key).count(),
            alerts.len(),
            "every alert has {key}"
        );
    }
}

/// The alert names of a rules file (no YAML parser among the dependencies).
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|a| a.trim().to_string())
        .collect()
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_check_metrics_and_has_every_metric_of_the_rules_and_dashboard(
) {
    let Some(promtool) = tool(
        "promtool",
        "a_live_scrape_passes_promtool_check_metrics_and_has_every_metric_of_the_rules_and_dashboard",
    ) else {
        return;
    };
    let db = TestDb::new().await;
    let sb = Sandbox::start(SandboxConfig {
        contacts: 30,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let token = sb.default_account().seed_refresh_token();
    // Every job on a two-second tick (so that push runs, after its pulls) and pacing on
    // (so that the pacer histogram has samples).
    let conf = write_config(
        &sb,
        &db.url,
        &token,
        &Opts {
            contacts_cron: "*/2 * * * * *".into(),
            unsubscribes_cron: "0/2 * * * * *".into(),
            others_cron: "0/2 * * * * *".into(),
            requests_per_second: 50.0,
        },
    );
    // One row to push, and one for a contact who unsubscribed (skipped, never sent).
    let ctl = sb.default_account();
    let list = ctl.list_ids()[0];
    let bob = ctl.create_contact("bob@example.com", Some("Bob"), &[list]);
    ctl.unsubscribe(bob, None);
    sqlx::query(
        "INSERT INTO ccsync.outbound (email, fields, list_ids)
         VALUES ('ada@example.com', '{\"first_name\": \"Ada\"}', ARRAY[$1]::uuid[]),
                ('bob@example.com', '{\"first_name\": \"Robert\"}', ARRAY[$1]::uuid[])",
    )
    .bind(list)
    .execute(&db.pool)
    .await
    .unwrap();
    let d = spawn_daemon(&conf);
    let base = d.ready().await;
    // A reload, so that ccsync_config_reloads_total exists.
    d.signal("HUP");
    eventually(
        "the queued rows pushed and skipped",
        Duration::from_secs(60),
        || async {
            let n = count(
                &db,
                "SELECT count(*) FROM ccsync.outbound WHERE state IN ('completed', 'skipped')",
            )
            .await;
            (n == 2).then_some(())
        },
    )
    .await;

    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let dashboard = std::fs::read_to_string(dashboard_file()).unwrap();
    let used: BTreeSet<String> = ccsync_names(&rules)
        .into_iter()
        .chain(ccsync_names(&dashboard))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    // Gauges follow within a metrics_interval or two; the activity histogram after the
    // push run ends.
    let t = Instant::now();
    let scrape = loop {
        let m = get(&format!("{base}/metrics")).await.unwrap_or_default();
        let have = sample_names(&m);
        let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
        if missing.is_empty() {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the live scrape lacks {missing:?} used by the rules or the dashboard:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = lint.stdin.take().unwrap();
    stdin.write_all(scrape.as_bytes()).await.unwrap();
    drop(stdin);
    let out = lint.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics found problems:\n{text}\nin\n{scrape}"
    );
    stop(d).await;
    sb.shutdown();
    db.cleanup().await;
}

/// A Prometheus server of a test's own: temp dir storage, a free loopback port.
struct Prometheus {
    _child: Child,
    base: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts `bin` scraping `target` every second and evaluating `rules` every second.
    async fn start(bin: &Path, target: &str, rules: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        std::fs::write(dir.0.join("rules.yaml"), rules).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: ccsync\n    honor_labels: true\n\
             \x20   static_configs:\n      - targets: ['{target}']\n",
            dir.0.join("rules.yaml").display()
        );
        std::fs::write(dir.0.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let p = Prometheus {
            _child: child,
            base,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", p.base);
        let t = Instant::now();
        while get(&ready).await.is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "prometheus did not become ready; its log:\n{}",
                std::fs::read_to_string(p._dir.0.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// The state (`pending`, `firing`) of the active alert `name` for account `default`.
    async fn alert_state(&self, name: &str) -> Option<String> {
        let body = get(&format!("{}/api/v1/alerts", self.base)).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"]["account"] == "default")
            .and_then(|a| a["state"].as_str().map(str::to_string))
    }

    async fn wait_firing(&self, name: &str, d: &ChildProcess) {
        let t = Instant::now();
        while self.alert_state(name).await.as_deref() != Some("firing") {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{name} did not fire; alerts: {:?}; daemon log:\n{}",
                get(&format!("{}/api/v1/alerts", self.base)).await,
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_resolved(&self, name: &str, d: &ChildProcess) {
        let t = Instant::now();
        while self.alert_state(name).await.is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{name} did not resolve; alerts: {:?}; daemon log:\n{}",
                get(&format!("{}/api/v1/alerts", self.base)).await,
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The production rules with every `for:` set to 0s, so that the test does not wait the
/// minutes the production file asks for; the thresholds (twice the opt-out interval, the
/// configuration gauges) are the production ones. `promtool test rules` checks the
/// production file itself.
fn rules_for_the_test() -> String {
    let production = std::fs::read_to_string(rules_file()).unwrap();
    let mut out = String::new();
    for line in production.lines() {
        match line.find("for: ") {
            Some(i) if line.trim_start().starts_with("for: ") => {
                out.push_str(&line[..i]);
                out.push_str("for: 0s");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    assert_eq!(
        out.matches("for: 0s").count(),
        production.matches("for: ").count()
    );
    out
}

#[tokio::test]
async fn prometheus_fires_and_resolves_the_opt_out_sweep_and_reauthorisation_alerts() {
    let name = "prometheus_fires_and_resolves_the_opt_out_sweep_and_reauthorisation_alerts";
    let (Some(_), Some(prometheus)) = (tool("promtool", name), tool("prometheus", name)) else {
        return;
    };
    let db = TestDb::new().await;
    let sb = Sandbox::start(SandboxConfig {
        contacts: 20,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let token = sb.default_account().seed_refresh_token();
    // Only the opt-out sweep runs, every 5 s: the alert's threshold is 10 s, well above
    // the scrape / refresh / evaluation delays of a busy machine.
    let conf = write_config(
        &sb,
        &db.url,
        &token,
        &Opts {
            contacts_cron: NEVER.into(),
            unsubscribes_cron: "*/5 * * * * *".into(),
            others_cron: NEVER.into(),
            requests_per_second: 0.0,
        },
    );
    let d = spawn_daemon(&conf);
    let target = d.ready().await.trim_start_matches("http://").to_string();
    let sweeps = "SELECT count(*) FROM ccsync.sync_runs WHERE job = 'unsubscribes' AND outcome = 'succeeded'";
    eventually("a first opt-out sweep", Duration::from_secs(60), || async {
        (count(&db, sweeps).await > 0).then_some(())
    })
    .await;
    let prom = Prometheus::start(&prometheus, &target, &rules_for_the_test()).await;
    // Rules evaluated against real data: the interval gauge has reached Prometheus.
    eventually("the first scrape", Duration::from_secs(60), || async {
        let q = format!(
            "{}/api/v1/query?query=ccsync_job_interval_seconds%7Bjob%3D%22unsubscribes%22%7D",
            prom.base
        );
        let v: serde_json::Value = serde_json::from_str(&get(&q).await?).ok()?;
        (v["data"]["result"].as_array()?.len() == 1).then_some(())
    })
    .await;
    assert_eq!(prom.alert_state("CcsyncReauthRequired").await, None);

    // Every query of the dashboard is valid PromQL for this server (variables filled in).
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let client = reqwest::Client::new();
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$account", ".*");
        let r = client
            .get(format!("{}/api/v1/query", prom.base))
            .query(&[("query", q.as_str())])
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(status.is_success(), "dashboard query {e}: {status} {body}");
    }

    // Opt-out sweeps fail (every contacts request answers 500): the critical alert fires;
    // once they succeed again it resolves.
    sb.inject(Fault::FailAfter {
        path_prefix: "/contacts".into(),
        ok: 0,
        status: 500,
    });
    prom.wait_firing("CcsyncOptOutSweepStale", &d).await;
    sb.clear_faults();
    prom.wait_resolved("CcsyncOptOutSweepStale", &d).await;

    // The user disconnects the app: the refresh token is refused (invalid_grant), the
    // account needs re-authorisation; importing a new token (the runbook's fix) resolves it.
    sb.oauth().revoke_account("default");
    prom.wait_firing("CcsyncReauthRequired", &d).await;
    let fresh = sb.default_account().seed_refresh_token();
    let out = Ccsync::with_args(["auth", "import", "--account", "default"])
        .config(&conf.path)
        .stdin(&fresh)
        .output()
        .await;
    assert!(
        out.status.success(),
        "ccsync auth import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prom.wait_resolved("CcsyncReauthRequired", &d).await;

    drop(prom);
    stop(d).await;
    sb.shutdown();
    db.cleanup().await;
}
