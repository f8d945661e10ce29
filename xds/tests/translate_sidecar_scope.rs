//! Sidecar scoping: a `Sidecar` whose egress hosts name its own namespace gives the proxy only
//! that namespace's services. Measured on the synthetic mesh spread over 100 namespaces: the
//! scoped proxy's config (clusters, listeners, routes and the assignments of its EDS clusters,
//! encoded) is at least ten times smaller than the unscoped one's.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use rudder_config::IstioObject;
use rudder_e2e::synthetic;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::server::cache::{EncodedSet, EndpointTable};
use rudder_xds::translate;

const SCOPE: &str = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bench-0}
spec:
  egress:
  - hosts: ["./*", "istio-system/*"]
"#;

fn proxy() -> Proxy {
    let metadata: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({"LABELS": {"app": "client"}, "NAMESPACE": "bench-0"})).unwrap();
    Proxy::from_node("sidecar~10.0.0.1~client-1.bench-0~bench-0.svc.cluster.local", &metadata).unwrap()
}

/// Bytes the proxy is sent: its encoded resources and the assignments of its EDS clusters.
fn config_bytes(snapshot: &Snapshot, proxy: &Proxy) -> (usize, usize) {
    let resources = translate::for_proxy(snapshot, proxy);
    let eds: Vec<String> = resources
        .clusters
        .iter()
        .filter(|c| c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)))
        .map(|c| c.name.clone())
        .collect();
    let clusters = resources.clusters.len();
    let encoded = EncodedSet::encode(resources, None);
    let table = EndpointTable::build(translate::endpoints(snapshot), None);
    let sizes = |map: &rudder_xds::server::cache::ResourceMap| map.values().map(|r| r.value.len()).sum::<usize>();
    let endpoint_bytes: usize = eds.iter().filter_map(|name| table.encoded.get(name)).map(|r| r.value.len()).sum();
    (sizes(&encoded.clusters) + sizes(&encoded.listeners) + sizes(&encoded.routes) + endpoint_bytes, clusters)
}

#[test]
fn a_sidecar_scoped_to_its_namespace_gets_a_tenth_of_the_config_or_less() {
    let mut snapshot = synthetic::snapshot_in_namespaces(1_000, 1, 2, 100);
    let (unscoped, unscoped_clusters) = config_bytes(&snapshot, &proxy());

    let loads = rudder_config::load::load_str("sidecar.yaml", SCOPE).unwrap();
    let IstioObject::Sidecar(sidecar) = loads.objects.into_iter().next().unwrap().object else { panic!() };
    snapshot.sidecars.push(Arc::new(*sidecar));
    let (scoped, scoped_clusters) = config_bytes(&snapshot, &proxy());

    // 10 of the 1,000 services are in bench-0: their default and subset clusters, plus the
    // proxy's own (BlackHole, Passthrough, InboundPassthrough).
    assert_eq!(scoped_clusters, 10 * 3 + 3);
    assert_eq!(unscoped_clusters, 1_000 * 3 + 3);
    eprintln!("config bytes: unscoped {unscoped}, scoped {scoped} ({:.1}x smaller)", unscoped as f64 / scoped as f64);
    assert!(scoped * 10 <= unscoped, "scoped {scoped} bytes vs unscoped {unscoped}");
}

#[test]
fn an_egress_listener_with_a_port_scopes_that_port_and_the_catch_all_the_others() {
    // Four services of two ports (8080, 8081) in one namespace.
    let mut snapshot = synthetic::snapshot_in_namespaces(4, 2, 1, 1);
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bench-0}
spec:
  egress:
  - port: {number: 8080, protocol: HTTP, name: http}
    hosts: ["./svc-0.bench-0.svc.cluster.local"]
  - hosts: ["./*"]
"#;
    let loads = rudder_config::load::load_str("sidecar.yaml", yaml).unwrap();
    assert!(loads.problems.is_empty(), "{:?}", loads.problems);
    let IstioObject::Sidecar(sidecar) = loads.objects.into_iter().next().unwrap().object else { panic!() };
    snapshot.sidecars.push(Arc::new(*sidecar));
    let resources = translate::for_proxy(&snapshot, &proxy());
    let defaults: Vec<&str> = resources
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| n.starts_with("outbound|") && n.contains("||"))
        .collect();
    assert_eq!(
        defaults,
        [
            "outbound|8080||svc-0.bench-0.svc.cluster.local",
            "outbound|8081||svc-0.bench-0.svc.cluster.local",
            "outbound|8081||svc-1.bench-0.svc.cluster.local",
            "outbound|8081||svc-2.bench-0.svc.cluster.local",
            "outbound|8081||svc-3.bench-0.svc.cluster.local",
        ]
    );
    let route_8080 = resources.routes.iter().find(|r| r.name == "8080").unwrap();
    let hosts: Vec<&str> = route_8080.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(hosts, ["svc-0.bench-0.svc.cluster.local:8080", "allow_any"]);
}

/// `outboundTrafficPolicy.egressProxy`: unknown destinations of the sidecar's workloads go to
/// the egress proxy's cluster, TCP (the catch-all chain) and HTTP (the `allow_any` host) alike.
#[test]
fn an_egress_proxy_takes_unknown_destinations() {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
    use prost::Message;
    let mut snapshot = synthetic::snapshot_in_namespaces(20, 1, 2, 2);
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: bench-0}\n\
                   spec:\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    \
                   egressProxy: {host: egress.bench-1.svc.cluster.local, subset: v1, port: {number: 8080}}\n";
    let loads = rudder_config::load::load_str("sidecar.yaml", sidecar).unwrap();
    let IstioObject::Sidecar(sidecar) = loads.objects.into_iter().next().unwrap().object else { panic!() };
    snapshot.sidecars.push(Arc::new(*sidecar));
    let want = "outbound|8080|v1|egress.bench-1.svc.cluster.local";
    let resources = translate::outbound(&snapshot, &proxy());

    let outbound = resources.listeners.iter().find(|l| l.name == "virtualOutbound").unwrap();
    let catch_all = outbound.default_filter_chain.as_ref().or_else(|| outbound.filter_chains.last()).unwrap();
    let tcp_clusters: Vec<String> = std::iter::once(catch_all)
        .chain(outbound.filter_chains.iter())
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url.ends_with("TcpProxy") => {
                match TcpProxy::decode(any.value.as_slice()).ok()?.cluster_specifier? {
                    tcp_proxy::ClusterSpecifier::Cluster(c) => Some(c),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    assert!(tcp_clusters.iter().any(|c| c == want), "{tcp_clusters:?}");
    assert!(!tcp_clusters.iter().any(|c| c == "PassthroughCluster"), "{tcp_clusters:?}");

    let allow_any: Vec<String> = resources
        .routes
        .iter()
        .flat_map(|r| r.virtual_hosts.iter())
        .filter(|v| v.name == "allow_any")
        .flat_map(|v| v.routes.iter())
        .filter_map(|r| match r.action.as_ref()? {
            Action::Route(a) => match a.cluster_specifier.as_ref()? {
                ClusterSpecifier::Cluster(c) => Some(c.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(!allow_any.is_empty() && allow_any.iter().all(|c| c == want), "{allow_any:?}");
}
