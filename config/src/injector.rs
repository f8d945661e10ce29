//! The injector ConfigMap model (placeholder; the full model replaces it).
