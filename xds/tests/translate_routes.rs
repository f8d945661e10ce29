//! Real Envoy must accept the route configurations translation produces: a VirtualService
//! using every HTTP feature is translated, each RouteConfiguration is put inline into an HCM
//! listener with the fault, cors and router filters (as the listener builder emits them), and
//! every cluster the routes name becomes a static cluster. `envoy --mode validate` then checks
//! the whole bootstrap, which catches fields Envoy refuses (bad regexes, conflicting matchers,
//! wrong typed_per_filter_config types, …).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::redirect_action::PathRewriteSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::util::pack_any;
use rudder_config::mesh::{OutboundTrafficPolicy, OutboundTrafficPolicyMode};
use rudder_config::object::IstioObject;
use rudder_xds::model::{Protocol, Proxy, Resolution, Service, ServicePort, Snapshot};
use rudder_xds::testing::{envoy_accepts, static_cluster};
use rudder_xds::translate::context::Context;
use rudder_xds::translate::route as routes;

/// One VirtualService exercising every HTTP feature the translator supports, plus the
/// DestinationRule (consistent hash) and an external-host VirtualService (port 80).
const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: everything, namespace: default}
spec:
  hosts: [reviews, reviews.example.com]
  http:
  - name: matches
    match:
    - name: exact
      uri: {exact: /v1/login}
      ignoreUriCase: true
      method: {exact: POST}
      authority: {prefix: reviews}
      scheme: {exact: http}
      headers:
        x-present: {regex: "*"}
        x-exact: {exact: one}
        x-prefix: {prefix: pre}
        x-regex: {regex: "v[0-9]+"}
        "@request.auth.claims.group": {exact: admin}
      withoutHeaders:
        x-not: {prefix: bad}
        x-absent: {regex: "*"}
      queryParams:
        debug: {regex: "*"}
        v: {exact: "2"}
      sourceLabels: {app: client}
      sourceNamespace: default
      port: 9080
      gateways: [mesh]
      statPrefix: exact_match
    - name: regex
      uri: {regex: "/v[0-9]+/.*"}
    route:
    - destination: {host: reviews, subset: v1}
      headers:
        request: {set: {x-dest: d}, remove: [x-drop]}
        response: {add: {x-dest-resp: r}}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "gateway-error,503,connect-failure", retryRemoteLocalities: true, retryIgnorePreviousHosts: true, backoff: 25ms}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 12.5}}
      abort: {httpStatus: 503, percentage: {value: 0.1}}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {prefix: "https://b."}, {regex: "https://.*\\.c\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      exposeHeaders: [x-b]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    mirror: {host: ratings.other.svc.cluster.local}
    mirrorPercentage: {value: 50}
    headers:
      request:
        set: {x-set: "1", ":authority": rewritten.example}
        add: {x-add: "2"}
        remove: [x-remove, ":path"]
      response:
        set: {x-resp-set: "3"}
        add: {x-resp-add: "4"}
        remove: [x-resp-remove]
  - name: split
    match: [{uri: {prefix: /split}}]
    route:
    - destination: {host: reviews, subset: v1}
      weight: 70
      headers: {request: {set: {host: v1.example}}, response: {set: {x-w: w}}}
    - destination: {host: reviews, subset: v2}
      weight: 30
    - destination: {host: reviews, subset: v3}
      weight: 0
    mirrors:
    - destination: {host: reviews, subset: shadow}
      percentage: {value: 5}
    - destination: {host: ratings.other.svc.cluster.local, port: {number: 9080}}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}, delay: {fixedDelay: 100ms, percent: 10}}
  - name: rewrite
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: new.example}
    route: [{destination: {host: reviews}}]
  - name: regex-rewrite
    match: [{uri: {prefix: /re}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: reviews}}]
  - name: redirect
    match: [{uri: {prefix: /moved}}, {uri: {prefix: /moved-too}}]
    redirect: {uri: /here, authority: other.example, scheme: https, port: 8443, redirectCode: 308}
  - name: redirect-derived
    match: [{uri: {prefix: /same-port}}]
    redirect: {derivePort: FROM_REQUEST_PORT, redirectCode: 307}
  - name: redirect-prefix
    match: [{uri: {prefix: /foo/}}, {uri: {prefix: /bar/}}]
    redirect: {authority: foo.example, prefixRewrite: /, redirectCode: 302}
  - name: mirror-percent
    match: [{uri: {prefix: /shadowed}}]
    route: [{destination: {host: reviews}}]
    mirror: {host: reviews, subset: shadow}
    mirrorPercent: 25
  - name: direct
    match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: direct-bytes
    match: [{uri: {exact: /bytes}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
  - name: catch-all
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: external, namespace: default}
spec:
  hosts: [api.external.io]
  http:
  - route: [{destination: {host: api.external.io}}]
    timeout: 3s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: other}
spec:
  host: ratings.other.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: session, ttl: 60s, path: /}}
"#;

fn service(host: &str, ports: &[(u32, &str)], vip: &str, resolution: Resolution) -> Arc<Service> {
    let kubernetes = host.ends_with(".svc.cluster.local");
    Arc::new(Service {
        hostname: host.to_owned(),
        namespace: if kubernetes { host.split('.').nth(1).unwrap_or("default").to_owned() } else { "default".into() },
        name: host.split('.').next().unwrap_or(host).to_owned(),
        ports: ports
            .iter()
            .map(|(port, name)| ServicePort {
                name: (*name).into(),
                port: *port,
                protocol: Protocol::of_port(None, name),
            })
            .collect(),
        addresses: if vip.is_empty() { vec![] } else { vec![vip.to_owned()] },
        resolution,
        mesh_external: false,
        export_to: vec![],
        kubernetes,
        traffic_distribution: Default::default(),
        subject_alt_names: Vec::new(),
    })
}

fn snapshot() -> Snapshot {
    let services = [
        service("reviews.default.svc.cluster.local", &[(9080, "http")], "10.96.0.10", Resolution::ClientSideLb),
        service("ratings.other.svc.cluster.local", &[(9080, "grpc")], "10.96.0.11", Resolution::ClientSideLb),
        service("db.default.svc.cluster.local", &[(9080, "http"), (3306, "tcp")], "", Resolution::Passthrough),
        service("sniffed.default.svc.cluster.local", &[(8080, "web")], "fd00::8", Resolution::ClientSideLb),
        service("api.example.com", &[(443, "https"), (80, "http")], "", Resolution::Dns),
    ];
    let mut snap =
        Snapshot { services: services.iter().map(|s| (s.hostname.clone(), s.clone())).collect(), ..Default::default() };
    let loads = rudder_config::load::load_str("routes.yaml", CONFIG).expect("fixture parses");
    assert!(loads.problems.is_empty(), "{:?}", loads.problems);
    for loaded in loads.objects {
        match loaded.object {
            IstioObject::VirtualService(vs) => snap.virtual_services.push(Arc::new(*vs)),
            IstioObject::DestinationRule(dr) => snap.destination_rules.push(Arc::new(*dr)),
            other => panic!("unexpected {}", other.kind()),
        }
    }
    snap
}

fn proxy() -> Proxy {
    let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::json!({"app": "client"}))]);
    Proxy::from_node("sidecar~10.0.0.9~client-1.default~default.svc.cluster.local", &meta).expect("node id")
}

/// Every cluster name the routes refer to.
fn referenced_clusters(configs: &[RouteConfiguration]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for r in configs.iter().flat_map(|c| &c.virtual_hosts).flat_map(|v| &v.routes) {
        let Some(Action::Route(action)) = &r.action else { continue };
        match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => {
                names.insert(c.clone());
            }
            Some(ClusterSpecifier::WeightedClusters(w)) => names.extend(w.clusters.iter().map(|c| c.name.clone())),
            _ => {}
        }
        names.extend(action.request_mirror_policies.iter().map(|m| m.cluster.clone()));
    }
    names
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// An outbound-style listener serving `config` inline.
fn listener(config: RouteConfiguration, port: u32) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_{}", config.name),
        route_specifier: Some(RouteSpecifier::RouteConfig(config)),
        http_filters: vec![
            http_filter(routes::FAULT_FILTER, pack_any(HttpFault::default())),
            http_filter(routes::CORS_FILTER, pack_any(Cors::default())),
            http_filter("envoy.filters.http.router", pack_any(Router::default())),
        ],
        ..Default::default()
    };
    Listener {
        name: format!("0.0.0.0_{port}"),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn assert_envoy_accepts(configs: Vec<RouteConfiguration>, first_port: u32) {
    let clusters = referenced_clusters(&configs).iter().map(|n| static_cluster(n)).collect();
    let listeners = configs.into_iter().zip(first_port..).map(|(c, port)| listener(c, port)).collect();
    if let Err(e) = envoy_accepts(clusters, listeners) {
        panic!("Envoy refused the route configuration:\n{e}");
    }
}

#[test]
fn envoy_accepts_every_route_feature() {
    let snap = snapshot();
    let proxy = proxy();
    let configs = routes::outbound(&Context::new(&snap, &proxy));
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["80", "8080", "9080"]);

    // The fixture must really exercise what it claims to, or Envoy validates little.
    let routes: Vec<_> = configs.iter().flat_map(|c| &c.virtual_hosts).flat_map(|v| &v.routes).collect();
    let named = |name: &str| routes.iter().filter(|r| r.name == name).count();
    for feature in [
        "matches.exact",
        "matches.regex",
        "split",
        "rewrite",
        "regex-rewrite",
        "redirect",
        "redirect-derived",
        "redirect-prefix",
        "mirror-percent",
        "direct",
        "direct-bytes",
    ] {
        assert!(named(feature) >= 1, "no route for {feature}");
    }
    assert!(routes.iter().any(|r| r.typed_per_filter_config.len() == 2), "fault and CORS on one route");
    assert!(routes.iter().any(|r| { matches!(&r.action, Some(Action::Route(a)) if !a.hash_policy.is_empty()) }));
    assert!(routes.iter().any(|r| r.r#match.as_ref().is_some_and(|m| !m.dynamic_metadata.is_empty())));

    // `redirect.prefixRewrite`: Envoy's prefix_rewrite on every match of the route.
    let prefixed: Vec<_> = routes.iter().filter(|r| r.name == "redirect-prefix").collect();
    assert!(prefixed.len() >= 2, "one route per match");
    for r in &prefixed {
        match &r.action {
            Some(Action::Redirect(redirect)) => {
                assert_eq!(redirect.path_rewrite_specifier, Some(PathRewriteSpecifier::PrefixRewrite("/".into())));
                assert_eq!(redirect.host_redirect, "foo.example");
            }
            other => panic!("{other:?}"),
        }
    }
    // The deprecated whole-number `mirrorPercent`: 25 per hundred.
    let mirrored = routes.iter().find(|r| r.name == "mirror-percent").unwrap();
    match &mirrored.action {
        Some(Action::Route(a)) => {
            let fraction = a.request_mirror_policies[0].runtime_fraction.as_ref().unwrap().default_value.unwrap();
            assert_eq!((fraction.numerator, fraction.denominator), (25, DenominatorType::Hundred as i32));
            assert!(
                a.request_mirror_policies[0].cluster.contains("|shadow|"),
                "{}",
                a.request_mirror_policies[0].cluster
            );
        }
        other => panic!("{other:?}"),
    }

    assert_envoy_accepts(configs, 20080);
}

#[test]
fn envoy_accepts_registry_only_catch_all() {
    let mut snap = snapshot();
    snap.mesh.outbound_traffic_policy =
        Some(OutboundTrafficPolicy { mode: Some(OutboundTrafficPolicyMode::RegistryOnly), ..Default::default() });
    let proxy = proxy();
    let configs = routes::outbound(&Context::new(&snap, &proxy));
    assert!(configs.iter().all(|c| c.virtual_hosts.last().is_some_and(|v| v.name == routes::BLOCK_ALL)));
    assert_envoy_accepts(configs, 21080);
}

/// A root VirtualService delegating `/ratings` to a host-less VirtualService of another
/// namespace: the delegate's rules under the root's prefix, destinations resolved in the
/// delegate's namespace, and a delegate rule outside the prefix left out; Envoy accepts it.
#[test]
fn delegated_rules_route_under_the_root_rule() {
    let mut snap = snapshot();
    snap.virtual_services.clear();
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /ratings}}]
    delegate: {name: ratings-routes, namespace: other}
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-routes, namespace: other}
spec:
  http:
  - name: v2
    match: [{uri: {prefix: /ratings/v2}}]
    route: [{destination: {host: ratings}}]
    timeout: 3s
  - name: elsewhere
    match: [{uri: {prefix: /other}}]
    route: [{destination: {host: ratings}}]
  - name: rest
    route: [{destination: {host: ratings}}]
"#;
    let loads = rudder_config::load::load_str("delegate.yaml", yaml).unwrap();
    assert!(loads.problems.is_empty(), "{:?}", loads.problems);
    for loaded in loads.objects {
        if let IstioObject::VirtualService(vs) = loaded.object {
            snap.virtual_services.push(Arc::new(*vs));
        }
    }
    let proxy = proxy();
    let configs = routes::outbound(&Context::new(&snap, &proxy));
    let port = configs.iter().find(|c| c.name == "9080").unwrap();
    let reviews = port.virtual_hosts.iter().find(|v| v.domains.iter().any(|d| d == "reviews")).unwrap();
    let summary: Vec<(String, String)> = reviews
        .routes
        .iter()
        .map(|r| {
            let path = format!("{:?}", r.r#match.as_ref().and_then(|m| m.path_specifier.clone()));
            let cluster = match &r.action {
                Some(Action::Route(a)) => match &a.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => c.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            (path, cluster)
        })
        .collect();
    let ratings = "outbound|9080||ratings.other.svc.cluster.local".to_owned();
    let reviews_cluster = "outbound|9080||reviews.default.svc.cluster.local".to_owned();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert!(summary[0].0.contains("/ratings/v2") && summary[0].1 == ratings, "{summary:?}");
    assert!(summary[1].0.contains("\"/ratings\"") && summary[1].1 == ratings, "{summary:?}");
    assert_eq!(summary[2].1, reviews_cluster, "{summary:?}");
    assert_envoy_accepts(configs, 20_000);
}

/// Discovery serves route configurations encoded as they are built: each decodes to the
/// configuration `outbound` builds, in the same order; translations of the same inputs give the
/// same bytes (discovery tells a changed configuration by them), though a route with a fault and
/// a CORS policy holds a two-entry map, which prost writes in hash order; and the memo of either
/// path gives the other the same routes back.
#[test]
fn served_route_configurations_decode_to_the_built_ones() {
    use prost::Message;
    let snap = snapshot();
    let proxy = proxy();
    let ctx = Context::new(&snap, &proxy);
    let built = routes::outbound(&ctx);
    let (served, memo) = routes::outbound_served(&ctx, None);
    let two_filters = built.iter().flat_map(|c| &c.virtual_hosts).flat_map(|v| &v.routes);
    assert!(two_filters.into_iter().any(|r| r.typed_per_filter_config.len() == 2), "the fixture has a fault and CORS");
    let decoded: Vec<RouteConfiguration> =
        served.iter().map(|(_, bytes)| RouteConfiguration::decode(bytes.as_ref()).unwrap()).collect();
    assert_eq!(served.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["80", "8080", "9080"]);
    for (decoded, built) in decoded.iter().zip(&built) {
        assert!(decoded == built, "route configuration {} differs from the built one", built.name);
    }
    for _ in 0..8 {
        assert!(routes::outbound_served(&ctx, None).0 == served, "the same inputs encode alike");
    }
    // The memo of a served translation: the served path splices its routes, the message path
    // decodes them; both give what a fresh translation gives.
    let (again, memo_again) = routes::outbound_served(&ctx, Some(routes::RouteReuse::new(&memo)));
    assert!(again == served, "the memo's routes spliced in as they are");
    assert!(routes::RouteReuse::new(&memo_again).reused() > 0, "routes were taken from the memo");
    let (messages, memo_messages) = routes::outbound_reusing(&ctx, Some(routes::RouteReuse::new(&memo)));
    assert!(messages == built);
    assert!(routes::RouteReuse::new(&memo_messages).reused() > 0);
    let (from_messages, _) = routes::outbound_served(&ctx, Some(routes::RouteReuse::new(&memo_messages)));
    assert!(from_messages == served, "a memo of the message path serves the same bytes");
}
