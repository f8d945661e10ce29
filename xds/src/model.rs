//! The service model every registry fills and every translator reads: services, their
//! endpoints, the Istio traffic config that applies to them, and the proxy asking for config.
//!
//! A [`Snapshot`] is immutable and shared (`Arc`) between the push pipeline and every stream;
//! a registry change produces a new snapshot rather than mutating one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rudder_config::extensions::WasmPlugin;
use rudder_config::mesh::MeshConfig;
use rudder_config::networking::{DestinationRule, EnvoyFilter, Gateway, Sidecar, VirtualService};
use rudder_config::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use rudder_config::telemetry::Telemetry;

/// Application protocol of a service port, from its `protocol` field or its name prefix
/// (`http-web`, `grpc`, …), as Istio infers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    /// Not declared: sniffed at run time (auto-detection).
    Unsupported,
}

impl Protocol {
    /// Parses an Istio protocol name (case-insensitive); unknown names are `Unsupported`.
    pub fn parse(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "http" | "http1" => Self::Http,
            "http2" | "h2c" => Self::Http2,
            "grpc" | "grpc-web" => Self::Grpc,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "tcp" => Self::Tcp,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            _ => Self::Unsupported,
        }
    }

    /// The protocol of a port declared with an explicit `protocol` (ServiceEntry, Gateway) or,
    /// when that is empty, by the `<protocol>[-suffix]` convention of its name (Kubernetes).
    pub fn of_port(protocol: Option<&str>, name: &str) -> Self {
        match protocol.filter(|p| !p.is_empty()) {
            Some(p) => Self::parse(p),
            None => Self::parse(name.split('-').next().unwrap_or(name)),
        }
    }

    /// Whether routes (RDS) apply: HTTP, HTTP/2 and gRPC.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }

    /// Whether the listener must sniff HTTP vs TCP.
    pub fn is_auto(self) -> bool {
        self == Self::Unsupported
    }

    /// Plain TCP handling (opaque bytes, tcp_proxy): TCP, TLS, HTTPS and the databases.
    pub fn is_tcp(self) -> bool {
        !self.is_http() && !self.is_auto()
    }
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
}

/// How a service's endpoints are found (ServiceEntry `resolution`, or Kubernetes service type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Endpoints known to the registry, sent over EDS.
    #[default]
    ClientSideLb,
    /// Envoy resolves the endpoint names itself (STRICT_DNS).
    Dns,
    /// Envoy resolves one name and uses one address at a time (LOGICAL_DNS).
    DnsRoundRobin,
    /// Forward to the original destination (headless / `resolution: NONE`).
    Passthrough,
    /// Envoy resolves each request's host itself (ServiceEntry `DYNAMIC_DNS`: the dynamic
    /// forward proxy, on HTTP ports; other ports are passthrough).
    DynamicDns,
}

/// A service: a Kubernetes Service or one host of a ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Fully qualified name, e.g. `reviews.default.svc.cluster.local` or `api.example.com`.
    pub hostname: String,
    /// Namespace of the object that declared it.
    pub namespace: String,
    /// Name of the declaring object (Service or ServiceEntry).
    pub name: String,
    pub ports: Vec<ServicePort>,
    /// Virtual IPs (ClusterIP, ServiceEntry `addresses`); may be empty.
    pub addresses: Vec<String>,
    pub resolution: Resolution,
    /// `location: MESH_EXTERNAL`: no auto-mTLS, marked external.
    pub mesh_external: bool,
    /// `exportTo` as declared; empty means the mesh default (everywhere).
    pub export_to: Vec<String>,
    /// Whether this is a Kubernetes service (short-name aliases apply).
    pub kubernetes: bool,
    /// A Kubernetes Service's `spec.trafficDistribution`.
    pub traffic_distribution: TrafficDistribution,
    /// A ServiceEntry's `subjectAltNames`: identities its servers may present, checked (with
    /// its endpoints' service accounts) when the proxy originates Istio mTLS to it.
    pub subject_alt_names: Vec<String>,
}

/// A Kubernetes Service's `spec.trafficDistribution`: where traffic to it should stay. Without
/// a DestinationRule locality setting, Istio turns a preference into failover by topology
/// labels, outlier detection or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficDistribution {
    /// No preference (unset, or a value this version does not know).
    #[default]
    Any,
    /// `PreferSameZone`, and `PreferClose`, its older name.
    PreferSameZone,
    /// `PreferSameNode`.
    PreferSameNode,
}

impl TrafficDistribution {
    pub fn of(value: Option<&str>) -> Self {
        match value {
            Some("PreferClose" | "PreferSameZone") => TrafficDistribution::PreferSameZone,
            Some("PreferSameNode") => TrafficDistribution::PreferSameNode,
            _ => TrafficDistribution::Any,
        }
    }
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Whether a proxy in `namespace` may see this service (`exportTo`: `*`, `.`, names).
    pub fn visible_from(&self, namespace: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, namespace)
    }
}

/// Whether an object in `own_namespace` with `export_to` is visible from `namespace`. Empty
/// `export_to` means everywhere (the mesh default); `~` means nowhere.
pub fn exported_to(export_to: &[String], own_namespace: &str, namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| e == "*" || e == namespace || (e == "." && own_namespace == namespace))
}

/// Health of an endpoint as the registry reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
    /// Shutting down; never sent.
    Terminating,
}

/// A TLS credential from a Secret (Kubernetes, or a `kind: Secret` document in the config
/// directory), in PEM. Either part may be missing: a `-cacert` Secret holds only a CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsCredential {
    pub certificate_chain: Vec<u8>,
    pub private_key: Vec<u8>,
    /// CA certificates for validating clients (MUTUAL gateways).
    pub ca_certificates: Vec<u8>,
    /// The certificate revocation list that goes with `ca_certificates` (the Secret's
    /// `ca.crl`, or `crl` in the generic layout), PEM; empty when the Secret has none.
    pub ca_crl: Vec<u8>,
    /// Why the Secret's client CA cannot be used, naming the key at fault (a `ca.crl` that is
    /// not a PEM CRL). A MUTUAL server whose client CA comes from this Secret is skipped with
    /// this reason rather than served without its revocation list; the certificate and key
    /// still serve.
    pub ca_error: Option<String>,
}

/// One address serving one port of one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub address: String,
    /// The port the workload listens on (target port).
    pub port: u32,
    /// Name of the service port this endpoint serves (matched against cluster ports).
    pub service_port_name: String,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub service_account: String,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
    /// Load-balancing weight; 0 means the default (1).
    pub weight: u32,
    pub health: Health,
    /// `istio` when the workload has a sidecar (drives auto-mTLS), else empty.
    pub tls_mode: String,
    /// Name of the workload (pod or WorkloadEntry), for debugging.
    pub workload: String,
}

impl Endpoint {
    /// A healthy endpoint with no labels, account, locality or sidecar: the form of endpoints
    /// that only name an address (DNS names, ExternalName services).
    pub fn plain(address: &str, port: u32, service_port_name: &str, namespace: &str) -> Self {
        Self {
            address: address.to_owned(),
            port,
            service_port_name: service_port_name.to_owned(),
            labels: BTreeMap::new(),
            namespace: namespace.to_owned(),
            service_account: String::new(),
            locality: String::new(),
            weight: 0,
            health: Health::Healthy,
            tls_mode: String::new(),
            workload: String::new(),
        }
    }
}

/// Everything translation reads, at one instant. Cheap to share, never mutated.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Set on the snapshot a server starts from before its registry has read its sources
    /// (the config directory, or the API server's first lists). No proxy is served from it
    /// and `/ready` reports not ready: a proxy that reconnects after a discovery restart
    /// would otherwise be sent an empty mesh and drop every listener and cluster it has.
    pub loading: bool,
    pub mesh: MeshConfig,
    /// Services by hostname. When two namespaces declare the same hostname, the oldest
    /// (first by namespace/name) wins, as upstream picks by creation time.
    pub services: BTreeMap<String, Arc<Service>>,
    /// Endpoints by service hostname, in a stable order.
    pub endpoints: BTreeMap<String, Arc<Vec<Endpoint>>>,
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    pub sidecars: Vec<Arc<Sidecar>>,
    /// Sorted by namespace and name.
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// Sorted by namespace and name.
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    /// Sorted by namespace and name.
    pub request_authentications: Vec<Arc<RequestAuthentication>>,
    /// Sorted by namespace and name.
    pub telemetries: Vec<Arc<Telemetry>>,
    /// JWKS documents fetched for RequestAuthentication `jwksUri`s, by URI.
    pub jwks: BTreeMap<String, Arc<str>>,
    pub gateways: Vec<Arc<Gateway>>,
    /// Sorted by namespace and name.
    pub wasm_plugins: Vec<Arc<WasmPlugin>>,
    /// The modules of `wasm_plugins` as discovery read them, by [`wasm_module_key`]: a plugin
    /// whose module is missing (not read yet) or failed is left out of the proxies it selects.
    pub wasm_modules: BTreeMap<String, Arc<WasmModule>>,
    /// Sorted by namespace and name; applied in Istio's order by `translate::envoy_filter`.
    pub envoy_filters: Vec<Arc<EnvoyFilter>>,
    /// TLS credentials gateways name in `credentialName` and `caCertCredentialName`: Secrets by
    /// `<namespace>/<name>`, client CAs of ConfigMaps by `<namespace>/ConfigMap/<name>`
    /// ([`config_map_key`](crate::registry::secret::config_map_key)).
    pub secrets: BTreeMap<String, Arc<TlsCredential>>,
    /// The locality of each pod the Kubernetes registry knows, by pod IP (pods with none left
    /// out): where a proxy with no locality of its own and no endpoint (a client pod no Service
    /// selects) runs, for locality load balancing.
    pub pod_localities: Arc<BTreeMap<String, String>>,
    /// `endpoints` by address, built on first use by [`Snapshot::endpoints_at`].
    pub by_address: AddressIndex,
}

/// What discovery made of one WasmPlugin module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmModule {
    /// The module's bytes (checked against `sha256` when the plugin gives one).
    Ready(Arc<Vec<u8>>),
    /// The module could not be had: the field at fault (`url`, `sha256`) and why.
    Failed { field: &'static str, reason: String },
}

/// The effective pull policy of a plugin: as given, else `IfNotPresent`, except for OCI images
/// tagged `latest` (or not tagged at all), which are pulled `Always`, as upstream.
pub fn wasm_pull_always(plugin: &WasmPlugin) -> bool {
    use rudder_config::extensions::PullPolicy;
    match plugin.spec.image_pull_policy {
        Some(PullPolicy::Always) => true,
        Some(PullPolicy::IfNotPresent) => false,
        Some(PullPolicy::UnspecifiedPolicy) | None => {
            let (scheme, rest) = plugin.spec.url_parts();
            if scheme != "oci" || rest.contains("@sha256:") {
                return false;
            }
            // The tag is after the last `:` of the last path segment.
            let last = rest.rsplit('/').next().unwrap_or(rest);
            last.rsplit_once(':').is_none_or(|(_, tag)| tag == "latest")
        }
    }
}

/// The cache key of a plugin's module: its URL and checksum, and for plugins pulled `Always`
/// the plugin's own version too (a change of the plugin pulls the module again, as upstream).
pub fn wasm_module_key(plugin: &WasmPlugin) -> String {
    let spec = &plugin.spec;
    let mut key = format!("{}#{}", spec.url.trim(), spec.sha256);
    if wasm_pull_always(plugin) {
        let version = match plugin.metadata.resource_version.as_deref().filter(|v| !v.is_empty()) {
            Some(version) => version.to_owned(),
            // File mode has no resourceVersion: the object's content stands for it.
            None => {
                format!("{:016x}", crate::server::cache::content_hash(&serde_json::to_vec(plugin).unwrap_or_default()))
            }
        };
        key.push_str(&format!(
            "#{}/{}@{version}",
            plugin.metadata.namespace.as_deref().unwrap_or_default(),
            plugin.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    key
}

/// Endpoints by address: hostname and position in that host's list. Built on first use; a
/// clone starts empty, so a snapshot copied and then changed never answers from a stale index.
#[derive(Debug, Default)]
pub struct AddressIndex(std::sync::OnceLock<std::collections::HashMap<String, Vec<(String, usize)>>>);

impl Clone for AddressIndex {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Snapshot {
    /// Every endpoint at `address`, with its service hostname, in hostname order: what a proxy
    /// at that address serves. Indexed once per snapshot (each proxy asks, and a scan per proxy
    /// is a scan of every endpoint of the mesh).
    /// Items are (hostname, position in the host's list, endpoint).
    pub fn endpoints_at(&self, address: &str) -> impl Iterator<Item = (&String, usize, &Endpoint)> {
        let index = self.by_address.0.get_or_init(|| {
            let mut index: std::collections::HashMap<String, Vec<(String, usize)>> = std::collections::HashMap::new();
            for (host, list) in &self.endpoints {
                for (i, endpoint) in list.iter().enumerate() {
                    index.entry(endpoint.address.clone()).or_default().push((host.clone(), i));
                }
            }
            index
        });
        index.get(address).into_iter().flatten().filter_map(|(host, i)| {
            let (host, list) = self.endpoints.get_key_value(host)?;
            Some((host, *i, list.get(*i)?))
        })
    }

    /// The mesh root namespace (`istio-system` unless MeshConfig says otherwise).
    pub fn root_namespace(&self) -> &str {
        self.mesh.root_namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or("istio-system")
    }

    /// Endpoints of `hostname` (empty when none are known).
    pub fn endpoints_of(&self, hostname: &str) -> &[Endpoint] {
        self.endpoints.get(hostname).map(|e| e.as_slice()).unwrap_or(&[])
    }
}

/// Kind of proxy, the first part of its node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeType {
    Sidecar,
    Router,
}

/// How traffic reaches the sidecar (`INTERCEPTION_MODE` metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterceptionMode {
    #[default]
    Redirect,
    Tproxy,
    /// No iptables: listeners bind real addresses on the proxy's own IP.
    None,
}

/// A connected proxy as discovery sees it: parsed from the xDS `Node`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proxy {
    pub node_type: NodeType,
    /// `INSTANCE_IPS` metadata, else the IP in the node id.
    pub ip_addresses: Vec<String>,
    /// `<pod>.<namespace>`.
    pub id: String,
    /// Config namespace: `NAMESPACE` metadata, else the first label of the DNS domain.
    pub namespace: String,
    /// `<namespace>.svc.cluster.local`.
    pub dns_domain: String,
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone`: the node's `locality`, else the `istio-locality` label; empty
    /// when neither says (discovery then takes the locality of the proxy's own endpoint).
    pub locality: String,
    pub interception: InterceptionMode,
    pub istio_version: String,
    pub cluster_id: String,
    /// `ISTIO_REVISION` metadata.
    pub revision: String,
    /// `WORKLOAD_IDENTITY` metadata: the SPIFFE identity whose certificate the agent serves
    /// Envoy over SDS. Empty when the proxy has none (no mesh CA), and then it takes and
    /// originates no mutual TLS.
    pub workload_identity: String,
    /// The rest of the node's string-valued metadata, for EnvoyFilter `match.proxy.metadata`.
    pub metadata: NodeMetadata,
}

/// A node's string-valued metadata other than the keys [`Proxy`] keeps in fields of their
/// own: what an EnvoyFilter `match.proxy.metadata` may name besides them (Istio, too,
/// matches only string values). Structured values (`ANNOTATIONS`, `PROXY_CONFIG`, lists) are
/// not kept, nor values longer than [`NodeMetadata::MAX_VALUE`] bytes. Keys and short values
/// are interned, since every proxy sends the same keys and many the same values
/// (`MESH_ID`, `ISTIO_PROXY_SHA`, …): a proxy holds a pointer pair per entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeMetadata(Box<[(Arc<str>, Arc<str>)]>);

impl NodeMetadata {
    /// Longer values are not kept (no metadata Istio's agent sends comes near).
    pub const MAX_VALUE: usize = 4096;
    /// Keys read into [`Proxy`] fields instead.
    const OWN_KEYS: [&'static str; 5] =
        ["ISTIO_VERSION", "NAMESPACE", "CLUSTER_ID", "ISTIO_REVISION", WORKLOAD_IDENTITY];

    fn of(metadata: &BTreeMap<String, serde_json::Value>) -> Self {
        let entries: Vec<(Arc<str>, Arc<str>)> = metadata
            .iter()
            .filter(|(k, _)| !Self::OWN_KEYS.contains(&k.as_str()))
            .filter_map(|(k, v)| {
                let v = v.as_str().filter(|v| v.len() <= Self::MAX_VALUE)?;
                Some((intern(k), intern(v)))
            })
            .collect();
        // From a BTreeMap: sorted by key.
        Self(entries.into_boxed_slice())
    }

    /// The value of `key`, if the node sent it as a string (and it is kept, see above).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| self.0[i].1.as_ref())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One shared copy of `text`, from the process's [`InternTable`].
fn intern(text: &str) -> Arc<str> {
    use std::sync::{Mutex, OnceLock};
    static TABLE: OnceLock<Mutex<InternTable>> = OnceLock::new();
    match TABLE.get_or_init(Default::default).lock() {
        Ok(mut table) => table.intern(text),
        Err(_) => Arc::from(text),
    }
}

/// Shared copies of the short strings of node metadata. Bounded: when full, the strings no
/// proxy holds any more are dropped; if that frees little, the next strings are not interned
/// for a while (each gets a copy of its own), so a table full of live strings is not swept on
/// every call. The keys and values proxies share come first and stay.
#[derive(Debug, Default)]
struct InternTable {
    strings: std::collections::HashSet<Arc<str>>,
    /// Calls left before the next sweep may run.
    skip: usize,
}

impl InternTable {
    const MAX_LEN: usize = 256;
    const MAX_ENTRIES: usize = 16_384;

    fn intern(&mut self, text: &str) -> Arc<str> {
        if text.len() > Self::MAX_LEN {
            return Arc::from(text);
        }
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        if self.strings.len() >= Self::MAX_ENTRIES {
            if self.skip > 0 {
                self.skip -= 1;
                return Arc::from(text);
            }
            self.strings.retain(|s| Arc::strong_count(s) > 1);
            if self.strings.len() >= Self::MAX_ENTRIES * 3 / 4 {
                // Sweep again only after about as many calls as this sweep cost.
                self.skip = Self::MAX_ENTRIES / 4;
            }
            if self.strings.len() >= Self::MAX_ENTRIES {
                return Arc::from(text);
            }
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(shared.clone());
        shared
    }
}

/// The node metadata key naming the proxy's workload certificate identity.
pub const WORKLOAD_IDENTITY: &str = "WORKLOAD_IDENTITY";

/// Why a node could not be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node id {0:?} must be <type>~<ip>~<pod>.<namespace>~<domain>")]
    BadId(String),
    #[error("node id {0:?}: unknown proxy type {1:?} (sidecar or router)")]
    BadType(String, String),
}

impl Proxy {
    /// Parses an Istio node id and its metadata (Istio's string-encoded forms included:
    /// `INSTANCE_IPS` comma-joined, `LABELS` an object).
    pub fn from_node(id: &str, metadata: &BTreeMap<String, serde_json::Value>) -> Result<Self, NodeError> {
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod_id, domain] = parts.as_slice() else {
            return Err(NodeError::BadId(id.to_owned()));
        };
        let node_type = match *kind {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => return Err(NodeError::BadType(id.to_owned(), other.to_owned())),
        };
        let text = |key: &str| metadata.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let ips = text("INSTANCE_IPS");
        let ip_addresses = if ips.is_empty() {
            vec![(*ip).to_owned()]
        } else {
            ips.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
        };
        let namespace = match text("NAMESPACE") {
            ns if !ns.is_empty() => ns,
            _ => domain.split('.').next().unwrap_or_default().to_owned(),
        };
        let labels: BTreeMap<String, String> = metadata
            .get("LABELS")
            .and_then(|v| v.as_object())
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        let interception = match text("INTERCEPTION_MODE").as_str() {
            "TPROXY" => InterceptionMode::Tproxy,
            "NONE" => InterceptionMode::None,
            _ => InterceptionMode::Redirect,
        };
        Ok(Self {
            node_type,
            ip_addresses,
            id: (*pod_id).to_owned(),
            namespace,
            dns_domain: (*domain).to_owned(),
            locality: labels
                .get(crate::registry::service_entry::LOCALITY_LABEL)
                .map(|l| crate::registry::service_entry::locality_from_label(l))
                .unwrap_or_default(),
            labels,
            interception,
            istio_version: text("ISTIO_VERSION"),
            cluster_id: text("CLUSTER_ID"),
            revision: text("ISTIO_REVISION"),
            workload_identity: text(WORKLOAD_IDENTITY),
            metadata: NodeMetadata::of(metadata),
        })
    }

    /// Whether the agent serves Envoy a workload certificate (`default`/`ROOTCA` over SDS).
    pub fn has_workload_certificate(&self) -> bool {
        !self.workload_identity.is_empty()
    }

    /// The proxy's first IP (where capture-mode-NONE listeners bind).
    pub fn primary_ip(&self) -> &str {
        self.ip_addresses.first().map(String::as_str).unwrap_or("0.0.0.0")
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// Whether `labels` carries every key/value of `selector` (an empty selector matches all).
pub fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parses_an_istio_node() {
        let p = Proxy::from_node(
            "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local",
            &meta(json!({"LABELS": {"app": "reviews", "version": "v1"}, "INTERCEPTION_MODE": "NONE",
                         "INSTANCE_IPS": "10.1.2.3,fd00::3"})),
        )
        .unwrap();
        assert_eq!(p.node_type, NodeType::Sidecar);
        assert_eq!(p.ip_addresses, ["10.1.2.3", "fd00::3"]);
        assert_eq!(p.id, "reviews-v1-abc.default");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.labels["version"], "v1");
        assert_eq!(p.interception, InterceptionMode::None);
        assert_eq!(p.locality, "");
        let labelled = Proxy::from_node(
            "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local",
            &meta(json!({"LABELS": {"app": "reviews", "istio-locality": "us-east.us-east-1a"}})),
        )
        .unwrap();
        assert_eq!(labelled.locality, "us-east/us-east-1a");
    }

    #[test]
    fn keeps_string_metadata_shared_between_proxies() {
        let node = |pod: &str| {
            Proxy::from_node(
                &format!("sidecar~10.1.2.3~{pod}.default~default.svc.cluster.local"),
                &meta(json!({"MESH_ID": "mesh1", "POD_NAME": pod, "CLUSTER_ID": "east", "LABELS": {"app": "a"},
                             "PORTS": 8080, "PILOT_SAN": ["a"], "ANNOTATIONS": {"x": "y"},
                             "BIG": "x".repeat(NodeMetadata::MAX_VALUE + 1)})),
            )
            .unwrap()
        };
        let (a, b) = (node("a-1"), node("b-1"));
        assert_eq!(a.metadata.get("MESH_ID"), Some("mesh1"));
        assert_eq!(a.metadata.get("POD_NAME"), Some("a-1"));
        assert_eq!(b.metadata.get("POD_NAME"), Some("b-1"));
        // Kept in a field of its own, not a string, or too long: not in the map.
        for key in ["CLUSTER_ID", "LABELS", "PORTS", "PILOT_SAN", "ANNOTATIONS", "BIG", "NOPE"] {
            assert_eq!(a.metadata.get(key), None, "{key}");
        }
        assert_eq!(a.cluster_id, "east");
        assert_eq!(a.metadata.len(), 2);
        // Keys and shared values are one allocation for every proxy.
        let entry = |p: &Proxy, key: &str| p.metadata.0.iter().find(|(k, _)| k.as_ref() == key).cloned().unwrap();
        let (ka, va) = entry(&a, "MESH_ID");
        let (kb, vb) = entry(&b, "MESH_ID");
        assert!(Arc::ptr_eq(&ka, &kb) && Arc::ptr_eq(&va, &vb));
    }

    #[test]
    fn the_intern_table_stays_bounded_and_drops_strings_nobody_holds() {
        let mut table = InternTable::default();
        let max = InternTable::MAX_ENTRIES;
        // Held strings fill it; past that, strings get copies of their own.
        let held: Vec<Arc<str>> = (0..max).map(|i| table.intern(&format!("held-{i}"))).collect();
        let extra = table.intern("extra");
        assert_eq!(table.strings.len(), max);
        assert!(!Arc::ptr_eq(&extra, &table.intern("extra")));
        assert!(Arc::ptr_eq(&held[7], &table.intern("held-7")), "interned strings are still shared");
        // Once they are let go, the table makes room again (after its pause).
        drop(held);
        let pause = table.skip;
        for i in 0..=pause {
            table.intern(&format!("later-{i}"));
        }
        let kept = table.intern("kept");
        assert!(table.strings.len() < max, "{}", table.strings.len());
        assert!(Arc::ptr_eq(&kept, &table.intern("kept")));
        // Long strings are never interned.
        let long = "x".repeat(InternTable::MAX_LEN + 1);
        assert!(!Arc::ptr_eq(&table.intern(&long), &table.intern(&long)));
    }

    #[test]
    fn rejects_bad_node_ids() {
        assert!(matches!(Proxy::from_node("sidecar~1.2.3.4", &BTreeMap::new()), Err(NodeError::BadId(_))));
        assert!(matches!(Proxy::from_node("ztunnel~1~a.b~b.svc", &BTreeMap::new()), Err(NodeError::BadType(..))));
    }

    #[test]
    fn protocol_from_port_name_or_field() {
        assert_eq!(Protocol::of_port(None, "http-web"), Protocol::Http);
        assert_eq!(Protocol::of_port(Some("GRPC"), "x"), Protocol::Grpc);
        assert_eq!(Protocol::of_port(None, "web"), Protocol::Unsupported);
        assert_eq!(Protocol::of_port(Some("TCP"), "http"), Protocol::Tcp);
    }

    #[test]
    fn export_to_rules() {
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&[".".into()], "a", "a"));
        assert!(!exported_to(&[".".into()], "a", "b"));
        assert!(!exported_to(&["~".into()], "a", "a"));
        assert!(exported_to(&["b".into()], "a", "b"));
    }
}
