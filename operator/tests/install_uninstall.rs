//! Uninstall against the mocked API: refuses while proxies use the revision, removes only that
//! revision's non-Base objects, and `--purge` takes everything including CRDs and tags.

#![allow(clippy::unwrap_used)]

mod install_support;

use std::time::Duration;

use install_support::{Call, FakeApi, manifest};
use pretty_assertions::assert_eq;
use rudder_operator::install::uninstall::{self, Scope};
use rudder_operator::install::{InstallError, InstallOptions, Progress, install};
use serde_json::{Value, json};

fn pod(ns: &str, name: &str, labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations}})
}

async fn default_and_canary() -> (kube::Client, FakeApi) {
    let (client, fake) = FakeApi::start();
    let opts = InstallOptions { poll_interval: Duration::from_millis(5), ..InstallOptions::default() };
    install(&client, &manifest(None), &opts, &mut Progress::quiet()).await.unwrap();
    install(&client, &manifest(Some("canary")), &opts, &mut Progress::quiet()).await.unwrap();
    (client, fake)
}

#[tokio::test]
async fn refuses_while_proxies_use_the_revision() {
    let (client, fake) = default_and_canary().await;
    let injected = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    fake.seed("pods", Some("shop"), pod("shop", "web-1", json!({"app": "web"}), injected.clone()));
    fake.seed("pods", Some("shop"), pod("shop", "cart-1", json!({"istio.io/rev": "canary"}), injected));
    fake.seed(
        "pods",
        Some("istio-system"),
        pod("istio-system", "istiod-1", json!({"app": "istiod", "istio.io/rev": "default"}), json!({})),
    );
    fake.seed("pods", Some("plain"), pod("plain", "db-0", json!({"app": "db"}), json!({})));
    // A proxy of a workload the removal itself deletes (here the Deployment istiod, as a
    // gateway would be) does not block it.
    let mut removed_with_it = pod(
        "istio-system",
        "istiod-abc12-x",
        json!({"istio.io/rev": "default", "pod-template-hash": "abc12"}),
        json!({}),
    );
    removed_with_it["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "istiod-abc12", "uid": "1", "controller": true}]);
    removed_with_it["spec"] = json!({"containers": [{"name": "istio-proxy"}]});
    fake.seed("pods", Some("istio-system"), removed_with_it);
    // A pod with the revision label but no proxy (the operator's own) is no proxy.
    let mut operator = pod("istio-operator", "istio-operator-1", json!({"istio.io/rev": "default"}), json!({}));
    operator["spec"] = json!({"containers": [{"name": "istio-operator"}]});
    fake.seed("pods", Some("istio-operator"), operator);
    let err = uninstall::plan(&client, &Scope::Revision("default".into()), false).await.unwrap_err();
    match err {
        InstallError::ConnectedProxies { revision, proxies } => {
            assert_eq!(revision, "default");
            assert_eq!(proxies, ["shop/web-1"]);
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(fake.calls().iter().all(|c| c.method != "DELETE"));
}

#[tokio::test]
async fn removes_the_revision_but_not_base_crds_or_other_revisions() {
    let (client, fake) = default_and_canary().await;
    fake.clear_calls();
    let keys = uninstall::plan(&client, &Scope::Revision("default".into()), false).await.unwrap();
    let names: Vec<String> = keys.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            // a tag left pointing at a removed istiod would fail every pod creation
            "MutatingWebhookConfiguration istio-revision-tag-default",
            "MutatingWebhookConfiguration istio-sidecar-injector",
            "ValidatingWebhookConfiguration istio-validator-istio-system",
            "ValidatingWebhookConfiguration istiod-default-validator",
            "ClusterRole istiod-clusterrole-istio-system",
            "ConfigMap istio-system/istio",
            "Deployment istio-system/istiod",
            "Service istio-system/istiod",
        ]
    );
    let list = fake.calls().iter().find(|c| c.path.ends_with("/configmaps")).cloned().unwrap();
    assert_eq!(
        list.label_selector.as_deref(),
        Some("istio.io/rev=default,operator.istio.io/component in (Pilot,Cni,Ztunnel,IngressGateways,EgressGateways)")
    );
    uninstall::execute(&client, &keys, &mut Progress::quiet()).await.unwrap();
    assert!(fake.get("deployments", Some("istio-system"), "istiod").is_none());
    assert!(fake.get("deployments", Some("istio-system"), "istiod-canary").is_some());
    assert!(fake.get("serviceaccounts", Some("istio-system"), "istio-reader-service-account").is_some());
    assert!(fake.get("customresourcedefinitions", None, "gateways.networking.istio.io").is_some());
    assert!(fake.get("mutatingwebhookconfigurations", None, "istio-revision-tag-default").is_none());
}

#[tokio::test]
async fn force_ignores_connected_proxies_and_purge_takes_everything() {
    let (client, fake) = default_and_canary().await;
    let injected = json!({"sidecar.istio.io/status": "{}"});
    fake.seed("pods", Some("shop"), pod("shop", "web-1", json!({"istio.io/rev": "canary"}), injected));
    let refused = uninstall::plan(&client, &Scope::Purge, false).await;
    assert!(matches!(refused, Err(InstallError::ConnectedProxies { .. })));
    let keys = uninstall::plan(&client, &Scope::Purge, true).await.unwrap();
    fake.clear_calls();
    uninstall::execute(&client, &keys, &mut Progress::quiet()).await.unwrap();
    let deletes: Vec<String> = fake.calls().iter().filter(|c| c.method == "DELETE").map(Call::line).collect();
    assert_eq!(
        deletes.last().map(String::as_str),
        Some("DELETE /apis/apiextensions.k8s.io/v1/customresourcedefinitions/gateways.networking.istio.io")
    );
    assert!(deletes[0].contains("webhookconfigurations"), "webhooks go first: {deletes:?}");
    assert!(fake.names("mutatingwebhookconfigurations").is_empty());
    assert!(fake.names("deployments").is_empty());
    assert_eq!(fake.names("namespaces"), ["istio-system"], "namespaces are left alone");
}
