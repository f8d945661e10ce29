//! EnvoyFilter: the `configPatches` of the EnvoyFilters that select a proxy, applied to the
//! listeners, routes and clusters translation generated for it, the way Istio applies them.
//! Pure: resources and snapshot in, patched resources and the list of skipped patches out.
//!
//! - Selection ([`Patches::for_proxy`]): EnvoyFilters of the root namespace and of the proxy's
//!   namespace, by `workloadSelector` (all workloads without one) or, for gateways, `targetRefs`
//!   naming their Gateway API gateway; a patch's `match.proxy` (`proxyVersion` regex on
//!   `ISTIO_VERSION`, `metadata` on the node's string metadata) filters further.
//! - Order: `priority` (lower first), then root-namespace filters before the others, then
//!   creation time, then `name.namespace`; within a filter, the order of its patches. This is
//!   Istio's order (`PushContext.EnvoyFilters`).
//! - Application: per object kind as Istio walks them (listener → listener filters → filter
//!   chains → network filters → HTTP filters; route configuration → virtual hosts → routes;
//!   clusters), with its rules on which operation applies to which `applyTo` and its special
//!   cases (a MERGE into a filter, or a transport socket of the same name, merges inside the
//!   `typed_config`).
//! - Bad input never takes config down: a patch whose value does not decode (unknown `@type`,
//!   a value of the wrong type) or whose operation does not apply to its `applyTo` is skipped
//!   and reported as a [`Skipped`] naming the EnvoyFilter, the patch and the field; everything
//!   else is applied.

pub mod listener;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, TypedExtensionConfig};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use rudder_config::networking::envoy_filter::{
    ApplyTo, ClusterMatch, EnvoyConfigObjectMatch, EnvoyFilter, FilterClass, Operation, PatchContext, ProxyMatch,
    RouteAction,
};

use crate::model::{NodeType, Proxy, Snapshot, labels_match};
use value::{Failure, Value};

/// One config patch that applies to the proxy. Its value is decoded on first use, so patches
/// of other kinds or contexts cost nothing.
#[derive(Debug)]
pub struct Patch<'a> {
    /// `<namespace>/<name>` of its EnvoyFilter.
    pub filter: String,
    /// Its index in `configPatches`.
    pub index: usize,
    pub apply_to: ApplyTo,
    pub operation: Operation,
    /// `patch.filterClass`: where an ADD puts a filter relative to the generated ones.
    pub filter_class: FilterClass,
    pub context: PatchContext,
    pub matches: Option<&'a EnvoyConfigObjectMatch>,
    /// The value as written (`None` for REMOVE).
    pub json: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The value as the message `apply_to` names, once decoded.
    decoded: std::cell::OnceCell<Option<Result<Value, Failure>>>,
}

impl Patch<'_> {
    /// Whether the patch is for objects generated in `context`.
    fn in_context(&self, context: PatchContext) -> bool {
        self.context == PatchContext::Any || self.context == context
    }

    fn skipped(&self, field: impl Into<String>, reason: impl Into<String>) -> Skipped {
        Skipped { filter: self.filter.clone(), index: self.index, field: field.into(), reason: reason.into() }
    }

    /// The decoded value, or why the patch is skipped.
    fn value(&self) -> Result<&Value, Skipped> {
        let decoded = self.decoded.get_or_init(|| {
            let (json, type_name) = (self.json?, message_type(self.apply_to)?);
            Some(value::decode(type_name, json))
        });
        match decoded {
            Some(Ok(value)) => Ok(value),
            Some(Err(failure)) => Err(self.skipped(value_field(&failure.field), failure.reason.clone())),
            None => Err(self.skipped("patch.value", format!("value is required for operation {}", self.operation))),
        }
    }

    /// The value as `M`.
    fn message<M: prost::Message + Default>(&self) -> Result<M, Skipped> {
        let value = self.value()?;
        value::message(value).map_err(|f| self.skipped(value_field(&f.field), f.reason))
    }

    fn merge_into<M: prost::Message>(&self, dst: &mut M) -> Result<(), Skipped> {
        let value = self.value()?;
        value::merge_into(dst, value).map_err(|f| self.skipped(value_field(&f.field), f.reason))
    }
}

fn value_field(path: &str) -> String {
    if path.is_empty() { "patch.value".to_owned() } else { format!("patch.value.{path}") }
}

/// A patch left out, or a part of one: the EnvoyFilter, the patch index, the field and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub filter: String,
    pub index: usize,
    /// Below `spec.configPatches[index]`, e.g. `patch.value.typedConfig`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvoyFilter {}: spec.configPatches[{}].{}: {}", self.filter, self.index, self.field, self.reason)
    }
}

/// The operations Istio applies for each `applyTo`: of EXTENSION_CONFIG only ADD (served over
/// ECDS, [`Patches::extension_configs`]); BOOTSTRAP not at all (the agent writes the
/// bootstrap).
pub fn operation_applies(apply_to: ApplyTo, operation: Operation) -> bool {
    match apply_to {
        ApplyTo::ExtensionConfig => operation == Operation::Add,
        ApplyTo::Bootstrap => false,
        _ => rudder_config::networking::envoy_filter::operation_applies(apply_to, operation),
    }
}

pub use value::message_type;

/// Whether an EnvoyFilter selects `proxy` (namespace, workloadSelector, targetRefs).
pub fn selects(filter: &EnvoyFilter, proxy: &Proxy, root_namespace: &str) -> bool {
    let namespace = filter.metadata.namespace.as_deref().unwrap_or_default();
    if namespace != root_namespace && namespace != proxy.namespace {
        return false;
    }
    let spec = &filter.spec;
    if !spec.target_refs.is_empty() {
        // Only a Gateway API gateway of the filter's namespace, found by the label its
        // deployment carries, as for WasmPlugin.
        return proxy.node_type == NodeType::Router
            && namespace == proxy.namespace
            && spec.target_refs.iter().any(|t| {
                t.kind == "Gateway"
                    && t.group == "gateway.networking.k8s.io"
                    && proxy.labels.get(super::wasm::GATEWAY_NAME_LABEL) == Some(&t.name)
            });
    }
    spec.workload_selector.as_ref().is_none_or(|s| labels_match(&s.labels, &proxy.labels))
}

/// Whether a patch's `match.proxy` matches `proxy`. `proxyVersion` is an unanchored regex on
/// the proxy's `ISTIO_VERSION`; `metadata` values must equal the node's string metadata of
/// their keys (`NAMESPACE` as the proxy's namespace; see [`crate::model::NodeMetadata`] for
/// what is kept of the rest). A key the node did not send (or not as a string) never matches.
pub fn proxy_matches(m: &ProxyMatch, proxy: &Proxy) -> bool {
    if !m.proxy_version.is_empty() && !version_matches(&m.proxy_version, &proxy.istio_version) {
        return false;
    }
    m.metadata.iter().all(|(key, want)| {
        let have = match key.as_str() {
            "ISTIO_VERSION" => proxy.istio_version.as_str(),
            "NAMESPACE" => proxy.namespace.as_str(),
            "CLUSTER_ID" => proxy.cluster_id.as_str(),
            "ISTIO_REVISION" => proxy.revision.as_str(),
            crate::model::WORKLOAD_IDENTITY => proxy.workload_identity.as_str(),
            other => match proxy.metadata.get(other) {
                Some(value) => value,
                None => return false,
            },
        };
        have == want
    })
}

/// Whether `version` matches the regex `pattern` (none does when it does not compile).
/// Compiled regexes are kept: every view and every proxy's inbound side asks again.
fn version_matches(pattern: &str, version: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static COMPILED: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let Ok(mut compiled) = COMPILED.get_or_init(Default::default).lock() else {
        return regex::Regex::new(pattern).is_ok_and(|re| re.is_match(version));
    };
    if compiled.len() > 1_000 {
        compiled.clear();
    }
    let re = compiled.entry(pattern.to_owned()).or_insert_with(|| regex::Regex::new(pattern).ok());
    re.as_ref().is_some_and(|re| re.is_match(version))
}

/// The patches that apply to one proxy, in application order.
#[derive(Debug, Default)]
pub struct Patches<'a> {
    pub list: Vec<Patch<'a>>,
}

impl<'a> Patches<'a> {
    /// The patches of `snapshot`'s EnvoyFilters that select `proxy`, ordered as Istio orders
    /// them.
    pub fn for_proxy(snapshot: &'a Snapshot, proxy: &Proxy) -> Self {
        if snapshot.envoy_filters.is_empty() {
            return Self::default();
        }
        let root = snapshot.root_namespace();
        let mut filters: Vec<&'a Arc<EnvoyFilter>> =
            snapshot.envoy_filters.iter().filter(|f| selects(f, proxy, root)).collect();
        filters.sort_by(|a, b| {
            let key = |f: &EnvoyFilter| {
                let namespace = f.metadata.namespace.clone().unwrap_or_default();
                (
                    f.spec.priority.unwrap_or(0),
                    namespace != root,
                    f.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    format!("{}.{namespace}", f.metadata.name.as_deref().unwrap_or_default()),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut list = Vec::new();
        for filter in filters {
            let id = format!(
                "{}/{}",
                filter.metadata.namespace.as_deref().unwrap_or_default(),
                filter.metadata.name.as_deref().unwrap_or_default()
            );
            for (index, patch) in filter.spec.config_patches.iter().enumerate() {
                let matches = patch.match_.as_ref();
                if let Some(m) = matches.and_then(|m| m.proxy.as_ref())
                    && !proxy_matches(m, proxy)
                {
                    continue;
                }
                // Waypoint matches are for ambient waypoints, which Rudder does not run.
                if matches.is_some_and(|m| m.waypoint.is_some()) {
                    continue;
                }
                let apply_to = patch.apply_to.unwrap_or_default();
                let operation = patch.patch.as_ref().and_then(|p| p.operation).unwrap_or_default();
                let filter_class = patch.patch.as_ref().and_then(|p| p.filter_class).unwrap_or_default();
                let json = patch.patch.as_ref().and_then(|p| p.value.as_ref()).map(|v| &v.0);
                list.push(Patch {
                    filter: id.clone(),
                    index,
                    apply_to,
                    operation,
                    filter_class,
                    context: matches.and_then(|m| m.context).unwrap_or_default(),
                    matches,
                    json: json.filter(|_| operation != Operation::Remove),
                    decoded: std::cell::OnceCell::new(),
                });
            }
        }
        Self { list }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether some patch applies to objects of this kind (valid or not: an invalid one is
    /// reported when the kind is patched).
    pub fn touch(&self, apply_to: ApplyTo) -> bool {
        self.list.iter().any(|p| p.apply_to == apply_to)
    }

    /// Whether any patch applies to route configurations, their virtual hosts or routes.
    pub fn touch_routes(&self) -> bool {
        [ApplyTo::RouteConfiguration, ApplyTo::VirtualHost, ApplyTo::HttpRoute].into_iter().any(|kind| self.touch(kind))
    }

    /// The extension configs the EXTENSION_CONFIG patches ADD, sorted by name: what ECDS serves
    /// the proxy. As in Istio only ADD adds (validation warns of the other operations), the
    /// patch context is not read (an extension config belongs to no listener), and a filter
    /// reaches one only by naming it in `config_discovery`. A name added twice keeps its first,
    /// in patch order.
    pub fn extension_configs(&self, skipped: &mut Vec<Skipped>) -> Vec<TypedExtensionConfig> {
        let mut added: BTreeMap<String, TypedExtensionConfig> = BTreeMap::new();
        for patch in self.list.iter().filter(|p| p.apply_to == ApplyTo::ExtensionConfig) {
            if patch.operation != Operation::Add {
                skipped.push(patch.skipped(
                    "patch.operation",
                    format!("operation {} does not apply to applyTo EXTENSION_CONFIG (only ADD does)", patch.operation),
                ));
                continue;
            }
            let config = match patch.message::<TypedExtensionConfig>() {
                Ok(config) => config,
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            };
            if config.name.is_empty() {
                skipped
                    .push(patch.skipped("patch.value.name", "an extension config is served by name; name is required"));
            } else if config.typed_config.is_none() {
                skipped.push(patch.skipped("patch.value.typed_config", "typed_config is required"));
            } else if added.contains_key(&config.name) {
                skipped.push(patch.skipped(
                    "patch.value.name",
                    format!("extension config {:?} was added by an earlier patch, which is served", config.name),
                ));
            } else {
                added.insert(config.name.clone(), config);
            }
        }
        added.into_values().collect()
    }

    /// The patches of `apply_to` for objects generated in `context`.
    fn of(&self, apply_to: ApplyTo, context: PatchContext) -> impl Iterator<Item = &Patch<'a>> {
        self.list.iter().filter(move |p| p.apply_to == apply_to && p.in_context(context))
    }

    /// The patches of these kinds that cannot apply at all (an operation the kind does not
    /// take, a value that does not decode), reported once; and the unknown fields dropped from
    /// the values of the others. `usable` is whether a patch is kept.
    fn check(&self, kinds: &[ApplyTo], context: PatchContext, skipped: &mut Vec<Skipped>) -> Vec<bool> {
        self.list
            .iter()
            .map(|p| {
                if !kinds.contains(&p.apply_to) || !p.in_context(context) {
                    return false;
                }
                if !operation_applies(p.apply_to, p.operation) {
                    skipped.push(p.skipped(
                        "patch.operation",
                        format!("operation {} does not apply to applyTo {}", p.operation, p.apply_to),
                    ));
                    return false;
                }
                if p.operation == Operation::Remove {
                    return true;
                }
                match p.value() {
                    Ok(value) => {
                        if let Some(ignored) = &value.ignored {
                            skipped.push(p.skipped(
                                value_field(&ignored.field),
                                format!("ignored (the rest of the patch applies): {}", ignored.reason),
                            ));
                        }
                        true
                    }
                    Err(why) => {
                        skipped.push(why);
                        false
                    }
                }
            })
            .collect()
    }

    /// The usable patches among `kinds` in `context`, as a filtered set.
    fn usable(&self, kinds: &[ApplyTo], context: PatchContext, skipped: &mut Vec<Skipped>) -> Patches<'a> {
        let keep = self.check(kinds, context, skipped);
        Patches {
            list: self
                .list
                .iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|(p, _)| Patch {
                    filter: p.filter.clone(),
                    index: p.index,
                    apply_to: p.apply_to,
                    operation: p.operation,
                    filter_class: p.filter_class,
                    context: p.context,
                    matches: p.matches,
                    json: p.json,
                    decoded: p.decoded.clone(),
                })
                .collect(),
        }
    }

    /// Applies the CLUSTER patches for `context` to `clusters`; `adds` says whether ADDs go
    /// here (Istio adds a cluster with context ANY only to sidecar outbound and gateway sets).
    /// `inbound_hosts` names the services an `inbound|<port>||` cluster serves, by port, for
    /// `match.cluster.service`.
    pub fn apply_clusters(
        &self,
        context: PatchContext,
        clusters: &mut Vec<Cluster>,
        adds: bool,
        inbound_hosts: &BTreeMap<u32, Vec<String>>,
    ) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        let patches = self.usable(&[ApplyTo::Cluster], context, &mut skipped);
        if patches.is_empty() {
            return skipped;
        }
        clusters.retain_mut(|cluster| {
            for p in patches.of(ApplyTo::Cluster, context) {
                if !cluster_matches(cluster, p.matches.and_then(|m| m.cluster.as_ref()), inbound_hosts) {
                    continue;
                }
                match p.operation {
                    Operation::Remove => return false,
                    Operation::Merge => {
                        if let Err(why) = merge_cluster(cluster, p) {
                            skipped.push(why);
                        }
                    }
                    _ => {}
                }
            }
            true
        });
        if adds {
            for p in patches.of(ApplyTo::Cluster, context) {
                if p.operation != Operation::Add
                    || (p.context == PatchContext::Any
                        && !matches!(context, PatchContext::SidecarOutbound | PatchContext::Gateway))
                {
                    continue;
                }
                match p.message::<Cluster>() {
                    Ok(cluster) => clusters.push(cluster),
                    Err(why) => skipped.push(why),
                }
            }
        }
        finish(skipped)
    }

    /// Applies the ROUTE_CONFIGURATION, VIRTUAL_HOST and HTTP_ROUTE patches for `context`.
    /// `port_map` maps a gateway's route port (the port it listens on) to the server ports
    /// that reach it, so `portNumber` may name either.
    pub fn apply_routes(
        &self,
        context: PatchContext,
        routes: &mut [RouteConfiguration],
        port_map: &BTreeMap<u32, Vec<u32>>,
    ) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        let patches = self.usable(
            &[ApplyTo::RouteConfiguration, ApplyTo::VirtualHost, ApplyTo::HttpRoute],
            context,
            &mut skipped,
        );
        if patches.is_empty() {
            return skipped;
        }
        for rc in routes.iter_mut() {
            patches.patch_route_configuration(context, rc, port_map, &mut skipped);
        }
        finish(skipped)
    }

    fn patch_route_configuration(
        &self,
        context: PatchContext,
        rc: &mut RouteConfiguration,
        port_map: &BTreeMap<u32, Vec<u32>>,
        skipped: &mut Vec<Skipped>,
    ) {
        let rc_match = |p: &Patch<'_>, rc: &RouteConfiguration| route_configuration_matches(context, rc, p, port_map);
        for p in self.of(ApplyTo::RouteConfiguration, context) {
            if p.operation == Operation::Merge
                && rc_match(p, rc)
                && let Err(why) = p.merge_into(rc)
            {
                skipped.push(why);
            }
        }
        // Virtual hosts: removes, merges and replaces, then the routes of each, then adds.
        let mut hosts = std::mem::take(&mut rc.virtual_hosts);
        hosts.retain_mut(|vh| {
            for p in self.of(ApplyTo::VirtualHost, context) {
                if !rc_match(p, rc) || !virtual_host_matches(vh, p) {
                    continue;
                }
                match p.operation {
                    Operation::Remove => return false,
                    Operation::Merge => {
                        if let Err(why) = p.merge_into(vh) {
                            skipped.push(why);
                        }
                    }
                    Operation::Replace => match p.message::<VirtualHost>() {
                        Ok(new) => *vh = new,
                        Err(why) => skipped.push(why),
                    },
                    _ => {}
                }
            }
            self.patch_routes(context, rc, vh, port_map, skipped);
            true
        });
        for p in self.of(ApplyTo::VirtualHost, context) {
            if p.operation == Operation::Add && rc_match(p, rc) {
                match p.message::<VirtualHost>() {
                    Ok(new) => hosts.push(new),
                    Err(why) => skipped.push(why),
                }
            }
        }
        rc.virtual_hosts = hosts;
    }

    fn patch_routes(
        &self,
        context: PatchContext,
        rc: &RouteConfiguration,
        vh: &mut VirtualHost,
        port_map: &BTreeMap<u32, Vec<u32>>,
        skipped: &mut Vec<Skipped>,
    ) {
        // The host's routes are changed while it is matched against: match a copy of the rest.
        let host = VirtualHost { name: vh.name.clone(), domains: vh.domains.clone(), ..Default::default() };
        let applies_here =
            |p: &Patch<'_>| route_configuration_matches(context, rc, p, port_map) && virtual_host_matches(&host, p);
        vh.routes.retain_mut(|route| {
            for p in self.of(ApplyTo::HttpRoute, context) {
                if !applies_here(p) || !route_matches(route, p) {
                    continue;
                }
                match p.operation {
                    Operation::Remove => return false,
                    Operation::Merge => {
                        if let Err(why) = p.merge_into(route) {
                            skipped.push(why);
                        }
                    }
                    _ => {}
                }
            }
            true
        });
        for p in self.of(ApplyTo::HttpRoute, context) {
            if !applies_here(p)
                || !matches!(
                    p.operation,
                    Operation::Add | Operation::InsertBefore | Operation::InsertAfter | Operation::InsertFirst
                )
            {
                continue;
            }
            let new = match p.message::<Route>() {
                Ok(new) => new,
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            };
            let has_route_match = p.route_match().is_some();
            let found = vh.routes.iter().position(|r| route_matches(r, p));
            match p.operation {
                Operation::Add => vh.routes.push(new),
                Operation::InsertAfter if !has_route_match => vh.routes.push(new),
                Operation::InsertBefore | Operation::InsertFirst if !has_route_match => vh.routes.insert(0, new),
                Operation::InsertAfter => {
                    if let Some(i) = found {
                        vh.routes.insert(i + 1, new);
                    }
                }
                Operation::InsertBefore => {
                    if let Some(i) = found {
                        vh.routes.insert(i, new);
                    }
                }
                Operation::InsertFirst if found.is_some() => vh.routes.insert(0, new),
                _ => {}
            }
        }
    }
}

impl Patch<'_> {
    fn route_configuration_match(&self) -> Option<&rudder_config::networking::envoy_filter::RouteConfigurationMatch> {
        self.matches.and_then(|m| m.route_configuration.as_ref())
    }

    fn route_match(&self) -> Option<&rudder_config::networking::envoy_filter::RouteMatch> {
        self.route_configuration_match().and_then(|m| m.vhost.as_ref()).and_then(|v| v.route.as_ref())
    }
}

/// Sorted and without repeats (one patch may fail the same way on many objects).
fn finish(mut skipped: Vec<Skipped>) -> Vec<Skipped> {
    skipped.sort();
    skipped.dedup();
    skipped
}

/// `outbound|<port>|<subset>|<host>` or `inbound|<port>||`: direction, port, subset, host.
fn parse_cluster_name(name: &str) -> Option<(&str, u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    let direction = parts.next()?;
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    matches!(direction, "outbound" | "inbound").then_some((direction, port, subset, host))
}

/// Istio's cluster match: `name` alone when given, else `portNumber`, `service` (the host of
/// an `outbound|…` name; for an `inbound|<port>||` cluster, any service it serves, from
/// `inbound_hosts`) and `subset` from the name.
pub fn cluster_matches(
    cluster: &Cluster,
    m: Option<&ClusterMatch>,
    inbound_hosts: &BTreeMap<u32, Vec<String>>,
) -> bool {
    let Some(m) = m else { return true };
    if !m.name.is_empty() {
        return m.name == cluster.name;
    }
    let (direction, port, subset, host) = parse_cluster_name(&cluster.name).unwrap_or(("", 0, "", ""));
    let service = || match direction {
        "inbound" => inbound_hosts.get(&port).is_some_and(|hosts| hosts.contains(&m.service)),
        _ => m.service == host,
    };
    (m.subset.is_empty() || m.subset == subset)
        && (m.service.is_empty() || service())
        && m.port_number.is_none_or(|want| want == 0 || want == port)
}

/// A MERGE into a cluster. A transport socket in the patch merges inside the cluster's socket
/// of the same name (or a `transport_socket_matches` entry of that name; without one, that
/// part is dropped as Istio does, since a cluster cannot have both); a socket of another name,
/// or none, is replaced. The rest of the patch merges as protobuf.
fn merge_cluster(cluster: &mut Cluster, p: &Patch<'_>) -> Result<(), Skipped> {
    let mut patch: Cluster = p.message()?;
    if let Some(socket) = patch.transport_socket.take() {
        if !cluster.transport_socket_matches.is_empty() {
            if let Some(existing) = cluster
                .transport_socket_matches
                .iter_mut()
                .filter_map(|m| m.transport_socket.as_mut())
                .find(|s| s.name == socket.name)
            {
                merge_socket(existing, &socket).map_err(|f| p.skipped("patch.value.transportSocket", f.reason))?;
            }
        } else {
            match cluster.transport_socket.as_mut() {
                Some(existing) if existing.name == socket.name => {
                    merge_socket(existing, &socket).map_err(|f| p.skipped("patch.value.transportSocket", f.reason))?
                }
                _ => cluster.transport_socket = Some(socket),
            }
        }
    }
    use prost::Message;
    cluster
        .merge(patch.encode_to_vec().as_slice())
        .map_err(|e| p.skipped("patch.value", format!("does not merge: {e}")))
}

/// Merges a patch's transport socket into one of the same name, inside its typed config.
pub(crate) fn merge_socket(existing: &mut TransportSocket, patch: &TransportSocket) -> Result<(), Failure> {
    match (&mut existing.config_type, &patch.config_type) {
        (Some(SocketConfig::TypedConfig(dst)), Some(SocketConfig::TypedConfig(src))) => value::merge_any(dst, src),
        (_, Some(config)) => {
            existing.config_type = Some(config.clone());
            Ok(())
        }
        (_, None) => Ok(()),
    }
}

/// The port of a route configuration named by the proxy's translation: `"<port>"` or
/// `<host>:<port>` (sidecars), `http.<port>` / `https.<port>.…` (gateways),
/// `inbound|<port>||` (inbound).
fn route_port(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("inbound|") {
        return rest.split('|').next()?.parse().ok();
    }
    if let Some(rest) = name.strip_prefix("http.").or_else(|| name.strip_prefix("https.")) {
        return rest.split('.').next()?.parse().ok();
    }
    name.rsplit(':').next()?.parse().ok()
}

fn route_configuration_matches(
    context: PatchContext,
    rc: &RouteConfiguration,
    p: &Patch<'_>,
    port_map: &BTreeMap<u32, Vec<u32>>,
) -> bool {
    let Some(m) = p.route_configuration_match() else { return true };
    if !m.name.is_empty() && m.name != rc.name {
        return false;
    }
    let port = route_port(&rc.name).unwrap_or(0);
    if context != PatchContext::Gateway {
        return m.port_number.is_none_or(|want| want == 0 || want == port);
    }
    // Gateways: `https.<port>.<port name>.<gateway name>.<namespace>`.
    let parts: Vec<&str> = rc.name.split('.').collect();
    let https = parts.len() >= 5 && parts[0] == "https";
    if let Some(want) = m.port_number.filter(|p| *p != 0) {
        let by_map = port_map.get(&port).is_some_and(|ports| ports.contains(&want));
        if want != port && !by_map {
            return false;
        }
    }
    if !(m.port_name.is_empty() || (https && parts[2] == m.port_name)) {
        return false;
    }
    if !m.gateway.is_empty() {
        let gateway = https.then(|| format!("{}/{}", parts[parts.len() - 1], parts[3..parts.len() - 1].join(".")));
        if gateway.as_deref() != Some(m.gateway.as_str()) {
            return false;
        }
    }
    true
}

/// `vhost.name` names the host; `vhost.domainName` must be one of its domains.
fn virtual_host_matches(vh: &VirtualHost, p: &Patch<'_>) -> bool {
    match p.route_configuration_match().and_then(|m| m.vhost.as_ref()) {
        None => true,
        Some(v) => {
            (v.name.is_empty() || v.name == vh.name)
                && (v.domain_name.is_empty() || vh.domains.contains(&v.domain_name))
        }
    }
}

fn route_matches(route: &Route, p: &Patch<'_>) -> bool {
    let Some(m) = p.route_match() else { return true };
    if !m.name.is_empty() && m.name != route.name {
        return false;
    }
    match m.action.unwrap_or_default() {
        RouteAction::Any => true,
        RouteAction::Route => matches!(route.action, Some(Action::Route(_))),
        RouteAction::Redirect => matches!(route.action, Some(Action::Redirect(_))),
        RouteAction::DirectResponse => matches!(route.action, Some(Action::DirectResponse(_))),
    }
}

#[cfg(test)]
mod tests;
