//! A connected stream: who the proxy is and, per resource type, what it asked for, what it
//! was sent and what it acknowledged. The stream task is the only writer; the debug endpoints
//! read it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    /// Explicitly subscribed names.
    pub names: BTreeSet<String>,
    /// What the client was last sent (SotW) or holds (delta): name → content hash.
    #[serde(skip)]
    pub sent: BTreeMap<String, u64>,
    pub nonce_sent: String,
    pub nonce_acked: String,
    pub version_sent: String,
    pub version_acked: String,
    /// Message of the last NACK, cleared by the next ACK.
    pub last_error: Option<String>,
    pub nacks: u64,
}

impl WatchState {
    pub fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
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
    peer: Option<SocketAddr>,
    delta: bool,
) -> Result<Registration, Status> {
    let node = node
        .filter(|n| !n.id.is_empty())
        .ok_or_else(|| Status::invalid_argument("the first request must carry node.id"))?;
    let metadata = node.metadata.as_ref().map(struct_to_json).unwrap_or_default();
    let proxy = Proxy::from_node(&node.id, &metadata).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let connection = Arc::new(Connection {
        id: shared.connection_id(&node.id),
        node_id: node.id.clone(),
        proxy: Arc::new(proxy),
        peer,
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

/// What both stream kinds share: the connection, the generation feed and the resources of the
/// generation the stream last converged to.
#[derive(Debug)]
pub(crate) struct StreamCore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) registration: Registration,
    generations: watch::Receiver<Arc<Generation>>,
    current: Option<ProxyResources>,
}

impl StreamCore {
    /// Subscribes to pushes right away, so none published from here on is missed.
    pub(crate) fn new(shared: Arc<Shared>, registration: Registration) -> Self {
        let generations = shared.generations.subscribe();
        Self { shared, registration, generations, current: None }
    }

    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.registration.connection
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

    /// The resources of the current generation, built on first use.
    pub(crate) async fn current(&mut self) -> ProxyResources {
        if let Some(current) = &self.current {
            return current.clone();
        }
        let generation = self.generations.borrow_and_update().clone();
        self.adopt(generation).await
    }

    /// Moves to the latest generation; `None` when the stream is already there.
    pub(crate) async fn advance(&mut self) -> Option<ProxyResources> {
        let generation = self.generations.borrow_and_update().clone();
        if self.current.as_ref().is_some_and(|c| c.generation.version == generation.version) {
            return None;
        }
        Some(self.adopt(generation).await)
    }

    async fn adopt(&mut self, generation: Arc<Generation>) -> ProxyResources {
        let proxy = &self.registration.connection.proxy;
        let resources = ProxyResources::build(&self.shared.generator, generation, proxy, self.current.as_ref()).await;
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
    type Request: Send + 'static;
    fn core(&mut self) -> &mut StreamCore;
    fn on_request(&mut self, request: Self::Request) -> impl Future<Output = Result<(), Closed>> + Send;
    fn push(&mut self) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// Serves one stream until the client goes away: answers `first`, then every request, and
/// pushes every new generation.
pub(crate) async fn drive<H: StreamHandler>(
    mut stream: H,
    first: H::Request,
    mut requests: tonic::Streaming<H::Request>,
) {
    if stream.on_request(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
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
