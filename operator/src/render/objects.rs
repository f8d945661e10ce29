//! Turning typed Kubernetes objects into [`RenderedObject`]s: metadata helpers, the owner labels
//! every installed object carries (`operator.istio.io/*`, `install.operator.istio.io/*`,
//! `istio.io/rev`), and the fixed apply order (namespaces, CRDs, then component by component,
//! kinds in [`KIND_ORDER`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::DynamicObject;
use rudder_config::labels;
use serde::Serialize;

use super::RenderError;
use super::values::Context;
use crate::manifest::{Component, RenderedObject};

/// Apply order of kinds within one component; unknown kinds go last.
pub const KIND_ORDER: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Labels from a list of pairs.
/// A Deployment of one pod template: the selector picks the pods by `selector` labels, which
/// the pod labels must contain.
pub fn deployment_of(
    metadata: ObjectMeta,
    replicas: Option<i32>,
    selector: BTreeMap<String, String>,
    pod_labels: BTreeMap<String, String>,
    pod_annotations: BTreeMap<String, String>,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata,
        spec: DeploymentSpec {
            replicas,
            selector: LabelSelector { match_labels: Some(selector), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

pub fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Metadata with a name, an optional namespace and labels.
pub fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    }
}

/// A typed object (which serialises its own `apiVersion`/`kind`) as a rendered object.
pub fn rendered<T: Serialize>(component: Component, typed: &T) -> Result<RenderedObject, RenderError> {
    let value = serde_json::to_value(typed).map_err(|e| RenderError::Overlay(format!("cannot write object: {e}")))?;
    let object: DynamicObject =
        serde_json::from_value(value).map_err(|e| RenderError::Overlay(format!("cannot read object back: {e}")))?;
    Ok(RenderedObject { component, object })
}

/// The §1.7 owner labels for objects of `component`.
pub fn owner_labels(ctx: &Context, component: Component) -> BTreeMap<String, String> {
    let mut out = labels_of(&[
        (labels::MANAGED, labels::MANAGED_RECONCILE),
        (labels::OPERATOR_VERSION, env!("CARGO_PKG_VERSION")),
        (labels::OWNING_RESOURCE, &ctx.owner_name),
        (labels::REVISION, ctx.rev_label()),
        (labels::COMPONENT, component.label()),
    ]);
    if let Some(ns) = &ctx.owner_namespace {
        out.insert(labels::OWNING_RESOURCE_NAMESPACE.into(), ns.clone());
    }
    out
}

/// Adds owner labels to every object and sorts them into apply order.
pub fn finish(ctx: &Context, mut objects: Vec<RenderedObject>) -> Result<Vec<RenderedObject>, RenderError> {
    for obj in &mut objects {
        obj.object.metadata.labels.get_or_insert_with(BTreeMap::new).extend(owner_labels(ctx, obj.component));
    }
    objects.sort_by_key(order_key);
    Ok(objects)
}

/// Sort key: namespaces, then CRDs, then by component, kind order, namespace and name.
pub fn order_key(obj: &RenderedObject) -> (usize, usize, usize, String, String) {
    let kind = kind_of(obj);
    let group = match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    };
    let component = Component::INSTALL_ORDER.iter().position(|c| *c == obj.component).unwrap_or(usize::MAX);
    let kind_rank = KIND_ORDER.iter().position(|k| *k == kind).unwrap_or(KIND_ORDER.len());
    let meta = &obj.object.metadata;
    (group, component, kind_rank, meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// The object's kind (empty when missing).
pub fn kind_of(obj: &RenderedObject) -> &str {
    obj.object.types.as_ref().map(|t| t.kind.as_str()).unwrap_or_default()
}
