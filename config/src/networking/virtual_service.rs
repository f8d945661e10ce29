//! VirtualService: HTTP, TLS and TCP routing rules.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `VirtualService` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {}

impl Validate for VirtualService {
    fn validate(&self, _report: &mut Report) {}
}
