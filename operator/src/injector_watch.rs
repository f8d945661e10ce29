//! The admission server's config read from the cluster: the revision's injector ConfigMap
//! (`istio-sidecar-injector[-<rev>]`, keys `config` and `values`) and mesh ConfigMap
//! (`istio[-<rev>]`, key `mesh`) in the control-plane namespace, each followed by its own
//! watcher (a field selector on the name), and swapped into the server's [`AppState`] when they
//! change.
//!
//! Each ConfigMap is taken whole or not at all: one that fails to parse leaves the last good
//! version of that ConfigMap in use and logs which object and key failed. A ConfigMap absent at
//! start means defaults (empty injector config and values, the base mesh); one deleted later
//! keeps its last content, since losing the injector's config under a running control plane is
//! more likely an uninstall in progress than a wish to inject differently.

use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rudder_config::injector::InjectorConfig;
use rudder_config::mesh::MeshConfig;
use rudder_webhook::inject::InjectionContext;
use rudder_webhook::server::{self, AppState, ServerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where to look: the namespace and revision of the control plane, and the mesh config the
/// `mesh` key is layered over (Istio's defaults, or the `--mesh-config` file).
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    /// `None` (or `default`) for the unrevisioned control plane.
    pub revision: Option<String>,
    pub base_mesh: MeshConfig,
}

impl Target {
    fn revision(&self) -> Option<&str> {
        self.revision.as_deref().filter(|r| !r.is_empty() && *r != "default")
    }

    fn suffixed(&self, name: &str) -> String {
        match self.revision() {
            Some(rev) => format!("{name}-{rev}"),
            None => name.to_owned(),
        }
    }

    /// The injector ConfigMap's name.
    pub fn injector_name(&self) -> String {
        self.suffixed("istio-sidecar-injector")
    }

    /// The mesh ConfigMap's name.
    pub fn mesh_name(&self) -> String {
        self.suffixed("istio")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Injector = 0,
    Mesh = 1,
}

/// The last good content of each ConfigMap.
struct Current {
    target: Target,
    injector: InjectorConfig,
    values: serde_json::Value,
    mesh: MeshConfig,
}

impl Current {
    fn name(&self, part: Part) -> String {
        match part {
            Part::Injector => self.target.injector_name(),
            Part::Mesh => self.target.mesh_name(),
        }
    }

    fn context(&self) -> InjectionContext {
        InjectionContext {
            injector: self.injector.clone(),
            values: self.values.clone(),
            mesh: self.mesh.clone(),
            revision: self.target.revision().map(str::to_owned),
            ..Default::default()
        }
    }

    /// Parses `map` as `part`; on success it becomes that part's content.
    fn take(&mut self, part: Part, map: &ConfigMap) -> Result<(), ServerError> {
        let data = map.data.clone().unwrap_or_default();
        let origin = |key: &str| format!("ConfigMap {}/{}, key {key}", self.target.namespace, self.name(part));
        let text = |key: &str| data.get(key).map_or("", String::as_str);
        match part {
            Part::Injector => {
                let injector = server::parse_inject_config(&origin("config"), text("config"))?;
                let values = server::parse_inject_values(&origin("values"), text("values"))?;
                (self.injector, self.values) = (injector, values);
            }
            Part::Mesh => {
                self.mesh = server::parse_mesh(&origin("mesh"), text("mesh"), &self.target.base_mesh)?;
            }
        }
        Ok(())
    }
}

/// Starts following the target's ConfigMaps into `state`. The receiver turns `true` once both
/// have been listed (found or not) and their content is in `state`; wait for it before
/// answering admission requests. The task runs until aborted.
pub fn spawn(client: Client, target: Target, state: Arc<AppState>) -> (JoinHandle<()>, watch::Receiver<bool>) {
    let (synced_tx, synced_rx) = watch::channel(false);
    let task = tokio::spawn(follow(client, target, state, synced_tx));
    (task, synced_rx)
}

async fn follow(client: Client, target: Target, state: Arc<AppState>, synced: watch::Sender<bool>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
    let mut current = Current {
        mesh: target.base_mesh.clone(),
        target,
        injector: InjectorConfig::default(),
        values: serde_json::Value::Null,
    };
    let events = |part: Part| {
        let selector = format!("metadata.name={}", current.name(part));
        watcher(api.clone(), watcher::Config::default().fields(&selector))
            .backoff(rudder_xds::registry::kube::reconnect_backoff())
            .map(move |e| (part, e))
    };
    let mut events = std::pin::pin!(stream::select(events(Part::Injector), events(Part::Mesh)));
    // Per part: whether its first listing is done, and the object seen in a listing under way.
    let mut listed = [false, false];
    let mut listing: [Option<ConfigMap>; 2] = [None, None];
    while let Some((part, event)) = events.next().await {
        let name = current.name(part);
        let i = part as usize;
        let changed = match event {
            Err(e) => {
                tracing::warn!(configmap = %name, "watching the ConfigMap: {e}");
                None
            }
            Ok(watcher::Event::Init) => {
                listing[i] = None;
                None
            }
            Ok(watcher::Event::InitApply(map)) => {
                listing[i] = Some(map);
                None
            }
            Ok(watcher::Event::InitDone) => {
                let first = !std::mem::replace(&mut listed[i], true);
                match listing[i].take() {
                    Some(map) => Some(map),
                    None if first => {
                        tracing::info!(configmap = %name, namespace = %current.target.namespace, "not found; using defaults");
                        None
                    }
                    None => {
                        tracing::warn!(configmap = %name, "no longer listed; keeping its last content");
                        None
                    }
                }
            }
            Ok(watcher::Event::Apply(map)) => Some(map),
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(configmap = %name, "deleted; keeping its last content");
                None
            }
        };
        if let Some(map) = changed {
            match current.take(part, &map) {
                Ok(()) => {
                    state.set_context(current.context());
                    tracing::info!(configmap = %name, "loaded the injection config");
                }
                Err(e) => tracing::warn!("keeping the previous injection config: {e}"),
            }
        }
        if listed == [true, true] && !*synced.borrow() {
            state.set_context(current.context());
            let _ = synced.send(true);
        }
    }
}
