//! What Istio mTLS costs a request: latency from a client through the client's sidecar and the
//! server's sidecar to the app, plaintext (PeerAuthentication DISABLE mesh-wide, so auto mTLS
//! is off too) against mutual TLS (STRICT), measured in one run on the local mesh, alternating
//! the modes so drift on a shared machine hits both alike. Keep-alive connections, as clients
//! and sidecars keep them; each sample is one sequential GET. Target: mTLS p50 ≤ 1.10 × plaintext.
//!
//!   cargo bench -p rudder-operator --bench mtls

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rudder_e2e::mesh::{LocalMesh, MeshOptions, SERVICE_HOST};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
const ROUNDS: usize = 3;
const SAMPLES: usize = 1_500;
const WARMUP: usize = 200;

const DISABLE: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
";
const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn measure(mesh: &mut LocalMesh, policy: &str) -> Vec<Duration> {
    mesh.apply("traffic", policy).await.unwrap();
    mesh.wait_synced().await.unwrap();
    let request = mesh.via_client(SERVICE_HOST, "/get");
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let started = Instant::now();
        let reply = mesh.send(&request).await.unwrap();
        let took = started.elapsed();
        assert_eq!(reply.status, 200);
        if i >= WARMUP {
            samples.push(took);
        }
    }
    samples
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let envoy = rudder_xds::testing::envoy_path().unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
    let options = MeshOptions::new(PathBuf::from(RUDDER), envoy, examples);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut mesh = LocalMesh::start(options).await.unwrap();
        let (mut plain, mut mtls) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            plain.extend(measure(&mut mesh, DISABLE).await);
            mtls.extend(measure(&mut mesh, STRICT).await);
            println!("round {}/{ROUNDS} done", round + 1);
        }
        // The connection really is mTLS under STRICT: the server saw the client's certificate.
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/headers")).await.unwrap();
        assert!(reply.json()["headers"]["x-forwarded-client-cert"].is_string(), "STRICT hop is mTLS");
        plain.sort();
        mtls.sort();
        let row = |name: &str, s: &[Duration]| {
            println!(
                "{name:<10} n={:<5} p50={:>7.3} ms  p90={:>7.3} ms  p99={:>7.3} ms",
                s.len(),
                percentile(s, 0.5).as_secs_f64() * 1e3,
                percentile(s, 0.9).as_secs_f64() * 1e3,
                percentile(s, 0.99).as_secs_f64() * 1e3
            );
        };
        row("plaintext", &plain);
        row("mTLS", &mtls);
        let ratio = percentile(&mtls, 0.5).as_secs_f64() / percentile(&plain, 0.5).as_secs_f64();
        println!("mTLS p50 / plaintext p50 = {ratio:.3} (target ≤ 1.10)");
    });
}
