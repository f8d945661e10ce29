//! Discovery's mesh config in a cluster: the `mesh` key of the revision's `istio[-<rev>]`
//! ConfigMap (what the operator renders from `meshConfig`), layered over the base mesh config
//! and followed, so an edit of the IstioOperator's `meshConfig` reaches the proxies without a
//! restart. A ConfigMap that does not parse, or that disappears, leaves the last good config.
//! OpenTelemetry header values named by `envName` are read from discovery's environment as
//! each config is loaded.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rudder_config::mesh::MeshConfig;
use rudder_webhook::server;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Follows ConfigMap `namespace/name` into the returned receiver (which starts at `base`).
pub fn spawn(
    client: Client,
    namespace: &str,
    name: &str,
    base: MeshConfig,
) -> (JoinHandle<()>, watch::Receiver<MeshConfig>) {
    let (tx, rx) = watch::channel(base.clone());
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut maps = std::pin::pin!(
            watcher(api, config).backoff(rudder_xds::registry::kube::reconnect_backoff()).applied_objects()
        );
        while let Some(map) = maps.next().await {
            let map = match map {
                Ok(map) => map,
                Err(e) => {
                    tracing::warn!(configmap = %name, "watching the mesh ConfigMap: {e}");
                    continue;
                }
            };
            let text = map.data.as_ref().and_then(|d| d.get("mesh")).map_or("", String::as_str);
            match server::parse_mesh(&format!("ConfigMap {namespace}/{name}, key mesh"), text, &base) {
                Ok(mut mesh) => {
                    tracing::info!(configmap = %name, "mesh config loaded");
                    rudder_xds::registry::resolve_mesh_env(&mut mesh);
                    tx.send_if_modified(|current| {
                        let changed = *current != mesh;
                        *current = mesh;
                        changed
                    });
                }
                Err(e) => tracing::warn!("keeping the previous mesh config: {e}"),
            }
        }
    });
    (task, rx)
}
