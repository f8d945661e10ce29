//! The proxy agent, Rudder's counterpart of Istio's pilot-agent: it turns the pod's identity
//! (the env vars and flags the injector sets) into an Envoy bootstrap ([`bootstrap`], pure) and
//! runs Envoy on it as a supervised child ([`supervise`]). Beside Envoy, a sidecar's agent runs
//! a DNS proxy for mesh hosts ([`dns`]) fed with the name table from discovery ([`nds`]).
//! [`capture`] writes the iptables rules that send the pod's traffic (and its DNS) through the
//! proxy (the init container's job, pure); [`capture_apply`] runs them through iptables. The `rudder proxy` verbs are thin wrappers around
//! these. With the mesh CA, [`identity`] keeps the workload certificate renewed and [`sds`]
//! serves it to Envoy on a Unix socket. On the status port 15020 [`metrics`] serves the mesh metrics (`istio_*`) and [`probes`] the app's rewritten probes.

pub mod bootstrap;
pub mod capture;
pub mod capture_apply;
pub mod dns;
pub mod identity;
pub mod metrics;
pub mod nds;
pub mod probes;
pub mod sds;
pub mod supervise;
