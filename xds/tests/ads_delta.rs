//! Incremental (delta) ADS over real gRPC on 127.0.0.1, with fixed resources.
#![allow(clippy::unwrap_used)]

mod ads_support;

use ads_support::*;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use rudder_xds::server::{DebounceOptions, Kind};

fn first_delta(kind: Kind, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { node: Some(node()), ..delta_request(kind, subscribe, &[], "") }
}

#[tokio::test]
async fn wildcard_and_named_subscriptions_report_removed_resources() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    assert_eq!(delta_names(&cds), ["a", "b"]);
    assert!(cds.resources.iter().all(|r| r.version.len() == 16));
    stream.send(delta_request(Kind::Cluster, &[], &[], &cds.nonce)).await;

    // A name that does not exist is reported removed right away.
    stream.send(delta_request(Kind::Endpoint, &["a", "missing"], &[], "")).await;
    let eds = stream.recv().await;
    assert_eq!(delta_names(&eds), ["a"]);
    assert_eq!(eds.removed_resources, ["missing"]);
    stream.send(delta_request(Kind::Endpoint, &[], &[], &eds.nonce)).await;
    stream.assert_quiet().await;

    // Subscribing to another name sends just that one; unsubscribing needs no answer.
    stream.send(delta_request(Kind::Endpoint, &["b"], &[], "")).await;
    let eds = stream.recv().await;
    assert_eq!(delta_names(&eds), ["b"]);
    assert!(eds.removed_resources.is_empty());
    stream.send(delta_request(Kind::Endpoint, &[], &["a"], &eds.nonce)).await;
    stream.assert_quiet().await;

    // Deleting cluster b: CDS reports it removed, EDS reports b removed; a (unsubscribed)
    // changes without being sent.
    let (mut resources, _) = fixture();
    resources.clusters.truncate(1);
    harness.update(resources, vec![cla("a", 4)]);
    let cds = stream.recv().await;
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, ["b"]);
    let eds = stream.recv().await;
    assert!(eds.resources.is_empty());
    assert_eq!(eds.removed_resources, ["b"]);
    stream.assert_quiet().await;
}

#[tokio::test]
async fn only_changed_resources_are_pushed_and_nacks_recorded() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Endpoint, &["a", "b"])).await;
    let eds = stream.recv().await;
    assert_eq!(delta_names(&eds), ["a", "b"]);
    let mut nack = delta_request(Kind::Endpoint, &[], &[], &eds.nonce);
    nack.error_detail =
        Some(envoy_types::pb::google::rpc::Status { code: 3, message: "bad lb".into(), details: vec![] });
    stream.send(nack).await;
    stream.assert_quiet().await;
    assert_eq!(harness.syncz().await[0]["types"]["eds"]["last_error"], "bad lb");

    let (resources, _) = fixture();
    harness.update(resources, vec![cla("a", 0), cla("b", 2)]);
    let eds = stream.recv().await;
    assert_eq!(delta_names(&eds), ["b"]);
    stream.send(delta_request(Kind::Endpoint, &[], &[], &eds.nonce)).await;
    stream.assert_quiet().await;
    assert_eq!(harness.syncz().await[0]["types"]["eds"]["last_error"], serde_json::Value::Null);
}

#[tokio::test]
async fn initial_resource_versions_skip_what_the_client_already_has() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    let version_of_a = cds.resources.iter().find(|r| r.name == "a").unwrap().version.clone();

    // A reconnecting client that holds the current `a`, an outdated `b` and a deleted `gone`.
    let mut reconnect = harness.delta().await;
    let mut request = first_delta(Kind::Cluster, &[]);
    request.initial_resource_versions = [
        ("a".to_owned(), version_of_a),
        ("b".to_owned(), "0000000000000001".to_owned()),
        ("gone".to_owned(), "0000000000000002".to_owned()),
    ]
    .into();
    reconnect.send(request).await;
    let cds = reconnect.recv().await;
    assert_eq!(delta_names(&cds), ["b"]);
    assert_eq!(cds.removed_resources, ["gone"]);
}

#[tokio::test]
async fn first_response_is_sent_even_when_empty() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Route, &["none"])).await;
    let rds = stream.recv().await;
    assert!(rds.resources.is_empty());
    assert_eq!(rds.removed_resources, ["none"]);
}

#[tokio::test]
async fn a_delta_request_without_node_is_invalid_argument() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(delta_request(Kind::Cluster, &[], &[], "")).await;
    assert_eq!(stream.call_status().await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_large_push_is_split_into_responses_of_about_a_mebibyte() {
    let (mut resources, endpoints) = fixture();
    // Three clusters of ~600 KiB each: no two fit in one 1 MiB response.
    resources.clusters = ["big-1", "big-2", "big-3"]
        .iter()
        .map(|name| Cluster { alt_stat_name: "x".repeat(600 << 10), ..cluster(name, 1) })
        .collect();
    let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
    let harness = Harness::start_with((resources, endpoints), debounce).await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Cluster, &[])).await;
    let mut chunks = Vec::new();
    for _ in 0..3 {
        chunks.push(stream.recv().await);
    }
    let names: Vec<Vec<String>> = chunks.iter().map(delta_names).collect();
    assert_eq!(names, [["big-1"], ["big-2"], ["big-3"]]);
    let nonces: Vec<&str> = chunks.iter().map(|c| c.nonce.as_str()).collect();
    let base = nonces[0].trim_end_matches("/1");
    assert_eq!(nonces, [format!("{base}/1"), format!("{base}/2"), format!("{base}/3")]);

    // ACKs of the earlier chunks are neither stale nor the end of the send.
    for chunk in &chunks[..2] {
        stream.send(delta_request(Kind::Cluster, &[], &[], &chunk.nonce)).await;
    }
    stream.assert_quiet().await;
    assert_eq!(harness.syncz().await[0]["types"]["cds"]["nonce_acked"], "");
    stream.send(delta_request(Kind::Cluster, &[], &[], &chunks[2].nonce)).await;
    stream.assert_quiet().await;
    assert_eq!(harness.syncz().await[0]["types"]["cds"]["nonce_acked"], chunks[2].nonce);
    let (_, metrics) = harness.get("/metrics").await;
    assert!(
        !metrics.lines().any(|l| l.starts_with("pilot_xds_expired_nonce_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
