//! Istio's standard mesh metrics: the series sidecars and gateways expose (`istio_*`) and the
//! labels they carry, as Istio's dashboards query them. The mesh dashboard in
//! `examples/grafana/` is written against this list, and a test checks it uses nothing else.

/// How a metric is exposed: a counter's name is its series name (Istio's end in `_total`); a
/// histogram's series are `<name>_bucket`, `<name>_sum` and `<name>_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

/// One standard metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandardMetric {
    pub name: &'static str,
    pub kind: MetricKind,
}

const fn counter(name: &'static str) -> StandardMetric {
    StandardMetric { name, kind: MetricKind::Counter }
}

const fn histogram(name: &'static str) -> StandardMetric {
    StandardMetric { name, kind: MetricKind::Histogram }
}

/// HTTP/gRPC requests, their duration and sizes; TCP bytes and connections.
pub const METRICS: [StandardMetric; 8] = [
    counter("istio_requests_total"),
    histogram("istio_request_duration_milliseconds"),
    histogram("istio_request_bytes"),
    histogram("istio_response_bytes"),
    counter("istio_tcp_sent_bytes_total"),
    counter("istio_tcp_received_bytes_total"),
    counter("istio_tcp_connections_opened_total"),
    counter("istio_tcp_connections_closed_total"),
];

/// The standard labels of those metrics.
pub const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "response_flags",
    "grpc_response_status",
    "connection_security_policy",
];

/// Every series name the standard metrics have (histograms as `_bucket`, `_sum`, `_count`).
pub fn series_names() -> Vec<String> {
    METRICS
        .iter()
        .flat_map(|m| match m.kind {
            MetricKind::Counter => vec![m.name.to_owned()],
            MetricKind::Histogram => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", m.name)).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_expand_to_their_three_series() {
        let names = series_names();
        assert_eq!(names.len(), 5 + 3 * 3);
        assert!(names.contains(&"istio_request_duration_milliseconds_bucket".to_owned()));
        assert!(names.contains(&"istio_requests_total".to_owned()));
        assert!(!names.contains(&"istio_request_duration_milliseconds".to_owned()));
    }
}
