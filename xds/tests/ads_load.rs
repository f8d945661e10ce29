//! The load client against the server: many streams reach full config and see an update.
#![allow(clippy::unwrap_used)]

mod ads_support;

use std::time::{Duration, Instant};

use ads_support::*;
use rudder_e2e::loadclient::{LoadOptions, LoadRun, percentile};
use rudder_xds::server::Kind;

async fn streams_converge_and_see_updates(delta: bool) {
    let harness = Harness::start().await;
    let options = LoadOptions {
        target: format!("http://{}", harness.addr),
        streams: 20,
        delta,
        route_names: vec!["r1".into()],
        join_rate: None,
        namespace: "bench".into(),
        distinct_workloads: 0,
        zones: 0,
        reconnect: false,
    };
    let run = LoadRun::start(options).await.unwrap();
    let times = run.wait_full_config(PATIENCE).await;
    let stats = run.stats();
    assert!(times.iter().all(Option::is_some), "{:?}", stats.iter().map(|s| &s.error).collect::<Vec<_>>());
    assert!(percentile(&times, 99.0).is_some());
    assert_eq!(harness.server.connected(), 20);
    // Every stream got both CLAs: two clusters' worth of EDS at least.
    assert!(stats.iter().all(|s| s.received[1].len() == 1), "{stats:?}");

    let since = Instant::now();
    let (resources, _) = fixture();
    harness.update(resources, vec![cla("a", 0), cla("b", 5)]);
    let latencies = run.wait_update(Kind::Endpoint, since, PATIENCE).await;
    assert!(latencies.iter().all(Option::is_some), "{latencies:?}");
    // Only endpoints changed: no stream was sent clusters again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(run.stats().iter().all(|s| s.received[0].len() == 1));
    assert!(run.total_bytes() > 0);
}

#[tokio::test]
async fn sotw_streams_converge_and_see_updates() {
    streams_converge_and_see_updates(false).await;
}

#[tokio::test]
async fn delta_streams_converge_and_see_updates() {
    streams_converge_and_see_updates(true).await;
}

/// Every proxy with labels of its own (as in a real mesh) still shares the one view: the
/// server computes outbound config once, not once per label set.
#[tokio::test]
async fn distinct_workloads_share_one_view() {
    let harness = Harness::start().await;
    let options = LoadOptions {
        target: format!("http://{}", harness.addr),
        streams: 12,
        delta: false,
        route_names: vec!["r1".into()],
        join_rate: None,
        namespace: "bench".into(),
        distinct_workloads: 12,
        zones: 0,
        reconnect: false,
    };
    let run = LoadRun::start(options).await.unwrap();
    let times = run.wait_full_config(PATIENCE).await;
    assert!(times.iter().all(Option::is_some), "{:?}", run.stats().iter().map(|s| &s.error).collect::<Vec<_>>());
    let (status, body) = harness.get("/debug/adsz").await;
    assert_eq!(status, 200, "{body}");
    let adsz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(adsz["connections"].as_array().map(Vec::len), Some(12), "{body}");
    assert_eq!(adsz["views"], 1, "{body}");
}
