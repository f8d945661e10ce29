//! The Envoy acceptance check itself: a good cluster passes, a broken one is refused with
//! Envoy's reason.

use rudder_xds::testing::{envoy_accepts, static_cluster};

#[test]
fn envoy_accepts_a_valid_cluster_and_refuses_a_duplicate() {
    envoy_accepts(vec![static_cluster("a")], vec![]).unwrap();
    let err = envoy_accepts(vec![static_cluster("a"), static_cluster("a")], vec![]).unwrap_err();
    assert!(err.contains("duplicate"), "{err}");
}
