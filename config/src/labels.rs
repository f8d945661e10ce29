//! Well-known labels and annotations (placeholder; the full list replaces it).
