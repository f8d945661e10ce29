//! TLS for the harnesses: a test CA issuing server and client certificates and revocation
//! lists (rcgen), an HTTPS client that picks its SNI, trust root and client certificate, and a
//! TLS server that answers every request with one fixed reply (a backend with its own TLS, for
//! gateway passthrough).
//! Requests are plain HTTP/1.1 with `Connection: close`, so a reply is read to its end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, RevocationReason, RevokedCertParams, SerialNumber, date_time_ymd,
};
use rudder_xds::ca::{Authority, CaMaterial, DEFAULT_MAX_WORKLOAD_TTL, SpiffeId, csr_for, identity_of_certificate};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A throwaway CA.
#[derive(Debug)]
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let params = ca_params(name)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(ca_params(name)?, key) })
    }

    /// A server certificate for `hosts` (DNS names).
    pub fn server(&self, hosts: &[&str]) -> anyhow::Result<CertPair> {
        self.issue(hosts, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> anyhow::Result<CertPair> {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A certificate revocation list of this CA revoking `revoked` (certificates it issued),
    /// PEM, current from 2024 for a hundred years.
    pub fn crl(&self, revoked: &[&CertPair]) -> anyhow::Result<String> {
        let revoked_certs = revoked
            .iter()
            .map(|pair| {
                let (_, pem) = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("certificate PEM: {e}"))?;
                let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
                    .map_err(|e| anyhow::anyhow!("certificate: {e}"))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2124, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<CertPair> {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn ca_params(name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ok(params)
}

fn chain(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>()?)
}

fn private_key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    Ok(PrivateKeyDer::from_pem_slice(pem.as_bytes())?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A `v1` Secret document (for a config directory or `kubectl apply`) holding `entries` (key,
/// PEM text) in `stringData`; `kubernetes.io/tls` when it has `tls.crt` and `tls.key`, else
/// `Opaque`. Ends with `---`.
pub fn secret_yaml(name: &str, namespace: &str, entries: &[(&str, &str)]) -> String {
    let tls = ["tls.crt", "tls.key"].iter().all(|k| entries.iter().any(|(key, _)| key == k));
    let kind = if tls { "kubernetes.io/tls" } else { "Opaque" };
    let header = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: {kind}\nstringData:\n"
    );
    header + &pem_entries(entries) + "---\n"
}

/// A `v1` ConfigMap document holding `entries` (key, PEM text) in `data`, as trust bundles are
/// published (`ca.crt`). Ends with `---`.
pub fn config_map_yaml(name: &str, namespace: &str, entries: &[(&str, &str)]) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}}}\ndata:\n")
        + &pem_entries(entries)
        + "---\n"
}

/// `  key: |` blocks with the text indented under them.
fn pem_entries(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(key, text)| {
            let body: String = text.lines().map(|l| format!("    {l}\n")).collect();
            format!("  {key}: |\n{body}")
        })
        .collect()
}

/// A reply: status, headers (lower-case names) and body.
#[derive(Clone, Debug)]
pub struct TlsReply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` over TLS to `addr`, with SNI and `Host` `host`, trusting `ca_pem`, presenting
/// `client` when given. `Err` when the handshake or the exchange fails (e.g. a server that
/// requires a client certificate and gets none).
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca_pem: &str,
    client: Option<&CertPair>,
) -> anyhow::Result<TlsReply> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in chain(ca_pem)? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some(pair) => builder.with_client_auth_cert(chain(&pair.cert_pem)?, private_key(&pair.key_pem)?)?,
        None => builder.with_no_client_auth(),
    };
    exchange(addr, host, host, path, config).await
}

/// A certificate of the mesh for `identity`, signed by the CA kept in `ca_dir` (what an agent
/// gets from discovery): chain without the root, and key.
pub fn mesh_certificate(ca_dir: &Path, identity: &SpiffeId) -> anyhow::Result<CertPair> {
    let material = CaMaterial::load_or_create_dir(ca_dir, &identity.trust_domain, SystemTime::now())?;
    let authority = Authority::new(material, DEFAULT_MAX_WORKLOAD_TTL)?;
    let (csr, key_pem) = csr_for(identity)?;
    let mut chain = authority.sign(&csr, identity, None, SystemTime::now())?;
    chain.pop();
    Ok(CertPair { cert_pem: chain.concat(), key_pem })
}

/// `GET path` over Istio mTLS to `addr` with SNI `sni` and `Host` `host`: the server's
/// certificate must chain to `root_pem` and carry `server_identity` (a SPIFFE id), as sidecars
/// check each other; `client` is presented when given.
pub async fn mesh_https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    root_pem: &str,
    client: Option<&CertPair>,
    server_identity: &str,
) -> anyhow::Result<TlsReply> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in chain(root_pem)? {
        roots.add(cert)?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let verifier = Arc::new(SpiffeVerifier { inner, identity: server_identity.to_owned() });
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        Some(pair) => builder.with_client_auth_cert(chain(&pair.cert_pem)?, private_key(&pair.key_pem)?)?,
        None => builder.with_no_client_auth(),
    };
    exchange(addr, sni, host, path, config).await
}

/// Checks a server as Istio mTLS does: the chain to the mesh root, then the SPIFFE identity in
/// place of the host name.
#[derive(Debug)]
struct SpiffeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    identity: String,
}

impl rustls::client::danger::ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        // WebPKI checks the chain before the name: a name error means the chain is good.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                let found = identity_of_certificate(end_entity).map(|id| id.to_string());
                if found.as_deref() == Some(self.identity.as_str()) {
                    Ok(rustls::client::danger::ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!("server identity {found:?}, expected {}", self.identity)))
                }
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

async fn exchange(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    config: rustls::ClientConfig,
) -> anyhow::Result<TlsReply> {
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    let name = ServerName::try_from(sni.to_owned())?;
    let mut tls = connector.connect(name, tcp).await.with_context(|| format!("TLS handshake with {addr} as {sni}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.with_context(|| format!("reading the reply from {addr}"))?;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> anyhow::Result<TlsReply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("reply without a header end")?;
    let mut lines = head.lines();
    let status_line = lines.next().context("empty reply")?;
    let status = status_line.split_whitespace().nth(1).context("no status code")?.parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(TlsReply { status, headers, body: body.to_owned() })
}

/// A TLS server answering every request with 200, header `x-backend: <name>` and body `<name>`;
/// stops when dropped.
#[derive(Debug)]
pub struct TlsBackend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    pub async fn start(addr: SocketAddr, name: &str, pair: &CertPair) -> anyhow::Result<Self> {
        Self::serve(addr, name, pair, None).await
    }

    /// Like [`TlsBackend::start`], but the handshake requires a client certificate of
    /// `client_ca_pem` (an upstream that TLS origination must present a certificate to).
    pub async fn start_mutual(
        addr: SocketAddr,
        name: &str,
        pair: &CertPair,
        client_ca_pem: &str,
    ) -> anyhow::Result<Self> {
        Self::serve(addr, name, pair, Some(client_ca_pem)).await
    }

    async fn serve(addr: SocketAddr, name: &str, pair: &CertPair, client_ca_pem: Option<&str>) -> anyhow::Result<Self> {
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in chain(pem)? {
                    roots.add(cert)?;
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain(&pair.cert_pem)?, private_key(&pair.key_pem)?)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
            name.len()
        );
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_config_map_documents_hold_their_pem_texts() {
        let ca = TestCa::new("yaml ca").unwrap();
        let pair = ca.server(&["a.example.com"]).unwrap();
        let secret = secret_yaml("cred", "ns", &[("tls.crt", &pair.cert_pem), ("tls.key", &pair.key_pem)]);
        let bundle = config_map_yaml("bundle", "ns", &[("ca.crt", &ca.cert_pem)]);
        let docs = rudder_config::load::documents("test.yaml", &format!("{secret}{bundle}")).unwrap();
        assert_eq!(docs[0]["type"], "kubernetes.io/tls");
        assert_eq!(docs[0]["stringData"]["tls.crt"].as_str().unwrap().trim(), pair.cert_pem.trim());
        assert_eq!(docs[0]["stringData"]["tls.key"].as_str().unwrap().trim(), pair.key_pem.trim());
        assert_eq!(docs[1]["kind"], "ConfigMap");
        assert_eq!(docs[1]["data"]["ca.crt"].as_str().unwrap().trim(), ca.cert_pem.trim());
        let ca_only = secret_yaml("cred-cacert", "ns", &[("ca.crt", &ca.cert_pem)]);
        assert!(ca_only.contains("type: Opaque"), "{ca_only}");
    }

    #[tokio::test]
    async fn a_client_reaches_a_backend_through_a_test_ca() {
        let ca = TestCa::new("test ca").unwrap();
        let server = ca.server(&["backend.example.com"]).unwrap();
        let backend = TlsBackend::start("127.0.0.1:0".parse().unwrap(), "tls-backend", &server).await.unwrap();
        let reply = https_get(backend.addr, "backend.example.com", "/", &ca.cert_pem, None).await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "tls-backend"));
        assert_eq!(reply.headers["x-backend"], "tls-backend");
        // The certificate does not name another host.
        assert!(https_get(backend.addr, "other.example.com", "/", &ca.cert_pem, None).await.is_err());
        // Nor does another CA vouch for it.
        let stranger = TestCa::new("other ca").unwrap();
        assert!(https_get(backend.addr, "backend.example.com", "/", &stranger.cert_pem, None).await.is_err());
    }
}
