//! DestinationRule: subsets and traffic policy.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `DestinationRule` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {}

impl Validate for DestinationRule {
    fn validate(&self, _report: &mut Report) {}
}
