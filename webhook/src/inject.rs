//! The injected pod (spec §2.5) for Rudder's proxy, and the JSON patch from the original to it.
//!
//! [`inject_pod`] = stage-B decision ([`crate::decision`]) + [`mutate`]. Mutation, in order:
//! 1. strip a previous injection (by `sidecar.istio.io/status`), so re-injection is idempotent;
//! 2. take out a user-declared `istio-proxy` container (kept in `proxy.istio.io/overrides` so a
//!    re-injection finds it again);
//! 3. resolve the annotations (§2.6; invalid ones fail with [`InjectError::InvalidAnnotation`]);
//! 4. build the templates named by `inject.istio.io/templates` (else `defaultTemplates`), with
//!    aliases expanded, merge them into one fragment and merge that onto the pod. `sidecar` and
//!    `gateway` are built in (written in Rust, see [`template`]) and always win over ConfigMap
//!    entries of the same name; any other ConfigMap template is read as a **plain YAML pod
//!    overlay** merged strategically (lists of named items merge by name). Go-template
//!    expressions (`{{ ... }}`) in ConfigMap templates are **not evaluated**: a template that is
//!    not plain YAML fails injection with [`InjectError::Template`];
//! 5. merge the user's `istio-proxy` over the template's (`image: auto` keeps ours);
//! 6. rewrite app probes, merge Prometheus annotations, add the default-container,
//!    `injectedAnnotations` and status annotations, and order the containers.

pub mod kube_inject;
mod merge;
mod params;
mod probes;
mod strip;
pub mod template;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use rudder_config::injector::InjectorConfig;
use rudder_config::labels;
use rudder_config::mesh::MeshConfig;
use serde_json::{Map, Value, json};

pub use params::{DEFAULT_HUB, DEFAULT_TAG, PROXY_IMAGE_NAME, check_quantity};
pub use probes::APP_PROBERS_ENV;
pub use strip::{PROMETHEUS_ENV, Status};
use template::{INIT_CONTAINER, Input, PROXY_CONTAINER, VALIDATION_CONTAINER};
pub use workload::WorkloadMeta;

use crate::decision;

/// Everything injection reads besides the pod: the injector ConfigMap (`config` and `values`),
/// the mesh config, and facts about this control plane.
#[derive(Clone, Debug, Default)]
pub struct InjectionContext {
    pub injector: InjectorConfig,
    /// The injector ConfigMap's `values` key (Helm values subset, spec §2.4).
    pub values: serde_json::Value,
    pub mesh: MeshConfig,
    /// This control plane's revision (`None` = default).
    pub revision: Option<String>,
    /// Cluster id and network from the request path `/inject/cluster/<id>/net/<network>`.
    pub cluster_id: Option<String>,
    pub network: Option<String>,
    /// Whether the proxy runs as a native sidecar (restartable init container) unless the pod's
    /// `sidecar.istio.io/nativeSidecar` says otherwise. Upstream ≥1.27 turns this on when every
    /// node's kubelet is ≥1.33; the caller (which can see nodes) decides. `false` by default.
    pub native_sidecars: bool,
}

impl InjectionContext {
    /// Defaults for offline use: the default injector config, Istio's mesh defaults and
    /// [`default_values`].
    pub fn offline_defaults() -> Self {
        Self { values: default_values(), mesh: MeshConfig::istio_defaults(), ..Self::default() }
    }
}

/// The `values` used when none are given: Rudder's hub and this version's tag.
pub fn default_values() -> Value {
    json!({"global": {"hub": DEFAULT_HUB, "tag": DEFAULT_TAG, "istioNamespace": "istio-system"}})
}

/// What injection did with one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not injected, and why (e.g. `hostNetwork`, `sidecar.istio.io/inject: "false"`).
    Skipped { reason: String },
    /// The pod with the sidecar.
    Injected(Box<Pod>),
}

/// A pod that cannot be injected: an invalid annotation, an unknown template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("invalid annotation {annotation}: {message}")]
    InvalidAnnotation { annotation: String, message: String },
    #[error("{0}")]
    Template(String),
}

/// Decides (stage B) and, when required, injects `pod` (created in `namespace`).
pub fn inject_pod(ctx: &InjectionContext, pod: &Pod, namespace: &str) -> Result<Outcome, InjectError> {
    let decision = decision::injection_required(&ctx.injector, namespace, &pod.metadata, pod.spec.as_ref());
    if !decision.inject {
        return Ok(Outcome::Skipped { reason: decision.reason });
    }
    mutate(ctx, pod, namespace, None).map(|p| Outcome::Injected(Box::new(p)))
}

/// [`Outcome`] with the original pod's JSON kept, for callers that diff it against the result
/// (the admission server) without encoding the original twice.
#[derive(Clone, Debug, PartialEq)]
pub enum JsonOutcome {
    /// Not injected, and why.
    Skipped { reason: String },
    /// `original` is `serde_json::to_value` of the pod given; `injected` the pod with the sidecar.
    Injected { original: Value, injected: Box<Pod> },
}

/// [`inject_pod`], also handing back the original pod's JSON.
pub fn inject_pod_json(ctx: &InjectionContext, pod: &Pod, namespace: &str) -> Result<JsonOutcome, InjectError> {
    let decision = decision::injection_required(&ctx.injector, namespace, &pod.metadata, pod.spec.as_ref());
    if !decision.inject {
        return Ok(JsonOutcome::Skipped { reason: decision.reason });
    }
    let original = pod_json(pod)?;
    let injected = into_pod(mutate_value(ctx, original.clone(), namespace, None)?)?;
    Ok(JsonOutcome::Injected { original, injected: Box::new(injected) })
}

/// The JSON patch (RFC 6902) that turns `original` into `injected`.
pub fn patch(original: &Pod, injected: &Pod) -> json_patch::Patch {
    let from = serde_json::to_value(original).unwrap_or(Value::Null);
    let to = serde_json::to_value(injected).unwrap_or(Value::Null);
    json_patch::diff(&from, &to)
}

fn template_error(message: impl Into<String>) -> InjectError {
    InjectError::Template(message.into())
}

/// Injects `pod` without deciding: the mutation alone. `workload` names the owning workload
/// (kube-inject knows it); `None` derives it from the pod's owner references.
pub fn mutate(
    ctx: &InjectionContext,
    pod: &Pod,
    namespace: &str,
    workload: Option<&WorkloadMeta>,
) -> Result<Pod, InjectError> {
    into_pod(mutate_value(ctx, pod_json(pod)?, namespace, workload)?)
}

fn pod_json(pod: &Pod) -> Result<Value, InjectError> {
    serde_json::to_value(pod).map_err(|e| template_error(format!("cannot read the pod: {e}")))
}

fn into_pod(v: Value) -> Result<Pod, InjectError> {
    serde_json::from_value(v).map_err(|e| template_error(format!("the injected pod is not a valid Pod: {e}")))
}

/// [`mutate`] on the pod's JSON.
fn mutate_value(
    ctx: &InjectionContext,
    mut v: Value,
    namespace: &str,
    workload: Option<&WorkloadMeta>,
) -> Result<Value, InjectError> {
    let was_injected = strip::strip(&mut v);
    let user_proxy = take_user_proxy(&mut v, was_injected);
    let annotations = string_map(v.pointer("/metadata/annotations"));
    let params = params::resolve(ctx, &annotations)?;
    let workload = workload.cloned().unwrap_or_else(|| workload::derive(&v));
    let input = Input { ctx, params: &params, pod: &v, namespace, workload: &workload };
    let combined = combined_templates(ctx, &input, &annotations)?;
    let status = status_of(ctx, &combined);
    merge::merge_owned(&mut v, combined);
    if let Some(user) = &user_proxy {
        apply_user_proxy(&mut v, user);
    }
    if params.rewrite_probes && params.status_port != 0 {
        let originals = probes::rewrite(&mut v, params.status_port);
        if !originals.is_empty() {
            push_proxy_env(&mut v, probes::APP_PROBERS_ENV, Value::Object(originals).to_string());
        }
    }
    if params.prometheus_merge && params.status_port != 0 {
        merge_prometheus(&mut v, params.status_port);
    }
    annotate(ctx, &mut v, &status, user_proxy.as_ref());
    reorder(&mut v, params.native, params.hold);
    Ok(v)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}

/// Removes the user's own `istio-proxy` container (or, on re-injection, reads it back from
/// `proxy.istio.io/overrides`).
fn take_user_proxy(pod: &mut Value, was_injected: bool) -> Option<Value> {
    let found = strip::find_proxy(pod).cloned();
    if found.is_some() {
        strip::remove_named(pod, "/spec/containers", &[PROXY_CONTAINER.into()]);
        strip::remove_named(pod, "/spec/initContainers", &[PROXY_CONTAINER.into()]);
        return found;
    }
    let saved = pod.pointer("/metadata/annotations")?.get(labels::PROXY_OVERRIDES)?.as_str()?;
    was_injected.then(|| serde_json::from_str(saved).ok()).flatten()
}

fn apply_user_proxy(pod: &mut Value, user: &Value) {
    let mut overlay = user.clone();
    if let Value::Object(map) = &mut overlay
        && map.get("image").and_then(Value::as_str) == Some("auto")
    {
        map.remove("image");
    }
    match strip::find_proxy_mut(pod) {
        Some(proxy) => merge::merge_owned(proxy, overlay),
        None => {
            if let Some(Value::Array(list)) = pod.pointer_mut("/spec/containers") {
                list.push(overlay);
            }
        }
    }
}

/// The requested template names, aliases expanded, in order, without repeats.
fn template_names(config: &InjectorConfig, annotations: &BTreeMap<String, String>) -> Result<Vec<String>, InjectError> {
    let requested: Vec<String> = match annotations.get(labels::INJECT_TEMPLATES) {
        Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => config.default_templates.clone(),
    };
    let mut out: Vec<String> = Vec::new();
    for name in &requested {
        let expanded = config.aliases.get(name).cloned().unwrap_or_else(|| vec![name.clone()]);
        for t in expanded {
            let known = matches!(t.as_str(), "sidecar" | "gateway") || config.templates.contains_key(&t);
            if !known {
                let mut all: Vec<&str> = vec!["gateway", "sidecar"];
                all.extend(
                    config.templates.keys().map(String::as_str).filter(|k| !matches!(*k, "sidecar" | "gateway")),
                );
                return Err(template_error(format!("unknown injection template {t:?}; known: {}", all.join(", "))));
            }
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

fn combined_templates(
    ctx: &InjectionContext,
    input: &Input,
    annotations: &BTreeMap<String, String>,
) -> Result<Value, InjectError> {
    let mut combined = json!({});
    for name in template_names(&ctx.injector, annotations)? {
        let fragment = match name.as_str() {
            "sidecar" => template::sidecar(input),
            "gateway" => template::gateway(input),
            other => overlay_template(other, &ctx.injector.templates[other])?,
        };
        merge::merge_owned(&mut combined, fragment);
    }
    Ok(combined)
}

fn overlay_template(name: &str, text: &str) -> Result<Value, InjectError> {
    if text.contains("{{") {
        return Err(template_error(format!(
            "template {name:?} uses Go-template expressions, which Rudder does not evaluate; write it as a plain YAML pod overlay"
        )));
    }
    match serde_saphyr::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => {
            check_overlay_shape(name, &v)?;
            Ok(v)
        }
        Ok(Value::Null) => Ok(json!({})),
        Ok(_) => Err(template_error(format!("template {name:?} must be a YAML mapping (a pod overlay)"))),
        Err(e) => Err(template_error(format!("template {name:?} is not valid YAML: {e}"))),
    }
}

/// A pod overlay's `metadata` and `spec` must read as a pod's: merged onto the pod, anything
/// else (say `metadata: x`) would leave a pod the later steps cannot edit.
fn check_overlay_shape(name: &str, overlay: &Value) -> Result<(), InjectError> {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let problem = |field: &str, e: serde_json::Error| template_error(format!("template {name:?}: {field}: {e}"));
    if let Some(metadata) = overlay.get("metadata").filter(|m| !m.is_null()) {
        serde_json::from_value::<ObjectMeta>(metadata.clone()).map_err(|e| problem("metadata", e))?;
    }
    if let Some(spec) = overlay.get("spec").filter(|s| !s.is_null()) {
        serde_json::from_value::<PodSpec>(spec.clone()).map_err(|e| problem("spec", e))?;
    }
    Ok(())
}

fn names_at(v: &Value, pointer: &str) -> Vec<String> {
    let list = v.pointer(pointer).and_then(Value::as_array);
    list.into_iter().flatten().filter_map(|i| i.get("name")?.as_str().map(str::to_owned)).collect()
}

fn status_of(ctx: &InjectionContext, combined: &Value) -> Status {
    let secrets = names_at(combined, "/spec/imagePullSecrets");
    Status {
        init_containers: names_at(combined, "/spec/initContainers"),
        containers: names_at(combined, "/spec/containers"),
        volumes: names_at(combined, "/spec/volumes"),
        image_pull_secrets: (!secrets.is_empty()).then_some(secrets),
        revision: ctx.revision.clone().unwrap_or_else(|| labels::DEFAULT_REVISION.into()),
    }
}

fn push_proxy_env(pod: &mut Value, name: &str, value: String) {
    let Some(proxy) = strip::find_proxy_mut(pod) else { return };
    let entry = json!({"name": name, "value": value});
    match proxy.get_mut("env").and_then(Value::as_array_mut) {
        Some(env) => env.push(entry),
        None => proxy["env"] = json!([entry]),
    }
}

/// Moves the pod's own Prometheus annotations into the agent's env and points scraping at the
/// agent, unless the pod says `prometheus.io/scrape: "false"`.
fn merge_prometheus(pod: &mut Value, status_port: u32) {
    let ann = string_map(pod.pointer("/metadata/annotations"));
    if ann.get(labels::PROMETHEUS_SCRAPE).map(String::as_str) == Some("false") {
        return;
    }
    let own: Map<String, Value> = strip::PROMETHEUS_KEYS
        .iter()
        .filter_map(|k| Some((k.trim_start_matches("prometheus.io/").to_owned(), ann.get(*k)?.clone().into())))
        .collect();
    if !own.is_empty() {
        push_proxy_env(pod, strip::PROMETHEUS_ENV, Value::Object(own).to_string());
    }
    let annotations = ensure_map(pod, "annotations");
    annotations.insert(labels::PROMETHEUS_PORT.into(), status_port.to_string().into());
    annotations.insert(labels::PROMETHEUS_PATH.into(), "/stats/prometheus".into());
    annotations.insert(labels::PROMETHEUS_SCRAPE.into(), "true".into());
}

fn ensure_map<'a>(pod: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let meta = &mut pod["metadata"];
    if !meta[key].is_object() {
        meta[key] = json!({});
    }
    meta[key].as_object_mut().expect("just made an object")
}

fn annotate(ctx: &InjectionContext, pod: &mut Value, status: &Status, user_proxy: Option<&Value>) {
    let first_app = names_at(pod, "/spec/containers").into_iter().find(|n| n != PROXY_CONTAINER);
    let annotations = ensure_map(pod, "annotations");
    if let Some(app) = first_app {
        for key in [labels::DEFAULT_CONTAINER, labels::DEFAULT_LOGS_CONTAINER] {
            annotations.entry(key).or_insert_with(|| app.clone().into());
        }
    }
    for (key, value) in &ctx.injector.injected_annotations {
        annotations.insert(key.clone(), value.clone().into());
    }
    if let Some(user) = user_proxy {
        annotations.insert(labels::PROXY_OVERRIDES.into(), user.to_string().into());
    }
    let status = serde_json::to_string(status).unwrap_or_default();
    annotations.insert(labels::SIDECAR_STATUS.into(), status.into());
}

/// Classic mode: `istio-proxy` last among containers (first when the app waits for it);
/// `istio-validation` first and `istio-init` last among init containers. Native mode: the
/// redirection container, then `istio-proxy`, then the user's init containers.
fn reorder(pod: &mut Value, native: bool, hold: bool) {
    let rank_init = |name: &str| match (name, native) {
        (VALIDATION_CONTAINER, _) => 0,
        (INIT_CONTAINER, true) => 0,
        (PROXY_CONTAINER, true) => 1,
        (INIT_CONTAINER, false) => 3,
        _ => 2,
    };
    sort_by_rank(pod, "/spec/initContainers", rank_init);
    let rank = |name: &str| match name {
        PROXY_CONTAINER if hold => 0,
        PROXY_CONTAINER => 2,
        _ => 1,
    };
    sort_by_rank(pod, "/spec/containers", rank);
}

fn sort_by_rank(pod: &mut Value, pointer: &str, rank: impl Fn(&str) -> u8) {
    if let Some(Value::Array(list)) = pod.pointer_mut(pointer) {
        list.sort_by_key(|c| rank(c.get("name").and_then(Value::as_str).unwrap_or_default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_asking_for(template: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {labels::INJECT_TEMPLATES: format!("sidecar,{template}")}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }))
        .expect("pod")
    }

    /// Found by the `injector` fuzz target: a ConfigMap template whose `metadata` was not a
    /// mapping replaced the pod's metadata, and adding the annotations then panicked.
    #[test]
    fn an_overlay_template_not_shaped_like_a_pod_is_an_error() {
        let mut ctx = InjectionContext::offline_defaults();
        for (text, field) in [
            ("metadata: label}\n", "metadata"),
            ("metadata:\n  annotations: [a]\n", "metadata"),
            ("spec: 5\n", "spec"),
            ("spec:\n  containers: x\n", "spec"),
        ] {
            ctx.injector.templates.insert("tuned".into(), text.into());
            let error = inject_pod(&ctx, &pod_asking_for("tuned"), "apps").expect_err(text).to_string();
            assert!(error.starts_with(&format!("template \"tuned\": {field}: invalid type")), "{text}: {error}");
        }
        ctx.injector.templates.insert("tuned".into(), "metadata:\n  labels: {tuned: \"yes\"}\nspec: null\n".into());
        assert!(matches!(inject_pod(&ctx, &pod_asking_for("tuned"), "apps"), Ok(Outcome::Injected(_))));
    }
}
