//! NDS (the name table) over real gRPC on 127.0.0.1: served on request, pushed when the
//! services change and only then, over SotW and delta, and never to a stream that did not ask.
#![allow(clippy::unwrap_used)]

mod ads_support;

use std::sync::Arc;

use ads_support::*;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use rudder_xds::model::{Resolution, Service, Snapshot};
use rudder_xds::nametable::NameTable;
use rudder_xds::server::Kind;

fn service(hostname: &str, name: &str, address: &str, kubernetes: bool) -> Service {
    Service {
        hostname: hostname.into(),
        namespace: "default".into(),
        name: name.into(),
        ports: Vec::new(),
        addresses: vec![address.into()],
        resolution: Resolution::ClientSideLb,
        mesh_external: false,
        export_to: Vec::new(),
        kubernetes,
        traffic_distribution: Default::default(),
        subject_alt_names: Vec::new(),
    }
}

fn snapshot(services: &[Service]) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        services: services.iter().map(|s| (s.hostname.clone(), Arc::new(s.clone()))).collect(),
        ..Default::default()
    })
}

fn table(response: &DiscoveryResponse) -> NameTable {
    assert_eq!(response.type_url, Kind::NameTable.type_url());
    assert_eq!(response.resources.len(), 1);
    assert_eq!(response.resources[0].type_url, "type.googleapis.com/istio.networking.nds.v1.NameTable");
    NameTable::decode(response.resources[0].value.as_slice()).unwrap()
}

/// Publishes `services` and waits until the server serves them.
async fn publish(harness: &Harness, services: &[Service]) {
    let before = harness.server.version();
    harness.snapshots.send_replace(snapshot(services));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while harness.server.version() == before {
        assert!(tokio::time::Instant::now() < deadline, "no push");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn httpbin() -> Service {
    service("httpbin.default.svc.cluster.local", "httpbin", "127.0.10.5", true)
}

#[tokio::test]
async fn sotw_name_table_follows_service_changes_only() {
    let harness = Harness::start().await;
    publish(&harness, &[httpbin()]).await;
    let mut stream = harness.sotw().await;
    stream.send(first(Kind::NameTable, &[])).await;
    let response = stream.recv().await;
    let first_table = table(&response);
    let info = &first_table.table["httpbin.default.svc.cluster.local"];
    assert_eq!(info.ips, ["127.0.10.5"]);
    // The node is in `default`, like the service: the bare name too.
    assert_eq!(info.alt_hosts, ["httpbin.default.svc", "httpbin.default", "httpbin"]);
    stream.send(ack(&response, &[])).await;
    stream.assert_quiet().await;

    // A push that leaves the services as they were sends nothing.
    harness.snapshots.send_replace(snapshot(&[httpbin()]));
    stream.assert_quiet().await;

    harness.snapshots.send_replace(snapshot(&[httpbin(), service("api.example.com", "api", "127.0.20.1", false)]));
    let response = stream.recv().await;
    let table = table(&response);
    assert_eq!(table.table.keys().collect::<Vec<_>>(), ["api.example.com", "httpbin.default.svc.cluster.local"]);
    assert_eq!(table.table["api.example.com"].ips, ["127.0.20.1"]);
    stream.send(ack(&response, &[])).await;
    stream.assert_quiet().await;
    assert_eq!(harness.syncz().await[0]["types"]["nds"]["nonce_acked"], response.nonce);
}

#[tokio::test]
async fn envoy_streams_are_not_sent_the_name_table() {
    let harness = Harness::start().await;
    let mut stream = harness.sotw().await;
    stream.send(first(Kind::Cluster, &[])).await;
    let cds = stream.recv().await;
    assert_eq!(cds.type_url, Kind::Cluster.type_url());
    stream.send(ack(&cds, &[])).await;
    stream.send(request(Kind::Listener, &[], "", "")).await;
    let lds = stream.recv().await;
    stream.send(ack(&lds, &[])).await;
    // Services change; the fixed clusters and listeners do not: nothing at all is sent.
    harness.snapshots.send_replace(snapshot(&[httpbin()]));
    stream.assert_quiet().await;
}

#[tokio::test]
async fn delta_name_table() {
    let harness = Harness::start().await;
    publish(&harness, &[httpbin()]).await;
    let mut stream = harness.delta().await;
    stream.send(first_delta_nds()).await;
    let response = stream.recv().await;
    assert_eq!(response.resources.len(), 1);
    let any = response.resources[0].resource.as_ref().unwrap();
    let table = NameTable::decode(any.value.as_slice()).unwrap();
    assert!(table.table.contains_key("httpbin.default.svc.cluster.local"));
    stream.send(delta_request(Kind::NameTable, &[], &[], &response.nonce)).await;
    harness.snapshots.send_replace(snapshot(&[]));
    let response = stream.recv().await;
    let any = response.resources[0].resource.as_ref().unwrap();
    assert!(NameTable::decode(any.value.as_slice()).unwrap().table.is_empty());
}

fn first_delta_nds() -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
    envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_request(Kind::NameTable, &[], &[], "")
    }
}
