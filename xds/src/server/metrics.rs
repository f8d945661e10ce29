//! Prometheus metrics of the ADS server, named after istiod's so existing dashboards apply
//! (counters carry the OpenMetrics `_total` suffix): what was pushed, and the config pushes
//! come from (`pilot_services`, `pilot_k8s_cfg_events`, `pilot_push_triggers`, …, from the
//! difference between the snapshots of two pushes, [`ConfigChanges`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Kind;
use crate::model::Snapshot;
use crate::translate::{KeyChange, key_changes};

type TypeLabel = [(&'static str, &'static str); 1];
type EventLabels = [(&'static str, &'static str); 2];
type HistogramFamily = Family<TypeLabel, Histogram, fn() -> Histogram>;

/// Handles to every metric; cloning shares the underlying values.
#[derive(Clone, Debug)]
pub struct Metrics {
    pushes: Family<TypeLabel, Counter>,
    push_time: HistogramFamily,
    config_size: HistogramFamily,
    rejects: Family<TypeLabel, Counter>,
    expired_nonce: Family<TypeLabel, Counter>,
    convergence: Histogram,
    pub(crate) connected: Gauge,
    services: Gauge,
    virtual_services: Gauge,
    config_objects: Family<TypeLabel, Gauge>,
    config_events: Family<EventLabels, Counter>,
    registry_events: Family<EventLabels, Counter>,
    push_triggers: Family<TypeLabel, Counter>,
    /// Each type's series of `pushes`, `config_size` and `push_time`, looked up in their
    /// families on the type's first response: every response of every stream counts in them,
    /// and a family lookup is a lock and a hash of the label.
    pushed_series: Arc<[OnceLock<PushedSeries>; Kind::COUNT]>,
}

/// One type's series of the per-response metrics: responses, their size, their build time.
type PushedSeries = (Counter, Histogram, Histogram);

fn push_time_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn config_size_histogram() -> Histogram {
    // 1 B … 40 MB, as istiod: 4 MB is gRPC's default limit, 40 MB a practical ceiling.
    Histogram::new([1.0, 10_000.0, 1_000_000.0, 4_000_000.0, 10_000_000.0, 40_000_000.0])
}

fn label(kind: Kind) -> TypeLabel {
    [("type", kind.short_name())]
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            pushes: Family::default(),
            push_time: Family::new_with_constructor(push_time_histogram),
            config_size: Family::new_with_constructor(config_size_histogram),
            rejects: Family::default(),
            expired_nonce: Family::default(),
            convergence: Histogram::new([0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]),
            connected: Gauge::default(),
            services: Gauge::default(),
            virtual_services: Gauge::default(),
            config_objects: Family::default(),
            config_events: Family::default(),
            registry_events: Family::default(),
            push_triggers: Family::default(),
            pushed_series: Arc::default(),
        };
        registry.register("pilot_xds_pushes", "xDS responses sent, by type", metrics.pushes.clone());
        registry.register(
            "pilot_xds_push_time",
            "Seconds to build and queue one xDS response, by type",
            metrics.push_time.clone(),
        );
        registry.register(
            "pilot_xds_config_size_bytes",
            "Encoded resource bytes per xDS response, by type",
            metrics.config_size.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected (NACKed) by proxies, by type",
            metrics.rejects.clone(),
        );
        registry.register(
            "pilot_xds_expired_nonce",
            "xDS requests ignored because they carried a stale nonce, by type",
            metrics.expired_nonce.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to every changed type sent to a proxy",
            metrics.convergence.clone(),
        );
        registry.register("pilot_xds", "Connected xDS streams", metrics.connected.clone());
        registry.register("pilot_services", "Services known to discovery", metrics.services.clone());
        registry.register(
            "pilot_virt_services",
            "VirtualServices known to discovery",
            metrics.virtual_services.clone(),
        );
        registry.register(
            "rudder_discovery_config_objects",
            "Istio config objects discovery serves from, by type (kind)",
            metrics.config_objects.clone(),
        );
        registry.register(
            "pilot_k8s_cfg_events",
            "Config object changes pushed, by type (kind) and event (add, update, delete)",
            metrics.config_events.clone(),
        );
        registry.register(
            "pilot_k8s_reg_events",
            "Registry changes pushed, by type (Services, Endpoints) and event (add, update, delete)",
            metrics.registry_events.clone(),
        );
        registry.register(
            "pilot_push_triggers",
            "Pushes by what triggered them (service, endpoint, config, secret, global); one push may count several",
            metrics.push_triggers.clone(),
        );
        metrics
    }

    pub(crate) fn pushed(&self, kind: Kind, bytes: usize, took: Duration) {
        let (pushes, size, time) = self.pushed_series[kind as usize].get_or_init(|| {
            let label = label(kind);
            (
                self.pushes.get_or_create(&label).clone(),
                self.config_size.get_or_create(&label).clone(),
                self.push_time.get_or_create(&label).clone(),
            )
        });
        pushes.inc();
        size.observe(bytes as f64);
        time.observe(took.as_secs_f64());
    }

    pub(crate) fn rejected(&self, kind: Kind) {
        self.rejects.get_or_create(&label(kind)).inc();
    }

    pub(crate) fn expired_nonce(&self, kind: Kind) {
        self.expired_nonce.get_or_create(&label(kind)).inc();
    }

    pub(crate) fn converged(&self, took: Duration) {
        self.convergence.observe(took.as_secs_f64());
    }

    /// Every metric with a series, in the text a scrape returns (empty families are left out
    /// of a scrape): the names dashboards and alerts may use.
    pub fn sample_exposition() -> String {
        let mut registry = Registry::default();
        let m = Self::register(&mut registry);
        m.pushed(Kind::Cluster, 1, Duration::ZERO);
        m.rejected(Kind::Cluster);
        m.expired_nonce(Kind::Cluster);
        m.converged(Duration::ZERO);
        m.config_served(&Snapshot::default());
        m.config_pushed(&ConfigChanges {
            config: [(("VirtualService", Event::Add), 1)].into(),
            registry: [(("Services", Event::Add), 1)].into(),
            triggers: vec!["config"],
        });
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Sets the config gauges from the snapshot a push serves.
    pub(crate) fn config_served(&self, snapshot: &Snapshot) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.services.set(count(snapshot.services.len()));
        self.virtual_services.set(count(snapshot.virtual_services.len()));
        for (kind, n) in config_counts(snapshot) {
            self.config_objects.get_or_create(&[("type", kind)]).set(count(n));
        }
    }

    /// Counts what one push changed (see [`ConfigChanges`]).
    pub(crate) fn config_pushed(&self, changes: &ConfigChanges) {
        for (&(kind, event), &n) in &changes.config {
            self.config_events.get_or_create(&[("type", kind), ("event", event.name())]).inc_by(n);
        }
        for (&(kind, event), &n) in &changes.registry {
            self.registry_events.get_or_create(&[("type", kind), ("event", event.name())]).inc_by(n);
        }
        for trigger in &changes.triggers {
            self.push_triggers.get_or_create(&[("type", trigger)]).inc();
        }
    }
}

/// How an object changed between two pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    Add,
    Update,
    Delete,
}

impl Event {
    pub const fn name(self) -> &'static str {
        match self {
            Event::Add => "add",
            Event::Update => "update",
            Event::Delete => "delete",
        }
    }
}

/// What changed from one pushed snapshot to the next: config objects by kind and event,
/// services and endpoints (by hostname) by event, and the push's triggers in istiod's words
/// (`service`, `endpoint`, `config`, `secret`, `global` for the mesh config). Objects the
/// registries kept are shared (`Arc`), so unchanged ones cost a pointer comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigChanges {
    pub config: BTreeMap<(&'static str, Event), u64>,
    pub registry: BTreeMap<(&'static str, Event), u64>,
    pub triggers: Vec<&'static str>,
}

/// The kinds of config objects a snapshot holds, and how many of each.
fn config_counts(s: &Snapshot) -> [(&'static str, usize); 10] {
    [
        ("VirtualService", s.virtual_services.len()),
        ("DestinationRule", s.destination_rules.len()),
        ("Gateway", s.gateways.len()),
        ("Sidecar", s.sidecars.len()),
        ("PeerAuthentication", s.peer_authentications.len()),
        ("AuthorizationPolicy", s.authorization_policies.len()),
        ("RequestAuthentication", s.request_authentications.len()),
        ("Telemetry", s.telemetries.len()),
        ("WasmPlugin", s.wasm_plugins.len()),
        ("EnvoyFilter", s.envoy_filters.len()),
    ]
}

impl From<KeyChange> for Event {
    fn from(change: KeyChange) -> Self {
        match change {
            KeyChange::Added => Event::Add,
            KeyChange::Updated => Event::Update,
            KeyChange::Removed => Event::Delete,
        }
    }
}

impl ConfigChanges {
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let mut changes = ConfigChanges::default();
        macro_rules! objects {
            ($field:ident, $type:ty, $kind:literal) => {{
                macro_rules! keyed {
                    ($s:expr) => {
                        $s.$field
                            .iter()
                            .map(|o| ((o.metadata.namespace.as_deref(), o.metadata.name.as_deref()), o))
                            .collect::<BTreeMap<_, _>>()
                    };
                }
                let same = |a: &$type, b: &$type| a.metadata == b.metadata && a.spec == b.spec;
                for (_, change) in key_changes(keyed!(before), keyed!(after), same) {
                    *changes.config.entry(($kind, change.into())).or_default() += 1;
                }
            }};
        }
        use rudder_config::networking::{DestinationRule, Gateway, Sidecar, VirtualService};
        use rudder_config::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
        objects!(virtual_services, VirtualService, "VirtualService");
        objects!(destination_rules, DestinationRule, "DestinationRule");
        objects!(gateways, Gateway, "Gateway");
        objects!(sidecars, Sidecar, "Sidecar");
        objects!(peer_authentications, PeerAuthentication, "PeerAuthentication");
        objects!(authorization_policies, AuthorizationPolicy, "AuthorizationPolicy");
        objects!(request_authentications, RequestAuthentication, "RequestAuthentication");
        objects!(telemetries, rudder_config::telemetry::Telemetry, "Telemetry");
        objects!(wasm_plugins, rudder_config::extensions::WasmPlugin, "WasmPlugin");
        objects!(envoy_filters, rudder_config::networking::EnvoyFilter, "EnvoyFilter");
        for (_, change) in key_changes(&before.services, &after.services, PartialEq::eq) {
            *changes.registry.entry(("Services", change.into())).or_default() += 1;
        }
        for (_, change) in key_changes(&before.endpoints, &after.endpoints, PartialEq::eq) {
            *changes.registry.entry(("Endpoints", change.into())).or_default() += 1;
        }
        // Fetched documents and modules (JWKS, Wasm) change config as secrets do.
        let secrets_changed =
            before.secrets != after.secrets || before.jwks != after.jwks || before.wasm_modules != after.wasm_modules;
        let registry = |kind: &str| changes.registry.keys().any(|(k, _)| *k == kind);
        changes.triggers = [
            ("global", before.mesh != after.mesh),
            ("service", registry("Services")),
            ("endpoint", registry("Endpoints")),
            ("config", !changes.config.is_empty()),
            ("secret", secrets_changed),
        ]
        .into_iter()
        .filter_map(|(name, hit)| hit.then_some(name))
        .collect();
        changes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Resolution, Service};
    use prometheus_client::registry::Registry;
    use rudder_config::networking::{DestinationRule, VirtualService};
    use serde_json::json;

    fn service(host: &str, port: u32) -> Arc<Service> {
        Arc::new(Service {
            hostname: host.into(),
            namespace: "default".into(),
            name: host.split('.').next().unwrap().into(),
            ports: vec![crate::model::ServicePort {
                name: "http".into(),
                port,
                protocol: crate::model::Protocol::Http,
            }],
            addresses: Vec::new(),
            resolution: Resolution::ClientSideLb,
            mesh_external: false,
            export_to: Vec::new(),
            kubernetes: true,
            traffic_distribution: Default::default(),
            subject_alt_names: Vec::new(),
        })
    }

    fn vs(name: &str, host: &str) -> Arc<VirtualService> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}}))
            .unwrap(),
        )
    }

    fn dr(name: &str) -> Arc<DestinationRule> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": "default"}, "spec": {"host": name}}))
            .unwrap(),
        )
    }

    fn before() -> Snapshot {
        let a = "a.default.svc.cluster.local".to_owned();
        Snapshot {
            services: [(a.clone(), service(&a, 80))].into(),
            endpoints: [(a, Arc::new(vec![Endpoint::plain("10.0.0.1", 80, "http", "default")]))].into(),
            virtual_services: vec![vs("one", "a"), vs("two", "a")],
            destination_rules: vec![dr("a")],
            ..Snapshot::default()
        }
    }

    #[test]
    fn unchanged_snapshots_change_nothing() {
        let snapshot = before();
        assert_eq!(ConfigChanges::between(&snapshot, &snapshot.clone()), ConfigChanges::default());
        // Equal objects that are not shared are not changes either.
        assert_eq!(ConfigChanges::between(&snapshot, &before()), ConfigChanges::default());
    }

    #[test]
    fn changes_are_counted_by_kind_and_event_and_name_their_triggers() {
        let old = before();
        let mut new = old.clone();
        new.virtual_services = vec![vs("one", "a"), vs("two", "b"), vs("three", "a")];
        new.destination_rules.clear();
        let b = "b.default.svc.cluster.local".to_owned();
        new.services.insert(b.clone(), service(&b, 80));
        let changes = ConfigChanges::between(&old, &new);
        let expected: BTreeMap<_, u64> = [
            (("VirtualService", Event::Add), 1),
            (("VirtualService", Event::Update), 1),
            (("DestinationRule", Event::Delete), 1),
        ]
        .into();
        assert_eq!(changes.config, expected);
        assert_eq!(changes.registry, [(("Services", Event::Add), 1)].into());
        assert_eq!(changes.triggers, ["service", "config"]);

        let mut moved = old.clone();
        let a = "a.default.svc.cluster.local";
        moved.endpoints.insert(a.into(), Arc::new(vec![Endpoint::plain("10.0.0.2", 80, "http", "default")]));
        moved.services.insert(a.into(), service(a, 8080));
        moved.mesh.access_log_file = Some("/dev/stdout".into());
        let changes = ConfigChanges::between(&old, &moved);
        assert_eq!(changes.registry, [(("Services", Event::Update), 1), (("Endpoints", Event::Update), 1)].into());
        assert_eq!(changes.triggers, ["global", "service", "endpoint"]);

        // An EnvoyFilter is config too: counted, and it triggers a push.
        let mut filtered = old.clone();
        filtered.envoy_filters.push(Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                "metadata": {"name": "lua", "namespace": "default"},
                "spec": {"configPatches": []},
            }))
            .unwrap(),
        ));
        let changes = ConfigChanges::between(&old, &filtered);
        assert_eq!(changes.config, [(("EnvoyFilter", Event::Add), 1)].into());
        assert_eq!(changes.triggers, ["config"]);
    }

    #[test]
    fn the_config_metrics_follow_what_was_served_and_pushed() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let old = before();
        metrics.config_served(&old);
        let mut new = old.clone();
        new.virtual_services.push(vs("three", "a"));
        metrics.config_served(&new);
        metrics.config_pushed(&ConfigChanges::between(&old, &new));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "pilot_services 1",
            "pilot_virt_services 3",
            r#"rudder_discovery_config_objects{type="VirtualService"} 3"#,
            r#"rudder_discovery_config_objects{type="DestinationRule"} 1"#,
            r#"pilot_k8s_cfg_events_total{type="VirtualService",event="add"} 1"#,
            r#"pilot_push_triggers_total{type="config"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("pilot_k8s_reg_events"), "no registry change yet:\n{text}");
        let example = Metrics::sample_exposition();
        assert!(example.contains(r#"pilot_k8s_reg_events_total{type="Services",event="add"} 1"#), "{example}");
    }
}
