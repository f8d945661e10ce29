//! Assembling a [`Snapshot`] from typed Istio objects plus services and endpoints that a
//! platform registry (Kubernetes) found. Shared by the file and Kubernetes sources.

use std::collections::BTreeMap;
use std::sync::Arc;

use rudder_config::IstioObject;
use rudder_config::mesh::MeshConfig;
use rudder_config::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};

use crate::model::{Endpoint, Service, Snapshot};

use super::service_entry::service_entries;

/// The Istio objects translation reads, by kind.
#[derive(Clone, Debug, Default)]
pub struct ConfigObjects {
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub sidecars: Vec<Sidecar>,
    pub gateways: Vec<Gateway>,
    pub service_entries: Vec<ServiceEntry>,
    pub workload_entries: Vec<WorkloadEntry>,
}

impl ConfigObjects {
    /// Files an object under its kind; kinds translation does not read are ignored.
    pub fn add(&mut self, object: IstioObject) {
        match object {
            IstioObject::VirtualService(o) => self.virtual_services.push(*o),
            IstioObject::DestinationRule(o) => self.destination_rules.push(*o),
            IstioObject::Sidecar(o) => self.sidecars.push(*o),
            IstioObject::Gateway(o) => self.gateways.push(*o),
            IstioObject::ServiceEntry(o) => self.service_entries.push(*o),
            IstioObject::WorkloadEntry(o) => self.workload_entries.push(*o),
            _ => {}
        }
    }
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn sorted<T>(mut items: Vec<T>, meta: impl Fn(&T) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<Arc<T>> {
    items.sort_by_key(|item| key(meta(item)));
    items.into_iter().map(Arc::new).collect()
}

/// Builds the snapshot: platform services first, then ServiceEntry hosts; on a duplicate
/// hostname the first wins (logged). Config objects are ordered by namespace/name.
pub fn assemble(
    mesh: &MeshConfig,
    objects: ConfigObjects,
    platform_services: Vec<Service>,
    platform_endpoints: BTreeMap<String, Vec<Endpoint>>,
) -> Snapshot {
    let (entry_services, entry_endpoints) = service_entries(&objects.service_entries, &objects.workload_entries);
    let mut services: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, Arc<Vec<Endpoint>>> = BTreeMap::new();
    let mut add = |service: Service, eps: Vec<Endpoint>| {
        if let Some(existing) = services.get(&service.hostname) {
            tracing::warn!(
                "host {} is declared by {}/{} and {}/{}; using the first",
                service.hostname,
                existing.namespace,
                existing.name,
                service.namespace,
                service.name
            );
            return;
        }
        endpoints.insert(service.hostname.clone(), Arc::new(eps));
        services.insert(service.hostname.clone(), Arc::new(service));
    };
    let mut platform_endpoints = platform_endpoints;
    for service in platform_services {
        let eps = platform_endpoints.remove(&service.hostname).unwrap_or_default();
        add(service, eps);
    }
    let mut entry_endpoints = entry_endpoints;
    for service in entry_services {
        let eps = entry_endpoints.remove(&service.hostname).unwrap_or_default();
        add(service, eps);
    }
    Snapshot {
        mesh: mesh.clone(),
        services,
        endpoints,
        virtual_services: sorted(objects.virtual_services, |o| &o.metadata),
        destination_rules: sorted(objects.destination_rules, |o| &o.metadata),
        sidecars: sorted(objects.sidecars, |o| &o.metadata),
        gateways: sorted(objects.gateways, |o| &o.metadata),
    }
}
