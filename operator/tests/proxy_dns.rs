//! `rudder proxy sidecar` with DNS capture, end to end: `rudder discovery --config-dir`
//! serves a ServiceEntry with an address; the sidecar's DNS proxy answers its host, then a
//! host added to the config directory afterwards. Needs the Envoy binary (the sidecar runs it).
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use rudder_xds::testing::envoy_path;

const PATIENCE: Duration = Duration::from_secs(60);

/// A UDP port free on 127.0.0.1 whose TCP twin is free too.
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Kills the process (and waits for it) when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rudder(log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rudder"));
    for var in ["POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "PILOT_ADDRESS", "PROXY_CONFIG", "ISTIO_META_DNS_CAPTURE"] {
        cmd.env_remove(var);
    }
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::null()).stderr(file);
    cmd
}

fn service_entry(name: &str, host: &str, address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: testns1\n\
         spec:\n  hosts:\n  - {host}\n  addresses:\n  - {address}\n  ports:\n  - number: 8000\n    name: http\n    \
         protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: {address}\n"
    )
}

/// The A records `name` resolves to at `port`, `None` without an answer.
fn resolve(port: u16, name: &str) -> Option<Vec<Ipv4Addr>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut query = Message::new(77, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&query.to_vec().unwrap(), ("127.0.0.1", port)).ok()?;
    let mut buf = [0; 4096];
    let len = socket.recv(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..len]).ok()?;
    Some(
        answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect(),
    )
}

fn wait_resolves(port: u16, name: &str, want: Ipv4Addr, logs: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = resolve(port, name);
        if got.as_deref() == Some(&[want][..]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never resolved to {want} (last: {got:?}); logs in {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sidecar_dns_proxy_answers_config_dir_hosts_and_follows_changes() {
    let envoy = envoy_path().unwrap();
    let dir = std::env::temp_dir().join(format!("rudder-proxy-dns-{}", std::process::id()));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("httpbin.yaml"),
        service_entry("httpbin", "httpbin.testns1.svc.cluster.local", "127.0.10.5"),
    )
    .unwrap();
    // No nameserver: only mesh hosts resolve, nothing leaves the machine.
    let resolv_conf = dir.join("resolv.conf");
    std::fs::write(&resolv_conf, "search testns1.svc.cluster.local svc.cluster.local cluster.local\n").unwrap();

    let [grpc, monitoring, admin, status, prometheus] = rudder_e2e::process::free_ports().unwrap();
    let _discovery = Killed(
        rudder(&dir.join("discovery.log"))
            .args(["discovery", "--no-webhook", "--config-dir"])
            .arg(&config)
            .args(["--grpc-address", &format!("127.0.0.1:{grpc}")])
            .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
            .args(["--debounce-after", "10ms", "--poll-interval", "50ms"])
            .spawn()
            .unwrap(),
    );
    let dns_port = free_dns_port();
    let _sidecar = Killed(
        rudder(&dir.join("sidecar.log"))
            .args(["proxy", "sidecar", "--envoy-path"])
            .arg(&envoy)
            .args(["--pod-name", "sleep-1", "--namespace", "testns1", "--ip", "127.0.0.1"])
            .args(["--interception-mode", "NONE", "--dns-capture", "true"])
            .args(["--dns-listen-address", &format!("127.0.0.1:{dns_port}"), "--dns-resolv-conf"])
            .arg(&resolv_conf)
            .args(["--discovery-address", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-port", &admin.to_string(), "--base-id", &admin.to_string()])
            .args(["--metrics-address", "127.0.0.1:0"])
            .args(["--status-port", &status.to_string(), "--prometheus-port", &prometheus.to_string()])
            .args(["--concurrency", "1", "--termination-drain-duration", "0s", "--config-dir"])
            .arg(dir.join("envoy"))
            .spawn()
            .unwrap(),
    );

    wait_resolves(dns_port, "httpbin.testns1.svc.cluster.local", Ipv4Addr::new(127, 0, 10, 5), &dir);
    std::fs::write(config.join("api.yaml"), service_entry("api", "api.example.com", "127.0.20.1")).unwrap();
    wait_resolves(dns_port, "api.example.com", Ipv4Addr::new(127, 0, 20, 1), &dir);
    let _ = std::fs::remove_dir_all(&dir);
}
