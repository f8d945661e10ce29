//! DestinationRule `tunnel`: TCP traffic to a destination carried through an HTTP CONNECT (or
//! POST) proxy, Envoy's TCP proxy `tunneling_config`. The destination's cluster reaches the
//! proxy; the tunnel asks it for `targetHost:targetPort`.
//!
//! Applied to the translated listeners, as Istio does to TCP proxies with one destination
//! cluster: a TCP proxy whose cluster is `outbound|<port>|<subset>|<host>` takes the tunnel of
//! that host's rule (the subset's, else the rule's). Only run when some rule has a tunnel, so
//! other meshes pay nothing for it.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, TunnelingConfig,
};
use envoy_types::util::pack_any;
use prost::Message;
use rudder_config::networking::destination_rule::{DestinationRuleSpec, TunnelSettings};

use super::context::Context;
use super::listener::hcm::TCP_PROXY;

/// Whether a rule sets a tunnel anywhere (its policy or a subset's).
pub fn named_by(rule: &DestinationRuleSpec) -> bool {
    rule.traffic_policy.as_ref().is_some_and(|p| p.tunnel.is_some())
        || rule.subsets.iter().any(|s| s.traffic_policy.as_ref().is_some_and(|p| p.tunnel.is_some()))
}

/// Sets the tunnel of each single-cluster TCP proxy in `listeners` whose destination's rule has
/// one.
pub fn apply(ctx: &Context<'_>, listeners: &mut [Listener]) {
    let filters = listeners.iter_mut().flat_map(|l| l.filter_chains.iter_mut()).flat_map(|c| c.filters.iter_mut());
    for filter in filters.filter(|f| f.name == TCP_PROXY) {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else { continue };
        let Ok(mut proxy) = TcpProxy::decode(any.value.as_slice()) else { continue };
        let Some(ClusterSpecifier::Cluster(cluster)) = &proxy.cluster_specifier else { continue };
        let Some(tunnel) = tunnel_of(ctx, cluster) else { continue };
        proxy.tunneling_config = Some(TunnelingConfig {
            hostname: target(&tunnel.target_host, tunnel.target_port.unwrap_or_default()),
            use_post: tunnel.protocol == "POST",
            ..Default::default()
        });
        filter.config_type = Some(filter::ConfigType::TypedConfig(pack_any(proxy)));
    }
}

/// The tunnel of the rule of cluster `outbound|<port>|<subset>|<host>`: the subset's, else the
/// rule's.
fn tunnel_of<'a>(ctx: &Context<'a>, cluster: &str) -> Option<&'a TunnelSettings> {
    let mut parts = cluster.splitn(4, '|');
    let (direction, _port, subset, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if direction != "outbound" {
        return None;
    }
    let rule = &ctx.destination_rule(host)?.spec;
    let of_subset = rule
        .subsets
        .iter()
        .filter(|s| !subset.is_empty() && s.name == subset)
        .find_map(|s| s.traffic_policy.as_ref()?.tunnel.as_ref());
    of_subset.or_else(|| rule.traffic_policy.as_ref()?.tunnel.as_ref())
}

/// `host:port`, an IPv6 address in brackets.
fn target(host: &str, port: u32) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(target("example.com", 443), "example.com:443");
        assert_eq!(target("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(target("fd00::1", 80), "[fd00::1]:80");
    }
}
