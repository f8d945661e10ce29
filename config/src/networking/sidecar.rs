//! Sidecar: the scope of a proxy (`networking/v1alpha3/sidecar.proto`).

use std::collections::BTreeSet;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;
use super::destination_rule::{ConnectionPoolSettings, validate_connection_pool};
use super::gateway::{
    Port, ServerTlsMode, ServerTlsSettings, bind_ip, is_tls_protocol, scoped_dns_name, unix_address,
    validate_server_tls,
};
use crate::common::{IstioStatus, PortSelector};
use crate::validate::{FieldPath, Report, Validate, checks};

/// `Sidecar` spec: what a workload's proxy listens on and which services it sees.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    namespaced,
    status = "IstioStatus",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Workloads this applies to; all of the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for inbound connections to the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

crate::proto_enum! {
    /// How traffic reaches a listener.
    pub enum CaptureMode {
        Default = 0 => "DEFAULT",
        Iptables = 1 => "IPTABLES",
        None = 2 => "NONE",
    }
}

/// An inbound listener of the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// IP address to bind to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Where to forward: `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT` or `unix://PATH`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener of the proxy and the hosts it exposes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Unset: a catch-all listener for the hosts' own ports (must be last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// IP address or `unix://` socket to bind to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Hosts in `namespace/dnsName` form (`./*`, `istio-system/*`, `*/foo.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

crate::proto_enum! {
    /// What happens to traffic for destinations the registry does not know.
    pub enum OutboundTrafficPolicyMode {
        RegistryOnly = 0 => "REGISTRY_ONLY",
        AllowAny = 1 => "ALLOW_ANY",
    }
}

/// Handling of outbound traffic to unknown destinations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficPolicyMode>,
    /// Where unknown traffic goes with ALLOW_ANY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<EgressProxy>,
}

/// A destination (`host`, `subset`, `port`) for unknown outbound traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressProxy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Validate for Sidecar {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        if let Some(selector) = &spec.workload_selector {
            checks::selector_labels(&selector.labels, report, &at.field("workloadSelector").field("labels"));
        }
        if spec.ingress.is_empty()
            && spec.egress.is_empty()
            && spec.inbound_connection_pool.is_none()
            && spec.outbound_traffic_policy.is_none()
        {
            report.error(
                &at,
                "sidecar is empty: set at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
            );
            return;
        }
        let mut ports = BTreeSet::new();
        for (i, listener) in spec.ingress.iter().enumerate() {
            validate_ingress(listener, &at.field("ingress").index(i), &mut ports, report);
        }
        let mut ports = BTreeSet::new();
        let mut sockets = BTreeSet::new();
        let mut catch_all_seen = false;
        let last = spec.egress.len().saturating_sub(1);
        for (i, listener) in spec.egress.iter().enumerate() {
            let at = at.field("egress").index(i);
            match &listener.port {
                None => {
                    if catch_all_seen {
                        report.error(&at, "only one egress listener may omit the port");
                    } else if i != last {
                        report.error(&at, "the egress listener without a port must be the last one");
                    }
                    catch_all_seen = true;
                    if !listener.bind.is_empty() {
                        report.error(&at.field("bind"), "bind needs a port; set port or remove bind");
                    }
                }
                Some(port) => validate_egress_port(listener, port, &at, &mut ports, &mut sockets, report),
            }
            if listener.hosts.is_empty() {
                report.error(&at.field("hosts"), "an egress listener needs at least one host");
            }
            for (j, host) in listener.hosts.iter().enumerate() {
                report.check(&at.field("hosts").index(j), egress_host(host));
            }
        }
        if let Some(pool) = &spec.inbound_connection_pool {
            validate_connection_pool(pool, &at.field("inboundConnectionPool"), report);
        }
        if let Some(policy) = &spec.outbound_traffic_policy {
            validate_outbound_policy(policy, &at.field("outboundTrafficPolicy"), report);
        }
    }
}

/// Port name (a DNS-1123 label when set) and protocol; the number is checked by the caller.
fn validate_listener_port(port: &Port, at: &FieldPath, report: &mut Report) {
    if !port.name.is_empty() {
        report.check(&at.field("name"), checks::dns1123_label(&port.name).map_err(|e| format!("port name {e}")));
    }
    report.check(&at.field("protocol"), checks::protocol(&port.protocol, true));
}

fn validate_ingress(listener: &IstioIngressListener, at: &FieldPath, ports: &mut BTreeSet<u32>, report: &mut Report) {
    let Some(port) = &listener.port else {
        report.error(&at.field("port"), "port is required for ingress listeners");
        return;
    };
    let port_at = at.field("port");
    validate_listener_port(port, &port_at, report);
    match port.number {
        None => report.error(&port_at.field("number"), "port number is required"),
        Some(n) => {
            report.check(&port_at.field("number"), checks::port(n));
            if !ports.insert(n) {
                report.error(&port_at.field("number"), format!("port {n} is used by another ingress listener"));
            }
        }
    }
    if !listener.bind.is_empty() {
        report.check(&at.field("bind"), bind_ip(&listener.bind));
    }
    if !listener.default_endpoint.is_empty() {
        report.check(&at.field("defaultEndpoint"), default_endpoint(&listener.default_endpoint));
    }
    if let Some(tls) = &listener.tls {
        let tls_at = at.field("tls");
        let mode = tls.mode.unwrap_or_default();
        if matches!(mode, ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough) {
            report.error(&tls_at.field("mode"), format!("mode {mode} is not supported on sidecar ingress listeners"));
        }
        if !tls.subject_alt_names.is_empty() {
            report.error(
                &tls_at.field("subjectAltNames"),
                "subjectAltNames is not supported on sidecar ingress listeners",
            );
        }
        if tls.https_redirect {
            report.error(&tls_at.field("httpsRedirect"), "httpsRedirect is not supported on sidecar ingress listeners");
        }
        if !tls.credential_name.is_empty() {
            report.error(
                &tls_at.field("credentialName"),
                "credentialName is not supported on sidecar ingress listeners; use file paths",
            );
        }
        // As upstream: a sidecar is not given Secrets, and its ingress takes one certificate pair.
        if !tls.credential_names.is_empty() {
            report.error(
                &tls_at.field("credentialNames"),
                "credentialNames is not supported on sidecar ingress listeners; use file paths",
            );
        }
        if !tls.tls_certificates.is_empty() {
            report.error(
                &tls_at.field("tlsCertificates"),
                "tlsCertificates is not supported on sidecar ingress listeners; use serverCertificate and privateKey",
            );
        }
        if !tls.ca_cert_credential_name.is_empty() {
            report.warning(
                &tls_at.field("caCertCredentialName"),
                "caCertCredentialName is not read for sidecar ingress listeners; use caCertificates",
            );
        }
        if !is_tls_protocol(&port.protocol) {
            report.error(
                &tls_at,
                format!("tls settings are only allowed on HTTPS and TLS ports, not {}", port.protocol.to_uppercase()),
            );
        }
        if !matches!(mode, ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough) {
            validate_server_tls(tls, &tls_at, report);
        }
    }
    if let Some(pool) = &listener.connection_pool {
        validate_connection_pool(pool, &at.field("connectionPool"), report);
    }
}

fn validate_egress_port(
    listener: &IstioEgressListener,
    port: &Port,
    at: &FieldPath,
    ports: &mut BTreeSet<u32>,
    sockets: &mut BTreeSet<String>,
    report: &mut Report,
) {
    let port_at = at.field("port");
    validate_listener_port(port, &port_at, report);
    match port.number.unwrap_or(0) {
        0 => {
            // Port 0: a Unix domain socket listener.
            match listener.bind.strip_prefix("unix://") {
                None => report.error(&at.field("bind"), "a listener with port 0 needs a unix:// bind address"),
                Some(address) => {
                    report.check(&at.field("bind"), unix_address(address));
                    if !sockets.insert(listener.bind.clone()) {
                        report.error(
                            &at.field("bind"),
                            format!("socket {:?} is used by another egress listener", listener.bind),
                        );
                    }
                }
            }
            if matches!(listener.capture_mode, Some(CaptureMode::Iptables)) {
                report.error(&at.field("captureMode"), "captureMode must be DEFAULT or NONE for unix socket listeners");
            }
        }
        n => {
            report.check(&port_at.field("number"), checks::port(n));
            if !listener.bind.is_empty() {
                report.check(&at.field("bind"), bind_ip(&listener.bind));
            }
            if !ports.insert(n) {
                report.error(&port_at.field("number"), format!("port {n} is used by another egress listener"));
            }
        }
    }
}

/// `namespace/dnsName`, namespace `*`, `.`, `~` or a namespace name.
fn egress_host(value: &str) -> Result<(), String> {
    let Some((namespace, host)) = value.split_once('/') else {
        return Err(format!("host {value:?} must be of the form namespace/dnsName (e.g. ./*, istio-system/*)"));
    };
    if namespace.is_empty() || host.is_empty() {
        return Err(format!("host {value:?} must have a non-empty namespace and host"));
    }
    if !matches!(namespace, "*" | "." | "~") {
        checks::dns1123_label(namespace).map_err(|_| {
            format!("namespace {namespace:?} of host {value:?} must be \"*\", \".\", \"~\" or a namespace name")
        })?;
    }
    scoped_dns_name(host, false)
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix://PATH`.
fn default_endpoint(value: &str) -> Result<(), String> {
    if let Some(address) = value.strip_prefix("unix://") {
        return unix_address(address);
    }
    let shape = || {
        format!("defaultEndpoint {value:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix://PATH")
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(shape)?;
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]") {
        return Err(shape());
    }
    let number: u32 = port.parse().map_err(|_| format!("defaultEndpoint {value:?} has a port that is not a number"))?;
    checks::port(number)
}

fn validate_outbound_policy(policy: &OutboundTrafficPolicy, at: &FieldPath, report: &mut Report) {
    let Some(proxy) = &policy.egress_proxy else {
        return;
    };
    let at = at.field("egressProxy");
    if policy.mode != Some(OutboundTrafficPolicyMode::AllowAny) {
        report.error(&at, "egressProxy can only be set with mode ALLOW_ANY");
        return;
    }
    report.check(&at.field("host"), checks::fqdn(&proxy.host));
    if !proxy.subset.is_empty() {
        report.check(&at.field("subset"), checks::dns1123_label(&proxy.subset).map_err(|e| format!("subset name {e}")));
    }
    match proxy.port.as_ref().and_then(|p| p.number) {
        None => report.error(&at.field("port").field("number"), "egressProxy needs a port number"),
        Some(n) => report.check(&at.field("port").field("number"), checks::port(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints() {
        for ok in [
            "127.0.0.1:8080",
            "0.0.0.0:80",
            "[::1]:9090",
            "[::]:9090",
            ":8080",
            "unix:///var/run/app.sock",
            "unix://@abstract",
        ] {
            assert_eq!(default_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in
            ["10.0.0.1:8080", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "unix://relative/path", "localhost:8080"]
        {
            assert!(default_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn egress_hosts() {
        for ok in ["./*", "istio-system/*", "*/foo.example.com", "~/*", "prod/*.example.com"] {
            assert_eq!(egress_host(ok), Ok(()), "{ok}");
        }
        for bad in ["*", "foo.example.com", "./reviews", "Prod/*", "./", "/*"] {
            assert!(egress_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crd_names_and_schema() {
        use kube::CustomResourceExt;
        let crd = Sidecar::crd();
        assert_eq!(crd.spec.names.short_names, None);
        assert_eq!(crate::crds::structural_problems(&crd), Vec::<String>::new());
    }
}
