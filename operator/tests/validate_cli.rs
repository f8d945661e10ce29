//! `rudder validate` as a user runs it: the built binary, real files, stdin, exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn rudder(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rudder");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("rudder runs")
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("validate-cli");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const BROKEN: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: testns1
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin, subset: v1}
      weight: 90
    - destination: {host: httpbin, subset: v2}
      weight: -10
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: regex
  namespace: testns1
spec:
  hosts: [httpbin]
  http:
  - match:
    - uri: {regex: "([a-z"}
    route:
    - destination: {host: httpbin}
"#;

#[test]
fn the_examples_validate_clean() {
    let out = rudder(&["validate", "-f", "examples/"], None);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid"), "{}", text(&out.stdout));
}

#[test]
fn every_error_of_a_file_names_document_object_and_field() {
    let file = scratch("broken.yaml", BROKEN);
    let out = rudder(&["validate", "-f", file.to_str().expect("utf-8 path")], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let shown = file.display().to_string();
    assert!(
        stderr.contains(&format!("error: {shown}:1 VirtualService testns1/httpbin: spec.http[0].route[1].weight: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("error: {shown}:2 VirtualService testns1/regex: spec.http[0].match[0].uri.regex: ")),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("2 of 2 Istio object(s) invalid"), "{}", text(&out.stdout));
}

#[test]
fn stdin_is_read_with_dash() {
    let good = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n";
    let out = rudder(&["validate", "-f", "-"], Some(good));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let out = rudder(&["validate", "-f", "-"], Some(BROKEN));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("<stdin>:1 VirtualService testns1/httpbin"), "{}", text(&out.stderr));
}

#[test]
fn other_kinds_are_skipped_and_counted() {
    let file = scratch("service.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n");
    let out = rudder(&["validate", "-f", file.to_str().expect("utf-8 path")], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("skipped 1 document(s) of other kinds (Service)"), "{}", text(&out.stdout));
}

#[test]
fn unreadable_input_exits_2_naming_the_file() {
    let out = rudder(&["validate", "-f", "does/not/exist.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does/not/exist.yaml"), "{}", text(&out.stderr));

    let file = scratch("broken-syntax.yaml", "kind: [unclosed\n");
    let out = rudder(&["validate", "-f", file.to_str().expect("utf-8 path")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("broken-syntax.yaml: not valid YAML"), "{}", text(&out.stderr));
}

#[test]
fn a_version_the_crd_does_not_serve_is_an_error() {
    let file = scratch(
        "v9.yaml",
        "apiVersion: networking.istio.io/v9\nkind: Gateway\nmetadata: {name: g, namespace: n}\nspec: {}\n",
    );
    let out = rudder(&["validate", "-f", file.to_str().expect("utf-8 path")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("apiVersion: networking.istio.io/v9 is not served"), "{}", text(&out.stderr));
}
