//! The I/O shell of the Kubernetes source: one reflector per kind, a snapshot built once every
//! store has listed, and a fresh snapshot after every later change (changes arriving within a
//! few milliseconds of each other are built once).
//!
//! Istio kinds are watched untyped (`DynamicObject`) and decoded one by one, so an object that
//! does not fit its schema is skipped with a warning instead of failing the whole list (a typed
//! watcher would stall on it). Decoding and validation are remembered per resourceVersion, so
//! each bad object is reported once, not at every rebuild.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use rudder_config::Validate;
use rudder_config::extensions::WasmPlugin;
use rudder_config::mesh::MeshConfig;
use rudder_config::networking::{
    DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use rudder_config::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use rudder_config::telemetry::Telemetry;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::snapshot::{KubeInputs, SnapshotCache, build_snapshot_cached, passes};
use crate::model::Snapshot;
use crate::registry::secret;

/// How long to keep gathering events after the first one before rebuilding.
const COALESCE: Duration = Duration::from_millis(10);

/// One watcher event, reduced to what the loop needs: which source, and whether it finished a
/// (re)list.
struct Signal {
    source: usize,
    kind: &'static str,
    outcome: Result<bool, watcher::Error>,
}

/// Feeds `events` into `writer`'s store and reports each event as a [`Signal`].
fn reflect<K>(
    source: usize,
    kind: &'static str,
    writer: Writer<K>,
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
) -> BoxStream<'static, Signal>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    reflector::reflector(writer, events)
        .map(move |event| Signal { source, kind, outcome: event.map(|e| matches!(e, Event::InitDone)) })
        .boxed()
}

/// Every watched kind: the stores the snapshot is built from, and their event streams.
struct Sources {
    streams: SelectAll<BoxStream<'static, Signal>>,
    count: usize,
    services: Store<KubeService>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    nodes: Store<PartialObjectMeta<Node>>,
    virtual_services: Decoded<VirtualService>,
    destination_rules: Decoded<DestinationRule>,
    gateways: Decoded<Gateway>,
    sidecars: Decoded<Sidecar>,
    peer_authentications: Decoded<PeerAuthentication>,
    authorization_policies: Decoded<AuthorizationPolicy>,
    request_authentications: Decoded<RequestAuthentication>,
    telemetries: Decoded<Telemetry>,
    wasm_plugins: Decoded<WasmPlugin>,
    envoy_filters: Decoded<EnvoyFilter>,
    service_entries: Decoded<ServiceEntry>,
    workload_entries: Decoded<WorkloadEntry>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
}

impl Sources {
    fn start(client: &Client) -> Self {
        let mut streams = SelectAll::new();
        let config = watcher::Config::default;

        let (services, writer) = reflector::store();
        let events = watcher(Api::<KubeService>::all(client.clone()), config()).modify(strip_managed_fields);
        streams.push(reflect(streams.len(), "Service", writer, events.backoff(super::reconnect_backoff())));

        let (endpoint_slices, writer) = reflector::store();
        let events = watcher(Api::<EndpointSlice>::all(client.clone()), config()).modify(strip_managed_fields);
        streams.push(reflect(streams.len(), "EndpointSlice", writer, events.backoff(super::reconnect_backoff())));

        let (pods, writer) = reflector::store();
        let events = watcher(Api::<Pod>::all(client.clone()), config()).modify(strip_managed_fields);
        streams.push(reflect(streams.len(), "Pod", writer, events.backoff(super::reconnect_backoff())));

        // Only labels are read from namespaces and nodes: metadata-only watches are enough.
        let (namespaces, writer) = reflector::store();
        let events = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), config());
        streams.push(reflect(streams.len(), "Namespace", writer, events.backoff(super::reconnect_backoff())));

        let (nodes, writer) = reflector::store();
        let events = watcher(Api::<PartialObjectMeta<Node>>::all(client.clone()), config());
        streams.push(reflect(streams.len(), "Node", writer, events.backoff(super::reconnect_backoff())));

        let virtual_services = Decoded::start("VirtualService", client, &mut streams);
        let destination_rules = Decoded::start("DestinationRule", client, &mut streams);
        let gateways = Decoded::start("Gateway", client, &mut streams);
        let sidecars = Decoded::start("Sidecar", client, &mut streams);
        let peer_authentications = Decoded::start("PeerAuthentication", client, &mut streams);
        let authorization_policies = Decoded::start("AuthorizationPolicy", client, &mut streams);
        let request_authentications = Decoded::start("RequestAuthentication", client, &mut streams);
        let telemetries = Decoded::start("Telemetry", client, &mut streams);
        let wasm_plugins = Decoded::start("WasmPlugin", client, &mut streams);
        let envoy_filters = Decoded::start("EnvoyFilter", client, &mut streams);
        let service_entries = Decoded::start("ServiceEntry", client, &mut streams);
        let workload_entries = Decoded::start("WorkloadEntry", client, &mut streams);

        // Gateway credentials. Service-account tokens and Helm releases are never credentials
        // and are often most of a cluster's Secrets, so the API server leaves them out.
        let (secrets, writer) = reflector::store();
        let secret_config = config().fields("type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1");
        let events = watcher(Api::<Secret>::all(client.clone()), secret_config).modify(secret::strip_unread_metadata);
        streams.push(reflect(streams.len(), "Secret", writer, events.backoff(super::reconnect_backoff())));

        // Client CAs of gateways (`ca.crt`). Every other key is dropped as it arrives, so the
        // cluster's other ConfigMaps cost only their metadata.
        let (config_maps, writer) = reflector::store();
        let events = watcher(Api::<ConfigMap>::all(client.clone()), config()).modify(secret::keep_ca_keys);
        streams.push(reflect(streams.len(), "ConfigMap", writer, events.backoff(super::reconnect_backoff())));

        let count = streams.len();
        Self {
            streams,
            count,
            services,
            endpoint_slices,
            pods,
            namespaces,
            nodes,
            virtual_services,
            destination_rules,
            gateways,
            sidecars,
            peer_authentications,
            authorization_policies,
            request_authentications,
            telemetries,
            wasm_plugins,
            envoy_filters,
            service_entries,
            workload_entries,
            secrets,
            config_maps,
        }
    }

    /// The stores' contents now, Istio kinds decoded and validated.
    fn inputs(&mut self) -> KubeInputs {
        KubeInputs {
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            nodes: self.nodes.state(),
            virtual_services: self.virtual_services.current(),
            destination_rules: self.destination_rules.current(),
            gateways: self.gateways.current(),
            sidecars: self.sidecars.current(),
            peer_authentications: self.peer_authentications.current(),
            authorization_policies: self.authorization_policies.current(),
            request_authentications: self.request_authentications.current(),
            telemetries: self.telemetries.current(),
            wasm_plugins: self.wasm_plugins.current(),
            envoy_filters: self.envoy_filters.current(),
            service_entries: self.service_entries.current(),
            workload_entries: self.workload_entries.current(),
            secrets: self.secrets.state(),
            config_maps: self.config_maps.state(),
        }
    }
}

fn watcher<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
}

/// Managed fields are never read and are often the larger part of an object.
fn strip_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The typed objects of one Istio kind, decoded from its untyped store. Remembers each object's
/// outcome by resourceVersion so unchanged objects are neither decoded nor reported again.
struct Decoded<T> {
    kind: &'static str,
    store: Store<DynamicObject>,
    /// By (namespace, name).
    cache: BTreeMap<(String, String), Outcome<T>>,
}

/// What became of one version of an object.
struct Outcome<T> {
    resource_version: Option<String>,
    /// The object, if it decoded and validated.
    object: Option<Arc<T>>,
}

impl<T: DeserializeOwned + Validate + Resource> Decoded<T> {
    /// Starts the untyped watch of `T`'s resource, adding its events to `streams`.
    fn start(kind: &'static str, client: &Client, streams: &mut SelectAll<BoxStream<'static, Signal>>) -> Self
    where
        T: Resource<DynamicType = ()>,
    {
        let resource = ApiResource::erase::<T>(&());
        let writer = Writer::new(resource.clone());
        let store = writer.as_reader();
        let events = watcher(Api::<DynamicObject>::all_with(client.clone(), &resource), watcher::Config::default());
        streams.push(reflect(
            streams.len(),
            kind,
            writer,
            events.modify(strip_managed_fields).backoff(super::reconnect_backoff()),
        ));
        Self { kind, store, cache: BTreeMap::new() }
    }

    fn current(&mut self) -> Vec<Arc<T>> {
        let mut next = BTreeMap::new();
        for object in self.store.state() {
            let meta = &object.metadata;
            let key = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
            let resource_version = meta.resource_version.clone();
            let outcome = match self.cache.remove(&key) {
                Some(seen) if resource_version.is_some() && seen.resource_version == resource_version => seen,
                seen => {
                    // A version that does not decode or validate leaves the last good one in
                    // force: a bad edit must not take working config down with it.
                    let last_good = seen.and_then(|s| s.object);
                    let object = match (decode(self.kind, &object), last_good) {
                        (Some(new), _) => Some(new),
                        (None, Some(last_good)) => {
                            tracing::warn!(
                                kind = self.kind,
                                namespace = %key.0,
                                name = %key.1,
                                "keeping the last good version of the object in force"
                            );
                            Some(last_good)
                        }
                        (None, None) => None,
                    };
                    Outcome { object, resource_version }
                }
            };
            next.insert(key, outcome);
        }
        self.cache = next;
        self.cache.values().filter_map(|outcome| outcome.object.clone()).collect()
    }
}

/// The typed form of `object` when it decodes and validates; otherwise a warning naming the
/// object and the field, and `None`.
fn decode<T: DeserializeOwned + Validate + Resource>(kind: &str, object: &DynamicObject) -> Option<Arc<T>> {
    // The error names the field (`spec.http: invalid type …`), not only what went wrong.
    let typed = serde_json::to_value(object)
        .map_err(|e| e.to_string())
        .and_then(|value| serde_path_to_error::deserialize::<_, T>(value).map_err(|e| e.to_string()));
    match typed {
        Ok(typed) => passes(kind, &typed).then(|| Arc::new(typed)),
        Err(error) => {
            tracing::warn!(
                kind,
                namespace = object.metadata.namespace.as_deref().unwrap_or_default(),
                name = object.metadata.name.as_deref().unwrap_or_default(),
                %error,
                "config object does not decode; ignored"
            );
            None
        }
    }
}

/// Watches Services, EndpointSlices, Pods, Namespaces, Nodes and the Istio kinds translation
/// reads (VirtualService, DestinationRule, Gateway, Sidecar, ServiceEntry, WorkloadEntry) in all
/// namespaces, and sends a snapshot on `tx` once every kind has listed, then after each change,
/// until `shutdown` completes. Watch errors are logged and retried with backoff; a kind that never
/// lists (its CRD missing, say) holds back the first snapshot. MeshConfig `discoverySelectors` are
/// not applied: every namespace is discovered.
pub async fn run(
    client: Client,
    mesh: MeshConfig,
    tx: watch::Sender<Arc<Snapshot>>,
    shutdown: impl Future<Output = ()>,
) {
    let (_fixed, mesh) = watch::channel(mesh);
    run_with_mesh(client, mesh, tx, shutdown).await;
}

/// [`run`], with the mesh config followed from `mesh` (the revision's `istio` ConfigMap in a
/// cluster): a change rebuilds the snapshot like a change of any watched object.
pub async fn run_with_mesh(
    client: Client,
    mut mesh: watch::Receiver<MeshConfig>,
    tx: watch::Sender<Arc<Snapshot>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut sources = Sources::start(&client);
    let mut synced = vec![false; sources.count];
    let mut mesh_open = true;
    let mut announced = false;
    let mut cache = SnapshotCache::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            signal = sources.streams.next() => match signal {
                Some(signal) => note(&mut synced, signal),
                None => return,
            },
            // Once the sender is gone the last mesh config stays in force.
            changed = mesh.changed(), if mesh_open => mesh_open = changed.is_ok(),
        }
        let batch = tokio::time::sleep(COALESCE);
        tokio::pin!(batch);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = &mut batch => break,
                signal = sources.streams.next() => match signal {
                    Some(signal) => note(&mut synced, signal),
                    None => break,
                },
            }
        }
        if !synced.iter().all(|s| *s) {
            continue;
        }
        if !announced {
            tracing::info!("kubernetes registry synced");
            announced = true;
        }
        let current = mesh.borrow_and_update().clone();
        let snapshot = build_snapshot_cached(&sources.inputs(), &current, &mut cache);
        tx.send_replace(Arc::new(snapshot));
    }
}

fn note(synced: &mut [bool], signal: Signal) {
    match signal.outcome {
        Ok(true) => {
            if let Some(done) = synced.get_mut(signal.source) {
                *done = true;
            }
        }
        Ok(false) => {}
        Err(error) => tracing::warn!(kind = signal.kind, %error, "watch failed; retrying"),
    }
}
