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

/// A first subscription is filed in bulk (sorted, deduplicated): names in any order and
/// repeated count once, and a later subscription to one of them is no news.
#[tokio::test]
async fn a_first_subscription_in_any_order_with_repeats_names_each_once() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    stream.send(delta_request(Kind::Cluster, &[], &[], &cds.nonce)).await;

    stream.send(delta_request(Kind::Endpoint, &["b", "missing", "a", "b", "missing"], &[], "")).await;
    let eds = stream.recv().await;
    assert_eq!(delta_names(&eds), ["a", "b"]);
    assert_eq!(eds.removed_resources, ["missing"]);
    stream.send(delta_request(Kind::Endpoint, &[], &[], &eds.nonce)).await;
    stream.send(delta_request(Kind::Endpoint, &["a"], &[], "")).await;
    stream.assert_quiet().await;

    // Unsubscribed and subscribed again: sent again.
    stream.send(delta_request(Kind::Endpoint, &[], &["a"], "")).await;
    stream.send(delta_request(Kind::Endpoint, &["a"], &[], "")).await;
    let eds = stream.recv().await;
    assert_eq!(delta_names(&eds), ["a"]);
}

/// Turning the wildcard on sends what the explicit names left out; while it is on, an ACK
/// needs no answer, and an explicit name that does not exist is reported removed.
#[tokio::test]
async fn widening_to_the_wildcard_sends_the_rest() {
    let harness = Harness::start().await;
    let mut stream = harness.delta().await;
    stream.send(first_delta(Kind::Cluster, &["a"])).await;
    let cds = stream.recv().await;
    assert_eq!(delta_names(&cds), ["a"]);
    stream.send(delta_request(Kind::Cluster, &["*"], &[], &cds.nonce)).await;
    let cds = stream.recv().await;
    assert_eq!(delta_names(&cds), ["b"]);
    stream.send(delta_request(Kind::Cluster, &[], &[], &cds.nonce)).await;
    stream.assert_quiet().await;
    stream.send(delta_request(Kind::Cluster, &["a", "missing"], &[], "")).await;
    let cds = stream.recv().await;
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, ["missing"]);
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

/// Through the real translator: a delta stream holding every assignment gets exactly the one an
/// endpoint change touched, each time (content-only updates go out without a walk of all names).
#[tokio::test]
async fn an_endpoint_change_sends_only_the_changed_assignment() {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use prost::Message;
    use rudder_xds::model::{Endpoint, Protocol, Resolution, Service, ServicePort, Snapshot};
    use rudder_xds::server::{DiscoveryServer, ServerOptions};

    let host = |i: u32| format!("svc-{i}.ns.svc.cluster.local");
    let snapshot = |addresses: [&str; 2]| {
        let mut snapshot = Snapshot::default();
        for (i, address) in (0..).zip(addresses) {
            let service = Service {
                hostname: host(i),
                namespace: "ns".into(),
                name: format!("svc-{i}"),
                ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Protocol::Http }],
                addresses: vec![format!("10.96.0.{}", i + 1)],
                resolution: Resolution::ClientSideLb,
                mesh_external: false,
                export_to: vec![],
                kubernetes: true,
                traffic_distribution: Default::default(),
                subject_alt_names: Vec::new(),
            };
            snapshot.services.insert(host(i), Arc::new(service));
            snapshot.endpoints.insert(host(i), Arc::new(vec![Endpoint::plain(address, 8080, "http", "ns")]));
        }
        Arc::new(snapshot)
    };
    let (snapshots, rx) = tokio::sync::watch::channel(snapshot(["10.244.0.1", "10.244.1.1"]));
    let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
    let server = DiscoveryServer::new(rx, ServerOptions { debounce, ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await.unwrap() });
    let mut client = envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, requests) = tokio::sync::mpsc::channel(8);
    tx.send(first_delta(Kind::Cluster, &[])).await.unwrap();
    let mut responses = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let mut recv = async || tokio::time::timeout(PATIENCE, responses.message()).await.unwrap().unwrap().unwrap();

    let cds = recv().await;
    tx.send(delta_request(Kind::Cluster, &[], &[], &cds.nonce)).await.unwrap();
    let names = [format!("outbound|80||{}", host(0)), format!("outbound|80||{}", host(1))];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    tx.send(delta_request(Kind::Endpoint, &names, &[], "")).await.unwrap();
    let eds = recv().await;
    assert_eq!(delta_names(&eds), names);
    tx.send(delta_request(Kind::Endpoint, &[], &[], &eds.nonce)).await.unwrap();

    let address_of = |response: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse| {
        let any = response.resources[0].resource.as_ref().unwrap();
        let assignment = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        match &assignment.endpoints[0].lb_endpoints[0].host_identifier {
            Some(HostIdentifier::Endpoint(e)) => match &e.address.as_ref().unwrap().address {
                Some(Address::SocketAddress(s)) => s.address.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    for (step, address) in ["10.244.1.2", "10.244.1.3"].into_iter().enumerate() {
        snapshots.send_replace(snapshot(["10.244.0.1", address]));
        let eds = recv().await;
        assert_eq!(eds.type_url, Kind::Endpoint.type_url(), "step {step}");
        assert_eq!(delta_names(&eds), [names[1]], "step {step}: only the changed assignment");
        assert_eq!(address_of(&eds), address, "step {step}");
        assert!(eds.removed_resources.is_empty());
        tx.send(delta_request(Kind::Endpoint, &[], &[], &eds.nonce)).await.unwrap();
    }
}
