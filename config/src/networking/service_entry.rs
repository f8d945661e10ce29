//! ServiceEntry: services outside the registry (`networking/v1alpha3/service_entry.proto`).

use std::collections::BTreeSet;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;
use super::workload::{WorkloadEntrySpec, validate_workload_entry};
use crate::common::IstioStatus;
use crate::validate::checks::ProtocolKind;
use crate::validate::{self, FieldPath, Report, Validate, checks};

crate::proto_enum! {
    /// Whether the service is part of the mesh.
    pub enum Location {
        MeshExternal = 0 => "MESH_EXTERNAL",
        MeshInternal = 1 => "MESH_INTERNAL",
    }
}

crate::proto_enum! {
    /// How the proxy finds the addresses of the service's endpoints.
    pub enum Resolution {
        None = 0 => "NONE",
        Static = 1 => "STATIC",
        Dns = 2 => "DNS",
        DnsRoundRobin = 3 => "DNS_ROUND_ROBIN",
        DynamicDns = 4 => "DYNAMIC_DNS",
    }
}

/// `ServiceEntry` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    namespaced,
    status = "IstioStatus",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Hosts","type":"string","description":"The hosts of the service entry","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Location","type":"string","description":"MESH_EXTERNAL or MESH_INTERNAL","jsonPath":".spec.location"}"#,
    printcolumn = r#"{"name":"Resolution","type":"string","description":"How endpoint addresses are resolved","jsonPath":".spec.resolution"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service; a leading `*.` wildcard is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDR blocks of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// Endpoints of the service (exclusive with workloadSelector).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Selects pods or WorkloadEntries as endpoints (exclusive with endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the service is visible to (`.`, `*`, `~` or names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Subject alternative names to verify on the server certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort`: one port of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, UDP, MONGO, REDIS or MYSQL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Endpoint port; defaults to `number`.
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

impl ServiceEntrySpec {
    pub fn resolution(&self) -> Resolution {
        self.resolution.unwrap_or_default()
    }
    pub fn location(&self) -> Location {
        self.location.unwrap_or_default()
    }
}

/// A port name: a DNS-1123 label.
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    checks::dns1123_label(name).map_err(|e| format!("invalid port name: {e}"))
}

/// Extra host rules on top of `checks::wildcard_host`: the last label may not be all digits
/// (which rules out IP addresses as host names).
fn check_se_host(host: &str) -> Result<(), String> {
    checks::wildcard_host(host)?;
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let last = trimmed.rsplit('.').next().unwrap_or(trimmed);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("host {host:?} is invalid: the top-level label {last:?} must not be all digits"));
    }
    Ok(())
}

impl Validate for ServiceEntry {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        let resolution = spec.resolution();

        if let Some(selector) = &spec.workload_selector {
            let sel_at = at.field("workloadSelector");
            checks::selector_labels(&selector.labels, report, &sel_at.field("labels"));
            if !spec.endpoints.is_empty() {
                report.error(&sel_at, "only one of workloadSelector or endpoints may be set");
            }
        }

        let hosts_at = at.field("hosts");
        if spec.hosts.is_empty() {
            report.error(&hosts_at, "at least one host is required");
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            let here = hosts_at.index(i);
            if host == "*" {
                report.error(&here, "host \"*\" is not allowed; use a name or a \"*.domain\" wildcard");
                continue;
            }
            if let Err(e) = check_se_host(host) {
                report.error(&here, e);
                continue;
            }
            if host.starts_with('*') && !host.starts_with("*.") {
                report.warning(&here, format!("partial wildcard host {host:?} is not supported; use \"*.domain\""));
            }
        }

        let addresses_at = at.field("addresses");
        let mut cidr = false;
        for (i, address) in spec.addresses.iter().enumerate() {
            cidr |= address.contains('/');
            report.check(&addresses_at.index(i), checks::ip_or_cidr(address));
        }
        if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
            report.error(
                &addresses_at,
                format!("CIDR addresses are only allowed with resolution NONE or STATIC, not {resolution}"),
            );
        }

        let ports_at = at.field("ports");
        let mut port_names = BTreeSet::new();
        let mut port_numbers = BTreeSet::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let here = ports_at.index(i);
            report.check(&here.field("name"), check_port_name(&port.name));
            if !port.name.is_empty() && !port_names.insert(port.name.as_str()) {
                report.error(&here.field("name"), format!("port name {:?} is already used by another port", port.name));
            }
            match port.number {
                None => report.error(&here.field("number"), "port number is required"),
                Some(number) => {
                    report.check(&here.field("number"), checks::port(number));
                    if !port_numbers.insert(number) {
                        report.error(
                            &here.field("number"),
                            format!("port number {number} is already used by another port"),
                        );
                    }
                }
            }
            if let Some(target) = port.target_port {
                report.check(&here.field("targetPort"), checks::port(target));
            }
            report.check(&here.field("protocol"), checks::protocol(&port.protocol, false));
        }
        let declared: Vec<String> = spec.ports.iter().map(|p| p.name.clone()).collect();

        let endpoints_at = at.field("endpoints");
        match resolution {
            Resolution::None => {
                if !spec.endpoints.is_empty() {
                    report.error(&endpoints_at, "endpoints are not allowed with resolution NONE");
                }
                if spec.workload_selector.is_some() {
                    report
                        .warning(&at.field("workloadSelector"), "workloadSelector has no effect with resolution NONE");
                }
            }
            Resolution::Static => {
                if spec.endpoints.is_empty() && spec.workload_selector.is_none() {
                    report.warning(
                        &endpoints_at,
                        "resolution STATIC without endpoints or a workloadSelector has no backends",
                    );
                }
                for (i, endpoint) in spec.endpoints.iter().enumerate() {
                    validate_workload_entry(report, &endpoints_at.index(i), endpoint, Some(&declared), false);
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if spec.endpoints.is_empty() {
                    for (i, host) in spec.hosts.iter().enumerate() {
                        if host != "*" && check_se_host(host).is_ok() && checks::fqdn(host).is_err() {
                            report.error(
                                &hosts_at.index(i),
                                format!(
                                    "host {host:?} must be a fully qualified name without wildcards when resolution is {resolution} and no endpoints are given"
                                ),
                            );
                        }
                    }
                }
                if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                    report.error(
                        &endpoints_at,
                        format!(
                            "resolution DNS_ROUND_ROBIN allows at most one endpoint, found {}",
                            spec.endpoints.len()
                        ),
                    );
                }
                for (i, endpoint) in spec.endpoints.iter().enumerate() {
                    validate_workload_entry(report, &endpoints_at.index(i), endpoint, Some(&declared), true);
                }
            }
            Resolution::DynamicDns => {
                if !spec.endpoints.is_empty() {
                    report.error(&endpoints_at, "endpoints are not allowed with resolution DYNAMIC_DNS");
                }
                if spec.workload_selector.is_some() {
                    report.error(
                        &at.field("workloadSelector"),
                        "workloadSelector is not allowed with resolution DYNAMIC_DNS",
                    );
                }
                if spec.location() != Location::MeshExternal {
                    report.error(&at.field("location"), "resolution DYNAMIC_DNS requires location MESH_EXTERNAL");
                }
                for (i, host) in spec.hosts.iter().enumerate() {
                    if !host.starts_with("*.") {
                        report.error(
                            &hosts_at.index(i),
                            format!("host {host:?} must be a \"*.domain\" wildcard with resolution DYNAMIC_DNS"),
                        );
                    }
                }
            }
        }

        // Without HTTP Host headers or TLS SNI a proxy cannot tell several hosts apart, except
        // with NONE, where hosts are not used for routing.
        if resolution != Resolution::None && spec.hosts.len() > 1 {
            let distinguishable = spec
                .ports
                .iter()
                .all(|p| matches!(checks::protocol_kind(&p.protocol), Some(ProtocolKind::Http | ProtocolKind::Tls)));
            if !distinguishable {
                report.error(
                    &hosts_at,
                    format!("several hosts with resolution {resolution} need every port to be HTTP- or TLS-based"),
                );
            }
        }

        validate::export_to(report, &at.field("exportTo"), &spec.export_to, self.metadata.namespace.as_deref(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> Vec<String> {
        let spec: ServiceEntrySpec = serde_saphyr::from_str(yaml).expect("spec decodes");
        let mut se = ServiceEntry::new("se", spec);
        se.metadata.namespace = Some("ns1".into());
        se.report().errors().map(ToString::to_string).collect()
    }

    #[test]
    fn resolution_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: DNS", &[]),
            (
                "hosts: ['*.example.com']\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: DNS",
                &[
                    "spec.hosts[0]: host \"*.example.com\" must be a fully qualified name without wildcards when resolution is DNS and no endpoints are given",
                ],
            ),
            ("hosts: ['*.example.com']\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: NONE", &[]),
            (
                "hosts: ['*.example.com']\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DYNAMIC_DNS",
                &[],
            ),
            (
                "hosts: [a.example.com]\nresolution: DYNAMIC_DNS\nlocation: MESH_INTERNAL",
                &[
                    "spec.location: resolution DYNAMIC_DNS requires location MESH_EXTERNAL",
                    "spec.hosts[0]: host \"a.example.com\" must be a \"*.domain\" wildcard with resolution DYNAMIC_DNS",
                ],
            ),
            (
                "hosts: [a.example.com, b.example.com]\nports: [{number: 5432, name: pg, protocol: TCP}]\nresolution: NONE",
                &[],
            ),
            (
                "hosts: [a.example.com]\nresolution: STATIC\nendpoints: [{address: 'unix:///var/run/a.sock'}]\nports: [{number: 80, name: http}, {number: 81, name: http2}]",
                &["spec.endpoints[0].address: a unix:// endpoint needs exactly one service port, found 2"],
            ),
            (
                "hosts: [a.example.com]\nresolution: STATIC\nendpoints: [{address: 1.2.3.4, ports: {http: 8080}}]\nports: [{number: 80, name: http}]",
                &[],
            ),
            (
                "hosts: [1.2.3.4]\nresolution: NONE",
                &["spec.hosts[0]: host \"1.2.3.4\" is invalid: the top-level label \"4\" must not be all digits"],
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(&errors_of(yaml), want, "{yaml}");
        }
    }

    #[test]
    fn export_to_rules() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[., '*']",
                &["spec.exportTo: \"*\" exports to every namespace and cannot be combined with other entries"],
            ),
            ("['~']", &[]),
            ("['~', ns2]", &["spec.exportTo: \"~\" exports to no namespace and cannot be combined with other entries"]),
            (
                "[., ns1]",
                &["spec.exportTo[1]: duplicate exportTo entry: \".\" and the own namespace \"ns1\" are the same"],
            ),
            ("[ns2, ns2]", &["spec.exportTo[1]: duplicate exportTo entry \"ns2\""]),
        ];
        for (list, want) in cases {
            let yaml = format!("hosts: [a.example.com]\nexportTo: {list}");
            assert_eq!(&errors_of(&yaml), want, "{list}");
        }
    }
}
