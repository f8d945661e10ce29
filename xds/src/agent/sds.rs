//! The agent's SDS server: Envoy's `sds-grpc` cluster reaches it on a Unix socket and asks for
//! `default` (the workload certificate and key) and `ROOTCA` (the mesh root), as Istio's
//! sidecars do. Each stream is answered when it asks for names it has not been sent, and again
//! whenever the certificate is renewed, so rotation never restarts Envoy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::identity::WorkloadCertificate;

pub use crate::translate::security::{ROOT_SECRET, WORKLOAD_SECRET};
/// The socket's file name in the workload socket directory (Istio's layout).
pub const SOCKET_NAME: &str = "socket";
/// Istio's workload socket directory.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/secrets/workload-spiffe-uds";
const SECRET_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The secrets named `names` (unknown names are left out) from `cert`.
pub fn secrets(cert: &WorkloadCertificate, names: &BTreeSet<String>) -> Vec<Secret> {
    names
        .iter()
        .filter_map(|name| {
            let kind = match name.as_str() {
                WORKLOAD_SECRET => secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(cert.chain_pem())),
                    private_key: Some(inline(cert.key.clone())),
                    ..Default::default()
                }),
                ROOT_SECRET => secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(cert.root.clone())),
                    ..Default::default()
                }),
                _ => return None,
            };
            Some(Secret { name: name.clone(), r#type: Some(kind) })
        })
        .collect()
}

fn inline(text: String) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::InlineString(text)), ..Default::default() }
}

/// The SDS service over `certs`.
#[derive(Clone, Debug)]
pub struct SdsService {
    certs: watch::Receiver<Arc<WorkloadCertificate>>,
}

impl SdsService {
    pub fn new(certs: watch::Receiver<Arc<WorkloadCertificate>>) -> Self {
        Self { certs }
    }
}

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("the agent serves SDS as state of the world (api_type GRPC)"))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(serve_stream(request.into_inner(), self.certs.clone(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(&self, request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        let names = request.into_inner().resource_names.into_iter().collect();
        let cert = self.certs.borrow().clone();
        Ok(Response::new(response(&cert, &names, 1, 1)))
    }
}

fn response(cert: &WorkloadCertificate, names: &BTreeSet<String>, version: u64, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources: secrets(cert, names)
            .into_iter()
            .map(|s| Any { type_url: SECRET_TYPE_URL.to_owned(), value: s.encode_to_vec() })
            .collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// One Envoy stream: answer a request for names not yet sent (an ACK repeats what was sent and
/// gets no answer), and push again on every renewal.
async fn serve_stream(
    mut requests: Streaming<DiscoveryRequest>,
    mut certs: watch::Receiver<Arc<WorkloadCertificate>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut sent: Option<BTreeSet<String>> = None;
    let mut version = 0u64;
    loop {
        let names = tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    if let Some(error) = &request.error_detail {
                        tracing::warn!(names = ?request.resource_names, error = %error.message, "Envoy rejected a secret");
                    }
                    let names: BTreeSet<String> = request.resource_names.into_iter().collect();
                    if sent.as_ref() == Some(&names) {
                        continue;
                    }
                    names
                }
                Ok(None) | Err(_) => return,
            },
            changed = certs.changed() => {
                if changed.is_err() {
                    return;
                }
                match &sent {
                    Some(names) => names.clone(),
                    None => continue,
                }
            }
        };
        version += 1;
        let cert = certs.borrow_and_update().clone();
        if tx.send(Ok(response(&cert, &names, version, version))).await.is_err() {
            return;
        }
        sent = Some(names);
    }
}

/// The SDS server, listening; dropping it stops the server and removes the socket.
#[derive(Debug)]
pub struct SdsServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SdsServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SdsServer {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Serves `certs` on a Unix socket at `path` (a stale socket there is replaced).
pub fn start(path: &Path, certs: watch::Receiver<Arc<WorkloadCertificate>>) -> std::io::Result<SdsServer> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let service = SecretDiscoveryServiceServer::new(SdsService::new(certs));
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        if let Err(error) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await
        {
            tracing::error!(%error, "SDS server failed");
        }
    });
    Ok(SdsServer { path: path.to_owned(), task })
}
