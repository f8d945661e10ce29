//! Discovery for Rudder: the service registry, translation of Istio config into Envoy xDS
//! resources, and the ADS server that pushes them.

pub mod agent;
pub mod ca;
pub mod ca_kube;
pub mod ca_service;
pub mod echo;
pub mod model;
pub mod nametable;
pub mod protowire;
pub mod proxy_config;
pub mod proxy_status;
pub mod registry;
pub mod server;
pub mod standard_metrics;
#[doc(hidden)]
pub mod testing;
pub mod translate;
