//! Pure status building: what `status` an IstioOperator should show after a reconcile step, the
//! `Reconciled` and `Ready` conditions, and the JSON merge patch that turns the old status into
//! the new one. Condition times only move when a condition's status flips, so comparing the old
//! and new status with `==` tells whether anything really changed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use rudder_config::operator::{ComponentStatus, InstallState, InstallStatus};
use serde_json::{Map, Value};

use crate::manifest::Component;

/// Condition types and reasons, in one place.
pub mod reason {
    pub const RECONCILED: &str = "Reconciled";
    pub const READY: &str = "Ready";
    pub const INSTALLED: &str = "Installed";
    pub const IN_PROGRESS: &str = "InProgress";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const PENDING: &str = "Pending";
    pub const PROXIES_CONNECTED: &str = "ProxiesConnected";
}

/// A component that failed to apply (or `None` when the failure is not tied to one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub component: Option<Component>,
    pub error: String,
}

/// The status written before applying a new generation: everything `RECONCILING`.
pub fn begin(old: &InstallStatus, generation: Option<i64>, components: &[Component]) -> InstallStatus {
    let states = components.iter().map(|c| (*c, InstallState::Reconciling, String::new()));
    let conditions = vec![
        condition(old, reason::RECONCILED, false, reason::IN_PROGRESS, "", generation),
        condition(old, reason::READY, false, reason::IN_PROGRESS, "", generation),
    ];
    InstallStatus {
        status: Some(InstallState::Reconciling),
        message: String::new(),
        component_status: component_map(states),
        conditions,
        observed_generation: old.observed_generation,
    }
}

/// The spec does not render: `ERROR` with the validation message until the CR changes.
pub fn invalid(old: &InstallStatus, generation: Option<i64>, message: &str) -> InstallStatus {
    let conditions = vec![
        condition(old, reason::RECONCILED, false, reason::INVALID_SPEC, message, generation),
        condition(old, reason::READY, false, reason::INVALID_SPEC, "", generation),
    ];
    InstallStatus {
        status: Some(InstallState::Error),
        message: message.to_owned(),
        component_status: BTreeMap::new(),
        conditions,
        observed_generation: generation,
    }
}

/// After an apply pass: components before a failure are `HEALTHY`, the failed one `ERROR`, later
/// ones still `RECONCILING`; `pending` lists Deployments that are applied but not ready yet.
pub fn installed(
    old: &InstallStatus,
    generation: Option<i64>,
    components: &[Component],
    failure: Option<&Failure>,
    pending: &[String],
) -> InstallStatus {
    let states = components.iter().map(|c| component_state(*c, failure));
    let component_status = component_map(states);
    let (status, message, reconciled, ready) = match (failure, pending.is_empty()) {
        (Some(f), _) => (
            InstallState::Error,
            f.error.clone(),
            (false, reason::APPLY_FAILED, f.error.clone()),
            (false, reason::APPLY_FAILED, String::new()),
        ),
        (None, false) => {
            let waiting = format!("waiting for: {}", pending.join(", "));
            (
                InstallState::Reconciling,
                waiting.clone(),
                (true, reason::INSTALLED, String::new()),
                (false, reason::PENDING, waiting),
            )
        }
        (None, true) => (
            InstallState::Healthy,
            String::new(),
            (true, reason::INSTALLED, String::new()),
            (true, reason::INSTALLED, String::new()),
        ),
    };
    let conditions = vec![
        condition(old, reason::RECONCILED, reconciled.0, reconciled.1, &reconciled.2, generation),
        condition(old, reason::READY, ready.0, ready.1, &ready.2, generation),
    ];
    InstallStatus { status: Some(status), message, component_status, conditions, observed_generation: generation }
}

/// Deletion is blocked by proxies still using the revision.
pub fn action_required(old: &InstallStatus, message: &str) -> InstallStatus {
    let generation = old.observed_generation;
    let mut conditions = old.conditions.clone();
    conditions.retain(|c| c.type_ != reason::READY);
    conditions.push(condition(old, reason::READY, false, reason::PROXIES_CONNECTED, message, generation));
    InstallStatus { status: Some(InstallState::ActionRequired), message: message.to_owned(), conditions, ..old.clone() }
}

fn component_state(c: Component, failure: Option<&Failure>) -> (Component, InstallState, String) {
    match failure.and_then(|f| f.component.map(|fc| (fc, &f.error))) {
        Some((fc, error)) if fc == c => (c, InstallState::Error, error.clone()),
        Some((fc, _)) if fc < c => (c, InstallState::Reconciling, String::new()),
        _ => (c, InstallState::Healthy, String::new()),
    }
}

fn component_map(
    states: impl IntoIterator<Item = (Component, InstallState, String)>,
) -> BTreeMap<String, ComponentStatus> {
    states
        .into_iter()
        .map(|(c, state, error)| {
            (c.label().to_owned(), ComponentStatus { version: String::new(), status: Some(state), error })
        })
        .collect()
}

/// A condition; keeps the old transition time unless the condition's status flips.
fn condition(
    old: &InstallStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = old.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// An RFC 7386 merge patch turning `old` into `new`: keys `new` dropped become `null`.
pub fn merge_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(ov) if ov == v => {}
                    Some(ov) => {
                        out.insert(k.clone(), merge_patch(ov, v));
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_nulls_dropped_keys_and_skips_equal_ones() {
        let old = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1]});
        let new = json!({"a": 1, "b": {"x": 2}, "d": true});
        assert_eq!(merge_patch(&old, &new), json!({"b": {"x": 2, "y": null}, "c": null, "d": true}));
    }

    #[test]
    fn unchanged_outcome_gives_an_equal_status() {
        let comps = [Component::Base, Component::Pilot];
        let first = installed(&InstallStatus::default(), Some(1), &comps, None, &[]);
        let second = installed(&first, Some(1), &comps, None, &[]);
        assert_eq!(first, second);
        assert_eq!(first.status, Some(InstallState::Healthy));
    }

    #[test]
    fn failure_marks_the_component_and_those_after_it() {
        let comps = [Component::Base, Component::Pilot, Component::IngressGateways];
        let f = Failure { component: Some(Component::Pilot), error: "boom".into() };
        let s = installed(&InstallStatus::default(), Some(2), &comps, Some(&f), &[]);
        let state = |c: &str| s.component_status[c].status;
        assert_eq!(state("Base"), Some(InstallState::Healthy));
        assert_eq!(state("Pilot"), Some(InstallState::Error));
        assert_eq!(s.component_status["Pilot"].error, "boom");
        assert_eq!(state("IngressGateways"), Some(InstallState::Reconciling));
        assert_eq!(s.status, Some(InstallState::Error));
    }
}
