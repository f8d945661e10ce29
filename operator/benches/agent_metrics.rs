//! What the mesh metrics cost a proxy: the CPU of the client sidecar (its agent and its
//! Envoy) under 1,000 requests/s through it to httpbin, in windows without and with a scrape
//! of the agent's `:15020/stats/prometheus` every 5 s (the agent then reads Envoy's stats and
//! turns them into `istio_*` series), alternating so drift on a shared machine hits both.
//! Target: the scrapes add ≤ 5 % to the proxy's CPU.
//!
//!   cargo bench -p rudder-operator --bench agent_metrics

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rudder_e2e::http::Req;
use rudder_e2e::mesh::{LocalMesh, MeshOptions, SERVICE_HOST};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
const ROUNDS: usize = 3;
const WINDOW: Duration = Duration::from_secs(20);
const RATE: u64 = 1_000;
const SENDERS: u64 = 4;
const SCRAPE_EVERY: Duration = Duration::from_secs(5);

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the name: state(0) ppid(1) … utime(11) stime(12).
    (ticks(11) + ticks(12)) / 100.0
}

/// The children of `pid` (Envoy, for an agent).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Agent and Envoy CPU seconds used during one window of load, scraping or not; and the
/// requests served.
async fn window(mesh: &LocalMesh, agent: u32, envoy: u32, scrape: bool) -> (f64, f64, u64) {
    let (agent_before, envoy_before) = (cpu_seconds(agent), cpu_seconds(envoy));
    let deadline = Instant::now() + WINDOW;
    let request = mesh.via_client(SERVICE_HOST, "/get");
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let client = mesh.client().clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * SENDERS / RATE));
                let mut served = 0;
                while Instant::now() < deadline {
                    tick.tick().await;
                    if client.send(&request).await.is_ok_and(|r| r.status == 200) {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect();
    if scrape {
        let url = mesh.agent_metrics_url("sleep");
        while Instant::now() + SCRAPE_EVERY < deadline {
            let reply = mesh.send(&Req::get(&url, "")).await.unwrap();
            assert_eq!(reply.status, 200);
            assert!(String::from_utf8_lossy(&reply.body).contains("istio_requests_total"));
            tokio::time::sleep(SCRAPE_EVERY).await;
        }
    }
    let mut served = 0;
    for sender in senders {
        served += sender.await.unwrap();
    }
    (cpu_seconds(agent) - agent_before, cpu_seconds(envoy) - envoy_before, served)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let envoy = rudder_xds::testing::envoy_path().unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
    let options = MeshOptions::new(PathBuf::from(RUDDER), envoy, examples);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mesh = LocalMesh::start(options).await.unwrap();
        let agent = mesh.proxy_pid("sleep").unwrap();
        let envoy = *children(agent).first().expect("the agent runs Envoy");
        let (mut quiet, mut scraped) = ((0.0, 0.0, 0), (0.0, 0.0, 0));
        for round in 0..ROUNDS {
            for scrape in [false, true] {
                let (a, e, n) = window(&mesh, agent, envoy, scrape).await;
                let total = if scrape { &mut scraped } else { &mut quiet };
                total.0 += a;
                total.1 += e;
                total.2 += n;
            }
            println!("round {}/{ROUNDS} done", round + 1);
        }
        let seconds = WINDOW.as_secs_f64() * ROUNDS as f64;
        let row = |name: &str, (agent, envoy, served): (f64, f64, u64)| {
            println!(
                "{name:<16} {:>6.0} req/s  agent {:>6.3} CPU s  Envoy {:>6.3} CPU s  proxy {:>6.1} % of a core",
                served as f64 / seconds,
                agent,
                envoy,
                (agent + envoy) / seconds * 100.0
            );
        };
        row("no scraping", quiet);
        row("scrape every 5s", scraped);
        let per_request = |(a, e, n): (f64, f64, u64)| (a + e) / n as f64;
        let added = per_request(scraped) / per_request(quiet) - 1.0;
        println!("proxy CPU per request with scraping: {:+.1} % (target ≤ +5 %)", added * 100.0);
    });
}
