//! EnvoyFilter `EXTENSION_CONFIG` over ECDS through a real Envoy: one patch ADDs an extension
//! config (a Lua filter adding a response header) and another inserts an HTTP filter that
//! names it through `config_discovery` on ADS. Envoy asks discovery for the config by name,
//! runs it (a request through the gateway gets the header), and takes an edit of the config
//! as an ECDS update. An EXTENSION_CONFIG patch with another operation, or without a name,
//! serves nothing and takes nothing down. All traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder_config::mesh::MeshConfig;
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, free_port, local_app_entry, ok_app};

const PATIENCE: Duration = Duration::from_secs(30);
const LUA: &str = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua";

fn mesh(app_port: u16, gateway_port: u16, header_value: &str) -> String {
    let app = local_app_entry("echo", "echo.test", "HTTP", app_port);
    format!(
        r#"{app}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gateway_port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: [echo.test]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: echo.test, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: ecds, namespace: istio-system}}
spec:
  workloadSelector: {{labels: {{istio: ingressgateway}}}}
  configPatches:
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value:
        name: rudder-test-lua
        typed_config:
          "@type": {LUA}
          default_source_code:
            inline_string: "function envoy_on_response(h) h:headers():add('x-ecds', '{header_value}') end"
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: MERGE
      value: {{name: rudder-test-lua, typed_config: {{"@type": {LUA}}}}}
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value: {{typed_config: {{"@type": {LUA}}}}}
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: envoy.filters.http.router}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: rudder-test-lua
        config_discovery:
          config_source: {{ads: {{}}, initial_fetch_timeout: 0s}}
          type_urls: [{LUA}]
"#
    )
}

/// The `x-ecds` header of a 200 answer through the gateway, if the request got one.
async fn ecds_header(gateway_port: u16) -> Option<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request = Request::get(format!("http://127.0.0.1:{gateway_port}/"))
        .header("host", "echo.test")
        .body(Body::empty())
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.headers().get("x-ecds").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn until_header(what: &str, gateway_port: u16, envoy: &mut TestEnvoy, want: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = ecds_header(gateway_port).await;
        if seen.as_deref() == Some(want) {
            return;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "{what}: x-ecds is {seen:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_config_patch_is_served_over_ecds_and_updated() {
    let dir = std::env::temp_dir().join(format!("rudder-ecds-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let app_port = ok_app().await;
    let gateway_port = free_port();
    let write =
        |value: &str| std::fs::write(config_dir.join("mesh.yaml"), mesh(app_port, gateway_port, value)).unwrap();
    write("v1");
    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let base_id = (std::process::id() % 100_000) * 10 + 7;
    let mut envoy = TestEnvoy::gateway(&dir.join("envoy"), discovery.xds_port, "", base_id).unwrap();

    until_header("the extension config never ran", gateway_port, &mut envoy, "v1").await;

    write("v2");
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    until_header("the edited extension config never reached Envoy", gateway_port, &mut envoy, "v2").await;

    // Envoy took every update: no ECDS (or other) rejection.
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request = Request::get(format!("http://127.0.0.1:{}/stats?filter=update_rejected", envoy.admin))
        .body(Body::empty())
        .unwrap();
    let body = http_body_util::BodyExt::collect(client.request(request).await.unwrap().into_body()).await.unwrap();
    let stats = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let rejected: Vec<&str> = stats.lines().filter(|l| !l.ends_with(": 0")).collect();
    assert!(rejected.is_empty(), "Envoy rejected updates: {rejected:?}");
    assert!(stats.contains("extension_config_discovery.http_filter.rudder-test-lua."), "no ECDS stats in {stats}");

    drop(discovery);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
