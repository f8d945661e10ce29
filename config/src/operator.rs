//! `install.istio.io/v1alpha1` IstioOperator: what to install (profile, components, images,
//! revision), the mesh config and Helm values passed through, and the installer's status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscalerBehavior, MetricSpec};
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, PodSecurityContext, Probe, ResourceRequirements, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{AnyValue, FreeForm};
use crate::mesh::MeshConfig;
use crate::validate::{FieldPath, Report, Validate, checks};

/// Built-in profile names (anything containing `/` is a path to a profile file instead).
pub const PROFILES: &[&str] = &[
    "default",
    "demo",
    "minimal",
    "empty",
    "preview",
    "remote",
    "ambient",
    "stable",
    "openshift",
    "openshift-ambient",
];

/// Top-level `values` keys the charts understand; others get a warning.
pub const KNOWN_VALUES: &[&str] = &[
    "global",
    "pilot",
    "gateways",
    "sidecarInjectorWebhook",
    "meshConfig",
    "revision",
    "base",
    "istiodRemote",
    "telemetry",
    "cni",
    "ztunnel",
    "defaultRevision",
    "ownerName",
    "profile",
    "revisionTags",
    "istio_cni",
    "compatibilityVersion",
    "experimental",
    "platform",
];

/// The desired installed state of Istio.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "install.istio.io",
    version = "v1alpha1",
    kind = "IstioOperator",
    namespaced,
    status = "InstallStatus",
    shortname = "iop",
    shortname = "io",
    printcolumn = r#"{"name":"Revision","type":"string","description":"Istio control plane revision","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"IOP current state","jsonPath":".status.status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioOperatorSpec {
    /// Built-in profile name or path to a profile file; empty means default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub profile: String,
    /// Directory of charts and profiles to use instead of the built-in ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub install_package_path: String,
    /// Image registry root, e.g. docker.io/istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Image tag (string or number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<AnyValue>,
    /// Namespace for control-plane resources.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Control-plane revision; empty is the default revision.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// major.minor of an older release whose defaults to keep.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compatibility_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_config: Option<MeshConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<ComponentsSpec>,
    /// Helm values, merged last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<FreeForm>,
    /// Helm values passed through without checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unvalidated_values: Option<FreeForm>,
}

/// The installable components.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseComponentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pilot: Option<ComponentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<ComponentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ztunnel: Option<ComponentSpec>,
    /// Remote-cluster istiod (installs before 1.24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istiod_remote: Option<ComponentSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_gateways: Vec<GatewaySpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_gateways: Vec<GatewaySpec>,
}

/// The base component (CRDs and cluster roles).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseComponentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<KubernetesResourcesSpec>,
}

/// A component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<AnyValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<KubernetesResourcesSpec>,
}

/// An ingress or egress gateway; enabled unless `enabled: false`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Deployment and Service name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Extra labels for the gateway's objects and pod selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<AnyValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<KubernetesResourcesSpec>,
}

/// Kubernetes settings patched onto a component's rendered objects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesResourcesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa_spec: Option<HpaSpec>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_pull_policy: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub priority_class_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    /// Pod security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Path-based edits of rendered objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<K8sObjectOverlay>,
}

/// HorizontalPodAutoscaler spec as IstioOperator takes it: every field optional (the target
/// reference is filled in by the chart).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target_ref: Option<CrossVersionObjectReference>,
}

/// Patches for one rendered object, chosen by kind and name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sObjectOverlay {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<OverlayPatch>,
}

/// One edit: `path` like `spec.template.spec.containers.[name:discovery].args`; no value deletes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlayPatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<AnyValue>,
}

crate::proto_enum! {
    /// Install state of the whole operator object or of one component.
    pub enum InstallState {
        None = 0 => "NONE",
        Updating = 1 => "UPDATING",
        Reconciling = 2 => "RECONCILING",
        Healthy = 3 => "HEALTHY",
        Error = 4 => "ERROR",
        ActionRequired = 5 => "ACTION_REQUIRED",
    }
}

/// What the installer last did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InstallState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Per component name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub component_status: BTreeMap<String, ComponentStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// State of one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InstallState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[allow(clippy::unwrap_used)] // constant pattern, exercised by the tests
static COMPATIBILITY_VERSION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d+\.\d+$").unwrap());

impl Validate for IstioOperator {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        if !spec.profile.is_empty() && !spec.profile.contains('/') && !PROFILES.contains(&spec.profile.as_str()) {
            report.error(
                &at.field("profile"),
                format!(
                    "unknown profile {:?}; use one of {} or a path to a profile file",
                    spec.profile,
                    PROFILES.join(", ")
                ),
            );
        }
        hub(spec.hub.as_deref(), &at.field("hub"), report);
        tag(spec.tag.as_ref(), &at.field("tag"), report);
        namespace(&spec.namespace, &at.field("namespace"), report);
        if !spec.revision.is_empty() {
            let at = at.field("revision");
            match checks::dns1123_label(&spec.revision) {
                Err(e) => report.error(&at, format!("revision {e}")),
                Ok(()) if spec.revision == crate::labels::DEFAULT_REVISION => report.warning(
                    &at,
                    "revision \"default\" names the same objects as an empty revision would label; leave it empty",
                ),
                Ok(()) => {}
            }
        }
        if !spec.compatibility_version.is_empty() && !COMPATIBILITY_VERSION.is_match(&spec.compatibility_version) {
            report.error(
                &at.field("compatibilityVersion"),
                format!("compatibility version {:?} must be major.minor, e.g. 1.24", spec.compatibility_version),
            );
        }
        if let Some(mesh) = &spec.mesh_config {
            mesh.validate(&at.field("meshConfig"), report);
        }
        if let Some(components) = &spec.components {
            components.validate(&at.field("components"), report);
        }
        if let Some(values) = &spec.values {
            for key in values.0.keys() {
                if !KNOWN_VALUES.contains(&key.as_str()) {
                    report.warning(
                        &at.field("values").field(key),
                        format!("unknown values key {key:?}; use unvalidatedValues for custom chart values"),
                    );
                }
            }
        }
    }
}

impl ComponentsSpec {
    fn validate(&self, at: &FieldPath, report: &mut Report) {
        if let Some(base) = &self.base
            && let Some(k8s) = &base.k8s
        {
            k8s.validate(&at.field("base").field("k8s"), report);
        }
        for (name, component) in [
            ("pilot", &self.pilot),
            ("cni", &self.cni),
            ("ztunnel", &self.ztunnel),
            ("istiodRemote", &self.istiod_remote),
        ] {
            if let Some(component) = component {
                let at = at.field(name);
                namespace(&component.namespace, &at.field("namespace"), report);
                hub(component.hub.as_deref(), &at.field("hub"), report);
                tag(component.tag.as_ref(), &at.field("tag"), report);
                if let Some(k8s) = &component.k8s {
                    k8s.validate(&at.field("k8s"), report);
                }
            }
        }
        for (list_name, gateways) in
            [("ingressGateways", &self.ingress_gateways), ("egressGateways", &self.egress_gateways)]
        {
            let mut seen = BTreeSet::new();
            for (i, gateway) in gateways.iter().enumerate() {
                let at = at.field(list_name).index(i);
                if gateway.name.is_empty() {
                    report.error(&at.field("name"), "gateway name is required");
                } else {
                    report.check(&at.field("name"), checks::dns1123_label(&gateway.name));
                    if !seen.insert(gateway.name.as_str()) {
                        report.error(
                            &at.field("name"),
                            format!("gateway name {:?} is used twice in {list_name}", gateway.name),
                        );
                    }
                }
                namespace(&gateway.namespace, &at.field("namespace"), report);
                checks::labels(&gateway.label, report, &at.field("label"));
                hub(gateway.hub.as_deref(), &at.field("hub"), report);
                tag(gateway.tag.as_ref(), &at.field("tag"), report);
                if let Some(k8s) = &gateway.k8s {
                    k8s.validate(&at.field("k8s"), report);
                }
            }
        }
    }
}

impl KubernetesResourcesSpec {
    fn validate(&self, at: &FieldPath, report: &mut Report) {
        if let Some(n) = self.replica_count.filter(|n| *n < 0) {
            report.error(&at.field("replicaCount"), format!("replica count {n} must not be negative"));
        }
        if let Some(hpa) = &self.hpa_spec {
            let at = at.field("hpaSpec");
            if let Some(min) = hpa.min_replicas.filter(|n| *n < 1) {
                report.error(&at.field("minReplicas"), format!("minReplicas {min} must be at least 1"));
            }
            if let Some(max) = hpa.max_replicas.filter(|n| *n < 1) {
                report.error(&at.field("maxReplicas"), format!("maxReplicas {max} must be at least 1"));
            }
            if let (Some(min), Some(max)) = (hpa.min_replicas, hpa.max_replicas)
                && min > max
            {
                report.error(&at.field("minReplicas"), format!("minReplicas {min} must not exceed maxReplicas {max}"));
            }
        }
        if !self.image_pull_policy.is_empty()
            && !matches!(self.image_pull_policy.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            report.error(
                &at.field("imagePullPolicy"),
                format!("unknown imagePullPolicy {:?}; expected Always, IfNotPresent or Never", self.image_pull_policy),
            );
        }
        checks::labels(&self.node_selector, report, &at.field("nodeSelector"));
        for (i, env) in self.env.iter().enumerate() {
            if env.name.is_empty() {
                report.error(&at.field("env").index(i).field("name"), "env name is required");
            }
        }
        if let Some(pdb) = &self.pod_disruption_budget
            && pdb.min_available.is_some()
            && pdb.max_unavailable.is_some()
        {
            report.error(&at.field("podDisruptionBudget"), "set only one of minAvailable and maxUnavailable");
        }
        for (i, overlay) in self.overlays.iter().enumerate() {
            let at = at.field("overlays").index(i);
            if overlay.kind.is_empty() {
                report.error(&at.field("kind"), "overlay kind is required");
            }
            if overlay.name.is_empty() {
                report.error(&at.field("name"), "overlay name is required");
            }
            for (j, patch) in overlay.patches.iter().enumerate() {
                if patch.path.trim().is_empty() {
                    report.error(&at.field("patches").index(j).field("path"), "patch path is required");
                }
            }
        }
    }
}

fn namespace(value: &str, at: &FieldPath, report: &mut Report) {
    if !value.is_empty() {
        report.check(at, checks::dns1123_label(value).map_err(|e| format!("namespace {e}")));
    }
}

fn hub(value: Option<&str>, at: &FieldPath, report: &mut Report) {
    if value.is_some_and(|h| h.trim().is_empty()) {
        report.error(at, "hub must not be empty when set");
    }
}

fn tag(value: Option<&AnyValue>, at: &FieldPath, report: &mut Report) {
    match value.map(|v| &v.0) {
        None | Some(serde_json::Value::Number(_)) => {}
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {}
        Some(serde_json::Value::String(_)) => report.error(at, "tag must not be empty when set"),
        Some(other) => report.error(at, format!("tag {other} must be a string or a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let iop: IstioOperator = serde_saphyr::from_str(yaml).expect("decodes");
        iop.report().items.iter().map(ToString::to_string).collect()
    }

    const HEAD: &str =
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: x, namespace: istio-system}\n";

    #[test]
    fn a_minimal_operator_is_valid() {
        assert_eq!(errors(&format!("{HEAD}spec: {{}}")), Vec::<String>::new());
        assert_eq!(
            errors(&format!("{HEAD}spec: {{profile: ./my/profile.yaml, tag: 1.24, compatibilityVersion: \"1.23\"}}")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn checks_top_level_fields() {
        let got = errors(&format!(
            "{HEAD}spec:\n  profile: huge\n  hub: \"\"\n  tag: [1]\n  namespace: Istio\n  revision: default\n  compatibilityVersion: \"1\"\n  values: {{global: {{}}, bogus: 1}}\n"
        ));
        assert_eq!(
            got,
            vec![
                "spec.profile: unknown profile \"huge\"; use one of default, demo, minimal, empty, preview, remote, ambient, stable, openshift, openshift-ambient or a path to a profile file",
                "spec.hub: hub must not be empty when set",
                "spec.tag: tag [1] must be a string or a number",
                "spec.namespace: namespace \"Istio\" is not a valid DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)",
                "warning: spec.revision: revision \"default\" names the same objects as an empty revision would label; leave it empty",
                "spec.compatibilityVersion: compatibility version \"1\" must be major.minor, e.g. 1.24",
                "warning: spec.values.bogus: unknown values key \"bogus\"; use unvalidatedValues for custom chart values",
            ]
        );
    }

    #[test]
    fn checks_components() {
        let got = errors(&format!(
            "{HEAD}spec:\n  components:\n    pilot:\n      k8s:\n        replicaCount: -1\n        imagePullPolicy: Sometimes\n        overlays:\n          - kind: Deployment\n            patches: [{{value: 1}}]\n    ingressGateways:\n      - name: gw\n      - name: gw\n      - {{}}\n"
        ));
        assert_eq!(
            got,
            vec![
                "spec.components.pilot.k8s.replicaCount: replica count -1 must not be negative",
                "spec.components.pilot.k8s.imagePullPolicy: unknown imagePullPolicy \"Sometimes\"; expected Always, IfNotPresent or Never",
                "spec.components.pilot.k8s.overlays[0].name: overlay name is required",
                "spec.components.pilot.k8s.overlays[0].patches[0].path: patch path is required",
                "spec.components.ingressGateways[1].name: gateway name \"gw\" is used twice in ingressGateways",
                "spec.components.ingressGateways[2].name: gateway name is required",
            ]
        );
    }

    #[test]
    fn status_round_trips() {
        let yaml = format!(
            "{HEAD}spec: {{}}\nstatus:\n  status: HEALTHY\n  componentStatus:\n    Pilot: {{status: HEALTHY, version: 1.24.0}}\n    IngressGateways: {{status: ERROR, error: timed out}}\n"
        );
        let iop: IstioOperator = serde_saphyr::from_str(&yaml).expect("decodes");
        let status = iop.status.as_ref().expect("status");
        assert_eq!(status.status, Some(InstallState::Healthy));
        assert_eq!(status.component_status["IngressGateways"].status, Some(InstallState::Error));
        let back: IstioOperator = serde_json::from_value(serde_json::to_value(&iop).expect("write")).expect("read");
        assert_eq!(back.status, iop.status);
    }

    #[test]
    fn crd_names_match_upstream() {
        use kube::CustomResourceExt;
        let crd = IstioOperator::crd();
        assert_eq!(crd.spec.names.plural, "istiooperators");
        assert_eq!(crd.spec.names.short_names, Some(vec!["iop".to_owned(), "io".to_owned()]));
        let columns = crd.spec.versions[0].additional_printer_columns.as_ref().expect("columns");
        let paths: Vec<_> = columns.iter().map(|c| c.json_path.as_str()).collect();
        assert_eq!(paths, vec![".spec.revision", ".status.status", ".metadata.creationTimestamp"]);
    }
}
