//! Discovery's default trace sampling (`PILOT_TRACE_SAMPLING`) is a process setting, so it is
//! tested in a process of its own: it applies below the mesh's `defaultConfig.tracing.sampling`
//! and a Telemetry's `randomSamplingPercentage`, and only the first setting counts.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use envoy_types::pb::envoy::r#type::v3::Percent;
use rudder_config::mesh::{MeshConfig, apply_yaml};
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::translate::context::Context;
use rudder_xds::translate::telemetry::{Side, hcm_tracing, set_default_sampling};

fn sampling(mesh_yaml: &str) -> Option<f64> {
    let snapshot = Snapshot { mesh: apply_yaml(mesh_yaml, &MeshConfig::default()).unwrap(), ..Snapshot::default() };
    let proxy = Proxy::from_node("sidecar~10.244.0.9~web-1.apps~apps.svc.cluster.local", &BTreeMap::new()).unwrap();
    let tracing = hcm_tracing(&Context::new(&snapshot, &proxy), Side::Client)?;
    tracing.random_sampling.map(|Percent { value }| value)
}

#[test]
fn the_process_default_sits_below_the_mesh_config() {
    let zipkin = "defaultConfig: {tracing: {zipkin: {address: '127.0.0.1:9411'}}}";
    assert_eq!(sampling(zipkin), Some(1.0), "Istio's 1 % before anything is set");
    set_default_sampling(100.0);
    set_default_sampling(3.0);
    assert_eq!(sampling(zipkin), Some(100.0), "the first setting counts");
    let with_mesh = "defaultConfig: {tracing: {zipkin: {address: '127.0.0.1:9411'}, sampling: 7}}";
    assert_eq!(sampling(with_mesh), Some(7.0), "the mesh's sampling wins");
    assert_eq!(sampling("enableTracing: false"), None);
}
