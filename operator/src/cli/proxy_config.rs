//! `rudder proxy-config clusters|listeners|routes|endpoints|secret|all [POD] [-n NS]
//! [--admin-address HOST:PORT | -f DUMP.json] [-o short|json|yaml] [--name --port --fqdn
//! --subset --direction]`: what a proxy's Envoy actually holds, read from its own config dump
//! (`/config_dump?include_eds`) and shown as `rudder_xds::proxy_config` formats it. The dump
//! comes from the pod (its `istio-proxy` container runs `rudder proxy request`, through the
//! API server's exec), from an admin address (file mode), or from a saved file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use rudder_xds::agent::supervise::local_request;
use rudder_xds::proxy_config::{self, Filter, Section};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::install::{block_on, exit_code, kube_client};

const DUMP_PATH: &str = "/config_dump?include_eds";
const PROXY_CONTAINER: &str = "istio-proxy";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to show: clusters, listeners, routes, endpoints, secret or all.
    section: Section,
    /// The pod (`name` or `name.namespace`) whose proxy to read.
    pod: Option<String>,
    /// The pod's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Read the proxy's Envoy admin at this address instead of a pod (`host:port`).
    #[arg(long)]
    admin_address: Option<String>,
    /// Read a saved config dump (Envoy's `/config_dump` JSON) instead.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Output: short (tables), json or yaml (the Envoy objects).
    #[arg(short = 'o', long, default_value = "short", value_parser = ["short", "json", "yaml"])]
    output: String,
    /// Only the resource of this name (listener, route configuration, cluster, secret).
    #[arg(long)]
    name: Option<String>,
    /// Only this port.
    #[arg(long)]
    port: Option<u32>,
    /// Only clusters (and endpoints) of this service host.
    #[arg(long)]
    fqdn: Option<String>,
    /// Only clusters (and endpoints) of this subset.
    #[arg(long)]
    subset: Option<String>,
    /// Only inbound or outbound clusters and listeners.
    #[arg(long, value_parser = ["inbound", "outbound"])]
    direction: Option<String>,
}

pub fn run(args: &Args) -> ExitCode {
    exit_code(block_on(show(args)))
}

async fn show(args: &Args) -> anyhow::Result<()> {
    let dump = fetch(args).await?;
    let filter = Filter {
        name: args.name.clone(),
        port: args.port,
        fqdn: args.fqdn.clone(),
        subset: args.subset.clone(),
        direction: args.direction.clone(),
    };
    let text = match args.output.as_str() {
        "json" => serde_json::to_string_pretty(&proxy_config::objects(&dump, args.section, &filter))? + "\n",
        "yaml" => serde_saphyr::to_string(&proxy_config::objects(&dump, args.section, &filter))
            .map_err(|e| anyhow::anyhow!("writing YAML: {e}"))?,
        _ => proxy_config::short(&dump, args.section, &filter),
    };
    print!("{text}");
    Ok(())
}

async fn fetch(args: &Args) -> anyhow::Result<Value> {
    let text = if let Some(file) = &args.file {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    } else if let Some(address) = &args.admin_address {
        let authority = address.trim_start_matches("http://").trim_end_matches('/');
        let response = local_request(authority, "GET", DUMP_PATH, Duration::from_secs(30))
            .await
            .with_context(|| format!("GET http://{authority}{DUMP_PATH}"))?;
        if response.status != 200 {
            bail!("GET http://{authority}{DUMP_PATH}: HTTP {}", response.status);
        }
        response.body
    } else if let Some(pod) = &args.pod {
        let (name, namespace) = match pod.split_once('.') {
            Some((name, namespace)) => (name, namespace),
            None => (pod.as_str(), args.namespace.as_str()),
        };
        from_pod(name, namespace).await?
    } else {
        bail!("name a pod, or give --admin-address or --file");
    };
    serde_json::from_str(&text).context("the config dump is not JSON")
}

/// The dump of a pod's proxy: `rudder proxy request GET /config_dump` in its proxy container.
async fn from_pod(name: &str, namespace: &str) -> anyhow::Result<String> {
    let client = kube_client().await?;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let command = ["rudder", "proxy", "request", "GET", DUMP_PATH];
    let params = AttachParams::default().container(PROXY_CONTAINER).stdout(true).stderr(true);
    let mut attached = pods
        .exec(name, command, &params)
        .await
        .with_context(|| format!("exec in pod {namespace}/{name}, container {PROXY_CONTAINER}"))?;
    let mut stdout = attached.stdout().context("no stdout from the exec")?;
    let mut stderr = attached.stderr().context("no stderr from the exec")?;
    let (mut out, mut err) = (String::new(), String::new());
    let (read_out, read_err) = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
    read_out.context("reading the dump")?;
    read_err.context("reading the exec's errors")?;
    let status = attached.take_status();
    attached.join().await.context("the exec")?;
    if let Some(status) = status
        && let Some(status) = status.await
        && status.status.as_deref() == Some("Failure")
    {
        bail!("{namespace}/{name}: {} {}", status.message.unwrap_or_default(), err.trim());
    }
    Ok(out)
}
