//! `MeshConfig` (`istio.mesh.v1alpha1.MeshConfig`): the mesh-wide settings held in the `mesh` key
//! of the `istio[-<rev>]` ConfigMap and in `IstioOperator.spec.meshConfig`, with the `ProxyConfig`
//! defaults it carries.
//!
//! Every field is optional (an unset field and a zero value stay distinct) because the same type
//! is used as an overlay: profiles, the ConfigMap and user settings are layered with
//! [`apply_yaml`]. [`MeshConfig::istio_defaults`] gives upstream's built-in starting point.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::{Duration, FreeForm};
use crate::networking::destination_rule::{
    LocalityLoadBalancerSetting, TcpKeepalive, ZoneAwareLoadBalancerSetting, validate_locality, validate_tcp_keepalive,
    validate_zone_aware,
};
use crate::validate::{self, FieldPath, Report, checks};

crate::proto_enum! {
    /// Which ingress resources Istio's ingress controller handles.
    pub enum IngressControllerMode {
        Unspecified = 0 => "UNSPECIFIED",
        Off = 1 => "OFF",
        Default = 2 => "DEFAULT",
        Strict = 3 => "STRICT",
    }
}

crate::proto_enum! {
    /// Encoding of the proxy access log.
    pub enum AccessLogEncoding {
        Text = 0 => "TEXT",
        Json = 1 => "JSON",
    }
}

crate::proto_enum! {
    /// What sidecars do with outbound traffic to unknown destinations.
    pub enum OutboundTrafficPolicyMode {
        RegistryOnly = 0 => "REGISTRY_ONLY",
        AllowAny = 1 => "ALLOW_ANY",
        AllowAnyDynamicDns = 3 => "ALLOW_ANY_DYNAMIC_DNS",
    }
}

crate::proto_enum! {
    /// Where sidecars send captured inbound traffic.
    pub enum InboundTrafficPolicyMode {
        Passthrough = 0 => "PASSTHROUGH",
        Localhost = 1 => "LOCALHOST",
    }
}

crate::proto_enum! {
    /// Default HTTP/1.1 to HTTP/2 upgrade policy.
    pub enum H2UpgradePolicy {
        DoNotUpgrade = 0 => "DO_NOT_UPGRADE",
        Upgrade = 1 => "UPGRADE",
    }
}

crate::proto_enum! {
    /// How proxies normalise request paths.
    pub enum NormalizationType {
        Default = 0 => "DEFAULT",
        None = 1 => "NONE",
        Base = 2 => "BASE",
        MergeSlashes = 3 => "MERGE_SLASHES",
        DecodeAndMergeSlashes = 4 => "DECODE_AND_MERGE_SLASHES",
    }
}

crate::proto_enum! {
    /// TLS protocol versions for mesh TLS settings.
    pub enum TlsProtocol {
        TlsAuto = 0 => "TLS_AUTO",
        TlsV1_2 = 1 => "TLSV1_2",
        TlsV1_3 = 2 => "TLSV1_3",
    }
}

crate::proto_enum! {
    /// How a proxy authenticates to the control plane.
    pub enum AuthenticationPolicy {
        None = 0 => "NONE",
        MutualTls = 1 => "MUTUAL_TLS",
        Inherit = 1000 => "INHERIT",
    }
}

crate::proto_enum! {
    /// How inbound traffic is redirected to the proxy.
    pub enum InterceptionMode {
        Redirect = 0 => "REDIRECT",
        Tproxy = 1 => "TPROXY",
        None = 2 => "NONE",
    }
}

crate::proto_enum! {
    /// How the proxy names its service cluster for tracing.
    pub enum TracingServiceName {
        AppLabelAndNamespace = 0 => "APP_LABEL_AND_NAMESPACE",
        CanonicalNameOnly = 1 => "CANONICAL_NAME_ONLY",
        CanonicalNameAndNamespace = 2 => "CANONICAL_NAME_AND_NAMESPACE",
    }
}

/// Mesh-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Port the proxy captures outbound traffic on (15001).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub proxy_listen_port: Option<u32>,
    /// Port the proxy captures inbound traffic on (15006).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub proxy_inbound_listen_port: Option<u32>,
    /// Port for HTTP PROXY requests, if any.
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub proxy_http_port: Option<u32>,
    /// Upstream connection timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Protocol sniffing timeout; 0s disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Ingress class handled by Istio's ingress controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class: Option<String>,
    /// Service of the gateway that serves Kubernetes Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_controller_mode: Option<IngressControllerMode>,
    /// `istio` label value of the gateway that serves Kubernetes Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tracing: Option<bool>,
    /// Access log path (e.g. /dev/stdout); empty disables access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<AccessLogEncoding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_envoy_access_log_service: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_envoy_listener_log: Option<bool>,
    /// Defaults for every proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProxyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_traffic_policy: Option<InboundTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_sources: Vec<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_auto_mtls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates: Vec<CertificateData>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_service_export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_virtual_service_export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_destination_rule_export_to: Vec<String>,
    /// Namespace whose config applies mesh-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Zone-aware load balancing for every destination whose DestinationRule sets no locality
    /// or zone-aware setting of its own (Istio 1.30); it takes precedence over the mesh's
    /// `localityLbSetting`, which is on by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_cluster_stat_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_cluster_stat_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_settings: Vec<ServiceSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prometheus_merge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_at_client: Option<bool>,
    /// External CA settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<ExtensionProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<DefaultProviders>,
    /// Namespaces istiod watches (any selector matching).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<ProxyPathNormalization>,
    /// Mesh-wide default HTTP retry policy (VirtualService HTTPRetry shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_http_retry_policy: Option<FreeForm>,
    /// TLS settings for ISTIO_MUTUAL traffic.
    #[serde(default, rename = "meshMTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_mtls: Option<TlsConfig>,
    /// TLS settings for all other TLS traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_defaults: Option<TlsConfig>,
    /// Compliance policy, e.g. fips-140-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance_policy: Option<String>,
    /// Ambient multi-cluster service scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_scope_configs: Vec<FreeForm>,
    /// Mesh-wide baseline traffic policy (DestinationRule TrafficPolicy shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_traffic_policy: Option<FreeForm>,
}

/// Outbound traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// Unset means ALLOW_ANY in effect, although the proto zero value is REGISTRY_ONLY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficPolicyMode>,
    /// TLS settings for dynamically resolved destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<FreeForm>,
}

/// Inbound traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<InboundTrafficPolicyMode>,
}

/// An extra trust anchor: exactly one of `pem` and `spiffeBundleUrl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_bundle_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_signers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
}

/// A DNS certificate to provision (deprecated upstream).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

/// Settings for a set of services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<ServiceSettingsValues>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// The settings of [`ServiceSettings`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSettingsValues {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_local: bool,
}

/// A named extension provider: exactly one provider kind, whose body is kept free-form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightstep: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<DatadogProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stackdriver: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencensus: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skywalking: Option<SkyWalkingProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_http_als: Option<HttpGrpcLogProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_tcp_als: Option<TcpGrpcLogProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_otel_als: Option<OtelLogProvider>,
}

/// `envoyHttpAls`: Envoy's gRPC access log service for HTTP (`envoy.access_loggers.http_grpc`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGrpcLogProvider {
    /// The log service's host (`name.namespace.svc.cluster.local` or a ServiceEntry host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Distinguishes this log among the ones the service receives (default `http_envoy_accesslog`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_state_objects_to_log: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_request_headers_to_log: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_response_headers_to_log: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_response_trailers_to_log: Vec<String>,
}

/// `envoyTcpAls`: Envoy's gRPC access log service for TCP (`envoy.access_loggers.tcp_grpc`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpGrpcLogProvider {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Default `tcp_envoy_accesslog`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_state_objects_to_log: Vec<String>,
}

/// `envoyOtelAls`: logs to an OpenTelemetry collector over gRPC
/// (`envoy.access_loggers.open_telemetry`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtelLogProvider {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Default `otel_envoy_accesslog`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<OtelLogFormat>,
}

/// What an OpenTelemetry log record carries: `text` becomes its body (Istio's default line when
/// empty), `labels` its attributes (Envoy command operators as values).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtelLogFormat {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `opentelemetry` tracer (`envoy.tracers.opentelemetry`): OTLP over gRPC, or over HTTP with
/// `http`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenTelemetryProvider {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// The HTTP connection manager's `max_path_tag_length` (Envoy's default 256 when unset).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub max_tag_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttp>,
    /// Where the tracer finds its resource's attributes, besides the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_detectors: Option<ResourceDetectors>,
    /// Envoy's Dynatrace sampler decides which spans are kept (the connection manager then
    /// samples 100 % of requests, so that every span reaches it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynatrace_sampler: Option<DynatraceSampler>,
}

/// Istio's `HttpService`: the path requests go to, their timeout and extra headers. For the
/// OTLP exporter (`opentelemetry.http`) the path defaults to `/v1/traces`; for the Dynatrace
/// sampler's API (`dynatraceSampler.httpService.http`) to `/api/v2/samplingConfiguration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpHttp {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<OtlpHeader>,
}

/// One header of the requests: a literal `value`, or `envName`, a variable of discovery's
/// environment (Istio reads it from istiod's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpHeader {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env_name: String,
    /// The value of `envName` in discovery's environment, set by
    /// [`MeshConfig::resolve_header_env`] where discovery loads its mesh config; `None` (the
    /// variable is unset, or `envName` is empty) leaves the header out. Never read from or
    /// written to YAML, so it is lost when the config is layered again and must be resolved
    /// after the last layer.
    #[serde(skip)]
    #[schemars(skip)]
    pub env_value: Option<String>,
}

impl OtlpHeader {
    /// The value the header is sent with: the literal `value`, else the resolved `envName`
    /// (`None`: not resolved, so the header is left out).
    pub fn effective_value(&self) -> Option<&str> {
        if self.env_name.is_empty() { Some(&self.value) } else { self.env_value.as_deref() }
    }
}

/// `resourceDetectors`: Envoy's resource detectors, each `{}` when wanted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceDetectors {
    /// The attributes of the proxy's `OTEL_RESOURCE_ATTRIBUTES` variable
    /// (`envoy.tracers.opentelemetry.resource_detectors.environment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<NoSettings>,
    /// Host and process attributes from Dynatrace's enrichment files on the proxy's node
    /// (`envoy.tracers.opentelemetry.resource_detectors.dynatrace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynatrace: Option<NoSettings>,
}

/// A setting that is only switched on: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// `dynatraceSampler` (`envoy.tracers.opentelemetry.samplers.dynatrace`): the Dynatrace
/// tenant and cluster the proxy reports to, where the sampler reads its sampling
/// configuration, and the root spans per minute it aims at (Envoy's default 1000).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DynatraceSampler {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Dynatrace cluster ids are signed 32-bit numbers (often negative).
    #[serde(default, deserialize_with = "lenient_i32", skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<i32>,
    /// The Dynatrace API the sampler reads its configuration from; when unset, the provider's
    /// own service with its `http` timeout and headers (it must export over HTTP then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_service: Option<DynatraceApi>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub root_spans_per_minute: Option<u32>,
}

/// `dynatraceSampler.httpService`: a registry service (as the provider's `service`), its port,
/// and the requests' path, timeout and headers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DynatraceApi {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttp>,
}

/// Deserialises an optional protobuf `int32` given as a number or a numeric string.
fn lenient_i32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(i64),
        Text(String),
    }
    let number = match Option::<NumberOrText>::deserialize(d)? {
        None => return Ok(None),
        Some(NumberOrText::Number(n)) => Some(n),
        Some(NumberOrText::Text(t)) => t.trim().parse::<i64>().ok(),
    };
    number.and_then(|n| i32::try_from(n).ok()).map(Some).ok_or_else(|| {
        serde::de::Error::custom("invalid int32: expected a whole number from -2147483648 to 2147483647")
    })
}

/// `datadog` tracer (`envoy.tracers.datadog`): the Datadog agent's service and port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatadogProvider {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// The HTTP connection manager's `max_path_tag_length` (Envoy's default 256 when unset).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub max_tag_length: Option<u32>,
}

/// `skywalking` tracer (`envoy.tracers.skywalking`): the SkyWalking OAP's gRPC service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkyWalkingProvider {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// The OAP's authentication token, sent as the tracer's backend token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_token: String,
}

/// Provider kinds that talk to a service and so need `service` and `port`.
const SERVICE_PROVIDERS: &[&str] = &[
    "envoyExtAuthzHttp",
    "envoyExtAuthzGrpc",
    "zipkin",
    "lightstep",
    "datadog",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
];

impl ExtensionProvider {
    /// Every provider kind set on this entry, by YAML name, with the `service` and `port` of
    /// the typed kinds that call one (`None` for a free-form body, checked from the body).
    fn kinds_with_target(&self) -> Vec<(&'static str, ProviderBody<'_>)> {
        fn free<'a>(name: &'static str, body: &'a Option<FreeForm>) -> Option<(&'static str, ProviderBody<'a>)> {
            body.as_ref().map(|b| (name, ProviderBody::Free(b)))
        }
        fn typed<'a>(
            name: &'static str,
            target: Option<(&'a str, Option<u32>)>,
        ) -> Option<(&'static str, ProviderBody<'a>)> {
            target.map(|(s, p)| (name, ProviderBody::Target(s, p)))
        }
        [
            free("envoyExtAuthzHttp", &self.envoy_ext_authz_http),
            free("envoyExtAuthzGrpc", &self.envoy_ext_authz_grpc),
            free("zipkin", &self.zipkin),
            free("lightstep", &self.lightstep),
            typed("datadog", self.datadog.as_ref().map(|p| (p.service.as_str(), p.port))),
            free("stackdriver", &self.stackdriver),
            free("opencensus", &self.opencensus),
            typed("skywalking", self.skywalking.as_ref().map(|p| (p.service.as_str(), p.port))),
            typed("opentelemetry", self.opentelemetry.as_ref().map(|p| (p.service.as_str(), p.port))),
            free("prometheus", &self.prometheus),
            free("envoyFileAccessLog", &self.envoy_file_access_log),
            typed("envoyHttpAls", self.envoy_http_als.as_ref().map(|p| (p.service.as_str(), p.port))),
            typed("envoyTcpAls", self.envoy_tcp_als.as_ref().map(|p| (p.service.as_str(), p.port))),
            typed("envoyOtelAls", self.envoy_otel_als.as_ref().map(|p| (p.service.as_str(), p.port))),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every provider kind set on this entry, by YAML name.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds_with_target().into_iter().map(|(name, _)| name).collect()
    }

    /// The provider kind, when exactly one is set.
    pub fn kind(&self) -> Option<&'static str> {
        match self.kinds().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// The body of one provider kind, for validation.
enum ProviderBody<'a> {
    Free(&'a FreeForm),
    /// `service` and `port` of a typed provider.
    Target(&'a str, Option<u32>),
}

/// A header whose `envName` discovery could not resolve (see
/// [`MeshConfig::resolve_header_env`]): it is left out of the requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedHeader {
    /// The extension provider's name.
    pub provider: String,
    /// The header's name.
    pub header: String,
    /// The environment variable `envName` names.
    pub variable: String,
    /// `true`: the variable is set, but to a value with a line break or NUL, which Envoy
    /// refuses in a header; `false`: it is not set, or empty.
    pub invalid: bool,
}

impl std::fmt::Display for UnresolvedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { provider, header, variable, invalid } = self;
        let why = if *invalid {
            "holds a line break or NUL, which Envoy refuses in a header"
        } else {
            "is not set (or is empty) in discovery's environment"
        };
        write!(
            f,
            "extension provider {provider:?}: header {header:?} takes its value from {variable}, which {why}; the header is left out"
        )
    }
}

impl MeshConfig {
    /// Gives every OpenTelemetry header that names an `envName` (the exporter's `http.headers`
    /// and the Dynatrace sampler's `httpService.http.headers`) its value from `lookup` (the
    /// environment of discovery, which calls this where it loads the mesh config, after the
    /// last layer). Returns the headers left without a value: the variable is unset or empty,
    /// or holds a line break or NUL.
    pub fn resolve_header_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Vec<UnresolvedHeader> {
        let mut unresolved = Vec::new();
        for provider in &mut self.extension_providers {
            let Some(otel) = provider.opentelemetry.as_mut() else { continue };
            let sampler = otel.dynatrace_sampler.as_mut().and_then(|s| s.http_service.as_mut()?.http.as_mut());
            for header in otel.http.iter_mut().chain(sampler).flat_map(|h| h.headers.iter_mut()) {
                header.env_value = None;
                if header.env_name.is_empty() {
                    continue;
                }
                match lookup(&header.env_name).filter(|v| !v.is_empty()) {
                    Some(value) if !value.contains(['\r', '\n', '\0']) => header.env_value = Some(value),
                    found => unresolved.push(UnresolvedHeader {
                        provider: provider.name.clone(),
                        header: header.name.clone(),
                        variable: header.env_name.clone(),
                        invalid: found.is_some(),
                    }),
                }
            }
        }
        unresolved
    }
}

/// Providers used when a Telemetry or policy does not name one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// Path normalisation settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyPathNormalization {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<NormalizationType>,
}

/// TLS versions, curves and ciphers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// Per-proxy settings (`istio.mesh.v1alpha1.ProxyConfig`), as the mesh-wide `defaultConfig` or a
/// pod's `proxy.istio.io/config` annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Directory the agent writes generated proxy config to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// Path of the Envoy binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_path: Option<String>,
    /// Envoy service cluster (exclusive with tracingServiceName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_service_name: Option<TracingServiceName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_shutdown_duration: Option<Duration>,
    /// xDS server address, host:port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_refresh_delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statsd_udp_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_metrics_service_address: Option<String>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub proxy_admin_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_auth_policy: Option<AuthenticationPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_config_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_name_length: Option<i32>,
    /// Worker threads; 0 means one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_bootstrap_template_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception_mode: Option<InterceptionMode>,
    /// Tracer settings (zipkin, datadog, ... plus sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sds: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_access_log_service: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_metrics_service: Option<FreeForm>,
    /// Extra environment for the agent; ISTIO_META_* entries reach the xDS node metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    /// Envoy runtime values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime_values: BTreeMap<String, String>,
    /// Agent status port (15020).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub status_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_stat_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_topology: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_drain_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// VM readiness probe (Kubernetes probe shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_stats_matcher: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates_pem: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ProxyImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_provider: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_headers: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_flush_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_flush_min_size_kb: Option<u32>,
}

/// Proxy image variant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyImage {
    /// `default`, `debug` or `distroless`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_type: String,
}

fn some(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn free_form(value: Value) -> FreeForm {
    match value {
        Value::Object(map) => FreeForm(map),
        _ => FreeForm::default(),
    }
}

impl ProxyConfig {
    /// Upstream's built-in proxy defaults (`DefaultProxyConfig`).
    pub fn istio_defaults() -> Self {
        Self {
            config_path: some("./etc/istio/proxy"),
            binary_path: some("/usr/local/bin/envoy"),
            service_cluster: some("istio-proxy"),
            drain_duration: Some(Duration::from_secs(45)),
            parent_shutdown_duration: Some(Duration::from_secs(60)),
            termination_drain_duration: Some(Duration::from_secs(5)),
            proxy_admin_port: Some(15000),
            concurrency: Some(2),
            control_plane_auth_policy: Some(AuthenticationPolicy::MutualTls),
            discovery_address: some("istiod.istio-system.svc:15012"),
            tracing: Some(free_form(serde_json::json!({
                "zipkin": { "address": "zipkin.istio-system:9411" }
            }))),
            stat_name_length: Some(189),
            status_port: Some(15020),
            ..Self::default()
        }
    }
}

impl MeshConfig {
    /// The trust domain of workload identities: `trustDomain`, `cluster.local` when unset or empty.
    pub fn effective_trust_domain(&self) -> &str {
        self.trust_domain.as_deref().filter(|d| !d.is_empty()).unwrap_or("cluster.local")
    }

    /// Upstream's built-in mesh defaults (`DefaultMeshConfig` plus the chart's effective
    /// defaults for Prometheus merging and default metrics provider).
    pub fn istio_defaults() -> Self {
        let provider = |name: &str| ExtensionProvider { name: name.to_owned(), ..ExtensionProvider::default() };
        Self {
            enable_tracing: Some(true),
            access_log_encoding: Some(AccessLogEncoding::Text),
            protocol_detection_timeout: Some(Duration::from_secs(0)),
            ingress_service: some("istio-ingressgateway"),
            ingress_controller_mode: Some(IngressControllerMode::Strict),
            ingress_class: some("istio"),
            trust_domain: some("cluster.local"),
            enable_auto_mtls: Some(true),
            outbound_traffic_policy: Some(OutboundTrafficPolicy {
                mode: Some(OutboundTrafficPolicyMode::AllowAny),
                tls: None,
            }),
            locality_lb_setting: Some(LocalityLoadBalancerSetting {
                enabled: Some(true),
                ..LocalityLoadBalancerSetting::default()
            }),
            default_config: Some(ProxyConfig::istio_defaults()),
            root_namespace: some("istio-system"),
            proxy_listen_port: Some(15001),
            proxy_inbound_listen_port: Some(15006),
            connect_timeout: Some(Duration::from_secs(10)),
            default_service_export_to: vec!["*".to_owned()],
            default_virtual_service_export_to: vec!["*".to_owned()],
            default_destination_rule_export_to: vec!["*".to_owned()],
            dns_refresh_rate: Some(Duration::from_secs(60)),
            enable_prometheus_merge: Some(true),
            default_providers: Some(DefaultProviders {
                metrics: vec!["prometheus".to_owned()],
                ..DefaultProviders::default()
            }),
            extension_providers: vec![
                ExtensionProvider { prometheus: Some(FreeForm::default()), ..provider("prometheus") },
                ExtensionProvider { stackdriver: Some(FreeForm::default()), ..provider("stackdriver") },
                ExtensionProvider {
                    envoy_file_access_log: Some(free_form(serde_json::json!({ "path": "/dev/stdout" }))),
                    ..provider("envoy")
                },
            ],
            ..Self::default()
        }
    }

    /// The outbound mode in effect: ALLOW_ANY when unset.
    pub fn outbound_mode(&self) -> OutboundTrafficPolicyMode {
        self.outbound_traffic_policy.as_ref().and_then(|p| p.mode).unwrap_or(OutboundTrafficPolicyMode::AllowAny)
    }

    /// Checks every field that is set (so overlays can be checked on their own).
    pub fn validate(&self, at: &FieldPath, report: &mut Report) {
        for (name, port) in
            [("proxyListenPort", self.proxy_listen_port), ("proxyInboundListenPort", self.proxy_inbound_listen_port)]
        {
            if let Some(port) = port {
                report.check(&at.field(name), checks::port(port));
            }
        }
        if let Some(port) = self.proxy_http_port.filter(|p| *p != 0) {
            report.check(&at.field("proxyHttpPort"), checks::port(port));
        }
        if let Some(d) = &self.connect_timeout {
            report.check(&at.field("connectTimeout"), checks::duration(d));
        }
        if let Some(d) = self.protocol_detection_timeout.filter(|d| d.as_nanos() != 0) {
            report.check(&at.field("protocolDetectionTimeout"), checks::duration(&d));
        }
        if let Some(keepalive) = &self.tcp_keepalive {
            validate_tcp_keepalive(keepalive, &at.field("tcpKeepalive"), report);
        }
        if let Some(file) = &self.access_log_file
            && !file.is_empty()
            && file.trim() != file
        {
            report.error(
                &at.field("accessLogFile"),
                format!("access log path {file:?} must not start or end with whitespace"),
            );
        }
        if let (Some(AccessLogEncoding::Json), Some(format)) = (self.access_log_encoding, &self.access_log_format)
            && !format.is_empty()
            && !matches!(serde_json::from_str::<Value>(format), Ok(Value::Object(_)))
        {
            report
                .error(&at.field("accessLogFormat"), "with JSON encoding the access log format must be a JSON object");
        }
        if let Some(proxy) = &self.default_config {
            proxy.validate(&at.field("defaultConfig"), report);
        }
        if let Some(domain) = &self.trust_domain {
            report.check(&at.field("trustDomain"), trust_domain(domain));
        }
        for (i, alias) in self.trust_domain_aliases.iter().enumerate() {
            report.check(&at.field("trustDomainAliases").index(i), trust_domain(alias));
        }
        for (i, cert) in self.ca_certificates.iter().enumerate() {
            let at = at.field("caCertificates").index(i);
            match (&cert.pem, &cert.spiffe_bundle_url) {
                (Some(_), Some(_)) => {
                    report.error(&at, "set only one of pem and spiffeBundleUrl");
                }
                (None, None) => report.error(&at, "one of pem or spiffeBundleUrl is required"),
                (Some(pem), None) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
                    report.error(&at.field("pem"), "pem must hold a PEM-encoded certificate");
                }
                (None, Some(url)) if !url.starts_with("https://") => report
                    .error(&at.field("spiffeBundleUrl"), format!("SPIFFE bundle URL {url:?} must be an https:// URL")),
                _ => {}
            }
        }
        for (name, list) in [
            ("defaultServiceExportTo", &self.default_service_export_to),
            ("defaultVirtualServiceExportTo", &self.default_virtual_service_export_to),
            ("defaultDestinationRuleExportTo", &self.default_destination_rule_export_to),
        ] {
            validate::export_to(report, &at.field(name), list, None, true);
        }
        if let Some(ns) = self.root_namespace.as_deref().filter(|ns| !ns.is_empty()) {
            report.check(&at.field("rootNamespace"), checks::dns1123_label(ns));
        }
        if let Some(locality) = &self.locality_lb_setting {
            // Mesh-wide, the failover-needs-outlierDetection warning does not apply.
            validate_locality(locality, true, &at.field("localityLbSetting"), report);
        }
        if let Some(zone_aware) = &self.zone_aware_lb_setting {
            validate_zone_aware(zone_aware, &at.field("zoneAwareLbSetting"), report);
        }
        if let Some(d) = &self.dns_refresh_rate {
            report.check(&at.field("dnsRefreshRate"), checks::duration(d));
        }
        for (i, settings) in self.service_settings.iter().enumerate() {
            for (j, host) in settings.hosts.iter().enumerate() {
                report
                    .check(&at.field("serviceSettings").index(i).field("hosts").index(j), checks::wildcard_host(host));
            }
        }
        self.validate_providers(at, report);
        for (i, selector) in self.discovery_selectors.iter().enumerate() {
            label_selector(selector, &at.field("discoverySelectors").index(i), report);
        }
        if let Some(tls) = &self.mesh_mtls
            && !tls.ecdh_curves.is_empty()
        {
            report
                .warning(&at.field("meshMTLS").field("ecdhCurves"), "ecdhCurves are ignored for ISTIO_MUTUAL traffic");
        }
        if let Some(policy) = self.compliance_policy.as_deref()
            && !matches!(policy, "" | "fips-140-2" | "pqc")
        {
            report.error(
                &at.field("compliancePolicy"),
                format!("unknown compliance policy {policy:?}; expected fips-140-2 or pqc"),
            );
        }
    }

    fn validate_providers(&self, at: &FieldPath, report: &mut Report) {
        let mut names = BTreeSet::new();
        for (i, provider) in self.extension_providers.iter().enumerate() {
            let at = at.field("extensionProviders").index(i);
            if provider.name.is_empty() {
                report.error(&at.field("name"), "extension provider name is required");
            } else if !names.insert(provider.name.as_str()) {
                report.error(&at.field("name"), format!("extension provider name {:?} is used twice", provider.name));
            }
            let kinds = provider.kinds_with_target();
            match kinds.as_slice() {
                [] => report.error(&at, "extension provider must set one provider kind"),
                [(kind, body)] => {
                    let at = at.field(kind);
                    match body {
                        ProviderBody::Free(body) if SERVICE_PROVIDERS.contains(kind) => {
                            provider_service(body, &at, report);
                        }
                        ProviderBody::Free(_) => {}
                        ProviderBody::Target(service, port) => provider_target(service, *port, &at, report),
                    }
                    provider_settings(provider, &at, report);
                }
                many => report.error(
                    &at,
                    format!(
                        "extension provider sets {}; only one provider kind is allowed",
                        many.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }
        if let Some(defaults) = &self.default_providers {
            let at = at.field("defaultProviders");
            for (field, list) in [
                ("tracing", &defaults.tracing),
                ("metrics", &defaults.metrics),
                ("accessLogging", &defaults.access_logging),
            ] {
                for (i, name) in list.iter().enumerate() {
                    if !names.contains(name.as_str()) {
                        report.warning(
                            &at.field(field).index(i),
                            format!("default provider {name:?} is not among the extensionProviders"),
                        );
                    }
                }
            }
        }
    }
}

impl ProxyConfig {
    /// Checks every field that is set.
    pub fn validate(&self, at: &FieldPath, report: &mut Report) {
        for (name, value) in [("configPath", &self.config_path), ("binaryPath", &self.binary_path)] {
            if value.as_deref() == Some("") {
                report.error(&at.field(name), format!("{name} must not be empty"));
            }
        }
        if self.service_cluster.is_some() && self.tracing_service_name.is_some() {
            report.error(&at.field("tracingServiceName"), "set only one of serviceCluster and tracingServiceName");
        }
        for (name, d) in [
            ("drainDuration", &self.drain_duration),
            ("parentShutdownDuration", &self.parent_shutdown_duration),
            ("terminationDrainDuration", &self.termination_drain_duration),
            ("fileFlushInterval", &self.file_flush_interval),
        ] {
            if let Some(d) = d {
                report.check(&at.field(name), checks::duration(d));
            }
        }
        for (name, address) in [
            ("discoveryAddress", &self.discovery_address),
            ("zipkinAddress", &self.zipkin_address),
            ("statsdUdpAddress", &self.statsd_udp_address),
            ("envoyMetricsServiceAddress", &self.envoy_metrics_service_address),
        ] {
            if let Some(address) = address.as_deref().filter(|a| !a.is_empty()) {
                report.check(&at.field(name), host_port(address));
            }
        }
        if let Some(port) = self.proxy_admin_port {
            report.check(&at.field("proxyAdminPort"), checks::port(port));
        }
        if let Some(port) = self.status_port {
            report.check(&at.field("statusPort"), checks::port(port));
            if self.proxy_admin_port == Some(port) {
                report.error(
                    &at.field("statusPort"),
                    format!("status port {port} must differ from the proxy admin port"),
                );
            }
        }
        if self.control_plane_auth_policy == Some(AuthenticationPolicy::Inherit) {
            report.error(
                &at.field("controlPlaneAuthPolicy"),
                "controlPlaneAuthPolicy INHERIT is not allowed here; use NONE or MUTUAL_TLS",
            );
        }
        for (name, value) in [("statNameLength", self.stat_name_length), ("concurrency", self.concurrency)] {
            if let Some(n) = value.filter(|n| *n < 0) {
                report.error(&at.field(name), format!("{name} {n} must not be negative"));
            }
        }
        if let Some(tracing) = &self.tracing {
            tracing_settings(tracing, &at.field("tracing"), report);
        }
        if let Some(matcher) = &self.proxy_stats_matcher
            && let Some(Value::Array(regexes)) = matcher.0.get("inclusionRegexps")
        {
            for (i, regex) in regexes.iter().enumerate() {
                if let Some(regex) = regex.as_str() {
                    report
                        .check(&at.field("proxyStatsMatcher").field("inclusionRegexps").index(i), checks::regex(regex));
                }
            }
        }
        if let Some(image) = &self.image
            && !matches!(image.image_type.as_str(), "" | "default" | "debug" | "distroless")
        {
            report.error(
                &at.field("image").field("imageType"),
                format!("unknown image type {:?}; expected default, debug or distroless", image.image_type),
            );
        }
    }
}

/// A trust domain: a DNS name (upstream also allows `_` and upper case is not meaningful).
fn trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("trust domain must not be empty".into());
    }
    checks::fqdn(&domain.replace('_', "-")).map_err(|_| format!("trust domain {domain:?} is not a valid domain name"))
}

/// `host:port` with a valid host (name or IP) and port.
fn host_port(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("address {address:?} must be host:port"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("address {address:?} has no host"));
    }
    if host.parse::<std::net::IpAddr>().is_err() && checks::fqdn(host).is_err() {
        return Err(format!("address {address:?} has an invalid host"));
    }
    match port.parse::<u32>() {
        Ok(n) => checks::port(n).map_err(|e| format!("address {address:?}: {e}")),
        Err(_) => Err(format!("address {address:?} has an invalid port {port:?}")),
    }
}

/// Extension providers that call a service need `service` and a valid `port`.
fn provider_service(body: &FreeForm, at: &FieldPath, report: &mut Report) {
    match body.0.get("service") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => report.error(&at.field("service"), "service is required"),
    }
    match body.0.get("port") {
        None => report.error(&at.field("port"), "port is required"),
        Some(port) => {
            let number = port.as_u64().or_else(|| port.as_str().and_then(|s| s.parse().ok()));
            match number.and_then(|n| u32::try_from(n).ok()) {
                Some(n) => report.check(&at.field("port"), checks::port(n)),
                None => report.error(&at.field("port"), format!("port {port} is not a number")),
            }
        }
    }
}

/// A typed provider's `service` and `port`.
fn provider_target(service: &str, port: Option<u32>, at: &FieldPath, report: &mut Report) {
    if service.trim().is_empty() {
        report.error(&at.field("service"), "service is required");
    }
    match port {
        None => report.error(&at.field("port"), "port is required"),
        Some(n) => report.check(&at.field("port"), checks::port(n)),
    }
}

/// Kind-specific settings of typed providers.
fn provider_settings(provider: &ExtensionProvider, at: &FieldPath, report: &mut Report) {
    if let Some(otel) = &provider.opentelemetry {
        if let Some(http) = &otel.http {
            http_service_settings(http, &at.field("http"), report);
        }
        if let Some(sampler) = &otel.dynatrace_sampler {
            dynatrace_sampler(sampler, otel.http.is_some(), &at.field("dynatraceSampler"), report);
        }
    }
    if let Some(format) = provider.envoy_otel_als.as_ref().and_then(|o| o.log_format.as_ref()) {
        for name in format.labels.keys() {
            if name.is_empty() {
                report.error(&at.field("logFormat").field("labels"), "label names must not be empty");
            }
        }
    }
}

/// An HTTP service's path, timeout and headers (Envoy refuses header names and values with a
/// line break or NUL, and a timeout under 1 ms would fail every request).
fn http_service_settings(http: &OtlpHttp, at: &FieldPath, report: &mut Report) {
    if !http.path.is_empty() && !http.path.starts_with('/') {
        report.error(&at.field("path"), format!("path {:?} must start with /", http.path));
    }
    if let Some(timeout) = &http.timeout {
        report.check(&at.field("timeout"), checks::duration(timeout));
    }
    let bad = |text: &str| text.contains(['\r', '\n', '\0']);
    for (i, header) in http.headers.iter().enumerate() {
        let at = at.field("headers").index(i);
        if header.name.trim().is_empty() {
            report.error(&at.field("name"), "header name is required");
        } else if bad(&header.name) {
            report.error(
                &at.field("name"),
                format!("header name {:?} must not contain a line break or NUL", header.name),
            );
        }
        if !header.value.is_empty() && !header.env_name.is_empty() {
            report.error(&at, "set value or envName, not both");
        } else if bad(&header.value) {
            report.error(&at.field("value"), "header value must not contain a line break or NUL");
        }
    }
}

/// `dynatraceSampler`: the tenant and cluster id name the proxy's Dynatrace environment; the
/// sampler reads its configuration over HTTP, from `httpService` or the provider's own.
fn dynatrace_sampler(sampler: &DynatraceSampler, exports_over_http: bool, at: &FieldPath, report: &mut Report) {
    if sampler.tenant.trim().is_empty() {
        report.error(&at.field("tenant"), "tenant is required (the Dynatrace environment's tenant id)");
    }
    if sampler.cluster_id.is_none() {
        report.error(&at.field("clusterId"), "clusterId is required (the Dynatrace cluster id)");
    }
    match &sampler.http_service {
        Some(api) => {
            let at = at.field("httpService");
            provider_target(&api.service, api.port, &at, report);
            if let Some(http) = &api.http {
                http_service_settings(http, &at.field("http"), report);
            }
        }
        None if !exports_over_http => report.error(
            &at.field("httpService"),
            "httpService is required when the provider exports over gRPC (no http): the sampler reads \
             its configuration from the Dynatrace API over HTTP",
        ),
        None => {}
    }
}

fn tracing_settings(tracing: &FreeForm, at: &FieldPath, report: &mut Report) {
    if let Some(sampling) = tracing.0.get("sampling") {
        match sampling.as_f64() {
            Some(p) => report.check(&at.field("sampling"), checks::percentage(p)),
            None => report.error(&at.field("sampling"), "sampling must be a number"),
        }
    }
    let tracers: Vec<&str> = ["zipkin", "lightstep", "datadog", "stackdriver", "openCensusAgent"]
        .into_iter()
        .filter(|k| tracing.0.contains_key(*k))
        .collect();
    if tracers.len() > 1 {
        report.error(at, format!("set only one tracer; found {}", tracers.join(", ")));
    }
    for tracer in ["zipkin", "lightstep", "datadog"] {
        if let Some(address) = tracing.0.get(tracer).and_then(|t| t.get("address")).and_then(Value::as_str) {
            report.check(&at.field(tracer).field("address"), host_port(address));
        }
    }
}

/// A Kubernetes label selector: valid keys and values, known operators, values only where
/// they mean something.
pub(crate) fn label_selector(selector: &LabelSelector, at: &FieldPath, report: &mut Report) {
    if let Some(labels) = &selector.match_labels {
        checks::labels(labels, report, &at.field("matchLabels"));
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = at.field("matchExpressions").index(i);
        report.check(&at.field("key"), checks::label_key(&req.key));
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    report.error(&at.field("values"), format!("operator {} needs at least one value", req.operator));
                }
                for (j, v) in values.iter().enumerate() {
                    report.check(&at.field("values").index(j), checks::label_value(v));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    report.error(&at.field("values"), format!("operator {} takes no values", req.operator));
                }
            }
            other => report.error(
                &at.field("operator"),
                format!("unknown operator {other:?}; expected In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

// === Layering ===

/// Keys that form a protobuf `oneof`: setting one in an overlay clears the others in the base.
const ONEOFS: &[&[&str]] = &[
    &["serviceCluster", "tracingServiceName"],
    &["zipkin", "lightstep", "datadog", "stackdriver", "openCensusAgent"],
    &["pem", "spiffeBundleUrl"],
];

/// Layers mesh config YAML over `base` the way Istio's `ApplyMeshConfig` does: objects (including
/// `defaultConfig` and its `proxyMetadata`) merge field by field, lists replace, except that
/// `extensionProviders` merge by name (a provider with a known name replaces that entry) and
/// `trustDomainAliases` are united and sorted. `null` resets a field. Errors name the field.
/// The result is not validated; call [`MeshConfig::validate`] for that.
pub fn apply_yaml(text: &str, base: &MeshConfig) -> Result<MeshConfig, String> {
    let overlay: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("mesh config is not valid YAML: {e}"))?
    };
    let overlay = match overlay {
        Value::Null => return Ok(base.clone()),
        Value::Object(map) => map,
        _ => return Err("mesh config must be a mapping".into()),
    };
    // Decode the overlay on its own first so that errors point at the user's text.
    decode(Value::Object(overlay.clone()))?;
    let mut merged = match serde_json::to_value(base) {
        Ok(Value::Object(map)) => map,
        Ok(_) => Map::new(),
        Err(e) => return Err(format!("cannot write base mesh config: {e}")),
    };
    for (key, value) in overlay {
        match (key.as_str(), value) {
            (_, Value::Null) => {
                merged.remove(&key);
            }
            ("extensionProviders", Value::Array(providers)) => {
                let slot = merged.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                merge_providers(slot, providers);
            }
            ("trustDomainAliases", Value::Array(aliases)) => {
                let mut all: BTreeSet<String> = BTreeSet::new();
                for v in merged.get(&key).and_then(Value::as_array).into_iter().flatten().chain(aliases.iter()) {
                    if let Some(s) = v.as_str() {
                        all.insert(s.to_owned());
                    }
                }
                merged.insert(key, Value::Array(all.into_iter().map(Value::String).collect()));
            }
            (_, value) => merge_value(merged.entry(key).or_insert(Value::Null), value),
        }
    }
    decode(Value::Object(merged))
}

/// Reads the `mesh` key of the `istio[-<rev>]` ConfigMap: the text layered over
/// [`MeshConfig::istio_defaults`] (upstream's `ApplyMeshConfigDefaults`).
pub fn apply_yaml_over_defaults(text: &str) -> Result<MeshConfig, String> {
    apply_yaml(text, &MeshConfig::istio_defaults())
}

fn decode(value: Value) -> Result<MeshConfig, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if path == "." { message } else { format!("{path}: {message}") }
    })
}

fn merge_value(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for group in ONEOFS {
                if group.iter().any(|k| overlay.contains_key(*k)) {
                    for k in *group {
                        if !overlay.contains_key(*k) {
                            base.remove(*k);
                        }
                    }
                }
            }
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                } else {
                    merge_value(base.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (slot, overlay) => *slot = overlay,
    }
}

fn merge_providers(base: &mut Value, overlay: Vec<Value>) {
    let Value::Array(existing) = base else {
        *base = Value::Array(overlay);
        return;
    };
    for provider in overlay {
        let name = provider.get("name").and_then(Value::as_str);
        match existing.iter_mut().find(|p| name.is_some() && p.get("name").and_then(Value::as_str) == name) {
            Some(slot) => *slot = provider,
            None => existing.push(provider),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(mesh: &MeshConfig) -> Vec<String> {
        let mut report = Report::default();
        mesh.validate(&FieldPath::new("mesh"), &mut report);
        report.items.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_match_upstream() {
        let mesh = MeshConfig::istio_defaults();
        assert_eq!(mesh.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(mesh.proxy_listen_port, Some(15001));
        assert_eq!(mesh.proxy_inbound_listen_port, Some(15006));
        assert_eq!(mesh.outbound_mode(), OutboundTrafficPolicyMode::AllowAny);
        assert_eq!(mesh.trust_domain.as_deref(), Some("cluster.local"));
        assert_eq!(mesh.root_namespace.as_deref(), Some("istio-system"));
        assert_eq!(mesh.dns_refresh_rate, Some(Duration::from_secs(60)));
        let proxy = mesh.default_config.as_ref().expect("defaultConfig");
        assert_eq!(proxy.status_port, Some(15020));
        assert_eq!(proxy.proxy_admin_port, Some(15000));
        assert_eq!(proxy.drain_duration, Some(Duration::from_secs(45)));
        assert_eq!(proxy.discovery_address.as_deref(), Some("istiod.istio-system.svc:15012"));
        let names: Vec<_> = mesh.extension_providers.iter().map(|p| (p.name.as_str(), p.kind())).collect();
        assert_eq!(
            names,
            vec![
                ("prometheus", Some("prometheus")),
                ("stackdriver", Some("stackdriver")),
                ("envoy", Some("envoyFileAccessLog")),
            ]
        );
        assert_eq!(errors(&mesh), Vec::<String>::new());
        // Unset mode means ALLOW_ANY, but an explicit zero value is kept.
        assert_eq!(MeshConfig::default().outbound_mode(), OutboundTrafficPolicyMode::AllowAny);
        let strict =
            apply_yaml("outboundTrafficPolicy: {mode: REGISTRY_ONLY}", &MeshConfig::istio_defaults()).expect("apply");
        assert_eq!(strict.outbound_mode(), OutboundTrafficPolicyMode::RegistryOnly);
    }

    #[test]
    fn defaults_round_trip_through_yaml() {
        let mesh = MeshConfig::istio_defaults();
        let text = serde_saphyr::to_string(&mesh).expect("write");
        assert_eq!(apply_yaml(&text, &MeshConfig::default()), Ok(mesh));
    }

    #[test]
    fn apply_merges_objects_and_replaces_lists() {
        let base = MeshConfig::istio_defaults();
        let text = r#"
accessLogFile: /dev/stdout
defaultServiceExportTo: ["."]
defaultConfig:
  holdApplicationUntilProxyStarts: true
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: "true"
  tracingServiceName: CANONICAL_NAME_ONLY
  tracing:
    datadog: {address: "datadog.agent:8126"}
trustDomainAliases: [old.example, another.example]
extensionProviders:
  - name: envoy
    envoyFileAccessLog: {path: /dev/stderr}
  - name: otel
    opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
"#;
        let mesh = apply_yaml(text, &base).expect("apply");
        assert_eq!(mesh.access_log_file.as_deref(), Some("/dev/stdout"));
        assert_eq!(mesh.default_service_export_to, vec![".".to_owned()]);
        assert_eq!(mesh.default_virtual_service_export_to, vec!["*".to_owned()]);
        let proxy = mesh.default_config.as_ref().expect("defaultConfig");
        assert_eq!(proxy.hold_application_until_proxy_starts, Some(true));
        assert_eq!(proxy.status_port, Some(15020), "kept from the base");
        assert_eq!(proxy.service_cluster, None, "oneof sibling cleared");
        let tracing = proxy.tracing.as_ref().expect("tracing");
        assert!(tracing.0.contains_key("datadog") && !tracing.0.contains_key("zipkin"));
        let names: Vec<_> = mesh.extension_providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["prometheus", "stackdriver", "envoy", "otel"]);
        assert_eq!(
            mesh.extension_providers[2].envoy_file_access_log.as_ref().and_then(|b| b.0.get("path")),
            Some(&Value::from("/dev/stderr"))
        );
        // A second layer unites the aliases and merges proxyMetadata.
        let mesh = apply_yaml("trustDomainAliases: [b.example]\ndefaultConfig: {proxyMetadata: {FOO: bar}}", &mesh)
            .expect("second layer");
        assert_eq!(mesh.trust_domain_aliases, vec!["another.example", "b.example", "old.example"]);
        let metadata = &mesh.default_config.as_ref().expect("dc").proxy_metadata;
        assert_eq!(metadata.len(), 2);
        assert_eq!(errors(&mesh), Vec::<String>::new());
        // null resets a field; an empty string is kept as a value.
        let mesh = apply_yaml("accessLogFile: \"\"\nconnectTimeout: null", &mesh).expect("reset");
        assert_eq!(mesh.access_log_file.as_deref(), Some(""));
        assert_eq!(mesh.connect_timeout, None);
        assert_eq!(apply_yaml("  \n", &base), Ok(base.clone()));
        assert_eq!(apply_yaml_over_defaults(""), Ok(base.clone()));
    }

    #[test]
    fn apply_errors_name_the_field() {
        let base = MeshConfig::istio_defaults();
        for (text, want) in [
            ("outboundTrafficPolicy:\n  mode: SOMETIMES\n", "outboundTrafficPolicy.mode: unknown"),
            ("defaultConfig:\n  bogus: 1\n", "defaultConfig.bogus: unknown field `bogus`"),
            ("connectTimeout: 10\n", "connectTimeout: invalid type"),
            (
                "extensionProviders:\n  - name: x\n    carrierPigeon: {}\n",
                "extensionProviders[0].carrierPigeon: unknown field `carrierPigeon`",
            ),
            ("- a\n", "mesh config must be a mapping"),
        ] {
            let err = apply_yaml(text, &base).expect_err(text);
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let text = r#"
proxyListenPort: 0
connectTimeout: 0s
protocolDetectionTimeout: 0s
trustDomain: "bad domain"
defaultServiceExportTo: ["~", "Bad_NS"]
accessLogEncoding: JSON
accessLogFormat: "%START_TIME%"
defaultConfig:
  configPath: ""
  discoveryAddress: istiod.istio-system.svc
  proxyAdminPort: 15020
  statusPort: 15020
  controlPlaneAuthPolicy: INHERIT
  concurrency: -1
  tracing: {sampling: 101}
localityLbSetting:
  distribute:
    - from: us-west/*
      to: {"us-west/zone1/*": 60, "us-east/*": 30}
extensionProviders:
  - name: zip
    zipkin: {service: zipkin.istio-system.svc.cluster.local}
  - name: zip
    prometheus: {}
    stackdriver: {}
defaultProviders: {tracing: [missing]}
discoverySelectors:
  - matchExpressions: [{key: env, operator: In}]
"#;
        // Decoded directly: layering would fold the two providers named "zip" into one.
        let mesh: MeshConfig = serde_saphyr::from_str(text).expect("decodes");
        assert_eq!(
            errors(&mesh),
            vec![
                "mesh.proxyListenPort: port number 0 must be in the range 1..65535",
                "mesh.connectTimeout: duration 0s must be at least 1ms",
                "mesh.accessLogFormat: with JSON encoding the access log format must be a JSON object",
                "mesh.defaultConfig.configPath: configPath must not be empty",
                "mesh.defaultConfig.discoveryAddress: address \"istiod.istio-system.svc\" must be host:port",
                "mesh.defaultConfig.statusPort: status port 15020 must differ from the proxy admin port",
                "mesh.defaultConfig.controlPlaneAuthPolicy: controlPlaneAuthPolicy INHERIT is not allowed here; use NONE or MUTUAL_TLS",
                "mesh.defaultConfig.concurrency: concurrency -1 must not be negative",
                "mesh.defaultConfig.tracing.sampling: percentage 101 must be in the range 0..100",
                "mesh.trustDomain: trust domain \"bad domain\" is not a valid domain name",
                "mesh.defaultServiceExportTo[1]: exportTo entry \"Bad_NS\" is invalid; use \".\", \"*\", \"~\" or a namespace name",
                "mesh.defaultServiceExportTo: \"~\" exports to no namespace and cannot be combined with other entries",
                "mesh.localityLbSetting.distribute[0].to: locality weights total 90; they must add up to 100",
                "mesh.extensionProviders[0].zipkin.port: port is required",
                "mesh.extensionProviders[1].name: extension provider name \"zip\" is used twice",
                "mesh.extensionProviders[1]: extension provider sets stackdriver, prometheus; only one provider kind is allowed",
                "warning: mesh.defaultProviders.tracing[0]: default provider \"missing\" is not among the extensionProviders",
                "mesh.discoverySelectors[0].matchExpressions[0].values: operator In needs at least one value",
            ]
        );
    }

    #[test]
    fn typed_telemetry_providers_decode_and_name_bad_fields() {
        let text = r#"
extensionProviders:
- name: als
  envoyHttpAls: {service: als.observability.svc.cluster.local, port: "9001", logName: mine, additionalRequestHeadersToLog: [x-a]}
- name: tcp
  envoyTcpAls: {service: "", port: 0}
- name: otel-log
  envoyOtelAls: {service: otel.observability, port: 4317, logFormat: {text: "%PROTOCOL%", labels: {"": x}}}
- name: otel
  opentelemetry: {service: otel.observability, port: 4318, http: {path: v1/traces, timeout: 2s, headers: [{name: "", value: a, envName: B}]}}
- name: dd
  datadog: {service: dd.observability}
- name: sw
  skywalking: {service: oap.observability, port: 11800, accessToken: t}
"#;
        let mesh = apply_yaml(text, &MeshConfig::default()).expect("decodes");
        let als = mesh.extension_providers[0].envoy_http_als.as_ref().expect("envoyHttpAls");
        assert_eq!((als.port, als.log_name.as_str()), (Some(9001), "mine"));
        assert_eq!(als.additional_request_headers_to_log, ["x-a"]);
        assert_eq!(mesh.extension_providers[5].kind(), Some("skywalking"));
        assert_eq!(
            mesh.extension_providers[3].opentelemetry.as_ref().and_then(|o| o.http.as_ref()).and_then(|h| h.timeout),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            errors(&mesh),
            vec![
                "mesh.extensionProviders[1].envoyTcpAls.service: service is required",
                "mesh.extensionProviders[1].envoyTcpAls.port: port number 0 must be in the range 1..65535",
                "mesh.extensionProviders[2].envoyOtelAls.logFormat.labels: label names must not be empty",
                "mesh.extensionProviders[3].opentelemetry.http.path: path \"v1/traces\" must start with /",
                "mesh.extensionProviders[3].opentelemetry.http.headers[0].name: header name is required",
                "mesh.extensionProviders[3].opentelemetry.http.headers[0]: set value or envName, not both",
                "mesh.extensionProviders[4].datadog.port: port is required",
            ]
        );
        for (text, want) in [
            (
                "extensionProviders:\n- name: a\n  envoyOtelAls: {service: s, port: 1, logFormt: {}}\n",
                "extensionProviders[0].envoyOtelAls.logFormt: unknown field `logFormt`",
            ),
            (
                "extensionProviders:\n- name: a\n  datadog: {service: s, port: many}\n",
                "extensionProviders[0].datadog.port: invalid port or count",
            ),
        ] {
            let err = apply_yaml(text, &MeshConfig::default()).expect_err(text);
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn opentelemetry_detectors_and_dynatrace_sampler_decode() {
        let text = r#"
extensionProviders:
- name: dt
  opentelemetry:
    service: abc.live.dynatrace.com
    port: 443
    http: {path: /api/v2/otlp/v1/traces, timeout: 10s, headers: [{name: authorization, envName: DT_TOKEN}]}
    resourceDetectors: {environment: {}, dynatrace: {}}
    dynatraceSampler:
      tenant: abc
      clusterId: "-1743916452"
      rootSpansPerMinute: 2000
      httpService:
        service: dt-api.observability.svc.cluster.local
        port: 443
        http: {path: /api/v2/samplingConfiguration, timeout: 3s, headers: [{name: authorization, value: Api-Token x}]}
"#;
        let mesh = apply_yaml(text, &MeshConfig::default()).expect("decodes");
        assert_eq!(errors(&mesh), Vec::<String>::new());
        let otel = mesh.extension_providers[0].opentelemetry.as_ref().expect("opentelemetry");
        let detectors = otel.resource_detectors.as_ref().expect("resourceDetectors");
        assert_eq!((detectors.environment.is_some(), detectors.dynatrace.is_some()), (true, true));
        let sampler = otel.dynatrace_sampler.as_ref().expect("dynatraceSampler");
        assert_eq!(
            (sampler.tenant.as_str(), sampler.cluster_id, sampler.root_spans_per_minute),
            ("abc", Some(-1_743_916_452), Some(2000))
        );
        let api = sampler.http_service.as_ref().expect("httpService");
        assert_eq!((api.service.as_str(), api.port), ("dt-api.observability.svc.cluster.local", Some(443)));
        assert_eq!(api.http.as_ref().map(|h| h.headers[0].effective_value()), Some(Some("Api-Token x")));
        // Written back and read again, the same config (the resolved value is never written).
        let written = serde_saphyr::to_string(&mesh).expect("write");
        assert_eq!(apply_yaml(&written, &MeshConfig::default()), Ok(mesh));

        for (text, want) in [
            (
                "resourceDetectors: {environment: {}, process: {}}",
                "extensionProviders[0].opentelemetry.resourceDetectors.process: unknown field `process`",
            ),
            (
                "resourceDetectors: {environment: {keys: [a]}}",
                "extensionProviders[0].opentelemetry.resourceDetectors.environment.keys: unknown field `keys`",
            ),
            (
                "dynatraceSampler: {tenant: abc, clusterId: 1, token: t}",
                "extensionProviders[0].opentelemetry.dynatraceSampler.token: unknown field `token`",
            ),
            (
                "dynatraceSampler: {tenant: abc, clusterId: 4294967296}",
                "extensionProviders[0].opentelemetry.dynatraceSampler.clusterId: invalid int32",
            ),
            (
                "dynatraceSampler: {tenant: abc, clusterId: 1, httpService: {service: s, port: 1, http: {paht: /}}}",
                "extensionProviders[0].opentelemetry.dynatraceSampler.httpService.http.paht: unknown field `paht`",
            ),
        ] {
            let text = format!("extensionProviders:\n- name: a\n  opentelemetry: {{service: s, port: 1, {text}}}\n");
            let err = apply_yaml(&text, &MeshConfig::default()).expect_err(&text);
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn dynatrace_sampler_validation_names_the_field() {
        let at = "mesh.extensionProviders[0].opentelemetry";
        for (settings, want) in [
            // The sampler reuses the exporter's HTTP service: nothing else is needed.
            ("http: {path: /v1/traces}, dynatraceSampler: {tenant: abc, clusterId: -1}", vec![]),
            (
                "http: {}, dynatraceSampler: {clusterId: 7}",
                vec![format!(
                    "{at}.dynatraceSampler.tenant: tenant is required (the Dynatrace environment's tenant id)"
                )],
            ),
            (
                "http: {}, dynatraceSampler: {tenant: abc}",
                vec![format!("{at}.dynatraceSampler.clusterId: clusterId is required (the Dynatrace cluster id)")],
            ),
            (
                "dynatraceSampler: {tenant: abc, clusterId: 1}",
                vec![format!(
                    "{at}.dynatraceSampler.httpService: httpService is required when the provider exports over gRPC \
                     (no http): the sampler reads its configuration from the Dynatrace API over HTTP"
                )],
            ),
            (
                "dynatraceSampler: {tenant: abc, clusterId: 1, httpService: {port: 0, http: {path: api, timeout: 0s, headers: [{name: a, value: b, envName: C}, {name: d, value: \"e\\nf\"}]}}}",
                vec![
                    format!("{at}.dynatraceSampler.httpService.service: service is required"),
                    format!("{at}.dynatraceSampler.httpService.port: port number 0 must be in the range 1..65535"),
                    format!("{at}.dynatraceSampler.httpService.http.path: path \"api\" must start with /"),
                    format!("{at}.dynatraceSampler.httpService.http.timeout: duration 0s must be at least 1ms"),
                    format!("{at}.dynatraceSampler.httpService.http.headers[0]: set value or envName, not both"),
                    format!(
                        "{at}.dynatraceSampler.httpService.http.headers[1].value: header value must not contain a line break or NUL"
                    ),
                ],
            ),
            ("resourceDetectors: {}", vec![]),
            ("resourceDetectors: {environment: {}}", vec![]),
        ] {
            let text =
                format!("extensionProviders:\n- name: a\n  opentelemetry: {{service: s, port: 1, {settings}}}\n");
            let mesh = apply_yaml(&text, &MeshConfig::default()).expect(&text);
            assert_eq!(errors(&mesh), want, "{settings}");
        }
    }

    #[test]
    fn header_env_names_resolve_from_the_given_environment() {
        let text = r#"
extensionProviders:
- name: otel
  opentelemetry:
    service: s
    port: 1
    http: {headers: [{name: x-key, envName: OTEL_KEY}, {name: x-lit, value: v}, {name: x-gone, envName: UNSET}]}
    dynatraceSampler:
      tenant: abc
      clusterId: 1
      httpService: {service: d, port: 2, http: {headers: [{name: authorization, envName: DT_TOKEN}, {name: x-bad, envName: BAD}, {name: x-empty, envName: EMPTY}]}}
- name: zipkin
  zipkin: {service: z, port: 9411}
"#;
        let mut mesh = apply_yaml(text, &MeshConfig::default()).expect("decodes");
        let env = |name: &str| match name {
            "OTEL_KEY" => Some("k".to_owned()),
            "DT_TOKEN" => Some("Api-Token t".to_owned()),
            "BAD" => Some("a\nb".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let unresolved = mesh.resolve_header_env(env);
        let described: Vec<String> = unresolved.iter().map(ToString::to_string).collect();
        assert_eq!(
            described,
            [
                "extension provider \"otel\": header \"x-gone\" takes its value from UNSET, which is not set (or is empty) in discovery's environment; the header is left out",
                "extension provider \"otel\": header \"x-bad\" takes its value from BAD, which holds a line break or NUL, which Envoy refuses in a header; the header is left out",
                "extension provider \"otel\": header \"x-empty\" takes its value from EMPTY, which is not set (or is empty) in discovery's environment; the header is left out",
            ]
        );
        let otel = mesh.extension_providers[0].opentelemetry.as_ref().expect("otel");
        let values =
            |h: &OtlpHttp| h.headers.iter().map(|h| h.effective_value().map(str::to_owned)).collect::<Vec<_>>();
        assert_eq!(values(otel.http.as_ref().expect("http")), [Some("k".to_owned()), Some("v".to_owned()), None]);
        let api = otel.dynatrace_sampler.as_ref().and_then(|s| s.http_service.as_ref()?.http.as_ref()).expect("api");
        assert_eq!(values(api), [Some("Api-Token t".to_owned()), None, None]);
        // The resolved values never reach YAML, and layering again drops them (so discovery
        // resolves after the last layer).
        let written = serde_saphyr::to_string(&mesh).expect("write");
        assert!(!written.contains("Api-Token t"), "{written}");
        let layered = apply_yaml("enableTracing: true", &mesh).expect("layer");
        assert_eq!(
            layered.extension_providers[0].opentelemetry.as_ref().and_then(|o| o.http.as_ref()).map(values),
            Some(vec![None, Some("v".to_owned()), None])
        );
        // Resolving again with another environment replaces the values.
        let mut again = mesh.clone();
        assert_eq!(again.resolve_header_env(|_| None).len(), 5);
        assert_eq!(
            again.extension_providers[0].opentelemetry.as_ref().and_then(|o| o.http.as_ref()).map(values),
            Some(vec![None, Some("v".to_owned()), None])
        );
    }
}
