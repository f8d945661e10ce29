//! `rudder validate -f PATH... | -f -`: loads every document, validates every Istio object, and
//! prints each problem as `file:doc Kind namespace/name: field.path: message`, every problem of
//! every file in one run.
//!
//! Exit codes: 0 all valid, 1 something invalid, 2 some input could not be read.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use rudder_config::Validate;
use rudder_config::load::{Problem, load_paths};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories to read (`.yaml`, `.yml`, `.json` below a directory); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Also list every document skipped because its kind is not an Istio kind.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let loads = match load_paths(&args.files) {
        Ok(loads) => loads,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut lines = Vec::new();
    let mut invalid = 0usize;
    let mut skipped_kinds = BTreeSet::new();
    let mut skipped = 0usize;
    for problem in &loads.problems {
        match problem {
            Problem::UnknownKind { id, .. } => {
                skipped += 1;
                skipped_kinds.insert(id.kind.clone());
                if args.verbose {
                    lines.push(format!("skipped: {problem}"));
                }
            }
            _ => {
                invalid += 1;
                lines.push(format!("error: {problem}"));
            }
        }
    }
    for loaded in &loads.objects {
        let report = loaded.object.report();
        if report.has_errors() {
            invalid += 1;
        }
        for item in &report.items {
            let level = match item.severity {
                rudder_config::Severity::Error => "error",
                rudder_config::Severity::Warning => "warning",
            };
            let at = if item.path.is_empty() { String::new() } else { format!("{}: ", item.path) };
            lines.push(format!("{level}: {} {}: {at}{}", loaded.source, loaded.id, item.message));
        }
    }
    let checked = loads.objects.len() + loads.problems.iter().filter(|p| p.is_error()).count();
    let mut err = std::io::stderr().lock();
    for line in &lines {
        let _ = writeln!(err, "{line}");
    }
    let mut summary = if invalid == 0 {
        format!("{checked} Istio object(s) valid")
    } else {
        format!("{invalid} of {checked} Istio object(s) invalid")
    };
    if skipped > 0 {
        let kinds: Vec<_> = skipped_kinds.into_iter().collect();
        summary.push_str(&format!("; skipped {skipped} document(s) of other kinds ({})", kinds.join(", ")));
    }
    println!("{summary}");
    if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
