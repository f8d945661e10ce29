//! Listeners of a sidecar: `virtualOutbound` (15001) and one listener per outbound service
//! port, `virtualInbound` (15006) with a filter chain per workload port, and the really
//! bound listeners of capture mode NONE and Sidecar `bind`s.
//!
//! Submodules: [`hcm`] (the HTTP connection manager and tcp_proxy every listener kind
//! shares, gateways included), [`access_log`] (file logs from MeshConfig), [`l4_routes`]
//! (VirtualService `tcp`/`tls` routes as filter chains), `outbound` and `inbound`.
//!
//! Inbound chains follow PeerAuthentication (see `inbound` and [`crate::translate::security`]).

pub mod access_log;
pub mod hcm;
mod inbound;
pub mod l4_routes;
mod outbound;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol as SocketProtocol};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use prost::Message;

use super::context::Context;

pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const VIRTUAL_OUTBOUND_BLACKHOLE: &str = "virtualOutbound-blackhole";
pub const VIRTUAL_OUTBOUND_CATCHALL_TCP: &str = "virtualOutbound-catchall-tcp";
pub const VIRTUAL_INBOUND_BLACKHOLE: &str = "virtualInbound-blackhole";
pub const PASSTHROUGH_FILTER_CHAIN: &str = "PassthroughFilterChain";
/// ALPN values http_inspector reports for plaintext HTTP; used to pick the HTTP chain of a
/// port whose protocol is sniffed.
pub const SNIFFED_HTTP_PROTOCOLS: [&str; 2] = ["http/1.1", "h2c"];

/// Listeners for outbound traffic, sorted by name.
pub fn outbound(ctx: &Context<'_>) -> Vec<Listener> {
    let mut listeners = outbound::listeners(ctx);
    super::wasm::add_filters(ctx, super::wasm::Class::SidecarOutbound, &mut listeners, |port| vec![port]);
    sorted(listeners)
}

/// Listeners for traffic to the proxy's own workload, sorted by name.
pub fn inbound(ctx: &Context<'_>) -> Vec<Listener> {
    let mut listeners = inbound::listeners(ctx);
    super::wasm::add_filters(ctx, super::wasm::Class::SidecarInbound, &mut listeners, |port| vec![port]);
    sorted(listeners)
}

fn sorted(mut listeners: Vec<Listener>) -> Vec<Listener> {
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    listeners
}

/// A TCP socket address.
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            protocol: SocketProtocol::Tcp as i32,
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A listener named `name` on `ip:port`; `bind` false for listeners reached only through
/// the original-destination hand-off of `virtualOutbound`.
pub(crate) fn listener(name: String, ip: &str, port: u32, direction: TrafficDirection, bind: bool) -> Listener {
    Listener {
        name,
        address: Some(socket_address(ip, port)),
        traffic_direction: direction as i32,
        bind_to_port: Some(BoolValue { value: bind }),
        ..Default::default()
    }
}

pub(crate) fn filter_chain(
    name: &str,
    filter_chain_match: Option<FilterChainMatch>,
    filters: Vec<Filter>,
) -> FilterChain {
    FilterChain { name: name.to_owned(), filter_chain_match, filters, ..Default::default() }
}

/// The listener filters the chains need (TLS inspection for SNI matches, HTTP inspection for
/// ALPN matches), in the order Istio installs them.
fn listener_filters(chains: &[FilterChain]) -> Vec<ListenerFilter> {
    let matches = || chains.iter().filter_map(|c| c.filter_chain_match.as_ref());
    let mut filters = Vec::new();
    if matches().any(|m| !m.server_names.is_empty() || !m.transport_protocol.is_empty()) {
        filters.push(ListenerFilter {
            name: TLS_INSPECTOR.to_owned(),
            config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(TlsInspector::default()))),
            ..Default::default()
        });
    }
    if matches().any(|m| !m.application_protocols.is_empty()) {
        filters.push(ListenerFilter {
            name: HTTP_INSPECTOR.to_owned(),
            config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(HttpInspector::default()))),
            ..Default::default()
        });
    }
    filters
}

/// Sets the chains and the listener filters they need. Chains with the same match as an
/// earlier one are dropped (Envoy refuses duplicate matches; the first rule wins).
pub(crate) fn set_chains(
    listener: &mut Listener,
    chains: Vec<FilterChain>,
    detection_timeout: Option<std::time::Duration>,
) {
    let mut seen = std::collections::BTreeSet::new();
    let chains: Vec<FilterChain> = chains
        .into_iter()
        .filter(|c| {
            let key = c.filter_chain_match.clone().unwrap_or_default().encode_to_vec();
            let fresh = seen.insert(key);
            if !fresh {
                tracing::debug!(listener = %listener.name, chain = %c.name, "dropping filter chain with a duplicate match");
            }
            fresh
        })
        .collect();
    listener.listener_filters = listener_filters(&chains);
    if !listener.listener_filters.is_empty() {
        // Sniffing waits for the client's first bytes. The mesh's protocolDetectionTimeout
        // bounds that wait (0s, the default, means no bound); a connection that times out
        // goes on with what is known rather than being closed.
        let timeout = detection_timeout.unwrap_or_default();
        listener.listener_filters_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(timeout.subsec_nanos()).unwrap_or(0),
        });
        listener.continue_on_listener_filters_timeout = true;
    }
    listener.filter_chains = chains;
}

/// The mesh's protocol detection timeout.
fn detection_timeout(ctx: &Context<'_>) -> Option<std::time::Duration> {
    ctx.snapshot.mesh.protocol_detection_timeout.map(|d| d.to_std())
}
