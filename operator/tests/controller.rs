//! The IstioOperator controller against the in-memory API: create, no-op (reads only), spec
//! change, prune, owned object deleted or edited, component error with retry, invalid spec,
//! revision filter, ignoreReconcile, finalizer add and delete (with ACTION_REQUIRED while proxies
//! still use a revision), webhook fields discovery owns, and gateways shared by two CRs.

#![allow(clippy::unwrap_used)]

mod install_support;

use std::sync::Arc;

use install_support::{Call, FakeApi, owned_labels};
use kube::Client;
use kube::runtime::controller::Action;
use pretty_assertions::assert_eq;
use rudder_config::operator::{InstallState, IstioOperator};
use rudder_operator::controller::{Context, Error, ErrorClass, FINALIZER, error_policy, reconcile};
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "istio-system";

fn cr(name: &str, generation: i64, spec: Value) -> Value {
    json!({
        "apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
        "metadata": {"name": name, "namespace": NS, "generation": generation, "uid": format!("uid-{name}")},
        "spec": spec,
    })
}

fn stored(fake: &FakeApi, name: &str) -> Value {
    fake.get("istiooperators", Some(NS), name).unwrap()
}

async fn reconcile_stored(fake: &FakeApi, ctx: &Arc<Context>, name: &str) -> Result<Action, Error> {
    let iop: IstioOperator = serde_json::from_value(stored(fake, name)).unwrap();
    reconcile(Arc::new(iop), ctx.clone()).await
}

fn state(fake: &FakeApi, name: &str) -> Option<InstallState> {
    let iop: IstioOperator = serde_json::from_value(stored(fake, name)).unwrap();
    iop.status.and_then(|s| s.status)
}

fn edit(fake: &FakeApi, name: &str, change: impl FnOnce(&mut Value)) {
    let mut v = stored(fake, name);
    change(&mut v);
    fake.seed("istiooperators", Some(NS), v);
}

/// A fake with the CR stored and reconciled twice (finalizer, then install).
async fn installed(name: &str, spec: Value, revision: Option<&str>) -> (Client, FakeApi, Arc<Context>) {
    let (client, fake) = FakeApi::start();
    fake.seed("istiooperators", Some(NS), cr(name, 1, spec));
    let ctx = Context::new(client.clone(), revision.map(str::to_owned));
    assert_eq!(reconcile_stored(&fake, &ctx, name).await.unwrap(), Action::await_change());
    reconcile_stored(&fake, &ctx, name).await.unwrap();
    (client, fake, ctx)
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls.iter().filter(|c| c.is_write()).map(Call::line).collect()
}

#[tokio::test]
async fn create_adds_the_finalizer_then_installs_and_reports_healthy() {
    let (_client, fake, _ctx) = installed("main", json!({}), None).await;
    let iop = stored(&fake, "main");
    assert_eq!(iop["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(state(&fake, "main"), Some(InstallState::Healthy));
    let status = &iop["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["componentStatus"]["Pilot"]["status"], "HEALTHY");
    assert_eq!(status["componentStatus"]["Base"]["status"], "HEALTHY");
    let conditions: Vec<(String, String)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap().to_owned(), c["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(conditions, [("Reconciled".to_owned(), "True".to_owned()), ("Ready".to_owned(), "True".to_owned())]);
    assert!(fake.names("deployments").contains(&"istio-system/istiod".to_owned()));
    let ssa: Vec<Call> = fake.calls().into_iter().filter(Call::is_ssa).collect();
    assert!(!ssa.is_empty());
    assert!(ssa.iter().all(|c| c.field_manager.as_deref() == Some("rudder") && c.force));
    let status_writes = fake.calls().iter().filter(|c| c.path.ends_with("/status")).count();
    assert_eq!(status_writes, 2, "RECONCILING, then HEALTHY");
}

#[tokio::test]
async fn a_no_op_reconcile_of_a_demo_cr_only_reads() {
    let (_client, fake, ctx) = installed("demo", json!({"profile": "demo"}), None).await;
    assert!(fake.names("deployments").contains(&"istio-system/istio-egressgateway".to_owned()));
    fake.clear_calls();
    reconcile_stored(&fake, &ctx, "demo").await.unwrap();
    let calls = fake.calls();
    assert_eq!(writes(&calls), Vec::<String>::new(), "no apply, status, finalizer or delete writes");
    assert!(calls.iter().any(Call::is_list));
    assert_eq!(state(&fake, "demo"), Some(InstallState::Healthy));
}

#[tokio::test]
async fn an_object_changed_since_the_last_apply_is_applied_again_and_only_it() {
    let (_client, fake, ctx) = installed("main", json!({}), None).await;
    let mut cm = fake.get("configmaps", Some(NS), "istio").unwrap();
    cm["data"]["mesh"] = json!("edited: true");
    cm["metadata"]["resourceVersion"] = json!("edited");
    fake.seed("configmaps", Some(NS), cm);
    fake.clear_calls();
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert_eq!(writes(&fake.calls()), ["PATCH /api/v1/namespaces/istio-system/configmaps/istio"]);
    let mesh = fake.get("configmaps", Some(NS), "istio").unwrap();
    assert_ne!(mesh["data"]["mesh"], "edited: true");
}

const VWC: &str = "validatingwebhookconfigurations";
const MWC: &str = "mutatingwebhookconfigurations";

/// What discovery's writes leave on a webhook configuration: `failurePolicy` and `caBundle` of
/// every webhook set to its values and owned by its field manager (an Update, so a new version).
fn discovery_sets(object: &mut Value, policy: &str, ca: &str) {
    let mut owned = serde_json::Map::new();
    for hook in object["webhooks"].as_array_mut().unwrap() {
        hook["failurePolicy"] = json!(policy);
        hook["clientConfig"]["caBundle"] = json!(ca);
        let key = format!("k:{}", json!({"name": hook["name"]}));
        owned.insert(key, json!({"f:failurePolicy": {}, "f:clientConfig": {"f:caBundle": {}}}));
    }
    object["metadata"]["managedFields"] = json!([{
        "manager": "pilot-discovery", "operation": "Update", "apiVersion": "admissionregistration.k8s.io/v1",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:webhooks": owned},
    }]);
    object["metadata"]["resourceVersion"] = json!("set-by-discovery");
}

fn policies(object: &Value) -> Vec<String> {
    object["webhooks"].as_array().unwrap().iter().map(|h| h["failurePolicy"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn webhook_fields_discovery_owns_are_not_reset_by_a_reconcile() {
    let (_client, fake, ctx) = installed("main", json!({}), None).await;
    // A fresh install gets the rendered values.
    let vwc = fake.get(VWC, None, "istio-validator-istio-system").unwrap();
    assert_eq!(policies(&vwc), ["Ignore"]);
    assert_eq!(vwc["webhooks"][0]["clientConfig"].get("caBundle"), None);

    let mut vwc = vwc;
    discovery_sets(&mut vwc, "Fail", "Q0E=");
    fake.seed(VWC, None, vwc);
    let mut mwc = fake.get(MWC, None, "istio-revision-tag-default").unwrap();
    discovery_sets(&mut mwc, "Fail", "Q0E=");
    fake.seed(MWC, None, mwc);

    // A spec change makes the reconcile apply everything again.
    edit(&fake, "main", |v| {
        v["spec"] = json!({"meshConfig": {"accessLogFile": "/dev/stdout"}});
        v["metadata"]["generation"] = json!(2);
    });
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    let applied = |name: &str| fake.calls().iter().any(|c| c.is_ssa() && c.path.ends_with(name));
    assert!(applied("/istio-validator-istio-system") && applied("/istio-revision-tag-default"));
    let vwc = fake.get(VWC, None, "istio-validator-istio-system").unwrap();
    assert_eq!(policies(&vwc), ["Fail"], "discovery's failurePolicy stays");
    assert_eq!(vwc["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=");
    assert_eq!(vwc["webhooks"][0]["clientConfig"]["service"]["name"], "istiod", "the rest is still ours");
    let mwc = fake.get(MWC, None, "istio-revision-tag-default").unwrap();
    assert!(mwc["webhooks"].as_array().unwrap().iter().all(|h| h["clientConfig"]["caBundle"] == "Q0E="));
    assert_eq!(state(&fake, "main"), Some(InstallState::Healthy));

    // And the next reconcile does not touch them at all.
    fake.clear_calls();
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert_eq!(writes(&fake.calls()), Vec::<String>::new());
}

/// `(owning-resource, rev)` of every stored object of the ingress gateway.
fn gateway_owners(fake: &FakeApi) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for plural in ["deployments", "services", "serviceaccounts", "roles", "rolebindings", "poddisruptionbudgets"] {
        for name in fake.names(plural).into_iter().filter(|n| n.contains("ingressgateway")) {
            let (ns, name) = name.split_once('/').unwrap();
            let labels = fake.get(plural, Some(ns), name).unwrap()["metadata"]["labels"].clone();
            let label = |k: &str| labels[k].as_str().unwrap_or_default().to_owned();
            out.push((
                format!("{plural}/{name}"),
                label("install.operator.istio.io/owning-resource"),
                label("istio.io/rev"),
            ));
        }
    }
    out
}

fn all_owned_by(owners: &[(String, String, String)], cr: &str, rev: &str) -> bool {
    !owners.is_empty() && owners.iter().all(|(_, o, r)| o == cr && r == rev)
}

#[tokio::test]
async fn gateways_shared_by_default_and_canary_have_one_owner_and_outlive_the_canary() {
    let (client, fake) = FakeApi::start();
    let gateway = json!({"ingressGateways": [{"name": "istio-ingressgateway", "enabled": true}]});
    fake.seed("istiooperators", Some(NS), cr("main", 1, json!({"components": gateway})));
    fake.seed("istiooperators", Some(NS), cr("canary", 1, json!({"revision": "canary", "components": gateway})));
    let ctx = Context::new(client, None);
    // The canary comes first and creates the gateway: nobody else owns it yet.
    for _ in 0..2 {
        reconcile_stored(&fake, &ctx, "canary").await.unwrap();
    }
    assert!(all_owned_by(&gateway_owners(&fake), "canary", "canary"), "{:?}", gateway_owners(&fake));
    // The default CR takes it over; the canary, reconciled again, leaves it alone.
    for name in ["main", "main", "canary"] {
        reconcile_stored(&fake, &ctx, name).await.unwrap();
    }
    let owners = gateway_owners(&fake);
    assert!(all_owned_by(&owners, "main", "default"), "{owners:?}");
    assert!(owners.iter().any(|(o, _, _)| o == "deployments/istio-ingressgateway"));
    assert_eq!(state(&fake, "canary"), Some(InstallState::Healthy), "not waiting on a gateway it does not own");
    assert_eq!(state(&fake, "main"), Some(InstallState::Healthy));
    // Once settled, neither CR writes: no tug of war over the gateway.
    fake.clear_calls();
    for name in ["main", "canary", "main"] {
        reconcile_stored(&fake, &ctx, name).await.unwrap();
    }
    assert_eq!(writes(&fake.calls()), Vec::<String>::new());

    // The canary stops rendering the gateway: its prune leaves it.
    edit(&fake, "canary", |v| {
        v["spec"]["components"] = json!({"ingressGateways": [{"name": "istio-ingressgateway", "enabled": false}]});
        v["metadata"]["generation"] = json!(2);
    });
    reconcile_stored(&fake, &ctx, "canary").await.unwrap();
    assert_eq!(gateway_owners(&fake), owners);
    // The canary is deleted: its own objects go, the gateway stays with the default CR.
    mark_deleted(&fake, "canary");
    reconcile_stored(&fake, &ctx, "canary").await.unwrap();
    assert_eq!(stored(&fake, "canary")["metadata"]["finalizers"], json!([]));
    assert!(!fake.names("deployments").contains(&"istio-system/istiod-canary".to_owned()));
    assert_eq!(gateway_owners(&fake), owners);
    // And the default CR still has nothing to do.
    fake.clear_calls();
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert_eq!(writes(&fake.calls()), Vec::<String>::new());
}

#[tokio::test]
async fn a_spec_change_is_applied_and_observed() {
    let (_client, fake, ctx) = installed("main", json!({}), None).await;
    edit(&fake, "main", |v| {
        v["spec"] = json!({"meshConfig": {"accessLogFile": "/dev/stdout"}});
        v["metadata"]["generation"] = json!(2);
    });
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    let mesh = fake.get("configmaps", Some(NS), "istio").unwrap();
    assert!(mesh["data"]["mesh"].as_str().unwrap().contains("/dev/stdout"), "{mesh}");
    assert_eq!(stored(&fake, "main")["status"]["observedGeneration"], 2);
    assert_eq!(state(&fake, "main"), Some(InstallState::Healthy));
}

#[tokio::test]
async fn unrendered_owned_objects_are_pruned() {
    let (_client, fake, ctx) = installed("main", json!({}), None).await;
    assert!(fake.names("deployments").contains(&"istio-system/istio-ingressgateway".to_owned()));
    let mut labels = owned_labels("default", "Pilot");
    labels["install.operator.istio.io/owning-resource"] = json!("main");
    fake.seed(
        "configmaps",
        Some(NS),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "stale", "namespace": NS, "labels": labels}}),
    );
    edit(&fake, "main", |v| {
        v["spec"] = json!({"components": {"ingressGateways": [{"name": "istio-ingressgateway", "enabled": false}]}});
        v["metadata"]["generation"] = json!(2);
    });
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert!(fake.get("configmaps", Some(NS), "stale").is_none());
    assert!(!fake.names("deployments").contains(&"istio-system/istio-ingressgateway".to_owned()));
    assert!(fake.names("deployments").contains(&"istio-system/istiod".to_owned()));
}

#[tokio::test]
async fn an_invalid_spec_sets_error_and_waits_for_a_change() {
    let (client, fake) = FakeApi::start();
    let mut iop = cr("bad", 3, json!({"profile": "nope"}));
    iop["metadata"]["finalizers"] = json!([FINALIZER]);
    fake.seed("istiooperators", Some(NS), iop);
    let ctx = Context::new(client, None);
    assert_eq!(reconcile_stored(&fake, &ctx, "bad").await.unwrap(), Action::await_change());
    let status = &stored(&fake, "bad")["status"];
    assert_eq!(status["status"], "ERROR");
    assert!(status["message"].as_str().unwrap().contains("unknown profile"), "{status}");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
    assert!(fake.calls().iter().all(|c| !c.is_ssa()));
    fake.clear_calls();
    reconcile_stored(&fake, &ctx, "bad").await.unwrap();
    assert_eq!(writes(&fake.calls()), Vec::<String>::new(), "the same error is not written twice");
}

#[tokio::test]
async fn the_revision_filter_skips_other_revisions() {
    let (client, fake) = FakeApi::start();
    fake.seed("istiooperators", Some(NS), cr("main", 1, json!({})));
    fake.seed("istiooperators", Some(NS), cr("canary", 1, json!({"revision": "canary"})));
    let ctx = Context::new(client, Some("canary".into()));
    assert_eq!(reconcile_stored(&fake, &ctx, "main").await.unwrap(), Action::await_change());
    assert_eq!(fake.calls(), Vec::<Call>::new());
    reconcile_stored(&fake, &ctx, "canary").await.unwrap();
    assert_eq!(stored(&fake, "canary")["metadata"]["finalizers"], json!([FINALIZER]));
}

#[tokio::test]
async fn ignore_reconcile_pauses_a_cr() {
    let (client, fake) = FakeApi::start();
    let mut iop = cr("main", 1, json!({}));
    iop["metadata"]["annotations"] = json!({"install.istio.io/ignoreReconcile": "true"});
    fake.seed("istiooperators", Some(NS), iop);
    let ctx = Context::new(client, None);
    assert_eq!(reconcile_stored(&fake, &ctx, "main").await.unwrap(), Action::await_change());
    assert_eq!(fake.calls(), Vec::<Call>::new());
}

fn mark_deleted(fake: &FakeApi, name: &str) {
    edit(fake, name, |v| v["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z"));
}

#[tokio::test]
async fn deleting_the_default_cr_removes_its_objects_and_the_finalizer() {
    let (_client, fake, ctx) = installed("main", json!({}), None).await;
    assert!(!fake.names("customresourcedefinitions").is_empty());
    mark_deleted(&fake, "main");
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert_eq!(stored(&fake, "main")["metadata"]["finalizers"], json!([]));
    assert_eq!(fake.names("deployments"), Vec::<String>::new());
    assert_eq!(fake.names("customresourcedefinitions"), Vec::<String>::new());
}

#[tokio::test]
async fn a_revision_with_proxies_waits_with_action_required_and_keeps_base() {
    let (_client, fake, ctx) = installed("canary", json!({"revision": "canary"}), None).await;
    assert!(fake.names("deployments").contains(&"istio-system/istiod-canary".to_owned()));
    let crds = fake.names("customresourcedefinitions");
    assert!(!crds.is_empty());
    fake.seed(
        "pods",
        Some("app"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "app",
            "labels": {"istio.io/rev": "canary"}, "annotations": {"sidecar.istio.io/status": "{}"}}}),
    );
    mark_deleted(&fake, "canary");
    let err = reconcile_stored(&fake, &ctx, "canary").await.unwrap_err();
    assert!(matches!(err, Error::ProxiesConnected { .. }), "{err}");
    let iop = stored(&fake, "canary");
    assert_eq!(iop["status"]["status"], "ACTION_REQUIRED");
    assert!(iop["status"]["message"].as_str().unwrap().contains("app/web"));
    assert_eq!(iop["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(fake.names("deployments").contains(&"istio-system/istiod-canary".to_owned()));

    assert!(fake.get("pods", Some("app"), "web").is_some());
    edit_delete_pod(&fake);
    reconcile_stored(&fake, &ctx, "canary").await.unwrap();
    assert_eq!(stored(&fake, "canary")["metadata"]["finalizers"], json!([]));
    assert!(!fake.names("deployments").contains(&"istio-system/istiod-canary".to_owned()));
    assert_eq!(fake.names("customresourcedefinitions"), crds, "Base stays on a revision delete");
}

fn edit_delete_pod(fake: &FakeApi) {
    fake.remove("pods", Some("app"), "web");
}

#[tokio::test]
async fn a_deleted_or_edited_owned_object_is_put_back() {
    let (_client, fake, ctx) = installed("main", json!({}), None).await;
    let original = fake.get("deployments", Some(NS), "istiod").unwrap();
    fake.remove("deployments", Some(NS), "istiod");
    // an edit that dropped the Service's type and spec
    fake.seed("services", Some(NS), json!({"metadata": {"name": "istiod"}}));
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert_eq!(fake.get("deployments", Some(NS), "istiod").unwrap()["spec"], original["spec"]);
    assert_eq!(fake.get("services", Some(NS), "istiod").unwrap()["kind"], "Service");
}

#[tokio::test]
async fn a_component_error_is_reported_and_retried_with_backoff() {
    let (client, fake) = FakeApi::start();
    fake.seed("istiooperators", Some(NS), cr("main", 1, json!({})));
    let ctx = Context::new(client, None);
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    fake.fail_writes_to("deployments/istiod");
    let err = reconcile_stored(&fake, &ctx, "main").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    let status = &stored(&fake, "main")["status"];
    assert_eq!(status["status"], "ERROR");
    assert_eq!(status["componentStatus"]["Base"]["status"], "HEALTHY");
    assert_eq!(status["componentStatus"]["Pilot"]["status"], "ERROR");
    assert!(status["componentStatus"]["Pilot"]["error"].as_str().unwrap().contains("injected failure"));
    let iop = Arc::new(serde_json::from_value::<IstioOperator>(stored(&fake, "main")).unwrap());
    assert_eq!(error_policy(iop.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(5)));
    let err = reconcile_stored(&fake, &ctx, "main").await.unwrap_err();
    assert_eq!(error_policy(iop, &err, ctx.clone()), Action::requeue(Duration::from_secs(10)));
    fake.heal();
    reconcile_stored(&fake, &ctx, "main").await.unwrap();
    assert_eq!(state(&fake, "main"), Some(InstallState::Healthy));
}

/// A `MakeWriter` collecting log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_reconcile_log_line_names_the_cr_and_the_metrics_count_it() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // The other tests of this binary start reconciling at the same moment with no subscriber:
    // a log site they register while this one registers its subscriber can be cached as
    // uninteresting to every subscriber, and this test then captured nothing (seen once in CI).
    // Recomputing the cache with this subscriber in place closes that window.
    tracing::callsite::rebuild_interest_cache();
    let (_client, _fake, ctx) = installed("logged", json!({}), None).await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("rudder_operator::controller")).collect();
    assert!(lines.iter().any(|l| l.contains("reconciled")), "{text}");
    for line in &lines {
        assert!(line.contains("name=logged") && line.contains("namespace=istio-system"), "{line}");
    }
    let metrics = ctx.metrics.encode();
    assert!(metrics.contains("rudder_operator_reconciles_total{result=\"success\"} 2"), "{metrics}");
    assert!(!metrics.contains("rudder_operator_objects_applied_total 0\n"), "{metrics}");
}
