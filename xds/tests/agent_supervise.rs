//! The agent running a real Envoy against a minimal delta ADS server that answers every
//! subscription with "nothing": Envoy finishes its initial fetch, the readiness listener
//! answers 200 through the admin rewrite, Prometheus stats are served, and a shutdown drains
//! and stops Envoy. Also: an Envoy that dies on its own is reported as such.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use rudder_xds::agent::bootstrap::{BootstrapOptions, bootstrap};
use rudder_xds::agent::supervise::{Ending, EnvoyOptions, SuperviseError, local_request, supervise};
use rudder_xds::model::InterceptionMode;
use rudder_xds::testing::envoy_path;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Answers each new subscription (a request without a nonce) with an empty response and
/// ignores ACKs.
struct EmptyAds;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for EmptyAds {
    type StreamAggregatedResourcesStream = Boxed<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut nonce = 0u64;
            while let Some(Ok(req)) = inbound.next().await {
                if !req.response_nonce.is_empty() {
                    continue;
                }
                nonce += 1;
                let response = DeltaDiscoveryResponse {
                    type_url: req.type_url,
                    system_version_info: "empty".into(),
                    nonce: nonce.to_string(),
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_ads() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(stream, _)| stream);
        Some((accepted, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(EmptyAds))
            .serve_with_incoming(incoming),
    );
    port
}

/// Polls until `path` on `port` answers `want`; panics with the last answer after a minute.
async fn until_status(port: u16, path: &str, want: u16) -> String {
    let authority = format!("127.0.0.1:{port}");
    let mut last = String::new();
    for _ in 0..600 {
        match local_request(&authority, "GET", path, Duration::from_secs(2)).await {
            Ok(r) if r.status == want => return r.body,
            Ok(r) => last = format!("{} {}", r.status, r.body),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{authority}{path} never answered {want}; last: {last}");
}

fn config_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rudder-agent-{name}-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_goes_live_with_an_empty_ads_and_stops_on_shutdown() {
    let ads_port = start_ads().await;
    let (admin_port, status_port, prometheus_port) = (free_port(), free_port(), free_port());
    let options = BootstrapOptions {
        pod_name: "agent-test".into(),
        namespace: "default".into(),
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        interception: InterceptionMode::None,
        discovery_address: format!("127.0.0.1:{ads_port}"),
        admin_port,
        status_port,
        prometheus_port,
        ..Default::default()
    };
    let json = bootstrap(&options).unwrap();
    let dir = config_dir("live");
    let envoy = EnvoyOptions {
        config_dir: Some(dir.clone()),
        base_id: u32::from(admin_port),
        concurrency: 1,
        drain_duration: Duration::from_secs(1),
        termination_drain: Duration::from_millis(200),
        ..EnvoyOptions::new(envoy_path().unwrap())
    };
    let admin = format!("127.0.0.1:{admin_port}");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (pid_tx, pid_rx) = oneshot::channel::<u32>();
    let agent = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        supervise(&json, &envoy, &admin, shutdown, |pid| {
            let _ = pid_tx.send(pid);
        })
        .await
    });
    let pid = pid_rx.await.unwrap();
    assert!(dir.join("envoy-rev.json").is_file());

    assert_eq!(until_status(status_port, "/healthz/ready", 200).await.trim(), "LIVE");
    let stats = until_status(prometheus_port, "/stats/prometheus", 200).await;
    assert!(stats.contains("envoy_server_live"), "{}", &stats[..stats.len().min(500)]);
    // Only the chosen admin path is exposed on the status port.
    until_status(status_port, "/config_dump", 404).await;

    stop_tx.send(()).unwrap();
    let ending = agent.await.unwrap().unwrap();
    assert!(matches!(ending, Ending::Stopped(status) if status.success()), "{ending:?}");
    assert!(!PathBuf::from(format!("/proc/{pid}")).exists(), "Envoy (pid {pid}) still there");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_envoy_that_dies_is_reported() {
    let options = BootstrapOptions { pod_name: "p".into(), namespace: "default".into(), ..Default::default() };
    let json = bootstrap(&options).unwrap();
    // `false` ignores its arguments and exits 1: an Envoy that fails right away.
    let fake = ["/bin/false", "/usr/bin/false"].into_iter().map(PathBuf::from).find(|p| p.is_file()).unwrap();
    let envoy = EnvoyOptions::new(fake);
    let never = std::future::pending::<()>();
    let err = supervise(&json, &envoy, "127.0.0.1:1", never, |_| {}).await.unwrap_err();
    match err {
        SuperviseError::EnvoyDied(status) => assert_eq!(status.code(), Some(1)),
        other => panic!("{other:?}"),
    }
}
