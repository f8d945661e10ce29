//! The agent's bootstrap as real Envoy sees it: every variant passes `envoy --mode validate`.
#![allow(clippy::unwrap_used)]

use rudder_xds::agent::bootstrap::{BootstrapOptions, XdsTransport, bootstrap};
use rudder_xds::model::{InterceptionMode, NodeType};
use rudder_xds::testing::{envoy_path, envoy_validates};

fn validate(name: &str, options: &BootstrapOptions) -> Result<(), String> {
    let json = bootstrap(options).map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("rudder-agent-bootstrap-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let result = envoy_validates(&envoy_path()?, &file);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn sidecar() -> BootstrapOptions {
    BootstrapOptions {
        pod_name: "reviews-v1-abc".into(),
        namespace: "default".into(),
        ip_addresses: vec!["10.1.2.3".parse().unwrap(), "fd00::3".parse().unwrap()],
        labels: [("app".to_owned(), "reviews".to_owned())].into(),
        extra_metadata: [("PROXY_CONFIG".to_owned(), serde_json::json!({"concurrency": 2}))].into(),
        ..Default::default()
    }
}

#[test]
fn envoy_accepts_every_bootstrap_variant() {
    let cases = [
        ("sidecar-dns-discovery", sidecar()),
        (
            "router-sotw",
            BootstrapOptions { node_type: NodeType::Router, xds_transport: XdsTransport::Grpc, ..sidecar() },
        ),
        (
            "none-mode-ip-discovery",
            BootstrapOptions {
                interception: InterceptionMode::None,
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                discovery_address: "127.0.0.1:15010".into(),
                ..sidecar()
            },
        ),
        (
            "self-discovery-with-locality",
            BootstrapOptions {
                labels: [("app".to_owned(), "reviews".to_owned()), ("istio-locality".to_owned(), "r1.z1".to_owned())]
                    .into(),
                extra_metadata: [("ENABLE_SELF_DISCOVERY".to_owned(), serde_json::json!("true"))].into(),
                ..sidecar()
            },
        ),
        (
            "ipv6",
            BootstrapOptions {
                admin_address: "::1".parse().unwrap(),
                discovery_address: "[::1]:15010".into(),
                ..sidecar()
            },
        ),
    ];
    for (name, options) in cases {
        validate(name, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
