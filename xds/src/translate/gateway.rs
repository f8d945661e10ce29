//! Gateway proxies (`router`): the `Gateway` servers whose `selector` matches the proxy become
//! really bound listeners, the VirtualServices bound to those gateways (`gateways:`) become
//! their route configurations, and `credentialName`s become SDS secrets served over ADS.
//!
//! Names follow istiod, so `proxy-config` output and dashboards read the same:
//! - listener `<address>_<port>`, the port being the gateway workload's target port (a Service
//!   port 80 → target 8080 listens on 8080; without a Service, the server port). The address
//!   is the server's `bind`, else `0.0.0.0`; a gateway run with interception mode NONE (no
//!   network namespace of its own, as in the local mesh) binds its own address instead, as
//!   sidecars in that mode do;
//! - plain HTTP servers of one port share route configuration `http.<port>`; each terminated
//!   HTTPS server has its own, `https.<number>.<port name>.<gateway>.<namespace>`;
//! - virtual hosts `<host>:<number>`; a route configuration without any is a `blackhole:<number>`
//!   host with no routes (404);
//! - secrets `kubernetes://<credentialName>` and `kubernetes://<credentialName>-cacert` (the
//!   client CA, with the revocation list of its Secret, `ca.crl`/`crl`, inline beside it).
//!
//! ISTIO_MUTUAL terminates with the gateway's workload certificate (`default` from the agent's
//! SDS) and requires a client certificate of the mesh (`ROOTCA`, `subjectAltNames` when given).
//! A server whose credential is missing is skipped (Envoy would otherwise keep the whole
//! listener warming), and so is a MUTUAL server whose client CA's Secret has a CRL that is not
//! a PEM CRL (Envoy would refuse it; served without it, revoked clients would get in).
//! AUTO_PASSTHROUGH routes mesh clients' mTLS by SNI to SNI-DNAT clusters without terminating
//! it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, TrafficDirection, TransportSocket, data_source};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate,
    TlsParameters, common_tls_context, tls_parameters,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use rudder_config::networking::Gateway;
use rudder_config::networking::gateway::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use rudder_config::networking::virtual_service::TlsMatchAttributes;

use super::cluster::{san_validation, sds_grpc_secret};
use super::context::{BLACKHOLE_CLUSTER, Context, host_matches, listener_name, resolve_host};
use super::credentials;
use super::listener::hcm::{Routes, TcpTarget, hcm_filter, http_connection_manager, tcp_proxy};
use super::listener::{filter_chain, l4_routes, listener, set_chains};
use super::route::{http_routes_for_gateways, ipv6_compliant};
use crate::model::{InterceptionMode, Protocol, labels_match};

const WILDCARD: &str = "0.0.0.0";
/// SDS resource names of credentials, as istiod names them.
pub use super::credentials::{CA_SUFFIX, CREDENTIAL_PREFIX};
use super::security::{ROOT_SECRET, TRANSPORT_SOCKET_TLS, WORKLOAD_SECRET};

/// One server of a Gateway that selects the proxy.
#[derive(Debug)]
struct GatewayServer<'a> {
    gateway: &'a Arc<Gateway>,
    server: &'a Server,
    /// `<namespace>/<name>` of the gateway.
    gateway_name: String,
    number: u32,
    port_name: &'a str,
    protocol: Protocol,
    /// The port the proxy listens on.
    target_port: u32,
    bind: &'a str,
}

impl GatewayServer<'_> {
    fn namespace(&self) -> &str {
        self.gateway.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn name(&self) -> &str {
        self.gateway.metadata.name.as_deref().unwrap_or_default()
    }

    fn tls_mode(&self) -> Option<ServerTlsMode> {
        self.server.tls.as_ref().map(|t| t.mode.unwrap_or_default())
    }

    /// Whether the proxy terminates TLS for this server and routes HTTP behind it.
    fn terminates_tls(&self) -> bool {
        self.protocol == Protocol::Https
            && matches!(
                self.tls_mode(),
                Some(
                    ServerTlsMode::Simple
                        | ServerTlsMode::Mutual
                        | ServerTlsMode::OptionalMutual
                        | ServerTlsMode::IstioMutual
                )
            )
    }

    fn https_route_name(&self) -> String {
        format!("https.{}.{}.{}.{}", self.number, self.port_name, self.name(), self.namespace())
    }
}

/// The servers of every Gateway selecting `ctx.proxy`, in snapshot order.
fn servers<'a>(ctx: &Context<'a>) -> Vec<GatewayServer<'a>> {
    let mut out = Vec::new();
    for gateway in &ctx.snapshot.gateways {
        if !labels_match(&gateway.spec.selector, &ctx.proxy.labels) {
            continue;
        }
        let namespace = gateway.metadata.namespace.as_deref().unwrap_or("default");
        let gateway_name = format!("{namespace}/{}", gateway.metadata.name.as_deref().unwrap_or_default());
        for server in &gateway.spec.servers {
            let Some(port) = server.port.as_ref() else { continue };
            let Some(number) = port.number.filter(|n| *n != 0) else { continue };
            out.push(GatewayServer {
                gateway,
                server,
                gateway_name: gateway_name.clone(),
                number,
                port_name: &port.name,
                protocol: Protocol::of_port(Some(&port.protocol), &port.name),
                target_port: target_port(ctx, number),
                bind: if !server.bind.is_empty() {
                    &server.bind
                } else if ctx.proxy.interception == InterceptionMode::None {
                    ctx.proxy.primary_ip()
                } else {
                    WILDCARD
                },
            });
        }
    }
    out
}

/// The port the gateway workload listens on for server port `number`: the target port of a
/// service port `number` whose endpoints include the proxy's address (how a Kubernetes
/// Service maps 80 → 8080 for the stock ingress gateway), else `number` itself.
fn target_port(ctx: &Context<'_>, number: u32) -> u32 {
    for (host, _, endpoint) in ctx.snapshot.endpoints_at(ctx.proxy.primary_ip()) {
        let Some(service) = ctx.snapshot.services.get(host) else { continue };
        if service.ports.iter().any(|p| p.port == number && p.name == endpoint.service_port_name) {
            return endpoint.port;
        }
    }
    number
}

/// The names a VirtualService in `vs_namespace` may use for the gateway `<ns>/<name>`.
fn gateway_names_for(gateway_name: &str, vs_namespace: &str) -> Vec<String> {
    let mut names = vec![gateway_name.to_owned()];
    if let Some((ns, name)) = gateway_name.split_once('/')
        && ns == vs_namespace
    {
        names.push(name.to_owned());
    }
    names
}

/// Whether a server host (`host`, `ns/host`, `./host`, `*/host`) admits `vs_host` of a
/// VirtualService in `vs_namespace`; the matching host, the more specific of the two.
fn server_host_match(server_host: &str, gateway_namespace: &str, vs_namespace: &str, vs_host: &str) -> Option<String> {
    let host = rudder_config::hosts::scoped_host(server_host, gateway_namespace, vs_namespace)?;
    if host_matches(host, vs_host) {
        Some(vs_host.to_owned())
    } else if host_matches(vs_host, host) {
        Some(host.to_owned())
    } else {
        None
    }
}

/// The server ports that reach each port the gateway listens on (its routes are named by the
/// latter): EnvoyFilter route matches may name either.
pub(crate) fn port_map(ctx: &Context<'_>) -> BTreeMap<u32, Vec<u32>> {
    let mut map: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for server in servers(ctx) {
        map.entry(server.target_port).or_default().push(server.number);
    }
    map
}

/// Listeners of a gateway proxy: one per (bind, target port), sorted by name.
pub fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let logs = super::telemetry::access_logs(ctx, super::telemetry::Side::Client, None);
    let tracing = super::telemetry::HcmTrace::of(ctx, super::telemetry::Side::Client);
    // Authorization, and the dynamic forward proxy when a DYNAMIC_DNS service may be routed
    // to, right before the router.
    let mut before_router = super::authz::http_filters(ctx.snapshot, ctx.proxy);
    if super::dynamic_dns::in_view(ctx, None) {
        before_router.push(super::dynamic_dns::filter());
    }
    let servers = servers(ctx);
    let mut by_listener: BTreeMap<(&str, u32), Vec<&GatewayServer<'_>>> = BTreeMap::new();
    for server in &servers {
        by_listener.entry((server.bind, server.target_port)).or_default().push(server);
    }
    let mut out = Vec::new();
    for ((bind, port), servers) in by_listener {
        let name = listener_name(bind, port);
        let mut chains = Vec::new();
        let mut plain_http = false;
        for server in &servers {
            if server.protocol.is_http() {
                // Every plain HTTP server of the port shares one chain and `http.<port>`.
                if !plain_http {
                    plain_http = true;
                    chains.push(http_chain(
                        &name,
                        None,
                        None,
                        Routes::Rds(format!("http.{port}")),
                        &logs,
                        &before_router,
                        &tracing,
                    ));
                }
            } else if server.terminates_tls() {
                match downstream_tls(ctx, server) {
                    Ok(socket) => {
                        let route = Routes::Rds(server.https_route_name());
                        chains.push(http_chain(
                            &name,
                            sni_match(&server.server.hosts),
                            Some(socket),
                            route,
                            &logs,
                            &before_router,
                            &tracing,
                        ));
                    }
                    Err(why) => tracing::warn!(
                        gateway = %server.gateway_name, port = server.number, "server skipped: {why}"
                    ),
                }
            } else if server.tls_mode() == Some(ServerTlsMode::Passthrough)
                && matches!(server.protocol, Protocol::Tls | Protocol::Https)
            {
                chains.extend(passthrough_chains(ctx, server, &logs));
            } else if server.tls_mode() == Some(ServerTlsMode::AutoPassthrough)
                && matches!(server.protocol, Protocol::Tls | Protocol::Https)
            {
                chains.push(auto_passthrough_chain(server, &logs));
            } else if server.protocol == Protocol::Tcp && server.server.tls.is_none() {
                chains.extend(tcp_chains(ctx, server, &logs));
            } else {
                tracing::warn!(
                    gateway = %server.gateway_name,
                    port = server.number,
                    protocol = ?server.protocol,
                    tls = ?server.tls_mode(),
                    "server not supported (TLS termination for a non-HTTPS protocol, or TLS settings on a plain protocol); skipped"
                );
            }
        }
        if chains.is_empty() {
            continue;
        }
        let mut l = listener(name, bind, port, TrafficDirection::Outbound, true);
        set_chains(&mut l, chains, None);
        out.push(l);
    }
    // WasmPlugin `match.ports` may name the port a chain listens on or its server's port.
    super::wasm::add_filters(ctx, super::wasm::Class::Gateway, &mut out, |port| {
        let mut ports = vec![port];
        ports.extend(servers.iter().filter(|s| s.target_port == port).map(|s| s.number));
        ports
    });
    out
}

fn sni_match(hosts: &[String]) -> Option<FilterChainMatch> {
    let names: BTreeSet<&str> = hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, host)| host)).collect();
    // A `*` host admits any SNI (and none): no server_names match.
    (!names.contains("*") && !names.is_empty()).then(|| FilterChainMatch {
        server_names: names.into_iter().map(str::to_owned).collect(),
        ..Default::default()
    })
}

fn http_chain(
    listener: &str,
    filter_chain_match: Option<FilterChainMatch>,
    transport_socket: Option<TransportSocket>,
    routes: Routes,
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
    before_router: &[HttpFilter],
    tracing: &super::telemetry::HcmTrace,
) -> FilterChain {
    let mut hcm = http_connection_manager(&format!("outbound_{listener}"), routes, logs);
    tracing.apply(&mut hcm);
    // The gateway is the edge: the client's address is the remote address.
    hcm.use_remote_address = Some(BoolValue { value: true });
    // AuthorizationPolicies selecting the gateway workload (and the like), before the router.
    let router = hcm.http_filters.len().saturating_sub(1);
    hcm.http_filters.splice(router..router, before_router.iter().cloned());
    let mut chain = filter_chain("", filter_chain_match, vec![hcm_filter(hcm)]);
    chain.transport_socket = transport_socket;
    chain
}

/// SNI-routed chains of a PASSTHROUGH server: the `tls` routes of the VirtualServices bound to
/// its gateway whose `sniHosts` the server's hosts admit.
fn passthrough_chains(
    ctx: &Context<'_>,
    server: &GatewayServer<'_>,
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for vs in bound_virtual_services(ctx, &server.gateway_name) {
        let vs_ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        let names = gateway_names_for(&server.gateway_name, vs_ns);
        for route in &vs.spec.tls {
            let Some(target) = l4_routes::target(ctx, vs_ns, &route.route, server.number) else { continue };
            for m in route.r#match.iter().filter(|m| tls_match_applies(m, server.number, &names)) {
                let sni: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .filter(|sni| {
                        server
                            .server
                            .hosts
                            .iter()
                            .any(|h| server_host_match(h, server.namespace(), vs_ns, sni).is_some())
                    })
                    .cloned()
                    .collect();
                if sni.is_empty() {
                    continue;
                }
                let chain_match = FilterChainMatch { server_names: sni, ..Default::default() };
                chains.push(filter_chain("", Some(chain_match), vec![tcp_proxy(&target, logs)]));
            }
        }
    }
    chains
}

/// The chain of an AUTO_PASSTHROUGH server: a mesh client's Istio mTLS passes through
/// untouched to the service its SNI names (`outbound_.<port>_.<subset>_.<host>`, the name of
/// one of the gateway's SNI-DNAT clusters, see [`with_sni_dnat_clusters`]); the workload
/// behind terminates it. Server hosts narrow the SNIs accepted (`*` takes any).
fn auto_passthrough_chain(
    server: &GatewayServer<'_>,
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> FilterChain {
    let hosts: Vec<&str> = server.server.hosts.iter().map(|h| h.rsplit('/').next().unwrap_or(h)).collect();
    let server_names = if hosts.contains(&"*") { Vec::new() } else { hosts.iter().map(|h| (*h).to_owned()).collect() };
    let sni_cluster = envoy_types::pb::envoy::config::listener::v3::Filter {
        name: SNI_CLUSTER_FILTER.to_owned(),
        config_type: Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3::SniCluster {},
        ))),
    };
    // tcp_proxy's own cluster is only the fallback: sni_cluster names the real one.
    let proxy = tcp_proxy(&TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_owned()), logs);
    let chain_match = FilterChainMatch { server_names, ..Default::default() };
    filter_chain("", Some(chain_match), vec![sni_cluster, proxy])
}

const SNI_CLUSTER_FILTER: &str = "envoy.filters.network.sni_cluster";

/// A gateway with an AUTO_PASSTHROUGH server also gets, for each outbound service cluster
/// `outbound|<port>|<subset>|<host>`, a copy named as Istio mTLS clients name it in their SNI,
/// `outbound_.<port>_.<subset>_.<host>`, that forwards the client's TLS as it is (no TLS of its
/// own); endpoints are the original cluster's. Sorted by name, as clusters are.
pub fn with_sni_dnat_clusters(
    ctx: &Context<'_>,
    mut clusters: Vec<envoy_types::pb::envoy::config::cluster::v3::Cluster>,
) -> Vec<envoy_types::pb::envoy::config::cluster::v3::Cluster> {
    let passthrough = servers(ctx).iter().any(|s| s.tls_mode() == Some(ServerTlsMode::AutoPassthrough));
    if !passthrough {
        return clusters;
    }
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    // EDS copies would share their originals' assignments, and Envoy does not hand a new
    // cluster an assignment another cluster already holds: the copies carry theirs inline
    // (gateways are translated again on every change, endpoints included).
    let hosts: BTreeSet<String> =
        clusters.iter().filter_map(|c| c.name.splitn(4, '|').nth(3).map(str::to_owned)).collect();
    let mut assignments: BTreeMap<String, _> =
        super::endpoint::for_services(ctx.snapshot, &hosts).into_iter().map(|a| (a.cluster_name.clone(), a)).collect();
    let mut copies = Vec::new();
    for cluster in &clusters {
        let mut parts = cluster.name.splitn(4, '|');
        let (Some("outbound"), Some(port), Some(subset), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mut copy = cluster.clone();
        copy.name = format!("outbound_.{port}_.{subset}_.{host}");
        copy.transport_socket = None;
        copy.transport_socket_matches.clear();
        copy.alt_stat_name = cluster.name.clone();
        if copy.eds_cluster_config.take().is_some() {
            let Some(mut assignment) = assignments.remove(&cluster.name) else { continue };
            assignment.cluster_name.clone_from(&copy.name);
            copy.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            copy.load_assignment = Some(assignment);
        }
        copies.push(copy);
    }
    clusters.extend(copies);
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters
}

fn tls_match_applies(m: &TlsMatchAttributes, number: u32, names: &[String]) -> bool {
    m.port.is_none_or(|p| p == 0 || p == number)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| names.contains(g)))
}

/// The chains of a plain TCP server: the `tcp` routes of the VirtualServices bound to its
/// gateway that apply to the port, in order, up to the first that takes every client. A route
/// whose applicable matches all name a `sourceSubnet` takes only those clients: a chain per
/// subnet, matched on the client's address (Envoy's `source_prefix_ranges`, which picks the
/// longest prefix, so a subnet inside one an earlier route took is left out: the earlier route
/// wins, as routes are tried in order). Istio ignores `sourceSubnet` on gateways (every client
/// takes the first route); Rudder honours it as the field documents.
fn tcp_chains(
    ctx: &Context<'_>,
    server: &GatewayServer<'_>,
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    let mut taken: Vec<l4_routes::PrefixRange> = Vec::new();
    for vs in bound_virtual_services(ctx, &server.gateway_name) {
        let vs_ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        let admitted = vs.spec.hosts.iter().any(|h| {
            let host = resolve_host(h, vs_ns);
            server.server.hosts.iter().any(|s| server_host_match(s, server.namespace(), vs_ns, &host).is_some())
        });
        if !admitted {
            continue;
        }
        let names = gateway_names_for(&server.gateway_name, vs_ns);
        for (i, route) in vs.spec.tcp.iter().enumerate() {
            let applicable: Vec<(usize, &rudder_config::networking::virtual_service::L4MatchAttributes)> = route
                .r#match
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    m.port.is_none_or(|p| p == 0 || p == server.number)
                        && (m.gateways.is_empty() || m.gateways.iter().any(|g| names.contains(g)))
                })
                .collect();
            if !route.r#match.is_empty() && applicable.is_empty() {
                continue;
            }
            let target = l4_routes::target(ctx, vs_ns, &route.route, server.number);
            if route.r#match.is_empty() || applicable.iter().any(|(_, m)| m.source_subnet.is_empty()) {
                // Every (other) client.
                if let Some(target) = target {
                    chains.push(filter_chain("", None, vec![tcp_proxy(&target, logs)]));
                }
                return chains;
            }
            let Some(target) = target else { continue };
            for (j, m) in applicable {
                let range = match l4_routes::prefix_range(&m.source_subnet) {
                    Ok(range) => range,
                    Err(why) => {
                        tracing::warn!(
                            virtual_service = %format!("{vs_ns}/{}", vs.metadata.name.as_deref().unwrap_or_default()),
                            field = %format!("spec.tcp[{i}].match[{j}].sourceSubnet"),
                            subnet = %m.source_subnet,
                            "match skipped: {why}"
                        );
                        continue;
                    }
                };
                if taken.iter().any(|t| l4_routes::range_contains(t, &range)) {
                    continue;
                }
                let chain_match = FilterChainMatch {
                    source_prefix_ranges: l4_routes::cidr_ranges(std::slice::from_ref(&range)),
                    ..Default::default()
                };
                taken.push(range);
                chains.push(filter_chain("", Some(chain_match), vec![tcp_proxy(&target, logs)]));
            }
        }
    }
    chains
}

/// VirtualServices naming the gateway `<ns>/<name>` in `gateways` (short names resolved in the
/// VirtualService's namespace), in snapshot order.
fn bound_virtual_services<'a>(
    ctx: &Context<'a>,
    gateway_name: &str,
) -> impl Iterator<Item = &'a Arc<rudder_config::networking::VirtualService>> {
    let gateway_name = gateway_name.to_owned();
    ctx.snapshot.virtual_services.iter().filter(move |vs| {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        let names = gateway_names_for(&gateway_name, ns);
        vs.spec.gateways.iter().any(|g| names.contains(g))
    })
}

/// The TLS context of a terminated server: certificates by SDS from its credential (or the
/// files it names), the client CA for MUTUAL.
fn downstream_tls(ctx: &Context<'_>, server: &GatewayServer<'_>) -> Result<TransportSocket, String> {
    let tls = server.server.tls.as_ref().ok_or("no tls settings")?;
    let mode = tls.mode.unwrap_or_default();
    let mut common = CommonTlsContext {
        tls_params: Some(tls_params(tls)),
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        ..Default::default()
    };
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    if mode == ServerTlsMode::IstioMutual {
        // The gateway's own workload certificate; clients present one of the mesh.
        if !ctx.proxy.has_workload_certificate() {
            return Err("ISTIO_MUTUAL needs the gateway's workload certificate (run discovery with the mesh CA)".into());
        }
        common.tls_certificate_sds_secret_configs = vec![sds_grpc_secret(WORKLOAD_SECRET)];
        let validation = client_checks(tls).unwrap_or_default();
        common.validation_context_type = Some(common_tls_context::ValidationContextType::CombinedValidationContext(
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(validation),
                validation_context_sds_secret_config: Some(sds_grpc_secret(ROOT_SECRET)),
                ..Default::default()
            },
        ));
    } else if let Some(first) = credential_names(tls).first().copied() {
        // credentialName, or credentialNames (e.g. an RSA and an ECDSA certificate): Envoy
        // picks the one the client supports.
        for name in credential_names(tls) {
            let credential = credentials::credential(ctx, name).ok_or_else(|| {
                format!("credentialName {name:?}: no such Secret in namespace {}", ctx.proxy.namespace)
            })?;
            if credential.certificate_chain.is_empty() {
                return Err(format!("credentialName {name:?}: the Secret has no certificate"));
            }
            common.tls_certificate_sds_secret_configs.push(ads_secret(&format!("{CREDENTIAL_PREFIX}{name}")));
        }
        if mutual {
            let ca_name = client_ca_secret(tls, first);
            credentials::client_ca(ctx, ca_name)?;
            let ca = ads_secret(&format!("{CREDENTIAL_PREFIX}{ca_name}{CA_SUFFIX}"));
            common.validation_context_type = Some(match client_checks(tls) {
                None => common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(ca),
                Some(checks) => common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(checks),
                        validation_context_sds_secret_config: Some(ca),
                        ..Default::default()
                    },
                ),
            });
        }
    } else if let Some(pairs) = certificate_files(tls) {
        set_file_certificates(&mut common, tls, &pairs, mutual)?;
    } else {
        return Err(
            "SIMPLE/MUTUAL needs credentialName(s), serverCertificate and privateKey, or tlsCertificates".into()
        );
    }
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual),
        }),
        ..Default::default()
    };
    Ok(tls_socket(context))
}

/// The TLS a sidecar terminates for a Sidecar `ingress` port: SIMPLE or MUTUAL with
/// certificate files mounted in the proxy (`serverCertificate`/`privateKey` or
/// `tlsCertificates`, `caCertificates` for MUTUAL, with the client checks). `Ok(None)` for modes
/// that leave the port to mesh mTLS (ISTIO_MUTUAL, PASSTHROUGH).
pub(crate) fn sidecar_ingress_tls(tls: &ServerTlsSettings, alpn: &[&str]) -> Result<Option<TransportSocket>, String> {
    let mode = tls.mode.unwrap_or_default();
    let mutual = match mode {
        ServerTlsMode::Simple => false,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => true,
        _ => return Ok(None),
    };
    if !credential_names(tls).is_empty() {
        return Err("credentialName is not read for Sidecar ingress; mount the certificate files".into());
    }
    let pairs =
        certificate_files(tls).ok_or("SIMPLE/MUTUAL needs serverCertificate and privateKey, or tlsCertificates")?;
    let mut common = CommonTlsContext {
        tls_params: Some(tls_params(tls)),
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    set_file_certificates(&mut common, tls, &pairs, mutual)?;
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: mode == ServerTlsMode::Mutual }),
        ..Default::default()
    };
    Ok(Some(tls_socket(context)))
}

/// Certificates and (MUTUAL) the client CA from files on the proxy: `pairs` of chain and key;
/// the CA from `caCertificates`, else the first `tlsCertificates[].caCertificates`, with the
/// client checks.
fn set_file_certificates(
    common: &mut CommonTlsContext,
    tls: &ServerTlsSettings,
    pairs: &[(&str, &str)],
    mutual: bool,
) -> Result<(), String> {
    common.tls_certificates = pairs
        .iter()
        .map(|(chain, key)| TlsCertificate {
            certificate_chain: Some(file(chain)),
            private_key: Some(file(key)),
            ..Default::default()
        })
        .collect();
    if mutual {
        let ca = std::iter::once(tls.ca_certificates.as_str())
            .chain(tls.tls_certificates.iter().map(|c| c.ca_certificates.as_str()))
            .find(|ca| !ca.is_empty())
            .ok_or("MUTUAL with file certificates needs caCertificates")?;
        common.validation_context_type =
            Some(common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(file(ca)),
                ..client_checks(tls).unwrap_or_default()
            }));
    }
    Ok(())
}

fn tls_socket(context: DownstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TRANSPORT_SOCKET_TLS.to_owned(),
        config_type: Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            pack_any(context),
        )),
    }
}

/// The Secrets a server's certificates come from: `credentialName`, else `credentialNames`.
fn credential_names(tls: &ServerTlsSettings) -> Vec<&str> {
    match tls.credential_name.as_str() {
        "" => tls.credential_names.iter().map(String::as_str).collect(),
        name => vec![name],
    }
}

/// The Secret whose CA verifies a MUTUAL server's clients: `caCertCredentialName`, else the
/// (first) certificate's Secret.
fn client_ca_secret<'a>(tls: &'a ServerTlsSettings, first: &'a str) -> &'a str {
    match tls.ca_cert_credential_name.as_str() {
        "" => first,
        name => name,
    }
}

/// Certificate and key files: `serverCertificate`/`privateKey`, else `tlsCertificates`.
fn certificate_files(tls: &ServerTlsSettings) -> Option<Vec<(&str, &str)>> {
    if !tls.server_certificate.is_empty() && !tls.private_key.is_empty() {
        return Some(vec![(tls.server_certificate.as_str(), tls.private_key.as_str())]);
    }
    let pairs: Vec<(&str, &str)> =
        tls.tls_certificates.iter().map(|c| (c.server_certificate.as_str(), c.private_key.as_str())).collect();
    (!pairs.is_empty()).then_some(pairs)
}

/// What a MUTUAL (or ISTIO_MUTUAL) server checks of a client certificate beyond its CA:
/// `subjectAltNames`, `verifyCertificateSpki`, `verifyCertificateHash` and the `caCrl` file;
/// `None` when the server sets none of them.
fn client_checks(tls: &ServerTlsSettings) -> Option<CertificateValidationContext> {
    if tls.subject_alt_names.is_empty()
        && tls.verify_certificate_spki.is_empty()
        && tls.verify_certificate_hash.is_empty()
        && tls.ca_crl.is_empty()
    {
        return None;
    }
    Some(CertificateValidationContext {
        verify_certificate_spki: tls.verify_certificate_spki.clone(),
        verify_certificate_hash: tls.verify_certificate_hash.clone(),
        crl: (!tls.ca_crl.is_empty()).then(|| file(&tls.ca_crl)),
        ..san_validation(&tls.subject_alt_names)
    })
}

fn tls_params(tls: &ServerTlsSettings) -> TlsParameters {
    let version = |v: Option<TlsProtocol>, default: tls_parameters::TlsProtocol| {
        (match v {
            Some(TlsProtocol::TlsV1_0) => tls_parameters::TlsProtocol::TlSv10,
            Some(TlsProtocol::TlsV1_1) => tls_parameters::TlsProtocol::TlSv11,
            Some(TlsProtocol::TlsV1_2) => tls_parameters::TlsProtocol::TlSv12,
            Some(TlsProtocol::TlsV1_3) => tls_parameters::TlsProtocol::TlSv13,
            Some(TlsProtocol::TlsAuto) | None => default,
        }) as i32
    };
    TlsParameters {
        tls_minimum_protocol_version: version(tls.min_protocol_version, tls_parameters::TlsProtocol::TlSv12),
        tls_maximum_protocol_version: version(tls.max_protocol_version, tls_parameters::TlsProtocol::TlSv13),
        cipher_suites: tls.cipher_suites.clone(),
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::Filename(path.to_owned())), ..Default::default() }
}

fn ads_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_owned(), sds_config: Some(super::listener::hcm::ads_config_source()) }
}

/// The SDS secrets the proxy's listeners name, sorted by name.
pub fn secrets(ctx: &Context<'_>) -> Vec<Secret> {
    let mut out: BTreeMap<String, Secret> = BTreeMap::new();
    for server in servers(ctx) {
        let Some(tls) = server.server.tls.as_ref() else { continue };
        let names = credential_names(tls);
        if !server.terminates_tls() || names.is_empty() {
            continue;
        }
        for name in &names {
            if let Some(secret) = credentials::certificate(ctx, name) {
                out.entry(secret.name.clone()).or_insert(secret);
            }
        }
        let name = client_ca_secret(tls, names[0]);
        if matches!(tls.mode.unwrap_or_default(), ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
            && let Ok(secret) = credentials::validation(ctx, name)
        {
            out.entry(secret.name.clone()).or_insert(secret);
        }
    }
    out.into_values().collect()
}

/// Route configurations of a gateway proxy: `http.<port>` per listener with plain HTTP
/// servers, one per terminated HTTPS server; sorted by name.
pub fn routes(ctx: &Context<'_>) -> Vec<RouteConfiguration> {
    let servers = servers(ctx);
    let mut plain: BTreeMap<u32, Vec<&GatewayServer<'_>>> = BTreeMap::new();
    let mut out = Vec::new();
    for server in &servers {
        if server.protocol.is_http() {
            plain.entry(server.target_port).or_default().push(server);
        } else if server.terminates_tls() {
            out.push(route_configuration(ctx, server.https_route_name(), &[server]));
        }
    }
    for (port, servers) in plain {
        out.push(route_configuration(ctx, format!("http.{port}"), &servers));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|later, first| later.name == first.name);
    out
}

fn route_configuration(ctx: &Context<'_>, name: String, servers: &[&GatewayServer<'_>]) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    let mut seen_domains = HashSet::new();
    let number = servers.first().map_or(0, |s| s.number);
    for server in servers {
        let redirect = server.server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for vs in bound_virtual_services(ctx, &server.gateway_name) {
            let vs_ns = vs.metadata.namespace.as_deref().unwrap_or("default");
            let hosts: Vec<String> = vs
                .spec
                .hosts
                .iter()
                .filter_map(|h| {
                    let host = resolve_host(h, vs_ns);
                    server.server.hosts.iter().find_map(|s| server_host_match(s, server.namespace(), vs_ns, &host))
                })
                .collect();
            if hosts.is_empty() {
                continue;
            }
            let names = gateway_names_for(&server.gateway_name, vs_ns);
            let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let routes = http_routes_for_gateways(ctx, vs, server.number, &name_refs);
            if routes.is_empty() && !redirect {
                continue;
            }
            for host in hosts {
                if !seen_domains.insert(host.to_ascii_lowercase()) {
                    tracing::debug!(route = %name, host, "host already routed by an earlier VirtualService; skipped");
                    continue;
                }
                virtual_hosts.push(VirtualHost {
                    name: format!("{host}:{}", server.number),
                    // The route configuration ignores ports in Host, so one domain covers both.
                    domains: vec![ipv6_compliant(&host)],
                    routes: routes.clone(),
                    request_headers_to_add: vec![super::telemetry::source_workload_header()],
                    require_tls: if redirect {
                        TlsRequirementType::All as i32
                    } else {
                        TlsRequirementType::None as i32
                    },
                    include_request_attempt_count: true,
                    ..Default::default()
                });
            }
        }
        // A redirecting server redirects even hosts no VirtualService routes.
        if redirect {
            for host in &server.server.hosts {
                let host = host.split_once('/').map_or(host.as_str(), |(_, h)| h);
                if seen_domains.insert(host.to_ascii_lowercase()) {
                    virtual_hosts.push(VirtualHost {
                        name: format!("{host}:{}", server.number),
                        domains: vec![ipv6_compliant(host)],
                        require_tls: TlsRequirementType::All as i32,
                        ..Default::default()
                    });
                }
            }
        }
    }
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{number}"),
            domains: vec!["*".to_owned()],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name,
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        max_direct_response_body_size_bytes: Some(UInt32Value { value: super::route::MAX_DIRECT_RESPONSE_BODY_BYTES }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}
