//! Outbound HTTP route configurations: one RDS `RouteConfiguration` named `"<port>"` per
//! outbound HTTP (or sniffed) port, holding a virtual host per service on that port, the
//! routes of the mesh VirtualService that covers it (or a single `default` route), and a
//! last catch-all virtual host for traffic to unknown hosts.
//!
//! [`http_routes`] turns one VirtualService's `http` rules into Envoy routes for one listener
//! port; gateways reuse it through [`http_routes_for_gateways`].
//!
//! Behaviour follows istiod (`pilot/pkg/networking/core/httproute.go`, `route/route.go`,
//! `route/retry/retry.go`). Deliberate differences:
//! - a destination without a port takes the service's only port even when that service is
//!   not on the listener port (istiod only looks at services on the listener port there);
//! - a VirtualService host is "outside the registry" when it matches no visible service at
//!   all (istiod: no service on port 80), so registry hosts never appear on port 80 by accident;
//! - the `default` route of a consistently hashed service drops the previous-hosts retry
//!   predicate, as VirtualService routes do.

use foldhash::{HashMap as FastMap, HashSet as FastSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
};
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryBackOff, RetryHostPredicate, RetryPriority};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, HostRewriteSpecifier, RequestMirrorPolicy, hash_policy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher,
    retry_policy, route,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, RegexMatchAndSubstitute, RegexMatcher, StringMatcher, ValueMatcher,
    list_matcher, metadata_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use prost::bytes::Bytes;
use rudder_config::common::{Duration as IstioDuration, StringMatch};
use rudder_config::networking::destination_rule::ConsistentHashLb;
use rudder_config::networking::virtual_service::{
    CorsPolicy, Destination, Headers, HttpBody, HttpDirectResponse, HttpFaultInjection, HttpMatchRequest, HttpRedirect,
    HttpRetry, HttpRoute, HttpRouteDestination, Percent, RedirectPortSelection, UnmatchedPreflights,
};
use rudder_config::networking::{DestinationRule, VirtualService};

use super::context::{ConfigMetadata, Context, host_matches, outbound_cluster_name, resolve_host};
use crate::model::{Resolution, Service, labels_match};

/// Name of the route a service without a VirtualService gets.
pub const DEFAULT_ROUTE_NAME: &str = "default";
/// Catch-all virtual host (and route) for ALLOW_ANY.
pub const ALLOW_ANY: &str = "allow_any";
/// Catch-all virtual host (and route) for REGISTRY_ONLY.
pub const BLOCK_ALL: &str = "block_all";
/// HTTP filter names the listener builder must use, since per-route config is keyed by them.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// The gateway name that means "sidecars".
pub const MESH_GATEWAY: &str = "mesh";
/// Istio raises Envoy's 4 KiB direct-response limit to what its validation allows.
pub const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;
/// Istio's default `retryOn` (503 left out since Istio 1.24).
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_CLAIMS_PREFIX: &str = "@request.auth.claims";
/// Non-registry VirtualService hosts get virtual hosts on this port (istiod's long-standing rule).
const NON_REGISTRY_HOST_PORT: u32 = 80;

/// One RouteConfiguration per outbound HTTP port, sorted by port.
pub fn outbound(ctx: &Context<'_>) -> Vec<RouteConfiguration> {
    outbound_reusing(ctx, None).0
}

/// [`outbound`], taking each VirtualService's routes from `previous` (the same view's last
/// translation) where they cannot have changed, and returning the memo of this translation.
pub fn outbound_reusing(ctx: &Context<'_>, previous: Option<RouteReuse<'_>>) -> (Vec<RouteConfiguration>, RouteMemo) {
    outbound_as::<Vec<Route>>(ctx, previous)
}

/// [`outbound_reusing`] as discovery serves it: each route configuration encoded as it is
/// built, by name, in the same order. No message of a whole configuration is held: each
/// virtual host is built, encoded into its configuration and dropped, and a VirtualService's
/// routes are encoded once per port and copied into every virtual host that takes them.
/// Holding the 1,000 × 4 benchmark view's routes as messages cost ~25 ms to allocate and drop
/// alone (`floor:` rows of the `translate` bench).
pub fn outbound_served(ctx: &Context<'_>, previous: Option<RouteReuse<'_>>) -> (Vec<(String, Bytes)>, RouteMemo) {
    outbound_as::<EncodedRoutes>(ctx, previous)
}

fn outbound_as<R: RouteList>(ctx: &Context<'_>, previous: Option<RouteReuse<'_>>) -> (Vec<R::Config>, RouteMemo) {
    let services: Vec<&Arc<Service>> = ctx.services().collect();
    let hostnames: FastSet<&str> = services.iter().map(|s| s.hostname.as_str()).collect();
    let virtual_services: Vec<MeshVirtualService<'_>> =
        ctx.mesh_virtual_services().map(|vs| MeshVirtualService::new(vs, &services, &hostnames)).collect();
    let owners = Owners::new(&virtual_services);

    let mut ports: BTreeSet<u32> = services
        .iter()
        .flat_map(|s| s.ports.iter().filter(|p| ctx.port_visible(s, p.port)))
        .filter(|p| {
            let protocol = ctx.outbound_protocol(p);
            protocol.is_http() || protocol.is_auto()
        })
        .map(|p| p.port)
        .collect();
    if virtual_services.iter().any(|vs| !vs.non_registry_hosts.is_empty()) {
        ports.insert(NON_REGISTRY_HOST_PORT);
    }
    let inputs = MemoInputs::of(ctx);
    let reusable = previous.filter(|previous| previous.memo.inputs == inputs);
    let mut memo = RouteMemo { inputs, routes: FastMap::default(), reused: 0 };
    let configs = ports
        .into_iter()
        .map(|port| route_configuration::<R>(ctx, port, &services, &virtual_services, &owners, reusable, &mut memo))
        .collect();
    (configs, memo)
}

/// The routes each VirtualService gave one view's last route translation, by port. Routes
/// read, besides their VirtualService, the visible services, the DestinationRules (hash
/// policies), the Sidecar scope and the mesh config (default retries): while those are the
/// same objects or equal ones, the same VirtualService object gives the same routes, so a VirtualService
/// change translates only the VirtualServices that changed (one of a thousand, typically).
/// A VirtualService that delegates reads its delegates too, and is never taken from a memo.
///
/// The routes are kept encoded (the `routes` fields of a virtual host): discovery serves route
/// configurations as bytes and splices them in as they are; the message path decodes them.
/// Being the memo's own, they stay right when EnvoyFilters patch the view's copy.
#[derive(Debug, Default)]
pub struct RouteMemo {
    inputs: MemoInputs,
    /// (the VirtualService's address, port) → its routes on that port.
    routes: FastMap<(usize, u32), MemoRoutes>,
    /// How many VirtualServices' routes this translation took from the previous one.
    reused: usize,
}

/// A VirtualService (held, so its address is not reused while the memo names it) and the
/// routes it gave on one port, encoded as a virtual host's `routes` fields.
#[derive(Debug)]
struct MemoRoutes {
    vs: Arc<VirtualService>,
    encoded: Bytes,
}

impl RouteMemo {
    fn keep(&mut self, vs: &Arc<VirtualService>, port: u32, encoded: Bytes) {
        self.routes.insert((Arc::as_ptr(vs) as usize, port), MemoRoutes { vs: vs.clone(), encoded });
    }
}

/// A view's route memo: what the next route translation of the view can reuse.
#[derive(Clone, Copy, Debug)]
pub struct RouteReuse<'a> {
    memo: &'a RouteMemo,
}

impl<'a> RouteReuse<'a> {
    pub fn new(memo: &'a RouteMemo) -> Self {
        Self { memo }
    }

    /// How many VirtualServices' routes the translation that made the memo took from its own
    /// previous one.
    pub fn reused(&self) -> usize {
        self.memo.reused
    }

    fn reuse(&self, vs: &Arc<VirtualService>, port: u32) -> Option<&'a Bytes> {
        let kept = self.memo.routes.get(&(Arc::as_ptr(vs) as usize, port))?;
        Arc::ptr_eq(&kept.vs, vs).then_some(&kept.encoded)
    }
}

/// What a route configuration's virtual hosts carry their routes as while it is built:
/// messages (`Vec<Route>`, for [`outbound`]) or their encoding ([`EncodedRoutes`], for
/// [`outbound_served`]).
trait RouteList: Clone + Default {
    /// A whole route configuration.
    type Config;
    /// The routes of `vs` on `port`; with `memo`, also their encoding for the memo.
    fn of_virtual_service(ctx: &Context<'_>, vs: &VirtualService, port: u32, memo: bool) -> (Self, Option<Bytes>);
    /// A service's default route.
    fn default_route(route: Route) -> Self;
    /// Routes a memo kept.
    fn kept(encoded: &Bytes) -> Option<Self>;
    fn is_empty(&self) -> bool;
    /// `header` (a configuration without virtual hosts) with `hosts` (each without routes, and
    /// the routes it takes), then `catch_all`.
    fn configuration(
        header: RouteConfiguration,
        hosts: Vec<(VirtualHost, Self)>,
        catch_all: VirtualHost,
    ) -> Self::Config;
}

impl RouteList for Vec<Route> {
    type Config = RouteConfiguration;

    fn of_virtual_service(ctx: &Context<'_>, vs: &VirtualService, port: u32, memo: bool) -> (Self, Option<Bytes>) {
        let mut routes = http_routes(ctx, vs, port);
        let encoded = memo.then(|| encode_routes(&mut routes, None));
        (routes, encoded)
    }

    fn default_route(route: Route) -> Self {
        vec![route]
    }

    fn kept(encoded: &Bytes) -> Option<Self> {
        VirtualHost::decode(encoded.as_ref()).ok().map(|host| host.routes)
    }

    fn is_empty(&self) -> bool {
        <[Route]>::is_empty(self)
    }

    fn configuration(
        mut header: RouteConfiguration,
        hosts: Vec<(VirtualHost, Self)>,
        catch_all: VirtualHost,
    ) -> RouteConfiguration {
        header.virtual_hosts = hosts
            .into_iter()
            .map(|(host, routes)| VirtualHost { routes, ..host })
            .chain(std::iter::once(catch_all))
            .collect();
        header
    }
}

/// Routes encoded as a virtual host's `routes` fields ([`encode_routes`]): a virtual host is
/// its other fields followed by these bytes.
#[derive(Clone, Debug, Default)]
struct EncodedRoutes(Bytes);

impl RouteList for EncodedRoutes {
    type Config = (String, Bytes);

    fn of_virtual_service(ctx: &Context<'_>, vs: &VirtualService, port: u32, memo: bool) -> (Self, Option<Bytes>) {
        // A delegating VirtualService's routes carry their delegates' metadata in their
        // messages; the others all carry `vs`'s, written once per route into the encoding.
        let (mut routes, metadata) = if delegates(vs) {
            (http_routes(ctx, vs, port), None)
        } else {
            let routes = rule_routes(ctx, vs, port, &[MESH_GATEWAY], MetadataIn::Encoding);
            (routes, Some(config_metadata_of(vs).field(ROUTE_METADATA)))
        };
        let encoded = encode_routes(&mut routes, metadata.as_deref());
        (Self(encoded.clone()), memo.then_some(encoded))
    }

    fn default_route(mut route: Route) -> Self {
        Self(encode_routes(std::slice::from_mut(&mut route), None))
    }

    fn kept(encoded: &Bytes) -> Option<Self> {
        Some(Self(encoded.clone()))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn configuration(
        header: RouteConfiguration,
        hosts: Vec<(VirtualHost, Self)>,
        catch_all: VirtualHost,
    ) -> Self::Config {
        use crate::protowire::{delimited_len, put_delimited_header, put_message_fields};
        const VIRTUAL_HOSTS: u32 = 2;
        let host_lens: Vec<usize> = hosts.iter().map(|(host, routes)| host.encoded_len() + routes.0.len()).collect();
        let len = header.encoded_len()
            + host_lens.iter().map(|len| delimited_len(VIRTUAL_HOSTS, *len)).sum::<usize>()
            + delimited_len(VIRTUAL_HOSTS, catch_all.encoded_len());
        let mut out = Vec::with_capacity(len);
        put_message_fields(&header, &mut out);
        for ((host, routes), host_len) in hosts.iter().zip(host_lens) {
            put_delimited_header(VIRTUAL_HOSTS, host_len, &mut out);
            put_message_fields(host, &mut out);
            out.extend_from_slice(&routes.0);
        }
        put_delimited_header(VIRTUAL_HOSTS, catch_all.encoded_len(), &mut out);
        put_message_fields(&catch_all, &mut out);
        (header.name, Bytes::from(out))
    }
}

/// `routes` as a virtual host's `routes` fields. Deterministic: prost writes a map in its
/// `HashMap`'s order, so a route with two per-filter configs (fault and CORS) has them written
/// by name here, and equal routes always encode alike (discovery tells a changed route
/// configuration by its bytes). Each route's metadata, from its message or else `metadata`
/// (the encoded field, for routes built with [`MetadataIn::Encoding`]), is written last, so both
/// give the same bytes.
fn encode_routes(routes: &mut [Route], metadata: Option<&[u8]>) -> Bytes {
    use crate::protowire::{delimited_len, put_delimited_header, put_message_fields};
    use prost::encoding::{message, string};
    const ROUTES: u32 = 3;
    const TYPED_PER_FILTER_CONFIG: u32 = 13;
    type Filters = BTreeMap<String, envoy_types::pb::google::protobuf::Any>;
    let entry_len = |(name, config): (&String, &envoy_types::pb::google::protobuf::Any)| {
        string::encoded_len(1, name) + message::encoded_len(2, config)
    };
    // Each route is measured once and the output allocated at its final size: growing it
    // route by route reallocated and copied it a dozen times per virtual host.
    let mut sorted_filters: Vec<Option<Filters>> = Vec::new();
    let mut lens = Vec::with_capacity(routes.len());
    for (i, route) in routes.iter_mut().enumerate() {
        // A route's own metadata is measured with it; where it is written does not change that.
        let mut len = if route.metadata.is_none() { metadata.map_or(0, <[u8]>::len) } else { 0 };
        if route.typed_per_filter_config.len() >= 2 {
            let filters: Filters = std::mem::take(&mut route.typed_per_filter_config).into_iter().collect();
            len += filters.iter().map(|entry| delimited_len(TYPED_PER_FILTER_CONFIG, entry_len(entry))).sum::<usize>();
            sorted_filters.resize_with(i + 1, || None);
            sorted_filters[i] = Some(filters);
        }
        len += route.encoded_len();
        lens.push(len);
    }
    let mut out = Vec::with_capacity(lens.iter().map(|len| delimited_len(ROUTES, *len)).sum());
    for (i, (route, len)) in routes.iter_mut().zip(lens).enumerate() {
        put_delimited_header(ROUTES, len, &mut out);
        let own_metadata = route.metadata.take();
        put_message_fields(route, &mut out);
        // A route with two or more per-filter configs has them written by name, after its
        // other fields (field order does not matter to a protobuf reader).
        if let Some(filters) = sorted_filters.get_mut(i).and_then(Option::take) {
            for entry in &filters {
                put_delimited_header(TYPED_PER_FILTER_CONFIG, entry_len(entry), &mut out);
                string::encode(1, entry.0, &mut out);
                message::encode(2, entry.1, &mut out);
            }
            route.typed_per_filter_config = filters.into_iter().collect();
        }
        match (&own_metadata, &metadata) {
            (Some(own), _) => message::encode(ROUTE_METADATA, own, &mut out),
            (None, Some(shared)) => out.extend_from_slice(shared),
            (None, None) => {}
        }
        route.metadata = own_metadata;
    }
    Bytes::from(out)
}

/// What routes read besides their VirtualService: the objects (the registries share unchanged
/// ones between snapshots, so identity usually decides; see `eq`) and the mesh config.
#[derive(Debug, Default)]
struct MemoInputs {
    services: Vec<Arc<Service>>,
    rules: Vec<Arc<DestinationRule>>,
    sidecar: Option<Arc<rudder_config::networking::Sidecar>>,
    mesh: rudder_config::mesh::MeshConfig,
}

impl MemoInputs {
    fn of(ctx: &Context<'_>) -> Self {
        Self {
            services: ctx.snapshot.services.values().cloned().collect(),
            rules: ctx.snapshot.destination_rules.clone(),
            sidecar: ctx.sidecar.cloned(),
            mesh: ctx.snapshot.mesh.clone(),
        }
    }
}

impl PartialEq for MemoInputs {
    /// Shared or equal: a file read again gives new objects for the unchanged ones beside the
    /// edited one.
    fn eq(&self, other: &Self) -> bool {
        fn same<T>(a: &[Arc<T>], b: &[Arc<T>], equal: impl Fn(&T, &T) -> bool) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || equal(x, y))
        }
        same(&self.services, &other.services, |a, b| a == b)
            && same(&self.rules, &other.rules, |a, b| a.metadata == b.metadata && a.spec == b.spec)
            && match (&self.sidecar, &other.sidecar) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || (a.metadata == b.metadata && a.spec == b.spec),
                _ => false,
            }
            && self.mesh == other.mesh
    }
}

/// A mesh VirtualService with its hosts resolved against its namespace.
struct MeshVirtualService<'a> {
    vs: &'a Arc<VirtualService>,
    /// Resolved hosts, in spec order.
    hosts: Vec<String>,
    /// Hosts that cover no visible service (they still get virtual hosts, see
    /// [`route_configuration`]). `*` is left out: it would shadow the catch-all.
    non_registry_hosts: Vec<String>,
}

impl<'a> MeshVirtualService<'a> {
    /// `hostnames` are the `services`' hostnames, so exact hosts are looked up rather than
    /// compared with every service (one VirtualService per service made that quadratic).
    fn new(vs: &'a Arc<VirtualService>, services: &[&Arc<Service>], hostnames: &FastSet<&str>) -> Self {
        let ns = namespace_of(vs);
        let hosts: Vec<String> = vs.spec.hosts.iter().map(|h| resolve_host(h, ns)).collect();
        let covers_a_service = |h: &str| {
            if h.starts_with('*') {
                services.iter().any(|s| host_matches(h, &s.hostname))
            } else {
                hostnames.contains(h)
            }
        };
        let non_registry_hosts = hosts.iter().filter(|h| h.as_str() != "*" && !covers_a_service(h)).cloned().collect();
        Self { vs, hosts, non_registry_hosts }
    }
}

/// Whether a VirtualService delegates some of its rules (its routes then read the delegates).
fn delegates(vs: &VirtualService) -> bool {
    vs.spec.http.iter().any(|rule| rule.delegate.is_some())
}

fn namespace_of(vs: &VirtualService) -> &str {
    vs.metadata.namespace.as_deref().unwrap_or("default")
}

fn name_of(vs: &VirtualService) -> &str {
    vs.metadata.name.as_deref().unwrap_or_default()
}

/// The mesh VirtualServices' hosts, indexed once per proxy so finding a service's owner is a
/// lookup rather than a scan of every VirtualService (per service and port).
struct Owners<'v> {
    /// Each host written in a VirtualService, with the first VirtualService naming it.
    exact: FastMap<&'v str, usize>,
    /// Wildcard hosts (`*…`) with their VirtualService, in VirtualService then host order.
    wildcard: Vec<(usize, &'v str)>,
}

impl<'v> Owners<'v> {
    fn new(virtual_services: &'v [MeshVirtualService<'_>]) -> Self {
        let mut exact = FastMap::default();
        let mut wildcard = Vec::new();
        for (i, vs) in virtual_services.iter().enumerate() {
            for host in &vs.hosts {
                exact.entry(host.as_str()).or_insert(i);
                if host.starts_with('*') {
                    wildcard.push((i, host.as_str()));
                }
            }
        }
        Self { exact, wildcard }
    }

    /// Which VirtualService (index into the mesh list) owns a service: the first one naming
    /// the host exactly, else the one with the most specific (longest) wildcard covering it.
    fn owner(&self, hostname: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(hostname) {
            return Some(*i);
        }
        let mut best: Option<(usize, usize)> = None;
        for (i, host) in self.wildcard.iter().filter(|(_, h)| host_matches(h, hostname)) {
            if best.is_none_or(|(_, len)| host.len() > len) {
                best = Some((*i, host.len()));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// A virtual host before domain de-duplication.
struct VhostDraft<R> {
    name: String,
    domains: Vec<String>,
    /// Short-name aliases among `domains`: dropped when they equal another service's FQDN.
    aliases: Vec<String>,
    routes: R,
    /// A mesh service (not `MESH_EXTERNAL`, not outside the registry): requests carry the
    /// caller's workload for the server's metrics.
    mesh: bool,
}

/// The route configuration of `port`.
fn route_configuration<R: RouteList>(
    ctx: &Context<'_>,
    port: u32,
    services: &[&Arc<Service>],
    virtual_services: &[MeshVirtualService<'_>],
    owners: &Owners<'_>,
    reusable: Option<RouteReuse<'_>>,
    memo: &mut RouteMemo,
) -> R::Config {
    let on_port: Vec<&Arc<Service>> = services
        .iter()
        .copied()
        .filter(|s| {
            s.port(port).is_some_and(|p| {
                let protocol = ctx.outbound_protocol(p);
                protocol.is_http() || protocol.is_auto()
            })
        })
        .filter(|s| ctx.port_visible(s, port))
        .collect();

    let owner_of: Vec<Option<usize>> = on_port.iter().map(|s| owners.owner(&s.hostname)).collect();
    // How many virtual hosts may take each VirtualService's routes (at most: some turn out
    // empty), so the last one takes them rather than a copy.
    let mut uses = vec![0usize; virtual_services.len()];
    for i in owner_of.iter().flatten() {
        uses[*i] += 1;
    }
    // The hosts outside the registry (below) take them once between them.
    for (i, vs) in virtual_services.iter().enumerate() {
        if !vs.non_registry_hosts.is_empty() && (port == NON_REGISTRY_HOST_PORT || uses[i] > 0) {
            uses[i] += 1;
        }
    }
    // Routes of each VirtualService on this port, computed (or taken from the previous
    // translation) once; `None` until needed, and after the last use.
    let mut vs_routes: Vec<Option<R>> = vec![None; virtual_services.len()];
    let mut routes_of = |i: usize| -> R {
        let routes = vs_routes[i].get_or_insert_with(|| {
            let vs = virtual_services[i].vs;
            let memoized = !delegates(vs);
            let kept = reusable.filter(|_| memoized).and_then(|previous| previous.reuse(vs, port));
            if let Some(encoded) = kept
                && let Some(routes) = R::kept(encoded)
            {
                memo.reused += 1;
                memo.keep(vs, port, encoded.clone());
                return routes;
            }
            let (routes, encoded) = R::of_virtual_service(ctx, vs, port, memoized);
            if let Some(encoded) = encoded {
                memo.keep(vs, port, encoded);
            }
            routes
        });
        uses[i] = uses[i].saturating_sub(1);
        if uses[i] == 0 { vs_routes[i].take().unwrap_or_default() } else { routes.clone() }
    };

    let mut vs_drafts = Vec::new();
    let mut default_drafts = Vec::new();
    let mut vs_covers_port = vec![false; virtual_services.len()];
    for (service, &owner) in on_port.iter().zip(&owner_of) {
        // A VirtualService whose rules all fall away for this proxy (source labels, ports)
        // leaves the service on its default route, as istiod does.
        let routes = owner.map(&mut routes_of).filter(|r| !r.is_empty());
        let (domains, aliases) = service_domains(service, &ctx.proxy.namespace);
        let name = [service.hostname.as_str(), ":", itoa::Buffer::new().format(port)].concat();
        match (owner, routes) {
            (Some(i), Some(routes)) => {
                vs_covers_port[i] = true;
                let mesh = !service.mesh_external;
                vs_drafts.push((i, VhostDraft { name, domains, aliases, routes, mesh }));
            }
            _ => default_drafts.push(VhostDraft {
                name,
                domains,
                aliases,
                routes: R::default_route(default_route(ctx, service, port)),
                mesh: !service.mesh_external,
            }),
        }
    }

    // Hosts outside the registry: on port 80 always, elsewhere alongside the VirtualService's
    // services on that port (istiod attaches them to every port its services use).
    for (i, vs) in virtual_services.iter().enumerate() {
        if port != NON_REGISTRY_HOST_PORT && !vs_covers_port[i] {
            continue;
        }
        if vs.non_registry_hosts.is_empty() {
            continue;
        }
        let routes = routes_of(i);
        if routes.is_empty() {
            continue;
        }
        for host in &vs.non_registry_hosts {
            vs_drafts.push((
                i,
                VhostDraft {
                    name: format!("{host}:{port}"),
                    domains: vec![ipv6_compliant(host)],
                    aliases: Vec::new(),
                    routes: routes.clone(),
                    mesh: false,
                },
            ));
        }
    }
    // VirtualService hosts first (in VirtualService order), then plain services (by host):
    // the first claim on a domain wins.
    vs_drafts.sort_by_key(|(i, _)| *i);
    let drafts = vs_drafts.into_iter().map(|(_, d)| d).chain(default_drafts);

    let known_fqdns: FastSet<&str> = on_port.iter().map(|s| s.hostname.as_str()).collect();
    // Sized for every virtual host and a handful of domains each: growing them rehashed
    // every name already in.
    let mut seen_names = FastSet::with_capacity_and_hasher(on_port.len(), Default::default());
    let mut seen_domains = FastSet::with_capacity_and_hasher(on_port.len() * 6, Default::default());
    // Kept drafts are sorted by name before they become virtual hosts (~1.2 KB each), so the
    // sort moves small drafts.
    let mut kept = Vec::new();
    for draft in drafts {
        if !seen_names.insert(draft.name.clone()) {
            tracing::debug!(vhost = %draft.name, "duplicate virtual host dropped");
            continue;
        }
        let before = draft.domains.len();
        let domains: Vec<String> = draft
            .domains
            .into_iter()
            .filter(|d| !(draft.aliases.contains(d) && known_fqdns.contains(d.as_str())))
            .filter(|d| seen_domains.insert(d.to_ascii_lowercase()))
            .collect();
        if domains.len() != before {
            tracing::debug!(vhost = %draft.name, "duplicate domains dropped");
        }
        if domains.is_empty() {
            continue;
        }
        kept.push(VhostDraft { domains, aliases: Vec::new(), ..draft });
    }
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    let hosts = kept
        .into_iter()
        .map(|draft| {
            let host = VirtualHost {
                name: draft.name,
                domains: draft.domains,
                request_headers_to_add: if draft.mesh {
                    vec![super::telemetry::source_workload_header()]
                } else {
                    Vec::new()
                },
                include_request_attempt_count: true,
                ..Default::default()
            };
            (host, draft.routes)
        })
        .collect();
    let header = RouteConfiguration {
        name: port.to_string(),
        validate_clusters: Some(BoolValue { value: false }),
        max_direct_response_body_size_bytes: Some(UInt32Value { value: MAX_DIRECT_RESPONSE_BODY_BYTES }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    };
    R::configuration(header, hosts, catch_all_virtual_host(ctx.registry_only(), ctx.unknown_destination_cluster()))
}

/// Domains of a service's virtual host and which of them are short aliases: the FQDN, the
/// Kubernetes short forms (`name`, `name.ns.svc`, `name.ns` in the proxy's own namespace;
/// `name.ns`, `name.ns.svc` from elsewhere), wildcards for headless Kubernetes services, and
/// the VIPs. Ports are never appended: the route configuration ignores them.
fn service_domains(service: &Service, proxy_namespace: &str) -> (Vec<String>, Vec<String>) {
    let host = service.hostname.as_str();
    let mut aliases = Vec::new();
    if service.kubernetes
        && let Some(svc_at) = host.find(".svc.")
        && let Some(dot) = host.find('.')
        && dot < svc_at
    {
        let (name, name_ns) = (&host[..dot], &host[..svc_at]);
        if &host[dot + 1..svc_at] == proxy_namespace {
            aliases = vec![name.to_owned(), format!("{name_ns}.svc"), name_ns.to_owned()];
        } else {
            aliases = vec![name_ns.to_owned(), format!("{name_ns}.svc")];
        }
    }
    let mut domains = vec![host.to_owned()];
    domains.extend(aliases.iter().cloned());
    if service.kubernetes && service.resolution == Resolution::Passthrough {
        // Headless: clients also address pods as `<pod>.<service>`.
        let wildcards: Vec<String> = domains.iter().map(|d| format!("*.{d}")).collect();
        domains.extend(wildcards);
    }
    domains.extend(
        service.addresses.iter().filter(|a| !a.is_empty() && a.as_str() != "0.0.0.0").map(|a| ipv6_compliant(a)),
    );
    (domains, aliases)
}

/// IPv6 literals are written in brackets in Host headers.
pub(crate) fn ipv6_compliant(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() }
}

/// The last virtual host: unknown hosts go to `unknown` (ALLOW_ANY: the original destination,
/// or the Sidecar's egress proxy) or get a 502 (REGISTRY_ONLY).
fn catch_all_virtual_host(registry_only: bool, unknown: String) -> VirtualHost {
    let (name, action) = if registry_only {
        (BLOCK_ALL, route::Action::DirectResponse(DirectResponseAction { status: 502, ..Default::default() }))
    } else {
        (
            ALLOW_ANY,
            route::Action::Route(with_timeout(
                RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster(unknown)), ..Default::default() },
                zero_duration(),
            )),
        )
    };
    VirtualHost {
        name: name.to_owned(),
        domains: vec!["*".to_owned()],
        routes: vec![Route {
            name: name.to_owned(),
            r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
            action: Some(action),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// The single route of a service no VirtualService covers.
fn default_route(ctx: &Context<'_>, service: &Service, port: u32) -> Route {
    let hash = ctx.destination_rule(&service.hostname).and_then(|dr| service_consistent_hash(dr, port));
    let hash_policy: Vec<HashPolicy> = hash.and_then(hash_policy).into_iter().collect();
    let retry = retry_policy(None, mesh_default_retry(ctx).as_ref(), !hash_policy.is_empty());
    Route {
        name: DEFAULT_ROUTE_NAME.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            case_sensitive: Some(BoolValue { value: true }),
            ..Default::default()
        }),
        decorator: Some(Decorator { operation: format!("{}:{port}/*", service.hostname), ..Default::default() }),
        action: Some(route::Action::Route(with_timeout(
            RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(outbound_cluster_name(port, "", &service.hostname))),
                retry_policy: retry,
                hash_policy,
                ..Default::default()
            },
            zero_duration(),
        ))),
        ..Default::default()
    }
}

/// The DestinationRule's consistent hash for a whole service port: the port-level setting
/// when it has one, else the rule-level one.
fn service_consistent_hash(dr: &DestinationRule, port: u32) -> Option<&ConsistentHashLb> {
    let policy = dr.spec.traffic_policy.as_ref()?;
    let port_level = policy
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port))
        .and_then(|p| p.load_balancer.as_ref()?.consistent_hash.as_ref());
    port_level.or_else(|| policy.load_balancer.as_ref()?.consistent_hash.as_ref())
}

/// The consistent hash for one route destination: subset port-level, subset, rule port-level,
/// then rule-level, most specific first. Port-level settings need an explicit destination port.
fn destination_consistent_hash<'d>(dr: &'d DestinationRule, destination: &Destination) -> Option<&'d ConsistentHashLb> {
    let port = destination.port.as_ref().and_then(|p| p.number);
    let port_level = |settings: &'d [rudder_config::networking::destination_rule::PortTrafficPolicy]| {
        let port = port?;
        settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port))
            .and_then(|p| p.load_balancer.as_ref()?.consistent_hash.as_ref())
    };
    let subset_policy = dr
        .spec
        .subsets
        .iter()
        .find(|s| !destination.subset.is_empty() && s.name == destination.subset)
        .and_then(|s| s.traffic_policy.as_ref());
    let rule_policy = dr.spec.traffic_policy.as_ref();
    subset_policy
        .and_then(|p| port_level(&p.port_level_settings))
        .or_else(|| subset_policy.and_then(|p| p.load_balancer.as_ref()?.consistent_hash.as_ref()))
        .or_else(|| rule_policy.and_then(|p| port_level(&p.port_level_settings)))
        .or_else(|| rule_policy.and_then(|p| p.load_balancer.as_ref()?.consistent_hash.as_ref()))
}

/// The route hash key of a consistent-hash setting (header, cookie, source IP or query
/// parameter); `None` when it names no key.
fn hash_policy(hash: &ConsistentHashLb) -> Option<HashPolicy> {
    use hash_policy::PolicySpecifier;
    let specifier = if let Some(header) = hash.http_header_name.as_ref().filter(|h| !h.is_empty()) {
        PolicySpecifier::Header(hash_policy::Header { header_name: header.clone(), ..Default::default() })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(duration),
            path: cookie.path.clone(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| hash_policy::CookieAttribute { name: a.name.clone(), value: a.value.clone() })
                .collect(),
        })
    } else if let Some(source_ip) = hash.use_source_ip {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip })
    } else if let Some(name) = hash.http_query_parameter_name.as_ref().filter(|n| !n.is_empty()) {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        return None;
    };
    Some(HashPolicy { policy_specifier: Some(specifier), ..Default::default() })
}

// ---------------------------------------------------------------------------------------------
// VirtualService HTTP rules
// ---------------------------------------------------------------------------------------------

/// Envoy routes for `vs`'s `http` rules as a sidecar sees them on `port`.
pub fn http_routes(ctx: &Context<'_>, vs: &VirtualService, port: u32) -> Vec<Route> {
    http_routes_for_gateways(ctx, vs, port, &[MESH_GATEWAY])
}

/// Envoy routes for `vs`'s `http` rules on `port`, for a proxy that is each of `gateways`
/// (`mesh` for sidecars): one route per match, in order, stopping after a catch-all. Matches
/// limited to other ports, gateways, source labels or namespaces are left out; a rule that
/// cannot be translated is skipped with a warning.
pub fn http_routes_for_gateways(ctx: &Context<'_>, vs: &VirtualService, port: u32, gateways: &[&str]) -> Vec<Route> {
    rule_routes(ctx, vs, port, gateways, MetadataIn::Message)
}

/// `Route.metadata`'s field number.
const ROUTE_METADATA: u32 = 4;

/// Where a route's `istio.config` metadata goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetadataIn {
    /// In the route's message.
    Message,
    /// Nowhere yet: the encoder writes it ([`encode_routes`]), from one [`ConfigMetadata`]
    /// for all the routes of a VirtualService without delegates.
    Encoding,
}

/// For whom routes are built and how: the proxy's gateways (`mesh` for sidecars), and where
/// their metadata goes.
#[derive(Debug, Clone, Copy)]
struct RouteBuild<'g> {
    gateways: &'g [&'g str],
    metadata: MetadataIn,
}

/// [`http_routes_for_gateways`], with the metadata where `metadata` says.
fn rule_routes(
    ctx: &Context<'_>,
    vs: &VirtualService,
    port: u32,
    gateways: &[&str],
    metadata: MetadataIn,
) -> Vec<Route> {
    let built = RouteBuild { gateways, metadata };
    let mut out = Vec::new();
    for (index, http) in vs.spec.http.iter().enumerate() {
        let stop = match &http.delegate {
            None => push_rule(&mut out, ctx, vs, http, index, port, built),
            Some(named) => match super::delegate::find(&ctx.snapshot.virtual_services, vs, named) {
                // The delegate's rules under this one's conditions, its hosts resolved in its
                // own namespace; one level deep.
                Some(target) => target
                    .spec
                    .http
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.delegate.is_none())
                    .filter_map(|(i, rule)| Some((i, super::delegate::merge_rule(http, rule)?)))
                    .any(|(i, merged)| push_rule(&mut out, ctx, target, &merged, i, port, built)),
                None => {
                    tracing::warn!(
                        virtual_service = %format!("{}/{}", namespace_of(vs), name_of(vs)),
                        rule = index,
                        delegate = %format!("{}/{}", named.namespace, named.name),
                        "no delegate VirtualService of that name without hosts and visible here; rule skipped"
                    );
                    false
                }
            },
        };
        if stop {
            // Envoy matches in order: nothing after a catch-all could ever be reached.
            break;
        }
    }
    out
}

/// Appends the routes of one rule (one per match, stopping after a catch-all); whether it
/// ended with a catch-all.
fn push_rule(
    out: &mut Vec<Route>,
    ctx: &Context<'_>,
    vs: &VirtualService,
    http: &HttpRoute,
    index: usize,
    port: u32,
    built: RouteBuild<'_>,
) -> bool {
    if http.r#match.is_empty() {
        out.extend(translate_route(ctx, vs, http, index, None, port, built));
        return true;
    }
    for m in &http.r#match {
        if let Some(route) = translate_route(ctx, vs, http, index, Some(m), port, built) {
            let stops = is_catch_all(&route);
            out.push(route);
            if stops {
                return true;
            }
        }
    }
    false
}

/// Whether a route matches every request (prefix `/` or regex `.*`, nothing else).
pub fn is_catch_all(route: &Route) -> bool {
    let Some(m) = &route.r#match else { return false };
    let any_path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) | Some(PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    any_path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

/// Whether a match applies to this proxy: its `gateways` (when set) must name one of ours;
/// otherwise its source labels and namespace must fit the proxy.
fn source_matches(ctx: &Context<'_>, m: &HttpMatchRequest, gateways: &[&str]) -> bool {
    if !m.gateways.is_empty() {
        return m.gateways.iter().any(|g| gateways.contains(&g.as_str()));
    }
    labels_match(&m.source_labels, &ctx.proxy.labels)
        && (m.source_namespace.is_empty() || m.source_namespace == ctx.proxy.namespace)
}

fn translate_route(
    ctx: &Context<'_>,
    vs: &VirtualService,
    http: &HttpRoute,
    index: usize,
    m: Option<&HttpMatchRequest>,
    port: u32,
    built: RouteBuild<'_>,
) -> Option<Route> {
    if let Some(m) = m
        && (m.port.is_some_and(|p| p != 0 && p != port) || !source_matches(ctx, m, built.gateways))
    {
        return None;
    }
    match build_route(ctx, vs, http, m, port, built.metadata) {
        Ok(route) => Some(route),
        Err(why) => {
            tracing::warn!(
                virtual_service = %format!("{}/{}", namespace_of(vs), name_of(vs)),
                rule = index,
                reason = why,
                "HTTP route cannot be translated; skipped"
            );
            None
        }
    }
}

fn build_route(
    ctx: &Context<'_>,
    vs: &VirtualService,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    port: u32,
    metadata: MetadataIn,
) -> Result<Route, &'static str> {
    let name = match m {
        Some(m) if !m.name.is_empty() => [http.name.as_str(), ".", m.name.as_str()].concat(),
        _ => http.name.clone(),
    };
    let mut out = Route {
        name,
        r#match: Some(route_match(m)),
        metadata: (metadata == MetadataIn::Message).then(|| config_metadata_of(vs).message()),
        stat_prefix: m.map(|m| m.stat_prefix.clone()).unwrap_or_default(),
        ..Default::default()
    };

    let mut authority = None;
    if let Some(headers) = &http.headers {
        let ops = header_operations(headers);
        out.request_headers_to_add = ops.request_add;
        out.request_headers_to_remove = ops.request_remove;
        out.response_headers_to_add = ops.response_add;
        out.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }

    out.action = Some(if let Some(redirect) = &http.redirect {
        route::Action::Redirect(redirect_action(redirect, port).ok_or("unsupported redirect code")?)
    } else if let Some(direct) = &http.direct_response {
        route::Action::DirectResponse(direct_response_action(direct).ok_or("directResponse body is not base64")?)
    } else {
        route::Action::Route(route_action(ctx, vs, http, port, authority, &mut out)?)
    });

    out.decorator = Some(Decorator { operation: route_operation(&out, name_of(vs), port), ..Default::default() });
    if let Some(fault) = http.fault.as_ref().and_then(fault_config) {
        out.typed_per_filter_config.insert(FAULT_FILTER.to_owned(), pack_any(fault));
    }
    if let Some(cors) = &http.cors_policy {
        out.typed_per_filter_config.insert(CORS_FILTER.to_owned(), pack_any(cors_config(cors)));
    }
    Ok(out)
}

/// `filter_metadata.istio.config`: which VirtualService a route came from.
fn config_metadata_of(vs: &VirtualService) -> ConfigMetadata<'_> {
    ConfigMetadata { resource: "virtual-service", namespace: namespace_of(vs), name: name_of(vs) }
}

/// The trace operation: `host:port<path>` for a single upstream, else `vsName:port<path>`.
fn route_operation(route: &Route, vs_name: &str, port: u32) -> String {
    let path = match route.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".to_owned(),
    };
    if let Some(route::Action::Route(RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster(c)), .. })) =
        &route.action
        && let mut parts = c.split('|')
        && let (Some(_), Some(cluster_port), Some(_), Some(host), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        && !host.is_empty()
    {
        return [host, ":", cluster_port, &path].concat();
    }
    [vs_name, ":", itoa::Buffer::new().format(port), &path].concat()
}

// --- matching -------------------------------------------------------------------------------

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() };
    let Some(m) = m else { return out };

    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        match jwt_claim_matcher(name, value) {
            Some(claim) => out.dynamic_metadata.push(claim),
            None => headers.push(header_matcher(name, value)),
        }
    }
    for (name, value) in &m.without_headers {
        match jwt_claim_matcher(name, value) {
            Some(mut claim) => {
                claim.invert = true;
                out.dynamic_metadata.push(claim);
            }
            None => {
                let mut h = header_matcher(name, value);
                h.invert_match = true;
                // A present_match cannot also treat absence as empty.
                h.treat_missing_header_as_empty = !is_present_match(value);
                headers.push(h);
            }
        }
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    out.headers = headers;

    if let Some(uri) = &m.uri {
        out.path_specifier = Some(match uri {
            StringMatch::Exact(p) => PathSpecifier::Path(p.clone()),
            StringMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
            StringMatch::Regex(r) => PathSpecifier::SafeRegex(regex(r)),
        });
    }
    out.case_sensitive = Some(BoolValue { value: !m.ignore_uri_case });
    for (pseudo, value) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(value) = value {
            out.headers.push(header_matcher(pseudo, value));
        }
    }
    out.query_parameters = m
        .query_params
        .iter()
        .map(|(name, value)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(if is_present_match(value) {
                query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
            } else {
                query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(string_matcher(value))
            }),
        })
        .collect();
    out
}

/// Istio reads the regex `*` (not valid RE2) as "header present".
fn is_present_match(value: &StringMatch) -> bool {
    matches!(value, StringMatch::Regex(r) if r == "*")
}

fn header_matcher(name: &str, value: &StringMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(if is_present_match(value) {
            header_matcher::HeaderMatchSpecifier::PresentMatch(true)
        } else {
            header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(value))
        }),
        ..Default::default()
    }
}

fn string_matcher(value: &StringMatch) -> StringMatcher {
    let pattern = match value {
        StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
    };
    StringMatcher { match_pattern: Some(pattern), ..Default::default() }
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher { regex: pattern.to_owned(), ..Default::default() }
}

/// `@request.auth.claims.a.b` / `@request.auth.claims[a][b]` headers match JWT claims in the
/// jwt_authn filter's metadata (a claim may be a string or a list of strings).
fn jwt_claim_matcher(name: &str, value: &StringMatch) -> Option<MetadataMatcher> {
    let rest = name.strip_prefix(JWT_CLAIMS_PREFIX)?;
    let claims: Vec<String> = if let Some(dotted) = rest.strip_prefix('.') {
        dotted.split('.').map(str::to_owned).collect()
    } else if rest.starts_with('[') && rest.ends_with(']') {
        rest[1..rest.len() - 1].split("][").map(str::to_owned).collect()
    } else {
        return None;
    };
    if claims.iter().any(String::is_empty) {
        return None;
    }
    let string =
        || ValueMatcher { match_pattern: Some(value_matcher::MatchPattern::StringMatch(string_matcher(value))) };
    let list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(ListMatcher {
            match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string()))),
        }))),
    };
    let path = std::iter::once("payload".to_owned())
        .chain(claims)
        .map(|key| metadata_matcher::PathSegment { segment: Some(metadata_matcher::path_segment::Segment::Key(key)) })
        .collect();
    Some(MetadataMatcher {
        filter: JWT_FILTER.to_owned(),
        path,
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![string(), list],
            })),
        }),
        ..Default::default()
    })
}

// --- headers --------------------------------------------------------------------------------

#[derive(Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
    /// A request `:authority`/`host` set or add, which becomes a host rewrite.
    authority: Option<String>,
}

/// Pseudo headers and `host` cannot be changed as plain headers.
fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn header_operations(headers: &Headers) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let to_options = |map: &BTreeMap<String, String>, action: HeaderAppendAction| -> Vec<HeaderValueOption> {
        map.iter()
            .filter(|(k, _)| !is_internal_header(k))
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
                append_action: action as i32,
                ..Default::default()
            })
            .collect()
    };
    let authority_in = |map: &BTreeMap<String, String>| {
        map.iter().filter(|(k, _)| is_authority_header(k)).map(|(_, v)| v.clone()).next_back()
    };
    let keep = |names: &[String]| names.iter().filter(|n| !is_internal_header(n)).cloned().collect::<Vec<_>>();
    if let Some(req) = &headers.request {
        ops.request_add = to_options(&req.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
        ops.request_add.extend(to_options(&req.add, HeaderAppendAction::AppendIfExistsOrAdd));
        ops.request_remove = keep(&req.remove);
        // `set` wins over `add`.
        ops.authority = authority_in(&req.set).or_else(|| authority_in(&req.add));
    }
    if let Some(resp) = &headers.response {
        ops.response_add = to_options(&resp.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
        ops.response_add.extend(to_options(&resp.add, HeaderAppendAction::AppendIfExistsOrAdd));
        ops.response_remove = keep(&resp.remove);
    }
    ops
}

// --- actions --------------------------------------------------------------------------------

/// The cluster a destination names: `outbound|<port>|<subset>|<host>`, the port being the
/// destination's, else the service's only port, else the listener port.
/// `destination`'s host, resolved in `vs`'s namespace: resolved once for its cluster and its
/// hash policy.
fn host_of(vs: &VirtualService, destination: &Destination) -> String {
    resolve_host(&destination.host, namespace_of(vs))
}

/// The cluster of `destination`, whose host resolves to `host`, on `port`.
fn destination_cluster(ctx: &Context<'_>, host: &str, destination: &Destination, port: u32) -> String {
    let number = destination.port.as_ref().and_then(|p| p.number).filter(|n| *n != 0).or_else(|| {
        ctx.service(host).and_then(|s| match s.ports.as_slice() {
            [only] => Some(only.port),
            _ => None,
        })
    });
    outbound_cluster_name(number.unwrap_or(port), &destination.subset, host)
}

/// `destination`'s consistent hash policy, from the DestinationRule of `host` (its host, resolved).
fn destination_hash(ctx: &Context<'_>, host: &str, destination: &Destination) -> Option<HashPolicy> {
    let dr = ctx.destination_rule(host)?;
    hash_policy(destination_consistent_hash(dr, destination)?)
}

fn route_action(
    ctx: &Context<'_>,
    vs: &VirtualService,
    http: &HttpRoute,
    port: u32,
    mut authority: Option<String>,
    out: &mut Route,
) -> Result<RouteAction, &'static str> {
    let mut action = with_timeout(RouteAction::default(), http.timeout.map(duration).unwrap_or_else(zero_duration));

    if let Some(rewrite) = &http.rewrite {
        if let Some(regex_rewrite) = &rewrite.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&regex_rewrite.r#match)),
                substitution: regex_rewrite.rewrite.clone(),
            });
        } else if !rewrite.uri.is_empty() {
            action.prefix_rewrite = rewrite.uri.clone();
        }
        if !rewrite.authority.is_empty() {
            authority = Some(rewrite.authority.clone());
        }
    }
    if let Some(authority) = authority {
        action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(authority));
    }

    if let Some(mirror) = &http.mirror
        && let Some(fraction) = mirror_fraction(http.mirror_percentage.as_ref(), http.mirror_percent())
    {
        action
            .request_mirror_policies
            .push(mirror_policy(destination_cluster(ctx, &host_of(vs, mirror), mirror, port), fraction));
    }
    for mirror in &http.mirrors {
        if let Some(destination) = &mirror.destination
            && let Some(fraction) = mirror_fraction(mirror.percentage.as_ref(), None)
        {
            action
                .request_mirror_policies
                .push(mirror_policy(destination_cluster(ctx, &host_of(vs, destination), destination, port), fraction));
        }
    }

    let mut consistent_hash = false;
    match http.route.as_slice() {
        [] => return Err("no route, redirect or directResponse"),
        [single] => {
            let destination = single.destination.as_ref().ok_or("route destination without a host")?;
            let host = host_of(vs, destination);
            action.cluster_specifier =
                Some(ClusterSpecifier::Cluster(destination_cluster(ctx, &host, destination, port)));
            if let Some(headers) = &single.headers {
                let ops = header_operations(headers);
                out.request_headers_to_add.extend(ops.request_add);
                out.request_headers_to_remove.extend(ops.request_remove);
                out.response_headers_to_add.extend(ops.response_add);
                out.response_headers_to_remove.extend(ops.response_remove);
                // The route-level rewrite, when there is one, takes precedence.
                if let Some(authority) = ops.authority
                    && action.host_rewrite_specifier.is_none()
                {
                    action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(authority));
                }
            }
            if let Some(hash) = destination_hash(ctx, &host, destination) {
                action.hash_policy.push(hash);
                consistent_hash = true;
            }
        }
        several => {
            let mut clusters = Vec::new();
            for weighted in several.iter().filter(|d| d.weight.unwrap_or(0) > 0) {
                clusters.push(weighted_cluster(ctx, vs, weighted, port, &mut action)?);
            }
            if clusters.is_empty() {
                return Err("every weighted destination has weight 0");
            }
            action.cluster_specifier =
                Some(ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }));
        }
    }
    action.retry_policy = retry_policy(http.retries.as_ref(), mesh_default_retry(ctx).as_ref(), consistent_hash);
    Ok(action)
}

fn weighted_cluster(
    ctx: &Context<'_>,
    vs: &VirtualService,
    weighted: &HttpRouteDestination,
    port: u32,
    action: &mut RouteAction,
) -> Result<ClusterWeight, &'static str> {
    let destination = weighted.destination.as_ref().ok_or("route destination without a host")?;
    let host = host_of(vs, destination);
    let weight = u32::try_from(weighted.weight.unwrap_or(0)).unwrap_or(0);
    let mut cluster = ClusterWeight {
        name: destination_cluster(ctx, &host, destination, port),
        weight: Some(UInt32Value { value: weight }),
        ..Default::default()
    };
    if let Some(headers) = &weighted.headers {
        let ops = header_operations(headers);
        cluster.request_headers_to_add = ops.request_add;
        cluster.request_headers_to_remove = ops.request_remove;
        cluster.response_headers_to_add = ops.response_add;
        cluster.response_headers_to_remove = ops.response_remove;
        if let Some(authority) = ops.authority {
            cluster.host_rewrite_specifier =
                Some(envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(authority));
        }
    }
    if let Some(hash) = destination_hash(ctx, &host, destination) {
        action.hash_policy.push(hash);
    }
    Ok(cluster)
}

/// How much traffic to mirror: an explicit percentage (0 means none), else the deprecated
/// whole percent, else all of it.
fn mirror_fraction(percentage: Option<&Percent>, whole_percent: Option<u32>) -> Option<RuntimeFractionalPercent> {
    let fraction = match (percentage, whole_percent) {
        (Some(p), _) if p.value > 0.0 => fraction_of_million(p.value),
        (Some(_), _) => return None,
        (None, Some(0)) => return None,
        (None, Some(p)) => fraction_of_hundred(p),
        (None, None) => fraction_of_hundred(100),
    };
    Some(RuntimeFractionalPercent { default_value: Some(fraction), ..Default::default() })
}

fn mirror_policy(cluster: String, fraction: RuntimeFractionalPercent) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(fraction),
        trace_sampled: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn redirect_action(redirect: &HttpRedirect, port: u32) -> Option<RedirectAction> {
    let response_code = match redirect.redirect_code.unwrap_or(0) {
        0 | 301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => return None,
    };
    let mut out = RedirectAction {
        host_redirect: redirect.authority.clone(),
        response_code: response_code as i32,
        path_rewrite_specifier: if !redirect.uri.is_empty() {
            Some(PathRewriteSpecifier::PathRedirect(redirect.uri.clone()))
        } else if !redirect.prefix_rewrite.is_empty() {
            // Replaces the prefix the route matched, keeping the rest of the path.
            Some(PathRewriteSpecifier::PrefixRewrite(redirect.prefix_rewrite.clone()))
        } else {
            None
        },
        scheme_rewrite_specifier: (!redirect.scheme.is_empty())
            .then(|| SchemeRewriteSpecifier::SchemeRedirect(redirect.scheme.clone())),
        ..Default::default()
    };
    let explicit_port = match (redirect.port, redirect.derive_port) {
        (Some(p), _) => Some(p),
        // Routes are built per listener port, so "the request's port" is known here.
        (None, Some(RedirectPortSelection::FromRequestPort)) => Some(port),
        (None, _) => None,
    };
    if let Some(p) = explicit_port {
        // Sidecars never terminate TLS: the default scheme is http. Default ports are implied.
        let scheme = if redirect.scheme.is_empty() { "http" } else { redirect.scheme.as_str() };
        let implied = (p == 80 && scheme == "http") || (p == 443 && scheme == "https");
        out.port_redirect = if implied { 0 } else { p };
    }
    Some(out)
}

fn direct_response_action(direct: &HttpDirectResponse) -> Option<DirectResponseAction> {
    let body = match &direct.body {
        None => None,
        Some(HttpBody::String(s)) => Some(data_source::Specifier::InlineString(s.clone())),
        Some(HttpBody::Bytes(b64)) => Some(data_source::Specifier::InlineBytes(decode_base64(b64)?)),
    };
    Some(DirectResponseAction {
        status: direct.status,
        body: body.map(|specifier| DataSource { specifier: Some(specifier), ..Default::default() }),
        ..Default::default()
    })
}

/// Standard base64 (padding optional, whitespace ignored), as protobuf JSON encodes bytes;
/// the URL-safe alphabet is accepted too.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

// --- retries --------------------------------------------------------------------------------

/// The mesh-wide default retry policy (MeshConfig `defaultHttpRetryPolicy`), if set and valid.
fn mesh_default_retry(ctx: &Context<'_>) -> Option<HttpRetry> {
    let raw = ctx.snapshot.mesh.default_http_retry_policy.as_ref()?;
    match serde_json::from_value(serde_json::Value::Object(raw.0.clone())) {
        Ok(policy) => Some(policy),
        Err(e) => {
            tracing::warn!(error = %e, "meshConfig.defaultHttpRetryPolicy is not an HTTPRetry; Istio's default used");
            None
        }
    }
}

/// Istio's retry policy: the default (2 retries on connection-level failures, preferring
/// other hosts unless the route hashes consistently), overridden by `policy` (the route's,
/// else the mesh default). `attempts` 0 disables retries.
fn retry_policy(
    route: Option<&HttpRetry>,
    mesh_default: Option<&HttpRetry>,
    consistent_hash: bool,
) -> Option<RetryPolicy> {
    let mut out = RetryPolicy {
        num_retries: Some(UInt32Value { value: 2 }),
        retry_on: DEFAULT_RETRY_ON.to_owned(),
        host_selection_retry_max_attempts: 5,
        retry_host_predicate: if consistent_hash { Vec::new() } else { vec![previous_hosts_predicate()] },
        ..Default::default()
    };
    let Some(policy) = route.or(mesh_default) else { return Some(out) };
    let attempts = u32::try_from(policy.attempts.unwrap_or(0)).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    out.num_retries = Some(UInt32Value { value: attempts });
    if !policy.retry_on.is_empty() {
        let (conditions, codes) = split_retry_on(&policy.retry_on);
        out.retry_on = conditions;
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            if !out.retry_on.is_empty() {
                out.retry_on.push(',');
            }
            out.retry_on.push_str("retriable-status-codes");
        }
        out.retriable_status_codes = codes;
    }
    if let Some(per_try) = policy.per_try_timeout {
        out.per_try_timeout = Some(duration(per_try));
    }
    if let Some(ignore_previous) = policy.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore_previous { vec![previous_hosts_predicate()] } else { Vec::new() };
    }
    if policy.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: PREVIOUS_PRIORITIES.to_owned(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(pack_any(
                PreviousPrioritiesConfig { update_frequency: 2 },
            ))),
        });
    }
    if let Some(backoff) = policy.backoff {
        out.retry_back_off = Some(RetryBackOff { base_interval: Some(duration(backoff)), ..Default::default() });
    }
    Some(out)
}

fn previous_hosts_predicate() -> RetryHostPredicate {
    RetryHostPredicate {
        name: PREVIOUS_HOSTS_PREDICATE.to_owned(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(
            PreviousHostsPredicate {},
        ))),
    }
}

/// Splits `retryOn` into Envoy conditions and HTTP status codes.
fn split_retry_on(retry_on: &str) -> (String, Vec<u32>) {
    let mut conditions = Vec::new();
    let mut codes = Vec::new();
    for part in retry_on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if is_known_status(code) => codes.push(code),
            _ => conditions.push(part),
        }
    }
    (conditions.join(","), codes)
}

/// Status codes with a registered meaning (what Go's `http.StatusText` knows).
fn is_known_status(code: u32) -> bool {
    matches!(code, 100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431
        | 451 | 500..=508 | 510 | 511)
}

// --- fault and CORS -------------------------------------------------------------------------

/// The fault filter's per-route config; `None` when nothing Envoy supports is asked for
/// (exponential delays and HTTP/2 errors are not).
fn fault_config(fault: &HttpFaultInjection) -> Option<HttpFault> {
    let delay = fault.delay.as_ref().and_then(|d| {
        let Some(fixed) = d.fixed_delay else {
            tracing::warn!("exponential fault delays are not supported; delay ignored");
            return None;
        };
        let percentage = match &d.percentage {
            Some(p) => fraction_of_million(p.value),
            None => fraction_of_hundred(u32::try_from(d.percent.unwrap_or(0)).unwrap_or(0)),
        };
        Some(FaultDelay {
            percentage: Some(percentage),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(fixed))),
        })
    });
    let abort = fault.abort.as_ref().and_then(|a| {
        let error_type = if let Some(status) = a.http_status {
            fault_abort::ErrorType::HttpStatus(u32::try_from(status).unwrap_or(0))
        } else if let Some(code) = a.grpc_status.as_deref().and_then(grpc_status_code) {
            fault_abort::ErrorType::GrpcStatus(code)
        } else {
            tracing::warn!("only HTTP and known gRPC status aborts are supported; abort ignored");
            return None;
        };
        Some(FaultAbort {
            percentage: a.percentage.as_ref().map(|p| fraction_of_million(p.value)),
            error_type: Some(error_type),
            ..Default::default()
        })
    });
    (delay.is_some() || abort.is_some()).then(|| HttpFault { delay, abort, ..Default::default() })
}

fn grpc_status_code(name: &str) -> Option<u32> {
    use rudder_config::networking::virtual_service::GRPC_STATUS_NAMES;
    GRPC_STATUS_NAMES.iter().position(|n| *n == name).and_then(|i| u32::try_from(i).ok())
}

fn cors_config(cors: &CorsPolicy) -> EnvoyCorsPolicy {
    let allow_origin_string_match = if !cors.allow_origins.is_empty() {
        cors.allow_origins.iter().map(string_matcher).collect()
    } else {
        cors.allow_origin.iter().map(|o| string_matcher(&StringMatch::Exact(o.clone()))).collect()
    };
    EnvoyCorsPolicy {
        allow_origin_string_match,
        allow_methods: cors.allow_methods.join(","),
        allow_headers: cors.allow_headers.join(","),
        expose_headers: cors.expose_headers.join(","),
        max_age: cors.max_age.map(|d| (d.as_nanos() / 1_000_000_000).to_string()).unwrap_or_default(),
        allow_credentials: cors.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(fraction_of_hundred(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: cors.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

// --- small conversions ----------------------------------------------------------------------

/// An Istio percentage (0-100, fractional) in millionths.
fn fraction_of_million(percent: f64) -> FractionalPercent {
    let numerator = (percent.clamp(0.0, 100.0) * 10_000.0) as u32;
    FractionalPercent { numerator, denominator: DenominatorType::Million as i32 }
}

fn fraction_of_hundred(percent: u32) -> FractionalPercent {
    FractionalPercent { numerator: percent.min(100), denominator: DenominatorType::Hundred as i32 }
}

fn duration(d: IstioDuration) -> Duration {
    let nanos = d.as_nanos().max(0);
    Duration { seconds: nanos / 1_000_000_000, nanos: (nanos % 1_000_000_000) as i32 }
}

/// Sets the request timeout (0 disables it) and lets gRPC's `grpc-timeout` header go up to the
/// same value. Istio uses the deprecated `max_grpc_timeout` on purpose: its replacement
/// (`max_stream_duration`) behaved differently when this was written upstream.
#[allow(deprecated)]
fn with_timeout(mut action: RouteAction, timeout: Duration) -> RouteAction {
    action.timeout = Some(timeout);
    action.max_grpc_timeout = Some(timeout);
    action
}

fn zero_duration() -> Duration {
    Duration { seconds: 0, nanos: 0 }
}

#[cfg(test)]
#[allow(deprecated)] // reads max_grpc_timeout
mod tests {
    use super::*;
    use crate::model::{Protocol, Proxy, ServicePort, Snapshot};
    use prost::Message;
    use rudder_config::object::IstioObject;

    const REVIEWS: &str = "reviews.default.svc.cluster.local";
    const RATINGS: &str = "ratings.other.svc.cluster.local";

    fn proxy(namespace: &str, labels: &[(&str, &str)]) -> Proxy {
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
        let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::Value::Object(labels))]);
        Proxy::from_node(&format!("sidecar~10.0.0.9~client.{namespace}~{namespace}.svc.cluster.local"), &meta).unwrap()
    }

    fn service(host: &str, ports: &[(u32, &str)], vip: &str) -> Arc<Service> {
        let kubernetes = host.ends_with(".svc.cluster.local");
        let namespace = if kubernetes { host.split('.').nth(1).unwrap() } else { "default" };
        Arc::new(Service {
            hostname: host.to_owned(),
            namespace: namespace.to_owned(),
            name: host.split('.').next().unwrap().to_owned(),
            ports: ports
                .iter()
                .map(|(port, name)| ServicePort {
                    name: (*name).to_owned(),
                    port: *port,
                    protocol: Protocol::of_port(None, name),
                })
                .collect(),
            addresses: if vip.is_empty() { vec![] } else { vec![vip.to_owned()] },
            resolution: Resolution::ClientSideLb,
            mesh_external: false,
            export_to: vec![],
            kubernetes,
            traffic_distribution: Default::default(),
            subject_alt_names: Vec::new(),
        })
    }

    fn load(yaml: &str) -> Vec<IstioObject> {
        let loads = rudder_config::load::load_str("test.yaml", yaml).unwrap();
        assert!(loads.problems.is_empty(), "{:?}", loads.problems);
        loads.objects.into_iter().map(|o| o.object).collect()
    }

    fn snapshot(services: &[Arc<Service>], yaml: &str) -> Snapshot {
        let mut snap = Snapshot {
            services: services.iter().map(|s| (s.hostname.clone(), s.clone())).collect(),
            ..Default::default()
        };
        for object in load(yaml) {
            match object {
                IstioObject::VirtualService(vs) => snap.virtual_services.push(Arc::new(*vs)),
                IstioObject::DestinationRule(dr) => snap.destination_rules.push(Arc::new(*dr)),
                other => panic!("unexpected {}", other.kind()),
            }
        }
        snap
    }

    fn translate(snap: &Snapshot, proxy: &Proxy) -> Vec<RouteConfiguration> {
        outbound(&Context::new(snap, proxy))
    }

    fn config(rcs: &[RouteConfiguration], port: u32) -> &RouteConfiguration {
        rcs.iter().find(|rc| rc.name == port.to_string()).unwrap_or_else(|| panic!("no route config {port}"))
    }

    fn vhost<'a>(rcs: &'a [RouteConfiguration], port: u32, host: &str) -> &'a VirtualHost {
        let name = format!("{host}:{port}");
        config(rcs, port).virtual_hosts.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no vhost {name}"))
    }

    fn action(route: &Route) -> &RouteAction {
        match &route.action {
            Some(route::Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn cluster(route: &Route) -> &str {
        match &action(route).cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c,
            other => panic!("not a single cluster: {other:?}"),
        }
    }

    fn weighted(route: &Route) -> Vec<(String, u32)> {
        match &action(route).cluster_specifier {
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                w.clusters.iter().map(|c| (c.name.clone(), c.weight.unwrap().value)).collect()
            }
            other => panic!("not weighted: {other:?}"),
        }
    }

    /// Routes of the one VirtualService in `yaml` for a default-namespace sidecar, on `port`.
    fn vs_routes(services: &[Arc<Service>], yaml: &str, port: u32) -> Vec<Route> {
        let snap = snapshot(services, yaml);
        let p = proxy("default", &[("app", "client")]);
        let ctx = Context::new(&snap, &p);
        http_routes(&ctx, &snap.virtual_services[0], port)
    }

    fn reviews() -> Vec<Arc<Service>> {
        vec![service(REVIEWS, &[(9080, "http")], "10.96.0.10")]
    }

    fn vs_yaml(http: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews-vs, namespace: default}}\n\
             spec:\n  hosts: [reviews]\n  http:\n{http}"
        )
    }

    fn dur(seconds: i64, nanos: i32) -> Option<Duration> {
        Some(Duration { seconds, nanos })
    }

    #[test]
    fn default_route_configuration() {
        let snap = snapshot(&reviews(), "");
        let rcs = translate(&snap, &proxy("default", &[]));
        assert_eq!(rcs.len(), 1);
        let rc = config(&rcs, 9080);
        assert_eq!(rc.validate_clusters, Some(BoolValue { value: false }));
        assert!(rc.ignore_port_in_host_matching);
        assert_eq!(rc.max_direct_response_body_size_bytes, Some(UInt32Value { value: 1024 * 1024 }));

        let vh = vhost(&rcs, 9080, REVIEWS);
        assert_eq!(vh.domains, [REVIEWS, "reviews", "reviews.default.svc", "reviews.default", "10.96.0.10"]);
        assert!(vh.include_request_attempt_count);
        let [route] = vh.routes.as_slice() else { panic!("{:?}", vh.routes) };
        assert_eq!(route.name, "default");
        assert_eq!(route.r#match.as_ref().unwrap().path_specifier, Some(PathSpecifier::Prefix("/".into())));
        assert_eq!(cluster(route), "outbound|9080||reviews.default.svc.cluster.local");
        assert_eq!(action(route).timeout, dur(0, 0));
        assert_eq!(action(route).max_grpc_timeout, dur(0, 0));
        assert_eq!(route.decorator.as_ref().unwrap().operation, "reviews.default.svc.cluster.local:9080/*");
        let retry = action(route).retry_policy.as_ref().unwrap();
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 2 }));
        assert_eq!(retry.retry_on, "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        assert!(retry.retriable_status_codes.is_empty());
        assert_eq!(retry.host_selection_retry_max_attempts, 5);
        let [predicate] = retry.retry_host_predicate.as_slice() else { panic!() };
        assert_eq!(predicate.name, "envoy.retry_host_predicates.previous_hosts");
        let Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any)) = &predicate.config_type else {
            panic!()
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        );

        let catch_all = rc.virtual_hosts.last().unwrap();
        assert_eq!((catch_all.name.as_str(), catch_all.domains.as_slice()), ("allow_any", &["*".to_owned()][..]));
        assert_eq!(cluster(&catch_all.routes[0]), "PassthroughCluster");
        assert_eq!(action(&catch_all.routes[0]).timeout, dur(0, 0));
    }

    #[test]
    fn registry_only_blocks_unknown_hosts() {
        let mut snap = snapshot(&reviews(), "");
        snap.mesh.outbound_traffic_policy = Some(rudder_config::mesh::OutboundTrafficPolicy {
            mode: Some(rudder_config::mesh::OutboundTrafficPolicyMode::RegistryOnly),
            ..Default::default()
        });
        let rcs = translate(&snap, &proxy("default", &[]));
        let catch_all = config(&rcs, 9080).virtual_hosts.last().unwrap();
        assert_eq!(catch_all.name, "block_all");
        assert_eq!(catch_all.routes[0].name, "block_all");
        let Some(route::Action::DirectResponse(d)) = &catch_all.routes[0].action else { panic!() };
        assert_eq!(d.status, 502);
    }

    #[test]
    fn ports_domains_and_ordering() {
        let services = vec![
            service(REVIEWS, &[(9080, "http"), (3306, "tcp"), (8080, "web")], "10.96.0.10"),
            service(RATINGS, &[(9080, "grpc")], "10.96.0.11"),
            // Same VIP as reviews: the domain goes to whichever vhost claims it first.
            service("api.example.com", &[(9080, "http")], "10.96.0.10"),
            service("fd.example.com", &[(9080, "http2")], "fd00::1"),
        ];
        let rcs = translate(&snapshot(&services, ""), &proxy("default", &[]));
        // TCP ports get no routes; sniffed ("web") ports do.
        assert_eq!(rcs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["8080", "9080"]);
        let names: Vec<&str> = config(&rcs, 9080).virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "api.example.com:9080",
                "fd.example.com:9080",
                "ratings.other.svc.cluster.local:9080",
                "reviews.default.svc.cluster.local:9080",
                "allow_any"
            ]
        );
        // Another namespace: no bare short name.
        assert_eq!(vhost(&rcs, 9080, RATINGS).domains, [RATINGS, "ratings.other", "ratings.other.svc", "10.96.0.11"]);
        assert_eq!(vhost(&rcs, 9080, "fd.example.com").domains, ["fd.example.com", "[fd00::1]"]);
        // Non-Kubernetes hosts get no aliases; first claim on the VIP wins (by hostname order).
        assert_eq!(vhost(&rcs, 9080, "api.example.com").domains, ["api.example.com", "10.96.0.10"]);
        assert!(!vhost(&rcs, 9080, REVIEWS).domains.contains(&"10.96.0.10".to_owned()));
        let all: Vec<&String> = config(&rcs, 9080).virtual_hosts.iter().flat_map(|v| &v.domains).collect();
        assert_eq!(all.len(), all.iter().collect::<BTreeSet<_>>().len(), "duplicate domains: {all:?}");
    }

    #[test]
    fn headless_kubernetes_services_get_wildcard_domains() {
        let mut headless = (*service(REVIEWS, &[(9080, "http")], "")).clone();
        headless.resolution = Resolution::Passthrough;
        let rcs = translate(&snapshot(&[Arc::new(headless)], ""), &proxy("default", &[]));
        let domains = &vhost(&rcs, 9080, REVIEWS).domains;
        assert!(domains.contains(&format!("*.{REVIEWS}")));
        assert!(domains.contains(&"*.reviews".to_owned()));
    }

    #[test]
    fn consistent_hash_adds_hash_policy_and_drops_previous_hosts() {
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\n\
                  spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n\
                  \x20   portLevelSettings:\n    - port: {number: 9090}\n      loadBalancer:\n        consistentHash:\n          httpCookie: {name: c, ttl: 10s, path: /}\n";
        let services = vec![service(REVIEWS, &[(9080, "http"), (9090, "http")], "")];
        let rcs = translate(&snapshot(&services, dr), &proxy("default", &[]));
        let route = &vhost(&rcs, 9080, REVIEWS).routes[0];
        assert_eq!(
            action(route).hash_policy,
            [HashPolicy {
                policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                    header_name: "x-user".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }]
        );
        assert!(action(route).retry_policy.as_ref().unwrap().retry_host_predicate.is_empty());
        let route = &vhost(&rcs, 9090, REVIEWS).routes[0];
        let Some(hash_policy::PolicySpecifier::Cookie(cookie)) = &action(route).hash_policy[0].policy_specifier else {
            panic!()
        };
        assert_eq!((cookie.name.as_str(), cookie.ttl, cookie.path.as_str()), ("c", dur(10, 0), "/"));
    }

    #[test]
    fn matches_translate_in_order_and_stop_after_catch_all() {
        let yaml = vs_yaml(
            r#"  - name: api
    match:
    - name: exact
      uri: {exact: /v1/login}
      ignoreUriCase: true
      method: {exact: POST}
      authority: {prefix: reviews}
      scheme: {exact: http}
      headers:
        x-b: {regex: "*"}
        x-a: {exact: one}
      withoutHeaders:
        x-c: {prefix: bad}
        x-d: {regex: "*"}
      queryParams:
        debug: {regex: "*"}
        v: {regex: "[0-9]+"}
    - uri: {regex: "/v[0-9]+/.*"}
      statPrefix: api_regex
    - uri: {prefix: /}
    - uri: {prefix: /never}
    route: [{destination: {host: reviews}}]
  - name: after
    route: [{destination: {host: reviews}}]
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        assert_eq!(routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["api.exact", "api", "api"]);

        let m = routes[0].r#match.as_ref().unwrap();
        assert_eq!(m.path_specifier, Some(PathSpecifier::Path("/v1/login".into())));
        assert_eq!(m.case_sensitive, Some(BoolValue { value: false }));
        let headers: Vec<(&str, bool, bool)> =
            m.headers.iter().map(|h| (h.name.as_str(), h.invert_match, h.treat_missing_header_as_empty)).collect();
        assert_eq!(
            headers,
            [
                ("x-a", false, false),
                ("x-b", false, false),
                ("x-c", true, true),
                ("x-d", true, false),
                (":method", false, false),
                (":authority", false, false),
                (":scheme", false, false)
            ]
        );
        assert_eq!(m.headers[1].header_match_specifier, Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)));
        assert_eq!(
            m.headers[4].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(&StringMatch::Exact("POST".into()))))
        );
        assert_eq!(m.query_parameters.len(), 2);
        assert_eq!(
            m.query_parameters[0].query_parameter_match_specifier,
            Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true))
        );
        assert_eq!(
            m.query_parameters[1].query_parameter_match_specifier,
            Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex("[0-9]+"))),
                ..Default::default()
            }))
        );

        let m = routes[1].r#match.as_ref().unwrap();
        assert_eq!(m.path_specifier, Some(PathSpecifier::SafeRegex(regex("/v[0-9]+/.*"))));
        assert_eq!(m.case_sensitive, Some(BoolValue { value: true }));
        assert_eq!(routes[1].stat_prefix, "api_regex");
        assert!(is_catch_all(&routes[2]));
        assert_eq!(routes[1].decorator.as_ref().unwrap().operation, format!("{REVIEWS}:9080/v[0-9]+/.*"));
        assert_eq!(routes[0].decorator.as_ref().unwrap().operation, format!("{REVIEWS}:9080/v1/login"));
        assert_eq!(routes[2].decorator.as_ref().unwrap().operation, format!("{REVIEWS}:9080/*"));
        assert_eq!(
            routes[0].metadata.as_ref().unwrap().filter_metadata["istio"].fields["config"].kind,
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews-vs".into()
            ))
        );
    }

    #[test]
    fn jwt_claim_headers_become_metadata_matchers() {
        let yaml = vs_yaml(
            r#"  - match:
    - headers:
        "@request.auth.claims.group": {exact: admin}
        "@request.auth.claims[org][id]": {prefix: "7"}
    route: [{destination: {host: reviews}}]
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        let m = routes[0].r#match.as_ref().unwrap();
        assert!(m.headers.is_empty());
        let paths: Vec<Vec<String>> = m
            .dynamic_metadata
            .iter()
            .map(|d| {
                assert_eq!(d.filter, "envoy.filters.http.jwt_authn");
                d.path
                    .iter()
                    .map(|s| match &s.segment {
                        Some(metadata_matcher::path_segment::Segment::Key(k)) => k.clone(),
                        None => String::new(),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(paths, [vec!["payload", "group"], vec!["payload", "org", "id"]]);
    }

    #[test]
    fn source_port_and_gateway_conditions_are_evaluated_per_proxy() {
        let yaml = vs_yaml(
            r#"  - name: labels
    match: [{sourceLabels: {app: client}, uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
  - name: other-labels
    match: [{sourceLabels: {app: other}, uri: {prefix: /b}}]
    route: [{destination: {host: reviews}}]
  - name: namespace
    match: [{sourceNamespace: elsewhere, uri: {prefix: /c}}, {sourceNamespace: default, uri: {prefix: /d}}]
    route: [{destination: {host: reviews}}]
  - name: port
    match: [{port: 9090, uri: {prefix: /e}}, {port: 9080, uri: {prefix: /f}}]
    route: [{destination: {host: reviews}}]
  - name: gateways
    match: [{gateways: [my-gw], uri: {prefix: /g}}, {gateways: [mesh], sourceLabels: {app: nope}, uri: {prefix: /h}}]
    route: [{destination: {host: reviews}}]
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        let prefixes: Vec<String> = routes
            .iter()
            .map(|r| match &r.r#match.as_ref().unwrap().path_specifier {
                Some(PathSpecifier::Prefix(p)) => p.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        // `gateways` in a match replaces the source checks, as upstream.
        assert_eq!(prefixes, ["/a", "/d", "/f", "/h"]);
    }

    #[test]
    fn destinations_subsets_ports_and_weights() {
        let services = vec![
            service(REVIEWS, &[(9080, "http")], ""),
            service(RATINGS, &[(9080, "http"), (9090, "http")], ""),
            service("single.default.svc.cluster.local", &[(7070, "http")], ""),
        ];
        let yaml = vs_yaml(
            r#"  - match: [{uri: {prefix: /one}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /multi}}]
    route: [{destination: {host: ratings.other.svc.cluster.local}}]
  - match: [{uri: {prefix: /explicit}}]
    route: [{destination: {host: ratings.other.svc.cluster.local, port: {number: 9090}}}]
  - match: [{uri: {prefix: /only}}]
    route: [{destination: {host: single}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 70}
    - {destination: {host: reviews, subset: v2}, weight: 30}
    - {destination: {host: reviews, subset: v3}, weight: 0}
"#,
        );
        let routes = vs_routes(&services, &yaml, 9080);
        assert_eq!(cluster(&routes[0]), "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(cluster(&routes[1]), "outbound|9080||ratings.other.svc.cluster.local");
        assert_eq!(cluster(&routes[2]), "outbound|9090||ratings.other.svc.cluster.local");
        assert_eq!(cluster(&routes[3]), "outbound|7070||single.default.svc.cluster.local");
        assert_eq!(
            weighted(&routes[4]),
            [
                ("outbound|9080|v1|reviews.default.svc.cluster.local".to_owned(), 70),
                ("outbound|9080|v2|reviews.default.svc.cluster.local".to_owned(), 30)
            ]
        );
        assert_eq!(routes[4].decorator.as_ref().unwrap().operation, "reviews-vs:9080/*");
        assert!(action(&routes[4]).retry_policy.as_ref().unwrap().retry_host_predicate.len() == 1);
    }

    #[test]
    fn destination_hash_uses_subset_policy() {
        let yaml = vs_yaml(
            r#"  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-top}}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        assert_eq!(
            action(&routes[0]).hash_policy[0].policy_specifier,
            Some(hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
                source_ip: true
            }))
        );
        assert!(action(&routes[0]).retry_policy.as_ref().unwrap().retry_host_predicate.is_empty());
    }

    #[test]
    fn rewrites_redirects_and_direct_responses() {
        let yaml = vs_yaml(
            r#"  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: new.example.com}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /re}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)", rewrite: "/\\1"}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /here, authority: other.example.com, scheme: https, port: 8443, redirectCode: 308}
  - match: [{uri: {prefix: /default-port}}]
    redirect: {scheme: https, port: 443}
  - match: [{uri: {prefix: /same-port}}]
    redirect: {derivePort: FROM_REQUEST_PORT, redirectCode: 302}
  - match: [{uri: {prefix: /bad-code}}]
    redirect: {uri: /x, redirectCode: 305}
  - match: [{uri: {prefix: /text}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /bytes}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        assert_eq!(routes.len(), 7, "the unsupported redirect code is skipped");
        assert_eq!(action(&routes[0]).prefix_rewrite, "/new");
        assert_eq!(
            action(&routes[0]).host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral("new.example.com".into()))
        );
        assert_eq!(
            action(&routes[1]).regex_rewrite,
            Some(RegexMatchAndSubstitute { pattern: Some(regex("^/re/(.*)")), substitution: "/\\1".into() })
        );
        let redirect = |r: &Route| match &r.action {
            Some(route::Action::Redirect(r)) => r.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            redirect(&routes[2]),
            RedirectAction {
                host_redirect: "other.example.com".into(),
                port_redirect: 8443,
                response_code: RedirectResponseCode::PermanentRedirect as i32,
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("https".into())),
                path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect("/here".into())),
                ..Default::default()
            }
        );
        assert_eq!(redirect(&routes[3]).port_redirect, 0);
        assert_eq!(redirect(&routes[3]).response_code, RedirectResponseCode::MovedPermanently as i32);
        assert_eq!(redirect(&routes[4]).port_redirect, 9080);
        assert_eq!(redirect(&routes[4]).response_code, RedirectResponseCode::Found as i32);
        let direct = |r: &Route| match &r.action {
            Some(route::Action::DirectResponse(d)) => d.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(direct(&routes[5]).status, 418);
        assert_eq!(
            direct(&routes[5]).body.unwrap().specifier,
            Some(data_source::Specifier::InlineString("teapot".into()))
        );
        assert_eq!(
            direct(&routes[6]).body.unwrap().specifier,
            Some(data_source::Specifier::InlineBytes(b"hello".to_vec()))
        );
        assert_eq!(routes[5].decorator.as_ref().unwrap().operation, "reviews-vs:9080/text*");
    }

    #[test]
    fn timeouts_and_retries() {
        let yaml = vs_yaml(
            r#"  - match: [{uri: {prefix: /a}}]
    timeout: 1.5s
    retries: {attempts: 4, perTryTimeout: 500ms, retryOn: "gateway-error, 503,connect-failure,999", retryRemoteLocalities: true, backoff: 25ms}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /b}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /c}}]
    retries: {attempts: 1, retryOn: "502", retryIgnorePreviousHosts: false}
    route: [{destination: {host: reviews}}]
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        let a = action(&routes[0]);
        assert_eq!((a.timeout, a.max_grpc_timeout), (dur(1, 500_000_000), dur(1, 500_000_000)));
        let retry = a.retry_policy.as_ref().unwrap();
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 4 }));
        assert_eq!(retry.retry_on, "gateway-error,connect-failure,999,retriable-status-codes");
        assert_eq!(retry.retriable_status_codes, [503]);
        assert_eq!(retry.per_try_timeout, dur(0, 500_000_000));
        assert_eq!(retry.retry_back_off.as_ref().unwrap().base_interval, dur(0, 25_000_000));
        let priority = retry.retry_priority.as_ref().unwrap();
        assert_eq!(priority.name, "envoy.retry_priorities.previous_priorities");
        let Some(retry_policy::retry_priority::ConfigType::TypedConfig(any)) = &priority.config_type else { panic!() };
        assert_eq!(PreviousPrioritiesConfig::decode(any.value.as_slice()).unwrap().update_frequency, 2);
        assert_eq!(retry.retry_host_predicate.len(), 1);
        assert_eq!((a.timeout, a.max_grpc_timeout), (dur(1, 500_000_000), dur(1, 500_000_000)));

        assert_eq!(action(&routes[1]).retry_policy, None);
        assert_eq!(action(&routes[1]).timeout, dur(0, 0));
        let retry = action(&routes[2]).retry_policy.as_ref().unwrap();
        assert_eq!(
            (retry.retry_on.as_str(), retry.retriable_status_codes.as_slice()),
            ("retriable-status-codes", &[502][..])
        );
        assert!(retry.retry_host_predicate.is_empty());
    }

    #[test]
    fn mesh_default_retry_policy_applies() {
        let mut snap = snapshot(&reviews(), "");
        let policy = serde_json::json!({"attempts": 5, "retryOn": "5xx"});
        snap.mesh.default_http_retry_policy = serde_json::from_value(policy).ok();
        let rcs = translate(&snap, &proxy("default", &[]));
        let retry = action(&vhost(&rcs, 9080, REVIEWS).routes[0]).retry_policy.clone().unwrap();
        assert_eq!((retry.num_retries.unwrap().value, retry.retry_on.as_str()), (5, "5xx"));
    }

    #[test]
    fn fault_cors_and_mirrors() {
        let yaml = vs_yaml(
            r#"  - match: [{uri: {prefix: /fault}}]
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 12.5}}
      abort: {httpStatus: 503, percentage: {value: 0.1}}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\.b\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      exposeHeaders: [x-c]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    mirror: {host: ratings.other.svc.cluster.local}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE}, delay: {fixedDelay: 1s, percent: 30}}
    mirrors:
    - {destination: {host: reviews, subset: shadow}}
    - {destination: {host: reviews, subset: none}, percentage: {value: 0}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /nomirror}}]
    mirror: {host: reviews}
    mirrorPercentage: {value: 0}
    corsPolicy: {allowOrigin: ["https://legacy.example"]}
    route: [{destination: {host: reviews}}]
"#,
        );
        let services = vec![service(REVIEWS, &[(9080, "http")], ""), service(RATINGS, &[(9080, "http")], "")];
        let routes = vs_routes(&services, &yaml, 9080);
        let fault = |r: &Route| {
            let any = &r.typed_per_filter_config["envoy.filters.http.fault"];
            assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault");
            HttpFault::decode(any.value.as_slice()).unwrap()
        };
        let cors = |r: &Route| {
            let any = &r.typed_per_filter_config["envoy.filters.http.cors"];
            assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy");
            EnvoyCorsPolicy::decode(any.value.as_slice()).unwrap()
        };
        let million = |n| Some(FractionalPercent { numerator: n, denominator: DenominatorType::Million as i32 });
        let hundred = |n| Some(FractionalPercent { numerator: n, denominator: DenominatorType::Hundred as i32 });

        let f = fault(&routes[0]);
        let delay = f.delay.unwrap();
        assert_eq!(delay.percentage, million(125_000));
        assert_eq!(
            delay.fault_delay_secifier,
            Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration { seconds: 2, nanos: 0 }))
        );
        let abort = f.abort.unwrap();
        assert_eq!(abort.percentage, million(1000));
        assert_eq!(abort.error_type, Some(fault_abort::ErrorType::HttpStatus(503)));

        let c = cors(&routes[0]);
        assert_eq!(c.allow_origin_string_match.len(), 2);
        assert_eq!(
            (c.allow_methods.as_str(), c.allow_headers.as_str(), c.expose_headers.as_str()),
            ("GET,POST", "x-a,x-b", "x-c")
        );
        assert_eq!(c.max_age, "86400");
        assert_eq!(c.allow_credentials, Some(BoolValue { value: true }));
        assert_eq!(c.forward_not_matching_preflights, Some(BoolValue { value: false }));
        assert_eq!(c.filter_enabled.unwrap().default_value, hundred(100));

        let mirrors = &action(&routes[0]).request_mirror_policies;
        assert_eq!(mirrors.len(), 1);
        assert_eq!(mirrors[0].cluster, "outbound|9080||ratings.other.svc.cluster.local");
        assert_eq!(mirrors[0].runtime_fraction.as_ref().unwrap().default_value, million(500_000));
        assert_eq!(mirrors[0].trace_sampled, Some(BoolValue { value: false }));

        let f = fault(&routes[1]);
        assert_eq!(f.delay.unwrap().percentage, hundred(30));
        let abort = f.abort.unwrap();
        assert_eq!((abort.error_type, abort.percentage), (Some(fault_abort::ErrorType::GrpcStatus(14)), None));
        assert!(!routes[1].typed_per_filter_config.contains_key("envoy.filters.http.cors"));
        let mirrors = &action(&routes[1]).request_mirror_policies;
        assert_eq!(mirrors.len(), 1, "an explicit 0% mirror is dropped");
        assert_eq!(mirrors[0].cluster, "outbound|9080|shadow|reviews.default.svc.cluster.local");
        assert_eq!(mirrors[0].runtime_fraction.as_ref().unwrap().default_value, hundred(100));

        assert!(action(&routes[2]).request_mirror_policies.is_empty());
        assert!(!routes[2].typed_per_filter_config.contains_key("envoy.filters.http.fault"));
        let c = cors(&routes[2]);
        assert_eq!(c.allow_origin_string_match, [string_matcher(&StringMatch::Exact("https://legacy.example".into()))]);
        assert_eq!(c.forward_not_matching_preflights, Some(BoolValue { value: true }));
    }

    #[test]
    fn unsupported_faults_are_dropped() {
        let yaml = vs_yaml(
            r#"  - fault: {delay: {exponentialDelay: 1s}, abort: {http2Error: CANCEL}}
    route: [{destination: {host: reviews}}]
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        assert!(routes[0].typed_per_filter_config.is_empty());
    }

    #[test]
    fn header_operations_and_authority() {
        let yaml = vs_yaml(
            r#"  - match: [{uri: {prefix: /single}}]
    headers:
      request:
        set: {x-b: "1", x-a: "2", ":authority": set.example, host: ignored-too}
        add: {x-c: "3", ":path": /nope}
        remove: [x-d, ":method", Host]
      response:
        set: {x-e: "4"}
        add: {x-f: "5"}
        remove: [x-g]
    route:
    - destination: {host: reviews}
      headers: {request: {set: {x-dest: d, ":authority": dest.example}}, response: {remove: [x-h]}}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers: {request: {add: {x-w: w}, set: {host: w.example}}, response: {set: {x-r: r}}}
    - destination: {host: reviews, subset: v2}
      weight: 50
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        let ops = |list: &[HeaderValueOption]| -> Vec<(String, String, i32)> {
            list.iter()
                .map(|o| {
                    let h = o.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone(), o.append_action)
                })
                .collect()
        };
        let set = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let add = HeaderAppendAction::AppendIfExistsOrAdd as i32;
        let r = &routes[0];
        assert_eq!(
            ops(&r.request_headers_to_add),
            [
                ("x-a".into(), "2".into(), set),
                ("x-b".into(), "1".into(), set),
                ("x-c".into(), "3".into(), add),
                ("x-dest".into(), "d".into(), set)
            ]
        );
        assert_eq!(r.request_headers_to_remove, ["x-d"]);
        assert_eq!(ops(&r.response_headers_to_add), [("x-e".into(), "4".into(), set), ("x-f".into(), "5".into(), add)]);
        assert_eq!(r.response_headers_to_remove, ["x-g", "x-h"]);
        // `host` sorts after `:authority`, so it is the one that wins, as upstream's last-wins.
        assert_eq!(
            action(r).host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral("ignored-too".into()))
        );

        let Some(ClusterSpecifier::WeightedClusters(w)) = &action(&routes[1]).cluster_specifier else { panic!() };
        assert_eq!(ops(&w.clusters[0].request_headers_to_add), [("x-w".into(), "w".into(), add)]);
        assert_eq!(ops(&w.clusters[0].response_headers_to_add), [("x-r".into(), "r".into(), set)]);
        assert!(w.clusters[0].host_rewrite_specifier.is_some());
        assert!(w.clusters[1].request_headers_to_add.is_empty());
    }

    #[test]
    fn virtual_service_owns_vhost_and_non_registry_hosts_get_port_80() {
        let services = vec![service(REVIEWS, &[(9080, "http")], "10.96.0.10"), service(RATINGS, &[(9080, "http")], "")];
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-vs, namespace: default}
spec:
  hosts: [reviews, reviews.example.com]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wildcard, namespace: default}
spec:
  hosts: ["*.other.svc.cluster.local"]
  http: [{route: [{destination: {host: ratings.other.svc.cluster.local, subset: v9}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: external, namespace: default}
spec:
  hosts: [api.external.io]
  http: [{route: [{destination: {host: api.external.io}}]}]
"#;
        let rcs = translate(&snapshot(&services, yaml), &proxy("default", &[]));
        assert_eq!(rcs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["80", "9080"]);
        assert_eq!(
            cluster(&vhost(&rcs, 9080, REVIEWS).routes[0]),
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        );
        assert_eq!(vhost(&rcs, 9080, REVIEWS).domains[0], REVIEWS);
        assert_eq!(cluster(&vhost(&rcs, 9080, RATINGS).routes[0]), "outbound|9080|v9|ratings.other.svc.cluster.local");
        // The VirtualService's extra host rides along on its service's port...
        assert_eq!(vhost(&rcs, 9080, "reviews.example.com").domains, ["reviews.example.com"]);
        // ...and every non-registry host is served on port 80.
        let external = vhost(&rcs, 80, "api.external.io");
        assert_eq!(external.domains, ["api.external.io"]);
        assert_eq!(cluster(&external.routes[0]), "outbound|80||api.external.io");
        assert!(config(&rcs, 80).virtual_hosts.iter().any(|v| v.name == "reviews.example.com:80"));
        assert!(config(&rcs, 80).virtual_hosts.iter().all(|v| v.name != format!("{REVIEWS}:80")));
    }

    #[test]
    fn filtered_out_virtual_service_falls_back_to_default_route() {
        let yaml = vs_yaml(
            r#"  - match: [{sourceLabels: {app: someone-else}}]
    route: [{destination: {host: reviews, subset: v2}}]
"#,
        );
        let rcs = translate(&snapshot(&reviews(), &yaml), &proxy("default", &[("app", "client")]));
        assert_eq!(vhost(&rcs, 9080, REVIEWS).routes[0].name, "default");
    }

    #[test]
    fn untranslatable_rules_are_skipped_without_panicking() {
        let yaml = vs_yaml(
            r#"  - name: delegated
    delegate: {name: child}
  - name: empty
    match: [{uri: {prefix: /empty}}]
  - name: zero
    match: [{uri: {prefix: /zero}}]
    route: [{destination: {host: reviews}, weight: 0}, {destination: {host: reviews, subset: b}, weight: 0}]
  - name: bad-bytes
    match: [{uri: {prefix: /bytes}}]
    directResponse: {status: 200, body: {bytes: "!!!"}}
  - name: fine
    route: [{destination: {host: reviews}}]
"#,
        );
        let routes = vs_routes(&reviews(), &yaml, 9080);
        assert_eq!(routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["fine"]);
    }

    #[test]
    fn gateways_reuse_the_rule_builder() {
        let yaml = vs_yaml(
            r#"  - match: [{gateways: [istio-system/ingress], uri: {prefix: /gw}}, {uri: {prefix: /all}}]
    route: [{destination: {host: reviews}}]
"#,
        );
        let snap = snapshot(&reviews(), &yaml);
        let p = proxy("istio-system", &[]);
        let ctx = Context::new(&snap, &p);
        assert_eq!(http_routes_for_gateways(&ctx, &snap.virtual_services[0], 80, &["istio-system/ingress"]).len(), 2);
        assert_eq!(http_routes(&ctx, &snap.virtual_services[0], 80).len(), 1);
    }

    #[test]
    fn output_is_deterministic() {
        let services = vec![
            service(REVIEWS, &[(9080, "http")], "10.96.0.10"),
            service(RATINGS, &[(9080, "http")], "10.96.0.11"),
            service("api.example.com", &[(443, "https"), (80, "http")], ""),
        ];
        let yaml = vs_yaml("  - route: [{destination: {host: reviews}}]\n    fault: {abort: {httpStatus: 500}}\n");
        let snap = snapshot(&services, &yaml);
        let p = proxy("default", &[]);
        assert_eq!(translate(&snap, &p), translate(&snap, &p));
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(decode_base64("YQ").unwrap(), b"a");
        assert!(decode_base64("a$b").is_none());
    }
}
