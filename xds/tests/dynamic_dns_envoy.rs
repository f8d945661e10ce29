//! ServiceEntry `resolution: DYNAMIC_DNS` through a real Envoy: a gateway routes to a wildcard
//! host whose HTTP port is served by Envoy's dynamic forward proxy, which takes each request's
//! destination from its `Host` and resolves it itself. The test gives addresses
//! (`127.0.0.1:<port>`), which need no DNS server: every request still goes through the
//! proxy's DNS cache and its per-request upstream. All traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rudder_config::mesh::MeshConfig;
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, free_port, http_get, ok_app};

const PATIENCE: Duration = Duration::from_secs(30);

fn mesh(gateway_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: anywhere, namespace: istio-system}}
spec:
  hosts: ["*.dfp.test"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DYNAMIC_DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gateway_port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: forward, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: "*.dfp.test", port: {{number: 80}}}}}}]}}]
"#
    )
}

async fn get(gateway_port: u16, host: &str) -> Result<(u16, String), String> {
    http_get(&format!("http://127.0.0.1:{gateway_port}/"), Some(host)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_dns_host_is_resolved_by_envoy_per_request() {
    let dir = std::env::temp_dir().join(format!("rudder-dynamic-dns-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let app_port = ok_app().await;
    let gateway_port = free_port();
    std::fs::write(config_dir.join("mesh.yaml"), mesh(gateway_port)).unwrap();
    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let base_id = (std::process::id() % 100_000) * 10 + 4;
    let mut envoy = TestEnvoy::gateway(&dir.join("envoy"), discovery.xds_port, "", base_id).unwrap();

    let host = format!("127.0.0.1:{app_port}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = get(gateway_port, &host).await;
        if outcome == Ok((200, "ok".to_owned())) {
            break;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "never forwarded to {host}: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another destination: taken from the request, no config change.
    let other = ok_app().await;
    assert_eq!(get(gateway_port, &format!("127.0.0.1:{other}")).await, Ok((200, "ok".to_owned())));

    drop(discovery);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
