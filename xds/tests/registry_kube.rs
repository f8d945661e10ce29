//! The Kubernetes registry's I/O shell against a fake API server (kube's tower-test mock): lists
//! come from fixtures, watches stay open until a test pushes an event into them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use rudder_config::mesh::MeshConfig;
use rudder_xds::model::{Health, Resolution, Snapshot};
use rudder_xds::registry::kube::run;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tower_test::mock::SendResponse;

/// Upper bound for anything the tests wait on; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct State {
    /// List items by resource plural.
    objects: BTreeMap<String, Vec<Value>>,
    /// Open watch requests by plural, answered when a test pushes an event.
    watches: Vec<(String, SendResponse<Response<Body>>)>,
    /// Every list request, by plural.
    lists: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    fn start(objects: BTreeMap<String, Vec<Value>>) -> (Client, FakeApi) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        fake.state.lock().unwrap().objects = objects;
        let server = fake.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                server.serve(&request, send);
            }
        });
        (Client::new(service, "default"), fake)
    }

    fn serve(&self, request: &Request<Body>, send: SendResponse<Response<Body>>) {
        let plural = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let query = request.uri().query().unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        if query.split('&').any(|kv| kv == "watch=true") {
            state.watches.push((plural, send));
            return;
        }
        state.lists.push(plural.clone());
        let items = state.objects.get(&plural).cloned().unwrap_or_default();
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
        send.send_response(respond(&serde_json::to_vec(&list).unwrap()));
    }

    /// Answers the open watch on `plural` with one event (the watcher then watches again).
    async fn push_event(&self, plural: &str, event_type: &str, object: Value) {
        let send = tokio::time::timeout(PATIENCE, async {
            loop {
                {
                    let mut state = self.state.lock().unwrap();
                    if let Some(i) = state.watches.iter().position(|(p, _)| p == plural) {
                        return state.watches.remove(i).1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a watch on the plural");
        let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap();
        line.push(b'\n');
        send.send_response(respond(&line));
    }
}

fn respond(body: &[u8]) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_vec()));
    *response.status_mut() = StatusCode::OK;
    response
}

fn istio(kind: &str, ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
           "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}, "spec": spec})
}

fn kube_service(name: &str, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
           "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 9080}]}})
}

fn fixtures() -> BTreeMap<String, Vec<Value>> {
    let route = json!([{"route": [{"destination": {"host": "reviews"}}]}]);
    BTreeMap::from([
        ("namespaces".into(), vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})]),
        (
            "nodes".into(),
            vec![json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
                "labels": {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1"}}})],
        ),
        ("services".into(), vec![kube_service("reviews", "10.96.0.20")]),
        (
            "secrets".into(),
            vec![
                json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": "gw-cred", "namespace": "istio-system", "resourceVersion": "1"},
                    "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}}),
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "app-password", "namespace": "default", "resourceVersion": "1"},
                    "data": {"password": "aHVudGVyMg=="}}),
            ],
        ),
        (
            "configmaps".into(),
            vec![
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "trust-bundle", "namespace": "istio-system", "resourceVersion": "1"},
                    "data": {"ca.crt": "CA PEM", "notes.txt": "not kept"}}),
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "app-config", "namespace": "default", "resourceVersion": "1"},
                    "data": {"config.yaml": "x: 1"}}),
            ],
        ),
        (
            "endpointslices".into(),
            vec![json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "reviews-abc", "namespace": "default", "resourceVersion": "1",
                             "labels": {"kubernetes.io/service-name": "reviews"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true}, "nodeName": "node-a",
                               "targetRef": {"kind": "Pod", "name": "reviews-v1-x", "namespace": "default"}}],
            })],
        ),
        (
            "pods".into(),
            vec![json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "reviews-v1-x", "namespace": "default", "resourceVersion": "1",
                             "labels": {"app": "reviews", "version": "v1", "security.istio.io/tlsMode": "istio"}},
                "spec": {"containers": [{"name": "app", "image": "reviews"}], "serviceAccountName": "bookinfo-reviews", "nodeName": "node-a"},
                "status": {"podIP": "10.1.0.7", "phase": "Running"},
            })],
        ),
        (
            "virtualservices".into(),
            vec![
                istio("VirtualService", "default", "reviews", json!({"hosts": ["reviews"], "http": route})),
                // Does not decode: `hosts` must be a list.
                istio("VirtualService", "default", "malformed", json!({"hosts": "reviews", "http": route})),
                // Decodes but fails validation: no routes.
                istio("VirtualService", "default", "no-routes", json!({"hosts": ["reviews"]})),
            ],
        ),
        ("destinationrules".into(), vec![istio("DestinationRule", "default", "reviews", json!({"host": "reviews"}))]),
        (
            "envoyfilters".into(),
            vec![
                istio(
                    "EnvoyFilter",
                    "default",
                    "timeout",
                    json!({"configPatches": [{"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}}}]}),
                ),
                // Fails validation: the value is no Cluster.
                istio(
                    "EnvoyFilter",
                    "default",
                    "bad-value",
                    json!({"configPatches": [{"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": {"connect_timeout": 3}}}]}),
                ),
            ],
        ),
        (
            "serviceentries".into(),
            vec![istio(
                "ServiceEntry",
                "default",
                "external",
                json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"}),
            )],
        ),
    ])
}

async fn next_snapshot(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    tokio::time::timeout(PATIENCE, rx.changed()).await.expect("a snapshot in time").expect("sender alive");
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn first_snapshot_then_updates_then_shutdown() {
    let (client, fake) = FakeApi::start(fixtures());
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let (stop, stopped) = oneshot::channel::<()>();
    let registry = tokio::spawn(run(client, MeshConfig::default(), tx, async {
        let _ = stopped.await;
    }));

    let first = next_snapshot(&mut rx).await;
    let hosts: Vec<&str> = first.services.keys().map(String::as_str).collect();
    assert_eq!(hosts, ["api.example.com", "reviews.default.svc.cluster.local"]);
    let reviews = &first.services["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.addresses, ["10.96.0.20"]);
    assert_eq!(reviews.resolution, Resolution::ClientSideLb);
    assert!(reviews.kubernetes);

    let endpoints = first.endpoints_of("reviews.default.svc.cluster.local");
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!((e.address.as_str(), e.port, e.service_port_name.as_str()), ("10.1.0.7", 9080, "http"));
    assert_eq!(e.health, Health::Healthy);
    assert_eq!(e.tls_mode, "istio");
    assert_eq!(e.service_account, "bookinfo-reviews");
    assert_eq!(e.locality, "eu/eu-1");
    assert_eq!(e.labels["version"], "v1");
    assert_eq!(first.endpoints_of("api.example.com")[0].address, "api.example.com");

    let vs: Vec<&str> = first.virtual_services.iter().map(|v| v.metadata.name.as_deref().unwrap()).collect();
    assert_eq!(vs, ["reviews"], "the malformed and the invalid VirtualService are skipped");
    assert_eq!(first.destination_rules.len(), 1);
    let filters: Vec<&str> = first.envoy_filters.iter().map(|f| f.metadata.name.as_deref().unwrap()).collect();
    assert_eq!(filters, ["timeout"], "the EnvoyFilter whose value is no Cluster is skipped");
    // TLS Secrets and ConfigMaps holding ca.crt become gateway credentials; other Secrets and
    // ConfigMaps are not kept.
    assert_eq!(
        first.secrets.keys().collect::<Vec<_>>(),
        ["istio-system/ConfigMap/trust-bundle", "istio-system/gw-cred"]
    );
    assert_eq!(first.secrets["istio-system/ConfigMap/trust-bundle"].ca_certificates, b"CA PEM");
    assert_eq!(first.secrets["istio-system/gw-cred"].certificate_chain, b"CERT");

    // A change on a watch produces a new snapshot carrying it.
    let mut ratings = kube_service("ratings", "10.96.0.30");
    ratings["metadata"]["resourceVersion"] = json!("2");
    fake.push_event("services", "ADDED", ratings).await;
    let second = loop {
        let s = next_snapshot(&mut rx).await;
        if s.services.contains_key("ratings.default.svc.cluster.local") {
            break s;
        }
    };
    assert!(second.services.contains_key("reviews.default.svc.cluster.local"));

    // A malformed edit of a good object leaves the last good version in force, and the watch
    // keeps going (a later event's snapshot still carries it).
    let before = second.virtual_services[0].spec.clone();
    let mut broken = istio("VirtualService", "default", "reviews", json!({"hosts": ["reviews"], "http": "not a list"}));
    broken["metadata"]["resourceVersion"] = json!("3");
    fake.push_event("virtualservices", "MODIFIED", broken).await;
    let mut details = kube_service("details", "10.96.0.40");
    details["metadata"]["resourceVersion"] = json!("3");
    fake.push_event("services", "ADDED", details).await;
    let third = loop {
        let s = next_snapshot(&mut rx).await;
        if s.services.contains_key("details.default.svc.cluster.local") {
            break s;
        }
    };
    assert_eq!(third.virtual_services.len(), 1, "the last good VirtualService stays");
    assert_eq!(third.virtual_services[0].spec, before);
    let mut fixed = istio(
        "VirtualService",
        "default",
        "reviews",
        json!({"hosts": ["reviews"], "tcp": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    );
    fixed["metadata"]["resourceVersion"] = json!("4");
    fake.push_event("virtualservices", "MODIFIED", fixed).await;
    loop {
        let s = next_snapshot(&mut rx).await;
        if s.virtual_services.first().is_some_and(|v| !v.spec.tcp.is_empty()) {
            break;
        }
    }

    // Nothing had to be listed again: bad objects never broke a watch.
    let mut lists = fake.state.lock().unwrap().lists.clone();
    lists.sort();
    assert_eq!(
        lists,
        [
            "authorizationpolicies",
            "configmaps",
            "destinationrules",
            "endpointslices",
            "envoyfilters",
            "gateways",
            "namespaces",
            "nodes",
            "peerauthentications",
            "pods",
            "requestauthentications",
            "secrets",
            "serviceentries",
            "services",
            "sidecars",
            "telemetries",
            "virtualservices",
            "wasmplugins",
            "workloadentries",
        ]
    );

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, registry).await.expect("run stops on shutdown").unwrap();
}
