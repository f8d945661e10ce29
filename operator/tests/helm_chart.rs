//! The Helm chart under `chart/`: `helm lint`, `helm template` against a golden file
//! (`UPDATE_GOLDEN=1` refreshes it), every object decoding into its Kubernetes type, and the chart
//! installing the same operator objects as `rudder operator init`. Needs Helm (`.tools/bin/helm`
//! or `helm` on PATH); without it the tests fail under `CI` and are skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use pretty_assertions::assert_eq;
use rudder_operator::operator_init::{InitOptions, build};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const INSTALL: &str = "./scripts/install-tools.sh";
const HELM_LABELS: [&str; 2] = ["app.kubernetes.io/managed-by", "helm.sh/chart"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Helm's path, or `None` after saying why the test is skipped (a failure under `CI`).
fn helm() -> Option<PathBuf> {
    let local = root().join(".tools/bin/helm");
    if local.is_file() {
        return Some(local);
    }
    if Command::new("helm").arg("version").output().is_ok_and(|o| o.status.success()) {
        return Some(PathBuf::from("helm"));
    }
    assert!(std::env::var_os("CI").is_none(), "helm not found; install it with {INSTALL}");
    eprintln!("skipped: helm not found (run {INSTALL} to put it in .tools/bin)");
    None
}

fn helm_run(helm: &Path, args: &[&str]) -> String {
    let out = Command::new(helm).args(args).current_dir(root()).output().expect("helm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "helm {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn template(helm: &Path, sets: &[&str]) -> String {
    let mut args = vec!["template", "rudder", "chart/", "--namespace", "istio-operator"];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm_run(helm, &args)
}

fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn through<T: DeserializeOwned + Serialize>(doc: &Value) -> Value {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    serde_json::to_value(typed).unwrap()
}

/// The object decoded into its k8s-openapi type (or Rudder's, for IstioOperator) and encoded
/// again, which also normalises the spelling of numbers and quantities.
fn typed(doc: &Value) -> Value {
    match doc["kind"].as_str().unwrap() {
        "Namespace" => through::<Namespace>(doc),
        "ServiceAccount" => through::<ServiceAccount>(doc),
        "ClusterRole" => through::<ClusterRole>(doc),
        "ClusterRoleBinding" => through::<ClusterRoleBinding>(doc),
        "Deployment" => through::<Deployment>(doc),
        "Service" => through::<Service>(doc),
        "IstioOperator" => through::<rudder_config::operator::IstioOperator>(doc),
        other => panic!("the chart renders an unexpected kind {other}"),
    }
}

fn without_helm_labels(mut doc: Value) -> Value {
    if let Some(labels) = doc.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        HELM_LABELS.iter().for_each(|l| {
            labels.remove(*l);
        });
    }
    doc
}

fn key(doc: &Value) -> String {
    format!("{} {} {}", doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])
}

fn sorted(mut docs: Vec<Value>) -> Vec<Value> {
    docs.sort_by_key(key);
    docs
}

#[test]
fn chart_lints_clean() {
    let Some(helm) = helm() else { return };
    helm_run(&helm, &["lint", "chart/"]);
}

#[test]
fn template_output_matches_the_golden_file_and_every_object_decodes() {
    let Some(helm) = helm() else { return };
    let rendered = template(&helm, &[]);
    let golden = root().join("operator/tests/golden/helm-template.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(rendered, want, "helm template changed; UPDATE_GOLDEN=1 refreshes the golden file");
    let docs = documents(&rendered);
    assert_eq!(docs.len(), 6);
    docs.iter().for_each(|d| drop(typed(d)));
}

/// The chart and `operator init` install the same objects, except what Helm does itself: the
/// release namespace and the CRDs (from `chart/crds/`).
fn assert_same_as_init(helm: &Path, sets: &[&str], opts: &InitOptions) {
    let chart: Vec<Value> = documents(&template(helm, sets)).iter().map(typed).map(without_helm_labels).collect();
    let init: Vec<Value> = build::objects(opts)
        .unwrap()
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .filter(|d| d["kind"] != "CustomResourceDefinition")
        .filter(|d| !(d["kind"] == "Namespace" && d["metadata"]["name"] == "istio-operator"))
        .map(|d| typed(&d))
        .collect();
    assert_eq!(sorted(chart), sorted(init));
}

#[test]
fn chart_installs_the_same_operator_as_init() {
    let Some(helm) = helm() else { return };
    assert_same_as_init(&helm, &[], &InitOptions::default());
    let canary = InitOptions {
        revision: Some("canary".into()),
        watched_namespaces: vec!["istio-system".into(), "team-a".into()],
        hub: "example.io/mesh".into(),
        tag: "1.2.3".into(),
        ..InitOptions::default()
    };
    let sets =
        ["revision=canary", "watchedNamespaces={istio-system,team-a}", "image.hub=example.io/mesh", "image.tag=1.2.3"];
    assert_same_as_init(&helm, &sets, &canary);
}

#[test]
fn the_optional_cr_carries_the_revision() {
    let Some(helm) = helm() else { return };
    let docs = documents(&template(&helm, &["iop.enabled=true", "revision=canary"]));
    let iop = docs.iter().find(|d| d["kind"] == "IstioOperator").expect("the CR is rendered");
    let iop = typed(iop);
    assert_eq!(iop["metadata"]["namespace"], "istio-system");
    assert_eq!(iop["spec"]["revision"], "canary");
    assert_eq!(iop["spec"]["profile"], "default");
}

#[test]
fn chart_crds_include_the_one_init_applies() {
    let text = std::fs::read_to_string(root().join("chart/crds/install.istio.io.yaml")).unwrap();
    let on_disk = documents(&text);
    let crd = serde_json::to_value(build::crd().unwrap()).unwrap();
    assert!(on_disk.contains(&crd), "chart/crds/install.istio.io.yaml differs from the CRD init applies");
}
