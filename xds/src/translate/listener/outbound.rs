//! Outbound listeners. With iptables (REDIRECT/TPROXY), `virtualOutbound` takes every
//! outbound connection and hands it to the listener for its original destination: one
//! unbound `0.0.0.0_<port>` per HTTP/sniffed port (routes by RDS `"<port>"`), one unbound
//! `<vip>_<port>` per TCP service address. Without iptables (capture mode NONE) there is no
//! hand-off, so each port gets one listener really bound at the proxy's address.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::hcm::{Routes, TcpTarget, hcm_filter, http_connection_manager, tcp_proxy};
use super::l4_routes::{self, L4Chain, PrefixRange, cidr_ranges};
use super::{
    PASSTHROUGH_FILTER_CHAIN, SNIFFED_HTTP_PROTOCOLS, VIRTUAL_OUTBOUND_BLACKHOLE, VIRTUAL_OUTBOUND_CATCHALL_TCP,
    detection_timeout, filter_chain, listener, set_chains,
};
use crate::model::{InterceptionMode, Protocol, Service};
use crate::translate::context::{BLACKHOLE_CLUSTER, Context, VIRTUAL_OUTBOUND, listener_name};
use crate::translate::telemetry::{self, Side};

const WILDCARD: &str = "0.0.0.0";
const DEFAULT_PROXY_LISTEN_PORT: u32 = 15001;
const DEFAULT_PROXY_INBOUND_LISTEN_PORT: u32 = 15006;
/// Ports the proxy itself listens on (admin 15000, agent 15020, readiness 15021, DNS 15053,
/// Envoy's Prometheus 15090). A service port among them (every gateway Service has 15021)
/// would collide with the bootstrap's own listener and have the whole listener update
/// rejected, so no outbound listener is built for it, as istiod skips them.
const PROXY_OWN_PORTS: [u32; 5] = [15000, 15020, 15021, 15053, 15090];

/// Outbound listeners of `ctx.proxy` (unsorted).
pub(super) fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let logs = telemetry::access_logs(ctx, Side::Client, None);
    let mut by_port = services_by_port(ctx);
    by_port.retain(|port, _| !PROXY_OWN_PORTS.contains(port));
    if ctx.proxy.interception == InterceptionMode::None {
        let ip = ctx.proxy.primary_ip();
        let inbound_binds: Vec<(String, u32)> =
            ctx.inbound_ports().into_iter().filter_map(|p| Some((p.bind?, p.port))).collect();
        return by_port
            .iter()
            .filter(|(port, _)| {
                let taken = inbound_binds.iter().any(|(b, p)| b == ip && p == *port);
                if taken {
                    tracing::warn!(proxy = %ctx.proxy, port, "outbound port is bound by an inbound listener; skipped");
                }
                !taken
            })
            .filter_map(|(port, services)| bound_port_listener(ctx, ip, *port, services, &logs))
            .collect();
    }
    let (listen_port, inbound_port) = capture_ports(ctx);
    let mut out = vec![virtual_outbound(ctx, listen_port, &logs)];
    for (port, services) in &by_port {
        if *port == listen_port || *port == inbound_port {
            tracing::warn!(proxy = %ctx.proxy, port, "service port collides with the proxy's capture port; skipped");
            continue;
        }
        match ctx.egress_bind(*port) {
            // A Sidecar egress listener that binds (`bind`, or `captureMode: NONE`).
            Some(bind) => out.extend(bound_port_listener(ctx, &bind, *port, services, &logs)),
            None => out.extend(captured_port_listeners(ctx, *port, services, &logs)),
        }
    }
    out
}

/// The proxy's outbound and inbound capture ports (mesh `proxyListenPort`,
/// `proxyInboundListenPort`; 15001 and 15006 by default).
pub(super) fn capture_ports(ctx: &Context<'_>) -> (u32, u32) {
    let mesh = &ctx.snapshot.mesh;
    (
        mesh.proxy_listen_port.unwrap_or(DEFAULT_PROXY_LISTEN_PORT),
        mesh.proxy_inbound_listen_port.unwrap_or(DEFAULT_PROXY_INBOUND_LISTEN_PORT),
    )
}

/// Visible services by port number, each with that port's protocol (or the one the Sidecar's
/// egress listener for the port declares), in hostname order.
fn services_by_port<'a>(ctx: &Context<'a>) -> BTreeMap<u32, Vec<(&'a Service, Protocol)>> {
    let mut by_port: BTreeMap<u32, Vec<(&'a Service, Protocol)>> = BTreeMap::new();
    let mut declared: BTreeMap<u32, Option<Protocol>> = BTreeMap::new();
    for service in ctx.services() {
        for port in service.ports.iter().filter(|p| ctx.port_visible(service, p.port)) {
            let protocol = declared.entry(port.port).or_insert_with(|| ctx.egress_port_protocol(port.port));
            by_port.entry(port.port).or_default().push((service.as_ref(), protocol.unwrap_or(port.protocol)));
        }
    }
    by_port
}

/// `virtualOutbound`: takes every captured connection; ports without a listener of their own
/// fall to the catch-all chain. Connections to 15001 itself are dropped so that traffic
/// addressed to the capture port cannot loop through it.
fn virtual_outbound(ctx: &Context<'_>, listen_port: u32, logs: &[AccessLog]) -> Listener {
    let mut l = listener(VIRTUAL_OUTBOUND.to_owned(), WILDCARD, listen_port, TrafficDirection::Outbound, true);
    l.bind_to_port = None;
    l.use_original_dst = Some(BoolValue { value: true });
    if ctx.proxy.interception == InterceptionMode::Tproxy {
        l.transparent = Some(BoolValue { value: true });
    }
    let blackhole = filter_chain(
        VIRTUAL_OUTBOUND_BLACKHOLE,
        Some(FilterChainMatch { destination_port: Some(UInt32Value { value: listen_port }), ..Default::default() }),
        vec![tcp_proxy(&TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_owned()), logs)],
    );
    let catch_all = filter_chain(
        VIRTUAL_OUTBOUND_CATCHALL_TCP,
        None,
        vec![tcp_proxy(&TcpTarget::Cluster(ctx.unknown_destination_cluster()), logs)],
    );
    set_chains(&mut l, vec![blackhole, catch_all], None);
    l
}

/// The chain for connections no other chain of a captured port takes.
fn passthrough_chain(ctx: &Context<'_>, logs: &[AccessLog]) -> FilterChain {
    filter_chain(
        PASSTHROUGH_FILTER_CHAIN,
        None,
        vec![tcp_proxy(&TcpTarget::Cluster(ctx.unknown_destination_cluster()), logs)],
    )
}

/// The HCM of an outbound HTTP port: routes from RDS `"<port>"`.
fn outbound_hcm(
    ctx: &Context<'_>,
    listener: &str,
    port: u32,
    logs: &[AccessLog],
) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    let mut hcm = http_connection_manager(&format!("outbound_{listener}"), Routes::Rds(port.to_string()), logs);
    telemetry::HcmTrace::of(ctx, Side::Client).apply(&mut hcm);
    if crate::translate::dynamic_dns::in_view(ctx, Some(port)) {
        crate::translate::dynamic_dns::add_filter(&mut hcm);
    }
    hcm_filter(hcm)
}

fn sniffed_http_match(prefix_ranges: Vec<envoy_types::pb::envoy::config::core::v3::CidrRange>) -> FilterChainMatch {
    FilterChainMatch {
        prefix_ranges,
        application_protocols: SNIFFED_HTTP_PROTOCOLS.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

/// A chain for one L4 route, restricted to `addresses` when the route names no subnets of
/// its own.
fn l4_filter_chain(chain: &L4Chain, addresses: &[PrefixRange], logs: &[AccessLog]) -> FilterChain {
    let ranges = if chain.prefix_ranges.is_empty() { addresses } else { &chain.prefix_ranges };
    let m = FilterChainMatch {
        prefix_ranges: cidr_ranges(ranges),
        source_prefix_ranges: cidr_ranges(&chain.source_prefix_ranges),
        server_names: chain.server_names.clone(),
        ..Default::default()
    };
    let m = (m != FilterChainMatch::default()).then_some(m);
    filter_chain("", m, vec![tcp_proxy(&chain.target, logs)])
}

/// A service's addresses as prefix ranges, split into host addresses (each gets a listener
/// of its own) and wider CIDR blocks (chains on the wildcard listener). Entries that are
/// not addresses are ignored.
fn address_ranges(service: &Service) -> (Vec<PrefixRange>, Vec<PrefixRange>) {
    let mut hosts = Vec::new();
    let mut blocks = Vec::new();
    for address in &service.addresses {
        let (ip, len) = address.split_once('/').unwrap_or((address, ""));
        let Ok(ip) = ip.parse::<std::net::IpAddr>() else { continue };
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let Some(len) = (if len.is_empty() { Some(full) } else { len.parse::<u32>().ok().filter(|l| *l <= full) })
        else {
            continue;
        };
        if len == full { &mut hosts } else { &mut blocks }.push((ip.to_string(), len));
    }
    (hosts, blocks)
}

/// Listeners of one port when iptables captures traffic.
fn captured_port_listeners(
    ctx: &Context<'_>,
    port: u32,
    services: &[(&Service, Protocol)],
    logs: &[AccessLog],
) -> Vec<Listener> {
    let wildcard_name = listener_name(WILDCARD, port);
    let mut out: BTreeMap<String, Listener> = BTreeMap::new();
    // Chains of the shared `0.0.0.0_<port>` listener, if the port needs one.
    let mut wildcard_chains: Vec<FilterChain> = Vec::new();
    let mut wildcard_catch_all: Option<String> = None;

    let http_like: Vec<&Service> = services.iter().filter(|(_, p)| !p.is_tcp()).map(|(s, _)| *s).collect();
    let sniffed = services.iter().any(|(_, p)| p.is_auto());
    if !http_like.is_empty() {
        let hcm = outbound_hcm(ctx, &wildcard_name, port, logs);
        if sniffed {
            // A sniffed port routes HTTP by RDS and other bytes by address: per service
            // address one HTTP and one TCP chain (an address match outranks an ALPN-only
            // match in Envoy, so the HTTP chain must carry the address too), then a generic
            // HTTP chain for addresses the registry does not know.
            for (service, _) in services.iter().filter(|(_, p)| p.is_auto()) {
                let (ranges, _) = address_ranges(service);
                if ranges.is_empty() {
                    continue;
                }
                let http_match = sniffed_http_match(cidr_ranges(&ranges));
                wildcard_chains.push(filter_chain("", Some(http_match), vec![hcm.clone()]));
                // Only the catch-all TCP route: subnet routes would also take HTTP bytes.
                if let Some(tcp) = l4_routes::chains(ctx, service, port).pop() {
                    wildcard_chains.push(l4_filter_chain(&tcp, &ranges, logs));
                }
            }
            wildcard_chains.push(filter_chain("", Some(sniffed_http_match(Vec::new())), vec![hcm]));
        } else {
            wildcard_chains.push(filter_chain("", None, vec![hcm]));
            wildcard_catch_all = Some(http_like.first().map(|s| s.hostname.clone()).unwrap_or_default());
        }
    }

    for (service, _) in services.iter().filter(|(_, p)| p.is_tcp()) {
        let chains = l4_routes::chains(ctx, service, port);
        let (ips, cidrs) = address_ranges(service);
        for (ip, _) in &ips {
            let name = listener_name(ip, port);
            if out.contains_key(&name) {
                tracing::warn!(proxy = %ctx.proxy, listener = %name, service = %service.hostname, "address and port already taken by another service; skipped");
                continue;
            }
            let mut l = listener(name, ip, port, TrafficDirection::Outbound, false);
            set_chains(&mut l, chains.iter().map(|c| l4_filter_chain(c, &[], logs)).collect(), detection_timeout(ctx));
            out.insert(l.name.clone(), l);
        }
        if !cidrs.is_empty() {
            wildcard_chains.extend(chains.iter().map(|c| l4_filter_chain(c, &cidrs, logs)));
        } else if ips.is_empty() {
            // No address: the whole port on the wildcard listener, first service wins.
            if let Some(owner) = &wildcard_catch_all {
                tracing::warn!(proxy = %ctx.proxy, port, service = %service.hostname, %owner, "TCP service without an address on a port another service already claims; skipped");
                continue;
            }
            wildcard_chains.extend(chains.iter().map(|c| l4_filter_chain(c, &[], logs)));
            wildcard_catch_all = Some(service.hostname.clone());
        }
    }

    if !wildcard_chains.is_empty() {
        let mut l = listener(wildcard_name, WILDCARD, port, TrafficDirection::Outbound, false);
        set_chains(&mut l, wildcard_chains, detection_timeout(ctx));
        l.default_filter_chain = Some(passthrough_chain(ctx, logs));
        out.insert(l.name.clone(), l);
    }
    out.into_values().collect()
}

/// The service's own cluster on `port`.
fn own(port: u32, service: &Service) -> TcpTarget {
    TcpTarget::Cluster(crate::translate::context::outbound_cluster_name(port, "", &service.hostname))
}

/// Capture mode NONE: one listener bound at `ip:port`. HTTP and sniffed ports get the HCM
/// (sniffed ones fall back to the first such service's TCP cluster); a TCP-only port goes
/// to its first service. Other services on the port are logged and left out.
fn bound_port_listener(
    ctx: &Context<'_>,
    ip: &str,
    port: u32,
    services: &[(&Service, Protocol)],
    logs: &[AccessLog],
) -> Option<Listener> {
    let name = listener_name(ip, port);
    let http_like: Vec<(&Service, Protocol)> = services.iter().copied().filter(|(_, p)| !p.is_tcp()).collect();
    let chains = if let Some((first, _)) = http_like.first() {
        for (service, _) in services.iter().filter(|(_, p)| p.is_tcp()) {
            tracing::warn!(proxy = %ctx.proxy, listener = %name, service = %service.hostname, "TCP service on a port bound for HTTP; skipped");
        }
        let hcm = outbound_hcm(ctx, &name, port, logs);
        match http_like.iter().find(|(_, p)| p.is_auto()) {
            Some((sniffed, _)) => {
                let tcp =
                    l4_routes::chains(ctx, sniffed, port).pop().map(|c| c.target).unwrap_or_else(|| own(port, first));
                vec![
                    filter_chain("", Some(sniffed_http_match(Vec::new())), vec![hcm]),
                    filter_chain("", None, vec![tcp_proxy(&tcp, logs)]),
                ]
            }
            None => vec![filter_chain("", None, vec![hcm])],
        }
    } else {
        let (first, _) = services.first()?;
        for (service, _) in &services[1..] {
            tracing::warn!(proxy = %ctx.proxy, listener = %name, service = %service.hostname, owner = %first.hostname, "port already bound for another TCP service; skipped");
        }
        l4_routes::chains(ctx, first, port).iter().map(|c| l4_filter_chain(c, &[], logs)).collect()
    };
    let mut l = listener(name, ip, port, TrafficDirection::Outbound, true);
    set_chains(&mut l, chains, detection_timeout(ctx));
    Some(l)
}
