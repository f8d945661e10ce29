//! `rudder webhook`: the admission server alone (`/inject`, `/validate`, `/ready`), for tests
//! and for running the injector outside `rudder discovery`.
//!
//! Certificates: `--tls-cert/--tls-key` files (reloaded when they change); otherwise a CA and
//! a serving certificate are generated in memory and the CA is written to `--ca-out` (printed
//! as `ca: PATH`) so that clients can trust it; with `--manage-certs` they are kept in a Secret
//! of `--namespace` instead, `caBundle` is patched into the revision's webhook configurations,
//! and the serving certificate is rotated before it expires.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rudder_webhook::certs::{self, CertStore};
use rudder_webhook::server::{self, AppState, Sources};

use super::install::{exit_code, kube_client};

/// How often the config files and the certificate Secret are checked.
const CONFIG_POLL: Duration = Duration::from_secs(2);
const CERT_POLL: Duration = Duration::from_secs(3600);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (HTTPS).
    #[arg(long, default_value_t = 15017)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    address: IpAddr,
    /// Serving certificate chain (PEM); reloaded when the file changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The injector ConfigMap's `config` (YAML); reloaded when it changes.
    #[arg(long)]
    inject_config: Option<PathBuf>,
    /// The injector ConfigMap's `values` (JSON or YAML); reloaded when it changes.
    #[arg(long)]
    inject_values: Option<PathBuf>,
    /// Mesh config (YAML) over Istio's defaults; reloaded when it changes.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// This control plane's revision.
    #[arg(short = 'r', long)]
    revision: Option<String>,
    /// Namespace of the control plane (certificate names and Secret).
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Where to write a generated CA certificate (default: a file in the temp directory).
    #[arg(long, conflicts_with = "tls_cert")]
    ca_out: Option<PathBuf>,
    /// Keep generated certificates in a Secret and patch caBundle into the revision's webhook
    /// configurations (needs a cluster).
    #[arg(long, conflicts_with = "tls_cert")]
    manage_certs: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(serve(args))))
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let sources = Sources {
        inject_config: args.inject_config.clone(),
        inject_values: args.inject_values.clone(),
        mesh_config: args.mesh_config.clone(),
        revision: args.revision.clone(),
    };
    let state = Arc::new(AppState::new(sources.load()?));
    server::spawn_reloader(state.clone(), sources, CONFIG_POLL);
    let store = cert_store(args).await?;
    let tls = server::tls_config(store)?;
    let listener = server::bind(SocketAddr::new(args.address, args.port)).await?;
    println!("listening: https://{}", listener.local_addr()?);
    server::serve(listener, tls, server::router(state), crate::signals::shutdown_signal()).await;
    Ok(())
}

async fn cert_store(args: &Args) -> anyhow::Result<Arc<CertStore>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(Arc::new(CertStore::from_files(cert, key)?));
    }
    let names = certs::dns_names(&certs::service_name(args.revision.as_deref()), &args.namespace);
    if args.manage_certs {
        return managed_store(args, names).await;
    }
    let bundle = certs::generate(&names, SystemTime::now())?;
    let path = args.ca_out.clone().unwrap_or_else(|| std::env::temp_dir().join("rudder-webhook-ca.pem"));
    std::fs::write(&path, &bundle.ca_cert_pem).with_context(|| format!("writing {}", path.display()))?;
    println!("ca: {}", path.display());
    Ok(Arc::new(CertStore::fixed(bundle.certified_key()?)))
}

/// Certificates from the Secret, with caBundle patching and a rotation task.
async fn managed_store(args: &Args, names: Vec<String>) -> anyhow::Result<Arc<CertStore>> {
    let client = kube_client().await?;
    let secret = format!("{}-webhook-certs", certs::service_name(args.revision.as_deref()));
    let bundle = certs::ensure_secret(&client, &args.namespace, &secret, &names, SystemTime::now()).await?;
    let revision = args.revision.clone();
    let patched = certs::patch_ca_bundles(&client, revision.as_deref(), &bundle.ca_cert_pem).await?;
    println!(
        "certificates from secret {}/{secret}; caBundle patched in {patched} webhook configuration(s)",
        args.namespace
    );
    let store = Arc::new(CertStore::fixed(bundle.certified_key()?));
    let (namespace, rotating) = (args.namespace.clone(), store.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CERT_POLL).await;
            let refreshed = async {
                let bundle = certs::ensure_secret(&client, &namespace, &secret, &names, SystemTime::now()).await?;
                rotating.set(bundle.certified_key()?);
                certs::patch_ca_bundles(&client, revision.as_deref(), &bundle.ca_cert_pem).await
            };
            if let Err(e) = refreshed.await {
                tracing::warn!("certificate refresh failed: {e}");
            }
        }
    });
    Ok(store)
}
