//! `rudder verify-install [-f FILE]... [-r REV]`: checks that every object the installation
//! renders exists and that its Deployments are ready; prints a table; exit 1 if anything is off.

use std::path::PathBuf;
use std::process::ExitCode;

use super::install::{block_on, kube_client, render_for_cli};
use crate::install::plan::{Owner, plan_apply};
use crate::install::verify;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// IstioOperator files the installation was made from.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Revision to verify.
    #[arg(short = 'r', long)]
    revision: Option<String>,
}

pub fn run(args: &Args) -> ExitCode {
    match block_on(check(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(args: &Args) -> anyhow::Result<bool> {
    let manifest = render_for_cli(&args.files, &[], args.revision.as_deref())?;
    let planned = plan_apply(&manifest, &Owner::of_manifest(&manifest))?;
    let client = kube_client().await?;
    let rows = verify::check(&client, &planned).await?;
    print!("{}", verify::table(&rows));
    let ok = verify::all_ok(&rows);
    let bad = rows.iter().filter(|r| r.status != verify::Status::Ok).count();
    match ok {
        true => println!("✔ {} objects verified", rows.len()),
        false => println!("✘ {bad} of {} objects missing or not ready", rows.len()),
    }
    Ok(ok)
}
