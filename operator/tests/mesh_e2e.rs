//! End to end through real Envoy: discovery in file mode, `rudder echo` workloads behind
//! `rudder proxy sidecar`s, real HTTP on 127.0.<block>.x. Needs the Envoy binary
//! (`./scripts/install-tools.sh` puts it in `.tools/bin/envoy`; `ENVOY_PATH` overrides).
//! One mesh at a time: the scenarios measure distributions and concurrency limits, which
//! other meshes on the same two cores would only blur.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rudder_e2e::mesh::{LocalMesh, MeshOptions, SERVICE_HOST};
use rudder_e2e::scenarios::{self, Scenario};

static ONE_MESH_AT_A_TIME: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn options() -> MeshOptions {
    let envoy = rudder_xds::testing::envoy_path().unwrap_or_else(|e| panic!("{e}"));
    assert!(envoy.is_file(), "Envoy not found at {}: run ./scripts/install-tools.sh", envoy.display());
    MeshOptions::new(PathBuf::from(env!("CARGO_BIN_EXE_rudder")), envoy, workspace().join("examples/local"))
}

/// The text of `examples/traffic/<file>`.
fn traffic_example(file: &str) -> String {
    std::fs::read_to_string(workspace().join("examples/traffic").join(file)).unwrap()
}

/// A mesh with every request routed to v1 (example 02), in sync.
async fn mesh_routing_to_v1() -> LocalMesh {
    let mut mesh = LocalMesh::start(options()).await.unwrap();
    mesh.apply("traffic", &traffic_example("02-route-all-to-v1.yaml")).await.unwrap();
    mesh.wait_synced().await.unwrap();
    mesh
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn every_traffic_scenario_behaves_as_configured() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut mesh = LocalMesh::start(options()).await.unwrap();
        let examples = workspace().join("examples");
        let mut failures = Vec::new();
        for scenario in Scenario::ALL {
            match scenarios::run(&mut mesh, &examples, scenario).await {
                Ok(line) => println!("✔ {line}"),
                Err(e) => failures.push(format!("{scenario:?}: {e:#}")),
            }
        }
        assert!(
            failures.is_empty(),
            "scenarios failed (logs in {}):\n{}",
            mesh.work_dir.display(),
            failures.join("\n")
        );
    });
}

/// The route config named "8000" in a sidecar's config dump.
async fn route_8000(mesh: &LocalMesh) -> serde_json::Value {
    let dump = mesh.config_dump("sleep", "?resource=dynamic_route_configs").await.unwrap();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["route_config"]["name"] == "8000")
        .cloned()
        .unwrap_or_default()
}

async fn envoy_uptime(mesh: &LocalMesh) -> u64 {
    let info = mesh.client().get_json(&mesh.admin_url("sleep", "/server_info")).await.unwrap();
    info["uptime_all_epochs"].as_str().and_then(|s| s.trim_end_matches('s').parse().ok()).unwrap_or(0)
}

#[test]
fn a_config_change_reaches_envoy_without_a_restart() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut mesh = mesh_routing_to_v1().await;
        let before = route_8000(&mesh).await;
        assert!(!before.to_string().contains("end-user"), "{before}");
        let uptime = envoy_uptime(&mesh).await;

        mesh.apply("traffic", &traffic_example("04-header-routing-jason.yaml")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = route_8000(&mesh).await;
            if now.to_string().contains("end-user") {
                break;
            }
            assert!(Instant::now() < deadline, "the header route never reached Envoy: {now}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(envoy_uptime(&mesh).await >= uptime, "Envoy restarted");
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get").header("end-user", "jason")).await.unwrap();
        assert_eq!(reply.header("x-echo-version"), "v2");
    });
}

/// RE2 refuses this (its program is far over Envoy's default size limit of 100) while the
/// Rust regex engine takes it, so validation passes and Envoy NACKs the route.
const NACKED_ROUTE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: testns1
spec:
  hosts:
  - httpbin
  http:
  - match:
    - uri:
        regex: "/(a|b|c|d|e|f|g|h){1,200}"
    route:
    - destination:
        host: httpbin
        subset: v2
  - route:
    - destination:
        host: httpbin
        subset: v2
"#;

/// `rudder proxy-status [POD] --discovery-address` against the mesh's discovery.
fn proxy_status(mesh: &LocalMesh, pod: Option<&str>) -> String {
    let address = mesh.monitoring_url("").trim_start_matches("http://").to_owned();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rudder"));
    cmd.args(["proxy-status", "--discovery-address", &address]).args(pod);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "proxy-status: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_nacked_resource_leaves_the_previous_config_serving_and_proxy_status_shows_it() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut mesh = mesh_routing_to_v1().await;
        // Every proxy (three sidecars, two gateways) SYNCED on every type it watches.
        let table = proxy_status(&mesh, None);
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(rows.len(), 5, "{table}");
        for row in &rows {
            let cells: Vec<&str> = row.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect();
            assert!(cells[2..7].iter().all(|c| *c == "SYNCED" || *c == "-"), "{row}");
            assert!(cells[2..7].contains(&"SYNCED"), "{row}");
        }
        assert!(table.contains("sleep.testns1") && table.contains("ingressgateway.istio-system"), "{table}");

        let subsets = traffic_example("01-destination-rule-subsets.yaml");
        mesh.apply("traffic", &format!("{subsets}\n---\n{NACKED_ROUTE}")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let nack = loop {
            let sync = mesh.syncz().await.unwrap();
            let errors: Vec<String> = sync
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["last_nack"].as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect();
            if let Some(e) = errors.into_iter().next() {
                break e;
            }
            assert!(Instant::now() < deadline, "no NACK recorded: {sync}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(nack.to_lowercase().contains("regex") || nack.contains("program size"), "{nack}");
        let table = proxy_status(&mesh, None);
        let sleep = table.lines().find(|l| l.starts_with("sleep.testns1")).unwrap();
        assert!(sleep.contains("STALE"), "{table}");
        assert!(table.contains(&format!("sleep.testns1 RDS: rejected: {nack}")), "{table}");
        println!("{table}");
        let detail = proxy_status(&mesh, Some("sleep.testns1"));
        println!("{detail}");
        assert!(detail.contains("RDS: rejected:") && detail.contains("NONCE ACKED"), "{detail}");
        // Envoy keeps the last good routes: everything still goes to v1.
        for _ in 0..10 {
            let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get")).await.unwrap();
            assert_eq!(reply.header("x-echo-version"), "v1");
        }
    });
}

#[test]
fn envoy_keeps_serving_while_discovery_restarts_and_then_resyncs() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut mesh = mesh_routing_to_v1().await;
        mesh.stop_discovery();
        for _ in 0..10 {
            let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get")).await.unwrap();
            assert_eq!(reply.header("x-echo-version"), "v1", "while discovery is down");
        }
        // A change made while discovery is down is picked up when it is back.
        mesh.apply("traffic", &traffic_example("04-header-routing-jason.yaml")).await.unwrap();
        mesh.restart_discovery().await.unwrap();
        mesh.wait_synced().await.unwrap();
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get").header("end-user", "jason")).await.unwrap();
        assert_eq!(reply.header("x-echo-version"), "v2", "after the restart");
    });
}

#[test]
fn discovery_killed_under_load_fails_no_request_and_resyncs() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut mesh = mesh_routing_to_v1().await;
        // 200 requests/s through the client sidecar and the httpbin sidecars (mTLS between
        // them) for the whole test: before, while discovery is dead, and after it is back.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let client = mesh.client().clone();
            let request = mesh.via_client(SERVICE_HOST, "/get");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let (mut ok, mut failed) = (0u32, Vec::new());
                let started = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let at = started.elapsed().as_secs_f64();
                    // When and how a request failed, so that a failure can be placed against
                    // the kill, the restart and the resync.
                    match client.send(&request).await {
                        Ok(reply) if reply.status == 200 => ok += 1,
                        Ok(reply) => failed.push(format!(
                            "at {at:.2} s: status {}: {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body).trim()
                        )),
                        Err(e) => failed.push(format!("at {at:.2} s: {e:#}")),
                    }
                }
                (ok, failed)
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let load_started = Instant::now() - Duration::from_secs(2);
        mesh.kill_discovery();
        let down = Instant::now();
        // A change made while discovery is dead is picked up when it is back.
        mesh.apply("traffic", &traffic_example("04-header-routing-jason.yaml")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        mesh.start_discovery_again().await.unwrap();
        let outage = down.elapsed();
        let back = load_started.elapsed();
        mesh.wait_synced().await.unwrap();
        let synced = load_started.elapsed();
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get").header("end-user", "jason")).await.unwrap();
        assert_eq!(reply.header("x-echo-version"), "v2", "config resynced after the restart");
        println!(
            "load started at 0 s; killed at ~2 s; discovery back at {:.2} s, synced at {:.2} s",
            back.as_secs_f64(),
            synced.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = load.await.unwrap();
        println!("{ok} requests, {} failed; discovery dead for {:.1} s", failed.len(), outage.as_secs_f64());
        assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok as usize + failed.len());
        assert!(ok > 1_000, "the load ran ({ok} requests)");
    });
}

/// `rudder proxy-config …` with the sidecar's admin address.
fn proxy_config(mesh: &LocalMesh, proxy: &str, args: &[&str]) -> String {
    let admin = mesh.admin_url(proxy, "").trim_start_matches("http://").to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rudder"))
        .arg("proxy-config")
        .args(args)
        .args(["--admin-address", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "proxy-config {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn proxy_config_shows_what_the_live_envoy_holds() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mesh = mesh_routing_to_v1().await;
        // Clusters: the same names as Envoy's own /clusters listing.
        let listed = mesh.sidecar_clusters("sleep").await.unwrap();
        let live: std::collections::BTreeSet<&str> =
            listed.lines().filter_map(|l| l.split("::").next()).filter(|n| !n.is_empty()).collect();
        let json: serde_json::Value =
            serde_json::from_str(&proxy_config(&mesh, "sleep", &["clusters", "-o", "json"])).unwrap();
        let shown: std::collections::BTreeSet<&str> =
            json.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(shown, live);
        // A saved dump (`-f`, which wins over the admin address) reads the same.
        let saved = mesh.work_dir.join("sleep-config-dump.json");
        let dump = mesh.config_dump("sleep", "?include_eds").await.unwrap();
        std::fs::write(&saved, dump.to_string()).unwrap();
        let from_file: serde_json::Value = serde_json::from_str(&proxy_config(
            &mesh,
            "sleep",
            &["clusters", "-o", "json", "-f", saved.to_str().unwrap()],
        ))
        .unwrap();
        let names: std::collections::BTreeSet<&str> =
            from_file.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, live);

        // Filters: the v1 subset of httpbin, its cluster and its one endpoint (v1's workload).
        let v1 = proxy_config(&mesh, "sleep", &["clusters", "--fqdn", SERVICE_HOST, "--subset", "v1"]);
        let rows: Vec<Vec<&str>> = v1.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows, [vec![SERVICE_HOST, "8000", "v1", "outbound", "EDS", "httpbin"]], "{v1}");
        let endpoints = proxy_config(&mesh, "sleep", &["endpoints", "--fqdn", SERVICE_HOST, "--subset", "v1"]);
        let v1_ip = mesh.ip(rudder_e2e::mesh::WORKLOADS[0].host);
        let rows: Vec<&str> = endpoints.lines().skip(1).collect();
        assert_eq!(rows.len(), 1, "{endpoints}");
        assert!(rows[0].starts_with(&format!("{v1_ip}:8000")) && rows[0].contains("HEALTHY"), "{endpoints}");

        // Listeners and routes: the port-8000 listener uses route "8000", whose httpbin host
        // comes from the VirtualService httpbin.
        let listeners = proxy_config(&mesh, "sleep", &["listeners", "--port", "8000"]);
        assert!(listeners.lines().nth(1).is_some_and(|l| l.ends_with("Route: 8000")), "{listeners}");
        let routes = proxy_config(&mesh, "sleep", &["routes", "--name", "8000"]);
        let httpbin = routes.lines().find(|l| l.contains(&format!("{SERVICE_HOST}:8000"))).unwrap_or_default();
        assert!(httpbin.ends_with("httpbin"), "{routes}");
        let yaml = proxy_config(&mesh, "sleep", &["routes", "--name", "8000", "-o", "yaml"]);
        assert!(yaml.contains("virtual_hosts"), "{yaml}");
    });
}

/// The `default` secret's version and certificate in a proxy's Envoy.
async fn workload_certificate(mesh: &LocalMesh, proxy: &str) -> Option<(String, String)> {
    let dump = mesh.config_dump(proxy, "?resource=dynamic_active_secrets").await.ok()?;
    rudder_e2e::mesh::workload_certificate(&dump)
}

#[test]
fn certificates_rotate_under_steady_traffic_without_a_failed_request() {
    let _one = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        // 5 s certificates: renewed every 4 s on both ends of the mTLS hop.
        let mesh = LocalMesh::start(MeshOptions { secret_ttl: Some("5s".into()), ..options() }).await.unwrap();
        let ends = ["sleep", "httpbin-v1", "httpbin-v2"];
        let mut first = Vec::new();
        for proxy in ends {
            first
                .push(workload_certificate(&mesh, proxy).await.unwrap_or_else(|| panic!("{proxy} has no certificate")));
        }
        let started = Instant::now();
        let (mut ok, mut failed) = (0u32, Vec::new());
        loop {
            match mesh.send(&mesh.via_client(SERVICE_HOST, "/get")).await {
                Ok(reply) if reply.status == 200 => ok += 1,
                Ok(reply) => failed.push(format!("status {}", reply.status)),
                Err(e) => failed.push(format!("{e:#}")),
            }
            let mut renewals = Vec::new();
            for (proxy, (version, _)) in ends.iter().zip(&first) {
                let now = workload_certificate(&mesh, proxy).await.map(|(v, _)| v).unwrap_or_default();
                renewals.push(now.parse::<u64>().unwrap_or(0).saturating_sub(version.parse().unwrap_or(0)));
            }
            // Every end renewed at least twice while requests kept flowing.
            if renewals.iter().all(|r| *r >= 2) {
                println!(
                    "{ok} requests over {:.1} s; renewals per proxy {renewals:?}",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "renewals so far {renewals:?}");
        }
        assert!(
            failed.is_empty(),
            "{} of {} requests failed during rotation: {failed:?}",
            failed.len(),
            ok as usize + failed.len()
        );
        let (_, before) = &first[0];
        let (_, after) = workload_certificate(&mesh, "sleep").await.unwrap();
        assert_ne!(before, &after, "a new certificate is in use");
    });
}
