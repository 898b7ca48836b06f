//! Fault queue: injected failures consumed in order by matching API requests.

use std::time::Duration;

use super::state::{FaultSlot, State};
use super::types::Fault;

/// What the pipeline must do for one request.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    pub delay: Duration,
    pub action: Option<FaultAction>,
}

#[derive(Debug)]
pub(crate) enum FaultAction {
    Status(u16),
    Throttle,
    Reset,
    Truncate,
    NotJson { cut: bool },
    Inject(Vec<serde_json::Value>),
    Extra(serde_json::Value),
    SlowAnswer(Duration),
}

/// Does `prefix` match `path`? Prefixes may be given with or without the `/v3` base.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() || path.starts_with(prefix) {
        return true;
    }
    if !prefix.starts_with("/v3") {
        if let Some(rest) = path.strip_prefix("/v3") {
            return rest.starts_with(prefix);
        }
    }
    false
}

pub(crate) fn push(st: &mut State, fault: Fault) {
    let slot = match fault {
        Fault::FailAfter {
            path_prefix,
            ok,
            status,
        } => FaultSlot::FailAfter {
            path_prefix,
            ok,
            status,
            seen: 0,
        },
        f => FaultSlot::Fault(f),
    };
    st.faults.push_back(slot);
}

/// Consumes the faults that apply to a `method` request to `path`. Every matching latency fault
/// adds its delay; the first matching terminal fault decides the answer.
pub(crate) fn plan(st: &mut State, method: &str, path: &str) -> FaultPlan {
    let mut plan = FaultPlan::default();
    let mut i = 0;
    while i < st.faults.len() {
        let mut consumed = false;
        let mut terminal = false;
        match &mut st.faults[i] {
            FaultSlot::Fault(Fault::Latency {
                path_prefix,
                delay,
                times,
            }) if prefix_matches(path_prefix, path) && *times > 0 => {
                plan.delay += *delay;
                *times -= 1;
                consumed = *times == 0;
            }
            FaultSlot::Fault(Fault::Status {
                path_prefix,
                status,
                times,
            }) if prefix_matches(path_prefix, path) && *times > 0 => {
                plan.action = Some(FaultAction::Status(*status));
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::Throttle { times }) if *times > 0 => {
                plan.action = Some(FaultAction::Throttle);
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::Reset { path_prefix, times })
                if prefix_matches(path_prefix, path) && *times > 0 =>
            {
                plan.action = Some(FaultAction::Reset);
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::TruncateBody { path_prefix, times })
                if prefix_matches(path_prefix, path) && *times > 0 =>
            {
                plan.action = Some(FaultAction::Truncate);
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::NotJson {
                path_prefix,
                times,
                cut,
            }) if prefix_matches(path_prefix, path) && *times > 0 => {
                plan.action = Some(FaultAction::NotJson { cut: *cut });
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::InjectContacts {
                path_prefix,
                contacts,
                times,
            }) if prefix_matches(path_prefix, path) && *times > 0 => {
                plan.action = Some(FaultAction::Inject(contacts.clone()));
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::ExtraFields {
                path_prefix,
                fields,
                times,
            }) if prefix_matches(path_prefix, path) && *times > 0 => {
                plan.action = Some(FaultAction::Extra(fields.clone()));
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::Fault(Fault::SlowAnswer {
                path_prefix,
                method: only,
                delay,
                times,
            }) if prefix_matches(path_prefix, path)
                && only.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && *times > 0 =>
            {
                plan.action = Some(FaultAction::SlowAnswer(*delay));
                *times -= 1;
                consumed = *times == 0;
                terminal = true;
            }
            FaultSlot::FailAfter {
                path_prefix,
                ok,
                status,
                seen,
            } if prefix_matches(path_prefix, path) => {
                if *seen < *ok {
                    *seen += 1;
                } else {
                    plan.action = Some(FaultAction::Status(*status));
                    terminal = true;
                }
            }
            _ => {}
        }
        if consumed {
            st.faults.remove(i);
        } else {
            i += 1;
        }
        if terminal {
            break;
        }
    }
    plan
}

/// Takes the next `ActivityOutcome` fault, if any: `(state, errors)`.
pub(crate) fn take_activity_outcome(st: &mut State) -> Option<(String, Vec<String>)> {
    let idx = st.faults.iter().position(
        |f| matches!(f, FaultSlot::Fault(Fault::ActivityOutcome { times, .. }) if *times > 0),
    )?;
    let mut out = None;
    let mut consumed = false;
    if let Some(FaultSlot::Fault(Fault::ActivityOutcome {
        state,
        times,
        errors,
    })) = st.faults.get_mut(idx)
    {
        out = Some((state.clone(), errors.clone()));
        *times -= 1;
        consumed = *times == 0;
    }
    if consumed {
        st.faults.remove(idx);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_with_or_without_v3() {
        assert!(prefix_matches("", "/v3/contacts"));
        assert!(prefix_matches("/v3/contacts", "/v3/contacts"));
        assert!(prefix_matches("/contacts", "/v3/contacts"));
        assert!(prefix_matches("/v3/activities", "/v3/activities/x"));
        assert!(!prefix_matches("/v3/contact_lists", "/v3/contacts"));
        assert!(!prefix_matches("/contact_lists", "/v3/contacts"));
    }
}
