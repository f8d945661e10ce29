//! Pure builders for the operator's objects, in apply order: namespaces, the CRD, then the
//! ServiceAccount, ClusterRole, ClusterRoleBinding, Deployment and metrics Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use rudder_config::labels;
use serde_json::Value;

use super::{COMPONENT, InitError, InitOptions, METRICS_PORT, METRICS_PORT_NAME, rbac};
use crate::install::apply::dynamic;

/// Label the Deployment selects its pods by, and the Service selects them by.
pub const POD_LABEL: &str = "name";
/// Non-root user the operator container runs as.
const RUN_AS: i64 = 1337;

/// Every object `operator init` applies, in apply order.
pub fn objects(opts: &InitOptions) -> Result<Vec<DynamicObject>, InitError> {
    let mut out = Vec::new();
    for ns in namespaces(opts)? {
        out.push(dynamic(&namespace(&ns))?);
    }
    out.push(crd()?);
    out.push(dynamic(&service_account(opts))?);
    out.push(dynamic(&cluster_role(opts))?);
    out.push(dynamic(&cluster_role_binding(opts))?);
    out.push(dynamic(&deployment(opts))?);
    out.push(dynamic(&service(opts))?);
    Ok(out)
}

/// The operator namespace then each watched one, without repeats, each checked.
pub fn namespaces(opts: &InitOptions) -> Result<Vec<String>, InitError> {
    let mut out: Vec<String> = Vec::new();
    for ns in std::iter::once(&opts.operator_namespace).chain(&opts.watched_namespaces) {
        if !is_dns_label(ns) {
            return Err(InitError::BadNamespace(ns.clone()));
        }
        if !out.contains(ns) {
            out.push(ns.clone());
        }
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    (1..=63).contains(&s.len()) && s.chars().all(ok) && !s.starts_with('-') && !s.ends_with('-')
}

/// The labels on every operator object.
pub fn common_labels(opts: &InitOptions) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::COMPONENT.to_owned(), COMPONENT.to_owned()),
        (labels::REVISION.to_owned(), opts.revision_label().to_owned()),
    ])
}

fn pod_labels(opts: &InitOptions) -> BTreeMap<String, String> {
    BTreeMap::from([(POD_LABEL.to_owned(), opts.name())])
}

fn meta(opts: &InitOptions, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(opts.name()),
        namespace: namespaced.then(|| opts.operator_namespace.clone()),
        labels: Some(common_labels(opts)),
        ..ObjectMeta::default()
    }
}

pub fn namespace(name: &str) -> Namespace {
    Namespace { metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() }, ..Namespace::default() }
}

/// The `IstioOperator` CRD exactly as `chart/crds/` has it.
pub fn crd() -> Result<DynamicObject, InitError> {
    let crd = rudder_config::crds::all().into_iter().find(|c| c.spec.names.kind == COMPONENT);
    dynamic(&crd.ok_or(InitError::MissingCrd)?).map_err(InitError::from)
}

pub fn service_account(opts: &InitOptions) -> ServiceAccount {
    ServiceAccount { metadata: meta(opts, true), ..ServiceAccount::default() }
}

pub fn cluster_role(opts: &InitOptions) -> ClusterRole {
    ClusterRole { metadata: meta(opts, false), rules: Some(rbac::rules()), ..ClusterRole::default() }
}

pub fn cluster_role_binding(opts: &InitOptions) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(opts, false),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: opts.name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: opts.name(),
            namespace: Some(opts.operator_namespace.clone()),
            ..Subject::default()
        }]),
    }
}

pub fn deployment(opts: &InitOptions) -> Deployment {
    let mut template_labels = pod_labels(opts);
    template_labels.extend(common_labels(opts));
    let pod = PodSpec {
        service_account_name: Some(opts.name()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(opts)],
        ..PodSpec::default()
    };
    Deployment {
        metadata: meta(opts, true),
        spec: DeploymentSpec {
            replicas: Some(1),
            revision_history_limit: Some(10),
            selector: LabelSelector { match_labels: Some(pod_labels(opts)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(template_labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// `operator run --watched-namespaces <list> [--revision R] --metrics-port 8383`.
pub fn args(opts: &InitOptions) -> Vec<String> {
    let mut args =
        vec!["operator".into(), "run".into(), "--watched-namespaces".into(), opts.watched_namespaces.join(",")];
    if let Some(rev) = opts.revision() {
        args.extend(["--revision".into(), rev.to_owned()]);
    }
    args.extend(["--metrics-port".into(), METRICS_PORT.to_string()]);
    args
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn env_vars(opts: &InitOptions) -> Vec<EnvVar> {
    let pod_name = EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..ObjectFieldSelector::default() }),
        ..EnvVarSource::default()
    };
    vec![
        env("WATCH_NAMESPACE", &opts.watched_namespaces.join(",")),
        env("LEADER_ELECTION_NAMESPACE", &opts.operator_namespace),
        env("REVISION", opts.revision().unwrap_or_default()),
        EnvVar { name: "POD_NAME".into(), value_from: Some(pod_name), ..EnvVar::default() },
    ]
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([("cpu".to_owned(), Quantity(cpu.into())), ("memory".to_owned(), Quantity(memory.into()))])
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

fn container(opts: &InitOptions) -> Container {
    Container {
        name: "istio-operator".into(),
        image: Some(opts.image()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args(opts)),
        env: Some(env_vars(opts)),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "128Mi")),
            limits: Some(quantities("200m", "256Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        ..SecurityContext::default()
    }
}

pub fn service(opts: &InitOptions) -> Service {
    Service {
        metadata: meta(opts, true),
        spec: Some(ServiceSpec {
            selector: Some(pod_labels(opts)),
            ports: Some(vec![ServicePort {
                name: Some(METRICS_PORT_NAME.into()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::Int(METRICS_PORT)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The IstioOperator CRs of a `-f` file: every document must be one; a CR without a namespace
/// goes into `istio-system`.
pub fn iop_objects(file: &str, text: &str) -> Result<Vec<DynamicObject>, InitError> {
    let bad = |message: String| InitError::BadCr { file: file.to_owned(), message };
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let mut obj: DynamicObject = serde_json::from_value(doc).map_err(|e| bad(e.to_string()))?;
        let kind = obj.types.as_ref().map(|t| (t.api_version.as_str(), t.kind.as_str()));
        if kind != Some(("install.istio.io/v1alpha1", COMPONENT)) {
            return Err(bad(format!("expected install.istio.io/v1alpha1 IstioOperator, found {kind:?}")));
        }
        if obj.metadata.name.as_deref().is_none_or(str::is_empty) {
            return Err(bad("the IstioOperator has no metadata.name".into()));
        }
        obj.metadata.namespace.get_or_insert_with(|| "istio-system".to_owned());
        out.push(obj);
    }
    Ok(out)
}

/// Objects as one YAML stream, `---` before each.
pub fn to_yaml(objects: &[DynamicObject]) -> Result<String, InitError> {
    let mut out = String::new();
    for obj in objects {
        out.push_str("---\n");
        let yaml = serde_saphyr::to_string(obj).map_err(|e| InitError::Yaml {
            what: obj.metadata.name.clone().unwrap_or_default(),
            message: e.to_string(),
        })?;
        out.push_str(&yaml);
    }
    Ok(out)
}

/// Everything `operator init` applies: the operator's [`objects`], the namespaces of the CRs not
/// already among them (before the CRD), then the CRs.
pub fn init_objects(opts: &InitOptions, crs: &[DynamicObject]) -> Result<Vec<DynamicObject>, InitError> {
    let mut out = objects(opts)?;
    let known = namespaces(opts)?;
    let mut extra: Vec<String> = Vec::new();
    for ns in crs.iter().filter_map(|cr| cr.metadata.namespace.clone()) {
        if !known.contains(&ns) && !extra.contains(&ns) {
            extra.push(ns);
        }
    }
    let at = known.len();
    for (i, ns) in extra.iter().enumerate() {
        out.insert(at + i, dynamic(&namespace(ns))?);
    }
    out.extend(crs.iter().cloned());
    Ok(out)
}
