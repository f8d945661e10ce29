//! State-of-the-world responses written straight from the shared encodings.
//!
//! tonic encodes each response message into a per-stream buffer that keeps the capacity of the
//! largest message the stream ever sent, so every SotW stream held a full copy of its biggest
//! response (megabytes per proxy on a large mesh) for as long as it lived, and each push first
//! copied every resource into a fresh `DiscoveryResponse`. Here the stream task hands the body a
//! [`SotwResponse`] (the shared [`EncodedResource`]s, not copies), and the body writes the gRPC
//! frame lazily, [`CHUNK`] bytes at a time: a stream holds one chunk in flight, and the resource
//! bytes are copied once, into the chunk. The bytes on the wire are exactly those of
//! `DiscoveryResponse` (fields 1, 2, 4, 5, in field order).
//!
//! [`AdsService`] routes `StreamAggregatedResources` here and every other method (delta ADS) to
//! tonic's generated service.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use http_body::Frame;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::server::NamedService;

use super::cache::EncodedResource;
use super::{DiscoveryServer, MAX_DECODING_MESSAGE_SIZE};

/// The SotW method's path.
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// Bytes written per body frame (a whole resource larger than this goes in one frame).
pub const CHUNK: usize = 64 * 1024;

/// One SotW `DiscoveryResponse`, by reference to the shared encodings.
#[derive(Debug, Clone, Default)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: &'static str,
    pub nonce: String,
    pub resources: Vec<Arc<EncodedResource>>,
}

/// Length of a string field (tag, length, bytes); 0 for an empty one, which proto3 omits.
fn string_field_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn put_string_field(tag: u32, value: &str, out: &mut BytesMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.put_slice(value.as_bytes());
    }
}

/// Encoded length of one `google.protobuf.Any` (`type_url` = 1, `value` = 2).
fn any_len(resource: &EncodedResource) -> usize {
    string_field_len(1, &resource.any.type_url) + bytes_field_len(2, &resource.any.value)
}

fn bytes_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

impl SotwResponse {
    /// The protobuf message length (without the gRPC frame header).
    fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| {
                let len = any_len(r);
                prost::encoding::key_len(2) + encoded_len_varint(len as u64) + len
            })
            .sum();
        string_field_len(1, &self.version_info)
            + resources
            + string_field_len(4, self.type_url)
            + string_field_len(5, &self.nonce)
    }

    /// The response as gRPC data frames of about [`CHUNK`] bytes: the 5-byte message header,
    /// then the message.
    fn frames(self) -> Frames {
        Frames { response: self, next: 0, started: false }
    }
}

/// Writes a [`SotwResponse`] chunk by chunk.
#[derive(Debug)]
struct Frames {
    response: SotwResponse,
    /// The next resource to write.
    next: usize,
    started: bool,
}

impl Frames {
    fn next_chunk(&mut self) -> Option<Bytes> {
        let resources = &self.response.resources;
        if self.started && self.next >= resources.len() {
            return None;
        }
        let mut out = BytesMut::with_capacity(CHUNK.min(self.response.encoded_len_hint()) + 16);
        if !self.started {
            self.started = true;
            let len = self.response.encoded_len();
            out.put_u8(0); // not compressed
            out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
            put_string_field(1, &self.response.version_info, &mut out);
        }
        while let Some(resource) = resources.get(self.next) {
            let len = any_len(resource);
            if !out.is_empty() && out.len() + len > CHUNK {
                break;
            }
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(len as u64, &mut out);
            put_string_field(1, &resource.any.type_url, &mut out);
            if !resource.any.value.is_empty() {
                encode_key(2, WireType::LengthDelimited, &mut out);
                encode_varint(resource.any.value.len() as u64, &mut out);
                out.put_slice(&resource.any.value);
            }
            self.next += 1;
        }
        if self.next >= resources.len() {
            put_string_field(4, self.response.type_url, &mut out);
            put_string_field(5, &self.response.nonce, &mut out);
            // Marks the end even when the last resource ended exactly at a chunk boundary.
            self.next = usize::MAX;
        }
        Some(out.freeze())
    }
}

impl SotwResponse {
    /// The same response as a prost message (copies every resource).
    pub fn into_message(self) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
            version_info: self.version_info,
            resources: self.resources.iter().map(|r| r.any.clone()).collect(),
            type_url: self.type_url.to_owned(),
            nonce: self.nonce,
            ..Default::default()
        }
    }

    /// A capacity hint for the first chunk: small responses get small buffers.
    fn encoded_len_hint(&self) -> usize {
        self.resources.iter().take(64).map(|r| r.any.value.len() + 64).sum::<usize>() + 256
    }
}

/// The response body of one SotW stream: frames from the stream task, then the gRPC status in
/// the trailers.
#[derive(Debug)]
pub struct SotwBody {
    responses: mpsc::Receiver<Result<SotwResponse, Status>>,
    current: Option<Frames>,
    queued: VecDeque<Frames>,
    done: bool,
}

impl SotwBody {
    pub fn new(responses: mpsc::Receiver<Result<SotwResponse, Status>>) -> Self {
        Self { responses, current: None, queued: VecDeque::new(), done: false }
    }

    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for SotwBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(frames) = &mut this.current {
                if let Some(chunk) = frames.next_chunk() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                this.current = None;
            }
            if let Some(next) = this.queued.pop_front() {
                this.current = Some(next);
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.responses.poll_recv(cx) {
                Poll::Ready(Some(Ok(response))) => this.current = Some(response.frames()),
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&status))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The ADS gRPC service: SotW streams through [`SotwBody`], delta through tonic.
#[derive(Clone, Debug)]
pub struct AdsService {
    server: DiscoveryServer,
    generated: AggregatedDiscoveryServiceServer<DiscoveryServer>,
}

impl AdsService {
    pub fn new(server: DiscoveryServer) -> Self {
        let generated = AggregatedDiscoveryServiceServer::new(server.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
            .max_encoding_message_size(usize::MAX);
        Self { server, generated }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl tower::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != SOTW_PATH {
            return Box::pin(tower::Service::call(&mut self.generated, request));
        }
        let server = self.server.clone();
        Box::pin(async move {
            let peer =
                request.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|i| i.remote_addr());
            let body = request.into_body();
            let decoder = tonic_prost::ProstDecoder::<DiscoveryRequest>::default();
            let requests = Streaming::new_request(decoder, body, None, Some(MAX_DECODING_MESSAGE_SIZE));
            Ok(match server.open_sotw(requests, peer).await {
                Ok(responses) => {
                    let mut response = http::Response::new(tonic::body::Body::new(SotwBody::new(responses)));
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}
