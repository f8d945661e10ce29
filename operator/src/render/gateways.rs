//! The IngressGateways and EgressGateways components: every enabled entry of
//! `components.ingressGateways[]` / `egressGateways[]` becomes its own ServiceAccount,
//! `<name>-sds` Role/RoleBinding, Deployment (`<hub>/rudder-proxy:<tag>`), Service, HPA and PDB.
//! Chart-level settings come from `values.gateways.istio-{ingress,egress}gateway` for every
//! gateway of that kind; the entry's own `label`, `namespace`, `hub`, `tag` and `k8s` win.
//! Gateway names carry no revision; their objects are labelled with it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodSecurityContext, PodSpec, Probe, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rudder_config::labels;
use rudder_config::operator::GatewaySpec;

use super::objects::{deployment_of, labels_of, meta, rendered};
use super::pilot::{resources, restricted};
use super::values::Context;
use super::workload::{self, Scaling};
use super::{PROXY_IMAGE, RenderError, k8s, rbac};
use crate::manifest::{Component, RenderedObject};

/// Ingress or egress: what differs between the two kinds.
#[derive(Clone, Copy, Debug)]
struct Kind {
    component: Component,
    /// Key under `values.gateways`.
    values_key: &'static str,
    /// Value of the `istio` label.
    istio: &'static str,
    service_type: &'static str,
}

const INGRESS: Kind = Kind {
    component: Component::IngressGateways,
    values_key: "istio-ingressgateway",
    istio: "ingressgateway",
    service_type: "LoadBalancer",
};
const EGRESS: Kind = Kind {
    component: Component::EgressGateways,
    values_key: "istio-egressgateway",
    istio: "egressgateway",
    service_type: "ClusterIP",
};

/// Every enabled gateway's objects.
pub fn render(ctx: &Context) -> Result<Vec<RenderedObject>, RenderError> {
    let components = ctx.components();
    let mut out = Vec::new();
    for (kind, list) in [(INGRESS, &components.ingress_gateways), (EGRESS, &components.egress_gateways)] {
        for gw in list.iter().filter(|g| g.enabled.unwrap_or(true)) {
            out.extend(gateway(ctx, kind, gw)?);
        }
    }
    Ok(out)
}

/// One gateway's resolved identity.
struct Gw<'a> {
    ctx: &'a Context,
    kind: Kind,
    name: String,
    ns: String,
    selector: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    values: String,
}

impl Gw<'_> {
    fn value_path(&self, key: &str) -> String {
        format!("{}.{key}", self.values)
    }
}

fn gateway(ctx: &Context, kind: Kind, spec: &GatewaySpec) -> Result<Vec<RenderedObject>, RenderError> {
    let name = if spec.name.is_empty() { kind.values_key.to_owned() } else { spec.name.clone() };
    let app = name.clone();
    let mut selector = labels_of(&[(labels::APP, &app), (labels::ISTIO, kind.istio)]);
    selector.extend(spec.label.clone());
    let mut object_labels = selector.clone();
    object_labels.insert(labels::REVISION.into(), ctx.rev_label().into());
    let gw = Gw {
        ctx,
        kind,
        ns: if spec.namespace.is_empty() { ctx.namespace.clone() } else { spec.namespace.clone() },
        name,
        selector,
        labels: object_labels,
        values: format!("gateways.{}", kind.values_key),
    };
    let k8s = spec.k8s.clone().unwrap_or_default();
    let c = kind.component;
    let account = format!("{}-service-account", gw.name);
    let sa = ServiceAccount { metadata: meta(&account, Some(&gw.ns), gw.labels.clone()), ..ServiceAccount::default() };
    let (role, binding) = rbac::gateway_sds(&gw.name, &gw.ns, &account, &gw.labels);
    let scaling = Scaling::new(ctx, &gw.values, &k8s);
    let mut svc = service(&gw)?;
    k8s::apply_service(&mut svc, &k8s)?;
    let mut dep = deployment(&gw, &account, &scaling, spec, svc.spec.as_ref().and_then(|s| s.ports.as_deref()))?;
    k8s::apply_deployment(&mut dep, &k8s, "istio-proxy");
    let mut out =
        vec![rendered(c, &sa)?, rendered(c, &role)?, rendered(c, &binding)?, rendered(c, &svc)?, rendered(c, &dep)?];
    if let Some(hpa) = workload::hpa(&gw.name, &gw.ns, gw.labels.clone(), &scaling, &k8s) {
        out.push(rendered(c, &hpa)?);
    }
    if let Some(pdb) = workload::pdb(&gw.name, &gw.ns, gw.labels.clone(), gw.selector.clone(), &scaling, &k8s)? {
        out.push(rendered(c, &pdb)?);
    }
    k8s::apply_overlays(&mut out, &k8s.overlays)?;
    Ok(out)
}

fn default_ports(kind: Kind) -> Vec<ServicePort> {
    let port = |name: &str, port: i32, target: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let mut ports = Vec::new();
    if kind.istio == INGRESS.istio {
        ports.push(port("status-port", 15021, 15021));
    }
    ports.push(port("http2", 80, 8080));
    ports.push(port("https", 443, 8443));
    ports
}

fn service(gw: &Gw) -> Result<Service, RenderError> {
    let ctx = gw.ctx;
    let ports = ctx.typed::<Vec<ServicePort>>(&gw.value_path("ports"))?.unwrap_or_else(|| default_ports(gw.kind));
    let mut metadata = meta(&gw.name, Some(&gw.ns), gw.labels.clone());
    metadata.annotations = ctx.typed::<BTreeMap<String, String>>(&gw.value_path("serviceAnnotations"))?;
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(ctx.str_value(&gw.value_path("type")).unwrap_or_else(|| gw.kind.service_type.into())),
            selector: Some(gw.selector.clone()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn deployment(
    gw: &Gw,
    account: &str,
    scaling: &Scaling,
    spec: &GatewaySpec,
    ports: Option<&[ServicePort]>,
) -> Result<Deployment, RenderError> {
    let ctx = gw.ctx;
    let mut pod_labels = gw.labels.clone();
    pod_labels.insert(labels::SIDECAR_INJECT.into(), "false".into());
    pod_labels.insert(labels::CANONICAL_NAME.into(), gw.name.clone());
    let mut annotations = labels_of(&[
        (labels::PROMETHEUS_SCRAPE, "true"),
        (labels::PROMETHEUS_PORT, "15020"),
        (labels::PROMETHEUS_PATH, "/stats/prometheus"),
    ]);
    annotations.extend(ctx.typed::<BTreeMap<String, String>>(&gw.value_path("podAnnotations"))?.unwrap_or_default());
    let pod = PodSpec {
        service_account_name: Some(account.into()),
        containers: vec![container(gw, spec, ports, &pod_labels)?],
        volumes: Some(writable_dirs().map(|(name, _)| empty_dir(name)).collect()),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(1337),
            run_as_group: Some(1337),
            run_as_non_root: Some(true),
            fs_group: Some(1337),
            ..PodSecurityContext::default()
        }),
        node_selector: ctx.typed(&gw.value_path("nodeSelector"))?,
        tolerations: ctx.typed(&gw.value_path("tolerations"))?,
        ..PodSpec::default()
    };
    Ok(deployment_of(
        meta(&gw.name, Some(&gw.ns), gw.labels.clone()),
        scaling.deployment_replicas(),
        gw.selector.clone(),
        pod_labels,
        annotations,
        pod,
    ))
}

fn container(
    gw: &Gw,
    spec: &GatewaySpec,
    ports: Option<&[ServicePort]>,
    pod_labels: &BTreeMap<String, String>,
) -> Result<Container, RenderError> {
    let ctx = gw.ctx;
    let mut container_ports: Vec<ContainerPort> = Vec::new();
    for p in ports.unwrap_or_default() {
        let number = match &p.target_port {
            Some(IntOrString::Int(n)) => *n,
            _ => p.port,
        };
        if !container_ports.iter().any(|c| c.container_port == number) {
            container_ports.push(ContainerPort {
                container_port: number,
                protocol: p.protocol.clone(),
                ..ContainerPort::default()
            });
        }
    }
    container_ports.push(ContainerPort {
        name: Some("http-envoy-prom".into()),
        container_port: 15090,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    Ok(Container {
        name: "istio-proxy".into(),
        image: Some(ctx.image(PROXY_IMAGE, spec.hub.as_deref(), spec.tag.as_ref().map(|t| &t.0))),
        image_pull_policy: ctx.str_value("global.imagePullPolicy"),
        args: Some(vec!["proxy".into(), "router".into()]),
        ports: Some(container_ports),
        env: Some(env(gw, pod_labels)),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(15021),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: Some(1),
            period_seconds: Some(2),
            failure_threshold: Some(30),
            ..Probe::default()
        }),
        resources: Some(resources(ctx, &gw.value_path("resources"), "100m", "128Mi")?),
        security_context: Some(restricted()),
        volume_mounts: Some(
            writable_dirs()
                .map(|(name, path)| VolumeMount {
                    name: name.into(),
                    mount_path: path.into(),
                    ..VolumeMount::default()
                })
                .collect(),
        ),
        ..Container::default()
    })
}

/// The proxy's writable directories (bootstrap, Envoy's files), as in an injected pod: the
/// container's root filesystem is read-only.
fn writable_dirs() -> impl Iterator<Item = (&'static str, &'static str)> {
    [("istio-envoy", "/etc/istio/proxy"), ("istio-data", "/var/lib/istio/data")].into_iter()
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}

/// The agent's environment. The pod's labels go in as `ISTIO_METAJSON_LABELS`: Gateway
/// `selector`s pick gateways by the labels their proxy reports.
fn env(gw: &Gw, pod_labels: &BTreeMap<String, String>) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..EnvVarSource::default()
        }),
        value: None,
    };
    let plain = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), value_from: None };
    vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        plain("ISTIO_META_WORKLOAD_NAME", gw.name.clone()),
        plain("ISTIO_METAJSON_LABELS", serde_json::to_string(pod_labels).unwrap_or_default()),
        plain("ISTIO_META_CLUSTER_ID", "Kubernetes".into()),
        plain("CA_ADDR", gw.ctx.discovery_address()),
        plain("PILOT_ADDRESS", gw.ctx.discovery_address()),
    ]
}
