//! The jobs: plain async functions over a [`JobContext`], each run through
//! [`runner::run_guarded`] (a per-(account, job) advisory lock, a `sync_runs` row and a
//! root span), and cycles of them through [`runner::run_cycle`], the one cycle runner of
//! `ccsync sync`, `ccsync demo` and the daemon's scheduler.
//!
//! - `pager`: the one read-ahead pager of every `GET /contacts` walk;
//! - `contacts`: the incremental pull and the page apply every sweep shares (`optouts`,
//!   `deletes` and `reconcile` are sweeps of it);
//! - `walk`: one cursor walk, its pages applied (the sequential pull and each slice);
//! - `slices`: a large contacts pull paged in time slices at once;
//! - `export`: a first sync by contact export (`sync.backfill`), then the incremental pull;
//! - `watermark`: the one place a watermark is advanced;
//! - `lists`, `reconcile`, `push`: the list catalogue, the weekly repair and the push;
//! - `custom_fields`: the custom field catalogue (name ↔ id), synced by the lists job;
//! - `lists_cycle`: the lists job (both catalogues and the membership drift check).

pub mod contacts;
pub mod context;
pub mod custom_fields;
pub mod deletes;
pub mod export;
pub mod lists;
pub mod lists_cycle;
pub mod optouts;
pub mod pager;
pub mod push;
pub mod put;
pub mod reads;
pub mod reconcile;
pub mod runner;
pub mod slices;
pub mod walk;
pub mod watermark;

pub use crate::core::job::Job;
pub use context::JobContext;
pub use runner::{run_cycle, run_guarded, Outcome, RunReport};
