//! `rudder webhook`: the admission server alone (`/inject`, `/validate`, `/ready`), for tests
//! and for running the injector outside `rudder discovery`. Config and certificates as
//! described in [`super::admission`]; the config comes from files unless `--from-cluster`.
//! With `--monitoring-address`, its metrics (`sidecar_injection_*`, `galley_validation_*`) are
//! served there at `/metrics`, beside `/logging`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;
use rudder_webhook::metrics::Metrics;

use super::admission::{self, AdmissionArgs};
use super::install::{exit_code, kube_client};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (HTTPS; 0 picks a free one, printed as `listening: https://ADDR`).
    #[arg(long, default_value_t = 15017)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    address: IpAddr,
    /// Read the injector and mesh ConfigMaps of the revision from the cluster (KUBECONFIG or
    /// in-cluster) and follow their changes, instead of files.
    #[arg(long, conflicts_with_all = ["inject_config", "inject_values"])]
    from_cluster: bool,
    /// Serve `/metrics` (OpenMetrics text) and `/logging` over plain HTTP on this address
    /// (port 0 picks a free one, printed as `monitoring: http://ADDR`). Off unless given.
    #[arg(long)]
    monitoring_address: Option<SocketAddr>,
    #[command(flatten)]
    admission: AdmissionArgs,
    #[command(flatten)]
    log: crate::logging::LogArgs,
}

pub fn run(args: &Args) -> ExitCode {
    crate::logging::init(&args.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(serve(args))))
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let cluster = if args.from_cluster { Some(kube_client().await?) } else { None };
    let listen = SocketAddr::new(args.address, args.port);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let monitoring = match args.monitoring_address {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the monitoring address {address}"))?;
            println!("monitoring: http://{}", listener.local_addr()?);
            let app = monitoring_router(Arc::new(registry)).merge(crate::logging::router());
            Some(tokio::spawn(async move { axum::serve(listener, app).await }))
        }
        None => None,
    };
    let served =
        admission::run_admission(&args.admission, listen, cluster, metrics, crate::signals::shutdown_signal()).await;
    if let Some(task) = monitoring {
        task.abort();
    }
    served
}

/// `GET /metrics`: `registry` as OpenMetrics text.
fn monitoring_router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => {
                        ([(header::CONTENT_TYPE, crate::controller::metrics::CONTENT_TYPE)], text).into_response()
                    }
                    Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
                }
            }
        }),
    )
}
