//! The service registry: sources that turn cluster state and Istio config into
//! [`crate::model::Snapshot`]s. Each source owns its I/O; the conversions here are pure so every
//! source maps the same object the same way.

pub mod files;
pub mod jwks;
pub mod kube;
pub mod secret;
pub mod service_entry;
pub mod wasm;
