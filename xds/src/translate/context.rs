//! What translation looks up for one proxy: host name resolution, the DestinationRule of a
//! host, the VirtualServices and Sidecar that apply, and the names Envoy resources get.

use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rudder_config::mesh::OutboundTrafficPolicyMode;
use rudder_config::networking::{DestinationRule, Sidecar, VirtualService};

use crate::model::{InterceptionMode, Protocol, Proxy, Service, Snapshot, exported_to, labels_match};

use rudder_config::hosts::scoped_host;
pub use rudder_config::hosts::{DOMAIN_SUFFIX, host_matches, resolve_host};

/// Cluster name of a service port and subset: `outbound|<port>|<subset>|<host>`.
pub fn outbound_cluster_name(port: u32, subset: &str, host: &str) -> String {
    // Names are joined with `concat` (one allocation of the exact length), not `format!`: a
    // few per cluster and route, tens of thousands per view, and `format!` took ~13 % of an
    // outbound translation, most of it in the formatting machinery rather than in copying.
    ["outbound|", itoa::Buffer::new().format(port), "|", subset, "|", host].concat()
}

/// Cluster name of a workload port: `inbound|<port>||`.
pub fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Listener name: `<bind>_<port>`.
pub fn listener_name(bind: &str, port: u32) -> String {
    format!("{bind}_{port}")
}

pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";

/// `filter_metadata.istio.config`: the Istio object a resource was built from, as istiod
/// writes it (`/apis/networking.istio.io/v1/namespaces/<ns>/<resource>/<name>`), which
/// `proxy-config` and dashboards read.
///
/// Every route and cluster carries one, so it is usually written straight into an encoding
/// ([`field`](Self::field)): the same bytes prost writes for the [`message`](Self::message),
/// without building its two maps and three strings (building, encoding and dropping the
/// message was a twentieth of a sidecar's routes and clusters).
#[derive(Debug, Clone, Copy)]
pub struct ConfigMetadata<'a> {
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl ConfigMetadata<'_> {
    const PREFIX: &'static str = "/apis/networking.istio.io/v1/namespaces/";

    /// Lengths, innermost first: the reference, the `Value`, the `fields` entry, the `Struct`,
    /// the `filter_metadata` entry and the `Metadata`.
    fn lens(&self) -> [usize; 6] {
        use crate::protowire::{delimited_len, string_field_len};
        let reference = Self::PREFIX.len() + self.namespace.len() + 1 + self.resource.len() + 1 + self.name.len();
        let value = delimited_len(3, reference);
        let field_entry = string_field_len(1, b"config") + delimited_len(2, value);
        let fields = delimited_len(1, field_entry);
        let metadata_entry = string_field_len(1, b"istio") + delimited_len(2, fields);
        let metadata = delimited_len(1, metadata_entry);
        [reference, value, field_entry, fields, metadata_entry, metadata]
    }

    /// The `Metadata` as field `tag`: key, length and message, to append to an encoding.
    pub fn field(&self, tag: u32) -> Vec<u8> {
        use crate::protowire::{delimited_len, put_delimited_header, put_string_field};
        let [reference, value, field_entry, fields, metadata_entry, metadata] = self.lens();
        let mut out = Vec::with_capacity(delimited_len(tag, metadata));
        put_delimited_header(tag, metadata, &mut out);
        put_delimited_header(1, metadata_entry, &mut out);
        put_string_field(1, b"istio", &mut out);
        put_delimited_header(2, fields, &mut out);
        put_delimited_header(1, field_entry, &mut out);
        put_string_field(1, b"config", &mut out);
        put_delimited_header(2, value, &mut out);
        put_delimited_header(3, reference, &mut out);
        for part in [Self::PREFIX, self.namespace, "/", self.resource, "/", self.name] {
            out.extend_from_slice(part.as_bytes());
        }
        out
    }

    /// The message, for resources kept as messages.
    pub fn message(&self) -> envoy_types::pb::envoy::config::core::v3::Metadata {
        use envoy_types::pb::google::protobuf::{Struct, Value, value};
        let reference = [Self::PREFIX, self.namespace, "/", self.resource, "/", self.name].concat();
        let fields = HashMap::from([("config".to_owned(), Value { kind: Some(value::Kind::StringValue(reference)) })]);
        envoy_types::pb::envoy::config::core::v3::Metadata {
            filter_metadata: HashMap::from([("istio".to_owned(), Struct { fields })]),
            ..Default::default()
        }
    }
}

/// Whether a policy of `namespace` whose `targetRef`/`targetRefs` are `refs` is attached to
/// `proxy`: a Gateway API `Gateway` of that namespace that the proxy serves (its deployment's
/// `gateway.networking.k8s.io/gateway-name` label), as Istio attaches policies to gateways.
/// Other kinds (Services of ambient waypoints, GatewayClasses) name nothing Rudder runs.
pub fn targets_proxy<'r>(
    namespace: &str,
    refs: impl IntoIterator<Item = &'r rudder_config::common::PolicyTargetReference>,
    proxy: &Proxy,
) -> bool {
    let Some(gateway) = proxy.labels.get(super::wasm::GATEWAY_NAME_LABEL) else { return false };
    namespace == proxy.namespace
        && refs.into_iter().any(|t| {
            t.group == "gateway.networking.k8s.io"
                && t.kind == "Gateway"
                && t.name == *gateway
                && (t.namespace.is_empty() || t.namespace == namespace)
        })
}

/// Translation inputs for one proxy.
#[derive(Debug)]
pub struct Context<'a> {
    pub snapshot: &'a Snapshot,
    pub proxy: &'a Proxy,
    /// The Sidecar that applies to this proxy, if any.
    pub sidecar: Option<&'a Arc<Sidecar>>,
    /// DestinationRules by resolved host, so [`Context::destination_rule`] does not scan (and
    /// resolve) every rule for every lookup: translation asks once per service and per route
    /// destination, which made it quadratic in the mesh size.
    /// Built on first use: inbound translation never asks, and it runs per proxy.
    rules: std::cell::OnceCell<RuleIndex<'a>>,
    /// The last upstream HTTP options a cluster packed into an `Any`, with the packing:
    /// neighbouring clusters mostly share theirs (one DestinationRule, one protocol), and
    /// packing them was a tenth of building a cluster.
    pub(super) packed_http: std::cell::RefCell<Option<(HttpProtocolOptions, envoy_types::pb::google::protobuf::Any)>>,
}

/// DestinationRules with their hosts resolved once: exact hosts in a map, wildcards in a list.
/// Both keep the snapshot order of the rules (ties are broken by it).
#[derive(Debug, Default)]
struct RuleIndex<'a> {
    exact: foldhash::HashMap<String, Vec<&'a Arc<DestinationRule>>>,
    wildcard: Vec<(String, &'a Arc<DestinationRule>)>,
}

impl<'a> RuleIndex<'a> {
    fn new(rules: &'a [Arc<DestinationRule>]) -> Self {
        let mut index = Self::default();
        for dr in rules {
            let host = resolve_host(&dr.spec.host, dr.metadata.namespace.as_deref().unwrap_or_default());
            if host.starts_with('*') {
                index.wildcard.push((host, dr));
            } else {
                index.exact.entry(host).or_default().push(dr);
            }
        }
        index
    }

    /// Rules whose host covers `hostname`, with their resolved host: the exact ones, then the
    /// wildcards, each in snapshot order. Rules of equal specificity come from the same list,
    /// so ranking them by specificity keeps snapshot order among equals.
    fn covering<'s>(&'s self, hostname: &'s str) -> impl Iterator<Item = (&'s str, &'a Arc<DestinationRule>)> + 's {
        let exact = self
            .exact
            .get_key_value(hostname)
            .into_iter()
            .flat_map(|(host, rules)| rules.iter().map(move |dr| (host.as_str(), *dr)));
        let wildcard = self
            .wildcard
            .iter()
            .filter(move |(host, _)| host_matches(host, hostname))
            .map(|(host, dr)| (host.as_str(), *dr));
        exact.chain(wildcard)
    }
}

impl<'a> Context<'a> {
    pub fn new(snapshot: &'a Snapshot, proxy: &'a Proxy) -> Self {
        Self {
            snapshot,
            proxy,
            sidecar: sidecar_for(snapshot, proxy),
            rules: std::cell::OnceCell::new(),
            packed_http: Default::default(),
        }
    }

    /// Services this proxy may reach: exported to its namespace (and, with a Sidecar, listed
    /// in its egress hosts), in hostname order.
    pub fn services(&self) -> impl Iterator<Item = &'a Arc<Service>> + '_ {
        self.snapshot
            .services
            .values()
            .filter(move |s| s.visible_from(&self.proxy.namespace) && self.sidecar_allows(&s.namespace, &s.hostname))
    }

    /// The service with this hostname, when visible.
    pub fn service(&self, hostname: &str) -> Option<&'a Arc<Service>> {
        self.snapshot.services.get(hostname).filter(|s| s.visible_from(&self.proxy.namespace))
    }

    /// Whether the Sidecar's egress hosts (`ns/host`, `./host`, `*/host`) admit this host on
    /// some port.
    pub(crate) fn sidecar_allows(&self, namespace: &str, hostname: &str) -> bool {
        let Some(sidecar) = self.sidecar else { return true };
        if sidecar.spec.egress.is_empty() {
            return true;
        }
        sidecar.spec.egress.iter().any(|e| self.hosts_admit(&e.hosts, namespace, hostname))
    }

    /// Whether `port` of `service` is in the proxy's scope: the Sidecar's egress listener for
    /// that port decides when it has one, else its listener without a port (the catch-all);
    /// with neither, the port is out of scope.
    pub fn port_visible(&self, service: &Service, port: u32) -> bool {
        let Some(sidecar) = self.sidecar else { return true };
        let egress = &sidecar.spec.egress;
        if egress.is_empty() {
            return true;
        }
        let entry = egress
            .iter()
            .find(|e| e.port.as_ref().and_then(|p| p.number) == Some(port))
            .or_else(|| egress.iter().find(|e| e.port.is_none()));
        entry.is_some_and(|e| self.hosts_admit(&e.hosts, &service.namespace, &service.hostname))
    }

    /// The protocol the Sidecar's egress listener for `port` declares (its `protocol`, else
    /// what its `name` implies, as for service ports): the outbound listener on that port takes
    /// it over its services' own. `None` when there is no such listener or it declares none.
    pub fn egress_port_protocol(&self, port: u32) -> Option<Protocol> {
        let sidecar = self.sidecar?;
        let declared = sidecar.spec.egress.iter().filter_map(|e| e.port.as_ref()).find(|p| p.number == Some(port))?;
        let protocol = Protocol::of_port(Some(&declared.protocol), &declared.name);
        (protocol != Protocol::Unsupported).then_some(protocol)
    }

    /// The protocol outbound traffic to `port` of a service is handled as: the Sidecar's egress
    /// listener's for that port number when it declares one, else the port's own.
    pub fn outbound_protocol(&self, port: &crate::model::ServicePort) -> Protocol {
        self.egress_port_protocol(port.port).unwrap_or(port.protocol)
    }

    /// Where the Sidecar's egress listener for `port` binds, when it asks for a real bind:
    /// its `bind`, else 127.0.0.1 for `captureMode: NONE` (nothing redirects traffic to it, so
    /// the application must address the proxy); `None` when traffic reaches the port by capture.
    pub fn egress_bind(&self, port: u32) -> Option<String> {
        use rudder_config::networking::sidecar::CaptureMode;
        let entry = self.sidecar?.spec.egress.iter().find(|e| e.port.as_ref().and_then(|p| p.number) == Some(port))?;
        if !entry.bind.is_empty() {
            return Some(entry.bind.clone());
        }
        (entry.capture_mode == Some(CaptureMode::None)).then(|| "127.0.0.1".to_owned())
    }

    fn hosts_admit(&self, hosts: &[String], namespace: &str, hostname: &str) -> bool {
        let own = self.sidecar.and_then(|s| s.metadata.namespace.as_deref()).unwrap_or_default();
        hosts.iter().any(|h| scoped_host(h, own, namespace).is_some_and(|host| host_matches(host, hostname)))
    }

    /// The DestinationRule for `hostname` as this proxy sees it: among visible rules whose
    /// host covers it (the most specific host first), one in the proxy's namespace wins, then
    /// one in the service's namespace, then one in the root namespace, then any other; among
    /// equals, one whose `workloadSelector` selects the proxy beats one without.
    pub fn destination_rule(&self, hostname: &str) -> Option<&'a Arc<DestinationRule>> {
        // Looked up only when a rule outside the proxy's namespace needs ranking.
        let service_ns = std::cell::OnceCell::new();
        let service_ns = || {
            *service_ns
                .get_or_init(|| self.snapshot.services.get(hostname).map(|s| s.namespace.as_str()).unwrap_or_default())
        };
        let root = self.snapshot.root_namespace();
        let proxy_ns = self.proxy.namespace.as_str();
        self.rules
            .get_or_init(|| RuleIndex::new(&self.snapshot.destination_rules))
            .covering(hostname)
            .filter_map(|(host, dr)| {
                let ns = dr.metadata.namespace.as_deref().unwrap_or_default();
                if !exported_to(&dr.spec.export_to, ns, proxy_ns) {
                    return None;
                }
                if let Some(sel) = &dr.spec.workload_selector
                    && (ns != proxy_ns || !labels_match(&sel.match_labels, &self.proxy.labels))
                {
                    return None;
                }
                let ns_rank = if ns == proxy_ns {
                    0
                } else if ns == service_ns() {
                    1
                } else if ns == root {
                    2
                } else {
                    3
                };
                // Exact hosts before wildcards, longer wildcards before shorter.
                let specificity = if host.starts_with('*') { usize::MAX - host.len() } else { 0 };
                // A rule that selects this workload beats its namespace's general one.
                let general = dr.spec.workload_selector.is_none();
                Some(((specificity, ns_rank, general), dr))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, dr)| dr)
    }

    /// VirtualServices bound to the mesh (sidecars): `gateways` empty or naming `mesh`,
    /// exported to the proxy's namespace and, with a Sidecar, admitted by its egress hosts, in
    /// snapshot order (namespace, name).
    pub fn mesh_virtual_services(&self) -> impl Iterator<Item = &'a Arc<VirtualService>> + '_ {
        self.snapshot.virtual_services.iter().filter(move |vs| {
            let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
            let bound = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
            // A Sidecar's egress hosts scope VirtualServices too (by their own namespace), or
            // every VirtualService of the mesh would still bring its hosts along.
            let in_scope = || vs.spec.hosts.iter().any(|h| self.sidecar_allows(ns, &resolve_host(h, ns)));
            bound && exported_to(&vs.spec.export_to, ns, &self.proxy.namespace) && in_scope()
        })
    }

    /// ALLOW_ANY or REGISTRY_ONLY: the Sidecar's setting, else the mesh's.
    /// The cluster unknown destinations go to: BlackHoleCluster under REGISTRY_ONLY, the
    /// Sidecar's `outboundTrafficPolicy.egressProxy` (`outbound|<port>|<subset>|<host>`, its
    /// host read in the Sidecar's namespace) under ALLOW_ANY when it names one, else
    /// PassthroughCluster.
    pub fn unknown_destination_cluster(&self) -> String {
        if self.registry_only() {
            return BLACKHOLE_CLUSTER.to_owned();
        }
        let egress_proxy = self
            .sidecar
            .and_then(|s| Some((s, s.spec.outbound_traffic_policy.as_ref()?.egress_proxy.as_ref()?)))
            .and_then(|(sidecar, proxy)| {
                let port = proxy.port.as_ref()?.number?;
                let namespace = sidecar.metadata.namespace.as_deref().unwrap_or_default();
                (!proxy.host.is_empty())
                    .then(|| outbound_cluster_name(port, &proxy.subset, &resolve_host(&proxy.host, namespace)))
            });
        egress_proxy.unwrap_or_else(|| PASSTHROUGH_CLUSTER.to_owned())
    }

    pub fn registry_only(&self) -> bool {
        use rudder_config::networking::sidecar::OutboundTrafficPolicyMode as SidecarMode;
        if let Some(mode) = self.sidecar.and_then(|s| s.spec.outbound_traffic_policy.as_ref()).and_then(|p| p.mode) {
            return mode == SidecarMode::RegistryOnly;
        }
        self.snapshot.mesh.outbound_mode() == OutboundTrafficPolicyMode::RegistryOnly
    }
}

/// One port of the proxy's own workload that gets an inbound listener and an
/// `inbound|<port>||` cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundPort {
    /// The workload port (endpoint target port, or the Sidecar ingress port number).
    pub port: u32,
    /// Name of the service port (or Sidecar ingress port) it serves.
    pub name: String,
    pub protocol: Protocol,
    /// Where the inbound cluster sends traffic: Sidecar ingress `defaultEndpoint` as
    /// `(ip, port)`. `None`: the original destination (the workload's own address).
    pub default_endpoint: Option<(String, u32)>,
    /// An address to really bind (Sidecar ingress `bind`, or the proxy IP in capture mode
    /// NONE); `None`: reached through `virtualInbound` (iptables).
    pub bind: Option<String>,
    /// Sidecar ingress `tls`: the sidecar terminates TLS for the port with these settings
    /// instead of mesh mTLS.
    pub tls: Option<rudder_config::networking::gateway::ServerTlsSettings>,
}

impl Context<'_> {
    /// The proxy's inbound ports: the Sidecar's `ingress` listeners when it has any;
    /// otherwise (with iptables only) every port of every service that has an endpoint at one
    /// of the proxy's addresses. Sorted by port, one entry per port.
    pub fn inbound_ports(&self) -> Vec<InboundPort> {
        let capture_none = self.proxy.interception == InterceptionMode::None;
        let mut ports: BTreeMap<u32, InboundPort> = BTreeMap::new();
        let ingress = self.sidecar.map(|s| s.spec.ingress.as_slice()).unwrap_or_default();
        if !ingress.is_empty() {
            for listener in ingress {
                let Some(port) = listener.port.as_ref() else { continue };
                let Some(number) = port.number else { continue };
                let none = capture_none
                    || listener.capture_mode == Some(rudder_config::networking::sidecar::CaptureMode::None);
                let bind = match (&listener.bind, none) {
                    (b, _) if !b.is_empty() => Some(b.clone()),
                    (_, true) => Some(self.proxy.primary_ip().to_owned()),
                    _ => None,
                };
                ports.entry(number).or_insert_with(|| InboundPort {
                    port: number,
                    name: port.name.clone(),
                    protocol: Protocol::of_port(Some(&port.protocol), &port.name),
                    default_endpoint: parse_default_endpoint(&listener.default_endpoint, self.proxy.primary_ip()),
                    bind,
                    tls: listener.tls.clone(),
                });
            }
            return ports.into_values().collect();
        }
        if capture_none {
            return Vec::new();
        }
        let mut at_proxy: Vec<_> =
            self.proxy.ip_addresses.iter().flat_map(|ip| self.snapshot.endpoints_at(ip)).collect();
        // Host order, then the host's own order, whatever the order of the proxy's addresses.
        at_proxy.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        at_proxy.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
        for (host, _, ep) in at_proxy {
            let Some(service) = self.snapshot.services.get(host) else { continue };
            {
                let Some(sp) = service.ports.iter().find(|p| p.name == ep.service_port_name) else { continue };
                ports.entry(ep.port).or_insert_with(|| InboundPort {
                    port: ep.port,
                    name: sp.name.clone(),
                    protocol: sp.protocol,
                    default_endpoint: None,
                    bind: None,
                    tls: None,
                });
            }
        }
        ports.into_values().collect()
    }
}

impl Context<'_> {
    /// The service an inbound port serves (the first by hostname): one with an endpoint at the
    /// proxy's addresses whose target port, or service port, is `port`.
    pub fn inbound_service(&self, port: u32) -> Option<&str> {
        let mut found: Vec<&str> = Vec::new();
        for ip in &self.proxy.ip_addresses {
            for (host, _, endpoint) in self.snapshot.endpoints_at(ip) {
                let service_port = self
                    .snapshot
                    .services
                    .get(host)
                    .and_then(|s| s.ports.iter().find(|p| p.name == endpoint.service_port_name));
                if endpoint.port == port || service_port.is_some_and(|p| p.port == port) {
                    found.push(host.as_str());
                }
            }
        }
        found.into_iter().min()
    }
}

/// `127.0.0.1:8080` / `[::1]:8080` → (ip, port); `0.0.0.0:8080` / `[::]:8080` mean the
/// workload's own address (`instance_ip`), as in Istio. Unix sockets and bad values give `None`
/// (the original destination is used).
fn parse_default_endpoint(text: &str, instance_ip: &str) -> Option<(String, u32)> {
    if text.starts_with("unix://") {
        return None;
    }
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if matches!(host, "0.0.0.0" | "::" | "") { instance_ip } else { host };
    Some((host.to_owned(), port))
}

/// The Sidecar for a proxy: one in its namespace whose selector matches its labels, else the
/// namespace's selector-less one, else the root namespace's selector-less one.
fn sidecar_for<'a>(snapshot: &'a Snapshot, proxy: &Proxy) -> Option<&'a Arc<Sidecar>> {
    // Sidecar resources scope sidecars, never gateways.
    if proxy.node_type == crate::model::NodeType::Router {
        return None;
    }
    fn in_ns<'s, 'n>(snapshot: &'s Snapshot, ns: &'n str) -> impl Iterator<Item = &'s Arc<Sidecar>> + use<'s, 'n> {
        snapshot.sidecars.iter().filter(move |s| s.metadata.namespace.as_deref() == Some(ns))
    }
    in_ns(snapshot, &proxy.namespace)
        .find(|s| s.spec.workload_selector.as_ref().is_some_and(|sel| labels_match(&sel.labels, &proxy.labels)))
        .or_else(|| in_ns(snapshot, &proxy.namespace).find(|s| s.spec.workload_selector.is_none()))
        .or_else(|| in_ns(snapshot, snapshot.root_namespace()).find(|s| s.spec.workload_selector.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            outbound_cluster_name(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(outbound_cluster_name(0, "", "h"), "outbound|0||h");
        assert_eq!(outbound_cluster_name(u32::MAX, "", "h"), "outbound|4294967295||h");
        let reference = ConfigMetadata { resource: "destination-rule", namespace: "ns", name: "dr" }
            .message()
            .filter_metadata["istio"]
            .fields["config"]
            .clone();
        assert_eq!(
            reference.kind,
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                "/apis/networking.istio.io/v1/namespaces/ns/destination-rule/dr".into()
            ))
        );
        assert_eq!(inbound_cluster_name(8080), "inbound|8080||");
        assert_eq!(listener_name("0.0.0.0", 80), "0.0.0.0_80");
        assert_eq!(resolve_host("reviews", "bookinfo"), "reviews.bookinfo.svc.cluster.local");
        assert_eq!(resolve_host("api.example.com", "x"), "api.example.com");
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*", "anything"));
        assert!(!host_matches("a.example.com", "b.example.com"));
    }

    #[test]
    fn default_endpoints() {
        let at = |t: &str| parse_default_endpoint(t, "127.0.0.11");
        assert_eq!(at("127.0.0.1:8080"), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(at("0.0.0.0:18000"), Some(("127.0.0.11".into(), 18000)));
        assert_eq!(at("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(at("unix:///var/run/app.sock"), None);
        assert_eq!(at("nonsense"), None);
    }

    #[test]
    fn config_metadata_written_by_hand_is_prosts_encoding() {
        use prost::Message;
        // Long names too, so that lengths take two-byte varints at every level.
        let long = "n".repeat(200);
        for (resource, namespace, name) in [
            ("virtual-service", "default", "reviews"),
            ("destination-rule", "", ""),
            ("destination-rule", "ns", long.as_str()),
        ] {
            let metadata = ConfigMetadata { resource, namespace, name };
            for tag in [4, 25] {
                let mut by_prost = Vec::new();
                prost::encoding::message::encode(tag, &metadata.message(), &mut by_prost);
                assert_eq!(metadata.field(tag), by_prost, "{resource} {namespace} {name} as field {tag}");
            }
        }
        assert_eq!(
            ConfigMetadata { resource: "r", namespace: "n", name: "x" }.message().encoded_len(),
            ConfigMetadata { resource: "r", namespace: "n", name: "x" }.lens()[5]
        );
    }
}
