//! The mesh CA's signing throughput (target: ≥ 500 CSRs/s on 2 cores, ECDSA P-256).
//!
//! - `ca/sign`: one CSR verified and signed (`Authority::sign`), one core;
//! - `ca/create_certificate_tls_x64`: 64 agents asking at once over the real path — each its own
//!   TLS connection (handshake included) with the discovery certificate, gRPC, token authentication, CSR check and signing — so the
//!   figure is what a restart of 64 pods costs the CA. Clients run on the same 2 cores.
//!
//! `cargo bench -p rudder-xds --bench ca`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rudder_xds::ca::{Authority, DEFAULT_MAX_WORKLOAD_TTL, SpiffeId, csr_for, generate_root};
use rudder_xds::ca_service::{CertificateService, StaticTokens, create_certificate};

const AGENTS: usize = 64;

fn authority() -> Authority {
    let root = generate_root("cluster.local", SystemTime::now()).expect("a root");
    Authority::new(root, DEFAULT_MAX_WORKLOAD_TTL).expect("an authority")
}

fn sign(c: &mut Criterion) {
    let authority = authority();
    let identity = SpiffeId::new("cluster.local", "default", "sleep");
    let (csr, _key) = csr_for(&identity).expect("a CSR");
    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| {
        b.iter(|| black_box(authority.sign(&csr, &identity, None, SystemTime::now()).expect("signed")))
    });
    group.finish();
}

fn create_certificate_over_tls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let authority = authority();
    let (cert_chain, key) = authority
        .serving_certificate(&["localhost".into()], &[], Duration::from_secs(3600), SystemTime::now())
        .expect("a serving certificate");
    let root = authority.root_pem().to_owned();
    let identities: Vec<SpiffeId> =
        (0..AGENTS).map(|i| SpiffeId::new("cluster.local", "default", &format!("sa-{i}"))).collect();
    let tokens = StaticTokens(
        identities.iter().enumerate().map(|(i, id)| (format!("token-{i}"), id.clone())).collect::<BTreeMap<_, _>>(),
    );
    let csrs: Vec<String> = identities.iter().map(|id| csr_for(id).expect("a CSR").0).collect();
    let bearer: Vec<String> = (0..AGENTS).map(|i| format!("token-{i}")).collect();
    let service = CertificateService::new(Arc::new(RwLock::new(authority)), Arc::new(tokens));
    let endpoint = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        let tls =
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(&cert_chain, &key));
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .expect("TLS")
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client_tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&root))
            .domain_name("localhost");
        tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .expect("an endpoint")
            .tls_config(client_tls)
            .expect("client TLS")
    });
    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(AGENTS as u64));
    group.sample_size(20);
    group.bench_function("create_certificate_tls_x64", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    // Each agent on a connection of its own, as agents starting together are.
                    let calls = csrs.iter().enumerate().map(|(i, csr)| {
                        let endpoint = endpoint.clone();
                        let token = &bearer[i];
                        async move {
                            let channel =
                                endpoint.connect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                            create_certificate(channel, token, csr.clone(), Duration::from_secs(3600)).await
                        }
                    });
                    for chain in futures::future::join_all(calls).await {
                        black_box(chain.expect("signed"));
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, sign, create_certificate_over_tls);
criterion_main!(benches);
