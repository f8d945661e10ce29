//! Undoing a previous injection, so that injecting an injected pod gives the same pod (spec
//! §2.2, last paragraph): the containers, init containers, volumes and pull secrets named in
//! `sidecar.istio.io/status` are removed, rewritten probes and moved Prometheus annotations are
//! put back from the old proxy's env, and the status annotation is dropped.

use rudder_config::labels;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::probes::{self, APP_PROBERS_ENV};
use super::template::PROXY_CONTAINER;

/// The env variable carrying the pod's own Prometheus annotations when metrics are merged.
pub const PROMETHEUS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// The Prometheus annotations moved into [`PROMETHEUS_ENV`] (suffixes after `prometheus.io/`).
pub const PROMETHEUS_KEYS: [&str; 3] = [labels::PROMETHEUS_SCRAPE, labels::PROMETHEUS_PATH, labels::PROMETHEUS_PORT];

/// The value of `sidecar.istio.io/status`: what injection added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub init_containers: Vec<String>,
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<String>>,
    #[serde(default)]
    pub revision: String,
}

/// Removes a previous injection from `pod` (JSON); returns whether there was one.
pub fn strip(pod: &mut Value) -> bool {
    let Some(text) = pod.pointer("/metadata/annotations").and_then(|a| a.get(labels::SIDECAR_STATUS)) else {
        return false;
    };
    let status: Status = text.as_str().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_else(|| Status {
        init_containers: vec!["istio-init".into(), "istio-validation".into(), PROXY_CONTAINER.into()],
        containers: vec![PROXY_CONTAINER.into()],
        ..Status::default()
    });
    if let Some(proxy) = find_proxy(pod).cloned() {
        if let Some(originals) = env_json(&proxy, APP_PROBERS_ENV) {
            probes::restore(pod, &originals);
        }
        restore_prometheus(pod, env_json(&proxy, PROMETHEUS_ENV));
    }
    remove_named(pod, "/spec/initContainers", &status.init_containers);
    remove_named(pod, "/spec/containers", &status.containers);
    remove_named(pod, "/spec/volumes", &status.volumes);
    remove_named(pod, "/spec/imagePullSecrets", status.image_pull_secrets.as_deref().unwrap_or_default());
    if let Some(Value::Object(ann)) = pod.pointer_mut("/metadata/annotations") {
        ann.remove(labels::SIDECAR_STATUS);
    }
    true
}

/// The `istio-proxy` container, in `containers` or (native sidecar) `initContainers`.
pub fn find_proxy(pod: &Value) -> Option<&Value> {
    ["/spec/containers", "/spec/initContainers"].iter().find_map(|list| {
        pod.pointer(list)?.as_array()?.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
    })
}

/// The `istio-proxy` container, mutable.
pub fn find_proxy_mut(pod: &mut Value) -> Option<&mut Value> {
    let in_containers = find_in(pod, "/spec/containers");
    let list = if in_containers { "/spec/containers" } else { "/spec/initContainers" };
    pod.pointer_mut(list)?
        .as_array_mut()?
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
}

fn find_in(pod: &Value, list: &str) -> bool {
    pod.pointer(list)
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER)))
}

fn env_json(container: &Value, name: &str) -> Option<Map<String, Value>> {
    let env = container.get("env")?.as_array()?;
    let entry = env.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name))?;
    serde_json::from_str(entry.get("value")?.as_str()?).ok()
}

fn restore_prometheus(pod: &mut Value, saved: Option<Map<String, Value>>) {
    let Some(Value::Object(ann)) = pod.pointer_mut("/metadata/annotations") else { return };
    let ours = ann.get(labels::PROMETHEUS_PATH).and_then(Value::as_str) == Some("/stats/prometheus");
    if saved.is_none() && !ours {
        return;
    }
    let saved = saved.unwrap_or_default();
    for key in PROMETHEUS_KEYS {
        let short = key.trim_start_matches("prometheus.io/");
        match saved.get(short) {
            Some(v) => ann.insert(key.to_owned(), v.clone()),
            None => ann.remove(key),
        };
    }
}

/// Removes the named entries from the list at `pointer` (and the list when it becomes empty).
pub fn remove_named(pod: &mut Value, pointer: &str, names: &[String]) {
    let Some(Value::Array(list)) = pod.pointer_mut(pointer) else { return };
    list.retain(|item| !item.get("name").and_then(Value::as_str).is_some_and(|n| names.iter().any(|x| x == n)));
    if list.is_empty() {
        let (parent, key) = pointer.rsplit_once('/').unwrap_or_default();
        if let Some(Value::Object(map)) = pod.pointer_mut(parent) {
            map.remove(key);
        }
    }
}
