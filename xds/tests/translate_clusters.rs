//! Cluster translation: the defaults every cluster gets, one table per DestinationRule feature,
//! the fixed and inbound clusters, and a rich set that a real Envoy must accept.

// Helpers outside #[test] functions decode fixtures that are known good.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::{config_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{UpstreamTlsContext, common_tls_context};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use prost::Message;
use rudder_config::IstioObject;
use rudder_config::mesh::MeshConfig;
use rudder_xds::model::{Endpoint, Health, Protocol, Proxy, Resolution, Service, ServicePort, Snapshot};
use rudder_xds::translate::cluster::{self, HTTP_PROTOCOL_OPTIONS};
use rudder_xds::translate::context::Context;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn port(name: &str, number: u32) -> ServicePort {
    ServicePort { name: name.to_owned(), port: number, protocol: Protocol::of_port(None, name) }
}

fn service(host: &str, resolution: Resolution, ports: Vec<ServicePort>) -> Arc<Service> {
    Arc::new(Service {
        hostname: host.to_owned(),
        namespace: "default".to_owned(),
        name: host.split('.').next().unwrap_or_default().to_owned(),
        ports,
        addresses: vec![],
        resolution,
        mesh_external: !host.ends_with(".cluster.local"),
        export_to: vec![],
        kubernetes: host.ends_with(".cluster.local"),
        traffic_distribution: Default::default(),
        subject_alt_names: Vec::new(),
    })
}

fn endpoint(address: &str, port: u32, port_name: &str, labels: &[(&str, &str)]) -> Endpoint {
    Endpoint {
        address: address.to_owned(),
        port,
        service_port_name: port_name.to_owned(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        namespace: "default".to_owned(),
        service_account: "reviews".to_owned(),
        locality: String::new(),
        weight: 0,
        health: Health::Healthy,
        tls_mode: String::new(),
        workload: String::new(),
    }
}

/// A snapshot with Istio's mesh defaults, the reviews service (HTTP 9080, gRPC 9090, an
/// undeclared-protocol 7000) and the DestinationRules/Sidecars in `yaml`.
fn snapshot(yaml: &str) -> Snapshot {
    let mut snapshot = Snapshot { mesh: MeshConfig::istio_defaults(), ..Snapshot::default() };
    snapshot.services.insert(
        REVIEWS.to_owned(),
        service(REVIEWS, Resolution::ClientSideLb, vec![port("http", 9080), port("grpc", 9090), port("web", 7000)]),
    );
    add_config(&mut snapshot, yaml);
    snapshot
}

fn add_config(snapshot: &mut Snapshot, yaml: &str) {
    if yaml.trim().is_empty() {
        return;
    }
    let loads = rudder_config::load::load_str("test.yaml", yaml).expect("yaml");
    assert!(loads.problems.is_empty(), "{:?}", loads.problems);
    for loaded in loads.objects {
        match loaded.object {
            IstioObject::DestinationRule(dr) => snapshot.destination_rules.push(Arc::new(*dr)),
            IstioObject::Sidecar(sc) => snapshot.sidecars.push(Arc::new(*sc)),
            other => panic!("unexpected {}", other.kind()),
        }
    }
}

fn proxy_with(metadata: serde_json::Value) -> Proxy {
    let metadata: BTreeMap<String, serde_json::Value> = serde_json::from_value(metadata).unwrap();
    Proxy::from_node("sidecar~10.0.0.9~client-1.default~default.svc.cluster.local", &metadata).unwrap()
}

fn proxy() -> Proxy {
    proxy_with(serde_json::json!({"LABELS": {"app": "client"}}))
}

fn outbound(snapshot: &Snapshot) -> Vec<Cluster> {
    let proxy = proxy();
    cluster::outbound(&Context::new(snapshot, &proxy))
}

/// `cluster::outbound_served` encodes `clusters` (the message path's, for `ctx`): the same
/// names in the same order, each decoding to the same message.
fn assert_encoded_as_built(ctx: &Context<'_>, clusters: &[Cluster]) {
    let encoded = cluster::outbound_served(ctx).encoded;
    let names = |list: &[(String, prost::bytes::Bytes)]| list.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&encoded), clusters.iter().map(|c| c.name.clone()).collect::<Vec<_>>());
    for ((name, bytes), built) in encoded.iter().zip(clusters) {
        let mut decoded = Cluster::decode(bytes.as_ref()).unwrap();
        assert_eq!(decoded.name, *name);
        decoded.name.clone_from(&built.name);
        assert!(decoded == *built, "{name}: the encoded cluster differs from the built one");
    }
}

fn find<'a>(clusters: &'a [Cluster], name: &str) -> &'a Cluster {
    clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}; have {:?}", clusters.iter().map(|c| &c.name).collect::<Vec<_>>()))
}

fn dr(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n{spec}"
    )
}

fn kind(c: &Cluster) -> DiscoveryType {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap(),
        _ => panic!("custom cluster type"),
    }
}

fn http_options(c: &Cluster) -> Option<HttpProtocolOptions> {
    c.typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .map(|any| HttpProtocolOptions::decode(any.value.as_slice()).unwrap())
}

fn is_h2(c: &Cluster) -> bool {
    matches!(
        http_options(c).and_then(|h| h.upstream_protocol_options),
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e))
            if matches!(e.protocol_config, Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)))
    )
}

fn uses_downstream(c: &Cluster) -> bool {
    matches!(
        http_options(c).and_then(|h| h.upstream_protocol_options),
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
    )
}

fn tls_context(c: &Cluster) -> UpstreamTlsContext {
    let socket = c.transport_socket.as_ref().expect("transport socket");
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => {
            UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
        }
        None => panic!("no config"),
    }
}

fn secs(s: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds: s, nanos: 0 })
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn name(port: u32, subset: &str) -> String {
    format!("outbound|{port}|{subset}|{REVIEWS}")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_without_a_destination_rule() {
    let clusters = outbound(&snapshot(""));
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            &name(7000, "") as &str,
            &name(9080, ""),
            &name(9090, ""),
            "BlackHoleCluster",
            "PassthroughCluster",
            // No collector cluster: Istio's default zipkin.istio-system is not in the registry.
            "InboundPassthroughCluster"
        ]
    );
    let http = find(&clusters, &name(9080, ""));
    assert_eq!(kind(http), DiscoveryType::Eds);
    let eds = http.eds_cluster_config.as_ref().unwrap();
    assert_eq!(eds.service_name, http.name);
    let source = eds.eds_config.as_ref().unwrap();
    assert!(matches!(source.config_source_specifier, Some(config_source::ConfigSourceSpecifier::Ads(_))));
    assert_eq!(source.initial_fetch_timeout, secs(0));
    assert_eq!(http.connect_timeout, secs(10));
    assert_eq!(http.lb_policy, LbPolicy::LeastRequest as i32);
    assert!(http.common_lb_config.is_some());
    let thresholds = &http.circuit_breakers.as_ref().unwrap().thresholds[0];
    for limit in [
        &thresholds.max_connections,
        &thresholds.max_pending_requests,
        &thresholds.max_requests,
        &thresholds.max_retries,
    ] {
        assert_eq!(*limit, u32v(u32::MAX));
    }
    assert!(thresholds.track_remaining);
    assert!(http.transport_socket.is_none() && http.transport_socket_matches.is_empty(), "no auto-mTLS");
    assert!(http_options(http).is_none(), "HTTP/1.1 port needs no protocol options");
    assert!(is_h2(find(&clusters, &name(9090, ""))), "gRPC port is HTTP/2");
    assert!(uses_downstream(find(&clusters, &name(7000, ""))), "undeclared protocol keeps the client's");
}

#[test]
fn mesh_connect_timeout_and_unset_mesh() {
    let mut snap = snapshot("");
    snap.mesh.connect_timeout = Some(rudder_config::common::Duration::from_millis(2500));
    assert_eq!(
        find(&outbound(&snap), &name(9080, "")).connect_timeout,
        Some(PbDuration { seconds: 2, nanos: 500_000_000 })
    );
    snap.mesh = MeshConfig::default();
    assert_eq!(find(&outbound(&snap), &name(9080, "")).connect_timeout, secs(10), "built-in default");
}

#[test]
fn fixed_clusters() {
    let clusters = outbound(&snapshot(""));
    let blackhole = find(&clusters, "BlackHoleCluster");
    assert_eq!(kind(blackhole), DiscoveryType::Static);
    assert!(blackhole.load_assignment.is_none());
    let passthrough = find(&clusters, "PassthroughCluster");
    assert_eq!(kind(passthrough), DiscoveryType::OriginalDst);
    assert_eq!(passthrough.lb_policy, LbPolicy::ClusterProvided as i32);
    assert!(passthrough.lb_config.is_none(), "iptables gives the original destination");
    let inbound = find(&clusters, "InboundPassthroughCluster");
    assert_eq!(kind(inbound), DiscoveryType::OriginalDst);
    let bind = inbound.upstream_bind_config.as_ref().unwrap().source_address.as_ref().unwrap();
    assert_eq!(bind.address, "127.0.0.6");

    let snap = snapshot("");
    let no_iptables = proxy_with(serde_json::json!({"INTERCEPTION_MODE": "NONE"}));
    let clusters = cluster::outbound(&Context::new(&snap, &no_iptables));
    match &find(&clusters, "PassthroughCluster").lb_config {
        Some(LbConfig::OriginalDstLbConfig(c)) => assert!(c.use_http_header),
        other => panic!("{other:?}"),
    }
}

#[test]
fn discovery_type_by_resolution() {
    let mut snap = snapshot("");
    snap.services
        .insert("api.example.com".into(), service("api.example.com", Resolution::Dns, vec![port("https", 443)]));
    snap.services
        .insert("rr.example.com".into(), service("rr.example.com", Resolution::DnsRoundRobin, vec![port("tcp", 5432)]));
    snap.services.insert(
        "headless.default.svc.cluster.local".into(),
        service("headless.default.svc.cluster.local", Resolution::Passthrough, vec![port("tcp", 9000)]),
    );
    snap.endpoints.insert(
        "rr.example.com".into(),
        Arc::new(vec![endpoint("db1.example.com", 5432, "tcp", &[]), endpoint("db2.example.com", 5432, "tcp", &[])]),
    );
    // A LOGICAL_DNS service whose endpoints serve none of its ports gets no cluster, on both
    // paths.
    snap.services.insert(
        "none.example.com".into(),
        service("none.example.com", Resolution::DnsRoundRobin, vec![port("tcp", 1)]),
    );
    snap.endpoints.insert("none.example.com".into(), Arc::new(vec![endpoint("db.example.com", 5, "other", &[])]));
    let clusters = outbound(&snap);
    let proxy = proxy();
    assert_encoded_as_built(&Context::new(&snap, &proxy), &clusters);
    assert!(clusters.iter().all(|c| !c.name.contains("none.example.com")));

    let dns = find(&clusters, "outbound|443||api.example.com");
    assert_eq!(kind(dns), DiscoveryType::StrictDns);
    #[allow(deprecated)]
    {
        assert!(dns.respect_dns_ttl);
        assert_eq!(dns.dns_refresh_rate, secs(60));
    }
    let hosts = dns.load_assignment.as_ref().unwrap();
    assert_eq!(hosts.endpoints[0].lb_endpoints.len(), 1, "no endpoints: the host itself is resolved");

    let logical = find(&clusters, "outbound|5432||rr.example.com");
    assert_eq!(kind(logical), DiscoveryType::LogicalDns);
    let hosts = logical.load_assignment.as_ref().unwrap();
    assert_eq!(hosts.endpoints.len(), 1);
    assert_eq!(hosts.endpoints[0].lb_endpoints.len(), 1, "LOGICAL_DNS takes one address");

    let headless = find(&clusters, "outbound|9000||headless.default.svc.cluster.local");
    assert_eq!(kind(headless), DiscoveryType::OriginalDst);
    assert_eq!(headless.lb_policy, LbPolicy::ClusterProvided as i32);
    assert!(headless.eds_cluster_config.is_none());
}

#[test]
fn dns_subsets_filter_inline_endpoints() {
    let mut snap = snapshot(
        &dr("  subsets:\n  - {name: v1, labels: {version: v1}}\n").replace("host: reviews", "host: api.example.com"),
    );
    snap.services.insert("api.example.com".into(), service("api.example.com", Resolution::Dns, vec![port("http", 80)]));
    snap.endpoints.insert(
        "api.example.com".into(),
        Arc::new(vec![
            endpoint("a.example.com", 8080, "http", &[("version", "v1")]),
            endpoint("b.example.com", 8080, "http", &[("version", "v2")]),
        ]),
    );
    let clusters = outbound(&snap);
    let count = |n: &str| find(&clusters, n).load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints.len();
    assert_eq!(count("outbound|80||api.example.com"), 2);
    assert_eq!(count("outbound|80|v1|api.example.com"), 1);
}

#[test]
fn subsets_make_clusters_sorted_by_name() {
    let clusters = outbound(&snapshot(&dr(
        "  subsets:\n  - {name: v2, labels: {version: v2}}\n  - {name: v1, labels: {version: v1}}\n",
    )));
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).take(9).collect();
    assert_eq!(
        names,
        [
            // Plain byte order: `|` sorts after letters and digits.
            name(7000, "v1"),
            name(7000, "v2"),
            name(7000, ""),
            name(9080, "v1"),
            name(9080, "v2"),
            name(9080, ""),
            name(9090, "v1"),
            name(9090, "v2"),
            name(9090, ""),
        ]
    );
    assert_eq!(find(&clusters, &name(9080, "v1")).eds_cluster_config.as_ref().unwrap().service_name, name(9080, "v1"));
}

#[test]
fn load_balancer_table() {
    let cases: &[(&str, LbPolicy)] = &[
        ("simple: ROUND_ROBIN", LbPolicy::RoundRobin),
        ("simple: LEAST_REQUEST", LbPolicy::LeastRequest),
        ("simple: LEAST_CONN", LbPolicy::LeastRequest),
        ("simple: RANDOM", LbPolicy::Random),
        ("simple: UNSPECIFIED", LbPolicy::LeastRequest),
        ("consistentHash: {httpHeaderName: x-user}", LbPolicy::RingHash),
        ("consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}", LbPolicy::RingHash),
        ("consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}", LbPolicy::Maglev),
    ];
    for (lb, expected) in cases {
        let clusters = outbound(&snapshot(&dr(&format!("  trafficPolicy:\n    loadBalancer: {{{lb}}}\n"))));
        let c = find(&clusters, &name(9080, ""));
        assert_eq!(c.lb_policy, *expected as i32, "{lb}");
    }
    let ring = |lb: &str| {
        let clusters = outbound(&snapshot(&dr(&format!("  trafficPolicy:\n    loadBalancer: {{{lb}}}\n"))));
        find(&clusters, &name(9080, "")).lb_config.clone()
    };
    match ring("consistentHash: {httpHeaderName: x}") {
        Some(LbConfig::RingHashLbConfig(r)) => assert_eq!(r.minimum_ring_size.unwrap().value, 1024),
        other => panic!("{other:?}"),
    }
    match ring("consistentHash: {httpHeaderName: x, ringHash: {minimumRingSize: 2048}}") {
        Some(LbConfig::RingHashLbConfig(r)) => assert_eq!(r.minimum_ring_size.unwrap().value, 2048),
        other => panic!("{other:?}"),
    }
    match ring("consistentHash: {httpHeaderName: x, maglev: {tableSize: 65537}}") {
        Some(LbConfig::MaglevLbConfig(m)) => assert_eq!(m.table_size.unwrap().value, 65537),
        other => panic!("{other:?}"),
    }
    assert_eq!(ring("consistentHash: {httpHeaderName: x, maglev: {tableSize: 65536}}"), None, "non-prime dropped");
    match ring("consistentHash: {httpHeaderName: x, ringHash: {minimumRingSize: 99999999}}") {
        Some(LbConfig::RingHashLbConfig(r)) => {
            assert_eq!(r.minimum_ring_size.unwrap().value, 1024, "too large dropped")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn passthrough_load_balancer_becomes_original_dst() {
    let clusters = outbound(&snapshot(&dr("  trafficPolicy:\n    loadBalancer: {simple: PASSTHROUGH}\n")));
    let c = find(&clusters, &name(9080, ""));
    assert_eq!(kind(c), DiscoveryType::OriginalDst);
    assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
    assert!(c.eds_cluster_config.is_none() && c.load_assignment.is_none());
}

#[test]
fn warmup_is_slow_start() {
    let cases = [
        ("simple: ROUND_ROBIN, warmup: {duration: 30s, aggression: 2, minimumPercent: 5}", true),
        ("warmup: {duration: 30s}", false),
        ("simple: LEAST_REQUEST, warmupDurationSecs: 30s", false),
    ];
    for (lb, round_robin) in cases {
        let clusters = outbound(&snapshot(&dr(&format!("  trafficPolicy:\n    loadBalancer: {{{lb}}}\n"))));
        let slow = match (&find(&clusters, &name(9080, "")).lb_config, round_robin) {
            (Some(LbConfig::RoundRobinLbConfig(c)), true) => c.slow_start_config.clone().unwrap(),
            (Some(LbConfig::LeastRequestLbConfig(c)), false) => c.slow_start_config.clone().unwrap(),
            (other, _) => panic!("{lb}: {other:?}"),
        };
        assert_eq!(slow.slow_start_window, secs(30), "{lb}");
        if round_robin {
            assert_eq!(slow.aggression.unwrap().default_value, 2.0);
            assert_eq!(slow.min_weight_percent.unwrap().value, 5.0);
        }
    }
}

#[test]
fn connection_pool_table() {
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 100, connectTimeout: 3s, maxConnectionDuration: 1h, idleTimeout: 10m, tcpKeepalive: {probes: 3, time: 60s, interval: 10s}}\n      http: {http1MaxPendingRequests: 10, http2MaxRequests: 200, maxRequestsPerConnection: 5, maxRetries: 4, idleTimeout: 30s, maxConcurrentStreams: 50}\n",
    )));
    let c = find(&clusters, &name(9090, ""));
    assert_eq!(c.connect_timeout, secs(3));
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries),
        (u32v(100), u32v(10), u32v(200), u32v(4))
    );
    let keepalive = c.upstream_connection_options.as_ref().unwrap().tcp_keepalive.as_ref().unwrap();
    assert_eq!(
        (keepalive.keepalive_probes, keepalive.keepalive_time, keepalive.keepalive_interval),
        (u32v(3), u32v(60), u32v(10))
    );
    let http = http_options(c).unwrap();
    let common = http.common_http_protocol_options.unwrap();
    assert_eq!(common.idle_timeout, secs(30), "http idle timeout wins over tcp's");
    assert_eq!(common.max_requests_per_connection, u32v(5));
    assert_eq!(common.max_connection_duration, secs(3600));
    match http.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)) => {
                assert_eq!(h2.max_concurrent_streams, u32v(50))
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // HTTP/1.1 port: same options, explicit HTTP/1.1 because options exist.
    let http1 = http_options(find(&clusters, &name(9080, ""))).unwrap();
    assert!(matches!(
        http1.upstream_protocol_options,
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e))
            if matches!(e.protocol_config, Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)))
    ));
}

#[test]
fn tcp_idle_timeout_when_http_sets_none_and_bad_values_dropped() {
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    connectionPool:\n      tcp: {idleTimeout: 0s, connectTimeout: 0s, maxConnections: -5}\n",
    )));
    let c = find(&clusters, &name(9080, ""));
    assert_eq!(http_options(c).unwrap().common_http_protocol_options.unwrap().idle_timeout, secs(0));
    assert_eq!(c.connect_timeout, secs(10), "zero connect timeout dropped");
    assert_eq!(c.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections, u32v(u32::MAX), "negative dropped");
}

#[test]
fn upstream_protocol_table() {
    let pool = |http: &str| dr(&format!("  trafficPolicy:\n    connectionPool:\n      http: {{{http}}}\n"));
    let cases: &[(String, bool, u32, bool, bool)] = &[
        // (config, mesh UPGRADE, port, want h2, want downstream)
        (pool("h2UpgradePolicy: UPGRADE"), false, 9080, true, false),
        (pool("h2UpgradePolicy: UPGRADE"), false, 7000, true, false),
        (pool("h2UpgradePolicy: DO_NOT_UPGRADE"), true, 9080, false, false),
        (String::new(), true, 9080, true, false),
        (String::new(), true, 7000, false, true),
        (pool("useClientProtocol: true"), true, 9080, false, true),
        (pool("h2UpgradePolicy: DO_NOT_UPGRADE"), false, 9090, true, false),
    ];
    for (config, mesh_upgrade, port, h2, downstream) in cases {
        let mut snap = snapshot(config);
        if *mesh_upgrade {
            snap.mesh.h2_upgrade_policy = Some(rudder_config::mesh::H2UpgradePolicy::Upgrade);
        }
        let clusters = outbound(&snap);
        let c = find(&clusters, &name(*port, ""));
        assert_eq!(
            (is_h2(c), uses_downstream(c)),
            (*h2, *downstream),
            "{config} mesh upgrade {mesh_upgrade} port {port}"
        );
    }
}

#[test]
fn outlier_detection_table() {
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 0, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}\n",
    )));
    let c = find(&clusters, &name(9080, ""));
    let o = c.outlier_detection.as_ref().unwrap();
    assert_eq!((o.consecutive_5xx, o.enforcing_consecutive_5xx), (u32v(5), u32v(100)));
    assert_eq!((o.consecutive_gateway_failure, o.enforcing_consecutive_gateway_failure), (u32v(0), u32v(0)));
    assert_eq!((o.interval, o.base_ejection_time, o.max_ejection_percent), (secs(5), secs(60), u32v(50)));
    assert_eq!(o.enforcing_success_rate, u32v(0));
    assert!(o.split_external_local_origin_errors);
    assert_eq!(
        (o.consecutive_local_origin_failure, o.enforcing_consecutive_local_origin_failure),
        (u32v(2), u32v(100))
    );
    assert_eq!(c.common_lb_config.as_ref().unwrap().healthy_panic_threshold.unwrap().value, 0.0, "unset min health: 0");

    let with_min = |min: &str| {
        let clusters = outbound(&snapshot(&dr(&format!(
            "  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1, minHealthPercent: {min}}}\n"
        ))));
        find(&clusters, &name(9080, "")).common_lb_config.as_ref().unwrap().healthy_panic_threshold
    };
    assert_eq!(with_min("30").unwrap().value, 30.0);
    assert_eq!(with_min("-1"), None);
    // Without outlier detection Envoy's own panic threshold stays.
    assert_eq!(
        find(&outbound(&snapshot("")), &name(9080, "")).common_lb_config.as_ref().unwrap().healthy_panic_threshold,
        None
    );
}

#[test]
fn retry_budget() {
    let clusters = outbound(&snapshot(&dr("  trafficPolicy:\n    retryBudget: {percent: 25}\n")));
    let budget =
        find(&clusters, &name(9080, "")).circuit_breakers.as_ref().unwrap().thresholds[0].retry_budget.unwrap();
    assert_eq!(budget.budget_percent.unwrap().value, 25.0);
    assert_eq!(budget.min_retry_concurrency, u32v(3));
}

#[test]
fn retry_budget_interval() {
    let budget = |spec: &str| {
        let clusters = outbound(&snapshot(&dr(&format!("  trafficPolicy:\n    retryBudget: {spec}\n"))));
        find(&clusters, &name(9080, "")).circuit_breakers.as_ref().unwrap().thresholds[0].retry_budget.unwrap()
    };
    assert_eq!(budget("{percent: 25, budgetInterval: 10s}").budget_interval, secs(10));
    assert_eq!(budget("{budgetInterval: 1500ms}").budget_interval, Some(PbDuration { seconds: 1, nanos: 500_000_000 }));
    assert_eq!(budget("{budgetInterval: 0s}").budget_interval, None, "0s is Envoy's default: active requests only");
    assert_eq!(budget("{percent: 25}").budget_interval, None);
}

#[test]
fn backend_utilization_is_client_side_weighted_round_robin() {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    loadBalancer: {backendUtilization: {blackoutPeriod: 30s}, warmup: {duration: 20s, minimumPercent: 10}}\n  subsets:\n  - {name: plain, labels: {version: v1}, trafficPolicy: {loadBalancer: {backendUtilization: {}}}}\n  - {name: simple, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n",
    )));
    let policy = |c: &Cluster| {
        let policies = &c.load_balancing_policy.as_ref().expect("load_balancing_policy").policies;
        assert_eq!(policies.len(), 1);
        let ext = policies[0].typed_extension_config.as_ref().unwrap();
        assert_eq!(ext.name, cluster::CSWRR_POLICY);
        let any = ext.typed_config.as_ref().unwrap();
        assert!(any.type_url.ends_with("ClientSideWeightedRoundRobin"), "{}", any.type_url);
        ClientSideWeightedRoundRobin::decode(any.value.as_slice()).unwrap()
    };
    let c = find(&clusters, &name(9080, ""));
    assert_eq!(c.lb_config, None);
    let cswrr = policy(c);
    assert_eq!(cswrr.blackout_period, secs(30));
    let slow = cswrr.slow_start_config.expect("warmup is the policy's slow start");
    assert_eq!((slow.slow_start_window, slow.min_weight_percent.map(|p| p.value)), (secs(20), Some(10.0)));
    // A subset's own backendUtilization: Envoy's defaults.
    assert_eq!(policy(find(&clusters, &name(9080, "plain"))), ClientSideWeightedRoundRobin::default());
    // A subset that chooses a simple policy replaces the rule's load balancer.
    let simple = find(&clusters, &name(9080, "simple"));
    assert_eq!((simple.lb_policy, simple.load_balancing_policy.is_none()), (LbPolicy::Random as i32, true));
}

#[test]
fn zone_aware_and_locality_settings_shape_common_lb_config() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
        LocalityConfigSpecifier, LocalityWeightedLbConfig, ZoneAwareLbConfig,
    };
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::UInt64Value;
    let specifier = |rule: &str| {
        let clusters = outbound(&snapshot(&dr(rule)));
        let c = find(&clusters, &name(9080, ""));
        (c.lb_policy, c.common_lb_config.as_ref().and_then(|l| l.locality_config_specifier))
    };
    let zone_aware = |routing: f64, min: Option<u64>| {
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(ZoneAwareLbConfig {
            routing_enabled: Some(Percent { value: routing }),
            min_cluster_size: min.map(|value| UInt64Value { value }),
            ..Default::default()
        }))
    };
    let cases = [
        (
            "zone-aware",
            "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN, zoneAwareLbSetting: {minClusterSize: 3}}\n",
            zone_aware(100.0, Some(3)),
        ),
        // Off must say 0 %: Envoy routes by zone by default once a proxy has a local cluster.
        (
            "zone-aware off",
            "  trafficPolicy:\n    loadBalancer: {zoneAwareLbSetting: {enabled: false}}\n",
            zone_aware(0.0, None),
        ),
        // Default failover needs only priorities; explicit failover and distribute weigh localities.
        ("default failover", "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1}\n", None),
        (
            "explicit failover",
            "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1}\n    loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}]}}\n",
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {})),
        ),
        (
            "failover without outlier detection does nothing",
            "  trafficPolicy:\n    loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}]}}\n",
            None,
        ),
        (
            "distribute",
            "  trafficPolicy:\n    loadBalancer: {localityLbSetting: {distribute: [{from: r1/*, to: {r1/*: 100}}]}}\n",
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {})),
        ),
    ];
    for (what, rule, want) in cases {
        assert_eq!(specifier(rule).1, want, "{what}");
    }
    assert_eq!(specifier(cases[0].1).0, LbPolicy::RoundRobin as i32);

    // The mesh's zone-aware setting, for rules without a locality setting of their own.
    let mesh_wide = |rule: &str| {
        let mut snapshot = snapshot(&dr(rule));
        snapshot.mesh.zone_aware_lb_setting = Some(serde_saphyr::from_str("minClusterSize: 2").unwrap());
        let clusters = outbound(&snapshot);
        find(&clusters, &name(9080, "")).common_lb_config.as_ref().and_then(|l| l.locality_config_specifier)
    };
    assert_eq!(
        mesh_wide("  trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}\n"),
        zone_aware(100.0, Some(2))
    );
    assert_eq!(
        mesh_wide(
            "  trafficPolicy:\n    loadBalancer: {localityLbSetting: {distribute: [{from: r1/*, to: {r1/*: 100}}]}}\n"
        ),
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {})),
        "a rule's own locality setting wins"
    );
}

#[test]
fn http2_keepalive_on_http2_upstreams_only() {
    use envoy_types::pb::envoy::config::core::v3::{Http2ProtocolOptions, KeepaliveSettings};
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    connectionPool: {http: {http2KeepAlive: {interval: 30s, timeout: 5s}}}\n  subsets:\n  - {name: interval-only, labels: {version: v1}, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, http2KeepAlive: {interval: 1m}}}}}\n",
    )));
    let h2 = |c: &Cluster| -> Option<Http2ProtocolOptions> {
        match http_options(c)?.upstream_protocol_options? {
            UpstreamProtocolOptions::ExplicitHttpConfig(e) => match e.protocol_config? {
                explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2) => Some(h2),
                _ => None,
            },
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(d) => d.http2_protocol_options,
            _ => None,
        }
    };
    let want = KeepaliveSettings { interval: secs(30), timeout: secs(5), ..Default::default() };
    // gRPC port: explicit HTTP/2.
    assert_eq!(h2(find(&clusters, &name(9090, ""))).unwrap().connection_keepalive, Some(want));
    // Undeclared protocol on a sidecar: the HTTP/2 side of "use the downstream protocol".
    assert_eq!(h2(find(&clusters, &name(7000, ""))).unwrap().connection_keepalive, Some(want));
    // Plain HTTP/1.1 port: no HTTP/2 options to carry it.
    assert!(h2(find(&clusters, &name(9080, ""))).is_none());
    // Upgraded port, interval only: the 20s default timeout Envoy requires.
    assert_eq!(
        h2(find(&clusters, &name(9080, "interval-only"))).unwrap().connection_keepalive,
        Some(KeepaliveSettings { interval: secs(60), timeout: secs(20), ..Default::default() })
    );
}

#[test]
fn outlier_error_codes_are_an_error_matcher_on_status() {
    use envoy_types::pb::envoy::config::common::matcher::v3::{MatchPredicate, match_predicate};
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [429, 503]}\n  subsets:\n  - {name: one, labels: {version: v1}, trafficPolicy: {outlierDetection: {outlierDetectionHttpErrorCodes: [404]}}}\n",
    )));
    let status = |p: &MatchPredicate| match &p.rule {
        Some(match_predicate::Rule::HttpResponseHeadersMatch(h)) => {
            assert_eq!(h.headers.len(), 1);
            assert_eq!(h.headers[0].name, ":status");
            match &h.headers[0].header_match_specifier {
                Some(HeaderMatchSpecifier::StringMatch(m)) => match &m.match_pattern {
                    Some(MatchPattern::Exact(code)) => code.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    };
    let matcher = |c: &Cluster| http_options(c).unwrap().outlier_detection.unwrap().error_matcher.unwrap();
    let http = find(&clusters, &name(9080, ""));
    match matcher(http).rule {
        Some(match_predicate::Rule::OrMatch(set)) => {
            assert_eq!(set.rules.iter().map(status).collect::<Vec<_>>(), ["429", "503"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(http.outlier_detection.as_ref().unwrap().consecutive_5xx, u32v(3));
    // HTTP/1.1 options carry the matcher without changing the upstream protocol.
    assert!(!is_h2(http));
    assert_eq!(status(&matcher(find(&clusters, &name(9080, "one")))), "404");
    assert!(http_options(find(&clusters, &name(9090, ""))).unwrap().outlier_detection.is_some());
}

#[test]
fn outlier_error_codes_leave_tcp_clusters_alone() {
    let mut snap = snapshot(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: default}\nspec:\n  host: db.default.svc.cluster.local\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [429]}\n",
    );
    let db = "db.default.svc.cluster.local";
    snap.services.insert(db.into(), service(db, Resolution::ClientSideLb, vec![port("tcp-db", 5432)]));
    let clusters = outbound(&snap);
    let c = find(&clusters, &format!("outbound|5432||{db}"));
    assert!(c.outlier_detection.is_some());
    assert!(http_options(c).is_none(), "a TCP cluster gets no HTTP protocol options");
}

#[test]
fn port_level_settings_replace_the_rule_policy() {
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    connectionPool: {tcp: {maxConnections: 7}}\n    portLevelSettings:\n    - port: {number: 9080}\n      loadBalancer: {simple: ROUND_ROBIN}\n",
    )));
    let on_port = find(&clusters, &name(9080, ""));
    assert_eq!(on_port.lb_policy, LbPolicy::RoundRobin as i32);
    assert_eq!(
        on_port.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections,
        u32v(u32::MAX),
        "not inherited"
    );
    let other = find(&clusters, &name(9090, ""));
    assert_eq!(other.lb_policy, LbPolicy::Random as i32);
    assert_eq!(other.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections, u32v(7));
}

#[test]
fn subset_policy_merges_over_the_rule_policy() {
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    connectionPool: {tcp: {maxConnections: 7}}\n    portLevelSettings:\n    - port: {number: 9090}\n      loadBalancer: {simple: LEAST_REQUEST}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      loadBalancer: {simple: ROUND_ROBIN}\n  - name: v2\n    labels: {version: v2}\n    trafficPolicy:\n      connectionPool: {tcp: {maxConnections: 9}}\n      portLevelSettings:\n      - port: {number: 9080}\n        outlierDetection: {consecutive5xxErrors: 3}\n",
    )));
    let max_conn = |c: &Cluster| c.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections;
    let v1 = find(&clusters, &name(9080, "v1"));
    assert_eq!(v1.lb_policy, LbPolicy::RoundRobin as i32, "subset's load balancer");
    assert_eq!(max_conn(v1), u32v(7), "rule's pool kept");
    let v1_grpc = find(&clusters, &name(9090, "v1"));
    assert_eq!(v1_grpc.lb_policy, LbPolicy::RoundRobin as i32, "subset wins over the rule's port level");
    let v2 = find(&clusters, &name(9080, "v2"));
    assert_eq!(v2.lb_policy, LbPolicy::LeastRequest as i32, "subset port level replaces everything");
    assert_eq!(max_conn(v2), u32v(u32::MAX));
    assert!(v2.outlier_detection.is_some());
    let v2_grpc = find(&clusters, &name(9090, "v2"));
    assert_eq!(max_conn(v2_grpc), u32v(9));
    assert_eq!(v2_grpc.lb_policy, LbPolicy::LeastRequest as i32, "rule's port level for 9090");
}

#[test]
fn tls_disable_and_simple() {
    let clusters = outbound(&snapshot(&dr("  trafficPolicy:\n    tls: {mode: DISABLE}\n")));
    assert!(find(&clusters, &name(9080, "")).transport_socket.is_none());

    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    tls: {mode: SIMPLE, sni: reviews.example.com, caCertificates: /etc/certs/ca.pem, subjectAltNames: [reviews.example.com, 'spiffe://cluster.local/ns/default/sa/reviews']}\n",
    )));
    let c = find(&clusters, &name(9090, ""));
    let tls = tls_context(c);
    assert_eq!(tls.sni, "reviews.example.com");
    let common = tls.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2"]);
    assert!(common.tls_certificates.is_empty());
    match common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
            assert_eq!(v.match_typed_subject_alt_names.len(), 2);
            assert_eq!(v.match_typed_subject_alt_names[0].san_type, 2, "DNS");
            assert_eq!(v.match_typed_subject_alt_names[1].san_type, 3, "URI");
            assert!(v.trusted_ca.is_some());
        }
        other => panic!("{other:?}"),
    }

    // No SNI: Envoy derives it (and the SAN check) from the request.
    let clusters = outbound(&snapshot(&dr("  trafficPolicy:\n    tls: {mode: SIMPLE}\n")));
    let c = find(&clusters, &name(9080, ""));
    let upstream = http_options(c).unwrap().upstream_http_protocol_options.unwrap();
    assert!(upstream.auto_sni && upstream.auto_san_validation);
    match tls_context(c).common_tls_context.unwrap().validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => assert!(v.system_root_certs.is_some()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tls_mutual_files_and_credential_name() {
    let clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    tls: {mode: MUTUAL, clientCertificate: /c/cert.pem, privateKey: /c/key.pem, caCertificates: /c/ca.pem}\n",
    )));
    let common = tls_context(find(&clusters, &name(9080, ""))).common_tls_context.unwrap();
    assert_eq!(common.tls_certificates.len(), 1);

    // At a sidecar, Istio reads credentialName only from a rule that selects the workload;
    // a namespace-wide rule keeps the certificate files (here none: no client certificate).
    let general = "  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: reviews-client}\n";
    let clusters = outbound(&snapshot(&dr(general)));
    let common = tls_context(find(&clusters, &name(9080, ""))).common_tls_context.unwrap();
    assert!(common.tls_certificate_sds_secret_configs.is_empty() && common.tls_certificates.is_empty());
    assert!(matches!(
        common.validation_context_type,
        Some(common_tls_context::ValidationContextType::ValidationContext(ref v)) if v.system_root_certs.is_some()
    ));

    let selecting = format!("  workloadSelector: {{matchLabels: {{app: client}}}}\n{general}");
    let clusters = outbound(&snapshot(&dr(&selecting)));
    let common = tls_context(find(&clusters, &name(9080, ""))).common_tls_context.unwrap();
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "kubernetes://reviews-client");
    let ads = common.tls_certificate_sds_secret_configs[0].sds_config.as_ref().unwrap();
    assert!(matches!(ads.config_source_specifier, Some(config_source::ConfigSourceSpecifier::Ads(_))));
    assert_eq!(ads.initial_fetch_timeout, None, "a missing secret must not block");
    match common.validation_context_type {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) => {
            assert_eq!(v.validation_context_sds_secret_config.unwrap().name, "kubernetes://reviews-client-cacert")
        }
        other => panic!("{other:?}"),
    }
}

/// The Secrets a rule's credentialName names are served over SDS from the proxy's namespace:
/// the certificate (MUTUAL) and the CA the server is verified with; a credential of another
/// namespace is not.
#[test]
fn credential_name_secrets_are_served_from_the_proxy_namespace() {
    use rudder_xds::model::TlsCredential;
    let selecting = "  workloadSelector: {matchLabels: {app: client}}\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: reviews-client}\n";
    let mut snap = snapshot(&dr(selecting));
    let both = TlsCredential {
        certificate_chain: b"CERT".to_vec(),
        private_key: b"KEY".to_vec(),
        ca_certificates: b"CA".to_vec(),
        ..Default::default()
    };
    snap.secrets.insert("default/reviews-client".into(), Arc::new(both.clone()));
    let names = |snap: &Snapshot| -> Vec<String> {
        rudder_xds::translate::outbound(snap, &proxy()).secrets.into_iter().map(|s| s.name).collect()
    };
    assert_eq!(names(&snap), ["kubernetes://reviews-client", "kubernetes://reviews-client-cacert"]);
    // A ConfigMap of the credential's name supplies the CA first, as for gateways.
    snap.secrets.insert(
        "default/ConfigMap/reviews-client".into(),
        Arc::new(TlsCredential { ca_certificates: b"BUNDLE".to_vec(), ..Default::default() }),
    );
    let served = rudder_xds::translate::outbound(&snap, &proxy()).secrets;
    assert!(format!("{:?}", served[1]).contains(&format!("{:?}", b"BUNDLE".to_vec())), "{served:?}");
    // Another namespace's Secret of that name is never handed out.
    let mut elsewhere = snapshot(&dr(selecting));
    elsewhere.secrets.insert("other/reviews-client".into(), Arc::new(both));
    assert!(names(&elsewhere).is_empty());
}

#[test]
fn tls_istio_mutual() {
    let mut snap = snapshot(&dr(
        "  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n",
    ));
    snap.endpoints.insert(REVIEWS.into(), Arc::new(vec![endpoint("10.0.0.1", 9080, "http", &[("version", "v1")])]));
    let clusters = outbound(&snap);
    let tls = tls_context(find(&clusters, &name(9080, "v1")));
    assert_eq!(tls.sni, format!("outbound_.9080_.v1_.{REVIEWS}"));
    let common = tls.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    match &common.tls_certificate_sds_secret_configs[0].sds_config.as_ref().unwrap().config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) => {
            assert!(format!("{:?}", api.grpc_services[0].target_specifier).contains("sds-grpc"))
        }
        other => panic!("{other:?}"),
    }
    match common.validation_context_type {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) => {
            assert_eq!(v.validation_context_sds_secret_config.unwrap().name, "ROOTCA");
            let sans = v.default_validation_context.unwrap().match_typed_subject_alt_names;
            assert!(format!("{:?}", sans[0].matcher).contains("spiffe://cluster.local/ns/default/sa/reviews"));
        }
        other => panic!("{other:?}"),
    }
    let grpc = tls_context(find(&clusters, &name(9090, "")));
    assert_eq!(grpc.common_tls_context.unwrap().alpn_protocols, ["istio-peer-exchange", "istio", "h2"]);

    // A ServiceEntry's subjectAltNames join its endpoints' identities.
    let mut with_sans = snap.clone();
    let mut service = (*with_sans.services[REVIEWS]).clone();
    service.subject_alt_names = vec!["spiffe://other.domain/ns/vm/sa/reviews-vm".into()];
    with_sans.services.insert(REVIEWS.into(), Arc::new(service));
    let clusters = outbound(&with_sans);
    let common = tls_context(find(&clusters, &name(9080, "v1"))).common_tls_context.unwrap();
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    let sans = format!("{:?}", v.default_validation_context.unwrap().match_typed_subject_alt_names);
    assert!(sans.contains("spiffe://cluster.local/ns/default/sa/reviews"), "{sans}");
    assert!(sans.contains("spiffe://other.domain/ns/vm/sa/reviews-vm"), "{sans}");
}

#[test]
fn proxy_protocol_wraps_the_transport_socket() {
    let clusters = outbound(&snapshot(&dr("  trafficPolicy:\n    proxyProtocol: {version: V2}\n")));
    let socket = find(&clusters, &name(9080, "")).transport_socket.clone().unwrap();
    assert_eq!(socket.name, "envoy.transport_sockets.upstream_proxy_protocol");
}

#[test]
fn inbound_clusters() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: default}\nspec:\n  inboundConnectionPool: {tcp: {maxConnections: 11}}\n  ingress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {number: 9090, protocol: GRPC, name: grpc}\n    defaultEndpoint: 0.0.0.0:9091\n    connectionPool: {http: {http2MaxRequests: 12}}\n  - port: {number: 7000, protocol: TCP, name: tcp}\n";
    let snap = snapshot(yaml);
    let proxy = proxy();
    let clusters = cluster::inbound(&Context::new(&snap, &proxy));
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["inbound|7000||", "inbound|9080||", "inbound|9090||"]);
    let original = &clusters[0];
    assert_eq!(kind(original), DiscoveryType::OriginalDst);
    assert_eq!(original.upstream_bind_config.as_ref().unwrap().source_address.as_ref().unwrap().address, "127.0.0.6");
    assert_eq!(original.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections, u32v(11));
    let http = &clusters[1];
    assert_eq!(kind(http), DiscoveryType::Static);
    assert!(http.upstream_bind_config.is_none(), "loopback needs no bind");
    assert_eq!(http.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints.len(), 1);
    let grpc = &clusters[2];
    assert!(is_h2(grpc));
    let t = &grpc.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        (t.max_requests, t.max_connections),
        (u32v(12), u32v(u32::MAX)),
        "ingress pool replaces the Sidecar-wide one"
    );
}

#[test]
fn translation_is_deterministic() {
    let yaml = dr(
        "  trafficPolicy:\n    tls: {mode: SIMPLE}\n    outlierDetection: {consecutive5xxErrors: 1}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n",
    );
    let a = outbound(&snapshot(&yaml));
    let b = outbound(&snapshot(&yaml));
    assert_eq!(a, b);
    let encode = |c: &[Cluster]| c.iter().map(|c| c.encode_to_vec()).collect::<Vec<_>>();
    assert_eq!(encode(&a), encode(&b));
}

// ---------------------------------------------------------------------------------------------
// Real Envoy.

/// Every feature at once, plus the inbound clusters, validated by Envoy.
#[test]
fn envoy_accepts_a_rich_cluster_set() {
    let dir = std::env::temp_dir().join(format!("rudder-cluster-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = make_certs(&dir);

    let documents = [
        dr(
            "  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 100, connectTimeout: 3s, maxConnectionDuration: 1h, idleTimeout: 10m, tcpKeepalive: {probes: 3, time: 60s, interval: 10s}}\n      http: {http1MaxPendingRequests: 10, http2MaxRequests: 200, maxRequestsPerConnection: 5, maxRetries: 4, idleTimeout: 30s, maxConcurrentStreams: 50, h2UpgradePolicy: UPGRADE}\n    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 30s, aggression: 2, minimumPercent: 5}}\n    outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 3, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50, minHealthPercent: 20, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}\n    retryBudget: {percent: 25, minRetryConcurrency: 5, budgetInterval: 10s}\n    proxyProtocol: {version: V1}\n    portLevelSettings:\n    - port: {number: 9090}\n      loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}\n      tls: {mode: ISTIO_MUTUAL}\n  subsets:\n  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 10s}, ringHash: {minimumRingSize: 2048}}}}}\n  - {name: v3, labels: {version: v3}, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}\n  - {name: v4, labels: {version: v4}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, sni: custom.sni}, connectionPool: {http: {useClientProtocol: true}}}}\n  - {name: v5, labels: {version: v5}, trafficPolicy: {loadBalancer: {backendUtilization: {blackoutPeriod: 30s}, warmup: {duration: 20s}}, connectionPool: {http: {h2UpgradePolicy: UPGRADE, http2KeepAlive: {interval: 30s, timeout: 5s}}}, outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [429, 503]}}}\n"
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE, sni: api.example.com, caCertificates: {ca}, subjectAltNames: [api.example.com], caCrl: ''}}\n    proxyProtocol: {{version: V2}}\n",
            ca = certs.ca
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: mtls, namespace: default}}\nspec:\n  host: mtls.example.com\n  trafficPolicy:\n    tls: {{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}\n    loadBalancer: {{consistentHash: {{useSourceIp: true}}}}\n",
            cert = certs.cert,
            key = certs.key,
            ca = certs.ca
        ),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cred, namespace: default}\nspec:\n  host: cred.example.com\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: cred-secret}\n  subsets:\n  - {name: plain, labels: {a: b}, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}}\n".to_owned(),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: default}\nspec:\n  inboundConnectionPool: {tcp: {maxConnections: 11}, http: {idleTimeout: 5s}}\n  ingress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {number: 9090, protocol: GRPC, name: grpc}\n    defaultEndpoint: 10.0.0.9:9091\n  - port: {number: 7000, protocol: TCP, name: tcp}\n".to_owned(),
    ];
    let mut snap = snapshot(&documents.join("\n---\n"));
    snap.mesh.tcp_keepalive =
        Some(rudder_config::networking::destination_rule::TcpKeepalive { probes: Some(9), ..Default::default() });
    snap.services
        .insert("api.example.com".into(), service("api.example.com", Resolution::Dns, vec![port("https", 443)]));
    snap.services.insert(
        "mtls.example.com".into(),
        service("mtls.example.com", Resolution::DnsRoundRobin, vec![port("tls", 8443)]),
    );
    snap.services.insert(
        "cred.example.com".into(),
        service("cred.example.com", Resolution::Dns, vec![port("http", 80), port("grpc", 81)]),
    );
    snap.services.insert(
        "headless.default.svc.cluster.local".into(),
        service("headless.default.svc.cluster.local", Resolution::Passthrough, vec![port("tcp", 9000)]),
    );
    snap.endpoints.insert(
        REVIEWS.into(),
        Arc::new(vec![
            Endpoint {
                locality: "us-east/a/1".into(),
                weight: 3,
                tls_mode: "istio".into(),
                workload: "r1".into(),
                ..endpoint("10.0.0.1", 9080, "http", &[("version", "v1")])
            },
            endpoint("10.0.0.2", 9090, "grpc", &[("version", "v2")]),
        ]),
    );
    snap.endpoints.insert(
        "cred.example.com".into(),
        Arc::new(vec![
            Endpoint { locality: "eu/x".into(), ..endpoint("cred-1.example.com", 8080, "http", &[("a", "b")]) },
            endpoint("cred-2.example.com", 8081, "grpc", &[]),
        ]),
    );
    let proxy = proxy();
    let ctx = Context::new(&snap, &proxy);
    let mut clusters = cluster::outbound(&ctx);
    assert_encoded_as_built(&ctx, &clusters);
    clusters.extend(cluster::inbound(&ctx));
    assert!(clusters.len() > 25, "{}", clusters.len());

    let result = envoy_validates_with_ads(clusters, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}

/// Runs `envoy --mode validate` on the clusters inside a bootstrap shaped like Istio's: a node
/// identity (SDS subscriptions need one), ADS configured against an `xds-grpc` cluster (so EDS
/// clusters and `credentialName` secrets keep their ADS config source) and the `sds-grpc`
/// cluster ISTIO_MUTUAL secrets come from. `testing::envoy_accepts` has neither node nor ADS,
/// so it would refuse these clusters for reasons that are not theirs.
fn envoy_validates_with_ads(mut clusters: Vec<Cluster>, dir: &std::path::Path) -> Result<(), String> {
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
    use envoy_types::pb::envoy::config::core::v3::{
        ApiConfigSource, ApiVersion, GrpcService, Node, api_config_source, grpc_service,
    };

    let static_cluster = |name: &str| Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: secs(1),
        ..Default::default()
    };
    clusters.push(static_cluster("xds-grpc"));
    clusters.push(static_cluster(cluster::SDS_CLUSTER));
    let bootstrap = Bootstrap {
        node: Some(Node {
            id: "sidecar~10.0.0.9~client-1.default~default.svc.cluster.local".into(),
            cluster: "client.default".into(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources { clusters, ..Default::default() }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                        cluster_name: "xds-grpc".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let file = dir.join("bootstrap.pb");
    std::fs::write(&file, bootstrap.encode_to_vec()).map_err(|e| e.to_string())?;
    let envoy = rudder_xds::testing::envoy_path()?;
    let out = std::process::Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "--config-path"])
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

struct Certs {
    ca: String,
    cert: String,
    key: String,
}

/// A self-signed CA and a client certificate signed by it (Envoy reads the files while
/// validating).
fn make_certs(dir: &std::path::Path) -> Certs {
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=client",
        "-keyout",
        &path("client.key"),
        "-out",
        &path("client.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &path("client.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &path("client.pem"),
    ]);
    Certs { ca: path("ca.pem"), cert: path("client.pem"), key: path("client.key") }
}

/// The validation above really looks at the clusters: a value Envoy forbids is refused.
#[test]
fn envoy_validation_refuses_a_bad_cluster() {
    let dir = std::env::temp_dir().join(format!("rudder-cluster-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut clusters = outbound(&snapshot(&dr(
        "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 65537}}}\n",
    )));
    let c = clusters.iter_mut().find(|c| c.name == name(9080, "")).unwrap();
    c.lb_config =
        Some(LbConfig::MaglevLbConfig(envoy_types::pb::envoy::config::cluster::v3::cluster::MaglevLbConfig {
            table_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 65536 }),
        }));
    let result = envoy_validates_with_ads(clusters, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let err = result.unwrap_err();
    assert!(err.contains("prime"), "{err}");
}
