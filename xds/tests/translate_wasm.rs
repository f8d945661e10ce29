//! WasmPlugin translation: which proxies and chains a plugin reaches (namespace, root
//! namespace, selector, targetRef, `match`), where its filter lands (phase, priority, HTTP and
//! network), what Envoy gets (module inline, V8, configuration, env, failure policy), and that a
//! plugin without a module is left out with everything else unchanged. A real Envoy
//! (`--mode validate`) accepts the result.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::async_data_source::Specifier as AsyncSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm as HttpWasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfig;
use envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy;
use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
use envoy_types::pb::google::protobuf::StringValue;
use prost::Message;
use rudder_xds::model::{Proxy, Snapshot, WasmModule, wasm_module_key};
use rudder_xds::testing::config_dir_snapshot;
use rudder_xds::translate;

/// httpbin in `apps` (HTTP 8000, TCP 9000) at 10.244.0.10; a Kubernetes Gateway API gateway
/// workload `edge` in `apps` at 10.244.0.20.
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
kind: Gateway
metadata: {name: edge, namespace: apps}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: edge}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;

const HTTPBIN: &str = "sidecar~10.244.0.10~httpbin-1.apps~apps.svc.cluster.local";
const SLEEP_OTHER_NS: &str = "sidecar~10.244.0.11~sleep-1.other~other.svc.cluster.local";
const EDGE: &str = "router~10.244.0.20~edge-1.apps~apps.svc.cluster.local";

/// The real test module (the same one the real-Envoy test runs).
fn module() -> Vec<u8> {
    wat::parse_str(include_str!("wasm/add_header.wat")).unwrap()
}

/// The snapshot of [`BASE`] and `extra`, every plugin's module ready unless its name starts
/// with `missing` (never read) or `broken` (failed).
fn snapshot(extra: &str) -> Snapshot {
    let mut snapshot = config_dir_snapshot(&[("base.yaml", BASE), ("extra.yaml", extra)], Default::default());
    let bytes = Arc::new(module());
    for plugin in &snapshot.wasm_plugins.clone() {
        let name = plugin.metadata.name.clone().unwrap_or_default();
        let state = if name.starts_with("missing") {
            continue;
        } else if name.starts_with("broken") {
            WasmModule::Failed { field: "sha256", reason: "checksum mismatch".into() }
        } else {
            WasmModule::Ready(bytes.clone())
        };
        snapshot.wasm_modules.insert(wasm_module_key(plugin), Arc::new(state));
    }
    snapshot
}

fn proxy(id: &str, labels: &[(&str, &str)]) -> Proxy {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::Value::Object(labels))]);
    Proxy::from_node(id, &meta).unwrap()
}

fn httpbin() -> Proxy {
    proxy(HTTPBIN, &[("app", "httpbin")])
}

fn listeners(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Listener> {
    translate::for_proxy(snapshot, proxy).listeners
}

fn hcm(chain: &FilterChain) -> Option<HttpConnectionManager> {
    chain.filters.iter().find_map(|f| match &f.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url.ends_with("HttpConnectionManager") => {
            Some(HttpConnectionManager::decode(any.value.as_slice()).unwrap())
        }
        _ => None,
    })
}

/// The chains of `listener` named `chain` (all when empty).
fn chains<'a>(listeners: &'a [Listener], listener: &str, chain: &str) -> Vec<&'a FilterChain> {
    let l = listeners.iter().find(|l| l.name == listener).unwrap_or_else(|| panic!("no listener {listener}"));
    l.filter_chains.iter().filter(|c| chain.is_empty() || c.name == chain).collect()
}

/// HTTP filter names of the first HCM chain of `listener`/`chain`, plugins shortened to
/// `wasm:<name>`.
fn http_filters(listeners: &[Listener], listener: &str, chain: &str) -> Vec<String> {
    let chains = chains(listeners, listener, chain);
    let hcm = chains.iter().find_map(|c| hcm(c)).unwrap_or_else(|| panic!("no HCM in {listener}/{chain}"));
    hcm.http_filters.iter().map(|f| short(&f.name)).collect()
}

/// Network filter names of every chain of `listener`/`chain`.
fn network_filters(listeners: &[Listener], listener: &str, chain: &str) -> Vec<Vec<String>> {
    chains(listeners, listener, chain).iter().map(|c| c.filters.iter().map(|f| short(&f.name)).collect()).collect()
}

fn short(name: &str) -> String {
    match name.strip_prefix("extensions.istio.io/wasmplugin/") {
        Some(plugin) => format!("wasm:{}", plugin.rsplit('.').next().unwrap_or(plugin)),
        None => name.rsplit('.').next().unwrap_or(name).to_owned(),
    }
}

fn plugin(name: &str, namespace: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  url: file:///plugins/{name}.wasm\n{extra}---\n"
    )
}

#[test]
fn phases_and_priorities_order_http_plugins_around_authentication_and_authorization() {
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: apps}\n\
         spec: {jwtRules: [{issuer: iss, jwks: '{\"keys\":[]}'}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: apps}\n\
         spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n---\n",
    );
    yaml += &plugin("authn-low", "apps", "  phase: AUTHN\n  priority: 1\n");
    yaml += &plugin("authn-high", "apps", "  phase: AUTHN\n  priority: 100\n");
    yaml += &plugin("authz", "apps", "  phase: AUTHZ\n");
    yaml += &plugin("stats", "apps", "  phase: STATS\n");
    yaml += &plugin("last", "apps", "");
    yaml += &plugin("first-of-unspecified", "apps", "  priority: 5\n");
    let snap = snapshot(&yaml);
    let got = http_filters(&listeners(&snap, &httpbin()), "virtualInbound", "0.0.0.0_8000");
    assert_eq!(
        got,
        [
            "header_to_metadata",
            "fault",
            "cors",
            "wasm:authn-high",
            "wasm:authn-low",
            "jwt_authn",
            "wasm:authz",
            "rbac",
            "wasm:stats",
            "wasm:first-of-unspecified",
            "wasm:last",
            "router"
        ]
    );
}

#[test]
fn without_authentication_and_authorization_every_phase_keeps_its_order_before_the_router() {
    // (Names are not `n`: unquoted, YAML 1.1 reads that as false.)
    let mut yaml = plugin("p-u", "apps", "");
    yaml += &plugin("p-s", "apps", "  phase: STATS\n");
    yaml += &plugin("p-z", "apps", "  phase: AUTHZ\n");
    yaml += &plugin("p-n", "apps", "  phase: AUTHN\n");
    let snap = snapshot(&yaml);
    let got = http_filters(&listeners(&snap, &httpbin()), "virtualInbound", "0.0.0.0_8000");
    assert_eq!(got, ["header_to_metadata", "fault", "cors", "wasm:p-n", "wasm:p-z", "wasm:p-s", "wasm:p-u", "router"]);
}

#[test]
fn namespace_root_namespace_selector_and_target_ref_decide_who_gets_a_plugin() {
    let mut yaml = plugin("mesh-wide", "istio-system", "");
    yaml += &plugin("root-selected", "istio-system", "  selector: {matchLabels: {app: httpbin}}\n");
    yaml += &plugin("apps-wide", "apps", "");
    yaml += &plugin("apps-other-app", "apps", "  selector: {matchLabels: {app: ratings}}\n");
    yaml += &plugin("other-ns", "other", "");
    yaml += &plugin(
        "edge-target",
        "apps",
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]\n",
    );
    yaml += &plugin("service-target", "apps", "  targetRef: {kind: Service, name: httpbin}\n");
    let snap = snapshot(&yaml);
    let wasm = |listeners: &[Listener], listener: &str, chain: &str| -> Vec<String> {
        let mut names: Vec<String> =
            http_filters(listeners, listener, chain).into_iter().filter(|f| f.starts_with("wasm:")).collect();
        names.sort();
        names
    };
    // httpbin: the mesh-wide and namespace plugins, and the root plugin selecting it; no
    // targetRef plugin (sidecars ignore them), nothing from another namespace.
    let inbound = listeners(&snap, &httpbin());
    assert_eq!(
        wasm(&inbound, "virtualInbound", "0.0.0.0_8000"),
        ["wasm:apps-wide", "wasm:mesh-wide", "wasm:root-selected"]
    );
    assert_eq!(wasm(&inbound, "0.0.0.0_8000", ""), ["wasm:apps-wide", "wasm:mesh-wide", "wasm:root-selected"]);
    // A sidecar of another namespace: the mesh-wide plugin and its own namespace's.
    let sleep = listeners(&snap, &proxy(SLEEP_OTHER_NS, &[("app", "sleep")]));
    assert_eq!(wasm(&sleep, "0.0.0.0_8000", ""), ["wasm:mesh-wide", "wasm:other-ns"]);
    // The Gateway API workload: only what targets its Gateway, or selects without a target
    // (the namespace-wide and mesh-wide ones); never a Service target (waypoints only).
    let edge = listeners(&snap, &proxy(EDGE, &[("gateway.networking.k8s.io/gateway-name", "edge")]));
    assert_eq!(wasm(&edge, "0.0.0.0_8080", ""), ["wasm:apps-wide", "wasm:edge-target", "wasm:mesh-wide"]);
}

#[test]
fn match_mode_and_ports_pick_the_chains() {
    let mut yaml = plugin("server", "apps", "  match: [{mode: SERVER}]\n");
    yaml += &plugin("client", "apps", "  match: [{mode: CLIENT}]\n");
    yaml += &plugin("port-9999", "apps", "  match: [{ports: [{number: 9999}]}]\n");
    yaml += &plugin("port-8000", "apps", "  match: [{mode: CLIENT_AND_SERVER, ports: [{number: 8000}]}]\n");
    let snap = snapshot(&yaml);
    let all = listeners(&snap, &httpbin());
    let wasm = |listener: &str, chain: &str| -> Vec<String> {
        http_filters(&all, listener, chain).into_iter().filter(|f| f.starts_with("wasm:")).collect()
    };
    // Same phase and priority: name order.
    assert_eq!(wasm("virtualInbound", "0.0.0.0_8000"), ["wasm:port-8000", "wasm:server"]);
    assert_eq!(wasm("0.0.0.0_8000", ""), ["wasm:client", "wasm:port-8000"]);
    // A gateway is a client.
    let edge = listeners(&snap, &proxy(EDGE, &[("gateway.networking.k8s.io/gateway-name", "edge")]));
    let names: Vec<String> =
        http_filters(&edge, "0.0.0.0_8080", "").into_iter().filter(|f| f.starts_with("wasm:")).collect();
    assert_eq!(names, ["wasm:client"]);
}

#[test]
fn network_plugins_wrap_network_rbac_and_precede_the_connection_manager() {
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: apps}\n\
         spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.9.9.9]}}]}]}\n---\n",
    );
    yaml += &plugin("net-authz", "apps", "  type: NETWORK\n  phase: AUTHZ\n  match: [{mode: SERVER}]\n");
    yaml += &plugin("net-stats", "apps", "  type: NETWORK\n  phase: STATS\n  match: [{mode: SERVER}]\n");
    yaml += &plugin("http-only", "apps", "  match: [{mode: SERVER}]\n");
    let snap = snapshot(&yaml);
    let all = listeners(&snap, &httpbin());
    for filters in network_filters(&all, "virtualInbound", "0.0.0.0_9000") {
        assert_eq!(filters, ["wasm:net-authz", "rbac", "wasm:net-stats", "tcp_proxy"]);
    }
    for filters in network_filters(&all, "virtualInbound", "0.0.0.0_8000") {
        assert_eq!(filters, ["wasm:net-authz", "wasm:net-stats", "http_connection_manager"]);
    }
    let http = http_filters(&all, "virtualInbound", "0.0.0.0_8000");
    assert!(http.contains(&"wasm:http-only".to_owned()) && !http.iter().any(|f| f.starts_with("wasm:net")), "{http:?}");
    // Blackhole and passthrough chains carry no plugin.
    for filters in network_filters(&all, "virtualInbound", "virtualInbound") {
        assert!(!filters.iter().any(|f| f.starts_with("wasm:")), "{filters:?}");
    }
}

#[test]
fn envoy_gets_the_module_inline_with_its_configuration_environment_and_failure_policy() {
    let yaml = plugin(
        "hello",
        "apps",
        "  pluginName: hello_root\n  failStrategy: FAIL_OPEN\n  pluginConfig: {header: x-hello, value: world}\n\
         \x20 vmConfig: {env: [{name: GREETING, value: hi}, {name: HOSTNAME, valueFrom: HOST}]}\n",
    );
    let snap = snapshot(&yaml);
    let all = listeners(&snap, &httpbin());
    let chain = chains(&all, "virtualInbound", "0.0.0.0_8000")[0];
    let hcm = hcm(chain).unwrap();
    let filter = hcm.http_filters.iter().find(|f| f.name == "extensions.istio.io/wasmplugin/apps.hello").unwrap();
    let Some(HttpConfig::TypedConfig(any)) = &filter.config_type else { panic!("no typed config") };
    assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
    let config = HttpWasm::decode(any.value.as_slice()).unwrap().config.unwrap();
    assert_eq!(config.name, "apps.hello");
    assert_eq!(config.root_id, "hello_root");
    // FAIL_OPEN is the boolean (Envoy refuses it together with a policy).
    assert_eq!(config.failure_policy, FailurePolicy::Unspecified as i32);
    #[allow(deprecated)]
    let fail_open = config.fail_open;
    assert!(fail_open);
    let configuration = config.configuration.unwrap();
    assert_eq!(configuration.type_url, "type.googleapis.com/google.protobuf.StringValue");
    assert_eq!(
        StringValue::decode(configuration.value.as_slice()).unwrap().value,
        r#"{"header":"x-hello","value":"world"}"#
    );
    let Some(Vm::VmConfig(vm)) = config.vm else { panic!("no VM") };
    assert_eq!(vm.runtime, "envoy.wasm.runtime.v8");
    let code = vm.code.unwrap().specifier.unwrap();
    let AsyncSpecifier::Local(local) = code else { panic!("not local") };
    assert_eq!(local.specifier, Some(Specifier::InlineBytes(module())));
    let env = vm.environment_variables.unwrap();
    assert_eq!(env.key_values.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(env.host_env_keys, ["HOSTNAME"]);
}

#[test]
fn a_plugin_without_its_module_is_left_out_and_nothing_else_changes() {
    let good = plugin("good", "apps", "  pluginConfig: {header: x-good, value: ok}\n");
    let without = snapshot(&good);
    let broken = format!("{good}{}", plugin("broken", "apps", &format!("  sha256: \"{}\"\n", "0".repeat(64))));
    let with_broken = snapshot(&broken);
    let missing = format!("{good}{}", plugin("missing", "apps", ""));
    let with_missing = snapshot(&missing);
    assert_eq!((with_broken.wasm_plugins.len(), with_missing.wasm_plugins.len()), (2, 2));
    let proxy = httpbin();
    let reference = translate::for_proxy(&without, &proxy);
    assert!(reference == translate::for_proxy(&with_broken, &proxy), "a failed module changed the config");
    assert!(reference == translate::for_proxy(&with_missing, &proxy), "a module not read yet changed the config");
    let names = http_filters(&reference.listeners, "virtualInbound", "0.0.0.0_8000");
    assert!(names.contains(&"wasm:good".to_owned()), "{names:?}");
}

#[test]
fn plugins_change_the_view_of_the_sidecars_they_select() {
    let yaml = plugin("only-httpbin", "apps", "  selector: {matchLabels: {app: httpbin}}\n");
    let snap = snapshot(&yaml);
    let selectors = translate::LabelSelectors::of(&snap);
    let plain = proxy("sidecar~10.244.0.12~plain-1.apps~apps.svc.cluster.local", &[("app", "plain")]);
    let selected = proxy("sidecar~10.244.0.13~other-1.apps~apps.svc.cluster.local", &[("app", "httpbin")]);
    assert_ne!(translate::ViewKey::of(&plain, &selectors), translate::ViewKey::of(&selected, &selectors));
    assert!(translate::outbound(&snap, &plain) != translate::outbound(&snap, &selected));
    // A new module (read after the plugin arrived) changes the listeners.
    let mut before = snap.clone();
    before.wasm_modules.clear();
    let parts = translate::changed_parts(&before, &snap, &translate::ViewKey::of(&selected, &selectors));
    assert!(parts.listeners, "{parts:?}");
}

#[test]
fn envoy_accepts_the_translated_plugins() {
    let mut yaml = plugin(
        "hello",
        "apps",
        "  failStrategy: FAIL_OPEN\n  pluginConfig: {header: x-hello, value: world}\n  phase: AUTHZ\n",
    );
    yaml += &plugin(
        "net",
        "apps",
        "  type: NETWORK\n  match: [{mode: SERVER, ports: [{number: 9000}]}]\n  pluginConfig: {header: x-net, value: net}\n",
    );
    yaml +=
        &plugin("reload", "apps", "  failStrategy: FAIL_RELOAD\n  pluginConfig: {header: x-reload, value: reload}\n");
    let snap = snapshot(&yaml);
    let resources = translate::for_proxy(&snap, &httpbin());
    // Inbound listeners carry their routes inline; outbound ones need RDS, which validate mode
    // accepts with the node set.
    rudder_xds::testing::envoy_accepts(resources.clusters, resources.listeners).unwrap();
}
