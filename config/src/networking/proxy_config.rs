//! ProxyConfig: per-workload proxy settings (`networking/v1beta1/proxy_config.proto`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{IstioStatus, WorkloadSelector};
use crate::validate::{FieldPath, Report, Validate, checks};

/// `ProxyConfig` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1beta1",
    kind = "ProxyConfig",
    namespaced,
    status = "IstioStatus",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfigSpec {
    /// Workloads this applies to; all in the namespace when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Proxy worker threads; 0 means one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    /// Extra environment variables for the proxy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment_variables: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ProxyImage>,
}

/// `ProxyImage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyImage {
    /// Image variant, e.g. `default`, `debug` or `distroless`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_type: String,
}

impl Validate for ProxyConfig {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        if let Some(selector) = &spec.selector {
            checks::selector_labels(&selector.match_labels, report, &at.field("selector").field("matchLabels"));
        }
        if let Some(n) = spec.concurrency.filter(|n| *n < 0) {
            report.error(&at.field("concurrency"), format!("concurrency {n} must not be negative"));
        }
        let env_at = at.field("environmentVariables");
        for name in spec.environment_variables.keys() {
            if name.trim().is_empty() {
                report.error(&env_at.key(name), "environment variable name must not be empty");
            }
        }
    }
}
