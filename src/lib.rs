//! ccsync: keeps a local PostgreSQL store in sync with Constant Contact (V3 API).
//!
//! Dependencies point one way: `sync` uses `store` and `ctct`; `store` knows no HTTP;
//! `ctct` knows no SQL; the pure cores in `sync` import neither; nothing in production
//! depends on `sandbox`, an independent fake of the API (only `demo` and `bench` start it).
//! The sandbox is its own crate (`ccsync-sandbox`, in `sandbox/`), which does not depend on
//! this one: the compiler enforces that the two share no code.

pub mod app;
pub mod auth_cmd;
pub mod bench;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod ctct;
pub mod daemon;
pub mod demo;
pub mod ops;
pub mod scheduler;
pub mod shutdown;
pub mod startup;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;

/// The fake of the API, re-exported so that `ccsync::sandbox::…` keeps working.
pub use ccsync_sandbox as sandbox;
