//! Admission handling without a network: request bytes, content type and path in; HTTP status
//! and body out (spec §2.7). The HTTPS server ([`crate::server`]) is a thin shell around
//! [`handle`], and the fuzz target under `webhook/fuzz` calls it directly.
//!
//! - `POST /inject[/cluster/<id>/net/<network>]`: an `admission.k8s.io/v1` or `v1beta1`
//!   AdmissionReview of a Pod; the answer uses the same apiVersion, echoes `request.uid`, and
//!   carries a JSONPatch (the diff from the original pod to the injected one) when injected.
//! - `POST /validate`: an AdmissionReview of any Istio object, denied with the messages
//!   `rudder validate` prints (`path: message`), allowed when valid or of a kind Rudder does not
//!   know.
//!
//! Malformed requests get plain-text HTTP errors: 413 over [`MAX_BODY_BYTES`], 400 for an empty
//! body, 415 for a content type other than `application/json`, 400 for non-JSON, an unknown
//! apiVersion, or a review without `request`/`request.object`.

use std::borrow::Cow;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use rudder_config::Validate;
use rudder_config::load::{Problem, load_str};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inject::{InjectError, InjectionContext, JsonOutcome, Outcome, inject_pod_json};

/// Bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// The injection step [`handle_with`] calls; [`inject_pod`](crate::inject::inject_pod) in production, a fake in tests.
pub type InjectFn = fn(&InjectionContext, &Pod, &str) -> Result<Outcome, InjectError>;

/// Which admission endpoint a request path names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Endpoint {
    /// Sidecar injection, with the cluster id and network from the path when present.
    Inject { cluster_id: Option<String>, network: Option<String> },
    /// Validation of Istio configuration.
    #[default]
    Validate,
}

impl Endpoint {
    /// Reads `/inject`, `/inject/<key>/<value>/...` (keys `cluster` and `net`; `--slash--`
    /// stands for `/` in values; other keys are ignored) and `/validate`. `None` for any other
    /// path.
    pub fn from_path(path: &str) -> Option<Self> {
        if path == "/validate" || path == "/validate/" {
            return Some(Endpoint::Validate);
        }
        let rest = path.strip_prefix("/inject")?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        let (mut cluster_id, mut network) = (None, None);
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        for pair in parts.chunks(2) {
            if let [key, value] = pair {
                let value = value.replace("--slash--", "/");
                match *key {
                    "cluster" => cluster_id = Some(value),
                    "net" => network = Some(value),
                    _ => {}
                }
            }
        }
        Some(Endpoint::Inject { cluster_id, network })
    }
}

/// An HTTP answer: status, content type and body, and what it decided (for the metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub audit: Audit,
}

/// What an answered review decided, as the admission metrics count it
/// ([`crate::metrics::Metrics::record`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Audit {
    /// Nothing decided: an HTTP-level error (the status says which), or a DELETE without an
    /// object at `/validate`.
    #[default]
    None,
    /// A pod was given a sidecar (a patch was sent).
    Injected,
    /// Allowed unchanged: injection was not wanted, or the object is not a pod.
    Skipped,
    /// Injection was asked for and failed (the pod is denied).
    InjectFailed,
    /// An object was validated: `reason` is `None` when it passed, else why it failed
    /// (`invalid_resource`, `yaml_decode_error`, `unknown_type`, as istiod names them).
    Validated { resource: Box<Resource>, reason: Option<&'static str> },
}

/// The `request.resource` of a review (group, version and plural resource name), or what the
/// object's `apiVersion` and `kind` give when the review has none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct Resource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

impl Reply {
    fn error(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        Reply { status, content_type: TEXT, body, audit: Audit::None }
    }

    fn review(out: &ReviewOut<'_>, audit: Audit) -> Self {
        match serde_json::to_vec(out) {
            Ok(body) => Reply { status: 200, content_type: JSON, body, audit },
            Err(e) => Reply::error(500, format!("cannot encode the response: {e}")),
        }
    }
}

/// Answers one admission request with [`inject_pod`](crate::inject::inject_pod) as the injector.
pub fn handle(endpoint: &Endpoint, content_type: Option<&str>, body: &[u8], ctx: &InjectionContext) -> Reply {
    handle_inner(endpoint, content_type, body, ctx, Injector::Builtin)
}

/// Answers one admission request, calling `inject` for pods sent to `/inject`.
pub fn handle_with(
    endpoint: &Endpoint,
    content_type: Option<&str>,
    body: &[u8],
    ctx: &InjectionContext,
    inject: InjectFn,
) -> Reply {
    handle_inner(endpoint, content_type, body, ctx, Injector::Custom(inject))
}

/// [`inject_pod`](crate::inject::inject_pod) (through [`inject_pod_json`], which keeps the original pod's JSON for the
/// patch), or another injector.
#[derive(Clone, Copy)]
enum Injector {
    Builtin,
    Custom(InjectFn),
}

fn handle_inner(
    endpoint: &Endpoint,
    content_type: Option<&str>,
    body: &[u8],
    ctx: &InjectionContext,
    inject: Injector,
) -> Reply {
    let review = match parse(content_type, body) {
        Ok(review) => review,
        Err(reply) => return reply,
    };
    let response = match endpoint {
        Endpoint::Inject { cluster_id, network } => {
            let ctx = with_path_params(ctx, cluster_id, network);
            review_inject(&review.request, &ctx, inject)
        }
        Endpoint::Validate => review_validate(&review.request),
    };
    match response {
        Ok((response, audit)) => {
            Reply::review(&ReviewOut { api_version: review.api_version, kind: "AdmissionReview", response }, audit)
        }
        Err(reply) => reply,
    }
}

/// Whether `content_type` is JSON (`application/json`, parameters such as `charset` allowed).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.and_then(|ct| ct.split(';').next()).is_some_and(|media| media.trim().eq_ignore_ascii_case(JSON))
}

/// A review that passed the HTTP-level checks.
#[derive(Debug)]
struct Review {
    api_version: &'static str,
    request: RequestIn,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<RequestIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    resource: Option<Resource>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: ResponseOut,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Serialised as base64, as the API server expects.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<ByteString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct StatusOut {
    code: u16,
    message: String,
}

impl ResponseOut {
    fn allow(uid: &str) -> Self {
        ResponseOut { uid: uid.to_owned(), allowed: true, ..Default::default() }
    }

    fn deny(uid: &str, code: u16, message: String) -> Self {
        ResponseOut {
            uid: uid.to_owned(),
            allowed: false,
            status: Some(StatusOut { code, message }),
            ..Default::default()
        }
    }
}

fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Review, Reply> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Reply::error(413, format!("body larger than {MAX_BODY_BYTES} bytes")));
    }
    if body.is_empty() {
        return Err(Reply::error(400, "no body found"));
    }
    if !is_json(content_type) {
        let got = content_type.unwrap_or("none");
        return Err(Reply::error(415, format!("content type {got} is not supported; use {JSON}")));
    }
    let review: ReviewIn =
        serde_json::from_slice(body).map_err(|e| Reply::error(400, format!("body is not an AdmissionReview: {e}")))?;
    let api_version = match review.api_version.as_deref() {
        Some(V1) => V1,
        Some(V1BETA1) => V1BETA1,
        other => {
            let got = other.unwrap_or("none");
            return Err(Reply::error(400, format!("apiVersion {got} is not supported; use {V1} or {V1BETA1}")));
        }
    };
    if review.kind.as_deref() != Some("AdmissionReview") {
        let got = review.kind.as_deref().unwrap_or("none");
        return Err(Reply::error(400, format!("kind {got} is not AdmissionReview")));
    }
    let request = review.request.ok_or_else(|| Reply::error(400, "AdmissionReview has no request"))?;
    if request.uid.is_empty() {
        return Err(Reply::error(400, "AdmissionReview request has no uid"));
    }
    Ok(Review { api_version, request })
}

fn with_path_params<'a>(
    ctx: &'a InjectionContext,
    cluster_id: &Option<String>,
    network: &Option<String>,
) -> Cow<'a, InjectionContext> {
    if cluster_id.is_none() && network.is_none() {
        return Cow::Borrowed(ctx);
    }
    let mut owned = ctx.clone();
    if cluster_id.is_some() {
        owned.cluster_id.clone_from(cluster_id);
    }
    if network.is_some() {
        owned.network.clone_from(network);
    }
    Cow::Owned(owned)
}

fn object_of(request: &RequestIn) -> Result<&Value, Reply> {
    match &request.object {
        Some(object @ Value::Object(_)) => Ok(object),
        _ => Err(Reply::error(400, "AdmissionReview request has no object")),
    }
}

fn is_pod(request: &RequestIn, object: &Value) -> bool {
    match &request.kind {
        Some(gvk) if !gvk.kind.is_empty() => gvk.group.is_empty() && gvk.kind == "Pod",
        _ => object.get("kind").and_then(Value::as_str) == Some("Pod"),
    }
}

fn review_inject(request: &RequestIn, ctx: &InjectionContext, inject: Injector) -> Result<(ResponseOut, Audit), Reply> {
    let object = object_of(request)?;
    let uid = request.uid.as_str();
    if !is_pod(request, object) {
        return Ok((ResponseOut::allow(uid), Audit::Skipped));
    }
    let failed = |code: u16, message: String| Ok((ResponseOut::deny(uid, code, message), Audit::InjectFailed));
    let pod = match Pod::deserialize(object) {
        Ok(pod) => pod,
        Err(e) => return failed(400, format!("the object is not a valid Pod: {e}")),
    };
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .or(request.namespace.as_deref())
        .unwrap_or("default");
    let denied = |e: InjectError| failed(400, format!("sidecar injection failed: {e}"));
    let skipped = || Ok((ResponseOut::allow(uid), Audit::Skipped));
    let patch = match inject {
        Injector::Builtin => match inject_pod_json(ctx, &pod, namespace) {
            Ok(JsonOutcome::Skipped { .. }) => return skipped(),
            Ok(JsonOutcome::Injected { original, injected }) => patch_from_json(original, &injected),
            Err(e) => return denied(e),
        },
        Injector::Custom(inject) => match inject(ctx, &pod, namespace) {
            Ok(Outcome::Skipped { .. }) => return skipped(),
            Ok(Outcome::Injected(injected)) => patch_between(&pod, &injected),
            Err(e) => return denied(e),
        },
    };
    match patch {
        Ok(patch) => Ok((
            ResponseOut { patch_type: Some("JSONPatch"), patch: Some(ByteString(patch)), ..ResponseOut::allow(uid) },
            Audit::Injected,
        )),
        Err(e) => failed(500, format!("cannot encode the patch: {e}")),
    }
}

/// The RFC 6902 patch, as JSON bytes, from `original` to `injected`. Both go through the same
/// typed encoding, so fields the model does not know (which the patch must leave alone) never
/// show up as removals; `managedFields` are dropped from both first.
pub fn patch_between(original: &Pod, injected: &Pod) -> Result<Vec<u8>, serde_json::Error> {
    patch_from_json(serde_json::to_value(original)?, injected)
}

/// [`patch_between`] with the original already encoded (`serde_json::to_value` of the pod).
fn patch_from_json(mut before: Value, injected: &Pod) -> Result<Vec<u8>, serde_json::Error> {
    without_managed_fields(&mut before);
    let mut after = serde_json::to_value(injected)?;
    without_managed_fields(&mut after);
    Ok(diff_json(&before, &after))
}

fn without_managed_fields(value: &mut Value) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

/// The RFC 6902 patch from `before` to `after`, written straight as JSON: the same operations,
/// in the same order and encoding, as `serde_json::to_vec(&json_patch::diff(before, after))`,
/// without building (and cloning values into) the operation list first.
pub fn diff_json(before: &Value, after: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    let mut path = String::new();
    diff_into(before, after, &mut path, &mut out);
    out.push(b']');
    out
}

fn diff_into(left: &Value, right: &Value, path: &mut String, out: &mut Vec<u8>) {
    match (left, right) {
        (Value::Object(left), Value::Object(right)) => {
            for (key, right_value) in right {
                let len = push_token(path, key);
                match left.get(key) {
                    Some(left_value) => diff_into(left_value, right_value, path, out),
                    None => write_op(out, "add", path, Some(right_value)),
                }
                path.truncate(len);
            }
            for key in left.keys().filter(|k| !right.contains_key(*k)) {
                let len = push_token(path, key);
                write_op(out, "remove", path, None);
                path.truncate(len);
            }
        }
        (Value::Array(left), Value::Array(right)) => {
            let mut shift = 0usize;
            for idx in 0..left.len().max(right.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&(idx - shift).to_string());
                match (left.get(idx), right.get(idx)) {
                    (Some(l), Some(r)) => diff_into(l, r, path, out),
                    (Some(_), None) => {
                        shift += 1;
                        write_op(out, "remove", path, None);
                    }
                    (None, Some(r)) => write_op(out, "add", path, Some(r)),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        _ if left == right => {}
        _ => write_op(out, "replace", path, Some(right)),
    }
}

/// Appends `/token` (JSON-pointer escaped); returns the length to truncate back to.
fn push_token(path: &mut String, token: &str) -> usize {
    let len = path.len();
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
    len
}

fn write_op(out: &mut Vec<u8>, op: &str, path: &str, value: Option<&Value>) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"path\":");
    // Writing a string or a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, path);
    if let Some(value) = value {
        out.extend_from_slice(b",\"value\":");
        let _ = serde_json::to_writer(&mut *out, value);
    }
    out.push(b'}');
}

fn review_validate(request: &RequestIn) -> Result<(ResponseOut, Audit), Reply> {
    let uid = request.uid.as_str();
    if request.operation.as_deref() == Some("DELETE") && request.object.as_ref().is_none_or(Value::is_null) {
        return Ok((ResponseOut::allow(uid), Audit::None));
    }
    let object = object_of(request)?;
    let verdict = validate_object(object);
    let resource = Box::new(request.resource.clone().unwrap_or_else(|| resource_of(object)));
    let mut response = if verdict.errors.is_empty() {
        ResponseOut::allow(uid)
    } else {
        ResponseOut::deny(uid, 400, verdict.errors.join("; "))
    };
    response.warnings = verdict.warnings;
    Ok((response, Audit::Validated { resource, reason: verdict.reason }))
}

/// The resource an object is of, from its `apiVersion` and `kind` (lower-case plural kind, as
/// Istio's resources are named): for reviews without `request.resource`.
fn resource_of(object: &Value) -> Resource {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let resource = match kind.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ if kind.is_empty() => kind,
        _ => format!("{kind}s"),
    };
    Resource { group: group.to_owned(), version: version.to_owned(), resource }
}

/// What validation found in one object: `path: message` lines, and why it failed in
/// istiod's words (`galley_validation_failed`'s `reason`) when it did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub reason: Option<&'static str>,
}

/// The object could not be decoded (`galley_validation_failed` reason, as istiod's).
pub const REASON_DECODE: &str = "yaml_decode_error";
/// An Istio kind at a version Rudder does not serve.
pub const REASON_UNKNOWN_TYPE: &str = "unknown_type";
/// The object decoded and broke a validation rule.
pub const REASON_INVALID: &str = "invalid_resource";

/// Decodes and validates one Istio object given as JSON, as `rudder validate` does. Objects of
/// kinds Rudder does not know pass.
pub fn validate_object(object: &Value) -> Verdict {
    let mut verdict = Verdict::default();
    let text = match serde_json::to_string(object) {
        Ok(text) => text,
        Err(e) => {
            verdict.errors.push(format!("cannot read the object: {e}"));
            verdict.reason = Some(REASON_DECODE);
            return verdict;
        }
    };
    let loads = match load_str("<admission>", &text) {
        Ok(loads) => loads,
        Err(e) => {
            verdict.errors.push(e.to_string());
            verdict.reason = Some(REASON_DECODE);
            return verdict;
        }
    };
    for problem in &loads.problems {
        if let Some(message) = problem_message(problem) {
            verdict.errors.push(message);
            let reason =
                if matches!(problem, Problem::UnknownVersion { .. }) { REASON_UNKNOWN_TYPE } else { REASON_DECODE };
            verdict.reason.get_or_insert(reason);
        }
    }
    for loaded in &loads.objects {
        for item in &loaded.object.report().items {
            let line =
                if item.path.is_empty() { item.message.clone() } else { format!("{}: {}", item.path, item.message) };
            match item.severity {
                rudder_config::Severity::Error => {
                    verdict.errors.push(line);
                    verdict.reason.get_or_insert(REASON_INVALID);
                }
                rudder_config::Severity::Warning => verdict.warnings.push(line),
            }
        }
    }
    verdict
}

/// A load problem without the file/document prefix `rudder validate` adds.
fn problem_message(problem: &Problem) -> Option<String> {
    match problem {
        Problem::UnknownKind { .. } => None,
        Problem::Decode { error, .. } => Some(error.to_string()),
        Problem::NotAnObject { message, .. } => Some(message.clone()),
        Problem::UnknownVersion { source, id, .. } => {
            let full = problem.to_string();
            let prefix = format!("{source} {id}: ");
            Some(full.strip_prefix(&prefix).map(str::to_owned).unwrap_or(full))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::inject_pod;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn inject() -> Endpoint {
        Endpoint::Inject { cluster_id: None, network: None }
    }

    fn call(endpoint: &Endpoint, body: &Value, f: InjectFn) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("encode");
        let reply = handle_with(endpoint, Some(JSON), &bytes, &InjectionContext::default(), f);
        let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        (reply.status, value)
    }

    fn review(version: &str, object: Value) -> Value {
        json!({"apiVersion": version, "kind": "AdmissionReview",
               "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                           "namespace": "apps", "operation": "CREATE", "object": object}})
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "web-", "labels": {"app": "web"},
                            "managedFields": [{"manager": "kubectl"}]},
               "spec": {"containers": [{"name": "app", "image": "nginx"}]}})
    }

    fn add_sidecar(ctx: &InjectionContext, pod: &Pod, ns: &str) -> Result<Outcome, InjectError> {
        assert_eq!(ns, "apps");
        add_sidecar_anywhere(ctx, pod, ns)
    }

    fn add_sidecar_anywhere(_: &InjectionContext, pod: &Pod, _: &str) -> Result<Outcome, InjectError> {
        let mut pod = pod.clone();
        pod.metadata.annotations.get_or_insert_default().insert("sidecar.istio.io/status".into(), "{}".into());
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers
                .push(k8s_openapi::api::core::v1::Container { name: "istio-proxy".into(), ..Default::default() });
        }
        Ok(Outcome::Injected(Box::new(pod)))
    }

    fn skip(_: &InjectionContext, _: &Pod, _: &str) -> Result<Outcome, InjectError> {
        Ok(Outcome::Skipped { reason: "policy".into() })
    }

    fn bad_annotation(_: &InjectionContext, _: &Pod, _: &str) -> Result<Outcome, InjectError> {
        Err(InjectError::InvalidAnnotation {
            annotation: "sidecar.istio.io/proxyCPU".into(),
            message: "not a quantity".into(),
        })
    }

    fn decode_patch(response: &Value) -> Value {
        let b64 = response["response"]["patch"].as_str().expect("patch is a base64 string");
        let bytes: ByteString = serde_json::from_value(json!(b64)).expect("base64");
        serde_json::from_slice(&bytes.0).expect("patch json")
    }

    #[test]
    fn injected_pod_gets_a_patch_that_yields_the_injected_pod() {
        for version in [V1, V1BETA1] {
            let (status, out) = call(&inject(), &review(version, pod()), add_sidecar);
            assert_eq!(status, 200);
            assert_eq!(out["apiVersion"], version);
            assert_eq!(out["kind"], "AdmissionReview");
            assert_eq!(out["response"]["uid"], "u-1");
            assert_eq!(out["response"]["allowed"], true);
            assert_eq!(out["response"]["patchType"], "JSONPatch");
            let patch: json_patch::Patch = serde_json::from_value(decode_patch(&out)).expect("patch");
            let mut doc = pod();
            json_patch::patch(&mut doc, &patch).expect("applies to the original");
            assert_eq!(doc["spec"]["containers"][1]["name"], "istio-proxy");
            assert_eq!(doc["metadata"]["annotations"]["sidecar.istio.io/status"], "{}");
            assert_eq!(doc["metadata"]["managedFields"][0]["manager"], "kubectl", "managedFields untouched");
        }
    }

    #[test]
    fn skipped_pod_is_allowed_without_patch() {
        let (status, out) = call(&inject(), &review(V1, pod()), skip);
        assert_eq!(status, 200);
        assert_eq!(out["response"], json!({"uid": "u-1", "allowed": true}));
    }

    #[test]
    fn injection_error_denies_with_the_message() {
        let (status, out) = call(&inject(), &review(V1, pod()), bad_annotation);
        assert_eq!(status, 200);
        assert_eq!(out["response"]["allowed"], false);
        let message = out["response"]["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("invalid annotation sidecar.istio.io/proxyCPU: not a quantity"), "{message}");
    }

    #[test]
    fn other_kinds_are_allowed_without_patch() {
        let mut body = review(V1, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}));
        body["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
        let (status, out) = call(&inject(), &body, add_sidecar);
        assert_eq!((status, out["response"].clone()), (200, json!({"uid": "u-1", "allowed": true})));
    }

    #[test]
    fn malformed_requests_get_http_errors() {
        let ctx = InjectionContext::default();
        let ep = inject();
        let status = |ct: Option<&str>, body: &[u8]| handle_with(&ep, ct, body, &ctx, add_sidecar).status;
        assert_eq!(status(Some(JSON), b""), 400);
        assert_eq!(status(Some(JSON), b"{not json"), 400);
        assert_eq!(status(Some(JSON), b"[1,2]"), 400);
        assert_eq!(status(Some("text/yaml"), b"{}"), 415);
        assert_eq!(status(None, b"{}"), 415);
        assert_eq!(
            status(
                Some("application/json; charset=utf-8"),
                br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview"}"#
            ),
            400
        );
        assert_eq!(status(Some(JSON), br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#), 400);
        assert_eq!(
            status(
                Some(JSON),
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#
            ),
            400
        );
        assert_eq!(status(Some(JSON), &vec![b' '; MAX_BODY_BYTES + 1]), 413);
    }

    #[test]
    fn paths() {
        assert_eq!(Endpoint::from_path("/inject"), Some(inject()));
        assert_eq!(
            Endpoint::from_path("/inject/cluster/c--slash--1/net/n1"),
            Some(Endpoint::Inject { cluster_id: Some("c/1".into()), network: Some("n1".into()) })
        );
        assert_eq!(Endpoint::from_path("/validate"), Some(Endpoint::Validate));
        assert_eq!(Endpoint::from_path("/injected"), None);
        assert_eq!(Endpoint::from_path("/"), None);
    }

    fn virtual_service(weight: i64) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "r", "namespace": "apps"},
               "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": weight}]}]}})
    }

    #[test]
    fn validate_denies_broken_and_allows_valid_objects() {
        let mut body = review(V1, virtual_service(-1));
        body["request"]["kind"] = json!({"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"});
        let (status, out) = call(&Endpoint::Validate, &body, skip);
        assert_eq!(status, 200);
        assert_eq!(out["response"]["allowed"], false);
        let message = out["response"]["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("spec.http[0].route[0].weight"), "{message}");

        body["request"]["object"] = virtual_service(100);
        let (_, out) = call(&Endpoint::Validate, &body, skip);
        assert_eq!(out["response"]["allowed"], true, "{out}");

        body["request"]["object"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let (_, out) = call(&Endpoint::Validate, &body, skip);
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn truncated_or_corrupted_reviews_never_panic() {
        let valid = serde_json::to_vec(&review(V1, pod())).expect("encode");
        let ctx = InjectionContext::default();
        let endpoints = [inject(), Endpoint::Validate];
        let check = |body: &[u8]| {
            for ep in &endpoints {
                for f in [add_sidecar_anywhere as InjectFn, inject_pod] {
                    let status = handle_with(ep, Some(JSON), body, &ctx, f).status;
                    assert!(matches!(status, 200 | 400), "status {status}");
                }
            }
        };
        for len in 0..valid.len() {
            check(&valid[..len]);
        }
        for at in (0..valid.len()).step_by(3) {
            for byte in [b'"', b'{', b']', b'0', 0xff] {
                let mut body = valid.clone();
                body[at] = byte;
                check(&body);
            }
        }
    }

    #[test]
    fn diff_json_writes_what_json_patch_would() {
        let pairs = [
            (json!({"a": 1, "b": [1, 2, 3], "c": {"x": "y"}}), json!({"a": 2, "b": [1], "d": null, "c": {}})),
            (json!({"b": [1]}), json!({"b": [0, {"k": [true]}, "s"], "a/b~c": "\"q\"\u{1}"})),
            (json!({"x/~": {"~1": 1}}), json!({"x/~": {"~1": 2, "é": [null]}})),
            (json!([1, 2, 3, 4]), json!([1, 5])),
            (json!({"same": {"deep": [1, {"a": 1}]}}), json!({"same": {"deep": [1, {"a": 1}]}})),
            (json!("a"), json!(["a"])),
            (json!(null), json!(1.5)),
        ];
        for (before, after) in pairs {
            let expected = serde_json::to_vec(&json_patch::diff(&before, &after)).expect("encode");
            assert_eq!(String::from_utf8(diff_json(&before, &after)), String::from_utf8(expected));
        }
    }

    #[test]
    fn builtin_injector_answers_as_inject_pod_does() {
        let mut object = pod();
        object["metadata"]["annotations"] = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8080"});
        object["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}});
        for object in [pod(), object] {
            let bytes = serde_json::to_vec(&review(V1, object)).expect("encode");
            let ctx = InjectionContext::offline_defaults();
            let fast = handle(&inject(), Some(JSON), &bytes, &ctx);
            let plain = handle_with(&inject(), Some(JSON), &bytes, &ctx, inject_pod);
            assert_eq!(String::from_utf8(fast.body), String::from_utf8(plain.body));
        }
    }
}
