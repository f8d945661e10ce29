//! WasmPlugin (`extensions.istio.io`) → Envoy's Wasm filters (`envoy.filters.http.wasm`,
//! `envoy.filters.network.wasm`) in the filter chains of the proxies a plugin selects.
//!
//! Which plugins apply to a proxy, as Istio decides: those of the proxy's namespace and of the
//! root namespace (mesh-wide); for a sidecar or an Istio `Gateway` workload the `selector`
//! (none: every workload) and never a `targetRef`; for a Kubernetes Gateway API workload
//! (label `gateway.networking.k8s.io/gateway-name`) a `targetRef` to its Gateway (same
//! namespace), or the selector when there is none. A `targetRef` to a Service only attaches to
//! waypoints, which Rudder does not run. `match` then picks the chains: mode SERVER is the
//! sidecar's inbound side, CLIENT its outbound side and gateways, and `ports` the chain's port.
//!
//! Where they go, phase by phase, plugins of higher `priority` first (unset: last):
//! - HTTP plugins in the connection manager: AUTHN before the JWT filter, AUTHZ before RBAC,
//!   STATS and then unspecified after RBAC, before the router (Rudder's statistics are access
//!   loggers, which run after the router);
//! - network plugins before the connection manager (all phases), or around the network RBAC
//!   filter of TCP chains (AUTHN, AUTHZ before it; STATS, unspecified after it).
//!
//! The module travels inline (`inline_bytes`): discovery fetched it (see
//! [`crate::registry::wasm`]), so the proxy never reaches out. A plugin whose module discovery
//! has not (or could not) read is left out, and the rest of the config is served as usual.

use std::cmp::Reverse;
use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::async_data_source::Specifier as AsyncSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{AsyncDataSource, DataSource};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm as HttpWasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm as NetworkWasm;
use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
use envoy_types::pb::envoy::extensions::wasm::v3::{EnvironmentVariables, FailurePolicy, PluginConfig, VmConfig};
use envoy_types::pb::google::protobuf::StringValue;
use envoy_types::util::pack_any;
use prost::Message;
use rudder_config::common::PolicyTargetReference;
use rudder_config::extensions::{EnvValueSource, FailStrategy, PluginPhase, PluginType, TrafficMode, WasmPlugin};

use super::authz::{HTTP_RBAC, JWT_FILTER, NETWORK_RBAC};
use super::context::Context;
use super::listener::hcm::{HTTP_CONNECTION_MANAGER, ROUTER_FILTER, TCP_PROXY};
use crate::model::{Proxy, Snapshot, WasmModule, labels_match, wasm_module_key};

/// The label naming the Kubernetes Gateway a workload serves.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Istio's Wasm runtime.
pub const V8_RUNTIME: &str = "envoy.wasm.runtime.v8";
/// Filter names are the plugin's resource name, as istiod writes it.
pub const FILTER_NAME_PREFIX: &str = "extensions.istio.io/wasmplugin/";

/// Which kind of listener a chain belongs to, for `match.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

impl Class {
    fn mode_matches(self, mode: Option<TrafficMode>) -> bool {
        match mode.unwrap_or(TrafficMode::Undefined) {
            TrafficMode::Undefined | TrafficMode::ClientAndServer => true,
            TrafficMode::Client => self != Class::SidecarInbound,
            TrafficMode::Server => self == Class::SidecarInbound,
        }
    }
}

/// A plugin that applies to the proxy, with its module.
#[derive(Debug)]
struct Attached<'a> {
    plugin: &'a WasmPlugin,
    module: &'a [u8],
}

/// Whether `plugin` attaches to `proxy` (its namespace or the root namespace; selector or
/// target reference as described in the module documentation).
pub fn attaches(snapshot: &Snapshot, plugin: &WasmPlugin, proxy: &Proxy) -> bool {
    let namespace = plugin.metadata.namespace.as_deref().unwrap_or_default();
    if namespace != proxy.namespace && namespace != snapshot.root_namespace() {
        return false;
    }
    let spec = &plugin.spec;
    let targets: Vec<&PolicyTargetReference> = match &spec.target_ref {
        Some(one) if spec.target_refs.is_empty() => vec![one],
        _ => spec.target_refs.iter().collect(),
    };
    let selected = || spec.selector.as_ref().is_none_or(|s| labels_match(&s.match_labels, &proxy.labels));
    match proxy.labels.get(GATEWAY_NAME_LABEL) {
        None => targets.is_empty() && selected(),
        Some(_) if targets.is_empty() => selected(),
        Some(gateway) => {
            namespace == proxy.namespace
                && targets.iter().any(|t| {
                    t.group == "gateway.networking.k8s.io"
                        && t.kind == "Gateway"
                        && t.name == *gateway
                        && (t.namespace.is_empty() || t.namespace == proxy.namespace)
                })
        }
    }
}

/// Every plugin attached to the proxy whose module is ready, in Istio's order: the proxy's
/// namespace before the root namespace (each in name order), then by priority, highest first
/// (a stable sort, so ties keep that order).
fn attached<'a>(snapshot: &'a Snapshot, proxy: &Proxy) -> Vec<Attached<'a>> {
    let mut out: Vec<Attached<'a>> = Vec::new();
    let local_first = |p: &&std::sync::Arc<WasmPlugin>| p.metadata.namespace.as_deref() != Some(&proxy.namespace);
    let mut plugins: Vec<&std::sync::Arc<WasmPlugin>> = snapshot.wasm_plugins.iter().collect();
    plugins.sort_by_key(local_first);
    for plugin in plugins {
        if !attaches(snapshot, plugin, proxy) {
            continue;
        }
        match snapshot.wasm_modules.get(&wasm_module_key(plugin)).map(AsRef::as_ref) {
            Some(WasmModule::Ready(bytes)) => out.push(Attached { plugin, module: bytes.as_slice() }),
            state => tracing::debug!(
                proxy = %proxy,
                plugin = %plugin_id(plugin),
                failed = matches!(state, Some(WasmModule::Failed { .. })),
                "WasmPlugin left out: its module is not available"
            ),
        }
    }
    out.sort_by_key(|a| Reverse(a.plugin.spec.priority.unwrap_or(i32::MIN)));
    out
}

/// `<namespace>/<name>` of a plugin, for messages.
pub fn plugin_id(plugin: &WasmPlugin) -> String {
    format!(
        "{}/{}",
        plugin.metadata.namespace.as_deref().unwrap_or_default(),
        plugin.metadata.name.as_deref().unwrap_or_default()
    )
}

fn traffic_matches(plugin: &WasmPlugin, class: Class, ports: &[u32]) -> bool {
    let selectors = &plugin.spec.r#match;
    selectors.is_empty()
        || selectors.iter().any(|s| {
            class.mode_matches(s.mode)
                && (s.ports.is_empty() || s.ports.iter().any(|p| p.number.is_some_and(|n| ports.contains(&n))))
        })
}

/// Adds the Wasm filters of the plugins attached to `ctx.proxy` to `listeners` (of `class`).
/// A chain's port is its `destination_port` match, else its listener's port; `ports_of` maps
/// that to every port number a plugin may name for it (a gateway's server port besides the
/// port it listens on).
pub fn add_filters(ctx: &Context<'_>, class: Class, listeners: &mut [Listener], ports_of: impl Fn(u32) -> Vec<u32>) {
    if ctx.snapshot.wasm_plugins.is_empty() {
        return;
    }
    let plugins = attached(ctx.snapshot, ctx.proxy);
    if plugins.is_empty() {
        return;
    }
    for listener in listeners {
        if listener.name == super::context::VIRTUAL_OUTBOUND {
            continue;
        }
        let listener_port = listener_port(listener);
        for chain in &mut listener.filter_chains {
            if SKIPPED_CHAINS.contains(&chain.name.as_str()) {
                continue;
            }
            let port = chain
                .filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .map_or(listener_port, |p| p.value);
            let ports = ports_of(port);
            let matching: Vec<&Attached<'_>> =
                plugins.iter().filter(|a| traffic_matches(a.plugin, class, &ports)).collect();
            if !matching.is_empty() {
                add_to_chain(chain, &matching);
            }
        }
    }
}

/// Chains that carry no service traffic of their own: blackholes and passthroughs.
const SKIPPED_CHAINS: [&str; 5] = [
    super::listener::VIRTUAL_INBOUND_BLACKHOLE,
    super::context::VIRTUAL_INBOUND,
    super::listener::PASSTHROUGH_FILTER_CHAIN,
    super::listener::VIRTUAL_OUTBOUND_BLACKHOLE,
    super::listener::VIRTUAL_OUTBOUND_CATCHALL_TCP,
];

fn listener_port(listener: &Listener) -> u32 {
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match listener.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(Kind::SocketAddress(s)) => match s.port_specifier {
            Some(PortSpecifier::PortValue(port)) => port,
            _ => 0,
        },
        _ => 0,
    }
}

const PHASES: [PluginPhase; 4] =
    [PluginPhase::Authn, PluginPhase::Authz, PluginPhase::Stats, PluginPhase::UnspecifiedPhase];

fn of_phase<'p, 'a>(
    plugins: &'p [&'p Attached<'a>],
    kind: PluginType,
    phase: PluginPhase,
) -> impl Iterator<Item = &'p Attached<'a>> {
    plugins
        .iter()
        .copied()
        .filter(move |a| a.plugin.spec.plugin_type() == kind && a.plugin.spec.phase.unwrap_or_default() == phase)
}

fn add_to_chain(chain: &mut FilterChain, plugins: &[&Attached<'_>]) {
    let network = |phase| of_phase(plugins, PluginType::Network, phase).map(network_filter);
    let filters = std::mem::take(&mut chain.filters);
    let mut out = Vec::with_capacity(filters.len() + plugins.len());
    if let Some(hcm_at) = filters.iter().position(|f| f.name == HTTP_CONNECTION_MANAGER) {
        for (i, mut filter) in filters.into_iter().enumerate() {
            if i == hcm_at {
                for phase in PHASES {
                    out.extend(network(phase));
                }
                add_http_filters(&mut filter, plugins);
            }
            out.push(filter);
        }
    } else if let Some(proxy_at) = filters.iter().position(|f| f.name == TCP_PROXY) {
        let rbac_first = filters.iter().position(|f| f.name == NETWORK_RBAC).unwrap_or(proxy_at);
        let rbac_end = filters.iter().rposition(|f| f.name == NETWORK_RBAC).map_or(proxy_at, |i| i + 1);
        for (i, filter) in filters.into_iter().enumerate() {
            if i == rbac_first {
                out.extend(network(PluginPhase::Authn));
                out.extend(network(PluginPhase::Authz));
            }
            if i == rbac_end {
                out.extend(network(PluginPhase::Stats));
                out.extend(network(PluginPhase::UnspecifiedPhase));
            }
            out.push(filter);
        }
    } else {
        out = filters;
    }
    chain.filters = out;
}

/// Puts the HTTP plugins into an HCM network filter (decoded, changed, encoded again).
fn add_http_filters(filter: &mut Filter, plugins: &[&Attached<'_>]) {
    if !plugins.iter().any(|a| a.plugin.spec.plugin_type() == PluginType::Http) {
        return;
    }
    let Some(FilterConfig::TypedConfig(any)) = &mut filter.config_type else { return };
    let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { return };
    let http = |phase| of_phase(plugins, PluginType::Http, phase).map(http_filter);
    let filters = std::mem::take(&mut hcm.http_filters);
    let router = filters.iter().position(|f| f.name == ROUTER_FILTER).unwrap_or(filters.len());
    let authz = filters.iter().position(|f| f.name == HTTP_RBAC).unwrap_or(router);
    let authn = filters.iter().position(|f| f.name == JWT_FILTER).unwrap_or(authz).min(authz);
    // AUTHZ comes after the authentication filters even when RBAC is absent.
    let authz = authz.max(filters.iter().rposition(|f| f.name == JWT_FILTER).map_or(authz, |i| i + 1));
    // STATS and unspecified after the last RBAC filter.
    let after_rbac =
        filters.iter().rposition(|f| f.name == HTTP_RBAC).map_or(authz, |i| i + 1).clamp(authz, router.max(authz));
    let total = filters.len();
    let mut rest = filters.into_iter();
    let mut out = Vec::with_capacity(total + plugins.len());
    for i in 0..=total {
        if i == authn {
            out.extend(http(PluginPhase::Authn));
        }
        if i == authz {
            out.extend(http(PluginPhase::Authz));
        }
        if i == after_rbac {
            out.extend(http(PluginPhase::Stats));
            out.extend(http(PluginPhase::UnspecifiedPhase));
        }
        out.extend(rest.next());
    }
    hcm.http_filters = out;
    *any = pack_any(hcm);
}

fn http_filter(attached: &Attached<'_>) -> HttpFilter {
    HttpFilter {
        name: format!("{FILTER_NAME_PREFIX}{}", resource_name(attached.plugin)),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(HttpWasm {
            config: Some(plugin_config(attached.plugin, attached.module)),
        }))),
        ..Default::default()
    }
}

fn network_filter(attached: &Attached<'_>) -> Filter {
    Filter {
        name: format!("{FILTER_NAME_PREFIX}{}", resource_name(attached.plugin)),
        config_type: Some(FilterConfig::TypedConfig(pack_any(NetworkWasm {
            config: Some(plugin_config(attached.plugin, attached.module)),
        }))),
    }
}

/// `<namespace>.<name>`: the plugin's name in Envoy (and its stats).
fn resource_name(plugin: &WasmPlugin) -> String {
    format!(
        "{}.{}",
        plugin.metadata.namespace.as_deref().unwrap_or_default(),
        plugin.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Envoy's plugin configuration: the module inline, run by V8; `pluginConfig` as a JSON
/// string; `pluginName` as the root id; the VM's environment; the failure policy.
pub fn plugin_config(plugin: &WasmPlugin, module: &[u8]) -> PluginConfig {
    let spec = &plugin.spec;
    let configuration = spec
        .plugin_config
        .as_ref()
        .filter(|c| !c.0.is_empty())
        .and_then(|c| serde_json::to_string(&c.0).ok())
        .map(|json| pack_any(StringValue { value: json }));
    let mut key_values = HashMap::new();
    let mut host_env_keys = Vec::new();
    for var in spec.vm_config.iter().flat_map(|vm| &vm.env) {
        match var.value_from.unwrap_or(EnvValueSource::Inline) {
            EnvValueSource::Inline => {
                key_values.insert(var.name.clone(), var.value.clone());
            }
            EnvValueSource::Host => host_env_keys.push(var.name.clone()),
        }
    }
    let environment_variables = (!key_values.is_empty() || !host_env_keys.is_empty())
        .then_some(EnvironmentVariables { host_env_keys, key_values });
    let vm = VmConfig {
        runtime: V8_RUNTIME.to_owned(),
        code: Some(AsyncDataSource {
            specifier: Some(AsyncSpecifier::Local(DataSource {
                specifier: Some(Specifier::InlineBytes(module.to_vec())),
                ..Default::default()
            })),
        }),
        environment_variables,
        ..Default::default()
    };
    // Envoy takes one of the two: FAIL_OPEN as the boolean every Envoy with Wasm reads,
    // FAIL_RELOAD as the policy (newer Envoys); FAIL_CLOSE is the default of both.
    let strategy = spec.fail_strategy.unwrap_or(FailStrategy::FailClose);
    let failure_policy = match strategy {
        FailStrategy::FailReload => FailurePolicy::FailReload,
        FailStrategy::FailClose | FailStrategy::FailOpen => FailurePolicy::Unspecified,
    };
    #[allow(deprecated)]
    PluginConfig {
        name: resource_name(plugin),
        root_id: spec.plugin_name.clone(),
        configuration,
        fail_open: strategy == FailStrategy::FailOpen,
        failure_policy: failure_policy as i32,
        vm: Some(Vm::VmConfig(vm)),
        ..Default::default()
    }
}
