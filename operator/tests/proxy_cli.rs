//! `rudder proxy` as the injected pod runs it: the bootstrap from the injector's env vars is
//! one real Envoy accepts; `proxy sidecar` with no discovery server starts Envoy, which waits
//! for its first config (admin says 503, readiness is not 200, `proxy wait` gives up), and
//! SIGTERM to the agent takes Envoy down with it. Plus the small verbs and the error paths;
//! `init` here runs against fake iptables tools (the real ones: `capture_netns.rs`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rudder_xds::agent::supervise::local_request;
use rudder_xds::testing::envoy_path;

fn rudder() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rudder"));
    // The test environment's own pod identity must not leak in.
    for var in ["POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "PILOT_ADDRESS", "PROXY_CONFIG", "ISTIO_METAJSON_LABELS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// The env vars and args the injector gives the proxy container (see the webhook templates).
fn injected(cmd: &mut Command) -> &mut Command {
    cmd.env("POD_NAME", "reviews-v1-abc")
        .env("POD_NAMESPACE", "bookinfo")
        .env("INSTANCE_IP", "127.0.0.1")
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
        .env("ISTIO_META_WORKLOAD_NAME", "reviews-v1")
        .env("ISTIO_META_MESH_ID", "cluster.local")
        .env("ISTIO_META_POD_PORTS", r#"[{"containerPort":9080,"protocol":"TCP"}]"#)
        .env("ISTIO_METAJSON_LABELS", r#"{"app":"reviews","version":"v1"}"#)
        .env("PROXY_CONFIG", r#"{"discoveryAddress":"istiod.istio-system.svc:15012"}"#)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn text(out: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status();
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// The agent and its Envoy, stopped (SIGTERM, then SIGKILL) when the test ends, pass or fail.
struct Agent {
    child: Child,
    envoy_pid: Option<u32>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill("-TERM", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.envoy_pid.filter(|pid| alive(*pid)) {
            kill("-KILL", pid);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Status and body of a local GET, or `None` if nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    runtime()
        .block_on(local_request(&format!("127.0.0.1:{port}"), "GET", path, Duration::from_secs(2)))
        .ok()
        .map(|r| (r.status, r.body))
}

#[test]
fn bootstrap_from_the_injected_env_is_accepted_by_envoy() {
    let out = injected(&mut rudder())
        .args(["proxy", "bootstrap", "--domain", "bookinfo.svc.cluster.local"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = &json["node"];
    assert_eq!(node["id"], "sidecar~127.0.0.1~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local");
    assert_eq!(node["cluster"], "reviews.bookinfo");
    let meta = &node["metadata"];
    assert_eq!(meta["LABELS"]["version"], "v1");
    assert_eq!(meta["INSTANCE_IPS"], "127.0.0.1");
    assert_eq!(meta["INTERCEPTION_MODE"], "NONE");
    assert_eq!(meta["WORKLOAD_NAME"], "reviews-v1");
    assert_eq!(meta["MESH_ID"], "cluster.local");
    assert_eq!(meta["POD_PORTS"], r#"[{"containerPort":9080,"protocol":"TCP"}]"#);
    assert_eq!(meta["PROXY_CONFIG"]["discoveryAddress"], "istiod.istio-system.svc:15012");
    // The agent speaks plaintext: istiod's mTLS port becomes its plaintext one.
    let xds =
        json["static_resources"]["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "xds-grpc").unwrap();
    let socket = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(socket["address"], "istiod.istio-system.svc");
    assert_eq!(socket["port_value"], 15010);

    let dir = std::env::temp_dir().join(format!("rudder-proxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = Command::new(envoy_path().unwrap())
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(check.status.success(), "{}", text(&check));
}

#[test]
fn with_the_mesh_root_the_bootstrap_reaches_discovery_over_tls_with_the_sds_certificate() {
    let dir = std::env::temp_dir().join(format!("rudder-proxy-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.join("root-cert.pem");
    let material = rudder_xds::ca::generate_root("cluster.local", std::time::SystemTime::now()).unwrap();
    std::fs::write(&root, &material.root_cert).unwrap();
    let out = injected(&mut rudder())
        .args(["proxy", "bootstrap", "--ca-root-cert"])
        .arg(&root)
        .args(["--service-account", "reviews", "--workload-socket", "/tmp/rudder-sds/socket"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["node"]["metadata"]["WORKLOAD_IDENTITY"], "spiffe://cluster.local/ns/bookinfo/sa/reviews");
    let clusters = json["static_resources"]["clusters"].as_array().unwrap();
    let xds = clusters.iter().find(|c| c["name"] == "xds-grpc").unwrap();
    let socket = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(socket["port_value"], 15012, "TLS port kept");
    assert_eq!(xds["transport_socket"]["name"], "envoy.transport_sockets.tls");
    let sds = clusters.iter().find(|c| c["name"] == "sds-grpc").unwrap();
    let pipe = &sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"];
    assert_eq!(pipe, "/tmp/rudder-sds/socket");
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = Command::new(envoy_path().unwrap())
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(check.status.success(), "{}", text(&check));
}

#[test]
fn sidecar_waits_for_config_and_stops_envoy_on_sigterm() {
    let [admin, status, prometheus, nobody, agent_port] = rudder_e2e::process::free_ports().unwrap();
    let dir = std::env::temp_dir().join(format!("rudder-proxy-sidecar-{}", std::process::id()));
    // The app probes the injector would hand over; Envoy's admin stands in for the app.
    let probers = serde_json::json!({
        "/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": admin, "scheme": "HTTP"}},
        "/app-health/app/livez": {"httpGet": {"path": "/server_info", "port": admin}},
        "/app-health/app/startupz": {"tcpSocket": {"port": admin}, "timeoutSeconds": 2},
    });
    let child = injected(&mut rudder())
        .env("ENVOY_PATH", envoy_path().unwrap())
        .env("ISTIO_KUBE_APP_PROBERS", probers.to_string())
        .args(["proxy", "sidecar", "--domain", "bookinfo.svc.cluster.local"])
        .args(["--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"])
        .args(["--discovery-address", &format!("127.0.0.1:{nobody}")])
        .args(["--admin-port", &admin.to_string(), "--status-port", &status.to_string()])
        .args(["--metrics-address", &format!("127.0.0.1:{agent_port}")])
        .args(["--prometheus-port", &prometheus.to_string(), "--base-id", &admin.to_string()])
        .args(["--concurrency", "1", "--termination-drain-duration", "200ms"])
        .arg("--config-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, envoy_pid: None };
    let mut line = String::new();
    BufReader::new(agent.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid: u32 =
        line.trim().strip_prefix("envoy started: pid ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap();
    agent.envoy_pid = Some(pid);
    assert!(dir.join("envoy-rev.json").is_file());

    // Admin comes up; with no discovery server and initial_fetch_timeout 0, Envoy stays
    // PRE_INITIALIZING, so nothing reports ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, body) = loop {
        if let Some(answer) = get(admin, "/ready") {
            break answer;
        }
        assert!(Instant::now() < deadline, "Envoy admin on {admin} never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((code, body.trim()), (503, "PRE_INITIALIZING"));
    assert_ne!(get(status, "/healthz/ready").map(|(code, _)| code), Some(200));

    // The agent's status port: the app probes run against the "app" (503 while it is not
    // ready, 200 for the others, 404 for a probe nobody set up), and the merged metrics.
    let probe = |path: &str| get(agent_port, path).map(|(code, _)| code);
    assert_eq!(probe("/app-health/app/readyz"), Some(503));
    assert_eq!(probe("/app-health/app/livez"), Some(200));
    assert_eq!(probe("/app-health/app/startupz"), Some(200));
    assert_eq!(probe("/app-health/other/readyz"), Some(404));
    let (code, metrics) = get(agent_port, "/stats/prometheus").unwrap();
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("envoy_server_"), "Envoy's own stats pass through: {metrics}");

    let request =
        rudder().args(["proxy", "request", "--debug-port", &admin.to_string(), "GET", "server_info"]).output().unwrap();
    assert!(request.status.success(), "{}", text(&request));
    let info: serde_json::Value = serde_json::from_slice(&request.stdout).unwrap();
    assert_eq!(info["state"], "PRE_INITIALIZING");
    assert!(info["command_line_options"]["base_id"].as_str().is_some_and(|id| id == admin.to_string()), "{info}");

    let url = format!("http://127.0.0.1:{status}/healthz/ready");
    let wait = rudder()
        .args(["proxy", "wait", "--url", &url, "--timeoutSeconds", "1", "--periodMillis", "100"])
        .output()
        .unwrap();
    assert!(!wait.status.success(), "{}", text(&wait));
    assert!(String::from_utf8_lossy(&wait.stderr).contains("not ready"), "{}", text(&wait));

    kill("-TERM", agent.child.id());
    let exit = agent.child.wait().unwrap();
    assert!(exit.success(), "agent: {exit}");
    assert!(!alive(pid), "Envoy (pid {pid}) outlived the agent");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn envoy_dying_makes_the_agent_fail_loudly() {
    let fake = ["/bin/false", "/usr/bin/false"].into_iter().map(PathBuf::from).find(|p| p.is_file()).unwrap();
    let out = injected(&mut rudder())
        .args([
            "proxy",
            "router",
            "--metrics-address",
            "127.0.0.1:0",
            "--admin-port",
            &free_port().to_string(),
            "--envoy-path",
        ])
        .arg(&fake)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Envoy exited unexpectedly"), "{}", text(&out));
}

#[test]
fn missing_envoy_is_a_clear_error() {
    let out =
        injected(&mut rudder()).args(["proxy", "sidecar", "--envoy-path", "/nonexistent/envoy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/envoy not found"), "{}", text(&out));
}

/// The injector's init-container arguments.
const INIT: [&str; 19] = [
    "proxy",
    "init",
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "--log_output_level=default:info",
];

/// [`INIT`] with `-x` (excluded IP ranges) set.
fn init_with_excluded(ranges: &str) -> Vec<&str> {
    let mut args = INIT.to_vec();
    let at = args.iter().position(|a| *a == "-x").unwrap() + 1;
    args[at] = ranges;
    args
}

#[test]
fn init_dry_run_prints_the_rules_with_dns_capture_on_by_default() {
    let out = rudder().env_remove("ISTIO_META_DNS_CAPTURE").args(INIT).arg("--dry-run").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rules = String::from_utf8(out.stdout).unwrap();
    for want in [
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053",
        "-A ISTIO_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
        "COMMIT",
    ] {
        assert!(rules.lines().any(|line| line == want), "missing {want:?} in\n{rules}");
    }

    let off = rudder().env("ISTIO_META_DNS_CAPTURE", "false").args(INIT).arg("--dry-run").output().unwrap();
    let off = String::from_utf8(off.stdout).unwrap();
    assert!(off.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT") && !off.contains("15053"), "{off}");
    let forced =
        rudder().env("ISTIO_META_DNS_CAPTURE", "false").args(INIT).args(["--dry-run", "--redirect-dns"]).output();
    let forced = String::from_utf8(forced.unwrap().stdout).unwrap();
    assert!(forced.contains("--to-ports 15053"), "{forced}");
    let dropped =
        rudder().env_remove("ISTIO_META_DNS_CAPTURE").args(INIT).args(["--dry-run", "--redirect-dns=false"]).output();
    assert!(!String::from_utf8(dropped.unwrap().stdout).unwrap().contains("15053"));

    let none = rudder().args(["proxy", "init", "-m", "NONE", "--dry-run"]).output().unwrap();
    assert!(none.status.success(), "{}", text(&none));
    assert!(!String::from_utf8_lossy(&none.stdout).contains("-A "), "{}", text(&none));
}

/// A directory standing in for PATH, with fake `iptables-restore` (and optionally `ip`) that
/// record their arguments and input instead of touching the machine's firewall.
struct FakeTools(PathBuf);

impl FakeTools {
    fn new(name: &str, with_ip: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("rudder-proxy-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut tools = vec!["iptables-restore", "ip6tables-restore"];
        if with_ip {
            tools.push("ip");
        }
        for tool in tools {
            let script = format!(
                "#!/bin/sh\n\
                 echo \"{tool} $*\" >> '{dir}/calls'\n\
                 /usr/bin/cat >> '{dir}/input'\n\
                 if [ -n \"$FAKE_FAIL\" ]; then echo \"{tool}: line 7 failed\" >&2; exit 1; fi\n",
                dir = dir.display()
            );
            let path = dir.join(tool);
            std::fs::write(&path, script).unwrap();
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            std::fs::set_permissions(&path, permissions).unwrap();
        }
        Self(dir)
    }

    fn init(&self) -> Command {
        let mut cmd = rudder();
        cmd.env("PATH", &self.0).env_remove("ISTIO_META_DNS_CAPTURE").env_remove("FAKE_FAIL");
        cmd
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }
}

impl Drop for FakeTools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn init_checks_then_applies_through_iptables_restore() {
    let fake = FakeTools::new("apply", false);
    let out = fake.init().args(INIT).arg("--ipv6=false").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fake.read("calls"), "iptables-restore --test --noflush\niptables-restore --noflush\n");
    let input = fake.read("input");
    assert_eq!(input.matches("-A ISTIO_OUTPUT -j ISTIO_REDIRECT").count(), 2, "{input}");

    let v6 = FakeTools::new("apply6", false);
    let out = v6.init().args(init_with_excluded("fd00::/8")).arg("--ipv6=false").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        v6.read("calls"),
        "iptables-restore --test --noflush\nip6tables-restore --test --noflush\n\
         iptables-restore --noflush\nip6tables-restore --noflush\n"
    );
    assert!(v6.read("input").contains("-A ISTIO_OUTPUT -d fd00::/8 -j RETURN"));
}

#[test]
fn init_failures_name_the_flag_or_the_command() {
    // A bad flag: nothing runs.
    let fake = FakeTools::new("bad-flag", true);
    let out = fake.init().args(init_with_excluded("10.0.0.0/8,10.300.0.0/16")).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("-x (outbound IP ranges not to capture): \"10.300.0.0/16\""), "{stderr}");
    assert_eq!(fake.read("calls"), "");

    // iptables-restore refuses: its command line and its stderr are in the error.
    let out = fake.init().env("FAKE_FAIL", "1").args(INIT).arg("--ipv6=false").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("iptables-restore --test --noflush` failed"), "{stderr}");
    assert!(stderr.contains("iptables-restore: line 7 failed"), "{stderr}");

    // TPROXY without `ip`: said before anything is applied.
    let no_ip = FakeTools::new("no-ip", false);
    let out = no_ip.init().args(["proxy", "init", "-m", "TPROXY", "--ipv6=false"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ip not found on PATH: TPROXY mode needs the `ip` command"), "{stderr}");
    assert_eq!(no_ip.read("calls"), "");

    // TPROXY with `ip`: the policy route after the rules.
    let out = fake.init().args(["proxy", "init", "-m", "TPROXY", "--ipv6=false"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        fake.read("calls").ends_with(
            "iptables-restore --noflush\nip -f inet rule add fwmark 1337 lookup 133\n\
             ip -f inet route add local default dev lo table 133\n"
        ),
        "{}",
        fake.read("calls")
    );
}

#[test]
fn request_without_a_listener_fails() {
    let out = rudder()
        .args(["proxy", "request", "--debug-port", &free_port().to_string(), "GET", "/ready"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
}
