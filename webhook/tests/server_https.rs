//! The admission server over real HTTPS on 127.0.0.1: rustls on both sides, HTTP/1.1 and h2.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Container, Pod};
use rudder_webhook::certs::{self, Bundle, CertStore};
use rudder_webhook::inject::{InjectError, InjectionContext, Outcome};
use rudder_webhook::server::{self, AppState, Sources};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

fn bundle() -> Bundle {
    certs::generate(&certs::dns_names("istiod", "istio-system"), SystemTime::now()).expect("generate certs")
}

/// Adds an `istio-proxy` container, or fails for pods annotated `bad: "true"`.
fn fake_inject(_: &InjectionContext, pod: &Pod, _: &str) -> Result<Outcome, InjectError> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.get("bad").map(String::as_str) == Some("true") {
        return Err(InjectError::InvalidAnnotation { annotation: "bad".into(), message: "is bad".into() });
    }
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.push(Container { name: "istio-proxy".into(), ..Default::default() });
    }
    Ok(Outcome::Injected(Box::new(pod)))
}

struct Running {
    port: u16,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.done).await.expect("server stops").expect("join");
    }
}

async fn start(store: CertStore, ca_pem: String) -> Running {
    start_with(store, ca_pem, AppState::with_injector(InjectionContext::default(), fake_inject)).await
}

async fn start_with(store: CertStore, ca_pem: String, state: AppState) -> Running {
    let listener = server::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tls = server::tls_config(Arc::new(store)).expect("tls config");
    let state = Arc::new(state);
    let (stop, stopped) = oneshot::channel();
    let app = server::router(state.clone());
    let done = tokio::spawn(server::serve(listener, tls, app, async {
        let _ = stopped.await;
    }));
    Running { port, ca_pem, stop: Some(stop), done, state }
}

async fn start_generated() -> Running {
    let bundle = bundle();
    let store = CertStore::fixed(bundle.certified_key().expect("key"));
    start(store, bundle.ca_cert_pem).await
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

fn client_config(ca_pem: &str, proto: Proto) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let cert: CertificateDer<'static> = cert.expect("ca pem");
        roots.add(cert).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match proto {
        Proto::H1 => b"http/1.1".to_vec(),
        Proto::H2 => b"h2".to_vec(),
    }];
    Arc::new(config)
}

/// Opens a TLS connection to `localhost:port`, returning the stream and the server's leaf cert.
async fn connect(port: u16, ca_pem: &str, proto: Proto) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, proto));
    let name = ServerName::try_from("istiod.istio-system.svc").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let expected = if proto == Proto::H2 { b"h2".to_vec() } else { b"http/1.1".to_vec() };
    assert_eq!(alpn, Some(expected), "ALPN");
    let leaf = tls.get_ref().1.peer_certificates().expect("peer certs")[0].to_vec();
    (tls, leaf)
}

/// Sends one request on a fresh connection; returns status and body.
async fn send(running: &Running, proto: Proto, request: http::Request<Body>) -> (u16, Vec<u8>) {
    let (tls, _) = connect(running.port, &running.ca_pem, proto).await;
    let io = TokioIo::new(tls);
    let response = match proto {
        Proto::H1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(io).await.expect("h1");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("response")
        }
        Proto::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake::<_, _, Body>(TokioExecutor::new(), io).await.expect("h2");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("response")
        }
    };
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await.expect("body");
    (status, body.to_vec())
}

fn post(path: &str, content_type: Option<&str>, body: Vec<u8>) -> http::Request<Body> {
    let mut builder = http::Request::post(format!("https://localhost{path}")).header("host", "localhost");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder.header("content-length", body.len()).body(Body::from(body)).expect("request")
}

fn review(version: &str, kind: &str, object: Value) -> Vec<u8> {
    let group = if kind == "Pod" || kind == "Service" { "" } else { "networking.istio.io" };
    serde_json::to_vec(&json!({
        "apiVersion": version, "kind": "AdmissionReview",
        "request": {"uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "kind": {"group": group, "version": "v1", "kind": kind},
                    "namespace": "apps", "operation": "CREATE", "object": object}
    }))
    .expect("encode")
}

fn pod(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "web-", "annotations": annotations},
           "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn reviews_are_answered_in_their_version_with_the_uid_over_h1_and_h2() {
    let running = start_generated().await;
    for proto in [Proto::H1, Proto::H2] {
        for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
            let (status, body) =
                send(&running, proto, post("/inject", JSON, review(version, "Pod", pod(json!({}))))).await;
            assert_eq!(status, 200, "{proto:?} {version}");
            let out = json_of(&body);
            assert_eq!(out["apiVersion"], version);
            assert_eq!(out["kind"], "AdmissionReview");
            assert_eq!(out["response"]["uid"], "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4");
            assert_eq!(out["response"]["allowed"], true);
            assert_eq!(out["response"]["patchType"], "JSONPatch");
            assert!(out["response"]["patch"].is_string(), "base64 patch: {out}");
        }
    }
    let path = "/inject/cluster/Kubernetes/net/network1";
    let (status, body) =
        send(&running, Proto::H2, post(path, JSON, review("admission.k8s.io/v1", "Pod", pod(json!({}))))).await;
    assert_eq!((status, json_of(&body)["response"]["allowed"].clone()), (200, json!(true)));
    running.stop().await;
}

#[tokio::test]
async fn malformed_input_gets_the_specified_responses() {
    let running = start_generated().await;
    let v1 = "admission.k8s.io/v1";
    for proto in [Proto::H1, Proto::H2] {
        let cases: Vec<(&str, http::Request<Body>, u16)> = vec![
            ("empty body", post("/inject", JSON, Vec::new()), 400),
            ("not JSON", post("/inject", JSON, b"<xml/>".to_vec()), 400),
            ("wrong content type", post("/inject", Some("application/yaml"), review(v1, "Pod", pod(json!({})))), 415),
            ("no content type", post("/inject", None, review(v1, "Pod", pod(json!({})))), 415),
            (
                "no object",
                post(
                    "/inject",
                    JSON,
                    br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec(),
                ),
                400,
            ),
            (
                "no request",
                post("/inject", JSON, br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec()),
                400,
            ),
            ("unknown version", post("/inject", JSON, review("admission.k8s.io/v2", "Pod", pod(json!({})))), 400),
            ("unknown path", post("/mutate", JSON, review(v1, "Pod", pod(json!({})))), 404),
        ];
        for (what, request, want) in cases {
            let (status, body) = send(&running, proto, request).await;
            assert_eq!(status, want, "{proto:?} {what}: {}", String::from_utf8_lossy(&body));
        }
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
        let (status, body) = send(&running, proto, post("/inject", JSON, review(v1, "Service", service))).await;
        assert_eq!(status, 200);
        assert_eq!(json_of(&body)["response"], json!({"uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "allowed": true}));

        let (status, body) =
            send(&running, proto, post("/inject", JSON, review(v1, "Pod", pod(json!({"bad": "true"}))))).await;
        assert_eq!(status, 200);
        let out = json_of(&body);
        assert_eq!(out["response"]["allowed"], false);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("invalid annotation bad: is bad")
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn huge_bodies_are_refused_with_413() {
    let running = start_generated().await;
    let huge = vec![b' '; rudder_webhook::admission::MAX_BODY_BYTES + 1024];
    for proto in [Proto::H1, Proto::H2] {
        let (status, _) = send(&running, proto, post("/inject", JSON, huge.clone())).await;
        assert_eq!(status, 413, "{proto:?}");
    }
    // The server still answers afterwards.
    let ready =
        http::Request::get("https://localhost/ready").header("host", "localhost").body(Body::empty()).expect("req");
    assert_eq!(send(&running, Proto::H1, ready).await, (200, b"ok\n".to_vec()));
    running.stop().await;
}

fn virtual_service(weight: i64) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "apps"},
           "spec": {"hosts": ["reviews"],
                    "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": weight}]}]}})
}

#[tokio::test]
async fn validate_rejects_a_broken_virtual_service_with_the_path() {
    let running = start_generated().await;
    let v1 = "admission.k8s.io/v1";
    let (status, body) =
        send(&running, Proto::H2, post("/validate", JSON, review(v1, "VirtualService", virtual_service(-5)))).await;
    assert_eq!(status, 200);
    let out = json_of(&body);
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["status"]["message"], "spec.http[0].route[0].weight: weight -5 must not be negative");

    let (_, body) =
        send(&running, Proto::H1, post("/validate", JSON, review(v1, "VirtualService", virtual_service(100)))).await;
    assert_eq!(json_of(&body)["response"]["allowed"], true);
    running.stop().await;
}

/// istiod's admission counters, as the server keeps them for what it answered over HTTPS.
#[tokio::test]
async fn admission_metrics_count_what_was_answered() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = rudder_webhook::metrics::Metrics::register(&mut registry);
    let bundle = bundle();
    let store = CertStore::fixed(bundle.certified_key().expect("key"));
    let state = AppState::with_injector(InjectionContext::default(), fake_inject).with_metrics(metrics);
    let running = start_with(store, bundle.ca_cert_pem, state).await;
    let v1 = "admission.k8s.io/v1";
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
    for (path, content_type, body) in [
        ("/inject", JSON, review(v1, "Pod", pod(json!({})))),
        ("/inject", JSON, review(v1, "Pod", pod(json!({"bad": "true"})))),
        ("/inject", JSON, review(v1, "Service", service)),
        ("/inject", Some("text/plain"), review(v1, "Pod", pod(json!({})))),
        ("/validate", JSON, review(v1, "VirtualService", virtual_service(100))),
        ("/validate", JSON, review(v1, "VirtualService", virtual_service(-5))),
        ("/validate", JSON, b"not json".to_vec()),
    ] {
        send(&running, Proto::H2, post(path, content_type, body)).await;
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for line in [
        "sidecar_injection_requests_total 4",
        "sidecar_injection_success_total 1",
        "sidecar_injection_skip_total 1",
        "sidecar_injection_failure_total 2",
        r#"galley_validation_passed_total{group="networking.istio.io",version="v1",resource="virtualservices"} 1"#,
        r#"galley_validation_failed_total{group="networking.istio.io",version="v1",resource="virtualservices",reason="invalid_resource"} 1"#,
        r#"galley_validation_http_error_total{status="400"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    running.stop().await;
}

fn write_pair(dir: &Path, bundle: &Bundle) {
    std::fs::write(dir.join("tls.crt"), &bundle.cert_pem).expect("write cert");
    std::fs::write(dir.join("tls.key"), &bundle.key_pem).expect("write key");
}

fn leaf_der(bundle: &Bundle) -> Vec<u8> {
    let mut certs = rustls::pki_types::pem::PemObject::pem_slice_iter(bundle.cert_pem.as_bytes());
    let leaf: CertificateDer<'static> = certs.next().expect("one cert").expect("pem");
    leaf.to_vec()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rudder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn rewritten_cert_files_are_served_to_new_connections() {
    let dir = temp_dir("certs");
    let (first, second) = (bundle(), bundle());
    write_pair(&dir, &first);
    let store = CertStore::from_files(dir.join("tls.crt"), dir.join("tls.key")).expect("load files");
    let both_cas = format!("{}{}", first.ca_cert_pem, second.ca_cert_pem);
    let running = start(store, both_cas.clone()).await;
    let (_, leaf) = connect(running.port, &both_cas, Proto::H1).await;
    assert_eq!(leaf, leaf_der(&first));

    let before = std::fs::metadata(dir.join("tls.crt")).and_then(|m| m.modified()).expect("mtime");
    write_pair(&dir, &second);
    // Some file systems keep coarse timestamps: rewrite until the modification time moves.
    for _ in 0..100 {
        if std::fs::metadata(dir.join("tls.crt")).and_then(|m| m.modified()).expect("mtime") != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        write_pair(&dir, &second);
    }
    let (_, leaf) = connect(running.port, &both_cas, Proto::H2).await;
    assert_eq!(leaf, leaf_der(&second), "a new connection sees the rewritten certificate");

    // A broken rewrite keeps the last good certificate.
    std::fs::write(dir.join("tls.crt"), "not a certificate").expect("write");
    let (_, leaf) = connect(running.port, &both_cas, Proto::H1).await;
    assert_eq!(leaf, leaf_der(&second));
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn config_files_are_reloaded_when_they_change() {
    let dir = temp_dir("config");
    let config = dir.join("config");
    std::fs::write(&config, "policy: enabled\n").expect("write");
    let sources = Sources { inject_config: Some(config.clone()), ..Default::default() };
    let running = start_generated().await;
    running.state.set_context(sources.load().expect("load"));
    assert_eq!(running.state.context().injector.policy, rudder_config::injector::InjectionPolicy::Enabled);
    let reloader = server::spawn_reloader(running.state.clone(), sources, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(30)).await;
    std::fs::write(&config, "policy: disabled\nneverInjectSelector: []\n").expect("write");
    let mut reloaded = false;
    for _ in 0..200 {
        if running.state.context().injector.policy == rudder_config::injector::InjectionPolicy::Disabled {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&config, "policy: disabled\n").expect("write");
    }
    assert!(reloaded, "policy reloaded from the file");
    // An invalid rewrite keeps the last good config.
    std::fs::write(&config, "policy: sometimes\n").expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(running.state.context().injector.policy, rudder_config::injector::InjectionPolicy::Disabled);
    reloader.abort();
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
