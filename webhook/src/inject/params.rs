//! Everything the templates read, resolved once per pod: the per-pod annotations of spec §2.6
//! (validated: a bad value fails the whole injection with the annotation's name), layered over
//! the injector `values`, the mesh config and its proxy defaults.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rudder_config::labels;
use rudder_config::mesh::{InterceptionMode, ProxyConfig};
use rudder_config::{FieldPath, Report};
use serde_json::{Value, json};

use super::{InjectError, InjectionContext};

/// Default image registry when `values.global.hub` is not set.
pub const DEFAULT_HUB: &str = "ghcr.io/rudder-mesh";
/// Default image tag when `values.global.tag` is not set: this crate's version.
pub const DEFAULT_TAG: &str = env!("CARGO_PKG_VERSION");
/// Name of Rudder's proxy image under the hub.
pub const PROXY_IMAGE_NAME: &str = "rudder-proxy";
/// The proxy's user and group id.
pub const PROXY_UID: i64 = 1337;
/// Envoy's Prometheus port, declared on the proxy container.
pub const ENVOY_PROM_PORT: i32 = 15090;
/// The proxy readiness port (`/healthz/ready`).
pub const READINESS_PORT: i32 = 15021;
/// The agent status port when nothing else is set.
pub const DEFAULT_STATUS_PORT: u32 = 15020;

/// Readiness probe tuning of the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Readiness {
    pub initial_delay: u32,
    pub period: u32,
    pub failure_threshold: u32,
}

/// The `traffic.sidecar.istio.io/*` settings, as the redirection arguments take them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: String,
    pub exclude_outbound_ports: String,
    pub exclude_interfaces: String,
    pub reroute_interfaces: String,
}

/// The resolved inputs of the templates for one pod.
#[derive(Clone, Debug)]
pub struct Params {
    pub mode: InterceptionMode,
    pub status_port: u32,
    pub readiness: Readiness,
    pub traffic: Traffic,
    /// The proxy's `resources` (ResourceRequirements JSON).
    pub resources: Value,
    /// The effective ProxyConfig (mesh default config + `proxy.istio.io/config`).
    pub proxy_config: ProxyConfig,
    pub native: bool,
    pub hold: bool,
    pub image: String,
    pub log_level: String,
    pub component_log_level: String,
    pub agent_log_level: String,
    pub prometheus_merge: bool,
    pub rewrite_probes: bool,
    pub cap_net_bind_service: bool,
    pub cni: bool,
    pub privileged: bool,
    pub user_volumes: serde_json::Map<String, Value>,
    pub user_volume_mounts: serde_json::Map<String, Value>,
}

/// Looks up `path` under the injector values.
pub fn value<'a>(values: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(values, |v, key| v.get(key))
}

/// A string (or number) under the values, if set and non-empty.
pub fn value_str(values: &Value, path: &[&str]) -> Option<String> {
    match value(values, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn value_bool(values: &Value, path: &[&str]) -> Option<bool> {
    match value(values, path)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn at<'a>(ann: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    ann.get(key).map(String::as_str)
}

fn invalid(annotation: &str, message: impl Into<String>) -> InjectError {
    InjectError::InvalidAnnotation { annotation: annotation.to_owned(), message: message.into() }
}

/// Resolves the parameters for a pod with these annotations.
pub fn resolve(ctx: &InjectionContext, ann: &BTreeMap<String, String>) -> Result<Params, InjectError> {
    let values = &ctx.values;
    let proxy_config = effective_proxy_config(ctx, at(ann, labels::PROXY_CONFIG))?;
    let mode = match at(ann, labels::INTERCEPTION_MODE) {
        Some(text) => parse_mode(text)?,
        None => proxy_config.interception_mode.unwrap_or(InterceptionMode::Redirect),
    };
    let status_port = match at(ann, labels::STATUS_PORT) {
        Some(text) => parse_u32(labels::STATUS_PORT, text, 65535)?,
        None => proxy_config.status_port.unwrap_or(DEFAULT_STATUS_PORT),
    };
    let readiness = Readiness {
        initial_delay: opt_u32(
            at(ann, labels::READINESS_INITIAL_DELAY_SECONDS),
            labels::READINESS_INITIAL_DELAY_SECONDS,
            0,
        )?,
        period: opt_u32(at(ann, labels::READINESS_PERIOD_SECONDS), labels::READINESS_PERIOD_SECONDS, 15)?,
        failure_threshold: opt_u32(
            at(ann, labels::READINESS_FAILURE_THRESHOLD),
            labels::READINESS_FAILURE_THRESHOLD,
            4,
        )?,
    };
    let hold = proxy_config
        .hold_application_until_proxy_starts
        .or_else(|| value_bool(values, &["global", "proxy", "holdApplicationUntilProxyStarts"]))
        .unwrap_or(false);
    let native = match at(ann, labels::NATIVE_SIDECAR) {
        Some(text) => parse_bool(labels::NATIVE_SIDECAR, text)?,
        None => {
            ctx.native_sidecars
                || value_str(values, &["pilot", "env", "ENABLE_NATIVE_SIDECARS"]).as_deref() == Some("true")
        }
    };
    let mesh_merge = ctx.mesh.enable_prometheus_merge.unwrap_or(true);
    let prometheus_merge = match at(ann, labels::PROMETHEUS_MERGE_METRICS) {
        Some(text) => parse_bool(labels::PROMETHEUS_MERGE_METRICS, text)?,
        None => mesh_merge,
    };
    let rewrite_probes = match at(ann, labels::REWRITE_APP_HTTP_PROBERS) {
        Some(text) => parse_bool(labels::REWRITE_APP_HTTP_PROBERS, text)?,
        None => value_bool(values, &["sidecarInjectorWebhook", "rewriteAppHTTPProbe"]).unwrap_or(true),
    };
    let cap_net_bind_service = match at(ann, labels::CAP_NET_BIND_SERVICE) {
        Some(text) => parse_bool(labels::CAP_NET_BIND_SERVICE, text)?,
        None => false,
    };
    Ok(Params {
        mode,
        status_port,
        readiness,
        traffic: traffic(values, ann)?,
        resources: resources(values, ann)?,
        image: image(ctx, &proxy_config, ann),
        proxy_config,
        native,
        hold,
        log_level: at(ann, labels::LOG_LEVEL)
            .map(str::to_owned)
            .or_else(|| value_str(values, &["global", "proxy", "logLevel"]))
            .unwrap_or_else(|| "warning".into()),
        component_log_level: at(ann, labels::COMPONENT_LOG_LEVEL)
            .map(str::to_owned)
            .or_else(|| value_str(values, &["global", "proxy", "componentLogLevel"]))
            .unwrap_or_else(|| "misc:error".into()),
        agent_log_level: at(ann, labels::AGENT_LOG_LEVEL)
            .map(str::to_owned)
            .or_else(|| value_str(values, &["global", "logging", "level"]))
            .unwrap_or_else(|| "default:info".into()),
        prometheus_merge,
        rewrite_probes,
        cap_net_bind_service,
        cni: value_bool(values, &["pilot", "cni", "enabled"]).unwrap_or(false),
        privileged: value_bool(values, &["global", "proxy", "privileged"]).unwrap_or(false),
        user_volumes: json_map(labels::USER_VOLUME, at(ann, labels::USER_VOLUME))?,
        user_volume_mounts: json_map(labels::USER_VOLUME_MOUNT, at(ann, labels::USER_VOLUME_MOUNT))?,
    })
}

/// The mesh's default ProxyConfig with the pod's `proxy.istio.io/config` merged over it.
fn effective_proxy_config(ctx: &InjectionContext, overlay: Option<&str>) -> Result<ProxyConfig, InjectError> {
    let base = ctx.mesh.default_config.clone().unwrap_or_else(ProxyConfig::istio_defaults);
    let Some(text) = overlay.filter(|t| !t.trim().is_empty()) else {
        return Ok(base);
    };
    let key = labels::PROXY_CONFIG;
    let parsed: Value =
        serde_saphyr::from_str(text).map_err(|e| invalid(key, format!("not valid YAML or JSON: {e}")))?;
    if !parsed.is_object() {
        return Err(invalid(key, "must be a ProxyConfig mapping"));
    }
    let own: ProxyConfig = serde_json::from_value(parsed.clone()).map_err(|e| invalid(key, e.to_string()))?;
    let mut report = Report::default();
    own.validate(&FieldPath::new(""), &mut report);
    if let Some(first) = report.errors().next() {
        return Err(invalid(key, first.to_string().trim_start_matches(": ").to_owned()));
    }
    let mut merged = serde_json::to_value(&base).unwrap_or_else(|_| json!({}));
    json_patch::merge(&mut merged, &parsed);
    serde_json::from_value(merged).map_err(|e| invalid(key, e.to_string()))
}

fn parse_mode(text: &str) -> Result<InterceptionMode, InjectError> {
    match text {
        "REDIRECT" => Ok(InterceptionMode::Redirect),
        "TPROXY" => Ok(InterceptionMode::Tproxy),
        "NONE" => Ok(InterceptionMode::None),
        other => Err(invalid(labels::INTERCEPTION_MODE, format!("{other:?} is not one of REDIRECT, TPROXY, NONE"))),
    }
}

fn parse_bool(annotation: &str, text: &str) -> Result<bool, InjectError> {
    text.parse().map_err(|_| invalid(annotation, format!("{text:?} is not true or false")))
}

fn parse_u32(annotation: &str, text: &str, max: u32) -> Result<u32, InjectError> {
    match text.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(invalid(annotation, format!("{text:?} is not a whole number from 0 to {max}"))),
    }
}

fn opt_u32(text: Option<&str>, annotation: &str, default: u32) -> Result<u32, InjectError> {
    text.map_or(Ok(default), |t| parse_u32(annotation, t, i32::MAX as u32))
}

fn traffic(values: &Value, ann: &BTreeMap<String, String>) -> Result<Traffic, InjectError> {
    let pick = |key: &str, value_key: &str, default: &str| -> String {
        at(ann, key)
            .map(str::to_owned)
            .or_else(|| value_str(values, &["global", "proxy", value_key]))
            .unwrap_or_else(|| default.to_owned())
    };
    let t = Traffic {
        include_ip_ranges: pick(labels::INCLUDE_OUTBOUND_IP_RANGES, "includeIPRanges", "*"),
        exclude_ip_ranges: pick(labels::EXCLUDE_OUTBOUND_IP_RANGES, "excludeIPRanges", ""),
        include_inbound_ports: pick(labels::INCLUDE_INBOUND_PORTS, "includeInboundPorts", "*"),
        exclude_inbound_ports: pick(labels::EXCLUDE_INBOUND_PORTS, "excludeInboundPorts", ""),
        include_outbound_ports: pick(labels::INCLUDE_OUTBOUND_PORTS, "includeOutboundPorts", ""),
        exclude_outbound_ports: pick(labels::EXCLUDE_OUTBOUND_PORTS, "excludeOutboundPorts", ""),
        exclude_interfaces: at(ann, labels::EXCLUDE_INTERFACES).unwrap_or_default().to_owned(),
        reroute_interfaces: at(ann, labels::REROUTE_VIRTUAL_INTERFACES)
            .or_else(|| at(ann, labels::KUBEVIRT_INTERFACES))
            .unwrap_or_default()
            .to_owned(),
    };
    check_cidrs(labels::INCLUDE_OUTBOUND_IP_RANGES, &t.include_ip_ranges, true)?;
    check_cidrs(labels::EXCLUDE_OUTBOUND_IP_RANGES, &t.exclude_ip_ranges, false)?;
    check_ports(labels::INCLUDE_INBOUND_PORTS, &t.include_inbound_ports, true)?;
    check_ports(labels::EXCLUDE_INBOUND_PORTS, &t.exclude_inbound_ports, false)?;
    check_ports(labels::INCLUDE_OUTBOUND_PORTS, &t.include_outbound_ports, false)?;
    check_ports(labels::EXCLUDE_OUTBOUND_PORTS, &t.exclude_outbound_ports, false)?;
    check_interfaces(labels::EXCLUDE_INTERFACES, &t.exclude_interfaces)?;
    check_interfaces(labels::REROUTE_VIRTUAL_INTERFACES, &t.reroute_interfaces)?;
    Ok(t)
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A comma list of CIDRs, or `*` (all) where `star` is allowed.
pub fn check_cidrs(annotation: &str, list: &str, star: bool) -> Result<(), InjectError> {
    if star && list.trim() == "*" {
        return Ok(());
    }
    for cidr in items(list) {
        let ok = cidr.split_once('/').is_some_and(|(ip, bits)| match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        });
        if !ok {
            return Err(invalid(annotation, format!("{cidr:?} is not a CIDR such as 10.0.0.0/8")));
        }
    }
    Ok(())
}

/// A comma list of ports 1–65535, or `*` where `star` is allowed.
pub fn check_ports(annotation: &str, list: &str, star: bool) -> Result<(), InjectError> {
    if star && list.trim() == "*" {
        return Ok(());
    }
    for port in items(list) {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(invalid(annotation, format!("{port:?} is not a port from 1 to 65535")));
        }
    }
    Ok(())
}

fn check_interfaces(annotation: &str, list: &str) -> Result<(), InjectError> {
    for name in items(list) {
        if name.len() > 15 || name.contains(['/', ' ']) {
            return Err(invalid(annotation, format!("{name:?} is not a network interface name")));
        }
    }
    Ok(())
}

fn resources(values: &Value, ann: &BTreeMap<String, String>) -> Result<Value, InjectError> {
    let keys = [
        (labels::PROXY_CPU, "requests", "cpu"),
        (labels::PROXY_MEMORY, "requests", "memory"),
        (labels::PROXY_CPU_LIMIT, "limits", "cpu"),
        (labels::PROXY_MEMORY_LIMIT, "limits", "memory"),
    ];
    if keys.iter().all(|(key, _, _)| at(ann, key).is_none()) {
        return Ok(value(values, &["global", "proxy", "resources"]).cloned().unwrap_or_else(
            || json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2000m", "memory": "1024Mi"}}),
        ));
    }
    let mut out = json!({});
    for (key, section, resource) in keys {
        if let Some(text) = at(ann, key) {
            check_quantity(key, text)?;
            out[section][resource] = Value::String(text.to_owned());
        }
    }
    Ok(out)
}

/// A Kubernetes quantity: a decimal number with an optional binary (`Ki`…`Ei`), decimal
/// (`n u m k M G T P E`) or exponent (`e3`) suffix.
pub fn check_quantity(annotation: &str, text: &str) -> Result<(), InjectError> {
    let bad = || invalid(annotation, format!("{text:?} is not a quantity such as 100m or 128Mi"));
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let split = body.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(body.len());
    let (number, suffix) = body.split_at(split);
    let digits_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
    });
    if digits_ok && suffix_ok { Ok(()) } else { Err(bad()) }
}

fn image(ctx: &InjectionContext, proxy_config: &ProxyConfig, ann: &BTreeMap<String, String>) -> String {
    if let Some(image) = at(ann, labels::PROXY_IMAGE).filter(|i| i.contains('/')) {
        return image.to_owned();
    }
    let values = &ctx.values;
    if let Some(image) = value_str(values, &["global", "proxy", "image"]).filter(|i| i.contains('/')) {
        return image;
    }
    let hub = value_str(values, &["global", "hub"]).unwrap_or_else(|| DEFAULT_HUB.into());
    let tag = value_str(values, &["global", "tag"]).unwrap_or_else(|| DEFAULT_TAG.into());
    let variant = at(ann, labels::PROXY_IMAGE_TYPE)
        .map(str::to_owned)
        .or_else(|| proxy_config.image.as_ref().map(|i| i.image_type.clone()))
        .or_else(|| value_str(values, &["global", "variant"]))
        .unwrap_or_default();
    match variant.as_str() {
        "" | "default" => format!("{hub}/{PROXY_IMAGE_NAME}:{tag}"),
        v => format!("{hub}/{PROXY_IMAGE_NAME}:{tag}-{v}"),
    }
}

fn json_map(annotation: &str, text: Option<&str>) -> Result<serde_json::Map<String, Value>, InjectError> {
    match text {
        None => Ok(serde_json::Map::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| invalid(annotation, format!("not a JSON object: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "0.5", "128Mi", "1Gi", "2e3", "1.5k", "+1"] {
            assert!(check_quantity("q", ok).is_ok(), "{ok}");
        }
        for bad in ["abc", "", "1.2.3", "10MB", "m", "1e", "."] {
            assert!(check_quantity("q", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_ports() {
        assert!(check_cidrs("a", "*", true).is_ok());
        assert!(check_cidrs("a", "*", false).is_err());
        assert!(check_cidrs("a", "10.0.0.0/8, fd00::/8", false).is_ok());
        assert!(check_cidrs("a", "10.0.0.0/33", false).is_err());
        assert!(check_cidrs("a", "10.0.0.0", false).is_err());
        assert!(check_ports("p", "80,8080", false).is_ok());
        assert!(check_ports("p", "0", false).is_err());
        assert!(check_ports("p", "http", false).is_err());
        assert!(check_ports("p", "*", true).is_ok());
    }
}
