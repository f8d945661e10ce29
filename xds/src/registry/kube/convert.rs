//! Kubernetes objects → model values: a Service becomes a [`Service`], its EndpointSlices (with
//! the pods behind them) become [`Endpoint`]s, and pods picked by a ServiceEntry's
//! `workloadSelector` become that entry's endpoints. Pure functions over borrowed objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use rudder_config::labels::{EXPORT_TO, SUBZONE, TLS_MODE, TLS_MODE_ISTIO};
use rudder_config::networking::ServiceEntry;

use crate::model::{Endpoint, Health, Protocol, Resolution, Service, ServicePort, TrafficDistribution, labels_match};
use crate::registry::service_entry::{LOCALITY_LABEL, locality_from_label, workload_port};
use crate::translate::context::DOMAIN_SUFFIX;

/// Label on an EndpointSlice naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Node label with the region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label with the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// `<name>.<namespace>.svc.cluster.local`.
pub fn service_hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Protocol of a Kubernetes service port: its `appProtocol` when Istio knows it (including the
/// `kubernetes.io/` names), else the `<protocol>-` prefix of its name.
pub fn port_protocol(app_protocol: Option<&str>, name: &str) -> Protocol {
    let declared = match app_protocol {
        Some("kubernetes.io/h2c") => Protocol::Http2,
        Some("kubernetes.io/ws" | "kubernetes.io/wss") => Protocol::Http,
        Some(p) => Protocol::parse(p),
        None => Protocol::Unsupported,
    };
    if declared.is_auto() { Protocol::of_port(None, name) } else { declared }
}

/// The model service of a Kubernetes Service; `None` without a name or namespace. UDP and SCTP
/// ports are left out: Envoy here proxies TCP only.
pub fn service(svc: &KubeService) -> Option<Service> {
    let name = svc.metadata.name.as_deref()?;
    let namespace = svc.metadata.namespace.as_deref()?;
    let spec = svc.spec.as_ref();
    let ports = spec
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto.eq_ignore_ascii_case("TCP")))
        .filter_map(|p| {
            let name = p.name.clone().unwrap_or_default();
            Some(ServicePort {
                protocol: port_protocol(p.app_protocol.as_deref(), &name),
                port: u32::try_from(p.port).ok()?,
                name,
            })
        })
        .collect();
    let cluster_ip = spec.and_then(|s| s.cluster_ip.as_deref()).unwrap_or_default();
    let (resolution, addresses, mesh_external) = match external_name(svc) {
        Some(_) => (Resolution::Dns, Vec::new(), true),
        None if cluster_ip == "None" => (Resolution::Passthrough, Vec::new(), false),
        None => {
            let mut ips: Vec<String> = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
            if ips.is_empty() && !cluster_ip.is_empty() {
                ips.push(cluster_ip.to_owned());
            }
            (Resolution::ClientSideLb, ips, false)
        }
    };
    let export_to = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO))
        .map(|v| v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    Some(Service {
        hostname: service_hostname(name, namespace),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ports,
        addresses,
        resolution,
        mesh_external,
        export_to,
        kubernetes: true,
        traffic_distribution: TrafficDistribution::of(spec.and_then(|s| s.traffic_distribution.as_deref())),
        subject_alt_names: Vec::new(),
    })
}

/// The `externalName` of an ExternalName service.
pub fn external_name(svc: &KubeService) -> Option<&str> {
    let spec = svc.spec.as_ref()?;
    (spec.type_.as_deref() == Some("ExternalName")).then_some(())?;
    spec.external_name.as_deref().filter(|n| !n.is_empty())
}

/// An ExternalName service's only endpoints: the external name, on each service port, for
/// Envoy to resolve.
pub fn external_name_endpoints(svc: &Service, external_name: &str) -> Vec<Endpoint> {
    svc.ports.iter().map(|p| Endpoint::plain(external_name, p.port, &p.name, &svc.namespace)).collect()
}

/// Where pods and node labels are looked up while converting endpoints.
#[derive(Debug, Default)]
pub struct Workloads<'a> {
    /// Pods by (namespace, name).
    pods: BTreeMap<(&'a str, &'a str), &'a Pod>,
    /// Node labels by node name.
    nodes: BTreeMap<&'a str, &'a BTreeMap<String, String>>,
}

impl<'a> Workloads<'a> {
    pub fn new(
        pods: impl IntoIterator<Item = &'a Pod>,
        nodes: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    ) -> Self {
        let pods = pods
            .into_iter()
            .filter_map(|p| Some(((p.metadata.namespace.as_deref()?, p.metadata.name.as_deref()?), p)))
            .collect();
        Self { pods, nodes: nodes.into_iter().collect() }
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<&'a Pod> {
        self.pods.get(&(namespace, name)).copied()
    }

    /// Pods of `namespace` whose labels carry `selector`.
    fn selected<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Pod> + 's {
        self.pods
            .range((namespace, "")..)
            .take_while(move |((ns, _), _)| *ns == namespace)
            .map(|(_, pod)| *pod)
            .filter(move |pod| labels_match(selector, pod_labels(pod)))
    }

    /// The locality of every pod that has an IP and a locality, by each of its IPs.
    pub fn localities_by_ip(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for pod in self.pods.values() {
            let locality = self.locality(pod_labels(pod), pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), None);
            if locality.is_empty() {
                continue;
            }
            let status = pod.status.as_ref();
            let ips = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|ip| ip.ip.as_str());
            for ip in ips.chain(status.and_then(|s| s.pod_ip.as_deref())) {
                out.insert(ip.to_owned(), locality.clone());
            }
        }
        out
    }

    /// `region/zone/subzone` of a workload: its `istio-locality` label, else its node's
    /// topology labels (with the EndpointSlice's zone when it has one). Empty when unknown.
    fn locality(&self, labels: &BTreeMap<String, String>, node: Option<&str>, zone: Option<&str>) -> String {
        if let Some(label) = labels.get(LOCALITY_LABEL) {
            return locality_from_label(label);
        }
        let node_labels = node.and_then(|n| self.nodes.get(n).copied());
        let node_label = |key: &str| node_labels.and_then(|l| l.get(key)).map(String::as_str).unwrap_or_default();
        let zone = zone.filter(|z| !z.is_empty()).unwrap_or_else(|| node_label(ZONE_LABEL));
        let parts = [node_label(REGION_LABEL), zone, node_label(SUBZONE)];
        parts.join("/").trim_end_matches('/').to_owned()
    }
}

fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// What an endpoint learns from the pod behind it.
#[derive(Debug, Default)]
struct PodFacts {
    labels: BTreeMap<String, String>,
    service_account: String,
    tls_mode: String,
    node: Option<String>,
    workload: String,
}

fn pod_facts(pod: &Pod) -> PodFacts {
    let labels = pod_labels(pod).clone();
    let spec = pod.spec.as_ref();
    let service_account =
        spec.and_then(|s| s.service_account_name.clone()).filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
    let tls_mode = if labels.get(TLS_MODE).is_some_and(|m| m == TLS_MODE_ISTIO) { TLS_MODE_ISTIO } else { "" };
    PodFacts {
        labels,
        service_account,
        tls_mode: tls_mode.to_owned(),
        node: spec.and_then(|s| s.node_name.clone()),
        workload: pod.metadata.name.clone().unwrap_or_default(),
    }
}

/// Health from EndpointSlice conditions: ready (unset counts as ready) → healthy; still serving
/// while terminating → terminating; anything else → unhealthy.
pub fn slice_health(endpoint: &SliceEndpoint) -> Health {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        Health::Healthy
    } else if serving && terminating {
        Health::Terminating
    } else {
        Health::Unhealthy
    }
}

/// Endpoints of one Kubernetes service from its EndpointSlices: every address of every slice
/// endpoint, on every service port whose name a slice port carries. With
/// `publishNotReadyAddresses` every endpoint counts as healthy. Sorted; an address seen in two
/// slices (as happens while slices are rebalanced) appears once, with its best health.
pub fn slice_endpoints(
    svc: &Service,
    publish_not_ready: bool,
    slices: &[&EndpointSlice],
    workloads: &Workloads<'_>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        // (service port name, workload port) for every service port the slice serves.
        let ports: Vec<(&str, u32)> = svc
            .ports
            .iter()
            .filter_map(|sp| {
                let port = slice_ports.iter().find(|p| p.name.as_deref().unwrap_or_default() == sp.name)?;
                Some((sp.name.as_str(), u32::try_from(port.port?).ok()?))
            })
            .collect();
        for endpoint in slice.endpoints.as_deref().unwrap_or_default() {
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| workloads.pod(r.namespace.as_deref().unwrap_or(&svc.namespace), r.name.as_deref()?));
            let facts = pod.map(pod_facts).unwrap_or_default();
            let node = endpoint.node_name.as_deref().or(facts.node.as_deref());
            let locality = workloads.locality(&facts.labels, node, endpoint.zone.as_deref());
            let health = if publish_not_ready { Health::Healthy } else { slice_health(endpoint) };
            for address in &endpoint.addresses {
                for (port_name, port) in &ports {
                    out.push(Endpoint {
                        address: address.clone(),
                        port: *port,
                        service_port_name: (*port_name).to_owned(),
                        labels: facts.labels.clone(),
                        namespace: svc.namespace.clone(),
                        service_account: facts.service_account.clone(),
                        locality: locality.clone(),
                        weight: 0,
                        health,
                        tls_mode: facts.tls_mode.clone(),
                        workload: facts.workload.clone(),
                    });
                }
            }
        }
    }
    let rank = |h: Health| match h {
        Health::Healthy => 0,
        Health::Terminating => 1,
        Health::Unhealthy => 2,
    };
    out.sort_by(|a, b| {
        (&a.service_port_name, &a.address, a.port, rank(a.health)).cmp(&(
            &b.service_port_name,
            &b.address,
            b.port,
            rank(b.health),
        ))
    });
    out.dedup_by(|later, first| {
        later.service_port_name == first.service_port_name && later.address == first.address && later.port == first.port
    });
    out
}

/// Pod health: deleting → terminating, `Ready` condition true → healthy, else unhealthy.
fn pod_health(pod: &Pod) -> Health {
    if pod.metadata.deletion_timestamp.is_some() {
        return Health::Terminating;
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready { Health::Healthy } else { Health::Unhealthy }
}

/// Endpoints of a ServiceEntry's hosts from the pods its `workloadSelector` picks in its
/// namespace (pods with an IP that have not finished). A pod's named container ports override
/// the port, as a WorkloadEntry's `ports` would. By host; empty without a selector.
pub fn selected_pod_endpoints(entry: &ServiceEntry, workloads: &Workloads<'_>) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out = BTreeMap::new();
    let Some(selector) = &entry.spec.workload_selector else { return out };
    let namespace = entry.metadata.namespace.as_deref().unwrap_or_default();
    let mut endpoints = Vec::new();
    for pod in workloads.selected(namespace, &selector.labels) {
        let status = pod.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed") {
            continue;
        }
        let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty()) else { continue };
        let named_ports: BTreeMap<String, u32> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.as_deref().unwrap_or_default())
            .filter_map(|p| Some((p.name.clone()?, u32::try_from(p.container_port).ok()?)))
            .collect();
        let facts = pod_facts(pod);
        let locality = workloads.locality(&facts.labels, facts.node.as_deref(), None);
        for port in &entry.spec.ports {
            endpoints.push(Endpoint {
                address: ip.to_owned(),
                port: workload_port(&named_ports, port),
                service_port_name: port.name.clone(),
                labels: facts.labels.clone(),
                namespace: namespace.to_owned(),
                service_account: facts.service_account.clone(),
                locality: locality.clone(),
                weight: 0,
                health: pod_health(pod),
                tls_mode: facts.tls_mode.clone(),
                workload: facts.workload.clone(),
            });
        }
    }
    if !endpoints.is_empty() {
        for host in &entry.spec.hosts {
            out.insert(host.clone(), endpoints.clone());
        }
    }
    out
}

/// EndpointSlices grouped by the (namespace, service name) they belong to.
pub fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.as_deref();
        let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(service)) = (namespace, service) {
            out.entry((namespace, service.as_str())).or_default().push(slice);
        }
    }
    // Slice order decides nothing after sorting, but keep it stable anyway.
    for list in out.values_mut() {
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn kube_service(v: Value) -> KubeService {
        serde_json::from_value(v).unwrap()
    }

    fn svc(spec: Value) -> KubeService {
        kube_service(json!({"metadata": {"name": "reviews", "namespace": "default"}, "spec": spec}))
    }

    #[test]
    fn traffic_distribution() {
        let cases = [
            (json!(null), TrafficDistribution::Any),
            (json!("PreferClose"), TrafficDistribution::PreferSameZone),
            (json!("PreferSameZone"), TrafficDistribution::PreferSameZone),
            (json!("PreferSameNode"), TrafficDistribution::PreferSameNode),
            (json!("SomethingNew"), TrafficDistribution::Any),
        ];
        for (value, want) in cases {
            let service = service(&svc(json!({"clusterIP": "10.0.0.9", "trafficDistribution": value}))).unwrap();
            assert_eq!(service.traffic_distribution, want, "{value}");
        }
    }

    #[test]
    fn port_protocols() {
        let cases = [
            (Some("http"), "tcp-x", Protocol::Http),
            (Some("kubernetes.io/h2c"), "web", Protocol::Http2),
            (Some("kubernetes.io/ws"), "web", Protocol::Http),
            (Some("GRPC"), "", Protocol::Grpc),
            (Some("custom.io/thing"), "redis-cache", Protocol::Redis),
            (None, "http2-api", Protocol::Http2),
            (None, "https", Protocol::Https),
            (None, "web", Protocol::Unsupported),
            (None, "", Protocol::Unsupported),
        ];
        for (app, name, want) in cases {
            assert_eq!(port_protocol(app, name), want, "{app:?} {name}");
        }
    }

    #[test]
    fn service_types_table() {
        // (spec, resolution, addresses, mesh_external)
        let cases = [
            (
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
                Resolution::ClientSideLb,
                vec!["10.96.0.10"],
                false,
            ),
            (
                json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"], "type": "LoadBalancer"}),
                Resolution::ClientSideLb,
                vec!["10.96.0.10", "fd00::a"],
                false,
            ),
            (json!({"clusterIP": "None"}), Resolution::Passthrough, vec![], false),
            (json!({"type": "ExternalName", "externalName": "db.example.com"}), Resolution::Dns, vec![], true),
        ];
        for (spec, resolution, addresses, external) in cases {
            let s = service(&svc(spec.clone())).unwrap();
            assert_eq!(s.hostname, "reviews.default.svc.cluster.local");
            assert_eq!((s.namespace.as_str(), s.name.as_str()), ("default", "reviews"));
            assert!(s.kubernetes);
            assert_eq!(s.resolution, resolution, "{spec}");
            assert_eq!(s.addresses, addresses, "{spec}");
            assert_eq!(s.mesh_external, external, "{spec}");
        }
    }

    #[test]
    fn service_ports_and_export_to() {
        let k = kube_service(json!({
            "metadata": {"name": "a", "namespace": "ns", "annotations": {"networking.istio.io/exportTo": " ., istio-system "}},
            "spec": {"clusterIP": "10.0.0.1", "ports": [
                {"name": "http-web", "port": 80, "targetPort": 8080},
                {"name": "grpc", "port": 9090, "appProtocol": "grpc"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 7000, "protocol": "TCP"},
            ]},
        }));
        let s = service(&k).unwrap();
        let ports: Vec<_> = s.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol)).collect();
        assert_eq!(
            ports,
            [("http-web", 80, Protocol::Http), ("grpc", 9090, Protocol::Grpc), ("", 7000, Protocol::Unsupported)]
        );
        assert_eq!(s.export_to, [".", "istio-system"]);
        assert!(service(&kube_service(json!({"metadata": {"name": "x"}}))).is_none(), "no namespace");
    }

    #[test]
    fn external_name_endpoints_use_the_name() {
        let k = svc(
            json!({"type": "ExternalName", "externalName": "db.example.com", "ports": [{"name": "tcp", "port": 5432}]}),
        );
        let s = service(&k).unwrap();
        let eps = external_name_endpoints(&s, external_name(&k).unwrap());
        assert_eq!(eps.len(), 1);
        assert_eq!(
            (eps[0].address.as_str(), eps[0].port, eps[0].service_port_name.as_str()),
            ("db.example.com", 5432, "tcp")
        );
    }

    #[test]
    fn slice_health_table() {
        let cases = [
            (json!(null), Health::Healthy),
            (json!({"ready": true}), Health::Healthy),
            (json!({"ready": false, "serving": true, "terminating": true}), Health::Terminating),
            (json!({"ready": false, "serving": false, "terminating": true}), Health::Unhealthy),
            (json!({"ready": false}), Health::Unhealthy),
        ];
        for (conditions, want) in cases {
            let mut e = json!({"addresses": ["10.0.0.1"]});
            if !conditions.is_null() {
                e["conditions"] = conditions.clone();
            }
            let endpoint: SliceEndpoint = serde_json::from_value(e).unwrap();
            assert_eq!(slice_health(&endpoint), want, "{conditions}");
        }
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn sample_pods() -> Vec<Pod> {
        vec![
            pod(json!({
                "metadata": {"name": "reviews-1", "namespace": "default",
                             "labels": {"app": "reviews", "security.istio.io/tlsMode": "istio"}},
                "spec": {"containers": [], "serviceAccountName": "bookinfo-reviews", "nodeName": "node-a"},
                "status": {"podIP": "10.1.0.1", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            })),
            pod(json!({
                "metadata": {"name": "reviews-2", "namespace": "default",
                             "labels": {"app": "reviews", "istio-locality": "eu.eu-1"}},
                "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 9080}]}]},
                "status": {"podIP": "10.1.0.2", "phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]},
            })),
        ]
    }

    #[test]
    fn pod_localities_by_ip() {
        let mut pods = sample_pods();
        pods.push(pod(json!({
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"containers": [], "nodeName": "node-b"},
            "status": {"podIP": "10.1.0.3", "podIPs": [{"ip": "10.1.0.3"}, {"ip": "fd00::3"}]},
        })));
        let node_a: BTreeMap<String, String> =
            [(REGION_LABEL.to_owned(), "us".to_owned()), (ZONE_LABEL.to_owned(), "us-1".to_owned())].into();
        let node_b: BTreeMap<String, String> = [(ZONE_LABEL.to_owned(), "us-2".to_owned())].into();
        let workloads = Workloads::new(&pods, [("node-a", &node_a), ("node-b", &node_b)]);
        // The node's labels, the pod's own `istio-locality` label, and every IP of a pod.
        assert_eq!(
            workloads.localities_by_ip(),
            BTreeMap::from([
                ("10.1.0.1".to_owned(), "us/us-1".to_owned()),
                ("10.1.0.2".to_owned(), "eu/eu-1".to_owned()),
                ("10.1.0.3".to_owned(), "/us-2".to_owned()),
                ("fd00::3".to_owned(), "/us-2".to_owned()),
            ])
        );
    }

    #[test]
    fn slices_to_endpoints() {
        let k = svc(
            json!({"clusterIP": "10.0.0.9", "ports": [{"name": "http", "port": 9080}, {"name": "tcp-admin", "port": 9901}]}),
        );
        let s = service(&k).unwrap();
        let pods = sample_pods();
        let node_labels: BTreeMap<String, String> =
            [(REGION_LABEL.to_owned(), "us".to_owned()), (ZONE_LABEL.to_owned(), "us-1".to_owned())].into();
        let workloads = Workloads::new(&pods, [("node-a", &node_labels)]);
        let a = slice(json!({
            "metadata": {"name": "reviews-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 15020}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true}, "zone": "us-2",
                 "targetRef": {"kind": "Pod", "name": "reviews-1", "namespace": "default"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "targetRef": {"kind": "Pod", "name": "reviews-2", "namespace": "default"}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}},
            ],
        }));
        // A second slice repeating an address (mid-rebalance) must not duplicate it.
        let b = slice(json!({
            "metadata": {"name": "reviews-b", "namespace": "default", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.3"], "conditions": {"ready": true}}],
        }));
        let eps = slice_endpoints(&s, false, &[&a, &b], &workloads);
        let got: Vec<_> = eps
            .iter()
            .map(|e| {
                (
                    e.address.as_str(),
                    e.port,
                    e.service_port_name.as_str(),
                    e.health,
                    e.tls_mode.as_str(),
                    e.service_account.as_str(),
                    e.locality.as_str(),
                    e.workload.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("10.1.0.1", 8080, "http", Health::Healthy, "istio", "bookinfo-reviews", "us/us-2", "reviews-1"),
                ("10.1.0.2", 8080, "http", Health::Terminating, "", "default", "eu/eu-1", "reviews-2"),
                ("10.1.0.3", 8080, "http", Health::Healthy, "", "", "", ""),
            ]
        );
        assert_eq!(eps[0].labels["app"], "reviews");
        assert!(eps.iter().all(|e| e.namespace == "default"));

        let published = slice_endpoints(&s, true, &[&a], &workloads);
        assert!(published.iter().all(|e| e.health == Health::Healthy));
    }

    #[test]
    fn unnamed_single_port_matches_unnamed_slice_port() {
        let s = service(&svc(json!({"clusterIP": "10.0.0.9", "ports": [{"port": 80}]}))).unwrap();
        let sl = slice(json!({
            "metadata": {"name": "x", "namespace": "default", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.1"]}],
        }));
        let eps = slice_endpoints(&s, false, &[&sl], &Workloads::default());
        assert_eq!(eps.len(), 1);
        assert_eq!((eps[0].port, eps[0].service_port_name.as_str()), (8080, ""));
    }

    #[test]
    fn service_entry_selects_pods() {
        let entry: ServiceEntry = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "reviews-se", "namespace": "default"},
            "spec": {"hosts": ["reviews.mesh"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "targetPort": 8000}, {"number": 81, "name": "web"}],
                     "workloadSelector": {"labels": {"app": "reviews"}}},
        }))
        .unwrap();
        let pods = sample_pods();
        let workloads = Workloads::new(&pods, []);
        let by_host = selected_pod_endpoints(&entry, &workloads);
        let got: Vec<_> = by_host["reviews.mesh"]
            .iter()
            .map(|e| (e.address.as_str(), e.port, e.service_port_name.as_str(), e.health))
            .collect();
        assert_eq!(
            got,
            [
                ("10.1.0.1", 8000, "http", Health::Healthy),
                ("10.1.0.1", 81, "web", Health::Healthy),
                ("10.1.0.2", 9080, "http", Health::Unhealthy),
                ("10.1.0.2", 81, "web", Health::Unhealthy),
            ]
        );
    }
}
