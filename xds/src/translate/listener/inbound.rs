//! Inbound listeners. With iptables, `virtualInbound` (15006) takes every connection to the
//! workload and picks a chain by destination port: one per declared workload port (HTTP →
//! HCM with an inline route to `inbound|<port>||`, TCP → tcp_proxy to it, sniffed → both),
//! a passthrough chain for undeclared ports, and a blackhole chain for 15006 itself. Ports
//! with a `bind` (Sidecar ingress, capture mode NONE) get a listener of their own instead.
//! Each port's chains follow its PeerAuthentication mode ([`crate::translate::security`]):
//! DISABLE keeps plaintext chains only; STRICT has only chains that terminate Istio mTLS
//! (matched on `transport_protocol: tls`, client certificate required, its identity forwarded
//! to the app in `x-forwarded-client-cert`); PERMISSIVE has both, told apart by the TLS
//! inspector. Over mTLS a sniffed port is served as TCP: the client's ALPN does not say
//! whether HTTP follows.

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::{TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, MaxStreamDuration};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};

use super::hcm::{Routes, TcpTarget, hcm_filter, http_connection_manager, tcp_proxy};
use super::outbound::capture_ports;
use super::{SNIFFED_HTTP_PROTOCOLS, VIRTUAL_INBOUND_BLACKHOLE, detection_timeout, filter_chain, listener, set_chains};
use crate::model::{InterceptionMode, Protocol};
use crate::translate::authz;
use crate::translate::context::{
    BLACKHOLE_CLUSTER, Context, INBOUND_PASSTHROUGH_CLUSTER, InboundPort, VIRTUAL_INBOUND, inbound_cluster_name,
    listener_name,
};
use crate::translate::security::{PortMtls, inbound_mode, inbound_tls_socket};
use crate::translate::telemetry::{self, Side};

const WILDCARD: &str = "0.0.0.0";
/// Name of the chain for connections to ports the workload did not declare.
pub const VIRTUAL_INBOUND_PASSTHROUGH: &str = "virtualInbound";

/// Inbound listeners of `ctx.proxy` (unsorted).
pub(super) fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let ports = ctx.inbound_ports();
    // Logs and metrics depend on the service a port serves: built once per port (0: the
    // chains of undeclared ports), not once per chain.
    let logs = std::iter::once(0)
        .chain(ports.iter().map(|p| p.port))
        .map(|port| (port, telemetry::access_logs(ctx, Side::Server, ctx.inbound_service(port))))
        .collect();
    let filters = ChainFilters {
        logs,
        tracing: telemetry::HcmTrace::of(ctx, Side::Server),
        http: authz::http_filters(ctx.snapshot, ctx.proxy),
        tcp: authz::network_filters(ctx.snapshot, ctx.proxy),
    };
    let mut out: Vec<Listener> = ports
        .iter()
        .filter_map(|p| {
            let bind = p.bind.as_deref()?;
            let name = listener_name(bind, p.port);
            let mut l = listener(name.clone(), bind, p.port, TrafficDirection::Inbound, true);
            let mode = inbound_mode(ctx.snapshot, ctx.proxy, p.port);
            set_chains(&mut l, port_chains(p, &name, None, &filters, mode), detection_timeout(ctx));
            Some(l)
        })
        .collect();
    if ctx.proxy.interception != InterceptionMode::None {
        out.push(virtual_inbound(ctx, &ports, &filters));
    }
    out
}

/// What every inbound chain carries besides its routing: access logs and metrics, tracing,
/// and authorization.
struct ChainFilters {
    /// Access logs and metrics by workload port (0: no declared port).
    logs: std::collections::BTreeMap<u32, Vec<AccessLog>>,
    tracing: telemetry::HcmTrace,
    /// Authentication (JWT) and authorization (RBAC) HTTP filters, before the router.
    http: Vec<HttpFilter>,
    /// Network RBAC filters, before tcp_proxy.
    tcp: Vec<Filter>,
}

impl ChainFilters {
    /// Access logs and metrics of a chain serving `port` (0: no declared port).
    fn logs(&self, port: u32) -> &[AccessLog] {
        self.logs.get(&port).map_or(&[], Vec::as_slice)
    }

    fn tcp_proxy(&self, cluster: &str, port: u32) -> Vec<Filter> {
        let mut filters = self.tcp.clone();
        filters.push(tcp_proxy(&TcpTarget::Cluster(cluster.to_owned()), self.logs(port)));
        filters
    }
}

fn virtual_inbound(ctx: &Context<'_>, ports: &[InboundPort], filters: &ChainFilters) -> Listener {
    let (_, inbound_port) = capture_ports(ctx);
    let mut l = listener(VIRTUAL_INBOUND.to_owned(), WILDCARD, inbound_port, TrafficDirection::Inbound, true);
    l.bind_to_port = None;
    l.use_original_dst = Some(BoolValue { value: true });
    if ctx.proxy.interception == InterceptionMode::Tproxy {
        l.transparent = Some(BoolValue { value: true });
    }
    let mut chains = vec![filter_chain(
        VIRTUAL_INBOUND_BLACKHOLE,
        Some(port_match(inbound_port)),
        vec![tcp_proxy(&TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_owned()), filters.logs(0))],
    )];
    for p in ports.iter().filter(|p| p.bind.is_none()) {
        if p.port == inbound_port {
            tracing::warn!(proxy = %ctx.proxy, port = p.port, "workload port is the inbound capture port; skipped");
            continue;
        }
        let mode = inbound_mode(ctx.snapshot, ctx.proxy, p.port);
        chains.extend(port_chains(p, &listener_name(WILDCARD, p.port), Some(p.port), filters, mode));
    }
    // Undeclared ports follow the workload's mode without a port.
    let passthrough = || filters.tcp_proxy(INBOUND_PASSTHROUGH_CLUSTER, 0);
    let mode = inbound_mode(ctx.snapshot, ctx.proxy, 0);
    for (transport, socket) in transports(mode, &[]) {
        let matched = transport.map(|t| FilterChainMatch { transport_protocol: t.to_owned(), ..Default::default() });
        let mut chain = filter_chain(VIRTUAL_INBOUND_PASSTHROUGH, matched, passthrough());
        chain.transport_socket = socket;
        chains.push(chain);
    }
    set_chains(&mut l, chains, detection_timeout(ctx));
    l
}

fn port_match(port: u32) -> FilterChainMatch {
    FilterChainMatch { destination_port: Some(UInt32Value { value: port }), ..Default::default() }
}

/// The transports a port in `mode` accepts: `(transport_protocol to match, socket)`. With one
/// transport nothing needs matching; mTLS chains get the server TLS socket.
fn transports(mode: PortMtls, alpn: &[&str]) -> Vec<(Option<&'static str>, Option<TransportSocket>)> {
    match mode {
        PortMtls::Disable => vec![(None, None)],
        PortMtls::Strict => vec![(Some("tls"), Some(inbound_tls_socket(alpn)))],
        PortMtls::Permissive => vec![(Some("tls"), Some(inbound_tls_socket(alpn))), (Some("raw_buffer"), None)],
    }
}

/// The chains serving one workload port in `mode`, matched on `destination_port` when given
/// (`virtualInbound`) and on nothing else for a listener of its own.
fn port_chains(
    p: &InboundPort,
    name: &str,
    destination_port: Option<u32>,
    filters: &ChainFilters,
    mode: PortMtls,
) -> Vec<FilterChain> {
    let alpn: &[&str] = if p.protocol.is_http() { &["h2", "http/1.1"] } else { &[] };
    let own_tls = p.tls.as_ref().and_then(|tls| match crate::translate::gateway::sidecar_ingress_tls(tls, alpn) {
        Ok(socket) => socket.map(|s| vec![(Some("tls"), Some(s))]),
        Err(e) => {
            tracing::warn!(port = p.port, "Sidecar ingress tls not applied (mesh mTLS settings instead): {e}");
            None
        }
    });
    let mut chains = Vec::new();
    for (transport, socket) in own_tls.unwrap_or_else(|| transports(mode, alpn)) {
        let base = FilterChainMatch {
            destination_port: destination_port.map(|value| UInt32Value { value }),
            transport_protocol: transport.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let mut port = protocol_chains(p, name, base, filters, socket.is_some());
        for chain in &mut port {
            chain.transport_socket.clone_from(&socket);
        }
        chains.extend(port);
    }
    chains
}

/// One transport's chains of a port: HTTP, TCP, or both when the protocol is sniffed (over
/// mTLS, TCP).
fn protocol_chains(
    p: &InboundPort,
    name: &str,
    base: FilterChainMatch,
    filters: &ChainFilters,
    mtls: bool,
) -> Vec<FilterChain> {
    let base_match = (base != FilterChainMatch::default()).then(|| base.clone());
    let cluster = inbound_cluster_name(p.port);
    let hcm = || {
        let mut hcm = http_connection_manager(
            &format!("inbound_{name}"),
            Routes::Inline(Box::new(inbound_route_config(p.port, p.protocol))),
            filters.logs(p.port),
        );
        filters.tracing.apply(&mut hcm);
        // The caller's workload (for the metrics), taken off the request first.
        hcm.http_filters.insert(0, telemetry::peer_workload_filter());
        // Authorization right before the router (after authentication, when there is any).
        let router = hcm.http_filters.len().saturating_sub(1);
        hcm.http_filters.splice(router..router, filters.http.iter().cloned());
        if mtls {
            // The app learns who called: the client certificate's SPIFFE id (URI) and more.
            hcm.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
            hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
                subject: Some(BoolValue { value: true }),
                uri: true,
                dns: true,
                ..Default::default()
            });
        }
        hcm_filter(hcm)
    };
    let tcp = || filters.tcp_proxy(&cluster, p.port);
    if p.protocol.is_http() {
        vec![filter_chain(name, base_match, vec![hcm()])]
    } else if p.protocol.is_auto() && !mtls {
        let http_match = FilterChainMatch {
            application_protocols: SNIFFED_HTTP_PROTOCOLS.iter().map(|s| (*s).to_owned()).collect(),
            ..base
        };
        vec![filter_chain(name, Some(http_match), vec![hcm()]), filter_chain(name, base_match, tcp())]
    } else {
        vec![filter_chain(name, base_match, tcp())]
    }
}

/// The route table of an inbound HTTP port: everything to `inbound|<port>||`, no timeout
/// (the caller's sidecar enforces it), and a retry when the connection to the app was reset
/// before the request was sent (the app restarting); gRPC streams are not retried.
pub fn inbound_route_config(port: u32, protocol: Protocol) -> RouteConfiguration {
    let cluster = inbound_cluster_name(port);
    let no_timeout = Duration { seconds: 0, nanos: 0 };
    let retry_policy = (protocol != Protocol::Grpc).then(|| RetryPolicy {
        retry_on: "reset-before-request".to_owned(),
        num_retries: Some(UInt32Value { value: 2 }),
        ..Default::default()
    });
    let route = Route {
        name: "default".to_owned(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".to_owned())), ..Default::default() }),
        decorator: Some(Decorator { operation: format!("{cluster}/*"), ..Default::default() }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
            timeout: Some(no_timeout),
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_max: Some(no_timeout),
                ..Default::default()
            }),
            retry_policy,
            ..Default::default()
        })),
        ..Default::default()
    };
    RouteConfiguration {
        name: cluster,
        validate_clusters: Some(BoolValue { value: false }),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_owned()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    }
}
