//! ADS request handling: a sequence of DiscoveryRequests (SotW) or DeltaDiscoveryRequests sent
//! over one live gRPC stream to a discovery server started once per process on 127.0.0.1 and
//! serving a small fixed set of resources.
//!
//! The input is a script, one request per line (see `fuzz/README.md`):
//!
//! ```text
//! delta                          first line: `delta` for the incremental method, else SotW
//! t=cds n=a n=b node             type (cds eds lds rds sds nds, or any type URL), names, node
//! t=eds nonce=@ v=@ wait         echo the last nonce/version seen for the type; wait for an answer
//! t=eds nonce=@ err=3:bad        a NACK (error_detail)
//! t=eds many=100000:x u=a        100,000 generated names; unsubscribe a (delta)
//! t=cds irv=a:1 irv=@            initial_resource_versions (delta), `@` = every version seen
//! push                           the server's resources change (three variants in turn)
//! raw=0a0131                     a request body of raw (hex) bytes
//! ```
//!
//! Names and strings take `%xx` escapes (any bytes, also invalid UTF-8). After the last line the
//! client closes its side: the server must end the stream within [`HANG`] (plus [`PER_NAME`]
//! per name sent) and forget the connection, every response must decode and carry a type it
//! serves, and nothing may panic.

#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use rudder_xds::model::Snapshot;
use rudder_xds::server::{DebounceOptions, DiscoveryServer, FixedGenerator, Kind, ServerOptions};
use rudder_xds::translate::Resources;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const NODE_ID: &str = "sidecar~10.0.0.1~app-1.default~default.svc.cluster.local";
/// How long the server may take to end the stream once the client closed its side, plus
/// [`PER_NAME`] for every resource name the script sent (a delta subscription of 600,000 names
/// takes seconds in this instrumented build, and is answered with as many removed names).
const HANG: Duration = Duration::from_secs(10);
const PER_NAME: Duration = Duration::from_micros(50);
/// How long `wait` waits for a response.
const WAIT: Duration = Duration::from_millis(10);
/// Caps on `many=N:prefix`.
const MAX_MANY: usize = 1 << 20;
const MAX_PREFIX: usize = 64;

/// `DiscoveryRequest` with bytes where the real one has strings, so names can be any bytes.
#[derive(Clone, PartialEq, Message)]
struct SotwRequest {
    #[prost(bytes = "vec", tag = "1")]
    version_info: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    node: Option<Node>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    resource_names: Vec<Vec<u8>>,
    #[prost(bytes = "vec", tag = "4")]
    type_url: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    response_nonce: Vec<u8>,
    #[prost(message, optional, tag = "6")]
    error_detail: Option<RpcStatus>,
}

/// `DeltaDiscoveryRequest`, likewise.
#[derive(Clone, PartialEq, Message)]
struct DeltaRequest {
    #[prost(message, optional, tag = "1")]
    node: Option<Node>,
    #[prost(bytes = "vec", tag = "2")]
    type_url: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    subscribe: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    unsubscribe: Vec<Vec<u8>>,
    #[prost(btree_map = "string, string", tag = "5")]
    initial_resource_versions: BTreeMap<String, String>,
    #[prost(bytes = "vec", tag = "6")]
    response_nonce: Vec<u8>,
    #[prost(message, optional, tag = "7")]
    error_detail: Option<RpcStatus>,
}

/// Sends and receives message bodies as they are.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The server, its resources and a client channel, made once per process.
struct World {
    rt: Runtime,
    server: DiscoveryServer,
    generator: Arc<FixedGenerator>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    channel: Channel,
    variant: AtomicUsize,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // One thread: the server runs only while an input runs, on the fuzzer's core.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (server, generator, snapshots, channel) = rt.block_on(async {
            let (resources, endpoints) = variant(0);
            let generator = Arc::new(FixedGenerator::new(resources, endpoints));
            let (snapshots, rx) = watch::channel(Arc::new(Snapshot::default()));
            let options = ServerOptions {
                debounce: DebounceOptions { quiet: Duration::from_millis(1), max_delay: Duration::from_millis(10) },
                ..ServerOptions::default()
            };
            let server = DiscoveryServer::with_generator(rx, options, generator.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let serving = server.clone();
            tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
            let channel =
                Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
            (server, generator, snapshots, channel)
        });
        World { rt, server, generator, snapshots, channel, variant: AtomicUsize::new(0) }
    })
}

fn cluster(name: &str, timeout: i64) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: timeout, nanos: 0 }),
        ..Default::default()
    }
}

fn cla(name: &str, priority: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints { priority, ..Default::default() }],
        ..Default::default()
    }
}

/// The three resource sets `push` goes through: the usual, one with deletions, changes and
/// additions, and an empty one.
fn variant(n: usize) -> (Resources, Vec<ClusterLoadAssignment>) {
    let listener = |name: &str| Listener { name: name.into(), ..Default::default() };
    let route = |name: &str| RouteConfiguration { name: name.into(), ..Default::default() };
    let secret = |name: &str| Secret { name: name.into(), ..Default::default() };
    match n % 3 {
        0 => (
            Resources {
                clusters: vec![cluster("a", 1), cluster("b", 1)],
                listeners: vec![listener("l1")],
                routes: vec![route("r1"), route("r2")],
                secrets: vec![secret("kubernetes://s1")],
                extension_configs: vec![TypedExtensionConfig { name: "e1".into(), ..Default::default() }],
                ..Resources::default()
            },
            vec![cla("a", 0), cla("b", 0)],
        ),
        1 => (
            Resources {
                clusters: vec![cluster("a", 2), cluster("c", 1)],
                listeners: vec![listener("l1"), listener("l2")],
                routes: vec![route("r1")],
                ..Resources::default()
            },
            vec![cla("a", 1), cla("c", 0)],
        ),
        _ => (Resources::default(), Vec::new()),
    }
}

/// What the client has heard, for `@`.
#[derive(Debug, Default)]
struct Seen {
    /// Type URL to (version, nonce) of its last response.
    last: HashMap<String, (String, String)>,
    /// Delta: type URL to resource name to version.
    versions: HashMap<String, BTreeMap<String, String>>,
}

fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Some(byte) = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn text(raw: &str) -> String {
    String::from_utf8_lossy(&unescape(raw)).into_owned()
}

fn type_url(word: &str) -> Vec<u8> {
    let kind = match word {
        "cds" => Kind::Cluster,
        "eds" => Kind::Endpoint,
        "lds" => Kind::Listener,
        "rds" => Kind::Route,
        "sds" => Kind::Secret,
        "ecds" => Kind::ExtensionConfig,
        "nds" => Kind::NameTable,
        other => return unescape(other),
    };
    kind.type_url().as_bytes().to_vec()
}

fn hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .filter_map(|pair| std::str::from_utf8(pair).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// One script line as a request body, and how many names it carries.
fn encode(line: &str, delta: bool, first: bool, seen: &Seen) -> (Vec<u8>, usize) {
    let mut type_url = Vec::new();
    let (mut names, mut unsubscribe, mut irv) = (Vec::new(), Vec::new(), BTreeMap::new());
    let (mut version, mut nonce) = (Vec::new(), Vec::new());
    let mut node = first.then(|| NODE_ID.to_owned());
    let mut error = None;
    for token in line.split(' ') {
        let (key, value) = token.split_once('=').unwrap_or((token, ""));
        match key {
            "raw" => return (hex(value), 0),
            "t" => type_url = self::type_url(value),
            "n" => names.push(unescape(value)),
            "u" => unsubscribe.push(unescape(value)),
            "many" => {
                let (count, prefix) = value.split_once(':').unwrap_or((value, "n"));
                let count = count.parse::<usize>().unwrap_or(0).min(MAX_MANY);
                let prefix: String = prefix.chars().take(MAX_PREFIX).collect();
                names.extend((0..count).map(|i| format!("{prefix}{i}").into_bytes()));
            }
            "v" | "nonce" => {
                let echoed = seen.last.get(&*String::from_utf8_lossy(&type_url));
                let bytes = match (value, echoed) {
                    ("@", Some((v, _))) if key == "v" => v.clone().into_bytes(),
                    ("@", Some((_, n))) => n.clone().into_bytes(),
                    ("@", None) => Vec::new(),
                    _ => unescape(value),
                };
                if key == "v" {
                    version = bytes;
                } else {
                    nonce = bytes;
                }
            }
            "node" => node = Some(if value.is_empty() { NODE_ID.to_owned() } else { text(value) }),
            "nonode" => node = None,
            "err" => {
                let (code, message) = value.split_once(':').unwrap_or((value, ""));
                error = Some(RpcStatus { code: code.parse().unwrap_or(13), message: text(message), details: vec![] });
            }
            "irv" if value == "@" => {
                if let Some(versions) = seen.versions.get(&*String::from_utf8_lossy(&type_url)) {
                    irv.extend(versions.iter().map(|(n, v)| (n.clone(), v.clone())));
                }
            }
            "irv" => {
                let (name, version) = value.split_once(':').unwrap_or((value, ""));
                irv.insert(text(name), text(version));
            }
            _ => {}
        }
    }
    let node = node.map(|id| Node { id, cluster: "app-1.default".into(), ..Default::default() });
    let count = names.len() + unsubscribe.len() + irv.len();
    let body = if delta {
        DeltaRequest {
            node,
            type_url,
            subscribe: names,
            unsubscribe,
            initial_resource_versions: irv,
            response_nonce: nonce,
            error_detail: error,
        }
        .encode_to_vec()
    } else {
        SotwRequest {
            version_info: version,
            node,
            resource_names: names,
            type_url,
            response_nonce: nonce,
            error_detail: error,
        }
        .encode_to_vec()
    };
    (body, count)
}

/// Reads a response, checks it and notes what `@` may echo.
fn record(seen: &Mutex<Seen>, delta: bool, body: &[u8]) {
    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if delta {
        let response = DeltaDiscoveryResponse::decode(body).expect("a delta response that does not decode");
        assert!(Kind::from_type_url(&response.type_url).is_some(), "response of type {:?}", response.type_url);
        let versions = seen.versions.entry(response.type_url.clone()).or_default();
        for resource in &response.resources {
            versions.insert(resource.name.clone(), resource.version.clone());
        }
        for name in &response.removed_resources {
            versions.remove(name);
        }
        seen.last.insert(response.type_url, (response.system_version_info, response.nonce));
    } else {
        let response = DiscoveryResponse::decode(body).expect("a response that does not decode");
        assert!(Kind::from_type_url(&response.type_url).is_some(), "response of type {:?}", response.type_url);
        seen.last.insert(response.type_url, (response.version_info, response.nonce));
    }
}

async fn run(world: &'static World, script: &str) {
    let mut lines = script.lines();
    let delta = lines.next().is_some_and(|l| l.trim() == "delta");
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let reader = {
        let (channel, seen) = (world.channel.clone(), seen.clone());
        tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
            if grpc.ready().await.is_err() {
                return;
            }
            let path = PathAndQuery::from_static(if delta { DELTA_PATH } else { SOTW_PATH });
            let Ok(response) = grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path, Raw).await else {
                return;
            };
            let mut stream = response.into_inner();
            while let Ok(Some(body)) = stream.message().await {
                record(&seen, delta, &body);
                count_tx.send_modify(|c| *c += 1);
            }
        })
    };
    let mut first = true;
    let mut names = 0;
    for line in lines {
        if line.trim() == "push" {
            let n = world.variant.fetch_add(1, Ordering::Relaxed) + 1;
            let (resources, endpoints) = variant(n);
            world.generator.set(resources, endpoints);
            world.snapshots.send_replace(Arc::new(Snapshot::default()));
            continue;
        }
        let (body, count) = {
            let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            encode(line, delta, first, &seen)
        };
        first = false;
        names += count;
        let before = *count_rx.borrow_and_update();
        // Sending waits only while the server does not read.
        match tokio::time::timeout(HANG + PER_NAME * names as u32, tx.send(body)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("the server stopped reading requests ({names} names sent)"),
        }
        if line.split(' ').any(|t| t == "wait") {
            let _ = tokio::time::timeout(WAIT, count_rx.wait_for(|c| *c > before)).await;
        }
    }
    drop(tx);
    let patience = HANG + PER_NAME * names as u32;
    if tokio::time::timeout(patience, reader).await.is_err() {
        panic!("the server did not end the stream within {patience:?} of the client closing its side ({names} names)");
    }
    let gone = async {
        while world.server.connected() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    if tokio::time::timeout(HANG, gone).await.is_err() {
        panic!("{} connection(s) still registered {HANG:?} after the stream ended", world.server.connected());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else { return };
    let world = world();
    world.rt.block_on(run(world, script));
});
