//! `telemetry.istio.io`: Telemetry.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, IstioStatus, PolicyTargetReference, WorkloadSelector};
use crate::security::validate_attachment;
use crate::validate::{FieldPath, Report, Validate, checks};

/// How workloads produce traces, metrics and access logs.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "telemetry.istio.io",
    version = "v1",
    kind = "Telemetry",
    plural = "telemetries",
    namespaced,
    status = "IstioStatus",
    shortname = "telemetry",
    category = "istio-io",
    category = "telemetry-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// Workloads the settings apply to; all in the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource the settings attach to, instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources the settings attach to, instead of a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Tracing settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    /// Metrics settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// Access log settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

crate::proto_enum! {
    /// `WorkloadMode`: which side of the traffic a setting applies to.
    pub enum WorkloadMode {
        ClientAndServer = 0 => "CLIENT_AND_SERVER",
        Client = 1 => "CLIENT",
        Server = 2 => "SERVER",
    }
}

/// A telemetry provider named in the mesh config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// Provider name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Which traffic direction the settings apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<TracingSelector>,
    /// Providers to report spans to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Share of requests to trace when no decision was made upstream, 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    /// Stop reporting spans (context is still propagated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// Extra tags added to every span, by tag name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Let the request id decide whether a request is sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Add Istio's own tags (canonical service and revision, namespace, mesh and cluster id)
    /// to spans; on when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// Where a custom span tag takes its value from: exactly one of the four.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CustomTag {
    Literal(LiteralTag),
    Environment(EnvironmentTag),
    Header(HeaderTag),
    Formatter(FormatterTag),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FormatterTag {
    /// An Envoy access-log format string, e.g. `%REQ(x-user)%/%RESPONSE_CODE%`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiteralTag {
    /// The fixed tag value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentTag {
    /// Environment variable of the proxy to read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Value used when the variable is unset.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderTag {
    /// Request header to read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Value used when the header is absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// Providers the settings apply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Changes to metric generation, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    /// How often metrics are reported (for providers that push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    /// Metrics and direction the override applies to; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<MetricSelector>,
    /// Turn the selected metrics off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Changes to metric labels, by label name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// Selects metrics: one of `metric` or `customMetric`, plus a direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    /// Any other metric, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

crate::proto_enum! {
    /// `MetricSelector.IstioMetric`.
    pub enum IstioMetric {
        AllMetrics = 0 => "ALL_METRICS",
        RequestCount = 1 => "REQUEST_COUNT",
        RequestDuration = 2 => "REQUEST_DURATION",
        RequestSize = 3 => "REQUEST_SIZE",
        ResponseSize = 4 => "RESPONSE_SIZE",
        TcpOpenedConnections = 5 => "TCP_OPENED_CONNECTIONS",
        TcpClosedConnections = 6 => "TCP_CLOSED_CONNECTIONS",
        TcpSentBytes = 7 => "TCP_SENT_BYTES",
        TcpReceivedBytes = 8 => "TCP_RECEIVED_BYTES",
        GrpcRequestMessages = 9 => "GRPC_REQUEST_MESSAGES",
        GrpcResponseMessages = 10 => "GRPC_RESPONSE_MESSAGES",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// Set (UPSERT, the default) or drop (REMOVE) the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// CEL expression giving the label value; only with UPSERT.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

crate::proto_enum! {
    /// `MetricsOverrides.TagOverride.Operation`.
    pub enum TagOperation {
        Upsert = 0 => "UPSERT",
        Remove = 1 => "REMOVE",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Which traffic direction the settings apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<LogSelector>,
    /// Providers to send logs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Turn access logs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Only log requests this filter accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<LogFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFilter {
    /// CEL expression over request attributes; true means log.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expression: String,
}

impl Validate for Telemetry {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        validate_attachment(spec.selector.as_ref(), spec.target_ref.as_ref(), &spec.target_refs, report);
        if spec.tracing.len() > 1 {
            report.warning(&at.field("tracing"), "only one tracing entry is supported; the others are ignored");
        }
        for (i, tracing) in spec.tracing.iter().enumerate() {
            validate_tracing(tracing, &at.field("tracing").index(i), report);
        }
        for (i, metrics) in spec.metrics.iter().enumerate() {
            validate_metrics(metrics, &at.field("metrics").index(i), report);
        }
        for (i, logging) in spec.access_logging.iter().enumerate() {
            let here = at.field("accessLogging").index(i);
            validate_providers(&logging.providers, &here.field("providers"), report);
            if let Some(filter) = &logging.filter
                && filter.expression.trim().is_empty()
            {
                report.error(&here.field("filter").field("expression"), "filter expression must not be empty");
            }
        }
    }
}

fn validate_providers(providers: &[ProviderRef], at: &FieldPath, report: &mut Report) {
    for (i, provider) in providers.iter().enumerate() {
        if provider.name.is_empty() {
            report.error(&at.index(i).field("name"), "provider name must not be empty");
        }
    }
}

fn validate_tracing(tracing: &Tracing, at: &FieldPath, report: &mut Report) {
    let providers = at.field("providers");
    if tracing.providers.len() > 1 {
        report.warning(&providers, "only one tracing provider is supported; the others are ignored");
    }
    validate_providers(&tracing.providers, &providers, report);
    if let Some(percentage) = tracing.random_sampling_percentage {
        report.check(&at.field("randomSamplingPercentage"), checks::percentage(percentage));
    }
    let tags = at.field("customTags");
    for (name, tag) in &tracing.custom_tags {
        let here = tags.key(name);
        if name.is_empty() {
            report.error(&here, "tag name must not be empty");
        }
        match tag {
            CustomTag::Literal(literal) if literal.value.is_empty() => {
                report.error(&here.field("literal").field("value"), "literal tag value must not be empty")
            }
            CustomTag::Environment(env) if env.name.is_empty() => {
                report.error(&here.field("environment").field("name"), "environment variable name must not be empty")
            }
            CustomTag::Header(header) if header.name.is_empty() => {
                report.error(&here.field("header").field("name"), "header name must not be empty")
            }
            CustomTag::Formatter(formatter) => {
                let at = here.field("formatter").field("value");
                if formatter.value.is_empty() {
                    report.error(&at, "formatter value must not be empty");
                } else {
                    report.check(&at, format_string(&formatter.value));
                }
            }
            CustomTag::Literal(_) | CustomTag::Environment(_) | CustomTag::Header(_) => {}
        }
    }
}

/// An Envoy substitution format string: text with `%COMMAND%`, `%COMMAND(args)%` or
/// `%COMMAND(args):LENGTH%` commands. Only the syntax is checked (Envoy knows the commands).
fn format_string(value: &str) -> Result<(), String> {
    static FORMAT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^(?s:[^%]|%[A-Z][A-Z0-9_]*(\(.*?\))?(:[0-9]+)?%)*$").expect("valid regex")
    });
    if FORMAT.is_match(value) {
        Ok(())
    } else {
        Err(format!(
            "format {value:?} is invalid: every % must open a command closed by %, e.g. %REQ(x-user)% or %RESPONSE_CODE%"
        ))
    }
}

fn validate_metrics(metrics: &Metrics, at: &FieldPath, report: &mut Report) {
    validate_providers(&metrics.providers, &at.field("providers"), report);
    for (j, o) in metrics.overrides.iter().enumerate() {
        let here = at.field("overrides").index(j);
        if let Some(selector) = &o.r#match {
            let m = here.field("match");
            if selector.metric.is_some() && selector.custom_metric.is_some() {
                report.error(&m, "set only one of metric and customMetric");
            }
            if selector.custom_metric.as_deref() == Some("") {
                report.error(&m.field("customMetric"), "customMetric must not be empty");
            }
        }
        let tags = here.field("tagOverrides");
        for (name, tag) in &o.tag_overrides {
            let t = tags.key(name);
            if name.is_empty() {
                report.warning(&t, "tag name is empty");
            }
            match tag.operation.unwrap_or_default() {
                TagOperation::Upsert if tag.value.is_empty() => {
                    report.error(&t.field("value"), "value is required when operation is UPSERT")
                }
                TagOperation::Remove if !tag.value.is_empty() => {
                    report.error(&t.field("value"), "value is only allowed when operation is UPSERT")
                }
                TagOperation::Upsert | TagOperation::Remove => {}
            }
        }
    }
    if let Some(interval) = &metrics.reporting_interval {
        report.check(&at.field("reportingInterval"), checks::duration(interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::structural_problems;
    use kube::CustomResourceExt;

    #[test]
    fn crd_is_structural_and_named_like_upstream() {
        let crd = Telemetry::crd();
        assert_eq!(structural_problems(&crd), Vec::<String>::new());
        assert_eq!(crd.spec.names.plural, "telemetries");
        assert_eq!(crd.spec.names.short_names, Some(vec!["telemetry".to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["istio-io".to_owned(), "telemetry-istio-io".to_owned()]));
    }

    #[test]
    fn custom_tags_take_exactly_one_source() {
        let tag: CustomTag =
            serde_json::from_str(r#"{"header":{"name":"x-user","defaultValue":"none"}}"#).expect("one source");
        assert_eq!(tag, CustomTag::Header(HeaderTag { name: "x-user".into(), default_value: "none".into() }));
        assert!(serde_json::from_str::<CustomTag>(r#"{"literal":{"value":"a"},"header":{"name":"b"}}"#).is_err());
    }

    #[test]
    fn tag_override_values_follow_the_operation() {
        let spec: TelemetrySpec = serde_json::from_value(serde_json::json!({
            "metrics": [{"overrides": [{"tagOverrides": {
                "a": {"value": "request.host"},
                "b": {},
                "c": {"operation": "REMOVE"},
                "d": {"operation": "REMOVE", "value": "x"},
            }}]}]
        }))
        .expect("decodes");
        let telemetry = Telemetry::new("t", spec);
        let got: Vec<String> = telemetry.report().items.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "spec.metrics[0].overrides[0].tagOverrides[b].value: value is required when operation is UPSERT",
                "spec.metrics[0].overrides[0].tagOverrides[d].value: value is only allowed when operation is UPSERT",
            ]
        );
    }
}
