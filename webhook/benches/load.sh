#!/bin/sh
# Load test of the admission server: a release `rudder webhook` with a generated certificate,
# and Debian's `hey` posting a typical Deployment pod's AdmissionReview with keep-alive.
#   cargo build --release -p rudder-operator && webhook/benches/load.sh [requests] [concurrency] [-h2]
# hey sends the Host header (with the port) as SNI, which rustls refuses: -host localhost fixes it.
set -eu
here=$(dirname "$0")
bin=${RUDDER:-${CARGO_TARGET_DIR:-target}/release/rudder}
n=${1:-50000}; c=${2:-16}; shift 2 2>/dev/null || true
out=$(mktemp)
"$bin" webhook --address 127.0.0.1 --port 0 --ca-out "$out.ca" >"$out" 2>&1 &
pid=$!
trap 'kill $pid' EXIT
# Wait (up to 10 s) for the server to say where it listens.
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^listening: https:\/\/127.0.0.1:\([0-9]*\)$/\1/p' "$out")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$out" >&2; exit 1; }
hey -n 200 -c 4 -host localhost -m POST -T application/json -D "$here/review-pod.json" "https://localhost:$port/inject" >/dev/null
hey -n "$n" -c "$c" -host localhost "$@" -m POST -T application/json -D "$here/review-pod.json" "https://localhost:$port/inject"
