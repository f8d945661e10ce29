//! A small HTTP/1.1 client for sending requests through sidecars and reading replies.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Upper bound for any one request, so a broken mesh fails a test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What came back.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A response header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    /// Full URL (the address of the listener to hit).
    pub url: String,
    /// `Host` header (the service name as the application would use it).
    pub host: String,
    pub headers: BTreeMap<String, String>,
}

impl Req {
    pub fn get(url: impl Into<String>, host: impl Into<String>) -> Self {
        Self { method: Method::GET, url: url.into(), host: host.into(), headers: BTreeMap::new() }
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }
}

/// A pooled HTTP/1.1 client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpConnector, Body>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self { inner: HyperClient::builder(TokioExecutor::new()).build(connector) }
    }

    /// Sends `req` and reads the whole reply.
    pub async fn send(&self, req: &Req) -> anyhow::Result<Reply> {
        let mut builder = Request::builder().method(req.method.clone()).uri(&req.url);
        if !req.host.is_empty() {
            builder = builder.header(http::header::HOST, &req.host);
        }
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        let request = builder.body(Body::empty())?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.inner.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("{} {}: no reply within {REQUEST_TIMEOUT:?}", req.method, req.url))?
            .map_err(|e| anyhow::anyhow!("{} {}: {e}", req.method, req.url))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(Body::new(response.into_body()), 16 << 20).await?.to_vec();
        Ok(Reply { status, headers, body })
    }

    /// GET `url` and parse JSON (for admin and debug endpoints).
    pub async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let reply = self.send(&Req::get(url, "")).await?;
        anyhow::ensure!(reply.status.is_success(), "GET {url}: {}", reply.status);
        Ok(serde_json::from_slice(&reply.body)?)
    }

    /// POST to `url` with an empty body, expecting success.
    pub async fn post(&self, url: &str) -> anyhow::Result<Reply> {
        let reply = self.send(&Req::get(url, "").method(Method::POST)).await?;
        anyhow::ensure!(reply.status.is_success(), "POST {url}: {}", reply.status);
        Ok(reply)
    }
}
