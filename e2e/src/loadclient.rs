//! An Envoy-like ADS load generator for benchmarks (`rudder bench xds`, the bench binary).
//!
//! Opens N streams (SotW or delta), each with its own node id and its own HTTP/2 connection,
//! and drives them the way Envoy does: CDS first, then EDS for the EDS clusters it received,
//! then LDS, then RDS for route names given by the caller (finding them would mean decoding
//! every listener's HTTP connection manager). Every response is ACKed. Per stream it records
//! when the full config arrived and when each response arrived, so a caller can measure
//! time-to-config and the receive latency of an update.
//!
//! The client shares the machine with the server it measures, so it decodes as little as it
//! can: only the name (and, for clusters, the discovery type) of each resource.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind as Kind_;
use envoy_types::pb::google::protobuf::{Any, Struct, Value};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use rudder_xds::server::Kind;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The ADS server, e.g. `http://127.0.0.1:15010`.
    pub target: String,
    pub streams: usize,
    /// Incremental instead of state-of-the-world.
    pub delta: bool,
    /// RDS names every stream subscribes to once it has listeners; empty skips RDS.
    pub route_names: Vec<String>,
    /// New streams per second; `None` opens them all at once (a join storm).
    pub join_rate: Option<f64>,
    /// Namespace of the simulated sidecars (node ids `sidecar~<ip>~load-<i>.<ns>~<ns>.svc.cluster.local`).
    pub namespace: String,
    /// Give the streams this many distinct label sets (`app`, `version`, `pod-template-hash`;
    /// stream `i` gets set `i % N`), as workloads of a real mesh have; 0 sends no labels.
    pub distinct_workloads: usize,
    /// Place the streams in this many zones of the synthetic mesh (`node.locality`; stream `i`
    /// in zone `i % N`, see `synthetic::mesh_in_zones`); 0 sends no locality.
    pub zones: usize,
    /// When a stream ends, reconnect the way Envoy does (jittered exponential backoff from
    /// 500 ms up to 30 s) and fetch the whole config again, instead of giving up.
    pub reconnect: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:15010".into(),
            streams: 1,
            delta: false,
            route_names: Vec::new(),
            join_rate: None,
            namespace: "default".into(),
            distinct_workloads: 0,
            zones: 0,
            reconnect: false,
        }
    }
}

/// What one stream saw.
#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    /// The stream's number, from 0.
    pub index: usize,
    pub node_id: String,
    pub started: Option<Instant>,
    /// When every type the stream asks for had arrived at least once.
    pub full_config: Option<Instant>,
    /// Encoded resource bytes received, per type in [`Kind::PUSH_ORDER`] order.
    pub bytes: [u64; Kind::PUSH_ORDER.len()],
    /// `bytes` as they were when the full config arrived: the size of the initial config.
    pub full_config_bytes: [u64; Kind::PUSH_ORDER.len()],
    /// Receive times of the responses, per type in [`Kind::PUSH_ORDER`] order.
    pub received: [Vec<Instant>; Kind::PUSH_ORDER.len()],
    /// Receive times of the route responses, with how many RouteConfigurations each carried
    /// (a delta server may spread one change over several responses).
    pub route_resources: Vec<(Instant, usize)>,
    /// Why the stream ended early, if it did (with `reconnect`: why it last ended).
    pub error: Option<String>,
    /// Streams opened and answered so far (more than 1 after reconnects).
    pub connections: u32,
    /// When the stream of the latest connection had its full config.
    pub latest_full_config: Option<Instant>,
}

impl StreamStats {
    /// Time from opening the stream to the full config.
    pub fn time_to_full_config(&self) -> Option<Duration> {
        Some(self.full_config?.duration_since(self.started?))
    }

    /// Time from `since` to a full config on a connection opened after it (a resync).
    pub fn resynced_after(&self, since: Instant) -> Option<Duration> {
        self.latest_full_config.filter(|t| *t >= since && self.connections > 1).map(|t| t.duration_since(since))
    }

    /// Time from `since` to the first response of `kind` received after it.
    pub fn received_after(&self, kind: Kind, since: Instant) -> Option<Duration> {
        self.received[slot(kind)].iter().find(|t| **t >= since).map(|t| t.duration_since(since))
    }

    /// Time from `since` until `count` RouteConfigurations had arrived after it.
    pub fn received_routes_after(&self, since: Instant, count: usize) -> Option<Duration> {
        let mut seen = 0;
        let (at, _) = self.route_resources.iter().filter(|(t, _)| *t >= since).find(|(_, n)| {
            seen += n;
            seen >= count
        })?;
        Some(at.duration_since(since))
    }
}

fn slot(kind: Kind) -> usize {
    Kind::PUSH_ORDER.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Errors starting a stream.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad target {0:?}: {1}")]
    Target(String, String),
}

/// Streams in flight. Dropping it closes them.
#[derive(Debug)]
pub struct LoadRun {
    stats: Vec<Arc<Mutex<StreamStats>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Streams retry after errors: an error does not settle a wait.
    reconnect: bool,
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often the waiting helpers look at the streams' progress.
const POLL: Duration = Duration::from_millis(5);

impl LoadRun {
    /// Opens the streams, pacing them by `join_rate`; returns once all are started.
    pub async fn start(options: LoadOptions) -> Result<Self, LoadError> {
        let endpoint = Endpoint::from_shared(options.target.clone())
            .map_err(|e| LoadError::Target(options.target.clone(), e.to_string()))?;
        let options = Arc::new(options);
        let names = Arc::new(NameCache::default());
        let mut run = Self { stats: Vec::new(), tasks: Vec::new(), reconnect: options.reconnect };
        let started = Instant::now();
        for index in 0..options.streams {
            if let Some(rate) = options.join_rate.filter(|r| *r > 0.0) {
                tokio::time::sleep_until((started + Duration::from_secs_f64(index as f64 / rate)).into()).await;
            }
            let stats = Arc::new(Mutex::new(StreamStats {
                node_id: node_id(index, &options.namespace),
                index,
                started: Some(Instant::now()),
                ..Default::default()
            }));
            run.stats.push(stats.clone());
            let endpoint = endpoint.clone();
            let options = options.clone();
            let names = names.clone();
            run.tasks.push(tokio::spawn(async move {
                let mut attempt = 0u32;
                loop {
                    let connections = lock(&stats).connections;
                    let Err(error) = drive(endpoint.clone(), &options, &names, &stats).await else { return };
                    let answered = lock(&stats).connections > connections;
                    lock(&stats).error = Some(error);
                    if !options.reconnect {
                        return;
                    }
                    // A connection that was answered starts the backoff over, as Envoy's does.
                    attempt = if answered { 0 } else { attempt + 1 };
                    tokio::time::sleep(backoff(index, attempt)).await;
                }
            }));
        }
        Ok(run)
    }

    /// A copy of every stream's statistics.
    pub fn stats(&self) -> Vec<StreamStats> {
        self.stats.iter().map(|s| lock(s).clone()).collect()
    }

    /// Waits until every stream has its full config (or `timeout`); per stream the time it took.
    pub async fn wait_full_config(&self, timeout: Duration) -> Vec<Option<Duration>> {
        self.wait(timeout, |s| s.time_to_full_config()).await
    }

    /// Waits until every stream has received a response of `kind` after `since` (or
    /// `timeout`); per stream the latency.
    pub async fn wait_update(&self, kind: Kind, since: Instant, timeout: Duration) -> Vec<Option<Duration>> {
        self.wait(timeout, |s| s.received_after(kind, since)).await
    }

    /// Waits until every stream has received `count` RouteConfigurations after `since` (or
    /// `timeout`): a change of every subscribed route, delivered in one response or several.
    pub async fn wait_routes(&self, since: Instant, count: usize, timeout: Duration) -> Vec<Option<Duration>> {
        self.wait(timeout, |s| s.received_routes_after(since, count)).await
    }

    /// Waits until every stream has reconnected and has its full config again after `since`
    /// (or `timeout`); per stream the time from `since`. Needs `reconnect`.
    pub async fn wait_resync(&self, since: Instant, timeout: Duration) -> Vec<Option<Duration>> {
        self.wait(timeout, |s| s.resynced_after(since)).await
    }

    /// Encoded resource bytes received by all streams.
    pub fn total_bytes(&self) -> u64 {
        self.stats.iter().map(|s| lock(s).bytes.iter().sum::<u64>()).sum()
    }

    /// Mean bytes of the initial config per stream that reached it, per type in
    /// [`Kind::PUSH_ORDER`] order.
    pub fn mean_full_config_bytes(&self) -> [u64; Kind::PUSH_ORDER.len()] {
        let mut sum = [0u64; Kind::PUSH_ORDER.len()];
        let mut count = 0u64;
        for stats in &self.stats {
            let stats = lock(stats);
            if stats.full_config.is_some() {
                count += 1;
                for (total, bytes) in sum.iter_mut().zip(stats.full_config_bytes) {
                    *total += bytes;
                }
            }
        }
        sum.map(|total| total.checked_div(count).unwrap_or(0))
    }

    async fn wait(&self, timeout: Duration, done: impl Fn(&StreamStats) -> Option<Duration>) -> Vec<Option<Duration>> {
        let deadline = Instant::now() + timeout;
        loop {
            let results: Vec<Option<Duration>> = self
                .stats
                .iter()
                .map(|s| {
                    let stats = lock(s);
                    done(&stats)
                })
                .collect();
            let finished = self.stats.iter().map(|s| lock(s).error.is_some() && !self.reconnect);
            let all_settled = results.iter().zip(finished).all(|(r, failed)| r.is_some() || failed);
            if all_settled || Instant::now() >= deadline {
                return results;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Envoy's retry delay for its xDS stream: a random point below 500 ms × 2^attempt, capped at
/// 30 s. The randomness only has to spread the streams, so it is a hash of stream and attempt.
fn backoff(stream: usize, attempt: u32) -> Duration {
    const BASE_MS: u64 = 500;
    const MAX_MS: u64 = 30_000;
    let ceiling = BASE_MS.saturating_mul(1 << attempt.min(16)).min(MAX_MS);
    let mut x = (stream as u64) << 32 | u64::from(attempt);
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    Duration::from_millis(x % ceiling.max(1))
}

/// The `p`-th percentile (0–100) of the durations that are present.
pub fn percentile(durations: &[Option<Duration>], p: f64) -> Option<Duration> {
    let mut present: Vec<Duration> = durations.iter().flatten().copied().collect();
    if present.is_empty() {
        return None;
    }
    present.sort();
    let rank = ((p / 100.0) * (present.len() - 1) as f64).round() as usize;
    present.get(rank.min(present.len() - 1)).copied()
}

fn lock(stats: &Mutex<StreamStats>) -> std::sync::MutexGuard<'_, StreamStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Node metadata with `LABELS` of workload `index % distinct` (none when `distinct` is 0).
fn workload_labels(index: usize, distinct: usize) -> Option<Struct> {
    if distinct == 0 {
        return None;
    }
    let workload = index % distinct;
    let text = |s: String| Value { kind: Some(Kind_::StringValue(s)) };
    let labels = Struct {
        fields: [
            ("app".to_owned(), text(format!("load-{workload}"))),
            ("version".to_owned(), text("v1".to_owned())),
            ("pod-template-hash".to_owned(), text(format!("{workload:08x}"))),
        ]
        .into(),
    };
    let labels = Value { kind: Some(Kind_::StructValue(labels)) };
    Some(Struct { fields: [("LABELS".to_owned(), labels)].into() })
}

fn node_id(index: usize, namespace: &str) -> String {
    let ip = format!("10.{}.{}.{}", (index >> 16) & 0xff, (index >> 8) & 0xff, index & 0xff);
    format!("sidecar~{ip}~load-{index}.{namespace}~{namespace}.svc.cluster.local")
}

/// Just the fields the client needs from a cluster: its name and discovery type.
#[derive(Clone, PartialEq, Message)]
struct LeanCluster {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, optional, tag = "2")]
    discovery_type: Option<i32>,
}

/// `Cluster.DiscoveryType.EDS`.
const EDS: i32 = 3;

fn eds_cluster_name(any: &Any) -> Option<String> {
    let cluster = LeanCluster::decode(any.value.as_slice()).ok()?;
    (cluster.discovery_type == Some(EDS)).then_some(cluster.name)
}

/// Progress of one stream towards its full config.
#[derive(Debug, Default)]
struct Progress {
    got: [bool; Kind::PUSH_ORDER.len()],
    listeners_requested: bool,
    routes_requested: bool,
    /// Shared with the other streams when equal (see [`NameCache`]).
    eds_clusters: Arc<BTreeSet<String>>,
    /// `eds_clusters` in the order a SotW request lists them (see [`envoy_sotw_order`]).
    eds_request_order: Arc<Vec<String>>,
}

/// The EDS cluster names streams hold, shared: every stream of a run usually sees the same
/// tens of thousands of names, and a private copy each made the client's memory grow by a
/// megabyte per stream. Keeps the last set seen; a stream with an equal set takes that one.
#[derive(Debug, Default)]
struct NameCache {
    last: Mutex<Option<SharedNames>>,
}

/// A set of EDS names and the same names in SotW request order.
type SharedNames = (Arc<BTreeSet<String>>, Arc<Vec<String>>);

impl NameCache {
    fn share(&self, names: BTreeSet<String>) -> SharedNames {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(last) = last.filter(|(l, _)| **l == names) {
            return last;
        }
        let ordered = Arc::new(envoy_sotw_order(&names));
        let shared = (Arc::new(names), ordered);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(shared.clone());
        shared
    }
}

/// `names` in the order Envoy's SotW client lists them in a request: the iteration order of
/// its hash set of watched names, stable from one request to the next, unrelated to the
/// names' sorting (seen on Envoy 1.40's EDS requests to discovery; its delta client sends
/// sorted lists). Hash order here too, so that discovery is measured on what proxies send.
fn envoy_sotw_order(names: &BTreeSet<String>) -> Vec<String> {
    use std::hash::BuildHasher;
    // Fixed keys: the same order in every stream and run.
    let hasher = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
    let mut ordered: Vec<&String> = names.iter().collect();
    ordered.sort_by_cached_key(|name| hasher.hash_one(name));
    ordered.into_iter().cloned().collect()
}

impl Progress {
    fn complete(&self, routes: bool) -> bool {
        self.got[slot(Kind::Cluster)]
            && (self.eds_clusters.is_empty() || self.got[slot(Kind::Endpoint)])
            && self.got[slot(Kind::Listener)]
            && (!routes || self.got[slot(Kind::Route)])
    }
}

async fn drive(
    endpoint: Endpoint,
    options: &LoadOptions,
    names: &NameCache,
    stats: &Mutex<StreamStats>,
) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let index = lock(stats).index;
    let node = Node {
        id: lock(stats).node_id.clone(),
        metadata: workload_labels(index, options.distinct_workloads),
        locality: (options.zones > 0).then(|| {
            let (region, zone) = crate::synthetic::zone_locality(index % options.zones);
            Locality { region, zone, sub_zone: String::new() }
        }),
        ..Default::default()
    };
    if options.delta {
        drive_delta(client, node, options, names, stats).await
    } else {
        drive_sotw(client, node, options, names, stats).await
    }
}

fn record(
    stats: &Mutex<StreamStats>,
    kind: Kind,
    resources: usize,
    bytes: usize,
    progress: &mut Progress,
    routes: bool,
) {
    let now = Instant::now();
    let was_complete = progress.complete(routes);
    let first_response = !progress.got.iter().any(|g| *g);
    progress.got[slot(kind)] = true;
    let mut stats = lock(stats);
    if first_response {
        stats.connections += 1;
    }
    if !was_complete && progress.complete(routes) {
        stats.latest_full_config = Some(now);
    }
    stats.received[slot(kind)].push(now);
    if kind == Kind::Route {
        stats.route_resources.push((now, resources));
    }
    stats.bytes[slot(kind)] += bytes as u64;
    if stats.full_config.is_none() && progress.complete(routes) {
        stats.full_config = Some(now);
        stats.full_config_bytes = stats.bytes;
    }
}

async fn drive_sotw(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    node: Node,
    options: &LoadOptions,
    cache: &NameCache,
    stats: &Mutex<StreamStats>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(8);
    let request = |kind: Kind, names: Vec<String>, last: Option<&DiscoveryResponse>| DiscoveryRequest {
        type_url: kind.type_url().to_owned(),
        resource_names: names,
        version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let closed = |_| "request channel closed".to_owned();
    tx.send(DiscoveryRequest { node: Some(node), ..request(Kind::Cluster, Vec::new(), None) }).await.map_err(closed)?;
    let mut responses =
        client.stream_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|s| s.to_string())?.into_inner();
    let mut progress = Progress::default();
    let mut last: [Option<DiscoveryResponse>; Kind::PUSH_ORDER.len()] = Default::default();
    let routes = !options.route_names.is_empty();
    while let Some(response) = responses.message().await.map_err(|s| s.to_string())? {
        let Some(kind) = Kind::from_type_url(&response.type_url) else { continue };
        let bytes = response.resources.iter().map(|r| r.value.len()).sum();
        let resources = response.resources.len();
        let mut follow_up = Vec::new();
        match kind {
            Kind::Cluster => {
                let clusters: BTreeSet<String> = response.resources.iter().filter_map(eds_cluster_name).collect();
                follow_up.push(request(kind, Vec::new(), Some(&response)));
                if clusters != *progress.eds_clusters {
                    (progress.eds_clusters, progress.eds_request_order) = cache.share(clusters);
                    let names = (*progress.eds_request_order).clone();
                    follow_up.push(request(Kind::Endpoint, names, last[slot(Kind::Endpoint)].as_ref()));
                }
                if progress.eds_clusters.is_empty() && !progress.listeners_requested {
                    progress.listeners_requested = true;
                    follow_up.push(request(Kind::Listener, Vec::new(), None));
                }
            }
            Kind::Endpoint => {
                follow_up.push(request(kind, (*progress.eds_request_order).clone(), Some(&response)));
                if !progress.listeners_requested {
                    progress.listeners_requested = true;
                    follow_up.push(request(Kind::Listener, Vec::new(), None));
                }
            }
            Kind::Listener => {
                follow_up.push(request(kind, Vec::new(), Some(&response)));
                if routes && !progress.routes_requested {
                    progress.routes_requested = true;
                    follow_up.push(request(Kind::Route, options.route_names.clone(), None));
                }
            }
            Kind::Route => follow_up.push(request(kind, options.route_names.clone(), Some(&response))),
            // Never asked for.
            Kind::Secret | Kind::ExtensionConfig | Kind::NameTable => {}
        }
        record(stats, kind, resources, bytes, &mut progress, routes);
        last[slot(kind)] = Some(DiscoveryResponse { resources: Vec::new(), ..response });
        for request in follow_up {
            tx.send(request).await.map_err(closed)?;
        }
    }
    Err("server closed the stream".into())
}

async fn drive_delta(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    node: Node,
    options: &LoadOptions,
    cache: &NameCache,
    stats: &Mutex<StreamStats>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(8);
    let request = |kind: Kind, subscribe: Vec<String>, unsubscribe: Vec<String>, nonce: &str| DeltaDiscoveryRequest {
        type_url: kind.type_url().to_owned(),
        resource_names_subscribe: subscribe,
        resource_names_unsubscribe: unsubscribe,
        response_nonce: nonce.to_owned(),
        ..Default::default()
    };
    let closed = |_| "request channel closed".to_owned();
    let first = DeltaDiscoveryRequest { node: Some(node), ..request(Kind::Cluster, Vec::new(), Vec::new(), "") };
    tx.send(first).await.map_err(closed)?;
    let mut responses =
        client.delta_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|s| s.to_string())?.into_inner();
    let mut progress = Progress::default();
    let routes = !options.route_names.is_empty();
    while let Some(response) = responses.message().await.map_err(|s| s.to_string())? {
        let Some(kind) = Kind::from_type_url(&response.type_url) else { continue };
        let bytes = response.resources.iter().filter_map(|r| r.resource.as_ref()).map(|a| a.value.len()).sum();
        let resources = response.resources.len();
        let mut follow_up = vec![request(kind, Vec::new(), Vec::new(), &response.nonce)];
        match kind {
            Kind::Cluster => {
                let mut clusters = (*progress.eds_clusters).clone();
                for resource in &response.resources {
                    clusters.remove(&resource.name);
                    if resource.resource.as_ref().and_then(eds_cluster_name).is_some() {
                        clusters.insert(resource.name.clone());
                    }
                }
                for name in &response.removed_resources {
                    clusters.remove(name);
                }
                let subscribe: Vec<String> = clusters.difference(&progress.eds_clusters).cloned().collect();
                let unsubscribe: Vec<String> = progress.eds_clusters.difference(&clusters).cloned().collect();
                (progress.eds_clusters, progress.eds_request_order) = cache.share(clusters);
                if !subscribe.is_empty() || !unsubscribe.is_empty() {
                    follow_up.push(request(Kind::Endpoint, subscribe, unsubscribe, ""));
                }
                if progress.eds_clusters.is_empty() && !progress.listeners_requested {
                    progress.listeners_requested = true;
                    follow_up.push(request(Kind::Listener, Vec::new(), Vec::new(), ""));
                }
            }
            Kind::Endpoint => {
                if !progress.listeners_requested {
                    progress.listeners_requested = true;
                    follow_up.push(request(Kind::Listener, Vec::new(), Vec::new(), ""));
                }
            }
            Kind::Listener => {
                if routes && !progress.routes_requested {
                    progress.routes_requested = true;
                    follow_up.push(request(Kind::Route, options.route_names.clone(), Vec::new(), ""));
                }
            }
            Kind::Route | Kind::Secret | Kind::ExtensionConfig | Kind::NameTable => {}
        }
        record(stats, kind, resources, bytes, &mut progress, routes);
        for request in follow_up {
            tx.send(request).await.map_err(closed)?;
        }
    }
    Err("server closed the stream".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sotw_requests_list_names_in_a_stable_unsorted_order() {
        let names: BTreeSet<String> =
            (0..100).map(|i| format!("outbound|80||svc-{i:03}.bench.svc.cluster.local")).collect();
        let ordered = envoy_sotw_order(&names);
        assert_eq!(ordered.iter().cloned().collect::<BTreeSet<_>>(), names, "the same names, each once");
        assert_eq!(ordered.len(), names.len());
        assert!(!ordered.is_sorted(), "not the sorted order Envoy's SotW client does not use");
        assert_eq!(envoy_sotw_order(&names), ordered, "the same order at every request");
        let cache = NameCache::default();
        let (first, first_order) = cache.share(names.clone());
        let (second, second_order) = cache.share(names);
        assert!(Arc::ptr_eq(&first, &second) && Arc::ptr_eq(&first_order, &second_order), "shared between streams");
    }

    #[test]
    fn a_route_change_counts_when_every_configuration_arrived() {
        let since = Instant::now();
        let at = |ms: u64| since + Duration::from_millis(ms);
        let stats = StreamStats {
            // One before the change, then the four changed ones in three responses.
            route_resources: vec![(since - Duration::from_millis(5), 4), (at(10), 1), (at(20), 2), (at(40), 1)],
            ..Default::default()
        };
        assert_eq!(stats.received_routes_after(since, 1), Some(Duration::from_millis(10)));
        assert_eq!(stats.received_routes_after(since, 3), Some(Duration::from_millis(20)));
        assert_eq!(stats.received_routes_after(since, 4), Some(Duration::from_millis(40)));
        assert_eq!(stats.received_routes_after(since, 5), None, "the one before the change does not count");
    }

    #[test]
    fn percentiles_ignore_missing_values() {
        let ms = |n| Some(Duration::from_millis(n));
        let values = [ms(30), None, ms(10), ms(20)];
        assert_eq!(percentile(&values, 50.0), ms(20));
        assert_eq!(percentile(&values, 100.0), ms(30));
        assert_eq!(percentile(&[None], 50.0), None);
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling() {
        for attempt in 0..20 {
            let ceiling = Duration::from_millis((500u64 << attempt.min(16)).min(30_000));
            let delays: Vec<_> = (0..200).map(|stream| backoff(stream, attempt)).collect();
            assert!(delays.iter().all(|d| *d < ceiling), "attempt {attempt}");
            // Spread, not synchronised: many distinct delays.
            let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
            assert!(distinct.len() > 150, "attempt {attempt}: {}", distinct.len());
        }
    }

    #[test]
    fn node_ids_are_distinct_istio_ids() {
        let id = node_id(70_000, "bench");
        assert_eq!(id, "sidecar~10.1.17.112~load-70000.bench~bench.svc.cluster.local");
        assert!(rudder_xds::model::Proxy::from_node(&id, &Default::default()).is_ok());
    }
}
