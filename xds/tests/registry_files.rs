//! The file source of the registry: what a config directory gives, how changes, broken files
//! and invalid objects are handled.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rudder_config::mesh::MeshConfig;
use rudder_xds::model::Snapshot;
use rudder_xds::registry::files::{ConfigDir, watch_dir};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rudder-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_examples_local(dir: &Path) {
    for entry in std::fs::read_dir(workspace().join("examples/local")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
}

const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: testns1
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination:
        host: httpbin
"#;

const INVALID_VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: broken
  namespace: testns1
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination:
        host: httpbin
      weight: -5
"#;

#[test]
fn examples_local_gives_the_service_its_workloads_and_the_mesh_config() {
    let dir = temp_dir("examples");
    copy_examples_local(&dir);
    let mut source = ConfigDir::new(&dir, MeshConfig::istio_defaults());
    assert!(source.refresh());
    let snapshot = source.snapshot();
    let service = &snapshot.services["httpbin.testns1.svc.cluster.local"];
    assert_eq!(service.ports[0].port, 8000);
    let endpoints = snapshot.endpoints_of("httpbin.testns1.svc.cluster.local");
    let addresses: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["127.0.0.11", "127.0.0.12"]);
    assert_eq!(snapshot.sidecars.len(), 1);
    assert_eq!(snapshot.mesh.access_log_file.as_deref(), Some("/dev/stdout"), "mesh from the istio ConfigMap");
    assert!(!source.refresh(), "nothing changed");
}

#[test]
fn invalid_objects_are_dropped_and_broken_files_keep_their_last_good_objects() {
    let dir = temp_dir("broken");
    copy_examples_local(&dir);
    std::fs::write(dir.join("traffic.yaml"), format!("{VS}---\n{INVALID_VS}")).unwrap();
    let mut source = ConfigDir::new(&dir, MeshConfig::istio_defaults());
    source.refresh();
    let names: Vec<_> = source.snapshot().virtual_services.iter().map(|v| v.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["httpbin"], "the invalid VirtualService is dropped, the valid one kept");

    // Broken YAML: the file keeps what it gave before; the rest of the directory is unaffected.
    std::fs::write(dir.join("traffic.yaml"), "kind: [unterminated\n  - : :").unwrap();
    assert!(source.refresh());
    let snapshot = source.snapshot();
    assert_eq!(snapshot.virtual_services.len(), 1);
    assert!(snapshot.services.contains_key("httpbin.testns1.svc.cluster.local"));

    // Removing the file removes its objects.
    std::fs::remove_file(dir.join("traffic.yaml")).unwrap();
    assert!(source.refresh());
    assert!(source.snapshot().virtual_services.is_empty());
}

#[test]
fn a_bad_edit_leaves_the_last_good_version_in_force() {
    let dir = temp_dir("last-good");
    copy_examples_local(&dir);
    std::fs::write(dir.join("traffic.yaml"), VS).unwrap();
    let mut source = ConfigDir::new(&dir, MeshConfig::istio_defaults());
    source.refresh();
    let good = source.snapshot().virtual_services[0].spec.clone();
    // An edit that fails validation, then one that does not even decode: the good version
    // stays; the rest of the file's changes still apply.
    let invalid = VS.replace("        host: httpbin\n", "        host: httpbin\n      weight: -5\n");
    let malformed = VS.replace("  http:\n  - route:", "  http: not-a-list\n  ignored:");
    for (what, edit) in [("invalid", invalid), ("malformed", malformed)] {
        std::fs::write(dir.join("traffic.yaml"), format!("{edit}---\n{}", VS.replace("name: httpbin", "name: extra")))
            .unwrap();
        assert!(source.refresh(), "{what}");
        let snapshot = source.snapshot();
        let names: Vec<_> = snapshot.virtual_services.iter().map(|v| v.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["extra", "httpbin"], "{what}");
        let kept = snapshot.virtual_services.iter().find(|v| v.metadata.name.as_deref() == Some("httpbin")).unwrap();
        assert_eq!(kept.spec, good, "{what}: the last good version");
    }
    // Fixed: the new version replaces it.
    std::fs::write(dir.join("traffic.yaml"), VS.replace("hosts: [httpbin]", "hosts: [httpbin, other]")).unwrap();
    assert!(source.refresh());
    assert_eq!(source.snapshot().virtual_services[0].spec.hosts, ["httpbin", "other"]);
}

#[tokio::test]
async fn watch_dir_publishes_a_snapshot_per_change() {
    let dir = temp_dir("watch");
    copy_examples_local(&dir);
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task =
        tokio::spawn(watch_dir(dir.clone(), MeshConfig::istio_defaults(), tx, Duration::from_millis(20), async {
            let _ = stop_rx.await;
        }));
    rx.changed().await.unwrap();
    assert!(rx.borrow_and_update().virtual_services.is_empty());
    std::fs::write(dir.join("traffic.yaml"), VS).unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.unwrap().unwrap();
    assert_eq!(rx.borrow().virtual_services.len(), 1);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

/// With polling effectively off (once an hour), changes still arrive: they come from inotify.
/// New files, files in new subdirectories, rewrites and removals are all seen.
#[tokio::test]
async fn watch_dir_follows_inotify_events() {
    let dir = temp_dir("inotify");
    copy_examples_local(&dir);
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hour = Duration::from_secs(3600);
    let task = tokio::spawn(watch_dir(dir.clone(), MeshConfig::istio_defaults(), tx, hour, async {
        let _ = stop_rx.await;
    }));
    rx.changed().await.unwrap();
    let vs_names = |rx: &tokio::sync::watch::Receiver<Arc<Snapshot>>| -> Vec<String> {
        rx.borrow().virtual_services.iter().map(|v| v.metadata.name.clone().unwrap()).collect()
    };
    assert!(vs_names(&rx).is_empty());

    std::fs::write(dir.join("traffic.yaml"), VS).unwrap();
    next_snapshot(&mut rx).await;
    assert_eq!(vs_names(&rx), ["httpbin"]);

    std::fs::create_dir(dir.join("team-b")).unwrap();
    std::fs::write(dir.join("team-b/more.yaml"), VS.replace("name: httpbin\n", "name: second\n")).unwrap();
    while vs_names(&rx).len() < 2 {
        next_snapshot(&mut rx).await;
    }
    assert_eq!(vs_names(&rx), ["httpbin", "second"]);

    std::fs::remove_file(dir.join("traffic.yaml")).unwrap();
    while vs_names(&rx).len() > 1 {
        next_snapshot(&mut rx).await;
    }
    assert_eq!(vs_names(&rx), ["second"]);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

/// A file that did not change is not read again: the next snapshot shares its objects.
#[test]
fn unchanged_files_are_not_read_again() {
    let dir = temp_dir("unchanged");
    copy_examples_local(&dir);
    std::fs::write(dir.join("a.yaml"), VS).unwrap();
    let mut source = ConfigDir::new(&dir, MeshConfig::istio_defaults());
    source.refresh();
    let before = source.snapshot();

    std::fs::write(dir.join("b.yaml"), VS.replace("name: httpbin\n", "name: second\n")).unwrap();
    assert!(source.refresh_paths([dir.join("b.yaml").as_path()]));
    assert!(!source.refresh_paths([dir.join("a.yaml").as_path()]), "a.yaml did not change");
    let after = source.snapshot();
    assert_eq!(after.virtual_services.len(), 2);
    let first =
        |s: &Snapshot| s.virtual_services.iter().find(|v| v.metadata.name.as_deref() == Some("httpbin")).cloned();
    assert!(Arc::ptr_eq(&first(&before).unwrap(), &first(&after).unwrap()), "a.yaml's object was rebuilt");

    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    assert!(source.refresh_paths([dir.join("b.yaml").as_path()]));
    assert_eq!(source.snapshot().virtual_services.len(), 1);
}

/// A directory removed (one event, for the directory) forgets the files read from under it,
/// and only those: not a sibling whose name merely starts the same.
#[test]
fn a_removed_directory_forgets_the_files_under_it() {
    let dir = temp_dir("removed-dir");
    copy_examples_local(&dir);
    for (sub, name) in [("team-b", "second"), ("team-b2", "third")] {
        std::fs::create_dir(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("vs.yaml"), VS.replace("name: httpbin\n", &format!("name: {name}\n")))
            .unwrap();
    }
    let mut source = ConfigDir::new(&dir, MeshConfig::istio_defaults());
    source.refresh();
    let names = |source: &mut ConfigDir| -> Vec<String> {
        source.snapshot().virtual_services.iter().map(|v| v.metadata.name.clone().unwrap()).collect()
    };
    assert_eq!(names(&mut source), ["second", "third"]);
    std::fs::remove_dir_all(dir.join("team-b")).unwrap();
    assert!(source.refresh_paths([dir.join("team-b").as_path()]));
    assert_eq!(names(&mut source), ["third"]);
    // A path that is neither a known file nor a directory of known files changes nothing.
    assert!(!source.refresh_paths([dir.join("team").as_path()]));
}

async fn next_snapshot(rx: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>) {
    tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.expect("no snapshot within 10 s").unwrap();
}

/// Header values named by `envName` come from discovery's environment: the base mesh's,
/// resolved where discovery loads it, stay resolved without an overlay; with the directory's
/// `istio` ConfigMap layered over it (which drops them), they are read again.
#[test]
fn header_env_values_are_read_again_after_the_mesh_overlay() {
    let provider = |name: &str| {
        format!(
            "extensionProviders:\n- name: {name}\n  opentelemetry: {{service: otel.observability.svc.cluster.local, port: 4318, http: {{headers: [{{name: x-path, envName: PATH}}]}}}}\n"
        )
    };
    let header_values = |mesh: &MeshConfig| -> Vec<Option<String>> {
        mesh.extension_providers
            .iter()
            .filter_map(|p| p.opentelemetry.as_ref()?.http.as_ref())
            .flat_map(|h| h.headers.iter().map(|h| h.effective_value().map(str::to_owned)))
            .collect()
    };
    // PATH is set wherever the tests run; that is the value discovery gives the header.
    let path = std::env::var("PATH").ok().filter(|p| !p.is_empty() && !p.contains(['\r', '\n', '\0']));
    assert!(path.is_some(), "the test needs PATH");
    let mut base = rudder_config::mesh::apply_yaml_over_defaults(&provider("base")).unwrap();
    rudder_xds::registry::resolve_mesh_env(&mut base);

    let dir = temp_dir("header-env");
    let mut source = ConfigDir::new(&dir, base.clone());
    source.refresh();
    assert_eq!(header_values(&source.mesh()), std::slice::from_ref(&path), "no overlay: the base's value");

    let overlay = provider("overlay").replace('\n', "\n    ");
    std::fs::write(
        dir.join("mesh.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    {overlay}\n"),
    )
    .unwrap();
    assert!(source.refresh());
    let mesh = source.snapshot().mesh.clone();
    assert_eq!(mesh.extension_providers.iter().filter(|p| p.opentelemetry.is_some()).count(), 2);
    assert_eq!(header_values(&mesh), [path.clone(), path], "both providers' headers, after the overlay");
}
