//! JWKS documents for RequestAuthentication `jwksUri`s, fetched by discovery (as istiod does by
//! default) so proxies get the keys inline and never reach out themselves.
//!
//! [`follow`] sits between a registry and the server: every snapshot the registry publishes is
//! passed on with [`Snapshot::jwks`] filled from a cache; URIs not fetched yet are fetched
//! (HTTP or HTTPS, platform trust roots, bounded time), documents are fetched again every
//! `refresh` and a failed fetch is retried sooner, the last good document staying in use. A
//! fetched document that is not a JWKS (JSON with `keys`) is refused like a failed fetch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::Snapshot;

/// How often documents are fetched again (istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL default).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a failed fetch is tried again.
const RETRY: Duration = Duration::from_secs(30);
/// How long a fetch may take when no rule sets `timeout` (Istio's default).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS larger than this is refused.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// The `jwksUri`s of RequestAuthentications without inline `jwks`, with how long a fetch may
/// take: the rule's `timeout` (the longest, when rules sharing a URI differ), else 5 s.
pub fn wanted(snapshot: &Snapshot) -> BTreeMap<String, Duration> {
    let mut uris: BTreeMap<String, Duration> = BTreeMap::new();
    let rules = snapshot.request_authentications.iter().flat_map(|ra| ra.spec.jwt_rules.iter());
    for rule in rules.filter(|rule| rule.jwks.trim().is_empty() && !rule.jwks_uri().trim().is_empty()) {
        let timeout = rule.timeout.map(|t| t.to_std()).filter(|t| !t.is_zero()).unwrap_or(FETCH_TIMEOUT);
        let entry = uris.entry(rule.jwks_uri().trim().to_owned()).or_insert(timeout);
        *entry = (*entry).max(timeout);
    }
    uris
}

#[derive(Debug)]
struct Entry {
    document: Option<Arc<str>>,
    next_fetch: Instant,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>;

fn client() -> Result<HttpsClient, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// One fetch: the body when it is a JWKS.
async fn fetch(client: &HttpsClient, uri: &str, timeout: Duration) -> Result<Arc<str>, String> {
    let request = http::Request::get(uri).body(String::new()).map_err(|e| format!("bad URI: {e}"))?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .map_err(|_| "body not read in time".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if body.len() > MAX_DOCUMENT {
        return Err(format!("document larger than {MAX_DOCUMENT} bytes"));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    if !json.get("keys").is_some_and(serde_json::Value::is_array) {
        return Err("not a JWKS (no \"keys\" array)".into());
    }
    Ok(text.into())
}

/// Passes every snapshot of `upstream` on to `downstream` with its JWKS documents, until
/// `upstream` closes or `stop` completes.
pub async fn follow(
    mut upstream: watch::Receiver<Arc<Snapshot>>,
    downstream: watch::Sender<Arc<Snapshot>>,
    refresh: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let client = match client() {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::error!(%error, "no HTTPS client for jwksUri documents; their tokens will be refused");
            None
        }
    };
    let mut cache: BTreeMap<String, Entry> = BTreeMap::new();
    let mut published: Option<BTreeMap<String, Arc<str>>> = None;
    let mut last: Option<Arc<Snapshot>> = None;
    tokio::pin!(stop);
    loop {
        let snapshot = upstream.borrow_and_update().clone();
        let uris = wanted(&snapshot);
        cache.retain(|uri, _| uris.contains_key(uri));
        let now = Instant::now();
        for (uri, timeout) in &uris {
            let entry = cache.entry(uri.clone()).or_insert(Entry { document: None, next_fetch: now });
            if entry.next_fetch > now {
                continue;
            }
            let outcome = match &client {
                Some(client) => fetch(client, uri, *timeout).await,
                None => Err("no HTTP client".into()),
            };
            match outcome {
                Ok(document) => {
                    if entry.document.as_deref() != Some(&*document) {
                        tracing::info!(%uri, "JWKS fetched");
                    }
                    entry.document = Some(document);
                    entry.next_fetch = Instant::now() + refresh;
                }
                Err(error) => {
                    tracing::warn!(%uri, %error, kept = entry.document.is_some(), "JWKS fetch failed; retrying");
                    entry.next_fetch = Instant::now() + RETRY.min(refresh);
                }
            }
        }
        let documents: BTreeMap<String, Arc<str>> =
            cache.iter().filter_map(|(uri, e)| Some((uri.clone(), e.document.clone()?))).collect();
        let new_snapshot = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &snapshot));
        if new_snapshot || published.as_ref() != Some(&documents) {
            // Without documents the registry's snapshot goes on as it is (no copy).
            let passed = if documents.is_empty() {
                snapshot.clone()
            } else {
                let mut with_keys = snapshot.as_ref().clone();
                with_keys.jwks = documents.clone();
                Arc::new(with_keys)
            };
            if !super::pass_on(&downstream, passed) {
                return;
            }
            published = Some(documents);
            last = Some(snapshot);
        }
        let next = cache.values().map(|e| e.next_fetch).min();
        let wake = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = upstream.changed() => if changed.is_err() { return },
            () = wake => {}
            () = &mut stop => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Serves whatever `document` holds at `/jwks.json` (a 500 for an empty one), counting
    /// the requests in `fetches`.
    async fn issuer(document: Arc<Mutex<String>>, fetches: Arc<std::sync::atomic::AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let text = document.lock().unwrap().clone();
                async move {
                    if text.is_empty() {
                        (http::StatusCode::INTERNAL_SERVER_ERROR, String::new())
                    } else {
                        (http::StatusCode::OK, text)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/jwks.json")
    }

    #[test]
    fn a_fetch_waits_as_long_as_the_rules_timeout_says() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: ra, namespace: apps}\n\
             spec: {jwtRules: [{issuer: a, jwksUri: \"https://a/jwks\", timeout: 2s}, \
             {issuer: b, jwksUri: \"https://a/jwks\", timeout: 10s}, {issuer: c, jwksUri: \"https://c/jwks\"}, \
             {issuer: d, jwksUri: \"https://d/jwks\", jwks: \"{}\"}]}\n";
        let loaded = rudder_config::load::load_str("ra.yaml", yaml).unwrap();
        let mut snapshot = Snapshot::default();
        for l in loaded.objects {
            if let rudder_config::IstioObject::RequestAuthentication(ra) = l.object {
                snapshot.request_authentications.push(Arc::from(ra));
            }
        }
        // The longest of the rules sharing a URI; 5 s without one; inline keys fetch nothing.
        assert_eq!(
            wanted(&snapshot),
            BTreeMap::from([
                ("https://a/jwks".to_owned(), Duration::from_secs(10)),
                ("https://c/jwks".to_owned(), Duration::from_secs(5)),
            ])
        );
    }

    fn snapshot_with(uri: &str) -> Arc<Snapshot> {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra, namespace: apps}}\n\
             spec: {{jwtRules: [{{issuer: iss, jwksUri: \"{uri}\"}}]}}\n"
        );
        let loaded = rudder_config::load::load_str("ra.yaml", &yaml).unwrap();
        let mut snapshot = Snapshot::default();
        for l in loaded.objects {
            if let rudder_config::IstioObject::RequestAuthentication(ra) = l.object {
                snapshot.request_authentications.push(Arc::from(ra));
            }
        }
        Arc::new(snapshot)
    }

    async fn wait_for(rx: &mut watch::Receiver<Arc<Snapshot>>, uri: &str, want: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if rx.borrow_and_update().jwks.get(uri).map(|d| d.to_string()).as_deref() == want {
                return;
            }
            assert!(tokio::time::timeout_at(deadline, rx.changed()).await.is_ok(), "no JWKS {want:?} for {uri}");
        }
    }

    #[tokio::test]
    async fn documents_are_fetched_refreshed_and_the_last_good_one_kept() {
        let first = r#"{"keys":[{"kid":"1"}]}"#;
        let second = r#"{"keys":[{"kid":"2"}]}"#;
        let document = Arc::new(Mutex::new(first.to_owned()));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let uri = issuer(document.clone(), fetches.clone()).await;
        // Until discovery has asked the issuer `n` more times.
        let fetched = |n: usize| {
            let fetches = fetches.clone();
            let target = fetches.load(std::sync::atomic::Ordering::SeqCst) + n;
            async move {
                while fetches.load(std::sync::atomic::Ordering::SeqCst) < target {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let (up_tx, up_rx) = watch::channel(snapshot_with(&uri));
        let (down_tx, mut down_rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(follow(up_rx, down_tx, Duration::from_millis(200), std::future::pending()));
        wait_for(&mut down_rx, &uri, Some(first)).await;

        *document.lock().unwrap() = second.to_owned();
        wait_for(&mut down_rx, &uri, Some(second)).await;

        // A failing issuer or a document that is not a JWKS: the last good keys stay.
        *document.lock().unwrap() = String::new();
        tokio::time::timeout(Duration::from_secs(10), fetched(2)).await.unwrap();
        *document.lock().unwrap() = r#"{"not":"keys"}"#.to_owned();
        tokio::time::timeout(Duration::from_secs(10), fetched(2)).await.unwrap();
        assert_eq!(down_rx.borrow().jwks.get(&uri).map(|d| d.to_string()).as_deref(), Some(second));

        // The RequestAuthentication gone: its document goes too.
        up_tx.send(Arc::new(Snapshot::default())).unwrap();
        wait_for(&mut down_rx, &uri, None).await;
    }
}
