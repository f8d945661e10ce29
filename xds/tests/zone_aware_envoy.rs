//! Zone-aware routing through a real Envoy, with the bootstrap the agent writes: a gateway in
//! `r1/z1` (its `istio-locality` label) that opts in with `ISTIO_META_ENABLE_SELF_DISCOVERY`
//! gets `local_cluster` (its own service's endpoints, one per zone) over EDS, and a service
//! with one endpoint in each zone.
//! - Without `zoneAwareLbSetting`, Envoy's default minimum cluster size (6) is not met: the
//!   cluster is too small for zone routing.
//! - With `zoneAwareLbSetting: {minClusterSize: 1}`, both clusters have half their hosts in
//!   the gateway's zone, so Envoy routes every request there directly.
//!
//! All traffic stays on 127.0.0.0/8.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rudder_config::mesh::MeshConfig;
use rudder_xds::agent::bootstrap::{BootstrapOptions, XdsTransport, bootstrap};
use rudder_xds::model::{InterceptionMode, NodeType};
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, free_port, http_get, spawn_envoy};

const PATIENCE: Duration = Duration::from_secs(30);
const HOST: &str = "web.test";
// Clusters keep Istio's stat name, `<name>;`.
const STATS: &str = "cluster.outbound|80||web.test;.";

async fn zone_app(zone: &'static str) -> u16 {
    let app = axum::Router::new().fallback(move || async move { zone });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The gateway's own service `self.test` (the gateway at 127.0.0.10 in z1, a peer in z2), the
/// upstream `web.test` (an app per zone), a gateway server routing to it, and `rule` as the
/// upstream's traffic policy.
fn mesh(z1_port: u16, z2_port: u16, gateway_port: u16, rule: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: self, namespace: istio-system}}
spec:
  hosts: [self.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - {{address: 127.0.0.10, locality: r1/z1}}
  - {{address: 127.0.0.11, locality: r1/z2}}
---
apiVersion: networking.istio.io/v1
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

/// The upstream cluster's zone-routing counters (admin `/stats`), by name without the prefix.
async fn zone_stats(admin: u16) -> BTreeMap<String, u64> {
    let Ok((200, text)) = http_get(&format!("http://127.0.0.1:{admin}/stats?filter=lb_zone"), None).await else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix(STATS)?.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Requests until one answers 200, then nine more; the bodies.
async fn ten_answers(gateway_port: u16, admin: u16) -> Vec<String> {
    // Capture mode NONE: the gateway listens on its own address.
    let url = format!("http://127.0.0.10:{gateway_port}/");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = http_get(&url, Some(HOST)).await;
        if let Ok((200, body)) = outcome {
            let mut bodies = vec![body];
            for _ in 0..9 {
                let (status, body) = http_get(&url, Some(HOST)).await.unwrap();
                assert_eq!(status, 200, "{body}");
                bodies.push(body);
            }
            return bodies;
        }
        if Instant::now() >= deadline {
            let listeners = http_get(&format!("http://127.0.0.1:{admin}/listeners"), None).await;
            panic!("the gateway never answered: {outcome:?}; Envoy's listeners: {listeners:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_its_own_cluster_keeps_traffic_in_its_zone() {
    let dir = std::env::temp_dir().join(format!("rudder-zone-aware-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let z1 = zone_app("z1").await;
    let z2 = zone_app("z2").await;
    let gateway_port = free_port();
    let write = |rule: &str| std::fs::write(config_dir.join("mesh.yaml"), mesh(z1, z2, gateway_port, rule)).unwrap();
    write("{connectionPool: {tcp: {maxConnections: 100}}}");
    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;

    let admin = free_port();
    let options = BootstrapOptions {
        node_type: NodeType::Router,
        ip_addresses: vec![IpAddr::from([127, 0, 0, 10])],
        pod_name: "ingress-1".into(),
        namespace: "istio-system".into(),
        labels: [("istio".to_owned(), "ingressgateway".to_owned()), ("istio-locality".to_owned(), "r1.z1".to_owned())]
            .into(),
        interception: InterceptionMode::None,
        discovery_address: format!("127.0.0.1:{}", discovery.xds_port),
        xds_transport: XdsTransport::Grpc,
        admin_port: admin,
        status_port: free_port(),
        prometheus_port: free_port(),
        extra_metadata: [("ENABLE_SELF_DISCOVERY".to_owned(), "true".into())].into(),
        ..BootstrapOptions::default()
    };
    let config = serde_json::to_string(&bootstrap(&options).unwrap()).unwrap();
    let envoy_dir = dir.join("envoy");
    std::fs::create_dir_all(&envoy_dir).unwrap();
    let base_id = (std::process::id() % 100_000) * 10 + 6;
    let mut envoy = spawn_envoy(&envoy_dir, &config, base_id).unwrap();

    // No zone-aware setting: Envoy's default minimum cluster size (6) is not met.
    let _ = ten_answers(gateway_port, admin).await;
    let stats = zone_stats(admin).await;
    assert!(stats.get("lb_zone_cluster_too_small").copied().unwrap_or(0) > 0, "{stats:?}");
    assert_eq!(stats.get("lb_zone_routing_all_directly").copied().unwrap_or(0), 0, "{stats:?}");

    // Zone-aware with a minimum of 1: every request stays in z1.
    write("{loadBalancer: {zoneAwareLbSetting: {minClusterSize: 1}}}");
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let before = zone_stats(admin).await.get("lb_zone_routing_all_directly").copied().unwrap_or(0);
        let bodies = ten_answers(gateway_port, admin).await;
        let after = zone_stats(admin).await.get("lb_zone_routing_all_directly").copied().unwrap_or(0);
        if after >= before + 10 {
            assert!(bodies.iter().all(|b| b == "z1"), "routed directly, yet answered by {bodies:?}");
            break;
        }
        assert!(matches!(envoy.try_wait(), Ok(None)), "Envoy exited");
        assert!(Instant::now() < deadline, "zone routing never engaged: {:?}", zone_stats(admin).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let _ = envoy.kill();
    let _ = envoy.wait();
    drop(discovery);
    let _ = std::fs::remove_dir_all(&dir);
}
