//! WorkloadEntry and WorkloadGroup: workloads outside Kubernetes.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `WorkloadEntry` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {}

impl Validate for WorkloadEntry {
    fn validate(&self, _report: &mut Report) {}
}

/// `WorkloadGroup` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadGroup",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadGroupSpec {}

impl Validate for WorkloadGroup {
    fn validate(&self, _report: &mut Report) {}
}
