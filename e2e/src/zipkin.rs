//! A Zipkin-format span collector for tests: accepts `POST /api/v2/spans` (a JSON array of
//! spans, as Envoy's zipkin tracer sends them) and keeps every span it received.

use std::sync::{Arc, Mutex};

use serde_json::Value;

/// A running collector; dropping it stops it.
#[derive(Debug)]
pub struct ZipkinCollector {
    spans: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ZipkinCollector {
    pub async fn start(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("zipkin collector on {addr}: {e}"))?;
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/api/v2/spans",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    match serde_json::from_slice::<Vec<Value>>(&body) {
                        Ok(received) => {
                            store.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(received);
                            http::StatusCode::ACCEPTED
                        }
                        Err(_) => http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { spans, task })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for ZipkinCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
