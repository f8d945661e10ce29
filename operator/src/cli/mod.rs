//! `rudder`'s verbs, shaped like istioctl's.

pub mod admission;
mod analyze;
mod bench;
mod ca;
mod demo;
mod discovery;
mod echo;
mod install;
mod kube_inject;
mod manifest;
mod operator;
mod proxy;
mod proxy_config;
mod proxy_status;
mod tag;
mod uninstall;
mod validate;
mod verify;
mod webhook;

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
    /// Analyze Istio configuration across objects (files, the cluster, or both), as istioctl analyze.
    Analyze(analyze::Args),
    /// Install a control plane: apply, prune, default revision tag, wait until ready.
    Install(install::Args),
    /// Remove a revision's control plane, or everything with --purge.
    Uninstall(uninstall::Args),
    /// Check that every installed object exists and Deployments are ready.
    VerifyInstall(verify::Args),
    /// Manage revision tags.
    Tag(tag::Args),
    /// Install or remove the in-cluster operator (`operator init`, `operator remove`).
    Operator(operator::Args),
    /// Render an IstioOperator into Kubernetes objects (`manifest generate`).
    Manifest(manifest::Args),
    /// Add the sidecar to the workloads of a YAML file, offline.
    KubeInject(kube_inject::Args),
    /// Run the admission server alone (sidecar injection and config validation over HTTPS).
    Webhook(webhook::Args),
    /// Run the test/demo workload: an HTTP/1.1 + h2c echo server that names its instance.
    Echo(echo::Args),
    /// Run discovery: the service registry (config directory or Kubernetes), the ADS server
    /// that keeps every Envoy's config current, and the admission server.
    Discovery(Box<discovery::Args>),
    /// Run the local demo: discovery, workloads and Envoy sidecars on 127.0.0.x, walking
    /// through the traffic scenarios of examples/traffic.
    Demo(demo::Args),
    /// The proxy agent: write Envoy's bootstrap and run Envoy (`proxy sidecar|router|bootstrap|wait|request|init`).
    Proxy(proxy::Args),
    /// Show what a proxy's Envoy holds: clusters, listeners, routes, endpoints, secrets.
    ProxyConfig(proxy_config::Args),
    /// Show every proxy's sync state per type (SYNCED, NOT SENT, STALE with Envoy's rejection).
    ProxyStatus(proxy_status::Args),
    /// Mesh CA helpers for file mode: issue an agent's token, print the root.
    Ca(ca::Args),
    /// Discovery benchmarks: write a synthetic mesh (`bench mesh`), load a running discovery (`bench xds`).
    Bench(bench::Args),
}

impl Cli {
    /// Runs the chosen verb and returns the process exit code.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Validate(args) => validate::run(&args),
            Command::Ca(args) => ca::run(&args),
            Command::Analyze(args) => analyze::run(&args),
            Command::Install(args) => install::run(&args),
            Command::Uninstall(args) => uninstall::run(&args),
            Command::VerifyInstall(args) => verify::run(&args),
            Command::Tag(args) => tag::run(&args),
            Command::Operator(args) => operator::run(&args),
            Command::Manifest(args) => manifest::run(&args),
            Command::KubeInject(args) => kube_inject::run(&args),
            Command::Webhook(args) => webhook::run(&args),
            Command::Echo(args) => echo::run(&args),
            Command::Demo(args) => demo::run(&args),
            Command::Discovery(args) => discovery::run(&args),
            Command::Proxy(args) => proxy::run(&args),
            Command::ProxyStatus(args) => proxy_status::run(&args),
            Command::ProxyConfig(args) => proxy_config::run(&args),
            Command::Bench(args) => bench::run(&args),
        }
    }
}
