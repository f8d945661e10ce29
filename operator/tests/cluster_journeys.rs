//! The user journeys on a real cluster (see `rudder_e2e::cluster`): the operator installed with
//! `rudder operator init`, the default IstioOperator reconciled to HEALTHY with discovery running
//! in the istiod pod, and the validating webhook refusing bad config. The journeys build on each
//! other, so they run in order in one test; each prints what it checked and how long it took.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rudder_e2e::cluster::{self, Cluster};

#[path = "cluster_faults/mod.rs"]
mod faults;

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

/// Runs `script` in the sleep pod's app container (busybox sh, curl).
fn in_sleep(cluster: &Cluster, script: &str) -> String {
    cluster.kubectl(&["-n", "testns1", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c", script]).unwrap()
}

/// `count` requests from the sleep pod: one `<status> <answering instance>` line each.
fn requests(cluster: &Cluster, count: u32, curl_args: &str, path: &str) -> Vec<(u16, String)> {
    let script = format!(
        "for i in $(seq {count}); do curl -s -o /dev/null --max-time 10 {curl_args} \
         -w '%{{http_code}} %header{{x-echo-instance}}\\n' http://httpbin.testns1:8000{path}; done"
    );
    in_sleep(cluster, &script)
        .lines()
        .filter_map(|l| {
            let (code, instance) = l.split_once(' ').unwrap_or((l, ""));
            Some((code.parse().ok()?, instance.trim().to_owned()))
        })
        .collect()
}

/// The httpbin version that answered, from its pod name (`httpbin-v1-…`).
fn version(instance: &str) -> &str {
    instance.strip_prefix("httpbin-").and_then(|rest| rest.split('-').next()).unwrap_or("none")
}

fn tally(replies: &[(u16, String)]) -> std::collections::BTreeMap<String, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for (code, instance) in replies {
        *counts.entry(format!("{code} {}", version(instance))).or_insert(0) += 1;
    }
    counts
}

/// Applies a traffic example and waits until `settled` holds for a probe of 10 requests
/// (config reaches the sidecar asynchronously), then returns `count` more requests' tally.
fn apply_traffic(
    cluster: &Cluster,
    file: &str,
    curl_args: &str,
    path: &str,
    settled: impl Fn(&std::collections::BTreeMap<String, u32>) -> bool,
    count: u32,
) -> std::collections::BTreeMap<String, u32> {
    cluster.kubectl(&["apply", "-f", &example(&format!("traffic/{file}"))]).unwrap();
    wait_for(&format!("{file} in force"), Duration::from_secs(60), || {
        let probe = tally(&requests(cluster, 10, curl_args, path));
        if settled(&probe) { Ok(()) } else { Err(format!("{probe:?}")) }
    });
    tally(&requests(cluster, count, curl_args, path))
}

fn only(counts: &std::collections::BTreeMap<String, u32>, key: &str) -> bool {
    counts.len() == 1 && counts.contains_key(key)
}

/// Journey b: injection through the API server's calls to discovery's webhook, the init
/// container's capture, every sidecar connected, and the sleep pod's captured traffic following
/// `examples/traffic/`.
fn injected_apps_follow_the_traffic_rules(cluster: &Cluster) {
    cluster.kubectl(&["create", "namespace", "testns1"]).unwrap();
    cluster.kubectl(&["label", "namespace", "testns1", "istio-injection=enabled"]).unwrap();
    for app in ["apps/httpbin.yaml", "apps/sleep.yaml"] {
        cluster.kubectl(&["apply", "-f", &example(app)]).unwrap();
    }
    for deploy in ["httpbin-v1", "httpbin-v2", "sleep"] {
        cluster
            .kubectl(&["-n", "testns1", "rollout", "status", &format!("deploy/{deploy}"), "--timeout=180s"])
            .unwrap_or_else(|e| panic!("{deploy} rolled out: {e}\n{}", diagnose(cluster, "testns1")));
    }
    let containers = jsonpath(
        cluster,
        &["-n", "testns1", "get", "pods"],
        "{range .items[*]}{.metadata.name}: {.spec.initContainers[*].name} | {.spec.containers[*].name}{\"\\n\"}{end}",
    )
    .unwrap();
    for line in containers.lines().filter(|l| !l.is_empty()) {
        assert!(line.contains("istio-init") && line.contains("istio-proxy"), "injected: {line}");
    }
    let proxies = wait_for("every sidecar connected to discovery", Duration::from_secs(60), || {
        let syncz = istiod_debug(cluster, "syncz")?;
        let ids: Vec<&str> = ["httpbin-v1", "httpbin-v2", "sleep"].into_iter().filter(|w| syncz.contains(w)).collect();
        if ids.len() == 3 { Ok(syncz.len()) } else { Err(format!("connected: {ids:?}")) }
    });
    println!("journey b: 3 injected pods, every sidecar connected ({proxies} bytes of /debug/syncz)");
    // The traffic rules below hold under STRICT mutual TLS: every hop between sidecars is mTLS.
    cluster.kubectl(&["apply", "-f", &example("security/01-mtls-strict.yaml")]).unwrap();

    // The app's plain request: DNS answered by the sidecar's agent, the connection captured.
    let plain = in_sleep(cluster, "curl -s -o /dev/null -w '%{http_code}' http://httpbin.testns1:8000/get");
    assert_eq!(plain, "200", "plain curl http://httpbin.testns1:8000/get from the sleep pod");

    let all_v1 = apply_traffic(cluster, "02-route-all-to-v1.yaml", "", "/get", |c| only(c, "200 v1"), 40);
    assert!(only(&all_v1, "200 v1"), "route all to v1: {all_v1:?}");
    println!("journey b: route all to v1: {all_v1:?}");

    // 03: /status → v2 (what tells that the file is in force), /headers → v1, the rest 90/10.
    let status = apply_traffic(cluster, "03-weighted-90-10.yaml", "", "/status/200", |c| only(c, "200 v2"), 10);
    assert!(only(&status, "200 v2"), "03: /status goes to v2: {status:?}");
    let headers = tally(&requests(cluster, 10, "", "/headers"));
    assert!(only(&headers, "200 v1"), "03: /headers goes to v1: {headers:?}");
    println!("journey b: uri routing: /status {status:?}, /headers {headers:?}");
    // 200 draws at 10%: v2 = 0 has probability 0.9^200 < 1e-9, v2 >= v1 far less.
    let split = tally(&requests(cluster, 200, "", "/get"));
    let (v1, v2) = (split.get("200 v1").copied().unwrap_or(0), split.get("200 v2").copied().unwrap_or(0));
    assert!(v1 + v2 == 200 && v2 >= 1 && v1 > v2 * 2, "90/10 split: {split:?}");
    println!("journey b: 90/10 split: v1={v1} v2={v2} of 200");

    let jason = apply_traffic(
        cluster,
        "04-header-routing-jason.yaml",
        "-H 'end-user: jason'",
        "/get",
        |c| only(c, "200 v2"),
        20,
    );
    let others = tally(&requests(cluster, 20, "", "/get"));
    assert!(only(&jason, "200 v2") && only(&others, "200 v1"), "header routing: jason {jason:?}, others {others:?}");
    println!("journey b: header routing: jason {jason:?}, others {others:?}");

    let aborted =
        apply_traffic(cluster, "06-fault-abort.yaml", "-H 'client-id: gogo123'", "/get", |c| only(c, "500 none"), 20);
    let others = tally(&requests(cluster, 20, "", "/get"));
    assert!(only(&aborted, "500 none") && only(&others, "200 v1"), "fault abort: {aborted:?}, others {others:?}");
    println!("journey b: fault abort for client-id gogo123: {aborted:?}; others {others:?}");

    // The routing above ran under STRICT. The retry count below is read from the workloads'
    // own admin port (an undeclared port, by pod IP): a plaintext passthrough, which STRICT
    // refuses, so back to PERMISSIVE first.
    cluster.kubectl(&["delete", "-f", &example("security/01-mtls-strict.yaml")]).unwrap();
    println!("journey b: the routing above under STRICT mTLS (examples/security/01-mtls-strict.yaml)");

    // 09: retry on 5xx, 3 attempts: one GET /status/503 reaches the workloads 4 times.
    cluster.kubectl(&["apply", "-f", &example("traffic/09-retries.yaml")]).unwrap();
    let pods =
        jsonpath(cluster, &["-n", "testns1", "get", "pods", "-l", "app=httpbin"], "{.items[*].status.podIP}").unwrap();
    let echo = |verb: &str, path: &str| -> String {
        pods.split_whitespace()
            .map(|ip| in_sleep(cluster, &format!("curl -s -X {verb} http://{ip}:8080{path}")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let attempts = wait_for("09-retries in force", Duration::from_secs(60), || {
        echo("POST", "/echo/reset");
        let code = in_sleep(cluster, "curl -s -o /dev/null -w '%{http_code}' http://httpbin.testns1:8000/status/503");
        let seen: u64 = echo("GET", "/echo/stats")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["paths"]["/status/503"].as_u64())
            .sum();
        if code == "503" && seen == 4 { Ok(seen) } else { Err(format!("{code}, {seen} attempts at the workloads")) }
    });
    println!("journey b: retries (3 on 5xx): one GET /status/503 → {attempts} attempts at the workloads, then 503");
}

/// Journey c: CR edits are reconciled (mesh config taken by discovery without a restart, a
/// component's resources rolled out) and drift is put back (a deleted istiod Deployment, an
/// edited webhook).
fn operator_reconciles_edits_and_drift(cluster: &Cluster) {
    let istiod_pods =
        || jsonpath(cluster, &["-n", "istio-system", "get", "pods", "-l", "app=istiod"], "{.items[*].metadata.name}");
    let before = istiod_pods().unwrap();
    let patch = r#"{"spec":{"meshConfig":{"accessLogFile":"/dev/stdout"}}}"#;
    cluster
        .kubectl(&["-n", "istio-system", "patch", "istiooperator", "default", "--type", "merge", "-p", patch])
        .unwrap();
    let sleep_pod =
        jsonpath(cluster, &["-n", "testns1", "get", "pods", "-l", "app=sleep"], "{.items[0].metadata.name}").unwrap();
    // The user's check: the sidecar's access log shows the request.
    wait_for("meshConfig.accessLogFile in force: sleep's istio-proxy logs requests", Duration::from_secs(90), || {
        in_sleep(cluster, "curl -s -o /dev/null http://httpbin.testns1:8000/get?access-log-probe");
        let logs = cluster
            .kubectl(&["-n", "testns1", "logs", &sleep_pod, "-c", "istio-proxy", "--tail=50"])
            .map_err(|e| e.to_string())?;
        if logs.contains("access-log-probe") { Ok(()) } else { Err("no access log line yet".into()) }
    });
    assert_eq!(istiod_pods().unwrap(), before, "discovery took the new mesh config without a restart");
    println!("journey c: meshConfig.accessLogFile reconciled; sleep's sidecar logs requests; istiod not restarted");

    // The mesh metrics as Prometheus scrapes them: the agents' :15020 (here through the API
    // server's pod proxy), Istio's labels on both sides of sleep → httpbin.
    // Listed at each try, and a pod that cannot be scraped is passed over: pods of the earlier
    // journeys' scaling may still be terminating, and one gone before its scrape is not an
    // answer (CI once listed such a pod and failed on it for the whole minute).
    let httpbin_pods = || {
        jsonpath(
            cluster,
            &["-n", "testns1", "get", "pods", "-l", "app=httpbin", "--field-selector", "status.phase=Running"],
            "{.items[*].metadata.name}",
        )
    };
    let scrape = |pod: &str| {
        cluster
            .kubectl(&["get", "--raw", &format!("/api/v1/namespaces/testns1/pods/{pod}:15020/proxy/stats/prometheus")])
            .map_err(|e| e.to_string())
    };
    let has = |text: &str, labels: &[&str]| {
        text.lines().any(|l| l.starts_with("istio_requests_total{") && labels.iter().all(|x| l.contains(x)))
    };
    wait_for("istio_requests_total on sleep's and httpbin's agents", Duration::from_secs(60), || {
        in_sleep(cluster, "curl -s -o /dev/null http://httpbin.testns1:8000/get");
        let client = scrape(&sleep_pod)?;
        let source = [
            "reporter=\"source\"",
            "source_workload=\"sleep\"",
            "source_principal=\"spiffe://cluster.local/ns/testns1/sa/sleep\"",
            "destination_service=\"httpbin.testns1.svc.cluster.local\"",
            "destination_workload=\"httpbin-v",
            "response_code=\"200\"",
        ];
        if !has(&client, &source) {
            return Err(format!(
                "sleep's agent: no such series yet ({} istio_ lines)",
                client.matches("istio_").count()
            ));
        }
        let destination = [
            "reporter=\"destination\"",
            "source_workload=\"sleep\"",
            "destination_workload=\"httpbin-v",
            "connection_security_policy=\"mutual_tls\"",
            "response_code=\"200\"",
        ];
        let mut unscraped = Vec::new();
        for pod in httpbin_pods()?.split_whitespace() {
            match scrape(pod) {
                Ok(text) if has(&text, &destination) => return Ok(()),
                Ok(_) => {}
                Err(error) => unscraped.push(error),
            }
        }
        Err(format!("no httpbin agent counts sleep's requests yet (unscraped: {unscraped:?})"))
    });
    println!("journey c: istio_requests_total with Istio's labels on sleep's and httpbin's :15020");

    let patch =
        r#"{"spec":{"components":{"pilot":{"k8s":{"resources":{"requests":{"cpu":"250m","memory":"256Mi"}}}}}}}"#;
    cluster
        .kubectl(&["-n", "istio-system", "patch", "istiooperator", "default", "--type", "merge", "-p", patch])
        .unwrap();
    wait_for("istiod's resources follow the CR", Duration::from_secs(90), || {
        let cpu = jsonpath(
            cluster,
            &["-n", "istio-system", "get", "deploy", "istiod"],
            "{.spec.template.spec.containers[0].resources.requests.cpu}",
        )?;
        if cpu == "250m" { Ok(()) } else { Err(cpu) }
    });
    cluster.kubectl(&["-n", "istio-system", "rollout", "status", "deploy/istiod", "--timeout=120s"]).unwrap();
    println!("journey c: components.pilot.k8s.resources reconciled and rolled out");

    cluster.kubectl(&["-n", "istio-system", "delete", "deployment", "istiod", "--wait=true"]).unwrap();
    wait_for("the deleted istiod Deployment is put back", Duration::from_secs(90), || {
        jsonpath(cluster, &["-n", "istio-system", "get", "deploy", "istiod"], "{.metadata.uid}")
    });
    cluster.kubectl(&["-n", "istio-system", "rollout", "status", "deploy/istiod", "--timeout=120s"]).unwrap();
    edited_injector_webhook_is_put_back(cluster, "istio-sidecar-injector");
    println!("journey c: a deleted istiod Deployment and an edited webhook were put back");
}

/// Edits the first webhook's `namespaceSelector` of MutatingWebhookConfiguration `name` by hand
/// and waits for the operator to put the rendered one back.
fn edited_injector_webhook_is_put_back(cluster: &Cluster, name: &str) {
    let selector =
        || jsonpath(cluster, &["get", "mutatingwebhookconfiguration", name], "{.webhooks[0].namespaceSelector}");
    let rendered = selector().unwrap();
    let edit =
        r#"[{"op":"replace","path":"/webhooks/0/namespaceSelector","value":{"matchLabels":{"edited":"by-hand"}}}]"#;
    cluster.kubectl(&["patch", "mutatingwebhookconfiguration", name, "--type", "json", "-p", edit]).unwrap();
    wait_for(&format!("the edited webhook configuration {name} is put back"), Duration::from_secs(90), || {
        let now = selector()?;
        if now == rendered { Ok(()) } else { Err(now) }
    });
}

/// The loop the counting client runs until `/tmp/stop` exists: one status code a line.
const COUNTING_LOOP: &str = r"rm -f /tmp/stop; while [ ! -f /tmp/stop ]; do
  curl -s -o /dev/null --max-time 30 -w '%{http_code} exit=%{exitcode}\n' http://httpbin.testns1:8000/get; sleep 0.05; done";

/// Journey d: the canary upgrade. A client on the canary revision counts requests to httpbin
/// while httpbin moves to canary and the old control plane is removed; none may fail. (A client
/// left on the old revision would hold the old CR in ACTION_REQUIRED, as it should.)
fn canary_upgrade_without_failed_requests(cluster: &Cluster) {
    cluster.kubectl(&["apply", "-f", &example("traffic/02-route-all-to-v1.yaml")]).unwrap();
    let started = Instant::now();
    cluster.kubectl(&["apply", "-f", &example("operator/canary.yaml")]).unwrap();
    wait_for("IstioOperator canary HEALTHY", Duration::from_secs(240), || {
        let status = jsonpath(cluster, &["-n", "istio-system", "get", "istiooperator", "canary"], "{.status.status}")?;
        if status == "HEALTHY" { Ok(()) } else { Err(status) }
    });
    cluster.kubectl(&["-n", "istio-system", "rollout", "status", "deploy/istiod-canary", "--timeout=120s"]).unwrap();
    println!("journey d: canary HEALTHY and rolled out {:.1} s after kubectl apply", started.elapsed().as_secs_f64());

    cluster.kubectl(&["create", "namespace", "watcher"]).unwrap();
    cluster.kubectl(&["label", "namespace", "watcher", "istio.io/rev=canary"]).unwrap();
    let sleep = std::fs::read_to_string(example("apps/sleep.yaml"))
        .unwrap()
        .replace("namespace: testns1", "namespace: watcher");
    cluster.apply(&sleep).unwrap();
    cluster.kubectl(&["-n", "watcher", "rollout", "status", "deploy/sleep", "--timeout=120s"]).unwrap();
    let watcher = ["-n", "watcher", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c"];
    let in_watcher = |script: &str| {
        let mut args = watcher.to_vec();
        args.push(script);
        cluster.kubectl(&args)
    };
    wait_for("the counting client reaches httpbin", Duration::from_secs(60), || {
        let code = in_watcher("curl -s -o /dev/null -w '%{http_code}' http://httpbin.testns1:8000/get")
            .map_err(|e| e.to_string())?;
        if code == "200" { Ok(()) } else { Err(code) }
    });
    let counter = cluster
        .command(cluster.kubectl_path())
        .args(watcher)
        .arg(COUNTING_LOOP)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let switch = Instant::now();

    cluster.kubectl(&["label", "namespace", "testns1", "istio-injection-", "istio.io/rev=canary"]).unwrap();
    cluster.kubectl(&["-n", "testns1", "rollout", "restart", "deployment"]).unwrap();
    for deploy in ["httpbin-v1", "httpbin-v2", "sleep"] {
        cluster
            .kubectl(&["-n", "testns1", "rollout", "status", &format!("deploy/{deploy}"), "--timeout=180s"])
            .unwrap_or_else(|e| panic!("{deploy} restarted: {e}\n{}", diagnose(cluster, "testns1")));
    }
    wait_for("the restarted pods are injected by and connected to istiod-canary", Duration::from_secs(90), || {
        let pods = jsonpath(
            cluster,
            &["-n", "testns1", "get", "pods"],
            r#"{range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name} {end}"#,
        )?;
        if !pods.trim().is_empty() {
            return Err(format!("still terminating: {pods}"));
        }
        let status = jsonpath(
            cluster,
            &["-n", "testns1", "get", "pods"],
            r#"{range .items[*]}{.metadata.name}={.metadata.annotations.sidecar\.istio\.io/status}{"\n"}{end}"#,
        )?;
        let syncz = istiod_debug_of(cluster, "canary", "syncz")?;
        for line in status.lines().filter(|l| !l.is_empty()) {
            let pod = line.split('=').next().unwrap_or_default();
            if !line.contains(r#""revision":"canary""#) {
                return Err(format!("not injected by canary: {line}"));
            }
            if !syncz.contains(pod) {
                return Err(format!("{pod} not connected to istiod-canary"));
            }
        }
        Ok(())
    });
    println!("journey d: testns1 relabelled istio.io/rev=canary and restarted: injected by and connected to canary");

    let tagged = rudder(cluster, &["tag", "set", "default", "--revision", "canary", "--overwrite"]);
    println!("journey d: rudder tag set default --revision canary: {}", tagged.trim());
    cluster.kubectl(&["-n", "istio-system", "delete", "istiooperator", "default", "--wait=false"]).unwrap();
    wait_for("the old control plane is gone", Duration::from_secs(180), || {
        if let Ok(status) = jsonpath(
            cluster,
            &["-n", "istio-system", "get", "istiooperator", "default", "--ignore-not-found"],
            "{.status.status}: {.status.conditions[*].message}",
        ) && !status.is_empty()
        {
            return Err(format!("IstioOperator default: {status}"));
        }
        let left = cluster
            .kubectl(&[
                "-n",
                "istio-system",
                "get",
                "deploy,pods",
                "-l",
                "app=istiod,istio.io/rev=default",
                "-o",
                "name",
            ])
            .map_err(|e| e.to_string())?;
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    });
    let after = tally(&requests(cluster, 20, "", "/get"));
    assert!(only(&after, "200 v1"), "traffic still flows after the old control plane is gone: {after:?}");

    in_watcher("touch /tmp/stop").unwrap();
    let out = counter.wait_with_output().unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for code in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
        *counts.entry(code.to_owned()).or_insert(0u32) += 1;
    }
    let total: u32 = counts.values().sum();
    println!("journey d: requests during the switch: {counts:?} ({total} in {:.0} s)", switch.elapsed().as_secs_f64());
    assert!(total > 100, "the counting client ran through the switch: {counts:?}");
    assert!(counts.len() == 1 && counts.contains_key("200 exit=0"), "no request failed during the switch: {counts:?}");
}

/// Journey b, continued: locality load balancing on real pods. Their localities come from
/// `istio-locality` labels (the single node has no zones); with `examples/traffic/22` (outlier
/// detection, so the mesh's default locality failover applies) sleep's requests stay with v1 in
/// its zone, and reach v2 in the next zone once v1 is gone. The state of journey b is restored.
fn locality_failover_keeps_traffic_in_the_zone(cluster: &Cluster) {
    let label = |selector: &str, value: &str| {
        cluster.kubectl(&["-n", "testns1", "label", "pod", "-l", selector, value, "--overwrite"]).unwrap();
    };
    label("app=sleep", "istio-locality=us-east.us-east-1a");
    label("version=v1", "istio-locality=us-east.us-east-1a");
    label("version=v2", "istio-locality=us-east.us-east-1b");
    // Without outlier detection the mesh's default locality setting changes nothing: both
    // versions answer (all 40 from one of two has probability 2^-39).
    let before = tally(&requests(cluster, 40, "", "/get"));
    assert!(before.contains_key("200 v1") && before.contains_key("200 v2"), "both zones before 22: {before:?}");
    let same_zone = apply_traffic(cluster, "22-locality-failover.yaml", "", "/get", |c| only(c, "200 v1"), 40);
    assert!(only(&same_zone, "200 v1"), "sleep's zone first: {same_zone:?}");
    let scale = |replicas: &str| {
        cluster.kubectl(&["-n", "testns1", "scale", "deploy/httpbin-v1", &format!("--replicas={replicas}")]).unwrap();
    };
    scale("0");
    let next_zone = wait_for("failover to the next zone", Duration::from_secs(90), || {
        let probe = tally(&requests(cluster, 10, "", "/get"));
        if only(&probe, "200 v2") { Ok(probe) } else { Err(format!("{probe:?}")) }
    });
    println!("journey b: locality failover: {same_zone:?} in sleep's zone; with v1 gone, {next_zone:?}");
    scale("1");
    cluster
        .kubectl(&["-n", "testns1", "rollout", "status", "deploy/httpbin-v1", "--timeout=180s"])
        .unwrap_or_else(|e| panic!("httpbin-v1 back: {e}\n{}", diagnose(cluster, "testns1")));
    cluster.kubectl(&["apply", "-f", &example("traffic/01-destination-rule-subsets.yaml")]).unwrap();
    for selector in ["app=sleep", "version=v2"] {
        label(selector, "istio-locality-");
    }
}

/// Journey e: the ingress gateway of the default install (`rudder proxy router`) serves
/// `examples/traffic/15-ingress-gateway.yaml` into the mesh, then terminates TLS with a
/// Kubernetes Secret named in `credentialName` (served to it over SDS by discovery).
fn ingress_gateway_routes_into_the_mesh(cluster: &Cluster) {
    cluster.kubectl(&["apply", "-f", &example("traffic/15-ingress-gateway.yaml")]).unwrap();
    let gateway = "istio-ingressgateway.istio-system";
    let through_gateway = |path: &str| {
        in_sleep(
            cluster,
            &format!(
                "curl -s -o /dev/null --max-time 10 -H 'Host: httpbin.example.com' \
                 -w '%{{http_code}} %header{{x-echo-instance}}' http://{gateway}{path} || true"
            ),
        )
    };
    let routed = wait_for("example 15 in force at the ingress gateway", Duration::from_secs(90), || {
        let reply = through_gateway("/status/200");
        if reply.starts_with("200 httpbin-") { Ok(reply) } else { Err(reply) }
    });
    let unrouted = through_gateway("/get");
    assert!(unrouted.starts_with("404"), "/get is not routed by example 15: {unrouted}");
    println!(
        "journey e: Host httpbin.example.com /status/200 through the ingress gateway → {routed}; /get → {unrouted}"
    );

    let ca = rudder_e2e::tls::TestCa::new("journey e CA").unwrap();
    let cert = ca.server(&["httpbin.example.com"]).unwrap();
    let dir = std::env::temp_dir().join(format!("rudder-journey-e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    cluster
        .kubectl(&[
            "-n",
            "istio-system",
            "create",
            "secret",
            "tls",
            "httpbin-credential",
            &format!("--cert={}", cert_file.display()),
            &format!("--key={}", key_file.display()),
        ])
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    cluster
        .apply(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-tls, namespace: testns1}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [httpbin.example.com]
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-tls, namespace: testns1}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin-tls]
  http: [{route: [{destination: {host: httpbin, port: {number: 8000}}}]}]
",
        )
        .unwrap();
    let ip = jsonpath(cluster, &["-n", "istio-system", "get", "service", "istio-ingressgateway"], "{.spec.clusterIP}")
        .unwrap();
    // -k: the sleep pod does not have the test CA; the issuer printed below shows whose
    // certificate the gateway presented.
    let https = wait_for("the TLS server in force at the ingress gateway", Duration::from_secs(90), || {
        let reply = in_sleep(
            cluster,
            &format!(
                "curl -skv -o /dev/null --max-time 10 --resolve httpbin.example.com:443:{ip} \\
                 -w 'code=%{{http_code}} instance=%header{{x-echo-instance}}\\n' \\
                 https://httpbin.example.com/status/200 2>&1 | grep -E 'code=|issuer:' || true"
            ),
        );
        if reply.contains("code=200 instance=httpbin-") && reply.contains("journey e CA") {
            Ok(reply.split_whitespace().collect::<Vec<_>>().join(" "))
        } else {
            Err(reply)
        }
    });
    println!("journey e: https://httpbin.example.com through the ingress gateway (credentialName) → {https}");

    // MUTUAL with the client CA from a ConfigMap (caCertCredentialName), as trust-manager
    // publishes trust bundles: a client of that CA gets through, a client without a
    // certificate is refused by the handshake.
    let clients = rudder_e2e::tls::TestCa::new("journey e client CA").unwrap();
    let client = clients.client("sleep").unwrap();
    let bundle =
        rudder_e2e::tls::config_map_yaml("journey-e-clients", "istio-system", &[("ca.crt", &clients.cert_pem)]);
    cluster
        .apply(&format!(
            "{bundle}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: httpbin-mtls, namespace: testns1}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-mutual, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, credentialName: httpbin-credential, caCertCredentialName: journey-e-clients}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin-mtls, namespace: testns1}}
spec:
  hosts: [mtls.example.com]
  gateways: [httpbin-mtls]
  http: [{{route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]}}]
"
        ))
        .unwrap();
    in_sleep(
        cluster,
        &format!(
            "cat > /tmp/client.crt <<'EOF'\n{}EOF\ncat > /tmp/client.key <<'EOF'\n{}EOF\n",
            client.cert_pem, client.key_pem
        ),
    );
    let mtls = |cert: &str| {
        in_sleep(
            cluster,
            &format!(
                "curl -sk {cert} -o /dev/null --max-time 10 --resolve mtls.example.com:443:{ip} \
                 -w 'code=%{{http_code}}' https://mtls.example.com/status/200 || true"
            ),
        )
    };
    let with_cert =
        wait_for("a client of the ConfigMap's CA through the MUTUAL server", Duration::from_secs(90), || {
            let reply = mtls("--cert /tmp/client.crt --key /tmp/client.key");
            if reply.contains("code=200") { Ok(reply) } else { Err(reply) }
        });
    let without = mtls("");
    assert!(without.contains("code=000"), "a client without a certificate: {without}");
    println!(
        "journey e: MUTUAL with the client CA of ConfigMap journey-e-clients: {with_cert} with a client certificate, {without} without"
    );

    // What the proxies hold, as a user debugs it: every proxy SYNCED, the gateway's secret,
    // the sleep sidecar's httpbin clusters read from its own Envoy.
    let status = wait_for("proxy-status: every proxy SYNCED", Duration::from_secs(30), || {
        let status = rudder(cluster, &["proxy-status"]);
        let gateway_row = status.lines().find(|l| l.starts_with("istio-ingressgateway-")).unwrap_or_default();
        let synced = gateway_row.contains("router") && gateway_row.contains("SYNCED") && !status.contains("STALE");
        if synced { Ok(status) } else { Err(status) }
    });
    let gateway_pod = jsonpath(
        cluster,
        &["-n", "istio-system", "get", "pods", "-l", "istio=ingressgateway"],
        "{.items[0].metadata.name}",
    )
    .unwrap();
    let secrets = rudder(cluster, &["proxy-config", "secret", &format!("{gateway_pod}.istio-system")]);
    assert!(secrets.contains("kubernetes://httpbin-credential") && secrets.contains("Cert Chain"), "{secrets}");
    let sleep_pod =
        jsonpath(cluster, &["-n", "testns1", "get", "pods", "-l", "app=sleep"], "{.items[0].metadata.name}").unwrap();
    let clusters = rudder(
        cluster,
        &["proxy-config", "clusters", &sleep_pod, "-n", "testns1", "--fqdn", "httpbin.testns1.svc.cluster.local"],
    );
    assert!(clusters.lines().skip(1).any(|l| l.contains("8000") && l.contains("outbound")), "{clusters}");
    println!(
        "journey e: proxy-status: {} proxies, none STALE; proxy-config secret {gateway_pod}: kubernetes://httpbin-credential",
        status.lines().count() - 1
    );

    // analyze reads the cluster: clean as it is; an ambiguous injection label is reported.
    let clean = rudder(cluster, &["analyze", "-n", "testns1"]);
    assert!(clean.contains("No validation issues found"), "{clean}");
    cluster.kubectl(&["label", "namespace", "testns1", "istio.io/rev=default"]).unwrap();
    let ambiguous = rudder(cluster, &["analyze", "-A"]);
    cluster.kubectl(&["label", "namespace", "testns1", "istio.io/rev-"]).unwrap();
    assert!(ambiguous.contains("Warning [IST0123] (Namespace testns1)"), "{ambiguous}");
    println!(
        "journey e: analyze -n testns1 clean; with both injection labels: {}",
        ambiguous.lines().next().unwrap_or_default()
    );
}

/// `GET` on discovery's monitoring port through the API server's pod proxy.
/// Journey f: the mesh CA in a cluster. Discovery published the root in every namespace; the
/// injected sleep reaches httpbin over mutual TLS and httpbin sees sleep's SPIFFE id; a client
/// without a sidecar (namespace `plain`) gets through under the default PERMISSIVE and is
/// refused once testns1 is STRICT.
fn mesh_traffic_is_mutual_tls(cluster: &Cluster) {
    cluster.kubectl(&["create", "namespace", "plain"]).unwrap();
    wait_for("istio-ca-root-cert published in a new namespace", Duration::from_secs(30), || {
        jsonpath(cluster, &["-n", "plain", "get", "configmap", "istio-ca-root-cert"], "{.data.root-cert\\.pem}")
            .and_then(|pem| if pem.contains("BEGIN CERTIFICATE") { Ok(()) } else { Err(pem) })
    });
    let sleep =
        std::fs::read_to_string(example("apps/sleep.yaml")).unwrap().replace("namespace: testns1", "namespace: plain");
    cluster.apply(&sleep).unwrap();
    cluster.kubectl(&["-n", "plain", "rollout", "status", "deploy/sleep", "--timeout=120s"]).unwrap();
    // Fully qualified: without a sidecar, the pod asks the cluster DNS, which has no search path.
    let plain = |script: &str| {
        cluster.kubectl(&["-n", "plain", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c", script]).unwrap()
    };
    let plain_code = || {
        plain(
            "curl -s -o /dev/null --max-time 5 -w '%{http_code}' http://httpbin.testns1.svc.cluster.local:8000/get || true",
        )
    };

    let headers = in_sleep(cluster, "curl -s --max-time 10 http://httpbin.testns1:8000/headers");
    assert!(
        headers.contains("URI=spiffe://cluster.local/ns/testns1/sa/sleep"),
        "httpbin sees sleep's identity in x-forwarded-client-cert: {headers}"
    );
    let sleep_pod =
        jsonpath(cluster, &["-n", "testns1", "get", "pods", "-l", "app=sleep"], "{.items[0].metadata.name}").unwrap();
    let secrets = rudder(cluster, &["proxy-config", "secret", &sleep_pod, "-n", "testns1"]);
    assert!(secrets.contains("default") && secrets.contains("ROOTCA"), "{secrets}");
    wait_for("PERMISSIVE (the default) takes plaintext", Duration::from_secs(60), || {
        let code = plain_code();
        if code == "200" {
            return Ok(());
        }
        let verbose = plain(
            "curl -sv -o /dev/null --max-time 5 http://httpbin.testns1.svc.cluster.local:8000/get 2>&1 | tail -5 || true",
        );
        let pod =
            jsonpath(cluster, &["-n", "testns1", "get", "pods", "-l", "app=httpbin"], "{.items[0].metadata.name}")
                .unwrap_or_default();
        let listeners = rudder(cluster, &["proxy-config", "listeners", &pod, "-n", "testns1", "--port", "15006"]);
        Err(format!("{code}\n{verbose}\n{listeners}"))
    });

    cluster.kubectl(&["apply", "-f", &example("security/01-mtls-strict.yaml")]).unwrap();
    let refused = wait_for("STRICT refuses the plaintext client", Duration::from_secs(60), || {
        let code = plain_code();
        if code == "000" { Ok(code) } else { Err(code) }
    });
    let through_sidecar = requests(cluster, 5, "", "/get");
    assert!(through_sidecar.iter().all(|(code, _)| *code == 200), "{through_sidecar:?}");
    cluster.kubectl(&["delete", "-f", &example("security/01-mtls-strict.yaml")]).unwrap();
    cluster.kubectl(&["delete", "namespace", "plain", "--wait=false"]).unwrap();
    println!(
        "journey f: root published to a new namespace; sleep → httpbin over mTLS as spiffe://cluster.local/ns/testns1/sa/sleep; plaintext client 200 under PERMISSIVE, {refused} under STRICT; sleep 5/5 200"
    );
}

fn istiod_debug(cluster: &Cluster, what: &str) -> Result<String, String> {
    istiod_debug_of(cluster, "default", what)
}

fn istiod_debug_of(cluster: &Cluster, revision: &str, what: &str) -> Result<String, String> {
    let pod = jsonpath(
        cluster,
        &[
            "-n",
            "istio-system",
            "get",
            "pods",
            "-l",
            &format!("app=istiod,istio.io/rev={revision}"),
            "--field-selector=status.phase=Running",
        ],
        "{.items[0].metadata.name}",
    )?;
    cluster
        .kubectl(&["get", "--raw", &format!("/api/v1/namespaces/istio-system/pods/{pod}:15014/proxy/debug/{what}")])
        .map_err(|e| e.to_string())
}

/// Pods, events and the logs of failing containers of `namespace`, for a failure message.
fn diagnose(cluster: &Cluster, namespace: &str) -> String {
    let mut out = cluster.kubectl(&["-n", namespace, "get", "pods", "-o", "wide"]).unwrap_or_default();
    out += &cluster.kubectl(&["-n", namespace, "get", "events", "--sort-by=.lastTimestamp"]).unwrap_or_default();
    let pods = cluster.kubectl(&["-n", namespace, "get", "pods", "-o", "name"]).unwrap_or_default();
    for pod in pods.lines() {
        for container in ["istio-init", "istio-proxy"] {
            let logs = cluster
                .kubectl(&["-n", namespace, "logs", pod, "-c", container, "--tail=20"])
                .unwrap_or_else(|e| e.to_string());
            out += &format!("--- {pod} {container}\n{logs}\n");
        }
    }
    out
}

#[test]
fn user_journeys_on_a_real_cluster() {
    let Some(cluster) = cluster::shared(RUDDER) else { return };
    operator_installs_the_default_control_plane(cluster);
    injected_apps_follow_the_traffic_rules(cluster);
    locality_failover_keeps_traffic_in_the_zone(cluster);
    ingress_gateway_routes_into_the_mesh(cluster);
    mesh_traffic_is_mutual_tls(cluster);
    operator_reconciles_edits_and_drift(cluster);
    canary_upgrade_without_failed_requests(cluster);
    faults::control_plane_rides_out_an_api_server_outage(cluster);
    faults::webhook_ca_rotates_under_admission_traffic(cluster);
    faults::malformed_mesh_config_keeps_the_last_good(cluster);
    faults::operator_killed_mid_reconcile_converges(cluster);
}
