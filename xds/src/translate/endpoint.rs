//! ClusterLoadAssignments (EDS): the endpoints of every `ClientSideLb` service, per port and per
//! DestinationRule subset. Proxy-independent, so one computation serves every proxy; it runs on
//! each endpoint change, so it works from indexes built once per call rather than rescanning
//! rules per service.
//!
//! Also owns how one registry [`Endpoint`] becomes an Envoy `LbEndpoint`, which the cluster
//! translation reuses for the inline endpoints of DNS clusters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value, value};
use rudder_config::networking::DestinationRule;
use rudder_config::networking::destination_rule::Subset;

use super::context::{host_matches, outbound_cluster_name, resolve_host};
use crate::model::{Endpoint, Health, Resolution, Service, Snapshot, labels_match};

mod encode;

pub use encode::{EncodedAssignment, canonical};

/// Every EDS cluster's assignment, sorted by cluster name: `outbound|<port>||<host>` and
/// `outbound|<port>|<subset>|<host>` for every subset of every DestinationRule whose host
/// covers the service (any namespace, any `exportTo`: which rule a proxy sees is decided by its
/// clusters, and a CLA nobody asks for is never sent).
///
/// As prost messages: what [`encoded_all`], which the server uses, writes as bytes.
pub fn all(snapshot: &Snapshot) -> Vec<ClusterLoadAssignment> {
    sorted(snapshot, &snapshot.services.keys().collect::<Vec<_>>(), build_service, |a| &a.cluster_name)
}

/// The assignments of the `hosts` that are `ClientSideLb` services, sorted by cluster name:
/// exactly the entries [`all`] has for them.
pub fn for_services(snapshot: &Snapshot, hosts: &BTreeSet<String>) -> Vec<ClusterLoadAssignment> {
    sorted(snapshot, &hosts.iter().collect::<Vec<_>>(), build_service, |a| &a.cluster_name)
}

/// [`all`], encoded canonically without building the messages (see [`encode`]); the server's
/// full endpoint rebuild.
pub fn encoded_all(snapshot: &Snapshot) -> Vec<EncodedAssignment> {
    sorted(snapshot, &snapshot.services.keys().collect::<Vec<_>>(), encode::write_service, |a| &a.cluster_name)
}

/// [`for_services`], encoded as [`encoded_all`] encodes: an endpoint change's rebuild.
pub fn encoded_for_services(snapshot: &Snapshot, hosts: &BTreeSet<String>) -> Vec<EncodedAssignment> {
    sorted(snapshot, &hosts.iter().collect::<Vec<_>>(), encode::write_service, |a| &a.cluster_name)
}

/// The assignments of `hosts`, each service's written by `write`, sorted by cluster name.
fn sorted<'s, T>(
    snapshot: &'s Snapshot,
    hosts: &[&String],
    write: fn(&'s [Endpoint], Vec<Planned<'s>>, &mut Vec<T>),
    cluster_name: fn(&T) -> &str,
) -> Vec<T> {
    let mut out = Vec::new();
    plan(snapshot, hosts, |endpoints, plans| write(endpoints, plans, &mut out));
    // Names are unique (hosts, ports and subset names each are), so an unstable sort is exact.
    out.sort_unstable_by(|a, b| cluster_name(a).cmp(cluster_name(b)));
    out
}

/// Plans the assignments of each of `hosts` that is a `ClientSideLb` service and hands them,
/// with the host's endpoints, to `emit`, one service at a time.
fn plan<'s>(snapshot: &'s Snapshot, hosts: &[&String], mut emit: impl FnMut(&'s [Endpoint], Vec<Planned<'s>>)) {
    let rules = SubsetIndex::new(snapshot, hosts);
    for host in hosts {
        if let Some(service) = snapshot.services.get(host.as_str())
            && service.resolution == Resolution::ClientSideLb
        {
            let endpoints = snapshot.endpoints_of(host);
            emit(endpoints, plan_service(host, service, endpoints, &rules.subsets_for(host)));
        }
    }
}

/// One assignment, planned: which of its service's endpoints (indexes into the host's list) it
/// holds, grouped by locality (`region/zone/subzone`) in sorted order, endpoints in list order.
struct Planned<'e> {
    cluster_name: String,
    groups: Vec<(&'e str, Vec<usize>)>,
}

/// A service's assignments: per port, one per subset and the port's own; each holds the
/// healthy endpoints of that port (and subset).
fn plan_service<'e>(host: &str, service: &Service, endpoints: &'e [Endpoint], subsets: &[&Subset]) -> Vec<Planned<'e>> {
    // Which endpoints each subset selects, decided once rather than once per port.
    let selected: Vec<Vec<bool>> =
        subsets.iter().map(|s| endpoints.iter().map(|e| labels_match(&s.labels, &e.labels)).collect()).collect();
    let one_locality = endpoints.windows(2).all(|w| same_text(&w[0].locality, &w[1].locality));
    let groups = |members: &mut dyn Iterator<Item = usize>| -> Vec<(&'e str, Vec<usize>)> {
        if one_locality {
            let members: Vec<usize> = members.collect();
            let Some(&first) = members.first() else { return Vec::new() };
            vec![(endpoints[first].locality.as_str(), members)]
        } else {
            by_locality(members.map(|i| (endpoints[i].locality.as_str(), i)))
        }
    };
    let mut out = Vec::with_capacity(service.ports.len() * (subsets.len() + 1));
    for port in &service.ports {
        let members: Vec<usize> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.service_port_name == port.name && serves_traffic(e))
            .map(|(i, _)| i)
            .collect();
        for (subset, chosen) in subsets.iter().zip(&selected) {
            out.push(Planned {
                cluster_name: outbound_cluster_name(port.port, &subset.name, host),
                groups: groups(&mut members.iter().copied().filter(|&i| chosen[i])),
            });
        }
        out.push(Planned {
            cluster_name: outbound_cluster_name(port.port, "", host),
            groups: groups(&mut members.into_iter()),
        });
    }
    out
}

/// Items grouped by locality, localities in sorted order, items in input order.
fn by_locality<'e, T>(items: impl Iterator<Item = (&'e str, T)>) -> Vec<(&'e str, Vec<T>)> {
    let mut tagged: Vec<(&'e str, T)> = items.collect();
    // Usually one locality: then there is nothing to sort. Stable, so items keep their order
    // within a locality.
    if !tagged.windows(2).all(|w| same_text(w[0].0, w[1].0)) {
        tagged.sort_by(|a, b| compare_text(a.0, b.0));
    }
    let mut groups: Vec<(&'e str, Vec<T>)> = Vec::new();
    for (locality, item) in tagged {
        match groups.last_mut() {
            Some((current, members)) if same_text(current, locality) => members.push(item),
            _ => groups.push((locality, vec![item])),
        }
    }
    groups
}

/// `a == b`, without calling `memcmp` for empty strings. Most endpoints have no locality, and
/// glibc's AVX-512 `memcmp` reads an empty `String`'s dangling pointer with a masked load that
/// takes a slow microcode assist: a third of a full endpoint rebuild went there (perf).
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// `a.cmp(b)`, without calling `memcmp` for empty strings (see [`same_text`]).
fn compare_text(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_empty() || b.is_empty() { a.len().cmp(&b.len()) } else { a.cmp(b) }
}

/// The planned assignments of one service as prost messages.
fn build_service(endpoints: &[Endpoint], plans: Vec<Planned<'_>>, out: &mut Vec<ClusterLoadAssignment>) {
    let built: Vec<Option<LbEndpoint>> = endpoints.iter().map(lb_endpoint).collect();
    for plan in plans {
        let groups = plan
            .groups
            .into_iter()
            .map(|(locality, members)| {
                locality_group(locality, members.iter().filter_map(|&i| built[i].clone()).collect())
            })
            .collect();
        out.push(ClusterLoadAssignment { cluster_name: plan.cluster_name, endpoints: groups, ..Default::default() });
    }
}

/// The hosts whose assignments may differ between `before` and `after`: a service added,
/// removed or changed, its endpoints changed, or a DestinationRule naming it changed its
/// subsets. `None` when any host could be affected (a wildcard DestinationRule's subsets
/// changed). Comparing inputs is far cheaper than translating every endpoint again.
pub fn changed_hosts(before: &Snapshot, after: &Snapshot) -> Option<BTreeSet<String>> {
    let mut changed: BTreeSet<String> = super::changed_keys(&before.services, &after.services)
        .chain(super::changed_keys(&before.endpoints, &after.endpoints))
        .cloned()
        .collect();
    fn rules(snapshot: &Snapshot) -> BTreeMap<(&str, &str), &Arc<DestinationRule>> {
        snapshot
            .destination_rules
            .iter()
            .map(|r| {
                let key = (
                    r.metadata.namespace.as_deref().unwrap_or_default(),
                    r.metadata.name.as_deref().unwrap_or_default(),
                );
                (key, r)
            })
            .collect()
    }
    let (old_rules, new_rules) = (rules(before), rules(after));
    let keys: BTreeSet<&(&str, &str)> = old_rules.keys().chain(new_rules.keys()).collect();
    for key in keys {
        let (old, new) = (old_rules.get(key).copied(), new_rules.get(key).copied());
        if let (Some(old), Some(new)) = (old, new)
            && Arc::ptr_eq(old, new)
        {
            continue;
        }
        let (old, new) = (subsets_of(old, key.0), subsets_of(new, key.0));
        if old == new {
            continue;
        }
        for (host, _) in old.into_iter().chain(new) {
            if host.starts_with('*') {
                return None;
            }
            changed.insert(host);
        }
    }
    Some(changed)
}

/// What of a DestinationRule the assignments depend on: its resolved host and its subsets.
fn subsets_of<'r>(rule: Option<&'r Arc<DestinationRule>>, namespace: &str) -> Option<(String, &'r [Subset])> {
    rule.filter(|r| !r.spec.subsets.is_empty())
        .map(|r| (resolve_host(&r.spec.host, namespace), r.spec.subsets.as_slice()))
}

/// Subsets of DestinationRules by the host they name: exact hosts in a map, wildcard hosts in a
/// list (there are few of those).
struct SubsetIndex<'a> {
    exact: HashMap<String, Vec<&'a Subset>>,
    wildcard: Vec<(String, &'a [Subset])>,
}

impl<'a> SubsetIndex<'a> {
    /// The index for looking up `hosts`. For a few hosts (an endpoint change's), rules whose
    /// host cannot resolve to one of them are left out before their hosts are resolved: the
    /// first label of a host is kept by resolution, so a rule naming another one applies to
    /// none of `hosts` (wildcard rules are always kept). Resolving the host of every rule in
    /// the mesh was most of an endpoint change's translation.
    fn new(snapshot: &'a Snapshot, hosts: &[&String]) -> Self {
        fn first_label(host: &str) -> &str {
            host.split('.').next().unwrap_or_default()
        }
        let few = hosts.len().saturating_mul(8) < snapshot.destination_rules.len();
        let labels: HashSet<&str> = if few { hosts.iter().map(|h| first_label(h)).collect() } else { HashSet::new() };
        let may_apply = |host: &str| !few || host.contains('*') || labels.contains(first_label(host));
        let mut exact: HashMap<String, Vec<&'a Subset>> = HashMap::new();
        let mut wildcard = Vec::new();
        for rule in &snapshot.destination_rules {
            if rule.spec.subsets.is_empty() || !may_apply(&rule.spec.host) {
                continue;
            }
            let namespace = rule.metadata.namespace.as_deref().unwrap_or_default();
            let host = resolve_host(&rule.spec.host, namespace);
            if host.starts_with('*') {
                wildcard.push((host, rule.spec.subsets.as_slice()));
            } else {
                exact.entry(host).or_default().extend(rule.spec.subsets.iter());
            }
        }
        Self { exact, wildcard }
    }

    /// Subsets that apply to `host`, one per name: exact-host rules first (in snapshot order),
    /// then wildcard ones; the first rule naming a subset wins, as no proxy can tell two rules
    /// with the same subset name apart by cluster name either.
    fn subsets_for(&self, host: &str) -> Vec<&'a Subset> {
        let exact = self.exact.get(host).into_iter().flatten().copied();
        let wildcard =
            self.wildcard.iter().filter(|(pattern, _)| host_matches(pattern, host)).flat_map(|(_, s)| s.iter());
        let mut seen = BTreeSet::new();
        exact.chain(wildcard).filter(|s| !s.name.is_empty() && seen.insert(s.name.as_str())).collect()
    }
}

/// Whether an endpoint receives traffic: unhealthy and terminating ones are left out (Envoy
/// would only fail over to them in panic mode, which is worse than not knowing them).
fn serves_traffic(endpoint: &Endpoint) -> bool {
    endpoint.health == Health::Healthy
}

/// The Envoy endpoint for a registry endpoint, or `None` when it must not receive traffic.
pub(crate) fn lb_endpoint(endpoint: &Endpoint) -> Option<LbEndpoint> {
    if !serves_traffic(endpoint) {
        return None;
    }
    Some(LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket(&endpoint.address, endpoint.port)),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(UInt32Value { value: endpoint.weight.max(1) }),
        metadata: endpoint_metadata(endpoint),
    })
}

/// A TCP socket address.
pub(crate) fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Groups endpoints by `region/zone/subzone`, localities in sorted order, endpoints in input
/// order. A locality's weight is the sum of its endpoints' weights.
pub(crate) fn group_by_locality<'e>(
    endpoints: impl Iterator<Item = (&'e str, LbEndpoint)>,
) -> Vec<LocalityLbEndpoints> {
    by_locality(endpoints).into_iter().map(|(locality, members)| locality_group(locality, members)).collect()
}

/// One locality's endpoints, weighted by the sum of theirs.
fn locality_group(locality: &str, lb_endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    let weight =
        lb_endpoints.iter().map(|e| e.load_balancing_weight.map_or(1, |w| w.value)).fold(0u32, u32::saturating_add);
    LocalityLbEndpoints {
        locality: parse_locality(locality),
        lb_endpoints,
        load_balancing_weight: Some(UInt32Value { value: weight.max(1) }),
        ..Default::default()
    }
}

/// `region/zone/subzone` (any part may be missing); `None` for an empty string.
fn parse_locality(text: &str) -> Option<Locality> {
    if text.is_empty() {
        return None;
    }
    let mut parts = text.splitn(3, '/').map(str::to_owned);
    Some(Locality {
        region: parts.next().unwrap_or_default(),
        zone: parts.next().unwrap_or_default(),
        sub_zone: parts.next().unwrap_or_default(),
    })
}

/// `envoy.transport_socket_match` / `tlsMode`: lets a cluster's `transport_socket_matches`
/// tell sidecar-equipped workloads apart.
const TLS_MODE_METADATA: (&str, &str) = ("envoy.transport_socket_match", "tlsMode");
/// `istio` / `workload`, which telemetry reads.
const WORKLOAD_METADATA: (&str, &str) = ("istio", "workload");

/// The parts of the `istio.workload` text, as Istio writes it: `name;namespace;canonical
/// name;canonical revision;` (the cluster part left empty).
fn workload_metadata_parts(endpoint: &Endpoint) -> [&str; 4] {
    let label = |keys: [&str; 2]| keys.iter().find_map(|k| endpoint.labels.get(*k)).map_or("", String::as_str);
    [
        endpoint.workload.as_str(),
        endpoint.namespace.as_str(),
        label(["service.istio.io/canonical-name", "app"]),
        label(["service.istio.io/canonical-revision", "version"]),
    ]
}

/// Endpoint metadata: [`WORKLOAD_METADATA`] when the endpoint names its workload and
/// [`TLS_MODE_METADATA`] when it has a TLS mode.
fn endpoint_metadata(endpoint: &Endpoint) -> Option<Metadata> {
    let mut metadata = Metadata::default();
    if !endpoint.workload.is_empty() {
        let workload: String = workload_metadata_parts(endpoint).iter().flat_map(|p| [*p, ";"]).collect();
        metadata.filter_metadata.insert(WORKLOAD_METADATA.0.to_owned(), one_field(WORKLOAD_METADATA.1, workload));
    }
    if !endpoint.tls_mode.is_empty() {
        metadata
            .filter_metadata
            .insert(TLS_MODE_METADATA.0.to_owned(), one_field(TLS_MODE_METADATA.1, endpoint.tls_mode.clone()));
    }
    (!metadata.filter_metadata.is_empty()).then_some(metadata)
}

pub(crate) fn one_field(key: &str, text: String) -> Struct {
    Struct { fields: [(key.to_owned(), Value { kind: Some(value::Kind::StringValue(text)) })].into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Protocol, Service, ServicePort};

    fn service(host: &str, resolution: Resolution) -> Arc<Service> {
        Arc::new(Service {
            hostname: host.to_owned(),
            namespace: "default".to_owned(),
            name: host.split('.').next().unwrap_or_default().to_owned(),
            ports: vec![
                ServicePort { name: "http".into(), port: 80, protocol: Protocol::Http },
                ServicePort { name: "grpc".into(), port: 9090, protocol: Protocol::Grpc },
            ],
            addresses: vec![],
            resolution,
            mesh_external: false,
            export_to: vec![],
            kubernetes: true,
            traffic_distribution: Default::default(),
            subject_alt_names: Vec::new(),
        })
    }

    fn endpoint(address: &str, port_name: &str, version: &str) -> Endpoint {
        Endpoint {
            address: address.to_owned(),
            port: if port_name == "http" { 8080 } else { 9090 },
            service_port_name: port_name.to_owned(),
            labels: [("app".to_owned(), "reviews".to_owned()), ("version".to_owned(), version.to_owned())].into(),
            namespace: "default".into(),
            service_account: "reviews".into(),
            locality: String::new(),
            weight: 0,
            health: Health::Healthy,
            tls_mode: String::new(),
            workload: String::new(),
        }
    }

    fn rule(yaml: &str) -> Arc<rudder_config::networking::DestinationRule> {
        let loads = rudder_config::load::load_str("dr.yaml", yaml).unwrap();
        match &loads.objects[0].object {
            rudder_config::IstioObject::DestinationRule(dr) => Arc::new((**dr).clone()),
            other => panic!("{other:?}"),
        }
    }

    const REVIEWS: &str = "reviews.default.svc.cluster.local";

    /// The index for a few hosts gives each of them what the index of every rule gives: rules
    /// naming the host by short name, by full name and by wildcard, among many for others.
    #[test]
    fn a_few_hosts_index_only_the_rules_that_can_apply() {
        let dr = |name: &str, namespace: &str, host: &str, subset: &str| {
            rule(&format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
                 spec:\n  host: \"{host}\"\n  subsets:\n  - name: {subset}\n    labels: {{version: {subset}}}\n"
            ))
        };
        let mut snapshot = Snapshot {
            destination_rules: vec![
                dr("short", "default", "reviews", "v1"),
                dr("full", "other", REVIEWS, "v2"),
                dr("wild", "default", "*.default.svc.cluster.local", "v3"),
                dr("elsewhere", "other", "reviews", "v4"),
            ],
            ..Default::default()
        };
        snapshot.destination_rules.extend((0..40).map(|i| dr(&format!("r{i}"), "default", &format!("svc-{i}"), "x")));
        let names = |index: &SubsetIndex, host: &str| -> Vec<String> {
            index.subsets_for(host).iter().map(|s| s.name.clone()).collect()
        };
        let reviews = REVIEWS.to_owned();
        let few = SubsetIndex::new(&snapshot, &[&reviews]);
        let hosts: Vec<String> = (0..40).map(|i| format!("h{i}")).collect();
        let all = SubsetIndex::new(&snapshot, &hosts.iter().collect::<Vec<_>>());
        assert_eq!(names(&few, REVIEWS), ["v1", "v2", "v3"]);
        assert_eq!(names(&few, REVIEWS), names(&all, REVIEWS));
        assert!(few.exact.len() < 4, "rules for other hosts were indexed: {:?}", few.exact.keys());
    }

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => match &ep.address.as_ref().unwrap().address {
                    Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                        Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
                        _ => unreachable!(),
                    },
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            })
            .collect()
    }

    fn snapshot_with_subsets() -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.services.insert(REVIEWS.into(), service(REVIEWS, Resolution::ClientSideLb));
        snapshot.endpoints.insert(
            REVIEWS.into(),
            Arc::new(vec![
                endpoint("10.0.0.1", "http", "v1"),
                endpoint("10.0.0.2", "http", "v2"),
                endpoint("10.0.0.1", "grpc", "v1"),
                Endpoint { health: Health::Terminating, ..endpoint("10.0.0.3", "http", "v1") },
                Endpoint { health: Health::Unhealthy, ..endpoint("10.0.0.4", "http", "v2") },
            ]),
        );
        snapshot.destination_rules.push(rule(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\n\
             spec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n",
        ));
        snapshot
    }

    #[test]
    fn one_assignment_per_port_and_subset_filtered_by_port_name_and_labels() {
        let snapshot = snapshot_with_subsets();
        let all = all(&snapshot);
        let names: Vec<&str> = all.iter().map(|c| c.cluster_name.as_str()).collect();
        // Plain byte order: `|` sorts after subset names.
        assert_eq!(
            names,
            [
                "outbound|80|v1|reviews.default.svc.cluster.local",
                "outbound|80|v2|reviews.default.svc.cluster.local",
                "outbound|80|v3|reviews.default.svc.cluster.local",
                "outbound|80||reviews.default.svc.cluster.local",
                "outbound|9090|v1|reviews.default.svc.cluster.local",
                "outbound|9090|v2|reviews.default.svc.cluster.local",
                "outbound|9090|v3|reviews.default.svc.cluster.local",
                "outbound|9090||reviews.default.svc.cluster.local",
            ]
        );
        let by_name = |n: &str| all.iter().find(|c| c.cluster_name == format!("outbound|{n}|{REVIEWS}")).unwrap();
        assert_eq!(addresses(by_name("80|")), ["10.0.0.1:8080", "10.0.0.2:8080"], "unhealthy and terminating dropped");
        assert_eq!(addresses(by_name("80|v1")), ["10.0.0.1:8080"]);
        assert_eq!(addresses(by_name("80|v2")), ["10.0.0.2:8080"]);
        assert!(by_name("80|v3").endpoints.is_empty(), "an empty subset still gets an assignment");
        assert_eq!(addresses(by_name("9090|")), ["10.0.0.1:9090"]);
        assert_eq!(addresses(by_name("9090|v1")), ["10.0.0.1:9090"]);
        assert!(by_name("9090|v2").endpoints.is_empty());
        let lb = &by_name("80|").endpoints[0].lb_endpoints[0];
        assert_eq!(lb.health_status, HealthStatus::Healthy as i32);
        assert_eq!(lb.load_balancing_weight, Some(UInt32Value { value: 1 }));
    }

    fn edge_snapshot(endpoints: Vec<Endpoint>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.services.insert(REVIEWS.into(), service(REVIEWS, Resolution::ClientSideLb));
        snapshot.endpoints.insert(REVIEWS.into(), Arc::new(endpoints));
        snapshot
    }

    /// Edge cases of every field the direct writer measures: the bytes are the canonical
    /// encoding of the prost assignment, and decode to it.
    #[test]
    fn direct_bytes_are_the_canonical_encoding() {
        let plain = |address: &str, port: u32| Endpoint::plain(address, port, "http", "default");
        let labelled = |mut e: Endpoint, labels: &[(&str, &str)]| {
            e.labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            e
        };
        let cases: Vec<(&str, Vec<Endpoint>)> = vec![
            ("no endpoints", vec![]),
            ("port zero, empty address", vec![plain("", 0)]),
            ("large port and weight", vec![Endpoint { weight: u32::MAX, ..plain("10.0.0.1", 65_535) }]),
            (
                "weights saturate",
                vec![
                    Endpoint { weight: u32::MAX, ..plain("10.0.0.1", 80) },
                    Endpoint { weight: 7, ..plain("10.0.0.2", 80) },
                ],
            ),
            ("tls mode only", vec![Endpoint { tls_mode: "istio".into(), ..plain("10.0.0.1", 80) }]),
            ("workload only, no labels", vec![Endpoint { workload: "pod-1".into(), ..plain("10.0.0.1", 80) }]),
            (
                "both, canonical labels win",
                vec![labelled(
                    Endpoint { tls_mode: "istio".into(), workload: "pod-1".into(), ..plain("10.0.0.1", 80) },
                    &[
                        ("app", "a"),
                        ("service.istio.io/canonical-name", "canon"),
                        ("version", "v1"),
                        ("service.istio.io/canonical-revision", "r1"),
                    ],
                )],
            ),
            (
                "localities of every shape, unhealthy left out",
                vec![
                    Endpoint { locality: "r/z/s".into(), ..plain("10.0.0.1", 80) },
                    Endpoint { locality: "r".into(), ..plain("10.0.0.2", 80) },
                    Endpoint { locality: "/".into(), ..plain("10.0.0.3", 80) },
                    Endpoint { locality: "r/z/s".into(), health: Health::Unhealthy, ..plain("10.0.0.4", 80) },
                    Endpoint { locality: String::new(), ..plain("10.0.0.5", 80) },
                    Endpoint { locality: "r/z/s/extra".into(), ..plain("10.0.0.6", 80) },
                ],
            ),
            ("long text", vec![Endpoint { workload: "w".repeat(300), tls_mode: "x".repeat(200), ..plain("::1", 1) }]),
        ];
        for (case, endpoints) in cases {
            let snapshot = edge_snapshot(endpoints);
            let messages = all(&snapshot);
            let encoded = encoded_all(&snapshot);
            assert_eq!(encoded.len(), messages.len(), "{case}");
            for (bytes, message) in encoded.iter().zip(&messages) {
                assert_eq!(bytes.cluster_name, message.cluster_name, "{case}");
                assert_eq!(bytes.value, encode::canonical(message), "{case}");
                assert_eq!(
                    &<ClusterLoadAssignment as prost::Message>::decode(bytes.value.clone()).unwrap(),
                    message,
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn only_client_side_lb_services_get_assignments() {
        let mut snapshot = snapshot_with_subsets();
        snapshot.services.insert("api.example.com".into(), service("api.example.com", Resolution::Dns));
        snapshot.services.insert("db.example.com".into(), service("db.example.com", Resolution::Passthrough));
        assert!(all(&snapshot).iter().all(|c| c.cluster_name.ends_with(REVIEWS)));
    }

    #[test]
    fn subsets_from_wildcard_and_other_namespace_rules_apply_first_name_wins() {
        let mut snapshot = snapshot_with_subsets();
        snapshot.destination_rules.push(rule(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: all, namespace: other}\n\
             spec:\n  host: '*.svc.cluster.local'\n  exportTo: ['.']\n  subsets:\n  - {name: v1, labels: {version: v2}}\n  - {name: canary, labels: {version: v2}}\n",
        ));
        let all = all(&snapshot);
        let canary = all.iter().find(|c| c.cluster_name == format!("outbound|80|canary|{REVIEWS}")).unwrap();
        assert_eq!(addresses(canary), ["10.0.0.2:8080"]);
        let v1 = all.iter().find(|c| c.cluster_name == format!("outbound|80|v1|{REVIEWS}")).unwrap();
        assert_eq!(addresses(v1), ["10.0.0.1:8080"], "exact-host rule's v1 wins over the wildcard's");
    }

    #[test]
    fn localities_group_sort_and_sum_weights_with_metadata() {
        let mut snapshot = Snapshot::default();
        snapshot.services.insert(REVIEWS.into(), service(REVIEWS, Resolution::ClientSideLb));
        let with = |address: &str, locality: &str, weight: u32| Endpoint {
            locality: locality.into(),
            weight,
            tls_mode: "istio".into(),
            workload: format!("pod-{address}"),
            ..endpoint(address, "http", "v1")
        };
        snapshot.endpoints.insert(
            REVIEWS.into(),
            Arc::new(vec![
                with("10.0.0.3", "us-west/zone-b", 3),
                with("10.0.0.1", "us-east/zone-a/rack1", 2),
                with("10.0.0.2", "us-west/zone-b", 0),
            ]),
        );
        let cla = all(&snapshot).remove(0);
        assert_eq!(cla.endpoints.len(), 2);
        let east = &cla.endpoints[0];
        assert_eq!(
            east.locality,
            Some(Locality { region: "us-east".into(), zone: "zone-a".into(), sub_zone: "rack1".into() })
        );
        assert_eq!(east.load_balancing_weight, Some(UInt32Value { value: 2 }));
        let west = &cla.endpoints[1];
        assert_eq!(west.locality.as_ref().unwrap().region, "us-west");
        assert_eq!(west.load_balancing_weight, Some(UInt32Value { value: 4 }));
        assert_eq!(addresses(&cla), ["10.0.0.1:8080", "10.0.0.3:8080", "10.0.0.2:8080"]);
        let metadata = east.lb_endpoints[0].metadata.as_ref().unwrap();
        let text = |ns: &str, key: &str| match &metadata.filter_metadata[ns].fields[key].kind {
            Some(value::Kind::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(text("envoy.transport_socket_match", "tlsMode"), "istio");
        assert_eq!(text("istio", "workload"), "pod-10.0.0.1;default;reviews;v1;");
    }

    #[test]
    fn for_services_is_the_services_share_of_all() {
        let mut snapshot = snapshot_with_subsets();
        snapshot.services.insert(
            "other.default.svc.cluster.local".into(),
            service("other.default.svc.cluster.local", Resolution::ClientSideLb),
        );
        let everything = all(&snapshot);
        let mine: Vec<_> = everything.iter().filter(|c| c.cluster_name.ends_with(REVIEWS)).cloned().collect();
        assert_eq!(for_services(&snapshot, &[REVIEWS.to_owned()].into()), mine);
        assert!(for_services(&snapshot, &["missing.example.com".to_owned()].into()).is_empty());
    }

    #[test]
    fn no_endpoints_still_gives_every_assignment() {
        let mut snapshot = Snapshot::default();
        snapshot.services.insert(REVIEWS.into(), service(REVIEWS, Resolution::ClientSideLb));
        let all = all(&snapshot);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|c| c.endpoints.is_empty()));
    }

    /// The size the brief budgets for (1,000 services × 4 ports × 10 endpoints, two subsets
    /// each): every assignment is there with the right members. Timing is left to benches.
    #[test]
    fn large_registry() {
        let mut snapshot = Snapshot::default();
        for s in 0..1000 {
            let host = format!("svc-{s}.default.svc.cluster.local");
            let ports = (0..4u32)
                .map(|p| ServicePort { name: format!("http-{p}"), port: 8000 + p, protocol: Protocol::Http })
                .collect();
            let svc = Service { ports, ..(*service(&host, Resolution::ClientSideLb)).clone() };
            snapshot.services.insert(host.clone(), Arc::new(svc));
            let endpoints = (0..10u32)
                .flat_map(|e| {
                    (0..4u32).map(move |p| Endpoint {
                        port: 9000 + p,
                        workload: format!("pod-{e}"),
                        tls_mode: "istio".into(),
                        locality: format!("region/zone-{}", e % 3),
                        ..endpoint(
                            &format!("10.{}.{}.{e}", s / 256, s % 256),
                            &format!("http-{p}"),
                            if e % 2 == 0 { "v1" } else { "v2" },
                        )
                    })
                })
                .collect();
            snapshot.endpoints.insert(host, Arc::new(endpoints));
        }
        snapshot.destination_rules.push(rule(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: all, namespace: default}\n\
             spec:\n  host: '*.default.svc.cluster.local'\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
        ));
        // Printed for a look with --nocapture; the second run is the steady state of a server
        // that recomputes on every change.
        for run in 1..=2 {
            let started = std::time::Instant::now();
            let all = all(&snapshot);
            let elapsed = started.elapsed();
            drop(all);
            eprintln!("endpoint::all over 1000x4x10 (+2 subsets), run {run}: {elapsed:?}");
        }
        let all = all(&snapshot);
        assert_eq!(all.len(), 1000 * 4 * 3);
        let size = |name: &str| {
            let cla = all.iter().find(|c| c.cluster_name == name).unwrap();
            cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>()
        };
        assert_eq!(size("outbound|8003||svc-7.default.svc.cluster.local"), 10);
        assert_eq!(size("outbound|8003|v1|svc-7.default.svc.cluster.local"), 5);
        assert_eq!(size("outbound|8000|v2|svc-999.default.svc.cluster.local"), 5);
    }
}
