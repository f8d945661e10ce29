//! The name table: which mesh host names a proxy's agent answers in DNS, and with which
//! addresses. Discovery computes one per proxy namespace from the [`Snapshot`] and serves it
//! over ADS as NDS (the type Istio's agent asks for with DNS capture on); the agent's DNS
//! server ([`crate::agent::dns`]) answers from it.
//!
//! What goes in (Rudder's rules, close to Istio's):
//! - a Kubernetes Service `name.ns.svc.<domain>` with a ClusterIP: keyed by its hostname, with
//!   the alternative names `name.ns.svc` and `name.ns`, and the bare `name` only for proxies in
//!   `ns` (what the pod's search path would make of them);
//! - a headless Kubernetes Service (no ClusterIP): the addresses of its healthy endpoints;
//! - a ServiceEntry host with `addresses` (not a wildcard host): itself, no alternative names;
//! - only services the proxy's namespace can see (`exportTo`).
//!
//! Addresses that are not single IPs (CIDR ranges other than /32 and /128, the unspecified
//! address) are left out; a host left with none is not in the table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Health, Resolution, Service, Snapshot};

/// Type URL of [`NameTable`] (Istio's NDS).
pub const TYPE_URL: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/// Registry names as Istio reports them in [`NameInfo::registry`].
pub const REGISTRY_KUBERNETES: &str = "Kubernetes";
pub const REGISTRY_EXTERNAL: &str = "External";

/// Host names and their addresses, wire-compatible with Istio's
/// `istio.networking.nds.v1.NameTable` (a map keyed by host name). The map is a `BTreeMap` so
/// equal tables encode to equal bytes (the server tells changes by the bytes' hash).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NameTable {
    #[prost(btree_map = "string, message", tag = "1")]
    pub table: BTreeMap<String, NameInfo>,
}

/// One host: `istio.networking.nds.v1.NameTable.NameInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NameInfo {
    /// Addresses the host resolves to (IPv4 and IPv6 mixed).
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// `Kubernetes` or `External`.
    #[prost(string, tag = "2")]
    pub registry: String,
    /// Kubernetes services: the Service name.
    #[prost(string, tag = "3")]
    pub shortname: String,
    /// Kubernetes services: the Service namespace.
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Other names that resolve to the same addresses.
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

impl prost::Name for NameTable {
    const NAME: &'static str = "NameTable";
    const PACKAGE: &'static str = "istio.networking.nds.v1";
    fn type_url() -> String {
        TYPE_URL.to_owned()
    }
}

/// The name table for a proxy in `namespace`.
pub fn build(snapshot: &Snapshot, namespace: &str) -> NameTable {
    let mut table = BTreeMap::new();
    for service in snapshot.services.values() {
        if service.hostname.starts_with('*') || !service.visible_from(namespace) {
            continue;
        }
        let ips = addresses(snapshot, service);
        if ips.is_empty() {
            continue;
        }
        let info = if service.kubernetes {
            NameInfo {
                ips,
                registry: REGISTRY_KUBERNETES.to_owned(),
                shortname: service.name.clone(),
                namespace: service.namespace.clone(),
                alt_hosts: kubernetes_alt_hosts(service, namespace),
            }
        } else {
            NameInfo { ips, registry: REGISTRY_EXTERNAL.to_owned(), ..Default::default() }
        };
        table.insert(service.hostname.clone(), info);
    }
    NameTable { table }
}

/// The service's addresses as IP strings: its VIPs, or for a headless Kubernetes service the
/// addresses of its healthy endpoints. Sorted, without duplicates.
fn addresses(snapshot: &Snapshot, service: &Service) -> Vec<String> {
    let mut ips: BTreeSet<IpAddr> = service.addresses.iter().filter_map(|a| single_ip(a)).collect();
    if ips.is_empty() && service.kubernetes && service.resolution == Resolution::Passthrough {
        ips = snapshot
            .endpoints_of(&service.hostname)
            .iter()
            .filter(|e| e.health == Health::Healthy)
            .filter_map(|e| single_ip(&e.address))
            .collect();
    }
    ips.into_iter().map(|ip| ip.to_string()).collect()
}

/// `a.b.c.d`, `a.b.c.d/32`, `v6`, `v6/128` → the IP; ranges and `0.0.0.0`/`::` → `None`.
fn single_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let ip: IpAddr = match text.split_once('/') {
        None => text.parse().ok()?,
        Some((ip, prefix)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            if prefix != full {
                return None;
            }
            ip
        }
    };
    (!ip.is_unspecified()).then_some(ip)
}

/// `name.ns.svc`, `name.ns` and, for a proxy in `ns`, `name`; none when the hostname is not
/// of the `name.ns.svc.<domain>` form.
fn kubernetes_alt_hosts(service: &Service, proxy_namespace: &str) -> Vec<String> {
    let prefix = format!("{}.{}.svc.", service.name, service.namespace);
    if !service.hostname.starts_with(&prefix) || service.hostname.len() == prefix.len() {
        return Vec::new();
    }
    let mut alt =
        vec![format!("{}.{}.svc", service.name, service.namespace), format!("{}.{}", service.name, service.namespace)];
    if proxy_namespace == service.namespace {
        alt.push(service.name.clone());
    }
    alt
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::*;
    use crate::model::Endpoint;

    fn service(hostname: &str, namespace: &str, name: &str, addresses: &[&str], kubernetes: bool) -> Service {
        Service {
            hostname: hostname.into(),
            namespace: namespace.into(),
            name: name.into(),
            ports: Vec::new(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            resolution: Resolution::ClientSideLb,
            mesh_external: false,
            export_to: Vec::new(),
            kubernetes,
            traffic_distribution: Default::default(),
            subject_alt_names: Vec::new(),
        }
    }

    fn snapshot(services: Vec<Service>) -> Snapshot {
        Snapshot {
            services: services.into_iter().map(|s| (s.hostname.clone(), Arc::new(s))).collect(),
            ..Default::default()
        }
    }

    /// (host, alt hosts) in table order.
    type Expected = Vec<(&'static str, Vec<&'static str>)>;

    fn names(table: &NameTable) -> Vec<(String, Vec<String>)> {
        table.table.iter().map(|(host, info)| (host.clone(), info.alt_hosts.clone())).collect()
    }

    #[test]
    fn table() {
        let headless = Service {
            resolution: Resolution::Passthrough,
            ..service("db.data.svc.cluster.local", "data", "db", &[], true)
        };
        let mut snap = snapshot(vec![
            service("httpbin.testns1.svc.cluster.local", "testns1", "httpbin", &["127.0.10.5"], true),
            service("reviews.bookinfo.svc.corp.example", "bookinfo", "reviews", &["127.0.10.6", "fd00::6"], true),
            service("nocip.testns1.svc.cluster.local", "testns1", "nocip", &[], true),
            service("api.example.com", "testns1", "ext", &["127.0.20.1/32"], false),
            service("*.wild.example.com", "testns1", "wild", &["127.0.20.2"], false),
            service("range.example.com", "testns1", "range", &["127.0.0.0/16"], false),
            service("unspecified.example.com", "testns1", "u", &["0.0.0.0"], false),
            service("noaddr.example.com", "testns1", "n", &[], false),
            service("hidden.other.svc.cluster.local", "other", "hidden", &["127.0.10.9"], true),
            headless,
        ]);
        let hidden = snap.services.get_mut("hidden.other.svc.cluster.local").unwrap();
        Arc::make_mut(hidden).export_to = vec![".".into()];
        let ready = Endpoint::plain("127.0.30.1", 5432, "tcp", "data");
        let mut unready = Endpoint::plain("127.0.30.2", 5432, "tcp", "data");
        unready.health = Health::Unhealthy;
        let mut leaving = Endpoint::plain("127.0.30.3", 5432, "tcp", "data");
        leaving.health = Health::Terminating;
        snap.endpoints.insert("db.data.svc.cluster.local".into(), Arc::new(vec![ready, unready, leaving]));

        // (proxy namespace, expected (host, alt hosts))
        let cases: [(&str, Expected); 2] = [
            (
                "testns1",
                vec![
                    ("api.example.com", vec![]),
                    ("db.data.svc.cluster.local", vec!["db.data.svc", "db.data"]),
                    ("httpbin.testns1.svc.cluster.local", vec!["httpbin.testns1.svc", "httpbin.testns1", "httpbin"]),
                    ("reviews.bookinfo.svc.corp.example", vec!["reviews.bookinfo.svc", "reviews.bookinfo"]),
                ],
            ),
            (
                "other",
                vec![
                    ("api.example.com", vec![]),
                    ("db.data.svc.cluster.local", vec!["db.data.svc", "db.data"]),
                    ("hidden.other.svc.cluster.local", vec!["hidden.other.svc", "hidden.other", "hidden"]),
                    ("httpbin.testns1.svc.cluster.local", vec!["httpbin.testns1.svc", "httpbin.testns1"]),
                    ("reviews.bookinfo.svc.corp.example", vec!["reviews.bookinfo.svc", "reviews.bookinfo"]),
                ],
            ),
        ];
        for (namespace, want) in cases {
            let want: Vec<(String, Vec<String>)> =
                want.into_iter().map(|(h, alt)| (h.to_owned(), alt.into_iter().map(str::to_owned).collect())).collect();
            assert_eq!(names(&build(&snap, namespace)), want, "proxy in {namespace}");
        }

        let table = build(&snap, "testns1").table;
        let httpbin = &table["httpbin.testns1.svc.cluster.local"];
        assert_eq!(
            (httpbin.registry.as_str(), httpbin.shortname.as_str(), httpbin.namespace.as_str()),
            ("Kubernetes", "httpbin", "testns1")
        );
        assert_eq!(table["reviews.bookinfo.svc.corp.example"].ips, ["127.0.10.6", "fd00::6"]);
        let api = &table["api.example.com"];
        assert_eq!(
            (api.ips.as_slice(), api.registry.as_str(), api.shortname.as_str()),
            (&["127.0.20.1".to_owned()][..], "External", "")
        );
        assert_eq!(table["db.data.svc.cluster.local"].ips, ["127.0.30.1"]);
    }

    #[test]
    fn single_ips_only() {
        for (text, want) in [
            ("127.0.0.1", Some("127.0.0.1")),
            (" 127.0.0.1/32 ", Some("127.0.0.1")),
            ("fd00::1/128", Some("fd00::1")),
            ("10.0.0.0/8", None),
            ("::", None),
            ("0.0.0.0/32", None),
            ("example.com", None),
        ] {
            assert_eq!(single_ip(text).map(|ip| ip.to_string()).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn encodes_deterministically_with_istio_type_url() {
        let snap = snapshot(vec![
            service("a.ns.svc.cluster.local", "ns", "a", &["127.0.0.2"], true),
            service("b.example.com", "ns", "b", &["127.0.0.3"], false),
        ]);
        let one = build(&snap, "ns").encode_to_vec();
        let two = build(&snap, "ns").encode_to_vec();
        assert_eq!(one, two);
        assert_eq!(NameTable::decode(one.as_slice()).unwrap(), build(&snap, "ns"));
        assert_eq!(<NameTable as prost::Name>::type_url(), TYPE_URL);
    }
}
