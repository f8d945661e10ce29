//! The modules of WasmPlugins, read by discovery so proxies get them inline and never reach
//! out themselves (Istio's agent fetches them next to each proxy instead).
//!
//! [`follow`] sits between a registry and the server, like the JWKS follower: every snapshot is
//! passed on with [`Snapshot::wasm_modules`] filled from a cache keyed by URL and checksum
//! ([`wasm_module_key`]). Sources:
//! - `file://` (or a bare absolute path): a file on discovery's host, read at once;
//! - `https://`, `http://`: fetched (platform trust roots, redirects followed, bounded time);
//! - `oci://` (and URLs without a scheme): pulled from an OCI registry over the distribution
//!   API — the manifest (an image index's first manifest), then the layer holding the module,
//!   which must be a plain Wasm layer (`application/vnd.module.wasm.content.layer.v1+wasm`, or
//!   the only layer); anonymous bearer tokens are asked for when the registry wants one.
//!
//! `sha256` is checked when given: against the module, or for OCI against the image manifest's
//! digest or the module. A module that cannot be had (unreachable, not Wasm, bad checksum,
//! unsupported scheme) is recorded as failed with the field at fault; the follower logs one
//! warning naming each WasmPlugin that uses it and tries again every `retry`, and translation
//! leaves the plugin out of its proxies meanwhile: nothing else is held back. Network fetches
//! run in the background, so a slow registry delays only its own plugins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::model::{Snapshot, WasmModule, wasm_module_key};
use crate::translate::wasm::plugin_id;

/// How soon a failed module is tried again.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(30);
/// A module (or manifest) larger than this is refused.
pub const MAX_MODULE: usize = 64 * 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;
/// The media type of a plain Wasm layer (the OCI Wasm artifact format).
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How modules are fetched.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Registries (`host` or `host:port`, `*` for all) pulled over plain HTTP (Istio's
    /// `WASM_INSECURE_REGISTRIES`).
    pub insecure_registries: Vec<String>,
    /// Roots trusted besides the platform's (tests, private CAs).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// How soon a failed module is tried again.
    pub retry: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self { insecure_registries: Vec::new(), extra_roots: Vec::new(), retry: DEFAULT_RETRY }
    }
}

/// One module to read: where from, its checksum, and the plugins that use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub scheme: String,
    /// The URL without its scheme.
    pub location: String,
    pub sha256: String,
    /// `<namespace>/<name>` of every plugin using it.
    pub plugins: Vec<String>,
}

/// The modules the snapshot's WasmPlugins need, by [`wasm_module_key`].
pub fn wanted(snapshot: &Snapshot) -> BTreeMap<String, Wanted> {
    let mut out: BTreeMap<String, Wanted> = BTreeMap::new();
    for plugin in &snapshot.wasm_plugins {
        let (scheme, location) = plugin.spec.url_parts();
        out.entry(wasm_module_key(plugin))
            .or_insert_with(|| Wanted {
                scheme: scheme.to_owned(),
                location: location.to_owned(),
                sha256: plugin.spec.sha256.clone(),
                plugins: Vec::new(),
            })
            .plugins
            .push(plugin_id(plugin));
    }
    out
}

/// One line per WasmPlugin whose module failed: `WasmPlugin <ns>/<name>: spec.<field>: <why>`.
pub fn problems(snapshot: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for plugin in &snapshot.wasm_plugins {
        if let Some(WasmModule::Failed { field, reason }) =
            snapshot.wasm_modules.get(&wasm_module_key(plugin)).map(AsRef::as_ref)
        {
            out.push(format!("WasmPlugin {}: spec.{field}: {reason}", plugin_id(plugin)));
        }
    }
    out
}

/// Passes every snapshot of `upstream` on to `downstream` with the modules of its WasmPlugins,
/// until `upstream` closes or `stop` completes.
pub async fn follow(
    mut upstream: watch::Receiver<Arc<Snapshot>>,
    downstream: watch::Sender<Arc<Snapshot>>,
    options: FetchOptions,
    stop: impl std::future::Future<Output = ()>,
) {
    let fetcher = match Fetcher::new(&options) {
        Ok(fetcher) => Some(Arc::new(fetcher)),
        Err(error) => {
            tracing::error!(%error, "no HTTPS client for WasmPlugin modules; only file modules can be read");
            None
        }
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, WasmModule)>();
    let mut cache: BTreeMap<String, Arc<WasmModule>> = BTreeMap::new();
    let mut retry_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut published: Option<BTreeMap<String, Arc<WasmModule>>> = None;
    let mut last: Option<Arc<Snapshot>> = None;
    tokio::pin!(stop);
    loop {
        let snapshot = upstream.borrow_and_update().clone();
        let wants = wanted(&snapshot);
        cache.retain(|key, _| wants.contains_key(key));
        retry_at.retain(|key, _| wants.contains_key(key));
        let now = Instant::now();
        for (key, want) in &wants {
            let due = match cache.get(key).map(AsRef::as_ref) {
                None => true,
                Some(WasmModule::Ready(_)) => false,
                Some(WasmModule::Failed { .. }) => retry_at.get(key).is_none_or(|at| *at <= now),
            };
            if !due || in_flight.contains(key) {
                continue;
            }
            match (want.scheme.as_str(), &fetcher) {
                ("file", _) => {
                    let outcome = read_file(want);
                    record(&mut cache, &mut retry_at, key, want, outcome, options.retry);
                }
                ("http" | "https" | "oci", Some(fetcher)) => {
                    in_flight.insert(key.clone());
                    let (fetcher, want, key, done) = (fetcher.clone(), want.clone(), key.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        let outcome = fetcher.fetch(&want).await;
                        let _ = done.send((key, outcome));
                    });
                }
                ("http" | "https" | "oci", None) => {
                    let outcome = failed("url", "discovery has no HTTPS client (see its startup log)");
                    record(&mut cache, &mut retry_at, key, want, outcome, options.retry);
                }
                (scheme, _) => {
                    let outcome = failed("url", format!("unsupported URL scheme {scheme:?}"));
                    record(&mut cache, &mut retry_at, key, want, outcome, options.retry);
                }
            }
        }
        let modules: BTreeMap<String, Arc<WasmModule>> = cache.clone();
        let new_snapshot = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &snapshot));
        if new_snapshot || published.as_ref() != Some(&modules) {
            let passed = if modules.is_empty() {
                snapshot.clone()
            } else {
                let mut with_modules = snapshot.as_ref().clone();
                with_modules.wasm_modules = modules.clone();
                Arc::new(with_modules)
            };
            if !super::pass_on(&downstream, passed) {
                return;
            }
            published = Some(modules);
            last = Some(snapshot);
        }
        let next_retry = retry_at.values().min().copied();
        let wake = async {
            match next_retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = upstream.changed() => if changed.is_err() { return },
            Some((key, outcome)) = done_rx.recv() => {
                in_flight.remove(&key);
                let wants = wanted(&upstream.borrow());
                if let Some(want) = wants.get(&key) {
                    record(&mut cache, &mut retry_at, &key, want, outcome, options.retry);
                }
            }
            () = wake => {}
            () = &mut stop => return,
        }
    }
}

/// Stores one outcome, logging what changed: a failure once per plugin and reason.
fn record(
    cache: &mut BTreeMap<String, Arc<WasmModule>>,
    retry_at: &mut BTreeMap<String, Instant>,
    key: &str,
    want: &Wanted,
    outcome: WasmModule,
    retry: Duration,
) {
    let url = format!("{}://{}", want.scheme, want.location);
    match &outcome {
        WasmModule::Ready(bytes) => {
            tracing::info!(%url, bytes = bytes.len(), plugins = ?want.plugins, "WasmPlugin module read");
            retry_at.remove(key);
        }
        WasmModule::Failed { field, reason } => {
            let repeated = cache.get(key).is_some_and(|before| **before == outcome);
            for plugin in &want.plugins {
                if repeated {
                    tracing::debug!("WasmPlugin {plugin}: spec.{field}: {reason} (still)");
                } else {
                    tracing::warn!(
                        "WasmPlugin {plugin}: spec.{field}: {reason}; the plugin is left out of the proxies it selects \
                         (the rest of their config is unaffected) and is tried again every {retry:?}"
                    );
                }
            }
            retry_at.insert(key.to_owned(), Instant::now() + retry);
        }
    }
    cache.insert(key.to_owned(), Arc::new(outcome));
}

fn failed(field: &'static str, reason: impl Into<String>) -> WasmModule {
    WasmModule::Failed { field, reason: reason.into() }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The module checks every source shares: Wasm magic, then the checksum.
fn checked(bytes: Vec<u8>, want: &Wanted, other_digest: Option<&str>) -> WasmModule {
    if !bytes.starts_with(b"\0asm") {
        return failed("url", "the content is not a WebAssembly module (no \\0asm header)");
    }
    if !want.sha256.is_empty() {
        let actual = sha256_hex(&bytes);
        if actual != want.sha256 && other_digest != Some(want.sha256.as_str()) {
            let what = if other_digest.is_some() { "image manifest and module" } else { "module" };
            return failed("sha256", format!("checksum mismatch: want {}, the {what} has {actual}", want.sha256));
        }
    }
    WasmModule::Ready(Arc::new(bytes))
}

fn read_file(want: &Wanted) -> WasmModule {
    let path = std::path::Path::new(&want.location);
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_MODULE as u64 => {
            return failed("url", format!("{} is larger than {MAX_MODULE} bytes", path.display()));
        }
        Ok(_) => {}
        Err(e) => return failed("url", format!("cannot read {}: {e}", path.display())),
    }
    match std::fs::read(path) {
        Ok(bytes) => checked(bytes, want, None),
        Err(e) => failed("url", format!("cannot read {}: {e}", path.display())),
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<hyper::body::Bytes>,
>;

/// HTTP(S) and OCI fetches.
#[derive(Debug)]
struct Fetcher {
    client: HttpsClient,
    insecure: Vec<String>,
}

/// A fetched response: status, headers, body.
struct Fetched {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Fetcher {
    fn new(options: &FetchOptions) -> Result<Self, String> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = if options.extra_roots.is_empty() {
            builder.with_platform_verifier().map_err(|e| e.to_string())?
        } else {
            let verifier =
                rustls_platform_verifier::Verifier::new_with_extra_roots(options.extra_roots.clone(), provider)
                    .map_err(|e| e.to_string())?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        }
        .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            insecure: options.insecure_registries.clone(),
        })
    }

    async fn fetch(&self, want: &Wanted) -> WasmModule {
        let outcome = match want.scheme.as_str() {
            "oci" => self.pull(want).await,
            scheme => {
                let url = format!("{scheme}://{}", want.location);
                match self.get(&url, &[]).await {
                    Ok(got) if got.status.is_success() => Ok(checked(got.body, want, None)),
                    Ok(got) => Err(format!("GET {url}: HTTP {}", got.status)),
                    Err(e) => Err(format!("GET {url}: {e}")),
                }
            }
        };
        outcome.unwrap_or_else(|reason| failed("url", reason))
    }

    /// GET with redirects followed, the body read within the size limit.
    async fn get(&self, url: &str, headers: &[(&str, String)]) -> Result<Fetched, String> {
        let mut url = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = http::Request::get(&url);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let request = request.body(http_body_util::Empty::new()).map_err(|e| format!("bad URL: {e}"))?;
            let deadline = Instant::now() + FETCH_TIMEOUT;
            let response = tokio::time::timeout_at(deadline, self.client.request(request))
                .await
                .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(http::header::LOCATION).and_then(|l| l.to_str().ok())
            {
                url = resolve(&url, location);
                continue;
            }
            let headers = response.headers().clone();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| format!("body not read within {FETCH_TIMEOUT:?}"))?
            {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                    if bytes.len() > MAX_MODULE {
                        return Err(format!("larger than {MAX_MODULE} bytes"));
                    }
                }
            }
            return Ok(Fetched { status, headers, body: bytes });
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    /// Pulls an OCI image: manifest (through an index if need be), then the Wasm layer.
    async fn pull(&self, want: &Wanted) -> Result<WasmModule, String> {
        let image = OciRef::parse(&want.location)?;
        let scheme = if self.insecure.iter().any(|h| h == "*" || *h == image.registry) { "http" } else { "https" };
        let base = format!("{scheme}://{}/v2/{}", image.registry, image.repository);
        let mut token: Option<String> = None;
        let (mut manifest, mut digest) =
            self.registry_get(&format!("{base}/manifests/{}", image.reference), &mut token, true).await?;
        let mut parsed: serde_json::Value =
            serde_json::from_slice(&manifest).map_err(|e| format!("image manifest is not JSON: {e}"))?;
        if let Some(first) = parsed["manifests"].as_array().and_then(|m| m.first()) {
            // An image index: its first manifest.
            let inner = first["digest"].as_str().ok_or("image index entry has no digest")?.to_owned();
            (manifest, digest) = self.registry_get(&format!("{base}/manifests/{inner}"), &mut token, true).await?;
            parsed = serde_json::from_slice(&manifest).map_err(|e| format!("image manifest is not JSON: {e}"))?;
        }
        if let Some(expected) = image.reference.strip_prefix("sha256:")
            && digest != expected
        {
            return Err(format!("the registry sent a manifest of digest sha256:{digest}, not {}", image.reference));
        }
        let layers = parsed["layers"].as_array().cloned().unwrap_or_default();
        let media = |l: &serde_json::Value| l["mediaType"].as_str().unwrap_or_default().to_owned();
        let layer = layers
            .iter()
            .find(|l| media(l) == WASM_LAYER)
            .or_else(|| (layers.len() == 1 && media(&layers[0]).contains("wasm")).then(|| &layers[0]))
            .ok_or_else(|| {
                let kinds: Vec<String> = layers.iter().map(media).collect();
                format!(
                    "image has no plain Wasm layer ({WASM_LAYER}); its layers are {kinds:?} (Docker-style tar.gz \
                     images are not supported: push the module as an OCI Wasm artifact)"
                )
            })?;
        let layer_digest = layer["digest"].as_str().ok_or("Wasm layer has no digest")?;
        let (module, module_digest) =
            self.registry_get(&format!("{base}/blobs/{layer_digest}"), &mut token, false).await?;
        if layer_digest.strip_prefix("sha256:") != Some(module_digest.as_str()) {
            return Err(format!("layer {layer_digest} arrived with digest sha256:{module_digest}"));
        }
        Ok(checked(module, want, Some(&digest)))
    }

    /// A registry GET, asking for an anonymous bearer token when the registry wants one.
    /// Returns the body and its SHA-256.
    async fn registry_get(
        &self,
        url: &str,
        token: &mut Option<String>,
        manifest: bool,
    ) -> Result<(Vec<u8>, String), String> {
        for _ in 0..2 {
            let mut headers = Vec::new();
            if manifest {
                headers.push(("accept", MANIFEST_TYPES.to_owned()));
            }
            if let Some(token) = token.as_ref() {
                headers.push(("authorization", format!("Bearer {token}")));
            }
            let got = self.get(url, &headers).await.map_err(|e| format!("GET {url}: {e}"))?;
            if got.status == http::StatusCode::UNAUTHORIZED && token.is_none() {
                let challenge = got
                    .headers
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("GET {url}: HTTP 401 without a bearer challenge"))?;
                *token = Some(self.anonymous_token(challenge).await?);
                continue;
            }
            if !got.status.is_success() {
                return Err(format!("GET {url}: HTTP {}", got.status));
            }
            let digest = sha256_hex(&got.body);
            return Ok((got.body, digest));
        }
        Err(format!("GET {url}: HTTP 401 (anonymous access refused; registry credentials are not supported)"))
    }

    async fn anonymous_token(&self, challenge: &str) -> Result<String, String> {
        let params = challenge
            .strip_prefix("Bearer ")
            .ok_or_else(|| format!("unsupported authentication challenge {challenge:?}"))?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_params(params) {
            let Some((key, value)) = part.split_once('=') else { continue };
            let value = value.trim_matches('"');
            match key.trim() {
                "realm" => realm = Some(value.to_owned()),
                key @ ("service" | "scope") => query.push(format!("{key}={}", encode_query(value))),
                _ => {}
            }
        }
        let realm = realm.ok_or("bearer challenge without a realm")?;
        let url = if query.is_empty() { realm } else { format!("{realm}?{}", query.join("&")) };
        let got = self.get(&url, &[]).await.map_err(|e| format!("token {url}: {e}"))?;
        if !got.status.is_success() {
            return Err(format!("token {url}: HTTP {}", got.status));
        }
        let json: serde_json::Value = serde_json::from_slice(&got.body).map_err(|e| format!("token {url}: {e}"))?;
        json["token"]
            .as_str()
            .or_else(|| json["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("token {url}: no token in the answer"))
    }
}

/// `a="x,y",b="z"` split at the commas outside quotes.
fn split_params(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A redirect target: absolute, or a path on the same origin.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[origin_end..].find('/').map_or(base.len(), |i| origin_end + i);
    format!(
        "{}{}",
        &base[..host_end],
        if location.starts_with('/') { location.to_owned() } else { format!("/{location}") }
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `registry[:port]/repository[:tag|@sha256:digest]`.
#[derive(Debug, PartialEq, Eq)]
struct OciRef {
    registry: String,
    repository: String,
    /// A tag, or `sha256:<hex>`.
    reference: String,
}

impl OciRef {
    fn parse(location: &str) -> Result<Self, String> {
        let (registry, path) =
            location.split_once('/').ok_or_else(|| format!("OCI reference {location:?} names no repository"))?;
        let (repository, reference) = match path.split_once('@') {
            Some((repository, digest)) => (repository, digest.to_owned()),
            None => {
                let last = path.rfind('/').map_or(0, |i| i + 1);
                match path[last..].rfind(':') {
                    Some(colon) => (&path[..last + colon], path[last + colon + 1..].to_owned()),
                    None => (path, "latest".to_owned()),
                }
            }
        };
        if registry.is_empty() || repository.is_empty() || reference.is_empty() {
            return Err(format!("OCI reference {location:?} is incomplete (want registry/repository[:tag])"));
        }
        Ok(Self { registry: registry.to_owned(), repository: repository.to_owned(), reference })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn oci_references() {
        let r = OciRef::parse("ghcr.io/org/plugin:1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("ghcr.io", "org/plugin", "1.2")
        );
        let r = OciRef::parse("127.0.0.1:5000/p").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "p", "latest")
        );
        let r = OciRef::parse("reg:5000/a/b@sha256:abc").unwrap();
        assert_eq!((r.repository.as_str(), r.reference.as_str()), ("a/b", "sha256:abc"));
        assert!(OciRef::parse("just-a-name").is_err());
    }

    #[test]
    fn bearer_challenges_and_redirects() {
        assert_eq!(
            split_params(r#"realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push""#),
            [r#"realm="https://auth.example/token""#, r#"service="registry""#, r#"scope="repository:a/b:pull,push""#]
        );
        assert_eq!(encode_query("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        assert_eq!(resolve("http://h:1/v2/x", "/blob/1"), "http://h:1/blob/1");
        assert_eq!(resolve("http://h:1/v2/x", "https://cdn/x"), "https://cdn/x");
    }

    #[test]
    fn modules_are_checked() {
        let want = |sha: &str| Wanted {
            scheme: "file".into(),
            location: "/x".into(),
            sha256: sha.into(),
            plugins: vec!["a/b".into()],
        };
        let module = b"\0asm\x01\0\0\0".to_vec();
        let sha = sha256_hex(&module);
        assert!(matches!(checked(module.clone(), &want(""), None), WasmModule::Ready(_)));
        assert!(matches!(checked(module.clone(), &want(&sha), None), WasmModule::Ready(_)));
        assert!(matches!(
            checked(module.clone(), &want(&"0".repeat(64)), None),
            WasmModule::Failed { field: "sha256", .. }
        ));
        assert!(matches!(checked(module, &want(&"0".repeat(64)), Some(&"0".repeat(64))), WasmModule::Ready(_)));
        assert!(matches!(checked(b"<html>".to_vec(), &want(""), None), WasmModule::Failed { field: "url", .. }));
    }
}
