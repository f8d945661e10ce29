//! Shared harness of the ADS tests: a server on 127.0.0.1 fed by a [`FixedGenerator`], and
//! thin SotW and delta clients over a real tonic channel.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use rudder_xds::model::Snapshot;
use rudder_xds::server::{DebounceOptions, DiscoveryServer, FixedGenerator, Kind, ServerOptions};
use rudder_xds::translate::Resources;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

pub const NODE_ID: &str = "sidecar~10.0.0.1~app-1.default~default.svc.cluster.local";
/// How long a test waits for a response it expects.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How long a test listens to make sure nothing (more) arrives. A wrong extra response
/// arriving later only goes unnoticed; it can never fail a correct server.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn cluster(name: &str, timeout_secs: i64) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: timeout_secs, nanos: 0 }),
        ..Default::default()
    }
}

pub fn cla(name: &str, priority: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints { priority, ..Default::default() }],
        ..Default::default()
    }
}

pub fn listener(name: &str) -> Listener {
    Listener { name: name.into(), ..Default::default() }
}

pub fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration { name: name.into(), ..Default::default() }
}

/// Clusters `a`, `b`; their endpoints; listener `l1`; routes `r1`, `r2`.
pub fn fixture() -> (Resources, Vec<ClusterLoadAssignment>) {
    (
        Resources {
            clusters: vec![cluster("a", 1), cluster("b", 1)],
            listeners: vec![listener("l1")],
            routes: vec![route("r1"), route("r2")],
            ..Resources::default()
        },
        vec![cla("a", 0), cla("b", 0)],
    )
}

pub fn node() -> Node {
    Node { id: NODE_ID.into(), ..Default::default() }
}

/// Names of the resources in a SotW response (all our fixtures have `name` as field 1).
pub fn names(response: &DiscoveryResponse) -> Vec<String> {
    #[derive(Clone, PartialEq, Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    response.resources.iter().map(|any| Named::decode(any.value.as_slice()).unwrap().name).collect()
}

pub fn delta_names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(|r| r.name.clone()).collect()
}

pub struct Harness {
    pub server: DiscoveryServer,
    pub generator: Arc<FixedGenerator>,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub addr: SocketAddr,
    pub monitoring: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    stop_monitoring: Option<oneshot::Sender<()>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(
            fixture(),
            DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) },
        )
        .await
    }

    pub async fn start_with(resources: (Resources, Vec<ClusterLoadAssignment>), debounce: DebounceOptions) -> Self {
        Self::start_with_options(resources, ServerOptions { debounce, ..Default::default() }).await
    }

    pub async fn start_with_options(
        resources: (Resources, Vec<ClusterLoadAssignment>),
        options: ServerOptions,
    ) -> Self {
        Self::start_from(Snapshot::default(), resources, options).await
    }

    /// A server whose registry has not loaded yet: it serves once a snapshot is published.
    pub async fn start_loading() -> Self {
        let first = Snapshot { loading: true, ..Snapshot::default() };
        let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
        Self::start_from(first, fixture(), ServerOptions { debounce, ..Default::default() }).await
    }

    async fn start_from(
        first: Snapshot,
        resources: (Resources, Vec<ClusterLoadAssignment>),
        options: ServerOptions,
    ) -> Self {
        let generator = Arc::new(FixedGenerator::new(resources.0, resources.1));
        let (snapshots, rx) = watch::channel(Arc::new(first));
        let server = DiscoveryServer::with_generator(rx, options, generator.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = server.clone();
        tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let monitoring_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let monitoring = monitoring_listener.local_addr().unwrap();
        let (stop_monitoring, monitoring_stopped) = oneshot::channel::<()>();
        tokio::spawn(rudder_xds::echo::serve(monitoring_listener, server.monitoring_router(), async {
            let _ = monitoring_stopped.await;
        }));
        Self {
            server,
            generator,
            snapshots,
            addr,
            monitoring,
            stop: Some(stop),
            stop_monitoring: Some(stop_monitoring),
        }
    }

    /// Serves new resources: replaces the generator's and publishes a new snapshot.
    pub fn update(&self, resources: Resources, endpoints: Vec<ClusterLoadAssignment>) {
        self.generator.set(resources, endpoints);
        self.snapshots.send_replace(Arc::new(Snapshot::default()));
    }

    pub async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }

    /// Opens a SotW stream. The server reads the first request before answering the call, so
    /// the call runs in the background and the test's first `send` lets it complete.
    pub async fn sotw(&self) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let mut client = self.client().await;
        let call = tokio::spawn(async move {
            client.stream_aggregated_resources(ReceiverStream::new(rx)).await.map(tonic::Response::into_inner)
        });
        Sotw { tx, call: Some(call), rx: None }
    }

    pub async fn delta(&self) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        let mut client = self.client().await;
        let call = tokio::spawn(async move {
            client.delta_aggregated_resources(ReceiverStream::new(rx)).await.map(tonic::Response::into_inner)
        });
        Delta { tx, call: Some(call), rx: None }
    }

    /// GETs a monitoring path and returns the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let request = Request::get(format!("http://{}{path}", self.monitoring)).body(Body::empty()).unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), 16 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn syncz(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/debug/syncz").await.1).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop_monitoring.take() {
            let _ = stop.send(());
        }
    }
}

type Call<T> = tokio::task::JoinHandle<Result<Streaming<T>, tonic::Status>>;

/// A client stream of either transport.
pub struct Stream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    call: Option<Call<Resp>>,
    rx: Option<Streaming<Resp>>,
}

pub type Sotw = Stream<DiscoveryRequest, DiscoveryResponse>;
pub type Delta = Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl<Req, Resp> Stream<Req, Resp> {
    pub async fn send(&self, request: Req) {
        self.tx.send(request).await.ok().unwrap();
    }

    /// The status the call ended with, if the server refused it.
    pub async fn call_status(&mut self) -> Result<(), tonic::Status> {
        if let Some(call) = self.call.take() {
            self.rx = Some(tokio::time::timeout(PATIENCE, call).await.unwrap().unwrap()?);
        }
        Ok(())
    }

    pub async fn recv(&mut self) -> Resp {
        self.call_status().await.unwrap();
        let rx = self.rx.as_mut().unwrap();
        tokio::time::timeout(PATIENCE, rx.message()).await.expect("no response in time").unwrap().expect("stream ended")
    }

    /// Asserts that nothing arrives for a while.
    pub async fn assert_quiet(&mut self) {
        self.call_status().await.unwrap();
        let rx = self.rx.as_mut().unwrap();
        if let Ok(message) = tokio::time::timeout(QUIET, rx.message()).await {
            assert!(matches!(message, Ok(None)) || message.is_err(), "unexpected response");
        }
    }
}

pub fn request(kind: Kind, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: kind.type_url().into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// The first request of a stream: `request` with the node.
pub fn first(kind: Kind, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest { node: Some(node()), ..request(kind, names, "", "") }
}

/// An ACK of `response` keeping `names`.
pub fn ack(response: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    let kind = Kind::from_type_url(&response.type_url).unwrap();
    request(kind, names, &response.version_info, &response.nonce)
}

pub fn delta_request(kind: Kind, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: kind.type_url().into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}
