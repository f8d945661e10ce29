//! The `istio-sidecar-injector` ConfigMap (`config` and `values`), the mesh config and a pod:
//! each parsed as the admission server parses them, then the pod injected with that context
//! and the JSON patch taken. The first byte holds flags (revision, cluster and network, native
//! sidecars); the rest is text split at NUL bytes into config, values, mesh and pod (YAML).
//! Bad input is an error, never a panic.

#![no_main]

use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use rudder_config::mesh::MeshConfig;
use rudder_webhook::inject::{InjectionContext, JsonOutcome, inject_pod_json, kube_inject, patch};
use rudder_webhook::server::{parse_inject_config, parse_inject_values, parse_mesh};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut parts = text.splitn(4, '\0');
    let mut next = || parts.next().unwrap_or_default();
    let (config, values, mesh, pod) = (next(), next(), next(), next());
    // Each parser sees its text even when another one fails.
    let injector = parse_inject_config("ConfigMap istio-system/istio-sidecar-injector, key config", config);
    let values = parse_inject_values("ConfigMap istio-system/istio-sidecar-injector, key values", values);
    let mesh = parse_mesh("ConfigMap istio-system/istio, key mesh", mesh, &MeshConfig::istio_defaults());
    let (Ok(injector), Ok(values), Ok(mesh)) = (injector, values, mesh) else { return };
    let ctx = InjectionContext {
        injector,
        values,
        mesh,
        revision: (flags & 1 != 0).then(|| "canary".to_owned()),
        cluster_id: (flags & 2 != 0).then(|| "cluster-1".to_owned()),
        network: (flags & 2 != 0).then(|| "network-1".to_owned()),
        native_sidecars: flags & 4 != 0,
    };
    // `rudder kube-inject` reads the same text as any workload documents.
    let _ = kube_inject::inject_documents(&ctx, pod);
    let Ok(docs) = rudder_config::load::documents("pod.yaml", pod) else { return };
    let Some(doc) = docs.into_iter().next() else { return };
    let Ok(pod) = serde_json::from_value::<Pod>(doc) else { return };
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
    if let Ok(JsonOutcome::Injected { injected, .. }) = inject_pod_json(&ctx, &pod, &namespace) {
        let _ = patch(&pod, &injected);
    }
});
