//! The traffic scenarios of `examples/traffic/`, each applied to a
//! [`LocalMesh`](crate::mesh::LocalMesh) and checked through real Envoy. Every scenario
//! returns one line saying what the rule did (`90/10 split: v1=362 v2=38 of 400`) or an error
//! saying what was expected; the e2e suite asserts on the result and `rudder demo` prints it.
//!
//! Scenario files are applied as `traffic.yaml` in the mesh's config directory, so each one
//! replaces the previous, as the examples README describes. Scenarios that need a local
//! stand-in (an unreachable host, an "external" host) carry their own YAML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::http::{Reply, Req};
use crate::mesh::{LocalMesh, SERVICE_HOST, SERVICE_PORT, UNREACHABLE_HOST, UNREACHABLE_PORT, WORKLOADS, Workload};

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
    IngressGateway,
    IngressTls,
    EgressGateway,
    IngressToEgress,
    SidecarScope,
    MtlsPermissive,
    MtlsStrict,
    IngressIstioMutual,
    Authorization,
    JwtAuthentication,
    AccessLogging,
    MeshMetrics,
    Tracing,
}

impl Scenario {
    /// Every scenario, in the order the demo walks through them.
    pub const ALL: [Scenario; 30] = [
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
        Self::IngressGateway,
        Self::IngressTls,
        Self::EgressGateway,
        Self::IngressToEgress,
        Self::SidecarScope,
        Self::MtlsPermissive,
        Self::MtlsStrict,
        Self::IngressIstioMutual,
        Self::Authorization,
        Self::JwtAuthentication,
        Self::AccessLogging,
        Self::MeshMetrics,
        Self::Tracing,
    ];

    /// The config it applies: a file of `examples/traffic/`, or its own YAML.
    fn config(self) -> Config {
        use Config::{Composed, Example, Generated, Inline, Security, Telemetry};
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
            Self::IngressGateway => Example("15-ingress-gateway.yaml"),
            Self::IngressTls => Generated,
            Self::EgressGateway => Composed(egress_gateway_yaml),
            Self::SidecarScope => Inline(SIDECAR_SCOPE_YAML),
            Self::MtlsPermissive => Inline(MTLS_PERMISSIVE_YAML),
            Self::MtlsStrict => Security("01-mtls-strict.yaml"),
            Self::IngressIstioMutual => Example("21-gateway-istio-mutual.yaml"),
            Self::Authorization => Security("02-authorization-policy.yaml"),
            Self::JwtAuthentication => Security("03-jwt.yaml"),
            Self::IngressToEgress => Composed(ingress_to_egress_yaml),
            Self::AccessLogging => Telemetry("01-access-logging.yaml"),
            Self::MeshMetrics => Example("06-fault-abort.yaml"),
            Self::Tracing => Telemetry("02-tracing.yaml"),
        }
    }

    /// Where the scenario's config comes from, for the demo's output.
    pub fn source(self) -> String {
        match self.config() {
            Config::Example(file) => format!("examples/traffic/{file}"),
            Config::Security(file) => format!("examples/security/{file}"),
            Config::Telemetry(file) => format!("examples/telemetry/{file}"),
            Config::Inline(_) | Config::Composed(_) => "built-in local config".into(),
            Config::Generated => "built-in local config with certificates or keys made for the run".into(),
        }
    }
}

enum Config {
    Example(&'static str),
    /// A file of `examples/security/`.
    Security(&'static str),
    /// A file of `examples/telemetry/`.
    Telemetry(&'static str),
    Inline(&'static str),
    /// Built from shared parts.
    Composed(fn() -> String),
    /// Built at run time (test certificates).
    Generated,
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
    let tls = match scenario {
        Scenario::IngressTls => Some(IngressTls::new(mesh).await?),
        _ => None,
    };
    // The identity provider of example 03: its keys served where the example's jwksUri says.
    let jwt = match scenario {
        Scenario::JwtAuthentication => {
            let issuer = crate::jwt::JwtIssuer::new("e2e")?;
            let addr = std::net::SocketAddr::new(mesh.ip(JWKS_HOST).into(), JWKS_PORT);
            let server = crate::jwt::JwksServer::start(addr, issuer.jwks()).await?;
            Some((issuer, server))
        }
        _ => None,
    };
    // The span collector the tracing example's provider names.
    let collector = match scenario {
        Scenario::Tracing => {
            let addr = std::net::SocketAddr::new(mesh.ip(ZIPKIN_HOST).into(), ZIPKIN_PORT);
            Some(crate::zipkin::ZipkinCollector::start(addr).await?)
        }
        _ => None,
    };
    // The client's clusters before its Sidecar scopes it, to compare with after.
    let before_scope = match scenario {
        Scenario::SidecarScope => {
            mesh.remove("traffic").await?;
            mesh.wait_synced().await?;
            Some(client_config(mesh).await?)
        }
        _ => None,
    };
    let yaml = match scenario.config() {
        Config::Generated => tls.as_ref().map(IngressTls::yaml).unwrap_or_default(),
        Config::Security(file) => {
            let path: PathBuf = examples.join("security").join(file);
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Config::Telemetry(file) => {
            let path: PathBuf = examples.join("telemetry").join(file);
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Config::Example(file) => {
            let path: PathBuf = examples.join("traffic").join(file);
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Config::Inline(text) => local_addresses(text.to_owned()),
        Config::Composed(build) => local_addresses(build()),
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
        Scenario::IngressGateway => ingress_gateway(mesh).await,
        Scenario::EgressGateway => egress_gateway(mesh).await,
        Scenario::IngressToEgress => ingress_to_egress(mesh).await,
        Scenario::SidecarScope => sidecar_scope(mesh, before_scope.unwrap_or_default()).await,
        Scenario::MtlsPermissive => mutual_tls(mesh, false).await,
        Scenario::MtlsStrict => mutual_tls(mesh, true).await,
        Scenario::IngressIstioMutual => ingress_istio_mutual(mesh).await,
        Scenario::Authorization => authorization(mesh).await,
        Scenario::AccessLogging => access_logging(mesh).await,
        Scenario::MeshMetrics => mesh_metrics(mesh).await,
        Scenario::Tracing => match &collector {
            Some(collector) => tracing_spans(mesh, collector).await,
            None => anyhow::bail!("no span collector"),
        },
        Scenario::JwtAuthentication => match &jwt {
            Some((issuer, _keys_served)) => jwt_authentication(mesh, issuer).await,
            None => anyhow::bail!("no JWT issuer"),
        },
        Scenario::IngressTls => match &tls {
            Some(tls) => ingress_tls(mesh, tls).await,
            None => anyhow::bail!("no TLS fixture"),
        },
    }
}

/// Built-in config with the local stand-ins' host numbers and ports filled in.
fn local_addresses(text: String) -> String {
    text.replace("UNREACHABLE_PORT", &UNREACHABLE_PORT.to_string())
        .replace("UNREACHABLE_HOST", &UNREACHABLE_HOST.to_string())
        .replace("EXTERNAL_HOST", &crate::mesh::EXTERNAL_HOST.to_string())
}

/// Sends `n` GETs for `path` one after the other; counts replies by answering version
/// (`x-echo-version`, or `status <code>` when Envoy answered itself).
async fn tally(
    mesh: &LocalMesh,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
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
    const N: usize = 400;
    let counts = tally(mesh, "/get", &[], N).await?;
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    // Envoy draws the weighted cluster from a fresh random number per request, so v2's count is
    // Binomial(400, 0.1): mean 40, σ 6. P(v2 ≤ 13) + P(v2 ≥ 73) ≈ 6.3e-7, while 50/50 or
    // 100/0 fail for certain.
    anyhow::ensure!(v1 + v2 == N && (14..=72).contains(&v2), "expected about 360/40, got {}", show(&counts));
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

/// Delays the client sidecar's fault filters have injected so far.
async fn delays_injected(mesh: &LocalMesh) -> anyhow::Result<u64> {
    let stats = mesh.sidecar_stats("sleep", "fault.delays_injected").await?;
    Ok(stats.iter().filter(|(name, _)| name.starts_with("http.")).map(|(_, n)| n).sum())
}

async fn fault_delay(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 40;
    let before = delays_injected(mesh).await?;
    let replies = concurrent(mesh, "/get", N).await?;
    let injected = usize::try_from(delays_injected(mesh).await? - before)?;
    // A delayed request cannot be answered sooner than 3s after it was sent (Envoy starts the
    // timer after receiving it), give or take the granularity of Envoy's coarse timer clock:
    // hence 2.9s. Undelayed
    // requests are not bounded from above: on a loaded machine one may take long too.
    let held = replies.iter().filter(|(_, took)| *took >= Duration::from_millis(2900)).count();
    let ok = replies.iter().filter(|(r, _)| r.status == StatusCode::OK).count();
    // Envoy draws each request's delay on its own at 50%: Binomial(40, 0.5), so
    // P(injected ≤ 3) + P(injected ≥ 37) ≈ 2e-8, while 0% or 100% fail for certain.
    anyhow::ensure!(
        ok == N && (4..=36).contains(&injected) && held >= injected,
        "expected about 20 of {N} delayed by 3s, all 200; Envoy injected {injected} delays, \
         {held} replies took 3s or more, {ok} were 200"
    );
    Ok(format!("fault delay 3s at 50%: Envoy delayed {injected}/{N} ({held} took ≥3s), all {ok} answered 200"))
}

async fn fault_abort(mesh: &LocalMesh) -> anyhow::Result<String> {
    let aborted = tally(mesh, "/get", &[("client-id", "gogo123")], 100).await?;
    only(&aborted, "status 500", 100)?;
    let others = tally(mesh, "/get", &[], 10).await?;
    only(&others, "v1", 10)?;
    Ok(format!("fault abort for client-id gogo123: 100/100 got 500; others: {} of 10", show(&others)))
}

async fn request_timeout(mesh: &LocalMesh) -> anyhow::Result<String> {
    // Margins of seconds both ways: the workload answers /delay/10 no sooner than 10s, 8s
    // after Envoy's 2s timer, and /delay/0.5 1.5s before it. Envoy's timers run on a coarse
    // clock and may fire a few milliseconds early by ours, hence 1.9s as the lower bound.
    let started = Instant::now();
    let slow = mesh.send(&mesh.via_client(SERVICE_HOST, "/delay/10")).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        slow.status == StatusCode::GATEWAY_TIMEOUT && took >= Duration::from_millis(1900),
        "/delay/10 under a 2s timeout: expected 504 after 2s, got {} after {took:?}",
        slow.status
    );
    let fast = mesh.send(&mesh.via_client(SERVICE_HOST, "/delay/0.5")).await?;
    anyhow::ensure!(fast.status == StatusCode::OK, "/delay/0.5 under a 2s timeout: expected 200, got {}", fast.status);
    Ok(format!("request timeout 2s: /delay/10 got 504 after {:.1}s, /delay/0.5 got 200", took.as_secs_f64()))
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
    Ok(format!(
        "connect timeout 1s to a host that never accepts: 503 after {:.1}s (default retries included)",
        took.as_secs_f64()
    ))
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
    anyhow::ensure!(
        reply.status == StatusCode::SERVICE_UNAVAILABLE && seen == 4,
        "expected 503 after 1+3 attempts, got {} after {seen}",
        reply.status
    );
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
    let deadline = Instant::now() + crate::mesh::READY_TIMEOUT;
    loop {
        let stats = mesh.app_stats(&WORKLOADS[1]).await?;
        let shadow: u64 = stats["hosts"]
            .as_object()
            .map(|hosts| hosts.iter().filter(|(h, _)| h.contains("-shadow")).filter_map(|(_, n)| n.as_u64()).sum())
            .unwrap_or(0);
        anyhow::ensure!(shadow as usize <= N, "v2 saw {shadow} mirrored copies of {N} requests: {stats}");
        if shadow as usize == N {
            let host = stats["hosts"].as_object().and_then(|h| h.keys().next().cloned()).unwrap_or_default();
            return Ok(format!("mirror to v2: v1 served {N}/{N}; v2 saw {shadow} copies with host {host}"));
        }
        anyhow::ensure!(Instant::now() < deadline, "expected v2 to see {N} copies with a -shadow host, stats: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Envoy's name for the httpbin cluster of the client sidecar.
fn httpbin_cluster() -> String {
    format!("outbound|{}||{SERVICE_HOST}", crate::mesh::SERVICE_PORT)
}

/// A stat of the client sidecar's httpbin cluster (`upstream_rq_active`, …; 0 before Envoy
/// has created it).
async fn httpbin_stat(mesh: &LocalMesh, stat: &str) -> anyhow::Result<u64> {
    let leaf = stat.rsplit('.').next().unwrap_or(stat);
    let prefix = format!("cluster.{}", httpbin_cluster());
    let suffix = format!(".{stat}");
    let stats = mesh.sidecar_stats("sleep", leaf).await?;
    // Named after the cluster's alt_stat_name, which is its name and a `;`.
    Ok(stats
        .iter()
        .filter(|(name, _)| {
            name.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(&suffix))
                .is_some_and(|mid| mid.is_empty() || mid == ";")
        })
        .map(|(_, n)| n)
        .sum())
}

/// Requests a workload's app has seen since the last reset.
async fn app_total(mesh: &LocalMesh, workload: &Workload) -> anyhow::Result<u64> {
    Ok(mesh.app_stats(workload).await?["total"].as_u64().unwrap_or(0))
}

/// How long a held request stays at a workload: the longest latency `rudder echo` adds.
const HOLD: Duration = Duration::from_secs(10);

type Pending = tokio::task::JoinHandle<anyhow::Result<Reply>>;

/// Where a request watched by [`send_watching`] went.
enum Landed {
    Answered(Reply),
    /// Seen arriving at the watched workload, and still in flight.
    Held(Pending),
}

/// Sends `req` in the background and waits until it is answered or seen arriving at
/// `watched` (whose answers take [`HOLD`]).
async fn send_watching(mesh: &LocalMesh, req: &Req, watched: &Workload) -> anyhow::Result<Landed> {
    let before = app_total(mesh, watched).await?;
    let task = {
        let (client, req) = (mesh.client().clone(), req.clone());
        tokio::spawn(async move { client.send(&req).await })
    };
    let deadline = Instant::now() + crate::mesh::READY_TIMEOUT;
    loop {
        if task.is_finished() {
            return Ok(Landed::Answered(task.await??));
        }
        if app_total(mesh, watched).await? > before {
            return Ok(Landed::Held(task));
        }
        anyhow::ensure!(Instant::now() < deadline, "a request through the client sidecar neither answered nor arrived");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Cancels held requests and waits until the client sidecar has none in flight to httpbin.
async fn release(mesh: &LocalMesh, held: Vec<Pending>) -> anyhow::Result<()> {
    for task in &held {
        task.abort();
    }
    let deadline = Instant::now() + crate::mesh::READY_TIMEOUT;
    loop {
        let active = httpbin_stat(mesh, "upstream_rq_active").await?;
        let pending = httpbin_stat(mesh, "upstream_rq_pending_active").await?;
        if active == 0 && pending == 0 {
            return mesh.reset_apps().await;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "released requests still in flight in the client sidecar: {active} active, {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// v1 made slow (each request held there for [`HOLD`]), then `n` GETs sent one after the
/// other, each while v1 has at least one request in flight and v2 none: how many went to v1?
///
/// Each GET is watched until it is answered (by v2) or seen arriving at v1, where it stays,
/// so when the next one is sent v2 is idle and v1 busy. That is only certain while the latest
/// request held at v1 has not been answered, i.e. within [`HOLD`] of when it was sent: before
/// that runs short another is parked at v1 (uncounted requests until one lands there), and a
/// counted request answered after it ran out is not counted (`discarded`).
async fn with_busy_v1(mesh: &LocalMesh, n: usize) -> anyhow::Result<BusyV1> {
    let v1 = &WORKLOADS[0];
    mesh.client().post(&mesh.app_url(v1, &format!("/echo/latency/{}", HOLD.as_secs()))).await?;
    let req = mesh.via_client(SERVICE_HOST, "/get");
    let mut held: Vec<Pending> = Vec::new();
    let mut out = BusyV1::default();
    let result = async {
        // When the request held at v1 most recently was sent.
        let mut holding_since: Option<Instant> = None;
        while out.v1 + out.v2 < n {
            if holding_since.is_none_or(|since| since.elapsed() > HOLD / 2) {
                let mut tries = 0;
                loop {
                    let sent = Instant::now();
                    match send_watching(mesh, &req, v1).await? {
                        Landed::Held(task) => {
                            held.push(task);
                            holding_since = Some(sent);
                            break;
                        }
                        Landed::Answered(reply) => expect_fast_v2(&reply)?,
                    }
                    tries += 1;
                    anyhow::ensure!(tries < 60, "60 requests in a row avoided v1 while it was idle");
                }
            }
            let busy_until = holding_since.map(|since| since + HOLD);
            let sent = Instant::now();
            let landed = send_watching(mesh, &req, v1).await?;
            // v1 was certainly busy when Envoy picked a host for it only if it landed before
            // the latest held request could have been answered.
            let counted = busy_until.is_some_and(|until| Instant::now() < until);
            match landed {
                Landed::Held(task) => {
                    held.push(task);
                    holding_since = Some(sent);
                    out.v1 += usize::from(counted);
                }
                Landed::Answered(reply) => {
                    expect_fast_v2(&reply)?;
                    out.v2 += usize::from(counted);
                    if !counted {
                        holding_since = None;
                    }
                }
            }
            out.discarded += usize::from(!counted);
        }
        anyhow::Ok(())
    }
    .await;
    release(mesh, held).await?;
    result.map(|()| out)
}

#[derive(Debug, Default)]
struct BusyV1 {
    v1: usize,
    v2: usize,
    /// Requests sent after v1 may have gone idle, not counted.
    discarded: usize,
}

impl BusyV1 {
    fn note(&self) -> String {
        if self.discarded == 0 {
            String::new()
        } else {
            format!(" ({} sent as v1 may have gone idle not counted)", self.discarded)
        }
    }
}

fn expect_fast_v2(reply: &Reply) -> anyhow::Result<()> {
    anyhow::ensure!(
        reply.status == StatusCode::OK && reply.header("x-echo-version") == "v2",
        "expected a request not held at the slow v1 to be answered by v2, got {}",
        answered_by(reply)
    );
    Ok(())
}

async fn round_robin(mesh: &LocalMesh) -> anyhow::Result<String> {
    let counts = tally(mesh, "/get", &[], 20).await?;
    let (v1, v2) = (counts.get("v1").copied().unwrap_or(0), counts.get("v2").copied().unwrap_or(0));
    // One worker thread (--concurrency 1), so Envoy's round robin strictly alternates.
    anyhow::ensure!(v1 + v2 == 20 && v1.abs_diff(v2) <= 2, "round robin should alternate: {}", show(&counts));
    const N: usize = 40;
    let busy = with_busy_v1(mesh, N).await?;
    // Round robin ignores load: it keeps alternating, so half go to the busy v1.
    anyhow::ensure!(
        busy.v1.abs_diff(busy.v2) <= 2,
        "round robin keeps sending to a busy v1: expected {}/{}, got v1={} v2={}{}",
        N / 2,
        N / 2,
        busy.v1,
        busy.v2,
        busy.note()
    );
    Ok(format!(
        "ROUND_ROBIN: v1={v1} v2={v2} of 20; while v1 is busy and v2 idle, v1={} v2={} of {N}{}",
        busy.v1,
        busy.v2,
        busy.note()
    ))
}

async fn least_request(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 200;
    let busy = with_busy_v1(mesh, N).await?;
    // Envoy's least request with equal weights draws two hosts at random with replacement and
    // takes the one with fewer active requests. With v1 busy and v2 idle only a (v1, v1) draw
    // picks v1: p = 1/4, so v1's count is Binomial(200, 1/4), mean 50, σ 6.1.
    // P(v1 < 20) + P(v1 > 82) ≈ 2.6e-7. Round robin (100) fails for certain, random (≈100)
    // with probability ≥ 0.99, and a least-request that never picks the busy host fails too.
    anyhow::ensure!(
        busy.v1 + busy.v2 == N && (20..=82).contains(&busy.v1),
        "least request: with v1 busy and v2 idle about 1 in 4 should go to v1 (two random picks \
         both v1); got v1={} v2={} of {N}{}",
        busy.v1,
        busy.v2,
        busy.note()
    );
    Ok(format!(
        "LEAST_CONN: while v1 is busy and v2 idle, v1={} v2={} of {N} (two random picks, fewer active wins: \
         1 in 4 expected; round robin sends half){}",
        busy.v1,
        busy.v2,
        busy.note()
    ))
}

async fn circuit_breaking(mesh: &LocalMesh) -> anyhow::Result<String> {
    // maxConnections 10 and http1MaxPendingRequests 10: with 10 requests in service on 10
    // connections and 10 more queued, every further request is rejected at once. Held
    // requests (/delay/10) fill both limits first, one at a time, each seen in place.
    const EXTRA: usize = 20;
    let path = format!("/delay/{}", HOLD.as_secs());
    let req = mesh.via_client(SERVICE_HOST, &path);
    let mut held: Vec<Pending> = Vec::new();
    let result = async {
        let started = Instant::now();
        for i in 1..=10 {
            held.push(send_held(mesh, &req, &path, |at_apps, _| at_apps >= i).await?);
        }
        // At the connection limit: further requests queue. (Envoy still opens one connection
        // to a host that has none, so one may reach a workload instead.)
        let mut extra_connections = 0;
        while httpbin_stat(mesh, "upstream_rq_pending_active").await? < 10 {
            let before = seen_at_workloads(mesh, &path).await?;
            let queued = httpbin_stat(mesh, "upstream_rq_pending_active").await?;
            held.push(send_held(mesh, &req, &path, |at_apps, pending| at_apps > before || pending > queued).await?);
            if seen_at_workloads(mesh, &path).await? > before {
                extra_connections += 1;
            }
            if extra_connections > 1 {
                let stats = mesh.sidecar_stats("sleep", "httpbin").await?;
                let stats: Vec<String> = stats
                    .iter()
                    .filter(|(k, _)| {
                        k.contains("cx_") || k.contains("pending") || k.contains("circuit") || k.contains("rq_active")
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                anyhow::bail!(
                    "maxConnections 10 not enforced: {} in service; {}",
                    10 + extra_connections,
                    stats.join(" ")
                );
            }
        }
        let in_service = seen_at_workloads(mesh, &path).await?;
        let replies = concurrent(mesh, &path, EXTRA).await?;
        let rejected = replies
            .iter()
            .filter(|(r, _)| r.status == StatusCode::SERVICE_UNAVAILABLE && r.header("x-envoy-overloaded") == "true")
            .count();
        // The limits held throughout only if no held request has been answered yet (none can
        // be before HOLD has passed since the first was sent).
        anyhow::ensure!(
            started.elapsed() < HOLD && held.iter().all(|t| !t.is_finished()),
            "filling the limits and sending {EXTRA} more took over {HOLD:?}, so the held requests may have been \
             answered meanwhile ({rejected} of the {EXTRA} were rejected)"
        );
        let after = seen_at_workloads(mesh, &path).await?;
        anyhow::ensure!(
            rejected == EXTRA && after == in_service,
            "with {in_service} in service and 10 queued, expected all {EXTRA} more rejected with 503 \
             x-envoy-overloaded; {rejected} were, and {} reached a workload",
            after - in_service
        );
        Ok(format!(
            "circuit breaking (10 connections, 10 pending): {in_service} in service, 10 queued, the next {EXTRA} \
             rejected at once with 503 x-envoy-overloaded"
        ))
    }
    .await;
    release(mesh, held).await?;
    result
}

/// Sends a held request and waits until `placed(requests at the workloads, requests queued
/// in the client sidecar)` says it is in place.
async fn send_held(
    mesh: &LocalMesh,
    req: &Req,
    path: &str,
    placed: impl Fn(u64, u64) -> bool,
) -> anyhow::Result<Pending> {
    let task = {
        let (client, req) = (mesh.client().clone(), req.clone());
        tokio::spawn(async move { client.send(&req).await })
    };
    let deadline = Instant::now() + crate::mesh::READY_TIMEOUT;
    loop {
        if task.is_finished() {
            let reply = task.await??;
            anyhow::bail!("a request meant to be held was answered at once: {}", answered_by(&reply));
        }
        if placed(seen_at_workloads(mesh, path).await?, httpbin_stat(mesh, "upstream_rq_pending_active").await?) {
            return Ok(task);
        }
        anyhow::ensure!(Instant::now() < deadline, "a held request was neither served nor queued");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the client sidecar has ejected `workload` from the httpbin cluster.
async fn ejected(mesh: &LocalMesh, workload: &Workload) -> anyhow::Result<bool> {
    let prefix =
        format!("{}::{}:{}::health_flags::", httpbin_cluster(), mesh.ip(workload.host), crate::mesh::SERVICE_PORT);
    let clusters = mesh.sidecar_clusters("sleep").await?;
    Ok(clusters.lines().any(|l| l.starts_with(&prefix) && l.contains("failed_outlier_check")))
}

async fn outlier_detection(mesh: &LocalMesh) -> anyhow::Result<String> {
    // consecutive5xxErrors 1, baseEjectionTime 3m, maxEjectionPercent 100 (and no panic
    // routing): the first 5xx from a host ejects it, and while ejected it gets no requests.
    let (v1, v2) = (&WORKLOADS[0], &WORKLOADS[1]);
    anyhow::ensure!(
        httpbin_stat(mesh, "outlier_detection.ejections_active").await? == 0,
        "a host was ejected before the scenario started"
    );
    mesh.client().post(&mesh.app_url(v2, "/echo/fail/500")).await?;
    // Both hosts idle: each request goes to v2 with probability 1/2; stop at its first 500.
    let req = mesh.via_client(SERVICE_HOST, "/get");
    let mut before = BTreeMap::new();
    for _ in 0..60 {
        let reply = mesh.send(&req).await?;
        *before.entry(answered_by(&reply)).or_default() += 1;
        if reply.header("x-echo-version") == "v2" {
            break;
        }
    }
    anyhow::ensure!(
        before.get("v2 status 500") == Some(&1) && before.keys().all(|k| k == "v1" || k == "v2 status 500"),
        "expected v1 answers until v2's first 500, got {}",
        show(&before)
    );
    // Ejection is decided on Envoy's main thread; wait until it shows.
    let deadline = Instant::now() + crate::mesh::READY_TIMEOUT;
    while !ejected(mesh, v2).await? {
        anyhow::ensure!(Instant::now() < deadline, "v2 not ejected after its 500");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v2_seen = app_total(mesh, v2).await?;
    let after = tally(mesh, "/get", &[], 20).await?;
    let v2_after = app_total(mesh, v2).await? - v2_seen;
    let still = ejected(mesh, v2).await?;
    let v1_ok = app_total(mesh, v1).await?;
    mesh.reset_apps().await?;
    anyhow::ensure!(
        v2_seen == 1 && v2_after == 0 && still,
        "v2 should have seen exactly its one failing request and none while ejected; saw {v2_seen} then {v2_after} \
         (still ejected: {still})"
    );
    only(&after, "v1", 20)?;
    Ok(format!(
        "outlier detection: v2 failing; until its first 500: {}; after ejection: {} of 20, v2 saw none \
         (v1 served {v1_ok} in all)",
        show(&before),
        show(&after)
    ))
}

/// A request for a host the registry does not know, through the client sidecar. In capture
/// mode NONE there is no original destination, so the client names it in
/// `x-envoy-original-dst-host` (the "external" host is a local echo server).
async fn unknown_host(mesh: &LocalMesh) -> anyhow::Result<Reply> {
    unregistered(mesh, "external.example").await
}

/// A request through the client sidecar for `host`, whose original destination is the
/// "external" server: what passes through ALLOW_ANY and is refused by REGISTRY_ONLY.
async fn unregistered(mesh: &LocalMesh, host: &str) -> anyhow::Result<Reply> {
    let target = format!("{}:{}", mesh.ip(crate::mesh::EXTERNAL_HOST), crate::mesh::SERVICE_PORT);
    mesh.send(&mesh.via_client(host, "/get").header("x-envoy-original-dst-host", &target)).await
}

/// Lines of `proxy`'s log (its access log among them) holding every one of `needles`, waiting
/// up to 10 s for there to be at least `wanted`: Envoy writes access logs shortly after each
/// request ends.
async fn logged_lines(mesh: &LocalMesh, proxy: &str, needles: &[&str], wanted: usize) -> usize {
    let count = || mesh.proxy_log(proxy).lines().filter(|l| needles.iter().all(|n| l.contains(n))).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = count();
        if seen >= wanted || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn allow_any(mesh: &LocalMesh) -> anyhow::Result<String> {
    let reply = unknown_host(mesh).await?;
    anyhow::ensure!(
        reply.status == StatusCode::OK && reply.header("x-echo-instance") == "external",
        "ALLOW_ANY: expected the external host to answer, got {} {:?}",
        reply.status,
        reply.header("x-echo-instance")
    );
    Ok("ALLOW_ANY: unknown host external.example passed through (200 from the external server)".into())
}

async fn registry_only(mesh: &LocalMesh) -> anyhow::Result<String> {
    let reply = unknown_host(mesh).await?;
    anyhow::ensure!(
        reply.status == StatusCode::BAD_GATEWAY,
        "REGISTRY_ONLY: expected 502 for an unknown host, got {}",
        reply.status
    );
    let known = tally(mesh, "/get", &[], 5).await?;
    anyhow::ensure!(
        known.keys().all(|k| k == "v1" || k == "v2"),
        "REGISTRY_ONLY must still reach httpbin: {}",
        show(&known)
    );
    Ok(format!("REGISTRY_ONLY: unknown host got 502; httpbin still reached ({})", show(&known)))
}

/// `external.example` (the local "external" server) registered on `port` and reached through
/// the egress gateway: the sidecar sends it to the gateway (`gateways: [mesh]`), the gateway to
/// the host (`gateways: [istio-egressgateway]`), the two-hop pattern of example 19.
fn external_through_egress_yaml(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
  namespace: testns1
spec:
  hosts: [external.example]
  ports: [{{number: {port}, name: http, protocol: HTTP, targetPort: {SERVICE_PORT}}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.EXTERNAL_HOST}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
  namespace: testns1
spec:
  selector:
    istio: egressgateway
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: [external.example]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: external-through-egress
  namespace: testns1
spec:
  hosts: [external.example]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: {port}}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 8080}}}}
  - match: [{{gateways: [istio-egressgateway], port: 8080}}]
    route:
    - destination: {{host: external.example, port: {{number: {port}}}}}
"#
    )
}

/// REGISTRY_ONLY with one external host registered, reached through the egress gateway.
fn egress_gateway_yaml() -> String {
    format!("{REGISTRY_ONLY_YAML}---\n{}", external_through_egress_yaml(SERVICE_PORT))
}

async fn egress_gateway(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 5;
    let cluster = "outbound|8000||external.example";
    let needles = [cluster, "/anything/egress-check"];
    let before = logged_lines(mesh, crate::mesh::EGRESS_NAME, &needles, 0).await;
    for _ in 0..N {
        let reply = mesh.send(&mesh.via_client("external.example", "/anything/egress-check")).await?;
        anyhow::ensure!(
            reply.status == StatusCode::OK && reply.header("x-echo-instance") == "external",
            "external.example through the egress gateway: got {} from {:?}",
            reply.status,
            reply.header("x-echo-instance")
        );
    }
    let seen = logged_lines(mesh, crate::mesh::EGRESS_NAME, &needles, before + N).await - before;
    anyhow::ensure!(seen == N, "the egress gateway's access log shows {seen} of {N} requests to {cluster}");
    let unknown = unregistered(mesh, "unregistered.example").await?;
    anyhow::ensure!(
        unknown.status == StatusCode::BAD_GATEWAY,
        "REGISTRY_ONLY: a host without a ServiceEntry must get 502, got {}",
        unknown.status
    );
    Ok(format!(
        "egress: REGISTRY_ONLY + ServiceEntry external.example → 200 from the external server {N}/{N}, \
         each in the egress gateway's access log ({cluster}); an unregistered host → 502"
    ))
}

/// One request through the whole mesh: it enters at the ingress gateway (`journey.example.com`,
/// to httpbin v1), httpbin v1's app calls `external.example:9080` through its own sidecar, which
/// sends it to the egress gateway, which sends it out to the "external" server.
const JOURNEY_INGRESS_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: journey
  namespace: testns1
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [journey.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: journey-in
  namespace: testns1
spec:
  hosts: [journey.example.com]
  gateways: [journey]
  http:
  - route:
    - destination: {host: httpbin, subset: v1, port: {number: 8000}}
"#;

fn ingress_to_egress_yaml() -> String {
    format!("{JOURNEY_INGRESS_YAML}---\n{HTTPBIN_SUBSETS_YAML}---\n{}", external_through_egress_yaml(9080))
}

/// httpbin's subsets `v1` and `v2` (as `examples/traffic/01-destination-rule-subsets.yaml`),
/// for the built-in configs that route to a subset.
const HTTPBIN_SUBSETS_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
  namespace: testns1
spec:
  host: httpbin
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

async fn ingress_to_egress(mesh: &LocalMesh) -> anyhow::Result<String> {
    let v1 = &WORKLOADS[0];
    let marker = "/anything/through-the-mesh";
    let call = format!("/echo/call?to={}:9080&host=external.example&path={marker}", mesh.ip(v1.host));
    let (gateway, egress) = (crate::mesh::GATEWAY_NAME, crate::mesh::EGRESS_NAME);
    let ingress_before = logged_lines(mesh, gateway, &["journey.example.com"], 0).await;
    let egress_before = logged_lines(mesh, egress, &[marker], 0).await;
    let reply = mesh.send(&mesh.via_gateway("journey.example.com", &call)).await?;
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    anyhow::ensure!(
        reply.status == StatusCode::OK && body["instance"] == "external" && body["path"] == marker,
        "expected the external server's answer for {marker}, got {} {body}",
        reply.status
    );
    anyhow::ensure!(
        reply.header("x-echo-instance") == v1.name,
        "the call went through {:?}",
        reply.header("x-echo-instance")
    );
    let ingress = logged_lines(mesh, gateway, &["journey.example.com"], ingress_before + 1).await > ingress_before;
    let egress = logged_lines(mesh, egress, &[marker], egress_before + 1).await > egress_before;
    anyhow::ensure!(ingress && egress, "access logs: ingress gateway {ingress}, egress gateway {egress}");
    Ok(format!(
        "ingress gateway → {} (its sidecar) → app calls external.example:9080 → its sidecar → egress gateway → external server: 200, seen in both gateways' access logs",
        v1.name
    ))
}

/// The client sidecar scoped to its own namespace: only testns1's services (httpbin), not the
/// gateways' services of istio-system.
const SIDECAR_SCOPE_YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: sleep
  namespace: testns1
spec:
  workloadSelector:
    labels:
      app: sleep
  egress:
  - hosts: ["./*"]
"#;

/// The client sidecar's clusters (Envoy's own `/clusters` listing) and its config dump size.
#[derive(Clone, Debug, Default)]
struct ClientConfig {
    clusters: std::collections::BTreeSet<String>,
    dump_bytes: usize,
}

async fn client_config(mesh: &LocalMesh) -> anyhow::Result<ClientConfig> {
    let listing = mesh.sidecar_clusters("sleep").await?;
    let clusters =
        listing.lines().filter_map(|l| l.split("::").next()).filter(|n| !n.is_empty()).map(str::to_owned).collect();
    let dump = mesh.config_dump("sleep", "?include_eds").await?;
    Ok(ClientConfig { clusters, dump_bytes: dump.to_string().len() })
}

async fn sidecar_scope(mesh: &LocalMesh, before: ClientConfig) -> anyhow::Result<String> {
    let after = client_config(mesh).await?;
    let egress = "outbound|8080||istio-egressgateway.istio-system.svc.cluster.local";
    anyhow::ensure!(
        before.clusters.contains(egress),
        "before scoping the client should see {egress}: {:?}",
        before.clusters
    );
    let outside: Vec<&String> = after.clusters.iter().filter(|c| c.contains(".istio-system.")).collect();
    anyhow::ensure!(outside.is_empty(), "scoped to testns1, the client still holds {outside:?}");
    let httpbin = format!("outbound|8000||{SERVICE_HOST}");
    anyhow::ensure!(after.clusters.contains(&httpbin), "the client lost {httpbin}: {:?}", after.clusters);
    anyhow::ensure!(
        after.dump_bytes < before.dump_bytes,
        "config dump {} → {} bytes",
        before.dump_bytes,
        after.dump_bytes
    );
    let reached = tally(mesh, "/get", &[], 5).await?;
    anyhow::ensure!(
        reached.keys().all(|k| k == "v1" || k == "v2"),
        "httpbin must still be reached: {}",
        show(&reached)
    );
    Ok(format!(
        "Sidecar egress ./*: the client's Envoy holds {} clusters (was {}), none of istio-system; config dump {} → {} bytes; httpbin still reached ({})",
        after.clusters.len(),
        before.clusters.len(),
        before.dump_bytes,
        after.dump_bytes,
        show(&reached)
    ))
}

const MTLS_PERMISSIVE_YAML: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: testns1}
spec: {mtls: {mode: PERMISSIVE}}
"#;

/// The identity the client sidecar's certificate carries.
const CLIENT_IDENTITY: &str = "spiffe://cluster.local/ns/testns1/sa/sleep";

/// PeerAuthentication on httpbin's namespace: the client sidecar reaches httpbin over Istio
/// mTLS (auto mTLS) either way, and httpbin sees the client's SPIFFE id in
/// `x-forwarded-client-cert`; a plaintext client without a sidecar gets through under
/// PERMISSIVE and is refused under STRICT.
async fn mutual_tls(mesh: &LocalMesh, strict: bool) -> anyhow::Result<String> {
    let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/headers")).await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "through the client sidecar: status {}", reply.status);
    let xfcc = reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        xfcc.contains(&format!("URI={CLIENT_IDENTITY}")),
        "httpbin should see the client's identity {CLIENT_IDENTITY} in x-forwarded-client-cert, got {xfcc:?}"
    );
    let v1 = WORKLOADS[0];
    let direct = Req::get(format!("http://{}:{SERVICE_PORT}/headers", mesh.ip(v1.host)), SERVICE_HOST);
    // A client of its own: a pooled connection from an earlier scenario would have been
    // accepted under the mode in force back then.
    let plaintext = crate::http::Client::new().send(&direct).await;
    let outcome = match (&plaintext, strict) {
        (Ok(reply), false) if reply.status == StatusCode::OK => {
            let forged = reply.json()["headers"]["x-forwarded-client-cert"].as_str().map(str::to_owned);
            anyhow::ensure!(forged.is_none(), "a plaintext caller must not appear with a certificate: {forged:?}");
            "a plaintext client without a sidecar gets 200".to_owned()
        }
        (Err(error), true) => format!("a plaintext client without a sidecar is refused ({})", first_line(error)),
        (Ok(reply), _) => anyhow::bail!("plaintext straight to httpbin's sidecar: unexpected status {}", reply.status),
        (Err(error), false) => anyhow::bail!("PERMISSIVE must accept plaintext, but: {error:#}"),
    };
    Ok(format!(
        "PeerAuthentication {}: the client sidecar reaches httpbin over mTLS as {CLIENT_IDENTITY} (x-forwarded-client-cert); {outcome}",
        if strict { "STRICT" } else { "PERMISSIVE" }
    ))
}

/// Example 21: the gateway's ISTIO_MUTUAL server admits a caller with a certificate of the mesh
/// (and proves its own mesh identity); callers without one, or with another CA's, are refused.
/// Its AUTO_PASSTHROUGH server passes a mesh caller's own mTLS through to the service.
async fn ingress_istio_mutual(mesh: &LocalMesh) -> anyhow::Result<String> {
    const HOST: &str = "httpbin.mesh.internal";
    const GATEWAY_IDENTITY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";
    let root = std::fs::read_to_string(mesh.root_cert())?;
    let caller = crate::tls::mesh_certificate(
        &mesh.ca_dir(),
        &rudder_xds::ca::SpiffeId::new("cluster.local", "testns1", "sleep"),
    )?;
    let addr = mesh.gateway_https();
    let get = |client: Option<crate::tls::CertPair>| {
        let root = root.clone();
        async move { crate::tls::mesh_https_get(addr, HOST, HOST, "/get", &root, client.as_ref(), GATEWAY_IDENTITY).await }
    };
    let mut versions = BTreeMap::new();
    for _ in 0..4 {
        let reply = get(Some(caller.clone())).await?;
        anyhow::ensure!(reply.status == 200, "a mesh caller got status {}: {}", reply.status, reply.body);
        let version = reply.headers.get("x-echo-version").cloned().unwrap_or_default();
        *versions.entry(version).or_insert(0usize) += 1;
    }
    let without = get(None).await;
    anyhow::ensure!(without.is_err(), "a caller without a certificate got {:?}", without.map(|r| r.status));
    let stranger = crate::tls::TestCa::new("not the mesh")?.client("stranger")?;
    let foreign = get(Some(stranger)).await;
    anyhow::ensure!(foreign.is_err(), "a caller with another CA's certificate got {:?}", foreign.map(|r| r.status));

    // AUTO_PASSTHROUGH on 15443: the caller's own mTLS, by SNI, straight to httpbin's sidecar.
    let edge = std::net::SocketAddr::new(addr.ip(), 15443);
    let sni = format!("outbound_.8000_._.{SERVICE_HOST}");
    let httpbin = "spiffe://cluster.local/ns/testns1/sa/httpbin";
    let through =
        crate::tls::mesh_https_get(edge, &sni, SERVICE_HOST, "/headers", &root, Some(&caller), httpbin).await?;
    anyhow::ensure!(through.status == 200, "AUTO_PASSTHROUGH: status {}: {}", through.status, through.body);
    anyhow::ensure!(
        through.body.contains("URI=spiffe://cluster.local/ns/testns1/sa/sleep"),
        "httpbin saw the caller's own certificate through the gateway: {}",
        through.body
    );
    Ok(format!(
        "gateway ISTIO_MUTUAL: a caller with a mesh certificate reaches httpbin ({}), the gateway proving {GATEWAY_IDENTITY}; no certificate or another CA's → refused. AUTO_PASSTHROUGH 15443: the caller's mTLS (SNI {sni}) passed through to httpbin, which saw the caller's identity",
        show(&versions)
    ))
}

/// Status of `method path` from the client sidecar to httpbin, with extra headers.
async fn status_via_client(
    mesh: &LocalMesh,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<u16> {
    let mut req = mesh.via_client(SERVICE_HOST, path).method(method);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    Ok(mesh.send(&req).await?.status.as_u16())
}

/// Example 22: httpbin admits GETs of a few paths from sleep's identity only, and denies
/// /status/418 to everyone (DENY is evaluated before ALLOW).
async fn authorization(mesh: &LocalMesh) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    for (method, path, want) in [
        (Method::GET, "/get", 200),
        (Method::GET, "/status/200", 200),
        (Method::POST, "/post", 403),
        (Method::GET, "/delay/0", 403),
        (Method::GET, "/status/418", 403),
        // Denied only by the dry-run policy: allowed, and counted as a shadow denial.
        (Method::GET, "/headers", 200),
    ] {
        let got = status_via_client(mesh, method.clone(), path, &[]).await?;
        anyhow::ensure!(got == want, "sleep {method} {path}: want {want}, got {got}");
        seen.push(format!("{method} {path} {got}"));
    }
    let mut shadow_denied = 0;
    for workload in WORKLOADS {
        let stats = mesh.sidecar_stats(workload.name, "istio_dry_run_deny_.shadow_denied").await?;
        shadow_denied += stats.values().sum::<u64>();
    }
    anyhow::ensure!(shadow_denied >= 1, "the dry-run DENY of /headers was not counted by httpbin's sidecars");
    // Straight to httpbin's sidecar over mTLS, as two identities.
    let root = std::fs::read_to_string(mesh.root_cert())?;
    let v1 = WORKLOADS[0];
    let addr = std::net::SocketAddr::new(mesh.ip(v1.host).into(), SERVICE_PORT);
    let as_identity = |account: &'static str| {
        let root = root.clone();
        let ca_dir = mesh.ca_dir();
        async move {
            let id = rudder_xds::ca::SpiffeId::new("cluster.local", "testns1", account);
            let cert = crate::tls::mesh_certificate(&ca_dir, &id)?;
            let server = "spiffe://cluster.local/ns/testns1/sa/httpbin";
            crate::tls::mesh_https_get(addr, SERVICE_HOST, SERVICE_HOST, "/get", &root, Some(&cert), server).await
        }
    };
    let sleep = as_identity("sleep").await?;
    anyhow::ensure!(sleep.status == 200, "as sleep, straight to httpbin: {}", sleep.status);
    let other = as_identity("other").await?;
    anyhow::ensure!(other.status == 403, "as testns1/other, straight to httpbin: {} (want 403)", other.status);
    Ok(format!(
        "AuthorizationPolicy: sleep {}; the dry-run DENY of /headers counted {shadow_denied} shadow denial(s), enforced none; as testns1/other GET /get → 403, as sleep → 200",
        seen.join(", ")
    ))
}

const JWT_ISSUER: &str = "testing@rudder.local";

/// Where example 03's jwksUri points (`127.0.0.60:8080/jwks.json`, relocated to the mesh's block).
const JWKS_HOST: u8 = 60;
const JWKS_PORT: u16 = 8080;

/// Example 03: RequestAuthentication with keys discovery fetched from the issuer's jwksUri, and
/// a policy asking for its tokens: a valid token
/// is admitted (and its payload forwarded), none is 403, an expired or foreign one is 401; a
/// claim condition admits the admins only.
async fn jwt_authentication(mesh: &LocalMesh, issuer: &crate::jwt::JwtIssuer) -> anyhow::Result<String> {
    let now = crate::jwt::now();
    let claims = |sub: &str, groups: &[&str], exp: u64| serde_json::json!({"iss": JWT_ISSUER, "sub": sub, "groups": groups, "iat": now.saturating_sub(60), "exp": exp});
    let valid = issuer.token(&claims("alice", &["users"], now + 3600))?;
    let admin = issuer.token(&claims("root", &["admins"], now + 3600))?;
    let expired = issuer.token(&claims("alice", &["users"], now.saturating_sub(600)))?;
    let foreign = crate::jwt::JwtIssuer::new("e2e")?.token(&claims("mallory", &["admins"], now + 3600))?;
    let bearer = |token: &str| format!("Bearer {token}");

    let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/headers").header("authorization", &bearer(&valid))).await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "a valid token: status {}", reply.status);
    let payload = reply.json()["headers"]["x-jwt-payload"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        !payload.is_empty(),
        "outputPayloadToHeader: no x-jwt-payload at httpbin: {}",
        reply.json()["headers"]
    );
    let cases = [
        ("no token", "/headers", None, 403),
        ("an expired token", "/headers", Some(&expired), 401),
        ("a token of another key", "/headers", Some(&foreign), 401),
        ("a user on /status/200", "/status/200", Some(&valid), 403),
        ("an admin on /status/200", "/status/200", Some(&admin), 200),
    ];
    let mut seen = vec!["a valid token → 200 (payload forwarded)".to_owned()];
    for (what, path, token, want) in cases {
        let header = token.map(|t| bearer(t));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        let got = status_via_client(mesh, Method::GET, path, &headers).await?;
        anyhow::ensure!(got == want, "{what}: want {want}, got {got}");
        seen.push(format!("{what} → {got}"));
    }
    Ok(format!(
        "RequestAuthentication (keys fetched by discovery from jwksUri) + requestPrincipals: {}",
        seen.join("; ")
    ))
}

fn first_line(error: &anyhow::Error) -> String {
    format!("{error:#}").lines().next().unwrap_or_default().chars().take(120).collect()
}

/// Example 15 through the ingress gateway: `httpbin.example.com` `/status` and `/delay` reach
/// httpbin through its sidecar; other paths and hosts are not routed (404 from the gateway).
async fn ingress_gateway(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 10;
    let mut counts = BTreeMap::new();
    for _ in 0..N {
        let reply = mesh.send(&mesh.via_gateway(INGRESS_HOST, "/status/200")).await?;
        *counts.entry(answered_by(&reply)).or_default() += 1;
    }
    let routed: usize = ["v1", "v2"].iter().map(|v| counts.get(*v).copied().unwrap_or(0)).sum();
    anyhow::ensure!(routed == N, "expected every /status/200 to reach httpbin, got {}", show(&counts));
    let seen = seen_at_workloads(mesh, "/status/200").await?;
    anyhow::ensure!(seen == N as u64, "httpbin saw {seen} of {N} requests");
    let unrouted = mesh.send(&mesh.via_gateway(INGRESS_HOST, "/get")).await?;
    anyhow::ensure!(unrouted.status == StatusCode::NOT_FOUND, "/get: expected 404, got {}", unrouted.status);
    let other_host = mesh.send(&mesh.via_gateway("other.example.com", "/status/200")).await?;
    anyhow::ensure!(other_host.status == StatusCode::NOT_FOUND, "other host: expected 404, got {}", other_host.status);
    Ok(format!(
        "ingress: Host {INGRESS_HOST} /status/200 → {} of {N} through the gateway; /get → 404; Host other.example.com → 404",
        show(&counts)
    ))
}

const INGRESS_HOST: &str = "httpbin.example.com";
const MTLS_HOST: &str = "mtls.example.com";
const PASSTHROUGH_HOST: &str = "backend.example.com";
/// The passthrough backend: a TLS server of its own at `127.0.<block>.61:9443`.
const BACKEND_HOST: u8 = 61;
const BACKEND_PORT: u16 = 9443;

/// The TLS scenario's fixture: a CA, the gateway's certificates (as Secrets), a client
/// certificate, and a backend terminating its own TLS.
struct IngressTls {
    ca: crate::tls::TestCa,
    gateway_cert: crate::tls::CertPair,
    client: crate::tls::CertPair,
    backend: crate::tls::TlsBackend,
}

impl IngressTls {
    async fn new(mesh: &LocalMesh) -> anyhow::Result<Self> {
        let ca = crate::tls::TestCa::new("rudder e2e CA")?;
        let gateway_cert = ca.server(&[INGRESS_HOST, MTLS_HOST])?;
        let client = ca.client("e2e-client")?;
        let backend_cert = ca.server(&[PASSTHROUGH_HOST])?;
        let addr = std::net::SocketAddr::new(mesh.ip(BACKEND_HOST).into(), BACKEND_PORT);
        let backend = crate::tls::TlsBackend::start(addr, "tls-backend", &backend_cert).await?;
        Ok(Self { ca, gateway_cert, client, backend })
    }

    /// SIMPLE for httpbin.example.com (to v1), MUTUAL for mtls.example.com (same Secret, its
    /// `ca.crt` the client CA), PASSTHROUGH for backend.example.com, all on port 443, and an
    /// HTTPS redirect on port 80.
    fn yaml(&self) -> String {
        let secret = crate::tls::secret_yaml(
            "httpbin-credential",
            "istio-system",
            &[
                ("tls.crt", &self.gateway_cert.cert_pem),
                ("tls.key", &self.gateway_cert.key_pem),
                ("ca.crt", &self.ca.cert_pem),
            ],
        );
        format!(
            r#"{secret}apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: secure-gateway
  namespace: testns1
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{INGRESS_HOST}]
    tls: {{mode: SIMPLE, credentialName: httpbin-credential}}
  - port: {{number: 443, name: https-mutual, protocol: HTTPS}}
    hosts: [{MTLS_HOST}]
    tls: {{mode: MUTUAL, credentialName: httpbin-credential}}
  - port: {{number: 443, name: tls-passthrough, protocol: TLS}}
    hosts: [{PASSTHROUGH_HOST}]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{INGRESS_HOST}]
    tls: {{httpsRedirect: true}}
---
{HTTPBIN_SUBSETS_YAML}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: testns1
spec:
  hosts: [{INGRESS_HOST}, {MTLS_HOST}]
  gateways: [secure-gateway]
  http:
  - route:
    - destination: {{host: httpbin, subset: v1, port: {{number: 8000}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: tls-backend
  namespace: testns1
spec:
  hosts: [tls-backend.testns1.svc.cluster.local]
  ports: [{{number: {BACKEND_PORT}, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.{BACKEND_HOST}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tls-backend
  namespace: testns1
spec:
  hosts: [{PASSTHROUGH_HOST}]
  gateways: [secure-gateway]
  tls:
  - match: [{{port: 443, sniHosts: [{PASSTHROUGH_HOST}]}}]
    route:
    - destination: {{host: tls-backend, port: {{number: {BACKEND_PORT}}}}}
"#
        )
    }
}

async fn ingress_tls(mesh: &LocalMesh, tls: &IngressTls) -> anyhow::Result<String> {
    use crate::tls::https_get;
    let gateway = mesh.gateway_https();
    const N: usize = 5;
    let mut versions = BTreeMap::new();
    for _ in 0..N {
        let reply = https_get(gateway, INGRESS_HOST, "/get", &tls.ca.cert_pem, None).await?;
        let version =
            reply.headers.get("x-echo-version").cloned().unwrap_or_else(|| format!("status {}", reply.status));
        *versions.entry(version).or_default() += 1;
    }
    only(&versions, "v1", N)?;

    let without_cert = https_get(gateway, MTLS_HOST, "/get", &tls.ca.cert_pem, None).await;
    anyhow::ensure!(
        without_cert.as_ref().map_or(true, |r| r.status >= 400),
        "MUTUAL: a client without a certificate got {:?}",
        without_cert.map(|r| r.status)
    );
    let with_cert = https_get(gateway, MTLS_HOST, "/get", &tls.ca.cert_pem, Some(&tls.client)).await?;
    anyhow::ensure!(
        with_cert.status == 200 && with_cert.headers.get("x-echo-version").map(String::as_str) == Some("v1"),
        "MUTUAL with a client certificate: {} {:?}",
        with_cert.status,
        with_cert.headers
    );

    let passthrough = https_get(gateway, PASSTHROUGH_HOST, "/", &tls.ca.cert_pem, None).await?;
    anyhow::ensure!(
        passthrough.status == 200 && passthrough.body == "tls-backend",
        "PASSTHROUGH: expected the backend's own reply, got {} {:?}",
        passthrough.status,
        passthrough.body
    );
    anyhow::ensure!(tls.backend.addr.port() == BACKEND_PORT);

    let redirect = mesh.send(&mesh.via_gateway(INGRESS_HOST, "/get")).await?;
    anyhow::ensure!(
        redirect.status == StatusCode::MOVED_PERMANENTLY && redirect.header("location").starts_with("https://"),
        "port 80: expected a redirect to HTTPS, got {} {:?}",
        redirect.status,
        redirect.header("location")
    );
    Ok(format!(
        "ingress TLS: SIMPLE {INGRESS_HOST} → {} of {N}; MUTUAL {MTLS_HOST} refused without a client certificate, v1 with one; \
         PASSTHROUGH {PASSTHROUGH_HOST} → the backend's own TLS; port 80 → 301 to https",
        show(&versions)
    ))
}

/// The zipkin collector of `examples/local/mesh.yaml`'s `zipkin-local` provider.
const ZIPKIN_HOST: u8 = 61;
const ZIPKIN_PORT: u16 = 9411;

/// A fresh request id per request, unique across runs of the scenario.
fn request_id(prefix: &str, n: usize) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{n}-{nanos}")
}

/// `examples/telemetry/01`: sleep logs JSON, httpbin v1 logs nothing, v2 keeps the mesh's
/// text log. One line per request on each side that logs, with the request id, response code
/// and upstream cluster.
async fn access_logging(mesh: &LocalMesh) -> anyhow::Result<String> {
    const N: usize = 12;
    let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..N {
        let id = request_id("al", n);
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get").header("x-request-id", &id)).await?;
        anyhow::ensure!(reply.status == StatusCode::OK, "request {id}: {}", reply.status);
        served.entry(reply.header("x-echo-version").to_owned()).or_default().push(id);
    }
    let ids: Vec<&String> = served.values().flatten().collect();
    // Client side: JSON, one line per request.
    let outbound = format!("outbound|{SERVICE_PORT}||{SERVICE_HOST}");
    for id in &ids {
        let lines = logged_json(mesh, "sleep", id, 1).await;
        anyhow::ensure!(lines.len() == 1, "sleep's JSON access log has {} lines for {id}", lines.len());
        let line = &lines[0];
        anyhow::ensure!(
            line["response_code"] == 200 && line["upstream_cluster"] == outbound.as_str() && line["method"] == "GET",
            "sleep's log line for {id}: {line}"
        );
    }
    // Server side: text on v2, nothing on v1.
    for id in served.get("v2").into_iter().flatten() {
        let seen = logged_lines(mesh, "httpbin-v2", &[id, "\"GET /get HTTP/1.1\" 200", "inbound|"], 1).await;
        anyhow::ensure!(seen == 1, "httpbin-v2's text log has {seen} lines for {id}");
    }
    let v1 = served.get("v1").cloned().unwrap_or_default();
    anyhow::ensure!(
        !v1.is_empty() && served.get("v2").is_some_and(|v| !v.is_empty()),
        "both versions must serve: {served:?}"
    );
    // v1 served its share (its metrics count them) yet wrote no line: give its file log the
    // flush interval the others had.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v1_log = mesh.proxy_log("httpbin-v1");
    let logged: Vec<&String> = v1.iter().filter(|id| v1_log.contains(id.as_str())).collect();
    anyhow::ensure!(logged.is_empty(), "httpbin-v1 logged {logged:?} although its Telemetry turns logging off");
    Ok(format!(
        "Telemetry access logging: {N} requests, sleep logged each once as JSON (code, id, {outbound}), v2 logged its {} as text, v1 logged none of its {}",
        served.get("v2").map_or(0, Vec::len),
        v1.len()
    ))
}

/// Lines of `proxy`'s log that parse as JSON and carry `request_id`, waiting up to 10 s for
/// `wanted` of them.
async fn logged_json(mesh: &LocalMesh, proxy: &str, request_id: &str, wanted: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = mesh
            .proxy_log(proxy)
            .lines()
            .filter(|l| l.contains(request_id))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["request_id"] == request_id)
            .collect();
        if lines.len() >= wanted || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Prometheus sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Samples of Prometheus text (label values unescaped).
fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(rudder_xds::agent::metrics::parse_sample)
        .map(|(name, labels, value)| (name.to_owned(), labels.into_iter().collect(), value))
        .collect()
}

/// The sum of the `name` series whose labels include every one of `wanted`.
fn total(samples: &[Sample], name: &str, wanted: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name && wanted.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn agent_metrics(mesh: &LocalMesh, proxy: &str) -> anyhow::Result<Vec<Sample>> {
    let url = mesh.agent_metrics_url(proxy);
    let reply = mesh.send(&Req::get(&url, "")).await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "GET {url}: {}", reply.status);
    Ok(parse_samples(&String::from_utf8_lossy(&reply.body)))
}

/// `examples/traffic/06` (500 by fault for `client-id: gogo123`, the rest to v1): after 7
/// plain requests and 3 aborted ones, sleep's agent counts exactly 7 × 200 and 3 × 500 (flag
/// FI) to httpbin, and httpbin v1's counts 7 × 200 from sleep over mTLS; both with Istio's
/// labels, from Envoy's stats.
async fn mesh_metrics(mesh: &LocalMesh) -> anyhow::Result<String> {
    const OK: usize = 7;
    const ABORTED: usize = 3;
    let client_ok = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("source_workload_namespace", "testns1"),
        ("source_principal", "spiffe://cluster.local/ns/testns1/sa/sleep"),
        ("destination_service", SERVICE_HOST),
        ("destination_service_name", "httpbin"),
        ("destination_workload", "httpbin-v1"),
        ("destination_version", "v1"),
        ("destination_principal", "spiffe://cluster.local/ns/testns1/sa/httpbin"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let client_fault = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("destination_service", SERVICE_HOST),
        ("response_code", "500"),
        ("response_flags", "FI"),
    ];
    let server_ok = [
        ("reporter", "destination"),
        ("source_workload", "sleep"),
        ("source_workload_namespace", "testns1"),
        ("source_principal", "spiffe://cluster.local/ns/testns1/sa/sleep"),
        ("destination_workload", "httpbin-v1"),
        ("destination_app", "httpbin"),
        ("destination_service", SERVICE_HOST),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    let server_errors = [("reporter", "destination"), ("response_code", "500")];
    let requests = "istio_requests_total";
    let durations = "istio_request_duration_milliseconds_count";
    let client_before = agent_metrics(mesh, "sleep").await?;
    let server_before = agent_metrics(mesh, "httpbin-v1").await?;
    for _ in 0..OK {
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get")).await?;
        anyhow::ensure!(reply.status == StatusCode::OK, "plain request: {}", reply.status);
    }
    for _ in 0..ABORTED {
        let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/get").header("client-id", "gogo123")).await?;
        anyhow::ensure!(reply.status == StatusCode::INTERNAL_SERVER_ERROR, "aborted request: {}", reply.status);
    }
    // Counters move with each request; histograms at Envoy's next stats flush (5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (client, server) = loop {
        let client = agent_metrics(mesh, "sleep").await?;
        let server = agent_metrics(mesh, "httpbin-v1").await?;
        let delta = |after: &[Sample], before: &[Sample], name: &str, wanted: &[(&str, &str)]| {
            total(after, name, wanted) - total(before, name, wanted)
        };
        let got = [
            delta(&client, &client_before, requests, &client_ok),
            delta(&client, &client_before, requests, &client_fault),
            delta(&server, &server_before, requests, &server_ok),
            delta(&server, &server_before, requests, &server_errors),
            delta(&client, &client_before, durations, &[("reporter", "source")]),
            delta(&server, &server_before, durations, &[("reporter", "destination")]),
        ];
        let want = [OK, ABORTED, OK, 0, OK + ABORTED, OK].map(|n| n as f64);
        if got == want {
            break (client, server);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "expected deltas [client 200, client 500 FI, server 200 from sleep, server 500, client durations, server durations] = {want:?}, got {got:?}\nsleep:\n{}\nhttpbin-v1:\n{}",
                show_series(&client, requests),
                show_series(&server, requests)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let native = client.iter().any(|(n, _, _)| n.starts_with("envoy_cluster_"));
    anyhow::ensure!(native, "the agent's endpoint also carries Envoy's own stats");
    anyhow::ensure!(!server.iter().any(|(n, _, _)| n.starts_with("envoy_istio_")), "raw mesh stats leak through");
    Ok(format!(
        "mesh metrics on :15020: sleep counted {OK} × 200 to httpbin-v1 and {ABORTED} × 500 (FI), httpbin-v1 counted {OK} × 200 from sleep over mutual_tls, durations for all"
    ))
}

fn show_series(samples: &[Sample], name: &str) -> String {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, labels, v)| format!("  {labels:?} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `examples/telemetry/02`: every request traced; one request through sleep and httpbin
/// gives a client span (sleep) and a server span (httpbin) of one trace at the collector, with
/// the example's custom tags; the app sees B3 and W3C context.
async fn tracing_spans(mesh: &LocalMesh, collector: &crate::zipkin::ZipkinCollector) -> anyhow::Result<String> {
    // No x-request-id of ours: a sidecar keeps a caller's id, and Envoy reads the sampling
    // decision from the UUID it makes.
    let reply = mesh.send(&mesh.via_client(SERVICE_HOST, "/headers").header("x-user", "jason")).await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "traced request: {}", reply.status);
    let seen: serde_json::Value = serde_json::from_slice(&reply.body)?;
    let app_header = |name: &str| seen["headers"][name].as_str().unwrap_or_default().to_owned();
    let id = app_header("x-request-id");
    let trace_id = app_header("x-b3-traceid");
    anyhow::ensure!(!trace_id.is_empty(), "the app got no x-b3-traceid: {seen}");
    anyhow::ensure!(app_header("traceparent").contains(&trace_id), "traceparent carries the trace: {seen}");
    // Envoy's tracer reports in batches on its flush interval (1 s by default).
    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans: Vec<serde_json::Value> =
            collector.spans().into_iter().filter(|s| s["traceId"] == trace_id.as_str()).collect();
        let kinds: Vec<&str> = spans.iter().filter_map(|s| s["kind"].as_str()).collect();
        if kinds.contains(&"CLIENT") && kinds.contains(&"SERVER") {
            break spans;
        }
        if Instant::now() > deadline {
            anyhow::bail!("spans of trace {trace_id}: {spans:?} (all: {})", collector.spans().len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let client = spans.iter().find(|s| s["kind"] == "CLIENT").cloned().unwrap_or_default();
    let server = spans.iter().find(|s| s["kind"] == "SERVER").cloned().unwrap_or_default();
    anyhow::ensure!(client["tags"]["mesh"] == "rudder-local", "custom literal tag: {client}");
    anyhow::ensure!(client["tags"]["user"] == "jason", "custom header tag: {client}");
    anyhow::ensure!(client["tags"]["guid:x-request-id"] == id.as_str(), "request id on the span: {client}");
    let service = |s: &serde_json::Value| s["localEndpoint"]["serviceName"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(service(&client) != service(&server), "client and server spans come from two proxies: {spans:?}");
    Ok(format!(
        "tracing: one request gave a client span ({}) and a server span ({}) of trace {trace_id} at the zipkin collector, custom tags set, B3 and traceparent seen by the app",
        service(&client),
        service(&server)
    ))
}
