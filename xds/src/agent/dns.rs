//! The agent's DNS proxy (Istio's DNS capture, `ISTIO_META_DNS_CAPTURE`): a DNS server on
//! 127.0.0.1:15053 (UDP and TCP) that the pod's iptables rules send the application's DNS
//! queries to. It answers A and AAAA queries for the mesh hosts of the name table that
//! discovery serves ([`crate::nametable`], kept fresh by [`super::nds`]) and forwards every
//! other query, untouched, to the nameservers of the pod's `/etc/resolv.conf`. The agent runs
//! as the proxy user, whose own DNS traffic is not redirected, so forwarding does not loop.
//!
//! Answers:
//! - a name in the table (its host name or one of its alt hosts; case-insensitive, trailing
//!   dot or not), or such a name with one of the resolv.conf search domains appended (the
//!   candidates a resolver tries first for short names): A with the IPv4 addresses, AAAA with
//!   the IPv6 ones, TTL [`TTL`]; an empty NOERROR answer when there are none of that family
//!   or for any other record type;
//! - anything else: the first upstream that answers within the timeout (tried in order, the
//!   time split between them), relayed as is; SERVFAIL when none does;
//! - a packet that does not parse as a DNS query: no answer (UDP) or the connection closed
//!   (TCP).
//!
//! Over UDP an answer larger than the client accepts (512 bytes, or its EDNS payload size) is
//! sent truncated, so the client retries over TCP. Queries received over TCP are forwarded
//! over TCP.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use crate::nametable::NameTable;

/// Where the DNS proxy listens by default (the port Istio's iptables rules redirect to).
pub const DEFAULT_LISTEN_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15053);
/// TTL of the answers for mesh hosts.
pub const TTL: u32 = 30;
/// Default time to wait for the upstream nameservers, in total.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The resolver configuration read by default.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// UDP answers without EDNS are limited to this (RFC 1035).
const CLASSIC_UDP_SIZE: usize = 512;
/// The EDNS payload size this server advertises and is willing to send over UDP.
const OUR_EDNS_SIZE: u16 = 1232;
/// Queries handled at once; more UDP queries are dropped (the client retries), more TCP
/// connections wait to be accepted.
const MAX_IN_FLIGHT: usize = 512;
/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The names the proxy answers for: lowercase, without trailing dot → addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    hosts: HashMap<String, Arc<[IpAddr]>>,
}

impl Lookup {
    /// Every host of `table` and its alt hosts. Addresses that do not parse are skipped; a
    /// host name wins over another host's alt host of the same spelling.
    pub fn from_table(table: &NameTable) -> Self {
        let mut hosts = HashMap::new();
        let entries = table.table.iter().map(|(host, info)| (host, info, parse_ips(&info.ips))).collect::<Vec<_>>();
        for (_, info, ips) in &entries {
            for alt in &info.alt_hosts {
                hosts.insert(normalize(alt), ips.clone());
            }
        }
        for (host, _, ips) in entries {
            hosts.insert(normalize(host), ips);
        }
        Self { hosts }
    }

    /// The addresses of `name` (any case, trailing dot or not).
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.hosts.get(&normalize(name)).map(|ips| &ips[..])
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

fn parse_ips(ips: &[String]) -> Arc<[IpAddr]> {
    ips.iter().filter_map(|ip| ip.trim().parse().ok()).collect()
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What the proxy needs from `/etc/resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    /// Search domains (lowercase, without trailing dot), in order.
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text: `nameserver` and `search` (or `domain`) lines; everything
    /// else (options, comments, bad addresses) is ignored.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A zone index (`fe80::1%eth0`) is dropped: the address alone is usable.
                    if let Some(ip) = words.next().and_then(|w| w.split('%').next()?.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search" | "domain") => conf.search = words.map(normalize).filter(|d| !d.is_empty()).collect(),
                _ => {}
            }
        }
        conf
    }

    pub fn read(path: &Path) -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// The nameservers on port 53, without `listen` itself (a resolv.conf pointing at the
    /// proxy would make it forward to itself).
    pub fn upstreams(&self, listen: SocketAddr) -> Vec<SocketAddr> {
        self.nameservers.iter().map(|ip| SocketAddr::new(*ip, 53)).filter(|a| *a != listen).collect()
    }
}

/// How the DNS server runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsOptions {
    /// UDP and TCP address; port 0 picks a free port (the same for both).
    pub listen: SocketAddr,
    /// Nameservers to forward other queries to, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Search domains: a table name with one of these appended is answered too.
    pub search: Vec<String>,
    /// Total time to wait for the upstreams before answering SERVFAIL.
    pub upstream_timeout: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN_ADDRESS,
            upstreams: Vec::new(),
            search: Vec::new(),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }
}

/// A bound DNS server; [`DnsServer::run`] serves it.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    resolver: Arc<Resolver>,
}

impl DnsServer {
    /// Binds UDP and TCP on `options.listen`; answers from whatever `names` holds when a
    /// query arrives.
    pub async fn bind(options: DnsOptions, names: watch::Receiver<Arc<Lookup>>) -> io::Result<Self> {
        let (udp, tcp) = bind_pair(options.listen).await?;
        let resolver = Resolver {
            names,
            upstreams: options.upstreams,
            search: options.search.iter().map(|d| normalize(d)).collect(),
            timeout: options.upstream_timeout,
        };
        Ok(Self { udp: Arc::new(udp), tcp, resolver: Arc::new(resolver) })
    }

    /// The address both sockets listen on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until the task is dropped or aborted.
    pub async fn run(self) {
        let Self { udp, tcp, resolver } = self;
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(udp, resolver.clone()));
        tasks.spawn(serve_tcp(tcp, resolver));
        while tasks.join_next().await.is_some() {}
    }
}

/// Whether a proxy runs the DNS proxy. `setting` is `ISTIO_META_DNS_CAPTURE` (or the flag):
/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case) decide for a sidecar; unset
/// or empty means Rudder's default, on for sidecars whose traffic is redirected (REDIRECT,
/// TPROXY) and off in mode NONE, where nothing sends the application's DNS to the proxy.
/// Routers (gateways) never run it.
pub fn capture_enabled(
    node_type: crate::model::NodeType,
    interception: crate::model::InterceptionMode,
    setting: Option<&str>,
) -> Result<bool, String> {
    let explicit = match setting.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => None,
        Some("true" | "1" | "yes" | "on") => Some(true),
        Some("false" | "0" | "no" | "off") => Some(false),
        Some(other) => return Err(format!("DNS capture {other:?}: expected true or false")),
    };
    Ok(node_type == crate::model::NodeType::Sidecar
        && explicit.unwrap_or(interception != crate::model::InterceptionMode::None))
}

/// Everything the running DNS proxy needs (see [`start`]).
#[derive(Clone, Debug)]
pub struct DnsProxyOptions {
    pub listen: SocketAddr,
    /// Upstream nameservers and search domains come from here.
    pub resolv_conf: PathBuf,
    pub upstream_timeout: Duration,
    /// Discovery as `host:port` (plaintext gRPC), for the name table.
    pub discovery: super::identity::DiscoveryTarget,
    /// The proxy's xDS node ([`super::nds::node`]).
    pub node: envoy_types::pb::envoy::config::core::v3::Node,
}

/// The DNS proxy and its name-table stream, running; dropping it stops both.
#[derive(Debug)]
pub struct DnsProxy {
    local_addr: SocketAddr,
    /// Held only to abort both tasks on drop.
    _tasks: JoinSet<()>,
}

impl DnsProxy {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Binds the DNS server (failing if it cannot) and starts it with the NDS client that feeds
/// it. An unreadable resolv.conf is not fatal: mesh hosts still resolve, nothing else does.
pub async fn start(options: DnsProxyOptions) -> io::Result<DnsProxy> {
    let conf = ResolvConf::read(&options.resolv_conf).unwrap_or_else(|error| {
        tracing::warn!(path = %options.resolv_conf.display(), %error, "cannot read the resolver configuration; only mesh hosts will resolve");
        ResolvConf::default()
    });
    let upstreams = conf.upstreams(options.listen);
    if upstreams.is_empty() {
        tracing::warn!(path = %options.resolv_conf.display(), "no upstream nameserver; only mesh hosts will resolve");
    }
    let (names, receiver) = watch::channel(Arc::new(Lookup::default()));
    let dns_options = DnsOptions {
        listen: options.listen,
        upstreams,
        search: conf.search,
        upstream_timeout: options.upstream_timeout,
    };
    let server = DnsServer::bind(dns_options, receiver).await?;
    let local_addr = server.local_addr()?;
    let mut tasks = JoinSet::new();
    tasks.spawn(server.run());
    tasks.spawn(super::nds::run(options.discovery, options.node, names));
    tracing::info!(%local_addr, "DNS proxy listening (UDP and TCP)");
    Ok(DnsProxy { local_addr, _tasks: tasks })
}

/// UDP and TCP on the same address. With port 0 the UDP port is picked first and may be
/// taken for TCP, so a few ports are tried.
async fn bind_pair(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if listen.port() == 0 && attempts < 16 => {
                tracing::debug!(%error, "TCP twin of a free UDP port is taken; trying another");
                attempts += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[derive(Debug)]
struct Resolver {
    names: watch::Receiver<Arc<Lookup>>,
    upstreams: Vec<SocketAddr>,
    search: Vec<String>,
    timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Resolver {
    /// The answer to one packet, `None` when the packet is not a query to answer.
    async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "ignoring a packet that is not a DNS message");
                return None;
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let local = {
            let names = self.names.borrow().clone();
            self.answer_locally(&names, &request)
        };
        if let Some(response) = local {
            return encode(&response, &request, transport);
        }
        let forwarded = match transport {
            Transport::Udp => self.forward_udp(packet, request.metadata.id).await,
            Transport::Tcp => self.forward_tcp(packet, request.metadata.id).await,
        };
        match forwarded {
            Some(answer) => Some(answer),
            None => {
                let name = request.queries.first().map(|q| q.name().to_string()).unwrap_or_default();
                tracing::debug!(name, "no upstream nameserver answered; SERVFAIL");
                let mut response =
                    Message::error_msg(request.metadata.id, request.metadata.op_code, ResponseCode::ServFail);
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.add_queries(request.queries.iter().cloned());
                encode(&response, &request, transport)
            }
        }
    }

    /// The answer from the name table, if the query is one this proxy answers.
    fn answer_locally(&self, names: &Lookup, request: &Message) -> Option<Message> {
        let [query] = request.queries.as_slice() else { return None };
        if request.metadata.op_code != OpCode::Query || query.query_class() != DNSClass::IN {
            return None;
        }
        let name = normalize(&query.name().to_ascii());
        let ips = names.get(&name).or_else(|| {
            self.search.iter().find_map(|domain| {
                let short = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
                names.get(short)
            })
        })?;
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(query.clone());
        let owner = query.name().clone();
        for ip in ips {
            let rdata = match (query.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
        }
        Some(response)
    }

    /// The time each upstream gets: the total split evenly.
    fn per_upstream(&self) -> Duration {
        let count = u32::try_from(self.upstreams.len()).unwrap_or(u32::MAX).max(1);
        self.timeout / count
    }

    async fn forward_udp(&self, packet: &[u8], id: u16) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let deadline = Instant::now() + self.per_upstream();
            match udp_exchange(*upstream, packet, id, deadline).await {
                Ok(answer) => return Some(answer),
                Err(error) => tracing::debug!(%upstream, %error, "upstream nameserver (UDP) did not answer"),
            }
        }
        None
    }

    async fn forward_tcp(&self, packet: &[u8], id: u16) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let deadline = Instant::now() + self.per_upstream();
            match timeout_at(deadline, tcp_exchange(*upstream, packet, id)).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(error)) => tracing::debug!(%upstream, %error, "upstream nameserver (TCP) failed"),
                Err(_) => tracing::debug!(%upstream, "upstream nameserver (TCP) timed out"),
            }
        }
        None
    }
}

/// Encodes `response`, with an OPT record when the request had one, truncated to what a UDP
/// client accepts.
fn encode(response: &Message, request: &Message, transport: Transport) -> Option<Vec<u8>> {
    let mut response = response.clone();
    let mut limit = CLASSIC_UDP_SIZE;
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(OUR_EDNS_SIZE);
        response.set_edns(ours);
        limit = usize::from(edns.max_payload().min(OUR_EDNS_SIZE)).max(CLASSIC_UDP_SIZE);
    }
    let bytes = match response.to_vec() {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(%error, "could not encode a DNS answer");
            return None;
        }
    };
    if transport == Transport::Udp && bytes.len() > limit {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// Sends `packet` to `upstream` over UDP and waits for the answer with the same id.
async fn udp_exchange(upstream: SocketAddr, packet: &[u8], id: u16, deadline: Instant) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
    } else {
        SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(packet).await?;
    let mut buf = vec![0; 65_535];
    loop {
        let len = timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
        // Anything but the answer to this query (a late answer to another) is skipped.
        if len >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

/// One query over a fresh TCP connection to `upstream`.
async fn tcp_exchange(upstream: SocketAddr, packet: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_frame(&mut stream, packet).await?;
    let answer = read_frame(&mut stream).await?;
    if answer.len() < 12 || u16::from_be_bytes([answer[0], answer[1]]) != id {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "answer to another query"));
    }
    Ok(answer)
}

async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn serve_udp(socket: Arc<UdpSocket>, resolver: Arc<Resolver>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0; 65_535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // E.g. an ICMP error for an earlier send; the socket itself is fine.
                tracing::debug!(%error, "DNS UDP receive failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS queries in flight; dropping one");
            continue;
        };
        let packet = buf[..len].to_vec();
        let (socket, resolver) = (socket.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Some(answer) = resolver.handle(&packet, Transport::Udp).await
                && let Err(error) = socket.send_to(&answer, peer).await
            {
                tracing::debug!(%peer, %error, "could not send a DNS answer");
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, &resolver).await {
                tracing::debug!(%peer, %error, "DNS TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// Answers queries on one TCP connection until the client closes it, stays idle, or sends
/// something that is not a query.
async fn serve_connection(mut stream: TcpStream, resolver: &Resolver) -> io::Result<()> {
    loop {
        let packet = match timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(error)) => return Err(error),
            Err(_) => return Ok(()),
        };
        let Some(answer) = resolver.handle(&packet, Transport::Tcp).await else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a DNS query"));
        };
        write_frame(&mut stream, &answer).await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{InterceptionMode, NodeType};
    use crate::nametable::NameInfo;

    #[test]
    fn capture_defaults_and_settings() {
        use InterceptionMode::{None as NoCapture, Redirect, Tproxy};
        use NodeType::{Router, Sidecar};
        for (node, mode, setting, want) in [
            (Sidecar, Redirect, None, true),
            (Sidecar, Tproxy, Some(""), true),
            (Sidecar, NoCapture, None, false),
            (Sidecar, NoCapture, Some("true"), true),
            (Sidecar, Redirect, Some("FALSE"), false),
            (Sidecar, Redirect, Some("0"), false),
            (Router, Redirect, Some("true"), false),
        ] {
            assert_eq!(capture_enabled(node, mode, setting), Ok(want), "{node:?} {mode:?} {setting:?}");
        }
        assert!(capture_enabled(Sidecar, Redirect, Some("maybe")).is_err());
    }

    fn table() -> NameTable {
        let info = |ips: &[&str], alt: &[&str]| NameInfo {
            ips: ips.iter().map(|s| (*s).to_owned()).collect(),
            alt_hosts: alt.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        NameTable {
            table: [
                (
                    "httpbin.testns1.svc.cluster.local".to_owned(),
                    info(&["127.0.10.5"], &["httpbin.testns1", "httpbin"]),
                ),
                ("api.example.com".to_owned(), info(&["127.0.20.1", "fd00::1", "bogus"], &[])),
                // A host wins over another host's alt host.
                ("httpbin".to_owned(), info(&["127.0.99.1"], &[])),
            ]
            .into(),
        }
    }

    #[test]
    fn lookup_by_host_and_alt_host_any_case() {
        let lookup = Lookup::from_table(&table());
        let v4 = |s: &str| IpAddr::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(lookup.get("HTTPBIN.testns1.svc.cluster.local."), Some(&[v4("127.0.10.5")][..]));
        assert_eq!(lookup.get("httpbin.testns1"), Some(&[v4("127.0.10.5")][..]));
        assert_eq!(lookup.get("httpbin"), Some(&[v4("127.0.99.1")][..]));
        assert_eq!(lookup.get("api.example.com").unwrap().len(), 2);
        assert_eq!(lookup.get("example.com"), None);
    }

    #[test]
    fn resolv_conf() {
        let conf = ResolvConf::parse(
            "# generated\nsearch testns1.svc.cluster.local svc.cluster.local cluster.local.\n\
             nameserver 10.96.0.10\nnameserver fe80::1%eth0 ; comment\nnameserver not-an-ip\noptions ndots:5\n",
        );
        assert_eq!(conf.search, ["testns1.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(conf.nameservers, ["10.96.0.10".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]);
        let conf = ResolvConf::parse("nameserver 127.0.0.1\nnameserver 127.0.0.2\n");
        let listen: SocketAddr = "127.0.0.1:53".parse().unwrap();
        assert_eq!(conf.upstreams(listen), ["127.0.0.2:53".parse::<SocketAddr>().unwrap()]);
    }
}
