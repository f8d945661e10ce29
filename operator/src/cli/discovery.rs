//! `rudder discovery`: the control plane's discovery role. Builds the service registry from a
//! config directory (`--config-dir`, for hosts without Kubernetes) or from the cluster, and
//! serves Envoy config over ADS (SotW and delta) with metrics and debug endpoints on the
//! monitoring port. Unless `--no-webhook` (or `--webhook-port 0`), it also runs the admission
//! server ([`super::admission`]) on 15017 as istiod does. The monitoring port's `/metrics` has
//! the ADS server's metrics, the CA's (`citadel_server_*`) when it runs one, and the admission
//! server's (`sidecar_injection_*`, `galley_validation_*`) when it runs it.
//!
//! Where the admission server's config comes from: with a cluster, the revision's injector and
//! `istio` ConfigMaps (unless `--inject-config`/`--inject-values` files are given); with
//! `--config-dir`, the files given by the flags (defaults without them): the registry's mesh
//! comes from the directory's `istio` ConfigMap, the injector's from `--mesh-config`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context as _;
use rudder_config::common::Duration as GoDuration;
use rudder_xds::ca::{Authority, CaMaterial};
use rudder_xds::ca_kube;
use rudder_xds::ca_service::{Authenticator, CaMetrics, CertificateService, FileTokens, TokenReviewer};
use rudder_xds::model::Snapshot;
use rudder_xds::registry::{files, jwks, kube as kube_registry, wasm};
use rudder_xds::server::{DebounceOptions, DiscoveryServer, ServerOptions, ServingCertificate, TlsOptions};
use tokio::sync::watch;

use super::admission::{self, AdmissionArgs};
use super::install::exit_code;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read Istio config (ServiceEntry, WorkloadEntry, VirtualService, …, and an `istio`
    /// ConfigMap with `data.mesh`) from this directory and follow its changes, instead of
    /// watching a Kubernetes cluster.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Where proxies connect for ADS (plaintext gRPC, as istiod's 15010).
    #[arg(long, default_value = "0.0.0.0:15010")]
    grpc_address: SocketAddr,
    /// TLS xDS and the CA's `CreateCertificate` (istiod's 15012). Served when there is a CA:
    /// always in a cluster, with `--ca-dir` in file mode.
    #[arg(long, default_value = "0.0.0.0:15012")]
    secure_grpc_address: SocketAddr,
    /// File mode: the CA directory. A plugged-in CA's `ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem` are used as they are; an empty directory gets a new
    /// self-signed root (and the key of the tokens `rudder ca token` issues) at first start.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// More names (DNS or IP) for discovery's TLS certificate, beside `istiod[-<rev>].<ns>.svc`,
    /// localhost and the listen address.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// How often RequestAuthentication jwksUri documents are fetched again.
    #[arg(long, env = "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL", default_value = "20m", value_parser = go_duration)]
    jwks_refresh: std::time::Duration,
    /// Registries WasmPlugin images are pulled from over plain HTTP (`host` or `host:port`,
    /// comma-separated; `*` for all), as Istio's agent takes them.
    #[arg(long, env = "WASM_INSECURE_REGISTRIES", value_delimiter = ',')]
    wasm_insecure_registries: Vec<String>,
    /// How soon a WasmPlugin module that could not be read is tried again.
    #[arg(long, default_value = "30s", value_parser = go_duration)]
    wasm_retry: std::time::Duration,
    /// Longest lifetime of a workload certificate.
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = "2160h", value_parser = go_duration)]
    max_workload_cert_ttl: std::time::Duration,
    /// Metrics (`/metrics`), readiness (`/ready`) and debug endpoints (`/debug/syncz`,
    /// `/debug/adsz`, `/debug/config_dump?proxyID=`).
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitoring_address: SocketAddr,
    /// Push once config has been quiet this long (istiod's PILOT_DEBOUNCE_AFTER).
    #[arg(long, env = "PILOT_DEBOUNCE_AFTER", default_value = "100ms", value_parser = go_duration)]
    debounce_after: std::time::Duration,
    /// Push at the latest this long after the first change of a burst (PILOT_DEBOUNCE_MAX).
    #[arg(long, env = "PILOT_DEBOUNCE_MAX", default_value = "1s", value_parser = go_duration)]
    debounce_max: std::time::Duration,
    /// Percent of requests traced when neither the proxy's mesh config (`defaultConfig.tracing.sampling`)
    /// nor a Telemetry says (istiod's PILOT_TRACE_SAMPLING; the install sets it from
    /// `values.pilot.traceSampling`, 100 in the demo profile).
    #[arg(long, env = "PILOT_TRACE_SAMPLING", default_value_t = 1.0)]
    trace_sampling: f64,
    /// How often `--config-dir` is scanned for changes where it cannot be watched (inotify).
    #[arg(long, default_value = "200ms", value_parser = go_duration)]
    poll_interval: std::time::Duration,
    /// Port of the admission server (HTTPS, `/inject`, `/validate`); 0 turns it off.
    #[arg(long, default_value_t = 15017)]
    webhook_port: u16,
    /// Address the admission server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    webhook_address: IpAddr,
    /// Do not run the admission server.
    #[arg(long)]
    no_webhook: bool,
    #[command(flatten)]
    admission: AdmissionArgs,
    #[command(flatten)]
    log: crate::logging::LogArgs,
}

fn go_duration(text: &str) -> Result<std::time::Duration, String> {
    GoDuration::parse(text).map(GoDuration::to_std)
}

pub fn run(args: &Args) -> ExitCode {
    crate::logging::init(&args.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(serve(args))))
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    rudder_xds::translate::telemetry::set_default_sampling(args.trace_sampling);
    let mut mesh = args.admission.base_mesh()?;
    // Header values the mesh config names by `envName` come from this process's environment.
    rudder_xds::registry::resolve_mesh_env(&mut mesh);
    // The registry publishes on `tx`; the JWKS follower passes its snapshots on with the
    // documents of RequestAuthentication jwksUris, the Wasm follower with the modules of
    // WasmPlugins, to the server.
    let first = Arc::new(Snapshot { loading: true, mesh: mesh.clone(), ..Snapshot::default() });
    let (tx, registry_rx) = watch::channel(first.clone());
    let (with_keys_tx, with_keys_rx) = watch::channel(first.clone());
    let (with_modules_tx, rx) = watch::channel(first);
    let options = ServerOptions {
        debounce: DebounceOptions { quiet: args.debounce_after, max_delay: args.debounce_max },
        ..ServerOptions::default()
    };
    let server = DiscoveryServer::new(rx, options);
    let grpc = rudder_xds::server::bind_xds_listener(args.grpc_address)
        .with_context(|| format!("binding the gRPC address {}", args.grpc_address))?;
    let monitoring = tokio::net::TcpListener::bind(args.monitoring_address)
        .await
        .with_context(|| format!("binding the monitoring address {}", args.monitoring_address))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let trust_domain = mesh.effective_trust_domain().to_owned();
    let jwks_task = tokio::spawn(jwks::follow(registry_rx, with_keys_tx, args.jwks_refresh, stopped()));
    let wasm_options = wasm::FetchOptions {
        insecure_registries: args.wasm_insecure_registries.clone(),
        retry: args.wasm_retry,
        ..wasm::FetchOptions::default()
    };
    let wasm_task = tokio::spawn(wasm::follow(with_keys_rx, with_modules_tx, wasm_options, stopped()));
    let (registry, cluster) = match &args.config_dir {
        Some(dir) => {
            anyhow::ensure!(dir.is_dir(), "--config-dir {}: not a directory", dir.display());
            tracing::info!(dir = %dir.display(), "registry: config directory");
            (tokio::spawn(files::watch_dir(dir.clone(), mesh, tx, args.poll_interval, stopped())), None)
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("no --config-dir given and no Kubernetes configuration found (KUBECONFIG or in-cluster)")?;
            tracing::info!("registry: Kubernetes");
            let revision = args.admission.revision.as_deref().filter(|r| !r.is_empty() && *r != "default");
            let name = revision.map_or_else(|| "istio".to_owned(), |r| format!("istio-{r}"));
            let (_follower, mesh) = crate::mesh_watch::spawn(client.clone(), &args.admission.namespace, &name, mesh);
            (tokio::spawn(kube_registry::run_with_mesh(client.clone(), mesh, tx, stopped())), Some(client))
        }
    };
    let secure_task = match secure_server(args, &trust_domain, cluster.clone()).await? {
        Some((tls, ca)) => {
            let ca = ca.with_metrics(server.register_metrics(CaMetrics::register));
            let listener = rudder_xds::server::bind_xds_listener(args.secure_grpc_address)
                .with_context(|| format!("binding the TLS xDS address {}", args.secure_grpc_address))?;
            tracing::info!(address = %args.secure_grpc_address, "TLS xDS and CA serving");
            let server = server.clone();
            let stopped = stopped();
            Some(tokio::spawn(async move { server.serve_tls(listener, &tls, Some(ca), stopped).await }))
        }
        None => None,
    };
    let webhook_task = if args.no_webhook || args.webhook_port == 0 {
        None
    } else {
        let listen = SocketAddr::new(args.webhook_address, args.webhook_port);
        // In a cluster the API server must trust the webhook: without certificate files, keep
        // the generated CA in a Secret and patch it into the revision's webhook configurations.
        let mut admission_args = args.admission.clone();
        if cluster.is_some() && admission_args.tls_cert.is_none() {
            admission_args.manage_certs = true;
        }
        let metrics = server.register_metrics(rudder_webhook::metrics::Metrics::register);
        let admission = admission::start(&admission_args, listen, cluster, metrics).await?;
        tracing::info!(webhook = %admission.local_addr()?, "admission server listening");
        Some(tokio::spawn(admission.serve(stopped())))
    };
    let monitoring_app = server.monitoring_router().merge(crate::logging::router());
    let monitoring_task = tokio::spawn({
        let stopped = stopped();
        async move { axum::serve(monitoring, monitoring_app).with_graceful_shutdown(stopped).await }
    });
    tracing::info!(grpc = %args.grpc_address, monitoring = %args.monitoring_address, "discovery serving");
    let grpc_task = tokio::spawn({
        let server = server.clone();
        let stopped = stopped();
        async move { server.serve(grpc, stopped).await }
    });
    crate::signals::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = registry.await;
    let _ = jwks_task.await;
    let _ = wasm_task.await;
    let _ = monitoring_task.await;
    if let Some(task) = webhook_task {
        let _ = task.await;
    }
    if let Ok(Err(e)) = grpc_task.await {
        anyhow::bail!("gRPC server: {e}");
    }
    if let Some(task) = secure_task
        && let Ok(Err(e)) = task.await
    {
        anyhow::bail!("TLS gRPC server: {e}");
    }
    Ok(())
}

/// The CA and discovery's TLS identity: from the cluster's Secrets (the root then published in
/// every namespace), or from `--ca-dir`. `None` in file mode without `--ca-dir`.
async fn secure_server(
    args: &Args,
    trust_domain: &str,
    cluster: Option<kube::Client>,
) -> anyhow::Result<Option<(TlsOptions, CertificateService)>> {
    let namespace = &args.admission.namespace;
    let (material, authenticator): (CaMaterial, Arc<dyn Authenticator>) = match (&cluster, &args.ca_dir) {
        (Some(client), _) => {
            let (material, source) = ca_kube::load_or_create(client.clone(), namespace, trust_domain).await?;
            tracing::info!(secret = source, "mesh CA loaded");
            tokio::spawn(ca_kube::publish_root(client.clone(), material.root_cert.clone(), std::future::pending()));
            (material, Arc::new(TokenReviewer::new(client.clone(), trust_domain)))
        }
        (None, Some(dir)) => {
            let material = CaMaterial::load_or_create_dir(dir, trust_domain, SystemTime::now())?;
            let tokens = FileTokens::load_or_create_dir(dir, trust_domain)
                .with_context(|| format!("the token key in {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "mesh CA loaded");
            (material, Arc::new(tokens))
        }
        (None, None) => {
            tracing::info!("no --ca-dir: no CA and no TLS xDS port (plaintext xDS only)");
            return Ok(None);
        }
    };
    let authority = Authority::new(material, args.max_workload_cert_ttl)?;
    let revision = args.admission.revision.as_deref().filter(|r| !r.is_empty() && *r != "default");
    let istiod = revision.map_or_else(|| "istiod".to_owned(), |r| format!("istiod-{r}"));
    let mut names = vec![
        format!("{istiod}.{namespace}.svc"),
        format!("{istiod}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
    ];
    if revision.is_some() {
        // A revision tag's Service (istiod.<ns>.svc) may point at this revision too.
        names.push(format!("istiod.{namespace}.svc"));
    }
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    if !args.secure_grpc_address.ip().is_unspecified() {
        ips.push(args.secure_grpc_address.ip());
    }
    for san in &args.tls_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(san.clone()),
        }
    }
    names.sort();
    names.dedup();
    ips.sort();
    ips.dedup();
    let ttl = SERVING_CERT_TTL.min(args.max_workload_cert_ttl);
    let (cert_chain, key) = authority.serving_certificate(&names, &ips, ttl, SystemTime::now())?;
    let serving = ServingCertificate::new(&cert_chain, &key).map_err(|e| anyhow::anyhow!(e))?;
    let tls = TlsOptions { serving: serving.clone(), client_root: authority.root_pem().to_owned() };
    let authority = Arc::new(RwLock::new(authority));
    tokio::spawn(renew_serving_certificate(authority.clone(), serving, names, ips, ttl));
    Ok(Some((tls, CertificateService::new(authority, authenticator))))
}

/// Lifetime of discovery's own TLS certificate (at most the workload maximum).
const SERVING_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Replaces discovery's TLS certificate at 80 % of its lifetime, for as long as discovery runs.
async fn renew_serving_certificate(
    authority: Arc<RwLock<Authority>>,
    serving: Arc<ServingCertificate>,
    names: Vec<String>,
    ips: Vec<IpAddr>,
    ttl: std::time::Duration,
) {
    let mut wait = ttl.mul_f64(0.8);
    loop {
        tokio::time::sleep(wait).await;
        let issued = authority.read().unwrap_or_else(std::sync::PoisonError::into_inner).serving_certificate(
            &names,
            &ips,
            ttl,
            SystemTime::now(),
        );
        match issued.map_err(|e| e.to_string()).and_then(|(chain, key)| serving.replace(&chain, &key)) {
            Ok(()) => {
                tracing::info!("discovery's TLS certificate renewed");
                wait = ttl.mul_f64(0.8);
            }
            Err(error) => {
                tracing::error!(%error, "renewing discovery's TLS certificate failed; retrying in a minute");
                wait = std::time::Duration::from_secs(60);
            }
        }
    }
}
