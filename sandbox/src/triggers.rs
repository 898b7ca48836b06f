//! Request triggers: one-shot subscriber actions placed exactly before the n-th matching
//! request of an account (so that a test can act between a client's read and its write).
//! The pipeline calls [`fire`] for every request that reaches its handler.

use super::faults::prefix_matches;
use super::state::{Account, State, TriggerSlot};
use super::subscriber;
use super::types::{Trigger, TriggerId};

/// Installs `trigger` on the account; returns its id.
pub(crate) fn install(a: &mut Account, mut trigger: Trigger) -> TriggerId {
    trigger.nth = trigger.nth.max(1);
    a.next_trigger += 1;
    let id = TriggerId(a.next_trigger);
    a.triggers.push(TriggerSlot {
        id,
        trigger,
        seen: 0,
        fired: false,
    });
    id
}

/// `None` = no such trigger on the account.
pub(crate) fn fired(a: &Account, id: TriggerId) -> Option<bool> {
    a.triggers.iter().find(|t| t.id == id).map(|t| t.fired)
}

fn matches(t: &Trigger, method: &str, path: &str, query: &str) -> bool {
    t.method.eq_ignore_ascii_case(method)
        && prefix_matches(&t.path_prefix, path)
        && t.query_contains
            .as_deref()
            .is_none_or(|q| query.contains(q))
}

/// Counts the request against the account's pending triggers and performs the action of
/// each one whose turn it is (in installation order), before the request is handled.
pub(crate) fn fire(
    inner: &super::state::Inner,
    st: &mut State,
    account: &str,
    method: &str,
    path: &str,
    query: &str,
) {
    let pending = st.accounts.get(account).is_some_and(|a| {
        a.triggers
            .iter()
            .any(|t| !t.fired && matches(&t.trigger, method, path, query))
    });
    if !pending {
        return;
    }
    // Due activities first, so that the action lands on the state the request will see.
    super::import_engine::tick(inner, st, account);
    let now = st.now();
    let Some(a) = st.accounts.get_mut(account) else {
        return;
    };
    let mut due = Vec::new();
    for t in a.triggers.iter_mut() {
        if t.fired || !matches(&t.trigger, method, path, query) {
            continue;
        }
        t.seen += 1;
        if t.seen >= t.trigger.nth {
            t.fired = true;
            due.push(t.trigger.action.clone());
        }
    }
    for action in &due {
        tracing::debug!(?action, %method, %path, "sandbox trigger fires");
        subscriber::perform(a, action, now);
    }
}
