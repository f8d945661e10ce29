//! Clusters: `outbound|<port>|<subset>|<host>` per visible service port and DestinationRule
//! subset, the fixed BlackHole/Passthrough clusters, and `inbound|<port>||` for the workload.
//! (Being written.)

use envoy_types::pb::envoy::config::cluster::v3::Cluster;

use super::context::Context;

/// Clusters for reaching services.
pub fn outbound(_ctx: &Context<'_>) -> Vec<Cluster> {
    Vec::new()
}

/// Clusters for the proxy's own workload.
pub fn inbound(_ctx: &Context<'_>) -> Vec<Cluster> {
    Vec::new()
}
