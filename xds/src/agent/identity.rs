//! The workload's mesh identity, as the agent keeps it: a key made here, a certificate for the
//! pod's SPIFFE identity signed by discovery's CA (`CreateCertificate` over TLS, authenticated
//! with the pod's token), renewed at 80 % of its lifetime, and published on a `watch` channel
//! for the SDS server ([`super::sds`]) to hand to Envoy. Also how the agent reaches discovery:
//! plaintext, or TLS verifying the mesh root ([`DiscoveryTarget`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::ca::{SpiffeId, csr_for, not_after_of};

/// Share of a certificate's lifetime after which it is renewed (Istio's SECRET_GRACE_PERIOD_RATIO
/// is 0.5 of the remaining grace; Rudder renews at 80 % of the lifetime, as the issue asks).
pub const ROTATION_POINT: f64 = 0.8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where discovery is, and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryTarget {
    /// `host:port`.
    pub address: String,
    /// TLS verifying this root (PEM); `None` is plaintext (istiod's 15010).
    pub root_pem: Option<String>,
}

impl DiscoveryTarget {
    /// The host part of the address: the name discovery's certificate must carry.
    pub fn host(&self) -> &str {
        self.address.rsplit_once(':').map_or(self.address.as_str(), |(host, _)| host)
    }

    /// A gRPC endpoint for it.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let scheme = if self.root_pem.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", self.address);
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad discovery address {url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(root) = &self.root_pem {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name(self.host().trim_start_matches('[').trim_end_matches(']'));
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS to {url}: {e}"))?;
        }
        Ok(endpoint)
    }
}

/// A key and the certificate chain the CA signed for it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCertificate {
    /// Leaf first, then intermediates (the root is [`WorkloadCertificate::root`]).
    pub chain: Vec<String>,
    pub key: String,
    /// The mesh root: what peers' certificates must chain to.
    pub root: String,
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("chain", &self.chain.len())
            .field("issued_at", &self.issued_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// The chain as one PEM bundle (leaf first), as Envoy reads `certificate_chain`.
    pub fn chain_pem(&self) -> String {
        self.chain.concat()
    }

    /// When to ask for the next one: at [`ROTATION_POINT`] of the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.issued_at).unwrap_or_default();
        self.issued_at + lifetime.mul_f64(ROTATION_POINT)
    }
}

/// What the agent needs to get its certificate.
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    pub ca: DiscoveryTarget,
    /// The bearer token file (re-read for every request: projected tokens rotate).
    pub token_path: PathBuf,
    pub identity: SpiffeId,
    /// Requested lifetime (the CA caps it).
    pub ttl: Duration,
}

/// One certificate from the CA: a new key, its CSR, the signed chain.
pub async fn fetch(options: &IdentityOptions) -> Result<WorkloadCertificate, String> {
    let token = std::fs::read_to_string(&options.token_path)
        .map_err(|e| format!("reading the CA token {}: {e}", options.token_path.display()))?;
    let (csr, key) = csr_for(&options.identity).map_err(|e| e.to_string())?;
    let channel = options.ca.endpoint()?.connect().await.map_err(|e| format!("connecting to the CA: {e}"))?;
    let mut chain = crate::ca_service::create_certificate(channel, token.trim(), csr, options.ttl)
        .await
        .map_err(|s| format!("CreateCertificate: {}", s.message()))?;
    if chain.is_empty() {
        return Err("the CA returned no certificate".into());
    }
    let root = if chain.len() > 1 { chain.pop().unwrap_or_default() } else { String::new() };
    let root = match (&options.ca.root_pem, root.is_empty()) {
        (Some(configured), true) => configured.clone(),
        _ => root,
    };
    let not_after = not_after_of(&chain[0]).ok_or("the CA's certificate is unreadable")?;
    Ok(WorkloadCertificate { chain, key, root, issued_at: SystemTime::now(), not_after })
}

/// Gets the first certificate (retrying until it succeeds or `give_up` passes), then keeps it
/// renewed in a task. The task ends when every receiver is gone.
pub async fn start(
    options: IdentityOptions,
    give_up: Duration,
) -> Result<watch::Receiver<Arc<WorkloadCertificate>>, String> {
    let deadline = tokio::time::Instant::now() + give_up;
    let mut delay = RETRY_START;
    let first = loop {
        match fetch(&options).await {
            Ok(cert) => break cert,
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%error, "no workload certificate yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    };
    tracing::info!(identity = %options.identity, not_after = ?first.not_after, "workload certificate issued");
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(renew(options, tx));
    Ok(rx)
}

async fn renew(options: IdentityOptions, certs: watch::Sender<Arc<WorkloadCertificate>>) {
    loop {
        let renew_at = certs.borrow().renew_at();
        let wait = renew_at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = certs.closed() => return,
        }
        let mut delay = RETRY_START;
        loop {
            match fetch(&options).await {
                Ok(cert) => {
                    tracing::info!(identity = %options.identity, not_after = ?cert.not_after, "workload certificate renewed");
                    if certs.send(Arc::new(cert)).is_err() {
                        return;
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "renewing the workload certificate failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_eighty_percent_of_the_lifetime() {
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let cert = WorkloadCertificate {
            chain: vec![],
            key: String::new(),
            root: String::new(),
            issued_at,
            not_after: issued_at + Duration::from_secs(100),
        };
        assert_eq!(cert.renew_at(), issued_at + Duration::from_secs(80));
    }

    #[test]
    fn the_host_is_the_name_discovery_must_prove() {
        let target = |address: &str| DiscoveryTarget { address: address.into(), root_pem: None };
        assert_eq!(target("istiod.istio-system.svc:15012").host(), "istiod.istio-system.svc");
        assert_eq!(target("127.0.0.1:15012").host(), "127.0.0.1");
        assert_eq!(target("[::1]:15012").host(), "[::1]");
    }
}
