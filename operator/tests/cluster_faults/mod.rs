//! The fault journeys, run after the user journeys on the same cluster (the canary revision is
//! then the control plane, `testns1` its workloads): the API server down for 30 s, the
//! webhook's CA rotated under admission traffic, the operator killed mid-reconcile.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rudder_e2e::cluster::Cluster;

use super::{apply_traffic, edited_injector_webhook_is_put_back, example, in_sleep, jsonpath, only, rudder, wait_for};

/// Restart counts of every container of the control plane and the operator.
fn control_plane_restarts(cluster: &Cluster) -> String {
    let mut all = String::new();
    for namespace in ["istio-system", "istio-operator"] {
        all += &jsonpath(
            cluster,
            &["-n", namespace, "get", "pods"],
            r#"{range .items[*]}{.metadata.name}={.status.containerStatuses[*].restartCount} {end}"#,
        )
        .unwrap_or_default();
    }
    all
}

/// Discovery pushes new routes: header routing to v2 for `end-user: jason` takes effect, then
/// everything back to v1 (the state the journeys leave).
fn routing_changes_reach_the_sidecars(cluster: &Cluster) {
    let jason = apply_traffic(
        cluster,
        "04-header-routing-jason.yaml",
        "-H 'end-user: jason'",
        "/get",
        |c| only(c, "200 v2"),
        10,
    );
    assert!(only(&jason, "200 v2"), "{jason:?}");
    let others = apply_traffic(cluster, "02-route-all-to-v1.yaml", "", "/get", |c| only(c, "200 v1"), 10);
    assert!(only(&others, "200 v1"), "{others:?}");
}

/// The loop the outage probe runs in the sleep container, detached from the `kubectl exec`
/// that starts it (that stream goes through the API server): one line a request.
const DETACHED_PROBE: &str = r#"rm -f /tmp/probe.log /tmp/probe.stop
setsid sh -c 'while [ ! -f /tmp/probe.stop ]; do curl -s -o /dev/null --max-time 10 -w "%{http_code} exit=%{exitcode}\n" http://httpbin.testns1:8000/get >> /tmp/probe.log; sleep 0.2; done' </dev/null >/dev/null 2>&1 &"#;

/// Journey g: the API server killed and down for 30 s. Mesh traffic flows throughout on the
/// config the sidecars hold, no control-plane container restarts, and afterwards discovery,
/// the webhook and the operator act on new changes without a restart.
pub fn control_plane_rides_out_an_api_server_outage(cluster: &Cluster) {
    if !cluster.is_local() {
        println!("journey g: skipped (stopping the API server needs the local cluster)");
        return;
    }
    let restarts_before = control_plane_restarts(cluster);
    in_sleep(cluster, DETACHED_PROBE);
    wait_for("the probe loop runs", Duration::from_secs(30), || {
        let lines = in_sleep(cluster, "cat /tmp/probe.log 2>/dev/null | wc -l");
        if lines.trim().parse::<u32>().unwrap_or(0) >= 3 { Ok(()) } else { Err(lines) }
    });

    let down = cluster.kill_api_server().unwrap();
    let killed = Instant::now();
    assert!(cluster.kubectl(&["get", "--raw", "/readyz"]).is_err(), "the API server is down");
    std::thread::sleep(Duration::from_secs(30));
    down.restart().unwrap();
    let api_back = Instant::now();
    println!("journey g: API server down for {:.1} s (SIGKILL, then started again)", killed.elapsed().as_secs_f64());
    let restarted_at = utc_now();

    // Probe a little past the outage, then collect.
    std::thread::sleep(Duration::from_secs(3));
    let log = in_sleep(cluster, "touch /tmp/probe.stop; sleep 1; cat /tmp/probe.log");
    let mut counts = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        *counts.entry(line.to_owned()).or_insert(0u32) += 1;
    }
    let total: u32 = counts.values().sum();
    println!("journey g: sleep → httpbin during the outage: {counts:?}");
    assert!(total >= 100, "the probe ran through the outage: {counts:?}");
    assert!(only(&counts, "200 exit=0"), "no request failed while the API server was down: {counts:?}");

    // Kubernetes itself recovers first.
    node_and_istiod_ready(cluster, &restarted_at);

    // Discovery: a routing change made after the outage reaches the sidecars.
    routing_changes_reach_the_sidecars(cluster);
    // The webhook: a pod created now is injected.
    let containers = cluster
        .kubectl(&[
            "-n",
            "testns1",
            "run",
            "after-outage",
            "--image=docker.io/curlimages/curl:8.8.0",
            "--dry-run=server",
            "-o",
            "jsonpath={.spec.containers[*].name}",
        ])
        .unwrap();
    assert!(containers.contains("istio-proxy"), "injected after the outage: {containers}");
    // The operator: an edited webhook configuration is put back.
    edited_injector_webhook_is_put_back(cluster, "istio-sidecar-injector-canary");
    assert_eq!(control_plane_restarts(cluster), restarts_before, "no control-plane container restarted");
    println!(
        "journey g: after the outage a route change, an injection and an operator repair all worked; no restarts ({restarts_before})"
    );

    // The next journey needs a settled cluster. The node controller may still mark the node
    // NotReady (which takes every pod's endpoints away for a while): its grace period, 50 s,
    // runs from the last Lease renewal it saw, before the kill, and it sees renewals again only
    // when its informers reconnect. client-go's reflectors retry with a backoff capped at 30 s
    // and jittered up to twice that, so a reconnect can come up to 60 s after the API server is
    // back (CI runs saw the node marked 19 s and 22 s after the restart, once after a fixed
    // 75 s wait from the kill). Nothing reports that the controller has caught up, so wait out
    // that bound, then for the node and istiod to be ready again.
    let settled = api_back + Duration::from_secs(62);
    if let Some(rest) = settled.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    node_and_istiod_ready(cluster, &restarted_at);
}

/// Kubernetes recovered from the outage: the node's heartbeat has resumed since `restarted_at`
/// (a late one has the node controller mark it NotReady and every pod's endpoints not ready),
/// and istiod's endpoints are ready, as a user would see before going on. The heartbeat is the
/// node's Lease, renewed every 10 s: the Ready condition's own heartbeat time is written only
/// when the status changes or every 5 minutes, so it says nothing about a 30 s outage.
fn node_and_istiod_ready(cluster: &Cluster, restarted_at: &str) {
    wait_for("the node heartbeats again and istiod-canary has ready endpoints", Duration::from_secs(120), || {
        let node = jsonpath(
            cluster,
            &["get", "nodes"],
            r#"{.items[0].metadata.name} {.items[0].status.conditions[?(@.type=="Ready")].status}"#,
        )?;
        let (name, ready) = node.split_once(' ').unwrap_or((&node, ""));
        let renewed = jsonpath(cluster, &["-n", "kube-node-lease", "get", "lease", name], "{.spec.renewTime}")?;
        if ready != "True" || renewed.as_str() < restarted_at {
            return Err(format!("node {name}: Ready {ready}, lease renewed {renewed}"));
        }
        let endpoints = jsonpath(
            cluster,
            &["-n", "istio-system", "get", "endpointslices", "-l", "kubernetes.io/service-name=istiod-canary"],
            "{.items[*].endpoints[*].conditions.ready}",
        )?;
        if endpoints.split_whitespace().any(|r| r == "true") {
            Ok(())
        } else {
            Err(format!("istiod-canary endpoints: {endpoints:?}"))
        }
    });
}

/// The time now in UTC as Kubernetes writes it (`2026-12-06T01:44:10Z`).
fn utc_now() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Journey h: the webhook's certificate Secret deleted (a forced rotation to a new CA) while
/// the API server sends admission requests to the injector and the validator without pause:
/// none fails, and the webhook configurations end up trusting the new CA.
pub fn webhook_ca_rotates_under_admission_traffic(cluster: &Cluster) {
    let bundle = || {
        jsonpath(
            cluster,
            &["get", "mutatingwebhookconfiguration", "istio-sidecar-injector-canary"],
            "{.webhooks[0].clientConfig.caBundle}",
        )
    };
    let before = bundle().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let kubeconfig = cluster.kubeconfig().to_owned();
        let kubectl = cluster.kubectl_path().to_owned();
        let virtual_service = example("traffic/03-weighted-90-10.yaml");
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut admitted = 0u32;
            let run =
                |args: &[&str]| std::process::Command::new(&kubectl).env("KUBECONFIG", &kubeconfig).args(args).output();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let injected = run(&[
                    "-n",
                    "testns1",
                    "run",
                    "rotation-probe",
                    "--image=docker.io/curlimages/curl:8.8.0",
                    "--dry-run=server",
                    "-o",
                    "jsonpath={.spec.containers[*].name}",
                ])
                .map(|o| {
                    (
                        o.status.success(),
                        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
                    )
                });
                match injected {
                    Ok((true, names)) if names.contains("istio-proxy") => admitted += 1,
                    Ok((_, out)) => failures.push(format!("inject: {out}")),
                    Err(e) => failures.push(format!("inject: {e}")),
                }
                let validated = run(&["apply", "--dry-run=server", "-f", &virtual_service]);
                match validated {
                    Ok(o) if o.status.success() => admitted += 1,
                    Ok(o) => failures.push(format!("validate: {}", String::from_utf8_lossy(&o.stderr))),
                    Err(e) => failures.push(format!("validate: {e}")),
                }
            }
            (admitted, failures)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let rotated_at = Instant::now();
    cluster.kubectl(&["-n", "istio-system", "delete", "secret", "istiod-canary-webhook-certs"]).unwrap();
    let both = wait_for("caBundle trusts a new CA beside the old", Duration::from_secs(60), || {
        let now = bundle()?;
        if now != before { Ok(now) } else { Err("caBundle unchanged".into()) }
    });
    println!("journey h: new CA in caBundle {:.1} s after the Secret was deleted", rotated_at.elapsed().as_secs_f64());
    assert!(decoded_contains(&both, &before), "the old CA stays trusted while the new certificate takes over");
    // The new certificate is served a few seconds after the bundle changed; keep admitting past that.
    std::thread::sleep(Duration::from_secs(15));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (admitted, failures) = load.join().unwrap();
    println!("journey h: {admitted} admissions during the rotation, {} failed", failures.len());
    assert!(admitted >= 20, "admission traffic ran through the rotation ({admitted})");
    if !failures.is_empty() {
        // What took the webhook's endpoints away: probe failures, a restart, or the node.
        let events = cluster
            .kubectl(&["-n", "istio-system", "get", "events", "--sort-by=.lastTimestamp"])
            .unwrap_or_else(|e| e.to_string());
        let tail: Vec<&str> = events.lines().rev().take(25).collect();
        let previous = cluster
            .kubectl(&["-n", "istio-system", "logs", "deploy/istiod-canary", "--previous", "--tail=40"])
            .unwrap_or_else(|e| e.to_string());
        panic!(
            "no admission failed during the CA rotation: {failures:#?}\nrestarts: {}\nevents (newest first):\n{}\nprevious istiod-canary logs:\n{previous}",
            control_plane_restarts(cluster),
            tail.join("\n")
        );
    }
    let secret =
        jsonpath(cluster, &["-n", "istio-system", "get", "secret", "istiod-canary-webhook-certs"], "{.metadata.uid}");
    assert!(secret.is_ok(), "the Secret was recreated: {secret:?}");
}

/// Whether base64 PEM bundle `outer` holds every certificate of base64 PEM bundle `inner`.
fn decoded_contains(outer: &str, inner: &str) -> bool {
    let decode = |b64: &str| {
        let out = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().map(|mut s| s.write_all(b64.as_bytes())).transpose()?;
                child.wait_with_output()
            });
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    let outer = decode(outer);
    let inner = decode(inner);
    !inner.trim().is_empty()
        && inner.split("-----END CERTIFICATE-----").filter(|c| !c.trim().is_empty()).all(|c| outer.contains(c.trim()))
}

const FAULTS_CR: &str = r#"apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: faults
  namespace: istio-system
spec:
  revision: faults
  profile: default
  components:
    ingressGateways:
    - name: istio-ingressgateway
      enabled: false
"#;

const OWNED_KINDS: &str = "serviceaccounts,configmaps,services,deployments,horizontalpodautoscalers,poddisruptionbudgets,roles,rolebindings,clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingwebhookconfigurations";

/// Objects of the kinds the operator installs, `Kind namespace/name` (no namespace for
/// cluster-scoped ones), those owned by IstioOperator `faults` or all of them.
fn installed(cluster: &Cluster, only_faults: bool) -> Result<BTreeSet<String>, String> {
    let mut args = vec!["get", OWNED_KINDS, "-A"];
    if only_faults {
        args.extend(["-l", "install.operator.istio.io/owning-resource=faults"]);
    }
    let out =
        jsonpath(cluster, &args, r#"{range .items[*]}{.kind} {.metadata.namespace}/{.metadata.name}{"\n"}{end}"#)?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
}

fn owned_by_faults(cluster: &Cluster) -> Result<BTreeSet<String>, String> {
    installed(cluster, true)
}

/// Journey i: the operator's process SIGKILLed while it installs revision `faults`; the kubelet
/// restarts it, it finishes the install, and the objects are exactly what
/// `rudder manifest generate` renders for the CR — none missing, none extra, the Deployment
/// rolled out once — and deleting the CR removes them all.
pub fn operator_killed_mid_reconcile_converges(cluster: &Cluster) {
    if !cluster.is_local() {
        println!("journey i: skipped (killing the operator's process needs the local cluster)");
        return;
    }
    let cr = std::env::temp_dir().join(format!("rudder-faults-cr-{}.yaml", std::process::id()));
    std::fs::write(&cr, FAULTS_CR).unwrap();
    let rendered = rudder(cluster, &["manifest", "generate", "-f", &cr.display().to_string()]);
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let mut expected = BTreeSet::new();
    for object in documents.iter().filter(|d| d.is_object()) {
        let kind = object["kind"].as_str().unwrap_or_default();
        if kind == "Namespace" || kind == "CustomResourceDefinition" {
            continue; // shared by every revision
        }
        let meta = &object["metadata"];
        let (namespace, name) =
            (meta["namespace"].as_str().unwrap_or_default(), meta["name"].as_str().unwrap_or_default());
        expected.insert(format!("{kind} {namespace}/{name}"));
    }
    assert!(expected.len() > 10, "rendered: {expected:?}");

    let operator = jsonpath(
        cluster,
        &["get", "pods", "-A", "-l", "name=istio-operator"],
        "{.items[0].metadata.namespace} {.items[0].metadata.name}",
    )
    .unwrap();
    let (operator_ns, operator_pod) = operator.split_once(' ').unwrap();
    let restarts = || {
        jsonpath(
            cluster,
            &["-n", operator_ns, "get", "pod", operator_pod],
            "{.status.containerStatuses[0].restartCount}",
        )
    };
    let restarts_before = restarts().unwrap();

    let present_before = installed(cluster, false).unwrap();
    let shared_before: Vec<_> = expected.intersection(&present_before).collect();
    println!("journey i: rendered objects present before the CR (shared with the canary): {shared_before:?}");
    cluster.kubectl(&["apply", "-f", &cr.display().to_string()]).unwrap();
    // Polled as fast as kubectl answers: the kill should land while objects are being created.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let owned = owned_by_faults(cluster).unwrap_or_default();
        if !owned.is_empty() {
            break owned.len();
        }
        assert!(Instant::now() < deadline, "the operator did not start creating revision faults in 60 s");
    };
    let status = jsonpath(cluster, &["-n", "istio-system", "get", "istiooperator", "faults"], "{.status.status}")
        .unwrap_or_default();
    let killed = cluster.kill_container_process(operator_ns, operator_pod, "istio-operator").unwrap();
    println!(
        "journey i: operator (pid {killed}) SIGKILLed with {seen} of {} objects created, CR status {status:?}",
        expected.len()
    );
    wait_for("the kubelet restarts the operator", Duration::from_secs(120), || {
        let now = restarts()?;
        if now != restarts_before { Ok(()) } else { Err(now) }
    });
    wait_for("IstioOperator faults HEALTHY after the restart", Duration::from_secs(240), || {
        let status = jsonpath(cluster, &["-n", "istio-system", "get", "istiooperator", "faults"], "{.status.status}")?;
        if status == "HEALTHY" { Ok(()) } else { Err(status) }
    });
    // Every rendered object exists (some, like the reader ServiceAccount, are shared with the
    // revision installed first and stay owned by it), and the CR owns nothing else.
    let present = installed(cluster, false).unwrap();
    let owned = owned_by_faults(cluster).unwrap();
    let missing: Vec<_> = expected.difference(&present).collect();
    let extra: Vec<_> = owned.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "end state = the rendered manifest; missing {missing:?}, extra {extra:?}"
    );
    let replica_sets = jsonpath(
        cluster,
        &["-n", "istio-system", "get", "rs", "-l", "app=istiod,istio.io/rev=faults"],
        "{.items[*].metadata.name}",
    )
    .unwrap();
    assert_eq!(replica_sets.split_whitespace().count(), 1, "istiod-faults rolled out once: {replica_sets}");
    println!(
        "journey i: after the restart, HEALTHY with exactly the {} rendered objects; one ReplicaSet",
        expected.len()
    );

    cluster.kubectl(&["-n", "istio-system", "delete", "istiooperator", "faults", "--wait=false"]).unwrap();
    wait_for("deleting the CR removes every object it owned", Duration::from_secs(180), || {
        let owned = owned_by_faults(cluster)?;
        if owned.is_empty() { Ok(()) } else { Err(format!("{owned:?}")) }
    });
    let _ = std::fs::remove_file(&cr);
    println!("journey i: IstioOperator faults deleted: no object of it left");
}

/// Journey j: a malformed field in the mesh ConfigMap on the real API server (no schema or
/// webhook guards a ConfigMap): discovery keeps the last good mesh config and names the object
/// and the field, routing changes still reach the sidecars, and the operator puts its rendered
/// ConfigMap back.
pub fn malformed_mesh_config_keeps_the_last_good(cluster: &Cluster) {
    let mesh = || jsonpath(cluster, &["-n", "istio-system", "get", "configmap", "istio-canary"], "{.data.mesh}");
    let good = mesh().unwrap();
    // Logs from the patch on, whatever discovery logged before it.
    let patched_at = utc_now();
    let patch = r#"{"data":{"mesh":"defaultConfig:\n  concurrency: lots\n"}}"#;
    cluster
        .kubectl(&["-n", "istio-system", "patch", "configmap", "istio-canary", "--type", "merge", "-p", patch])
        .unwrap();
    let warning = wait_for("discovery names the malformed ConfigMap field", Duration::from_secs(60), || {
        let logs = cluster
            .kubectl(&["-n", "istio-system", "logs", "deploy/istiod-canary", &format!("--since-time={patched_at}")])
            .map_err(|e| e.to_string())?;
        logs.lines()
            .find(|l| l.contains("keeping the previous mesh config") && l.contains("istio-canary"))
            .map(str::to_owned)
            .ok_or_else(|| "no warning yet".to_owned())
    });
    assert!(warning.contains("concurrency"), "the warning names the field: {warning}");
    println!("journey j: {}", warning.trim());
    routing_changes_reach_the_sidecars(cluster);
    wait_for("the operator puts the rendered mesh ConfigMap back", Duration::from_secs(90), || {
        let now = mesh()?;
        if now == good { Ok(()) } else { Err(now) }
    });
    println!("journey j: last good mesh config kept, routes still pushed, the ConfigMap restored by the operator");
}
