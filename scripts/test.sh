#!/usr/bin/env bash
# Runs Rudder's whole test suite, the way CI does, and ends with one summed line
# (`tests: N passed, N failed, N skipped`) over every test binary. Installs nothing
# system-wide: the tools the tests need beyond Rust (Helm) go under .tools/ via install-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

./scripts/install-tools.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
