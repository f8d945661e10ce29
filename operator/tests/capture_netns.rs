//! `rudder proxy init` for real, the way the injected init container runs it: in a network
//! namespace this test creates (never the machine's own), the rules land in the kernel
//! (`iptables-save` shows the ISTIO chains), and they work: a connection from an ordinary user to
//! an address routed out of the namespace's own interface arrives at the outbound capture port, while the
//! proxy's own user (1337) is not captured, and an application's DNS query reaches the agent's
//! port even from a source port the proxy has just used. Needs root, `ip`, `iptables-restore`,
//! `iptables-save`, `setpriv` and `bash` (and `/usr/bin/python3` for the DNS test); prints
//! `skipped: …` otherwise.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The injector's default init-container arguments.
const INJECTED: [&str; 18] = [
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
];

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
}

fn is_root() -> bool {
    // `Uid:\treal\teffective\t...`
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status.lines().any(|line| line.strip_prefix("Uid:").and_then(|ids| ids.split_whitespace().nth(1)) == Some("0"))
    })
}

/// Whether this machine can run these tests; prints the skip line when not.
fn can_run() -> bool {
    let tools = ["ip", "iptables-restore", "iptables-save", "setpriv", "bash", "timeout"];
    if is_root() && tools.into_iter().all(on_path) {
        return true;
    }
    eprintln!("skipped: needs root and iptables (and ip, setpriv, bash)");
    false
}

fn text(out: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A network namespace of this test's own, deleted (with anything started in it) on drop, so
/// also when an assertion fails.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("rudder-capture-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
        assert!(out.status.success(), "ip netns add {name}: {}", text(&out));
        let ns = Self { name, children: Vec::new() };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace and insists that it succeeds.
    fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?} in {}: {}", self.name, text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `rudder` inside the namespace, with a clean DNS-capture setting.
    fn rudder(&self) -> Command {
        let mut cmd = self.exec(env!("CARGO_BIN_EXE_rudder"));
        cmd.env_remove("ISTIO_META_DNS_CAPTURE");
        cmd
    }

    /// A veth pair, both ends in the namespace, one owning 10.244.9.1/24: 10.244.9.9 is
    /// routable but nobody answers. (A veth rather than a dummy interface: not every kernel has
    /// the dummy driver.)
    fn add_pod_network(&self) {
        self.ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"]);
        self.ok(&["ip", "addr", "add", "10.244.9.1/24", "dev", "eth0"]);
        self.ok(&["ip", "link", "set", "eth0-peer", "up"]);
        self.ok(&["ip", "link", "set", "eth0", "up"]);
    }

    /// `bash` inside the namespace as `uid`/`gid`, under `timeout`.
    fn bash_as(&self, uid: u32, seconds: u32, script: &str) -> Output {
        self.exec("timeout")
            .arg(seconds.to_string())
            .args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups"])
            .args(["bash", "-c", script])
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        assert!(
            std::thread::panicking() || !Path::new("/run/netns").join(&self.name).exists(),
            "network namespace {} was not deleted",
            self.name
        );
    }
}

/// An HTTP GET to 10.244.9.9:80 from bash's /dev/tcp; the response, or what went wrong.
const CLIENT: &str = r#"exec 3<>/dev/tcp/10.244.9.9/80 && printf 'GET / HTTP/1.0\r\nHost: app\r\n\r\n' >&3 && cat <&3"#;

#[test]
fn redirect_rules_are_applied_and_capture_outbound_tcp() {
    if !can_run() {
        return;
    }
    let mut ns = Netns::new();
    ns.add_pod_network();

    let init = ns.rudder().args(INJECTED).arg("--log_output_level=default:info").output().unwrap();
    assert!(init.status.success(), "{}", text(&init));
    assert!(String::from_utf8_lossy(&init.stdout).contains("traffic capture applied"), "{}", text(&init));

    let nat = ns.ok(&["iptables-save", "-t", "nat"]);
    for want in [
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        // DNS capture is on by default.
        "-A OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    ] {
        assert!(nat.lines().any(|line| line == want), "missing {want:?} in\n{nat}");
    }

    // A listener on the outbound capture port stands in for Envoy.
    let mut echo = ns
        .rudder()
        .args(["echo", "--address", "127.0.0.1", "--port", "15001", "--instance", "outbound-capture"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = echo.stdout.take().unwrap();
    ns.children.push(echo);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "echo said {line:?}");

    // An application user's connection to 10.244.9.9:80 lands on 15001.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let out = ns.bash_as(1000, 5, CLIENT);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && body.contains("x-echo-instance: outbound-capture") {
            break body;
        }
        assert!(Instant::now() < deadline, "the connection was not captured: {}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The proxy's own user goes out for real, where nothing answers.
    let proxy = ns.bash_as(1337, 2, CLIENT);
    assert!(!proxy.status.success(), "uid 1337 was captured: {}", text(&proxy));
    assert!(!String::from_utf8_lossy(&proxy.stdout).contains("outbound-capture"), "{}", text(&proxy));
}

#[test]
fn tproxy_rules_and_route_are_applied() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let mut args = INJECTED;
    args[9] = "TPROXY";
    let init = ns.rudder().args(args).arg("--ipv6=false").output().unwrap();
    assert!(init.status.success(), "{}", text(&init));

    let mangle = ns.ok(&["iptables-save", "-t", "mangle"]);
    for want in [
        ":ISTIO_DIVERT - [0:0]",
        ":ISTIO_TPROXY - [0:0]",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_DIVERT -j MARK --set-xmark 0x539/0xffffffff",
        "-A ISTIO_INBOUND -p tcp -m socket --transparent -j ISTIO_DIVERT",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY",
    ] {
        assert!(mangle.lines().any(|line| line == want), "missing {want:?} in\n{mangle}");
    }
    assert!(mangle.contains("-j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff"), "{mangle}");
    let nat = ns.ok(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"), "{nat}");
    assert!(!nat.contains("ISTIO_INBOUND"), "inbound is mangle's job in TPROXY mode:\n{nat}");
    assert!(ns.ok(&["ip", "rule"]).contains("fwmark 0x539 lookup 133"));
    assert!(ns.ok(&["ip", "route", "show", "table", "133"]).contains("local default dev lo"));
}

#[test]
fn bad_flags_apply_nothing() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let mut args = INJECTED;
    args[17] = "15090,15o21";
    let init = ns.rudder().args(args).output().unwrap();
    assert_eq!(init.status.code(), Some(1), "{}", text(&init));
    let stderr = String::from_utf8_lossy(&init.stderr);
    assert!(stderr.contains("-d (inbound ports not to capture): \"15o21\" is not a port number"), "{stderr}");
    let all = ns.ok(&["iptables-save"]);
    assert!(!all.contains("ISTIO"), "rules were applied after all:\n{all}");
}

/// A stand-in for the agent's DNS proxy: answers every A query on 127.0.0.1:15053 with
/// 10.96.0.5, and prints `ready` once bound.
const DNS_STAND_IN: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 15053))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(2048)
    end = q.index(0, 12) + 5
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([10, 96, 0, 5])
    s.sendto(q[:2] + struct.pack("!HHHHH", 0x8580, 1, 1, 0, 0) + q[12:end] + answer, peer)
"#;

/// A DNS query for `httpbin.testns1` to 10.244.9.53:53 from source port `argv[1]`; prints
/// `answered` or `unanswered` (after 1.5 s).
const DNS_QUERY_FROM_PORT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.connect(("10.244.9.53", 53))
name = b"".join(bytes([len(p)]) + p for p in b"httpbin.testns1".split(b".")) + b"\0"
s.send(struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1))
s.settimeout(1.5)
try:
    s.recv(2048)
    print("answered")
except socket.timeout:
    print("unanswered")
"#;

/// The system's Python, readable by the test users (a per-user shim may not be).
const PYTHON: &str = "/usr/bin/python3";

/// The proxy's own lookup leaves a conntrack entry (pod:port → nameserver:53, not redirected).
/// An application query from the same source port a moment later must still reach the agent:
/// the two live in different conntrack zones. Without them the application's query matches the
/// proxy's entry and goes to the nameserver itself, which cannot answer mesh names.
#[test]
fn application_dns_is_captured_even_from_a_port_the_proxy_just_used() {
    if !can_run() {
        return;
    }
    if !Path::new(PYTHON).is_file() {
        eprintln!("skipped: needs {PYTHON}");
        return;
    }
    let mut ns = Netns::new();
    ns.add_pod_network();
    let init = ns.rudder().args(INJECTED).output().unwrap();
    assert!(init.status.success(), "{}", text(&init));

    let mut agent = ns
        .exec("setpriv")
        .args(["--reuid=1337", "--regid=1337", "--clear-groups", PYTHON, "-c", DNS_STAND_IN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = agent.stdout.take().unwrap();
    ns.children.push(agent);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let query_as = |uid: u32, port: u16| {
        let script = format!("exec {PYTHON} -c '{DNS_QUERY_FROM_PORT}' {port}");
        let out = ns.bash_as(uid, 10, &script);
        assert!(out.status.success(), "query as {uid} from port {port}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Baseline: an application query is answered by the agent, the proxy's goes out for real.
    assert_eq!(query_as(1000, 40_001), "answered");
    for port in [40_002, 40_003] {
        assert_eq!(query_as(1337, port), "unanswered", "the proxy's own lookup was captured");
        assert_eq!(query_as(1000, port), "answered", "the application's lookup from port {port} escaped capture");
    }
    let raw = ns.ok(&["iptables-save", "-t", "raw"]);
    assert!(raw.contains("-A OUTPUT -p udp -m udp --dport 53 -j CT --zone 2"), "{raw}");
}
