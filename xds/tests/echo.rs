//! `rudder echo` over real HTTP on 127.0.0.1: HTTP/1.1 and h2c (prior knowledge).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rudder_xds::echo::{self, EchoIdentity};
use serde_json::Value;
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(instance: &str, version: &str) -> Self {
        let listener = echo::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = echo::router(EchoIdentity { instance: instance.into(), version: version.into() });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(echo::serve(listener, app, async {
            let _ = rx.await;
        }));
        Self { addr, stop: Some(tx), task }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

type HttpClient = Client<HttpConnector, Body>;

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

async fn send(client: &HttpClient, req: Request<Body>) -> Reply {
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, headers, json }
}

async fn get(client: &HttpClient, server: &Server, path: &str) -> Reply {
    let req = Request::get(format!("http://{}{path}", server.addr)).body(Body::empty()).unwrap();
    send(client, req).await
}

#[tokio::test]
async fn get_describes_the_request_over_http1_and_h2c() {
    let server = Server::start("echo-v1-0", "v1").await;
    for (client, protocol) in [(http1(), "HTTP/1.1"), (h2c(), "HTTP/2.0")] {
        let req = Request::get(format!("http://{}/get?a=1&b=two", server.addr))
            .header("end-user", "jason")
            .body(Body::empty())
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["x-echo-instance"], "echo-v1-0");
        assert_eq!(reply.headers["x-echo-version"], "v1");
        let j = &reply.json;
        assert_eq!(j["instance"], "echo-v1-0");
        assert_eq!(j["version"], "v1");
        assert_eq!(j["method"], "GET");
        assert_eq!(j["path"], "/get");
        assert_eq!(j["query"]["a"], "1");
        assert_eq!(j["query"]["b"], "two");
        assert_eq!(j["protocol"], protocol);
        assert_eq!(j["host"], server.addr.to_string());
        assert_eq!(j["headers"]["end-user"], "jason");
        assert!(j["remoteAddr"].as_str().unwrap().starts_with("127.0.0.1:"), "{j}");
    }
    let root = get(&h2c(), &server, "/").await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.json["path"], "/");
    server.stop().await;
}

#[tokio::test]
async fn headers_are_echoed() {
    let server = Server::start("a", "v2").await;
    let req = Request::get(format!("http://{}/headers", server.addr))
        .header("x-test", "one")
        .header("x-test", "two")
        .body(Body::empty())
        .unwrap();
    let reply = send(&http1(), req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["headers"]["x-test"], "one, two");
    assert_eq!(reply.headers["x-echo-version"], "v2");
    server.stop().await;
}

#[tokio::test]
async fn status_answers_with_the_code_asked_for() {
    let server = Server::start("a", "v1").await;
    for client in [http1(), h2c()] {
        let reply = get(&client, &server, "/status/503").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.json["instance"], "a");
        assert_eq!(reply.json["version"], "v1");
        assert_eq!(reply.headers["x-echo-instance"], "a");
        let bad = get(&client, &server, "/status/abc").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(get(&client, &server, "/status/99").await.status, StatusCode::BAD_REQUEST);
        assert_eq!(get(&client, &server, "/status/418").await.status, StatusCode::IM_A_TEAPOT);
    }
    server.stop().await;
}

#[tokio::test]
async fn delay_waits_at_least_as_long_as_asked() {
    let server = Server::start("a", "v1").await;
    let started = Instant::now();
    let reply = get(&http1(), &server, "/delay/0.2").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["path"], "/delay/0.2");
    assert_eq!(reply.json["instance"], "a");
    server.stop().await;
}

#[tokio::test]
async fn delays_beyond_the_limit_or_invalid_are_rejected() {
    // Documented choice: more than 10 s is a 400, not capped, so a mistaken test fails fast.
    let server = Server::start("a", "v1").await;
    for path in ["/delay/99", "/delay/abc", "/delay/-1", "/delay/NaN"] {
        let reply = get(&h2c(), &server, path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.headers["x-echo-instance"], "a");
    }
    server.stop().await;
}

#[tokio::test]
async fn anything_takes_any_method_and_reports_the_body_length() {
    let server = Server::start("a", "v1").await;
    for client in [http1(), h2c()] {
        let req =
            Request::post(format!("http://{}/anything/x?y=1", server.addr)).body(Body::from("hello world")).unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json["method"], "POST");
        assert_eq!(reply.json["path"], "/anything/x");
        assert_eq!(reply.json["bodyLength"], 11);
        let req = Request::delete(format!("http://{}/anything", server.addr)).body(Body::empty()).unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.json["method"], "DELETE");
        assert_eq!(reply.json["bodyLength"], 0);
    }
    server.stop().await;
}

#[tokio::test]
async fn fail_mode_answers_every_request_with_the_code_until_reset() {
    let server = Server::start("a", "v1").await;
    let client = http1();
    let post = |path: &str| Request::post(format!("http://{}{path}", server.addr)).body(Body::empty()).unwrap();
    assert_eq!(send(&client, post("/echo/fail/503")).await.status, StatusCode::OK);
    let reply = get(&client, &server, "/get").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&client, &server, "/echo/stats").await.json["failing"], 503);
    assert_eq!(send(&client, post("/echo/fail/42")).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(send(&client, post("/echo/reset")).await.status, StatusCode::OK);
    assert_eq!(get(&client, &server, "/get").await.status, StatusCode::OK);

    assert_eq!(send(&client, post("/echo/latency/0.2")).await.status, StatusCode::OK);
    let started = std::time::Instant::now();
    assert_eq!(get(&client, &server, "/get").await.status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(send(&client, post("/echo/latency/-1")).await.status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn stats_count_requests_per_path_until_reset() {
    let server = Server::start("a", "v1").await;
    let client = h2c();
    for _ in 0..3 {
        get(&client, &server, "/get").await;
    }
    get(&http1(), &server, "/status/503").await;
    let stats = get(&client, &server, "/echo/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.json["paths"]["/get"], 3);
    assert_eq!(stats.json["paths"]["/status/503"], 1);
    assert_eq!(stats.json["total"], 4);
    assert!(stats.json["paths"].get("/echo/stats").is_none());
    assert_eq!(stats.json["methods"]["GET"], 4);
    assert_eq!(stats.json["hosts"][server.addr.to_string()], 4);

    let req = Request::post(format!("http://{}/echo/reset", server.addr)).body(Body::empty()).unwrap();
    assert_eq!(send(&client, req).await.status, StatusCode::OK);
    let stats = get(&client, &server, "/echo/stats").await;
    assert_eq!(stats.json["total"], 0);
    assert_eq!(stats.json["paths"], serde_json::json!({}));
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_with_the_identity_headers() {
    let server = Server::start("a", "v3").await;
    let reply = get(&http1(), &server, "/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers["x-echo-version"], "v3");
    server.stop().await;
}

#[tokio::test]
async fn call_makes_the_workloads_own_outbound_request() {
    let caller = Server::start("caller", "v1").await;
    let callee = Server::start("callee", "v2").await;
    let path = format!("/echo/call?to={}&host=callee.example&path=/status/418", callee.addr);
    let teapot = get(&http1(), &caller, &path).await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT, "the callee's status comes back");
    let path = format!("/echo/call?to={}&host=callee.example", callee.addr);
    let reply = get(&http1(), &caller, &path).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["instance"], "callee");
    assert_eq!(reply.json["host"], "callee.example", "the Host the caller chose");
    // Nobody listening: 502 from the caller, saying where it tried.
    let nowhere = get(&http1(), &caller, "/echo/call?to=127.0.0.1:1").await;
    assert_eq!(nowhere.status, StatusCode::BAD_GATEWAY);
    caller.stop().await;
    callee.stop().await;
}
