//! The workload identity end to end, with real Envoy and real TLS: discovery in file mode with
//! a CA directory, `rudder ca token` for the agent, `rudder proxy sidecar` getting its
//! certificate over the TLS port, Envoy fetching it over SDS and reaching discovery over TLS
//! with it. A short lifetime shows renewal (a new certificate served to the same Envoy); a
//! token for another identity gets no certificate.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::process::{Proc, free_ports};
use serde_json::Value;

fn rudder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn get(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl").args(["-s", "--max-time", "2", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `default` secret Envoy holds: (version, certificate chain).
fn workload_secret(admin: u16) -> Option<(String, String)> {
    let url = format!("http://127.0.0.1:{admin}/config_dump?resource=dynamic_active_secrets");
    rudder_e2e::mesh::workload_certificate(&serde_json::from_str(&get(&url)?).ok()?)
}

struct Fixture {
    dir: PathBuf,
    discovery: Proc,
    secure: u16,
    monitoring: u16,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.discovery.stop(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_discovery(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("rudder-identity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let [plain, secure, monitoring] = free_ports().unwrap();
    let discovery = Proc::spawn(
        "discovery",
        &rudder(),
        &args(&[
            "discovery",
            "--config-dir",
            &dir.join("config").display().to_string(),
            "--ca-dir",
            &dir.join("ca").display().to_string(),
            "--grpc-address",
            &format!("127.0.0.1:{plain}"),
            "--secure-grpc-address",
            &format!("127.0.0.1:{secure}"),
            "--monitoring-address",
            &format!("127.0.0.1:{monitoring}"),
            "--no-webhook",
        ]),
        Some(&dir.join("discovery.log")),
    )
    .unwrap();
    wait_for("discovery ready", Duration::from_secs(30), || get(&format!("http://127.0.0.1:{monitoring}/ready")));
    Fixture { dir, discovery, secure, monitoring }
}

fn token(ca_dir: &Path, namespace: &str, account: &str, out: &Path) {
    let status = std::process::Command::new(rudder())
        .args(["ca", "token", "--ca-dir"])
        .arg(ca_dir)
        .args(["-n", namespace, "--service-account", account, "-o"])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

fn sidecar(fx: &Fixture, name: &str, token_file: &Path, ttl: &str) -> (Proc, u16) {
    let root = fx.dir.join("ca/root-cert.pem");
    let [admin, status, prometheus] = free_ports().unwrap();
    let proxy = Proc::spawn(
        name,
        &rudder(),
        &args(&[
            "proxy",
            "sidecar",
            "--envoy-path",
            &rudder_xds::testing::envoy_path().unwrap().display().to_string(),
            "--pod-name",
            name,
            "--namespace",
            "default",
            "--ip",
            "127.0.0.1",
            "--interception-mode",
            "NONE",
            "--dns-capture=false",
            "--discovery-address",
            &format!("127.0.0.1:{}", fx.secure),
            "--ca-root-cert",
            &root.display().to_string(),
            "--ca-token",
            &token_file.display().to_string(),
            "--service-account",
            "sleep",
            "--secret-ttl",
            ttl,
            "--workload-socket",
            &fx.dir.join(format!("sds-{name}/socket")).display().to_string(),
            "--metrics-address",
            "127.0.0.1:0",
            "--admin-port",
            &admin.to_string(),
            "--status-port",
            &status.to_string(),
            "--prometheus-port",
            &prometheus.to_string(),
            "--base-id",
            &admin.to_string(),
            // Stopped within the guard's 5 s grace: the agent's default shutdown drains for 5 s
            // first, and Envoy (its own process group) outlived an agent killed after that.
            "--drain-duration",
            "1s",
            "--termination-drain-duration",
            "0s",
            "--config-dir",
            &fx.dir.join(format!("envoy-{name}")).display().to_string(),
        ]),
        Some(&fx.dir.join(format!("{name}.log"))),
    )
    .unwrap();
    (proxy, admin)
}

#[test]
fn the_agent_gets_its_certificate_serves_it_over_sds_and_renews_it() {
    let fx = start_discovery("renew");
    let token_file = fx.dir.join("token");
    token(&fx.dir.join("ca"), "default", "sleep", &token_file);
    let (_proxy, admin) = sidecar(&fx, "sleep-1", &token_file, "6s");

    // Envoy got the certificate over SDS and, with it, its config over TLS.
    let (first_version, first_chain) =
        wait_for("the workload certificate in Envoy", Duration::from_secs(60), || workload_secret(admin));
    wait_for("Envoy ready (config over TLS xDS)", Duration::from_secs(60), || {
        get(&format!("http://127.0.0.1:{admin}/ready")).filter(|r| r.trim() == "LIVE")
    });

    // Discovery saw the client certificate: the stream is bound to the identity.
    let adsz: Value =
        serde_json::from_str(&get(&format!("http://127.0.0.1:{}/debug/adsz", fx.monitoring)).unwrap()).unwrap();
    let identities: Vec<&str> =
        adsz["connections"].as_array().unwrap().iter().filter_map(|c| c["identity"].as_str()).collect();
    assert!(identities.contains(&"spiffe://cluster.local/ns/default/sa/sleep"), "{adsz}");

    // 6 s lifetime: renewed at 80 % (~4.8 s), pushed to the same Envoy.
    let (second_version, second_chain) = wait_for("a renewed certificate in Envoy", Duration::from_secs(30), || {
        workload_secret(admin).filter(|(v, _)| *v != first_version)
    });
    assert_ne!(first_chain, second_chain, "renewal brings a new certificate");
    let log = std::fs::read_to_string(fx.dir.join("sleep-1.log")).unwrap();
    assert_eq!(log.matches("envoy started").count(), 1, "Envoy was not restarted:\n{log}");
    assert!(log.contains("workload certificate renewed"), "{log}");
    println!("renewed: SDS version {first_version} → {second_version}");
}

#[test]
fn a_token_of_another_identity_gets_no_certificate() {
    let fx = start_discovery("deny");
    let token_file = fx.dir.join("token");
    // The token says default/httpbin; the agent asks for default/sleep.
    token(&fx.dir.join("ca"), "default", "httpbin", &token_file);
    let (mut proxy, admin) = sidecar(&fx, "sleep-2", &token_file, "1h");
    let log_file = fx.dir.join("sleep-2.log");
    let log = wait_for("the CA's refusal in the agent's log", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_file).ok().filter(|l| l.contains("no workload certificate yet"))
    });
    assert!(log.contains("spiffe://cluster.local/ns/default/sa/httpbin"), "the refusal names the caller: {log}");
    assert!(!log.contains("envoy started"), "Envoy must not start without a certificate: {log}");
    assert!(get(&format!("http://127.0.0.1:{admin}/ready")).is_none());
    proxy.check_running().unwrap();
}
