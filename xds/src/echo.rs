//! `rudder echo`: the test/demo workload that the discovery e2e tests and the local demo run
//! behind Envoy.
//!
//! A small httpbin-like server over HTTP/1.1 and cleartext h2 (prior knowledge) that answers
//! with its instance name, its version and the request it saw, so a test can tell which
//! subset served a request. Every response carries `x-echo-instance` and `x-echo-version`.
//!
//! Endpoints:
//! - `/` and `/get`: the request as JSON (method, path, query, headers, host, remote address,
//!   protocol) plus instance and version;
//! - `/headers`: `{"headers": {...}}`;
//! - `/status/<code>`: answers with that status (200–599; anything else is a 400);
//! - `/delay/<seconds>`: waits (fractions allowed, at most [`MAX_DELAY`]; a longer or invalid
//!   delay is a 400 rather than being capped, so a mistaken test fails fast), then answers like
//!   `/get`;
//! - `/anything[/...]`: any method; like `/get` plus the request body's length;
//! - `GET /echo/stats`: requests counted per path, per method and per `Host` since start or the
//!   last reset (the `/echo/` paths themselves are not counted), so tests can count retries and
//!   mirrored copies seen at the workload;
//! - `POST /echo/fail/<code>`: from now on every other request is answered with `<code>` (a
//!   failing instance, for outlier detection);
//! - `POST /echo/latency/<seconds>`: from now on every other request waits that long first (a
//!   slow instance, for load-balancing tests);
//! - `POST /echo/reset`: clears the counts, the failure mode and the added latency;
//! - `GET /echo/call?to=<host:port>&host=<Host>&path=<path>`: the workload itself sends
//!   `GET <path>` (default `/get`) with `Host: <host>` to `<host:port>` and answers with the
//!   reply's status and body: an application's outbound call, so a test can follow one request
//!   through an ingress gateway, this workload's sidecar and out again.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The longest delay `/delay/<seconds>` accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Largest request body `/anything` reads.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long open connections may finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Response header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-echo-instance";
/// Response header naming the version that answered.
pub const VERSION_HEADER: &str = "x-echo-version";

/// Errors of the echo server.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Who this workload says it is.
#[derive(Clone, Debug)]
pub struct EchoIdentity {
    /// Instance name (e.g. the pod or host name).
    pub instance: String,
    /// Version label (e.g. `v1`).
    pub version: String,
}

#[derive(Debug)]
struct EchoState {
    identity: EchoIdentity,
    instance_header: HeaderValue,
    version_header: HeaderValue,
    counts: Mutex<Counts>,
    /// Status every request gets while failing (`/echo/fail/<code>`); 0 = healthy.
    failing: std::sync::atomic::AtomicU16,
    /// Latency added to every request (`/echo/latency/<seconds>`), in milliseconds.
    latency_ms: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Counts {
    paths: BTreeMap<String, u64>,
    methods: BTreeMap<String, u64>,
    hosts: BTreeMap<String, u64>,
}

/// The peer address of a connection, put in each request's extensions by [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

/// Binds the listening socket (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, EchoError> {
    TcpListener::bind(addr).await.map_err(|source| EchoError::Bind { addr, source })
}

/// The echo application.
pub fn router(identity: EchoIdentity) -> Router {
    let state = Arc::new(EchoState {
        instance_header: header_value(&identity.instance),
        version_header: header_value(&identity.version),
        identity,
        counts: Mutex::new(Counts::default()),
        failing: std::sync::atomic::AtomicU16::new(0),
        latency_ms: std::sync::atomic::AtomicU64::new(0),
    });
    Router::new()
        .route("/", get(echo_get))
        .route("/get", get(echo_get))
        .route("/headers", get(headers))
        .route("/status/{code}", any(status))
        .route("/delay/{seconds}", any(delay))
        .route("/anything", any(anything))
        .route("/anything/{*rest}", any(anything))
        .route("/echo/stats", get(stats))
        .route("/echo/reset", post(reset))
        .route("/echo/fail/{code}", post(fail))
        .route("/echo/latency/{seconds}", post(latency))
        .route("/echo/call", get(call))
        .layer(middleware::from_fn_with_state(state.clone(), count_and_tag))
        .with_state(state)
}

/// Serves `app` on `listener` over HTTP/1.1 and h2 (prior knowledge) until `shutdown`
/// completes, then lets open connections finish (up to a drain timeout).
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone().layer(Extension(RemoteAddr(peer)));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(app));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("echo connections still open after {DRAIN_TIMEOUT:?}; closing");
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Counts the request by path (except `/echo/...`) and tags the response with who answered.
async fn count_and_tag(State(state): State<Arc<EchoState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let counted = !path.starts_with("/echo/");
    if counted {
        let host = req
            .headers()
            .get(axum::http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let mut counts = state.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.paths.entry(path.to_owned()).or_default() += 1;
        *counts.methods.entry(req.method().as_str().to_owned()).or_default() += 1;
        *counts.hosts.entry(host).or_default() += 1;
    }
    let latency = state.latency_ms.load(std::sync::atomic::Ordering::Relaxed);
    if counted && latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let failing = state.failing.load(std::sync::atomic::Ordering::Relaxed);
    let mut response = match StatusCode::from_u16(failing) {
        Ok(code) if counted => (code, format!("{} is failing on purpose\n", state.identity.instance)).into_response(),
        _ => next.run(req).await,
    };
    let headers = response.headers_mut();
    headers.insert(INSTANCE_HEADER, state.instance_header.clone());
    headers.insert(VERSION_HEADER, state.version_header.clone());
    response
}

fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// The request as JSON, with who answered it.
fn describe(state: &EchoState, req: &Request) -> serde_json::Map<String, Value> {
    let uri = req.uri();
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| uri.authority().map(ToString::to_string))
        .unwrap_or_default();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect();
    let remote = req.extensions().get::<RemoteAddr>().map(|r| r.0.to_string()).unwrap_or_default();
    let mut map = serde_json::Map::new();
    map.insert("instance".into(), json!(state.identity.instance));
    map.insert("version".into(), json!(state.identity.version));
    map.insert("method".into(), json!(req.method().as_str()));
    map.insert("path".into(), json!(uri.path()));
    map.insert("query".into(), json!(query));
    map.insert("rawQuery".into(), json!(uri.query().unwrap_or_default()));
    map.insert("host".into(), json!(host));
    map.insert("remoteAddr".into(), json!(remote));
    map.insert("protocol".into(), json!(format!("{:?}", req.version())));
    map.insert("headers".into(), json!(headers_json(req.headers())));
    map
}

fn error(state: &EchoState, status: StatusCode, message: String) -> Response {
    let body = json!({
        "instance": state.identity.instance,
        "version": state.identity.version,
        "error": message,
    });
    (status, Json(body)).into_response()
}

async fn echo_get(State(state): State<Arc<EchoState>>, req: Request) -> Json<Value> {
    Json(Value::Object(describe(&state, &req)))
}

async fn headers(req: Request) -> Json<Value> {
    Json(json!({ "headers": headers_json(req.headers()) }))
}

async fn status(State(state): State<Arc<EchoState>>, Path(code): Path<String>) -> Response {
    let parsed = code.parse::<u16>().ok().filter(|c| (200..=599).contains(c));
    let Some(status) = parsed.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return error(&state, StatusCode::BAD_REQUEST, format!("status {code:?} must be a number from 200 to 599"));
    };
    let body = json!({
        "instance": state.identity.instance,
        "version": state.identity.version,
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

async fn delay(State(state): State<Arc<EchoState>>, Path(seconds): Path<String>, req: Request) -> Response {
    let wait = seconds.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_DELAY.as_secs_f64());
    let Some(wait) = wait else {
        return error(
            &state,
            StatusCode::BAD_REQUEST,
            format!("delay {seconds:?} must be a number of seconds from 0 to {}", MAX_DELAY.as_secs()),
        );
    };
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let mut body = describe(&state, &req);
    body.insert("delay".into(), json!(wait));
    Json(Value::Object(body)).into_response()
}

async fn anything(State(state): State<Arc<EchoState>>, req: Request) -> Response {
    let mut body = describe(&state, &req);
    let bytes: Bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => return error(&state, StatusCode::PAYLOAD_TOO_LARGE, format!("reading the body: {e}")),
    };
    body.insert("bodyLength".into(), json!(bytes.len()));
    Json(Value::Object(body)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct CallParams {
    to: String,
    host: Option<String>,
    path: Option<String>,
}

/// How long an outbound call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn call(State(state): State<Arc<EchoState>>, Query(params): Query<CallParams>) -> Response {
    let path = params.path.unwrap_or_else(|| "/get".into());
    let host = params.host.unwrap_or_else(|| params.to.clone());
    match crate::agent::supervise::request_with_host(&params.to, &host, "GET", &path, CALL_TIMEOUT).await {
        Ok(reply) => {
            let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [(axum::http::header::CONTENT_TYPE, "application/json")], reply.body).into_response()
        }
        Err(e) => error(&state, StatusCode::BAD_GATEWAY, format!("calling {} as {host}: {e}", params.to)),
    }
}

async fn stats(State(state): State<Arc<EchoState>>) -> Json<Value> {
    let counts = state.counts.lock().unwrap_or_else(PoisonError::into_inner);
    let total: u64 = counts.paths.values().sum();
    Json(json!({
        "instance": state.identity.instance,
        "version": state.identity.version,
        "total": total,
        "paths": counts.paths,
        "methods": counts.methods,
        "hosts": counts.hosts,
        "failing": state.failing.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

async fn reset(State(state): State<Arc<EchoState>>) -> Json<Value> {
    *state.counts.lock().unwrap_or_else(PoisonError::into_inner) = Counts::default();
    state.failing.store(0, std::sync::atomic::Ordering::Relaxed);
    state.latency_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    Json(json!({ "reset": true }))
}

async fn fail(State(state): State<Arc<EchoState>>, Path(code): Path<String>) -> Response {
    match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
        Some(c) => {
            state.failing.store(c, std::sync::atomic::Ordering::Relaxed);
            Json(json!({ "failing": c })).into_response()
        }
        None => error(&state, StatusCode::BAD_REQUEST, format!("status {code:?} must be a number from 200 to 599")),
    }
}

async fn latency(State(state): State<Arc<EchoState>>, Path(seconds): Path<String>) -> Response {
    match seconds.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_DELAY.as_secs_f64()) {
        Some(s) => {
            let ms = (s * 1000.0).round() as u64;
            state.latency_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
            Json(json!({ "latencyMs": ms })).into_response()
        }
        None => error(
            &state,
            StatusCode::BAD_REQUEST,
            format!("latency {seconds:?} must be 0 to {} seconds", MAX_DELAY.as_secs()),
        ),
    }
}
