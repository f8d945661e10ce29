//! DestinationRule: subsets and traffic policy (`networking/v1alpha3/destination_rule.proto`).
//!
//! The traffic-policy types here are shared: Sidecar reuses [`ConnectionPoolSettings`] for its
//! inbound connection pools.

use std::collections::{BTreeMap, BTreeSet};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, IstioStatus, PortSelector, WorkloadSelector};
use crate::validate::{self, FieldPath, Report, Validate, checks};

/// `DestinationRule` spec: policies for traffic to one host, after routing.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    status = "IstioStatus",
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Host","type":"string","description":"The service the rule applies to","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"When the object was created","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service (registry host name) the rule applies to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of endpoints, selected by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces the rule is visible to (`.` = own, `*` = all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Limits the rule to matching workloads in its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

/// Policies for one destination, across its ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Per-port policies; each replaces the destination-level policy for its port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// A traffic policy for one port of the destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Tunnelling of TCP traffic through an HTTP CONNECT or POST proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_host: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

crate::proto_enum! {
    /// PROXY protocol version sent upstream.
    pub enum ProxyProtocolVersion {
        V1 = 0 => "V1",
        V2 = 1 => "V2",
    }
}

/// Upstream PROXY protocol settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

/// Limit on concurrent retries relative to active requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of active requests that may be retries, 0-100 (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries always allowed regardless of the percentage (default 3).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
    /// Window of recent requests the budget counts; `0s` (the default) counts only the active
    /// and pending ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<Duration>,
}

/// A named subset of the host's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule-level policy field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

crate::proto_enum! {
    /// Load-balancing algorithms that need no tuning.
    pub enum SimpleLb {
        Unspecified = 0 => "UNSPECIFIED",
        /// Deprecated alias of LEAST_REQUEST.
        LeastConn = 1 => "LEAST_CONN",
        Random = 2 => "RANDOM",
        Passthrough = 3 => "PASSTHROUGH",
        RoundRobin = 4 => "ROUND_ROBIN",
        LeastRequest = 5 => "LEAST_REQUEST",
    }
}

/// Load-balancing settings: `simple`, `consistentHash` or `backendUtilization` (a oneof), plus
/// locality (or zone-aware) balancing and warmup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Weights endpoints by the utilization they report (ORCA): Envoy's client-side weighted
    /// round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_utilization: Option<BackendUtilizationLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Envoy's zone-aware routing; exclusive with `localityLbSetting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated: use `warmup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// `BackendUtilizationLB`: endpoint weights from the load the endpoints report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendUtilizationLb {
    /// How long an endpoint reports metrics before its weight is used (Envoy's default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blackout_period: Option<Duration>,
}

/// Zone-aware load balancing: Envoy spreads traffic over zones by their share of endpoints,
/// keeping as much as it can in the caller's zone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLoadBalancerSetting {
    /// Region to fail over to from another region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Ordered labels (`key` or `key=value`) that rank endpoints; not the region, zone or
    /// subzone labels, which zone-aware routing handles itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Fewest hosts the upstream cluster must have in the local region for zone-aware routing
    /// to engage (Envoy's default 6). Added upstream after the pinned field list (Istio 1.30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
}

/// Slow start for new endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Starting share of traffic, 0-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Consistent hashing: one hash key (header, cookie, source IP or query parameter) and at most
/// one algorithm (ring hash or Maglev).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Ring-hash algorithm settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev algorithm settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// A prime below 5000011 (default 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// A cookie used as the hash key; generated when absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// An extra attribute of a generated cookie.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Locality-aware load balancing: `distribute`, `failover` or `failoverPriority`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLoadBalancerSetting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Ordered labels (`key` or `key=value`) that rank endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Weights (summing to 100) for traffic from one locality.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

/// Region to fail over to from another region.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
}

/// Connection limits per upstream host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// Settings for TCP and HTTP upstream connections alike.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// `0s` disables the idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive probing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

crate::proto_enum! {
    /// Whether HTTP/1.1 upstream connections are upgraded to HTTP/2.
    pub enum H2UpgradePolicy {
        Default = 0 => "DEFAULT",
        DoNotUpgrade = 1 => "DO_NOT_UPGRADE",
        Upgrade = 2 => "UPGRADE",
    }
}

/// Settings for HTTP/1.1, HTTP/2 and gRPC upstream connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Keep the downstream protocol upstream (disables the HTTP/2 upgrade).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_client_protocol: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 PING keepalive on upstream HTTP/2 connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// HTTP/2 PING keepalive.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    /// Time between PINGs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long to wait for a PING's answer before closing the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Ejection of unhealthy hosts from the load-balancing pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated and ignored: use `consecutive5xxErrors` or `consecutiveGatewayErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_external_local_origin_errors: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors", skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
    /// HTTP status codes (100-599) that count as errors instead of the 5xx codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<i32>,
}

crate::proto_enum! {
    /// How connections to the upstream are secured.
    pub enum ClientTlsMode {
        Disable = 0 => "DISABLE",
        Simple = 1 => "SIMPLE",
        Mutual = 2 => "MUTUAL",
        IstioMutual = 3 => "ISTIO_MUTUAL",
    }
}

/// TLS settings for upstream connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// Secret holding the client certificate, key and CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
}

impl Validate for DestinationRule {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        report.check(&at.field("host"), checks::wildcard_host(&spec.host));
        if let Some(policy) = &spec.traffic_policy {
            validate_traffic_policy(policy, &at.field("trafficPolicy"), report);
        }
        let mut names = BTreeSet::new();
        for (i, subset) in spec.subsets.iter().enumerate() {
            let at = at.field("subsets").index(i);
            if !subset.name.is_empty() && !names.insert(subset.name.as_str()) {
                report.error(
                    &at.field("name"),
                    format!("duplicate subset name {:?}; subset names must be unique", subset.name),
                );
            }
            validate_subset(subset, &at, report);
        }
        let namespace = self.metadata.namespace.as_deref();
        if spec.workload_selector.is_some() {
            for (i, entry) in spec.export_to.iter().enumerate() {
                if entry != "." && Some(entry.as_str()) != namespace {
                    report.error(
                        &at.field("exportTo").index(i),
                        format!(
                            "a rule with a workloadSelector can only be exported to its own namespace (\".\"), not {entry:?}"
                        ),
                    );
                }
            }
        }
        validate::export_to(report, &at.field("exportTo"), &spec.export_to, namespace, false);
        if let Some(selector) = &spec.workload_selector {
            checks::selector_labels(&selector.match_labels, report, &at.field("workloadSelector").field("matchLabels"));
        }
    }
}

fn validate_subset(subset: &Subset, at: &FieldPath, report: &mut Report) {
    if subset.name.is_empty() {
        report.error(&at.field("name"), "subset name is required");
    } else {
        report.check(&at.field("name"), checks::dns1123_label(&subset.name).map_err(|e| format!("subset name {e}")));
    }
    checks::labels(&subset.labels, report, &at.field("labels"));
    if let Some(policy) = &subset.traffic_policy {
        validate_traffic_policy(policy, &at.field("trafficPolicy"), report);
    }
}

fn validate_traffic_policy(policy: &TrafficPolicy, at: &FieldPath, report: &mut Report) {
    if policy == &TrafficPolicy::default() {
        report.error(at, "traffic policy must set at least one field");
        return;
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        report.error(at, "tunnel and proxyProtocol cannot be set together; choose one");
    }
    let outlier = policy.outlier_detection.as_ref();
    validate_policies(
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        outlier,
        policy.tls.as_ref(),
        at,
        report,
    );
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        validate_port_policy(port_policy, &at.field("portLevelSettings").index(i), report);
    }
    if let Some(tunnel) = &policy.tunnel {
        validate_tunnel(tunnel, &at.field("tunnel"), report);
    }
    if let Some(budget) = &policy.retry_budget {
        let at = at.field("retryBudget");
        if let Some(percent) = budget.percent {
            report.check(&at.field("percent"), checks::percentage(percent));
        }
        // `0s` is the default: only active and pending requests count.
        if let Some(d) = budget.budget_interval.filter(|d| d.as_nanos() != 0) {
            report.check(&at.field("budgetInterval"), checks::duration(&d));
        }
    }
}

fn validate_policies(
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
    at: &FieldPath,
    report: &mut Report,
) {
    if let Some(lb) = load_balancer {
        validate_load_balancer(lb, outlier.is_some(), &at.field("loadBalancer"), report);
    }
    if let Some(pool) = connection_pool {
        validate_connection_pool(pool, &at.field("connectionPool"), report);
    }
    if let Some(outlier) = outlier {
        validate_outlier_detection(outlier, &at.field("outlierDetection"), report);
    }
    if let Some(tls) = tls {
        validate_client_tls(tls, &at.field("tls"), report);
    }
}

fn validate_port_policy(policy: &PortTrafficPolicy, at: &FieldPath, report: &mut Report) {
    match policy.port.as_ref().and_then(|p| p.number) {
        None => report.error(&at.field("port").field("number"), "port-level settings need a port number"),
        Some(number) => report.check(&at.field("port").field("number"), checks::port(number)),
    }
    if policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
    {
        report.error(
            at,
            "port-level settings must set at least one of loadBalancer, connectionPool, outlierDetection or tls",
        );
        return;
    }
    validate_policies(
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
        at,
        report,
    );
}

fn validate_tunnel(tunnel: &TunnelSettings, at: &FieldPath, report: &mut Report) {
    if !matches!(tunnel.protocol.as_str(), "" | "CONNECT" | "POST") {
        report.error(
            &at.field("protocol"),
            format!("tunnel protocol {:?} is not supported; use CONNECT or POST", tunnel.protocol),
        );
    }
    let host = &tunnel.target_host;
    if host.is_empty() {
        report.error(&at.field("targetHost"), "tunnel target host is required");
    } else if checks::fqdn(host).is_err() && host.parse::<std::net::IpAddr>().is_err() {
        report.error(
            &at.field("targetHost"),
            format!("tunnel target host {host:?} must be a fully qualified domain name or an IP address"),
        );
    }
    match tunnel.target_port {
        None => report.error(&at.field("targetPort"), "tunnel target port is required"),
        Some(port) => report.check(&at.field("targetPort"), checks::port(port)),
    }
}

fn validate_load_balancer(lb: &LoadBalancerSettings, has_outlier_detection: bool, at: &FieldPath, report: &mut Report) {
    if let (Some(simple), Some(_)) = (lb.simple, &lb.consistent_hash) {
        report.error(at, format!("simple ({simple}) and consistentHash cannot be set together; choose one"));
    }
    if lb.backend_utilization.is_some() {
        let other = match (lb.simple, &lb.consistent_hash) {
            (Some(simple), _) => Some(format!("simple ({simple})")),
            (None, Some(_)) => Some("consistentHash".to_owned()),
            (None, None) => None,
        };
        if let Some(other) = other {
            report.error(
                &at.field("backendUtilization"),
                format!("backendUtilization and {other} cannot be set together; choose one"),
            );
        }
    }
    if let Some(hash) = &lb.consistent_hash {
        validate_consistent_hash(hash, &at.field("consistentHash"), report);
    }
    if let Some(backend) = &lb.backend_utilization
        && let Some(d) = backend.blackout_period.filter(|d| d.as_nanos() != 0)
    {
        // `0s` turns the blackout off.
        report.check(&at.field("backendUtilization").field("blackoutPeriod"), checks::duration(&d));
    }
    if let Some(locality) = &lb.locality_lb_setting {
        validate_locality(locality, has_outlier_detection, &at.field("localityLbSetting"), report);
    }
    if let Some(zone_aware) = &lb.zone_aware_lb_setting {
        let at = at.field("zoneAwareLbSetting");
        if lb.locality_lb_setting.is_some() {
            report.error(&at, "zoneAwareLbSetting and localityLbSetting cannot be set together; choose one");
        }
        validate_zone_aware(zone_aware, &at, report);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        report.check(&at.field("warmupDurationSecs"), checks::duration(d));
    }
    if let Some(warmup) = &lb.warmup {
        let at = at.field("warmup");
        if let Some(d) = &warmup.duration {
            report.check(&at.field("duration"), checks::duration(d));
        }
        if let Some(p) = warmup.minimum_percent {
            report.check(&at.field("minimumPercent"), checks::percentage(p));
        }
        if let Some(a) = warmup.aggression
            && a < 0.0
        {
            report.error(&at.field("aggression"), format!("aggression {a} must not be negative"));
        }
    }
}

fn validate_consistent_hash(hash: &ConsistentHashLb, at: &FieldPath, report: &mut Report) {
    let keys: Vec<&str> = [
        ("httpHeaderName", hash.http_header_name.is_some()),
        ("httpCookie", hash.http_cookie.is_some()),
        ("useSourceIp", hash.use_source_ip.is_some()),
        ("httpQueryParameterName", hash.http_query_parameter_name.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if keys.len() > 1 {
        report.error(at, format!("only one hash key may be set, found {}", keys.join(", ")));
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        report.error(at, "ringHash and maglev cannot be set together; choose one");
    }
    if let Some(name) = &hash.http_header_name
        && name.is_empty()
    {
        report.error(&at.field("httpHeaderName"), "header name must not be empty");
    }
    if let Some(name) = &hash.http_query_parameter_name
        && name.is_empty()
    {
        report.error(&at.field("httpQueryParameterName"), "query parameter name must not be empty");
    }
    if let Some(cookie) = &hash.http_cookie {
        let at = at.field("httpCookie");
        if cookie.name.is_empty() {
            report.error(&at.field("name"), "cookie name is required");
        }
        for (i, attribute) in cookie.attributes.iter().enumerate() {
            if attribute.name.is_empty() {
                report.error(&at.field("attributes").index(i).field("name"), "cookie attribute name is required");
            }
        }
    }
    if hash.minimum_ring_size.is_some_and(|n| n != 0) {
        if hash.ring_hash.is_some() || hash.maglev.is_some() {
            report.error(
                &at.field("minimumRingSize"),
                "minimumRingSize cannot be combined with ringHash or maglev; set ringHash.minimumRingSize instead",
            );
        } else {
            report.warning(&at.field("minimumRingSize"), "minimumRingSize is deprecated; use ringHash.minimumRingSize");
        }
    }
    if let Some(maglev) = &hash.maglev {
        let at = at.field("maglev").field("tableSize");
        match maglev.table_size {
            None | Some(0) => report.error(&at, "maglev needs a tableSize"),
            Some(size) => {
                if size >= MAGLEV_MAX_TABLE_SIZE {
                    report.error(&at, format!("table size {size} must be less than {MAGLEV_MAX_TABLE_SIZE}"));
                } else if !is_prime(size) {
                    report.error(&at, format!("table size {size} must be a prime number"));
                }
            }
        }
    }
}

const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

const TOPOLOGY_LOCALITY_LABELS: [&str; 3] =
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

/// Zone-aware routing partitions by region and zone itself, so `failoverPriority` may not name
/// those labels; `failover` entries are region pairs as in `localityLbSetting`.
pub(crate) fn validate_zone_aware(setting: &ZoneAwareLoadBalancerSetting, at: &FieldPath, report: &mut Report) {
    for (i, label) in setting.failover_priority.iter().enumerate() {
        let at = at.field("failoverPriority").index(i);
        let key = label.split_once('=').map_or(label.as_str(), |(k, _)| k);
        if TOPOLOGY_LOCALITY_LABELS.contains(&key) {
            report.error(&at, format!("{key} cannot be used in failoverPriority with zone-aware load balancing"));
        } else if key.is_empty() {
            report.error(&at, "failoverPriority label must not be empty");
        }
    }
    validate_failover(&setting.failover, &at.field("failover"), report);
}

fn validate_failover(failover: &[LocalityFailover], at: &FieldPath, report: &mut Report) {
    for (i, failover) in failover.iter().enumerate() {
        let at = at.index(i);
        if failover.from == failover.to {
            report.error(
                &at,
                format!("failover from {:?} to itself; from and to must be different regions", failover.from),
            );
        }
        if failover.from.contains('/') || failover.to.contains('/') {
            report.error(&at, "failover takes regions only, without zones ('/')");
        }
        if failover.from.contains('*') || failover.to.contains('*') {
            report.error(&at, "failover regions must not contain the '*' wildcard");
        }
    }
}

/// Locality checks shared with MeshConfig `localityLbSetting`; `has_outlier_detection` silences the
/// warning that failover needs outlier detection.
pub(crate) fn validate_locality(
    setting: &LocalityLoadBalancerSetting,
    has_outlier_detection: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if !setting.distribute.is_empty() && !setting.failover.is_empty() {
        report.error(at, "distribute and failover cannot be set together; choose one");
        return;
    }
    if !setting.failover.is_empty() {
        for (i, label) in setting.failover_priority.iter().enumerate() {
            if TOPOLOGY_LOCALITY_LABELS.contains(&label.as_str()) {
                report.error(
                    &at.field("failoverPriority").index(i),
                    format!("{label} cannot be used in failoverPriority together with failover"),
                );
            }
        }
    }
    let mut sources = Vec::new();
    for (i, distribute) in setting.distribute.iter().enumerate() {
        let at = at.field("distribute").index(i);
        sources.push(distribute.from.as_str());
        let mut total: u64 = 0;
        for (locality, weight) in &distribute.to {
            if !(1..=100).contains(weight) {
                report.error(
                    &at.field("to").key(locality),
                    format!("locality weight {weight} must be in the range 1..100"),
                );
            }
            total += u64::from(*weight);
        }
        if total != 100 {
            report.error(&at.field("to"), format!("locality weights total {total}; they must add up to 100"));
        }
        let targets: Vec<&str> = distribute.to.keys().map(String::as_str).collect();
        report.check(&at.field("to"), localities(&targets));
    }
    if !sources.is_empty() {
        report.check(&at.field("distribute"), localities(&sources));
    }
    if (!setting.failover.is_empty() || !setting.failover_priority.is_empty()) && !has_outlier_detection {
        report.warning(at, "failover has no effect without outlierDetection in the same traffic policy");
    }
    validate_failover(&setting.failover, &at.field("failover"), report);
}

/// Localities `region/zone/subzone`: no empty segment, at most one `*` and only at the end, and
/// none covered by another in the list.
fn localities(list: &[&str]) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for &locality in list {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!("locality {locality:?} may hold at most one '*', and only at the end"));
        }
        if locality.is_empty() || locality.split('/').any(str::is_empty) || locality.split('/').count() > 3 {
            return Err(format!("locality {locality:?} must be region[/zone[/subzone]] without empty parts"));
        }
        for &earlier in &seen {
            if covers(earlier, locality) || covers(locality, earlier) {
                return Err(format!("locality {locality:?} overlaps with {earlier:?}"));
            }
        }
        seen.push(locality);
    }
    Ok(())
}

/// Whether locality pattern `a` matches everything `b` names.
fn covers(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match a.strip_suffix('*') {
        Some(prefix) => b.starts_with(prefix),
        None => false,
    }
}

/// Connection-pool checks shared with Sidecar (`ingress[].connectionPool`,
/// `inboundConnectionPool`).
pub(crate) fn validate_connection_pool(pool: &ConnectionPoolSettings, at: &FieldPath, report: &mut Report) {
    if pool.tcp.is_none() && pool.http.is_none() {
        report.error(at, "connection pool must set tcp or http");
        return;
    }
    let non_negative = |value: Option<i32>, at: &FieldPath, report: &mut Report| {
        if let Some(v) = value.filter(|v| *v < 0) {
            report.error(at, format!("value {v} must not be negative"));
        }
    };
    if let Some(http) = &pool.http {
        let at = at.field("http");
        non_negative(http.http1_max_pending_requests, &at.field("http1MaxPendingRequests"), report);
        non_negative(http.http2_max_requests, &at.field("http2MaxRequests"), report);
        non_negative(http.max_requests_per_connection, &at.field("maxRequestsPerConnection"), report);
        non_negative(http.max_retries, &at.field("maxRetries"), report);
        if let Some(d) = &http.idle_timeout {
            report.check(&at.field("idleTimeout"), checks::duration(d));
        }
        if http.use_client_protocol && http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) {
            report.error(
                &at.field("useClientProtocol"),
                "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE",
            );
        }
        non_negative(http.max_concurrent_streams, &at.field("maxConcurrentStreams"), report);
        if let Some(keepalive) = &http.http2_keep_alive {
            let at = at.field("http2KeepAlive");
            if let Some(d) = &keepalive.interval {
                report.check(&at.field("interval"), checks::duration(d));
            }
            if let Some(d) = &keepalive.timeout {
                report.check(&at.field("timeout"), checks::duration(d));
            }
        }
    }
    if let Some(tcp) = &pool.tcp {
        let at = at.field("tcp");
        non_negative(tcp.max_connections, &at.field("maxConnections"), report);
        if let Some(d) = &tcp.connect_timeout {
            report.check(&at.field("connectTimeout"), checks::duration(d));
        }
        if let Some(d) = &tcp.max_connection_duration {
            report.check(&at.field("maxConnectionDuration"), checks::duration(d));
        }
        // `0s` turns the TCP idle timeout off.
        if let Some(d) = tcp.idle_timeout.filter(|d| d.as_nanos() != 0) {
            report.check(&at.field("idleTimeout"), checks::duration(&d));
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            validate_tcp_keepalive(keepalive, &at.field("tcpKeepalive"), report);
        }
    }
}

/// Keepalive durations; shared with MeshConfig `tcpKeepalive`.
pub(crate) fn validate_tcp_keepalive(keepalive: &TcpKeepalive, at: &FieldPath, report: &mut Report) {
    if let Some(d) = &keepalive.time {
        report.check(&at.field("time"), checks::duration(d));
    }
    if let Some(d) = &keepalive.interval {
        report.check(&at.field("interval"), checks::duration(d));
    }
}

fn validate_outlier_detection(outlier: &OutlierDetection, at: &FieldPath, report: &mut Report) {
    if outlier.consecutive_errors.is_some_and(|n| n != 0) {
        report.warning(
            &at.field("consecutiveErrors"),
            "consecutiveErrors is deprecated and ignored; use consecutive5xxErrors or consecutiveGatewayErrors",
        );
    }
    if !outlier.split_external_local_origin_errors && outlier.consecutive_local_origin_failures.is_some_and(|n| n > 0) {
        report.error(
            &at.field("consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        );
    }
    if let Some(d) = &outlier.interval {
        report.check(&at.field("interval"), checks::duration(d));
    }
    if let Some(d) = &outlier.base_ejection_time {
        report.check(&at.field("baseEjectionTime"), checks::duration(d));
    }
    if let Some(p) = outlier.max_ejection_percent {
        report.check(&at.field("maxEjectionPercent"), checks::percentage(f64::from(p)));
    }
    if let Some(p) = outlier.min_health_percent {
        report.check(&at.field("minHealthPercent"), checks::percentage(f64::from(p)));
    }
    let mut seen = BTreeSet::new();
    for (i, &code) in outlier.outlier_detection_http_error_codes.iter().enumerate() {
        let at = at.field("outlierDetectionHttpErrorCodes").index(i);
        if !(100..=599).contains(&code) {
            report.error(&at, format!("HTTP status code {code} must be in the range 100..599"));
        } else if !seen.insert(code) {
            report.error(&at, format!("duplicate HTTP status code {code}"));
        }
    }
}

fn validate_client_tls(tls: &ClientTlsSettings, at: &FieldPath, report: &mut Report) {
    let mode = tls.mode.unwrap_or_default();
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
        ("caCrl", &tls.ca_crl),
    ];
    match mode {
        ClientTlsMode::IstioMutual => {
            for (name, value) in files.iter().chain([("credentialName", &tls.credential_name)].iter()) {
                if !value.is_empty() {
                    report.error(
                        &at.field(name),
                        format!("{name} must not be set with ISTIO_MUTUAL, which uses Istio's own certificates"),
                    );
                }
            }
            if tls.insecure_skip_verify == Some(true) {
                report.error(&at.field("insecureSkipVerify"), "insecureSkipVerify cannot be used with ISTIO_MUTUAL");
            }
        }
        ClientTlsMode::Disable => {
            for (name, value) in files.iter().chain([("credentialName", &tls.credential_name)].iter()) {
                if !value.is_empty() {
                    report.warning(&at.field(name), format!("{name} is ignored when TLS is DISABLE"));
                }
            }
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            if !tls.credential_name.is_empty() {
                for (name, value) in files {
                    if !value.is_empty() {
                        report.error(
                            &at.field(name),
                            format!(
                                "{name} cannot be set together with credentialName, which supplies the certificates"
                            ),
                        );
                    }
                }
            } else if mode == ClientTlsMode::Mutual {
                if tls.client_certificate.is_empty() {
                    report.error(
                        &at.field("clientCertificate"),
                        "MUTUAL TLS needs clientCertificate (or credentialName)",
                    );
                }
                if tls.private_key.is_empty() {
                    report.error(&at.field("privateKey"), "MUTUAL TLS needs privateKey (or credentialName)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_for_maglev() {
        for p in [2, 3, 65537, 4_999_999] {
            assert!(is_prime(p), "{p}");
        }
        for n in [0, 1, 4, 65536, 5_000_000] {
            assert!(!is_prime(n), "{n}");
        }
    }

    #[test]
    fn locality_lists() {
        assert_eq!(localities(&["us-west/zone1/*", "us-west/zone2/*"]), Ok(()));
        assert_eq!(localities(&["*"]), Ok(()));
        for bad in [
            vec!["us-west/*/zone"],
            vec!["us-west//a"],
            vec!["*", "us-west"],
            vec!["us-west/*", "us-west/zone1"],
            vec!["a", "a"],
            vec!["a/b/c/d"],
        ] {
            assert!(localities(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn valid_fixtures_raise_no_warnings() {
        for (file, text) in [
            ("destinationrule.yaml", include_str!("../../tests/valid/destinationrule.yaml")),
            ("gateway.yaml", include_str!("../../tests/valid/gateway.yaml")),
            ("sidecar.yaml", include_str!("../../tests/valid/sidecar.yaml")),
        ] {
            let loads = crate::load::load_str(file, text).expect(file);
            assert!(loads.problems.is_empty(), "{file}: {:?}", loads.problems);
            for loaded in &loads.objects {
                let items = loaded.object.report().items;
                assert!(items.is_empty(), "{file} {}: {items:?}", loaded.id);
            }
        }
    }

    #[test]
    fn crd_names_and_schema() {
        use kube::CustomResourceExt;
        let crd = DestinationRule::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["dr".to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["istio-io".to_owned(), "networking-istio-io".to_owned()]));
        assert_eq!(crate::crds::structural_problems(&crd), Vec::<String>::new());
    }
}
