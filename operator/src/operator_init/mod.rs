//! What `rudder operator init` installs and `rudder operator remove` takes away (§1.8.1): the
//! namespaces, the `IstioOperator` CRD, and the operator's ServiceAccount, ClusterRole,
//! ClusterRoleBinding, Deployment and metrics Service, all named `istio-operator[-<rev>]`.
//! [`build`] and [`rbac`] are pure builders (the Helm chart under `chart/` renders the same
//! objects); [`shell`] applies and removes them with the installer's server-side apply.

pub mod build;
pub mod rbac;
pub mod shell;

pub use build::{iop_objects, objects, to_yaml};
pub use shell::{init, plan_remove, remove};

use rudder_config::labels;

use crate::install::plan::revision_name;
use crate::render::{DEFAULT_HUB, DEFAULT_TAG};

/// Base name of every operator object; a revision adds `-<rev>`.
pub const OPERATOR_NAME: &str = "istio-operator";
/// Value of the component label on every operator object.
pub const COMPONENT: &str = "IstioOperator";
/// Port of the operator's metrics (and health) endpoint.
pub const METRICS_PORT: i32 = 8383;
/// Name of the metrics port on the container and the Service.
pub const METRICS_PORT_NAME: &str = "http-metrics";

/// What to install: the flags of `rudder operator init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitOptions {
    pub hub: String,
    pub tag: String,
    /// Where the operator runs.
    pub operator_namespace: String,
    /// Namespaces whose IstioOperator CRs it reconciles (each is created).
    pub watched_namespaces: Vec<String>,
    /// Revision the operator serves; `None` (or `default`) for the unrevisioned one.
    pub revision: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            hub: DEFAULT_HUB.to_owned(),
            tag: DEFAULT_TAG.to_owned(),
            operator_namespace: OPERATOR_NAME.to_owned(),
            watched_namespaces: vec!["istio-system".to_owned()],
            revision: None,
        }
    }
}

impl InitOptions {
    /// The revision, with `default` and empty meaning none.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref().filter(|r| revision_name(Some(r)) != labels::DEFAULT_REVISION)
    }

    /// `istio-operator` or `istio-operator-<rev>` (§1.6.1).
    pub fn name(&self) -> String {
        operator_name(self.revision())
    }

    /// The `istio.io/rev` label value.
    pub fn revision_label(&self) -> &str {
        revision_name(self.revision())
    }

    /// The operator image, `<hub>/rudder:<tag>`.
    pub fn image(&self) -> String {
        format!("{}/{}:{}", self.hub, crate::render::PILOT_IMAGE, self.tag)
    }
}

/// `istio-operator[-<rev>]`.
pub fn operator_name(revision: Option<&str>) -> String {
    match revision.filter(|r| !r.is_empty() && *r != labels::DEFAULT_REVISION) {
        Some(rev) => format!("{OPERATOR_NAME}-{rev}"),
        None => OPERATOR_NAME.to_owned(),
    }
}

/// Why building, applying or removing the operator failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("the IstioOperator CRD is missing from rudder_config::crds::all()")]
    MissingCrd,
    #[error("{0} is not a valid namespace name")]
    BadNamespace(String),
    #[error("{file}: {message}")]
    BadCr { file: String, message: String },
    #[error("could not encode {what} as YAML: {message}")]
    Yaml { what: String, message: String },
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
}
