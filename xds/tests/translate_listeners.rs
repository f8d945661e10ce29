//! Listener translation for sidecars: table tests per listener kind and capture mode, and
//! a real Envoy (`--mode validate`) accepting the listener sets.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;
use prost::Message;
use rudder_config::mesh::{AccessLogEncoding, MeshConfig, OutboundTrafficPolicy, OutboundTrafficPolicyMode};
use rudder_config::networking::{Sidecar, VirtualService};
use rudder_xds::model::{Endpoint, Protocol, Proxy, Resolution, Service, ServicePort, Snapshot};
use rudder_xds::testing::{envoy_accepts, static_cluster};
use rudder_xds::translate::context::Context;
use rudder_xds::translate::listener::{self, access_log, hcm};
use rudder_xds::translate::telemetry;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Fixtures

fn service(host: &str, ports: &[(&str, u32)], addresses: &[&str]) -> Arc<Service> {
    let (name, namespace) = {
        let mut parts = host.split('.');
        (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or("default").to_owned())
    };
    Arc::new(Service {
        hostname: host.to_owned(),
        namespace,
        name,
        ports: ports
            .iter()
            .map(|(n, p)| ServicePort { name: (*n).to_owned(), port: *p, protocol: Protocol::of_port(None, n) })
            .collect(),
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        resolution: Resolution::ClientSideLb,
        mesh_external: false,
        export_to: Vec::new(),
        kubernetes: true,
        traffic_distribution: Default::default(),
        subject_alt_names: Vec::new(),
    })
}

fn endpoint(address: &str, port: u32, port_name: &str) -> Endpoint {
    Endpoint {
        address: address.to_owned(),
        port,
        service_port_name: port_name.to_owned(),
        labels: BTreeMap::new(),
        namespace: "default".to_owned(),
        service_account: "default".to_owned(),
        locality: String::new(),
        weight: 0,
        health: Default::default(),
        tls_mode: "istio".to_owned(),
        workload: "app".to_owned(),
    }
}

const PROXY_IP: &str = "10.1.0.5";

fn proxy(ip: &str, mode: &str) -> Proxy {
    let meta: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(json!({"INTERCEPTION_MODE": mode, "LABELS": {"app": "web", "version": "v1"}})).unwrap();
    Proxy::from_node(&format!("sidecar~{ip}~web-1.default~default.svc.cluster.local"), &meta).unwrap()
}

/// A mesh of: reviews (HTTP 9080), ratings (sniffed 8080, two addresses), mysql (TCP 3306),
/// redis without an address (TCP 6379), a CIDR-addressed external TCP service (TCP 5432),
/// an HTTPS external service and the proxy's own workload `web` (http 80 → 8080 target,
/// tcp 9000).
fn mesh_snapshot(mesh: MeshConfig) -> Snapshot {
    let services = [
        service("reviews.default.svc.cluster.local", &[("http", 9080)], &["10.96.0.10"]),
        service("ratings.default.svc.cluster.local", &[("web", 8080)], &["10.96.0.11", "10.96.0.12"]),
        service("mysql.db.svc.cluster.local", &[("tcp-mysql", 3306)], &["10.96.0.20"]),
        service("redis.db.svc.cluster.local", &[("tcp", 6379)], &[]),
        service("pg.example.com", &[("tcp", 5432)], &["192.168.10.0/24"]),
        service("api.example.com", &[("https", 443)], &["240.0.0.1"]),
        service("web.default.svc.cluster.local", &[("http", 80), ("tcp-admin", 9000)], &["10.96.0.30"]),
    ];
    let mut endpoints = BTreeMap::new();
    endpoints.insert(
        "web.default.svc.cluster.local".to_owned(),
        Arc::new(vec![endpoint(PROXY_IP, 8080, "http"), endpoint(PROXY_IP, 9000, "tcp-admin")]),
    );
    Snapshot {
        mesh,
        services: services.into_iter().map(|s| (s.hostname.clone(), s)).collect(),
        endpoints,
        ..Default::default()
    }
}

fn virtual_service(value: serde_json::Value) -> Arc<VirtualService> {
    let mut v = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService"});
    v.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
    Arc::new(serde_json::from_value(v).unwrap())
}

fn sidecar(value: serde_json::Value) -> Arc<Sidecar> {
    let mut v = json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar"});
    v.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
    Arc::new(serde_json::from_value(v).unwrap())
}

/// A Sidecar for `web` with an HTTP ingress port bound at `bind`, a TCP port and a sniffed
/// port.
fn ingress_sidecar(bind: &str) -> Arc<Sidecar> {
    sidecar(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "workloadSelector": {"labels": {"app": "web"}},
            "ingress": [
                {"port": {"number": 8080, "protocol": "HTTP", "name": "http"}, "bind": bind,
                 "defaultEndpoint": "127.0.0.1:18080"},
                {"port": {"number": 9000, "protocol": "TCP", "name": "tcp"}, "defaultEndpoint": "127.0.0.1:19000"},
                {"port": {"number": 7000, "name": "sniffed"}, "defaultEndpoint": "127.0.0.1:17000"}
            ]
        }
    }))
}

fn with_logs(file: &str, encoding: AccessLogEncoding) -> MeshConfig {
    MeshConfig {
        access_log_file: Some(file.to_owned()),
        access_log_encoding: Some(encoding),
        ..MeshConfig::istio_defaults()
    }
}

fn registry_only() -> MeshConfig {
    MeshConfig {
        outbound_traffic_policy: Some(OutboundTrafficPolicy {
            mode: Some(OutboundTrafficPolicyMode::RegistryOnly),
            tls: None,
        }),
        ..MeshConfig::istio_defaults()
    }
}

fn outbound(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Listener> {
    listener::outbound(&Context::new(snapshot, proxy))
}

fn inbound(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Listener> {
    listener::inbound(&Context::new(snapshot, proxy))
}

// ---------------------------------------------------------------------------------------
// Readers

fn find<'a>(listeners: &'a [Listener], name: &str) -> &'a Listener {
    listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}; have {:?}", names(listeners)))
}

fn names(listeners: &[Listener]) -> Vec<&str> {
    listeners.iter().map(|l| l.name.as_str()).collect()
}

fn address(a: &Option<Address>) -> (String, u32) {
    let Some(Address { address: Some(AddressKind::SocketAddress(s)) }) = a else { panic!("no socket address") };
    let Some(PortSpecifier::PortValue(p)) = s.port_specifier else { panic!("no port") };
    (s.address.clone(), p)
}

fn typed(filter: &Filter) -> &[u8] {
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else { panic!("no typed config") };
    &any.value
}

fn tcp(filter: &Filter) -> TcpProxy {
    assert_eq!(filter.name, hcm::TCP_PROXY);
    TcpProxy::decode(typed(filter)).unwrap()
}

fn tcp_cluster(chain: &FilterChain) -> String {
    match tcp(&chain.filters[0]).cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c,
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| format!("{}:{}", c.name, c.weight)).collect::<Vec<_>>().join(",")
        }
        None => panic!("no cluster"),
    }
}

fn http(filter: &Filter) -> HttpConnectionManager {
    assert_eq!(filter.name, hcm::HTTP_CONNECTION_MANAGER);
    HttpConnectionManager::decode(typed(filter)).unwrap()
}

fn rds_name(chain: &FilterChain) -> String {
    match http(&chain.filters[0]).route_specifier {
        Some(RouteSpecifier::Rds(rds)) => rds.route_config_name,
        other => panic!("not RDS: {other:?}"),
    }
}

fn inline_routes(chain: &FilterChain) -> RouteConfiguration {
    match http(&chain.filters[0]).route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => rc,
        other => panic!("not inline: {other:?}"),
    }
}

fn chain_named<'a>(l: &'a Listener, name: &str) -> &'a FilterChain {
    l.filter_chains.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no chain {name} in {}", l.name))
}

fn ranges(m: &FilterChainMatch) -> Vec<String> {
    m.prefix_ranges
        .iter()
        .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.as_ref().map(|l| l.value).unwrap_or_default()))
        .collect()
}

fn listener_filter_names(l: &Listener) -> Vec<&str> {
    l.listener_filters.iter().map(|f| f.name.as_str()).collect()
}

fn bind_to_port(l: &Listener) -> bool {
    l.bind_to_port.as_ref().is_none_or(|b| b.value)
}

/// Every access log list of every HCM and tcp_proxy in the listeners.
fn all_filter_logs(listeners: &[Listener]) -> Vec<(String, Vec<AccessLog>)> {
    let mut out = Vec::new();
    for l in listeners {
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            for f in &chain.filters {
                let logs = match f.name.as_str() {
                    hcm::HTTP_CONNECTION_MANAGER => http(f).access_log,
                    hcm::TCP_PROXY => tcp(f).access_log,
                    other => panic!("unexpected filter {other}"),
                };
                out.push((format!("{}/{}/{}", l.name, chain.name, f.name), logs));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Outbound, REDIRECT / TPROXY

#[test]
fn virtual_outbound_by_policy_and_mode() {
    let cases = [
        ("REDIRECT", MeshConfig::istio_defaults(), "PassthroughCluster", false),
        ("REDIRECT", registry_only(), "BlackHoleCluster", false),
        ("TPROXY", MeshConfig::istio_defaults(), "PassthroughCluster", true),
    ];
    for (mode, mesh, catch_all, transparent) in cases {
        let snap = mesh_snapshot(mesh);
        let ls = outbound(&snap, &proxy(PROXY_IP, mode));
        let vo = find(&ls, "virtualOutbound");
        assert_eq!(address(&vo.address), ("0.0.0.0".to_owned(), 15001));
        assert_eq!(vo.use_original_dst.as_ref().map(|b| b.value), Some(true));
        assert_eq!(vo.transparent.as_ref().map(|b| b.value).unwrap_or(false), transparent, "{mode}");
        assert_eq!(vo.traffic_direction, TrafficDirection::Outbound as i32);
        assert!(bind_to_port(vo));
        let blackhole = chain_named(vo, "virtualOutbound-blackhole");
        assert_eq!(blackhole.filter_chain_match.as_ref().unwrap().destination_port.as_ref().unwrap().value, 15001);
        assert_eq!(tcp_cluster(blackhole), "BlackHoleCluster");
        let all = chain_named(vo, "virtualOutbound-catchall-tcp");
        assert!(all.filter_chain_match.is_none());
        assert_eq!(tcp_cluster(all), catch_all, "{mode}");
    }
}

#[test]
fn sidecar_outbound_policy_overrides_mesh() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.sidecars.push(sidecar(json!({
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    assert_eq!(
        tcp_cluster(chain_named(find(&ls, "virtualOutbound"), "virtualOutbound-catchall-tcp")),
        "BlackHoleCluster"
    );
    let http_port = find(&ls, "0.0.0.0_9080");
    assert_eq!(tcp_cluster(http_port.default_filter_chain.as_ref().unwrap()), "BlackHoleCluster");
}

#[test]
fn listener_set_names_and_order() {
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    assert_eq!(
        names(&ls),
        [
            "0.0.0.0_5432",
            "0.0.0.0_6379",
            "0.0.0.0_80",
            "0.0.0.0_8080",
            "0.0.0.0_9080",
            "10.96.0.20_3306",
            "10.96.0.30_9000",
            "240.0.0.1_443",
            "virtualOutbound",
        ]
    );
    for l in ls.iter().filter(|l| l.name != "virtualOutbound") {
        assert!(!bind_to_port(l), "{} must not bind", l.name);
        assert_eq!(l.traffic_direction, TrafficDirection::Outbound as i32);
    }
}

#[test]
fn sidecar_egress_listeners_that_bind() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.sidecars.push(sidecar(json!({
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"egress": [
            {"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "bind": "127.0.0.2", "hosts": ["*/*"]},
            {"port": {"number": 8080, "protocol": "HTTP", "name": "web"}, "captureMode": "NONE", "hosts": ["*/*"]},
            {"hosts": ["*/*"]}
        ]}
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let names = names(&ls);
    // 9080 at its bind, 8080 at 127.0.0.1 (capture NONE), both really bound; the rest captured.
    assert!(names.contains(&"127.0.0.2_9080") && names.contains(&"127.0.0.1_8080"), "{names:?}");
    assert!(!names.contains(&"0.0.0.0_9080") && !names.contains(&"0.0.0.0_8080"), "{names:?}");
    assert!(bind_to_port(find(&ls, "127.0.0.2_9080")) && bind_to_port(find(&ls, "127.0.0.1_8080")));
    assert!(names.contains(&"0.0.0.0_80") && !bind_to_port(find(&ls, "0.0.0.0_80")), "{names:?}");
}

#[test]
fn no_listener_on_the_proxys_own_ports() {
    // Every gateway Service has the status port 15021; the sidecar's bootstrap listens there.
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    let gateway = service(
        "istio-ingressgateway.istio-system.svc.cluster.local",
        &[("status-port", 15021), ("http2", 80), ("tcp-metrics", 15090)],
        &["10.96.0.40"],
    );
    snap.services.insert(gateway.hostname.clone(), gateway);
    for mode in ["REDIRECT", "NONE"] {
        let ls = outbound(&snap, &proxy(PROXY_IP, mode));
        let ports: Vec<u32> = ls.iter().map(|l| address(&l.address).1).collect();
        assert!(!ports.contains(&15021) && !ports.contains(&15090), "{mode}: {:?}", names(&ls));
        assert!(ports.contains(&80), "{mode}: {:?}", names(&ls));
    }
}

#[test]
fn http_port_listener() {
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let l = find(&ls, "0.0.0.0_9080");
    assert_eq!(address(&l.address), ("0.0.0.0".to_owned(), 9080));
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.filter_chains[0].filter_chain_match.is_none());
    assert_eq!(rds_name(&l.filter_chains[0]), "9080");
    let h = http(&l.filter_chains[0].filters[0]);
    assert_eq!(h.stat_prefix, "outbound_0.0.0.0_9080");
    assert!(l.listener_filters.is_empty());
    let default = l.default_filter_chain.as_ref().unwrap();
    assert_eq!(default.name, "PassthroughFilterChain");
    assert_eq!(tcp_cluster(default), "PassthroughCluster");
}

#[test]
fn sniffed_port_listener() {
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let l = find(&ls, "0.0.0.0_8080");
    assert_eq!(listener_filter_names(l), ["envoy.filters.listener.http_inspector"]);
    assert!(l.continue_on_listener_filters_timeout);
    assert_eq!(l.listener_filters_timeout, Some(Duration { seconds: 0, nanos: 0 }));
    let summary: Vec<(Vec<String>, Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            let target =
                if c.filters[0].name == hcm::TCP_PROXY { tcp_cluster(c) } else { format!("rds:{}", rds_name(c)) };
            (ranges(&m), m.application_protocols.clone(), target)
        })
        .collect();
    let vips = vec!["10.96.0.11/32".to_owned(), "10.96.0.12/32".to_owned()];
    let alpn = vec!["http/1.1".to_owned(), "h2c".to_owned()];
    assert_eq!(
        summary,
        [
            (vips.clone(), alpn.clone(), "rds:8080".to_owned()),
            (vips, vec![], "outbound|8080||ratings.default.svc.cluster.local".to_owned()),
            (vec![], alpn, "rds:8080".to_owned()),
        ]
    );
    assert_eq!(tcp_cluster(l.default_filter_chain.as_ref().unwrap()), "PassthroughCluster");
}

#[test]
fn tcp_port_listeners() {
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let mysql = find(&ls, "10.96.0.20_3306");
    assert_eq!(address(&mysql.address), ("10.96.0.20".to_owned(), 3306));
    assert_eq!(mysql.filter_chains.len(), 1);
    assert!(mysql.filter_chains[0].filter_chain_match.is_none());
    assert_eq!(tcp_cluster(&mysql.filter_chains[0]), "outbound|3306||mysql.db.svc.cluster.local");
    assert_eq!(tcp(&mysql.filter_chains[0].filters[0]).stat_prefix, "outbound|3306||mysql.db.svc.cluster.local");
    // No address: the wildcard listener carries the service on that port.
    let redis = find(&ls, "0.0.0.0_6379");
    assert_eq!(tcp_cluster(&redis.filter_chains[0]), "outbound|6379||redis.db.svc.cluster.local");
    // A CIDR address: a prefix-matched chain on the wildcard listener.
    let pg = find(&ls, "0.0.0.0_5432");
    assert_eq!(ranges(pg.filter_chains[0].filter_chain_match.as_ref().unwrap()), ["192.168.10.0/24"]);
    assert_eq!(tcp_cluster(&pg.filter_chains[0]), "outbound|5432||pg.example.com");
}

#[test]
fn virtual_service_tcp_routes() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.virtual_services.push(virtual_service(json!({
        "metadata": {"name": "mysql", "namespace": "db"},
        "spec": {
            "hosts": ["mysql"],
            "tcp": [
                {"match": [{"sourceLabels": {"app": "other"}}], "route": [{"destination": {"host": "nowhere"}}]},
                {"match": [{"port": 3306, "destinationSubnets": ["10.10.0.0/16"]}],
                 "route": [{"destination": {"host": "mysql-replica", "port": {"number": 3307}}}]},
                {"match": [{"port": 3306, "sourceLabels": {"app": "web"}}],
                 "route": [{"destination": {"host": "mysql", "subset": "v1"}, "weight": 80},
                           {"destination": {"host": "mysql", "subset": "v2"}, "weight": 20}]},
                {"route": [{"destination": {"host": "mysql"}}]}
            ]
        }
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let l = find(&ls, "10.96.0.20_3306");
    let summary: Vec<(Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| (c.filter_chain_match.as_ref().map(ranges).unwrap_or_default(), tcp_cluster(c)))
        .collect();
    assert_eq!(
        summary,
        [
            (vec!["10.10.0.0/16".to_owned()], "outbound|3307||mysql-replica.db.svc.cluster.local".to_owned()),
            (
                vec![],
                "outbound|3306|v1|mysql.db.svc.cluster.local:80,outbound|3306|v2|mysql.db.svc.cluster.local:20"
                    .to_owned()
            ),
        ]
    );
}

#[test]
fn virtual_service_tcp_source_subnets() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.virtual_services.push(virtual_service(json!({
        "metadata": {"name": "mysql", "namespace": "db"},
        "spec": {
            "hosts": ["mysql"],
            "tcp": [
                // A source subnet pairs with its own match's destinations.
                {"match": [{"port": 3306, "sourceSubnet": "10.1.0.0/16"},
                           {"port": 3306, "sourceSubnet": "192.168.7.7", "destinationSubnets": ["10.10.0.0/16"]}],
                 "route": [{"destination": {"host": "mysql-replica", "port": {"number": 3307}}}]},
                {"match": [{"sourceSubnet": "not-an-address"}], "route": [{"destination": {"host": "nowhere"}}]},
                {"route": [{"destination": {"host": "mysql"}}]}
            ]
        }
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let l = find(&ls, "10.96.0.20_3306");
    let summary: Vec<(Vec<String>, Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            let sources = m
                .source_prefix_ranges
                .iter()
                .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.map_or(0, |l| l.value)))
                .collect();
            (ranges(&m), sources, tcp_cluster(c))
        })
        .collect();
    let replica = "outbound|3307||mysql-replica.db.svc.cluster.local".to_owned();
    let primary = "outbound|3306||mysql.db.svc.cluster.local".to_owned();
    let net = |s: &str| vec![s.to_owned()];
    // Envoy picks the narrowest destination first and matches sources only among its chains,
    // so 10.10.0.0/16 carries every source case itself: 10.1.0.0/16 still goes to the replica
    // (the first match says so) and other clients to the primary, not nowhere.
    assert_eq!(
        summary,
        [
            (net("10.10.0.0/16"), net("10.1.0.0/16"), replica.clone()),
            (net("10.10.0.0/16"), net("192.168.7.7/32"), replica.clone()),
            (net("10.10.0.0/16"), vec![], primary.clone()),
            (vec![], net("10.1.0.0/16"), replica),
            (vec![], vec![], primary),
        ],
        "a match whose only criterion is an unusable source subnet is left out"
    );
}

/// VirtualService routes are tried in order; Envoy's filter chains pick the longest prefix.
/// A later route with a narrower subnet must not take clients an earlier route holds, and an
/// earlier narrower route keeps its clients inside a later wider one.
#[test]
fn tcp_route_order_beats_the_longest_prefix() {
    let chains_of = |tcp: serde_json::Value| {
        let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
        snap.virtual_services.push(virtual_service(json!({
            "metadata": {"name": "mysql", "namespace": "db"},
            "spec": {"hosts": ["mysql"], "tcp": tcp}
        })));
        envoy_check(&snap, &proxy(PROXY_IP, "REDIRECT"), false).unwrap();
        let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
        find(&ls, "10.96.0.20_3306")
            .filter_chains
            .iter()
            .map(|c| {
                let m = c.filter_chain_match.clone().unwrap_or_default();
                let show = |r: &[envoy_types::pb::envoy::config::core::v3::CidrRange]| {
                    r.iter().map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.map_or(0, |l| l.value))).collect()
                };
                (show(&m.prefix_ranges), show(&m.source_prefix_ranges), tcp_cluster(c))
            })
            .collect::<Vec<(Vec<String>, Vec<String>, String)>>()
    };
    let to = |subset: &str| json!([{"destination": {"host": "mysql", "subset": subset}}]);
    let cluster = |subset: &str| format!("outbound|3306|{subset}|mysql.db.svc.cluster.local");
    let net = |s: &str| vec![s.to_owned()];
    // Wider first: the narrower route is unreachable, so it gets no chain.
    let wider_first = chains_of(json!([
        {"match": [{"sourceSubnet": "10.0.0.0/8"}], "route": to("wide")},
        {"match": [{"sourceSubnet": "10.1.0.0/16"}], "route": to("narrow")},
        {"route": to("rest")}
    ]));
    assert_eq!(wider_first, [(vec![], net("10.0.0.0/8"), cluster("wide")), (vec![], vec![], cluster("rest"))]);
    // Narrower first: both keep their clients.
    let narrower_first = chains_of(json!([
        {"match": [{"sourceSubnet": "10.1.0.0/16"}], "route": to("narrow")},
        {"match": [{"sourceSubnet": "10.0.0.0/8"}], "route": to("wide")},
        {"route": to("rest")}
    ]));
    assert_eq!(
        narrower_first,
        [
            (vec![], net("10.0.0.0/8"), cluster("wide")),
            (vec![], net("10.1.0.0/16"), cluster("narrow")),
            (vec![], vec![], cluster("rest")),
        ]
    );
    // A wider source whose route comes after a narrower destination's: inside the destination
    // the destination's route still wins for every client.
    let destination_first = chains_of(json!([
        {"match": [{"destinationSubnets": ["10.96.0.0/16"]}], "route": to("dest")},
        {"match": [{"sourceSubnet": "10.0.0.0/8"}], "route": to("source")},
        {"route": to("rest")}
    ]));
    assert_eq!(
        destination_first,
        [
            (net("10.96.0.0/16"), vec![], cluster("dest")),
            (vec![], net("10.0.0.0/8"), cluster("source")),
            (vec![], vec![], cluster("rest")),
        ]
    );
}

#[test]
fn virtual_service_tls_routes() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.virtual_services.push(virtual_service(json!({
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {
            "hosts": ["api.example.com"],
            "tls": [
                {"match": [{"port": 443, "sniHosts": ["api.example.com"]}],
                 "route": [{"destination": {"host": "api.example.com", "subset": "blue"}}]},
                {"match": [{"port": 443, "sniHosts": ["*.example.com"]}],
                 "route": [{"destination": {"host": "api.example.com"}}]}
            ]
        }
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let l = find(&ls, "240.0.0.1_443");
    assert_eq!(listener_filter_names(l), ["envoy.filters.listener.tls_inspector"]);
    let summary: Vec<(Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| (c.filter_chain_match.as_ref().map(|m| m.server_names.clone()).unwrap_or_default(), tcp_cluster(c)))
        .collect();
    assert_eq!(
        summary,
        [
            (vec!["api.example.com".to_owned()], "outbound|443|blue|api.example.com".to_owned()),
            (vec!["*.example.com".to_owned()], "outbound|443||api.example.com".to_owned()),
            (vec![], "outbound|443||api.example.com".to_owned()),
        ]
    );
}

#[test]
fn service_ports_on_capture_ports_are_skipped() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    let odd = service("odd.default.svc.cluster.local", &[("tcp", 15001), ("http", 15006)], &["10.96.0.40"]);
    snap.services.insert(odd.hostname.clone(), odd);
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    assert!(names(&ls).iter().all(|n| !n.ends_with("_15001") && !n.ends_with("_15006")), "{:?}", names(&ls));
}

#[test]
fn sidecar_egress_hosts_limit_listeners() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.sidecars.push(sidecar(json!({
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"egress": [{"hosts": ["./*"]}]}
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    assert_eq!(names(&ls), ["0.0.0.0_80", "0.0.0.0_8080", "0.0.0.0_9080", "10.96.0.30_9000", "virtualOutbound"]);
}

/// A Sidecar egress listener's port protocol decides its listener: reviews' HTTP port 9080
/// declared TCP is proxied as TCP; ratings' sniffed 8080 declared by name (`http-…`) is HTTP.
#[test]
fn sidecar_egress_port_protocol_decides_the_listener() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.sidecars.push(sidecar(json!({
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"egress": [
            {"port": {"number": 9080, "protocol": "TCP", "name": "tcp-reviews"}, "hosts": ["./*"]},
            {"port": {"number": 8080, "name": "http-ratings"}, "hosts": ["./*"]},
            {"hosts": ["./*"]}
        ]}
    })));
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    // TCP: a listener per service address.
    let reviews = find(&ls, "10.96.0.10_9080");
    assert_eq!(tcp_cluster(&reviews.filter_chains[0]), "outbound|9080||reviews.default.svc.cluster.local");
    let ratings = find(&ls, "0.0.0.0_8080");
    assert!(listener_filter_names(ratings).is_empty(), "declared HTTP: not sniffed");
    assert_eq!(rds_name(&ratings.filter_chains[0]), "8080");
    // Routes follow: none for the port now TCP, the HTTP one still there.
    let proxy = proxy(PROXY_IP, "REDIRECT");
    let routes = rudder_xds::translate::route::outbound(&rudder_xds::translate::context::Context::new(&snap, &proxy));
    let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert!(route_names.contains(&"8080") && !route_names.contains(&"9080"), "{route_names:?}");
}

// ---------------------------------------------------------------------------------------
// Outbound, capture mode NONE

#[test]
fn capture_none_binds_each_port_at_the_proxy_address() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    // A second TCP service on 3306 loses to the first (hostname order).
    let extra = service("zz-mysql.db.svc.cluster.local", &[("tcp", 3306)], &["10.96.0.99"]);
    snap.services.insert(extra.hostname.clone(), extra);
    let ls = outbound(&snap, &proxy(PROXY_IP, "NONE"));
    assert!(!names(&ls).contains(&"virtualOutbound"));
    assert_eq!(
        names(&ls),
        [
            "10.1.0.5_3306",
            "10.1.0.5_443",
            "10.1.0.5_5432",
            "10.1.0.5_6379",
            "10.1.0.5_80",
            "10.1.0.5_8080",
            "10.1.0.5_9000",
            "10.1.0.5_9080"
        ]
    );
    for l in &ls {
        assert!(bind_to_port(l), "{}", l.name);
        assert_eq!(address(&l.address).0, PROXY_IP);
        assert!(l.default_filter_chain.is_none());
    }
    let web = find(&ls, "10.1.0.5_9080");
    assert_eq!(rds_name(&web.filter_chains[0]), "9080");
    assert_eq!(tcp_cluster(&find(&ls, "10.1.0.5_3306").filter_chains[0]), "outbound|3306||mysql.db.svc.cluster.local");
    // Sniffed: HTTP by ALPN, anything else to the service.
    let sniffed = find(&ls, "10.1.0.5_8080");
    assert_eq!(listener_filter_names(sniffed), ["envoy.filters.listener.http_inspector"]);
    assert_eq!(rds_name(&sniffed.filter_chains[0]), "8080");
    assert_eq!(tcp_cluster(&sniffed.filter_chains[1]), "outbound|8080||ratings.default.svc.cluster.local");
}

// ---------------------------------------------------------------------------------------
// Inbound

#[test]
fn virtual_inbound_chains() {
    for (mode, transparent) in [("REDIRECT", false), ("TPROXY", true)] {
        let snap = mesh_snapshot(MeshConfig::istio_defaults());
        let ls = inbound(&snap, &proxy(PROXY_IP, mode));
        assert_eq!(names(&ls), ["virtualInbound"]);
        let vi = &ls[0];
        assert_eq!(address(&vi.address), ("0.0.0.0".to_owned(), 15006));
        assert_eq!(vi.use_original_dst.as_ref().map(|b| b.value), Some(true));
        assert_eq!(vi.transparent.as_ref().map(|b| b.value).unwrap_or(false), transparent);
        assert_eq!(vi.traffic_direction, TrafficDirection::Inbound as i32);
        let summary: Vec<(String, Option<u32>, String)> = vi
            .filter_chains
            .iter()
            .map(|c| {
                let port = c.filter_chain_match.as_ref().and_then(|m| m.destination_port.as_ref()).map(|p| p.value);
                let target = if c.filters[0].name == hcm::TCP_PROXY {
                    tcp_cluster(c)
                } else {
                    format!("inline:{}", inline_routes(c).name)
                };
                (c.name.clone(), port, target)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("virtualInbound-blackhole".to_owned(), Some(15006), "BlackHoleCluster".to_owned()),
                ("0.0.0.0_8080".to_owned(), Some(8080), "inline:inbound|8080||".to_owned()),
                ("0.0.0.0_9000".to_owned(), Some(9000), "inbound|9000||".to_owned()),
                ("virtualInbound".to_owned(), None, "InboundPassthroughCluster".to_owned()),
            ]
        );
    }
}

#[test]
fn inbound_http_route_config() {
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let ls = inbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let chain = chain_named(&ls[0], "0.0.0.0_8080");
    let h = http(&chain.filters[0]);
    assert_eq!(h.stat_prefix, "inbound_0.0.0.0_8080");
    let rc = inline_routes(chain);
    assert_eq!(rc.name, "inbound|8080||");
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.name, "inbound|http|8080");
    assert_eq!(vh.domains, ["*"]);
    let Some(Action::Route(action)) = &vh.routes[0].action else { panic!("no route action") };
    assert_eq!(action.cluster_specifier, Some(RouteCluster::Cluster("inbound|8080||".to_owned())));
    assert_eq!(action.timeout, Some(Duration { seconds: 0, nanos: 0 }));
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "reset-before-request");
    assert_eq!(retry.num_retries.as_ref().unwrap().value, 2);
}

#[test]
fn sidecar_ingress_bind_gets_its_own_listener() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.sidecars.push(ingress_sidecar("127.0.0.2"));
    let ls = inbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    assert_eq!(names(&ls), ["127.0.0.2_8080", "virtualInbound"]);
    let bound = &ls[0];
    assert!(bind_to_port(bound));
    assert_eq!(address(&bound.address), ("127.0.0.2".to_owned(), 8080));
    assert_eq!(bound.traffic_direction, TrafficDirection::Inbound as i32);
    assert!(bound.filter_chains[0].filter_chain_match.is_none());
    assert_eq!(inline_routes(&bound.filter_chains[0]).name, "inbound|8080||");
    let vi = &ls[1];
    let chain_names: Vec<&str> = vi.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        chain_names,
        ["virtualInbound-blackhole", "0.0.0.0_7000", "0.0.0.0_7000", "0.0.0.0_9000", "virtualInbound"]
    );
    assert_eq!(listener_filter_names(vi), ["envoy.filters.listener.http_inspector"]);
}

#[test]
fn capture_none_inbound_only_from_sidecar_ingress() {
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    assert!(inbound(&snap, &proxy(PROXY_IP, "NONE")).is_empty());
    snap.sidecars.push(sidecar(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ingress": [{"port": {"number": 8080, "protocol": "HTTP", "name": "http"},
                              "defaultEndpoint": "127.0.0.1:18080"}]}
    })));
    let ls = inbound(&snap, &proxy(PROXY_IP, "NONE"));
    assert_eq!(names(&ls), ["10.1.0.5_8080"]);
    // And the outbound side leaves that address and port to the inbound listener.
    let out = outbound(&snap, &proxy(PROXY_IP, "NONE"));
    assert!(!names(&out).contains(&"10.1.0.5_8080"));
}

// ---------------------------------------------------------------------------------------
// Access logs and determinism

#[test]
fn access_logs_on_every_hcm_and_tcp_proxy() {
    for encoding in [AccessLogEncoding::Text, AccessLogEncoding::Json] {
        let snap = mesh_snapshot(with_logs("/dev/stdout", encoding));
        let p = proxy(PROXY_IP, "REDIRECT");
        let mut ls = outbound(&snap, &p);
        ls.extend(inbound(&snap, &p));
        let want = access_log::from_mesh(&snap.mesh);
        assert_eq!(want.len(), 1);
        let all = all_filter_logs(&ls);
        assert!(all.len() > 15);
        for (at, logs) in all {
            // The mesh's file log first (skipping tcp_proxy's connect record), then the
            // mesh metrics' stats loggers.
            let files: Vec<_> = logs.iter().filter(|l| l.name == access_log::FILE_ACCESS_LOG).collect();
            assert_eq!(files.len(), 1, "{at}");
            assert_eq!(files[0].config_type, want[0].config_type, "{at}");
            assert!(files[0].filter.is_some(), "{at}");
            assert!(logs.iter().any(|l| l.name == telemetry::STATS_ACCESS_LOG), "{at}");
        }
    }
    // No file: only the metrics.
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    assert!(all_filter_logs(&ls).iter().all(|(_, logs)| logs.iter().all(|l| l.name == telemetry::STATS_ACCESS_LOG)));
}

#[test]
fn output_is_byte_identical_across_runs() {
    let snap = mesh_snapshot(with_logs("/dev/stdout", AccessLogEncoding::Json));
    let p = proxy(PROXY_IP, "REDIRECT");
    let encode = |ls: Vec<Listener>| ls.iter().map(|l| l.encode_to_vec()).collect::<Vec<_>>();
    let first = (encode(outbound(&snap, &p)), encode(inbound(&snap, &p)));
    for _ in 0..5 {
        assert_eq!((encode(outbound(&snap, &p)), encode(inbound(&snap, &p))), first);
    }
}

// ---------------------------------------------------------------------------------------
// Real Envoy

/// Every cluster name the listeners' tcp_proxies reference (inline routes are not validated:
/// `validate_clusters` is off, as Istio has it).
fn referenced_clusters(listeners: &[Listener]) -> Vec<Cluster> {
    let mut names = std::collections::BTreeSet::new();
    for l in listeners {
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            for f in chain.filters.iter().filter(|f| f.name == hcm::TCP_PROXY) {
                match tcp(f).cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => {
                        names.insert(c);
                    }
                    Some(ClusterSpecifier::WeightedClusters(w)) => names.extend(w.clusters.into_iter().map(|c| c.name)),
                    None => {}
                }
            }
            // The tracer's collector cluster (Istio's default mesh traces to zipkin).
            for f in chain.filters.iter().filter(|f| f.name == hcm::HTTP_CONNECTION_MANAGER) {
                if let Some(tracing) = http(f).tracing {
                    let zipkin = format!("{:?}", tracing.provider);
                    assert!(zipkin.contains("zipkin"), "{zipkin}");
                    names.insert(rudder_xds::translate::telemetry::ZIPKIN_CLUSTER.to_owned());
                }
            }
        }
    }
    names.iter().map(|n| static_cluster(n)).collect()
}

/// Replaces every RDS reference with the inline route table a route translation would
/// serve (one catch-all vhost), since a validating Envoy has no ADS server to ask.
fn inline_rds(listeners: &mut [Listener]) {
    for l in listeners {
        for chain in l.filter_chains.iter_mut().chain(l.default_filter_chain.iter_mut()) {
            for f in chain.filters.iter_mut().filter(|f| f.name == hcm::HTTP_CONNECTION_MANAGER) {
                let mut h = http(f);
                if let Some(RouteSpecifier::Rds(rds)) = &h.route_specifier {
                    h.route_specifier = Some(RouteSpecifier::RouteConfig(RouteConfiguration {
                        name: rds.route_config_name.clone(),
                        virtual_hosts: vec![envoy_types::pb::envoy::config::route::v3::VirtualHost {
                            name: "allow_any".into(),
                            domains: vec!["*".into()],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }));
                    f.config_type = Some(ConfigType::TypedConfig(pack_any(h)));
                }
            }
        }
    }
}

fn envoy_check(snap: &Snapshot, p: &Proxy, inline: bool) -> Result<(), String> {
    let mut ls = outbound(snap, p);
    ls.extend(inbound(snap, p));
    if inline {
        inline_rds(&mut ls);
    }
    let mut clusters = referenced_clusters(&ls);
    clusters.extend(["outbound|9080||reviews.default.svc.cluster.local"].iter().map(|n| static_cluster(n)));
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters.dedup_by(|a, b| a.name == b.name);
    envoy_accepts(clusters, ls)
}

#[test]
fn envoy_accepts_redirect_sidecar_with_text_and_json_logs() {
    for mesh in
        [with_logs("/dev/stdout", AccessLogEncoding::Text), with_logs("/tmp/rudder-al.log", AccessLogEncoding::Json)]
    {
        let mut snap = mesh_snapshot(mesh);
        snap.virtual_services.push(virtual_service(json!({
            "metadata": {"name": "mysql", "namespace": "db"},
            "spec": {"hosts": ["mysql"], "tcp": [
                {"match": [{"destinationSubnets": ["10.10.0.0/16"]}], "route": [{"destination": {"host": "mysql", "subset": "a"}}]},
                {"match": [{"sourceSubnet": "10.1.0.0/16"}], "route": [{"destination": {"host": "mysql", "subset": "b"}}]},
                {"route": [{"destination": {"host": "mysql", "subset": "a"}, "weight": 50},
                           {"destination": {"host": "mysql", "subset": "b"}, "weight": 50}]}]}
        })));
        snap.virtual_services.push(virtual_service(json!({
            "metadata": {"name": "api", "namespace": "default"},
            "spec": {"hosts": ["api.example.com"], "tls": [
                {"match": [{"sniHosts": ["api.example.com"]}], "route": [{"destination": {"host": "api.example.com"}}]}]}
        })));
        // RDS as served (validate mode subscribes nowhere, but checks the HCM), and with the
        // routes inline so the HCM is checked together with a route table.
        for inline in [false, true] {
            envoy_check(&snap, &proxy(PROXY_IP, "REDIRECT"), inline).unwrap();
            envoy_check(&snap, &proxy(PROXY_IP, "TPROXY"), inline).unwrap();
        }
        // Inbound from a Sidecar: a bound HTTP port, a TCP port and a sniffed one.
        snap.sidecars.push(ingress_sidecar("127.0.0.3"));
        envoy_check(&snap, &proxy(PROXY_IP, "REDIRECT"), false).unwrap();
    }
}

#[test]
fn envoy_refuses_a_broken_listener_set() {
    // The acceptance checks above only mean something if Envoy really looks at the
    // listeners: two chains with the same match must be refused.
    let snap = mesh_snapshot(MeshConfig::istio_defaults());
    let mut ls = outbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let l = ls.iter_mut().find(|l| l.name == "0.0.0.0_9080").unwrap();
    l.filter_chains.push(l.filter_chains[0].clone());
    let clusters = referenced_clusters(&ls);
    let err = envoy_accepts(clusters, ls).unwrap_err();
    assert!(err.contains("same matching rules"), "{err}");
}

#[test]
fn envoy_accepts_capture_none_sidecar() {
    let mut snap = mesh_snapshot(with_logs("/dev/stdout", AccessLogEncoding::Text));
    snap.sidecars.push(ingress_sidecar("127.0.0.3"));
    let p = proxy("127.0.0.2", "NONE");
    let ls = {
        let mut ls = outbound(&snap, &p);
        ls.extend(inbound(&snap, &p));
        ls
    };
    assert!(names(&ls).contains(&"127.0.0.3_8080"));
    assert!(names(&ls).contains(&"127.0.0.2_9000"));
    envoy_check(&snap, &p, false).unwrap();
    envoy_check(&snap, &p, true).unwrap();
}

/// Sidecar `ingress[].tls`: the sidecar terminates the app's own TLS (certificate files
/// mounted in the proxy) on that port instead of mesh mTLS; other ports keep mesh mTLS
/// settings, and a setting it cannot serve (credentialName) leaves the port to them.
#[test]
fn sidecar_ingress_tls_terminates_with_mounted_certificates() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, common_tls_context};
    let mut snap = mesh_snapshot(MeshConfig::istio_defaults());
    snap.sidecars.push(sidecar(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "workloadSelector": {"labels": {"app": "web"}},
            "ingress": [
                {"port": {"number": 8080, "protocol": "HTTPS", "name": "https"}, "defaultEndpoint": "127.0.0.1:18080",
                 "tls": {"mode": "MUTUAL", "serverCertificate": "/etc/app/tls.crt", "privateKey": "/etc/app/tls.key",
                         "caCertificates": "/etc/app/ca.crt", "subjectAltNames": ["client.example.com"]}},
                {"port": {"number": 9000, "protocol": "TCP", "name": "tcp"}, "defaultEndpoint": "127.0.0.1:19000",
                 "tls": {"mode": "SIMPLE", "credentialName": "not-for-sidecars"}}
            ]
        }
    })));
    let ls = inbound(&snap, &proxy(PROXY_IP, "REDIRECT"));
    let vi = find(&ls, "virtualInbound");
    let on_port = |port: u32| -> Vec<&FilterChain> {
        vi.filter_chains
            .iter()
            .filter(|c| {
                c.filter_chain_match.as_ref().and_then(|m| m.destination_port.as_ref()).map(|p| p.value) == Some(port)
            })
            .collect()
    };
    let https = on_port(8080);
    assert_eq!(https.len(), 1, "only the app's TLS on 8080: {https:?}");
    assert_eq!(https[0].filter_chain_match.as_ref().unwrap().transport_protocol, "tls");
    let socket = https[0].transport_socket.as_ref().unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
        &socket.config_type
    else {
        panic!("{socket:?}")
    };
    let context = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(context.require_client_certificate.map(|b| b.value), Some(true));
    let common = context.common_tls_context.unwrap();
    assert_eq!(common.tls_certificates.len(), 1);
    match common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
            assert!(v.trusted_ca.is_some());
            assert_eq!(v.match_typed_subject_alt_names.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // The credentialName port keeps the mesh's settings (here, without a mesh CA: plaintext).
    let tcp = on_port(9000);
    assert_eq!(tcp.len(), 1);
    assert!(
        tcp[0].transport_socket.is_none() && tcp[0].filter_chain_match.as_ref().unwrap().transport_protocol.is_empty()
    );
}
