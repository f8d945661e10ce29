//! A deterministic synthetic mesh for benchmarks (`rudder bench mesh`, the translation bench):
//! `services` services of `ports` HTTP ports each, every one with `endpoints` workloads, one
//! VirtualService (a header match plus a 90/10 split) and one DestinationRule (two subsets,
//! LEAST_REQUEST, a connection pool).
//!
//! Services are described as discovery sees hosts outside Kubernetes: a STATIC ServiceEntry
//! selecting WorkloadEntries. Addresses are fake (`10.128.0.0/9`); nothing ever connects to
//! them. The same arguments always give the same text, and [`snapshot`] goes through the
//! same loading and merging as `rudder discovery --config-dir`, so a bench measures what
//! discovery would serve.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rudder_config::IstioObject;
use rudder_config::load;
use rudder_config::mesh::MeshConfig;

use rudder_xds::model::Snapshot;
use rudder_xds::registry::kube::{KubeInputs, build_snapshot};

/// Namespace every synthetic object lives in (and the natural namespace for load clients).
pub const NAMESPACE: &str = "bench";

/// First service port; the others follow (8080, 8081, …).
pub const FIRST_PORT: u32 = 8080;

/// Hostname of service `index`.
pub fn hostname(index: usize) -> String {
    format!("svc-{index}.{NAMESPACE}.svc.cluster.local")
}

/// The outbound RouteConfiguration names a sidecar of this mesh subscribes to (one per port).
pub fn route_names(ports: usize) -> Vec<String> {
    (0..ports).map(|p| (FIRST_PORT + p as u32).to_string()).collect()
}

/// One YAML file per service: `(file name, text)`, in service order.
pub fn mesh(services: usize, ports: usize, endpoints: usize) -> Vec<(String, String)> {
    mesh_in_zones(services, ports, endpoints, 0)
}

/// [`mesh`] with its workloads spread over `zones` zones of one region (`region-1/zone-<i>`,
/// workload `e` in zone `e % zones`) and outlier detection in every DestinationRule, so that
/// Istio's default locality failover applies to every cluster. 0 zones is [`mesh`].
pub fn mesh_in_zones(services: usize, ports: usize, endpoints: usize, zones: usize) -> Vec<(String, String)> {
    (0..services).map(|index| (format!("svc-{index:05}.yaml"), service_yaml(index, ports, endpoints, zones))).collect()
}

/// The locality of zone `zone` of the synthetic mesh (see [`mesh_in_zones`]).
pub fn zone_locality(zone: usize) -> (String, String) {
    ("region-1".to_owned(), format!("zone-{zone}"))
}

/// The address of workload `endpoint` of service `service`: unique per pair, in 10.128.0.0/9.
fn address(service: usize, endpoint: usize, endpoints: usize) -> String {
    let n = service * endpoints.max(1) + endpoint;
    format!("10.{}.{}.{}", 128 + ((n >> 16) & 0x7f), (n >> 8) & 0xff, n & 0xff)
}

/// Every object of one service, as a multi-document YAML text.
fn service_yaml(index: usize, ports: usize, endpoints: usize, zones: usize) -> String {
    let name = format!("svc-{index}");
    let host = hostname(index);
    let mut text = String::new();
    // Writing to a String cannot fail; `let _` keeps the format calls readable.
    let _ = write!(
        text,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
         spec:\n  hosts:\n  - {host}\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n"
    );
    for p in 0..ports {
        let number = FIRST_PORT + p as u32;
        let _ = write!(text, "  - number: {number}\n    name: http-{p}\n    protocol: HTTP\n");
    }
    let _ = write!(text, "  workloadSelector:\n    labels:\n      app: {name}\n");
    for e in 0..endpoints {
        let version = if e % 2 == 0 { "v1" } else { "v2" };
        let _ = write!(
            text,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}-{e}\n  \
             namespace: {NAMESPACE}\nspec:\n  address: {}\n  labels:\n    app: {name}\n    version: {version}\n  \
             serviceAccount: {name}\n",
            address(index, e, endpoints)
        );
        if zones > 0 {
            let (region, zone) = zone_locality(e % zones);
            let _ = writeln!(text, "  locality: {region}/{zone}");
        }
    }
    let _ = write!(
        text,
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
         spec:\n  hosts:\n  - {host}\n  http:\n  - name: canary\n    match:\n    - headers:\n        end-user:\n          \
         exact: canary\n    route:\n    - destination:\n        host: {host}\n        subset: v2\n  - name: split\n    \
         route:\n    - destination:\n        host: {host}\n        subset: v1\n      weight: 90\n    - destination:\n        \
         host: {host}\n        subset: v2\n      weight: 10\n    timeout: 5s\n"
    );
    let _ = write!(
        text,
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    loadBalancer:\n      simple: LEAST_REQUEST\n    connectionPool:\n      \
         tcp:\n        maxConnections: 100\n      http:\n        http1MaxPendingRequests: 64\n        \
         maxRequestsPerConnection: 10\n"
    );
    if zones > 0 {
        let _ = write!(text, "    outlierDetection:\n      consecutive5xxErrors: 5\n");
    }
    let _ = write!(
        text,
        "  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n"
    );
    text
}

/// Writes the mesh into `dir` (created if missing), one file per service.
pub fn write_dir(dir: &Path, services: usize, ports: usize, endpoints: usize) -> std::io::Result<()> {
    write_dir_in_zones(dir, services, ports, endpoints, 0)
}

/// [`write_dir`] of [`mesh_in_zones`].
pub fn write_dir_in_zones(
    dir: &Path,
    services: usize,
    ports: usize,
    endpoints: usize,
    zones: usize,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, text) in mesh_in_zones(services, ports, endpoints, zones) {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(())
}

/// The snapshot discovery builds from this mesh (Istio's default MeshConfig): the YAML is
/// loaded and merged exactly as the config-directory registry does.
pub fn snapshot(services: usize, ports: usize, endpoints: usize) -> Snapshot {
    snapshot_of(mesh(services, ports, endpoints))
}

/// Loads and merges `(file, text)` pairs as the config-directory registry does.
fn snapshot_of(files: impl IntoIterator<Item = (String, String)>) -> Snapshot {
    let mut inputs = KubeInputs::default();
    for (file, text) in files {
        let Ok(loads) = load::load_str(&file, &text) else { continue };
        for loaded in loads.objects {
            match loaded.object {
                IstioObject::VirtualService(o) => inputs.virtual_services.push(Arc::new(*o)),
                IstioObject::DestinationRule(o) => inputs.destination_rules.push(Arc::new(*o)),
                IstioObject::ServiceEntry(o) => inputs.service_entries.push(Arc::new(*o)),
                IstioObject::WorkloadEntry(o) => inputs.workload_entries.push(Arc::new(*o)),
                IstioObject::Sidecar(o) => inputs.sidecars.push(Arc::new(*o)),
                _ => {}
            }
        }
    }
    build_snapshot(&inputs, &MeshConfig::istio_defaults())
}

/// The same mesh spread over `namespaces` namespaces (`bench-0`, `bench-1`, …; service `i`
/// in `bench-<i % namespaces>`, host `svc-i.bench-<k>.svc.cluster.local`): what Sidecar
/// scoping to one namespace is measured on.
pub fn snapshot_in_namespaces(services: usize, ports: usize, endpoints: usize, namespaces: usize) -> Snapshot {
    let namespaces = namespaces.max(1);
    let files = mesh(services, ports, endpoints).into_iter().enumerate().map(|(index, (file, text))| {
        let namespace = format!("{NAMESPACE}-{}", index % namespaces);
        let text = text
            .replace(&format!(".{NAMESPACE}.svc."), &format!(".{namespace}.svc."))
            .replace(&format!("namespace: {NAMESPACE}\n"), &format!("namespace: {namespace}\n"));
        (file, text)
    });
    snapshot_of(files)
}

/// Flips the first `version: v1`/`v2` label of a file (the first WorkloadEntry's): an
/// endpoint-only change, since versions only pick subset members. Returns whether it found one.
pub fn flip_first_version(text: &str) -> (String, bool) {
    let Some(workload) = text.find("kind: WorkloadEntry\n") else { return (text.to_owned(), false) };
    let Some(at) = text[workload..].find("version: v").map(|i| workload + i + "version: v".len()) else {
        return (text.to_owned(), false);
    };
    let flipped = match text[at..].chars().next() {
        Some('1') => '2',
        Some('2') => '1',
        _ => return (text.to_owned(), false),
    };
    (format!("{}{flipped}{}", &text[..at], &text[at + 1..]), true)
}

/// Flips every `weight: N` line of a file to `weight: 100-N` (90/10 becomes 10/90 and back):
/// a real route change for a bench to time. Returns how many weights changed.
pub fn flip_weights(text: &str) -> (String, usize) {
    let mut flipped = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let weight = trimmed.strip_prefix("weight:").and_then(|w| w.trim().parse::<u32>().ok()).filter(|w| *w <= 100);
        match weight {
            Some(w) => {
                let indent = &line[..line.len() - trimmed.len()];
                let newline = if line.ends_with('\n') { "\n" } else { "" };
                let _ = write!(out, "{indent}weight: {}{newline}", 100 - w);
                flipped += 1;
            }
            None => out.push_str(line),
        }
    }
    (out, flipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_has_every_object() {
        let snapshot = snapshot(3, 4, 10);
        assert_eq!(snapshot.services.len(), 3);
        assert_eq!(snapshot.services[&hostname(1)].ports.len(), 4);
        assert_eq!(snapshot.endpoints_of(&hostname(2)).len(), 40, "10 workloads × 4 ports");
        assert_eq!(snapshot.virtual_services.len(), 3);
        assert_eq!(snapshot.destination_rules.len(), 3);
    }

    /// Workloads in zones, rules with outlier detection: every cluster fails over by locality.
    #[test]
    fn a_mesh_in_zones_places_workloads_and_detects_outliers() {
        let zoned = snapshot_of(mesh_in_zones(2, 1, 4, 2));
        let zones: Vec<&str> = zoned.endpoints_of(&hostname(1)).iter().map(|e| e.locality.as_str()).collect();
        assert_eq!(zones, ["region-1/zone-0", "region-1/zone-1", "region-1/zone-0", "region-1/zone-1"]);
        assert!(zoned.destination_rules.iter().all(|rule| {
            rule.spec.traffic_policy.as_ref().is_some_and(|policy| policy.outlier_detection.is_some())
        }));
        let plain = snapshot(2, 1, 4);
        assert!(plain.endpoints_of(&hostname(1)).iter().all(|e| e.locality.is_empty()));
        assert_eq!(plain.destination_rules.len(), zoned.destination_rules.len());
    }

    #[test]
    fn generation_is_deterministic_and_addresses_unique() {
        assert_eq!(mesh(5, 2, 3), mesh(5, 2, 3));
        let mut addresses: Vec<String> = (0..300).flat_map(|s| (0..10).map(move |e| address(s, e, 10))).collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 3000);
    }

    #[test]
    fn the_first_version_label_flips_back_and_forth() {
        let text = service_yaml(0, 1, 2, 0);
        let (once, found) = flip_first_version(&text);
        assert!(found);
        assert_ne!(once, text);
        assert_eq!(flip_first_version(&once).0, text);
    }

    #[test]
    fn weights_flip_back_and_forth() {
        let (_, text) = &mesh(1, 1, 1)[0];
        let (flipped, count) = flip_weights(text);
        assert_eq!(count, 2);
        assert!(flipped.contains("weight: 10\n") && flipped.contains("weight: 90\n"));
        assert_ne!(&flipped, text);
        assert_eq!(&flip_weights(&flipped).0, text);
    }
}
