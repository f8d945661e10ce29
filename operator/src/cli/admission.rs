//! The admission server (`/inject`, `/validate`, `/ready` over HTTPS) as both `rudder webhook`
//! and `rudder discovery` start it: the options they share ([`AdmissionArgs`]), then
//! [`start`] (config, certificates, socket) and [`Admission::serve`].
//!
//! Config: with `--inject-config`/`--inject-values` files, or without a cluster, the files
//! (absent ones mean defaults) and `--mesh-config`, polled for changes. Otherwise, given a
//! cluster, the revision's `istio-sidecar-injector[-<rev>]` and `istio[-<rev>]` ConfigMaps in
//! `--namespace`, watched ([`crate::injector_watch`]); their `mesh` is layered over
//! `--mesh-config` (or Istio's defaults) as discovery's registry does.
//!
//! Certificates: `--tls-cert/--tls-key` files (reloaded when they change); otherwise a CA and
//! a serving certificate are generated in memory and the CA is written to `--ca-out` (printed
//! as `ca: PATH`) so that clients can trust it; with `--manage-certs` they are kept in a Secret
//! of `--namespace` instead, `caBundle` is patched into the revision's webhook configurations,
//! and the serving certificate is rotated before it expires.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rudder_config::mesh::MeshConfig;
use rudder_webhook::certs::{self, CertStore};
use rudder_webhook::metrics::Metrics;
use rudder_webhook::server::{self, AppState, Sources};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::install::kube_client;
use crate::injector_watch;

/// How often the config files are checked, and the certificate Secret refreshed.
const CONFIG_POLL: Duration = Duration::from_secs(2);
/// How often the certificate Secret is read: a rotation (a deleted or replaced Secret, or a
/// certificate due) is served within this.
const CERT_POLL: Duration = Duration::from_secs(15);
/// How long the API servers get to see a new `caBundle` before a certificate of the new CA is
/// served (they watch webhook configurations; a second is usual).
const CA_PROPAGATION: Duration = Duration::from_secs(5);

/// Options of the admission server, shared by `rudder webhook` and `rudder discovery`.
#[derive(Clone, Debug, clap::Args)]
pub struct AdmissionArgs {
    /// Serving certificate chain (PEM); reloaded when the file changes.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The injector ConfigMap's `config` (YAML) as a file, reloaded when it changes. Given this
    /// or --inject-values, the injector ConfigMap of the cluster is not read.
    #[arg(long)]
    pub inject_config: Option<PathBuf>,
    /// The injector ConfigMap's `values` (JSON or YAML) as a file, reloaded when it changes.
    #[arg(long)]
    pub inject_values: Option<PathBuf>,
    /// Mesh config (YAML) over Istio's defaults: the base any `istio` ConfigMap Rudder reads is
    /// layered over; reloaded when it changes.
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
    /// This control plane's revision (names its ConfigMaps, Service and certificates).
    #[arg(short = 'r', long, env = "REVISION")]
    pub revision: Option<String>,
    /// Namespace of the control plane (its ConfigMaps, certificate names and Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// Where to write a generated CA certificate (default: a file in the temp directory).
    #[arg(long, conflicts_with = "tls_cert")]
    pub ca_out: Option<PathBuf>,
    /// Keep generated certificates in a Secret and patch caBundle into the revision's webhook
    /// configurations (needs a cluster).
    #[arg(long, conflicts_with = "tls_cert")]
    pub manage_certs: bool,
}

impl AdmissionArgs {
    /// The revision, `None` for the default one.
    fn revision(&self) -> Option<&str> {
        self.revision.as_deref().filter(|r| !r.is_empty() && *r != "default")
    }

    /// Whether the injector's config comes from files rather than the cluster.
    pub fn has_injector_files(&self) -> bool {
        self.inject_config.is_some() || self.inject_values.is_some()
    }

    /// `--mesh-config` over Istio's defaults, or the defaults.
    pub fn base_mesh(&self) -> anyhow::Result<MeshConfig> {
        let defaults = MeshConfig::istio_defaults();
        match &self.mesh_config {
            None => Ok(defaults),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Ok(server::parse_mesh(&path.display().to_string(), &text, &defaults)?)
            }
        }
    }
}

/// A started admission server: config loaded (or being followed), certificates ready, socket
/// bound; [`Admission::serve`] answers requests.
#[derive(Debug)]
pub struct Admission {
    listener: TcpListener,
    tls: Arc<server::TlsConfig>,
    state: Arc<AppState>,
    /// Turns true once the cluster's ConfigMaps are in `state` (`None`: files, ready now).
    synced: Option<watch::Receiver<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads the config, prepares the certificates and binds `listen`. `cluster`, when given, is
/// where the config comes from unless injector files are given, and serves `--manage-certs`.
/// Answers are counted in `metrics` (registered where they are served).
pub async fn start(
    args: &AdmissionArgs,
    listen: SocketAddr,
    cluster: Option<kube::Client>,
    metrics: Metrics,
) -> anyhow::Result<Admission> {
    let mut tasks = Vec::new();
    let (state, synced) = match &cluster {
        Some(client) if !args.has_injector_files() => {
            let target = injector_watch::Target {
                namespace: args.namespace.clone(),
                revision: args.revision().map(str::to_owned),
                base_mesh: args.base_mesh()?,
            };
            tracing::info!(
                injector = %target.injector_name(), mesh = %target.mesh_name(), namespace = %target.namespace,
                "admission config: cluster ConfigMaps"
            );
            let state = Arc::new(AppState::new(Default::default()).with_metrics(metrics));
            let (task, synced) = injector_watch::spawn(client.clone(), target, state.clone());
            tasks.push(task);
            (state, Some(synced))
        }
        _ => {
            let sources = Sources {
                inject_config: args.inject_config.clone(),
                inject_values: args.inject_values.clone(),
                mesh_config: args.mesh_config.clone(),
                revision: args.revision().map(str::to_owned),
            };
            let state = Arc::new(AppState::new(sources.load()?).with_metrics(metrics));
            tasks.push(server::spawn_reloader(state.clone(), sources, CONFIG_POLL));
            (state, None)
        }
    };
    let store = cert_store(args, cluster, &mut tasks).await?;
    let tls = server::tls_config(store)?;
    let listener = server::bind(listen).await.with_context(|| format!("admission server on {listen}"))?;
    Ok(Admission { listener, tls, state, synced, tasks })
}

impl Admission {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for the cluster config (if any), then serves until `shutdown` completes and open
    /// connections drain; the config and certificate tasks stop with it.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Admission { listener, tls, state, synced, tasks } = self;
        tokio::pin!(shutdown);
        if let Some(mut synced) = synced {
            tokio::select! {
                _ = synced.wait_for(|s| *s) => {}
                () = &mut shutdown => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return;
                }
            }
        }
        tracing::info!("admission server ready");
        server::serve(listener, tls, server::router(state), shutdown).await;
        tasks.iter().for_each(JoinHandle::abort);
    }
}

/// [`start`], print where it listens (`listening: https://ADDR`), then [`Admission::serve`].
pub async fn run_admission(
    args: &AdmissionArgs,
    listen: SocketAddr,
    cluster: Option<kube::Client>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let admission = start(args, listen, cluster, metrics).await?;
    println!("listening: https://{}", admission.local_addr()?);
    admission.serve(shutdown).await;
    Ok(())
}

async fn cert_store(
    args: &AdmissionArgs,
    cluster: Option<kube::Client>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Arc<CertStore>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(Arc::new(CertStore::from_files(cert, key)?));
    }
    let names = certs::dns_names(&certs::service_name(args.revision()), &args.namespace);
    if args.manage_certs {
        let client = match cluster {
            Some(client) => client,
            None => kube_client().await?,
        };
        return managed_store(args, client, names, tasks).await;
    }
    let bundle = certs::generate(&names, SystemTime::now())?;
    let path = args.ca_out.clone().unwrap_or_else(|| std::env::temp_dir().join("rudder-webhook-ca.pem"));
    std::fs::write(&path, &bundle.ca_cert_pem).with_context(|| format!("writing {}", path.display()))?;
    println!("ca: {}", path.display());
    Ok(Arc::new(CertStore::fixed(bundle.certified_key()?)))
}

/// Labels the Secret discovery made as part of its revision's control plane, so that
/// `rudder uninstall` (`-r REV` or `--purge`) removes it with the rest.
async fn label_as_control_plane(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    revision: Option<&str>,
) -> anyhow::Result<()> {
    use rudder_config::labels;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"labels": {
        labels::REVISION: revision.unwrap_or(labels::DEFAULT_REVISION),
        labels::COMPONENT: "Pilot",
    }}});
    api.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling secret {namespace}/{name}"))?;
    Ok(())
}

/// Certificates from the Secret, with caBundle patching and a rotation task.
async fn managed_store(
    args: &AdmissionArgs,
    client: kube::Client,
    names: Vec<String>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Arc<CertStore>> {
    let secret = format!("{}-webhook-certs", certs::service_name(args.revision()));
    let bundle = certs::ensure_secret(&client, &args.namespace, &secret, &names, SystemTime::now()).await?;
    label_as_control_plane(&client, &args.namespace, &secret, args.revision()).await?;
    let revision = args.revision().map(str::to_owned);
    let patched = certs::patch_ca_bundles(&client, revision.as_deref(), &bundle.ca_cert_pem).await?;
    println!(
        "certificates from secret {}/{secret}; caBundle patched in {patched} webhook configuration(s)",
        args.namespace
    );
    let store = Arc::new(CertStore::fixed(bundle.certified_key()?));
    let (namespace, rotating) = (args.namespace.clone(), store.clone());
    let mut trust = certs::CaTrust::new(bundle.ca_cert_pem);
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(CERT_POLL).await;
            let refreshed = async {
                let bundle = certs::ensure_secret(&client, &namespace, &secret, &names, SystemTime::now()).await?;
                let (next, ca_changed) = trust.next(&bundle.ca_cert_pem);
                if ca_changed {
                    // Trust first, serve later: a certificate of a CA the API server does not
                    // trust yet would fail every admission until caBundle caught up.
                    certs::patch_ca_bundles(&client, revision.as_deref(), &next.bundle()).await?;
                    tracing::info!(
                        "new webhook CA in caBundle (beside the old one); serving its certificate in {CA_PROPAGATION:?}"
                    );
                    tokio::time::sleep(CA_PROPAGATION).await;
                }
                rotating.set(bundle.certified_key()?);
                certs::patch_ca_bundles(&client, revision.as_deref(), &next.bundle()).await?;
                trust = next;
                Ok::<_, anyhow::Error>(())
            };
            if let Err(e) = refreshed.await {
                tracing::warn!("certificate refresh failed: {e:#}");
            }
        }
    }));
    Ok(store)
}
