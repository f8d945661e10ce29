//! Outbound route configurations (RDS `"<port>"`) from services and VirtualServices.
//! (Being written.)

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::context::Context;

/// One RouteConfiguration per outbound HTTP port.
pub fn outbound(_ctx: &Context<'_>) -> Vec<RouteConfiguration> {
    Vec::new()
}
