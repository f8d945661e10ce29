//! The APIs Rudder speaks, as typed Rust values: the Istio config kinds (networking, security,
//! telemetry), `IstioOperator`, `MeshConfig`, the injector ConfigMap model and the well-known
//! labels and annotations; plus YAML loading, semantic validation and CRD assembly.
//!
//! Nothing here does I/O beyond reading the files it is asked to load.

pub mod analyze;
pub mod common;
pub mod crds;
pub mod envoy_proto;
pub mod extensions;
pub mod hosts;
pub mod injector;
pub mod labels;
pub mod load;
pub mod mesh;
pub mod networking;
pub mod object;
pub mod operator;
pub mod security;
pub mod telemetry;
pub mod validate;

pub use object::IstioObject;
pub use validate::{FieldError, FieldPath, Report, Severity, Validate};
