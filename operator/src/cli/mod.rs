//! `rudder`'s verbs, shaped like istioctl's.

mod manifest;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Rudder: a service-mesh control plane and operator that speaks Istio's APIs.
#[derive(Debug, Parser)]
#[command(name = "rudder", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate Istio configuration files (every kind Rudder knows) as istioctl validate does.
    Validate(validate::Args),
    /// Render an IstioOperator into Kubernetes objects (`manifest generate`).
    Manifest(manifest::Args),
}

impl Cli {
    /// Runs the chosen verb and returns the process exit code.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Validate(args) => validate::run(&args),
            Command::Manifest(args) => manifest::run(&args),
        }
    }
}
