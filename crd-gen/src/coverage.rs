//! `api/coverage.md`: how much of upstream Istio's API Rudder accepts, per kind, from the field
//! paths of Rudder's generated CRD schemas and the pinned upstream list `api/upstream-fields.txt`
//! (written by `scripts/upstream-api-fields.py`).
//!
//! Both sides use one path syntax: `spec.a.b`, `[]` after an array field (its elements' fields
//! follow), `{}` after a map field (string keys; its values' fields follow). A free-form object
//! (`x-kubernetes-preserve-unknown-fields` without properties) is one path with nothing below.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

/// Field paths per kind.
pub type Fields = BTreeMap<String, BTreeSet<String>>;

/// Accepted fields that upstream's pinned list lacks, with the reason: a path any of whose
/// segments (without `[]`/`{}`) is named here is explained.
pub const EXPLAINED_EXTRAS: &[(&str, &str, &str)] = &[
    (
        "DestinationRule",
        "backendUtilization",
        "newer upstream API than the pinned list (istio/api after 1.29): loadBalancer.backendUtilization",
    ),
    (
        "DestinationRule",
        "zoneAwareLbSetting",
        "newer upstream API than the pinned list (istio/api after 1.29): loadBalancer.zoneAwareLbSetting",
    ),
    (
        "DestinationRule",
        "http2KeepAlive",
        "newer upstream API than the pinned list (istio/api after 1.29): connectionPool.http.http2KeepAlive",
    ),
    (
        "DestinationRule",
        "outlierDetectionHttpErrorCodes",
        "newer upstream API than the pinned list (istio/api 1.32): outlierDetection.outlierDetectionHttpErrorCodes",
    ),
    (
        "DestinationRule",
        "budgetInterval",
        "newer upstream API than the pinned list (istio/api after 1.29): retryBudget.budgetInterval",
    ),
    (
        "Sidecar",
        "http2KeepAlive",
        "newer upstream API than the pinned list (istio/api after 1.29): the connection pool's http2KeepAlive, shared with DestinationRule",
    ),
    (
        "VirtualService",
        "prefixRewrite",
        "newer upstream API than the pinned list (istio/api after 1.29): redirect.prefixRewrite",
    ),
];

/// The field paths under `schema` (an OpenAPI v3 schema as JSON), each prefixed by `prefix`.
pub fn schema_paths(schema: &Value, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk_properties(schema, prefix, &mut out);
    out
}

fn walk_properties(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(Value::Object(props)) = schema.get("properties") else {
        return;
    };
    for (name, child) in props {
        let mut path = format!("{prefix}.{name}");
        let mut node = child;
        loop {
            if node.get("type").and_then(Value::as_str) == Some("array")
                && let Some(items) = node.get("items").filter(|i| i.is_object())
            {
                path.push_str("[]");
                node = items;
                continue;
            }
            if node.get("properties").is_none()
                && let Some(values) = node.get("additionalProperties").filter(|v| v.is_object())
            {
                path.push_str("{}");
                node = values;
                continue;
            }
            break;
        }
        walk_properties(node, &path, out);
        out.insert(path);
    }
}

/// Reads `api/upstream-fields.txt`: `KIND PATH` lines; `#` lines are comments.
pub fn parse_upstream(text: &str) -> Result<Fields, String> {
    let mut fields = Fields::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some((kind, path)) if !kind.is_empty() && path.starts_with("spec.") && !path.contains(' ') => {
                fields.entry(kind.to_owned()).or_default().insert(path.to_owned());
            }
            _ => return Err(format!("line {}: expected `KIND spec.PATH`, found {line:?}", n + 1)),
        }
    }
    Ok(fields)
}

/// Rudder's accepted `spec` field paths per kind, from its CRDs (as JSON).
pub fn accepted_fields(crds: &[Value]) -> Fields {
    let mut fields = Fields::new();
    for crd in crds {
        let Some(kind) = crd.pointer("/spec/names/kind").and_then(Value::as_str) else {
            continue;
        };
        if let Some(spec) = crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec") {
            fields.insert(kind.to_owned(), schema_paths(spec, "spec"));
        }
    }
    fields
}

/// One kind's comparison.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KindCoverage {
    pub upstream: usize,
    pub accepted: usize,
    /// Upstream fields Rudder does not accept.
    pub missing: Vec<String>,
    /// Fields Rudder accepts that the upstream list does not have.
    pub extra: Vec<String>,
    /// Whether Rudder serves the kind at all.
    pub served: bool,
}

/// Compares per kind, for every kind of the upstream list.
pub fn compare(upstream: &Fields, ours: &Fields) -> BTreeMap<String, KindCoverage> {
    let empty = BTreeSet::new();
    upstream
        .iter()
        .map(|(kind, theirs)| {
            let mine = ours.get(kind).unwrap_or(&empty);
            let coverage = KindCoverage {
                upstream: theirs.len(),
                accepted: theirs.intersection(mine).count(),
                missing: theirs.difference(mine).cloned().collect(),
                extra: mine.difference(theirs).cloned().collect(),
                served: ours.contains_key(kind),
            };
            (kind.clone(), coverage)
        })
        .collect()
}

/// The reason an accepted field upstream lacks is there, if one is recorded.
pub fn explain(kind: &str, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('.').map(|s| s.trim_end_matches("[]").trim_end_matches("{}")).collect();
    EXPLAINED_EXTRAS.iter().find(|(k, name, _)| *k == kind && segments.contains(name)).map(|(_, _, why)| *why)
}

fn percent(accepted: usize, upstream: usize) -> String {
    if upstream == 0 {
        return "–".to_owned();
    }
    // Whole percent only when exact, so 99.7 % is never shown as 100 %.
    let p = accepted as f64 * 100.0 / upstream as f64;
    if accepted == upstream { "100 %".to_owned() } else { format!("{:.1} %", (p * 10.0).floor() / 10.0) }
}

/// The upstream list's header lines that name its source (for the report's preamble).
fn source_lines(upstream_text: &str) -> Vec<&str> {
    upstream_text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with("Source:") || l.starts_with("Tarball sha256:"))
        .collect()
}

/// The whole of `api/coverage.md`.
pub fn render(upstream_text: &str, ours: &Fields) -> Result<String, String> {
    let upstream = parse_upstream(upstream_text)?;
    let report = compare(&upstream, ours);
    let mut md = String::new();
    let _ = writeln!(md, "<!-- Generated by `cargo run -p rudder-crd-gen`; do not edit by hand. -->");
    let _ = writeln!(md, "# Upstream Istio API coverage\n");
    let _ = writeln!(
        md,
        "Which fields of each upstream kind's `spec` Rudder accepts: the field paths of Rudder's CRD \
         schemas (`chart/crds/`, generated from the Rust types) against the pinned upstream list \
         `api/upstream-fields.txt` (`scripts/upstream-api-fields.py`). CI's `crd-gen --check` fails \
         when this file is stale. Accepted fields that Envoy is not given are listed in \
         the README (Accepted but not translated).\n"
    );
    for line in source_lines(upstream_text) {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(md, "\n| Kind | Upstream fields | Accepted | Coverage |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let (mut total_up, mut total_ok) = (0, 0);
    for (kind, c) in &report {
        let note = if c.served { "" } else { " (kind not served)" };
        let _ =
            writeln!(md, "| {kind}{note} | {} | {} | {} |", c.upstream, c.accepted, percent(c.accepted, c.upstream));
        total_up += c.upstream;
        total_ok += c.accepted;
    }
    let _ = writeln!(md, "| **All** | {total_up} | {total_ok} | {} |", percent(total_ok, total_up));
    let _ = writeln!(md, "\n## Upstream fields Rudder does not accept\n");
    let mut none = true;
    for (kind, c) in report.iter().filter(|(_, c)| !c.missing.is_empty()) {
        none = false;
        let _ = writeln!(md, "### {kind}\n");
        for path in &c.missing {
            let _ = writeln!(md, "- `{path}`");
        }
        let _ = writeln!(md);
    }
    if none {
        let _ = writeln!(md, "None.\n");
    }
    let _ = writeln!(md, "## Accepted fields the upstream list does not have\n");
    let extras: Vec<(&String, &String)> =
        report.iter().flat_map(|(kind, c)| c.extra.iter().map(move |p| (kind, p))).collect();
    if extras.is_empty() {
        let _ = writeln!(md, "None.");
    } else {
        let _ = writeln!(md, "| Kind | Field | Why |");
        let _ = writeln!(md, "|---|---|---|");
        for (kind, path) in extras {
            let why = explain(kind, path).unwrap_or("**not explained**: add the reason to crd-gen's EXPLAINED_EXTRAS");
            let _ = writeln!(md, "| {kind} | `{path}` | {why} |");
        }
    }
    Ok(md)
}

/// Accepted fields upstream lacks that have no recorded reason, as `KIND PATH`.
pub fn unexplained(upstream_text: &str, ours: &Fields) -> Result<Vec<String>, String> {
    let upstream = parse_upstream(upstream_text)?;
    Ok(compare(&upstream, ours)
        .iter()
        .flat_map(|(kind, c)| c.extra.iter().filter(|p| explain(kind, p).is_none()).map(move |p| format!("{kind} {p}")))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn schema_paths_follow_the_upstream_syntax() {
        let cases: Vec<(&str, Value, &[&str])> = vec![
            ("scalar", json!({"properties": {"host": {"type": "string"}}}), &["spec.host"]),
            (
                "array of scalars",
                json!({"properties": {"hosts": {"type": "array", "items": {"type": "string"}}}}),
                &["spec.hosts[]"],
            ),
            (
                "array of objects",
                json!({"properties": {"http": {"type": "array", "items": {"type": "object", "properties": {
                    "redirect": {"type": "object", "properties": {"prefixRewrite": {"type": "string"}}}}}}}}),
                &["spec.http[]", "spec.http[].redirect", "spec.http[].redirect.prefixRewrite"],
            ),
            (
                "map of scalars",
                json!({"properties": {"selector": {"type": "object", "properties": {"matchLabels": {
                    "type": "object", "additionalProperties": {"type": "string"}}}}}}),
                &["spec.selector", "spec.selector.matchLabels{}"],
            ),
            (
                "map of objects",
                json!({"properties": {"portLevelMtls": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {"mode": {"type": "string"}}}}}}),
                &["spec.portLevelMtls{}", "spec.portLevelMtls{}.mode"],
            ),
            (
                "free-form object ends there",
                json!({"properties": {"value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}),
                &["spec.value"],
            ),
            (
                "array of arrays",
                json!({"properties": {"m": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}}),
                &["spec.m[][]"],
            ),
            (
                "additionalProperties false is not a map",
                json!({"properties": {"o": {"type": "object", "additionalProperties": false,
                    "properties": {"a": {"type": "string"}}}}}),
                &["spec.o", "spec.o.a"],
            ),
            ("no properties", json!({"type": "object"}), &[]),
        ];
        for (name, schema, want) in cases {
            assert_eq!(schema_paths(&schema, "spec"), set(want), "{name}");
        }
    }

    #[test]
    fn comparison_counts_missing_and_extra_fields() {
        let upstream = "# header\nVirtualService spec.hosts[]\nVirtualService spec.http[]\nVirtualService spec.http[].name\n\nWasmPlugin spec.url\n";
        let ours: Fields = [
            ("VirtualService".to_owned(), set(&["spec.hosts[]", "spec.http[]", "spec.http[].redirect.prefixRewrite"])),
            ("Gateway".to_owned(), set(&["spec.servers[]"])),
        ]
        .into();
        let report = compare(&parse_upstream(upstream).unwrap(), &ours);
        let cases: Vec<(&str, KindCoverage)> = vec![
            (
                "VirtualService",
                KindCoverage {
                    upstream: 3,
                    accepted: 2,
                    missing: vec!["spec.http[].name".into()],
                    extra: vec!["spec.http[].redirect.prefixRewrite".into()],
                    served: true,
                },
            ),
            (
                "WasmPlugin",
                KindCoverage {
                    upstream: 1,
                    accepted: 0,
                    missing: vec!["spec.url".into()],
                    extra: vec![],
                    served: false,
                },
            ),
        ];
        assert_eq!(report.len(), cases.len(), "only kinds of the upstream list are reported");
        for (kind, want) in cases {
            assert_eq!(report[kind], want, "{kind}");
        }
        assert_eq!(unexplained(upstream, &ours).unwrap(), Vec::<String>::new(), "prefixRewrite is explained");
    }

    #[test]
    fn upstream_lines_must_name_a_kind_and_a_spec_path() {
        for bad in ["VirtualService", "VirtualService hosts", "spec.hosts", "A spec.x extra"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percentages_never_round_up_to_complete() {
        let cases =
            [(0, 32, "0.0 %"), (32, 32, "100 %"), (999, 1000, "99.9 %"), (1999, 2000, "99.9 %"), (1, 3, "33.3 %")];
        for (ok, up, want) in cases {
            assert_eq!(percent(ok, up), want, "{ok}/{up}");
        }
    }

    #[test]
    fn extras_are_explained_by_a_segment_name_of_their_kind() {
        let cases = [
            ("DestinationRule", "spec.subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[].to", true),
            ("VirtualService", "spec.http[].redirect.prefixRewrite", true),
            ("VirtualService", "spec.http[].zoneAwareLbSetting", false),
            ("Gateway", "spec.servers[].madeUp", false),
        ];
        for (kind, path, want) in cases {
            assert_eq!(explain(kind, path).is_some(), want, "{kind} {path}");
        }
    }
}
