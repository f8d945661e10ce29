//! `rudder kube-inject -f FILE|- [--injectConfigFile F] [--meshConfigFile F] [--valuesFile F]
//! [--operatorFileName IOP] [-r REV] [-o OUT]`: injects the sidecar into the workloads of a YAML
//! stream offline (spec §2.8), with the same mutation the webhook uses. Without files it uses
//! the default injector config, Istio's mesh defaults and Rudder's image hub and tag.
//!
//! Exit codes: 0 done (skipped workloads are reported on stderr), 1 injection failed (e.g. an
//! invalid annotation), 2 an input could not be read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rudder_webhook::inject::kube_inject::{Sources, context_from_sources, inject_documents};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest to inject; `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    filename: PathBuf,
    /// Where to write the result (default stdout).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The injector `config` (or its ConfigMap).
    #[arg(long = "injectConfigFile")]
    inject_config_file: Option<PathBuf>,
    /// The mesh config (or the `istio` ConfigMap).
    #[arg(long = "meshConfigFile")]
    mesh_config_file: Option<PathBuf>,
    /// The injector `values` (or its ConfigMap).
    #[arg(long = "valuesFile")]
    values_file: Option<PathBuf>,
    /// An IstioOperator supplying hub, tag, revision, values and meshConfig (wins over the files).
    #[arg(long = "operatorFileName")]
    operator_file_name: Option<PathBuf>,
    /// Control-plane revision to inject for.
    #[arg(short = 'r', long = "revision")]
    revision: Option<String>,
}

fn read(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("stdin: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_opt(path: Option<&PathBuf>) -> Result<Option<String>, String> {
    path.map(|p| read(p)).transpose()
}

fn sources(args: &Args) -> Result<Sources, String> {
    Ok(Sources {
        inject_config: read_opt(args.inject_config_file.as_ref())?,
        mesh_config: read_opt(args.mesh_config_file.as_ref())?,
        values: read_opt(args.values_file.as_ref())?,
        operator: read_opt(args.operator_file_name.as_ref())?,
        revision: args.revision.clone(),
    })
}

pub fn run(args: &Args) -> ExitCode {
    let (input, sources) = match read(&args.filename).and_then(|text| Ok((text, sources(args)?))) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = match context_from_sources(&sources) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let injected = match inject_documents(&ctx, &input) {
        Ok(injected) => injected,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for message in &injected.messages {
        eprintln!("{message}");
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, &injected.yaml).map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout().lock().write_all(injected.yaml.as_bytes()).map_err(|e| format!("stdout: {e}")),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
