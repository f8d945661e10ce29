//! `rudder proxy-status [POD] [--discovery-address HOST:PORT] [-i NS] [-r REV]`: every proxy's
//! sync state per type, from discovery's `/debug/syncz` (see `rudder_xds::proxy_status`). In a
//! cluster, each running discovery pod of the revision is asked through the API server's pod
//! proxy (port 15014); with `--discovery-address`, that monitoring address (file mode).
//! With POD, that proxy in detail. Exit 1 when a proxy asked for is not connected.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use rudder_xds::agent::supervise::local_request;
use rudder_xds::proxy_status::{self, ProxyStatus};

use super::install::{block_on, exit_code, kube_client};

/// Discovery's monitoring port, where `/debug/syncz` is served.
const MONITORING_PORT: u16 = 15014;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A proxy to show in detail: `<pod>.<namespace>`, `<pod>`, or its node id.
    pod: Option<String>,
    /// Discovery's monitoring address (`host:port`), for discovery outside a cluster
    /// (`rudder discovery --monitoring-address`).
    #[arg(long)]
    discovery_address: Option<String>,
    /// Namespace of the control plane.
    #[arg(short = 'i', long = "istioNamespace", alias = "istio-namespace", default_value = "istio-system")]
    istio_namespace: String,
    /// Revision of the control plane to ask.
    #[arg(short = 'r', long, default_value = "default")]
    revision: String,
}

pub fn run(args: &Args) -> ExitCode {
    exit_code(block_on(show(args)))
}

async fn show(args: &Args) -> anyhow::Result<()> {
    let proxies = match &args.discovery_address {
        Some(address) => from_address(address).await?,
        None => from_cluster(&args.istio_namespace, &args.revision).await?,
    };
    match &args.pod {
        None => print!("{}", proxy_status::table(&proxies)),
        Some(pod) => {
            let found = proxy_status::find(&proxies, pod);
            if found.is_empty() {
                bail!("proxy {pod:?} is not connected to discovery ({} proxies are)", proxies.len());
            }
            for proxy in found {
                print!("{}", proxy_status::detail(proxy));
            }
        }
    }
    Ok(())
}

async fn from_address(address: &str) -> anyhow::Result<Vec<ProxyStatus>> {
    let authority = address.trim_start_matches("http://").trim_end_matches('/');
    let response = local_request(authority, "GET", "/debug/syncz", Duration::from_secs(10))
        .await
        .with_context(|| format!("GET http://{authority}/debug/syncz"))?;
    if response.status != 200 {
        bail!("GET http://{authority}/debug/syncz: HTTP {}", response.status);
    }
    let syncz: serde_json::Value = serde_json::from_str(&response.body).context("discovery's /debug/syncz")?;
    proxy_status::from_syncz(&syncz, authority).map_err(anyhow::Error::msg)
}

async fn from_cluster(namespace: &str, revision: &str) -> anyhow::Result<Vec<ProxyStatus>> {
    let client = kube_client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app=istiod,istio.io/rev={revision}");
    let list = pods
        .list(&ListParams::default().labels(&selector).fields("status.phase=Running"))
        .await
        .with_context(|| format!("listing discovery pods ({selector}) in {namespace}"))?;
    if list.items.is_empty() {
        bail!("no running discovery pod ({selector}) in namespace {namespace}");
    }
    let mut all = Vec::new();
    for pod in list.items {
        let name = pod.metadata.name.unwrap_or_default();
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}:{MONITORING_PORT}/proxy/debug/syncz");
        let request = http::Request::get(&path).body(Vec::new()).context("building the request")?;
        let text = client.request_text(request).await.with_context(|| format!("GET {path}"))?;
        let syncz: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{name}: /debug/syncz"))?;
        all.extend(proxy_status::from_syncz(&syncz, &name).map_err(anyhow::Error::msg)?);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}
