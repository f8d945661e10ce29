//! Gateway: servers at the edge of the mesh.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `Gateway` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {}

impl Validate for Gateway {
    fn validate(&self, _report: &mut Report) {}
}
