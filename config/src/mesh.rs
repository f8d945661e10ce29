//! MeshConfig (placeholder; the full model replaces it).
