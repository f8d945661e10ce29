//! Incremental ADS streams (`DeltaAggregatedResources`), xDS spec §1.5.
//!
//! Per type the stream keeps the subscription (wildcard flag and explicit names) and what the
//! client holds (name → version, seeded from `initial_resource_versions`). Every answer is
//! the difference between the two: resources in scope whose version the client lacks, and
//! names it holds (or newly asked for) that do not exist, as `removed_resources`.
//! Subscription changes are honoured whatever the nonce says.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::cache::{EncodedResource, ProxyResources, parse_version};
use super::connection::{Closed, Registration, StreamCore, StreamHandler, WatchState, drive, nack_message};
use super::sotw::scope;
use super::wire::{DeltaResponse, Requests};
use super::{Kind, Shared};

type Responses = super::wire::ResponseSender<DeltaResponse>;

pub(crate) async fn run(
    shared: Arc<Shared>,
    registration: Registration,
    first: DeltaDiscoveryRequest,
    requests: Requests<DeltaDiscoveryRequest>,
    responses: Responses,
) {
    drive(DeltaStream { core: StreamCore::new(shared, registration), responses }, first, requests).await;
}

/// One planned delta response.
struct Diff {
    resources: Vec<Arc<EncodedResource>>,
    removed: Vec<String>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug)]
struct DeltaStream {
    core: StreamCore,
    responses: Responses,
}

impl StreamHandler for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    fn core(&mut self) -> &mut StreamCore {
        &mut self.core
    }

    fn on_request(&mut self, request: DeltaDiscoveryRequest) -> impl Future<Output = Result<(), Closed>> + Send {
        DeltaStream::on_request(self, request)
    }

    fn push(&mut self) -> impl Future<Output = Result<(), Closed>> + Send {
        DeltaStream::push(self)
    }
}

impl DeltaStream {
    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            tracing::debug!(type_url = request.type_url, "ignoring a request for a type this server does not serve");
            return Ok(());
        };
        if self.settled_by_plain_ack(kind, &request) {
            self.core.release_initial_permit_if_answered();
            return Ok(());
        }
        if self.core.push_pending() {
            self.push().await?;
        }
        if self.core.is_new() {
            // Join storms: building the first config counts as an initial push.
            self.core.hold_initial_permit().await;
        }
        let resources = self.core.current().await;
        let (initial, diff) = {
            let mut watches = self.core.connection().watches();
            let initial = !watches.contains_key(&kind);
            let watch = watches.entry(kind).or_default();
            // Interning hashes and compares whole maps (thousands of names): only for maps this
            // request replaced. (Addresses only: an old map freed and its address reused just
            // skips one chance to share.) A private sent map that grows to the whole shared map
            // is replaced by it (`diff_named`).
            let before = (Arc::as_ptr(&watch.sent), Arc::as_ptr(&watch.names));
            let wildcard_before = watch.wildcard;
            let newly_named = self.update_watch(kind, watch, initial, request);
            // Within one generation nothing already sent can have changed, so a request that
            // only names more resources needs only those looked at (Envoy subscribes EDS names
            // as CDS chunks arrive; a full diff each time would be quadratic). That holds for
            // a wildcard subscription's ACKs too, which walked every cluster; only a request
            // that turns the wildcard on widens the scope.
            let widened = watch.wildcard && !wildcard_before;
            let diff = if initial || widened {
                diff(kind, watch, &resources, &newly_named, &BTreeSet::new())
            } else {
                diff_named(kind, watch, &resources, &newly_named)
            };
            if (Arc::as_ptr(&watch.sent), Arc::as_ptr(&watch.names)) != before {
                self.intern(watch);
            }
            (initial, diff)
        };
        // The first answer per type is due even when empty: Envoy waits for it to finish
        // initialising. Later requests only change subscriptions and need an answer only
        // when they brought something to send.
        self.core.release_initial_permit_if_answered();
        if !initial && diff.is_empty() {
            return Ok(());
        }
        if initial {
            self.core.hold_initial_permit().await;
        }
        self.send(kind, &resources, diff).await
    }

    /// Settles a plain ACK (no error, no subscription change) of a watch that exists, the
    /// answer to nearly every response: it records what the client acknowledged and needs no
    /// diff (it names nothing new). The ACK of a chunk before the last of a send changes
    /// nothing: the rest of that send is on its way, and the ACK of its last chunk settles it.
    fn settled_by_plain_ack(&self, kind: Kind, request: &DeltaDiscoveryRequest) -> bool {
        if request.error_detail.is_some()
            || request.response_nonce.is_empty()
            || !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty()
        {
            return false;
        }
        let mut watches = self.core.connection().watches();
        let Some(watch) = watches.get_mut(&kind) else { return false };
        if request.response_nonce == watch.nonce_sent {
            watch.nonce_acked.clone_from(&request.response_nonce);
            watch.version_acked.clone_from(&watch.version_sent);
            watch.last_error = None;
        } else if !earlier_chunk(&request.response_nonce, &watch.nonce_sent) {
            self.core.shared.metrics.expired_nonce(kind);
        }
        true
    }

    /// Applies ACK/NACK and subscription changes; returns the names newly subscribed (or
    /// announced by the first request), whose absence must be reported.
    fn update_watch(
        &self,
        kind: Kind,
        watch: &mut WatchState,
        initial: bool,
        request: DeltaDiscoveryRequest,
    ) -> BTreeSet<String> {
        let shared = &self.core.shared;
        if let Some(error) = &request.error_detail {
            let message = nack_message(error);
            tracing::warn!(connection = %self.core.connection().id, type_url = request.type_url, message, "config rejected");
            shared.metrics.rejected(kind);
            watch.last_error = Some(message);
            watch.nacks += 1;
        } else if !request.response_nonce.is_empty() {
            if request.response_nonce == watch.nonce_sent {
                watch.nonce_acked = request.response_nonce;
                watch.version_acked = watch.version_sent.clone();
                watch.last_error = None;
            } else if !earlier_chunk(&request.response_nonce, &watch.nonce_sent) {
                shared.metrics.expired_nonce(kind);
            }
        }
        let mut newly_named = BTreeSet::new();
        // Whether the scope may have lost names (only then can `sent` hold names out of scope).
        let mut narrowed = initial;
        let initial_versions = initial && !request.initial_resource_versions.is_empty();
        let unsubscribed = !request.resource_names_unsubscribe.is_empty();
        if initial {
            // Legacy: a client that never names anything wants everything.
            watch.wildcard = request.resource_names_subscribe.is_empty();
            for (name, version) in request.initial_resource_versions {
                // A version we cannot read never matches, so the resource is resent.
                Arc::make_mut(&mut watch.sent).insert(name.clone(), parse_version(&version).unwrap_or(0));
                if name != "*" {
                    newly_named.insert(name);
                }
            }
        }
        let mut subscribe = request.resource_names_subscribe;
        if subscribe.iter().any(|name| name == "*") {
            watch.wildcard = true;
            subscribe.retain(|name| name != "*");
        }
        if watch.names.is_empty() && newly_named.is_empty() {
            // A first subscription (a sidecar's thousands of EDS names): built in bulk (sorted
            // once, in one pass for the sorted lists Envoy sends), not searched name by name.
            let names: BTreeSet<String> = subscribe.into_iter().collect();
            newly_named = names.clone();
            watch.names = Arc::new(names);
        } else {
            for name in subscribe {
                if !watch.names.contains(&name) && Arc::make_mut(&mut watch.names).insert(name.clone()) {
                    newly_named.insert(name);
                }
            }
        }
        for name in request.resource_names_unsubscribe {
            narrowed = true;
            if name == "*" {
                watch.wildcard = false;
            } else {
                if watch.names.contains(&name) {
                    Arc::make_mut(&mut watch.names).remove(&name);
                }
                newly_named.remove(&name);
            }
        }
        // The client dropped whatever left its scope; it holds none of it any more.
        if narrowed && !watch.wildcard && watch.sent.keys().any(|name| !watch.names.contains(name)) {
            let names = watch.names.clone();
            Arc::make_mut(&mut watch.sent).retain(|name, _| names.contains(name));
        }
        // Only names from `initial_resource_versions` or unsubscribed ones can be out of scope.
        if initial_versions || unsubscribed {
            newly_named.retain(|name| watch.in_scope(name));
        }
        newly_named
    }

    /// Moves the stream to the latest generation and sends what changed, in push order.
    async fn push(&mut self) -> Result<(), Closed> {
        let before = self.core.served().cloned();
        let Some(resources) = self.core.advance().await else { return Ok(()) };
        // Envoy re-warms an updated cluster and needs its endpoints again even if unchanged.
        let mut changed_clusters = BTreeSet::new();
        for kind in Kind::PUSH_ORDER {
            let force = if kind == Kind::Endpoint { &changed_clusters } else { &BTreeSet::new() };
            // Every watch was last diffed against `before`: a kind served from the same sets
            // has nothing to send (an endpoint change leaves every other kind so, and walking
            // a proxy's thousands of clusters to find that out was most of its diffs).
            if force.is_empty() && before.as_ref().is_some_and(|b| b.same_source(&resources, kind)) {
                continue;
            }
            let planned = {
                let mut watches = self.core.connection().watches();
                let Some(watch) = watches.get_mut(&kind) else { continue };
                let diff = diff(kind, watch, &resources, &BTreeSet::new(), force);
                self.intern(watch);
                if kind == Kind::Cluster {
                    changed_clusters.extend(diff.resources.iter().map(|r| r.name.clone()));
                }
                diff
            };
            if !planned.is_empty() {
                self.send(kind, &resources, planned).await?;
            }
        }
        self.core.shared.metrics.converged(resources.generation.changed_at.elapsed());
        Ok(())
    }

    /// Shares the watch's maps with other streams holding the same ones (see
    /// [`Interner`](super::connection::Interner)).
    fn intern(&self, watch: &mut WatchState) {
        let interner = &self.core.shared.interner;
        watch.sent = interner.sent(std::mem::take(&mut watch.sent));
        watch.names = interner.names(std::mem::take(&mut watch.names));
    }

    /// Sends `diff` in responses of at most [`CHUNK_BYTES`] of resources each (one response
    /// when it fits), so a stream's send buffer — which keeps the capacity of the largest
    /// message it ever encoded — stays small even for a first config of many megabytes. The
    /// chunks of one send share a nonce prefix (`<nonce>/<i>`); their ACKs but the last are not
    /// stale, just early.
    async fn send(&self, kind: Kind, resources: &ProxyResources, diff: Diff) -> Result<(), Closed> {
        let started = Instant::now();
        let base = self.core.shared.nonce();
        let version_info = resources.generation.version_info.clone();
        let size: usize = diff.resources.iter().map(|r| r.value.len()).sum();
        let mut chunks: Vec<Vec<Arc<EncodedResource>>> = vec![Vec::new()];
        let mut chunk_bytes = 0;
        for r in diff.resources {
            let len = r.value.len();
            if chunk_bytes + len > CHUNK_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
                chunks.push(Vec::new());
                chunk_bytes = 0;
            }
            chunk_bytes += len;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(r);
            }
        }
        let count = chunks.len();
        let nonce_of = |i: usize| if count == 1 { base.clone() } else { format!("{base}/{}", i + 1) };
        {
            let mut watches = self.core.connection().watches();
            if let Some(watch) = watches.get_mut(&kind) {
                watch.nonce_sent = nonce_of(count - 1);
                watch.version_sent = version_info.clone();
            }
        }
        let mut removed = Some(diff.removed);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let last = i + 1 == count;
            // The shared encodings themselves: the body writes them out (see `wire`).
            let response = DeltaResponse {
                system_version_info: version_info.clone(),
                resources: chunk,
                type_url: kind.type_url(),
                removed_resources: if last { removed.take().unwrap_or_default() } else { Vec::new() },
                nonce: nonce_of(i),
            };
            self.responses.send(Ok(Box::new(response))).await.map_err(|_| Closed)?;
        }
        self.core.shared.metrics.pushed(kind, size, started.elapsed());
        Ok(())
    }
}

/// Resource bytes per delta response before the rest goes into another response.
const CHUNK_BYTES: usize = 1 << 20;

/// Whether `nonce` is an earlier chunk of the send whose last chunk is `sent`.
fn earlier_chunk(nonce: &str, sent: &str) -> bool {
    match (nonce.rsplit_once('/'), sent.rsplit_once('/')) {
        (Some((a, _)), Some((b, _))) => a == b && nonce != sent,
        _ => false,
    }
}

/// [`diff`] restricted to `names` (newly subscribed): each is sent if the client lacks it, or
/// reported removed if it does not exist.
fn diff_named(kind: Kind, watch: &mut WatchState, resources: &ProxyResources, names: &BTreeSet<String>) -> Diff {
    let found = resources.named(kind, names);
    let removed: Vec<String> = if found.len() == names.len() {
        Vec::new()
    } else {
        names.iter().filter(|name| resources.get(kind, name).is_none()).cloned().collect()
    };
    let flags = super::sotw::changed_flags(&found, &watch.sent);
    let changed: Vec<_> = found.into_iter().zip(flags).filter(|(_, c)| *c).map(|(r, _)| r).collect();
    // A first subscription to everything of the kind (a sidecar asking for all its clusters'
    // endpoints): the client ends up holding the whole shared map, so record that one instead
    // of building a private copy of it.
    // (Only from an empty start: entries the client already holds may be a generation behind.)
    // Nothing to record (a plain ACK names nothing): the sent map stays as it is. Making it
    // mutable would copy it (thousands of names) whenever it is shared, on every ACK.
    if changed.is_empty() && removed.is_empty() {
        return Diff { resources: changed, removed };
    }
    let holds_whole = watch.sent.is_empty() && resources.whole_len(kind) == Some(changed.len());
    match resources.whole_sent_map(kind).filter(|_| holds_whole) {
        Some(shared) => watch.sent = shared,
        None => {
            let sent = Arc::make_mut(&mut watch.sent);
            for name in &removed {
                sent.remove(name);
            }
            for resource in &changed {
                sent.insert(resource.name.clone(), resource.hash);
            }
            // The last of several subscriptions completed the whole map (one walk, only when
            // the sizes match): share it instead of keeping a private copy per stream.
            if let Some(whole) = resources.whole_sent_map(kind)
                && whole.len() == watch.sent.len()
                && *whole == *watch.sent
            {
                watch.sent = whole;
            }
        }
    }
    Diff { resources: changed, removed }
}

/// The resources the client lacks and the names it must drop, recording both as sent.
/// `report_missing`: names whose absence must be reported even though the client does not
/// hold them (new subscriptions). `force`: names to resend even if unchanged.
fn diff(
    kind: Kind,
    watch: &mut WatchState,
    resources: &ProxyResources,
    report_missing: &BTreeSet<String>,
    force: &BTreeSet<String>,
) -> Diff {
    // The client holds the very map of every resource of the kind, and it is still current.
    if force.is_empty()
        && report_missing.is_empty()
        && resources.whole_sent_map(kind).is_some_and(|whole| Arc::ptr_eq(&whole, &watch.sent))
    {
        return Diff { resources: Vec::new(), removed: Vec::new() };
    }
    // It held the whole previous table and only contents changed: it now holds the whole
    // current one.
    if force.is_empty()
        && report_missing.is_empty()
        && (watch.wildcard || watch.names.len() == watch.sent.len())
        && let Some(changed) = resources.changed_since(kind, &watch.sent)
        && let Some(whole) = resources.whole_sent_map(kind)
    {
        let changed = changed.to_vec();
        watch.sent = whole;
        return Diff { resources: changed, removed: Vec::new() };
    }
    let current = scope(kind, watch, resources);
    if watch.sent.is_empty() && resources.has_all(kind, report_missing.iter()) {
        // The client holds nothing and everything in scope exists: send it all, and record
        // it with the shared map when there is one rather than building one per stream.
        if let Some(shared) = resources.sent_map(kind, &current) {
            watch.sent = shared;
            return Diff { resources: current, removed: Vec::new() };
        }
    }
    let mut removed: BTreeSet<String> = if resources.has_all(kind, watch.sent.keys()) {
        BTreeSet::new()
    } else {
        watch.sent.keys().filter(|name| resources.get(kind, name).is_none()).cloned().collect()
    };
    removed.extend(report_missing.iter().filter(|name| resources.get(kind, name).is_none()).cloned());
    for name in &removed {
        Arc::make_mut(&mut watch.sent).remove(name);
    }
    let flags = super::sotw::changed_flags(&current, &watch.sent);
    let whole = current.len();
    let changed: Vec<_> = current
        .into_iter()
        .zip(flags)
        .filter(|(r, changed)| *changed || force.contains(&r.name))
        .map(|(r, _)| r)
        .collect();
    // Everything in scope is every resource of the kind: after this send the client holds the
    // whole shared map (no private copy to build). Otherwise record the changes one by one.
    match resources.whole_len(kind).filter(|len| *len == whole).and_then(|_| resources.whole_sent_map(kind)) {
        Some(shared) => watch.sent = shared,
        None => {
            for resource in &changed {
                Arc::make_mut(&mut watch.sent).insert(resource.name.clone(), resource.hash);
            }
        }
    }
    Diff { resources: changed, removed: removed.into_iter().collect() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
    use tokio::sync::mpsc;

    use super::*;
    use crate::model::Snapshot;
    use crate::server::{DiscoveryServer, FixedGenerator, ServerOptions};
    use crate::translate::Resources;

    const CLUSTERS: usize = 40;

    fn request(kind: Kind, subscribe: &[String], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names_subscribe: subscribe.to_vec(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    /// Subscribes to every endpoint assignment in two steps, as a sidecar does while CDS chunks
    /// arrive, ACKing each answer.
    async fn join(address: std::net::SocketAddr, names: &[String]) -> mpsc::Sender<DeltaDiscoveryRequest> {
        let (tx, rx) = mpsc::channel(8);
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{address}")).await.unwrap();
        let node = Node { id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(), ..Default::default() };
        tx.send(DeltaDiscoveryRequest { node: Some(node), ..request(Kind::Cluster, &[], "") }).await.unwrap();
        let mut responses = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut next = async || -> DeltaDiscoveryResponse {
            tokio::time::timeout(Duration::from_secs(10), responses.message()).await.unwrap().unwrap().unwrap()
        };
        let cds = next().await;
        tx.send(request(Kind::Cluster, &[], &cds.nonce)).await.unwrap();
        let (first, second) = names.split_at(names.len() / 2);
        for part in [first, second] {
            tx.send(request(Kind::Endpoint, part, "")).await.unwrap();
            let eds = next().await;
            assert_eq!(eds.resources.len(), part.len());
            tx.send(request(Kind::Endpoint, &[], &eds.nonce)).await.unwrap();
        }
        // Keeps the stream open (and the last ACK on its way) until the caller drops it.
        tx
    }

    /// Two sidecars that subscribed to the same assignments, step by step, share one names map
    /// and one sent map.
    #[tokio::test]
    async fn streams_that_settle_on_the_same_subscription_share_its_maps() {
        let names: Vec<String> =
            (0..CLUSTERS).map(|i| format!("outbound|80||svc-{i:02}.ns.svc.cluster.local")).collect();
        let clusters = names.iter().map(|name| Cluster { name: name.clone(), ..Default::default() }).collect();
        let assignments = names
            .iter()
            .map(|name| ClusterLoadAssignment { cluster_name: name.clone(), ..Default::default() })
            .collect();
        let generator = Arc::new(FixedGenerator::new(Resources { clusters, ..Default::default() }, assignments));
        let (_snapshots, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
        let server = DiscoveryServer::with_generator(rx, ServerOptions::default(), generator);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(listener, async { stopped.await.unwrap_or(()) }).await });

        let _one = join(address, &names).await;
        let _two = join(address, &names).await;
        // The last requests are read by the streams' tasks: wait until both have interned.
        let shared = || {
            let connections = server.shared.connections();
            let watches: Vec<_> =
                connections.iter().filter_map(|c| c.watches().get(&Kind::Endpoint).cloned()).collect();
            watches.len() == 2
                && watches.iter().all(|w| w.names.len() == CLUSTERS && w.sent.len() == CLUSTERS)
                && Arc::ptr_eq(&watches[0].names, &watches[1].names)
                && Arc::ptr_eq(&watches[0].sent, &watches[1].sent)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !shared() {
            assert!(tokio::time::Instant::now() < deadline, "the two streams' maps were not shared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
    }
}
