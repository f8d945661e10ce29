//! The pure renderer: an `IstioOperator` (several files, `--set` flags, a revision) becomes the
//! [`Manifest`] of Kubernetes objects that make up the control plane. No I/O: the caller reads
//! the files and prints or applies the result.
//!
//! Steps: built-in profile (over `default`), user files in order, `--set` last ([`input`]);
//! validation with `rudder_config`; top-level fields translated into values, user values
//! winning ([`values`]); then one typed builder per component ([`base`], [`pilot`],
//! [`webhooks`], [`gateways`]), the `k8s` patches and overlays ([`k8s`]), and the owner labels
//! and apply order ([`objects`]).

pub mod base;
pub mod gateways;
pub mod input;
pub mod k8s;
pub mod objects;
pub mod pilot;
pub mod profiles;
pub mod rbac;
pub mod tree;
pub mod values;
pub mod webhooks;
pub mod workload;

use serde_json::Value;

use crate::manifest::Manifest;

/// Where Rudder's images come from unless `hub`/`tag` (or `values.global.hub`/`tag`, or a
/// component's `hub`/`tag`) say otherwise: the discovery server runs `<hub>/rudder:<tag>`
/// ([`PILOT_IMAGE`]), gateways run `<hub>/rudder-proxy:<tag>` ([`PROXY_IMAGE`]). The tag is this
/// crate's version, so a binary installs its own release.
pub const DEFAULT_HUB: &str = "ghcr.io/rudder-mesh";
/// See [`DEFAULT_HUB`].
pub const DEFAULT_TAG: &str = env!("CARGO_PKG_VERSION");
/// Image name of the discovery server (the `rudder` binary).
pub const PILOT_IMAGE: &str = "rudder";
/// Image name of the gateway proxy (Envoy plus `rudder proxy`).
pub const PROXY_IMAGE: &str = "rudder-proxy";

/// One user `-f` file: its name (for errors) and its contents as read.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub name: String,
    pub value: Value,
}

/// What the cluster told us before rendering (nothing, when rendering offline).
#[derive(Clone, Debug, Default)]
pub struct ClusterFacts {
    /// Network name for the control-plane namespace label, unless `values.global.network` is set.
    pub network: Option<String>,
}

/// Everything one render needs.
#[derive(Clone, Debug, Default)]
pub struct RenderRequest {
    /// IstioOperator documents, merged in order.
    pub files: Vec<InputFile>,
    /// `--set path=value` flags (paths relative to `spec`), applied last, in order.
    pub set: Vec<String>,
    /// `-r REV`: overrides `spec.revision`.
    pub revision: Option<String>,
    pub cluster: ClusterFacts,
}

/// Why nothing was rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A `--set` flag that does not parse or does not fit the tree.
    #[error("{0}")]
    Set(String),
    /// An unknown, unsupported or broken profile.
    #[error("{0}")]
    Profile(String),
    /// An input that is not an IstioOperator document.
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    /// Validation errors, one line each, formatted like `rudder validate`.
    #[error("invalid IstioOperator:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// A value Rudder acts on has the wrong shape.
    #[error("{path}: {message}")]
    Value { path: String, message: String },
    /// A `k8s.overlays` patch that does not fit the rendered object.
    #[error("{0}")]
    Overlay(String),
}

/// Renders the control plane described by `req`.
pub fn render(req: &RenderRequest) -> Result<Manifest, RenderError> {
    let merged = input::merge_inputs(req)?;
    let ctx = values::Context::new(merged, &req.cluster)?;
    let mut rendered = Vec::new();
    rendered.extend(base::render(&ctx)?);
    rendered.extend(pilot::render(&ctx)?);
    rendered.extend(gateways::render(&ctx)?);
    if !rendered.is_empty() {
        rendered.push(base::namespace(&ctx)?);
    }
    let objects = objects::finish(&ctx, rendered)?;
    Ok(Manifest { revision: ctx.revision.clone(), namespace: ctx.namespace.clone(), objects, notes: ctx.notes.clone() })
}
