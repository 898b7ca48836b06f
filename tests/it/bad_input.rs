//! Bad input, end to end. Configuration an operator gets wrong (malformed TOML, unknown
//! keys, wrong types, bad cron expressions, bad URLs, missing secrets) through the binary:
//! exit 78 naming the key, never a panic, never a secret printed; unknown keys warned about
//! by name and otherwise harmless. Hostile outbound rows through a real push against the
//! sandbox: each invalid row ends `failed` with a reason naming the field or the limit, the
//! valid rows of the same push complete, and every value is stored, sent and echoed back
//! byte for byte (every query binds; nothing is spliced into SQL or into the table).

use std::time::Duration;

use ccsync::sandbox::SandboxConfig;
use ccsync::sync::Job;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::helpers::{sandbox, text, Ccsync, ConfigFile, ConfigToml, Harness, TestDb};
use crate::push_reads::{member, push, state};

const SECRET: &str = "cs-BADINPUT-SECRET-1";
const TOKEN: &str = "rt-BADINPUT-SECRET-2";

/// A configuration that is valid but for what a case changes: `set` ((section, key, raw
/// TOML value)), `unset` (section, key), and the `[[accounts]]` text (`None`: one valid
/// account). The database is unreachable: every case must be refused before connecting.
fn conf(set: &[(&str, &str, &str)], unset: &[(&str, &str)], accounts: Option<&str>) -> String {
    let q = |s: &str| format!("{s:?}");
    let mut sections: Vec<(String, Vec<(String, String)>)> = vec![
        (
            "database".into(),
            vec![
                ("url".into(), q("postgres://nobody@127.0.0.1:1/none")),
                ("connect_timeout".into(), q("1s")),
            ],
        ),
        (
            "constant_contact".into(),
            vec![
                ("client_id".into(), q("id")),
                ("client_secret".into(), q(SECRET)),
            ],
        ),
    ];
    for (section, key, value) in set {
        let i = match sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                sections.push((section.to_string(), Vec::new()));
                sections.len() - 1
            }
        };
        let entries = &mut sections[i].1;
        entries.retain(|(k, _)| k != key);
        entries.push((key.to_string(), value.to_string()));
    }
    let mut out = String::new();
    for (section, entries) in &sections {
        out.push_str(&format!("[{section}]\n"));
        for (k, v) in entries {
            if !unset.contains(&(section.as_str(), k.as_str())) {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    let default_account = format!("[[accounts]]\nid = \"default\"\nrefresh_token = {TOKEN:?}\n");
    out.push_str(accounts.unwrap_or(&default_account));
    out
}

/// (what is wrong, the file, what the error must name).
fn config_cases() -> Vec<(&'static str, String, &'static str)> {
    let acct = |body: &str| Some(format!("[[accounts]]\n{body}"));
    let with = |section: &str, key: &str, value: &str| conf(&[(section, key, value)], &[], None);
    let mut v: Vec<(&'static str, String, &'static str)> = vec![
        (
            "an unclosed table header",
            "[sync\npage_size = 5\n".into(),
            "line 1",
        ),
        (
            "a key written twice",
            format!(
                "{}[sync]\npage_size = 5\npage_size = 6\n",
                conf(&[], &[], None)
            ),
            "line ",
        ),
        (
            "a string that never ends",
            "[sync]\nlookback = \"5m\n".into(),
            "line 2",
        ),
        (
            "a string for an integer",
            with("sync", "page_size", "\"lots\""),
            "sync.page_size",
        ),
        (
            "a negative count",
            with("sync", "page_size", "-1"),
            "sync.page_size",
        ),
        (
            "an integer beyond 64 bits",
            with("sync", "page_size", "99999999999999999999"),
            "sync.page_size",
        ),
        (
            "a count above the API's limit",
            with("sync", "page_size", "900"),
            "sync.page_size",
        ),
        (
            "a duration without a unit",
            with("sync", "lookback", "\"30\""),
            "sync.lookback",
        ),
        (
            "an array for a duration",
            with("sync", "poll_max", "[1, 2]"),
            "sync.poll_max",
        ),
        (
            "a table for a number",
            with("constant_contact", "max_retries", "{ a = 1 }"),
            "constant_contact.max_retries",
        ),
        (
            "an unknown log format",
            with("log", "format", "\"xml\""),
            "log.format",
        ),
        (
            "an unknown log level",
            with("log", "level", "\"loud\""),
            "log.level",
        ),
        (
            "a listen address without a port",
            with("server", "listen", "\"localhost\""),
            "server.listen",
        ),
        (
            "a five-field cron",
            with("schedule", "contacts", "\"*/5 * * * *\""),
            "schedule.contacts",
        ),
        (
            "words for a cron",
            with("schedule", "push", "\"every hour\""),
            "schedule.push",
        ),
        (
            "a cron field out of range",
            with("schedule", "retention", "\"99 * * * * *\""),
            "schedule.retention",
        ),
        (
            "an empty cron",
            with("schedule", "unsubscribes", "\"\""),
            "schedule.unsubscribes",
        ),
        (
            "a relative API URL",
            with("constant_contact", "api_base", "\"api.cc.email/v3\""),
            "constant_contact.api_base",
        ),
        (
            "an ftp token URL",
            with("constant_contact", "token_url", "\"ftp://x.example/token\""),
            "constant_contact.token_url",
        ),
        (
            "a database URL of another scheme",
            with("database", "url", "\"mysql://u@h/db\""),
            "database.url",
        ),
        (
            "a database URL that is not a URL",
            with("database", "url", "\"::::\""),
            "database.url",
        ),
        (
            "NaN requests per second",
            with("constant_contact", "requests_per_second", "nan"),
            "constant_contact.requests_per_second",
        ),
        (
            "negative requests per second",
            with("constant_contact", "requests_per_second", "-1"),
            "constant_contact.requests_per_second",
        ),
        (
            "a zero daily limit",
            with("constant_contact", "daily_request_limit", "0"),
            "constant_contact.daily_request_limit",
        ),
        (
            "one database connection",
            with("database", "max_connections", "1"),
            "database.max_connections",
        ),
        (
            "a timeout that overflows the clock",
            with("database", "connect_timeout", "\"300000000000years\""),
            "database.connect_timeout",
        ),
        (
            "a lookback beyond a century",
            with("sync", "lookback", "\"36501days\""),
            "sync.lookback",
        ),
        (
            "a rate whose period overflows",
            with("constant_contact", "requests_per_second", "1e-300"),
            "constant_contact.requests_per_second",
        ),
        (
            "more concurrent accounts than a semaphore holds",
            with("server", "max_concurrent_accounts", "9000000000000000000"),
            "server.max_concurrent_accounts",
        ),
        (
            "more push attempts than the counter holds",
            with("sync", "max_push_attempts", "4000000000"),
            "sync.max_push_attempts",
        ),
        (
            "a negative retention",
            with("retention", "changes_days", "-5"),
            "retention.changes_days",
        ),
        (
            "an empty client id",
            with("constant_contact", "client_id", "\"\""),
            "constant_contact.client_id",
        ),
        (
            "no client secret",
            conf(&[], &[("constant_contact", "client_secret")], None),
            "constant_contact.client_secret",
        ),
        (
            "an unreadable client secret file",
            conf(
                &[(
                    "constant_contact",
                    "client_secret_file",
                    "\"/nonexistent/ccsync/client_secret\"",
                )],
                &[("constant_contact", "client_secret")],
                None,
            ),
            "constant_contact.client_secret_file",
        ),
        (
            "an unreadable database password file",
            with("database", "password_file", "\"/nonexistent/ccsync/pw\""),
            "database.password_file",
        ),
        (
            "an unreadable token key file",
            with("security", "token_key_file", "\"/nonexistent/ccsync/key\""),
            "security.token_key_file",
        ),
        (
            "a token key that is not a key",
            with("security", "token_key", "\"short\""),
            "security.token_key",
        ),
        ("no account", conf(&[], &[], Some("")), "accounts"),
        (
            "accounts as a string",
            format!("accounts = \"default\"\n{}", conf(&[], &[], Some(""))),
            "accounts",
        ),
        (
            "accounts as one table",
            conf(&[], &[], Some("[accounts]\nid = \"default\"\n")),
            "accounts",
        ),
        (
            "an account id with a space",
            conf(&[], &[], acct("id = \"bad id\"\n").as_deref()),
            "accounts[0].id",
        ),
        (
            "two accounts with one id",
            conf(
                &[],
                &[],
                Some("[[accounts]]\nid = \"a\"\n[[accounts]]\nid = \"a\"\n"),
            ),
            "accounts[1].id",
        ),
        (
            "lists that are not list ids",
            conf(
                &[],
                &[],
                acct("id = \"a\"\nlists = [\"nope\"]\n").as_deref(),
            ),
            "accounts[0].lists",
        ),
        (
            "lists as a word other than all",
            conf(&[], &[], acct("id = \"a\"\nlists = \"some\"\n").as_deref()),
            "accounts[0].lists",
        ),
        (
            "an unreadable refresh token file",
            conf(
                &[],
                &[],
                acct("id = \"a\"\nrefresh_token_file = \"/nonexistent/ccsync/rt\"\n").as_deref(),
            ),
            "accounts[0].refresh_token_file",
        ),
    ];
    v.push((
        "a file that is not text",
        "\u{1}\u{2}\u{7f}=\u{0}".into(),
        "not valid TOML",
    ));
    v
}

#[tokio::test]
async fn every_bad_configuration_exits_78_naming_the_key_and_never_panics() {
    let mut failures = Vec::new();
    for (what, body, key) in config_cases() {
        let file = ConfigFile::with_mode(&body, 0o600);
        for cmd in ["check-config", "sync"] {
            let o = Ccsync::with_args([cmd, "--config", file.path_str()])
                .output()
                .await;
            let out = text(&o);
            let problems = [
                (o.status.code() != Some(78), "exit code is not 78"),
                (!out.contains(key), "the key is not named"),
                (out.contains("panicked"), "it panicked"),
                (
                    out.contains(SECRET) || out.contains(TOKEN),
                    "a secret was printed",
                ),
            ];
            for (bad, why) in problems {
                if bad {
                    failures.push(format!(
                        "{what} ({cmd}, expects {key:?}): {why}: {:?}\n{out}",
                        o.status.code()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn unknown_keys_are_warned_about_by_full_path_and_the_sync_still_runs() {
    let db = TestDb::new().await;
    let sb = sandbox(5).await;
    let conf = ConfigToml::for_sandbox(&sb, &db.url)
        .set("sync", "pag_size", 100u32)
        .raw("[sycn]\npage_size = 100\n")
        .raw(&format!(
            "[[accounts]]\nid = \"default\"\nrefresh_token = {:?}\nrefresh_tokn = \"x\"\n",
            sb.default_account().seed_refresh_token()
        ))
        .write();
    let o = Ccsync::with_args(["check-config", "--config", conf.path_str()])
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    for key in ["sync.pag_size", "sycn", "accounts[0].refresh_tokn"] {
        assert!(
            stderr.contains(&format!("unknown configuration key {key},")),
            "{key} not warned about: {stderr}"
        );
    }
    // Known keys are not warned about.
    assert_eq!(
        stderr.matches("unknown configuration key").count(),
        3,
        "{stderr}"
    );

    let o = Ccsync::with_args(["sync", "--job", "contacts", "--config", conf.path_str()])
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("created=5"), "{}", text(&o));
    for key in ["sync.pag_size", "sycn", "accounts[0].refresh_tokn"] {
        assert!(
            text(&o).contains(key),
            "{key} not warned about: {}",
            text(&o)
        );
    }
    assert!(!text(&o).contains("panicked"));
    sb.shutdown();
    db.cleanup().await;
}

/// A sandbox that processes imports quickly, with fast polling.
async fn harness() -> Harness {
    let cfg = SandboxConfig {
        contacts: 10,
        import_processing: Duration::from_millis(30),
        ..SandboxConfig::default()
    };
    Harness::start(cfg, |s| {
        s.sync.poll_initial = Duration::from_millis(20);
        s.sync.poll_max = Duration::from_millis(80);
    })
    .await
}

/// One outbound row of the test: what is queued and how it must end.
struct Row {
    email: String,
    op: String,
    fields: Value,
    lists: Vec<Uuid>,
    /// `None`: completes; `Some(needle)`: fails with a reason containing it.
    fails_with: Option<String>,
    id: i64,
}

fn row(email: &str, op: &str, fields: Value, lists: &[Uuid], fails_with: Option<&str>) -> Row {
    Row {
        email: email.to_string(),
        op: op.to_string(),
        fields,
        lists: lists.to_vec(),
        fails_with: fails_with.map(str::to_string),
        id: 0,
    }
}

/// Quotes, backslashes, SQL-ish text, and unicode: right-to-left override, Arabic, emoji
/// (a ZWJ family), combining marks — each within its property's limit.
const QUOTES: &str = "O'Brien \"Bob\" \\ back\\slash `tick`";
const SQLISH: &str = "x'); DROP TABLE ccsync.outbound; --";
const UNICODE: &str = "\u{202e}مرحبا 🎉 e\u{301}\u{200d} 👩\u{200d}👩\u{200d}👧 漢字";

#[tokio::test]
async fn hostile_outbound_rows_fail_precisely_while_valid_rows_complete_byte_for_byte() {
    let h = harness().await;
    let list = h.ctl.create_list("Members");
    h.ctl.create_custom_field("note", "Note", "string");
    // The catalogue of lists and custom fields, as a push's pulls would bring it.
    h.run_ok(Job::Lists).await;
    h.run_ok(Job::Contacts).await;
    let (_, member_email, _) = member(&h);
    // Another live subscriber: its field-only row goes out by GET + PUT.
    let (put_id, put_email) = h
        .ctl
        .contact_ids()
        .into_iter()
        .find_map(|id| {
            let c = h.ctl.contact(id)?;
            let e = c["email_address"]["address"].as_str()?.to_lowercase();
            (c["deleted_at"].is_null()
                && c["email_address"]["permission_to_send"] != "unsubscribed"
                && e != member_email)
                .then_some((id, e))
        })
        .expect("a second live subscriber");

    let big = "'\"\\; DROP TABLE x; -- 🎉".repeat(500); // > 10 KB
    let big_chars = big.chars().count();
    let many_cf: Map<String, Value> = (0..26).map(|i| (format!("cf:f{i}"), json!("v"))).collect();
    let many_lists: Vec<Uuid> = (0..51).map(|_| Uuid::new_v4()).collect();
    let too_long = format!("fields.first_name has {big_chars} characters; at most 50");
    let long_email = format!("{}@example.com", "a".repeat(10_240));
    let mut rows = vec![
        // Valid: they complete whatever the rest of the push holds.
        row(
            "valid.plain@example.com",
            "upsert",
            json!({"first_name": "Plain"}),
            &[list],
            None,
        ),
        row(
            "o'brien+tag@example.com",
            "upsert",
            json!({
                "first_name": QUOTES,
                "last_name": UNICODE,
                "job_title": SQLISH,
                "company_name": "x".repeat(50),
                "cf:note": "🎉".repeat(255),
            }),
            &[list],
            None,
        ),
        row(
            &put_email,
            "upsert",
            json!({"first_name": QUOTES, "last_name": UNICODE, "job_title": SQLISH}),
            &[],
            None,
        ),
        // Invalid, each for one reason.
        row(
            "no-at-sign.example.com",
            "upsert",
            json!({}),
            &[list],
            Some("has no '@'"),
        ),
        row(
            "two words@example.com",
            "upsert",
            json!({}),
            &[list],
            Some("whitespace"),
        ),
        row(
            "jos\u{e9}@example.com",
            "upsert",
            json!({}),
            &[list],
            Some("non-ASCII"),
        ),
        row(
            "esc\u{1b}[31m\n@example.com",
            "upsert",
            json!({}),
            &[list],
            Some("non-ASCII"),
        ),
        row(
            &long_email,
            "upsert",
            json!({}),
            &[list],
            Some("longer than 50"),
        ),
        row(
            "long.name@example.com",
            "upsert",
            json!({"first_name": "x".repeat(51)}),
            &[list],
            Some("fields.first_name has 51 characters; at most 50"),
        ),
        row(
            "ten.kb@example.com",
            "upsert",
            json!({"first_name": big}),
            &[list],
            Some(&too_long),
        ),
        row(
            "long.note@example.com",
            "upsert",
            json!({"cf:note": "🎉".repeat(256)}),
            &[list],
            Some("fields.cf:note has 256 characters; at most 255"),
        ),
        row(
            "unknown.cf@example.com",
            "upsert",
            json!({"cf:nope": "1"}),
            &[list],
            Some("fields.cf:nope: no custom field named nope"),
        ),
        row(
            "many.cf@example.com",
            "upsert",
            Value::Object(many_cf),
            &[list],
            Some("fields has 26 custom fields; at most 25"),
        ),
        row(
            "many.lists@example.com",
            "upsert",
            json!({"first_name": "M"}),
            &many_lists,
            Some("list_ids has 51 lists; at most 50"),
        ),
        row(
            "unknown.list@example.com",
            "upsert",
            json!({"first_name": "U"}),
            &[Uuid::from_u128(7)],
            Some("list 00000000-0000-0000-0000-000000000007 does not exist"),
        ),
        row(
            "nothing@example.com",
            "upsert",
            json!({}),
            &[],
            Some("nothing to push: fields is empty and list_ids is empty"),
        ),
        row(
            "not.an.object@example.com",
            "upsert",
            json!("first_name=x"),
            &[list],
            Some("fields must be a JSON object"),
        ),
        row(
            "sql.key@example.com",
            "upsert",
            json!({SQLISH: "v"}),
            &[list],
            Some(&format!("fields.{SQLISH} is not a JSON import property")),
        ),
        row(
            "birthday@example.com",
            "upsert",
            json!({"birthday_month": 13, "birthday_day": 1}),
            &[list],
            Some("fields.birthday_month must be an integer 1..12"),
        ),
        row(
            "frob@example.com",
            "frobnicate",
            json!({"first_name": "F"}),
            &[list],
            Some("op \"frobnicate\" is not one of"),
        ),
        row(
            "sql.op@example.com",
            SQLISH,
            json!({"first_name": "S"}),
            &[list],
            Some(&format!("op {SQLISH:?} is not one of")),
        ),
        row(
            &member_email,
            "unsubscribe",
            json!({"opt_out_reason": "🎉".repeat(256)}),
            &[],
            Some("fields.opt_out_reason must be a string of at most 255 characters"),
        ),
    ];
    for r in &mut rows {
        r.id = h
            .queue_op(&r.email, &r.op, r.fields.clone(), &r.lists)
            .await;
    }
    let stats = push(&h).await;

    let failing = rows.iter().filter(|r| r.fails_with.is_some()).count() as u64;
    let mut problems = Vec::new();
    for r in &rows {
        let (st, reason) = state(&h, r.id).await;
        let reason = reason.unwrap_or_default();
        match &r.fails_with {
            None if st != "completed" => {
                problems.push(format!("{:?}: {st} {reason:?}", r.email));
            }
            Some(needle) if st != "failed" || !reason.contains(needle.as_str()) => {
                problems.push(format!(
                    "{:?} ({}): {st} {reason:?}, expected failed with {needle:?}",
                    r.email.chars().take(60).collect::<String>(),
                    r.op
                ));
            }
            _ => {}
        }
        // Stored as queued, byte for byte.
        let (email, op, fields, lists): (String, String, Value, Vec<Uuid>) =
            sqlx::query_as("SELECT email, op, fields, list_ids FROM ccsync.outbound WHERE id = $1")
                .bind(r.id)
                .fetch_one(&h.db.pool)
                .await
                .unwrap();
        assert_eq!(
            (email, op, fields, lists),
            (
                r.email.clone(),
                r.op.clone(),
                r.fields.clone(),
                r.lists.clone()
            )
        );
    }
    assert!(problems.is_empty(), "{}\n{stats}", problems.join("\n"));
    // The failing rows were refused before a request (the unsubscribe row is refused as a
    // row of its own op; every other one by the import's checks).
    assert_eq!(stats["failed_invalid"], failing, "{stats}");
    for r in rows.iter().filter(|r| r.fails_with.is_some()) {
        if r.email != member_email {
            assert!(
                h.ctl.contact_by_email(&r.email).is_none(),
                "{:?} reached Constant Contact",
                r.email
            );
        }
    }
    assert!(h.ctl.resubscriptions().is_empty());

    // Sent byte for byte, and read back into the store byte for byte.
    let c = h
        .ctl
        .contact_by_email("o'brien+tag@example.com")
        .expect("created");
    assert_eq!(c["first_name"], QUOTES);
    assert_eq!(c["last_name"], UNICODE);
    assert_eq!(c["job_title"], SQLISH);
    assert_eq!(c["company_name"], "x".repeat(50));
    let note = c["custom_fields"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|f| f["value"].as_str())
        .map(str::to_string);
    assert_eq!(note, Some("🎉".repeat(255)));
    let c = h.ctl.contact(put_id).expect("still there");
    assert_eq!(
        (&c["first_name"], &c["last_name"], &c["job_title"]),
        (&json!(QUOTES), &json!(UNICODE), &json!(SQLISH))
    );
    assert!(
        h.sb.requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.ends_with(&put_id.to_string())),
        "the field-only row went out by PUT"
    );
    h.run_ok(Job::Contacts).await;
    let stored: (String, String, String) = sqlx::query_as(
        "SELECT first_name, last_name, job_title FROM ccsync.contacts WHERE email = $1",
    )
    .bind("o'brien+tag@example.com")
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, (QUOTES.into(), UNICODE.into(), SQLISH.into()));
    // No statement was spliced together: the tables the SQL-ish text names are all there.
    assert_eq!(
        h.count("SELECT count(*) FROM ccsync.outbound").await,
        rows.len() as i64
    );
    assert!(h.count("SELECT count(*) FROM ccsync.contacts").await > 0);

    // `ccsync outbound --json` echoes every row exactly; the table escapes control
    // characters so that a hostile email cannot forge a row or drive the terminal.
    let conf = ConfigToml::for_sandbox(&h.sb, &h.db.url)
        .account("default", None)
        .write();
    let o = Ccsync::new()
        .config(&conf.path)
        .args(["outbound", "--json", "--limit", "1000"])
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let listed: Value = serde_json::from_slice(&o.stdout).expect("outbound --json is JSON");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), rows.len());
    for r in &rows {
        let l = listed
            .iter()
            .find(|l| l["id"] == r.id)
            .unwrap_or_else(|| panic!("row {} not listed", r.id));
        assert_eq!(l["email"], r.email.as_str());
        assert_eq!(l["op"], r.op.as_str());
        let (st, reason) = state(&h, r.id).await;
        assert_eq!(l["state"], st.as_str());
        assert_eq!(l["reason"], json!(reason));
    }
    let o = Ccsync::new()
        .config(&conf.path)
        .args(["outbound", "--limit", "1000"])
        .output()
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        !table.contains('\u{1b}'),
        "a raw escape reached the terminal"
    );
    assert!(table.contains("esc\\u{1b}[31m\\n@example.com"), "{table}");
    assert_eq!(table.lines().count(), rows.len() + 1, "one line per row");
    h.finish().await;
}
