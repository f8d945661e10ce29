//! The agent's metrics endpoint (`:15020/stats/prometheus`, as pilot-agent's): Istio's
//! standard `istio_*` series, made from the stats Envoy counts for discovery's stats access
//! logger ([`crate::translate::telemetry`]), then Envoy's own stats, then the application's
//! metrics when its `prometheus.io` annotations ask for them (the injector moves them into
//! `ISTIO_PROMETHEUS_ANNOTATIONS`).
//!
//! Envoy knows, per request, the peer (its workload and certificate), the upstream cluster and
//! the outcome; it does not know which side it is on or who its own workload is. [`translate`]
//! adds that: on the client side the proxy's workload is the source and the peer the
//! destination, on the server side the other way round. Pure: text in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::translate::telemetry::tags;

/// Who the proxy's workload is, as the labels of its metrics say it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// Canonical service (`service.istio.io/canonical-name`, else `app`).
    pub canonical_service: String,
    /// Canonical revision (`service.istio.io/canonical-revision`, else `version`).
    pub canonical_revision: String,
    /// `app` and `version` labels.
    pub app: String,
    pub version: String,
    /// SPIFFE id of its certificate, when it has one.
    pub principal: Option<String>,
    pub cluster: String,
}

impl Workload {
    /// From the pod's labels: canonical names as Istio derives them (label, else app/version,
    /// else the workload name and `latest`).
    pub fn from_labels(name: &str, namespace: &str, labels: &BTreeMap<String, String>, cluster: &str) -> Self {
        let label = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            canonical_service: label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
                .unwrap_or_else(|| name.to_owned()),
            canonical_revision: label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
                .unwrap_or_else(|| "latest".to_owned()),
            app: label(&["app"]).unwrap_or_default(),
            version: label(&["version"]).unwrap_or_default(),
            principal: None,
            cluster: cluster.to_owned(),
        }
    }

    /// The value a client sends servers about itself (the layout of the endpoint metadata
    /// `istio.workload`: `name;namespace;canonical service;canonical revision;cluster`).
    pub fn descriptor(&self) -> String {
        format!(
            "{};{};{};{};{}",
            self.name, self.namespace, self.canonical_service, self.canonical_revision, self.cluster
        )
    }
}

/// A peer as Envoy's tags describe it.
#[derive(Debug, Default)]
struct Peer {
    workload: String,
    namespace: String,
    canonical_service: String,
    canonical_revision: String,
    cluster: String,
    principal: String,
}

const UNKNOWN: &str = "unknown";

fn known(value: &str) -> Option<&str> {
    (!value.is_empty() && value != "-").then_some(value)
}

impl Peer {
    fn of(descriptor: &str, principal: &str) -> Self {
        let mut parts = known(descriptor).unwrap_or_default().split(';');
        let mut next = || parts.next().and_then(known).unwrap_or(UNKNOWN).to_owned();
        Self {
            workload: next(),
            namespace: next(),
            canonical_service: next(),
            canonical_revision: next(),
            cluster: next(),
            principal: known(principal).unwrap_or(UNKNOWN).to_owned(),
        }
    }
}

/// Istio's labels for one series of Envoy's, in Istio's order; `None` for a series that is
/// not one of the mesh metrics' (no reporter).
fn istio_labels(envoy: &[(String, String)], own: &Workload, tcp: bool) -> Option<Vec<(String, String)>> {
    let tag = |name: &str| envoy.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let reporter = tag(tags::REPORTER)?;
    let peer = Peer::of(tag(tags::PEER_WORKLOAD).unwrap_or_default(), tag(tags::PEER_PRINCIPAL).unwrap_or_default());
    let own_principal = own.principal.clone().unwrap_or_else(|| UNKNOWN.to_owned());
    let or_unknown = |s: &str| if s.is_empty() { UNKNOWN.to_owned() } else { s.to_owned() };
    let own_side = |side: &str| -> Vec<(String, String)> {
        vec![
            (format!("{side}_workload"), or_unknown(&own.name)),
            (format!("{side}_workload_namespace"), or_unknown(&own.namespace)),
            (format!("{side}_principal"), own_principal.clone()),
            (format!("{side}_app"), or_unknown(&own.app)),
            (format!("{side}_version"), or_unknown(&own.version)),
            (format!("{side}_canonical_service"), or_unknown(&own.canonical_service)),
            (format!("{side}_canonical_revision"), or_unknown(&own.canonical_revision)),
            (format!("{side}_cluster"), or_unknown(&own.cluster)),
        ]
    };
    let peer_side = |side: &str| -> Vec<(String, String)> {
        vec![
            (format!("{side}_workload"), peer.workload.clone()),
            (format!("{side}_workload_namespace"), peer.namespace.clone()),
            (format!("{side}_principal"), peer.principal.clone()),
            // The peer's app and version labels are not known; its canonical names stand in.
            (format!("{side}_app"), peer.canonical_service.clone()),
            (format!("{side}_version"), peer.canonical_revision.clone()),
            (format!("{side}_canonical_service"), peer.canonical_service.clone()),
            (format!("{side}_canonical_revision"), peer.canonical_revision.clone()),
            (format!("{side}_cluster"), peer.cluster.clone()),
        ]
    };
    let (source, destination) = match reporter {
        "destination" => (peer_side("source"), own_side("destination")),
        _ => (own_side("source"), peer_side("destination")),
    };
    let (service, service_name, service_namespace) =
        destination_service(tag(tags::DESTINATION_SERVICE).unwrap_or_default());
    let security = match reporter {
        "destination" if known(tag(tags::PEER_PRINCIPAL).unwrap_or_default()).is_some() => "mutual_tls",
        "destination" => "none",
        _ => UNKNOWN,
    };
    let mut labels = vec![("reporter".to_owned(), reporter.to_owned())];
    labels.extend(source);
    labels.extend(destination);
    labels.push(("destination_service".to_owned(), service));
    labels.push(("destination_service_name".to_owned(), service_name));
    labels.push(("destination_service_namespace".to_owned(), service_namespace));
    let grpc = tag(tags::GRPC_RESPONSE_STATUS).and_then(known);
    let protocol = if tcp {
        "tcp"
    } else if grpc.is_some() {
        "grpc"
    } else {
        "http"
    };
    labels.push(("request_protocol".to_owned(), protocol.to_owned()));
    if !tcp {
        labels.push(("response_code".to_owned(), tag(tags::RESPONSE_CODE).and_then(known).unwrap_or("0").to_owned()));
        labels.push(("grpc_response_status".to_owned(), grpc.unwrap_or_default().to_owned()));
    }
    labels.push(("response_flags".to_owned(), tag(tags::RESPONSE_FLAGS).unwrap_or("-").to_owned()));
    labels.push(("connection_security_policy".to_owned(), security.to_owned()));
    // Telemetry tag overrides: Envoy's tags of the same name replace ours (upserts), tags
    // Envoy does not know are added, and removed labels are listed in one tag.
    let reserved = |name: &str| tags::RESERVED.contains(&name) || name == tags::REMOVED;
    for (name, value) in envoy.iter().filter(|(k, _)| !reserved(k)) {
        match labels.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1.clone_from(value),
            None => labels.push((name.clone(), value.clone())),
        }
    }
    for removed in tag(tags::REMOVED).unwrap_or_default().split(',').filter(|r| !r.is_empty()) {
        labels.retain(|(k, _)| k != removed);
    }
    Some(labels)
}

/// `destination_service`, `_name` and `_namespace` from a cluster name
/// (`outbound|<port>|<subset>|<host>`) or a host: a Kubernetes host splits into name and
/// namespace; other hosts are their own name; other clusters (passthrough) are named as such.
fn destination_service(value: &str) -> (String, String, String) {
    let host = match value.split('|').collect::<Vec<_>>().as_slice() {
        [_, _, _, host] => *host,
        _ => value,
    };
    let Some(host) = known(host) else {
        return (UNKNOWN.to_owned(), UNKNOWN.to_owned(), UNKNOWN.to_owned());
    };
    match host.split('.').collect::<Vec<_>>().as_slice() {
        [name, namespace, "svc", ..] => (host.to_owned(), (*name).to_owned(), (*namespace).to_owned()),
        _ => (host.to_owned(), host.to_owned(), UNKNOWN.to_owned()),
    }
}

/// Label pairs in order.
pub type Labels = Vec<(String, String)>;

/// One family of output series: its type and, per label set, its samples (suffix and `le`)
/// in the order Envoy wrote them, equal label sets summed.
#[derive(Default)]
struct Family {
    kind: String,
    series: BTreeMap<Labels, Vec<(String, f64)>>,
}

/// Envoy's Prometheus text → `istio_*` series for `own`, then the rest of Envoy's stats as
/// they were.
pub fn translate(envoy_text: &str, own: &Workload) -> String {
    const PREFIX: &str = "envoy_istio_";
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut rest = String::with_capacity(envoy_text.len());
    let mut current: Option<String> = None;
    for line in envoy_text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').unwrap_or((typed, "untyped"));
            if let Some(metric) = name.strip_prefix(PREFIX) {
                let family = format!("istio_{metric}");
                families.entry(family.clone()).or_default().kind = kind.to_owned();
                current = Some(family);
                continue;
            }
            current = None;
        }
        let Some(sample) = line.strip_prefix(PREFIX) else {
            if current.is_none() || line.starts_with('#') && !line.starts_with("# TYPE") {
                rest.push_str(line);
                rest.push('\n');
            }
            continue;
        };
        let Some((name, labels, value)) = parse_sample(sample) else { continue };
        let family_name = current.clone().unwrap_or_else(|| format!("istio_{name}"));
        let suffix = format!("istio_{name}").strip_prefix(&family_name).unwrap_or_default().to_owned();
        let (le, labels): (Vec<_>, Vec<_>) = labels.into_iter().partition(|(k, _)| k == "le");
        let tcp = family_name.starts_with("istio_tcp_");
        let Some(mut out_labels) = istio_labels(&labels, own, tcp) else { continue };
        let key = le.first().map(|(_, v)| v.clone());
        let family = families.entry(family_name).or_default();
        out_labels.retain(|(k, _)| k != "le");
        let samples = family.series.entry(out_labels).or_default();
        let id = match &key {
            Some(le) => format!("{suffix}\u{0}{le}"),
            None => suffix,
        };
        match samples.iter_mut().find(|(s, _)| *s == id) {
            Some(slot) => slot.1 += value,
            None => samples.push((id, value)),
        }
    }
    let mut out = String::with_capacity(rest.len() + 4096);
    for (name, family) in &families {
        if family.series.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# TYPE {name} {}", if family.kind.is_empty() { "untyped" } else { &family.kind });
        for (labels, samples) in &family.series {
            for (id, value) in samples {
                let (suffix, le) = match id.split_once('\u{0}') {
                    Some((suffix, le)) => (suffix, Some(le)),
                    None => (id.as_str(), None),
                };
                out.push_str(name);
                out.push_str(suffix);
                out.push('{');
                let all = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(le.map(|le| ("le", le)));
                for (i, (k, v)) in all.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v));
                }
                out.push('}');
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
    }
    out.push_str(&rest);
    out
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One line of Prometheus text, `name{k="v",…} value`, as its parts (label values
/// unescaped); `None` for comments and lines that do not parse.
pub fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name, Vec::new(), value.trim().parse().ok()?));
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        let start = chars.peek()?.0;
        if rest[start..].starts_with('}') {
            let value = rest[start + 1..].trim();
            return Some((name, labels, value.parse().ok()?));
        }
        let eq = rest[start..].find("=\"")? + start;
        let key = rest[start..eq].trim_start_matches(',').to_owned();
        while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
            chars.next();
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key, value));
        if chars.peek().is_some_and(|(_, c)| *c == ',') {
            chars.next();
        }
    }
}

/// Where the application's own metrics are, from `ISTIO_PROMETHEUS_ANNOTATIONS`
/// (`{"scrape":"true","path":"/metrics","port":"8080"}`): `(port, path)`, or `None` when the app
/// did not ask to be scraped.
pub fn app_metrics_target(annotations_json: &str) -> Option<(u16, String)> {
    let value: serde_json::Value = serde_json::from_str(annotations_json).ok()?;
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    if field("scrape").as_deref() != Some("true") {
        return None;
    }
    let port = field("port")?.parse().ok()?;
    let path = field("path").filter(|p| !p.is_empty()).unwrap_or_else(|| "/metrics".to_owned());
    Some((port, if path.starts_with('/') { path } else { format!("/{path}") }))
}

/// What the endpoint merges.
#[derive(Clone, Debug)]
pub struct MetricsSources {
    /// Envoy's admin (`host:port`).
    pub envoy_admin: String,
    pub own: Workload,
    /// The application's metrics (`host:port`, path).
    pub app: Option<(String, String)>,
}

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The merged text: mesh metrics and Envoy's stats (an error when Envoy does not answer),
/// then the app's (left out, with a comment, when it does not).
pub async fn scrape(sources: &MetricsSources) -> Result<String, String> {
    let envoy = super::supervise::local_request(&sources.envoy_admin, "GET", "/stats/prometheus", SCRAPE_TIMEOUT)
        .await
        .map_err(|e| format!("Envoy stats: {e}"))?;
    if envoy.status != 200 {
        return Err(format!("Envoy stats: HTTP {}", envoy.status));
    }
    let mut out = translate(&envoy.body, &sources.own);
    if let Some((authority, path)) = &sources.app {
        match super::supervise::local_request(authority, "GET", path, SCRAPE_TIMEOUT).await {
            Ok(app) if app.status == 200 => {
                out.push_str(&app.body);
                if !app.body.ends_with('\n') {
                    out.push('\n');
                }
            }
            Ok(app) => {
                let _ = writeln!(out, "# application metrics at {authority}{path}: HTTP {}", app.status);
            }
            Err(e) => {
                let _ = writeln!(out, "# application metrics at {authority}{path}: {e}");
            }
        }
    }
    Ok(out)
}

/// `/stats/prometheus`, merged from `sources` on each scrape.
pub fn router(sources: MetricsSources) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let sources = std::sync::Arc::new(sources);
    axum::Router::new().route(
        "/stats/prometheus",
        axum::routing::get(move || {
            let sources = sources.clone();
            async move {
                match scrape(&sources).await {
                    Ok(text) => {
                        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                    }
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
                }
            }
        }),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sleep() -> Workload {
        let labels = [("app".to_owned(), "sleep".to_owned())].into();
        Workload {
            principal: Some("spiffe://cluster.local/ns/apps/sa/sleep".into()),
            ..Workload::from_labels("sleep", "apps", &labels, "Kubernetes")
        }
    }

    fn httpbin() -> Workload {
        let labels = [("app".to_owned(), "httpbin".to_owned()), ("version".to_owned(), "v1".to_owned())].into();
        Workload::from_labels("httpbin-v1", "apps", &labels, "Kubernetes")
    }

    const CLIENT: &str = r#"# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="x"} 7
# TYPE envoy_istio_requests_total counter
envoy_istio_requests_total{reporter="source",peer_workload="httpbin-v1;apps;httpbin;v1;Kubernetes",peer_principal="spiffe://cluster.local/ns/apps/sa/httpbin",destination_service="outbound|8000|v1|httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="200",grpc_response_status="",response_flags="-"} 4
envoy_istio_requests_total{reporter="source",peer_workload="httpbin-v1;apps;httpbin;v1;Kubernetes",peer_principal="spiffe://cluster.local/ns/apps/sa/httpbin",destination_service="outbound|8000|v1|httpbin.apps.svc.cluster.local",request_protocol="HTTP/2",response_code="200",grpc_response_status="",response_flags="-"} 2
envoy_istio_requests_total{reporter="source",peer_workload="-",peer_principal="-",destination_service="outbound|8000||httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="500",grpc_response_status="",response_flags="FI"} 3
# TYPE envoy_istio_request_duration_milliseconds histogram
envoy_istio_request_duration_milliseconds_bucket{reporter="source",peer_workload="-",peer_principal="-",destination_service="outbound|8000||httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="500",grpc_response_status="",response_flags="FI",le="0.5"} 1
envoy_istio_request_duration_milliseconds_bucket{reporter="source",peer_workload="-",peer_principal="-",destination_service="outbound|8000||httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="500",grpc_response_status="",response_flags="FI",le="+Inf"} 3
envoy_istio_request_duration_milliseconds_sum{reporter="source",peer_workload="-",peer_principal="-",destination_service="outbound|8000||httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="500",grpc_response_status="",response_flags="FI"} 2.5
envoy_istio_request_duration_milliseconds_count{reporter="source",peer_workload="-",peer_principal="-",destination_service="outbound|8000||httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="500",grpc_response_status="",response_flags="FI"} 3
"#;

    fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, String)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| {
                let (name_labels, value) = l.rsplit_once(' ').unwrap();
                let (_, labels, _) = parse_sample(&format!("{name_labels} 0")).unwrap();
                (labels.into_iter().collect(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn client_series_name_both_sides_and_merge_protocols() {
        let out = translate(CLIENT, &sleep());
        let requests = series(&out, "istio_requests_total");
        assert_eq!(requests.len(), 2, "{out}");
        let (ok, count) = &requests.iter().find(|(l, _)| l["response_code"] == "200").unwrap();
        assert_eq!(count, "6", "HTTP/1.1 and HTTP/2 are one series: {out}");
        assert_eq!(ok["reporter"], "source");
        assert_eq!(ok["source_workload"], "sleep");
        assert_eq!(ok["source_workload_namespace"], "apps");
        assert_eq!(ok["source_principal"], "spiffe://cluster.local/ns/apps/sa/sleep");
        assert_eq!(ok["source_app"], "sleep");
        assert_eq!(ok["destination_workload"], "httpbin-v1");
        assert_eq!(ok["destination_version"], "v1");
        assert_eq!(ok["destination_principal"], "spiffe://cluster.local/ns/apps/sa/httpbin");
        assert_eq!(ok["destination_service"], "httpbin.apps.svc.cluster.local");
        assert_eq!(ok["destination_service_name"], "httpbin");
        assert_eq!(ok["destination_service_namespace"], "apps");
        assert_eq!(ok["request_protocol"], "http");
        assert_eq!(ok["response_flags"], "-");
        assert_eq!(ok["connection_security_policy"], "unknown");
        let (fault, count) = &requests.iter().find(|(l, _)| l["response_code"] == "500").unwrap();
        assert_eq!(count, "3");
        assert_eq!(fault["response_flags"], "FI");
        assert_eq!(fault["destination_workload"], "unknown");
        // Histograms keep their buckets in order, then sum and count.
        let at = |needle: &str| out.find(needle).unwrap();
        assert!(at("le=\"0.5\"") < at("le=\"+Inf\""));
        assert!(at("istio_request_duration_milliseconds_sum") < at("istio_request_duration_milliseconds_count"));
        // Envoy's own stats pass through; the raw mesh series do not.
        assert!(out.contains("envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"x\"} 7"));
        assert!(!out.contains("envoy_istio_"));
        assert!(out.contains("# TYPE istio_requests_total counter"));
    }

    #[test]
    fn server_side_swaps_roles_and_reads_mtls() {
        let text = r#"# TYPE envoy_istio_requests_total counter
envoy_istio_requests_total{reporter="destination",peer_workload="sleep;apps;sleep;latest;Kubernetes",peer_principal="spiffe://cluster.local/ns/apps/sa/sleep",destination_service="httpbin.apps.svc.cluster.local",request_protocol="HTTP/1.1",response_code="200",grpc_response_status="",response_flags="-"} 5
envoy_istio_requests_total{reporter="destination",peer_workload="-",peer_principal="-",destination_service="-",request_protocol="HTTP/1.1",response_code="200",grpc_response_status="0",response_flags="-"} 1
# TYPE envoy_istio_tcp_connections_opened_total counter
envoy_istio_tcp_connections_opened_total{reporter="destination",peer_workload="-",peer_principal="-",destination_service="-",response_flags="-"} 2
"#;
        let out = translate(text, &httpbin());
        let requests = series(&out, "istio_requests_total");
        let mtls = &requests.iter().find(|(_, v)| v == "5").unwrap().0;
        assert_eq!(mtls["source_workload"], "sleep");
        assert_eq!(mtls["source_principal"], "spiffe://cluster.local/ns/apps/sa/sleep");
        assert_eq!(mtls["destination_workload"], "httpbin-v1");
        assert_eq!(mtls["destination_app"], "httpbin");
        assert_eq!(mtls["destination_canonical_revision"], "v1");
        assert_eq!(mtls["destination_principal"], "unknown");
        assert_eq!(mtls["connection_security_policy"], "mutual_tls");
        let plain = &requests.iter().find(|(_, v)| v == "1").unwrap().0;
        assert_eq!(plain["connection_security_policy"], "none");
        assert_eq!(plain["request_protocol"], "grpc");
        assert_eq!(plain["source_workload"], "unknown");
        let tcp = series(&out, "istio_tcp_connections_opened_total");
        assert_eq!(tcp[0].0["request_protocol"], "tcp");
        assert!(!tcp[0].0.contains_key("response_code"));
    }

    #[test]
    fn tag_overrides_upsert_and_remove() {
        let text = r#"# TYPE envoy_istio_requests_total counter
envoy_istio_requests_total{reporter="source",peer_workload="-",peer_principal="-",destination_service="-",request_protocol="HTTP/1.1",response_code="200",grpc_response_status="",response_flags="-",destination_app="custom",path="/get",rudder_removed_labels="source_principal,response_flags"} 1
"#;
        let out = translate(text, &sleep());
        let (labels, _) = &series(&out, "istio_requests_total")[0];
        assert_eq!(labels["destination_app"], "custom");
        assert_eq!(labels["path"], "/get");
        assert!(!labels.contains_key("source_principal"));
        assert!(!labels.contains_key("response_flags"));
        assert!(!labels.contains_key("rudder_removed_labels"));
    }

    #[test]
    fn label_values_are_escaped_and_unescaped() {
        let (name, labels, value) = parse_sample(r#"m{a="x\"y",b="back\\slash",c="line\nnext"} 1.5"#).unwrap();
        assert_eq!(name, "m");
        assert_eq!(labels[0].1, "x\"y");
        assert_eq!(labels[1].1, "back\\slash");
        assert_eq!(labels[2].1, "line\nnext");
        assert_eq!(value, 1.5);
        assert_eq!(escape("x\"y\\"), "x\\\"y\\\\");
        assert!(parse_sample("m{a=\"unterminated} 1").is_none());
    }

    #[test]
    fn app_annotations() {
        assert_eq!(app_metrics_target(r#"{"scrape":"true","path":"/m","port":"9090"}"#), Some((9090, "/m".to_owned())));
        assert_eq!(app_metrics_target(r#"{"scrape":"true","port":"9090"}"#), Some((9090, "/metrics".to_owned())));
        assert_eq!(app_metrics_target(r#"{"scrape":"false","port":"9090"}"#), None);
        assert_eq!(app_metrics_target("not json"), None);
    }

    #[test]
    fn descriptor_round_trips_through_peer() {
        let own = httpbin();
        let peer = Peer::of(&own.descriptor(), "-");
        assert_eq!(peer.workload, "httpbin-v1");
        assert_eq!(peer.canonical_revision, "v1");
        assert_eq!(peer.cluster, "Kubernetes");
        assert_eq!(peer.principal, "unknown");
    }
}
