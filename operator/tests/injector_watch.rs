//! The admission server's config from the cluster, against a mocked API server that lists and
//! watches ConfigMaps: both ConfigMaps are read by name, their content reaches the injector's
//! state, changes are picked up, and a malformed ConfigMap keeps the last good config.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use rudder_config::injector::InjectionPolicy;
use rudder_config::mesh::MeshConfig;
use rudder_operator::injector_watch::{self, Target};
use rudder_webhook::inject::InjectionContext;
use rudder_webhook::server::AppState;
use serde_json::{Value, json};
use tokio::sync::watch;

const NS: &str = "istio-system";

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, name, event type, object)
    events: Vec<(u64, String, &'static str, Value)>,
    version: u64,
    /// (name, resourceVersion) of every watch request.
    watches: Vec<(String, u64)>,
    lists: Vec<String>,
}

/// An API server holding the ConfigMaps of one namespace. A watch is answered with the events
/// after its resourceVersion, or held until there are some.
#[derive(Clone)]
struct FakeConfigMaps {
    store: Arc<Mutex<Store>>,
    bumped: watch::Sender<u64>,
}

impl FakeConfigMaps {
    fn start() -> (Client, FakeConfigMaps) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeConfigMaps { store: Arc::default(), bumped: watch::channel(0).0 };
        let server = fake.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let server = server.clone();
                tokio::spawn(async move { send.send_response(server.serve(request).await) });
            }
        });
        (Client::new(service, "default"), fake)
    }

    /// Creates or replaces ConfigMap `name` with `data`; returns its resourceVersion.
    fn put(&self, name: &str, data: Value) -> u64 {
        let mut store = self.store.lock().unwrap();
        store.version += 1;
        let version = store.version;
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": version.to_string()},
            "data": data,
        });
        let kind = if store.objects.contains_key(name) { "MODIFIED" } else { "ADDED" };
        store.objects.insert(name.to_owned(), object.clone());
        store.events.push((version, name.to_owned(), kind, object));
        drop(store);
        self.bumped.send_replace(version);
        version
    }

    /// Whether the watcher of `name` came back for events after `version`, which it does only
    /// once every earlier event has been handled.
    fn rewatched_after(&self, name: &str, version: u64) -> bool {
        self.store.lock().unwrap().watches.iter().any(|(n, v)| n == name && *v >= version)
    }

    fn lists(&self) -> Vec<String> {
        self.store.lock().unwrap().lists.clone()
    }

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        assert_eq!(path, format!("/api/v1/namespaces/{NS}/configmaps"), "only this namespace's ConfigMaps");
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%3d", "=")))
            .collect();
        let name = query.get("fieldSelector").and_then(|s| s.strip_prefix("metadata.name=")).unwrap().to_owned();
        if query.get("watch").map(String::as_str) != Some("true") {
            let mut store = self.store.lock().unwrap();
            store.lists.push(name.clone());
            let items: Vec<Value> = store.objects.get(&name).cloned().into_iter().collect();
            let body = json!({"apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": {"resourceVersion": store.version.to_string()}, "items": items});
            return Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
        }
        let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        self.store.lock().unwrap().watches.push((name.clone(), since));
        let mut bumped = self.bumped.subscribe();
        let pending = || {
            let store = self.store.lock().unwrap();
            let lines: Vec<String> = store
                .events
                .iter()
                .filter(|(v, n, _, _)| *v > since && *n == name)
                .map(|(_, _, kind, object)| json!({"type": kind, "object": object}).to_string())
                .collect();
            lines
        };
        let mut lines = pending();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while lines.is_empty() && tokio::time::timeout_at(deadline, bumped.changed()).await.is_ok_and(|r| r.is_ok()) {
            lines = pending();
        }
        let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        Response::new(Body::from(body.into_bytes()))
    }
}

fn target(revision: Option<&str>) -> Target {
    let mut base_mesh = MeshConfig::istio_defaults();
    base_mesh.ingress_class = Some("from-the-flag".into());
    Target { namespace: NS.into(), revision: revision.map(str::to_owned), base_mesh }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn synced(mut rx: watch::Receiver<bool>) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s)).await.expect("initial sync").unwrap();
}

fn injector_data(policy: &str, hub: &str) -> Value {
    json!({"config": format!("policy: {policy}\ninjectedAnnotations:\n  from: configmap\n"),
           "values": format!("{{\"global\": {{\"hub\": \"{hub}\"}}}}")})
}

fn hub(ctx: &InjectionContext) -> Value {
    ctx.values["global"]["hub"].clone()
}

#[tokio::test]
async fn the_revisions_configmaps_are_watched_and_used() {
    let (client, fake) = FakeConfigMaps::start();
    fake.put("istio-sidecar-injector-canary", injector_data("disabled", "example.com/canary"));
    fake.put("istio-canary", json!({"mesh": "trustDomain: canary.example\n"}));
    // Another revision's ConfigMaps are not read.
    fake.put("istio-sidecar-injector", injector_data("enabled", "example.com/default"));
    let state = Arc::new(AppState::new(InjectionContext::default()));
    let (task, rx) = injector_watch::spawn(client, target(Some("canary")), state.clone());
    synced(rx).await;

    let mut lists = fake.lists();
    lists.sort();
    assert_eq!(lists, ["istio-canary", "istio-sidecar-injector-canary"]);
    let ctx = state.context();
    assert_eq!(ctx.injector.policy, InjectionPolicy::Disabled);
    assert_eq!(ctx.injector.injected_annotations.get("from").map(String::as_str), Some("configmap"));
    assert_eq!(hub(&ctx), "example.com/canary");
    assert_eq!(ctx.mesh.trust_domain.as_deref(), Some("canary.example"));
    assert_eq!(ctx.mesh.ingress_class.as_deref(), Some("from-the-flag"), "the ConfigMap's mesh lies over the base");
    assert_eq!(ctx.revision.as_deref(), Some("canary"));

    // A change is picked up.
    fake.put("istio-sidecar-injector-canary", injector_data("enabled", "example.com/v2"));
    until("the new injector config", || hub(&state.context()) == "example.com/v2").await;
    assert_eq!(state.context().injector.policy, InjectionPolicy::Enabled);
    fake.put("istio-canary", json!({"mesh": "trustDomain: v2.example\n"}));
    until("the new mesh", || state.context().mesh.trust_domain.as_deref() == Some("v2.example")).await;
    task.abort();
}

#[tokio::test]
async fn a_malformed_configmap_keeps_the_last_good_config() {
    let (client, fake) = FakeConfigMaps::start();
    fake.put("istio-sidecar-injector", injector_data("disabled", "example.com/good"));
    fake.put("istio", json!({"mesh": "trustDomain: good.example\n"}));
    let state = Arc::new(AppState::new(InjectionContext::default()));
    let (task, rx) = injector_watch::spawn(client, target(Some("default")), state.clone());
    synced(rx).await;
    assert_eq!(hub(&state.context()), "example.com/good");

    // A good `config` with malformed `values`: the ConfigMap is refused as a whole.
    let bad =
        fake.put("istio-sidecar-injector", json!({"config": "policy: enabled\n", "values": "{\"global\": [unclosed"}));
    until("the malformed injector ConfigMap to be handled", || fake.rewatched_after("istio-sidecar-injector", bad))
        .await;
    let bad_mesh = fake.put("istio", json!({"mesh": "trustDomain: [1, 2\n"}));
    until("the malformed mesh ConfigMap to be handled", || fake.rewatched_after("istio", bad_mesh)).await;
    let ctx = state.context();
    assert_eq!(ctx.injector.policy, InjectionPolicy::Disabled);
    assert_eq!(hub(&ctx), "example.com/good");
    assert_eq!(ctx.mesh.trust_domain.as_deref(), Some("good.example"));
    assert_eq!(ctx.revision, None, "`default` is the unrevisioned control plane");

    // Fixed again: taken.
    fake.put("istio-sidecar-injector", injector_data("enabled", "example.com/fixed"));
    until("the fixed injector config", || hub(&state.context()) == "example.com/fixed").await;
    task.abort();
}

#[tokio::test]
async fn absent_configmaps_mean_defaults_and_are_picked_up_when_created() {
    let (client, fake) = FakeConfigMaps::start();
    let state = Arc::new(AppState::new(InjectionContext::default()));
    let (task, rx) = injector_watch::spawn(client, target(None), state.clone());
    synced(rx).await;
    let ctx = state.context();
    assert_eq!(ctx.injector.policy, InjectionPolicy::Enabled);
    assert_eq!(ctx.values, Value::Null);
    assert_eq!(ctx.mesh.ingress_class.as_deref(), Some("from-the-flag"));

    fake.put("istio-sidecar-injector", injector_data("disabled", "example.com/late"));
    until("the created ConfigMap", || hub(&state.context()) == "example.com/late").await;
    task.abort();
}
