//! The monitoring port: `/metrics`, `/ready` and debug views of the connected proxies, the
//! equivalents of istiod's `/debug/syncz`, `/debug/adsz` and `/debug/config_dump`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::cache::format_version;
use super::connection::Connection;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/debug/syncz", get(syncz))
        .route("/debug/adsz", get(adsz))
        .route("/debug/config_dump", get(config_dump))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut text = String::new();
    let registry = shared.registry.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Ready once the registry's first snapshot is in a generation (proxies are answered from
/// then on); 503 before, like istiod until its caches have synced.
async fn ready(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    let generation = shared.generations.borrow().clone();
    if generation.snapshot.loading {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: the registry has not read its sources yet\n")
            .into_response();
    }
    format!("ready, push version {}\n", generation.version).into_response()
}

/// Per proxy, per type: what was sent and acknowledged, and the last rejection.
/// Per proxy: what was sent and acknowledged per type, the last NACK, and `synced` — the
/// stream has taken the latest push and every type it watches answered the last response
/// (ACK or NACK). Tests and operators wait on `synced`.
async fn syncz(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let current = shared.generations.borrow().version;
    let proxies: Vec<Value> = shared
        .connections()
        .iter()
        .map(|c| {
            let watches = c.watch_snapshot();
            let answered = watches
                .values()
                .all(|w| w.nonce_sent.is_empty() || w.nonce_acked == w.nonce_sent || w.last_error.is_some());
            let last_nack = watches.values().find_map(|w| w.last_error.clone());
            let types: BTreeMap<&str, Value> = watches
                .into_iter()
                .map(|(kind, watch)| (kind.short_name(), serde_json::to_value(watch).unwrap_or(Value::Null)))
                .collect();
            json!({
                "proxy": c.node_id,
                "connection": c.id,
                "push_version": c.pushed_version(),
                "server_push_version": current,
                "synced": c.pushed_version() == current && answered,
                "last_nack": last_nack,
                "types": types,
            })
        })
        .collect();
    Json(Value::Array(proxies))
}

/// The connected streams.
async fn adsz(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let generation = shared.generations.borrow().clone();
    let connections: Vec<Value> = shared
        .connections()
        .iter()
        .map(|c| {
            json!({
                "connection": c.id,
                "node": c.node_id,
                "proxy": c.proxy.id,
                "namespace": c.proxy.namespace,
                "peer": c.peer.map(|p| p.to_string()),
                "identity": c.identity.as_ref().map(ToString::to_string),
                "transport": if c.delta { "delta" } else { "sotw" },
                "connected_seconds": c.age().as_secs(),
                "push_version": c.pushed_version(),
                "watched": c.watch_snapshot().keys().map(|k| k.short_name()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({
        "push_version": generation.version,
        "version_info": generation.version_info,
        "views": generation.view_count(),
        "connections": connections,
    }))
}

#[derive(Debug, Deserialize)]
struct ConfigDumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: String,
}

/// What the server last sent a proxy: resource names and versions per type. `proxyID` is the
/// node id, the proxy id (`<pod>.<namespace>`) or a connection id.
async fn config_dump(State(shared): State<Arc<Shared>>, Query(query): Query<ConfigDumpQuery>) -> Response {
    let matches =
        |c: &Connection| c.node_id == query.proxy_id || c.proxy.id == query.proxy_id || c.id == query.proxy_id;
    let dumps: Vec<Value> = shared
        .connections()
        .iter()
        .filter(|c| matches(c))
        .map(|c| {
            let types: BTreeMap<&str, BTreeMap<String, String>> = c
                .watch_snapshot()
                .into_iter()
                .map(|(kind, watch)| {
                    (
                        kind.short_name(),
                        watch.sent.iter().map(|(name, hash)| (name.clone(), format_version(*hash))).collect(),
                    )
                })
                .collect();
            json!({"connection": c.id, "node": c.node_id, "resources": types})
        })
        .collect();
    if dumps.is_empty() {
        return (StatusCode::NOT_FOUND, format!("no connected proxy {:?}\n", query.proxy_id)).into_response();
    }
    Json(Value::Array(dumps)).into_response()
}
