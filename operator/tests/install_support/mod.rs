//! A small in-memory Kubernetes API behind kube's tower-test mock: server-side apply stores the
//! object, GET/list (with label selectors)/DELETE read and change the store, and every request is
//! logged (method, path, field manager, force, selector) for tests to assert on. JSON merge
//! patches (also on `/status`) and the test/add/remove JSON patches of kube's finalizer helper
//! change stored objects in place. POST creates (409 when present) and PUT replaces (409 when the
//! body's resourceVersion is not the stored one); both bump a resourceVersion counter.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::api::DynamicObject;
use kube::client::Body;
use rudder_operator::manifest::{Component, Manifest, RenderedObject};
use serde_json::{Value, json};

/// One request the fake served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub field_manager: Option<String>,
    pub force: bool,
    pub label_selector: Option<String>,
    pub content_type: Option<String>,
}

impl Call {
    /// `METHOD path`, the form assertions read best in.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    pub fn is_apply(&self) -> bool {
        self.method == "PATCH"
    }

    /// A server-side apply (as opposed to a merge or JSON patch).
    pub fn is_ssa(&self) -> bool {
        self.is_apply() && self.content_type.as_deref().is_some_and(|c| c.contains("apply-patch"))
    }

    /// Anything but a read.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// A GET of a collection (no object name).
    pub fn is_list(&self) -> bool {
        self.method == "GET" && parse_path(&self.path).2.is_none()
    }
}

type Key = (String, Option<String>, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    calls: Vec<Call>,
    unready: bool,
    failing: Vec<String>,
    resource_version: u64,
    bump_after_get: Vec<String>,
}

impl State {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }
}

fn conflict(reason: &str, message: &str) -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": 409});
    respond(StatusCode::CONFLICT, &status)
}

/// The fake API server; cloneable handle onto its state.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client talking to a fresh fake; applied Deployments report ready unless [`Self::unready`].
    pub fn start() -> (Client, FakeApi) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi { state: Arc::default() };
        let server = fake.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let response = server.serve(request).await;
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), fake)
    }

    /// Deployments applied from now on never become ready.
    pub fn unready(&self) {
        self.state.lock().unwrap().unready = true;
    }

    /// Puts an object in the store (`plural`, namespace, body with metadata.name).
    pub fn seed(&self, plural: &str, namespace: Option<&str>, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let key = (plural.to_owned(), namespace.map(str::to_owned), name);
        self.state.lock().unwrap().objects.insert(key, object);
    }

    pub fn get(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = (plural.to_owned(), namespace.map(str::to_owned), name.to_owned());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Writes (PATCH) to paths containing `fragment` fail with 500 until [`Self::heal`].
    pub fn fail_writes_to(&self, fragment: &str) {
        self.state.lock().unwrap().failing.push(fragment.to_owned());
    }

    /// The next GET of one object of `plural` is followed by another writer's change (its
    /// resourceVersion moves on), so the reader's replace gets 409.
    pub fn race_next_get(&self, plural: &str) {
        self.state.lock().unwrap().bump_after_get.push(plural.to_owned());
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().failing.clear();
    }

    /// Takes an object out of the store.
    pub fn remove(&self, plural: &str, namespace: Option<&str>, name: &str) {
        let key = (plural.to_owned(), namespace.map(str::to_owned), name.to_owned());
        self.state.lock().unwrap().objects.remove(&key);
    }

    /// Names (`ns/name` or `name`) of every stored object of a plural.
    pub fn names(&self, plural: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .keys()
            .filter(|(p, _, _)| p == plural)
            .map(|(_, ns, name)| match ns {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            })
            .collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = parse_query(request.uri().query().unwrap_or_default());
        let content_type =
            request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = request.into_body().collect_bytes().await.unwrap();
        let call = Call {
            method: method.clone(),
            path: path.clone(),
            field_manager: query.get("fieldManager").cloned(),
            force: query.get("force").is_some_and(|f| f == "true"),
            label_selector: query.get("labelSelector").cloned(),
            content_type: content_type.clone(),
        };
        let mut state = self.state.lock().unwrap();
        state.calls.push(call.clone());
        let (plural, namespace, name) = parse_path(&path);
        if method == "PATCH" && state.failing.iter().any(|f| path.contains(f.as_str())) {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "injected failure", "reason": "InternalError", "code": 500});
            return respond(StatusCode::INTERNAL_SERVER_ERROR, &status);
        }
        let ct = content_type.unwrap_or_default();
        let key = (plural.clone(), namespace.clone(), name.clone().unwrap_or_default());
        if method == "PATCH" && !ct.contains("apply-patch") {
            let Some(stored) = state.objects.get_mut(&key) else { return not_found() };
            let patch: Value = serde_json::from_slice(&body).unwrap();
            let result = match (ct.contains("merge-patch"), subresource(&path)) {
                (true, Some("status")) => {
                    merge(&mut stored["status"], &patch["status"]);
                    Ok(())
                }
                (true, _) => {
                    merge(stored, &patch);
                    Ok(())
                }
                (false, _) => json_patch(stored, &patch),
            };
            return match result {
                Ok(()) => respond(StatusCode::OK, stored),
                Err(message) => respond(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "Invalid", "code": 422}),
                ),
            };
        }
        match (method.as_str(), name) {
            ("PATCH", Some(name)) => {
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                if let Some(ns) = &namespace {
                    object["metadata"]["namespace"] = json!(ns);
                }
                if plural == "deployments" && !state.unready {
                    mark_ready(&mut object);
                }
                let key = (plural, namespace, name);
                let manager = call.field_manager.clone().unwrap_or_default();
                let previous = state.objects.get(&key).cloned();
                if let Some(previous) = &previous {
                    keep_fields_of_other_managers(previous, &mut object, &manager);
                }
                let version = match &previous {
                    Some(p) if without_version(p) == without_version(&object) => {
                        p["metadata"]["resourceVersion"].clone()
                    }
                    _ => json!(state.next_version()),
                };
                object["metadata"]["resourceVersion"] = version;
                state.objects.insert(key, object.clone());
                respond(StatusCode::OK, &object)
            }
            ("POST", None) => {
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                let key = (plural, namespace.clone(), name);
                if state.objects.contains_key(&key) {
                    return conflict("AlreadyExists", "already exists");
                }
                if let Some(ns) = &namespace {
                    object["metadata"]["namespace"] = json!(ns);
                }
                object["metadata"]["resourceVersion"] = json!(state.next_version());
                state.objects.insert(key, object.clone());
                respond(StatusCode::CREATED, &object)
            }
            ("PUT", Some(name)) => {
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                let key = (plural, namespace, name);
                let Some(stored) = state.objects.get(&key) else { return not_found() };
                if object["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                    return conflict("Conflict", "the object has been modified");
                }
                object["metadata"]["resourceVersion"] = json!(state.next_version());
                state.objects.insert(key, object.clone());
                respond(StatusCode::OK, &object)
            }
            ("GET", Some(name)) => {
                let key = (plural.clone(), namespace, name);
                let Some(object) = state.objects.get(&key).cloned() else { return not_found() };
                if let Some(i) = state.bump_after_get.iter().position(|p| *p == plural) {
                    state.bump_after_get.remove(i);
                    let version = state.next_version();
                    state.objects.get_mut(&key).unwrap()["metadata"]["resourceVersion"] = json!(version);
                }
                respond(StatusCode::OK, &object)
            }
            ("DELETE", Some(name)) => match state.objects.remove(&(plural, namespace, name)) {
                Some(object) => respond(StatusCode::OK, &object),
                None => not_found(),
            },
            ("GET", None) => {
                let selector = call.label_selector.unwrap_or_default();
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|((p, ns, _), _)| *p == plural && (namespace.is_none() || *ns == namespace))
                    .filter(|(_, o)| selector_matches(&selector, &o["metadata"]["labels"]))
                    .map(|(_, o)| o.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            _ => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "unsupported", "reason": "MethodNotAllowed", "code": 405}),
            ),
        }
    }
}

fn without_version(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    o
}

/// Server-side apply's rule for fields the applier does not send: a field another manager owns
/// (per the stored `managedFields`) keeps its stored value, and those managers' entries stay. The
/// applier's own earlier fields are not tracked: they go when not sent again.
fn keep_fields_of_other_managers(stored: &Value, applied: &mut Value, manager: &str) {
    let others: Vec<Value> = stored["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"].as_str() != Some(manager))
        .cloned()
        .collect();
    for entry in &others {
        carry_owned(stored, applied, &entry["fieldsV1"]);
    }
    if !others.is_empty() {
        applied["metadata"]["managedFields"] = Value::Array(others);
    }
}

/// Copies into `applied` every field of `stored` that `fields` (a fieldsV1 tree) names and
/// `applied` lacks; `k:{..}` keys match list items by their key fields.
fn carry_owned(stored: &Value, applied: &mut Value, fields: &Value) {
    let Some(fields) = fields.as_object() else { return };
    for (key, sub) in fields {
        let leaf = sub.as_object().is_none_or(|m| m.keys().all(|k| k == "."));
        if let Some(field) = key.strip_prefix("f:") {
            let Some(value) = stored.get(field) else { continue };
            match applied.get_mut(field) {
                Some(target) if !leaf => carry_owned(value, target, sub),
                Some(_) => {}
                None => {
                    if let Some(map) = applied.as_object_mut() {
                        map.insert(field.to_owned(), value.clone());
                    }
                }
            }
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let item_key: Value = serde_json::from_str(item_key).unwrap();
            let matches = |item: &Value| item_key.as_object().unwrap().iter().all(|(k, v)| item.get(k) == Some(v));
            let Some(from) = stored.as_array().and_then(|items| items.iter().find(|i| matches(i))) else { continue };
            let Some(items) = applied.as_array_mut() else { continue };
            match items.iter_mut().find(|i| matches(i)) {
                Some(target) => carry_owned(from, target, sub),
                None => items.push(from.clone()),
            }
        }
    }
}

/// The subresource (`status`) of an object path, if any.
fn subresource(path: &str) -> Option<&str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = if segments.first() == Some(&"api") { &segments[2..] } else { &segments[3..] };
    let rest = match rest {
        ["namespaces", _, tail @ ..] => tail,
        all => all,
    };
    rest.get(2).copied()
}

/// RFC 7386 merge.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if v.is_null() {
            target.as_object_mut().unwrap().remove(k);
        } else {
            merge(&mut target[k.as_str()], v);
        }
    }
}

/// The `test`, `add` and `remove` operations of RFC 6902 (enough for kube's finalizer helper).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let mut work = target.clone();
    for op in ops.as_array().unwrap() {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        match op["op"].as_str().unwrap() {
            "test" => {
                let found = work.pointer(path).cloned().unwrap_or(Value::Null);
                if found != op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            "add" => match work.pointer_mut(parent) {
                Some(Value::Array(items)) if last == "-" => items.push(op["value"].clone()),
                Some(Value::Object(map)) => {
                    map.insert(last.to_owned(), op["value"].clone());
                }
                _ => return Err(format!("cannot add at {path}")),
            },
            "remove" => match work.pointer_mut(parent) {
                Some(Value::Array(items)) => {
                    items.remove(last.parse::<usize>().unwrap());
                }
                Some(Value::Object(map)) => {
                    map.remove(last);
                }
                _ => return Err(format!("cannot remove at {path}")),
            },
            other => return Err(format!("unsupported op {other}")),
        }
    }
    *target = work;
    Ok(())
}

fn mark_ready(object: &mut Value) {
    let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
    object["metadata"]["generation"] = json!(1);
    object["status"] = json!({
        "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas,
    });
}

fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(value).unwrap()));
    *r.status_mut() = status;
    r
}

fn not_found() -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404});
    respond(StatusCode::NOT_FOUND, &status)
}

/// (plural, namespace, name) of a REST path.
pub fn parse_path(path: &str) -> (String, Option<String>, Option<String>) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => &segments[2..],
        _ => &segments[3..],
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] => {
            (plural.to_string(), Some(ns.to_string()), tail.first().map(|s| s.to_string()))
        }
        [plural, tail @ ..] => (plural.to_string(), None, tail.first().map(|s| s.to_string())),
        [] => (String::new(), None, None),
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Kubernetes label-selector matching for `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (..)`, `k notin (..)`.
pub fn selector_matches(selector: &str, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    split_terms(selector).iter().all(|term| {
        let term = term.trim();
        if term.is_empty() {
            return true;
        }
        if let Some((k, set)) = term.split_once(" notin ") {
            return !get(k.trim()).is_some_and(|v| set_of(set).contains(&v));
        }
        if let Some((k, set)) = term.split_once(" in ") {
            return get(k.trim()).is_some_and(|v| set_of(set).contains(&v));
        }
        if let Some((k, v)) = term.split_once("!=") {
            return get(k) != Some(v);
        }
        if let Some((k, v)) = term.split_once('=') {
            return get(k) == Some(v.trim_start_matches('='));
        }
        match term.strip_prefix('!') {
            Some(k) => get(k).is_none(),
            None => get(term).is_some(),
        }
    })
}

fn set_of(set: &str) -> Vec<&str> {
    set.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(str::trim).collect()
}

fn split_terms(selector: &str) -> Vec<String> {
    let mut terms = vec![String::new()];
    let mut depth = 0;
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(String::new());
                continue;
            }
            _ => {}
        }
        terms.last_mut().unwrap().push(c);
    }
    terms
}

// === Hand-built manifests ===

pub fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn selector_rev(rev: &str) -> Value {
    json!({"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": [rev]}]})
}

fn injector_webhook(name: &str, service: &str, ns_selector: Value, obj_selector: Value) -> Value {
    json!({
        "name": name,
        "clientConfig": {"service": {"name": service, "namespace": "istio-system", "path": "/inject", "port": 443}},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "sideEffects": "None", "failurePolicy": "Fail", "reinvocationPolicy": "Never",
        "admissionReviewVersions": ["v1"],
        "namespaceSelector": ns_selector, "objectSelector": obj_selector,
    })
}

/// The revision's injector configuration as the charts render it.
pub fn injector(revision: &str) -> Value {
    let (name, service) = match revision {
        "default" => ("istio-sidecar-injector".to_owned(), "istiod".to_owned()),
        r => (format!("istio-sidecar-injector-{r}"), format!("istiod-{r}")),
    };
    let mut webhooks = vec![
        injector_webhook("rev.namespace.sidecar-injector.istio.io", &service, selector_rev(revision), json!({})),
        injector_webhook("rev.object.sidecar-injector.istio.io", &service, json!({}), selector_rev(revision)),
    ];
    if revision == "default" {
        let enabled = json!({"matchLabels": {"istio-injection": "enabled"}});
        webhooks.push(injector_webhook("namespace.sidecar-injector.istio.io", &service, enabled, json!({})));
        webhooks.push(injector_webhook("object.sidecar-injector.istio.io", &service, json!({}), json!({})));
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app": "sidecar-injector", "istio.io/rev": revision}},
        "webhooks": webhooks,
    })
}

/// A small but representative control plane for `revision` (`None` = unrevisioned).
pub fn manifest(revision: Option<&str>) -> Manifest {
    let rev = revision.unwrap_or("default");
    let suffix = revision.map(|r| format!("-{r}")).unwrap_or_default();
    let pilot = |v: Value| RenderedObject { component: Component::Pilot, object: dynamic(v) };
    let base = |v: Value| RenderedObject { component: Component::Base, object: dynamic(v) };
    let objects = vec![
        base(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "istio-reader-service-account", "namespace": "istio-system"}}),
        ),
        pilot(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("istiod{suffix}"), "namespace": "istio-system"}, "spec": {"replicas": 1}}),
        ),
        pilot(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("istio{suffix}")}, "data": {"mesh": "{}"}}),
        ),
        pilot(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": format!("istiod-clusterrole{suffix}-istio-system")}, "rules": []}),
        ),
        pilot(injector(rev)),
        pilot(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": format!("istio-validator{suffix}-istio-system"), "labels": {"app": "istiod", "istio.io/rev": rev}},
            "webhooks": [{"name": "rev.validation.istio.io", "clientConfig": {"service": {"name": format!("istiod{suffix}"), "namespace": "istio-system", "path": "/validate"}},
                "sideEffects": "None", "admissionReviewVersions": ["v1"], "objectSelector": selector_rev(rev)}]})),
        pilot(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("istiod{suffix}"), "namespace": "istio-system"}, "spec": {"ports": [{"port": 15012}]}}),
        ),
        base(
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "gateways.networking.istio.io"}, "spec": {}}),
        ),
        base(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})),
    ];
    Manifest { revision: revision.map(str::to_owned), namespace: "istio-system".into(), objects, notes: vec![] }
}

/// Owner labels an earlier install of `rev` would have left on an object.
pub fn owned_labels(rev: &str, component: &str) -> Value {
    json!({
        "install.operator.istio.io/owning-resource": "unknown",
        "istio.io/rev": rev,
        "operator.istio.io/component": component,
        "operator.istio.io/managed": "Reconcile",
    })
}
