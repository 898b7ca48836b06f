//! Property tests of the configuration loader: arbitrary TOML-ish text, and arbitrary
//! values for every known key, through the same path as `--config` (a file of mode 600, the
//! defaults, validation). Never a panic; every refusal is a configuration error that names
//! a key (or, for text that is not TOML, the line).

use std::io::Write;
use std::path::PathBuf;

use proptest::prelude::*;

use super::{ConfigError, Settings, DEFAULTS};

/// Cases per property (each loads a file): well over ten thousand in all.
const CASES: u32 = 10_000;

/// Every `section.key` of the defaults.
fn default_keys() -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in DEFAULTS.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some((k, _)) = l.split_once(" = ") {
            if !l.starts_with('#') && !k.contains(' ') {
                out.push((section.clone(), k.to_string()));
            }
        }
    }
    out
}

/// A TOML value: well-formed or not, in range or not.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..1_000).prop_map(|n| n.to_string()),
        Just("99999999999999999999".to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        prop::sample::select(vec![
            "nan",
            "inf",
            "-inf",
            "1e-300",
            "1e308",
            "-0.0",
            "true",
            "false",
            "[]",
            "{}",
            "[1, \"a\"]",
            "{ a = 1 }",
            "\"\"",
            "\"all\"",
            "\"0 */5 * * * *\"",
            "\"* * * * *\"",
            "\"61 * * * * *\"",
            "\"5m\"",
            "\"0s\"",
            "\"1ms\"",
            "\"300000000000years\"",
            "\"36501days\"",
            "\"18446744073709551615s\"",
            "\"https://api.cc.email/v3\"",
            "\"http://127.0.0.1:1/v3\"",
            "\"ftp://x/\"",
            "\"postgres://u:p@h/db\"",
            "\"mysql://h/db\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:9187\"",
            "\"localhost\"",
            "\"json\"",
            "\"pretty\"",
            "\"trace\"",
            "\"/nonexistent/x\"",
            "\"\\u0000\"",
            "\"🎉\"",
            "[\"00000000-0000-0000-0000-000000000001\"]",
            "1979-05-27T07:32:00Z",
            "'''multi\nline'''",
        ])
        .prop_map(str::to_string),
        "\"[ -~]{0,12}\"".prop_map(|s| s),
        "[ -~]{0,8}",
    ]
}

/// A line of a TOML-ish file.
fn line(keys: Vec<(String, String)>) -> impl Strategy<Value = String> {
    let sections: Vec<String> = keys.iter().map(|(s, _)| s.clone()).collect();
    let names: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
    prop_oneof![
        4 => (prop::sample::select(names), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop::sample::select(sections).prop_map(|s| format!("[{s}]")),
        1 => Just("[[accounts]]".to_string()),
        1 => prop::sample::select(vec!["id", "refresh_token", "refresh_token_file", "lists"])
            .prop_flat_map(|k| value().prop_map(move |v| format!("{k} = {v}"))),
        1 => ("[a-z_]{1,8}", value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,16}",
        1 => "\\PC{0,6}",
    ]
}

/// A file of its own for the loader (mode 600: inline secrets are allowed).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("ccsync-props-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir.join("config.toml"))
    }

    fn load(&self, text: &str) -> Result<Settings, ConfigError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.0)
            .expect("scratch file");
        f.write_all(text.as_bytes()).expect("write");
        drop(f);
        Settings::load(Some(&self.0)).and_then(|s| s.validate_for_sync().map(|_| s))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = self.0.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

thread_local! {
    /// One file per test thread, rewritten for each case (removed when the thread ends).
    static SCRATCH: Scratch = Scratch::new();
}

/// A refusal is useful: `Invalid` names a key; `Load` names the key serde failed on, the
/// file's line, or the file.
fn names_something(e: &ConfigError, file: &str) -> bool {
    match e {
        ConfigError::Invalid { key, message } => !key.is_empty() && !message.is_empty(),
        ConfigError::Load(m) => {
            m.contains("for key `")
                || m.contains("missing configuration field \"")
                || m.contains("line ")
                || m.contains(file)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any text: a loaded configuration, or an error naming a key, a line or the file.
    #[test]
    fn any_text_loads_or_is_refused_naming_what(lines in prop::collection::vec(line(default_keys()), 0..8)) {
        let text = lines.join("\n");
        SCRATCH.with(|scratch| {
            if let Err(e) = scratch.load(&text) {
                let file = scratch.0.display().to_string();
                prop_assert!(names_something(&e, &file), "{e} for\n{text}");
            }
            Ok(())
        })?;
    }

    /// One known key set to any value (with one valid account): accepted, or refused
    /// naming that very key.
    #[test]
    fn a_bad_value_for_a_known_key_names_that_key(
        key in prop::sample::select(default_keys()),
        v in value(),
    ) {
        let (section, name) = &key;
        let text = format!(
            "[constant_contact]\nclient_id = \"id\"\nclient_secret = \"s\"\n\
             [{section}]\n{name} = {v}\n[[accounts]]\nid = \"a\"\nrefresh_token = \"t\"\n"
        );
        let full = format!("{section}.{name}");
        match SCRATCH.with(|scratch| scratch.load(&text)) {
            Ok(_) => {}
            // A key written twice is a TOML error at its line.
            Err(ConfigError::Load(m)) if m.contains("line ") => {}
            Err(e) => {
                let s = e.to_string();
                // poll_initial is checked against poll_max, under poll_max's name.
                let named = s.contains(&full)
                    || (full == "sync.poll_initial" && s.contains("sync.poll_max"));
                prop_assert!(named, "{s} does not name {full} for {v}");
            }
        }
    }
}
