//! The ADS server against a real Envoy, over SotW and delta: Envoy receives a static and an
//! EDS cluster, then picks up a change to both.
#![allow(clippy::unwrap_used)]

mod ads_support;

use std::time::{Duration, Instant};

use ads_support::Harness;
use axum::body::Body;
use axum::http::Request;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder_xds::server::DebounceOptions;
use rudder_xds::testing::{TestEnvoy, TestNode};
use rudder_xds::translate::Resources;

/// Envoy under test, a sidecar of `app: t` in `default`.
struct Envoy(TestEnvoy);

impl Envoy {
    fn start(xds_port: u16, api_type: &str, base_id: u32) -> Self {
        let node = TestNode {
            id: "sidecar~127.0.0.1~t.default~default.svc.cluster.local",
            cluster: "t.default",
            metadata: "{NAMESPACE: default, LABELS: {app: t}}",
        };
        let dir = std::env::temp_dir().join(format!("rudder-ads-envoy-{}-{base_id}", std::process::id()));
        Self(TestEnvoy::start(&dir, node, xds_port, api_type, false, base_id).unwrap())
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let request = Request::get(format!("http://127.0.0.1:{}{path}", self.0.admin)).body(Body::empty()).unwrap();
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), 64 << 20).await.ok()?;
        Some((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Polls the config dump (with endpoints) until `check` holds.
    async fn wait_for(&mut self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, dump)) = self.get("/config_dump?include_eds").await
                && check(&dump)
            {
                return;
            }
            assert!(self.0.running(), "Envoy exited while waiting for {what}");
            assert!(Instant::now() < deadline, "Envoy never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn socket(port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn assignment(name: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket(port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A static cluster whose only endpoint is on `static_port`, and an EDS cluster whose
/// endpoint (served over EDS) is on `eds_port`.
fn config(static_port: u32, eds_port: u32) -> (Resources, Vec<ClusterLoadAssignment>) {
    let connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: 1, nanos: 0 });
    let static_cluster = Cluster {
        name: "static-upstream".into(),
        connect_timeout,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(assignment("static-upstream", static_port)),
        ..Default::default()
    };
    let eds_cluster = Cluster {
        name: "eds-upstream".into(),
        connect_timeout,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    (
        Resources { clusters: vec![eds_cluster, static_cluster], ..Default::default() },
        vec![assignment("eds-upstream", eds_port)],
    )
}

async fn envoy_follows_changes(api_type: &str, base_id: u32) {
    let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
    let harness = Harness::start_with(config(10001, 20001), debounce).await;
    let mut envoy = Envoy::start(harness.addr.port(), api_type, base_id);
    let has = |needles: &'static [&'static str]| move |dump: &str| needles.iter().all(|n| dump.contains(n));
    envoy
        .wait_for(
            "the initial clusters",
            has(&["\"static-upstream\"", "\"port_value\": 10001", "\"port_value\": 20001"]),
        )
        .await;
    let (status, _) = envoy.get("/ready").await.unwrap();
    assert_eq!(status, 200, "Envoy should be LIVE once CDS and LDS arrived");

    let (resources, endpoints) = config(10002, 20002);
    harness.update(resources, endpoints);
    envoy.wait_for("the changed clusters", has(&["\"port_value\": 10002", "\"port_value\": 20002"])).await;
    let (_, stats) = envoy.get("/stats?filter=cluster_manager.cds.update_rejected").await.unwrap();
    assert!(stats.contains("cluster_manager.cds.update_rejected: 0"), "{stats}");
    let syncz = harness.syncz().await;
    assert_eq!(syncz[0]["types"]["cds"]["nonce_acked"], syncz[0]["types"]["cds"]["nonce_sent"], "{syncz}");
}

fn base_id(offset: u32) -> u32 {
    // Unique per test process and test, so parallel Envoys never share shared memory.
    (std::process::id() % 100_000) * 10 + offset
}

#[tokio::test]
async fn envoy_follows_changes_over_sotw() {
    envoy_follows_changes("GRPC", base_id(1)).await;
}

#[tokio::test]
async fn envoy_follows_changes_over_delta() {
    envoy_follows_changes("DELTA_GRPC", base_id(2)).await;
}
