#!/usr/bin/env bash
# Runs Rudder's whole test suite, the way CI does. Installs nothing system-wide: anything the
# tests need beyond Rust is put under .tools/ by this script.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo test --workspace --locked "$@"
