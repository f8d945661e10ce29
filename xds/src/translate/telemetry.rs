//! Telemetry of one proxy: which access logs its listeners write, the mesh metrics Envoy
//! counts for it, and how it traces, from the mesh config and the `Telemetry` objects that
//! apply (root namespace, then the proxy's namespace, then the one selecting its workload;
//! the more specific wins, provider by provider).
//!
//! Upstream Envoy has no Istio stats filter, so the mesh metrics are made by Envoy's stats
//! access logger: one counter or histogram per Istio metric, tagged per request with what
//! only the data path knows (response code and flags, the peer's workload and certificate,
//! the upstream cluster). The agent (`rudder proxy`, [`crate::agent::metrics`]) turns those
//! into `istio_*` series with Istio's labels, adding its own workload's identity. The peer's
//! workload reaches a server in [`SOURCE_WORKLOAD_HEADER`], which the client sets from its
//! environment and the server moves into dynamic metadata (and off the request).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, AndFilter, ExtensionFilter, LogTypeFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HeaderValue, HeaderValueOption, HttpService, HttpUri, TypedExtensionConfig, grpc_service,
    header_value_option, http_uri,
};

use envoy_types::pb::envoy::config::trace::v3::zipkin_config::{CollectorEndpointVersion, TraceContextOption};
use envoy_types::pb::envoy::config::trace::v3::{
    ClientConfig, DatadogConfig, OpenTelemetryConfig, SkyWalkingConfig, ZipkinConfig, client_config,
    tracing::Http as TracingProvider,
};
use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::Config as StatsLog;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::{Counter, Histogram, Stat, Tag, histogram};
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::Config as HeaderToMetadata;
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::config::{
    KeyValuePair, Rule, ValueType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
pub use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, RequestIdExtension,
};
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::{
    DynatraceResourceDetectorConfig, EnvironmentResourceDetectorConfig,
};
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::samplers::v3::DynatraceSamplerConfig;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::envoy::r#type::v3::Scope;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use envoy_types::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
use envoy_types::util::pack_any;
use rudder_config::labels;
use rudder_config::mesh::{
    AccessLogEncoding, DynatraceSampler, OpenTelemetryProvider, OtelLogProvider, OtlpHeader, OtlpHttp,
    TracingServiceName,
};
use rudder_config::telemetry::{self as api, IstioMetric, TagOperation, Telemetry, WorkloadMode};

use crate::model::{NodeType, labels_match};
use crate::translate::authz;
use crate::translate::context::Context;
use crate::translate::listener::access_log;

/// Which side of a request a listener serves: the caller's (outbound, gateways) or the
/// callee's (inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn selected_by(self, mode: Option<WorkloadMode>) -> bool {
        match mode.unwrap_or(WorkloadMode::ClientAndServer) {
            WorkloadMode::ClientAndServer => true,
            WorkloadMode::Client => self == Side::Client,
            WorkloadMode::Server => self == Side::Server,
        }
    }

    fn reporter(self) -> &'static str {
        match self {
            Side::Client => "source",
            Side::Server => "destination",
        }
    }
}

/// The request header a client names its workload in (`name;namespace;app;version;cluster`,
/// the layout of the endpoint metadata `istio.workload`); servers take it off the request.
pub const SOURCE_WORKLOAD_HEADER: &str = "x-rudder-source-workload";
/// The environment variable of the proxy's Envoy the header's value comes from (the agent sets it).
pub const WORKLOAD_ENV: &str = "RUDDER_WORKLOAD";
/// Dynamic metadata namespace and key the server keeps the caller's workload under.
pub const PEER_METADATA_NAMESPACE: &str = "rudder";
pub const PEER_METADATA_KEY: &str = "source_workload";
/// Scope of the mesh metrics in Envoy's stats (`envoy_istio_*` on Envoy's own endpoint).
pub const STATS_SCOPE: &str = "istio";
pub const STATS_ACCESS_LOG: &str = "envoy.access_loggers.stats";
const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";
const HEADER_TO_METADATA_FILTER: &str = "envoy.filters.http.header_to_metadata";
/// The provider Istio ships built in: a file log to the proxy's stdout.
const BUILT_IN_ENVOY_PROVIDER: &str = "envoy";
/// Stands for `meshConfig.accessLogFile` among named providers.
const MESH_FILE: &str = "";

/// The Telemetry objects that apply to the proxy, least specific first: the root
/// namespace's without selector, the proxy namespace's without selector, the proxy
/// namespace's whose selector matches its labels or whose `targetRefs` name the Gateway API
/// gateway it serves (the first of each, in name order).
fn applicable<'a>(ctx: &Context<'a>) -> Vec<&'a Telemetry> {
    let snapshot = ctx.snapshot;
    let root = snapshot.root_namespace();
    let proxy_ns = ctx.proxy.namespace.as_str();
    let ns_of = |t: &Telemetry| t.metadata.namespace.clone().unwrap_or_default();
    let unselected =
        |t: &Telemetry| t.spec.selector.is_none() && t.spec.target_ref.is_none() && t.spec.target_refs.is_empty();
    let mut out = Vec::new();
    if let Some(mesh) = snapshot.telemetries.iter().find(|t| ns_of(t) == root && unselected(t)) {
        out.push(mesh.as_ref());
    }
    if proxy_ns != root
        && let Some(ns) = snapshot.telemetries.iter().find(|t| ns_of(t) == proxy_ns && unselected(t))
    {
        out.push(ns.as_ref());
    }
    // The workload's own: by selector, or attached to the Gateway API gateway it serves.
    let selects = |t: &Telemetry| {
        let spec = &t.spec;
        spec.selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty() && labels_match(&s.match_labels, &ctx.proxy.labels))
            || super::context::targets_proxy(&ns_of(t), spec.target_ref.iter().chain(&spec.target_refs), ctx.proxy)
    };
    if let Some(workload) = snapshot.telemetries.iter().find(|t| ns_of(t) == proxy_ns && selects(t)) {
        out.push(workload.as_ref());
    }
    out
}

/// Everything a listener of this side logs: the access logs, then the mesh metrics.
/// `service` names the service an inbound port serves (the server's `destination_service`).
pub fn access_logs(ctx: &Context<'_>, side: Side, service: Option<&str>) -> Vec<AccessLog> {
    let telemetries = applicable(ctx);
    let mut logs = provider_logs(ctx, &telemetries, side);
    logs.extend(metric_logs(&telemetries, side, ctx.proxy.node_type, service));
    logs
}

/// The access log providers turned on for `side` and their filter expressions.
fn provider_logs(ctx: &Context<'_>, telemetries: &[&Telemetry], side: Side) -> Vec<AccessLog> {
    let mesh = &ctx.snapshot.mesh;
    let defaults: Vec<String> = match mesh.default_providers.as_ref().map(|d| &d.access_logging) {
        Some(named) if !named.is_empty() => named.clone(),
        _ if mesh.access_log_file.as_deref().is_some_and(|f| !f.is_empty()) => vec![MESH_FILE.to_owned()],
        _ => Vec::new(),
    };
    let mut enabled: BTreeMap<String, Option<String>> = defaults.iter().map(|p| (p.clone(), None)).collect();
    for telemetry in telemetries {
        for entry in
            telemetry.spec.access_logging.iter().filter(|e| side.selected_by(e.r#match.as_ref().and_then(|m| m.mode)))
        {
            let named: Vec<String> = entry.providers.iter().map(|p| p.name.clone()).collect();
            // Providers named by a Telemetry replace the mesh's own file log, as in Istio
            // (which only falls back to `accessLogFile` when no Telemetry configures logging).
            if !named.is_empty() && entry.disabled != Some(true) {
                enabled.remove(MESH_FILE);
            }
            for provider in if named.is_empty() { &defaults } else { &named } {
                if entry.disabled == Some(true) {
                    enabled.remove(provider);
                } else {
                    enabled.insert(provider.clone(), entry.filter.as_ref().map(|f| f.expression.clone()));
                }
            }
        }
    }
    let mut logs = Vec::new();
    for (provider, filter) in enabled {
        let Some(mut log) = provider_log(ctx, &provider) else { continue };
        log.filter = Some(log_filter(filter.as_deref()));
        logs.push(log);
    }
    logs
}

/// The log of a provider: the mesh's `accessLogFile`, an `envoyFileAccessLog` extension
/// provider, the built-in `envoy` (stdout), or a gRPC log service (`envoyHttpAls`,
/// `envoyTcpAls`, `envoyOtelAls`) whose service is one of the registry's. Other provider kinds
/// are not access loggers.
fn provider_log(ctx: &Context<'_>, provider: &str) -> Option<AccessLog> {
    let mesh = &ctx.snapshot.mesh;
    if provider == MESH_FILE {
        return access_log::from_mesh(mesh).into_iter().next();
    }
    let Some(found) = mesh.extension_providers.iter().find(|p| p.name == provider) else {
        if provider == BUILT_IN_ENVOY_PROVIDER {
            return Some(access_log::file_log("/dev/stdout", AccessLogEncoding::Text, ""));
        }
        tracing::debug!(provider, "access log provider not in meshConfig.extensionProviders; ignored");
        return None;
    };
    if let Some(als) = &found.envoy_http_als {
        let grpc = log_service(ctx, provider, &als.service, als.port)?;
        let config = HttpGrpcAccessLogConfig {
            common_config: Some(common_grpc_log(
                grpc,
                &als.log_name,
                HTTP_ALS_LOG_NAME,
                &als.filter_state_objects_to_log,
            )),
            additional_request_headers_to_log: als.additional_request_headers_to_log.clone(),
            additional_response_headers_to_log: als.additional_response_headers_to_log.clone(),
            additional_response_trailers_to_log: als.additional_response_trailers_to_log.clone(),
        };
        return Some(typed_log(HTTP_GRPC_ACCESS_LOG, pack_any(config)));
    }
    if let Some(als) = &found.envoy_tcp_als {
        let grpc = log_service(ctx, provider, &als.service, als.port)?;
        let config = TcpGrpcAccessLogConfig {
            common_config: Some(common_grpc_log(
                grpc,
                &als.log_name,
                TCP_ALS_LOG_NAME,
                &als.filter_state_objects_to_log,
            )),
        };
        return Some(typed_log(TCP_GRPC_ACCESS_LOG, pack_any(config)));
    }
    if let Some(als) = &found.envoy_otel_als {
        let grpc = log_service(ctx, provider, &als.service, als.port)?;
        return Some(typed_log(OTEL_ACCESS_LOG, otel_log_config(grpc, als)));
    }
    let Some(file) = &found.envoy_file_access_log else {
        tracing::debug!(provider, "provider is not an access log provider; ignored");
        return None;
    };
    let path = file.0.get("path").and_then(|p| p.as_str()).filter(|p| !p.is_empty()).unwrap_or("/dev/stdout");
    let format = file.0.get("logFormat");
    if let Some(labels) = format.and_then(|f| f.get("labels")).and_then(|l| l.as_object()) {
        return Some(access_log::file_log(
            path,
            AccessLogEncoding::Json,
            &serde_json::Value::Object(labels.clone()).to_string(),
        ));
    }
    let text = format.and_then(|f| f.get("text")).and_then(|t| t.as_str()).unwrap_or_default();
    Some(access_log::file_log(path, AccessLogEncoding::Text, text))
}

/// Extension names of Envoy's gRPC and OpenTelemetry access loggers.
pub const HTTP_GRPC_ACCESS_LOG: &str = "envoy.access_loggers.http_grpc";
pub const TCP_GRPC_ACCESS_LOG: &str = "envoy.access_loggers.tcp_grpc";
pub const OTEL_ACCESS_LOG: &str = "envoy.access_loggers.open_telemetry";
/// Istio's log names when a provider gives none.
const HTTP_ALS_LOG_NAME: &str = "http_envoy_accesslog";
const TCP_ALS_LOG_NAME: &str = "tcp_envoy_accesslog";
const OTEL_ALS_LOG_NAME: &str = "otel_envoy_accesslog";

/// The kind of chain a log is written on: gRPC HTTP logs only go to HTTP connection managers
/// and gRPC TCP logs only to tcp_proxy (as Istio does); every other log goes to both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Http,
    Tcp,
}

/// The logs of `logs` that a chain of `kind` carries.
pub fn logs_for(logs: &[AccessLog], kind: Chain) -> Vec<AccessLog> {
    let other = match kind {
        Chain::Http => TCP_GRPC_ACCESS_LOG,
        Chain::Tcp => HTTP_GRPC_ACCESS_LOG,
    };
    logs.iter().filter(|l| l.name != other).cloned().collect()
}

fn typed_log(name: &str, config: envoy_types::pb::google::protobuf::Any) -> AccessLog {
    AccessLog { name: name.to_owned(), filter: None, config_type: Some(ConfigType::TypedConfig(config)) }
}

/// An Envoy gRPC service to the registry service `host`:`port` (its outbound cluster), the
/// authority its hostname. `None` (and no log) when the registry has no such service.
fn log_service(ctx: &Context<'_>, provider: &str, host: &str, port: Option<u32>) -> Option<GrpcService> {
    let Some((cluster, hostname)) = registry_cluster(ctx, host, port?) else {
        tracing::debug!(provider, host, "access log service is not a service of the registry; no log");
        return None;
    };
    Some(envoy_grpc(cluster, hostname))
}

fn envoy_grpc(cluster: String, authority: String) -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
            cluster_name: cluster,
            authority,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn common_grpc_log(
    grpc: GrpcService,
    log_name: &str,
    default_name: &str,
    filter_state: &[String],
) -> CommonGrpcAccessLogConfig {
    CommonGrpcAccessLogConfig {
        log_name: if log_name.is_empty() { default_name } else { log_name }.to_owned(),
        grpc_service: Some(grpc),
        transport_api_version: ApiVersion::V3 as i32,
        filter_state_objects_to_log: filter_state.to_vec(),
        ..Default::default()
    }
}

/// An OpenTelemetry log: the record's body is the provider's `logFormat.text` (else Istio's
/// text line), its attributes the `logFormat.labels`, in name order.
fn otel_log_config(grpc: GrpcService, als: &OtelLogProvider) -> envoy_types::pb::google::protobuf::Any {
    let format = als.log_format.clone().unwrap_or_default();
    let text = if format.text.is_empty() { access_log::ISTIO_TEXT_FORMAT.to_owned() } else { format.text };
    let string = |value: String| AnyValue { value: Some(any_value::Value::StringValue(value)) };
    let attributes = (!format.labels.is_empty()).then(|| KeyValueList {
        values: format
            .labels
            .into_iter()
            .map(|(key, value)| KeyValue { key, value: Some(string(value)), ..Default::default() })
            .collect(),
    });
    pack_any(OpenTelemetryAccessLogConfig {
        grpc_service: Some(grpc),
        log_name: if als.log_name.is_empty() { OTEL_ALS_LOG_NAME.to_owned() } else { als.log_name.clone() },
        body: Some(string(text)),
        attributes,
        // As Istio: the record carries what the provider asks for, not Envoy's node labels.
        disable_builtin_labels: true,
        ..Default::default()
    })
}

/// File logs skip the record tcp_proxy writes when a connection is established (the metrics
/// count connections opened from it) and, with an expression, what it rejects.
fn log_filter(expression: Option<&str>) -> AccessLogFilter {
    let skip_connected = AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::LogTypeFilter(LogTypeFilter {
            types: vec![AccessLogType::TcpUpstreamConnected as i32],
            exclude: true,
        })),
    };
    match expression.map(str::trim).filter(|e| !e.is_empty()) {
        None => skip_connected,
        Some(expression) => {
            let cel = AccessLogFilter {
                filter_specifier: Some(FilterSpecifier::ExtensionFilter(ExtensionFilter {
                    name: CEL_FILTER.to_owned(),
                    config_type: Some(FilterConfig::TypedConfig(pack_any(ExpressionFilter {
                        expression: expression.to_owned(),
                        ..Default::default()
                    }))),
                })),
            };
            AccessLogFilter {
                filter_specifier: Some(FilterSpecifier::AndFilter(AndFilter { filters: vec![skip_connected, cel] })),
            }
        }
    }
}

/// One of Istio's standard metrics as Envoy counts it.
struct MetricSpec {
    metric: IstioMetric,
    /// Name in Envoy's stats (scope `istio`); the agent publishes it as `istio_<name>`.
    name: &'static str,
    kind: MetricKind,
    /// The access-log record that counts it.
    record: AccessLogType,
}

enum MetricKind {
    Count,
    /// A counter of the value of a format string (bytes).
    Sum(&'static str),
    Histogram(&'static str, histogram::Unit),
}

const HTTP_METRICS: &[MetricSpec] = &[
    MetricSpec {
        metric: IstioMetric::RequestCount,
        name: "requests_total",
        kind: MetricKind::Count,
        record: AccessLogType::DownstreamEnd,
    },
    MetricSpec {
        metric: IstioMetric::RequestDuration,
        name: "request_duration_milliseconds",
        kind: MetricKind::Histogram("%DURATION%", histogram::Unit::Milliseconds),
        record: AccessLogType::DownstreamEnd,
    },
    MetricSpec {
        metric: IstioMetric::RequestSize,
        name: "request_bytes",
        kind: MetricKind::Histogram("%BYTES_RECEIVED%", histogram::Unit::Bytes),
        record: AccessLogType::DownstreamEnd,
    },
    MetricSpec {
        metric: IstioMetric::ResponseSize,
        name: "response_bytes",
        kind: MetricKind::Histogram("%BYTES_SENT%", histogram::Unit::Bytes),
        record: AccessLogType::DownstreamEnd,
    },
];

const TCP_METRICS: &[MetricSpec] = &[
    MetricSpec {
        metric: IstioMetric::TcpOpenedConnections,
        name: "tcp_connections_opened_total",
        kind: MetricKind::Count,
        record: AccessLogType::TcpUpstreamConnected,
    },
    MetricSpec {
        metric: IstioMetric::TcpClosedConnections,
        name: "tcp_connections_closed_total",
        kind: MetricKind::Count,
        record: AccessLogType::TcpConnectionEnd,
    },
    MetricSpec {
        metric: IstioMetric::TcpSentBytes,
        name: "tcp_sent_bytes_total",
        kind: MetricKind::Sum("%BYTES_SENT%"),
        record: AccessLogType::TcpConnectionEnd,
    },
    MetricSpec {
        metric: IstioMetric::TcpReceivedBytes,
        name: "tcp_received_bytes_total",
        kind: MetricKind::Sum("%BYTES_RECEIVED%"),
        record: AccessLogType::TcpConnectionEnd,
    },
];

/// The tags Envoy sets per request; the agent derives Istio's labels from them. The peer is
/// the other side: the upstream endpoint for a client, the caller for a server.
pub mod tags {
    pub const REPORTER: &str = "reporter";
    pub const PEER_WORKLOAD: &str = "peer_workload";
    pub const PEER_PRINCIPAL: &str = "peer_principal";
    pub const DESTINATION_SERVICE: &str = "destination_service";
    pub const REQUEST_PROTOCOL: &str = "request_protocol";
    pub const RESPONSE_CODE: &str = "response_code";
    pub const RESPONSE_FLAGS: &str = "response_flags";
    pub const GRPC_RESPONSE_STATUS: &str = "grpc_response_status";
    /// Istio labels a Telemetry removed, comma-separated.
    pub const REMOVED: &str = "rudder_removed_labels";
    /// The tags the agent reads; an override never drops them from Envoy's stats.
    pub const RESERVED: [&str; 8] = [
        REPORTER,
        PEER_WORKLOAD,
        PEER_PRINCIPAL,
        DESTINATION_SERVICE,
        REQUEST_PROTOCOL,
        RESPONSE_CODE,
        RESPONSE_FLAGS,
        GRPC_RESPONSE_STATUS,
    ];
}

fn base_tags(side: Side, node_type: NodeType, service: Option<&str>, http: bool) -> Vec<(String, String)> {
    let reporter = if node_type == NodeType::Router { "source" } else { side.reporter() };
    let (workload, principal, destination) = match side {
        Side::Client => (
            "%UPSTREAM_METADATA(istio:workload)%".to_owned(),
            "%UPSTREAM_PEER_URI_SAN%",
            "%UPSTREAM_CLUSTER_RAW%".to_owned(),
        ),
        Side::Server => (
            if http {
                format!("%DYNAMIC_METADATA({PEER_METADATA_NAMESPACE}:{PEER_METADATA_KEY})%")
            } else {
                "-".to_owned()
            },
            "%DOWNSTREAM_PEER_URI_SAN%",
            service.filter(|s| !s.is_empty()).unwrap_or("-").to_owned(),
        ),
    };
    let mut out = vec![
        (tags::REPORTER.to_owned(), reporter.to_owned()),
        (tags::PEER_WORKLOAD.to_owned(), workload),
        (tags::PEER_PRINCIPAL.to_owned(), principal.to_owned()),
        (tags::DESTINATION_SERVICE.to_owned(), destination),
    ];
    if http {
        out.push((tags::REQUEST_PROTOCOL.to_owned(), "%PROTOCOL%".to_owned()));
        out.push((tags::RESPONSE_CODE.to_owned(), "%RESPONSE_CODE%".to_owned()));
        out.push((tags::GRPC_RESPONSE_STATUS.to_owned(), "%GRPC_STATUS_NUMBER%".to_owned()));
    }
    out.push((tags::RESPONSE_FLAGS.to_owned(), "%RESPONSE_FLAGS%".to_owned()));
    out
}

/// What Telemetry `metrics` overrides leave of one metric on one side: whether it is
/// counted, and its tags after removals and upserts (values are CEL expressions).
fn metric_tags(
    telemetries: &[&Telemetry],
    side: Side,
    metric: IstioMetric,
    mut tags: Vec<(String, String)>,
) -> Option<Vec<(String, String)>> {
    let mut enabled = true;
    let mut removed: Vec<String> = Vec::new();
    for telemetry in telemetries {
        for metrics in &telemetry.spec.metrics {
            if !metrics.providers.is_empty() && !metrics.providers.iter().any(|p| p.name == "prometheus") {
                continue;
            }
            for o in &metrics.overrides {
                let selector = o.r#match.as_ref();
                if !side.selected_by(selector.and_then(|s| s.mode)) {
                    continue;
                }
                if selector.is_some_and(|s| s.custom_metric.is_some()) {
                    continue;
                }
                let wanted = selector.and_then(|s| s.metric).unwrap_or(IstioMetric::AllMetrics);
                if wanted != IstioMetric::AllMetrics && wanted != metric {
                    continue;
                }
                if let Some(disabled) = o.disabled {
                    enabled = !disabled;
                }
                for (name, tag) in &o.tag_overrides {
                    if !tags::RESERVED.contains(&name.as_str()) {
                        tags.retain(|(n, _)| n != name);
                    }
                    removed.retain(|n| n != name);
                    match tag.operation.unwrap_or_default() {
                        TagOperation::Upsert if !tag.value.is_empty() => {
                            tags.retain(|(n, _)| n != name);
                            tags.push((name.clone(), format!("%CEL({})%", tag.value)));
                        }
                        TagOperation::Upsert => {}
                        TagOperation::Remove => removed.push(name.clone()),
                    }
                }
            }
        }
    }
    if !removed.is_empty() {
        tags.push((tags::REMOVED.to_owned(), removed.join(",")));
    }
    enabled.then_some(tags)
}

fn metric_logs(telemetries: &[&Telemetry], side: Side, node_type: NodeType, service: Option<&str>) -> Vec<AccessLog> {
    let mut by_record: BTreeMap<i32, StatsLog> = BTreeMap::new();
    for (specs, http) in [(HTTP_METRICS, true), (TCP_METRICS, false)] {
        for spec in specs {
            let Some(tags) = metric_tags(telemetries, side, spec.metric, base_tags(side, node_type, service, http))
            else {
                continue;
            };
            let stat = Stat {
                name: spec.name.to_owned(),
                tags: tags.into_iter().map(|(name, value_format)| Tag { name, value_format, rules: None }).collect(),
            };
            let log = by_record.entry(spec.record as i32).or_insert_with(|| StatsLog {
                stats_scope: Some(Scope { prefix: STATS_SCOPE.to_owned(), ..Default::default() }),
                ..Default::default()
            });
            match spec.kind {
                MetricKind::Count => log.counters.push(Counter {
                    stat: Some(stat),
                    value_fixed: Some(UInt64Value { value: 1 }),
                    ..Default::default()
                }),
                MetricKind::Sum(value) => log.counters.push(Counter {
                    stat: Some(stat),
                    value_format: value.to_owned(),
                    ..Default::default()
                }),
                MetricKind::Histogram(value, unit) => log.histograms.push(Histogram {
                    stat: Some(stat),
                    unit: unit as i32,
                    value_format: value.to_owned(),
                }),
            }
        }
    }
    by_record
        .into_iter()
        .map(|(record, config)| AccessLog {
            name: STATS_ACCESS_LOG.to_owned(),
            filter: Some(AccessLogFilter {
                filter_specifier: Some(FilterSpecifier::LogTypeFilter(LogTypeFilter {
                    types: vec![record],
                    exclude: false,
                })),
            }),
            config_type: Some(ConfigType::TypedConfig(pack_any(config))),
        })
        .collect()
}

/// Whether `logs` count TCP connections when they open (tcp_proxy then writes a record on
/// connect).
pub fn counts_connections(logs: &[AccessLog]) -> bool {
    logs.iter().any(|l| {
        l.name == STATS_ACCESS_LOG
            && matches!(&l.filter, Some(AccessLogFilter { filter_specifier: Some(FilterSpecifier::LogTypeFilter(f)) })
                if f.types.contains(&(AccessLogType::TcpUpstreamConnected as i32)))
    })
}

/// The request header a client adds naming its workload (from its Envoy's environment).
pub fn source_workload_header() -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: SOURCE_WORKLOAD_HEADER.to_owned(),
            value: format!("%ENVIRONMENT({WORKLOAD_ENV})%"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The inbound HTTP filter that moves the caller's workload header into dynamic metadata.
pub fn peer_workload_filter() -> HttpFilter {
    let rule = Rule {
        header: SOURCE_WORKLOAD_HEADER.to_owned(),
        on_header_present: Some(KeyValuePair {
            metadata_namespace: PEER_METADATA_NAMESPACE.to_owned(),
            key: PEER_METADATA_KEY.to_owned(),
            r#type: ValueType::String as i32,
            ..Default::default()
        }),
        remove: true,
        ..Default::default()
    };
    HttpFilter {
        name: HEADER_TO_METADATA_FILTER.to_owned(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(HeaderToMetadata {
            request_rules: vec![rule],
            ..Default::default()
        }))),
        ..Default::default()
    }
}

/// Where spans go: a zipkin collector behind an Envoy cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    /// The cluster the tracer posts to: a registry service's outbound cluster, or
    /// [`ZIPKIN_CLUSTER`] (made by discovery) for an address outside the registry.
    pub cluster: String,
    /// `host:port` of an address outside the registry (for [`ZIPKIN_CLUSTER`]).
    pub address: Option<(String, u32)>,
}

/// The cluster discovery adds for a zipkin address that is not a registry service.
pub const ZIPKIN_CLUSTER: &str = "zipkin";
/// Istio's default sampling when neither the mesh nor a Telemetry says (percent).
const DEFAULT_SAMPLING: f64 = 1.0;

/// Discovery's default sampling (istiod's `PILOT_TRACE_SAMPLING`, which the install sets from
/// `values.pilot.traceSampling`), set once at start; like istiod's feature flags it is a
/// process setting rather than config.
static PROCESS_SAMPLING: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Sets the default sampling (percent, 0–100) for proxies whose mesh config and Telemetry do
/// not choose one. Only the first call counts.
pub fn set_default_sampling(percent: f64) {
    let _ = PROCESS_SAMPLING.set(percent.clamp(0.0, 100.0));
}

/// The zipkin collector of the mesh: a Telemetry or default tracing provider of kind zipkin
/// (`service`, `port`), else `defaultConfig.tracing.zipkin.address`. `None`: no tracing.
pub fn collector(ctx: &Context<'_>) -> Option<Collector> {
    let mesh = &ctx.snapshot.mesh;
    if mesh.enable_tracing == Some(false) {
        return None;
    }
    if let Some(name) = named_tracer(ctx) {
        let provider = mesh.extension_providers.iter().find(|p| p.name == name)?;
        let zipkin = provider.zipkin.as_ref()?;
        let service = zipkin.0.get("service").and_then(|s| s.as_str())?;
        let port = zipkin.0.get("port").and_then(serde_json::Value::as_u64).and_then(|p| u32::try_from(p).ok())?;
        return collector_at(ctx, service, port);
    }
    let tracing = mesh.default_config.as_ref()?.tracing.as_ref()?;
    let address = tracing.0.get("zipkin")?.get("address")?.as_str()?;
    let (host, port) = address.rsplit_once(':')?;
    collector_at(ctx, host, port.parse().ok()?)
}

/// The tracing provider the most specific Telemetry names, else the mesh's default one.
fn named_tracer(ctx: &Context<'_>) -> Option<String> {
    applicable(ctx)
        .iter()
        .flat_map(|t| t.spec.tracing.first())
        .filter_map(|t| t.providers.first().map(|p| p.name.clone()))
        .next_back()
        .or_else(|| ctx.snapshot.mesh.default_providers.as_ref().and_then(|d| d.tracing.first().cloned()))
}

/// The tracer of the proxy: an `opentelemetry`, `datadog` or `skywalking` provider named by a
/// Telemetry or the mesh default (when its service is one of the registry's), else zipkin
/// ([`collector`]), and whether it brings its own sampler (an OpenTelemetry provider's
/// `dynatraceSampler`). `None`: no tracing.
fn tracer(ctx: &Context<'_>) -> Option<(TracingProvider, bool)> {
    if ctx.snapshot.mesh.enable_tracing == Some(false) {
        return None;
    }
    let named = named_tracer(ctx);
    let provider = named.as_ref().and_then(|n| ctx.snapshot.mesh.extension_providers.iter().find(|p| &p.name == n));
    let target = |service: &str, port: Option<u32>| {
        let found = registry_cluster(ctx, service, port?);
        if found.is_none() {
            tracing::debug!(provider = ?named, service, "tracing collector is not a service of the registry; no tracing");
        }
        found
    };
    if let Some(provider) = provider {
        if let Some(otel) = &provider.opentelemetry {
            let (cluster, hostname) = target(&otel.service, otel.port)?;
            let sampler = match &otel.dynatrace_sampler {
                None => None,
                // As Istio: a sampler that cannot be configured leaves the proxy untraced.
                Some(sampler) => Some(dynatrace_sampler(ctx, &provider.name, otel, sampler, &cluster, &hostname)?),
            };
            let custom_sampler = sampler.is_some();
            let config = opentelemetry_tracer(ctx, &provider.name, otel, cluster, hostname, sampler);
            return Some((tracer_of(OPENTELEMETRY_TRACER, pack_any(config)), custom_sampler));
        }
        if let Some(datadog) = &provider.datadog {
            let (cluster, hostname) = target(&datadog.service, datadog.port)?;
            let config = DatadogConfig {
                collector_cluster: cluster,
                service_name: tracing_service_name(ctx),
                collector_hostname: hostname,
                ..Default::default()
            };
            return Some((tracer_of(DATADOG_TRACER, pack_any(config)), false));
        }
        if let Some(skywalking) = &provider.skywalking {
            let (cluster, hostname) = target(&skywalking.service, skywalking.port)?;
            // As Istio: Envoy names the service and instance after the node; only a token is set.
            let client_config = (!skywalking.access_token.is_empty()).then(|| ClientConfig {
                backend_token_specifier: Some(client_config::BackendTokenSpecifier::BackendToken(
                    skywalking.access_token.clone(),
                )),
                ..Default::default()
            });
            let config = SkyWalkingConfig { grpc_service: Some(envoy_grpc(cluster, hostname)), client_config };
            return Some((tracer_of(SKYWALKING_TRACER, pack_any(config)), false));
        }
    }
    let collector = collector(ctx)?;
    let zipkin = ZipkinConfig {
        collector_cluster: collector.cluster,
        collector_endpoint: "/api/v2/spans".to_owned(),
        collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
        trace_id_128bit: true,
        shared_span_context: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        trace_context_option: TraceContextOption::UseB3WithW3cPropagation as i32,
        ..Default::default()
    };
    Some((tracer_of(ZIPKIN_TRACER, pack_any(zipkin)), false))
}

/// The named tracing provider's `maxTagLength` (zipkin, opentelemetry, datadog), when set and
/// not 0: the longest URL path a span's `http.url` tag keeps.
fn max_tag_length(ctx: &Context<'_>) -> Option<u32> {
    let name = named_tracer(ctx)?;
    let provider = ctx.snapshot.mesh.extension_providers.iter().find(|p| p.name == name)?;
    let zipkin = || {
        let value = provider.zipkin.as_ref()?.0.get("maxTagLength")?;
        value.as_u64().or_else(|| value.as_str()?.parse().ok()).and_then(|n| u32::try_from(n).ok())
    };
    provider
        .opentelemetry
        .as_ref()
        .and_then(|o| o.max_tag_length)
        .or_else(|| provider.datadog.as_ref().and_then(|d| d.max_tag_length))
        .or_else(zipkin)
        .filter(|n| *n > 0)
}

/// Extension names of Envoy's tracers.
pub const ZIPKIN_TRACER: &str = "envoy.tracers.zipkin";
pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";
pub const DATADOG_TRACER: &str = "envoy.tracers.datadog";
pub const SKYWALKING_TRACER: &str = "envoy.tracers.skywalking";
/// Extension names of the OpenTelemetry tracer's resource detectors and sampler.
pub const ENVIRONMENT_RESOURCE_DETECTOR: &str = "envoy.tracers.opentelemetry.resource_detectors.environment";
pub const DYNATRACE_RESOURCE_DETECTOR: &str = "envoy.tracers.opentelemetry.resource_detectors.dynatrace";
pub const DYNATRACE_SAMPLER: &str = "envoy.tracers.opentelemetry.samplers.dynatrace";
/// OTLP/HTTP's path for spans, when the provider's `http.path` is empty.
const OTLP_TRACES_PATH: &str = "/v1/traces";
/// The Dynatrace API's sampling configuration, where the Dynatrace sampler reads it (Istio's
/// path when the sampler shares the exporter's service, and when `httpService.http.path` is
/// empty).
const DYNATRACE_SAMPLING_PATH: &str = "/api/v2/samplingConfiguration";
/// Timeout of an OTLP/HTTP export (and of the Dynatrace sampler's requests) when the provider
/// gives none.
const OTLP_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn tracer_of(name: &str, config: envoy_types::pb::google::protobuf::Any) -> TracingProvider {
    TracingProvider {
        name: name.to_owned(),
        config_type: Some(envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType::TypedConfig(config)),
    }
}

/// OTLP over gRPC to the collector's cluster, or over HTTP (`http`: path, timeout, headers) to
/// `<host><path>` through it; the resource detectors asked for, and the `sampler` (made by
/// [`dynatrace_sampler`]).
fn opentelemetry_tracer(
    ctx: &Context<'_>,
    provider: &str,
    otel: &OpenTelemetryProvider,
    cluster: String,
    hostname: String,
    sampler: Option<TypedExtensionConfig>,
) -> OpenTelemetryConfig {
    let mut config = OpenTelemetryConfig { service_name: tracing_service_name(ctx), sampler, ..Default::default() };
    match &otel.http {
        None => config.grpc_service = Some(envoy_grpc(cluster, hostname)),
        Some(http) => config.http_service = Some(http_service(provider, &hostname, OTLP_TRACES_PATH, http, cluster)),
    }
    if let Some(detectors) = &otel.resource_detectors {
        if detectors.environment.is_some() {
            config.resource_detectors.push(TypedExtensionConfig {
                name: ENVIRONMENT_RESOURCE_DETECTOR.to_owned(),
                typed_config: Some(pack_any(EnvironmentResourceDetectorConfig {})),
            });
        }
        if detectors.dynatrace.is_some() {
            config.resource_detectors.push(TypedExtensionConfig {
                name: DYNATRACE_RESOURCE_DETECTOR.to_owned(),
                typed_config: Some(pack_any(DynatraceResourceDetectorConfig {})),
            });
        }
    }
    config
}

/// The Dynatrace sampler of an OpenTelemetry provider: its tenant, cluster id and root spans
/// per minute, reading its configuration from `httpService` (a registry service the proxy has a
/// cluster for; its path defaults to the Dynatrace API's sampling configuration), else, as
/// Istio does, from the exporter's own service at that path with the exporter's timeout and
/// headers. `None` when there is no such service (validation refuses a gRPC exporter without
/// `httpService`).
fn dynatrace_sampler(
    ctx: &Context<'_>,
    provider: &str,
    otel: &OpenTelemetryProvider,
    sampler: &DynatraceSampler,
    cluster: &str,
    hostname: &str,
) -> Option<TypedExtensionConfig> {
    let service = match &sampler.http_service {
        Some(api) => {
            let Some((cluster, hostname)) = api.port.and_then(|port| registry_cluster(ctx, &api.service, port)) else {
                tracing::debug!(provider, service = %api.service, "the Dynatrace sampler's service is not a service of the registry; no tracing");
                return None;
            };
            let http = api.http.clone().unwrap_or_default();
            http_service(provider, &hostname, DYNATRACE_SAMPLING_PATH, &http, cluster)
        }
        None => {
            let Some(exporter) = &otel.http else {
                tracing::debug!(
                    provider,
                    "the Dynatrace sampler has no httpService and the exporter no http; no tracing"
                );
                return None;
            };
            let http = OtlpHttp { path: DYNATRACE_SAMPLING_PATH.to_owned(), ..exporter.clone() };
            http_service(provider, hostname, DYNATRACE_SAMPLING_PATH, &http, cluster.to_owned())
        }
    };
    let config = DynatraceSamplerConfig {
        tenant: sampler.tenant.clone(),
        cluster_id: sampler.cluster_id.unwrap_or_default(),
        http_service: Some(service),
        root_spans_per_minute: sampler.root_spans_per_minute.unwrap_or_default(),
    };
    Some(TypedExtensionConfig { name: DYNATRACE_SAMPLER.to_owned(), typed_config: Some(pack_any(config)) })
}

/// Requests to `<hostname><path>` (`default_path` when `http.path` is empty) through `cluster`
/// (as Istio: the cluster picks the port), with `http`'s timeout (default 10 s) and headers.
fn http_service(provider: &str, hostname: &str, default_path: &str, http: &OtlpHttp, cluster: String) -> HttpService {
    let path = if http.path.is_empty() { default_path } else { http.path.as_str() };
    let timeout = http.timeout.map_or(OTLP_HTTP_TIMEOUT, |t| t.to_std());
    HttpService {
        http_uri: Some(HttpUri {
            uri: format!("{hostname}{path}"),
            timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(timeout.subsec_nanos()).unwrap_or_default(),
            }),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
        }),
        request_headers_to_add: request_headers(provider, &http.headers),
        ..Default::default()
    }
}

/// The headers of an HTTP service: literal values, and `envName` ones with the value discovery
/// read from its environment when it loaded the mesh config. A header whose variable was not
/// set is left out (discovery warned when it loaded the config), and so is one with a line
/// break or NUL, which Envoy would refuse with the whole listener (validation refuses it).
fn request_headers(provider: &str, headers: &[OtlpHeader]) -> Vec<HeaderValueOption> {
    let bad = |text: &str| text.contains(['\r', '\n', '\0']);
    headers
        .iter()
        .filter(|h| !h.name.is_empty())
        .filter_map(|h| {
            let Some(value) = h.effective_value().filter(|v| !bad(v) && !bad(&h.name)) else {
                tracing::debug!(provider, header = %h.name, variable = %h.env_name, "header without a usable value left out");
                return None;
            };
            Some(HeaderValueOption {
                header: Some(HeaderValue { key: h.name.clone(), value: value.to_owned(), ..Default::default() }),
                append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })
        })
        .collect()
}

/// The service name spans carry, as Istio names the proxy's service cluster after
/// `defaultConfig.tracingServiceName`: `<app label>.<namespace>` (default; `istio-proxy` without
/// an app label), the canonical service alone, or the canonical service and namespace.
fn tracing_service_name(ctx: &Context<'_>) -> String {
    let proxy = ctx.proxy;
    let label = |key: &str| proxy.labels.get(key).filter(|v| !v.is_empty()).cloned();
    let app = label(labels::APP).unwrap_or_else(|| "istio-proxy".to_owned());
    let canonical =
        label(labels::CANONICAL_NAME).or_else(|| label(labels::APP)).unwrap_or_else(|| "istio-proxy".to_owned());
    let mode = ctx.snapshot.mesh.default_config.as_ref().and_then(|c| c.tracing_service_name);
    match mode.unwrap_or(TracingServiceName::AppLabelAndNamespace) {
        TracingServiceName::AppLabelAndNamespace => format!("{app}.{}", proxy.namespace),
        TracingServiceName::CanonicalNameOnly => canonical,
        TracingServiceName::CanonicalNameAndNamespace => format!("{canonical}.{}", proxy.namespace),
    }
}

/// A registry service's outbound cluster when `host` names one (short or full); else, for an
/// IP address or a name outside the cluster, the discovery-made cluster to the address. A
/// Kubernetes service name (`name.namespace`, `….svc…`) that is not in the registry names
/// nothing that exists (Istio's default `zipkin.istio-system` where no zipkin is installed):
/// no collector, rather than a DNS cluster looking it up forever.
fn collector_at(ctx: &Context<'_>, host: &str, port: u32) -> Option<Collector> {
    use crate::translate::context::DOMAIN_SUFFIX;
    if let Some((cluster, _)) = registry_cluster(ctx, host, port) {
        return Some(Collector { cluster, address: None });
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    let labels = host.split('.').count();
    let kubernetes_name = labels == 2 || host.contains(".svc") || host.ends_with(DOMAIN_SUFFIX);
    if !ip && (kubernetes_name || labels == 1) {
        tracing::debug!(host, "tracing collector is not a service of the registry; no tracing");
        return None;
    }
    Some(Collector { cluster: ZIPKIN_CLUSTER.to_owned(), address: Some((host.to_owned(), port)) })
}

/// The outbound cluster and hostname of the registry service `host` (full, `name.namespace`
/// or `name.namespace.svc`) on `port`, when the proxy has that cluster (the service is exported
/// to the proxy's namespace and its Sidecar's egress admits it).
/// A `namespace/host` form (Istio's, for a host defined in several namespaces) must name the
/// service's namespace.
fn registry_cluster(ctx: &Context<'_>, host: &str, port: u32) -> Option<(String, String)> {
    use crate::translate::context::{DOMAIN_SUFFIX, outbound_cluster_name};
    let (namespace, host) = match host.split_once('/') {
        Some((namespace, host)) => (Some(namespace), host),
        None => (None, host),
    };
    let candidates = [host.to_owned(), format!("{host}.svc.{DOMAIN_SUFFIX}"), format!("{host}.{DOMAIN_SUFFIX}")];
    candidates.into_iter().find_map(|candidate| {
        let service = ctx.service(&candidate).filter(|s| {
            s.port(port).is_some()
                && namespace.is_none_or(|n| n == s.namespace)
                && ctx.sidecar_allows(&s.namespace, &s.hostname)
        })?;
        Some((outbound_cluster_name(port, "", &service.hostname), service.hostname.to_string()))
    })
}

/// The HCM tracing of a side: the [`tracer`] (zipkin with B3 and W3C propagation, or an
/// OpenTelemetry, Datadog or SkyWalking one), the sampling of the most
/// specific Telemetry (else `defaultConfig.tracing.sampling`, else `PILOT_TRACE_SAMPLING`,
/// else 1 %; 100 % when the tracer has its own sampler, which then decides, as in Istio), and
/// custom tags.
pub fn hcm_tracing(ctx: &Context<'_>, side: Side) -> Option<HcmTracing> {
    let (provider, custom_sampler) = tracer(ctx)?;
    let telemetries = applicable(ctx);
    let mesh = &ctx.snapshot.mesh;
    let mut sampling = mesh
        .default_config
        .as_ref()
        .and_then(|c| c.tracing.as_ref())
        .and_then(|t| t.0.get("sampling"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| PROCESS_SAMPLING.get().copied().unwrap_or(DEFAULT_SAMPLING));
    let mut custom_tags: BTreeMap<String, api::CustomTag> = BTreeMap::new();
    let mut reporting = true;
    let mut istio_tags = true;
    for telemetry in &telemetries {
        for tracing in
            telemetry.spec.tracing.iter().filter(|t| side.selected_by(t.r#match.as_ref().and_then(|m| m.mode)))
        {
            if let Some(percentage) = tracing.random_sampling_percentage {
                sampling = percentage;
            }
            if let Some(disabled) = tracing.disable_span_reporting {
                reporting = !disabled;
            }
            if let Some(enabled) = tracing.enable_istio_tags {
                istio_tags = enabled;
            }
            custom_tags.extend(tracing.custom_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    if !reporting {
        return None;
    }
    if custom_sampler {
        sampling = 100.0;
    }
    Some(HcmTracing {
        provider: Some(provider),
        max_path_tag_length: max_tag_length(ctx).map(|value| UInt32Value { value }),
        random_sampling: Some(Percent { value: sampling.clamp(0.0, 100.0) }),
        custom_tags: span_tags(ctx, istio_tags, custom_tags),
        ..Default::default()
    })
}

/// What an HTTP connection manager takes from Telemetry tracing: its tracing config and, when
/// a Telemetry sets `useRequestIdForTraceSampling`, the UUID request id extension saying
/// whether the request id decides sampling (Envoy's default, on).
#[derive(Clone, Debug, Default)]
pub struct HcmTrace {
    pub tracing: Option<HcmTracing>,
    pub request_id: Option<RequestIdExtension>,
}

impl HcmTrace {
    pub fn of(ctx: &Context<'_>, side: Side) -> Self {
        let Some(tracing) = hcm_tracing(ctx, side) else { return Self::default() };
        let by_request_id = applicable(ctx)
            .iter()
            .flat_map(|t| t.spec.tracing.iter())
            .filter(|t| side.selected_by(t.r#match.as_ref().and_then(|m| m.mode)))
            .filter_map(|t| t.use_request_id_for_trace_sampling)
            .next_back();
        let request_id = by_request_id.map(|value| RequestIdExtension {
            typed_config: Some(pack_any(UuidRequestIdConfig {
                use_request_id_for_trace_sampling: Some(envoy_types::pb::google::protobuf::BoolValue { value }),
                ..Default::default()
            })),
        });
        Self { tracing: Some(tracing), request_id }
    }

    pub fn apply(&self, hcm: &mut HttpConnectionManager) {
        hcm.tracing.clone_from(&self.tracing);
        hcm.request_id_extension.clone_from(&self.request_id);
    }
}

/// Istio's own span tags (unless `enableIstioTags: false`), then the Telemetry's custom tags,
/// which win on a name clash; sorted by name.
fn span_tags(ctx: &Context<'_>, istio_tags: bool, custom: BTreeMap<String, api::CustomTag>) -> Vec<CustomTag> {
    let mut tags: BTreeMap<String, CustomTag> = BTreeMap::new();
    if istio_tags {
        let proxy = ctx.proxy;
        let mesh = &ctx.snapshot.mesh;
        let label = |key: &str, default: &str| {
            proxy.labels.get(key).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| default.to_owned())
        };
        let or = |value: &str, default: &str| if value.is_empty() { default.to_owned() } else { value.to_owned() };
        // The mesh id as the injector gives it to proxies: defaultConfig.meshId, else the trust
        // domain.
        let mesh_id = mesh
            .default_config
            .as_ref()
            .and_then(|c| c.mesh_id.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| mesh.effective_trust_domain().to_owned());
        for (tag, value) in [
            ("istio.canonical_revision", label(labels::CANONICAL_REVISION, "latest")),
            ("istio.canonical_service", label(labels::CANONICAL_NAME, "unknown")),
            ("istio.cluster_id", or(&proxy.cluster_id, "unknown")),
            ("istio.mesh_id", or(&mesh_id, "unknown")),
            ("istio.namespace", or(&proxy.namespace, "default")),
        ] {
            let literal = custom_tag::Type::Literal(custom_tag::Literal { value });
            tags.insert(tag.to_owned(), CustomTag { tag: tag.to_owned(), r#type: Some(literal) });
        }
        // What dry-run AuthorizationPolicies would have done, from the RBAC filters' dynamic
        // metadata (see `authz`); empty on requests no dry-run policy saw.
        for (tag, prefix, key) in [
            (
                "istio.authorization.dry_run.allow_policy.name",
                authz::DRY_RUN_ALLOW_PREFIX,
                "shadow_effective_policy_id",
            ),
            ("istio.authorization.dry_run.allow_policy.result", authz::DRY_RUN_ALLOW_PREFIX, "shadow_engine_result"),
            ("istio.authorization.dry_run.deny_policy.name", authz::DRY_RUN_DENY_PREFIX, "shadow_effective_policy_id"),
            ("istio.authorization.dry_run.deny_policy.result", authz::DRY_RUN_DENY_PREFIX, "shadow_engine_result"),
        ] {
            use envoy_types::pb::envoy::r#type::metadata::v3::{
                MetadataKey, MetadataKind, metadata_key::PathSegment, metadata_key::path_segment::Segment,
                metadata_kind,
            };
            let metadata = custom_tag::Type::Metadata(custom_tag::Metadata {
                kind: Some(MetadataKind { kind: Some(metadata_kind::Kind::Request(metadata_kind::Request {})) }),
                metadata_key: Some(MetadataKey {
                    key: authz::HTTP_RBAC.to_owned(),
                    path: vec![PathSegment { segment: Some(Segment::Key(format!("{prefix}{key}"))) }],
                }),
                default_value: String::new(),
            });
            tags.insert(tag.to_owned(), CustomTag { tag: tag.to_owned(), r#type: Some(metadata) });
        }
    }
    for (tag, value) in custom {
        tags.insert(tag.clone(), custom_tag_of(tag, value));
    }
    tags.into_values().collect()
}

fn custom_tag_of(tag: String, value: api::CustomTag) -> CustomTag {
    let r#type = match value {
        api::CustomTag::Literal(l) => custom_tag::Type::Literal(custom_tag::Literal { value: l.value }),
        api::CustomTag::Environment(e) => {
            custom_tag::Type::Environment(custom_tag::Environment { name: e.name, default_value: e.default_value })
        }
        api::CustomTag::Header(h) => {
            custom_tag::Type::RequestHeader(custom_tag::Header { name: h.name, default_value: h.default_value })
        }
        api::CustomTag::Formatter(f) => custom_tag::Type::Value(f.value),
    };
    CustomTag { tag, r#type: Some(r#type) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use prost::Message;
    use rudder_config::mesh::MeshConfig;
    use rudder_config::object::IstioObject;

    use super::*;
    use crate::model::{Proxy, Snapshot};
    use crate::registry::kube::{KubeInputs, build_snapshot};

    const MESH: &str = r#"
accessLogFile: /dev/stdout
extensionProviders:
- name: json-stdout
  envoyFileAccessLog:
    path: /dev/stdout
    logFormat:
      labels: {code: "%RESPONSE_CODE%", id: "%REQ(X-REQUEST-ID)%"}
- name: collector
  zipkin: {service: zipkin.observability.svc.cluster.local, port: 9411}
defaultConfig:
  tracing:
    zipkin: {address: "127.0.0.60:9411"}
    sampling: 5
"#;

    fn snapshot(yaml: &str) -> Snapshot {
        let mut inputs = KubeInputs::default();
        if !yaml.trim().is_empty() {
            let loads = rudder_config::load::load_str("telemetry.yaml", yaml).unwrap();
            assert!(loads.problems.is_empty(), "{:?}", loads.problems);
            for loaded in loads.objects {
                match loaded.object {
                    IstioObject::Telemetry(o) => inputs.telemetries.push(Arc::new(*o)),
                    IstioObject::ServiceEntry(o) => inputs.service_entries.push(Arc::new(*o)),
                    other => panic!("unexpected {}", other.kind()),
                }
            }
        }
        let mesh = rudder_config::mesh::apply_yaml(MESH, &MeshConfig::default()).unwrap();
        build_snapshot(&inputs, &mesh)
    }

    fn proxy(namespace: &str, labels: &[(&str, &str)]) -> Proxy {
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
        let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::Value::Object(labels))]);
        let id = format!("sidecar~10.244.1.9~pod.{namespace}~{namespace}.svc.cluster.local");
        Proxy::from_node(&id, &meta).unwrap()
    }

    /// Per log: `file:<path>:text|json` or `stats:<record type>:<metric names>`.
    fn describe(logs: &[AccessLog]) -> Vec<String> {
        logs.iter()
            .map(|log| {
                let Some(ConfigType::TypedConfig(any)) = &log.config_type else { panic!("untyped") };
                if log.name == STATS_ACCESS_LOG {
                    let config = StatsLog::decode(any.value.as_slice()).unwrap();
                    let Some(AccessLogFilter { filter_specifier: Some(FilterSpecifier::LogTypeFilter(f)) }) =
                        &log.filter
                    else {
                        panic!("stats log without a type filter")
                    };
                    let names: Vec<String> = config
                        .counters
                        .iter()
                        .filter_map(|c| c.stat.as_ref())
                        .chain(config.histograms.iter().filter_map(|h| h.stat.as_ref()))
                        .map(|s| s.name.clone())
                        .collect();
                    format!("stats:{}:{}", f.types[0], names.join(","))
                } else {
                    let file = FileAccessLog::decode(any.value.as_slice()).unwrap();
                    let json = format!("{file:?}").contains("JsonFormat");
                    format!("file:{}:{}", file.path, if json { "json" } else { "text" })
                }
            })
            .collect()
    }

    fn files(logs: &[AccessLog]) -> Vec<String> {
        describe(logs).into_iter().filter(|d| d.starts_with("file:")).collect()
    }

    fn logs(yaml: &str, namespace: &str, labels: &[(&str, &str)], side: Side) -> Vec<AccessLog> {
        let snap = snapshot(yaml);
        let p = proxy(namespace, labels);
        access_logs(&Context::new(&snap, &p), side, Some("httpbin.apps.svc.cluster.local"))
    }

    const WORKLOAD_RULES: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet-v1, namespace: apps}
spec:
  selector: {matchLabels: {version: v1}}
  accessLogging: [{disabled: true}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: json-v2, namespace: apps}
spec:
  selector: {matchLabels: {version: v2}}
  accessLogging: [{providers: [{name: json-stdout}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: server-errors, namespace: apps}
spec:
  selector: {matchLabels: {version: v3}}
  accessLogging:
  - match: {mode: SERVER}
    filter: {expression: "response.code >= 500"}
  - match: {mode: CLIENT}
    disabled: true
"#;

    #[test]
    fn access_logs_follow_the_most_specific_telemetry() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Side, &'a [&'a str]);
        let cases: [Case<'_>; 7] = [
            ("mesh file, no Telemetry", &[("version", "v0")], Side::Client, &["file:/dev/stdout:text"]),
            ("workload disabled", &[("version", "v1")], Side::Server, &[]),
            ("workload disabled, client too", &[("version", "v1")], Side::Client, &[]),
            ("named provider replaces the mesh file", &[("version", "v2")], Side::Server, &["file:/dev/stdout:json"]),
            ("server filtered", &[("version", "v3")], Side::Server, &["file:/dev/stdout:text"]),
            ("client disabled", &[("version", "v3")], Side::Client, &[]),
            ("other namespace untouched", &[("version", "v1")], Side::Client, &["file:/dev/stdout:text"]),
        ];
        for (what, labels, side, want) in cases {
            let namespace = if what.starts_with("other") { "other" } else { "apps" };
            let got = files(&logs(WORKLOAD_RULES, namespace, labels, side));
            assert_eq!(got, want, "{what}");
        }
        // The filter is the CEL expression, after the skip of tcp_proxy's connect record.
        let filtered = logs(WORKLOAD_RULES, "apps", &[("version", "v3")], Side::Server);
        let Some(AccessLogFilter { filter_specifier: Some(FilterSpecifier::AndFilter(and)) }) = &filtered[0].filter
        else {
            panic!("no AND filter: {:?}", filtered[0].filter)
        };
        assert_eq!(and.filters.len(), 2);
        assert!(format!("{:?}", and.filters[1]).contains(CEL_FILTER));
    }

    #[test]
    fn a_namespace_telemetry_is_overridden_by_a_workload_one() {
        let yaml = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs-off, namespace: apps}
spec:
  accessLogging: [{disabled: true}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: on-for-v2, namespace: apps}
spec:
  selector: {matchLabels: {version: v2}}
  accessLogging: [{providers: [{name: envoy}]}]
"#;
        assert!(files(&logs(yaml, "apps", &[("version", "v1")], Side::Client)).is_empty());
        assert_eq!(files(&logs(yaml, "apps", &[("version", "v2")], Side::Client)), ["file:/dev/stdout:text"]);
    }

    #[test]
    fn mesh_metrics_are_on_by_default_and_follow_overrides() {
        let defaults = describe(&logs("", "apps", &[], Side::Server));
        let http = "stats:6:requests_total,request_duration_milliseconds,request_bytes,response_bytes";
        let opened = "stats:1:tcp_connections_opened_total";
        let closed = "stats:3:tcp_connections_closed_total,tcp_sent_bytes_total,tcp_received_bytes_total";
        assert_eq!(defaults, ["file:/dev/stdout:text", opened, closed, http]);
        let yaml = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      disabled: true
    - match: {metric: ALL_METRICS}
      tagOverrides:
        response_flags: {operation: REMOVE}
        source_principal: {operation: REMOVE}
        request_host: {value: request.host}
"#;
        let server = describe(&logs(yaml, "apps", &[], Side::Server));
        assert!(
            server.contains(&"stats:6:request_duration_milliseconds,request_bytes,response_bytes".to_owned()),
            "{server:?}"
        );
        let client = logs(yaml, "apps", &[], Side::Client);
        assert!(describe(&client).contains(&http.to_owned()));
        let stats = client.iter().find(|l| describe(std::slice::from_ref(l))[0].starts_with("stats:6")).unwrap();
        let Some(ConfigType::TypedConfig(any)) = &stats.config_type else { panic!() };
        let config = StatsLog::decode(any.value.as_slice()).unwrap();
        let tags: BTreeMap<String, String> = config.counters[0]
            .stat
            .as_ref()
            .unwrap()
            .tags
            .iter()
            .map(|t| (t.name.clone(), t.value_format.clone()))
            .collect();
        // The agent still reads response_flags; the removals travel in one tag.
        assert_eq!(tags[tags::RESPONSE_FLAGS], "%RESPONSE_FLAGS%");
        assert_eq!(tags[tags::REMOVED], "response_flags,source_principal");
        assert_eq!(tags["request_host"], "%CEL(request.host)%");
        assert_eq!(tags[tags::PEER_WORKLOAD], "%UPSTREAM_METADATA(istio:workload)%");
        assert_eq!(tags[tags::DESTINATION_SERVICE], "%UPSTREAM_CLUSTER_RAW%");
    }

    #[test]
    fn span_tags_istio_ones_formatters_and_overrides() {
        let telemetry = |tracing: &str| {
            format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: apps}}\nspec:\n  tracing:\n  - {tracing}\n"
            )
        };
        let literal = |v: &str| custom_tag::Type::Literal(custom_tag::Literal { value: v.into() });
        let dry_run = |prefix: &str, key: &str| {
            use envoy_types::pb::envoy::r#type::metadata::v3::{
                MetadataKey, MetadataKind, metadata_key::PathSegment, metadata_key::path_segment::Segment,
                metadata_kind,
            };
            custom_tag::Type::Metadata(custom_tag::Metadata {
                kind: Some(MetadataKind { kind: Some(metadata_kind::Kind::Request(metadata_kind::Request {})) }),
                metadata_key: Some(MetadataKey {
                    key: "envoy.filters.http.rbac".into(),
                    path: vec![PathSegment { segment: Some(Segment::Key(format!("istio_dry_run_{prefix}_{key}"))) }],
                }),
                default_value: String::new(),
            })
        };
        let istio = |service: &str, revision: &str| {
            vec![
                ("istio.authorization.dry_run.allow_policy.name", dry_run("allow", "shadow_effective_policy_id")),
                ("istio.authorization.dry_run.allow_policy.result", dry_run("allow", "shadow_engine_result")),
                ("istio.authorization.dry_run.deny_policy.name", dry_run("deny", "shadow_effective_policy_id")),
                ("istio.authorization.dry_run.deny_policy.result", dry_run("deny", "shadow_engine_result")),
                ("istio.canonical_revision", literal(revision)),
                ("istio.canonical_service", literal(service)),
                ("istio.cluster_id", literal("unknown")),
                ("istio.mesh_id", literal("cluster.local")),
                ("istio.namespace", literal("apps")),
            ]
        };
        let labelled = [(labels::CANONICAL_NAME, "reviews"), (labels::CANONICAL_REVISION, "v2")];
        type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], Vec<(&'a str, custom_tag::Type)>);
        let cases: Vec<Case> = vec![
            ("defaults: Istio's tags", telemetry("randomSamplingPercentage: 10"), &[], istio("unknown", "latest")),
            ("canonical labels", telemetry("randomSamplingPercentage: 10"), &labelled, istio("reviews", "v2")),
            ("turned off", telemetry("enableIstioTags: false"), &labelled, vec![]),
            (
                "formatter, and a custom tag over an Istio one",
                telemetry(
                    r#"{enableIstioTags: true, customTags: {route: {formatter: {value: "%ROUTE_NAME%"}}, istio.namespace: {literal: {value: mine}}}}"#,
                ),
                &[],
                {
                    let mut tags = istio("unknown", "latest");
                    tags[8].1 = literal("mine");
                    tags.push(("route", custom_tag::Type::Value("%ROUTE_NAME%".into())));
                    tags
                },
            ),
        ];
        for (name, yaml, proxy_labels, want) in cases {
            let snap = snapshot(&yaml);
            let p = proxy("apps", proxy_labels);
            let tracing = hcm_tracing(&Context::new(&snap, &p), Side::Client).unwrap();
            let got: Vec<(String, Option<custom_tag::Type>)> =
                tracing.custom_tags.into_iter().map(|t| (t.tag, t.r#type)).collect();
            let want: Vec<(String, Option<custom_tag::Type>)> =
                want.into_iter().map(|(t, v)| (t.to_owned(), Some(v))).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn tracing_from_the_mesh_and_from_telemetry() {
        let snap = snapshot("");
        let p = proxy("apps", &[]);
        let ctx = Context::new(&snap, &p);
        let legacy = collector(&ctx).unwrap();
        assert_eq!(legacy, Collector { cluster: ZIPKIN_CLUSTER.into(), address: Some(("127.0.0.60".into(), 9411)) });
        let tracing = hcm_tracing(&ctx, Side::Client).unwrap();
        assert_eq!(tracing.random_sampling, Some(Percent { value: 5.0 }));
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zipkin, namespace: observability}
spec:
  hosts: [zipkin.observability.svc.cluster.local]
  ports: [{number: 9411, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.9}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: collector}]
    randomSamplingPercentage: 100
    customTags:
      team: {literal: {value: payments}}
      user: {header: {name: x-user, defaultValue: none}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: apps}
spec:
  selector: {matchLabels: {app: quiet}}
  tracing: [{disableSpanReporting: true}]
"#;
        let snap = snapshot(yaml);
        let ctx = Context::new(&snap, &p);
        assert_eq!(
            collector(&ctx).unwrap(),
            Collector { cluster: "outbound|9411||zipkin.observability.svc.cluster.local".into(), address: None }
        );
        let tracing = hcm_tracing(&ctx, Side::Server).unwrap();
        assert_eq!(tracing.random_sampling, Some(Percent { value: 100.0 }));
        let tags: Vec<&str> = tracing.custom_tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(
            tags,
            [
                "istio.authorization.dry_run.allow_policy.name",
                "istio.authorization.dry_run.allow_policy.result",
                "istio.authorization.dry_run.deny_policy.name",
                "istio.authorization.dry_run.deny_policy.result",
                "istio.canonical_revision",
                "istio.canonical_service",
                "istio.cluster_id",
                "istio.mesh_id",
                "istio.namespace",
                "team",
                "user"
            ]
        );
        let quiet = proxy("apps", &[("app", "quiet")]);
        assert!(hcm_tracing(&Context::new(&snap, &quiet), Side::Client).is_none());
        let mut off = snapshot("");
        off.mesh.enable_tracing = Some(false);
        assert!(collector(&Context::new(&off, &p)).is_none());
        // Istio's default collector where none is installed: nothing to trace to, no DNS
        // cluster; a name outside the cluster is looked up.
        let at = |address: &str| {
            let mut snap = snapshot("");
            let tracing = serde_json::json!({"zipkin": {"address": address}});
            snap.mesh.default_config.as_mut().unwrap().tracing = Some(serde_json::from_value(tracing).unwrap());
            collector(&Context::new(&snap, &p))
        };
        assert_eq!(at("zipkin.istio-system:9411"), None);
        assert_eq!(at("zipkin.istio-system.svc.cluster.local:9411"), None);
        assert_eq!(
            at("traces.example.com:9411"),
            Some(Collector { cluster: ZIPKIN_CLUSTER.into(), address: Some(("traces.example.com".into(), 9411)) })
        );
    }

    #[test]
    fn grpc_logs_go_to_their_kind_of_chain() {
        let log = |name: &str| typed_log(name, pack_any(StatsLog::default()));
        let logs = [log(HTTP_GRPC_ACCESS_LOG), log(TCP_GRPC_ACCESS_LOG), log(OTEL_ACCESS_LOG), log(STATS_ACCESS_LOG)];
        let names = |kind| logs_for(&logs, kind).into_iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(names(Chain::Http), [HTTP_GRPC_ACCESS_LOG, OTEL_ACCESS_LOG, STATS_ACCESS_LOG]);
        assert_eq!(names(Chain::Tcp), [TCP_GRPC_ACCESS_LOG, OTEL_ACCESS_LOG, STATS_ACCESS_LOG]);
    }

    #[test]
    fn request_id_sampling_follows_the_telemetry() {
        let p = proxy("apps", &[]);
        let request_id = |yaml: &str| {
            let snap = snapshot(yaml);
            let trace = HcmTrace::of(&Context::new(&snap, &p), Side::Client);
            assert!(trace.tracing.is_some());
            trace.request_id.map(|r| {
                let config =
                    <UuidRequestIdConfig as prost::Message>::decode(r.typed_config.unwrap().value.as_slice()).unwrap();
                config.use_request_id_for_trace_sampling.map(|b| b.value)
            })
        };
        // Unset: Envoy's default (the request id decides) without an extension.
        assert_eq!(request_id(""), None);
        let telemetry = |value: bool| {
            format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh, namespace: istio-system}}\n\
                 spec:\n  tracing: [{{useRequestIdForTraceSampling: {value}}}]\n"
            )
        };
        assert_eq!(request_id(&telemetry(false)), Some(Some(false)));
        assert_eq!(request_id(&telemetry(true)), Some(Some(true)));
    }

    #[test]
    fn a_telemetry_attaches_to_the_gateway_api_gateway_it_targets() {
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: gw, namespace: apps}\n\
                    spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: public}]\n  \
                    tracing: [{disableSpanReporting: true}]\n";
        let snap = snapshot(yaml);
        let public = proxy("apps", &[("gateway.networking.k8s.io/gateway-name", "public")]);
        let other = proxy("apps", &[("gateway.networking.k8s.io/gateway-name", "internal")]);
        assert!(hcm_tracing(&Context::new(&snap, &public), Side::Client).is_none(), "the targeted gateway");
        assert!(hcm_tracing(&Context::new(&snap, &other), Side::Client).is_some(), "another gateway");
    }

    #[test]
    fn tracing_service_name_follows_the_mesh_setting() {
        type Case<'a> = (Option<TracingServiceName>, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case<'_>; 6] = [
            (None, &[("app", "reviews")], "reviews.apps"),
            (None, &[], "istio-proxy.apps"),
            (Some(TracingServiceName::CanonicalNameOnly), &[(labels::CANONICAL_NAME, "reviews-v2")], "reviews-v2"),
            (Some(TracingServiceName::CanonicalNameOnly), &[("app", "reviews")], "reviews"),
            (
                Some(TracingServiceName::CanonicalNameAndNamespace),
                &[(labels::CANONICAL_NAME, "reviews-v2"), ("app", "reviews")],
                "reviews-v2.apps",
            ),
            (Some(TracingServiceName::AppLabelAndNamespace), &[(labels::CANONICAL_NAME, "c")], "istio-proxy.apps"),
        ];
        for (mode, proxy_labels, want) in cases {
            let mut snap = snapshot("");
            snap.mesh.default_config.get_or_insert_default().tracing_service_name = mode;
            let p = proxy("apps", proxy_labels);
            assert_eq!(tracing_service_name(&Context::new(&snap, &p)), want, "{mode:?} {proxy_labels:?}");
        }
    }
}
