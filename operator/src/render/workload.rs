//! Scaling objects shared by the discovery server and the gateways: how many replicas, the
//! HorizontalPodAutoscaler (CPU target) and the PodDisruptionBudget, which is only rendered
//! when it cannot block a drain (more than one replica guaranteed) or the user asked for one.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rudder_config::operator::KubernetesResourcesSpec;

use super::objects::meta;
use super::values::Context;
use super::{RenderError, k8s};

/// Replica settings of one workload, from its values (`<prefix>.autoscaleEnabled`, ...) with
/// the component's `k8s.replicaCount`/`hpaSpec` taking precedence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scaling {
    pub autoscale: bool,
    pub min: i32,
    pub max: i32,
    pub cpu_target: i32,
    pub replicas: i32,
}

impl Scaling {
    pub fn new(ctx: &Context, prefix: &str, k8s: &KubernetesResourcesSpec) -> Self {
        let int = |key: &str, default: i64| {
            i32::try_from(ctx.int_value(&format!("{prefix}.{key}"), default)).unwrap_or(i32::MAX)
        };
        let hpa = k8s.hpa_spec.as_ref();
        Self {
            autoscale: ctx.bool_value(&format!("{prefix}.autoscaleEnabled"), true),
            min: hpa.and_then(|h| h.min_replicas).unwrap_or_else(|| int("autoscaleMin", 1)),
            max: hpa.and_then(|h| h.max_replicas).unwrap_or_else(|| int("autoscaleMax", 5)),
            cpu_target: int("cpu.targetAverageUtilization", 80),
            replicas: k8s.replica_count.and_then(|n| i32::try_from(n).ok()).unwrap_or_else(|| int("replicaCount", 1)),
        }
    }

    /// `spec.replicas` before `k8s.replicaCount` is applied: left to the HPA when autoscaling.
    pub fn deployment_replicas(&self) -> Option<i32> {
        (!self.autoscale).then_some(self.replicas)
    }

    /// Whether a PDB with `minAvailable: 1` leaves room for a drain.
    pub fn wants_pdb(&self) -> bool {
        if self.autoscale { self.min > 1 } else { self.replicas > 1 }
    }
}

/// The HPA for Deployment `name`, when autoscaling.
pub fn hpa(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    scaling: &Scaling,
    k8s: &KubernetesResourcesSpec,
) -> Option<HorizontalPodAutoscaler> {
    if !scaling.autoscale {
        return None;
    }
    let mut hpa = HorizontalPodAutoscaler {
        metadata: meta(name, Some(namespace), labels),
        spec: HorizontalPodAutoscalerSpec {
            min_replicas: Some(scaling.min),
            max_replicas: scaling.max,
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.into(),
            },
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.cpu_target),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        },
        status: None,
    };
    if let Some(patch) = &k8s.hpa_spec {
        k8s::apply_hpa(&mut hpa, patch);
    }
    Some(hpa)
}

/// The PDB for pods matching `selector`, when [`Scaling::wants_pdb`] or the user gave one.
pub fn pdb(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    scaling: &Scaling,
    k8s: &KubernetesResourcesSpec,
) -> Result<Option<PodDisruptionBudget>, RenderError> {
    if !scaling.wants_pdb() && k8s.pod_disruption_budget.is_none() {
        return Ok(None);
    }
    let mut pdb = PodDisruptionBudget {
        metadata: meta(name, Some(namespace), labels),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector), match_expressions: None }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    };
    k8s::apply_pdb(&mut pdb, k8s)?;
    Ok(Some(pdb))
}
