#!/usr/bin/env bash
# CI fuzzing: builds every target of the fuzz/ crate once, then runs each for FUZZ_SECONDS
# (default 60) on its seeds (fuzz/seeds/<target>, checked in, and fuzz/generated/<target>,
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

# The fuzz build is long (the whole workspace, instrumented, in release: ~39 min from nothing on
# 2 busy cores, 32 s when only fuzz/ changed): FUZZ_TARGET_DIR may point at a kept target dir;
# else fuzz/target in this checkout.
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
echo "fuzz build in $target_dir"

python3 fuzz/make_seeds.py
# No sanitizer: the product code forbids unsafe, so ASan adds build and run time and little
# else. Release with debug assertions and overflow checks (cargo-fuzz's default).
cargo +nightly fuzz build --sanitizer none --target-dir "$target_dir"
echo "built in $(($(date +%s) - started)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo +nightly fuzz list); do
  echo "--- $target: ${seconds} s"
  mkdir -p "$scratch/$target"
  seeds=()
  for dir in "fuzz/seeds/$target" "fuzz/generated/$target"; do
    if [ -d "$dir" ]; then seeds+=("$dir"); fi
  done
  options=(-max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1)
  if [ -f "fuzz/$target.dict" ]; then options+=(-dict="fuzz/$target.dict"); fi
  if ! cargo +nightly fuzz run --sanitizer none --target-dir "$target_dir" "$target" "$scratch/$target" "${seeds[@]}" -- "${options[@]}" \
    2>"$scratch/$target.log"; then
    tail -n 60 "$scratch/$target.log" >&2
    failed+=("$target")
  fi
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$target.log" || true
done
echo "fuzzing took $(($(date +%s) - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets with findings: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
