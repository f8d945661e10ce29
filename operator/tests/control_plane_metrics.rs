//! Control-plane telemetry as the binary serves it: `rudder discovery` with its CA and admission
//! server has one `/metrics` on the monitoring port for the ADS server (`pilot_*`), the CA
//! (`citadel_server_*`) and the webhook (`sidecar_injection_*`, `galley_validation_*`), and they
//! move when a pod is injected, an object validated, a certificate asked for and config pushed;
//! `rudder webhook --monitoring-address` serves the webhook's alone.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kube::config::{KubeConfigOptions, Kubeconfig};
use rudder_xds::ca::{SpiffeId, csr_for};
use rudder_xds::ca_service::{FileTokens, create_certificate};
use serde_json::{Value, json};

/// Kills the server when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rudder-cp-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn(args: &[&str]) -> (KillOnDrop, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(args)
        .env_remove("REVISION")
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (KillOnDrop(child), stdout)
}

/// The value of the next stdout line starting with `prefix`.
fn line_after(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no `{prefix}` line before the end of stdout");
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

/// `GET path` over plain HTTP/1.1: status and body, `None` while nothing listens.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Scrapes `/metrics` until `ok` holds for the text.
fn scrape_until(addr: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = match http_get(addr, "/metrics") {
            Some((200, text)) => text,
            _ => String::new(),
        };
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} in\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the series `series` (name and labels exactly as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// A client for `https://localhost:PORT` that trusts only the CA in `ca`.
async fn client(port: u16, ca: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(&format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
         clusters: [{{name: t, cluster: {{server: 'https://localhost:{port}', certificate-authority: '{}'}}}}]\n\
         users: [{{name: t, user: {{}}}}]\n\
         contexts: [{{name: t, context: {{cluster: t, user: t}}}}]\n",
        ca.display()
    ))
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// POSTs an AdmissionReview to `path`, retrying while the server is not up yet.
async fn admit(client: &kube::Client, path: &str, body: Vec<u8>) -> Value {
    let mut last = None;
    for _ in 0..100 {
        let request = http::Request::post(path).header("content-type", "application/json").body(body.clone()).unwrap();
        match client.request_text(request).await {
            Ok(text) => return serde_json::from_str(&text).unwrap(),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no answer from {path}: {last:?}");
}

fn review_pod() -> Vec<u8> {
    std::fs::read(workspace().join("webhook/benches/review-pod.json")).unwrap()
}

fn review_virtual_service() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "vs-1", "operation": "CREATE", "namespace": "testns1",
            "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
            "resource": {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
            "object": {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                       "metadata": {"name": "httpbin", "namespace": "testns1"},
                       "spec": {"hosts": ["httpbin"], "http": [{"route": [{"destination": {"host": "httpbin"}}]}]}}
        }
    }))
    .unwrap()
}

const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
    metadata: {name: httpbin, namespace: testns1}\n\
    spec: {hosts: [httpbin.testns1.svc.cluster.local], http: [{route: [{destination: {host: httpbin.testns1.svc.cluster.local}}]}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_serves_the_metrics_of_ads_ca_and_webhook_and_they_move() {
    let dir = tempdir("discovery");
    let (config, ca_dir, webhook_ca) = (dir.join("config"), dir.join("ca"), dir.join("webhook-ca.pem"));
    std::fs::create_dir_all(&config).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/local")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, config.join(path.file_name().unwrap())).unwrap();
    }
    let [grpc, secure, monitoring, webhook] = rudder_e2e::process::free_ports().unwrap();
    let monitoring = format!("127.0.0.1:{monitoring}");
    let (_discovery, mut stdout) = spawn(&[
        "discovery",
        "--config-dir",
        config.to_str().unwrap(),
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--grpc-address",
        &format!("127.0.0.1:{grpc}"),
        "--secure-grpc-address",
        &format!("127.0.0.1:{secure}"),
        "--monitoring-address",
        &monitoring,
        "--webhook-address",
        "127.0.0.1",
        "--webhook-port",
        &webhook.to_string(),
        "--ca-out",
        webhook_ca.to_str().unwrap(),
    ]);
    assert_eq!(line_after(&mut stdout, "ca: "), webhook_ca.display().to_string());

    let start = scrape_until(&monitoring, "the directory's services and the CA", |t| {
        value(t, "pilot_services") >= 3.0 && t.contains("citadel_server_root_cert_expiry_timestamp ")
    });
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(value(&start, "citadel_server_root_cert_expiry_timestamp") > now, "{start}");
    for zero in ["sidecar_injection_requests_total", "citadel_server_csr_count_total", "pilot_virt_services"] {
        assert!(start.lines().any(|l| l == format!("{zero} 0")), "{zero} not 0 in\n{start}");
    }

    // The admission server: one pod injected, one VirtualService validated.
    let webhook_client = client(webhook, &webhook_ca).await;
    let injected = admit(&webhook_client, "/inject", review_pod()).await;
    assert_eq!(injected["response"]["patchType"], "JSONPatch", "{injected}");
    let validated = admit(&webhook_client, "/validate", review_virtual_service()).await;
    assert_eq!(validated["response"]["allowed"], true, "{validated}");

    // The CA over TLS: one certificate issued, one token refused.
    let root = std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&root))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{secure}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = FileTokens::load_or_create_dir(&ca_dir, "cluster.local").unwrap().issue("testns1", "sleep");
    let (csr, _key) = csr_for(&SpiffeId::new("cluster.local", "testns1", "sleep")).unwrap();
    create_certificate(channel.clone(), &token, csr.clone(), Duration::from_secs(3600)).await.unwrap();
    create_certificate(channel, "v1:testns1:sleep:00", csr, Duration::from_secs(3600)).await.unwrap_err();

    // Config pushed: a VirtualService added to the directory.
    std::fs::write(config.join("vs.yaml"), VIRTUAL_SERVICE).unwrap();

    let after = scrape_until(&monitoring, "the pushed VirtualService", |t| value(t, "pilot_virt_services") == 1.0);
    for (series, expected) in [
        ("sidecar_injection_requests_total", 1.0),
        ("sidecar_injection_success_total", 1.0),
        ("sidecar_injection_failure_total", 0.0),
        (r#"galley_validation_passed_total{group="networking.istio.io",version="v1",resource="virtualservices"}"#, 1.0),
        ("citadel_server_csr_count_total", 2.0),
        ("citadel_server_success_cert_issuance_count_total", 1.0),
        ("citadel_server_authentication_failure_count_total", 1.0),
        (r#"pilot_k8s_cfg_events_total{type="VirtualService",event="add"}"#, 1.0),
        (r#"rudder_discovery_config_objects{type="VirtualService"}"#, 1.0),
    ] {
        assert_eq!(value(&after, series), expected, "{series} in\n{after}");
    }
    assert!(value(&after, r#"pilot_push_triggers_total{type="config"}"#) >= 1.0, "{after}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_webhook_alone_serves_its_metrics_on_the_monitoring_address() {
    let dir = tempdir("webhook");
    let ca = dir.join("ca.pem");
    let (_webhook, mut stdout) = spawn(&[
        "webhook",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "--ca-out",
        ca.to_str().unwrap(),
        "--monitoring-address",
        "127.0.0.1:0",
    ]);
    let monitoring = line_after(&mut stdout, "monitoring: http://");
    assert_eq!(line_after(&mut stdout, "ca: "), ca.display().to_string());
    let addr = line_after(&mut stdout, "listening: https://");
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();

    let before = scrape_until(&monitoring, "the webhook's metrics", |t| t.contains("sidecar_injection_requests_total"));
    assert_eq!(value(&before, "sidecar_injection_requests_total"), 0.0, "{before}");
    let injected = admit(&client(port, &ca).await, "/inject", review_pod()).await;
    assert_eq!(injected["response"]["allowed"], true, "{injected}");
    let after =
        scrape_until(&monitoring, "the counted request", |t| value(t, "sidecar_injection_requests_total") == 1.0);
    assert_eq!(value(&after, "sidecar_injection_success_total"), 1.0, "{after}");
    assert!(!after.contains("pilot_xds"), "only the webhook's metrics:\n{after}");
    assert_eq!(http_get(&monitoring, "/logging").map(|(status, _)| status), Some(200));
    let _ = std::fs::remove_dir_all(&dir);
}
