//! The Grafana dashboards of `examples/grafana/` are valid dashboards and query only what is
//! exported: the control-plane dashboard the series and labels of Rudder's own registries (as a
//! scrape shows them, `_total` and `_bucket` included), the mesh dashboard Istio's standard
//! metrics and labels ([`rudder_xds::standard_metrics`]).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

fn dashboard(name: &str) -> Value {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names and labels of the samples in OpenMetrics texts.
fn exposed(texts: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut names, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in texts.iter().flat_map(|t| t.lines()).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        names.insert(line[..end].to_owned());
        // `{label="value",…}`: values may hold commas, braces and escaped quotes.
        let mut rest = line[end..].strip_prefix('{').unwrap_or_default();
        while let Some((label, after)) = rest.split_once("=\"") {
            labels.insert(label.trim_start_matches(',').to_owned());
            let mut escaped = false;
            let close = after.char_indices().find(|&(_, c)| {
                let done = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                done
            });
            rest = close.map_or("", |(i, _)| &after[i + 1..]);
            if rest.starts_with('}') {
                break;
            }
        }
    }
    (names, labels)
}

/// Everything Rudder's control plane exports: discovery, its CA and webhook, the operator.
fn control_plane_exposition() -> Vec<String> {
    let operator = rudder_operator::controller::metrics::Metrics::default();
    operator.reconciled(Some(rudder_operator::controller::ErrorClass::Transient), Duration::ZERO);
    vec![
        rudder_xds::server::metrics::Metrics::sample_exposition(),
        rudder_xds::ca_service::CaMetrics::sample_exposition(),
        rudder_webhook::metrics::Metrics::sample_exposition(),
        operator.encode(),
    ]
}

const AGGREGATIONS: [&str; 12] =
    ["sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group"];
const KEYWORDS: [&str; 8] = ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"];
const OPERATORS: [&str; 3] = ["and", "or", "unless"];

/// The metric names and label names a PromQL expression uses (Grafana variables such as
/// `$__rate_interval` and `$namespace` are neither).
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let chars: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        (i, chars.get(i).copied())
    };
    let skip_string = |i: usize| {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Label matchers: `name op "value"`, separated by commas.
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    i = skip_string(i);
                } else if ident_start(chars[i]) {
                    let start = i;
                    while i < chars.len() && ident_char(chars[i]) {
                        i += 1;
                    }
                    labels.insert(chars[start..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            }
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let (after, next) = next_non_space(i);
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str())
                && next == Some('(')
            {
                // A label list.
                i = after + 1;
                while i < chars.len() && chars[i] != ')' {
                    if ident_start(chars[i]) {
                        let start = i;
                        while i < chars.len() && ident_char(chars[i]) {
                            i += 1;
                        }
                        labels.insert(chars[start..i].iter().collect());
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            } else if next == Some('(')
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
                || OPERATORS.contains(&word.as_str())
            {
                // A function, an aggregation or a keyword.
            } else {
                metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    (metrics, labels)
}

#[test]
fn the_promql_reader_finds_metrics_and_labels() {
    let (metrics, labels) = promql_names(
        r#"histogram_quantile(0.99, sum by (le, destination_service) (rate(istio_request_duration_milliseconds_bucket{reporter="$reporter", destination_service=~"a{b}"}[$__rate_interval]))) / sum without(x) (up offset 5m) or vector(0) > bool 1e3"#,
    );
    assert_eq!(metrics, ["istio_request_duration_milliseconds_bucket", "up"].map(String::from).into());
    assert_eq!(labels, ["destination_service", "le", "reporter", "x"].map(String::from).into());
    let (metrics, _) = promql_names("(min(citadel_server_root_cert_expiry_timestamp) - time()) / 86400");
    assert_eq!(metrics, ["citadel_server_root_cert_expiry_timestamp"].map(String::from).into());
}

/// Every PromQL expression of a dashboard: panel targets, and the selectors of `label_values`
/// queries of its variables (with the label they list).
fn expressions(board: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = board["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in board["templating"]["list"].as_array().unwrap() {
        if let Some(query) = var["query"]["query"].as_str() {
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap();
            let (selector, label) = inner.rsplit_once(',').unwrap();
            exprs.push(format!("sum by ({}) ({selector})", label.trim()));
        }
    }
    exprs
}

/// The shape Grafana imports: schema version, a Prometheus data source variable every panel
/// and query uses, unique ids, positions, and targets with expressions.
fn check_structure(name: &str, board: &Value) {
    assert!(board["schemaVersion"].as_u64().is_some_and(|v| v >= 30), "{name}: schemaVersion");
    for key in ["uid", "title"] {
        assert!(board[key].as_str().is_some_and(|s| !s.is_empty()), "{name}: {key}");
    }
    let vars = board["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"),
        "{name}: no Prometheus data source variable"
    );
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for var in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(var["datasource"], datasource, "{name}: variable {}", var["name"]);
    }
    let mut ids = BTreeSet::new();
    for panel in board["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{name}: duplicate id at {title}");
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].is_u64(), "{name}: {title}: gridPos.{key}");
        }
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "{name}: {title} is too wide");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], datasource, "{name}: {title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{name}: {title} has no target");
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{name}: {title}");
            assert!(target["refId"].is_string(), "{name}: {title}");
        }
    }
}

fn check_names(name: &str, board: &Value, metrics: &BTreeSet<String>, labels: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for expr in expressions(board) {
        let (expr_metrics, expr_labels) = promql_names(&expr);
        assert!(!expr_metrics.is_empty(), "{name}: no metric found in {expr}");
        for metric in &expr_metrics {
            assert!(metrics.contains(metric), "{name}: {metric} is not exported (in {expr})");
        }
        for label in &expr_labels {
            assert!(labels.contains(label), "{name}: label {label} is not exported (in {expr})");
        }
        used.extend(expr_metrics);
    }
    used
}

#[test]
fn the_control_plane_dashboard_queries_what_rudder_exports() {
    let board = dashboard("rudder-control-plane-dashboard.json");
    check_structure("control plane", &board);
    let (metrics, mut labels) = exposed(&control_plane_exposition());
    labels.insert("le".into());
    let used = check_names("control plane", &board, &metrics, &labels);
    for wanted in [
        "pilot_xds",
        "pilot_xds_pushes_total",
        "pilot_proxy_convergence_time_bucket",
        "pilot_total_xds_rejects_total",
        "pilot_xds_push_time_bucket",
        "sidecar_injection_requests_total",
        "sidecar_injection_failure_total",
        "citadel_server_csr_count_total",
        "rudder_operator_reconciles_total",
        "rudder_operator_reconcile_duration_seconds_bucket",
    ] {
        assert!(used.contains(wanted), "the control plane dashboard does not show {wanted}");
    }
}

#[test]
fn the_mesh_dashboard_queries_istio_standard_metrics() {
    use rudder_xds::standard_metrics::{LABELS, METRICS, MetricKind, series_names};
    let board = dashboard("istio-mesh-dashboard.json");
    check_structure("mesh", &board);
    let metrics: BTreeSet<String> = series_names().into_iter().collect();
    let labels: BTreeSet<String> = LABELS.iter().map(|l| (*l).to_owned()).chain(["le".to_owned()]).collect();
    let used = check_names("mesh", &board, &metrics, &labels);
    for metric in METRICS {
        let series = match metric.kind {
            MetricKind::Counter => metric.name.to_owned(),
            MetricKind::Histogram => format!("{}_bucket", metric.name),
        };
        assert!(used.contains(&series), "the mesh dashboard does not show {series}");
    }
}
