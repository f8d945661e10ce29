//! A component's `k8s` settings applied to its rendered objects: the structured fields (pod,
//! main container, Service, HPA, PDB — merged the way a strategic-merge patch would: maps and
//! `env` by name, Service ports by port number, other lists replaced) and then the path-based
//! `overlays` on any object of the component.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::DynamicObject;
use rudder_config::operator::{HpaSpec, K8sObjectOverlay, KubernetesResourcesSpec};
use serde_json::Value;

use super::objects::kind_of;
use super::{RenderError, tree};
use crate::manifest::RenderedObject;

/// Pod-template and main-container fields, and `replicaCount`/`strategy`.
pub fn apply_deployment(dep: &mut Deployment, k8s: &KubernetesResourcesSpec, container: &str) {
    let spec = &mut dep.spec;
    if let Some(n) = k8s.replica_count {
        spec.replicas = i32::try_from(n).ok();
    }
    if let Some(strategy) = &k8s.strategy {
        spec.strategy = Some(strategy.clone());
    }
    let template = &mut spec.template;
    if !k8s.pod_annotations.is_empty() {
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.annotations.get_or_insert_with(Default::default).extend(k8s.pod_annotations.clone());
    }
    let pod = template.spec.get_or_insert_with(Default::default);
    apply_pod(pod, k8s);
    if let Some(c) = pod.containers.iter_mut().find(|c| c.name == container) {
        apply_container(c, k8s);
    }
}

fn apply_pod(pod: &mut PodSpec, k8s: &KubernetesResourcesSpec) {
    if let Some(affinity) = &k8s.affinity {
        pod.affinity = Some(affinity.clone());
    }
    if !k8s.node_selector.is_empty() {
        pod.node_selector.get_or_insert_with(Default::default).extend(k8s.node_selector.clone());
    }
    if !k8s.tolerations.is_empty() {
        pod.tolerations = Some(k8s.tolerations.clone());
    }
    if !k8s.priority_class_name.is_empty() {
        pod.priority_class_name = Some(k8s.priority_class_name.clone());
    }
    if let Some(sc) = &k8s.security_context {
        pod.security_context = Some(sc.clone());
    }
}

fn apply_container(c: &mut Container, k8s: &KubernetesResourcesSpec) {
    if !k8s.env.is_empty() {
        merge_env(c.env.get_or_insert_with(Vec::new), &k8s.env);
    }
    if let Some(resources) = &k8s.resources {
        c.resources = Some(resources.clone());
    }
    if !k8s.image_pull_policy.is_empty() {
        c.image_pull_policy = Some(k8s.image_pull_policy.clone());
    }
    if let Some(probe) = &k8s.readiness_probe {
        c.readiness_probe = Some(probe.clone());
    }
}

/// Environment variables merged by name: a known name is replaced in place, a new one appended.
pub fn merge_env(env: &mut Vec<EnvVar>, extra: &[EnvVar]) {
    for var in extra {
        match env.iter_mut().find(|e| e.name == var.name) {
            Some(slot) => *slot = var.clone(),
            None => env.push(var.clone()),
        }
    }
}

/// `service` (ports merged by port number) and `serviceAnnotations`.
pub fn apply_service(svc: &mut Service, k8s: &KubernetesResourcesSpec) -> Result<(), RenderError> {
    if !k8s.service_annotations.is_empty() {
        svc.metadata.annotations.get_or_insert_with(Default::default).extend(k8s.service_annotations.clone());
    }
    let Some(patch) = &k8s.service else { return Ok(()) };
    let mut patch = to_value(patch)?;
    let ports = patch.as_object_mut().and_then(|m| m.remove("ports"));
    let mut spec = to_value(&svc.spec)?;
    tree::merge(&mut spec, patch);
    if let (Some(Value::Array(ports)), Some(existing)) = (ports, spec.get_mut("ports").and_then(Value::as_array_mut)) {
        for port in ports {
            match existing.iter_mut().find(|p| p.get("port") == port.get("port")) {
                Some(slot) => tree::merge(slot, port),
                None => existing.push(port),
            }
        }
    }
    svc.spec = serde_json::from_value(spec).map_err(|e| RenderError::Overlay(format!("k8s.service: {e}")))?;
    Ok(())
}

/// `hpaSpec`: each field given replaces the rendered one.
pub fn apply_hpa(hpa: &mut HorizontalPodAutoscaler, patch: &HpaSpec) {
    let spec = &mut hpa.spec;
    if let Some(min) = patch.min_replicas {
        spec.min_replicas = Some(min);
    }
    if let Some(max) = patch.max_replicas {
        spec.max_replicas = max;
    }
    if !patch.metrics.is_empty() {
        spec.metrics = Some(patch.metrics.clone());
    }
    if let Some(behavior) = &patch.behavior {
        spec.behavior = Some(behavior.clone());
    }
    if let Some(target) = &patch.scale_target_ref {
        spec.scale_target_ref = target.clone();
    }
}

/// `podDisruptionBudget` merged over the rendered spec.
pub fn apply_pdb(pdb: &mut PodDisruptionBudget, k8s: &KubernetesResourcesSpec) -> Result<(), RenderError> {
    let Some(patch) = &k8s.pod_disruption_budget else { return Ok(()) };
    let mut spec = to_value(&pdb.spec)?;
    let patch = to_value(patch)?;
    if patch.get("maxUnavailable").is_some()
        && let Some(map) = spec.as_object_mut()
    {
        map.remove("minAvailable");
    }
    tree::merge(&mut spec, patch);
    pdb.spec =
        serde_json::from_value(spec).map_err(|e| RenderError::Overlay(format!("k8s.podDisruptionBudget: {e}")))?;
    Ok(())
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, RenderError> {
    serde_json::to_value(v).map_err(|e| RenderError::Overlay(e.to_string()))
}

/// Applies every overlay to the objects of one component whose kind and name match. An overlay
/// that matches nothing is an error, so a typo does not go unnoticed.
pub fn apply_overlays(objects: &mut [RenderedObject], overlays: &[K8sObjectOverlay]) -> Result<(), RenderError> {
    for overlay in overlays {
        let mut hit = false;
        for obj in objects.iter_mut() {
            if kind_of(obj) == overlay.kind && obj.object.metadata.name.as_deref() == Some(overlay.name.as_str()) {
                obj.object = patch_object(&obj.object, overlay)?;
                hit = true;
            }
        }
        if !hit {
            return Err(RenderError::Overlay(format!(
                "overlay {}/{} matches no rendered object of its component",
                overlay.kind, overlay.name
            )));
        }
    }
    Ok(())
}

fn patch_object(object: &DynamicObject, overlay: &K8sObjectOverlay) -> Result<DynamicObject, RenderError> {
    let mut value = to_value(object)?;
    for patch in &overlay.patches {
        let err = |e: String| {
            RenderError::Overlay(format!("overlay {}/{} path {}: {e}", overlay.kind, overlay.name, patch.path))
        };
        let path = tree::parse_path(&patch.path).map_err(err)?;
        match &patch.value {
            Some(v) => tree::set(&mut value, &path, v.0.clone()).map_err(err)?,
            None => tree::delete(&mut value, &path).map_err(err)?,
        }
    }
    serde_json::from_value(value)
        .map_err(|e| RenderError::Overlay(format!("overlay {}/{}: {e}", overlay.kind, overlay.name)))
}
