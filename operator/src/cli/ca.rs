//! `rudder ca`: the mesh CA's file-mode helpers.
//!
//! * `token --ca-dir DIR --namespace NS --service-account SA [-o FILE]`: a token with which an
//!   agent proves that identity to discovery's CA (`rudder proxy … --ca-token FILE`). Only who
//!   can read the CA directory's `token-key` can issue one; in a cluster, agents use their
//!   service-account token instead.
//! * `root --ca-dir DIR`: print the mesh root (what agents get as `--ca-root-cert`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use rudder_xds::ca::CaMaterial;
use rudder_xds::ca_service::FileTokens;

use super::install::exit_code;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Issue a CA token for one workload identity (file mode).
    Token(TokenArgs),
    /// Print the mesh root certificate (PEM).
    Root(RootArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The CA directory discovery runs with (`rudder discovery --ca-dir`).
    #[arg(long)]
    ca_dir: PathBuf,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Write the token here (mode 0600) instead of printing it.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RootArgs {
    #[arg(long)]
    ca_dir: PathBuf,
}

pub fn run(args: &Args) -> ExitCode {
    exit_code(match &args.command {
        CaCommand::Token(token) => issue(token),
        CaCommand::Root(root) => print_root(root),
    })
}

fn issue(args: &TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.namespace.is_empty() && !args.namespace.contains(':'), "--namespace: not a namespace name");
    anyhow::ensure!(
        !args.service_account.is_empty() && !args.service_account.contains(':'),
        "--service-account: not a service account name"
    );
    // The trust domain is the CA's business at signing time; the token names only ns and sa.
    let tokens = FileTokens::load_or_create_dir(&args.ca_dir, "")
        .with_context(|| format!("the token key in {}", args.ca_dir.display()))?;
    let token = tokens.issue(&args.namespace, &args.service_account);
    match &args.output {
        Some(path) => {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
            file.write_all(token.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        }
        None => {
            println!("{token}");
            Ok(())
        }
    }
}

fn print_root(args: &RootArgs) -> anyhow::Result<()> {
    let read = |name: &str| std::fs::read_to_string(args.ca_dir.join(name)).ok();
    let material = CaMaterial::from_entries(read)?
        .with_context(|| format!("{}: no CA (start discovery with --ca-dir first)", args.ca_dir.display()))?;
    print!("{}", material.root_cert);
    Ok(())
}
