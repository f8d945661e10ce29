//! EnvoyFilter patches through a real Envoy: discovery reads a config directory holding a
//! gateway, a route to a local app and EnvoyFilters, and serves a gateway Envoy over ADS.
//! An HTTP_FILTER INSERT_BEFORE the router adds a Lua filter that Envoy accepts and runs (a
//! real request through Envoy gets its response header), a CLUSTER MERGE changes the
//! cluster's connect timeout as `/config_dump` shows, and a broken EnvoyFilter (an unknown
//! `@type`: refused by validation) and a patch that cannot apply (an operation CLUSTER does not
//! take: skipped by translation) are left out while everything else is served: Envoy rejects
//! no update. An HTTP_FILTER ADD with `filterClass: AUTHZ` and a `match.proxy.metadata` on a
//! node metadata key of the gateway's own (`SITE`) runs too, and the gateway's TCP server picks
//! its VirtualService `tcp` route by the client's `sourceSubnet`. Editing the Lua filter in the
//! directory reaches Envoy. All traffic
//! stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder_config::mesh::MeshConfig;
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, free_port, local_app_entry, ok_app};

const PATIENCE: Duration = Duration::from_secs(30);

/// GET `http://127.0.0.1:<port><path>` (with `Host: echo.test`): status, headers and body.
async fn get(port: u16, path: &str) -> Option<(u16, http::HeaderMap, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request =
        Request::get(format!("http://127.0.0.1:{port}{path}")).header("host", "echo.test").body(Body::empty()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned()))
}

/// One stat of Envoy's admin `/stats` (0 when absent).
async fn stat(envoy: &TestEnvoy, name: &str) -> u64 {
    let Some((200, _, text)) = get(envoy.admin, &format!("/stats?filter=^{name}$")).await else { return 0 };
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Ports of the test: the app, the gateway's HTTP and TCP servers, and one nobody listens on.
#[derive(Clone, Copy)]
struct Ports {
    app: u16,
    gateway: u16,
    tcp: u16,
    dead: u16,
}

fn mesh(ports: Ports, lua_value: &str) -> String {
    let Ports { app: app_port, gateway: gateway_port, tcp: tcp_port, dead: dead_port } = ports;
    let apps = local_app_entry("echo", "echo.test", "HTTP", app_port)
        + &local_app_entry("dead", "dead.test", "TCP", dead_port);
    format!(
        r#"{apps}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - {{port: {{number: {gateway_port}, name: http, protocol: HTTP}}, hosts: ["*"]}}
  - {{port: {{number: {tcp_port}, name: tcp, protocol: TCP}}, hosts: ["*"]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: by-source, namespace: istio-system}}
spec:
  hosts: [tcp.test]
  gateways: [gw]
  tcp:
  - match: [{{sourceSubnet: 10.0.0.0/8}}]
    route: [{{destination: {{host: dead.test, port: {{number: 80}}}}}}]
  - match: [{{sourceSubnet: 127.0.0.0/8}}]
    route: [{{destination: {{host: echo.test, port: {{number: 80}}}}}}]
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
metadata: {{name: lua-header, namespace: istio-system}}
spec:
  workloadSelector: {{labels: {{istio: ingressgateway}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          defaultSourceCode:
            inlineString: |
              function envoy_on_response(handle)
                handle:headers():add("x-envoy-filter", "{lua_value}")
              end
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: classed, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      proxy: {{metadata: {{SITE: edge}}}}
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager}}}}}}
    patch:
      operation: ADD
      filterClass: AUTHZ
      value:
        name: classed.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          defaultSourceCode:
            inlineString: |
              function envoy_on_response(handle)
                handle:headers():add("x-filter-class", "authz")
              end
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: echo-timeout, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {{context: GATEWAY, cluster: {{service: echo.test, portNumber: 80}}}}
    patch: {{operation: MERGE, value: {{connect_timeout: 7s}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: broken, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: GATEWAY}}
    patch:
      operation: INSERT_FIRST
      value: {{name: broken, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.no_such.v3.Filter}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: odd-operation, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {{context: GATEWAY}}
    patch: {{operation: INSERT_FIRST, value: {{name: broken-cluster}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_run_in_a_real_envoy_and_a_broken_one_is_left_out() {
    let dir = std::env::temp_dir().join(format!("rudder-envoy-filter-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let ports = Ports { app: ok_app().await, gateway: free_port(), tcp: free_port(), dead: free_port() };
    let gateway_port = ports.gateway;
    std::fs::write(config_dir.join("mesh.yaml"), mesh(ports, "lua")).unwrap();

    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let snapshot = source.snapshot();
    // `broken` fails validation (its value is no HttpFilter) and is left out by the registry;
    // `odd-operation` validates (with a warning) and translation skips its patch.
    let names: Vec<&str> = snapshot.envoy_filters.iter().filter_map(|f| f.metadata.name.as_deref()).collect();
    assert_eq!(names, ["classed", "echo-timeout", "lua-header", "odd-operation"]);
    let discovery = TestDiscovery::start(snapshot).await;
    let xds_port = discovery.xds_port;
    let mut envoy = TestEnvoy::gateway(
        &dir,
        xds_port,
        "ISTIO_VERSION: 1.29.2, SITE: edge, ",
        (std::process::id() % 100_000) * 10 + 8,
    )
    .unwrap();

    // A real request through Envoy runs the inserted Lua filter.
    let deadline = Instant::now() + PATIENCE;
    let headers = loop {
        if let Some((200, headers, body)) = get(gateway_port, "/").await {
            assert_eq!(body, "ok");
            break headers;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "no response through the gateway: {:?}", get(gateway_port, "/").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(headers.get("x-envoy-filter").and_then(|v| v.to_str().ok()), Some("lua"), "{headers:?}");
    // The ADD with filterClass AUTHZ went before the router (appended after it, Envoy would
    // refuse the listener) and matched the node's SITE metadata.
    assert_eq!(headers.get("x-filter-class").and_then(|v| v.to_str().ok()), Some("authz"), "{headers:?}");

    // The TCP server routes a client from 127.0.0.1 by its source subnet: past the route of
    // 10.0.0.0/8 (to a port nobody listens on), to the app.
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((200, _, body)) = get(ports.tcp, "/").await {
            assert_eq!(body, "ok");
            break;
        }
        assert!(Instant::now() < deadline, "no response through the TCP server: {:?}", get(ports.tcp, "/").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The CLUSTER MERGE is in Envoy's config; the broken patches are not.
    let (status, _, dump) = get(envoy.admin, "/config_dump?resource=dynamic_active_clusters").await.unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let clusters: Vec<&serde_json::Value> = dump["configs"].as_array().unwrap().iter().map(|c| &c["cluster"]).collect();
    let echo = clusters.iter().find(|c| c["name"] == "outbound|80||echo.test").unwrap();
    assert_eq!(echo["connect_timeout"], "7s", "{echo}");
    assert!(clusters.iter().all(|c| c["name"] != "broken-cluster"));
    let (_, _, listeners) = get(envoy.admin, "/config_dump?resource=dynamic_listeners").await.unwrap();
    assert!(listeners.contains("envoy.filters.http.lua") && !listeners.contains("\"broken\""));
    // Envoy took every update: no NACK.
    for name in ["cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected"] {
        assert_eq!(stat(&envoy, name).await, 0, "{name}");
    }
    assert!(stat(&envoy, "listener_manager.lds.update_success").await >= 1);

    // An edit of the EnvoyFilter reaches Envoy.
    std::fs::write(config_dir.join("mesh.yaml"), mesh(ports, "edited")).unwrap();
    source.refresh();
    discovery.snapshots.send(Arc::new(source.snapshot())).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((200, headers, _)) = get(gateway_port, "/").await
            && headers.get("x-envoy-filter").is_some_and(|v| v == "edited")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the edited filter never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stat(&envoy, "listener_manager.lds.update_rejected").await, 0);
    drop(discovery);
    drop(envoy);
}
