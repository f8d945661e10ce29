//! The traffic scenarios of `examples/traffic/`, each applied to a
//! [`LocalMesh`](crate::mesh::LocalMesh) and checked through real Envoy. Every scenario
//! returns one line saying what the rule did (`90/10 split: v1=181 v2=19 of 200`) or an error
//! saying what was expected; the e2e suite asserts on the result and `rudder demo` prints it.
//!
//! Scenario files are applied as `traffic.yaml` in the mesh's config directory, so each one
//! replaces the previous, as the examples README describes. Scenarios that need a local
//! stand-in (an unreachable host, an "external" host) carry their own YAML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::http::Reply;
use crate::mesh::{LocalMesh, SERVICE_HOST, UNREACHABLE_HOST, UNREACHABLE_PORT, WORKLOADS};

/// One scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    RouteAllToV1,
    UriMatch,
    Split,
    HeaderRouting,
    FaultDelay,
    FaultAbort,
    RequestTimeout,
    ConnectTimeout,
    Retries,
    RetryGetOnly,
    Mirror,
    RoundRobin,
    LeastRequest,
    CircuitBreaking,
    OutlierDetection,
    AllowAny,
    RegistryOnly,
}

impl Scenario {
    /// Every scenario, in the order the demo walks through them.
    pub const ALL: [Scenario; 17] = [
        Self::RouteAllToV1,
        Self::UriMatch,
        Self::Split,
        Self::HeaderRouting,
        Self::FaultDelay,
        Self::FaultAbort,
        Self::RequestTimeout,
        Self::ConnectTimeout,
        Self::Retries,
        Self::RetryGetOnly,
        Self::Mirror,
        Self::RoundRobin,
        Self::LeastRequest,
        Self::CircuitBreaking,
        Self::OutlierDetection,
        Self::AllowAny,
        Self::RegistryOnly,
    ];

    /// The config it applies: a file of `examples/traffic/`, or its own YAML.
    fn config(self) -> Config {
        use Config::{Example, Inline};
        match self {
            Self::RouteAllToV1 => Example("02-route-all-to-v1.yaml"),
            Self::UriMatch | Self::Split => Example("03-weighted-90-10.yaml"),
            Self::HeaderRouting => Example("04-header-routing-jason.yaml"),
            Self::FaultDelay => Example("05-fault-delay.yaml"),
            Self::FaultAbort => Example("06-fault-abort.yaml"),
            Self::RequestTimeout => Example("07-request-timeout.yaml"),
            Self::ConnectTimeout => Inline(UNREACHABLE_YAML),
            Self::Retries => Example("09-retries.yaml"),
            Self::RetryGetOnly => Example("11-retry-get-only.yaml"),
            Self::Mirror => Example("12-mirror-v2.yaml"),
            Self::RoundRobin => Inline(ROUND_ROBIN_YAML),
            Self::LeastRequest => Example("13-least-conn.yaml"),
            Self::CircuitBreaking | Self::OutlierDetection => Example("14-circuit-breaking.yaml"),
            Self::AllowAny => Inline(ALLOW_ANY_YAML),
            Self::RegistryOnly => Inline(REGISTRY_ONLY_YAML),
        }
    }

    /// Where the scenario's config comes from, for the demo's output.
    pub fn source(self) -> String {
        match self.config() {
            Config::Example(file) => format!("examples/traffic/{file}"),
            Config::Inline(_) => "built-in local config".into(),
        }
    }
}

enum Config {
    Example(&'static str),
    Inline(&'static str),
}

/// A host that never accepts a connection (see `mesh::Unreachable`), with a 1s connect timeout.
const UNREACHABLE_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: unreachable
  namespace: testns1
spec:
  hosts:
  - unreachable.testns1.example
  ports:
  - number: 8000
    name: http
    protocol: HTTP
    targetPort: UNREACHABLE_PORT
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.UNREACHABLE_HOST
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: unreachable
  namespace: testns1
spec:
  host: unreachable.testns1.example
  trafficPolicy:
    connectionPool:
      tcp:
        connectTimeout: 1s
"#;

const ROUND_ROBIN_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
  namespace: testns1
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
"#;

const ALLOW_ANY_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: testns1
spec:
  outboundTrafficPolicy:
    mode: ALLOW_ANY
"#;

const REGISTRY_ONLY_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: testns1
spec:
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
"#;

/// Applies `scenario`'s config, waits until every sidecar has it, resets the workloads and
/// runs the checks.
pub async fn run(mesh: &mut LocalMesh, examples: &Path, scenario: Scenario) -> anyhow::Result<String> {
    let yaml = match scenario.config() {
        Config::Example(file) => {
            let path: PathBuf = examples.join("traffic").join(file);
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Config::Inline(text) => text
            .replace("UNREACHABLE_PORT", &UNREACHABLE_PORT.to_string())
            .replace("UNREACHABLE_HOST", &UNREACHABLE_HOST.to_string()),
    };
    mesh.apply("traffic", &yaml).await?;
    mesh.wait_synced().await?;
    mesh.reset_apps().await?;
    match scenario {
        Scenario::RouteAllToV1 => route_all_to_v1(mesh).await,
        Scenario::UriMatch => uri_match(mesh).await,
        Scenario::Split => split(mesh).await,
        Scenario::HeaderRouting => header_routing(mesh).await,
        Scenario::FaultDelay => fault_delay(mesh).await,
        Scenario::FaultAbort => fault_abort(mesh).await,
        Scenario::RequestTimeout => request_timeout(mesh).await,
        Scenario::ConnectTimeout => connect_timeout(mesh).await,
        Scenario::Retries => retries(mesh).await,
        Scenario::RetryGetOnly => retry_get_only(mesh).await,
        Scenario::Mirror => mirror(mesh).await,
        Scenario::RoundRobin => round_robin(mesh).await,
        Scenario::LeastRequest => least_request(mesh).await,
        Scenario::CircuitBreaking => circuit_breaking(mesh).await,
        Scenario::OutlierDetection => outlier_detection(mesh).await,
        Scenario::AllowAny => allow_any(mesh).await,
        Scenario::RegistryOnly => registry_only(mesh).await,
    }
}

/// Sends `n` GETs for `path` one after the other; counts replies by answering version
/// (`x-echo-version`, or `status <code>` when Envoy answered itself).
async fn tally(mesh: &LocalMesh, path: &str, headers: &[(&str, &str)], n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut req = mesh.via_client(SERVICE_HOST, path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = mesh.send(&req).await?;
        *counts.entry(answered_by(&reply)).or_default() += 1;
    }
    Ok(counts)
}

fn answered_by(reply: &Reply) -> String {
    match reply.header("x-echo-version") {
        "" => format!("status {}", reply.status.as_u16()),
        v if reply.status == StatusCode::OK => v.to_owned(),
        v => format!("{v} status {}", reply.status.as_u16()),
    }
}

fn show(counts: &BTreeMap<String, usize>) -> String {
    counts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn only(counts: &BTreeMap<String, usize>, key: &str, n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(counts.get(key) == Some(&n) && counts.len() == 1, "expected {key}={n}, got {}", show(counts));
    Ok(())
}

async fn route_all_to_v1(mesh: &LocalMesh) -> anyhow::Result<String> {
    let counts = tally(mesh, "/get", &[], 20).await?;
    only(&counts, "v1", 20)?;
    Ok(format!("route all to v1: {} of 20", show(&counts)))
}

async fn uri_match(mesh: &LocalMesh) -> anyhow::Result<String> {
    let exact = tally(mesh, "/headers", &[], 10).await?;
    only(&exact, "v1", 10)?;
    let prefix = tally(mesh, "/status/200", &[], 10).await?;
    only(&prefix, "v2", 10)?;
    Ok(format!("uri exact /headers: {} of 10; uri prefix /status: {} of 10", show(&exact), show(&prefix)))
}

async fn split(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 200;
    let counts = tally(mesh, "/get", &[], N).await?;
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    // 10% of 200 is 20 with a standard deviation of about 4.2; 5..=40 is beyond ±3.5σ.
    anyhow::ensure!(v1 + v2 == N && (5..=40).contains(&v2), "expected about 180/20, got {}", show(&counts));
    Ok(format!("90/10 split: v1={v1} v2={v2} of {N}"))
}

async fn header_routing(mesh: &LocalMesh) -> anyhow::Result<String> {
    let jason = tally(mesh, "/get", &[("end-user", "jason")], 10).await?;
    only(&jason, "v2", 10)?;
    let others = tally(mesh, "/get", &[], 10).await?;
    only(&others, "v1", 10)?;
    Ok(format!("end-user: jason → {} of 10; others → {} of 10", show(&jason), show(&others)))
}

/// Sends `n` requests at once and returns each reply with how long it took.
async fn concurrent(mesh: &LocalMesh, path: &str, n: usize) -> anyhow::Result<Vec<(Reply, Duration)>> {
    let req = mesh.via_client(SERVICE_HOST, path);
    let client = mesh.client().clone();
    let tasks = (0..n).map(|_| {
        let (client, req) = (client.clone(), req.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            client.send(&req).await.map(|r| (r, started.elapsed()))
        })
    });
    let mut out = Vec::with_capacity(n);
    for task in futures::future::join_all(tasks).await {
        out.push(task??);
    }
    Ok(out)
}

async fn fault_delay(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 40;
    let replies = concurrent(mesh, "/get", N).await?;
    let delayed = replies.iter().filter(|(_, took)| *took >= Duration::from_millis(2900)).count();
    let ok = replies.iter().filter(|(r, _)| r.status == StatusCode::OK).count();
    // 50% of 40: 8..=32 is beyond ±5σ.
    anyhow::ensure!(ok == N && (8..=32).contains(&delayed), "expected about 20 of {N} delayed by 3s, all 200; got {delayed} delayed, {ok} ok");
    Ok(format!("fault delay 3s at 50%: {delayed}/{N} delayed, all {ok} answered 200"))
}

async fn fault_abort(mesh: &LocalMesh) -> anyhow::Result<String> {
    let aborted = tally(mesh, "/get", &[("client-id", "gogo123")], 100).await?;
    only(&aborted, "status 500", 100)?;
    let others = tally(mesh, "/get", &[], 10).await?;
    only(&others, "v1", 10)?;
    Ok(format!("fault abort for client-id gogo123: 100/100 got 500; others: {} of 10", show(&others)))
}

async fn request_timeout(mesh: &LocalMesh) -> anyhow::Result<String> {
    let slow = mesh.send(&mesh.via_client(SERVICE_HOST, "/delay/3")).await?;
    anyhow::ensure!(slow.status == StatusCode::GATEWAY_TIMEOUT, "/delay/3 under a 2s timeout: expected 504, got {}", slow.status);
    let fast = mesh.send(&mesh.via_client(SERVICE_HOST, "/delay/1")).await?;
    anyhow::ensure!(fast.status == StatusCode::OK, "/delay/1 under a 2s timeout: expected 200, got {}", fast.status);
    Ok("request timeout 2s: /delay/3 got 504, /delay/1 got 200".into())
}

async fn connect_timeout(mesh: &LocalMesh) -> anyhow::Result<String> {
    let started = Instant::now();
    let reply = mesh.send(&mesh.via_client("unreachable.testns1.example:8000", "/get")).await?;
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&reply.body);
    anyhow::ensure!(
        reply.status == StatusCode::SERVICE_UNAVAILABLE && body.contains("timeout"),
        "expected 503 after connect timeouts, got {} {body:?}",
        reply.status
    );
    Ok(format!("connect timeout 1s to a host that never accepts: 503 after {:.1}s (default retries included)", took.as_secs_f64()))
}

/// Requests for `path` the workloads saw (summed over both versions).
async fn seen_at_workloads(mesh: &LocalMesh, path: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for w in &WORKLOADS {
        total += mesh.app_stats(w).await?["paths"][path].as_u64().unwrap_or(0);
    }
    Ok(total)
}

async fn retries(mesh: &LocalMesh) -> anyhow::Result<String> {
    let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/status/503")).await?;
    let seen = seen_at_workloads(mesh, "/status/503").await?;
    anyhow::ensure!(reply.status == StatusCode::SERVICE_UNAVAILABLE && seen == 4, "expected 503 after 1+3 attempts, got {} after {seen}", reply.status);
    Ok(format!("retries (3 on 5xx): one GET /status/503 → {seen} attempts at the workloads, then 503"))
}

async fn retry_get_only(mesh: &LocalMesh) -> anyhow::Result<String> {
    mesh.send(&mesh.via_client(SERVICE_HOST, "/status/503")).await?;
    let get = seen_at_workloads(mesh, "/status/503").await?;
    mesh.reset_apps().await?;
    mesh.send(&mesh.via_client(SERVICE_HOST, "/status/503").method(Method::POST)).await?;
    let post = seen_at_workloads(mesh, "/status/503").await?;
    anyhow::ensure!(get == 4 && post == 1, "expected GET retried (4 attempts) and POST not (1); got {get} and {post}");
    Ok(format!("retries for GET only: GET → {get} attempts, POST → {post} attempt"))
}

async fn mirror(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 10;
    let counts = tally(mesh, "/get", &[], N).await?;
    only(&counts, "v1", N)?;
    // Mirrored copies are sent without waiting for them; poll until v2 saw them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = mesh.app_stats(&WORKLOADS[1]).await?;
        let shadow: u64 = stats["hosts"]
            .as_object()
            .map(|hosts| hosts.iter().filter(|(h, _)| h.contains("-shadow")).filter_map(|(_, n)| n.as_u64()).sum())
            .unwrap_or(0);
        if shadow as usize == N {
            let host = stats["hosts"].as_object().and_then(|h| h.keys().next().cloned()).unwrap_or_default();
            return Ok(format!("mirror to v2: v1 served {N}/{N}; v2 saw {shadow} copies with host {host}"));
        }
        anyhow::ensure!(Instant::now() < deadline, "expected v2 to see {N} copies with a -shadow host, stats: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// v1 made slow (0.3s per request), then 40 requests from 8 clients that each send their
/// next request as soon as the last one is answered: how many did each version get?
async fn with_slow_v1(mesh: &LocalMesh) -> anyhow::Result<(usize, usize)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    mesh.client().post(&mesh.app_url(&WORKLOADS[0], "/echo/latency/0.3")).await?;
    let tickets = Arc::new(AtomicUsize::new(40));
    let req = mesh.via_client(SERVICE_HOST, "/get");
    let workers = (0..8).map(|_| {
        let (client, req, tickets) = (mesh.client().clone(), req.clone(), tickets.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while tickets.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                let reply = client.send(&req).await?;
                seen.push(reply.header("x-echo-version").to_owned());
            }
            anyhow::Ok(seen)
        })
    });
    let (mut v1, mut v2) = (0, 0);
    for worker in futures::future::join_all(workers).await {
        for version in worker?? {
            match version.as_str() {
                "v1" => v1 += 1,
                "v2" => v2 += 1,
                other => anyhow::bail!("unexpected reply from {other:?}"),
            }
        }
    }
    mesh.reset_apps().await?;
    Ok((v1, v2))
}

async fn round_robin(mesh: &LocalMesh) -> anyhow::Result<String> {
    let counts = tally(mesh, "/get", &[], 20).await?;
    let (v1, v2) = (counts.get("v1").copied().unwrap_or(0), counts.get("v2").copied().unwrap_or(0));
    anyhow::ensure!(v1 + v2 == 20 && v1.abs_diff(v2) <= 2, "round robin should alternate: {}", show(&counts));
    let (slow, fast) = with_slow_v1(mesh).await?;
    anyhow::ensure!(slow >= 14, "round robin keeps sending to a slow v1: expected about 20 of 40, got {slow}");
    Ok(format!("ROUND_ROBIN: v1={v1} v2={v2} of 20; with v1 slow, v1={slow} v2={fast} of 40"))
}

async fn least_request(mesh: &LocalMesh) -> anyhow::Result<String> {
    let (slow, fast) = with_slow_v1(mesh).await?;
    anyhow::ensure!(slow <= 12, "least request should avoid the slow v1: got v1={slow} v2={fast} of 40");
    Ok(format!("LEAST_CONN: with v1 slow, v1={slow} v2={fast} of 40 (round robin would give 20/20)"))
}

async fn circuit_breaking(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 60;
    let replies = concurrent(mesh, "/delay/1", N).await?;
    let ok = replies.iter().filter(|(r, _)| r.status == StatusCode::OK).count();
    let overloaded = replies
        .iter()
        .filter(|(r, _)| r.status == StatusCode::SERVICE_UNAVAILABLE && r.header("x-envoy-overloaded") == "true")
        .count();
    anyhow::ensure!(ok >= 10 && overloaded >= 1 && ok + overloaded == N, "expected some 200s and some overflow 503s, got {ok} ok, {overloaded} overloaded of {N}");
    Ok(format!("circuit breaking (10 connections, 10 pending): {ok} served, {overloaded} rejected with 503 of {N} at once"))
}

async fn outlier_detection(mesh: &LocalMesh) -> anyhow::Result<String> {
    mesh.client().post(&mesh.app_url(&WORKLOADS[1], "/echo/fail/500")).await?;
    let before = tally(mesh, "/get", &[], 10).await?;
    // Ejection happens on the 5xx itself; give Envoy's sweep a moment all the same.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = tally(mesh, "/get", &[], 20).await?;
    mesh.reset_apps().await?;
    only(&after, "v1", 20)?;
    Ok(format!("outlier detection: v2 failing; first 10: {}; after ejection: {} of 20", show(&before), show(&after)))
}

/// A request for a host the registry does not know, through the client sidecar. In capture
/// mode NONE there is no original destination, so the client names it in
/// `x-envoy-original-dst-host` (the "external" host is a local echo server).
async fn unknown_host(mesh: &LocalMesh) -> anyhow::Result<Reply> {
    let target = format!("{}:{}", mesh.ip(crate::mesh::EXTERNAL_HOST), crate::mesh::SERVICE_PORT);
    mesh.send(&mesh.via_client("external.example", "/get").header("x-envoy-original-dst-host", &target)).await
}

async fn allow_any(mesh: &LocalMesh) -> anyhow::Result<String> {
    let reply = unknown_host(mesh).await?;
    anyhow::ensure!(reply.status == StatusCode::OK && reply.header("x-echo-instance") == "external", "ALLOW_ANY: expected the external host to answer, got {} {:?}", reply.status, reply.header("x-echo-instance"));
    Ok("ALLOW_ANY: unknown host external.example passed through (200 from the external server)".into())
}

async fn registry_only(mesh: &LocalMesh) -> anyhow::Result<String> {
    let reply = unknown_host(mesh).await?;
    anyhow::ensure!(reply.status == StatusCode::BAD_GATEWAY, "REGISTRY_ONLY: expected 502 for an unknown host, got {}", reply.status);
    let known = tally(mesh, "/get", &[], 5).await?;
    anyhow::ensure!(known.keys().all(|k| k == "v1" || k == "v2"), "REGISTRY_ONLY must still reach httpbin: {}", show(&known));
    Ok(format!("REGISTRY_ONLY: unknown host got 502; httpbin still reached ({})", show(&known)))
}
