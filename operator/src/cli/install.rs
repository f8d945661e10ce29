//! `rudder install [-f FILE]... [--set k=v]... [-r REV] [-y] [--dry-run] [--readiness-timeout 300s]`:
//! renders the control plane and applies it (see [`rudder_operator::install`](crate::install)).
//! Also holds what the cluster verbs share: the kube client, confirmation prompts, durations.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::Client;

use crate::install::{InstallOptions, Progress};
use crate::manifest::Manifest;
use crate::render::{RenderError, RenderRequest, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// IstioOperator files to merge, in order.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Override a value, `path=value` (escape dots in keys with `\.`).
    #[arg(short = 's', long = "set")]
    set: Vec<String>,
    /// Control-plane revision to install.
    #[arg(short = 'r', long)]
    revision: Option<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "skip-confirmation")]
    yes: bool,
    /// Print what would be applied and pruned; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for Deployments to become ready.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    readiness_timeout: Duration,
}

/// Renders the manifest the cluster verbs install, from the same inputs as `manifest generate`.
pub fn render_for_cli(files: &[PathBuf], set: &[String], revision: Option<&str>) -> anyhow::Result<Manifest> {
    let files = super::manifest::read_files(files).map_err(anyhow::Error::msg)?;
    let req = RenderRequest { files, set: set.to_vec(), revision: revision.map(str::to_owned), ..Default::default() };
    match render(&req) {
        Ok(manifest) => Ok(manifest),
        Err(RenderError::Invalid(lines)) => bail!("invalid IstioOperator:\n{}", lines.join("\n")),
        Err(e) => Err(e.into()),
    }
}

pub fn run(args: &Args) -> ExitCode {
    exit_code(block_on(install(args)))
}

async fn install(args: &Args) -> anyhow::Result<()> {
    let manifest = render_for_cli(&args.files, &args.set, args.revision.as_deref())?;
    for note in &manifest.notes {
        println!("note: {note}");
    }
    if !args.yes && !args.dry_run {
        let revision = crate::install::plan::revision_name(manifest.revision.as_deref()).to_owned();
        let question = format!("This will install revision {revision} into namespace {}. Proceed?", manifest.namespace);
        if !confirm(&question)? {
            bail!("cancelled");
        }
    }
    let client = kube_client().await?;
    let opts =
        InstallOptions { dry_run: args.dry_run, readiness_timeout: args.readiness_timeout, ..Default::default() };
    crate::install::install(&client, &manifest, &opts, &mut Progress::stdout()).await?;
    Ok(())
}

/// Runs a verb's future on a fresh runtime.
pub(crate) fn block_on<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?.block_on(fut)
}

/// 0 on success; otherwise prints the error chain and returns 1.
pub(crate) fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A client from the default configuration: `KUBECONFIG`, else `~/.kube/config`, else the
/// in-cluster service account. Errors say which one was tried.
pub(crate) async fn kube_client() -> anyhow::Result<Client> {
    let source = config_source();
    let config = kube::Config::infer().await.with_context(|| format!("loading the Kubernetes config from {source}"))?;
    Client::try_from(config).with_context(|| format!("creating a Kubernetes client from {source}"))
}

fn config_source() -> String {
    if let Some(path) = std::env::var_os("KUBECONFIG") {
        return format!("KUBECONFIG={}", path.to_string_lossy());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    if home.join(".kube/config").exists() {
        return "~/.kube/config".to_owned();
    }
    "the in-cluster service account (KUBECONFIG is not set and there is no ~/.kube/config)".to_owned()
}

/// Asks a yes/no question on the terminal; anything but `y`/`yes` (or no terminal) is no.
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{question} — no terminal to ask on; pass -y to proceed");
    }
    print!("{question} (y/N) ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Parses `300s`, `5m`, `1h`, `1500ms` or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration like 300s or 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("{text:?} has an unknown unit; use ms, s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn cli_verbs_render_the_default_profile_without_files() {
        let manifest = render_for_cli(&[], &[], Some("canary")).expect("renders");
        assert_eq!(manifest.revision.as_deref(), Some("canary"));
        assert!(manifest.objects.iter().any(|o| o.object.metadata.name.as_deref() == Some("istiod-canary")));
    }
}
