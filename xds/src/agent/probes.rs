//! The application probes the injector moved to the agent (`/app-health/<container>/<kind>`
//! on the status port 15020, the originals in `ISTIO_KUBE_APP_PROBERS`): the kubelet asks the
//! agent, which runs the original check against the app on localhost. Needed because with
//! mTLS the kubelet's own plaintext probe would never reach the app through the sidecar.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;

/// One original probe action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `httpGet` (HTTP scheme): a GET of `path` on `port`; 200–399 is healthy.
    Http { port: u16, path: String, host_header: Option<String> },
    /// `tcpSocket`, and `grpc` and HTTPS `httpGet` (answered by a TCP connect: the agent does
    /// not speak the gRPC health protocol or TLS to the app).
    Tcp { port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prober {
    pub check: Check,
    pub timeout: Duration,
}

/// `ISTIO_KUBE_APP_PROBERS` (`{"/app-health/app/readyz": {"httpGet": {...}, "timeoutSeconds": 1}}`)
/// → probers by path. Entries that cannot be understood are reported and left out.
pub fn parse(json: &str) -> Result<(BTreeMap<String, Prober>, Vec<String>), String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ISTIO_KUBE_APP_PROBERS is not JSON: {e}"))?;
    let object = value.as_object().ok_or("ISTIO_KUBE_APP_PROBERS is not a JSON object")?;
    let mut probers = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, probe) in object {
        let timeout =
            Duration::from_secs(probe.get("timeoutSeconds").and_then(serde_json::Value::as_u64).unwrap_or(1).max(1));
        let port = |action: &serde_json::Value| {
            action
                .get("port")
                .and_then(|p| p.as_u64().or_else(|| p.as_str()?.parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
        };
        let check = if let Some(http) = probe.get("httpGet") {
            let https = http.get("scheme").and_then(|s| s.as_str()).is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            port(http).map(|port| {
                if https {
                    Check::Tcp { port }
                } else {
                    let host_header = http
                        .get("httpHeaders")
                        .and_then(|h| h.as_array())
                        .into_iter()
                        .flatten()
                        .find(|h| {
                            h.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.eq_ignore_ascii_case("host"))
                        })
                        .and_then(|h| h.get("value")?.as_str().map(str::to_owned));
                    let path = http.get("path").and_then(|p| p.as_str()).unwrap_or("/");
                    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
                    Check::Http { port, path, host_header }
                }
            })
        } else if let Some(action) = probe.get("tcpSocket").or_else(|| probe.get("grpc")) {
            port(action).map(|port| Check::Tcp { port })
        } else {
            None
        };
        match check {
            Some(check) => {
                probers.insert(path.clone(), Prober { check, timeout });
            }
            None => problems.push(format!("{path}: no httpGet, tcpSocket or grpc action with a port")),
        }
    }
    Ok((probers, problems))
}

/// Runs one probe against the app on localhost.
pub async fn run(prober: &Prober) -> Result<(), String> {
    match &prober.check {
        Check::Http { port, path, host_header } => {
            let authority = format!("127.0.0.1:{port}");
            let host = host_header.clone().unwrap_or_else(|| authority.clone());
            let response = super::supervise::request_with_host(&authority, &host, "GET", path, prober.timeout)
                .await
                .map_err(|e| e.to_string())?;
            if (200..400).contains(&response.status) { Ok(()) } else { Err(format!("HTTP {}", response.status)) }
        }
        Check::Tcp { port } => {
            tokio::time::timeout(prober.timeout, tokio::net::TcpStream::connect(("127.0.0.1", *port)))
                .await
                .map_err(|_| format!("no connection within {:?}", prober.timeout))?
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

/// `/app-health/...` answered from `probers`: 200 when the app's check passes, 503 when it
/// fails, 404 for a path the injector did not set up.
pub fn router(probers: BTreeMap<String, Prober>) -> axum::Router {
    let probers = std::sync::Arc::new(probers);
    axum::Router::new().route(
        "/app-health/{*rest}",
        axum::routing::get(move |uri: axum::http::Uri| {
            let probers = probers.clone();
            async move {
                let Some(prober) = probers.get(uri.path()) else {
                    return (StatusCode::NOT_FOUND, format!("no probe at {}", uri.path()));
                };
                match run(prober).await {
                    Ok(()) => (StatusCode::OK, "ok".to_owned()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
                }
            }
        }),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn probers_from_the_injector_env() {
        let (probers, problems) = parse(
            r#"{
              "/app-health/web/readyz": {"httpGet": {"path": "healthz", "port": 8080, "scheme": "HTTP",
                                          "httpHeaders": [{"name": "Host", "value": "web.local"}]}, "timeoutSeconds": 3},
              "/app-health/web/livez": {"tcpSocket": {"port": "9000"}},
              "/app-health/web/startupz": {"grpc": {"port": 9090}},
              "/app-health/tls/readyz": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
              "/app-health/bad/readyz": {"exec": {"command": ["true"]}}
            }"#,
        )
        .unwrap();
        assert_eq!(
            probers["/app-health/web/readyz"],
            Prober {
                check: Check::Http { port: 8080, path: "/healthz".into(), host_header: Some("web.local".into()) },
                timeout: Duration::from_secs(3)
            }
        );
        assert_eq!(probers["/app-health/web/livez"].check, Check::Tcp { port: 9000 });
        assert_eq!(probers["/app-health/web/startupz"].check, Check::Tcp { port: 9090 });
        assert_eq!(probers["/app-health/tls/readyz"].check, Check::Tcp { port: 8443 });
        assert_eq!(probers["/app-health/web/livez"].timeout, Duration::from_secs(1));
        assert_eq!(problems.len(), 1);
        assert!(parse("[]").is_err());
    }

    #[tokio::test]
    async fn probes_reach_the_app_on_localhost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .route("/sick", axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no") }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = |path: &str| Prober {
            check: Check::Http { port, path: path.into(), host_header: None },
            timeout: Duration::from_secs(2),
        };
        assert_eq!(run(&http("/ok")).await, Ok(()));
        assert_eq!(run(&http("/sick")).await, Err("HTTP 500".to_owned()));
        assert_eq!(run(&Prober { check: Check::Tcp { port }, timeout: Duration::from_secs(2) }).await, Ok(()));
        server.abort();
        let _ = server.await;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        assert!(run(&Prober { check: Check::Tcp { port: closed }, timeout: Duration::from_secs(2) }).await.is_err());
    }
}
