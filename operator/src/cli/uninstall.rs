//! `rudder uninstall (--revision R | -f FILE | --purge) [-y] [--force] [--dry-run]`: removes one
//! revision's control plane (Base and CRDs stay) or, with `--purge`, everything; refuses while
//! proxies still use what it would remove unless `--force`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::install::{block_on, confirm, exit_code, kube_client, render_for_cli};
use crate::install::Progress;
use crate::install::plan::revision_name;
use crate::install::uninstall::{self, Scope};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["revision", "files", "purge"])))]
pub struct Args {
    /// Revision to remove (`default` for the unrevisioned control plane).
    #[arg(short = 'r', long)]
    revision: Option<String>,
    /// The IstioOperator files the revision was installed from.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Remove every revision, the Base component, CRDs and all revision tags.
    #[arg(long)]
    purge: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "skip-confirmation")]
    yes: bool,
    /// Remove even while proxies are still connected.
    #[arg(long)]
    force: bool,
    /// Print what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: &Args) -> ExitCode {
    exit_code(block_on(uninstall(args)))
}

fn scope(args: &Args) -> anyhow::Result<Scope> {
    if args.purge {
        return Ok(Scope::Purge);
    }
    if let Some(rev) = &args.revision {
        return Ok(Scope::Revision(revision_name(Some(rev)).to_owned()));
    }
    let manifest = render_for_cli(&args.files, &[], None)?;
    Ok(Scope::Revision(revision_name(manifest.revision.as_deref()).to_owned()))
}

async fn uninstall(args: &Args) -> anyhow::Result<()> {
    let scope = scope(args)?;
    let client = kube_client().await?;
    let keys = uninstall::plan(&client, &scope, args.force).await?;
    if keys.is_empty() {
        println!("Nothing to remove.");
        return Ok(());
    }
    let verb = if args.dry_run { "would remove" } else { "will remove" };
    for key in &keys {
        println!("{verb} {key}");
    }
    if args.dry_run {
        return Ok(());
    }
    if !args.yes && !confirm(&format!("Remove these {} objects?", keys.len()))? {
        bail!("cancelled");
    }
    uninstall::execute(&client, &keys, &mut Progress::stdout()).await?;
    if scope == Scope::Purge {
        uninstall::remove_mesh_ca_objects(&client, &mut Progress::stdout(), std::time::Duration::from_secs(90)).await?;
    }
    let left = uninstall::settle_crds(&client, &keys, std::time::Duration::from_secs(120)).await;
    if !left.is_empty() {
        eprintln!("warning: still being deleted by the API server: CustomResourceDefinition {}", left.join(", "));
    }
    Ok(())
}
