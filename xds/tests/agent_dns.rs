//! The agent's DNS proxy over real UDP and TCP on 127.0.0.1: mesh hosts answered from the
//! name table, other names forwarded to a fake upstream nameserver, SERVFAIL when the upstream
//! stays silent, garbage ignored; and end to end, the table fed over NDS by an in-process
//! discovery server and following its changes.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rudder_xds::agent::bootstrap::BootstrapOptions;
use rudder_xds::agent::dns::{self, DnsOptions, DnsProxyOptions, DnsServer, Lookup, TTL};
use rudder_xds::agent::nds;
use rudder_xds::model::{Resolution, Service, Snapshot};
use rudder_xds::nametable::{NameInfo, NameTable};
use rudder_xds::server::DiscoveryServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(10);

fn localhost0() -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)
}

fn query(id: u16, name: &str, record_type: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message
}

/// One query over UDP; `None` if nothing comes back within `wait`.
async fn ask_udp_bytes(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Message> {
    let socket = UdpSocket::bind(localhost0()).await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0; 65_535];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await.ok()?.unwrap();
    Some(Message::from_vec(&buf[..len]).unwrap())
}

async fn ask_udp(server: SocketAddr, message: &Message) -> Message {
    ask_udp_bytes(server, &message.to_vec().unwrap(), PATIENCE).await.expect("no answer over UDP")
}

async fn ask_tcp(server: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = message.to_vec().unwrap();
    stream.write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = tokio::time::timeout(PATIENCE, stream.read_u16()).await.unwrap().unwrap();
    let mut answer = vec![0; usize::from(len)];
    stream.read_exact(&mut answer).await.unwrap();
    Message::from_vec(&answer).unwrap()
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn table() -> NameTable {
    let info = NameInfo {
        ips: vec!["127.0.10.5".into(), "127.0.10.6".into()],
        registry: "Kubernetes".into(),
        shortname: "httpbin".into(),
        namespace: "testns1".into(),
        alt_hosts: vec!["httpbin.testns1.svc".into(), "httpbin.testns1".into(), "httpbin".into()],
    };
    NameTable { table: [("httpbin.testns1.svc.cluster.local".to_owned(), info)].into() }
}

/// A DNS server on a free port with `table`, forwarding to `upstreams`.
async fn server(upstreams: Vec<SocketAddr>, upstream_timeout: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (_tx, rx) = watch::channel(Arc::new(Lookup::from_table(&table())));
    let options = DnsOptions {
        listen: localhost0(),
        upstreams,
        search: vec!["testns1.svc.cluster.local".into(), "svc.cluster.local".into(), "cluster.local".into()],
        upstream_timeout,
    };
    let server = DnsServer::bind(options, rx).await.unwrap();
    let addr = server.local_addr().unwrap();
    (addr, tokio::spawn(server.run()))
}

/// A fake upstream nameserver on UDP and TCP: answers every A query with 127.0.77.7 and
/// counts the queries.
struct FakeUpstream {
    addr: SocketAddr,
    queries: Arc<std::sync::atomic::AtomicUsize>,
    _tasks: tokio::task::JoinSet<()>,
}

fn fake_answer(packet: &[u8]) -> Vec<u8> {
    let request = Message::from_vec(packet).unwrap();
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let name = request.queries[0].name().clone();
    response.add_answer(Record::from_rdata(name, 60, RData::A(A(ip("127.0.77.7")))));
    response.to_vec().unwrap()
}

impl FakeUpstream {
    async fn start() -> Self {
        // UDP and TCP on one port: retry while the TCP twin of a free UDP port is taken.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind(localhost0()).await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (Arc::new(udp), tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let counter = queries.clone();
        tasks.spawn(async move {
            let mut buf = vec![0; 65_535];
            loop {
                let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                udp.send_to(&fake_answer(&buf[..len]), peer).await.unwrap();
            }
        });
        let counter = queries.clone();
        tasks.spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let len = stream.read_u16().await.unwrap();
                let mut packet = vec![0; usize::from(len)];
                stream.read_exact(&mut packet).await.unwrap();
                let answer = fake_answer(&packet);
                stream.write_all(&u16::try_from(answer.len()).unwrap().to_be_bytes()).await.unwrap();
                stream.write_all(&answer).await.unwrap();
            }
        });
        Self { addr, queries, _tasks: tasks }
    }

    fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn mesh_hosts_are_answered_from_the_table_over_udp_and_tcp() {
    let upstream = FakeUpstream::start().await;
    let (addr, _server) = server(vec![upstream.addr], PATIENCE).await;
    for name in [
        "httpbin.testns1.svc.cluster.local",
        "HTTPBIN.testns1.svc.cluster.local.",
        "httpbin.testns1",
        "httpbin",
        // What a resolver tries first for `httpbin.testns1` with the pod's search path.
        "httpbin.testns1.testns1.svc.cluster.local",
    ] {
        for answer in
            [ask_udp(addr, &query(7, name, RecordType::A)).await, ask_tcp(addr, &query(8, name, RecordType::A)).await]
        {
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert_eq!(a_records(&answer), [ip("127.0.10.5"), ip("127.0.10.6")], "{name}");
            assert!(answer.answers.iter().all(|r| r.ttl == TTL));
            assert_eq!(answer.queries.len(), 1);
        }
    }
    let answer = ask_udp(addr, &query(9, "httpbin.testns1", RecordType::A)).await;
    assert_eq!(answer.metadata.id, 9);
    assert!(answer.metadata.recursion_desired);
    // Only IPv4 is known: AAAA is an empty NOERROR, not NXDOMAIN (which would fail the name).
    let aaaa = ask_udp(addr, &query(10, "httpbin.testns1", RecordType::AAAA)).await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(upstream.queries(), 0, "mesh hosts must not reach the upstream");
}

#[tokio::test]
async fn other_names_are_forwarded_and_the_upstream_answer_relayed() {
    let upstream = FakeUpstream::start().await;
    let (addr, _server) = server(vec![upstream.addr], PATIENCE).await;
    let answer = ask_udp(addr, &query(21, "www.example.com", RecordType::A)).await;
    assert_eq!(answer.metadata.id, 21);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&answer), [ip("127.0.77.7")]);
    assert_eq!(answer.answers[0].ttl, 60, "relayed as is");
    let answer = ask_tcp(addr, &query(22, "www.example.com", RecordType::A)).await;
    assert_eq!((answer.metadata.id, a_records(&answer)), (22, vec![ip("127.0.77.7")]));
    assert_eq!(upstream.queries(), 2);
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail_within_the_timeout() {
    // Bound but never answering; then the second upstream is not even there.
    let silent = UdpSocket::bind(localhost0()).await.unwrap();
    let timeout = Duration::from_millis(400);
    let (addr, _server) = server(vec![silent.local_addr().unwrap()], timeout).await;
    let started = Instant::now();
    let answer = ask_udp(addr, &query(31, "www.example.com", RecordType::A)).await;
    let took = started.elapsed();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.metadata.id, 31);
    assert_eq!(answer.queries.len(), 1);
    assert!(took >= timeout && took < timeout + Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn malformed_packets_are_ignored_and_the_server_keeps_serving() {
    let (addr, _server) = server(Vec::new(), Duration::from_millis(100)).await;
    for garbage in [&b""[..], b"\x00", b"not a dns message at all", &[0xff; 40]] {
        assert!(ask_udp_bytes(addr, garbage, Duration::from_millis(200)).await.is_none());
    }
    // A response (QR set) is not a query either.
    let mut response = query(41, "httpbin", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert!(ask_udp_bytes(addr, &response.to_vec().unwrap(), Duration::from_millis(200)).await.is_none());
    // Garbage over TCP closes that connection only.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await.unwrap();
    assert!(closed.is_err() || rest.is_empty());

    let answer = ask_udp(addr, &query(42, "httpbin", RecordType::A)).await;
    assert_eq!(a_records(&answer).len(), 2);
    let answer = ask_tcp(addr, &query(43, "httpbin", RecordType::A)).await;
    assert_eq!(a_records(&answer).len(), 2);
}

fn service(hostname: &str, namespace: &str, name: &str, address: &str, kubernetes: bool) -> Service {
    Service {
        hostname: hostname.into(),
        namespace: namespace.into(),
        name: name.into(),
        ports: Vec::new(),
        addresses: vec![address.into()],
        resolution: Resolution::ClientSideLb,
        mesh_external: false,
        export_to: Vec::new(),
        kubernetes,
        traffic_distribution: Default::default(),
        subject_alt_names: Vec::new(),
    }
}

fn snapshot(services: &[Service]) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        services: services.iter().map(|s| (s.hostname.clone(), Arc::new(s.clone()))).collect(),
        ..Default::default()
    })
}

/// Asks until `name` resolves to `want` (the table arrives asynchronously).
async fn wait_resolves(addr: SocketAddr, name: &str, want: Ipv4Addr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = ask_udp(addr, &query(1, name, RecordType::A)).await;
        if a_records(&answer) == [want] {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never resolved to {want}: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_table_comes_from_discovery_over_nds_and_follows_changes() {
    let httpbin = service("httpbin.testns1.svc.cluster.local", "testns1", "httpbin", "127.0.10.5", true);
    let (snapshots, rx) = watch::channel(snapshot(std::slice::from_ref(&httpbin)));
    // Discovery comes up after the agent: the agent keeps retrying until it is there.
    let discovery_addr = std::net::TcpListener::bind(localhost0()).unwrap().local_addr().unwrap();

    // No upstream at all: whatever resolves came from the table.
    let resolv_conf = std::env::temp_dir().join(format!("rudder-dns-test-{}.conf", std::process::id()));
    std::fs::write(&resolv_conf, "search testns1.svc.cluster.local svc.cluster.local cluster.local\n").unwrap();
    let options = BootstrapOptions { pod_name: "sleep-1".into(), namespace: "testns1".into(), ..Default::default() };
    let proxy = dns::start(DnsProxyOptions {
        listen: localhost0(),
        resolv_conf: resolv_conf.clone(),
        upstream_timeout: Duration::from_millis(200),
        discovery: rudder_xds::agent::identity::DiscoveryTarget { address: discovery_addr.to_string(), root_pem: None },
        node: nds::node(&options),
    })
    .await
    .unwrap();
    let addr = proxy.local_addr();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let discovery = DiscoveryServer::new(rx, Default::default());
    let listener = TcpListener::bind(discovery_addr).await.unwrap();
    let serving = discovery.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await.unwrap() });
    wait_resolves(addr, "httpbin.testns1.svc.cluster.local", ip("127.0.10.5")).await;
    wait_resolves(addr, "httpbin", ip("127.0.10.5")).await;
    assert_eq!(discovery.connected(), 1);

    let api = service("api.example.com", "testns1", "api", "127.0.20.1", false);
    snapshots.send_replace(snapshot(&[httpbin, api]));
    wait_resolves(addr, "api.example.com", ip("127.0.20.1")).await;
    let unknown = ask_udp(addr, &query(2, "other.example.com", RecordType::A)).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    let _ = std::fs::remove_file(&resolv_conf);
    assert!(matches!(addr.ip(), IpAddr::V4(v4) if v4.is_loopback()));
}
