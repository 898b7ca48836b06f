//! The `ccsync` binary as operators run it: a TOML configuration file of its own, and a
//! child process (any subcommand) whose output is collected.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccsync::sandbox::{Sandbox, SandboxConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::wait::eventually;

const BIN: &str = env!("CARGO_BIN_EXE_ccsync");

/// A TOML value as written into the file.
pub struct TomlValue(String);

impl From<&str> for TomlValue {
    fn from(s: &str) -> Self {
        TomlValue(format!(
            "\"{}\"",
            s.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    }
}

impl From<String> for TomlValue {
    fn from(s: String) -> Self {
        TomlValue::from(s.as_str())
    }
}

impl From<&String> for TomlValue {
    fn from(s: &String) -> Self {
        TomlValue::from(s.as_str())
    }
}

macro_rules! toml_number {
    ($($t:ty),*) => {$(
        impl From<$t> for TomlValue {
            fn from(n: $t) -> Self {
                TomlValue(n.to_string())
            }
        }
    )*};
}
toml_number!(u32, u64, usize, i64, f64);

/// A configuration for the binary, section by section (in the order first set), then any
/// raw text, then the `[[accounts]]`.
#[derive(Default)]
pub struct ConfigToml {
    sections: Vec<(String, Vec<(String, String)>)>,
    raw: String,
    accounts: Vec<(String, Option<String>)>,
}

impl ConfigToml {
    pub fn new() -> ConfigToml {
        ConfigToml::default()
    }

    /// The database and the sandbox's API and token endpoint, unpaced, with fast retries.
    pub fn for_sandbox(sb: &Sandbox, db_url: &str) -> ConfigToml {
        let d = SandboxConfig::default();
        ConfigToml::new()
            .set("database", "url", db_url)
            .set("database", "max_connections", 4u32)
            .set("constant_contact", "api_base", sb.api_base())
            .set("constant_contact", "token_url", sb.token_url())
            .set("constant_contact", "client_id", d.client_id)
            .set("constant_contact", "client_secret", d.client_secret)
            .set("constant_contact", "requests_per_second", 0u32)
            .set("constant_contact", "retry_initial", "5ms")
            .set("constant_contact", "retry_max", "20ms")
    }

    /// Sets `key` in `[section]` (replacing an earlier value).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<TomlValue>) -> ConfigToml {
        let value = value.into().0;
        let entries = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => &mut self.sections[i].1,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                &mut self.sections.last_mut().expect("just pushed").1
            }
        };
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => entries.push((key.to_string(), value)),
        }
        self
    }

    /// An `[[accounts]]` entry, with a refresh token or none (logins, imports).
    pub fn account(mut self, id: &str, refresh_token: Option<&str>) -> ConfigToml {
        self.accounts
            .push((id.to_string(), refresh_token.map(str::to_string)));
        self
    }

    /// TOML text written after the sections (it should open a section of its own).
    pub fn raw(mut self, text: &str) -> ConfigToml {
        self.raw.push_str(text);
        self
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for (section, entries) in &self.sections {
            s.push_str(&format!("[{section}]\n"));
            for (k, v) in entries {
                s.push_str(&format!("{k} = {v}\n"));
            }
            s.push('\n');
        }
        s.push_str(&self.raw);
        if !self.raw.is_empty() && !self.raw.ends_with('\n') {
            s.push('\n');
        }
        for (id, token) in &self.accounts {
            s.push_str(&format!("[[accounts]]\nid = {}\n", TomlValue::from(id).0));
            if let Some(t) = token {
                s.push_str(&format!("refresh_token = {}\n", TomlValue::from(t).0));
            }
            s.push('\n');
        }
        s
    }

    /// Writes the configuration to a file of its own (mode 600).
    pub fn write(&self) -> ConfigFile {
        ConfigFile::new(&self.render())
    }
}

/// A configuration file in a directory of its own, removed on drop. Mode 600 unless
/// asked otherwise (it holds refresh tokens; the binary refuses world-readable ones).
pub struct ConfigFile {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(body: &str) -> ConfigFile {
        Self::with_mode(body, 0o600)
    }

    pub fn with_mode(body: &str, mode: u32) -> ConfigFile {
        let dir =
            std::env::temp_dir().join(format!("ccsync-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the config directory");
        let path = dir.join("ccsync.toml");
        let c = ConfigFile { dir, path };
        c.write_mode(body, mode);
        c
    }

    /// Replaces the file's content: written then renamed, so that a reload never reads
    /// half a file.
    pub fn write(&self, body: &str) {
        self.write_mode(body, 0o600);
    }

    fn write_mode(&self, body: &str, mode: u32) {
        let tmp = self.dir.join("next.toml");
        std::fs::write(&tmp, body).expect("write the config");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .expect("chmod the config");
        std::fs::rename(&tmp, &self.path).expect("rename the config into place");
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command line for the binary: the test's environment cleaned of anything that would
/// change the configuration (`CCSYNC_CONFIG`, `CCSYNC__*`, systemd's variables, fault
/// points), `RUST_LOG=warn` unless set, killed if dropped while running.
pub struct Ccsync {
    cmd: Command,
    stdin: Option<String>,
}

impl Default for Ccsync {
    fn default() -> Self {
        Self::new()
    }
}

impl Ccsync {
    pub fn new() -> Ccsync {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("CCSYNC_CONFIG")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("CCSYNC__")
                || k == "CCSYNC_TEST_FAULT"
                || k == "NOTIFY_SOCKET"
                || k.starts_with("WATCHDOG_")
            {
                cmd.env_remove(k);
            }
        }
        Ccsync { cmd, stdin: None }
    }

    /// `ccsync <args>`.
    pub fn with_args<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Ccsync {
        Self::new().args(args)
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Ccsync {
        self.cmd.arg(a);
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Ccsync {
        self.cmd.args(args);
        self
    }

    /// `--config <file>` at this point of the command line.
    pub fn config(self, path: impl AsRef<Path>) -> Ccsync {
        self.arg("--config").arg(path.as_ref())
    }

    /// `RUST_LOG`.
    pub fn log(self, filter: &str) -> Ccsync {
        self.env("RUST_LOG", filter)
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Ccsync {
        self.cmd.env(k, v);
        self
    }

    /// Text written to the child's stdin (then closed).
    pub fn stdin(mut self, text: &str) -> Ccsync {
        self.stdin = Some(text.to_string());
        self
    }

    /// Runs to the end and returns what it printed.
    pub async fn output(self) -> Output {
        let mut cmd = self.cmd;
        let Some(input) = self.stdin else {
            return cmd.output().await.expect("run ccsync");
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ccsync");
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
        child.wait_with_output().await.expect("wait for ccsync")
    }

    /// Starts the child; its stdout and stderr are collected line by line.
    pub fn spawn(self) -> ChildProcess {
        let mut cmd = self.cmd;
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ccsync");
        let pid = child.id().expect("a running child has a pid");
        if let Some(input) = self.stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            tokio::spawn(async move {
                let _ = pipe.write_all(input.as_bytes()).await;
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout piped"), stdout.clone()),
            collect(child.stderr.take().expect("stderr piped"), stderr.clone()),
        ];
        ChildProcess {
            child,
            pid,
            stdout,
            stderr,
            readers,
        }
    }
}

fn collect(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("output lock").push(line);
        }
    })
}

/// A running `ccsync` child (killed on drop).
pub struct ChildProcess {
    child: Child,
    pid: u32,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl ChildProcess {
    /// Waits for `ccsync run`'s "running" log line (JSON logs: sent after migrations,
    /// listener and scheduler) and returns the ops listener's base URL.
    pub async fn ready(&self) -> String {
        let deadline = Duration::from_secs(60);
        let t = Instant::now();
        loop {
            let listen = self
                .stderr
                .lock()
                .expect("output lock")
                .iter()
                .find_map(|line| {
                    if !line.contains("\"message\":\"running:") {
                        return None;
                    }
                    let v: serde_json::Value = serde_json::from_str(line).ok()?;
                    v["listen"].as_str().map(str::to_string)
                });
            if let Some(a) = listen {
                return format!("http://{a}");
            }
            assert!(
                t.elapsed() < deadline,
                "the daemon did not start within {deadline:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a line on stdout matching `pred` and returns it.
    pub async fn stdout_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(what, Duration::from_secs(30), || async {
            self.stdout
                .lock()
                .expect("output lock")
                .iter()
                .find(|l| pred(l))
                .cloned()
        })
        .await
    }

    /// Stderr so far (the log).
    pub fn log(&self) -> String {
        self.stderr.lock().expect("output lock").join("\n")
    }

    /// Stdout then stderr so far, each line ended by a newline.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for sink in [&self.stdout, &self.stderr] {
            for l in sink.lock().expect("output lock").iter() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .expect("output lock")
            .iter()
            .any(|l| l.contains(needle))
    }

    /// `kill -<sig>` (TERM, HUP, ...).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the child");
    }

    /// Waits at most `within` for the exit; `None` if still running then.
    pub async fn wait_for_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .expect("wait for the child");
        // The pipes close with the process: the output is complete once read.
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
        }
        Some(status)
    }

    /// Waits for the exit (panics after `within`, with the log) and returns the status and
    /// the time it took.
    pub async fn exit_status(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let t = Instant::now();
        match self.wait_for_exit(within).await {
            Some(status) => (status, t.elapsed()),
            None => panic!(
                "ccsync did not exit within {within:?}; output:\n{}",
                self.text()
            ),
        }
    }

    /// Like `exit_status`, with the exit code.
    pub async fn exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let (status, took) = self.exit_status(within).await;
        (status.code(), took)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

/// Stdout then stderr of a finished command.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
