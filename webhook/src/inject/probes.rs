//! Application probe rewriting (spec §2.5 "Probe rewrite"): the kubelet's HTTP, gRPC and TCP
//! probes of app containers are pointed at the agent's status port
//! (`/app-health/<container>/{readyz,livez,startupz}`), and the original actions are handed to
//! the agent in `ISTIO_KUBE_APP_PROBERS`. [`restore`] undoes it, for re-injection.

use serde_json::{Map, Value, json};

use super::template::PROXY_CONTAINER;

/// The env variable carrying the original probes.
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

const KINDS: [(&str, &str); 3] =
    [("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz")];
const ACTIONS: [&str; 3] = ["httpGet", "grpc", "tcpSocket"];

fn app_containers(pod: &mut Value) -> impl Iterator<Item = &mut Value> {
    let list = pod.pointer_mut("/spec/containers").and_then(Value::as_array_mut);
    list.into_iter().flatten().filter(|c| c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER))
}

/// Rewrites the app probes to the agent on `status_port`; returns the originals keyed by their
/// new path (empty when nothing was rewritten).
pub fn rewrite(pod: &mut Value, status_port: u32) -> Map<String, Value> {
    let mut originals = Map::new();
    for container in app_containers(pod) {
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let ports = container.get("ports").cloned().unwrap_or(Value::Null);
        for (kind, suffix) in KINDS {
            let Some(probe) = container.get_mut(kind).and_then(Value::as_object_mut) else { continue };
            let Some(action) = ACTIONS.iter().find(|a| probe.contains_key(**a)) else { continue };
            let path = format!("/app-health/{name}/{suffix}");
            let mut original = probe.remove(*action).unwrap_or(Value::Null);
            resolve_named_port(&mut original, &ports);
            let mut stored = json!({ *action: original });
            if let Some(timeout) = probe.get("timeoutSeconds") {
                stored["timeoutSeconds"] = timeout.clone();
            }
            originals.insert(path.clone(), stored);
            probe.insert("httpGet".into(), json!({"path": path, "port": status_port, "scheme": "HTTP"}));
        }
    }
    originals
}

/// A probe naming its port resolves it against the container's ports.
fn resolve_named_port(action: &mut Value, ports: &Value) {
    let Some(name) = action.get("port").and_then(Value::as_str).map(str::to_owned) else { return };
    let found = ports.as_array().into_iter().flatten().find(|p| p.get("name").and_then(Value::as_str) == Some(&name));
    if let Some(number) = found.and_then(|p| p.get("containerPort")) {
        action["port"] = number.clone();
    }
}

/// Puts the original probe actions (from a stripped proxy's `ISTIO_KUBE_APP_PROBERS`) back.
pub fn restore(pod: &mut Value, originals: &Map<String, Value>) {
    for container in app_containers(pod) {
        for (kind, _) in KINDS {
            let Some(probe) = container.get_mut(kind).and_then(Value::as_object_mut) else { continue };
            let path = probe.get("httpGet").and_then(|h| h.get("path")).and_then(Value::as_str).map(str::to_owned);
            let Some(stored) = path.and_then(|p| originals.get(&p)).and_then(Value::as_object) else { continue };
            probe.remove("httpGet");
            for (key, v) in stored {
                if key != "timeoutSeconds" {
                    probe.insert(key.clone(), v.clone());
                }
            }
        }
    }
}
