#!/usr/bin/env bash
# Runs one fuzz binary until it has used CPU_SECONDS of CPU (user + system, all its threads),
# then interrupts it (SIGINT: libFuzzer prints its final stats and exits). On a shared machine
# wall time says little about how much fuzzing a target got; this bounds the CPU it got instead.
#
#   fuzz/run-for-cpu.sh 7200 fuzz/target/x86_64-unknown-linux-gnu/release/render \
#       fuzz/corpus/render fuzz/generated/render -timeout=60 -rss_limit_mb=2048
#
# Prints, at the end, the CPU seconds used and the wall seconds taken.
set -euo pipefail
budget=${1:?CPU seconds}
shift
ticks=$(getconf CLK_TCK)
start=$(date +%s)
"$@" -print_final_stats=1 &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' INT TERM
cpu=0
while kill -0 "$pid" 2>/dev/null; do
    # Fields 14 and 15 of /proc/PID/stat (after the command name, which may hold spaces).
    if stat=$(cat "/proc/$pid/stat" 2>/dev/null); then
        read -r -a fields <<<"${stat##*) }"
        cpu=$(( (fields[11] + fields[12]) / ticks ))
        if (( cpu >= budget )); then
            kill -INT "$pid" 2>/dev/null || true
            break
        fi
    fi
    sleep 5
done
status=0
wait "$pid" || status=$?
echo "run-for-cpu: ${cpu} s of CPU in $(( $(date +%s) - start )) s of wall time (exit ${status})" >&2
# libFuzzer exits 72 on SIGINT; anything else that is not 0 is a finding.
if (( status == 72 )); then status=0; fi
exit "$status"
