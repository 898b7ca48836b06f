//! ccsync: keeps a local PostgreSQL store in sync with Constant Contact (V3 API).
//!
//! Dependencies point one way: `cmd` → `startup` → `scheduler` → `sync` (the jobs) →
//! `store` (SQL) and `ctct` (HTTP) → `core` (the rules, no I/O). `core` imports no other
//! layer; `store` never reaches up into the jobs; nothing in production depends on
//! `sandbox`, an independent fake of the API (only `demo`, `sandbox` and `bench` start it).
//! `tests/it/architecture.rs` checks all three. The sandbox is its own crate
//! (`ccsync-sandbox`, in `sandbox/`) that does not depend on this one: the compiler
//! enforces that the two share no code.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod core;
pub mod crypto;
pub mod ctct;
pub mod ops;
pub mod scheduler;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;

/// The fake of the API, re-exported so that `ccsync::sandbox::…` keeps working.
pub use ccsync_sandbox as sandbox;
