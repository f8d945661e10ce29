//! Clusters: `outbound|<port>|<subset>|<host>` per visible service port and DestinationRule
//! subset, the fixed BlackHole/Passthrough clusters, and `inbound|<port>||` for the workload.
//!
//! A cluster starts from the service (discovery type from its resolution, upstream protocol
//! from its port) and then takes the DestinationRule traffic policy that applies to that port
//! and subset: connection pool, outlier detection, load balancer, TLS origination and upstream
//! PROXY protocol. A DestinationRule value Envoy would refuse is dropped with a warning; the
//! rest of the cluster is still served.
//!
//! `localityLbSetting` sets only `locality_weighted_lb_config` here and names the EDS and
//! STRICT_DNS clusters it applies to ([`outbound_with_localities`]); the priorities and weights
//! it gives are per proxy ([`super::locality`]): in each proxy's copy of the EDS endpoints, and
//! in its own copy of the DNS clusters, whose endpoints are inline.
//!
//! `zoneAwareLbSetting` likewise: `zone_aware_lb_config` here, region priorities per proxy
//! (and the proxy's own `local_cluster`) in its endpoints.
//!
//! Not translated here: `tunnel` (the TCP proxies of the listeners take it, see
//! [`super::tunnel`]), and auto-mTLS (see [`tls_socket`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as EnvoyRetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, LocalityWeightedLbConfig, ZoneAwareLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbConfig, LbPolicy,
    LeastRequestLbConfig, MaglevLbConfig, OriginalDstLbConfig, RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, LoadBalancingPolicy, OutlierDetection as EnvoyOutlierDetection,
    UpstreamConnectionOptions, cluster::TransportSocketMatch, load_balancing_policy,
};
use envoy_types::pb::envoy::config::common::matcher::v3::{HttpHeadersMatch, MatchPredicate, match_predicate};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiConfigSource, ApiVersion, BindConfig, ConfigSource, DataSource, GrpcService,
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions, KeepaliveSettings,
    ProxyProtocolConfig, RuntimeDouble, SocketAddress, TcpKeepalive as EnvoyTcpKeepalive, TransportSocket,
    TypedExtensionConfig, UpstreamHttpProtocolOptions, api_config_source, config_source, data_source, grpc_service,
    socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::SlowStartConfig as CommonSlowStartConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher, TlsCertificate,
    TlsParameters, UpstreamTlsContext, certificate_validation_context, common_tls_context, subject_alt_name_matcher,
    tls_parameters,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::OutlierDetection as HttpOutlierDetection;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig, explicit_http_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use prost::bytes::Bytes;
use rudder_config::common::Duration;
use rudder_config::labels::TLS_MODE_ISTIO;
use rudder_config::networking::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, ProxyProtocol, RetryBudget, SimpleLb, Subset, TcpKeepalive, TrafficPolicy,
    ZoneAwareLoadBalancerSetting,
};

use super::context::{
    BLACKHOLE_CLUSTER, ConfigMetadata, Context, INBOUND_PASSTHROUGH_CLUSTER, InboundPort, PASSTHROUGH_CLUSTER,
    inbound_cluster_name, outbound_cluster_name,
};
use super::credentials::{CA_SUFFIX, CREDENTIAL_PREFIX};
use super::endpoint;
use super::locality::LocalityPolicy;
use super::security::{ROOT_SECRET, TRANSPORT_SOCKET_TLS, WORKLOAD_SECRET};
use crate::model::{InterceptionMode, NodeType, Protocol, Resolution, Service, ServicePort, labels_match};

/// Key of the upstream HTTP options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Source address of connections to the local workload, which iptables lets through instead of
/// capturing them again.
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";
/// Bootstrap cluster of the local SDS server (istio-agent's), serving `default` and `ROOTCA`.
pub const SDS_CLUSTER: &str = "sds-grpc";

/// The endpoint metadata key (under `envoy.transport_socket_match`) auto mTLS matches on.
const TLS_MODE_KEY: &str = "tlsMode";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(60);
const DEFAULT_RING_SIZE: u64 = 1024;
/// Envoy's limit on `minimum_ring_size`.
const MAX_RING_SIZE: u64 = 8_388_608;
/// Envoy's load-balancing extension behind `loadBalancer.backendUtilization`.
pub const CSWRR_POLICY: &str = "envoy.load_balancing_policies.client_side_weighted_round_robin";
/// Maglev table sizes must be prime and below this.
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

/// Clusters for reaching services: one per visible service port and DestinationRule subset,
/// sorted by name (first wins on a duplicate name), then BlackHole, Passthrough and
/// InboundPassthrough.
pub fn outbound(ctx: &Context<'_>) -> Vec<Cluster> {
    outbound_with_localities(ctx).0
}

/// [`outbound`], and the [`LocalityPolicy`] of each EDS or STRICT_DNS cluster that has one
/// (sorted by cluster name): what discovery needs to give this proxy its own copy of those
/// clusters' endpoints (EDS) or of the clusters themselves (DNS, whose endpoints are inline).
pub fn outbound_with_localities(ctx: &Context<'_>) -> (Vec<Cluster>, Vec<(String, LocalityPolicy)>) {
    let planned = plan(ctx);
    let localities = localities_of(ctx, &planned);
    let mut clusters: Vec<Cluster> = Vec::with_capacity(planned.len() + 4);
    for planned in planned {
        clusters.push(Cluster::default());
        let Some(cluster) = clusters.last_mut() else { continue };
        let metadata = planned.rule.map(|rule| rule_metadata(rule));
        if planned_cluster(ctx, cluster, planned) {
            cluster.metadata = metadata.map(|m| m.message());
        } else {
            clusters.pop();
        }
    }
    clusters.extend(fixed_clusters(ctx));
    (clusters, localities)
}

/// [`outbound`]'s clusters as discovery serves them (see [`ServedClusters`]): each is built in
/// one scratch message and encoded at once, so no array of messages is ever held.
///
/// A `Cluster` is 3,360 bytes before anything is set: building 12,007 of them into an array,
/// then encoding and dropping it, moved ~40 MB through fresh pages and the caches three times.
/// Built and encoded one at a time, the 1,000 × 4 benchmark mesh's clusters take a quarter of
/// the time (`translate` bench).
pub fn outbound_served(ctx: &Context<'_>) -> ServedClusters {
    let planned = plan(ctx);
    let localities = localities_of(ctx, &planned);
    let mut served = ServedClusters { encoded: Vec::with_capacity(planned.len() + 4), inline: Vec::new(), localities };
    // Each rule's metadata field, encoded once: a rule shapes a dozen clusters or more.
    let mut metadata_fields: foldhash::HashMap<*const DestinationRule, Vec<u8>> = Default::default();
    let mut scratch = Cluster::default();
    for planned in planned {
        let rule = planned.rule.map(|rule| &**rule);
        if planned_cluster(ctx, &mut scratch, planned) {
            let field = rule.map(|rule| {
                let field = metadata_fields.entry(std::ptr::from_ref(rule));
                field.or_insert_with(|| rule_metadata(rule).field(CLUSTER_METADATA)).as_slice()
            });
            served.add(&mut scratch, rule.zip(field));
        }
        // A failed build may have left fields set.
        scratch = Cluster::default();
    }
    for mut cluster in fixed_clusters(ctx) {
        served.add(&mut cluster, None);
    }
    served
}

/// Outbound clusters encoded as they are built ([`outbound_served`]).
#[derive(Debug)]
pub struct ServedClusters {
    /// Every cluster, by name, in [`outbound`]'s order.
    pub encoded: Vec<(String, Bytes)>,
    /// The messages of the clusters whose endpoints are inline (DNS), also in `encoded`: a
    /// proxy with a locality gets its own copy of those, made from the message.
    pub inline: Vec<Cluster>,
    /// As [`outbound_with_localities`] gives them.
    pub localities: Vec<(String, LocalityPolicy)>,
}

impl ServedClusters {
    /// Adds `cluster`, encoded, with the metadata of the rule that shaped it (given with its
    /// encoded field); its message is kept only when its endpoints are inline.
    fn add(&mut self, cluster: &mut Cluster, rule: Option<(&DestinationRule, &[u8])>) {
        use prost::Message;
        if has_inline_endpoints(cluster) {
            cluster.metadata = rule.map(|(rule, _)| rule_metadata(rule).message());
            self.encoded.push((cluster.name.clone(), Bytes::from(cluster.encode_to_vec())));
            self.inline.push(std::mem::take(cluster));
            return;
        }
        let bytes = match rule {
            None => cluster.encode_to_vec(),
            Some((_, field)) => {
                // The bytes prost writes for the cluster with its metadata set, as the message
                // path serves it: prost writes fields in tag order.
                let mut bytes = Vec::with_capacity(cluster.encoded_len() + field.len());
                cluster.encode_raw(&mut bytes);
                let at = crate::protowire::first_field_after(&bytes, CLUSTER_METADATA).unwrap_or(bytes.len());
                bytes.extend_from_slice(field);
                bytes[at..].rotate_right(field.len());
                bytes
            }
        };
        self.encoded.push((std::mem::take(&mut cluster.name), Bytes::from(bytes)));
    }
}

/// Whether a cluster carries its endpoints (STRICT_DNS, LOGICAL_DNS, STATIC) rather than
/// getting them over EDS.
pub fn has_inline_endpoints(cluster: &Cluster) -> bool {
    cluster.load_assignment.as_ref().is_some_and(|a| !a.endpoints.is_empty())
}

/// The locality policies of the planned EDS and STRICT_DNS clusters that have one.
fn localities_of(ctx: &Context<'_>, planned: &[Planned<'_>]) -> Vec<(String, LocalityPolicy)> {
    planned
        .iter()
        // EDS clusters, and DNS ones whose inline endpoints can carry priorities (LOGICAL_DNS
        // has a single host).
        .filter(|p| matches!(p.service.resolution, Resolution::ClientSideLb | Resolution::Dns))
        .filter(|p| p.policy.load_balancer.and_then(|lb| lb.simple) != Some(SimpleLb::Passthrough))
        .filter_map(|p| Some((p.name.clone(), locality_policy(ctx, p.service, &p.policy)?)))
        .collect()
}

/// Builds on `cluster` (a default one) a planned service cluster, without its metadata (see
/// [`rule_metadata`]). False when it cannot exist.
fn planned_cluster(ctx: &Context<'_>, cluster: &mut Cluster, planned: Planned<'_>) -> bool {
    let Planned { name, service, port, subset, policy, rule: _ } = planned;
    service_cluster(ctx, cluster, name, service, port, subset, &policy)
}

/// `Cluster.metadata`'s field number.
const CLUSTER_METADATA: u32 = 25;

/// The `istio.config` metadata of the clusters `rule` shapes.
fn rule_metadata(rule: &DestinationRule) -> ConfigMetadata<'_> {
    ConfigMetadata {
        resource: "destination-rule",
        namespace: rule.metadata.namespace.as_deref().unwrap_or_default(),
        name: rule.metadata.name.as_deref().unwrap_or_default(),
    }
}

/// The clusters after the service clusters: BlackHole, Passthrough, InboundPassthrough and
/// the tracing collector's when it needs one.
fn fixed_clusters(ctx: &Context<'_>) -> impl Iterator<Item = Cluster> {
    [blackhole_cluster(ctx), passthrough_cluster(ctx), inbound_passthrough_cluster(ctx)]
        .into_iter()
        .chain(tracing_collector_cluster(ctx))
}

/// One outbound service cluster to build: its name, what it serves and the policy in force.
struct Planned<'a> {
    name: String,
    service: &'a Service,
    port: &'a ServicePort,
    subset: Option<&'a Subset>,
    policy: Policy<'a>,
    rule: Option<&'a Arc<DestinationRule>>,
}

/// The service clusters of a proxy, sorted by name, a duplicate name keeping its first.
fn plan<'a>(ctx: &Context<'a>) -> Vec<Planned<'a>> {
    // Names are decided and sorted before any cluster is built: clusters are ~3 KB each, and
    // sorting (or growing) a vector of them moves every one many times over.
    //
    // A name is `outbound|<port>|<subset>|<host>`, and services come in host order, so each
    // (port, subset) bucket fills in name order; joining the buckets in the order of their
    // `<port>|<subset>|` prefixes sorts the plans without comparing whole names (callgrind: the
    // planning took 81M instructions for three sidecars with a sort of the plans, 55M so). A
    // subset name with a `|` could break that, so the result is checked and sorted when it is
    // not in order.
    let mut buckets: BTreeMap<(u32, &'a str), Vec<Planned<'a>>> = BTreeMap::new();
    for service in ctx.services() {
        let rule = ctx.destination_rule(&service.hostname);
        let rule_policy = rule.and_then(|r| r.spec.traffic_policy.as_ref());
        let subsets = rule.map(|r| r.spec.subsets.as_slice()).unwrap_or_default();
        for port in service.ports.iter().filter(|p| ctx.port_visible(service, p.port)) {
            let name = outbound_cluster_name(port.port, "", &service.hostname);
            let policy = port_policy(rule_policy, port.port);
            let bucket = buckets.entry((port.port, "")).or_default();
            bucket.push(Planned { name, service, port, subset: None, policy, rule });
            for subset in subsets.iter().filter(|s| !s.name.is_empty()) {
                let policy = subset_policy(rule_policy, subset.traffic_policy.as_ref(), port.port);
                let name = outbound_cluster_name(port.port, &subset.name, &service.hostname);
                let bucket = buckets.entry((port.port, subset.name.as_str())).or_default();
                bucket.push(Planned { name, service, port, subset: Some(subset), policy, rule });
            }
        }
    }
    let mut prefixes: Vec<(String, Vec<Planned<'a>>)> = buckets
        .into_iter()
        .map(|((port, subset), plans)| ([itoa::Buffer::new().format(port), "|", subset, "|"].concat(), plans))
        .collect();
    prefixes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut planned: Vec<Planned<'a>> = prefixes.into_iter().flat_map(|(_, plans)| plans).collect();
    if !planned.is_sorted_by(|a, b| a.name <= b.name) {
        // Stable, so the first of a duplicate name is the one kept.
        planned.sort_by(|a, b| a.name.cmp(&b.name));
    }
    planned.dedup_by(|later, first| later.name == first.name);
    planned
}

/// The locality load balancing of a cluster under `policy` (the rule's setting, else the
/// mesh's), when it changes anything.
fn locality_policy(ctx: &Context<'_>, service: &Service, policy: &Policy<'_>) -> Option<LocalityPolicy> {
    if let Some(zone_aware) = zone_aware_setting(ctx.snapshot.mesh.zone_aware_lb_setting.as_ref(), policy) {
        return LocalityPolicy::zone_aware(zone_aware);
    }
    LocalityPolicy::of(
        ctx.snapshot.mesh.locality_lb_setting.as_ref(),
        policy.load_balancer.and_then(|lb| lb.locality_lb_setting.as_ref()),
        service.traffic_distribution,
        policy.outlier_detection.is_some(),
    )
}

/// The zipkin collector's cluster when its address is not a registry service (`zipkin`: STATIC
/// to an IP, STRICT_DNS to a name outside the cluster).
fn tracing_collector_cluster(ctx: &Context<'_>) -> Option<Cluster> {
    let (host, port) = super::telemetry::collector(ctx)?.address?;
    // An IP needs no resolving; a name outside the cluster is looked up as DNS.
    let kind = if host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok() {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let mut cluster = Cluster::default();
    let draft = Draft::new(ctx, &mut cluster, super::telemetry::ZIPKIN_CLUSTER.to_owned(), kind);
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                address: Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                    SocketAddress {
                        address: host,
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    draft.cluster.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: super::telemetry::ZIPKIN_CLUSTER.to_owned(),
        endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
            lb_endpoints: vec![endpoint],
            ..Default::default()
        }],
        ..Default::default()
    });
    if kind == DiscoveryType::StrictDns {
        draft.cluster.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
    }
    draft.finish();
    Some(cluster)
}

/// Clusters for the proxy's own workload: `inbound|<port>||` per inbound port, STATIC to the
/// Sidecar ingress `defaultEndpoint` when there is one, else the original destination. The
/// Sidecar's connection pool (per ingress port, else `inboundConnectionPool`) applies.
pub fn inbound(ctx: &Context<'_>) -> Vec<Cluster> {
    ctx.inbound_ports().iter().map(|port| inbound_cluster(ctx, port)).collect()
}

// ---------------------------------------------------------------------------------------------
// Which parts of a DestinationRule apply to one cluster.

/// The traffic policy components in force for one cluster (port and subset resolved).
#[derive(Clone, Copy, Debug, Default)]
struct Policy<'a> {
    connection_pool: Option<&'a ConnectionPoolSettings>,
    load_balancer: Option<&'a LoadBalancerSettings>,
    outlier_detection: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
    proxy_protocol: Option<&'a ProxyProtocol>,
    retry_budget: Option<&'a RetryBudget>,
}

/// The policy for `port`: a matching `portLevelSettings` entry replaces the destination-level
/// components entirely (omitted ones fall back to defaults, not to the destination level). The
/// second value says whether a port-level entry was used.
fn port_policy_with_flag(policy: Option<&TrafficPolicy>, port: u32) -> (Policy<'_>, bool) {
    let Some(policy) = policy else { return (Policy::default(), false) };
    let port_level = policy.port_level_settings.iter().find(|p| p.port.as_ref().and_then(|s| s.number) == Some(port));
    match port_level {
        Some(p) => (
            Policy {
                connection_pool: p.connection_pool.as_ref(),
                load_balancer: p.load_balancer.as_ref(),
                outlier_detection: p.outlier_detection.as_ref(),
                tls: p.tls.as_ref(),
                proxy_protocol: None,
                retry_budget: None,
            },
            true,
        ),
        None => (
            Policy {
                connection_pool: policy.connection_pool.as_ref(),
                load_balancer: policy.load_balancer.as_ref(),
                outlier_detection: policy.outlier_detection.as_ref(),
                tls: policy.tls.as_ref(),
                proxy_protocol: policy.proxy_protocol.as_ref(),
                retry_budget: policy.retry_budget.as_ref(),
            },
            false,
        ),
    }
}

fn port_policy(policy: Option<&TrafficPolicy>, port: u32) -> Policy<'_> {
    port_policy_with_flag(policy, port).0
}

/// A subset's policy over the rule's, component by component: each component the subset sets
/// (for this port) wins; when the subset has a port-level entry for this port, all four main
/// components come from it.
fn subset_policy<'a>(rule: Option<&'a TrafficPolicy>, subset: Option<&'a TrafficPolicy>, port: u32) -> Policy<'a> {
    let base = port_policy(rule, port);
    let Some(subset) = subset else { return base };
    let (over, port_level) = port_policy_with_flag(Some(subset), port);
    Policy {
        connection_pool: if port_level || over.connection_pool.is_some() {
            over.connection_pool
        } else {
            base.connection_pool
        },
        load_balancer: if port_level || over.load_balancer.is_some() { over.load_balancer } else { base.load_balancer },
        outlier_detection: if port_level || over.outlier_detection.is_some() {
            over.outlier_detection
        } else {
            base.outlier_detection
        },
        tls: if port_level || over.tls.is_some() { over.tls } else { base.tls },
        proxy_protocol: subset.proxy_protocol.as_ref().or(base.proxy_protocol),
        retry_budget: subset.retry_budget.as_ref().or(base.retry_budget),
    }
}

// ---------------------------------------------------------------------------------------------
// Building one cluster.

/// A cluster under construction plus its upstream HTTP options, which end up packed into
/// `typed_extension_protocol_options` only when something set them. The cluster is built where
/// it will stay (a `Cluster` is ~3 KB: moving each of 12,000 from function to function on the
/// way into the list was a tenth of an outbound translation, in `memcpy`).
struct Draft<'c> {
    cluster: &'c mut Cluster,
    http: Option<HttpProtocolOptions>,
    /// The translation's last packed options ([`Context::packed_http`]).
    packed_http: &'c std::cell::RefCell<Option<(HttpProtocolOptions, envoy_types::pb::google::protobuf::Any)>>,
}

impl<'c> Draft<'c> {
    /// Builds on `cluster`, which must be a default one.
    fn new(ctx: &'c Context<'_>, cluster: &'c mut Cluster, name: String, kind: DiscoveryType) -> Self {
        cluster.alt_stat_name = [name.as_str(), ";"].concat();
        cluster.name = name;
        cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(kind as i32));
        cluster.connect_timeout = Some(pb_duration(mesh_connect_timeout(ctx)));
        cluster.common_lb_config = Some(CommonLbConfig::default());
        Self { cluster, http: None, packed_http: &ctx.packed_http }
    }

    fn kind(&self) -> Option<DiscoveryType> {
        match self.cluster.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).ok(),
            _ => None,
        }
    }

    fn http(&mut self) -> &mut HttpProtocolOptions {
        self.http.get_or_insert_with(HttpProtocolOptions::default)
    }

    fn common_http(&mut self) -> &mut CommonHttpProtocolOptions {
        self.http().common_http_protocol_options.get_or_insert_with(Default::default)
    }

    fn set_http2(&mut self) {
        self.http().upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions::default(),
            )),
        }));
    }

    fn set_downstream_protocol(&mut self) {
        self.http().upstream_protocol_options =
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            }));
    }

    fn http2_options(&mut self) -> Option<&mut Http2ProtocolOptions> {
        match self.http.as_mut()?.upstream_protocol_options.as_mut()? {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)),
            }) => Some(h2),
            _ => None,
        }
    }

    fn is_http2(&self) -> bool {
        matches!(
            self.http.as_ref().and_then(|h| h.upstream_protocol_options.as_ref()),
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)),
            }))
        )
    }

    /// Finishes the cluster. Envoy requires an upstream protocol once HTTP options exist, so
    /// options without one get explicit HTTP/1.1.
    fn finish(mut self) {
        if let Some(mut http) = self.http.take() {
            if http.upstream_protocol_options.is_none() {
                http.upstream_protocol_options =
                    Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                        protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        )),
                    }));
            }
            let mut packed = self.packed_http.borrow_mut();
            let any = match packed.as_ref() {
                Some((last, any)) if *last == http => any.clone(),
                _ => {
                    let any = pack_any(http.clone());
                    packed.insert((http, any)).1.clone()
                }
            };
            self.cluster.typed_extension_protocol_options = single(HTTP_PROTOCOL_OPTIONS, any);
        }
    }
}

fn single<V>(key: &str, value: V) -> HashMap<String, V> {
    [(key.to_owned(), value)].into_iter().collect()
}

/// Builds on `cluster` (a default one) the outbound cluster of one service port, optionally
/// narrowed to a subset. False when it cannot exist (a LOGICAL_DNS service with no address to
/// resolve).
fn service_cluster(
    ctx: &Context<'_>,
    cluster: &mut Cluster,
    name: String,
    service: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    policy: &Policy<'_>,
) -> bool {
    let passthrough_lb = policy.load_balancer.and_then(|lb| lb.simple) == Some(SimpleLb::Passthrough);
    let kind = match service.resolution {
        _ if passthrough_lb => DiscoveryType::OriginalDst,
        Resolution::ClientSideLb => DiscoveryType::Eds,
        Resolution::Dns => DiscoveryType::StrictDns,
        Resolution::DnsRoundRobin => DiscoveryType::LogicalDns,
        Resolution::Passthrough => DiscoveryType::OriginalDst,
        // Replaced by the dynamic forward proxy's cluster type below on HTTP ports.
        Resolution::DynamicDns => DiscoveryType::OriginalDst,
    };
    let dynamic = !passthrough_lb && super::dynamic_dns::serves(service, port);
    let mut draft = Draft::new(ctx, cluster, name, kind);
    match kind {
        DiscoveryType::Eds => {
            draft.cluster.eds_cluster_config = Some(EdsClusterConfig {
                service_name: draft.cluster.name.clone(),
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                    // Wait for endpoints rather than warm up empty.
                    initial_fetch_timeout: Some(PbDuration { seconds: 0, nanos: 0 }),
                    resource_api_version: ApiVersion::V3 as i32,
                    ..Default::default()
                }),
            });
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            let assignment = dns_load_assignment(ctx, service, port, subset, &draft.cluster.name);
            if kind == DiscoveryType::LogicalDns && assignment.endpoints.is_empty() {
                tracing::debug!(cluster = %draft.cluster.name, "LOGICAL_DNS cluster without an endpoint; not built");
                return false;
            }
            draft.cluster.load_assignment = Some(assignment);
            // Which address families a proxy has is not part of its view, so let Envoy try
            // IPv4 first and fall back to IPv6.
            draft.cluster.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
            // The cluster-level DNS fields are deprecated in favour of the DNS cluster
            // extension, but every Envoy Istio supports still reads them, as Istio relies on.
            #[allow(deprecated)]
            {
                draft.cluster.respect_dns_ttl = true;
            }
            let refresh = ctx.snapshot.mesh.dns_refresh_rate.filter(|d| d.as_nanos() > 0);
            #[allow(deprecated)]
            {
                draft.cluster.dns_refresh_rate = Some(pb_duration(refresh.unwrap_or(DEFAULT_DNS_REFRESH_RATE)));
            }
        }
        _ => {}
    }
    set_upstream_protocol(ctx, &mut draft, port.protocol);
    apply_connection_pool(ctx, &mut draft, policy.connection_pool);
    apply_h2_upgrade(ctx, &mut draft, port.protocol, policy.connection_pool);
    apply_max_concurrent_streams(&mut draft, policy.connection_pool);
    apply_http2_keepalive(&mut draft, policy.connection_pool);
    apply_retry_budget(&mut draft, policy.retry_budget);
    apply_outlier_detection(&mut draft, policy.outlier_detection);
    apply_outlier_error_codes(&mut draft, port.protocol, policy.outlier_detection);
    apply_load_balancer(&mut draft, policy.load_balancer);
    apply_locality_weights(ctx, &mut draft, service, policy);
    let subset_name = subset.map_or("", |s| s.name.as_str());
    let mut port_number = itoa::Buffer::new();
    let sni = ["outbound_.", port_number.format(port.port), "_.", subset_name, "_.", &service.hostname].concat();
    if let Some(tls) = policy.tls {
        draft.cluster.transport_socket = tls_socket(ctx, &mut draft, tls, service, &sni);
    } else if policy.proxy_protocol.is_none() && auto_mtls(ctx, service) {
        // Auto mTLS: Istio mTLS to endpoints whose workload has a sidecar (`tlsMode: istio`
        // endpoint metadata), plaintext to the others.
        let istio_mutual = ClientTlsSettings { mode: Some(ClientTlsMode::IstioMutual), ..Default::default() };
        let socket = tls_socket(ctx, &mut draft, &istio_mutual, service, &sni);
        draft.cluster.transport_socket_matches = vec![
            TransportSocketMatch {
                name: "tlsMode-istio".to_owned(),
                r#match: Some(endpoint::one_field(TLS_MODE_KEY, TLS_MODE_ISTIO.to_owned())),
                transport_socket: socket,
            },
            TransportSocketMatch {
                name: "tlsMode-disabled".to_owned(),
                r#match: Some(Default::default()),
                transport_socket: Some(raw_buffer()),
            },
        ];
    }
    if let Some(proxy_protocol) = policy.proxy_protocol {
        draft.cluster.transport_socket =
            Some(wrap_proxy_protocol(proxy_protocol, draft.cluster.transport_socket.take()));
    }
    if dynamic {
        // The cluster resolves each request's host; it balances by itself.
        draft.cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::ClusterType(super::dynamic_dns::cluster_type()));
        draft.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        draft.cluster.lb_config = None;
        draft.cluster.load_balancing_policy = None;
        draft.cluster.load_assignment = None;
        if let Some(common) = draft.cluster.common_lb_config.as_mut() {
            common.locality_config_specifier = None;
        }
    }
    draft.finish();
    true
}

/// Whether clusters of `service` get auto mTLS: the mesh enables it, this proxy has a
/// certificate to present, the service is in the mesh, and its namespace does not turn mTLS off.
fn auto_mtls(ctx: &Context<'_>, service: &Service) -> bool {
    ctx.snapshot.mesh.enable_auto_mtls != Some(false)
        && ctx.proxy.has_workload_certificate()
        && !service.mesh_external
        && !super::security::namespace_disables_mtls(ctx.snapshot, &service.namespace)
}

/// Inline endpoints of a DNS cluster: the service's endpoints for this port (and subset), or,
/// when the service lists none at all, its own host name (a ServiceEntry without endpoints
/// resolves its host).
fn dns_load_assignment(
    ctx: &Context<'_>,
    service: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    name: &str,
) -> ClusterLoadAssignment {
    let all = ctx.snapshot.endpoints_of(&service.hostname);
    let endpoints: Vec<_> = if all.is_empty() {
        let own = crate::model::Endpoint {
            address: service.hostname.clone(),
            port: port.port,
            service_port_name: port.name.clone(),
            labels: Default::default(),
            namespace: service.namespace.clone(),
            service_account: String::new(),
            locality: String::new(),
            weight: 0,
            health: crate::model::Health::Healthy,
            tls_mode: String::new(),
            workload: String::new(),
        };
        endpoint::lb_endpoint(&own).map(|lb| ("", lb)).into_iter().collect()
    } else {
        all.iter()
            .filter(|e| e.service_port_name == port.name)
            .filter(|e| subset.is_none_or(|s| labels_match(&s.labels, &e.labels)))
            .filter_map(|e| {
                let target = if e.port == 0 { port.port } else { e.port };
                let mut lb = endpoint::lb_endpoint(e)?;
                if target != e.port
                    && let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = lb.host_identifier.as_mut()
                {
                    ep.address = Some(endpoint::socket(&e.address, target));
                }
                Some((e.locality.as_str(), lb))
            })
            .collect()
    };
    let mut localities = endpoint::group_by_locality(endpoints.into_iter());
    if service.resolution == Resolution::DnsRoundRobin {
        // LOGICAL_DNS takes exactly one address.
        localities.truncate(1);
        if let Some(first) = localities.first_mut() {
            first.lb_endpoints.truncate(1);
        }
    }
    ClusterLoadAssignment { cluster_name: name.to_owned(), endpoints: localities, ..Default::default() }
}

/// HTTP/2 and gRPC ports speak HTTP/2 upstream; ports of unknown protocol on a sidecar keep
/// whatever the client spoke (sniffing decided HTTP/1.1 or HTTP/2 downstream).
fn set_upstream_protocol(ctx: &Context<'_>, draft: &mut Draft, protocol: Protocol) {
    if protocol.is_http2() {
        draft.set_http2();
    } else if protocol.is_auto() && ctx.proxy.node_type == NodeType::Sidecar {
        draft.set_downstream_protocol();
    }
}

fn mesh_connect_timeout(ctx: &Context<'_>) -> Duration {
    ctx.snapshot.mesh.connect_timeout.filter(|d| d.as_nanos() > 0).unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// Istio's circuit breakers: effectively unlimited, because Envoy's own defaults (1024
/// connections, 3 retries) cause 503s under ordinary load and pod churn.
fn default_thresholds() -> Thresholds {
    let max = Some(UInt32Value { value: u32::MAX });
    Thresholds {
        max_connections: max,
        max_pending_requests: max,
        max_requests: max,
        max_retries: max,
        track_remaining: true,
        ..Default::default()
    }
}

/// Connection pool: circuit breakers, connect timeout, TCP keepalive and HTTP connection limits.
/// Applied to every cluster, with defaults when the rule sets nothing.
fn apply_connection_pool(ctx: &Context<'_>, draft: &mut Draft, pool: Option<&ConnectionPoolSettings>) {
    let name = draft.cluster.name.clone();
    let mut thresholds = default_thresholds();
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let limit = |value: Option<i32>, field: &str| -> Option<UInt32Value> {
        match value? {
            v if v > 0 => Some(UInt32Value { value: v.unsigned_abs() }),
            0 => None,
            v => {
                tracing::warn!(cluster = %name, field, value = v, "negative connection pool limit ignored");
                None
            }
        }
    };
    let mut idle_timeout = None;
    let mut max_requests_per_connection = None;
    if let Some(http) = http {
        if let Some(v) = limit(http.http2_max_requests, "connectionPool.http.http2MaxRequests") {
            thresholds.max_requests = Some(v);
        }
        if let Some(v) = limit(http.http1_max_pending_requests, "connectionPool.http.http1MaxPendingRequests") {
            thresholds.max_pending_requests = Some(v);
        }
        if let Some(v) = limit(http.max_retries, "connectionPool.http.maxRetries") {
            thresholds.max_retries = Some(v);
        }
        max_requests_per_connection =
            limit(http.max_requests_per_connection, "connectionPool.http.maxRequestsPerConnection");
        idle_timeout = non_negative(&name, "connectionPool.http.idleTimeout", http.idle_timeout);
    }
    let mut max_connection_duration = None;
    if let Some(tcp) = tcp {
        if let Some(timeout) = positive(&name, "connectionPool.tcp.connectTimeout", tcp.connect_timeout) {
            draft.cluster.connect_timeout = Some(timeout);
        }
        if let Some(v) = limit(tcp.max_connections, "connectionPool.tcp.maxConnections") {
            thresholds.max_connections = Some(v);
        }
        max_connection_duration =
            non_negative(&name, "connectionPool.tcp.maxConnectionDuration", tcp.max_connection_duration);
        if idle_timeout.is_none() {
            idle_timeout = non_negative(&name, "connectionPool.tcp.idleTimeout", tcp.idle_timeout);
        }
    }
    draft.cluster.circuit_breakers = Some(CircuitBreakers { thresholds: vec![thresholds], ..Default::default() });
    draft.cluster.upstream_connection_options =
        tcp_keepalive(&name, ctx.snapshot.mesh.tcp_keepalive.as_ref(), tcp.and_then(|t| t.tcp_keepalive.as_ref()))
            .map(|k| UpstreamConnectionOptions { tcp_keepalive: Some(k), ..Default::default() });
    if idle_timeout.is_some() || max_requests_per_connection.is_some() || max_connection_duration.is_some() {
        let common = draft.common_http();
        common.idle_timeout = idle_timeout;
        common.max_requests_per_connection = max_requests_per_connection;
        common.max_connection_duration = max_connection_duration;
    }
    if http.is_some_and(|h| h.use_client_protocol) {
        draft.set_downstream_protocol();
    }
}

/// The mesh's keepalive with the rule's fields laid over it; `None` when neither sets one.
fn tcp_keepalive(cluster: &str, mesh: Option<&TcpKeepalive>, rule: Option<&TcpKeepalive>) -> Option<EnvoyTcpKeepalive> {
    if mesh.is_none() && rule.is_none() {
        return None;
    }
    let seconds = |field: &str, d: Option<Duration>| -> Option<UInt32Value> {
        let d = d?;
        if d.as_nanos() < 0 {
            tracing::warn!(cluster, field, "negative keepalive duration ignored");
            return None;
        }
        Some(UInt32Value { value: u32::try_from(d.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX) })
    };
    let mut out = EnvoyTcpKeepalive::default();
    for (source, keepalive) in [("mesh", mesh), ("rule", rule)] {
        let Some(k) = keepalive else { continue };
        if let Some(p) = k.probes {
            out.keepalive_probes = Some(UInt32Value { value: p });
        }
        if let Some(t) = seconds(&format!("{source} tcpKeepalive.time"), k.time) {
            out.keepalive_time = Some(t);
        }
        if let Some(i) = seconds(&format!("{source} tcpKeepalive.interval"), k.interval) {
            out.keepalive_interval = Some(i);
        }
    }
    Some(out)
}

/// `h2UpgradePolicy`: the rule's UPGRADE makes any port HTTP/2 (the user vouches it is HTTP),
/// DO_NOT_UPGRADE keeps it, otherwise the mesh's UPGRADE applies to declared HTTP ports.
/// `useClientProtocol` wins over an upgrade.
fn apply_h2_upgrade(ctx: &Context<'_>, draft: &mut Draft, protocol: Protocol, pool: Option<&ConnectionPoolSettings>) {
    let http = pool.and_then(|p| p.http.as_ref());
    if http.is_some_and(|h| h.use_client_protocol) || draft.is_http2() {
        return;
    }
    let upgrade = match http.and_then(|h| h.h2_upgrade_policy) {
        Some(H2UpgradePolicy::Upgrade) => true,
        Some(H2UpgradePolicy::DoNotUpgrade) => false,
        _ => {
            protocol.is_http()
                && ctx.snapshot.mesh.h2_upgrade_policy == Some(rudder_config::mesh::H2UpgradePolicy::Upgrade)
        }
    };
    if upgrade {
        draft.set_http2();
    }
}

fn apply_max_concurrent_streams(draft: &mut Draft, pool: Option<&ConnectionPoolSettings>) {
    let Some(streams) = pool.and_then(|p| p.http.as_ref()).and_then(|h| h.max_concurrent_streams) else { return };
    let name = draft.cluster.name.clone();
    match (streams, draft.http2_options()) {
        (s, Some(h2)) if s > 0 => h2.max_concurrent_streams = Some(UInt32Value { value: s.unsigned_abs() }),
        (s, _) if s < 0 => {
            tracing::warn!(cluster = %name, value = s, "negative connectionPool.http.maxConcurrentStreams ignored");
        }
        _ => {}
    }
}

fn apply_retry_budget(draft: &mut Draft, budget: Option<&RetryBudget>) {
    let Some(budget) = budget else { return };
    let percent = match budget.percent {
        Some(p) if (0.0..=100.0).contains(&p) => p,
        Some(p) => {
            tracing::warn!(cluster = %draft.cluster.name, value = p, "retryBudget.percent outside 0..100; using 20");
            20.0
        }
        None => 20.0,
    };
    let retry_budget = EnvoyRetryBudget {
        budget_percent: Some(Percent { value: percent }),
        min_retry_concurrency: Some(UInt32Value { value: budget.min_retry_concurrency.unwrap_or(3) }),
        budget_interval: non_negative(&draft.cluster.name, "retryBudget.budgetInterval", budget.budget_interval)
            .filter(|d| *d != PbDuration::default()),
    };
    if let Some(thresholds) = draft.cluster.circuit_breakers.as_mut().and_then(|c| c.thresholds.first_mut()) {
        thresholds.retry_budget = Some(retry_budget);
    }
}

/// `connectionPool.http.http2KeepAlive`: PING keepalive on the cluster's HTTP/2 connections
/// (explicit HTTP/2, or the HTTP/2 side of "use the downstream protocol"). Envoy requires a
/// PING timeout; without one the gRPC keepalive default of 20s applies.
fn apply_http2_keepalive(draft: &mut Draft, pool: Option<&ConnectionPoolSettings>) {
    let Some(keepalive) = pool.and_then(|p| p.http.as_ref()).and_then(|h| h.http2_keep_alive.as_ref()) else {
        return;
    };
    let name = draft.cluster.name.clone();
    let settings = KeepaliveSettings {
        interval: positive(&name, "connectionPool.http.http2KeepAlive.interval", keepalive.interval),
        timeout: Some(
            positive(&name, "connectionPool.http.http2KeepAlive.timeout", keepalive.timeout)
                .unwrap_or(PbDuration { seconds: 20, nanos: 0 }),
        ),
        ..Default::default()
    };
    let h2 = match draft.http.as_mut().and_then(|h| h.upstream_protocol_options.as_mut()) {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)),
        })) => h2,
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http2_protocol_options: Some(h2),
            ..
        })) => h2,
        _ => {
            tracing::debug!(cluster = %name, "connectionPool.http.http2KeepAlive on a cluster without HTTP/2 upstream; ignored");
            return;
        }
    };
    h2.connection_keepalive = Some(settings);
}

/// `outlierDetection.outlierDetectionHttpErrorCodes`: the response codes outlier detection
/// counts as errors (instead of 5xx), as an `error_matcher` on `:status` in the upstream HTTP
/// options. Only HTTP clusters have those options.
fn apply_outlier_error_codes(draft: &mut Draft, protocol: Protocol, outlier: Option<&OutlierDetection>) {
    let Some(codes) = outlier.map(|o| &o.outlier_detection_http_error_codes).filter(|c| !c.is_empty()) else {
        return;
    };
    if draft.http.is_none() && !protocol.is_http() {
        tracing::debug!(cluster = %draft.cluster.name, "outlierDetectionHttpErrorCodes on a non-HTTP cluster; ignored");
        return;
    }
    let mut seen = BTreeSet::new();
    let rules: Vec<MatchPredicate> = codes
        .iter()
        .filter(|c| (100..=599).contains(*c) && seen.insert(**c))
        .map(|code| MatchPredicate {
            rule: Some(match_predicate::Rule::HttpResponseHeadersMatch(HttpHeadersMatch {
                headers: vec![HeaderMatcher {
                    name: ":status".to_owned(),
                    header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(code.to_string())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
            })),
        })
        .collect();
    let error_matcher = match <[MatchPredicate; 1]>::try_from(rules) {
        Ok([one]) => one,
        Err(rules) if rules.is_empty() => return,
        Err(rules) => {
            MatchPredicate { rule: Some(match_predicate::Rule::OrMatch(match_predicate::MatchSet { rules })) }
        }
    };
    draft.http().outlier_detection = Some(HttpOutlierDetection { error_matcher: Some(error_matcher) });
}

/// Outlier detection as Istio sets it: only the consecutive-error detectors, each enforced at
/// 100 % when its threshold is positive; success-rate ejection off. With outlier detection the
/// panic threshold defaults to 0 (few pods per service make Envoy's 50 % misfire).
fn apply_outlier_detection(draft: &mut Draft, outlier: Option<&OutlierDetection>) {
    let Some(outlier) = outlier else { return };
    let name = draft.cluster.name.clone();
    let enforcing = |v: u32| Some(UInt32Value { value: if v > 0 { 100 } else { 0 } });
    let mut out =
        EnvoyOutlierDetection { enforcing_success_rate: Some(UInt32Value { value: 0 }), ..Default::default() };
    if let Some(v) = outlier.consecutive_5xx_errors {
        out.consecutive_5xx = Some(UInt32Value { value: v });
        out.enforcing_consecutive_5xx = enforcing(v);
    }
    if let Some(v) = outlier.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(UInt32Value { value: v });
        out.enforcing_consecutive_gateway_failure = enforcing(v);
    }
    out.interval = positive(&name, "outlierDetection.interval", outlier.interval);
    out.base_ejection_time = positive(&name, "outlierDetection.baseEjectionTime", outlier.base_ejection_time);
    match outlier.max_ejection_percent {
        Some(p @ 1..=100) => out.max_ejection_percent = Some(UInt32Value { value: p.unsigned_abs() }),
        Some(p) if !(0..=100).contains(&p) => {
            tracing::warn!(cluster = %name, value = p, "outlierDetection.maxEjectionPercent outside 0..100 ignored");
        }
        _ => {}
    }
    if outlier.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(v) = outlier.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = Some(UInt32Value { value: v });
            out.enforcing_consecutive_local_origin_failure = Some(UInt32Value { value: 100 });
        }
        out.enforcing_local_origin_success_rate = Some(UInt32Value { value: 0 });
    }
    draft.cluster.outlier_detection = Some(out);
    let panic_threshold = match outlier.min_health_percent {
        None => Some(0),
        Some(p @ 0..=100) => Some(p),
        // Negative: leave Envoy's default panic threshold, as Istio does.
        Some(p) if p < 0 => None,
        Some(p) => {
            tracing::warn!(cluster = %name, value = p, "outlierDetection.minHealthPercent above 100 ignored");
            Some(0)
        }
    };
    if let Some(p) = panic_threshold {
        draft.cluster.common_lb_config.get_or_insert_with(Default::default).healthy_panic_threshold =
            Some(Percent { value: f64::from(p) });
    }
}

/// Load-balancing policy: LEAST_REQUEST unless the rule says otherwise; consistent hashing
/// picks RING_HASH (ring size default 1024) or MAGLEV; the hash key itself goes on the route.
/// An ORIGINAL_DST cluster always uses the cluster-provided policy.
fn apply_load_balancer(draft: &mut Draft, lb: Option<&LoadBalancerSettings>) {
    if draft.kind() == Some(DiscoveryType::OriginalDst) {
        draft.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        draft.cluster.load_assignment = None;
        return;
    }
    let name = draft.cluster.name.clone();
    let slow_start = lb.and_then(|lb| slow_start(&name, lb));
    if let Some(backend) = lb.and_then(|lb| lb.backend_utilization.as_ref()) {
        // Envoy's client-side weighted round robin, an extension policy: `load_balancing_policy`
        // replaces `lb_policy` (left at its default).
        let config = ClientSideWeightedRoundRobin {
            blackout_period: non_negative(
                &name,
                "loadBalancer.backendUtilization.blackoutPeriod",
                backend.blackout_period,
            ),
            slow_start_config: slow_start.map(|s| CommonSlowStartConfig {
                slow_start_window: s.slow_start_window,
                aggression: s.aggression,
                min_weight_percent: s.min_weight_percent,
            }),
            ..Default::default()
        };
        draft.cluster.lb_policy = LbPolicy::RoundRobin as i32;
        draft.cluster.lb_config = None;
        draft.cluster.load_balancing_policy = Some(LoadBalancingPolicy {
            policies: vec![load_balancing_policy::Policy {
                typed_extension_config: Some(TypedExtensionConfig {
                    name: CSWRR_POLICY.to_owned(),
                    typed_config: Some(pack_any(config)),
                }),
            }],
        });
        return;
    }
    match lb.and_then(|lb| lb.simple) {
        Some(SimpleLb::Random) => draft.cluster.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            draft.cluster.lb_policy = LbPolicy::RoundRobin as i32;
            draft.cluster.lb_config =
                slow_start.map(|s| LbConfig::RoundRobinLbConfig(RoundRobinLbConfig { slow_start_config: Some(s) }));
        }
        _ => {
            draft.cluster.lb_policy = LbPolicy::LeastRequest as i32;
            draft.cluster.lb_config = slow_start.map(|s| {
                LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                })
            });
        }
    }
    let Some(hash) = lb.and_then(|lb| lb.consistent_hash.as_ref()) else { return };
    if let Some(maglev) = &hash.maglev {
        draft.cluster.lb_policy = LbPolicy::Maglev as i32;
        draft.cluster.lb_config = match maglev.table_size {
            None | Some(0) => None,
            Some(size) if size < MAGLEV_MAX_TABLE_SIZE && is_prime(size) => {
                Some(LbConfig::MaglevLbConfig(MaglevLbConfig { table_size: Some(UInt64Value { value: size }) }))
            }
            Some(size) => {
                tracing::warn!(cluster = %name, size, "maglev.tableSize must be a prime below 5000011; using Envoy's default");
                None
            }
        };
        return;
    }
    let requested = match &hash.ring_hash {
        Some(ring) => ring.minimum_ring_size.filter(|n| *n != 0),
        None => Some(hash.minimum_ring_size.filter(|n| *n != 0).unwrap_or(DEFAULT_RING_SIZE)),
    };
    let size = match requested {
        Some(n) if n > MAX_RING_SIZE => {
            tracing::warn!(cluster = %name, size = n, "ringHash.minimumRingSize above 8388608; using 1024");
            Some(DEFAULT_RING_SIZE)
        }
        other => other,
    };
    draft.cluster.lb_policy = LbPolicy::RingHash as i32;
    draft.cluster.lb_config = size.map(|n| {
        LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: n }),
            ..Default::default()
        })
    });
}

/// The zone-aware setting in force: the rule's; else, when the rule sets no locality setting
/// of its own, the mesh's. Validation keeps a rule's two settings apart; zone-aware wins if
/// both came.
fn zone_aware_setting<'a>(
    mesh: Option<&'a ZoneAwareLoadBalancerSetting>,
    policy: &Policy<'a>,
) -> Option<&'a ZoneAwareLoadBalancerSetting> {
    let lb = policy.load_balancer;
    match lb.and_then(|lb| lb.zone_aware_lb_setting.as_ref()) {
        Some(setting) => Some(setting),
        None if lb.is_some_and(|lb| lb.locality_lb_setting.is_some()) => None,
        None => mesh,
    }
}

/// Locality-weighted load balancing when the cluster's locality policy asks for it (the
/// priorities and weights themselves are per proxy, in its endpoints). Not with an extension
/// load-balancing policy, which weighs by its own measure, nor on ORIGINAL_DST clusters.
fn apply_locality_weights(ctx: &Context<'_>, draft: &mut Draft, service: &Service, policy: &Policy<'_>) {
    if draft.cluster.load_balancing_policy.is_some() || draft.kind() == Some(DiscoveryType::OriginalDst) {
        return;
    }
    if let Some(zone_aware) = zone_aware_setting(ctx.snapshot.mesh.zone_aware_lb_setting.as_ref(), policy) {
        // Envoy routes by zone only for a proxy whose bootstrap names its own workload's
        // cluster (`local_cluster`); `enabled: false` must say 0 %, since Envoy's default for
        // such a proxy is on.
        let on = zone_aware.enabled != Some(false);
        draft.cluster.common_lb_config.get_or_insert_with(Default::default).locality_config_specifier =
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(ZoneAwareLbConfig {
                routing_enabled: Some(Percent { value: if on { 100.0 } else { 0.0 } }),
                min_cluster_size: zone_aware.min_cluster_size.map(|value| UInt64Value { value }),
                ..Default::default()
            }));
        return;
    }
    if locality_policy(ctx, service, policy).is_some_and(|p| p.weighs_localities()) {
        draft.cluster.common_lb_config.get_or_insert_with(Default::default).locality_config_specifier =
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {}));
    }
}

/// Slow start from `warmup` (or the older `warmupDurationSecs`).
fn slow_start(cluster: &str, lb: &LoadBalancerSettings) -> Option<SlowStartConfig> {
    let (duration, minimum_percent, aggression) = match &lb.warmup {
        Some(w) => (w.duration, w.minimum_percent, w.aggression),
        None => (lb.warmup_duration_secs, None, None),
    };
    let window = positive(cluster, "loadBalancer.warmup.duration", duration)?;
    let aggression = match aggression {
        Some(a) if a > 0.0 && a.is_finite() => Some(a),
        Some(a) => {
            tracing::warn!(cluster, value = a, "loadBalancer.warmup.aggression must be positive; ignored");
            None
        }
        None => None,
    };
    let minimum_percent = match minimum_percent {
        Some(p) if (0.0..=100.0).contains(&p) => Some(p),
        Some(p) => {
            tracing::warn!(cluster, value = p, "loadBalancer.warmup.minimumPercent outside 0..100; ignored");
            None
        }
        None => None,
    };
    Some(SlowStartConfig {
        slow_start_window: Some(window),
        aggression: aggression.map(|a| RuntimeDouble {
            default_value: a,
            runtime_key: "upstream.istio.slow_start.aggression".to_owned(),
        }),
        min_weight_percent: minimum_percent.map(|p| Percent { value: p }),
    })
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

// ---------------------------------------------------------------------------------------------
// TLS origination.

/// The transport socket for a rule's `tls`: none for DISABLE; an `UpstreamTlsContext` for
/// SIMPLE/MUTUAL (certificates from files or from the `credentialName` secret over ADS) and
/// for ISTIO_MUTUAL (the workload certificate `default` and trust bundle `ROOTCA` from the
/// local SDS server). `default_sni` is the Istio-mTLS SNI of this cluster.
fn tls_socket(
    ctx: &Context<'_>,
    draft: &mut Draft,
    tls: &ClientTlsSettings,
    service: &Service,
    default_sni: &str,
) -> Option<TransportSocket> {
    let name = draft.cluster.name.clone();
    let mode = tls.mode.unwrap_or_default();
    let mut sni = tls.sni.clone();
    if sni.len() > 255 {
        tracing::warn!(cluster = %name, "tls.sni longer than 255 bytes ignored");
        sni.clear();
    }
    let mut common = CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    match mode {
        ClientTlsMode::Disable => return None,
        ClientTlsMode::IstioMutual => {
            if sni.is_empty() {
                sni = default_sni.to_owned();
            }
            let sans = if tls.subject_alt_names.is_empty() {
                service_accounts(ctx, service)
            } else {
                tls.subject_alt_names.clone()
            };
            common.tls_certificate_sds_secret_configs = vec![sds_grpc_secret(WORKLOAD_SECRET)];
            common.validation_context_type =
                Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(san_validation(&sans)),
                        validation_context_sds_secret_config: Some(sds_grpc_secret(ROOT_SECRET)),
                        ..Default::default()
                    },
                ));
            common.alpn_protocols = if draft.is_http2() {
                vec!["istio-peer-exchange".into(), "istio".into(), "h2".into()]
            } else {
                vec!["istio-peer-exchange".into(), "istio".into()]
            };
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            let mutual = mode == ClientTlsMode::Mutual;
            let skip_verify = tls.insecure_skip_verify == Some(true);
            if sni.is_empty() {
                // Let Envoy send the request's host as SNI and check the certificate against it.
                let upstream = draft
                    .http()
                    .upstream_http_protocol_options
                    .get_or_insert_with(UpstreamHttpProtocolOptions::default);
                upstream.auto_sni = true;
                upstream.auto_san_validation = tls.subject_alt_names.is_empty() && !skip_verify;
            }
            if !tls.credential_name.is_empty() && credential_applies(ctx, service) {
                let secret = format!("{CREDENTIAL_PREFIX}{}", tls.credential_name);
                if mutual {
                    common.tls_certificate_sds_secret_configs = vec![ads_secret(&secret)];
                }
                if !skip_verify {
                    common.validation_context_type =
                        Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                            common_tls_context::CombinedCertificateValidationContext {
                                default_validation_context: Some(san_validation(&tls.subject_alt_names)),
                                validation_context_sds_secret_config: Some(ads_secret(&format!("{secret}{CA_SUFFIX}"))),
                                ..Default::default()
                            },
                        ));
                }
            } else {
                if mutual {
                    if tls.client_certificate.is_empty() || tls.private_key.is_empty() {
                        tracing::warn!(cluster = %name, "MUTUAL TLS without clientCertificate and privateKey: no client certificate is sent");
                    } else {
                        common.tls_certificates = vec![TlsCertificate {
                            certificate_chain: Some(file(&tls.client_certificate)),
                            private_key: Some(file(&tls.private_key)),
                            ..Default::default()
                        }];
                    }
                }
                let validation = if skip_verify {
                    CertificateValidationContext::default()
                } else {
                    let mut v = san_validation(&tls.subject_alt_names);
                    if tls.ca_certificates.is_empty() {
                        v.system_root_certs = Some(certificate_validation_context::SystemRootCerts {});
                    } else {
                        v.trusted_ca = Some(file(&tls.ca_certificates));
                    }
                    if !tls.ca_crl.is_empty() {
                        v.crl = Some(file(&tls.ca_crl));
                    }
                    v
                };
                common.validation_context_type =
                    Some(common_tls_context::ValidationContextType::ValidationContext(validation));
            }
            if draft.is_http2() {
                common.alpn_protocols = vec!["h2".into()];
            }
        }
    }
    let context = UpstreamTlsContext { common_tls_context: Some(common), sni, ..Default::default() };
    Some(TransportSocket {
        name: TRANSPORT_SOCKET_TLS.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    })
}

/// Whether a rule's `tls.credentialName` is read for this proxy, as Istio reads it: always at
/// gateways, and at sidecars only from a rule whose `workloadSelector` selects the proxy (its
/// namespace's workloads chose to hand the Secret to it); other sidecars keep the certificate
/// files. Either way the Secret comes from the proxy's own namespace.
fn credential_applies(ctx: &Context<'_>, service: &Service) -> bool {
    ctx.proxy.node_type == NodeType::Router
        || ctx.destination_rule(&service.hostname).is_some_and(|rule| rule.spec.workload_selector.is_some())
}

/// The SANs ISTIO_MUTUAL expects by default: the SPIFFE identities of the service's endpoints,
/// and a ServiceEntry's `subjectAltNames`.
fn service_accounts(ctx: &Context<'_>, service: &Service) -> Vec<String> {
    let trust_domain = ctx.snapshot.mesh.effective_trust_domain();
    let accounts: BTreeSet<String> = ctx
        .snapshot
        .endpoints_of(&service.hostname)
        .iter()
        .filter(|e| !e.service_account.is_empty())
        .map(|e| format!("spiffe://{trust_domain}/ns/{}/sa/{}", e.namespace, e.service_account))
        .chain(service.subject_alt_names.iter().filter(|name| !name.is_empty()).cloned())
        .collect();
    accounts.into_iter().collect()
}

/// A validation context that only checks SANs (exact match); the trust anchor is added by the
/// caller. A name with a scheme is a URI SAN, an address an IP SAN, anything else a DNS SAN.
pub(crate) fn san_validation(names: &[String]) -> CertificateValidationContext {
    use subject_alt_name_matcher::SanType;
    CertificateValidationContext {
        match_typed_subject_alt_names: names
            .iter()
            .map(|name| {
                let san_type = if name.contains("://") {
                    SanType::Uri
                } else if name.parse::<IpAddr>().is_ok() {
                    SanType::IpAddress
                } else {
                    SanType::Dns
                };
                SubjectAltNameMatcher {
                    san_type: san_type as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(name.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::Filename(path.to_owned())), ..Default::default() }
}

/// A secret from the local SDS server (`sds-grpc` bootstrap cluster), as Istio's sidecars get
/// their workload certificate.
pub(crate) fn sds_grpc_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                        cluster_name: SDS_CLUSTER.to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }),
    }
}

/// A secret served by Rudder on the ADS stream (`kubernetes://<name>`). No initial fetch
/// timeout override: a missing secret must not hold the whole config back.
fn ads_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
    }
}

/// Wraps `inner` (plain TCP when `None`) in the upstream PROXY protocol socket.
fn wrap_proxy_protocol(settings: &ProxyProtocol, inner: Option<TransportSocket>) -> TransportSocket {
    let inner = inner.unwrap_or_else(raw_buffer);
    let config = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig { version: settings.version.map_or(0, |v| v.number()), ..Default::default() }),
        transport_socket: Some(inner),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(config))),
    }
}

fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(RawBuffer {}))),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed and inbound clusters.

/// Drops traffic: STATIC with no endpoints.
fn blackhole_cluster(ctx: &Context<'_>) -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_owned(),
        alt_stat_name: format!("{BLACKHOLE_CLUSTER};"),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(pb_duration(mesh_connect_timeout(ctx))),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

/// Forwards to wherever the connection was going. Without iptables (capture mode NONE) there
/// is no original destination, so the client names it in `x-envoy-original-dst-host`.
fn passthrough_cluster(ctx: &Context<'_>) -> Cluster {
    let mut cluster = Cluster::default();
    let mut draft = Draft::new(ctx, &mut cluster, PASSTHROUGH_CLUSTER.to_owned(), DiscoveryType::OriginalDst);
    draft.cluster.common_lb_config = None;
    draft.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
    draft.cluster.circuit_breakers =
        Some(CircuitBreakers { thresholds: vec![default_thresholds()], ..Default::default() });
    draft.set_downstream_protocol();
    draft.common_http().idle_timeout = Some(PbDuration { seconds: 300, nanos: 0 });
    if ctx.proxy.interception == InterceptionMode::None {
        draft.cluster.lb_config =
            Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig { use_http_header: true, ..Default::default() }));
    }
    draft.finish();
    cluster
}

/// Inbound traffic to ports no listener claims: to the original destination, from 127.0.0.6
/// so iptables does not capture it again.
fn inbound_passthrough_cluster(ctx: &Context<'_>) -> Cluster {
    let mut cluster = Cluster::default();
    let mut draft = Draft::new(ctx, &mut cluster, INBOUND_PASSTHROUGH_CLUSTER.to_owned(), DiscoveryType::OriginalDst);
    draft.cluster.common_lb_config = None;
    draft.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
    draft.cluster.circuit_breakers =
        Some(CircuitBreakers { thresholds: vec![default_thresholds()], ..Default::default() });
    draft.cluster.upstream_bind_config = Some(bind_to(INBOUND_PASSTHROUGH_BIND));
    draft.set_downstream_protocol();
    draft.common_http().idle_timeout = Some(PbDuration { seconds: 300, nanos: 0 });
    draft.finish();
    cluster
}

fn bind_to(address: &str) -> BindConfig {
    BindConfig {
        source_address: Some(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn inbound_cluster(ctx: &Context<'_>, port: &InboundPort) -> Cluster {
    let name = inbound_cluster_name(port.port);
    let mut cluster = Cluster::default();
    let mut draft = match &port.default_endpoint {
        Some((ip, target)) => {
            let draft = Draft::new(ctx, &mut cluster, name, DiscoveryType::Static);
            let lb = LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(endpoint::socket(ip, *target)),
                    ..Default::default()
                })),
                ..Default::default()
            };
            draft.cluster.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: draft.cluster.name.clone(),
                endpoints: endpoint::group_by_locality(std::iter::once(("", lb))),
                ..Default::default()
            });
            if !is_loopback(ip) {
                draft.cluster.upstream_bind_config = Some(bind_to(INBOUND_PASSTHROUGH_BIND));
            }
            draft
        }
        None => {
            let draft = Draft::new(ctx, &mut cluster, name, DiscoveryType::OriginalDst);
            draft.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
            // Original-destination hosts of the workload itself never go stale.
            draft.cluster.cleanup_interval = Some(PbDuration { seconds: i64::from(u32::MAX), nanos: 0 });
            draft.cluster.upstream_bind_config = Some(bind_to(INBOUND_PASSTHROUGH_BIND));
            draft
        }
    };
    set_upstream_protocol(ctx, &mut draft, port.protocol);
    apply_connection_pool(ctx, &mut draft, inbound_connection_pool(ctx, port.port));
    draft.finish();
    cluster
}

/// The Sidecar's pool for an inbound port: its ingress listener's `connectionPool`, else
/// `inboundConnectionPool`.
fn inbound_connection_pool<'a>(ctx: &Context<'a>, port: u32) -> Option<&'a ConnectionPoolSettings> {
    let sidecar = &ctx.sidecar?.spec;
    sidecar
        .ingress
        .iter()
        .find(|l| l.port.as_ref().and_then(|p| p.number) == Some(port))
        .and_then(|l| l.connection_pool.as_ref())
        .or(sidecar.inbound_connection_pool.as_ref())
}

fn is_loopback(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

// ---------------------------------------------------------------------------------------------
// Durations.

fn pb_duration(d: Duration) -> PbDuration {
    let nanos = d.as_nanos();
    PbDuration {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// A duration Envoy requires to be greater than zero; others are dropped with a warning.
fn positive(cluster: &str, field: &str, d: Option<Duration>) -> Option<PbDuration> {
    let d = d?;
    if d.as_nanos() <= 0 {
        tracing::warn!(cluster, field, "duration must be positive; ignored");
        return None;
    }
    Some(pb_duration(d))
}

/// A duration where zero means "disabled" but negative is refused.
fn non_negative(cluster: &str, field: &str, d: Option<Duration>) -> Option<PbDuration> {
    let d = d?;
    if d.as_nanos() < 0 {
        tracing::warn!(cluster, field, "duration must not be negative; ignored");
        return None;
    }
    Some(pb_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_exactly() {
        assert_eq!(pb_duration(Duration::from_millis(2500)), PbDuration { seconds: 2, nanos: 500_000_000 });
        assert_eq!(pb_duration(Duration::from_secs(0)), PbDuration { seconds: 0, nanos: 0 });
        assert_eq!(positive("c", "f", Some(Duration::from_secs(0))), None);
        assert_eq!(positive("c", "f", Some(Duration::from_millis(-1))), None);
        assert_eq!(non_negative("c", "f", Some(Duration::from_secs(0))), Some(PbDuration { seconds: 0, nanos: 0 }));
        assert_eq!(non_negative("c", "f", Some(Duration::from_millis(-1))), None);
    }

    #[test]
    fn primes() {
        assert!([2, 3, 65537, 4_999_999].iter().all(|n| is_prime(*n)));
        assert!(![0, 1, 4, 65536].iter().any(|n| is_prime(*n)));
    }

    /// A traffic policy from JSON (the same field names as the YAML).
    fn policy(json: &str) -> TrafficPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn subset_inherits_what_it_does_not_set_but_port_level_replaces() {
        let rule = policy(
            r#"{"proxyProtocol": {"version": "V2"}, "retryBudget": {"percent": 10},
                "loadBalancer": {"simple": "RANDOM"}, "tls": {"mode": "SIMPLE"},
                "portLevelSettings": [{"port": {"number": 80}, "outlierDetection": {"consecutive5xxErrors": 1}}]}"#,
        );
        let subset = policy(r#"{"loadBalancer": {"simple": "ROUND_ROBIN"}}"#);
        let merged = subset_policy(Some(&rule), Some(&subset), 81);
        assert_eq!(merged.load_balancer.and_then(|l| l.simple), Some(SimpleLb::RoundRobin));
        assert!(merged.tls.is_some() && merged.proxy_protocol.is_some() && merged.retry_budget.is_some());

        let on_80 = subset_policy(Some(&rule), Some(&subset), 80);
        assert_eq!(on_80.load_balancer.and_then(|l| l.simple), Some(SimpleLb::RoundRobin));
        assert!(on_80.tls.is_none(), "the rule's port level replaced the rule's tls");
        assert!(on_80.outlier_detection.is_some());
        assert!(on_80.proxy_protocol.is_none() && on_80.retry_budget.is_none());

        let subset_port = policy(r#"{"portLevelSettings": [{"port": {"number": 81}, "tls": {"mode": "DISABLE"}}]}"#);
        let replaced = subset_policy(Some(&rule), Some(&subset_port), 81);
        assert!(replaced.load_balancer.is_none(), "a subset port level replaces all four components");
        assert_eq!(replaced.tls.and_then(|t| t.mode), Some(ClientTlsMode::Disable));
        assert!(replaced.proxy_protocol.is_some(), "not a port-level field: inherited");
    }
}
