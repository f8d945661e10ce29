//! The injected pod (spec §2.5) for Rudder's proxy. Placeholder: the interface the admission
//! server and `kube-inject` call; the full mutation replaces the body.

use k8s_openapi::api::core::v1::Pod;
use rudder_config::injector::InjectorConfig;
use rudder_config::mesh::MeshConfig;

/// Everything injection reads besides the pod: the injector ConfigMap (`config` and `values`),
/// the mesh config, and facts about this control plane.
#[derive(Clone, Debug, Default)]
pub struct InjectionContext {
    pub injector: InjectorConfig,
    /// The injector ConfigMap's `values` key (Helm values subset, spec §2.4).
    pub values: serde_json::Value,
    pub mesh: MeshConfig,
    /// This control plane's revision (`None` = default).
    pub revision: Option<String>,
    /// Cluster id and network from the request path `/inject/cluster/<id>/net/<network>`.
    pub cluster_id: Option<String>,
    pub network: Option<String>,
}

/// What injection did with one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not injected, and why (e.g. `hostNetwork`, `sidecar.istio.io/inject: "false"`).
    Skipped { reason: String },
    /// The pod with the sidecar.
    Injected(Box<Pod>),
}

/// A pod that cannot be injected: an invalid annotation, an unknown template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("invalid annotation {annotation}: {message}")]
    InvalidAnnotation { annotation: String, message: String },
    #[error("{0}")]
    Template(String),
}

/// Decides and, when required, injects `pod` (created in `namespace`).
pub fn inject_pod(_ctx: &InjectionContext, _pod: &Pod, _namespace: &str) -> Result<Outcome, InjectError> {
    Err(InjectError::Template("injection is not implemented yet".into()))
}
