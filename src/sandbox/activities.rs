//! Bulk activities (part C; being written).

use super::state::{Inner, State};

pub(crate) struct ActivityRec {}

/// Advances the account's activities whose due time has passed.
pub(crate) fn tick(_inner: &Inner, _st: &mut State, _account: &str) {}

pub(crate) fn routes() -> axum::Router<std::sync::Arc<Inner>> {
    axum::Router::new()
}

pub(crate) fn activity_json(
    _acct: &super::state::Account,
    _id: uuid::Uuid,
) -> Option<serde_json::Value> {
    None
}
