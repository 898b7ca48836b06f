//! The single integration-test binary: real PostgreSQL (a database per test) and the
//! in-process sandbox over real HTTP.

mod architecture;
mod bad_input;
mod cli;
mod contacts_pull;
mod crash;
mod crash_suite;
mod custom_fields;
mod daemon;
mod db_role;
mod export_backfill;
mod faults;
mod healthcheck;
mod helpers;
mod lists_reconcile;
mod membership_drift;
mod monitoring;
mod oauth;
mod optouts;
mod outbound_cli;
mod page_apply;
mod planner;
mod push;
mod push_reads;
mod retention;
mod sandbox_api;
mod sandbox_write;
mod schema;
mod security;
mod slices;
mod write_path;
