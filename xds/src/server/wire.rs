//! State-of-the-world responses written straight from the shared encodings.
//!
//! tonic encodes each response message into a per-stream buffer that keeps the capacity of the
//! largest message the stream ever sent, so every SotW stream held a full copy of its biggest
//! response (megabytes per proxy on a large mesh) for as long as it lived, and each push first
//! copied every resource into a fresh `DiscoveryResponse`. Here the stream task hands the body a
//! [`SotwResponse`] (the shared [`EncodedResource`]s, not copies), and the body writes the gRPC
//! frame lazily: small resources are copied into chunks of about [`CHUNK`] bytes, and a resource
//! of [`BY_REFERENCE`] bytes or more is handed to HTTP/2 as the shared bytes themselves, which
//! h2 writes to the socket without copying. A stream holds one chunk in flight, never a copy of
//! a large resource. The bytes on the wire are exactly those of `DiscoveryResponse` (fields 1,
//! 2, 4, 5, in field order).
//!
//! Delta responses are written the same way ([`DeltaResponse`]). [`AdsService`] routes both ADS
//! methods. Requests are read by [`Requests`], which, unlike tonic's decoder, gives back the
//! buffer of a large request (an EDS subscription of thousands of names) once it is decoded:
//! an idle stream keeps no request-sized buffer.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::server::connection::Peer;
use http_body::Frame;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::server::NamedService;

use super::cache::{EncodedResource, VERSION_LEN};
use super::{DiscoveryServer, MAX_DECODING_MESSAGE_SIZE};
use crate::protowire::{delimited_len, put_delimited_header, put_string_field, string_field_len};

/// The methods' paths.
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Bytes of small resources copied into one body frame.
pub const CHUNK: usize = 64 * 1024;
/// A resource at least this large is sent as its shared bytes, in a body frame of its own: a
/// RouteConfiguration of a large mesh (~1 MiB) was copied into a fresh buffer per stream, so a
/// route change allocated and copied a megabyte per proxy.
pub const BY_REFERENCE: usize = 16 * 1024;

/// One SotW `DiscoveryResponse`, by reference to the shared encodings.
#[derive(Debug, Clone, Default)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: &'static str,
    pub nonce: String,
    pub resources: Vec<Arc<EncodedResource>>,
}

/// One `DeltaDiscoveryResponse`, by reference to the shared encodings.
#[derive(Debug, Clone, Default)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub type_url: &'static str,
    pub nonce: String,
    pub resources: Vec<Arc<EncodedResource>>,
    pub removed_resources: Vec<String>,
}

/// A response message written field by field: the scalar and small fields first (`head`),
/// then one length-delimited entry per shared resource. Protobuf does not care about field
/// order, so the bytes decode to the same message as prost's encoding of it.
///
/// An entry is written in three parts: what precedes the resource's encoded bytes (tags and
/// lengths of the enclosing messages), the bytes, and what follows them.
pub trait WireMessage: Send + 'static {
    fn head_len(&self) -> usize;
    fn write_head(&self, out: &mut BytesMut);
    fn resources(&self) -> &[Arc<EncodedResource>];
    /// The length of resource `r`'s entry, tag and length prefix included.
    fn entry_len(&self, r: &EncodedResource) -> usize;
    /// Writes `r`'s entry up to its encoded bytes.
    fn write_entry_prefix(&self, r: &EncodedResource, out: &mut BytesMut);
    /// Writes the rest of `r`'s entry after its encoded bytes.
    fn write_entry_suffix(&self, _r: &EncodedResource, _out: &mut BytesMut) {}

    fn write_entry(&self, r: &EncodedResource, out: &mut BytesMut) {
        self.write_entry_prefix(r, out);
        out.put_slice(&r.value);
        self.write_entry_suffix(r, out);
    }

    fn encoded_len(&self) -> usize {
        self.head_len() + self.resources().iter().map(|r| self.entry_len(r)).sum::<usize>()
    }
}

/// Encoded length of one `google.protobuf.Any` (`type_url` = 1, `value` = 2).
fn any_len(r: &EncodedResource) -> usize {
    string_field_len(1, r.type_url.as_bytes()) + string_field_len(2, &r.value)
}

/// Writes an `Any` up to its value's bytes.
fn put_any_prefix(r: &EncodedResource, out: &mut BytesMut) {
    put_string_field(1, r.type_url.as_bytes(), out);
    if !r.value.is_empty() {
        put_delimited_header(2, r.value.len(), out);
    }
}

impl WireMessage for SotwResponse {
    fn head_len(&self) -> usize {
        string_field_len(1, self.version_info.as_bytes())
            + string_field_len(4, self.type_url.as_bytes())
            + string_field_len(5, self.nonce.as_bytes())
    }

    fn write_head(&self, out: &mut BytesMut) {
        put_string_field(1, self.version_info.as_bytes(), out);
        put_string_field(4, self.type_url.as_bytes(), out);
        put_string_field(5, self.nonce.as_bytes(), out);
    }

    fn resources(&self) -> &[Arc<EncodedResource>] {
        &self.resources
    }

    /// `resources` (2): the Any.
    fn entry_len(&self, r: &EncodedResource) -> usize {
        delimited_len(2, any_len(r))
    }

    fn write_entry_prefix(&self, r: &EncodedResource, out: &mut BytesMut) {
        put_delimited_header(2, any_len(r), out);
        put_any_prefix(r, out);
    }
}

/// Length of a delta `Resource` message: `version` (1), `resource` (2, the Any), `name` (3).
fn delta_resource_len(r: &EncodedResource) -> usize {
    delimited_len(1, VERSION_LEN) + delimited_len(2, any_len(r)) + string_field_len(3, r.name.as_bytes())
}

impl WireMessage for DeltaResponse {
    fn head_len(&self) -> usize {
        string_field_len(1, self.system_version_info.as_bytes())
            + string_field_len(4, self.type_url.as_bytes())
            + string_field_len(5, self.nonce.as_bytes())
            + self.removed_resources.iter().map(|n| delimited_len(6, n.len())).sum::<usize>()
    }

    fn write_head(&self, out: &mut BytesMut) {
        put_string_field(1, self.system_version_info.as_bytes(), out);
        put_string_field(4, self.type_url.as_bytes(), out);
        put_string_field(5, self.nonce.as_bytes(), out);
        for name in &self.removed_resources {
            put_delimited_header(6, name.len(), out);
            out.put_slice(name.as_bytes());
        }
    }

    fn resources(&self) -> &[Arc<EncodedResource>] {
        &self.resources
    }

    /// `resources` (2): a `Resource`.
    fn entry_len(&self, r: &EncodedResource) -> usize {
        delimited_len(2, delta_resource_len(r))
    }

    fn write_entry_prefix(&self, r: &EncodedResource, out: &mut BytesMut) {
        put_delimited_header(2, delta_resource_len(r), out);
        put_string_field(1, &r.version_bytes(), out);
        put_delimited_header(2, any_len(r), out);
        put_any_prefix(r, out);
    }

    fn write_entry_suffix(&self, r: &EncodedResource, out: &mut BytesMut) {
        put_string_field(3, r.name.as_bytes(), out);
    }
}

impl SotwResponse {
    /// The same response as a prost message (copies every resource).
    pub fn into_message(self) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
            version_info: self.version_info,
            resources: self.resources.iter().map(|r| r.to_any()).collect(),
            type_url: self.type_url.to_owned(),
            nonce: self.nonce,
            ..Default::default()
        }
    }
}

impl DeltaResponse {
    /// The same response as a prost message (copies every resource).
    pub fn into_message(self) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
        use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info,
            resources: self
                .resources
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version(),
                    resource: Some(r.to_any()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.to_owned(),
            removed_resources: self.removed_resources,
            nonce: self.nonce,
            ..Default::default()
        }
    }
}

/// Writes one message as gRPC frame chunks: small entries copied together into chunks of
/// about [`CHUNK`] bytes, the bytes of a large resource as a chunk of their own.
#[derive(Debug)]
struct Frames<M> {
    message: M,
    /// The next resource to write; `None` before the header is written.
    next: Option<usize>,
    /// A large resource's shared bytes, the next chunk.
    by_reference: Option<Bytes>,
    /// The resource whose entry's suffix starts the chunk after its bytes.
    suffix_of: Option<usize>,
}

impl<M: WireMessage> Frames<M> {
    fn new(message: M) -> Self {
        Self { message, next: None, by_reference: None, suffix_of: None }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(value) = self.by_reference.take() {
            return Some(value);
        }
        let resources = self.message.resources();
        let mut out = BytesMut::new();
        if let Some(index) = self.suffix_of.take() {
            self.message.write_entry_suffix(&resources[index], &mut out);
        }
        let mut next = match self.next {
            Some(next) if next >= resources.len() => return (!out.is_empty()).then(|| out.freeze()),
            Some(next) => next,
            None => {
                let len = self.message.encoded_len();
                let first: usize = resources.iter().take(64).map(|r| self.message.entry_len(r)).sum();
                out.reserve(CHUNK.min(first + self.message.head_len() + 5));
                out.put_u8(0); // not compressed
                out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
                self.message.write_head(&mut out);
                0
            }
        };
        while let Some(resource) = resources.get(next) {
            if resource.value.len() >= BY_REFERENCE {
                self.message.write_entry_prefix(resource, &mut out);
                self.by_reference = Some(resource.value.clone());
                self.suffix_of = Some(next);
                next += 1;
                break;
            }
            let len = self.message.entry_len(resource);
            if !out.is_empty() && out.len() + len > CHUNK {
                break;
            }
            out.reserve(len);
            self.message.write_entry(resource, &mut out);
            next += 1;
        }
        self.next = Some(next);
        Some(out.freeze())
    }
}

/// The messages of one stream, as its task sends them to the body. Boxed: the channel
/// allocates its slots in blocks of 32, which were 2.8-3.6 KB per stream for the messages
/// themselves.
pub type ResponseReceiver<M> = mpsc::Receiver<Result<Box<M>, Status>>;
/// The stream task's end of [`ResponseReceiver`].
pub type ResponseSender<M> = mpsc::Sender<Result<Box<M>, Status>>;

/// The response body of one stream: each message from the stream task written as frames, then
/// the gRPC status in the trailers.
#[derive(Debug)]
pub struct WireBody<M> {
    responses: ResponseReceiver<M>,
    current: Option<Frames<M>>,
    done: bool,
}

impl<M> WireBody<M> {
    pub fn new(responses: ResponseReceiver<M>) -> Self {
        Self { responses, current: None, done: false }
    }

    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Frame::trailers(trailers)
    }
}

impl<M: WireMessage + Unpin> http_body::Body for WireBody<M> {
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
            if this.done {
                return Poll::Ready(None);
            }
            match this.responses.poll_recv(cx) {
                Poll::Ready(Some(Ok(message))) => this.current = Some(Frames::new(*message)),
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

/// The ADS gRPC service, both methods answered through [`WireBody`].
#[derive(Clone, Debug)]
pub struct AdsService {
    server: DiscoveryServer,
}

impl AdsService {
    pub fn new(server: DiscoveryServer) -> Self {
        Self { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The HTTP response of a stream whose messages arrive on `responses`.
fn grpc_response<M: WireMessage + Unpin>(
    responses: Result<ResponseReceiver<M>, Status>,
) -> http::Response<tonic::body::Body> {
    match responses {
        Ok(responses) => {
            let mut response = http::Response::new(tonic::body::Body::new(WireBody::new(responses)));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            response
        }
        Err(status) => status.into_http(),
    }
}

/// A SotW `DiscoveryRequest` whose resource names are ranges of the received bytes (protobuf
/// encodes `string` and `bytes` alike). Envoy acknowledges every EDS response with all the names
/// it subscribes to (thousands); held as ranges, an acknowledgement that repeats the
/// subscription is recognised without allocating, or counting a reference, per name (see
/// `sotw::same_names`). Fields this server does not read (`resource_locators`) are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    pub resource_names: Names,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<envoy_types::pb::google::rpc::Status>,
}

/// The `resource_names` of a [`SotwRequest`]: where each lies in the request's bytes. Equal
/// when the names are.
#[derive(Clone, Debug, Default)]
pub struct Names {
    frame: Bytes,
    ranges: Vec<std::ops::Range<usize>>,
}

impl Names {
    /// Names given as values, for tests.
    #[cfg(test)]
    pub fn from_values<N: AsRef<[u8]>>(names: &[N]) -> Self {
        let mut frame = Vec::new();
        let mut ranges = Vec::with_capacity(names.len());
        for name in names {
            let start = frame.len();
            frame.extend_from_slice(name.as_ref());
            ranges.push(start..frame.len());
        }
        Self { frame: Bytes::from(frame), ranges }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The names' bytes, in request order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.ranges.iter().map(|range| &self.frame[range.clone()])
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl SotwRequest {
    /// The resource names as strings; `None` if one is not UTF-8 (a `string` field must be).
    pub fn names(&self) -> Option<Vec<String>> {
        self.resource_names.iter().map(|name| String::from_utf8(name.to_vec()).ok()).collect()
    }
}

/// A request message as this server decodes it from one gRPC frame.
pub trait DecodeRequest: Sized {
    fn decode_frame(frame: Bytes) -> Result<Self, prost::DecodeError>;
}

impl<M: prost::Message + Default> DecodeRequest for M {
    fn decode_frame(frame: Bytes) -> Result<Self, prost::DecodeError> {
        M::decode(frame)
    }
}

/// The key of a `resource_names` entry: field 3, length-delimited.
const NAME_KEY: u8 = 3 << 3 | 2;

impl DecodeRequest for SotwRequest {
    /// Reads the fields with prost's field decoders; the names only as ranges of `frame`.
    fn decode_frame(frame: Bytes) -> Result<Self, prost::DecodeError> {
        use prost::encoding::{self, DecodeContext, WireType};
        let mut request = SotwRequest::default();
        let mut names = Vec::new();
        let mut buf: &[u8] = &frame;
        while !buf.is_empty() {
            // A name shorter than 128 bytes (all of a mesh's, in practice): its key, a one-byte
            // length, and the name, read without the general decoder's calls (an ACK repeats
            // thousands of them). Anything else, malformed included, goes the general way.
            if let [NAME_KEY, length, rest @ ..] = buf
                && *length < 0x80
                && let Some(name) = rest.get(..usize::from(*length))
            {
                let start = frame.len() - rest.len();
                names.push(start..start + name.len());
                buf = &rest[name.len()..];
                continue;
            }
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            let ctx = DecodeContext::default();
            match tag {
                1 => encoding::string::merge(wire_type, &mut request.version_info, &mut buf, ctx)?,
                2 => encoding::message::merge(
                    wire_type,
                    request.node.get_or_insert_with(Default::default),
                    &mut buf,
                    ctx,
                )?,
                3 => {
                    // prost's skip checks the length against what is left; the name is what
                    // it skipped, after the length.
                    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let mut payload = buf;
                    encoding::decode_varint(&mut payload)?;
                    let start = frame.len() - payload.len();
                    encoding::skip_field(wire_type, tag, &mut buf, ctx)?;
                    names.push(start..frame.len() - buf.len());
                }
                4 => encoding::string::merge(wire_type, &mut request.type_url, &mut buf, ctx)?,
                5 => encoding::string::merge(wire_type, &mut request.response_nonce, &mut buf, ctx)?,
                6 => encoding::message::merge(
                    wire_type,
                    request.error_detail.get_or_insert_with(Default::default),
                    &mut buf,
                    ctx,
                )?,
                _ => encoding::skip_field(wire_type, tag, &mut buf, ctx)?,
            }
        }
        request.resource_names = Names { frame, ranges: names };
        Ok(request)
    }
}

/// The request messages of one ADS call, decoded from the gRPC frames of its body.
pub struct Requests<M> {
    body: tonic::body::Body,
    buffer: BytesMut,
    message: std::marker::PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for Requests<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests").field("buffered", &self.buffer.len()).finish_non_exhaustive()
    }
}

/// The gRPC message header: a compression flag and a big-endian length.
const GRPC_HEADER: usize = 5;

impl<M: DecodeRequest> Requests<M> {
    pub fn new(body: tonic::body::Body) -> Self {
        Self { body, buffer: BytesMut::new(), message: std::marker::PhantomData }
    }

    /// The next request; `None` when the client closed its side cleanly.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.decode_buffered()? {
                return Ok(Some(message));
            }
            let frame = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut self.body), cx)).await;
            match frame {
                None if self.buffer.is_empty() => return Ok(None),
                None => return Err(Status::internal("the request stream ended inside a message")),
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<M>, Status> {
        let Some(header) = self.buffer.get(..GRPC_HEADER) else { return Ok(None) };
        if header[0] != 0 {
            return Err(Status::unimplemented("compressed requests are not supported"));
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if length > MAX_DECODING_MESSAGE_SIZE {
            return Err(Status::resource_exhausted(format!(
                "request of {length} bytes; the limit is {MAX_DECODING_MESSAGE_SIZE}"
            )));
        }
        if self.buffer.len() < GRPC_HEADER + length {
            self.buffer.reserve(GRPC_HEADER + length - self.buffer.len());
            return Ok(None);
        }
        // Frozen, so `bytes` fields of the message are slices of it rather than copies.
        let mut frame = self.buffer.split_to(GRPC_HEADER + length).freeze();
        prost::bytes::Buf::advance(&mut frame, GRPC_HEADER);
        let message =
            M::decode_frame(frame).map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
        // The frame was split off the buffer's allocation, which an empty remainder still
        // shares: kept, it would pin the allocation (a 150 KB SotW EDS ACK, per stream) after
        // the request is gone, until the next one arrives.
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
        Ok(Some(message))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let peer = Peer::of(&request);
            let path = request.uri().path().to_owned();
            let body = request.into_body();
            Ok(match path.as_str() {
                SOTW_PATH => grpc_response(server.open_sotw(Requests::new(body), peer).await),
                DELTA_PATH => grpc_response(server.open_delta(Requests::new(body), peer).await),
                other => Status::unimplemented(format!("{other}: not an ADS method")).into_http(),
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse};
    use prost::Message;

    use crate::server::Kind;

    fn resources(count: usize, size: usize) -> Vec<Arc<EncodedResource>> {
        (0..count)
            .map(|i| {
                let cluster = Cluster { name: format!("c{i}-{}", "x".repeat(size)), ..Default::default() };
                Arc::new(EncodedResource::encode(cluster.name.clone(), &cluster))
            })
            .collect()
    }

    /// The frames of `message`, joined: the 5-byte gRPC header and the message bytes.
    fn framed<M: WireMessage>(message: M) -> (Vec<usize>, Vec<u8>) {
        let mut frames = Frames::new(message);
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(chunk) = frames.next_chunk() {
            sizes.push(chunk.len());
            all.extend_from_slice(&chunk);
        }
        (sizes, all)
    }

    #[test]
    fn sotw_bytes_decode_to_the_same_response() {
        for (count, size) in [(0, 0), (1, 10), (3, 0), (500, 300), (2, 200_000)] {
            let response = SotwResponse {
                version_info: "1700000000/7".into(),
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                nonce: "42".into(),
                resources: resources(count, size),
            };
            let (sizes, bytes) = framed(response.clone());
            assert_eq!(bytes[0], 0);
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 5, "the header gives the message length");
            assert_eq!(DiscoveryResponse::decode(&bytes[5..]).unwrap(), response.clone().into_message());
            assert_eq!(len, response.into_message().encoded_len(), "same length as prost's encoding");
            // Chunks stay near CHUNK, except one holding a single larger resource.
            assert!(sizes.iter().all(|s| *s <= CHUNK || size > CHUNK / 2), "{sizes:?}");
        }
    }

    #[test]
    fn delta_bytes_decode_to_the_same_response() {
        for (count, removed) in [(0, vec![]), (2, vec!["gone".to_owned()]), (300, vec!["a".into(), "b".into()])] {
            let response = DeltaResponse {
                system_version_info: "1700000000/7".into(),
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                nonce: "42/1".into(),
                resources: resources(count, 400),
                removed_resources: removed,
            };
            let (_, bytes) = framed(response.clone());
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 5);
            assert_eq!(DeltaDiscoveryResponse::decode(&bytes[5..]).unwrap(), response.into_message());
        }
    }

    #[test]
    fn large_resources_are_sent_as_their_shared_bytes() {
        // Small and large resources mixed, a large one last: its delta entry's suffix (the
        // name) follows its bytes in a chunk of its own.
        let mut mixed = resources(3, 100);
        mixed.insert(1, resources(1, BY_REFERENCE)[0].clone());
        mixed.push(resources(1, 3 * BY_REFERENCE)[0].clone());
        let large: Vec<_> = mixed.iter().filter(|r| r.value.len() >= BY_REFERENCE).cloned().collect();
        assert_eq!(large.len(), 2);
        let sotw = SotwResponse {
            version_info: "1".into(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            nonce: "1".into(),
            resources: mixed.clone(),
        };
        let delta = DeltaResponse {
            system_version_info: "1".into(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            nonce: "1/1".into(),
            resources: mixed,
            removed_resources: vec!["gone".into()],
        };
        let mut frames = Frames::new(sotw.clone());
        let sotw_chunks = std::iter::from_fn(|| frames.next_chunk()).collect::<Vec<_>>();
        let mut frames = Frames::new(delta.clone());
        let delta_chunks = std::iter::from_fn(|| frames.next_chunk()).collect::<Vec<_>>();
        for chunks in [&sotw_chunks, &delta_chunks] {
            assert!(chunks.iter().all(|c| !c.is_empty()));
            for resource in &large {
                let shared = chunks.iter().filter(|c| c.as_ptr() == resource.value.as_ptr()).count();
                assert_eq!(shared, 1, "the resource's own bytes are one chunk, not a copy");
            }
        }
        let joined = |chunks: &[Bytes]| chunks.iter().flat_map(|c| c.iter().copied()).collect::<Vec<u8>>();
        let sotw_bytes = joined(&sotw_chunks);
        assert_eq!(DiscoveryResponse::decode(&sotw_bytes[5..]).unwrap(), sotw.into_message());
        let delta_bytes = joined(&delta_chunks);
        let len = u32::from_be_bytes(delta_bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, delta_bytes.len() - 5);
        assert_eq!(DeltaDiscoveryResponse::decode(&delta_bytes[5..]).unwrap(), delta.into_message());
    }

    /// A request that keeps its frame, to tell who else still holds the frame's memory.
    struct KeepsFrame(Bytes);

    impl DecodeRequest for KeepsFrame {
        fn decode_frame(frame: Bytes) -> Result<Self, prost::DecodeError> {
            Ok(Self(frame))
        }
    }

    #[tokio::test]
    async fn a_decoded_request_alone_holds_its_memory() {
        // A large request (~190 KB) in window-sized pieces, then a small one.
        let (large, small) = (subscription(3_000), subscription(1));
        let mut pieces: Vec<Vec<u8>> = grpc_frame(&large).chunks(65_535).map(<[u8]>::to_vec).collect();
        pieces.push(grpc_frame(&small));
        let body = Pieces(pieces.into_iter().map(Bytes::from).collect());
        let mut requests = Requests::<KeepsFrame>::new(tonic::body::Body::new(body));
        for len in [large.encoded_len(), small.encoded_len()] {
            let KeepsFrame(frame) = requests.message().await.unwrap().unwrap();
            assert_eq!(frame.len(), len);
            assert!(frame.is_unique(), "the reader keeps no share of a {len}-byte request's buffer");
        }
        assert!(requests.message().await.unwrap().is_none());
    }

    /// A request body delivered in the given pieces.
    struct Pieces(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(piece))))
        }
    }

    fn requests(pieces: Vec<Vec<u8>>) -> Requests<DiscoveryRequest> {
        Requests::new(tonic::body::Body::new(Pieces(pieces.into_iter().map(Bytes::from).collect())))
    }

    fn grpc_frame(request: &DiscoveryRequest) -> Vec<u8> {
        let body = request.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn subscription(names: usize) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: "t".into(),
            resource_names: (0..names).map(|i| format!("outbound|8080||svc-{i}.bench.svc.cluster.local")).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_decode_across_and_within_frames_and_give_back_large_buffers() {
        let (big, small) = (subscription(3_000), subscription(1));
        let big_frame = grpc_frame(&big);
        assert!(big_frame.len() > 100_000);
        // The big request split at odd places (inside the header too), then two in one piece.
        let mut pieces: Vec<Vec<u8>> =
            vec![big_frame[..3].to_vec(), big_frame[3..1000].to_vec(), big_frame[1000..].to_vec()];
        pieces.push([grpc_frame(&small), grpc_frame(&small)].concat());
        let mut stream = requests(pieces);
        assert_eq!(stream.message().await.unwrap().unwrap(), big);
        assert_eq!(stream.buffer.capacity(), 0, "an emptied buffer is let go");
        assert_eq!(stream.message().await.unwrap().unwrap(), small);
        assert_eq!(stream.message().await.unwrap().unwrap(), small);
        assert_eq!(stream.message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_request_frames_end_the_stream_with_a_status() {
        let frame = grpc_frame(&subscription(2));
        let truncated = requests(vec![frame[..frame.len() - 1].to_vec()]).message().await.unwrap_err();
        assert_eq!(truncated.code(), tonic::Code::Internal, "{truncated}");
        let mut compressed = frame.clone();
        compressed[0] = 1;
        assert_eq!(requests(vec![compressed]).message().await.unwrap_err().code(), tonic::Code::Unimplemented);
        let huge = [vec![0], u32::MAX.to_be_bytes().to_vec()].concat();
        assert_eq!(requests(vec![huge]).message().await.unwrap_err().code(), tonic::Code::ResourceExhausted);
        let garbage = [vec![0, 0, 0, 0, 2], vec![0xff, 0xff]].concat();
        assert_eq!(requests(vec![garbage]).message().await.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    /// The hand-read SotW request agrees with prost's reading of the full message, field by
    /// field, and refuses what prost refuses.
    #[test]
    fn a_sotw_request_decodes_as_prost_does_and_rejects_malformed_names() {
        let mut request = subscription(3_000);
        request.response_nonce = "12".into();
        request.version_info = "v7".into();
        let body = request.encode_to_vec();
        let got = SotwRequest::decode_frame(Bytes::from(body.clone())).unwrap();
        assert_eq!(got.names().unwrap(), request.resource_names);
        assert_eq!((got.version_info.as_str(), got.response_nonce.as_str()), ("v7", "12"));
        assert_eq!(got.resource_names, Names::from_values(&request.resource_names));
        // Every cut inside the names ends in a name that overruns the buffer, or a bad key.
        for cut in [body.len() - 1, body.len() / 2, 3] {
            let truncated = Bytes::from(body[..cut].to_vec());
            assert_eq!(
                SotwRequest::decode_frame(truncated.clone()).is_err(),
                DiscoveryRequest::decode(truncated).is_err(),
                "cut at {cut}"
            );
        }
        // Field 3 with a varint wire type is not a name.
        assert!(SotwRequest::decode_frame(Bytes::from_static(&[0x18, 0x01])).is_err());
        // Names on both sides of the one-byte length, between other fields.
        let lengths = [0, 1, 127, 128, 300, 5];
        let mixed = DiscoveryRequest {
            resource_names: lengths.iter().map(|&n| "n".repeat(n)).collect(),
            type_url: Kind::Endpoint.type_url().into(),
            ..Default::default()
        };
        let mut body = mixed.encode_to_vec();
        body.extend(DiscoveryRequest { resource_names: vec!["late".into()], ..Default::default() }.encode_to_vec());
        let got = SotwRequest::decode_frame(Bytes::from(body.clone())).unwrap();
        assert_eq!(got.names(), Some(DiscoveryRequest::decode(body.as_slice()).unwrap().resource_names));
        assert_eq!(got.resource_names.len(), lengths.len() + 1);
    }

    #[tokio::test]
    async fn a_sotw_request_reads_what_envoy_sends_with_names_as_slices() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        let sent = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node { id: "sidecar~1.2.3.4~a.ns~ns.svc.cluster.local".into(), ..Default::default() }),
            resource_names: vec!["outbound|80||a.ns.svc.cluster.local".into(), "*".into()],
            resource_locators: vec![Default::default()],
            type_url: Kind::Endpoint.type_url().into(),
            response_nonce: "7".into(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
        };
        let frame = grpc_frame(&sent);
        let mut stream = Requests::<SotwRequest>::new(tonic::body::Body::new(Pieces([Bytes::from(frame)].into())));
        let got = stream.message().await.unwrap().unwrap();
        assert_eq!(got.names().unwrap(), sent.resource_names);
        assert_eq!(
            (got.version_info.as_str(), got.type_url.as_str(), got.response_nonce.as_str()),
            ("v1", sent.type_url.as_str(), "7")
        );
        assert_eq!(got.node, sent.node);
        assert_eq!(got.error_detail.unwrap().message, "bad");

        let not_utf8 = SotwRequest { resource_names: Names::from_values(&[[0xff, 0xfe]]), ..Default::default() };
        assert_eq!(not_utf8.names(), None);
    }
}
