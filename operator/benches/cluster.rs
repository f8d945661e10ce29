//! Cluster figures on the test cluster (`rudder_e2e::cluster`: `RUDDER_K8S_LOCAL` or
//! `KUBECONFIG`), printed, not asserted:
//! - `kubectl apply` of the default IstioOperator → HEALTHY (the operator installed by
//!   `rudder operator init`);
//! - injection latency as the API server sees it: server-side dry-run pod creates in an injected
//!   namespace against the same in an uninjected one;
//! - `kubectl apply` of a VirtualService → every sidecar's Envoy holds the new route in its
//!   config dump (read in each pod through `kubectl exec … rudder proxy request`, all pods
//!   polled at once, so each sample is an upper bound by one exec round trip).
//!
//!   RUDDER_K8S_LOCAL=$(scripts/k8s-local.sh) cargo bench -p rudder-operator --bench cluster

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rudder_e2e::cluster::{self, Cluster};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
const VS_CHANGES: usize = 30;
const DRY_RUN_PODS: usize = 200;

fn example(path: &str) -> String {
    format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    )
}

fn healthy_time(cluster: &Cluster) {
    let out = cluster.command(RUDDER).args(["operator", "init"]).output().unwrap();
    assert!(out.status.success(), "operator init: {}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    cluster.kubectl(&["apply", "-f", &example("operator/default.yaml")]).unwrap();
    wait_for("HEALTHY", Duration::from_secs(300), || {
        let status = cluster
            .kubectl(&["-n", "istio-system", "get", "istiooperator", "default", "-o", "jsonpath={.status.status}"])
            .ok()?;
        (status == "HEALTHY").then_some(())
    });
    println!("default IstioOperator: kubectl apply → HEALTHY in {:.1} s", started.elapsed().as_secs_f64());
}

fn injection_latency(cluster: &Cluster) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::Api;
    use kube::api::PostParams;
    for (ns, label) in [("bench-injected", Some("istio-injection=enabled")), ("bench-plain", None)] {
        let _ = cluster.kubectl(&["create", "namespace", ns]);
        if let Some(label) = label {
            cluster.kubectl(&["label", "namespace", ns, label, "--overwrite"]).unwrap();
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = cluster.client().await.unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": "bench-", "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "app", "image": "docker.io/curlimages/curl:8.8.0"}]},
        }))
        .unwrap();
        let dry_run = PostParams { dry_run: true, ..PostParams::default() };
        let mut results = Vec::new();
        for ns in ["bench-injected", "bench-plain"] {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let mut samples = Vec::with_capacity(DRY_RUN_PODS);
            // The first rounds warm connections and the webhook's TLS session.
            for i in 0..DRY_RUN_PODS + 20 {
                let started = Instant::now();
                let created = api.create(&dry_run, &pod).await.unwrap();
                if i >= 20 {
                    samples.push(started.elapsed());
                }
                let injected = created.spec.unwrap().containers.iter().any(|c| c.name == "istio-proxy");
                assert_eq!(injected, ns == "bench-injected", "{ns}: injected={injected}");
            }
            results.push((ns, samples));
        }
        for (ns, samples) in results {
            println!("pod create (server-side dry run) in {ns}: {}", percentiles(samples));
        }
    });
}

/// The sidecar's route config dump, read in the pod through the agent's admin client
/// (`rudder proxy request`); each read costs a `kubectl exec`, so the figures are upper bounds.
fn routes(cluster: &Cluster, pod: &str) -> Option<String> {
    cluster
        .kubectl(&[
            "-n",
            "testns1",
            "exec",
            pod,
            "-c",
            "istio-proxy",
            "--",
            "rudder",
            "proxy",
            "request",
            "GET",
            "config_dump?resource=dynamic_route_configs",
        ])
        .ok()
}

fn vs_convergence(cluster: &Cluster) {
    let _ = cluster.kubectl(&["create", "namespace", "testns1"]);
    cluster.kubectl(&["label", "namespace", "testns1", "istio-injection=enabled", "--overwrite"]).unwrap();
    for app in ["apps/httpbin.yaml", "apps/sleep.yaml", "traffic/01-destination-rule-subsets.yaml"] {
        cluster.kubectl(&["apply", "-f", &example(app)]).unwrap();
    }
    for deploy in ["httpbin-v1", "httpbin-v2", "sleep"] {
        cluster
            .kubectl(&["-n", "testns1", "rollout", "status", &format!("deploy/{deploy}"), "--timeout=180s"])
            .unwrap();
    }
    let pods = cluster.kubectl(&["-n", "testns1", "get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]).unwrap();
    let sidecars: Vec<&str> = pods.split_whitespace().collect();
    let mut samples = Vec::new();
    for i in 0..VS_CHANGES {
        let marker = format!("bench-{}-{i}", std::process::id());
        let vs = format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: testns1}}
spec:
  hosts: [httpbin]
  http:
  - headers:
      response:
        set: {{x-bench: {marker}}}
    route:
    - destination: {{host: httpbin, subset: v1}}
"
        );
        let started = Instant::now();
        cluster.apply(&vs).unwrap();
        // Every sidecar is polled at once, each by its own thread, so one sidecar's reads do
        // not delay another's; the sample is when the last one showed the route.
        std::thread::scope(|scope| {
            for pod in &sidecars {
                let marker = &marker;
                scope.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let dump = routes(cluster, pod);
                        if dump.as_deref().is_some_and(|d| d.contains(marker.as_str())) {
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "{marker} not in {pod}'s route config dump within 60 s; last dump: {}",
                            dump.map(|d| d.chars().take(3000).collect::<String>()).unwrap_or_default()
                        );
                    }
                });
            }
        });
        samples.push(started.elapsed());
    }
    println!(
        "VirtualService kubectl apply → route in every sidecar's config dump ({} sidecars): {}",
        sidecars.len(),
        percentiles(samples)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) only builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(cluster) = cluster::shared(RUDDER) else { return };
    healthy_time(cluster);
    injection_latency(cluster);
    vs_convergence(cluster);
}
