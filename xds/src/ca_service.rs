//! The CSR API of the mesh CA, wire-compatible with Istio's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: a caller presents a bearer
//! token, the token says who it is, and the CA signs the CSR for exactly that identity
//! ([`crate::ca::Authority::sign`]).
//!
//! Who a token names is an [`Authenticator`]'s answer: in a cluster, the API server's
//! TokenReview of a service-account token with audience `istio-ca`; in file mode, a table of
//! tokens discovery was given ([`StaticTokens`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::ca::{Authority, CaError, SpiffeId};

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds (0: the CA's default).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`: the chain, leaf first, root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
pub const CREATE_CERTIFICATE_PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The audience service-account tokens for the CA carry.
pub const CA_AUDIENCE: &str = "istio-ca";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// Says which identity a bearer token stands for.
pub trait Authenticator: Send + Sync + 'static {
    fn identity(&self, token: &str) -> BoxFuture<Result<SpiffeId, Status>>;
}

/// Tokens known in advance, each naming an identity (file mode: discovery reads them from a
/// file it is given; each agent is given its own token).
#[derive(Clone, Debug, Default)]
pub struct StaticTokens(pub BTreeMap<String, SpiffeId>);

impl Authenticator for StaticTokens {
    fn identity(&self, token: &str) -> BoxFuture<Result<SpiffeId, Status>> {
        let found = self.0.get(token).cloned().ok_or_else(|| Status::unauthenticated("unknown token"));
        Box::pin(async move { found })
    }
}

/// File-mode tokens: discovery holds a secret key (`token-key` in its CA directory) and a
/// token is `v1:<namespace>:<service account>:<HMAC-SHA256 of those, hex>`, so discovery can
/// issue a token for any identity (`rudder ca token`) and check one without keeping a list.
#[derive(Clone)]
pub struct FileTokens {
    key: ring::hmac::Key,
    trust_domain: String,
}

impl std::fmt::Debug for FileTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTokens").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

/// The token key's file in a CA directory.
pub const TOKEN_KEY_FILE: &str = "token-key";
const TOKEN_VERSION: &str = "v1";

impl FileTokens {
    pub fn new(secret: &[u8], trust_domain: &str) -> Self {
        Self { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), trust_domain: trust_domain.to_owned() }
    }

    /// The key kept in `dir`, or a new random one written there (owner-readable only).
    pub fn load_or_create_dir(dir: &std::path::Path, trust_domain: &str) -> std::io::Result<Self> {
        use std::io::Write as _;
        let path = dir.join(TOKEN_KEY_FILE);
        match std::fs::read(&path) {
            Ok(secret) if secret.len() >= 32 => return Ok(Self::new(&secret, trust_domain)),
            Ok(_) => {
                return Err(std::io::Error::other(format!("{}: shorter than 32 bytes", path.display())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| std::io::Error::other("no randomness for the token key"))?;
        std::fs::create_dir_all(dir)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)?.write_all(&secret)?;
        Ok(Self::new(&secret, trust_domain))
    }

    /// A token that authenticates as `namespace`/`service_account`.
    pub fn issue(&self, namespace: &str, service_account: &str) -> String {
        let claim = format!("{TOKEN_VERSION}:{namespace}:{service_account}");
        let tag = ring::hmac::sign(&self.key, claim.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{claim}:{hex}")
    }

    fn verify(&self, token: &str) -> Result<SpiffeId, Status> {
        let bad = || Status::unauthenticated("not a token issued by this discovery");
        let (claim, hex) = token.trim().rsplit_once(':').ok_or_else(bad)?;
        let tag = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        ring::hmac::verify(&self.key, claim.as_bytes(), &tag).map_err(|_| bad())?;
        match claim.split(':').collect::<Vec<_>>().as_slice() {
            [TOKEN_VERSION, namespace, account] if !namespace.is_empty() && !account.is_empty() => {
                Ok(SpiffeId::new(&self.trust_domain, namespace, account))
            }
            _ => Err(bad()),
        }
    }
}

impl Authenticator for FileTokens {
    fn identity(&self, token: &str) -> BoxFuture<Result<SpiffeId, Status>> {
        let verified = self.verify(token);
        Box::pin(async move { verified })
    }
}

/// Service-account tokens checked by the API server (TokenReview, audience `istio-ca`): the
/// identity is the token's service account in `trust_domain`.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    trust_domain: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client, trust_domain: &str) -> Self {
        Self { client, trust_domain: trust_domain.to_owned() }
    }

    async fn review(&self, token: String) -> Result<SpiffeId, Status> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec { token, audiences: Some(vec![CA_AUDIENCE.to_owned()]) },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let reviewed = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(Status::unauthenticated(format!("token rejected: {why}")));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        match username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')) {
            Some((namespace, account)) if !namespace.is_empty() && !account.is_empty() => {
                Ok(SpiffeId::new(&self.trust_domain, namespace, account))
            }
            _ => Err(Status::unauthenticated(format!("{username:?} is not a service account"))),
        }
    }
}

impl Authenticator for TokenReviewer {
    fn identity(&self, token: &str) -> BoxFuture<Result<SpiffeId, Status>> {
        let reviewer = self.clone();
        let token = token.to_owned();
        Box::pin(async move { reviewer.review(token).await })
    }
}

/// The CA's signing service.
#[derive(Clone)]
pub struct CertificateService {
    authority: Arc<RwLock<Authority>>,
    authenticator: Arc<dyn Authenticator>,
    metrics: CaMetrics,
}

impl std::fmt::Debug for CertificateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateService").finish_non_exhaustive()
    }
}

impl NamedService for CertificateService {
    const NAME: &'static str = SERVICE_NAME;
}

impl CertificateService {
    pub fn new(authority: Arc<RwLock<Authority>>, authenticator: Arc<dyn Authenticator>) -> Self {
        Self { authority, authenticator, metrics: CaMetrics::default() }
    }

    /// The same service counting into `metrics`; sets their expiry gauges from the CA now.
    #[must_use]
    pub fn with_metrics(self, metrics: CaMetrics) -> Self {
        metrics.ca_loaded(self.authority.read().unwrap_or_else(std::sync::PoisonError::into_inner).material());
        Self { metrics, ..self }
    }

    /// Authenticates the caller and signs its CSR.
    pub async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.metrics.csrs.inc();
        let caller = match bearer_token(request.metadata()) {
            Ok(token) => self.authenticator.identity(&token).await,
            Err(status) => Err(status),
        };
        let caller = caller.inspect_err(|_| {
            self.metrics.authentication_failures.inc();
        })?;
        let request = request.into_inner();
        let ttl = u64::try_from(request.validity_duration).ok().map(Duration::from_secs);
        let authority = self.authority.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let signed = authority.sign(&request.csr, &caller, ttl, SystemTime::now());
        self.metrics.signed(signed.as_ref().err());
        match signed {
            Ok(cert_chain) => {
                tracing::debug!(identity = %caller, "certificate signed");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e @ CaError::IdentityMismatch { .. }) => Err(Status::permission_denied(e.to_string())),
            Err(e @ CaError::Csr(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

/// Prometheus metrics of the CA, named as istiod's (`citadel_server_*`; counters carry the
/// OpenMetrics `_total` suffix). Clones share the values; [`CaMetrics::default`] counts without
/// being served, [`CaMetrics::register`] adds them to a registry.
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    csrs: Counter,
    authentication_failures: Counter,
    csr_parsing_errors: Counter,
    id_extraction_errors: Counter,
    sign_errors: Family<ErrorLabel, Counter>,
    issued: Counter,
    root_expiry: Gauge,
    chain_expiry: Gauge,
}

impl CaMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("citadel_server_csr_count", "CreateCertificate requests received", m.csrs.clone());
        registry.register(
            "citadel_server_authentication_failure_count",
            "CreateCertificate requests whose caller could not be authenticated (no token, unknown token)",
            m.authentication_failures.clone(),
        );
        registry.register(
            "citadel_server_csr_parsing_err_count",
            "CSRs that could not be parsed or verified",
            m.csr_parsing_errors.clone(),
        );
        registry.register(
            "citadel_server_id_extraction_err_count",
            "CSRs asking for an identity other than the caller's (or for none)",
            m.id_extraction_errors.clone(),
        );
        registry.register(
            "citadel_server_csr_sign_err_count",
            "CSRs the CA failed to sign, by error (CERT_GEN_ERROR, CA_NOT_READY)",
            m.sign_errors.clone(),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Workload certificates issued",
            m.issued.clone(),
        );
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time (seconds) the mesh root certificate expires",
            m.root_expiry.clone(),
        );
        registry.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "Unix time (seconds) the first certificate of the CA's chain expires",
            m.chain_expiry.clone(),
        );
        m
    }

    /// Every metric with a series, in the text a scrape returns (empty families are left out
    /// of a scrape): the names dashboards and alerts may use.
    pub fn sample_exposition() -> String {
        let mut registry = Registry::default();
        let m = Self::register(&mut registry);
        m.signed(Some(&CaError::Material(String::new())));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Sets the expiry gauges from the CA's root and chain (the earliest certificate of each).
    pub fn ca_loaded(&self, material: &crate::ca::CaMaterial) {
        let earliest = |bundle: &str| {
            crate::ca::split_pem(bundle)
                .iter()
                .filter_map(|pem| crate::ca::not_after_of(pem))
                .min()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        };
        if let Some(at) = earliest(&material.root_cert) {
            self.root_expiry.set(at);
        }
        if let Some(at) = earliest(&material.cert_chain) {
            self.chain_expiry.set(at);
        }
    }

    /// Counts the outcome of one signing of an authenticated caller's CSR.
    fn signed(&self, error: Option<&CaError>) {
        match error {
            None => self.issued.inc(),
            Some(CaError::Csr(_)) => self.csr_parsing_errors.inc(),
            Some(CaError::IdentityMismatch { .. } | CaError::Identity(_)) => self.id_extraction_errors.inc(),
            Some(CaError::Material(_)) => self.sign_errors.get_or_create(&ErrorLabel { error: "CA_NOT_READY" }).inc(),
            Some(CaError::Crypto(_)) => self.sign_errors.get_or_create(&ErrorLabel { error: "CERT_GEN_ERROR" }).inc(),
        };
    }
}

fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("no authorization: Bearer <token>"))?;
    let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).unwrap_or_default().trim();
    if token.is_empty() {
        return Err(Status::unauthenticated("no authorization: Bearer <token>"));
    }
    Ok(token.to_owned())
}

struct Unary(CertificateService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Result<Response<IstioCertificateResponse>, Status>>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.create_certificate(request).await })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for CertificateService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != CREATE_CERTIFICATE_PATH {
                return Ok(Status::unimplemented(format!("{}: not a CA method", request.uri().path())).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Unary(service), request).await)
        })
    }
}

/// A client call of `CreateCertificate` on `channel` (what the agent does).
pub async fn create_certificate(
    channel: tonic::transport::Channel,
    token: &str,
    csr: String,
    validity: Duration,
) -> Result<Vec<String>, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let value =
        format!("Bearer {token}").parse().map_err(|_| Status::invalid_argument("the token is not a header value"))?;
    request.metadata_mut().insert("authorization", value);
    let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
    let codec = tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    Ok(client.unary(request, path, codec).await?.into_inner().cert_chain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ca::{DEFAULT_MAX_WORKLOAD_TTL, csr_for, generate_root};

    /// An API server that answers TokenReviews: `good` is `default/sleep`, anything else fails.
    fn reviewing_api() -> kube::Client {
        use http_body_util::BodyExt;
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                assert_eq!(request.uri().path(), "/apis/authentication.k8s.io/v1/tokenreviews");
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(review["spec"]["audiences"], serde_json::json!([CA_AUDIENCE]));
                let status = if review["spec"]["token"] == "good" {
                    serde_json::json!({"authenticated": true, "user": {"username": "system:serviceaccount:default:sleep"}})
                } else {
                    serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                };
                let answer = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "metadata": {}, "spec": review["spec"], "status": status});
                send.send_response(http::Response::new(kube::client::Body::from(serde_json::to_vec(&answer).unwrap())));
            }
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn service_account_tokens_are_reviewed_by_the_api_server() {
        let reviewer = TokenReviewer::new(reviewing_api(), "cluster.local");
        assert_eq!(reviewer.identity("good").await.unwrap(), SpiffeId::new("cluster.local", "default", "sleep"));
        let rejected = reviewer.identity("forged").await.unwrap_err();
        assert_eq!(rejected.code(), tonic::Code::Unauthenticated);
        assert!(rejected.message().contains("invalid bearer token"), "{rejected}");
    }

    async fn serve(service: CertificateService) -> tonic::transport::Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
    }

    #[tokio::test]
    async fn file_tokens_name_their_identity_and_cannot_be_forged() {
        let dir = std::env::temp_dir().join(format!("rudder-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = FileTokens::load_or_create_dir(&dir, "cluster.local").unwrap();
        let token = tokens.issue("default", "sleep");
        let again = FileTokens::load_or_create_dir(&dir, "cluster.local").unwrap();
        assert_eq!(again.identity(&token).await.unwrap(), SpiffeId::new("cluster.local", "default", "sleep"));
        let forged = token.replace(":sleep:", ":admin:");
        assert_eq!(again.identity(&forged).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        let other_key = FileTokens::new(&[7; 32], "cluster.local");
        assert_eq!(other_key.identity(&token).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(again.identity("v1:default:sleep:zz").await.is_err());
        assert!(again.identity("").await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_caller_gets_a_certificate_for_its_own_identity_only() {
        let root = generate_root("cluster.local", SystemTime::now()).unwrap();
        let authority = Arc::new(RwLock::new(Authority::new(root, DEFAULT_MAX_WORKLOAD_TTL).unwrap()));
        let sleep = SpiffeId::new("cluster.local", "default", "sleep");
        let tokens = StaticTokens([("sleep-token".to_owned(), sleep.clone())].into());
        let channel = serve(CertificateService::new(authority, Arc::new(tokens))).await;

        let (csr, _key) = csr_for(&sleep).unwrap();
        let chain =
            create_certificate(channel.clone(), "sleep-token", csr.clone(), Duration::from_secs(3600)).await.unwrap();
        assert_eq!(chain.len(), 2);
        assert!(chain[0].starts_with("-----BEGIN CERTIFICATE-----"));

        let unknown = create_certificate(channel.clone(), "forged", csr, Duration::ZERO).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);

        let (other_csr, _) = csr_for(&SpiffeId::new("cluster.local", "istio-system", "istiod")).unwrap();
        let denied = create_certificate(channel.clone(), "sleep-token", other_csr, Duration::ZERO).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");

        let garbage = create_certificate(channel, "sleep-token", "not a csr".into(), Duration::ZERO).await.unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn every_csr_is_counted_with_its_outcome() {
        let root = generate_root("cluster.local", SystemTime::now()).unwrap();
        let root_expiry = crate::ca::not_after_of(&root.root_cert).unwrap();
        let authority = Arc::new(RwLock::new(Authority::new(root, DEFAULT_MAX_WORKLOAD_TTL).unwrap()));
        let sleep = SpiffeId::new("cluster.local", "default", "sleep");
        let tokens = StaticTokens([("sleep-token".to_owned(), sleep.clone())].into());
        let mut registry = Registry::default();
        let metrics = CaMetrics::register(&mut registry);
        let channel = serve(CertificateService::new(authority, Arc::new(tokens)).with_metrics(metrics.clone())).await;

        let (csr, _key) = csr_for(&sleep).unwrap();
        for _ in 0..2 {
            create_certificate(channel.clone(), "sleep-token", csr.clone(), Duration::from_secs(60)).await.unwrap();
        }
        create_certificate(channel.clone(), "forged", csr, Duration::ZERO).await.unwrap_err();
        let (other_csr, _) = csr_for(&SpiffeId::new("cluster.local", "istio-system", "istiod")).unwrap();
        create_certificate(channel.clone(), "sleep-token", other_csr, Duration::ZERO).await.unwrap_err();
        create_certificate(channel, "sleep-token", "not a csr".into(), Duration::ZERO).await.unwrap_err();

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let expiry = root_expiry.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        for line in [
            "citadel_server_csr_count_total 5".to_owned(),
            "citadel_server_success_cert_issuance_count_total 2".to_owned(),
            "citadel_server_authentication_failure_count_total 1".to_owned(),
            "citadel_server_id_extraction_err_count_total 1".to_owned(),
            "citadel_server_csr_parsing_err_count_total 1".to_owned(),
            format!("citadel_server_root_cert_expiry_timestamp {expiry}"),
            format!("citadel_server_cert_chain_expiry_timestamp {expiry}"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        metrics.signed(Some(&CaError::Material("gone".into())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"citadel_server_csr_sign_err_count_total{error="CA_NOT_READY"} 1"#), "{text}");
    }
}
