//! The injection truth table of spec §2.3.1, row for row: stage A (the webhook selectors of
//! §2.1, evaluated by `decision::matching_webhooks`) and stage B (`decision::injection_required`
//! with the matched revision's injector config), with a default install and a `canary` revision.
//! Each row is checked three ways: as the table states it, with `enableNamespacesByDefault`, and
//! with `policy: disabled` in both injector configs.
//!
//! The MutatingWebhookConfigurations come from a local helper that follows §2.1 exactly.
//! TODO: switch to the operator renderer's MutatingWebhookConfiguration once it lands, so that
//! this test also pins the rendered selectors.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use rudder_config::injector::{InjectionPolicy, InjectorConfig};
use rudder_config::labels::{
    DEFAULT_REVISION, INJECTION_ENABLED, ISTIO_INJECTION, NAMESPACE_NAME, REVISION, SIDECAR_INJECT,
};
use rudder_webhook::decision::{IGNORED_NAMESPACES, injection_required, matching_webhooks};

fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

fn selector(reqs: Vec<LabelSelectorRequirement>) -> Option<LabelSelector> {
    Some(LabelSelector { match_expressions: Some(reqs), match_labels: None })
}

fn webhook(
    name: &str,
    namespace: Vec<LabelSelectorRequirement>,
    object: Vec<LabelSelectorRequirement>,
) -> MutatingWebhook {
    MutatingWebhook {
        name: format!("{name}sidecar-injector.istio.io"),
        namespace_selector: selector(namespace),
        object_selector: selector(object),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        reinvocation_policy: Some("Never".into()),
        ..MutatingWebhook::default()
    }
}

/// `rev.namespace.` and `rev.object.` for revision (or tag) `rev`.
fn revision_webhooks(rev: &str) -> Vec<MutatingWebhook> {
    vec![
        webhook(
            "rev.namespace.",
            vec![req(REVISION, "In", &[rev]), req(ISTIO_INJECTION, "DoesNotExist", &[])],
            vec![req(SIDECAR_INJECT, "NotIn", &["false"])],
        ),
        webhook(
            "rev.object.",
            vec![req(REVISION, "DoesNotExist", &[]), req(ISTIO_INJECTION, "DoesNotExist", &[])],
            vec![req(SIDECAR_INJECT, "NotIn", &["false"]), req(REVISION, "In", &[rev])],
        ),
    ]
}

/// The no-revision MWC: its `rev.*` webhooks plus `namespace.`, `object.` and (optionally) `auto.`.
fn default_webhooks(enable_namespaces_by_default: bool) -> Vec<MutatingWebhook> {
    let mut hooks = revision_webhooks(DEFAULT_REVISION);
    hooks.push(webhook(
        "namespace.",
        vec![req(ISTIO_INJECTION, "In", &[INJECTION_ENABLED])],
        vec![req(SIDECAR_INJECT, "NotIn", &["false"])],
    ));
    hooks.push(webhook(
        "object.",
        vec![req(ISTIO_INJECTION, "DoesNotExist", &[]), req(REVISION, "DoesNotExist", &[])],
        vec![req(SIDECAR_INJECT, "In", &["true"]), req(REVISION, "DoesNotExist", &[])],
    ));
    if enable_namespaces_by_default {
        hooks.push(webhook(
            "auto.",
            vec![
                req(ISTIO_INJECTION, "DoesNotExist", &[]),
                req(REVISION, "DoesNotExist", &[]),
                req(NAMESPACE_NAME, "NotIn", &IGNORED_NAMESPACES),
            ],
            vec![req(SIDECAR_INJECT, "DoesNotExist", &[]), req(REVISION, "DoesNotExist", &[])],
        ));
    }
    hooks
}

/// One control plane: its revision, its webhooks and its injector config.
struct Install {
    revision: &'static str,
    webhooks: Vec<MutatingWebhook>,
    config: InjectorConfig,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    AsTable,
    NamespacesByDefault,
    PolicyDisabled,
}

fn installs(variant: Variant, with_default: bool) -> Vec<Install> {
    let config = InjectorConfig {
        policy: if variant == Variant::PolicyDisabled { InjectionPolicy::Disabled } else { InjectionPolicy::Enabled },
        always_inject_selector: vec![LabelSelector {
            match_labels: Some([("force".to_owned(), "yes".to_owned())].into()),
            match_expressions: None,
        }],
        ..InjectorConfig::default()
    };
    let mut all = vec![Install { revision: "canary", webhooks: revision_webhooks("canary"), config: config.clone() }];
    if with_default {
        let webhooks = default_webhooks(variant == Variant::NamespacesByDefault);
        all.insert(0, Install { revision: DEFAULT_REVISION, webhooks, config });
    }
    all
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Stage A then stage B: the revision that injects the pod, if any.
fn evaluate(
    installs: &[Install],
    namespace: &str,
    ns_labels: &[(&str, &str)],
    pod_labels: &[(&str, &str)],
    pod_annotations: &[(&str, &str)],
) -> Option<&'static str> {
    let mut ns = map(ns_labels);
    ns.insert(NAMESPACE_NAME.to_owned(), namespace.to_owned());
    let pod = map(pod_labels);
    let matched: Vec<(&Install, String)> = installs
        .iter()
        .flat_map(|i| matching_webhooks(&i.webhooks, &ns, &pod).into_iter().map(move |w| (i, w.name.clone())))
        .collect();
    assert!(
        matched.len() <= 1,
        "more than one webhook matches: {:?}",
        matched.iter().map(|m| &m.1).collect::<Vec<_>>()
    );
    let (install, _) = matched.into_iter().next()?;
    let meta = ObjectMeta { labels: Some(pod), annotations: Some(map(pod_annotations)), ..ObjectMeta::default() };
    injection_required(&install.config, namespace, &meta, None).inject.then_some(install.revision)
}

const D: Option<&str> = Some("default");
const C: Option<&str> = Some("canary");
const NO: Option<&str> = None;

const INJ: &str = SIDECAR_INJECT;
const REV: &str = REVISION;
const NSI: &str = ISTIO_INJECTION;

type Labels = &'static [(&'static str, &'static str)];

/// (row, namespace, namespace labels, pod labels, pod annotations,
///  result as the table, with enableNamespacesByDefault, with policy disabled)
type Row = (
    &'static str,
    &'static str,
    Labels,
    Labels,
    Labels,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

const ROWS: &[Row] = &[
    ("1", "apps", &[], &[], &[], NO, D, NO),
    ("2", "apps", &[], &[(INJ, "true")], &[], D, D, D),
    ("3", "apps", &[], &[(INJ, "false")], &[], NO, NO, NO),
    ("4", "apps", &[], &[(REV, "default")], &[], D, D, NO),
    ("5", "apps", &[], &[(REV, "canary")], &[], C, C, NO),
    ("6", "apps", &[], &[(REV, "canary"), (INJ, "true")], &[], C, C, C),
    ("7", "apps", &[], &[(REV, "canary"), (INJ, "false")], &[], NO, NO, NO),
    ("8", "apps", &[], &[(REV, "nosuchrev")], &[], NO, NO, NO),
    ("9", "apps", &[(NSI, "enabled")], &[], &[], D, D, NO),
    ("10", "apps", &[(NSI, "enabled")], &[(INJ, "true")], &[], D, D, D),
    ("11", "apps", &[(NSI, "enabled")], &[(INJ, "false")], &[], NO, NO, NO),
    ("12", "apps", &[(NSI, "enabled")], &[(REV, "canary")], &[], D, D, NO),
    ("13a", "apps", &[(NSI, "disabled")], &[], &[], NO, NO, NO),
    ("13b", "apps", &[(NSI, "disabled")], &[(INJ, "true")], &[], NO, NO, NO),
    ("13c", "apps", &[(NSI, "disabled")], &[(REV, "canary")], &[], NO, NO, NO),
    ("14a", "apps", &[(NSI, "true")], &[], &[], NO, NO, NO),
    ("14b", "apps", &[(NSI, "")], &[(INJ, "true")], &[], NO, NO, NO),
    ("14c", "apps", &[(NSI, "foo")], &[(REV, "canary")], &[], NO, NO, NO),
    ("15", "apps", &[(REV, "canary")], &[], &[], C, C, NO),
    ("16", "apps", &[(REV, "canary")], &[(INJ, "true")], &[], C, C, C),
    ("17", "apps", &[(REV, "canary")], &[(INJ, "false")], &[], NO, NO, NO),
    ("18", "apps", &[(REV, "canary")], &[(REV, "default")], &[], C, C, NO),
    ("19", "apps", &[(REV, "default")], &[], &[], D, D, NO),
    ("20a", "apps", &[(REV, "nosuchrev")], &[], &[], NO, NO, NO),
    ("20b", "apps", &[(REV, "nosuchrev")], &[(INJ, "true")], &[], NO, NO, NO),
    ("21", "apps", &[(NSI, "enabled"), (REV, "canary")], &[], &[], D, D, NO),
    ("22", "apps", &[(NSI, "disabled"), (REV, "canary")], &[], &[], NO, NO, NO),
    // Stage A cannot see annotations; `auto.` can match (no inject label), then stage B says yes.
    ("23", "apps", &[], &[], &[(INJ, "true")], NO, D, NO),
    ("24", "apps", &[(NSI, "enabled")], &[], &[(INJ, "false")], NO, NO, NO),
    ("25", "apps", &[(REV, "canary")], &[], &[(INJ, "false")], NO, NO, NO),
    ("26", "apps", &[(NSI, "enabled")], &[(INJ, "true")], &[(INJ, "false")], D, D, D),
    ("27", "apps", &[(NSI, "enabled")], &[(INJ, "False")], &[], D, D, NO),
    ("28", "apps", &[], &[(INJ, "yes")], &[], NO, NO, NO),
    // alwaysInjectSelector (force=yes) wins over policy: disabled, but cannot pass stage A.
    ("always", "apps", &[(NSI, "enabled")], &[("force", "yes")], &[], D, D, D),
    ("always-unlabelled", "apps", &[], &[("force", "yes")], &[], NO, D, NO),
    // Ignored namespaces: excluded by `auto.` and by stage B.
    ("kube-system", "kube-system", &[], &[], &[], NO, NO, NO),
    ("kube-system-enabled", "kube-system", &[(NSI, "enabled")], &[], &[], NO, NO, NO),
    ("local-path-storage", "local-path-storage", &[], &[], &[], NO, NO, NO),
    ("kube-node-lease-opt-in", "kube-node-lease", &[], &[(INJ, "true")], &[], NO, NO, NO),
    ("istio-system-not-ignored", "istio-system", &[(NSI, "enabled")], &[], &[], D, D, NO),
];

#[test]
fn truth_table_of_spec_2_3_1() {
    let mut failures = Vec::new();
    for &(row, ns, ns_labels, pod_labels, annotations, as_table, by_default, disabled) in ROWS {
        for (variant, expected) in [
            (Variant::AsTable, as_table),
            (Variant::NamespacesByDefault, by_default),
            (Variant::PolicyDisabled, disabled),
        ] {
            let got = evaluate(&installs(variant, true), ns, ns_labels, pod_labels, annotations);
            if got != expected {
                let name = match variant {
                    Variant::AsTable => "as table",
                    Variant::NamespacesByDefault => "enableNamespacesByDefault",
                    Variant::PolicyDisabled => "policy disabled",
                };
                failures.push(format!("row {row} ({name}): expected {expected:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn row_21_without_a_default_revision_is_not_injected() {
    let only_canary = installs(Variant::AsTable, false);
    assert_eq!(evaluate(&only_canary, "apps", &[(NSI, "enabled"), (REV, "canary")], &[], &[]), NO);
    assert_eq!(evaluate(&only_canary, "apps", &[(REV, "canary")], &[], &[]), C);
    assert_eq!(evaluate(&only_canary, "apps", &[], &[(INJ, "true")], &[]), NO);
}
