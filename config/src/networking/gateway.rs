//! Gateway: servers at the edge of the mesh (`networking/v1alpha3/gateway.proto`).
//!
//! [`Port`] and [`ServerTlsSettings`] are shared with Sidecar's listeners.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::validate::checks::ProtocolKind;
use crate::validate::{FieldPath, Report, Validate, checks};

/// `Gateway` spec: the servers a set of gateway proxies expose.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "IstioStatus",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// The servers (listeners) of the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Labels of the gateway pods this configuration applies to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One listener: a port, the hosts it serves and its TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// IP address or `unix://` socket to listen on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// Hosts served, as `host` or `namespace/host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// Optional server name, used in stats.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A listener port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, UDP, MONGO, REDIS or MYSQL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated.
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

crate::proto_enum! {
    /// How a server handles TLS.
    pub enum ServerTlsMode {
        Passthrough = 0 => "PASSTHROUGH",
        Simple = 1 => "SIMPLE",
        Mutual = 2 => "MUTUAL",
        AutoPassthrough = 3 => "AUTO_PASSTHROUGH",
        IstioMutual = 4 => "ISTIO_MUTUAL",
        OptionalMutual = 5 => "OPTIONAL_MUTUAL",
    }
}

crate::proto_enum! {
    /// TLS protocol versions.
    pub enum TlsProtocol {
        TlsAuto = 0 => "TLS_AUTO",
        TlsV1_0 = 1 => "TLSV1_0",
        TlsV1_1 = 2 => "TLSV1_1",
        TlsV1_2 = 3 => "TLSV1_2",
        TlsV1_3 = 4 => "TLSV1_3",
    }
}

/// TLS settings of a server (or of a Sidecar ingress listener).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP requests to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
    /// Secret holding the server certificate, key and CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Up to two secrets (e.g. one RSA and one ECDSA certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Up to two certificate/key file pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// MUTUAL: the Secret (or ConfigMap) whose CA certificates verify clients, over the CA of
    /// the `credentialName` Secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_cert_credential_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// A certificate and key given as file paths.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
}

/// Whether a protocol carries TLS (HTTPS, TLS).
pub(crate) fn is_tls_protocol(name: &str) -> bool {
    checks::protocol_kind(name) == Some(ProtocolKind::Tls)
}

fn is_http_protocol(name: &str) -> bool {
    checks::protocol_kind(name) == Some(ProtocolKind::Http)
}

/// A `unix://` address after the scheme: an absolute path or an abstract name (`@name`).
pub(crate) fn unix_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("unix socket address must not be empty".into());
    }
    if address.len() > 103 {
        return Err(format!("unix socket address {address:?} is longer than 103 characters"));
    }
    if !(address.starts_with('/') || address.starts_with('@')) {
        return Err(format!(
            "unix socket address {address:?} must be an absolute path or an abstract name starting with '@'"
        ));
    }
    Ok(())
}

/// An IP address to bind to.
pub(crate) fn bind_ip(bind: &str) -> Result<(), String> {
    bind.parse::<IpAddr>().map(drop).map_err(|_| format!("bind {bind:?} must be an IP address"))
}

/// The host part of a Gateway or Sidecar host: `*`, or a fully qualified (optionally wildcard)
/// name; gateways also accept an IP address.
pub(crate) fn scoped_dns_name(host: &str, allow_ip: bool) -> Result<(), String> {
    if allow_ip && host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host != "*" && !host.contains('.') {
        return Err(format!("host {host:?} is a short name; use a fully qualified name or a wildcard"));
    }
    checks::wildcard_host(host)
}

/// A Gateway server host: `host` or `namespace/host`, namespace `*`, `.` or a namespace name.
fn gateway_host(value: &str) -> Result<(), String> {
    let Some((namespace, host)) = value.split_once('/') else {
        return scoped_dns_name(value, true);
    };
    if namespace.is_empty() || host.is_empty() {
        return Err(format!("host {value:?} must have a non-empty namespace and host"));
    }
    if !matches!(namespace, "*" | ".") {
        checks::dns1123_label(namespace).map_err(|_| {
            format!("namespace {namespace:?} of host {value:?} must be \"*\", \".\" or a namespace name")
        })?;
    }
    scoped_dns_name(host, true)
}

impl Validate for Gateway {
    fn validate(&self, report: &mut Report) {
        let at = FieldPath::spec();
        if let Some(name) = &self.metadata.name
            && let Err(e) = checks::dns1123_label(name)
        {
            report.error(&FieldPath::new("metadata").field("name"), format!("gateway name {e}"));
        }
        let spec = &self.spec;
        if spec.servers.is_empty() {
            report.error(&at.field("servers"), "a gateway needs at least one server");
        }
        let mut port_names = BTreeSet::new();
        for (i, server) in spec.servers.iter().enumerate() {
            let at = at.field("servers").index(i);
            validate_server(server, &at, report);
            if let Some(port) = &server.port {
                if !port.name.is_empty() && !port_names.insert(port.name.as_str()) {
                    report.error(
                        &at.field("port").field("name"),
                        format!("duplicate port name {:?}; port names must be unique across servers", port.name),
                    );
                }
                if server.tls.as_ref().is_some_and(|t| t.https_redirect) && !is_http_protocol(&port.protocol) {
                    report.warning(
                        &at.field("tls").field("httpsRedirect"),
                        "httpsRedirect only has an effect on HTTP servers",
                    );
                }
            }
        }
        checks::labels(&spec.selector, report, &at.field("selector"));
    }
}

fn validate_server(server: &Server, at: &FieldPath, report: &mut Report) {
    if server.hosts.is_empty() {
        report.error(&at.field("hosts"), "a server needs at least one host");
    }
    for (i, host) in server.hosts.iter().enumerate() {
        report.check(&at.field("hosts").index(i), gateway_host(host));
    }
    let unix_bind = server.bind.strip_prefix("unix://");
    let port_ok = match &server.port {
        None => {
            report.error(&at.field("port"), "port is required");
            false
        }
        Some(port) => {
            let at = at.field("port");
            let mut ok = true;
            match (port.number, unix_bind) {
                (None | Some(0), Some(_)) => {}
                (Some(n), Some(_)) => {
                    report.error(&at.field("number"), format!("port number must be 0 for a unix socket bind, not {n}"))
                }
                (None, None) => {
                    report.error(&at.field("number"), "port number is required");
                    ok = false;
                }
                (Some(n), None) => {
                    if let Err(e) = checks::port(n) {
                        report.error(&at.field("number"), e);
                        ok = false;
                    }
                }
            }
            if let Err(e) = checks::protocol(&port.protocol, true) {
                report.error(&at.field("protocol"), e);
                ok = false;
            }
            if port.name.is_empty() {
                report.error(&at.field("name"), "port name is required");
            }
            if port.target_port.is_some_and(|p| p != 0) {
                report.error(&at.field("targetPort"), "targetPort has no effect on gateways; remove it");
            }
            ok
        }
    };
    match unix_bind {
        Some(address) => report.check(&at.field("bind"), unix_address(address)),
        None if !server.bind.is_empty() => report.check(&at.field("bind"), bind_ip(&server.bind)),
        None => {}
    }
    if let Some(tls) = &server.tls {
        validate_server_tls(tls, &at.field("tls"), report);
    }
    if let (true, Some(port)) = (port_ok, &server.port) {
        let tls_port = is_tls_protocol(&port.protocol);
        match &server.tls {
            None if tls_port => {
                report.error(&at.field("tls"), format!("{} servers need tls settings", port.protocol.to_uppercase()))
            }
            Some(tls) if !tls_port => {
                let passthrough =
                    matches!(tls.mode.unwrap_or_default(), ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough);
                if is_http_protocol(&port.protocol) {
                    let files = !tls.server_certificate.is_empty()
                        || !tls.private_key.is_empty()
                        || !tls.ca_certificates.is_empty();
                    if !passthrough || files {
                        report.error(
                            &at.field("tls"),
                            "plain-text HTTP servers may only set tls.httpsRedirect; use protocol HTTPS to terminate TLS",
                        );
                    }
                } else {
                    report.error(
                        &at.field("tls"),
                        format!(
                            "tls settings are only allowed on HTTPS and TLS servers, not {}",
                            port.protocol.to_uppercase()
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Checks server-side TLS settings (Gateway servers and Sidecar ingress listeners).
pub(crate) fn validate_server_tls(tls: &ServerTlsSettings, at: &FieldPath, report: &mut Report) {
    let mode = tls.mode.unwrap_or_default();
    let files = [
        ("serverCertificate", !tls.server_certificate.is_empty()),
        ("privateKey", !tls.private_key.is_empty()),
        ("caCertificates", !tls.ca_certificates.is_empty()),
    ];
    let sources = [
        ("credentialName", !tls.credential_name.is_empty()),
        ("credentialNames", !tls.credential_names.is_empty()),
        ("tlsCertificates", !tls.tls_certificates.is_empty()),
    ];
    let set_sources: Vec<&str> = sources.iter().filter_map(|(name, set)| set.then_some(*name)).collect();
    if set_sources.len() > 1 {
        report.error(
            at,
            format!(
                "only one of credentialName, credentialNames and tlsCertificates may be set, found {}",
                set_sources.join(", ")
            ),
        );
    }
    if tls.credential_names.len() > 2 {
        report.error(
            &at.field("credentialNames"),
            format!("at most 2 credentialNames may be set, found {}", tls.credential_names.len()),
        );
    }
    if tls.tls_certificates.len() > 2 {
        report.error(
            &at.field("tlsCertificates"),
            format!("at most 2 tlsCertificates may be set, found {}", tls.tls_certificates.len()),
        );
    }
    for (i, cert) in tls.tls_certificates.iter().enumerate() {
        let at = at.field("tlsCertificates").index(i);
        if cert.server_certificate.is_empty() {
            report.error(&at.field("serverCertificate"), "serverCertificate is required");
        }
        if cert.private_key.is_empty() {
            report.error(&at.field("privateKey"), "privateKey is required");
        }
    }
    let ca_credential = !tls.ca_cert_credential_name.is_empty();
    match mode {
        ServerTlsMode::IstioMutual => {
            let others = [("caCrl", !tls.ca_crl.is_empty()), ("caCertCredentialName", ca_credential)];
            for (name, set) in files.iter().chain(sources.iter()).chain(others.iter()) {
                if *set {
                    report.error(
                        &at.field(name),
                        format!("{name} must not be set with ISTIO_MUTUAL, which uses Istio's own certificates"),
                    );
                }
            }
        }
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => {
            for (name, set) in
                files.iter().chain(sources.iter()).chain([("caCertCredentialName", ca_credential)].iter())
            {
                if *set {
                    report.warning(
                        &at.field(name),
                        format!("{name} is ignored in {mode} mode, which does not terminate TLS"),
                    );
                }
            }
        }
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if set_sources.is_empty() {
                if tls.server_certificate.is_empty() {
                    report.error(
                        &at.field("serverCertificate"),
                        format!("{mode} TLS needs credentialName or serverCertificate and privateKey"),
                    );
                }
                if tls.private_key.is_empty() {
                    report.error(
                        &at.field("privateKey"),
                        format!("{mode} TLS needs credentialName or serverCertificate and privateKey"),
                    );
                }
                if mode != ServerTlsMode::Simple && tls.ca_certificates.is_empty() && !ca_credential {
                    report.error(
                        &at.field("caCertificates"),
                        format!("{mode} TLS needs caCertificates (or credentialName) to verify clients"),
                    );
                }
            }
            if mode == ServerTlsMode::Simple && ca_credential {
                report.warning(
                    &at.field("caCertCredentialName"),
                    "caCertCredentialName is ignored in SIMPLE mode, which does not verify clients",
                );
            }
            if ca_credential && !tls.ca_certificates.is_empty() {
                report.error(
                    &at.field("caCertCredentialName"),
                    "only one of caCertificates and caCertCredentialName may be set",
                );
            }
            if !tls.ca_crl.is_empty() && !tls.credential_name.is_empty() {
                report.error(
                    &at.field("caCrl"),
                    "caCrl cannot be combined with credentialName; put the CRL in the secret",
                );
            }
        }
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && max != TlsProtocol::TlsAuto
        && min.number() > max.number()
    {
        report.error(
            &at.field("minProtocolVersion"),
            format!("minProtocolVersion {min} is above maxProtocolVersion {max}"),
        );
    }
    let mut suites = BTreeSet::new();
    for (i, suite) in tls.cipher_suites.iter().enumerate() {
        if !suites.insert(suite.as_str()) {
            report.warning(&at.field("cipherSuites").index(i), format!("duplicate cipher suite {suite:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_hosts() {
        for ok in
            ["*", "*.example.com", "uk.bookinfo.com", "./foo.example.com", "prod/*", "*/*.example.com", "10.0.0.1"]
        {
            assert_eq!(gateway_host(ok), Ok(()), "{ok}");
        }
        for bad in ["bookinfo", "~/foo.com", "prod/", "/foo.com", "Prod/foo.com", "foo.*.com"] {
            assert!(gateway_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protocols_are_case_insensitive() {
        assert!(is_http_protocol("grpc-web"));
        assert!(is_tls_protocol("tls"));
        assert!(!is_tls_protocol("HTTP"));
    }

    #[test]
    fn crd_names_and_schema() {
        use kube::CustomResourceExt;
        let crd = Gateway::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["gw".to_owned()]));
        assert_eq!(crate::crds::structural_problems(&crd), Vec::<String>::new());
    }
}
