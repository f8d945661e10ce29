//! Table tests of the matchers and operation rules on hand-made objects (the integration
//! tests in `xds/tests/translate_envoy_filter.rs` run them on generated config).
#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use rudder_config::networking::envoy_filter::EnvoyConfigObjectPatch;

use super::listener::{filter_chain_matches, listener_matches};
use super::*;
use crate::translate::listener::socket_address;

/// A patch of `apply_to` with `match` given as YAML.
fn patch(apply_to: ApplyTo, match_yaml: &str) -> EnvoyConfigObjectPatch {
    let mut p: EnvoyConfigObjectPatch = serde_saphyr::from_str(&format!("match: {match_yaml}")).unwrap();
    p.apply_to = Some(apply_to);
    p
}

fn active<'a>(p: &'a EnvoyConfigObjectPatch, operation: Operation) -> Patch<'a> {
    Patch {
        filter: "ns/f".into(),
        index: 0,
        apply_to: p.apply_to.unwrap(),
        operation,
        filter_class: FilterClass::Unspecified,
        context: PatchContext::Any,
        matches: p.match_.as_ref(),
        json: None,
        decoded: Default::default(),
    }
}

fn chain(name: &str, sni: &[&str], transport: &str, alpn: &[&str], port: Option<u32>) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match: Some(FilterChainMatch {
            server_names: sni.iter().map(|s| (*s).to_owned()).collect(),
            transport_protocol: transport.into(),
            application_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
            destination_port: port.map(|value| UInt32Value { value }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

use envoy_types::pb::envoy::config::listener::v3::FilterChain;

#[test]
fn listener_and_filter_chain_matches() {
    let plain =
        Listener { name: "0.0.0.0_8080".into(), address: Some(socket_address("0.0.0.0", 8080)), ..Default::default() };
    let virtual_in = Listener {
        name: "virtualInbound".into(),
        address: Some(socket_address("0.0.0.0", 15006)),
        ..Default::default()
    };
    let tls = chain("tls-chain", &["a.example.com"], "tls", &["h2", "http/1.1"], Some(8443));
    let raw = chain("raw", &[], "raw_buffer", &[], Some(8080));
    // (applyTo, match, listener, chain, listener matches, chain matches)
    let cases: Vec<(ApplyTo, &str, &Listener, &FilterChain, bool, bool)> = vec![
        (ApplyTo::Listener, "{listener: {portNumber: 8080}}", &plain, &raw, true, true),
        (ApplyTo::Listener, "{listener: {portNumber: 80}}", &plain, &raw, false, true),
        (ApplyTo::Listener, "{listener: {name: virtualInbound}}", &plain, &raw, false, true),
        // Below LISTENER, portNumber on a virtual listener is the chain's destination port.
        (ApplyTo::FilterChain, "{listener: {portNumber: 8443}}", &virtual_in, &tls, true, true),
        (ApplyTo::FilterChain, "{listener: {portNumber: 8443}}", &virtual_in, &raw, true, false),
        (ApplyTo::Listener, "{listener: {portNumber: 8443}}", &virtual_in, &tls, false, true),
        (ApplyTo::FilterChain, "{listener: {filterChain: {name: raw}}}", &plain, &raw, true, true),
        (ApplyTo::FilterChain, "{listener: {filterChain: {name: raw}}}", &plain, &tls, true, false),
        (ApplyTo::FilterChain, "{listener: {filterChain: {sni: a.example.com}}}", &plain, &tls, true, true),
        (ApplyTo::FilterChain, "{listener: {filterChain: {sni: b.example.com}}}", &plain, &tls, true, false),
        (ApplyTo::FilterChain, "{listener: {filterChain: {transportProtocol: tls}}}", &plain, &tls, true, true),
        (ApplyTo::FilterChain, "{listener: {filterChain: {transportProtocol: tls}}}", &plain, &raw, true, false),
        (
            ApplyTo::FilterChain,
            "{listener: {filterChain: {applicationProtocols: 'h2,http/1.1'}}}",
            &plain,
            &tls,
            true,
            true,
        ),
        (ApplyTo::FilterChain, "{listener: {filterChain: {applicationProtocols: 'h2,h3'}}}", &plain, &tls, true, false),
        (ApplyTo::FilterChain, "{listener: {filterChain: {destinationPort: 8443}}}", &plain, &tls, true, true),
        (ApplyTo::FilterChain, "{listener: {filterChain: {destinationPort: 8443}}}", &plain, &raw, true, false),
        (ApplyTo::FilterChain, "{context: ANY}", &plain, &raw, true, true),
    ];
    for (apply_to, yaml, l, c, want_l, want_c) in cases {
        let p = patch(apply_to, yaml);
        let a = active(&p, Operation::Merge);
        assert_eq!(listener_matches(l, &a), want_l, "{yaml} on {}", l.name);
        assert_eq!(filter_chain_matches(l, c, &a), want_c, "{yaml} on {}/{}", l.name, c.name);
    }
}

#[test]
fn cluster_matches_by_name_or_its_parts() {
    let c = |name: &str| Cluster { name: name.into(), ..Default::default() };
    let m = |yaml: &str| -> ClusterMatch { serde_saphyr::from_str(yaml).unwrap() };
    let cases = [
        ("{service: a.ns.svc.cluster.local}", "outbound|80|v1|a.ns.svc.cluster.local", true),
        ("{service: a.ns.svc.cluster.local, subset: v2}", "outbound|80|v1|a.ns.svc.cluster.local", false),
        ("{subset: v1, portNumber: 80}", "outbound|80|v1|a.ns.svc.cluster.local", true),
        ("{portNumber: 81}", "outbound|80|v1|a.ns.svc.cluster.local", false),
        ("{portNumber: 8000}", "inbound|8000||", true),
        ("{service: a.ns.svc.cluster.local}", "inbound|8000||", true),
        ("{service: a.ns.svc.cluster.local}", "inbound|9000||", false),
        ("{service: b.ns.svc.cluster.local}", "inbound|8000||", false),
        ("{name: PassthroughCluster}", "PassthroughCluster", true),
        ("{name: PassthroughCluster, portNumber: 1}", "PassthroughCluster", true),
        ("{portNumber: 80}", "BlackHoleCluster", false),
        ("{}", "BlackHoleCluster", true),
    ];
    for (yaml, name, want) in cases {
        let inbound = BTreeMap::from([(8000, vec!["a.ns.svc.cluster.local".to_owned()])]);
        assert_eq!(cluster_matches(&c(name), Some(&m(yaml)), &inbound), want, "{yaml} on {name}");
    }
}

#[test]
fn route_configuration_matches_per_context() {
    let rc = |name: &str| RouteConfiguration { name: name.into(), ..Default::default() };
    let port_map = BTreeMap::from([(8080, vec![80])]);
    let https = "https.443.https-web.web.istio-system";
    let cases: Vec<(PatchContext, &str, &str, bool)> = vec![
        (PatchContext::SidecarOutbound, "{portNumber: 9080}", "9080", true),
        (PatchContext::SidecarOutbound, "{portNumber: 9080}", "reviews.apps.svc.cluster.local:9080", true),
        (PatchContext::SidecarOutbound, "{portNumber: 9081}", "9080", false),
        (PatchContext::SidecarInbound, "{portNumber: 8000}", "inbound|8000||", true),
        (PatchContext::SidecarOutbound, "{name: '9080'}", "9080", true),
        (PatchContext::Gateway, "{portNumber: 80}", "http.8080", true),
        (PatchContext::Gateway, "{portNumber: 8080}", "http.8080", true),
        (PatchContext::Gateway, "{portNumber: 81}", "http.8080", false),
        (PatchContext::Gateway, "{portNumber: 443, portName: https-web, gateway: istio-system/web}", https, true),
        (PatchContext::Gateway, "{gateway: istio-system/other}", https, false),
        (PatchContext::Gateway, "{portName: http}", "http.8080", false),
        (PatchContext::Gateway, "{gateway: istio-system/web}", "http.8080", false),
    ];
    for (context, yaml, name, want) in cases {
        let p = patch(ApplyTo::RouteConfiguration, &format!("{{routeConfiguration: {yaml}}}"));
        let a = active(&p, Operation::Merge);
        assert_eq!(route_configuration_matches(context, &rc(name), &a, &port_map), want, "{context} {yaml} on {name}");
    }
}

#[test]
fn operations_per_apply_to() {
    use ApplyTo::*;
    use Operation::*;
    let ops = [Merge, Add, Remove, InsertBefore, InsertAfter, InsertFirst, Replace];
    let table: [(ApplyTo, &str); 11] = [
        (Listener, "MAR...."),
        (FilterChain, "MAR...."),
        (NetworkFilter, "MARBAFP"),
        (HttpFilter, "MARBAFP"),
        (ListenerFilter, ".ARBAFP"),
        (RouteConfiguration, "M......"),
        (VirtualHost, "MAR...P"),
        (HttpRoute, "MARBAF."),
        (Cluster, "MAR...."),
        (ExtensionConfig, ".A....."),
        (Bootstrap, "......."),
    ];
    for (apply_to, row) in table {
        for (op, c) in ops.iter().zip(row.chars()) {
            assert_eq!(operation_applies(apply_to, *op), c != '.', "{apply_to} {op}");
        }
    }
}

#[test]
fn proxy_match_reads_version_and_string_metadata() {
    let meta = BTreeMap::from([
        ("ISTIO_VERSION".to_owned(), serde_json::json!("1.29.2")),
        ("CLUSTER_ID".to_owned(), serde_json::json!("east")),
        ("MESH_ID".to_owned(), serde_json::json!("mesh1")),
        ("INTERCEPTION_MODE".to_owned(), serde_json::json!("NONE")),
        ("ENVOY_STATUS_PORT".to_owned(), serde_json::json!(15021)),
    ]);
    let proxy = Proxy::from_node("sidecar~10.0.0.1~p.apps~apps.svc.cluster.local", &meta).unwrap();
    let m = |yaml: &str| -> ProxyMatch { serde_saphyr::from_str(yaml).unwrap() };
    let cases = [
        ("{proxyVersion: '^1\\.29.*'}", true),
        ("{proxyVersion: '^1\\.28.*'}", false),
        ("{proxyVersion: '29'}", true),
        ("{metadata: {CLUSTER_ID: east, NAMESPACE: apps}}", true),
        ("{metadata: {CLUSTER_ID: west}}", false),
        ("{metadata: {SOME_OTHER_KEY: x}}", false),
        // Any string-valued key of the node's metadata.
        ("{metadata: {MESH_ID: mesh1}}", true),
        ("{metadata: {MESH_ID: mesh1, CLUSTER_ID: east, INTERCEPTION_MODE: NONE}}", true),
        ("{metadata: {MESH_ID: mesh2}}", false),
        ("{metadata: {MESH_ID: mesh1, CLUSTER_ID: west}}", false),
        // Not a string in the node's metadata: never matches (as Istio).
        ("{metadata: {ENVOY_STATUS_PORT: '15021'}}", false),
    ];
    for (yaml, want) in cases {
        assert_eq!(proxy_matches(&m(yaml), &proxy), want, "{yaml}");
    }
}

#[test]
fn cluster_merge_merges_a_transport_socket_of_the_same_name_inside() {
    let socket = |sni: &str, alpn: &[&str]| TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(pack_any(UpstreamTlsContext {
            sni: sni.into(),
            common_tls_context: Some(
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext {
                    alpn_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }))),
    };
    let mut cluster =
        Cluster { name: "c".into(), transport_socket: Some(socket("a.example.com", &["h2"])), ..Default::default() };
    merge_socket(cluster.transport_socket.as_mut().unwrap(), &socket("", &["http/1.1"])).unwrap();
    let Some(SocketConfig::TypedConfig(any)) = &cluster.transport_socket.as_ref().unwrap().config_type else {
        panic!()
    };
    use prost::Message;
    let merged = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    // The generated SNI stays; the lists append (protobuf merge).
    assert_eq!(merged.sni, "a.example.com");
    assert_eq!(merged.common_tls_context.unwrap().alpn_protocols, ["h2", "http/1.1"]);
}

#[test]
fn virtual_host_matches_by_name_and_domain() {
    let vh = VirtualHost {
        name: "httpbin.apps.svc.cluster.local:8000".into(),
        domains: vec!["httpbin.apps.svc.cluster.local".into(), "httpbin".into()],
        ..Default::default()
    };
    let cases = [
        ("{}", true),
        ("{vhost: {name: 'httpbin.apps.svc.cluster.local:8000'}}", true),
        ("{vhost: {name: other}}", false),
        ("{vhost: {domainName: httpbin}}", true),
        ("{vhost: {domainName: httpbin.other}}", false),
        ("{vhost: {name: 'httpbin.apps.svc.cluster.local:8000', domainName: nope}}", false),
    ];
    for (yaml, want) in cases {
        let p = patch(ApplyTo::VirtualHost, &format!("{{routeConfiguration: {yaml}}}"));
        assert_eq!(virtual_host_matches(&vh, &active(&p, Operation::Merge)), want, "{yaml}");
    }
}

#[test]
fn order_is_priority_then_root_namespace_then_creation_time_then_name() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let filter = |name: &str, namespace: &str, priority: Option<i32>, created: Option<i64>| {
        let spec: rudder_config::networking::envoy_filter::EnvoyFilterSpec =
            serde_saphyr::from_str("configPatches: [{applyTo: CLUSTER, patch: {operation: REMOVE}}]").unwrap();
        let mut f =
            EnvoyFilter::new(name, rudder_config::networking::envoy_filter::EnvoyFilterSpec { priority, ..spec });
        f.metadata.namespace = Some(namespace.to_owned());
        f.metadata.creation_timestamp = created.map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
        Arc::new(f)
    };
    let snapshot = Snapshot {
        envoy_filters: vec![
            filter("a-late", "apps", None, Some(300)),
            filter("b-early", "apps", None, Some(100)),
            filter("c-same-time", "apps", None, Some(100)),
            filter("root-late", "istio-system", None, Some(500)),
            filter("first", "apps", Some(-5), Some(900)),
            filter("last", "istio-system", Some(5), Some(1)),
            filter("elsewhere", "other", Some(-10), Some(1)),
        ],
        ..Snapshot::default()
    };
    let proxy = Proxy::from_node("sidecar~10.0.0.1~p.apps~apps.svc.cluster.local", &BTreeMap::new()).unwrap();
    let order: Vec<String> = Patches::for_proxy(&snapshot, &proxy).list.iter().map(|p| p.filter.clone()).collect();
    assert_eq!(
        order,
        [
            "apps/first",
            "istio-system/root-late",
            "apps/b-early",
            "apps/c-same-time",
            "apps/a-late",
            "istio-system/last"
        ]
    );
}

#[test]
fn extension_configs_are_the_named_adds_first_one_kept() {
    let spec: rudder_config::networking::envoy_filter::EnvoyFilterSpec = serde_saphyr::from_str(
        r#"
configPatches:
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: b, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: a, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: a, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: MERGE, value: {name: b, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: c}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: d, typed_config: {"@type": type.googleapis.com/no.such.Type}}}
"#,
    )
    .unwrap();
    let mut filter = EnvoyFilter::new("ecds", spec);
    filter.metadata.namespace = Some("istio-system".to_owned());
    let snapshot = Snapshot { envoy_filters: vec![Arc::new(filter)], ..Snapshot::default() };
    let proxy = Proxy::from_node("sidecar~10.0.0.1~p.apps~apps.svc.cluster.local", &BTreeMap::new()).unwrap();
    let mut skipped = Vec::new();
    let configs = Patches::for_proxy(&snapshot, &proxy).extension_configs(&mut skipped);
    let served: Vec<(&str, &str)> = configs
        .iter()
        .map(|c| (c.name.as_str(), c.typed_config.as_ref().map_or("", |t| t.type_url.as_str())))
        .collect();
    assert_eq!(
        served,
        [
            ("a", "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"),
            ("b", "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"),
        ]
    );
    let why: Vec<(usize, &str)> = skipped.iter().map(|s| (s.index, s.field.as_str())).collect();
    assert_eq!(
        why,
        [
            (2, "patch.value.name"),
            (3, "patch.operation"),
            (4, "patch.value.name"),
            (5, "patch.value.typed_config"),
            (6, "patch.value.typed_config")
        ],
        "{skipped:?}"
    );
}
