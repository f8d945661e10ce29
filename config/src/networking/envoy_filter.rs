//! EnvoyFilter: raw Envoy patches.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `EnvoyFilter` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "EnvoyFilter",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyFilterSpec {}

impl Validate for EnvoyFilter {
    fn validate(&self, _report: &mut Report) {}
}
