//! `rudder manifest generate [-f FILE]... [--set path=value]... [-r REV]`: renders the control
//! plane an IstioOperator describes and prints it as one YAML stream on stdout; notes (values
//! Rudder keeps but does not act on, validation warnings) go to stderr.
//!
//! Exit codes: 0 rendered, 1 the input is invalid or cannot be rendered, 2 a file could not be read.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::render::{InputFile, RenderError, RenderRequest, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Print the Kubernetes objects an IstioOperator installs.
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// IstioOperator files, merged in order; `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Override one field, relative to `spec` (e.g. `values.global.hub=x`, `revision=canary`).
    #[arg(short = 's', long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Control-plane revision (overrides `spec.revision`).
    #[arg(short = 'r', long = "revision")]
    revision: Option<String>,
}

pub fn run(args: &Args) -> ExitCode {
    match &args.verb {
        Verb::Generate(args) => generate(args),
    }
}

fn generate(args: &GenerateArgs) -> ExitCode {
    let files = match read_files(&args.files) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let req =
        RenderRequest { files, set: args.set.clone(), revision: args.revision.clone(), ..RenderRequest::default() };
    let manifest = match render(&req) {
        Ok(m) => m,
        Err(RenderError::Invalid(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let yaml = match manifest.to_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut err = std::io::stderr().lock();
    for note in &manifest.notes {
        let _ = writeln!(err, "note: {note}");
    }
    let _ = std::io::stdout().lock().write_all(yaml.as_bytes());
    ExitCode::SUCCESS
}

/// Every document of every file, in order, named `file` (or `file:N` past the first).
pub(crate) fn read_files(paths: &[PathBuf]) -> Result<Vec<InputFile>, String> {
    let mut out = Vec::new();
    for path in paths {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("<stdin>: {e}"))?;
            ("<stdin>".to_owned(), text)
        } else {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
            (name, text)
        };
        let docs = rudder_config::load::documents(&name, &text).map_err(|e| e.to_string())?;
        for (i, value) in docs.into_iter().enumerate() {
            let name = if i == 0 { name.clone() } else { format!("{name}:{}", i + 1) };
            out.push(InputFile { name, value });
        }
    }
    Ok(out)
}
