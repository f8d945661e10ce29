//! Discovery for Rudder: the service registry, translation of Istio config into Envoy xDS
//! resources, and the ADS server that pushes them. (Filled in by the discovery work.)

pub mod echo;
