//! Small reusable checks. Each returns `Err(message)`; callers record it at a field with
//! [`super::Report::check`]. Messages say what is wrong and what is allowed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::common::{Duration, PolicyTargetReference};

const DNS1123_LABEL_MAX: usize = 63;
const FQDN_MAX: usize = 255;

#[allow(clippy::unwrap_used)] // constant patterns, checked by the tests below
static HOST_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$").unwrap());
#[allow(clippy::unwrap_used)]
static DNS1123_LABEL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$").unwrap());
#[allow(clippy::unwrap_used)]
static LABEL_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$").unwrap());

/// A DNS-1123 label (lower case), as Kubernetes names, namespaces and subset names must be.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_LABEL_MAX {
        return Err(format!("{value:?} is longer than {DNS1123_LABEL_MAX} characters"));
    }
    if !DNS1123_LABEL.is_match(value) {
        return Err(format!(
            "{value:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A fully qualified domain name (a trailing dot is allowed).
pub fn fqdn(host: &str) -> Result<(), String> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > FQDN_MAX {
        return Err(format!("host {host:?} is longer than {FQDN_MAX} characters"));
    }
    for label in trimmed.split('.') {
        host_label(host, label)?;
    }
    Ok(())
}

fn host_label(host: &str, label: &str) -> Result<(), String> {
    if label.len() > DNS1123_LABEL_MAX || !HOST_LABEL.is_match(label) {
        return Err(format!("host {host:?} is invalid: label {label:?} is not a valid DNS label"));
    }
    Ok(())
}

/// A host that may start with a `*` wildcard label: `*`, `*.example.com`, `reviews`,
/// `reviews.default.svc.cluster.local`.
pub fn wildcard_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > FQDN_MAX {
        return Err(format!("host {host:?} is longer than {FQDN_MAX} characters"));
    }
    if host == "*" {
        return Ok(());
    }
    let rest = if let Some(rest) = host.strip_prefix("*.") {
        rest
    } else if let Some(rest) = host.strip_prefix('*') {
        // `*foo.com`: a partial wildcard label, which Istio accepts as a suffix match.
        rest
    } else {
        host
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    if rest.is_empty() {
        return Err(format!("host {host:?} is invalid"));
    }
    for label in rest.split('.') {
        if label.contains('*') {
            return Err(format!("host {host:?} is invalid: a wildcard may only be the first label"));
        }
        host_label(host, label)?;
    }
    Ok(())
}

/// A `namespace/host` gateway or Sidecar host: namespace is `*`, `.`, `~` or a namespace name.
pub fn namespaced_host(value: &str) -> Result<(), String> {
    let Some((namespace, host)) = value.split_once('/') else {
        return Err(format!("host {value:?} must be of the form namespace/dnsName"));
    };
    if !matches!(namespace, "*" | "." | "~") {
        dns1123_label(namespace).map_err(|e| format!("namespace of host {value:?}: {e}"))?;
    }
    wildcard_host(host)
}

/// A port number in 1..65535.
pub fn port(number: u32) -> Result<(), String> {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(format!("port number {number} must be in the range 1..65535"))
    }
}

/// What a port protocol carries, for rules that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolKind {
    Http,
    Tls,
    Other,
}

/// The kind of a port protocol Istio knows (matched case-insensitively); `None` when unknown.
pub fn protocol_kind(protocol: &str) -> Option<ProtocolKind> {
    match protocol.to_ascii_lowercase().as_str() {
        "http" | "http2" | "http_proxy" | "grpc" | "grpc-web" => Some(ProtocolKind::Http),
        "https" | "tls" => Some(ProtocolKind::Tls),
        "tcp" | "udp" | "mongo" | "redis" | "mysql" => Some(ProtocolKind::Other),
        _ => None,
    }
}

const PROTOCOL_NAMES: &str = "HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, UDP, MONGO, REDIS or MYSQL";

/// A port protocol Istio knows. Empty means "sniffed" and is allowed unless `required`
/// (Gateway and Sidecar listener ports).
pub fn protocol(protocol: &str, required: bool) -> Result<(), String> {
    if protocol.is_empty() {
        return if required { Err(format!("protocol is required; use {PROTOCOL_NAMES}")) } else { Ok(()) };
    }
    if protocol_kind(protocol).is_some() {
        Ok(())
    } else {
        Err(format!("unknown protocol {protocol:?}; use {PROTOCOL_NAMES}"))
    }
}

/// A duration of at least 1 ms with at most millisecond precision.
pub fn duration(d: &Duration) -> Result<(), String> {
    let nanos = d.as_nanos();
    if nanos < 1_000_000 {
        return Err(format!("duration {d} must be at least 1ms"));
    }
    if nanos % 1_000_000 != 0 {
        return Err(format!("duration {d} has sub-millisecond precision; only whole milliseconds are supported"));
    }
    Ok(())
}

/// An RE2 regular expression (the `regex` crate accepts the same syntax, without backreferences
/// or look-around, as Envoy's RE2 does).
pub fn regex(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("regex must not be empty".into());
    }
    Regex::new(pattern).map(drop).map_err(|e| {
        let detail = e.to_string();
        let last = detail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        format!("invalid regex {pattern:?}: {}", last.trim_start_matches("error: "))
    })
}

/// A percentage in 0..100 inclusive.
pub fn percentage(value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) { Ok(()) } else { Err(format!("percentage {value} must be in the range 0..100")) }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of up to 63 characters.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || prefix.split('.').any(|l| dns1123_label(l).is_err()))
    {
        return Err(format!("label key {key:?} has an invalid prefix (must be a DNS subdomain)"));
    }
    if name.is_empty() || name.len() > DNS1123_LABEL_MAX || !LABEL_NAME.is_match(name) {
        return Err(format!(
            "label key {key:?} is invalid (up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A label value: empty, or up to 63 characters of the label-name alphabet.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= DNS1123_LABEL_MAX && LABEL_NAME.is_match(value)) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is invalid (up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ))
    }
}

/// Every key and value of a label map; errors are reported per entry by the caller's `at`.
pub fn labels(map: &BTreeMap<String, String>, report: &mut super::Report, at: &super::FieldPath) {
    for (key, value) in map {
        report.check(&at.key(key), label_key(key));
        report.check(&at.key(key), label_value(value));
    }
}

/// The labels of a workload selector (`labels` or `matchLabels`): valid keys and values, no
/// wildcards; a selector without labels selects every workload, which Istio only warns about.
pub fn selector_labels(labels: &BTreeMap<String, String>, report: &mut super::Report, at: &super::FieldPath) {
    if labels.is_empty() {
        report.warning(at, "workload selector has no labels, so it selects every workload");
    }
    for (key, value) in labels {
        let entry = at.key(key);
        if key.is_empty() {
            report.error(&entry, "selector label key must not be empty");
        } else if key.contains('*') || value.contains('*') {
            report.error(&entry, format!("wildcards are not supported in selectors ({key}: {value})"));
        } else {
            report.check(&entry, label_key(key));
            report.check(&entry, label_value(value));
        }
    }
}

/// The kinds a policy `targetRef` may name: (group, kind); the core group is `""` or `core`.
const TARGET_KINDS: [(&str, &str); 4] = [
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// A policy target reference (security policies, Telemetry, EnvoyFilter): a name, no namespace,
/// and a supported kind.
pub fn target_ref(target: &PolicyTargetReference, report: &mut super::Report, at: &super::FieldPath) {
    if target.name.is_empty() {
        report.error(&at.field("name"), "name must be set");
    }
    if !target.namespace.is_empty() {
        report
            .error(&at.field("namespace"), "namespace must not be set; targets must be in the policy's own namespace");
    }
    let group = if target.group == "core" { "" } else { target.group.as_str() };
    if target.kind.is_empty() {
        report.error(&at.field("kind"), "kind is required");
    } else if !TARGET_KINDS.iter().any(|(g, k)| *g == group && *k == target.kind) {
        report.error(
            &at.field("kind"),
            format!(
                "target kind {} is not supported; use a Service, a ServiceEntry (networking.istio.io) or a Gateway or GatewayClass (gateway.networking.k8s.io)",
                if target.group.is_empty() { target.kind.clone() } else { format!("{}/{}", target.group, target.kind) }
            ),
        );
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `1.2.3.4`).
pub fn ip_or_cidr(value: &str) -> Result<(), String> {
    let (ip, bits) = match value.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (value, None),
    };
    let address: IpAddr = ip.parse().map_err(|_| format!("{value:?} is not a valid IP address or CIDR block"))?;
    if let Some(bits) = bits {
        let max = if address.is_ipv4() { 32 } else { 128 };
        match bits.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("{value:?} has an invalid prefix length (0..{max})")),
        }
    }
    Ok(())
}

/// An HTTP header name usable in header operations: non-empty and lower case.
pub fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("header name {name:?} must be lower case"));
    }
    if !name.bytes().all(|b| {
        b.is_ascii_graphic()
            && b != b'"'
            && b != b'('
            && b != b')'
            && b != b','
            && b != b';'
            && b != b'='
            && b != b'{'
            && b != b'}'
    }) {
        return Err(format!("header name {name:?} contains characters not allowed in a header name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in
            ["*", "*.example.com", "reviews", "reviews.default.svc.cluster.local", "Example.COM", "*.com", "foo.bar."]
        {
            assert_eq!(wildcard_host(ok), Ok(()), "{ok}");
        }
        for bad in ["", "foo.*.com", "-foo.com", "foo..com", "foo_bar.com", "*."] {
            assert!(wildcard_host(bad).is_err(), "{bad}");
        }
        assert!(fqdn("*.example.com").is_err());
        assert_eq!(fqdn("httpbin.org"), Ok(()));
        assert_eq!(namespaced_host("./reviews"), Ok(()));
        assert_eq!(namespaced_host("*/*"), Ok(()));
        assert!(namespaced_host("reviews").is_err());
    }

    #[test]
    fn numbers_and_durations() {
        assert!(port(0).is_err());
        assert!(port(65536).is_err());
        assert_eq!(port(8080), Ok(()));
        assert_eq!(protocol("https", true), Ok(()));
        assert_eq!(protocol("grpc-web", true), Ok(()));
        assert_eq!(protocol("", false), Ok(()));
        assert!(protocol("", true).is_err());
        assert!(protocol("FTP", false).is_err());
        assert_eq!(protocol_kind("tls"), Some(ProtocolKind::Tls));
        assert_eq!(protocol_kind("HTTP_PROXY"), Some(ProtocolKind::Http));
        assert!(duration(&Duration::from_nanos(999_999)).is_err());
        assert!(duration(&Duration::from_nanos(1_500_000)).is_err());
        assert_eq!(duration(&Duration::from_millis(1)), Ok(()));
        assert!(percentage(100.1).is_err());
        assert!(percentage(-0.1).is_err());
        assert_eq!(percentage(0.0), Ok(()));
    }

    #[test]
    fn patterns() {
        assert_eq!(regex("^/api/v[0-9]+"), Ok(()));
        let err = regex("([a-z").unwrap_err();
        assert!(err.starts_with("invalid regex \"([a-z\""), "{err}");
        assert_eq!(label_key("app.kubernetes.io/name"), Ok(()));
        assert!(label_key("bad key").is_err());
        assert!(label_value("-x").is_err());
        assert_eq!(label_value(""), Ok(()));
        assert_eq!(ip_or_cidr("10.0.0.0/8"), Ok(()));
        assert!(ip_or_cidr("10.0.0.0/33").is_err());
        assert!(header_name("X-Foo").is_err());
        assert_eq!(dns1123_label("v1"), Ok(()));
        assert!(dns1123_label("V1").is_err());
    }
}
