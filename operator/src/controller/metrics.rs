//! Prometheus metrics of the controller, served as text at `GET /metrics` on the metrics port.
//! Label values are bounded: a reconcile's `result` is `success` or `error`, an error's `class`
//! is `permanent` or `transient` (never the error text).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ErrorClass;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

/// The controller's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ClassLabel, Counter>,
    duration: Histogram,
    applied: Counter,
    pruned: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ClassLabel, Counter>::default();
        // 10 ms … ~41 s.
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 13));
        let applied = Counter::default();
        let pruned = Counter::default();
        let leader = Gauge::default();
        let mut registry = Registry::default();
        // The client appends `_total` to counter names.
        registry.register("rudder_operator_reconciles", "IstioOperator reconciles by result", reconciles.clone());
        registry.register("rudder_operator_reconcile_errors", "Failed reconciles by error class", errors.clone());
        registry.register("rudder_operator_reconcile_duration_seconds", "Time one reconcile took", duration.clone());
        registry.register("rudder_operator_objects_applied", "Objects applied by reconciles", applied.clone());
        registry.register("rudder_operator_objects_pruned", "Objects pruned by reconciles", pruned.clone());
        registry.register("rudder_operator_leader", "1 while this replica holds the leader Lease", leader.clone());
        Metrics { registry, reconciles, errors, duration, applied, pruned, leader }
    }
}

impl Metrics {
    /// Records one finished reconcile: its outcome (with the error class on failure) and duration.
    pub fn reconciled(&self, error: Option<ErrorClass>, took: Duration) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
        if let Some(class) = error {
            let class = match class {
                ErrorClass::Permanent => "permanent",
                ErrorClass::Transient => "transient",
            };
            self.errors.get_or_create(&ClassLabel { class }).inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    /// Records the objects one install applied and pruned.
    pub fn objects(&self, applied: usize, pruned: usize) {
        self.applied.inc_by(applied as u64);
        self.pruned.inc_by(pruned as u64);
    }

    /// Records whether this replica leads (reconciles) right now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reconcile_shows_up_in_every_series() {
        let m = Metrics::default();
        m.objects(7, 2);
        m.set_leader(true);
        m.reconciled(None, Duration::from_millis(30));
        m.reconciled(Some(ErrorClass::Transient), Duration::from_millis(5));
        let text = m.encode();
        for line in [
            "rudder_operator_reconciles_total{result=\"success\"} 1",
            "rudder_operator_reconciles_total{result=\"error\"} 1",
            "rudder_operator_reconcile_errors_total{class=\"transient\"} 1",
            "rudder_operator_reconcile_duration_seconds_count 2",
            "rudder_operator_objects_applied_total 7",
            "rudder_operator_objects_pruned_total 2",
            "rudder_operator_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE rudder_operator_reconcile_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"));
    }
}
