//! Sidecar injection through a real API server: the injector webhooks the operator renders,
//! registered with `injectionURL` pointing at a `rudder webhook` on this machine, decide for
//! pods created (server-side dry run, so nothing is scheduled) in labelled and unlabelled
//! namespaces, as the truth table says.
//!
//! Runs on the test cluster (`rudder_e2e::cluster`). On the harness's own k8s-local cluster the
//! API server runs on this machine and calls the webhook on 127.0.0.1; on a `KUBECONFIG` cluster
//! `RUDDER_LIVE_WEBHOOK_HOST` must name an address the API server can reach this machine at (for
//! kind, the Docker bridge gateway, e.g. `172.18.0.1`). Otherwise it prints why it skipped. Use a throwaway cluster: while it runs, pods created in any
//! namespace labelled `istio-injection=enabled` go through this webhook too.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rudder_operator::render::{RenderRequest, render};
use serde_json::json;

const WEBHOOK_NAME: &str = "istio-sidecar-injector-rudder-live";
const NS_ON: &str = "rudder-live-injection-on";
const NS_OFF: &str = "rudder-live-injection-off";

struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn webhook_host(cluster: &rudder_e2e::cluster::Cluster) -> Option<String> {
    if cluster.is_local() {
        return Some("127.0.0.1".into());
    }
    match std::env::var("RUDDER_LIVE_WEBHOOK_HOST") {
        Ok(host) if !host.is_empty() => Some(host),
        _ => {
            println!("skipped: RUDDER_LIVE_WEBHOOK_HOST not set (an address of this machine the API server can reach)");
            None
        }
    }
}

/// Starts `rudder webhook` with a serving certificate for `host`; returns it, its port and the CA.
fn start_webhook(host: &str) -> (Webhook, u16, String) {
    let dir = std::env::temp_dir().join(format!("rudder-live-injection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = rudder_webhook::certs::generate(&[host.to_owned()], SystemTime::now()).unwrap();
    std::fs::write(dir.join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &bundle.key_pem).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["webhook", "--address", "0.0.0.0", "--port", "0", "--tls-cert"])
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let port = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("listening: https://").and_then(|a| a.rsplit(':').next()?.parse().ok()))
        .expect("the webhook prints its address");
    (Webhook(child), port, bundle.ca_cert_pem)
}

/// The rendered injector webhook configuration, pointed at `url` and trusting `ca`.
fn injector_webhooks(url: &str, ca: &str) -> MutatingWebhookConfiguration {
    let set = vec![format!("values.istiodRemote.injectionURL={url}")];
    let manifest = render(&RenderRequest { set, ..RenderRequest::default() }).unwrap();
    let object = manifest
        .objects
        .into_iter()
        .find(|o| o.object.types.as_ref().is_some_and(|t| t.kind == "MutatingWebhookConfiguration"))
        .expect("an injector webhook configuration");
    let mut mwc: MutatingWebhookConfiguration =
        serde_json::from_value(serde_json::to_value(&object.object).unwrap()).unwrap();
    mwc.metadata = kube::api::ObjectMeta { name: Some(WEBHOOK_NAME.into()), ..Default::default() };
    for hook in mwc.webhooks.iter_mut().flatten() {
        assert_eq!(hook.client_config.url.as_deref(), Some(url), "injectionURL is rendered into the webhook");
        hook.client_config.ca_bundle = Some(ByteString(ca.as_bytes().to_vec()));
    }
    mwc
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap()
}

/// Creates the pod with `dryRun=All` and says whether it came back with the sidecar.
async fn injected(client: &Client, namespace: &str, pod: &Pod) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let created = api.create(&PostParams { dry_run: true, ..Default::default() }, pod).await.unwrap();
    let spec = created.spec.unwrap();
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == "istio-proxy")
}

async fn clean_up(client: &Client) {
    let _ =
        Api::<MutatingWebhookConfiguration>::all(client.clone()).delete(WEBHOOK_NAME, &DeleteParams::default()).await;
    for ns in [NS_ON, NS_OFF] {
        let _ = Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn pods_are_injected_per_the_truth_table() {
    let Some(cluster) = rudder_e2e::cluster::shared(env!("CARGO_BIN_EXE_rudder")) else { return };
    let Some(host) = webhook_host(cluster) else { return };
    let client = cluster.client().await.expect("a client for the test cluster");
    clean_up(&client).await;
    let (_webhook, port, ca) = start_webhook(&host);
    let url = format!("https://{host}:{port}/inject");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (ns, labels) in [(NS_ON, json!({"istio-injection": "enabled"})), (NS_OFF, json!({}))] {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}})).unwrap();
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    }
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &injector_webhooks(&url, &ca))
        .await
        .unwrap();

    let rows = [
        (NS_ON, pod("plain", json!({})), true),
        (NS_ON, pod("opted-out", json!({"sidecar.istio.io/inject": "false"})), false),
        (NS_OFF, pod("plain", json!({})), false),
        (NS_OFF, pod("opted-in", json!({"sidecar.istio.io/inject": "true"})), true),
    ];
    let mut wrong = Vec::new();
    for (ns, pod, expected) in &rows {
        let got = injected(&client, ns, pod).await;
        if got != *expected {
            wrong.push(format!(
                "{ns}/{}: injected={got}, expected {expected}",
                pod.metadata.name.as_deref().unwrap_or("")
            ));
        }
    }
    clean_up(&client).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
