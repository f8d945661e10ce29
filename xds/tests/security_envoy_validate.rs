//! The security translation as real Envoy reads it: a sidecar (iptables capture, with a
//! workload certificate) of a workload with an HTTP and a TCP port, under port-level
//! PeerAuthentication, an AuthorizationPolicy with HTTP and TCP rules and a
//! RequestAuthentication. Its inbound listeners and clusters (and the tracing collector's) go into a static bootstrap that
//! `envoy --mode validate` must accept: every RBAC (HTTP and network), JWT and TLS config is
//! one Envoy takes, not only one our types encode. A Telemetry adds span tags (Istio's own and a
//! formatter tag) and the JWT rule space-delimited claims.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use prost::Message;
use rudder_config::IstioObject;
use rudder_xds::model::Proxy;
use rudder_xds::registry::kube::{KubeInputs, build_snapshot};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: apps}
spec:
  hosts: [db.apps.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 5432, name: tcp-db, protocol: TCP}
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: apps}
spec:
  address: 10.244.0.9
  labels: {app: db, security.istio.io/tlsMode: istio}
  serviceAccount: db
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: apps}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: apps}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/apps/sa/api"], ipBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {ports: ["5432"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"], notNamespaces: ["legacy"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/reports/*"], hosts: ["db.apps.svc.cluster.local"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: ["analysts"]}
    - {key: "request.headers[x-tenant]", notValues: ["blocked"]}
    - {key: "destination.port", values: ["8080"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: apps}
spec:
  selector: {matchLabels: {app: db}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry-deny, namespace: apps, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/reports/secret"], ports: ["5432"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry-allow, namespace: apps, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {namespaces: ["apps"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-legacy, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["legacy"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: db, namespace: apps}
spec:
  selector: {matchLabels: {app: db}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [db]
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","kid":"k","alg":"ES256","x":"GW5zgilQRO-6r8L760rlYcCoUYK2s-aUe78iXDOKkdY","y":"X4pS6rqDk0iRd9IEOY6BldYwHRyIves4B7XZVtgEY0A"}]}'
    fromHeaders: [{name: x-token, prefix: "Bearer "}]
    fromParams: [token]
    forwardOriginalToken: true
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    spaceDelimitedClaims: [roles]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: db, namespace: apps}
spec:
  tracing:
  - customTags:
      route: {formatter: {value: "%ROUTE_NAME%/%REQ(x-tenant):32%"}}
      team: {literal: {value: data}}
"#;

#[test]
fn envoy_accepts_the_inbound_security_config() {
    let loads = rudder_config::load::load_str("security.yaml", CONFIG).unwrap();
    assert!(loads.problems.is_empty(), "{:?}", loads.problems);
    let mut inputs = KubeInputs::default();
    for loaded in loads.objects {
        match loaded.object {
            IstioObject::ServiceEntry(o) => inputs.service_entries.push(Arc::from(o)),
            IstioObject::WorkloadEntry(o) => inputs.workload_entries.push(Arc::from(o)),
            IstioObject::PeerAuthentication(o) => inputs.peer_authentications.push(Arc::from(o)),
            IstioObject::AuthorizationPolicy(o) => inputs.authorization_policies.push(Arc::from(o)),
            IstioObject::RequestAuthentication(o) => inputs.request_authentications.push(Arc::from(o)),
            IstioObject::Telemetry(o) => inputs.telemetries.push(Arc::from(o)),
            other => panic!("unexpected {}", other.kind()),
        }
    }
    let mut mesh = rudder_config::mesh::MeshConfig::istio_defaults();
    // A collector at an address (Istio's default zipkin service is not in this registry).
    if let Some(proxy_config) = mesh.default_config.as_mut() {
        proxy_config.tracing =
            Some(serde_json::from_value(serde_json::json!({"zipkin": {"address": "127.0.0.60:9411"}})).unwrap());
    }
    let snapshot = build_snapshot(&inputs, &mesh);
    let metadata: BTreeMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "LABELS": {"app": "db"},
        "WORKLOAD_IDENTITY": "spiffe://cluster.local/ns/apps/sa/db",
    }))
    .unwrap();
    let proxy = Proxy::from_node("sidecar~10.244.0.9~db-1.apps~apps.svc.cluster.local", &metadata).unwrap();
    let inbound = rudder_xds::translate::inbound(&snapshot, &proxy);
    assert!(!inbound.listeners.is_empty());
    // Nested configs are packed `Any`s: look for the names in the encoded bytes.
    let bytes: Vec<u8> = inbound.listeners.iter().flat_map(Message::encode_to_vec).collect();
    let encoded = String::from_utf8_lossy(&bytes);
    for expected in [
        "envoy.filters.network.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.jwt_authn",
        "raw_buffer",
        "istio.canonical_service",
        "%ROUTE_NAME%/%REQ(x-tenant):32%",
        "permission",
        "roles",
    ] {
        assert!(encoded.contains(expected), "{expected} in the inbound listeners");
    }

    // The static bootstrap: the inbound listeners and clusters, and the agent's SDS cluster
    // the TLS contexts name.
    let mut clusters: Vec<Cluster> = inbound.clusters.clone();
    // The tracer's collector, which the HCMs name.
    let outbound = rudder_xds::translate::outbound(&snapshot, &proxy);
    clusters
        .extend(outbound.clusters.into_iter().filter(|c| c.name == rudder_xds::translate::telemetry::ZIPKIN_CLUSTER));
    let sds: serde_json::Value = serde_json::json!({
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint":
            {"address": {"pipe": {"path": "/tmp/rudder-validate-sds.sock"}}}}]}]},
    });
    let dir = std::env::temp_dir().join(format!("rudder-security-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The SDS cluster is given as a JSON bootstrap merged over the binary one (--config-yaml).
    clusters.retain(|c| c.name != "sds-grpc");
    let bootstrap = Bootstrap {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "sidecar~10.244.0.9~db-1.apps~apps.svc.cluster.local".into(),
            cluster: "db.apps".into(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources { listeners: inbound.listeners, clusters, ..Default::default() }),
        ..Default::default()
    };
    let path = dir.join("bootstrap.pb");
    std::fs::write(&path, bootstrap.encode_to_vec()).unwrap();
    let envoy = rudder_xds::testing::envoy_path().unwrap();
    let output = std::process::Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .arg("--config-yaml")
        .arg(format!(r#"{{"static_resources": {{"clusters": [{sds}]}}}}"#))
        .args(["--base-id", &(std::process::id() % 60_000 + 3_000).to_string(), "-l", "warning"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "envoy --mode validate refused the config:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
