//! Golden injected outputs: every `tests/golden/<case>.yaml` is injected as `kube-inject` does
//! (with `<case>.config.yaml`, `<case>.values.yaml` and `<case>.mesh.yaml` when present) and
//! compared with `<case>.yaml.injected`. `UPDATE_GOLDEN=1 cargo test -p rudder-webhook --test
//! inject_golden` rewrites the goldens. Every golden is also checked for idempotency (injecting
//! the output again changes nothing), and every pod in it for the JSON patch (the patch applied
//! to the original pod gives the injected pod). Invalid annotations are checked as a table.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use rudder_config::labels;
use rudder_webhook::inject::kube_inject::{Sources, context_from_sources, inject_documents};
use rudder_webhook::inject::{InjectError, InjectionContext, Outcome, inject_pod, mutate, patch};
use serde_json::{Value, json};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".yaml") && name.matches('.').count() == 1
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 25, "expected the golden inputs, found {}", cases.len());
    cases
}

fn sibling(case: &Path, suffix: &str) -> Option<String> {
    std::fs::read_to_string(case.with_extension(suffix)).ok()
}

fn context(case: &Path) -> InjectionContext {
    let sources = Sources {
        inject_config: sibling(case, "config.yaml"),
        mesh_config: sibling(case, "mesh.yaml"),
        values: sibling(case, "values.yaml"),
        ..Sources::default()
    };
    context_from_sources(&sources).expect("context")
}

#[test]
fn goldens_match_and_are_idempotent() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for case in cases() {
        let ctx = context(&case);
        let input = std::fs::read_to_string(&case).expect("input");
        let out = inject_documents(&ctx, &input).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let mut text = out.yaml.clone();
        for message in &out.messages {
            text.push_str(&format!("# skipped: {message}\n"));
        }
        let golden = case.with_extension("yaml.injected");
        if update {
            std::fs::write(&golden, &text).expect("write golden");
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            stale.push(case.display().to_string());
        }
        let again = inject_documents(&ctx, &out.yaml).expect("re-inject");
        assert_eq!(again.yaml, out.yaml, "{}: injecting the output again changed it", case.display());
    }
    assert!(stale.is_empty(), "goldens differ (UPDATE_GOLDEN=1 refreshes): {stale:?}");
}

/// The pod templates of a golden input, with their namespace.
fn pods(doc: &Value, default_ns: &str, out: &mut Vec<(String, Pod)>) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_ns).to_owned();
    let template = match kind {
        "List" => {
            for item in doc.get("items").and_then(Value::as_array).into_iter().flatten() {
                pods(item, &ns, out);
            }
            return;
        }
        "Pod" => Some(doc.clone()),
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template").cloned(),
        _ => doc.pointer("/spec/template").cloned(),
    };
    if let Some(t) = template
        && let Ok(pod) = serde_json::from_value::<Pod>(json!({"metadata": t["metadata"], "spec": t["spec"]}))
    {
        out.push((ns, pod));
    }
}

#[test]
fn patch_applied_to_the_original_gives_the_injected_pod() {
    let mut checked = 0;
    for case in cases() {
        let ctx = context(&case);
        let input = std::fs::read_to_string(&case).expect("input");
        let Ok(docs) = serde_saphyr::from_multiple::<Value>(&input) else { continue };
        let mut found = Vec::new();
        for doc in &docs {
            pods(doc, "default", &mut found);
        }
        for (ns, pod) in found {
            let Ok(Outcome::Injected(injected)) = inject_pod(&ctx, &pod, &ns) else { continue };
            let ops = patch(&pod, &injected);
            let mut doc = serde_json::to_value(&pod).expect("pod");
            json_patch::patch(&mut doc, &ops).expect("patch applies");
            assert_eq!(doc, serde_json::to_value(&*injected).expect("injected"), "{}", case.display());
            // And the webhook path is idempotent too.
            let Ok(Outcome::Injected(twice)) = inject_pod(&ctx, &injected, &ns) else { panic!("re-inject") };
            assert_eq!(twice, injected, "{}: re-injection changed the pod", case.display());
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} pods checked");
}

#[test]
fn patch_adds_whole_maps_and_escapes_keys() {
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "a"}]}}))
    .expect("pod");
    let Outcome::Injected(injected) = inject_pod(&InjectionContext::offline_defaults(), &pod, "apps").expect("ok")
    else {
        panic!("not injected")
    };
    let ops = serde_json::to_value(patch(&pod, &injected)).expect("ops");
    let paths: Vec<&str> = ops.as_array().expect("array").iter().filter_map(|o| o["path"].as_str()).collect();
    assert!(paths.contains(&"/metadata/annotations"), "{paths:?}");
    assert!(paths.contains(&"/metadata/labels"), "{paths:?}");
}

fn pod_with(annotation: &str, value: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "p", "annotations": {annotation: value}},
        "spec": {"containers": [{"name": "a", "image": "a"}]}}))
    .expect("pod")
}

#[test]
fn invalid_annotations_fail_naming_the_annotation() {
    let ctx = InjectionContext::offline_defaults();
    let cases = [
        (labels::PROXY_CPU, "abc"),
        (labels::PROXY_MEMORY, "10MB"),
        (labels::PROXY_CPU_LIMIT, ""),
        (labels::PROXY_MEMORY_LIMIT, "1.2.3Gi"),
        (labels::INTERCEPTION_MODE, "redirect"),
        (labels::STATUS_PORT, "70000"),
        (labels::READINESS_PERIOD_SECONDS, "-1"),
        (labels::READINESS_INITIAL_DELAY_SECONDS, "soon"),
        (labels::READINESS_FAILURE_THRESHOLD, "1.5"),
        (labels::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,nope"),
        (labels::EXCLUDE_OUTBOUND_IP_RANGES, "*"),
        (labels::INCLUDE_INBOUND_PORTS, "80,http"),
        (labels::EXCLUDE_INBOUND_PORTS, "0"),
        (labels::INCLUDE_OUTBOUND_PORTS, "65536"),
        (labels::EXCLUDE_OUTBOUND_PORTS, "*"),
        (labels::EXCLUDE_INTERFACES, "a/b"),
        (labels::PROMETHEUS_MERGE_METRICS, "yes"),
        (labels::NATIVE_SIDECAR, "1"),
        (labels::REWRITE_APP_HTTP_PROBERS, "no"),
        (labels::PROXY_CONFIG, "concurrency: many"),
        (labels::PROXY_CONFIG, "bogusField: 1"),
        (labels::PROXY_CONFIG, "statusPort: 0\nproxyAdminPort: 0"),
        (labels::PROXY_CONFIG, "[1, 2]"),
        (labels::USER_VOLUME, "{not json"),
    ];
    for (annotation, value) in cases {
        match inject_pod(&ctx, &pod_with(annotation, value), "apps") {
            Err(InjectError::InvalidAnnotation { annotation: got, .. }) => assert_eq!(got, annotation, "{value:?}"),
            other => panic!("{annotation}={value:?}: expected an invalid-annotation error, got {other:?}"),
        }
    }
    let err = inject_pod(&ctx, &pod_with(labels::PROXY_CPU, "abc"), "apps").expect_err("bad");
    assert!(err.to_string().starts_with("invalid annotation sidecar.istio.io/proxyCPU: "), "{err}");
}

#[test]
fn unknown_or_go_templates_are_template_errors() {
    let mut ctx = InjectionContext::offline_defaults();
    let err = inject_pod(&ctx, &pod_with(labels::INJECT_TEMPLATES, "nosuch"), "apps").expect_err("unknown");
    assert!(matches!(err, InjectError::Template(ref m) if m.contains("\"nosuch\"")), "{err}");
    ctx.injector.templates.insert("go".into(), "metadata:\n  labels: {{ .Values.x }}\n".into());
    let err = inject_pod(&ctx, &pod_with(labels::INJECT_TEMPLATES, "go"), "apps").expect_err("go");
    assert!(err.to_string().contains("not evaluate"), "{err}");
    // A ConfigMap entry named like a built-in template does not replace it.
    ctx.injector.templates.insert("sidecar".into(), "{{ Go template text }}".into());
    assert!(matches!(inject_pod(&ctx, &pod_with("x", "y"), "apps"), Ok(Outcome::Injected(_))));
}

#[test]
fn skipped_pods_say_why() {
    let ctx = InjectionContext::offline_defaults();
    let Outcome::Skipped { reason } = inject_pod(&ctx, &pod_with(labels::SIDECAR_INJECT, "false"), "apps").expect("ok")
    else {
        panic!("injected")
    };
    assert!(reason.contains("sidecar.istio.io/inject=false"), "{reason}");
    let pod = pod_with("x", "y");
    assert!(matches!(inject_pod(&ctx, &pod, "kube-system"), Ok(Outcome::Skipped { .. })));
    // mutate alone does not decide
    assert!(mutate(&ctx, &pod, "kube-system", None).is_ok());
}
