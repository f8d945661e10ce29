//! The ADS server: serves clusters, endpoints, listeners and routes to Envoy over
//! `AggregatedDiscoveryService`, in both state-of-the-world (SotW) and incremental (delta) form,
//! and the name table (NDS, see [`crate::nametable`]) to the proxy agent's DNS server.
//!
//! Pipeline (see the xDS spec §1.8 and the performance notes):
//! - the registry publishes every change as a new [`Snapshot`] on a `watch` channel;
//! - [`push`] debounces those changes (quiet period, capped by a maximum delay) and turns each
//!   merged change into a [`cache::Generation`]: a push version, the snapshot and the encoded
//!   endpoints, plus a lazily filled per-[`ViewKey`] cache of encoded outbound resources;
//! - every stream ([`sotw`], [`delta`]) watches the latest generation and, on a change, sends
//!   only what changed for it, in the order CDS → EDS → LDS → RDS.
//!
//! Per-stream and per-type bookkeeping lives in [`connection`], where the debug endpoints
//! ([`debug`]) read it. Prometheus metrics are in [`metrics`].

pub mod cache;
pub mod connection;
pub mod debug;
pub mod delta;
pub mod memory;
pub mod metrics;
pub mod push;
pub mod sotw;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::Status;

use crate::model::{Proxy, Snapshot};
use crate::translate::endpoint::EncodedAssignment;
use crate::translate::route::RouteReuse;
use crate::translate::{self, Parts, Resources, ViewKey};

use self::cache::Generation;
use self::connection::Connection;
use self::metrics::Metrics;
use self::wire::Requests;

/// Largest request the server accepts (Envoy's requests are small; responses are not limited).
pub const MAX_DECODING_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Responses buffered per stream before the stream waits for the client to read. Small, so a
/// slow proxy holds back its own stream rather than piling encoded config up in memory.
const RESPONSE_BUFFER: usize = 4;

/// The xDS resource types this server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// SDS over ADS: gateway credentials (`kubernetes://<credentialName>`).
    Secret,
    /// ECDS: extension configs EnvoyFilter `EXTENSION_CONFIG` patches add, which filters name
    /// through `config_discovery`. Only Envoys with such a filter ask for them.
    ExtensionConfig,
    /// Istio's NDS: the [`NameTable`](crate::nametable::NameTable) the proxy agent answers DNS
    /// from. Only the agent asks for it; Envoy never does, so it never joins Envoy's pushes.
    NameTable,
}

impl Kind {
    /// Make-before-break order: clusters and their endpoints, then the secrets and extension
    /// configs listeners use, before the listeners and routes that reference them (xDS
    /// protocol, "Eventual consistency considerations"). The name table, which no Envoy
    /// resource references, comes last.
    pub const PUSH_ORDER: [Kind; 7] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Secret,
        Kind::ExtensionConfig,
        Kind::Listener,
        Kind::Route,
        Kind::NameTable,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            Kind::ExtensionConfig => "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            Kind::NameTable => crate::nametable::TYPE_URL,
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Kind> {
        Self::PUSH_ORDER.into_iter().find(|k| k.type_url() == type_url)
    }

    /// How many kinds there are (`PUSH_ORDER` holds each once).
    pub const COUNT: usize = Self::PUSH_ORDER.len();

    /// `cds`, `eds`, `lds`, `rds`, `sds`, `nds`: metric labels and debug output.
    pub const fn short_name(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Secret => "sds",
            Kind::ExtensionConfig => "ecds",
            Kind::NameTable => "nds",
        }
    }

    /// Root types: a SotW response carries the full set and absence means deletion.
    pub const fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener | Kind::NameTable)
    }
}

/// Produces the resources the server encodes and serves. The default, [`Translator`], calls
/// [`crate::translate`]; tests and benchmarks plug in fixed resources ([`FixedGenerator`]).
///
/// The split mirrors what each part depends on, so the server can share work: `outbound` must
/// depend only on the proxy's [`ViewKey`] (it is computed once per distinct view), `inbound`
/// may read the whole proxy (computed per proxy), `endpoints` on nothing but the snapshot.
pub trait Generator: Send + Sync + 'static {
    fn outbound(&self, snapshot: &Snapshot, proxy: &Proxy) -> Resources;
    fn inbound(&self, snapshot: &Snapshot, proxy: &Proxy) -> Resources;
    fn endpoints(&self, snapshot: &Snapshot) -> Vec<EncodedAssignment>;
    /// The hosts whose assignments may differ from `before` to `after`; `None` (the default)
    /// means any, and every assignment is generated again.
    fn endpoint_changes(&self, _before: &Snapshot, _after: &Snapshot) -> Option<BTreeSet<String>> {
        None
    }
    /// Which kinds of a view's outbound config may differ from `before` to `after`; all (the
    /// default) translates the view again whole.
    fn changed_parts(&self, _before: &Snapshot, _after: &Snapshot, _key: &ViewKey) -> Parts {
        Parts::ALL
    }
    /// The kinds of the outbound config named in `parts` (others may be left empty); `memo`
    /// is what the same view's last translation left for reuse.
    fn outbound_parts(
        &self,
        snapshot: &Snapshot,
        proxy: &Proxy,
        _parts: Parts,
        _memo: Option<RouteReuse<'_>>,
    ) -> Resources {
        self.outbound(snapshot, proxy)
    }
    /// Whether what every proxy's inbound config reads, besides its own endpoints, may differ
    /// from `before` to `after` (asked once per push); true (the default) translates every
    /// inbound side again.
    fn inbound_inputs_changed(&self, _before: &Snapshot, _after: &Snapshot) -> bool {
        true
    }
    /// Whether the endpoints at `proxy`'s own addresses differ between two snapshots, given
    /// the addresses whose endpoints changed ([`translate::endpoint_addresses_changed`]).
    fn own_endpoints_changed(&self, _proxy: &Proxy, _changed_addresses: &BTreeSet<String>) -> bool {
        true
    }
    /// Every assignment of `hosts` (used with [`Generator::endpoint_changes`]).
    fn endpoints_of(&self, snapshot: &Snapshot, hosts: &BTreeSet<String>) -> Vec<EncodedAssignment> {
        let mut all = self.endpoints(snapshot);
        all.retain(|a| a.cluster_name.splitn(4, '|').nth(3).is_some_and(|host| hosts.contains(host)));
        all
    }
}

/// The production generator: Istio config translation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Translator;

impl Generator for Translator {
    fn outbound(&self, snapshot: &Snapshot, proxy: &Proxy) -> Resources {
        translate::outbound_served(snapshot, proxy)
    }
    fn inbound(&self, snapshot: &Snapshot, proxy: &Proxy) -> Resources {
        translate::inbound(snapshot, proxy)
    }
    fn endpoints(&self, snapshot: &Snapshot) -> Vec<EncodedAssignment> {
        translate::endpoints(snapshot)
    }
    fn endpoint_changes(&self, before: &Snapshot, after: &Snapshot) -> Option<BTreeSet<String>> {
        translate::endpoint::changed_hosts(before, after)
    }
    fn changed_parts(&self, before: &Snapshot, after: &Snapshot, key: &ViewKey) -> Parts {
        translate::changed_parts(before, after, key)
    }
    fn outbound_parts(
        &self,
        snapshot: &Snapshot,
        proxy: &Proxy,
        parts: Parts,
        memo: Option<RouteReuse<'_>>,
    ) -> Resources {
        translate::outbound_parts_served(snapshot, proxy, parts, memo)
    }
    fn inbound_inputs_changed(&self, before: &Snapshot, after: &Snapshot) -> bool {
        translate::inbound_inputs_changed(before, after)
    }
    fn own_endpoints_changed(&self, proxy: &Proxy, changed_addresses: &BTreeSet<String>) -> bool {
        translate::own_endpoints_changed(proxy, changed_addresses)
    }
    fn endpoints_of(&self, snapshot: &Snapshot, hosts: &BTreeSet<String>) -> Vec<EncodedAssignment> {
        translate::endpoint::encoded_for_services(snapshot, hosts)
    }
}

/// Serves the same resources to every proxy, whatever the snapshot says; replace them with
/// [`FixedGenerator::set`] and publish any snapshot to make the server push them.
#[derive(Debug, Default)]
pub struct FixedGenerator {
    state: Mutex<(Resources, Vec<ClusterLoadAssignment>)>,
}

impl FixedGenerator {
    pub fn new(resources: Resources, endpoints: Vec<ClusterLoadAssignment>) -> Self {
        Self { state: Mutex::new((resources, endpoints)) }
    }

    /// Replaces the served resources (takes effect at the next snapshot change).
    pub fn set(&self, resources: Resources, endpoints: Vec<ClusterLoadAssignment>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (resources, endpoints);
    }
}

impl Generator for FixedGenerator {
    fn outbound(&self, _: &Snapshot, _: &Proxy) -> Resources {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0.clone()
    }
    fn inbound(&self, _: &Snapshot, _: &Proxy) -> Resources {
        Resources::default()
    }
    fn endpoints(&self, _: &Snapshot) -> Vec<EncodedAssignment> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1.iter().map(EncodedAssignment::of).collect()
    }
}

/// How snapshot changes are merged into pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceOptions {
    /// Push once no change has arrived for this long.
    pub quiet: Duration,
    /// Push at the latest this long after the first merged change, even if changes keep coming.
    pub max_delay: Duration,
}

impl Default for DebounceOptions {
    fn default() -> Self {
        Self { quiet: Duration::from_millis(100), max_delay: Duration::from_secs(1) }
    }
}

/// Server tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    pub debounce: DebounceOptions,
    /// How many streams may build and send their first response of a type at once. Bounds
    /// the cost of join storms (every proxy reconnecting together) while pushes to proxies
    /// already connected carry on.
    pub initial_push_concurrency: usize,
    /// How long a stream may keep its initial-push slot while its client does not answer.
    pub initial_push_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            debounce: DebounceOptions::default(),
            initial_push_concurrency: 32,
            initial_push_timeout: Duration::from_secs(10),
        }
    }
}

/// State shared by the gRPC service, every stream, the push task and the debug endpoints.
pub(crate) struct Shared {
    pub(crate) generator: Arc<dyn Generator>,
    pub(crate) generations: watch::Sender<Arc<Generation>>,
    pub(crate) connections: Mutex<BTreeMap<String, Arc<Connection>>>,
    pub(crate) metrics: Metrics,
    /// What `/metrics` encodes: the server's own metrics and any registered beside them
    /// ([`DiscoveryServer::register_metrics`]).
    pub(crate) registry: RwLock<Registry>,
    pub(crate) initial_push_permits: Semaphore,
    pub(crate) initial_push_timeout: Duration,
    pub(crate) interner: connection::Interner,
    next_connection: AtomicU64,
    next_nonce: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("generation", &self.generations.borrow().version).finish_non_exhaustive()
    }
}

impl Shared {
    /// A nonce unique within this server process (and so within every stream).
    pub(crate) fn nonce(&self) -> String {
        format!("{:x}", self.next_nonce.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub(crate) fn connection_id(&self, node_id: &str) -> String {
        format!("{node_id}-{}", self.next_connection.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub(crate) fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

/// The discovery server. Cheap to clone; all clones serve the same state.
#[derive(Clone, Debug)]
pub struct DiscoveryServer {
    shared: Arc<Shared>,
}

impl DiscoveryServer {
    /// A server translating Istio config with [`Translator`].
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, options: ServerOptions) -> Self {
        Self::with_generator(snapshots, options, Arc::new(Translator))
    }

    /// A server serving what `generator` produces. Builds the first generation from the
    /// current snapshot at once and spawns the debounce task, so call it inside a Tokio
    /// runtime. The task ends when the snapshot sender is dropped; streams keep serving the
    /// last generation.
    pub fn with_generator(
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        options: ServerOptions,
        generator: Arc<dyn Generator>,
    ) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        // Marked seen here, not in the spawned task: a snapshot published before that task
        // first runs must still count as a change.
        let snapshot = snapshots.borrow_and_update().clone();
        metrics.config_served(&snapshot);
        let first = push::build_generation(generator.as_ref(), snapshot, 1, std::time::Instant::now(), None);
        let (generations, _) = watch::channel(Arc::new(first));
        let shared = Arc::new(Shared {
            generator,
            generations,
            connections: Mutex::new(BTreeMap::new()),
            metrics,
            registry: RwLock::new(registry),
            initial_push_permits: Semaphore::new(options.initial_push_concurrency.max(1)),
            initial_push_timeout: options.initial_push_timeout,
            interner: connection::Interner::default(),
            next_connection: AtomicU64::new(0),
            next_nonce: AtomicU64::new(0),
        });
        tokio::spawn(push::debounce_loop(Arc::downgrade(&shared), snapshots, options.debounce));
        tokio::spawn(memory::release_after_bursts(Arc::downgrade(&shared), memory::QUIET));
        Self { shared }
    }

    /// The push version currently served (1 for the initial snapshot, +1 per debounced push).
    pub fn version(&self) -> u64 {
        self.shared.generations.borrow().version
    }

    /// Number of connected streams.
    pub fn connected(&self) -> usize {
        self.shared.connections.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The ADS gRPC service: responses written from the shared encodings ([`wire`]), requests
    /// decoded by tonic (size limit raised for large proxies).
    pub fn ads_service(&self) -> wire::AdsService {
        wire::AdsService::new(self.clone())
    }

    /// Registers more metrics (the CA's, the admission server's, …) in the registry `/metrics`
    /// serves, and returns what `register` returns (usually the handles to count with).
    pub fn register_metrics<T>(&self, register: impl FnOnce(&mut Registry) -> T) -> T {
        register(&mut self.shared.registry.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// `/metrics`, `/ready` and the `/debug/*` endpoints, for the monitoring port.
    pub fn monitoring_router(&self) -> axum::Router {
        debug::router(self.shared.clone())
    }

    /// Serves ADS over cleartext HTTP/2 on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .initial_connection_window_size(RECEIVE_WINDOW)
            .initial_stream_window_size(RECEIVE_WINDOW)
            .add_service(self.ads_service())
            .serve_with_incoming_shutdown(plaintext_incoming(listener), shutdown)
            .await
    }
}

/// HTTP/2 receive window of an xDS connection and stream: the protocol's default (64 KiB, what
/// grpc-go, and so istiod, starts with), not hyper's 1 MiB. A proxy sends at most this much
/// before discovery has read it. Measured on 1,000 SotW proxies, whose EDS acknowledgements
/// carry every subscribed name (~150 KB at 3,000 clusters): an endpoint change cost 90–110 ms
/// of discovery's CPU instead of 160–170 ms, with the same latency and memory per stream.
pub const RECEIVE_WINDOW: u32 = 65_535;

/// Connections the kernel queues for an xDS port before discovery accepts them (capped by
/// `net.core.somaxconn`). Rust's default is 128, which a reconnect storm overflows while
/// discovery is busy pushing: with SYN cookies the proxy then believes it is connected while
/// the server has no record of it, and the connection is reset (79 of 1,000 delta streams in
/// one `rudder bench xds` join). istiod's Go listener takes `somaxconn` as well.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds an xDS port with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind` sets).
pub fn bind_xds_listener(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The cleartext port's connections, with Nagle's algorithm off as on the TLS port: tonic
/// leaves it on for a listener handed over as is, and then a response's small frames (headers,
/// a small push, trailers) wait for the client's delayed ACK, ~40 ms each on Linux.
fn plaintext_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Discovery's own certificate on the TLS port, replaceable while serving (rotation): every
/// new handshake gets the current one.
#[derive(Debug)]
pub struct ServingCertificate {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServingCertificate {
    /// From a PEM chain (leaf first) and its PEM key.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self { current: RwLock::new(certified_key(chain_pem, key_pem)?) }))
    }

    /// Serves `chain_pem`/`key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let key = certified_key(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("serving key: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
}

impl rustls::server::ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// The TLS port's certificate and the root client certificates are checked against.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub serving: Arc<ServingCertificate>,
    /// Client certificates must chain to this root (PEM); a client may also present none.
    pub client_root: String,
}

/// How long a TLS handshake on the xDS port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl DiscoveryServer {
    /// Serves ADS and, when given, the CA's `CreateCertificate` over TLS on `listener` (istiod's
    /// 15012) until `shutdown` completes. A client certificate is optional; one that chains to
    /// the mesh root proves the proxy's namespace (see [`connection::Connection::identity`]).
    /// Handshakes run in tasks of their own, so a slow client holds up no other.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: &TlsOptions,
        ca: Option<crate::ca_service::CertificateService>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let config = match server_tls_config(tls) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%error, "TLS xDS port not served");
                return Ok(());
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel::<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>(64);
        let accepting = tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        tracing::warn!(%error, "accepting on the TLS xDS port");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        });
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .initial_connection_window_size(RECEIVE_WINDOW)
            .initial_stream_window_size(RECEIVE_WINDOW)
            .add_service(self.ads_service())
            .add_optional_service(ca)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
            .await;
        accepting.abort();
        served
    }
}

fn server_tls_config(tls: &TlsOptions) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.client_root.as_bytes()) {
        roots.add(cert.map_err(|e| format!("mesh root: {e}"))?).map_err(|e| format!("mesh root: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(tls.serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl DiscoveryServer {
    /// Opens a SotW stream from its decoded requests: the first request registers the
    /// connection, then the stream runs in its own task, sending on the returned channel.
    pub(crate) async fn open_sotw(
        &self,
        mut requests: Requests<wire::SotwRequest>,
        peer: connection::Peer,
    ) -> Result<wire::ResponseReceiver<wire::SotwResponse>, Status> {
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let connection = connection::register(&self.shared, first.node.as_ref(), peer, false)?;
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(sotw::run(self.shared.clone(), connection, first, requests, tx));
        Ok(rx)
    }

    /// Opens a delta stream, as [`DiscoveryServer::open_sotw`] does a SotW one.
    pub(crate) async fn open_delta(
        &self,
        mut requests: Requests<DeltaDiscoveryRequest>,
        peer: connection::Peer,
    ) -> Result<wire::ResponseReceiver<wire::DeltaResponse>, Status> {
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let connection = connection::register(&self.shared, first.node.as_ref(), peer, true)?;
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(delta::run(self.shared.clone(), connection, first, requests, tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod nodelay_tests {
    use futures::StreamExt;

    /// Found by the `ads` fuzz target (every stream took ~50 ms to end on loopback): the
    /// cleartext port accepted connections with Nagle's algorithm on.
    #[tokio::test]
    async fn the_cleartext_port_turns_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut incoming = super::plaintext_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("nodelay"), "TCP_NODELAY is off on an accepted connection");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Per-kind tables are indexed by `kind as usize`: every kind is in `PUSH_ORDER` once and
    /// indexes below `COUNT`.
    #[test]
    fn every_kind_indexes_a_per_kind_table() {
        let mut seen = [false; Kind::COUNT];
        for kind in Kind::PUSH_ORDER {
            assert!(!std::mem::replace(&mut seen[kind as usize], true), "{kind:?} twice");
        }
        assert!(seen.iter().all(|s| *s));
    }

    /// A storm of connections discovery has not accepted yet waits in the queue. With Rust's
    /// default backlog (128) the rest would be SYN-cookie connections the client believes in
    /// and the listener never yields.
    #[tokio::test]
    async fn the_xds_port_queues_a_connection_storm() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let storm = 600.min(somaxconn);
        let listener = bind_xds_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        // Without room in the queue, connects stall (SYN retransmits) or look established.
        let clients = tokio::task::spawn_blocking(move || {
            (0..storm)
                .map_while(|_| std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(clients.len(), storm, "connects of a storm of {storm} (somaxconn {somaxconn})");
        let mut accepted = 0;
        while accepted < storm {
            match tokio::time::timeout(Duration::from_secs(5), listener.accept()).await {
                Ok(Ok(_)) => accepted += 1,
                _ => break,
            }
        }
        assert_eq!(accepted, clients.len(), "connections accepted of a storm of {storm} (somaxconn {somaxconn})");
    }
}
