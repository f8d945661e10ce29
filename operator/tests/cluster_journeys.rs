//! The user journeys on a real cluster (see `rudder_e2e::cluster`): the operator installed with
//! `rudder operator init`, the default IstioOperator reconciled to HEALTHY with discovery running
//! in the istiod pod, and the validating webhook refusing bad config. The journeys build on each
//! other, so they run in order in one test; each prints what it checked and how long it took.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rudder_e2e::cluster::{self, Cluster};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");

fn example(path: &str) -> String {
    format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Polls `probe` every 500 ms until it yields a value; fails with the last observation.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}; last seen: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn rudder(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.command(RUDDER).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "rudder {}: {}\n{text}", args.join(" "), out.status);
    text
}

fn jsonpath(cluster: &Cluster, args: &[&str], path: &str) -> Result<String, String> {
    let output = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &output]);
    cluster.kubectl(&all).map_err(|e| e.to_string())
}

/// Journey a: `rudder operator init`, then the default CR → HEALTHY, discovery in the istiod
/// pod, caBundles patched, and an invalid VirtualService refused naming its field.
fn operator_installs_the_default_control_plane(cluster: &Cluster) {
    rudder(cluster, &["operator", "init"]);
    let started = Instant::now();
    cluster.kubectl(&["apply", "-f", &example("operator/default.yaml")]).unwrap();
    wait_for("IstioOperator default HEALTHY", Duration::from_secs(240), || {
        let status = jsonpath(cluster, &["-n", "istio-system", "get", "istiooperator", "default"], "{.status.status}")?;
        if status == "HEALTHY" { Ok(()) } else { Err(status) }
    });
    println!("journey a: default IstioOperator HEALTHY {:.1} s after kubectl apply", started.elapsed().as_secs_f64());

    let args = jsonpath(
        cluster,
        &["-n", "istio-system", "get", "pods", "-l", "app=istiod"],
        "{.items[*].spec.containers[0].args}",
    )
    .unwrap();
    assert!(args.contains("discovery"), "the istiod pod runs `rudder discovery`: {args}");
    let ready = jsonpath(
        cluster,
        &["-n", "istio-system", "get", "pods", "-l", "app=istiod"],
        "{.items[*].status.conditions[?(@.type==\"Ready\")].status}",
    )
    .unwrap();
    assert_eq!(ready, "True", "istiod ready");

    for (kind, name) in [
        ("mutatingwebhookconfiguration", "istio-sidecar-injector"),
        ("validatingwebhookconfiguration", "istio-validator-istio-system"),
    ] {
        let bundles = wait_for(&format!("{kind} {name} caBundle"), Duration::from_secs(60), || {
            let b = jsonpath(cluster, &["get", kind, name], "{.webhooks[*].clientConfig.caBundle}")?;
            if b.split_whitespace().count() > 0 { Ok(b) } else { Err("no caBundle".into()) }
        });
        assert!(bundles.split_whitespace().all(|b| b.len() > 100), "{kind} {name}: every webhook has a caBundle");
    }

    let invalid = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bad-weight
  namespace: default
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -10
";
    // The webhook turns to failurePolicy Fail once discovery serves; until then the API server
    // may still accept, so retry until the refusal is seen.
    let refusal =
        wait_for("the validating webhook refuses an invalid VirtualService", Duration::from_secs(60), || match cluster
            .apply(invalid)
        {
            Ok(out) => {
                let _ =
                    cluster.kubectl(&["-n", "default", "delete", "virtualservice", "bad-weight", "--ignore-not-found"]);
                Err(format!("accepted: {out}"))
            }
            Err(e) => Ok(e.to_string()),
        });
    assert!(refusal.contains("denied the request"), "refused by the admission webhook: {refusal}");
    assert!(refusal.contains("spec.http[0].route[0].weight"), "the refusal names the field: {refusal}");
    println!("journey a: invalid VirtualService refused: {}", refusal.lines().last().unwrap_or_default());
}

#[test]
fn user_journeys_on_a_real_cluster() {
    let Some(cluster) = cluster::shared(RUDDER) else { return };
    operator_installs_the_default_control_plane(cluster);
}
