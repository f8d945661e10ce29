//! [`LocalMesh`]: discovery in file mode on a copy of `examples/local/`, two `rudder echo`
//! workloads (httpbin v1 and v2) each behind a `rudder proxy sidecar` in capture mode NONE, a
//! client sidecar (`sleep`), an "external" echo without a sidecar, and an unreachable host (a
//! listener whose accept queue is full). Discovery runs the mesh CA (`--ca-dir`): every proxy
//! gets a workload certificate for its app's service account (a `rudder ca token`), talks to
//! discovery over TLS, and sidecars talk to each other over auto mTLS. Every address is
//! `127.0.<block>.<host>`, so several
//! meshes can run side by side; the config files say `127.0.0.<host>` and are relocated to
//! the mesh's block when copied.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{Client, Reply, Req};
use crate::process::Proc;

pub const NAMESPACE: &str = "testns1";
/// The demo service, as its clients name it.
pub const SERVICE_HOST: &str = "httpbin.testns1.svc.cluster.local";
pub const SERVICE_PORT: u16 = 8000;
/// Where each echo app listens on its workload address (the Sidecar's defaultEndpoint).
pub const APP_PORT: u16 = 18000;
/// Host part of the addresses.
pub const DISCOVERY_HOST: u8 = 1;
pub const CLIENT_HOST: u8 = 20;
pub const EXTERNAL_HOST: u8 = 50;
/// The ingress gateway (`rudder proxy router`, labels `istio: ingressgateway`, namespace
/// istio-system), and the ports its service maps 80 and 443 to (`examples/local/`).
pub const GATEWAY_HOST: u8 = 30;
pub const GATEWAY_NAME: &str = "ingressgateway";
pub const GATEWAY_NAMESPACE: &str = "istio-system";
pub const GATEWAY_HTTP_PORT: u16 = 8080;
/// The egress gateway (`istio: egressgateway`, namespace istio-system), listening on 8080.
pub const EGRESS_HOST: u8 = 31;
pub const EGRESS_NAME: &str = "egressgateway";
pub const GATEWAY_HTTPS_PORT: u16 = 8443;
pub const UNREACHABLE_HOST: u8 = 40;
pub const UNREACHABLE_PORT: u16 = 9000;
const GRPC_PORT: u16 = 15010;
/// TLS xDS and the CA (`CreateCertificate`): every proxy of the local mesh gets a workload
/// certificate and reaches discovery here.
const SECURE_GRPC_PORT: u16 = 15012;
const MONITORING_PORT: u16 = 15014;
const ADMIN_PORT: u16 = 15000;
/// The agent's merged metrics (`/stats/prometheus`), as pilot-agent's.
pub const AGENT_METRICS_PORT: u16 = 15020;
/// How long to wait for processes to come up or config to arrive.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One echo workload with its sidecar.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub version: &'static str,
    pub host: u8,
}

pub const WORKLOADS: [Workload; 2] = [
    Workload { name: "httpbin-v1", version: "v1", host: 11 },
    Workload { name: "httpbin-v2", version: "v2", host: 12 },
];

/// What the mesh is built from.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The `rudder` binary.
    pub rudder: PathBuf,
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Config to start from (`examples/local`).
    pub config_src: PathBuf,
    /// Address block; `None` picks a free one (`Some(0)` keeps the addresses as written).
    pub block: Option<u8>,
    /// Where process logs go (default: the mesh's work directory).
    pub work_dir: Option<PathBuf>,
    /// Envoy log level for the sidecars.
    pub envoy_log_level: String,
    /// Lifetime the proxies ask for their workload certificates (`--secret-ttl`; default 24h).
    pub secret_ttl: Option<String>,
}

impl MeshOptions {
    /// The mesh of `config_src` (`examples/local`) with `rudder` and `envoy`, on a free address
    /// block, in a fresh work directory, Envoy logging warnings, 24 h certificates.
    pub fn new(rudder: PathBuf, envoy: PathBuf, config_src: PathBuf) -> Self {
        Self {
            rudder,
            envoy,
            config_src,
            block: None,
            work_dir: None,
            envoy_log_level: "warning".into(),
            secret_ttl: None,
        }
    }
}

/// A running local mesh. Dropping it stops every process.
#[derive(Debug)]
pub struct LocalMesh {
    pub block: u8,
    pub work_dir: PathBuf,
    pub config_dir: PathBuf,
    options: MeshOptions,
    client: Client,
    discovery: Option<Proc>,
    apps: BTreeMap<String, Proc>,
    sidecars: BTreeMap<String, Proc>,
    external: Option<Proc>,
    _unreachable: Unreachable,
    owns_work_dir: bool,
    /// Discovery's push version before the last config change, until a push after it is seen.
    changed_after: Option<u64>,
}

impl LocalMesh {
    /// Starts everything and waits until every sidecar is ready with config.
    pub async fn start(options: MeshOptions) -> anyhow::Result<Self> {
        let block = match options.block {
            Some(b) => b,
            None => free_block()?,
        };
        let (work_dir, owns_work_dir) = match &options.work_dir {
            Some(dir) => (dir.clone(), false),
            None => (std::env::temp_dir().join(format!("rudder-mesh-{}-{block}", std::process::id())), true),
        };
        let config_dir = work_dir.join("config");
        std::fs::create_dir_all(&config_dir)?;
        copy_relocated(&options.config_src, &config_dir, block)?;
        let unreachable =
            Unreachable::new(SocketAddr::new(ip(block, UNREACHABLE_HOST).into(), UNREACHABLE_PORT)).await?;
        let mut mesh = Self {
            block,
            work_dir,
            config_dir,
            options,
            client: Client::new(),
            discovery: None,
            apps: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            external: None,
            _unreachable: unreachable,
            owns_work_dir,
            changed_after: None,
        };
        mesh.start_discovery()?;
        mesh.wait_http_ok(&mesh.monitoring_url("/ready"), "discovery").await?;
        // Discovery made the CA (and the token key) at start.
        std::fs::copy(mesh.ca_dir().join("root-cert.pem"), mesh.root_cert())?;
        for w in WORKLOADS {
            mesh.start_app(w.name, w.version, w.host, APP_PORT)?;
        }
        mesh.external = Some(mesh.spawn_echo("external", "external", EXTERNAL_HOST, SERVICE_PORT)?);
        for w in WORKLOADS {
            let labels = format!("app=httpbin,version={}", w.version);
            mesh.start_proxy("sidecar", w.name, w.host, NAMESPACE, &labels)?;
        }
        mesh.start_proxy("sidecar", "sleep", CLIENT_HOST, NAMESPACE, "app=sleep")?;
        mesh.start_proxy(
            "router",
            GATEWAY_NAME,
            GATEWAY_HOST,
            GATEWAY_NAMESPACE,
            "istio=ingressgateway,app=istio-ingressgateway",
        )?;
        mesh.start_proxy(
            "router",
            EGRESS_NAME,
            EGRESS_HOST,
            GATEWAY_NAMESPACE,
            "istio=egressgateway,app=istio-egressgateway",
        )?;
        for w in WORKLOADS {
            mesh.wait_http_ok(&format!("http://{}:{APP_PORT}/get", ip(block, w.host)), w.name).await?;
        }
        let names: Vec<String> = mesh.sidecars.keys().cloned().collect();
        for name in names {
            let admin = mesh.admin_url(&name, "/ready");
            mesh.wait_http_ok(&admin, &format!("sidecar {name}")).await?;
        }
        Ok(mesh)
    }

    /// `127.0.<block>.<host>`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        ip(self.block, host)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work_dir.join(format!("{name}.log"))
    }

    fn rudder(&self, name: &str, args: Vec<String>) -> anyhow::Result<Proc> {
        Proc::spawn(name, &self.options.rudder, &args, Some(&self.log(name)))
    }

    /// The CA directory discovery keeps its root and token key in.
    pub fn ca_dir(&self) -> PathBuf {
        self.work_dir.join("ca")
    }

    /// The mesh root as the proxies read it (the `istio-ca-root-cert` ConfigMap's stand-in).
    pub fn root_cert(&self) -> PathBuf {
        self.work_dir.join("root-cert.pem")
    }

    /// A CA token for `namespace`/`account`, as `rudder ca token` issues it.
    fn issue_token(&self, namespace: &str, account: &str) -> anyhow::Result<PathBuf> {
        let path = self.work_dir.join(format!("token-{namespace}-{account}"));
        let status = std::process::Command::new(&self.options.rudder)
            .args(["ca", "token", "--ca-dir"])
            .arg(self.ca_dir())
            .args(["--namespace", namespace, "--service-account", account, "-o"])
            .arg(&path)
            .status()?;
        anyhow::ensure!(status.success(), "rudder ca token failed: {status}");
        Ok(path)
    }

    fn start_discovery(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "discovery".into(),
            "--config-dir".into(),
            self.config_dir.display().to_string(),
            "--secure-grpc-address".into(),
            format!("{}:{SECURE_GRPC_PORT}", self.ip(DISCOVERY_HOST)),
            "--ca-dir".into(),
            self.ca_dir().display().to_string(),
            "--grpc-address".into(),
            format!("{}:{GRPC_PORT}", self.ip(DISCOVERY_HOST)),
            "--monitoring-address".into(),
            format!("{}:{MONITORING_PORT}", self.ip(DISCOVERY_HOST)),
            // Meshes run side by side on one host: no admission server on the shared 15017.
            "--no-webhook".into(),
        ];
        self.discovery = Some(self.rudder("discovery", args)?);
        Ok(())
    }

    fn spawn_echo(&self, name: &str, version: &str, host: u8, port: u16) -> anyhow::Result<Proc> {
        let args = vec![
            "echo".into(),
            "--address".into(),
            self.ip(host).to_string(),
            "--port".into(),
            port.to_string(),
            "--instance".into(),
            name.into(),
            "--version".into(),
            version.into(),
        ];
        self.rudder(&format!("app-{name}"), args)
    }

    fn start_app(&mut self, name: &str, version: &str, host: u8, port: u16) -> anyhow::Result<()> {
        let app = self.spawn_echo(name, version, host, port)?;
        self.apps.insert(name.to_owned(), app);
        Ok(())
    }

    /// Starts `rudder proxy <kind>` (sidecar or router) for workload `name` at `host`.
    fn start_proxy(&mut self, kind: &str, name: &str, host: u8, namespace: &str, labels: &str) -> anyhow::Result<()> {
        let ip = self.ip(host).to_string();
        let base_id = u32::from(self.block) * 100 + u32::from(host);
        // The workload's identity: its service account is its app label (httpbin for both
        // versions, as the WorkloadEntries say).
        let account = labels.split(',').find_map(|pair| pair.strip_prefix("app=")).unwrap_or(name);
        let token = self.issue_token(namespace, account)?;
        let args: Vec<String> = [
            "proxy",
            kind,
            "--envoy-path",
            &self.options.envoy.display().to_string(),
            "--discovery-address",
            &format!("{}:{SECURE_GRPC_PORT}", self.ip(DISCOVERY_HOST)),
            "--ca-root-cert",
            &self.root_cert().display().to_string(),
            "--ca-token",
            &token.display().to_string(),
            "--service-account",
            account,
            "--workload-socket",
            &self.work_dir.join(format!("sds-{name}")).join("socket").display().to_string(),
            "--secret-ttl",
            self.options.secret_ttl.as_deref().unwrap_or("24h"),
            "--pod-name",
            name,
            "--namespace",
            namespace,
            "--ip",
            &ip,
            "--labels",
            labels,
            "--interception-mode",
            "NONE",
            "--metrics-address",
            &format!("{ip}:{AGENT_METRICS_PORT}"),
            "--admin-address",
            &ip,
            "--admin-port",
            &ADMIN_PORT.to_string(),
            "--base-id",
            &base_id.to_string(),
            "--concurrency",
            "1",
            "--drain-duration",
            "1s",
            "--termination-drain-duration",
            "0s",
            "--proxyLogLevel",
            &self.options.envoy_log_level,
            "--config-dir",
            &self.work_dir.join(format!("envoy-{name}")).display().to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let proc = self.rudder(&format!("{kind}-{name}"), args)?;
        self.sidecars.insert(name.to_owned(), proc);
        Ok(())
    }

    /// What a proxy's process (agent and Envoy, access log included) has written so far.
    pub fn proxy_log(&self, name: &str) -> String {
        let kind = if name == GATEWAY_NAME || name == EGRESS_NAME { "router" } else { "sidecar" };
        std::fs::read_to_string(self.log(&format!("{kind}-{name}"))).unwrap_or_default()
    }

    /// The process id of a proxy's agent (`rudder proxy`; Envoy is its child).
    pub fn proxy_pid(&self, name: &str) -> Option<u32> {
        self.sidecars.get(name).map(Proc::pid)
    }

    /// URL on discovery's monitoring port.
    pub fn monitoring_url(&self, path: &str) -> String {
        format!("http://{}:{MONITORING_PORT}{path}", self.ip(DISCOVERY_HOST))
    }

    /// URL on a sidecar's Envoy admin port.
    pub fn admin_url(&self, sidecar: &str, path: &str) -> String {
        let host = match sidecar {
            "sleep" => CLIENT_HOST,
            GATEWAY_NAME => GATEWAY_HOST,
            EGRESS_NAME => EGRESS_HOST,
            other => WORKLOADS.iter().find(|w| w.name == other).map(|w| w.host).unwrap_or(CLIENT_HOST),
        };
        format!("http://{}:{ADMIN_PORT}{path}", self.ip(host))
    }

    /// URL on a proxy's agent metrics port (`/stats/prometheus`).
    pub fn agent_metrics_url(&self, proxy: &str) -> String {
        let admin = self.admin_url(proxy, "");
        let authority = admin.trim_start_matches("http://").rsplit_once(':').map_or("", |(h, _)| h).to_owned();
        format!("http://{authority}:{AGENT_METRICS_PORT}/stats/prometheus")
    }

    /// URL of an echo app itself (bypassing its sidecar), for stats and failure switches.
    pub fn app_url(&self, workload: &Workload, path: &str) -> String {
        format!("http://{}:{APP_PORT}{path}", self.ip(workload.host))
    }

    pub fn external_url(&self, path: &str) -> String {
        format!("http://{}:{SERVICE_PORT}{path}", self.ip(EXTERNAL_HOST))
    }

    /// A plain HTTP request to `path` with `Host: host`, sent to the ingress gateway.
    pub fn via_gateway(&self, host: &str, path: &str) -> Req {
        Req::get(format!("http://{}:{GATEWAY_HTTP_PORT}{path}", self.ip(GATEWAY_HOST)), host)
    }

    /// The ingress gateway's HTTPS address.
    pub fn gateway_https(&self) -> SocketAddr {
        SocketAddr::new(self.ip(GATEWAY_HOST).into(), GATEWAY_HTTPS_PORT)
    }

    /// A request to `path` of `host` sent through the client sidecar's listener for the
    /// service port (capture mode NONE: the app talks to its sidecar's address).
    pub fn via_client(&self, host: &str, path: &str) -> Req {
        Req::get(format!("http://{}:{SERVICE_PORT}{path}", self.ip(CLIENT_HOST)), host)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn send(&self, req: &Req) -> anyhow::Result<Reply> {
        self.client.send(req).await
    }

    /// Polls `url` until it answers 2xx, failing early when a process died.
    async fn wait_http_ok(&mut self, url: &str, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(reply) = self.client.send(&Req::get(url, "")).await
                && reply.status.is_success()
            {
                return Ok(());
            }
            self.check_processes()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what} not ready at {url} after {READY_TIMEOUT:?}; logs in {}",
                self.work_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails with the name of any process that exited.
    pub fn check_processes(&mut self) -> anyhow::Result<()> {
        let logs = self.work_dir.display().to_string();
        for p in self.discovery.iter_mut().chain(self.apps.values_mut()).chain(self.sidecars.values_mut()) {
            p.check_running().map_err(|e| anyhow::anyhow!("{e} (logs in {logs})"))?;
        }
        Ok(())
    }

    /// Writes `yaml` as `<name>.yaml` in the config directory (relocated to this block);
    /// [`wait_synced`](Self::wait_synced) then waits for a push made after the change.
    pub async fn apply(&mut self, name: &str, yaml: &str) -> anyhow::Result<()> {
        if self.changed_after.is_none() {
            self.changed_after = self.push_version().await.ok();
        }
        let path = self.config_dir.join(format!("{name}.yaml"));
        let tmp = self.config_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, relocate(yaml, self.block))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Removes `<name>.yaml` from the config directory.
    pub async fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        if self.changed_after.is_none() {
            self.changed_after = self.push_version().await.ok();
        }
        match std::fs::remove_file(self.config_dir.join(format!("{name}.yaml"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Discovery's debug view of which config each proxy has acknowledged.
    pub async fn syncz(&self) -> anyhow::Result<Value> {
        self.client.get_json(&self.monitoring_url("/debug/syncz")).await
    }

    /// Discovery's current push version.
    pub async fn push_version(&self) -> anyhow::Result<u64> {
        let adsz = self.client.get_json(&self.monitoring_url("/debug/adsz")).await?;
        Ok(adsz["push_version"].as_u64().unwrap_or(0))
    }

    /// Waits until discovery has pushed the config directory as it is now (a push after the
    /// last [`apply`](Self::apply)) and every sidecar has answered everything pushed since.
    pub async fn wait_synced(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let wanted = self.sidecars.len();
        loop {
            self.check_processes()?;
            let pushed = match (self.changed_after, self.push_version().await) {
                (Some(before), Ok(now)) => now > before,
                (None, Ok(_)) => true,
                (_, Err(_)) => false,
            };
            let sync = self.syncz().await;
            if pushed && sync.as_ref().is_ok_and(|s| synced(s, wanted)) && self.nothing_draining().await {
                self.changed_after = None;
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "proxies not in sync after {READY_TIMEOUT:?} (a push after version {:?} seen: {pushed}; syncz: {}); logs in {}",
                self.changed_after,
                sync.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                self.work_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Envoy's `/config_dump` of a sidecar (`sleep`, `httpbin-v1`, …).
    pub async fn config_dump(&self, sidecar: &str, query: &str) -> anyhow::Result<Value> {
        self.client.get_json(&self.admin_url(sidecar, &format!("/config_dump{query}"))).await
    }

    /// A sidecar's Envoy stats whose names contain `filter` (letters, digits, `.` and `_`
    /// only: it is sent as Envoy's filter regex), by full name. Counters and gauges only.
    /// Whether every proxy is done draining replaced listeners and filter chains: until then,
    /// connections opened before a change (a client's pooled upstream connection) still run
    /// the old chain, e.g. an old authorization policy.
    async fn nothing_draining(&self) -> bool {
        for name in self.sidecars.keys() {
            match self.sidecar_stats(name, "listener_manager.total_.*_draining").await {
                Ok(stats) if stats.values().all(|v| *v == 0) => {}
                _ => return false,
            }
        }
        true
    }

    pub async fn sidecar_stats(&self, sidecar: &str, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let url = self.admin_url(sidecar, &format!("/stats?filter={filter}"));
        let reply = self.client.send(&Req::get(&url, "")).await?;
        anyhow::ensure!(reply.status.is_success(), "GET {url}: {}", reply.status);
        Ok(String::from_utf8_lossy(&reply.body)
            .lines()
            .filter_map(|line| line.rsplit_once(": "))
            .filter_map(|(name, value)| Some((name.to_owned(), value.trim().parse().ok()?)))
            .collect())
    }

    /// A sidecar's Envoy `/clusters` (text: one `cluster::host::field::value` line each).
    pub async fn sidecar_clusters(&self, sidecar: &str) -> anyhow::Result<String> {
        let url = self.admin_url(sidecar, "/clusters");
        let reply = self.client.send(&Req::get(&url, "")).await?;
        anyhow::ensure!(reply.status.is_success(), "GET {url}: {}", reply.status);
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }

    /// The echo app's `/echo/stats`.
    pub async fn app_stats(&self, workload: &Workload) -> anyhow::Result<Value> {
        self.client.get_json(&self.app_url(workload, "/echo/stats")).await
    }

    /// Clears every app's counters and failure switches.
    pub async fn reset_apps(&self) -> anyhow::Result<()> {
        for w in &WORKLOADS {
            self.client.post(&self.app_url(w, "/echo/reset")).await?;
        }
        self.client.post(&self.external_url("/echo/reset")).await?;
        Ok(())
    }

    /// Stops discovery (the sidecars keep their config).
    pub fn stop_discovery(&mut self) {
        if let Some(mut d) = self.discovery.take() {
            d.stop(Duration::from_secs(5));
        }
    }

    /// Kills discovery with SIGKILL (no shutdown of its own; the sidecars keep their config).
    pub fn kill_discovery(&mut self) {
        if let Some(mut d) = self.discovery.take() {
            d.kill();
        }
    }

    /// Starts discovery again on the same addresses and waits until it is ready.
    pub async fn restart_discovery(&mut self) -> anyhow::Result<()> {
        self.stop_discovery();
        self.start_discovery_again().await
    }

    /// Starts discovery after [`kill_discovery`](Self::kill_discovery) or
    /// [`stop_discovery`](Self::stop_discovery) and waits until it is ready.
    pub async fn start_discovery_again(&mut self) -> anyhow::Result<()> {
        self.changed_after = None;
        self.start_discovery()?;
        self.wait_http_ok(&self.monitoring_url("/ready"), "discovery").await
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        // Sidecars first so they do not log a lost control plane while stopping.
        self.sidecars.clear();
        self.discovery = None;
        self.apps.clear();
        self.external = None;
        if self.owns_work_dir && std::env::var_os("RUDDER_KEEP_MESH").is_none() {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

/// The workload certificate (`default` secret) in an Envoy's secrets config dump
/// (`/config_dump?resource=dynamic_active_secrets`): its SDS version and certificate chain.
pub fn workload_certificate(dump: &Value) -> Option<(String, String)> {
    let secret = dump["configs"].as_array()?.iter().find(|s| s["name"] == "default")?;
    let chain = &secret["secret"]["tls_certificate"]["certificate_chain"]["inline_string"];
    Some((
        secret["version_info"].as_str().unwrap_or_default().to_owned(),
        chain.as_str().unwrap_or_default().to_owned(),
    ))
}

/// Whether `wanted` proxies are connected and each has taken and answered the latest push.
fn synced(sync: &Value, wanted: usize) -> bool {
    let proxies = sync.as_array().map(Vec::as_slice).unwrap_or_default();
    proxies.len() >= wanted && proxies.iter().all(|p| p["synced"] == true)
}

pub fn ip(block: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, block, host)
}

/// Rewrites `127.0.0.<host>` addresses into block `block`.
pub fn relocate(text: &str, block: u8) -> String {
    if block == 0 { text.to_owned() } else { text.replace("127.0.0.", &format!("127.0.{block}.")) }
}

fn copy_relocated(src: &Path, dst: &Path, block: u8) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml")) {
            let text = std::fs::read_to_string(&path)?;
            let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            std::fs::write(dst.join(name), relocate(&text, block))?;
        }
    }
    Ok(())
}

/// A block not used by another mesh of this process, whose discovery address is free.
fn free_block() -> anyhow::Result<u8> {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let start = (std::process::id() % 100) as u8 + 100;
    for _ in 0..100 {
        let block = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) % 100);
        if block == 0 {
            continue;
        }
        let probe = SocketAddr::new(ip(block, DISCOVERY_HOST).into(), GRPC_PORT);
        if std::net::TcpListener::bind(probe).is_ok() {
            return Ok(block);
        }
    }
    anyhow::bail!("no free 127.0.x.0/24 block for a local mesh")
}

/// A host that accepts no connection: a listener with a backlog of 0 whose accept queue is
/// kept full by connections nobody accepts, so further SYNs are dropped and a client's
/// connect times out — a connect timeout without leaving the machine.
#[derive(Debug)]
struct Unreachable {
    _listener: tokio::net::TcpListener,
    _fillers: Vec<tokio::net::TcpStream>,
}

impl Unreachable {
    async fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(addr)?;
        let listener = socket.listen(0)?;
        // With a backlog of 0 the accept queue holds one connection, and is full once it does.
        // That first connect has room, so it completes as soon as the kernel handles it; if it
        // does not within the generous timeout, the queue was full already (a kernel that
        // counts the backlog differently). Either way no later SYN is answered. (A short
        // timeout here could give up on a connect that was merely slow on a loaded machine and
        // leave the queue empty.)
        let mut fillers = Vec::new();
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
        Ok(Self { _listener: listener, _fillers: fillers })
    }
}
