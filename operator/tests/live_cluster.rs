//! Canary upgrade against a real API server: install `default`, install `canary`, point the
//! `default` tag at canary, uninstall the old revision. Runs on the test cluster
//! (`rudder_e2e::cluster`: `RUDDER_K8S_LOCAL` or `KUBECONFIG`); otherwise prints why it skipped.
//! The istiod stand-in runs the sample httpbin image the harness loads. Everything lives in namespace
//! `rudder-live` and cluster-scoped names carry that suffix, so a real Istio is left alone.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject};
use kube::{Api, Client};

use rudder_operator::install::uninstall::{self, Scope};
use rudder_operator::install::{InstallOptions, Progress, install};
use rudder_operator::manifest::{Component, Manifest, RenderedObject};
use rudder_operator::tag::{self, SetOptions};
use serde_json::{Value, json};

const NS: &str = "rudder-live";

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

fn manifest(revision: Option<&str>) -> Manifest {
    let rev = revision.unwrap_or("default");
    let suffix = revision.map(|r| format!("-{r}")).unwrap_or_default();
    let istiod = format!("istiod{suffix}");
    let pilot = |v: Value| RenderedObject { component: Component::Pilot, object: obj(v) };
    let base = |v: Value| RenderedObject { component: Component::Base, object: obj(v) };
    let hook = |name: &str, ns_sel: Value, obj_sel: Value| {
        json!({"name": name, "clientConfig": {"service": {"name": istiod, "namespace": NS, "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "sideEffects": "None", "failurePolicy": "Ignore", "admissionReviewVersions": ["v1"],
            "namespaceSelector": ns_sel, "objectSelector": obj_sel})
    };
    let rev_in = json!({"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": [rev]}]});
    let objects = vec![
        base(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
        base(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "istio-reader-service-account"}}),
        ),
        pilot(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("istio{suffix}")}, "data": {"mesh": "{}"}}),
        ),
        pilot(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": format!("istiod-clusterrole{suffix}-{NS}")}, "rules": []})),
        pilot(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": format!("istio-sidecar-injector{suffix}-{NS}"), "labels": {"app": "sidecar-injector", "istio.io/rev": rev}},
            "webhooks": [hook("rev.namespace.sidecar-injector.istio.io", rev_in.clone(), json!({})),
                         hook("rev.object.sidecar-injector.istio.io", json!({}), rev_in)]})),
        pilot(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": istiod},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": istiod}},
                "template": {"metadata": {"labels": {"app": istiod}},
                    "spec": {"containers": [{"name": "discovery", "image": "docker.io/mccutchen/go-httpbin:v2.15.0"}]}}}})),
        pilot(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": istiod},
            "spec": {"selector": {"app": istiod}, "ports": [{"name": "https-webhook", "port": 443, "targetPort": 15017}]}})),
    ];
    Manifest { revision: revision.map(str::to_owned), namespace: NS.into(), objects, notes: vec![] }
}

async fn deployment_exists(client: &Client, name: &str) -> bool {
    Api::<Deployment>::namespaced(client.clone(), NS).get_opt(name).await.unwrap().is_some()
}

async fn clean_up(client: &Client) {
    for rev in ["default", "canary"] {
        if let Ok(keys) = uninstall::plan(client, &Scope::Revision(rev.into()), true).await {
            let keys: Vec<_> =
                keys.into_iter().filter(|k| k.name.contains(NS) || k.namespace.as_deref() == Some(NS)).collect();
            let _ = uninstall::execute(client, &keys, &mut Progress::quiet()).await;
        }
    }
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = mwcs.delete(&format!("istio-revision-tag-default-{NS}"), &DeleteParams::default()).await;
    let _ = Api::<Namespace>::all(client.clone()).delete(NS, &DeleteParams::default()).await;
}

#[tokio::test]
async fn canary_upgrade_with_default_tag() {
    let Some(cluster) = rudder_e2e::cluster::shared(env!("CARGO_BIN_EXE_rudder")) else { return };
    let client = cluster.client().await.expect("a client for the test cluster");
    let opts = InstallOptions { readiness_timeout: Duration::from_secs(180), ..InstallOptions::default() };
    let mut progress = Progress::to_writer(Box::new(std::io::stderr()), false);

    install(&client, &manifest(None), &opts, &mut progress).await.unwrap();
    assert!(deployment_exists(&client, "istiod").await);
    install(&client, &manifest(Some("canary")), &opts, &mut progress).await.unwrap();
    assert!(deployment_exists(&client, "istiod").await, "installing canary must not prune default");
    assert!(deployment_exists(&client, "istiod-canary").await);

    let repoint = SetOptions { overwrite: true, webhook_name: Some(format!("istio-sidecar-injector-canary-{NS}")) };
    let tagged = tag::set(&client, "default", "canary", &repoint).await.unwrap();
    assert_eq!(tagged.metadata.labels.unwrap()["istio.io/rev"], "canary");

    let keys = uninstall::plan(&client, &Scope::Revision("default".into()), true).await.unwrap();
    let keys: Vec<_> = keys.into_iter().filter(|k| k.name.contains(NS) || k.namespace.as_deref() == Some(NS)).collect();
    uninstall::execute(&client, &keys, &mut progress).await.unwrap();
    assert!(!deployment_exists(&client, "istiod").await);
    assert!(deployment_exists(&client, "istiod-canary").await);
    let tags = tag::list_tags(&client).await.unwrap();
    assert!(tags.iter().any(|t| t.tag == "default" && t.revision == "canary"), "{tags:?}");

    clean_up(&client).await;
}
