//! `rudder discovery`: the control plane's discovery role. Builds the service registry from a
//! config directory (`--config-dir`, for hosts without Kubernetes) or from the cluster, and
//! serves Envoy config over ADS (SotW and delta) with metrics and debug endpoints on the
//! monitoring port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use rudder_config::common::Duration as GoDuration;
use rudder_config::mesh::{self, MeshConfig};
use rudder_xds::model::Snapshot;
use rudder_xds::registry::{files, kube as kube_registry};
use rudder_xds::server::{DebounceOptions, DiscoveryServer, ServerOptions};
use tokio::sync::watch;

use super::install::exit_code;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read Istio config (ServiceEntry, WorkloadEntry, VirtualService, …, and an `istio`
    /// ConfigMap with `data.mesh`) from this directory and follow its changes, instead of
    /// watching a Kubernetes cluster.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// MeshConfig YAML applied over Istio's defaults (before any `istio` ConfigMap).
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Where proxies connect for ADS (plaintext gRPC, as istiod's 15010).
    #[arg(long, default_value = "0.0.0.0:15010")]
    grpc_address: SocketAddr,
    /// Metrics (`/metrics`), readiness (`/ready`) and debug endpoints (`/debug/syncz`,
    /// `/debug/adsz`, `/debug/config_dump?proxyID=`).
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitoring_address: SocketAddr,
    /// Push once config has been quiet this long (istiod's PILOT_DEBOUNCE_AFTER).
    #[arg(long, env = "PILOT_DEBOUNCE_AFTER", default_value = "100ms", value_parser = go_duration)]
    debounce_after: std::time::Duration,
    /// Push at the latest this long after the first change of a burst (PILOT_DEBOUNCE_MAX).
    #[arg(long, env = "PILOT_DEBOUNCE_MAX", default_value = "1s", value_parser = go_duration)]
    debounce_max: std::time::Duration,
    /// How often `--config-dir` is scanned for changes.
    #[arg(long, default_value = "200ms", value_parser = go_duration)]
    poll_interval: std::time::Duration,
}

fn go_duration(text: &str) -> Result<std::time::Duration, String> {
    GoDuration::parse(text).map(GoDuration::to_std)
}

pub fn run(args: &Args) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn,tower=warn".into()),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(serve(args))))
}

fn base_mesh(args: &Args) -> anyhow::Result<MeshConfig> {
    match &args.mesh_config {
        None => Ok(MeshConfig::istio_defaults()),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            mesh::apply_yaml_over_defaults(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
    }
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let mesh = base_mesh(args)?;
    let (tx, rx) = watch::channel(Arc::new(Snapshot { mesh: mesh.clone(), ..Snapshot::default() }));
    let options = ServerOptions {
        debounce: DebounceOptions { quiet: args.debounce_after, max_delay: args.debounce_max },
        ..ServerOptions::default()
    };
    let server = DiscoveryServer::new(rx, options);
    let grpc = tokio::net::TcpListener::bind(args.grpc_address)
        .await
        .with_context(|| format!("binding the gRPC address {}", args.grpc_address))?;
    let monitoring = tokio::net::TcpListener::bind(args.monitoring_address)
        .await
        .with_context(|| format!("binding the monitoring address {}", args.monitoring_address))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let registry = match &args.config_dir {
        Some(dir) => {
            anyhow::ensure!(dir.is_dir(), "--config-dir {}: not a directory", dir.display());
            tracing::info!(dir = %dir.display(), "registry: config directory");
            tokio::spawn(files::watch_dir(dir.clone(), mesh, tx, args.poll_interval, stopped()))
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("no --config-dir given and no Kubernetes configuration found (KUBECONFIG or in-cluster)")?;
            tracing::info!("registry: Kubernetes");
            tokio::spawn(kube_registry::run(client, mesh, tx, stopped()))
        }
    };
    let monitoring_app = server.monitoring_router();
    let monitoring_task = tokio::spawn({
        let stopped = stopped();
        async move { axum::serve(monitoring, monitoring_app).with_graceful_shutdown(stopped).await }
    });
    tracing::info!(grpc = %args.grpc_address, monitoring = %args.monitoring_address, "discovery serving");
    let grpc_task = tokio::spawn({
        let server = server.clone();
        let stopped = stopped();
        async move { server.serve(grpc, stopped).await }
    });
    crate::signals::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = registry.await;
    let _ = monitoring_task.await;
    if let Ok(Err(e)) = grpc_task.await {
        anyhow::bail!("gRPC server: {e}");
    }
    Ok(())
}
