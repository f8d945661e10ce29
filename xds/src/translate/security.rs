//! Peer authentication: which mutual-TLS mode a workload port takes, and the TLS contexts of
//! Istio mTLS on both ends (the workload certificate `default` and the mesh root `ROOTCA`,
//! both from the agent's SDS server).
//!
//! The mode of a port, as Istio resolves it: the workload's PeerAuthentication (the oldest one
//! whose selector matches; first by name here) and its `portLevelMtls` for that port, then the
//! namespace's policy (no selector), then the mesh's (no selector, in the root namespace), then
//! PERMISSIVE. `UNSET` at one level defers to the next. A proxy without a workload
//! certificate has nothing to terminate mTLS with: all its ports are DISABLE.

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsParameters, common_tls_context, tls_parameters,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use rudder_config::security::{MutualTlsMode, PeerAuthentication};

use crate::model::{Proxy, Snapshot, labels_match};

pub const TRANSPORT_SOCKET_TLS: &str = "envoy.transport_sockets.tls";
/// The agent's SDS name of the workload certificate and key.
pub const WORKLOAD_SECRET: &str = "default";
/// The agent's SDS name of the mesh root.
pub const ROOT_SECRET: &str = "ROOTCA";

/// The effective inbound mode of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMtls {
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext both accepted.
    Permissive,
    /// mTLS only.
    Strict,
}

impl PortMtls {
    fn of(mode: Option<MutualTlsMode>) -> Option<Self> {
        match mode? {
            MutualTlsMode::Unset => None,
            MutualTlsMode::Disable => Some(Self::Disable),
            MutualTlsMode::Permissive => Some(Self::Permissive),
            MutualTlsMode::Strict => Some(Self::Strict),
        }
    }

    pub fn accepts_mtls(self) -> bool {
        self != Self::Disable
    }

    pub fn accepts_plaintext(self) -> bool {
        self != Self::Strict
    }
}

fn without_selector(policy: &PeerAuthentication) -> bool {
    policy.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty())
}

fn namespace_of(policy: &PeerAuthentication) -> &str {
    policy.metadata.namespace.as_deref().unwrap_or_default()
}

/// The namespace-wide policy of `namespace` (the mesh's, for the root namespace).
fn namespace_policy<'a>(snapshot: &'a Snapshot, namespace: &str) -> Option<&'a PeerAuthentication> {
    snapshot
        .peer_authentications
        .iter()
        .map(AsRef::as_ref)
        .find(|p| namespace_of(p) == namespace && without_selector(p))
}

/// The mode a workload in `namespace` with `labels` takes on `port`, certificates aside.
pub fn policy_mode(
    snapshot: &Snapshot,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    port: u32,
) -> PortMtls {
    let workload = snapshot.peer_authentications.iter().map(AsRef::as_ref).find(|p| {
        namespace_of(p) == namespace
            && p.spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty() && labels_match(&s.match_labels, labels))
    });
    let port_level = workload.and_then(|p| {
        p.spec
            .port_level_mtls
            .iter()
            .find(|(key, _)| key.trim().parse::<u32>() == Ok(port))
            .and_then(|(_, mtls)| PortMtls::of(mtls.mode))
    });
    let level = |policy: Option<&PeerAuthentication>| policy.and_then(|p| PortMtls::of(p.spec.mtls.as_ref()?.mode));
    port_level
        .or_else(|| level(workload))
        .or_else(|| level(namespace_policy(snapshot, namespace)))
        .or_else(|| level(namespace_policy(snapshot, snapshot.root_namespace())))
        .unwrap_or(PortMtls::Permissive)
}

/// The mode `proxy` serves `port` with.
pub fn inbound_mode(snapshot: &Snapshot, proxy: &Proxy, port: u32) -> PortMtls {
    if !proxy.has_workload_certificate() {
        return PortMtls::Disable;
    }
    policy_mode(snapshot, &proxy.namespace, &proxy.labels, port)
}

/// Whether clients should leave mTLS off towards workloads of `namespace`: their namespace
/// (or, without one, the mesh) policy is DISABLE. Workload- and port-level policies are not
/// looked at, as Istio's auto mTLS does not either without per-endpoint information.
pub fn namespace_disables_mtls(snapshot: &Snapshot, namespace: &str) -> bool {
    let level = |policy: Option<&PeerAuthentication>| policy.and_then(|p| PortMtls::of(p.spec.mtls.as_ref()?.mode));
    level(namespace_policy(snapshot, namespace))
        .or_else(|| level(namespace_policy(snapshot, snapshot.root_namespace())))
        == Some(PortMtls::Disable)
}

/// The server side of Istio mTLS: the workload certificate, a client certificate required and
/// checked against the mesh root. ALPN offers what the chain's codec speaks.
pub fn inbound_tls_socket(alpn: &[&str]) -> TransportSocket {
    let common = CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![super::cluster::sds_grpc_secret(WORKLOAD_SECRET)],
        validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
            super::cluster::sds_grpc_secret(ROOT_SECRET),
        )),
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: TRANSPORT_SOCKET_TLS.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    fn policies(yaml: &str) -> Snapshot {
        let loads = rudder_config::load::load_str("pa.yaml", yaml).unwrap();
        assert!(loads.problems.is_empty(), "{:?}", loads.problems);
        let mut all: Vec<Arc<PeerAuthentication>> = loads
            .objects
            .into_iter()
            .map(|l| match l.object {
                rudder_config::IstioObject::PeerAuthentication(p) => Arc::from(p),
                other => panic!("unexpected {}", other.kind()),
            })
            .collect();
        all.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
        Snapshot { peer_authentications: all, ..Snapshot::default() }
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: apps}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"9000": {mode: DISABLE}, "9001": {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: unset, namespace: inherit}
spec: {mtls: {mode: UNSET}}
"#;

    #[test]
    fn the_most_specific_policy_wins_and_unset_defers() {
        let snapshot = policies(POLICIES);
        let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
        let cases = [
            ("apps", "httpbin", 8000, PortMtls::Permissive),
            ("apps", "httpbin", 9000, PortMtls::Disable),
            ("apps", "httpbin", 9001, PortMtls::Permissive),
            ("apps", "sleep", 8000, PortMtls::Strict),
            ("legacy", "httpbin", 8000, PortMtls::Disable),
            ("inherit", "x", 80, PortMtls::Strict),
        ];
        for (namespace, app, port, want) in cases {
            assert_eq!(policy_mode(&snapshot, namespace, &labels(app), port), want, "{namespace}/{app}:{port}");
        }
        assert_eq!(policy_mode(&Snapshot::default(), "apps", &labels("x"), 80), PortMtls::Permissive);
        assert!(namespace_disables_mtls(&snapshot, "legacy"));
        assert!(!namespace_disables_mtls(&snapshot, "apps"));
    }
}
