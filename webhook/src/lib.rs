//! Sidecar injection for Rudder: the injection decision, the pod mutation, and the admission
//! server that serves them. The pure parts take values and return values; the server is a thin
//! shell around them. (Filled in by the injector work; see the issue tracker.)
