//! Shared test fixtures: a fresh PostgreSQL database per test (dropped on `Drop`), the
//! in-process sandbox on port 0, in-process job contexts, the `ccsync` binary as a child
//! process with a configuration file of its own, and waiting on conditions.

pub mod crash;
mod daemon;
mod db;
mod harness;
mod memberships;
mod pgproxy;
mod sandbox;
mod truth;
mod wait;

pub use daemon::{text, Ccsync, ChildProcess, ConfigFile, ConfigToml};
pub use db::TestDb;
pub use harness::{context, context_with, settings_for, Harness};
pub use memberships::{local_memberships, sandbox_memberships};
pub use pgproxy::PgProxy;
pub use sandbox::{sandbox, sandbox_with};
pub use truth::{assert_store_equals_sandbox, sandbox_max_updated_at, watermark};
pub use wait::eventually;
