//! The Pilot component: the discovery server `istiod[-<rev>]` (Deployment running
//! `<hub>/rudder:<tag> discovery`, Service, ServiceAccount, RBAC, HPA, PDB), its mesh ConfigMap
//! `istio[-<rev>]`, the injector ConfigMap `istio-sidecar-injector[-<rev>]` and (via
//! [`super::webhooks`]) the injection and validation webhook configurations. In remote mode
//! (`values.istiodRemote.enabled`) only the RBAC, the webhooks and what values ask for remain.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodSpec, Probe, ResourceRequirements, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rudder_config::injector::{InjectionPolicy, InjectorConfig};
use rudder_config::labels;
use rudder_config::operator::KubernetesResourcesSpec;

use super::objects::{deployment_of, labels_of, meta, rendered};
use super::values::Context;
use super::workload::{self, Scaling};
use super::{PILOT_IMAGE, RenderError, k8s, rbac, webhooks};
use crate::manifest::{Component, RenderedObject};

const C: Component = Component::Pilot;

/// Pilot's objects, when enabled.
pub fn render(ctx: &Context) -> Result<Vec<RenderedObject>, RenderError> {
    let spec = ctx.components().pilot.unwrap_or_default();
    if spec.enabled == Some(false) {
        return Ok(Vec::new());
    }
    let k8s = spec.k8s.clone().unwrap_or_default();
    let labels = object_labels(ctx);
    let mut out = vec![rendered(C, &service_account(ctx, &labels))?];
    let (roles, bindings) = rbac::cluster(ctx, &labels);
    for r in &roles {
        out.push(rendered(C, r)?);
    }
    for b in &bindings {
        out.push(rendered(C, b)?);
    }
    let (role, binding) = rbac::namespaced(ctx, &labels);
    out.push(rendered(C, &role)?);
    out.push(rendered(C, &binding)?);
    if ctx.bool_value("pilot.configMap", true) {
        out.push(rendered(C, &mesh_config_map(ctx, &labels)?)?);
    }
    if !ctx.bool_value("global.omitSidecarInjectorConfigMap", false) {
        out.push(rendered(C, &injector_config_map(ctx, &labels)?)?);
    }
    out.extend(webhooks::render(ctx)?);
    if !ctx.remote() {
        out.extend(workload_objects(ctx, &labels, &k8s, spec.hub.as_deref(), spec.tag.as_ref().map(|t| &t.0))?);
    }
    k8s::apply_overlays(&mut out, &k8s.overlays)?;
    Ok(out)
}

/// `istio` label of the discovery pods: `pilot`, or `istiod` for a revision (so the default
/// Service never selects a canary's pods).
fn istio_label(ctx: &Context) -> &'static str {
    if ctx.revision.is_some() { "istiod" } else { "pilot" }
}

fn object_labels(ctx: &Context) -> BTreeMap<String, String> {
    labels_of(&[
        (labels::APP, "istiod"),
        (labels::ISTIO, istio_label(ctx)),
        (labels::REVISION, ctx.rev_label()),
        (labels::APP_NAME, "istiod"),
    ])
}

/// Pod selector of the Deployment, Service and PDB.
fn selector(ctx: &Context) -> BTreeMap<String, String> {
    match &ctx.revision {
        None => labels_of(&[(labels::APP, "istiod"), (labels::ISTIO, "pilot")]),
        Some(rev) => labels_of(&[(labels::APP, "istiod"), (labels::REVISION, rev)]),
    }
}

fn service_account(ctx: &Context, labels: &BTreeMap<String, String>) -> ServiceAccount {
    ServiceAccount { metadata: meta(&ctx.istiod(), Some(&ctx.namespace), labels.clone()), ..ServiceAccount::default() }
}

fn mesh_config_map(ctx: &Context, labels: &BTreeMap<String, String>) -> Result<ConfigMap, RenderError> {
    let mesh = serde_saphyr::to_string(&ctx.mesh)
        .map_err(|e| RenderError::Value { path: "spec.meshConfig".into(), message: e.to_string() })?;
    let data = BTreeMap::from([("mesh".to_owned(), mesh), ("meshNetworks".to_owned(), "networks: {}\n".to_owned())]);
    Ok(ConfigMap {
        metadata: meta(&ctx.revisioned("istio"), Some(&ctx.namespace), labels.clone()),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The injector's `config` from `sidecarInjectorWebhook.*` and `global.proxy.autoInject`.
pub fn injector_config(ctx: &Context) -> Result<InjectorConfig, RenderError> {
    let w = "sidecarInjectorWebhook";
    let mut config = InjectorConfig {
        policy: match ctx.str_value("global.proxy.autoInject").as_deref() {
            Some("disabled") => InjectionPolicy::Disabled,
            _ => InjectionPolicy::Enabled,
        },
        ..InjectorConfig::default()
    };
    config.always_inject_selector = ctx.typed(&format!("{w}.alwaysInjectSelector"))?.unwrap_or_default();
    config.never_inject_selector = ctx.typed(&format!("{w}.neverInjectSelector"))?.unwrap_or_default();
    config.injected_annotations = ctx.typed(&format!("{w}.injectedAnnotations"))?.unwrap_or_default();
    config.templates = ctx.typed(&format!("{w}.templates"))?.unwrap_or_default();
    if let Some(names) = ctx.typed::<Vec<String>>(&format!("{w}.defaultTemplates"))?.filter(|n| !n.is_empty()) {
        config.default_templates = names;
    }
    Ok(config)
}

fn injector_config_map(ctx: &Context, labels: &BTreeMap<String, String>) -> Result<ConfigMap, RenderError> {
    let err = |e: String| RenderError::Value { path: "spec.values.sidecarInjectorWebhook".into(), message: e };
    let config = serde_saphyr::to_string(&injector_config(ctx)?).map_err(|e| err(e.to_string()))?;
    let mut values = ctx.values.clone();
    for (path, value) in [
        ("global.hub", ctx.hub.clone()),
        ("global.tag", ctx.tag.clone()),
        ("global.istioNamespace", ctx.namespace.clone()),
        ("revision", ctx.revision.clone().unwrap_or_default()),
    ] {
        if let Ok(path) = super::tree::parse_path(path) {
            super::tree::set(&mut values, &path, value.into()).map_err(err)?;
        }
    }
    let values = serde_json::to_string_pretty(&values).map_err(|e| err(e.to_string()))?;
    Ok(ConfigMap {
        metadata: meta(&ctx.revisioned("istio-sidecar-injector"), Some(&ctx.namespace), labels.clone()),
        data: Some(BTreeMap::from([("config".to_owned(), config), ("values".to_owned(), values)])),
        ..ConfigMap::default()
    })
}

fn workload_objects(
    ctx: &Context,
    labels: &BTreeMap<String, String>,
    k8s: &KubernetesResourcesSpec,
    hub: Option<&str>,
    tag: Option<&serde_json::Value>,
) -> Result<Vec<RenderedObject>, RenderError> {
    let scaling = Scaling::new(ctx, "pilot", k8s);
    let mut service = service(ctx, labels);
    k8s::apply_service(&mut service, k8s)?;
    let mut deployment = deployment(ctx, labels, &scaling, hub, tag)?;
    k8s::apply_deployment(&mut deployment, k8s, "discovery");
    let (name, ns) = (ctx.istiod(), ctx.namespace.clone());
    let mut out = vec![rendered(C, &service)?, rendered(C, &deployment)?];
    if let Some(hpa) = workload::hpa(&name, &ns, labels.clone(), &scaling, k8s) {
        out.push(rendered(C, &hpa)?);
    }
    if let Some(pdb) = workload::pdb(&name, &ns, labels.clone(), selector(ctx), &scaling, k8s)? {
        out.push(rendered(C, &pdb)?);
    }
    Ok(out)
}

fn service(ctx: &Context, labels: &BTreeMap<String, String>) -> Service {
    let port = |name: &str, port: i32, target: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(&ctx.istiod(), Some(&ctx.namespace), labels.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(ctx)),
            ports: Some(vec![
                port("grpc-xds", 15010, 15010),
                port("https-dns", 15012, 15012),
                port("https-webhook", 443, 15017),
                port("http-monitoring", 15014, 15014),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn deployment(
    ctx: &Context,
    labels: &BTreeMap<String, String>,
    scaling: &Scaling,
    hub: Option<&str>,
    tag: Option<&serde_json::Value>,
) -> Result<Deployment, RenderError> {
    let mut pod_labels = selector(ctx);
    pod_labels.extend(labels_of(&[
        (labels::ISTIO, istio_label(ctx)),
        (labels::REVISION, ctx.rev_label()),
        (labels::SIDECAR_INJECT, "false"),
    ]));
    pod_labels.extend(ctx.typed::<BTreeMap<String, String>>("pilot.podLabels")?.unwrap_or_default());
    let mut annotations = labels_of(&[(labels::PROMETHEUS_SCRAPE, "true"), (labels::PROMETHEUS_PORT, "15014")]);
    annotations.extend(ctx.typed::<BTreeMap<String, String>>("pilot.podAnnotations")?.unwrap_or_default());
    let pod = PodSpec {
        service_account_name: Some(ctx.istiod()),
        containers: vec![container(ctx, hub, tag)?],
        node_selector: ctx.typed("pilot.nodeSelector")?,
        tolerations: ctx.typed("pilot.tolerations")?,
        ..PodSpec::default()
    };
    Ok(deployment_of(
        meta(&ctx.istiod(), Some(&ctx.namespace), labels.clone()),
        scaling.deployment_replicas(),
        selector(ctx),
        pod_labels,
        annotations,
        pod,
    ))
}

fn container(ctx: &Context, hub: Option<&str>, tag: Option<&serde_json::Value>) -> Result<Container, RenderError> {
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let hub = ctx.str_value("pilot.hub").or_else(|| hub.map(str::to_owned));
    let tag = ctx.value("pilot.tag").or(tag);
    Ok(Container {
        name: "discovery".into(),
        image: Some(ctx.image(PILOT_IMAGE, hub.as_deref(), tag)),
        image_pull_policy: ctx.str_value("global.imagePullPolicy"),
        args: Some(vec!["discovery".into()]),
        ports: Some(vec![
            port("grpc-xds", 15010),
            port("tls-xds", 15012),
            port("https-webhooks", 15017),
            port("http-monitoring", 15014),
        ]),
        env: Some(env(ctx)?),
        readiness_probe: Some(Probe {
            // `rudder discovery` answers readiness on its monitoring port (istiod's 8080 debug
            // listener does not exist here).
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(15014),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: Some(1),
            period_seconds: Some(3),
            timeout_seconds: Some(5),
            ..Probe::default()
        }),
        resources: Some(resources(ctx, "pilot.resources", "500m", "2048Mi")?),
        security_context: Some(restricted()),
        ..Container::default()
    })
}

fn env(ctx: &Context) -> Result<Vec<EnvVar>, RenderError> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..EnvVarSource::default()
        }),
        value: None,
    };
    let plain = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), value_from: None };
    let mut env = vec![
        plain("REVISION", ctx.rev_label().to_owned()),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if let Some(sampling) = ctx.str_value("pilot.traceSampling") {
        env.push(plain("PILOT_TRACE_SAMPLING", sampling));
    }
    let extra: BTreeMap<String, serde_json::Value> = ctx.typed("pilot.env")?.unwrap_or_default();
    let extra: Vec<EnvVar> = extra
        .into_iter()
        .map(|(k, v)| plain(&k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
        .collect();
    k8s::merge_env(&mut env, &extra);
    Ok(env)
}

/// Resources from `path` in values, else the given requests.
pub fn resources(ctx: &Context, path: &str, cpu: &str, memory: &str) -> Result<ResourceRequirements, RenderError> {
    if let Some(r) = ctx.typed::<ResourceRequirements>(path)? {
        return Ok(r);
    }
    Ok(ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])),
        ..ResourceRequirements::default()
    })
}

/// No privilege escalation, read-only root, non-root, no capabilities.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        ..SecurityContext::default()
    }
}
