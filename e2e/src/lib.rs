//! End-to-end tests for Rudder live in `tests/`. They drive the built `rudder` binary, and later
//! real Envoy and live clusters. This library only holds helpers shared between those tests.
