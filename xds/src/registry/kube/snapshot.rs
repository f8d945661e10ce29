//! The Kubernetes source's stores, merged into one [`Snapshot`]. Pure: equal inputs give an
//! equal snapshot, whatever order the stores listed their objects in.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PartialObjectMeta;
use rudder_config::Validate;
use rudder_config::extensions::WasmPlugin;
use rudder_config::mesh::MeshConfig;
use rudder_config::networking::{
    DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use rudder_config::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use rudder_config::telemetry::Telemetry;

use super::convert::{self, Workloads};
use crate::model::{Endpoint, Service, Snapshot};
use crate::registry::secret;
use crate::registry::service_entry::{EntryCache, sort_endpoints};

/// What the reflectors hold at one instant, Istio kinds already decoded.
#[derive(Clone, Debug, Default)]
pub struct KubeInputs {
    pub services: Vec<Arc<KubeService>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    /// Watched so namespace-scoped discovery can follow; `discoverySelectors` are not applied
    /// yet, so every namespace is discovered.
    pub namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    /// Node labels give endpoints their region and subzone.
    pub nodes: Vec<Arc<PartialObjectMeta<Node>>>,
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub sidecars: Vec<Arc<Sidecar>>,
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    pub request_authentications: Vec<Arc<RequestAuthentication>>,
    pub telemetries: Vec<Arc<Telemetry>>,
    pub wasm_plugins: Vec<Arc<WasmPlugin>>,
    pub envoy_filters: Vec<Arc<EnvoyFilter>>,
    pub service_entries: Vec<Arc<ServiceEntry>>,
    pub workload_entries: Vec<Arc<WorkloadEntry>>,
    /// TLS Secrets (gateway `credentialName`s).
    pub secrets: Vec<Arc<Secret>>,
    /// ConfigMaps that may hold a gateway's client CA (`ca.crt`); the others are skipped.
    pub config_maps: Vec<Arc<ConfigMap>>,
}

/// Merges the stores into a snapshot. Services are keyed by hostname; when two declare the same
/// hostname the first by (namespace, name) wins and the others are dropped with a warning.
/// Istio objects are sorted by namespace and name. They must be valid already: each source
/// validates an object once, when it arrives or changes (the Kubernetes watch as it decodes, the
/// config directory as it reads a file), not at every rebuild.
pub fn build_snapshot(inputs: &KubeInputs, mesh: &MeshConfig) -> Snapshot {
    build_snapshot_cached(inputs, mesh, &mut SnapshotCache::default())
}

/// What a source keeps between its builds so that a rebuild after a change converts only the
/// objects that changed (today: ServiceEntries and the WorkloadEntries they select).
#[derive(Debug, Default)]
pub struct SnapshotCache {
    entries: EntryCache,
    service_entries: SortMemo<ServiceEntry>,
    workload_entries: SortMemo<WorkloadEntry>,
    virtual_services: SortMemo<VirtualService>,
    destination_rules: SortMemo<DestinationRule>,
}

/// The last sort of one kind's objects: what it was given and the order it found. A change
/// replaces a few objects in place (a file read again gives new objects with the same names),
/// which leaves the order as it was, so sorting again (10,000 WorkloadEntries by namespace and
/// name, at every endpoint change) is replaced by a walk that checks the names are where they
/// were.
#[derive(Debug)]
struct SortMemo<T> {
    input: Vec<Arc<T>>,
    /// Positions in `input`, in sorted order.
    order: Vec<usize>,
}

impl<T> Default for SortMemo<T> {
    fn default() -> Self {
        Self { input: Vec::new(), order: Vec::new() }
    }
}

impl<T: kube::Resource> SortMemo<T> {
    /// `objects` sorted by namespace and name, as [`sorted`] sorts them.
    fn sorted(&mut self, objects: &[Arc<T>]) -> Vec<Arc<T>> {
        fn key<T: kube::Resource>(o: &Arc<T>) -> (Option<&str>, Option<&str>) {
            (o.meta().namespace.as_deref(), o.meta().name.as_deref())
        }
        let same_order = self.input.len() == objects.len()
            && self.input.iter().zip(objects).all(|(a, b)| Arc::ptr_eq(a, b) || key(a) == key(b));
        if !same_order {
            let mut order: Vec<usize> = (0..objects.len()).collect();
            // Stable, like `sorted`: objects with equal names keep their input order.
            order.sort_by(|&a, &b| key(&objects[a]).cmp(&key(&objects[b])));
            self.order = order;
        }
        self.input = objects.to_vec();
        self.order.iter().map(|&i| objects[i].clone()).collect()
    }
}

/// [`build_snapshot`], reusing from `cache` the conversions of objects that did not change
/// since the previous call: their services and endpoint lists keep their `Arc`s.
pub fn build_snapshot_cached(inputs: &KubeInputs, mesh: &MeshConfig, cache: &mut SnapshotCache) -> Snapshot {
    let service_entries_valid = cache.service_entries.sorted(&inputs.service_entries);
    let workload_entries_valid = cache.workload_entries.sorted(&inputs.workload_entries);

    let workloads = Workloads::new(
        inputs.pods.iter().map(|p| p.as_ref()),
        inputs.nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?))),
    );

    // Every declared service with its own endpoints (`None`: the pool of the ServiceEntries
    // declaring its host), before duplicate hostnames are settled.
    let mut candidates: Vec<(Arc<Service>, Option<Vec<Endpoint>>)> = Vec::new();

    let slices = convert::slices_by_service(inputs.endpoint_slices.iter().map(|s| s.as_ref()));
    for kube_service in &inputs.services {
        let Some(service) = convert::service(kube_service) else { continue };
        let endpoints = match convert::external_name(kube_service) {
            Some(name) => convert::external_name_endpoints(&service, name),
            None => {
                let publish_not_ready =
                    kube_service.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
                let own = slices.get(&(service.namespace.as_str(), service.name.as_str()));
                convert::slice_endpoints(
                    &service,
                    publish_not_ready,
                    own.map(Vec::as_slice).unwrap_or_default(),
                    &workloads,
                )
            }
        };
        candidates.push((Arc::new(service), Some(endpoints)));
    }

    // Entries sharing a host pool their endpoints under it; only the winner below gets them.
    let converted = cache.entries.convert(&service_entries_valid, &workload_entries_valid);
    let mut pools: BTreeMap<String, Vec<Arc<Vec<Endpoint>>>> = BTreeMap::new();
    for entry in &converted {
        for (host, list) in &entry.endpoints {
            pools.entry(host.clone()).or_default().push(list.clone());
        }
    }
    for entry in &service_entries_valid {
        for (host, mut pod_endpoints) in convert::selected_pod_endpoints(entry, &workloads) {
            if !pod_endpoints.is_empty() {
                sort_endpoints(&mut pod_endpoints);
                pools.entry(host).or_default().push(Arc::new(pod_endpoints));
            }
        }
    }
    for entry in &converted {
        candidates.extend(entry.services.iter().map(|service| (service.clone(), None)));
    }

    candidates
        .sort_by(|(a, _), (b, _)| (&a.hostname, &a.namespace, &a.name).cmp(&(&b.hostname, &b.namespace, &b.name)));
    let mut services: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, Arc<Vec<Endpoint>>> = BTreeMap::new();
    for (service, own) in candidates {
        if let Some(winner) = services.get(&service.hostname) {
            // The same ServiceEntry declaring a host twice is not a conflict worth a warning.
            if (winner.namespace.as_str(), winner.name.as_str()) != (service.namespace.as_str(), service.name.as_str())
            {
                tracing::warn!(
                    hostname = %service.hostname,
                    kept = %format!("{}/{}", winner.namespace, winner.name),
                    dropped = %format!("{}/{}", service.namespace, service.name),
                    "duplicate service hostname; keeping the first by namespace/name"
                );
            }
            continue;
        }
        let list = match own {
            Some(list) => (!list.is_empty()).then(|| Arc::new(list)),
            None => pools.remove(&service.hostname).and_then(merge_pool),
        };
        if let Some(list) = list {
            endpoints.insert(service.hostname.clone(), list);
        }
        services.insert(service.hostname.clone(), service);
    }

    Snapshot {
        loading: false,
        mesh: mesh.clone(),
        services,
        endpoints,
        virtual_services: cache.virtual_services.sorted(&inputs.virtual_services),
        destination_rules: cache.destination_rules.sorted(&inputs.destination_rules),
        sidecars: sorted(&inputs.sidecars),
        peer_authentications: sorted(&inputs.peer_authentications),
        authorization_policies: sorted(&inputs.authorization_policies),
        request_authentications: sorted(&inputs.request_authentications),
        telemetries: sorted(&inputs.telemetries),
        jwks: BTreeMap::new(),
        wasm_plugins: sorted(&inputs.wasm_plugins),
        wasm_modules: BTreeMap::new(),
        gateways: sorted(&inputs.gateways),
        envoy_filters: sorted(&inputs.envoy_filters),
        secrets: {
            let mut credentials = secret::credentials(inputs.secrets.iter().map(|s| s.as_ref()));
            credentials.extend(secret::config_map_cas(inputs.config_maps.iter().map(|c| c.as_ref())));
            credentials
        },
        pod_localities: Arc::new(workloads.localities_by_ip()),
        by_address: Default::default(),
    }
}

/// One host's endpoints from every entry declaring it: a single list is shared as it is (each
/// is sorted already), several are merged and sorted.
fn merge_pool(mut pool: Vec<Arc<Vec<Endpoint>>>) -> Option<Arc<Vec<Endpoint>>> {
    if pool.len() <= 1 {
        return pool.pop();
    }
    let mut all: Vec<Endpoint> = pool.iter().flat_map(|list| list.iter().cloned()).collect();
    sort_endpoints(&mut all);
    Some(Arc::new(all))
}

/// The objects sorted by namespace/name.
fn sorted<T: kube::Resource>(objects: &[Arc<T>]) -> Vec<Arc<T>> {
    let mut kept = objects.to_vec();
    kept.sort_by(|a, b| (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name)));
    kept
}

/// Whether `object` validates; logs why not.
pub(crate) fn passes<T: Validate + kube::Resource>(kind: &str, object: &T) -> bool {
    let report = object.report();
    let Some(first) = report.errors().next() else { return true };
    let meta = object.meta();
    tracing::warn!(
        kind,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
        error = %first,
        "invalid config ignored"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Resolution};
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    fn arc<T: DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    /// The remembered order gives what a fresh sort gives, through replacements in place,
    /// renames, removals and equal names (which keep their input order).
    #[test]
    fn remembered_order_equals_a_fresh_sort() {
        let vs = |ns: &str, name: &str, host: &str| -> Arc<VirtualService> {
            arc(istio("VirtualService", ns, name, json!({"hosts": [host]})))
        };
        let names = |list: &[Arc<VirtualService>]| -> Vec<(String, String)> {
            let spec_host = |v: &VirtualService| v.spec.hosts.first().cloned().unwrap_or_default();
            list.iter().map(|v| (v.metadata.name.clone().unwrap_or_default(), spec_host(v))).collect()
        };
        let mut memo = SortMemo::default();
        let mut input = vec![vs("b", "x", "1"), vs("a", "y", "2"), vs("a", "x", "3"), vs("a", "x", "4")];
        type Change = fn(&mut Vec<Arc<VirtualService>>);
        let steps: [(&str, Change); 4] = [
            ("first sort", |_| {}),
            ("replaced in place", |input| input[1] = Arc::new((*input[1]).clone())),
            ("renamed", |input| {
                let mut renamed = (*input[0]).clone();
                renamed.metadata.namespace = Some("0".into());
                input[0] = Arc::new(renamed);
            }),
            ("removed", |input| {
                input.remove(2);
            }),
        ];
        for (step, change) in steps {
            change(&mut input);
            let remembered = memo.sorted(&input);
            assert_eq!(names(&remembered), names(&sorted(&input)), "{step}");
            // The very objects of the input, not those of an earlier call.
            assert!(remembered.iter().all(|v| input.iter().any(|i| Arc::ptr_eq(i, v))), "{step}");
        }
    }

    fn istio(kind: &str, ns: &str, name: &str, spec: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    fn kube_svc(ns: &str, name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": ns},
               "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}})
    }

    fn inputs() -> KubeInputs {
        KubeInputs {
            services: vec![arc(kube_svc("default", "reviews")), arc(kube_svc("default", "ratings"))],
            endpoint_slices: vec![arc(json!({
                "metadata": {"name": "reviews-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "reviews"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 9080}],
                "endpoints": [{"addresses": ["10.1.0.1"]}],
            }))],
            virtual_services: vec![
                arc(istio(
                    "VirtualService",
                    "b",
                    "vs",
                    json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
                )),
                arc(istio(
                    "VirtualService",
                    "a",
                    "vs",
                    json!({"hosts": ["ratings"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]}),
                )),
            ],
            destination_rules: vec![arc(istio("DestinationRule", "default", "reviews", json!({"host": "reviews"})))],
            service_entries: vec![arc(istio(
                "ServiceEntry",
                "default",
                "ext",
                json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"}),
            ))],
            ..KubeInputs::default()
        }
    }

    #[test]
    fn merges_services_endpoints_and_config() {
        let snapshot = build_snapshot(&inputs(), &MeshConfig::default());
        let hosts: Vec<_> = snapshot.services.keys().map(String::as_str).collect();
        assert_eq!(
            hosts,
            ["api.example.com", "ratings.default.svc.cluster.local", "reviews.default.svc.cluster.local"]
        );
        let reviews = snapshot.endpoints_of("reviews.default.svc.cluster.local");
        assert_eq!(reviews.len(), 1);
        assert_eq!(
            (reviews[0].address.as_str(), reviews[0].port, reviews[0].health),
            ("10.1.0.1", 9080, Health::Healthy)
        );
        assert!(snapshot.endpoints_of("ratings.default.svc.cluster.local").is_empty());
        assert_eq!(snapshot.services["api.example.com"].resolution, Resolution::Dns);
        assert_eq!(snapshot.endpoints_of("api.example.com")[0].address, "api.example.com");
        let vs: Vec<_> = snapshot
            .virtual_services
            .iter()
            .map(|v| format!("{}/{}", v.metadata.namespace.as_deref().unwrap(), v.metadata.name.as_deref().unwrap()))
            .collect();
        assert_eq!(vs, ["a/vs", "b/vs"], "sorted");
        assert_eq!(snapshot.destination_rules.len(), 1);
    }

    #[test]
    fn same_inputs_in_any_order_give_the_same_snapshot() {
        let a = inputs();
        let mut b = inputs();
        b.services.reverse();
        b.virtual_services.reverse();
        let (sa, sb) = (build_snapshot(&a, &MeshConfig::default()), build_snapshot(&b, &MeshConfig::default()));
        assert_eq!(sa.services, sb.services);
        assert_eq!(sa.endpoints, sb.endpoints);
        let specs = |s: &Snapshot| s.virtual_services.iter().map(|v| v.spec.clone()).collect::<Vec<_>>();
        assert_eq!(specs(&sa), specs(&sb));
    }

    #[test]
    fn duplicate_hostname_first_by_namespace_name_wins() {
        let host = "reviews.default.svc.cluster.local";
        let mut i = inputs();
        // A ServiceEntry in namespace "aaa" for the Kubernetes service's hostname wins over it.
        i.service_entries.push(arc(istio(
            "ServiceEntry",
            "aaa",
            "shadow",
            json!({"hosts": [host], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC", "location": "MESH_INTERNAL",
                   "endpoints": [{"address": "10.9.9.9"}]}),
        )));
        let snapshot = build_snapshot(&i, &MeshConfig::default());
        assert_eq!(snapshot.services[host].namespace, "aaa");
        assert!(!snapshot.services[host].kubernetes);
        let addresses: Vec<_> = snapshot.endpoints_of(host).iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, ["10.9.9.9"], "only the winner's endpoints");
    }

    fn entry_with_workloads(ns: &str, name: &str, host: &str) -> (Arc<ServiceEntry>, Vec<Arc<WorkloadEntry>>) {
        let entry = arc(istio(
            "ServiceEntry",
            ns,
            name,
            json!({"hosts": [host], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC",
                   "location": "MESH_INTERNAL", "workloadSelector": {"labels": {"app": name}}}),
        ));
        let workloads = (1..=2)
            .map(|i| {
                let spec =
                    json!({"address": format!("10.2.{}.{i}", name.len()), "labels": {"app": name, "version": "v1"}});
                arc(istio("WorkloadEntry", ns, &format!("{name}-{i}"), spec))
            })
            .collect();
        (entry, workloads)
    }

    #[test]
    fn a_cached_rebuild_converts_only_changed_entries_and_equals_a_fresh_build() {
        let mut i = inputs();
        for (name, host) in [("one", "one.mesh"), ("two", "two.mesh"), ("three", "three.mesh")] {
            let (entry, workloads) = entry_with_workloads("vms", name, host);
            i.service_entries.push(entry);
            i.workload_entries.extend(workloads);
        }
        // Two entries sharing a host pool their endpoints under it.
        let (shared, workloads) = entry_with_workloads("vms", "shared", "two.mesh");
        i.service_entries.push(shared);
        i.workload_entries.extend(workloads);
        let mesh = MeshConfig::default();
        let mut cache = SnapshotCache::default();
        let first = build_snapshot_cached(&i, &mesh, &mut cache);
        assert_eq!(first.endpoints_of("two.mesh").len(), 4, "pooled");

        let again = build_snapshot_cached(&i, &mesh, &mut cache);
        for host in ["one.mesh", "two.mesh", "three.mesh", "api.example.com"] {
            assert!(Arc::ptr_eq(&first.services[host], &again.services[host]), "{host}: service reused");
        }
        assert!(Arc::ptr_eq(&first.endpoints["one.mesh"], &again.endpoints["one.mesh"]));

        // One WorkloadEntry of "one" changes (a new object, as a source delivers a change).
        let index = i.workload_entries.iter().position(|w| w.metadata.name.as_deref() == Some("one-1")).unwrap();
        let mut changed = WorkloadEntry::clone(&i.workload_entries[index]);
        changed.spec.labels.insert("version".into(), "v2".into());
        i.workload_entries[index] = Arc::new(changed);
        let after = build_snapshot_cached(&i, &mesh, &mut cache);
        assert!(!Arc::ptr_eq(&again.endpoints["one.mesh"], &after.endpoints["one.mesh"]));
        assert_eq!(after.endpoints_of("one.mesh")[0].labels["version"], "v2");
        assert!(Arc::ptr_eq(&again.endpoints["three.mesh"], &after.endpoints["three.mesh"]), "untouched entry");
        assert!(Arc::ptr_eq(&again.services["one.mesh"], &after.services["one.mesh"]), "the entry itself is the same");

        // An entry that goes away is forgotten; what remains equals a build from scratch.
        i.service_entries.retain(|e| e.metadata.name.as_deref() != Some("three"));
        let cached = build_snapshot_cached(&i, &mesh, &mut cache);
        let fresh = build_snapshot(&i, &mesh);
        assert_eq!(cached.services, fresh.services);
        assert_eq!(cached.endpoints, fresh.endpoints);
        assert!(!cached.services.contains_key("three.mesh"));
        assert_eq!(cache.entries.len(), 4, "ext, one, two, shared");
    }

    /// Random sequences of ServiceEntry and WorkloadEntry changes: a cached rebuild always
    /// equals a build from scratch.
    #[test]
    fn cached_rebuilds_equal_fresh_builds_after_random_changes() {
        use crate::testing::Rng;
        let entry = |i: u64, rng: &mut Rng| -> Arc<ServiceEntry> {
            // Hosts collide across entries (h0..h3), so pools and duplicate settling are exercised.
            let host = format!("h{}.mesh", rng.next(4));
            let spec = match rng.next(3) {
                0 => json!({"hosts": [host], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC",
                            "endpoints": [{"address": format!("10.3.0.{}", rng.next(9))}]}),
                _ => json!({"hosts": [host], "ports": [{"number": 80 + rng.next(2), "name": "http"}],
                            "resolution": "STATIC", "workloadSelector": {"labels": {"app": format!("a{}", rng.next(3))}}}),
            };
            arc(istio("ServiceEntry", "ns", &format!("se-{i}"), spec))
        };
        let workload = |i: u64, rng: &mut Rng| -> Arc<WorkloadEntry> {
            let spec = json!({"address": format!("10.4.0.{}", rng.next(20)),
                              "labels": {"app": format!("a{}", rng.next(3)), "version": format!("v{}", rng.next(2))}});
            arc(istio("WorkloadEntry", "ns", &format!("we-{i}"), spec))
        };
        let mesh = MeshConfig::default();
        for seed in 1..=30u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut inputs = KubeInputs::default();
            let mut cache = SnapshotCache::default();
            for step in 0..40 {
                let i = rng.next(6);
                match rng.next(5) {
                    0 => {
                        inputs.service_entries.retain(|e| e.metadata.name.as_deref() != Some(&format!("se-{i}")));
                        let new = entry(i, &mut rng);
                        inputs.service_entries.push(new);
                    }
                    1 => inputs.service_entries.retain(|e| e.metadata.name.as_deref() != Some(&format!("se-{i}"))),
                    2 | 3 => {
                        inputs.workload_entries.retain(|w| w.metadata.name.as_deref() != Some(&format!("we-{i}")));
                        let new = workload(i, &mut rng);
                        inputs.workload_entries.push(new);
                    }
                    _ => inputs.workload_entries.retain(|w| w.metadata.name.as_deref() != Some(&format!("we-{i}"))),
                }
                let cached = build_snapshot_cached(&inputs, &mesh, &mut cache);
                let fresh = build_snapshot(&inputs, &mesh);
                assert_eq!(cached.services, fresh.services, "seed {seed} step {step}");
                assert_eq!(cached.endpoints, fresh.endpoints, "seed {seed} step {step}");
            }
        }
    }
}
