//! The control-plane metrics move when config is pushed: discovery following a config
//! directory, a SotW client holding its clusters, and `/metrics` read over HTTP from the
//! monitoring router before and after a ServiceEntry and a VirtualService are added.
#![allow(clippy::unwrap_used)]

mod ads_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ads_support::{PATIENCE, ack, names, request};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use rudder_config::mesh::MeshConfig;
use rudder_xds::model::Snapshot;
use rudder_xds::registry::files::watch_dir;
use rudder_xds::server::{DebounceOptions, DiscoveryServer, Kind, ServerOptions};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const SLEEP: &str = "sidecar~127.0.0.20~sleep.testns1~testns1.svc.cluster.local";

const EXTRA: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: testns1
spec:
  hosts: [reviews.testns1.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.13
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: testns1
spec:
  hosts: [reviews.testns1.svc.cluster.local]
  http:
  - route:
    - destination: {host: reviews.testns1.svc.cluster.local}
"#;

fn config_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rudder-metrics-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// `GET /metrics` on the monitoring listener, as Prometheus scrapes it.
async fn scrape(monitoring: std::net::SocketAddr) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let response = client.get(format!("http://{monitoring}/metrics").parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The value of the series `series` (name and labels exactly as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

async fn wait_for(monitoring: std::net::SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(monitoring).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_metrics_move_when_config_is_pushed() {
    let dir = config_dir();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let debounce = DebounceOptions { quiet: Duration::from_millis(20), max_delay: Duration::from_millis(200) };
    let server = DiscoveryServer::new(rx, ServerOptions { debounce, ..ServerOptions::default() });
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(watch_dir(dir.clone(), MeshConfig::istio_defaults(), tx, Duration::from_millis(50), until_stopped()));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    tokio::spawn({
        let (server, stopped) = (server.clone(), until_stopped());
        async move { server.serve(grpc, stopped).await }
    });
    let monitoring_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitoring = monitoring_listener.local_addr().unwrap();
    tokio::spawn(rudder_xds::echo::serve(monitoring_listener, server.monitoring_router(), until_stopped()));

    // The directory's three ServiceEntries are pushed before any proxy connects.
    let before = wait_for(monitoring, "the directory's services", |t| value(t, "pilot_services") >= 3.0).await;
    assert!(value(&before, "pilot_push_triggers_total{type=\"service\"}") >= 1.0, "{before}");

    // A sidecar subscribes to clusters and acknowledges them.
    let (requests, rx) = mpsc::channel::<DiscoveryRequest>(8);
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    let call = tokio::spawn(async move { client.stream_aggregated_resources(ReceiverStream::new(rx)).await });
    let node = Node { id: SLEEP.into(), ..Node::default() };
    requests.send(DiscoveryRequest { node: Some(node), ..request(Kind::Cluster, &[], "", "") }).await.unwrap();
    let mut responses = call.await.unwrap().unwrap().into_inner();
    let mut next = async || tokio::time::timeout(PATIENCE, responses.message()).await.unwrap().unwrap().unwrap();
    let first = next().await;
    requests.send(ack(&first, &[])).await.unwrap();
    let connected = wait_for(monitoring, "the connected proxy", |t| value(t, "pilot_xds") == 1.0).await;
    let pushes = value(&connected, "pilot_xds_pushes_total{type=\"cds\"}");
    assert!(pushes >= 1.0, "{connected}");
    let (services, virtual_services) = (value(&connected, "pilot_services"), value(&connected, "pilot_virt_services"));

    // New config: a service and a route for it. The proxy gets its new cluster…
    std::fs::write(dir.join("reviews.yaml"), EXTRA).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = next().await;
        requests.send(ack(&response, &[])).await.unwrap();
        if names(&response).iter().any(|n| n.contains("reviews.testns1.svc.cluster.local")) {
            break;
        }
        assert!(Instant::now() < deadline, "no cluster for reviews");
    }
    // …and the metrics say so.
    let after = wait_for(monitoring, "the pushed config", |t| value(t, "pilot_virt_services") > virtual_services).await;
    assert!(value(&after, "pilot_xds_pushes_total{type=\"cds\"}") > pushes, "{after}");
    assert_eq!(value(&after, "pilot_services"), services + 1.0, "{after}");
    assert_eq!(value(&after, "pilot_virt_services"), virtual_services + 1.0, "{after}");
    assert_eq!(value(&after, "rudder_discovery_config_objects{type=\"VirtualService\"}"), virtual_services + 1.0);
    assert_eq!(value(&after, "pilot_k8s_cfg_events_total{type=\"VirtualService\",event=\"add\"}"), 1.0, "{after}");
    assert!(value(&after, "pilot_k8s_reg_events_total{type=\"Services\",event=\"add\"}") >= 1.0, "{after}");
    assert!(value(&after, "pilot_push_triggers_total{type=\"config\"}") >= 1.0, "{after}");
    assert!(value(&after, "pilot_proxy_convergence_time_count") >= 1.0, "{after}");
    assert!(value(&after, "pilot_xds_push_time_count{type=\"cds\"}") > pushes - 1.0, "{after}");
    assert_eq!(value(&after, "pilot_total_xds_rejects_total{type=\"cds\"}"), 0.0, "{after}");

    let _ = stop.send(true);
    let _ = std::fs::remove_dir_all(&dir);
}
