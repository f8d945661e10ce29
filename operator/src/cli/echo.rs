//! `rudder echo`: the test/demo workload (see `rudder_xds::echo`), an httpbin-like server over
//! HTTP/1.1 and cleartext h2 that answers with its instance name, version and the request.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use rudder_xds::echo::{self, EchoIdentity};

use super::install::exit_code;

/// `--version` is the workload's version label here, so clap's own version flag is off.
#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Port to listen on (0 picks a free one; the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Instance name reported in responses (default: the host name, else "echo").
    #[arg(long, env = "ECHO_INSTANCE")]
    instance: Option<String>,
    /// Version reported in responses.
    #[arg(long, env = "ECHO_VERSION", default_value = "v1")]
    version: String,
    /// On SIGTERM, keep serving this long before stopping (`5s`), as a well-behaved workload
    /// does while its endpoint is being withdrawn from the clients' load balancers.
    #[arg(long, env = "ECHO_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_delay)]
    shutdown_delay: std::time::Duration,
}

fn parse_delay(text: &str) -> Result<std::time::Duration, String> {
    rudder_config::common::Duration::parse(text).map(rudder_config::common::Duration::to_std)
}

pub fn run(args: &Args) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(serve(args))))
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let identity = EchoIdentity {
        instance: args.instance.clone().filter(|s| !s.is_empty()).unwrap_or_else(hostname),
        version: args.version.clone(),
    };
    let listener = echo::bind(SocketAddr::new(args.address, args.port)).await?;
    println!("listening: http://{}", listener.local_addr()?);
    let delay = args.shutdown_delay;
    let shutdown = async move {
        crate::signals::shutdown_signal().await;
        if !delay.is_zero() {
            println!("stopping in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    };
    echo::serve(listener, echo::router(identity), shutdown).await;
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "echo".to_owned())
}
