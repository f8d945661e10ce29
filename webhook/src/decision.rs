//! Whether a pod gets a sidecar.
//!
//! Injection is decided twice (spec §2 intro):
//! - **stage A** happens in the API server: the MutatingWebhookConfiguration's
//!   `namespaceSelector`/`objectSelector` pick at most one webhook from namespace labels and pod
//!   *labels*. [`matching_webhooks`] evaluates that offline, with Kubernetes label-selector
//!   semantics ([`selector_matches`]).
//! - **stage B** happens in the injector: [`injection_required`] applies §2.2 in order
//!   (hostNetwork, ignored namespaces, label over annotation with exact `true`/`false` (the ≥1.27
//!   rule), `neverInjectSelector`, `alwaysInjectSelector`, `policy`).
//!
//! Both are pure functions of plain values.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rudder_config::injector::{InjectionPolicy, InjectorConfig};
use rudder_config::labels;

/// Namespaces whose pods are never injected, whatever they say.
pub const IGNORED_NAMESPACES: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"];

/// The outcome of stage B for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the sidecar is added.
    pub inject: bool,
    /// Why, in a few words (e.g. `hostNetwork`, `label sidecar.istio.io/inject=false`).
    pub reason: String,
    /// Things worth logging, e.g. an inject value that is neither `true` nor `false`.
    pub warnings: Vec<String>,
}

impl Decision {
    fn new(inject: bool, reason: impl Into<String>, warnings: Vec<String>) -> Self {
        Self { inject, reason: reason.into(), warnings }
    }
}

/// What the pod itself asks for (§2.2 steps 3–4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodAsks {
    Inject,
    Skip,
    Default,
}

/// Stage B (§2.2): decides whether the pod (created in `namespace`) gets a sidecar.
pub fn injection_required(
    config: &InjectorConfig,
    namespace: &str,
    meta: &ObjectMeta,
    spec: Option<&PodSpec>,
) -> Decision {
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Decision::new(false, "hostNetwork is enabled", Vec::new());
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::new(false, format!("namespace {namespace} is never injected"), Vec::new());
    }
    let mut warnings = Vec::new();
    let (asks, source) = pod_asks(meta, &mut warnings);
    match asks {
        PodAsks::Inject => return Decision::new(true, format!("{source} {}=true", labels::SIDECAR_INJECT), warnings),
        PodAsks::Skip => return Decision::new(false, format!("{source} {}=false", labels::SIDECAR_INJECT), warnings),
        PodAsks::Default => {}
    }
    let pod_labels = meta.labels.clone().unwrap_or_default();
    if let Some(i) = first_selector_match(&config.never_inject_selector, &pod_labels) {
        return Decision::new(false, format!("neverInjectSelector[{i}] matches"), warnings);
    }
    if let Some(i) = first_selector_match(&config.always_inject_selector, &pod_labels) {
        return Decision::new(true, format!("alwaysInjectSelector[{i}] matches"), warnings);
    }
    match config.policy {
        InjectionPolicy::Enabled => Decision::new(true, "policy enabled", warnings),
        InjectionPolicy::Disabled => Decision::new(false, "policy disabled", warnings),
    }
}

/// Steps 3–4: the label wins over the annotation; only exact `true`/`false` count.
fn pod_asks(meta: &ObjectMeta, warnings: &mut Vec<String>) -> (PodAsks, &'static str) {
    let label = meta.labels.as_ref().and_then(|l| l.get(labels::SIDECAR_INJECT));
    let annotation = meta.annotations.as_ref().and_then(|a| a.get(labels::SIDECAR_INJECT));
    let (value, source) = match (label, annotation) {
        (Some(v), _) => (v.as_str(), "label"),
        (None, Some(v)) => (v.as_str(), "annotation"),
        (None, None) => ("", "none"),
    };
    let asks = match value {
        "true" => PodAsks::Inject,
        "false" => PodAsks::Skip,
        "" => PodAsks::Default,
        other => {
            warnings.push(format!(
                "{source} {}={other:?} is neither \"true\" nor \"false\"; using the policy",
                labels::SIDECAR_INJECT
            ));
            PodAsks::Default
        }
    };
    (asks, source)
}

/// Index of the first selector that is non-empty, valid and matches (empty or invalid ones are
/// skipped, as the injector does).
fn first_selector_match(selectors: &[LabelSelector], labels: &BTreeMap<String, String>) -> Option<usize> {
    selectors.iter().position(|s| !selector_is_empty(s) && selector_matches(s, labels) == Ok(true))
}

fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every expression must hold.
/// `In` needs the key with one of the values; `NotIn` holds when the key is absent;
/// `DoesNotExist` fails for any value, even empty. An empty selector matches everything.
/// An unknown operator, or `In`/`NotIn` without values, is an error.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for (key, value) in selector.match_labels.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Ok(false);
        }
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.as_deref().unwrap_or_default();
        let present = labels.get(&expr.key);
        let holds = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("operator {} on key {} needs values", expr.operator, expr.key));
            }
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => return Err(format!("unknown selector operator {other:?}")),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Stage A: the webhooks whose `namespaceSelector` matches the namespace labels and whose
/// `objectSelector` matches the pod labels (an absent selector matches everything; an invalid
/// one matches nothing). `namespace_labels` should include `kubernetes.io/metadata.name`, which
/// Kubernetes sets on every namespace.
pub fn matching_webhooks<'a>(
    webhooks: &'a [MutatingWebhook],
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> Vec<&'a MutatingWebhook> {
    let matches =
        |selector: Option<&LabelSelector>, labels| selector.is_none_or(|s| selector_matches(s, labels) == Ok(true));
    webhooks
        .iter()
        .filter(|w| {
            matches(w.namespace_selector.as_ref(), namespace_labels) && matches(w.object_selector.as_ref(), pod_labels)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            ..LabelSelector::default()
        }
    }

    #[test]
    fn selector_operators_follow_kubernetes() {
        let empty = map(&[]);
        let a = map(&[("k", "a")]);
        let blank = map(&[("k", "")]);
        assert_eq!(selector_matches(&expr("k", "In", &["a"]), &a), Ok(true));
        assert_eq!(selector_matches(&expr("k", "In", &["a"]), &empty), Ok(false));
        assert_eq!(selector_matches(&expr("k", "In", &["A"]), &a), Ok(false));
        assert_eq!(selector_matches(&expr("k", "NotIn", &["a"]), &empty), Ok(true));
        assert_eq!(selector_matches(&expr("k", "NotIn", &["a"]), &a), Ok(false));
        assert_eq!(selector_matches(&expr("k", "Exists", &[]), &blank), Ok(true));
        assert_eq!(selector_matches(&expr("k", "DoesNotExist", &[]), &blank), Ok(false));
        assert_eq!(selector_matches(&expr("k", "DoesNotExist", &[]), &empty), Ok(true));
        assert!(selector_matches(&expr("k", "In", &[]), &a).is_err());
        assert!(selector_matches(&expr("k", "Matches", &["a"]), &a).is_err());
        let labels = LabelSelector { match_labels: Some(map(&[("k", "a")])), ..LabelSelector::default() };
        assert_eq!(selector_matches(&labels, &a), Ok(true));
        assert_eq!(selector_matches(&labels, &blank), Ok(false));
        assert_eq!(selector_matches(&LabelSelector::default(), &empty), Ok(true));
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta { labels: Some(map(labels)), annotations: Some(map(annotations)), ..ObjectMeta::default() }
    }

    #[test]
    fn stage_b_order() {
        let config = InjectorConfig {
            never_inject_selector: vec![
                LabelSelector::default(),
                expr("k", "Bogus", &[]),
                LabelSelector { match_labels: Some(map(&[("never", "x")])), ..LabelSelector::default() },
            ],
            always_inject_selector: vec![expr("always", "Exists", &[])],
            policy: InjectionPolicy::Disabled,
            ..InjectorConfig::default()
        };
        let host = PodSpec { host_network: Some(true), ..PodSpec::default() };
        let yes = meta(&[(labels::SIDECAR_INJECT, "true")], &[]);
        let d = |ns: &str, m: &ObjectMeta, s: Option<&PodSpec>| injection_required(&config, ns, m, s).inject;
        assert!(!d("default", &yes, Some(&host)));
        assert!(!d("kube-system", &yes, None));
        assert!(!d("local-path-storage", &yes, None));
        assert!(d("istio-system", &yes, None));
        // label over annotation
        assert!(d("a", &meta(&[(labels::SIDECAR_INJECT, "true")], &[(labels::SIDECAR_INJECT, "false")]), None));
        assert!(!d("a", &meta(&[(labels::SIDECAR_INJECT, "false")], &[(labels::SIDECAR_INJECT, "true")]), None));
        assert!(d("a", &meta(&[], &[(labels::SIDECAR_INJECT, "true")]), None));
        // never wins over always; invalid and empty selectors are skipped
        assert!(!d("a", &meta(&[("never", "x"), ("always", "")], &[]), None));
        assert!(d("a", &meta(&[("always", "")], &[]), None));
        assert!(!d("a", &meta(&[], &[]), None));
        // "True" is not "true": warning, then the policy
        let odd = injection_required(&config, "a", &meta(&[(labels::SIDECAR_INJECT, "True")], &[]), None);
        assert!(!odd.inject);
        assert_eq!(odd.reason, "policy disabled");
        assert_eq!(odd.warnings.len(), 1);
    }
}
