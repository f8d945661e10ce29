//! TLS origination with a DestinationRule's `credentialName`, through a real Envoy: a gateway
//! (an egress gateway, as in Istio's "TLS origination at the egress gateway" task) takes plain
//! HTTP and opens mutual TLS to an upstream that requires a client certificate. Discovery reads
//! the client certificate, its key and the upstream's CA from the Secret the rule names, in the
//! gateway's namespace, and serves them over SDS on the ADS stream. A request gets through; a
//! Secret rotated to a certificate the upstream does not trust is refused by the upstream, and
//! the good one restored gets through again. All traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rudder_config::mesh::MeshConfig;
use rudder_e2e::tls::{CertPair, TestCa, TlsBackend, secret_yaml};
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, free_port, http_get, local_app_entry};

const PATIENCE: Duration = Duration::from_secs(30);
const UPSTREAM_HOST: &str = "upstream.test";

/// The Secret `client-cred` (client certificate and key, and the upstream's CA), the upstream
/// as a ServiceEntry, a plain HTTP gateway server routing to it, and the rule originating
/// mutual TLS with the Secret.
fn mesh(upstream_port: u16, gateway_port: u16, client: &CertPair, upstream_ca: &TestCa) -> String {
    let upstream = local_app_entry("upstream", UPSTREAM_HOST, "HTTP", upstream_port);
    let secret = secret_yaml(
        "client-cred",
        "istio-system",
        &[("tls.crt", &client.cert_pem), ("tls.key", &client.key_pem), ("ca.crt", &upstream_ca.cert_pem)],
    );
    format!(
        r#"{secret}{upstream}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: [{UPSTREAM_HOST}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: upstream, namespace: istio-system}}
spec:
  hosts: [{UPSTREAM_HOST}]
  gateways: [egress]
  http: [{{route: [{{destination: {{host: {UPSTREAM_HOST}, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: upstream, namespace: istio-system}}
spec:
  host: {UPSTREAM_HOST}
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: client-cred, sni: {UPSTREAM_HOST}}}
"#
    )
}

/// `GET /` through the gateway as the upstream's host: the status and body.
async fn get(gateway_port: u16) -> Result<(u16, String), String> {
    http_get(&format!("http://127.0.0.1:{gateway_port}/"), Some(UPSTREAM_HOST)).await
}

async fn until(what: &str, gateway_port: u16, envoy: &mut TestEnvoy, done: impl Fn(u16) -> bool) -> (u16, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = get(gateway_port).await;
        if let Ok((status, body)) = &outcome
            && done(*status)
        {
            return (*status, body.clone());
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "{what}: last outcome {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_originates_mutual_tls_with_the_secret_a_destination_rule_names() {
    let dir = std::env::temp_dir().join(format!("rudder-egress-credential-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let upstream_ca = TestCa::new("upstream CA").unwrap();
    let clients = TestCa::new("client CA the upstream trusts").unwrap();
    let strangers = TestCa::new("client CA the upstream does not trust").unwrap();
    let client = clients.client("egress-gateway").unwrap();
    let stranger = strangers.client("egress-gateway").unwrap();
    let server = upstream_ca.server(&[UPSTREAM_HOST]).unwrap();
    let backend =
        TlsBackend::start_mutual("127.0.0.1:0".parse().unwrap(), "upstream", &server, &clients.cert_pem).await.unwrap();
    let gateway_port = free_port();
    let write = |client: &CertPair| {
        std::fs::write(config_dir.join("mesh.yaml"), mesh(backend.addr.port(), gateway_port, client, &upstream_ca))
            .unwrap();
    };
    write(&client);

    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let mut envoy = TestEnvoy::gateway(
        &dir,
        discovery.xds_port,
        "ISTIO_VERSION: 1.29.2, ",
        (std::process::id() % 100_000) * 10 + 8,
    )
    .unwrap();

    let (_, body) = until("the request never got through", gateway_port, &mut envoy, |s| s == 200).await;
    assert_eq!(body, "upstream");

    // A certificate the upstream does not trust: its handshake fails, Envoy answers 503.
    write(&stranger);
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    until("the rotated Secret never reached Envoy", gateway_port, &mut envoy, |s| s == 503).await;

    // The trusted certificate again.
    write(&client);
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    let (_, body) = until("the restored Secret never reached Envoy", gateway_port, &mut envoy, |s| s == 200).await;
    assert_eq!(body, "upstream");
    drop(discovery);
    drop(envoy);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
}
