//! VirtualService `tcp` and `tls` routes for one service port, as the filter chains of that
//! port's outbound TCP listener: per route, the extra match criteria (destination and source
//! subnets, SNI names) and where the connection goes.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::google::protobuf::UInt32Value;
use rudder_config::networking::VirtualService;
use rudder_config::networking::virtual_service::{L4MatchAttributes, RouteDestination, TlsMatchAttributes};

use super::hcm::TcpTarget;
use crate::model::{Service, labels_match};
use crate::translate::context::{Context, host_matches, outbound_cluster_name, resolve_host};

/// An address prefix and its length in bits, e.g. `("10.0.0.0", 8)`.
pub type PrefixRange = (String, u32);

/// One L4 filter chain: criteria beyond the listener's own address, and the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Chain {
    pub prefix_ranges: Vec<PrefixRange>,
    /// Source address ranges (`tcp[].match[].sourceSubnet`); empty for any source.
    pub source_prefix_ranges: Vec<PrefixRange>,
    pub server_names: Vec<String>,
    pub target: TcpTarget,
}

/// `(prefix, length)` pairs as Envoy CIDR ranges.
pub fn cidr_ranges(ranges: &[PrefixRange]) -> Vec<CidrRange> {
    ranges
        .iter()
        .map(|(ip, len)| CidrRange { address_prefix: ip.clone(), prefix_len: Some(UInt32Value { value: *len }) })
        .collect()
}

/// The chains for `service` on `port`: TLS routes by SNI (TLS/HTTPS ports only), then TCP
/// routes in order; the last chain has no criteria (the first TCP route that applies to
/// everything, or the service's own cluster).
pub fn chains(ctx: &Context<'_>, service: &Service, port: u32) -> Vec<L4Chain> {
    let mut chains = Vec::new();
    let tls_port = service
        .port(port)
        .is_some_and(|p| matches!(p.protocol, crate::model::Protocol::Tls | crate::model::Protocol::Https));
    if tls_port && let Some(vs) = virtual_service_for(ctx, &service.hostname, |vs| !vs.spec.tls.is_empty()) {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        for route in &vs.spec.tls {
            let Some(target) = target(ctx, ns, &route.route, port) else { continue };
            for m in route.r#match.iter().filter(|m| tls_match_applies(ctx, m, port)) {
                if m.sni_hosts.is_empty() {
                    continue;
                }
                chains.push(L4Chain {
                    prefix_ranges: cidrs(&m.destination_subnets),
                    source_prefix_ranges: Vec::new(),
                    server_names: m.sni_hosts.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    // TCP routes as (destination, source) regions in route order; `None` is any address.
    let mut regions: Vec<(Option<PrefixRange>, Option<PrefixRange>, TcpTarget)> = Vec::new();
    if let Some(vs) = virtual_service_for(ctx, &service.hostname, |vs| !vs.spec.tcp.is_empty()) {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        for route in &vs.spec.tcp {
            let applicable: Vec<&L4MatchAttributes> =
                route.r#match.iter().filter(|m| l4_match_applies(ctx, m, port)).collect();
            if !route.r#match.is_empty() && applicable.is_empty() {
                continue;
            }
            let Some(target) = target(ctx, ns, &route.route, port) else { continue };
            if route.r#match.is_empty() {
                regions.push((None, None, target));
                continue;
            }
            for m in applicable {
                let source = match m.source_subnet.as_str() {
                    "" => None,
                    subnet => match cidrs(std::slice::from_ref(&m.source_subnet)).pop() {
                        Some(range) => Some(range),
                        None => {
                            tracing::debug!(subnet, "match skipped: its sourceSubnet is not a subnet");
                            continue;
                        }
                    },
                };
                let destinations = cidrs(&m.destination_subnets);
                if destinations.is_empty() {
                    if !m.destination_subnets.is_empty() {
                        continue;
                    }
                    regions.push((None, source.clone(), target.clone()));
                }
                for destination in destinations {
                    regions.push((Some(destination), source.clone(), target.clone()));
                }
            }
        }
    }
    let own = TcpTarget::Cluster(outbound_cluster_name(port, "", &service.hostname));
    chains.extend(first_match_chains(&regions, own));
    chains
}

/// Filter chains that give each connection the target of the first region (in route order)
/// holding its destination and source, with the service's own cluster for the rest; the last
/// chain takes any destination and source.
///
/// Envoy does not try chains in order: it picks the most specific destination prefix, then,
/// among the chains with that prefix, the most specific source prefix, and a connection that
/// no source prefix of its chosen destination takes matches nothing. So a later route with a
/// narrower subnet would take connections an earlier route holds. Instead there is a chain
/// for every pair of a destination and a source prefix the routes name (CIDR prefixes are
/// nested or disjoint, so the pairs cover every case), carrying the first route holding that
/// pair; a destination whose sources all go the same way keeps one chain.
fn first_match_chains(
    regions: &[(Option<PrefixRange>, Option<PrefixRange>, TcpTarget)],
    own: TcpTarget,
) -> Vec<L4Chain> {
    fn holds(outer: &Option<PrefixRange>, inner: &Option<PrefixRange>) -> bool {
        match (outer, inner) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(outer), Some(inner)) => range_contains(outer, inner),
        }
    }
    let mut destinations: Vec<Option<PrefixRange>> = Vec::new();
    let mut sources: Vec<Option<PrefixRange>> = vec![None];
    for (destination, source, _) in regions {
        if destination.is_some() && !destinations.contains(destination) {
            destinations.push(destination.clone());
        }
        if !sources.contains(source) {
            sources.push(source.clone());
        }
    }
    // Any destination last, so the catch-all chain ends the list.
    destinations.push(None);
    let target_of = |destination: &Option<PrefixRange>, source: &Option<PrefixRange>| {
        regions
            .iter()
            .find(|(d, s, _)| holds(d, destination) && holds(s, source))
            .map_or(&own, |(_, _, target)| target)
            .clone()
    };
    // Wider sources first, so each source knows the chain Envoy would give it without one of
    // its own: that of the narrowest wider source already given a chain.
    sources.sort_by_key(|s| s.as_ref().map_or(0, |(_, len)| *len + 1));
    let mut chains = Vec::new();
    for destination in &destinations {
        let mut given: Vec<(&Option<PrefixRange>, TcpTarget)> = vec![(&None, target_of(destination, &None))];
        for source in sources.iter().filter(|s| s.is_some()) {
            let target = target_of(destination, source);
            let inherited = given.iter().rev().find(|(wider, _)| holds(wider, source)).map(|(_, t)| t);
            if inherited != Some(&target) {
                chains.push(L4Chain {
                    prefix_ranges: destination.iter().cloned().collect(),
                    source_prefix_ranges: source.iter().cloned().collect(),
                    server_names: Vec::new(),
                    target: target.clone(),
                });
                given.push((source, target));
            }
        }
        chains.push(L4Chain {
            prefix_ranges: destination.iter().cloned().collect(),
            source_prefix_ranges: Vec::new(),
            server_names: Vec::new(),
            target: given.swap_remove(0).1,
        });
    }
    chains
}

/// The first mesh VirtualService (snapshot order) with a host covering `hostname` that
/// `wanted` accepts.
fn virtual_service_for<'a>(
    ctx: &'a Context<'_>,
    hostname: &str,
    wanted: impl Fn(&VirtualService) -> bool,
) -> Option<&'a VirtualService> {
    ctx.mesh_virtual_services().map(|vs| vs.as_ref()).find(|vs| {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        wanted(vs) && vs.spec.hosts.iter().any(|h| host_matches(&resolve_host(h, ns), hostname))
    })
}

fn l4_match_applies(ctx: &Context<'_>, m: &L4MatchAttributes, port: u32) -> bool {
    common_match(ctx, m.port, &m.source_labels, &m.gateways, &m.source_namespace, port)
}

fn tls_match_applies(ctx: &Context<'_>, m: &TlsMatchAttributes, port: u32) -> bool {
    common_match(ctx, m.port, &m.source_labels, &m.gateways, &m.source_namespace, port)
}

fn common_match(
    ctx: &Context<'_>,
    match_port: Option<u32>,
    source_labels: &std::collections::BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: &str,
    port: u32,
) -> bool {
    match_port.is_none_or(|p| p == port)
        && labels_match(source_labels, &ctx.proxy.labels)
        && (gateways.is_empty() || gateways.iter().any(|g| g == "mesh"))
        && (source_namespace.is_empty() || source_namespace == ctx.proxy.namespace)
}

/// The clusters of a route's destinations (hosts resolved in the VirtualService's
/// namespace). A destination without a port uses its service's only port, else `port`.
pub(crate) fn target(
    ctx: &Context<'_>,
    vs_namespace: &str,
    route: &[RouteDestination],
    port: u32,
) -> Option<TcpTarget> {
    let clusters = route
        .iter()
        .filter_map(|rd| {
            let dest = rd.destination.as_ref()?;
            let host = resolve_host(&dest.host, vs_namespace);
            let dest_port = dest.port.as_ref().and_then(|p| p.number).unwrap_or_else(|| {
                match ctx.service(&host).map(|s| s.ports.as_slice()) {
                    Some([only]) => only.port,
                    _ => port,
                }
            });
            let weight = u32::try_from(rd.weight.unwrap_or(0)).unwrap_or(0);
            Some((outbound_cluster_name(dest_port, &dest.subset, &host), weight))
        })
        .collect();
    TcpTarget::from_weighted(clusters)
}

/// `10.0.0.0/8` or a bare address (a host route) as (prefix, length); bad entries are
/// logged and skipped.
fn cidrs(subnets: &[String]) -> Vec<PrefixRange> {
    subnets
        .iter()
        .filter_map(|s| match prefix_range(s) {
            Ok(range) => Some(range),
            Err(why) => {
                tracing::warn!(subnet = %s, "ignoring subnet: {why}");
                None
            }
        })
        .collect()
}

/// `10.0.0.0/8` or a bare address (a host route) as (prefix, length), or why it is neither.
pub(crate) fn prefix_range(subnet: &str) -> Result<PrefixRange, &'static str> {
    let (ip, len) = subnet.split_once('/').unwrap_or((subnet, ""));
    let addr = ip.parse::<IpAddr>().map_err(|_| "not an IP address or CIDR")?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() { Some(full) } else { len.parse().ok().filter(|l| *l <= full) };
    let len = len.ok_or("bad prefix length")?;
    Ok((addr.to_string(), len))
}

/// Whether every address of `inner` is in `outer`.
pub(crate) fn range_contains(outer: &PrefixRange, inner: &PrefixRange) -> bool {
    let (Ok(a), Ok(b)) = (outer.0.parse::<IpAddr>(), inner.0.parse::<IpAddr>()) else { return false };
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    let ((a, full_a), (b, full_b)) = (bits(a), bits(b));
    if full_a != full_b || inner.1 < outer.1 {
        return false;
    }
    // The top `outer.1` bits of the address, as a u128 aligned to the left.
    let mask = if outer.1 == 0 { 0 } else { u128::MAX << (128 - outer.1) };
    a & mask == b & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let got =
            cidrs(&["10.0.0.0/8".into(), "1.2.3.4".into(), "fd00::/64".into(), "x/8".into(), "1.2.3.4/40".into()]);
        assert_eq!(got, [("10.0.0.0".into(), 8), ("1.2.3.4".into(), 32), ("fd00::".into(), 64)]);
    }

    #[test]
    fn range_containment() {
        let r = |s: &str| prefix_range(s).unwrap();
        let cases = [
            ("10.0.0.0/8", "10.1.0.0/16", true),
            ("10.0.0.0/8", "10.0.0.0/8", true),
            ("10.1.0.0/16", "10.0.0.0/8", false),
            ("10.0.0.0/8", "11.0.0.0/16", false),
            ("10.0.0.0/8", "10.2.3.4", true),
            ("0.0.0.0/0", "192.168.1.0/24", true),
            ("fd00::/64", "fd00::1", true),
            ("fd00::/64", "fd01::1", false),
            // Families never contain each other.
            ("0.0.0.0/0", "fd00::1", false),
            ("::/0", "10.0.0.1", false),
        ];
        for (outer, inner, want) in cases {
            assert_eq!(range_contains(&r(outer), &r(inner)), want, "{outer} ⊇ {inner}");
        }
        assert!(prefix_range("10.0.0.0/33").is_err() && prefix_range("ten").is_err());
    }
}
