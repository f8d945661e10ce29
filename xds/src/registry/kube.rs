//! The Kubernetes source of the service registry: Services, EndpointSlices, Pods, Namespaces,
//! Nodes and the Istio config kinds, watched through kube-runtime reflectors and merged into
//! [`Snapshot`](crate::model::Snapshot)s.
//!
//! [`convert`] maps single objects, [`build_snapshot`] merges whole stores (both pure);
//! [`run`] is the I/O around them.

mod backoff;
pub mod convert;
mod snapshot;
mod watch;

pub use backoff::reconnect_backoff;
pub use snapshot::{KubeInputs, SnapshotCache, build_snapshot, build_snapshot_cached};
pub use watch::{run, run_with_mesh};
