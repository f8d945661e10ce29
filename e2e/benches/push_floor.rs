//! The transport floor of a push to many proxies: what it costs a server that does nothing but
//! write one pre-encoded response to each of N ADS streams and read each stream's
//! acknowledgement, over the same stack discovery serves ADS with (tonic's HTTP/2 server on
//! hyper and h2, TCP_NODELAY, a 64 KiB receive window, request messages read by
//! `rudder_xds::server::wire::Requests`). No snapshot, no view, no subscription bookkeeping: an
//! endpoint change's server CPU in `scripts/bench-discovery.sh` can be set against this.
//!
//! The server runs in a child process (this binary with `--serve`), so its CPU is its own; the
//! N streams are plain HTTP/2 clients in this process, one connection each, that answer every
//! response with an acknowledgement of the size Envoy sends: a SotW EDS ACK repeats every
//! subscribed name (`--protocol sotw --ack-names 3000`, ~150 KB on the 1k × 1 bench mesh), a
//! delta ACK carries only the nonce. `--read streamed` has the server count request bytes as
//! they arrive instead of assembling whole messages: the ceiling of reading SotW ACKs without
//! buffering them.
//!
//! `cargo bench -p rudder-e2e --bench push_floor -- --proxies 1000 --protocol sotw`
//!
//! Bounded: every wait has a timeout, and the child is killed on the way out. Traffic stays on
//! 127.0.0.1.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use prost::Message;
use rudder_xds::server::wire::{Requests, SotwRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const EDS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// As discovery's (`server::RECEIVE_WINDOW`).
const RECEIVE_WINDOW: u32 = 64 * 1024;
const WAIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Sotw,
    Delta,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Read {
    /// Whole request messages, decoded as discovery decodes them.
    Buffered,
    /// Bytes counted as they arrive; no message is assembled.
    Streamed,
}

#[derive(Clone, Debug)]
struct Options {
    proxies: usize,
    protocol: Protocol,
    read: Read,
    ack_names: usize,
    response_bytes: usize,
    rounds: usize,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            proxies: 1000,
            protocol: Protocol::Sotw,
            read: Read::Buffered,
            ack_names: 3000,
            response_bytes: 1200,
            rounds: 5,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
            match flag.as_str() {
                "--proxies" => options.proxies = number(value()?)?,
                "--ack-names" => options.ack_names = number(value()?)?,
                "--response-bytes" => options.response_bytes = number(value()?)?,
                "--rounds" => options.rounds = number(value()?)?.max(1),
                "--protocol" => {
                    options.protocol = match value()?.as_str() {
                        "sotw" => Protocol::Sotw,
                        "delta" => Protocol::Delta,
                        other => return Err(format!("--protocol {other}: sotw or delta")),
                    }
                }
                "--read" => {
                    options.read = match value()?.as_str() {
                        "buffered" => Read::Buffered,
                        "streamed" => Read::Streamed,
                        other => return Err(format!("--read {other}: buffered or streamed")),
                    }
                }
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(options)
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        args.next();
        let options = Options::parse(args).unwrap_or_else(|e| exit(&e));
        serve(options);
        return;
    }
    let options = Options::parse(args).unwrap_or_else(|e| exit(&e));
    if let Err(e) = drive(&options) {
        exit(&e);
    }
}

fn exit(message: &str) -> ! {
    eprintln!("push_floor: {message}");
    std::process::exit(2)
}

/// A gRPC message frame: the uncompressed flag, the length, the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// A response of about `bytes` bytes carrying one opaque resource (the clients do not decode
/// it; its size is what the server writes per stream).
fn response_frame(protocol: Protocol, bytes: usize, version: usize) -> Bytes {
    let resource = Any { type_url: EDS_TYPE.to_owned(), value: vec![b'x'; bytes] };
    let encoded = match protocol {
        Protocol::Sotw => DiscoveryResponse {
            version_info: version.to_string(),
            resources: vec![resource],
            type_url: EDS_TYPE.to_owned(),
            nonce: version.to_string(),
            ..Default::default()
        }
        .encode_to_vec(),
        Protocol::Delta => DeltaDiscoveryResponse {
            system_version_info: version.to_string(),
            type_url: EDS_TYPE.to_owned(),
            nonce: version.to_string(),
            resources: vec![envoy_types::pb::envoy::service::discovery::v3::Resource {
                name: "outbound|8080||svc-00001.bench.svc.cluster.local".to_owned(),
                version: version.to_string(),
                resource: Some(resource),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    };
    grpc_frame(&encoded)
}

/// What a proxy sends after a response: the SotW EDS request naming every subscribed cluster
/// (as Envoy's ACKs do), or a delta ACK, which names nothing.
fn ack_frame(options: &Options) -> Bytes {
    let encoded = match options.protocol {
        Protocol::Sotw => DiscoveryRequest {
            version_info: "1".to_owned(),
            resource_names: (0..options.ack_names)
                .map(|i| format!("outbound|8080|{}|svc-{:05}.bench.svc.cluster.local", ["", "v1", "v2"][i % 3], i / 3))
                .collect(),
            type_url: EDS_TYPE.to_owned(),
            response_nonce: "1".to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
        Protocol::Delta => DeltaDiscoveryRequest {
            type_url: EDS_TYPE.to_owned(),
            response_nonce: "1".to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
    };
    grpc_frame(&encoded)
}

// ---------------------------------------------------------------------------------------------
// The server (child process).

/// The streams' response senders and the acknowledgements counted since the last push.
struct Floor {
    options: Options,
    streams: Mutex<Vec<mpsc::Sender<Bytes>>>,
    initial: Bytes,
    acks: AtomicUsize,
    /// Told each time the count reaches the number of proxies.
    acked: mpsc::UnboundedSender<()>,
}

#[derive(Clone)]
struct FloorService(Arc<Floor>);

impl tonic::server::NamedService for FloorService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for FloorService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let floor = self.0.clone();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            let body = StreamBody::new(ReceiverStream::new(rx).map(|bytes| Ok::<_, tonic::Status>(Frame::data(bytes))));
            let requests = request.into_body();
            tokio::spawn(read_requests(floor, requests, tx));
            let mut response = http::Response::new(tonic::body::Body::new(body));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            Ok(response)
        })
    }
}

/// Reads one stream's requests: the first gets the initial response (and registers the stream
/// for pushes), every later one is an acknowledgement.
async fn read_requests(floor: Arc<Floor>, body: tonic::body::Body, tx: mpsc::Sender<Bytes>) {
    let mut first = true;
    let mut on_message = |floor: &Floor| {
        if std::mem::take(&mut first) {
            // Full only if the client stopped reading; the floor's clients never do.
            let _ = tx.try_send(floor.initial.clone());
            floor.streams.lock().unwrap_or_else(|e| e.into_inner()).push(tx.clone());
        } else if floor.acks.fetch_add(1, Ordering::Relaxed) + 1 == floor.options.proxies {
            let _ = floor.acked.send(());
        }
    };
    match (floor.options.read, floor.options.protocol) {
        (Read::Buffered, Protocol::Sotw) => {
            let mut requests = Requests::<SotwRequest>::new(body);
            while let Ok(Some(request)) = requests.message().await {
                std::hint::black_box(request.resource_names.len());
                on_message(&floor);
            }
        }
        (Read::Buffered, Protocol::Delta) => {
            let mut requests = Requests::<DeltaDiscoveryRequest>::new(body);
            while let Ok(Some(request)) = requests.message().await {
                std::hint::black_box(&request.response_nonce);
                on_message(&floor);
            }
        }
        (Read::Streamed, _) => {
            let mut body = body;
            let mut counter = MessageCounter::default();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    for _ in 0..counter.feed(&data) {
                        on_message(&floor);
                    }
                }
            }
        }
    }
}

/// Counts gRPC messages in a byte stream without keeping any: only the 5-byte header of the
/// message in progress is assembled.
#[derive(Default)]
struct MessageCounter {
    header: Vec<u8>,
    /// Bytes of the current message's body still to come.
    remaining: usize,
}

impl MessageCounter {
    /// Feeds `data`; returns how many messages it completed.
    fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut complete = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    complete += 1;
                }
                continue;
            }
            let take = (5 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.header.len() == 5 {
                self.remaining =
                    u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as usize;
                self.header.clear();
                if self.remaining == 0 {
                    complete += 1;
                }
            }
        }
        complete
    }
}

/// The child: serves on a free port, prints `ready <port>`, then on each `push` line on stdin
/// writes the next response to every stream and prints `acked` once every stream acknowledged it.
fn serve(options: Options) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| exit(&format!("runtime: {e}")));
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| exit(&format!("bind: {e}")));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| exit(&format!("address: {e}")));
        let (acked, mut all_acked) = mpsc::unbounded_channel();
        let floor = Arc::new(Floor {
            initial: response_frame(options.protocol, options.response_bytes, 0),
            options: options.clone(),
            streams: Mutex::new(Vec::new()),
            acks: AtomicUsize::new(0),
            acked,
        });
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .initial_connection_window_size(RECEIVE_WINDOW)
            .initial_stream_window_size(RECEIVE_WINDOW)
            .add_service(FloorService(floor.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        println!("ready {port}");
        // Stdin is read by a thread of its own (the workspace's tokio has no `io-std`).
        let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut version = 0;
        while let Some(line) = lines.recv().await {
            if line != "push" {
                continue;
            }
            version += 1;
            let frame = response_frame(options.protocol, options.response_bytes, version);
            floor.acks.store(0, Ordering::Relaxed);
            // The acknowledgements of the initial responses counted up to the proxies too.
            while all_acked.try_recv().is_ok() {}
            let streams = floor.streams.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for stream in &streams {
                let _ = stream.try_send(frame.clone());
            }
            if all_acked.recv().await.is_none() {
                break;
            }
            println!("acked");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The driver: the proxies, and the figures.

/// CPU time of every thread of `pid`, in nanoseconds (`/proc/<pid>/task/*/schedstat`: exact,
/// where `/proc/<pid>/stat` counts 10 ms ticks).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Server {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(options: &Options) -> Result<(Self, u16), String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let protocol = match options.protocol {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        };
        let read = match options.read {
            Read::Buffered => "buffered",
            Read::Streamed => "streamed",
        };
        let mut child = Command::new(exe)
            .args(["--serve", "--proxies", &options.proxies.to_string(), "--protocol", protocol, "--read", read])
            .args(["--response-bytes", &options.response_bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the server: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("the server's pipes".to_owned());
        };
        let mut server = Self { child, stdin, stdout: BufReader::new(stdout) };
        let line = server.line()?;
        let port = line.strip_prefix("ready ").and_then(|p| p.parse().ok()).ok_or(format!("server said {line:?}"))?;
        Ok((server, port))
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("the server exited".to_owned()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("reading the server: {e}")),
        }
    }

    fn push(&mut self) -> Result<(), String> {
        writeln!(self.stdin, "push").and_then(|()| self.stdin.flush()).map_err(|e| format!("telling the server: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One proxy: a connection and an ADS stream that acknowledges every response it reads, and
/// reports when each arrived. Opening is tried three times: with a thousand connections at
/// once, one is now and then refused before its stream starts.
async fn proxy(
    port: u16,
    path: &'static str,
    ack: Bytes,
    arrivals: mpsc::UnboundedSender<Instant>,
) -> Result<(), String> {
    let mut attempt = 0;
    let (requests, mut body) = loop {
        match open(port, path, &ack).await {
            Ok(opened) => break opened,
            Err(e) if attempt < 2 => {
                eprintln!("push_floor: a proxy: {e}; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut counter = MessageCounter::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        for _ in 0..counter.feed(&data) {
            let _ = arrivals.send(Instant::now());
            requests.send(ack.clone()).await.map_err(|_| "the request body closed".to_owned())?;
        }
    }
    Ok(())
}

/// A connection and a stream whose first request (`first`) is sent: the request body's sender
/// and the response body.
async fn open(
    port: u16,
    path: &'static str,
    first: &Bytes,
) -> Result<(mpsc::Sender<Bytes>, hyper::body::Incoming), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("push_floor: a proxy's connection: {e:?}");
        }
    });
    let (requests, rx) = mpsc::channel::<Bytes>(4);
    let body = StreamBody::new(ReceiverStream::new(rx).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))));
    let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body)
        .map_err(|e| format!("request: {e}"))?;
    requests.send(first.clone()).await.map_err(|_| "the request body closed".to_owned())?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    Ok((requests, response.into_body()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or_default()
}

fn drive(options: &Options) -> Result<(), String> {
    let (mut server, port) = Server::start(options)?;
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let ack = ack_frame(options);
    let path = match options.protocol {
        Protocol::Sotw => SOTW_PATH,
        Protocol::Delta => DELTA_PATH,
    };
    println!(
        "{:?}, {} proxies, ACK {} B, response {} B, requests read {:?}",
        options.protocol,
        options.proxies,
        ack.len(),
        options.response_bytes,
        options.read
    );
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    runtime.block_on(async {
        for _ in 0..options.proxies {
            let arrived = arrived.clone();
            let ack = ack.clone();
            tokio::spawn(async move {
                if let Err(e) = proxy(port, path, ack, arrived).await {
                    eprintln!("push_floor: a proxy: {e}");
                }
            });
        }
        // Every proxy has its initial response.
        for _ in 0..options.proxies {
            tokio::time::timeout(WAIT, arrivals.recv()).await.map_err(|_| "the initial responses".to_owned())?;
        }
        let mut per_stream = Vec::new();
        for round in 1..=options.rounds {
            // Let the initial (or previous) acknowledgements drain.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = cpu_ns(pid);
            let pushed = Instant::now();
            server.push()?;
            let mut latencies = Vec::with_capacity(options.proxies);
            for _ in 0..options.proxies {
                let at = tokio::time::timeout(WAIT, arrivals.recv()).await.map_err(|_| "a push".to_owned())?;
                latencies.push(at.map_or(Duration::ZERO, |at| at.duration_since(pushed)));
            }
            let received = cpu_ns(pid);
            let line = tokio::task::block_in_place(|| server.line())?;
            if line != "acked" {
                return Err(format!("server said {line:?}"));
            }
            let acked = cpu_ns(pid);
            latencies.sort();
            let ms = |ns: u64| ns as f64 / 1e6;
            println!(
                "round {round}: server CPU {:.1} ms until every proxy had the push, {:.1} ms until every ACK was read \
                 ({:.1} µs per stream); arrival p50 {:.1} ms, p99 {:.1} ms",
                ms(received - before),
                ms(acked - before),
                (acked - before) as f64 / 1e3 / options.proxies as f64,
                percentile(&latencies, 50.0).as_secs_f64() * 1e3,
                percentile(&latencies, 99.0).as_secs_f64() * 1e3,
            );
            per_stream.push((acked - before) as f64 / 1e3 / options.proxies as f64);
        }
        per_stream.sort_by(f64::total_cmp);
        println!(
            "server CPU per stream (push + ACK): median {:.1} µs, min {:.1} µs over {} rounds",
            per_stream[per_stream.len() / 2],
            per_stream[0],
            per_stream.len()
        );
        Ok::<(), String>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
