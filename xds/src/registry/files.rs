//! The file source of the registry: `rudder discovery --config-dir DIR` reads Istio YAML from
//! DIR (services and workloads outside Kubernetes as ServiceEntry + WorkloadEntry, traffic
//! rules as usual) and publishes a new [`Snapshot`] whenever a file changes.
//!
//! Bad input never takes healthy config down: a file that cannot be read or parsed keeps the
//! objects it last gave, and an object that fails validation is dropped with its reason
//! while everything else is served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rudder_config::load::{self, Loaded};
use rudder_config::mesh::MeshConfig;
use rudder_config::{IstioObject, Report, Validate};
use tokio::sync::watch;

use crate::model::Snapshot;

use super::kube::{KubeInputs, build_snapshot};

/// How often the directory is scanned for changes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What one file last gave.
#[derive(Debug, Clone)]
struct FileState {
    stamp: (SystemTime, u64),
    objects: Vec<Loaded>,
    /// `data.mesh` of a ConfigMap named `istio` in this file (MeshConfig YAML).
    mesh_overlay: Option<String>,
}

/// A config directory and what was read from it.
#[derive(Debug)]
pub struct ConfigDir {
    dir: PathBuf,
    mesh: MeshConfig,
    files: BTreeMap<PathBuf, FileState>,
}

impl ConfigDir {
    pub fn new(dir: impl Into<PathBuf>, mesh: MeshConfig) -> Self {
        Self { dir: dir.into(), mesh, files: BTreeMap::new() }
    }

    /// Re-reads changed files. Returns whether anything changed (files added, changed or
    /// removed). Problems are logged with file, document, object and field.
    pub fn refresh(&mut self) -> bool {
        let paths = match load::files_under(&self.dir) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!("config dir {}: {e}; keeping the last config", self.dir.display());
                return false;
            }
        };
        let mut changed = false;
        let before = self.files.len();
        // A set: `Vec::contains` per known file made every poll quadratic in the number of
        // files (a million path comparisons every 200 ms for a 1,000-file directory).
        let present: std::collections::BTreeSet<&PathBuf> = paths.iter().collect();
        self.files.retain(|p, _| present.contains(p));
        changed |= self.files.len() != before;
        for path in paths {
            let Some(stamp) = stamp_of(&path) else { continue };
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            changed = true;
            match read_file(&path) {
                Ok((objects, mesh_overlay)) => {
                    self.files.insert(path, FileState { stamp, objects, mesh_overlay });
                }
                Err(e) => {
                    tracing::warn!("{e}; keeping what this file gave before");
                    // Remember the stamp so a broken file is reported once, not every poll.
                    let mut kept = self.files.get(&path).cloned().unwrap_or(FileState {
                        stamp,
                        objects: Vec::new(),
                        mesh_overlay: None,
                    });
                    kept.stamp = stamp;
                    self.files.insert(path, kept);
                }
            }
        }
        changed
    }

    /// The mesh config: the base with the `istio` ConfigMap's `mesh` applied, when the
    /// directory has one (an overlay that does not parse is logged and left out).
    pub fn mesh(&self) -> MeshConfig {
        let mut mesh = self.mesh.clone();
        for (path, overlay) in self.files.iter().filter_map(|(p, f)| Some((p, f.mesh_overlay.as_ref()?))) {
            match rudder_config::mesh::apply_yaml(overlay, &mesh) {
                Ok(merged) => mesh = merged,
                Err(e) => tracing::warn!("{}: ConfigMap istio: data.mesh: {e} (ignored)", path.display()),
            }
        }
        mesh
    }

    /// The snapshot of everything currently read (the same merge as the Kubernetes source,
    /// with no Kubernetes objects).
    pub fn snapshot(&self) -> Snapshot {
        let mut inputs = KubeInputs::default();
        for loaded in self.files.values().flat_map(|f| &f.objects) {
            match &loaded.object {
                IstioObject::VirtualService(o) => inputs.virtual_services.push(Arc::new((**o).clone())),
                IstioObject::DestinationRule(o) => inputs.destination_rules.push(Arc::new((**o).clone())),
                IstioObject::Sidecar(o) => inputs.sidecars.push(Arc::new((**o).clone())),
                IstioObject::Gateway(o) => inputs.gateways.push(Arc::new((**o).clone())),
                IstioObject::ServiceEntry(o) => inputs.service_entries.push(Arc::new((**o).clone())),
                IstioObject::WorkloadEntry(o) => inputs.workload_entries.push(Arc::new((**o).clone())),
                _ => {}
            }
        }
        build_snapshot(&inputs, &self.mesh())
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads one file: its valid Istio objects and the mesh config of an `istio` ConfigMap.
/// Decode problems and invalid objects are logged and left out.
fn read_file(path: &Path) -> Result<(Vec<Loaded>, Option<String>), load::ReadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| load::ReadError::Io { file: name.clone(), source })?;
    let loads = load::load_str(&name, &text)?;
    for problem in loads.problems.iter().filter(|p| p.is_error()) {
        tracing::warn!("{problem}");
    }
    let mesh_overlay = load::documents(&name, &text)?.into_iter().find_map(|doc| {
        let is_mesh = doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "istio";
        is_mesh.then(|| doc["data"]["mesh"].as_str().map(str::to_owned)).flatten()
    });
    Ok((loads.objects.into_iter().filter(valid).collect(), mesh_overlay))
}

/// Whether an object passes validation; logs why not.
fn valid(loaded: &Loaded) -> bool {
    if matches!(loaded.object, IstioObject::IstioOperator(_)) {
        return false;
    }
    let mut report = Report::default();
    loaded.object.validate(&mut report);
    match report.errors().next() {
        Some(first) => {
            tracing::warn!("{} {}: {first} (object ignored)", loaded.source, loaded.id);
            false
        }
        None => true,
    }
}

/// Reads `dir` now, publishes the snapshot, then polls for changes until `shutdown`,
/// publishing a new snapshot after each change.
pub async fn watch_dir(
    dir: PathBuf,
    mesh: MeshConfig,
    tx: watch::Sender<Arc<Snapshot>>,
    poll: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut source = ConfigDir::new(dir, mesh);
    source.refresh();
    tx.send_replace(Arc::new(source.snapshot()));
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Reading is blocking file I/O, but the directory is small and polls are rare.
                if source.refresh() {
                    tracing::info!("config dir changed; publishing a new snapshot");
                    tx.send_replace(Arc::new(source.snapshot()));
                }
            }
            () = &mut shutdown => return,
        }
    }
}
