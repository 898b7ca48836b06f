//! The single integration-test binary: real PostgreSQL (a database per test) and the
//! in-process sandbox over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod contacts_pull;
mod crash;
mod helpers;
mod sandbox_api;
mod schema;
mod oauth;
mod push;
mod daemon;
mod optouts;
mod lists_reconcile;
