//! Translation of a [`Snapshot`] into Envoy resources for one proxy. Pure: values in, values
//! out, no I/O and no clocks, so the same inputs always give byte-identical resources.
//!
//! Output is split by what it depends on, so the server can share work between proxies:
//! - [`outbound`]: clusters, listeners and routes that depend only on the proxy's
//!   [`ViewKey`] (type, namespace, which of the mesh's label selectors match its labels,
//!   interception mode and — for capture mode NONE — its address); computed once per distinct
//!   view, so workloads with their own labels still share one;
//! - [`inbound`]: the proxy's own workload side (inbound listeners and clusters), per proxy;
//! - [`endpoints`]: every ClusterLoadAssignment, the same for all proxies.

pub mod authn;
pub mod authz;
pub mod cluster;
pub mod context;
pub mod credentials;
pub mod delegate;
pub mod dynamic_dns;
pub mod endpoint;
pub mod envoy_filter;
pub mod gateway;
pub mod listener;
pub mod locality;
pub mod route;
pub mod security;
pub mod telemetry;
pub mod tunnel;
pub mod wasm;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use rudder_config::networking::VirtualService;

use crate::model::{Endpoint, InterceptionMode, NodeType, Proxy, Resolution, Snapshot, labels_match};

/// Resources of the three proxy-specific types (endpoints are shared, see [`endpoints`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// The clusters as messages; with `encoded_clusters`, only those with inline endpoints.
    pub clusters: Vec<Cluster>,
    /// Clusters translated straight to their encoding ([`outbound_parts_served`]): when not
    /// empty, every cluster of the set in order, their messages not kept beside them except in
    /// `clusters` for those with inline endpoints.
    pub encoded_clusters: Vec<(String, prost::bytes::Bytes)>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    /// Route configurations translated straight to their encoding ([`outbound_parts_served`]),
    /// by name, in order; their messages are not kept (`routes` holds none of them).
    pub encoded_routes: Vec<(String, prost::bytes::Bytes)>,
    /// SDS secrets served over ADS (gateway `credentialName`s). They change with the listeners
    /// that name them, so they are translated again whenever listeners are.
    pub secrets: Vec<Secret>,
    /// ECDS: the extension configs EnvoyFilter `EXTENSION_CONFIG` patches add, sorted by name.
    /// They depend only on EnvoyFilters, and go with the listeners that name them.
    pub extension_configs: Vec<TypedExtensionConfig>,
    /// The locality policy of each EDS cluster that has one, sorted by cluster name: which
    /// endpoints the proxy gets its own copy of ([`locality`]). Goes with the clusters.
    pub localities: Vec<(String, locality::LocalityPolicy)>,
    /// What the route translation can reuse next time for the same view (not config: two
    /// sets with equal resources are equal whatever their memos). Goes with the routes.
    pub route_memo: RouteMemoSlot,
}

/// A [`route::RouteMemo`] carried with the resources it was made with. Compares equal to any
/// other: it is a cache, not part of the config.
#[derive(Clone, Debug, Default)]
pub struct RouteMemoSlot(pub Option<Arc<route::RouteMemo>>);

impl PartialEq for RouteMemoSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Resources {
    /// Appends `other`'s resources after this set's.
    pub fn extend(&mut self, other: Resources) {
        self.clusters.extend(other.clusters);
        self.encoded_clusters.extend(other.encoded_clusters);
        self.listeners.extend(other.listeners);
        self.routes.extend(other.routes);
        self.encoded_routes.extend(other.encoded_routes);
        self.secrets.extend(other.secrets);
        self.extension_configs.extend(other.extension_configs);
        self.localities.extend(other.localities);
    }
}

/// Every proxy field the outbound translation reads. Two proxies with equal keys get
/// identical outbound resources; adding a field that translation reads without adding it
/// here would serve one proxy another's config, so keep the two in step.
///
/// Sidecars' labels are not in the key, only what translation asks of them: which of the
/// snapshot's [`LabelSelectors`] match. In a real mesh every workload has labels of its own;
/// keyed by the labels themselves, each workload would get (and hold) its own full view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewKey {
    pub node_type: NodeType,
    pub namespace: String,
    pub labels: ViewLabels,
    pub interception: InterceptionMode,
    /// The proxy's own address, where its config depends on it: capture mode NONE (outbound
    /// listeners bind it) and gateways (the services it backs map server ports to the ports
    /// it listens on).
    pub bind_ip: Option<String>,
    /// Whether the proxy has a workload certificate (auto mTLS needs one).
    pub mtls: bool,
    /// Which of the snapshot's EnvoyFilter `match.proxy` conditions the proxy meets, in
    /// [`LabelSelectors`] order (empty when no patch has one).
    pub proxy_matches: Vec<bool>,
}

/// What of a proxy's labels its outbound config depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewLabels {
    /// Sidecars: the selectors that match, in [`LabelSelectors`] order.
    Matching(Vec<Arc<LabelSelector>>),
    /// Gateways: all labels (Gateway `selector`s pick them; there are few gateway workloads).
    All(BTreeMap<String, String>),
}

/// A label selector outbound translation evaluates against a sidecar's labels. `namespace` is
/// set for selectors that only apply to proxies of that namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Every distinct [`LabelSelector`] of a snapshot: Sidecar `workloadSelector`s,
/// DestinationRule `workloadSelector`s and Telemetry `selector`s (for their own namespace),
/// WasmPlugin `selector`s and Gateway `targetRef`s (their namespace; root namespace selectors
/// everywhere), EnvoyFilter `workloadSelector`s (likewise), and VirtualService `sourceLabels`
/// (HTTP, TLS and TCP matches; for any proxy the service is exported to); beside them the
/// EnvoyFilter `match.proxy` conditions (proxy version, node metadata). Built
/// once per snapshot; matching one proxy against it is a few map lookups per selector.
#[derive(Clone, Debug, Default)]
pub struct LabelSelectors {
    all: Vec<Arc<LabelSelector>>,
    /// EnvoyFilter `match.proxy` conditions (proxy version, node metadata): a proxy's view
    /// depends on which it meets.
    proxy_matches: Vec<rudder_config::networking::envoy_filter::ProxyMatch>,
}

impl LabelSelectors {
    pub fn of(snapshot: &Snapshot) -> Self {
        let mut all = std::collections::BTreeSet::new();
        let mut add = |namespace: Option<&str>, labels: &BTreeMap<String, String>| {
            if !labels.is_empty() {
                all.insert(LabelSelector { namespace: namespace.map(str::to_owned), labels: labels.clone() });
            }
        };
        for sidecar in &snapshot.sidecars {
            if let Some(selector) = &sidecar.spec.workload_selector {
                add(sidecar.metadata.namespace.as_deref(), &selector.labels);
            }
        }
        for rule in &snapshot.destination_rules {
            if let Some(selector) = &rule.spec.workload_selector {
                add(rule.metadata.namespace.as_deref(), &selector.match_labels);
            }
        }
        for telemetry in &snapshot.telemetries {
            if let Some(selector) = &telemetry.spec.selector {
                add(telemetry.metadata.namespace.as_deref(), &selector.match_labels);
            }
        }
        // WasmPlugin selectors (a root namespace plugin selects workloads of every namespace),
        // and the Gateway API gateway a targetRef names, by its workloads' label.
        let root = snapshot.root_namespace();
        for plugin in &snapshot.wasm_plugins {
            let own = plugin.metadata.namespace.as_deref();
            if let Some(selector) = &plugin.spec.selector {
                add(own.filter(|ns| *ns != root), &selector.match_labels);
            }
            for target in plugin.spec.target_ref.iter().chain(&plugin.spec.target_refs) {
                let label = BTreeMap::from([(wasm::GATEWAY_NAME_LABEL.to_owned(), target.name.clone())]);
                add(own, &label);
            }
        }
        // EnvoyFilter workloadSelectors (root namespace filters select in every namespace);
        // targetRefs pick gateways, whose views keep all their labels.
        let mut proxy_matches = Vec::new();
        for filter in &snapshot.envoy_filters {
            let own = filter.metadata.namespace.as_deref();
            if let Some(selector) = &filter.spec.workload_selector {
                add(own.filter(|ns| *ns != root), &selector.labels);
            }
            for m in filter.spec.config_patches.iter().filter_map(|p| p.match_.as_ref()?.proxy.as_ref()) {
                if !proxy_matches.contains(m) {
                    proxy_matches.push(m.clone());
                }
            }
        }
        for vs in &snapshot.virtual_services {
            let spec = &vs.spec;
            let http = spec.http.iter().flat_map(|r| &r.r#match).map(|m| &m.source_labels);
            let tls = spec.tls.iter().flat_map(|r| &r.r#match).map(|m| &m.source_labels);
            let tcp = spec.tcp.iter().flat_map(|r| &r.r#match).map(|m| &m.source_labels);
            for labels in http.chain(tls).chain(tcp) {
                add(None, labels);
            }
        }
        Self { all: all.into_iter().map(Arc::new).collect(), proxy_matches }
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The selectors that apply to `proxy` and match its labels.
    fn matching(&self, proxy: &Proxy) -> Vec<Arc<LabelSelector>> {
        self.all
            .iter()
            .filter(|s| s.namespace.as_ref().is_none_or(|ns| *ns == proxy.namespace))
            .filter(|s| labels_match(&s.labels, &proxy.labels))
            .cloned()
            .collect()
    }
}

impl ViewKey {
    /// The key of `proxy`, with `selectors` those of the snapshot it is translated from.
    pub fn of(proxy: &Proxy, selectors: &LabelSelectors) -> Self {
        let labels = match proxy.node_type {
            NodeType::Sidecar => ViewLabels::Matching(selectors.matching(proxy)),
            NodeType::Router => ViewLabels::All(proxy.labels.clone()),
        };
        Self {
            node_type: proxy.node_type,
            namespace: proxy.namespace.clone(),
            labels,
            interception: proxy.interception,
            bind_ip: (proxy.interception == InterceptionMode::None || proxy.node_type == NodeType::Router)
                .then(|| proxy.primary_ip().to_owned()),
            mtls: proxy.has_workload_certificate(),
            proxy_matches: selectors.proxy_matches.iter().map(|m| envoy_filter::proxy_matches(m, proxy)).collect(),
        }
    }
}

/// Which kinds of a view's outbound resources a change may have touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub clusters: bool,
    pub listeners: bool,
    pub routes: bool,
}

impl Parts {
    pub const ALL: Parts = Parts { clusters: true, listeners: true, routes: true };
    pub const NONE: Parts = Parts { clusters: false, listeners: false, routes: false };

    pub fn any(self) -> bool {
        self.clusters || self.listeners || self.routes
    }

    /// Whether the SDS secrets are translated again. They are named by clusters (a
    /// DestinationRule's `credentialName`) and, at gateways, by listeners; a gateway's view is
    /// always translated whole ([`changed_parts`]), so they go with the clusters.
    pub fn secrets(self) -> bool {
        self.clusters
    }
}

/// The same Istio objects: shared (the registries reuse unchanged objects) or equal.
macro_rules! same {
    ($a:expr, $b:expr) => {
        $a.len() == $b.len()
            && $a
                .iter()
                .zip($b.iter())
                .all(|(x, y)| Arc::ptr_eq(x, y) || (x.metadata == y.metadata && x.spec == y.spec))
    };
}

/// The same registry values by key: shared or equal.
fn same_map<T: PartialEq>(a: &BTreeMap<String, Arc<T>>, b: &BTreeMap<String, Arc<T>>) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

/// What of a view's outbound config may differ between `before` and `after`, from what each
/// kind reads (keep in step with the translation modules):
/// - clusters: services, DestinationRules, PeerAuthentications, Sidecars, the mesh config, and
///   of the endpoints only what [`endpoints_reach_clusters`] names;
/// - routes: services, VirtualServices, DestinationRules (subsets), Sidecars, the mesh config;
/// - listeners: services, the VirtualServices with TCP or TLS routes, Sidecars, the mesh
///   config, WasmPlugins and their modules, DestinationRules when one has a `tunnel` (it goes
///   into TCP proxies), and in capture mode NONE the endpoints (the proxy's own inbound ports);
/// - all three: EnvoyFilters (their patches reach every kind).
///
/// Gateways and Secrets are read only by gateway proxies, which are translated again whole.
pub fn changed_parts(before: &Snapshot, after: &Snapshot, key: &ViewKey) -> Parts {
    // EnvoyFilters patch every kind.
    if key.node_type == NodeType::Router
        || before.mesh != after.mesh
        || !same!(before.sidecars, after.sidecars)
        || !same!(before.envoy_filters, after.envoy_filters)
    {
        return Parts::ALL;
    }
    let services = !same_map(&before.services, &after.services);
    let endpoints = !same_map(&before.endpoints, &after.endpoints);
    let virtual_services = !same!(before.virtual_services, after.virtual_services);
    // Only TCP and TLS routes become listener filter chains; HTTP routes go to RDS.
    let l4_virtual_services = virtual_services && {
        let l4 = |s: &Snapshot| -> Vec<Arc<VirtualService>> {
            s.virtual_services.iter().filter(|vs| !vs.spec.tcp.is_empty() || !vs.spec.tls.is_empty()).cloned().collect()
        };
        let (a, b) = (l4(before), l4(after));
        !same!(a, b)
    };
    let rules = !same!(before.destination_rules, after.destination_rules);
    // Auto mTLS towards a namespace follows its PeerAuthentication.
    let peer_authentications = !same!(before.peer_authentications, after.peer_authentications);
    // Access logs, metrics and tracing (listeners), and the tracing collector (a cluster).
    let telemetries = !same!(before.telemetries, after.telemetries);
    // Wasm filters go into the listeners' chains.
    let wasm = !same!(before.wasm_plugins, after.wasm_plugins) || before.wasm_modules != after.wasm_modules;
    // A sidecar's clusters name Secrets only through a rule with a workloadSelector.
    let credentials = before.secrets != after.secrets && {
        let selecting_rule_names_credential = |s: &Snapshot| {
            s.destination_rules.iter().any(|rule| rule.spec.workload_selector.is_some() && names_credential(&rule.spec))
        };
        selecting_rule_names_credential(before) || selecting_rule_names_credential(after)
    };
    let tunnels = rules && {
        let named = |s: &Snapshot| s.destination_rules.iter().any(|rule| tunnel::named_by(&rule.spec));
        named(before) || named(after)
    };
    Parts {
        clusters: services
            || (endpoints && endpoints_reach_clusters(before, after))
            || rules
            || peer_authentications
            || telemetries
            || credentials,
        routes: services || virtual_services || rules,
        listeners: services
            || l4_virtual_services
            || telemetries
            || wasm
            || tunnels
            || (endpoints && key.interception == InterceptionMode::None),
    }
}

/// Whether a DestinationRule's TLS settings name a Secret (`credentialName`) anywhere: the
/// rule's, its ports', or its subsets' (and their ports').
fn names_credential(rule: &rudder_config::networking::destination_rule::DestinationRuleSpec) -> bool {
    use rudder_config::networking::destination_rule::TrafficPolicy;
    fn in_policy(policy: &TrafficPolicy) -> bool {
        let names = |tls: Option<&rudder_config::networking::destination_rule::ClientTlsSettings>| {
            tls.is_some_and(|tls| !tls.credential_name.is_empty())
        };
        names(policy.tls.as_ref()) || policy.port_level_settings.iter().any(|port| names(port.tls.as_ref()))
    }
    rule.traffic_policy.as_ref().is_some_and(in_policy)
        || rule.subsets.iter().filter_map(|subset| subset.traffic_policy.as_ref()).any(in_policy)
}

/// Whether the endpoints that changed from `before` to `after` can change a cluster: DNS
/// clusters carry their service's endpoints inline, and ISTIO_MUTUAL clusters expect the
/// endpoints' service accounts as SANs. Everything else about an endpoint (address, labels,
/// health, locality, weight) travels in EDS only, so a pod coming, going or relabelled does
/// not translate clusters again.
fn endpoints_reach_clusters(before: &Snapshot, after: &Snapshot) -> bool {
    fn accounts(endpoints: Option<&Arc<Vec<Endpoint>>>) -> BTreeSet<(&str, &str)> {
        endpoints
            .into_iter()
            .flat_map(|list| list.iter())
            .filter(|e| !e.service_account.is_empty())
            .map(|e| (e.namespace.as_str(), e.service_account.as_str()))
            .collect()
    }
    let added = after.endpoints.keys().filter(|host| !before.endpoints.contains_key(*host));
    before.endpoints.keys().chain(added).any(|host| {
        let (old, new) = (before.endpoints.get(host), after.endpoints.get(host));
        if let (Some(a), Some(b)) = (old, new)
            && (Arc::ptr_eq(a, b) || a == b)
        {
            return false;
        }
        let inline = [before, after].iter().any(|s| {
            s.services
                .get(host)
                .is_none_or(|service| matches!(service.resolution, Resolution::Dns | Resolution::DnsRoundRobin))
        });
        inline || accounts(old) != accounts(new)
    })
}

/// The kinds of `proxy`'s outbound config named in `parts` (the others left empty), with the
/// EnvoyFilter patches that select it applied (context SIDECAR_OUTBOUND, or GATEWAY).
/// `memo` is the route memo of the same view's last translation, if any.
pub fn outbound_parts(
    snapshot: &Snapshot,
    proxy: &Proxy,
    parts: Parts,
    memo: Option<route::RouteReuse<'_>>,
) -> Resources {
    outbound_parts_as(snapshot, proxy, parts, memo, false)
}

/// [`outbound_parts`] as discovery serves it: the clusters and a sidecar's route
/// configurations encoded as they are built ([`cluster::outbound_served`],
/// [`route::outbound_served`]), unless something must read or change their messages after
/// translation (a gateway's SNI clusters, `credentialName`s, EnvoyFilter patches of clusters
/// or routes). The same config; only `Resources::encoded_clusters` and
/// `Resources::encoded_routes` tell the two apart.
pub fn outbound_parts_served(
    snapshot: &Snapshot,
    proxy: &Proxy,
    parts: Parts,
    memo: Option<route::RouteReuse<'_>>,
) -> Resources {
    outbound_parts_as(snapshot, proxy, parts, memo, true)
}

fn outbound_parts_as(
    snapshot: &Snapshot,
    proxy: &Proxy,
    parts: Parts,
    memo: Option<route::RouteReuse<'_>>,
    served: bool,
) -> Resources {
    let ctx = context::Context::new(snapshot, proxy);
    let router = proxy.node_type == NodeType::Router;
    let patches = envoy_filter::Patches::for_proxy(snapshot, proxy);
    let some_rule_names_a_secret = snapshot.destination_rules.iter().any(|rule| names_credential(&rule.spec));
    let (clusters, encoded_clusters, localities) = match parts.clusters {
        false => Default::default(),
        true if served
            && !router
            && !some_rule_names_a_secret
            && !patches.touch(rudder_config::networking::envoy_filter::ApplyTo::Cluster) =>
        {
            let served = cluster::outbound_served(&ctx);
            (served.inline, served.encoded, served.localities)
        }
        true => {
            let (clusters, localities) = cluster::outbound_with_localities(&ctx);
            (clusters, Vec::new(), localities)
        }
    };
    let mut resources = Resources {
        clusters: if router { gateway::with_sni_dnat_clusters(&ctx, clusters) } else { clusters },
        encoded_clusters,
        listeners: match (parts.listeners, router) {
            (false, _) => Vec::new(),
            (true, false) => listener::outbound(&ctx),
            (true, true) => gateway::listeners(&ctx),
        },
        routes: Vec::new(),
        encoded_routes: Vec::new(),
        secrets: Vec::new(),
        extension_configs: Vec::new(),
        localities,
        route_memo: RouteMemoSlot::default(),
    };
    let mut route_memo = None;
    match (parts.routes, router) {
        (false, _) => {}
        (true, false) if served && !patches.touch_routes() => {
            let (routes, memo) = route::outbound_served(&ctx, memo);
            resources.encoded_routes = routes;
            route_memo = Some(memo);
        }
        (true, false) => {
            let (routes, memo) = route::outbound_reusing(&ctx, memo);
            resources.routes = routes;
            route_memo = Some(memo);
        }
        (true, true) => resources.routes = gateway::routes(&ctx),
    }
    // Secrets go with the clusters and gateway servers that name them (see `Parts::secrets`).
    if parts.secrets() {
        if router {
            resources.secrets = gateway::secrets(&ctx);
        }
        // Reading the clusters' TLS contexts back is only worth it when some rule names a Secret.
        if some_rule_names_a_secret {
            resources.secrets.extend(credentials::for_clusters(&ctx, &resources.clusters));
            resources.secrets.sort_by(|a, b| a.name.cmp(&b.name));
            resources.secrets.dedup_by(|later, first| later.name == first.name);
        }
    }
    // A DestinationRule tunnel goes into the TCP proxies of its destination's clusters.
    if parts.listeners && snapshot.destination_rules.iter().any(|rule| tunnel::named_by(&rule.spec)) {
        tunnel::apply(&ctx, &mut resources.listeners);
    }
    if !patches.is_empty() {
        use rudder_config::networking::envoy_filter::PatchContext;
        let context = if router { PatchContext::Gateway } else { PatchContext::SidecarOutbound };
        let mut skipped = Vec::new();
        if parts.clusters {
            skipped.extend(patches.apply_clusters(context, &mut resources.clusters, true, &BTreeMap::new()));
        }
        if parts.listeners {
            skipped.extend(patches.apply_listeners(context, &mut resources.listeners, true));
        }
        if parts.routes {
            let port_map = if router { gateway::port_map(&ctx) } else { BTreeMap::new() };
            skipped.extend(patches.apply_routes(context, &mut resources.routes, &port_map));
        }
        if parts.listeners {
            resources.extension_configs = patches.extension_configs(&mut skipped);
        }
        warn_skipped(proxy, &skipped);
    }
    resources.route_memo = RouteMemoSlot(route_memo.map(Arc::new));
    resources
}

/// Logs the EnvoyFilter patches (or parts) translation left out for `proxy`: a warning the
/// first time this process sees a problem, then at debug level (translation runs for every
/// view at every push).
fn warn_skipped(proxy: &Proxy, skipped: &[envoy_filter::Skipped]) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for s in skipped {
        let line = s.to_string();
        let first = SEEN.lock().map(|mut seen| {
            if seen.len() > 10_000 {
                seen.clear();
            }
            seen.insert(line.clone())
        });
        if first.unwrap_or(true) {
            tracing::warn!(proxy = %proxy.id, "{line}; the rest of the config is served");
        } else {
            tracing::debug!(proxy = %proxy.id, "{line} (still)");
        }
    }
}

/// The outbound side of `proxy`'s config: everything it needs to reach services (for a
/// gateway: its Gateway servers' listeners, routes and credentials too).
pub fn outbound(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    outbound_parts(snapshot, proxy, Parts::ALL, None)
}

/// [`outbound`] as discovery serves it (see [`outbound_parts_served`]).
pub fn outbound_served(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    outbound_parts_served(snapshot, proxy, Parts::ALL, None)
}

/// The inbound side of `proxy`'s config: how traffic reaches its own workload. Gateways have
/// none: their workload is the proxy.
pub fn inbound(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    if proxy.node_type == NodeType::Router {
        return Resources::default();
    }
    let ctx = context::Context::new(snapshot, proxy);
    let mut resources =
        Resources { clusters: cluster::inbound(&ctx), listeners: listener::inbound(&ctx), ..Resources::default() };
    let patches = envoy_filter::Patches::for_proxy(snapshot, proxy);
    if !patches.is_empty() {
        use rudder_config::networking::envoy_filter::PatchContext;
        // The services each inbound cluster serves: those with an endpoint on this proxy's
        // address and that port.
        let mut hosts: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (host, _, endpoint) in snapshot.endpoints_at(proxy.primary_ip()) {
            hosts.entry(endpoint.port).or_default().push(host.clone());
        }
        let mut skipped = patches.apply_clusters(PatchContext::SidecarInbound, &mut resources.clusters, true, &hosts);
        skipped.extend(patches.apply_listeners(PatchContext::SidecarInbound, &mut resources.listeners, true));
        warn_skipped(proxy, &skipped);
    }
    resources
}

/// Whether `proxy`'s inbound config (see [`inbound`]) may differ between `before` and
/// `after`: [`inbound_inputs_changed`] (the same for every proxy) or [`own_endpoints_changed`].
pub fn inbound_changed(before: &Snapshot, after: &Snapshot, proxy: &Proxy) -> bool {
    proxy.node_type != NodeType::Router
        && (inbound_inputs_changed(before, after)
            || own_endpoints_changed(proxy, &endpoint_addresses_changed(before, after)))
}

/// Whether what every proxy's inbound config reads, besides its own endpoints, may differ:
/// services, the security, telemetry, Wasm and EnvoyFilter objects, Sidecars (ingress, and
/// which collectors the proxy sees), DestinationRules, Secrets and the mesh config. Never
/// VirtualServices or other workloads' endpoints: a route change or a pod elsewhere leaves
/// every proxy's inbound side as it was, and a push then skips translating it per proxy.
pub fn inbound_inputs_changed(before: &Snapshot, after: &Snapshot) -> bool {
    before.mesh != after.mesh
        || !same_map(&before.services, &after.services)
        || !same!(before.sidecars, after.sidecars)
        || !same!(before.peer_authentications, after.peer_authentications)
        || !same!(before.authorization_policies, after.authorization_policies)
        || !same!(before.request_authentications, after.request_authentications)
        || !same!(before.telemetries, after.telemetries)
        || !same!(before.wasm_plugins, after.wasm_plugins)
        || !same!(before.envoy_filters, after.envoy_filters)
        || !same!(before.destination_rules, after.destination_rules)
        || !same!(before.gateways, after.gateways)
        || before.jwks != after.jwks
        || before.wasm_modules != after.wasm_modules
        || before.secrets != after.secrets
}

/// The addresses whose endpoints differ between `before` and `after`, in any host: an
/// endpoint added, removed or changed there. Found once per push for every proxy (whose own
/// inbound side depends on the endpoints at its addresses); the registries share unchanged
/// lists between snapshots, so only the lists that changed are read.
pub fn endpoint_addresses_changed(before: &Snapshot, after: &Snapshot) -> BTreeSet<String> {
    fn by_address<'s>(snapshot: &'s Snapshot, host: &str) -> BTreeMap<&'s str, Vec<&'s Endpoint>> {
        let mut grouped: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
        for endpoint in snapshot.endpoints_of(host) {
            grouped.entry(endpoint.address.as_str()).or_default().push(endpoint);
        }
        grouped
    }
    let mut changed = BTreeSet::new();
    for host in changed_keys(&before.endpoints, &after.endpoints) {
        let (old, new) = (by_address(before, host), by_address(after, host));
        for address in old.keys().chain(new.keys()) {
            if old.get(address) != new.get(address) {
                changed.insert((*address).to_owned());
            }
        }
    }
    changed
}

/// The keys, in order, whose values differ between two maps (added, removed, or neither the
/// same `Arc` nor equal): [`key_changes`] with equality.
pub(crate) fn changed_keys<'m, K: Ord, V: PartialEq>(
    before: &'m BTreeMap<K, Arc<V>>,
    after: &'m BTreeMap<K, Arc<V>>,
) -> impl Iterator<Item = &'m K> {
    key_changes(before, after, PartialEq::eq).map(|(key, _)| key)
}

/// How a key's value differs between two key-ordered sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChange {
    Added,
    Updated,
    Removed,
}

/// The keys whose values differ between `before` and `after` (both in key order), with how,
/// found in one walk of both. `same` decides for two values of a key that are not the same
/// `Arc`: snapshots share the `Arc`s of what a change left alone, so most keys cost a pointer
/// comparison.
pub fn key_changes<'a, K: Ord, V: 'a>(
    before: impl IntoIterator<Item = (K, &'a Arc<V>)>,
    after: impl IntoIterator<Item = (K, &'a Arc<V>)>,
    same: impl Fn(&V, &V) -> bool,
) -> impl Iterator<Item = (K, KeyChange)> {
    let (mut old, mut new) = (before.into_iter().peekable(), after.into_iter().peekable());
    std::iter::from_fn(move || {
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            match order {
                std::cmp::Ordering::Less => return old.next().map(|(key, _)| (key, KeyChange::Removed)),
                std::cmp::Ordering::Greater => return new.next().map(|(key, _)| (key, KeyChange::Added)),
                std::cmp::Ordering::Equal => {
                    let (Some((key, a)), Some((_, b))) = (old.next(), new.next()) else { return None };
                    if !Arc::ptr_eq(a, b) && !same(a, b) {
                        return Some((key, KeyChange::Updated));
                    }
                }
            }
        }
    })
}

/// Whether the endpoints at `proxy`'s own addresses (its inbound ports) differ, given the
/// addresses whose endpoints changed ([`endpoint_addresses_changed`]): a lookup per address of
/// the proxy, at every push, for every stream.
pub fn own_endpoints_changed(proxy: &Proxy, changed_addresses: &BTreeSet<String>) -> bool {
    proxy.ip_addresses.iter().any(|ip| changed_addresses.contains(ip))
}

/// Outbound and inbound together, in push order within each type.
pub fn for_proxy(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    let mut all = outbound(snapshot, proxy);
    all.extend(inbound(snapshot, proxy));
    all
}

/// Every EDS ClusterLoadAssignment (one per EDS cluster of every service, subset and port),
/// sorted by cluster name, encoded. Proxy-independent.
pub fn endpoints(snapshot: &Snapshot) -> Vec<endpoint::EncodedAssignment> {
    endpoint::encoded_all(snapshot)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::kube::{KubeInputs, build_snapshot};
    use rudder_config::object::IstioObject;

    /// Added, removed and changed keys are found; a shared `Arc` and an equal copy are not.
    #[test]
    fn changed_keys_walks_both_maps_once() {
        let shared = Arc::new(1);
        let before: BTreeMap<&str, Arc<i32>> =
            [("a", shared.clone()), ("b", Arc::new(2)), ("c", Arc::new(3)), ("e", Arc::new(5))].into();
        let after: BTreeMap<&str, Arc<i32>> =
            [("a", shared), ("b", Arc::new(2)), ("c", Arc::new(30)), ("d", Arc::new(4))].into();
        assert_eq!(changed_keys(&before, &after).copied().collect::<Vec<_>>(), ["c", "d", "e"]);
        assert_eq!(changed_keys(&after, &before).copied().collect::<Vec<_>>(), ["c", "d", "e"]);
        assert_eq!(changed_keys(&before, &BTreeMap::new()).count(), 4);
        assert_eq!(changed_keys(&before, &before.clone()).count(), 0);
    }

    /// Two services; a VirtualService routing `role: canary` callers of `reviews` to v2; a
    /// Sidecar for `team: a` in `apps` hiding `ratings`; a DestinationRule for `tier: edge` in
    /// `apps` (ROUND_ROBIN for `reviews`).
    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: apps}
spec:
  hosts: [reviews.apps.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.10, labels: {version: v1}}, {address: 10.244.0.11, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: apps}
spec:
  hosts: [ratings.apps.svc.cluster.local]
  addresses: [10.96.0.11]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.12}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: apps}
spec:
  hosts: [reviews.apps.svc.cluster.local]
  http:
  - match: [{sourceLabels: {role: canary}}]
    route: [{destination: {host: reviews.apps.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: reviews.apps.svc.cluster.local, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: apps}
spec:
  host: reviews.apps.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-edge, namespace: apps}
spec:
  host: reviews.apps.svc.cluster.local
  workloadSelector: {matchLabels: {tier: edge}}
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: team-a, namespace: apps}
spec:
  workloadSelector: {labels: {team: a}}
  egress: [{hosts: ["./reviews.apps.svc.cluster.local"]}]
"#;

    fn snapshot() -> Snapshot {
        let loads = rudder_config::load::load_str("mesh.yaml", MESH).unwrap();
        assert!(loads.problems.is_empty(), "{:?}", loads.problems);
        let mut inputs = KubeInputs::default();
        for loaded in loads.objects {
            match loaded.object {
                IstioObject::ServiceEntry(o) => inputs.service_entries.push(Arc::new(*o)),
                IstioObject::VirtualService(o) => inputs.virtual_services.push(Arc::new(*o)),
                IstioObject::DestinationRule(o) => inputs.destination_rules.push(Arc::new(*o)),
                IstioObject::Sidecar(o) => inputs.sidecars.push(Arc::new(*o)),
                other => panic!("unexpected {}", other.kind()),
            }
        }
        build_snapshot(&inputs, &rudder_config::mesh::MeshConfig::default())
    }

    fn proxy(kind: &str, namespace: &str, labels: &[(&str, &str)]) -> Proxy {
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
        let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::Value::Object(labels))]);
        let id = format!("{kind}~10.244.1.9~pod.{namespace}~{namespace}.svc.cluster.local");
        Proxy::from_node(&id, &meta).unwrap()
    }

    /// Which endpoint lists differ, and whether a proxy's own endpoints are among the changes:
    /// only endpoints at the proxy's address count, whatever else changed in the list.
    #[test]
    fn own_endpoints_change_only_at_the_proxys_address() {
        const REVIEWS: &str = "reviews.apps.svc.cluster.local";
        const RATINGS: &str = "ratings.apps.svc.cluster.local";
        let before = snapshot();
        let at = |ip: &str| {
            Proxy::from_node(&format!("sidecar~{ip}~pod.apps~apps.svc.cluster.local"), &BTreeMap::new()).unwrap()
        };
        let edit = |host: &str, change: &dyn Fn(&mut Vec<Endpoint>)| {
            let mut after = before.clone();
            let mut list = after.endpoints[host].as_ref().clone();
            change(&mut list);
            after.endpoints.insert(host.to_owned(), Arc::new(list));
            after
        };
        let flip_version = |ip: &'static str| {
            move |list: &mut Vec<Endpoint>| {
                for e in list.iter_mut().filter(|e| e.address == ip) {
                    e.labels.insert("version".into(), "v3".into());
                }
            }
        };
        let ratings_at_10 = |list: &mut Vec<Endpoint>| {
            let mut extra = list[0].clone();
            extra.address = "10.244.0.10".into();
            list.push(extra);
        };
        let cases: [(&str, Snapshot, &[&str], [bool; 3]); 5] = [
            ("nothing changed", before.clone(), &[], [false; 3]),
            ("an equal list, not shared", edit(REVIEWS, &|_| {}), &[], [false; 3]),
            ("v2's labels", edit(REVIEWS, &flip_version("10.244.0.11")), &["10.244.0.11"], [false, true, false]),
            ("ratings' labels", edit(RATINGS, &flip_version("10.244.0.12")), &["10.244.0.12"], [false, false, true]),
            ("ratings also at .10", edit(RATINGS, &ratings_at_10), &["10.244.0.10"], [true, false, false]),
        ];
        for (case, after, addresses, own) in cases {
            let changed = endpoint_addresses_changed(&before, &after);
            assert_eq!(changed.iter().collect::<Vec<_>>(), addresses, "{case}");
            let by_proxy =
                ["10.244.0.10", "10.244.0.11", "10.244.0.12"].map(|ip| own_endpoints_changed(&at(ip), &changed));
            assert_eq!(by_proxy, own, "{case}");
        }
        let mut gone = before.clone();
        gone.endpoints.remove(RATINGS);
        let ratings_addresses = ["10.244.0.12"];
        assert_eq!(endpoint_addresses_changed(&before, &gone).iter().collect::<Vec<_>>(), ratings_addresses);
        assert_eq!(endpoint_addresses_changed(&gone, &before).iter().collect::<Vec<_>>(), ratings_addresses);
        assert!(own_endpoints_changed(&at("10.244.0.12"), &endpoint_addresses_changed(&before, &gone)));
    }

    #[test]
    fn workloads_share_a_view_unless_a_selector_tells_them_apart() {
        let snap = snapshot();
        let selectors = LabelSelectors::of(&snap);
        assert_eq!(selectors.len(), 3, "{selectors:?}");
        let label_sets: [&[(&str, &str)]; 8] = [
            &[],
            &[("app", "productpage"), ("pod-template-hash", "7d4f")],
            &[("app", "details"), ("version", "v1")],
            &[("role", "canary")],
            &[("role", "canary"), ("app", "x")],
            &[("team", "a")],
            &[("tier", "edge"), ("app", "y")],
            &[("team", "a"), ("tier", "edge"), ("role", "canary")],
        ];
        let mut proxies = Vec::new();
        for namespace in ["apps", "other"] {
            for labels in label_sets {
                proxies.push(proxy("sidecar", namespace, labels));
            }
        }
        let keys: Vec<ViewKey> = proxies.iter().map(|p| ViewKey::of(p, &selectors)).collect();
        // Equal keys must mean equal config; that is what sharing a view relies on.
        for (a, key_a) in proxies.iter().zip(&keys) {
            for (b, key_b) in proxies.iter().zip(&keys) {
                if key_a == key_b {
                    assert!(outbound(&snap, a) == outbound(&snap, b), "{key_a:?} is shared but the config differs");
                }
            }
        }
        let distinct =
            |ns: &str| keys.iter().filter(|k| k.namespace == ns).collect::<std::collections::BTreeSet<_>>().len();
        // apps: none, canary, team a, edge, all three; other: none, canary (the namespaced
        // selectors do not apply there).
        assert_eq!(distinct("apps"), 5);
        assert_eq!(distinct("other"), 2);
        // The selectors do change the config, so these proxies must not share.
        let plain = outbound(&snap, &proxies[0]);
        for labels_index in [3, 5, 6] {
            assert!(plain != outbound(&snap, &proxies[labels_index]), "{:?} changes nothing", label_sets[labels_index]);
        }
        // Gateways keep their labels in the key.
        let gateway = |app: &str| ViewKey::of(&proxy("router", "apps", &[("app", app)]), &selectors);
        assert_ne!(gateway("ingress"), gateway("egress"));
    }
}
