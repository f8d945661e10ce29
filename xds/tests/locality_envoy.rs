//! Locality load balancing through a real Envoy: a gateway in locality `r1/z1` (its
//! `istio-locality` label) routes to a service with one endpoint in `r1/z1` and one in `r1/z2`.
//! - With outlier detection (mesh default `localityLbSetting: {enabled: true}`), the endpoint
//!   in the gateway's zone is priority 0 and takes every request; when it fails and is
//!   ejected, traffic fails over to the other zone.
//! - `distribute` from `r1/z1/*` to `r1/z2/*` sends everything to the other zone, healthy or
//!   not.
//! - `enabled: false` in the rule puts both endpoints back in one priority.
//!
//! All traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rudder_config::mesh::MeshConfig;
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, TestNode, free_port, http_get};

const PATIENCE: Duration = Duration::from_secs(30);
const HOST: &str = "web.test";
const CLUSTER: &str = "outbound|80||web.test";

/// An app answering its zone's name, or 503 while `failing`.
async fn zone_app(zone: &'static str, failing: Arc<AtomicBool>) -> u16 {
    let app = axum::Router::new().fallback(move || {
        let failing = failing.clone();
        async move {
            if failing.load(Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "failing")
            } else {
                (StatusCode::OK, zone)
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The service (an endpoint per zone), a gateway server routing to it, and `rule` as the
/// traffic policy of its DestinationRule.
fn mesh(z1_port: u16, z2_port: u16, gateway_port: u16, rule: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {z1_port}}}, locality: r1/z1}}
  - {{address: 127.0.0.1, ports: {{http: {z2_port}}}, locality: r1/z2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [{HOST}]
  gateways: [ingress]
  http: [{{route: [{{destination: {{host: {HOST}, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: istio-system}}
spec:
  host: {HOST}
  trafficPolicy: {rule}
"#
    )
}

const FAILOVER: &str =
    "{outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 100}}";
const DISTRIBUTE: &str =
    "{loadBalancer: {localityLbSetting: {distribute: [{from: \"r1/z1/*\", to: {\"r1/z2/*\": 100}}]}}}";
const DISABLED: &str = "{loadBalancer: {localityLbSetting: {enabled: false}}, outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 300s}}";

/// `GET /` through the gateway: the status and body.
async fn get(gateway_port: u16) -> Result<(u16, String), String> {
    http_get(&format!("http://127.0.0.1:{gateway_port}/"), Some(HOST)).await
}

/// The priority Envoy gives each endpoint port of the service's cluster (admin `/clusters`).
async fn priorities(admin: u16) -> Result<Vec<(u16, u32)>, String> {
    let (_, text) = http_get(&format!("http://127.0.0.1:{admin}/clusters"), None).await?;
    let mut out: Vec<(u16, u32)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(CLUSTER)?.strip_prefix("::127.0.0.1:")?;
            let (port, rest) = rest.split_once("::")?;
            let priority = rest.strip_prefix("priority::")?;
            Some((port.parse().ok()?, priority.parse().ok()?))
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

async fn until_priorities(what: &str, admin: u16, envoy: &mut TestEnvoy, want: &[(u16, u32)]) {
    let mut want = want.to_vec();
    want.sort_unstable();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = priorities(admin).await;
        if seen.as_ref() == Ok(&want) {
            return;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "{what}: Envoy's priorities {seen:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ten requests in a row: every one must be answered 200 by `zone`.
async fn all_answered_by(zone: &str, gateway_port: u16) {
    for i in 0..10 {
        let outcome = get(gateway_port).await;
        assert_eq!(outcome, Ok((200, zone.to_owned())), "request {i} should have reached {zone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_in_the_proxys_zone_come_first_and_fail_over_to_the_next() {
    let dir = std::env::temp_dir().join(format!("rudder-locality-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let z1_failing = Arc::new(AtomicBool::new(false));
    let z1 = zone_app("z1", z1_failing.clone()).await;
    let z2 = zone_app("z2", Arc::new(AtomicBool::new(false))).await;
    let gateway_port = free_port();
    let write = |rule: &str| std::fs::write(config_dir.join("mesh.yaml"), mesh(z1, z2, gateway_port, rule)).unwrap();
    write(FAILOVER);
    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let node = TestNode {
        id: "router~127.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local",
        cluster: "istio-ingressgateway.istio-system",
        metadata: "{NAMESPACE: istio-system, INTERCEPTION_MODE: NONE, LABELS: {istio: ingressgateway, istio-locality: r1.z1}}",
    };
    let base_id = (std::process::id() % 100_000) * 10 + 9;
    let mut envoy = TestEnvoy::start(&dir.join("envoy"), node, discovery.xds_port, "GRPC", true, base_id).unwrap();

    // The gateway's zone first. Envoy takes clusters and endpoints before the listener and its
    // routes, so the priorities can be in place before the gateway port answers.
    until_priorities("failover priorities", envoy.admin, &mut envoy, &[(z1, 0), (z2, 1)]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = get(gateway_port).await;
        if matches!(outcome, Ok((200, _))) {
            break;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "the gateway never answered 200: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_answered_by("z1", gateway_port).await;

    // z1 fails: one 503 ejects it, and its priority has no healthy host left.
    z1_failing.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = get(gateway_port).await;
        if outcome == Ok((200, "z2".to_owned())) {
            break;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "never failed over to z2; last outcome {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_answered_by("z2", gateway_port).await;
    z1_failing.store(false, Ordering::SeqCst);

    // `distribute`: everything from r1/z1 to r1/z2; the z1 endpoint is not given to this proxy.
    write(DISTRIBUTE);
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    until_priorities("distribute", envoy.admin, &mut envoy, &[(z2, 0)]).await;
    all_answered_by("z2", gateway_port).await;

    // Turned off in the rule: one priority for both, outlier detection or not.
    write(DISABLED);
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    until_priorities("locality load balancing off", envoy.admin, &mut envoy, &[(z1, 0), (z2, 0)]).await;

    drop(discovery);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
