//! The network filters every listener kind shares: the HTTP connection manager (sidecar
//! inbound/outbound and, later, gateways) and tcp_proxy.

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::WeightedCluster;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, TcpAccessLogOptions,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// HTTP filter names; the route translation puts per-route `typed_per_filter_config` under
/// exactly these keys, so they must not change.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Where an HTTP connection manager gets its routes.
#[derive(Clone, Debug, PartialEq)]
pub enum Routes {
    /// RDS over the ADS stream, by route configuration name (outbound: the port, `"9080"`).
    Rds(String),
    /// A route configuration carried in the listener (inbound).
    Inline(Box<RouteConfiguration>),
}

/// An HTTP connection manager as sidecars use it: fault → cors → router (fault and cors with
/// empty config so routes can switch them on per route), `use_remote_address` off (a sidecar
/// is not the edge), paths normalised, and the mesh's access logs. Gateways adjust the
/// returned message (e.g. `use_remote_address`) before wrapping it with [`hcm_filter`].
pub fn http_connection_manager(stat_prefix: &str, routes: Routes, access_log: &[AccessLog]) -> HttpConnectionManager {
    let route_specifier = match routes {
        Routes::Rds(name) => {
            RouteSpecifier::Rds(Rds { config_source: Some(ads_config_source()), route_config_name: name })
        }
        Routes::Inline(config) => RouteSpecifier::RouteConfig(*config),
    };
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(route_specifier),
        http_filters: vec![
            http_filter(FAULT_FILTER, pack_any(HttpFault::default())),
            http_filter(CORS_FILTER, pack_any(Cors::default())),
            http_filter(ROUTER_FILTER, pack_any(Router::default())),
        ],
        use_remote_address: Some(BoolValue { value: false }),
        normalize_path: Some(BoolValue { value: true }),
        access_log: crate::translate::telemetry::logs_for(access_log, crate::translate::telemetry::Chain::Http),
        ..Default::default()
    }
}

/// The HCM as a listener network filter.
pub fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter { name: HTTP_CONNECTION_MANAGER.to_owned(), config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))) }
}

/// Resources over the same ADS stream, v3 API.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter { name: name.to_owned(), config_type: Some(HttpFilterConfig::TypedConfig(config)), ..Default::default() }
}

/// Where a tcp_proxy sends a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpTarget {
    Cluster(String),
    /// `(cluster, weight)`, weights ≥ 1.
    Weighted(Vec<(String, u32)>),
}

impl TcpTarget {
    /// One cluster stays a plain cluster; several become weighted clusters. Zero weights are
    /// dropped (Envoy refuses them); when nothing is left the first cluster takes all.
    pub fn from_weighted(mut clusters: Vec<(String, u32)>) -> Option<Self> {
        let first = clusters.first()?.0.clone();
        clusters.retain(|(_, w)| *w > 0);
        Some(match clusters.len() {
            0 => Self::Cluster(first),
            1 => Self::Cluster(clusters.remove(0).0),
            _ => Self::Weighted(clusters),
        })
    }

    /// The stat prefix Istio uses: the cluster name, or the first weighted cluster's.
    fn stat_prefix(&self) -> &str {
        match self {
            Self::Cluster(c) => c,
            Self::Weighted(w) => w.first().map(|(c, _)| c.as_str()).unwrap_or_default(),
        }
    }
}

/// A tcp_proxy network filter to `target`, stat prefix the (first) cluster name.
pub fn tcp_proxy(target: &TcpTarget, access_log: &[AccessLog]) -> Filter {
    let cluster_specifier = match target {
        TcpTarget::Cluster(c) => ClusterSpecifier::Cluster(c.clone()),
        TcpTarget::Weighted(clusters) => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight)| ClusterWeight { name: name.clone(), weight: *weight, ..Default::default() })
                .collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix: target.stat_prefix().to_owned(),
        cluster_specifier: Some(cluster_specifier),
        access_log: crate::translate::telemetry::logs_for(access_log, crate::translate::telemetry::Chain::Tcp),
        // A record when the upstream connection is made, for the connections-opened metric.
        access_log_options: crate::translate::telemetry::counts_connections(access_log)
            .then(|| TcpAccessLogOptions { flush_access_log_on_connected: true, ..Default::default() }),
        ..Default::default()
    };
    Filter { name: TCP_PROXY.to_owned(), config_type: Some(FilterConfig::TypedConfig(pack_any(proxy))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcm_filter_order_and_rds() {
        let hcm = http_connection_manager("outbound_0.0.0.0_80", Routes::Rds("80".into()), &[]);
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [FAULT_FILTER, CORS_FILTER, ROUTER_FILTER]);
        let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else { panic!("not rds") };
        assert_eq!(rds.route_config_name, "80");
        assert_eq!(rds.config_source, Some(ads_config_source()));
        assert_eq!(hcm.use_remote_address, Some(BoolValue { value: false }));
        assert_eq!(hcm.normalize_path, Some(BoolValue { value: true }));
    }

    #[test]
    fn weighted_targets() {
        let c = |n: &str, w| (n.to_owned(), w);
        assert_eq!(TcpTarget::from_weighted(vec![]), None);
        assert_eq!(TcpTarget::from_weighted(vec![c("a", 0)]), Some(TcpTarget::Cluster("a".into())));
        assert_eq!(TcpTarget::from_weighted(vec![c("a", 0), c("b", 100)]), Some(TcpTarget::Cluster("b".into())));
        assert_eq!(
            TcpTarget::from_weighted(vec![c("a", 20), c("b", 80)]),
            Some(TcpTarget::Weighted(vec![c("a", 20), c("b", 80)]))
        );
    }
}
