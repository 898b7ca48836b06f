//! The command line (clap). `--config` is global: accepted before or after the subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::core::states::OutboundState;
use crate::sync::Job;

#[derive(Debug, Parser)]
#[command(
    name = "ccsync",
    version,
    about = "Keeps a local PostgreSQL store in sync with Constant Contact"
)]
pub struct Cli {
    /// Configuration file (TOML). Environment: CCSYNC_CONFIG.
    #[arg(long, global = true, env = "CCSYNC_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// `--job` values: one job, or all of them in cycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobArg {
    Contacts,
    Unsubscribes,
    Deletes,
    Lists,
    Reconcile,
    Push,
    All,
}

impl JobArg {
    pub fn jobs(self) -> Vec<Job> {
        match self {
            JobArg::Contacts => vec![Job::Contacts],
            JobArg::Unsubscribes => vec![Job::Unsubscribes],
            JobArg::Deletes => vec![Job::Deletes],
            JobArg::Lists => vec![Job::Lists],
            JobArg::Reconcile => vec![Job::Reconcile],
            JobArg::Push => vec![Job::Push],
            JobArg::All => Job::cycle().to_vec(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: migrations, scheduler, health/metrics listener, graceful shutdown.
    Run {
        /// Do not run migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Run one cycle now, then exit (non-zero when a job failed).
    Sync {
        /// Only this account (default: every configured account).
        #[arg(long)]
        account: Option<String>,
        #[arg(long, value_enum, default_value = "all")]
        job: JobArg,
        /// Ignore watermarks and read everything again.
        #[arg(long)]
        full: bool,
        /// Report what would change on both sides; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Do not run migrations first.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Deletes old bookkeeping rows by `[retention]` (what the push still needs is kept)
    /// and prints the rows deleted per table.
    Prune {
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per account and job: watermark, last run and outcome, API requests used today.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the outbound queue (newest first), or requeue / cancel rows of it.
    #[command(args_conflicts_with_subcommands = true)]
    Outbound {
        #[command(subcommand)]
        action: Option<OutboundCommand>,
        #[command(flatten)]
        list: OutboundList,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Obtain, import or inspect OAuth tokens.
    Auth {
        #[command(subcommand)]
        what: AuthCommand,
    },
    /// Exit 0 when the daemon is alive (Docker HEALTHCHECK): GETs /livez at the configured
    /// `[server] listen` (0.0.0.0 / [::] become loopback), or /readyz with --ready.
    Healthcheck {
        /// Check this URL instead of the configured listener.
        #[arg(long)]
        url: Option<String>,
        /// Check readiness (/readyz: every account authorised, no job failing too long)
        /// instead of liveness.
        #[arg(long)]
        ready: bool,
    },
    /// Run the local Constant Contact fake.
    Sandbox(SandboxArgs),
    /// The whole loop against an in-process sandbox and the configured database.
    Demo {
        #[arg(long, default_value_t = 2000)]
        contacts: usize,
    },
    /// Benchmarks that print numbers.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// `ccsync sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Loopback only unless `--allow-remote` is given.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    /// Allow a `--listen` address other than loopback (e.g. 0.0.0.0 in a container):
    /// whoever reaches it can read its secrets and drive its control API.
    #[arg(long)]
    pub allow_remote: bool,
    /// Generated contacts in the default account.
    #[arg(long, default_value_t = 1000)]
    pub contacts: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Requests per second per API key (like the real 4/s); 0 = unlimited.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Every API answer waits this many milliseconds (a real page takes hundreds).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this many milliseconds more, drawn uniformly per request.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Every benchmark below at fixed sizes, then one summary table: backfill at the rate
    /// limit with latency (paged, sliced, export), local apply (pacing off), peak RSS of
    /// ccsync alone at 100k and 1M contacts (the sandbox in its own process), requests a day
    /// of N idle accounts under the planner, requests of a push of 1, 100 and 10,000 rows.
    All {
        /// Smaller sizes (a minute or two instead of several): 5k backfill, 20k apply and
        /// RSS, pushes of 1 and 100 rows.
        #[arg(long)]
        quick: bool,
    },
    /// End-to-end pull throughput (rate limiting off), peak RSS of this process, then the
    /// apply stage alone (pages fetched ahead, only their applying timed) and the fetch
    /// stage alone.
    Pull {
        #[arg(long, default_value_t = 200_000)]
        contacts: usize,
        /// Use a sandbox already running at this API base (e.g. http://127.0.0.1:8765/v3);
        /// default: start `ccsync sandbox` in a process of its own, so that its work and
        /// memory are not counted as ccsync's.
        #[arg(long, conflicts_with = "in_process")]
        sandbox: Option<String>,
        /// Run the sandbox inside this process instead (its CPU and memory then count).
        #[arg(long)]
        in_process: bool,
    },
    /// Requests one push spends per row kind (reads before, PUTs, imports, polls,
    /// confirmations), against the in-process sandbox.
    /// A first pull at the API's rate limit with page latency: paged (one cursor), sliced
    /// (`sync.slice_streams` cursors) and by export (`sync.backfill = export`, the sandbox's
    /// CSV with a contact_id column), contacts/s, the share of the ceiling (requests/s × 500
    /// contacts a page) and the requests spent.
    Backfill {
        #[arg(long, default_value_t = 20_000)]
        contacts: usize,
        /// Latency of every API answer, milliseconds.
        #[arg(long, default_value_t = 600)]
        latency_ms: u64,
        /// Up to this many milliseconds more per answer, drawn uniformly.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Requests per second, enforced by the sandbox and paced by ccsync.
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        /// Which walks to time.
        #[arg(long, value_enum, default_value_t = BackfillMode::All)]
        mode: BackfillMode,
        /// How long the sandbox takes to process each export activity (the real duration
        /// is not documented), milliseconds.
        #[arg(long, default_value_t = 30_000)]
        export_ms: u64,
    },
    /// A simulated day of the request-budget planner for N idle accounts on one API key:
    /// requests spent and the worst staleness achieved per job (no I/O).
    Planner {
        /// Accounts on the key (repeat for several).
        #[arg(long = "accounts", default_values_t = [1usize, 19, 100, 200])]
        accounts: Vec<usize>,
        #[arg(long, default_value = "30m")]
        unsubscribes: humantime::Duration,
        #[arg(long, default_value = "1h")]
        contacts: humantime::Duration,
        #[arg(long, default_value = "4h")]
        lists: humantime::Duration,
        #[arg(long, default_value_t = 10_000)]
        daily_limit: u64,
        /// Contacts changed per account per day (pages beyond the first cost requests).
        #[arg(long, default_value_t = 0.0)]
        changes_per_day: f64,
    },
    Push {
        /// Rows per push (repeat for several sizes).
        #[arg(long = "rows", default_values_t = [1usize, 100, 10_000])]
        rows: Vec<usize>,
    },
}

/// The walks `bench backfill` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackfillMode {
    Paged,
    Sliced,
    Export,
    /// Paged and sliced.
    Both,
    /// Paged, sliced and export.
    All,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Authorise an account (device flow; `--browser` for authorization code + PKCE).
    Login {
        #[arg(long)]
        account: String,
        #[arg(long)]
        browser: bool,
    },
    /// Read a refresh token for an account from stdin (never from argv) and store it.
    Import {
        #[arg(long)]
        account: String,
    },
    /// Per account: has tokens, access expiry, last refresh, refresh-token kind.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// `ccsync outbound [--state S] [--account A] [--limit N] [--json]`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutboundList {
    /// Only rows in this state (pending, submitted, completed, skipped, failed).
    #[arg(long, value_parser = parse_outbound_state)]
    pub state: Option<OutboundState>,
    /// Only rows of this account.
    #[arg(long)]
    pub account: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,
    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
}

/// An outbound state by name; an unknown one names the valid states.
fn parse_outbound_state(s: &str) -> Result<OutboundState, String> {
    s.parse().map_err(|e| {
        let valid: Vec<_> = OutboundState::ALL.iter().map(|s| s.as_str()).collect();
        format!("{e} (valid states: {})", valid.join(", "))
    })
}

#[derive(Debug, Subcommand)]
pub enum OutboundCommand {
    /// Requeue `failed` rows as new `pending` ones (attempts reset); other rows are left alone.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "failed"])))]
    Retry {
        /// Row ids.
        #[arg(value_name = "ID", conflicts_with = "failed")]
        ids: Vec<i64>,
        /// Every failed row (of `--account`, or of every account).
        #[arg(long)]
        failed: bool,
        /// With `--failed`: only this account.
        #[arg(long, requires = "failed")]
        account: Option<String>,
    },
    /// End `pending` rows as `skipped` ("cancelled by operator"); other rows are left alone.
    Cancel {
        /// Row ids.
        #[arg(value_name = "ID", required = true)]
        ids: Vec<i64>,
    },
}
