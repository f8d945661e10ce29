//! Golden EnvoyFilter results: every `tests/envoy_filter/<case>.yaml` (EnvoyFilters; its first
//! line `# proxy: <node id> [label=value]...` names the proxy) is translated with
//! `tests/envoy_filter/mesh.yaml`, and the objects the patches changed, added or removed
//! (against the same mesh without them) are compared, as protobuf JSON, with
//! `<case>.golden.json`. `UPDATE_GOLDEN=1 cargo test -p rudder-xds --test envoy_filter_golden`
//! rewrites the goldens. A real Envoy (`--mode validate`) accepts every patched result.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::DynamicMessage;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::testing::config_dir_snapshot;
use rudder_xds::translate;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/envoy_filter")
}

fn snapshot(files: &[(&str, &str)]) -> Snapshot {
    config_dir_snapshot(files, Default::default())
}

fn proxy(line: &str) -> Proxy {
    let spec = line.strip_prefix("# proxy: ").expect("first line: # proxy: <id> [label=value]...");
    let mut words = spec.split_whitespace();
    let id = words.next().unwrap();
    let labels: serde_json::Map<String, serde_json::Value> = words
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap();
            (k.to_owned(), serde_json::Value::from(v))
        })
        .collect();
    let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::Value::Object(labels))]);
    Proxy::from_node(id, &meta).unwrap()
}

fn json<M: Message>(type_name: &str, message: &M) -> serde_json::Value {
    let desc = rudder_config::envoy_proto::descriptor(type_name).unwrap();
    serde_json::to_value(DynamicMessage::decode(desc, message.encode_to_vec().as_slice()).unwrap()).unwrap()
}

/// Objects of one kind that differ: name → JSON (null when removed).
fn changed<M: Message + PartialEq>(
    type_name: &str,
    before: &[M],
    after: &[M],
    name: impl Fn(&M) -> &str,
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for m in after {
        if before.iter().find(|b| name(b) == name(m)) != Some(m) {
            out.insert(name(m).to_owned(), json(type_name, m));
        }
    }
    for b in before {
        if !after.iter().any(|m| name(m) == name(b)) {
            out.insert(name(b).to_owned(), serde_json::Value::Null);
        }
    }
    out
}

#[test]
fn envoy_filter_goldens() {
    let mesh = std::fs::read_to_string(cases_dir().join("mesh.yaml")).unwrap();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("mesh.yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "{cases:?}");
    let plain = snapshot(&[("mesh.yaml", &mesh)]);
    let mut failures = Vec::new();
    for case in cases {
        let text = std::fs::read_to_string(&case).unwrap();
        let proxy = proxy(text.lines().next().unwrap());
        let patched = snapshot(&[("mesh.yaml", &mesh), ("case.yaml", &text)]);
        assert!(!patched.envoy_filters.is_empty(), "{}: no EnvoyFilter was read", case.display());
        let before = translate::for_proxy(&plain, &proxy);
        let after = translate::for_proxy(&patched, &proxy);
        let got = serde_json::json!({
            "clusters": changed("envoy.config.cluster.v3.Cluster", &before.clusters, &after.clusters, |c| &c.name),
            "listeners": changed("envoy.config.listener.v3.Listener", &before.listeners, &after.listeners, |l| &l.name),
            "routes": changed("envoy.config.route.v3.RouteConfiguration", &before.routes, &after.routes, |r| &r.name),
        });
        let golden = case.with_extension("golden.json");
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::write(&golden, &text).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            failures.push(format!(
                "{} differs from {} (UPDATE_GOLDEN=1 rewrites it)",
                case.display(),
                golden.display()
            ));
        }
        // Envoy takes the patched config.
        if let Err(e) = rudder_xds::testing::envoy_accepts(after.clusters, after.listeners) {
            failures.push(format!("{}: Envoy refuses the patched config: {e}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
