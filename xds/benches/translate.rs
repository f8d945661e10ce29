//! Full config for one sidecar of the synthetic mesh (1,000 services × 4 HTTP ports × 10
//! endpoints, a VirtualService and a DestinationRule each). Target: at most 20 ms to generate
//! (translation of every type plus encoding to `Any`).
//!
//! `cargo bench -p rudder-xds --bench translate`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rudder_e2e::synthetic;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::server::cache::{EncodedSet, EndpointTable};
use rudder_xds::translate;

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
    group.bench_function("endpoints", |b| b.iter(|| translate::endpoints(black_box(&snapshot))));
    group.bench_function("encode for_proxy", |b| {
        b.iter_batched(|| resources.clone(), |r| EncodedSet::encode(r, None), criterion::BatchSize::LargeInput)
    });
    group.bench_function("encode endpoints", |b| {
        b.iter_batched(|| endpoints.clone(), |e| EndpointTable::build(e, None), criterion::BatchSize::LargeInput)
    });
    group.bench_function("full config (translate + encode)", |b| {
        b.iter(|| full_config(black_box(&snapshot), black_box(&proxy)))
    });
    group.finish();
}

criterion_group!(benches, translate_one_sidecar);
criterion_main!(benches);
