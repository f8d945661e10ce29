//! A connected stream: who the proxy is and, per resource type, what it asked for, what it
//! was sent and what it acknowledged. The stream task is the only writer; the debug endpoints
//! read it.

use crate::ca::{SpiffeId, identity_of_certificate};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use serde::Serialize;
use tokio::sync::watch;
use tonic::Status;

use crate::model::Proxy;

use super::cache::{Generation, ProxyResources};
use super::{Kind, Shared};

/// Per stream, per type bookkeeping (upstream calls it a watched resource).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchState {
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
    /// SotW legacy wildcard: the first request named nothing, so an empty list keeps meaning
    /// "everything" rather than "nothing".
    #[serde(skip)]
    pub legacy_wildcard: bool,
    /// Explicitly subscribed names. Shared between streams that subscribe to the same set
    /// (see [`Interner`]); change it through `Arc::make_mut`.
    #[serde(serialize_with = "serialize_names")]
    pub names: Arc<BTreeSet<String>>,
    /// What the client was last sent (SotW) or holds (delta): name → content hash. Shared
    /// like `names`.
    #[serde(skip)]
    pub sent: Arc<BTreeMap<String, u64>>,
    pub nonce_sent: String,
    pub nonce_acked: String,
    pub version_sent: String,
    pub version_acked: String,
    /// Message of the last NACK, cleared by the next ACK.
    pub last_error: Option<String>,
    pub nacks: u64,
    /// The digest of `names` and the set it was taken of (see [`WatchState::names_digest`]).
    #[serde(skip)]
    pub(crate) names_digest: Option<(Arc<BTreeSet<String>>, NameDigest)>,
}

impl WatchState {
    pub fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The [`NameDigest`] of `names`, taken once per subscribed set. The set is kept with it
    /// and compared by identity: a set freed and another allocated at its address cannot pass
    /// for it.
    pub(crate) fn names_digest(&mut self) -> NameDigest {
        if let Some((names, digest)) = &self.names_digest
            && Arc::ptr_eq(names, &self.names)
        {
            return *digest;
        }
        let digest = NameDigest::of(self.names.iter().map(String::as_bytes));
        self.names_digest = Some((self.names.clone(), digest));
        digest
    }
}

/// A digest of a list of names that ignores their order: how many there are and the sum of a
/// 128-bit hash of each. Lists holding the same names the same number of times have equal
/// digests; others collide with a chance of about 2^-128 per comparison, and the hash is
/// seeded per process, so a client cannot aim names at a collision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct NameDigest {
    count: usize,
    sum: u128,
}

impl NameDigest {
    pub(crate) fn of<'n>(names: impl IntoIterator<Item = &'n [u8]>) -> Self {
        let seed = process_seed();
        names.into_iter().fold(Self { count: 0, sum: 0 }, |digest, name| Self {
            count: digest.count + 1,
            sum: digest.sum.wrapping_add(xxhash_rust::xxh3::xxh3_128_with_seed(name, seed)),
        })
    }
}

/// A random seed for this process's hashes of client-chosen names.
fn process_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::hash::RandomState::new().hash_one(0_u64))
}

fn serialize_names<S: serde::Serializer>(names: &Arc<BTreeSet<String>>, serializer: S) -> Result<S::Ok, S::Error> {
    names.as_ref().serialize(serializer)
}

/// Deduplicates the per-stream bookkeeping of [`WatchState`]. Proxies of one view subscribe
/// to and are sent the same tens of thousands of names (every EDS cluster of a large mesh);
/// a private copy per stream made memory grow by megabytes per proxy. Streams instead keep
/// an `Arc` to one shared copy of each distinct map and copy it only to change it
/// (`Arc::make_mut`), after which the result is interned again.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    sent: Pool<BTreeMap<String, u64>>,
    names: Pool<BTreeSet<String>>,
    /// Name sets by the [`NameDigest`] of a request list that named them (in any order, with
    /// any repeats), held weakly, and how many were filed (to sweep dead ones).
    listed: Mutex<(ListedSets, usize)>,
}

type ListedSets = HashMap<NameDigest, Weak<BTreeSet<String>>>;

impl Interner {
    pub(crate) fn sent(&self, map: Arc<BTreeMap<String, u64>>) -> Arc<BTreeMap<String, u64>> {
        self.sent.intern(map)
    }

    pub(crate) fn names(&self, names: Arc<BTreeSet<String>>) -> Arc<BTreeSet<String>> {
        self.names.intern(names)
    }

    /// The live set some request listing names with `digest` named: proxies of one view
    /// subscribe to the same thousands of names, and Envoy's SotW client lists them unsorted,
    /// so building the set again cost each of them a sort (~0.5 ms at 3,000 names).
    pub(crate) fn listed(&self, digest: NameDigest) -> Option<Arc<BTreeSet<String>>> {
        self.listed.lock().unwrap_or_else(PoisonError::into_inner).0.get(&digest).and_then(Weak::upgrade)
    }

    /// Interns `names` (see [`Interner::names`]) and files it under `digest`, the digest of the
    /// request list it was built from.
    pub(crate) fn names_listed(&self, digest: NameDigest, names: Arc<BTreeSet<String>>) -> Arc<BTreeSet<String>> {
        let names = self.names(names);
        let mut listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let (by_digest, filed) = &mut *listed;
        by_digest.insert(digest, Arc::downgrade(&names));
        *filed += 1;
        if *filed % SWEEP_EVERY == 0 {
            by_digest.retain(|_, set| set.strong_count() > 0);
        }
        names
    }
}

/// Live values by content hash. Holds them weakly: a value no stream uses any more is freed.
#[derive(Debug)]
pub(crate) struct Pool<T> {
    /// Weak handles by content hash, and how many were inserted (to sweep dead ones).
    by_hash: Mutex<(Buckets<T>, usize)>,
}

type Buckets<T> = HashMap<u64, Vec<Weak<T>>>;

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self { by_hash: Mutex::new((HashMap::new(), 0)) }
    }
}

/// Maps smaller than this are not worth a lookup.
const INTERN_MIN_LEN: usize = 16;

/// How many insertions between sweeps of dead entries.
const SWEEP_EVERY: usize = 1024;

impl<T: Hash + Eq + Len> Pool<T> {
    fn intern(&self, value: Arc<T>) -> Arc<T> {
        // Already shared: it came from the pool (or a shared cache) and was not changed since.
        if value.len() < INTERN_MIN_LEN || Arc::strong_count(&value) > 1 {
            return value;
        }
        // Hashed outside the lock: it walks every name. XXH3 rather than SipHash: thousands of
        // names per subscription, on every join (SipHash was a third of the interner's samples
        // in a delta join).
        // Seeded per process, so a client cannot aim names at one bucket.
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(process_seed());
        value.hash(&mut hasher);
        self.intern_by(value, hasher.finish(), |a, b| a == b)
    }
}

impl<T> Pool<T> {
    /// A live value `same` as `value` among those filed under `key` (a digest of the content
    /// `same` compares), or `value`, now filed there.
    pub(crate) fn intern_by(&self, value: Arc<T>, key: u64, same: impl Fn(&T, &T) -> bool) -> Arc<T> {
        // Compared outside the lock: comparing may walk every name.
        let candidates: Vec<Arc<T>> = {
            let pool = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
            pool.0.get(&key).map(|b| b.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default()
        };
        if let Some(existing) = candidates.into_iter().find(|c| Arc::ptr_eq(c, &value) || same(c, &value)) {
            return existing;
        }
        let mut pool = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        let (by_hash, inserted) = &mut *pool;
        let bucket = by_hash.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        bucket.push(Arc::downgrade(&value));
        *inserted += 1;
        if *inserted % SWEEP_EVERY == 0 {
            by_hash.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
        }
        value
    }
}

/// The size of an interned collection.
pub(crate) trait Len {
    fn len(&self) -> usize;
}

impl<K, V> Len for BTreeMap<K, V> {
    fn len(&self) -> usize {
        BTreeMap::len(self)
    }
}

impl<K> Len for BTreeSet<K> {
    fn len(&self) -> usize {
        BTreeSet::len(self)
    }
}

/// Who is at the other end of a stream, as the transport says.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer {
    pub(crate) address: Option<SocketAddr>,
    /// From the client certificate on the TLS port.
    pub(crate) identity: Option<SpiffeId>,
}

impl Peer {
    /// The peer of a request served by tonic: plaintext or TLS (with or without a client
    /// certificate).
    pub(crate) fn of<B>(request: &http::Request<B>) -> Self {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let extensions = request.extensions();
        if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            let identity = tls.peer_certs().and_then(|certs| certs.first().and_then(|c| identity_of_certificate(c)));
            return Self { address: tls.get_ref().remote_addr(), identity };
        }
        Self { address: extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr), identity: None }
    }
}

/// One ADS stream.
#[derive(Debug)]
pub struct Connection {
    /// `<node id>-<counter>`.
    pub id: String,
    pub node_id: String,
    pub proxy: Arc<Proxy>,
    pub peer: Option<SocketAddr>,
    /// The SPIFFE identity of the client certificate, on the TLS port.
    pub identity: Option<SpiffeId>,
    pub delta: bool,
    pub connected_at: SystemTime,
    pub(crate) connected_instant: Instant,
    /// Push version the stream last converged to.
    pub(crate) pushed_version: Mutex<u64>,
    watches: Mutex<BTreeMap<Kind, WatchState>>,
}

impl Connection {
    pub(crate) fn watches(&self) -> MutexGuard<'_, BTreeMap<Kind, WatchState>> {
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn watch_snapshot(&self) -> BTreeMap<Kind, WatchState> {
        self.watches().clone()
    }

    /// Whether this stream may be sent TLS credentials (gateway `credentialName` secrets of
    /// its namespace). A client certificate proves the namespace (registration refuses a node
    /// claiming another one). Without one, the node id is only a claim, so secrets go only to a
    /// stream whose peer address is the address the proxy claims (in a cluster, the pod's IP),
    /// or from this host itself (file mode, where every proxy is local).
    pub fn may_receive_credentials(&self) -> bool {
        if self.identity.is_some() {
            return true;
        }
        let Some(peer) = self.peer else { return false };
        peer.ip().is_loopback() || self.proxy.ip_addresses.iter().any(|ip| ip.parse() == Ok(peer.ip()))
    }

    pub fn pushed_version(&self) -> u64 {
        *self.pushed_version.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn age(&self) -> Duration {
        self.connected_instant.elapsed()
    }
}

/// Keeps a connection registered (and counted) for as long as its stream task runs.
#[derive(Debug)]
pub(crate) struct Registration {
    shared: Arc<Shared>,
    pub(crate) connection: Arc<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.connection.id);
        self.shared.metrics.connected.dec();
        tracing::debug!(connection = %self.connection.id, "disconnected");
    }
}

/// Validates the first request's node and registers the stream. Registration happens before
/// the first response is computed, so a push that lands meanwhile is not missed.
pub(crate) fn register(
    shared: &Arc<Shared>,
    node: Option<&Node>,
    peer: Peer,
    delta: bool,
) -> Result<Registration, Status> {
    let node = node
        .filter(|n| !n.id.is_empty())
        .ok_or_else(|| Status::invalid_argument("the first request must carry node.id"))?;
    let metadata = node.metadata.as_ref().map(struct_to_json).unwrap_or_default();
    let mut proxy = Proxy::from_node(&node.id, &metadata).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if let Some(locality) = node.locality.as_ref().filter(|l| !l.region.is_empty() || !l.zone.is_empty()) {
        let parts = [locality.region.as_str(), locality.zone.as_str(), locality.sub_zone.as_str()];
        proxy.locality = parts.join("/").trim_end_matches('/').to_owned();
    }
    check_claimed_namespace(peer.identity.as_ref(), &proxy, &node.id)?;
    let connection = Arc::new(Connection {
        id: shared.connection_id(&node.id),
        node_id: node.id.clone(),
        proxy: Arc::new(proxy),
        peer: peer.address,
        identity: peer.identity,
        delta,
        connected_at: SystemTime::now(),
        connected_instant: Instant::now(),
        pushed_version: Mutex::new(0),
        watches: Mutex::new(BTreeMap::new()),
    });
    shared.connections.lock().unwrap_or_else(PoisonError::into_inner).insert(connection.id.clone(), connection.clone());
    shared.metrics.connected.inc();
    tracing::debug!(connection = %connection.id, delta, "connected");
    Ok(Registration { shared: shared.clone(), connection })
}

/// A client certificate proves the proxy's namespace: a node claiming another is refused.
fn check_claimed_namespace(identity: Option<&SpiffeId>, proxy: &Proxy, node_id: &str) -> Result<(), Status> {
    match identity {
        Some(identity) if identity.namespace != proxy.namespace => Err(Status::permission_denied(format!(
            "node {node_id} claims namespace {:?}, but its certificate is {identity}",
            proxy.namespace
        ))),
        _ => Ok(()),
    }
}

/// What both stream kinds share: the connection, the generation feed and the resources of the
/// generation the stream last converged to.
#[derive(Debug)]
pub(crate) struct StreamCore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) registration: Registration,
    generations: watch::Receiver<Arc<Generation>>,
    current: Option<ProxyResources>,
    /// Whether this stream holds one of the initial-push permits (see
    /// [`StreamCore::hold_initial_permit`]).
    holds_initial_permit: bool,
    /// When a held permit is given back even if the client has not answered, so clients that
    /// never ACK cannot starve every other stream's first config.
    permit_deadline: Option<tokio::time::Instant>,
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        if self.holds_initial_permit {
            self.shared.initial_push_permits.add_permits(1);
        }
    }
}

impl StreamCore {
    /// Subscribes to pushes right away, so none published from here on is missed.
    pub(crate) fn new(shared: Arc<Shared>, registration: Registration) -> Self {
        let generations = shared.generations.subscribe();
        Self { shared, registration, generations, current: None, holds_initial_permit: false, permit_deadline: None }
    }

    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.registration.connection
    }

    /// Join storms: a stream building or sending an initial response holds one of a bounded
    /// number of permits until the client has answered everything it was sent (ACK or NACK),
    /// so at most that many streams have first config in flight. Holding it only while the
    /// response was queued let every stream of a storm queue megabytes at once.
    pub(crate) async fn hold_initial_permit(&mut self) {
        if self.holds_initial_permit {
            return;
        }
        if let Ok(permit) = self.shared.initial_push_permits.acquire().await {
            permit.forget();
            self.holds_initial_permit = true;
            self.permit_deadline = Some(tokio::time::Instant::now() + self.shared.initial_push_timeout);
        }
    }

    /// When the held initial-push permit expires (`None`: no permit held).
    pub(crate) fn permit_deadline(&self) -> Option<tokio::time::Instant> {
        self.permit_deadline.filter(|_| self.holds_initial_permit)
    }

    /// Gives the initial-push permit back whether or not the client answered.
    pub(crate) fn expire_initial_permit(&mut self) {
        if self.holds_initial_permit {
            tracing::debug!(connection = %self.connection().id, "client did not answer its first config in time; permit returned");
            self.shared.initial_push_permits.add_permits(1);
            self.holds_initial_permit = false;
        }
        self.permit_deadline = None;
    }

    /// Returns the initial-push permit once no response of any type awaits an answer.
    pub(crate) fn release_initial_permit_if_answered(&mut self) {
        if !self.holds_initial_permit {
            return;
        }
        let answered = self
            .connection()
            .watches()
            .values()
            .all(|w| w.nonce_sent.is_empty() || w.nonce_acked == w.nonce_sent || w.last_error.is_some());
        if answered {
            self.shared.initial_push_permits.add_permits(1);
            self.holds_initial_permit = false;
            self.permit_deadline = None;
        }
    }

    /// Whether the stream has not subscribed to anything yet (its first request).
    pub(crate) fn is_new(&self) -> bool {
        self.connection().watches().is_empty()
    }

    /// Resolves when a generation newer than the one last taken is published; `Err` when the
    /// server is gone.
    pub(crate) async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.generations.changed().await
    }

    /// Whether a generation newer than the current one is waiting (requests are answered
    /// only after the stream has caught up with it, so types never mix generations).
    pub(crate) fn push_pending(&self) -> bool {
        self.current.is_some() && self.generations.has_changed().unwrap_or(false)
    }

    /// The resources of the current generation, built on first use. While the server is
    /// still loading its registry this waits: the stream's first answer is the real mesh.
    pub(crate) async fn current(&mut self) -> ProxyResources {
        if let Some(current) = &self.current {
            return current.clone();
        }
        // `Err` only when the server is gone; the stream then serves what there is.
        let _ = self.generations.wait_for(|g| !g.snapshot.loading).await;
        let generation = self.generations.borrow_and_update().clone();
        self.adopt(generation).await
    }

    /// What the stream was last served (every diff since was made against it), if anything.
    pub(crate) fn served(&self) -> Option<&ProxyResources> {
        self.current.as_ref()
    }

    /// Moves to the latest generation; `None` when the stream is already there (or the
    /// server is still loading).
    pub(crate) async fn advance(&mut self) -> Option<ProxyResources> {
        let generation = self.generations.borrow_and_update().clone();
        if generation.snapshot.loading
            || self.current.as_ref().is_some_and(|c| c.generation.version == generation.version)
        {
            return None;
        }
        Some(self.adopt(generation).await)
    }

    async fn adopt(&mut self, generation: Arc<Generation>) -> ProxyResources {
        let connection = &self.registration.connection;
        let mut resources =
            ProxyResources::build(&self.shared.generator, generation, &connection.proxy, self.current.as_ref()).await;
        if !connection.may_receive_credentials() {
            if resources.has_credentials() {
                tracing::warn!(
                    connection = %connection.id,
                    peer = ?connection.peer,
                    "credentials withheld: the stream does not come from the address its node claims"
                );
            }
            resources.withhold_credentials();
        }
        *self.registration.connection.pushed_version.lock().unwrap_or_else(PoisonError::into_inner) =
            resources.generation.version;
        self.current = Some(resources.clone());
        resources
    }
}

/// The node metadata as JSON values, the form [`Proxy::from_node`] reads.
pub fn struct_to_json(metadata: &Struct) -> BTreeMap<String, serde_json::Value> {
    metadata.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()
}

fn value_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match &value.kind {
        None | Some(value::Kind::NullValue(_)) => Json::Null,
        Some(value::Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map(Json::Number).unwrap_or(Json::Null),
        Some(value::Kind::StringValue(s)) => Json::String(s.clone()),
        Some(value::Kind::BoolValue(b)) => Json::Bool(*b),
        Some(value::Kind::StructValue(s)) => {
            Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
        }
        Some(value::Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// The error message of a NACK, for the debug endpoints.
pub(crate) fn nack_message(status: &envoy_types::pb::google::rpc::Status) -> String {
    if status.message.is_empty() { format!("code {}", status.code) } else { status.message.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::ListValue;

    fn connection(node_ip: &str, peer: Option<&str>) -> Connection {
        let id = format!("router~{node_ip}~gw-1.istio-system~istio-system.svc.cluster.local");
        let proxy = Proxy::from_node(&id, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        Connection {
            id: "c".into(),
            node_id: id,
            proxy: Arc::new(proxy),
            peer: peer.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}"))),
            identity: None,
            delta: false,
            connected_at: SystemTime::now(),
            connected_instant: Instant::now(),
            pushed_version: Mutex::new(0),
            watches: Mutex::new(BTreeMap::new()),
        }
    }

    #[test]
    fn credentials_go_only_to_the_address_a_node_claims_or_to_this_host() {
        assert!(connection("10.244.0.7", Some("10.244.0.7:40000")).may_receive_credentials());
        assert!(connection("10.244.0.7", Some("127.0.0.1:40000")).may_receive_credentials());
        assert!(!connection("10.244.0.7", Some("10.244.0.9:40000")).may_receive_credentials());
        assert!(!connection("10.244.0.7", None).may_receive_credentials());
        // A client certificate (its namespace checked at registration) is proof enough.
        let mut verified = connection("10.244.0.7", Some("10.244.0.9:40000"));
        verified.identity = Some(SpiffeId::new("cluster.local", "istio-system", "gw"));
        assert!(verified.may_receive_credentials());
    }

    #[test]
    fn a_certificate_of_another_namespace_cannot_claim_this_one() {
        let proxy = connection("10.244.0.7", None).proxy;
        let id = |ns: &str| SpiffeId::new("cluster.local", ns, "gw");
        assert!(check_claimed_namespace(Some(&id("istio-system")), &proxy, "n").is_ok());
        assert!(check_claimed_namespace(None, &proxy, "n").is_ok(), "no certificate: only the address rule applies");
        let refused = check_claimed_namespace(Some(&id("default")), &proxy, "n").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn metadata_struct_becomes_json() {
        let text = |s: &str| Value { kind: Some(value::Kind::StringValue(s.into())) };
        let labels = Struct { fields: [("app".to_owned(), text("reviews"))].into() };
        let metadata = Struct {
            fields: [
                ("NAMESPACE".to_owned(), text("default")),
                ("LABELS".to_owned(), Value { kind: Some(value::Kind::StructValue(labels)) }),
                ("N".to_owned(), Value { kind: Some(value::Kind::NumberValue(2.0)) }),
                ("L".to_owned(), Value { kind: Some(value::Kind::ListValue(ListValue { values: vec![text("x")] })) }),
            ]
            .into(),
        };
        let json = struct_to_json(&metadata);
        assert_eq!(json["LABELS"]["app"], "reviews");
        assert_eq!(json["N"], 2.0);
        assert_eq!(json["L"][0], "x");
        let proxy = Proxy::from_node("sidecar~10.0.0.1~a.default~default.svc.cluster.local", &json).unwrap();
        assert_eq!(proxy.labels["app"], "reviews");
    }
}

/// The response channel of a stream is gone: the client disconnected.
#[derive(Debug)]
pub(crate) struct Closed;

/// One kind of ADS stream (SotW or delta): how it answers a request and how it pushes a new
/// generation. [`drive`] runs either.
pub(crate) trait StreamHandler: Send {
    type Request: super::wire::DecodeRequest + Send + 'static;
    fn core(&mut self) -> &mut StreamCore;
    fn on_request(&mut self, request: Self::Request) -> impl Future<Output = Result<(), Closed>> + Send;
    fn push(&mut self) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// Serves one stream until the client goes away: answers `first`, then every request, and
/// pushes every new generation.
pub(crate) async fn drive<H: StreamHandler>(
    mut stream: H,
    first: H::Request,
    mut requests: super::wire::Requests<H::Request>,
) {
    if stream.on_request(first).await.is_err() {
        return;
    }
    loop {
        let permit_deadline = stream.core().permit_deadline();
        let permit_expired = async move {
            match permit_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = permit_expired => stream.core().expire_initial_permit(),
            message = requests.message() => match message {
                Ok(Some(request)) => {
                    if stream.on_request(request).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(connection = %stream.core().connection().id, %status, "stream ended");
                    return;
                }
            },
            changed = stream.core().changed() => {
                if changed.is_err() || stream.push().await.is_err() {
                    return;
                }
            }
        }
    }
}
