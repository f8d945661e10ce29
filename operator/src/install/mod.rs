//! Installing a rendered [`Manifest`](crate::manifest::Manifest) into a cluster and taking it out
//! again: server-side apply in dependency order, prune of owned objects no longer rendered, the
//! `default` revision tag, readiness waits, uninstall and verify. Decisions live in pure planners
//! ([`plan`], [`wait::deployment_pending`], [`uninstall::plan_uninstall`], [`verify::verify`]);
//! the async functions around them only talk to the API server.

pub mod apply;
pub mod live;
pub mod plan;
pub mod progress;
pub mod resources;
pub mod uninstall;
pub mod verify;
pub mod wait;

pub use apply::{InstallOptions, InstallReport, install};
pub use plan::{ObjectKey, Owner};
pub use progress::Progress;

/// Why installing, pruning, uninstalling or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("rendered object {name:?} has no apiVersion/kind")]
    MissingType { name: String },
    #[error("rendered {kind} has no name")]
    MissingName { kind: String },
    #[error("kind {kind} ({api_version}) is not one the installer knows how to apply")]
    UnknownKind { api_version: String, kind: String },
    #[error("{action} {target}: {source}")]
    Kube {
        action: &'static str,
        target: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} is not a valid object: {source}")]
    Convert {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("timed out after {seconds}s waiting for: {}", pending.join(", "))]
    Timeout { seconds: u64, pending: Vec<String> },
    #[error(
        "revision {revision} still has {} connected proxies (use --force to remove it anyway): {}",
        proxies.len(), proxies.join(", ")
    )]
    ConnectedProxies { revision: String, proxies: Vec<String> },
    #[error(transparent)]
    Tag(#[from] crate::tag::TagError),
}

impl InstallError {
    fn kube(action: &'static str, target: impl ToString, source: kube::Error) -> InstallError {
        InstallError::Kube { action, target: target.to_string(), source }
    }
}
