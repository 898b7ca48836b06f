//! The `changes` log as the core speaks of it: kinds and rows to write.

use serde_json::{json, Value};
use uuid::Uuid;

/// Kinds of the `changes` log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Created,
    Updated,
    Unsubscribed,
    Resubscribed,
    Deleted,
    Restored,
    ListAdded,
    ListRemoved,
    Conflict,
    Skipped,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Unsubscribed => "unsubscribed",
            ChangeKind::Resubscribed => "resubscribed",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Restored => "restored",
            ChangeKind::ListAdded => "list_added",
            ChangeKind::ListRemoved => "list_removed",
            ChangeKind::Conflict => "conflict",
            ChangeKind::Skipped => "skipped",
        }
    }
}

/// One `changes` row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub contact_id: Uuid,
    pub email: Option<String>,
    pub kind: ChangeKind,
    pub field: Option<&'static str>,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
}

/// A `list_added` / `list_removed` row for `contact` and `list`.
pub fn membership_change(
    contact: Uuid,
    email: Option<&String>,
    kind: ChangeKind,
    list: Uuid,
) -> Change {
    Change {
        contact_id: contact,
        email: email.cloned(),
        kind,
        field: Some("list_memberships"),
        old_value: (kind == ChangeKind::ListRemoved).then(|| json!(list)),
        new_value: (kind == ChangeKind::ListAdded).then(|| json!(list)),
    }
}
