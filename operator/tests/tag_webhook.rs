//! Table tests of the pure tag transforms on hand-built webhook configurations.

#![allow(clippy::unwrap_used)]

mod install_support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use pretty_assertions::assert_eq;
use rudder_operator::tag::webhook::{deactivate, is_deactivated, tag_webhook, tag_webhook_name};
use serde_json::{Value, json};

fn typed(v: Value) -> MutatingWebhookConfiguration {
    serde_json::from_value(v).unwrap()
}

/// Webhook name, namespace selector, object selector.
type Hook = (String, Value, Value);

fn sel(v: &MutatingWebhookConfiguration) -> Vec<Hook> {
    v.webhooks
        .iter()
        .flatten()
        .map(|w| {
            let ns = serde_json::to_value(&w.namespace_selector).unwrap();
            let obj = serde_json::to_value(&w.object_selector).unwrap();
            (w.name.clone(), ns, obj)
        })
        .collect()
}

fn expr(key: &str, op: &str, values: &[&str]) -> Value {
    match values {
        [] => json!({"key": key, "operator": op}),
        v => json!({"key": key, "operator": op, "values": v}),
    }
}

fn rev_webhooks(tag: &str) -> Vec<Hook> {
    let not_false = expr("sidecar.istio.io/inject", "NotIn", &["false"]);
    vec![
        (
            "rev.namespace.sidecar-injector.istio.io".into(),
            json!({"matchExpressions": [expr("istio.io/rev", "In", &[tag]), expr("istio-injection", "DoesNotExist", &[])]}),
            json!({"matchExpressions": [not_false.clone()]}),
        ),
        (
            "rev.object.sidecar-injector.istio.io".into(),
            json!({"matchExpressions": [expr("istio.io/rev", "DoesNotExist", &[]), expr("istio-injection", "DoesNotExist", &[])]}),
            json!({"matchExpressions": [not_false, expr("istio.io/rev", "In", &[tag])]}),
        ),
    ]
}

#[test]
fn tag_webhooks_select_the_tag_and_call_the_revision() {
    // (source revision, tag, expected webhook names and selectors)
    let cases: Vec<(&str, &str, Vec<Hook>)> = vec![
        ("canary", "prod", rev_webhooks("prod")),
        ("1-24-0", "stable", rev_webhooks("stable")),
        ("canary", "default", {
            let mut all = rev_webhooks("default");
            all.push((
                "namespace.sidecar-injector.istio.io".into(),
                json!({"matchExpressions": [expr("istio-injection", "In", &["enabled"])]}),
                json!({"matchExpressions": [expr("sidecar.istio.io/inject", "NotIn", &["false"])]}),
            ));
            all.push((
                "object.sidecar-injector.istio.io".into(),
                json!({"matchExpressions": [expr("istio-injection", "DoesNotExist", &[]), expr("istio.io/rev", "DoesNotExist", &[])]}),
                json!({"matchExpressions": [expr("sidecar.istio.io/inject", "In", &["true"]), expr("istio.io/rev", "DoesNotExist", &[])]}),
            ));
            all
        }),
    ];
    for (revision, tag, want) in cases {
        let source = typed(install_support::injector(revision));
        let got = tag_webhook(&source, tag, revision);
        assert_eq!(sel(&got), want, "{tag} -> {revision}");
        let labels = got.metadata.labels.clone().unwrap();
        assert_eq!(got.metadata.name.as_deref(), Some(format!("istio-revision-tag-{tag}").as_str()));
        assert_eq!(labels["istio.io/tag"], tag);
        assert_eq!(labels["istio.io/rev"], revision);
        assert_eq!(labels["app"], "sidecar-injector");
        for w in got.webhooks.iter().flatten() {
            let svc = w.client_config.service.as_ref().unwrap();
            assert_eq!(
                (svc.name.as_str(), svc.path.as_deref()),
                (format!("istiod-{revision}").as_str(), Some("/inject"))
            );
            assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(w.side_effects, "None");
        }
    }
}

#[test]
fn tag_from_unrevisioned_injector_uses_its_rev_webhooks_as_template() {
    let source = typed(install_support::injector("default"));
    let got = tag_webhook(&source, "prod", "default");
    assert_eq!(sel(&got), rev_webhooks("prod"));
    assert_eq!(got.webhooks.unwrap()[0].client_config.service.as_ref().unwrap().name, "istiod");
}

#[test]
fn source_metadata_does_not_leak_into_the_tag() {
    let mut v = install_support::injector("canary");
    v["metadata"]["resourceVersion"] = json!("42");
    v["metadata"]["uid"] = json!("abc");
    v["metadata"]["labels"]["operator.istio.io/component"] = json!("Pilot");
    let got = tag_webhook(&typed(v), "prod", "canary");
    assert_eq!(got.metadata.resource_version, None);
    assert_eq!(got.metadata.uid, None);
    assert!(!got.metadata.labels.unwrap().contains_key("operator.istio.io/component"));
}

#[test]
fn names_carry_the_namespace_outside_istio_system() {
    assert_eq!(tag_webhook_name("prod", "istio-system"), "istio-revision-tag-prod");
    assert_eq!(tag_webhook_name("prod", "mesh"), "istio-revision-tag-prod-mesh");
    let mut v = install_support::injector("canary");
    for w in v["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"]["service"]["namespace"] = json!("mesh");
    }
    assert_eq!(tag_webhook(&typed(v), "prod", "canary").metadata.name.as_deref(), Some("istio-revision-tag-prod-mesh"));
}

#[test]
fn an_empty_source_gives_an_empty_tag() {
    let source = typed(
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "x"}}),
    );
    assert_eq!(tag_webhook(&source, "prod", "canary").webhooks, None);
}

#[test]
fn deactivation_sets_never_match_everywhere_and_keeps_the_rest() {
    let source = typed(install_support::injector("default"));
    assert!(!is_deactivated(&source));
    let off = deactivate(&source);
    assert!(is_deactivated(&off));
    let never = json!({"matchLabels": {"istio.io/deactivated": "never-match"}});
    for (name, ns, obj) in sel(&off) {
        assert_eq!((&ns, &obj), (&never, &never), "{name}");
    }
    assert_eq!(off.webhooks.as_ref().unwrap().len(), 4);
    assert_eq!(off.metadata, source.metadata);
}
