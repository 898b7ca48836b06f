//! The pure core: the rules of ccsync and the types they speak, with no I/O. Nothing here
//! imports `store`, `ctct`, `sync` or any other layer above it, so every rule can be tested
//! exhaustively (unit and property tests next to each module).
//!
//! - `contact`, `change`: the shapes of a contact and of a `changes` row;
//! - `merge`: primary wins (stale guard, field diffs, membership changes of a page);
//! - `optouts`: which contacts a page newly unsubscribes, and the refusal it writes;
//! - `guard`: what a push may send (never re-subscribe, primary wins per field, validation);
//! - `batch`: cutting a push into imports under the API's limits;
//! - `membership`: the reconcile's membership diff;
//! - `activity`: mapping an ended import activity back to its rows;
//! - `op`, `properties`, `put`: what a row asks for, the import properties it may name, and
//!   the body of a `PUT /contacts/{id}` onto a fresh read;
//! - `confirm`: whether Constant Contact shows a pushed row's effect after the import;
//! - `reads`: choosing the cheaper read of Constant Contact before and after a write;
//! - `sends`: which activity a send attempt with no recorded answer became, if any;
//! - `sanitize`: NUL characters (which PostgreSQL refuses) removed from API values;
//! - `backfill`: whether a first sync pages or exports the account;
//! - `slices`: cutting a large pull's `updated_at` range into slices paged at once;
//! - `planner`: how often each account's jobs run so that the shared daily request budget
//!   buys the most freshness (and a simulated day of it);
//! - `cycle`: which jobs a tick runs, in what order, and what a push needs first;
//! - `job`, `states`: the named jobs, outbound states and run outcomes.

pub mod activity;
pub mod backfill;
pub mod batch;
pub mod change;
pub mod confirm;
pub mod contact;
pub mod cycle;
pub mod guard;
pub mod job;
pub mod membership;
pub mod merge;
pub mod op;
pub mod optouts;
pub mod planner;
pub mod properties;
pub mod put;
pub mod reads;
pub mod sanitize;
pub mod sends;
pub mod slices;
pub mod states;
