//! ccsync: keeps a local PostgreSQL store in sync with Constant Contact (V3 API).
//!
//! Dependencies point one way: `sync` uses `store` and `ctct`; `store` knows no HTTP;
//! `ctct` knows no SQL; the pure cores in `sync` import neither; nothing in production
//! depends on `sandbox`, an independent fake of the API (only `demo` and `bench` start it).

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
