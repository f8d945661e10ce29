//! Decision + mutation + JSON patch for a typical Deployment pod (as the API server sends it:
//! generateName, owner reference, two app containers with probes). Target: ≤ 200 µs.
//!
//! Run: `cargo bench -p rudder-webhook --bench inject`

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use rudder_webhook::inject::{InjectionContext, Outcome, inject_pod, patch};
use serde_json::json;

fn typical_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "generateName": "reviews-v1-7d9c8b5f4-",
            "namespace": "bookinfo",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d9c8b5f4"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9080"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9c8b5f4",
                                 "uid": "1", "controller": true}]
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [
                {"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
                 "ports": [{"containerPort": 9080, "name": "http"}],
                 "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
                 "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
                 "livenessProbe": {"tcpSocket": {"port": 9080}},
                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
                {"name": "log-shipper", "image": "example.com/shipper:1"}
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }
    }))
    .expect("pod")
}

fn bench(c: &mut Criterion) {
    let ctx = InjectionContext::offline_defaults();
    let pod = typical_pod();
    c.bench_function("decide+inject+patch deployment pod", |b| {
        b.iter(|| match inject_pod(&ctx, std::hint::black_box(&pod), "bookinfo") {
            Ok(Outcome::Injected(injected)) => patch(&pod, &injected),
            other => panic!("not injected: {other:?}"),
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
