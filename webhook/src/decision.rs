//! Whether a pod gets a sidecar (spec §2.2). Placeholder.
