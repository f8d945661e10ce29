//! The injection truth table of spec §2.3.1, row for row: stage A (the webhook selectors of
//! §2.1, evaluated by `decision::matching_webhooks`) and stage B (`decision::injection_required`
//! with the matched revision's injector config), with a default install and a `canary` revision.
//! Each row is checked three ways: as the table states it, with `enableNamespacesByDefault`, and
//! with `policy: disabled` in both injector configs.
//!
//! The MutatingWebhookConfigurations are the ones the operator renders (`render`), so this test
//! pins the rendered selectors and the injector's decision together.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rudder_config::injector::{InjectionPolicy, InjectorConfig};
use rudder_config::labels::{DEFAULT_REVISION, ISTIO_INJECTION, NAMESPACE_NAME, REVISION, SIDECAR_INJECT};
use rudder_operator::render::{RenderRequest, render};
use rudder_webhook::decision::{injection_required, matching_webhooks};

/// The injector webhooks the operator renders for `revision` (`None` = the default install).
fn rendered_webhooks(revision: Option<&str>, enable_namespaces_by_default: bool) -> Vec<MutatingWebhook> {
    let set = if enable_namespaces_by_default {
        vec!["values.sidecarInjectorWebhook.enableNamespacesByDefault=true".to_owned()]
    } else {
        Vec::new()
    };
    let manifest = render(&RenderRequest { set, revision: revision.map(str::to_owned), ..RenderRequest::default() })
        .expect("renders");
    let object = manifest
        .objects
        .into_iter()
        .find(|o| o.object.types.as_ref().is_some_and(|t| t.kind == "MutatingWebhookConfiguration"))
        .expect("an injector webhook configuration");
    let mwc: MutatingWebhookConfiguration =
        serde_json::from_value(serde_json::to_value(&object.object).expect("json")).expect("typed");
    mwc.webhooks.unwrap_or_default()
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
    let by_default = variant == Variant::NamespacesByDefault;
    let mut all = vec![Install {
        revision: "canary",
        webhooks: rendered_webhooks(Some("canary"), by_default),
        config: config.clone(),
    }];
    if with_default {
        let webhooks = rendered_webhooks(None, by_default);
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
