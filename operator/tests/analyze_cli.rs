//! `rudder analyze` as a user runs it on files: the built binary, the examples, a broken
//! config given as a file and on stdin, exit codes. (Reading a cluster is covered by the
//! cluster journeys.)

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn rudder(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_remove("KUBECONFIG")
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_examples_analyze_clean() {
    let out = rudder(&["analyze", "-f", "examples/"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "✔ No validation issues found when analyzing examples/.\n");
}

const BROKEN: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: testns1
  labels: {istio-injection: enabled, istio.io/rev: canary}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: testns1}
spec:
  ports: [{port: 8000, name: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: testns1}
spec:
  host: httpbin
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: testns1}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin-gateway]
  http:
  - route: [{destination: {host: httpbin, subset: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: testns1}
spec:
  host: reviews
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: istio-sidecar-injector}
webhooks:
- name: namespace.sidecar-injector.istio.io
  clientConfig: {service: {name: istiod, namespace: istio-system, path: /inject}}
  namespaceSelector: {matchLabels: {istio-injection: enabled}}
  sideEffects: None
  admissionReviewVersions: [v1]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: istio-sidecar-injector-canary}
webhooks:
- name: rev.namespace.sidecar-injector.istio.io
  clientConfig: {service: {name: istiod-canary, namespace: istio-system, path: /inject}}
  namespaceSelector: {matchExpressions: [{key: istio.io/rev, operator: In, values: [canary]}]}
  sideEffects: None
  admissionReviewVersions: [v1]
"#;

#[test]
fn cross_object_problems_are_reported_with_istioctl_codes_and_exit_79() {
    let out = rudder(&["analyze", "-f", "-"], Some(BROKEN));
    assert_eq!(out.status.code(), Some(79), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        r#"Error [IST0101] (VirtualService httpbin.testns1) Referenced gateway not found: "httpbin-gateway" [<stdin>:4]"#,
        r#"Error [IST0101] (VirtualService httpbin.testns1) Referenced host+subset in destinationrule not found: "httpbin+v2" [<stdin>:4]"#,
        r#"Warning [IST0101] (DestinationRule reviews.testns1) Referenced host not found: "reviews" [<stdin>:5]"#,
    ] {
        assert!(lines.contains(&expected), "missing {expected}\n{stdout}");
    }
    assert!(lines.iter().any(|l| l.starts_with("Warning [IST0123] (Namespace testns1)")), "{stdout}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("Error [RDR0001]")).count(), 2, "{stdout}");
    // Valid objects referenced correctly raise nothing: the httpbin DestinationRule's host is
    // the Service.
    assert!(!stdout.contains("DestinationRule httpbin"), "{stdout}");

    // -n keeps the namespace's objects and the cluster-scoped ones.
    let other = rudder(&["analyze", "-f", "-", "-n", "elsewhere"], Some(BROKEN));
    let other_out = text(&other.stdout);
    assert!(!other_out.contains("VirtualService") && other_out.contains("RDR0001"), "{other_out}");
}

#[test]
fn an_unreadable_input_exits_2() {
    let out = rudder(&["analyze", "-f", "no/such/dir"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no/such/dir"), "{}", text(&out.stderr));
}
