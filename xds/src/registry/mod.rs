//! The service registry: sources that turn cluster state and Istio config into
//! [`crate::model::Snapshot`]s. Each source owns its I/O; the conversions here are pure so every
//! source maps the same object the same way.

pub mod files;
pub mod jwks;
pub mod kube;
pub mod secret;
pub mod service_entry;
pub mod wasm;

use std::sync::Arc;

use rudder_config::mesh::MeshConfig;
use tokio::sync::watch;

use crate::model::Snapshot;

/// Gives the mesh config's OpenTelemetry `envName` headers their values from discovery's own
/// environment (as istiod reads them from its), warning for each variable that is not set:
/// that header is left out. Discovery calls this wherever it loads a mesh config, after the
/// last layer (layering drops the values read).
pub fn resolve_mesh_env(mesh: &mut MeshConfig) {
    for header in mesh.resolve_header_env(|name| std::env::var(name).ok()) {
        tracing::warn!(provider = %header.provider, variable = %header.variable, "{header}");
    }
}

/// What the followers ([`jwks::follow`], [`wasm::follow`]) use to pass a snapshot on: nothing
/// is published when `downstream` already holds that very snapshot, so a follower's first pass
/// over the initial value is not a change (it made discovery build an empty push at start).
/// `false` once nobody listens.
pub(crate) fn pass_on(downstream: &watch::Sender<Arc<Snapshot>>, snapshot: Arc<Snapshot>) -> bool {
    if downstream.is_closed() {
        return false;
    }
    downstream.send_if_modified(|current| {
        let changed = !Arc::ptr_eq(current, &snapshot);
        if changed {
            *current = snapshot;
        }
        changed
    });
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_downstream_holds_is_not_published_again() {
        let initial = Arc::new(Snapshot::default());
        let (tx, mut rx) = watch::channel(initial.clone());
        assert!(pass_on(&tx, initial));
        assert!(!rx.has_changed().unwrap(), "passing on the held snapshot is no change");
        // An equal but distinct snapshot is a change (content is the server's to compare).
        let next = Arc::new(Snapshot::default());
        assert!(pass_on(&tx, next.clone()));
        assert!(rx.has_changed().unwrap());
        assert!(Arc::ptr_eq(&rx.borrow_and_update(), &next));
        drop(rx);
        assert!(!pass_on(&tx, Arc::new(Snapshot::default())), "nobody listens");
    }
}
