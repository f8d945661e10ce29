//! ServiceEntry (with the WorkloadEntries it selects) → services and endpoints. Shared by every
//! registry source that carries Istio config (Kubernetes, files), so it takes typed objects and
//! returns model values, nothing else.
//!
//! One [`Service`] per host. Endpoints come from the entry's inline `endpoints`, or from the
//! WorkloadEntries in its namespace that its `workloadSelector` picks; a DNS entry with neither
//! resolves its own host name. Pods picked by a `workloadSelector` are the Kubernetes source's
//! business (it alone knows pods).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rudder_config::labels::{TLS_MODE, TLS_MODE_ISTIO};
use rudder_config::networking::service_entry::{self, Location, ServiceEntrySpec};
use rudder_config::networking::workload::WorkloadEntrySpec;
use rudder_config::networking::{ServiceEntry, WorkloadEntry};

use crate::model::{Endpoint, Health, Protocol, Resolution, Service, ServicePort, labels_match};

/// Pod/WorkloadEntry label carrying a `region.zone.subzone` locality.
pub const LOCALITY_LABEL: &str = "istio-locality";

/// Address prefix of a Unix domain socket endpoint.
const UNIX_PREFIX: &str = "unix://";

/// One ServiceEntry converted: its services (one per host, in host order) and, per host, its
/// endpoints, sorted (hosts without endpoints are left out).
#[derive(Debug, Default, PartialEq)]
pub struct EntryServices {
    pub services: Vec<Arc<Service>>,
    pub endpoints: Vec<(String, Arc<Vec<Endpoint>>)>,
}

/// The conversions of the previous build, by entry. An entry whose object and selected
/// WorkloadEntries are the very objects of last time (`Arc::ptr_eq`: sources share unchanged
/// objects between builds) is not converted again, and its services and endpoint lists keep
/// their `Arc`s, so a rebuild after one change converts one entry and a comparison with the
/// previous snapshot is a pointer check for the others.
#[derive(Debug, Default)]
pub struct EntryCache {
    entries: HashMap<(String, String), CachedEntry>,
    /// The last call's inputs and output, for [`EntryCache::convert_few`].
    last: Option<LastCall>,
}

/// One [`EntryCache::convert`] call: its inputs and its output, in input order.
#[derive(Debug)]
struct LastCall {
    entries: Vec<Arc<ServiceEntry>>,
    workloads: Vec<Arc<WorkloadEntry>>,
    conversion: Conversion,
}

/// What one call gave, in input order: each entry's conversion and the positions (in the
/// call's WorkloadEntries, ascending) of the workloads its selector picked.
#[derive(Clone, Debug, Default)]
struct Conversion {
    converted: Vec<Arc<EntryServices>>,
    selections: Vec<Vec<usize>>,
}

/// Beyond this many changed WorkloadEntries or ServiceEntries, a call converts through the
/// index of every workload rather than per change.
const FEW_WORKLOAD_CHANGES: usize = 64;

#[derive(Debug)]
struct CachedEntry {
    // Holding the objects keeps their addresses from being reused by new ones.
    entry: Arc<ServiceEntry>,
    selected: Vec<Arc<WorkloadEntry>>,
    converted: Arc<EntryServices>,
}

impl EntryCache {
    /// How many entries are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry converted, in input order. Entries are taken as given: the caller drops
    /// invalid ones and settles duplicate hostnames. Forgets entries that are gone.
    pub fn convert(
        &mut self,
        entries: &[Arc<ServiceEntry>],
        workload_entries: &[Arc<WorkloadEntry>],
    ) -> Vec<Arc<EntryServices>> {
        let conversion = match self.convert_few(entries, workload_entries) {
            Some(conversion) => conversion,
            None => self.convert_all(entries, workload_entries),
        };
        let converted = conversion.converted.clone();
        self.remember(entries, workload_entries, conversion);
        converted
    }

    fn remember(
        &mut self,
        entries: &[Arc<ServiceEntry>],
        workload_entries: &[Arc<WorkloadEntry>],
        conversion: Conversion,
    ) {
        self.last = Some(LastCall { entries: entries.to_vec(), workloads: workload_entries.to_vec(), conversion });
    }

    /// The fast path of an endpoint change: when only a few entries and WorkloadEntries differ
    /// from the last call's (by position: the same counts, other objects at a few places),
    /// only those entries and the ones whose selector picks a changed workload (before or
    /// after the change) are converted again; the others keep their conversion. Indexing
    /// every workload and visiting every entry was ~11 ms of a one-workload change on a mesh
    /// of 1,000 entries and 10,000 workloads. `None` when the change is not of that shape.
    fn convert_few(
        &mut self,
        entries: &[Arc<ServiceEntry>],
        workload_entries: &[Arc<WorkloadEntry>],
    ) -> Option<Conversion> {
        let last = self.last.as_ref()?;
        if last.entries.len() != entries.len() || last.workloads.len() != workload_entries.len() {
            return None;
        }
        // A file read again gives new objects for every entry in it, changed or not.
        let entry_changes = last.entries.iter().zip(entries).filter(|(a, b)| !Arc::ptr_eq(a, b)).count();
        if entry_changes > FEW_WORKLOAD_CHANGES {
            return None;
        }
        let mut changed_at: Vec<usize> = Vec::new();
        for (i, (before, after)) in last.workloads.iter().zip(workload_entries).enumerate() {
            if !Arc::ptr_eq(before, after) {
                if changed_at.len() >= FEW_WORKLOAD_CHANGES {
                    return None;
                }
                changed_at.push(i);
            }
        }
        let changed: Vec<&WorkloadEntry> =
            changed_at.iter().flat_map(|&i| [last.workloads[i].as_ref(), workload_entries[i].as_ref()]).collect();
        let concerns = |entry: &ServiceEntry| changed.iter().any(|we| selects(entry, we));
        let mut conversion = last.conversion.clone();
        for (i, (entry, before)) in entries.iter().zip(&last.entries).enumerate() {
            let same_entry = Arc::ptr_eq(entry, before);
            if same_entry && !concerns(entry) {
                continue;
            }
            // Workloads at unchanged positions are the very objects of the last call: with the
            // same selector, only the changed positions can enter or leave the selection.
            let positions = if same_selection_rule(entry, before) {
                let kept = conversion.selections[i].iter().copied().filter(|p| changed_at.binary_search(p).is_err());
                let entered = changed_at.iter().copied().filter(|&p| selects(entry, &workload_entries[p]));
                let mut positions: Vec<usize> = kept.chain(entered).collect();
                positions.sort_unstable();
                positions
            } else {
                (0..workload_entries.len()).filter(|&p| selects(entry, &workload_entries[p])).collect()
            };
            let selected: Vec<&Arc<WorkloadEntry>> = positions.iter().map(|&p| &workload_entries[p]).collect();
            // The same entry with other workloads keeps its services.
            let kept = same_entry.then(|| conversion.converted[i].services.clone());
            let services = Arc::new(convert_entry(entry, &refs(&selected), kept));
            let namespace = entry.metadata.namespace.as_deref().unwrap_or_default();
            let name = entry.metadata.name.as_deref().unwrap_or_default();
            Self::record(&mut self.entries, (namespace.to_owned(), name.to_owned()), entry, selected, &services);
            conversion.converted[i] = services;
            conversion.selections[i] = positions;
        }
        Some(conversion)
    }

    /// Remembers `entry`'s conversion with the workloads it selected.
    fn record(
        entries: &mut HashMap<(String, String), CachedEntry>,
        key: (String, String),
        entry: &Arc<ServiceEntry>,
        selected: Vec<&Arc<WorkloadEntry>>,
        converted: &Arc<EntryServices>,
    ) {
        let selected = selected.into_iter().cloned().collect();
        entries.insert(key, CachedEntry { entry: entry.clone(), selected, converted: converted.clone() });
    }

    /// Every entry, through an index of the workloads; entries whose object and selected
    /// workloads are those of last time keep their conversion.
    fn convert_all(&mut self, entries: &[Arc<ServiceEntry>], workload_entries: &[Arc<WorkloadEntry>]) -> Conversion {
        let workloads = WorkloadIndex::new(workload_entries);
        let mut previous = std::mem::take(&mut self.entries);
        let mut conversion = Conversion::default();
        for entry in entries {
            let namespace = entry.metadata.namespace.as_deref().unwrap_or_default();
            let name = entry.metadata.name.as_deref().unwrap_or_default();
            let positions = match &entry.spec.workload_selector {
                Some(selector) => workloads.selected(namespace, &selector.labels),
                None => Vec::new(),
            };
            let selected: Vec<&Arc<WorkloadEntry>> = positions.iter().map(|&p| &workload_entries[p]).collect();
            let key = (namespace.to_owned(), name.to_owned());
            let unchanged = |cached: &CachedEntry| {
                Arc::ptr_eq(&cached.entry, entry)
                    && cached.selected.len() == selected.len()
                    && cached.selected.iter().zip(&selected).all(|(a, b)| Arc::ptr_eq(a, b))
            };
            let services = match previous.remove(&key) {
                Some(cached) if unchanged(&cached) => cached.converted,
                cached => {
                    // The same entry with other workloads keeps its services.
                    let services =
                        cached.filter(|c| Arc::ptr_eq(&c.entry, entry)).map(|c| c.converted.services.clone());
                    Arc::new(convert_entry(entry, &refs(&selected), services))
                }
            };
            Self::record(&mut self.entries, key, entry, selected, &services);
            conversion.converted.push(services);
            conversion.selections.push(positions);
        }
        conversion
    }
}

/// Whether `entry`'s selector picks `workload` (its namespace's, with the selector's labels).
fn selects(entry: &ServiceEntry, workload: &WorkloadEntry) -> bool {
    let Some(selector) = &entry.spec.workload_selector else { return false };
    entry.metadata.namespace.as_deref().unwrap_or_default()
        == workload.metadata.namespace.as_deref().unwrap_or_default()
        && labels_match(&selector.labels, &workload.spec.labels)
}

/// Whether two entries pick the same workloads of any list (same namespace and selector).
fn same_selection_rule(a: &ServiceEntry, b: &ServiceEntry) -> bool {
    a.metadata.namespace == b.metadata.namespace && a.spec.workload_selector == b.spec.workload_selector
}

fn refs<'w>(selected: &'w [&Arc<WorkloadEntry>]) -> Vec<&'w WorkloadEntry> {
    selected.iter().map(|we| we.as_ref()).collect()
}

/// One entry's services and endpoints, `selected` being the WorkloadEntries its selector picks;
/// `services`, when given, are this entry's services from an earlier conversion.
fn convert_entry(
    entry: &ServiceEntry,
    selected: &[&WorkloadEntry],
    services: Option<Vec<Arc<Service>>>,
) -> EntryServices {
    let namespace = entry.metadata.namespace.as_deref().unwrap_or_default();
    let name = entry.metadata.name.as_deref().unwrap_or_default();
    let spec = &entry.spec;
    let mut converted = EntryServices::default();
    let reused = services.is_some();
    converted.services = services.unwrap_or_default();
    for host in &spec.hosts {
        if !reused {
            converted.services.push(Arc::new(entry_service(spec, host, namespace, name)));
        }
        let mut list = Vec::new();
        for port in &spec.ports {
            // An endpoint without an address is reached through its network's gateway, which a
            // single-network mesh does not have: it is left out rather than given to Envoy
            // empty (which would refuse the whole assignment).
            if spec.workload_selector.is_some() {
                for we in selected.iter().filter(|we| !we.spec.address.trim().is_empty()) {
                    let workload = we.metadata.name.as_deref().unwrap_or_default();
                    list.push(workload_endpoint(&we.spec, port, namespace, workload));
                }
            } else if spec.endpoints.is_empty() {
                if is_dns(spec) {
                    list.push(host_endpoint(host, port, namespace));
                }
            } else {
                for inline in spec.endpoints.iter().filter(|e| !e.address.trim().is_empty()) {
                    list.push(workload_endpoint(inline, port, namespace, ""));
                }
            }
        }
        sort_endpoints(&mut list);
        if !list.is_empty() {
            converted.endpoints.push((host.clone(), Arc::new(list)));
        }
    }
    converted
}

/// WorkloadEntries by namespace and by label, so that each entry's selector looks at the few
/// workloads carrying one of its labels instead of every workload of the mesh (a scan per entry
/// made the registry quadratic: 1,000 entries × 10,000 workloads on every rebuild).
struct WorkloadIndex<'w, W> {
    all: &'w [W],
    by_namespace: HashMap<&'w str, Vec<usize>>,
    by_label: HashMap<(&'w str, &'w str, &'w str), Vec<usize>>,
}

impl<'w, W: Borrow<WorkloadEntry>> WorkloadIndex<'w, W> {
    fn new(all: &'w [W]) -> Self {
        let mut index = Self { all, by_namespace: HashMap::new(), by_label: HashMap::new() };
        for (i, we) in all.iter().map(Borrow::borrow).enumerate() {
            let namespace = we.metadata.namespace.as_deref().unwrap_or_default();
            index.by_namespace.entry(namespace).or_default().push(i);
            for (key, value) in &we.spec.labels {
                index.by_label.entry((namespace, key, value)).or_default().push(i);
            }
        }
        index
    }

    /// The positions of the workloads of `namespace` whose labels include `selector`, in input
    /// order.
    fn selected(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<usize> {
        let candidates = match selector.iter().next() {
            None => self.by_namespace.get(namespace),
            // Every selected workload carries the selector's first label.
            Some((key, value)) => self.by_label.get(&(namespace, key.as_str(), value.as_str())),
        };
        let all = self.all;
        candidates
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| labels_match(selector, &all[i].borrow().spec.labels))
            .collect()
    }
}

/// The model service for one host of a ServiceEntry.
fn entry_service(spec: &ServiceEntrySpec, host: &str, namespace: &str, name: &str) -> Service {
    Service {
        hostname: host.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ports: spec
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.number.unwrap_or_default(),
                protocol: Protocol::of_port(Some(&p.protocol), &p.name),
            })
            .collect(),
        addresses: spec.addresses.clone(),
        resolution: resolution(spec.resolution()),
        mesh_external: spec.location() == Location::MeshExternal,
        export_to: spec.export_to.clone(),
        kubernetes: false,
        traffic_distribution: Default::default(),
        subject_alt_names: spec.subject_alt_names.clone(),
    }
}

/// ServiceEntry `resolution` → model resolution.
pub fn resolution(resolution: service_entry::Resolution) -> Resolution {
    match resolution {
        service_entry::Resolution::Static => Resolution::ClientSideLb,
        service_entry::Resolution::Dns => Resolution::Dns,
        service_entry::Resolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        service_entry::Resolution::DynamicDns => Resolution::DynamicDns,
        service_entry::Resolution::None => Resolution::Passthrough,
    }
}

fn is_dns(spec: &ServiceEntrySpec) -> bool {
    matches!(spec.resolution(), service_entry::Resolution::Dns | service_entry::Resolution::DnsRoundRobin)
}

/// The port a workload serves `port` on: its own `ports` entry of that name, else the entry's
/// `targetPort`, else the service port number.
pub fn workload_port(overrides: &BTreeMap<String, u32>, port: &service_entry::ServicePort) -> u32 {
    overrides
        .get(&port.name)
        .copied()
        .filter(|p| *p > 0)
        .or(port.target_port.filter(|p| *p > 0))
        .unwrap_or(port.number.unwrap_or_default())
}

/// An inline endpoint or a selected WorkloadEntry serving `port`.
fn workload_endpoint(
    spec: &WorkloadEntrySpec,
    port: &service_entry::ServicePort,
    namespace: &str,
    workload: &str,
) -> Endpoint {
    // A Unix socket has no port; the address keeps its `unix://` prefix so translation can
    // tell it from a host name.
    let endpoint_port = if spec.address.starts_with(UNIX_PREFIX) { 0 } else { workload_port(&spec.ports, port) };
    let locality = if spec.locality.is_empty() {
        spec.labels.get(LOCALITY_LABEL).map(|l| locality_from_label(l)).unwrap_or_default()
    } else {
        spec.locality.clone()
    };
    Endpoint {
        address: spec.address.clone(),
        port: endpoint_port,
        service_port_name: port.name.clone(),
        labels: spec.labels.clone(),
        namespace: namespace.to_owned(),
        service_account: spec.service_account.clone(),
        locality,
        weight: spec.weight.unwrap_or_default(),
        health: Health::Healthy,
        tls_mode: workload_tls_mode(spec),
        workload: workload.to_owned(),
    }
}

/// A DNS entry without endpoints: Envoy resolves the host itself.
fn host_endpoint(host: &str, port: &service_entry::ServicePort, namespace: &str) -> Endpoint {
    let number = port.target_port.filter(|p| *p > 0).unwrap_or(port.number.unwrap_or_default());
    Endpoint::plain(host, number, &port.name, namespace)
}

/// `istio` when the workload takes Istio mTLS: its `security.istio.io/tlsMode` label says so,
/// or (without the label) it has a service account, as a VM with a sidecar would.
fn workload_tls_mode(spec: &WorkloadEntrySpec) -> String {
    let istio = match spec.labels.get(TLS_MODE) {
        Some(mode) => mode == TLS_MODE_ISTIO,
        None => !spec.service_account.is_empty(),
    };
    if istio { TLS_MODE_ISTIO.to_owned() } else { String::new() }
}

/// `istio-locality` label values use `.` where localities use `/` (labels cannot hold `/`).
pub fn locality_from_label(label: &str) -> String {
    label.replace('.', "/")
}

/// Stable endpoint order: by service port name, then address and port.
pub fn sort_endpoints(endpoints: &mut [Endpoint]) {
    endpoints.sort_by(|a, b| {
        (&a.service_port_name, &a.address, a.port, &a.workload).cmp(&(
            &b.service_port_name,
            &b.address,
            b.port,
            &b.workload,
        ))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn se(ns: &str, name: &str, spec: serde_json::Value) -> ServiceEntry {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .unwrap()
    }

    fn we(ns: &str, name: &str, spec: serde_json::Value) -> WorkloadEntry {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .unwrap()
    }

    /// Every entry converted at once: services in order, endpoints pooled by host.
    fn service_entries(
        entries: &[ServiceEntry],
        workloads: &[WorkloadEntry],
    ) -> (Vec<Service>, BTreeMap<String, Vec<Endpoint>>) {
        let entries: Vec<_> = entries.iter().cloned().map(Arc::new).collect();
        let workloads: Vec<_> = workloads.iter().cloned().map(Arc::new).collect();
        let mut services = Vec::new();
        let mut endpoints: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for converted in EntryCache::default().convert(&entries, &workloads) {
            services.extend(converted.services.iter().map(|s| Service::clone(s)));
            for (host, list) in &converted.endpoints {
                endpoints.entry(host.clone()).or_default().extend(list.iter().cloned());
            }
        }
        (services, endpoints)
    }

    /// (address, port, service port name, tls mode, workload) of each endpoint.
    fn summary(endpoints: &[Endpoint]) -> Vec<(String, u32, String, String, String)> {
        endpoints
            .iter()
            .map(|e| (e.address.clone(), e.port, e.service_port_name.clone(), e.tls_mode.clone(), e.workload.clone()))
            .collect()
    }

    /// A random sequence of WorkloadEntry edits (labels, addresses, a few at a time, sometimes
    /// one added or removed, sometimes a ServiceEntry replaced): every conversion equals a
    /// fresh cache's, and edits in place (workloads, an entry) take the per-change path.
    #[test]
    fn conversions_after_workload_changes_equal_fresh_ones() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let entry = |i: usize, port: u32, app: usize| {
            Arc::new(se(
                &format!("ns{}", i % 2),
                &format!("entry-{i}"),
                json!({
                    "hosts": [format!("e{i}.example.com")],
                    "ports": [{"number": port, "name": "http"}],
                    "resolution": "STATIC", "location": "MESH_INTERNAL",
                    "workloadSelector": {"labels": {"app": format!("a{app}")}},
                }),
            ))
        };
        let workload = |i: usize, app: usize, version: usize, octet: usize| {
            Arc::new(we(
                &format!("ns{}", i % 2),
                &format!("w-{i}"),
                json!({"address": format!("10.0.{}.{octet}", i % 250), "labels": {"app": format!("a{app}"), "version": format!("v{version}")}}),
            ))
        };
        let mut entries: Vec<_> = (0..12).map(|i| entry(i, 80, i % 5)).collect();
        let mut workloads: Vec<_> = (0..60).map(|i| workload(i, i % 6, 1, 1)).collect();
        let mut cache = EntryCache::default();
        let mut fast = 0;
        for step in 0..200 {
            let in_place = match next(10) {
                0 => {
                    // Read again, its port or (one time in three) its selector changed.
                    let i = next(entries.len());
                    let app = if next(3) == 0 { next(6) } else { i % 5 };
                    entries[i] = entry(i, 80 + next(3) as u32, app);
                    true
                }
                1 if workloads.len() > 1 => {
                    workloads.remove(next(workloads.len()));
                    false
                }
                2 => {
                    let i = workloads.len() + 100;
                    workloads.insert(next(workloads.len()), workload(i, next(6), 1, 1));
                    false
                }
                _ => {
                    for _ in 0..1 + next(3) {
                        let i = next(workloads.len());
                        workloads[i] = workload(i, next(6), next(2), next(3));
                    }
                    true
                }
            };
            let converted = if in_place && step > 0 {
                let conversion = cache.convert_few(&entries, &workloads).expect("a few objects changed in place");
                let converted = conversion.converted.clone();
                cache.remember(&entries, &workloads, conversion);
                fast += 1;
                converted
            } else {
                cache.convert(&entries, &workloads)
            };
            let fresh = EntryCache::default().convert(&entries, &workloads);
            assert_eq!(converted, fresh, "step {step}");
        }
        assert!(fast > 100, "{fast} conversions took the per-workload path");
    }

    #[test]
    fn one_service_per_host_with_mapped_fields() {
        let entry = se(
            "web",
            "external",
            json!({
                "hosts": ["api.example.com", "cdn.example.com"],
                "addresses": ["240.0.0.1"],
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}, {"number": 80, "name": "http-plain"}],
                "resolution": "DNS",
                "exportTo": ["."],
            }),
        );
        let (services, _) = service_entries(&[entry], &[]);
        assert_eq!(services.len(), 2);
        let api = &services[0];
        assert_eq!(api.hostname, "api.example.com");
        assert_eq!(services[1].hostname, "cdn.example.com");
        assert_eq!((api.namespace.as_str(), api.name.as_str()), ("web", "external"));
        assert_eq!(api.addresses, ["240.0.0.1"]);
        assert_eq!(api.resolution, Resolution::Dns);
        assert!(api.mesh_external, "MESH_EXTERNAL is the default location");
        assert!(!api.kubernetes);
        assert_eq!(api.export_to, ["."]);
        let ports: Vec<_> = api.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol)).collect();
        assert_eq!(ports, [("tls", 443, Protocol::Tls), ("http-plain", 80, Protocol::Http)]);
    }

    #[test]
    fn resolution_and_location_table() {
        let cases = [
            ("NONE", "MESH_INTERNAL", Resolution::Passthrough, false),
            ("STATIC", "MESH_EXTERNAL", Resolution::ClientSideLb, true),
            ("DNS", "MESH_INTERNAL", Resolution::Dns, false),
            ("DNS_ROUND_ROBIN", "MESH_EXTERNAL", Resolution::DnsRoundRobin, true),
            ("DYNAMIC_DNS", "MESH_EXTERNAL", Resolution::DynamicDns, true),
        ];
        for (resolution, location, want, external) in cases {
            let entry = se(
                "ns",
                "e",
                json!({"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "http"}],
                       "resolution": resolution, "location": location}),
            );
            let (services, _) = service_entries(&[entry], &[]);
            assert_eq!(services[0].resolution, want, "{resolution}");
            assert_eq!(services[0].mesh_external, external, "{location}");
        }
    }

    #[test]
    fn inline_endpoints_map_ports_by_name() {
        let entry = se(
            "ns",
            "e",
            json!({
                "hosts": ["db.internal"],
                "ports": [{"number": 5432, "name": "tcp-pg", "targetPort": 6432}, {"number": 80, "name": "http"}],
                "resolution": "STATIC", "location": "MESH_INTERNAL",
                "endpoints": [
                    {"address": "10.0.0.2", "ports": {"http": 8080}, "labels": {"security.istio.io/tlsMode": "istio"},
                     "locality": "r1/z1", "weight": 3},
                    {"address": "10.0.0.1", "labels": {"istio-locality": "r2.z2"}},
                    // Behind another network's gateway: left out.
                    {"network": "remote"},
                ],
            }),
        );
        let (_, endpoints) = service_entries(&[entry], &[]);
        let list = &endpoints["db.internal"];
        assert_eq!(
            summary(list),
            [
                ("10.0.0.1".into(), 80, "http".into(), "".into(), "".into()),
                ("10.0.0.2".into(), 8080, "http".into(), "istio".into(), "".into()),
                ("10.0.0.1".into(), 6432, "tcp-pg".into(), "".into(), "".into()),
                ("10.0.0.2".into(), 6432, "tcp-pg".into(), "istio".into(), "".into()),
            ]
        );
        assert_eq!(list[0].locality, "r2/z2");
        assert_eq!(list[1].locality, "r1/z1");
        assert_eq!(list[1].weight, 3);
        assert!(list.iter().all(|e| e.namespace == "ns" && e.health == Health::Healthy));
    }

    #[test]
    fn workload_entries_by_selector_in_the_same_namespace() {
        let entry = se(
            "vms",
            "legacy",
            json!({
                "hosts": ["legacy.vms.svc.cluster.local"],
                "ports": [{"number": 80, "name": "http", "targetPort": 9080}],
                "resolution": "STATIC", "location": "MESH_INTERNAL",
                "workloadSelector": {"labels": {"app": "legacy"}},
            }),
        );
        let workloads = [
            we("vms", "vm-1", json!({"address": "10.1.0.1", "labels": {"app": "legacy"}, "serviceAccount": "legacy"})),
            we("vms", "vm-2", json!({"address": "10.1.0.2", "labels": {"app": "legacy"}, "ports": {"http": 8000}})),
            we("vms", "other", json!({"address": "10.1.0.3", "labels": {"app": "other"}})),
            we("elsewhere", "vm-3", json!({"address": "10.1.0.4", "labels": {"app": "legacy"}})),
        ];
        let (_, endpoints) = service_entries(&[entry], &workloads);
        assert_eq!(
            summary(&endpoints["legacy.vms.svc.cluster.local"]),
            [
                ("10.1.0.1".into(), 9080, "http".into(), "istio".into(), "vm-1".into()),
                ("10.1.0.2".into(), 8000, "http".into(), "".into(), "vm-2".into()),
            ]
        );
        assert_eq!(endpoints["legacy.vms.svc.cluster.local"][0].service_account, "legacy");
    }

    #[test]
    fn dns_without_endpoints_resolves_the_host() {
        let entry = se(
            "ns",
            "e",
            json!({"hosts": ["a.example.com", "b.example.com"], "resolution": "DNS",
                   "ports": [{"number": 443, "name": "tls", "protocol": "TLS", "targetPort": 8443}]}),
        );
        let (_, endpoints) = service_entries(&[entry], &[]);
        assert_eq!(
            summary(&endpoints["a.example.com"]),
            [("a.example.com".into(), 8443, "tls".into(), "".into(), "".into())]
        );
        assert_eq!(endpoints["b.example.com"][0].address, "b.example.com");
    }

    #[test]
    fn no_endpoints_without_dns_or_selected_workloads() {
        let cases = [
            json!({"hosts": ["a.example.com"], "resolution": "NONE", "ports": [{"number": 80, "name": "http"}]}),
            json!({"hosts": ["a.example.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}]}),
            // A selector that picks nothing does not fall back to the host name.
            json!({"hosts": ["a.example.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http"}],
                   "workloadSelector": {"labels": {"app": "none"}}}),
        ];
        for spec in cases {
            let (services, endpoints) = service_entries(&[se("ns", "e", spec.clone())], &[]);
            assert_eq!(services.len(), 1, "{spec}");
            assert!(endpoints.is_empty(), "{spec}");
        }
    }

    #[test]
    fn unix_socket_endpoints_have_no_port() {
        let entry = se(
            "ns",
            "e",
            json!({"hosts": ["uds.local"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
                   "endpoints": [{"address": "unix:///var/run/app.sock"}]}),
        );
        let (_, endpoints) = service_entries(&[entry], &[]);
        assert_eq!(
            summary(&endpoints["uds.local"]),
            [("unix:///var/run/app.sock".into(), 0, "http".into(), "".into(), "".into())]
        );
    }
}
