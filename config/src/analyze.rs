//! Cross-object analysis, as `istioctl analyze` does it: what no single object's validation can
//! see. Pure: the objects in, messages out; `rudder analyze` gathers them from files or a
//! cluster.
//!
//! Checks:
//! - a VirtualService naming a gateway that does not exist (Error IST0101);
//! - a VirtualService routing to a subset no DestinationRule of that host defines (Error
//!   IST0101), or to a host no Service or ServiceEntry declares (Warning IST0101);
//! - a DestinationRule whose host no Service or ServiceEntry declares (Warning IST0101);
//! - a namespace with both the `istio-injection` and the `istio.io/rev` label (Warning
//!   IST0123): which control plane injects its pods is ambiguous;
//! - two sidecar-injection webhooks (`…/inject` paths) of different configurations that both
//!   select one namespace (Error RDR0001): a pod there would be injected twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::IstioObject;
use crate::hosts::{host_matches, resolve_host};
use crate::load::Loaded;
use crate::networking::virtual_service::Destination;

/// Suffix of Kubernetes service hostnames.
const SERVICE_SUFFIX: &str = "svc.cluster.local";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// One finding, printed as istioctl prints them:
/// `Error [IST0101] (VirtualService httpbin.default) Referenced gateway not found: "bogus"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    pub level: Level,
    pub code: &'static str,
    /// `<Kind> <name>.<namespace>` (`<Kind> <name>` for cluster-scoped objects).
    pub resource: String,
    pub text: String,
    /// Where the object came from (`file:doc`), when it came from a file.
    pub origin: Option<String>,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({}) {}", self.level, self.code, self.resource, self.text)?;
        if let Some(origin) = &self.origin {
            write!(f, " [{origin}]")?;
        }
        Ok(())
    }
}

/// A namespace as analysis sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub origin: Option<String>,
}

/// Everything analysed together.
#[derive(Debug, Default)]
pub struct Inputs {
    pub objects: Vec<Loaded>,
    /// Kubernetes Services as `<name>.<namespace>`.
    pub services: Vec<String>,
    pub namespaces: Vec<NamespaceInfo>,
    pub webhooks: Vec<(MutatingWebhookConfiguration, Option<String>)>,
}

pub fn analyze(inputs: &Inputs) -> Vec<Message> {
    let mut out = Vec::new();
    let hosts = Hosts::of(inputs);
    references(inputs, &hosts, &mut out);
    injection_labels(inputs, &mut out);
    overlapping_webhooks(inputs, &mut out);
    out.sort();
    out.dedup();
    out
}

fn resource(kind: &str, name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{kind} {name}.{ns}"),
        None => format!("{kind} {name}"),
    }
}

/// Every host a Service or ServiceEntry declares.
struct Hosts(BTreeSet<String>);

impl Hosts {
    fn of(inputs: &Inputs) -> Self {
        let mut hosts: BTreeSet<String> = inputs.services.iter().map(|s| format!("{s}.{SERVICE_SUFFIX}")).collect();
        for loaded in &inputs.objects {
            if let IstioObject::ServiceEntry(se) = &loaded.object {
                let ns = se.metadata.namespace.as_deref().unwrap_or("default");
                hosts.extend(se.spec.hosts.iter().map(|h| resolve_host(h, ns)));
            }
        }
        Self(hosts)
    }

    /// Whether `host` is declared: exactly, or covered by a wildcard ServiceEntry host.
    /// `namespace.svc.cluster.local` short forms like `name.ns` are resolved as Kubernetes does.
    fn knows(&self, host: &str) -> bool {
        if host.contains('*') {
            return true;
        }
        let long = match host.split('.').count() {
            2 => format!("{host}.{SERVICE_SUFFIX}"),
            3 if host.ends_with(".svc") => format!("{host}.cluster.local"),
            _ => host.to_owned(),
        };
        self.0.contains(host)
            || self.0.contains(&long)
            || self.0.iter().any(|h| h.starts_with('*') && host_matches(h, host))
    }
}

fn origin(loaded: &Loaded) -> Option<String> {
    (loaded.source.file != "cluster").then(|| loaded.source.to_string())
}

fn references(inputs: &Inputs, hosts: &Hosts, out: &mut Vec<Message>) {
    let gateways: BTreeSet<String> = inputs
        .objects
        .iter()
        .filter_map(|l| match &l.object {
            IstioObject::Gateway(g) => Some(format!(
                "{}/{}",
                g.metadata.namespace.as_deref().unwrap_or("default"),
                g.metadata.name.as_deref().unwrap_or_default()
            )),
            _ => None,
        })
        .collect();
    // (resolved host, subset names) of every DestinationRule.
    let rules: Vec<(String, BTreeSet<&str>)> = inputs
        .objects
        .iter()
        .filter_map(|l| match &l.object {
            IstioObject::DestinationRule(dr) => {
                let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
                Some((resolve_host(&dr.spec.host, ns), dr.spec.subsets.iter().map(|s| s.name.as_str()).collect()))
            }
            _ => None,
        })
        .collect();

    for loaded in &inputs.objects {
        match &loaded.object {
            IstioObject::VirtualService(vs) => {
                let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
                let name = vs.metadata.name.as_deref().unwrap_or_default();
                let at = resource("VirtualService", name, Some(ns));
                let mut message = |level, text: String| {
                    out.push(Message { level, code: "IST0101", resource: at.clone(), text, origin: origin(loaded) });
                };
                let named_gateways = vs
                    .spec
                    .gateways
                    .iter()
                    .chain(vs.spec.http.iter().flat_map(|h| h.r#match.iter().flat_map(|m| m.gateways.iter())));
                for gateway in named_gateways.filter(|g| g.as_str() != "mesh") {
                    let full = if gateway.contains('/') { gateway.clone() } else { format!("{ns}/{gateway}") };
                    if !gateways.contains(&full) {
                        message(Level::Error, format!("Referenced gateway not found: {gateway:?}"));
                    }
                }
                for destination in destinations(vs) {
                    let host = resolve_host(&destination.host, ns);
                    if !hosts.knows(&host) {
                        message(Level::Warning, format!("Referenced host not found: {:?}", destination.host));
                    }
                    if !destination.subset.is_empty()
                        && !rules
                            .iter()
                            .any(|(h, subsets)| host_matches(h, &host) && subsets.contains(destination.subset.as_str()))
                    {
                        message(
                            Level::Error,
                            format!(
                                "Referenced host+subset in destinationrule not found: \"{}+{}\"",
                                destination.host, destination.subset
                            ),
                        );
                    }
                }
            }
            IstioObject::DestinationRule(dr) => {
                let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
                if !hosts.knows(&resolve_host(&dr.spec.host, ns)) {
                    out.push(Message {
                        level: Level::Warning,
                        code: "IST0101",
                        resource: resource(
                            "DestinationRule",
                            dr.metadata.name.as_deref().unwrap_or_default(),
                            Some(ns),
                        ),
                        text: format!("Referenced host not found: {:?}", dr.spec.host),
                        origin: origin(loaded),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Every destination a VirtualService routes or mirrors to.
fn destinations(vs: &crate::networking::VirtualService) -> Vec<&Destination> {
    let spec = &vs.spec;
    let http = spec.http.iter().flat_map(|h| {
        h.route
            .iter()
            .filter_map(|r| r.destination.as_ref())
            .chain(h.mirror.as_ref())
            .chain(h.mirrors.iter().filter_map(|m| m.destination.as_ref()))
    });
    let tcp = spec.tcp.iter().flat_map(|t| t.route.iter().filter_map(|r| r.destination.as_ref()));
    let tls = spec.tls.iter().flat_map(|t| t.route.iter().filter_map(|r| r.destination.as_ref()));
    http.chain(tcp).chain(tls).filter(|d| !d.host.is_empty()).collect()
}

fn injection_labels(inputs: &Inputs, out: &mut Vec<Message>) {
    for ns in &inputs.namespaces {
        if let (Some(legacy), Some(rev)) = (ns.labels.get("istio-injection"), ns.labels.get("istio.io/rev")) {
            out.push(Message {
                level: Level::Warning,
                code: "IST0123",
                resource: resource("Namespace", &ns.name, None),
                text: format!(
                    "The namespace has both the legacy injection label istio-injection={legacy} and istio.io/rev={rev}; \
                     istio-injection wins and the revision label is ignored. Remove one: \
                     kubectl label namespace {0} istio.io/rev- or kubectl label namespace {0} istio-injection-",
                    ns.name
                ),
                origin: ns.origin.clone(),
            });
        }
    }
}

fn overlapping_webhooks(inputs: &Inputs, out: &mut Vec<Message>) {
    // (configuration, webhook name, namespace selector) of every injection webhook.
    let mut injectors = Vec::new();
    for (config, origin) in &inputs.webhooks {
        let config_name = config.metadata.name.as_deref().unwrap_or_default();
        for webhook in config.webhooks.iter().flatten() {
            let path = webhook.client_config.service.as_ref().and_then(|s| s.path.as_deref()).unwrap_or_default();
            let url = webhook.client_config.url.as_deref().unwrap_or_default();
            if path.contains("/inject") || url.contains("/inject") {
                injectors.push((config_name, webhook.name.as_str(), webhook.namespace_selector.as_ref(), origin));
            }
        }
    }
    for ns in &inputs.namespaces {
        let selecting: Vec<_> =
            injectors.iter().filter(|(_, _, selector, _)| selector_matches(*selector, &ns.labels)).collect();
        let configurations: BTreeSet<&str> = selecting.iter().map(|(config, _, _, _)| *config).collect();
        if configurations.len() < 2 {
            continue;
        }
        let names: Vec<String> =
            selecting.iter().map(|(config, webhook, _, _)| format!("{config}/{webhook}")).collect();
        for config in configurations {
            out.push(Message {
                level: Level::Error,
                code: "RDR0001",
                resource: resource("MutatingWebhookConfiguration", config, None),
                text: format!(
                    "Injection webhooks of different configurations all select namespace {}: {}; its pods would be injected more than once",
                    ns.name,
                    names.join(", ")
                ),
                origin: selecting.iter().find(|(c, _, _, _)| *c == config).and_then(|(_, _, _, o)| (*o).clone()),
            });
        }
    }
}

/// Whether a Kubernetes label selector selects `labels` (no selector selects everything).
pub fn selector_matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else { return true };
    let exact = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    exact && expressions
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::load::load_str;

    fn inputs(yaml: &str) -> Inputs {
        let loads = load_str("mesh.yaml", yaml).unwrap();
        Inputs { objects: loads.objects, services: vec!["httpbin.testns1".into()], ..Default::default() }
    }

    fn texts(messages: &[Message]) -> Vec<String> {
        messages.iter().map(|m| m.to_string()).collect()
    }

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: testns1}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: testns1}
spec:
  host: httpbin
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: testns1}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#;

    #[test]
    fn a_consistent_mesh_has_nothing_to_report() {
        let ok = format!(
            "{MESH}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: testns1}}
spec:
  hosts: [httpbin, api.example.com]
  gateways: [gw, mesh, testns1/gw]
  http:
  - route: [{{destination: {{host: httpbin, subset: v1}}}}, {{destination: {{host: api.example.com}}}}]
"
        );
        assert_eq!(texts(&analyze(&inputs(&ok))), Vec::<String>::new());
    }

    #[test]
    fn missing_gateways_subsets_and_hosts_are_reported() {
        let broken = format!(
            "{MESH}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: broken, namespace: testns1}}
spec:
  hosts: [httpbin]
  gateways: [bogus-gateway, other/gw]
  http:
  - route: [{{destination: {{host: httpbin, subset: v3}}}}]
    mirror: {{host: nowhere}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: orphan, namespace: testns1}}
spec:
  host: ratings
"
        );
        assert_eq!(
            texts(&analyze(&inputs(&broken))),
            [
                r#"Error [IST0101] (VirtualService broken.testns1) Referenced gateway not found: "bogus-gateway" [mesh.yaml:4]"#,
                r#"Error [IST0101] (VirtualService broken.testns1) Referenced gateway not found: "other/gw" [mesh.yaml:4]"#,
                r#"Error [IST0101] (VirtualService broken.testns1) Referenced host+subset in destinationrule not found: "httpbin+v3" [mesh.yaml:4]"#,
                r#"Warning [IST0101] (DestinationRule orphan.testns1) Referenced host not found: "ratings" [mesh.yaml:5]"#,
                r#"Warning [IST0101] (VirtualService broken.testns1) Referenced host not found: "nowhere" [mesh.yaml:4]"#,
            ]
        );
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            origin: None,
        }
    }

    fn injector(name: &str, selector: serde_json::Value) -> MutatingWebhookConfiguration {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": format!("{name}.sidecar-injector.istio.io"),
                "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}},
                "namespaceSelector": selector,
                "sideEffects": "None", "admissionReviewVersions": ["v1"]
            }]
        }))
        .unwrap()
    }

    #[test]
    fn ambiguous_injection_labels_and_overlapping_webhooks_are_reported() {
        let inputs = Inputs {
            namespaces: vec![
                namespace("both", &[("istio-injection", "enabled"), ("istio.io/rev", "canary")]),
                namespace("legacy", &[("istio-injection", "enabled")]),
                namespace("canary", &[("istio.io/rev", "canary")]),
            ],
            webhooks: vec![
                (
                    injector(
                        "istio-sidecar-injector",
                        serde_json::json!({"matchLabels": {"istio-injection": "enabled"}}),
                    ),
                    None,
                ),
                (
                    injector(
                        "istio-sidecar-injector-canary",
                        serde_json::json!({"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": ["canary"]}]}),
                    ),
                    None,
                ),
            ],
            ..Default::default()
        };
        let messages = texts(&analyze(&inputs));
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].starts_with("Error [RDR0001] (MutatingWebhookConfiguration istio-sidecar-injector) Injection webhooks of different configurations all select namespace both"), "{messages:#?}");
        assert!(
            messages[1].starts_with("Error [RDR0001] (MutatingWebhookConfiguration istio-sidecar-injector-canary)")
        );
        assert!(messages[2].starts_with("Warning [IST0123] (Namespace both) The namespace has both"), "{messages:#?}");
    }
}
