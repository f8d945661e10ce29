//! `kube-inject`'s library side: configuration sources (files, ConfigMaps, an IstioOperator),
//! revisions, pass-through and errors. The golden outputs live in `inject_golden.rs`.

use rudder_webhook::inject::kube_inject::{Sources, context_from_sources, inject_documents};
use rudder_webhook::inject::{DEFAULT_HUB, InjectError, InjectionContext};
use serde_json::Value;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web}]
";

fn injected_template(ctx: &InjectionContext, text: &str) -> Value {
    let out = inject_documents(ctx, text).expect("inject");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out.yaml).expect("yaml");
    docs[0].pointer("/spec/template").cloned().expect("template")
}

fn env<'a>(template: &'a Value, name: &str) -> Option<&'a str> {
    let containers = template.pointer("/spec/containers")?.as_array()?;
    let proxy = containers.iter().find(|c| c["name"] == "istio-proxy")?;
    proxy["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
fn defaults_use_rudders_image() {
    let ctx = context_from_sources(&Sources::default()).expect("defaults");
    let t = injected_template(&ctx, DEPLOYMENT);
    let image = t.pointer("/spec/containers/1/image").and_then(Value::as_str).expect("image");
    assert!(image.starts_with(&format!("{DEFAULT_HUB}/rudder-proxy:")), "{image}");
    assert_eq!(t.pointer("/metadata/annotations/istio.io~1rev").and_then(Value::as_str), Some("default"));
    assert_eq!(env(&t, "ISTIO_META_OWNER"), Some("kubernetes://apis/apps/v1/namespaces/apps/deployments/web"));
}

#[test]
fn operator_file_supplies_hub_tag_revision_and_mesh() {
    let iop = "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  hub: registry.example.com/mesh
  tag: 1.27
  revision: canary
  meshConfig:
    trustDomain: example.org
  values:
    global:
      istioNamespace: mesh-system
";
    let sources = Sources { operator: Some(iop.into()), ..Sources::default() };
    let ctx = context_from_sources(&sources).expect("iop");
    assert_eq!(ctx.revision.as_deref(), Some("canary"));
    let t = injected_template(&ctx, DEPLOYMENT);
    assert_eq!(
        t.pointer("/spec/containers/1/image").and_then(Value::as_str),
        Some("registry.example.com/mesh/rudder-proxy:1.27")
    );
    assert_eq!(env(&t, "CA_ADDR"), Some("istiod-canary.mesh-system.svc:15012"));
    assert_eq!(env(&t, "TRUST_DOMAIN"), Some("example.org"));
    assert_eq!(t.pointer("/metadata/annotations/istio.io~1rev").and_then(Value::as_str), Some("canary"));
    // -r wins over the operator file's revision
    let sources = Sources { operator: Some(iop.into()), revision: Some("blue".into()), ..Sources::default() };
    assert_eq!(context_from_sources(&sources).expect("iop").revision.as_deref(), Some("blue"));
    let err = context_from_sources(&Sources { operator: Some("kind: Deployment\n".into()), ..Sources::default() })
        .expect_err("not an IOP");
    assert!(err.contains("IstioOperator"), "{err}");
}

#[test]
fn config_maps_are_accepted_as_files() {
    let config = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio-sidecar-injector}
data:
  config: |
    injectedAnnotations:
      example.com/a: b
  values: '{\"global\": {\"hub\": \"hub.example.com\", \"tag\": \"t\"}}'
";
    let mesh =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata:\n  mesh: |\n    trustDomain: corp.local\n";
    let sources = Sources {
        inject_config: Some(config.into()),
        values: Some(config.into()),
        mesh_config: Some(mesh.into()),
        ..Sources::default()
    };
    let ctx = context_from_sources(&sources).expect("config maps");
    let t = injected_template(&ctx, DEPLOYMENT);
    assert_eq!(t.pointer("/metadata/annotations/example.com~1a").and_then(Value::as_str), Some("b"));
    assert_eq!(t.pointer("/spec/containers/1/image").and_then(Value::as_str), Some("hub.example.com/rudder-proxy:t"));
    assert_eq!(env(&t, "TRUST_DOMAIN"), Some("corp.local"));
    let bad = Sources { inject_config: Some("policy: sometimes\n".into()), ..Sources::default() };
    assert!(context_from_sources(&bad).expect_err("bad").starts_with("inject config: "));
}

#[test]
fn policy_and_selectors_do_not_apply_offline() {
    let sources = Sources {
        inject_config: Some("policy: disabled\nneverInjectSelector: [{matchLabels: {app: web}}]\n".into()),
        ..Sources::default()
    };
    let ctx = context_from_sources(&sources).expect("config");
    let out = inject_documents(&ctx, DEPLOYMENT).expect("inject");
    assert!(out.yaml.contains("istio-proxy"), "{}", out.yaml);
    assert!(out.messages.is_empty());
}

#[test]
fn invalid_annotation_fails_the_run() {
    let text = DEPLOYMENT
        .replace("metadata: {labels: {app: web}}", "metadata: {annotations: {sidecar.istio.io/proxyCPU: abc}}");
    let err = inject_documents(&InjectionContext::offline_defaults(), &text).expect_err("bad");
    assert!(
        matches!(err, InjectError::InvalidAnnotation { ref annotation, .. } if annotation == "sidecar.istio.io/proxyCPU")
    );
}

#[test]
fn other_documents_pass_through_as_written() {
    let text = "# leading comment\nkind: Service   # trailing\nmetadata: {name: s}\n---\n---\n[not, a, map]\n";
    let out = inject_documents(&InjectionContext::offline_defaults(), text).expect("inject");
    assert_eq!(
        out.yaml,
        "# leading comment\nkind: Service   # trailing\nmetadata: {name: s}\n---\n[not, a, map]\n---\n"
    );
}
