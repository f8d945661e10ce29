//! Listeners: virtualOutbound/virtualInbound, per-port outbound, capture-mode-NONE binds.
//! (Being written.)

use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::context::Context;

/// Listeners for outbound traffic.
pub fn outbound(_ctx: &Context<'_>) -> Vec<Listener> {
    Vec::new()
}

/// Listeners for traffic to the proxy's own workload.
pub fn inbound(_ctx: &Context<'_>) -> Vec<Listener> {
    Vec::new()
}
