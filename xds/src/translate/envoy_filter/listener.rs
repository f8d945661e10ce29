//! LISTENER, LISTENER_FILTER, FILTER_CHAIN, NETWORK_FILTER and HTTP_FILTER patches, walked as
//! Istio walks them: for each listener its own patches (REMOVE, MERGE), then its listener
//! filters, then each filter chain (REMOVE, MERGE, then its network filters: the inserting
//! operations in patch order, then MERGEs; then the HTTP filters of an HTTP connection
//! manager), then the chains to ADD; the listeners to ADD last. An ADD of a network or HTTP
//! filter with a `filterClass` goes where the class says (see [`class_position`]), not last.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, ListenerFilter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use rudder_config::networking::envoy_filter::{
    ApplyTo, FilterClass, FilterMatch, ListenerMatch, Operation, PatchContext,
};

use super::{Patch, Patches, Skipped, finish, merge_socket, value};
use crate::translate::authz::{HTTP_RBAC, JWT_FILTER, NETWORK_RBAC};
use crate::translate::context::{VIRTUAL_INBOUND, VIRTUAL_OUTBOUND};
use crate::translate::listener::hcm::{ROUTER_FILTER, TCP_PROXY};

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

const LISTENER_KINDS: [ApplyTo; 5] =
    [ApplyTo::Listener, ApplyTo::ListenerFilter, ApplyTo::FilterChain, ApplyTo::NetworkFilter, ApplyTo::HttpFilter];
const ROUTE_KINDS: [ApplyTo; 3] = [ApplyTo::RouteConfiguration, ApplyTo::VirtualHost, ApplyTo::HttpRoute];

impl<'a> Patches<'a> {
    /// Applies the listener-class patches for `context` to `listeners`; `adds` says whether
    /// LISTENER ADDs go here (one set per context). For SIDECAR_INBOUND the route
    /// configurations inline in the HTTP connection managers get the route patches too.
    pub fn apply_listeners(&self, context: PatchContext, listeners: &mut Vec<Listener>, adds: bool) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        let patches = self.usable(&LISTENER_KINDS, context, &mut skipped);
        let inline_routes = if context == PatchContext::SidecarInbound {
            self.usable(&ROUTE_KINDS, context, &mut skipped)
        } else {
            Patches::default()
        };
        if patches.is_empty() && inline_routes.is_empty() {
            return skipped;
        }
        let walk = Walk { patches: &patches, routes: &inline_routes, context };
        listeners.retain_mut(|listener| walk.listener(listener, &mut skipped));
        if adds {
            for p in patches.of(ApplyTo::Listener, context) {
                if p.operation != Operation::Add
                    || (p.context == PatchContext::Any
                        && !matches!(context, PatchContext::SidecarOutbound | PatchContext::Gateway))
                {
                    continue;
                }
                match p.message::<Listener>() {
                    Ok(listener) => listeners.push(listener),
                    Err(why) => skipped.push(why),
                }
            }
        }
        finish(skipped)
    }
}

struct Walk<'p, 'a> {
    patches: &'p Patches<'a>,
    routes: &'p Patches<'a>,
    context: PatchContext,
}

impl Walk<'_, '_> {
    fn of(&self, apply_to: ApplyTo) -> impl Iterator<Item = &Patch<'_>> {
        self.patches.of(apply_to, self.context)
    }

    /// Patches one listener; false when a patch removes it.
    fn listener(&self, listener: &mut Listener, skipped: &mut Vec<Skipped>) -> bool {
        for p in self.of(ApplyTo::Listener) {
            if !listener_matches(listener, p) {
                continue;
            }
            match p.operation {
                Operation::Remove => return false,
                Operation::Merge => {
                    if let Err(why) = p.merge_into(listener) {
                        skipped.push(why);
                    }
                }
                _ => {}
            }
        }
        self.listener_filters(listener, skipped);
        let view = Listener { name: listener.name.clone(), address: listener.address.clone(), ..Default::default() };
        listener.filter_chains.retain_mut(|chain| self.filter_chain(&view, chain, skipped));
        if let Some(chain) = listener.default_filter_chain.as_mut()
            && !self.filter_chain(&view, chain, skipped)
        {
            listener.default_filter_chain = None;
        }
        for p in self.of(ApplyTo::FilterChain) {
            if p.operation == Operation::Add && listener_matches(listener, p) {
                match p.message::<FilterChain>() {
                    Ok(chain) => listener.filter_chains.push(chain),
                    Err(why) => skipped.push(why),
                }
            }
        }
        true
    }

    fn listener_filters(&self, listener: &mut Listener, skipped: &mut Vec<Skipped>) {
        let patches: Vec<&Patch<'_>> =
            self.of(ApplyTo::ListenerFilter).filter(|p| listener_matches(listener, p)).collect();
        for p in patches {
            let name = p.listener_match().map(|m| m.listener_filter.as_str()).unwrap_or_default();
            let found = (!name.is_empty()).then(|| listener.listener_filters.iter().position(|f| f.name == name));
            if p.operation == Operation::Remove {
                if !name.is_empty() {
                    listener.listener_filters.retain(|f| f.name != name);
                }
                continue;
            }
            let new = match p.message::<ListenerFilter>() {
                Ok(new) => new,
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            };
            insert(&mut listener.listener_filters, p.operation, found, new);
        }
    }

    /// Patches one filter chain; false when a patch removes it.
    fn filter_chain(&self, listener: &Listener, chain: &mut FilterChain, skipped: &mut Vec<Skipped>) -> bool {
        for p in self.of(ApplyTo::FilterChain) {
            if !listener_matches(listener, p) || !filter_chain_matches(listener, chain, p) {
                continue;
            }
            match p.operation {
                Operation::Remove => return false,
                Operation::Merge => {
                    if let Err(why) = merge_filter_chain(chain, p) {
                        skipped.push(why);
                    }
                }
                _ => {}
            }
        }
        let patches: Vec<&Patch<'_>> = self
            .of(ApplyTo::NetworkFilter)
            .filter(|p| listener_matches(listener, p) && filter_chain_matches(listener, chain, p))
            .collect();
        let mut filters = Classed::new(std::mem::take(&mut chain.filters));
        for p in &patches {
            let name = p.filter_match().map(|f| f.name.as_str()).unwrap_or_default();
            let found = (!name.is_empty()).then(|| filters.list.iter().position(|(f, _)| f.name == name));
            match p.operation {
                Operation::Merge => continue,
                Operation::Remove => {
                    if !name.is_empty() {
                        filters.list.retain(|(f, _)| f.name != name);
                    }
                    continue;
                }
                _ => {}
            }
            match p.message::<Filter>() {
                Ok(new) => filters.insert(p, found, new, &NETWORK_ANCHORS, |f| &f.name),
                Err(why) => skipped.push(why),
            }
        }
        chain.filters = filters.into_list();
        let view = chain_view(chain);
        for filter in &mut chain.filters {
            for p in &patches {
                if p.operation == Operation::Merge
                    && network_filter_matches(filter, p)
                    && let Err(why) = merge_filter(filter, p)
                {
                    skipped.push(why);
                }
            }
            if filter.name == HTTP_CONNECTION_MANAGER {
                self.http_connection_manager(listener, &view, filter, skipped);
            }
        }
        true
    }

    fn http_connection_manager(
        &self,
        listener: &Listener,
        chain: &FilterChain,
        filter: &mut Filter,
        skipped: &mut Vec<Skipped>,
    ) {
        let patches: Vec<&Patch<'_>> = self
            .of(ApplyTo::HttpFilter)
            .filter(|p| {
                listener_matches(listener, p)
                    && filter_chain_matches(listener, chain, p)
                    && network_filter_matches(filter, p)
            })
            .collect();
        if patches.is_empty() && self.routes.is_empty() {
            return;
        }
        let Some(FilterConfig::TypedConfig(any)) = filter.config_type.as_mut() else { return };
        let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { return };
        let generated = hcm.clone();
        let mut filters = Classed::new(std::mem::take(&mut hcm.http_filters));
        for p in &patches {
            let name =
                p.filter_match().and_then(|f| f.sub_filter.as_ref()).map(|s| s.name.as_str()).unwrap_or_default();
            let found = (!name.is_empty()).then(|| filters.list.iter().position(|(f, _)| f.name == name));
            match p.operation {
                Operation::Merge => continue,
                Operation::Remove => {
                    if !name.is_empty() {
                        filters.list.retain(|(f, _)| f.name != name);
                    }
                    continue;
                }
                _ => {}
            }
            match p.message::<HttpFilter>() {
                Ok(new) => filters.insert(p, found, new, &HTTP_ANCHORS, |f| &f.name),
                Err(why) => skipped.push(why),
            }
        }
        hcm.http_filters = filters.into_list();
        for http_filter in &mut hcm.http_filters {
            for p in &patches {
                if p.operation == Operation::Merge
                    && http_filter_matches(http_filter, p)
                    && let Err(why) = merge_http_filter(http_filter, p)
                {
                    skipped.push(why);
                }
            }
        }
        if let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier.as_mut() {
            skipped.extend(self.routes.apply_routes(self.context, std::slice::from_mut(rc), &BTreeMap::new()));
        }
        // Encoded again only when a patch changed it.
        if hcm != generated {
            any.value = hcm.encode_to_vec();
        }
    }
}

/// What a filter chain match reads of a chain (its name and match), so the chain's filters
/// can be changed while it is matched against.
fn chain_view(chain: &FilterChain) -> FilterChain {
    FilterChain { name: chain.name.clone(), filter_chain_match: chain.filter_chain_match.clone(), ..Default::default() }
}

/// The generated filters that `patch.filterClass` places added filters against.
struct Anchors {
    /// Authentication filters: AUTHN goes right after the last of them.
    authn: &'static [&'static str],
    /// Authorization filters: AUTHZ goes right after the last of them.
    authz: &'static [&'static str],
    /// Terminal filters (the router, tcp_proxy, the connection manager): STATS goes right
    /// before the first, where Istio's stats filter is; nothing class-placed goes after it.
    terminal: &'static [&'static str],
}

/// HTTP filters: the JWT filter (RequestAuthentication) authenticates, RBAC (the
/// AuthorizationPolicies) authorizes. Rudder has no stats filter (its statistics are access
/// logs), so STATS goes right before the router.
const HTTP_ANCHORS: Anchors = Anchors { authn: &[JWT_FILTER], authz: &[HTTP_RBAC], terminal: &[ROUTER_FILTER] };

/// Network filters: no authentication filter (mutual TLS is the transport socket), network
/// RBAC authorizes, tcp_proxy or the HTTP connection manager ends the chain.
const NETWORK_ANCHORS: Anchors =
    Anchors { authn: &[], authz: &[NETWORK_RBAC], terminal: &[TCP_PROXY, HTTP_CONNECTION_MANAGER] };

/// A filter list being patched, each filter with the class of the patch that added it (`None`
/// for the generated ones and those placed by the operation), so that filters added with the
/// same class keep the order of their patches.
struct Classed<T> {
    list: Vec<(T, Option<FilterClass>)>,
}

impl<T> Classed<T> {
    fn new(list: Vec<T>) -> Self {
        Self { list: list.into_iter().map(|f| (f, None)).collect() }
    }

    fn into_list(self) -> Vec<T> {
        self.list.into_iter().map(|(f, _)| f).collect()
    }

    /// Applies an inserting operation of `p` (see [`insert`]); an ADD with a filter class
    /// goes where [`class_position`] says instead of last.
    fn insert(&mut self, p: &Patch<'_>, found: Option<Option<usize>>, new: T, anchors: &Anchors, name: fn(&T) -> &str) {
        match (p.operation, p.filter_class) {
            (Operation::Add, class @ (FilterClass::Authn | FilterClass::Authz | FilterClass::Stats)) => {
                let at = class_position(&self.list, class, anchors, name);
                self.list.insert(at, (new, Some(class)));
            }
            (operation, _) => insert(&mut self.list, operation, found, (new, None)),
        }
    }
}

/// Where an ADD of `class` goes in `list`, as Istio documents `filterClass`: AUTHN right after
/// the authentication filters, AUTHZ right after the authorization filters, STATS right before
/// the stats filter (here: the terminal filter). Without the filters a class is placed against,
/// it goes where they would be: AUTHN before the authorization filters (or the STATS place),
/// AUTHZ at the AUTHN place. Filters added earlier with a class count as filters of that class,
/// so each class keeps its patches' order and AUTHN ≤ AUTHZ ≤ STATS.
fn class_position<T>(
    list: &[(T, Option<FilterClass>)],
    class: FilterClass,
    anchors: &Anchors,
    name: fn(&T) -> &str,
) -> usize {
    let stats = list.iter().position(|(f, _)| anchors.terminal.contains(&name(f))).unwrap_or(list.len());
    let head = &list[..stats];
    // Where the STATS filters added so far begin: AUTHN and AUTHZ go before them.
    let stats_start = head.iter().position(|(_, tag)| *tag == Some(FilterClass::Stats)).unwrap_or(stats);
    let authn_filter =
        |(f, tag): &(T, Option<FilterClass>)| *tag == Some(FilterClass::Authn) || anchors.authn.contains(&name(f));
    let authz_filter =
        |(f, tag): &(T, Option<FilterClass>)| *tag == Some(FilterClass::Authz) || anchors.authz.contains(&name(f));
    let authn = head
        .iter()
        .rposition(authn_filter)
        .map(|i| i + 1)
        .or_else(|| head.iter().position(authz_filter))
        .unwrap_or(stats_start);
    match class {
        FilterClass::Authn => authn,
        FilterClass::Authz => head.iter().rposition(authz_filter).map_or(authn, |i| i + 1).max(authn),
        FilterClass::Stats | FilterClass::Unspecified => stats,
    }
}

/// ADD, INSERT_FIRST, INSERT_BEFORE, INSERT_AFTER or REPLACE of `new` into `list`; `found` is
/// the position of the element the patch's match names (`None` when it names none, `Some(None)`
/// when it names one that is not there).
fn insert<T>(list: &mut Vec<T>, operation: Operation, found: Option<Option<usize>>, new: T) {
    match (operation, found) {
        (Operation::Add, _) | (Operation::InsertAfter, None) => list.push(new),
        (Operation::InsertFirst, _) | (Operation::InsertBefore, None) => list.insert(0, new),
        (Operation::InsertBefore, Some(Some(i))) => list.insert(i, new),
        (Operation::InsertAfter, Some(Some(i))) => list.insert(i + 1, new),
        (Operation::Replace, Some(Some(i))) => list[i] = new,
        _ => {}
    }
}

impl Patch<'_> {
    fn listener_match(&self) -> Option<&ListenerMatch> {
        self.matches.and_then(|m| m.listener.as_ref())
    }

    fn filter_match(&self) -> Option<&FilterMatch> {
        self.listener_match().and_then(|l| l.filter_chain.as_ref()).and_then(|c| c.filter.as_ref())
    }
}

fn is_virtual(listener: &Listener) -> bool {
    listener.name == VIRTUAL_INBOUND || listener.name == VIRTUAL_OUTBOUND
}

fn listener_port(listener: &Listener) -> Option<u32> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match listener.address.as_ref()?.address.as_ref()? {
        Kind::SocketAddress(socket) => match socket.port_specifier {
            Some(PortSpecifier::PortValue(port)) => Some(port),
            _ => None,
        },
        _ => None,
    }
}

/// Istio's listener match: `name`, and `portNumber` against the listener's port (on the
/// virtual listeners, for patches below LISTENER, against the chain's destination port).
pub fn listener_matches(listener: &Listener, p: &Patch<'_>) -> bool {
    let Some(m) = p.listener_match() else { return true };
    if !m.name.is_empty() && m.name != listener.name {
        return false;
    }
    if p.apply_to != ApplyTo::Listener && is_virtual(listener) {
        return true;
    }
    m.port_number.is_none_or(|want| want == 0 || listener_port(listener) == Some(want))
}

/// Istio's filter chain match (the listener matched already).
pub fn filter_chain_matches(listener: &Listener, chain: &FilterChain, p: &Patch<'_>) -> bool {
    let Some(m) = p.listener_match() else { return true };
    let fcm = chain.filter_chain_match.as_ref();
    let destination_port = fcm.and_then(|f| f.destination_port.as_ref()).map(|p| p.value);
    if is_virtual(listener)
        && let Some(want) = m.port_number.filter(|p| *p > 0)
        && destination_port != Some(want)
    {
        return false;
    }
    let Some(c) = &m.filter_chain else { return true };
    if !c.name.is_empty() && c.name != chain.name {
        return false;
    }
    if !c.sni.is_empty() && !fcm.is_some_and(|f| f.server_names.contains(&c.sni)) {
        return false;
    }
    if !c.transport_protocol.is_empty() && fcm.is_none_or(|f| f.transport_protocol != c.transport_protocol) {
        return false;
    }
    if !c.application_protocols.is_empty()
        && !fcm
            .is_some_and(|f| c.application_protocols.split(',').all(|p| f.application_protocols.iter().any(|a| a == p)))
    {
        return false;
    }
    if let Some(want) = c.destination_port.filter(|p| *p > 0)
        && destination_port != Some(want)
    {
        return false;
    }
    true
}

fn network_filter_matches(filter: &Filter, p: &Patch<'_>) -> bool {
    p.filter_match().is_none_or(|m| m.name == filter.name)
}

fn http_filter_matches(filter: &HttpFilter, p: &Patch<'_>) -> bool {
    p.filter_match().and_then(|m| m.sub_filter.as_ref()).is_none_or(|s| s.name == filter.name)
}

/// A MERGE into a filter chain: a transport socket of the chain's socket name merges inside
/// its typed config (without a socket on the chain, or with another name, the protobuf merge
/// below sets it); the rest merges as protobuf.
fn merge_filter_chain(chain: &mut FilterChain, p: &Patch<'_>) -> Result<(), Skipped> {
    let mut patch: FilterChain = p.message()?;
    if let (Some(existing), Some(socket)) = (chain.transport_socket.as_mut(), patch.transport_socket.as_ref())
        && existing.name == socket.name
    {
        merge_socket(existing, socket).map_err(|f| p.skipped("patch.value.transportSocket", f.reason))?;
        patch.transport_socket = None;
    }
    chain.merge(patch.encode_to_vec().as_slice()).map_err(|e| p.skipped("patch.value", format!("does not merge: {e}")))
}

/// Istio's MERGE into a filter with a typed config: the patch's name (when given) renames it,
/// and its typed config merges inside the filter's (taken as the filter's type). A filter
/// without a typed config is left alone.
fn merge_typed(
    name: &mut String,
    dst: Option<&mut Any>,
    patch_name: String,
    src: Option<&Any>,
) -> Result<(), value::Failure> {
    let Some(dst) = dst else { return Ok(()) };
    if let Some(src) = src {
        value::merge_any(dst, src)?;
    }
    if !patch_name.is_empty() {
        *name = patch_name;
    }
    Ok(())
}

fn merge_filter(filter: &mut Filter, p: &Patch<'_>) -> Result<(), Skipped> {
    let patch: Filter = p.message()?;
    let src = match &patch.config_type {
        Some(FilterConfig::TypedConfig(any)) => Some(any),
        _ => None,
    };
    let dst = match filter.config_type.as_mut() {
        Some(FilterConfig::TypedConfig(any)) => Some(any),
        _ => None,
    };
    merge_typed(&mut filter.name, dst, patch.name.clone(), src)
        .map_err(|f| p.skipped("patch.value.typedConfig", f.reason))
}

fn merge_http_filter(filter: &mut HttpFilter, p: &Patch<'_>) -> Result<(), Skipped> {
    let patch: HttpFilter = p.message()?;
    let src = match &patch.config_type {
        Some(HttpFilterConfig::TypedConfig(any)) => Some(any),
        _ => None,
    };
    let dst = match filter.config_type.as_mut() {
        Some(HttpFilterConfig::TypedConfig(any)) => Some(any),
        _ => None,
    };
    merge_typed(&mut filter.name, dst, patch.name.clone(), src)
        .map_err(|f| p.skipped("patch.value.typedConfig", f.reason))
}
