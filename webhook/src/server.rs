//! The HTTPS admission server: rustls (ring provider, ALPN h2 and http/1.1) in front of an axum
//! router served by hyper-util's auto builder, with graceful shutdown.
//!
//! Routes: `POST /inject`, `POST /inject/*` and `POST /validate` ([`crate::admission`]),
//! `GET /ready`. The injection context (injector `config` and `values`, mesh config) is read
//! from files and reloaded when their modification times change ([`Sources`],
//! [`spawn_reloader`]); a reload that fails keeps the last good context. The parsers
//! ([`parse_inject_config`], [`parse_inject_values`], [`parse_mesh`]) also serve callers that
//! read the same texts from ConfigMaps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rudder_config::injector::InjectorConfig;
use rudder_config::mesh::{self, MeshConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Endpoint, InjectFn, MAX_BODY_BYTES};
use crate::certs::CertStore;
use crate::inject::InjectionContext;
use crate::metrics::Metrics;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

/// Where the injection context comes from. Absent files mean defaults.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The injector ConfigMap's `config` key (YAML).
    pub inject_config: Option<PathBuf>,
    /// The injector ConfigMap's `values` key (JSON or YAML).
    pub inject_values: Option<PathBuf>,
    /// Mesh config YAML, layered over Istio's defaults.
    pub mesh_config: Option<PathBuf>,
    /// This control plane's revision.
    pub revision: Option<String>,
}

fn read_text(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|source| ServerError::Read { path: path.display().to_string(), source })
}

fn config_error(origin: &str, message: impl Into<String>) -> ServerError {
    ServerError::Config { path: origin.to_owned(), message: message.into() }
}

/// Parses the injector ConfigMap's `config` text; `origin` (a file, or a ConfigMap and key)
/// names the input in errors.
pub fn parse_inject_config(origin: &str, text: &str) -> Result<InjectorConfig, ServerError> {
    InjectorConfig::from_yaml(text).map_err(|e| config_error(origin, e))
}

/// Parses the injector ConfigMap's `values` text (JSON or YAML; blank means none).
pub fn parse_inject_values(origin: &str, text: &str) -> Result<serde_json::Value, ServerError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_saphyr::from_str(text).map_err(|e| config_error(origin, e.to_string()))
}

/// Parses mesh config YAML layered over `base`.
pub fn parse_mesh(origin: &str, text: &str, base: &MeshConfig) -> Result<MeshConfig, ServerError> {
    mesh::apply_yaml(text, base).map_err(|e| config_error(origin, e))
}

impl Sources {
    /// Reads every file into a context.
    pub fn load(&self) -> Result<InjectionContext, ServerError> {
        let mut ctx = InjectionContext { revision: self.revision.clone(), ..Default::default() };
        if let Some(path) = &self.inject_config {
            ctx.injector = parse_inject_config(&path.display().to_string(), &read_text(path)?)?;
        }
        if let Some(path) = &self.inject_values {
            ctx.values = parse_inject_values(&path.display().to_string(), &read_text(path)?)?;
        }
        ctx.mesh = MeshConfig::istio_defaults();
        if let Some(path) = &self.mesh_config {
            ctx.mesh = parse_mesh(&path.display().to_string(), &read_text(path)?, &ctx.mesh)?;
        }
        Ok(ctx)
    }

    /// The files' modification times, to notice changes.
    pub fn stamps(&self) -> Vec<Option<SystemTime>> {
        [&self.inject_config, &self.inject_values, &self.mesh_config]
            .into_iter()
            .map(|p| p.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
            .collect()
    }
}

/// What request handlers share: the current context, the injector to call and the metrics.
#[derive(Debug)]
pub struct AppState {
    context: RwLock<Arc<InjectionContext>>,
    /// `None`: [`inject_pod`](crate::inject::inject_pod) (by [`admission::handle`]'s faster path).
    inject: Option<InjectFn>,
    metrics: Metrics,
}

impl AppState {
    /// State that injects with [`inject_pod`](crate::inject::inject_pod).
    pub fn new(context: InjectionContext) -> Self {
        AppState { context: RwLock::new(Arc::new(context)), inject: None, metrics: Metrics::default() }
    }

    /// State with another injector (tests).
    pub fn with_injector(context: InjectionContext, inject: InjectFn) -> Self {
        AppState { context: RwLock::new(Arc::new(context)), inject: Some(inject), metrics: Metrics::default() }
    }

    /// The same state counting into `metrics` (registered where they are served).
    #[must_use]
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        AppState { metrics, ..self }
    }

    /// The context requests see now.
    pub fn context(&self) -> Arc<InjectionContext> {
        self.context.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the context for later requests.
    pub fn set_context(&self, context: InjectionContext) {
        *self.context.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(context);
    }
}

/// Polls `sources` every `every` and swaps in a new context when a file changed and loads.
pub fn spawn_reloader(state: Arc<AppState>, sources: Sources, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = sources.stamps();
        loop {
            tokio::time::sleep(every).await;
            let now = sources.stamps();
            if now == seen {
                continue;
            }
            match sources.load() {
                Ok(ctx) => {
                    state.set_context(ctx);
                    seen = now;
                    tracing::info!("reloaded the injection config");
                }
                Err(e) => tracing::warn!("keeping the previous injection config: {e}"),
            }
        }
    })
}

/// The admission routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/inject", post(admit))
        .route("/inject/{*rest}", post(admit))
        .route("/validate", post(admit))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn ready() -> &'static str {
    "ok\n"
}

fn plain(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn admit(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let Some(endpoint) = Endpoint::from_path(uri.path()) else {
        return plain(StatusCode::NOT_FOUND, "no such endpoint");
    };
    let too_large = format!("body larger than {MAX_BODY_BYTES} bytes");
    if declared_length(&headers).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        state.metrics.record(&endpoint, StatusCode::PAYLOAD_TOO_LARGE.as_u16(), &admission::Audit::None);
        return plain(StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    // Reads at most the limit; a longer body (chunked, no length) fails here.
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            state.metrics.record(&endpoint, StatusCode::PAYLOAD_TOO_LARGE.as_u16(), &admission::Audit::None);
            return plain(StatusCode::PAYLOAD_TOO_LARGE, &too_large);
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let ctx = state.context();
    let reply = match state.inject {
        Some(inject) => admission::handle_with(&endpoint, content_type, &bytes, &ctx, inject),
        None => admission::handle(&endpoint, content_type, &bytes, &ctx),
    };
    state.metrics.record(&endpoint, reply.status, &reply.audit);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response()
}

/// The TLS settings [`serve`] takes (from [`tls_config`]).
pub type TlsConfig = rustls::ServerConfig;

/// A rustls server config with the ring provider, ALPN h2 then http/1.1, and certificates from
/// `certs` (resolved per handshake, so rotation and file reloads apply to new connections).
pub fn tls_config(certs: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(ServerError::Listen)
}

/// Accepts TLS connections on `listener` and serves `app` over HTTP/1.1 or h2 until `shutdown`
/// completes, then lets open connections finish (up to a drain timeout).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, app, watcher) = (acceptor.clone(), builder.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing");
    }
}
