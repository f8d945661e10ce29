//! `rudder proxy`: the proxy agent verbs the injected pod runs (the pilot-agent counterparts).
//!
//! * `sidecar` / `router`: build the Envoy bootstrap from flags and the injector's env vars
//!   (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`, `ISTIO_META_*`, `PROXY_CONFIG`, …), run Envoy
//!   on it, drain and stop it on SIGTERM/SIGINT (see `rudder_xds::agent::supervise`). A sidecar
//!   also runs the DNS proxy for mesh hosts (`rudder_xds::agent::dns`) unless
//!   `ISTIO_META_DNS_CAPTURE=false` / `--dns-capture=false` (default: on unless interception
//!   mode is NONE).
//! * `bootstrap`: print that bootstrap (JSON) and exit.
//! * `wait`: poll the readiness endpoint until it answers 200 (the postStart hook).
//! * `request METHOD PATH`: one request to Envoy's local admin endpoint, body printed.
//! * `init`: the init container's traffic capture: the rules of `rudder_xds::agent::capture`
//!   applied with `iptables-restore --noflush` (`--dry-run` prints them).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rudder_config::common::Duration as ConfigDuration;
use rudder_config::mesh::ProxyConfig;
use rudder_xds::agent::bootstrap::{
    self, BootstrapOptions, DEFAULT_DISCOVERY_ADDRESS, DEFAULT_ISTIO_VERSION, XdsTransport, metadata_from_env,
};
use rudder_xds::agent::capture::{self, CaptureConfig, CaptureFlags};
use rudder_xds::agent::capture_apply;
use rudder_xds::agent::dns::{self, DnsProxyOptions};
use rudder_xds::agent::identity::{self, DiscoveryTarget, IdentityOptions};
use rudder_xds::agent::metrics::{self as agent_metrics, MetricsSources};
use rudder_xds::agent::nds;
use rudder_xds::agent::probes;
use rudder_xds::agent::sds;
use rudder_xds::agent::supervise::{self, Ending, EnvoyOptions, SuperviseError};
use rudder_xds::ca::SpiffeId;
use rudder_xds::model::{InterceptionMode, NodeType};
use rudder_xds::translate::telemetry;

use super::install::exit_code;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ProxyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ProxyCommand {
    /// Run Envoy as a workload's sidecar.
    Sidecar(Box<RunArgs>),
    /// Run Envoy as a gateway (router).
    Router(Box<RunArgs>),
    /// Print the Envoy bootstrap the agent would write (JSON), TLS and SDS included when the mesh root is there.
    Bootstrap(Box<BootstrapArgs>),
    /// Wait until the proxy reports ready (exit 0) or time out (exit 1).
    Wait(WaitArgs),
    /// Send one request to the local Envoy admin endpoint and print the answer.
    Request(RequestArgs),
    /// Set up traffic capture (iptables) in the pod's network namespace; --dry-run prints it.
    Init(InitArgs),
}

/// Who the proxy is and where discovery lives: everything that goes into the bootstrap.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Pod name (node id and `NAME` metadata).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Pod namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Pod IPs, comma-separated; the first one goes into the node id.
    #[arg(long = "ip", env = "INSTANCE_IP", value_delimiter = ',')]
    ips: Vec<IpAddr>,
    /// DNS domain (last part of the node id); default `<namespace>.svc.cluster.local`.
    #[arg(long)]
    domain: Option<String>,
    /// Cluster id (`CLUSTER_ID` metadata).
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// Pod labels as `k=v,k=v` (default: `ISTIO_METAJSON_LABELS`, a JSON object).
    #[arg(long)]
    labels: Option<String>,
    #[arg(long, env = "ISTIO_METAJSON_LABELS", hide = true)]
    labels_json: Option<String>,
    /// Workload name (`WORKLOAD_NAME` metadata).
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME")]
    workload_name: Option<String>,
    /// How traffic reaches the proxy: REDIRECT, TPROXY or NONE.
    #[arg(long, env = "ISTIO_META_INTERCEPTION_MODE", default_value = "REDIRECT", value_parser = parse_interception)]
    interception_mode: InterceptionMode,
    /// Istio version announced to discovery.
    #[arg(long, env = "ISTIO_META_ISTIO_VERSION", default_value = DEFAULT_ISTIO_VERSION)]
    istio_version: String,
    /// Control-plane revision (`ISTIO_REVISION` metadata).
    #[arg(long, env = "ISTIO_META_ISTIO_REVISION", default_value = "")]
    revision: String,
    /// Discovery (plaintext gRPC) as host:port; default: PROXY_CONFIG's discoveryAddress, else
    /// `istiod.istio-system.svc:15010`.
    #[arg(long, env = "PILOT_ADDRESS")]
    discovery_address: Option<String>,
    /// ADS flavour: DELTA_GRPC (incremental, Istio's default since 1.22) or GRPC.
    #[arg(long, default_value = "DELTA_GRPC", value_parser = parse_transport)]
    xds_transport: XdsTransport,
    /// Envoy admin address.
    #[arg(long, default_value = "127.0.0.1")]
    admin_address: IpAddr,
    /// Envoy admin port.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Readiness port (`/healthz/ready`).
    #[arg(long, default_value_t = 15021)]
    status_port: u16,
    /// Prometheus port (`/stats/prometheus`).
    #[arg(long, default_value_t = 15090)]
    prometheus_port: u16,
    /// The effective ProxyConfig (JSON), as the injector sets it.
    #[arg(long, env = "PROXY_CONFIG", hide_env_values = true)]
    proxy_config: Option<String>,
}

/// How Envoy runs.
#[derive(Debug, clap::Args)]
struct EnvoyArgs {
    /// Envoy binary; default `envoy` on PATH.
    #[arg(long, env = "ENVOY_PATH")]
    envoy_path: Option<PathBuf>,
    /// Directory for the bootstrap file; default a fresh temporary directory.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Envoy `--base-id`; default the admin port, so Envoys with distinct admin ports coexist.
    #[arg(long)]
    base_id: Option<u32>,
    /// Listener drain time (Envoy `--drain-time-s`); default PROXY_CONFIG's drainDuration, else 45s.
    #[arg(long, value_parser = parse_duration)]
    drain_duration: Option<Duration>,
    /// Worker threads (0 = one per core); default PROXY_CONFIG's concurrency, else 2.
    #[arg(long)]
    concurrency: Option<u32>,
    /// How long to drain before stopping Envoy on shutdown; default PROXY_CONFIG's
    /// terminationDrainDuration, else 5s.
    #[arg(long, value_parser = parse_duration)]
    termination_drain_duration: Option<Duration>,
    /// How long Envoy may take to exit after SIGTERM before it is killed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,
    /// Envoy log level.
    #[arg(long = "proxyLogLevel", alias = "log-level", default_value = "warning")]
    proxy_log_level: String,
    /// Envoy per-component log levels (`misc:error,upstream:debug`).
    #[arg(long = "proxyComponentLogLevel", alias = "component-log-level", default_value = "misc:error")]
    proxy_component_log_level: String,
    /// The agent's own log filter (accepted for the injector's `--log_output_level`;
    /// `default:info` style scopes are read as plain levels).
    #[arg(long = "log_output_level", default_value = "default:info")]
    log_output_level: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    envoy: EnvoyArgs,
    #[command(flatten)]
    dns: DnsArgs,
    #[command(flatten)]
    security: SecurityArgs,
    /// The agent's status port: `/stats/prometheus` (the mesh metrics `istio_*`, Envoy's
    /// stats, and the app's metrics when `ISTIO_PROMETHEUS_ANNOTATIONS` asks) and the app probes
    /// the injector rewrote (`/app-health/...`, from `ISTIO_KUBE_APP_PROBERS`). Port 0 turns it off.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_address: SocketAddr,
}

/// The workload identity from the mesh CA. It is in use when the mesh root is there (the
/// `istio-ca-root-cert` ConfigMap the injector mounts, or `--ca-root-cert`): then the agent
/// gets a certificate for the pod's service account, serves it to Envoy over SDS, and Envoy and
/// the agent reach discovery over TLS (istiod's 15012) verifying that root. Without it, xDS is
/// plaintext (15010) and the proxy has no certificate.
#[derive(Debug, clap::Args)]
struct SecurityArgs {
    /// The mesh root certificate (PEM).
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    ca_root_cert: PathBuf,
    /// The CA (`CreateCertificate`) as host:port; default the discovery address.
    #[arg(long, env = "CA_ADDR")]
    ca_address: Option<String>,
    /// The token that proves the pod's identity to the CA (a service-account token with audience
    /// istio-ca in a cluster; a `rudder ca token` file in file mode).
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    ca_token: PathBuf,
    /// The pod's service account (the identity's last part).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// The mesh trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime asked for the workload certificate (renewed at 80 %).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    secret_ttl: Duration,
    /// The SDS socket Envoy gets its certificate from.
    #[arg(long, default_value = "/var/run/secrets/workload-spiffe-uds/socket")]
    workload_socket: PathBuf,
}

/// The DNS proxy for mesh hosts (Istio's DNS capture); sidecars only.
#[derive(Debug, clap::Args)]
struct DnsArgs {
    /// Answer the application's DNS queries for mesh hosts (true/false). Default: on for
    /// sidecars unless the interception mode is NONE; never for routers.
    #[arg(long, env = "ISTIO_META_DNS_CAPTURE")]
    dns_capture: Option<String>,
    /// Where the DNS proxy listens (UDP and TCP).
    #[arg(long, default_value_t = dns::DEFAULT_LISTEN_ADDRESS)]
    dns_listen_address: SocketAddr,
    /// Resolver configuration giving the upstream nameservers and search domains.
    #[arg(long, default_value = dns::DEFAULT_RESOLV_CONF)]
    dns_resolv_conf: PathBuf,
    /// How long to wait for the upstream nameservers before answering SERVFAIL.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    dns_upstream_timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct BootstrapArgs {
    /// Proxy type: sidecar or router.
    #[arg(long = "type", default_value = "sidecar", value_parser = parse_node_type)]
    node_type: NodeType,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    security: SecurityArgs,
}

#[derive(Debug, clap::Args)]
struct WaitArgs {
    /// Readiness URL to poll (plain http).
    #[arg(long, default_value = "http://localhost:15021/healthz/ready")]
    url: String,
    /// Give up after this many seconds.
    #[arg(long = "timeoutSeconds", alias = "timeout-seconds", default_value_t = 60)]
    timeout_seconds: u64,
    /// Time between attempts.
    #[arg(long = "periodMillis", alias = "period-millis", default_value_t = 500)]
    period_millis: u64,
    /// Timeout of one attempt.
    #[arg(long = "requestTimeoutMillis", alias = "request-timeout-millis", default_value_t = 500)]
    request_timeout_millis: u64,
}

#[derive(Debug, clap::Args)]
struct RequestArgs {
    /// Local port to send the request to (Envoy admin by default).
    #[arg(long = "debug-port", default_value_t = 15000)]
    debug_port: u16,
    /// HTTP method.
    method: String,
    /// Path, e.g. `stats` or `/server_info`.
    path: String,
}

/// The flags the injector's init container passes (istio-iptables'). The rules themselves come
/// from `rudder_xds::agent::capture`.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Print the rules (and, for TPROXY, the routing commands as comments) instead of applying
    /// them.
    #[arg(long)]
    dry_run: bool,
    /// Outbound capture port.
    #[arg(short = 'p', default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound capture port.
    #[arg(short = 'z', default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's user id (its own traffic is not captured).
    #[arg(short = 'u', default_value_t = 1337)]
    proxy_uid: u32,
    /// The proxy's group id; default the user id.
    #[arg(short = 'g')]
    proxy_gid: Option<u32>,
    /// Interception mode: REDIRECT, TPROXY (also needs the `ip` command) or NONE (no rules).
    #[arg(short = 'm', default_value = "REDIRECT", value_parser = parse_interception)]
    mode: InterceptionMode,
    /// Outbound IP ranges to capture (`*` = all).
    #[arg(short = 'i', default_value = "*")]
    include_ip_ranges: String,
    /// Outbound IP ranges not to capture.
    #[arg(short = 'x', default_value = "")]
    exclude_ip_ranges: String,
    /// Inbound ports to capture (`*` = all).
    #[arg(short = 'b', default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports not to capture.
    #[arg(short = 'd', default_value = "")]
    exclude_inbound_ports: String,
    /// Outbound ports to capture regardless of address.
    #[arg(short = 'q', default_value = "")]
    include_outbound_ports: String,
    /// Outbound ports not to capture.
    #[arg(short = 'o', default_value = "")]
    exclude_outbound_ports: String,
    /// Interfaces whose traffic is captured as outbound.
    #[arg(short = 'k', default_value = "")]
    reroute_interfaces: String,
    /// Interfaces left alone.
    #[arg(short = 'c', default_value = "")]
    exclude_interfaces: String,
    /// Send the application's DNS (UDP and TCP port 53) to the agent's DNS proxy on port 15053.
    /// ON by default in Rudder (Istio's default is off): off only with `--redirect-dns=false` or,
    /// without the flag, when ISTIO_META_DNS_CAPTURE is `false`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    redirect_dns: Option<bool>,
    /// Also write IPv6 rules (ip6tables-restore). Default: when the pod has a global IPv6
    /// address or an IPv6 range is given.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    ipv6: Option<bool>,
    /// CNI mode: validate the CNI plugin's redirection (not implemented: accepted and ignored).
    #[arg(long)]
    run_validation: bool,
    /// CNI mode: the rules are applied by the CNI plugin, so nothing is applied here.
    #[arg(long)]
    skip_rule_apply: bool,
    #[arg(long = "log_output_level", default_value = "default:info")]
    log_output_level: String,
}

pub fn run(args: &Args) -> ExitCode {
    match &args.command {
        ProxyCommand::Sidecar(run) => run_proxy(NodeType::Sidecar, run),
        ProxyCommand::Router(run) => run_proxy(NodeType::Router, run),
        ProxyCommand::Bootstrap(b) => exit_code(print_bootstrap(b)),
        ProxyCommand::Wait(w) => exit_code(runtime().and_then(|rt| rt.block_on(wait(w)))),
        ProxyCommand::Request(r) => exit_code(runtime().and_then(|rt| rt.block_on(request(r)))),
        ProxyCommand::Init(i) => exit_code(init(i)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")
}

fn print_bootstrap(args: &BootstrapArgs) -> anyhow::Result<()> {
    let proxy = proxy_setup(args.node_type, &args.node, &args.security)?;
    let json = bootstrap::bootstrap(&proxy.options)?;
    write_stdout(&(serde_json::to_string_pretty(&json)? + "\n"))
}

/// What a proxy runs with: its bootstrap options, PROXY_CONFIG, how to reach discovery, and,
/// when the mesh root is there, how to get its certificate (the bootstrap then gets the SDS
/// socket and TLS to discovery, the node metadata the identity).
struct ProxySetup {
    options: BootstrapOptions,
    proxy_config: ProxyConfig,
    discovery: DiscoveryTarget,
    identity: Option<IdentityOptions>,
}

fn proxy_setup(node_type: NodeType, node: &NodeArgs, security: &SecurityArgs) -> anyhow::Result<ProxySetup> {
    let root = mesh_root(&security.ca_root_cert)?;
    let (mut options, proxy_config) = bootstrap_options(node_type, node, root.is_some())?;
    let discovery = DiscoveryTarget { address: options.discovery_address.clone(), root_pem: root };
    let identity = discovery.root_pem.is_some().then(|| {
        options.sds_socket = Some(security.workload_socket.display().to_string());
        let identity = identity_options(security, &discovery, &options.namespace);
        options.extra_metadata.insert(
            rudder_xds::model::WORKLOAD_IDENTITY.to_owned(),
            serde_json::Value::String(identity.identity.to_string()),
        );
        identity
    });
    Ok(ProxySetup { options, proxy_config, discovery, identity })
}

/// The bootstrap options, and the parsed PROXY_CONFIG (for the Envoy settings it carries).
fn bootstrap_options(
    node_type: NodeType,
    args: &NodeArgs,
    secure: bool,
) -> anyhow::Result<(BootstrapOptions, ProxyConfig)> {
    let (proxy_config, proxy_config_json) = parse_proxy_config(args.proxy_config.as_deref())?;
    let (mut extra, unparsable) = metadata_from_env(std::env::vars());
    for name in unparsable {
        eprintln!("warning: {name} is not valid JSON; left out of the node metadata");
    }
    if let Some(json) = proxy_config_json {
        extra.insert("PROXY_CONFIG".to_owned(), json);
    }
    let labels = match (&args.labels, &args.labels_json) {
        (Some(text), _) => parse_labels(text)?,
        (None, Some(json)) if !json.trim().is_empty() => {
            serde_json::from_str(json).context("ISTIO_METAJSON_LABELS must be a JSON object of strings")?
        }
        _ => BTreeMap::new(),
    };
    let pod_name = args.pod_name.clone().filter(|p| !p.is_empty()).unwrap_or_else(hostname);
    let options = BootstrapOptions {
        node_type,
        ip_addresses: args.ips.clone(),
        pod_name,
        namespace: args.namespace.clone(),
        dns_domain: args.domain.clone().filter(|d| !d.is_empty()),
        cluster_id: args.cluster_id.clone(),
        labels,
        workload_name: args.workload_name.clone().filter(|w| !w.is_empty()),
        interception: args.interception_mode,
        istio_version: args.istio_version.clone(),
        revision: args.revision.clone(),
        discovery_address: discovery_address(args.discovery_address.as_deref(), &proxy_config, secure),
        xds_transport: args.xds_transport,
        admin_address: args.admin_address,
        admin_port: args.admin_port,
        status_port: args.status_port,
        prometheus_port: args.prometheus_port,
        extra_metadata: extra,
        sds_socket: None,
    };
    Ok((options, proxy_config))
}

/// PROXY_CONFIG as typed settings (unknown fields tolerated: then only the JSON is kept) and
/// as the JSON object for the node metadata.
fn parse_proxy_config(text: Option<&str>) -> anyhow::Result<(ProxyConfig, Option<serde_json::Value>)> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok((ProxyConfig::default(), None));
    };
    let json: serde_json::Value = serde_json::from_str(text).context("PROXY_CONFIG is not JSON")?;
    let typed = serde_json::from_value(json.clone()).unwrap_or_else(|e| {
        eprintln!("warning: PROXY_CONFIG not fully understood ({e}); using defaults for its settings");
        ProxyConfig::default()
    });
    Ok((typed, Some(json)))
}

/// Flag/env first, then PROXY_CONFIG, then the default. Without the mesh root (`secure`
/// false) the agent can only speak plaintext, so an istiod TLS address (port 15012, Istio's
/// default, which gateways also get in `PILOT_ADDRESS`) is read as the same istiod's
/// plaintext port 15010.
fn discovery_address(explicit: Option<&str>, proxy_config: &ProxyConfig, secure: bool) -> String {
    let configured = explicit
        .filter(|a| !a.is_empty())
        .or_else(|| proxy_config.discovery_address.as_deref().filter(|a| !a.is_empty()));
    match configured {
        Some(address) if secure => address.to_owned(),
        None if secure => DEFAULT_DISCOVERY_ADDRESS.replace(":15010", ":15012"),
        Some(address) => match address.strip_suffix(":15012") {
            Some(host) => format!("{host}:15010"),
            None => address.to_owned(),
        },
        None => DEFAULT_DISCOVERY_ADDRESS.to_owned(),
    }
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| anyhow!("label {pair:?} must be key=value"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rudder-proxy".to_owned())
}

fn admin_authority(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn run_proxy(node_type: NodeType, args: &RunArgs) -> ExitCode {
    let level = args.envoy.log_output_level.rsplit(':').next().unwrap_or("info").to_owned();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| "info".into()))
        .try_init();
    let prepared = (|| -> anyhow::Result<_> {
        let ProxySetup { options, proxy_config, discovery, identity } =
            proxy_setup(node_type, &args.node, &args.security)?;
        let json = bootstrap::bootstrap(&options)?;
        let mut envoy = envoy_options(&args.envoy, &options, &proxy_config)?;
        let dns = dns_proxy_options(&args.dns, &options, &discovery)?;
        let admin = admin_authority(options.admin_address, options.admin_port);
        let own = own_workload(&options, identity.as_ref());
        // What this proxy's config sends servers about its workload (their metrics' source).
        envoy.env.push((telemetry::WORKLOAD_ENV.to_owned(), own.descriptor()));
        let metrics = (args.metrics_address.port() != 0).then(|| MetricsSources {
            envoy_admin: admin.clone(),
            own,
            app: std::env::var(rudder_webhook::inject::PROMETHEUS_ENV)
                .ok()
                .and_then(|a| agent_metrics::app_metrics_target(&a))
                .map(|(port, path)| (format!("127.0.0.1:{port}"), path)),
        });
        Ok((json, envoy, admin, dns, identity, metrics))
    })();
    let (json, envoy, admin, dns, identity, metrics) = match prepared {
        Ok(p) => p,
        Err(e) => return exit_code(Err(e)),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return exit_code(Err(e)),
    };
    let outcome = rt.block_on(async {
        let shutdown = shutdown_signal()?;
        // The certificate first: Envoy cannot reach discovery without it.
        let _sds = match identity {
            Some(options) => {
                let certs = identity::start(options, CERTIFICATE_WAIT).await.map_err(|e| anyhow!(e))?;
                Some(
                    sds::start(&args.security.workload_socket, certs)
                        .with_context(|| format!("serving SDS on {}", args.security.workload_socket.display()))?,
                )
            }
            None => None,
        };
        let _status = match metrics {
            Some(sources) => {
                let listener = tokio::net::TcpListener::bind(args.metrics_address).await.with_context(|| {
                    format!(
                        "status port: cannot listen on {} (change --metrics-address; port 0 turns it off)",
                        args.metrics_address
                    )
                })?;
                let app = agent_metrics::router(sources).merge(probes::router(app_probers()));
                Some(AbortOnDrop(tokio::spawn(async move { axum::serve(listener, app).await })))
            }
            None => None,
        };
        // Runs beside Envoy and stops with the agent.
        let _dns = match dns {
            Some(options) => Some(start_dns_proxy(options).await?),
            None => None,
        };
        let on_start = |pid: u32| {
            let _ = write_stdout(&format!("envoy started: pid {pid}\n"));
        };
        Ok::<_, anyhow::Error>(supervise::supervise(&json, &envoy, &admin, shutdown, on_start).await)
    });
    match outcome {
        Err(e) => exit_code(Err(e)),
        Ok(Ok(Ending::Stopped(status))) => {
            eprintln!("Envoy stopped ({status})");
            ExitCode::from(supervise::exit_code_of(status))
        }
        Ok(Ok(Ending::ExitedCleanly)) => {
            eprintln!("Envoy exited by itself with status 0");
            ExitCode::SUCCESS
        }
        Ok(Err(SuperviseError::EnvoyDied(status))) => {
            eprintln!("error: Envoy exited unexpectedly ({status}); the proxy is down");
            ExitCode::from(supervise::exit_code_of(status).max(1))
        }
        Ok(Err(e)) => exit_code(Err(e.into())),
    }
}

/// The app probes the injector moved to the agent (`ISTIO_KUBE_APP_PROBERS`); problems are
/// reported and the probe left out (the kubelet then gets 404 for it).
fn app_probers() -> BTreeMap<String, probes::Prober> {
    let Ok(json) = std::env::var(rudder_webhook::inject::APP_PROBERS_ENV) else { return BTreeMap::new() };
    match probes::parse(&json) {
        Ok((probers, problems)) => {
            for problem in problems {
                eprintln!("warning: app probe {problem}; left out");
            }
            probers
        }
        Err(e) => {
            eprintln!("warning: {e}; app probes left out");
            BTreeMap::new()
        }
    }
}

/// Stops a background task when the agent ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The proxy's own workload as its metrics name it: `ISTIO_META_WORKLOAD_NAME` (else the pod
/// name), its labels, and its certificate's identity when it has one.
fn own_workload(options: &BootstrapOptions, identity: Option<&IdentityOptions>) -> agent_metrics::Workload {
    let name = options.workload_name.as_deref().unwrap_or(&options.pod_name);
    agent_metrics::Workload {
        principal: identity.map(|i| i.identity.to_string()),
        ..agent_metrics::Workload::from_labels(name, &options.namespace, &options.labels, &options.cluster_id)
    }
}

/// How long the agent waits for its first workload certificate before giving up.
const CERTIFICATE_WAIT: Duration = Duration::from_secs(120);

/// The mesh root, if the file is there (an empty or unreadable one is an error).
fn mesh_root(path: &std::path::Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Ok(Some(pem)),
        Ok(_) => bail!("{}: no PEM certificate in the mesh root file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the mesh root {}", path.display())),
    }
}

fn identity_options(args: &SecurityArgs, discovery: &DiscoveryTarget, namespace: &str) -> IdentityOptions {
    let ca = DiscoveryTarget {
        address: args.ca_address.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| discovery.address.clone()),
        root_pem: discovery.root_pem.clone(),
    };
    IdentityOptions {
        ca,
        token_path: args.ca_token.clone(),
        identity: SpiffeId::new(&args.trust_domain, namespace, &args.service_account),
        ttl: args.secret_ttl,
    }
}

/// The DNS proxy's options, if this proxy runs it.
fn dns_proxy_options(
    args: &DnsArgs,
    node: &BootstrapOptions,
    discovery: &DiscoveryTarget,
) -> anyhow::Result<Option<DnsProxyOptions>> {
    let enabled =
        dns::capture_enabled(node.node_type, node.interception, args.dns_capture.as_deref()).map_err(|e| anyhow!(e))?;
    Ok(enabled.then(|| DnsProxyOptions {
        listen: args.dns_listen_address,
        resolv_conf: args.dns_resolv_conf.clone(),
        upstream_timeout: args.dns_upstream_timeout,
        discovery: discovery.clone(),
        node: nds::node(node),
    }))
}

async fn start_dns_proxy(options: DnsProxyOptions) -> anyhow::Result<dns::DnsProxy> {
    let listen = options.listen;
    dns::start(options).await.with_context(|| {
        format!("DNS proxy: cannot listen on {listen} (change --dns-listen-address, or turn it off with ISTIO_META_DNS_CAPTURE=false)")
    })
}

fn envoy_options(
    args: &EnvoyArgs,
    node: &BootstrapOptions,
    proxy_config: &ProxyConfig,
) -> anyhow::Result<EnvoyOptions> {
    let path = supervise::resolve_envoy(args.envoy_path.as_deref()).map_err(|e| anyhow!(e))?;
    let defaults = EnvoyOptions::new(path);
    let from_config = |d: Option<ConfigDuration>| d.map(ConfigDuration::to_std);
    Ok(EnvoyOptions {
        config_dir: args.config_dir.clone(),
        base_id: args.base_id.unwrap_or(u32::from(node.admin_port)),
        drain_duration: args
            .drain_duration
            .or_else(|| from_config(proxy_config.drain_duration))
            .unwrap_or(defaults.drain_duration),
        concurrency: args
            .concurrency
            .or_else(|| proxy_config.concurrency.and_then(|c| u32::try_from(c).ok()))
            .unwrap_or(defaults.concurrency),
        log_level: args.proxy_log_level.clone(),
        component_log_level: args.proxy_component_log_level.clone(),
        termination_drain: args
            .termination_drain_duration
            .or_else(|| from_config(proxy_config.termination_drain_duration))
            .unwrap_or(defaults.termination_drain),
        kill_grace: args.kill_grace,
        ..defaults
    })
}

/// SIGTERM or SIGINT. Both handlers are installed now, before Envoy starts, so that an early
/// signal is not lost to the default action (which would orphan Envoy).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => eprintln!("SIGTERM: draining and stopping Envoy"),
            _ = int.recv() => eprintln!("SIGINT: draining and stopping Envoy"),
        }
    })
}

async fn wait(args: &WaitArgs) -> anyhow::Result<()> {
    let rest = args.url.strip_prefix("http://").ok_or_else(|| anyhow!("--url must be http://host:port/path"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_seconds);
    let per_request = Duration::from_millis(args.request_timeout_millis.max(1));
    loop {
        let last = match supervise::local_request(authority, "GET", path, per_request).await {
            Ok(response) if response.status == 200 => {
                return write_stdout("proxy ready\n");
            }
            Ok(response) => format!("HTTP {}: {}", response.status, response.body.trim()),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("proxy not ready after {}s ({}: {last})", args.timeout_seconds, args.url);
        }
        tokio::time::sleep(Duration::from_millis(args.period_millis)).await;
    }
}

async fn request(args: &RequestArgs) -> anyhow::Result<()> {
    let path = if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    let authority = format!("127.0.0.1:{}", args.debug_port);
    let method = args.method.to_ascii_uppercase();
    let response = supervise::local_request(&authority, &method, &path, Duration::from_secs(30))
        .await
        .with_context(|| format!("{method} http://{authority}{path}"))?;
    write_stdout(&response.body)?;
    if response.status >= 400 {
        bail!("{method} {path}: HTTP {}", response.status);
    }
    Ok(())
}

/// Validates every flag first (nothing is applied if one is wrong), then applies the rules:
/// `iptables-restore --noflush` (and `ip6tables-restore`), then the TPROXY routes.
fn init(args: &InitArgs) -> anyhow::Result<()> {
    let config = capture_config(args)?;
    let rules = capture::rules(&config);
    if args.dry_run {
        return write_stdout(&capture_apply::dry_run_text(&config, &rules));
    }
    if args.skip_rule_apply {
        eprintln!("--skip-rule-apply: the CNI plugin sets up the redirection; nothing applied");
        return Ok(());
    }
    if rules.is_empty() {
        return write_stdout("interception mode NONE: no rules to apply\n");
    }
    capture_apply::apply(&rules)?;
    let v6 = if rules.ipv6.is_some() { " and IPv6" } else { "" };
    write_stdout(&format!("traffic capture applied: {} mode, IPv4{v6}\n", format!("{:?}", config.mode).to_uppercase()))
}

fn capture_config(args: &InitArgs) -> anyhow::Result<CaptureConfig> {
    let dns_env = std::env::var("ISTIO_META_DNS_CAPTURE").ok();
    let base = CaptureConfig {
        mode: args.mode,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid.unwrap_or(args.proxy_uid),
        redirect_dns: args.redirect_dns.unwrap_or_else(|| capture::dns_capture_from_env(dns_env.as_deref())),
        ipv6: args.ipv6.unwrap_or_else(capture_apply::has_global_ipv6),
        ..CaptureConfig::default()
    };
    let flags = CaptureFlags {
        include_ip_ranges: args.include_ip_ranges.clone(),
        exclude_ip_ranges: args.exclude_ip_ranges.clone(),
        include_inbound_ports: args.include_inbound_ports.clone(),
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        include_outbound_ports: args.include_outbound_ports.clone(),
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        reroute_interfaces: args.reroute_interfaces.clone(),
        exclude_interfaces: args.exclude_interfaces.clone(),
    };
    Ok(CaptureConfig::from_flags(base, &flags)?)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?}: expected true or false")),
    }
}

fn parse_interception(text: &str) -> Result<InterceptionMode, String> {
    match text.to_ascii_uppercase().as_str() {
        "REDIRECT" => Ok(InterceptionMode::Redirect),
        "TPROXY" => Ok(InterceptionMode::Tproxy),
        "NONE" => Ok(InterceptionMode::None),
        other => Err(format!("{other:?}: expected REDIRECT, TPROXY or NONE")),
    }
}

fn parse_transport(text: &str) -> Result<XdsTransport, String> {
    match text.to_ascii_uppercase().as_str() {
        "GRPC" => Ok(XdsTransport::Grpc),
        "DELTA_GRPC" => Ok(XdsTransport::DeltaGrpc),
        other => Err(format!("{other:?}: expected GRPC or DELTA_GRPC")),
    }
}

fn parse_node_type(text: &str) -> Result<NodeType, String> {
    match text {
        "sidecar" => Ok(NodeType::Sidecar),
        "router" => Ok(NodeType::Router),
        other => Err(format!("{other:?}: expected sidecar or router")),
    }
}

/// Go-style durations (`5s`, `1m30s`, `500ms`) or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let parsed = ConfigDuration::parse(text)?;
    if parsed.as_nanos() < 0 {
        return Err(format!("{text:?}: must not be negative"));
    }
    Ok(parsed.to_std())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn discovery_address_precedence() {
        let none = ProxyConfig::default();
        let istio =
            ProxyConfig { discovery_address: Some("istiod-canary.istio-system.svc:15012".into()), ..none.clone() };
        assert_eq!(discovery_address(None, &none, false), DEFAULT_DISCOVERY_ADDRESS);
        assert_eq!(discovery_address(None, &istio, false), "istiod-canary.istio-system.svc:15010");
        assert_eq!(discovery_address(Some("127.0.0.1:18000"), &istio, false), "127.0.0.1:18000");
        assert_eq!(
            discovery_address(Some("istiod.istio-system.svc:15012"), &none, false),
            "istiod.istio-system.svc:15010"
        );
        // With the mesh root the agent speaks TLS, to 15012 as configured.
        assert_eq!(discovery_address(None, &istio, true), "istiod-canary.istio-system.svc:15012");
        assert_eq!(discovery_address(None, &none, true), "istiod.istio-system.svc:15012");
    }

    #[test]
    fn labels_and_durations() {
        assert_eq!(
            parse_labels("app=a, version=v1").unwrap(),
            [("app".into(), "a".into()), ("version".into(), "v1".into())].into()
        );
        assert!(parse_labels("app").is_err());
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("-1s").is_err());
    }
}
