//! Webhook serving certificates. Placeholder.
