//! Sidecar injection for Rudder.
//!
//! - [`decision`] (pure): whether a pod gets a sidecar (stage B of spec §2.2; stage A is the
//!   MutatingWebhookConfiguration's selectors, rendered by the operator).
//! - [`inject`] (pure): the injected pod, and the JSON patch from the original to it. The same
//!   function serves the webhook and `rudder kube-inject`.
//! - [`admission`] (pure): AdmissionReview bytes in, HTTP status and body out.
//! - [`server`]: the HTTPS admission server (`/inject`, `/validate`) around it, with its
//!   certificates ([`certs`]) and config reloading.
//! - [`metrics`]: istiod's injection and validation counters, which the server keeps.

pub mod admission;
pub mod certs;
pub mod decision;
pub mod inject;
pub mod metrics;
pub mod server;
