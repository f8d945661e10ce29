//! WorkloadEntry and WorkloadGroup: workloads outside Kubernetes
//! (`networking/v1alpha3/workload_entry.proto`, `workload_group.proto`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::LazyLock;

use kube::CustomResource;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::service_entry::check_port_name;
use crate::common::IstioStatus;
use crate::validate::{FieldPath, Report, Validate, checks};

const UNIX_PREFIX: &str = "unix://";

/// `WorkloadEntry` spec; also the shape of ServiceEntry endpoints and WorkloadGroup templates.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    namespaced,
    status = "IstioStatus",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Address","type":"string","description":"Address of the workload","jsonPath":".spec.address"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP address, host name (DNS resolution only) or `unix:///path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Service port name to endpoint port number.
    #[serde(default, deserialize_with = "lenient_port_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network of the workload; required when address is empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Failure domain, e.g. `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Load-balancing weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

/// A `map<string, uint32>` of ports whose values may be numbers or numeric strings.
fn lenient_port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Port(#[serde(deserialize_with = "crate::common::lenient_u32")] Option<u32>);
    let raw = Option::<BTreeMap<String, Port>>::deserialize(d)?.unwrap_or_default();
    raw.into_iter()
        .map(|(name, Port(port))| match port {
            Some(p) => Ok((name, p)),
            None => Err(serde::de::Error::custom(format!("port {name:?} has no number"))),
        })
        .collect()
}

/// A unix domain socket path (what follows `unix://`): absolute and not a directory, or an
/// abstract socket (`@name`).
fn check_unix_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("unix:// address needs a socket path".into());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(format!("unix socket path {path:?} must be absolute (or an abstract @name)"));
    }
    if path.ends_with('/') {
        return Err(format!("unix socket path {path:?} must name a socket, not a directory"));
    }
    Ok(())
}

/// Checks one workload: a WorkloadEntry, a ServiceEntry endpoint (with the ServiceEntry's port
/// names in `service_ports`) or a WorkloadGroup template (`template` set, where the address is
/// filled in per instance). `allow_hostname` permits a DNS name as address.
pub(crate) fn validate_workload_entry(
    report: &mut Report,
    at: &FieldPath,
    entry: &WorkloadEntrySpec,
    service_ports: Option<&[String]>,
    allow_hostname: bool,
) {
    let address_at = at.field("address");
    let address = entry.address.as_str();
    let unix = address.starts_with(UNIX_PREFIX);
    if address.is_empty() {
        if entry.network.is_empty() {
            report.error(&address_at, "address is required unless network is set");
        }
    } else if let Some(path) = address.strip_prefix(UNIX_PREFIX) {
        report.check(&address_at, check_unix_path(path));
        if !entry.ports.is_empty() {
            report.error(&at.field("ports"), "ports are not allowed with a unix:// address");
        }
        if let Some(declared) = service_ports
            && declared.len() != 1
        {
            report.error(
                &address_at,
                format!("a unix:// endpoint needs exactly one service port, found {}", declared.len()),
            );
        }
    } else if address.parse::<IpAddr>().is_err() {
        if !allow_hostname {
            report.error(&address_at, format!("address {address:?} must be an IP address or a unix:// path"));
        } else if checks::fqdn(address).is_err() {
            report.error(&address_at, format!("address {address:?} is neither an IP address nor a valid host name"));
        }
    }
    let ports_at = at.field("ports");
    for (name, number) in &entry.ports {
        let here = ports_at.key(name);
        if let Some(declared) = service_ports
            && !unix
            && !declared.iter().any(|d| d == name)
        {
            report.error(&here, format!("port name {name:?} is not declared in the service entry's ports"));
        }
        report.check(&here, check_port_name(name));
        report.check(&here, checks::port(*number));
    }
    checks::labels(&entry.labels, report, &at.field("labels"));
}

impl Validate for WorkloadEntry {
    fn validate(&self, report: &mut Report) {
        validate_workload_entry(report, &FieldPath::spec(), &self.spec, None, true);
    }
}

/// `WorkloadGroup` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadGroup",
    namespaced,
    status = "IstioStatus",
    shortname = "wg",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupSpec {
    /// Labels and annotations given to every WorkloadEntry of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadGroupMetadata>,
    /// Template for the group's WorkloadEntries (address and labels are set per instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkloadEntrySpec>,
    /// Readiness check run by the proxy of each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

/// `WorkloadGroup.ObjectMeta`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// The check method is a protobuf oneof kept as separate fields so that the timings can sit
// beside it; validation requires exactly one.
/// `ReadinessProbe`: timings and one of httpGet, tcpSocket, exec or grpc.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheckConfig>,
}

/// `HTTPHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheckConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// HTTP (default) or HTTPS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// `HTTPHeader` sent with an HTTP probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// `TCPHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheckConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `ExecHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHealthCheckConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// `GrpcHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheckConfig {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Fully qualified gRPC service name to check.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

#[allow(clippy::unwrap_used)] // constant pattern
static PROBE_HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[-_A-Za-z0-9]+$").unwrap());

fn check_required_port(report: &mut Report, at: &FieldPath, port: Option<u32>) {
    match port {
        None => report.error(at, "port is required"),
        Some(p) => report.check(at, checks::port(p)),
    }
}

fn validate_probe(report: &mut Report, at: &FieldPath, probe: &ReadinessProbe) {
    for (name, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value.filter(|v| *v < 0) {
            report.error(&at.field(name), format!("{name} {v} must not be negative"));
        }
    }
    let methods = [probe.http_get.is_some(), probe.tcp_socket.is_some(), probe.exec.is_some(), probe.grpc.is_some()]
        .into_iter()
        .filter(|set| *set)
        .count();
    match methods {
        0 => report.error(at, "one of httpGet, tcpSocket, exec or grpc is required"),
        1 => {}
        _ => report.error(at, "only one of httpGet, tcpSocket, exec or grpc may be set"),
    }
    if let Some(http) = &probe.http_get {
        let here = at.field("httpGet");
        check_required_port(report, &here.field("port"), http.port);
        if !matches!(http.scheme.as_str(), "" | "HTTP" | "HTTPS") {
            report.error(&here.field("scheme"), format!("scheme {:?} must be HTTP or HTTPS", http.scheme));
        }
        for (i, header) in http.http_headers.iter().enumerate() {
            if !PROBE_HEADER_NAME.is_match(&header.name) {
                report.error(
                    &here.field("httpHeaders").index(i).field("name"),
                    format!("header name {:?} is invalid (letters, digits, '-' and '_' only)", header.name),
                );
            }
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        check_required_port(report, &at.field("tcpSocket").field("port"), tcp.port);
    }
    if let Some(exec) = &probe.exec {
        let here = at.field("exec").field("command");
        if exec.command.is_empty() {
            report.error(&here, "command is required");
        }
        for (i, part) in exec.command.iter().enumerate() {
            if part.is_empty() {
                report.error(&here.index(i), "command arguments must not be empty");
            }
        }
    }
    if let Some(grpc) = &probe.grpc {
        check_required_port(report, &at.field("grpc").field("port"), grpc.port);
    }
}

impl Validate for WorkloadGroup {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        if let Some(meta) = &spec.metadata {
            checks::labels(&meta.labels, report, &at.field("metadata").field("labels"));
            for key in meta.annotations.keys() {
                report.check(
                    &at.field("metadata").field("annotations").key(key),
                    checks::label_key(key).map_err(|e| e.replace("label key", "annotation key")),
                );
            }
        }
        let template_at = at.field("template");
        match &spec.template {
            None => report.error(&template_at, "template is required"),
            Some(template) => {
                if !template.address.is_empty() {
                    report.warning(
                        &template_at.field("address"),
                        "address is set per workload instance; the template's address is ignored",
                    );
                }
                if !template.labels.is_empty() {
                    report.warning(
                        &template_at.field("labels"),
                        "set group labels in spec.metadata.labels, not in the template",
                    );
                }
                let ports_at = template_at.field("ports");
                for (name, number) in &template.ports {
                    report.check(&ports_at.key(name), check_port_name(name));
                    report.check(&ports_at.key(name), checks::port(*number));
                }
                checks::labels(&template.labels, report, &template_at.field("labels"));
            }
        }
        if let Some(probe) = &spec.probe {
            validate_probe(report, &at.field("probe"), probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn we_errors(yaml: &str) -> Vec<String> {
        let spec: WorkloadEntrySpec = serde_saphyr::from_str(yaml).expect("spec decodes");
        WorkloadEntry::new("we", spec).report().errors().map(ToString::to_string).collect()
    }

    #[test]
    fn workload_entry_addresses() {
        let cases: &[(&str, &[&str])] = &[
            ("address: 10.0.0.1", &[]),
            ("address: '2001:db8::1'", &[]),
            ("address: vm1.example.com", &[]),
            ("network: remote", &[]),
            ("address: 'unix://@abstract'", &[]),
            ("address: 'unix:///var/run/app.sock'", &[]),
            (
                "address: 'unix://relative.sock'",
                &["spec.address: unix socket path \"relative.sock\" must be absolute (or an abstract @name)"],
            ),
            (
                "address: 'unix:///var/run/'",
                &["spec.address: unix socket path \"/var/run/\" must name a socket, not a directory"],
            ),
            (
                "address: 'bad_host!'",
                &["spec.address: address \"bad_host!\" is neither an IP address nor a valid host name"],
            ),
            ("labels: {app: a}", &["spec.address: address is required unless network is set"]),
        ];
        for (yaml, want) in cases {
            assert_eq!(&we_errors(yaml), want, "{yaml}");
        }
    }

    #[test]
    fn ports_may_be_quoted() {
        let spec: WorkloadEntrySpec =
            serde_saphyr::from_str("address: 1.2.3.4\nports: {http: '8080', grpc: 9090}").expect("decodes");
        assert_eq!(spec.ports.get("http"), Some(&8080));
        assert_eq!(spec.ports.get("grpc"), Some(&9090));
        assert!(serde_saphyr::from_str::<WorkloadEntrySpec>("ports: {http: eighty}").is_err());
    }
}
