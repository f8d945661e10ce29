//! `rudder tag set|list|remove|generate`: revision tags (see [`crate::tag`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;

use super::install::{block_on, confirm, exit_code, kube_client, render_for_cli};
use crate::tag::{self, SetOptions, TagError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TagCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TagCommand {
    /// Create or re-point a tag at a revision.
    Set {
        tag: String,
        #[arg(short = 'r', long, required = true)]
        revision: String,
        /// Re-point a tag that already points at another revision.
        #[arg(long)]
        overwrite: bool,
        /// The revision's injector webhook configuration to clone, when it has several.
        #[arg(long)]
        webhook_name: Option<String>,
        /// Accepted for istioctl compatibility; set never prompts.
        #[arg(short = 'y', long = "skip-confirmation")]
        yes: bool,
    },
    /// List tags, the revision each points at and the namespaces using it.
    List,
    /// Remove a tag.
    Remove {
        tag: String,
        /// Remove even while namespaces use the tag.
        #[arg(short = 'y', long = "skip-confirmation")]
        yes: bool,
    },
    /// Print the tag's webhook configuration as YAML without applying it.
    Generate {
        tag: String,
        #[arg(short = 'r', long, required = true)]
        revision: String,
        #[arg(long)]
        webhook_name: Option<String>,
        /// Read the revision's injector webhook configuration from this YAML file (for example
        /// `kubectl get mutatingwebhookconfiguration -o yaml`) instead of rendering it.
        #[arg(long, conflicts_with = "files")]
        webhook_file: Option<PathBuf>,
        /// IstioOperator files to render the revision from; without them (and without
        /// `--webhook-file`) the default profile is rendered. No cluster is needed.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
}

pub fn run(args: &Args) -> ExitCode {
    exit_code(block_on(dispatch(&args.command)))
}

async fn dispatch(command: &TagCommand) -> anyhow::Result<()> {
    match command {
        TagCommand::Set { tag, revision, overwrite, webhook_name, yes: _ } => {
            let client = kube_client().await?;
            let opts = SetOptions { overwrite: *overwrite, webhook_name: webhook_name.clone() };
            let mwc = tag::set(&client, tag, revision, &opts).await?;
            println!("✔ tag {tag} points at revision {revision} ({})", kube::ResourceExt::name_any(&mwc));
        }
        TagCommand::List => {
            let client = kube_client().await?;
            print!("{}", list_table(&tag::list_tags(&client).await?));
        }
        TagCommand::Remove { tag, yes } => remove(tag, *yes).await?,
        TagCommand::Generate { tag, revision, webhook_name: _, webhook_file, files } => {
            let source = match webhook_file {
                Some(path) => webhook_from_file(path, revision)?,
                None => rendered_webhook(files, revision)?,
            };
            print!("{}", serde_saphyr::to_string(&tag::tag_webhook(&source, tag, revision))?);
        }
    }
    Ok(())
}

async fn remove(tag: &str, yes: bool) -> anyhow::Result<()> {
    let client = kube_client().await?;
    match tag::remove(&client, tag, yes).await {
        Err(TagError::InUse { namespaces, .. }) => {
            let question = format!("Namespaces {} still use tag {tag}. Remove it anyway?", namespaces.join(", "));
            if !confirm(&question)? {
                bail!("cancelled");
            }
            tag::remove(&client, tag, true).await?;
        }
        other => other?,
    }
    println!("✔ tag {tag} removed");
    Ok(())
}

/// The injector webhook configuration the renderer makes for `revision` (offline).
fn rendered_webhook(files: &[PathBuf], revision: &str) -> anyhow::Result<MutatingWebhookConfiguration> {
    let rev = (revision != "default").then_some(revision);
    let manifest = render_for_cli(files, &[], rev)?;
    let hook = manifest
        .objects
        .into_iter()
        .find(|o| o.object.types.as_ref().is_some_and(|t| t.kind == "MutatingWebhookConfiguration"))
        .with_context(|| format!("revision {revision} renders no injector webhook (is pilot disabled?)"))?;
    Ok(serde_json::from_value(serde_json::to_value(&hook.object)?)?)
}

/// The first MutatingWebhookConfiguration in a YAML file whose `istio.io/rev` is `revision`
/// (or the only one, if it has no such label).
fn webhook_from_file(path: &PathBuf, revision: &str) -> anyhow::Result<MutatingWebhookConfiguration> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs = rudder_config::load::documents(&path.display().to_string(), &text)?;
    let mut hooks = Vec::new();
    for doc in docs {
        if doc.get("kind").and_then(|k| k.as_str()) == Some("MutatingWebhookConfiguration") {
            hooks.push(serde_json::from_value::<MutatingWebhookConfiguration>(doc)?);
        }
    }
    let rev_of = |m: &MutatingWebhookConfiguration| kube::ResourceExt::labels(m).get("istio.io/rev").cloned();
    let pick = hooks.iter().position(|m| rev_of(m).as_deref() == Some(revision));
    match (pick, hooks.len()) {
        (Some(i), _) => Ok(hooks.swap_remove(i)),
        (None, 1) if rev_of(&hooks[0]).is_none() => Ok(hooks.swap_remove(0)),
        _ => bail!("{} holds no injector webhook configuration for revision {revision}", path.display()),
    }
}

fn list_table(tags: &[tag::TagInfo]) -> String {
    let mut out = String::from("TAG\tREVISION\tNAMESPACES\n");
    for t in tags {
        out.push_str(&format!("{}\t{}\t{}\n", t.tag, t.revision, t.namespaces.join(",")));
    }
    out
}
