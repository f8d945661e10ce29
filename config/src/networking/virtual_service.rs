//! VirtualService: HTTP, TLS and TCP routing rules (`networking.istio.io`,
//! `networking/v1alpha3/virtual_service.proto`), with the semantic checks Istio makes on it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::LazyLock;

use kube::CustomResource;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, IstioStatus, PortSelector, StringMatch};
use crate::validate::{self, FieldPath, Report, Validate, checks};

/// `VirtualService` spec: traffic routing for a set of hosts.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    status = "IstioStatus",
    shortname = "vs",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Gateways","type":"string","description":"The gateways and sidecars these routes apply to","jsonPath":".spec.gateways"}"#,
    printcolumn = r#"{"name":"Hosts","type":"string","description":"The destination hosts the traffic is addressed to","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Hosts the routes apply to; empty only for a delegate VirtualService.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Gateways (`[namespace/]name`, or `mesh`) the routes apply to; empty means `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Ordered HTTP routing rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Ordered rules for unterminated TLS and HTTPS traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Ordered rules for opaque TCP traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces the VirtualService is visible to (`.`, `*` or namespace names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// `Destination`: a service (and optional subset and port) traffic is sent to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service name from the registry (short or fully qualified).
    #[serde(default)]
    pub host: String,
    /// Subset name defined in a DestinationRule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    /// Port of the destination service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// `Percent`: a percentage as a double in 0..100.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// `HTTPRoute`: match conditions and actions for HTTP/1.1, HTTP/2 and gRPC traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Route name, used in logs and route names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Conditions (ORed) a request must meet; none means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<HttpMatchRequest>,
    /// Weighted destinations to forward to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with an HTTP redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand the routing to another VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Rewrite the path or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout (disabled when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection (delays and aborts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Mirror traffic to several destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated: share of traffic mirrored, as a whole percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    /// `mirrorPercent` under its protobuf field name, which protobuf JSON also reads (upstream's
    /// CRD lists both); use [`HttpRoute::mirror_percent`].
    #[serde(default, rename = "mirror_percent", skip_serializing_if = "Option::is_none")]
    pub mirror_percent_proto_name: Option<u32>,
    /// Share of traffic mirrored to `mirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// Cross-origin resource sharing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Request and response header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

impl HttpRoute {
    /// The deprecated whole-percent mirror share, under either of its names.
    pub fn mirror_percent(&self) -> Option<u32> {
        self.mirror_percent.or(self.mirror_percent_proto_name)
    }
}

/// `Delegate`: the VirtualService that routes on behalf of this rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Defaults to the namespace of this VirtualService.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `Headers`: header changes for requests and responses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`: overwrite, append and remove headers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `TLSRoute`: routing for TLS traffic by SNI.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<TlsMatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// `TCPRoute`: routing for opaque TCP traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<L4MatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// `HTTPMatchRequest`: conditions (ANDed) on an HTTP request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Header conditions by lower-case header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match is limited to (overrides the top-level gateways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match the URI case-insensitively.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
    /// Prefix for the route's statistics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
}

/// `HTTPRouteDestination`: a weighted HTTP destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Relative share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// `RouteDestination`: a weighted TCP or TLS destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// `L4MatchAttributes`: conditions on a TCP connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Source address or CIDR block of the connection (hidden from upstream's docs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_subnet: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
}

/// `TLSMatchAttributes`: conditions on a TLS connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match (wildcards allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
}

crate::proto_enum! {
    /// `HTTPRedirect.RedirectPortSelection`.
    pub enum RedirectPortSelection {
        FromProtocolDefault = 0 => "FROM_PROTOCOL_DEFAULT",
        FromRequestPort = 1 => "FROM_REQUEST_PORT",
    }
}

/// `HTTPRedirect`: answer with a redirect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replaces the whole path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Replaces the matched URI prefix, keeping the rest of the path (exclusive with `uri`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix_rewrite: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// Port to redirect to (exclusive with `derivePort`).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// How to choose the redirect port (exclusive with `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    /// Status code of the redirect (301 when unset).
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

/// `HTTPDirectResponse`: answer with a fixed status and body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    #[serde(default)]
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: exactly one of `string` or `bytes` (base64).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HttpBody {
    String(String),
    /// Base64-encoded bytes.
    Bytes(String),
}

/// `HTTPRewrite`: rewrite the request before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replaces the matched path prefix (or the whole path for exact matches).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`: a regex substitution on the path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub r#match: String,
    /// Replacement, with `\1`-style group references.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rewrite: String,
}

/// `HTTPRetry`: the retry policy of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries; 0 disables retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated Envoy retry conditions and HTTP status codes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub retry_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

crate::proto_enum! {
    /// `CorsPolicy.UnmatchedPreflights`.
    pub enum UnmatchedPreflights {
        Unspecified = 0 => "UNSPECIFIED",
        Forward = 1 => "FORWARD",
        Ignore = 2 => "IGNORE",
    }
}

/// `CorsPolicy`: cross-origin resource sharing settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated: exact origins; use `allowOrigins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `HTTPFaultInjection`: delays and aborts injected into requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`: one of `fixedDelay` or `exponentialDelay`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Deprecated: whole percentage of requests to delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Not supported by Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// `HTTPFaultInjection.Abort`: one of `httpStatus`, `grpcStatus` or `http2Error`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// gRPC status name, e.g. `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Not supported by Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`: one mirror destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Envoy's retry conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names in code order (the index is the status code).
pub const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

const REDIRECT_CODES: &[u32] = &[301, 302, 303, 307, 308];

const MESH_GATEWAY: &str = "mesh";
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims.";
const MAX_REGEX_LEN: usize = 1024;
const DIRECT_RESPONSE_MAX: usize = 1024 * 1024;
const DIRECT_RESPONSE_WARN: usize = 100 * 1024;

#[allow(clippy::unwrap_used)] // constant pattern, exercised by the tests below
static MATCH_HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[-_A-Za-z0-9]+$").unwrap());

/// What a VirtualService is bound to, which changes a few rules.
#[derive(Clone, Copy)]
struct Scope {
    /// No hosts: a delegate, only reachable through another VirtualService.
    delegate: bool,
    /// Applies to sidecars (no gateways, or `mesh` among them).
    mesh: bool,
}

impl Validate for VirtualService {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        let scope = Scope {
            delegate: spec.hosts.is_empty(),
            mesh: spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH_GATEWAY),
        };

        if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
            report.error(&at, "at least one of http, tcp or tls routes is required");
        }

        if scope.delegate {
            if !spec.gateways.is_empty() {
                report.error(&at.field("gateways"), "a delegate VirtualService (no hosts) must not set gateways");
            }
            if !spec.tls.is_empty() {
                report.error(&at.field("tls"), "a delegate VirtualService (no hosts) cannot have tls routes");
            }
            if !spec.tcp.is_empty() {
                report.error(&at.field("tcp"), "a delegate VirtualService (no hosts) cannot have tcp routes");
            }
        }

        validate_hosts(&spec.hosts, scope, report, &at.field("hosts"));
        gateway_names(&spec.gateways, report, &at.field("gateways"));

        for (i, route) in spec.http.iter().enumerate() {
            validate_http_route(route, scope, report, &at.field("http").index(i));
        }
        for (i, route) in spec.tls.iter().enumerate() {
            validate_tls_route(route, &spec.hosts, report, &at.field("tls").index(i));
        }
        for (i, route) in spec.tcp.iter().enumerate() {
            validate_tcp_route(route, report, &at.field("tcp").index(i));
        }

        validate::export_to(report, &at.field("exportTo"), &spec.export_to, self.metadata.namespace.as_deref(), false);

        unreachable_rules(
            spec.http.iter().map(|r| (r.r#match.is_empty(), http_match_keys(r))),
            report,
            &at.field("http"),
        );
        unreachable_rules(
            spec.tls.iter().map(|r| (r.r#match.is_empty(), json_keys(&r.r#match))),
            report,
            &at.field("tls"),
        );
        unreachable_rules(
            spec.tcp.iter().map(|r| (r.r#match.is_empty(), json_keys(&r.r#match))),
            report,
            &at.field("tcp"),
        );
    }
}

fn validate_hosts(hosts: &[String], scope: Scope, report: &mut Report, at: &FieldPath) {
    let mut all_valid = true;
    for (i, host) in hosts.iter().enumerate() {
        let here = at.index(i);
        if host.parse::<IpAddr>().is_ok() {
            continue;
        }
        if let Err(e) = checks::wildcard_host(host) {
            report.error(&here, e);
            all_valid = false;
        } else if host == "*" && scope.mesh {
            report.error(
                &here,
                "host \"*\" is not allowed when the VirtualService applies to the mesh (set gateways without mesh to use it)",
            );
            all_valid = false;
        }
    }
    if !all_valid {
        return;
    }
    for (i, a) in hosts.iter().enumerate() {
        for (j, b) in hosts.iter().enumerate().skip(i + 1) {
            if hosts_overlap(a, b) {
                report.error(&at.index(j), format!("host {b:?} duplicates or overlaps host {a:?} at index {i}"));
            }
        }
    }
}

/// Whether two (possibly wildcard) hosts can name the same host, as Istio's duplicate check
/// reads it.
fn hosts_overlap(a: &str, b: &str) -> bool {
    let a = a.to_ascii_lowercase();
    let b = b.to_ascii_lowercase();
    if a == b || a == "*" || b == "*" {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => false,
    }
}

/// Gateway references: `mesh`, `name`, `namespace/name` (legacy `name.namespace` warns).
fn gateway_names(names: &[String], report: &mut Report, at: &FieldPath) {
    for (i, name) in names.iter().enumerate() {
        let here = at.index(i);
        match name.split_once('/') {
            None => {
                if let Err(e) = checks::fqdn(name) {
                    report.error(&here, format!("gateway name {name:?} is invalid: {e}"));
                } else if let Some((gw, ns)) = name.split_once('.') {
                    report.warning(
                        &here,
                        format!(
                            "gateway name {name:?} uses the legacy name.namespace form; prefer \"{}/{gw}\"",
                            ns.split('.').next().unwrap_or(ns)
                        ),
                    );
                }
            }
            Some((namespace, gateway)) => {
                if let Err(e) = checks::dns1123_label(namespace) {
                    report.error(&here, format!("namespace of gateway {name:?}: {e}"));
                }
                if let Err(e) = checks::dns1123_label(gateway) {
                    report.error(&here, format!("name of gateway {name:?}: {e}"));
                }
            }
        }
    }
}

fn validate_http_route(route: &HttpRoute, scope: Scope, report: &mut Report, at: &FieldPath) {
    // What the route does: exactly one action.
    let mut actions = Vec::new();
    if !route.route.is_empty() {
        actions.push("route");
    }
    if route.redirect.is_some() {
        actions.push("redirect");
    }
    if route.direct_response.is_some() {
        actions.push("directResponse");
    }
    if route.delegate.is_some() {
        actions.push("delegate");
    }
    match actions.len() {
        0 => report.error(at, "one of route, redirect, directResponse or delegate is required"),
        1 => {}
        _ => report.error(
            at,
            format!(
                "only one of route, redirect, directResponse and delegate may be set, found {}",
                actions.join(" and ")
            ),
        ),
    }
    if scope.delegate && route.delegate.is_some() {
        report.error(&at.field("delegate"), "a delegate VirtualService cannot delegate further");
    }
    let answered_here = if route.redirect.is_some() {
        Some("redirect")
    } else if route.direct_response.is_some() {
        Some("directResponse")
    } else {
        None
    };
    if let Some(action) = answered_here {
        if route.rewrite.is_some() {
            report.error(&at.field("rewrite"), format!("rewrite cannot be combined with {action}"));
        }
        if route.fault.is_some() {
            report.error(&at.field("fault"), format!("fault cannot be combined with {action}"));
        }
        if route.mirror.is_some() {
            report.error(&at.field("mirror"), format!("mirror cannot be combined with {action}"));
        }
        if !route.mirrors.is_empty() {
            report.error(&at.field("mirrors"), format!("mirrors cannot be combined with {action}"));
        }
    }

    let delegating = scope.delegate || route.delegate.is_some();
    for (i, m) in route.r#match.iter().enumerate() {
        validate_http_match(m, scope, delegating, report, &at.field("match").index(i));
    }

    validate_http_destinations(&route.route, report, &at.field("route"));

    if let Some(redirect) = &route.redirect {
        validate_redirect(redirect, report, &at.field("redirect"));
        if !redirect.prefix_rewrite.is_empty() {
            for (i, m) in route.r#match.iter().enumerate() {
                if let Some(uri) = m.uri.as_ref().filter(|u| !matches!(u, StringMatch::Prefix(_))) {
                    let kind = if matches!(uri, StringMatch::Exact(_)) { "exact" } else { "regex" };
                    report.error(
                        &at.field("match").index(i).field("uri"),
                        format!("redirect.prefixRewrite needs prefix URI matches, not {kind}"),
                    );
                }
            }
        }
    }
    if let Some(direct) = &route.direct_response {
        validate_direct_response(direct, report, &at.field("directResponse"));
    }
    if let Some(delegate) = &route.delegate {
        let here = at.field("delegate");
        if delegate.name.is_empty() {
            report.error(&here.field("name"), "delegate name is required");
        }
        if !delegate.namespace.is_empty() {
            report.check(&here.field("namespace"), checks::dns1123_label(&delegate.namespace));
        }
    }
    if let Some(rewrite) = &route.rewrite {
        validate_rewrite(rewrite, report, &at.field("rewrite"));
    }
    if let Some(timeout) = &route.timeout {
        report.check(&at.field("timeout"), checks::duration(timeout));
    }
    if let Some(retries) = &route.retries {
        validate_retries(retries, report, &at.field("retries"));
    }
    if let Some(fault) = &route.fault {
        validate_fault(fault, report, &at.field("fault"));
    }

    // Mirroring.
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        report.error(&at.field("mirrors"), "mirror and mirrors are mutually exclusive; use mirrors only");
    }
    if let Some(mirror) = &route.mirror {
        validate_destination(mirror, report, &at.field("mirror"));
    }
    for (i, mirror) in route.mirrors.iter().enumerate() {
        let here = at.field("mirrors").index(i);
        match &mirror.destination {
            Some(d) => validate_destination(d, report, &here.field("destination")),
            None => report.error(&here.field("destination"), "destination is required"),
        }
        if let Some(p) = &mirror.percentage {
            percent(p, report, &here.field("percentage"));
        }
    }
    if route.mirror_percent.is_some() && route.mirror_percent_proto_name.is_some() {
        report.error(
            &at.field("mirror_percent"),
            "mirror_percent is mirrorPercent under its protobuf name; set only one of them",
        );
    }
    if let Some(value) = route.mirror_percent() {
        let here = at.field(if route.mirror_percent.is_some() { "mirrorPercent" } else { "mirror_percent" });
        if value > 100 {
            report.error(&here, format!("mirrorPercent {value} must be in the range 0..100"));
        }
        report.warning(&here, "mirrorPercent is deprecated; use mirrorPercentage");
    }
    if let Some(p) = &route.mirror_percentage {
        percent(p, report, &at.field("mirrorPercentage"));
    }

    if let Some(cors) = &route.cors_policy {
        validate_cors(cors, report, &at.field("corsPolicy"));
    }
    if let Some(headers) = &route.headers {
        validate_headers(headers, report, &at.field("headers"));
    }
    authority_set_once(route, report, at);
}

fn validate_http_match(m: &HttpMatchRequest, scope: Scope, delegating: bool, report: &mut Report, at: &FieldPath) {
    for (name, value) in [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
        if let Some(value) = value {
            string_match(value, delegating, report, &at.field(name));
        }
    }
    for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
        for (name, value) in map {
            let here = at.field(field).key(name);
            if let Some(claim) = name.strip_prefix(JWT_CLAIM_PREFIX) {
                if claim.is_empty() {
                    report.error(&here, "JWT claim routing needs a claim name");
                } else if scope.mesh {
                    report.error(&here, "JWT claim routing is only supported for gateways, not the mesh");
                }
            } else {
                report.check(&here, match_header_name(name));
            }
            string_match(value, delegating, report, &here);
        }
    }
    for (name, value) in &m.query_params {
        let here = at.field("queryParams").key(name);
        if name.is_empty() {
            report.error(&here, "query parameter name must not be empty");
        }
        string_match(value, delegating, report, &here);
    }
    if let Some(port) = m.port {
        report.check(&at.field("port"), checks::port(port));
    }
    checks::labels(&m.source_labels, report, &at.field("sourceLabels"));
    gateway_names(&m.gateways, report, &at.field("gateways"));
    if !m.source_namespace.is_empty() {
        report.check(&at.field("sourceNamespace"), checks::dns1123_label(&m.source_namespace));
    }
}

/// Header names in match conditions: letters, digits, `-` and `_`.
fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("header name must not be empty".into())
    } else if MATCH_HEADER_NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!("header name {name:?} is invalid (letters, digits, '-' and '_' only)"))
    }
}

fn string_match(value: &StringMatch, delegating: bool, report: &mut Report, at: &FieldPath) {
    if let StringMatch::Regex(pattern) = value {
        if delegating {
            report.error(&at.field("regex"), "regex matches are not supported on delegating routes");
        } else {
            regex(pattern, report, &at.field("regex"));
        }
    }
}

/// An RE2 pattern as Envoy accepts it: valid and at most 1024 characters.
fn regex(pattern: &str, report: &mut Report, at: &FieldPath) {
    if pattern.len() > MAX_REGEX_LEN {
        report.error(at, format!("regex is longer than {MAX_REGEX_LEN} characters"));
    } else {
        report.check(at, checks::regex(pattern));
    }
}

fn percent(p: &Percent, report: &mut Report, at: &FieldPath) {
    report.check(&at.field("value"), checks::percentage(p.value));
}

fn validate_destination(d: &Destination, report: &mut Report, at: &FieldPath) {
    let host = at.field("host");
    if d.host.is_empty() {
        report.error(&host, "destination host is required");
    } else if d.host == "*" {
        report.error(&host, "destination host \"*\" is not allowed; name a service");
    } else {
        report.check(&host, checks::wildcard_host(&d.host));
    }
    if !d.subset.is_empty() {
        report.check(&at.field("subset"), checks::dns1123_label(&d.subset).map_err(|e| format!("subset name {e}")));
    }
    if let Some(port) = &d.port {
        let here = at.field("port").field("number");
        match port.number {
            Some(n) => report.check(&here, checks::port(n)),
            None => report.error(&here, "port number is required"),
        }
    }
}

/// Weights are relative since Istio 1.15 (each destination gets weight / total), so only a
/// negative weight is an error; one above 100 is allowed but flagged, since it usually means a
/// percentage was mistyped.
fn weight(w: Option<i32>, report: &mut Report, at: &FieldPath) -> i64 {
    let w = w.unwrap_or(0);
    if w < 0 {
        report.error(&at.field("weight"), format!("weight {w} must not be negative"));
        0
    } else {
        if w > 100 {
            report.warning(
                &at.field("weight"),
                format!("weight {w} is above 100; weights are relative, but they usually read as percentages"),
            );
        }
        i64::from(w)
    }
}

fn validate_http_destinations(list: &[HttpRouteDestination], report: &mut Report, at: &FieldPath) {
    let mut total = 0;
    for (i, dest) in list.iter().enumerate() {
        let here = at.index(i);
        match &dest.destination {
            Some(d) => validate_destination(d, report, &here.field("destination")),
            None => report.error(&here.field("destination"), "destination is required"),
        }
        total += weight(dest.weight, report, &here);
        if let Some(headers) = &dest.headers {
            validate_headers(headers, report, &here.field("headers"));
        }
    }
    total_weight(list.len(), total, report, at);
}

fn validate_route_destinations(list: &[RouteDestination], report: &mut Report, at: &FieldPath) {
    let mut total = 0;
    for (i, dest) in list.iter().enumerate() {
        let here = at.index(i);
        match &dest.destination {
            Some(d) => validate_destination(d, report, &here.field("destination")),
            None => report.error(&here.field("destination"), "destination is required"),
        }
        total += weight(dest.weight, report, &here);
    }
    total_weight(list.len(), total, report, at);
}

fn total_weight(count: usize, total: i64, report: &mut Report, at: &FieldPath) {
    if count > 1 && total == 0 {
        report.error(at, "the destination weights add up to 0; give at least one a positive weight");
    }
}

fn validate_redirect(r: &HttpRedirect, report: &mut Report, at: &FieldPath) {
    if r.uri.is_empty()
        && r.prefix_rewrite.is_empty()
        && r.authority.is_empty()
        && r.scheme.is_empty()
        && r.port.is_none()
        && r.derive_port.is_none()
    {
        report.error(at, "redirect must set at least one of uri, prefixRewrite, authority, scheme, port or derivePort");
    }
    if !r.uri.is_empty() && !r.prefix_rewrite.is_empty() {
        report.error(&at.field("prefixRewrite"), "uri and prefixRewrite are mutually exclusive; choose one");
    }
    if r.port.is_some() && r.derive_port.is_some() {
        report.error(&at.field("derivePort"), "port and derivePort are mutually exclusive");
    }
    if let Some(port) = r.port {
        report.check(&at.field("port"), checks::port(port));
    }
    if !r.scheme.is_empty() && r.scheme != "http" && r.scheme != "https" {
        report.error(&at.field("scheme"), format!("redirect scheme {:?} must be http or https", r.scheme));
    }
    if let Some(code) = r.redirect_code
        && code != 0
        && !REDIRECT_CODES.contains(&code)
    {
        report.error(
            &at.field("redirectCode"),
            format!("redirect code {code} is not supported; use 301, 302, 303, 307 or 308"),
        );
    }
}

fn validate_direct_response(d: &HttpDirectResponse, report: &mut Report, at: &FieldPath) {
    if !(200..=599).contains(&d.status) {
        report.error(&at.field("status"), format!("status {} must be in the range 200..599", d.status));
    }
    if let Some(body) = &d.body {
        let size = match body {
            HttpBody::String(s) => s.len(),
            HttpBody::Bytes(b) => b.len() / 4 * 3,
        };
        let here = at.field("body");
        if size > DIRECT_RESPONSE_MAX {
            report.error(&here, "body must be smaller than 1MB");
        } else if size > DIRECT_RESPONSE_WARN {
            report.warning(&here, "body is larger than 100KB, which burdens the control plane");
        }
    }
}

fn validate_rewrite(r: &HttpRewrite, report: &mut Report, at: &FieldPath) {
    if !r.uri.is_empty() && r.uri_regex_rewrite.is_some() {
        report.error(&at.field("uriRegexRewrite"), "uri and uriRegexRewrite are mutually exclusive");
    }
    if r.uri.is_empty() && r.authority.is_empty() && r.uri_regex_rewrite.is_none() {
        report.error(at, "rewrite must set at least one of uri, uriRegexRewrite or authority");
    }
    if let Some(rx) = &r.uri_regex_rewrite {
        let here = at.field("uriRegexRewrite");
        if rx.r#match.is_empty() {
            report.error(&here.field("match"), "uriRegexRewrite needs a match pattern");
        } else {
            regex(&rx.r#match, report, &here.field("match"));
        }
        if rx.rewrite.is_empty() {
            report.error(&here.field("rewrite"), "uriRegexRewrite needs a rewrite");
        }
    }
}

fn validate_retries(r: &HttpRetry, report: &mut Report, at: &FieldPath) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        report.error(&at.field("attempts"), format!("attempts {attempts} must not be negative"));
    }
    if attempts == 0 {
        let disabled = "is not allowed when attempts is 0 (retries disabled)";
        if r.per_try_timeout.is_some() {
            report.error(&at.field("perTryTimeout"), format!("perTryTimeout {disabled}"));
        }
        if !r.retry_on.is_empty() {
            report.error(&at.field("retryOn"), format!("retryOn {disabled}"));
        }
        if r.retry_remote_localities.is_some() {
            report.error(&at.field("retryRemoteLocalities"), format!("retryRemoteLocalities {disabled}"));
        }
    }
    if let Some(d) = &r.per_try_timeout {
        report.check(&at.field("perTryTimeout"), checks::duration(d));
    }
    if let Some(d) = &r.backoff {
        report.check(&at.field("backoff"), checks::duration(d));
    }
    if !r.retry_on.is_empty() {
        for token in r.retry_on.split(',') {
            report.check(&at.field("retryOn"), retry_on_token(token));
        }
    }
}

/// One `retryOn` entry: an Envoy retry condition or an HTTP status code.
fn retry_on_token(token: &str) -> Result<(), String> {
    if RETRY_ON_POLICIES.contains(&token) {
        return Ok(());
    }
    match token.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(()),
        _ => Err(format!("{token:?} is not a retry condition Envoy knows nor an HTTP status code")),
    }
}

fn validate_fault(f: &HttpFaultInjection, report: &mut Report, at: &FieldPath) {
    if f.delay.is_none() && f.abort.is_none() {
        report.error(at, "fault needs a delay, an abort or both");
    }
    if let Some(delay) = &f.delay {
        let here = at.field("delay");
        if let Some(p) = &delay.percentage {
            percent(p, report, &here.field("percentage"));
        }
        if let Some(p) = delay.percent
            && !(0..=100).contains(&p)
        {
            report.error(&here.field("percent"), format!("percent {p} must be in the range 0..100"));
        }
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (Some(_), Some(_)) => report.error(&here, "fixedDelay and exponentialDelay are mutually exclusive"),
            (None, None) => report.error(&here, "delay needs fixedDelay"),
            _ => {}
        }
        if let Some(d) = &delay.fixed_delay {
            report.check(&here.field("fixedDelay"), checks::duration(d));
        }
        if delay.exponential_delay.is_some() {
            report.error(&here.field("exponentialDelay"), "exponentialDelay is not supported; use fixedDelay");
        }
    }
    if let Some(abort) = &f.abort {
        let here = at.field("abort");
        if let Some(p) = &abort.percentage {
            percent(p, report, &here.field("percentage"));
        }
        let kinds = [abort.http_status.is_some(), abort.grpc_status.is_some(), abort.http2_error.is_some()]
            .iter()
            .filter(|set| **set)
            .count();
        if kinds == 0 {
            report.warning(&here, "abort sets none of httpStatus, grpcStatus or http2Error");
        } else if kinds > 1 {
            report.error(&here, "only one of httpStatus, grpcStatus and http2Error may be set");
        }
        if let Some(status) = abort.http_status
            && !(200..=599).contains(&status)
        {
            report.error(&here.field("httpStatus"), format!("HTTP status {status} must be in the range 200..599"));
        }
        if let Some(status) = &abort.grpc_status
            && !GRPC_STATUS_NAMES.contains(&status.as_str())
        {
            report.error(
                &here.field("grpcStatus"),
                format!("{status:?} is not a gRPC status name (e.g. UNAVAILABLE, NOT_FOUND)"),
            );
        }
        if abort.http2_error.is_some() {
            report
                .error(&here.field("http2Error"), "http2Error aborts are not supported; use httpStatus or grpcStatus");
        }
    }
}

fn validate_cors(c: &CorsPolicy, report: &mut Report, at: &FieldPath) {
    if !c.allow_origin.is_empty() {
        report.warning(&at.field("allowOrigin"), "allowOrigin is deprecated; use allowOrigins");
    }
    for (i, origin) in c.allow_origins.iter().enumerate() {
        let here = at.field("allowOrigins").index(i);
        match origin {
            StringMatch::Exact(s) | StringMatch::Prefix(s) if s.is_empty() => {
                report.error(&here, "an allowed origin must not be empty");
            }
            StringMatch::Regex(pattern) => regex(pattern, report, &here.field("regex")),
            _ => {}
        }
    }
    for (i, method) in c.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&method.as_str()) {
            report.error(
                &at.field("allowMethods").index(i),
                format!("{method:?} is not an HTTP method (one of {})", HTTP_METHODS.join(", ")),
            );
        }
    }
    for (field, list) in [("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)] {
        for (i, name) in list.iter().enumerate() {
            if name != "*" {
                report.check(&at.field(field).index(i), match_header_name(name));
            }
        }
    }
    if let Some(max_age) = &c.max_age {
        let here = at.field("maxAge");
        if let Err(e) = checks::duration(max_age) {
            report.error(&here, e);
        } else if max_age.as_nanos() % 1_000_000_000 != 0 {
            report.error(&here, format!("maxAge {max_age} must be a whole number of seconds"));
        }
    }
}

fn validate_headers(h: &Headers, report: &mut Report, at: &FieldPath) {
    if let Some(request) = &h.request {
        header_operations(request, true, report, &at.field("request"));
    }
    if let Some(response) = &h.response {
        header_operations(response, false, report, &at.field("response"));
    }
}

fn header_operations(ops: &HeaderOperations, request: bool, report: &mut Report, at: &FieldPath) {
    for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let here = at.field(field).key(name);
            // The request authority may be set (it becomes a host rewrite).
            if !(request && is_authority_header(name)) {
                report.check(&here, header_op_name(name));
            }
            report.check(&here, header_value(value));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        report.check(&at.field("remove").index(i), header_op_name(name));
    }
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A header an operation may touch: not empty, not `host`, not a pseudo-header.
fn header_op_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("header name must not be empty".into())
    } else if name.eq_ignore_ascii_case("host") {
        Err("the host header cannot be changed here; use rewrite.authority".into())
    } else if name.starts_with(':') {
        Err(format!("pseudo-header {name:?} cannot be changed"))
    } else {
        Ok(())
    }
}

/// A header value: no control characters other than tab.
fn header_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        Err(format!("header value {value:?} contains control characters"))
    } else {
        Ok(())
    }
}

/// The request authority may be rewritten in one place only.
fn authority_set_once(route: &HttpRoute, report: &mut Report, at: &FieldPath) {
    let mut first: Option<FieldPath> =
        route.rewrite.as_ref().filter(|r| !r.authority.is_empty()).map(|_| at.field("rewrite").field("authority"));
    let Some(request) = route.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    let here = at.field("headers").field("request");
    for (field, map) in [("set", &request.set), ("add", &request.add)] {
        for name in map.keys().filter(|n| is_authority_header(n)) {
            let path = here.field(field).key(name);
            match &first {
                Some(earlier) => {
                    report.error(&path, format!("the authority is already set at {earlier}; set it in one place only"))
                }
                None => first = Some(path),
            }
        }
    }
}

fn validate_tls_route(route: &TlsRoute, vs_hosts: &[String], report: &mut Report, at: &FieldPath) {
    if route.r#match.is_empty() {
        report.error(&at.field("match"), "a TLS route needs at least one match with sniHosts");
    }
    for (i, m) in route.r#match.iter().enumerate() {
        let here = at.field("match").index(i);
        if m.sni_hosts.is_empty() {
            report.error(&here.field("sniHosts"), "a TLS match needs at least one SNI host");
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let sni_at = here.field("sniHosts").index(j);
            if sni.parse::<IpAddr>().is_ok() {
                report
                    .warning(&sni_at, format!("SNI host {sni:?} is an IP address, which most TLS clients never send"));
                continue;
            }
            if let Err(e) = checks::wildcard_host(sni) {
                report.error(&sni_at, e);
            } else if !vs_hosts.iter().any(|h| host_within(sni, h)) {
                report.error(
                    &sni_at,
                    format!(
                        "SNI host {sni:?} is not covered by any of the VirtualService hosts [{}]",
                        vs_hosts.join(", ")
                    ),
                );
            }
        }
        subnets(&m.destination_subnets, report, &here.field("destinationSubnets"));
        l4_common(m.port, &m.source_labels, &m.gateways, &m.source_namespace, report, &here);
    }
    if route.route.is_empty() {
        report.error(&at.field("route"), "a TLS route needs at least one destination");
    }
    validate_route_destinations(&route.route, report, &at.field("route"));
}

/// Whether every name `inner` covers is covered by `outer` (wildcards allowed on both).
fn host_within(inner: &str, outer: &str) -> bool {
    let inner = inner.to_ascii_lowercase();
    let outer = outer.to_ascii_lowercase();
    if inner == outer || outer == "*" {
        return true;
    }
    match (inner.strip_prefix('*'), outer.strip_prefix('*')) {
        (None, Some(suffix)) => inner.ends_with(suffix),
        (Some(inner_suffix), Some(suffix)) => inner_suffix.ends_with(suffix),
        _ => false,
    }
}

fn validate_tcp_route(route: &TcpRoute, report: &mut Report, at: &FieldPath) {
    for (i, m) in route.r#match.iter().enumerate() {
        let here = at.field("match").index(i);
        subnets(&m.destination_subnets, report, &here.field("destinationSubnets"));
        if !m.source_subnet.is_empty() {
            report.check(&here.field("sourceSubnet"), checks::ip_or_cidr(&m.source_subnet));
        }
        l4_common(m.port, &m.source_labels, &m.gateways, &m.source_namespace, report, &here);
    }
    if route.route.is_empty() {
        report.error(&at.field("route"), "a TCP route needs at least one destination");
    }
    validate_route_destinations(&route.route, report, &at.field("route"));
}

fn subnets(list: &[String], report: &mut Report, at: &FieldPath) {
    for (i, subnet) in list.iter().enumerate() {
        report.check(&at.index(i), checks::ip_or_cidr(subnet));
    }
}

fn l4_common(
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: &str,
    report: &mut Report,
    at: &FieldPath,
) {
    if let Some(port) = port {
        report.check(&at.field("port"), checks::port(port));
    }
    checks::labels(source_labels, report, &at.field("sourceLabels"));
    gateway_names(gateways, report, &at.field("gateways"));
    if !source_namespace.is_empty() {
        report.check(&at.field("sourceNamespace"), checks::dns1123_label(source_namespace));
    }
}

/// Comparable forms of each HTTP match, without its name (names do not change what matches).
fn http_match_keys(route: &HttpRoute) -> Vec<String> {
    route
        .r#match
        .iter()
        .map(|m| {
            let unnamed = HttpMatchRequest { name: String::new(), ..m.clone() };
            serde_json::to_string(&unnamed).unwrap_or_default()
        })
        .collect()
}

fn json_keys<T: Serialize>(matches: &[T]) -> Vec<String> {
    matches.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect()
}

/// Warns about rules no request can reach: a catch-all rule that is not the last one, and rules
/// whose every match repeats an earlier rule's.
fn unreachable_rules(rules: impl Iterator<Item = (bool, Vec<String>)>, report: &mut Report, at: &FieldPath) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut catch_all: Option<usize> = None;
    for (i, (no_match, keys)) in rules.enumerate() {
        let here = at.index(i);
        if no_match {
            if let Some(earlier) = catch_all {
                report.warning(
                    &here,
                    format!("rule is never used: rule {earlier} has no match and catches everything first"),
                );
            }
            catch_all.get_or_insert(i);
            continue;
        }
        let mut repeated = 0;
        for (j, key) in keys.iter().enumerate() {
            match seen.get(key) {
                Some(&earlier) => {
                    repeated += 1;
                    report.warning(
                        &here.field("match").index(j),
                        format!("match is never used: rule {earlier} has the same match"),
                    );
                }
                None => {
                    seen.insert(key.clone(), i);
                }
            }
        }
        if repeated == keys.len() {
            report.warning(&here, "rule is never used: every match repeats an earlier rule");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_names_and_columns_match_upstream() {
        use kube::CustomResourceExt;
        let crd = VirtualService::crd();
        let names = &crd.spec.names;
        assert_eq!(names.short_names.as_deref(), Some(&["vs".to_owned()][..]));
        assert_eq!(names.categories.as_deref(), Some(&["istio-io".to_owned(), "networking-istio-io".to_owned()][..]));
        let columns: Vec<(String, String)> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.json_path.clone()))
            .collect();
        let want = [("Gateways", ".spec.gateways"), ("Hosts", ".spec.hosts"), ("Age", ".metadata.creationTimestamp")];
        assert_eq!(columns, want.map(|(n, p)| (n.to_owned(), p.to_owned())).to_vec());
    }

    #[test]
    fn retry_on_accepts_envoy_conditions_and_status_codes() {
        for ok in ["5xx", "gateway-error", "retriable-4xx", "503", "unavailable"] {
            assert_eq!(retry_on_token(ok), Ok(()), "{ok}");
        }
        for bad in ["", "5XX", "600", "99", "server-error", " 5xx"] {
            assert!(retry_on_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_overlap_follows_wildcards() {
        let cases = [
            ("a.example.com", "a.example.com", true),
            ("A.example.com", "a.example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.com", "*.example.com", true),
            ("*", "anything", true),
            ("a.example.com", "b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.foo.com", "*.bar.com", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(hosts_overlap(a, b), want, "{a} vs {b}");
            assert_eq!(hosts_overlap(b, a), want, "{b} vs {a}");
        }
    }

    #[test]
    fn sni_hosts_must_sit_within_a_vs_host() {
        assert!(host_within("a.example.com", "*.example.com"));
        assert!(host_within("*.a.example.com", "*.example.com"));
        assert!(host_within("anything", "*"));
        assert!(!host_within("*.example.com", "a.example.com"));
        assert!(!host_within("example.org", "*.example.com"));
    }

    #[test]
    fn gateway_references() {
        let names: Vec<String> = ["mesh", "my-gateway", "istio-system/ingress", "bad/Name", "gw.istio-system", "a/b/c"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut report = Report::default();
        gateway_names(&names, &mut report, &FieldPath::new("g"));
        let paths: Vec<_> = report.items.iter().map(|i| (i.severity, i.path.as_str())).collect();
        use crate::validate::Severity::{Error, Warning};
        assert_eq!(paths, [(Error, "g[3]"), (Warning, "g[4]"), (Error, "g[5]")], "{report:?}");
    }

    #[test]
    fn direct_response_status_range() {
        for (status, ok) in [(199, false), (200, true), (599, true), (600, false)] {
            let mut report = Report::default();
            validate_direct_response(&HttpDirectResponse { status, body: None }, &mut report, &FieldPath::new("d"));
            assert_eq!(!report.has_errors(), ok, "{status}");
        }
    }
}
