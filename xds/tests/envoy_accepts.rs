//! The Envoy acceptance check itself: a good cluster passes, a broken one is refused with
//! Envoy's reason.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::google::protobuf::Duration;
use rudder_xds::testing::envoy_accepts;

fn static_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    }
}

#[test]
fn envoy_accepts_a_valid_cluster_and_refuses_a_duplicate() {
    envoy_accepts(vec![static_cluster("a")], vec![]).unwrap();
    let err = envoy_accepts(vec![static_cluster("a"), static_cluster("a")], vec![]).unwrap_err();
    assert!(err.contains("duplicate"), "{err}");
}
