//! The admission server as the binary runs it: inside `rudder discovery --config-dir` on its
//! webhook port, and alone as `rudder webhook`; AdmissionReviews over HTTPS, trusting the
//! generated CA written to `--ca-out`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

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

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

fn review_pod() -> Vec<u8> {
    std::fs::read(workspace().join("webhook/benches/review-pod.json")).unwrap()
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

fn assert_injected(reply: &Value) {
    let sent: Value = serde_json::from_slice(&review_pod()).unwrap();
    assert_eq!(reply["kind"], "AdmissionReview", "{reply}");
    assert_eq!(reply["response"]["uid"], sent["request"]["uid"], "{reply}");
    assert_eq!(reply["response"]["allowed"], true, "{reply}");
    assert_eq!(reply["response"]["patchType"], "JSONPatch", "{reply}");
}

#[tokio::test]
async fn discovery_serves_admission_on_its_webhook_port() {
    let dir = tempdir("discovery");
    let ca = dir.join("ca.pem");
    let port = free_port().to_string();
    let config_dir = workspace().join("examples/local");
    let (_child, mut stdout) = spawn(&[
        "discovery",
        "--config-dir",
        config_dir.to_str().unwrap(),
        "--grpc-address",
        "127.0.0.1:0",
        "--monitoring-address",
        "127.0.0.1:0",
        "--webhook-address",
        "127.0.0.1",
        "--webhook-port",
        &port,
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(line_after(&mut stdout, "ca: "), ca.display().to_string());
    let client = client(port.parse().unwrap(), &ca).await;
    assert_injected(&admit(&client, "/inject", review_pod()).await);
}

#[tokio::test]
async fn webhook_alone_serves_on_the_printed_address() {
    let dir = tempdir("webhook");
    let ca = dir.join("ca.pem");
    let (_child, mut stdout) =
        spawn(&["webhook", "--address", "127.0.0.1", "--port", "0", "--ca-out", ca.to_str().unwrap()]);
    assert_eq!(line_after(&mut stdout, "ca: "), ca.display().to_string());
    let addr = line_after(&mut stdout, "listening: https://");
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let client = client(port, &ca).await;
    assert_injected(&admit(&client, "/inject", review_pod()).await);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rudder-admission-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn discovery_without_webhook_leaves_the_port_closed() {
    let [monitoring, webhook] = rudder_e2e::process::free_ports().unwrap();
    let config_dir = workspace().join("examples/local");
    let monitoring_address = format!("127.0.0.1:{monitoring}");
    let (_child, _stdout) = spawn(&[
        "discovery",
        "--config-dir",
        config_dir.to_str().unwrap(),
        "--grpc-address",
        "127.0.0.1:0",
        "--monitoring-address",
        &monitoring_address,
        "--webhook-address",
        "127.0.0.1",
        "--webhook-port",
        &webhook.to_string(),
        "--no-webhook",
    ]);
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(&monitoring_address).is_ok()
    });
    assert!(up, "discovery's monitoring port never opened");
    assert!(std::net::TcpStream::connect(("127.0.0.1", webhook)).is_err(), "admission server running");
}
