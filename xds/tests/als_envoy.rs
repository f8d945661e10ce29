//! An `envoyHttpAls` provider end to end: discovery translates an ingress gateway whose
//! Telemetry turns the provider on, serves it over ADS to a real Envoy, and a real gRPC access
//! log service (Envoy's `AccessLogService`, served by tonic on 127.0.0.1) receives the entry of
//! a request sent through that Envoy, with the provider's log name and extra header.
#![allow(clippy::unwrap_used)]

mod ads_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ads_support::Harness;
use axum::body::Body;
use axum::http::Request;
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder_xds::model::Proxy;
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::server::DebounceOptions;
use rudder_xds::testing::{TestEnvoy, TestNode, free_port};

/// What the log service received: (log name, entry).
type Received = Arc<Mutex<Vec<(String, HttpAccessLogEntry)>>>;

struct LogService(Received);

#[tonic::async_trait]
impl AccessLogService for LogService {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        // The identifier (with the log name) comes on the first message of a stream only.
        let mut log_name = String::new();
        while let Some(message) = stream.message().await? {
            if let Some(identifier) = &message.identifier {
                log_name.clone_from(&identifier.log_name);
            }
            if let Some(LogEntries::HttpLogs(logs)) = message.log_entries {
                let mut received = self.0.lock().unwrap();
                received.extend(logs.log_entry.into_iter().map(|e| (log_name.clone(), e)));
            }
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let mut request = Request::get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client.request(request.body(Body::empty()).unwrap()).await.ok()?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20).await.ok()?;
    Some((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn config(gateway_port: u16, app_port: u16, als_port: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: apps}}
spec:
  hosts: [app.apps.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: als, namespace: observability}}
spec:
  hosts: [als.observability.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9001, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {als_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gateway_port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: apps}}
spec:
  hosts: ["*"]
  gateways: [istio-system/web]
  http: [{{route: [{{destination: {{host: app.apps.svc.cluster.local, port: {{number: 8080}}}}}}]}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh, namespace: istio-system}}
spec:
  accessLogging: [{{providers: [{{name: als}}]}}]
"#
    )
}

const MESH: &str = r#"
extensionProviders:
- name: als
  envoyHttpAls:
    service: als.observability.svc.cluster.local
    port: 9001
    logName: rudder-e2e
    additionalRequestHeadersToLog: [x-tenant]
"#;

#[tokio::test]
async fn envoy_sends_http_access_logs_to_a_grpc_service() {
    // The log service.
    let received: Received = Arc::default();
    let als = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let als_port = als.local_addr().unwrap().port();
    let service = AccessLogServiceServer::new(LogService(received.clone()));
    let als_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(als)),
    );
    // The application behind the gateway.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    let app_task = tokio::spawn(async move {
        let router = axum::Router::new().fallback(|| async { "hello from app" });
        let _ = axum::serve(app, router).await;
    });

    // Discovery's translation of the gateway, served over ADS.
    let gateway_port = free_port();
    let dir = std::env::temp_dir().join(format!("rudder-als-envoy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/mesh.yaml"), config(gateway_port, app_port, als_port)).unwrap();
    let mut source = ConfigDir::new(dir.join("config"), rudder_config::mesh::apply_yaml_over_defaults(MESH).unwrap());
    source.refresh();
    let snapshot = source.snapshot();
    let node_id = "router~127.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local";
    let meta = serde_json::from_value(serde_json::json!({"LABELS": {"istio": "ingressgateway"}})).unwrap();
    let proxy = Proxy::from_node(node_id, &meta).unwrap();
    let resources = rudder_xds::translate::for_proxy(&snapshot, &proxy);
    // Nested configs are packed `Any`s: look for the logger in the encoded bytes.
    let bytes: Vec<u8> = resources.listeners.iter().flat_map(prost::Message::encode_to_vec).collect();
    let names: Vec<&str> = resources.listeners.iter().map(|l| l.name.as_str()).collect();
    assert!(
        String::from_utf8_lossy(&bytes).contains("envoy.access_loggers.http_grpc"),
        "the gateway's listeners {names:?} log to the service"
    );
    let endpoints = rudder_xds::translate::endpoint::all(&snapshot);
    let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
    let harness = Harness::start_with((resources, endpoints), debounce).await;

    // Envoy, fed by discovery.
    let node = TestNode {
        id: node_id,
        cluster: "istio-ingressgateway.istio-system",
        metadata: "{NAMESPACE: istio-system, LABELS: {istio: ingressgateway}}",
    };
    let base_id = (std::process::id() % 100_000) * 10 + 7;
    let mut envoy = TestEnvoy::start(&dir, node, harness.addr.port(), "GRPC", false, base_id).unwrap();

    // Requests through the gateway until one is answered (listeners warm up), then the log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://127.0.0.1:{gateway_port}/hello-als");
    loop {
        if let Some((200, body)) = get(&url, &[("x-tenant", "blue")]).await {
            assert_eq!(body, "hello from app");
            break;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "the gateway never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let entry = loop {
        let found = received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| e.request.as_ref().is_some_and(|r| r.path == "/hello-als"))
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "the access log service never received the request's entry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (log_name, entry) = entry;
    assert_eq!(log_name, "rudder-e2e");
    let request = entry.request.unwrap();
    assert_eq!(request.request_headers.get("x-tenant").map(String::as_str), Some("blue"));
    assert_eq!(entry.response.unwrap().response_code.map(|c| c.value), Some(200));
    let upstream = entry.common_properties.unwrap().upstream_cluster;
    assert_eq!(upstream, "outbound|8080||app.apps.svc.cluster.local");

    drop(envoy);
    als_task.abort();
    app_task.abort();
}
