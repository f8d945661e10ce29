//! EnvoyFilter patches on the config translation generates, read from a config directory as
//! discovery reads them: which proxies and objects a patch reaches (namespace, root namespace,
//! workloadSelector, targetRefs, proxy version, context, listener / filter chain / filter /
//! route configuration / cluster matches), what each operation does for each `applyTo`, the
//! order of several filters, and that a patch that cannot apply is left out (and named) while
//! everything else is served. `envoy_filter_envoy.rs` runs the result in a real Envoy.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use prost::Message;
use rudder_config::networking::envoy_filter::PatchContext;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::testing::config_dir_snapshot;
use rudder_xds::translate::{self, LabelSelectors, Resources, ViewKey, envoy_filter::Patches};

/// httpbin in `apps` (HTTP 8000, TCP 9000) at 10.244.0.10; an ingress gateway workload in
/// `istio-system` at 10.244.0.30 with a Gateway serving HTTP on 80 (the service maps it to
/// 8080) and HTTPS on 443.
const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: apps}
spec:
  hosts: [httpbin.apps.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 8000, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.10, labels: {app: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ingress, namespace: istio-system}
spec:
  hosts: [istio-ingressgateway.istio-system.svc.cluster.local]
  addresses: [10.96.0.30]
  ports: [{number: 80, name: http2, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.30, labels: {istio: ingressgateway}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-web, namespace: apps}
spec:
  hosts: ["*"]
  gateways: [istio-system/web]
  http: [{name: to-httpbin, route: [{destination: {host: httpbin.apps.svc.cluster.local, port: {number: 8000}}}]}]
"#;

const HTTPBIN: &str = "sidecar~10.244.0.10~httpbin-1.apps~apps.svc.cluster.local";
const SLEEP: &str = "sidecar~10.244.0.11~sleep-1.apps~apps.svc.cluster.local";
const OTHER: &str = "sidecar~10.244.0.12~sleep-1.other~other.svc.cluster.local";
const INGRESS: &str = "router~10.244.0.30~ingress-1.istio-system~istio-system.svc.cluster.local";
const HCM: &str = "envoy.filters.network.http_connection_manager";

fn snapshot(extra: &str) -> Snapshot {
    config_dir_snapshot(&[("base.yaml", BASE), ("extra.yaml", extra)], Default::default())
}

fn proxy(id: &str, labels: &[(&str, &str)], version: &str) -> Proxy {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    let meta = BTreeMap::from([
        ("LABELS".to_owned(), serde_json::Value::Object(labels)),
        ("ISTIO_VERSION".to_owned(), serde_json::Value::from(version)),
    ]);
    Proxy::from_node(id, &meta).unwrap()
}

fn httpbin() -> Proxy {
    proxy(HTTPBIN, &[("app", "httpbin")], "1.29.2")
}

fn ingress() -> Proxy {
    proxy(INGRESS, &[("istio", "ingressgateway")], "1.29.2")
}

fn all(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    translate::for_proxy(snapshot, proxy)
}

fn listener<'a>(r: &'a Resources, name: &str) -> &'a Listener {
    r.listeners.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no listener {name}"))
}

fn chain<'a>(r: &'a Resources, listener_name: &str, chain: &str) -> &'a FilterChain {
    let l = listener(r, listener_name);
    l.filter_chains.iter().find(|c| c.name == chain).unwrap_or_else(|| panic!("no chain {listener_name}/{chain}"))
}

fn hcm(chain: &FilterChain) -> HttpConnectionManager {
    chain
        .filters
        .iter()
        .find_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if f.name == HCM => {
                Some(HttpConnectionManager::decode(any.value.as_slice()).unwrap())
            }
            _ => None,
        })
        .unwrap()
}

/// HTTP filter names of `listener`/`chain` (its first chain when `chain` is empty).
fn http_filters(r: &Resources, listener_name: &str, chain_name: &str) -> Vec<String> {
    let c = if chain_name.is_empty() {
        &listener(r, listener_name).filter_chains[0]
    } else {
        chain(r, listener_name, chain_name)
    };
    hcm(c).http_filters.iter().map(|f| f.name.clone()).collect()
}

fn cluster<'a>(r: &'a Resources, name: &str) -> Option<&'a Cluster> {
    r.clusters.iter().find(|c| c.name == name)
}

fn route<'a>(r: &'a Resources, name: &str) -> &'a RouteConfiguration {
    r.routes.iter().find(|rc| rc.name == name).unwrap_or_else(|| panic!("no route {name}"))
}

fn ef(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  {}\n",
        spec.trim().replace('\n', "\n  ")
    )
}

const LUA_BEFORE_ROUTER: &str = r#"
configPatches:
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_OUTBOUND
    listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.filters.http.lua
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
        default_source_code: {inline_string: "function envoy_on_response(h) h:headers():add('x-lua', 'yes') end"}
"#;

#[test]
fn http_filter_insert_before_router_reaches_outbound_chains_only() {
    let before = all(&snapshot(""), &httpbin());
    let snap = snapshot(&ef("lua", "apps", LUA_BEFORE_ROUTER));
    let after = all(&snap, &httpbin());
    let mut want = http_filters(&before, "0.0.0.0_8000", "");
    want.insert(want.len() - 1, "envoy.filters.http.lua".to_owned());
    assert_eq!(http_filters(&after, "0.0.0.0_8000", ""), want);
    // Inbound chains are SIDECAR_INBOUND: untouched. So are proxies of other namespaces.
    assert_eq!(
        http_filters(&after, "virtualInbound", "0.0.0.0_8000"),
        http_filters(&before, "virtualInbound", "0.0.0.0_8000")
    );
    let other = proxy(OTHER, &[], "1.29.2");
    assert_eq!(all(&snap, &other), all(&snapshot(""), &other));
}

#[test]
fn http_filter_operations() {
    let router = "envoy.filters.http.router";
    let patch = |op: &str, sub: Option<&str>, value: &str| {
        let sub = sub.map(|s| format!(", subFilter: {{name: {s}}}")).unwrap_or_default();
        ef(
            "f",
            "apps",
            &format!(
                "configPatches:\n- applyTo: HTTP_FILTER\n  match: {{context: SIDECAR_INBOUND, listener: {{portNumber: 8000, filterChain: {{filter: {{name: {HCM}{sub}}}}}}}}}\n  patch: {{operation: {op}, value: {value}}}"
            ),
        )
    };
    let cors =
        r#"{name: my.cors, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}"#;
    let base = http_filters(&all(&snapshot(""), &httpbin()), "virtualInbound", "0.0.0.0_8000");
    let with = |at: usize| {
        let mut v = base.clone();
        v.insert(at, "my.cors".to_owned());
        v
    };
    let last = base.len() - 1;
    let cases: Vec<(String, Vec<String>)> = vec![
        (patch("INSERT_BEFORE", Some(router), cors), with(last)),
        (patch("INSERT_AFTER", Some(router), cors), with(last + 1)),
        (patch("INSERT_FIRST", Some(router), cors), with(0)),
        (patch("ADD", None, cors), with(last + 1)),
        // Without a subFilter match: INSERT_BEFORE is first, INSERT_AFTER last.
        (patch("INSERT_BEFORE", None, cors), with(0)),
        (patch("INSERT_AFTER", None, cors), with(last + 1)),
        // A subFilter that names no filter: nothing to insert next to.
        (patch("INSERT_BEFORE", Some("no.such.filter"), cors), base.clone()),
        (patch("REMOVE", Some(router), "{}"), base[..last].to_vec()),
        (patch("REPLACE", Some(router), cors), [&base[..last], &["my.cors".to_owned()]].concat()),
        // MERGE renames (and merges inside the typed config).
        (
            patch("MERGE", Some(router), "{name: renamed.router}"),
            [&base[..last], &["renamed.router".to_owned()]].concat(),
        ),
    ];
    for (yaml, want) in cases {
        let r = all(&snapshot(&yaml), &httpbin());
        assert_eq!(http_filters(&r, "virtualInbound", "0.0.0.0_8000"), want, "{yaml}");
        // The other inbound port has no HCM; the outbound side is another context.
        assert_eq!(
            http_filters(&r, "0.0.0.0_8000", ""),
            http_filters(&all(&snapshot(""), &httpbin()), "0.0.0.0_8000", "")
        );
    }
}

#[test]
fn merge_into_a_filter_merges_inside_its_typed_config() {
    let yaml = ef(
        "f",
        "apps",
        r#"
configPatches:
- applyTo: NETWORK_FILTER
  match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 9000, filterChain: {filter: {name: envoy.filters.network.tcp_proxy}}}}
  patch:
    operation: MERGE
    value:
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        idle_timeout: 7s
"#,
    );
    let r = all(&snapshot(&yaml), &httpbin());
    let l = listener(&r, "10.96.0.10_9000");
    let Some(ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else { panic!() };
    let tcp = TcpProxy::decode(any.value.as_slice()).unwrap();
    assert_eq!(tcp.idle_timeout.map(|d| d.seconds), Some(7));
    // The generated fields are kept.
    assert!(tcp.stat_prefix.contains("httpbin"), "{tcp:?}");
}

#[test]
fn listener_and_filter_chain_operations() {
    let snap = snapshot(&ef(
        "f",
        "apps",
        r#"
configPatches:
- applyTo: LISTENER
  match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 9000}}
  patch: {operation: REMOVE}
- applyTo: LISTENER
  match: {context: SIDECAR_OUTBOUND, listener: {name: 0.0.0.0_8000}}
  patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 32768}}
- applyTo: LISTENER
  match: {context: SIDECAR_OUTBOUND}
  patch:
    operation: ADD
    value:
      name: extra
      address: {socket_address: {address: 127.0.0.1, port_value: 15999}}
      filter_chains: [{filters: [{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: x, cluster: BlackHoleCluster}}]}]
- applyTo: FILTER_CHAIN
  match: {context: SIDECAR_INBOUND, listener: {name: virtualInbound, filterChain: {name: 0.0.0.0_9000}}}
  patch: {operation: REMOVE}
- applyTo: FILTER_CHAIN
  match: {context: SIDECAR_INBOUND, listener: {portNumber: 8000}}
  patch: {operation: MERGE, value: {name: renamed-8000}}
"#,
    ));
    let r = all(&snap, &httpbin());
    let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    assert!(!names.contains(&"10.96.0.10_9000"), "{names:?}");
    assert!(names.contains(&"extra"), "{names:?}");
    assert_eq!(listener(&r, "0.0.0.0_8000").per_connection_buffer_limit_bytes.map(|v| v.value), Some(32768));
    let chains: Vec<&str> = listener(&r, "virtualInbound").filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert!(!chains.contains(&"0.0.0.0_9000"), "{chains:?}");
    // portNumber on virtualInbound picks the chain by its destination port.
    assert!(chains.contains(&"renamed-8000") && !chains.contains(&"0.0.0.0_8000"), "{chains:?}");
    // ADD with context SIDECAR_OUTBOUND happens once (not on the inbound side too).
    assert_eq!(names.iter().filter(|n| **n == "extra").count(), 1);
}

#[test]
fn cluster_operations() {
    let snap = snapshot(&ef(
        "f",
        "apps",
        r#"
configPatches:
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND, cluster: {service: httpbin.apps.svc.cluster.local, portNumber: 8000}}
  patch: {operation: MERGE, value: {connect_timeout: 3s, per_connection_buffer_limit_bytes: 1024}}
- applyTo: CLUSTER
  match: {cluster: {name: "outbound|9000||httpbin.apps.svc.cluster.local"}}
  patch: {operation: REMOVE}
- applyTo: CLUSTER
  match: {context: SIDECAR_INBOUND, cluster: {portNumber: 8000, service: httpbin.apps.svc.cluster.local}}
  patch: {operation: MERGE, value: {connect_timeout: 4s}}
- applyTo: CLUSTER
  patch: {operation: ADD, value: {name: extra, type: STATIC, connect_timeout: 1s}}
"#,
    ));
    let r = all(&snap, &httpbin());
    let out = cluster(&r, "outbound|8000||httpbin.apps.svc.cluster.local").unwrap();
    assert_eq!(out.connect_timeout.map(|d| d.seconds), Some(3));
    assert_eq!(out.per_connection_buffer_limit_bytes.map(|v| v.value), Some(1024));
    assert!(cluster(&r, "outbound|9000||httpbin.apps.svc.cluster.local").is_none());
    assert_eq!(cluster(&r, "inbound|8000||").unwrap().connect_timeout.map(|d| d.seconds), Some(4));
    assert_ne!(cluster(&r, "inbound|9000||").unwrap().connect_timeout.map(|d| d.seconds), Some(4));
    // ADD with context ANY: outbound (and gateway) sets only, so once.
    assert_eq!(r.clusters.iter().filter(|c| c.name == "extra").count(), 1);
}

/// Discovery encodes a sidecar's clusters as it builds them unless an EnvoyFilter patches
/// clusters for it: a listener patch keeps that path (and still applies), a cluster patch takes
/// the message path, and either way the config is the one `outbound` gives.
#[test]
fn only_cluster_patches_keep_clusters_as_messages() {
    let listener_only = snapshot(&ef("f", "apps", LUA_BEFORE_ROUTER));
    let served = translate::outbound_served(&listener_only, &httpbin());
    let built = translate::outbound(&listener_only, &httpbin());
    assert!(!served.encoded_clusters.is_empty(), "a listener patch keeps clusters encoded as built");
    assert!(served.listeners == built.listeners, "the listener patch applies on both paths");
    let names: Vec<&str> = served.encoded_clusters.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, built.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>());

    let cluster_patch = snapshot(&ef(
        "f",
        "apps",
        "configPatches:\n- applyTo: CLUSTER\n  match: {context: SIDECAR_OUTBOUND, cluster: {portNumber: 8000}}\n  patch: {operation: MERGE, value: {connect_timeout: 3s}}\n",
    ));
    let served = translate::outbound_served(&cluster_patch, &httpbin());
    let built = translate::outbound(&cluster_patch, &httpbin());
    assert!(served.encoded_clusters.is_empty(), "a cluster patch needs the messages");
    assert!(served.clusters == built.clusters && served.listeners == built.listeners);
    let patched = cluster(&served, "outbound|8000||httpbin.apps.svc.cluster.local").unwrap();
    assert_eq!(patched.connect_timeout.map(|d| d.seconds), Some(3));
    assert!(!served.encoded_routes.is_empty(), "a cluster patch leaves routes encoded as built");
    assert_eq!(decoded_routes(&served), built.routes);
}

/// Likewise for routes: a patch of route configurations, virtual hosts or routes takes the
/// message path for them (and applies), any other keeps them encoded as built.
#[test]
fn only_route_patches_keep_routes_as_messages() {
    let listener_only = snapshot(&ef("f", "apps", LUA_BEFORE_ROUTER));
    let served = translate::outbound_served(&listener_only, &httpbin());
    let built = translate::outbound(&listener_only, &httpbin());
    assert!(served.routes.is_empty() && !served.encoded_routes.is_empty());
    assert_eq!(decoded_routes(&served), built.routes);

    for apply_to in ["ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"] {
        let patch = snapshot(&ef(
            "f",
            "apps",
            &format!(
                "configPatches:\n- applyTo: {apply_to}\n  match: {{context: SIDECAR_OUTBOUND}}\n  patch: {{operation: MERGE, value: {{name: patched}}}}\n"
            ),
        ));
        let served = translate::outbound_served(&patch, &httpbin());
        assert!(served.encoded_routes.is_empty(), "{apply_to}: a route patch needs the messages");
        assert!(!served.encoded_clusters.is_empty(), "{apply_to}: clusters stay encoded as built");
        let built = translate::outbound(&patch, &httpbin());
        assert_eq!(served.routes, built.routes, "{apply_to}");
        let names: Vec<&str> = match apply_to {
            "ROUTE_CONFIGURATION" => served.routes.iter().map(|r| r.name.as_str()).collect(),
            "VIRTUAL_HOST" => served.routes.iter().flat_map(|r| &r.virtual_hosts).map(|v| v.name.as_str()).collect(),
            _ => served
                .routes
                .iter()
                .flat_map(|r| &r.virtual_hosts)
                .flat_map(|v| &v.routes)
                .map(|r| r.name.as_str())
                .collect(),
        };
        assert!(!names.is_empty() && names.iter().all(|n| *n == "patched"), "{apply_to}: the patch applied: {names:?}");
    }
}

fn decoded_routes(resources: &Resources) -> Vec<RouteConfiguration> {
    resources.encoded_routes.iter().map(|(_, bytes)| RouteConfiguration::decode(bytes.as_ref()).unwrap()).collect()
}

#[test]
fn route_operations() {
    let snap = snapshot(&ef(
        "f",
        "apps",
        r#"
configPatches:
- applyTo: ROUTE_CONFIGURATION
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 8000}}
  patch: {operation: MERGE, value: {request_headers_to_add: [{header: {key: x-rc, value: "1"}}]}}
- applyTo: VIRTUAL_HOST
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {name: "8000", vhost: {name: allow_any}}}
  patch: {operation: REMOVE}
- applyTo: VIRTUAL_HOST
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 8000}}
  patch: {operation: ADD, value: {name: extra, domains: [extra.example.com], routes: [{match: {prefix: /}, direct_response: {status: 204}}]}}
- applyTo: HTTP_ROUTE
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {name: "httpbin.apps.svc.cluster.local:8000", route: {name: default}}}}
  patch: {operation: INSERT_BEFORE, value: {name: health, match: {path: /healthz}, direct_response: {status: 200}}}
- applyTo: HTTP_ROUTE
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {name: "httpbin.apps.svc.cluster.local:8000", route: {action: ROUTE}}}}
  patch: {operation: MERGE, value: {route: {timeout: 9s}}}
"#,
    ));
    let r = all(&snap, &httpbin());
    let rc = route(&r, "8000");
    assert_eq!(rc.request_headers_to_add.len(), 1);
    let hosts: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(hosts, ["httpbin.apps.svc.cluster.local:8000", "extra"]);
    let routes = &rc.virtual_hosts[0].routes;
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["health", "default"]);
    // The MERGE matched routes with a route action only (not the direct response).
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    let Some(Action::Route(action)) = &routes[1].action else { panic!() };
    assert_eq!(action.timeout.map(|d| d.seconds), Some(9));
    // The added host's route keeps its own action.
    assert!(matches!(rc.virtual_hosts[1].routes[0].action, Some(Action::DirectResponse(_))));
}

#[test]
fn gateway_patches_match_by_context_port_and_gateway() {
    let snap = snapshot(&ef(
        "gw",
        "istio-system",
        r#"
workloadSelector: {labels: {istio: ingressgateway}}
configPatches:
- applyTo: HTTP_FILTER
  match: {context: GATEWAY, listener: {portNumber: 8080, filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}}
  patch: {operation: INSERT_BEFORE, value: {name: gw.cors, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}}
- applyTo: VIRTUAL_HOST
  match: {context: GATEWAY, routeConfiguration: {portNumber: 80}}
  patch: {operation: MERGE, value: {request_headers_to_add: [{header: {key: x-gw, value: "1"}}]}}
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND}
  patch: {operation: MERGE, value: {connect_timeout: 2s}}
"#,
    ));
    let r = all(&snap, &ingress());
    let filters = http_filters(&r, "0.0.0.0_8080", "");
    assert_eq!(filters[filters.len() - 2], "gw.cors", "{filters:?}");
    // The route is named by the port the gateway listens on (8080); portNumber 80 names its
    // server port, which the service maps there.
    let rc = route(&r, "http.8080");
    let has_header = |v: &envoy_types::pb::envoy::config::route::v3::VirtualHost| {
        v.request_headers_to_add.iter().any(|h| h.header.as_ref().is_some_and(|h| h.key == "x-gw"))
    };
    assert!(!rc.virtual_hosts.is_empty() && rc.virtual_hosts.iter().all(has_header), "{rc:?}");
    // A SIDECAR_OUTBOUND patch does not reach a gateway.
    assert!(r.clusters.iter().all(|c| c.connect_timeout.map(|d| d.seconds) != Some(2)));
    // A sidecar is not selected (workloadSelector), nor in another namespace.
    assert_eq!(all(&snap, &httpbin()), all(&snapshot(""), &httpbin()));
}

/// Two filters INSERT_FIRST a filter each: the one applied later ends up first.
fn first_http_filter(yaml: &str, p: &Proxy) -> String {
    http_filters(&all(&snapshot(yaml), p), "0.0.0.0_8000", "")[0].clone()
}

fn insert_first(name: &str, namespace: &str, priority: Option<i32>, selector: &str, proxy_version: &str) -> String {
    let priority = priority.map(|p| format!("priority: {p}\n")).unwrap_or_default();
    let proxy =
        if proxy_version.is_empty() { String::new() } else { format!(", proxy: {{proxyVersion: '{proxy_version}'}}") };
    ef(
        name,
        namespace,
        &format!(
            "{priority}{selector}configPatches:\n- applyTo: HTTP_FILTER\n  match: {{context: SIDECAR_OUTBOUND{proxy}, listener: {{filterChain: {{filter: {{name: {HCM}}}}}}}}}\n  patch: {{operation: INSERT_FIRST, value: {{name: {name}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}}}}}"
        ),
    )
}

#[test]
fn selection_and_order() {
    let hb = httpbin();
    let sleep = proxy(SLEEP, &[("app", "sleep")], "1.28.0");
    // Same priority: root namespace first (so the namespace's filter ends up first).
    let both = insert_first("a-root", "istio-system", None, "", "") + &insert_first("b-ns", "apps", None, "", "");
    assert_eq!(first_http_filter(&both, &hb), "b-ns");
    // Priority wins over namespace: a lower priority applies first.
    let prio =
        insert_first("a-root", "istio-system", Some(10), "", "") + &insert_first("b-ns", "apps", Some(-1), "", "");
    assert_eq!(first_http_filter(&prio, &hb), "a-root");
    // Same namespace and priority, no creation time (files): by name.
    let names = insert_first("z", "apps", None, "", "") + &insert_first("m", "apps", None, "", "");
    assert_eq!(first_http_filter(&names, &hb), "z");
    // workloadSelector: httpbin only; a root namespace filter with a selector applies in
    // every namespace.
    let selected =
        insert_first("only-httpbin", "istio-system", None, "workloadSelector: {labels: {app: httpbin}}\n", "");
    assert_eq!(first_http_filter(&selected, &hb), "only-httpbin");
    assert_ne!(first_http_filter(&selected, &sleep), "only-httpbin");
    // proxyVersion: a regex on ISTIO_VERSION.
    let versioned = insert_first("v129", "apps", None, "", r"^1\.29");
    assert_eq!(first_http_filter(&versioned, &hb), "v129");
    assert_ne!(first_http_filter(&versioned, &sleep), "v129");
    // targetRefs pick Gateway API gateways, never sidecars.
    let targeted = insert_first(
        "gw",
        "apps",
        None,
        "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]\n",
        "",
    );
    assert_ne!(first_http_filter(&targeted, &hb), "gw");
}

#[test]
fn selectors_and_proxy_matches_split_views() {
    let yaml = insert_first("only-httpbin", "apps", None, "workloadSelector: {labels: {app: httpbin}}\n", "")
        + &insert_first("v129", "apps", None, "", r"^1\.29");
    let snap = snapshot(&yaml);
    let selectors = LabelSelectors::of(&snap);
    let key = |p: &Proxy| ViewKey::of(p, &selectors);
    let a = proxy(SLEEP, &[("app", "httpbin")], "1.29.2");
    let b = proxy(SLEEP, &[("app", "sleep")], "1.29.2");
    let c = proxy(SLEEP, &[("app", "sleep")], "1.28.0");
    let d = proxy(SLEEP, &[("app", "sleep"), ("x", "y")], "1.28.1");
    assert_ne!(key(&a), key(&b));
    assert_ne!(key(&b), key(&c));
    assert_eq!(key(&c), key(&d));
    // Equal keys, equal config.
    assert_eq!(translate::outbound(&snap, &c), translate::outbound(&snap, &d));
    // A change of EnvoyFilters touches every part of a view.
    let parts = translate::changed_parts(&snapshot(""), &snap, &key(&a));
    assert_eq!(parts, translate::Parts::ALL);
}

#[test]
fn a_patch_that_cannot_apply_is_skipped_and_named_and_the_rest_applies() {
    let yaml = ef(
        "bad",
        "apps",
        r#"
configPatches:
- applyTo: HTTP_FILTER
  match: {context: SIDECAR_OUTBOUND, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}}
  patch: {operation: INSERT_BEFORE, value: {name: x, typed_config: {"@type": type.googleapis.com/no.such.Filter}}}
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND, cluster: {portNumber: 8000}}
  patch: {operation: MERGE, value: {connect_timeout: {seconds: "x"}}}
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND, cluster: {portNumber: 8000}}
  patch: {operation: INSERT_FIRST, value: {name: y}}
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND, cluster: {portNumber: 8000}}
  patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 2048, no_such_field: 1}}
"#,
    );
    // Validation refuses such a filter (the registry would leave it out whole); translation
    // must still cope with one that reaches it (validated by an older version, or another
    // path), so it goes into the snapshot as it is.
    let mut snap = snapshot(&ef("good", "apps", LUA_BEFORE_ROUTER));
    let loaded: rudder_config::networking::EnvoyFilter = serde_saphyr::from_str(&yaml).unwrap();
    snap.envoy_filters.push(std::sync::Arc::new(loaded));
    let hb = httpbin();
    let r = all(&snap, &hb);
    // The good filter and the good part of the last patch apply.
    assert!(http_filters(&r, "0.0.0.0_8000", "").contains(&"envoy.filters.http.lua".to_owned()));
    assert!(!http_filters(&r, "0.0.0.0_8000", "").contains(&"x".to_owned()));
    let out = cluster(&r, "outbound|8000||httpbin.apps.svc.cluster.local").unwrap();
    assert_eq!(out.per_connection_buffer_limit_bytes.map(|v| v.value), Some(2048));
    // Each problem names the filter, the patch and the field.
    let patches = Patches::for_proxy(&snap, &hb);
    let mut listeners = translate::outbound(&snapshot(""), &hb).listeners;
    let mut clusters = translate::outbound(&snapshot(""), &hb).clusters;
    let mut problems: Vec<String> = patches
        .apply_listeners(PatchContext::SidecarOutbound, &mut listeners, true)
        .iter()
        .chain(&patches.apply_clusters(PatchContext::SidecarOutbound, &mut clusters, true, &BTreeMap::new()))
        .map(|s| format!("{}[{}].{}", s.filter, s.index, s.field))
        .collect();
    problems.sort();
    assert_eq!(
        problems,
        [
            "apps/bad[0].patch.value.typed_config",
            "apps/bad[1].patch.value.connect_timeout",
            "apps/bad[2].patch.operation",
            "apps/bad[3].patch.value.no_such_field",
        ]
    );
}

#[test]
fn inbound_inline_routes_get_sidecar_inbound_route_patches() {
    let snap = snapshot(&ef(
        "f",
        "apps",
        r#"
configPatches:
- applyTo: HTTP_ROUTE
  match: {context: SIDECAR_INBOUND, routeConfiguration: {portNumber: 8000, vhost: {route: {name: default}}}}
  patch: {operation: MERGE, value: {route: {timeout: 11s}}}
"#,
    ));
    let r = all(&snap, &httpbin());
    let hcm = hcm(chain(&r, "virtualInbound", "0.0.0.0_8000"));
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else { panic!("inline routes expected") };
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    let Some(Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else { panic!() };
    assert_eq!(action.timeout.map(|d| d.seconds), Some(11));
}

#[test]
fn listener_filter_and_replace_operations() {
    // With a workload certificate, inbound chains take mTLS and plaintext: the listener
    // inspects TLS and ALPN.
    let meta = BTreeMap::from([
        ("LABELS".to_owned(), serde_json::json!({"app": "httpbin"})),
        ("WORKLOAD_IDENTITY".to_owned(), serde_json::json!("spiffe://cluster.local/ns/apps/sa/httpbin")),
    ]);
    let httpbin = || Proxy::from_node(HTTPBIN, &meta).unwrap();
    let before = all(&snapshot(""), &httpbin());
    let names = |r: &Resources| -> Vec<String> {
        listener(r, "virtualInbound").listener_filters.iter().map(|f| f.name.clone()).collect()
    };
    assert_eq!(names(&before), ["envoy.filters.listener.tls_inspector"]);
    let listener_filter = |name: &str, kind: &str| {
        format!(
            "{{name: envoy.filters.listener.{name}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.{name}.v3.{kind}}}}}"
        )
    };
    let snap = snapshot(&ef(
        "f",
        "apps",
        &format!(
            r#"
configPatches:
- applyTo: LISTENER_FILTER
  match: {{context: SIDECAR_INBOUND, listener: {{name: virtualInbound, listenerFilter: envoy.filters.listener.tls_inspector}}}}
  patch: {{operation: INSERT_BEFORE, value: {original_dst}}}
- applyTo: LISTENER_FILTER
  match: {{context: SIDECAR_INBOUND, listener: {{name: virtualInbound}}}}
  patch: {{operation: ADD, value: {http_inspector}}}
- applyTo: LISTENER_FILTER
  match: {{context: SIDECAR_INBOUND, listener: {{name: virtualInbound, listenerFilter: envoy.filters.listener.original_dst}}}}
  patch: {{operation: REPLACE, value: {proxy_protocol}}}
- applyTo: LISTENER_FILTER
  match: {{context: SIDECAR_INBOUND, listener: {{listenerFilter: envoy.filters.listener.http_inspector}}}}
  patch: {{operation: REMOVE}}
- applyTo: NETWORK_FILTER
  match: {{context: SIDECAR_OUTBOUND, listener: {{portNumber: 9000, filterChain: {{filter: {{name: envoy.filters.network.tcp_proxy}}}}}}}}
  patch:
    operation: REPLACE
    value: {{name: replaced, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: replaced, cluster: BlackHoleCluster}}}}
- applyTo: VIRTUAL_HOST
  match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{portNumber: 8000, vhost: {{name: allow_any}}}}}}
  patch: {{operation: REPLACE, value: {{name: replaced-host, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 418}}}}]}}}}
"#,
            original_dst = listener_filter("original_dst", "OriginalDst"),
            http_inspector = listener_filter("http_inspector", "HttpInspector"),
            proxy_protocol = listener_filter("proxy_protocol", "ProxyProtocol"),
        ),
    ));
    let r = all(&snap, &httpbin());
    assert_eq!(names(&r), ["envoy.filters.listener.proxy_protocol", "envoy.filters.listener.tls_inspector"]);
    let tcp = &listener(&r, "10.96.0.10_9000").filter_chains[0].filters;
    assert_eq!(tcp.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["replaced"]);
    let hosts: Vec<&str> = route(&r, "8000").virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(hosts, ["httpbin.apps.svc.cluster.local:8000", "replaced-host"]);
}

/// A RequestAuthentication (the JWT filter) and DENY and ALLOW AuthorizationPolicies (two
/// RBAC filters on HTTP ports, network RBAC on TCP ports) for httpbin.
const SECURED: &str = r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: apps}
spec: {jwtRules: [{issuer: iss, jwks: '{"keys":[]}'}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: apps}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [blocked]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: apps}
spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [apps]}}]}]}
"#;

#[test]
fn filter_class_places_added_filters_around_the_generated_ones() {
    let (jwt, rbac, router) = ("envoy.filters.http.jwt_authn", "envoy.filters.http.rbac", "envoy.filters.http.router");
    // `(applyTo, operation, filterClass, name)` of each patch, on the inbound 8000 (HTTP) or
    // 9000 (TCP) chain.
    let patches = |list: &[(&str, &str, &str, &str)]| {
        let mut spec = String::from("configPatches:\n");
        for (apply_to, op, class, name) in list {
            let (port, filter, value) = if *apply_to == "HTTP_FILTER" {
                (8000, HCM, "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors")
            } else {
                (
                    9000,
                    "envoy.filters.network.tcp_proxy",
                    "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
                )
            };
            let class = if class.is_empty() { String::new() } else { format!(", filterClass: {class}") };
            let extra = if *apply_to == "HTTP_FILTER" { "" } else { ", stat_prefix: x, max_connections: 10" };
            spec += &format!(
                "- applyTo: {apply_to}\n  match: {{context: SIDECAR_INBOUND, listener: {{portNumber: {port}, filterChain: {{filter: {{name: {filter}}}}}}}}}\n  patch: {{operation: {op}{class}, value: {{name: '{name}', typed_config: {{\"@type\": {value}{extra}}}}}}}\n"
            );
        }
        ef("classes", "apps", &spec)
    };
    let names = |r: &Resources, chain_name: &str| -> Vec<String> {
        let c = chain(r, "virtualInbound", chain_name);
        if chain_name == "0.0.0.0_8000" {
            hcm(c).http_filters.iter().map(|f| f.name.clone()).collect()
        } else {
            c.filters.iter().map(|f| f.name.clone()).collect()
        }
    };
    let secured = names(&all(&snapshot(SECURED), &httpbin()), "0.0.0.0_8000");
    let plain = names(&all(&snapshot(""), &httpbin()), "0.0.0.0_8000");
    let tcp = names(&all(&snapshot(SECURED), &httpbin()), "0.0.0.0_9000");
    // The generated chains the classes are placed against.
    let at = |list: &[String], name: &str| list.iter().position(|f| f == name).unwrap();
    assert_eq!(&secured[at(&secured, jwt)..], [jwt, rbac, rbac, router]);
    assert!(!plain.iter().any(|f| f == jwt || f == rbac), "{plain:?}");
    assert_eq!(tcp, ["envoy.filters.network.rbac", "envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]);
    // `list` with each `(i, name)` inserted before its element `i`.
    let with = |list: &[String], inserts: &[(usize, &str)]| -> Vec<String> {
        let mut out = list.to_vec();
        for (i, name) in inserts.iter().rev() {
            out.insert(*i, (*name).to_owned());
        }
        out
    };
    let (j, r) = (at(&secured, jwt), at(&secured, router));
    let h = |op, class, name| ("HTTP_FILTER", op, class, name);
    // (with the policies, patches, chain, its filters)
    type Case<'a> = (bool, Vec<(&'a str, &'a str, &'a str, &'a str)>, &'a str, Vec<String>);
    let cases: Vec<Case<'_>> = vec![
        // AUTHN right after the JWT filter, AUTHZ right after the last RBAC filter, STATS right
        // before the router.
        (true, vec![h("ADD", "AUTHN", "n")], "0.0.0.0_8000", with(&secured, &[(j + 1, "n")])),
        (true, vec![h("ADD", "AUTHZ", "z")], "0.0.0.0_8000", with(&secured, &[(r, "z")])),
        (true, vec![h("ADD", "STATS", "s")], "0.0.0.0_8000", with(&secured, &[(r, "s")])),
        // Within a class, patch order; across classes AUTHN, AUTHZ, STATS whatever the order.
        (
            true,
            vec![
                h("ADD", "STATS", "s1"),
                h("ADD", "AUTHZ", "z1"),
                h("ADD", "AUTHN", "n1"),
                h("ADD", "AUTHN", "n2"),
                h("ADD", "AUTHZ", "z2"),
                h("ADD", "STATS", "s2"),
            ],
            "0.0.0.0_8000",
            with(&secured, &[(j + 1, "n1"), (j + 1, "n2"), (r, "z1"), (r, "z2"), (r, "s1"), (r, "s2")]),
        ),
        // Without JWT and RBAC filters, where they would be: before the router, in class order.
        (
            false,
            vec![h("ADD", "STATS", "s"), h("ADD", "AUTHZ", "z"), h("ADD", "AUTHN", "n")],
            "0.0.0.0_8000",
            with(&plain, &[(plain.len() - 1, "n"), (plain.len() - 1, "z"), (plain.len() - 1, "s")]),
        ),
        // No class (or UNSPECIFIED): the operation places the filter (ADD appends, as Istio).
        (true, vec![h("ADD", "UNSPECIFIED", "u")], "0.0.0.0_8000", with(&secured, &[(secured.len(), "u")])),
        (true, vec![h("ADD", "", "u")], "0.0.0.0_8000", with(&secured, &[(secured.len(), "u")])),
        // A class only places ADDs.
        (true, vec![h("INSERT_FIRST", "AUTHZ", "f")], "0.0.0.0_8000", with(&secured, &[(0, "f")])),
        // Network filters: AUTHN and AUTHZ around the network RBAC filters, STATS before
        // tcp_proxy.
        (
            true,
            vec![
                ("NETWORK_FILTER", "ADD", "STATS", "s"),
                ("NETWORK_FILTER", "ADD", "AUTHZ", "z"),
                ("NETWORK_FILTER", "ADD", "AUTHN", "n"),
            ],
            "0.0.0.0_9000",
            with(&tcp, &[(0, "n"), (2, "z"), (2, "s")]),
        ),
    ];
    for (secure, list, chain_name, want) in cases {
        let yaml = patches(&list);
        let base = if secure { SECURED } else { "" };
        let r = all(&snapshot(&format!("{base}{yaml}")), &httpbin());
        assert_eq!(names(&r, chain_name), want, "{yaml}");
    }
}

#[test]
fn proxy_metadata_matches_any_string_key_and_views_stay_shared() {
    let yaml = ef(
        "east-only",
        "apps",
        &format!(
            "configPatches:\n- applyTo: HTTP_FILTER\n  match: {{context: SIDECAR_OUTBOUND, proxy: {{metadata: {{MESH_ID: east, SITE: a}}}}, listener: {{filterChain: {{filter: {{name: {HCM}}}}}}}}}\n  patch: {{operation: INSERT_FIRST, value: {{name: east.cors, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}}}}}"
        ),
    );
    let snap = snapshot(&yaml);
    let node = |pod: &str, mesh: &str, site: serde_json::Value| {
        let meta = BTreeMap::from([
            ("LABELS".to_owned(), serde_json::json!({"app": "sleep"})),
            ("ISTIO_VERSION".to_owned(), serde_json::json!("1.29.2")),
            ("MESH_ID".to_owned(), serde_json::json!(mesh)),
            ("SITE".to_owned(), site),
            ("POD_NAME".to_owned(), serde_json::json!(pod)),
        ]);
        Proxy::from_node(&format!("sidecar~10.244.0.11~{pod}.apps~apps.svc.cluster.local"), &meta).unwrap()
    };
    let a = node("sleep-1", "east", "a".into());
    let b = node("sleep-2", "east", "a".into());
    let west = node("sleep-3", "west", "a".into());
    let not_string = node("sleep-4", "east", serde_json::json!(["a"]));
    let first = |p: &Proxy| first_http_filter(&yaml, p);
    assert_eq!(first(&a), "east.cors");
    assert_eq!(first(&b), "east.cors");
    assert_ne!(first(&west), "east.cors");
    assert_ne!(first(&not_string), "east.cors");
    // Proxies that differ only in metadata no patch names share a view; meeting the match or
    // not splits them.
    let selectors = LabelSelectors::of(&snap);
    let key = |p: &Proxy| ViewKey::of(p, &selectors);
    assert_eq!(key(&a), key(&b));
    assert_ne!(key(&a), key(&west));
    assert_eq!(key(&west), key(&not_string));
}
