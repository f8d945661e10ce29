//! `networking.istio.io`: traffic management kinds. Upstream serves each at `v1alpha3`,
//! `v1beta1` and `v1` with one schema; the Rust types carry `v1` and [`crate::crds`] adds the
//! other two versions to the CRDs.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod destination_rule;
pub mod envoy_filter;
pub mod gateway;
pub mod proxy_config;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload;

pub use destination_rule::DestinationRule;
pub use envoy_filter::EnvoyFilter;
pub use gateway::Gateway;
pub use proxy_config::ProxyConfig;
pub use service_entry::ServiceEntry;
pub use sidecar::Sidecar;
pub use virtual_service::VirtualService;
pub use workload::{WorkloadEntry, WorkloadGroup};

// `istio.networking.v1alpha3.WorkloadSelector` (ServiceEntry, EnvoyFilter, Sidecar): plain
// `labels`, unlike the `matchLabels` of `istio.type.v1beta1.WorkloadSelector` in `common`.
/// Labels a workload must carry to be selected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
