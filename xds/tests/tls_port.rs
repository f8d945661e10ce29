//! Discovery's TLS port: its certificate chains to the mesh root and names discovery, and a
//! replaced certificate is what the next handshake gets (rotation without a restart).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rudder_xds::ca::{Authority, DEFAULT_MAX_WORKLOAD_TTL, generate_root};
use rudder_xds::model::Snapshot;
use rudder_xds::server::{DiscoveryServer, ServerOptions, ServingCertificate, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The leaf certificate the server presents to a client trusting `root` and asking for `name`.
async fn presented(addr: std::net::SocketAddr, root: &str, name: &str) -> Result<CertificateDer<'static>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(root.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned())
}

#[tokio::test]
async fn the_serving_certificate_verifies_and_rotates_without_a_restart() {
    let authority =
        Authority::new(generate_root("cluster.local", SystemTime::now()).unwrap(), DEFAULT_MAX_WORKLOAD_TTL).unwrap();
    let names = vec!["istiod.istio-system.svc".to_owned()];
    let issue = || authority.serving_certificate(&names, &[], Duration::from_secs(3600), SystemTime::now()).unwrap();
    let (chain, key) = issue();
    let serving = ServingCertificate::new(&chain, &key).unwrap();
    let root = authority.root_pem().to_owned();
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let server = DiscoveryServer::new(rx, ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsOptions { serving: serving.clone(), client_root: root.clone() };
    tokio::spawn(async move { server.serve_tls(listener, &tls, None, std::future::pending()).await });

    let first = presented(addr, &root, "istiod.istio-system.svc").await.unwrap();
    assert_eq!(first, CertificateDer::from_pem_slice(chain.as_bytes()).unwrap());
    let wrong_name = presented(addr, &root, "other.example").await.unwrap_err();
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");

    let (next_chain, next_key) = issue();
    serving.replace(&next_chain, &next_key).unwrap();
    let second = presented(addr, &root, "istiod.istio-system.svc").await.unwrap();
    assert_ne!(first, second, "a new handshake gets the replaced certificate");
    assert_eq!(second, CertificateDer::from_pem_slice(next_chain.as_bytes()).unwrap());
}
