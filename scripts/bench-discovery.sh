#!/usr/bin/env bash
# Discovery under load on this machine: a synthetic mesh in a config directory, `rudder
# discovery` serving it, and `rudder bench xds` driving simulated proxies against it, then a
# route change and an endpoint-only change. Bounded: every step has a timeout, and discovery is
# stopped on exit. Figures go to stdout (record them in BENCHMARKS.md).
#
#   scripts/bench-discovery.sh [--services N] [--ports N] [--endpoints N] [bench xds flags...]
#   e.g. scripts/bench-discovery.sh --services 1000 --ports 1 --proxies 1000 --distinct-workloads 1000
#
# Uses target/release/rudder (built if missing). Ports 25010/25014 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
services=1000 ports=4 endpoints=10 zones=0 idle=0
bench=()
while [ $# -gt 0 ]; do
  case "$1" in
    --services) services=$2; shift 2 ;;
    --ports) ports=$2; shift 2 ;;
    --endpoints) endpoints=$2; shift 2 ;;
    # Workloads and proxies in N zones, DestinationRules with outlier detection (locality failover).
    --zones) zones=$2; bench+=("$1" "$2"); shift 2 ;;
    # Memory after N idle seconds; the baseline before the join is then idle too.
    --idle) idle=$2; bench+=("$1" "$2"); shift 2 ;;
    *) bench+=("$1"); shift ;;
  esac
done
rudder=${RUDDER:-target/release/rudder}
[ -x "$rudder" ] || cargo build --release --bin rudder
mesh=$(mktemp -d /tmp/rudder-bench-mesh.XXXXXX)
log=$mesh.discovery.log
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$mesh"; }
trap cleanup EXIT
"$rudder" bench mesh --services "$services" --ports "$ports" --endpoints "$endpoints" --zones "$zones" --out "$mesh" >/dev/null
routes=$(seq -s, 8080 $((8080 + ports - 1)))
"$rudder" discovery --config-dir "$mesh" --no-webhook --grpc-address 127.0.0.1:25010 \
  --monitoring-address 127.0.0.1:25014 >"$log" 2>&1 &
pid=$!
# Wait until discovery serves the whole mesh (its first pushes can be empty).
for _ in $(seq 1 600); do
  served=$(curl -sf 127.0.0.1:25014/metrics 2>/dev/null | sed -n 's/^pilot_services \([0-9]*\).*/\1/p') || true
  [ "${served:-0}" -ge "$services" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
sleep "$idle"
echo "mesh: $services services × $ports ports × $endpoints endpoints; discovery pid $pid, RSS $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$pid/status) loaded"
timeout 900 "$rudder" bench xds --address 127.0.0.1:25010 --pid "$pid" --routes "$routes" \
  --update-file "$mesh/svc-00000.yaml" --endpoint-update-file "$mesh/svc-00001.yaml" "${bench[@]}"
