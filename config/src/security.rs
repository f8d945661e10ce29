//! `security.istio.io/v1`: PeerAuthentication, RequestAuthentication, AuthorizationPolicy.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::{Report, Validate};

/// `PeerAuthentication` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {}

impl Validate for PeerAuthentication {
    fn validate(&self, _report: &mut Report) {}
}

/// `RequestAuthentication` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {}

impl Validate for RequestAuthentication {
    fn validate(&self, _report: &mut Report) {}
}

/// `AuthorizationPolicy` spec (placeholder; the full model replaces it).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "IstioStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {}

impl Validate for AuthorizationPolicy {
    fn validate(&self, _report: &mut Report) {}
}
