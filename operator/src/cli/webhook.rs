//! `rudder webhook`: the admission server alone (`/inject`, `/validate`, `/ready`), for tests
//! and for running the injector outside `rudder discovery`. Config and certificates as
//! described in [`super::admission`]; the config comes from files unless `--from-cluster`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;

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
    admission::run_admission(&args.admission, listen, cluster, crate::signals::shutdown_signal()).await
}
