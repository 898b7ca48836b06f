//! ccsync: keeps a local PostgreSQL store in sync with Constant Contact (V3 API).
//!
//! Dependencies point one way: `cmd` → `startup` → `scheduler` → `sync` (the jobs) →
//! `store` (SQL) and `ctct` (HTTP) → `core` (the rules, no I/O). `core` imports no other
//! layer; `store` never reaches up into the jobs; nothing in production depends on
//! `sandbox`, an independent fake of the API (only `demo`, `sandbox` and `bench` start it).
//! `tests/it/architecture.rs` checks all three.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod core;
pub mod crypto;
pub mod ctct;
pub mod ops;
pub mod sandbox;
pub mod scheduler;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;
