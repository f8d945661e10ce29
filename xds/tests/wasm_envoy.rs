//! WasmPlugins through a real Envoy: discovery reads a config directory, its Wasm follower
//! reads each plugin's module from a file, over HTTPS (a local TLS server of a test CA) and
//! from an OCI registry (a local server speaking the distribution API's manifest and blob
//! endpoints), and the ADS server serves a gateway Envoy whose listener then runs the plugins:
//! each adds the response header its configuration names. A plugin with a wrong checksum and
//! one whose URL answers nothing are left out with a message naming them and the field, and
//! everything else keeps working. All traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder_config::mesh::MeshConfig;
use rudder_xds::model::{Snapshot, WasmModule};
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::registry::wasm::{self, FetchOptions, WASM_LAYER, sha256_hex};
use rudder_xds::server::{DebounceOptions, DiscoveryServer, ServerOptions};
use rudder_xds::testing::{TestEnvoy, free_port, local_app_entry, ok_app};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(30);

fn module() -> Vec<u8> {
    wat::parse_str(include_str!("wasm/add_header.wat")).unwrap()
}

/// Serves `body` for every request over TLS with `pair`'s certificate; stops when dropped.
struct TlsFileServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_file_server(pair: &rudder_e2e::tls::CertPair, body: Vec<u8>) -> TlsFileServer {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(body);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsFileServer { port, task }
}

/// A registry holding `plugins/hello:1.0`: an OCI manifest whose one layer is the module as
/// a plain Wasm layer. Blobs redirect to a storage path, as real registries do. Returns the
/// address and the manifest's digest.
async fn registry(module: Vec<u8>) -> (std::net::SocketAddr, String) {
    let layer_digest = format!("sha256:{}", sha256_hex(&module));
    let config = b"{}".to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": format!("sha256:{}", sha256_hex(&config)), "size": 2},
        "layers": [{"mediaType": WASM_LAYER, "digest": layer_digest, "size": module.len()}],
    }))
    .unwrap();
    let manifest_digest = sha256_hex(&manifest);
    let blob_path = format!("/v2/plugins/hello/blobs/{layer_digest}");
    let app = axum::Router::new()
        .route(
            "/v2/plugins/hello/manifests/1.0",
            axum::routing::get(move || {
                let manifest = manifest.clone();
                async move { ([("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest) }
            }),
        )
        .route(
            &blob_path,
            axum::routing::get(|| async { (http::StatusCode::TEMPORARY_REDIRECT, [("location", "/storage/layer")]) }),
        )
        .route("/storage/layer", axum::routing::get(move || std::future::ready(module.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, manifest_digest)
}

/// GET `http://127.0.0.1:<port>/` with `Host: echo.test`: status and response headers.
async fn get(port: u16) -> Option<(u16, http::HeaderMap)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request =
        Request::get(format!("http://127.0.0.1:{port}/")).header("host", "echo.test").body(Body::empty()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    Some((response.status().as_u16(), response.headers().clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_from_file_https_and_oci_run_in_a_real_envoy_and_bad_ones_are_left_out() {
    let dir = std::env::temp_dir().join(format!("rudder-wasm-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let module = module();
    let module_file = dir.join("add_header.wasm");
    std::fs::write(&module_file, &module).unwrap();
    let sha = sha256_hex(&module);

    let ca = rudder_e2e::tls::TestCa::new("wasm test ca").unwrap();
    let https = tls_file_server(&ca.server(&["127.0.0.1"]).unwrap(), module.clone()).await;
    let (registry, manifest_digest) = registry(module.clone()).await;
    let app_port = ok_app().await;
    let gateway_port = free_port();
    let nothing_there = free_port();

    let plugin = |name: &str, url: &str, extra: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: istio-system}}\n\
             spec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  url: {url}\n{extra}---\n"
        )
    };
    let mut yaml = local_app_entry("echo", "echo.test", "HTTP", app_port);
    yaml += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gateway_port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: [echo.test]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: echo.test, port: {{number: 80}}}}}}]}}]
---
"#
    );
    yaml += &plugin(
        "from-file",
        &format!("file://{}", module_file.display()),
        &format!("  sha256: \"{sha}\"\n  pluginConfig: {{header: x-from-file, value: file}}\n"),
    );
    yaml += &plugin(
        "from-https",
        &format!("https://127.0.0.1:{}/add_header.wasm", https.port),
        "  phase: AUTHN\n  pluginConfig: {header: x-from-https, value: https}\n",
    );
    yaml += &plugin(
        "from-oci",
        &format!("oci://{registry}/plugins/hello:1.0"),
        &format!(
            "  sha256: \"{manifest_digest}\"\n  phase: STATS\n  pluginConfig: {{header: x-from-oci, value: oci}}\n"
        ),
    );
    yaml += &plugin(
        "bad-sha",
        &format!("file://{}", module_file.display()),
        &format!("  sha256: \"{}\"\n  pluginConfig: {{header: x-bad-sha, value: bad}}\n", "0".repeat(64)),
    );
    yaml += &plugin(
        "unreachable",
        &format!("https://127.0.0.1:{nothing_there}/gone.wasm"),
        "  pluginConfig: {header: x-unreachable, value: gone}\n",
    );
    std::fs::write(config_dir.join("mesh.yaml"), yaml).unwrap();

    // Registry → Wasm follower → ADS server, as `rudder discovery` wires them.
    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let (tx, registry_rx) = watch::channel(Arc::new(source.snapshot()));
    let (modules_tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let options = FetchOptions {
        insecure_registries: vec![registry.to_string()],
        extra_roots: vec![CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()],
        retry: Duration::from_secs(60),
    };
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(wasm::follow(registry_rx, modules_tx, options, until_stopped()));

    // Every module read or failed.
    let deadline = Instant::now() + PATIENCE;
    let snapshot = loop {
        let snapshot = rx.borrow_and_update().clone();
        if snapshot.wasm_modules.len() == 5 {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "modules: {:?}", snapshot.wasm_modules.keys().collect::<Vec<_>>());
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    };
    let ready = snapshot.wasm_modules.values().filter(|m| matches!(m.as_ref(), WasmModule::Ready(_))).count();
    assert_eq!(ready, 3, "{:?}", wasm::problems(&snapshot));
    let problems = wasm::problems(&snapshot);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with(&format!(
            "WasmPlugin istio-system/bad-sha: spec.sha256: checksum mismatch: want {}, the module has {sha}",
            "0".repeat(64)
        )),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with(&format!(
            "WasmPlugin istio-system/unreachable: spec.url: GET https://127.0.0.1:{nothing_there}/gone.wasm:"
        )),
        "{problems:#?}"
    );

    let debounce = DebounceOptions { quiet: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
    let server = DiscoveryServer::new(rx, ServerOptions { debounce, ..ServerOptions::default() });
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = grpc.local_addr().unwrap().port();
    tokio::spawn({
        let (server, stopped) = (server.clone(), until_stopped());
        async move { server.serve(grpc, stopped).await }
    });
    let mut envoy = TestEnvoy::gateway(&dir, xds_port, "", (std::process::id() % 100_000) * 10 + 7).unwrap();

    // The request goes through, with the three good plugins' headers and nothing of the bad.
    let deadline = Instant::now() + PATIENCE;
    let headers = loop {
        if let Some((200, headers)) = get(gateway_port).await
            && headers.contains_key("x-from-oci")
        {
            break headers;
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "no response with the plugins' headers: {:?}", get(gateway_port).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-from-file").as_deref(), Some("file"), "{headers:?}");
    assert_eq!(header("x-from-https").as_deref(), Some("https"), "{headers:?}");
    assert_eq!(header("x-from-oci").as_deref(), Some("oci"), "{headers:?}");
    assert_eq!(header("x-bad-sha"), None, "{headers:?}");
    assert_eq!(header("x-unreachable"), None, "{headers:?}");

    // The checksum fixed in the directory: the plugin joins at the next read.
    let fixed = std::fs::read_to_string(config_dir.join("mesh.yaml")).unwrap().replace(&"0".repeat(64), &sha);
    std::fs::write(config_dir.join("mesh.yaml"), fixed).unwrap();
    source.refresh();
    tx.send(Arc::new(source.snapshot())).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((200, headers)) = get(gateway_port).await
            && headers.get("x-bad-sha").is_some_and(|v| v == "bad")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the fixed plugin never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    drop(envoy);
    drop(https);
}
