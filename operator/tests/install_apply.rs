//! Install against the mocked API: apply order and field manager, prune, idempotent re-install,
//! the default revision tag, readiness timeout and dry run.

#![allow(clippy::unwrap_used)]

mod install_support;

use std::time::Duration;

use install_support::{Call, FakeApi, manifest, owned_labels};
use pretty_assertions::assert_eq;
use rudder_operator::install::{InstallError, InstallOptions, Progress, install};
use serde_json::json;

fn fast() -> InstallOptions {
    InstallOptions { poll_interval: Duration::from_millis(5), ..InstallOptions::default() }
}

fn applies(calls: &[Call]) -> Vec<String> {
    calls.iter().filter(|c| c.is_apply()).map(Call::line).collect()
}

#[tokio::test]
async fn applies_namespaces_then_crds_then_components_with_rudder_field_manager_and_force() {
    let (client, fake) = FakeApi::start();
    install(&client, &manifest(None), &fast(), &mut Progress::quiet()).await.unwrap();
    let calls = fake.calls();
    for c in calls.iter().filter(|c| c.is_apply()) {
        assert_eq!((c.field_manager.as_deref(), c.force), (Some("rudder"), true), "{}", c.line());
    }
    assert_eq!(
        applies(&calls),
        [
            "PATCH /api/v1/namespaces/istio-system",
            "PATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions/gateways.networking.istio.io",
            "PATCH /api/v1/namespaces/istio-system/serviceaccounts/istio-reader-service-account",
            "PATCH /apis/apps/v1/namespaces/istio-system/deployments/istiod",
            "PATCH /api/v1/namespaces/istio-system/configmaps/istio",
            "PATCH /apis/rbac.authorization.k8s.io/v1/clusterroles/istiod-clusterrole-istio-system",
            "PATCH /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector",
            "PATCH /apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istio-validator-istio-system",
            "PATCH /api/v1/namespaces/istio-system/services/istiod",
            // the default tag, after prune
            "PATCH /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-revision-tag-default",
            "PATCH /apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istiod-default-validator",
        ]
    );
    let first = &calls[0];
    assert_eq!(first.line(), "GET /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations");
    assert_eq!(first.label_selector.as_deref(), Some("app=sidecar-injector,istio.io/tag=default"));
    let cm = fake.get("configmaps", Some("istio-system"), "istio").unwrap();
    assert_eq!(cm["metadata"]["labels"]["operator.istio.io/component"], "Pilot");
    assert_eq!(cm["metadata"]["labels"]["istio.io/rev"], "default");
}

#[tokio::test]
async fn prune_deletes_only_unrendered_owned_objects() {
    let (client, fake) = FakeApi::start();
    let cm = |name: &str, labels: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "istio-system", "labels": labels}});
    let mut old_version = owned_labels("default", "Pilot");
    old_version["operator.istio.io/version"] = json!("1.20.0");
    fake.seed("configmaps", Some("istio-system"), cm("stale", owned_labels("default", "Pilot")));
    fake.seed("configmaps", Some("istio-system"), cm("old-version", old_version));
    fake.seed("configmaps", Some("istio-system"), cm("canary-owned", owned_labels("canary", "Pilot")));
    fake.seed("configmaps", Some("istio-system"), cm("someone-elses", json!({"app": "other"})));
    let mut keep = owned_labels("default", "Pilot");
    keep["install.operator.istio.io/owning-resource-not-pruned"] = json!("true");
    fake.seed("configmaps", Some("istio-system"), cm("kept", keep));
    fake.seed(
        "customresourcedefinitions",
        None,
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "old.networking.istio.io", "labels": owned_labels("default", "Base")}}),
    );
    fake.seed(
        "services",
        Some("istio-system"),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-egressgateway", "namespace": "istio-system", "labels": owned_labels("default", "EgressGateways")}}),
    );
    let report = install(&client, &manifest(None), &fast(), &mut Progress::quiet()).await.unwrap();
    let deletes: Vec<String> = fake.calls().iter().filter(|c| c.method == "DELETE").map(Call::line).collect();
    assert_eq!(
        deletes,
        [
            "DELETE /api/v1/namespaces/istio-system/configmaps/old-version",
            "DELETE /api/v1/namespaces/istio-system/configmaps/stale",
            "DELETE /api/v1/namespaces/istio-system/services/istio-egressgateway",
        ]
    );
    assert_eq!(report.pruned.len(), 3);
    assert!(fake.get("customresourcedefinitions", None, "old.networking.istio.io").is_some());
    assert_eq!(
        fake.names("configmaps"),
        ["istio-system/canary-owned", "istio-system/istio", "istio-system/kept", "istio-system/someone-elses"]
    );
    let never_crds = fake.calls().iter().all(|c| !(c.is_list() && c.path.contains("customresourcedefinitions")));
    assert!(never_crds, "prune must not even list CRDs");
}

#[tokio::test]
async fn reinstall_with_nothing_changed_only_applies_and_lists() {
    let (client, fake) = FakeApi::start();
    let m = manifest(None);
    install(&client, &m, &fast(), &mut Progress::quiet()).await.unwrap();
    fake.clear_calls();
    let report = install(&client, &m, &fast(), &mut Progress::quiet()).await.unwrap();
    let calls = fake.calls();
    let odd: Vec<String> = calls.iter().filter(|c| !c.is_apply() && !c.is_list()).map(Call::line).collect();
    assert_eq!(odd, Vec::<String>::new());
    assert!(report.pruned.is_empty());
    let applies = calls.iter().filter(|c| c.is_apply()).count();
    let lists = calls.iter().filter(|c| c.is_list()).count();
    // 9 rendered objects + tag webhook + default validator; 1 tag check + 14 prune kinds + 1 readiness.
    assert_eq!((applies, lists, calls.len()), (11, 16, 27));
}

#[tokio::test]
async fn unrevisioned_install_switches_off_the_legacy_injector_before_applying_it() {
    let (client, fake) = FakeApi::start();
    install(&client, &manifest(None), &fast(), &mut Progress::quiet()).await.unwrap();
    let legacy = fake.get("mutatingwebhookconfigurations", None, "istio-sidecar-injector").unwrap();
    for w in legacy["webhooks"].as_array().unwrap() {
        assert_eq!(w["namespaceSelector"], json!({"matchLabels": {"istio.io/deactivated": "never-match"}}));
        assert_eq!(w["objectSelector"], json!({"matchLabels": {"istio.io/deactivated": "never-match"}}));
    }
    let tag = fake.get("mutatingwebhookconfigurations", None, "istio-revision-tag-default").unwrap();
    let labels = &tag["metadata"]["labels"];
    assert_eq!(labels["istio.io/tag"], "default");
    assert_eq!(labels["istio.io/rev"], "default");
    assert_eq!(labels["install.operator.istio.io/owning-resource-not-pruned"], "true");
    assert_eq!(tag["webhooks"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn canary_after_default_keeps_the_default_tag_and_first_canary_gets_it() {
    let (client, fake) = FakeApi::start();
    install(&client, &manifest(None), &fast(), &mut Progress::quiet()).await.unwrap();
    fake.clear_calls();
    let report = install(&client, &manifest(Some("canary")), &fast(), &mut Progress::quiet()).await.unwrap();
    assert!(!report.default_tag);
    assert!(applies(&fake.calls()).iter().all(|c| !c.contains("istio-revision-tag-default")));
    let tag = fake.get("mutatingwebhookconfigurations", None, "istio-revision-tag-default").unwrap();
    assert_eq!(tag["metadata"]["labels"]["istio.io/rev"], "default");
    assert!(fake.get("deployments", Some("istio-system"), "istiod").is_some(), "canary must not prune default");

    let (client, fake) = FakeApi::start();
    let report = install(&client, &manifest(Some("canary")), &fast(), &mut Progress::quiet()).await.unwrap();
    assert!(report.default_tag);
    let tag = fake.get("mutatingwebhookconfigurations", None, "istio-revision-tag-default").unwrap();
    assert_eq!(tag["metadata"]["labels"]["istio.io/rev"], "canary");
    assert_eq!(tag["webhooks"][0]["clientConfig"]["service"]["name"], "istiod-canary");
}

#[tokio::test]
async fn readiness_times_out_naming_the_deployment() {
    let (client, fake) = FakeApi::start();
    fake.unready();
    let opts = InstallOptions { readiness_timeout: Duration::from_millis(30), ..fast() };
    let err = install(&client, &manifest(None), &opts, &mut Progress::quiet()).await.unwrap_err();
    assert!(
        matches!(&err, InstallError::Timeout { pending, .. } if pending == &["Deployment istio-system/istiod (no status yet)"]),
        "{err}"
    );
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let (client, fake) = FakeApi::start();
    let opts = InstallOptions { dry_run: true, ..fast() };
    let report = install(&client, &manifest(None), &opts, &mut Progress::quiet()).await.unwrap();
    assert_eq!(report.applied.len(), 11);
    assert!(fake.calls().iter().all(Call::is_list));
}
