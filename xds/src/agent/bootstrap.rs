//! The Envoy bootstrap the proxy agent writes: who the proxy is (node id, cluster and Istio's
//! node metadata), where discovery is (ADS over the static `xds-grpc` cluster), the admin
//! endpoint, and the two listeners every Istio proxy has from the start: readiness
//! (`/healthz/ready` on 15021) and Prometheus (`/stats/prometheus` on 15090). Pure: options in,
//! JSON out; equal options give byte-identical output.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::model::{InterceptionMode, NodeType};
use crate::translate::locality::LOCAL_CLUSTER;

/// The Istio version the agent announces when none is given (istiod gates features on it).
pub const DEFAULT_ISTIO_VERSION: &str = "1.28.0";
/// Plaintext discovery of the default revision's istiod.
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "istiod.istio-system.svc:15010";
/// Cluster the ADS stream uses.
pub const XDS_CLUSTER: &str = "xds-grpc";
/// Backoff between attempts to reopen the xDS stream (jittered, doubling from the base).
/// Envoy's own default grows to 30 s, so a proxy whose discovery was down for a few seconds
/// could stay unsynced for half a minute after it was back; a 5 s ceiling still spreads a
/// reconnect storm (the server also bounds first pushes in flight).
const XDS_RETRY_BASE: &str = "0.5s";
const XDS_RETRY_MAX: &str = "5s";
/// Cluster of the agent's SDS server (workload certificate and mesh root); translation names
/// it in every Istio mTLS context.
pub use crate::translate::cluster::SDS_CLUSTER;
/// Cluster the readiness listener forwards to (Envoy's own admin `/ready`).
pub const AGENT_CLUSTER: &str = "agent";
/// Cluster the Prometheus listener forwards to (Envoy's own admin `/stats/prometheus`).
pub const PROMETHEUS_CLUSTER: &str = "prometheus_stats";
/// Path kubelet probes on the status port.
pub const READINESS_PATH: &str = "/healthz/ready";
/// Path Prometheus scrapes on the Prometheus port.
pub const PROMETHEUS_PATH: &str = "/stats/prometheus";

/// Which ADS flavour the proxy speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdsTransport {
    /// State of the world.
    Grpc,
    /// Incremental, the default since Istio 1.22.
    #[default]
    DeltaGrpc,
}

impl XdsTransport {
    /// The `ads_config.api_type` value.
    pub fn api_type(self) -> &'static str {
        match self {
            Self::Grpc => "GRPC",
            Self::DeltaGrpc => "DELTA_GRPC",
        }
    }
}

/// Everything the bootstrap depends on. `Default` is an Istio sidecar's defaults with no
/// identity filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapOptions {
    pub node_type: NodeType,
    /// The pod's IPs; the first one goes into the node id. Empty means `127.0.0.1` in the id
    /// and no `INSTANCE_IPS`.
    pub ip_addresses: Vec<IpAddr>,
    pub pod_name: String,
    pub namespace: String,
    /// DNS domain, the fourth part of the node id; `None` means `<namespace>.svc.cluster.local`.
    pub dns_domain: Option<String>,
    pub cluster_id: String,
    pub labels: BTreeMap<String, String>,
    /// `ISTIO_META_WORKLOAD_NAME`; also a fallback for `node.cluster`.
    pub workload_name: Option<String>,
    pub interception: InterceptionMode,
    pub istio_version: String,
    pub revision: String,
    /// Discovery server as `host:port` (`[v6]:port` for IPv6 literals).
    pub discovery_address: String,
    pub xds_transport: XdsTransport,
    pub admin_address: IpAddr,
    pub admin_port: u16,
    /// Envoy's readiness listener (`/healthz/ready`).
    pub status_port: u16,
    pub prometheus_port: u16,
    /// More node metadata (e.g. from `ISTIO_META_*`); the typed options above win over it.
    pub extra_metadata: BTreeMap<String, Value>,
    /// The agent's SDS socket (the mesh CA is in use): Envoy gets its workload certificate
    /// from it (`sds-grpc`) and reaches discovery over TLS with it. `None`: plaintext xDS and
    /// no workload certificate.
    pub sds_socket: Option<String>,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self {
            node_type: NodeType::Sidecar,
            ip_addresses: Vec::new(),
            pod_name: String::new(),
            namespace: String::new(),
            dns_domain: None,
            cluster_id: "Kubernetes".to_owned(),
            labels: BTreeMap::new(),
            workload_name: None,
            interception: InterceptionMode::Redirect,
            istio_version: DEFAULT_ISTIO_VERSION.to_owned(),
            revision: String::new(),
            discovery_address: DEFAULT_DISCOVERY_ADDRESS.to_owned(),
            xds_transport: XdsTransport::DeltaGrpc,
            admin_address: IpAddr::from([127, 0, 0, 1]),
            admin_port: 15000,
            status_port: 15021,
            prometheus_port: 15090,
            extra_metadata: BTreeMap::new(),
            sds_socket: None,
        }
    }
}

/// Why no bootstrap could be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    #[error("discovery address {0:?} must be host:port")]
    BadDiscoveryAddress(String),
    #[error("{0} must not be empty")]
    Missing(&'static str),
}

/// The node type as it appears in the node id.
pub fn node_type_name(node_type: NodeType) -> &'static str {
    match node_type {
        NodeType::Sidecar => "sidecar",
        NodeType::Router => "router",
    }
}

/// The `INTERCEPTION_MODE` metadata value.
pub fn interception_name(mode: InterceptionMode) -> &'static str {
    match mode {
        InterceptionMode::Redirect => "REDIRECT",
        InterceptionMode::Tproxy => "TPROXY",
        InterceptionMode::None => "NONE",
    }
}

impl BootstrapOptions {
    /// `<namespace>.svc.cluster.local` unless a domain was given.
    pub fn effective_dns_domain(&self) -> String {
        match &self.dns_domain {
            Some(domain) if !domain.is_empty() => domain.clone(),
            _ => format!("{}.svc.cluster.local", self.namespace),
        }
    }

    /// `<type>~<ip>~<pod>.<namespace>~<domain>`, the id istiod parses.
    pub fn node_id(&self) -> String {
        let ip = self.ip_addresses.first().map_or_else(|| "127.0.0.1".to_owned(), IpAddr::to_string);
        format!(
            "{}~{ip}~{}.{}~{}",
            node_type_name(self.node_type),
            self.pod_name,
            self.namespace,
            self.effective_dns_domain()
        )
    }

    /// `node.cluster`: `<app>.<namespace>`, else `<workload>.<namespace>`, else
    /// `istio-proxy.<namespace>` (what Istio shows as the service cluster).
    pub fn service_cluster(&self) -> String {
        let base = self
            .labels
            .get("app")
            .or(self.workload_name.as_ref())
            .filter(|s| !s.is_empty())
            .map_or("istio-proxy", String::as_str);
        if self.namespace.is_empty() { base.to_owned() } else { format!("{base}.{}", self.namespace) }
    }

    /// Istio's node metadata. Strings stay strings where Istio encodes them so
    /// (`INSTANCE_IPS` comma-joined); ports are numbers, `LABELS` an object.
    pub fn node_metadata(&self) -> Map<String, Value> {
        let mut meta: Map<String, Value> = self.extra_metadata.clone().into_iter().collect();
        let mut set = |key: &str, value: Value| {
            meta.insert(key.to_owned(), value);
        };
        set("ISTIO_VERSION", self.istio_version.clone().into());
        set("CLUSTER_ID", self.cluster_id.clone().into());
        set("NAMESPACE", self.namespace.clone().into());
        set("NAME", self.pod_name.clone().into());
        set("LABELS", json!(self.labels));
        set("INTERCEPTION_MODE", interception_name(self.interception).into());
        set("ENVOY_STATUS_PORT", self.status_port.into());
        set("ENVOY_PROMETHEUS_PORT", self.prometheus_port.into());
        if !self.ip_addresses.is_empty() {
            let ips: Vec<String> = self.ip_addresses.iter().map(IpAddr::to_string).collect();
            set("INSTANCE_IPS", ips.join(",").into());
        }
        if let Some(workload) = self.workload_name.as_ref().filter(|w| !w.is_empty()) {
            set("WORKLOAD_NAME", workload.clone().into());
        }
        if !self.revision.is_empty() {
            set("ISTIO_REVISION", self.revision.clone().into());
        }
        meta
    }

    /// `node.locality`: the `istio-locality` label (`region.zone.subzone`), else the pod's
    /// topology labels (Kubernetes copies its node's onto it with the PodTopologyLabels
    /// admission); `None` when neither says. Envoy's zone-aware routing needs its own zone.
    pub fn locality(&self) -> Option<Value> {
        use crate::translate::locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
        let label = |key: &str| self.labels.get(key).map(String::as_str).unwrap_or_default();
        let (region, zone, subzone) = match self.labels.get(crate::registry::service_entry::LOCALITY_LABEL) {
            Some(value) => {
                let mut parts = value.splitn(3, '.');
                (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
            }
            None => (label(REGION_LABEL), label(ZONE_LABEL), label(SUBZONE_LABEL)),
        };
        (!region.is_empty() || !zone.is_empty()).then(|| json!({"region": region, "zone": zone, "sub_zone": subzone}))
    }

    /// Whether the proxy asked for its own workload's cluster (`ISTIO_META_ENABLE_SELF_DISCOVERY`),
    /// which Envoy's zone-aware routing compares upstream zones against.
    pub fn self_discovery(&self) -> bool {
        let key = crate::translate::locality::SELF_DISCOVERY;
        self.extra_metadata.get(key).and_then(Value::as_str) == Some("true")
    }

    /// Where the readiness and Prometheus listeners bind: the proxy's own IP when nothing
    /// redirects traffic (mode NONE) and an IP is known, else every IPv4 address.
    pub fn listener_bind_address(&self) -> IpAddr {
        match (self.interception, self.ip_addresses.first()) {
            (InterceptionMode::None, Some(ip)) => *ip,
            _ => IpAddr::from([0, 0, 0, 0]),
        }
    }
}

/// Node metadata from the environment, as Istio's agent reads it: `ISTIO_META_<KEY>` gives
/// `<KEY>` as a string, `ISTIO_METAJSON_<KEY>` gives `<KEY>` as parsed JSON (skipped when it
/// does not parse; the names of those come back in the second value).
pub fn metadata_from_env(vars: impl IntoIterator<Item = (String, String)>) -> (BTreeMap<String, Value>, Vec<String>) {
    let mut meta = BTreeMap::new();
    let mut unparsable = Vec::new();
    for (name, value) in vars {
        if let Some(key) = name.strip_prefix("ISTIO_METAJSON_").filter(|k| !k.is_empty()) {
            match serde_json::from_str::<Value>(&value) {
                Ok(json) => {
                    meta.insert(key.to_owned(), json);
                }
                Err(_) => unparsable.push(name.clone()),
            }
        } else if let Some(key) = name.strip_prefix("ISTIO_META_").filter(|k| !k.is_empty()) {
            meta.entry(key.to_owned()).or_insert(Value::String(value));
        }
    }
    unparsable.sort();
    (meta, unparsable)
}

/// Splits `host:port`; IPv6 literals come bracketed (`[::1]:15010`).
pub fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok()?.to_string(),
        // An unbracketed colon makes the port ambiguous.
        None if host.contains(':') || host.is_empty() => return None,
        None => host.to_owned(),
    };
    Some((host, port))
}

/// Builds the bootstrap. Fails only on an unusable discovery address or missing identity.
pub fn bootstrap(options: &BootstrapOptions) -> Result<Value, BootstrapError> {
    if options.pod_name.is_empty() {
        return Err(BootstrapError::Missing("pod name"));
    }
    if options.namespace.is_empty() {
        return Err(BootstrapError::Missing("namespace"));
    }
    let (discovery_host, discovery_port) = split_host_port(&options.discovery_address)
        .ok_or_else(|| BootstrapError::BadDiscoveryAddress(options.discovery_address.clone()))?;
    let ads = json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"});
    let admin = socket_address(options.admin_address, options.admin_port);
    let bind = options.listener_bind_address();
    let mut clusters =
        vec![local_cluster(AGENT_CLUSTER, admin.clone()), local_cluster(PROMETHEUS_CLUSTER, admin.clone())];
    let mut xds = xds_cluster(&discovery_host, discovery_port);
    if let Some(socket) = &options.sds_socket {
        clusters.push(sds_cluster(socket));
        xds["transport_socket"] = xds_tls(&discovery_host);
    }
    clusters.push(xds);
    if options.self_discovery() {
        clusters.push(json!({
            "name": LOCAL_CLUSTER,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ads.clone()},
        }));
    }
    let mut node = json!({
        "id": options.node_id(),
        "cluster": options.service_cluster(),
        "metadata": Value::Object(options.node_metadata()),
    });
    if let Some(locality) = options.locality() {
        node["locality"] = locality;
    }
    let mut bootstrap = json!({
        "node": node,
        "admin": {"address": admin.clone()},
        "dynamic_resources": {
            "ads_config": {
                "api_type": options.xds_transport.api_type(),
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    "retry_policy": {"retry_back_off": {
                        "base_interval": XDS_RETRY_BASE,
                        "max_interval": XDS_RETRY_MAX,
                    }},
                }}],
            },
            // Wait for the first CDS/LDS forever rather than going live without config.
            "cds_config": ads.clone(),
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": clusters,
            "listeners": [
                admin_proxy_listener("readiness", bind, options.status_port, json!({
                    "match": {"path": READINESS_PATH},
                    "route": {"cluster": AGENT_CLUSTER, "prefix_rewrite": "/ready"},
                })),
                admin_proxy_listener("prometheus", bind, options.prometheus_port, json!({
                    "match": {"prefix": PROMETHEUS_PATH},
                    "route": {"cluster": PROMETHEUS_CLUSTER},
                })),
            ],
        },
    });
    if options.self_discovery() {
        bootstrap["cluster_manager"] = json!({"local_cluster_name": LOCAL_CLUSTER});
    }
    Ok(bootstrap)
}

fn socket_address(ip: IpAddr, port: u16) -> Value {
    json!({"socket_address": {"address": ip.to_string(), "port_value": port}})
}

/// A cluster pointing at one local address (Envoy's own admin endpoint).
fn local_cluster(name: &str, address: Value) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.250s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    })
}

/// The ADS cluster: HTTP/2 to discovery, resolved by DNS unless the host is an IP, with
/// circuit breakers far above anything one proxy does, so pushes never queue.
fn xds_cluster(host: &str, port: u16) -> Value {
    let is_ip = host.parse::<IpAddr>().is_ok();
    let limits = |priority: &str| {
        json!({"priority": priority, "max_connections": 100000, "max_pending_requests": 100000,
               "max_requests": 100000})
    };
    json!({
        "name": XDS_CLUSTER,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
        "circuit_breakers": {"thresholds": [limits("DEFAULT"), limits("HIGH")]},
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    })
}

/// The agent's SDS server on its Unix socket (HTTP/2).
fn sds_cluster(socket: &str) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket}}}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    })
}

/// A secret from the agent's SDS server.
fn sds_secret(name: &str) -> Value {
    json!({"name": name, "sds_config": {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": true,
        "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]}}})
}

/// TLS to discovery: the workload certificate as client certificate (it proves the proxy's
/// namespace), discovery's certificate checked against the mesh root and its name.
fn xds_tls(host: &str) -> Value {
    let san_type = if host.parse::<IpAddr>().is_ok() { "IP_ADDRESS" } else { "DNS" };
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [sds_secret(super::sds::WORKLOAD_SECRET)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": san_type, "matcher": {"exact": host}}]},
                "validation_context_sds_secret_config": sds_secret(super::sds::ROOT_SECRET),
            },
        },
    });
    if san_type == "DNS" {
        context["sni"] = json!(host);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

/// A plain-HTTP listener with a single route to the admin endpoint, so that only the chosen
/// admin path is reachable from outside the pod.
fn admin_proxy_listener(name: &str, bind: IpAddr, port: u16, route: Value) -> Value {
    json!({
        "name": name,
        "address": socket_address(bind, port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "codec_type": "AUTO",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [route]}]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn options() -> BootstrapOptions {
        BootstrapOptions {
            pod_name: "reviews-v1-abc".into(),
            namespace: "default".into(),
            ip_addresses: vec!["10.1.2.3".parse().unwrap()],
            labels: [("app".to_owned(), "reviews".to_owned()), ("version".to_owned(), "v1".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn locality_and_self_discovery() {
        let labelled = |pairs: &[(&str, &str)]| BootstrapOptions {
            labels: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..options()
        };
        let node = |o: &BootstrapOptions| bootstrap(o).unwrap()["node"]["locality"].clone();
        assert_eq!(
            node(&labelled(&[("istio-locality", "r1.z1.s1")])),
            json!({"region": "r1", "zone": "z1", "sub_zone": "s1"})
        );
        assert_eq!(
            node(&labelled(&[("topology.kubernetes.io/region", "r2"), ("topology.kubernetes.io/zone", "z2")])),
            json!({"region": "r2", "zone": "z2", "sub_zone": ""})
        );
        assert_eq!(node(&labelled(&[])), Value::Null);
        let plain = bootstrap(&options()).unwrap();
        assert_eq!(plain["cluster_manager"], Value::Null);
        let opted = BootstrapOptions {
            extra_metadata: [("ENABLE_SELF_DISCOVERY".to_owned(), json!("true"))].into(),
            ..options()
        };
        let boot = bootstrap(&opted).unwrap();
        assert_eq!(boot["cluster_manager"]["local_cluster_name"], "local_cluster");
        let local =
            boot["static_resources"]["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "local_cluster");
        assert_eq!(local.map(|c| c["type"].clone()), Some(json!("EDS")));
    }

    #[test]
    fn node_id_forms() {
        let cases: Vec<(BootstrapOptions, &str)> = vec![
            (options(), "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local"),
            (
                BootstrapOptions { node_type: NodeType::Router, ..options() },
                "router~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local",
            ),
            (
                BootstrapOptions { dns_domain: Some("default.svc.corp.example".into()), ..options() },
                "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.corp.example",
            ),
            (
                BootstrapOptions { ip_addresses: vec![], ..options() },
                "sidecar~127.0.0.1~reviews-v1-abc.default~default.svc.cluster.local",
            ),
            (
                BootstrapOptions { ip_addresses: vec!["fd00::3".parse().unwrap()], ..options() },
                "sidecar~fd00::3~reviews-v1-abc.default~default.svc.cluster.local",
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(opts.node_id(), want);
        }
    }

    #[test]
    fn service_cluster_fallbacks() {
        assert_eq!(options().service_cluster(), "reviews.default");
        let no_app =
            BootstrapOptions { labels: BTreeMap::new(), workload_name: Some("reviews-v1".into()), ..options() };
        assert_eq!(no_app.service_cluster(), "reviews-v1.default");
        let nothing = BootstrapOptions { labels: BTreeMap::new(), ..options() };
        assert_eq!(nothing.service_cluster(), "istio-proxy.default");
    }

    #[test]
    fn metadata_uses_istio_encodings() {
        let opts = BootstrapOptions {
            ip_addresses: vec!["10.1.2.3".parse().unwrap(), "fd00::3".parse().unwrap()],
            revision: "canary".into(),
            workload_name: Some("reviews-v1".into()),
            interception: InterceptionMode::None,
            extra_metadata: [
                ("MESH_ID".to_owned(), json!("cluster.local")),
                ("CLUSTER_ID".to_owned(), json!("overridden")),
            ]
            .into(),
            ..options()
        };
        let meta = Value::Object(opts.node_metadata());
        assert_eq!(meta["INSTANCE_IPS"], "10.1.2.3,fd00::3");
        assert_eq!(meta["LABELS"], json!({"app": "reviews", "version": "v1"}));
        assert_eq!(meta["INTERCEPTION_MODE"], "NONE");
        assert_eq!(meta["ENVOY_STATUS_PORT"], 15021);
        assert_eq!(meta["ENVOY_PROMETHEUS_PORT"], 15090);
        assert_eq!(meta["ISTIO_REVISION"], "canary");
        assert_eq!(meta["WORKLOAD_NAME"], "reviews-v1");
        assert_eq!(meta["NAME"], "reviews-v1-abc");
        assert_eq!(meta["NAMESPACE"], "default");
        assert_eq!(meta["MESH_ID"], "cluster.local");
        assert_eq!(meta["CLUSTER_ID"], "Kubernetes", "typed options win over extra metadata");
        assert_eq!(meta["ISTIO_VERSION"], DEFAULT_ISTIO_VERSION);
    }

    #[test]
    fn discovery_reads_back_as_the_xds_model_parses_it() {
        let opts = options();
        let boot = bootstrap(&opts).unwrap();
        let meta: BTreeMap<String, Value> = serde_json::from_value(boot["node"]["metadata"].clone()).unwrap();
        let proxy = crate::model::Proxy::from_node(boot["node"]["id"].as_str().unwrap(), &meta).unwrap();
        assert_eq!(proxy.id, "reviews-v1-abc.default");
        assert_eq!(proxy.namespace, "default");
        assert_eq!(proxy.ip_addresses, ["10.1.2.3"]);
        assert_eq!(proxy.labels["app"], "reviews");
    }

    #[test]
    fn listeners_bind_the_proxy_ip_only_without_interception() {
        let address = |opts: &BootstrapOptions| {
            let boot = bootstrap(opts).unwrap();
            let listeners = boot["static_resources"]["listeners"].as_array().unwrap().clone();
            listeners.iter().map(|l| l["address"]["socket_address"]["address"].clone()).collect::<Vec<_>>()
        };
        assert_eq!(address(&options()), [json!("0.0.0.0"), json!("0.0.0.0")]);
        let none = BootstrapOptions { interception: InterceptionMode::None, ..options() };
        assert_eq!(address(&none), [json!("10.1.2.3"), json!("10.1.2.3")]);
        let none_no_ip = BootstrapOptions { interception: InterceptionMode::None, ip_addresses: vec![], ..options() };
        assert_eq!(address(&none_no_ip), [json!("0.0.0.0"), json!("0.0.0.0")]);
        let tproxy = BootstrapOptions { interception: InterceptionMode::Tproxy, ..options() };
        assert_eq!(address(&tproxy), [json!("0.0.0.0"), json!("0.0.0.0")]);
    }

    #[test]
    fn xds_cluster_resolves_names_by_dns_and_ips_statically() {
        let kind = |addr: &str| {
            let boot = bootstrap(&BootstrapOptions { discovery_address: addr.into(), ..options() }).unwrap();
            let clusters = boot["static_resources"]["clusters"].as_array().unwrap().clone();
            let xds = clusters.into_iter().find(|c| c["name"] == XDS_CLUSTER).unwrap();
            let socket =
                &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
            (xds["type"].clone(), socket["address"].clone(), socket["port_value"].clone())
        };
        assert_eq!(
            kind("istiod.istio-system.svc:15010"),
            (json!("STRICT_DNS"), json!("istiod.istio-system.svc"), json!(15010))
        );
        assert_eq!(kind("127.0.0.1:18000"), (json!("STATIC"), json!("127.0.0.1"), json!(18000)));
        assert_eq!(kind("[::1]:18000"), (json!("STATIC"), json!("::1"), json!(18000)));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for addr in ["istiod", "istiod:", ":15010", "istiod:http", "::1:15010", "[]:1"] {
            let err = bootstrap(&BootstrapOptions { discovery_address: addr.into(), ..options() }).unwrap_err();
            assert_eq!(err, BootstrapError::BadDiscoveryAddress(addr.into()), "{addr}");
        }
        assert_eq!(
            bootstrap(&BootstrapOptions { pod_name: String::new(), ..options() }),
            Err(BootstrapError::Missing("pod name"))
        );
    }

    #[test]
    fn transport_and_fetch_timeouts() {
        let boot = bootstrap(&options()).unwrap();
        let dynamic = &boot["dynamic_resources"];
        assert_eq!(dynamic["ads_config"]["api_type"], "DELTA_GRPC");
        assert_eq!(dynamic["ads_config"]["set_node_on_first_message_only"], true);
        assert_eq!(dynamic["cds_config"]["initial_fetch_timeout"], "0s");
        assert_eq!(dynamic["lds_config"]["initial_fetch_timeout"], "0s");
        let sotw = bootstrap(&BootstrapOptions { xds_transport: XdsTransport::Grpc, ..options() }).unwrap();
        assert_eq!(sotw["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    }

    #[test]
    fn readiness_rewrites_to_admin_ready() {
        let boot = bootstrap(&BootstrapOptions { admin_port: 19001, ..options() }).unwrap();
        let readiness = &boot["static_resources"]["listeners"][0];
        assert_eq!(readiness["address"]["socket_address"]["port_value"], 15021);
        let hcm = &readiness["filter_chains"][0]["filters"][0]["typed_config"];
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["match"]["path"], READINESS_PATH);
        assert_eq!(route["route"], json!({"cluster": AGENT_CLUSTER, "prefix_rewrite": "/ready"}));
        let agent = &boot["static_resources"]["clusters"][0];
        assert_eq!(agent["name"], AGENT_CLUSTER);
        assert_eq!(
            agent["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
            19001
        );
    }

    #[test]
    fn metadata_from_env_strips_prefixes_and_parses_json() {
        let vars = [
            ("ISTIO_META_MESH_ID", "cluster.local"),
            ("ISTIO_META_POD_PORTS", r#"[{"containerPort":8080}]"#),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"x"}"#),
            ("ISTIO_METAJSON_BROKEN", "{"),
            ("ISTIO_META_", "ignored"),
            ("PATH", "/bin"),
        ];
        let (meta, bad) = metadata_from_env(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        assert_eq!(meta["MESH_ID"], "cluster.local");
        assert_eq!(meta["POD_PORTS"], r#"[{"containerPort":8080}]"#, "POD_PORTS stays a string");
        assert_eq!(meta["LABELS"], json!({"app": "x"}));
        assert_eq!(meta.len(), 3);
        assert_eq!(bad, ["ISTIO_METAJSON_BROKEN"]);
    }

    #[test]
    fn deterministic() {
        let a = serde_json::to_string(&bootstrap(&options()).unwrap()).unwrap();
        let b = serde_json::to_string(&bootstrap(&options()).unwrap()).unwrap();
        assert_eq!(a, b);
    }
}
