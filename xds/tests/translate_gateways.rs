//! Gateway translation: Gateway servers and the VirtualServices bound to them, read from a
//! config directory as `rudder discovery --config-dir` reads it (Secrets included), become
//! the listeners, routes and SDS secrets of a `router` proxy; a real Envoy (`--mode validate`)
//! accepts them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, common_tls_context, secret,
};
use prost::Message;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::testing::config_dir_snapshot;
use rudder_xds::translate::{self, Resources};
use serde_json::json;

const GATEWAY_IP: &str = "10.1.0.30";

/// httpbin (8000) in `apps`; the ingress gateway workload at [`GATEWAY_IP`] behind a service
/// mapping 80 → 8080 and 443 → 8443; Secrets `httpbin-cred` (with a CA) and `other-cred`.
const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: apps}
spec:
  hosts: [httpbin.apps.svc.cluster.local]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.10}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend-tls, namespace: apps}
spec:
  hosts: [backend.apps.svc.cluster.local]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.11}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  hosts: [istio-ingressgateway.istio-system.svc.cluster.local]
  ports:
  - {number: 80, name: http2, protocol: HTTP, targetPort: 8080}
  - {number: 443, name: https, protocol: HTTPS, targetPort: 8443}
  resolution: STATIC
  endpoints: [{address: 10.1.0.30, labels: {istio: ingressgateway}}]
---
apiVersion: v1
kind: Secret
metadata: {name: httpbin-cred, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: CERT, tls.key: KEY, ca.crt: CA}
---
apiVersion: v1
kind: Secret
metadata: {name: other-cred, namespace: istio-system}
stringData: {cert: OTHER, key: OTHERKEY}
"#;

fn snapshot(extra: &str) -> Snapshot {
    config_dir_snapshot(&[("base.yaml", BASE), ("extra.yaml", extra)], Default::default())
}

fn gateway_proxy() -> Proxy {
    let meta: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(json!({"LABELS": {"istio": "ingressgateway", "app": "istio-ingressgateway"}})).unwrap();
    Proxy::from_node(
        &format!("router~{GATEWAY_IP}~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"),
        &meta,
    )
    .unwrap()
}

fn resources(extra: &str) -> Resources {
    let snapshot = snapshot(extra);
    let proxy = gateway_proxy();
    translate::for_proxy(&snapshot, &proxy)
}

fn listener<'r>(r: &'r Resources, name: &str) -> &'r Listener {
    r.listeners.iter().find(|l| l.name == name).unwrap_or_else(|| {
        panic!("no listener {name}; have {:?}", r.listeners.iter().map(|l| &l.name).collect::<Vec<_>>())
    })
}

fn route<'r>(r: &'r Resources, name: &str) -> &'r RouteConfiguration {
    r.routes
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no route {name}; have {:?}", r.routes.iter().map(|c| &c.name).collect::<Vec<_>>()))
}

fn hcm(l: &Listener, chain: usize) -> HttpConnectionManager {
    let Some(ConfigType::TypedConfig(any)) = &l.filter_chains[chain].filters[0].config_type else { panic!() };
    HttpConnectionManager::decode(any.value.as_slice()).unwrap()
}

fn rds_name(h: &HttpConnectionManager) -> &str {
    match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => &rds.route_config_name,
        other => panic!("not RDS: {other:?}"),
    }
}

fn cluster_of(vhost: &VirtualHost) -> &str {
    match &vhost.routes[0].action {
        Some(Action::Route(action)) => match &action.cluster_specifier {
            Some(RouteCluster::Cluster(c)) => c,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

const HTTP_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: apps}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: apps}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /status}}]
    route: [{destination: {host: httpbin, port: {number: 8000}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only, namespace: apps}
spec:
  hosts: [httpbin.example.com]
  http:
  - route: [{destination: {host: httpbin}}]
"#;

#[test]
fn an_http_server_listens_on_the_target_port_and_routes_its_bound_virtual_services() {
    let r = resources(HTTP_GATEWAY);
    assert_eq!(r.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["0.0.0.0_8080"]);
    let l = listener(&r, "0.0.0.0_8080");
    assert_eq!(l.bind_to_port.as_ref().map(|b| b.value), Some(true));
    let h = hcm(l, 0);
    assert_eq!(rds_name(&h), "http.8080");
    assert_eq!(h.use_remote_address.map(|b| b.value), Some(true), "a gateway is the edge");

    let config = route(&r, "http.8080");
    assert_eq!(config.virtual_hosts.len(), 1, "{:?}", config.virtual_hosts);
    let vhost = &config.virtual_hosts[0];
    assert_eq!(vhost.name, "httpbin.example.com:80");
    assert_eq!(vhost.domains, ["httpbin.example.com"]);
    assert_eq!(vhost.routes.len(), 1, "only the VirtualService bound to the gateway");
    assert_eq!(cluster_of(vhost), "outbound|8000||httpbin.apps.svc.cluster.local");
    // Gateways get the clusters of the services they may route to, and no inbound side.
    assert!(r.clusters.iter().any(|c| c.name == "outbound|8000||httpbin.apps.svc.cluster.local"));
    assert!(!r.clusters.iter().any(|c| c.name.starts_with("inbound|")));
    assert!(r.secrets.is_empty());
}

#[test]
fn a_server_without_virtual_services_answers_404_and_sidecars_ignore_gateways() {
    let r = resources(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#,
    );
    let config = route(&r, "http.8080");
    assert_eq!(config.virtual_hosts.len(), 1);
    assert_eq!(config.virtual_hosts[0].name, "blackhole:80");
    assert!(config.virtual_hosts[0].routes.is_empty());

    // A gateway that selects other workloads gives this proxy nothing.
    let other = resources(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#,
    );
    assert!(other.listeners.is_empty() && other.routes.is_empty());
}

#[test]
fn server_hosts_filter_virtual_services_by_namespace_and_wildcard() {
    let r = resources(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["apps/*.example.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: in-apps, namespace: apps}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: httpbin}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: other}
spec:
  hosts: [b.example.com]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: httpbin.apps.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wrong-host, namespace: apps}
spec:
  hosts: [a.example.org]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: httpbin}}]}]
"#,
    );
    let names: Vec<&str> = route(&r, "http.8080").virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a.example.com:80"]);
}

fn tls_context(l: &Listener, chain: usize) -> DownstreamTlsContext {
    let socket = l.filter_chains[chain].transport_socket.as_ref().unwrap();
    let Some(SocketConfig::TypedConfig(any)) = &socket.config_type else { panic!() };
    DownstreamTlsContext::decode(any.value.as_slice()).unwrap()
}

const TLS_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: secure, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [httpbin.example.com]
    tls: {mode: SIMPLE, credentialName: other-cred}
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: httpbin-cred}
  - port: {number: 443, name: https-missing, protocol: HTTPS}
    hosts: [missing.example.com]
    tls: {mode: SIMPLE, credentialName: no-such-cred}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: apps}
spec:
  hosts: [httpbin.example.com, mtls.example.com]
  gateways: [istio-system/secure]
  http: [{route: [{destination: {host: httpbin}}]}]
"#;

#[test]
fn simple_and_mutual_servers_terminate_tls_with_credentials_served_over_sds() {
    let r = resources(TLS_GATEWAY);
    let l = listener(&r, "0.0.0.0_8443");
    // The server whose Secret is missing is left out rather than holding the listener back.
    assert_eq!(l.filter_chains.len(), 2, "{:?}", l.filter_chains);
    let sni: Vec<&[String]> =
        l.filter_chains.iter().map(|c| c.filter_chain_match.as_ref().unwrap().server_names.as_slice()).collect();
    assert_eq!(sni, [&["httpbin.example.com".to_owned()][..], &["mtls.example.com".to_owned()][..]]);
    assert!(l.listener_filters.iter().any(|f| f.name == "envoy.filters.listener.tls_inspector"));

    let simple = tls_context(l, 0);
    let common = simple.common_tls_context.as_ref().unwrap();
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "kubernetes://other-cred");
    assert_eq!(simple.require_client_certificate.map(|b| b.value), Some(false));
    assert_eq!(rds_name(&hcm(l, 0)), "https.443.https.secure.istio-system");

    let mutual = tls_context(l, 1);
    assert_eq!(mutual.require_client_certificate.map(|b| b.value), Some(true));
    match &mutual.common_tls_context.as_ref().unwrap().validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            assert_eq!(sds.name, "kubernetes://httpbin-cred-cacert")
        }
        other => panic!("{other:?}"),
    }

    let secrets: BTreeMap<&str, &secret::Type> =
        r.secrets.iter().map(|s| (s.name.as_str(), s.r#type.as_ref().unwrap())).collect();
    assert_eq!(
        secrets.keys().copied().collect::<Vec<_>>(),
        ["kubernetes://httpbin-cred", "kubernetes://httpbin-cred-cacert", "kubernetes://other-cred"]
    );
    match secrets["kubernetes://other-cred"] {
        secret::Type::TlsCertificate(cert) => {
            let chain = cert.certificate_chain.as_ref().unwrap().specifier.as_ref().unwrap();
            assert_eq!(
                chain,
                &envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b"OTHER".to_vec())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(secrets["kubernetes://httpbin-cred-cacert"], secret::Type::ValidationContext(_)));

    // Port 80 redirects to HTTPS.
    let redirect = route(&r, "http.8080");
    assert_eq!(redirect.virtual_hosts[0].name, "httpbin.example.com:80");
    assert_eq!(redirect.virtual_hosts[0].require_tls, TlsRequirementType::All as i32);
}

#[test]
fn passthrough_routes_by_sni_to_the_backend() {
    let r = resources(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: pass, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [backend.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: apps}
spec:
  hosts: [backend.example.com]
  gateways: [istio-system/pass]
  tls:
  - match: [{port: 443, sniHosts: [backend.example.com]}]
    route: [{destination: {host: backend, port: {number: 443}}}]
"#,
    );
    let l = listener(&r, "0.0.0.0_8443");
    assert_eq!(l.filter_chains.len(), 1);
    let chain = &l.filter_chains[0];
    assert_eq!(chain.filter_chain_match.as_ref().unwrap().server_names, ["backend.example.com"]);
    assert!(chain.transport_socket.is_none(), "passthrough does not terminate TLS");
    let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
    let proxy = TcpProxy::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        proxy.cluster_specifier,
        Some(ClusterSpecifier::Cluster("outbound|443||backend.apps.svc.cluster.local".into()))
    );
}

#[test]
fn envoy_accepts_a_gateways_listeners_and_routes() {
    let r = resources(TLS_GATEWAY);
    // Envoy validates listeners with their routes inline; RDS and SDS names resolve at run time,
    // so inline the routes here and check the secrets' shape on their own.
    let mut listeners = r.listeners.clone();
    for l in &mut listeners {
        for chain in &mut l.filter_chains {
            let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { continue };
            let Ok(mut h) = HttpConnectionManager::decode(any.value.as_slice()) else { continue };
            if let Some(RouteSpecifier::Rds(rds)) = &h.route_specifier {
                let config = route(&r, &rds.route_config_name).clone();
                h.route_specifier = Some(RouteSpecifier::RouteConfig(config));
                chain.filters[0].config_type = Some(ConfigType::TypedConfig(envoy_types::util::pack_any(h)));
            }
        }
    }
    rudder_xds::testing::envoy_accepts(r.clusters.clone(), listeners).unwrap();
}

/// The TLS context of the filter chain serving SNI `host`.
fn common_tls_for(l: &Listener, host: &str) -> CommonTlsContext {
    let chain = l
        .filter_chains
        .iter()
        .position(|c| c.filter_chain_match.as_ref().unwrap().server_names.iter().any(|n| n == host))
        .unwrap_or_else(|| panic!("no chain for {host}"));
    tls_context(l, chain).common_tls_context.unwrap()
}

/// MUTUAL servers check a client certificate's SANs, SPKI pins and hash pins beside the CA,
/// whether the CA comes over SDS (credentialName) or from files; a file server also its `caCrl`.
#[test]
fn mutual_servers_pin_client_certificates_and_read_a_crl() {
    const SPKI: &str = "NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=";
    const HASH: &str = "df6ff72fe9116521268f6f2dd4966f51df479883fe7037b39f75916ac3049d1a";
    let gateway = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: pinned, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-sds, protocol: HTTPS}}
    hosts: [sds.example.com]
    tls: {{mode: MUTUAL, credentialName: httpbin-cred, subjectAltNames: [client.example.com],
          verifyCertificateSpki: ["{SPKI}"], verifyCertificateHash: ["{HASH}"]}}
  - port: {{number: 443, name: https-files, protocol: HTTPS}}
    hosts: [files.example.com]
    tls: {{mode: MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key,
          caCertificates: /etc/certs/ca.crt, verifyCertificateHash: ["{HASH}"], caCrl: /etc/certs/crl.pem}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pinned, namespace: apps}}
spec:
  hosts: [sds.example.com, files.example.com]
  gateways: [istio-system/pinned]
  http: [{{route: [{{destination: {{host: httpbin}}}}]}}]
"#
    );
    let r = resources(&gateway);
    let l = listener(&r, "0.0.0.0_8443");
    let by_sni = |host: &str| common_tls_for(l, host).validation_context_type.unwrap();
    match by_sni("sds.example.com") {
        common_tls_context::ValidationContextType::CombinedValidationContext(combined) => {
            assert_eq!(combined.validation_context_sds_secret_config.unwrap().name, "kubernetes://httpbin-cred-cacert");
            let checks = combined.default_validation_context.unwrap();
            assert_eq!(checks.verify_certificate_spki, [SPKI]);
            assert_eq!(checks.verify_certificate_hash, [HASH]);
            assert_eq!(checks.match_typed_subject_alt_names.len(), 1);
            assert!(checks.crl.is_none());
        }
        other => panic!("{other:?}"),
    }
    match by_sni("files.example.com") {
        common_tls_context::ValidationContextType::ValidationContext(context) => {
            assert!(context.trusted_ca.is_some());
            assert_eq!(context.verify_certificate_hash, [HASH]);
            assert!(context.verify_certificate_spki.is_empty());
            let crl = context.crl.unwrap().specifier.unwrap();
            assert_eq!(
                crl,
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename("/etc/certs/crl.pem".into())
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Two certificates per server (e.g. RSA and ECDSA): `credentialNames` as two SDS secrets,
/// `tlsCertificates` as two file pairs; Envoy picks the one the client supports.
#[test]
fn servers_carry_two_certificates_from_credential_names_or_files() {
    let gateway = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: dual, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-sds, protocol: HTTPS}
    hosts: [sds.example.com]
    tls: {mode: MUTUAL, credentialNames: [httpbin-cred, other-cred]}
  - port: {number: 443, name: https-files, protocol: HTTPS}
    hosts: [files.example.com]
    tls:
      mode: SIMPLE
      tlsCertificates:
      - {serverCertificate: /etc/certs/rsa.crt, privateKey: /etc/certs/rsa.key}
      - {serverCertificate: /etc/certs/ec.crt, privateKey: /etc/certs/ec.key}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dual, namespace: apps}
spec:
  hosts: [sds.example.com, files.example.com]
  gateways: [istio-system/dual]
  http: [{route: [{destination: {host: httpbin}}]}]
"#;
    let r = resources(gateway);
    let l = listener(&r, "0.0.0.0_8443");
    let common = |host: &str| common_tls_for(l, host);
    let sds = common("sds.example.com");
    let names: Vec<&str> = sds.tls_certificate_sds_secret_configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kubernetes://httpbin-cred", "kubernetes://other-cred"]);
    match sds.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(ca)) => {
            assert_eq!(ca.name, "kubernetes://httpbin-cred-cacert", "the first credential's CA verifies clients")
        }
        other => panic!("{other:?}"),
    }
    let served: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
    assert!(served.contains(&"kubernetes://httpbin-cred") && served.contains(&"kubernetes://other-cred"), "{served:?}");

    let files = common("files.example.com");
    let chains: Vec<_> = files
        .tls_certificates
        .iter()
        .map(|c| c.certificate_chain.as_ref().unwrap().specifier.clone().unwrap())
        .collect();
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename;
    assert_eq!(chains, [Filename("/etc/certs/rsa.crt".into()), Filename("/etc/certs/ec.crt".into())]);
}

/// `caCertCredentialName`: a MUTUAL server's client CA from another Secret than its
/// certificate's (which here has no CA at all).
#[test]
fn a_mutual_server_takes_its_client_ca_from_ca_cert_credential_name() {
    let gateway = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cacred, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-ca, protocol: HTTPS}
    hosts: [ca.example.com]
    tls: {mode: MUTUAL, credentialName: other-cred, caCertCredentialName: httpbin-cred}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cacred, namespace: apps}
spec:
  hosts: [ca.example.com]
  gateways: [istio-system/cacred]
  http: [{route: [{destination: {host: httpbin}}]}]
"#;
    let r = resources(gateway);
    let l = listener(&r, "0.0.0.0_8443");
    let common = tls_context(l, 0).common_tls_context.unwrap();
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "kubernetes://other-cred");
    match common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(ca)) => {
            assert_eq!(ca.name, "kubernetes://httpbin-cred-cacert")
        }
        other => panic!("{other:?}"),
    }
    let served: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(served, ["kubernetes://httpbin-cred-cacert", "kubernetes://other-cred"]);
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// A MUTUAL server's client CA carries the revocation list of the Secret it comes from
/// (`ca.crl` beside `ca.crt`, or `crl` beside `cacert` in a `-cacert` Secret), inline as the CA
/// is. A CRL that is not PEM leaves out the MUTUAL server verifying clients with it (rather
/// than admitting revoked clients), while the same Secret's certificate still serves a SIMPLE
/// server and the other servers are untouched.
#[test]
fn a_mutual_servers_client_ca_carries_the_crl_of_its_secret() {
    let ca = rudder_e2e::tls::TestCa::new("crl test CA").unwrap();
    let revoked = ca.client("revoked").unwrap();
    let crl = ca.crl(&[&revoked]).unwrap();
    let gateway = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: crl-cred, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: CERT
  tls.key: KEY
  ca.crt: CA
  ca.crl: |
{crl}
---
apiVersion: v1
kind: Secret
metadata: {{name: split-cred, namespace: istio-system}}
stringData: {{cert: SPLIT, key: SPLITKEY}}
---
apiVersion: v1
kind: Secret
metadata: {{name: split-cred-cacert, namespace: istio-system}}
stringData:
  cacert: SPLITCA
  crl: |
{crl}
---
apiVersion: v1
kind: Secret
metadata: {{name: bad-crl, namespace: istio-system}}
type: kubernetes.io/tls
stringData: {{tls.crt: BADCERT, tls.key: BADKEY, ca.crt: CA, ca.crl: not a CRL}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: revoking, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-crl, protocol: HTTPS}}
    hosts: [crl.example.com]
    tls: {{mode: MUTUAL, credentialName: crl-cred}}
  - port: {{number: 443, name: https-split, protocol: HTTPS}}
    hosts: [split.example.com]
    tls: {{mode: MUTUAL, credentialName: split-cred}}
  - port: {{number: 443, name: https-bad, protocol: HTTPS}}
    hosts: [bad.example.com]
    tls: {{mode: MUTUAL, credentialName: bad-crl}}
  - port: {{number: 443, name: https-bad-simple, protocol: HTTPS}}
    hosts: [simple.example.com]
    tls: {{mode: SIMPLE, credentialName: bad-crl}}
  - port: {{number: 443, name: https-no-crl, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, credentialName: httpbin-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: revoking, namespace: apps}}
spec:
  hosts: [crl.example.com, split.example.com, bad.example.com, simple.example.com, mtls.example.com]
  gateways: [istio-system/revoking]
  http: [{{route: [{{destination: {{host: httpbin}}}}]}}]
"#,
        crl = indent(&crl),
    );
    let r = resources(&gateway);
    let l = listener(&r, "0.0.0.0_8443");
    let hosts: Vec<&str> =
        l.filter_chains.iter().map(|c| c.filter_chain_match.as_ref().unwrap().server_names[0].as_str()).collect();
    assert_eq!(hosts, ["crl.example.com", "split.example.com", "simple.example.com", "mtls.example.com"]);

    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes;
    let validation = |name: &str| match r.secrets.iter().find(|s| s.name == name).map(|s| s.r#type.clone()) {
        Some(Some(secret::Type::ValidationContext(context))) => context,
        other => panic!("{name}: {other:?}"),
    };
    let inline =
        |source: Option<envoy_types::pb::envoy::config::core::v3::DataSource>| source.unwrap().specifier.unwrap();
    let same_secret = validation("kubernetes://crl-cred-cacert");
    assert_eq!(inline(same_secret.trusted_ca), InlineBytes(b"CA".to_vec()));
    assert_eq!(inline(same_secret.crl), InlineBytes(crl.as_bytes().to_vec()));
    let split = validation("kubernetes://split-cred-cacert");
    assert_eq!(inline(split.trusted_ca), InlineBytes(b"SPLITCA".to_vec()));
    assert_eq!(inline(split.crl), InlineBytes(crl.as_bytes().to_vec()));
    assert!(validation("kubernetes://httpbin-cred-cacert").crl.is_none(), "no CRL in the Secret, none served");

    let served: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
    assert!(served.contains(&"kubernetes://bad-crl"), "the certificate still serves: {served:?}");
    assert!(!served.contains(&"kubernetes://bad-crl-cacert"), "{served:?}");
}

/// A TCP server on 31400 of gateway `istio-system/tcp`, and VirtualService `apps/db` bound to
/// it with `tcp` routes `routes` (YAML list items) to `db-a`/`db-b`/`db-c` (5432).
fn tcp_gateway(routes: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 31400, name: tcp, protocol: TCP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: apps}}
spec:
  hosts: ["*"]
  gateways: [istio-system/tcp]
  tcp:
{}
"#,
        routes.trim_matches('\n')
    )
}

/// `(source ranges, cluster)` of a TCP chain.
type TcpRoute = (Vec<String>, String);

/// The [`TcpRoute`] of each chain of `l`.
fn tcp_routes(l: &Listener) -> Vec<TcpRoute> {
    l.filter_chains
        .iter()
        .map(|c| {
            let sources = c
                .filter_chain_match
                .iter()
                .flat_map(|m| &m.source_prefix_ranges)
                .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.as_ref().map_or(0, |l| l.value)))
                .collect();
            let Some(ConfigType::TypedConfig(any)) = &c.filters[0].config_type else { panic!() };
            let Some(ClusterSpecifier::Cluster(cluster)) =
                TcpProxy::decode(any.value.as_slice()).unwrap().cluster_specifier
            else {
                panic!()
            };
            (
                sources,
                cluster.trim_start_matches("outbound|5432||").trim_end_matches(".apps.svc.cluster.local").to_owned(),
            )
        })
        .collect()
}

#[test]
fn tcp_servers_route_by_source_subnet() {
    let to = |host: &str| {
        format!("route: [{{destination: {{host: {host}.apps.svc.cluster.local, port: {{number: 5432}}}}}}]")
    };
    let route = |matches: &str, host: &str| format!("  - match: [{matches}]\n    {}\n", to(host));
    let any = |host: &str| format!("  - {}\n", to(host));
    let ranges = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let cases: Vec<(String, Vec<TcpRoute>)> = vec![
        // No subnets: one chain for every client (the first route that applies).
        (any("db-a") + &any("db-b"), vec![(vec![], "db-a".into())]),
        // A route for some sources, then one for the rest.
        (
            route("{sourceSubnet: 10.0.0.0/8}, {sourceSubnet: 192.168.1.7}", "db-a") + &any("db-b"),
            vec![
                (ranges(&["10.0.0.0/8"]), "db-a".into()),
                (ranges(&["192.168.1.7/32"]), "db-a".into()),
                (vec![], "db-b".into()),
            ],
        ),
        // A subnet inside one an earlier route took is left out (routes are tried in order;
        // Envoy would prefer the longer prefix). A broader one is kept: the earlier route's
        // longer prefix still wins for its clients.
        (
            route("{sourceSubnet: 10.1.0.0/16}", "db-a")
                + &route("{sourceSubnet: 10.1.2.0/24}", "db-b")
                + &route("{sourceSubnet: 10.0.0.0/8}", "db-c"),
            vec![(ranges(&["10.1.0.0/16"]), "db-a".into()), (ranges(&["10.0.0.0/8"]), "db-c".into())],
        ),
        // Only subnet routes: other clients find no chain (Envoy closes their connections).
        (route("{sourceSubnet: 10.0.0.0/8}", "db-a"), vec![(ranges(&["10.0.0.0/8"]), "db-a".into())]),
        // A match that does not apply to this server (port, gateways) does not count; one
        // without a subnet makes its route take every client.
        (
            route("{port: 9999, sourceSubnet: 10.0.0.0/8}", "db-a")
                + &route("{gateways: [other], sourceSubnet: 10.0.0.0/8}", "db-a")
                + &route("{sourceSubnet: 172.16.0.0/12}, {port: 31400}", "db-b")
                + &any("db-c"),
            vec![(vec![], "db-b".into())],
        ),
        // IPv6.
        (
            route("{sourceSubnet: 'fd00::/64'}", "db-a") + &any("db-b"),
            vec![(ranges(&["fd00::/64"]), "db-a".into()), (vec![], "db-b".into())],
        ),
    ];
    for (routes, want) in cases {
        let yaml = tcp_gateway(&routes);
        let r = resources(&yaml);
        assert_eq!(tcp_routes(listener(&r, "0.0.0.0_31400")), want, "{routes}");
        rudder_xds::testing::envoy_accepts(r.clusters.clone(), r.listeners.clone()).unwrap();
    }
}

#[test]
fn a_bad_source_subnet_leaves_out_only_its_match() {
    // Validation refuses it; translation must still cope with one that reaches it.
    let mut snap =
        snapshot(&tcp_gateway("  - route: [{destination: {host: db-b.apps.svc.cluster.local, port: {number: 5432}}}]"));
    let vs: rudder_config::networking::VirtualService = serde_saphyr::from_str(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: apps}
spec:
  hosts: ["*"]
  gateways: [istio-system/tcp]
  tcp:
  - match: [{sourceSubnet: not-a-subnet}, {sourceSubnet: 10.0.0.0/33}, {sourceSubnet: 10.0.0.0/8}]
    route: [{destination: {host: db-a.apps.svc.cluster.local, port: {number: 5432}}}]
  - route: [{destination: {host: db-b.apps.svc.cluster.local, port: {number: 5432}}}]
"#,
    )
    .unwrap();
    snap.virtual_services = vec![std::sync::Arc::new(vs)];
    let r = translate::for_proxy(&snap, &gateway_proxy());
    assert_eq!(
        tcp_routes(listener(&r, "0.0.0.0_31400")),
        [(vec!["10.0.0.0/8".to_owned()], "db-a".to_owned()), (vec![], "db-b".to_owned())]
    );
}
