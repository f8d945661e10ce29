//! ServiceEntry `resolution: DYNAMIC_DNS`: Envoy's dynamic forward proxy, as Istio uses it. The
//! HTTP ports of such a service get a `envoy.clusters.dynamic_forward_proxy` cluster, and the
//! HTTP connection managers that can route to one get the dynamic forward proxy filter, which
//! resolves each request's host (its `Host` header, port included) through a DNS cache the
//! two share by name. Other ports of the service stay passthrough (the original destination).

use envoy_types::pb::envoy::config::cluster::v3::cluster::{CustomClusterType, DnsLookupFamily};
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::ClusterConfig;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::cluster_config::ClusterImplementationSpecifier;
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::filter_config::ImplementationSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::util::pack_any;

use super::context::Context;
use super::listener::hcm::ROUTER_FILTER;
use crate::model::{Resolution, Service, ServicePort};

pub const CLUSTER_TYPE: &str = "envoy.clusters.dynamic_forward_proxy";
pub const HTTP_FILTER: &str = "envoy.filters.http.dynamic_forward_proxy";
/// The one DNS cache every dynamic forward proxy cluster and filter share (Istio's name).
const DNS_CACHE: &str = "dynamic_forward_proxy_cache_config";

/// Whether `port` of `service` is served by the dynamic forward proxy.
pub fn serves(service: &Service, port: &ServicePort) -> bool {
    service.resolution == Resolution::DynamicDns && port.protocol.is_http()
}

fn dns_cache() -> DnsCacheConfig {
    DnsCacheConfig {
        name: DNS_CACHE.to_owned(),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        ..Default::default()
    }
}

/// The custom cluster type of such a cluster.
pub fn cluster_type() -> CustomClusterType {
    let config = ClusterConfig {
        cluster_implementation_specifier: Some(ClusterImplementationSpecifier::DnsCacheConfig(dns_cache())),
        ..Default::default()
    };
    CustomClusterType { name: CLUSTER_TYPE.to_owned(), typed_config: Some(pack_any(config)) }
}

/// Whether some service the proxy sees is served by the dynamic forward proxy on `port`
/// (`None`: on any port).
pub fn in_view(ctx: &Context<'_>, port: Option<u32>) -> bool {
    // Asked for every HTTP connection manager a view builds: without any such service in the
    // mesh (the usual case), skip the visibility checks of every service.
    if !ctx.snapshot.services.values().any(|s| s.resolution == Resolution::DynamicDns) {
        return false;
    }
    ctx.services().any(|service| {
        service.resolution == Resolution::DynamicDns
            && service.ports.iter().any(|p| serves(service, p) && port.is_none_or(|n| n == p.port))
    })
}

/// The dynamic forward proxy filter. It acts only on requests routed to a dynamic forward
/// proxy cluster, so other routes of its connection manager are unaffected.
pub fn filter() -> HttpFilter {
    HttpFilter {
        name: HTTP_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(FilterConfig {
            implementation_specifier: Some(ImplementationSpecifier::DnsCacheConfig(dns_cache())),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

/// Puts [`filter`] right before the router.
pub fn add_filter(hcm: &mut HttpConnectionManager) {
    let router = hcm.http_filters.iter().position(|f| f.name == ROUTER_FILTER).unwrap_or(hcm.http_filters.len());
    hcm.http_filters.insert(router, filter());
}
