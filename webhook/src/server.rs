//! The HTTPS admission server. Placeholder.
