//! State-of-the-world ADS over real gRPC on 127.0.0.1, with fixed resources.
#![allow(clippy::unwrap_used)]

mod ads_support;

use std::collections::BTreeSet;
use std::time::Duration;

use ads_support::*;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use rudder_xds::server::{DebounceOptions, Kind};

/// Walks a fresh stream through CDS → EDS (a, b) → LDS → RDS (r1) like Envoy, ACKing each;
/// returns the last response of every type.
async fn converge(stream: &mut Sotw) -> [DiscoveryResponse; 4] {
    stream.send(first(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    assert_eq!(cds.type_url, Kind::Cluster.type_url());
    assert_eq!(names(&cds), ["a", "b"]);
    stream.send(ack(&cds, &[])).await;
    stream.send(request(Kind::Endpoint, &["a", "b"], "", "")).await;
    let eds = stream.recv().await;
    assert_eq!(eds.type_url, Kind::Endpoint.type_url());
    assert_eq!(names(&eds), ["a", "b"]);
    stream.send(ack(&eds, &["a", "b"])).await;
    stream.send(request(Kind::Listener, &[], "", "")).await;
    let lds = stream.recv().await;
    assert_eq!(names(&lds), ["l1"]);
    stream.send(ack(&lds, &[])).await;
    stream.send(request(Kind::Route, &["r1"], "", "")).await;
    let rds = stream.recv().await;
    assert_eq!(names(&rds), ["r1"]);
    stream.send(ack(&rds, &["r1"])).await;
    [cds, eds, lds, rds]
}

#[tokio::test]
async fn initial_config_in_order_with_unique_nonces_and_no_resend_after_ack() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    let responses = converge(&mut stream).await;
    let nonces: BTreeSet<&str> = responses.iter().map(|r| r.nonce.as_str()).collect();
    assert_eq!(nonces.len(), 4);
    assert!(responses.iter().all(|r| !r.version_info.is_empty()));
    stream.assert_quiet().await;

    let syncz = harness.syncz().await;
    let types = &syncz[0]["types"];
    assert_eq!(syncz[0]["proxy"], NODE_ID);
    assert_eq!(types["cds"]["nonce_acked"], types["cds"]["nonce_sent"]);
    assert_eq!(types["rds"]["names"], serde_json::json!(["r1"]));
    let (status, dump) = harness.get("/debug/config_dump?proxyID=app-1.default").await;
    assert_eq!(status, 200);
    assert!(dump.contains("\"l1\""), "{dump}");
    let (status, adsz) = harness.get("/debug/adsz").await;
    assert_eq!(status, 200);
    assert!(adsz.contains("\"sotw\""), "{adsz}");
}

#[tokio::test]
async fn nack_is_recorded_not_answered_and_a_later_fix_is_pushed() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    stream.send(first(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    let mut nack = ack(&cds, &[]);
    nack.version_info = String::new();
    nack.error_detail = Some(RpcStatus { code: 3, message: "cluster a: bad connect_timeout".into(), details: vec![] });
    stream.send(nack).await;
    stream.assert_quiet().await;

    let syncz = harness.syncz().await;
    assert_eq!(syncz[0]["types"]["cds"]["last_error"], "cluster a: bad connect_timeout");
    let (_, metrics) = harness.get("/metrics").await;
    assert!(metrics.contains("pilot_total_xds_rejects_total{type=\"cds\"} 1"), "{metrics}");

    let (mut resources, endpoints) = fixture();
    resources.clusters[0] = cluster("a", 5);
    harness.update(resources, endpoints);
    let fixed = stream.recv().await;
    assert_eq!(fixed.type_url, Kind::Cluster.type_url());
    assert_eq!(names(&fixed), ["a", "b"]);
    assert_ne!(fixed.version_info, cds.version_info);
    stream.send(ack(&fixed, &[])).await;
    stream.assert_quiet().await;
    assert_eq!(harness.syncz().await[0]["types"]["cds"]["last_error"], serde_json::Value::Null);
}

#[tokio::test]
async fn stale_nonce_is_ignored_and_added_names_are_answered_alone() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    stream.send(first(Kind::Endpoint, &["a"])).await;
    let eds = stream.recv().await;
    assert_eq!(names(&eds), ["a"]);
    // A request echoing a nonce that is not the latest is not answered, whatever it asks.
    stream.send(request(Kind::Endpoint, &["a", "b"], &eds.version_info, "not-the-latest")).await;
    stream.assert_quiet().await;
    // The ACK of the latest response adding `b` gets `b` only.
    stream.send(ack(&eds, &["a", "b"])).await;
    let added = stream.recv().await;
    assert_eq!(names(&added), ["b"]);
    stream.send(ack(&added, &["a", "b"])).await;
    stream.assert_quiet().await;
    let (_, metrics) = harness.get("/metrics").await;
    assert!(metrics.contains("pilot_xds_expired_nonce_total{type=\"eds\"} 1"), "{metrics}");
}

#[tokio::test]
async fn empty_names_unsubscribe_a_non_wildcard_type() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    let _ = converge(&mut stream).await;
    stream.send(request(Kind::Endpoint, &[], "", "")).await;
    stream.assert_quiet().await;
    let types = harness.syncz().await[0]["types"].clone();
    assert!(types.get("eds").is_none(), "{types}");
    // An endpoint change no longer reaches the stream.
    let (resources, _) = fixture();
    harness.update(resources, vec![cla("a", 7), cla("b", 7)]);
    stream.assert_quiet().await;
    assert_eq!(harness.server.version(), 2);
}

#[tokio::test]
async fn a_push_sends_only_changed_endpoints_and_routes() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    let _ = converge(&mut stream).await;

    let (resources, _) = fixture();
    harness.update(resources.clone(), vec![cla("a", 0), cla("b", 3)]);
    let eds = stream.recv().await;
    assert_eq!(eds.type_url, Kind::Endpoint.type_url());
    assert_eq!(names(&eds), ["b"]);
    stream.send(ack(&eds, &["a", "b"])).await;
    stream.assert_quiet().await;

    // A changed route is sent alone; an unsubscribed one (r2) is not sent at all.
    let mut changed = resources.clone();
    changed.routes =
        vec![route("r1"), RouteConfiguration { validate_clusters: Some(Default::default()), ..route("r2") }];
    harness.update(changed.clone(), vec![cla("a", 0), cla("b", 3)]);
    stream.assert_quiet().await;
    changed.routes = vec![RouteConfiguration { validate_clusters: Some(Default::default()), ..route("r1") }];
    harness.update(changed, vec![cla("a", 0), cla("b", 3)]);
    let rds = stream.recv().await;
    assert_eq!(rds.type_url, Kind::Route.type_url());
    assert_eq!(names(&rds), ["r1"]);
}

#[tokio::test]
async fn a_changed_cluster_is_sent_as_the_full_set_with_its_endpoints() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    let _ = converge(&mut stream).await;
    let (mut resources, endpoints) = fixture();
    resources.clusters[1] = cluster("b", 9);
    harness.update(resources, endpoints);
    let cds = stream.recv().await;
    assert_eq!(names(&cds), ["a", "b"]);
    // Envoy re-warms `b` and needs its (unchanged) endpoints again.
    let eds = stream.recv().await;
    assert_eq!(eds.type_url, Kind::Endpoint.type_url());
    assert_eq!(names(&eds), ["b"]);
    stream.assert_quiet().await;
}

#[tokio::test]
async fn a_burst_of_changes_is_one_push() {
    let debounce = DebounceOptions { quiet: Duration::from_millis(200), max_delay: Duration::from_secs(5) };
    let harness = Harness::start_with(fixture(), debounce).await;
    let mut stream = harness.sotw().await;
    stream.send(first(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    stream.send(ack(&cds, &[])).await;
    for timeout in 2..12 {
        let (mut resources, endpoints) = fixture();
        resources.clusters[0] = cluster("a", timeout);
        harness.update(resources, endpoints);
    }
    let pushed = stream.recv().await;
    assert_eq!(names(&pushed), ["a", "b"]);
    stream.send(ack(&pushed, &[])).await;
    stream.assert_quiet().await;
    assert_eq!(harness.server.version(), 2);
    let (_, metrics) = harness.get("/metrics").await;
    assert!(metrics.contains("pilot_xds_pushes_total{type=\"cds\"} 2"), "{metrics}");
    assert!(metrics.contains("pilot_xds 1"), "one connected stream: {metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("pilot_proxy_convergence_time_count") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l.starts_with("pilot_xds_push_time_count") && !l.ends_with(" 0")), "{metrics}");
}

#[tokio::test]
async fn a_client_that_never_answers_cannot_hold_back_other_first_configs() {
    let options = rudder_xds::server::ServerOptions {
        debounce: DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) },
        initial_push_concurrency: 1,
        initial_push_timeout: Duration::from_millis(300),
    };
    let harness = Harness::start_with_options(fixture(), options).await;
    let mut silent = harness.sotw().await;
    silent.send(first(Kind::Cluster, &[])).await;
    let _never_acked = silent.recv().await;
    // The only initial-push slot is held by a stream that never ACKs; it is given back after
    // the timeout, so the next proxy still gets its config.
    let mut next = harness.sotw().await;
    next.send(first(Kind::Cluster, &[])).await;
    assert_eq!(names(&next.recv().await), ["a", "b"]);
}

#[tokio::test]
async fn a_request_without_node_is_invalid_argument() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    stream.send(request(Kind::Cluster, &[], "", "")).await;
    let status = stream.call_status().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let mut stream = harness.sotw().await;
    let mut bad = first(Kind::Cluster, &[]);
    bad.node.as_mut().unwrap().id = "not-an-istio-node".into();
    stream.send(bad).await;
    assert_eq!(stream.call_status().await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn streams_with_the_same_view_share_encoded_resources() {
    let harness = Harness::start().await;
    let mut one = harness.sotw().await;
    let mut two = harness.sotw().await;
    let first_config = converge(&mut one).await;
    let second_config = converge(&mut two).await;
    assert_eq!(first_config[0].resources, second_config[0].resources);
    let (_, adsz) = harness.get("/debug/adsz").await;
    let adsz: serde_json::Value = serde_json::from_str(&adsz).unwrap();
    assert_eq!(adsz["views"], 1);
    assert_eq!(adsz["connections"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_default_translator_serves_a_snapshot() {
    use std::sync::Arc;
    let (_snapshots, rx) = tokio::sync::watch::channel(Arc::new(rudder_xds::model::Snapshot::default()));
    let server = rudder_xds::server::DiscoveryServer::new(rx, Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await.unwrap() });
    let client = envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"));
    let mut client = client.await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first(Kind::Cluster, &[])).await.unwrap();
    let mut responses =
        client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let cds = tokio::time::timeout(PATIENCE, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(cds.type_url, Kind::Cluster.type_url());
}

#[tokio::test]
async fn nothing_is_served_before_the_registry_has_loaded() {
    let harness = Harness::start_loading().await;
    let (status, body) = harness.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    let mut sotw = harness.sotw().await;
    sotw.send(first(Kind::Cluster, &[])).await;
    let mut delta = harness.delta().await;
    let delta_first = DeltaDiscoveryRequest { node: Some(node()), ..delta_request(Kind::Cluster, &[], &[], "") };
    delta.send(delta_first).await;
    // Held, not answered with an empty mesh (which would remove every cluster a proxy
    // reconnecting after a restart has).
    sotw.assert_quiet().await;
    delta.assert_quiet().await;

    // The registry's first snapshot: both streams get the real config, once.
    harness.snapshots.send_replace(std::sync::Arc::new(rudder_xds::model::Snapshot::default()));
    let cds = sotw.recv().await;
    assert_eq!(names(&cds), ["a", "b"]);
    let delta_cds = delta.recv().await;
    assert_eq!(delta_names(&delta_cds), ["a", "b"]);
    let (status, body) = harness.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    sotw.send(ack(&cds, &[])).await;
    sotw.assert_quiet().await;
}

/// Requests several times the HTTP/2 receive window (an EDS subscription of 5,000 names,
/// ~350 KB, against 64 KiB) go through: discovery reads them as they arrive, which lets the
/// client send the rest, and answers what the stream sends after them.
#[tokio::test]
async fn requests_larger_than_the_receive_window_are_read_and_answered() {
    use prost::Message;
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    stream.send(first(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    stream.send(ack(&cds, &[])).await;
    let many: Vec<String> =
        (0..5_000).map(|i| format!("outbound|8080||service-{i:05}.a-long-namespace-name.svc.cluster.local")).collect();
    let subscribed: Vec<&str> = ["a", "b"].into_iter().chain(many.iter().map(String::as_str)).collect();
    let subscription = request(Kind::Endpoint, &subscribed, "", "");
    assert!(subscription.encoded_len() > 4 * rudder_xds::server::RECEIVE_WINDOW as usize);
    stream.send(subscription).await;
    let eds = stream.recv().await;
    assert_eq!(names(&eds), ["a", "b"]);
    for _ in 0..3 {
        stream.send(ack(&eds, &subscribed)).await;
    }
    stream.send(request(Kind::Listener, &[], "", "")).await;
    let lds = stream.recv().await;
    assert_eq!(names(&lds), ["l1"]);
    stream.assert_quiet().await;
}
