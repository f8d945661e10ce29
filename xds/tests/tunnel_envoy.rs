//! DestinationRule `tunnel` through a real Envoy: a gateway's TCP server routes to a
//! destination whose rule tunnels through an HTTP CONNECT proxy. The proxy (a local one in the
//! test) is asked for the rule's `targetHost:targetPort` and splices the bytes through; a plain
//! HTTP request over the gateway's TCP port reaches the app behind it. All traffic stays on
//! 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rudder_config::mesh::MeshConfig;
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::testing::{TestDiscovery, TestEnvoy, free_port, local_app_entry, ok_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(30);

/// An HTTP CONNECT proxy on 127.0.0.1 that records each request line and splices the
/// connection to the target it names.
async fn connect_proxy(seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let line = text.lines().next().unwrap_or_default().to_owned();
                seen.lock().unwrap().push(line.clone());
                let target = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                    ["CONNECT", target, _] => (*target).to_owned(),
                    _ => return,
                };
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    port
}

fn mesh(proxy_port: u16, gateway_port: u16, app_port: u16) -> String {
    let proxy = local_app_entry("proxy", "proxy.test", "TCP", proxy_port);
    format!(
        r#"{proxy}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gateway_port}, name: tcp, protocol: TCP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: through-proxy, namespace: istio-system}}
spec:
  hosts: [tunnel.test]
  gateways: [gw]
  tcp: [{{route: [{{destination: {{host: proxy.test, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: proxy, namespace: istio-system}}
spec:
  host: proxy.test
  trafficPolicy:
    tunnel: {{protocol: CONNECT, targetHost: 127.0.0.1, targetPort: {app_port}}}
"#
    )
}

/// A plain HTTP/1.1 GET over a TCP connection to the gateway: the whole answer.
async fn get_over_tcp(gateway_port: u16) -> Result<String, String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", gateway_port)))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_tunnelled_destination_goes_through_the_connect_proxy() {
    let dir = std::env::temp_dir().join(format!("rudder-tunnel-envoy-{}", std::process::id()));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy_port = connect_proxy(seen.clone()).await;
    let app_port = ok_app().await;
    let gateway_port = free_port();
    std::fs::write(config_dir.join("mesh.yaml"), mesh(proxy_port, gateway_port, app_port)).unwrap();
    let mut source = ConfigDir::new(&config_dir, MeshConfig::istio_defaults());
    source.refresh();
    let discovery = TestDiscovery::start(source.snapshot()).await;
    let base_id = (std::process::id() % 100_000) * 10 + 5;
    let mut envoy = TestEnvoy::gateway(&dir.join("envoy"), discovery.xds_port, "", base_id).unwrap();

    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        let outcome = get_over_tcp(gateway_port).await;
        if let Ok(answer) = &outcome
            && answer.starts_with("HTTP/1.1 200")
        {
            break answer.clone();
        }
        assert!(envoy.running(), "Envoy exited");
        assert!(Instant::now() < deadline, "no answer through the tunnel: {outcome:?}; proxy saw {:?}", seen.lock());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.ends_with("ok"), "{answer}");
    let lines = seen.lock().unwrap().clone();
    assert!(lines.iter().all(|l| *l == format!("CONNECT 127.0.0.1:{app_port} HTTP/1.1")), "{lines:?}");
    assert!(!lines.is_empty());

    drop(discovery);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
