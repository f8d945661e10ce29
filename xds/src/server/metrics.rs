//! Prometheus metrics of the ADS server, named after istiod's so existing dashboards apply
//! (counters carry the OpenMetrics `_total` suffix).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Kind;

type TypeLabel = [(&'static str, &'static str); 1];
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
}

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
        metrics
    }

    pub(crate) fn pushed(&self, kind: Kind, bytes: usize, took: Duration) {
        self.pushes.get_or_create(&label(kind)).inc();
        self.config_size.get_or_create(&label(kind)).observe(bytes as f64);
        self.push_time.get_or_create(&label(kind)).observe(took.as_secs_f64());
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
}
