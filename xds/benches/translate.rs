//! Full config for one sidecar of the synthetic mesh (1,000 services × 4 HTTP ports × 10
//! endpoints, a VirtualService and a DestinationRule each). Target: at most 20 ms to generate
//! (translation of every type plus encoding to `Any`).
//!
//! `cargo bench -p rudder-xds --bench translate`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use prost::bytes::Bytes;
use rudder_e2e::synthetic;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::server::cache::{EncodedSet, EndpointTable, ResourceMap};
use rudder_xds::translate;
use rudder_xds::translate::context::Context;

const SERVICES: usize = 1_000;
const PORTS: usize = 4;
const ENDPOINTS: usize = 10;

/// A sidecar of service 0's first workload (so it has inbound config too).
fn sidecar() -> Proxy {
    let metadata: BTreeMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "LABELS": {"app": "svc-0", "version": "v1"},
        "NAMESPACE": synthetic::NAMESPACE,
    }))
    .unwrap_or_default();
    let id = format!("sidecar~10.128.0.0~svc-0-0.{0}~{0}.svc.cluster.local", synthetic::NAMESPACE);
    Proxy::from_node(&id, &metadata).expect("a valid node id")
}

fn full_config(snapshot: &Snapshot, proxy: &Proxy) -> usize {
    let resources = translate::for_proxy(snapshot, proxy);
    let endpoints = translate::endpoints(snapshot);
    let encoded = EncodedSet::encode(resources, None);
    let table = EndpointTable::build(endpoints, None);
    encoded.clusters.len() + encoded.listeners.len() + encoded.routes.len() + table.encoded.len()
}

/// [`full_config`] as discovery builds it: the outbound side with its clusters encoded as
/// they are built, the inbound side apart.
fn full_config_served(snapshot: &Snapshot, proxy: &Proxy) -> usize {
    let outbound = EncodedSet::encode(translate::outbound_served(snapshot, proxy), None);
    let inbound = EncodedSet::encode(translate::inbound(snapshot, proxy), None);
    let table = EndpointTable::build(translate::endpoints(snapshot), None);
    [&outbound, &inbound].iter().map(|s| s.clusters.len() + s.listeners.len() + s.routes.len()).sum::<usize>()
        + table.encoded.len()
}

fn translate_one_sidecar(c: &mut Criterion) {
    let snapshot = synthetic::snapshot(SERVICES, PORTS, ENDPOINTS);
    let proxy = sidecar();
    let resources = translate::for_proxy(&snapshot, &proxy);
    let endpoints = translate::endpoints(&snapshot);
    eprintln!(
        "mesh {SERVICES}×{PORTS}×{ENDPOINTS}: {} clusters, {} listeners, {} routes, {} assignments",
        resources.clusters.len(),
        resources.listeners.len(),
        resources.routes.len(),
        endpoints.len()
    );

    let mut group = c.benchmark_group("sidecar 1000x4x10");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("outbound", |b| b.iter(|| translate::outbound(black_box(&snapshot), black_box(&proxy))));
    group.bench_function("inbound", |b| b.iter(|| translate::inbound(black_box(&snapshot), black_box(&proxy))));
    group.bench_function("for_proxy", |b| b.iter(|| translate::for_proxy(black_box(&snapshot), black_box(&proxy))));
    // Endpoints are written as bytes directly (no prost messages), so translation and encoding
    // are one step; the table step hashes them and files them by name.
    group.bench_function("endpoints (translate + encode)", |b| b.iter(|| translate::endpoints(black_box(&snapshot))));
    group.bench_function("encode for_proxy", |b| {
        b.iter_batched(|| resources.clone(), |r| EncodedSet::encode(r, None), criterion::BatchSize::LargeInput)
    });
    group.bench_function("endpoint table", |b| {
        b.iter_batched(|| endpoints.clone(), |e| EndpointTable::build(e, None), criterion::BatchSize::LargeInput)
    });
    group.bench_function("full config (translate + encode)", |b| {
        b.iter(|| full_config(black_box(&snapshot), black_box(&proxy)))
    });
    group.bench_function("full config as served (translate + encode)", |b| {
        b.iter(|| full_config_served(black_box(&snapshot), black_box(&proxy)))
    });
    // Clusters as an array of messages, then encoded (the message path: EnvoyFilter patches,
    // gateways), and built and encoded one at a time (`cluster::outbound_served`, discovery's).
    group.bench_function("clusters built, then encoded", |b| {
        b.iter(|| encoded_each(&translate::cluster::outbound(&Context::new(black_box(&snapshot), black_box(&proxy)))))
    });
    group.bench_function("clusters built and encoded one at a time", |b| {
        b.iter(|| {
            translate::cluster::outbound_served(&Context::new(black_box(&snapshot), black_box(&proxy))).encoded.len()
        })
    });
    // Likewise for the route configurations (`route::outbound_served`).
    group.bench_function("routes built, then encoded", |b| {
        b.iter(|| encoded_each(&translate::route::outbound(&Context::new(black_box(&snapshot), black_box(&proxy)))))
    });
    group.bench_function("routes built and encoded one virtual host at a time", |b| {
        b.iter(|| {
            translate::route::outbound_served(&Context::new(black_box(&snapshot), black_box(&proxy)), None).0.len()
        })
    });
    // What holding the view as prost messages costs at the least, whatever builds them: the
    // messages this proxy's config decodes to, and merely their default structs.
    let encoded = EncodedSet::encode(resources, None);
    group.bench_function("floor: clusters decoded from their bytes (prost)", |b| {
        b.iter(|| decoded::<Cluster>(black_box(&encoded.clusters)))
    });
    group.bench_function("floor: route configurations decoded from their bytes (prost)", |b| {
        b.iter(|| decoded::<RouteConfiguration>(black_box(&encoded.routes)))
    });
    group.bench_function("floor: default Cluster structs, one per cluster", |b| {
        b.iter(|| {
            let clusters: Vec<Cluster> = (0..encoded.clusters.len()).map(|_| Cluster::default()).collect();
            black_box(clusters).len()
        })
    });
    group.finish();
}

/// `messages` encoded one by one, as discovery files them (then dropped).
fn encoded_each<M: Message>(messages: &[M]) -> usize {
    let encoded: Vec<Bytes> = messages.iter().map(|m| Bytes::from(m.encode_to_vec())).collect();
    encoded.len()
}

/// The resources of `map` as prost messages (then dropped).
fn decoded<M: Message + Default>(map: &ResourceMap) -> usize {
    let messages: Vec<M> = map.values().filter_map(|r| M::decode(r.value.as_ref()).ok()).collect();
    black_box(&messages).len()
}

/// Sidecar scoping (issue 12's target: a proxy scoped to its namespace gets a config at least
/// ten times smaller, generated at least ten times faster): the same mesh spread over 100
/// namespaces, one sidecar in `bench-0` without and with a Sidecar `egress: ./*`.
fn sidecar_scoping(c: &mut Criterion) {
    let mut snapshot = synthetic::snapshot_in_namespaces(SERVICES, PORTS, ENDPOINTS, 100);
    let metadata: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({"LABELS": {"app": "client"}, "NAMESPACE": "bench-0"}))
            .unwrap_or_default();
    let proxy = Proxy::from_node("sidecar~10.0.0.1~client-1.bench-0~bench-0.svc.cluster.local", &metadata)
        .expect("a valid node id");
    let generate = |snapshot: &Snapshot| {
        let encoded = EncodedSet::encode(translate::for_proxy(snapshot, &proxy), None);
        encoded.clusters.len() + encoded.listeners.len() + encoded.routes.len()
    };
    let bytes = |snapshot: &Snapshot| -> usize {
        let encoded = EncodedSet::encode(translate::for_proxy(snapshot, &proxy), None);
        [&encoded.clusters, &encoded.listeners, &encoded.routes]
            .iter()
            .flat_map(|m| m.values())
            .map(|r| r.value.len())
            .sum()
    };
    let unscoped_bytes = bytes(&snapshot);
    let mut group = c.benchmark_group("sidecar scoping 1000x4x10 in 100 namespaces");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("unscoped (translate + encode)", |b| b.iter(|| generate(black_box(&snapshot))));
    let loads = rudder_config::load::load_str(
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: bench-0}\n\
         spec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n",
    )
    .expect("the Sidecar parses");
    for loaded in loads.objects {
        if let rudder_config::IstioObject::Sidecar(sidecar) = loaded.object {
            snapshot.sidecars.push(std::sync::Arc::new(*sidecar));
        }
    }
    let scoped_bytes = bytes(&snapshot);
    eprintln!(
        "config bytes (clusters, listeners, routes): unscoped {unscoped_bytes}, scoped {scoped_bytes} ({:.0}x smaller)",
        unscoped_bytes as f64 / scoped_bytes.max(1) as f64
    );
    group.bench_function("scoped to its namespace (translate + encode)", |b| b.iter(|| generate(black_box(&snapshot))));
    group.finish();
}

criterion_group!(benches, translate_one_sidecar, sidecar_scoping);
criterion_main!(benches);
