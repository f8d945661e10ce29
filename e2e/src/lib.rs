//! The local mesh harness: discovery, `rudder echo` workloads and their Envoy sidecars run as
//! real processes on loopback addresses (`127.0.<block>.<host>`), configured through a file
//! config directory. The e2e suite asserts on it; `rudder demo` walks users through it.
//!
//! Also the discovery load tools: [`synthetic`] writes the benchmark mesh and [`loadclient`]
//! drives Envoy-like ADS streams against a server (`rudder bench`, the translation bench).

pub mod cluster;
pub mod cluster_dns;
pub mod http;
pub mod jwt;
pub mod loadclient;
pub mod mesh;
pub mod process;
pub mod scenarios;
pub mod synthetic;
pub mod tls;
pub mod zipkin;
