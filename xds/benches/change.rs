//! What one config change costs discovery's CPU before any byte is written, step by step, on
//! the 1,000 services × 1 port × 10 endpoints mesh read from a config directory (the
//! `scripts/bench-discovery.sh` case): the registry's new snapshot after one file changed, the
//! push's generation (endpoints), and one view's update (the kinds the change touched,
//! translated and encoded). Two changes: a VirtualService's weights (a route change) and a
//! WorkloadEntry's `version` label (an endpoint-only change). Their sum plus the debounce is
//! the floor of "file write → push" with few proxies.
//!
//! `cargo bench -p rudder-xds --bench change`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rudder_e2e::synthetic;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::registry::files::ConfigDir;
use rudder_xds::server::cache::EncodedSet;
use rudder_xds::server::push::build_generation;
use rudder_xds::server::{Generator, Translator};
use rudder_xds::translate::{LabelSelectors, ViewKey};

const SERVICES: usize = 1_000;
const PORTS: usize = 1;
const ENDPOINTS: usize = 10;

/// A sidecar of another namespace than the mesh's (like the load client's), no labels.
fn sidecar() -> Proxy {
    let metadata: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({"NAMESPACE": "client"})).unwrap_or_default();
    Proxy::from_node("sidecar~10.0.0.1~load-0.client~client.svc.cluster.local", &metadata).expect("a valid node id")
}

/// A config directory holding the mesh, and one file's two contents to switch between.
struct Flipping {
    dir: ConfigDir,
    path: PathBuf,
    texts: [String; 2],
    next: usize,
}

impl Flipping {
    fn new(root: &Path, file: &str, flip: impl Fn(&str) -> String) -> Self {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path).expect("the synthetic mesh file");
        let flipped = flip(&text);
        assert_ne!(text, flipped, "{file}: the flip changes the file");
        let mut dir = ConfigDir::new(root, rudder_config::mesh::MeshConfig::istio_defaults());
        dir.refresh();
        Self { dir, path, texts: [text, flipped], next: 1 }
    }

    /// Writes the file's other content and returns the registry's next snapshot, timing only
    /// the registry's part (re-read of that file and the snapshot).
    fn change(&mut self) -> (Snapshot, Duration) {
        std::fs::write(&self.path, &self.texts[self.next]).expect("writing the mesh file");
        self.next = 1 - self.next;
        let started = Instant::now();
        assert!(self.dir.refresh_paths([self.path.as_path()]), "the registry sees the change");
        let snapshot = self.dir.snapshot();
        (snapshot, started.elapsed())
    }
}

fn one_change(c: &mut Criterion, group_name: &str, file: &str, flip: impl Fn(&str) -> String) {
    let root = std::env::temp_dir().join(format!("rudder-bench-change-{}-{file}", std::process::id()));
    synthetic::write_dir(&root, SERVICES, PORTS, ENDPOINTS).expect("writing the synthetic mesh");
    let mut flipping = Flipping::new(&root, file, flip);
    let generator: Arc<dyn Generator> = Arc::new(Translator);
    let proxy = sidecar();

    let mut group = c.benchmark_group(group_name);
    group.sample_size(30).measurement_time(Duration::from_secs(8));
    group.bench_function("registry: re-read one file, new snapshot", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| flipping.change().1).sum());
    });

    // Generations and views alternate between the file's two contents, each built from the
    // other, as consecutive pushes are.
    let snapshots: [Arc<Snapshot>; 2] = [Arc::new(flipping.change().0), Arc::new(flipping.change().0)];
    let first = build_generation(generator.as_ref(), snapshots[0].clone(), 1, Instant::now(), None);
    let mut previous = Arc::new(first);
    let mut version = 1;
    group.bench_function("push: build the generation (endpoints)", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                version += 1;
                let snapshot = snapshots[(version % 2) as usize].clone();
                let started = Instant::now();
                let next = build_generation(generator.as_ref(), snapshot, version, started, Some(&previous));
                // The previous generation is freed when the new one replaces it.
                previous = Arc::new(next);
                total += started.elapsed();
            }
            total
        });
    });

    let key = ViewKey::of(&proxy, &LabelSelectors::of(&snapshots[0]));
    let mut view = Arc::new(EncodedSet::encode(generator.outbound(&snapshots[0], &proxy), None));
    let mut at = 0;
    group.bench_function("view: translate and encode what the change touched", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (before, after) = (&snapshots[at], &snapshots[1 - at]);
                at = 1 - at;
                let started = Instant::now();
                let parts = generator.changed_parts(before, after, &key);
                let fresh = generator.outbound_parts(after, black_box(&proxy), parts, view.route_memo());
                view = Arc::new(EncodedSet::update(Some(&view), fresh, parts));
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

fn route_change(c: &mut Criterion) {
    one_change(c, "route change 1000x1x10", "svc-00000.yaml", |text| synthetic::flip_weights(text).0);
}

fn endpoint_change(c: &mut Criterion) {
    one_change(c, "endpoint change 1000x1x10", "svc-00001.yaml", |text| synthetic::flip_first_version(text).0);
}

criterion_group!(benches, route_change, endpoint_change);
criterion_main!(benches);
