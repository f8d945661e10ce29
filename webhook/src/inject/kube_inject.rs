//! Offline injection of YAML manifests (`rudder kube-inject`, spec §2.8).
//!
//! Each document of a multi-document stream is injected when it is a Pod, Deployment,
//! DaemonSet, ReplicaSet, StatefulSet, Job, CronJob (its `jobTemplate`), ReplicationController,
//! OpenShift DeploymentConfig or a List of those; any other document (and any text that does not
//! parse) is written back as it was. Namespace labels are not consulted (stage A is bypassed),
//! and the stage-B decision runs with `policy: enabled` and no selectors, so only hostNetwork,
//! ignored namespaces and `sidecar.istio.io/inject: "false"` skip a workload. Each skip is
//! reported in [`Injected::messages`].

use k8s_openapi::api::core::v1::Pod;
use rudder_config::injector::InjectorConfig;
use rudder_config::mesh;
use serde_json::{Value, json};

use super::{InjectError, InjectionContext, WorkloadMeta, merge, mutate};
use crate::decision;

/// The output stream and what was skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Injected {
    /// The documents, each followed by `---`.
    pub yaml: String,
    /// One line per skipped workload (for stderr).
    pub messages: Vec<String>,
}

/// Injects every workload in `text`.
pub fn inject_documents(ctx: &InjectionContext, text: &str) -> Result<Injected, InjectError> {
    let mut out = Injected::default();
    for chunk in split_documents(text) {
        if chunk.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        match serde_saphyr::from_str::<Value>(chunk) {
            Ok(mut doc @ Value::Object(_)) if injectable(&doc) => {
                inject_object(ctx, &mut doc, &mut out.messages)?;
                let yaml = serde_saphyr::to_string(&doc)
                    .map_err(|e| InjectError::Template(format!("cannot write YAML: {e}")))?;
                out.yaml.push_str(&yaml);
            }
            _ => out.yaml.push_str(chunk),
        }
        if !out.yaml.ends_with('\n') {
            out.yaml.push('\n');
        }
        out.yaml.push_str("---\n");
    }
    Ok(out)
}

/// Splits a YAML stream at `---` lines, keeping each document's text as written.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

fn kind(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// Where a kind keeps its pod template (`None`: the object is the pod; not injectable: `Err`).
fn template_pointer(kind: &str) -> Result<Option<&'static str>, ()> {
    match kind {
        "Pod" => Ok(None),
        "Deployment"
        | "DaemonSet"
        | "ReplicaSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController"
        | "DeploymentConfig" => Ok(Some("/spec/template")),
        "CronJob" => Ok(Some("/spec/jobTemplate/spec/template")),
        _ => Err(()),
    }
}

fn injectable(doc: &Value) -> bool {
    kind(doc) == "List" || template_pointer(kind(doc)).is_ok()
}

fn inject_object(ctx: &InjectionContext, doc: &mut Value, messages: &mut Vec<String>) -> Result<(), InjectError> {
    if kind(doc) == "List" {
        for item in doc.get_mut("items").and_then(Value::as_array_mut).into_iter().flatten() {
            if injectable(item) {
                inject_object(ctx, item, messages)?;
            }
        }
        return Ok(());
    }
    let kind = kind(doc).to_owned();
    let Ok(pointer) = template_pointer(&kind) else { return Ok(()) };
    let str_at = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    let workload =
        WorkloadMeta { name: str_at("/metadata/name"), kind: kind.clone(), api_version: str_at("/apiVersion") };
    let doc_ns = str_at("/metadata/namespace");
    let Some(template) = (match pointer {
        Some(p) => doc.pointer_mut(p),
        None => Some(&mut *doc),
    }) else {
        return Ok(());
    };
    if !template.is_object() {
        let field = pointer.unwrap_or_default().trim_start_matches('/').replace('/', ".");
        let name = if doc_ns.is_empty() { workload.name.clone() } else { format!("{doc_ns}/{}", workload.name) };
        return Err(InjectError::Template(format!(
            "{kind} {name}: {field}: expected a pod template (a mapping), found {}",
            json_type(template)
        )));
    }
    let template_ns = template.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let namespace = [template_ns, &doc_ns].into_iter().find(|n| !n.is_empty()).unwrap_or("default").to_owned();
    let pod_json = json!({"metadata": template.get("metadata").cloned().unwrap_or(json!({})),
                          "spec": template.get("spec").cloned().unwrap_or(json!({}))});
    let pod: Pod = serde_json::from_value(pod_json)
        .map_err(|e| InjectError::Template(format!("{kind} {namespace}/{}: not a pod template: {e}", workload.name)))?;
    let decision =
        decision::injection_required(&InjectorConfig::default(), &namespace, &pod.metadata, pod.spec.as_ref());
    if !decision.inject {
        messages.push(format!("skipping injection of {kind} {namespace}/{}: {}", workload.name, decision.reason));
        return Ok(());
    }
    let injected = mutate(ctx, &pod, &namespace, Some(&workload))?;
    let injected = serde_json::to_value(&injected).unwrap_or(Value::Null);
    for key in ["metadata", "spec"] {
        template[key] = injected.get(key).cloned().unwrap_or(json!({}));
    }
    Ok(())
}

/// What a JSON value is, for errors.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The files `kube-inject` reads, as text.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The injector `config` (or a ConfigMap holding it under `config`).
    pub inject_config: Option<String>,
    /// The mesh config (or a ConfigMap holding it under `mesh`).
    pub mesh_config: Option<String>,
    /// The injector `values` (or a ConfigMap holding them under `values`).
    pub values: Option<String>,
    /// An IstioOperator whose `hub`, `tag`, `revision`, `values` and `meshConfig` win over the
    /// files above.
    pub operator: Option<String>,
    /// `-r`: the revision to inject for.
    pub revision: Option<String>,
}

/// Text of `key` when `text` is a ConfigMap, else `text` itself.
fn config_map_key(text: &str, key: &str) -> Result<String, String> {
    let parsed: Value = serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    if kind(&parsed) != "ConfigMap" {
        return Ok(text.to_owned());
    }
    parsed
        .pointer(&format!("/data/{key}"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("the ConfigMap has no data key {key:?}"))
}

/// Builds the injection context from the given files; defaults for what is not given
/// ([`InjectorConfig::default`], Istio's mesh defaults, [`super::default_values`]).
pub fn context_from_sources(sources: &Sources) -> Result<InjectionContext, String> {
    let mut ctx = InjectionContext::offline_defaults();
    if let Some(text) = &sources.inject_config {
        let config = config_map_key(text, "config").map_err(|e| format!("inject config: {e}"))?;
        ctx.injector = InjectorConfig::from_yaml(&config).map_err(|e| format!("inject config: {e}"))?;
    }
    if let Some(text) = &sources.mesh_config {
        let text = config_map_key(text, "mesh").map_err(|e| format!("mesh config: {e}"))?;
        ctx.mesh = mesh::apply_yaml_over_defaults(&text).map_err(|e| format!("mesh config: {e}"))?;
    }
    if let Some(text) = &sources.values {
        let text = config_map_key(text, "values").map_err(|e| format!("values: {e}"))?;
        let values: Value =
            serde_saphyr::from_str(&text).map_err(|e| format!("values: not valid YAML or JSON: {e}"))?;
        merge::merge(&mut ctx.values, &values);
    }
    if let Some(text) = &sources.operator {
        apply_operator(&mut ctx, text)?;
    }
    if let Some(rev) = sources.revision.as_deref().filter(|r| !r.is_empty() && *r != "default") {
        ctx.revision = Some(rev.to_owned());
    }
    if let Some(rev) = ctx.values.pointer("/revision").and_then(Value::as_str).filter(|r| !r.is_empty())
        && ctx.revision.is_none()
        && rev != "default"
    {
        ctx.revision = Some(rev.to_owned());
    }
    Ok(ctx)
}

/// Reads what injection needs straight from an IstioOperator (no rendering needed): `hub`,
/// `tag`, `revision` and `values` into the values, `meshConfig` over the mesh defaults.
fn apply_operator(ctx: &mut InjectionContext, text: &str) -> Result<(), String> {
    let iop: Value = serde_saphyr::from_str(text).map_err(|e| format!("operator file: not valid YAML: {e}"))?;
    if kind(&iop) != "IstioOperator" {
        return Err("operator file: expected kind IstioOperator".into());
    }
    let spec = iop.get("spec").cloned().unwrap_or(json!({}));
    if let Some(values) = spec.get("values") {
        merge::merge(&mut ctx.values, values);
    }
    for key in ["hub", "tag"] {
        if let Some(v) = spec.get(key).filter(|v| !v.is_null()) {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            ctx.values["global"][key] = v.into();
        }
    }
    if let Some(rev) = spec.get("revision").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        ctx.values["revision"] = rev.into();
    }
    if let Some(mesh_config) = spec.get("meshConfig") {
        ctx.mesh = mesh::apply_yaml_over_defaults(&mesh_config.to_string())
            .map_err(|e| format!("operator file meshConfig: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `injector` fuzz target: a workload whose pod template is not a mapping
    /// made kube-inject panic when writing the injected template back.
    #[test]
    fn a_pod_template_that_is_not_a_mapping_is_an_error() {
        let ctx = InjectionContext::offline_defaults();
        for (kind, template) in [
            ("Deployment", "spec:\n  template: not a template\n"),
            ("DaemonSet", "spec:\n  template: [1, 2]\n"),
            ("CronJob", "spec:\n  jobTemplate:\n    spec:\n      template: 5\n"),
        ] {
            let text =
                format!("apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: web\n  namespace: apps\n{template}");
            let error = inject_documents(&ctx, &text).expect_err(kind).to_string();
            assert!(error.starts_with(&format!("{kind} apps/web: spec.")), "{error}");
            assert!(error.contains("template: expected a pod template (a mapping), found a"), "{error}");
        }
    }

    #[test]
    fn a_pod_that_is_not_a_mapping_is_left_alone() {
        let ctx = InjectionContext::offline_defaults();
        let injected = inject_documents(&ctx, "- kind: Pod\n").expect("a list document");
        assert_eq!(injected.yaml, "- kind: Pod\n---\n");
    }
}
