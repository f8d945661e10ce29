//! The file source of the registry: `rudder discovery --config-dir DIR` reads Istio YAML from
//! DIR (services and workloads outside Kubernetes as ServiceEntry + WorkloadEntry, traffic
//! rules as usual) and publishes a new [`Snapshot`] whenever a file changes.
//!
//! Changes are driven by inotify (the `notify` crate): an event names the files to look at, and
//! only a file whose modification time or size changed is read, parsed and validated again;
//! every other file's objects are reused as they are (shared, not copied). A full rescan runs at
//! start, when the kernel reports lost events, and as a slow safety net; where no watch can be
//! set up (no inotify), the directory is polled instead.
//!
//! Bad input never takes healthy config down: a file that cannot be read or parsed keeps the
//! objects it last gave, and an object that fails validation is dropped with its reason
//! while everything else is served.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use rudder_config::extensions::WasmPlugin;
use rudder_config::load::{self, Loaded, ObjectId};
use rudder_config::mesh::MeshConfig;
use rudder_config::networking::{
    DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use rudder_config::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use rudder_config::telemetry::Telemetry;
use rudder_config::{IstioObject, Report, Validate};
use tokio::sync::{mpsc, watch};

use crate::model::Snapshot;

use super::kube::{KubeInputs, SnapshotCache, build_snapshot_cached};
use super::secret;

/// How often the directory is scanned when it cannot be watched.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often a watched directory is rescanned anyway, in case an event was missed.
const SAFETY_RESCAN: Duration = Duration::from_secs(60);
/// After an event, how long to wait for the writer to finish (more events restart the wait),
/// unless every file of the burst is already known to be complete.
const SETTLE: Duration = Duration::from_millis(10);
/// The longest a burst of events delays reading.
const SETTLE_MAX: Duration = Duration::from_millis(100);

/// What one file last gave: its valid objects by kind, shared with the snapshots built from
/// them.
#[derive(Debug, Clone, Default)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    objects: FileObjects,
    /// The valid objects read from the file, kept so that a later bad edit of one of them
    /// leaves this version in force.
    good: Vec<Loaded>,
    /// `data.mesh` of a ConfigMap named `istio` in this file (MeshConfig YAML).
    mesh_overlay: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct FileObjects {
    virtual_services: Vec<Arc<VirtualService>>,
    destination_rules: Vec<Arc<DestinationRule>>,
    sidecars: Vec<Arc<Sidecar>>,
    gateways: Vec<Arc<Gateway>>,
    peer_authentications: Vec<Arc<PeerAuthentication>>,
    authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    request_authentications: Vec<Arc<RequestAuthentication>>,
    telemetries: Vec<Arc<Telemetry>>,
    wasm_plugins: Vec<Arc<WasmPlugin>>,
    envoy_filters: Vec<Arc<EnvoyFilter>>,
    service_entries: Vec<Arc<ServiceEntry>>,
    workload_entries: Vec<Arc<WorkloadEntry>>,
    /// `kind: Secret` documents: gateway credentials in file mode.
    secrets: Vec<Arc<Secret>>,
    /// `kind: ConfigMap` documents holding a client CA (`ca.crt`).
    config_maps: Vec<Arc<ConfigMap>>,
}

impl FileObjects {
    fn of(loaded: Vec<Loaded>, secrets: Vec<Secret>, config_maps: Vec<ConfigMap>) -> Self {
        let mut objects = Self {
            secrets: secrets.into_iter().map(Arc::new).collect(),
            config_maps: config_maps.into_iter().map(Arc::new).collect(),
            ..Self::default()
        };
        for loaded in loaded {
            match loaded.object {
                IstioObject::VirtualService(o) => objects.virtual_services.push(Arc::from(o)),
                IstioObject::DestinationRule(o) => objects.destination_rules.push(Arc::from(o)),
                IstioObject::Sidecar(o) => objects.sidecars.push(Arc::from(o)),
                IstioObject::Gateway(o) => objects.gateways.push(Arc::from(o)),
                IstioObject::PeerAuthentication(o) => objects.peer_authentications.push(Arc::from(o)),
                IstioObject::AuthorizationPolicy(o) => objects.authorization_policies.push(Arc::from(o)),
                IstioObject::RequestAuthentication(o) => objects.request_authentications.push(Arc::from(o)),
                IstioObject::Telemetry(o) => objects.telemetries.push(Arc::from(o)),
                IstioObject::WasmPlugin(o) => objects.wasm_plugins.push(Arc::from(o)),
                IstioObject::EnvoyFilter(o) => objects.envoy_filters.push(Arc::from(o)),
                IstioObject::ServiceEntry(o) => objects.service_entries.push(Arc::from(o)),
                IstioObject::WorkloadEntry(o) => objects.workload_entries.push(Arc::from(o)),
                _ => {}
            }
        }
        objects
    }

    fn add_to(&self, inputs: &mut KubeInputs) {
        inputs.virtual_services.extend(self.virtual_services.iter().cloned());
        inputs.destination_rules.extend(self.destination_rules.iter().cloned());
        inputs.sidecars.extend(self.sidecars.iter().cloned());
        inputs.gateways.extend(self.gateways.iter().cloned());
        inputs.peer_authentications.extend(self.peer_authentications.iter().cloned());
        inputs.authorization_policies.extend(self.authorization_policies.iter().cloned());
        inputs.request_authentications.extend(self.request_authentications.iter().cloned());
        inputs.telemetries.extend(self.telemetries.iter().cloned());
        inputs.wasm_plugins.extend(self.wasm_plugins.iter().cloned());
        inputs.envoy_filters.extend(self.envoy_filters.iter().cloned());
        inputs.service_entries.extend(self.service_entries.iter().cloned());
        inputs.workload_entries.extend(self.workload_entries.iter().cloned());
        inputs.secrets.extend(self.secrets.iter().cloned());
        inputs.config_maps.extend(self.config_maps.iter().cloned());
    }
}

/// A config directory and what was read from it.
#[derive(Debug)]
pub struct ConfigDir {
    dir: PathBuf,
    mesh: MeshConfig,
    files: BTreeMap<PathBuf, FileState>,
    /// Conversions of the last snapshot, reused for the objects a change left alone.
    cache: SnapshotCache,
}

impl ConfigDir {
    pub fn new(dir: impl Into<PathBuf>, mesh: MeshConfig) -> Self {
        Self { dir: dir.into(), mesh, files: BTreeMap::new(), cache: SnapshotCache::default() }
    }

    /// Rescans the whole directory and re-reads changed files. Returns whether anything
    /// changed (files added, changed or removed). Problems are logged with file, document,
    /// object and field.
    pub fn refresh(&mut self) -> bool {
        let paths = match load::files_under(&self.dir) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!("config dir {}: {e}; keeping the last config", self.dir.display());
                return false;
            }
        };
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        let mut changed = self.files.len() != before;
        for path in &paths {
            changed |= self.reread_if_changed(path);
        }
        changed
    }

    /// Looks at `paths` only (what inotify reported): re-reads those config files that changed,
    /// forgets those that are gone. A directory among them (created, moved or removed) means a
    /// rescan of the whole tree. Returns whether anything changed.
    pub fn refresh_paths<'p>(&mut self, paths: impl IntoIterator<Item = &'p Path>) -> bool {
        let mut changed = false;
        for path in paths {
            if path.is_dir() || self.knows_files_under(path) {
                return self.refresh() || changed;
            }
            if !is_config_file(path) || !path.starts_with(&self.dir) {
                continue;
            }
            if path.exists() {
                changed |= self.reread_if_changed(path);
            } else {
                changed |= self.files.remove(path).is_some();
            }
        }
        changed
    }

    /// Whether files were read from under `path` as a directory (one that is gone now).
    /// Paths order by component, so a directory's files come right after it: one lookup
    /// rather than a component-wise comparison with every known file, for every event.
    fn knows_files_under(&self, path: &Path) -> bool {
        use std::ops::Bound::{Excluded, Unbounded};
        self.files.range::<Path, _>((Excluded(path), Unbounded)).next().is_some_and(|(next, _)| next.starts_with(path))
    }

    /// Reads `path` again if its modification time or size differ from the last read.
    fn reread_if_changed(&mut self, path: &Path) -> bool {
        let Some(stamp) = stamp_of(path) else { return false };
        if self.files.get(path).is_some_and(|f| f.stamp == Some(stamp)) {
            return false;
        }
        match read_file(path) {
            Ok(mut read) => {
                // An object this file gave before whose new version does not decode or
                // validate stays in force as it was: a bad edit must not take it down.
                let kept: Vec<Loaded> =
                    self.files.get(path).map(|before| same_objects(&before.good, &read.failed)).unwrap_or_default();
                for loaded in &kept {
                    tracing::warn!("{} {}: keeping the last good version in force", path.display(), loaded.id);
                }
                read.objects.extend(kept);
                let good = read.objects.clone();
                let objects = FileObjects::of(read.objects, read.secrets, read.config_maps);
                let state = FileState { stamp: Some(stamp), objects, good, mesh_overlay: read.mesh_overlay };
                self.files.insert(path.to_owned(), state);
            }
            Err(e) => {
                tracing::warn!("{e}; keeping what this file gave before");
                // Remember the stamp so a broken file is reported once, not at every rescan.
                self.files.entry(path.to_owned()).or_default().stamp = Some(stamp);
            }
        }
        true
    }

    /// The mesh config: the base with the `istio` ConfigMap's `mesh` applied, when the
    /// directory has one (an overlay that does not parse is logged and left out); header
    /// values from the environment are read again after an overlay
    /// ([`super::resolve_mesh_env`]).
    pub fn mesh(&self) -> MeshConfig {
        let mut mesh = self.mesh.clone();
        let mut layered = false;
        for (path, overlay) in self.files.iter().filter_map(|(p, f)| Some((p, f.mesh_overlay.as_ref()?))) {
            match rudder_config::mesh::apply_yaml(overlay, &mesh) {
                Ok(merged) => {
                    mesh = merged;
                    layered = true;
                }
                Err(e) => tracing::warn!("{}: ConfigMap istio: data.mesh: {e} (ignored)", path.display()),
            }
        }
        if layered {
            super::resolve_mesh_env(&mut mesh);
        }
        mesh
    }

    /// The snapshot of everything currently read (the same merge as the Kubernetes source,
    /// with no Kubernetes objects). Objects are shared with the files' state, not copied, and
    /// what the objects of unchanged files gave the previous snapshot is reused.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut inputs = KubeInputs::default();
        for file in self.files.values() {
            file.objects.add_to(&mut inputs);
        }
        let mesh = self.mesh();
        build_snapshot_cached(&inputs, &mesh, &mut self.cache)
    }
}

fn is_config_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The objects of `good` that are among `ids` (same kind, namespace and name).
fn same_objects(good: &[Loaded], ids: &[ObjectId]) -> Vec<Loaded> {
    let key = |id: &ObjectId| (id.kind.clone(), id.namespace.clone().unwrap_or_default(), id.name.clone());
    good.iter().filter(|l| ids.iter().any(|id| key(id) == key(&l.id))).cloned().collect()
}

/// What one config file holds.
struct FileRead {
    /// Its valid Istio objects.
    objects: Vec<Loaded>,
    /// The Istio objects that did not decode or validate.
    failed: Vec<ObjectId>,
    /// `data.mesh` of an `istio` ConfigMap.
    mesh_overlay: Option<String>,
    /// Its `v1` Secrets (`stringData` merged into `data`, as the API server does).
    secrets: Vec<Secret>,
    /// Its `v1` ConfigMaps other than `istio` that hold `ca.crt` (gateway client CAs).
    config_maps: Vec<ConfigMap>,
}

/// Reads one file. Decode problems and invalid objects are logged and left out.
fn read_file(path: &Path) -> Result<FileRead, load::ReadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| load::ReadError::Io { file: name.clone(), source })?;
    let loads = load::load_str(&name, &text)?;
    for problem in loads.problems.iter().filter(|p| p.is_error()) {
        tracing::warn!("{problem}");
    }
    let mut mesh_overlay = None;
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    for (i, doc) in load::documents(&name, &text)?.into_iter().enumerate() {
        if doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "istio" && mesh_overlay.is_none() {
            mesh_overlay = doc["data"]["mesh"].as_str().map(str::to_owned);
        } else if doc["kind"] == "Secret" && doc["apiVersion"] == "v1" {
            match serde_path_to_error::deserialize::<_, Secret>(doc) {
                Ok(secret) => secrets.push(with_string_data(secret)),
                Err(e) => tracing::warn!("{name} document {}: Secret: {}: {} (ignored)", i + 1, e.path(), e.inner()),
            }
        } else if doc["kind"] == "ConfigMap" && doc["apiVersion"] == "v1" && doc["data"]["ca.crt"].is_string() {
            match serde_path_to_error::deserialize::<_, ConfigMap>(doc) {
                Ok(mut config_map) => {
                    secret::keep_ca_keys(&mut config_map);
                    config_maps.push(config_map);
                }
                Err(e) => tracing::warn!("{name} document {}: ConfigMap: {}: {} (ignored)", i + 1, e.path(), e.inner()),
            }
        }
    }
    let mut failed: Vec<ObjectId> = loads
        .problems
        .iter()
        .filter_map(|p| match p {
            load::Problem::Decode { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let (objects, invalid): (Vec<Loaded>, Vec<Loaded>) = loads.objects.into_iter().partition(valid);
    failed.extend(invalid.into_iter().map(|l| l.id));
    Ok(FileRead { objects, failed, mesh_overlay, secrets, config_maps })
}

fn with_string_data(mut secret: Secret) -> Secret {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, value) in strings {
            data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
        }
    }
    secret
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

/// Reads `dir` now, publishes the snapshot, then follows changes until `shutdown`, publishing
/// a new snapshot after each change: by inotify events, or by polling every `poll` where the
/// directory cannot be watched.
pub async fn watch_dir(
    dir: PathBuf,
    mesh: MeshConfig,
    tx: watch::Sender<Arc<Snapshot>>,
    poll: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut source = ConfigDir::new(dir.clone(), mesh);
    // The watch is set up before the first read, so no change falls between the two.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = events_tx.send(event);
    })
    .and_then(|mut watcher| watcher.watch(&dir, RecursiveMode::Recursive).map(|()| watcher));
    let rescan_every = match &watcher {
        Ok(_) => SAFETY_RESCAN,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the config dir; polling it every {poll:?}");
            poll
        }
    };
    source.refresh();
    tx.send_replace(Arc::new(source.snapshot()));
    tokio::pin!(shutdown);
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + rescan_every, rescan_every);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // File I/O below is blocking, but only the files named by events are touched.
        let changed = tokio::select! {
            () = &mut shutdown => return,
            _ = rescan.tick() => source.refresh(),
            Some(first) = events.recv() => {
                let mut batch = Batch::default();
                batch.add(first);
                let started = tokio::time::Instant::now();
                loop {
                    // Events already queued join the burst without waiting.
                    while let Ok(event) = events.try_recv() {
                        batch.add(event);
                    }
                    if batch.complete() {
                        break;
                    }
                    let deadline = (tokio::time::Instant::now() + SETTLE).min(started + SETTLE_MAX);
                    match tokio::time::timeout_at(deadline, events.recv()).await {
                        Ok(Some(event)) => batch.add(event),
                        Ok(None) | Err(_) => break,
                    }
                }
                if batch.rescan { source.refresh() } else { source.refresh_paths(batch.paths.keys().map(PathBuf::as_path)) }
            }
        };
        if changed {
            tracing::info!("config dir changed; publishing a new snapshot");
            tx.send_replace(Arc::new(source.snapshot()));
        }
    }
}

/// The paths of a burst of inotify events, or the need for a full rescan.
#[derive(Debug, Default)]
struct Batch {
    /// Each path, and whether its last event shows it complete: closed after a write, renamed
    /// (into place, or away) or removed. A path only created or modified may still be half
    /// written.
    paths: BTreeMap<PathBuf, bool>,
    rescan: bool,
}

impl Batch {
    fn add(&mut self, event: notify::Result<notify::Event>) {
        match event {
            Ok(event) if event.need_rescan() => self.rescan = true,
            // Opening or reading changes nothing; closing after a write may end one.
            Ok(event) if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) =>
                {}
            Ok(event) => {
                let complete = matches!(
                    event.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Modify(ModifyKind::Name(_))
                        | EventKind::Remove(_)
                );
                for path in event.paths {
                    self.paths.insert(path, complete);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "config dir watch error; rescanning");
                self.rescan = true;
            }
        }
    }

    /// Whether reading can start without waiting for more events: every file written in the
    /// burst was closed (or renamed into place, or removed). Saves the settle time on the
    /// usual write-then-close, which is part of every change's latency.
    fn complete(&self) -> bool {
        !self.rescan && !self.paths.is_empty() && self.paths.values().all(|complete| *complete)
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn a_burst_is_complete_once_every_written_file_is_closed_renamed_or_removed() {
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let renamed_in = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        type Case<'a> = (&'a str, Vec<(EventKind, &'a str)>, bool);
        let cases: Vec<Case> = vec![
            ("nothing yet", vec![], false),
            ("written, still open", vec![(written, "a.yaml")], false),
            ("written and closed", vec![(written, "a.yaml"), (closed, "a.yaml")], true),
            ("only opened", vec![(opened, "a.yaml")], false),
            ("renamed into place", vec![(EventKind::Create(CreateKind::File), "a.tmp"), (renamed_in, "a.yaml")], false),
            ("temp file closed, then renamed", vec![(closed, "a.tmp"), (renamed_in, "a.yaml")], true),
            (
                "temp file created, renamed away and into place",
                vec![
                    (EventKind::Create(CreateKind::File), "a.tmp"),
                    (EventKind::Modify(ModifyKind::Name(RenameMode::From)), "a.tmp"),
                    (renamed_in, "a.yaml"),
                ],
                true,
            ),
            ("removed", vec![(EventKind::Remove(RemoveKind::File), "a.yaml")], true),
            ("one closed, another still written", vec![(closed, "a.yaml"), (written, "b.yaml")], false),
            ("closed, then written again", vec![(closed, "a.yaml"), (written, "a.yaml")], false),
        ];
        for (name, events, complete) in cases {
            let mut batch = Batch::default();
            for (kind, path) in events {
                batch.add(event(kind, path));
            }
            assert_eq!(batch.complete(), complete, "{name}");
        }
        let mut rescan = Batch::default();
        rescan.add(event(EventKind::Remove(RemoveKind::File), "a.yaml"));
        rescan.add(Err(notify::Error::generic("queue overflow")));
        assert!(!rescan.complete(), "a rescan waits for the burst to settle");
    }
}
