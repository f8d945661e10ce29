//! `install.istio.io/v1alpha1` IstioOperator.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `IstioOperator` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "install.istio.io",
    version = "v1alpha1",
    kind = "IstioOperator",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct IstioOperatorSpec {}

impl Validate for IstioOperator {
    fn validate(&self, _report: &mut Report) {}
}
