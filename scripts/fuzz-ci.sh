#!/usr/bin/env bash
# CI fuzzing: builds every target of the fuzz/ crate once, then runs each for FUZZ_SECONDS
# (default 60), FUZZ_JOBS (default 2, one per core) at a time, on its seeds (fuzz/seeds/<target>, checked in, and fuzz/generated/<target>,
# written by fuzz/make_seeds.py) in a scratch corpus. Fails if any target finds a crash, a
# timeout or an out-of-memory input; the inputs are left in fuzz/artifacts/<target>/.
# Needs a nightly toolchain and python3 with PyYAML; installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
started=$(date +%s)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

# The fuzz build instruments the whole workspace. In release (cargo-fuzz's default) that takes
# ~39 min from nothing on 2 busy cores; the dev profile (debug assertions and overflow checks
# too) ~6 min, and its targets run 10-100x slower, which a 60 s smoke run can afford. Long runs
# (docs/fuzzing-results.md) use FUZZ_PROFILE=release. FUZZ_TARGET_DIR may point at a kept
# target dir; else fuzz/target in this checkout.
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
jobs=${FUZZ_JOBS:-2}
case "${FUZZ_PROFILE:-dev}" in
  dev) profile=(--dev); out=debug ;;
  release) profile=(); out=release ;;
  *) echo "FUZZ_PROFILE is dev or release" >&2; exit 1 ;;
esac
echo "fuzz build (${FUZZ_PROFILE:-dev}) in $target_dir"

python3 fuzz/make_seeds.py
# No sanitizer: the product code forbids unsafe, so ASan adds build and run time and little
# else. Release with debug assertions and overflow checks (cargo-fuzz's default).
cargo +nightly fuzz build --sanitizer none "${profile[@]}" --target-dir "$target_dir"
echo "built in $(($(date +%s) - started)) s"
bin_dir=$target_dir/$(rustc -vV | sed -n 's/^host: //p')/$out

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p fuzz/artifacts

# Runs one target on a scratch copy of its seeds; its exit status says whether it found anything.
fuzz_one() {
  local target=$1 seeds=() options
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  for dir in "fuzz/seeds/$target" "fuzz/generated/$target"; do
    if [ -d "$dir" ]; then seeds+=("$dir"); fi
  done
  options=(-max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="fuzz/artifacts/$target/")
  if [ -f "fuzz/$target.dict" ]; then options+=(-dict="fuzz/$target.dict"); fi
  "$bin_dir/$target" "${options[@]}" "$scratch/$target" "${seeds[@]}" >"$scratch/$target.log" 2>&1
}

targets=$(cargo +nightly fuzz list)
declare -A pids=()
failed=()
collect() {
  local target=$1
  if wait "${pids[$target]}"; then
    echo "--- $target: ${seconds} s, no finding"
  else
    echo "--- $target: FINDING" >&2
    tail -n 60 "$scratch/$target.log" >&2
    failed+=("$target")
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$target.log" || true
  unset "pids[$target]"
}
running=()
for target in $targets; do
  fuzz_one "$target" &
  pids[$target]=$!
  running+=("$target")
  if [ ${#running[@]} -ge "$jobs" ]; then
    collect "${running[0]}"
    running=("${running[@]:1}")
  fi
done
for target in "${running[@]}"; do collect "$target"; done
echo "fuzzing took $(($(date +%s) - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets with findings: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
