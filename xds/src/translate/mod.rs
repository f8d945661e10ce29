//! Translation of a [`Snapshot`] into Envoy resources for one proxy. Pure: values in, values
//! out, no I/O and no clocks, so the same inputs always give byte-identical resources.
//!
//! Output is split by what it depends on, so the server can share work between proxies:
//! - [`outbound`]: clusters, listeners and routes that depend only on the proxy's
//!   [`ViewKey`] (type, namespace, labels, interception mode and — for capture mode NONE — its
//!   address); computed once per distinct view;
//! - [`inbound`]: the proxy's own workload side (inbound listeners and clusters), per proxy;
//! - [`endpoints`]: every ClusterLoadAssignment, the same for all proxies.

pub mod cluster;
pub mod context;
pub mod endpoint;
pub mod listener;
pub mod route;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::model::{InterceptionMode, NodeType, Proxy, Snapshot};

/// Resources of the three proxy-specific types (endpoints are shared, see [`endpoints`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub clusters: Vec<Cluster>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

impl Resources {
    /// Appends `other`'s resources after this set's.
    pub fn extend(&mut self, other: Resources) {
        self.clusters.extend(other.clusters);
        self.listeners.extend(other.listeners);
        self.routes.extend(other.routes);
    }
}

/// Every proxy field the outbound translation reads. Two proxies with equal keys get
/// identical outbound resources; adding a field that translation reads without adding it
/// here would serve one proxy another's config, so keep the two in step.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewKey {
    pub node_type: NodeType,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub interception: InterceptionMode,
    /// Only for capture mode NONE, where outbound listeners bind the proxy's own address.
    pub bind_ip: Option<String>,
}

impl ViewKey {
    pub fn of(proxy: &Proxy) -> Self {
        Self {
            node_type: proxy.node_type,
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            interception: proxy.interception,
            bind_ip: (proxy.interception == InterceptionMode::None).then(|| proxy.primary_ip().to_owned()),
        }
    }
}

/// The outbound side of `proxy`'s config: everything it needs to reach services.
pub fn outbound(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    let ctx = context::Context::new(snapshot, proxy);
    Resources { clusters: cluster::outbound(&ctx), listeners: listener::outbound(&ctx), routes: route::outbound(&ctx) }
}

/// The inbound side of `proxy`'s config: how traffic reaches its own workload.
pub fn inbound(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    let ctx = context::Context::new(snapshot, proxy);
    Resources { clusters: cluster::inbound(&ctx), listeners: listener::inbound(&ctx), routes: Vec::new() }
}

/// Outbound and inbound together, in push order within each type.
pub fn for_proxy(snapshot: &Snapshot, proxy: &Proxy) -> Resources {
    let mut all = outbound(snapshot, proxy);
    all.extend(inbound(snapshot, proxy));
    all
}

/// Every EDS ClusterLoadAssignment (one per EDS cluster of every service, subset and port),
/// sorted by cluster name. Proxy-independent.
pub fn endpoints(snapshot: &Snapshot) -> Vec<ClusterLoadAssignment> {
    endpoint::all(snapshot)
}
