//! The cluster harness: a real Kubernetes API server and node for the cluster tests.
//!
//! - `KUBECONFIG` set: that cluster is used as it is (a throwaway kind or k3d cluster; load
//!   Rudder's images into it first, see the README).
//! - Else `RUDDER_K8S_LOCAL=DIR` (DIR holds the unpacked `k8s-local/` bundle): one cluster with a
//!   real node is started for this test process, on free ports and in a fresh state dir, and
//!   stopped (and every host change undone) when the process exits, even if it panics. Only
//!   one node can exist per host, so test binaries take turns through a lock file.
//! - Neither: `shared` returns `None` and the test prints `skipped: no cluster`.
//!
//! A local cluster gets what a user's cluster has and k8s-local does not: a path from pods to
//! the API server (the `kubernetes` Service's endpoint is a forwarder on the node address), a
//! cluster DNS for Service names (see `cluster_dns`), and Rudder's images and the sample apps'
//! images (`scripts/images.sh`) loaded into the node.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster_dns;

/// The node address k8s-local gives its bridge (`K8S_NODE_IP`); pods reach the host there.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Lock held while a local cluster runs: one node per host.
const HOST_LOCK: &str = "/tmp/rudder-k8s-local.lock";
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// A cluster the tests can use.
#[derive(Debug)]
pub struct Cluster {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    local: Option<LocalNode>,
}

#[derive(Debug)]
struct LocalNode {
    state_dir: PathBuf,
    bundle: PathBuf,
    /// Holds the host lock; stops the cluster once this process is gone.
    _watchdog: Child,
}

static SHARED: OnceLock<Result<Option<Cluster>, String>> = OnceLock::new();

/// The cluster of this test process, started on first use. `None` (after printing
/// `skipped: no cluster`) when neither `KUBECONFIG` nor `RUDDER_K8S_LOCAL` is set. Panics when
/// a local cluster was asked for and does not start: CI must fail then, not skip.
pub fn shared(rudder_binary: &str) -> Option<&'static Cluster> {
    let outcome = SHARED.get_or_init(|| Cluster::from_env(Path::new(rudder_binary)).map_err(|e| format!("{e:#}")));
    match outcome {
        Ok(Some(cluster)) => Some(cluster),
        Ok(None) => {
            println!("skipped: no cluster (set RUDDER_K8S_LOCAL to an unpacked k8s-local bundle, or KUBECONFIG)");
            None
        }
        Err(e) => panic!("the test cluster did not start: {e}"),
    }
}

impl Cluster {
    /// The cluster the environment names, started and loaded with images when it is local.
    pub fn from_env(rudder_binary: &Path) -> anyhow::Result<Option<Self>> {
        if let Some(kubeconfig) = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) {
            let kubectl = which("kubectl").unwrap_or_else(|| PathBuf::from("kubectl"));
            return Ok(Some(Self { kubeconfig: kubeconfig.into(), kubectl, local: None }));
        }
        let Some(dir) = std::env::var_os("RUDDER_K8S_LOCAL").filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let dir = PathBuf::from(dir);
        let bundle = if dir.join("start.sh").exists() { dir } else { dir.join("k8s-local") };
        if !bundle.join("start.sh").exists() {
            bail!("RUDDER_K8S_LOCAL={}: no k8s-local/start.sh there", bundle.display());
        }
        Self::start_local(&bundle, rudder_binary).map(Some)
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether this is the harness's own k8s-local cluster (not the user's).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// A client for the cluster, on the caller's runtime.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// The kubectl this harness uses (the bundle's, or the one on PATH).
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// A command for `program` with `KUBECONFIG` pointing at this cluster.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig).stdin(Stdio::null());
        cmd
    }

    /// `kubectl ARGS…`; an error carries its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(&self.kubectl).args(args).output().context("running kubectl")?;
        output_text(&format!("kubectl {}", args.join(" ")), out)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = self
            .command(&self.kubectl)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child.stdin.take().context("kubectl stdin")?.write_all(yaml.as_bytes())?;
        output_text("kubectl apply", child.wait_with_output()?)
    }

    /// The local cluster's state dir (its components' logs are under `logs/`); `None` for a
    /// `KUBECONFIG` cluster.
    pub fn state_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.state_dir.as_path())
    }

    /// Takes the local cluster's API server down (SIGKILL, as a crash would) until the returned
    /// guard's [`ApiServerDown::restart`]: the same command line, environment and log, its pid
    /// recorded where k8s-local's stop finds it. Errors for a `KUBECONFIG` cluster.
    pub fn kill_api_server(&self) -> anyhow::Result<ApiServerDown<'_>> {
        let state_dir = self.state_dir().context("only a local cluster's API server can be stopped")?;
        let pid_file = state_dir.join("run/kube-apiserver.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .context("the API server's pid file")?;
        let launch = crate::process::Launch::of(pid)?;
        crate::process::kill_and_wait(pid)?;
        Ok(ApiServerDown { cluster: self, state_dir: state_dir.to_owned(), launch: Some(launch) })
    }

    /// Kills (SIGKILL) the host process of a running container of `pod`, as an OOM kill or a
    /// crash would; the kubelet restarts it. Local clusters only (the node's processes are
    /// this host's).
    pub fn kill_container_process(&self, namespace: &str, pod: &str, container: &str) -> anyhow::Result<u32> {
        anyhow::ensure!(self.is_local(), "only a local cluster's containers run on this host");
        let path = format!("{{.status.containerStatuses[?(@.name==\"{container}\")].containerID}}");
        let id = self.kubectl(&["-n", namespace, "get", "pod", pod, "-o", &format!("jsonpath={path}")])?;
        let id = id.trim().rsplit("://").next().unwrap_or_default().to_owned();
        anyhow::ensure!(!id.is_empty(), "{namespace}/{pod} has no running container {container}");
        // runc puts each container in a cgroup named after its id; its processes list there.
        let mut victims = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if cgroup.contains(&id) {
                victims.push(pid);
            }
        }
        anyhow::ensure!(!victims.is_empty(), "no host process in the cgroup of container {id}");
        let main = *victims.iter().min().unwrap_or(&0);
        let status = Command::new("kill").args(["-KILL", &main.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -KILL {main}: {status}");
        Ok(main)
    }

    fn start_local(bundle: &Path, rudder_binary: &Path) -> anyhow::Result<Self> {
        let bundle = bundle.canonicalize()?;
        let state_dir = PathBuf::from(format!("/tmp/rudder-k8s-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let logs = PathBuf::from(format!("{}-logs", state_dir.display()));
        std::fs::create_dir_all(&logs)?;
        let started = logs.join("started");
        let picked: [u16; 9] = crate::process::free_ports()?;
        let api_port = picked[0];
        let names = [
            "K8S_API_PORT",
            "K8S_ETCD_PORT",
            "K8S_ETCD_PEER_PORT",
            "K8S_KCM_PORT",
            "K8S_SCHED_PORT",
            "K8S_KUBELET_PORT",
            "K8S_KUBELET_HEALTHZ_PORT",
            "K8S_PROXY_HEALTHZ_PORT",
            "K8S_PROXY_METRICS_PORT",
        ];
        let ports = names.into_iter().zip(picked);
        // The watchdog owns the cluster's life: it waits for the host lock, starts the
        // cluster, and stops it (undoing the host changes) once this process has exited.
        // A previous cluster's bridge can still be going away in the kernel when its stop
        // returns (its veths unregister asynchronously), and a start then fails to create its
        // own: wait (bounded) for it to be gone. On a failed start the logs are kept, so the
        // error can show them.
        let script = r#"
exec 9>"$HOST_LOCK"
flock 9
for _ in $(seq 300); do ip link show k8slocal0 >/dev/null 2>&1 || break; sleep 0.1; done
"$BUNDLE/start.sh" --state-dir "$STATE" --node >"$LOGS/start.log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then
  echo 0 >"$LOGS/started.tmp" && mv "$LOGS/started.tmp" "$LOGS/started"
  while kill -0 "$OWNER" 2>/dev/null; do sleep 0.5; done
  "$BUNDLE/stop.sh" --state-dir "$STATE" --purge >"$LOGS/stop.log" 2>&1 && rm -rf "$LOGS"
else
  "$BUNDLE/stop.sh" --state-dir "$STATE" --purge >"$LOGS/stop.log" 2>&1
  echo "$rc" >"$LOGS/started.tmp" && mv "$LOGS/started.tmp" "$LOGS/started"
fi
"#;
        let mut cmd = Command::new("bash");
        use std::os::unix::process::CommandExt;
        cmd.args(["-c", script])
            .env("HOST_LOCK", HOST_LOCK)
            .env("BUNDLE", &bundle)
            .env("STATE", &state_dir)
            .env("LOGS", &logs)
            .env("OWNER", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        for (name, port) in ports {
            cmd.env(name, port.to_string());
        }
        let mut watchdog = cmd.spawn().context("starting the k8s-local watchdog (bash)")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Ok(text) = std::fs::read_to_string(&started) {
                break text.trim().to_owned();
            }
            if let Some(status) = watchdog.try_wait()? {
                bail!("the k8s-local watchdog exited ({status}) before the cluster started: {}", tail(&logs));
            }
            if Instant::now() > deadline {
                bail!("k8s-local did not start within {START_TIMEOUT:?}: {}", tail(&logs));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if status != "0" {
            bail!("k8s-local start.sh --node failed (exit {status}): {}", tail(&logs));
        }
        let kubectl = bundle.join("bin/kubectl");
        let cluster = Self {
            kubeconfig: state_dir.join("admin.kubeconfig"),
            kubectl,
            local: Some(LocalNode { state_dir: state_dir.clone(), bundle: bundle.clone(), _watchdog: watchdog }),
        };
        // Pods resolve through the node's resolv.conf (k8s-local sets no cluster DNS): point it
        // at the cluster DNS this harness serves on the node address.
        std::fs::write(state_dir.join("node/resolv.conf"), format!("nameserver {NODE_IP}\n"))?;
        let forward_port = free_port()?;
        cluster_dns::spawn_node_services(
            cluster.kubeconfig.clone(),
            SocketAddr::from((NODE_IP, forward_port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
        )?;
        cluster.apply(&kubernetes_endpoints(forward_port))?;
        cluster.load_images(rudder_binary)?;
        Ok(cluster)
    }

    /// Builds the images (`scripts/images.sh --binary`) and loads them into the node.
    fn load_images(&self, rudder_binary: &Path) -> anyhow::Result<()> {
        let Some(local) = &self.local else { return Ok(()) };
        let root = workspace_root();
        let out = root.join("target/images");
        let built = Command::new(root.join("scripts/images.sh"))
            .arg("--binary")
            .arg(rudder_binary)
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .context("running scripts/images.sh")?;
        output_text("scripts/images.sh", built)?;
        for name in IMAGES {
            let loaded = Command::new(local.bundle.join("load-image.sh"))
                .arg("--state-dir")
                .arg(&local.state_dir)
                .arg(out.join(format!("{name}.tar")))
                .stdin(Stdio::null())
                .output()
                .context("running load-image.sh")?;
            output_text(&format!("load-image.sh {name}.tar"), loaded)?;
        }
        Ok(())
    }
}

/// A local cluster's API server, killed by [`Cluster::kill_api_server`]. Restarts it when
/// dropped, so a failing test leaves a cluster that k8s-local can stop.
#[derive(Debug)]
pub struct ApiServerDown<'a> {
    cluster: &'a Cluster,
    state_dir: PathBuf,
    /// How it was started; taken once it runs again.
    launch: Option<crate::process::Launch>,
}

impl ApiServerDown<'_> {
    /// Starts the API server again and waits until it is ready.
    pub fn restart(mut self) -> anyhow::Result<()> {
        let launch = self.launch.take().context("already restarted")?;
        self.start(&launch)
    }

    fn start(&self, launch: &crate::process::Launch) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let child = launch.command()?.process_group(0).spawn().context("starting the API server again")?;
        std::fs::write(self.state_dir.join("run/kube-apiserver.pid"), format!("{}\n", child.id()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while self.cluster.kubectl(&["get", "--raw", "/readyz"]).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the API server was not ready again in {START_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for ApiServerDown<'_> {
    fn drop(&mut self) {
        if let Some(launch) = self.launch.take()
            && let Err(e) = self.start(&launch)
        {
            eprintln!("restarting the API server: {e:#}");
        }
    }
}

/// The archives `scripts/images.sh` writes.
pub const IMAGES: [&str; 4] = ["rudder", "rudder-proxy", "httpbin", "curl"];

fn kubernetes_endpoints(port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: rudder-e2e
addressType: IPv4
endpoints:
- addresses: [\"{NODE_IP}\"]
  conditions: {{ready: true}}
ports:
- name: https
  port: {port}
  protocol: TCP
"
    )
}

/// A client for the cluster `kubeconfig` names, on the caller's runtime.
pub(crate) async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn output_text(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tail(logs: &Path) -> String {
    let text = std::fs::read_to_string(logs.join("start.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A port free on loopback now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}
