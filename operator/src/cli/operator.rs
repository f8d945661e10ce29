//! `rudder operator init [--hub H] [--tag T] [--operatorNamespace NS] [--watchedNamespaces A,B]
//! [-r REV] [-f IOP.yaml] [--dry-run]` and `rudder operator remove (-r REV | --purge) [-y]`
//! (§1.8.1), and `rudder operator run [--watched-namespaces A,B] [--revision R]
//! [--metrics-port 8383] [--leader-elect=false]`, the in-cluster controller ([`crate::controller`]). Init applies the operator (see [`crate::operator_init`]) then the CR; re-running
//! upgrades in place.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::install::{block_on, confirm, exit_code, kube_client};
use crate::controller::run::{LeaderElection, RunOptions};
use crate::controller::{self};
use crate::install::Progress;
use crate::operator_init::{self, InitOptions, build};
use crate::render::{DEFAULT_HUB, DEFAULT_TAG};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Install the operator (and, with -f, an IstioOperator CR); re-running upgrades it.
    Init(InitArgs),
    /// Remove the operator of one revision, or of all with --purge.
    Remove(RemoveArgs),
    /// Run the controller that reconciles IstioOperator CRs (what the operator Deployment runs).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    log: crate::logging::LogArgs,
    /// Namespaces (comma list) whose IstioOperator CRs to reconcile; empty means all.
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',', default_value = "")]
    watched_namespaces: Vec<String>,
    /// Only reconcile CRs whose spec.revision is this.
    #[arg(long, env = "REVISION")]
    revision: Option<String>,
    /// Port serving /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = 8383)]
    metrics_port: u16,
    /// Reconcile only while holding the Lease `istio-operator-lock[-REV]`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader election Lease (default: the pod's namespace, else istio-operator).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Registry of the operator image.
    #[arg(long, default_value = DEFAULT_HUB)]
    hub: String,
    /// Tag of the operator image.
    #[arg(long, default_value = DEFAULT_TAG)]
    tag: String,
    /// Namespace the operator runs in.
    #[arg(long = "operatorNamespace", alias = "operator-namespace", default_value = "istio-operator")]
    operator_namespace: String,
    /// Namespaces (comma list) whose IstioOperator CRs the operator reconciles.
    #[arg(
        long = "watchedNamespaces",
        alias = "watched-namespaces",
        default_value = "istio-system",
        value_delimiter = ','
    )]
    watched_namespaces: Vec<String>,
    /// Revision the operator serves.
    #[arg(short = 'r', long)]
    revision: Option<String>,
    /// An IstioOperator CR to create once the operator is installed.
    #[arg(short = 'f', long = "filename")]
    file: Option<PathBuf>,
    /// Print the objects as YAML; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["revision", "purge"])))]
struct RemoveArgs {
    /// Revision whose operator to remove (`default` for the unrevisioned one).
    #[arg(short = 'r', long)]
    revision: Option<String>,
    /// Remove the operators of every revision.
    #[arg(long)]
    purge: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "skip-confirmation")]
    yes: bool,
}

pub fn run(args: &Args) -> ExitCode {
    match &args.verb {
        Verb::Init(a) => exit_code(init(a)),
        Verb::Remove(a) => exit_code(block_on(remove(a))),
        Verb::Run(a) => exit_code(run_controller(a)),
    }
}

impl InitArgs {
    fn options(&self) -> InitOptions {
        InitOptions {
            hub: self.hub.clone(),
            tag: self.tag.clone(),
            operator_namespace: self.operator_namespace.clone(),
            watched_namespaces: self.watched_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect(),
            revision: self.revision.clone(),
        }
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let crs = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            build::iop_objects(&path.display().to_string(), &text)?
        }
        None => Vec::new(),
    };
    let objects = build::init_objects(&args.options(), &crs)?;
    if args.dry_run {
        print!("{}", build::to_yaml(&objects)?);
        return Ok(());
    }
    block_on(async {
        let client = kube_client().await?;
        operator_init::init(&client, &objects, &mut Progress::stdout()).await?;
        Ok(())
    })
}

async fn remove(args: &RemoveArgs) -> anyhow::Result<()> {
    let revision = if args.purge { None } else { args.revision.as_deref() };
    let client = kube_client().await?;
    let keys = operator_init::plan_remove(&client, revision).await?;
    if keys.is_empty() {
        println!("Nothing to remove.");
        return Ok(());
    }
    for key in &keys {
        println!("will remove {key}");
    }
    if !args.yes && !confirm(&format!("Remove these {} objects?", keys.len()))? {
        bail!("cancelled");
    }
    operator_init::remove(&client, &keys, &mut Progress::stdout()).await?;
    let left = crate::install::uninstall::settle_crds(&client, &keys, std::time::Duration::from_secs(120)).await;
    if !left.is_empty() {
        eprintln!("warning: still being deleted by the API server: CustomResourceDefinition {}", left.join(", "));
    }
    Ok(())
}

fn run_controller(args: &RunArgs) -> anyhow::Result<()> {
    crate::logging::init(&args.log);
    let opts = RunOptions {
        watched_namespaces: args.watched_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect(),
        revision: args.revision.clone().filter(|r| !r.is_empty()),
        metrics_port: args.metrics_port,
        leader_election: args.leader_elect.then(|| {
            let mut le = LeaderElection::from_env();
            if let Some(ns) = args.leader_election_namespace.as_ref().filter(|n| !n.is_empty()) {
                le.namespace = ns.clone();
            }
            le
        }),
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?.block_on(async {
        let client = kube_client().await?;
        controller::run::run(client, opts).await
    })
}
