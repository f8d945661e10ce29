//! A MUTUAL gateway server checks client certificates against the revocation list of its
//! credential Secret (`ca.crl`), through a real Envoy: discovery reads a config directory holding
//! the Secret, a Gateway and a route to a local app, and serves a gateway Envoy over ADS. A
//! client certificate of the CA gets through, a revoked one is refused by the TLS handshake
//! (Envoy's `certificate revoked` alert), and so is a client without a certificate. A new CRL in
//! the Secret reaches Envoy (the client it now revokes is refused too); a CRL that is not PEM
//! takes the MUTUAL server out while the SIMPLE server on the same port keeps serving, and Envoy
//! rejects no update. A second test takes the client CA from a ConfigMap (`caCertCredentialName`,
//! as trust-manager writes trust bundles) and follows its rotation. All traffic stays on
//! 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder_config::mesh::MeshConfig;
use rudder_e2e::tls::{CertPair, TestCa, config_map_yaml, https_get, secret_yaml};
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, free_port, local_app_entry, ok_app};

const PATIENCE: Duration = Duration::from_secs(30);
const MUTUAL_HOST: &str = "crl.example.com";
const SIMPLE_HOST: &str = "simple.example.com";

/// One counter of Envoy's admin `/stats` (0 when absent).
async fn stat(envoy: &TestEnvoy, name: &str) -> u64 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request =
        Request::get(format!("http://127.0.0.1:{}/stats?filter=^{name}$", envoy.admin)).body(Body::empty()).unwrap();
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await else {
        return 0;
    };
    let Ok(body) = response.into_body().collect().await else { return 0 };
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The gateway's Secret (certificate for both hosts, the CA and `crl`), a Gateway with a MUTUAL
/// and a SIMPLE server on `gateway_port` sharing it, and the route of both hosts to the app.
fn mesh(app_port: u16, gateway_port: u16, ca: &TestCa, server: &CertPair, crl: &str) -> String {
    let app = local_app_entry("app", "app.test", "HTTP", app_port);
    let secret = secret_yaml(
        "gw-cred",
        "istio-system",
        &[("tls.crt", &server.cert_pem), ("tls.key", &server.key_pem), ("ca.crt", &ca.cert_pem), ("ca.crl", crl)],
    );
    format!(
        r#"{secret}{app}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: https-mutual, protocol: HTTPS}}
    hosts: [{MUTUAL_HOST}]
    tls: {{mode: MUTUAL, credentialName: gw-cred}}
  - port: {{number: {gateway_port}, name: https-simple, protocol: HTTPS}}
    hosts: [{SIMPLE_HOST}]
    tls: {{mode: SIMPLE, credentialName: gw-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: istio-system}}
spec:
  hosts: [{MUTUAL_HOST}, {SIMPLE_HOST}]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: app.test, port: {{number: 80}}}}}}]}}]
"#
    )
}

/// `GET /` through the gateway as `host`, presenting `client`: `Ok(body)` on a 200, else what
/// went wrong (with its causes).
async fn get(addr: SocketAddr, host: &str, ca: &TestCa, client: Option<&CertPair>) -> Result<String, String> {
    match tokio::time::timeout(Duration::from_secs(5), https_get(addr, host, "/", &ca.cert_pem, client)).await {
        Err(_) => Err("no reply in 5 s".into()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok(reply)) if reply.status == 200 => Ok(reply.body),
        Ok(Ok(reply)) => Err(format!("status {}: {}", reply.status, reply.body)),
    }
}

/// Polls `GET /` as `host` with `client` until `done` holds for the outcome.
async fn until(
    what: &str,
    addr: SocketAddr,
    host: &str,
    ca: &TestCa,
    client: Option<&CertPair>,
    envoy: &mut TestEnvoy,
    done: impl Fn(&Result<String, String>) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = get(addr, host, ca, client).await;
        if done(&outcome) {
            return outcome;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "{what}: last outcome {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn revoked_alert(outcome: &Result<String, String>) -> bool {
    outcome.as_ref().is_err_and(|e| e.contains("CertificateRevoked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_gateway_refuses_client_certificates_its_secrets_crl_revokes() {
    let dir = std::env::temp_dir().join(format!("rudder-gateway-crl-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let ca = TestCa::new("gateway CRL test CA").unwrap();
    let server = ca.server(&[MUTUAL_HOST, SIMPLE_HOST]).unwrap();
    let good = ca.client("good-client").unwrap();
    let revoked = ca.client("revoked-client").unwrap();
    let app_port = ok_app().await;
    let gateway_port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let write = |crl: &str| {
        std::fs::write(config_dir.join("mesh.yaml"), mesh(app_port, gateway_port, &ca, &server, crl)).unwrap();
    };
    write(&ca.crl(&[&revoked]).unwrap());

    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let xds_port = discovery.xds_port;
    let mut envoy =
        TestEnvoy::gateway(&dir, xds_port, "ISTIO_VERSION: 1.29.2, ", (std::process::id() % 100_000) * 10 + 6).unwrap();

    // A certificate of the CA gets through; the revoked one and none at all do not.
    let ok = until("the good client never got through", addr, MUTUAL_HOST, &ca, Some(&good), &mut envoy, |o| o.is_ok())
        .await;
    assert_eq!(ok.unwrap(), "ok");
    let refused = get(addr, MUTUAL_HOST, &ca, Some(&revoked)).await;
    assert!(revoked_alert(&refused), "a revoked client certificate: {refused:?}");
    assert!(get(addr, MUTUAL_HOST, &ca, None).await.is_err(), "MUTUAL without a client certificate");
    assert_eq!(get(addr, SIMPLE_HOST, &ca, None).await.unwrap(), "ok");

    // A new CRL in the Secret revokes the good client too.
    write(&ca.crl(&[&revoked, &good]).unwrap());
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    let now_revoked =
        until("the new CRL never reached Envoy", addr, MUTUAL_HOST, &ca, Some(&good), &mut envoy, revoked_alert).await;
    assert!(now_revoked.is_err());

    // A CRL that is not PEM: the MUTUAL server is left out (no chain for its SNI any more)
    // rather than served without it; the SIMPLE server sharing the Secret keeps serving.
    write("not a certificate revocation list");
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    let gone = until("the MUTUAL server was never left out", addr, MUTUAL_HOST, &ca, Some(&good), &mut envoy, |o| {
        o.as_ref().is_err_and(|e| !e.contains("CertificateRevoked"))
    })
    .await;
    assert!(gone.is_err());
    assert_eq!(get(addr, SIMPLE_HOST, &ca, None).await.unwrap(), "ok");
    for name in ["listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected"] {
        assert_eq!(stat(&envoy, name).await, 0, "{name}");
    }
    drop(discovery);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gateway's Secret (certificate and key only), the ConfigMap `trust-bundle` holding
/// `client_ca`, a MUTUAL server naming it in `caCertCredentialName`, and the route to the app.
fn config_map_mesh(app_port: u16, gateway_port: u16, server: &CertPair, client_ca: &TestCa) -> String {
    let app = local_app_entry("app", "app.test", "HTTP", app_port);
    let secret = secret_yaml("gw-cred", "istio-system", &[("tls.crt", &server.cert_pem), ("tls.key", &server.key_pem)]);
    let bundle = config_map_yaml("trust-bundle", "istio-system", &[("ca.crt", &client_ca.cert_pem)]);
    format!(
        r#"{secret}{bundle}{app}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: https-mutual, protocol: HTTPS}}
    hosts: [{MUTUAL_HOST}]
    tls: {{mode: MUTUAL, credentialName: gw-cred, caCertCredentialName: trust-bundle}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: istio-system}}
spec:
  hosts: [{MUTUAL_HOST}]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: app.test, port: {{number: 80}}}}}}]}}]
"#
    )
}

fn unknown_ca_alert(outcome: &Result<String, String>) -> bool {
    outcome.as_ref().is_err_and(|e| e.contains("UnknownCA"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_gateway_verifies_clients_with_the_ca_of_a_config_map_and_follows_its_rotation() {
    let dir = std::env::temp_dir().join(format!("rudder-gateway-cm-ca-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let server_ca = TestCa::new("gateway server CA").unwrap();
    let server = server_ca.server(&[MUTUAL_HOST]).unwrap();
    let old_clients = TestCa::new("old client CA").unwrap();
    let new_clients = TestCa::new("new client CA").unwrap();
    let old_client = old_clients.client("old-client").unwrap();
    let new_client = new_clients.client("new-client").unwrap();
    let app_port = ok_app().await;
    let gateway_port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let write = |client_ca: &TestCa| {
        std::fs::write(config_dir.join("mesh.yaml"), config_map_mesh(app_port, gateway_port, &server, client_ca))
            .unwrap();
    };
    write(&old_clients);

    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let mut envoy = TestEnvoy::gateway(
        &dir,
        discovery.xds_port,
        "ISTIO_VERSION: 1.29.2, ",
        (std::process::id() % 100_000) * 10 + 7,
    )
    .unwrap();

    // The ConfigMap's CA admits its clients; another CA's client is refused by the handshake.
    let ok = until(
        "the ConfigMap CA's client never got through",
        addr,
        MUTUAL_HOST,
        &server_ca,
        Some(&old_client),
        &mut envoy,
        |o| o.is_ok(),
    )
    .await;
    assert_eq!(ok.unwrap(), "ok");
    let refused = get(addr, MUTUAL_HOST, &server_ca, Some(&new_client)).await;
    assert!(unknown_ca_alert(&refused), "a client of a CA the ConfigMap does not hold: {refused:?}");

    // The trust bundle rotated to the new CA: its client gets through, the old one is refused.
    write(&new_clients);
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    let rotated = until(
        "the rotated ConfigMap never reached Envoy",
        addr,
        MUTUAL_HOST,
        &server_ca,
        Some(&new_client),
        &mut envoy,
        |o| o.is_ok(),
    )
    .await;
    assert_eq!(rotated.unwrap(), "ok");
    let refused = get(addr, MUTUAL_HOST, &server_ca, Some(&old_client)).await;
    assert!(unknown_ca_alert(&refused), "the old CA's client after the rotation: {refused:?}");
    for name in ["listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected"] {
        assert_eq!(stat(&envoy, name).await, 0, "{name}");
    }
    drop(discovery);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
