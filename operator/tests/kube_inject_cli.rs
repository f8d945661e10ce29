//! `rudder kube-inject` as a user runs it: the built binary on examples/apps/httpbin.yaml,
//! stdin, `-o`, idempotency, skips on stderr, and exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn rudder(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rudder");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("rudder runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kube-inject-cli");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir.join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn injects_httpbin() {
    let out = rudder(&["kube-inject", "-f", "examples/apps/httpbin.yaml"], "");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("valid YAML out");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Service", "Deployment", "Deployment"]);
    for deployment in &docs[2..] {
        let spec = &deployment["spec"]["template"]["spec"];
        let names: Vec<&str> =
            spec["containers"].as_array().expect("containers").iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["httpbin", "istio-proxy"]);
        assert_eq!(spec["initContainers"][0]["name"], "istio-init");
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["security.istio.io/tlsMode"], "istio");
        assert_eq!(labels["service.istio.io/canonical-name"], "httpbin");
    }
    // Injecting the output again (from stdin, into a file) changes nothing.
    let path = scratch("httpbin.injected.yaml");
    let again = rudder(&["kube-inject", "-f", "-", "-o", path.to_str().expect("path")], &yaml);
    assert!(again.status.success(), "stderr: {}", text(&again.stderr));
    assert_eq!(std::fs::read_to_string(&path).expect("output file"), yaml);
}

#[test]
fn skips_are_reported_on_stderr() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: apps}\nspec:\n  hostNetwork: true\n  containers: [{name: a, image: a}]\n";
    let out = rudder(&["kube-inject", "-f", "-"], input);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("skipping injection of Pod apps/p: hostNetwork"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("istio-proxy"));
}

#[test]
fn errors_have_exit_codes() {
    let missing = rudder(&["kube-inject", "-f", "does/not/exist.yaml"], "");
    assert_eq!(missing.status.code(), Some(2));
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {sidecar.istio.io/interceptionMode: MAGIC}}\nspec: {containers: [{name: a, image: a}]}\n";
    let out = rudder(&["kube-inject", "-f", "-"], bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("sidecar.istio.io/interceptionMode"), "{}", text(&out.stderr));
}
